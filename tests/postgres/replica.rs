//! Backfill chunks scanned on a hot standby while the stream reads the primary
//! (`endpoint.replica`; the argument is in `source_postgres::replica`). The harness starts
//! the standby with `pg_basebackup -R` beside its primary, stopped by PID like it.

use std::time::Duration;

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};
use testkit::live::{Capture, LiveDb, Report, Sabotaged, Scenario, docs};
use testkit::servers::{PgServer, skip};

use super::{binding, endpoint, setup};

/// A primary and a standby of it started with `settings`, or why not (printed).
fn primary_and_standby(
    settings: &[(&str, &str)],
) -> Option<(std::path::PathBuf, PgServer, PgServer)> {
    let (binary, pg) = setup()?;
    match pg.start_standby(settings) {
        Ok(standby) => Some((binary, pg, standby)),
        Err(e) => {
            skip(&format!("a PostgreSQL standby: {e}"));
            None
        }
    }
}

fn replica(standby: &PgServer) -> Value {
    json!({"host": "127.0.0.1", "port": standby.port, "user": "postgres", "tls": {"mode": "disable"}})
}

/// The shared live scenario with every chunk scanned on `standby`.
fn scenario_on(
    pg: &dyn LiveDb,
    standby: &PgServer,
    name: &str,
    modes: Vec<ResolvedMode>,
    txns: usize,
) -> Report {
    let scenario = Scenario {
        modes,
        initial_rows: 200,
        txns,
        kills: 4,
        endpoint_extra: json!({"replica": replica(standby), "advanced": {"chunk_size": 7}}),
    };
    let report = testkit::live::run(pg, name, &scenario)
        .expect("scenario setup")
        .expect("the connector is built");
    eprintln!(
        "{name}: {} runs, {} kills, {} lines",
        report.runs, report.kills, report.lines
    );
    report
}

/// Every mode under concurrent writes, tiny chunks and SIGKILLs, each chunk scanned on
/// the standby: DESIGN.md §6 holds as it does on the primary.
#[test]
fn live_scenario_from_replica() {
    let Some((_, pg, standby)) = primary_and_standby(&[]) else {
        return;
    };
    let modes = vec![
        ResolvedMode::Precise,
        ResolvedMode::Normal,
        ResolvedMode::OnlyChanges,
        ResolvedMode::WithoutPrimaryKey,
    ];
    let report = scenario_on(&pg, &standby, "modes", modes, 400);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// The standby applies every commit 300 ms late while the primary takes writes, so a
/// chunk scanned at once would miss changes the stream has already delivered, and emit
/// their rows' older images after them. The connector waits for the standby to replay what
/// the stream delivered (and checks the snapshot's replay position) before it uses a
/// chunk: nothing is lost. With both turned off (a debug build's sabotage switch) the same
/// scenario must fail, or the test proves nothing.
#[test]
fn a_delayed_replica_loses_nothing_and_fails_without_the_wait_from_replica() {
    let Some((_, pg, standby)) = primary_and_standby(&[("recovery_min_apply_delay", "300ms")])
    else {
        return;
    };
    let modes = || vec![ResolvedMode::Precise, ResolvedMode::Precise];
    let report = scenario_on(&pg, &standby, "delayed", modes(), 150);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);

    let blind = Sabotaged::new(&pg, "SOURCE_POSTGRES_SABOTAGE=replica-visibility");
    let sabotaged = scenario_on(&blind, &standby, "blind", modes(), 150);
    assert!(
        !sabotaged.violations.is_empty(),
        "scanning the lagging standby without the wait and the witness lost nothing: the test cannot tell"
    );
}

/// A replayed exclusive lock cancels the chunk the standby is scanning at once
/// (`max_standby_streaming_delay = 0`): the connector scans it again, says so, and every
/// row arrives.
#[test]
fn a_chunk_cancelled_by_a_recovery_conflict_is_scanned_again_from_replica() {
    let Some((binary, pg, standby)) = primary_and_standby(&[
        ("max_standby_streaming_delay", "0"),
        ("hot_standby_feedback", "off"),
    ]) else {
        return;
    };
    let rows = 150_000;
    pg.sql(&format!("CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"))
        .unwrap();
    standby.await_replay_of(&pg).unwrap();
    let cap = Capture::new(&binary, "pg-replica-conflict");
    cap.config(&json!({
        "endpoint": endpoint(&pg, json!({"replica": replica(&standby), "advanced": {"chunk_size": rows}})),
        "bindings": [binding("big", "Precise", 0)],
    }));
    // Once the standby runs the chunk's query, an exclusive lock on the primary (replayed
    // at once) conflicts with it.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'source-postgres' AND state = 'active' AND query LIKE '%FROM %big%'";
    let (out, locked) = std::thread::scope(|scope| {
        let locker = scope.spawn(|| {
            for _ in 0..3000 {
                if standby.sql(running).is_ok_and(|n| n != "0") {
                    return pg
                        .sql("BEGIN; SET LOCAL synchronous_commit = on; LOCK TABLE big IN ACCESS EXCLUSIVE MODE; COMMIT")
                        .is_ok();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let out = cap.capture();
        (out, locker.join().unwrap())
    });
    assert!(
        locked,
        "the chunk's query was never seen running on the standby"
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("cancelled on the replica"),
        "the conflict is said: {}",
        out.stderr
    );
    let mut ids: Vec<i64> = docs(&out.lines, 0)
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=rows as i64).collect::<Vec<_>>(), "each row once");
}

/// A replica that is not a standby of the primary (here: another server) stops the capture
/// at once with the remedy; `check` names the replica and its settings.
#[test]
fn a_replica_of_another_server_is_refused_and_check_describes_the_standby_from_replica() {
    let Some((binary, pg, standby)) = primary_and_standby(&[("hot_standby_feedback", "off")])
    else {
        return;
    };
    pg.sql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let cap = Capture::new(&binary, "pg-replica-check");
    cap.config(&json!({
        "endpoint": endpoint(&pg, json!({"replica": replica(&standby)})),
        "bindings": [binding("t", "Precise", 0)],
    }));
    let check = cap.run(&["check"]);
    assert!(check.ok, "{}", check.stderr);
    let text = format!("{}\n{}", check.lines.join("\n"), check.stderr);
    assert!(text.contains("is a standby of the primary"), "{text}");
    assert!(
        text.contains("hot_standby_feedback")
            && text.contains("ALTER SYSTEM SET hot_standby_feedback = on"),
        "{text}"
    );

    let Some(other) = PgServer::start_or_skip() else {
        return;
    };
    cap.config(&json!({
        "endpoint": endpoint(&pg, json!({"replica": replica(&other)})),
        "bindings": [binding("t", "Precise", 0)],
    }));
    let out = cap.capture();
    assert!(
        !out.ok,
        "a capture scanning an unrelated server must not run"
    );
    assert!(
        out.stderr.contains("is not a standby of the primary")
            && out.stderr.contains("pg_basebackup"),
        "{}",
        out.stderr
    );
}
