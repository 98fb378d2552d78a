//! The seam between the core and a database: what a source crate implements.
//!
//! A source is four capabilities, each a trait whose doc states what the core relies on:
//!
//! * [`ChunkScanner`]: key-ordered chunks inside one snapshot, with a fence position and a
//!   witness of what the snapshot sees;
//! * [`KeyClassifier`]: where keys fall against the backfill window, natively or by asking
//!   the database;
//! * [`ChangeStream`]: committed changes in commit order, with transaction boundaries,
//!   progress positions, and acknowledgement of durable positions;
//! * [`Source`]: ties them together and opens the stream.
//!
//! [`Discovery`] is used by `discover`, `check` and by `capture` at start to resolve modes.
//!
//! The traits use native `async fn`: the merger drives one source from one task, so no
//! `Send` bound and no boxing is needed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::SourceError;
use crate::key::{Key, Region, Window};
use crate::mode::{ResolvedMode, TableFacts};

pub use crate::row::Row;

/// A position in the source's change log.
///
/// Ordering is the log's order: `a < b` means everything at `a` was written to the log
/// before anything at `b`. Serialised into the state file's `position` in the database's own
/// terms (for example `{"lsn": "0/16B3748"}`).
pub trait Position: Clone + Ord + Debug + Serialize + DeserializeOwned + 'static {
    /// Bytes of log between `self` and a later position, where the source can tell; used for
    /// the stream-lag metric only.
    fn bytes_until(&self, _later: &Self) -> Option<u64> {
        None
    }
}

/// A table, by the names the config uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// Schema or database.
    pub namespace: String,
    /// Table.
    pub stream: String,
}

impl TableRef {
    /// The table `stream` in `namespace`.
    pub fn new(namespace: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            stream: stream.into(),
        }
    }
}

/// `namespace.stream`, unquoted: how messages name a table. Statements quote each part
/// with their dialect's quoting (each source crate's `sql` room).
impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.namespace, self.stream)
    }
}

/// What the core tells a source about one binding.
#[derive(Clone, Debug)]
pub struct BindingSpec {
    /// Index in the config's bindings; documents carry it.
    pub index: usize,
    /// The table.
    pub table: TableRef,
    /// The mode the capture runs for it.
    pub mode: ResolvedMode,
    /// Key columns in key order; empty for a keyless table.
    pub key: Vec<String>,
    /// Connections that read one chunk at once, each a key range of it; 1 where the source
    /// reads a chunk on one connection only ([`ChunkScanner::reads_in_parts`]).
    pub ranges: usize,
}

/// A bound table as a change stream delivers it: the binding's index and its key columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Index in the config's bindings.
    pub index: usize,
    /// Key columns in key order; empty for a keyless table.
    pub key: Vec<String>,
}

/// A stream's bindings by table name, looked up without allocating (once per change or
/// per table-map event).
#[derive(Clone, Debug, Default)]
pub struct BoundTables(HashMap<String, HashMap<String, Bound>>);

impl BoundTables {
    /// The tables of `bindings`.
    pub fn new(bindings: &[BindingSpec]) -> Self {
        let mut by_name: HashMap<String, HashMap<String, Bound>> = HashMap::new();
        for b in bindings {
            by_name
                .entry(b.table.namespace.clone())
                .or_default()
                .insert(
                    b.table.stream.clone(),
                    Bound {
                        index: b.index,
                        key: b.key.clone(),
                    },
                );
        }
        Self(by_name)
    }

    /// The binding of `namespace.table`, if it is bound.
    pub fn get(&self, namespace: &str, table: &str) -> Option<&Bound> {
        self.0.get(namespace)?.get(table)
    }

    /// Every bound table, in name order.
    pub fn tables(&self) -> Vec<TableRef> {
        let mut out: Vec<TableRef> = self
            .0
            .iter()
            .flat_map(|(ns, tables)| tables.keys().map(move |t| TableRef::new(ns, t)))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.stream).cmp(&(&b.namespace, &b.stream)));
        out
    }
}

