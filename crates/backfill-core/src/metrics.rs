//! Progress and metrics: per binding rows backfilled, estimated total, percent, rows/s and
//! ETA; stream lag in seconds and bytes. The merger updates one shared [`Metrics`]; it is
//! logged as structured `tracing` lines and served in the Prometheus text format by
//! [`serve`] when a binary is started with `--metrics-addr`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::terminal::Bars;

/// One binding's backfill progress.
#[derive(Clone, Debug)]
pub struct BackfillProgress {
    /// `<namespace>.<stream>`.
    pub table: String,
    /// Rows emitted by its backfill so far (across restarts).
    pub rows_done: u64,
    /// Rows emitted in this run, for the rate.
    rows_this_run: u64,
    /// The source's estimate of the table's size.
    pub estimated_total: Option<u64>,
    /// When this run started backfilling it.
    started: Option<Instant>,
    /// When its backfill completed in this run: the rate stays what it was then.
    finished: Option<Instant>,
    /// Whether its backfill is complete.
    pub complete: bool,
}

impl BackfillProgress {
    /// Rows per second in this run; once complete, the rate over the backfill's own time
    /// (it does not decay while the table streams).
    pub fn rows_per_second(&self) -> f64 {
        let Some(started) = self.started else {
            return 0.0;
        };
        let seconds = self
            .finished
            .unwrap_or_else(Instant::now)
            .duration_since(started)
            .as_secs_f64();
        if seconds > 0.0 {
            self.rows_this_run as f64 / seconds
        } else {
            0.0
        }
    }

    /// Percent done, where the total is known.
    pub fn percent(&self) -> Option<f64> {
        if self.complete {
            return Some(100.0);
        }
        self.estimated_total
            .filter(|&t| t > 0)
            .map(|t| (self.rows_done as f64 * 100.0 / t as f64).min(99.9))
    }

    /// Seconds left at the current rate, where the total is known.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.rows_per_second();
        let total = self.estimated_total?;
        (rate > 0.0 && !self.complete).then(|| total.saturating_sub(self.rows_done) as f64 / rate)
    }
}

#[derive(Debug, Default)]
struct Inner {
    bindings: Vec<BackfillProgress>,
    documents: u64,
    checkpoints: u64,
    lag_seconds: f64,
    lag_bytes: Option<u64>,
    /// `documents` and the time at the last progress line, for the stream's rate.
    logged: Option<(u64, Instant)>,
}

/// Shared metrics of one capture.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Progress bars, when a person watches at a terminal.
    bars: Option<Bars>,
}

impl Metrics {
    /// Metrics for these tables (config order).
    pub fn new(tables: impl IntoIterator<Item = String>) -> Arc<Self> {
        Self::with_bars(tables, None)
    }

