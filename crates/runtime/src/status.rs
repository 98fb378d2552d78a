//! Status (PIPELINE.md §6): per binding its phase, rows backfilled of the estimate,
//! percent, rows/s and ETA; per capture its units, documents, last commit and stream lag.
//!
//! Everything is read from the store (the connector state and the runtime's progress
//! figures committed with each unit), so `cdc status` answers while a pipeline runs and
//! after it stopped, from any process that can read the store.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use backfill_core::config::{Binding, Config};
use backfill_core::terminal::Bars;
use serde::Serialize;
use serde_json::{Value, json};

use crate::destination::{Destination, DestinationKind};
use crate::error::Result;
use crate::spec::{Capture, Pipeline};
use crate::store::Store;

/// The runtime's running figures for one capture, committed with each unit.
#[derive(Debug, Default)]
pub struct Progress {
    /// Per state key: rows done when first seen backfilling in this run, and when.
    since: BTreeMap<String, (u64, Instant)>,
    rates: BTreeMap<String, f64>,
    lag_seconds: Option<f64>,
    /// Bindings whose bar is drawn.
    bars_started: std::collections::BTreeSet<usize>,
    /// The capture's config bindings, read once for the bars.
    bindings: Option<Vec<Binding>>,
}

impl Progress {
    /// Takes in a committed unit: its state, and its last document (for the lag).
    pub(crate) fn observe(&mut self, state: &Value, last_doc: &str, docs: u64) {
        let now = Instant::now();
        if let Some(bindings) = state.get("bindings").and_then(Value::as_object) {
            for (key, entry) in bindings {
                let done = entry["rows_done"].as_u64().unwrap_or(0);
                if entry["phase"] == "backfilling" || self.since.contains_key(key) {
                    let (from, at) = *self.since.entry(key.clone()).or_insert((done, now));
                    let seconds = now.duration_since(at).as_secs_f64();
                    if seconds > 0.0 && entry["phase"] == "backfilling" {
                        self.rates
                            .insert(key.clone(), (done - from.min(done)) as f64 / seconds);
                    }
                }
            }
        }
        if docs > 0 {
            self.lag_seconds = commit_time_ms(last_doc)
                .map(|ts| (now_ms().saturating_sub(ts) as f64 / 1000.0).max(0.0));
        }
    }

    /// The figures as committed.
    pub(crate) fn to_json(&self) -> Value {
        json!({"rows_per_second": self.rates, "lag_seconds": self.lag_seconds})
    }

    /// One progress line from a committed state: each backfilling binding's rows and
    /// rate, then the lag.
    pub(crate) fn line(&self, state: &Value) -> String {
        let mut parts = Vec::new();
        if let Some(bindings) = state.get("bindings").and_then(Value::as_object) {
            for (key, entry) in bindings.iter().filter(|(_, e)| e["phase"] == "backfilling") {
                let mut part = format!("{key} {} rows", entry["rows_done"].as_u64().unwrap_or(0));
                if let Some(total) = entry["estimated_rows"].as_u64() {
                    let _ = write!(part, " of ~{total}");
                }
                if let Some(rate) = self.rates.get(key) {
                    let _ = write!(part, " at {rate:.0} rows/s");
                }
                parts.push(part);
            }
        }
        if let Some(lag) = self.lag_seconds {
            parts.push(format!("lag {lag:.1} s"));
        }
        if parts.is_empty() {
            "streaming".into()
        } else {
            parts.join("; ")
        }
    }

    /// Updates the terminal bars from a committed state.
    pub(crate) fn draw(&mut self, bars: &Bars, state: &Value, capture: &Capture) {
        let bindings = self.bindings.get_or_insert_with(|| bindings_of(capture));
        for (i, b) in bindings.iter().enumerate() {
            let entry = &state["bindings"][b.state_key()];
            let done = entry["rows_done"].as_u64().unwrap_or(0);
            match entry["phase"].as_str() {
                Some("backfilling") => {
                    if self.bars_started.insert(i) {
                        bars.started(
                            i,
                            &capture.collections[i],
                            done,
                            entry["estimated_rows"].as_u64(),
                        );
                    }
                    bars.advanced(i, done, false);
                }
                Some("active") if self.bars_started.contains(&i) => bars.advanced(i, done, true),
                _ => {}
            }
        }
    }
}

