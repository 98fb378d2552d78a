//! Throwaway database servers for the live suites (DESIGN.md §9).
//!
//! Each server is a real PostgreSQL or MariaDB started from the binaries installed on the
//! machine, in its own temp directory, on a free loopback port, configured for CDC
//! (PostgreSQL `wal_level=logical`; MariaDB row binlog with full images and metadata, a
//! server id and GTIDs). Started as root, they run as the `postgres` / `mysql` OS users,
//! since both servers refuse root. They are stopped by PID and their directory removed when
//! the handle is dropped, also when a test panics. Tests can restart, kill and reconfigure
//! them.
//!
//! MySQL runs from a Debian sid root file system (`MYSQL_ROOTFS`, by default
//! `/opt/mysql-root`, made by `.ci/install-mysql`): its `mysqld` is started with that
//! tree's own dynamic loader and libraries, so it needs no container and no chroot.
//!
//! `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` / `TEST_MYSQL8_URL` point the suites at an existing server instead
//! (the SQL commands then run through `psql` / `mariadb` against that URL). When neither a
//! URL nor the binaries are there, [`PgServer::start_or_skip`] and friends print
//! `SKIPPED: <why>` and return `None`: a test that cannot get its server never passes
//! silently.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An error from the harness, with what was being done.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

/// The harness's results.
pub type Result<T> = std::result::Result<T, HarnessError>;

fn err(what: impl Into<String>) -> HarnessError {
    HarnessError(what.into())
}

/// Prints the skip line the suites use for a missing server.
pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// The value, or `None` after printing why the test is skipped.
fn or_skip<T>(result: Result<T>, what: &str) -> Option<T> {
    result
        .map_err(|e| skip(&format!("no {what} for this test: {e}")))
        .ok()
}

/// The OS user a server started by root runs as (the servers refuse root); `None` when
/// not root.
fn server_user(name: &str) -> Result<Option<(u32, u32)>> {
    if !running_as_root() {
        return Ok(None);
    }
    os_user(name).map(Some).ok_or_else(|| {
        err(format!(
            "running as root and there is no `{name}` OS user to run the server as"
        ))
    })
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(e.to_string()))
}

/// uid and gid of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Whether this process runs as root (servers then run as their own OS user).
pub(crate) fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A fresh temp dir, owned by `owner` when running as root.
fn temp_dir(prefix: &str, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("{prefix}-{}-{nanos}-{n}", std::process::id()));
        if fs::create_dir(&dir).is_ok() {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .map_err(|e| err(format!("chown {}: {e}", dir.display())))?;
            }
            return Ok(dir);
        }
    }
    Err(err("cannot create a temp dir"))
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The directory holding PostgreSQL's server binaries (`initdb`, `postgres`), newest
/// version first.
pub fn postgres_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// A database server the harness may have started itself (a throwaway it owns and may
/// crash, restart and reconfigure), or an external one it was pointed at (then these do
/// nothing but start it again, which for an external server is a no-op).
pub trait Throwaway {
    /// How long after a SIGKILL the server's orphans need before it can start again.
    const SETTLE: Duration = Duration::ZERO;

    /// The server's process, when the harness started it.
    fn process(&self) -> Option<&Process>;
    /// The same, to stop or kill it.
    fn process_mut(&mut self) -> Option<&mut Process>;
    /// Starts the server (again) with its current settings and waits until it is ready.
    fn launch(&mut self) -> Result<()>;

    /// SIGKILLs the server (a crash) and starts it again.
    fn crash_and_restart(&mut self) -> Result<()> {
        if let Some(p) = self.process_mut() {
            p.kill();
            std::thread::sleep(Self::SETTLE);
        }
        self.launch()
    }

    /// The server's PID, when the harness started it.
    fn pid(&self) -> Option<u32> {
        self.process().and_then(Process::pid)
    }

    /// The server's directory, when the harness started it.
    fn dir(&self) -> Option<&Path> {
        self.process().map(Process::dir)
    }
}