    /// Metrics that also draw `bars` (see [`crate::terminal`]).
    pub fn with_bars(tables: impl IntoIterator<Item = String>, bars: Option<Bars>) -> Arc<Self> {
        let bindings = tables
            .into_iter()
            .map(|table| BackfillProgress {
                table,
                rows_done: 0,
                rows_this_run: 0,
                estimated_total: None,
                started: None,
                finished: None,
                complete: false,
            })
            .collect();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                bindings,
                logged: Some((0, Instant::now())),
                ..Inner::default()
            }),
            bars,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A binding starts (or resumes) its backfill.
    pub fn backfill_started(&self, binding: usize, rows_done: u64, estimate: Option<u64>) {
        if let Some(b) = self.lock().bindings.get_mut(binding) {
            b.rows_done = rows_done;
            b.estimated_total = estimate.map(|e| e.max(rows_done));
            b.started.get_or_insert_with(Instant::now);
            if let Some(bars) = &self.bars {
                bars.started(binding, &b.table, rows_done, b.estimated_total);
            }
        }
    }

    /// A chunk of `rows` rows was committed; `complete` when it was the last.
    pub fn chunk_done(&self, binding: usize, rows: u64, complete: bool) {
        if let Some(b) = self.lock().bindings.get_mut(binding) {
            b.rows_done += rows;
            b.rows_this_run += rows;
            b.complete = complete;
            if complete {
                b.finished.get_or_insert_with(Instant::now);
            }
            if let Some(bars) = &self.bars {
                bars.advanced(binding, b.rows_done, complete);
            }
        }
    }

    /// A binding needs no backfill (Only Changes, or already done).
    pub fn backfill_not_needed(&self, binding: usize) {
        if let Some(b) = self.lock().bindings.get_mut(binding) {
            b.complete = true;
        }
    }

    /// A unit of `documents` documents was committed.
    pub fn committed(&self, documents: u64) {
        let mut inner = self.lock();
        inner.documents += documents;
        inner.checkpoints += 1;
    }

    /// The last commit the stream read happened `seconds` ago.
    pub fn stream_lag_seconds(&self, seconds: f64) {
        self.lock().lag_seconds = seconds.max(0.0);
    }

    /// The stream has `bytes` of log left to read.
    pub fn stream_lag_bytes(&self, bytes: u64) {
        self.lock().lag_bytes = Some(bytes);
    }

    /// A snapshot of every binding's progress.
    pub fn progress(&self) -> Vec<BackfillProgress> {
        self.lock().bindings.clone()
    }

    /// Logs one structured line per binding still backfilling, and one for the stream:
    /// documents committed since the last line, their rate, and the lag.
    pub fn log_progress(&self) {
        {
            let mut inner = self.lock();
            let now = Instant::now();
            let (documents, lag_seconds, lag_bytes) =
                (inner.documents, inner.lag_seconds, inner.lag_bytes);
            if let Some((before, at)) = inner.logged.replace((documents, now)) {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                let new = documents - before;
                tracing::info!(
                    documents = new,
                    documents_per_second = format!("{:.0}", new as f64 / seconds),
                    lag_seconds = format!("{lag_seconds:.1}"),
                    lag_bytes,
                    "{new} documents committed in the last {seconds:.0} s; the stream is {lag_seconds:.1} s behind"
                );
            }
        }
        for b in self
            .progress()
            .iter()
            .filter(|b| b.started.is_some() && !b.complete)
        {
            tracing::info!(
                table = %b.table,
                rows_done = b.rows_done,
                estimated_total = b.estimated_total,
                percent = b.percent().map(|p| format!("{p:.1}")),
                rows_per_second = format!("{:.0}", b.rows_per_second()),
                eta_seconds = b.eta_seconds().map(|s| format!("{s:.0}")),
                "backfill progress"
            );
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric, written by the
    /// Prometheus project's client: label values escaped, `# HELP` and `# TYPE` for every
    /// family. A registry is built from a snapshot at each scrape, so the figures of one
    /// page are consistent with each other.
    pub fn render_prometheus(&self) -> String {
        let registry = self.registry();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }

    fn registry(&self) -> Registry {
        type Labels = Vec<(&'static str, String)>;
        let inner = self.lock();
        let by_table = |b: &BackfillProgress| -> Labels { vec![("table", b.table.clone())] };
        let mut registry = Registry::default();
        let rows = Family::<Labels, Counter>::default();
        let estimated = Family::<Labels, Gauge>::default();
        let complete = Family::<Labels, Gauge>::default();
        let rate = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for b in &inner.bindings {
            rows.get_or_create(&by_table(b)).inc_by(b.rows_done);
            if let Some(total) = b.estimated_total {
                estimated
                    .get_or_create(&by_table(b))
                    .set(i64::try_from(total).unwrap_or(i64::MAX));
            }
            complete
                .get_or_create(&by_table(b))
                .set(i64::from(b.complete));
            rate.get_or_create(&by_table(b)).set(b.rows_per_second());
        }
        registry.register(
            "cdc_backfill_rows",
            "Rows emitted by each table's backfill, across restarts",
            rows,
        );
        registry.register(
            "cdc_backfill_rows_estimated",
            "The source's estimate of each table's rows",
            estimated,
        );
        registry.register(
            "cdc_backfill_complete",
            "1 once a table's backfill is complete (or not needed)",
            complete,
        );
        registry.register(
            "cdc_backfill_rows_per_second",
            "Each table's backfill rate in this run (its final rate once complete)",
            rate,
        );
        let documents = Counter::<u64>::default();
        documents.inc_by(inner.documents);
        registry.register("cdc_documents", "Documents committed", documents);
        let checkpoints = Counter::<u64>::default();
        checkpoints.inc_by(inner.checkpoints);
        registry.register("cdc_checkpoints", "Checkpoints committed", checkpoints);
        let lag = Gauge::<f64, AtomicU64>::default();
        lag.set(inner.lag_seconds);
        registry.register(
            "cdc_stream_lag_seconds",
            "Seconds since the commit of the last transaction the stream read",
            lag,
        );
        if let Some(bytes) = inner.lag_bytes {
            let lag = Gauge::<i64>::default();
            lag.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            registry.register(
                "cdc_stream_lag_bytes",
                "Bytes of log between the stream's position and the log's end",
                lag,
            );
        }
        registry
    }
}

/// The HTTP routes of the metrics endpoint: `GET /metrics`. A router, so that a later
/// server (the console) can serve it beside its own routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    metrics.render_prometheus(),
                )
            }
        }),
    )
}