impl BindingSpec {
    /// Whether the table is read in physical order (Without Primary Key, or no key at all):
    /// its `Key` is then a physical locator, not key columns.
    pub fn scans_physically(&self) -> bool {
        self.mode == ResolvedMode::WithoutPrimaryKey || self.key.is_empty()
    }
}

/// One column of a discovered table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Type as the database spells it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The column's number where the database gives each column one that is never reused
    /// and grows with each column added (PostgreSQL's `attnum`); `None` where it does not
    /// (MySQL and MariaDB, whose stream sees each `ALTER TABLE` instead). A binding's state
    /// keeps the highest one its backfill read ([`crate::state::BindingState::column_mark`]).
    #[serde(skip)]
    pub ordinal: Option<u64>,
    /// Whether rows written before the column was added hold a value in it that no change
    /// in the log carries: a column added with a default, an identity, or `NOT NULL` where
    /// the database fills an implicit default. Such a column, added after a binding's
    /// backfill read the table, leaves every row not written since stale downstream, so
    /// the binding is read again (DESIGN.md §8: a change the stream cannot follow
    /// re-backfills the binding).
    #[serde(skip)]
    pub fills_existing_rows: bool,
}

/// A capturable table, as discovery reports it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// The table.
    pub table: TableRef,
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// The usable key and how each key column can be ordered (drives Automatic).
    pub facts: TableFacts,
    /// Things the user should know (for example TOAST columns with default replica
    /// identity); `check` and `discover` print them.
    pub warnings: Vec<String>,
}

/// Lists the tables a source can capture.
pub trait Discovery {
    /// Every capturable table, the connector's own helper tables excluded.
    async fn discover(&mut self) -> Result<Vec<TableInfo>, SourceError>;
}

/// Bounds on one chunk. A scan returns at most `rows` rows and stops after the row that
/// takes it past `bytes` (so a single huge row still makes progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Rows per chunk.
    pub rows: usize,
    /// Approximate memory per chunk: each row's [`buffered_bytes`].
    pub bytes: usize,
}

/// What a row and its key cost while a chunk holds them: the row's text and spans
/// ([`Row::heap_bytes`]) and each key value (a `serde_json::Value` with its own
/// allocation). A chunk is bounded by this as well as by rows, since rows of one table
/// can differ in size by orders of magnitude.
pub fn buffered_bytes(row: &Row, key: &Key) -> usize {
    row.heap_bytes() + 48 * key.0.len() + 64
}

/// What a chunk's snapshot is known to see, so the core can check the fence-ordering
/// invariant (DESIGN.md §7): every transaction the stream has delivered must be visible in
/// the next chunk's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotWitness<P> {
    /// The snapshot sees exactly the transactions committed at or before this log position
    /// (for example MariaDB's `binlog_snapshot_position`).
    SeesThrough(P),
    /// An MVCC snapshot: transaction ids at or above `xmax`, and those in `in_progress`, are
    /// invisible; every other committed transaction is visible. The stream reports each
    /// delivered transaction's id in [`StreamEvent::Commit`].
    Mvcc {
        /// First id not yet completed when the snapshot was taken.
        xmax: u64,
        /// Ids below `xmax` still running when the snapshot was taken.
        in_progress: Vec<u64>,
    },
    /// The source established the invariant itself (and documents how).
    Proven,
}

/// One key-ordered chunk.
#[derive(Clone, Debug)]
pub struct Chunk<P> {
    /// Rows with their keys, strictly increasing in the database's key order (physical
    /// order for keyless tables, whose `Key` is the physical locator).
    pub rows: Vec<(Key, Row)>,
    /// True when no row follows the last one: the chunk's upper bound is +infinity.
    pub complete: bool,
    /// A log position at or after the commit of every transaction visible in the snapshot.
    pub fence: P,
    /// What the snapshot sees; checked against what the stream has delivered.
    pub witness: SnapshotWitness<P>,
}

/// A request for the next chunk of one binding.
#[derive(Clone, Copy, Debug)]
pub struct ScanRequest<'a> {
    /// The binding.
    pub binding: &'a BindingSpec,
    /// Rows strictly after this key; `None` from the start.
    pub after: Option<&'a Key>,
    /// Size bounds.
    pub limits: ChunkLimits,
}

