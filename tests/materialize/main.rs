//! The materialize suite (PIPELINE.md §4, §7): captures landed in collections and
//! materialized into a throwaway PostgreSQL destination, under the torture workload, with
//! the runtime, the connector and the destination server killed again and again. At the end
//! every standard table equals its source table, and every delta table holds each
//! committed document of its collection exactly once.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use testkit::servers::Throwaway as _;

use backfill_core::consumer::Line;
use backfill_core::mode::ResolvedMode;
use cdc_runtime::store::{EmbeddedStore, JetStreamLocation, JetStreamStore, Store};
use serde_json::{Value, json};
use testkit::live::{LiveDb, Scenario};
use testkit::pipeline::{PipelineDriver, Victim};
use testkit::servers::{MariaDbServer, NatsServer, PgServer};

mod backfill;
mod compaction;
mod console;
mod types;

/// The `postgres` destination endpoint of a throwaway server.
pub(crate) fn endpoint_of(server: &PgServer) -> Value {
    json!({"host": "127.0.0.1", "port": server.port, "user": "postgres",
           "database": "postgres", "tls": {"mode": "disable"}})
}

/// `id|v|pad` lines of a source table's rows, sorted.
fn source_rows(db: &dyn LiveDb, table: &str) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows: Vec<String> = db
        .rows(table)
        .unwrap()
        .iter()
        .map(|r| format!("{}|{}|{}", text(&r["id"]), text(&r["v"]), text(&r["pad"])))
        .collect();
    rows.sort();
    rows
}

/// `id|v|pad` lines of a destination table, sorted.
fn destination_rows(dest: &PgServer, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = dest
        .sql(&format!("SELECT id, v, pad FROM \"{table}\""))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

pub(crate) fn open_store(url: &str) -> Box<dyn Store> {
    match url.strip_prefix("file://") {
        Some(dir) => Box::new(EmbeddedStore::open(dir).unwrap()),
        None => Box::new(JetStreamStore::connect(JetStreamLocation::parse(url).unwrap()).unwrap()),
    }
}

/// Per binding index, the log line numbers of the collection's documents and truncates.
fn collection_lines(store: &dyn Store) -> BTreeMap<usize, Vec<i64>> {
    let mut out: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (n, line) in store.read("scenario").unwrap().enumerate() {
        let line = line.unwrap();
        if let Ok(Line::Document { binding, .. } | Line::Truncate { binding, .. }) =
            Line::parse(&line)
        {
            out.entry(binding).or_default().push(n as i64);
        }
    }
    out
}

fn end_to_end_under_kills(db: &dyn LiveDb, name: &str, store_url: Option<String>) {
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    let endpoint = endpoint_of(&dest);
    let dest = Arc::new(Mutex::new(dest));
    let scenario = Scenario {
        modes: vec![
            ResolvedMode::Precise,
            ResolvedMode::Normal,
            ResolvedMode::WithoutPrimaryKey,
        ],
        initial_rows: 300,
        txns: 600,
        kills: 9,
        endpoint_extra: json!({"advanced": {"chunk_size": 13}}),
    };
    let store_url = store_url.unwrap_or_else(|| {
        let dir = std::env::temp_dir().join(format!("mat-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        format!("file://{}", dir.display())
    });
    let victims = [Victim::Runtime, Victim::Connector, Victim::Both];
    let restarts = Arc::new(Mutex::new(0));
    let report = testkit::live::run_with(db, name, &scenario, &|connector, config, dir| {
        let (dest, restarts) = (Arc::clone(&dest), Arc::clone(&restarts));
        let mut restarting: Option<JoinHandle<()>> = None;
        let hook = Box::new(move |k: usize| {
            if let Some(h) = restarting.take() {
                h.join().unwrap();
            }
            // Every third run, the destination server crashes mid-run and comes back.
            if k % 3 == 1 {
                let (dest, restarts) = (Arc::clone(&dest), Arc::clone(&restarts));
                restarting = Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(250));
                    dest.lock().unwrap().crash_and_restart().unwrap();
                    *restarts.lock().unwrap() += 1;
                }));
            }
        });
        PipelineDriver::new(connector, config, dir, &victims, Some(&store_url))
            .and_then(|d| d.materializing(&endpoint))
            .map(|d| Box::new(d.on_kill(hook)) as Box<dyn testkit::live::Driver>)
            .map_err(Some)
    })
    .expect("scenario setup");
    let Some(report) = report else { return };
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let dest = dest.lock().unwrap();
    let lines = collection_lines(&*open_store(&store_url));
    for i in 0..scenario.modes.len() {
        let table = format!("{name}_{i}");
        assert_eq!(
            destination_rows(&dest, &table),
            source_rows(db, &table),
            "standard table {table} differs from its source table"
        );
        let delta: Vec<i64> = dest
            .sql(&format!(
                "SELECT _line FROM \"{table}_delta\" ORDER BY _line"
            ))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let want = lines.get(&i).cloned().unwrap_or_default();
        let twice: Vec<&i64> = delta
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| &w[0])
            .collect();
        let missing: Vec<&i64> = want
            .iter()
            .filter(|l| delta.binary_search(l).is_err())
            .collect();
        let extra: Vec<&i64> = delta
            .iter()
            .filter(|l| want.binary_search(l).is_err())
            .collect();
        assert!(
            twice.is_empty() && missing.is_empty() && extra.is_empty(),
            "delta table {table}_delta must hold each committed document of its collection once: {} applied twice {twice:?}, {} missing {missing:?}, {} not in the collection {extra:?}",
            twice.len(),
            missing.len(),
            extra.len()
        );
        assert!(!want.is_empty());
    }
    eprintln!(
        "{}: {} kills, {} destination restarts, {} committed lines",
        db.name(),
        report.kills,
        restarts.lock().unwrap(),
        report.lines
    );
    if let Some(dir) = store_url.strip_prefix("file://") {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn postgres_materializes_exactly_once_from_the_embedded_store_under_kills() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    end_to_end_under_kills(&pg, "mat", None);
}

