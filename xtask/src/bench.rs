//! `cargo xtask bench [--rows N] [--smoke]`: the connectors against the physical limits,
//! measured as ratios in one run on the same data (the machine is shared and noisy).
//!
//! | figure | reference in the same run |
//! |---|---|
//! | PostgreSQL backfill rows/s | `COPY bench TO STDOUT (FORMAT binary)` through psql |
//! | PostgreSQL streaming changes/s | `pg_recvlogical` draining a pgoutput slot of the same changes |
//! | MariaDB backfill rows/s | `mariadb-dump --quick --single-transaction` |
//! | MariaDB streaming changes/s | `mariadb-binlog --read-from-remote-server -v` |
//! | `cdc run` landing the PostgreSQL backfill in the embedded store, on JetStream | the connector to /dev/null |
//! | commit-to-stdout latency at 5,000 changes/s | none (p50, p99, max) |
//!
//! Streaming figures run twice: transactions of 1,000 changes, and one transaction of
//! every row. Every connector run writes to /dev/null and is timed as a whole process
//! (except the latency runs, whose stdout is read); peak RSS is sampled from /proc. Results go to stdout as a table and to `target/bench/results.json`.
//! `--smoke` uses the debug binaries and a tiny table: it checks that the command works.
//! `--only postgres|mariadb` runs one database's figures. `--perf` runs every connector a
//! second time from the same state under `perf record` (not timed) and writes the flat
//! profile next to its config (`target/bench/<run>/perf.txt`): what bounds a figure.
//! `--hold` keeps each server running after its figures until `target/bench/hold` is
//! removed, for profiling by hand from `state.before.json`. `--repeat N` (3 by default, 1
//! with `--smoke`) runs each backfill and MariaDB streaming figure as N pairs, reference
//! then connector, and reports the median of the pairs' ratios: one pair on this machine
//! can be off by a factor of two. PostgreSQL streaming runs one pair (its slots are
//! consumed by reading them).

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
        // A rerun cannot always start from the old state (a PostgreSQL slot has moved
        // past it): the figure stands, the profile is skipped with the reason.
        if let Err(e) = run_timed(&mut cmd) {
            let note = format!("no profile: the rerun under perf failed: {e}\n");
            eprint!("{note}");
            std::fs::write(dir.join("perf.txt"), note).map_err(|e| e.to_string())?;
            return Ok(timed);
        }
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
    /// How long the latency figures write at [`LATENCY_RATE`].
    latency_seconds: u64,
    /// Pairs per rerunnable figure (`--repeat`; see [`paired`]).
    repeat: usize,
    /// Also time a backfill of ten times the rows (`--linear`).
    linear: bool,
}

/// The rate at which commit-to-stdout latency is measured (changes per second).
const LATENCY_RATE: u64 = 5_000;

/// The reference's runs and ours, alternating: `refs[i]` ran just before `ours[i]`.
#[derive(Default)]
struct Pairs {
    refs: Vec<Timed>,
    ours: Vec<Timed>,
}

