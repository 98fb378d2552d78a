//! A small client for PostgreSQL's streaming replication protocol, on `postgres-protocol`.
//!
//! tokio-postgres has no replication mode (no `replication=database`, no CopyBoth), so this
//! module speaks the protocol itself: TLS negotiation, startup, password / MD5 / SCRAM
//! authentication, simple queries (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`), and the
//! CopyBoth stream of `START_REPLICATION` (XLogData and keepalives from the server, standby
//! status updates from us). Owning it keeps the hot path (message framing) allocation-free
//! and lets the stream ask for keepalives when it needs a position (see [`Self::send_status`]).
//!
//! Reads go through [`Self::fill`], which is cancel-safe: a read interrupted by a timeout
//! loses nothing, so callers may wrap it in `tokio::time::timeout`.

use std::sync::Arc;

use backfill_core::{Failure, SourceError};
use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::{SESSION_OPTIONS, tls_config};
use crate::endpoint::{Endpoint, TlsMode};
use crate::position::Lsn;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What the server sends on the replication stream.
#[derive(Debug)]
pub enum ReplMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        /// Location of the data.
        start: Lsn,
        /// The message bytes.
        data: bytes::Bytes,
    },
    /// A keepalive: the server has sent everything up to `wal_end`.
    Keepalive {
        /// End of WAL sent so far.
        wal_end: Lsn,
        /// Whether the server asks for a status update now.
        reply_requested: bool,
    },
}

/// A replication connection.
pub struct ReplicationConn {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: BytesMut,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicationConn")
    }
}

/// An error the server reported.
fn server_error(body: &[u8]) -> SourceError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into_owned(),
            Some(b'M') => message = String::from_utf8_lossy(&field[1..]).into_owned(),
            _ => {}
        }
    }
    crate::conn::server_error(&code, &message, "replication connection")
}

#[allow(clippy::needless_pass_by_value)] // used as a `map_err` function
fn io_err(e: std::io::Error) -> SourceError {
    Failure::Interrupted.error(format!("replication connection: {e}"))
}

