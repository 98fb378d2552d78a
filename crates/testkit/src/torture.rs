//! The torture and fault run: a connector binary driven as a user's pipeline would drive
//! it, under concurrent load, SIGKILLs and injected faults, then checked against DESIGN.md
//! §6 by [`crate::checker`].
//!
//! ```text
//!  writers (N client sessions,            connector binary ──stdout──► run outputs
//!   or pgbench / sysbench) ──► server ◄── proxy ◄─┘  ▲ SIGKILL at random moments,
//!            ▲                   ▲         ▲ cut     │ restarted from the state file
//!            │                   │ restart, crash, kill of the replication connection
//!            └─ quiesce ─► capture --until-caught-up ─► checker: merge-apply up to the
//!                                                       last checkpoint of each run,
//!                                                       compare row by row, histories
//! ```
//!
//! Why the checks are sound without knowing the interleaving:
//! * **Keys are partitioned between writers** (`n % writers`), and a key change moves a row
//!   to a fresh key of the same writer: each key is written by one session in order, so
//!   its `v` column, set from one global counter on every write, increases along its real
//!   history. A Precise image with a smaller or repeated `v` is a stale or repeated row.
//! * **Every statement is idempotent-safe** (inserts ignore conflicts, updates and deletes
//!   name one key): a transaction lost to a fault leaves the writer's idea of its keys
//!   wrong, which only turns later statements into no-ops. The table stays the oracle.
//! * **Gated tables**: Without Primary Key is exact only when not written during its
//!   backfill, and an Only Changes table must be empty until active, so both are written
//!   only once the state file says their binding is active.
//!
//! Faults are asserted per kind: a server restart or crash, a killed replication
//! connection and a network cut must be ridden out by the running process (it retries)
//! with nothing lost; a lost log (slot dropped, binlog purged) must be refused with one
//! `error:` line, a non-zero exit and the state file untouched.
//!
//! The seed fixes every writer's choices and the schedule of kills and faults; the
//! interleaving with the server and the connector is the machine's, so a replay repeats
//! the workload, not necessarily the exact race.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};

use crate::checker::{self, BindingExpect, Oracle, Row, RunOutput};
use crate::live::{LiveDb, Running, backfill_done, parse_json_rows, write_config};
use crate::proxy::Proxy;
use crate::rng::{Rng, mix};
use crate::servers::{MariaDbServer, PgServer, Throwaway};

/// How hard to push.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Fixes the workload and the schedule of kills and faults.
    pub seed: u64,
    /// How long the writers run while the connector is killed and faulted.
    pub duration: Duration,
    /// Concurrent writer sessions.
    pub writers: usize,
    /// Rows per table before the capture starts.
    pub initial_rows: usize,
    /// The connector's chunk size (tiny, so that backfills take many chunks).
    pub chunk_size: u64,
    /// Connections reading one chunk (`advanced.backfill_ranges`; where the database can
    /// share a snapshot).
    pub ranges: u64,
    /// A writer's pause between transactions.
    pub pause: Duration,
    /// Rows of each very large transaction (0: none).
    pub big_txn_rows: usize,
    /// Whether faults are injected besides SIGKILLs.
    pub faults: bool,
}

impl Settings {
    /// The configuration CI runs: short, but every kind of kill and fault happens.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            duration: Duration::from_secs(40),
            writers: 3,
            initial_rows: 300,
            chunk_size: 16,
            // One, two or three connections a chunk, by the seed.
            ranges: 1 + seed % 3,
            pause: Duration::from_millis(15),
            big_txn_rows: 3_000,
            faults: true,
        }
    }
}

/// A fault injected while the connector runs; each must be ridden out with nothing lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The server stops (fast shutdown) and starts again.
    Restart,
    /// The server is SIGKILLed and starts again (crash recovery).
    Crash,
    /// The replication connection is killed by the server (`pg_terminate_backend`, `KILL`).
    KillReplication,
    /// Every connection through the proxy is severed, and new ones refused, for a while.
    NetworkCut,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 4] = [
        Fault::Restart,
        Fault::Crash,
        Fault::KillReplication,
        Fault::NetworkCut,
    ];

    /// The faults that leave the server's clients connected (for load tools that do not
    /// reconnect).
    pub const CONNECTOR_ONLY: [Fault; 2] = [Fault::KillReplication, Fault::NetworkCut];

    /// Its name in the figures.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Restart => "server restart",
            Fault::Crash => "server crash",
            Fault::KillReplication => "replication connection killed",
            Fault::NetworkCut => "network cut",
        }
    }
}

/// The SQL dialect of the writers' statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MariaDB.
    MariaDb,
}

/// Makes a client session command that reads SQL from stdin and stops at the first error.
pub type ClientFactory = Arc<dyn Fn() -> Command + Send + Sync>;

/// A database under torture: a [`LiveDb`] (its name, connector, namespace and SQL) that
/// can also be reached through the fault proxy, written to by concurrent clients and
/// made to fail.
pub trait Victim: LiveDb {
    /// The server's loopback port (the proxy forwards to it).
    fn port(&self) -> u16;
    /// The config's `endpoint`, connecting to `port`.
    fn endpoint_at(&self, port: u16) -> Value;
    /// The writers' dialect.
    fn dialect(&self) -> Dialect;
    /// Client sessions for the writers.
    fn client(&self) -> ClientFactory;
    /// DDL creating a workload table.
    fn ddl(&self, t: &TableSpec) -> String;
    /// Every row of `table`, as `columns`, as the connector renders it.
    fn rows_of(&self, table: &str, columns: &[&str]) -> Result<Vec<Row>, String>;
    /// Injects a server-side fault (not [`Fault::NetworkCut`], which the proxy makes).
    fn inject(&mut self, fault: Fault) -> Result<(), String>;
    /// Loses the log the stopped connector would resume from; returns the fault's name.
    fn lose_log(&mut self) -> Result<&'static str, String>;
}