/// Reads key-ordered chunks.
///
/// Guarantees the core relies on:
/// * the rows of one chunk come from one consistent snapshot, or (with the witness
///   [`SnapshotWitness::Proven`]) each row from a read that sees every transaction committed
///   in the log before it, such as a locking read: a transaction committing during the scan
///   then falls between the previous fence and this one and is patched in like any other
///   (the model suite runs the merger against both kinds of scanner);
/// * or, for a chunk read in parts ([`ChunkScanner::reads_in_parts`]), each part from a
///   consistent snapshot of its own, the parts being key ranges that tile the chunk's
///   window (fixed before any part's snapshot, so what a snapshot sees cannot move a
///   boundary); `fence` is then at or after every part's, and `witness` the weakest
///   part's, the earliest snapshot's (a later one sees at least as much). The merger's
///   argument is per key, and each key lies in exactly one part, so it holds for every
///   part's rows as for one snapshot's (the model suite runs this scanner too, and
///   catches the witness of the latest snapshot);
/// * they are strictly after `after` and strictly increasing in the database's key order;
/// * `fence` is at or after the commit position of every transaction visible in that
///   snapshot (read *after* the scan, inside the snapshot's transaction where the
///   database allows, since a commit can be visible before its log record is flushed);
/// * `witness` truthfully describes what the snapshot sees.
pub trait ChunkScanner {
    /// The source's log position.
    type Position: Position;

    /// Scans the next chunk.
    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<Self::Position>, SourceError>;

    /// Whether the source can read one of `binding`'s chunks on several connections at
    /// once, which is what [`BindingSpec::ranges`] above 1 asks for: inside one shared
    /// snapshot (PostgreSQL's exported snapshots), or each key range in a snapshot of its
    /// own with the fence and witness the guarantees above ask of such a chunk (MySQL,
    /// MariaDB, tables with a key). A binding it cannot (the default: none) gets `ranges`
    /// 1, and the core says so at start.
    fn reads_in_parts(&self, _binding: &BindingSpec) -> bool {
        false
    }

    /// An estimate of the table's row count, for progress reporting.
    async fn estimate_rows(&mut self, _binding: &BindingSpec) -> Option<u64> {
        None
    }

    /// Waits until a scan started now would see every transaction the stream has
    /// `delivered`. The core calls it before every scan. A source whose scans read the
    /// server the stream reads has nothing to wait for (the default); one that scans a
    /// replica, which applies the log later than the stream reads it, waits here until the
    /// replica has applied `delivered`, saying now and then what it waits for. It is an
    /// economy, not the proof: the core still checks every chunk's witness, and without
    /// this wait it would rescan until the witness passed.
    async fn await_visible(&mut self, _delivered: &Self::Position) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Says where keys fall against a binding's window.
///
/// Guarantees: the answer agrees with the database's `ORDER BY` on the key columns. A
/// source implements [`compare_native`](Self::compare_native) for keys whose encoding is
/// proven to order as the database does, and
/// [`classify_in_database`](Self::classify_in_database) with one query per batch for the
/// others (collated text, enums). [`classify`](Self::classify) picks between the two.
pub trait KeyClassifier {
    /// Compares two keys of `binding` natively, or `None` when it cannot. It answers for
    /// every pair of a binding's keys or for none (see [`crate::catalog::compare_keys`]).
    fn compare_native(&self, binding: &BindingSpec, a: &Key, b: &Key) -> Option<Ordering>;

    /// Classifies a batch of keys that [`compare_native`](Self::compare_native) cannot
    /// order, by asking the database: one answer per key, in order. The default has no
    /// database to ask and says so.
    async fn classify_in_database(
        &mut self,
        batch: ClassifyBatch<'_>,
    ) -> Result<Vec<Region>, SourceError> {
        Err(SourceError::definite(format!(
            "{}: the key cannot be compared natively and the source has no database classification",
            batch.binding.table
        )))
    }

