//! The output protocol (DESIGN.md §4) and its commit protocol.
//!
//! stdout carries one JSON object per line, of exactly three kinds:
//!
//! ```text
//! {"binding": 0, "doc": { ...columns..., "_meta": {...} }}
//! {"binding": 0, "truncate": { "source": {...} }}
//! {"checkpoint": { ...the complete state... }}
//! ```
//!
//! A *unit* is the documents between two checkpoints. Committing a unit is, in this order:
//!
//! ```text
//!   1. flush the unit's documents to stdout
//!   2. replace the state file atomically (temp file, fsync, rename, fsync dir)
//!   3. print the checkpoint line, flush
//!   4. (merger) acknowledge the position to the source
//! ```
//!
//! A crash before 2 leaves the old state, so the next run prints the old checkpoint first
//! and the consumer discards the trailing documents; a crash between 2 and 3 leaves the new
//! state, so the next run's first line is a checkpoint the consumer has not seen and it
//! keeps them. Either way nothing is lost or repeated. Step 4 after 2 means the source never
//! discards log the state still needs.
//!
//! ## The next unit is built while the state is made durable
//!
//! Step 2's two fsyncs take from under a millisecond to tens of milliseconds each, the
//! slow ones while the database's own writes are being flushed, and a backfill commits
//! once per chunk and a stream up to twice a second. So step 2 runs beside the work that
//! follows ([`Sink::persist_state`] starts it,
//! [`Sink::persisted`] says when it is done), and the lines of the next unit are *held*
//! in memory meanwhile:
//!
//! ```text
//!   stdout:  ...unit k docs | (state k durable) checkpoint k | unit k+1 docs held so far | ...
//!                           ^ checkpoint(k) flushes,          ^ released when step 2 is done
//!                             starts step 2
//! ```
//!
//! Nothing reaches stdout between steps 1 and 3 of a unit, so stdout reads exactly as if
//! each unit were committed synchronously, and the crash argument above is unchanged: held
//! lines are in no one's view, and a crash drops them with the rest of the unit they
//! begin. At most one state replacement is in flight (the next checkpoint waits for the
//! last), held lines are bounded by [`HOLD_BYTES`] (past it, the writer waits), and a
//! stream with nothing to read waits for the replacement before it waits for the database,
//! so an idle capture's documents are not held back.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::ser::Serialize;
use serde_json::{Map, Value};

use crate::json::{write_json_str, write_u64};
use crate::row::Row;
use crate::state::write_atomically;

/// Where committed output goes. The production sink is stdout plus a state file; tests
/// use one that records lines and can fail at any operation to simulate a crash.
pub trait Sink {
    /// Appends one line (without its newline).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Makes every written line visible to the reader.
    fn flush(&mut self) -> io::Result<()>;
    /// Starts replacing the state durably. The caller starts no other replacement
    /// before [`persisted`](Self::persisted) has said this one is done.
    fn persist_state(&mut self, state: Vec<u8>) -> io::Result<()>;
    /// Whether the replacement started last is durable: `Ok(false)` while it is in flight;
    /// with `wait`, returns once it is. An error is the replacement's: the state on disk is
    /// then the old one or the new one, as after a crash.
    fn persisted(&mut self, wait: bool) -> io::Result<bool>;
}

/// Lines held while a state replacement is in flight, at most (see the module docs): about
/// a 10,000-row chunk's documents. A single line longer than this is not held: the
/// replacement is waited for and the line written.
pub const HOLD_BYTES: usize = 4 << 20;

/// stdout (buffered) and an atomically replaced state file, replaced on a thread of its
/// own so the fsyncs do not stop the capture (see the module docs). The thread lives as
/// long as the sink: one per checkpoint left each one's allocator pages behind (peak RSS
/// of a 1M-row backfill rose by a half).
#[derive(Debug)]
pub struct StdoutSink {
    out: BufWriter<io::Stdout>,
    state_path: PathBuf,
    /// Whether each replacement of the state file is forced to disk.
    sync: bool,
    writer: Option<StateWriter>,
    /// A replacement was sent and its result not yet received.
    in_flight: bool,
}