/// A victim whose connector scans its backfill chunks on a replica (`endpoint.replica`,
/// the replica's own endpoint), while its stream and every fault stay on the primary.
pub struct ScannedOnReplica<'a> {
    /// The primary.
    pub primary: &'a mut dyn Victim,
    /// The replica's login fields.
    pub replica: Value,
}

impl std::fmt::Debug for ScannedOnReplica<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} scanned on {}", self.primary.name(), self.replica)
    }
}

impl LiveDb for ScannedOnReplica<'_> {
    fn name(&self) -> &'static str {
        self.primary.name()
    }
    fn connector(&self) -> Result<PathBuf, String> {
        self.primary.connector()
    }
    fn endpoint(&self) -> Value {
        self.endpoint_at(self.port())
    }
    fn namespace(&self) -> &'static str {
        self.primary.namespace()
    }
    fn exec(&self, sql: &str) -> Result<String, String> {
        self.primary.exec(sql)
    }
    fn create_table(&self, table: &str, keyed: bool) -> String {
        self.primary.create_table(table, keyed)
    }
    fn rows(&self, table: &str) -> Result<Vec<Row>, String> {
        self.primary.rows(table)
    }
}

impl Victim for ScannedOnReplica<'_> {
    fn port(&self) -> u16 {
        self.primary.port()
    }
    fn endpoint_at(&self, port: u16) -> Value {
        let mut endpoint = self.primary.endpoint_at(port);
        endpoint["replica"] = self.replica.clone();
        endpoint
    }
    fn dialect(&self) -> Dialect {
        self.primary.dialect()
    }
    fn client(&self) -> ClientFactory {
        self.primary.client()
    }
    fn ddl(&self, t: &TableSpec) -> String {
        self.primary.ddl(t)
    }
    fn rows_of(&self, table: &str, columns: &[&str]) -> Result<Vec<Row>, String> {
        self.primary.rows_of(table, columns)
    }
    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        self.primary.inject(fault)
    }
    fn lose_log(&mut self) -> Result<&'static str, String> {
        self.primary.lose_log()
    }
}

/// The shape of a workload table's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyShape {
    /// `id bigint`.
    Int,
    /// `(a int, b text)`.
    Composite,
    /// `id uuid`, scattered.
    Uuid,
    /// `id text` in a linguistic collation, with mixed case, accents and punctuation.
    Text,
}

/// A workload table.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Table name.
    pub name: &'static str,
    /// Key shape.
    pub key: KeyShape,
    /// No primary key (the key columns are plain columns).
    pub keyless: bool,
    /// `pad` holds large values (TOASTed, LONGTEXT).
    pub wide: bool,
    /// The binding's mode.
    pub mode: ResolvedMode,
}

const TEXT_PREFIXES: [&str; 10] = ["a", "B", "é", "Z", "_", "ä", "-", "Ö", "c", "ß"];

impl TableSpec {
    /// The workload's tables: every key shape, wide rows, and every mode.
    pub fn all() -> Vec<TableSpec> {
        let t = |name, key, mode| TableSpec {
            name,
            key,
            keyless: false,
            wide: false,
            mode,
        };
        vec![
            t("t_int", KeyShape::Int, ResolvedMode::Normal),
            t("t_comp", KeyShape::Composite, ResolvedMode::Precise),
            t("t_uuid", KeyShape::Uuid, ResolvedMode::Precise),
            t("t_text", KeyShape::Text, ResolvedMode::Precise),
            TableSpec {
                wide: true,
                ..t("t_wide", KeyShape::Int, ResolvedMode::Precise)
            },
            t("t_only", KeyShape::Int, ResolvedMode::OnlyChanges),
            TableSpec {
                keyless: true,
                ..t("t_keyless", KeyShape::Int, ResolvedMode::WithoutPrimaryKey)
            },
        ]
    }

