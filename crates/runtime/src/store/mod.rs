//! Collections and their store (PIPELINE.md §3).
//!
//! A capture's units land in one ordered log per capture, each line exactly as the
//! connector printed it (`{"binding": N, "doc": ...}` or a truncate); the collection of
//! binding N is that log read for binding N. Beside the log the store keeps one **commit
//! record** per capture: the connector state that follows the last committed unit, the
//! log's committed length, and the runtime's progress figures.
//!
//! ## Guarantees every store gives
//!
//! * **Atomic units.** [`CaptureLog::append`] adds lines that no reader sees;
//!   [`CaptureLog::commit`] makes them and the state that follows them visible together,
//!   durably, or not at all (a crash before it returns leaves the previous commit);
//!   [`CaptureLog::discard`] drops them.
//! * **Read-committed.** Readers see committed lines only, in the order they were
//!   appended, whatever the writer is doing.
//! * **One writer per capture**: opening a second writer of a capture fails.
//! * **Bounded memory.** Lines are written through as they come; a unit is never held
//!   whole.
//!
//! ## The embedded store
//!
//! A directory: `captures/<name>/log.jsonl` and the commit record in two slot files,
//! `captures/<name>/commit.0` and `commit.1`. Appends go to the log (buffered); a commit
//! flushes the log, `fsync`s it, then writes the record into the slot that does not hold
//! the last one, in place, with a checksum, and `fdatasync`s it (`embedded/slots.rs`: no
//! file is created or renamed per commit, which under other writeback cost tens of
//! milliseconds a unit). Readers take the newest valid slot, then read the log up to its
//! length: bytes past it are uncommitted (the writer's current unit, or a crash's
//! leftovers, which the next writer truncates away). A crash before the slot is durable
//! leaves it torn or old, so the previous record stands and the new lines are past the
//! committed length: never seen, then truncated. The writer holds an exclusive lock on
//! `captures/<name>/lock` for its life.
//!
//! ## Compaction
//!
//! A store may compact a capture's log ([`CaptureLog::compact`], the plan and its argument
//! in [`crate::compaction`]): lines keep their numbers, and a dropped line reads as an
//! empty line. The embedded store writes the compacted log as a new file (runs of dropped
//! lines as one `#N` line), fsyncs it, then replaces the commit record naming it
//! (`log.<generation>.jsonl`) with the compaction's figures, and removes the old file; a
//! crash before the record's replace leaves the old log in force, and the next writer
//! removes the unnamed file. Readers holding the old file read on in it (its committed
//! lines are the same documents, less compacted). JetStream publishes the compacted log as
//! a *base* (new messages and a commit record naming them as lines 0 to the last commit's),
//! then purges what it replaces (the argument is on `JetStreamLog::compact`).
//!
//! Backfill requests ([`crate::request`]) are kept beside the logs: the embedded store
//! keeps one file per request in `requests/`, replaced atomically; JetStream one subject
//! per request in the stream `<prefix>_requests`, keeping the last message of each.

mod embedded;
mod jetstream;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use embedded::EmbeddedStore;
pub use jetstream::{JetStreamLocation, JetStreamStore};

use crate::error::Result;
use crate::request::Request;

/// What one commit records besides the log's length.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The connector state that follows the committed units (its last checkpoint).
    pub state: Value,
    /// Units committed so far.
    pub units: u64,
    /// Lines (documents and truncates) committed so far.
    pub documents: u64,
    /// When it was committed, in milliseconds since the epoch.
    pub committed_at_ms: u64,
    /// The runtime's progress figures for `cdc status` (see [`crate::status`]).
    #[serde(default)]
    pub progress: Value,
}

/// Where compaction of a capture's log stands (all zero: never compacted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// Lines before this were planned by a pass: the next pass starts here.
    pub through: u64,
    /// One past the last expired tombstone dropped: a reader positioned after line 0 and
    /// before this may have missed a delete ([`crate::compaction`]).
    pub horizon: u64,
    /// The committed log's bytes after the last pass.
    pub bytes: u64,
    /// Passes so far.
    pub passes: u64,
}

