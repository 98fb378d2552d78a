//! The operations console (`cdc run --console ADDR`, `cdc console PIPELINE`): one web page
//! with the pipeline's captures, bindings and materializations, each binding's progress,
//! a chart of throughput and lag, and the backfill dialog of the product docs; served with
//! the runtime's Prometheus page (`/metrics`) by one HTTP server.
//!
//! ## Where the figures come from
//!
//! Everything the page shows is what `cdc status` reads ([`Watcher`]): the store's
//! committed state and progress, the destinations' positions, the backfill requests. So the
//! console of a running `cdc run` and a `cdc console` beside it (or after it stopped) show
//! the same pipeline, and a request the page shows survives a restart of either: it lives
//! in the store, not in the page or the server. One reader thread (the caller's) reads the
//! status every second and publishes it; the HTTP server only hands out what was last
//! published, so a thousand open pages cost the store nothing more. The chart's history
//! (one sample every two seconds, an hour of them) is the server's memory: a new
//! console starts with an empty chart.
//!
//! ## What the page may do
//!
//! The dialog posts what `cdc backfill` takes ([`Wanted`]); the reader thread turns it
//! into requests with the same validation and writes them to the store, where `cdc run`
//! carries them out. The page never sees an endpoint: the pipeline overview names
//! captures, collections, materializations and tables, never a config or a password.
//!
//! ## Safe by default
//!
//! * Bound to loopback unless told otherwise; bound elsewhere it refuses to start without a
//!   token ([`TOKEN_ENV`]).
//! * With a token, every route wants it: `Authorization: Bearer`, or the cookie that
//!   opening `/?token=...` once sets (`HttpOnly`, `SameSite=Strict`, then a redirect that
//!   drops the token from the address bar).
//! * Bound to loopback, a request whose `Host` is not a loopback name is refused, so a page
//!   of another site cannot reach the console through a DNS name rebound to 127.0.0.1.
//! * An action (any POST) must come from the console's own origin: a browser's `Origin`
//!   must name the console, `Sec-Fetch-Site` must not be cross-site, and the body must be
//!   `application/json`, which no cross-site form can send.
//! * Every response forbids framing and scripts from elsewhere (`Content-Security-Policy`).
//! * HTTPS with `--console-cert` and `--console-key` ([`tls`]); the token's cookie is then
//!   `Secure`.

mod history;
mod metrics;
mod tls;

pub use tls::TlsFiles;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde_json::{Value, json};

use crate::destination::DestinationKind;
use crate::error::{Error, Result};
use crate::request::wanted::{self, Wanted};
use crate::spec::Pipeline;
use crate::status::{PipelineStatus, Watcher, now_ms};
use crate::store::Store;

use history::History;

/// The environment variable that holds the console's token.
pub const TOKEN_ENV: &str = "CDC_CONSOLE_TOKEN";

/// The address `--console` and `cdc console` use when none is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8642";

const PAGE: &str = include_str!("console/page.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");
const COOKIE: &str = "cdc_console_token";

/// A console bound to its address, not serving yet: binding first reports a taken or
/// forbidden address at start, before any capture runs.
pub struct Bound {
    listener: std::net::TcpListener,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// Binds `addr`, serving HTTPS when `tls` names a certificate. `token` is required
    /// unless `addr` is a loopback address.
    pub fn bind(addr: SocketAddr, token: Option<String>, tls: &TlsFiles) -> Result<Self> {
        let tls = tls.acceptor()?;
        if let Some(t) = &token {
            // It travels in a URL and a cookie, unescaped.
            if !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
            {
                return Err(Error::Spec(format!(
                    "{TOKEN_ENV}: use letters, digits, '-', '_', '.' and '~' only (the token travels in a URL and a cookie)"
                )));
            }
            if t.len() < 16 {
                tracing::warn!(
                    "{TOKEN_ENV} is shorter than 16 characters: a short token can be guessed"
                );
            }
        }
        let token = token.filter(|t| !t.is_empty());
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(Error::Spec(format!(
                "the console at {addr} would be reachable from other machines: set {TOKEN_ENV} to a secret token, or bind it to 127.0.0.1"
            )));
        }
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::Spec(format!("--console {addr}: cannot listen there: {e}")))?;
        Ok(Self {
            listener,
            token,
            tls,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Spec(format!("the console's address: {e}")))
    }

    /// Serves the console until `stop` is set: the HTTP server on a thread of its own, the
    /// status reads and the requests' writes on this one.
    pub fn serve(
        self,
        pipeline: &Pipeline,
        store: &dyn Store,
        kinds: &[Box<dyn DestinationKind>],
        stop: &AtomicBool,
    ) -> Result<()> {
        let addr = self.local_addr()?;
        let (published, watch) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let (actions, asked) = mpsc::channel();
        let shared = Arc::new(Shared {
            status: watch,
            history: Mutex::new(History::default()),
            actions,
            token: self.token,
            loopback: addr.ip().is_loopback(),
            secure: self.tls.is_some(),
        });
        let (listener, tls) = (self.listener, self.tls);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || http(listener, tls, server))
            .map_err(|e| Error::Spec(format!("cannot start the console's thread: {e}")))?;
        tracing::info!("console at {scheme}://{addr}/");

        let overview = overview(pipeline);
        let mut watcher = Watcher::new(pipeline, kinds);
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match asked.recv_timeout(wait) {
                Ok(Action::Backfill(wanted, reply)) => {
                    let _ = reply.send(request(pipeline, store, &wanted));
                    // The page shows its request at the next publication: make it now.
                    next = Instant::now();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next {
                let read = watcher.read(store);
                let sample = read.as_ref().ok().map(|status| {
                    let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
                    history.observe(status, now_ms())
                });
                let _ = published.send(Arc::new(Snapshot::new(&overview, read, sample.as_ref())));
                next = Instant::now() + Duration::from_secs(1);
            }
        }
        Ok(())
    }
}