/// `_meta.source.ts_ms` of a streamed document line, if it has one.
fn commit_time_ms(line: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["doc"]["_meta"]["source"]["ts_ms"].as_u64()
}

/// The config bindings of a capture (their state keys find their entries).
fn bindings_of(capture: &Capture) -> Vec<Binding> {
    std::fs::read_to_string(&capture.config)
        .ok()
        .and_then(|t| Config::<Value>::parse(&t).ok())
        .map(|c| c.bindings)
        .unwrap_or_default()
}

/// One binding's status.
#[derive(Debug, Serialize)]
pub struct BindingStatus {
    /// Its collection.
    pub collection: String,
    /// `pending`, `backfilling`, `active`, or `not started`.
    pub phase: String,
    /// The backfill mode it runs.
    pub mode: Option<String>,
    /// Rows backfilled (across restarts).
    pub rows: u64,
    /// The source's estimate of the table's rows.
    pub estimated_rows: Option<u64>,
    /// Percent of the estimate.
    pub percent: Option<f64>,
    /// Backfill rate in the runtime's current run.
    pub rows_per_second: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
}

/// One capture's status.
#[derive(Debug, Serialize)]
pub struct CaptureStatus {
    /// Its name.
    pub capture: String,
    /// Units committed.
    pub units: u64,
    /// Documents committed.
    pub documents: u64,
    /// When the last unit was committed (ms since the epoch).
    pub committed_at_ms: Option<u64>,
    /// Seconds between the last committed change's commit at the source and its landing.
    pub lag_seconds: Option<f64>,
    /// Where compaction of its log stands, once it compacted (compacted collections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction: Option<crate::store::Compaction>,
    /// Its bindings.
    pub bindings: Vec<BindingStatus>,
}

/// The status of every capture of `pipeline`, read from `store`.
pub fn read(pipeline: &Pipeline, store: &dyn Store) -> Result<Vec<CaptureStatus>> {
    let requests = store.requests()?;
    // A binding whose last capture request was a cancel has a partial table until the
    // next re-read (PIPELINE.md §5).
    let partial = |capture: &str, collection: &String| {
        requests
            .iter()
            .rfind(|r| r.capture.as_deref() == Some(capture) && r.collections.contains(collection))
            .is_some_and(|r| r.kind == crate::request::Kind::Cancel && !r.open())
    };
    pipeline
        .captures
        .iter()
        .map(|capture| {
            let commit = store.committed(&capture.name)?;
            let state = commit.as_ref().map(|c| &c.state);
            let progress = commit.as_ref().map(|c| &c.progress);
            let bindings = bindings_of(capture)
                .iter()
                .zip(&capture.collections)
                .map(|(b, collection)| {
                    let key = b.state_key();
                    let entry = state.and_then(|s| s["bindings"].get(&key));
                    let rows = entry.and_then(|e| e["rows_done"].as_u64()).unwrap_or(0);
                    let mut phase = entry
                        .and_then(|e| e["phase"].as_str())
                        .unwrap_or("not started")
                        .to_string();
                    let cancelled = partial(&capture.name, collection);
                    let estimated_rows = entry.and_then(|e| e["estimated_rows"].as_u64());
                    let done = phase == "active" && !cancelled;
                    let percent =
                        if done && entry.and_then(|e| e["mode"].as_str()) != Some("Only Changes") {
                            Some(100.0)
                        } else {
                            estimated_rows
                                .filter(|&t| t > 0)
                                .map(|t| (rows as f64 * 100.0 / t as f64).min(99.9))
                        };
                    let rows_per_second = progress
                        .and_then(|p| p["rows_per_second"][&key].as_f64())
                        .filter(|_| phase == "backfilling");
                    let eta_seconds = match (rows_per_second, estimated_rows) {
                        (Some(rate), Some(total)) if rate > 0.0 && total > rows => {
                            Some(total.saturating_sub(rows) as f64 / rate)
                        }
                        _ => None,
                    };
                    if cancelled {
                        // A cancelled backfill leaves the table partial (PIPELINE.md §5).
                        phase = "partial".into();
                    }
                    BindingStatus {
                        collection: collection.clone(),
                        phase,
                        mode: entry.and_then(|e| e["mode"].as_str()).map(str::to_string),
                        rows,
                        estimated_rows,
                        percent,
                        rows_per_second,
                        eta_seconds,
                    }
                })
                .collect();
            Ok(CaptureStatus {
                capture: capture.name.clone(),
                units: commit.as_ref().map_or(0, |c| c.units),
                documents: commit.as_ref().map_or(0, |c| c.documents),
                committed_at_ms: commit.as_ref().map(|c| c.committed_at_ms),
                lag_seconds: progress.and_then(|p| p["lag_seconds"].as_f64()),
                compaction: Some(store.compaction(&capture.name)?).filter(|c| c.passes > 0),
                bindings,
            })
        })
        .collect()
}

