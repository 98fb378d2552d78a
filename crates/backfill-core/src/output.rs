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

use serde::Serialize;
use serde_json::{Map, Value};

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
}

#[derive(Serialize)]
struct DocLine<'a> {
    binding: usize,
    doc: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct TruncateLine<'a> {
    binding: usize,
    truncate: TruncateBody<'a>,
}

#[derive(Serialize)]
struct TruncateBody<'a> {
    source: &'a Map<String, Value>,
}

impl<K: Sink> Output<K> {
    /// Wraps a sink.
    pub fn new(sink: K) -> Self {
        Self {
            sink,
            line: Vec::with_capacity(1024),
            docs_in_unit: 0,
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
    pub fn doc(&mut self, binding: usize, doc: &Map<String, Value>) -> io::Result<()> {
        self.write(&DocLine { binding, doc })
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
        self.docs_in_unit += 1;
        self.sink.write_line(&self.line)
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
        self.sink.flush()
    }
}