#[derive(Debug)]
struct StateWriter {
    states: std::sync::mpsc::Sender<Vec<u8>>,
    done: std::sync::mpsc::Receiver<io::Result<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl StateWriter {
    fn start(path: PathBuf, sync: bool) -> io::Result<Self> {
        let (states, inbox) = std::sync::mpsc::channel::<Vec<u8>>();
        let (report, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state".into())
            .spawn(move || {
                for state in inbox {
                    let written = if sync {
                        write_atomically(&path, &state)
                    } else {
                        crate::state::replace_unsynced(&path, &state)
                    };
                    if report.send(written).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            states,
            done,
            thread,
        })
    }
}

impl StdoutSink {
    /// Writes lines to stdout and the state to `state_path`.
    pub fn new(state_path: PathBuf) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
            state_path,
            sync: true,
            writer: None,
            in_flight: false,
        }
    }

    /// The same, with the state file replaced atomically but not forced to disk: for a
    /// consumer that makes each unit and its state durable itself and writes the state
    /// file from its own copy before every start (`capture --acks stdin`; PIPELINE.md §3).
    /// A checkpoint still follows its state file's replace, so the commit protocol is the
    /// same for a reader of the file; only a machine crash can take the file back, and
    /// the consumer never reads it.
    pub fn unsynced(state_path: PathBuf) -> Self {
        let mut sink = Self::new(state_path);
        sink.sync = false;
        sink
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the state file's writer stopped")
}

impl Sink for StdoutSink {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn persist_state(&mut self, state: Vec<u8>) -> io::Result<()> {
        debug_assert!(!self.in_flight, "one replacement at a time");
        if self.writer.is_none() {
            self.writer = Some(StateWriter::start(self.state_path.clone(), self.sync)?);
        }
        let writer = self.writer.as_ref().ok_or_else(writer_gone)?;
        writer.states.send(state).map_err(|_| writer_gone())?;
        self.in_flight = true;
        Ok(())
    }

    fn persisted(&mut self, wait: bool) -> io::Result<bool> {
        if !self.in_flight {
            return Ok(true);
        }
        let writer = self.writer.as_ref().ok_or_else(writer_gone)?;
        let result = if wait {
            writer.done.recv().map_err(|_| writer_gone())?
        } else {
            match writer.done.try_recv() {
                Ok(r) => r,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(writer_gone()),
            }
        };
        self.in_flight = false;
        result.map(|()| true)
    }
}

impl Drop for StdoutSink {
    /// A capture that fails with a replacement in flight is retried from the state file:
    /// the replacement finishes first, so the retry reads one state or the other, whole.
    fn drop(&mut self) {
        let _ = self.persisted(true);
        if let Some(w) = self.writer.take() {
            drop(w.states);
            let _ = w.thread.join();
        }
    }
}

/// Writes protocol lines to a [`Sink`].
#[derive(Debug)]
pub struct Output<K> {
    sink: K,
    line: Vec<u8>,
    docs_in_unit: usize,
    /// Lines written since the sink was last flushed.
    unflushed: bool,
    /// The checkpoint line whose state is being made durable (module docs).
    pending: Option<Vec<u8>>,
    /// Lines written while `pending`, one after another, and where each ends.
    held: Vec<u8>,
    held_ends: Vec<usize>,
}

#[derive(serde::Serialize)]
struct TruncateLine<'a> {
    binding: usize,
    truncate: TruncateBody<'a>,
}

#[derive(serde::Serialize)]
struct TruncateBody<'a> {
    source: &'a Map<String, Value>,
}

/// A table's `"schema":...,"table":...` in `_meta.source`, written once per binding
/// rather than escaped again for every document.
#[derive(Clone, Debug)]
pub struct SourceTable {
    /// The schema (namespace).
    pub schema: String,
    /// The table (stream).
    pub table: String,
    json: Vec<u8>,
}

impl SourceTable {
    /// The entries for `schema` and `table`.
    pub fn new(schema: &str, table: &str) -> Self {
        let mut json = b"\"schema\":".to_vec();
        write_json_str(&mut json, schema);
        json.extend_from_slice(b",\"table\":");
        write_json_str(&mut json, table);
        Self {
            schema: schema.to_string(),
            table: table.to_string(),
            json,
        }
    }
}

/// A document as DESIGN.md §4 shapes it, written straight from its parts: the row's
/// columns as the text the source rendered ([`Row::body`]), then `_meta` with `op`,
/// `source` (`schema`, `table`, `snapshot` or the source's own fields and `pos`) and
/// `before`. The same bytes as building the document as a map and serializing that (a
/// column called `_meta` is replaced in place, as a map insert would), without a map per
/// document or a value per column.
#[derive(Debug, Clone, Copy)]
pub struct Doc<'a> {
    /// The row's columns.
    pub row: &'a Row,
    /// `c`, `u` or `d`.
    pub op: &'static str,
    /// `_meta.source.schema` and `.table`.
    pub source: &'a SourceTable,
    /// A backfilled row (`snapshot: true`, no fields, no `pos`).
    pub snapshot: bool,
    /// The source's own fields (`lsn`, `txid`, ...): never `schema`, `table`, `snapshot`
    /// or `pos`.
    pub fields: Option<&'a Row>,
    /// `_meta.source.pos` of a change.
    pub pos: Option<&'a [u64]>,
    /// `_meta.before`.
    pub before: Option<&'a Row>,
}

