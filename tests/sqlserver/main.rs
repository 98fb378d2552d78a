//! The SQL Server suite: `source-sqlserver` driven as a user would.
//!
//! Two layers. The tests at the top need no server: the binary's spec, its errors for
//! configs it cannot use, and `check` against an address where nothing listens. The rest
//! run against a real SQL Server (`TEST_SQLSERVER_URL`, or a container with the
//! `docker-tests` feature; the GitHub workflow's `sqlserver` job provides one) and print
//! `SKIPPED: no SQL Server …` elsewhere: each creates its own database with CDC enabled
//! and drops it afterwards.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};
use source_sqlserver::conn::{Client, connect};
use source_sqlserver::endpoint::Endpoint;
use testkit::checker::Row;
use testkit::live::{Capture, LiveDb, Scenario};
use testkit::servers::SqlServerTarget;
use tiberius::ColumnData;

// ---------------------------------------------------------------------------------------
// Without a server.

#[test]
fn spec_describes_the_endpoint_with_secure_defaults() {
    let Some(binary) = testkit::live::binary_or_skip("source-sqlserver") else {
        return;
    };
    let out = std::process::Command::new(binary)
        .arg("spec")
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = spec.to_string();
    for field in [
        "database",
        "password_env",
        "password_file",
        "poll_interval_ms",
        "watermarks_table",
        "cleanup_acknowledged",
        "trust_cert",
    ] {
        assert!(text.contains(field), "spec lacks {field}: {text}");
    }
    assert!(text.contains("verify-full"), "{text}");
}

#[test]
fn check_against_nothing_listening_names_the_address_and_leaks_no_secret() {
    let Some(binary) = testkit::live::binary_or_skip("source-sqlserver") else {
        return;
    };
    let port = testkit::servers::free_port().unwrap();
    let cap = Capture::new(&binary, "mssql-nothing");
    cap.config(&json!({
        "endpoint": {"host": "127.0.0.1", "port": port, "database": "shop", "user": "cdc", "password": "s3cret-value"},
        "bindings": [{"resource": {"namespace": "dbo", "stream": "t"}, "target": "t"}]
    }));
    let out = cap.run(&["check"]);
    assert!(!out.ok, "check fails when it cannot connect");
    let all = format!("{}{}", out.lines.join("\n"), out.stderr);
    assert!(all.contains(&format!("127.0.0.1:{port}")), "{all}");
    assert!(!all.contains("s3cret-value"), "the password leaked: {all}");
}

#[test]
fn configs_it_cannot_use_fail_with_one_clear_line() {
    let Some(binary) = testkit::live::binary_or_skip("source-sqlserver") else {
        return;
    };
    let cap = Capture::new(&binary, "mssql-badconfig");
    let cases = [
        (
            json!({"host": "h", "database": "d", "user": "u", "pasword": "x"}),
            "pasword",
        ),
        (
            json!({"host": "h", "database": "d", "user": "u", "password_env": "NO_SUCH_VARIABLE_FOR_TEST"}),
            "NO_SUCH_VARIABLE_FOR_TEST",
        ),
        (json!({"host": "h", "user": "u"}), "database"),
    ];
    for (endpoint, needle) in cases {
        cap.config(&json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "dbo", "stream": "t"}, "target": "t"}]}));
        let out = cap.capture();
        assert!(!out.ok);
        let error = testkit::live::the_error_line(&out.stderr);
        assert!(error.contains(needle), "{:?} lacks {needle:?}", error);
        assert!(!cap.state().exists());
    }
}

// ---------------------------------------------------------------------------------------
// Against a real SQL Server.

/// A database of its own on the target server, with CDC enabled; dropped at the end.
struct Mssql {
    target: SqlServerTarget,
    database: String,
    rt: tokio::runtime::Runtime,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Mssql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mssql({})", self.database)
    }
}

fn endpoint_for(target: &SqlServerTarget, database: &str) -> Endpoint {
    let (user, password, host, port) = target.parts().expect("TEST_SQLSERVER_URL parses");
    serde_json::from_value(json!({
        "host": host, "port": port, "database": database, "user": user, "password": password,
        "tls": {"mode": "require"}, "poll_interval_ms": 100
    }))
    .unwrap()
}

/// Runs a batch and returns the first cell of its first result, as text.
async fn batch(client: &mut Client, sql: &str) -> Result<String, String> {
    let stream = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    let results = stream.into_results().await.map_err(|e| e.to_string())?;
    Ok(results
        .first()
        .and_then(|rows| rows.first())
        .and_then(|r| r.cells().next().map(|(_, v)| cell_text(v)))
        .unwrap_or_default())
}

