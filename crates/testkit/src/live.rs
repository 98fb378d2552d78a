//! The live scenarios, written once and generic over the database (DESIGN.md §9).
//!
//! A database joins by implementing [`LiveDb`] (how to run SQL, the DDL of the scenario
//! tables, how to read a table back as the connector renders it). Every scenario then
//! drives the connector *binary* exactly as a user's pipeline would: it writes a config
//! and runs `capture` against a state file, reads stdout line by line, SIGKILLs the
//! process at random moments and restarts it from the state file, finishes with
//! `--until-caught-up` once the writers are quiet, and hands every run's output to
//! [`crate::checker`], which merge-applies it and compares with the table.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backfill_core::mode::ResolvedMode;
use serde_json::{Value, json};

use crate::checker::{self, BindingExpect, Oracle, Row, RunOutput};

/// A database as the scenarios need it.
pub trait LiveDb: Sync {
    /// Short name for messages (`postgres`, `mariadb`).
    fn name(&self) -> &'static str;
    /// The connector binary, or why it cannot be had (the scenario is then skipped).
    fn connector(&self) -> Result<PathBuf, String>;
    /// The config's `endpoint` section.
    fn endpoint(&self) -> Value;
    /// The namespace (schema or database) the scenario tables live in.
    fn namespace(&self) -> &'static str;
    /// Runs SQL statements.
    fn exec(&self, sql: &str) -> Result<String, String>;
    /// DDL creating `table` as `(id <int> [primary key], v int, pad text)`; keyless when
    /// `keyed` is false.
    fn create_table(&self, table: &str, keyed: bool) -> String;
    /// Every row of `table` as the connector renders it.
    fn rows(&self, table: &str) -> Result<Vec<Row>, String>;
}

/// The connector binary built in this workspace's target directory, if it exists.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!("{name} is not built (cargo build -p {name})"))
}

/// The connector binary, or `None` after printing why the test is skipped.
pub fn binary_or_skip(name: &str) -> Option<PathBuf> {
    workspace_binary(name)
        .map_err(|why| crate::servers::skip(&why))
        .ok()
}

/// A database whose connector runs with a debug build's sabotage switch set (`VAR=value`
/// in its environment), through a script that sets it and execs the binary: a scenario
/// run through it shows that the checker catches what the switch breaks.
pub struct Sabotaged<'a> {
    db: &'a dyn LiveDb,
    script: PathBuf,
}

impl<'a> Sabotaged<'a> {
    /// `db`'s connector with `switch` (`VAR=value`) in its environment.
    pub fn new(db: &'a dyn LiveDb, switch: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let binary = db.connector().expect("the connector is built");
        let script =
            std::env::temp_dir().join(format!("sabotaged-{}-{}", db.name(), std::process::id()));
        std::fs::write(
            &script,
            format!("#!/bin/sh\n{switch} exec {} \"$@\"\n", binary.display()),
        )
        .expect("the sabotage script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("the sabotage script");
        Self { db, script }
    }
}

impl std::fmt::Debug for Sabotaged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sabotaged({}, {})",
            self.db.name(),
            self.script.display()
        )
    }
}

impl LiveDb for Sabotaged<'_> {
    fn name(&self) -> &'static str {
        self.db.name()
    }
    fn connector(&self) -> Result<PathBuf, String> {
        Ok(self.script.clone())
    }
    fn endpoint(&self) -> Value {
        self.db.endpoint()
    }
    fn namespace(&self) -> &'static str {
        self.db.namespace()
    }
    fn exec(&self, sql: &str) -> Result<String, String> {
        self.db.exec(sql)
    }
    fn create_table(&self, table: &str, keyed: bool) -> String {
        self.db.create_table(table, keyed)
    }
    fn rows(&self, table: &str) -> Result<Vec<Row>, String> {
        self.db.rows(table)
    }
}

impl Drop for Sabotaged<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.script);
    }
}

