//! Runs one materialization (PIPELINE.md §4): reads its collections' committed lines from
//! the store and applies them to the destination's tables, exactly once.
//!
//! ## Exactly once, across crashes of the runtime and restarts of the destination
//!
//! A materialization binding's read position is the number of lines of its capture's log
//! it has applied. It lives in the destination, written in the same destination
//! transaction as the batch that moves it ([`crate::destination`]). On every start the
//! runtime reads the positions back and reads each log on from there (from the lowest
//! position of the bindings it feeds, each line going only to the bindings it is new to). The store's logs
//! only ever grow by committed units and readers see committed lines only, so line *n* of
//! a log is the same line on every read (or, once a compaction dropped it, an empty line:
//! [`crate::compaction`] argues why the tables come out the same): a batch applied is
//! never read again, a batch
//! whose transaction did not commit is read again whole. Standard tables therefore get
//! every committed change once, and delta tables one row per committed document (its log
//! line number is in the row, unique per capture).
//!
//! ## Batches
//!
//! A batch is what is committed past the position when it is read, up to [`BATCH_DOCS`]
//! documents or [`BATCH_BYTES`] of their text (so memory stays bounded whatever a unit's
//! size; a batch may then end inside
//! a unit, which costs nothing but a reader of the destination seeing part of a source
//! transaction for a moment). Documents of a keyed standard binding are reduced by key
//! (DESIGN.md §6's merge: later columns over earlier ones, a delete clears what came
//! before), so a row changed many times in a batch is written once. A key's only
//! document in a batch is passed on as its text ([`Image::Text`]) with where each field
//! lies in it: its fields are read here once, for its key and op, and the destination
//! types them straight from the text without reading it again, so an initial load never
//! builds a tree of values per row.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backfill_core::consumer::{Document, Fields, Line, Op};
use serde_json::{Map, Value};

use crate::destination::TableReset;
use crate::destination::{
    Batch, DeltaRow, Destination, DestinationKind, Image, MultisetOp, Step, TableBinding,
};
use crate::discovery::Discovered;
use crate::error::{Error, Result};
use crate::request::{self, Kind, Phase, Request, TableAction};
use crate::spec::{MaterializationSpec, Pipeline};
use crate::store::Store;

/// Documents in one batch, at most.
pub const BATCH_DOCS: usize = 10_000;

/// Bytes of document text in one batch, at most. A batch is held as its documents' text
/// (a key with several documents merged into values) and the destination's rendering of
/// it while the one before it is written: at 1 MiB the initial load ran 1.6 times as fast
/// as at 512 KiB with `cdc` at 25 MiB; 2 MiB gained little more and reached 70 MiB.
pub const BATCH_BYTES: usize = 1 << 20;

/// How a materialization runs.
#[derive(Clone, Debug)]
pub struct MaterializeOptions {
    /// Set on SIGTERM/SIGINT.
    pub stop: Arc<AtomicBool>,
    /// Set once every capture has ended: the materialization stops once it has applied
    /// everything committed (with `--until-caught-up`).
    pub captures_done: Arc<AtomicBool>,
    /// How long to wait when nothing new is committed (a store written by another process
    /// is polled; this process's captures wake the materialization at once).
    pub poll: Duration,
    /// Told of this process's captures' commits.
    pub committed: Arc<crate::store::Committed>,
}

/// One materialization as it runs: what it lands, from which store, into which kind of
/// destination.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    /// The materialization.
    pub m: &'a MaterializationSpec,
    /// The pipeline it belongs to.
    pub pipeline: &'a Pipeline,
    /// The store its collections are in.
    pub store: &'a dyn Store,
    /// Its destination kind.
    pub kind: &'a dyn DestinationKind,
    /// How it runs.
    pub options: &'a MaterializeOptions,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("materialization", &self.m.name)
            .finish_non_exhaustive()
    }
}