/// A server process the harness started: its directory, the OS user it runs as, and how it
/// stops. Dropping it stops the server and removes the directory, also during a panic.
#[derive(Debug)]
pub struct Process {
    name: &'static str,
    dir: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// Signal for a clean shutdown (PostgreSQL: INT, fast shutdown; MariaDB: TERM).
    stop_signal: &'static str,
    /// Log file in `dir`, quoted when the server dies at start.
    log: &'static str,
}

impl Process {
    fn new(
        name: &'static str,
        dir: PathBuf,
        user: Option<(u32, u32)>,
        stop_signal: &'static str,
        log: &'static str,
    ) -> Self {
        Self {
            name,
            dir,
            user,
            child: None,
            stop_signal,
            log,
        }
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a freshly spawned server and waits until `ready` says it accepts work.
    fn wait_ready(&mut self, child: Child, ready: impl Fn() -> bool) -> Result<()> {
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(self.dir.join(self.log)).unwrap_or_default();
                return Err(err(format!(
                    "{} exited at start ({status}): {log}",
                    self.name
                )));
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "{} did not accept connections within 60 s",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A clean shutdown, escalating to SIGKILL after 30 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), self.stop_signal);
            if !wait_exit(&mut child, Duration::from_secs(30)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// SIGKILL: a crash. The server stays down until its `launch` (a test that needs it
    /// gone for a while).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "KILL");
            wait_exit(&mut child, Duration::from_secs(30));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn port_of(url: &str, default: u16) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

/// A PostgreSQL server for tests.
#[derive(Debug)]
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`, or `TEST_POSTGRES_URL`.
    pub url: String,
    /// Loopback port.
    pub port: u16,
    local: Option<PgLocal>,
    #[cfg(feature = "docker-tests")]
    _container: Option<docker::Running>,
}

#[derive(Debug)]
struct PgLocal {
    bindir: PathBuf,
    settings: Vec<(String, String)>,
    process: Process,
}

fn psql(bindir: Option<&Path>, url: &str, sql: &str) -> Result<String> {
    let psql = bindir.map_or_else(|| PathBuf::from("psql"), |d| d.join("psql"));
    run(
        Command::new(psql)
            .arg(url)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5"),
        "psql",
    )
}

/// A `psql` session on `url` that reads SQL from stdin and stops at the first error (a
/// writer's connection in the torture run).
pub fn psql_session(url: &str) -> Command {
    let psql = postgres_bindir().map_or_else(|| PathBuf::from("psql"), |d| d.join("psql"));
    let mut cmd = Command::new(psql);
    cmd.arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"])
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGCLIENTENCODING", "UTF8");
    cmd
}

impl PgServer {
    /// Starts a throwaway server (or uses `TEST_POSTGRES_URL`); prints `SKIPPED:` and
    /// returns `None` when neither is possible.
    pub fn start_or_skip() -> Option<Self> {
        or_skip(Self::start(), "PostgreSQL")
    }

    /// Starts a throwaway server with `wal_level=logical`, or uses `TEST_POSTGRES_URL`.
    pub fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
            let port = port_of(&url, 5432);
            return Ok(Self::external(url, port));
        }
        let Some(bindir) = postgres_bindir() else {
            #[cfg(feature = "docker-tests")]
            if let Some(running) = docker::postgres() {
                let port = running.port;
                let mut s = Self::external(
                    format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    port,
                );
                s._container = Some(running);
                return Ok(s);
            }
            return Err(err(
                "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (install postgresql, set TEST_POSTGRES_URL, or enable the docker-tests feature where Docker runs)",
            ));
        };
        let user = server_user("postgres")?;
        let process = Process::new(
            "postgres",
            temp_dir("testkit-pg", user)?,
            user,
            "INT",
            "server.log",
        );
        run(
            as_user(
                Command::new(bindir.join("initdb"))
                    .arg("-D")
                    .arg(process.dir.join("data"))
                    .args([
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]),
                user,
            ),
            "initdb",
        )?;
        let port = free_port()?;
        let mut server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            local: Some(PgLocal {
                bindir,
                settings: Vec::new(),
                process,
            }),
            #[cfg(feature = "docker-tests")]
            _container: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn external(url: String, port: u16) -> Self {
        Self {
            url,
            port,
            local: None,
            #[cfg(feature = "docker-tests")]
            _container: None,
        }
    }

    /// Starts a hot standby of this throwaway server, stopped by PID like it: a base backup
    /// streamed by `pg_basebackup -R` (which writes `standby.signal` and
    /// `primary_conninfo`), started with `hot_standby_feedback = on` and `settings`. A
    /// standby needs a primary the harness started; for an external one it is an error.
    pub fn start_standby(&self, settings: &[(&str, &str)]) -> Result<Self> {
        let Some(primary) = self.local.as_ref() else {
            return Err(err(
                "a standby needs a throwaway primary (TEST_POSTGRES_URL names an external one)",
            ));
        };
        let user = primary.process.user;
        let process = Process::new(
            "postgres standby",
            temp_dir("testkit-pg-standby", user)?,
            user,
            "INT",
            "server.log",
        );
        run(
            as_user(
                Command::new(primary.bindir.join("pg_basebackup"))
                    .arg("-d")
                    .arg(&self.url)
                    .arg("-D")
                    .arg(process.dir.join("data"))
                    .args(["-R", "-X", "stream", "--no-sync"]),
                user,
            ),
            "pg_basebackup",
        )?;
        let port = free_port()?;
        let defaults = [("hot_standby", "on"), ("hot_standby_feedback", "on")];
        let mut standby = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            local: Some(PgLocal {
                bindir: primary.bindir.clone(),
                settings: defaults
                    .iter()
                    .chain(settings)
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                process,
            }),
            #[cfg(feature = "docker-tests")]
            _container: None,
        };
        standby.launch()?;
        Ok(standby)
    }

    /// Waits until this standby has replayed everything its primary has written so far.
    pub fn await_replay_of(&self, primary: &Self) -> Result<()> {
        let target = primary.sql("SELECT pg_current_wal_insert_lsn()")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        while self.sql(&caught_up)? != "t" {
            if Instant::now() > deadline {
                return Err(err(format!(
                    "the standby did not replay {target} within 60 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        let dir = local.process.dir.clone();
        let mut cmd = Command::new(local.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&dir);
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "64MB"),
            ("max_connections", "100"),
            ("TimeZone", "UTC"),
        ];
        let extra = local.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in defaults.into_iter().chain(extra) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let log_path = dir.join(local.process.log);
        let log = fs::File::create(&log_path).map_err(|e| err(e.to_string()))?;
        if let Some((uid, gid)) = local.process.user {
            let _ = std::os::unix::fs::chown(&log_path, Some(uid), Some(gid));
        }
        let child = as_user(&mut cmd, local.process.user)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("cannot start postgres: {e}")))?;
        let (bindir, url) = (local.bindir.clone(), self.url.clone());
        local
            .process
            .wait_ready(child, || psql(Some(&bindir), &url, "SELECT 1").is_ok())
    }

    /// Runs SQL through `psql` and returns the unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> Result<String> {
        psql(
            self.local.as_ref().map(|l| l.bindir.as_path()),
            &self.url,
            sql,
        )
    }

    /// Stops the server (fast shutdown) and starts it again with extra `settings`.
    pub fn restart_with(&mut self, settings: &[(&str, &str)]) -> Result<()> {
        if let Some(l) = self.local.as_mut() {
            l.process.stop();
            l.settings.extend(
                settings
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
            );
        }
        self.launch()
    }
}

/// SIGKILLing the postmaster is a crash: recovery replays the WAL at the restart.
impl Throwaway for PgServer {
    // Orphaned backends hold the shared memory until they notice; give them a moment.
    const SETTLE: Duration = Duration::from_millis(500);

    fn process(&self) -> Option<&Process> {
        self.local.as_ref().map(|l| &l.process)
    }
    fn process_mut(&mut self) -> Option<&mut Process> {
        self.local.as_mut().map(|l| &mut l.process)
    }
    fn launch(&mut self) -> Result<()> {
        PgServer::launch(self)
    }
}

/// A MariaDB server for tests.
#[derive(Debug)]
pub struct MariaDbServer {
    /// `mysql://root@127.0.0.1:<port>/`, or `TEST_MYSQL_URL`.
    pub url: String,
    /// Loopback port.
    pub port: u16,
    local: Option<MariaLocal>,
    #[cfg(feature = "docker-tests")]
    _container: Option<docker::Running>,
}

#[derive(Debug)]
struct MariaLocal {
    settings: Vec<String>,
    process: Process,
    /// MySQL: the root file system its binaries and libraries come from.
    mysql_root: Option<PathBuf>,
}

/// The root file system MySQL runs from (see the module docs).
pub fn mysql_rootfs() -> PathBuf {
    std::env::var_os("MYSQL_ROOTFS").map_or_else(|| PathBuf::from("/opt/mysql-root"), PathBuf::from)
}

/// A command running `program` of the MySQL root file system with its own loader.
fn mysql_command(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new(root.join("lib64/ld-linux-x86-64.so.2"));
    cmd.arg("--library-path")
        .arg(format!(
            "{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
            root.display()
        ))
        .arg(root.join(program));
    cmd
}

fn find_binary(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = Path::new(dir).join(c);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

fn mariadb_client() -> PathBuf {
    find_binary(&["mariadb", "mysql"]).unwrap_or_else(|| PathBuf::from("mariadb"))
}

fn mariadb_socket(socket: &Path, sql: &str) -> Result<String> {
    run(
        Command::new(mariadb_client())
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-uroot", "-N", "-B", "--connect-timeout=5", "-e", sql]),
        "mariadb",
    )
}

/// A `mariadb` client session as root on the loopback `port` that reads SQL from stdin
/// and stops at the first error (a writer's connection in the torture run).
pub fn mariadb_session(port: u16) -> Command {
    let mut cmd = Command::new(mariadb_client());
    cmd.arg("--no-defaults")
        .arg(format!("--port={port}"))
        .args([
            "--host=127.0.0.1",
            "--user=root",
            "--protocol=TCP",
            "--default-character-set=utf8mb4",
            "--connect-timeout=5",
            "-N",
            "-B",
        ]);
    cmd
}

impl MariaDbServer {
    /// Starts a throwaway server (or uses `TEST_MYSQL_URL`); prints `SKIPPED:` and returns
    /// `None` when neither is possible.
    pub fn start_or_skip() -> Option<Self> {
        or_skip(Self::start(), "MariaDB")
    }

    /// Starts a throwaway server with the row binlog on, or uses `TEST_MYSQL_URL`.
    pub fn start() -> Result<Self> {
        if let Ok(url) = std::env::var("TEST_MYSQL_URL") {
            let port = port_of(&url, 3306);
            return Ok(Self::external(url, port));
        }
        let Some(install) = find_binary(&["mariadb-install-db", "mysql_install_db"]) else {
            #[cfg(feature = "docker-tests")]
            if let Some(running) = docker::mariadb() {
                let port = running.port;
                let mut s = Self::external(format!("mysql://root@127.0.0.1:{port}/"), port);
                s._container = Some(running);
                return Ok(s);
            }
            return Err(err(
                "mariadb-install-db not found (install mariadb-server, set TEST_MYSQL_URL, or enable the docker-tests feature where Docker runs)",
            ));
        };
        Self::launch_new(Self::init_mariadb(&install)?, None, Vec::new())
    }

    /// A new MariaDB data directory, initialized by `install` (`mariadb-install-db`).
    fn init_mariadb(install: &Path) -> Result<Process> {
        find_binary(&["mariadbd", "mysqld"])
            .ok_or_else(|| err("mariadbd not found (install mariadb-server)"))?;
        let user = server_user("mysql")?;
        let process = Process::new(
            "mariadbd",
            temp_dir("testkit-maria", user)?,
            user,
            "TERM",
            "error.log",
        );
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", process.dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if user.is_some() {
            cmd.arg("--user=mysql");
        }
        run(&mut cmd, "mariadb-install-db")?;
        Ok(process)
    }

    /// Starts the server initialized in `process`'s directory on a free port with extra
    /// `settings`, with root reachable over TCP from 127.0.0.1 as the connectors connect,
    /// and a `test` database.
    fn launch_new(
        process: Process,
        mysql_root: Option<PathBuf>,
        settings: Vec<String>,
    ) -> Result<Self> {
        let port = free_port()?;
        let mut server = Self {
            url: format!("mysql://root@127.0.0.1:{port}/"),
            port,
            local: Some(MariaLocal {
                settings,
                process,
                mysql_root,
            }),
            #[cfg(feature = "docker-tests")]
            _container: None,
        };
        server.launch()?;
        server.sql_socket(
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; CREATE DATABASE IF NOT EXISTS test;",
        )?;
        Ok(server)
    }

    /// Starts a throwaway MySQL (or uses `TEST_MYSQL8_URL`); prints `SKIPPED:` and returns
    /// `None` when neither is possible.
    pub fn start_mysql_or_skip() -> Option<Self> {
        or_skip(Self::start_mysql(), "MySQL")
    }

    /// Starts a throwaway MySQL with the row binlog, full metadata and `gtid_mode=ON`, or
    /// uses `TEST_MYSQL8_URL`.
    pub fn start_mysql() -> Result<Self> {
        if let Ok(url) = std::env::var("TEST_MYSQL8_URL") {
            let port = port_of(&url, 3306);
            return Ok(Self::external(url, port));
        }
        let root = mysql_rootfs();
        if !root.join("usr/sbin/mysqld").exists() {
            return Err(err(format!(
                "{} has no usr/sbin/mysqld (run .ci/install-mysql, set MYSQL_ROOTFS or TEST_MYSQL8_URL)",
                root.display()
            )));
        }
        Self::launch_new(Self::init_mysql(&root)?, Some(root), Vec::new())
    }

    /// A new MySQL data directory, initialized by the root file system's `mysqld`.
    fn init_mysql(root: &Path) -> Result<Process> {
        let user = server_user("mysql")?;
        let process = Process::new(
            "mysqld",
            temp_dir("testkit-mysql", user)?,
            user,
            "TERM",
            "error.log",
        );
        let mut cmd = mysql_command(root, "usr/sbin/mysqld");
        cmd.arg("--no-defaults")
            .arg("--initialize-insecure")
            .arg(format!("--datadir={}", process.dir.join("data").display()))
            .arg(format!("--basedir={}", root.join("usr").display()))
            .arg(format!(
                "--lc-messages-dir={}",
                root.join("usr/share/mysql").display()
            ))
            .arg(format!(
                "--log-error={}",
                process.dir.join("init.log").display()
            ));
        if user.is_some() {
            cmd.arg("--user=mysql");
        }
        run(&mut cmd, "mysqld --initialize-insecure")?;
        Ok(process)
    }

    /// Starts a replica of this throwaway server, stopped by PID like it: a new server of
    /// the same kind (`server_id` 2, `read_only`) replicating from this one's first
    /// transaction by GTID (MariaDB `MASTER_USE_GTID=slave_pos`, MySQL
    /// `SOURCE_AUTO_POSITION`), reconnecting every second when the primary goes away. A
    /// replica needs a primary the harness started.
    pub fn start_replica(&self) -> Result<Self> {
        let Some(primary) = self.local.as_ref() else {
            return Err(err(
                "a replica needs a throwaway primary (TEST_MYSQL_URL names an external one)",
            ));
        };
        let settings = vec!["--server-id=2".to_string(), "--read-only=ON".to_string()];
        let port = self.port;
        let (replica, start) = match &primary.mysql_root {
            Some(root) => (
                Self::launch_new(Self::init_mysql(root)?, Some(root.clone()), settings)?,
                format!(
                    "RESET BINARY LOGS AND GTIDS; CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={port}, SOURCE_USER='root', SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1, SOURCE_CONNECT_RETRY=1; START REPLICA"
                ),
            ),
            None => {
                let install = find_binary(&["mariadb-install-db", "mysql_install_db"])
                    .ok_or_else(|| err("mariadb-install-db not found"))?;
                (
                    Self::launch_new(Self::init_mariadb(&install)?, None, settings)?,
                    format!(
                        "RESET MASTER; SET GLOBAL gtid_slave_pos = ''; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={port}, MASTER_USER='root', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE"
                    ),
                )
            }
        };
        replica.sql_socket(&start)?;
        Ok(replica)
    }

    /// Waits until this replica has applied everything `primary` has committed so far.
    pub fn await_replay_of(&self, primary: &Self) -> Result<()> {
        let wait = if self.is_mysql() {
            let executed = primary
                .sql("SELECT @@gtid_executed")?
                .replace(['\n', ' '], "");
            format!("SELECT WAIT_FOR_EXECUTED_GTID_SET('{executed}', 60)")
        } else {
            let pos = primary.sql("SELECT @@gtid_binlog_pos")?;
            format!("SELECT MASTER_GTID_WAIT('{pos}', 60)")
        };
        match self.sql(&wait)?.as_str() {
            "0" => Ok(()),
            other => Err(err(format!(
                "the replica did not catch up within 60 s ({other})"
            ))),
        }
    }

    /// Whether this is MySQL (not MariaDB).
    pub fn is_mysql(&self) -> bool {
        match &self.local {
            Some(l) => l.mysql_root.is_some(),
            None => self
                .sql("SELECT VERSION()")
                .is_ok_and(|v| !v.contains("MariaDB")),
        }
    }

    fn external(url: String, port: u16) -> Self {
        Self {
            url,
            port,
            local: None,
            #[cfg(feature = "docker-tests")]
            _container: None,
        }
    }

    fn launch(&mut self) -> Result<()> {
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        let d = local.process.dir.clone();
        let socket = d.join("mysqld.sock");
        let mut cmd = match &local.mysql_root {
            Some(root) => mysql_command(root, "usr/sbin/mysqld"),
            None => Command::new(
                find_binary(&["mariadbd", "mysqld"]).ok_or_else(|| err("mariadbd not found"))?,
            ),
        };
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!(
                "--log-error={}",
                d.join(local.process.log).display()
            ))
            .arg(format!(
                "--log-bin={}",
                d.join("data").join("binlog").display()
            ))
            // Its own temp dir: internal temp tables never meet another server's cleanup.
            .arg(format!("--tmpdir={}", d.display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--server-id=1",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--character-set-server=utf8mb4",
                "--default-time-zone=+00:00",
            ]);
        match &local.mysql_root {
            Some(root) => cmd
                .arg(format!("--basedir={}", root.join("usr").display()))
                .arg(format!(
                    "--lc-messages-dir={}",
                    root.join("usr/share/mysql").display()
                ))
                .arg(format!("--secure-file-priv={}", d.display()))
                .args([
                    "--mysqlx=OFF",
                    "--gtid-mode=ON",
                    "--enforce-gtid-consistency=ON",
                ]),
            None => cmd.args([
                "--binlog-format=ROW",
                "--gtid-strict-mode=ON",
                "--log-slave-updates=ON",
                "--collation-server=utf8mb4_general_ci",
            ]),
        };
        cmd.args(&local.settings);
        if local.process.user.is_some() {
            cmd.arg("--user=mysql");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start {}: {e}", local.process.name)))?;
        local
            .process
            .wait_ready(child, || mariadb_socket(&socket, "SELECT 1").is_ok())
    }

    fn sql_socket(&self, sql: &str) -> Result<String> {
        match &self.local {
            Some(l) => mariadb_socket(&l.process.dir.join("mysqld.sock"), sql),
            None => self.sql(sql),
        }
    }

    /// Runs SQL through the `mariadb` client over TCP, as the connectors connect, and
    /// returns tab-separated rows without headers.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let rest = self.url.trim_start_matches("mysql://");
        let (auth, hostpart) = rest.split_once('@').unwrap_or(("root", rest));
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let host = hostpart.split(['/', ':']).next().unwrap_or("127.0.0.1");
        let mut cmd = Command::new(mariadb_client());
        cmd.arg("--no-defaults")
            .arg(format!("--host={host}"))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .args([
                "--protocol=TCP",
                "-N",
                "-B",
                "--connect-timeout=5",
                "-e",
                sql,
            ]);
        if !password.is_empty() {
            cmd.env("MYSQL_PWD", password);
        }
        run(&mut cmd, "mariadb")
    }

