//! The merger: stitches key-ordered backfill chunks into the change stream (DESIGN.md §7).
//!
//! Each binding moves `Pending -> Backfilling(cursor) -> Active`. While any binding is not
//! Active, the merger runs chunk cycles over the first `concurrency` of them (config order):
//!
//! ```text
//!   scan ──▶ fence F ──▶ stream to F ──────────────────────────▶ emit chunk, checkpoint
//!   (one snapshot       (each change, by the region of its key:
//!    per binding)        Done: emit   Window: patch the buffer   Ahead: drop)
//! ```
//!
//! ## Why Precise is correct
//!
//! Let `P` be the position the stream has delivered when a chunk is scanned in snapshot `S`,
//! `F` the fence (every transaction visible in `S` commits at or before `F`), and let the
//! stream then be read to a transaction boundary `Q >= F`. For a key `k` in the window:
//!
//! * every transaction that committed at or before `P` is visible in `S` (the
//!   fence-ordering invariant, checked below through the chunk's [`SnapshotWitness`]);
//! * every transaction visible in `S` commits at or before `F <= Q`.
//!
//! So the transactions that touch `k` and are *not* reflected in `S` all lie in `(P, Q]`,
//! and the buffer patched with every change of `(P, Q]` in commit order holds exactly the
//! row's state at `Q` (changes `S` already saw are re-applied, which is idempotent for full
//! images and for deletes). The chunk and its patches are committed as one unit at `Q`, so
//! no chunk row is ever emitted after a newer change of its key, and changes after `Q` of a
//! key now at or below the cursor are emitted by the stream. Keys above `hi` are dropped:
//! their next chunk's snapshot sees them by the same invariant.
//!
//! The argument is per key. A chunk read in key ranges, each in a snapshot of its own
//! ([`crate::source::ChunkScanner::reads_in_parts`]), keeps it: each key lies in one range,
//! whose snapshot satisfies both points when the chunk's witness is the earliest
//! snapshot's (visibility only grows, so every later one sees at least as much) and its
//! fence the latest.
//!
//! Normal and Without Primary Key emit the chunk before any change read after its scan,
//! and every change: any change newer than the snapshot follows the chunk row, so the last
//! document of each key is its current state (convergence), at the cost of duplicates.
//! The chunk is emitted when streaming to `F` first brings a change (or truncate), or at
//! the commit when it brings none, as in a backfill of a table nobody writes: its rows are
//! then rendered while the next chunk is scanned, as Precise's are.
//!
//! ## Scanning ahead
//!
//! The end of a cycle (emitting its chunks, writing the checkpoint) needs only the
//! connector, and the next scan needs mostly the database, so they run together: once the
//! stream has reached the fence, the merger starts the next scan of the cycle's first
//! binding (after that chunk's `hi`, the cursor it is about to commit), then emits and
//! commits, yielding now and then so the scan reads the rows that arrive meanwhile.
//!
//! ```text
//!   scan N ─▶ stream to F_N ─▶ emit N, checkpoint ───┐
//!                              scan N+1 ──────────────┴─▶ verify N+1 ─▶ stream to F_N+1 ─▶ …
//! ```
//!
//! The argument above does not depend on when a scan runs: `P` is what the stream has
//! delivered when the chunk is *taken*, and the witness is checked then, against every
//! transaction delivered so far, so a chunk scanned ahead is held to exactly the
//! condition of one scanned after the checkpoint (the model suite fails if a chunk scanned
//! ahead skips that check). Starting the scan only once the stream has reached the fence
//! is what keeps it useful: the merger reads nothing from the stream between its start
//! and its check (emitting and committing only write, and acknowledge a position), so it
//! is rejected no more often than a scan after the checkpoint would be. Started earlier,
//! any transaction delivered meanwhile that the snapshot missed would force a rescan. A
//! chunk scanned ahead is used only if it starts at the binding's cursor; a stop or a
//! crash before the next cycle drops it unread. Two chunks may be held at once, which is
//! why a chunk's memory bound is half the connector's budget
//! ([`EngineOptions::for_backfill`]).
//!
//! ## Incremental backfills
//!
//! When a binding's counter is above 0 the destination may hold rows the scanner has not
//! reached, so Precise emits every delete, whatever the key's region, at its own stream
//! position (and still patches the buffer when the key is in the window). Emitting it in
//! stream order rather than with the chunk keeps `pos` strictly increasing, and a key that
//! is deleted then re-inserted in the window gets `d` then the chunk's `c`: a clean history.
//!
//! ## Commit protocol and the fence check
//!
//! Checkpoints are written only between transactions, after a whole chunk cycle or at the
//! streaming checkpoint interval, through [`Output::checkpoint`]; the position is
//! acknowledged to the source only after that returns. The transaction ids the stream
//! delivers are remembered until a snapshot is seen to include them; visibility is
//! monotonic, so one successful check retires them all. What the stream starts after (at
//! the start of a run, before anything was delivered) is covered by the promise of
//! [`Source::open_stream`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::error::{Error, Result, SourceError};
use crate::key::{Hi, Key, Region, Window};
use crate::metrics::Metrics;
use crate::mode::ResolvedMode;
use crate::output::{Doc, Output, Sink, SourceTable};
use crate::source::{
    BindingSpec, Change, ChangeMeta, ChangeStream, Chunk, ChunkLimits, Op, Position, Row,
    ScanRequest, SnapshotWitness, Source, StreamEvent, StreamStart, buffered_bytes,
};
use crate::state::{Phase, Reconciled, ResolvedBinding, State};

/// The stream's next event. When none is ready (the connector would wait for the
/// database), the documents written so far are flushed first: under load the output
/// buffer fills and is written in large blocks, and when the stream catches up its last
/// transaction reaches stdout at once instead of at the next checkpoint. Lines held while
/// a checkpoint's state is made durable ([`crate::output`]) are released within
/// [`SETTLE_POLL`] of it being done, while the stream is still awaited.
async fn next_event_flushing<C: ChangeStream, K: Sink>(
    stream: &mut C,
    out: &mut Output<K>,
) -> Result<StreamEvent<C::Position>> {
    let mut next = std::pin::pin!(stream.next_event());
    // One poll of the same future, which is then awaited: nothing is dropped half-read.
    let ready = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
    match ready {
        Poll::Ready(event) => Ok(event?),
        Poll::Pending => {
            out.flush()?;
            while out.settling() {
                tokio::select! {
                    event = &mut next => return Ok(event?),
                    () = tokio::time::sleep(SETTLE_POLL) => out.flush()?,
                }
            }
            Ok(next.await?)
        }
    }
}

