//! The PostgreSQL suite: `source-postgres` driven as a user would (config file, state file,
//! stdout), against throwaway servers, checked against DESIGN.md by the shared checker and
//! against the server itself (`to_jsonb` is the oracle for values).

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use testkit::servers::Throwaway as _;

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};
use testkit::checker::{self, BindingExpect, Oracle, Row, RunOutput};
use testkit::live::{Capture, docs, strip_meta};
use testkit::servers::{PgServer, skip};

mod ranges;
mod replica;

/// A connector binary and a server, or why not.
fn setup() -> Option<(PathBuf, PgServer)> {
    Some((
        testkit::live::binary_or_skip("source-postgres")?,
        PgServer::start_or_skip()?,
    ))
}

fn endpoint(pg: &PgServer, extra: Value) -> Value {
    let mut e = json!({"host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": "postgres", "tls": {"mode": "disable"}});
    if let (Some(e), Value::Object(x)) = (e.as_object_mut(), extra) {
        e.extend(x);
    }
    e
}

fn binding(stream: &str, mode: &str, backfill: u32) -> Value {
    json!({"resource": {"namespace": "public", "stream": stream, "mode": mode}, "target": stream, "backfill": backfill})
}

fn to_jsonb(pg: &PgServer, table: &str, id: i64) -> Value {
    serde_json::from_str(
        &pg.sql(&format!(
            "SELECT to_jsonb(t.*) FROM {table} t WHERE id = {id}"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// Asserts that a capture of `table` (with a slot and publication of its own) stops at
/// start and says `says`.
fn assert_refused(binary: &std::path::Path, pg: &PgServer, table: &str, says: &str) {
    let cap = Capture::new(binary, &format!("refused-{table}"));
    cap.config(&json!({"endpoint": endpoint(pg, json!({"slot": format!("{table}_slot"), "publication": format!("{table}_pub")})),
                        "bindings": [binding(table, "", 0)]}));
    let out = cap.capture();
    assert!(!out.ok && out.stderr.contains(says), "{}", out.stderr);
}

/// Asserts that each of `docs` (rows of `table` keyed by `id`) equals `to_jsonb` of its
/// row; `what` names them in a failure.
fn each_equals_to_jsonb(pg: &PgServer, table: &str, docs: &[Value], what: &str) {
    for doc in docs {
        let id = doc["id"].as_i64().unwrap();
        assert_eq!(strip_meta(doc), to_jsonb(pg, table, id), "{what} row {id}");
    }
}

/// Every built-in type, backfilled and streamed, equals `to_jsonb` of the row.
#[test]
fn every_value_equals_to_jsonb_backfilled_and_streamed() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TYPE pair AS (a timestamptz, b numeric);
         CREATE TABLE types (
           id bigint PRIMARY KEY, i2 smallint, i4 int, i8 bigint, n numeric, n2 numeric(10,2),
           f4 real, f8 double precision, b bool, t text, vc varchar(10), c char(4), by bytea, u uuid,
           j json, jb jsonb, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
           ai int[], a2 int[][], at text[], ats timestamptz[], inet inet, cidr cidr, mac macaddr,
           e mood, dom posint, r int4range, tr tstzrange, bt bit(3), vb varbit, m money, x xml,
           p point, tv tsvector, o oid, comp pair, an numeric[], aj jsonb[])",
    )
    .unwrap();
    let values = [
        "1, -32768, 2147483647, 9223372036854775807, 123456789012345678901234567890.123456789, 1.50, 0.1, 1e100, true, 'héllo \"q\" \\ ', 'abc', 'ab', '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": 1, \"a\": [1e2, null]}', '{\"k\": {\"z\": 3.0E-2}}', '2020-02-29', '12:34:56.789', '12:00:00+05:30', '2020-01-01 12:00:00.5', '2020-01-01 12:00:00+02', '1 year 2 mons 3 days 04:05:06', '{1,NULL,3}', '{{1,2},{3,4}}', '{\"a b\",NULL,\"c,d\",\"\"}', '{\"2020-01-01 00:00:00+00\"}', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'sad', 5, '[1,10)', '[2020-01-01,2021-01-01)', B'101', B'1101', 12.5, '<a>x</a>', '(1.5,2)', 'a fat cat', 4000000000, '(\"2020-01-01 00:00:00+00\",1.0)', '{1.5,NaN}', ARRAY['{\"x\": 1}'::jsonb]",
        "2, NULL, NULL, NULL, 'NaN', NULL, 'NaN', '-Infinity', false, '', NULL, NULL, '', NULL, 'null', '[]', 'infinity', '00:00', NULL, '-infinity', 'infinity', '-1 day', '{}', NULL, '{}', NULL, NULL, NULL, NULL, 'ok', NULL, 'empty', NULL, NULL, NULL, -1.25, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
        "3, 0, -1, -1, -0.000001, 0, 1.5e-7, -0.0, NULL, 'x', 'y', 'z', NULL, NULL, '1', '\"s\"', '0044-03-15 BC', '23:59:59.999999', '00:00:00-08', '0044-03-15 12:00:00 BC', '1900-06-01 00:00:00+00', '00:00:00.000001', '{-5}', NULL, '{NULL}', '{infinity}', '::1', '::/0', NULL, NULL, 7, '(,5]', NULL, B'000', B'', 0, NULL, '(0,0)', '', 0, '(,)', '{}', NULL",
    ];
    for v in values {
        pg.sql(&format!("INSERT INTO types VALUES ({v})")).unwrap();
    }
    let cap = Capture::new(&binary, "types");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 2}})), "bindings": [binding("types", "", 0)]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines, 0);
    assert_eq!(backfilled.len(), 3);
    each_equals_to_jsonb(&pg, "types", &backfilled, "backfilled");
    // The same values streamed: inserted again under new ids, and one updated in place.
    pg.sql("INSERT INTO types SELECT id + 100, i2, i4, i8, n, n2, f4, f8, b, t, vc, c, by, u, j, jb, d, tm, ttz, ts, tstz, iv, ai, a2, at, ats, inet, cidr, mac, e, dom, r, tr, bt, vb, m, x, p, tv, o, comp, an, aj FROM types")
        .unwrap();
    pg.sql("UPDATE types SET t = 'changed', comp = '(\"1999-12-31 23:59:59+00\",2)' WHERE id = 1")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines, 0);
    assert_eq!(streamed.len(), 4, "{:#?}", second.lines);
    assert!(
        streamed
            .iter()
            .all(|d| d["_meta"]["source"]["pos"].is_array())
    );
    each_equals_to_jsonb(&pg, "types", &streamed, "streamed");
}

struct PgOracle<'a> {
    pg: &'a PgServer,
    tables: Vec<&'a str>,
    key: &'a str,
}

impl Oracle for PgOracle<'_> {
    fn final_rows(&self, binding: usize) -> Vec<Row> {
        self.pg
            .sql(&format!(
                "SELECT to_jsonb(t.*) FROM {} t ORDER BY {}",
                self.tables[binding], self.key
            ))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Checks a Precise binding's combined output against the table: merge-apply and per-key
/// histories (with `version` as the column every write raises).
fn assert_precise(
    pg: &PgServer,
    table: &str,
    key: &[&str],
    version: Option<&str>,
    runs: &[RunOutput],
) {
    let violations = precise_violations(pg, table, key, version, runs);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// What breaks DESIGN.md §6 for a Precise binding of `table` in `runs`.
fn precise_violations(
    pg: &PgServer,
    table: &str,
    key: &[&str],
    version: Option<&str>,
    runs: &[RunOutput],
) -> Vec<String> {
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: key.iter().map(|k| (*k).to_string()).collect(),
        table: format!("public.{table}"),
        version_column: version.map(str::to_string),
    }];
    checker::check(
        &expect,
        runs,
        &PgOracle {
            pg,
            tables: vec![table],
            key: &key.join(", "),
        },
    )
}

