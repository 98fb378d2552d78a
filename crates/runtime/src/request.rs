//! Backfill requests (PIPELINE.md §5): durable state in the store, not a flag of a running
//! process. `cdc backfill` writes a request; the running (or next) `cdc run` carries it out
//! across restarts and marks it done; `cdc status` shows it until then.
//!
//! ## Kinds, and who carries them out
//!
//! * **incremental** (a capture's): the capture supervisor raises the `backfill` counter of
//!   each binding to the request's target (idempotent: a counter already there stays), and
//!   sets the mode when one is asked (Only Changes is the jump-ahead), in the connector's
//!   config file; then restarts the connector, which re-reads the tables. With a table
//!   action `truncate` or `drop`, it first commits a truncate marker to each collection
//!   (its own unit, the state unchanged), so every standard table downstream is emptied or
//!   recreated exactly where the re-read rows begin.
//! * **reset** (a capture's): a dataflow reset, every binding's counter raised, markers
//!   committed for every collection; downstream tables are emptied (`truncate`, the default)
//!   or recreated (`drop`), or kept on show until a zero-downtime rebuild from the
//!   collections swaps the fresh tables in (`rebuild`).
//! * **cancel** (a capture's): a binding still backfilling is set active in the state: it
//!   streams from then on, and its table is partial, which `cdc status` says for as long
//!   as the cancel is the binding's last request.
//! * **materialization** (a materialization's): each selected table is rebuilt from its
//!   collection without reading the source: `rebuild` (a shadow table loaded and swapped in
//!   in one transaction, the default), `truncate` or `drop` (refilled in place).
//!
//! A request is `pending` until its executor starts it, `running` until the work is done
//! (for a capture's backfill: every selected binding active again at its new counter),
//! then `done`. Each step is idempotent, so a crash in between repeats it harmlessly.

pub mod wanted;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a request does.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Re-read the selected source tables (collections and destinations kept).
    Incremental,
    /// Rebuild destination tables from their collections; no source read.
    Materialization,
    /// Re-read every table of a capture and rebuild what lies downstream.
    Reset,
    /// Stop a capture backfill; the binding streams from then on.
    Cancel,
}

/// What happens to destination tables.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TableAction {
    /// Upsert on top (incremental backfills).
    Keep,
    /// Empty in place (schema, indexes and grants kept).
    Truncate,
    /// Drop and create again from the current schema.
    Drop,
    /// Load a shadow table and swap it in, in one transaction (zero downtime).
    Rebuild,
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Written, not started.
    Pending,
    /// Started.
    Running,
    /// Carried out.
    Done,
}

/// A backfill request, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique, ordered by creation: `r<ms since the epoch>-<n>`.
    pub id: String,
    /// What it does.
    pub kind: Kind,
    /// The capture it acts on (incremental, reset, cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// The materialization it acts on (materialization backfills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialization: Option<String>,
    /// The collections it applies to (for a materialization: the tables' collections).
    pub collections: Vec<String>,
    /// Incremental: the backfill mode to set on the bindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// What happens to destination tables.
    pub table: TableAction,
    /// Capture kinds: each binding's `backfill` counter after the request (by collection).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u32>,
    /// Reset: endpoint settings to set (`advanced.min_backfill_xid` = 1234).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint: BTreeMap<String, serde_json::Value>,
    /// Where it is.
    pub phase: Phase,
    /// When it was written.
    pub created_at_ms: u64,
    /// What was last done, for `cdc status`.
    #[serde(default)]
    pub note: String,
}

impl Request {
    /// Whether it is not done yet.
    pub fn open(&self) -> bool {
        self.phase != Phase::Done
    }

    /// One line for `cdc status`.
    pub fn line(&self) -> String {
        let on = self
            .capture
            .as_deref()
            .or(self.materialization.as_deref())
            .unwrap_or_default();
        let phase = match self.phase {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Done => "done",
        };
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let table = serde_json::to_value(self.table)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!(
            "{} {kind} of {on} [{}] tables: {table}: {phase}{}",
            self.id,
            self.collections.join(", "),
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.note)
            }
        )
    }
}

/// The truncate marker a capture request commits to a collection (see the module docs):
/// a protocol truncate line whose `source` says `snapshot`, plus the request and the
/// table action, which a materialization reads to empty, recreate or keep its table.
pub fn marker(binding: usize, request: &Request) -> String {
    serde_json::json!({
        "binding": binding,
        "truncate": {
            "source": {"snapshot": true},
            "request": request.id,
            "table": request.table,
        }
    })
    .to_string()
}

/// The table action a truncate line carries: `None` for a source's own truncate.
pub fn marker_action(truncate: &str) -> Option<TableAction> {
    serde_json::from_str::<serde_json::Value>(truncate)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("table")?.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_a_protocol_truncate_that_carries_its_action() {
        let r = Request {
            id: "r1-0".into(),
            kind: Kind::Incremental,
            capture: Some("c".into()),
            materialization: None,
            collections: vec!["t".into()],
            mode: None,
            table: TableAction::Drop,
            counters: BTreeMap::new(),
            endpoint: BTreeMap::new(),
            phase: Phase::Pending,
            created_at_ms: 1,
            note: String::new(),
        };
        let line = marker(3, &r);
        let Ok(backfill_core::consumer::Line::Truncate { binding, truncate }) =
            backfill_core::consumer::Line::parse(&line)
        else {
            panic!("not a truncate: {line}")
        };
        assert_eq!(binding, 3);
        assert_eq!(marker_action(truncate), Some(TableAction::Drop));
        assert_eq!(marker_action(r#"{"source": {"table": "t"}}"#), None);
        assert!(
            r.line()
                .contains("incremental of c [t] tables: drop: pending")
        );
    }
}
