//! The MySQL family suite: `source-mysql` driven as a user would, against throwaway
//! MariaDB and MySQL servers. Most scenarios run against both (`mariadb::` and
//! `mysql::`); the rest use what only MariaDB has.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use testkit::servers::Throwaway as _;

use serde_json::{Value, json};
use std::process::Command;

use testkit::live::{Capture, Outcome};
use testkit::servers::MariaDbServer;

mod replica;

fn setup() -> Option<(PathBuf, MariaDbServer)> {
    Some((
        testkit::live::binary_or_skip("source-mysql")?,
        MariaDbServer::start_or_skip()?,
    ))
}

fn setup_mysql() -> Option<(PathBuf, MariaDbServer)> {
    Some((
        testkit::live::binary_or_skip("source-mysql")?,
        MariaDbServer::start_mysql_or_skip()?,
    ))
}

/// The scenarios that hold for both servers, run against each: `mariadb::<name>` and
/// `mysql::<name>`.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod mariadb {
            $(#[test]
            fn $name() {
                if let Some(s) = super::setup() {
                    super::$name(s);
                }
            })*
        }
        mod mysql {
            $(#[test]
            fn $name() {
                if let Some(s) = super::setup_mysql() {
                    super::$name(s);
                }
            })*
        }
    };
}

on_both_servers!(
    values_render_the_same_backfilled_and_streamed,
    generated_invisible_and_zero_values_render_the_same_on_both_paths,
    a_table_dropped_mid_capture_stops_clearly,
    purged_binlog_stops_with_the_remedy,
    chunks_stop_at_their_memory_bound_and_lose_nothing,
    collated_text_key_is_precise_under_writes_and_kills,
    a_chunk_read_in_key_ranges_is_precise_and_a_gap_between_them_is_caught,
    live_scenario_in_key_ranges,
    check_counts_the_connections_the_ranges_need,
    a_composite_key_backfill_reads_each_row_about_once,
    chunks_cut_at_keys_of_every_kind_lose_and_repeat_nothing,
    a_keyless_backfill_killed_and_resumed_reads_each_row_once,
    alter_table_mid_stream_is_followed,
    survives_a_killed_dump_thread_and_a_server_restart,
    bad_input_fails_with_one_clear_line,
    resumes_by_gtid_on_a_promoted_replica,
    keys_are_unique_indexes_whose_columns_are_all_not_null,
    xa_transactions_deliver_at_their_commit_and_never_when_rolled_back,
    savepoints_stay_inside_their_transaction,
    a_truncate_is_delivered_as_a_truncate,
    a_renamed_table_stops_and_a_swapped_one_is_followed,
    a_write_logged_as_a_statement_stops_the_capture,
    a_large_json_document_streams_as_it_backfills,
);

fn capture(binary: &std::path::Path, dir: &std::path::Path) -> Outcome {
    Capture::at(binary, dir).capture()
}

fn docs(lines: &[String]) -> Vec<Value> {
    testkit::live::docs(lines, 0)
}

/// Each document's `id` and `v`, in order.
fn ids_and_values(lines: &[String]) -> Vec<(i64, i64)> {
    docs(lines)
        .iter()
        .map(|d| (d["id"].as_i64().unwrap(), d["v"].as_i64().unwrap()))
        .collect()
}

/// A capture of `test.<table>` (made by `ddl`), run once (its backfill).
fn backfilled(binary: &std::path::Path, db: &MariaDbServer, ddl: &str, table: &str) -> Capture {
    db.sql(ddl).unwrap();
    let cap = Capture::new(binary, &format!("{table}-{}", db.port));
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": table}, "target": table}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    cap
}

/// The checker's oracle: a table's key and `v` columns as the server has them now.
struct Table<'a>(&'a MariaDbServer, &'a str, &'static str);

impl testkit::checker::Oracle for Table<'_> {
    fn final_rows(&self, _: usize) -> Vec<testkit::checker::Row> {
        let Self(db, table, key) = self;
        db.sql(&format!(
            "SELECT JSON_OBJECT('{key}', {key}, 'v', v) FROM {table}"
        ))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }
}

/// Each streamed document equals its backfilled one but for the key and `_meta`.
fn same_but_id(backfilled: &[Value], streamed: &[Value]) {
    for (b, s) in backfilled.iter().zip(streamed) {
        assert_eq!(
            without(s, &["id", "_meta"]),
            without(b, &["id", "_meta"]),
            "streamed and backfilled differ"
        );
    }
}

fn without(doc: &Value, fields: &[&str]) -> Value {
    let mut d = doc.clone();
    for f in fields {
        d.as_object_mut().unwrap().remove(*f);
    }
    d
}