impl Pairs {
    fn one(ours: Timed, reference: Timed) -> Self {
        Self {
            refs: vec![reference],
            ours: vec![ours],
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// One figure: ours against the reference in the same run, with CPU per million. With
/// several pairs, the ratio is the median of each pair's ratio (a pair ran back to back,
/// so it shares the machine's mood), times and CPU are medians, peak RSS the highest.
fn figure(what: &str, n: u64, pairs: &Pairs, reference: &str, target: f64) -> Value {
    let ratios: Vec<f64> = pairs
        .refs
        .iter()
        .zip(&pairs.ours)
        .map(|(r, o)| r.seconds / o.seconds)
        .collect();
    let ours = |f: fn(&Timed) -> f64| median(pairs.ours.iter().map(f).collect());
    let cpu = ours(|t| t.cpu_seconds);
    json!({"what": what, "n": n, "seconds": ours(|t| t.seconds), "reference": reference,
        "reference_seconds": median(pairs.refs.iter().map(|t| t.seconds).collect()),
        "ratio": median(ratios.clone()), "pair_ratios": ratios, "target": target,
        "peak_rss_mib": pairs.ours.iter().map(|t| t.peak_rss_mib).fold(0.0, f64::max),
        "cpu_seconds": cpu, "cpu_seconds_per_million": cpu * 1e6 / n.max(1) as f64})
}

/// Runs the reference and the connector alternately [`Run::repeat`] times, the connector
/// from the same state each time (`dir`'s state file as it is now, or none).
fn paired(
    run: &Run<'_>,
    binary: &std::path::Path,
    dir: &std::path::Path,
    mut reference: impl FnMut() -> Result<Timed, String>,
) -> Result<Pairs, String> {
    let state = dir.join("state.json");
    let before = std::fs::read(&state).ok();
    let mut pairs = Pairs::default();
    for i in 0..run.repeat.max(1) {
        pairs.refs.push(reference()?);
        if i > 0 {
            match &before {
                Some(b) => std::fs::write(&state, b).map_err(|e| e.to_string())?,
                None => {
                    let _ = std::fs::remove_file(&state);
                }
            }
        }
        pairs
            .ours
            .push(run_capture(binary, dir, run.perf && i == 0)?);
    }
    Ok(pairs)
}

/// A keyless backfill (Without Primary Key: PostgreSQL's ctid pages, MySQL's one streamed
/// query) of `bench` against the keyed (Precise) backfill of the same rows, pair by pair.
fn keyless_against_keyed(
    run: &Run<'_>,
    binary: &std::path::Path,
    endpoint: &Value,
    namespace: &str,
    prefix: &str,
) -> Result<Value, String> {
    let dir = |name: &str, mode: &str| {
        capture_dir(
            run.work,
            &format!("{prefix}-{name}"),
            endpoint,
            namespace,
            "bench",
            mode,
        )
    };
    let (keyed, keyless) = (
        dir("keyed", "Precise")?,
        dir("keyless", "Without Primary Key")?,
    );
    let pairs = paired(run, binary, &keyless, || {
        let _ = std::fs::remove_file(keyed.join("state.json"));
        run_capture(binary, &keyed, false)
    })?;
    Ok(figure(
        "  keyless (Without Primary Key)",
        run.rows,
        &pairs,
        "the keyed (Precise) backfill of the same rows",
        0.9,
    ))
}

/// The PostgreSQL bench table's rows, 1 to `n`, in key order.
fn pg_bench_rows(n: u64) -> String {
    format!(
        "SELECT g, g % 1000, repeat(md5(g::text), 3) || 'abcd', '2020-01-01'::timestamptz + g * interval '1 second',
                g * 1.2345, jsonb_build_object('k', g, 's', 'x') FROM generate_series(1, {n}) g"
    )
}

/// Whether a backfill's cost grows linearly: `bench` (N rows) against `bench_x10` (10 N
/// rows made the same way), Precise, one run each; the reference is ten times
/// the N-row time, so the ratio is at least 0.91 when ten times the rows cost at most 1.1
/// times ten times as long.
fn linear_figure(
    run: &Run<'_>,
    binary: &std::path::Path,
    pg: &PgServer,
    endpoint: &Value,
) -> Result<Value, String> {
    eprintln!("loading {} rows for the linear figure ...", run.rows * 10);
    // Rows made like `bench`'s, in key order on the pages as there (rows copied from
    // `bench` ten times over would interleave their keys across pages, and the keyed scan
    // would read each page ten times).
    pg.sql(&format!(
        "CREATE TABLE bench_x10 (LIKE bench INCLUDING ALL); INSERT INTO bench_x10 {}",
        pg_bench_rows(run.rows * 10)
    ))
    .map_err(|e| e.to_string())?;
    pg.sql("VACUUM ANALYZE bench_x10")
        .map_err(|e| e.to_string())?;
    let one = capture_dir(
        run.work,
        "pg-linear-1",
        endpoint,
        "public",
        "bench",
        "Precise",
    )?;
    let ten = capture_dir(
        run.work,
        "pg-linear-10",
        endpoint,
        "public",
        "bench_x10",
        "Precise",
    )?;
    // The load's WAL lies ahead of the slot: an untimed run decodes past it first, so
    // neither timed run pays for it (the first figure measured did, 18 times over).
    run_capture(binary, &one, false)?;
    let _ = std::fs::remove_file(one.join("state.json"));
    let small = run_capture(binary, &one, false)?;
    let big = run_capture(binary, &ten, false)?;
    let reference = Timed {
        seconds: small.seconds * 10.0,
        ..small
    };
    Ok(figure(
        "  10x the rows, Precise",
        run.rows * 10,
        &Pairs::one(big, reference),
        "10x the time of the N-row backfill",
        0.91,
    ))
}

/// The `cdc` runtime (PIPELINE.md §3): the PostgreSQL backfill landed by `cdc run` in the
/// embedded store and on a local JetStream node, each against the same connector writing
/// to /dev/null, pair by pair. Peak RSS is the runtime's own (its connector is the figure
/// above).
fn runtime_figures(
    run: &Run<'_>,
    pg_bin: &std::path::Path,
    endpoint: &Value,
    results: &mut Vec<Value>,
) -> Result<(), String> {
    let cdc = pg_bin.with_file_name("cdc");
    let nats = testkit::servers::NatsServer::start().map_err(|e| e.to_string())?;
    for (name, store, target) in [
        ("embedded store", "file:store".to_string(), 0.8),
        (
            "JetStream (one local node)",
            format!("{}/bench", nats.url),
            0.5,
        ),
    ] {
        let dir = capture_dir(
            run.work,
            "pg-runtime",
            endpoint,
            "public",
            "bench",
            "Precise",
        )?;
        let pipeline = dir.join("pipeline.json");
        std::fs::write(
            &pipeline,
            json!({"store": store, "captures": [{"name": "bench", "connector": pg_bin, "config": dir.join("config.json")}]}).to_string(),
        )
        .map_err(|e| e.to_string())?;
        let mut pairs = Pairs::default();
        for round in 0..run.repeat.max(1) {
            let _ = std::fs::remove_file(dir.join("state.json"));
            pairs.refs.push(run_capture(pg_bin, &dir, false)?);
            let _ = std::fs::remove_dir_all(dir.join("store"));
            // A fresh stream per round on JetStream: the store is named per round.
            std::fs::write(
                &pipeline,
                json!({"store": if store.starts_with("nats") { format!("{store}{round}") } else { store.clone() },
                       "captures": [{"name": "bench", "connector": pg_bin, "config": dir.join("config.json")}]})
                .to_string(),
            )
            .map_err(|e| e.to_string())?;
            pairs.ours.push(run_timed(
                Command::new(&cdc)
                    .args(["--log-level", "error", "run", "--until-caught-up"])
                    .arg(&pipeline),
            )?);
        }
        results.push(figure(
            &format!("  through cdc into the {name}"),
            run.rows,
            &pairs,
            "the connector to /dev/null",
            target,
        ));
    }
    Ok(())
}

/// Materializations (PIPELINE.md §4): the initial load of the 1M-row table from the
/// PostgreSQL source into an empty table of a second server, end to end through `cdc run`
/// (capture, embedded store, materialization), against what a user would otherwise run
/// for a one-off copy, `pg_dump --data-only -t bench | psql`, into the same empty table;
/// then source-commit-to-destination-commit latency at [`LATENCY_RATE`] changes/s.
fn materialize_figures(
    run: &Run<'_>,
    pg_bin: &std::path::Path,
    src: &PgServer,
    endpoint: &Value,
    results: &mut Vec<Value>,
) -> Result<(), String> {
    let cdc = pg_bin.with_file_name("cdc");
    let dest = PgServer::start().map_err(|e| e.to_string())?;
    let bindir = testkit::servers::postgres_bindir().ok_or("no PostgreSQL binaries")?;
    let ddl = "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(20,4), e jsonb)";
    let dir = capture_dir(
        run.work,
        "pg-materialize",
        endpoint,
        "public",
        "bench",
        "Precise",
    )?;
    let pipeline = materializing_pipeline(&dir, "bench", pg_bin, &dest)?;
    let mut pairs = Pairs::default();
    for _ in 0..run.repeat.max(1) {
        dest.sql(&format!(
            "DROP TABLE IF EXISTS bench; DROP TABLE IF EXISTS cdc_checkpoints; {ddl}"
        ))
        .map_err(|e| e.to_string())?;
        pairs
            .refs
            .push(run_timed(Command::new("sh").arg("-c").arg(format!(
                "{} --data-only -t bench '{}' | {} -X -q '{}'",
                bindir.join("pg_dump").display(),
                src.url,
                bindir.join("psql").display(),
                dest.url
            )))?);
        dest.sql(&format!("DROP TABLE bench; {ddl}"))
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(dir.join("store"));
        let _ = src.sql("SELECT pg_drop_replication_slot('cdc_slot')");
        pairs
            .ours
            .push(initial_load(&cdc, &pipeline, &dest, run.rows)?);
    }
    results.push(figure(
        "initial load into PostgreSQL",
        run.rows,
        &pairs,
        "pg_dump --data-only | psql",
        1.0,
    ));
    let latency = destination_latency(run, &cdc, pg_bin, src, &dest, endpoint)?;
    results.push(latency.figure_with_target("  source commit to destination commit", 100.0));
    Ok(())
}

/// Writes `dir/pipeline.json`: capture `name` of `connector` with `dir/config.json` into an
/// embedded store, and its collection `name` materialized into table `name` of `dest`.
fn materializing_pipeline(
    dir: &std::path::Path,
    name: &str,
    connector: &std::path::Path,
    dest: &PgServer,
) -> Result<std::path::PathBuf, String> {
    let pipeline = dir.join("pipeline.json");
    std::fs::write(
        &pipeline,
        json!({"store": "file:store",
               "captures": [{"name": name, "connector": connector, "config": "config.json"}],
               "materializations": [{"name": name, "destination": "postgres",
                   "endpoint": {"host": "127.0.0.1", "port": dest.port, "user": "postgres", "tls": {"mode": "disable"}},
                   "bindings": [{"source": name, "target": name}]}]})
        .to_string(),
    )
    .map_err(|e| e.to_string())?;
    Ok(pipeline)
}

/// Times `cdc run --until-caught-up` of `pipeline` and checks that `rows` rows landed in
/// the destination's `bench` table.
fn initial_load(
    cdc: &std::path::Path,
    pipeline: &std::path::Path,
    dest: &PgServer,
    rows: u64,
) -> Result<Timed, String> {
    let timed = run_timed(
        Command::new(cdc)
            .args(["--log-level", "error", "run", "--until-caught-up"])
            .arg(pipeline),
    )?;
    let landed = dest
        .sql("SELECT count(*) FROM bench")
        .map_err(|e| e.to_string())?;
    if landed.trim() != rows.to_string() {
        return Err(format!(
            "the materialization landed {} of {rows} rows",
            landed.trim()
        ));
    }
    Ok(timed)
}

/// Source-commit-to-destination-commit latency at [`LATENCY_RATE`] changes/s through a
/// running `cdc run`: rows stamped with the source's clock as they are written, and the
/// destination table given a column defaulting to the destination's clock as each row is
/// inserted (one machine, one clock; both stamps fall before their commits).
fn destination_latency(
    run: &Run<'_>,
    cdc: &std::path::Path,
    pg_bin: &std::path::Path,
    src: &PgServer,
    dest: &PgServer,
    endpoint: &Value,
) -> Result<Latency, String> {
    use std::io::Write;
    let stamp = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";
    // The throwaway server runs with synchronous_commit off, which leaves a commit for the
    // WAL writer to flush (up to wal_writer_delay later) before a walsender may send it:
    // production's default is on.
    src.sql("DROP TABLE IF EXISTS landing; CREATE TABLE landing (id bigint PRIMARY KEY, t bigint); ALTER DATABASE postgres SET synchronous_commit = on")
        .map_err(|e| e.to_string())?;
    let _ = src.sql("SELECT pg_drop_replication_slot('cdc_slot')");
    let dir = capture_dir(
        run.work,
        "pg-materialize-latency",
        endpoint,
        "public",
        "landing",
        "Precise",
    )?;
    let pipeline = materializing_pipeline(&dir, "landing", pg_bin, dest)?;
    dest.sql("DROP TABLE IF EXISTS landing")
        .map_err(|e| e.to_string())?;
    let mut cdc_run = Command::new(cdc)
        .args(["--log-level", "error", "run"])
        .arg(&pipeline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        src.sql(&format!("INSERT INTO landing VALUES (0, {stamp})"))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while dest
            .sql("SELECT count(*) FROM landing")
            .unwrap_or_default()
            .trim()
            != "1"
        {
            if Instant::now() > deadline {
                return Err("the latency table never landed".to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dest.sql(&format!(
            "ALTER TABLE landing ADD COLUMN landed bigint DEFAULT {stamp}"
        ))
        .map_err(|e| e.to_string())?;
        let per_tick = LATENCY_RATE / 100;
        // One second of the same load first, not measured: the figure is the steady
        // state's (the first batches plan their statements and warm the caches).
        let warm_up = 100;
        let ticks = run.latency_seconds * 100;
        let mut load = testkit::servers::psql_session(&src.url)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = load.stdin.take().ok_or("no stdin")?;
        let mut started = Instant::now();
        for k in 0..ticks + warm_up {
            if k == warm_up {
                started = Instant::now();
            }
            let due = started + Duration::from_millis(10 * k.saturating_sub(warm_up));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let first = 1 + k * per_tick;
            let sql = format!(
                "INSERT INTO landing SELECT g, {stamp} FROM generate_series({first}, {}) g;\n",
                first + per_tick - 1
            );
            stdin
                .write_all(sql.as_bytes())
                .and_then(|()| stdin.flush())
                .map_err(|e| e.to_string())?;
        }
        drop(stdin);
        load.wait().map_err(|e| e.to_string())?;
        let written = started.elapsed().as_secs_f64();
        let expected = (ticks + warm_up) * per_tick;
        let deadline = Instant::now() + Duration::from_secs(120);
        while dest
            .sql("SELECT count(*) FROM landing WHERE landed IS NOT NULL")
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            < expected
        {
            if Instant::now() > deadline {
                return Err("the latency rows did not all land".to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let ages: Vec<f64> = dest
            .sql(&format!(
                "SELECT (landed - t) / 1000.0 FROM landing WHERE landed IS NOT NULL AND id > {} ORDER BY 1",
                warm_up * per_tick
            ))
            .map_err(|e| e.to_string())?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        // Each change's source stamp (µs since the epoch) and latency (ms), in commit
        // order, kept beside the config: when a stall lifts the p99, this says when it
        // came, to set beside what else the machine was doing then.
        let timeline = dest
            .sql(&format!(
                "SELECT t, (landed - t) / 1000.0 FROM landing WHERE landed IS NOT NULL AND id > {} ORDER BY id",
                warm_up * per_tick
            ))
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("latencies.txt"), timeline).map_err(|e| e.to_string())?;
        let at = |percent: usize| ages[(ages.len() - 1) * percent / 100];
        Ok(Latency {
            n: ages.len(),
            rate: (ticks * per_tick) as f64 / written,
            p50_ms: at(50),
            p99_ms: at(99),
            max_ms: at(100),
        })
    })();
    let _ = cdc_run.kill();
    let _ = cdc_run.wait();
    result
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
        "-p",
        "cdc",
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
        latency_seconds: if smoke { 1 } else { 10 },
        repeat: args
            .windows(2)
            .find(|w| w[0] == "--repeat")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(if smoke { 1 } else { 3 }),
        linear: args.iter().any(|a| a == "--linear"),
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
    for r in results.iter().filter(|r| r["kind"] != "latency") {
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
    println!(
        "\n{:<30} {:>9} {:>10} {:>8} {:>8} {:>8} {:>12}",
        "latency at a steady rate", "n", "changes/s", "p50 ms", "p99 ms", "max ms", "target p99"
    );
    for r in results.iter().filter(|r| r["kind"] == "latency") {
        println!(
            "{:<30} {:>9} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>12.1}",
            r["what"].as_str().unwrap_or(""),
            r["n"],
            r["changes_per_second"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["max_ms"].as_f64().unwrap_or(0.0),
            r["target_p99_ms"].as_f64().unwrap_or(0.0),
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
        work, rows, hold, ..
    } = *run;
    // PostgreSQL backfill.
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    pg.sql(&format!(
        "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(20,4), e jsonb);
         INSERT INTO bench {};
         CREATE TABLE changes (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(20,4), e jsonb);
         CREATE TABLE big (LIKE changes INCLUDING ALL)",
        pg_bench_rows(rows)
    ))
    .map_err(|e| e.to_string())?;
    pg.sql("VACUUM ANALYZE").map_err(|e| e.to_string())?;
    let psql = testkit::servers::postgres_bindir()
        .map(|d| d.join("psql"))
        .ok_or("no psql")?;
    let copy = || {
        run_timed(Command::new(&psql).arg(&pg.url).args([
            "-X",
            "-c",
            "COPY bench TO STDOUT (FORMAT binary)",
        ]))
    };
    let pg_endpoint = |chunk: u64| json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "advanced": {"chunk_size": chunk}});
    // A backfill of `bench` against `COPY binary` in the same run.
    let backfill_to = |name: &str, endpoint: &Value, mode: &str, what: &str, target: f64| {
        let dir = capture_dir(work, name, endpoint, "public", "bench", mode)?;
        let pairs = paired(run, pg_bin, &dir, copy)?;
        Ok::<_, String>(figure(what, rows, &pairs, "COPY binary via psql", target))
    };
    let backfill = |name: &str, endpoint: &Value, mode: &str, what: &str| {
        backfill_to(name, endpoint, mode, what, 0.8)
    };
    results.push(backfill(
        "pg-backfill",
        &pg_endpoint(10_000),
        "Precise",
        "PostgreSQL backfill",
    )?);
    // Each chunk read by 2 and 4 connections in its one snapshot (`backfill_ranges`).
    for ranges in [2, 4] {
        let mut endpoint = pg_endpoint(10_000);
        endpoint["advanced"]["backfill_ranges"] = json!(ranges);
        results.push(backfill_to(
            &format!("pg-backfill-ranges-{ranges}"),
            &endpoint,
            "Precise",
            &format!("  in {ranges} key ranges at once"),
            1.2,
        )?);
    }
    // The same backfill with every chunk scanned on a hot standby (`endpoint.replica`).
    {
        let standby = pg.start_standby(&[]).map_err(|e| e.to_string())?;
        standby.await_replay_of(&pg).map_err(|e| e.to_string())?;
        let mut endpoint = pg_endpoint(10_000);
        endpoint["replica"] = json!({"host": "127.0.0.1", "port": standby.port, "user": "postgres", "tls": {"mode": "disable"}});
        results.push(backfill(
            "pg-backfill-standby",
            &endpoint,
            "Precise",
            "  scanned on a hot standby",
        )?);
    }
    // What Precise costs over Normal, and the chunk size: the same table, the same reference.
    for (mode, chunk) in [("Normal", 10_000), ("Precise", 1_000), ("Precise", 50_000)] {
        results.push(backfill(
            &format!("pg-{mode}-{chunk}"),
            &pg_endpoint(chunk),
            mode,
            &format!("  {mode}, chunks of {chunk}"),
        )?);
    }

    // Read as keyless, a table's updates and deletes must carry the old row.
    pg.sql("ALTER TABLE bench REPLICA IDENTITY FULL")
        .map_err(|e| e.to_string())?;
    results.push(keyless_against_keyed(
        run,
        pg_bin,
        &pg_endpoint(10_000),
        "public",
        "pg",
    )?);
    pg.sql("ALTER TABLE bench REPLICA IDENTITY DEFAULT")
        .map_err(|e| e.to_string())?;
    if run.linear {
        results.push(linear_figure(run, pg_bin, &pg, &pg_endpoint(10_000))?);
    }

    runtime_figures(run, pg_bin, &pg_endpoint(10_000), results)?;
    materialize_figures(run, pg_bin, &pg, &pg_endpoint(10_000), results)?;

    // PostgreSQL streaming: the same changes read by the connector and by pg_recvlogical,
    // in transactions of 1,000 and in one transaction of every row.
    let txns = (rows / 1000).max(1);
    let workload = format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP
           INSERT INTO changes SELECT g, g % 1000, md5(g::text), now(), g * 1.5, jsonb_build_object('k', g) FROM generate_series(t * 1000 + 1, t * 1000 + 500) g;
           UPDATE changes SET a = a + 1 WHERE id > t * 1000 AND id <= t * 1000 + 250;
           DELETE FROM changes WHERE id > t * 1000 + 250 AND id <= t * 1000 + 500;
           COMMIT;
         END LOOP; END $$",
        txns - 1
    );
    let one = format!(
        "INSERT INTO big SELECT g, g % 1000, md5(g::text), now(), g * 1.5, jsonb_build_object('k', g) FROM generate_series(1, {rows}) g"
    );
    for (name, table, sql, n, what) in [
        (
            "pg-stream",
            "changes",
            workload.as_str(),
            txns * 1000,
            "PostgreSQL streaming",
        ),
        (
            "pg-stream-one",
            "big",
            one.as_str(),
            rows,
            "  in one transaction",
        ),
    ] {
        // One pair: the slot is consumed by the run (see `pg_streaming`).
        let (ours, reference) = pg_streaming(&pg, pg_bin, run, name, table, sql)?;
        results.push(figure(
            what,
            n,
            &Pairs::one(ours, reference),
            "pg_recvlogical (pgoutput)",
            0.9,
        ));
    }
    let lat = latency(
        pg_bin,
        run,
        "pg-latency",
        &json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "slot": "lat_slot", "publication": "lat_pub"}),
        "public",
        || {
            // The throwaway server runs with synchronous_commit off, which leaves a commit
            // for the WAL writer to flush (up to wal_writer_delay later) before a walsender
            // may send it: production's default is on.
            pg.sql(
                "CREATE TABLE lat (id bigint PRIMARY KEY, t bigint);
                    ALTER DATABASE postgres SET synchronous_commit = on",
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        },
        || testkit::servers::psql_session(&pg.url),
        |first, n| {
            format!(
                "INSERT INTO lat SELECT g, (extract(epoch from clock_timestamp()) * 1000000)::bigint FROM generate_series({first}, {}) g;\n",
                first + n - 1
            )
        },
    )?;
    results.push(lat.figure("PostgreSQL latency"));
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
        work, rows, hold, ..
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
    let dump = || {
        run_timed(maria_client("mariadb-dump", db.port).args([
            "--quick",
            "--single-transaction",
            "--protocol=TCP",
            "test",
            "bench",
        ]))
    };
    let my_endpoint = json!({"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 10000}});
    let mdir = capture_dir(
        work,
        "maria-backfill",
        &my_endpoint,
        "test",
        "bench",
        "Precise",
    )?;
    let pairs = paired(run, my_bin, &mdir, dump)?;
    results.push(figure(
        "MariaDB backfill",
        rows,
        &pairs,
        "mariadb-dump --quick --single-transaction",
        0.9,
    ));
    // Each chunk read by 2 and 4 connections, each key range in its own snapshot
    // (`backfill_ranges`).
    for ranges in [2, 4] {
        let mut endpoint = my_endpoint.clone();
        endpoint["advanced"]["backfill_ranges"] = json!(ranges);
        let name = format!("maria-backfill-ranges-{ranges}");
        let dir = capture_dir(work, &name, &endpoint, "test", "bench", "Precise")?;
        let pairs = paired(run, my_bin, &dir, dump)?;
        results.push(figure(
            &format!("  in {ranges} key ranges at once"),
            rows,
            &pairs,
            "mariadb-dump --quick --single-transaction",
            1.3,
        ));
    }
    // The same backfill with every chunk scanned on a replica (`endpoint.replica`),
    // against the same reference on the primary.
    {
        let replica = db.start_replica().map_err(|e| e.to_string())?;
        replica.await_replay_of(&db).map_err(|e| e.to_string())?;
        let mut endpoint = my_endpoint.clone();
        endpoint["replica"] = json!({"host": "127.0.0.1", "port": replica.port, "user": "root"});
        let dir = capture_dir(
            work,
            "maria-backfill-replica",
            &endpoint,
            "test",
            "bench",
            "Precise",
        )?;
        let pairs = paired(run, my_bin, &dir, dump)?;
        results.push(figure(
            "  scanned on a replica",
            rows,
            &pairs,
            "mariadb-dump --quick --single-transaction",
            0.9,
        ));
    }
    results.push(keyless_against_keyed(
        run,
        my_bin,
        &my_endpoint,
        "test",
        "maria",
    )?);
    maria_materialize_figure(run, my_bin, &db, &my_endpoint, results)?;

    // MariaDB streaming: the change workload read by the connector and by mariadb-binlog,
    // in transactions of 1,000 and in one transaction of every row.
    db.sql("CREATE TABLE test.changes (id BIGINT PRIMARY KEY, a INT, b TEXT, c TIMESTAMP(6), d DECIMAL(20,4), e JSON);
            CREATE TABLE test.big LIKE test.changes")
        .map_err(|e| e.to_string())?;
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
    let one = format!(
        "INSERT INTO test.big SELECT seq, seq % 1000, MD5(seq), NOW(6), seq * 1.5, JSON_OBJECT('k', seq) FROM test.seq_1_to_{rows};\n"
    );
    for (name, table, sql, n, what) in [
        (
            "maria-stream",
            "changes",
            script.as_str(),
            changes,
            "MariaDB streaming",
        ),
        (
            "maria-stream-one",
            "big",
            one.as_str(),
            rows,
            "  in one transaction",
        ),
    ] {
        let pairs = maria_streaming(&db, my_bin, run, &my_endpoint, name, table, sql)?;
        results.push(figure(
            what,
            n,
            &pairs,
            "mariadb-binlog --read-from-remote-server -v",
            1.0,
        ));
    }
    let lat = latency(
        my_bin,
        run,
        "maria-latency",
        &my_endpoint,
        "test",
        || {
            db.sql("CREATE TABLE test.lat (id BIGINT PRIMARY KEY, t BIGINT)")
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        || testkit::servers::mariadb_session(db.port),
        |first, n| {
            format!(
                "INSERT INTO test.lat SELECT seq, CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED) FROM test.seq_{first}_to_{};\n",
                first + n - 1
            )
        },
    )?;
    results.push(lat.figure("MariaDB latency"));
    hold_server(work, hold, &format!("mysql://root@127.0.0.1:{}", db.port));
    drop(db);
    Ok(())
}

/// The initial load of the MariaDB table into an empty PostgreSQL table, end to end
/// through `cdc run` (capture, embedded store, materialization), against the one-off copy
/// a user would otherwise run: `mariadb --batch` (tab-separated, escaped as COPY's text
/// format reads it) piped into `psql`'s `\copy`, into the same empty table.
fn maria_materialize_figure(
    run: &Run<'_>,
    my_bin: &std::path::Path,
    db: &MariaDbServer,
    endpoint: &Value,
    results: &mut Vec<Value>,
) -> Result<(), String> {
    let cdc = my_bin.with_file_name("cdc");
    let dest = PgServer::start().map_err(|e| e.to_string())?;
    let psql = testkit::servers::postgres_bindir()
        .map(|d| d.join("psql"))
        .ok_or("no psql")?;
    // The types cdc maps MariaDB's to (crates/materialize-postgres/src/types.rs).
    let ddl = "DROP TABLE IF EXISTS bench; DROP TABLE IF EXISTS cdc_checkpoints;
               CREATE TABLE bench (id bigint PRIMARY KEY, a integer, b text, c timestamptz, d numeric(20,4), e jsonb)";
    let dir = capture_dir(
        run.work,
        "maria-materialize",
        endpoint,
        "test",
        "bench",
        "Precise",
    )?;
    let pipeline = materializing_pipeline(&dir, "bench", my_bin, &dest)?;
    let mut pairs = Pairs::default();
    for _ in 0..run.repeat.max(1) {
        dest.sql(ddl).map_err(|e| e.to_string())?;
        pairs.refs.push(run_timed(Command::new("sh").arg("-c").arg(format!(
            "mariadb --no-defaults -h 127.0.0.1 -P {} -u root --batch --skip-column-names --quick -e 'SELECT id, a, b, c, d, e FROM test.bench' | {} -X -q '{}' -c '\\copy bench FROM STDIN'",
            db.port,
            psql.display(),
            dest.url
        )))?);
        dest.sql(ddl).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(dir.join("store"));
        let _ = std::fs::remove_file(dir.join("state.json"));
        pairs
            .ours
            .push(initial_load(&cdc, &pipeline, &dest, run.rows)?);
    }
    results.push(figure(
        "initial load from MariaDB into PostgreSQL",
        run.rows,
        &pairs,
        "mariadb --batch | psql \\copy",
        1.0,
    ));
    Ok(())
}

/// One PostgreSQL streaming figure: the connector starts on the empty `table`, a reference
/// slot is created, `workload` runs, then pg_recvlogical and the connector each read all
/// of it. Returns (ours, reference).
fn pg_streaming(
    pg: &PgServer,
    pg_bin: &std::path::Path,
    run: &Run<'_>,
    name: &str,
    table: &str,
    workload: &str,
) -> Result<(Timed, Timed), String> {
    let slot = name.replace('-', "_");
    let publication = format!("{slot}_pub");
    let endpoint = json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "tls": {"mode": "disable"}, "slot": slot, "publication": publication});
    let dir = capture_dir(run.work, name, &endpoint, "public", table, "Precise")?;
    run_timed(&mut capture_cmd(pg_bin, &dir))?;
    let reference = format!("{slot}_ref");
    pg.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{reference}', 'pgoutput')"
    ))
    .map_err(|e| e.to_string())?;
    pg.sql(workload).map_err(|e| e.to_string())?;
    let end: String = pg
        .sql("SELECT pg_current_wal_insert_lsn()")
        .map_err(|e| e.to_string())?;
    let recvlogical = testkit::servers::postgres_bindir()
        .map(|d| d.join("pg_recvlogical"))
        .ok_or("no pg_recvlogical")?;
    let recv = run_timed(Command::new(recvlogical).args([
        "-d",
        &pg.url,
        "--slot",
        &reference,
        "--start",
        "--no-loop",
        "-o",
        "proto_version=1",
        "-o",
        &format!("publication_names={publication}"),
        "-E",
        &end,
        "-f",
        "/dev/null",
    ]))?;
    let ours = run_capture(pg_bin, &dir, run.perf)?;
    // Neither slot holds WAL for the figures after this one. The connector's walsender
    // can still be exiting (its slot "active") for a moment after the process ends, and
    // slot drops are not transactional: drop the inactive ones until none is left.
    let slots = format!("slot_name IN ('{reference}', '{slot}')");
    let mut attempts = 0;
    loop {
        pg.sql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE {slots} AND NOT active"
        ))
        .map_err(|e| e.to_string())?;
        let left = pg
            .sql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE {slots}"
            ))
            .map_err(|e| e.to_string())?;
        if left.trim() == "0" {
            break;
        }
        attempts += 1;
        if attempts >= 100 {
            return Err(format!("the slots of {name} stayed active"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((ours, recv))
}

/// One MariaDB streaming figure: the connector starts on the empty `table`, `script` runs
/// in one session, then mariadb-binlog and the connector each read all of it, in
/// [`paired`] runs (the binlog can be read again from the same position).
fn maria_streaming(
    db: &MariaDbServer,
    my_bin: &std::path::Path,
    run: &Run<'_>,
    endpoint: &Value,
    name: &str,
    table: &str,
    script: &str,
) -> Result<Pairs, String> {
    let dir = capture_dir(run.work, name, endpoint, "test", table, "Precise")?;
    run_timed(&mut capture_cmd(my_bin, &dir))?;
    let status = db.sql("SHOW MASTER STATUS").map_err(|e| e.to_string())?;
    let mut parts = status.split_whitespace();
    let (file, pos) = (
        parts.next().ok_or("no binlog")?.to_string(),
        parts.next().ok_or("no binlog position")?.to_string(),
    );
    let mut load = testkit::servers::mariadb_session(db.port)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = load.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.as_bytes()).map_err(|e| e.to_string())?;
    }
    if !load.wait().map_err(|e| e.to_string())?.success() {
        return Err(format!("loading the MariaDB workload of {name} failed"));
    }
    let start = format!("--start-position={pos}");
    paired(run, my_bin, &dir, || {
        run_timed(maria_client("mariadb-binlog", db.port).args([
            "--read-from-remote-server",
            "--to-last-log",
            "-v",
            &start,
            &file,
        ]))
    })
}

/// A MariaDB client tool (`mariadb-dump`, `mariadb-binlog`) for the throwaway server.
fn maria_client(tool: &str, port: u16) -> Command {
    let mut c = Command::new(tool);
    // `--no-defaults` must come first.
    c.args([
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-P",
        &port.to_string(),
        "-u",
        "root",
    ]);
    c
}

/// Commit-to-stdout latency of one steady-rate run.
struct Latency {
    n: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn figure(&self, what: &str) -> Value {
        self.figure_with_target(what, 50.0)
    }

    fn figure_with_target(&self, what: &str, target_p99_ms: f64) -> Value {
        json!({"what": what, "kind": "latency", "n": self.n, "changes_per_second": self.rate,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
            "target_p99_ms": target_p99_ms})
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Commit-to-stdout latency at [`LATENCY_RATE`] changes/s: a running connector captures
/// `lat(id, t)`, one session inserts rows stamped with the server's clock as each is
/// written (so before its commit: the figure is an upper bound), a transaction of
/// `LATENCY_RATE / 100` rows every 10 ms, and each document's age is the time it is read
/// from the connector's stdout minus its stamp (one machine, one clock).
#[allow(clippy::too_many_arguments)]
fn latency(
    binary: &std::path::Path,
    run: &Run<'_>,
    name: &str,
    endpoint: &Value,
    namespace: &str,
    create: impl Fn() -> Result<(), String>,
    session: impl Fn() -> Command,
    insert: impl Fn(u64, u64) -> String,
) -> Result<Latency, String> {
    use std::io::{BufRead, Write};
    create()?;
    let dir = capture_dir(run.work, name, endpoint, namespace, "lat", "Precise")?;
    let mut connector = Command::new(binary)
        .args(["capture", "--log-level", "error", "--config"])
        .arg(dir.join("config.json"))
        .arg("--state")
        .arg(dir.join("state.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let stdout = connector.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(u64, i64)>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let read_at = now_micros();
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let (Some(id), Some(t)) = (v["doc"]["id"].as_u64(), v["doc"]["t"].as_i64())
                && tx.send((id, read_at - t)).is_err()
            {
                break;
            }
        }
    });
    let stop = |mut c: std::process::Child| {
        let _ = c.kill();
        let _ = c.wait();
    };
    // Row 0 says the connector is streaming.
    let mut first = session()
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = first.stdin.take() {
        stdin
            .write_all(insert(0, 1).as_bytes())
            .map_err(|e| e.to_string())?;
    }
    first.wait().map_err(|e| e.to_string())?;
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        stop(connector);
        return Err(format!("{name}: the connector did not start streaming"));
    }
    let per_tick = LATENCY_RATE / 100;
    let ticks = run.latency_seconds * 100;
    let mut load = session()
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdin = load.stdin.take().ok_or("no stdin")?;
    let started = Instant::now();
    for k in 0..ticks {
        let due = started + Duration::from_millis(10 * k);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        stdin
            .write_all(insert(1 + k * per_tick, per_tick).as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| e.to_string())?;
    }
    drop(stdin);
    load.wait().map_err(|e| e.to_string())?;
    let written = started.elapsed().as_secs_f64();
    let expected = usize::try_from(ticks * per_tick).unwrap_or(usize::MAX);
    let mut ages = Vec::with_capacity(expected);
    while ages.len() < expected {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((_, age)) => ages.push(age),
            Err(_) => break,
        }
    }
    stop(connector);
    let _ = reader.join();
    if ages.len() < expected {
        return Err(format!(
            "{name}: {} of {expected} changes arrived",
            ages.len()
        ));
    }
    ages.sort_unstable();
    let at = |percent: usize| ages[(ages.len() - 1) * percent / 100] as f64 / 1000.0;
    Ok(Latency {
        n: ages.len(),
        rate: expected as f64 / written,
        p50_ms: at(50),
        p99_ms: at(99),
        max_ms: at(100),
    })
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
