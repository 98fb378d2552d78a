//! Connections: TLS setup, the session settings every connection uses, and the mapping
//! of connection errors to transient or definite.
//!
//! Every session runs with `TimeZone=UTC`, `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `extra_float_digits=1` and `bytea_output=hex`: the text forms the value conversion in
//! [`crate::value`] expects, on the query connections and on the walsender alike (the
//! walsender renders pgoutput's text values with its own session settings).

use std::sync::Arc;

use backfill_core::{Failure, SourceError};
use postgres_conn::ConnectError;
use rustls::ClientConfig;
use tokio_postgres::{Client, Config};

use crate::endpoint::{Endpoint, PgLogin};

/// Startup `options` of every connection.
pub(crate) const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=1 -c bytea_output=hex";

/// The rustls client config for the endpoint's TLS mode; `None` when TLS is disabled.
pub(crate) fn tls_config(endpoint: &Endpoint) -> Result<Option<Arc<ClientConfig>>, SourceError> {
    postgres_conn::tls_config(&endpoint.login.tls).map_err(|e| Failure::Setup.error(e))
}

/// The tokio-postgres config of the endpoint's database on the server `login` names (the
/// primary's or the replica's).
pub(crate) fn pg_config(endpoint: &Endpoint, login: &PgLogin) -> Result<Config, SourceError> {
    postgres_conn::Target {
        login,
        database: &endpoint.database,
        application: "source-postgres",
        options: SESSION_OPTIONS,
    }
    .config()
    .map_err(|e| Failure::Setup.error(e))
}

/// Opens a query connection to the primary; its driver runs on a spawned task.
pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Client, SourceError> {
    connect_to(endpoint, &endpoint.login).await
}

/// Opens a query connection to the server `login` names.
pub(crate) async fn connect_to(
    endpoint: &Endpoint,
    login: &PgLogin,
) -> Result<Client, SourceError> {
    postgres_conn::connect(&pg_config(endpoint, login)?, &login.tls)
        .await
        .map_err(|e| match e {
            ConnectError::Tls(text) => Failure::Setup.error(text),
            ConnectError::Driver(e) => classify(e, login, &endpoint.database),
        })
}

pub(crate) use postgres_conn::sqlstate_is_transient;

/// A server error as a source error: transient or definite by [`sqlstate_is_transient`],
/// with the remedy for the errors a user must act on. `what` says what was being done.
pub(crate) fn server_error(code: &str, message: &str, what: &str) -> SourceError {
    let text = format!("{what}: {message} (SQLSTATE {code})");
    if sqlstate_is_transient(code) {
        return Failure::Interrupted.error(text);
    }
    Failure::Setup.error(match code {
        "28P01" | "28000" => format!(
            "{text}; check the user and password (password, password_env or password_file), and that pg_hba.conf admits this connection"
        ),
        "3D000" => format!("{text}; check endpoint.database"),
        "42501" => format!("{text}; grant the connector's role what `check` lists"),
        "42P01" => format!("{text}; the table was dropped or renamed: remove or fix its binding"),
        _ => text,
    })
}

/// A driver error on a query: the server's error by [`server_error`]; anything else (the
/// connection closed or reset) is transient.
pub(crate) fn db_error(e: tokio_postgres::Error, what: &str) -> SourceError {
    let error = match e.as_db_error() {
        Some(db) => server_error(db.code().code(), db.message(), what),
        None => Failure::Interrupted.error(format!("{what}: {e}")),
    };
    error.because(e)
}

/// Turns a connection error into a transient or definite source error with advice.
pub(crate) fn classify(e: tokio_postgres::Error, login: &PgLogin, database: &str) -> SourceError {
    let target = format!("{}:{}/{database}", login.host, login.port);
    let error = if let Some(db) = e.as_db_error() {
        server_error(
            db.code().code(),
            db.message(),
            &format!("connecting to {target} as {:?}", login.user),
        )
    } else if postgres_conn::is_tls_failure(&e) {
        // Not from the server: TLS problems are configuration, everything else (refused,
        // reset, timed out) may pass.
        Failure::Setup.error(format!(
            "{target}: {}; check endpoint.tls (mode, root_cert) and the server's certificate and ssl setting",
            backfill_core::error::error_chain(&e)
        ))
    } else {
        Failure::Interrupted.error(format!(
            "{target}: {}",
            backfill_core::error::error_chain(&e)
        ))
    };
    error.because(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_core::error::ErrorKind;

    #[test]
    fn one_classifier_for_every_server_error() {
        for code in [
            "57P01", "57P02", "57P03", "57014", "08006", "53300", "53200", "40001", "40P01",
            "55006", "55P03",
        ] {
            assert_eq!(
                server_error(code, "m", "w").kind(),
                ErrorKind::Transient,
                "{code}"
            );
        }
        for code in [
            "42501", "42P01", "28P01", "3D000", "42601", "55000", "XX000",
        ] {
            assert_eq!(
                server_error(code, "m", "w").kind(),
                ErrorKind::Definite,
                "{code}"
            );
        }
        assert!(
            server_error("28P01", "m", "w")
                .message()
                .contains("check the user and password")
        );
    }
}