impl Doc<'_> {
    /// Appends the document's JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        out.push(b'{');
        if self.row.contains_key("_meta") {
            // Rare: a column called `_meta` is replaced by the metadata, in its place.
            for (i, (name, value)) in self.row.raw_entries().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if name == b"\"_meta\"" {
                    out.extend_from_slice(b"\"_meta\":");
                    self.write_meta(out)?;
                } else {
                    out.extend_from_slice(name);
                    out.push(b':');
                    out.extend_from_slice(value);
                }
            }
        } else {
            out.extend_from_slice(self.row.body());
            if !self.row.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"_meta\":");
            self.write_meta(out)?;
        }
        out.push(b'}');
        Ok(())
    }

    fn write_meta(&self, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(b"{\"op\":");
        write_json_str(out, self.op);
        out.extend_from_slice(b",\"source\":{");
        out.extend_from_slice(&self.source.json);
        if self.snapshot {
            out.extend_from_slice(b",\"snapshot\":true");
        }
        if let Some(fields) = self.fields.filter(|f| !f.is_empty()) {
            debug_assert!(
                ["schema", "table", "snapshot", "pos"]
                    .iter()
                    .all(|n| !fields.contains_key(n))
            );
            out.push(b',');
            out.extend_from_slice(fields.body());
        }
        if let Some(pos) = self.pos {
            out.extend_from_slice(b",\"pos\":[");
            for (i, p) in pos.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_u64(out, *p);
            }
            out.push(b']');
        }
        out.push(b'}');
        if let Some(before) = self.before {
            out.extend_from_slice(b",\"before\":");
            before.write_json(out);
        }
        out.push(b'}');
        Ok(())
    }
}

impl<K: Sink> Output<K> {
    /// Wraps a sink.
    pub fn new(sink: K) -> Self {
        Self {
            sink,
            line: Vec::with_capacity(1024),
            docs_in_unit: 0,
            unflushed: false,
            pending: None,
            held: Vec::new(),
            held_ends: Vec::new(),
        }
    }

    /// The sink, for tests that inspect it.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Documents and truncates written since the last checkpoint.
    pub fn docs_in_unit(&self) -> usize {
        self.docs_in_unit
    }

    /// Writes a document line.
    pub fn doc(&mut self, binding: usize, doc: &Doc<'_>) -> io::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(b"{\"binding\":");
        write_u64(&mut self.line, binding as u64);
        self.line.extend_from_slice(b",\"doc\":");
        doc.write_json(&mut self.line)?;
        self.line.push(b'}');
        self.emit()
    }

    /// Writes a truncate line.
    pub fn truncate(&mut self, binding: usize, source: &Map<String, Value>) -> io::Result<()> {
        self.write(&TruncateLine {
            binding,
            truncate: TruncateBody { source },
        })
    }

    fn write(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)?;
        self.emit()
    }

    fn emit(&mut self) -> io::Result<()> {
        self.docs_in_unit += 1;
        let full = self.held.len() + self.line.len() > HOLD_BYTES;
        if self.pending.is_some() && !self.settle(full)? {
            if self.held.capacity() == 0 {
                // Once, and never grown: a doubling past the bound would keep twice it.
                self.held.reserve_exact(HOLD_BYTES);
            }
            self.held.extend_from_slice(&self.line);
            self.held_ends.push(self.held.len());
            return Ok(());
        }
        self.unflushed = true;
        self.sink.write_line(&self.line)
    }

    /// When the state replacement in flight is durable (or, with `wait`, once it is):
    /// prints its checkpoint line, then the lines held since, and returns true. True
    /// also when nothing is in flight.
    fn settle(&mut self, wait: bool) -> io::Result<bool> {
        let Some(line) = self.pending.take() else {
            return Ok(true);
        };
        if !self.sink.persisted(wait)? {
            self.pending = Some(line);
            return Ok(false);
        }
        self.sink.write_line(&line)?;
        let mut start = 0;
        for &end in &self.held_ends {
            self.sink.write_line(&self.held[start..end])?;
            start = end;
        }
        self.held.clear();
        self.held_ends.clear();
        self.unflushed = true;
        self.flush()?;
        Ok(true)
    }

    /// Waits until the checkpoint in flight, if any, is committed.
    pub fn settle_all(&mut self) -> io::Result<()> {
        self.settle(true).map(|_| ())
    }

    /// Whether a checkpoint's state is being made durable (lines written now are held).
    /// The merger acknowledges a position to the source only once its checkpoint is no
    /// longer settling.
    pub fn settling(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes the documents written so far visible to the reader, without committing them
    /// (no checkpoint follows): the merger calls it whenever the stream has nothing ready,
    /// so a document waits in the buffer only while more work is at hand. Lines held for a
    /// state replacement in flight are released if it is done ([`settling`](Self::settling)
    /// says whether some are still held). A crash after it leaves trailing documents, which
    /// the consumer discards as after any crash.
    pub fn flush(&mut self) -> io::Result<()> {
        self.settle(false)?;
        if self.unflushed {
            self.unflushed = false;
            self.sink.flush()?;
        }
        Ok(())
    }

    /// Commits the unit: flush documents, start persisting `state`, and print the
    /// checkpoint line once it is durable, holding the next unit's lines until then (module
    /// docs). The checkpoint before it is committed first.
    pub fn checkpoint(&mut self, state: &[u8]) -> io::Result<()> {
        self.settle(true)?;
        self.sink.flush()?;
        self.unflushed = false;
        self.sink.persist_state(state.to_vec())?;
        self.pending = Some(checkpoint_line(state));
        self.docs_in_unit = 0;
        Ok(())
    }

    /// Prints a checkpoint line without persisting it: the resume checkpoint at start, which
    /// is already the state file's content (or the initial state).
    pub fn print_checkpoint(&mut self, state: &[u8]) -> io::Result<()> {
        debug_assert!(self.pending.is_none());
        self.sink.write_line(&checkpoint_line(state))?;
        self.docs_in_unit = 0;
        self.unflushed = false;
        self.sink.flush()
    }
}

