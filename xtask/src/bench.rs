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
//! `--only postgres|mariadb` runs one database's figures. `--perf` runs every connector a
//! second time from the same state under `perf record` (not timed) and writes the flat
//! profile next to its config (`target/bench/<run>/perf.txt`): what bounds a figure.
//! `--hold` keeps each server running after its figures until `target/bench/hold` is
//! removed, for profiling by hand from `state.before.json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::servers::{MariaDbServer, PgServer};

struct Timed {
    seconds: f64,
    peak_rss_mib: f64,
    /// User + system CPU seconds (sampled from /proc every 10 ms; the last sample before
    /// exit).
    cpu_seconds: f64,
}

/// utime + stime of a running process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
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
    let mut ticks = 0u64;
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
        if let Some(t) = cpu_ticks(pid) {
            ticks = t;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Timed {
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak as f64 / 1024.0,
        cpu_seconds: ticks as f64 / 100.0,
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

/// Runs a capture timed; with `--perf`, runs it again from the same state under
/// `perf record` and writes the flat profile to `perf.txt` beside the config.
fn run_capture(
    binary: &std::path::Path,
    dir: &std::path::Path,
    perf: bool,
) -> Result<Timed, String> {
    let state = dir.join("state.json");
    let before = std::fs::read(&state).ok();
    if let Some(b) = &before {
        // Kept for reruns by hand (`--hold`): copy it back over state.json.
        std::fs::write(dir.join("state.before.json"), b).map_err(|e| e.to_string())?;
    }
    let timed = run_timed(&mut capture_cmd(binary, dir))?;
    if perf {
        match &before {
            Some(b) => std::fs::write(&state, b).map_err(|e| e.to_string())?,
            None => {
                let _ = std::fs::remove_file(&state);
            }
        }
        let data = dir.join("perf.data");
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-F", "1999", "-o"])
            .arg(&data)
            .arg("--");
        let inner = capture_cmd(binary, dir);
        cmd.arg(inner.get_program()).args(inner.get_args());
        run_timed(&mut cmd)?;
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&data)
            .output()
            .map_err(|e| format!("perf report: {e}"))?;
        std::fs::write(dir.join("perf.txt"), &report.stdout).map_err(|e| e.to_string())?;
    }
    Ok(timed)
}

/// What every figure's run shares.
#[derive(Clone, Copy)]
struct Run<'a> {
    work: &'a std::path::Path,
    rows: u64,
    perf: bool,
    hold: bool,
}

/// One figure: ours against the reference in the same run, with CPU per million.
fn figure(what: &str, n: u64, ours: &Timed, reference: &str, r: &Timed, target: f64) -> Value {
    json!({"what": what, "n": n, "seconds": ours.seconds, "reference": reference,
        "reference_seconds": r.seconds, "ratio": r.seconds / ours.seconds, "target": target,
        "peak_rss_mib": ours.peak_rss_mib, "cpu_seconds": ours.cpu_seconds,
        "cpu_seconds_per_million": ours.cpu_seconds * 1e6 / n.max(1) as f64})
}

/// A fresh directory with a config capturing `stream` in `mode`.
fn capture_dir(
    work: &std::path::Path,
    name: &str,
    endpoint: &Value,
    namespace: &str,
    stream: &str,
    mode: &str,
) -> Result<std::path::PathBuf, String> {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("config.json"),
        json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": namespace, "stream": stream, "mode": mode}, "target": stream}]}).to_string(),
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

#[allow(clippy::print_stdout, clippy::too_many_lines)] // the bench's output
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let rows: u64 = args
        .windows(2)
        .find(|w| w[0] == "--rows")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 1_000_000 });
    let only = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].as_str());
    let (with_pg, with_maria) = match only {
        None => (true, true),
        Some("postgres") => (true, false),
        Some("mariadb") => (false, true),
        Some(other) => return Err(format!("--only postgres|mariadb, not {other}")),
    };
    let perf = args.iter().any(|a| a == "--perf");
    let hold = args.iter().any(|a| a == "--hold");
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

    let run = Run {
        work: &work,
        rows,
        perf,
        hold,
    };
    if with_pg {
        postgres(&pg_bin, &run, &mut results)?;
    }
    if with_maria {
        mariadb(&my_bin, &run, &mut results)?;
    }

    println!(
        "{:<30} {:>9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>12}",
        "what", "n", "ours s", "ref s", "ratio", "target", "RSS MiB", "CPU s/1M"
    );
    for r in &results {
        println!(
            "{:<30} {:>9} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>8.1} {:>12.2}",
            r["what"].as_str().unwrap_or(""),
            r["n"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["reference_seconds"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["target"].as_f64().unwrap_or(0.0),
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            r["cpu_seconds_per_million"].as_f64().unwrap_or(0.0),
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

/// The PostgreSQL figures: backfill (with Normal and the chunk sweep) and streaming.
#[allow(clippy::too_many_lines)]
fn postgres(
    pg_bin: &std::path::Path,
    run: &Run<'_>,
    results: &mut Vec<Value>,
) -> Result<(), String> {
    let Run {
        work,
        rows,
        perf,
        hold,
    } = *run;
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
    let pg_endpoint = |chunk: u64| json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "advanced": {"chunk_size": chunk}});
    let dir = capture_dir(
        work,
        "pg-backfill",
        &pg_endpoint(10_000),
        "public",
        "bench",
        "Precise",
    )?;
    let ours = run_capture(pg_bin, &dir, perf)?;
    results.push(figure(
        "PostgreSQL backfill",
        rows,
        &ours,
        "COPY binary via psql",
        &copy,
        0.8,
    ));
    // What Precise costs over Normal, and the chunk size: the same table, the same reference.
    for (mode, chunk) in [("Normal", 10_000), ("Precise", 1_000), ("Precise", 50_000)] {
        let dir = capture_dir(
            work,
            &format!("pg-{mode}-{chunk}"),
            &pg_endpoint(chunk),
            "public",
            "bench",
            mode,
        )?;
        let t = run_capture(pg_bin, &dir, perf)?;
        results.push(figure(
            &format!("  {mode}, chunks of {chunk}"),
            rows,
            &t,
            "COPY binary via psql",
            &copy,
            0.8,
        ));
    }

    // PostgreSQL streaming: the same changes read by the connector and by pg_recvlogical.
    let sdir = work.join("pg-stream");
    let _ = std::fs::remove_dir_all(&sdir);
    std::fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
    let endpoint = json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "slot": "bench_slot", "publication": "bench_pub"});
    std::fs::write(sdir.join("config.json"), json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "public", "stream": "changes", "mode": "Precise"}, "target": "c"}]}).to_string()).map_err(|e| e.to_string())?;
    run_timed(&mut capture_cmd(pg_bin, &sdir))?;
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
    let ours = run_capture(pg_bin, &sdir, perf)?;
    results.push(figure(
        "PostgreSQL streaming",
        changes,
        &ours,
        "pg_recvlogical (pgoutput)",
        &recv,
        0.9,
    ));
    hold_server(work, hold, &pg.url);
    drop(pg);
    Ok(())
}