    /// The key columns (plain columns when keyless).
    pub fn key_columns(&self) -> &'static [&'static str] {
        match self.key {
            KeyShape::Composite => &["a", "b"],
            _ => &["id"],
        }
    }

    /// Every column.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut c = self.key_columns().to_vec();
        c.extend(["v", "pad"]);
        c
    }

    /// The key of row number `n`, as SQL literals.
    pub fn key_values(&self, n: u64) -> Vec<String> {
        match self.key {
            KeyShape::Int => vec![n.to_string()],
            KeyShape::Composite => vec![(n % 7).to_string(), format!("'k{n}'")],
            KeyShape::Uuid => {
                // A valid version-4 UUID (MariaDB refuses others), scattered everywhere else.
                let mut h = format!("{:016x}{:016x}", mix(n), mix(n ^ 0x5bd1_e995));
                h.replace_range(12..13, "4");
                h.replace_range(
                    16..17,
                    ["8", "9", "a", "b"][usize::try_from(mix(n) >> 62).unwrap_or(0)],
                );
                vec![format!(
                    "'{}-{}-{}-{}-{}'",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )]
            }
            KeyShape::Text => {
                let p = TEXT_PREFIXES[usize::try_from(mix(n) % 10).unwrap_or(0)];
                vec![format!("'{p}{n}'")]
            }
        }
    }

    fn where_key(&self, n: u64) -> String {
        self.key_columns()
            .iter()
            .zip(self.key_values(n))
            .map(|(c, v)| format!("{c} = {v}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn gated(&self) -> bool {
        matches!(
            self.mode,
            ResolvedMode::WithoutPrimaryKey | ResolvedMode::OnlyChanges
        )
    }
}

/// A bound table as the checker needs it.
#[derive(Clone, Debug)]
pub struct Bound {
    /// Table name (in the victim's namespace).
    pub table: String,
    /// Its columns, for reading it back.
    pub columns: Vec<&'static str>,
    /// Key columns; empty when keyless.
    pub key: Vec<&'static str>,
    /// The binding's mode.
    pub mode: ResolvedMode,
    /// A column every write raises, if the workload keeps one.
    pub version: Option<&'static str>,
}

impl From<&TableSpec> for Bound {
    fn from(t: &TableSpec) -> Self {
        Self {
            table: t.name.into(),
            columns: t.columns(),
            key: if t.keyless {
                vec![]
            } else {
                t.key_columns().to_vec()
            },
            mode: t.mode,
            version: Some("v"),
        }
    }
}

/// Figures a person can quote.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// What was run.
    pub name: String,
    /// The seed.
    pub seed: u64,
    /// Connector processes started.
    pub runs: usize,
    /// SIGKILLs.
    pub kills: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Transient failures the connector logged and retried.
    pub retries: usize,
    /// Write transactions sent.
    pub txns: u64,
    /// Row changes sent (statements, and rows of the large transactions).
    pub changes: u64,
    /// Transactions lost with a writer's session (faults): their effect is unknown, the
    /// table decides.
    pub lost_txns: u64,
    /// Lines the connector printed.
    pub lines: usize,
    /// How long the final `--until-caught-up` run took (the backlog left by the faults).
    pub catch_up: Duration,
    /// Tables compared.
    pub tables: usize,
    /// Rows compared.
    pub rows_compared: usize,
    /// Lost logs refused, with the error line printed.
    pub refused: Vec<String>,
    /// Guarantee violations.
    pub violations: Vec<String>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        writeln!(f, "{} (seed {}):", self.name, self.seed)?;
        writeln!(
            f,
            "  {} connector runs, {} SIGKILLs, faults: {} ({} transient failures retried)",
            self.runs,
            self.kills,
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            },
            self.retries
        )?;
        writeln!(
            f,
            "  {} transactions / {} changes written ({} lost with their session), {} lines read; final catch-up {:.1} s",
            self.txns,
            self.changes,
            self.lost_txns,
            self.lines,
            self.catch_up.as_secs_f64()
        )?;
        writeln!(
            f,
            "  {} rows in {} tables compared; refused as required: {}",
            self.rows_compared,
            self.tables,
            if self.refused.is_empty() {
                "-".into()
            } else {
                self.refused.join("; ")
            }
        )?;
        write!(f, "  {} violations", self.violations.len())?;
        for v in self.violations.iter().take(10) {
            let short: String = v.chars().take(600).collect();
            write!(f, "\n    {short}")?;
        }
        if !self.violations.is_empty() {
            write!(f, "\n  replay the workload with seed {}", self.seed)?;
        }
        Ok(())
    }
}

/// The random workload over [`TableSpec::all`] under kills and every fault. `Ok(None)`
/// means skipped (no connector binary).
pub fn random_workload(
    victim: &mut dyn Victim,
    settings: &Settings,
) -> Result<Option<Figures>, String> {
    let Some(binary) = binary_or_skip(victim) else {
        return Ok(None);
    };
    let ns = victim.namespace();
    let tables = TableSpec::all();
    let version = Arc::new(AtomicU64::new(1));
    for t in &tables {
        victim.exec(&format!("DROP TABLE IF EXISTS {ns}.{}", t.name))?;
        victim.exec(&victim.ddl(t))?;
        if t.mode == ResolvedMode::OnlyChanges {
            continue;
        }
        let mut rng = Rng::new(settings.seed ^ 0xfeed);
        let rows: Vec<String> = (0..settings.initial_rows as u64)
            .map(|n| {
                let v = version.fetch_add(1, Ordering::SeqCst);
                values_of(t, n, v, &pad(t.wide, v, &mut rng))
            })
            .collect();
        let mut script = String::new();
        for batch in rows.chunks(100) {
            let _ = writeln!(
                script,
                "INSERT INTO {ns}.{} ({}) VALUES {};",
                t.name,
                t.columns().join(", "),
                batch.join(", ")
            );
        }
        run_script(&victim.client(), &script)?;
    }
    let bound: Vec<Bound> = tables.iter().map(Bound::from).collect();
    let mut run = Torture::new(victim, &binary, "random", &bound, settings)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let tables = Arc::new(tables);
    let writers: Vec<JoinHandle<()>> = (0..settings.writers)
        .map(|w| {
            let mut writer = Writer {
                w: w as u64,
                writers: settings.writers as u64,
                rng: Rng::new(settings.seed.wrapping_add(w as u64 + 1)),
                live: tables
                    .iter()
                    .map(|t| {
                        if t.mode == ResolvedMode::OnlyChanges {
                            Vec::new()
                        } else {
                            (0..settings.initial_rows as u64)
                                .filter(|n| n % settings.writers as u64 == w as u64)
                                .collect()
                        }
                    })
                    .collect(),
                dead: vec![Vec::new(); tables.len()],
                next: settings.initial_rows as u64 / settings.writers as u64 + 1,
                tables: Arc::clone(&tables),
                version: Arc::clone(&version),
                ns,
                dialect: victim.dialect(),
                big_txn_rows: settings.big_txn_rows,
                sent: 0,
            };
            let mut session =
                Session::new(victim.client(), run.dir.join(format!("writer-{w}.log")));
            let (stop, counts, state, pause) = (
                Arc::clone(&stop),
                Arc::clone(&counts),
                run.state.clone(),
                settings.pause,
            );
            std::thread::spawn(move || {
                let mut active: Vec<bool> = writer.tables.iter().map(|t| !t.gated()).collect();
                while !stop.load(Ordering::SeqCst) {
                    if writer.sent.is_multiple_of(10) {
                        for (t, a) in writer.tables.iter().zip(active.iter_mut()) {
                            *a = *a || backfill_done(&state, &format!("{ns}.{}", t.name));
                        }
                    }
                    let (sql, changes) = writer.transaction(&active);
                    let ok = session.send(&sql);
                    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                    c.0 += 1;
                    c.1 += changes;
                    c.2 += u64::from(!ok);
                    drop(c);
                    std::thread::sleep(pause);
                }
                session.finish();
            })
        })
        .collect();
    run.drive(victim, &Fault::ALL);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let (txns, changes, lost) = *counts.lock().unwrap_or_else(|p| p.into_inner());
    run.figures.txns = txns;
    run.figures.changes = changes;
    run.figures.lost_txns = lost;
    Ok(Some(run.finish(victim)))
}