    /// Stops the server and starts it again with extra `--option=value` arguments.
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        if let Some(l) = self.local.as_mut() {
            l.process.stop();
            l.settings.extend(args.iter().map(|a| (*a).to_string()));
        }
        self.launch()
    }
}

impl Throwaway for MariaDbServer {
    fn process(&self) -> Option<&Process> {
        self.local.as_ref().map(|l| &l.process)
    }
    fn process_mut(&mut self) -> Option<&mut Process> {
        self.local.as_mut().map(|l| &mut l.process)
    }
    fn launch(&mut self) -> Result<()> {
        MariaDbServer::launch(self)
    }
}

/// A SQL Server to test against: `TEST_SQLSERVER_URL`
/// (`sqlserver://user:password@host:port`, a login that may create databases and enable
/// CDC, with SQL Server Agent running), or with the `docker-tests` feature a
/// `mcr.microsoft.com/mssql/server` container with the Agent enabled. No SQL Server can run
/// on machines without either, so there the suite is skipped.
#[derive(Debug)]
pub struct SqlServerTarget {
    /// `sqlserver://user:password@host:port`.
    pub url: String,
    #[cfg(feature = "docker-tests")]
    _container: Option<docker::Running>,
}

impl SqlServerTarget {
    /// The target, or `None` after printing `SKIPPED:` and why.
    pub fn find_or_skip() -> Option<Self> {
        or_skip(Self::find(), "SQL Server")
    }