impl ReplicationConn {
    /// Connects, negotiates TLS as the endpoint asks, and authenticates.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, SourceError> {
        let tcp = TcpStream::connect((endpoint.login.host.as_str(), endpoint.login.port))
            .await
            .map_err(|e| {
                Failure::Interrupted.error(format!(
                    "cannot reach {}:{}: {e}",
                    endpoint.login.host, endpoint.login.port
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls_config(endpoint)? {
            None => Box::new(tcp),
            Some(config) => {
                let mut tcp = tcp;
                let mut req = BytesMut::new();
                frontend::ssl_request(&mut req);
                tcp.write_all(&req).await.map_err(io_err)?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await.map_err(io_err)?;
                match answer[0] {
                    b'S' => {
                        let name =
                            rustls::pki_types::ServerName::try_from(endpoint.login.host.clone())
                                .map_err(|e| {
                                    Failure::Setup.error(format!(
                                        "endpoint.host {:?} is not a valid TLS server name: {e}",
                                        endpoint.login.host
                                    ))
                                })?;
                        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                            .connect(name, tcp)
                            .await
                            .map_err(|e| {
                                Failure::Setup.error(format!(
                                    "TLS handshake with {} failed: {e}",
                                    endpoint.login.host
                                ))
                            })?;
                        Box::new(tls)
                    }
                    _ if endpoint.login.tls.mode == TlsMode::Prefer => Box::new(tcp),
                    _ => {
                        return Err(Failure::Setup.error(format!(
                            "{} does not accept TLS but endpoint.tls.mode requires it; enable ssl on the server or lower the mode",
                            endpoint.login.host
                        )));
                    }
                }
            }
        };
        let mut conn = Self {
            io,
            buf: BytesMut::with_capacity(1 << 16),
            out: BytesMut::with_capacity(256),
        };
        conn.startup(endpoint).await?;
        Ok(conn)
    }

    async fn startup(&mut self, endpoint: &Endpoint) -> Result<(), SourceError> {
        let params = [
            ("user", endpoint.login.user.as_str()),
            ("database", endpoint.database.as_str()),
            ("replication", "database"),
            ("application_name", "source-postgres"),
            ("options", SESSION_OPTIONS),
        ];
        self.out.clear();
        frontend::startup_message(params.iter().copied(), &mut self.out).map_err(io_err)?;
        self.flush_out().await?;
        let password = endpoint
            .login
            .resolve_password()
            .map_err(|e| Failure::Setup.error(e))?;
        let need_password = || {
            Failure::Setup.error(format!(
                "the server asks a password for {:?}; set endpoint.password, password_env or password_file",
                endpoint.login.user
            ))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'R' => {
                    let mut b = &body[..];
                    if b.len() < 4 {
                        return Err(Failure::Malformed.error("malformed authentication request"));
                    }
                    match b.get_i32() {
                        0 => {}
                        3 => {
                            let p = password.as_deref().ok_or_else(need_password)?;
                            self.out.clear();
                            frontend::password_message(p.as_bytes(), &mut self.out)
                                .map_err(io_err)?;
                            self.flush_out().await?;
                        }
                        5 => {
                            let p = password.as_deref().ok_or_else(need_password)?;
                            if b.len() < 4 {
                                return Err(Failure::Malformed.error("malformed MD5 request"));
                            }
                            let salt = [b[0], b[1], b[2], b[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                endpoint.login.user.as_bytes(),
                                p.as_bytes(),
                                salt,
                            );
                            self.out.clear();
                            frontend::password_message(hash.as_bytes(), &mut self.out)
                                .map_err(io_err)?;
                            self.flush_out().await?;
                        }
                        10 => {
                            let p = password.as_deref().ok_or_else(need_password)?;
                            let mechanisms = String::from_utf8_lossy(b);
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(Failure::Setup
                                    .error(format!("unsupported SASL mechanisms {mechanisms:?}")));
                            }
                            let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                            self.out.clear();
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut self.out,
                            )
                            .map_err(io_err)?;
                            self.flush_out().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Failure::Malformed.error("SASL continue without a start")
                            })?;
                            s.update(b)
                                .map_err(|e| Failure::Setup.error(format!("SCRAM: {e}")))?;
                            self.out.clear();
                            frontend::sasl_response(s.message(), &mut self.out).map_err(io_err)?;
                            self.flush_out().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Failure::Malformed.error("SASL final without a start")
                            })?;
                            s.finish(b)
                                .map_err(|e| Failure::Setup.error(format!("SCRAM: {e}")))?;
                        }
                        other => {
                            return Err(Failure::Setup
                                .error(format!("unsupported authentication method {other}")));
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    async fn flush_out(&mut self) -> Result<(), SourceError> {
        self.io.write_all(&self.out).await.map_err(io_err)?;
        self.io.flush().await.map_err(io_err)
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), SourceError> {
        let n = self.io.read_buf(&mut self.buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(Failure::Interrupted.error("the server closed the replication connection"));
        }
        Ok(())
    }

    async fn read_message(&mut self) -> Result<(u8, BytesMut), SourceError> {
        loop {
            if let Some(m) = split_message(&mut self.buf)? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Runs a replication command with the simple query protocol and returns its rows.
    pub async fn simple_query(
        &mut self,
        query: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        self.out.clear();
        frontend::query(query, &mut self.out).map_err(io_err)?;
        self.flush_out().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'D' => {
                    let mut b = &body[..];
                    let n = if b.len() >= 2 { b.get_i16() } else { 0 };
                    let mut row = Vec::new();
                    for _ in 0..n {
                        if b.len() < 4 {
                            break;
                        }
                        let len = b.get_i32();
                        match usize::try_from(len) {
                            Ok(len) if len <= b.len() => {
                                row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
                                b.advance(len);
                            }
                            _ => row.push(None),
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(&body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Starts streaming from `slot` at `start` with the given plugin options; the server
    /// answers with CopyBoth.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<(), SourceError> {
        let opts = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let query = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({opts})",
            crate::sql::quote(slot)
        );
        self.out.clear();
        frontend::query(&query, &mut self.out).map_err(io_err)?;
        self.flush_out().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// The next replication message, if a complete one is buffered.
    pub fn try_next(&mut self) -> Result<Option<ReplMessage>, SourceError> {
        while let Some((tag, body)) = split_message(&mut self.buf)? {
            if let Some(m) = replication_message(tag, body)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Sends a standby status update: everything up to `flushed` is durable downstream.
    /// With `reply` the server answers at once with a keepalive carrying its position.
    pub async fn send_status(&mut self, flushed: Lsn, reply: bool) -> Result<(), SourceError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            - PG_EPOCH_OFFSET_US;
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(flushed.0);
        payload.put_u64(flushed.0);
        payload.put_u64(flushed.0);
        payload.put_i64(now_us);
        payload.put_u8(u8::from(reply));
        self.out.clear();
        self.out.put_u8(b'd');
        self.out
            .put_u32(u32::try_from(payload.len() + 4).unwrap_or(u32::MAX));
        self.out.extend_from_slice(&payload);
        self.flush_out().await
    }
}

/// Splits one complete backend message (tag, then a length that counts itself) off the
/// front of `buf`: `Ok(None)` until all of it has arrived. Takes arbitrary bytes without
/// panicking; a length below 4 is malformed.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, SourceError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 4)
        .ok_or_else(|| Failure::Malformed.error(format!("malformed message length {len}")))?;
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    let mut msg = buf.split_to(1 + len);
    msg.advance(5);
    Ok(Some((tag, msg)))
}

/// A backend message during streaming: XLogData or a keepalive (`None` for messages
/// that carry nothing for the stream: notices, parameter status, empty CopyData). Takes
/// arbitrary bytes without panicking.
pub fn replication_message(
    tag: u8,
    mut body: BytesMut,
) -> Result<Option<ReplMessage>, SourceError> {
    match tag {
        b'd' => match body.first() {
            None => Ok(None),
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let start = Lsn(body.get_u64());
                let _end = body.get_u64();
                let _ts = body.get_i64();
                Ok(Some(ReplMessage::XLogData {
                    start,
                    data: body.freeze(),
                }))
            }
            Some(b'k') if body.len() >= 18 => {
                body.advance(1);
                let wal_end = Lsn(body.get_u64());
                let _ts = body.get_i64();
                let reply_requested = body.get_u8() == 1;
                Ok(Some(ReplMessage::Keepalive {
                    wal_end,
                    reply_requested,
                }))
            }
            Some(other) => Err(Failure::Malformed.error(format!(
                "unexpected replication message {:?}",
                *other as char
            ))),
        },
        b'E' => Err(server_error(&body)),
        b'c' => Err(Failure::Interrupted.error("the server ended the replication stream")),
        _ => Ok(None),
    }
}
