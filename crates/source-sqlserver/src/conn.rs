//! Connections: tiberius over tokio with rustls, session settings, and the split of server
//! errors into transient (retry) and definite (stop and say what to do).

use std::time::Duration;

use backfill_core::{Failure, SourceError};
use tiberius::{AuthMethod, ColumnData, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::endpoint::{Endpoint, SsLogin, TlsMode};
use crate::position::Lsn;

/// A query connection.
pub type Client = tiberius::Client<Compat<TcpStream>>;

/// `tiberius::Client` has no `Debug`.
pub struct ClientBox(pub Client);

impl std::fmt::Debug for ClientBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// The tiberius config for `endpoint`'s primary.
pub fn config(endpoint: &Endpoint) -> Result<Config, SourceError> {
    config_for(endpoint, &endpoint.login, false)
}

/// The tiberius config for the endpoint's database on the server `login` names; `readonly`
/// declares a read-only intent (`ApplicationIntent=ReadOnly`), which an availability
/// group's listener routes to a readable secondary.
pub fn config_for(
    endpoint: &Endpoint,
    login: &SsLogin,
    readonly: bool,
) -> Result<Config, SourceError> {
    let mut config = Config::new();
    config.host(&login.host);
    config.port(login.port);
    config.readonly(readonly);
    config.database(&endpoint.database);
    config.application_name("source-sqlserver");
    let password = login
        .resolve_password()
        .map_err(|e| Failure::Setup.error(e))?
        .unwrap_or_default();
    config.authentication(AuthMethod::sql_server(&login.user, password));
    // The shared TLS policy (backfill_core::endpoint) in tiberius's terms: the server
    // always offers TLS (it encrypts every login), so `prefer` encrypts everything.
    match login.tls.mode {
        TlsMode::Disable => config.encryption(EncryptionLevel::Off),
        TlsMode::Prefer => {
            config.encryption(EncryptionLevel::On);
            config.trust_cert();
        }
        TlsMode::Require => {
            config.encryption(EncryptionLevel::Required);
            config.trust_cert();
        }
        TlsMode::VerifyFull => {
            config.encryption(EncryptionLevel::Required);
            if let Some(path) = &login.tls.root_cert {
                config.trust_cert_ca(path);
            }
        }
    }
    // Backfill chunks and change reads can legitimately take longer than the driver's
    // 30-second default between responses; connection loss is still noticed by TCP.
    config.command_timeout(None);
    config.handshake_timeout(Some(Duration::from_secs(30)));
    Ok(config)
}

/// Connects and prepares the session (READ COMMITTED, UTC-independent settings).
pub async fn connect(endpoint: &Endpoint) -> Result<Client, SourceError> {
    Box::pin(connect_inner(config(endpoint)?, &endpoint.login)).await
}

/// Connects to a readable secondary `login` names, with a read-only intent.
pub async fn connect_secondary(
    endpoint: &Endpoint,
    login: &SsLogin,
) -> Result<Client, SourceError> {
    Box::pin(connect_inner(config_for(endpoint, login, true)?, login)).await
}

async fn connect_inner(config: Config, login: &SsLogin) -> Result<Client, SourceError> {
    // tiberius builds its TLS config from the process-wide rustls provider when one is
    // installed; the workspace uses ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let where_ = format!("connecting to {}", login.address());
    let tcp = TcpStream::connect(config.get_addr())
        .await
        .map_err(|e| Failure::Interrupted.error(format!("{where_}: {e}")))?;
    tcp.set_nodelay(true)
        .map_err(|e| Failure::Interrupted.error(format!("{where_}: {e}")))?;
    let mut client = Box::pin(tiberius::Client::connect(config, tcp.compat_write()))
        .await
        .map_err(|e| classify(e, &where_))?;
    client
        .simple_query(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET XACT_ABORT ON; SET LOCK_TIMEOUT -1; SET DATEFORMAT ymd",
        )
        .await
        .map_err(|e| classify(e, "preparing the session"))?
        .into_results()
        .await
        .map_err(|e| classify(e, "preparing the session"))?;
    Ok(client)
}

/// Transient (retry) or definite (stop, with the fix), by SQL Server error number.
pub fn classify(e: tiberius::error::Error, what: &str) -> SourceError {
    let error = match &e {
        tiberius::error::Error::Server(t) => {
            let text = format!("{what}: {} (error {})", t.message(), t.code());
            match t.code() {
                18456 => Failure::Setup.error(format!("{text}; check the user and password")),
                4060 => Failure::Setup.error(format!(
                    "{text}; check the database name and that the login has a user in it"
                )),
                229 | 230 | 262 | 297 | 300 | 916 | 15247 => {
                    Failure::Setup.error(format!("{text}; grant the login what `check` lists"))
                }
                208 => Failure::Lost.error(format!(
                    "{text}; the table or its change table is gone: was it dropped, renamed, or CDC disabled on it?"
                )),
                313 => Failure::Lost.error(format!(
                    "{text}: the change tables no longer hold the stream position (CDC cleanup ran past it). Raise `backfill` for every binding to re-establish it, and lengthen the cleanup job's retention"
                )),
                // Deadlock victim, lock or resource waits, database failing over or in
                // recovery, connection-level errors: retry.
                // 3948 and 3961: a readable secondary's snapshot ended by a replica state
                // change or by DDL replayed under it.
                1205 | 1222 | 701 | 8645 | 40197 | 40501 | 40613 | 49918 | 49919 | 49920 | 4221
                | 976 | 983 | 922 | 926 | 942 | 6005 | 233 | 10053 | 10054 | 10060 | 3948
                | 3961 => {
                    Failure::Interrupted.error(text)
                }
                _ => Failure::Setup.error(text),
            }
        }
        tiberius::error::Error::Tls(m) => Failure::Setup.error(format!(
            "{what}: TLS: {m}; for a self-signed server certificate set tls.root_cert to it, or tls.mode = \"require\""
        )),
        tiberius::error::Error::Routing { host, port } => Failure::Setup.error(format!(
            "{what}: the server redirects to {host}:{port}; connect there"
        )),
        other => Failure::Interrupted.error(format!("{what}: {other}")),
    };
    error.because(e)
}

/// Runs `sql` with `params` and returns the first result set.
pub async fn query_rows(
    client: &mut Client,
    sql: &str,
    params: Vec<ColumnData<'static>>,
    what: &str,
) -> Result<Vec<Row>, SourceError> {
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    let stream = client
        .query(sql, &refs)
        .await
        .map_err(|e| classify(e, what))?;
    stream
        .into_first_result()
        .await
        .map_err(|e| classify(e, what))
}

/// Runs a statement (or batch) with `params`, discarding results.
pub async fn execute(
    client: &mut Client,
    sql: &str,
    params: Vec<ColumnData<'static>>,
    what: &str,
) -> Result<(), SourceError> {
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    client
        .execute(sql, &refs)
        .await
        .map(|_| ())
        .map_err(|e| classify(e, what))
}

/// Column `i` as an integer (any integer width, or bit).
pub fn column_i64(row: &Row, i: usize) -> Option<i64> {
    match row.get_column_data(i).ok()? {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        ColumnData::Bit(v) => v.map(i64::from),
        _ => None,
    }
}

/// Column `i` as text.
pub fn column_string(row: &Row, i: usize) -> Option<String> {
    match row.get_column_data(i).ok()? {
        ColumnData::String(v) => v.as_ref().map(|s| s.to_string()),
        _ => None,
    }
}

/// Column `i` as an LSN (`binary(10)`), read in place.
pub fn column_lsn(row: &Row, i: usize) -> Option<Lsn> {
    match row.get_column_data(i).ok()? {
        ColumnData::Binary(Some(b)) => Lsn::from_bytes(b),
        _ => None,
    }
}

/// Column `i` as bytes.
pub fn column_bytes(row: &Row, i: usize) -> Option<Vec<u8>> {
    match row.get_column_data(i).ok()? {
        ColumnData::Binary(v) => v.as_ref().map(|b| b.to_vec()),
        _ => None,
    }
}

/// The maximum LSN the capture job has recorded, `None` before it ever ran.
pub async fn max_lsn(client: &mut Client) -> Result<Option<Lsn>, SourceError> {
    let rows = query_rows(
        client,
        "SELECT sys.fn_cdc_get_max_lsn()",
        Vec::new(),
        "reading sys.fn_cdc_get_max_lsn()",
    )
    .await?;
    Ok(rows.first().and_then(|r| column_lsn(r, 0)))
}
