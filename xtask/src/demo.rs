//! `cargo xtask demo`: a throwaway PostgreSQL with a small shop, a live capture with
//! changes made while the backfill runs, the documents and progress as they come, and a
//! check at the end that the output, merge-applied, equals the tables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::checker::{self, BindingExpect, Oracle, Row, RunOutput};
use testkit::servers::PgServer;

const TABLES: [(&str, &str); 3] = [("customers", "id"), ("products", "sku"), ("orders", "id")];

struct Shop<'a>(&'a PgServer);

impl Oracle for Shop<'_> {
    fn final_rows(&self, binding: usize) -> Vec<Row> {
        let (table, key) = TABLES[binding];
        self.0
            .sql(&format!(
                "SELECT to_jsonb(t.*) FROM shop.{table} t ORDER BY {key}"
            ))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[allow(clippy::print_stdout)] // the demo's output
pub(crate) fn run() -> Result<(), String> {
    if testkit::servers::postgres_bindir().is_none() {
        return Err("the demo needs PostgreSQL's server binaries: on Debian/Ubuntu `sudo apt-get install postgresql` (the demo starts its own throwaway instance; nothing is installed as a service)".into());
    }
    println!("building source-postgres ...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "-p", "source-postgres-bin"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building source-postgres failed".into());
    }
    let binary = testkit::live::workspace_binary("source-postgres")?;
    println!("starting a throwaway PostgreSQL (wal_level=logical) ...");
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    pg.sql(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL, email text);
         CREATE TABLE shop.products (sku text COLLATE \"C\" PRIMARY KEY, title text, price numeric(10,2));
         CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer_id int, total numeric(12,2), status text, placed_at timestamptz);
         INSERT INTO shop.customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 500) g;
         INSERT INTO shop.products SELECT 'SKU-' || lpad(g::text, 4, '0'), 'product ' || g, (g % 97) + 0.99 FROM generate_series(1, 300) g;
         INSERT INTO shop.orders SELECT g, 1 + g % 500, (g % 1000) / 3.0, 'placed', now() - (g || ' minutes')::interval FROM generate_series(1, 5000) g;",
    )
    .map_err(|e| e.to_string())?;
    println!("shop: 500 customers, 300 products, 5000 orders; {}", pg.url);
    let dir = std::env::temp_dir().join(format!("cdc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = json!({
        "endpoint": {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": "postgres",
                      "tls": {"mode": "disable"}, "advanced": {"chunk_size": 250}},
        "bindings": TABLES.iter().map(|(t, _)| json!({"resource": {"namespace": "shop", "stream": t}, "target": format!("demo/{t}")})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    println!("\n$ source-postgres capture --config config.json --state state.json\n");
    let mut child = Command::new(&binary)
        .arg("capture")
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--state")
        .arg(dir.join("state.json"))
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start source-postgres: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut shown = 0;
            let mut last_progress = Instant::now();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(state) = v.get("checkpoint") {
                    if last_progress.elapsed() > Duration::from_millis(300) {
                        last_progress = Instant::now();
                        let progress: Vec<String> = state["bindings"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, e)| {
                                format!(
                                    "{k} {} ({} rows)",
                                    e["phase"].as_str().unwrap_or("?"),
                                    e["rows_done"]
                                )
                            })
                            .collect();
                        println!("  progress: {}", progress.join(", "));
                    }
                } else if shown < 12
                    || (v["doc"]["_meta"]["source"]["snapshot"].is_null() && shown < 40)
                {
                    shown += 1;
                    println!(
                        "  {}",
                        if line.len() > 160 {
                            format!("{}...", &line[..160])
                        } else {
                            line.clone()
                        }
                    );
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        })
    };
    // Live changes while the backfill runs.
    std::thread::sleep(Duration::from_millis(300));
    let changes = [
        "INSERT INTO shop.orders VALUES (5001, 42, 99.50, 'placed', now())",
        "UPDATE shop.orders SET status = 'shipped' WHERE id BETWEEN 10 AND 20",
        "UPDATE shop.orders SET status = 'shipped' WHERE id = 4990",
        "DELETE FROM shop.orders WHERE id = 4999",
        "UPDATE shop.customers SET email = 'new@example.com' WHERE id = 7",
        "UPDATE shop.products SET sku = 'SKU-9999', price = 1.00 WHERE sku = 'SKU-0001'",
        "BEGIN; INSERT INTO shop.customers VALUES (501, 'new customer', NULL); INSERT INTO shop.orders VALUES (5002, 501, 10, 'placed', now()); COMMIT",
    ];
    for sql in changes {
        pg.sql(sql).map_err(|e| e.to_string())?;
        println!("  >> {sql}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Wait for the backfill to finish and the changes to arrive, then stop cleanly.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = std::fs::read_to_string(dir.join("state.json")).unwrap_or_default();
        let done = serde_json::from_str::<Value>(&state).ok().is_some_and(|s| {
            s["bindings"]
                .as_object()
                .is_some_and(|m| m.values().all(|e| e["phase"] == "active"))
        });
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let count = |pred: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| pred(v))
            .count()
    };
    println!(
        "\nstopped with SIGTERM ({status}): {} lines, {} backfilled documents, {} streamed changes, {} checkpoints",
        lines.len(),
        count(&|v| v["doc"]["_meta"]["source"]["snapshot"] == true),
        count(&|v| v.get("doc").is_some() && v["doc"]["_meta"]["source"]["snapshot"].is_null()),
        count(&|v| v.get("checkpoint").is_some()),
    );
    let expects: Vec<BindingExpect> = TABLES
        .iter()
        .map(|(t, k)| BindingExpect {
            mode: backfill_core::mode::ResolvedMode::Precise,
            key: vec![(*k).to_string()],
            table: format!("shop.{t}"),
            version_column: None,
        })
        .collect();
    let violations = checker::check(
        &expects,
        &[RunOutput {
            lines,
            counters: vec![0; 3],
        }],
        &Shop(&pg),
    );
    let _ = std::fs::remove_dir_all(&dir);
    if violations.is_empty() {
        println!(
            "verified: the output, merge-applied as a destination would, equals the three tables; every key's history is clean"
        );
        Ok(())
    } else {
        Err(format!(
            "the output does not match the tables: {violations:#?}"
        ))
    }
}
