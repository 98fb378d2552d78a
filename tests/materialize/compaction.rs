//! `compacted` retention (PIPELINE.md §3): a compacted collection lands the same tables as
//! its full history would, a materialization backfill from it reads about the size of the
//! table, and a table behind a delete the compaction dropped is refused, not left stale.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::live::workspace_binary;
use testkit::servers::{NatsServer, PgServer};

use crate::backfill::{Running, backfill, sorted_rows};
use crate::open_store;
use crate::types::{cdc, pipeline};

/// Sets `retention` and compaction settings on the pipeline's capture, and its store.
fn compacted(pipeline: &Path, store: &str, tables: &[&str], tombstone_hours: u64) {
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(pipeline).unwrap()).unwrap();
    p["store"] = json!(store);
    let retention: serde_json::Map<String, Value> = tables
        .iter()
        .map(|t| (t.to_string(), json!("compacted")))
        .collect();
    p["captures"][0]["retention"] = Value::Object(retention);
    p["captures"][0]["tombstone_hours"] = json!(tombstone_hours);
    p["captures"][0]["compact_after_kib"] = json!(8);
    std::fs::write(pipeline, p.to_string()).unwrap();
}

/// `id|v|md5(big)` lines of `table`, sorted.
fn rows(server: &PgServer, table: &str) -> Vec<String> {
    sorted_rows(server, &format!("SELECT id, v, md5(big) FROM {table}"))
}

/// The rows only the source or only the destination has, as `source - destination` and
/// `destination - source`.
fn difference(src: &PgServer, dest: &PgServer) -> String {
    let (want, got) = (rows(src, "items"), rows(dest, "items"));
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|r| !b.contains(r)).cloned().collect()
    };
    format!(
        "source only {:?}, destination only {:?}",
        only(&want, &got),
        only(&got, &want)
    )
}

/// The capture's log: (lines, lines a compaction kept), and its compaction passes.
fn log_figures(store: &str) -> (usize, usize, u64) {
    let store = open_store(store);
    let lines: Vec<String> = store.read("c").unwrap().map(Result::unwrap).collect();
    let kept = lines.iter().filter(|l| !l.is_empty()).count();
    (lines.len(), kept, store.compaction("c").unwrap().passes)
}

fn run_until_caught_up(pipeline: &Path) -> std::process::Output {
    Command::new(workspace_binary("cdc").unwrap())
        .args(["--log-level", "warn", "run", "--until-caught-up"])
        .arg(pipeline)
        .output()
        .unwrap()
}

/// A source and a destination server, and the store: an embedded one in `dir`, or on a
/// throwaway nats-server (kept alive by the returned guard).
fn servers(
    dir: &Path,
    jetstream: bool,
) -> Option<(PgServer, PgServer, String, Option<NatsServer>)> {
    let (src, dest) = (PgServer::start_or_skip()?, PgServer::start_or_skip()?);
    if jetstream {
        let nats = NatsServer::start_or_skip()?;
        let url = format!("{}/compaction", nats.url);
        return Some((src, dest, url, Some(nats)));
    }
    Some((src, dest, format!("file://{}/store", dir.display()), None))
}

/// A table of 200 rows, 5 of them with a TOASTed value that updates of `v` do not send.
const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, v int, big text);
    INSERT INTO items SELECT g, 0, 'small' FROM generate_series(1, 200) g;
    UPDATE items SET big = (SELECT string_agg(md5(random()::text || i), '') FROM generate_series(1, 150) i) WHERE id <= 5";

#[test]
fn a_compacted_collection_lands_the_same_table_and_a_rebuild_from_it_reads_about_the_table() {
    lands_the_same_table(false);
}

#[test]
fn a_compacted_jetstream_collection_lands_the_same_table_and_a_rebuild_from_it_reads_about_the_table()
 {
    lands_the_same_table(true);
}