/// Every resolved mode, for the scenarios that run them all at once.
pub const EVERY_MODE: [ResolvedMode; 4] = [
    ResolvedMode::Precise,
    ResolvedMode::Normal,
    ResolvedMode::OnlyChanges,
    ResolvedMode::WithoutPrimaryKey,
];

/// How a scenario runs.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Mode of each table (`WithoutPrimaryKey` makes it keyless).
    pub modes: Vec<ResolvedMode>,
    /// Rows per table before the capture starts.
    pub initial_rows: usize,
    /// Write transactions while the capture runs.
    pub txns: usize,
    /// SIGKILL-and-restart cycles while the writers run.
    pub kills: usize,
    /// Advanced endpoint options merged into the endpoint (for example a tiny chunk size).
    pub endpoint_extra: Value,
}

/// Figures from one scenario run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Connector runs.
    pub runs: usize,
    /// SIGKILLs.
    pub kills: usize,
    /// Lines read.
    pub lines: usize,
    /// Guarantee violations found by the checker.
    pub violations: Vec<String>,
}

struct TableOracle<'a> {
    db: &'a dyn LiveDb,
    tables: Vec<String>,
}

impl Oracle for TableOracle<'_> {
    fn final_rows(&self, binding: usize) -> Vec<Row> {
        self.db.rows(&self.tables[binding]).unwrap_or_default()
    }

    /// Only Changes tables are empty until their binding is active (see `run`).
    fn rows_at(&self, _binding: usize, _position: &Value) -> Option<Vec<Row>> {
        Some(Vec::new())
    }
}

/// How a scenario's runs are made: the connector driven directly from a state file
/// ([`ConnectorDriver`]), or through the `cdc` runtime and its store
/// (`crate::pipeline::PipelineDriver`).
pub trait Driver {
    /// One run, SIGKILLed (whatever this driver kills) after `after`; `k` counts them.
    fn killed_run(&mut self, k: usize, after: Duration);
    /// The last run, to its end (`--until-caught-up`).
    fn final_run(&mut self);
    /// The output for the checker: one line list per run, as a consumer read it.
    fn outputs(&mut self) -> Vec<Vec<String>>;
    /// The JSON file that shows whether a binding is active: a state, or a record holding
    /// one under `"state"`.
    fn state_file(&self) -> PathBuf;
}

/// Runs the connector binary itself against a state file.
#[derive(Debug)]
pub struct ConnectorDriver {
    binary: PathBuf,
    config: PathBuf,
    state: PathBuf,
    runs: Vec<Vec<String>>,
}

impl ConnectorDriver {
    /// The connector `binary` with `config`, its state in `dir`.
    pub fn new(binary: &Path, config: &Path, dir: &Path) -> Self {
        Self {
            binary: binary.to_path_buf(),
            config: config.to_path_buf(),
            state: dir.join("state.json"),
            runs: Vec::new(),
        }
    }
}

impl Driver for ConnectorDriver {
    fn killed_run(&mut self, _k: usize, after: Duration) {
        let lines = capture(&self.binary, &self.config, &self.state, false, Some(after));
        self.runs.push(lines);
    }

    fn final_run(&mut self) {
        let lines = capture(&self.binary, &self.config, &self.state, true, None);
        self.runs.push(lines);
    }

    fn outputs(&mut self) -> Vec<Vec<String>> {
        std::mem::take(&mut self.runs)
    }

    fn state_file(&self) -> PathBuf {
        self.state.clone()
    }
}

/// Runs a scenario: creates the tables, captures under concurrent writes and SIGKILLs, and
/// checks the output. `Ok(None)` means skipped (no connector binary).
pub fn run(db: &dyn LiveDb, name: &str, scenario: &Scenario) -> Result<Option<Report>, String> {
    run_with(db, name, scenario, &|binary, config, dir| {
        Ok(Box::new(ConnectorDriver::new(binary, config, dir)))
    })
}

