//! Progress and metrics: per binding rows backfilled, estimated total, percent, rows/s and
//! ETA; stream lag in seconds and bytes. The merger updates one shared [`Metrics`]; it is
//! logged as structured `tracing` lines and served in the Prometheus text format by
//! [`serve`] when a binary is started with `--metrics-addr`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    /// Whether its backfill is complete.
    pub complete: bool,
}

impl BackfillProgress {
    /// Rows per second in this run.
    pub fn rows_per_second(&self) -> f64 {
        match self.started {
            Some(t) if t.elapsed().as_secs_f64() > 0.0 => {
                self.rows_this_run as f64 / t.elapsed().as_secs_f64()
            }
            _ => 0.0,
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
}

/// Shared metrics of one capture.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Metrics for these tables (config order).
    pub fn new(tables: impl IntoIterator<Item = String>) -> Arc<Self> {
        let bindings = tables
            .into_iter()
            .map(|table| BackfillProgress {
                table,
                rows_done: 0,
                rows_this_run: 0,
                estimated_total: None,
                started: None,
                complete: false,
            })
            .collect();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                bindings,
                ..Inner::default()
            }),
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
        }
    }

    /// A chunk of `rows` rows was committed; `complete` when it was the last.
    pub fn chunk_done(&self, binding: usize, rows: u64, complete: bool) {
        if let Some(b) = self.lock().bindings.get_mut(binding) {
            b.rows_done += rows;
            b.rows_this_run += rows;
            b.complete = complete;
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

    /// Logs one structured line per binding still backfilling.
    pub fn log_progress(&self) {
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

    /// The Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let inner = self.lock();
        let mut s = String::new();
        let _ = writeln!(s, "# TYPE cdc_backfill_rows_total counter");
        for b in &inner.bindings {
            let _ = writeln!(
                s,
                "cdc_backfill_rows_total{{table=\"{}\"}} {}",
                b.table, b.rows_done
            );
        }
        let _ = writeln!(s, "# TYPE cdc_backfill_rows_estimated gauge");
        for b in &inner.bindings {
            if let Some(t) = b.estimated_total {
                let _ = writeln!(
                    s,
                    "cdc_backfill_rows_estimated{{table=\"{}\"}} {t}",
                    b.table
                );
            }
        }
        let _ = writeln!(s, "# TYPE cdc_backfill_complete gauge");
        for b in &inner.bindings {
            let _ = writeln!(
                s,
                "cdc_backfill_complete{{table=\"{}\"}} {}",
                b.table,
                u8::from(b.complete)
            );
        }
        let _ = writeln!(s, "# TYPE cdc_backfill_rows_per_second gauge");
        for b in &inner.bindings {
            let _ = writeln!(
                s,
                "cdc_backfill_rows_per_second{{table=\"{}\"}} {:.1}",
                b.table,
                b.rows_per_second()
            );
        }
        let _ = writeln!(
            s,
            "# TYPE cdc_documents_total counter\ncdc_documents_total {}",
            inner.documents
        );
        let _ = writeln!(
            s,
            "# TYPE cdc_checkpoints_total counter\ncdc_checkpoints_total {}",
            inner.checkpoints
        );
        let _ = writeln!(
            s,
            "# TYPE cdc_stream_lag_seconds gauge\ncdc_stream_lag_seconds {:.3}",
            inner.lag_seconds
        );
        if let Some(bytes) = inner.lag_bytes {
            let _ = writeln!(
                s,
                "# TYPE cdc_stream_lag_bytes gauge\ncdc_stream_lag_bytes {bytes}"
            );
        }
        s
    }
}

/// Serves `GET /metrics` (any path, in fact) in the Prometheus text format until the task is
/// dropped. Binds before returning, so a bad address is reported at start.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let body = metrics.render_prometheus();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_exposition() {
        let m = Metrics::new(["s.a".to_string(), "s.b".to_string()]);
        m.backfill_started(0, 10, Some(100));
        m.chunk_done(0, 40, false);
        m.backfill_not_needed(1);
        let p = m.progress();
        assert_eq!(p[0].rows_done, 50);
        assert_eq!(p[0].percent(), Some(50.0));
        assert_eq!(p[1].percent(), Some(100.0));
        m.stream_lag_bytes(4096);
        let text = m.render_prometheus();
        assert!(text.contains("cdc_stream_lag_bytes 4096"), "{text}");
        assert!(
            text.contains("cdc_backfill_rows_total{table=\"s.a\"} 50"),
            "{text}"
        );
        assert!(
            text.contains("cdc_backfill_complete{table=\"s.b\"} 1"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_the_exposition_over_http() {
        let m = Metrics::new(["s.a".to_string()]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let _task = serve(addr, Arc::clone(&m)).await.unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("cdc_backfill_rows_total{table=\"s.a\"} 0"),
            "{body}"
        );
    }
}