/// The MariaDB figures: backfill and streaming.
#[allow(clippy::too_many_lines)]
fn mariadb(
    my_bin: &std::path::Path,
    run: &Run<'_>,
    results: &mut Vec<Value>,
) -> Result<(), String> {
    let Run {
        work,
        rows,
        perf,
        hold,
    } = *run;
    let txns = (rows / 1000).max(1);
    let changes = txns * 1000;
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
    let my_endpoint = json!({"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 10000}});
    let mdir = capture_dir(
        work,
        "maria-backfill",
        &my_endpoint,
        "test",
        "bench",
        "Precise",
    )?;
    let ours = run_capture(my_bin, &mdir, perf)?;
    results.push(figure(
        "MariaDB backfill",
        rows,
        &ours,
        "mariadb-dump --quick --single-transaction",
        &dump,
        0.9,
    ));

    // MariaDB streaming: the change workload read by the connector and by mariadb-binlog.
    db.sql("CREATE TABLE test.changes (id BIGINT PRIMARY KEY, a INT, b TEXT, c TIMESTAMP(6), d DECIMAL(20,4), e JSON)")
        .map_err(|e| e.to_string())?;
    let sdir = capture_dir(
        work,
        "maria-stream",
        &my_endpoint,
        "test",
        "changes",
        "Precise",
    )?;
    run_timed(&mut capture_cmd(my_bin, &sdir))?;
    let status = db.sql("SHOW MASTER STATUS").map_err(|e| e.to_string())?;
    let mut parts = status.split_whitespace();
    let (file, pos) = (
        parts.next().ok_or("no binlog")?.to_string(),
        parts.next().ok_or("no binlog position")?.to_string(),
    );
    let mut script = String::new();
    for t in 0..txns {
        let base = t * 1000;
        script.push_str(&format!(
            "START TRANSACTION;
             INSERT INTO test.changes SELECT seq, seq % 1000, MD5(seq), NOW(6), seq * 1.5, JSON_OBJECT('k', seq) FROM test.seq_{}_to_{};
             UPDATE test.changes SET a = a + 1 WHERE id > {base} AND id <= {};
             DELETE FROM test.changes WHERE id > {} AND id <= {};
             COMMIT;\n",
            base + 1,
            base + 500,
            base + 250,
            base + 250,
            base + 500
        ));
    }
    let mut load = testkit::servers::mariadb_session(db.port)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = load.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.as_bytes()).map_err(|e| e.to_string())?;
    }
    if !load.wait().map_err(|e| e.to_string())?.success() {
        return Err("loading the MariaDB change workload failed".into());
    }
    let binlog = run_timed(Command::new("mariadb-binlog").args([
        "--no-defaults",
        "--read-from-remote-server",
        "--to-last-log",
        "-v",
        "-h",
        "127.0.0.1",
        "-P",
        &db.port.to_string(),
        "-u",
        "root",
        &format!("--start-position={pos}"),
        &file,
    ]))?;
    let ours = run_capture(my_bin, &sdir, perf)?;
    results.push(figure(
        "MariaDB streaming",
        changes,
        &ours,
        "mariadb-binlog --read-from-remote-server -v",
        &binlog,
        1.0,
    ));
    hold_server(work, hold, &format!("mysql://root@127.0.0.1:{}", db.port));
    drop(db);
    Ok(())
}

/// With `--hold`, waits until `target/bench/hold` is removed before the server stops.
#[allow(clippy::print_stdout)] // tells the person at the terminal what to do
fn hold_server(work: &std::path::Path, hold: bool, url: &str) {
    if !hold {
        return;
    }
    let flag = work.join("hold");
    if std::fs::write(&flag, url).is_err() {
        return;
    }
    println!("holding {url}; remove {} to go on", flag.display());
    while flag.exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
}