/// [`run`] for a test that has already checked the connector is built: the report, its
/// figures printed for the test's log.
pub fn run_reported(db: &dyn LiveDb, name: &str, scenario: &Scenario) -> Report {
    let report = run(db, name, scenario)
        .expect("scenario setup")
        .expect("the connector is built");
    eprintln!(
        "{name}: {} runs, {} kills, {} lines",
        report.runs, report.kills, report.lines
    );
    report
}

/// Makes a scenario's [`Driver`] from the connector binary, its config and a directory;
/// `Ok(None)` when what it needs is missing (the scenario is skipped).
pub type MakeDriver<'a> =
    &'a dyn Fn(&Path, &Path, &Path) -> Result<Box<dyn Driver>, Option<String>>;

/// [`run`] with the runs made by the driver `make` returns.
pub fn run_with(
    db: &dyn LiveDb,
    name: &str,
    scenario: &Scenario,
    make: MakeDriver<'_>,
) -> Result<Option<Report>, String> {
    let binary = match db.connector() {
        Ok(b) => b,
        Err(why) => {
            crate::servers::skip(&format!("{} scenario {name}: {why}", db.name()));
            return Ok(None);
        }
    };
    let ns = db.namespace();
    let tables: Vec<String> = (0..scenario.modes.len())
        .map(|i| format!("{name}_{i}"))
        .collect();
    for (t, mode) in tables.iter().zip(&scenario.modes) {
        db.exec(&db.create_table(t, *mode != ResolvedMode::WithoutPrimaryKey))?;
        // An Only Changes table starts empty and is written only once active, so the table
        // at activation is known (empty) and the output alone must rebuild it.
        let initial = if *mode == ResolvedMode::OnlyChanges {
            0
        } else {
            scenario.initial_rows
        };
        // 500 rows a statement (SQL Server takes at most 1,000): one client process per
        // row made a scenario of 3,000 rows spend a minute before its capture started.
        for first in (1..=initial).step_by(500) {
            let values: Vec<String> = (first..=(first + 499).min(initial))
                .map(|id| format!("({id}, 0, 'initial')"))
                .collect();
            db.exec(&format!(
                "INSERT INTO {ns}.{t} (id, v, pad) VALUES {}",
                values.join(", ")
            ))?;
        }
    }
    let dir =
        std::env::temp_dir().join(format!("live-{}-{name}-{}", db.name(), std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut endpoint = db.endpoint();
    if let (Some(e), Some(extra)) = (
        endpoint.as_object_mut(),
        scenario.endpoint_extra.as_object(),
    ) {
        e.extend(extra.clone());
    }
    let config = write_config(
        &dir,
        &endpoint,
        ns,
        tables
            .iter()
            .map(String::as_str)
            .zip(scenario.modes.iter().copied()),
    )?;
    let mut driver = match make(&binary, &config, &dir) {
        Ok(d) => d,
        Err(None) => return Err("the driver could not be made".into()),
        Err(Some(why)) => {
            crate::servers::skip(&format!("{} scenario {name}: {why}", db.name()));
            return Ok(None);
        }
    };
    let state = driver.state_file();

    // Writers run while the connector is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let writer_error = Arc::new(Mutex::new(None));
    let mut report = Report::default();
    std::thread::scope(|s| {
        let (stop_w, err_w, tables_w) =
            (Arc::clone(&stop), Arc::clone(&writer_error), tables.clone());
        let state_w = state.clone();
        let gated: Vec<bool> = scenario
            .modes
            .iter()
            .map(|m| {
                matches!(
                    m,
                    ResolvedMode::WithoutPrimaryKey | ResolvedMode::OnlyChanges
                )
            })
            .collect();
        let keyed: Vec<bool> = scenario
            .modes
            .iter()
            .map(|m| *m != ResolvedMode::WithoutPrimaryKey)
            .collect();
        let ns_w = ns;
        s.spawn(move || {
            let mut next_id = 1_000_000;
            for n in 0..scenario.txns {
                if stop_w.load(Ordering::SeqCst) {
                    break;
                }
                let t = n % tables_w.len();
                let table = format!("{ns_w}.{}", tables_w[t]);
                // Without Primary Key is exact only when the table is not written during
                // its backfill, and an Only Changes table must be empty until active: write
                // those once their binding is durably active.
                if gated[t] && !backfill_done(&state_w, &format!("{ns_w}.{}", tables_w[t])) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                next_id += 1;
                let sql = match (n % 4, keyed[t]) {
                    (0, _) => format!("INSERT INTO {table} (id, v, pad) VALUES ({next_id}, {n}, 'new')"),
                    // `v` grows with every write: the checker's version column.
                    (1, true) => format!("UPDATE {table} SET v = {n} WHERE id = (SELECT max(id) FROM (SELECT id FROM {table}) x)"),
                    (2, true) => format!("UPDATE {table} SET id = {next_id}, v = {n} WHERE id = (SELECT min(id) FROM (SELECT id FROM {table}) x)"),
                    (3, true) => format!("DELETE FROM {table} WHERE id = (SELECT min(id) FROM (SELECT id FROM {table}) x)"),
                    _ => format!("INSERT INTO {table} (id, v, pad) VALUES ({next_id}, {n}, 'keyless')"),
                };
                if let Err(e) = db.exec(&sql) {
                    *err_w.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    break;
                }
            }
        });
        for k in 0..scenario.kills {
            driver.killed_run(k, Duration::from_millis(300 + 200 * (k as u64 % 5)));
            report.kills += 1;
        }
        stop.store(true, Ordering::SeqCst);
    });
    if let Some(e) = writer_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(format!("writer failed: {e}"));
    }
    driver.final_run();
    let runs = driver.outputs();
    report.runs = runs.len();
    report.lines = runs.iter().map(Vec::len).sum();
    let outputs: Vec<RunOutput> = runs
        .into_iter()
        .map(|lines| RunOutput {
            lines,
            counters: vec![0; tables.len()],
        })
        .collect();
    let expects: Vec<BindingExpect> = scenario
        .modes
        .iter()
        .zip(&tables)
        .map(|(m, t)| BindingExpect {
            mode: *m,
            key: if *m == ResolvedMode::WithoutPrimaryKey {
                vec![]
            } else {
                vec!["id".into()]
            },
            table: format!("{ns}.{t}"),
            version_column: Some("v".into()),
        })
        .collect();
    let oracle = TableOracle { db, tables };
    report.violations = checker::check(&expects, &outputs, &oracle);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(report))
}

