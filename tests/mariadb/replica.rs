//! Backfill chunks scanned on a replica while the binlog stream reads the primary
//! (`endpoint.replica`; the argument is in `source_mysql::replica`). The harness starts
//! the replica beside its primary (a server of the same kind replicating by GTID), stopped
//! by PID like it.

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};
use testkit::live::{Capture, LiveDb, Report, Sabotaged, Scenario};
use testkit::servers::{MariaDbServer, skip};

/// A primary of the kind `start` makes and a replica of it, or why not (printed).
fn primary_and_replica(
    start: fn() -> Option<(std::path::PathBuf, MariaDbServer)>,
) -> Option<(std::path::PathBuf, MariaDbServer, MariaDbServer)> {
    let (binary, primary) = start()?;
    match primary.start_replica() {
        Ok(replica) => Some((binary, primary, replica)),
        Err(e) => {
            skip(&format!("a replica: {e}"));
            None
        }
    }
}

fn replica_endpoint(replica: &MariaDbServer) -> Value {
    json!({"host": "127.0.0.1", "port": replica.port, "user": "root"})
}

/// The shared live scenario with every chunk scanned on `replica`, in chunks of
/// `chunk_size` read by `ranges` connections each.
fn scenario_on(
    db: &dyn LiveDb,
    replica: &MariaDbServer,
    name: &str,
    modes: Vec<ResolvedMode>,
    (chunk_size, ranges): (usize, usize),
) -> Report {
    let scenario = Scenario {
        modes,
        initial_rows: 150,
        txns: 200,
        kills: 3,
        endpoint_extra: json!({"replica": replica_endpoint(replica), "advanced": {"chunk_size": chunk_size, "backfill_ranges": ranges}}),
    };
    testkit::live::run_reported(db, name, &scenario)
}

