//! The three kinds of backfill of PIPELINE.md §5, and each destination behaviour, as
//! `cdc backfill` requests carried out by a running `cdc run` while the source is written:
//! each ends with the destination tables equal to the source tables, and a zero-downtime
//! rebuild never shows a reader an empty or partial table.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::live::workspace_binary;
use testkit::servers::PgServer;

use crate::types::pipeline;

/// `cdc run` (or another long-running `cdc` command) in the background, killed when
/// dropped.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    pub(crate) fn start(pipeline: &Path) -> Self {
        Self::command("run", pipeline, &[], &[])
    }

    /// `cdc <command> PIPELINE <args>` with `env` set.
    pub(crate) fn command(
        command: &str,
        pipeline: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self(
            Command::new(workspace_binary("cdc").unwrap())
                .args(["--log-level", "warn", command])
                .arg(pipeline)
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "cdc run stopped with {status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cdc status --json`, or null while the store does not exist yet.
pub(crate) fn status(pipeline: &Path) -> Value {
    let out = Command::new(workspace_binary("cdc").unwrap())
        .args(["--log-level", "warn", "status", "--json"])
        .arg(pipeline)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Requests a backfill and waits until every request of the pipeline is done.
pub(crate) fn backfill(pipeline: &Path, args: &[&str]) {
    let mut command = Command::new(workspace_binary("cdc").unwrap());
    command
        .args(["--log-level", "warn", "backfill"])
        .arg(pipeline)
        .args(args);
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "cdc backfill {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(pipeline);
        let open: Vec<&Value> = s["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["phase"] != "done")
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backfill {args:?} not done: {open:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rows of `table` as `id|v|pad` lines, sorted.
pub(crate) fn rows(server: &PgServer, table: &str) -> Vec<String> {
    sorted_rows(server, &format!("SELECT id, v, pad FROM {table}"))
}

/// The rows `query` returns as `a|b|...` lines, sorted (none while the table is missing).
pub(crate) fn sorted_rows(server: &PgServer, query: &str) -> Vec<String> {
    let mut rows: Vec<String> = server
        .sql(query)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// Waits until the destination table equals the source table.
pub(crate) fn converges(src: &PgServer, dest: &PgServer, table: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = (rows(src, table), rows(dest, table));
        if want == got {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {table} differs: {} rows at the source, {} at the destination",
            want.len(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn every_backfill_kind_under_writes_ends_equal_and_a_rebuild_is_never_seen_empty() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE orders (id int PRIMARY KEY, v int, pad text); CREATE TABLE events (id int, v int, pad text); ALTER TABLE events REPLICA IDENTITY FULL; INSERT INTO orders SELECT g, 0, 'initial' FROM generate_series(1, 2000) g; INSERT INTO events SELECT g, 0, 'initial' FROM generate_series(1, 500) g").unwrap();
    let dir = std::env::temp_dir().join(format!("mat-backfill-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["orders", "events"]);
    let run = Running::start(&pipeline);
    converges(&src, &dest, "orders", "the first backfill");

    // Writers: inserts and updates only, so a reader of the destination may expect the
    // count of orders never to fall.
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, paused, written, url) = (
            Arc::clone(&stop),
            Arc::clone(&paused),
            Arc::clone(&written),
            src.url.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                if paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                n += 1;
                let sql = format!(
                    "INSERT INTO orders VALUES ({id}, {n}, 'new'); UPDATE orders SET v = {n} WHERE id = {old}; INSERT INTO events VALUES ({n}, {n}, 'new')",
                    id = 10_000 + n,
                    old = 1 + n % 2000
                );
                let ok = Command::new("psql")
                    .args([url.as_str(), "-X", "-q", "-c", &sql])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    written.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // A reader polling the destination's orders table.
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, url) = (Arc::clone(&reader_stop), dest.url.clone());
        std::thread::spawn(move || {
            let (mut last, mut reads, mut drops) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let out = Command::new("psql")
                    .args([
                        url.as_str(),
                        "-X",
                        "-q",
                        "-A",
                        "-t",
                        "-c",
                        "SELECT count(*) FROM orders",
                    ])
                    .output()
                    .unwrap();
                if let Ok(count) = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>() {
                    reads += 1;
                    if count < last {
                        drops.push((last, count));
                    }
                    last = count;
                }
            }
            (reads, drops)
        })
    };

    // Each backfill runs under writes; the tables are compared with the writers paused.
    let settled = |what: &str, tables: &[&str]| {
        paused.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        for t in tables {
            converges(&src, &dest, t, what);
        }
        paused.store(false, Ordering::SeqCst);
    };
    backfill(&pipeline, &["materialization"]);
    settled("materialization backfill (rebuild)", &["orders", "events"]);
    // Source re-reads: events is keyless (Without Primary Key), exact only when not
    // written during its own backfill (DESIGN.md §6), so it is compared after a re-read
    // with the writers paused.
    backfill(&pipeline, &["incremental"]);
    settled("incremental backfill (keep)", &["orders"]);
    backfill(&pipeline, &["reset"]);
    settled("dataflow reset (rebuild)", &["orders"]);
    paused.store(true, Ordering::SeqCst);
    backfill(&pipeline, &["incremental", "--binding", "events"]);
    settled("incremental backfill of a keyless table", &["events"]);
    reader_stop.store(true, Ordering::SeqCst);
    let (reads, drops) = reader.join().unwrap();
    assert!(reads > 20, "the reader read {reads} times");
    assert!(
        drops.is_empty(),
        "a reader saw the rebuilt table shrink (empty or partial): {drops:?}"
    );

    // The behaviours that accept downtime.
    backfill(
        &pipeline,
        &[
            "materialization",
            "--table",
            "truncate",
            "--binding",
            "orders",
        ],
    );
    backfill(
        &pipeline,
        &["materialization", "--table", "drop", "--binding", "events"],
    );
    settled(
        "materialization backfills (truncate, drop)",
        &["orders", "events"],
    );
    backfill(
        &pipeline,
        &["incremental", "--table", "truncate", "--binding", "orders"],
    );
    settled("incremental backfill (truncate)", &["orders"]);
    backfill(
        &pipeline,
        &[
            "incremental",
            "--table",
            "drop",
            "--mode",
            "only-changes",
            "--binding",
            "events",
        ],
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(written.load(Ordering::SeqCst) > 20);
    converges(&src, &dest, "orders", "after every backfill");
    // An Only Changes re-read of events starts from an empty table: the destination holds
    // the changes since, which the writers stopped making.
    let s = status(&pipeline);
    let requests = s["requests"].as_array().unwrap();
    assert!(requests.len() >= 8, "{requests:?}");
    run.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cancelled_backfill_streams_on_and_status_marks_the_table_partial() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE big (id int PRIMARY KEY, v int, pad text); INSERT INTO big SELECT g, 0, 'initial' FROM generate_series(1, 200000) g").unwrap();
    let dir = std::env::temp_dir().join(format!("mat-cancel-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["big"]);
    // Small chunks, so the backfill is still running when it is cancelled.
    let config = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["endpoint"]["advanced"] = serde_json::json!({"chunk_size": 50});
    std::fs::write(&config, c.to_string()).unwrap();
    let run = Running::start(&pipeline);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&pipeline)["captures"][0]["bindings"][0]["rows"]
        .as_u64()
        .unwrap_or(0)
        < 500
    {
        assert!(
            Instant::now() < deadline,
            "the backfill does not start: {}",
            status(&pipeline)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    backfill(&pipeline, &["cancel", "--binding", "big"]);
    let binding = &status(&pipeline)["captures"][0]["bindings"][0];
    assert_eq!(binding["phase"], "partial", "{binding}");
    // From then on the binding streams.
    src.sql("INSERT INTO big VALUES (1000001, 1, 'after the cancel')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dest
        .sql("SELECT count(*) FROM big WHERE id = 1000001")
        .unwrap_or_default()
        .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "a change after the cancel did not land"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let landed: u64 = dest
        .sql("SELECT count(*) FROM big")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(landed < 200_000, "the backfill ran on: {landed} rows");
    run.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_incremental_backfill_adds_no_delta_duplicates_of_unchanged_rows_when_asked() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE items (id int PRIMARY KEY, v int, pad text); INSERT INTO items SELECT g, 0, 'initial' FROM generate_series(1, 1000) g").unwrap();
    let dir = std::env::temp_dir().join(format!("mat-dupes-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["items"]);
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(&pipeline).unwrap()).unwrap();
    p["materializations"][0]["bindings"] = serde_json::json!([
        {"source": "items", "target": "items_delta", "delta_updates": true},
        {"source": "items", "target": "items_delta_skipping", "delta_updates": true,
         "skip_unchanged_rereads": true}
    ]);
    std::fs::write(&pipeline, p.to_string()).unwrap();
    let run_until_caught_up = || {
        let ok = Command::new(workspace_binary("cdc").unwrap())
            .args(["--log-level", "warn", "run", "--until-caught-up"])
            .arg(&pipeline)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let count = |t: &str| -> u64 {
        dest.sql(&format!("SELECT count(*) FROM {t}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    run_until_caught_up();
    assert_eq!(
        (count("items_delta"), count("items_delta_skipping")),
        (1000, 1000)
    );
    // Ten rows change; then every row is re-read.
    src.sql("UPDATE items SET v = 1 WHERE id <= 10").unwrap();
    let out = Command::new(workspace_binary("cdc").unwrap())
        .args(["backfill"])
        .arg(&pipeline)
        .arg("incremental")
        .output()
        .unwrap();
    assert!(out.status.success());
    run_until_caught_up();
    let (plain, skipping) = (
        count("items_delta") - 1000,
        count("items_delta_skipping") - 1000,
    );
    eprintln!(
        "an incremental backfill of 1000 rows (10 changed before it) added {plain} delta rows, {skipping} when unchanged re-reads are left out"
    );
    // The re-read (Precise) absorbs the 10 updates, which happened before the rows were
    // scanned: 1000 re-read rows, of which only the 10 changed ones differ from their
    // key's latest row.
    assert_eq!(plain, 1000);
    assert_eq!(skipping, 10);
    let changed = dest
        .sql("SELECT count(*) FROM items_delta_skipping WHERE v = 1")
        .unwrap();
    assert_eq!(changed.trim(), "10");
    let _ = std::fs::remove_dir_all(&dir);
}
