//! One chunk read on several connections in one exported snapshot
//! (`advanced.backfill_ranges`; the argument is in `source_postgres::scan::ranges`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backfill_core::mode::ResolvedMode;
use serde_json::json;
use testkit::checker::RunOutput;
use testkit::live::{Capture, LiveDb, Sabotaged, Scenario};
use testkit::servers::PgServer;

use super::{binding, endpoint, precise_violations, setup};

const WORDS: [&str; 8] = [
    "apple", "Apple", "banana", "éclair", "eclair", "Zebra", "ß", "ss",
];

/// A composite key of ICU-collated text (an order the client cannot reproduce) read in
/// chunks of 10 by 3 connections, under a writer that updates, deletes, re-inserts and
/// moves keys, through SIGKILLed runs: the runs of `binary`.
fn ranged_runs(binary: &Path, pg: &PgServer, table: &str) -> Vec<RunOutput> {
    let words = WORDS.map(|w| format!("'{w}'")).join(", ");
    pg.sql(&format!(
        "CREATE TABLE {table} (name text COLLATE \"en-x-icu\", n int, v bigint, PRIMARY KEY (name, n));
         INSERT INTO {table} SELECT w, g, g FROM unnest(ARRAY[{words}]) w, generate_series(1, 40) g"
    ))
    .unwrap();
    let cap = Capture::new(binary, table);
    cap.config(&json!({
        "endpoint": endpoint(pg, json!({"advanced": {"chunk_size": 10, "backfill_ranges": 3}})),
        "bindings": [binding(table, "Precise", 0)],
    }));
    let stop = AtomicBool::new(false);
    let mut runs = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = 1000;
            while !stop.load(Ordering::Relaxed) {
                for (i, w) in WORDS.iter().enumerate() {
                    v += 1;
                    let n = v % 45;
                    let sql = match (v + i) % 4 {
                        0 => format!("UPDATE {table} SET v = {v} WHERE name = '{w}' AND n = {n}"),
                        1 => format!("DELETE FROM {table} WHERE name = '{w}' AND n = {n}"),
                        2 => format!(
                            "INSERT INTO {table} VALUES ('{w}', {n}, {v}) ON CONFLICT (name, n) DO UPDATE SET v = {v}"
                        ),
                        _ => format!(
                            "UPDATE {table} SET n = n + 1, v = {v} WHERE name = '{w}' AND n = {n} AND NOT EXISTS (SELECT 1 FROM {table} WHERE name = '{w}' AND n = {n} + 1)"
                        ),
                    };
                    pg.sql(&sql).unwrap();
                }
            }
        });
        for round in 0..5u64 {
            let lines = testkit::live::capture(
                binary,
                &cap.dir.join("config.json"),
                &cap.state(),
                false,
                Some(Duration::from_millis(300 + 150 * round)),
            );
            runs.push(RunOutput {
                lines,
                counters: vec![0],
            });
        }
        stop.store(true, Ordering::Relaxed);
    });
    let last = cap.capture();
    assert!(last.ok, "{}", last.stderr);
    runs.push(RunOutput {
        lines: last.lines,
        counters: vec![0],
    });
    runs
}

/// Every guarantee of Precise holds when each chunk is read by three connections; with
/// the row at each boundary between them skipped (a debug build's sabotage switch), the
/// same run loses rows, so the test can tell.
#[test]
fn a_chunk_read_in_key_ranges_is_precise_and_a_gap_between_them_is_caught() {
    let Some((binary, pg)) = setup() else { return };
    let runs = ranged_runs(&binary, &pg, "ranged");
    let violations = precise_violations(&pg, "ranged", &["name", "n"], Some("v"), &runs);
    assert!(violations.is_empty(), "{violations:#?}");

    let gap = Sabotaged::new(&pg, "SOURCE_POSTGRES_SABOTAGE=range-gap");
    let runs = ranged_runs(&gap.connector().unwrap(), &pg, "gapped");
    let violations = precise_violations(&pg, "gapped", &["name", "n"], Some("v"), &runs);
    assert!(
        !violations.is_empty(),
        "parts that skip the row at their boundary lost nothing: the test cannot tell"
    );
}

/// The shared live scenario, every mode, chunks of 9 read by 4 connections, with
/// SIGKILLs: DESIGN.md §6 holds as with one.
#[test]
fn live_scenario_in_key_ranges() {
    let Some((_, pg)) = setup() else { return };
    let scenario = Scenario {
        modes: testkit::live::EVERY_MODE.to_vec(),
        initial_rows: 200,
        txns: 400,
        kills: 4,
        endpoint_extra: json!({"advanced": {"chunk_size": 9, "backfill_ranges": 4}}),
    };
    let report = testkit::live::run_reported(&pg, "ranges", &scenario);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// Keyless tables read in ranges of pages: the shared live scenario with 3,000 rows in
/// chunks of 900 read by 3 connections holds DESIGN.md §6; with a row skipped at each
/// boundary between the ranges (the sabotage switch), it must fail. A chunk spans 5 pages
/// or so (about 170 rows a page here): at 300 rows a chunk it read one page, so on one
/// connection, and the sabotage could not bite.
#[test]
fn keyless_chunks_read_in_page_ranges_hold_and_a_gap_between_them_is_caught() {
    let Some((_, pg)) = setup() else { return };
    let scenario = || Scenario {
        modes: vec![ResolvedMode::WithoutPrimaryKey],
        initial_rows: 3_000,
        txns: 150,
        kills: 2,
        endpoint_extra: json!({"advanced": {"chunk_size": 900, "backfill_ranges": 3}}),
    };
    let report = testkit::live::run_reported(&pg, "pages", &scenario());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);

    let gap = Sabotaged::new(&pg, "SOURCE_POSTGRES_SABOTAGE=range-gap");
    let sabotaged = testkit::live::run_reported(&gap, "gappedpages", &scenario());
    assert!(
        !sabotaged.violations.is_empty(),
        "page ranges that skip a row at their boundary lost nothing: the test cannot tell"
    );
}

/// `check` says whether the server has a connection free for each range after the first:
/// 4 ranges on a server with many free is fine, 64 on a server of 20 connections is a
/// warning that names both remedies.
#[test]
fn check_counts_the_connections_the_ranges_need() {
    let Some((binary, mut pg)) = setup() else {
        return;
    };
    pg.sql("CREATE TABLE k (id int PRIMARY KEY)").unwrap();
    let cap = Capture::new(&binary, "ranges-check");
    // The server keeps its port across the restart below.
    let server = endpoint(&pg, json!({}));
    let check = |ranges: usize| {
        let mut e = server.clone();
        e["advanced"] = json!({"backfill_ranges": ranges});
        cap.config(&json!({"endpoint": e, "bindings": [binding("k", "", 0)]}));
        cap.run(&["check"]).lines.join("\n")
    };
    testkit::live::assert_checks_range_connections(check, || {
        pg.restart_with(&[("max_connections", "20")]).unwrap();
    });
}