fn checkpoint_line(state: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(state.len() + 16);
    line.extend_from_slice(b"{\"checkpoint\":");
    line.extend_from_slice(state);
    line.push(b'}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The document as a map, the way it was built before [`Doc`]: the reference.
    fn as_map(d: &Doc<'_>) -> Map<String, Value> {
        let mut source = obj(json!({"schema": d.source.schema, "table": d.source.table}));
        if d.snapshot {
            source.insert("snapshot".into(), Value::Bool(true));
        }
        source.extend(d.fields.map(Row::to_map).unwrap_or_default());
        if let Some(pos) = d.pos {
            source.insert("pos".into(), json!(pos));
        }
        let mut meta = obj(json!({"op": d.op}));
        meta.insert("source".into(), Value::Object(source));
        if let Some(b) = d.before {
            meta.insert("before".into(), Value::Object(b.to_map()));
        }
        let mut doc = d.row.to_map();
        doc.insert("_meta".into(), Value::Object(meta));
        doc
    }

    #[test]
    fn the_state_file_is_replaced_on_its_own_thread_and_waited_for_on_drop() {
        let dir = std::env::temp_dir().join(format!("output-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("state.json");
        let mut sink = StdoutSink::new(path.clone());
        assert!(
            sink.persisted(false).is_ok_and(|done| done),
            "nothing in flight"
        );
        assert!(sink.persist_state(b"{\"v\":1}".to_vec()).is_ok());
        assert!(sink.persisted(true).is_ok_and(|done| done));
        assert_eq!(std::fs::read(&path).ok(), Some(b"{\"v\":1}".to_vec()));
        // Dropped with a replacement in flight: the drop waits for it, so a retry that
        // reads the file next reads it whole.
        assert!(sink.persist_state(b"{\"v\":2}".to_vec()).is_ok());
        drop(sink);
        assert_eq!(std::fs::read(&path).ok(), Some(b"{\"v\":2}".to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn documents_serialize_as_the_map_they_describe() {
        let row = Row::from(obj(json!({"id": 1, "b": "x\"y", "n": null, "d": 1.50})));
        let odd = Row::from(obj(
            json!({"id": 2, "_meta": "a column called _meta", "z": [1]}),
        ));
        let empty = Row::new();
        let before = Row::from(obj(json!({"id": 1, "b": "old"})));
        let fields = Row::from(obj(json!({"lsn": "0/16B3748", "txid": 7, "ts_ms": 1})));
        let pos = [1u64, 2, 3];
        for row in [&row, &odd, &empty] {
            for (snapshot, fields, pos, before, op) in [
                (true, None, None, None, "c"),
                (false, Some(&fields), Some(&pos[..]), None, "c"),
                (false, Some(&fields), Some(&pos[..]), Some(&before), "u"),
            ] {
                let d = Doc {
                    row,
                    op,
                    source: &SourceTable::new("public", "t\"q"),
                    snapshot,
                    fields,
                    pos,
                    before,
                };
                let mut ours = Vec::new();
                assert!(d.write_json(&mut ours).is_ok());
                let ours = String::from_utf8(ours).unwrap_or_default();
                let reference = serde_json::to_string(&as_map(&d)).unwrap_or_default();
                assert_eq!(ours, reference);
                assert!(ours.contains("\"_meta\":{\"op\""), "{ours}");
            }
        }
    }
}