    /// Classifies a batch of keys against `window`, one answer per key, in order: natively
    /// where the binding's keys compare natively, else by the database. The core calls it
    /// at most once per binding per batch of changes.
    async fn classify(
        &mut self,
        binding: &BindingSpec,
        window: Window<'_>,
        keys: &[&Key],
    ) -> Result<Vec<Region>, SourceError> {
        if keys
            .first()
            .is_none_or(|k| self.compare_native(binding, k, k).is_some())
        {
            return classify_natively(self, binding, window, keys);
        }
        self.classify_in_database(ClassifyBatch {
            binding,
            window,
            keys,
        })
        .await
    }
}

/// A batch of keys of one binding to place against its window.
#[derive(Clone, Copy, Debug)]
pub struct ClassifyBatch<'a> {
    /// The binding.
    pub binding: &'a BindingSpec,
    /// Its backfill window.
    pub window: Window<'a>,
    /// The keys, in the order the answers must come in.
    pub keys: &'a [&'a Key],
}

/// Classifies `keys` with the classifier's native comparator; an error when the binding's
/// key has none. What [`KeyClassifier::classify`] does for natively ordered keys.
pub fn classify_natively<C: KeyClassifier + ?Sized>(
    classifier: &C,
    binding: &BindingSpec,
    window: Window<'_>,
    keys: &[&Key],
) -> Result<Vec<Region>, SourceError> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if classifier.compare_native(binding, key, key).is_none() {
            return Err(SourceError::definite(format!(
                "{}: the key cannot be compared natively and the source has no database classification",
                binding.table
            )));
        }
        out.push(window.classify_with(key, |a, b| {
            classifier
                .compare_native(binding, a, b)
                .unwrap_or(Ordering::Equal)
        }));
    }
    Ok(out)
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row (its key may have changed too: see [`Change::before_key`]).
    Update,
    /// A removed row.
    Delete,
}

/// The position and source fields of one streamed change.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeMeta {
    /// `_meta.source.pos`: non-negative integers compared lexicographically, strictly
    /// increasing over the stream (for example `[commit_lsn, index in transaction]`).
    pub pos: Vec<u64>,
    /// Extra `_meta.source` fields: `ts_ms`, `txid`, and the readable position (`lsn`,
    /// `cursor`, `seqval`). `schema`, `table` and `pos` are added by the core. Shared:
    /// the changes of one transaction (or one log event) usually carry the same fields,
    /// rendered once.
    pub fields: Arc<Row>,
}

/// One row change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Index of the binding (config order).
    pub binding: usize,
    /// What happened.
    pub op: Op,
    /// The row's key after the change (for a delete, the deleted key); for keyless tables an
    /// empty key.
    pub key: Key,
    /// For an update, the key before the change when the source knows it; when it differs
    /// from `key` the core emits a `d` of the old key then a `c` of the new one.
    pub before_key: Option<Key>,
    /// The new image (insert/update: columns the database omitted, such as unchanged
    /// TOASTed values, are absent); for a delete, the key columns or the whole old row.
    pub row: Row,
    /// The prior row image where the database provides one.
    pub before: Option<Row>,
    /// Position and source fields.
    pub meta: ChangeMeta,
}

/// What the change stream delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent<P> {
    /// A transaction starts.
    Begin,
    /// A row change inside the current transaction.
    Change(Change),
    /// Every row of the listed bindings was removed, inside the current transaction.
    Truncate {
        /// Bindings truncated.
        bindings: Vec<usize>,
        /// Position and source fields.
        meta: ChangeMeta,
    },
    /// The current transaction committed at `position`.
    Commit {
        /// Commit position.
        position: P,
        /// Transaction id, where snapshots are described by ids ([`SnapshotWitness::Mvcc`]).
        txid: Option<u64>,
        /// Commit time, milliseconds since the epoch, for the lag metric.
        ts_ms: Option<i64>,
    },
    /// No transaction is open, and every transaction that commits at or before `position`
    /// has been delivered.
    Progress {
        /// The position reached.
        position: P,
    },
    /// The binding's table now holds values no change in the log carries (a column added
    /// with a default, say): rows the stream will never deliver again are stale
    /// downstream. The core reads the table again from the next transaction boundary, as
    /// an incremental backfill that its state counts ([`crate::state::BindingState::rereads`]).
    /// Delivered anywhere in the stream; a binding whose backfill has not started is left
    /// as it is, since its backfill reads the table as it is now.
    Reread {
        /// The binding.
        binding: usize,
        /// The table's highest column ordinal now ([`ColumnInfo::ordinal`]), if it has them.
        column_mark: Option<u64>,
        /// Why, for the log (names the column).
        reason: String,
    },
}