fn cell_text(v: &ColumnData<'_>) -> String {
    match v {
        ColumnData::String(Some(s)) => s.to_string(),
        ColumnData::I32(Some(n)) => n.to_string(),
        ColumnData::I64(Some(n)) => n.to_string(),
        ColumnData::U8(Some(n)) => n.to_string(),
        ColumnData::I16(Some(n)) => n.to_string(),
        _ => String::new(),
    }
}

impl Mssql {
    fn start_or_skip(name: &str) -> Option<Self> {
        let target = SqlServerTarget::find_or_skip()?;
        let database = format!("cdc_{name}_{}", std::process::id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let admin = endpoint_for(&target, "master");
        let client = rt.block_on(async {
            let mut master = connect(&admin).await.expect("connects to the SQL Server target");
            batch(&mut master, &format!("IF DB_ID('{database}') IS NOT NULL DROP DATABASE [{database}]; CREATE DATABASE [{database}]")).await.unwrap();
            let mut db = connect(&endpoint_for(&target, &database)).await.unwrap();
            batch(&mut db, "EXEC sys.sp_cdc_enable_db").await.unwrap();
            db
        });
        Some(Self {
            target,
            database,
            rt,
            client: Mutex::new(Some(client)),
        })
    }

    fn endpoint(&self) -> Endpoint {
        endpoint_for(&self.target, &self.database)
    }

    fn sql(&self, sql: &str) -> Result<String, String> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let client = guard.as_mut().ok_or("closed")?;
        self.rt.block_on(batch(client, sql))
    }

    /// Waits until the capture job has recorded everything committed so far.
    fn wait_for_capture(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let done = self
                .sql("SELECT CASE WHEN sys.fn_cdc_get_max_lsn() >= (SELECT MAX(start_lsn) FROM cdc.lsn_time_mapping) THEN 1 ELSE 0 END")
                .unwrap_or_default();
            if done == "1" {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Mssql {
    fn drop(&mut self) {
        if let Some(client) = self.client.lock().unwrap_or_else(|p| p.into_inner()).take() {
            drop(client);
        }
        let admin = endpoint_for(&self.target, "master");
        let db = self.database.clone();
        let _ = self.rt.block_on(async {
            let mut master = connect(&admin).await.map_err(|e| e.message().to_string())?;
            batch(
                &mut master,
                &format!("ALTER DATABASE [{db}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{db}]"),
            )
            .await
        });
    }
}

impl LiveDb for Mssql {
    fn name(&self) -> &'static str {
        "sqlserver"
    }

    fn connector(&self) -> Result<std::path::PathBuf, String> {
        testkit::live::workspace_binary("source-sqlserver")
    }

    fn endpoint(&self) -> Value {
        serde_json::to_value(self.endpoint()).unwrap()
    }

    fn namespace(&self) -> &'static str {
        "dbo"
    }

    fn exec(&self, sql: &str) -> Result<String, String> {
        self.sql(sql)
    }

    fn create_table(&self, table: &str, keyed: bool) -> String {
        format!(
            "CREATE TABLE dbo.{table} (id bigint NOT NULL{}, v int, pad nvarchar(100)); \
             EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'{table}', @role_name = NULL",
            if keyed { " PRIMARY KEY" } else { "" }
        )
    }

    fn rows(&self, table: &str) -> Result<Vec<Row>, String> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let client = guard.as_mut().ok_or("closed")?;
        self.rt.block_on(async {
            let stream = client
                .simple_query(format!("SELECT id, v, pad FROM dbo.{table} ORDER BY id"))
                .await
                .map_err(|e| e.to_string())?;
            let rows = stream
                .into_first_result()
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .iter()
                .map(|r| {
                    let mut m = Row::new();
                    let id: Option<i64> = r.get(0);
                    let v: Option<i32> = r.get(1);
                    let pad: Option<&str> = r.get(2);
                    m.insert("id".into(), json!(id));
                    m.insert("v".into(), json!(v));
                    m.insert("pad".into(), json!(pad));
                    m
                })
                .collect())
        })
    }
}

fn setup(name: &str) -> Option<(std::path::PathBuf, Mssql)> {
    let binary = testkit::live::binary_or_skip("source-sqlserver")?;
    Some((binary, Mssql::start_or_skip(name)?))
}