/// A store of captures' logs.
pub trait Store: Send + Sync {
    /// Opens `capture`'s log for its one writer, dropping any uncommitted tail.
    fn writer(&self, capture: &str) -> Result<Box<dyn CaptureLog>>;
    /// The last commit of `capture`, if it ever committed.
    fn committed(&self, capture: &str) -> Result<Option<Commit>>;
    /// The committed lines of `capture`'s log, in order, as of the call; a line a
    /// compaction dropped reads as an empty line, so line numbers never change.
    fn read(&self, capture: &str) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>>;
    /// Where compaction of `capture`'s log stands.
    fn compaction(&self, _capture: &str) -> Result<Compaction> {
        Ok(Compaction::default())
    }
    /// Every backfill request ever written, done ones included, ordered by id.
    fn requests(&self) -> Result<Vec<Request>>;
    /// Writes `request` durably, replacing the one with its id.
    fn put_request(&self, request: &Request) -> Result<()>;
    /// The committed lines of `capture`'s log from line `from` (0-based) on, as of the
    /// call: what a materialization reads on from its position. A store may remember where
    /// the last reader stopped so that reading on costs what is new, not the whole log;
    /// by default the log is read from its start and the first `from` lines skipped.
    fn read_from(
        &self,
        capture: &str,
        from: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        let skip = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(Box::new(self.read(capture)?.skip(skip)))
    }
}

/// A signal from the captures that a unit was committed, for the materializations of the
/// same process to read on at once instead of at their next poll.
#[derive(Debug, Default)]
pub struct Committed {
    count: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Committed {
    /// Says a unit was committed.
    pub fn notify(&self) {
        let mut count = self
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *count += 1;
        self.changed.notify_all();
    }

    /// Commits said so far.
    pub fn count(&self) -> u64 {
        *self
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until more than `seen` commits were said, or `timeout` passes.
    pub fn wait_past(&self, seen: u64, timeout: std::time::Duration) {
        let count = self
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .changed
            .wait_timeout_while(count, timeout, |c| *c <= seen);
    }
}

/// What one compaction pass keeps of a log: the compaction module's plan, asked about
/// every line while a store rewrites it.
pub trait Compactor {
    /// Whether the pass keeps line `at`, whose text is `line`.
    fn keep(&mut self, at: u64, line: &str) -> Result<bool>;
    /// Lines before this were planned: where the next pass starts.
    fn through(&self) -> u64;
    /// One past the last expired tombstone the pass dropped (0: none).
    fn horizon(&self) -> u64;
}

/// A run of `n` lines a compaction dropped, as a log holds it: one line `#n` (a connector's
/// lines are JSON objects, so none starts with `#`).
fn gap_line(n: u64) -> String {
    format!("#{n}\n")
}

/// The number of dropped lines a log line stands for, if it is a run of them.
fn gap_length(line: &str) -> Result<Option<u64>> {
    let Some(run) = line.strip_prefix('#') else {
        return Ok(None);
    };
    match run.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(crate::Error::Damaged(format!(
            "{line:.40} is no run of dropped lines"
        ))),
    }
}

/// Called once a unit started with [`CaptureLog::start_commit`] is durable.
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// The writer of one capture's log. See the module docs for what each call guarantees.
pub trait CaptureLog: Send {
    /// Adds a line of the current unit; not visible until committed.
    fn append(&mut self, line: &str) -> Result<()>;
    /// Makes the current unit and `commit` durable and visible together.
    fn commit(&mut self, commit: &Commit) -> Result<()>;
    /// Starts committing the current unit with `commit` and returns; `durable` is called
    /// once it is durable and visible (from another thread, perhaps). Lines appended
    /// meanwhile belong to the next unit. At most one commit is in flight: the next
    /// `start_commit`, `discard` or `finish` waits for it, and an error of it is returned
    /// there (`durable` is then never called). By default, [`commit`](Self::commit).
    fn start_commit(&mut self, commit: &Commit, durable: OnDurable) -> Result<()> {
        self.commit(commit)?;
        durable();
        Ok(())
    }
    /// Waits for the commit in flight, if any.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Drops the current unit (never the one in flight).
    fn discard(&mut self) -> Result<()>;
    /// The committed log's bytes, if this store compacts (`None`: it keeps every line).
    fn compactable_bytes(&self) -> Option<u64> {
        None
    }
    /// Rewrites the committed log by `plan`, keeping every line's number, once the commit
    /// in flight is durable; the uncommitted unit is kept as it is. Returns where
    /// compaction stands after it, or `None` when this store does not compact.
    fn compact(&mut self, _plan: &mut dyn Compactor) -> Result<Option<Compaction>> {
        Ok(None)
    }
}
