//! `cargo xtask torture [--minutes N] [--seed S] [--only postgres|mariadb]`: the torture
//! and fault suite's long runs (CI runs the small configuration as tests).
//!
//! The time is shared out: the random workload on each database (most of it), pgbench and
//! sysbench, then the decoder fuzz tests with `FUZZ_SECONDS`. Connector binaries are debug
//! builds, so that overflow checks and debug assertions are on. Every run prints its
//! figures; any violation makes the command fail, with the seed to replay the workload.

use std::process::Command;
use std::time::Duration;

use testkit::servers::{MariaDbServer, PgServer};
use testkit::torture::{self, Figures, Settings};

struct Args {
    minutes: f64,
    seed: u64,
    postgres: bool,
    mariadb: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        minutes: 10.0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        postgres: true,
        mariadb: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => a.minutes = value()?.parse().map_err(|_| "--minutes N")?,
            "--seed" => a.seed = value()?.parse().map_err(|_| "--seed S")?,
            "--only" => match value()?.as_str() {
                "postgres" => a.mariadb = false,
                "mariadb" => a.postgres = false,
                other => return Err(format!("--only postgres|mariadb, not {other}")),
            },
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

#[allow(clippy::print_stdout)] // the figures are this command's output
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    crate::cargo(&[
        "build",
        "-p",
        "source-postgres-bin",
        "-p",
        "source-mysql-bin",
    ])?;
    let dbs = f64::from(u8::from(a.postgres) + u8::from(a.mariadb)).max(1.0);
    let share =
        |fraction: f64| Duration::from_secs_f64((a.minutes * 60.0 * fraction / dbs).max(10.0));
    let long = |fraction: f64| Settings {
        duration: share(fraction),
        writers: 4,
        initial_rows: 2_000,
        chunk_size: 32,
        big_txn_rows: 20_000,
        ..Settings::small(a.seed)
    };
    let mut all: Vec<Figures> = Vec::new();
    let mut keep = |f: Option<Figures>| {
        if let Some(f) = f {
            println!("{f}\n");
            all.push(f);
        }
    };
    if a.postgres {
        let mut pg = PgServer::start().map_err(|e| e.to_string())?;
        keep(torture::random_workload(&mut pg, &long(0.7))?);
        drop(pg);
        let mut pg = PgServer::start().map_err(|e| e.to_string())?;
        keep(torture::pgbench(
            &mut pg,
            &Settings {
                chunk_size: 2_000,
                ..long(0.15)
            },
        )?);
    }
    if a.mariadb {
        let mut maria = MariaDbServer::start().map_err(|e| e.to_string())?;
        keep(torture::random_workload(&mut maria, &long(0.7))?);
        drop(maria);
        let mut maria = MariaDbServer::start().map_err(|e| e.to_string())?;
        keep(torture::sysbench(
            &mut maria,
            &Settings {
                chunk_size: 100,
                ..long(0.15)
            },
        )?);
    }
    // The decoders: the rest of the time, half each.
    let fuzz = (a.minutes * 60.0 * 0.15 / 2.0).max(5.0);
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "-p",
            "suites",
            "--test",
            "torture",
            "fuzz::",
            "--",
            "--nocapture",
        ])
        .env("FUZZ_SECONDS", format!("{fuzz:.0}"))
        .env("TORTURE_SEED", a.seed.to_string())
        .status()
        .map_err(|e| format!("cannot run the fuzz tests: {e}"))?;
    let violations: usize = all.iter().map(|f| f.violations.len()).sum();
    println!(
        "torture (seed {}): {} runs, {} connector processes, {} SIGKILLs, {} faults, {} changes written, {} rows compared, {violations} violations; decoder fuzz {}",
        a.seed,
        all.len(),
        all.iter().map(|f| f.runs).sum::<usize>(),
        all.iter().map(|f| f.kills).sum::<usize>(),
        all.iter().flat_map(|f| f.faults.values()).sum::<usize>(),
        all.iter().map(|f| f.changes).sum::<u64>(),
        all.iter().map(|f| f.rows_compared).sum::<usize>(),
        if status.success() { "passed" } else { "FAILED" },
    );
    if violations > 0 || !status.success() {
        return Err(format!(
            "torture found problems; replay with --seed {}",
            a.seed
        ));
    }
    Ok(())
}