/// The shared live scenario: every mode under concurrent writes, tiny chunks and SIGKILLs.
#[test]
fn live_scenario_every_mode_under_writes_and_kills() {
    let Some((_, db)) = setup("scenario") else {
        return;
    };
    let scenario = Scenario {
        modes: vec![
            ResolvedMode::Precise,
            ResolvedMode::Normal,
            ResolvedMode::OnlyChanges,
            ResolvedMode::WithoutPrimaryKey,
        ],
        initial_rows: 40,
        txns: 300,
        kills: 5,
        endpoint_extra: json!({"advanced": {"chunk_size": 7}}),
    };
    let report = testkit::live::run(&db, "s", &scenario).unwrap().unwrap();
    eprintln!("sqlserver scenario: {report:?}");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// Every type renders the same backfilled and streamed, as the crate's value table says.
#[test]
fn values_render_as_documented_backfilled_and_streamed() {
    let Some((binary, db)) = setup("values") else {
        return;
    };
    db.sql(
        "CREATE TABLE dbo.v (id int PRIMARY KEY, ti tinyint, si smallint, bi bigint, b bit, d decimal(10,2),
           m money, sm smallmoney, f float, r real, dt date, tm time(7), dt2 datetime2(3), dtm datetime,
           sdt smalldatetime, dto datetimeoffset(2), c char(3), vc varchar(20), nvc nvarchar(20), nvm nvarchar(max),
           bn binary(3), vb varbinary(10), g uniqueidentifier, x xml);
         EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'v', @role_name = NULL;
         INSERT INTO dbo.v VALUES (1, 255, -32768, 9223372036854775807, 1, 1.5, 922337203685477.5807, -214748.3648,
           0.1, 1.1, '2024-02-29', '13:45:30.1234567', '2024-02-29T01:00:00.005', '2024-03-01T23:59:59.997',
           '2024-03-01T01:01:00', '2024-02-29T23:00:00.5+05:30', 'ab', 'héllo', N'héllo 🙂', REPLICATE(N'x', 5000),
           0x0001FE, 0x00FF, '6F9619FF-8B86-D011-B42D-00C04FC964FF', '<a>1</a>'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .unwrap();
    let cap = Capture::new(&binary, "mssql-values");
    cap.config(&json!({"endpoint": db.endpoint(), "bindings": [{"resource": {"namespace": "dbo", "stream": "v"}, "target": "v"}]}));
    let first = cap.capture();
    assert!(first.ok, "{}", first.stderr);
    let backfilled = testkit::live::docs(&first.lines, 0);
    assert_eq!(backfilled.len(), 2, "{:?}", first.lines);
    let row = &backfilled[0];
    let expect = json!({
        "ti": 255, "si": -32768, "bi": 9223372036854775807_i64, "b": true,
        "dt": "2024-02-29", "tm": "13:45:30.1234567", "dt2": "2024-02-29T01:00:00.005",
        "dtm": "2024-03-01T23:59:59.997", "sdt": "2024-03-01T01:01:00",
        "dto": "2024-02-29T17:30:00.50Z", "c": "ab ", "vc": "héllo", "nvc": "héllo 🙂",
        "bn": "AAH+", "vb": "AP8=", "g": "6F9619FF-8B86-D011-B42D-00C04FC964FF", "x": "<a>1</a>"
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&row[k], v, "column {k}");
    }
    assert_eq!(row["d"].to_string(), "1.50");
    assert_eq!(row["m"].to_string(), "922337203685477.5807");
    assert_eq!(row["sm"].to_string(), "-214748.3648");
    assert_eq!(row["f"].to_string(), "0.1");
    assert_eq!(row["r"].to_string(), "1.1");
    assert_eq!(row["nvm"].as_str().map(str::len), Some(5000));
    assert!(
        backfilled[1]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "id" && *k != "_meta")
            .all(|(_, v)| v.is_null())
    );
    // The same rows again, streamed.
    db.sql("INSERT INTO dbo.v SELECT id + 100, ti, si, bi, b, d, m, sm, f, r, dt, tm, dt2, dtm, sdt, dto, c, vc, nvc, nvm, bn, vb, g, x FROM dbo.v").unwrap();
    db.wait_for_capture();
    let second = cap.capture();
    assert!(second.ok, "{}", second.stderr);
    let streamed = testkit::live::docs(&second.lines, 0);
    assert_eq!(streamed.len(), 2, "{:?}", second.lines);
    for (b, s) in backfilled.iter().zip(&streamed) {
        let mut s2 = testkit::live::strip_meta(s);
        let mut b2 = testkit::live::strip_meta(b);
        s2.as_object_mut().unwrap().remove("id");
        b2.as_object_mut().unwrap().remove("id");
        assert_eq!(s2, b2, "streamed and backfilled differ");
        let source = &s["_meta"]["source"];
        assert!(
            source["pos"].is_array() && source["lsn"].is_string() && source["seqval"].is_string(),
            "{source}"
        );
    }
    // An update that leaves the nvarchar(max) alone omits it; one that changes it carries it.
    db.sql("UPDATE dbo.v SET vc = 'changed' WHERE id = 1")
        .unwrap();
    db.sql("UPDATE dbo.v SET nvm = N'short' WHERE id = 101")
        .unwrap();
    db.wait_for_capture();
    let third = cap.capture();
    let updates = testkit::live::docs(&third.lines, 0);
    assert_eq!(updates.len(), 2, "{:?}", third.lines);
    assert_eq!(updates[0]["vc"], json!("changed"));
    assert!(
        updates[0].get("nvm").is_none(),
        "unchanged large value omitted: {}",
        updates[0]
    );
    assert_eq!(updates[1]["nvm"], json!("short"));
    assert_eq!(updates[0]["_meta"]["op"], json!("u"));
    assert_eq!(updates[0]["_meta"]["before"]["vc"], json!("héllo"));
}

/// A second capture instance (after ALTER TABLE) is followed from its start LSN, with its
/// new column, and no document is misaligned.
#[test]
fn a_new_capture_instance_is_followed_with_its_columns() {
    let Some((binary, db)) = setup("rotation") else {
        return;
    };
    db.sql(
        "CREATE TABLE dbo.t (id int PRIMARY KEY, a nvarchar(10));
         EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N't', @role_name = NULL, @capture_instance = N'dbo_t_v1';
         INSERT INTO dbo.t VALUES (1, 'one')",
    )
    .unwrap();
    let cap = Capture::new(&binary, "mssql-rotation");
    cap.config(&json!({"endpoint": db.endpoint(), "bindings": [{"resource": {"namespace": "dbo", "stream": "t"}, "target": "t"}]}));
    assert!(cap.capture().ok);
    db.sql("INSERT INTO dbo.t VALUES (2, 'two'); ALTER TABLE dbo.t ADD b int; INSERT INTO dbo.t VALUES (3, 'three', 30)").unwrap();
    db.sql("EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N't', @role_name = NULL, @capture_instance = N'dbo_t_v2'").unwrap();
    db.sql("INSERT INTO dbo.t VALUES (4, 'four', 40)").unwrap();
    db.wait_for_capture();
    let out = cap.capture();
    assert!(out.ok, "{}", out.stderr);
    let docs = testkit::live::docs(&out.lines, 0);
    let by_id = |id: i64| docs.iter().find(|d| d["id"] == json!(id)).cloned().unwrap();
    assert_eq!(by_id(2)["a"], json!("two"));
    assert!(
        by_id(3).get("b").is_none(),
        "read from the old instance, which lacks b"
    );
    assert_eq!(by_id(3)["a"], json!("three"), "never misaligned");
    assert_eq!(by_id(4)["b"], json!(40), "the new instance carries b");
}

/// A position CDC cleanup ran past stops the capture with the remedy; bad credentials and
/// a table without CDC each fail with one clear line and no state file.
#[test]
fn lost_positions_and_bad_input_stop_with_the_remedy() {
    let Some((binary, db)) = setup("bad") else {
        return;
    };
    db.sql(
        "CREATE TABLE dbo.t (id int PRIMARY KEY); CREATE TABLE dbo.plain (id int PRIMARY KEY);
         EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N't', @role_name = NULL;
         INSERT INTO dbo.t VALUES (1)",
    )
    .unwrap();
    let cap = Capture::new(&binary, "mssql-bad");
    let one_error = |endpoint: Value, stream: &str, needle: &str| {
        cap.config(&json!({"endpoint": endpoint, "bindings": [{"resource": {"namespace": "dbo", "stream": stream}, "target": "t"}]}));
        let _ = std::fs::remove_file(cap.state());
        let out = cap.capture();
        assert!(!out.ok, "expected a failure containing {needle:?}");
        let error = testkit::live::the_error_line(&out.stderr);
        assert!(error.contains(needle), "{:?} lacks {needle:?}", error);
        assert!(!cap.state().exists(), "no state file is written");
    };
    let mut wrong = serde_json::to_value(db.endpoint()).unwrap();
    wrong["password"] = json!("wrong-password");
    one_error(wrong, "t", "check the user and password");
    one_error(
        serde_json::to_value(db.endpoint()).unwrap(),
        "plain",
        "sys.sp_cdc_enable_table",
    );
    one_error(
        serde_json::to_value(db.endpoint()).unwrap(),
        "nope",
        "no such table",
    );
    // A state whose position cleanup has passed.
    cap.config(&json!({"endpoint": db.endpoint(), "bindings": [{"resource": {"namespace": "dbo", "stream": "t"}, "target": "t"}]}));
    assert!(cap.capture().ok);
    for i in 2..20 {
        db.sql(&format!("INSERT INTO dbo.t VALUES ({i})")).unwrap();
    }
    db.wait_for_capture();
    db.sql("DECLARE @l binary(10) = sys.fn_cdc_get_max_lsn(); EXEC sys.sp_cdc_cleanup_change_table @capture_instance = N'dbo_t', @low_water_mark = @l, @threshold = 5000").unwrap();
    let out = cap.capture();
    assert!(!out.ok, "a lost position must stop the capture");
    assert!(
        out.stderr.contains("Raise `backfill` for every binding"),
        "{}",
        out.stderr
    );
}