/// Writes the requests `wanted` asks for; the lines `cdc backfill` would print, or why not.
fn request(
    pipeline: &Pipeline,
    store: &dyn Store,
    wanted: &Wanted,
) -> std::result::Result<Vec<String>, String> {
    let requests = wanted::requests(pipeline, wanted).map_err(|e| e.to_string())?;
    for r in &requests {
        store.put_request(r).map_err(|e| e.to_string())?;
        tracing::info!(request = %r.line(), "backfill requested from the console");
    }
    Ok(requests.iter().map(crate::request::Request::line).collect())
}

/// The pipeline's shape as the page shows it: names only, never an endpoint or a config.
fn overview(pipeline: &Pipeline) -> Value {
    json!({
        "captures": pipeline.captures.iter().map(|c| json!({
            "name": c.name,
            "connector": c.connector.file_name().map(|n| n.to_string_lossy().to_string()),
            "collections": c.collections,
        })).collect::<Vec<_>>(),
        "materializations": pipeline.spec.materializations.iter().map(|m| json!({
            "name": m.name,
            "destination": m.destination,
            "bindings": m.bindings.iter().map(|b| json!({
                "source": b.source, "target": b.target, "delta_updates": b.delta_updates,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// What the reader thread last published.
#[derive(Debug, Default)]
struct Snapshot {
    /// The page's JSON: `pipeline`, `status`, `sample`, `error`, `now_ms`.
    json: String,
    /// The status, for `/metrics`.
    status: Option<PipelineStatus>,
}

impl Snapshot {
    fn new(overview: &Value, read: Result<PipelineStatus>, sample: Option<&Value>) -> Self {
        let (status, error) = match read {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let json = json!({
            "pipeline": overview,
            "status": status,
            "sample": sample,
            "error": error,
            "now_ms": now_ms(),
        })
        .to_string();
        Self { json, status }
    }
}

/// An action of the page, carried out on the reader thread.
#[derive(Debug)]
enum Action {
    Backfill(
        Wanted,
        tokio::sync::oneshot::Sender<std::result::Result<Vec<String>, String>>,
    ),
}

/// What the HTTP handlers share.
#[derive(Debug)]
struct Shared {
    status: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    history: Mutex<History>,
    actions: mpsc::Sender<Action>,
    token: Option<String>,
    loopback: bool,
    /// Served over HTTPS: the token's cookie is `Secure`.
    secure: bool,
}

/// The HTTP server, on a runtime of its own, until the process ends.
fn http(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("the console cannot start its runtime");
        return;
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the console cannot listen");
                return;
            }
        };
        let served = match tls {
            Some(acceptor) => {
                let listener = tls::TlsListener {
                    tcp: listener,
                    acceptor,
                    handshakes: tokio::task::JoinSet::new(),
                };
                axum::serve(listener, router(shared)).await
            }
            None => axum::serve(listener, router(shared)).await,
        };
        if let Err(e) = served {
            tracing::warn!(error = %e, "the console stopped");
        }
    });
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/console.js", get(|| asset("text/javascript", SCRIPT)))
        .route("/console.css", get(|| asset("text/css", STYLE)))
        .route("/api/status", get(status))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/backfill", post(backfill))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The page; opened as `/?token=...`, it sets the token's cookie and sends the browser
/// back to `/`.
async fn page(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if let Some(token) = query_token(&request) {
        // The guard checked the token: keep it in a cookie only.
        let secure = if shared.secure { "; Secure" } else { "" };
        let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
        return (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, "/".to_string()),
            ],
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let json = shared.status.borrow().json.clone();
    if json.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the console has not read the status yet; ask again in a second",
        );
    }
    json_response(StatusCode::OK, json)
}

async fn history(State(shared): State<Arc<Shared>>) -> Response {
    let json = shared
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .to_json()
        .to_string();
    json_response(StatusCode::OK, json)
}

/// Server-sent events: the status as soon as it is published, each publication after.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let watch = shared.status.clone();
    let stream = futures_util::stream::unfold((watch, true), |(mut watch, first)| async move {
        let mut json = if first {
            watch.borrow_and_update().json.clone()
        } else {
            String::new()
        };
        // Nothing is published before the first read.
        while json.is_empty() {
            watch.changed().await.ok()?;
            json = watch.borrow_and_update().json.clone();
        }
        Some((
            Ok(Event::default().event("status").data(json)),
            (watch, false),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `POST /api/backfill` with what `cdc backfill` takes, as JSON.
async fn backfill(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let wanted: Wanted = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the request: {e}")),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if shared
        .actions
        .send(Action::Backfill(wanted, reply))
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the console is stopping");
    }
    match answer.await {
        Ok(Ok(lines)) => json_response(StatusCode::OK, json!({"requested": lines}).to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the console is stopping"),
    }
}

/// The runtime's figures in the Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared
        .status
        .borrow()
        .status
        .as_ref()
        .map(metrics::prometheus)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn json_response(code: StatusCode, json: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    json_response(code, json!({ "error": message }).to_string())
}

/// Every request passes here first (see the module docs); every response leaves with the
/// headers that keep the page from being framed or fed scripts from elsewhere.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let mut response = match shared.refusal(&request) {
        Some(refused) => refused,
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

impl Shared {
    /// Why `request` is refused, if it is.
    fn refusal(&self, request: &Request) -> Option<Response> {
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if self.loopback && !is_loopback_host(host) {
            return Some(error(
                StatusCode::FORBIDDEN,
                &format!("this console answers to 127.0.0.1 and localhost only, not {host:?}"),
            ));
        }
        if let Some(token) = &self.token {
            let given = bearer(headers).or_else(|| cookie(headers)).or_else(|| {
                (request.uri().path() == "/")
                    .then(|| query_token(request))
                    .flatten()
            });
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                return Some(error(
                    StatusCode::UNAUTHORIZED,
                    &format!(
                        "open the console as /?token=<the value of {TOKEN_ENV}>, or send Authorization: Bearer <token>"
                    ),
                ));
            }
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return cross_site(headers, host);
        }
        None
    }
}

/// Why an action is refused as cross-site, if it is.
fn cross_site(headers: &HeaderMap, host: &str) -> Option<Response> {
    let refused = |why: &str| {
        Some(error(
            StatusCode::FORBIDDEN,
            &format!("cross-site request refused: {why}"),
        ))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = [format!("http://{host}"), format!("https://{host}")];
        if !own.iter().any(|o| o == origin) {
            return refused(&format!("Origin {origin:?} is not this console"));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return refused(&format!("Sec-Fetch-Site is {site}"));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an action's body is JSON (Content-Type: application/json)",
        ));
    }
    None
}

/// Whether a `Host` header names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn query_token(request: &Request) -> Option<&str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Compares in time that does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in ["localhost:8642", "127.0.0.1:1", "[::1]:8642", "localhost"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example:8642", "127.0.0.1.evil.example", "", "[::2]:1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_token_is_compared_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn a_token_that_cannot_travel_in_a_url_is_refused_at_start() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let Err(e) = Bound::bind(loopback, Some("a b;c".into()), &TlsFiles::default()) else {
            panic!("bound with a token a cookie cannot carry")
        };
        assert!(e.to_string().contains("letters, digits"), "{e}");
        assert!(Bound::bind(loopback, Some("Abc-123_x.y~z".into()), &TlsFiles::default()).is_ok());
    }

    #[test]
    fn a_non_loopback_console_without_a_token_is_refused_with_the_remedy() {
        let Err(e) = Bound::bind(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            None,
            &TlsFiles::default(),
        ) else {
            panic!("bound without a token")
        };
        assert!(e.to_string().contains(TOKEN_ENV), "{e}");
    }
}