/// Every mode under concurrent writes, tiny chunks and SIGKILLs, each chunk scanned on the
/// replica (by three connections, each key range in its own snapshot there): DESIGN.md §6
/// holds as it does on the primary.
fn live_scenario_from_replica(start: fn() -> Option<(std::path::PathBuf, MariaDbServer)>) {
    let Some((_, primary, replica)) = primary_and_replica(start) else {
        return;
    };
    let modes = testkit::live::EVERY_MODE.to_vec();
    let report = scenario_on(&primary, &replica, "modes", modes, (9, 3));
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// The replica applies every transaction a second late (`MASTER_DELAY` / `SOURCE_DELAY`)
/// while the primary takes writes, so a chunk scanned at once (here by three connections)
/// would miss changes the stream has already delivered. The connector waits on the replica
/// for the stream's GTIDs once, before every part's snapshot: nothing is lost. Whether a
/// scan without the wait loses rows here depends on timing, so the proof that the
/// guarantee rests on the wait is the stopped-applier test below, where it loses them
/// every time.
fn a_delayed_replica_loses_nothing_from_replica(
    start: fn() -> Option<(std::path::PathBuf, MariaDbServer)>,
) {
    let Some((_, primary, replica)) = primary_and_replica(start) else {
        return;
    };
    replica
        .sql(if replica.is_mysql() {
            "STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_DELAY = 1; START REPLICA"
        } else {
            "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 1; START SLAVE"
        })
        .unwrap();
    let modes = vec![ResolvedMode::Precise, ResolvedMode::Precise];
    let report = scenario_on(&primary, &replica, "delayed", modes, (24, 3));
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// A replica whose applier is stopped makes every chunk (here read by three connections)
/// wait, and the log says why; once it applies again the backfill finishes with every row
/// as the primary has it.
///
/// The same capture with the wait off (a debug build's sabotage switch) must lose the
/// update, and does every time: its stream starts at the primary's binlog end, after the
/// update committed, while its chunks read the stopped replica from before it.
fn a_stopped_applier_makes_chunks_wait_and_fails_without_the_wait_from_replica(
    start: fn() -> Option<(std::path::PathBuf, MariaDbServer)>,
) {
    let Some((binary, primary, replica)) = primary_and_replica(start) else {
        return;
    };
    let (stop, go) = if replica.is_mysql() {
        ("STOP REPLICA SQL_THREAD", "START REPLICA SQL_THREAD")
    } else {
        ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD")
    };
    let blind = Sabotaged::new(&primary, "SOURCE_MYSQL_SABOTAGE=replica-visibility");
    let blind = blind.connector().unwrap();
    for (name, binary) in [("stopped", &binary), ("blind", &blind)] {
        primary
            .sql(&format!("CREATE TABLE test.{name} (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO test.{name} SELECT seq, CONCAT('v', seq) FROM (WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 100) SELECT seq FROM s) s"))
            .unwrap();
        replica.await_replay_of(&primary).unwrap();
        replica.sql(stop).unwrap();
        primary
            .sql(&format!(
                "UPDATE test.{name} SET v = 'changed' WHERE id <= 50"
            ))
            .unwrap();
        let cap = Capture::new(binary, &format!("maria-replica-{name}"));
        cap.config(&json!({
            "endpoint": {"host": "127.0.0.1", "port": primary.port, "user": "root", "replica": replica_endpoint(&replica),
                         "advanced": {"chunk_size": 10, "backfill_ranges": 3}},
            "bindings": [{"resource": {"namespace": "test", "stream": name, "mode": "Precise"}, "target": name}],
        }));
        // The blind capture does not wait: the applier runs again once it is over (or
        // after 30 s if it waits after all, and then it reads the update and fails below).
        let after = std::time::Duration::from_secs(if name == "blind" { 30 } else { 7 });
        let out = cap.capture_while("info", after, || {
            replica.sql(go).unwrap();
        });
        testkit::live::assert_replica_wait(&out, name == "blind");
    }
}

macro_rules! on_both_servers_from_replica {
    ($($name:ident),* $(,)?) => {
        mod mariadb {
            $(#[test]
            fn $name() {
                super::$name(crate::setup);
            })*
        }
        mod mysql {
            $(#[test]
            fn $name() {
                super::$name(crate::setup_mysql);
            })*
        }
    };
}

on_both_servers_from_replica!(
    live_scenario_from_replica,
    a_delayed_replica_loses_nothing_from_replica,
    a_stopped_applier_makes_chunks_wait_and_fails_without_the_wait_from_replica,
);

/// `check` names the replica and its `read_only`; a replica that replicates nothing (here:
/// an independent server) stops the capture at once with the remedy.
#[test]
fn a_server_replicating_nothing_is_refused_and_check_describes_the_replica_from_replica() {
    let Some((binary, primary, replica)) = primary_and_replica(crate::setup) else {
        return;
    };
    primary
        .sql("CREATE TABLE test.t (id INT PRIMARY KEY)")
        .unwrap();
    let cap = Capture::new(&binary, "maria-replica-check");
    let config = |replica: &MariaDbServer| {
        json!({"endpoint": {"host": "127.0.0.1", "port": primary.port, "user": "root", "replica": replica_endpoint(replica)},
               "bindings": [{"resource": {"namespace": "test", "stream": "t", "mode": "Precise"}, "target": "t"}]})
    };
    cap.config(&config(&replica));
    let check = cap.run(&["check"]);
    assert!(check.ok, "{}", check.stderr);
    let text = format!("{}\n{}", check.lines.join("\n"), check.stderr);
    assert!(
        text.contains("replicates the primary") && text.contains("replica read_only"),
        "{text}"
    );

    let Some(other) = MariaDbServer::start_or_skip() else {
        return;
    };
    cap.config(&config(&other));
    let out = cap.capture();
    assert!(
        !out.ok,
        "a capture scanning an unrelated server must not run"
    );
    assert!(
        out.stderr.contains("replicates nothing") && out.stderr.contains("CHANGE MASTER TO"),
        "{}",
        out.stderr
    );
}

/// A binding added while the capture was stopped, for a table the replica has not applied
/// yet (its applier stopped): the scan's "no such table" there is ridden out as transient,
/// and once the applier runs again every row arrives.
#[test]
fn a_table_the_replica_lacks_yet_is_waited_for_from_replica() {
    let Some((binary, primary, replica)) = primary_and_replica(crate::setup) else {
        return;
    };
    primary
        .sql("CREATE TABLE test.first (id INT PRIMARY KEY)")
        .unwrap();
    let cap = Capture::new(&binary, "maria-replica-new-table");
    let binding = |t: &str| json!({"resource": {"namespace": "test", "stream": t, "mode": "Precise"}, "target": t});
    let config = |bindings: Vec<Value>| {
        json!({"endpoint": {"host": "127.0.0.1", "port": primary.port, "user": "root", "replica": replica_endpoint(&replica)},
               "bindings": bindings})
    };
    cap.config(&config(vec![binding("first")]));
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    replica.await_replay_of(&primary).unwrap();
    replica.sql("STOP SLAVE SQL_THREAD").unwrap();
    primary
        .sql("CREATE TABLE test.later (id INT PRIMARY KEY); INSERT INTO test.later SELECT seq FROM test.seq_1_to_30")
        .unwrap();
    cap.config(&config(vec![binding("first"), binding("later")]));
    let out = cap.capture_while("warn", std::time::Duration::from_secs(3), || {
        replica.sql("START SLAVE SQL_THREAD").unwrap();
    });
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("has not applied the table's creation yet"),
        "{}",
        out.stderr
    );
    assert_eq!(
        testkit::live::sorted_ids(&out.lines, 1),
        (1..=30).collect::<Vec<_>>()
    );
}
