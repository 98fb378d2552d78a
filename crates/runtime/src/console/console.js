// The cdc console's page: renders what /api/events publishes, draws the last hour from
// /api/history, and posts the backfill dialog to /api/backfill. Every text goes in through
// textContent (names come from the pipeline spec, notes from the store).
'use strict';

const HOUR_MS = 3600 * 1000;
const SAMPLE_MS = 2000;
const state = { snapshot: null, history: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k === 'onclick') node.addEventListener('click', v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') node.textContent = v; else node.setAttribute(k, String(v));
  }
  return node;
}

const count = (n) => Number(n || 0).toLocaleString('en-US');
const rate = (n) => (n === null || n === undefined ? '–' : Math.max(0, Math.round(n)).toLocaleString('en-US'));

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function lag(seconds) {
  return seconds === null || seconds === undefined ? '–' : `${seconds.toFixed(1)} s`;
}

// A phase as words and a sign, so that it reads without colour.
function phase(p) {
  const signs = { active: '✓', backfilling: '⟳', pending: '…', partial: '⚠', 'not started': '○' };
  return `${signs[p] || ''} ${p}`.trim();
}

// Re-rendering replaces nodes: keep the keyboard focus on the control with the same key.
function keepingFocus(render) {
  const key = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.key : null;
  render();
  if (key) {
    const again = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

function render(snapshot) {
  state.snapshot = snapshot;
  const error = document.getElementById('error');
  error.hidden = !snapshot.error;
  error.textContent = snapshot.error || '';
  if (snapshot.sample) addSample(snapshot.sample);
  if (!snapshot.status) return;
  keepingFocus(() => {
    renderCaptures(snapshot);
    renderMaterializations(snapshot);
    renderRequests(snapshot.status.requests || []);
  });
  drawCharts();
}

function progressCell(b) {
  const label = `Backfill of ${b.collection}`;
  const bar = b.percent === null || b.percent === undefined
    ? el('progress', { 'aria-label': label })
    : el('progress', { max: 100, value: b.percent.toFixed(1), 'aria-label': label });
  const pct = b.percent === null || b.percent === undefined ? '' : `${b.percent.toFixed(1)}% · `;
  const of = b.estimated_rows ? ` of ~${count(b.estimated_rows)}` : '';
  return el('td', { 'data-binding': b.collection },
    bar, el('span', { class: 'progress-text', text: `${pct}${count(b.rows)}${of} rows` }));
}

function renderCaptures(snapshot) {
  const root = document.getElementById('captures');
  root.replaceChildren();
  for (const c of snapshot.status.captures) {
    const spec = snapshot.pipeline.captures.find((x) => x.name === c.capture) || {};
    const last = c.committed_at_ms
      ? `last commit ${duration((snapshot.now_ms - c.committed_at_ms) / 1000)} ago` : 'nothing committed yet';
    root.append(
      el('h3', { text: `${c.capture}${spec.connector ? ` (${spec.connector})` : ''}` }),
      el('p', { class: 'summary', text: `${count(c.units)} units, ${count(c.documents)} documents, ${last}, stream lag ${lag(c.lag_seconds)}` }),
    );
    const head = el('tr', {}, ...['Collection', 'Phase', 'Mode', 'Progress', 'Rows/s', 'ETA', 'Stream lag', 'Actions']
      .map((h, i) => el('th', { scope: 'col', class: i >= 4 && i <= 6 ? 'num' : null, text: h })));
    const rows = c.bindings.map((b) => {
      const actions = el('td');
      if (b.phase === 'backfilling' || b.phase === 'pending') {
        actions.append(el('button', {
          type: 'button', class: 'danger cancel', 'data-key': `cancel:${c.capture}:${b.collection}`,
          'aria-label': `Cancel the backfill of ${b.collection}`, text: 'Cancel backfill',
          onclick: () => post({ kind: 'cancel', bindings: [b.collection] }, null),
        }));
      }
      return el('tr', { 'data-collection': b.collection },
        el('th', { scope: 'row', text: b.collection }),
        el('td', { class: 'phase', text: phase(b.phase) }),
        el('td', { text: b.mode || '–' }),
        progressCell(b),
        el('td', { class: 'num', text: rate(b.rows_per_second) }),
        el('td', { class: 'num', text: duration(b.eta_seconds) }),
        el('td', { class: 'num', text: lag(c.lag_seconds) }),
        actions);
    });
    root.append(el('table', {}, el('caption', { class: 'summary', text: `Bindings of ${c.capture}` }),
      el('thead', {}, head), el('tbody', {}, ...rows)));
  }
}

function renderMaterializations(snapshot) {
  const root = document.getElementById('materializations');
  root.replaceChildren();
  const ms = snapshot.status.materializations;
  if (!ms.length) { root.append(el('p', { text: 'None.' })); return; }
  for (const m of ms) {
    const spec = snapshot.pipeline.materializations.find((x) => x.name === m.materialization) || {};
    root.append(el('h3', { text: `${m.materialization}${spec.destination ? ` (${spec.destination})` : ''}` }));
    if (m.error) root.append(el('p', { role: 'alert', text: `Destination unreadable: ${m.error}` }));
    const head = el('tr', {}, ...['Collection', 'Table', 'Updates', 'Applied', 'Committed', 'Behind']
      .map((h, i) => el('th', { scope: 'col', class: i >= 3 ? 'num' : null, text: h })));
    const rows = m.tables.map((t, i) => {
      const binding = (spec.bindings || [])[i] || {};
      return el('tr', { 'data-table': t.table },
        el('td', { text: t.collection }),
        el('th', { scope: 'row', text: t.table }),
        el('td', { text: binding.delta_updates ? 'delta' : 'standard' }),
        el('td', { class: 'num', text: count(t.position) }),
        el('td', { class: 'num', text: count(t.committed) }),
        el('td', { class: 'num behind', text: `${count(t.lag_lines)} lines` }));
    });
    root.append(el('table', {}, el('caption', { class: 'summary', text: `Tables of ${m.materialization} (positions in lines of the capture's log)` }),
      el('thead', {}, head), el('tbody', {}, ...rows)));
  }
}

function renderRequests(requests) {
  const root = document.getElementById('requests');
  root.replaceChildren();
  if (!requests.length) { root.append(el('li', { text: 'None in the last hour.' })); return; }
  for (const r of requests.slice().reverse()) {
    const on = r.capture || r.materialization || '';
    const note = r.note ? ` (${r.note})` : '';
    const sign = r.phase === 'done' ? '✓' : '⟳';
    root.append(el('li', { 'data-request': r.id, 'data-phase': r.phase },
      el('strong', { text: `${sign} ${r.phase}` }),
      ` ${r.kind} of ${on} [${r.collections.join(', ')}], tables: ${r.table}${note} · ${r.id}`));
  }
}

// ---- the chart ------------------------------------------------------------------------

function addSample(sample) {
  const last = state.history[state.history.length - 1];
  if (last && sample.t_ms < last.t_ms + SAMPLE_MS) return;
  state.history.push(sample);
  const since = sample.t_ms - HOUR_MS;
  while (state.history.length && state.history[0].t_ms < since) state.history.shift();
}

function line(chart, points, cls, x, y) {
  if (points.length < 1) return;
  chart.append(svg('polyline', { class: cls, points: points.map(([t, v]) => `${x(t)},${y(v)}`).join(' ') }));
}

function drawChart(id, captionId, series, unit, describe) {
  const chart = document.getElementById(id);
  chart.replaceChildren();
  const [w, h, left, bottom] = [600, 170, 48, 20];
  const now = state.snapshot ? state.snapshot.now_ms : Date.now();
  // The last hour, or less while the console has seen less (a minute at least).
  const first = state.history.length ? state.history[0].t_ms : now;
  const span = Math.min(HOUR_MS, Math.max(60_000, now - first));
  const x = (t) => left + ((t - (now - span)) / span) * (w - left - 4);
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const top = Math.max(1, ...all) * 1.1;
  const y = (v) => h - bottom - (v / top) * (h - bottom - 8);
  chart.append(svg('line', { class: 'axis', x1: left, y1: h - bottom, x2: w, y2: h - bottom }));
  chart.append(svg('line', { class: 'axis', x1: left, y1: 4, x2: left, y2: h - bottom }));
  chart.append(svg('text', { x: 2, y: 14, text: `${rate(top)} ${unit}` }));
  chart.append(svg('text', { x: 2, y: h - bottom, text: '0' }));
  chart.append(svg('text', { x: left, y: h - 4, text: `−${duration(span / 1000)}` }));
  chart.append(svg('text', { x: w - 30, y: h - 4, text: 'now' }));
  series.forEach((s) => line(chart, s.points, s.cls, x, y));
  document.getElementById(captionId).textContent = describe;
}

function drawCharts() {
  const h = state.history;
  const last = h[h.length - 1];
  const docs = h.filter((s) => s.documents_per_second !== null).map((s) => [s.t_ms, s.documents_per_second]);
  const rows = h.map((s) => [s.t_ms, s.rows_per_second || 0]);
  const lags = h.filter((s) => s.lag_seconds !== null).map((s) => [s.t_ms, s.lag_seconds]);
  drawChart('throughput-chart', 'throughput-caption',
    [{ points: docs, cls: 'series-a' }, { points: rows, cls: 'series-b' }], '/s',
    last ? `Throughput: documents committed per second (solid line), now ${rate(last.documents_per_second)}; rows backfilled per second (dashed line), now ${rate(last.rows_per_second)}. ${h.length} samples.`
      : 'Throughput: no samples yet.');
  drawChart('lag-chart', 'lag-caption', [{ points: lags, cls: 'series-a' }], 's',
    last ? `Lag: seconds from a change's commit at the source to its landing (largest capture), now ${lag(last.lag_seconds)}; the destination tables are at most ${count(last.behind_lines)} lines behind.`
      : 'Lag: no samples yet.');
}

// ---- actions --------------------------------------------------------------------------

async function post(body, messageId) {
  const say = (text) => {
    document.getElementById(messageId || 'notice').textContent = text;
  };
  try {
    const response = await fetch('/api/backfill', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) { say(`Refused: ${answer.error}`); return false; }
    document.getElementById('notice').textContent = `Requested: ${answer.requested.join('; ')}`;
    return true;
  } catch (e) {
    say(`The console did not answer: ${e}`);
    return false;
  }
}

function dialogKind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

// The dialog's bindings and defaults follow its kind, as the reference docs' dialog does.
function fillDialog() {
  const kind = dialogKind();
  const list = document.getElementById('bindings-list');
  const p = state.snapshot ? state.snapshot.pipeline : { captures: [], materializations: [] };
  list.replaceChildren();
  const choices = kind === 'materialization'
    ? p.materializations.flatMap((m) => m.bindings.map((b) => ({ value: b.target, text: `${m.name}: ${b.source} → ${b.target}` })))
    : p.captures.flatMap((c) => c.collections.map((col) => ({ value: col, text: `${c.name}: ${col}` })));
  document.getElementById('bindings-legend').textContent = kind === 'materialization'
    ? 'Destination tables (none checked: all)' : 'Bindings (none checked: all)';
  for (const c of choices) {
    list.append(el('label', {}, el('input', { type: 'checkbox', name: 'binding', value: c.value }), el('span', { text: c.text })));
  }
  const table = document.getElementById('table');
  table.querySelector('option[value="keep"]').disabled = kind === 'materialization';
  table.value = kind === 'incremental' ? 'keep' : 'rebuild';
  const mode = document.getElementById('mode');
  mode.disabled = kind === 'materialization';
  if (mode.disabled) mode.value = '';
  document.getElementById('dialog-message').textContent = '';
}

function setUpDialog() {
  const dialog = document.getElementById('backfill-dialog');
  document.getElementById('open-backfill').addEventListener('click', () => {
    fillDialog();
    dialog.showModal();
    document.querySelector('input[name="kind"]:checked').focus();
  });
  document.getElementById('dialog-close').addEventListener('click', () => dialog.close());
  document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener('change', fillDialog));
  document.getElementById('backfill-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      kind: dialogKind(),
      bindings: [...document.querySelectorAll('input[name="binding"]:checked')].map((b) => b.value),
      table: document.getElementById('table').value,
    };
    const mode = document.getElementById('mode');
    if (!mode.disabled && mode.value) body.mode = mode.value;
    const submit = document.getElementById('dialog-submit');
    submit.disabled = true;
    const ok = await post(body, 'dialog-message');
    submit.disabled = false;
    if (ok) {
      dialog.close();
      document.getElementById('open-backfill').focus();
    }
  });
}

// ---- start ----------------------------------------------------------------------------

async function start() {
  setUpDialog();
  try {
    const history = await fetch('/api/history');
    if (history.ok) state.history = await history.json();
  } catch (e) { /* the chart starts empty */ }
  const connection = document.getElementById('connection');
  const events = new EventSource('/api/events');
  events.addEventListener('status', (e) => render(JSON.parse(e.data)));
  events.addEventListener('open', () => { connection.textContent = 'Live: updated every second'; });
  events.addEventListener('error', () => { connection.textContent = 'Reconnecting to cdc…'; });
}

document.addEventListener('DOMContentLoaded', start);