/// How often an idle merger looks whether a checkpoint's state has become durable.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// How the merger runs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Bounds of one chunk.
    pub limits: ChunkLimits,
    /// Bindings backfilled at once (in config order); at least 1.
    pub concurrency: usize,
    /// Connections reading one chunk at once, for a binding without its own
    /// `resource.ranges`; at least 1 ([`BindingSpec::ranges`]).
    pub ranges: usize,
    /// Stream events classified and routed as one batch (one classification query per
    /// binding per batch).
    pub batch_events: usize,
    /// While only streaming, checkpoint at most this often (at transaction boundaries).
    pub checkpoint_interval: Duration,
    /// Exit once backfills are done and the log end read afterwards is delivered.
    pub until_caught_up: bool,
    /// How often to log backfill progress.
    pub progress_interval: Duration,
    /// Run by the `cdc` runtime with `--acks stdin` (PIPELINE.md §3): the positions the
    /// runtime has made durable in its store, as it acknowledged them; the source is told
    /// a position is consumed only up to the last of these. `None`: acknowledge once the
    /// state file is durable.
    pub acks: Option<tokio::sync::watch::Receiver<Option<Value>>>,
    /// Rescans allowed for a chunk whose snapshot does not yet see delivered transactions.
    pub max_rescans: u32,
    /// Pause before a rescan.
    pub rescan_backoff: Duration,
    /// Deliberate defects, for tests that prove the checker catches them.
    #[doc(hidden)]
    pub sabotage: Sabotage,
}

/// Deliberate defects that break the guarantees; tests use them to show the guarantee
/// checker is sensitive. Never set in production.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Sabotage {
    /// Accept a chunk whose snapshot misses delivered transactions.
    pub skip_snapshot_check: bool,
    /// Emit Precise chunks without patching changes into them.
    pub skip_patching: bool,
    /// Ignore [`StreamEvent::Reread`]: leave a rewritten table's rows stale.
    pub skip_rereads: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            limits: ChunkLimits {
                rows: 4096,
                bytes: 8 << 20,
            },
            concurrency: 1,
            ranges: 1,
            batch_events: 4096,
            checkpoint_interval: Duration::from_millis(500),
            until_caught_up: false,
            progress_interval: Duration::from_secs(5),
            acks: None,
            max_rescans: 200,
            rescan_backoff: Duration::from_millis(25),
            sabotage: Sabotage::default(),
        }
    }
}

impl EngineOptions {
    /// The defaults with a connector's `advanced.chunk_size` and
    /// `advanced.backfill_concurrency` (each at least 1), and 12 MiB per chunk (see
    /// [`crate::source::buffered_bytes`]; a chunk is scanned while the last one is
    /// emitted, so two may be held): the connector stays near 64 MiB whatever the
    /// chunk size.
    pub fn for_backfill(chunk_rows: usize, concurrency: usize) -> Self {
        Self {
            limits: ChunkLimits {
                rows: chunk_rows.max(1),
                bytes: 12 << 20,
            },
            concurrency: concurrency.max(1),
            ..Self::default()
        }
    }
}

/// A request to stop at the next unit boundary (SIGTERM, SIGINT).
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Asks the merger to finish the unit in hand, checkpoint and return.
    pub fn request(&self) {
        self.0.store(true, AtomicOrdering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(AtomicOrdering::SeqCst)
    }

    /// Waits `duration`, or less when a stop is asked for meanwhile; `true` when it was.
    pub async fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while !self.requested() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        true
    }

    /// Requests a stop on SIGTERM or SIGINT (needs a running tokio runtime).
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("stop requested; finishing the unit in hand");
            me.request();
        });
        Ok(())
    }
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `--until-caught-up` reached its end position.
    CaughtUp,
    /// A stop was requested and the unit in hand was committed.
    Stopped,
}

/// Runs a capture from `loaded` (the state file's content, if any) until caught up,
/// stopped, or failed. Prints the resume checkpoint first, as §4 requires.
pub async fn run<S: Source, K: Sink>(
    source: S,
    sink: K,
    bindings: &[ResolvedBinding],
    loaded: Option<State<S::Position>>,
    options: EngineOptions,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<(Outcome, Output<K>)> {
    let mut out = Output::new(sink);
    let resume = match &loaded {
        Some(s) => s.to_json(),
        None => State::<S::Position>::initial(bindings).to_json(),
    };
    out.print_checkpoint(&resume)?;
    let resuming = loaded.is_some();
    let reconciled = State::reconcile(loaded, bindings);
    log_start(bindings, &reconciled, resuming);
    let mut state = reconciled.state;
    let specs: Vec<BindingSpec> = bindings
        .iter()
        .enumerate()
        .map(|(index, b)| {
            let entry = &state.bindings[&b.binding.state_key()];
            let mut spec = BindingSpec {
                index,
                table: b.binding.resource.table(),
                mode: entry.mode,
                key: b.key.clone(),
                ranges: b.binding.resource.ranges.unwrap_or(options.ranges).max(1),
            };
            if spec.ranges > 1 && !source.reads_in_parts(&spec) {
                tracing::warn!(table = %spec.table, ranges = spec.ranges, "the source reads this table's chunks on one connection: ranges 1");
                spec.ranges = 1;
            }
            spec
        })
        .collect();
    let mut source = source;
    let start = if reconciled.reset_stream {
        tracing::info!(
            "every backfill counter was raised: re-establishing the stream at the end of the log"
        );
        StreamStart::Reset
    } else {
        match state.position.clone() {
            Some(p) => StreamStart::Resume(p),
            None => StreamStart::Fresh,
        }
    };
    let (stream, start_at) = source.open_stream(start, &specs).await?;
    let state_keys: Vec<String> = bindings.iter().map(|b| b.binding.state_key()).collect();
    let dirty = state.position.as_ref() != Some(&start_at);
    state.position = Some(start_at.clone());
    let mut engine = Engine {
        stream,
        out,
        options,
        metrics,
        shutdown,
        sources: specs
            .iter()
            .map(|s| SourceTable::new(&s.table.namespace, &s.table.stream))
            .collect(),
        specs,
        state_keys,
        state,
        delivered: start_at,
        in_txn: false,
        unproven_txids: Vec::new(),
        batch: Vec::new(),
        last_pos: None,
        last_commit_ts: None,
        dirty,
        last_checkpoint: Instant::now(),
        last_progress_log: Instant::now(),
        lag_due: false,
        row_bytes: vec![None; bindings.len()],
        unacknowledged: None,
        told: None,
        settled: None,
        rereads: Vec::new(),
    };
    engine.start(&reconciled.truncate).await?;
    let outcome = engine.main_loop(&mut source).await?;
    Ok((outcome, engine.out))
}

/// Says at start where the run begins and what the config changed: the resume position
/// and each binding's phase and cursor, counters raised, and modes that the state keeps
/// although the config now asks for another (one line each, naming the counter to raise).
fn log_start<P: Position>(
    bindings: &[ResolvedBinding],
    reconciled: &Reconciled<P>,
    resuming: bool,
) {
    let state = &reconciled.state;
    if resuming {
        let position = state
            .position
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_else(|| "none yet".into());
        tracing::info!(%position, "resuming from the state file");
    } else {
        tracing::info!("no state file: starting from the beginning");
    }
    for (i, b) in bindings.iter().enumerate() {
        let table = b.binding.table_name();
        let Some(entry) = state.bindings.get(&b.binding.state_key()) else {
            continue;
        };
        let cursor = entry
            .cursor
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok());
        tracing::info!(binding = i, %table, mode = entry.mode.as_str(), phase = ?entry.phase, cursor, rows_done = entry.rows_done, "binding");
    }
    for &i in &reconciled.raised {
        let b = &bindings[i].binding;
        tracing::info!(binding = i, table = %b.table_name(), counter = b.backfill, "backfill counter raised: the table is read again");
    }
    for (i, columns) in &reconciled.reread {
        let b = &bindings[*i].binding;
        tracing::warn!(binding = i, table = %b.table_name(), ?columns, "columns added since the backfill fill the rows already there, which no change carried: the table is read again (an incremental backfill)");
    }
    for (i, columns) in &reconciled.unread {
        let b = &bindings[*i].binding;
        tracing::warn!(binding = i, table = %b.table_name(), ?columns, "columns added since the binding became active fill the rows already there, which no change carried; the binding runs Only Changes, so those rows stay as they were downstream (raise its backfill counter to read them)");
    }
    for &(i, kept, asked) in &reconciled.mode_kept {
        let b = &bindings[i].binding;
        tracing::warn!(
            "binding {i} ({}): the config asks for mode {:?} but its backfill state runs {:?}, which it keeps; to switch, raise its counter (\"backfill\": {})",
            b.table_name(),
            asked.as_str(),
            kept.as_str(),
            b.backfill + 1
        );
    }
}

