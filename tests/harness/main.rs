//! Harness smoke suite: the throwaway servers start with the settings CDC needs, survive
//! a restart and a crash, and leave nothing behind. Without a server it prints `SKIPPED:`.

use std::path::PathBuf;
use testkit::servers::Throwaway as _;

use testkit::servers::{MariaDbServer, PgServer};

#[test]
fn postgres_starts_configured_for_logical_replication() {
    let Some(mut pg) = PgServer::start_or_skip() else {
        return;
    };
    assert_eq!(pg.sql("SHOW wal_level").unwrap(), "logical");
    let slots: u32 = pg
        .sql("SHOW max_replication_slots")
        .unwrap()
        .parse()
        .unwrap();
    assert!(slots >= 4, "max_replication_slots = {slots}");
    // A pgoutput slot can actually be created and decodes a committed change.
    pg.sql("CREATE TABLE t (id int primary key); CREATE PUBLICATION p FOR TABLE t")
        .unwrap();
    pg.sql("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .unwrap();
    pg.sql("INSERT INTO t VALUES (1)").unwrap();
    // The harness runs with synchronous_commit=off: decoding sees a commit once the WAL
    // writer has flushed it, within wal_writer_delay.
    let peek = "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')";
    let mut changes = 0;
    for _ in 0..50 {
        changes = pg.sql(peek).unwrap().parse().unwrap();
        if changes >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(changes >= 3, "begin, insert, commit decoded: {changes}");
    if pg.pid().is_none() {
        return; // an external server (TEST_POSTGRES_URL): the rest needs our own
    }
    // Restart with a changed setting, then crash: the data and the slot survive.
    pg.restart_with(&[("max_wal_senders", "12")]).unwrap();
    assert_eq!(pg.sql("SHOW max_wal_senders").unwrap(), "12");
    pg.crash_and_restart().unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM t").unwrap(), "1");
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'")
            .unwrap(),
        "1"
    );
    let dir: PathBuf = pg.dir().unwrap().to_path_buf();
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!dir.exists(), "the temp dir is removed");
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "the server is stopped"
    );
}

#[test]
fn mariadb_starts_with_the_row_binlog() {
    let Some(mut db) = MariaDbServer::start_or_skip() else {
        return;
    };
    let vars = db
        .sql("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id")
        .unwrap();
    assert_eq!(
        vars.split('\t').collect::<Vec<_>>(),
        ["1", "ROW", "FULL", "FULL", "1"],
        "{vars}"
    );
    db.sql("CREATE TABLE test.t (id int primary key); INSERT INTO test.t VALUES (1)")
        .unwrap();
    let status = db.sql("SHOW MASTER STATUS").unwrap();
    assert!(!status.is_empty(), "the binlog is on: {status}");
    if db.pid().is_none() {
        return; // an external server (TEST_MYSQL_URL, perhaps MySQL 8): the rest needs our own
    }
    assert!(status.starts_with("binlog."), "binlog file: {status}");
    let gtid = db.sql("SELECT @@gtid_binlog_pos").unwrap();
    assert!(gtid.starts_with("0-1-"), "GTIDs are assigned: {gtid}");
    db.restart_with(&["--binlog-expire-logs-seconds=3600"])
        .unwrap();
    assert_eq!(
        db.sql("SELECT @@binlog_expire_logs_seconds").unwrap(),
        "3600"
    );
    crash_restart_and_clean_up(db);
}