/// Writes `dir/config.json`: the endpoint and one binding per `(table, mode)` in
/// `namespace`, counters at 0; returns its path.
pub(crate) fn write_config<'a>(
    dir: &Path,
    endpoint: &Value,
    namespace: &str,
    bindings: impl Iterator<Item = (&'a str, ResolvedMode)>,
) -> Result<PathBuf, String> {
    let bindings: Vec<Value> = bindings
        .map(|(t, m)| json!({"resource": {"namespace": namespace, "stream": t, "mode": m.as_str()}, "target": t, "backfill": 0}))
        .collect();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        json!({"endpoint": endpoint, "bindings": bindings}).to_string(),
    )
    .map_err(|e| e.to_string())?;
    Ok(config)
}

/// Whether the state file records `table`'s backfill as done (its binding active). The
/// file is a state, or a record holding one under `"state"` (the runtime's commit record).
pub(crate) fn backfill_done(state: &Path, table: &str) -> bool {
    std::fs::read_to_string(state)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .is_some_and(|s| {
            let s = s.get("state").unwrap_or(&s);
            s["bindings"][table]["phase"] == "active"
        })
}

/// Runs `capture` once and returns its stdout lines: to the end with `until_caught_up`,
/// otherwise SIGKILLed after `kill_after`. Its stderr is passed on.
pub fn capture(
    binary: &Path,
    config: &Path,
    state: &Path,
    until_caught_up: bool,
    kill_after: Option<Duration>,
) -> Vec<String> {
    let mut run = Running::start(binary, config, state, until_caught_up);
    let _ = run.watch(kill_after.unwrap_or(Duration::from_secs(3_600)));
    let (lines, stderr) = run.collect();
    eprint!("{stderr}");
    lines
}