/// A chunk scanned while the previous cycle committed, for the next cycle to verify.
#[derive(Debug)]
struct Ahead<P> {
    binding: usize,
    /// The cursor it was scanned after.
    after: Key,
    chunk: Chunk<P>,
}

/// Documents emitted between yields while a chunk is emitted: about a tenth of a
/// millisecond of work, so a scan running beside it reads rows as they arrive.
const YIELD_EVERY: usize = 256;

/// One binding's chunk in hand during a cycle.
#[derive(Debug)]
struct ChunkInHand {
    binding: usize,
    /// Rows by position; `None` once deleted by a patch (Precise only). In the other
    /// modes, emitted and drained before the first change the stream brings.
    rows: Vec<Option<(Key, Row)>>,
    /// Precise only: key identity to index in `rows`, built by the first patch
    /// ([`ChunkInHand::index`]).
    index: Option<HashMap<String, usize>>,
    /// The last key scanned; `None` with `complete`.
    hi: Option<Key>,
    complete: bool,
    scanned: u64,
}

impl ChunkInHand {
    /// The rows by key identity. Built when the first change falls in the window, not
    /// when the chunk is taken: most chunks see no change at all, and their keys need
    /// no hashing.
    fn index(&mut self) -> &mut HashMap<String, usize> {
        let rows = &self.rows;
        self.index.get_or_insert_with(|| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|(k, _)| (k.identity(), i)))
                .collect()
        })
    }
}

/// A change after key-change splitting, with what its document needs.
#[derive(Debug)]
struct RowChange {
    binding: usize,
    op: Op,
    key: Key,
    row: Row,
    before: Option<Row>,
    pos: Vec<u64>,
    fields: Arc<Row>,
}

impl RowChange {
    fn view(&self) -> EmitView<'_> {
        EmitView {
            binding: self.binding,
            op: self.op,
            row: &self.row,
            before: self.before.as_ref(),
            pos: &self.pos,
            fields: &self.fields,
        }
    }
}

/// What a change's document is written from, borrowed from a [`RowChange`] or, on the
/// path that emits a batch in place, from the stream's [`Change`].
#[derive(Debug, Clone, Copy)]
struct EmitView<'a> {
    binding: usize,
    op: Op,
    row: &'a Row,
    before: Option<&'a Row>,
    pos: &'a [u64],
    fields: &'a Row,
}

/// Whether an update moved its row to another key (emitted as a `d` then a `c`).
fn key_changed(c: &Change) -> bool {
    c.op == Op::Update && c.before_key.as_ref().is_some_and(|bk| *bk != c.key)
}

#[derive(Debug)]
enum Item {
    Row(RowChange),
    Truncate(Vec<usize>, ChangeMeta),
}

/// Everything the merger keeps but the source, which the methods that talk to the
/// database take as a parameter: the next chunk's scan borrows the source while the
/// engine emits and commits the last one ([`Engine::commit_cycle`]).
struct Engine<S: Source, K> {
    stream: S::Stream,
    out: Output<K>,
    options: EngineOptions,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    specs: Vec<BindingSpec>,
    /// Each binding's `_meta.source` table entries.
    sources: Vec<SourceTable>,
    state_keys: Vec<String>,
    state: State<S::Position>,
    /// Every transaction committing at or before this has been read from the stream.
    delivered: S::Position,
    in_txn: bool,
    /// Delivered transaction ids not yet seen in a verified snapshot.
    unproven_txids: Vec<u64>,
    last_pos: Option<Vec<u64>>,
    last_commit_ts: Option<i64>,
    /// Something changed since the last checkpoint.
    dirty: bool,
    last_checkpoint: Instant,
    last_progress_log: Instant,
    /// A progress interval passed at the last checkpoint: measure the stream's lag in
    /// bytes, which needs the source ([`Engine::measure_lag`]).
    lag_due: bool,
    /// Per binding, the average [`buffered_bytes`] of a row of its last chunk.
    row_bytes: Vec<Option<usize>>,
    /// The last checkpoint started, until acknowledged: its position and documents.
    unacknowledged: Option<(S::Position, u64)>,
    /// The last position told to the source, with `--acks stdin`.
    told: Option<S::Position>,
    /// With `--acks stdin`, the newest position whose checkpoint has settled (been
    /// printed): an acknowledgement is never told past it.
    settled: Option<S::Position>,
    /// The stream's events being gathered for one [`Engine::route`], kept empty between
    /// batches with its capacity: a batch is usually a whole transaction, and growing a
    /// fresh vector to it again for every transaction copied each event about twice.
    batch: Vec<StreamEvent<S::Position>>,
    /// Bindings the stream said must be read again ([`StreamEvent::Reread`]), applied by
    /// the next checkpoint, which is between transactions and after any chunk in hand was
    /// emitted: `(binding, column mark, reason)`.
    rereads: Vec<(usize, Option<u64>, String)>,
}