/// The key `discover` proposes is the first unique index (PRIMARY first) whose columns
/// are all NOT NULL: an index with one nullable column is passed over whole, never read
/// as the narrower index of its other columns (which need not be unique).
fn keys_are_unique_indexes_whose_columns_are_all_not_null((binary, db): (PathBuf, MariaDbServer)) {
    db.sql(
        "CREATE TABLE test.k_second (a INT NOT NULL, b INT NULL, c INT NOT NULL, UNIQUE KEY ab (a, b), UNIQUE KEY c (c));
         CREATE TABLE test.k_none (a INT NOT NULL, b INT NULL, UNIQUE KEY ab (a, b));
         CREATE TABLE test.k_primary (x INT NOT NULL, y INT NOT NULL, z INT NOT NULL, UNIQUE KEY a (z), PRIMARY KEY (y, x));",
    )
    .unwrap();
    let cap = Capture::new(&binary, "keys");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"}, "bindings": []}));
    let out = cap.run(&["discover", "--json"]);
    let d: Value = serde_json::from_str(&out.lines.join("\n")).unwrap();
    let key = |table: &str| {
        d["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["resource"]["stream"] == table)
            .map(|b| b["key"].clone())
            .unwrap_or_else(|| panic!("{table} not discovered: {d}"))
    };
    assert_eq!(key("k_second"), json!(["c"]), "{d}");
    assert_eq!(key("k_none"), json!([]), "{d}");
    assert_eq!(key("k_primary"), json!(["y", "x"]), "{d}");
}

/// Every type renders the same backfilled (binary protocol) and streamed (binlog), and as
/// DESIGN.md §5 spells it.
fn values_render_the_same_backfilled_and_streamed((binary, db): (PathBuf, MariaDbServer)) {
    db.sql(
        "CREATE TABLE test.v (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, mu MEDIUMINT UNSIGNED,
           bi BIGINT, bu BIGINT UNSIGNED, d DECIMAL(10,2),
           f FLOAT, db DOUBLE, b1 TINYINT(1), bt BIT(5), y YEAR, dt DATE, dtm DATETIME(3), ts TIMESTAMP(6) NULL,
           tm TIME(3), t1 TIME(1), t2 TIME(2), t6 TIME(6), c CHAR(3), vc VARCHAR(20), tx TEXT, l1 VARCHAR(10) CHARACTER SET latin1,
           l2 VARCHAR(20) CHARACTER SET latin1, u16 VARCHAR(10) CHARACTER SET utf16, u32 VARCHAR(10) CHARACTER SET utf32,
           u2 CHAR(4) CHARACTER SET ucs2, gb VARCHAR(10) CHARACTER SET gbk, cy VARCHAR(10) CHARACTER SET cp1251, sj VARCHAR(10) CHARACTER SET sjis, bn BINARY(3),
           vb VARBINARY(5), bl BLOB, e ENUM('a','b c'), st SET('x','y','z'), j JSON, j2 JSON);
         SET NAMES utf8mb4; SET SESSION sql_mode = '';
         INSERT INTO test.v VALUES
          (1, -128, 255, -32768, -8388608, 16777215, -9223372036854775808, 18446744073709551615, 1.5, 0.1, 2.5e-300, 1, b'10101', 2024, '2020-02-29', '2020-01-02 03:04:05.678',
           '2020-01-02 03:04:05.123456', '-26:03:04.5', '-00:00:00.5', '-838:59:58.99', '-00:00:01.000001', 'ab', 'héllo', 'long text', 'café', '€ “q” – … ™', 'añ🙂', 'añ🙂', 'añ', '中文', 'Привет', '日本', 'ab', 'x\\0y', 'blob', 'b c', 'x,z',
           '{\"a\": [1, 2.5, null], \"b\": \"s\"}',
           JSON_OBJECT('d', CAST(1.50 AS DECIMAL(4,2)), 't', CAST('2020-01-02 03:04:05.5' AS DATETIME(1)), 'dt', CAST('2020-01-02' AS DATE), 'tm', CAST('-01:02:03.25' AS TIME(2)), 'u', 18446744073709551615, 'n', -9223372036854775808, 'f', 0.1e0, 'big', 1e300, 'esc', 'é\"\\\\ \t', 'emoji', '🙂', 'nested', JSON_ARRAY(JSON_OBJECT(), JSON_ARRAY(), true, false, NULL),
             'doubles', JSON_ARRAY(1e20, 1e15, 1e16, 1.5e-7, 1e-4, 1e-5, 1e-14, 1e-15, 1.2345678901234568e20, 1234567890123456.7e0, -0.0e0, 5e-324, 1.7976931348623157e308, 1e2, 12345.678e0, -2.5e-300, 1e14, 1.5e-16, 1e-16, 1234567890123456e0, 123456789012345.6e0, 9007199254740993e0, -1e-15, 3e-5))),
          (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '0000-00-00', '0000-00-00 00:00:00', NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL)",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("maria-values-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A keyless twin: its backfill reads through another path (one snapshot for the whole
    // table), which must render every type as the keyed chunks do.
    db.sql("SET SESSION sql_mode = ''; CREATE TABLE test.vk LIKE test.v; ALTER TABLE test.vk DROP PRIMARY KEY; INSERT INTO test.vk SELECT * FROM test.v")
        .unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 1}},
                        "bindings": [{"resource": {"namespace": "test", "stream": "v"}, "target": "v"},
                                     {"resource": {"namespace": "test", "stream": "vk"}, "target": "vk"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let first = capture(&binary, &dir);
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines);
    assert_eq!(backfilled.len(), 2);
    let by_id = |mut d: Vec<Value>| {
        d.sort_by_key(|d| d["id"].as_i64());
        d
    };
    let keyless = by_id(testkit::live::docs(&first.lines, 1));
    assert_eq!(keyless.len(), 2, "{:?}", first.lines);
    for (k, b) in keyless.iter().zip(&backfilled) {
        assert_eq!(
            without(k, &["_meta"]),
            without(b, &["_meta"]),
            "keyless backfill differs"
        );
    }
    let row1 = &backfilled[0];
    assert_eq!(row1["d"].to_string(), "1.50");
    assert_eq!(row1["bu"].to_string(), "18446744073709551615");
    assert_eq!(row1["si"], json!(-32768));
    assert_eq!(
        row1["mi"],
        json!(-8388608),
        "a signed MEDIUMINT keeps its sign"
    );
    assert_eq!(row1["mu"], json!(16777215));
    assert_eq!(row1["bi"], json!(i64::MIN));
    assert_eq!(row1["f"].to_string(), "0.1");
    assert_eq!(row1["bt"], json!(21));
    assert_eq!(row1["y"], json!(2024));
    assert_eq!(row1["dtm"], json!("2020-01-02T03:04:05.678"));
    assert_eq!(row1["ts"], json!("2020-01-02T03:04:05.123456Z"));
    assert_eq!(row1["tm"], json!("-26:03:04.500"));
    // Negative times with a fraction below TIME(3): their binlog form stores the
    // fraction as a complement (`rows::time2`).
    assert_eq!(row1["t1"], json!("-00:00:00.5"));
    assert_eq!(row1["t2"], json!("-838:59:58.99"));
    assert_eq!(row1["t6"], json!("-00:00:01.000001"));
    assert_eq!(row1["l1"], json!("café"));
    // Binlog text arrives in the column's charset; MySQL's latin1 is windows-1252.
    assert_eq!(row1["l2"], json!("€ “q” – … ™"));
    assert_eq!(row1["u16"], json!("añ🙂"));
    assert_eq!(row1["u32"], json!("añ🙂"));
    assert_eq!(row1["u2"], json!("añ"));
    assert_eq!(row1["gb"], json!("中文"));
    assert_eq!(row1["cy"], json!("Привет"));
    assert_eq!(row1["sj"], json!("日本"));
    assert_eq!(row1["bl"], json!("YmxvYg=="));
    assert_eq!(row1["e"], json!("b c"));
    assert_eq!(row1["st"], json!("x,z"));
    assert_eq!(row1["j"], json!({"a": [1, 2.5, null], "b": "s"}));
    assert_eq!(backfilled[1]["dt"], Value::Null, "zero dates are null");
    // The same rows again, streamed.
    db.sql("SET SESSION sql_mode = ''; INSERT INTO test.v SELECT id + 100, ti, tu, si, mi, mu, bi, bu, d, f, db, b1, bt, y, dt, dtm, ts, tm, t1, t2, t6, c, vc, tx, l1, l2, u16, u32, u2, gb, cy, sj, bn, vb, bl, e, st, j, j2 FROM test.v").unwrap();
    db.sql("SET SESSION sql_mode = ''; INSERT INTO test.vk SELECT id + 100, ti, tu, si, mi, mu, bi, bu, d, f, db, b1, bt, y, dt, dtm, ts, tm, t1, t2, t6, c, vc, tx, l1, l2, u16, u32, u2, gb, cy, sj, bn, vb, bl, e, st, j, j2 FROM test.vk WHERE id < 100").unwrap();
    let second = capture(&binary, &dir);
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines);
    assert_eq!(streamed.len(), 2, "{:?}", second.lines);
    let keyless_streamed = by_id(testkit::live::docs(&second.lines, 1));
    assert_eq!(keyless_streamed.len(), 2, "{:?}", second.lines);
    same_but_id(&backfilled, &keyless_streamed);
    assert!(
        streamed
            .iter()
            .all(|s| s["_meta"]["source"]["pos"].is_array())
    );
    same_but_id(&backfilled, &streamed);
    // MySQL's binary JSON holds SQL-typed values (DECIMAL, dates, times) and doubles; a
    // streamed document prints them as the server prints the backfilled one, in the
    // same member order.
    assert_eq!(
        streamed[0]["j2"].to_string(),
        backfilled[0]["j2"].to_string()
    );
    // A charset the stream does not decode: `check` warns with the remedy, ASCII streams,
    // and another byte stops the stream with the column named instead of guessing.
    db.sql("CREATE TABLE test.d8 (id INT PRIMARY KEY, t VARCHAR(10) CHARACTER SET dec8)")
        .unwrap();
    let cap = Capture::new(&binary, &format!("values-d8-{}", db.port));
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "d8"}, "target": "d8"}]}));
    let check = cap.run(&["check"]);
    let report = check.lines.join("\n");
    assert!(
        report.contains("t (dec8)") && report.contains("CONVERT TO CHARACTER SET utf8mb4"),
        "{report}"
    );
    assert!(cap.capture().ok);
    db.sql("INSERT INTO test.d8 VALUES (1, 'plain')").unwrap();
    db.sql("SET NAMES utf8mb4; INSERT INTO test.d8 VALUES (2, 'é')")
        .unwrap();
    let out = cap.capture();
    assert_eq!(
        docs(&out.lines).first().map(|d| d["t"].clone()),
        Some(json!("plain"))
    );
    assert!(!out.ok && out.stderr.contains("dec8"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// MariaDB's UUID, INET4 and INET6 types, GEOMETRY (base64) and 4-byte UTF-8 render as
/// DESIGN.md §5 says, and the same backfilled and streamed (the binlog carries the UUID and
/// INET types in binary form).
#[test]
fn uuid_geometry_and_emoji_render_the_same_on_both_paths() {
    let Some((binary, db)) = setup() else { return };
    db.sql(
        "CREATE TABLE test.g (id INT PRIMARY KEY, u UUID, g GEOMETRY, e VARCHAR(20) CHARACTER SET utf8mb4, t TEXT CHARACTER SET utf8mb4,
                              i4 INET4, i6 INET6, i6m INET6);
         SET NAMES utf8mb4;
         INSERT INTO test.g VALUES (1, '123e4567-e89b-12d3-a456-426614174000', ST_GeomFromText('POINT(1 2)'), 'héllo 🙂', '𝄞 clef',
                                    '192.168.0.1', '2001:db8::ff00:42:8329', '::ffff:10.0.0.1'),
                                   (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                                   (3, '6ccd780c-baba-1026-9564-5b8c656024db', NULL, '', '', '0.0.0.0', '::', '::1')",
    )
    .unwrap();
    let cap = Capture::new(&binary, "maria-uuid");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "g"}, "target": "g"}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines);
    assert_eq!(backfilled.len(), 3);
    assert_eq!(
        backfilled[0]["u"],
        json!("123e4567-e89b-12d3-a456-426614174000")
    );
    assert_eq!(backfilled[0]["i4"], json!("192.168.0.1"));
    assert_eq!(backfilled[0]["i6"], json!("2001:db8::ff00:42:8329"));
    assert_eq!(backfilled[0]["e"], json!("héllo 🙂"));
    assert_eq!(backfilled[0]["t"], json!("𝄞 clef"));
    // GEOMETRY: the stored value (4-byte SRID, then the WKB), base64.
    let stored: String = db
        .sql("SELECT TO_BASE64(g) FROM test.g WHERE id = 1")
        .unwrap();
    assert_eq!(backfilled[0]["g"], json!(stored));
    db.sql("SET NAMES utf8mb4; INSERT INTO test.g SELECT id + 100, u, g, e, t, i4, i6, i6m FROM test.g").unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines);
    assert_eq!(streamed.len(), 3, "{:?}", second.lines);
    same_but_id(&backfilled, &streamed);
}

/// A bound table dropped under a running capture stops it with one clear line and a
/// non-zero exit; the state file still holds the last good checkpoint.
fn a_table_dropped_mid_capture_stops_clearly((binary, db): (PathBuf, MariaDbServer)) {
    db.sql(
        "CREATE TABLE test.d (id INT PRIMARY KEY, v INT); INSERT INTO test.d VALUES (1, 1), (2, 2)",
    )
    .unwrap();
    let cap = Capture::new(&binary, "maria-drop");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "d"}, "target": "d"}]}));
    assert!(cap.capture().ok);
    let before = std::fs::read_to_string(cap.state()).unwrap();
    let mut child = cap.spawn();
    std::thread::sleep(std::time::Duration::from_millis(500));
    db.sql("INSERT INTO test.d VALUES (3, 3); DROP TABLE test.d")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the capture kept running after its table was dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let error = testkit::live::the_error_line(&stderr);
    assert!(
        error.contains("test.d") && error.contains("dropped"),
        "{}",
        error
    );
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cap.state()).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        after["bindings"], before["bindings"],
        "the state file is intact"
    );
}

