//! `cargo xtask demo`: the whole flow on the embedded store. A throwaway PostgreSQL with a
//! small shop is captured and materialized into a `warehouse` database on the same server
//! by one `cdc run`; changes are made while the backfill runs; then a materialization
//! backfill and a dataflow reset run while writes continue; at the end the destination
//! tables are compared with the source tables, value for value.

#![allow(clippy::print_stdout)] // the demo speaks on stdout

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::servers::PgServer;

const TABLES: [(&str, &str); 3] = [("customers", "id"), ("products", "sku"), ("orders", "id")];

/// The shop's big table for the browser tests: its backfill runs long enough to be watched
/// and cancelled.
pub(crate) const VISITS: (&str, &str) = ("visits", "id");

/// The shop on its throwaway server, the warehouse beside it, and the pipeline between.
pub(crate) struct Demo {
    pub(crate) pg: PgServer,
    pub(crate) cdc: std::path::PathBuf,
    pub(crate) pipeline: std::path::PathBuf,
    tables: Vec<(&'static str, &'static str)>,
    dir: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    /// `to_jsonb` of every row of `table` in `database`, in key order.
    fn rows(&self, database: &str, schema: &str, table: &str, key: &str) -> String {
        let base = self.pg.url.rsplit_once('/').map_or("", |(base, _)| base);
        let url = format!("{base}/{database}");
        let psql =
            testkit::servers::postgres_bindir().map_or_else(|| "psql".into(), |d| d.join("psql"));
        Command::new(psql)
            .args([url.as_str(), "-X", "-q", "-A", "-t", "-c"])
            .arg(format!(
                "SELECT to_jsonb(t) FROM {schema}.{table} t ORDER BY {key}"
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// Tables that differ between the shop and the warehouse.
    fn differing(&self) -> Vec<&'static str> {
        self.tables
            .iter()
            .filter(|(t, k)| {
                self.rows("postgres", "shop", t, k) != self.rows("warehouse", "public", t, k)
            })
            .map(|(t, _)| *t)
            .collect()
    }

    /// Waits until the warehouse equals the shop.
    pub(crate) fn converge(&self, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let differing = self.differing();
            if differing.is_empty() {
                println!(
                    "  verified after {what}: the warehouse tables equal the shop tables, value for value"
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {what}, {differing:?} differ between the shop and the warehouse"
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn cdc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.cdc)
            .args(["--log-level", "warn"])
            .args(&args[..1])
            .arg(&self.pipeline)
            .args(&args[1..])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Requests a backfill and waits until `cdc status` shows every request done.
    fn backfill(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["backfill"];
        full.extend_from_slice(args);
        println!("\n$ cdc backfill pipeline.json {}", args.join(" "));
        print!("{}", self.cdc(&full)?);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let status: Value =
                serde_json::from_str(&self.cdc(&["status", "--json"])?).unwrap_or_default();
            if status["requests"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["phase"] == "done"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("the backfill {args:?} did not finish in 2 minutes"))
    }

    /// One write of the shop's ongoing business.
    pub(crate) fn write(&self, n: usize) -> Result<(), String> {
        let sql = match n % 3 {
            0 => format!(
                "INSERT INTO shop.orders VALUES ({}, {}, 12.50, 'placed', now())",
                10_000 + n,
                1 + n % 500
            ),
            1 => format!(
                "UPDATE shop.orders SET status = 'shipped' WHERE id = {}",
                1 + n % 5000
            ),
            _ => format!(
                "UPDATE shop.customers SET email = 'c{n}@example.org' WHERE id = {}",
                1 + n % 500
            ),
        };
        self.pg.sql(&sql).map(drop).map_err(|e| e.to_string())
    }
}

fn build() -> Result<(), String> {
    crate::succeed(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--quiet",
            "-p",
            "source-postgres-bin",
            "-p",
            "cdc",
        ]),
        "building source-postgres and cdc",
    )
}

fn write_pipeline(
    dir: &Path,
    pg: &PgServer,
    tables: &[(&str, &str)],
    chunk_size: u32,
) -> Result<std::path::PathBuf, String> {
    let config = json!({
        "endpoint": {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": "postgres",
                      "tls": {"mode": "disable"}, "advanced": {"chunk_size": chunk_size}},
        "bindings": tables.iter().map(|(t, _)| json!({"resource": {"namespace": "shop", "stream": t}, "target": format!("shop/{t}")})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("shop-postgres.json"), config.to_string())
        .map_err(|e| e.to_string())?;
    let mut bindings: Vec<Value> = tables
        .iter()
        .map(|(t, _)| json!({"source": format!("shop/{t}"), "target": t}))
        .collect();
    bindings
        .push(json!({"source": "shop/orders", "target": "orders_history", "delta_updates": true}));
    let pipeline = json!({
        "store": "file:store",
        "captures": [{"name": "shop", "connector": "source-postgres", "config": "shop-postgres.json"}],
        "materializations": [{"name": "warehouse", "destination": "postgres",
            "endpoint": {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": "warehouse",
                         "tls": {"mode": "disable"}},
            "bindings": bindings}]
    });
    let path = dir.join("pipeline.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&pipeline).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "pipeline.json:\n{}",
        serde_json::to_string_pretty(&pipeline).unwrap_or_default()
    );
    Ok(path)
}

impl Demo {
    /// `cdc run pipeline.json --console=127.0.0.1:PORT` in the background, and the
    /// console's address.
    pub(crate) fn run_with_console(&self) -> Result<(Child, String), String> {
        let port = testkit::servers::free_port().map_err(|e| e.to_string())?;
        println!("\n$ cdc run pipeline.json --console=127.0.0.1:{port}   (in the background)");
        let run = Command::new(&self.cdc)
            .args(["--log-level", "warn", "run"])
            .arg(&self.pipeline)
            .arg(format!("--console=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start cdc: {e}"))?;
        Ok((run, format!("http://127.0.0.1:{port}/")))
    }

    /// Builds the binaries, starts the shop's server and writes the pipeline; with
    /// `visits`, the shop has its big table too (chunks of 100 rows, so it backfills slowly).
    pub(crate) fn start(visits: Option<u32>) -> Result<Self, String> {
        if testkit::servers::postgres_bindir().is_none() {
            return Err("the demo needs PostgreSQL's server binaries: on Debian/Ubuntu `sudo apt-get install postgresql` (the demo starts its own throwaway instance; nothing is installed as a service)".into());
        }
        println!("building source-postgres and cdc ...");
        build()?;
        let cdc = testkit::live::workspace_binary("cdc")?;
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
        let mut tables = TABLES.to_vec();
        if let Some(rows) = visits {
            pg.sql(&format!(
                "CREATE TABLE shop.visits (id bigint PRIMARY KEY, customer_id int, page text, at timestamptz);
                 INSERT INTO shop.visits SELECT g, 1 + g % 500, '/product/' || (g % 300), now() FROM generate_series(1, {rows}) g;"
            ))
            .map_err(|e| e.to_string())?;
            tables.push(VISITS);
        }
        pg.sql("CREATE DATABASE warehouse")
            .map_err(|e| e.to_string())?;
        println!(
            "shop: 500 customers, 300 products, 5000 orders{}; an empty warehouse database beside it\n",
            visits.map_or(String::new(), |v| format!(", {v} visits"))
        );
        let dir = std::env::temp_dir().join(format!("cdc-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let chunk_size = if visits.is_some() { 100 } else { 250 };
        let pipeline = write_pipeline(&dir, &pg, &tables, chunk_size)?;
        Ok(Self {
            pg,
            cdc,
            pipeline,
            tables,
            dir,
        })
    }
}

pub(crate) fn run() -> Result<(), String> {
    let demo = Demo::start(None)?;
    let (mut run, url) = demo.run_with_console()?;
    println!("  the console shows it all while the demo runs: {url}");
    let result = (|| {
        // Live changes while the backfill runs.
        std::thread::sleep(Duration::from_millis(300));
        for sql in [
            "INSERT INTO shop.orders VALUES (5001, 42, 99.50, 'placed', now())",
            "UPDATE shop.orders SET status = 'shipped' WHERE id BETWEEN 10 AND 20",
            "DELETE FROM shop.orders WHERE id = 4999",
            "UPDATE shop.products SET sku = 'SKU-9999', price = 1.00 WHERE sku = 'SKU-0001'",
            "BEGIN; INSERT INTO shop.customers VALUES (501, 'new customer', NULL); INSERT INTO shop.orders VALUES (5002, 501, 10, 'placed', now()); COMMIT",
        ] {
            demo.pg.sql(sql).map_err(|e| e.to_string())?;
            println!("  >> {sql}");
        }
        demo.converge("the backfill and the live changes")?;
        println!("\n$ cdc status pipeline.json\n{}", demo.cdc(&["status"])?);

        // Backfills while the shop keeps writing.
        let writes = std::sync::atomic::AtomicBool::new(true);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut n = 0;
                while writes.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    demo.write(n)?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok::<usize, String>(n)
            });
            let done = demo
                .backfill(&["materialization"])
                .and_then(|()| demo.backfill(&["reset"]));
            writes.store(false, std::sync::atomic::Ordering::SeqCst);
            let n = writer
                .join()
                .map_err(|_| "the writer panicked".to_string())??;
            println!("  ({n} writes while the backfills ran)");
            done
        })?;
        demo.converge("a materialization backfill and a dataflow reset under writes")?;
        println!("\n$ cdc status pipeline.json\n{}", demo.cdc(&["status"])?);
        Ok(())
    })();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(run.id().to_string())
        .status();
    let _ = run.wait();
    result
}
