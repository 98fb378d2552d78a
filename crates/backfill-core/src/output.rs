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

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::ser::Serialize;
use serde_json::{Map, Value};

use crate::row::{Row, write_json_str, write_u64};
use crate::state::write_atomically;

/// Where committed output goes. The production sink is stdout plus a state file; tests
/// use one that records lines and can fail at any operation to simulate a crash.
pub trait Sink {
    /// Appends one line (without its newline).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Makes every written line visible to the reader.
    fn flush(&mut self) -> io::Result<()>;
    /// Durably replaces the state.
    fn persist_state(&mut self, state: &[u8]) -> io::Result<()>;
}

/// stdout (buffered) and an atomically replaced state file.
#[derive(Debug)]
pub struct StdoutSink {
    out: BufWriter<io::Stdout>,
    state_path: PathBuf,
}

impl StdoutSink {
    /// Writes lines to stdout and the state to `state_path`.
    pub fn new(state_path: PathBuf) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
            state_path,
        }
    }
}

impl Sink for StdoutSink {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn persist_state(&mut self, state: &[u8]) -> io::Result<()> {
        write_atomically(&self.state_path, state)
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
    /// `_meta.source.schema`.
    pub schema: &'a str,
    /// `_meta.source.table`.
    pub table: &'a str,
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
        out.extend_from_slice(b",\"source\":{\"schema\":");
        write_json_str(out, self.schema);
        out.extend_from_slice(b",\"table\":");
        write_json_str(out, self.table);
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
        self.unflushed = true;
        self.sink.write_line(&self.line)
    }

    /// Makes the documents written so far visible to the reader, without committing them
    /// (no checkpoint follows): the merger calls it whenever the stream has nothing ready,
    /// so a document waits in the buffer only while more work is at hand. A crash after
    /// it leaves trailing documents, which the consumer discards as after any crash.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.unflushed {
            self.unflushed = false;
            self.sink.flush()?;
        }
        Ok(())
    }

    /// Commits the unit: flush documents, persist `state`, print the checkpoint line.
    pub fn checkpoint(&mut self, state: &[u8]) -> io::Result<()> {
        self.sink.flush()?;
        self.sink.persist_state(state)?;
        self.print_checkpoint(state)
    }

    /// Prints a checkpoint line without persisting it: the resume checkpoint at start, which
    /// is already the state file's content (or the initial state).
    pub fn print_checkpoint(&mut self, state: &[u8]) -> io::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(b"{\"checkpoint\":");
        self.line.extend_from_slice(state);
        self.line.push(b'}');
        self.sink.write_line(&self.line)?;
        self.docs_in_unit = 0;
        self.unflushed = false;
        self.sink.flush()
    }
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
        let mut source = obj(json!({"schema": d.schema, "table": d.table}));
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
                    schema: "public",
                    table: "t",
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
