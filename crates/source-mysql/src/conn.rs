//! Connections: options (the shared TLS policy in mysql_async's terms), connect, what the
//! server is, and the crate's one classifier of server errors into transient (retry) and
//! definite (stop and say what to do).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use backfill_core::endpoint::TlsMode;
use backfill_core::{Failure, SourceError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};

use crate::endpoint::{Endpoint, MyLogin};
use crate::position::GtidSet;

/// Which server the connector talks to: the two differ in how a snapshot meets the
/// binlog, in GTIDs, and in some statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB 10.6+.
    MariaDb,
    /// MySQL 8.0+.
    MySql,
}

/// What the source and its stream know of the server they share.
#[derive(Clone, Debug)]
pub struct Server {
    /// MariaDB or MySQL.
    pub flavor: Flavor,
    /// MySQL: `gtid_mode=ON` (MariaDB always has GTIDs).
    pub gtid_mode: bool,
    /// MySQL: every GTID the stream has read (see [`crate::scan`]'s docs).
    pub read_through: Arc<Mutex<GtidSet>>,
    /// Set by the stream when a DDL made it read the catalog again; the scanner then
    /// reads it again too before a backfill's first chunk (shared with the stream).
    pub catalog_changed: Arc<std::sync::atomic::AtomicBool>,
}

/// The crate's one classifier: a driver error as transient (retry) or definite (stop,
/// with the fix), by MySQL/MariaDB error number; the driver's error is kept as the cause.
pub fn my_error(e: mysql_async::Error, what: &str) -> SourceError {
    let error = match &e {
        mysql_async::Error::Server(s) => {
            let text = format!("{what}: {} (error {})", s.message, s.code);
            match s.code {
                1045 => Failure::Setup.error(format!("{text}; check the user and password")),
                1142 | 1227 | 1044 => {
                    Failure::Setup.error(format!("{text}; grant the user what `check` lists"))
                }
                1146 => Failure::Lost.error(format!(
                    "{text}; the table was dropped or renamed: fix its binding"
                )),
                1236 => Failure::Lost.error(format!(
                    "{text}: the binlog position is lost (purged). Raise `backfill` for every binding to re-establish it"
                )),
                1205 | 1213 | 1040 | 1053 | 2006 | 2013 => Failure::Interrupted.error(text),
                _ => Failure::Setup.error(text),
            }
        }
        other => Failure::Interrupted.error(format!(
            "{what}: {}",
            backfill_core::error::error_chain(other)
        )),
    };
    error.because(e)
}

impl Server {
    /// Reads what the server is: MariaDB or MySQL 8.0+ (older MySQL is refused), and on
    /// MySQL whether `gtid_mode` is on.
    pub async fn probe(conn: &mut Conn) -> Result<Self, SourceError> {
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| my_error(e, "reading the version"))?
            .unwrap_or_default();
        let flavor = if version.contains("MariaDB") {
            Flavor::MariaDb
        } else {
            let major: u32 = version
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 8 {
                return Err(Failure::Setup.error(format!(
                    "server {version} is MySQL {major}; the connector captures MySQL 8.0+ and MariaDB 10.6+"
                )));
            }
            Flavor::MySql
        };
        let gtid_mode = match flavor {
            Flavor::MariaDb => true,
            Flavor::MySql => {
                let mode: Option<String> = conn
                    .query_first("SELECT @@gtid_mode")
                    .await
                    .map_err(|e| my_error(e, "reading gtid_mode"))?;
                mode.is_some_and(|m| m.eq_ignore_ascii_case("ON"))
            }
        };
        Ok(Self {
            flavor,
            gtid_mode,
            read_through: Arc::default(),
            catalog_changed: Arc::default(),
        })
    }
}

/// Connection options for the server `login` names; `tls` says whether this connection
/// asks for TLS (under `prefer`, [`connect`] asks first and falls back).
fn opts(login: &MyLogin, tls: bool) -> Result<Opts, SourceError> {
    // mysql_async builds its TLS config from the process-wide rustls provider, which
    // rustls picks by itself only when one provider is compiled in: a build that also
    // compiles the SQL Server connector (tiberius) links a second. The workspace uses
    // ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = OptsBuilder::default()
        .ip_or_hostname(login.host.clone())
        .tcp_port(login.port)
        .user(Some(login.user.clone()))
        .pass(
            login
                .resolve_password()
                .map_err(|e| Failure::Setup.error(e))?,
        )
        .prefer_socket(false)
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
    if tls {
        b = b.ssl_opts(match login.tls.mode {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
            TlsMode::VerifyFull => match &login.tls.root_cert {
                Some(root) => {
                    SslOpts::default().with_root_certs(vec![std::path::PathBuf::from(root).into()])
                }
                None => SslOpts::default(),
            },
        });
    }
    Ok(b.into())
}

/// Servers that answered a `prefer` connection without TLS: later connections to them
/// skip the TLS attempt (a backfill opens connections often).
static WITHOUT_TLS: Mutex<Option<HashSet<(String, u16)>>> = Mutex::new(None);

/// Connects to the primary with the endpoint's TLS mode. Under `prefer` a server that does
/// not offer TLS gets a plain connection, as the MySQL client's own default (`PREFERRED`)
/// does.
pub async fn connect(endpoint: &Endpoint) -> Result<Conn, SourceError> {
    connect_to(&endpoint.login).await
}

/// Connects to the server `login` names (the primary's or the replica's), as [`connect`].
pub async fn connect_to(login: &MyLogin) -> Result<Conn, SourceError> {
    let what = format!("connecting to {}", login.address());
    let server = (login.host.clone(), login.port);
    let known_plain = || {
        WITHOUT_TLS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| s.contains(&server))
    };
    let tls = match login.tls.mode {
        TlsMode::Disable => false,
        TlsMode::Prefer => !known_plain(),
        TlsMode::Require | TlsMode::VerifyFull => true,
    };
    match Conn::new(opts(login, tls)?).await {
        Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
            if login.tls.mode == TlsMode::Prefer =>
        {
            tracing::debug!("{what}: the server offers no TLS; connecting without");
            WITHOUT_TLS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(HashSet::new)
                .insert(server);
            Conn::new(opts(login, false)?)
                .await
                .map_err(|e| my_error(e, &what))
        }
        Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)) => {
            Err(Failure::Setup.error(format!(
                "{what}: the server does not offer TLS, which endpoint.tls.mode requires; enable TLS on the server (ssl_cert, ssl_key) or lower the mode"
            )))
        }
        other => other.map_err(|e| my_error(e, &what)),
    }
}