#[test]
fn mariadb_materializes_exactly_once_from_the_embedded_store_under_kills() {
    let Some(db) = MariaDbServer::start_or_skip() else {
        return;
    };
    end_to_end_under_kills(&db, "mat", None);
}

#[test]
fn postgres_materializes_exactly_once_from_jetstream_under_kills() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    end_to_end_under_kills(&pg, "matjs", Some(format!("{}/m1", nats.url)));
}

#[test]
fn mariadb_materializes_exactly_once_from_jetstream_under_kills() {
    let Some(db) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    end_to_end_under_kills(&db, "matjs", Some(format!("{}/m1", nats.url)));
}

/// Every process that opens a destination (`cdc run`, `cdc status` beside it) creates its
/// checkpoint table if missing. Two such creations at once must both succeed: a bare
/// `CREATE TABLE IF NOT EXISTS` raced into "duplicate key value violates unique constraint
/// pg_type_typname_nsp_index" and stopped a run. Many schemas, six openers each at once.
#[test]
fn destinations_opened_at_once_create_their_checkpoint_table_once() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    for round in 0..15 {
        let schema = format!("race_{round}");
        pg.sql(&format!("CREATE SCHEMA {schema}")).unwrap();
        let create = materialize_postgres::sql::create_checkpoints(&schema);
        let failures: Vec<String> = std::thread::scope(|scope| {
            let openers: Vec<_> = (0..6).map(|_| scope.spawn(|| pg.sql(&create))).collect();
            openers
                .into_iter()
                .filter_map(|o| o.join().unwrap().err().map(|e| e.to_string()))
                .collect()
        });
        assert!(failures.is_empty(), "round {round}: {failures:#?}");
    }
}

/// `cdc status` reads a destination without writing to it: with the destination's table
/// and checkpoint table dropped after a run, status shows the table at position 0 and
/// neither table comes back (the materialization's next run creates them).
#[test]
fn status_reads_a_destination_without_creating_anything() {
    let (Some(src), Some(dest)) = (PgServer::start_or_skip(), PgServer::start_or_skip()) else {
        return;
    };
    src.sql("CREATE TABLE t (id int PRIMARY KEY, v int, pad text); INSERT INTO t SELECT g, g, 'x' FROM generate_series(1, 50) g")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-status-{}", std::process::id()));
    let path = types::pipeline(&src, &dest, &dir, &["t"]);
    types::cdc(&["run", "--until-caught-up"], &path);
    let exists = |name: &str| {
        dest.sql(&format!("SELECT to_regclass('{name}') IS NOT NULL"))
            .unwrap()
    };
    assert_eq!(
        (exists("public.t"), exists("public.cdc_checkpoints")),
        ("t".to_string(), "t".to_string()),
        "the run created both"
    );
    let before = backfill::status(&path);
    assert!(
        before["materializations"][0]["tables"][0]["position"].as_u64() > Some(0),
        "{before}"
    );

    dest.sql("DROP TABLE public.t; DROP TABLE public.cdc_checkpoints")
        .unwrap();
    let after = backfill::status(&path);
    assert_eq!(
        after["materializations"][0]["tables"][0]["position"], 0,
        "{after}"
    );
    assert!(after["materializations"][0]["error"].is_null(), "{after}");
    assert_eq!(
        (exists("public.t"), exists("public.cdc_checkpoints")),
        ("f".to_string(), "f".to_string()),
        "cdc status created a table"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A destination table whose statistics were taken while it held one row is analyzed
/// once the stream has written far more: its batches are then planned as probes of the
/// key index, not as a loop reading the whole table per staged row (`materialize-postgres`'s
/// `statistics`). Autovacuum is off for the table, so only the materialization can have
/// brought its statistics up.
#[test]
fn a_table_analyzed_while_tiny_gets_statistics_that_follow_its_rows() {
    let (Some(src), Some(dest)) = (PgServer::start_or_skip(), PgServer::start_or_skip()) else {
        return;
    };
    src.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int, pad text); INSERT INTO t VALUES (0, 0, 'x')",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-statistics-{}", std::process::id()));
    let path = types::pipeline(&src, &dest, &dir, &["t"]);
    types::cdc(&["run", "--until-caught-up"], &path);
    dest.sql("ALTER TABLE t SET (autovacuum_enabled = false); ANALYZE t")
        .unwrap();
    let tuples = || -> f64 {
        dest.sql("SELECT reltuples FROM pg_class WHERE oid = 'public.t'::regclass")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(tuples() <= 1.0, "one row analyzed: {}", tuples());
    let inserts: String = (0..50)
        .map(|k| {
            format!(
                "BEGIN; INSERT INTO t SELECT g, g, 'x' FROM generate_series({}, {}) g; COMMIT;",
                1 + k * 100,
                (k + 1) * 100
            )
        })
        .collect();
    src.sql(&inserts).unwrap();
    types::cdc(&["run", "--until-caught-up"], &path);
    assert_eq!(
        dest.sql("SELECT count(*) FROM t").unwrap().trim(),
        "5001",
        "every row landed"
    );
    assert!(
        tuples() >= 1_000.0,
        "after 5,000 rows the table's statistics still count {} rows",
        tuples()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
