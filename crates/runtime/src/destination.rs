//! The destination seam (PIPELINE.md §4): what a destination crate implements so that the
//! runtime can materialize collections into it. The runtime names no destination; the
//! `cdc` binary hands it the kinds it links ([`DestinationKind`]).
//!
//! ## What an implementation guarantees
//!
//! * **One transaction per batch.** [`Destination::apply`] applies every step of a batch
//!   and, when the batch carries one, writes the materialization's read position in the
//!   same destination transaction (perhaps after it returned; [`Destination::flush`]
//!   waits): after a crash at any instant, [`Destination::positions`]
//!   returns the position of the last batch whose data is there, and no other. The runtime
//!   reads on from that position, so no change is lost or applied twice, and a delta table
//!   gets no duplicate row from a retry.
//! * **Steps in order.** The steps of a batch are applied in the order given; a
//!   [`Step::Merge`] applies its deletes before its upserts.
//! * **Merge semantics** (DESIGN.md §6): an upsert replaces the stored row of its key,
//!   except that a column absent from the document keeps its stored value; a key deleted
//!   earlier in the same batch is among the deletes, so its upsert starts from nothing.
//! * **Errors say whether they may pass**: [`Error::Unavailable`] (a connection dropped, the
//!   server restarting) makes the runtime reopen the destination and retry from the
//!   positions read back; anything else stops the materialization with the message.
//!
//! [`Error::Unavailable`]: crate::Error::Unavailable

use std::collections::HashMap;

use backfill_core::consumer::Document;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Result;

/// A source column, as the capture's `discover --json` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// Its name.
    pub name: String,
    /// Its type as the source database spells it.
    #[serde(rename = "type")]
    pub source_type: String,
    /// Whether it may be null.
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// A collection's schema: the source table's columns and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionSchema {
    /// The connector that captures it (`source-postgres`, ...): whose type names the
    /// columns spell.
    pub connector: String,
    /// Columns in table order.
    pub columns: Vec<ColumnSchema>,
    /// Key column names in key order; empty for a keyless table.
    pub key: Vec<String>,
}

/// A materialization binding: a collection landed in a destination table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableBinding {
    /// The collection read.
    pub collection: String,
    /// The destination table (the destination decides how a name is qualified).
    pub table: String,
    /// Every document a row (`true`), or merged by key (`false`).
    pub delta: bool,
    /// Delta tables: leave out a re-read row (a backfilled `c`) equal to its key's latest
    /// row, so an incremental backfill adds no duplicate of an unchanged row.
    pub skip_unchanged_rereads: bool,
    /// The collection's schema.
    pub schema: CollectionSchema,
}

/// A delta row: one document as it was committed to the collection.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaRow {
    /// The document's line number in its capture's log: unique per capture.
    pub line: u64,
    /// `c`, `u`, `d`, or `t` for a truncate.
    pub op: String,
    /// The document (without `_meta`), or `null` for a truncate.
    pub doc: Value,
    /// `_meta.source.pos`, when the document was streamed.
    pub position: Option<Value>,
    /// `_meta.source.ts_ms`, when the document was streamed.
    pub committed_at_ms: Option<i64>,
}

/// A document to upsert into a keyed standard table.
#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    /// The one document of its key in the batch, as the connector wrote it (`_meta`
    /// included, which a destination ignores), with where each field lies in it (read
    /// once, by the runtime for the key and op): typed by the destination field by field,
    /// never parsed into values on the way.
    Text(Document),
    /// Several documents of the key merged by DESIGN.md §6's rule, `_meta` left out.
    Merged(Map<String, Value>),
}

impl Image {
    /// Its fields, `_meta` left out.
    pub fn fields(&self) -> Result<Map<String, Value>> {
        match self {
            Image::Merged(fields) => Ok(fields.clone()),
            Image::Text(doc) => {
                let Value::Object(mut fields) = serde_json::from_str(doc.text())
                    .map_err(|e| crate::Error::Damaged(format!("a document is not JSON ({e})")))?
                else {
                    return Err(crate::Error::Damaged("a document is not an object".into()));
                };
                fields.remove("_meta");
                Ok(fields)
            }
        }
    }
}

/// One operation on a multiset (keyless) table.
#[derive(Clone, Debug, PartialEq)]
pub enum MultisetOp {
    /// Add the row.
    Insert(Value),
    /// Remove one row equal to this one.
    Remove(Value),
}