/// A materialization binding's progress.
#[derive(Clone, Debug, Serialize)]
pub struct TableStatus {
    /// The collection it reads.
    pub collection: String,
    /// The destination table.
    pub table: String,
    /// Lines of the capture's log applied.
    pub position: u64,
    /// Lines of the capture's log committed.
    pub committed: u64,
    /// How far it is behind its collection, in lines of the log.
    pub lag_lines: u64,
}

/// A materialization's progress, read from its destination.
#[derive(Clone, Debug, Serialize)]
pub struct MaterializationStatus {
    /// Its name.
    pub materialization: String,
    /// Its bindings.
    pub tables: Vec<TableStatus>,
    /// Why the destination could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything `cdc status` shows.
#[derive(Debug, Serialize)]
pub struct PipelineStatus {
    /// Each capture.
    pub captures: Vec<CaptureStatus>,
    /// Each materialization.
    pub materializations: Vec<MaterializationStatus>,
    /// Backfill requests not done yet, and those done in the last hour.
    pub requests: Vec<crate::request::Request>,
}

/// Reads a pipeline's whole status again and again (`cdc status` once, the console every
/// second), keeping each materialization's destination open between reads: a destination
/// is opened on the first read, and again after a failure, no sooner than [`REOPEN_AFTER`]
/// (a connection attempt to a server that is down can take seconds). A read only observes
/// the destination: it needs no collection schema, so no connector is run for it.
pub struct Watcher<'a> {
    pipeline: &'a Pipeline,
    kinds: &'a [Box<dyn DestinationKind>],
    /// Per materialization: its destination, while open.
    open: Vec<Option<Box<dyn Destination>>>,
    /// Per materialization: its last failure, and when it happened, while not open.
    failed: Vec<Option<(String, Instant)>>,
}

/// How long a watcher leaves a destination that failed before it opens it again.
pub const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for Watcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl<'a> Watcher<'a> {
    /// A watcher of `pipeline`, whose materializations' destinations are of `kinds`.
    pub fn new(pipeline: &'a Pipeline, kinds: &'a [Box<dyn DestinationKind>]) -> Self {
        let n = pipeline.spec.materializations.len();
        Self {
            pipeline,
            kinds,
            failed: (0..n).map(|_| None).collect(),
            open: (0..n).map(|_| None).collect(),
        }
    }

    /// Everything `cdc status` shows, read now.
    pub fn read(&mut self, store: &dyn Store) -> Result<PipelineStatus> {
        let captures = read(self.pipeline, store)?;
        let materializations = (0..self.open.len())
            .map(|i| self.materialization(i, &captures))
            .collect();
        Ok(PipelineStatus {
            captures,
            materializations,
            requests: shown_requests(store)?,
        })
    }

    /// Materialization `i`'s bindings: each one's position, read from its destination,
    /// against its capture's committed lines.
    fn materialization(&mut self, i: usize, captures: &[CaptureStatus]) -> MaterializationStatus {
        let m = &self.pipeline.spec.materializations[i];
        let (positions, error) = match &self.failed[i] {
            Some((e, at)) if at.elapsed() < REOPEN_AFTER => (Default::default(), Some(e.clone())),
            _ => match self.positions(i) {
                Ok(p) => {
                    self.failed[i] = None;
                    (p, None)
                }
                Err(e) => {
                    self.open[i] = None;
                    self.failed[i] = Some((e.to_string(), Instant::now()));
                    (Default::default(), Some(e.to_string()))
                }
            },
        };
        let tables = m
            .bindings
            .iter()
            .enumerate()
            .map(|(b_index, b)| {
                let committed = self
                    .pipeline
                    .collection(&b.source)
                    .and_then(|(c, _)| captures.iter().find(|s| s.capture == c.name))
                    .map_or(0, |s| s.documents);
                let position = positions.get(&b_index).copied().unwrap_or(0);
                TableStatus {
                    collection: b.source.clone(),
                    table: b.target.clone(),
                    position,
                    committed,
                    lag_lines: committed.saturating_sub(position),
                }
            })
            .collect();
        MaterializationStatus {
            materialization: m.name.clone(),
            tables,
            error,
        }
    }

    /// Materialization `i`'s positions, opening its destination first where it is not
    /// open; read only ([`Destination::observe`]).
    ///
    /// [`Destination::observe`]: crate::destination::Destination::observe
    fn positions(&mut self, i: usize) -> Result<std::collections::HashMap<usize, u64>> {
        let m = &self.pipeline.spec.materializations[i];
        if self.open[i].is_none() {
            let kind =
                crate::destination::kind(self.kinds, &m.destination).map_err(crate::Error::Spec)?;
            self.open[i] = Some(kind.open(&m.name, &m.endpoint)?);
        }
        let targets: Vec<String> = m.bindings.iter().map(|b| b.target.clone()).collect();
        match &mut self.open[i] {
            Some(d) => d.observe(&targets),
            None => Ok(Default::default()),
        }
    }
}