    /// The target from the environment or a container.
    pub fn find() -> Result<Self> {
        if let Ok(url) = std::env::var("TEST_SQLSERVER_URL") {
            return Ok(Self {
                url,
                #[cfg(feature = "docker-tests")]
                _container: None,
            });
        }
        #[cfg(feature = "docker-tests")]
        if let Some(running) = docker::mssql() {
            return Ok(Self {
                url: format!(
                    "sqlserver://sa:{}@127.0.0.1:{}",
                    docker::MSSQL_PASSWORD,
                    running.port
                ),
                _container: Some(running),
            });
        }
        Err(err(
            "no SQL Server: set TEST_SQLSERVER_URL=sqlserver://sa:<password>@<host>:1433 (Agent running), or enable the docker-tests feature where Docker runs",
        ))
    }

    /// (user, password, host, port) from the URL.
    pub fn parts(&self) -> Option<(String, String, String, u16)> {
        let rest = self.url.strip_prefix("sqlserver://")?;
        let (auth, addr) = rest.rsplit_once('@')?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let addr = addr.trim_end_matches('/');
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (addr, 1433),
        };
        Some((
            user.to_string(),
            password.to_string(),
            host.to_string(),
            port,
        ))
    }
}

/// Servers in containers, for machines with a Docker engine and without the server
/// binaries (`--features docker-tests`).
#[cfg(feature = "docker-tests")]
mod docker {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{Container, GenericImage, ImageExt};

