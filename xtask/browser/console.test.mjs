// The console in a real browser (run by `cargo xtask browser-test`, which starts the
// pipeline and sets CONSOLE_URL, CHROMIUM and SHOTS). Each step asserts what a user sees;
// any failure leaves `failure.png` beside the other screenshots and exits 1.
import { chromium } from 'playwright-core';
import http from 'node:http';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const axePath = createRequire(import.meta.url).resolve('axe-core');

const url = process.env.CONSOLE_URL;
const shots = process.env.SHOTS;
const MINUTE = 60_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
page.setDefaultTimeout(MINUTE);

async function step(name, body) {
  const started = Date.now();
  await body();
  console.log(`  ok: ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

/** The requests the console shows, read from its API outside the browser. */
async function requests() {
  const status = await (await fetch(new URL('/api/status', url))).json();
  return status.status.requests;
}

/** Waits until every request of `kind` the console shows is done, and there is one. */
async function allDone(kind) {
  await page.waitForFunction((k) => {
    const items = [...document.querySelectorAll('#requests li[data-request]')]
      .filter((li) => li.textContent.includes(` ${k} of `));
    return items.length > 0 && items.every((li) => li.dataset.phase === 'done');
  }, kind, { timeout: 2 * MINUTE });
}

/** Opens the dialog from the keyboard and chooses a kind. */
async function openDialog(kindLabel) {
  await page.getByRole('button', { name: 'Backfill…' }).focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Backfill' });
  await dialog.waitFor();
  await dialog.getByRole('radio', { name: kindLabel }).check();
  return dialog;
}

try {
  await step('the page loads and goes live', async () => {
    await page.goto(url);
    await page.getByRole('heading', { name: 'cdc console' }).waitFor();
    await page.getByText('Live: updated every second').waitFor();
    await page.locator('#captures table').first().waitFor();
  });

  await step('every progress bar advances to 100%', async () => {
    // Each binding's bar is labelled for screen readers; the big table's is seen moving.
    const visits = page.getByRole('progressbar', { name: 'Backfill of shop/visits' });
    await visits.waitFor();
    // The big table's bar is seen part way (its estimate known), then full.
    await page.waitForFunction(() => {
      const bar = document.querySelector('td[data-binding="shop/visits"] progress');
      return bar && bar.hasAttribute('value') && Number(bar.value) > 0 && Number(bar.value) < 100;
    });
    await page.screenshot({ path: `${shots}/overview-backfilling.png`, fullPage: true });
    await page.waitForFunction(() => {
      const bars = [...document.querySelectorAll('#captures progress')];
      return bars.length === 4 && bars.every((b) => b.hasAttribute('value') && Number(b.value) === 100);
    }, null, { timeout: 3 * MINUTE });
    for (const text of await page.locator('#captures .progress-text').allTextContents()) {
      assert.match(text, /^100\.0% · /, text);
    }
    await page.locator('#materializations td.behind').first().waitFor();
    await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });
  });

  await step('the overview and the dialog pass the accessibility rules (axe-core)', async () => {
    // The console's CSP refuses injected scripts: this one page bypasses it to run axe.
    const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 1000 } });
    const checked = await context.newPage();
    await checked.goto(url);
    await checked.locator('#captures table').first().waitFor();
    await checked.addScriptTag({ path: axePath });
    const audit = async (what) => {
      const result = await checked.evaluate(() => window.axe.run(document, {
        runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
      }));
      const found = result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join('; ')})`);
      assert.deepEqual(found, [], `${what}: accessibility violations`);
    };
    await audit('the overview');
    await checked.getByRole('button', { name: 'Backfill…' }).click();
    await checked.getByRole('dialog', { name: 'Backfill' }).waitFor();
    await audit('the dialog');
    await context.close();
  });

  await step('a materialization backfill from the dialog completes', async () => {
    const dialog = await openDialog(/Materialization backfill/);
    // Its defaults follow the kind: the zero-downtime rebuild, no mode, keep not offered.
    assert.equal(await dialog.getByLabel('Destination tables', { exact: true }).inputValue(), 'rebuild');
    assert.equal(await dialog.getByLabel('Backfill mode', { exact: true }).isDisabled(), true);
    await dialog.getByRole('checkbox', { name: /shop\/orders → orders$/ }).check();
    await dialog.getByRole('checkbox', { name: /shop\/customers → customers$/ }).check();
    await page.screenshot({ path: `${shots}/dialog.png` });
    await dialog.getByRole('button', { name: 'Start backfill' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.getByText(/^Requested: /).waitFor();
    await allDone('materialization');
    const done = (await requests()).filter((r) => r.kind === 'materialization');
    assert.equal(done.length, 1);
    assert.deepEqual(done[0].collections.sort(), ['shop/customers', 'shop/orders']);
    assert.equal(done[0].table, 'rebuild');
  });

  await step('a cancel stops a running capture backfill', async () => {
    const dialog = await openDialog(/Incremental backfill/);
    assert.equal(await dialog.getByLabel('Destination tables', { exact: true }).inputValue(), 'keep');
    await dialog.getByRole('checkbox', { name: 'shop: shop/visits' }).check();
    await dialog.getByLabel('Backfill mode', { exact: true }).selectOption('Normal');
    await dialog.getByRole('button', { name: 'Start backfill' }).click();
    await dialog.waitFor({ state: 'hidden' });
    const cancel = page.getByRole('button', { name: 'Cancel the backfill of shop/visits' });
    await cancel.waitFor({ timeout: 2 * MINUTE });
    const row = page.locator('tr[data-collection="shop/visits"]');
    assert.match(await row.locator('.phase').textContent(), /backfilling|pending/);
    await page.screenshot({ path: `${shots}/overview-cancel.png`, fullPage: true });
    await cancel.click();
    await allDone('cancel');
    await row.locator('.phase', { hasText: 'partial' }).waitFor();
    const visits = (await (await fetch(new URL('/api/status', url))).json())
      .status.captures[0].bindings.find((b) => b.collection === 'shop/visits');
    assert.equal(visits.phase, 'partial');
    assert.ok(visits.rows < 150_000, `the re-read ran to the end: ${visits.rows} rows`);
  });

  await step('a dataflow reset from the dialog completes', async () => {
    const dialog = await openDialog(/Dataflow reset/);
    assert.equal(await dialog.getByLabel('Destination tables', { exact: true }).inputValue(), 'rebuild');
    await dialog.getByRole('button', { name: 'Start backfill' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await allDone('reset');
    // The partial table of the cancel is whole again.
    const row = page.locator('tr[data-collection="shop/visits"]');
    await row.locator('.phase', { hasText: 'active' }).waitFor();
    await page.screenshot({ path: `${shots}/overview-after-reset.png`, fullPage: true });
  });

  await step('requests from another origin are refused', async () => {
    const before = (await requests()).length;
    // A page of another origin (another port) that posts to the console twice: a form
    // (what a cross-site attacker can send without asking) and a fetch with JSON (which
    // needs a preflight the console refuses).
    const target = new URL('/api/backfill', url).href;
    const evil = http.createServer((req, res) => {
      res.setHeader('Content-Type', 'text/html');
      res.end(`<!doctype html><title>elsewhere</title>
        <p id="fetch">pending</p>
        <form id="f" method="POST" action="${target}" enctype="text/plain">
          <input name='{"kind":"reset","x":"' value='"}'></form>
        <script>
          fetch(${JSON.stringify(target)}, { method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ kind: 'reset' }) })
            .then((r) => { document.getElementById('fetch').textContent = 'answered ' + r.status; })
            .catch(() => { document.getElementById('fetch').textContent = 'blocked'; })
            .finally(() => document.getElementById('f').submit());
        </script>`);
    });
    await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
    const elsewhere = `http://127.0.0.1:${evil.address().port}/`;
    const other = await browser.newPage();
    const posted = other.waitForResponse((r) => r.url() === target && r.request().method() === 'POST'
      && r.request().postData()?.includes('reset'));
    await other.goto(elsewhere);
    const refused = await posted;
    assert.equal(refused.status(), 403, 'the cross-site form post');
    await other.getByText(/cross-site request refused/).waitFor();
    await other.close();
    evil.close();
    // The same refusal outside a browser, with a forged Origin.
    const forged = await fetch(target, {
      method: 'POST', headers: { Origin: 'http://evil.example', 'Content-Type': 'application/json' },
      body: JSON.stringify({ kind: 'reset' }),
    });
    assert.equal(forged.status, 403);
    assert.match((await forged.json()).error, /cross-site request refused/);
    const after = await requests();
    assert.equal(after.length, before, 'a refused request was written');
    assert.equal(after.filter((r) => r.kind === 'reset').length, 1, 'a reset was requested from elsewhere');
  });
  await browser.close();
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