/// TLS: `require` encrypts without verifying; `verify-full` checks the certificate against
/// the given root and the host name, and refuses a certificate it cannot verify.
#[test]
fn tls_require_and_verify_full() {
    let Some((binary, mut db)) = setup() else {
        return;
    };
    let Some(dir) = db.dir().map(std::path::Path::to_path_buf) else {
        return testkit::servers::skip("TLS needs a throwaway server to restart with certificates");
    };
    let certs = match testkit::tls::make(&dir, Some("mysql")) {
        Ok(c) => c,
        Err(why) => return testkit::servers::skip(&why),
    };
    let arg = |k: &str, p: &std::path::Path| format!("--{k}={}", p.display());
    db.restart_with(&[
        &arg("ssl-cert", &certs.cert),
        &arg("ssl-key", &certs.key),
        &arg("ssl-ca", &certs.root),
    ])
    .unwrap();
    assert_eq!(
        db.sql("SELECT @@have_ssl").unwrap(),
        "YES",
        "the server has TLS on"
    );
    db.sql("CREATE TABLE test.s (id INT PRIMARY KEY); INSERT INTO test.s VALUES (1)")
        .unwrap();
    for (i, tls) in [
        json!({"mode": "require"}),
        json!({"mode": "verify-full", "root_cert": certs.root}),
        // The default, `prefer`, takes TLS where the server offers it.
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let cap = Capture::new(&binary, &format!("maria-tls{i}"));
        cap.config(&json!({"endpoint": {"host": "localhost", "port": db.port, "user": "root", "tls": tls},
                            "bindings": [{"resource": {"namespace": "test", "stream": "s"}, "target": "s"}]}));
        let out = cap.capture();
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(docs(&out.lines).len(), 1);
    }
    let cap = Capture::new(&binary, "maria-tls-bad");
    cap.config(&json!({"endpoint": {"host": "localhost", "port": db.port, "user": "root", "tls": {"mode": "verify-full"}},
                        "bindings": [{"resource": {"namespace": "test", "stream": "s"}, "target": "s"}]}));
    let out = cap.run(&["check"]);
    assert!(!out.ok, "an unknown certificate is refused");
    let said = format!("{}{}", out.lines.join("\n"), out.stderr).to_lowercase();
    assert!(said.contains("certificate"), "{said}");
}

/// A compressed binlog (`log_bin_compress=ON`) is refused with the setting named, by
/// `check` and by the stream, never skipped: its rows events would be lost.
#[test]
fn compressed_binlog_is_refused_not_skipped() {
    let Some((binary, db)) = setup() else { return };
    db.sql("CREATE TABLE test.z (id INT PRIMARY KEY, b TEXT)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("maria-compress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "z"}, "target": "z"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert!(capture(&binary, &dir).ok);
    let state = std::fs::read(dir.join("state.json")).unwrap();
    db.sql("SET GLOBAL log_bin_compress = ON; SET GLOBAL log_bin_compress_min_len = 10")
        .unwrap();
    // A new session sees the global setting.
    db.sql(&format!(
        "INSERT INTO test.z VALUES (1, '{}')",
        "x".repeat(500)
    ))
    .unwrap();
    let check = Capture::at(&binary, &dir).run(&["check"]);
    let report = format!("{}{}", check.lines.join("\n"), check.stderr);
    // The capture's preflight refuses the setting too.
    let preflight = capture(&binary, &dir);
    // Turned off again, the preflight passes: the compressed event already written must
    // still be refused by the stream.
    db.sql("SET GLOBAL log_bin_compress = OFF").unwrap();
    let out = capture(&binary, &dir);
    assert!(!check.ok, "{report}");
    assert!(report.contains("FAIL log_bin_compress: is ON"), "{report}");
    assert!(
        testkit::live::the_error_line(&preflight.stderr).contains("FAIL log_bin_compress: is ON"),
        "{}",
        preflight.stderr
    );
    assert!(!out.ok, "{:?}", out.lines);
    let line = out
        .stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("compressed binlog event") && line.contains("log_bin_compress = OFF"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A purged binlog stops the capture with the remedy named.
fn purged_binlog_stops_with_the_remedy((binary, db): (PathBuf, MariaDbServer)) {
    db.sql("CREATE TABLE test.p (id INT PRIMARY KEY); INSERT INTO test.p VALUES (1)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("maria-purge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "p"}, "target": "p"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert!(capture(&binary, &dir).ok);
    // MariaDB purges a file only once InnoDB's binlog checkpoint has passed it.
    let purge_to = |file: &str, gone: &str| {
        for _ in 0..100 {
            db.sql(&format!("FLUSH ENGINE LOGS; PURGE BINARY LOGS TO '{file}'"))
                .unwrap();
            if !db.sql("SHOW BINARY LOGS").unwrap().contains(gone) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Files that hold nothing undelivered: the state's file is gone, but its GTID state
    // still names a point the server has, so the capture resumes (by GTID) and goes on.
    db.sql("FLUSH BINARY LOGS; FLUSH BINARY LOGS; INSERT INTO test.p VALUES (2)")
        .unwrap();
    purge_to("binlog.000003", "binlog.000001");
    let out = capture(&binary, &dir);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        docs(&out.lines)
            .iter()
            .map(|d| d["id"].clone())
            .collect::<Vec<_>>(),
        [json!(2)],
        "{:?}",
        out.lines
    );
    // A file that holds an undelivered transaction: lost, and said so.
    db.sql("INSERT INTO test.p VALUES (3); FLUSH BINARY LOGS; FLUSH BINARY LOGS; INSERT INTO test.p VALUES (4)")
        .unwrap();
    purge_to("binlog.000005", "binlog.000003");
    let logs = db.sql("SHOW BINARY LOGS").unwrap();
    let out = capture(&binary, &dir);
    assert!(
        !out.ok,
        "logs: {logs}\nstate: {}\n{:?}",
        std::fs::read_to_string(dir.join("state.json")).unwrap_or_default(),
        out.lines
    );
    let line = out
        .stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("purged") && line.contains("Raise `backfill` for every binding"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Failover: the capture moves to a promoted replica, whose binlog began later (other file
/// names, other offsets), and resumes there by GTID. Nothing is lost or repeated across
/// the move, and `pos` keeps increasing although the replica's file numbers are lower.
fn resumes_by_gtid_on_a_promoted_replica((binary, primary): (PathBuf, MariaDbServer)) {
    use backfill_core::mode::ResolvedMode;
    use testkit::checker::{self, BindingExpect, RunOutput};
    let replica = match primary.start_replica() {
        Ok(replica) => replica,
        Err(e) => return testkit::servers::skip(&format!("a replica: {e}")),
    };
    // Each flavor's spelling of: promote.
    let promote = if primary.is_mysql() {
        "STOP REPLICA; RESET REPLICA ALL"
    } else {
        "STOP SLAVE; RESET SLAVE ALL"
    };
    let mut v = 0;
    let mut write = |db: &MariaDbServer, n: i32| {
        for _ in 0..n {
            v += 1;
            let id = 1 + (v * 7) % 120;
            db.sql(&format!(
                "INSERT INTO test.g VALUES ({id}, {v}) ON DUPLICATE KEY UPDATE v = {v}"
            ))
            .unwrap();
            if v % 4 == 0 {
                db.sql(&format!(
                    "DELETE FROM test.g WHERE id = {}",
                    1 + (v * 13) % 120
                ))
                .unwrap();
            }
        }
    };
    primary
        .sql("CREATE TABLE test.g (id INT PRIMARY KEY, v BIGINT)")
        .unwrap();
    write(&primary, 60);
    // The primary's file numbers run ahead of the replica's.
    primary
        .sql("FLUSH BINARY LOGS; FLUSH BINARY LOGS; FLUSH BINARY LOGS")
        .unwrap();
    let cap = Capture::new(&binary, "maria-failover");
    let config = |port: u16| {
        json!({"endpoint": {"host": "127.0.0.1", "port": port, "user": "root", "advanced": {"chunk_size": 10}},
               "bindings": [{"resource": {"namespace": "test", "stream": "g", "mode": "Precise"}, "target": "g"}]})
    };
    cap.config(&config(primary.port));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    write(&primary, 40);
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let on_primary: Value =
        serde_json::from_str(&std::fs::read_to_string(cap.state()).unwrap()).unwrap();
    // Written on the primary, delivered only through the replica.
    write(&primary, 40);
    replica.await_replay_of(&primary).unwrap();
    drop(primary);
    replica.sql(promote).unwrap();
    write(&replica, 40);
    cap.config(&config(replica.port));
    let third = cap.capture();
    assert!(third.ok, "{}", third.stderr);
    let on_replica: Value =
        serde_json::from_str(&std::fs::read_to_string(cap.state()).unwrap()).unwrap();
    assert_ne!(
        on_primary["position"]["file"], on_replica["position"]["file"],
        "the replica's binlog is another file: {on_primary} / {on_replica}"
    );
    assert_eq!(on_replica["position"]["resume_by"], "gtid", "{on_replica}");
    let file = on_replica["position"]["file"].as_str().unwrap();
    assert!(
        file.strip_prefix("binlog.")
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit())),
        "the file the server chose is named exactly (its rotate's checksum is not in it): {file:?}"
    );
    assert!(
        on_replica["position"]["file_base"].as_u64() > Some(0),
        "the replica's files are numbered after the primary's: {on_replica}"
    );
    assert!(
        docs(&third.lines).len() >= 80,
        "the replica delivered what the primary wrote after the last checkpoint, then its own: {:?}",
        third.lines
    );
    let runs: Vec<RunOutput> = [first, second, third]
        .into_iter()
        .map(|o| RunOutput {
            lines: o.lines,
            counters: vec![0],
        })
        .collect();
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: vec!["id".into()],
        table: "test.g".into(),
        version_column: Some("v".into()),
    }];
    let violations = checker::check(&expect, &runs, &Table(&replica, "test.g", "id"));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Chunks stop at their memory bound (12 MiB estimated) before their row count: 40 rows
/// of 1 MiB take several chunks although 10,000 rows are allowed, and every row arrives
/// exactly once.
fn chunks_stop_at_their_memory_bound_and_lose_nothing((binary, db): (PathBuf, MariaDbServer)) {
    db.sql(
        "CREATE TABLE test.wide (id INT PRIMARY KEY, body LONGTEXT);
         INSERT INTO test.wide SELECT seq, REPEAT(CHAR(65 + seq % 26), 1048576) FROM (WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 40) SELECT seq FROM s) s",
    )
    .unwrap();
    let cap = Capture::new(&binary, "maria-wide");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                       "bindings": [{"resource": {"namespace": "test", "stream": "wide", "mode": "Precise"}, "target": "wide"}]}));
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let ids: Vec<i64> = docs(&out.lines)
        .iter()
        .map(|d| {
            assert_eq!(d["body"].as_str().map(str::len), Some(1_048_576));
            d["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    let mid_backfill = out.lines.iter().any(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["checkpoint"]["bindings"]["test.wide"]["phase"] == "backfilling")
    });
    assert!(
        mid_backfill,
        "the first chunk stopped short of the table: {:?}",
        out.lines
            .iter()
            .filter(|l| l.starts_with("{\"checkpoint\""))
            .collect::<Vec<_>>()
    );
}