/// A text key under an ICU collation (whose order is not byte order) gets Precise, and
/// keeps its guarantees under concurrent writes and SIGKILLs with tiny chunks.
#[test]
fn collated_text_key_is_precise_under_writes_and_kills() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE names (name text COLLATE \"en-x-icu\" PRIMARY KEY, v bigint)")
        .unwrap();
    let words = [
        "apple", "Apple", "APPLE", "banana", "Banana", "éclair", "eclair", "Zebra", "zebra", "ß",
        "ss", "a b", "a-b", "ab",
    ];
    for (i, w) in words.iter().enumerate() {
        pg.sql(&format!("INSERT INTO names VALUES ('{w}', {i})"))
            .unwrap();
    }
    let cap = Capture::new(&binary, "collated");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 2}})), "bindings": [binding("names", "", 0)]}));
    let discover = cap.run(&["discover", "--json"]);
    let d: Value = serde_json::from_str(&discover.lines.join("\n")).unwrap();
    assert_eq!(d["bindings"][0]["resource"]["mode"], "Precise", "{d}");
    assert!(
        d["bindings"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("asking the database"),
        "{d}"
    );
    // `discover --json`'s entries paste into the config as they are (DESIGN.md §3).
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 2}})), "bindings": d["bindings"]}));
    let mut runs = Vec::new();
    let state = cap.state();
    let mut v = 100;
    for round in 0..8u64 {
        // Writes between and during runs: updates, deletes, re-inserts, key changes.
        for (i, w) in words.iter().enumerate() {
            v += 1;
            let sql = match (usize::try_from(round).unwrap() + i) % 4 {
                0 => format!("UPDATE names SET v = {v} WHERE name = '{w}'"),
                1 => format!("DELETE FROM names WHERE name = '{w}'"),
                2 => format!(
                    "INSERT INTO names VALUES ('{w}', {v}) ON CONFLICT (name) DO UPDATE SET v = {v}"
                ),
                _ => format!(
                    "UPDATE names SET name = name || 'r{round}', v = {v} WHERE name = '{w}' AND NOT EXISTS (SELECT 1 FROM names WHERE name = '{w}r{round}')"
                ),
            };
            pg.sql(&sql).unwrap();
        }
        let lines = testkit::live::capture(
            &binary,
            &cap.dir.join("config.json"),
            &state,
            false,
            Some(std::time::Duration::from_millis(150 + 70 * round)),
        );
        runs.push(RunOutput {
            lines,
            counters: vec![0],
        });
    }
    let last = cap.capture();
    assert!(last.ok, "{}", last.stderr);
    runs.push(RunOutput {
        lines: last.lines,
        counters: vec![0],
    });
    assert_precise(&pg, "names", &["name"], Some("v"), &runs);
}

/// An update that leaves a TOASTed value unchanged omits it; merge-apply keeps it.
#[test]
fn unchanged_toast_values_are_omitted_and_kept_by_merging() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE docs (id int PRIMARY KEY, v int, body text); ALTER TABLE docs ALTER body SET STORAGE EXTERNAL").unwrap();
    let cap = Capture::new(&binary, "toast");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("docs", "Precise", 0)]}),
    );
    assert!(cap.capture().ok);
    pg.sql(
        "INSERT INTO docs SELECT 1, 1, string_agg(md5(g::text), '') FROM generate_series(1, 400) g",
    )
    .unwrap();
    pg.sql("UPDATE docs SET v = 2 WHERE id = 1").unwrap();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let d = docs(&out.lines, 0);
    assert_eq!(d.len(), 2);
    assert!(d[0]["body"].as_str().is_some_and(|b| b.len() == 12_800));
    assert_eq!(d[1]["_meta"]["op"], "u");
    assert!(
        d[1].get("body").is_none(),
        "the unchanged TOAST value is omitted: {}",
        d[1]
    );
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: vec!["id".into()],
        table: "public.docs".into(),
        version_column: None,
    }];
    let runs = [RunOutput {
        lines: out.lines,
        counters: vec![0],
    }];
    let violations = checker::check(
        &expect,
        &runs,
        &PgOracle {
            pg: &pg,
            tables: vec!["docs"],
            key: "id",
        },
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// With REPLICA IDENTITY FULL the old row carries TOASTed values inline, so an update that
/// leaves one unchanged, and a key change of such a row, emit whole rows (DESIGN.md §5).
#[test]
fn replica_identity_full_carries_unchanged_toast_values_through_key_changes() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE docs_full (id int PRIMARY KEY, v int, body text); ALTER TABLE docs_full ALTER body SET STORAGE EXTERNAL; ALTER TABLE docs_full REPLICA IDENTITY FULL").unwrap();
    let cap = Capture::new(&binary, "toast-full");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("docs_full", "Precise", 0)]}));
    assert!(cap.capture().ok);
    pg.sql("INSERT INTO docs_full SELECT 1, 1, string_agg(md5(g::text), '') FROM generate_series(1, 400) g")
        .unwrap();
    pg.sql("UPDATE docs_full SET v = 2 WHERE id = 1").unwrap();
    pg.sql("UPDATE docs_full SET id = 7, v = 3 WHERE id = 1")
        .unwrap();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let d = docs(&out.lines, 0);
    let ops: Vec<&str> = d
        .iter()
        .map(|x| x["_meta"]["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["c", "u", "d", "c"], "{d:?}");
    for doc in [&d[1], &d[3]] {
        assert_eq!(
            doc["body"].as_str().map(str::len),
            Some(12_800),
            "the unchanged value is carried: {doc}"
        );
    }
    assert_eq!(d[3]["id"], 7);
}

/// Backfill counters: one raised re-reads that table only; all raised re-create the slot at
/// the end of the WAL (the upgrade path); a dropped slot stops with the remedy named.
#[test]
fn counters_and_lost_slot() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);
            INSERT INTO a SELECT g, g FROM generate_series(1, 5) g; INSERT INTO b SELECT g, g FROM generate_series(1, 3) g")
        .unwrap();
    let cap = Capture::new(&binary, "counters");
    let config = |ca: u32, cb: u32| json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 2}})), "bindings": [binding("a", "", ca), binding("b", "", cb)]});
    cap.config(&config(0, 0));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    assert_eq!(
        (docs(&first.lines, 0).len(), docs(&first.lines, 1).len()),
        (5, 3)
    );
    // One counter: only b is read again, the stream goes on.
    pg.sql("DELETE FROM a WHERE id = 1").unwrap();
    cap.config(&config(0, 1));
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(docs(&second.lines, 0).len(), 1, "a's delete streamed");
    assert_eq!(docs(&second.lines, 1).len(), 3, "b re-read");
    let last: Value = serde_json::from_str(second.lines.last().unwrap()).unwrap();
    assert!(
        last["checkpoint"]["bindings"]["public.b.v1"]["phase"] == "active",
        "{last}"
    );
    // The slot is dropped behind the connector's back: a clear, definite error.
    pg.sql("SELECT pg_drop_replication_slot('cdc_slot')")
        .unwrap();
    let before = std::fs::read_to_string(cap.state()).unwrap();
    let lost = cap.capture();
    assert!(!lost.ok);
    let line = lost.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error:")
            && line.contains("does not exist")
            && line.contains("Raise `backfill` for every binding"),
        "{}",
        lost.stderr
    );
    assert_eq!(
        std::fs::read_to_string(cap.state()).unwrap(),
        before,
        "state untouched"
    );
    // Raising every counter recreates the slot and re-reads everything.
    cap.config(&config(1, 2));
    let third = cap.capture();
    assert!(third.ok, "{}", third.stderr);
    assert_eq!(
        (docs(&third.lines, 0).len(), docs(&third.lines, 1).len()),
        (4, 3)
    );
    pg.sql("INSERT INTO a VALUES (99, 99)").unwrap();
    let fourth = cap.capture();
    assert!(fourth.ok, "{}", fourth.stderr);
    assert_eq!(
        docs(&fourth.lines, 0).len(),
        1,
        "streaming resumed on the new slot"
    );
}