impl<S: Source, K: Sink> Engine<S, K> {
    fn phase(&self, binding: usize) -> Phase {
        self.state.bindings[&self.state_keys[binding]].phase
    }

    fn entry_mut(&mut self, binding: usize) -> &mut crate::state::BindingState {
        let key = &self.state_keys[binding];
        self.state
            .bindings
            .get_mut(key)
            .expect("every binding has a state entry")
    }

    /// Says that a keyless binding's table is read again: a multiset cannot be re-read
    /// on top of itself.
    fn truncate_for_reread(&mut self, b: usize) -> Result<()> {
        let mut source = self.source_fields(b);
        source.insert("snapshot".into(), Value::Bool(true));
        self.out.truncate(b, &source)?;
        self.dirty = true;
        Ok(())
    }

    async fn start(&mut self, truncate: &[usize]) -> Result<()> {
        for &b in truncate {
            self.truncate_for_reread(b)?;
        }
        for b in 0..self.specs.len() {
            let entry = self.entry_mut(b);
            if entry.mode == ResolvedMode::OnlyChanges && entry.phase != Phase::Active {
                entry.phase = Phase::Active;
                self.dirty = true;
            }
            if self.phase(b) == Phase::Active {
                self.metrics.backfill_not_needed(b);
            }
        }
        if self.dirty {
            self.checkpoint().await?;
        }
        Ok(())
    }

    async fn main_loop(&mut self, source: &mut S) -> Result<Outcome> {
        let mut end: Option<S::Position> = None;
        let mut ahead = None;
        loop {
            // Before the next cycle, so the table's backfill starts over at once.
            if !self.rereads.is_empty() {
                self.checkpoint().await?;
            }
            self.measure_lag(source).await;
            self.acknowledge_committed().await?;
            if self.shutdown.requested() {
                self.checkpoint_if_needed().await?;
                return Ok(Outcome::Stopped);
            }
            let cycle: Vec<usize> = (0..self.specs.len())
                .filter(|&b| self.phase(b) != Phase::Active)
                .take(self.options.concurrency.max(1))
                .collect();
            if !cycle.is_empty() {
                ahead = self.cycle(source, &cycle, ahead.take()).await?;
                continue;
            }
            if self.options.until_caught_up {
                if end.is_none() {
                    end = Some(source.end_position().await?);
                }
                if end.as_ref().is_some_and(|e| self.delivered >= *e) {
                    self.checkpoint_if_needed().await?;
                    return Ok(Outcome::CaughtUp);
                }
            }
            self.stream_until(source, None, &mut []).await?;
            if self.dirty && self.last_checkpoint.elapsed() >= self.options.checkpoint_interval {
                self.checkpoint().await?;
            }
        }
    }

    /// Starts each binding the stream asked to read again over as an incremental backfill
    /// ([`StreamEvent::Reread`]). Called by every checkpoint before it writes the state:
    /// no checkpoint can carry a position past a reread without it (MySQL's `ALTER TABLE`
    /// is read once), the changes delivered before are in the units up to this checkpoint
    /// and the re-read rows in those after it. A checkpoint is between transactions, so
    /// the binding's window opens at the delivered position as it does for a counter
    /// raised at start; its first chunk's snapshot must see the transaction that carried
    /// the reread ([`Engine::observe`]), like any chunk's.
    fn apply_rereads(&mut self) -> Result<()> {
        for (b, mark, reason) in std::mem::take(&mut self.rereads) {
            let table = self.table_name(b);
            let entry = self.entry_mut(b);
            if !entry.rereads_on_rewrite() {
                if entry.mode == ResolvedMode::OnlyChanges {
                    tracing::warn!(%table, "{reason}; the binding runs Only Changes, so the rows written before stay as they were downstream (raise its backfill counter to read them)");
                } else {
                    // Not started: its backfill reads the table as it is now.
                    entry.column_mark = mark.or(entry.column_mark);
                }
                continue;
            }
            entry.read_again(mark);
            let keyless = entry.mode == ResolvedMode::WithoutPrimaryKey;
            tracing::warn!(%table, "{reason}: the rows written before hold values no change carried, so the table is read again (an incremental backfill)");
            if keyless {
                self.truncate_for_reread(b)?;
            }
        }
        Ok(())
    }

    /// Commits the unit in hand unless the last line written is already a checkpoint of the
    /// current state, and waits until it is durable and acknowledged: the run ends.
    async fn checkpoint_if_needed(&mut self) -> Result<()> {
        if self.dirty || self.out.docs_in_unit() > 0 {
            self.checkpoint().await?;
        }
        self.out.settle_all()?;
        self.acknowledge_committed().await
    }

    /// Acknowledges the last checkpoint to the source once the output has committed it
    /// (at most one is in flight, so none settling means it is committed).
    async fn acknowledge_committed(&mut self) -> Result<()> {
        if !self.out.settling()
            && let Some((position, docs)) = self.unacknowledged.take()
        {
            self.acknowledge(position).await?;
            self.metrics.committed(docs);
        } else if let (Some(acks), Some(settled)) =
            (self.options.acks.as_ref(), self.settled.clone())
            && acks.has_changed().unwrap_or(false)
        {
            // An acknowledgement that came in after its checkpoint was settled, while no
            // other is due: an idle stream would otherwise hold it until its next one.
            self.acknowledge(settled).await?;
        }
        Ok(())
    }

