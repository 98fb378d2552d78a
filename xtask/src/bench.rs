//! `cargo xtask bench [--rows N] [--smoke]`: the connectors against the physical limits,
//! measured as ratios in one run on the same data (the machine is shared and noisy).
//!
//! | figure | reference in the same run |
//! |---|---|
//! | PostgreSQL backfill rows/s | `COPY bench TO STDOUT (FORMAT binary)` through psql |
//! | PostgreSQL streaming changes/s | `pg_recvlogical` draining a pgoutput slot of the same changes |
//! | MariaDB backfill rows/s | `mariadb-dump --quick --single-transaction` |
//!
//! Every connector run writes to /dev/null and is timed as a whole process; peak RSS is
//! sampled from /proc. Results go to stdout as a table and to `target/bench/results.json`.
//! `--smoke` uses the debug binaries and a tiny table: it checks that the command works.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::servers::{MariaDbServer, PgServer};

struct Timed {
    seconds: f64,
    peak_rss_mib: f64,
}

fn run_timed(cmd: &mut Command) -> Result<Timed, String> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id();
    let mut peak = 0u64;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("{cmd:?} failed: {err}"));
            }
            break;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let rss = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Timed {
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak as f64 / 1024.0,
    })
}

fn capture_cmd(binary: &std::path::Path, dir: &std::path::Path) -> Command {
    let mut c = Command::new(binary);
    c.args([
        "capture",
        "--until-caught-up",
        "--log-level",
        "error",
        "--config",
    ])
    .arg(dir.join("config.json"))
    .arg("--state")
    .arg(dir.join("state.json"));
    c
}

