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

/// Turns a driver error into a transient or definite source error with advice.
pub(crate) fn classify(e: &tokio_postgres::Error, endpoint: &Endpoint) -> SourceError {
    let target = format!("{}:{}/{}", endpoint.host, endpoint.port, endpoint.database);
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = db.message();
        return match code {
            "28P01" | "28000" => SourceError::definite(format!(
                "cannot log in to {target} as {:?}: {msg}; check the user and password (password, password_env or password_file)",
                endpoint.user
            )),
            "3D000" => SourceError::definite(format!("{target}: {msg}; check endpoint.database")),
            "42501" => SourceError::definite(format!(
                "{target}: permission denied: {msg}; see `check` for the grants the connector needs"
            )),
            // Admin shutdown, crash recovery, too many connections, slot in use: they pass.
            c if c.starts_with("57") || c.starts_with("08") || c == "53300" || c == "55006" => {
                SourceError::transient(format!("{target}: {msg}"))
            }
            _ => SourceError::definite(format!("{target}: {msg} (SQLSTATE {code})")),
        };
    }
    // Not from the server: TLS problems are configuration, everything else (refused,
    // reset, timed out) may pass.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if chain.contains("TLS") || chain.contains("certificate") || chain.contains("tls") {
        return SourceError::definite(format!(
            "{target}: {chain}; check endpoint.tls (mode, root_cert) and the server's certificate and ssl setting"
        ));
    }
    SourceError::transient(format!("{target}: {chain}"))
}