fn lands_the_same_table(jetstream: bool) {
    let dir =
        std::env::temp_dir().join(format!("mat-compacted-{jetstream}-{}", std::process::id()));
    let Some((src, dest, store, _nats)) = servers(&dir, jetstream) else {
        return;
    };
    src.sql(TABLE).unwrap();
    let pipeline = pipeline(&src, &dest, &dir, &["items"]);
    compacted(&pipeline, &store, &["items"], 168);
    let mut running = Running::start(&pipeline);
    // A history many times the table: hot keys updated again and again (the TOASTed ones
    // among them), deletes, inserts; the runtime is SIGKILLed now and then, in the middle
    // of whatever it does (compactions included).
    for round in 0..40 {
        if round % 8 == 7 {
            drop(running);
            running = Running::start(&pipeline);
        }
        src.sql(&format!(
            "UPDATE items SET v = v + 1 WHERE id <= 50;
             DELETE FROM items WHERE id = {};
             INSERT INTO items VALUES ({}, {round}, 'new')",
            100 + round,
            1000 + round
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&src, "items") != rows(&dest, "items") {
        assert!(
            Instant::now() < deadline,
            "the destination did not catch up: {}",
            difference(&src, &dest)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    running.stop();
    let (lines, kept, passes) = log_figures(&store);
    eprintln!("the capture's log: {lines} lines, {kept} kept after {passes} compactions");
    assert!(passes >= 1, "the log was never compacted");
    assert!(
        kept * 2 < lines,
        "a compacted collection keeps about the table, not its history: {kept} of {lines} lines kept"
    );
    // A materialization backfill rebuilds the table from the compacted collection alone:
    // every key's latest row, the TOASTed values the updates did not carry included.
    let running = Running::start(&pipeline);
    backfill(&pipeline, &["materialization"]);
    running.stop();
    assert!(
        rows(&dest, "items") == rows(&src, "items"),
        "the table rebuilt from the compacted collection differs from the source: {}",
        difference(&src, &dest)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_table_behind_a_dropped_delete_is_refused_with_the_remedy_and_a_rebuild_mends_it() {
    behind_a_dropped_delete(false);
}

#[test]
fn a_table_behind_a_delete_dropped_on_jetstream_is_refused_with_the_remedy_and_a_rebuild_mends_it()
{
    behind_a_dropped_delete(true);
}

fn behind_a_dropped_delete(jetstream: bool) {
    let dir = std::env::temp_dir().join(format!("mat-horizon-{jetstream}-{}", std::process::id()));
    let Some((src, dest, store, _nats)) = servers(&dir, jetstream) else {
        return;
    };
    src.sql(TABLE).unwrap();
    let with_table = pipeline(&src, &dest, &dir, &["items"]);
    // Tombstones expire at once.
    compacted(&with_table, &store, &["items"], 0);
    assert!(run_until_caught_up(&with_table).status.success());
    assert_eq!(rows(&dest, "items"), rows(&src, "items"));
    // The capture runs on alone (the same capture and store, no materialization) while
    // rows are deleted and the log grows: its compactions drop the deletes.
    let mut alone: Value =
        serde_json::from_str(&std::fs::read_to_string(&with_table).unwrap()).unwrap();
    alone.as_object_mut().unwrap().remove("materializations");
    let alone_path = dir.join("capture-only.json");
    std::fs::write(&alone_path, alone.to_string()).unwrap();
    src.sql("DELETE FROM items WHERE id BETWEEN 190 AND 200")
        .unwrap();
    for _ in 0..8 {
        src.sql("UPDATE items SET v = v + 1 WHERE id > 5").unwrap();
    }
    assert!(run_until_caught_up(&alone_path).status.success());
    let horizon = open_store(&store).compaction("c").unwrap().horizon;
    assert!(horizon > 0, "no delete was dropped (horizon {horizon})");
    // The table still holds the deleted rows: reading on would leave them there for good.
    let refused = run_until_caught_up(&with_table);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a table behind a dropped delete was read on"
    );
    assert!(
        said.contains("cdc backfill PIPELINE materialization"),
        "the refusal names the remedy: {said}"
    );
    let stale = dest
        .sql("SELECT count(*) FROM items WHERE id BETWEEN 190 AND 200")
        .unwrap();
    assert_eq!(stale.trim(), "11", "the refused table was left as it was");
    // The remedy: a materialization backfill, then the table equals the source.
    cdc(&["backfill", "materialization"], &with_table);
    assert!(run_until_caught_up(&with_table).status.success());
    assert_eq!(rows(&dest, "items"), rows(&src, "items"));
    let _ = std::fs::remove_dir_all(&dir);
}