#[allow(clippy::print_stdout, clippy::too_many_lines)] // the bench's output
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let rows: u64 = args
        .windows(2)
        .find(|w| w[0] == "--rows")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 1_000_000 });
    let profile = if smoke { "debug" } else { "release" };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        "source-postgres-bin",
        "-p",
        "source-mysql-bin",
    ]);
    if !smoke {
        build.arg("--release");
    }
    if !build.status().map_err(|e| e.to_string())?.success() {
        return Err("building the connectors failed".into());
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let pg_bin = target.join(profile).join("source-postgres");
    let my_bin = target.join(profile).join("source-mysql");
    let work = target.join("bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut results = Vec::new();

    // PostgreSQL backfill.
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    pg.sql(&format!(
        "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(20,4), e jsonb);
         INSERT INTO bench SELECT g, g % 1000, repeat(md5(g::text), 3) || 'abcd', '2020-01-01'::timestamptz + g * interval '1 second',
                g * 1.2345, jsonb_build_object('k', g, 's', 'x') FROM generate_series(1, {rows}) g;
         CREATE TABLE changes (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(20,4), e jsonb)"
    ))
    .map_err(|e| e.to_string())?;
    pg.sql("VACUUM ANALYZE").map_err(|e| e.to_string())?;
    let psql = testkit::servers::postgres_bindir()
        .map(|d| d.join("psql"))
        .ok_or("no psql")?;
    let copy = run_timed(Command::new(&psql).arg(&pg.url).args([
        "-X",
        "-c",
        "COPY bench TO STDOUT (FORMAT binary)",
    ]))?;
    let dir = work.join("pg-backfill");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let endpoint = json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "advanced": {"chunk_size": 10000}});
    std::fs::write(dir.join("config.json"), json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "public", "stream": "bench", "mode": "Precise"}, "target": "b"}]}).to_string()).map_err(|e| e.to_string())?;
    let ours = run_timed(&mut capture_cmd(&pg_bin, &dir))?;
    results.push(json!({"what": "PostgreSQL backfill", "rows": rows, "seconds": ours.seconds, "reference": "COPY binary via psql",
        "reference_seconds": copy.seconds, "ratio": copy.seconds / ours.seconds, "target": 0.8, "peak_rss_mib": ours.peak_rss_mib}));

    // PostgreSQL streaming: the same changes read by the connector and by pg_recvlogical.
    let sdir = work.join("pg-stream");
    let _ = std::fs::remove_dir_all(&sdir);
    std::fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
    let endpoint = json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "slot": "bench_slot", "publication": "bench_pub"});
    std::fs::write(sdir.join("config.json"), json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "public", "stream": "changes", "mode": "Precise"}, "target": "c"}]}).to_string()).map_err(|e| e.to_string())?;
    run_timed(&mut capture_cmd(&pg_bin, &sdir))?;
    pg.sql("SELECT pg_create_logical_replication_slot('ref_slot', 'pgoutput')")
        .map_err(|e| e.to_string())?;
    let txns = (rows / 1000).max(1);
    pg.sql(&format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP
           INSERT INTO changes SELECT g, g % 1000, md5(g::text), now(), g * 1.5, jsonb_build_object('k', g) FROM generate_series(t * 1000 + 1, t * 1000 + 500) g;
           UPDATE changes SET a = a + 1 WHERE id > t * 1000 AND id <= t * 1000 + 250;
           DELETE FROM changes WHERE id > t * 1000 + 250 AND id <= t * 1000 + 500;
           COMMIT;
         END LOOP; END $$",
        txns - 1
    ))
    .map_err(|e| e.to_string())?;
    let end: String = pg
        .sql("SELECT pg_current_wal_insert_lsn()")
        .map_err(|e| e.to_string())?;
    let changes = txns * 1000;
    let recv = run_timed(Command::new(psql.with_file_name("pg_recvlogical")).args([
        "-d",
        &pg.url,
        "--slot",
        "ref_slot",
        "--start",
        "--no-loop",
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=bench_pub",
        "-E",
        &end,
        "-f",
        "/dev/null",
    ]))?;
    let ours = run_timed(&mut capture_cmd(&pg_bin, &sdir))?;
    results.push(json!({"what": "PostgreSQL streaming", "changes": changes, "seconds": ours.seconds, "reference": "pg_recvlogical (pgoutput)",
        "reference_seconds": recv.seconds, "ratio": recv.seconds / ours.seconds, "target": 0.9, "peak_rss_mib": ours.peak_rss_mib}));
    drop(pg);

    // MariaDB backfill.
    let db = MariaDbServer::start().map_err(|e| e.to_string())?;
    db.sql(&format!(
        "CREATE TABLE test.bench (id BIGINT PRIMARY KEY, a INT, b TEXT, c TIMESTAMP(6), d DECIMAL(20,4), e JSON);
         INSERT INTO test.bench
           SELECT seq, seq % 1000, REPEAT(MD5(seq), 3), '2020-01-01' + INTERVAL seq SECOND, seq * 1.2345, JSON_OBJECT('k', seq, 's', 'x') FROM test.seq_1_to_{rows}"
    ))
    .map_err(|e| e.to_string())?;
    let dump = run_timed(Command::new("mariadb-dump").args([
        "--no-defaults",
        "--quick",
        "--single-transaction",
        "--protocol=TCP",
        "-h",
        "127.0.0.1",
        "-P",
        &db.port.to_string(),
        "-u",
        "root",
        "test",
        "bench",
    ]))?;
    let mdir = work.join("maria-backfill");
    let _ = std::fs::remove_dir_all(&mdir);
    std::fs::create_dir_all(&mdir).map_err(|e| e.to_string())?;
    std::fs::write(mdir.join("config.json"), json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 10000}},
        "bindings": [{"resource": {"namespace": "test", "stream": "bench", "mode": "Precise"}, "target": "b"}]}).to_string()).map_err(|e| e.to_string())?;
    let ours = run_timed(&mut capture_cmd(&my_bin, &mdir))?;
    results.push(json!({"what": "MariaDB backfill", "rows": rows, "seconds": ours.seconds, "reference": "mariadb-dump --quick --single-transaction",
        "reference_seconds": dump.seconds, "ratio": dump.seconds / ours.seconds, "target": 0.9, "peak_rss_mib": ours.peak_rss_mib}));
    drop(db);

    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}",
        "what", "n", "ours s", "ref s", "ratio", "target", "RSS MiB"
    );
    for r in &results {
        let n = r
            .get("rows")
            .or_else(|| r.get("changes"))
            .cloned()
            .unwrap_or(Value::Null);
        println!(
            "{:<24} {:>10} {:>10.2} {:>10.2} {:>8.2} {:>8.2} {:>9.1}",
            r["what"].as_str().unwrap_or(""),
            n,
            r["seconds"].as_f64().unwrap_or(0.0),
            r["reference_seconds"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["target"].as_f64().unwrap_or(0.0),
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
        );
    }
    let out = work.join("results.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({"profile": profile, "results": results}))
            .unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    println!("figures with their references: {}", out.display());
    Ok(())
}