/// One step of a batch, on one binding (an index into the bindings given to
/// [`Destination::prepare`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A keyed standard table: delete these keys (documents holding at least the key),
    /// then upsert these documents (at most one per key).
    Merge {
        /// The binding.
        binding: usize,
        /// Keys to delete.
        deletes: Vec<Value>,
        /// Documents to upsert; absent columns keep their stored value.
        upserts: Vec<Image>,
    },
    /// A keyless standard table: these operations, in order.
    Multiset {
        /// The binding.
        binding: usize,
        /// The operations.
        ops: Vec<MultisetOp>,
    },
    /// A delta table: append these rows.
    Append {
        /// The binding.
        binding: usize,
        /// The rows.
        rows: Vec<DeltaRow>,
    },
    /// Empty a standard table.
    Truncate {
        /// The binding.
        binding: usize,
        /// Drop it and create it again from the current schema instead.
        recreate: bool,
    },
}

/// A batch: steps, and the read position it leaves behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// `(binding, lines)`: how far into its capture's log each binding has read once this
    /// batch is applied. Empty for a rebuild's shadow batches, which move no position.
    pub positions: Vec<(usize, u64)>,
}

/// What happens to a destination table before a backfill rewrites it (PIPELINE.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableReset {
    /// Empty it in place (schema, indexes and grants kept).
    Truncate,
    /// Drop it and create it again from the current schema.
    Drop,
}

/// A destination: one connection to one destination system, for one materialization.
pub trait Destination: Send {
    /// Each binding's read position (lines of its capture's log applied), as the last
    /// applied batch left it; absent for a binding never applied.
    fn positions(&mut self) -> Result<HashMap<usize, u64>>;
    /// The read positions of the bindings whose destination tables are `targets` (as
    /// [`TableBinding::table`] names them), by index, read without writing anything: no
    /// table and no checkpoint table is created, nothing is altered, and nothing about the
    /// collections is needed (what `cdc status` and the console show, beside a running
    /// pipeline or instead of one). A destination never prepared holds none.
    fn observe(&mut self, targets: &[String]) -> Result<HashMap<usize, u64>>;
    /// Creates each binding's table if missing, adds the columns the collection gained, and
    /// refuses a change it cannot follow (a key or a type change) with the remedy; the
    /// tables of `recreate` are dropped and created again from the schema instead (a
    /// requested `drop`, which is that remedy). Binding indices in later calls index
    /// `bindings`.
    fn prepare(&mut self, bindings: &[TableBinding], recreate: &[usize]) -> Result<()>;
    /// Applies `batch` and its positions in one transaction. It may return before the
    /// transaction commits (one batch in flight at most, so the next batch is read while
    /// this one is written): a failure is then returned by the next call, and
    /// [`flush`](Self::flush) waits for it.
    fn apply(&mut self, batch: Batch) -> Result<()>;
    /// Waits until every batch given to [`apply`](Self::apply) is committed.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Empties or recreates `binding`'s table and sets its position to 0, in one
    /// transaction, so the table is refilled from the start of its collection.
    fn reset_table(&mut self, binding: usize, how: TableReset) -> Result<()>;
    /// Creates an empty shadow of `binding`'s table and returns the index of a new binding
    /// that writes to it (for batches without a position).
    fn begin_shadow(&mut self, binding: usize) -> Result<usize>;
    /// Replaces `binding`'s table by the shadow `shadow`, filled up to `position`, and sets
    /// `binding`'s position to it, in one transaction: a reader sees the old table or the
    /// new one, never neither and never part of one.
    fn swap_shadow(&mut self, binding: usize, shadow: usize, position: u64) -> Result<()>;
}

/// A kind of destination the `cdc` binary links: opens destinations from their endpoint
/// config.
pub trait DestinationKind: Send + Sync {
    /// The name a materialization's `destination` field gives.
    fn name(&self) -> &'static str;
    /// Validates an endpoint config; the error names the field.
    fn validate(&self, endpoint: &Value) -> std::result::Result<(), String>;
    /// Opens a destination for materialization `materialization` at `endpoint`: connects,
    /// and creates nothing ([`Destination::prepare`] does).
    fn open(&self, materialization: &str, endpoint: &Value) -> Result<Box<dyn Destination>>;
}

/// The kind called `name` among `kinds`; the error lists the known ones.
pub fn kind<'a>(
    kinds: &'a [Box<dyn DestinationKind>],
    name: &str,
) -> std::result::Result<&'a dyn DestinationKind, String> {
    kinds
        .iter()
        .find(|d| d.name() == name)
        .map(|d| &**d)
        .ok_or_else(|| {
            let known: Vec<&str> = kinds.iter().map(|d| d.name()).collect();
            format!("{name:?} is not a destination this cdc knows; use one of {known:?}")
        })
}