    /// Tells the source that `durable` (a position whose state is durable) is consumed: at
    /// once, or with `--acks stdin` only as far as the runtime has acknowledged. The runtime
    /// acknowledges only checkpoints it read, which were durable before they were printed,
    /// so its position is never past `durable`; the check is a guard, not a wait.
    async fn acknowledge(&mut self, durable: S::Position) -> Result<()> {
        let Some(acks) = self.options.acks.as_mut() else {
            return self.stream.acknowledge(&durable).await.map_err(Error::from);
        };
        self.settled = Some(durable.clone());
        let Some(acked) = acks.borrow_and_update().clone() else {
            return Ok(());
        };
        let acked: S::Position = serde_json::from_value(acked).map_err(|e| {
            Error::Invariant(format!(
                "an acknowledgement on stdin is not a position: {e}"
            ))
        })?;
        // Both are safe to tell; the lower one is what both allow.
        let tell = acked.min(durable);
        if self.told.as_ref().is_some_and(|told| *told >= tell) {
            return Ok(());
        }
        self.stream.acknowledge(&tell).await?;
        self.told = Some(tell);
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        debug_assert!(!self.in_txn, "checkpoints never split a transaction");
        self.apply_rereads()?;
        self.state.position = Some(self.delivered.clone());
        let docs = self.out.docs_in_unit() as u64;
        self.out.checkpoint(&self.state.to_json())?;
        // The checkpoint before this one is committed now (`Output::checkpoint` settles it
        // first); this one is acknowledged once its state is durable too (`crate::output`,
        // step 4 after step 2).
        if let Some((position, docs)) = self.unacknowledged.replace((self.delivered.clone(), docs))
        {
            self.acknowledge(position).await?;
            self.metrics.committed(docs);
        }
        self.dirty = false;
        self.last_checkpoint = Instant::now();
        if self.last_progress_log.elapsed() >= self.options.progress_interval {
            self.last_progress_log = Instant::now();
            self.metrics.log_progress();
            self.lag_due = true;
        }
        Ok(())
    }

    /// Lag in bytes needs the log's end: one cheap query per progress interval, asked
    /// after the checkpoint that found the interval passed.
    async fn measure_lag(&mut self, source: &mut S) {
        if std::mem::take(&mut self.lag_due)
            && let Ok(end) = source.end_position().await
            && let Some(bytes) = self.delivered.bytes_until(&end)
        {
            self.metrics.stream_lag_bytes(bytes);
        }
    }

    /// One chunk cycle over `bindings`: scan, fence, stream to the fence, emit, checkpoint.
    /// `ahead` is the first binding's chunk when the last cycle scanned it while it
    /// committed; this cycle returns the next cycle's the same way (see the module doc,
    /// "Scanning ahead").
    async fn cycle(
        &mut self,
        source: &mut S,
        bindings: &[usize],
        mut ahead: Option<Ahead<S::Position>>,
    ) -> Result<Option<Ahead<S::Position>>> {
        let mut chunks = Vec::with_capacity(bindings.len());
        let mut fence: Option<S::Position> = None;
        for &b in bindings {
            if self.phase(b) == Phase::Pending {
                let estimate = source.estimate_rows(&self.specs[b]).await;
                let entry = self.entry_mut(b);
                entry.phase = Phase::Backfilling;
                entry.estimated_rows = estimate;
                let done = entry.rows_done;
                tracing::info!(table = %self.table_name(b), estimated_rows = estimate, "backfill started");
                self.metrics.backfill_started(b, done, estimate);
            }
            let scanned = ahead.take().filter(|a| a.binding == b);
            let chunk = self.scan_verified(source, b, scanned).await?;
            if fence.as_ref().is_none_or(|f| chunk.fence > *f) {
                fence = Some(chunk.fence.clone());
            }
            chunks.push(self.take_chunk(b, chunk)?);
        }
        // Every delivered transaction is now known to be visible.
        self.unproven_txids.clear();
        let fence = fence.expect("a cycle has at least one binding");
        self.stream_until(source, Some(&fence), &mut chunks).await?;
        // The next cycle starts with the first binding again unless its chunk was the
        // last: scan that while this cycle's chunks are emitted and committed. The next
        // cycle checks its witness like any scan's; nothing is read from the stream until
        // then, so it fails that check no more often than a scan after the checkpoint.
        let next = chunks
            .first()
            .filter(|c| !c.complete)
            .and_then(|c| Some((c.binding, c.hi.clone()?)));
        let Some((b, after)) = next else {
            self.commit_cycle(chunks).await?;
            return Ok(None);
        };
        let spec = self.specs[b].clone();
        let delivered = self.delivered.clone();
        let limits = self.limits_for(b);
        let scan = async {
            source.await_visible(&delivered).await?;
            source
                .scan(ScanRequest {
                    binding: &spec,
                    after: Some(&after),
                    limits,
                })
                .await
        };
        let (scanned, committed) = tokio::join!(scan, self.commit_cycle(chunks));
        committed?;
        Ok(Some(Ahead {
            binding: b,
            after,
            chunk: scanned?,
        }))
    }

    /// Emits the chunks in hand and commits the cycle. Yields now and then, so that a scan
    /// running beside it ([`Engine::cycle`]) reads the rows the database sends meanwhile.
    async fn commit_cycle(&mut self, chunks: Vec<ChunkInHand>) -> Result<()> {
        for chunk in chunks {
            self.finish_chunk(chunk).await?;
        }
        self.dirty = true;
        self.checkpoint().await
    }

    /// Scans the next chunk of `b`, rescanning until its snapshot sees every delivered
    /// transaction (the fence-ordering invariant). `scanned` is a chunk the last cycle
    /// scanned ahead; it is checked like any scan, and used only if it starts at the
    /// cursor.
    async fn scan_verified(
        &mut self,
        source: &mut S,
        b: usize,
        mut scanned: Option<Ahead<S::Position>>,
    ) -> Result<Chunk<S::Position>> {
        let mut attempts = 0;
        loop {
            let cursor = self.state.bindings[&self.state_keys[b]].cursor.clone();
            let chunk = match scanned.take() {
                Some(a) if cursor.as_ref() == Some(&a.after) => a.chunk,
                _ => {
                    source.await_visible(&self.delivered).await?;
                    source
                        .scan(ScanRequest {
                            binding: &self.specs[b],
                            after: cursor.as_ref(),
                            limits: self.limits_for(b),
                        })
                        .await?
                }
            };
            self.check_chunk_order(source, b, cursor.as_ref(), &chunk)?;
            if self.options.sabotage.skip_snapshot_check
                || self.snapshot_sees_delivered(&chunk.witness)
            {
                return Ok(chunk);
            }
            attempts += 1;
            if attempts > self.options.max_rescans {
                return Err(SourceError::transient(format!(
                    "{}: after {attempts} scans the snapshot still does not see transactions the stream delivered; retrying from the last checkpoint",
                    self.table_name(b)
                ))
                .into());
            }
            tracing::debug!(table = %self.table_name(b), attempts, "snapshot misses delivered transactions; rescanning");
            if !self.options.rescan_backoff.is_zero() {
                tokio::time::sleep(self.options.rescan_backoff).await;
            }
        }
    }