/// pgbench's TPC-B-like load (tables and transactions nobody here wrote) under kills and
/// the faults it survives (it does not reconnect after a server restart).
/// `pgbench_history` is not bound: it is keyless and written from the first moment, and
/// Without Primary Key is exact only when the table is quiet during its backfill.
pub fn pgbench(pg: &mut PgServer, settings: &Settings) -> Result<Option<Figures>, String> {
    let Some(bin) = crate::servers::postgres_bindir()
        .map(|d| d.join("pgbench"))
        .filter(|p| p.exists())
    else {
        crate::servers::skip("pgbench is not installed (package postgresql-contrib or postgresql)");
        return Ok(None);
    };
    let Some(binary) = binary_or_skip(pg) else {
        return Ok(None);
    };
    let out = Command::new(&bin)
        .args(["-i", "-q", "-s", "1"])
        .arg(&pg.url)
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bound = [
        (
            "pgbench_accounts",
            vec!["aid", "bid", "abalance", "filler"],
            "aid",
            ResolvedMode::Precise,
        ),
        (
            "pgbench_tellers",
            vec!["tid", "bid", "tbalance", "filler"],
            "tid",
            ResolvedMode::Precise,
        ),
        (
            "pgbench_branches",
            vec!["bid", "bbalance", "filler"],
            "bid",
            ResolvedMode::Normal,
        ),
    ]
    .into_iter()
    .map(|(table, columns, key, mode)| Bound {
        table: table.into(),
        columns,
        key: vec![key],
        mode,
        version: None,
    })
    .collect::<Vec<_>>();
    let mut run = Torture::new(pg, &binary, "pgbench", &bound, settings)?;
    let load = Command::new(&bin)
        .args(["-n", "-c", "4", "-j", "2", "-T"])
        .arg(settings.duration.as_secs().max(1).to_string())
        .arg(&pg.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pgbench: {e}"))?;
    run.drive(pg, &Fault::CONNECTOR_ONLY);
    let out = load
        .wait_with_output()
        .map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    run.figures.txns = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or(0);
    // TPC-B: three updates and an insert per transaction.
    run.figures.changes = run.figures.txns * 4;
    if !out.status.success() {
        run.figures.violations.push(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Some(run.finish(pg)))
}

/// sysbench's OLTP read-write mix (installed from Debian where missing and possible)
/// under kills and the faults it survives.
pub fn sysbench(maria: &mut MariaDbServer, settings: &Settings) -> Result<Option<Figures>, String> {
    let Some(bin) = sysbench_binary() else {
        crate::servers::skip("sysbench is not installed and cannot be (apt-get install sysbench)");
        return Ok(None);
    };
    let Some(binary) = binary_or_skip(maria) else {
        return Ok(None);
    };
    let args = |cmd: &str| -> Vec<String> {
        [
            "oltp_read_write",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            "--mysql-user=root",
            "--mysql-db=test",
            "--tables=2",
            "--table-size=2000",
            "--threads=4",
            "--report-interval=0",
            "--mysql-ignore-errors=all",
            cmd,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .chain([
            format!("--mysql-port={}", maria.port),
            format!("--time={}", settings.duration.as_secs().max(1)),
            format!("--rand-seed={}", settings.seed % 1_000_000 + 1),
        ])
        .collect()
    };
    maria.exec("DROP TABLE IF EXISTS test.sbtest1, test.sbtest2")?;
    let out = Command::new(&bin)
        .args(args("prepare"))
        .output()
        .map_err(|e| format!("sysbench prepare: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sysbench prepare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bound: Vec<Bound> = [
        ("sbtest1", ResolvedMode::Precise),
        ("sbtest2", ResolvedMode::Normal),
    ]
    .into_iter()
    .map(|(t, mode)| Bound {
        table: t.into(),
        columns: vec!["id", "k", "c", "pad"],
        key: vec!["id"],
        mode,
        version: None,
    })
    .collect();
    let mut run = Torture::new(maria, &binary, "sysbench", &bound, settings)?;
    let load = Command::new(&bin)
        .args(args("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sysbench: {e}"))?;
    run.drive(maria, &Fault::CONNECTOR_ONLY);
    let out = load
        .wait_with_output()
        .map_err(|e| format!("sysbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let figure = |label: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    run.figures.txns = figure("transactions:");
    run.figures.changes = figure("write:");
    if !out.status.success() {
        run.figures.violations.push(format!(
            "sysbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Some(run.finish(maria)))
}

fn sysbench_binary() -> Option<PathBuf> {
    let found = || {
        ["/usr/bin/sysbench", "/usr/local/bin/sysbench"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return Some(p);
    }
    if crate::servers::running_as_root() {
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "sysbench",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    found()
}

fn binary_or_skip(victim: &dyn Victim) -> Option<PathBuf> {
    victim
        .connector()
        .map_err(|why| crate::servers::skip(&format!("{} torture: {why}", victim.name())))
        .ok()
}

/// One torture run: its directory, config, state, proxy and figures.
struct Torture {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
    proxy: Proxy,
    bound: Vec<Bound>,
    rng: Rng,
    settings: Settings,
    runs: Vec<Vec<String>>,
    /// The runs' outputs once checked (kept for the files when something was found).
    outputs: Vec<Vec<String>>,
    figures: Figures,
}

impl Torture {
    fn new(
        victim: &dyn Victim,
        binary: &Path,
        name: &str,
        bound: &[Bound],
        settings: &Settings,
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "torture-{}-{name}-{}",
            victim.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let proxy = Proxy::start(victim.port()).map_err(|e| e.to_string())?;
        let mut endpoint = victim.endpoint_at(proxy.port);
        endpoint["advanced"] =
            json!({"chunk_size": settings.chunk_size, "backfill_ranges": settings.ranges});
        let config = write_config(
            &dir,
            &endpoint,
            victim.namespace(),
            bound.iter().map(|b| (b.table.as_str(), b.mode)),
        )?;
        Ok(Self {
            binary: binary.to_path_buf(),
            state: dir.join("state.json"),
            config,
            dir,
            proxy,
            bound: bound.to_vec(),
            rng: Rng::new(settings.seed ^ 0x5eed),
            settings: settings.clone(),
            runs: Vec::new(),
            outputs: Vec::new(),
            figures: Figures {
                name: format!("{} {name}", victim.name()),
                seed: settings.seed,
                ..Figures::default()
            },
        })
    }

    /// Runs, SIGKILLs and faults the connector until the settings' duration has passed.
    fn drive(&mut self, victim: &mut dyn Victim, faults: &[Fault]) {
        let deadline = Instant::now() + self.settings.duration;
        // Every third run meets a fault, the kinds in turn from a seeded start, so that a
        // short run meets every kind.
        let first = self.rng.index(faults.len());
        let mut cycle = 0usize;
        while Instant::now() < deadline {
            cycle += 1;
            let mut run = Running::start(&self.binary, &self.config, &self.state, false);
            let life = Duration::from_millis(self.rng.range(300, 2_500));
            let fault = (self.settings.faults && !faults.is_empty() && cycle % 3 == 2)
                .then(|| faults[(first + cycle / 3) % faults.len()]);
            let mut exited = run.watch(life);
            if let (Some(fault), None) = (fault, exited) {
                let injected = match fault {
                    Fault::NetworkCut => {
                        self.proxy
                            .cut(Duration::from_millis(self.rng.range(500, 3_000)));
                        Ok(())
                    }
                    other => victim.inject(other),
                };
                match injected {
                    Ok(()) => {
                        *self.figures.faults.entry(fault.name()).or_insert(0) += 1;
                    }
                    Err(e) => self
                        .figures
                        .violations
                        .push(format!("injecting {}: {e}", fault.name())),
                }
                // Long enough to reconnect and make progress after the fault.
                exited = run.watch(Duration::from_millis(self.rng.range(3_000, 5_000)));
                if let Some(status) = exited {
                    let (_, stderr) = run.collect();
                    self.figures.violations.push(format!(
                        "the connector exited ({status}) instead of riding out a {}: {}",
                        fault.name(),
                        error_line(&stderr)
                    ));
                    continue;
                }
            }
            if let Some(status) = exited {
                let (lines, stderr) = run.collect();
                self.figures.violations.push(format!(
                    "the connector exited on its own ({status}): {}",
                    error_line(&stderr)
                ));
                self.keep(lines, &stderr);
                continue;
            }
            run.kill();
            self.figures.kills += 1;
            let (lines, stderr) = run.collect();
            self.keep(lines, &stderr);
        }
    }

    fn keep(&mut self, lines: Vec<String>, stderr: &str) {
        self.figures.runs += 1;
        self.figures.lines += lines.len();
        self.figures.retries += stderr.matches("transient failure").count();
        self.runs.push(lines);
    }

    /// The final `--until-caught-up` run, the check, and the lost log that must be refused.
    fn finish(mut self, victim: &mut dyn Victim) -> Figures {
        let started = Instant::now();
        let mut last = Running::start(&self.binary, &self.config, &self.state, true);
        let finished = last.watch(Duration::from_secs(600));
        self.figures.catch_up = started.elapsed();
        match finished {
            Some(status) if status.success() => {}
            Some(status) => {
                let (_, stderr) = last.collect();
                self.figures.violations.push(format!(
                    "the final --until-caught-up run failed ({status}): {}",
                    error_line(&stderr)
                ));
                self.outputs = std::mem::take(&mut self.runs);
                return self.done();
            }
            None => {
                last.kill();
                self.figures
                    .violations
                    .push("the final --until-caught-up run did not finish in 10 minutes".into());
            }
        }
        let (lines, stderr) = last.collect();
        self.keep(lines, &stderr);
        let ns = victim.namespace();
        let expects: Vec<BindingExpect> = self
            .bound
            .iter()
            .map(|b| BindingExpect {
                mode: b.mode,
                key: b.key.iter().map(|k| (*k).to_string()).collect(),
                table: format!("{ns}.{}", b.table),
                version_column: b.version.map(str::to_string),
            })
            .collect();
        self.outputs = std::mem::take(&mut self.runs);
        let outputs: Vec<RunOutput> = self
            .outputs
            .iter()
            .map(|lines| RunOutput {
                lines: lines.clone(),
                counters: vec![0; expects.len()],
            })
            .collect();
        let mut read_errors = Vec::new();
        let finals: Vec<Vec<Row>> = self
            .bound
            .iter()
            .map(|b| {
                victim.rows_of(&b.table, &b.columns).unwrap_or_else(|e| {
                    read_errors.push(e);
                    Vec::new()
                })
            })
            .collect();
        self.figures.violations.extend(read_errors);
        self.figures.tables = finals.len();
        self.figures.rows_compared = finals.iter().map(Vec::len).sum();
        let oracle = TableOracle { finals };
        self.figures
            .violations
            .extend(checker::check(&expects, &outputs, &oracle));
        self.refuse_lost_log(victim);
        self.done()
    }

    /// The figures; the run's files, with every run's output, are kept when something
    /// was found.
    fn done(self) -> Figures {
        if self.figures.violations.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            for (i, lines) in self.outputs.iter().enumerate() {
                let _ =
                    std::fs::write(self.dir.join(format!("run-{i:03}.jsonl")), lines.join("\n"));
            }
            eprintln!("torture: files kept in {}", self.dir.display());
        }
        self.figures
    }

    /// Loses the log under the stopped connector; its next run must stop with one error
    /// line and a non-zero exit, and leave the state file as it was.
    fn refuse_lost_log(&mut self, victim: &mut dyn Victim) {
        let before = std::fs::read(&self.state).unwrap_or_default();
        let what = match victim.lose_log() {
            Ok(w) => w,
            Err(e) => {
                self.figures.violations.push(format!("losing the log: {e}"));
                return;
            }
        };
        let mut run = Running::start(&self.binary, &self.config, &self.state, true);
        let status = run.watch(Duration::from_secs(120));
        if status.is_none() {
            run.kill();
        }
        let (_, stderr) = run.collect();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        let after = std::fs::read(&self.state).unwrap_or_default();
        match status {
            Some(s) if !s.success() && errors.len() == 1 && before == after => {
                self.figures.refused.push(format!("{what}: {}", errors[0]));
            }
            _ => self.figures.violations.push(format!(
                "{what} was not refused cleanly (exit {status:?}, state file {}): {stderr}",
                if before == after {
                    "unchanged"
                } else {
                    "changed"
                }
            )),
        }
    }
}

/// The `error:` line of a failed run, or where it panicked, or its last line.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    if let Some(l) = lines.iter().rfind(|l| l.starts_with("error:")) {
        return (*l).to_string();
    }
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        return lines[i..lines.len().min(i + 2)].join(" ");
    }
    lines.last().copied().unwrap_or("").to_string()
}

/// The tables after the final run, read once.
struct TableOracle {
    finals: Vec<Vec<Row>>,
}

impl Oracle for TableOracle {
    fn final_rows(&self, binding: usize) -> Vec<Row> {
        self.finals.get(binding).cloned().unwrap_or_default()
    }

    /// Only Changes tables are empty until their binding is active (the writers wait).
    fn rows_at(&self, _binding: usize, _position: &Value) -> Option<Vec<Row>> {
        Some(Vec::new())
    }
}

/// Runs a script through one client session (large values do not fit a command line).
fn run_script(client: &ClientFactory, sql: &str) -> Result<(), String> {
    let mut child = client()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a client: {e}"))?;
    let written = child
        .stdin
        .take()
        .is_some_and(|mut s| s.write_all(sql.as_bytes()).is_ok());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if written && out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("script failed: {tail}"))
    }
}

/// A writer's client session: SQL piped into a client process that stops at the first
/// error; when it has stopped (a fault, a restart), the next transaction starts a new one.
struct Session {
    client: ClientFactory,
    log: PathBuf,
    child: Option<Child>,
}

impl Session {
    fn new(client: ClientFactory, log: PathBuf) -> Self {
        Self {
            client,
            log,
            child: None,
        }
    }

    /// Sends one transaction; `false` when the session was found dead (its fate unknown).
    fn send(&mut self, sql: &str) -> bool {
        if self.child.is_none() {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log);
            let mut cmd = (self.client)();
            cmd.stdin(Stdio::piped()).stdout(Stdio::null());
            cmd.stderr(log.map_or_else(|_| Stdio::null(), Stdio::from));
            self.child = cmd.spawn().ok();
        }
        let Some(child) = self.child.as_mut() else {
            std::thread::sleep(Duration::from_millis(200));
            return false;
        };
        let written = child
            .stdin
            .as_mut()
            .is_some_and(|s| s.write_all(sql.as_bytes()).is_ok());
        if written && matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
        std::thread::sleep(Duration::from_millis(200));
        false
    }

    /// Closes the session after its last statement ran.
    fn finish(mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(120);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One writer: its keys (`n % writers == w`), what it believes exists, and its choices.
struct Writer {
    w: u64,
    writers: u64,
    rng: Rng,
    tables: Arc<Vec<TableSpec>>,
    live: Vec<Vec<u64>>,
    dead: Vec<Vec<u64>>,
    next: u64,
    version: Arc<AtomicU64>,
    ns: &'static str,
    dialect: Dialect,
    big_txn_rows: usize,
    sent: u64,
}

impl Writer {
    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next * self.writers + self.w
    }

    fn version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst)
    }

    /// One transaction's SQL and its number of row changes.
    fn transaction(&mut self, active: &[bool]) -> (String, u64) {
        self.sent += 1;
        let mut sql = String::from("BEGIN;\n");
        let big = self.big_txn_rows > 0
            && self.w == 0
            && (self.sent == 50 || self.rng.chance(1.0 / 3_000.0));
        if big {
            // A very large transaction: many rows into the integer-keyed table.
            let t = self.tables[0].clone();
            let rows: Vec<String> = (0..self.big_txn_rows)
                .map(|_| {
                    let n = self.fresh();
                    self.live[0].push(n);
                    let v = self.version();
                    values_of(&t, n, v, &format!("big{v}"))
                })
                .collect();
            for batch in rows.chunks(500) {
                let _ = writeln!(sql, "{};", self.insert(&t, &batch.join(", ")));
            }
            sql.push_str("COMMIT;\n");
            return (sql, self.big_txn_rows as u64);
        }
        let statements = self.rng.range(1, 5);
        let writable: Vec<usize> = (0..self.tables.len()).filter(|&t| active[t]).collect();
        for _ in 0..statements {
            let t = writable[self.rng.index(writable.len())];
            let stmt = self.statement(t);
            sql.push_str(&stmt);
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT;\n");
        (sql, statements)
    }

    fn insert(&self, t: &TableSpec, values: &str) -> String {
        let (ignore, conflict) = match (self.dialect, t.keyless) {
            (_, true) => ("", ""),
            (Dialect::Postgres, false) => ("", " ON CONFLICT DO NOTHING"),
            (Dialect::MariaDb, false) => ("IGNORE ", ""),
        };
        format!(
            "INSERT {ignore}INTO {}.{} ({}) VALUES {values}{conflict}",
            self.ns,
            t.name,
            t.columns().join(", ")
        )
    }

    fn statement(&mut self, t: usize) -> String {
        let spec = self.tables[t].clone();
        let table = format!("{}.{}", self.ns, spec.name);
        let v = self.version();
        let roll = self.rng.range(0, 100);
        if self.live[t].is_empty() || roll < 30 {
            let n = self.fresh();
            self.live[t].push(n);
            let pad = pad(spec.wide, v, &mut self.rng);
            return self.insert(&spec, &values_of(&spec, n, v, &pad));
        }
        let i = self.rng.index(self.live[t].len());
        let n = self.live[t][i];
        match roll {
            30..60 => {
                // Wide rows: half the updates leave the large value alone (unchanged TOAST).
                let pad = if spec.wide && self.rng.chance(0.5) {
                    String::new()
                } else {
                    format!(", pad = '{}'", pad(spec.wide, v, &mut self.rng))
                };
                format!(
                    "UPDATE {table} SET v = {v}{pad} WHERE {}",
                    spec.where_key(n)
                )
            }
            60..70 if !spec.keyless => {
                let n2 = self.fresh();
                self.live[t][i] = n2;
                let set: Vec<String> = spec
                    .key_columns()
                    .iter()
                    .zip(spec.key_values(n2))
                    .map(|(c, val)| format!("{c} = {val}"))
                    .collect();
                format!(
                    "UPDATE {table} SET {}, v = {v} WHERE {}",
                    set.join(", "),
                    spec.where_key(n)
                )
            }
            60..85 => {
                self.live[t].swap_remove(i);
                self.dead[t].push(n);
                format!("DELETE FROM {table} WHERE {}", spec.where_key(n))
            }
            _ => {
                // Re-insert a deleted key when there is one.
                let n = if self.dead[t].is_empty() {
                    self.fresh()
                } else {
                    let j = self.rng.index(self.dead[t].len());
                    self.dead[t].swap_remove(j)
                };
                self.live[t].push(n);
                let pad = pad(spec.wide, v, &mut self.rng);
                self.insert(&spec, &values_of(&spec, n, v, &pad))
            }
        }
    }
}

/// `(key…, v, 'pad')` of row `n`.
fn values_of(t: &TableSpec, n: u64, v: u64, pad: &str) -> String {
    let mut vals = t.key_values(n);
    vals.push(v.to_string());
    vals.push(format!("'{pad}'"));
    format!("({})", vals.join(", "))
}

/// A small pad, or for wide tables 4 to 12 KB that do not compress (so PostgreSQL stores
/// them out of line).
fn pad(wide: bool, v: u64, rng: &mut Rng) -> String {
    if !wide {
        return format!("p{v}");
    }
    let words = rng.range(250, 750);
    let mut s = String::with_capacity(12_000);
    for _ in 0..words {
        let _ = write!(s, "{:016x}", rng.next());
    }
    s
}

impl Victim for PgServer {
    fn port(&self) -> u16 {
        self.port
    }

    fn endpoint_at(&self, port: u16) -> Value {
        json!({"host": "127.0.0.1", "port": port, "database": "postgres", "user": "postgres"})
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn client(&self) -> ClientFactory {
        let url = self.url.clone();
        Arc::new(move || crate::servers::psql_session(&url))
    }

    fn ddl(&self, t: &TableSpec) -> String {
        let key = match t.key {
            KeyShape::Int => "id bigint",
            KeyShape::Composite => "a int, b text",
            KeyShape::Uuid => "id uuid",
            KeyShape::Text => "id text COLLATE \"en-x-icu\"",
        };
        let pk = if t.keyless {
            String::new()
        } else {
            format!(", PRIMARY KEY ({})", t.key_columns().join(", "))
        };
        let mut ddl = format!(
            "CREATE TABLE public.{} ({key}, v bigint, pad text{pk})",
            t.name
        );
        if t.keyless {
            let _ = write!(ddl, "; ALTER TABLE public.{} REPLICA IDENTITY FULL", t.name);
        }
        if t.wide {
            // Out of line, and REPLICA IDENTITY FULL as `check` recommends: with the default
            // identity a key change cannot carry an unchanged TOASTed value to the new key
            // (DESIGN.md §5), which the torture's key changes would find.
            let _ = write!(
                ddl,
                "; ALTER TABLE public.{0} ALTER pad SET STORAGE EXTERNAL; ALTER TABLE public.{0} REPLICA IDENTITY FULL",
                t.name
            );
        }
        ddl
    }

    fn rows_of(&self, table: &str, _columns: &[&str]) -> Result<Vec<Row>, String> {
        parse_json_rows(&self.exec(&format!("SELECT to_jsonb(t.*) FROM public.{table} t"))?)
    }

    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        match fault {
            Fault::Restart => self.restart_with(&[]).map_err(|e| e.to_string()),
            Fault::Crash => self.crash_and_restart().map_err(|e| e.to_string()),
            Fault::KillReplication => self
                .sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication")
                .map(drop)
                .map_err(|e| e.to_string()),
            Fault::NetworkCut => Err("the proxy cuts the network".into()),
        }
    }

    fn lose_log(&mut self) -> Result<&'static str, String> {
        // The walsender of the last run may take a moment to go.
        for _ in 0..50 {
            let dropped = self.sql(
                "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active",
            );
            if dropped.as_deref().is_ok_and(|n| n != "0") {
                return Ok("replication slot dropped");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("no inactive replication slot to drop".into())
    }
}

impl Victim for MariaDbServer {
    fn port(&self) -> u16 {
        self.port
    }

    fn endpoint_at(&self, port: u16) -> Value {
        json!({"host": "127.0.0.1", "port": port, "user": "root"})
    }

    fn dialect(&self) -> Dialect {
        Dialect::MariaDb
    }

    fn client(&self) -> ClientFactory {
        let port = self.port;
        Arc::new(move || crate::servers::mariadb_session(port))
    }

    fn ddl(&self, t: &TableSpec) -> String {
        let key = match t.key {
            KeyShape::Int => "id bigint",
            KeyShape::Composite => "a int, b varchar(40)",
            KeyShape::Uuid => "id uuid",
            KeyShape::Text => "id varchar(40) COLLATE utf8mb4_unicode_ci",
        };
        let pk = if t.keyless {
            String::new()
        } else {
            format!(", PRIMARY KEY ({})", t.key_columns().join(", "))
        };
        let pad = if t.wide { "longtext" } else { "text" };
        format!(
            "CREATE TABLE test.{} ({key}, v bigint, pad {pad}{pk})",
            t.name
        )
    }

    fn rows_of(&self, table: &str, columns: &[&str]) -> Result<Vec<Row>, String> {
        let pairs: Vec<String> = columns.iter().map(|c| format!("'{c}', {c}")).collect();
        parse_json_rows(&self.exec(&format!(
            "SELECT JSON_OBJECT({}) FROM test.{table}",
            pairs.join(", ")
        ))?)
    }

    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        match fault {
            Fault::Restart => self.restart_with(&[]).map_err(|e| e.to_string()),
            Fault::Crash => self.crash_and_restart().map_err(|e| e.to_string()),
            Fault::KillReplication => {
                let ids = self
                    .sql("SELECT id FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%'")
                    .map_err(|e| e.to_string())?;
                for id in ids.lines().filter(|l| !l.trim().is_empty()) {
                    // It may be gone already.
                    let _ = self.sql(&format!("KILL {id}"));
                }
                Ok(())
            }
            Fault::NetworkCut => Err("the proxy cuts the network".into()),
        }
    }

    fn lose_log(&mut self) -> Result<&'static str, String> {
        // A transaction the stopped connector has not read, in a file about to go: the
        // connector resumes by GTID, which survives purged files that held nothing it
        // still needed, so only a purge of something undelivered loses its position.
        self.sql(
            "CREATE TABLE IF NOT EXISTS test.torture_purged (id INT PRIMARY KEY);
             REPLACE INTO test.torture_purged VALUES (1);
             FLUSH BINARY LOGS",
        )
        .map_err(|e| e.to_string())?;
        let status = self.sql("SHOW MASTER STATUS").map_err(|e| e.to_string())?;
        let file = status
            .split_whitespace()
            .next()
            .ok_or("SHOW MASTER STATUS printed nothing")?
            .to_string();
        // The server skips, with only a warning, a file a binlog dump thread still reads:
        // the killed connector's thread may not have noticed yet. End such threads (the
        // connector is stopped) and purge until only the current file is left.
        for _ in 0..50 {
            let dumps = self
                .sql("SELECT GROUP_CONCAT(id) FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%'")
                .map_err(|e| e.to_string())?;
            for id in dumps.trim().split(',').filter(|s| s.parse::<u64>().is_ok()) {
                let _ = self.sql(&format!("KILL {id}"));
            }
            // A file is purged only once InnoDB's binlog checkpoint has passed it.
            self.sql(&format!("FLUSH ENGINE LOGS; PURGE BINARY LOGS TO '{file}'"))
                .map_err(|e| e.to_string())?;
            let left = self.sql("SHOW BINARY LOGS").map_err(|e| e.to_string())?;
            if left.lines().filter(|l| !l.trim().is_empty()).count() == 1 {
                return Ok("binlog purged");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("older binlog files stayed after PURGE BINARY LOGS".into())
    }
}