/// A `capture` of the config in `dir` SIGKILLed after `ms` milliseconds.
fn killed_run(
    binary: &std::path::Path,
    dir: &std::path::Path,
    ms: u64,
) -> testkit::checker::RunOutput {
    let lines = testkit::live::capture(
        binary,
        &dir.join("config.json"),
        &dir.join("state.json"),
        false,
        Some(std::time::Duration::from_millis(ms)),
    );
    testkit::checker::RunOutput {
        lines,
        counters: vec![0],
    }
}

/// A `capture --until-caught-up` of the config in `dir`, which must succeed.
fn caught_up_run(binary: &std::path::Path, dir: &std::path::Path) -> testkit::checker::RunOutput {
    let last = capture(binary, dir);
    assert!(last.ok, "{}", last.stderr);
    testkit::checker::RunOutput {
        lines: last.lines,
        counters: vec![0],
    }
}

/// A case- and accent-insensitive text key gets Precise (the server classifies keys in the
/// column's collation) and keeps its guarantees under writes and SIGKILLs.
fn collated_text_key_is_precise_under_writes_and_kills((binary, db): (PathBuf, MariaDbServer)) {
    let violations = collated_violations(&binary, &db, "names", (2, 1));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// A table keyed by collated text (utf8mb4_unicode_ci: an order the client cannot
/// reproduce), read in chunks of `chunk_size` by `ranges` connections each, under writes
/// that update, delete and re-insert keys, through SIGKILLed runs: what Precise's checker
/// finds wrong in the runs of `binary`.
fn collated_violations(
    binary: &std::path::Path,
    db: &MariaDbServer,
    table: &'static str,
    (chunk_size, ranges): (usize, usize),
) -> Vec<String> {
    use backfill_core::mode::ResolvedMode;
    use testkit::checker::{self, BindingExpect};
    db.sql(&format!("CREATE TABLE test.{table} (name VARCHAR(20) COLLATE utf8mb4_unicode_ci PRIMARY KEY, v BIGINT)")).unwrap();
    let words = [
        "apple", "Banana", "cherry", "Éclair", "eclairs", "zebra", "Zulu", "ab", "a b", "a-b", "ß",
        "st",
    ];
    for (i, w) in words.iter().enumerate() {
        db.sql(&format!(
            "SET NAMES utf8mb4; INSERT INTO test.{table} VALUES ('{w}', {i})"
        ))
        .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("maria-{table}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root",
                                     "advanced": {"chunk_size": chunk_size, "backfill_ranges": ranges}},
                        "bindings": [{"resource": {"namespace": "test", "stream": table}, "target": "n"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut runs = Vec::new();
    let mut v = 100;
    for round in 0..6u64 {
        for (i, w) in words.iter().enumerate() {
            v += 1;
            let sql = match (usize::try_from(round).unwrap() + i) % 3 {
                0 => format!("UPDATE test.{table} SET v = {v} WHERE name = '{w}'"),
                1 => format!("DELETE FROM test.{table} WHERE name = '{w}'"),
                _ => format!(
                    "INSERT INTO test.{table} VALUES ('{w}', {v}) ON DUPLICATE KEY UPDATE v = {v}"
                ),
            };
            db.sql(&format!("SET NAMES utf8mb4; {sql}")).unwrap();
        }
        runs.push(killed_run(binary, &dir, 200 + 100 * round));
    }
    runs.push(caught_up_run(binary, &dir));
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: vec!["name".into()],
        table: format!("test.{table}"),
        version_column: Some("v".into()),
    }];
    let qualified = format!("test.{table}");
    let violations = checker::check(&expect, &runs, &Table(db, &qualified, "name"));
    let _ = std::fs::remove_dir_all(&dir);
    violations
}

/// Each chunk read by three connections, each key range in a snapshot of its own
/// (`source_mysql::scan::ranges`): Precise holds under writes and kills with a collated
/// key, the cuts compared in the key's collation. With the row at each cut lost (a debug
/// build's sabotage switch), the same runs fail, or the test proves nothing.
fn a_chunk_read_in_key_ranges_is_precise_and_a_gap_between_them_is_caught(
    (binary, db): (PathBuf, MariaDbServer),
) {
    let violations = collated_violations(&binary, &db, "ranged", (6, 3));
    assert!(violations.is_empty(), "{violations:#?}");
    use testkit::live::LiveDb as _;
    let gap = testkit::live::Sabotaged::new(&db, "SOURCE_MYSQL_SABOTAGE=range-gap");
    let gapped = gap.connector().unwrap();
    let violations = collated_violations(&gapped, &db, "gapped", (6, 3));
    assert!(
        !violations.is_empty(),
        "ranges that lose the row at their cut lost nothing: the test cannot tell"
    );
}

/// `check` says whether the server has a connection free for each range after the first:
/// 4 ranges on a server with many free is fine, 64 on a server of 20 connections is a
/// warning that names both remedies.
fn check_counts_the_connections_the_ranges_need((binary, db): (PathBuf, MariaDbServer)) {
    db.sql("CREATE TABLE test.k (id INT PRIMARY KEY)").unwrap();
    let cap = Capture::new(&binary, "maria-ranges-check");
    let check = |ranges: usize| {
        cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root",
                                         "advanced": {"backfill_ranges": ranges}},
                           "bindings": [{"resource": {"namespace": "test", "stream": "k"}, "target": "k"}]}));
        cap.run(&["check"]).lines.join("\n")
    };
    testkit::live::assert_checks_range_connections(check, || {
        db.sql("SET GLOBAL max_connections = 20").unwrap();
    });
    db.sql("SET GLOBAL max_connections = 151").unwrap();
}

/// A table keyed by two columns is read in chunks that each start where the last one
/// ended, so a backfill reads each row about once, whatever the number of key ranges. (A
/// row-constructor comparison, `(a, b) > (?, ?)`, is not a range to MariaDB's optimizer:
/// every chunk read the key index from its start, and a backfill cost the square of the
/// table.) Counted by the server itself (`Handler_read_next`, rows read in index order)
/// over backfills of 20,000 rows in chunks of 500, on 1 and then 3 connections.
fn a_composite_key_backfill_reads_each_row_about_once((binary, db): (PathBuf, MariaDbServer)) {
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    let rows = 20_000u64;
    db.sql(&format!(
        "CREATE TABLE test.pairs (a INT NOT NULL, b VARCHAR(8) NOT NULL, v INT, PRIMARY KEY (a, b)); \
         INSERT INTO test.pairs SELECT n DIV 10, CONCAT('k', n MOD 10), n \
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n \
         FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) t WHERE n < {rows}"
    ))
    .unwrap();
    let read_next = || -> u64 {
        let out = db
            .sql("SHOW GLOBAL STATUS LIKE 'Handler_read_next'")
            .unwrap();
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    for ranges in [1, 3] {
        let cap = Capture::new(&binary, &format!("maria-pairs-{ranges}"));
        cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root",
                                         "advanced": {"chunk_size": 500, "backfill_ranges": ranges}},
                           "bindings": [{"resource": {"namespace": "test", "stream": "pairs"}, "target": "p"}]}));
        let before = read_next();
        let out = cap.capture();
        let read = read_next() - before;
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(docs(&out.lines).len() as u64, rows, "every row, once");
        assert!(
            read < 4 * rows,
            "a backfill of {rows} rows in {ranges} range(s) read {read} rows in index order: each chunk read the rows before it again"
        );
    }
}

