//! `cargo xtask browser-test`: the console in a real browser. The demo's shop (with a big
//! `visits` table whose backfill is slow enough to watch and cancel) runs under
//! `cdc run --console` while the shop keeps writing; `xtask/browser/console.test.mjs`
//! drives Debian's Chromium through Playwright's driver (`playwright-core`; no browser is
//! downloaded): the page loads, every progress bar reaches 100%, a materialization backfill
//! from the dialog completes, a cancel stops a capture backfill, a dataflow reset completes,
//! and requests from another origin are refused. Then the writes stop and the warehouse must equal the shop, value
//! for value. Screenshots land in `target/console/`.

#![allow(clippy::print_stdout)] // the test speaks on stdout

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::demo::Demo;

/// Rows of the shop's big table: at chunks of 100, seconds of backfill.
const VISITS: u32 = 150_000;

/// Chromium: `$CHROMIUM`, or Debian's.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

/// `npm ci` in `xtask/browser` unless Playwright's driver is there already.
fn install_driver(dir: &Path) -> Result<(), String> {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Ok(());
    }
    println!("installing playwright-core (the driver only) with npm ci ...");
    crate::succeed(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
        &format!("npm ci in {}", dir.display()),
    )
}

pub(crate) fn run() -> Result<(), String> {
    let Some(chromium) = chromium() else {
        println!(
            "SKIPPED: the browser tests need Chromium: `sudo apt-get install chromium` (or set CHROMIUM)"
        );
        return Ok(());
    };
    if Command::new("node").arg("--version").output().is_err() {
        println!("SKIPPED: the browser tests need Node.js (node and npm)");
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver_dir = root.join("browser");
    install_driver(&driver_dir)?;
    let shots = root.parent().unwrap_or(root).join("target").join("console");
    std::fs::create_dir_all(&shots).map_err(|e| e.to_string())?;

    let demo = Demo::start(Some(VISITS))?;
    let (mut run, url) = demo.run_with_console()?;
    let writing = AtomicBool::new(true);
    let result = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                n += 1;
                demo.write(n)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok::<usize, String>(n)
        });
        let browser = Command::new("node")
            .arg("console.test.mjs")
            .current_dir(&driver_dir)
            .env("CONSOLE_URL", &url)
            .env("CHROMIUM", &chromium)
            .env("SHOTS", &shots)
            .status()
            .map_err(|e| format!("cannot run node: {e}"));
        writing.store(false, Ordering::SeqCst);
        let writes = writer
            .join()
            .map_err(|_| "the writer panicked".to_string())??;
        println!("({writes} writes while the browser worked)");
        match browser? {
            status if status.success() => Ok(()),
            status => Err(format!(
                "the browser tests failed ({status}); screenshots in {}",
                shots.display()
            )),
        }
    });
    let converged = result.and_then(|()| demo.converge("the console's backfills under writes"));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(run.id().to_string())
        .status();
    let _ = run.wait();
    converged?;
    println!("browser tests passed; screenshots in {}", shots.display());
    Ok(())
}
