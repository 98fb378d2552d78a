//! Connections: TLS setup, the session settings every connection uses, and the mapping
//! of connection errors to transient or definite.
//!
//! Every session runs with `TimeZone=UTC`, `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `extra_float_digits=1` and `bytea_output=hex`: the text forms the value conversion in
//! [`crate::value`] expects, on the query connections and on the walsender alike (the
//! walsender renders pgoutput's text values with its own session settings).

use std::sync::Arc;

use backfill_core::SourceError;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

use crate::endpoint::{Endpoint, TlsMode};

/// Startup `options` of every connection.
pub(crate) const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=1 -c bytea_output=hex";

/// The rustls client config for the endpoint's TLS mode; `None` when TLS is disabled.
pub(crate) fn tls_config(endpoint: &Endpoint) -> Result<Option<Arc<ClientConfig>>, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::definite(format!("TLS setup failed: {e}")))?;
    let config = match endpoint.tls.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        TlsMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &endpoint.tls.root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        SourceError::definite(format!(
                            "endpoint.tls.root_cert {path:?} cannot be read: {e}"
                        ))
                    })?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert.map_err(|e| {
                            SourceError::definite(format!(
                                "endpoint.tls.root_cert {path:?} is not PEM: {e}"
                            ))
                        })?;
                        roots.add(cert).map_err(|e| {
                            SourceError::definite(format!("endpoint.tls.root_cert {path:?}: {e}"))
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Encrypts without authenticating the server: libpq's `sslmode=require`.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The tokio-postgres config of the endpoint.
pub(crate) fn pg_config(endpoint: &Endpoint) -> Result<Config, SourceError> {
    let mut config = Config::new();
    config
        .host(&endpoint.host)
        .port(endpoint.port)
        .dbname(&endpoint.database)
        .user(&endpoint.user)
        .application_name("source-postgres")
        .options(SESSION_OPTIONS)
        .connect_timeout(std::time::Duration::from_secs(15))
        .ssl_mode(match endpoint.tls.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        });
    if let Some(password) = endpoint.resolve_password().map_err(SourceError::definite)? {
        config.password(password);
    }
    Ok(config)
}

/// Opens a query connection; its driver runs on a spawned task.
pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Client, SourceError> {
    let config = pg_config(endpoint)?;
    match tls_config(endpoint)? {
        Some(tls) => drive(
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (*tls).clone(),
                ))
                .await,
            endpoint,
        ),
        None => drive(config.connect(tokio_postgres::NoTls).await, endpoint),
    }
}

fn drive<S, T>(
    connected: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
    endpoint: &Endpoint,
) -> Result<Client, SourceError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let (client, connection) = connected.map_err(|e| classify(&e, endpoint))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "query connection closed");
        }
    });
    Ok(client)
}

/// Whether a server error with SQLSTATE `code` may pass, so the capture retries from its
/// last checkpoint: the one classifier of this crate, for query connections, the catalog,
/// scans and the replication connection alike.
///
/// * class 08, connection exception;
/// * class 57, operator intervention: a backend terminated (`57P01`, a failover or
///   `pg_terminate_backend`), crash shutdown, the server starting up, a query cancelled
///   (a recovery conflict on a standby);
/// * class 53, insufficient resources: too many connections, out of memory, disk full;
/// * class 40, transaction rollback: serialization failure, deadlock;
/// * `55006`, object in use (a slot still held by a dying walsender), and `55P03`, lock
///   not available.
///
/// Everything else (permissions, a missing table, bad SQL, a lost slot) is definite.
pub(crate) fn sqlstate_is_transient(code: &str) -> bool {
    ["08", "57", "53", "40"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55006"
        || code == "55P03"
}

/// A server error as a source error: transient or definite by [`sqlstate_is_transient`],
/// with the remedy for the errors a user must act on. `what` says what was being done.
pub(crate) fn server_error(code: &str, message: &str, what: &str) -> SourceError {
    let text = format!("{what}: {message} (SQLSTATE {code})");
    if sqlstate_is_transient(code) {
        return SourceError::transient(text);
    }
    SourceError::definite(match code {
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
pub(crate) fn db_error(e: &tokio_postgres::Error, what: &str) -> SourceError {
    match e.as_db_error() {
        Some(db) => server_error(db.code().code(), db.message(), what),
        None => SourceError::transient(format!("{what}: {e}")),
    }
}

/// Turns a connection error into a transient or definite source error with advice.
pub(crate) fn classify(e: &tokio_postgres::Error, endpoint: &Endpoint) -> SourceError {
    let target = format!("{}:{}/{}", endpoint.host, endpoint.port, endpoint.database);
    if let Some(db) = e.as_db_error() {
        return server_error(
            db.code().code(),
            db.message(),
            &format!("connecting to {target} as {:?}", endpoint.user),
        );
    }
    // Not from the server: TLS problems are configuration, everything else (refused,
    // reset, timed out) may pass.
    let chain = backfill_core::error::error_chain(e);
    if chain.contains("TLS") || chain.contains("certificate") || chain.contains("tls") {
        return SourceError::definite(format!(
            "{target}: {chain}; check endpoint.tls (mode, root_cert) and the server's certificate and ssl setting"
        ));
    }
    SourceError::transient(format!("{target}: {chain}"))
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