/// A connector process with its output read in the background.
pub(crate) struct Running {
    child: Option<Child>,
    out: Option<JoinHandle<(Vec<String>, Option<String>)>>,
    err: Option<JoinHandle<String>>,
    /// Whether this harness killed the process while it ran.
    killed: bool,
}

/// A stdout's lines, and what follows its last newline (`None` when it ends with one).
fn read_lines(mut s: impl Read) -> (Vec<String>, Option<String>) {
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let mut lines: Vec<String> = bytes
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let tail = lines.pop().filter(|t| !t.is_empty());
    (lines, tail)
}

impl Running {
    pub(crate) fn start(binary: &Path, config: &Path, state: &Path, until_caught_up: bool) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(["capture", "--log-level", "warn", "--config"])
            .arg(config)
            .arg("--state")
            .arg(state);
        if until_caught_up {
            cmd.arg("--until-caught-up");
        }
        let Ok(mut child) = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return Self {
                child: None,
                out: None,
                err: None,
                killed: false,
            };
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        Self {
            child: Some(child),
            out: stdout.map(|s| std::thread::spawn(move || read_lines(s))),
            err: stderr.map(|mut s| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text);
                    text
                })
            }),
            killed: false,
        }
    }

    /// Waits up to `d`; the exit status if the process ended.
    pub(crate) fn watch(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                self.killed = true;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its stdout lines and stderr. A process this harness killed may have been cut in
    /// the middle of a write (one larger than a pipe writes at once), leaving a last
    /// line without its newline: that is the crash, not a line the connector wrote, and
    /// it is dropped, as a consumer reading whole lines does. A process that ended by
    /// itself wrote whole lines, so its cut line is kept, for the checker to refuse.
    pub(crate) fn collect(mut self) -> (Vec<String>, String) {
        self.kill();
        let (mut lines, tail) = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(tail) = tail.filter(|_| !self.killed) {
            lines.push(tail);
        }
        (
            lines,
            self.err
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
        )
    }
}

impl LiveDb for crate::servers::PgServer {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn connector(&self) -> Result<PathBuf, String> {
        workspace_binary("source-postgres")
    }

    fn endpoint(&self) -> Value {
        json!({"host": "127.0.0.1", "port": self.port, "database": "postgres", "user": "postgres"})
    }

    fn namespace(&self) -> &'static str {
        "public"
    }

    fn exec(&self, sql: &str) -> Result<String, String> {
        self.sql(sql).map_err(|e| e.to_string())
    }

    fn create_table(&self, table: &str, keyed: bool) -> String {
        if keyed {
            format!("CREATE TABLE public.{table} (id bigint PRIMARY KEY, v int, pad text)")
        } else {
            format!(
                "CREATE TABLE public.{table} (id bigint, v int, pad text); ALTER TABLE public.{table} REPLICA IDENTITY FULL"
            )
        }
    }

    fn rows(&self, table: &str) -> Result<Vec<Row>, String> {
        parse_json_rows(&self.exec(&format!("SELECT to_jsonb(t.*) FROM public.{table} t"))?)
    }
}

impl LiveDb for crate::servers::MariaDbServer {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    fn connector(&self) -> Result<PathBuf, String> {
        workspace_binary("source-mysql")
    }

    fn endpoint(&self) -> Value {
        json!({"host": "127.0.0.1", "port": self.port, "user": "root"})
    }