/// Serves [`router`] until the task is dropped. Binds before returning, so a bad address
/// is reported at start.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(metrics)).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The Prometheus project's own parser (client_python's
    /// `text_string_to_metric_families`, which `.ci/run` installs): every family with its
    /// type and help, every sample with its labels unescaped. `None` (with `SKIPPED:`)
    /// where it is not installed.
    fn parse(text: &str) -> Option<Value> {
        const PARSER: &str = "import sys, json
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps([{'name': f.name, 'type': f.type, 'help': f.documentation,
                   'samples': [[s.name, s.labels, s.value] for s in f.samples]}
                  for f in text_string_to_metric_families(sys.stdin.read())]))";
        let child = std::process::Command::new("python3")
            .args(["-c", PARSER])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            println!("SKIPPED: no python3 for the exposition parser");
            return None;
        };
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'prometheus_client'") {
            println!("SKIPPED: python3 -m pip install prometheus-client (the exposition parser)");
            return None;
        }
        assert!(
            out.status.success(),
            "the parser refused the page: {stderr}\n{text}"
        );
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn value(families: &Value, sample: &str, table: Option<&str>) -> f64 {
        families
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .find(|s| s[0] == sample && s[1].get("table").and_then(Value::as_str) == table)
            .unwrap_or_else(|| panic!("{sample} {table:?} missing: {families}"))[2]
            .as_f64()
            .unwrap()
    }

    #[test]
    fn progress_and_exposition() {
        let weird = "app.weird \"table\" name\\with\nnewline";
        let m = Metrics::new(["s.a".to_string(), weird.to_string()]);
        m.backfill_started(0, 10, Some(100));
        m.chunk_done(0, 40, false);
        m.backfill_started(1, 0, None);
        m.chunk_done(1, 2, true);
        let p = m.progress();
        assert_eq!(p[0].rows_done, 50);
        assert_eq!(p[0].percent(), Some(50.0));
        assert_eq!(p[1].percent(), Some(100.0));
        m.stream_lag_bytes(4096);
        m.committed(7);
        let text = m.render_prometheus();
        let Some(families) = parse(&text) else { return };
        assert_eq!(value(&families, "cdc_stream_lag_bytes", None), 4096.0);
        assert_eq!(
            value(&families, "cdc_backfill_rows_total", Some("s.a")),
            50.0
        );
        assert_eq!(
            value(&families, "cdc_backfill_rows_total", Some(weird)),
            2.0
        );
        assert_eq!(value(&families, "cdc_backfill_complete", Some(weird)), 1.0);
        assert_eq!(value(&families, "cdc_documents_total", None), 7.0);
        let families = families.as_array().unwrap();
        assert_eq!(families.len(), 8, "{text}");
        for f in families {
            assert!(
                f["type"] != "unknown" && !f["help"].as_str().unwrap().is_empty(),
                "every family has its TYPE and HELP: {f}"
            );
        }
    }

    #[test]
    fn the_rate_of_a_finished_backfill_does_not_decay() {
        let m = Metrics::new(["s.a".to_string()]);
        m.backfill_started(0, 0, Some(1000));
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.chunk_done(0, 1000, true);
        let rate = m.progress()[0].rows_per_second();
        assert!(rate > 0.0);
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(m.progress()[0].rows_per_second(), rate);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_the_exposition_over_http() {
        let m = Metrics::new(["s.a".to_string()]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let _task = serve(addr, Arc::clone(&m)).await.unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        let body = response.split_once("\r\n\r\n").unwrap().1;
        assert!(
            body.contains("cdc_backfill_rows_total{table=\"s.a\"} 0"),
            "{body}"
        );
    }
}