/// The shared live scenario against each database whose connector binary is built: every
/// mode under concurrent writes, tiny chunks and repeated SIGKILL restarts, checked by
/// merge-apply. Until the connector exists the scenario prints SKIPPED.
fn every_mode_under_writes_and_kills(db: &dyn testkit::live::LiveDb) {
    let scenario = testkit::live::Scenario {
        modes: testkit::live::EVERY_MODE.to_vec(),
        initial_rows: 200,
        txns: 400,
        kills: 6,
        endpoint_extra: serde_json::json!({"advanced": {"chunk_size": 7}}),
    };
    let Some(report) = testkit::live::run(db, "modes", &scenario).expect("scenario setup") else {
        return;
    };
    eprintln!(
        "{}: {} runs, {} kills, {} lines",
        db.name(),
        report.runs,
        report.kills,
        report.lines
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn live_scenario_postgres() {
    if testkit::live::binary_or_skip("source-postgres").is_none() {
        return;
    }
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    every_mode_under_writes_and_kills(&pg);
}

#[test]
fn live_scenario_mariadb() {
    if testkit::live::binary_or_skip("source-mysql").is_none() {
        return;
    }
    let Some(db) = MariaDbServer::start_or_skip() else {
        return;
    };
    every_mode_under_writes_and_kills(&db);
}

#[test]
fn mysql_starts_with_the_row_binlog_and_gtids() {
    let Some(db) = MariaDbServer::start_mysql_or_skip() else {
        return;
    };
    let vars = db
        .sql("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@gtid_mode, VERSION() LIKE '%MariaDB%'")
        .unwrap();
    assert_eq!(
        vars.split('\t').collect::<Vec<_>>(),
        ["1", "ROW", "FULL", "FULL", "ON", "0"],
        "{vars}"
    );
    assert!(db.is_mysql());
    db.sql("CREATE TABLE test.t (id int primary key); INSERT INTO test.t VALUES (1)")
        .unwrap();
    if db.pid().is_none() {
        return; // an external server (TEST_MYSQL8_URL): the rest needs our own
    }
    crash_restart_and_clean_up(db);
}

/// A crash keeps `test.t`'s one row; dropping the handle stops the server and removes its
/// directory.
fn crash_restart_and_clean_up(mut db: MariaDbServer) {
    db.crash_and_restart().expect("restart after a crash");
    assert_eq!(
        db.sql("SELECT count(*) FROM test.t")
            .expect("count after the crash"),
        "1"
    );
    let dir: PathBuf = db.dir().expect("a throwaway server").to_path_buf();
    let pid = db.pid().expect("a throwaway server");
    drop(db);
    assert!(!dir.exists(), "the temp dir is removed");
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "the server is stopped"
    );
}

/// MySQL writes a transaction to the binlog, where the stream may read it, before the
/// engine commits it. `binlog_group_commit_sync_delay` (with `sync_binlog=0`, which
/// publishes a transaction to the stream before the delay) stretches that gap to 100 ms
/// per commit: a chunk scanned in the gap would miss a change the stream already
/// delivered, and re-emit a stale row after it. The connector waits for the GTIDs the
/// stream has read before each snapshot; without that wait this scenario fails.
#[test]
fn mysql_chunks_see_every_change_the_stream_delivered() {
    use backfill_core::mode::ResolvedMode;
    if testkit::live::binary_or_skip("source-mysql").is_none() {
        return;
    }
    let Some(db) = MariaDbServer::start_mysql_or_skip() else {
        return;
    };
    db.sql("SET GLOBAL sync_binlog = 0; SET GLOBAL binlog_group_commit_sync_delay = 100000")
        .unwrap();
    let scenario = testkit::live::Scenario {
        modes: vec![ResolvedMode::Precise, ResolvedMode::Normal],
        initial_rows: 100,
        txns: 120,
        kills: 1,
        endpoint_extra: serde_json::json!({"advanced": {"chunk_size": 3}}),
    };
    let Some(report) = testkit::live::run(&db, "gap", &scenario).expect("scenario setup") else {
        return;
    };
    eprintln!("mysql gap: {} runs, {} lines", report.runs, report.lines);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn live_scenario_mysql() {
    if testkit::live::binary_or_skip("source-mysql").is_none() {
        return;
    }
    let Some(db) = MariaDbServer::start_mysql_or_skip() else {
        return;
    };
    every_mode_under_writes_and_kills(&db);
}