/// Committed changes, in commit order.
///
/// Guarantees the core relies on:
/// * transactions arrive whole and in commit order: `Begin`, changes, `Commit`; positions
///   of `Commit` and `Progress` never go back;
/// * after the scanner returned a fence `F`, an event at or after `F` arrives even when the
///   database is idle (a watermark, a keepalive carrying the server's log end);
/// * when idle, `next_event` returns a `Progress` at least every few seconds, so the core
///   can checkpoint, heartbeat and notice shutdown;
/// * a change's `meta.pos` strictly increases along the stream.
///
/// Durability: the source may discard log only up to the last position passed to
/// [`acknowledge`](Self::acknowledge), which the core calls only after the state holding
/// that position is durable.
pub trait ChangeStream {
    /// The source's log position.
    type Position: Position;

    /// The next event.
    async fn next_event(&mut self) -> Result<StreamEvent<Self::Position>, SourceError>;

    /// The next event if the stream already holds it (decoded, not yet delivered), without
    /// waiting; `None` when it must be awaited from [`next_event`](Self::next_event). The
    /// two deliver one sequence: an event taken here is not delivered again, and
    /// `next_event` delivers held events first. The merger takes held events here, where
    /// awaiting each one moved it through the future's state several times.
    fn next_buffered(&mut self) -> Option<StreamEvent<Self::Position>> {
        None
    }

    /// Everything at or before `durable` is safely recorded downstream.
    async fn acknowledge(&mut self, durable: &Self::Position) -> Result<(), SourceError>;
}

/// Where the stream starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStart<P> {
    /// No position yet: create (or reuse) the source's replication entity and start at its
    /// consistent point.
    Fresh,
    /// Resume after this position; a position the source no longer holds is a definite
    /// error whose message names the remedy (raise `backfill` for every binding).
    Resume(P),
    /// Every binding's backfill counter was raised: re-establish the position at the
    /// current end of the log (recreate the slot, re-read the binlog end).
    Reset,
}

/// A database, as the merger drives it.
pub trait Source: ChunkScanner + KeyClassifier {
    /// Its change stream.
    type Stream: ChangeStream<Position = Self::Position>;

    /// Opens the stream for `bindings` and returns it with the position it starts at: every
    /// transaction committed after that position will be delivered, and every transaction
    /// committed at or before it is visible to every snapshot the scanner takes afterwards
    /// (the fence-ordering invariant at the start of a run, when no transaction id has
    /// been delivered yet to check a witness against). A source meets the second half by
    /// waiting, once, for the transactions running at open time to finish, as PostgreSQL's
    /// slot creation does.
    async fn open_stream(
        &mut self,
        start: StreamStart<Self::Position>,
        bindings: &[BindingSpec],
    ) -> Result<(Self::Stream, Self::Position), SourceError>;

    /// The current end of the log (`--until-caught-up` stops once it is delivered).
    async fn end_position(&mut self) -> Result<Self::Position, SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::ResolvedMode;

    fn spec(index: usize, namespace: &str, stream: &str, key: &[&str]) -> BindingSpec {
        BindingSpec {
            ranges: 1,
            index,
            table: TableRef::new(namespace, stream),
            mode: ResolvedMode::Normal,
            key: key.iter().map(|k| (*k).to_string()).collect(),
        }
    }

    #[test]
    fn bound_tables_find_bindings_by_name_and_list_them_in_order() {
        let bound = BoundTables::new(&[
            spec(1, "shop", "orders", &["id"]),
            spec(0, "app", "users", &[]),
            spec(2, "shop", "items", &["a", "b"]),
        ]);
        assert_eq!(
            bound.get("shop", "items"),
            Some(&Bound {
                index: 2,
                key: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            bound.get("shop", "users"),
            None,
            "namespace and name together"
        );
        assert_eq!(
            bound
                .tables()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["app.users", "shop.items", "shop.orders"]
        );
    }
}