/// The xmin filter backfills only rows written at or after the given transaction.
#[test]
fn min_backfill_xid_filters_the_backfill() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE x (id int PRIMARY KEY)").unwrap();
    pg.sql("INSERT INTO x VALUES (1), (2)").unwrap();
    let xid: u32 = pg
        .sql("SELECT txid_current() % 4294967296")
        .unwrap()
        .parse()
        .unwrap();
    pg.sql("INSERT INTO x VALUES (3)").unwrap();
    let cap = Capture::new(&binary, "xmin");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"min_backfill_xid": xid}})), "bindings": [binding("x", "", 0)]}));
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let ids: Vec<i64> = docs(&out.lines, 0)
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [3]);
}

/// Bad input: each is one line that says what to do, a non-zero exit, and no state file.
#[test]
fn bad_input_fails_with_one_clear_line() {
    let Some((binary, mut pg)) = setup() else {
        return;
    };
    pg.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE k (v int)")
        .unwrap();
    let cap = Capture::new(&binary, "bad");
    let check = |cap: &Capture, needle: &str| {
        let out = cap.capture();
        assert!(!out.ok, "expected a failure containing {needle:?}");
        let line = testkit::live::the_error_line(&out.stderr);
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
        assert!(!cap.state().exists(), "no state file is written");
    };
    std::fs::write(cap.dir.join("config.json"), "{\"endpoint\": ").unwrap();
    check(&cap, "config is not valid");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("nope", "", 0)]}),
    );
    check(&cap, "binding 0 (public.nope): no such table");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("k", "Precise", 0)]}),
    );
    check(&cap, "Without Primary Key");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("k", "", 0)]}));
    check(&cap, "REPLICA IDENTITY FULL");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"database": "missing"})), "bindings": [binding("t", "", 0)]}));
    check(&cap, "endpoint.database");
    // A state file that is empty is damage, not a fresh start; a state path in a missing
    // directory is refused before any line is printed.
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("t", "", 0)]}));
    std::fs::write(cap.state(), "").unwrap();
    let out = cap.capture();
    assert!(!out.ok && out.lines.is_empty(), "{:?}", out.lines);
    let line = testkit::live::the_error_line(&out.stderr);
    assert!(
        line.contains("is empty") && line.contains("remove it to start over"),
        "{line}"
    );
    std::fs::remove_file(cap.state()).unwrap();
    let out = cap.run(&[
        "capture",
        "--until-caught-up",
        "--state",
        "/nonexistent-dir/state.json",
    ]);
    assert!(!out.ok && out.lines.is_empty(), "{:?}", out.lines);
    let line = testkit::live::the_error_line(&out.stderr);
    assert!(
        line.contains("/nonexistent-dir") && line.contains("does not exist"),
        "{line}"
    );
    // Password authentication required, wrong password given.
    let hba = pg.dir().unwrap().join("hba.conf");
    std::fs::write(&hba, "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication postgres 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 scram-sha-256\n").unwrap();
    let _ = Command::new("chmod").arg("644").arg(&hba).status();
    pg.restart_with(&[("hba_file", hba.to_str().unwrap())])
        .unwrap();
    pg.sql("CREATE ROLE cdc LOGIN REPLICATION PASSWORD 'right'; GRANT SELECT ON t TO cdc")
        .unwrap();
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"user": "cdc", "password": "wrong"})), "bindings": [binding("t", "", 0)]}));
    check(&cap, "check the user and password");
    // wal_level below logical.
    pg.sql("DROP PUBLICATION IF EXISTS cdc_publication")
        .unwrap();
    pg.restart_with(&[("wal_level", "replica")]).unwrap();
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("t", "", 0)]}));
    // The capture's preflight stops with `check`'s line, before it creates anything.
    check(&cap, "ALTER SYSTEM SET wal_level = logical");
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_publication")
            .unwrap()
            .trim(),
        "0",
        "nothing is created on a server the capture cannot use"
    );
    let check_cmd = cap.run(&["check"]);
    assert!(
        !check_cmd.ok
            && check_cmd
                .lines
                .iter()
                .any(|l| l.starts_with("FAIL wal_level")
                    && l.contains("ALTER SYSTEM SET wal_level = logical")),
        "{:?}",
        check_cmd.lines
    );
}

/// A composite key (integer and C-collated text) with key changes and a truncate, checked
/// by merge-apply and per-key history.
#[test]
fn composite_key_with_key_changes_and_truncate() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TABLE c (a int, b text COLLATE \"C\", v bigint, PRIMARY KEY (a, b));
            INSERT INTO c SELECT g % 5, 'k' || g, g FROM generate_series(1, 40) g",
    )
    .unwrap();
    let cap = Capture::new(&binary, "composite");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 3}})), "bindings": [binding("c", "", 0)]}));
    let mut runs = Vec::new();
    let first = testkit::live::capture(
        &binary,
        &cap.dir.join("config.json"),
        &cap.state(),
        false,
        Some(std::time::Duration::from_millis(400)),
    );
    runs.push(RunOutput {
        lines: first,
        counters: vec![0],
    });
    pg.sql("UPDATE c SET b = b || 'x', v = 100 WHERE a = 1; DELETE FROM c WHERE a = 2; UPDATE c SET v = 101 WHERE a = 3").unwrap();
    pg.sql("TRUNCATE c; INSERT INTO c VALUES (9, 'after', 102)")
        .unwrap();
    let last = cap.capture();
    assert!(last.ok, "{}", last.stderr);
    assert!(
        last.lines.iter().any(|l| l.contains("\"truncate\"")),
        "the truncate is emitted"
    );
    runs.push(RunOutput {
        lines: last.lines,
        counters: vec![0],
    });
    assert_precise(&pg, "c", &["a", "b"], Some("v"), &runs);
}

/// Renamed while streaming, dropped while backfilling, unreadable: each stops with a line
/// that says what to do, and the state keeps its last good content.
#[test]
fn renamed_dropped_and_unreadable_tables_stop_clearly() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE r (id int PRIMARY KEY); INSERT INTO r VALUES (1)")
        .unwrap();
    let cap = Capture::new(&binary, "rename");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("r", "", 0)]}));
    assert!(cap.capture().ok);
    pg.sql("ALTER TABLE r RENAME TO r2; INSERT INTO r2 VALUES (2)")
        .unwrap();
    let before = std::fs::read_to_string(cap.state()).unwrap();
    // Still configured as `r`: refused before anything is read.
    let out = cap.capture();
    assert!(
        !out.ok && out.stderr.contains("binding 0 (public.r): no such table"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(cap.state()).unwrap(), before);
    // Renamed under a running capture: the stream notices.
    pg.sql("ALTER TABLE r2 RENAME TO r").unwrap();
    let cap2 = Capture::new(&binary, "rename2");
    cap2.config(&json!({"endpoint": endpoint(&pg, json!({"slot": "s2", "publication": "p2"})), "bindings": [binding("r", "", 0)]}));
    assert!(cap2.capture().ok);
    let mut child = cap2.spawn();
    std::thread::sleep(std::time::Duration::from_millis(500));
    pg.sql("ALTER TABLE r RENAME TO r3; INSERT INTO r3 VALUES (3)")
        .unwrap();
    let output = wait_with_timeout(&mut child, 30);
    assert!(output.contains("renamed to public.r3"), "{output}");
    // No SELECT grant: the table is invisible to the user, and the message says why.
    pg.sql("CREATE TABLE secret (id int PRIMARY KEY); CREATE ROLE nobody LOGIN REPLICATION")
        .unwrap();
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"user": "nobody", "slot": "s3", "publication": "p3"})), "bindings": [binding("secret", "", 0)]}));
    let out = cap.capture();
    assert!(
        !out.ok && out.stderr.contains("cannot see it") && out.stderr.contains("grants"),
        "{}",
        out.stderr
    );
}

