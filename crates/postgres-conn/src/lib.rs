//! PostgreSQL connections, shared by the capture (`source-postgres`) and the destination
//! (`materialize-postgres`): the TLS settings and their meaning (libpq's `sslmode`), a
//! connect that spawns the connection's driver, and the one SQLSTATE classifier that
//! decides whether a server error may pass.
//!
//! TLS defaults to `prefer`, as libpq does: encrypted where the server offers it.
//! `verify-full` checks the certificate against `root_cert` (or the public web roots) and
//! the host name; `require` encrypts without authenticating the server.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

pub use backfill_core::endpoint::{Login, Tls, TlsMode};

/// A PostgreSQL login: the shared block with PostgreSQL's default port.
pub type PgLogin = Login<5432>;

/// The driver's `sslmode` for a mode (verification is the rustls config's part).
pub fn ssl_mode(mode: TlsMode) -> SslMode {
    match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
    }
}

/// The rustls client config for `tls`; `None` when TLS is disabled. Errors name the
/// setting (`endpoint.tls.root_cert`).
pub fn tls_config(tls: &Tls) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = match tls.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        TlsMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &tls.root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("endpoint.tls.root_cert {path:?} cannot be read: {e}")
                    })?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert.map_err(|e| {
                            format!("endpoint.tls.root_cert {path:?} is not PEM: {e}")
                        })?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("endpoint.tls.root_cert {path:?}: {e}"))?;
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

/// Where and as whom to connect.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Host, port, user, password and TLS.
    pub login: &'a PgLogin,
    /// Database.
    pub database: &'a str,
    /// `application_name`, as the server shows it.
    pub application: &'a str,
    /// Startup options (`-c name=value ...`).
    pub options: &'a str,
}

impl Target<'_> {
    /// The driver's config: the target, the password when the login has one, a 15 s
    /// connect timeout, and the login's sslmode. Errors name the password setting that
    /// cannot be read.
    pub fn config(&self) -> Result<Config, String> {
        let password = self.login.resolve_password()?;
        let mut config = Config::new();
        config
            .host(&self.login.host)
            .port(self.login.port)
            .dbname(self.database)
            .user(&self.login.user)
            .application_name(self.application)
            .options(self.options)
            .connect_timeout(std::time::Duration::from_secs(15))
            .ssl_mode(ssl_mode(self.login.tls.mode));
        if let Some(password) = password {
            config.password(password);
        }
        Ok(config)
    }
}

/// Why a connect failed: the TLS settings, or the driver.
#[derive(Debug)]
pub enum ConnectError {
    /// The TLS settings are unusable (a definite error; the text names the setting).
    Tls(String),
    /// The driver's error (classify it with [`sqlstate_is_transient`]).
    Driver(tokio_postgres::Error),
}

/// Opens a query connection with `config` (its `sslmode` set from `tls`); the connection's
/// driver runs on a spawned task of the current tokio runtime.
pub async fn connect(config: &Config, tls: &Tls) -> Result<Client, ConnectError> {
    let mut config = config.clone();
    config.ssl_mode(ssl_mode(tls.mode));
    match tls_config(tls).map_err(ConnectError::Tls)? {
        Some(rustls) => drive(
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (*rustls).clone(),
                ))
                .await,
        ),
        None => drive(config.connect(tokio_postgres::NoTls).await),
    }
}

fn drive<S, T>(
    connected: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
) -> Result<Client, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let (client, connection) = connected.map_err(ConnectError::Driver)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "query connection closed");
        }
    });
    Ok(client)
}

/// Whether a server error with SQLSTATE `code` may pass, so the work is retried: the one
/// classifier for every PostgreSQL connection, query and replication stream.
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
pub fn sqlstate_is_transient(code: &str) -> bool {
    ["08", "57", "53", "40"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55006"
        || code == "55P03"
}

/// Whether a driver error may pass: a server error by [`sqlstate_is_transient`]; anything
/// not from the server (refused, reset, closed, timed out) may, unless it is about TLS.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => sqlstate_is_transient(db.code().code()),
        None => !is_tls_failure(e),
    }
}

/// Whether a connection error is the TLS handshake or certificate failing (configuration).
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain.contains("TLS") || chain.contains("certificate") || chain.contains("tls")
}