/// The backfill requests `cdc status` shows: open ones, and those done within the hour.
pub fn shown_requests(store: &dyn Store) -> Result<Vec<crate::request::Request>> {
    let hour_ago = now_ms().saturating_sub(3_600_000);
    Ok(store
        .requests()?
        .into_iter()
        .filter(|r| r.open() || r.created_at_ms >= hour_ago)
        .collect())
}

/// The whole status as text for people.
pub fn render_pipeline(status: &PipelineStatus) -> String {
    let mut out = render(&status.captures);
    for m in &status.materializations {
        let _ = write!(out, "\nmaterialization {}:", m.materialization);
        if let Some(e) = &m.error {
            let _ = write!(out, " destination unreadable: {e}");
        }
        for t in &m.tables {
            let _ = write!(
                out,
                "\n  {:<32} -> {:<32} {:>10} lines behind",
                t.collection, t.table, t.lag_lines
            );
        }
    }
    if !status.requests.is_empty() {
        out.push_str("\nbackfill requests:");
        for r in &status.requests {
            let _ = write!(out, "\n  {}", r.line());
        }
    }
    out
}

/// The status as a table for people.
pub fn render(statuses: &[CaptureStatus]) -> String {
    let mut out = String::new();
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"));
    for c in statuses {
        let _ = writeln!(
            out,
            "capture {}: {} units, {} documents, last commit {}, lag {}",
            c.capture,
            c.units,
            c.documents,
            c.committed_at_ms.map_or("never".to_string(), |ms| {
                format!("{:.1} s ago", now_ms().saturating_sub(ms) as f64 / 1000.0)
            }),
            opt(c.lag_seconds, " s"),
        );
        if let Some(k) = &c.compaction {
            let _ = writeln!(
                out,
                "  log compacted {} times, {:.1} MiB after the last",
                k.passes,
                k.bytes as f64 / f64::from(1 << 20)
            );
        }
        let _ = writeln!(
            out,
            "  {:<32} {:<12} {:>12} {:>12} {:>6} {:>10} {:>8}",
            "COLLECTION", "PHASE", "ROWS", "ESTIMATE", "%", "ROWS/S", "ETA"
        );
        for b in &c.bindings {
            let _ = writeln!(
                out,
                "  {:<32} {:<12} {:>12} {:>12} {:>6} {:>10} {:>8}",
                b.collection,
                b.phase,
                b.rows,
                b.estimated_rows.map_or("-".to_string(), |e| e.to_string()),
                b.percent.map_or("-".to_string(), |p| format!("{p:.1}")),
                opt(b.rows_per_second, ""),
                opt(b.eta_seconds, " s"),
            );
        }
    }
    out.trim_end().to_string()
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