impl Job<'_> {
    /// Runs until stopped (or, once `captures_done` is set, caught up), reopening the
    /// destination after a transient failure.
    pub fn run(self) -> Result<()> {
        let (m, options) = (self.m, self.options);
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            match run_once(self) {
                Ok(()) => return Ok(()),
                Err(Error::Unavailable(why)) if !options.stop.load(Ordering::SeqCst) => {
                    attempt += 1;
                    tracing::warn!(materialization = %m.name, "transient failure: {why}; retrying in {:.1} s (attempt {attempt})", backoff.as_secs_f64());
                    sleep_unless_stopped(backoff, &options.stop);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(Error::Unavailable(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The materialization's bindings with their collections' schemas, from each capture
/// connector's `discover --json`.
pub fn table_bindings(m: &MaterializationSpec, pipeline: &Pipeline) -> Result<Vec<TableBinding>> {
    let mut discovered: HashMap<String, Discovered> = HashMap::new();
    let mut out = Vec::new();
    for b in &m.bindings {
        let (capture, index) = pipeline.collection(&b.source).ok_or_else(|| {
            Error::Spec(format!(
                "materialization {}: no collection {:?}",
                m.name, b.source
            ))
        })?;
        if !discovered.contains_key(&capture.name) {
            discovered.insert(capture.name.clone(), Discovered::run(capture)?);
        }
        out.push(TableBinding {
            collection: b.source.clone(),
            table: b.target.clone(),
            delta: b.delta_updates,
            skip_unchanged_rereads: b.skip_unchanged_rereads,
            schema: discovered[&capture.name].schema(capture, index)?,
        });
    }
    Ok(out)
}

fn run_once(job: Job<'_>) -> Result<()> {
    let Job {
        m,
        pipeline,
        store,
        kind,
        options,
    } = job;
    let bindings = table_bindings(m, pipeline)?;
    let mut destination = kind.open(&m.name, &m.endpoint)?;
    // A requested drop is also the remedy for a change the table cannot follow: it must
    // not wait behind the refusal.
    let recreate: Vec<usize> = open_requests(store, m)?
        .iter()
        .filter(|r| r.table == TableAction::Drop)
        .flat_map(|r| {
            bindings
                .iter()
                .enumerate()
                .filter(|(_, b)| r.collections.contains(&b.collection))
                .map(|(i, _)| i)
        })
        .collect();
    destination.prepare(&bindings, &recreate)?;
    let mut positions = destination.positions()?;
    let mut captures: Vec<&str> = Vec::new();
    for b in &bindings {
        if let Some((c, _)) = pipeline.collection(&b.collection)
            && !captures.contains(&c.name.as_str())
        {
            captures.push(&c.name);
        }
    }
    tracing::info!(materialization = %m.name, ?positions, "materialization started");
    let mut requests_read = Instant::now() - REQUESTS_EVERY;
    loop {
        let done_before = options.captures_done.load(Ordering::SeqCst);
        let seen = options.committed.count();
        if requests_read.elapsed() >= REQUESTS_EVERY {
            requests_read = Instant::now();
            carry_out_requests(
                m,
                pipeline,
                store,
                &bindings,
                &mut positions,
                &mut *destination,
            )?;
        }
        let mut moved = false;
        for capture in &captures {
            let routes = routes(pipeline, capture, &bindings);
            let from = routes
                .iter()
                .flatten()
                .map(|b| positions.get(b).copied().unwrap_or(0))
                .min();
            let Some(from) = from else { continue };
            let fed: Vec<usize> = routes.iter().flatten().copied().collect();
            ensure_before_no_dropped_delete(m, pipeline, store, capture, &bindings, &positions)?;
            let before = positions.clone();
            let read = feed(
                store,
                capture,
                from,
                None,
                &|binding, line| {
                    routes
                        .get(binding)
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|b| before.get(b).copied().unwrap_or(0) <= line)
                        .collect()
                },
                &bindings,
                &mut *destination,
                Some((&fed, &before)),
            )?;
            if read > from {
                for b in fed {
                    let p = positions.entry(b).or_insert(0);
                    *p = (*p).max(read);
                }
                moved = true;
            }
        }
        if options.stop.load(Ordering::SeqCst) || (!moved && done_before) {
            destination.flush()?;
            tracing::info!(materialization = %m.name, ?positions, "materialization stopped");
            return Ok(());
        }
        if !moved {
            options.committed.wait_past(seen, options.poll);
        }
    }
}

/// Refuses to read on for a table of a compacted collection whose position lies before a
/// delete a compaction dropped (`0 < position < horizon`, [`crate::compaction`]): the
/// table may still hold that row. A materialization backfill reads from line 0, where
/// nothing is missed, and its rebuild ends past the horizon.
fn ensure_before_no_dropped_delete(
    m: &MaterializationSpec,
    pipeline: &Pipeline,
    store: &dyn Store,
    capture: &str,
    bindings: &[TableBinding],
    positions: &HashMap<usize, u64>,
) -> Result<()> {
    let Some(c) = pipeline.captures.iter().find(|c| c.name == capture) else {
        return Ok(());
    };
    if !c.compacted.contains(&true) {
        return Ok(());
    }
    let horizon = store.compaction(capture)?.horizon;
    for (b, binding) in bindings.iter().enumerate() {
        let at = positions.get(&b).copied().unwrap_or(0);
        let compacted = c
            .collections
            .iter()
            .position(|n| n == &binding.collection)
            .is_some_and(|i| c.compacted[i]);
        if compacted && at > 0 && at < horizon {
            return Err(Error::Destination {
                materialization: m.name.clone(),
                message: format!(
                    "table {} is at line {at} of compacted collection {}, before deletes the compaction dropped (tombstones older than {} hours); it may hold deleted rows: rebuild it with `cdc backfill PIPELINE materialization --materialization {} --binding {}`",
                    binding.table,
                    binding.collection,
                    c.tombstone_ms / 3_600_000,
                    m.name,
                    binding.table
                ),
            });
        }
    }
    Ok(())
}

/// How often a running materialization looks for backfill requests.
const REQUESTS_EVERY: Duration = Duration::from_secs(1);

/// The materialization backfill requests of `m` not done yet, oldest first.
fn open_requests(store: &dyn Store, m: &MaterializationSpec) -> Result<Vec<Request>> {
    Ok(store
        .requests()?
        .into_iter()
        .filter(|r| {
            r.open()
                && r.kind == Kind::Materialization
                && r.materialization.as_deref() == Some(m.name.as_str())
        })
        .collect())
}

/// Carries out the open materialization backfill requests of `m` (see
/// [`crate::request`]): each selected table emptied or recreated and refilled from the
/// start of its collection, or rebuilt in a shadow table swapped in when caught up.
fn carry_out_requests(
    m: &MaterializationSpec,
    pipeline: &Pipeline,
    store: &dyn Store,
    bindings: &[TableBinding],
    positions: &mut HashMap<usize, u64>,
    destination: &mut dyn Destination,
) -> Result<()> {
    for mut request in open_requests(store, m)? {
        request.phase = Phase::Running;
        store.put_request(&request)?;
        for (b, binding) in bindings.iter().enumerate() {
            if !request.collections.contains(&binding.collection) {
                continue;
            }
            match request.table {
                TableAction::Keep => {}
                TableAction::Truncate | TableAction::Drop => {
                    let how = if request.table == TableAction::Drop {
                        TableReset::Drop
                    } else {
                        TableReset::Truncate
                    };
                    destination.reset_table(b, how)?;
                    positions.insert(b, 0);
                    tracing::info!(materialization = %m.name, table = %binding.table, "table reset; refilling it from its collection");
                }
                TableAction::Rebuild => {
                    rebuild(pipeline, store, bindings, b, positions, destination)?;
                    tracing::info!(materialization = %m.name, table = %binding.table, "table rebuilt from its collection and swapped in");
                }
            }
        }
        request.phase = Phase::Done;
        request.note = "tables rebuilt from their collections".into();
        store.put_request(&request)?;
    }
    Ok(())
}

/// Rebuilds binding `b`'s table: a shadow table filled from the start of the collection
/// up to the live table's position (or a compaction's horizon past it), then swapped in,
/// position and all, in one transaction. Readers see the live table until the swap and
/// the rebuilt one after.
fn rebuild(
    pipeline: &Pipeline,
    store: &dyn Store,
    bindings: &[TableBinding],
    b: usize,
    positions: &mut HashMap<usize, u64>,
    destination: &mut dyn Destination,
) -> Result<()> {
    let Some((capture, index)) = pipeline.collection(&bindings[b].collection) else {
        return Ok(());
    };
    let shadow = destination.begin_shadow(b)?;
    let mut with_shadow = bindings.to_vec();
    with_shadow.resize(shadow + 1, bindings[b].clone());
    let until = positions
        .get(&b)
        .copied()
        .unwrap_or(0)
        .max(store.compaction(&capture.name)?.horizon);
    positions.insert(b, until);
    feed(
        store,
        &capture.name,
        0,
        Some(until),
        &|binding, _| {
            if binding == index {
                vec![shadow]
            } else {
                Vec::new()
            }
        },
        &with_shadow,
        destination,
        None,
    )?;
    destination.swap_shadow(b, shadow, until)
}

/// Per capture binding index, the materialization bindings that read its collection.
fn routes(pipeline: &Pipeline, capture: &str, bindings: &[TableBinding]) -> Vec<Vec<usize>> {
    let Some(c) = pipeline.captures.iter().find(|c| c.name == capture) else {
        return Vec::new();
    };
    c.collections
        .iter()
        .map(|collection| {
            bindings
                .iter()
                .enumerate()
                .filter(|(_, b)| &b.collection == collection)
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

/// Which bindings a [`feed`] moves the positions of: those of `bindings` whose position
/// in `positions` (as the feed starts) is behind where a batch ends.
type Moves<'a> = Option<(&'a [usize], &'a HashMap<usize, u64>)>;

/// Applies `capture`'s log from line `from` (to `until`, or what is committed) in
/// batches, each line going to the bindings `route` names for its capture binding and
/// line number; each batch moves the positions `moves` names to where it ends. Returns
/// the line it stopped at.
#[allow(clippy::too_many_arguments)]
fn feed(
    store: &dyn Store,
    capture: &str,
    from: u64,
    until: Option<u64>,
    route: &dyn Fn(usize, u64) -> Vec<usize>,
    bindings: &[TableBinding],
    destination: &mut dyn Destination,
    moves: Moves<'_>,
) -> Result<u64> {
    let mut line_no = from;
    let mut builder = BatchBuilder::new(bindings);
    let flush = |builder: BatchBuilder<'_>, line_no: u64, destination: &mut dyn Destination| {
        let moved = moves.map_or_else(Vec::new, |(bindings, positions)| {
            bindings
                .iter()
                .filter(|b| positions.get(b).copied().unwrap_or(0) < line_no)
                .map(|&b| (b, line_no))
                .collect()
        });
        destination.apply(builder.finish(moved))
    };
    for line in store.read_from(capture, from)? {
        if until.is_some_and(|u| line_no >= u) {
            break;
        }
        let line = line?;
        if line.is_empty() {
            // A line a compaction dropped.
            line_no += 1;
            continue;
        }
        let parsed = Line::parse(&line)
            .map_err(|e| Error::Damaged(format!("capture {capture}'s log line {line_no}: {e}")))?;
        match parsed {
            Line::Document { binding, doc } => {
                for b in route(binding, line_no) {
                    builder.document(b, doc, line_no)?;
                }
            }
            Line::Truncate { binding, truncate } => {
                for b in route(binding, line_no) {
                    // A request's marker says what to do with a standard table; a
                    // rebuild keeps the live table on show (the rebuild follows).
                    match request::marker_action(truncate) {
                        Some(TableAction::Rebuild | TableAction::Keep) => {}
                        Some(TableAction::Drop) => builder.truncate(b, line_no, true),
                        Some(TableAction::Truncate) | None => {
                            builder.truncate(b, line_no, false);
                        }
                    }
                }
            }
            Line::Checkpoint(_) => {}
        }
        line_no += 1;
        if builder.docs >= BATCH_DOCS || builder.bytes >= BATCH_BYTES {
            let full = std::mem::replace(&mut builder, BatchBuilder::new(bindings));
            flush(full, line_no, destination)?;
        }
    }
    if line_no > from {
        flush(builder, line_no, destination)?;
    }
    Ok(line_no)
}

/// What a keyed standard binding holds for one key in the batch being built.
#[derive(Debug, Default)]
struct KeyState {
    /// A delete of the key came first (the document holding its key).
    deleted: Option<Value>,
    /// The image to upsert after it.
    upsert: Option<Image>,
}

#[derive(Debug)]
enum Pending {
    Merge {
        order: Vec<String>,
        keys: HashMap<String, KeyState>,
    },
    Multiset(Vec<MultisetOp>),
    Append(Vec<DeltaRow>),
}

/// Builds a batch from documents in log order (see the module docs for the reduction).
#[derive(Debug)]
pub struct BatchBuilder<'a> {
    bindings: &'a [TableBinding],
    pending: HashMap<usize, Pending>,
    /// Pending bindings in first-touched order.
    touched: Vec<usize>,
    steps: Vec<Step>,
    /// Documents taken so far.
    pub docs: usize,
    /// Their text's bytes.
    pub bytes: usize,
}

impl<'a> BatchBuilder<'a> {
    /// An empty batch for `bindings`.
    pub fn new(bindings: &'a [TableBinding]) -> Self {
        Self {
            bindings,
            pending: HashMap::new(),
            touched: Vec::new(),
            steps: Vec::new(),
            docs: 0,
            bytes: 0,
        }
    }

    fn pending(&mut self, binding: usize) -> &mut Pending {
        let b = &self.bindings[binding];
        if !self.pending.contains_key(&binding) {
            self.touched.push(binding);
        }
        self.pending.entry(binding).or_insert_with(|| {
            if b.delta {
                Pending::Append(Vec::new())
            } else if b.schema.key.is_empty() {
                Pending::Multiset(Vec::new())
            } else {
                Pending::Merge {
                    order: Vec::new(),
                    keys: HashMap::new(),
                }
            }
        })
    }

    /// Adds a document (its JSON text) of `binding`, read at log line `line`.
    pub fn document(&mut self, binding: usize, doc: &str, line: u64) -> Result<()> {
        let b = &self.bindings[binding];
        if b.delta || b.schema.key.is_empty() {
            return self.document_as_values(binding, doc, line);
        }
        let damaged = |e: String| Error::Damaged(format!("log line {line}: {e}"));
        let fields = Fields::parse(doc).map_err(damaged)?;
        self.ensure_known_columns(binding, fields.0.iter().map(|(name, _)| name.as_ref()))?;
        self.bytes += doc.len();
        self.docs += 1;
        let op = fields.op().map_err(damaged)?;
        let key = raw_key(&self.bindings[binding].schema.key, &fields);
        let Pending::Merge { order, keys } = self.pending(binding) else {
            return Ok(());
        };
        let state = keys.entry(key).or_insert_with_key(|key| {
            order.push(key.clone());
            KeyState::default()
        });
        if op == Op::Delete {
            state.deleted = Some(Value::Object(parsed(doc, line)?.0));
            state.upsert = None;
        } else {
            // One document of the key is kept as its text; a second one merges.
            state.upsert = Some(match state.upsert.take() {
                None => Image::Text(Document::new(doc, &fields)),
                Some(image) => {
                    let mut merged = match image {
                        Image::Merged(fields) => fields,
                        text @ Image::Text(_) => text.fields()?,
                    };
                    merged.extend(parsed(doc, line)?.0);
                    Image::Merged(merged)
                }
            });
        }
        Ok(())
    }

    /// A document of a delta or keyless binding, which keeps every document's values:
    /// parsed once, into values.
    fn document_as_values(&mut self, binding: usize, doc: &str, line: u64) -> Result<()> {
        let (fields, meta) = parsed(doc, line)?;
        self.ensure_known_columns(binding, fields.keys().map(String::as_str))?;
        self.bytes += doc.len();
        self.docs += 1;
        match self.pending(binding) {
            Pending::Append(rows) => rows.push(DeltaRow {
                line,
                op: meta["op"].as_str().unwrap_or("c").to_string(),
                position: meta.pointer("/source/pos").cloned(),
                committed_at_ms: meta.pointer("/source/ts_ms").and_then(Value::as_i64),
                doc: Value::Object(fields),
            }),
            Pending::Multiset(ops) => match meta["op"].as_str() {
                Some("d") => ops.push(MultisetOp::Remove(before_or(&meta, fields))),
                Some("u") => {
                    if let Some(before) = meta.get("before").filter(|b| b.is_object()) {
                        ops.push(MultisetOp::Remove(before.clone()));
                    }
                    ops.push(MultisetOp::Insert(Value::Object(fields)));
                }
                _ => ops.push(MultisetOp::Insert(Value::Object(fields))),
            },
            Pending::Merge { .. } => {}
        }
        Ok(())
    }

    /// Refuses a document with a column the binding's table lacks: the source table
    /// gained it, and the materialization reads the schema again and adds it downstream.
    fn ensure_known_columns<'n>(
        &self,
        binding: usize,
        mut names: impl Iterator<Item = &'n str>,
    ) -> Result<()> {
        let b = &self.bindings[binding];
        if b.schema.columns.is_empty() {
            return Ok(());
        }
        match names.find(|n| *n != "_meta" && !b.schema.columns.iter().any(|c| c.name == *n)) {
            Some(new) => Err(Error::Unavailable(format!(
                "collection {} has a column {new:?} its table lacks; reading the schema again",
                b.collection
            ))),
            None => Ok(()),
        }
    }

    /// Adds a truncate of `binding`, read at log line `line` (`recreate`: drop the table
    /// and create it again).
    pub fn truncate(&mut self, binding: usize, line: u64, recreate: bool) {
        if self.bindings[binding].delta {
            if let Pending::Append(rows) = self.pending(binding) {
                rows.push(DeltaRow {
                    line,
                    op: "t".into(),
                    doc: Value::Null,
                    position: None,
                    committed_at_ms: None,
                });
            }
            return;
        }
        if let Some(pending) = self.pending.remove(&binding) {
            self.touched.retain(|&b| b != binding);
            self.steps.push(step(binding, pending));
        }
        self.steps.push(Step::Truncate { binding, recreate });
    }

    /// The batch, moving each binding of `positions` to its position.
    pub fn finish(mut self, positions: Vec<(usize, u64)>) -> Batch {
        for binding in std::mem::take(&mut self.touched) {
            if let Some(pending) = self.pending.remove(&binding) {
                self.steps.push(step(binding, pending));
            }
        }
        Batch {
            steps: self.steps,
            positions,
        }
    }
}

/// A keyless delete's row: its `before` image where the source gives one, else the
/// document's own fields (DESIGN.md §4: the whole deleted row).
fn before_or(meta: &Value, fields: Map<String, Value>) -> Value {
    match meta.get("before") {
        Some(before) if before.is_object() => before.clone(),
        _ => Value::Object(fields),
    }
}

/// The key of a document: its key columns' JSON text, each ended by a byte JSON text
/// cannot hold unescaped, so two keys are equal exactly when their values' texts are (a
/// connector writes a value the same way every time).
fn raw_key(columns: &[String], fields: &Fields<'_>) -> String {
    let mut key = String::new();
    for c in columns {
        key.push_str(fields.get(c).map_or("null", |v| v.get()));
        key.push('\u{1}');
    }
    key
}

/// A document's fields (`_meta` left out) and its `_meta`, parsed into values.
fn parsed(doc: &str, line: u64) -> Result<(Map<String, Value>, Value)> {
    let Value::Object(mut fields) = serde_json::from_str::<Value>(doc)
        .map_err(|e| Error::Damaged(format!("log line {line}: a document is not JSON ({e})")))?
    else {
        return Err(Error::Damaged(format!(
            "log line {line}: a document is not an object"
        )));
    };
    let meta = fields.remove("_meta").unwrap_or(Value::Null);
    Ok((fields, meta))
}

fn step(binding: usize, pending: Pending) -> Step {
    match pending {
        Pending::Append(rows) => Step::Append { binding, rows },
        Pending::Multiset(ops) => Step::Multiset { binding, ops },
        Pending::Merge { order, mut keys } => {
            let mut deletes = Vec::new();
            let mut upserts = Vec::new();
            for key in order {
                let Some(state) = keys.remove(&key) else {
                    continue;
                };
                if let Some(deleted) = state.deleted {
                    deletes.push(deleted);
                }
                if let Some(image) = state.upsert {
                    upserts.push(image);
                }
            }
            Step::Merge {
                binding,
                deletes,
                upserts,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::CollectionSchema;
    use serde_json::json;

    fn binding(key: &[&str], delta: bool) -> TableBinding {
        TableBinding {
            collection: "c".into(),
            table: "t".into(),
            delta,
            skip_unchanged_rereads: false,
            schema: CollectionSchema {
                connector: "source-postgres".into(),
                columns: Vec::new(),
                key: key.iter().map(|k| k.to_string()).collect(),
            },
        }
    }

    fn image(v: &Value) -> Image {
        Image::Merged(v.as_object().cloned().unwrap())
    }

    /// `steps` with every upsert's fields parsed, to compare with expected values.
    fn merged(steps: Vec<Step>) -> Vec<Step> {
        steps
            .into_iter()
            .map(|step| match step {
                Step::Merge {
                    binding,
                    deletes,
                    upserts,
                } => Step::Merge {
                    binding,
                    deletes,
                    upserts: upserts
                        .iter()
                        .map(|u| Image::Merged(u.fields().unwrap()))
                        .collect(),
                },
                other => other,
            })
            .collect()
    }

    #[test]
    fn a_batch_reduces_each_key_by_the_merge_rule() {
        let bindings = [binding(&["id"], false)];
        let mut b = BatchBuilder::new(&bindings);
        let docs = [
            json!({"id": 1, "a": 1, "t": "x", "_meta": {"op": "c"}}),
            json!({"id": 1, "a": 2, "_meta": {"op": "u"}}),
            json!({"id": 2, "a": 5, "t": "y", "_meta": {"op": "c"}}),
            json!({"id": 2, "_meta": {"op": "d"}}),
            json!({"id": 3, "_meta": {"op": "d"}}),
            json!({"id": 3, "a": 7, "t": "z", "_meta": {"op": "c"}}),
            json!({"id": 4, "a": 9, "_meta": {"op": "u"}}),
        ];
        for (i, d) in docs.iter().enumerate() {
            b.document(0, &d.to_string(), i as u64).unwrap();
        }
        let batch = b.finish(vec![(0, 7)]);
        let Step::Merge { upserts, .. } = &batch.steps[0] else {
            panic!("{:?}", batch.steps)
        };
        assert_eq!(
            upserts[2],
            Image::Text(Document::read(&docs[6].to_string()).unwrap()),
            "a key's one document is passed on as written"
        );
        assert_eq!(
            merged(batch.steps),
            [Step::Merge {
                binding: 0,
                // 2 deleted last; 3 deleted, then inserted whole.
                deletes: vec![json!({"id": 2}), json!({"id": 3})],
                // 1's update keeps t from the insert; 4's absent columns keep the stored.
                upserts: vec![
                    image(&json!({"id": 1, "a": 2, "t": "x"})),
                    image(&json!({"id": 3, "a": 7, "t": "z"})),
                    image(&json!({"id": 4, "a": 9}))
                ],
            }]
        );
        assert_eq!(batch.positions, [(0, 7)]);
    }

    #[test]
    fn a_truncate_applies_after_what_came_before_it_and_before_what_follows() {
        let bindings = [binding(&["id"], false), binding(&[], false)];
        let mut b = BatchBuilder::new(&bindings);
        b.document(0, r#"{"id": 1, "_meta": {"op": "c"}}"#, 0)
            .unwrap();
        b.document(1, r#"{"v": 1, "_meta": {"op": "c"}}"#, 1)
            .unwrap();
        b.truncate(0, 2, false);
        b.document(0, r#"{"id": 2, "_meta": {"op": "c"}}"#, 3)
            .unwrap();
        b.document(1, r#"{"v": 1, "_meta": {"op": "d"}}"#, 4)
            .unwrap();
        let steps = merged(b.finish(Vec::new()).steps);
        assert_eq!(
            steps,
            [
                Step::Merge {
                    binding: 0,
                    deletes: vec![],
                    upserts: vec![image(&json!({"id": 1}))]
                },
                Step::Truncate {
                    binding: 0,
                    recreate: false
                },
                Step::Multiset {
                    binding: 1,
                    ops: vec![
                        MultisetOp::Insert(json!({"v": 1})),
                        MultisetOp::Remove(json!({"v": 1}))
                    ]
                },
                Step::Merge {
                    binding: 0,
                    deletes: vec![],
                    upserts: vec![image(&json!({"id": 2}))]
                },
            ]
        );
    }

    #[test]
    fn delta_rows_keep_every_document_with_op_position_and_time() {
        let bindings = [binding(&["id"], true)];
        let mut b = BatchBuilder::new(&bindings);
        b.document(
            0,
            r#"{"id": 1, "_meta": {"op": "c", "source": {"snapshot": true}}}"#,
            5,
        )
        .unwrap();
        b.document(
            0,
            r#"{"id": 1, "_meta": {"op": "u", "source": {"pos": [7, 0], "ts_ms": 1700000000000}}}"#,
            6,
        )
        .unwrap();
        let Step::Append { rows, .. } = &b.finish(Vec::new()).steps[0] else {
            panic!("not an append")
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].line, rows[1].op.as_str(), rows[1].position.clone()),
            (6, "u", Some(json!([7, 0])))
        );
        assert_eq!(rows[1].committed_at_ms, Some(1_700_000_000_000));
        assert_eq!(rows[0].position, None);
    }
}