/// A chunk read in key ranges is cut at keys read from the table, which go back to the
/// server as parameters the way a cursor does (rendered, then cast as the column): for
/// every kind of key column a cast applies to, and a composite key of two of them, chunks
/// of 7 rows in 3 ranges hold each of 100 rows exactly once.
fn chunks_cut_at_keys_of_every_kind_lose_and_repeat_nothing(
    (binary, db): (PathBuf, MariaDbServer),
) {
    let kinds = [
        (
            "k_dt",
            "k DATETIME(6)",
            "'2020-01-01' + INTERVAL n * 1001 MICROSECOND",
        ),
        (
            "k_ts",
            "k TIMESTAMP(6)",
            "'2021-03-01' + INTERVAL n * 37 MINUTE",
        ),
        ("k_dec", "k DECIMAL(10,3)", "n * 1.125 - 50"),
        (
            "k_bin",
            "k VARBINARY(16)",
            "UNHEX(CONCAT(LPAD(HEX(n), 4, '0'), 'ff00'))",
        ),
        ("k_date", "k DATE", "'1999-12-01' + INTERVAL n DAY"),
        (
            "k_text",
            "k VARCHAR(20) COLLATE utf8mb4_unicode_ci",
            "CONCAT(IF(n % 2, 'É', 'e'), n)",
        ),
    ];
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    let numbers = format!("(SELECT a.d + 10 * b.d AS n FROM {digits} a, {digits} b) t");
    let mut bindings = Vec::new();
    for (table, column, value) in kinds {
        db.sql(&format!(
            "SET NAMES utf8mb4; SET time_zone = '+00:00'; CREATE TABLE test.{table} ({column} NOT NULL PRIMARY KEY, v INT); \
             INSERT INTO test.{table} SELECT {value}, n FROM {numbers}"
        ))
        .unwrap();
        bindings.push(json!({"resource": {"namespace": "test", "stream": table}, "target": table}));
    }
    db.sql(&format!(
        "CREATE TABLE test.k_pair (b VARBINARY(4) NOT NULL, d DATETIME(3) NOT NULL, v INT, PRIMARY KEY (b, d)); \
         INSERT INTO test.k_pair SELECT UNHEX(LPAD(HEX(n % 7), 2, '0')), '2020-01-01' + INTERVAL n SECOND, n FROM {numbers}"
    ))
    .unwrap();
    bindings
        .push(json!({"resource": {"namespace": "test", "stream": "k_pair"}, "target": "k_pair"}));
    let cap = Capture::new(&binary, "maria-cut-kinds");
    cap.config(
        &json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root",
                                     "advanced": {"chunk_size": 7, "backfill_ranges": 3}},
                       "bindings": bindings}),
    );
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let tables = [
        "k_dt", "k_ts", "k_dec", "k_bin", "k_date", "k_text", "k_pair",
    ];
    for (i, table) in tables.iter().enumerate() {
        let vs: Vec<i64> = testkit::live::docs(&out.lines, i)
            .iter()
            .map(|d| d["v"].as_i64().unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<i64> = vs.iter().copied().collect();
        assert_eq!(
            (vs.len(), distinct.len()),
            (100, 100),
            "{table}: 100 rows, each once"
        );
    }
}

/// The shared live scenario, every mode, chunks of 9 read by 4 connections, with
/// SIGKILLs: DESIGN.md §6 holds as with one.
fn live_scenario_in_key_ranges((_, db): (PathBuf, MariaDbServer)) {
    let scenario = testkit::live::Scenario {
        modes: testkit::live::EVERY_MODE.to_vec(),
        initial_rows: 200,
        txns: 400,
        kills: 4,
        endpoint_extra: json!({"advanced": {"chunk_size": 9, "backfill_ranges": 4}}),
    };
    let report = testkit::live::run_reported(&db, "ranges", &scenario);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// A keyless table is read in one snapshot, chunk by chunk. A capture killed mid-backfill
/// resumes in a new snapshot at the cursor, counted in rows: with the table unwritten, the
/// documents of all runs hold each row exactly once. A keyless binding that asks for
/// ranges is told it reads on one connection.
fn a_keyless_backfill_killed_and_resumed_reads_each_row_once(
    (binary, db): (PathBuf, MariaDbServer),
) {
    use backfill_core::mode::ResolvedMode;
    use testkit::checker::{self, BindingExpect};
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    db.sql(&format!(
        "CREATE TABLE test.heap (id INT, v INT); INSERT INTO test.heap \
         SELECT n, n % 7 FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 1 AS n \
         FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) t WHERE n <= 20000"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("maria-keyless-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 100}},
                        "bindings": [{"resource": {"namespace": "test", "stream": "heap"}, "target": "h"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut runs: Vec<_> = (0..5u64)
        .map(|round| killed_run(&binary, &dir, 300 + 150 * round))
        .collect();
    runs.push(caught_up_run(&binary, &dir));
    let expect = [BindingExpect {
        mode: ResolvedMode::WithoutPrimaryKey,
        key: Vec::new(),
        table: "test.heap".into(),
        version_column: None,
    }];
    let violations = checker::check(&expect, &runs, &Table(&db, "test.heap", "id"));
    assert!(violations.is_empty(), "{violations:#?}");
    let _ = std::fs::remove_dir_all(&dir);

    // Ranges asked of a keyless table are not silently ignored.
    let cap = Capture::new(&binary, "maria-keyless-ranges");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"backfill_ranges": 3}},
                       "bindings": [{"resource": {"namespace": "test", "stream": "heap"}, "target": "h"}]}));
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(docs(&out.lines).len(), 20_000, "every row, once");
    assert!(
        out.stderr
            .contains("the source reads this table's chunks on one connection"),
        "{}",
        out.stderr
    );
}

/// ALTER TABLE while streaming: rows after it are decoded with the new columns, never
/// misaligned.
fn alter_table_mid_stream_is_followed((binary, db): (PathBuf, MariaDbServer)) {
    db.sql("CREATE TABLE test.a (id INT PRIMARY KEY, x INT); INSERT INTO test.a VALUES (1, 10)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("maria-alter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "a"}, "target": "a"}]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert!(capture(&binary, &dir).ok);
    let expect = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    db.sql(
        "INSERT INTO test.a VALUES (2, 20);
         ALTER TABLE test.a ADD COLUMN note VARCHAR(10) DEFAULT 'n', ADD COLUMN d DECIMAL(5,2);
         INSERT INTO test.a VALUES (3, 30, 'hi', 1.5)",
    )
    .unwrap();
    let out = capture(&binary, &dir);
    assert!(out.ok, "{}", out.stderr);
    let d = docs(&out.lines);
    // The row written before the ALTER streams as it was; the column's default reached
    // every row already there without a row event, so the table is read again, the rows
    // with their new columns.
    assert_eq!(without(&d[0], &["_meta"]), expect(r#"{"id": 2, "x": 20}"#));
    let reread: Vec<Value> = d[1..]
        .iter()
        .inspect(|doc| assert_eq!(doc["_meta"]["source"]["snapshot"], true, "{doc}"))
        .map(|doc| without(doc, &["_meta"]))
        .collect();
    assert_eq!(
        reread,
        [
            expect(r#"{"id": 1, "x": 10, "note": "n", "d": null}"#),
            expect(r#"{"id": 2, "x": 20, "note": "n", "d": null}"#),
            expect(r#"{"id": 3, "x": 30, "note": "hi", "d": 1.50}"#)
        ],
        "{:?}",
        out.lines
    );
    assert!(out.stderr.contains("read again"), "{}", out.stderr);
    db.sql("ALTER TABLE test.a DROP COLUMN x; INSERT INTO test.a VALUES (4, 'bye', 2.25)")
        .unwrap();
    let out = capture(&binary, &dir);
    assert!(out.ok, "{}", out.stderr);
    let d = docs(&out.lines);
    assert_eq!(
        without(&d[0], &["_meta"]),
        expect(r#"{"id": 4, "note": "bye", "d": 2.25}"#)
    );
    // A column added, written and dropped before the stream reads it cannot be rendered
    // from today's catalog: the capture stops with a clear error rather than guess.
    db.sql("ALTER TABLE test.a ADD COLUMN y INT; INSERT INTO test.a VALUES (5, 'x', 1, 7); ALTER TABLE test.a DROP COLUMN y").unwrap();
    let before = std::fs::read_to_string(dir.join("state.json")).unwrap();
    let out = capture(&binary, &dir);
    assert!(
        !out.ok && out.stderr.contains("misaligned"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("state.json")).unwrap(),
        before
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Faults a running capture survives: its binlog dump thread is killed, then the server
/// restarts; the capture retries inside the process and the output keeps every guarantee.
fn survives_a_killed_dump_thread_and_a_server_restart((binary, mut db): (PathBuf, MariaDbServer)) {
    use backfill_core::mode::ResolvedMode;
    use testkit::checker::{self, BindingExpect, RunOutput};
    db.sql("CREATE TABLE test.f (id INT PRIMARY KEY, v BIGINT)")
        .unwrap();
    for i in 1..=200 {
        db.sql(&format!("INSERT INTO test.f VALUES ({i}, 0)"))
            .unwrap();
    }
    let cap = Capture::new(&binary, "maria-faults");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root", "advanced": {"chunk_size": 10}},
                       "bindings": [{"resource": {"namespace": "test", "stream": "f"}, "target": "f"}]}));
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
    let mut write = |db: &MariaDbServer, n: i32| {
        for _ in 0..n {
            v += 1;
            let id = 1 + (v * 7) % 300;
            let _ = db.sql(&format!(
                "INSERT INTO test.f VALUES ({id}, {v}) ON DUPLICATE KEY UPDATE v = {v}"
            ));
            if v % 5 == 0 {
                let _ = db.sql(&format!(
                    "DELETE FROM test.f WHERE id = {}",
                    1 + (v * 13) % 300
                ));
            }
        }
    };
    write(&db, 40);
    std::thread::sleep(std::time::Duration::from_millis(500));
    db.sql("SET @t = (SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%' LIMIT 1); KILL @t").ok();
    write(&db, 40);
    db.restart_with(&[]).unwrap();
    write(&db, 40);
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
    assert!(
        stderr.matches("transient failure").count() >= 1,
        "the restart was felt and retried: {stderr}"
    );
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
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: vec!["id".into()],
        table: "test.f".into(),
        version_column: Some("v".into()),
    }];
    let violations = checker::check(&expect, &runs, &Table(&db, "test.f", "id"));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Bad input: each is one line that says what to do, a non-zero exit, no state file.
fn bad_input_fails_with_one_clear_line((binary, mut db): (PathBuf, MariaDbServer)) {
    db.sql("CREATE TABLE test.t (id INT PRIMARY KEY); CREATE USER 'cdc'@'127.0.0.1' IDENTIFIED BY 'right'").unwrap();
    let dir = std::env::temp_dir().join(format!("maria-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let check = |endpoint: Value, stream: &str, needle: &str| {
        let config = json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "test", "stream": stream}, "target": "t"}]});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let out = capture(&binary, &dir);
        assert!(!out.ok, "expected a failure containing {needle:?}");
        let error = testkit::live::the_error_line(&out.stderr);
        assert!(error.contains(needle), "{:?} lacks {needle:?}", error);
        assert!(!dir.join("state.json").exists(), "no state file is written");
    };
    let root = json!({"host": "127.0.0.1", "port": db.port, "user": "root"});
    // A server that cannot be reached is retried, and each retry said at once, with its
    // cause said once, the attempt and the delay.
    let closed = testkit::servers::free_port().unwrap();
    let cap = Capture::at(&binary, &dir);
    cap.config(
        &json!({"endpoint": {"host": "127.0.0.1", "port": closed, "user": "root"},
                       "bindings": [{"resource": {"namespace": "test", "stream": "t"}}]}),
    );
    let out = cap.capture_for(std::time::Duration::from_millis(1500));
    assert!(
        out.stderr.contains("Connection refused")
            && out.stderr.contains("retrying in 0.5 s (attempt 1 of 10)")
            && !out
                .stderr
                .contains("Input/output error: Input/output error"),
        "{}",
        out.stderr
    );
    check(
        json!({"host": "127.0.0.1", "port": db.port, "user": "cdc", "password": "wrong"}),
        "t",
        "check the user and password",
    );
    check(
        json!({"host": "127.0.0.1", "port": db.port, "user": "cdc", "password": "right"}),
        "t",
        "binding 0 (test.t): no such table",
    );
    db.sql("GRANT SELECT ON test.* TO 'cdc'@'127.0.0.1'")
        .unwrap();
    check(
        json!({"host": "127.0.0.1", "port": db.port, "user": "cdc", "password": "right"}),
        "t",
        "grant",
    );
    check(root.clone(), "nope", "no such table");
    db.restart_with(&["--binlog-format=STATEMENT"]).unwrap();
    check(
        root.clone(),
        "t",
        "FAIL binlog_format: is STATEMENT; SET GLOBAL binlog_format = 'ROW'",
    );
    db.restart_with(&["--binlog-format=ROW", "--binlog-row-metadata=MINIMAL"])
        .unwrap();
    check(root, "t", "FAIL binlog_row_metadata: is MINIMAL");
    let _ = std::fs::remove_dir_all(&dir);
}