fn wait_with_timeout(child: &mut std::process::Child, seconds: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// An idle capture still moves the slot forward (keepalive positions are acknowledged once
/// durable), and SIGTERM ends with a checkpoint and exit 0.
#[test]
fn idle_capture_advances_the_slot_and_stops_cleanly_on_sigterm() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY)")
        .unwrap();
    let cap = Capture::new(&binary, "idle");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("quiet", "", 0)]}),
    );
    assert!(cap.capture().ok);
    let flushed = || {
        pg.sql("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'cdc_slot'").unwrap().parse::<f64>().unwrap()
    };
    let start = flushed();
    let child = cap.spawn();
    for _ in 0..20 {
        pg.sql("INSERT INTO busy DEFAULT VALUES").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        flushed() > start,
        "the slot advanced while the captured table was idle"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM exits 0");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("{\"checkpoint\""),
        "the last line is a checkpoint: {last}"
    );
}

/// TLS: `require` encrypts without verifying; `verify-full` checks the certificate against
/// the given root and the host name.
#[test]
fn tls_require_and_verify_full() {
    let Some((binary, mut pg)) = setup() else {
        return;
    };
    let dir = pg.dir().unwrap().to_path_buf();
    let certs = match testkit::tls::make(&dir, Some("postgres")) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let (key, cert, root) = (certs.key, certs.cert, certs.root);
    pg.restart_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", cert.to_str().unwrap()),
        ("ssl_key_file", key.to_str().unwrap()),
    ])
    .unwrap();
    pg.sql("CREATE TABLE s (id int PRIMARY KEY); INSERT INTO s VALUES (1)")
        .unwrap();
    for (i, tls) in [
        json!({"mode": "require"}),
        json!({"mode": "verify-full", "root_cert": root}),
    ]
    .into_iter()
    .enumerate()
    {
        let cap = Capture::new(&binary, &format!("tls{i}"));
        cap.config(&json!({"endpoint": endpoint(&pg, json!({"host": "localhost", "tls": tls, "slot": format!("tls{i}"), "publication": format!("tls{i}")})), "bindings": [binding("s", "", 0)]}));
        let out = cap.capture();
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(docs(&out.lines, 0).len(), 1);
    }
    // verify-full without the right root refuses.
    let cap = Capture::new(&binary, "tls-bad");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"host": "localhost", "tls": {"mode": "verify-full"}, "slot": "tls9", "publication": "tls9"})), "bindings": [binding("s", "", 0)]}));
    let out = cap.capture();
    assert!(!out.ok, "an unknown certificate is refused");
}

/// A transaction far larger than the memory the connector uses streams through: peak RSS
/// stays bounded while 300,000 changes of one transaction pass.
#[test]
fn a_huge_transaction_streams_with_bounded_memory() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        .unwrap();
    let cap = Capture::new(&binary, "big");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("big", "", 0)]}));
    assert!(cap.capture().ok);
    pg.sql("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g")
        .unwrap();
    let mut child = Command::new(&binary)
        .args([
            "capture",
            "--until-caught-up",
            "--log-level",
            "warn",
            "--config",
        ])
        .arg(cap.dir.join("config.json"))
        .arg("--state")
        .arg(cap.state())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("{\"binding\""))
            .count()
    });
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(rss);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(reader.join().unwrap(), 300_000, "every change arrived");
    // 300,000 documents of ~260 bytes are ~78 MB; holding the transaction would show.
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    eprintln!("huge transaction: peak RSS {} MiB", peak_kib / 1024);
}

/// Faults a running capture survives: its walsender is terminated, then the server
/// restarts. The capture retries with backoff inside the same process (its output
/// continues on the same stdout, each retry starting with its resume checkpoint), and the
/// combined output still keeps every guarantee.
#[test]
fn survives_a_killed_walsender_and_a_server_restart() {
    let Some((binary, mut pg)) = setup() else {
        return;
    };
    pg.sql("CREATE TABLE f (id int PRIMARY KEY, v bigint); INSERT INTO f SELECT g, 0 FROM generate_series(1, 300) g").unwrap();
    let cap = Capture::new(&binary, "faults");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 10}})), "bindings": [binding("f", "", 0)]}));
    let mut child = cap.spawn();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut v = 0;
    let mut write = |pg: &PgServer, n: i32| {
        for i in 0..n {
            v += 1;
            let id = 1 + (v * 7 + i) % 400;
            let _ = pg.sql(&format!(
                "INSERT INTO f VALUES ({id}, {v}) ON CONFLICT (id) DO UPDATE SET v = {v}"
            ));
            if v % 5 == 0 {
                let _ = pg.sql(&format!("DELETE FROM f WHERE id = {}", 1 + (v * 13) % 400));
            }
        }
    };
    write(&pg, 40);
    let killed = pg
        .sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication")
        .unwrap();
    assert_eq!(killed, "1", "one walsender to terminate");
    write(&pg, 40);
    // The restart must hit a running stream, not the retry's backoff: wait until the
    // connector has reconnected its walsender.
    for _ in 0..100 {
        if pg.sql("SELECT count(*) FROM pg_stat_replication").unwrap() == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    pg.restart_with(&[]).unwrap();
    write(&pg, 40);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(
        child.wait().unwrap().success(),
        "the capture survived both faults and stopped cleanly"
    );
    let lines = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let retries = stderr.matches("transient failure").count();
    assert!(retries >= 2, "both faults were felt and retried: {stderr}");
    let resumes = lines
        .iter()
        .filter(|l| l.starts_with("{\"checkpoint\""))
        .count();
    let last = cap.capture();
    assert!(last.ok, "{}", last.stderr);
    let runs = [
        RunOutput {
            lines,
            counters: vec![0],
        },
        RunOutput {
            lines: last.lines,
            counters: vec![0],
        },
    ];
    assert_precise(&pg, "f", &["id"], Some("v"), &runs);
    assert!(resumes > 2);
}

/// Keys the server classifies (a linguistic collation) against windows open at either end:
/// the query's answer for a missing bound must read as "no bound", not fail to decode
/// (the torture run found every restart panicking on one).
#[test]
fn server_classification_of_open_windows() {
    use backfill_core::key::{Hi, Key, Region, Window};
    use backfill_core::source::{BindingSpec, Discovery, KeyClassifier, TableRef};
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    pg.sql("CREATE TABLE cls (name text COLLATE \"en-x-icu\" PRIMARY KEY)")
        .unwrap();
    let endpoint: source_postgres::endpoint::Endpoint =
        serde_json::from_value(endpoint(&pg, json!({}))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut source = source_postgres::scan::PgSource::connect(&endpoint)
            .await
            .unwrap();
        source.discover().await.unwrap();
        let binding = BindingSpec {
            index: 0,
            table: TableRef {
                namespace: "public".into(),
                stream: "cls".into(),
            },
            mode: ResolvedMode::Precise,
            key: vec!["name".into()],
            ranges: 1,
        };
        let k = |s: &str| Key(vec![json!(s)]);
        // In English order apple < Banana < zebra (in bytes, Banana sorts first).
        let (apple, banana, zebra) = (k("apple"), k("Banana"), k("zebra"));
        let keys = [&apple, &banana, &zebra];
        let mut classify = async |lo, hi| {
            source
                .classify(&binding, Window { lo, hi }, &keys)
                .await
                .unwrap()
        };
        use Region::{Ahead, Done, Window as In};
        assert_eq!(classify(None, Hi::Unbounded).await, [In, In, In]);
        assert_eq!(classify(None, Hi::Key(&banana)).await, [In, In, Ahead]);
        assert_eq!(classify(Some(&apple), Hi::Unbounded).await, [Done, In, In]);
        assert_eq!(
            classify(Some(&apple), Hi::Key(&banana)).await,
            [Done, In, Ahead]
        );
    });
}

