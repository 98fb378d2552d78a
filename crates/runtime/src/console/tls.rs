//! HTTPS for the console: its certificate and key from PEM files (`--console-cert`,
//! `--console-key`), read at start so that a bad file stops `cdc` before anything runs,
//! and a listener that hands the HTTP server only connections whose TLS handshake is done.
//! Handshakes run side by side, each for at most [`HANDSHAKE`], so a client that connects
//! and says nothing holds up no one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};

/// How long a client has to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The console's certificate and key: serve HTTPS instead of HTTP.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsFiles {
    /// The console's certificate chain (PEM), to serve HTTPS; with --console-key.
    #[arg(long = "console-cert", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key of --console-cert (PEM).
    #[arg(long = "console-key", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The acceptor, when a certificate is given; errors name the file and what is wrong.
    pub(super) fn acceptor(&self) -> Result<Option<TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::Spec(format!(
                    "--console-{what} {}: cannot read it: {e}",
                    path.display()
                ))
            })
        };
        let pem = read(cert, "cert")?;
        let chain = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Spec(format!("--console-cert {}: not PEM: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(Error::Spec(format!(
                "--console-cert {}: holds no certificate (want PEM: -----BEGIN CERTIFICATE-----)",
                cert.display()
            )));
        }
        let pem = read(key, "key")?;
        let private = rustls_pemfile::private_key(&mut pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::Spec(format!(
                    "--console-key {}: holds no private key (want PEM: PKCS#8, PKCS#1 or SEC1)",
                    key.display()
                ))
            })?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Spec(format!("the console's TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            Error::Spec(format!(
                "--console-cert and --console-key do not make a certificate: {e}"
            ))
        })?;
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// TCP connections handed on once their TLS handshake is done.
pub(super) struct TlsListener {
    pub(super) tcp: TcpListener,
    pub(super) acceptor: TlsAcceptor,
    pub(super) handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await;
                            Some((tls.ok()?.ok()?, addr))
                        });
                    }
                    // Out of descriptors, say: wait instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