/// MySQL without `gtid_mode=ON`: `check` names the setting, a backfill stops with it
/// before emitting anything, and an Only Changes binding captures by file and offset.
#[test]
fn mysql_without_gtids_refuses_backfills_and_runs_only_changes() {
    let Some((binary, mut db)) = setup_mysql() else {
        return;
    };
    if db.pid().is_none() {
        return testkit::servers::skip("needs a throwaway MySQL to restart without GTIDs");
    }
    db.restart_with(&["--gtid-mode=OFF"]).unwrap();
    assert_eq!(db.sql("SELECT @@gtid_mode").unwrap(), "OFF");
    db.sql("CREATE TABLE test.g (id INT PRIMARY KEY, v INT); INSERT INTO test.g VALUES (1, 1)")
        .unwrap();
    let binding = |mode: &str| {
        json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
               "bindings": [{"resource": {"namespace": "test", "stream": "g", "mode": mode}, "target": "g"}]})
    };
    let cap = Capture::new(&binary, "mysql-nogtid");
    cap.config(&binding("Precise"));
    let check = cap.run(&["check"]);
    let report = format!("{}{}", check.lines.join("\n"), check.stderr);
    assert!(!check.ok && report.contains("gtid_mode"), "{report}");
    let out = cap.capture();
    assert!(!out.ok, "{:?}", out.lines);
    let error = testkit::live::the_error_line(&out.stderr);
    assert!(error.contains("gtid_mode=ON"), "{error}");
    assert!(docs(&out.lines).is_empty(), "{:?}", out.lines);

    let cap = Capture::new(&binary, "mysql-nogtid-changes");
    cap.config(&binding("Only Changes"));
    assert!(cap.run(&["check"]).ok, "Only Changes needs no GTIDs");
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    db.sql("INSERT INTO test.g VALUES (2, 2); UPDATE test.g SET v = 5 WHERE id = 1")
        .unwrap();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let got: Vec<(Value, Value)> = docs(&out.lines)
        .iter()
        .map(|d| (d["id"].clone(), d["_meta"]["op"].clone()))
        .collect();
    assert_eq!(got, [(json!(2), json!("c")), (json!(1), json!("u"))]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(cap.state()).unwrap()).unwrap();
    assert_eq!(state["position"]["resume_by"], "file", "{state}");
}

/// MySQL's compressed transactions (`binlog_transaction_compression=ON`) are refused with
/// the setting named, by `check` and by the stream, never skipped.
#[test]
fn mysql_compressed_transactions_are_refused_not_skipped() {
    let Some((binary, db)) = setup_mysql() else {
        return;
    };
    db.sql("CREATE TABLE test.z (id INT PRIMARY KEY, b TEXT)")
        .unwrap();
    let cap = Capture::new(&binary, "mysql-compress");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                       "bindings": [{"resource": {"namespace": "test", "stream": "z"}, "target": "z"}]}));
    assert!(cap.capture().ok);
    let state = std::fs::read(cap.state()).unwrap();
    db.sql("SET GLOBAL binlog_transaction_compression = ON")
        .unwrap();
    db.sql(&format!(
        "INSERT INTO test.z VALUES (1, '{}')",
        "x".repeat(500)
    ))
    .unwrap();
    let check = cap.run(&["check"]);
    let report = format!("{}{}", check.lines.join("\n"), check.stderr);
    let preflight = cap.capture();
    // Turned off again, the preflight passes: the compressed transaction already written
    // must still be refused by the stream.
    db.sql("SET GLOBAL binlog_transaction_compression = OFF")
        .unwrap();
    let out = cap.capture();
    assert!(
        !check.ok && report.contains("FAIL binlog_transaction_compression: is ON"),
        "{report}"
    );
    assert!(
        testkit::live::the_error_line(&preflight.stderr)
            .contains("FAIL binlog_transaction_compression: is ON"),
        "{}",
        preflight.stderr
    );
    assert!(!out.ok, "{:?}", out.lines);
    let error = testkit::live::the_error_line(&out.stderr);
    assert!(
        error.contains("compressed transaction")
            && error.contains("binlog_transaction_compression = OFF"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(cap.state()).unwrap(), state);
}

/// MySQL's binary JSON (the binlog's encoding, unlike MariaDB's text), GEOMETRY and 4-byte
/// UTF-8 in MySQL 8's default collation render the same backfilled and streamed.
#[test]
fn mysql_json_geometry_and_emoji_render_the_same_on_both_paths() {
    let Some((binary, db)) = setup_mysql() else {
        return;
    };
    db.sql(
        "CREATE TABLE test.mj (id INT PRIMARY KEY, g GEOMETRY, e VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci, j JSON);
         SET NAMES utf8mb4;
         INSERT INTO test.mj VALUES
           (1, ST_GeomFromText('POINT(1 2)'), 'héllo 🙂',
            '{\"big\": 18446744073709551615, \"neg\": -9223372036854775808, \"f\": 1.5e300, \"s\": \"🙂\", \"n\": {\"a\": [true, false, null, 2.25]}}'),
           (2, NULL, NULL, NULL),
           (3, NULL, '', '[]')",
    )
    .unwrap();
    let cap = Capture::new(&binary, "mysql-json");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                       "bindings": [{"resource": {"namespace": "test", "stream": "mj"}, "target": "mj"}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines);
    assert_eq!(backfilled.len(), 3);
    assert_eq!(
        backfilled[0]["j"],
        json!({"big": 18_446_744_073_709_551_615_u64, "neg": i64::MIN, "f": 1.5e300, "s": "🙂", "n": {"a": [true, false, null, 2.25]}})
    );
    assert_eq!(backfilled[0]["e"], json!("héllo 🙂"));
    assert_eq!(backfilled[2]["j"], json!([]));
    let stored: String = db
        .sql("SELECT TO_BASE64(g) FROM test.mj WHERE id = 1")
        .unwrap();
    assert_eq!(backfilled[0]["g"], json!(stored.replace('\n', "")));
    db.sql("SET NAMES utf8mb4; INSERT INTO test.mj SELECT id + 100, g, e, j FROM test.mj")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = docs(&second.lines);
    assert_eq!(streamed.len(), 3, "{:?}", second.lines);
    same_but_id(&backfilled, &streamed);
}