    fn namespace(&self) -> &'static str {
        "test"
    }

    fn exec(&self, sql: &str) -> Result<String, String> {
        self.sql(sql).map_err(|e| e.to_string())
    }

    fn create_table(&self, table: &str, keyed: bool) -> String {
        let key = if keyed { " PRIMARY KEY" } else { "" };
        format!("CREATE TABLE test.{table} (id bigint{key}, v int, pad text)")
    }

    fn rows(&self, table: &str) -> Result<Vec<Row>, String> {
        parse_json_rows(&self.exec(&format!(
            "SELECT JSON_OBJECT('id', id, 'v', v, 'pad', pad) FROM test.{table}"
        ))?)
    }
}

pub(crate) fn parse_json_rows(text: &str) -> Result<Vec<Row>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(row)) => Ok(row),
            other => Err(format!("not a JSON row: {l} ({other:?})")),
        })
        .collect()
}

#[derive(Debug)]
/// A connector's config and state files in a temp dir, and ways to run it.
pub struct Capture {
    binary: PathBuf,
    /// The directory holding config.json and state.json.
    pub dir: PathBuf,
    /// Whether dropping the capture removes the directory.
    owned: bool,
}

#[derive(Debug)]
/// What one run printed and how it ended.
pub struct Outcome {
    /// stdout, line by line.
    pub lines: Vec<String>,
    /// stderr.
    pub stderr: String,
    /// Whether it exited 0.
    pub ok: bool,
}

impl Capture {
    /// A fresh directory for a capture named `name`.
    pub fn new(binary: &Path, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("capture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test capture");
        Self {
            binary: binary.to_path_buf(),
            dir,
            owned: true,
        }
    }

    /// A capture whose files live in a directory the caller owns (kept on drop).
    pub fn at(binary: &Path, dir: &Path) -> Self {
        Self {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            owned: false,
        }
    }

    /// Writes the config file.
    pub fn config(&self, config: &Value) {
        std::fs::write(self.dir.join("config.json"), config.to_string()).expect("test capture");
    }

    /// The state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Runs the binary with `args` and `--config`.
    pub fn run(&self, args: &[&str]) -> Outcome {
        let out = Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(self.dir.join("config.json"))
            .stdin(Stdio::null())
            .output()
            .expect("test capture");
        Outcome {
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ok: out.status.success(),
        }
    }

    /// A capture running in the background, stdout and stderr piped.
    pub fn spawn(&self) -> std::process::Child {
        Command::new(&self.binary)
            .args(["capture", "--log-level", "warn", "--config"])
            .arg(self.dir.join("config.json"))
            .arg("--state")
            .arg(self.state())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("test capture")
    }

    /// `run` with `args`, while another thread does `then` (resumes a replica, say) after
    /// `after`, or as soon as the run is over if that is sooner: what a capture does when
    /// the world changes under it. A run that waits for `then` gets it after `after`; a run
    /// that should not wait, and does, gets it too, so a test asserting on what it read
    /// fails instead of hanging.
    fn run_while(&self, args: &[&str], after: Duration, then: impl FnOnce() + Send) -> Outcome {
        let (over, told) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let _ = told.recv_timeout(after);
                then();
            });
            let out = self.run(args);
            let _ = over.send(());
            out
        })
    }

    /// `capture --until-caught-up` against the state file, with `--log-level`.
    pub fn capture_logging(&self, level: &str) -> Outcome {
        let state = self.state();
        self.run(&self.capture_args(level, &state))
    }

    fn capture_args<'a>(&self, level: &'a str, state: &'a Path) -> [&'a str; 6] {
        [
            "capture",
            "--until-caught-up",
            "--log-level",
            level,
            "--state",
            state.to_str().expect("test capture"),
        ]
    }

    /// [`Capture::capture_logging`] while another thread does `then` after `after`, or
    /// once the capture is over if that is sooner.
    pub fn capture_while(
        &self,
        level: &str,
        after: Duration,
        then: impl FnOnce() + Send,
    ) -> Outcome {
        let state = self.state();
        self.run_while(&self.capture_args(level, &state), after, then)
    }

    /// `capture --until-caught-up` against the state file.
    pub fn capture(&self) -> Outcome {
        self.capture_logging("warn")
    }
}

