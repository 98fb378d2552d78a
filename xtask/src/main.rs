//! Project automation, run as `cargo xtask <command>`:
//!
//! * `ci`: what CI runs: `cargo fmt --check`, clippy with warnings denied, every test
//!   (cargo-nextest when installed, `cargo test` otherwise), then the browser tests;
//! * `dbs`: start a throwaway PostgreSQL and MariaDB configured for CDC, print their URLs,
//!   and stop them on SIGINT or SIGTERM (stdin may be closed);
//! * `demo`: a throwaway PostgreSQL shop captured live by `source-postgres`;
//! * `bench`: throughput against the physical limits, as ratios in one run;
//! * `torture`: long runs of the torture and fault suite (`--minutes N`, `--seed S`);
//! * `browser-test`: the web console in headless Chromium, driven by Playwright.

mod bench;
mod browser;
mod demo;
mod torture;

use std::process::{Command, ExitCode};

use testkit::servers::{MariaDbServer, PgServer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("dbs") => dbs(),
        Some("demo") => demo::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("torture") => torture::run(&args[1..]),
        Some("browser-test") => browser::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | dbs | demo | browser-test | bench [--rows N] [--smoke] [--linear] | torture [--minutes N] [--seed S] [--only postgres|mariadb]>\n  browser-test  the web console in headless Chromium (Playwright), against a live pipeline\n  torture  connectors under load, SIGKILLs and faults, checked; then the decoder fuzz\n  bench connector throughput as ratios to COPY, pg_recvlogical, mariadb-dump\n  demo a live capture of a throwaway PostgreSQL shop\n  ci   fmt check, clippy -D warnings, all tests\n  dbs  start throwaway PostgreSQL and MariaDB and print their URLs"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    succeed(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args),
        &format!("`cargo {}`", args.join(" ")),
    )
}

/// Runs `command` to its end; `what` names it when it cannot start or fails.
pub(crate) fn succeed(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn has_nextest() -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    if has_nextest() {
        // nextest does not run doctests; run them first so that the summary of every other
        // test is the last thing printed.
        cargo(&["test", "--workspace", "--doc", "--quiet"])?;
        // The bench command must keep working; a tiny run proves it (not a measurement).
        bench::run(&["--smoke".to_string()])?;
        cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--success-output",
            "never",
            "--failure-output",
            "final",
        ])?;
        // The console in a real browser, against a live pipeline.
        browser::run()
    } else {
        cargo(&["test", "--workspace", "--no-fail-fast"])?;
        browser::run()
    }
}

#[allow(clippy::print_stdout)] // the URLs are this command's output
fn dbs() -> Result<(), String> {
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    let maria = MariaDbServer::start().map_err(|e| e.to_string())?;
    println!("TEST_POSTGRES_URL={}", pg.url);
    println!("TEST_MYSQL_URL={}", maria.url);
    // Whether or not stdin is open: `cargo xtask dbs &` or `</dev/null` must keep them.
    eprintln!("both servers run until Ctrl-C (SIGINT) or SIGTERM");
    let stopped = wait_for_a_stop_signal();
    drop((pg, maria));
    stopped
}

/// Blocks until SIGINT or SIGTERM arrives.
fn wait_for_a_stop_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        Ok(())
    })
}