/// A column added after the connector read the catalog reaches every backfilled row: the
/// chunk sees a column the catalog does not have, the catalog is read again and the chunk
/// runs again, in place (no transient failure), never emitting a row without the column.
#[test]
fn a_column_added_before_the_first_chunk_is_in_every_backfilled_row() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE grows (id int PRIMARY KEY, v text); INSERT INTO grows SELECT g, 'v' || g FROM generate_series(1, 50) g")
        .unwrap();
    // Hold the table while the connector starts and reads the catalog; add the column.
    let mut session = testkit::servers::psql_session(&pg.url)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = session.stdin.take().unwrap();
        stdin
            .write_all(
                b"BEGIN; LOCK TABLE grows IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2);
                  ALTER TABLE grows ADD COLUMN extra int DEFAULT 7; COMMIT;\n",
            )
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cap = Capture::new(&binary, "pg-grows");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 10}})),
                        "bindings": [binding("grows", "Precise", 0)]}),
    );
    let out = cap.capture();
    assert!(session.wait().unwrap().success());
    assert!(out.ok, "{}", out.stderr);
    assert!(
        !out.stderr.contains("transient"),
        "the chunk ran again in place: {}",
        out.stderr
    );
    let rows = docs(&out.lines, 0);
    assert_eq!(rows.len(), 50);
    for d in &rows {
        assert_eq!(d["extra"], json!(7), "{d}");
    }
}

/// Terminates the connector's backend once it waits on a lock that `lock` takes, from the
/// session holding the lock (which nothing else can then block), and releases it. The
/// waiting statement must mention `waiting_on`, so the test knows what it interrupted.
fn terminate_the_waiting_backend(
    pg: &PgServer,
    lock: &str,
    waiting_on: &str,
) -> std::process::Child {
    let mut session = testkit::servers::psql_session(&pg.url)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "BEGIN; {lock};
         DO $$ DECLARE n int := 0; BEGIN
           FOR i IN 1..600 LOOP
             -- pg_stat_activity is read once per transaction unless cleared.
             PERFORM pg_stat_clear_snapshot();
             SELECT count(pg_terminate_backend(pid)) INTO n FROM pg_stat_activity
              WHERE application_name = 'source-postgres' AND wait_event_type = 'Lock'
                AND query LIKE '%{waiting_on}%';
             EXIT WHEN n > 0;
             PERFORM pg_sleep(0.05);
           END LOOP;
           IF n = 0 THEN RAISE EXCEPTION 'the connector never waited on the lock'; END IF;
         END $$;
         COMMIT;\n"
    );
    {
        use std::io::Write;
        session
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    // The lock is taken before the connector starts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    session
}

/// A backend terminated under the connector (SQLSTATE 57P01: a failover,
/// `pg_terminate_backend`) while it reads the catalog or scans a chunk is transient: the
/// capture says so, retries from its checkpoint and finishes with every row.
#[test]
fn a_backend_terminated_during_a_catalog_read_or_a_chunk_scan_is_ridden_out() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE held (id int PRIMARY KEY, v text); INSERT INTO held SELECT g, 'v' || g FROM generate_series(1, 40) g;
            CREATE TABLE beside (id int PRIMARY KEY)")
        .unwrap();
    let cap = Capture::new(&binary, "pg-terminated");
    for (counter, lock, waiting_on) in [
        // The catalog read at start (the code that reads it again mid-stream), on a fresh
        // state: `pg_collation` is read by the catalog's columns query alone.
        (
            0,
            "LOCK TABLE pg_catalog.pg_collation IN ACCESS EXCLUSIVE MODE",
            "pg_collation",
        ),
        // A chunk's scan, in a re-backfill of one binding of two (the publication and the
        // slot are kept, so nothing else the connector does waits on the table).
        (1, "LOCK TABLE held IN ACCESS EXCLUSIVE MODE", "held"),
    ] {
        cap.config(
            &json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 10}})),
                     "bindings": [binding("held", "Precise", counter), binding("beside", "", 0)]}),
        );
        let session = terminate_the_waiting_backend(&pg, lock, waiting_on);
        let out = cap.capture();
        let terminated = session.wait_with_output().unwrap();
        assert!(
            terminated.status.success(),
            "{lock}: the backend was not terminated"
        );
        assert!(out.ok, "{lock}: {}", out.stderr);
        assert!(
            out.stderr.contains("57P01") && out.stderr.contains("retrying in"),
            "{lock}: the retry is said: {}",
            out.stderr
        );
        let rows = docs(&out.lines, 0);
        let mut ids: Vec<i64> = rows.iter().map(|d| d["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "{lock}");
    }
}

/// A table never analyzed (just created and loaded; autovacuum off here, so it stays so)
/// still gets an estimate near its size, from its pages and the rows on its first pages,
/// so its progress has a percent and an ETA.
#[test]
fn a_table_never_analyzed_is_estimated_from_its_pages() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE fresh (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false); INSERT INTO fresh SELECT g, 'value ' || g FROM generate_series(1, 20000) g")
        .unwrap();
    assert_eq!(
        pg.sql("SELECT reltuples FROM pg_class WHERE relname = 'fresh'")
            .unwrap()
            .trim(),
        "-1",
        "the table was analyzed: the test would not see the fallback"
    );
    let cap = Capture::new(&binary, "pg-fresh");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 5000}})), "bindings": [binding("fresh", "", 0)]}));
    let run = cap.capture_logging("info");
    assert!(run.ok, "{}", run.stderr);
    let estimate: u64 = run
        .stderr
        .split("estimated_rows=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no estimate: {}", run.stderr));
    assert!(
        (16_000..=24_000).contains(&estimate),
        "estimated {estimate} rows of 20,000"
    );
}

/// A keyless table never analyzed (autovacuum off here, so it stays so) has no rows per
/// page for its chunks' page ranges but the guess of 32: at about 180 a page, a chunk of
/// 1,000 rows read some 5,000 and the next chunk read 4,000 of them again, 97,000 rows
/// for a table of 20,000. Its first chunk now takes the rows per page the backfill's
/// estimate counted on the table's first 32 pages (which the server reads once more), and
/// each later one what the chunk before it found.
#[test]
fn a_keyless_table_never_analyzed_reads_each_row_about_once() {
    let Some((binary, pg)) = setup() else { return };
    let rows = 20_000;
    pg.sql(&format!("CREATE TABLE loose (id int, v text) WITH (autovacuum_enabled = false); ALTER TABLE loose REPLICA IDENTITY FULL; INSERT INTO loose SELECT g, 'value ' || g FROM generate_series(1, {rows}) g"))
        .unwrap();
    let read = || -> u64 {
        pg.sql("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'loose'")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = read();
    let cap = Capture::new(&binary, "pg-loose");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 1000}})), "bindings": [binding("loose", "Without Primary Key", 0)]}));
    let run = cap.capture();
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(docs(&run.lines, 0).len(), rows, "each row once");
    // The connector's sessions report their counts as they end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut scanned = read() - before;
    while scanned < rows as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        scanned = read() - before;
    }
    eprintln!("the server read {scanned} rows to back up a table of {rows}");
    assert!(
        scanned >= rows as u64 && scanned <= rows as u64 * 7 / 5,
        "the server read {scanned} rows to back up a table of {rows}"
    );
}

/// A chunk's watermark (a logical message committed with a WAL flush) is there so the
/// stream reaches the chunk's fence. In a backfill of a table nobody writes, the stream has
/// already delivered everything up to the fence from the second chunk on, and the
/// watermark is written only for the first: the backfill of 200 chunks writes a few
/// hundred bytes of WAL, not one message and one flush a chunk (about 24 KB before).
#[test]
fn a_backfill_of_a_table_nobody_writes_flushes_no_watermark_a_chunk() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE quiet (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false); INSERT INTO quiet SELECT g, 'v' || g FROM generate_series(1, 20000) g")
        .unwrap();
    let lsn = || {
        pg.sql("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    let before = lsn();
    let cap = Capture::new(&binary, "pg-quiet");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 100}})), "bindings": [binding("quiet", "", 0)]}));
    let run = cap.capture();
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(docs(&run.lines, 0).len(), 20_000, "each row once");
    // The publication and the slot are created in the same run: a few kilobytes.
    let written = lsn() - before;
    eprintln!("a backfill of 200 chunks wrote {written} bytes of WAL");
    assert!(
        written < 5_000.0,
        "a backfill of 200 chunks wrote {written} bytes of WAL"
    );
}