    /// A running container; removed on drop.
    pub(super) struct Running {
        _container: Container<GenericImage>,
        pub(super) port: u16,
    }

    impl std::fmt::Debug for Running {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "container on port {}", self.port)
        }
    }

    fn start(
        image: GenericImage,
        request_port: u16,
        cmd: Vec<String>,
        env: &[(&str, &str)],
    ) -> Option<Running> {
        // An empty command would replace the image's own (SQL Server's has no arguments).
        let mut req = if cmd.is_empty() {
            testcontainers::ContainerRequest::from(image)
        } else {
            image.with_cmd(cmd)
        };
        for (k, v) in env {
            req = req.with_env_var(*k, *v);
        }
        match req.start() {
            Ok(container) => {
                let port = container.get_host_port_ipv4(request_port.tcp()).ok()?;
                Some(Running {
                    _container: container,
                    port,
                })
            }
            Err(e) => {
                eprintln!("docker-tests: cannot start a container: {e}");
                None
            }
        }
    }

    pub(super) fn postgres() -> Option<Running> {
        let image = GenericImage::new("postgres", "16")
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ));
        let cmd = [
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=20",
            "-c",
            "max_wal_senders=20",
        ];
        start(
            image,
            5432,
            cmd.iter().map(|s| (*s).to_string()).collect(),
            &[("POSTGRES_HOST_AUTH_METHOD", "trust")],
        )
    }

    /// The `sa` password of the SQL Server container.
    pub(super) const MSSQL_PASSWORD: &str = "Test-Passw0rd!";

    pub(super) fn mssql() -> Option<Running> {
        let image = GenericImage::new("mcr.microsoft.com/mssql/server", "2022-latest")
            .with_exposed_port(1433.tcp())
            .with_wait_for(WaitFor::message_on_stdout(
                "SQL Server is now ready for client connections",
            ));
        start(
            image,
            1433,
            Vec::new(),
            &[
                ("ACCEPT_EULA", "Y"),
                ("MSSQL_AGENT_ENABLED", "true"),
                ("MSSQL_SA_PASSWORD", MSSQL_PASSWORD),
            ],
        )
    }

    pub(super) fn mariadb() -> Option<Running> {
        let image = GenericImage::new("mariadb", "10.11")
            .with_exposed_port(3306.tcp())
            .with_wait_for(WaitFor::message_on_stderr("ready for connections"));
        let cmd = [
            "--log-bin=binlog",
            "--server-id=1",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
        ];
        start(
            image,
            3306,
            cmd.iter().map(|s| (*s).to_string()).collect(),
            &[
                ("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "1"),
                ("MARIADB_ROOT_HOST", "%"),
                ("MARIADB_DATABASE", "test"),
            ],
        )
    }
}

