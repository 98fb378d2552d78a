//! Backfill chunks scanned on a hot standby while the stream reads the primary
//! (`endpoint.replica`; the argument is in `source_postgres::replica`). The harness starts
//! the standby with `pg_basebackup -R` beside its primary, stopped by PID like it.

use std::time::Duration;

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};
use testkit::live::{Capture, LiveDb, Report, Sabotaged, Scenario, docs, sorted_ids};
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
    testkit::live::run_reported(pg, name, &scenario)
}

/// Every mode under concurrent writes, tiny chunks and SIGKILLs, each chunk scanned on
/// the standby: DESIGN.md §6 holds as it does on the primary.
#[test]
fn live_scenario_from_replica() {
    let Some((_, pg, standby)) = primary_and_standby(&[]) else {
        return;
    };
    let modes = testkit::live::EVERY_MODE.to_vec();
    let report = scenario_on(&pg, &standby, "modes", modes, 400);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// Each chunk read by three connections on the standby, in the snapshot the first one
/// exports there (PostgreSQL 10+ exports snapshots during recovery): every mode holds.
#[test]
fn live_scenario_in_key_ranges_from_replica() {
    let Some((_, pg, standby)) = primary_and_standby(&[]) else {
        return;
    };
    let scenario = Scenario {
        modes: testkit::live::EVERY_MODE.to_vec(),
        initial_rows: 200,
        txns: 300,
        kills: 3,
        endpoint_extra: json!({"replica": replica(&standby), "advanced": {"chunk_size": 9, "backfill_ranges": 3}}),
    };
    let report = testkit::live::run_reported(&pg, "ranges", &scenario);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// The standby applies every commit 300 ms late while the primary takes writes, so a
/// chunk scanned at once would miss changes the stream has already delivered, and emit
/// their rows' older images after them. The connector waits for the standby to replay what
/// the stream delivered (and checks the snapshot's replay position) before it uses a
/// chunk: nothing is lost. Whether a scan without the wait loses rows here depends on
/// timing (a write must land in the last 300 ms before the chunk of its key), so the
/// proof that the guarantee rests on the wait is the paused-replay test below, where it
/// loses them every time.
#[test]
fn a_delayed_replica_loses_nothing_from_replica() {
    let Some((_, pg, standby)) = primary_and_standby(&[("recovery_min_apply_delay", "300ms")])
    else {
        return;
    };
    let modes = vec![ResolvedMode::Precise, ResolvedMode::Precise];
    let report = scenario_on(&pg, &standby, "delayed", modes, 150);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
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

/// Read-only end to end: with the chunks on the standby and `advanced.read_only`, the
/// connector sends the primary nothing that writes (no watermark, no slot, publication or
/// table of its own; the slot's confirmed position is its only trace). The primary logs
/// every statement by application name; the same capture without `read_only` does emit
/// its watermarks there, so the log would show a write.
#[test]
fn read_only_writes_nothing_to_either_server_from_replica() {
    use testkit::servers::Throwaway as _;
    let Some((binary, mut pg)) = setup() else {
        return;
    };
    if pg.dir().is_none() {
        return skip("read-only check: the primary's log needs a throwaway server");
    }
    pg.restart_with(&[("log_statement", "all"), ("log_line_prefix", "%a|")])
        .unwrap();
    let standby = match pg.start_standby(&[]) {
        Ok(standby) => standby,
        Err(e) => return skip(&format!("a PostgreSQL standby: {e}")),
    };
    pg.sql("CREATE TABLE ro (id int PRIMARY KEY, v text); INSERT INTO ro SELECT g, 'v' || g FROM generate_series(1, 500) g;
            CREATE PUBLICATION ro_pub FOR TABLE ro")
        .unwrap();
    pg.sql("SELECT pg_create_logical_replication_slot('ro_slot', 'pgoutput')")
        .unwrap();
    let log = pg.dir().unwrap().join("server.log");
    // The server writes its log at its own offset: what a run adds is read from the length
    // before it.
    let writes_logged_after = |start: usize| {
        let text = std::fs::read(&log).unwrap();
        String::from_utf8_lossy(&text[start..])
            .lines()
            .filter(|l| l.starts_with("source-postgres|"))
            .filter(|l| {
                // A watermark anywhere, or a statement of the line that begins with a
                // writing verb (a read may name `pubupdate`).
                let upper = l.to_ascii_uppercase();
                let text = upper.split_once(": ").map_or("", |(_, t)| t);
                let text = text.split_once(": ").map_or(text, |(_, t)| t);
                upper.contains("PG_LOGICAL_EMIT_MESSAGE")
                    || text.split(';').any(|statement| {
                        [
                            "CREATE ", "INSERT ", "UPDATE ", "DELETE ", "ALTER ", "DROP ",
                        ]
                        .iter()
                        .any(|w| statement.trim_start().starts_with(w))
                    })
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let cap = Capture::new(&binary, "pg-replica-read-only");
    for read_only in [false, true] {
        let start = usize::try_from(std::fs::metadata(&log).unwrap().len()).unwrap();
        let _ = std::fs::remove_file(cap.state());
        cap.config(&json!({
            "endpoint": endpoint(&pg, json!({"slot": "ro_slot", "publication": "ro_pub", "replica": replica(&standby),
                                             "advanced": {"read_only": read_only, "chunk_size": 50}})),
            "bindings": [binding("ro", "Precise", 0)],
        }));
        pg.sql("UPDATE ro SET v = v || '+' WHERE id % 7 = 0")
            .unwrap();
        let out = cap.capture();
        assert!(out.ok, "read_only = {read_only}: {}", out.stderr);
        let mut ids: Vec<i64> = docs(&out.lines, 0)
            .iter()
            .map(|d| d["id"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 500, "read_only = {read_only}");
        let writes = writes_logged_after(start);
        if read_only {
            assert!(
                writes.is_empty(),
                "a read-only capture wrote to the primary: {writes:#?}"
            );
        } else {
            assert!(
                !writes.is_empty(),
                "the log shows no watermark of a writing capture: the check sees nothing"
            );
        }
    }
}

/// A standby whose replay is paused makes every chunk wait, and the log says why every
/// few seconds; once replay resumes the backfill finishes with every row, as the primary
/// has it.
///
/// The same capture with the wait and the witness off (a debug build's sabotage switch)
/// must lose the update, and it does every time: its stream starts at the slot, created
/// after the update committed on the primary, while its chunks read the paused standby
/// from before it. This is the deterministic proof that the delayed-replica scenario's
/// guarantee rests on the wait and the witness.
#[test]
fn a_paused_replay_makes_chunks_wait_and_says_why_and_fails_without_the_wait_from_replica() {
    let Some((binary, pg, standby)) = primary_and_standby(&[]) else {
        return;
    };
    let blind = Sabotaged::new(&pg, "SOURCE_POSTGRES_SABOTAGE=replica-visibility");
    let blind = blind.connector().unwrap();
    for (name, binary) in [("paused", &binary), ("blind", &blind)] {
        pg.sql(&format!("CREATE TABLE {name} (id int PRIMARY KEY, v text); INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 100) g"))
            .unwrap();
        standby.await_replay_of(&pg).unwrap();
        standby.sql("SELECT pg_wal_replay_pause()").unwrap();
        pg.sql(&format!("UPDATE {name} SET v = 'changed' WHERE id <= 50"))
            .unwrap();
        let cap = Capture::new(binary, &format!("pg-replica-{name}"));
        cap.config(&json!({
            "endpoint": endpoint(&pg, json!({"slot": name, "publication": name, "replica": replica(&standby), "advanced": {"chunk_size": 10}})),
            "bindings": [binding(name, "Precise", 0)],
        }));
        // The blind capture does not wait: replay resumes once it is over (or after 30 s
        // if it waits after all, and then it reads the update and fails below).
        let after = Duration::from_secs(if name == "blind" { 30 } else { 7 });
        let out = cap.capture_while("info", after, || {
            standby.sql("SELECT pg_wal_replay_resume()").unwrap();
        });
        testkit::live::assert_replica_wait(&out, name == "blind");
    }
}

/// A binding added while the capture was stopped, for a table the standby has not
/// replayed yet (its replay paused): the capture resumes from before the table's creation,
/// so the wait does not cover it; the scan's "no such table" there is ridden out as
/// transient, and once replay resumes every row arrives.
#[test]
fn a_table_the_standby_lacks_yet_is_waited_for_from_replica() {
    let Some((binary, pg, standby)) = primary_and_standby(&[]) else {
        return;
    };
    pg.sql("CREATE TABLE first (id int PRIMARY KEY)").unwrap();
    let cap = Capture::new(&binary, "pg-replica-new-table");
    let config = |bindings: Vec<Value>| json!({"endpoint": endpoint(&pg, json!({"replica": replica(&standby)})), "bindings": bindings});
    cap.config(&config(vec![binding("first", "Precise", 0)]));
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    standby.await_replay_of(&pg).unwrap();
    standby.sql("SELECT pg_wal_replay_pause()").unwrap();
    pg.sql(
        "CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later SELECT generate_series(1, 30)",
    )
    .unwrap();
    cap.config(&config(vec![
        binding("first", "Precise", 0),
        binding("later", "Precise", 0),
    ]));
    let out = cap.capture_while("warn", Duration::from_secs(3), || {
        standby.sql("SELECT pg_wal_replay_resume()").unwrap();
    });
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("has not replayed the table's creation yet"),
        "{}",
        out.stderr
    );
    assert_eq!(sorted_ids(&out.lines, 1), (1..=30).collect::<Vec<_>>());
}