/// What a person sees: at a terminal, a live bar per table with rows, percent, rate and
/// ETA, and colour unless `NO_COLOR` is set; in a file or a pipe, plain lines without a
/// colour code, a line when a backfill starts (with the estimate). `--version` names the
/// binary.
#[test]
fn a_person_sees_bars_at_a_terminal_and_plain_lines_in_a_file() {
    let Some((binary, pg)) = setup() else { return };
    let version = Command::new(&binary).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("source-postgres "), "{version}");
    pg.sql("CREATE TABLE shown (id int PRIMARY KEY, v text); INSERT INTO shown SELECT g, 'v' FROM generate_series(1, 3000) g; ANALYZE shown")
        .unwrap();
    let cap = Capture::new(&binary, "pg-shown");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 500}})), "bindings": [binding("shown", "", 0)]}));
    // A pipe: plain lines.
    let piped = cap.run(&[
        "capture",
        "--until-caught-up",
        "--state",
        cap.state().to_str().unwrap(),
    ]);
    assert!(piped.ok, "{}", piped.stderr);
    assert!(
        !piped.stderr.contains('\u{1b}'),
        "no escape codes in a pipe: {}",
        piped.stderr
    );
    assert!(
        piped.stderr.contains("backfill started") && piped.stderr.contains("estimated_rows=3000"),
        "{}",
        piped.stderr
    );
    // A terminal (a pseudo-terminal from `script`), with and without NO_COLOR.
    let Ok(_) = Command::new("script").arg("--version").output() else {
        skip("terminal output: no `script` (util-linux) to make a pseudo-terminal");
        return;
    };
    for no_color in [false, true] {
        let _ = std::fs::remove_file(cap.state());
        let typescript = cap.dir.join("typescript");
        let command = format!(
            "{} capture --until-caught-up --config {} --state {} > /dev/null",
            binary.display(),
            cap.dir.join("config.json").display(),
            cap.state().display()
        );
        let mut script = Command::new("script");
        script
            .args(["-q", "-e", "-c", &command])
            .arg(&typescript)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if no_color {
            script.env("NO_COLOR", "1");
        }
        assert!(script.status().unwrap().success());
        let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
        assert!(
            seen.contains("public.shown")
                && seen.contains("3,000/3,000 rows 100%")
                && seen.contains("rows/s"),
            "{seen}"
        );
        assert_eq!(
            seen.contains("\u{1b}[32m"),
            !no_color,
            "colour at a terminal unless NO_COLOR: {seen}"
        );
    }
}

/// `check` speaks in statements a user can paste: the missing grant with the table and
/// the role, the publication with its tables, a keyless table once (the fix, not a FAIL
/// and a warning), the TOAST caveat once for every table rather than on each.
#[test]
fn check_lines_are_statements_to_paste() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TABLE doc (id int PRIMARY KEY, body text); CREATE TABLE note (id int PRIMARY KEY, body text);
         CREATE TABLE keyless (v int);
         CREATE ROLE cdc LOGIN REPLICATION; GRANT SELECT ON doc, note, keyless TO cdc;
         DROP PUBLICATION IF EXISTS cdc_publication; REVOKE CREATE ON DATABASE postgres FROM PUBLIC",
    )
    .unwrap();
    let cap = Capture::new(&binary, "pg-check-lines");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"user": "cdc"})), "bindings": [
        binding("doc", "", 0), binding("note", "", 0), binding("keyless", "", 0), binding("gone", "", 0)]}));
    let out = cap.run(&["check"]);
    assert!(!out.ok);
    let text = out.lines.join("\n");
    let lines_about = |needle: &str| out.lines.iter().filter(|l| l.contains(needle)).count();
    assert!(
        text.contains("FAIL table public.gone: not found, or \"cdc\" cannot read it")
            && text.contains("GRANT SELECT ON \"public\".\"gone\" TO \"cdc\""),
        "{text}"
    );
    assert_eq!(lines_about("public.keyless"), 1, "{text}");
    assert!(
        text.contains("FAIL table public.keyless: no primary key")
            && text.contains("ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL"),
        "{text}"
    );
    assert_eq!(lines_about("TOAST"), 1, "{text}");
    assert!(
        text.contains("warn TOAST: 2 of the bound tables")
            && text.contains("ALTER TABLE \"public\".\"doc\" REPLICA IDENTITY FULL;")
            && text.contains("ALTER TABLE \"public\".\"note\" REPLICA IDENTITY FULL;"),
        "{text}"
    );
    assert!(
        text.contains("CREATE PUBLICATION \"cdc_publication\" FOR TABLE \"public\".\"doc\", \"public\".\"note\", \"public\".\"keyless\", \"public\".\"gone\""),
        "{text}"
    );
    assert!(
        text.contains("warn WAL retention: max_slot_wal_keep_size = -1")
            && text.contains("ALTER SYSTEM SET max_slot_wal_keep_size"),
        "an unbounded slot can fill the disk: {text}"
    );
    assert!(
        !text.contains("..."),
        "no statement is left unfinished: {text}"
    );
}

/// A mode changed in the config without raising the counter is kept, and said once at
/// start with the counter to raise.
#[test]
fn a_changed_mode_is_said_with_the_counter_to_raise() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE moded (id int PRIMARY KEY)").unwrap();
    let cap = Capture::new(&binary, "pg-moded");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("moded", "Precise", 2)]}));
    assert!(cap.capture().ok);
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("moded", "Normal", 2)]}),
    );
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("asks for mode"))
        .collect();
    assert_eq!(said.len(), 1, "{}", out.stderr);
    assert!(
        said[0].contains("binding 0 (public.moded)")
            && said[0].contains("\"Normal\"")
            && said[0].contains("keeps")
            && said[0].contains("\"backfill\": 3"),
        "{}",
        said[0]
    );
}