/// MySQL: a capture that starts while a transaction is in the binlog but not yet committed
/// (stretched to a second by `binlog_group_commit_sync_delay`) starts after it, so the
/// stream does not deliver it; the first chunk's snapshot must then see it. The stream
/// records the GTIDs it reads before its start for the chunk's wait; without that, the
/// snapshot misses the update and the row stays stale.
#[test]
fn mysql_a_start_amid_a_logged_uncommitted_transaction_loses_nothing() {
    use backfill_core::mode::ResolvedMode;
    use testkit::checker::{self, BindingExpect, RunOutput};
    let Some((binary, db)) = setup_mysql() else {
        return;
    };
    db.sql("CREATE TABLE test.s (id INT PRIMARY KEY, v INT); INSERT INTO test.s VALUES (1, 0), (2, 0), (3, 0)")
        .unwrap();
    db.sql("SET GLOBAL sync_binlog = 0; SET GLOBAL binlog_group_commit_sync_delay = 1000000")
        .unwrap();
    let cap = Capture::new(&binary, "mysql-floor");
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                       "bindings": [{"resource": {"namespace": "test", "stream": "s", "mode": "Precise"}, "target": "s"}]}));
    let first = std::thread::scope(|s| {
        let writer = s.spawn(|| db.sql("UPDATE test.s SET v = 1 WHERE id = 2").unwrap());
        // The update is in the binlog now, and commits about a second later.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let first = cap.capture();
        writer.join().unwrap();
        first
    });
    db.sql("SET GLOBAL binlog_group_commit_sync_delay = 0")
        .unwrap();
    assert!(first.ok, "{}", first.stderr);
    let last = cap.capture();
    assert!(last.ok, "{}", last.stderr);
    let runs: Vec<RunOutput> = [first, last]
        .into_iter()
        .map(|o| RunOutput {
            lines: o.lines,
            counters: vec![0],
        })
        .collect();
    let expect = [BindingExpect {
        mode: ResolvedMode::Precise,
        key: vec!["id".into()],
        table: "test.s".into(),
        version_column: Some("v".into()),
    }];
    let violations = checker::check(&expect, &runs, &Table(&db, "test.s", "id"));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Columns a table's `*` and its binlog images may treat differently (generated virtual
/// and stored, invisible), zero and odd values (the zero YEAR, partly zero dates, a full
/// BIT(64), the empty ENUM and SET), and MySQL's VECTOR: each the same backfilled and
/// streamed.
fn generated_invisible_and_zero_values_render_the_same_on_both_paths(
    (binary, db): (PathBuf, MariaDbServer),
) {
    let mysql = !db
        .sql("SELECT VERSION()")
        .unwrap()
        .to_lowercase()
        .contains("maria");
    db.sql(
        "SET SESSION sql_mode = '';
         CREATE TABLE test.p (id INT PRIMARY KEY, a INT, gv INT AS (a * 2) VIRTUAL, gs INT AS (a * 3) STORED,
            inv INT INVISIBLE DEFAULT 7, dz DATE, dtz DATETIME, b64 BIT(64), b1 BIT(1), y YEAR, e ENUM('x','y'),
            s SET('p','q'), tsz TIMESTAMP NULL, ch CHAR(5), bn BINARY(4));
         INSERT INTO test.p (id, a, inv, dz, dtz, b64, b1, y, e, s, tsz, ch, bn) VALUES
           (1, 5, 9, '2020-00-00', '2020-01-00 10:00:00', b'1111111111111111111111111111111111111111111111111111111111111111',
            b'1', 0, '', '', '0000-00-00 00:00:00', 'ab  ', 'a\\0'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, 2155, 'y', 'p,q', NULL, NULL, NULL)",
    )
    .unwrap();
    let mut bindings =
        vec![json!({"resource": {"namespace": "test", "stream": "p"}, "target": "p"})];
    if mysql {
        db.sql("CREATE TABLE test.vec (id INT PRIMARY KEY, v VECTOR(3)); INSERT INTO test.vec VALUES (1, STRING_TO_VECTOR('[1.5, 2, -3]'))")
            .unwrap();
        bindings.push(json!({"resource": {"namespace": "test", "stream": "vec"}, "target": "vec"}));
    }
    let cap = Capture::new(&binary, &format!("odd-values-{}", db.port));
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"}, "bindings": bindings}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines);
    assert_eq!(backfilled.len(), 2, "{:?}", first.lines);
    let row1 = &backfilled[0];
    assert_eq!(
        (row1["gv"].clone(), row1["gs"].clone(), row1["inv"].clone()),
        (json!(10), json!(15), json!(9))
    );
    assert_eq!(row1["y"], json!(0), "the zero year");
    assert_eq!(row1["b64"].to_string(), "18446744073709551615");
    db.sql("SET SESSION sql_mode = ''; INSERT INTO test.p (id, a, inv, dz, dtz, b64, b1, y, e, s, tsz, ch, bn) SELECT id + 100, a, inv, dz, dtz, b64, b1, y, e, s, tsz, ch, bn FROM test.p")
        .unwrap();
    if mysql {
        db.sql("INSERT INTO test.vec SELECT id + 100, v FROM test.vec")
            .unwrap();
    }
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    same_but_id(&backfilled, &docs(&second.lines));
    if mysql {
        let vectors = |lines: &[String]| testkit::live::docs(lines, 1);
        assert_eq!(vectors(&first.lines).len(), 1);
        same_but_id(&vectors(&first.lines), &vectors(&second.lines));
    }
}

/// MariaDB's temporal columns made before 10.1 (`mysql56_temporal_format=OFF`, still on
/// long-lived servers): their catalog type reads `datetime(3) /* mariadb-5.3 */`, and
/// their binlog form is the old type with no metadata (`rows::mariadb_hires`). Fractions
/// backfill, and the same values stream.
#[test]
fn mariadbs_pre_10_1_temporal_columns_render_the_same_on_both_paths() {
    let Some((binary, db)) = setup() else { return };
    db.sql(
        "SET GLOBAL mysql56_temporal_format = OFF;
         CREATE TABLE test.o (id INT PRIMARY KEY, t0 TIME, t3 TIME(3), t6 TIME(6), d0 DATETIME, d3 DATETIME(3), d6 DATETIME(6), s0 TIMESTAMP NULL, s3 TIMESTAMP(3) NULL, s6 TIMESTAMP(6) NULL, t1 TIME(1), d1 DATETIME(1), v VARCHAR(300));
         SET GLOBAL mysql56_temporal_format = ON;
         INSERT INTO test.o VALUES (1, '-838:59:59', '-01:02:03.5', '12:34:56.123456', '2020-01-02 03:04:05', '2020-01-02 03:04:05.123', '2020-01-02 03:04:05.123456', '2020-01-02 03:04:05', '2020-01-02 03:04:05.5', '2038-01-19 03:14:07.999999', '-00:00:00.1', '2020-02-29 23:59:59.9', 'after'),
           (2, '00:00:00', '-00:00:00.001', '-838:59:58.999999', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999', NULL, NULL, NULL, '1970-01-01 00:00:01.000001', '838:59:59.9', '1000-01-01 00:00:00.1', NULL)",
    )
    .unwrap();
    let cap = Capture::new(&binary, &format!("old-temporal-{}", db.port));
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"}, "bindings": [{"resource": {"namespace": "test", "stream": "o"}, "target": "o"}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = docs(&first.lines);
    assert_eq!(backfilled.len(), 2);
    let row1 = &backfilled[0];
    assert_eq!(row1["t0"], json!("-838:59:59"));
    assert_eq!(row1["t3"], json!("-01:02:03.500"));
    assert_eq!(row1["d3"], json!("2020-01-02T03:04:05.123"));
    assert_eq!(row1["s3"], json!("2020-01-02T03:04:05.500Z"));
    assert_eq!(row1["v"], json!("after"));
    db.sql("INSERT INTO test.o SELECT id + 100, t0, t3, t6, d0, d3, d6, s0, s3, s6, t1, d1, v FROM test.o")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    same_but_id(&backfilled, &docs(&second.lines));
}

/// XA transactions commit at `XA COMMIT`: a rolled-back one delivers nothing, a prepared
/// one delivers its rows when it commits, a one-phase one at once. A capture that
/// restarted between a prepare and its commit cannot read the rows again, and stops with
/// the remedy rather than lose them in silence.
fn xa_transactions_deliver_at_their_commit_and_never_when_rolled_back(
    (binary, db): (PathBuf, MariaDbServer),
) {
    let cap = backfilled(
        &binary,
        &db,
        "CREATE TABLE test.xa (id INT PRIMARY KEY, v INT); INSERT INTO test.xa VALUES (1, 1)",
        "xa",
    );
    // Each statement list is a session of its own: a prepared XA outlives its session.
    for sql in [
        "XA START 'a'; INSERT INTO test.xa VALUES (2, 2); XA END 'a'; XA PREPARE 'a'; XA ROLLBACK 'a'",
        "XA START 'b'; INSERT INTO test.xa VALUES (3, 3); UPDATE test.xa SET v = 10 WHERE id = 1; XA END 'b'; XA PREPARE 'b'",
        "INSERT INTO test.xa VALUES (5, 5)",
        "XA COMMIT 'b'",
        "XA START 'c'; INSERT INTO test.xa VALUES (4, 4); XA END 'c'; XA COMMIT 'c' ONE PHASE",
    ] {
        db.sql(sql).unwrap();
    }
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let seen = ids_and_values(&out.lines);
    assert_eq!(
        seen,
        [(5, 5), (3, 3), (1, 10), (4, 4)],
        "in commit order, nothing of 'a'"
    );
    let pos: Vec<Vec<u64>> = docs(&out.lines)
        .iter()
        .map(|d| serde_json::from_value(d["_meta"]["source"]["pos"].clone()).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    // Prepared while the capture runs to its end, committed after it stopped.
    db.sql("XA START 'd'; INSERT INTO test.xa VALUES (6, 6); XA END 'd'; XA PREPARE 'd'")
        .unwrap();
    assert!(cap.capture().ok);
    db.sql("XA COMMIT 'd'").unwrap();
    let lost = cap.capture();
    assert!(!lost.ok, "{:?}", lost.lines);
    assert!(
        lost.stderr.contains("XA COMMIT") && lost.stderr.contains("raise `backfill`"),
        "{}",
        lost.stderr
    );
}

/// A transaction with savepoints (ORMs nest transactions so) is one transaction: the
/// `SAVEPOINT` queries inside it do not end it, and the rows rolled back to a savepoint
/// are not delivered.
fn savepoints_stay_inside_their_transaction((binary, db): (PathBuf, MariaDbServer)) {
    let cap = backfilled(
        &binary,
        &db,
        "CREATE TABLE test.sp (id INT PRIMARY KEY, v INT); INSERT INTO test.sp VALUES (1, 1)",
        "sp",
    );
    db.sql(
        "BEGIN; INSERT INTO test.sp VALUES (2, 2); SAVEPOINT s1; INSERT INTO test.sp VALUES (3, 3);
         ROLLBACK TO SAVEPOINT s1; INSERT INTO test.sp VALUES (4, 4); SAVEPOINT s2;
         UPDATE test.sp SET v = 9 WHERE id = 1; RELEASE SAVEPOINT s2; COMMIT",
    )
    .unwrap();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let seen = ids_and_values(&out.lines);
    assert_eq!(seen, [(2, 2), (4, 4), (1, 9)]);
    // One transaction: no checkpoint between its first and its last change.
    let at: Vec<usize> = out
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"doc\""))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !out.lines[at[0]..=at[2]]
            .iter()
            .any(|l| l.contains("\"checkpoint\"")),
        "{:#?}",
        out.lines
    );
}

