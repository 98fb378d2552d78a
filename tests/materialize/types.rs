//! The type mapping, type by type: a row of every common type, backfilled and then
//! streamed, goes from each source through the collection into the destination and is
//! read back there (`crates/materialize-postgres/src/types.rs` documents the mapping).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use testkit::live::{LiveDb, workspace_binary};
use testkit::servers::{MariaDbServer, PgServer};

use crate::endpoint_of;

/// Writes a pipeline of one capture of `table` and one materialization of it into `dest`,
/// in `dir`; returns the pipeline file.
pub(crate) fn pipeline(
    db: &dyn LiveDb,
    dest: &PgServer,
    dir: &Path,
    tables: &[&str],
) -> std::path::PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let bindings: Vec<Value> = tables
        .iter()
        .map(|t| json!({"resource": {"namespace": db.namespace(), "stream": t}, "target": t}))
        .collect();
    std::fs::write(
        dir.join("config.json"),
        json!({"endpoint": db.endpoint(), "bindings": bindings}).to_string(),
    )
    .unwrap();
    let materialized: Vec<Value> = tables
        .iter()
        .map(|t| json!({"source": t, "target": t}))
        .collect();
    let path = dir.join("pipeline.json");
    std::fs::write(
        &path,
        json!({
            "store": "file:store",
            "captures": [{"name": "c", "connector": db.connector().unwrap(), "config": "config.json"}],
            "materializations": [{"name": "m", "destination": "postgres",
                                  "endpoint": endpoint_of(dest), "bindings": materialized}]
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// `cdc <args[0]> PIPELINE <args[1..]>`; panics with its stderr when it fails.
pub(crate) fn cdc(args: &[&str], pipeline: &Path) -> String {
    let out = Command::new(workspace_binary("cdc").unwrap())
        .args(["--log-level", "warn"])
        .args(&args[..1])
        .arg(pipeline)
        .args(&args[1..])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "cdc {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

#[test]
fn postgres_types_keep_their_type_and_value_in_the_destination() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    let columns = [
        ("i2", "smallint", "-32768"),
        ("i8", "bigint", "9223372036854775807"),
        ("n", "numeric(30,10)", "12345678901234567890.0123456789"),
        ("f4", "real", "1.5"),
        ("f8", "double precision", "'-Infinity'"),
        ("b", "boolean", "true"),
        ("vc", "character varying(5)", "'héllo'"),
        ("c3", "character(3)", "'ab'"),
        ("by", "bytea", "'\\x00ff10'"),
        ("d", "date", "'2024-02-29'"),
        (
            "ts",
            "timestamp(3) without time zone",
            "'2024-01-02 03:04:05.123'",
        ),
        (
            "tz",
            "timestamp with time zone",
            "'2024-01-02 03:04:05.123456+02'",
        ),
        ("t", "time without time zone", "'23:59:59.5'"),
        ("iv", "interval", "'1 year 2 days 03:04:05'"),
        ("u", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
        ("j", "json", "'{\"b\": 1, \"a\": [1, 2]}'"),
        ("jb", "jsonb", "'{\"a\": {\"b\": null}}'"),
        ("ai", "integer[]", "'{1,NULL,3}'"),
        ("at", "text[]", "'{\"a b\",c}'"),
        ("ip", "inet", "'10.0.0.1/8'"),
        ("bits", "bit(4)", "B'1010'"),
        ("r", "int4range", "'[1,5)'"),
        ("m", "mood", "'sad'"),
        ("nul", "text", "NULL"),
    ];
    src.sql("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        .unwrap();
    let defs: Vec<String> = columns.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
    src.sql(&format!(
        "CREATE TABLE typed (id int PRIMARY KEY, {})",
        defs.join(", ")
    ))
    .unwrap();
    let names: Vec<&str> = columns.iter().map(|(n, _, _)| *n).collect();
    let values: Vec<&str> = columns.iter().map(|(_, _, v)| *v).collect();
    let insert = |id: i32| {
        src.sql(&format!(
            "INSERT INTO typed (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        ))
        .unwrap();
    };
    insert(1);
    // Enough backfilled rows for the destination's typed COPY path; streamed rows take the
    // jsonb path: both are compared.
    // (arrays as NULL: an array has no COPY text here, so its rows go the jsonb way)
    let bulk: Vec<&str> = columns
        .iter()
        .map(|(n, _, v)| if n.starts_with('a') { "NULL" } else { *v })
        .collect();
    src.sql(&format!(
        "INSERT INTO typed (id, {}) SELECT g, {} FROM generate_series(1000, 1299) g",
        names.join(", "),
        bulk.join(", ")
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-types-pg-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["typed"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    insert(2);
    src.sql("UPDATE typed SET n = n + 1, nul = 'set' WHERE id = 1")
        .unwrap();
    cdc(&["run", "--until-caught-up"], &pipeline);
    let rows = |server: &PgServer| {
        server
            .sql("SELECT to_jsonb(whole_row) FROM typed whole_row ORDER BY id")
            .unwrap()
    };
    assert_eq!(
        rows(&dest),
        rows(&src),
        "backfilled (1) and streamed (2) rows"
    );
    let types = |server: &PgServer| {
        server
            .sql("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attnum > 0 AND attname <> 'm' ORDER BY attnum")
            .unwrap()
    };
    assert_eq!(types(&dest), types(&src), "each column keeps its type");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mariadb_types_map_without_loss() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    // (column, MariaDB type, value, the destination type, the value as the destination's text)
    let columns = [
        ("ti", "tinyint", "-128", "smallint", "-128"),
        ("bo", "tinyint(1)", "1", "smallint", "1"),
        ("su", "smallint unsigned", "65535", "integer", "65535"),
        ("mi", "mediumint", "-8388608", "integer", "-8388608"),
        ("iu", "int unsigned", "4294967295", "bigint", "4294967295"),
        (
            "bu",
            "bigint unsigned",
            "18446744073709551615",
            "numeric",
            "18446744073709551615",
        ),
        ("de", "decimal(10,2)", "1.50", "numeric", "1.50"),
        (
            "dd",
            "decimal(38,19)",
            "1234567890123456789.0123456789012345678",
            "numeric",
            "1234567890123456789.0123456789012345678",
        ),
        ("fl", "float", "1.5", "double precision", "1.5"),
        ("db", "double", "1.5e300", "double precision", "1.5e+300"),
        ("bi", "bit(8)", "b'101'", "numeric", "5"),
        ("yr", "year", "2024", "smallint", "2024"),
        ("da", "date", "'2024-02-29'", "date", "2024-02-29"),
        (
            "dt",
            "datetime(6)",
            "'2024-01-02 03:04:05.123456'",
            "timestamp without time zone",
            "2024-01-02 03:04:05.123456",
        ),
        (
            "tm",
            "timestamp(3)",
            "'2024-01-02 03:04:05.123'",
            "timestamp with time zone",
            "2024-01-02 03:04:05.123+00",
        ),
        (
            "ti2",
            "time(2)",
            "'-838:59:59.00'",
            "interval",
            "-838:59:59",
        ),
        ("vc", "varchar(20)", "'héllo'", "character varying", "héllo"),
        ("ch", "char(4)", "'ab'", "text", "ab"),
        ("tx", "text", "'it''s text'", "text", "it's text"),
        ("en", "enum('a','b')", "'b'", "text", "b"),
        ("st", "set('x','y')", "'x,y'", "text", "x,y"),
        ("vb", "varbinary(8)", "x'00ff10'", "bytea", "\\x00ff10"),
        ("bl", "blob", "x'deadbeef'", "bytea", "\\xdeadbeef"),
        (
            "js",
            "json",
            "'{\"a\": [1, 2.50]}'",
            "jsonb",
            "{\"a\": [1, 2.50]}",
        ),
        (
            "uu",
            "uuid",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        ("nu", "int", "NULL", "integer", "NULL"),
        ("y0", "year", "0", "smallint", "0"),
        (
            "l1",
            "varchar(10) character set latin1",
            "'€“”'",
            "character varying",
            "€“”",
        ),
        (
            "u16",
            "varchar(10) character set utf16",
            "'añ🙂'",
            "character varying",
            "añ🙂",
        ),
        // Dates with a zero month or day (no PostgreSQL type holds them) land as NULL.
        ("pz", "date", "'2020-00-00'", "date", "NULL"),
        (
            "pzt",
            "datetime",
            "'2020-01-00 10:00:00'",
            "timestamp without time zone",
            "NULL",
        ),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t, ..)| format!("{n} {t}"))
        .collect();
    src.sql(&format!(
        "CREATE TABLE test.typed (id int PRIMARY KEY, {})",
        defs.join(", ")
    ))
    .unwrap();
    let names: Vec<&str> = columns.iter().map(|(n, ..)| *n).collect();
    let values: Vec<&str> = columns.iter().map(|(_, _, v, ..)| *v).collect();
    let insert = |id: i32| {
        src.sql(&format!(
            "SET NAMES utf8mb4; SET sql_mode = ''; SET time_zone = '+00:00'; INSERT INTO test.typed (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        ))
        .unwrap();
    };
    insert(1);
    src.sql(&format!(
        "SET NAMES utf8mb4; SET sql_mode = ''; SET time_zone = '+00:00'; INSERT INTO test.typed (id, {}) SELECT seq, {} FROM test.seq_1000_to_1299",
        names.join(", "),
        values.join(", ")
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-types-my-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["typed"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    insert(2);
    cdc(&["run", "--until-caught-up"], &pipeline);
    let count = dest.sql("SELECT count(*) FROM typed").unwrap();
    assert_eq!(count.trim(), "302");
    for (name, source_type, _, pg_type, text) in columns {
        let got = dest
            .sql(&format!(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = '{name}'"
            ))
            .unwrap();
        assert_eq!(got.trim(), pg_type, "{source_type} maps to {pg_type}");
        let values = dest
            .sql(&format!(
                "SELECT DISTINCT coalesce({name}::text, 'NULL') FROM typed"
            ))
            .unwrap();
        assert_eq!(
            values.lines().collect::<Vec<_>>(),
            [text],
            "{source_type}: backfilled (1, 1000..1299) and streamed (2) values"
        );
    }
    // A delta table takes its values through the staged-jsonb statements: the same
    // conversion there.
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(&pipeline).unwrap()).unwrap();
    spec["materializations"][0]["bindings"]
        .as_array_mut()
        .unwrap()
        .push(json!({"source": "typed", "target": "typed_history", "delta_updates": true}));
    std::fs::write(&pipeline, spec.to_string()).unwrap();
    cdc(&["run", "--until-caught-up"], &pipeline);
    let history = dest
        .sql("SELECT count(*), count(pz), count(pzt), count(da), min(y0), min(l1), min(u16) FROM typed_history")
        .unwrap();
    assert_eq!(history.trim(), "302|0|0|302|0|€“”|añ🙂");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_source_column_is_added_and_a_type_change_stops_with_the_remedy() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql(
        "CREATE TABLE evolving (id int PRIMARY KEY, v int); INSERT INTO evolving VALUES (1, 1)",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-evolve-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["evolving"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    src.sql("ALTER TABLE evolving ADD COLUMN note text; INSERT INTO evolving VALUES (2, 2, 'new column')")
        .unwrap();
    cdc(&["run", "--until-caught-up"], &pipeline);
    let rows = |server: &PgServer| {
        server
            .sql("SELECT to_jsonb(t) FROM evolving t ORDER BY id")
            .unwrap()
    };
    assert_eq!(
        rows(&dest),
        rows(&src),
        "the new column is added and filled"
    );

    // A change the destination cannot follow stops the materialization with the remedy ...
    src.sql("ALTER TABLE evolving ALTER COLUMN v TYPE text USING v::text; INSERT INTO evolving VALUES (3, 'three', NULL)")
        .unwrap();
    let out = Command::new(workspace_binary("cdc").unwrap())
        .args(["--log-level", "warn", "run", "--until-caught-up"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a type change must stop the materialization"
    );
    assert!(
        stderr.contains("column v of") && stderr.contains("--table drop"),
        "{stderr}"
    );
    // ... which, followed, rebuilds the table in the new shape.
    cdc(
        &["backfill", "materialization", "--table", "drop"],
        &pipeline,
    );
    cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(rows(&dest), rows(&src), "rebuilt in the new shape");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The typed path's binary rows store what its text rows store: the same documents, one
/// column of each type with a binary form, edge values included, loaded by `COPY` in
/// text into one table and in binary into another, compare equal row for row; and a value
/// in a form the binary encoders do not take is refused there (its row then goes as
/// text).
#[test]
fn binary_rows_store_what_text_rows_store_type_by_type() {
    use cdc_runtime::destination::Image;
    use materialize_postgres::sql::{Column, Shape};
    use materialize_postgres::typed::{BinaryRows, row};
    use materialize_postgres::types::{Conversion, Mapped};

    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let columns: Vec<(&str, &str, Conversion, Vec<&str>)> = vec![
        (
            "i2",
            "smallint",
            Conversion::Text,
            vec!["-32768", "32767", "0"],
        ),
        (
            "i4",
            "integer",
            Conversion::Text,
            vec!["-2147483648", "2147483647"],
        ),
        (
            "i8",
            "bigint",
            Conversion::Text,
            vec!["-9223372036854775808", "9223372036854775807", "-1"],
        ),
        (
            "f4",
            "real",
            Conversion::Text,
            vec![
                "0.1",
                "1.5",
                "3.4028235e38",
                "1e-45",
                "-0.0",
                r#""NaN""#,
                r#""Infinity""#,
                "16777217",
            ],
        ),
        (
            "f8",
            "double precision",
            Conversion::Text,
            vec![
                "0.1",
                "1.7976931348623157e308",
                "5e-324",
                "-0.0",
                r#""-Infinity""#,
                "0.30000000000000004",
            ],
        ),
        ("b", "boolean", Conversion::Text, vec!["true", "false"]),
        (
            "t",
            "text",
            Conversion::Text,
            vec![r#""a\tb\\c\nd""#, r#""héllo""#, r#""""#, "12"],
        ),
        (
            "vc",
            "character varying(5)",
            Conversion::Text,
            vec![r#""héllo""#, r#""ab""#],
        ),
        (
            "c3",
            "character(3)",
            Conversion::Text,
            vec![r#""ab""#, r#""abc""#],
        ),
        (
            "n",
            "numeric",
            Conversion::Text,
            vec![
                "12345678901234567890.0123456789",
                "-0.0001",
                "0",
                "100000000",
                "-99999.99995",
                "0.10",
            ],
        ),
        (
            "n4",
            "numeric(20,4)",
            Conversion::Text,
            vec!["1.23456", "-1.00005", "9999999999.9999", "0.00005"],
        ),
        (
            "d",
            "date",
            Conversion::Text,
            vec![
                r#""2024-02-29""#,
                r#""0001-01-01""#,
                r#""9999-12-31""#,
                r#""1999-12-31""#,
            ],
        ),
        (
            "ts",
            "timestamp without time zone",
            Conversion::Text,
            vec![
                r#""2024-01-02T03:04:05.123456""#,
                r#""0001-01-01T00:00:00""#,
                r#""1970-01-01T00:00:00.5""#,
            ],
        ),
        (
            "ts3",
            "timestamp(3) without time zone",
            Conversion::Text,
            vec![
                r#""2024-01-02T03:04:05.1235""#,
                r#""2024-01-02 03:04:05.9999""#,
            ],
        ),
        (
            "tz",
            "timestamp with time zone",
            Conversion::Text,
            vec![
                r#""2024-01-02T03:04:05.123456+02:00""#,
                r#""2024-01-02T03:04:05Z""#,
                r#""1900-06-01T00:00:00-05:30""#,
                r#""2000-02-29T23:59:59.999999+14:00""#,
            ],
        ),
        (
            "j",
            "json",
            Conversion::Json,
            vec![r#"{"b": 1, "a": [1, 2]}"#, r#""s""#, "1.5"],
        ),
        (
            "jb",
            "jsonb",
            Conversion::Json,
            vec![r#"{"a": {"b": null}}"#, r#"[1, "x\ty"]"#],
        ),
        (
            "by",
            "bytea",
            Conversion::Base64,
            vec![r#""AP8Q""#, r#""""#],
        ),
        (
            "u",
            "uuid",
            Conversion::Text,
            vec![r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#],
        ),
    ];
    let shape = |name: &str| Shape {
        schema: "public".into(),
        name: name.into(),
        columns: std::iter::once(("id", "integer", Conversion::Text))
            .chain(columns.iter().map(|(n, t, c, _)| (*n, *t, *c)))
            .map(|(n, t, c)| {
                Column::new(
                    n,
                    Mapped {
                        pg_type: t.into(),
                        conversion: c,
                        warning: None,
                    },
                )
            })
            .collect(),
        key: vec!["id".into()],
        delta: false,
        reread_key: Vec::new(),
    };
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t, _, _)| format!("{n} {t}"))
        .collect();
    for table in ["as_text", "as_binary"] {
        pg.sql(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, {})",
            defs.join(", ")
        ))
        .unwrap();
    }
    let (text_shape, binary_shape) = (shape("as_text"), shape("as_binary"));
    let mut text = String::new();
    let mut binary = BinaryRows::of(&binary_shape).expect("every column has a binary form");
    // Row k takes each column's value k (wrapping); the last row is all NULL.
    let rows = columns.iter().map(|(_, _, _, v)| v.len()).max().unwrap() + 1;
    for k in 0..rows {
        // Raw JSON text, as a connector writes it: a numeric keeps all its digits.
        let fields: Vec<String> = columns
            .iter()
            .map(|(n, _, _, values)| {
                let value = if k + 1 == rows {
                    "null"
                } else {
                    values[k % values.len()]
                };
                format!("\"{n}\":{value}")
            })
            .collect();
        let image = Image::Text(
            backfill_core::consumer::Document::read(&format!(
                "{{\"id\":{k},{}}}",
                fields.join(",")
            ))
            .unwrap(),
        );
        assert!(row(&mut text, &text_shape, &image), "text row {k}");
        assert!(
            row(&mut binary, &binary_shape, &image),
            "binary row {k}: {image:?}"
        );
    }
    let dir = std::env::temp_dir().join(format!("mat-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (text_file, binary_file) = (dir.join("rows.txt"), dir.join("rows.bin"));
    std::fs::write(&text_file, text).unwrap();
    std::fs::write(&binary_file, binary.finish()).unwrap();
    let psql = |command: &str| {
        let out = testkit::servers::psql_session(&pg.url)
            .args(["-c", command])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!("\\copy as_text FROM '{}'", text_file.display()));
    psql(&format!(
        "\\copy as_binary FROM '{}' WITH (FORMAT binary)",
        binary_file.display()
    ));
    assert_eq!(
        pg.sql("SELECT count(*) FROM as_binary").unwrap().trim(),
        rows.to_string()
    );
    // Row by row as text, NaN and -0 included (float equality would call -0 = 0).
    let all = |table: &str| {
        pg.sql(&format!("SELECT r::text FROM {table} r ORDER BY id"))
            .unwrap()
    };
    assert_eq!(all("as_binary"), all("as_text"));
    let zero = pg
        .sql("SELECT (SELECT f4::text FROM as_binary WHERE id = 4) || ' ' || (SELECT f8::text FROM as_binary WHERE id = 3)")
        .unwrap();
    assert_eq!(zero.trim(), "-0 -0", "negative zero kept");
    let _ = std::fs::remove_dir_all(&dir);

    // Forms the encoders do not take: refused, to go as text.
    for (column, value) in [
        ("n", r#""NaN""#),
        ("n", "1e300"),
        ("d", r#""infinity""#),
        ("tz", r#""2024-01-02 03:04:05""#),
        ("ts", r#""2024-01-02T24:00:00""#),
        ("i2", "40000"),
        ("u", r#""A0EEBC999C0B4EF8BB6D6BB9BD380A11""#),
        ("b", r#""true""#),
    ] {
        let fields: Vec<String> = columns
            .iter()
            .map(|(n, _, _, values)| {
                let value = if *n == column { value } else { values[0] };
                format!("\"{n}\":{value}")
            })
            .collect();
        let image = Image::Text(
            backfill_core::consumer::Document::read(&format!("{{\"id\":1,{}}}", fields.join(",")))
                .unwrap(),
        );
        let mut binary = BinaryRows::of(&binary_shape).unwrap();
        assert!(
            !row(&mut binary, &binary_shape, &image),
            "{column} = {value} taken in binary"
        );
        assert_eq!(binary.rows(), 0);
    }
}

/// MariaDB's statements that arrive as query text land downstream as they happened: a
/// `TRUNCATE TABLE` empties the destination table, a transaction with savepoints lands
/// whole without its rolled-back rows, and a rolled-back XA transaction lands nothing.
#[test]
fn mariadb_truncates_savepoints_and_xa_land_as_they_happened() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql(
        "CREATE TABLE test.q (id int PRIMARY KEY, v int); INSERT INTO test.q VALUES (1, 1), (2, 2)",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-queries-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["q"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    for sql in [
        "TRUNCATE TABLE test.q",
        "INSERT INTO test.q VALUES (3, 3)",
        "BEGIN; INSERT INTO test.q VALUES (4, 4); SAVEPOINT a; INSERT INTO test.q VALUES (5, 5); ROLLBACK TO SAVEPOINT a; UPDATE test.q SET v = 30 WHERE id = 3; COMMIT",
        "XA START 'x'; INSERT INTO test.q VALUES (6, 6); XA END 'x'; XA PREPARE 'x'",
        "XA ROLLBACK 'x'",
    ] {
        src.sql(sql).unwrap();
    }
    cdc(&["run", "--until-caught-up"], &pipeline);
    let rows = dest.sql("SELECT id, v FROM q ORDER BY id").unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["3|30", "4|4"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A destination table dropped from under the materialization (by hand, by a restore) is
/// created again and loaded from the collection's start, with a warning: before, it was
/// created empty and filled from where the dropped one had stopped, every earlier row
/// missing.
#[test]
fn a_destination_table_dropped_by_hand_is_loaded_again_whole() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE test.dd (id int PRIMARY KEY, v int); INSERT INTO test.dd VALUES (1, 1), (2, 2)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-dropped-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["dd"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    dest.sql("DROP TABLE dd").unwrap();
    src.sql("INSERT INTO test.dd VALUES (3, 3); UPDATE test.dd SET v = 10 WHERE id = 1")
        .unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert!(
        said.contains("loaded from the collection's start"),
        "{said}"
    );
    let rows = dest.sql("SELECT id, v FROM dd ORDER BY id").unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["1|10", "2|2", "3|3"]);
    // Once loaded, the next run goes on from its position.
    src.sql("INSERT INTO test.dd VALUES (4, 4)").unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert!(
        !said.contains("loaded from the collection's start"),
        "{said}"
    );
    assert_eq!(dest.sql("SELECT count(*) FROM dd").unwrap().trim(), "4");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names longer than PostgreSQL's 63 bytes (MySQL and MariaDB allow 64 characters, three
/// bytes each in CJK): each long column lands in a column of its own under a fitted name,
/// the table is brought to its shape again at the next start, a rebuild swaps its shadow
/// in, and a target too long for a table name is refused with the remedy. Before, the
/// server cut each name to 63 bytes: two columns sharing their first 63 bytes stopped the
/// table's creation, a cut column was "added" again (and refused) at every later start, and
/// a rebuild of a table of 52 bytes or more could not create its shadow, whose key
/// constraint's cut name was the shadow's own.
#[test]
fn names_longer_than_postgres_allows_land_in_columns_of_their_own() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    let table = format!("orders_{}", "x".repeat(48)); // 55 bytes
    let key = format!("k{}", "e".repeat(63)); // 64 bytes
    let (a1, a2) = (
        format!("{}1", "a".repeat(63)),
        format!("{}2", "a".repeat(63)),
    );
    let cjk = "数据".repeat(11); // 22 characters, 66 bytes
    src.sql(&format!(
        "CREATE TABLE test.{table} (`{key}` int PRIMARY KEY, `{a1}` int, `{a2}` int, `{cjk}` text);
         INSERT INTO test.{table} VALUES (1, 11, 12, 'one'), (2, 21, 22, 'two')"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-long-names-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &[&table]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    src.sql(&format!(
        "INSERT INTO test.{table} VALUES (3, 31, 32, 'three'); UPDATE test.{table} SET `{a2}` = 220 WHERE `{key}` = 2"
    ))
    .unwrap();
    // The second start reads the table's columns back and finds each one.
    cdc(&["run", "--until-caught-up"], &pipeline);
    let landed = || {
        dest.sql(&format!(
            "SELECT to_jsonb(t) FROM {table} t ORDER BY 1::text"
        ))
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let mut values: Vec<String> = row
                .as_object()
                .unwrap()
                .values()
                .map(Value::to_string)
                .collect();
            values.sort();
            values.join(",")
        })
        .collect::<std::collections::BTreeSet<_>>()
    };
    let want: std::collections::BTreeSet<String> =
        ["\"one\",1,11,12", "\"two\",2,21,220", "\"three\",3,31,32"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(landed(), want);
    let columns = dest
        .sql(&format!(
            "SELECT attname FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0"
        ))
        .unwrap();
    assert_eq!(columns.lines().count(), 4, "{columns}");
    assert!(columns.lines().all(|c| c.len() <= 63), "{columns}");

    // A rebuild through a shadow table swaps in the same rows.
    let running = crate::backfill::Running::start(&pipeline);
    crate::backfill::backfill(&pipeline, &["materialization"]);
    running.stop();
    assert_eq!(landed(), want);

    // A target no PostgreSQL table can be named is refused at start, naming the limit.
    let long_target = "t".repeat(64);
    // The capture's config is a file of its own: the pipeline's one target is the table's.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        &format!("\"target\":\"{table}\""),
        &format!("\"target\":\"{long_target}\""),
    );
    assert!(text.contains(&long_target), "{text}");
    std::fs::write(&pipeline, text).unwrap();
    let out = Command::new(workspace_binary("cdc").unwrap())
        .args(["run"])
        .arg(&pipeline)
        .arg("--until-caught-up")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("63 bytes"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a pipeline of one capture of `stream` (the source table's name) landed in the
/// destination table `target`, in `dir`; returns the pipeline file.
fn pipeline_to(
    db: &dyn LiveDb,
    dest: &PgServer,
    dir: &Path,
    stream: &str,
    target: &str,
) -> std::path::PathBuf {
    let path = pipeline(db, dest, dir, &[]);
    std::fs::write(
        dir.join("config.json"),
        json!({"endpoint": db.endpoint(),
               "bindings": [{"resource": {"namespace": db.namespace(), "stream": stream}, "target": target}]})
        .to_string(),
    )
    .unwrap();
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["materializations"][0]["bindings"] = json!([{"source": target, "target": target}]);
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

/// Names that need quoting everywhere (quotes, backquotes, dots, spaces, capitals,
/// non-ASCII) in the source table's name, its key and its columns: backfilled, then
/// streamed inserts, updates and deletes, land as the source holds them.
fn quoted_names_land(db: &dyn LiveDb, dest: &PgServer, q: impl Fn(&str) -> String) {
    let t = format!("{}.{}", q(db.namespace()), q("Wé\"ird t`ab.le'"));
    let table = "Wé\"ird t`ab.le'";
    let (key, col) = ("Ke`y \"A\".b'", "Vál`ue \"x\".y'");
    db.exec(&format!(
        "CREATE TABLE {t} ({k} int PRIMARY KEY, {c} text); INSERT INTO {t} ({k}, {c}) VALUES (1, 'one'), (2, 'two')",
        k = q(key), c = q(col)
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "mat-quoted-{}-{}",
        db.namespace(),
        std::process::id()
    ));
    let pipeline = pipeline_to(db, dest, &dir, table, "quoted");
    cdc(&["run", "--until-caught-up"], &pipeline);
    db.exec(&format!(
        "INSERT INTO {t} ({k}, {c}) VALUES (3, 'three'); UPDATE {t} SET {c} = 'TWO' WHERE {k} = 2; DELETE FROM {t} WHERE {k} = 1",
        k = q(key), c = q(col)
    ))
    .unwrap();
    cdc(&["run", "--until-caught-up"], &pipeline);
    let rows = dest
        .sql(&format!(
            "SELECT \"{}\", \"{}\" FROM quoted ORDER BY 1",
            key.replace('"', "\"\""),
            col.replace('"', "\"\"")
        ))
        .unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["2|TWO", "3|three"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quoted_names_land_from_postgres() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    quoted_names_land(&src, &dest, |n| format!("\"{}\"", n.replace('"', "\"\"")));
}

#[test]
fn quoted_names_land_from_mariadb() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    quoted_names_land(&src, &dest, |n| format!("`{}`", n.replace('`', "``")));
}

/// Polls `check` until it says nothing is left to wait for (`None`), for at most a
/// minute; panics with its last word (what is still awaited) after that.
fn within_a_minute(mut check: impl FnMut() -> Option<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(awaited) = check() {
        assert!(std::time::Instant::now() < deadline, "{awaited}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Rows of `table` as `to_jsonb` text, in key order.
fn jsonb_rows(server: &PgServer, table: &str) -> String {
    server
        .sql(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY id"))
        .unwrap()
}

/// A column added with a default gives every row already there a value that no change
/// in the log carries: the table is read again, so the destination's rows take it too,
/// whether the column came while the capture was stopped (found at start against the
/// column numbers its backfill read) or while it ran (found in the stream). Before, the
/// rows already there held NULL downstream, `NOT NULL` column or not, until each was
/// next written.
#[test]
fn a_column_added_with_a_default_reaches_the_rows_already_there() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE ev (id int PRIMARY KEY, v int); INSERT INTO ev SELECT g, g FROM generate_series(1, 3) g")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-default-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["ev"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    // While stopped; and a column that fills nothing, which needs no second read.
    src.sql("ALTER TABLE ev ADD COLUMN status text NOT NULL DEFAULT 'new', ADD COLUMN note text; INSERT INTO ev VALUES (4, 4, 'four')")
        .unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(jsonb_rows(&dest, "ev"), jsonb_rows(&src, "ev"), "{said}");
    assert!(said.contains("read again"), "{said}");
    // While running: found when the table's next change brings its new shape.
    let running = crate::backfill::Running::start(&pipeline);
    // Streaming first, so the column comes after the capture read the catalog.
    src.sql("INSERT INTO ev VALUES (5, 5, 'five')").unwrap();
    within_a_minute(|| {
        (dest.sql("SELECT count(*) FROM ev").unwrap().trim() != "5")
            .then(|| "nothing streamed".into())
    });
    src.sql("ALTER TABLE ev ADD COLUMN n int DEFAULT 7; UPDATE ev SET v = 10 WHERE id = 4")
        .unwrap();
    within_a_minute(|| {
        let (got, want) = (jsonb_rows(&dest, "ev"), jsonb_rows(&src, "ev"));
        (got != want).then(|| {
            format!("the destination never took the new column's value: {got} against {want}")
        })
    });
    running.stop();
    // Once read again, a restart does not read it a third time.
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert!(!said.contains("read again"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same from MariaDB, whose stream reads each `ALTER TABLE ... ADD` where the binlog
/// has it, whether the capture ran then or reads it later.
#[test]
fn a_column_added_with_a_default_reaches_the_rows_already_there_from_mariadb() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE test.ev (id int PRIMARY KEY, v int); INSERT INTO test.ev VALUES (1, 1), (2, 2), (3, 3)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-default-my-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["ev"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    let landed = || {
        dest.sql("SELECT id, v, status, n, note FROM ev ORDER BY id")
            .unwrap_or_else(|e| e.to_string())
    };
    // While stopped; and a column that fills nothing.
    src.sql("ALTER TABLE test.ev ADD COLUMN status varchar(8) NOT NULL DEFAULT 'new', ADD COLUMN note text; INSERT INTO test.ev VALUES (4, 4, 'four', NULL)")
        .unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(
        dest.sql("SELECT id, v, status FROM ev ORDER BY id")
            .unwrap()
            .trim(),
        "1|1|new\n2|2|new\n3|3|new\n4|4|four",
        "{said}"
    );
    // While running.
    let running = crate::backfill::Running::start(&pipeline);
    src.sql("INSERT INTO test.ev VALUES (5, 5, 'five', NULL)")
        .unwrap();
    within_a_minute(|| {
        (dest.sql("SELECT count(*) FROM ev").unwrap().trim() != "5")
            .then(|| "nothing streamed".into())
    });
    src.sql("ALTER TABLE test.ev ADD COLUMN n int DEFAULT 7")
        .unwrap();
    let want = "1|1|new|7|\n2|2|new|7|\n3|3|new|7|\n4|4|four|7|\n5|5|five|7|";
    within_a_minute(|| {
        let got = landed();
        (got.trim() != want)
            .then(|| format!("the destination never took the new column's value: {got}"))
    });
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A source column widened in place (`varchar(5)` to `varchar(20)`, `numeric(6,2)` to
/// `numeric(12,4)`, `integer` to `bigint`) widens its destination column the same way, in
/// place, and the longer values land. Before, the destination kept `varchar(5)`, whose
/// base type still matched, and the first longer value stopped the materialization for
/// good ("value too long"); `integer` to `bigint` stopped it with a rebuild as the remedy.
/// A source column narrowed again keeps its wider destination column, which holds every
/// value; a change to another kind of type still stops with the remedy (see
/// `a_new_source_column_is_added_and_a_type_change_stops_with_the_remedy`).
#[test]
fn a_widened_source_column_widens_its_destination_column() {
    let Some(src) = PgServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE wide (id int PRIMARY KEY, s varchar(5), n numeric(6,2), i integer); INSERT INTO wide VALUES (1, 'abc', 1234.5, 7)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-wide-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["wide"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    src.sql("ALTER TABLE wide ALTER COLUMN s TYPE varchar(20), ALTER COLUMN n TYPE numeric(12,4), ALTER COLUMN i TYPE bigint;
             INSERT INTO wide VALUES (2, 'a much longer text', 12345678.1234, 9000000000)")
        .unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(
        jsonb_rows(&dest, "wide"),
        jsonb_rows(&src, "wide"),
        "{said}"
    );
    let types = |server: &PgServer| {
        server
            .sql("SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'wide'::regclass AND attnum > 0")
            .unwrap()
    };
    assert_eq!(types(&dest), types(&src));
    // Narrower again: the destination column holds every value, and keeps its type.
    let widened = types(&dest);
    src.sql("UPDATE wide SET i = 2 WHERE id = 2; ALTER TABLE wide ALTER COLUMN n TYPE numeric(10,2), ALTER COLUMN i TYPE integer; INSERT INTO wide VALUES (3, 'x', 1.5, 1)")
        .unwrap();
    cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(types(&dest), widened);
    assert_eq!(
        dest.sql("SELECT s, n::text, i FROM wide WHERE id = 3")
            .unwrap()
            .trim(),
        "x|1.5000|1"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same from MariaDB, whose types map to spellings of their own (`varchar(n)`,
/// `numeric(p,s)`): `MODIFY ... VARCHAR(40)` and a wider `DECIMAL` widen the destination's
/// columns, and the longer values land.
#[test]
fn a_widened_mariadb_column_widens_its_destination_column() {
    let Some(src) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dest) = PgServer::start_or_skip() else {
        return;
    };
    src.sql("CREATE TABLE test.mw (id int PRIMARY KEY, s varchar(5), d decimal(6,2)); INSERT INTO test.mw VALUES (1, 'abc', 1234.5)")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mat-wide-my-{}", std::process::id()));
    let pipeline = pipeline(&src, &dest, &dir, &["mw"]);
    cdc(&["run", "--until-caught-up"], &pipeline);
    src.sql("ALTER TABLE test.mw MODIFY s varchar(40), MODIFY d decimal(14,4); INSERT INTO test.mw VALUES (2, 'a value longer than five', 1234567890.1234)")
        .unwrap();
    let said = cdc(&["run", "--until-caught-up"], &pipeline);
    assert_eq!(
        dest.sql("SELECT id, s, d FROM mw ORDER BY id")
            .unwrap()
            .trim(),
        "1|abc|1234.5000\n2|a value longer than five|1234567890.1234",
        "{said}"
    );
    let types = dest
        .sql("SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'mw'::regclass AND attnum > 0")
        .unwrap();
    assert_eq!(
        types.trim(),
        "integer, character varying(40), numeric(14,4)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