/// With `--acks stdin` (the `cdc` runtime's protocol, PIPELINE.md §3) the slot is told a
/// position is consumed only once the consumer has acknowledged that checkpoint, never
/// merely because the state file is durable; without it, at once. The slot's
/// `confirmed_flush_lsn` is what the server may discard log before.
#[test]
fn with_acks_on_stdin_the_slot_advances_only_as_far_as_acknowledged() {
    use std::io::{BufRead, BufReader, Write};
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE TABLE acked (id int PRIMARY KEY, v int)")
        .unwrap();
    let confirmed = |slot: &str| -> String {
        pg.sql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .unwrap()
        .trim()
        .to_string()
    };
    let lsn_of = |state: &Value| {
        state["position"]["lsn"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for acks in [false, true] {
        let slot = if acks { "acks_stdin" } else { "acks_state" };
        let cap = Capture::new(&binary, slot);
        cap.config(&json!({"endpoint": endpoint(&pg, json!({"slot": slot, "publication": slot})), "bindings": [binding("acked", "", 0)]}));
        let mut cmd = Command::new(&binary);
        cmd.args(["capture", "--log-level", "warn", "--config"])
            .arg(cap.dir.join("config.json"))
            .arg("--state")
            .arg(cap.state());
        if acks {
            cmd.args(["--acks", "stdin"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(state) = v.get("checkpoint")
                {
                    let _ = tx.send(state.clone());
                }
            }
        });
        // Wait for the slot, then write and wait for checkpoints past the writes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while confirmed(slot).is_empty() {
            assert!(std::time::Instant::now() < deadline, "no slot");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let created = confirmed(slot);
        for i in 0..20 {
            pg.sql(&format!(
                "INSERT INTO acked VALUES ({i} + {}, {i})",
                if acks { 100 } else { 0 }
            ))
            .unwrap();
        }
        let end: String = pg
            .sql("SELECT pg_current_wal_lsn()")
            .unwrap()
            .trim()
            .to_string();
        let mut last = Value::Null;
        while std::time::Instant::now() < deadline {
            let Ok(state) = rx.recv_timeout(std::time::Duration::from_secs(5)) else {
                break;
            };
            if lsn_of(&state).is_empty() {
                continue;
            }
            last = state;
            let caught_up: bool = pg
                .sql(&format!(
                    "SELECT '{}'::pg_lsn >= '{end}'::pg_lsn",
                    lsn_of(&last)
                ))
                .unwrap()
                .trim()
                == "t";
            if caught_up {
                break;
            }
        }
        assert!(!lsn_of(&last).is_empty(), "a checkpoint past the writes");
        // Give an acknowledgement time to reach the server.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let advanced = confirmed(slot) != created;
        assert_eq!(
            advanced,
            !acks,
            "acks={acks}: created at {created}, confirmed {}, checkpoint at {}",
            confirmed(slot),
            lsn_of(&last)
        );
        if acks {
            // The consumer acknowledges the checkpoint: the slot follows, exactly there.
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{}", json!({"position": last["position"]})).unwrap();
            stdin.flush().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
            // Passed on while the stream is idle, not held until its next checkpoint.
            while confirmed(slot) == created {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the acknowledgement was not passed on"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            assert_eq!(
                confirmed(slot),
                lsn_of(&last),
                "exactly as far as acknowledged"
            );
            drop(stdin);
        }
        let _ = child.kill();
        let _ = child.wait();
        pg.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .ok();
    }
}

/// A column added while the backfill runs, between two chunks: the next chunk's rows do
/// not match the catalog, so it is read again and the chunk runs again, in place. Every
/// row arrives once, the last ones with the column, and nothing fails.
#[test]
fn a_column_added_mid_backfill_is_in_the_rows_after_it() {
    use std::io::BufRead;
    let Some((binary, pg)) = setup() else { return };
    let rows = 3000;
    pg.sql(&format!("CREATE TABLE grows_mid (id int PRIMARY KEY, v text); INSERT INTO grows_mid SELECT g, 'v' || g FROM generate_series(1, {rows}) g"))
        .unwrap();
    let cap = Capture::new(&binary, "pg-grows-mid");
    cap.config(
        &json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 10}})),
                "bindings": [binding("grows_mid", "Precise", 0)]}),
    );
    let mut child = cap.spawn();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut ids, mut altered, mut last) = (std::collections::BTreeSet::new(), false, Value::Null);
    for line in stdout.lines() {
        let line: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let Some(doc) = line.get("doc") else { continue };
        if !altered {
            pg.sql("ALTER TABLE grows_mid ADD COLUMN extra int DEFAULT 7")
                .unwrap();
            altered = true;
        }
        assert!(
            ids.insert(doc["id"].as_i64().unwrap()),
            "a row twice: {doc}"
        );
        last = doc.clone();
        if ids.len() == rows {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(ids.len(), rows, "{stderr}");
    assert_eq!(
        last["extra"],
        json!(7),
        "the rows after the change carry the column: {last}"
    );
    assert!(
        !stderr.contains("transient") && !stderr.contains("error"),
        "{stderr}"
    );
}

/// The rarer types (multiranges, geometry, int2vector, pg_lsn, tsquery, arrays of enums,
/// ranges and intervals) and the extremes of dates and timestamps: backfilled and streamed,
/// each equals `to_jsonb` of the row.
#[test]
fn rarer_types_and_extremes_equal_to_jsonb_backfilled_and_streamed() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TYPE mood2 AS ENUM ('ok', 'sad');
         CREATE TABLE types2 (id bigint PRIMARY KEY, mr int4multirange, ts timestamp, tstz timestamptz, n numeric,
           fa float8[], bx box, ci circle, ln line, pg polygon, m8 macaddr8, lsn pg_lsn, tq tsquery, ch \"char\",
           nm name, iv2 int2vector, ov oidvector, j json, ea mood2[], d date, ia interval[], ra int4range[],
           bpa char(3)[], tt time[], xa xml[], ba bytea[], ua uuid[])",
    )
    .unwrap();
    let values = [
        "1, '{[1,3),[5,8)}', '10000-01-01 00:00:00', '10000-01-01 00:00:00+00', '1e-100', '{Infinity,-Infinity,NaN,1e300,-0}', '((1,2),(3,4))', '<(1,2),3>', '{1,2,3}', '((0,0),(1,1),(1,0))', '08:00:2b:01:02:03:04:05', '16/B374D848', 'fat & (rat | cat)', 'x', 'nm', '1 2 3', '4000000000 7', '{\"a\": 1, \"a\": 2,  \"b\" : [1.0, 2e3]}', '{ok,sad,NULL}', '5874897-12-31', '{\"1 day\",\"-00:00:01\"}', '{\"[1,2)\",empty}', '{\"a\",\"ab \"}', '{\"12:00:00.5\"}', '{<a/>}', '{\"\\\\x00\",NULL}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
        "2, '{}', '4713-01-01 00:00:00 BC', '294276-12-31 23:59:59.999999+00', '-0', '{}', NULL, NULL, NULL, NULL, NULL, '0/0', '', '\\\\', '', '', '', '\"\\\\u00e9\"', '{}', '4713-01-01 BC', '{}', '{}', '{}', '{}', '{}', '{}', '{}'",
    ];
    for v in values {
        pg.sql(&format!("INSERT INTO types2 VALUES ({v})")).unwrap();
    }
    let cap = Capture::new(&binary, "types2");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 1}})), "bindings": [binding("types2", "", 0)]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines, 0);
    assert_eq!(backfilled.len(), 2);
    each_equals_to_jsonb(&pg, "types2", &backfilled, "backfilled");
    pg.sql("INSERT INTO types2 SELECT id + 100, mr, ts, tstz, n, fa, bx, ci, ln, pg, m8, lsn, tq, ch, nm, iv2, ov, j, ea, d, ia, ra, bpa, tt, xa, ba, ua FROM types2")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines, 0);
    assert_eq!(streamed.len(), 2);
    each_equals_to_jsonb(&pg, "types2", &streamed, "streamed");
}

/// A generated column is left out of every document, backfilled and streamed alike (logical
/// replication does not carry it before PostgreSQL 18), and `check` says so: otherwise a
/// merged row keeps the value computed from its backfilled columns after they change.
#[test]
fn generated_columns_are_left_out_on_both_paths_and_check_says_so() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TABLE gen (id bigint PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED, t text);
         INSERT INTO gen (id, a, t) VALUES (1, 5, 'x'), (3, 1, 'z')",
    )
    .unwrap();
    let cap = Capture::new(&binary, "gen");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 1}})), "bindings": [binding("gen", "", 0)]}));
    let check = cap.run(&["check"]).lines.join("\n");
    assert!(
        check.contains("generated columns of") && check.contains("g left out"),
        "{check}"
    );
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines, 0);
    assert_eq!(backfilled.len(), 2);
    pg.sql("INSERT INTO gen (id, a, t) VALUES (2, 7, 'y'); UPDATE gen SET a = 6 WHERE id = 1")
        .unwrap();
    // A column added after the generated one: chunks and stream follow it. (Without a
    // default: one with a default reads the table again, which another test covers.)
    pg.sql("ALTER TABLE gen ADD COLUMN late int; INSERT INTO gen (id, a, t, late) VALUES (4, 2, 'w', 4)")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines, 0);
    assert_eq!(streamed.len(), 3, "{:?}", second.lines);
    for doc in backfilled.iter().chain(&streamed) {
        let id = doc["id"].as_i64().unwrap();
        let mut want = to_jsonb(&pg, "gen", id);
        want.as_object_mut().unwrap().remove("g");
        if doc.get("late").is_none() {
            want.as_object_mut().unwrap().remove("late");
        }
        if id == 1 && doc["_meta"]["op"] == "c" {
            want["a"] = json!(5);
        }
        assert_eq!(strip_meta(doc), want, "row {id}");
    }
    // A backfill after the column was added reads it too, past the generated column.
    let again = Capture::new(&binary, "gen-again");
    again.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 1}, "slot": "gen_again"})), "bindings": [binding("gen", "", 0)]}));
    let fresh = again.capture();
    assert!(fresh.ok, "{}", fresh.stderr);
    let fresh = docs(&fresh.lines, 0);
    assert_eq!(fresh.len(), 4);
    for doc in &fresh {
        let mut want = to_jsonb(&pg, "gen", doc["id"].as_i64().unwrap());
        want.as_object_mut().unwrap().remove("g");
        assert_eq!(strip_meta(doc), want);
    } // A key that includes a generated column could not key the stream's changes.
    pg.sql(
        "CREATE TABLE genkey (a int, g int GENERATED ALWAYS AS (a + 1) STORED, PRIMARY KEY (a, g))",
    )
    .unwrap();
    assert_refused(&binary, &pg, "genkey", "includes the generated column g");
}