impl Capture {
    /// Runs `capture` (without `--until-caught-up`) for `d` at most, then kills it: what a
    /// user sees in a run's first moments. `ok` is whether it exited 0 by itself.
    pub fn capture_for(&self, d: Duration) -> Outcome {
        let mut run = Running::start(
            &self.binary,
            &self.dir.join("config.json"),
            &self.state(),
            false,
        );
        let status = run.watch(d);
        let (lines, stderr) = run.collect();
        Outcome {
            lines,
            stderr,
            ok: status.is_some_and(|s| s.success()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The documents of `binding` in a run's lines.
pub fn docs(lines: &[String], binding: usize) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["binding"] == binding && v.get("doc").is_some())
        .map(|v| v["doc"].clone())
        .collect()
}

/// The ids (an integer `id` column) of `binding`'s documents in `lines`, sorted.
pub fn sorted_ids(lines: &[String], binding: usize) -> Vec<i64> {
    let mut ids: Vec<i64> = docs(lines, binding)
        .iter()
        .filter_map(|d| d["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

/// The one `error:` line a failed run printed on stderr; panics (failing the test) unless
/// there is exactly one: DESIGN.md §3 asks for one line that says what is wrong.
pub fn the_error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    errors[0]
}

/// A document without `_meta`.
pub fn strip_meta(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("_meta");
    }
    d
}

/// `check`'s connections item for backfill ranges, as every source prints it: `check(n)`
/// runs `check` with `n` ranges and returns its output; `tighten` leaves the server 20
/// connections. 4 ranges on a roomy server are fine, 64 on a tight one are a warning that
/// names both remedies, and 1 range needs no item.
pub fn assert_checks_range_connections(check: impl Fn(usize) -> String, tighten: impl FnOnce()) {
    let roomy = check(4);
    assert!(
        roomy.contains("ok   connections: backfill ranges up to 4 open 3 more"),
        "{roomy}"
    );
    tighten();
    let tight = check(64);
    assert!(
        tight.contains("warn connections: backfill ranges up to 64 open 63 more")
            && tight.contains("lower backfill_ranges")
            && tight.contains("raise max_connections"),
        "{tight}"
    );
    assert!(
        !check(1).contains("connections:"),
        "one range needs no extra connection"
    );
}

/// The verdict on a capture of a 100-row table whose rows 1 to 50 had `v` set to
/// `'changed'` on the primary while the replica it scans stood still (replay paused, or
/// the applier stopped). Waiting for the replica, the capture says so and reads the
/// primary's rows. `blind` (a sabotage switch turned the wait off), it must read every row
/// from before the change, or the test proves nothing.
pub fn assert_replica_wait(out: &Outcome, blind: bool) {
    assert!(out.ok, "{}", out.stderr);
    let rows = docs(&out.lines, 0);
    let changed = rows.iter().filter(|d| d["v"] == "changed").count();
    if blind {
        assert_eq!(
            (rows.len(), changed),
            (100, 0),
            "scanning the replica without the wait must read every row from before the update: the test cannot tell"
        );
        return;
    }
    assert!(
        out.stderr.contains("the backfill waits for the replica"),
        "the wait is said: {}",
        out.stderr
    );
    assert_eq!(
        (rows.len(), changed),
        (100, 50),
        "each row once, as the primary has it"
    );
}

#[cfg(test)]
mod tests {
    use super::read_lines;

    #[test]
    fn a_cut_last_line_is_told_apart_from_whole_lines() {
        let whole = read_lines(&b"{\"a\":1}\n{\"b\":2}\n"[..]);
        assert_eq!(whole, (vec!["{\"a\":1}".into(), "{\"b\":2}".into()], None));
        let cut = read_lines(&b"{\"a\":1}\n{\"b\":"[..]);
        assert_eq!(cut, (vec!["{\"a\":1}".into()], Some("{\"b\":".into())));
        assert_eq!(read_lines(&b""[..]), (vec![], None));
    }
}