    fn snapshot_sees_delivered(&self, witness: &SnapshotWitness<S::Position>) -> bool {
        match witness {
            SnapshotWitness::SeesThrough(p) => *p >= self.delivered,
            SnapshotWitness::Mvcc { xmax, in_progress } => self
                .unproven_txids
                .iter()
                .all(|t| t < xmax && !in_progress.contains(t)),
            SnapshotWitness::Proven => true,
        }
    }

    /// The bounds of `b`'s next scan: at most as many rows as its last chunk's rows fit in
    /// the byte bound. A scan stops keeping rows at that bound but still reads the rest of
    /// its `LIMIT` from the database, so a row count the bytes would cut short is work the
    /// server does for nothing.
    fn limits_for(&self, b: usize) -> ChunkLimits {
        let mut limits = self.options.limits;
        if let Some(per_row) = self.row_bytes[b] {
            limits.rows = limits.rows.min((limits.bytes / per_row.max(1)).max(1));
        }
        limits
    }

    fn check_chunk_order(
        &self,
        source: &S,
        b: usize,
        cursor: Option<&Key>,
        chunk: &Chunk<S::Position>,
    ) -> Result<()> {
        if chunk.rows.len() > self.options.limits.rows {
            return Err(Error::Invariant(format!(
                "{}: chunk of {} rows exceeds the limit of {}",
                self.table_name(b),
                chunk.rows.len(),
                self.options.limits.rows
            )));
        }
        if chunk.rows.is_empty() && !chunk.complete {
            return Err(Error::Invariant(format!(
                "{}: empty chunk that is not the last",
                self.table_name(b)
            )));
        }
        let spec = &self.specs[b];
        let mut prev = cursor;
        for (key, _) in &chunk.rows {
            if let Some(p) = prev
                && let Some(ord) = source.compare_native(spec, p, key)
                && ord != Ordering::Less
            {
                return Err(Error::Invariant(format!(
                    "{}: scan returned key {} after {}; the key order of the scan and of the connector disagree",
                    self.table_name(b),
                    key.identity(),
                    p.identity()
                )));
            }
            prev = Some(key);
        }
        Ok(())
    }

    /// Turns a scanned chunk into the chunk in hand: Precise buffers it, the other modes
    /// emit it now (before any change newer than its snapshot).
    fn take_chunk(&mut self, b: usize, chunk: Chunk<S::Position>) -> Result<ChunkInHand> {
        let hi = if chunk.complete {
            None
        } else {
            chunk.rows.last().map(|(k, _)| k.clone())
        };
        let scanned = chunk.rows.len() as u64;
        if !chunk.rows.is_empty() {
            let bytes: usize = chunk.rows.iter().map(|(k, r)| buffered_bytes(r, k)).sum();
            self.row_bytes[b] = Some(bytes.div_ceil(chunk.rows.len()));
        }
        let mut hand = ChunkInHand {
            binding: b,
            rows: Vec::new(),
            index: None,
            hi,
            complete: chunk.complete,
            scanned,
        };
        // Every mode keeps the rows in hand: Precise to patch them, the others only until
        // the stream brings a change ([`Engine::emit_unpatched`]) or the cycle commits.
        hand.rows = chunk.rows.into_iter().map(Some).collect();
        Ok(hand)
    }

    /// Emits the rows of the chunks in hand that are not patched (every mode but Precise).
    /// Such a chunk's rows must precede every change read after its scan, so the stream
    /// calls this before it emits one; when the stream brings none (no writes during the
    /// cycle) the rows wait for the commit, and are rendered while the next scan runs
    /// ("Scanning ahead" in the module docs) instead of before it.
    fn emit_unpatched(&mut self, chunks: &mut [ChunkInHand]) -> Result<()> {
        for hand in chunks.iter_mut() {
            if self.specs[hand.binding].mode == ResolvedMode::Precise {
                continue;
            }
            for (_, row) in hand.rows.drain(..).flatten() {
                self.emit_snapshot(hand.binding, &row)?;
            }
        }
        Ok(())
    }

    async fn finish_chunk(&mut self, hand: ChunkInHand) -> Result<()> {
        let b = hand.binding;
        for (i, (_, row)) in hand.rows.into_iter().flatten().enumerate() {
            self.emit_snapshot(b, &row)?;
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        }
        let entry = self.entry_mut(b);
        entry.rows_done += hand.scanned;
        if hand.complete {
            entry.phase = Phase::Active;
            entry.cursor = None;
        } else {
            entry.cursor = hand.hi;
        }
        self.metrics.chunk_done(b, hand.scanned, hand.complete);
        if hand.complete {
            tracing::info!(table = %self.table_name(b), "backfill complete");
        }
        Ok(())
    }

    /// Reads the stream. With a target, until every transaction committing at or before it
    /// is delivered; without one, until the next transaction boundary.
    async fn stream_until(
        &mut self,
        source: &mut S,
        target: Option<&S::Position>,
        chunks: &mut [ChunkInHand],
    ) -> Result<()> {
        loop {
            if target.is_some_and(|t| !self.in_txn && self.delivered >= *t) {
                return Ok(());
            }
            let mut batch = std::mem::take(&mut self.batch);
            loop {
                let event = match self.stream.next_buffered() {
                    Some(event) => event,
                    None => next_event_flushing(&mut self.stream, &mut self.out).await?,
                };
                let boundary = self.observe(&event)?;
                batch.push(event);
                if batch.len() >= self.options.batch_events {
                    break;
                }
                if boundary
                    && (target.is_none_or(|t| self.delivered >= *t)
                        || matches!(batch.last(), Some(StreamEvent::Progress { .. })))
                {
                    break;
                }
            }
            let routed = self.route(source, &mut batch, chunks).await;
            batch.clear();
            self.batch = batch;
            routed?;
            if target.is_none() && !self.in_txn {
                return Ok(());
            }
        }
    }