/// A partitioned table is captured as one table: its backfill reads its partitions (a
/// chunk `FROM ONLY` the root read nothing), its partitions' changes stream as its own
/// (`publish_via_partition_root`), a row moved across partitions is a delete then an
/// insert, the capture restarts (the publication's membership lists the root), and its
/// estimate is its partitions'. A keyless one is refused with the remedy.
#[test]
fn a_partitioned_table_backfills_and_streams_as_one_table() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TABLE part (id bigint, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE part_eu PARTITION OF part FOR VALUES IN ('eu');
         CREATE TABLE part_us PARTITION OF part FOR VALUES IN ('us');
         INSERT INTO part SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 300) g;
         ANALYZE part_eu; ANALYZE part_us",
    )
    .unwrap();
    let cap = Capture::new(&binary, "part");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"advanced": {"chunk_size": 50}})), "bindings": [binding("part", "", 0)]}));
    let check = cap.run(&["check"]).lines.join("\n");
    assert!(
        check.contains("no TRUNCATE of a single partition"),
        "{check}"
    );
    let first = cap.capture_logging("info");
    assert!(first.ok, "{}", first.stderr);
    assert!(
        first.stderr.contains("estimated_rows=300"),
        "{}",
        first.stderr
    );
    let backfilled = docs(&first.lines, 0);
    assert_eq!(backfilled.len(), 300);
    pg.sql("INSERT INTO part VALUES (1000, 'us', 4); UPDATE part SET v = -1 WHERE id = 2; UPDATE part SET region = 'us' WHERE id = 4")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let ops: Vec<(i64, String, String)> = docs(&second.lines, 0)
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().unwrap(),
                d["region"].as_str().unwrap().to_string(),
                d["_meta"]["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(i64, String, String)> = [
        (1000, "us", "c"),
        (2, "eu", "u"),
        (4, "eu", "d"),
        (4, "us", "c"),
    ]
    .iter()
    .map(|(i, r, o)| (*i, (*r).to_string(), (*o).to_string()))
    .collect();
    assert_eq!(ops, want);
    // A publication made before, without publish_via_partition_root: refused when the
    // endpoint may write nothing, set otherwise.
    pg.sql("CREATE PUBLICATION leafy FOR TABLE part").unwrap();
    let leafy = |name: &str, read_only: bool| {
        let cap = Capture::new(&binary, name);
        cap.config(&json!({"endpoint": endpoint(&pg, json!({"publication": "leafy", "slot": format!("slot_{}", name.replace('-', "_")),
                                                              "advanced": {"read_only": read_only}})),
                            "bindings": [binding("part", "", 0)]}));
        cap.capture()
    };
    pg.sql("SELECT pg_create_logical_replication_slot('slot_leafy_ro', 'pgoutput')")
        .unwrap();
    let refused = leafy("leafy-ro", true);
    assert!(
        !refused.ok && refused.stderr.contains("publish_via_partition_root = true"),
        "{}",
        refused.stderr
    );
    let set = leafy("leafy-rw", false);
    assert!(set.ok, "{}", set.stderr);
    assert_eq!(
        pg.sql("SELECT pubviaroot FROM pg_publication WHERE pubname = 'leafy'")
            .unwrap()
            .trim(),
        "t"
    );
    pg.sql("CREATE TABLE loose (a int, b text) PARTITION BY LIST (b); CREATE TABLE loose_x PARTITION OF loose FOR VALUES IN ('x')")
        .unwrap();
    assert_refused(&binary, &pg, "loose", "add a primary key");
}

/// A publication that leaves out kinds of change, rows or columns of a bound table (the
/// backfill reads it whole) is refused by `check` and `capture` with the statement that
/// mends it; mended, the capture runs.
#[test]
fn a_publication_that_filters_changes_is_refused_with_the_remedy() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql(
        "CREATE TABLE pf (id int PRIMARY KEY, v int, secret text); INSERT INTO pf VALUES (1, 1, 's');
         CREATE PUBLICATION only_inserts FOR TABLE pf WITH (publish = 'insert');
         CREATE PUBLICATION some_rows FOR TABLE pf WHERE (v > 0);
         CREATE PUBLICATION some_columns FOR TABLE pf (id, v)",
    )
    .unwrap();
    for (publication, says) in [
        (
            "only_inserts",
            "publish = 'insert, update, delete, truncate'",
        ),
        ("some_rows", "some rows (a WHERE clause)"),
        ("some_columns", "some columns"),
    ] {
        let cap = Capture::new(&binary, &format!("pf-{publication}"));
        cap.config(&json!({"endpoint": endpoint(&pg, json!({"publication": publication, "slot": format!("slot_{publication}")})),
                            "bindings": [binding("pf", "", 0)]}));
        let check = cap.run(&["check"]);
        let report = check.lines.join("\n");
        assert!(
            !check.ok && report.contains(says),
            "{publication}: {report}"
        );
        let run = cap.capture();
        assert!(
            !run.ok && run.stderr.contains(says),
            "{publication}: {}",
            run.stderr
        );
    }
    pg.sql("ALTER PUBLICATION some_rows SET TABLE pf").unwrap();
    let cap = Capture::new(&binary, "pf-mended");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"publication": "some_rows", "slot": "slot_mended"})),
                        "bindings": [binding("pf", "", 0)]}));
    let run = cap.capture();
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(docs(&run.lines, 0).len(), 1);
}

/// An UNLOGGED table's changes never reach the WAL: `check` fails it and the capture
/// refuses it, each with the `ALTER TABLE ... SET LOGGED` to run (before, `check` passed
/// and the capture died on the server's "cannot add relation to publication"). A table
/// with REPLICA IDENTITY NOTHING is refused the same way: published, it would make the
/// application's updates fail.
#[test]
fn an_unlogged_table_is_refused_with_the_remedy() {
    let Some((binary, pg)) = setup() else { return };
    pg.sql("CREATE UNLOGGED TABLE ul (id int PRIMARY KEY, v int); INSERT INTO ul VALUES (1, 1)")
        .unwrap();
    let cap = Capture::new(&binary, "ul");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({})), "bindings": [binding("ul", "", 0)]}));
    let check = cap.run(&["check"]);
    let remedy = "ALTER TABLE \"public\".\"ul\" SET LOGGED";
    assert!(
        !check.ok && check.lines.join("\n").contains(remedy),
        "{:?}",
        check.lines
    );
    let run = cap.capture();
    assert!(!run.ok && run.stderr.contains(remedy), "{}", run.stderr);
    pg.sql("ALTER TABLE ul SET LOGGED").unwrap();
    let run = cap.capture();
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(docs(&run.lines, 0).len(), 1);
    // Published with REPLICA IDENTITY NOTHING, the table would refuse the application's
    // updates: refused before anything is created.
    pg.sql("CREATE TABLE nothing (id int PRIMARY KEY, v int); ALTER TABLE nothing REPLICA IDENTITY NOTHING; INSERT INTO nothing VALUES (1, 1)")
        .unwrap();
    let cap = Capture::new(&binary, "nothing");
    cap.config(&json!({"endpoint": endpoint(&pg, json!({"publication": "nothing_pub", "slot": "nothing_slot"})), "bindings": [binding("nothing", "", 0)]}));
    let remedy = "ALTER TABLE \"public\".\"nothing\" REPLICA IDENTITY DEFAULT";
    let check = cap.run(&["check"]);
    assert!(
        !check.ok && check.lines.join("\n").contains(remedy),
        "{:?}",
        check.lines
    );
    let run = cap.capture();
    assert!(!run.ok && run.stderr.contains(remedy), "{}", run.stderr);
    pg.sql("UPDATE nothing SET v = 2").unwrap();
}