/// `TRUNCATE TABLE` is logged as a query, not as row deletes: it is delivered as a
/// truncate (before, it was taken for a DDL and the rows stayed downstream), whether named
/// from the table's database or qualified from another.
fn a_truncate_is_delivered_as_a_truncate((binary, db): (PathBuf, MariaDbServer)) {
    let cap = backfilled(
        &binary,
        &db,
        "CREATE TABLE test.tr (id INT PRIMARY KEY, v INT); INSERT INTO test.tr VALUES (1, 1), (2, 2); CREATE TABLE test.other (id INT PRIMARY KEY)",
        "tr",
    );
    db.sql("USE test; TRUNCATE TABLE tr; INSERT INTO tr VALUES (3, 3); TRUNCATE other")
        .unwrap();
    db.sql("USE mysql; INSERT INTO test.tr VALUES (4, 4); TRUNCATE `test`.`tr`; INSERT INTO test.tr VALUES (5, 5)")
        .unwrap();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let events: Vec<String> = out
        .lines
        .iter()
        .filter(|l| !l.contains("\"checkpoint\""))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            match v.get("doc") {
                Some(d) => format!("{}{}", d["_meta"]["op"].as_str().unwrap(), d["id"]),
                None if l.contains("\"truncate\"") => "truncate".to_string(),
                None => l.clone(),
            }
        })
        .collect();
    assert_eq!(
        events,
        ["truncate", "c3", "c4", "truncate", "c5"],
        "{:#?}",
        out.lines
    );
}

/// A bound table renamed away stops the capture with the remedy, even when a new table
/// takes its name before the stream reads the rename (before, the stream followed the
/// name, and the old table's rows stayed downstream beside the new one's). The swap of
/// an online schema change (gh-ost, pt-osc: the copy renamed into the name in the same
/// statement) is followed.
fn a_renamed_table_stops_and_a_swapped_one_is_followed((binary, db): (PathBuf, MariaDbServer)) {
    let cap = backfilled(
        &binary,
        &db,
        "CREATE TABLE test.rn (id INT PRIMARY KEY, v INT); INSERT INTO test.rn VALUES (1, 1)",
        "rn",
    );
    db.sql(
        "CREATE TABLE test._rn_gho (id INT PRIMARY KEY, v INT, w INT);
         INSERT INTO test._rn_gho SELECT id, v, 0 FROM test.rn;
         INSERT INTO test.rn VALUES (2, 2); INSERT INTO test._rn_gho VALUES (2, 2, 0);
         RENAME TABLE test.rn TO test._rn_del, test._rn_gho TO test.rn;
         INSERT INTO test.rn VALUES (3, 3, 3)",
    )
    .unwrap();
    let swapped = cap.capture();
    assert!(swapped.ok, "{}", swapped.stderr);
    let ids: Vec<i64> = docs(&swapped.lines)
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 3]);
    db.sql(
        "INSERT INTO test.rn VALUES (4, 4, 4); RENAME TABLE test.rn TO test.rn_old;
         CREATE TABLE test.rn LIKE test.rn_old; INSERT INTO test.rn VALUES (9, 9, 9)",
    )
    .unwrap();
    let renamed = cap.capture();
    assert!(!renamed.ok);
    assert!(
        renamed
            .stderr
            .contains("test.rn was renamed to test.rn_old"),
        "{}",
        renamed.stderr
    );
    let ids: Vec<i64> = docs(&renamed.lines)
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [4], "nothing of the new table");
    // MariaDB's CREATE OR REPLACE drops the table it replaces.
    if db.sql("SELECT VERSION()").unwrap().contains("Maria") {
        let cap = backfilled(
            &binary,
            &db,
            "CREATE TABLE test.cr (id INT PRIMARY KEY, v INT); INSERT INTO test.cr VALUES (1, 1)",
            "cr",
        );
        db.sql("CREATE OR REPLACE TABLE test.cr (id INT PRIMARY KEY, v INT); INSERT INTO test.cr VALUES (2, 2)")
            .unwrap();
        let replaced = cap.capture();
        assert!(
            !replaced.ok && replaced.stderr.contains("test.cr was dropped"),
            "{}",
            replaced.stderr
        );
    }
}

/// A session that logs statements (`binlog_format` STATEMENT) writes no rows to the
/// binlog: such a write to a bound table stops the capture with the remedy (before, it
/// was taken for a DDL and the change never arrived); one to another table does not.
fn a_write_logged_as_a_statement_stops_the_capture((binary, db): (PathBuf, MariaDbServer)) {
    let cap = backfilled(
        &binary,
        &db,
        "CREATE TABLE test.st (id INT PRIMARY KEY, v INT); CREATE TABLE test.elsewhere (id INT PRIMARY KEY); INSERT INTO test.st VALUES (1, 1)",
        "st",
    );
    db.sql("SET SESSION binlog_format = 'STATEMENT'; INSERT INTO test.elsewhere VALUES (1)")
        .unwrap();
    db.sql("INSERT INTO test.st VALUES (2, 2)").unwrap();
    let fine = cap.capture();
    assert!(fine.ok, "{}", fine.stderr);
    assert_eq!(docs(&fine.lines).len(), 1);
    db.sql("SET SESSION binlog_format = 'STATEMENT'; UPDATE test.st SET v = 5 WHERE id = 1")
        .unwrap();
    let stopped = cap.capture();
    assert!(!stopped.ok);
    assert!(
        stopped.stderr.contains("test.st was written")
            && stopped.stderr.contains("binlog_format = ROW"),
        "{}",
        stopped.stderr
    );
}

/// A JSON document past 64 KiB (MySQL's large binary form: four-byte offsets) with typed
/// values inside streams as the same text it backfills.
fn a_large_json_document_streams_as_it_backfills((binary, db): (PathBuf, MariaDbServer)) {
    db.sql(
        "CREATE TABLE test.bigj (id INT PRIMARY KEY, j JSON);
         INSERT INTO test.bigj SELECT 1, JSON_OBJECT('items', JSON_ARRAYAGG(JSON_OBJECT('n', seq, 'price', CAST(seq / 7 AS DECIMAL(10,3)), 'at', CAST('2020-01-01 00:00:00' AS DATETIME) + INTERVAL seq SECOND, 'name', REPEAT('é', seq % 20))), 'big', 1e300)
           FROM (SELECT a.n + 10 * b.n + 100 * c.n + 1000 * d.n + 1 AS seq FROM
                   (SELECT 0 n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a,
                   (SELECT 0 n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b,
                   (SELECT 0 n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c,
                   (SELECT 0 n UNION ALL SELECT 1) d) t",
    )
    .unwrap();
    let size = db.sql("SELECT LENGTH(j) FROM test.bigj").unwrap();
    assert!(size.trim().parse::<usize>().unwrap() > 65_536, "{size}");
    let cap = Capture::new(&binary, &format!("bigj-{}", db.port));
    cap.config(&json!({"endpoint": {"host": "127.0.0.1", "port": db.port, "user": "root"},
                        "bindings": [{"resource": {"namespace": "test", "stream": "bigj"}, "target": "bigj"}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    db.sql("INSERT INTO test.bigj SELECT 2, j FROM test.bigj")
        .unwrap();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let (backfilled, streamed) = (docs(&first.lines), docs(&second.lines));
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0]["j"].to_string(), backfilled[0]["j"].to_string());
}