    /// Tracks transaction boundaries and the delivered position. Returns whether the event
    /// leaves the stream between transactions.
    fn observe(&mut self, event: &StreamEvent<S::Position>) -> Result<bool> {
        match event {
            StreamEvent::Begin => {
                self.in_txn = true;
                Ok(false)
            }
            StreamEvent::Change(_) | StreamEvent::Truncate { .. } => {
                if !self.in_txn {
                    return Err(Error::Invariant(
                        "a change arrived outside a transaction".into(),
                    ));
                }
                Ok(false)
            }
            StreamEvent::Commit {
                position,
                txid,
                ts_ms,
            } => {
                self.advance(position)?;
                self.in_txn = false;
                // A table to be read again counts from its `Reread` on: the transaction
                // that carried it made the rows' new values, and the first chunk's
                // snapshot must see it. (Before it, the rewrite held the table's lock, so
                // a snapshot that sees this transaction sees every earlier one that
                // touched the table.)
                if let Some(t) = txid
                    && (!self.rereads.is_empty() || self.phase_any_backfilling())
                {
                    self.unproven_txids.push(*t);
                }
                if let Some(ts) = ts_ms {
                    self.last_commit_ts = Some(*ts);
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    self.metrics
                        .stream_lag_seconds((now_ms - ts) as f64 / 1000.0);
                }
                Ok(true)
            }
            StreamEvent::Reread {
                binding,
                column_mark,
                reason,
            } => {
                if !self.options.sabotage.skip_rereads {
                    self.rereads.push((*binding, *column_mark, reason.clone()));
                    self.dirty = true;
                }
                Ok(false)
            }
            StreamEvent::Progress { position } => {
                if self.in_txn {
                    return Err(Error::Invariant(
                        "progress reported inside a transaction".into(),
                    ));
                }
                self.advance(position)?;
                Ok(true)
            }
        }
    }

    /// Whether a Precise binding is still backfilling: its changes are then routed by
    /// region, not all emitted.
    fn any_precise_backfilling(&self) -> bool {
        self.specs.iter().enumerate().any(|(b, spec)| {
            spec.mode == ResolvedMode::Precise
                && self.state.bindings[&self.state_keys[b]].phase != Phase::Active
        })
    }

    fn phase_any_backfilling(&self) -> bool {
        self.state
            .bindings
            .values()
            .any(|e| e.phase != Phase::Active)
    }

    fn advance(&mut self, position: &S::Position) -> Result<()> {
        if *position < self.delivered {
            return Err(Error::Invariant(format!(
                "stream position went back from {:?} to {position:?}",
                self.delivered
            )));
        }
        if *position > self.delivered {
            self.delivered = position.clone();
            self.dirty = true;
        }
        Ok(())
    }