/// A `nats-server` with JetStream for tests (PIPELINE.md §7): one node, or one node of a
/// cluster; its own temp dir and free loopback ports, stopped by PID.
#[derive(Debug)]
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// Its client port.
    pub port: u16,
    process: Process,
    args: Vec<String>,
}

fn nats_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl NatsServer {
    /// One JetStream node, or `None` after printing `SKIPPED:`.
    pub fn start_or_skip() -> Option<Self> {
        or_skip(Self::start(), "nats-server")
    }

    /// One JetStream node.
    pub fn start() -> Result<Self> {
        Self::start_node(&[])
    }

    /// A three-node JetStream cluster on loopback (streams can be replicated three ways),
    /// or `None` after printing `SKIPPED:`.
    pub fn cluster_or_skip() -> Option<Vec<Self>> {
        or_skip(Self::cluster(3), "nats-server cluster")
    }

    /// `n` clustered nodes.
    pub fn cluster(n: usize) -> Result<Vec<Self>> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
        let all: Vec<String> = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            nodes.push(Self::start_node(&[
                "--cluster_name".into(),
                "cdc-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                all.join(","),
                "--name".into(),
                format!("n{i}"),
            ])?);
        }
        Ok(nodes)
    }

    fn start_node(extra: &[String]) -> Result<Self> {
        let binary = nats_binary()
            .ok_or_else(|| err("no nats-server binary (apt-get install nats-server)"))?;
        let dir = temp_dir("nats", None)?;
        let port = free_port()?;
        let mut args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.join("js").display().to_string(),
            "-l".into(),
            dir.join("nats.log").display().to_string(),
        ];
        args.extend_from_slice(extra);
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            process: Process::new("nats-server", dir, None, "TERM", "nats.log"),
            args,
        };
        server.spawn(&binary)?;
        Ok(server)
    }

    fn spawn(&mut self, binary: &Path) -> Result<()> {
        let child = Command::new(binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start nats-server: {e}")))?;
        let port = self.port;
        self.process.wait_ready(child, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// SIGKILL: a node dies.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again after [`kill`](Self::kill), with its data and ports.
    pub fn restart(&mut self) -> Result<()> {
        let binary = nats_binary().ok_or_else(|| err("no nats-server binary"))?;
        self.spawn(&binary)
    }
}
