//! Backfilled rows, read in the text protocol and rendered by the stream's converter.
//!
//! A chunk is one simple query (`SELECT t.*, ... FROM ONLY tbl t WHERE ... ORDER BY key
//! LIMIT n`): the server sends every value through its type's output function, the same
//! text pgoutput sends, in the same session settings (`conn::SESSION_OPTIONS`), and
//! [`value::convert`] turns it into JSON exactly as the stream does. So a backfilled row
//! and a streamed row of the same data are the same document, and the keys the merger
//! compares to patch a chunk come from one function. Types the converter does not know
//! ([`Kind::AskServer`]: composites, ranges of unknown subtypes, ...) are rendered by the
//! server: the select list adds `to_jsonb(t.col)::text` for each, and the row takes that
//! value instead of the column's text.
//!
//! Before, every chunk was `SELECT to_jsonb(t.*)::text`: the server built a JSON document
//! per row and the connector parsed it back into a map, which made the PostgreSQL backfill
//! bound by the server's `to_jsonb` (BENCHMARKS.md). Text output is what `COPY` does.
//!
//! The columns come back with their names in the row description, and the query reads
//! `t.*`, so a column added or dropped after the catalog was read is noticed on the first
//! chunk that sees it: [`Plan::new`] reports the change, and the source reads the catalog
//! again and runs the chunk once more, instead of emitting a row without the new column.

use std::cell::Cell;
use std::sync::Arc;

use backfill_core::source::Row;
use tokio_postgres::SimpleColumn;

use crate::catalog::{Table, Types};
use crate::sql::quote;
use crate::value::{self, Kind};

/// The select list of a chunk query: `t.*` and the server-rendered columns.
pub fn select_list(t: &Table, types: &Types) -> (String, Vec<String>) {
    let mut sql = String::from("t.*");
    let mut ask = Vec::new();
    for c in &t.columns {
        if types.kind(c.type_oid).needs_server() {
            sql.push_str(&format!(", to_jsonb(t.{})::text", quote(&c.name)));
            ask.push(c.name.clone());
        }
    }
    (sql, ask)
}

/// How each column of a query's rows becomes a row's value.
#[derive(Debug)]
pub struct Plan {
    /// For each of the table's columns in the result: its name, and its kind, or the
    /// result column holding the server's rendering.
    columns: Vec<(String, Source)>,
    /// Bytes a row's text is expected to take, so its buffer is allocated once: the
    /// longest row so far.
    text_hint: Cell<usize>,
}

#[derive(Debug)]
enum Source {
    Text(Kind),
    Server(usize),
    /// A generated column `t.*` returns and documents leave out ([`Table::generated`]).
    Skip,
}

impl Plan {
    /// The plan for a result whose first `lead` columns are not the table's (`ctid`),
    /// then the table's columns (`t.*`), then the server-rendered ones of `ask`. `None`
    /// when the table's columns are not the catalog's: it changed since it was read.
    pub fn new(
        description: &Arc<[SimpleColumn]>,
        lead: usize,
        t: &Table,
        types: &Types,
        ask: &[String],
    ) -> Option<Self> {
        let own = description.len().checked_sub(lead + ask.len())?;
        if own != t.columns.len() + t.generated.len() {
            return None;
        }
        let mut columns = Vec::with_capacity(own);
        let mut next = 0;
        for d in description.iter().skip(lead).take(own) {
            if t.generated.iter().any(|g| g == d.name()) {
                columns.push((String::new(), Source::Skip));
                continue;
            }
            let c = t.columns.get(next).filter(|c| c.name == d.name())?;
            next += 1;
            let source = match ask.iter().position(|a| *a == c.name) {
                Some(j) => Source::Server(lead + own + j),
                None => Source::Text(types.kind(c.type_oid)),
            };
            columns.push((c.name.clone(), source));
        }
        let text_hint = Cell::new(256 + 16 * columns.len());
        Some(Self { columns, text_hint })
    }

    /// One result row as a document (`lead` columns skipped); `Err` describes a value
    /// that is not what its type's output function prints.
    pub fn row(&self, r: &tokio_postgres::SimpleQueryRow, lead: usize) -> Result<Row, String> {
        let mut out = Row::with_capacity(self.columns.len(), self.text_hint.get());
        for (i, (name, source)) in self.columns.iter().enumerate() {
            let at = match source {
                Source::Text(_) => lead + i,
                Source::Server(j) => *j,
                Source::Skip => continue,
            };
            let text = r.try_get(at).map_err(|e| format!("column {name}: {e}"))?;
            match (text, source) {
                (None, _) => out.push_null(name),
                (Some(text), Source::Text(kind)) => value::render(kind, text, &mut out, name)
                    .map_err(|e| format!("column {name}: {e}"))?,
                (Some(text), Source::Server(_)) => value::push_server_json(&mut out, name, text)
                    .map_err(|e| format!("column {name}: {e}"))?,
                (Some(_), Source::Skip) => {}
            }
        }
        self.text_hint.set(self.text_hint.get().max(out.text_len()));
        Ok(out)
    }
}