    /// Classifies and routes one batch of events: emit, patch or drop each change.
    ///
    /// When no binding is a Precise one still backfilling, every change is emitted as it
    /// is: the batch is then read in place, nothing moved into items or classified (a
    /// change is a few hundred bytes, and this is the steady state of every capture).
    async fn route(
        &mut self,
        source: &mut S,
        batch: &mut Vec<StreamEvent<S::Position>>,
        chunks: &mut [ChunkInHand],
    ) -> Result<()> {
        // Outside a chunk cycle (a capture streaming) there is nothing to look for.
        if !chunks.is_empty()
            && batch
                .iter()
                .any(|e| matches!(e, StreamEvent::Change(_) | StreamEvent::Truncate { .. }))
        {
            self.emit_unpatched(chunks)?;
        }
        if !self.any_precise_backfilling() {
            for event in batch.iter() {
                match event {
                    StreamEvent::Change(c) if !key_changed(c) => self.emit_change(&EmitView {
                        binding: c.binding,
                        op: c.op,
                        row: &c.row,
                        before: c.before.as_ref(),
                        pos: &c.meta.pos,
                        fields: &c.meta.fields,
                    })?,
                    // Rare: split as the general path does.
                    StreamEvent::Change(c) => {
                        for item in self.expand(&mut vec![StreamEvent::Change(c.clone())]) {
                            if let Item::Row(change) = item {
                                self.emit_change(&change.view())?;
                            }
                        }
                    }
                    StreamEvent::Truncate { bindings, meta } => {
                        self.emit_truncate(bindings, meta, chunks)?;
                    }
                    StreamEvent::Begin
                    | StreamEvent::Commit { .. }
                    | StreamEvent::Progress { .. }
                    | StreamEvent::Reread { .. } => {}
                }
            }
            return Ok(());
        }
        let items = self.expand(batch);
        let regions = self.classify(source, &items, chunks).await?;
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Item::Truncate(bindings, meta) => self.emit_truncate(&bindings, &meta, chunks)?,
                Item::Row(change) => {
                    let b = change.binding;
                    let entry = &self.state.bindings[&self.state_keys[b]];
                    let (active, incremental) = (entry.phase == Phase::Active, entry.incremental());
                    if active || self.specs[b].mode != ResolvedMode::Precise {
                        self.emit_change(&change.view())?;
                        continue;
                    }
                    let incremental_delete = change.op == Op::Delete && incremental;
                    match regions[i].unwrap_or(Region::Ahead) {
                        Region::Done => self.emit_change(&change.view())?,
                        Region::Window => {
                            let hand = chunks.iter_mut().find(|c| c.binding == b);
                            if incremental_delete {
                                let key = change.key.clone();
                                self.emit_change(&change.view())?;
                                if let Some(hand) = hand {
                                    patch_delete(hand, &key, self.options.sabotage.skip_patching);
                                }
                            } else if let Some(hand) = hand {
                                patch(hand, change, self.options.sabotage.skip_patching);
                            }
                        }
                        Region::Ahead => {
                            if incremental_delete {
                                self.emit_change(&change.view())?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Splits key changes into `d` + `c` and drops transaction markers.
    fn expand(&self, batch: &mut Vec<StreamEvent<S::Position>>) -> Vec<Item> {
        let mut items = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            match event {
                StreamEvent::Change(c) => {
                    if key_changed(&c) {
                        let old_key = c.before_key.expect("checked above");
                        let old_row = match &c.before {
                            Some(before) => before.clone(),
                            None => key_row(&self.specs[c.binding].key, &old_key, &c.row),
                        };
                        let mut c_pos = c.meta.pos.clone();
                        c_pos.push(1);
                        items.push(Item::Row(RowChange {
                            binding: c.binding,
                            op: Op::Delete,
                            key: old_key,
                            row: old_row,
                            before: c.before,
                            pos: c.meta.pos,
                            fields: c.meta.fields.clone(),
                        }));
                        items.push(Item::Row(RowChange {
                            binding: c.binding,
                            op: Op::Insert,
                            key: c.key,
                            row: c.row,
                            before: None,
                            pos: c_pos,
                            fields: c.meta.fields,
                        }));
                    } else {
                        items.push(Item::Row(RowChange {
                            binding: c.binding,
                            op: c.op,
                            key: c.key,
                            row: c.row,
                            before: c.before,
                            pos: c.meta.pos,
                            fields: c.meta.fields,
                        }));
                    }
                }
                StreamEvent::Truncate { bindings, meta } => {
                    items.push(Item::Truncate(bindings, meta))
                }
                StreamEvent::Begin
                | StreamEvent::Commit { .. }
                | StreamEvent::Progress { .. }
                | StreamEvent::Reread { .. } => {}
            }
        }
        items
    }

    /// The region of every row change of a Precise binding that is not Active: one
    /// classification call per binding.
    async fn classify(
        &mut self,
        source: &mut S,
        items: &[Item],
        chunks: &[ChunkInHand],
    ) -> Result<Vec<Option<Region>>> {
        let mut regions = vec![None; items.len()];
        let mut per_binding: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if let Item::Row(c) = item {
                let entry = &self.state.bindings[&self.state_keys[c.binding]];
                if self.specs[c.binding].mode == ResolvedMode::Precise
                    && entry.phase != Phase::Active
                {
                    per_binding.entry(c.binding).or_default().push(i);
                }
            }
        }
        for (b, idxs) in per_binding {
            let entry = &self.state.bindings[&self.state_keys[b]];
            let cursor = entry.cursor.clone();
            let hand = chunks.iter().find(|c| c.binding == b);
            let hi = match hand {
                Some(h) if h.complete => Hi::Unbounded,
                Some(h) => h.hi.as_ref().map_or(Hi::Empty, Hi::Key),
                None => Hi::Empty,
            };
            if cursor.is_none() && hi == Hi::Empty {
                for i in idxs {
                    regions[i] = Some(Region::Ahead);
                }
                continue;
            }
            let window = Window {
                lo: cursor.as_ref(),
                hi,
            };
            let keys: Vec<&Key> = idxs
                .iter()
                .map(|&i| match &items[i] {
                    Item::Row(c) => &c.key,
                    Item::Truncate(..) => unreachable!("only row changes are classified"),
                })
                .collect();
            let answer = source.classify(&self.specs[b], window, &keys).await?;
            if answer.len() != keys.len() {
                return Err(Error::Invariant(format!(
                    "{}: classification answered {} keys of {}",
                    self.table_name(b),
                    answer.len(),
                    keys.len()
                )));
            }
            for (i, region) in idxs.into_iter().zip(answer) {
                regions[i] = Some(region);
            }
        }
        Ok(regions)
    }

    fn check_pos(&mut self, pos: &[u64]) -> Result<()> {
        if self.last_pos.as_deref().is_some_and(|last| last >= pos) {
            return Err(Error::Invariant(format!(
                "change position {pos:?} does not follow {:?}",
                self.last_pos
            )));
        }
        match &mut self.last_pos {
            // Reused: this runs once per change.
            Some(last) => {
                last.clear();
                last.extend_from_slice(pos);
            }
            None => self.last_pos = Some(pos.to_vec()),
        }
        Ok(())
    }

    fn emit_change(&mut self, change: &EmitView<'_>) -> Result<()> {
        self.check_pos(change.pos)?;
        let op = match change.op {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
        };
        let doc = Doc {
            row: change.row,
            op,
            source: &self.sources[change.binding],
            snapshot: false,
            fields: Some(change.fields),
            pos: Some(change.pos),
            before: change.before,
        };
        self.out.doc(change.binding, &doc)?;
        Ok(())
    }

    fn emit_truncate(
        &mut self,
        bindings: &[usize],
        meta: &ChangeMeta,
        chunks: &mut [ChunkInHand],
    ) -> Result<()> {
        for &b in bindings {
            let mut source = self.source_fields(b);
            source.extend(meta.fields.to_map());
            self.check_pos(&meta.pos)?;
            source.insert("pos".into(), pos_value(&meta.pos));
            self.out.truncate(b, &source)?;
            if let Some(hand) = chunks.iter_mut().find(|c| c.binding == b) {
                hand.rows.iter_mut().for_each(|r| *r = None);
            }
        }
        Ok(())
    }

    fn emit_snapshot(&mut self, b: usize, row: &Row) -> Result<()> {
        let doc = Doc {
            row,
            op: "c",
            source: &self.sources[b],
            snapshot: true,
            fields: None,
            pos: None,
            before: None,
        };
        self.out.doc(b, &doc)?;
        Ok(())
    }

    fn source_fields(&self, b: usize) -> Map<String, Value> {
        let table = &self.specs[b].table;
        let mut m = Map::new();
        m.insert("schema".into(), Value::from(table.namespace.as_str()));
        m.insert("table".into(), Value::from(table.stream.as_str()));
        m
    }

    fn table_name(&self, b: usize) -> String {
        let t = &self.specs[b].table;
        t.to_string()
    }
}

fn pos_value(pos: &[u64]) -> Value {
    Value::Array(pos.iter().map(|&p| Value::from(p)).collect())
}

/// A row holding just the key columns, for the `d` of a key change without a before image.
fn key_row(names: &[String], key: &Key, fallback: &Row) -> Row {
    if names.len() == key.0.len() && !names.is_empty() {
        names.iter().zip(key.0.iter().cloned()).collect()
    } else {
        fallback.clone()
    }
}

/// Applies an insert or update (or delete) to the chunk in hand.
fn patch(hand: &mut ChunkInHand, change: RowChange, skip: bool) {
    if skip {
        return;
    }
    if change.op == Op::Delete {
        patch_delete(hand, &change.key, false);
        return;
    }
    let id = change.key.identity();
    let mut row = change.row;
    match hand.index().get(&id).copied() {
        Some(i) => {
            if let Some((_, old)) = &hand.rows[i] {
                // Columns the database omitted (unchanged TOAST) keep their buffered value.
                row.fill_from(old);
            }
            hand.rows[i] = Some((change.key, row));
        }
        None => {
            let at = hand.rows.len();
            hand.index().insert(id, at);
            hand.rows.push(Some((change.key, row)));
        }
    }
}

fn patch_delete(hand: &mut ChunkInHand, key: &Key, skip: bool) {
    if skip {
        return;
    }
    if let Some(&i) = hand.index().get(&key.identity()) {
        hand.rows[i] = None;
    }
}
