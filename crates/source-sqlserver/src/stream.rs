//! The change stream: CDC change tables polled between LSNs, turned into the core's
//! [`StreamEvent`]s.
//!
//! One poll, from the position `p` (the commit LSN of the last transaction delivered whole):
//!
//! ```text
//!  to = sys.fn_cdc_get_max_lsn()                 everything ≤ to is in the change tables
//!  to = min(to, the LSN before a newer capture instance starts,
//!           the LSN where `poll_rows` change rows end)
//!  per bound table: its instance covering p → change rows in (p, to]
//!  + the watermark table's rows → Progress at their commit LSN
//!  merge by (__$start_lsn, __$command_id, __$seqval, __$operation)
//!  group by __$start_lsn → Begin, changes, Commit(start_lsn);  then Progress(to)
//! ```
//!
//! * `__$start_lsn` is the transaction's commit LSN, shared by all its rows, so grouping
//!   by it yields whole transactions in commit order; the capture job writes a
//!   transaction's rows and its `cdc.lsn_time_mapping` entry together, so reading up to
//!   the maximum LSN read first never sees half a transaction.
//! * An update is a pair of rows, operation 3 (before) then 4 (after), one `u` document
//!   with `before`; a changed key becomes `d` + `c` in the core. Large-value columns
//!   (`varchar(max)`, `nvarchar(max)`, `varbinary(max)`, `xml`, `text`, `ntext`, `image`)
//!   that an update did not change are NULL in CDC's images, so they are left out of the
//!   document (a merging consumer keeps the stored value) unless their bit in
//!   `__$update_mask` is set.
//! * `pos` is `[commit LSN (first 8 bytes), commit LSN (last 2), index in the transaction]`;
//!   `_meta.source` carries `lsn`, `seqval`, `txid` (`cdc.lsn_time_mapping.tran_id`, hex)
//!   and `ts_ms`.
//! * DDL recorded in `cdc.ddl_history` for a bound table is logged with what to do (a new
//!   capture instance); the catalog is read again then and every minute, so a new instance
//!   is followed from its start LSN.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use backfill_core::key::Key;
use backfill_core::source::{BindingSpec, Change, ChangeMeta, ChangeStream, Op, Row, StreamEvent};
use backfill_core::{Failure, SourceError};
use serde_json::Value;
use tiberius::ColumnData;

use crate::catalog::{self, CaptureInstance, Table, readable};
use crate::conn::{
    ClientBox, column_bytes, column_i64, column_lsn, connect, execute, max_lsn, query_rows,
};
use crate::endpoint::Endpoint;
use crate::position::{Lsn, SsPosition};
use crate::sql;
use crate::value::render;

/// How often the catalog is read again to notice new capture instances.
const CATALOG_REFRESH: Duration = Duration::from_secs(60);
/// How often acknowledged change rows may be cleaned up.
const CLEANUP_EVERY: Duration = Duration::from_secs(300);

/// One change-table row, before it becomes an event.
#[derive(Debug)]
struct ChangeRow {
    lsn: Lsn,
    command: i64,
    seqval: Lsn,
    op: i64,
    mask: Vec<u8>,
    /// Binding index; `None` for the watermark table.
    binding: Option<usize>,
    row: Row,
}

/// Whether bit `ordinal` (1-based capture ordinal) is set in an `__$update_mask`, as
/// `sys.fn_cdc_is_bit_set` reads it: the last byte holds ordinals 1 to 8.
pub fn mask_has(mask: &[u8], ordinal: i32) -> bool {
    let Ok(bit) = usize::try_from(ordinal - 1) else {
        return false;
    };
    let Some(index) = mask.len().checked_sub(1 + bit / 8) else {
        return false;
    };
    mask[index] >> (bit % 8) & 1 == 1
}

/// The binding a stream serves.
#[derive(Clone, Debug)]
struct Bound {
    index: usize,
    table: usize,
    key: Vec<String>,
}

/// The CDC change stream.
#[derive(Debug)]
pub struct SsStream {
    client: ClientBox,
    endpoint: Endpoint,
    tables: Vec<Table>,
    bound: Vec<Bound>,
    watermark_instance: String,
    position: Lsn,
    pending: VecDeque<StreamEvent<SsPosition>>,
    poll_interval: Duration,
    catalog_read: Instant,
    cleaned: Option<Instant>,
}

impl SsStream {
    pub(crate) async fn open(
        endpoint: &Endpoint,
        tables: Vec<Table>,
        bindings: &[BindingSpec],
        at: Lsn,
    ) -> Result<Self, SourceError> {
        let client = connect(endpoint).await?;
        let bound = bindings
            .iter()
            .map(|b| {
                tables
                    .iter()
                    .position(|t| t.table == b.table)
                    .map(|table| Bound {
                        index: b.index,
                        table,
                        key: b.key.clone(),
                    })
                    .ok_or_else(|| Failure::Lost.error(format!("{}: table not found", b.table)))
            })
            .collect::<Result<_, _>>()?;
        let (ws, wt) = endpoint.watermarks();
        Ok(Self {
            client: ClientBox(client),
            endpoint: endpoint.clone(),
            tables,
            bound,
            watermark_instance: sql::watermark_instance(&ws, &wt),
            position: at,
            pending: VecDeque::new(),
            poll_interval: Duration::from_millis(endpoint.poll_interval_ms.max(10)),
            catalog_read: Instant::now(),
            cleaned: None,
        })
    }

    async fn refresh_catalog(&mut self) -> Result<(), SourceError> {
        let fresh = catalog::load(&mut self.client.0, &self.endpoint.watermarks()).await?;
        for b in &self.bound {
            let old = &self.tables[b.table];
            let Some(new) = fresh.iter().find(|t| t.table == old.table) else {
                return Err(Failure::Lost.error(format!(
                    "{} was dropped or renamed while being captured: fix its binding (and raise its `backfill` if it was recreated)",
                    old.table
                )));
            };
            if new.instances.is_empty() {
                return Err(Failure::Setup.error(format!(
                    "CDC was disabled on {} while being captured: enable it again and raise its `backfill`",
                    old.table
                )));
            }
        }
        // Bound tables keep their positions in `tables`.
        let mut tables = self.tables.clone();
        for t in &mut tables {
            if let Some(new) = fresh.iter().find(|n| n.table == t.table) {
                *t = new.clone();
            }
        }
        self.tables = tables;
        self.catalog_read = Instant::now();
        Ok(())
    }

    /// The instance each bound table is read from after `self.position`, and the last LSN
    /// this poll may read so that no transaction straddles an instance switch.
    fn plan(&self, mut to: Lsn) -> Result<(Vec<(usize, CaptureInstance)>, Lsn), SourceError> {
        let mut plan = Vec::with_capacity(self.bound.len());
        for (i, b) in self.bound.iter().enumerate() {
            let t = &self.tables[b.table];
            let ci = t.instance_for(self.position).ok_or_else(|| {
                Failure::Lost.error(format!(
                    "{}: no capture instance holds changes after LSN {} any more (cleanup ran past it, or the instance was dropped): the stream position is lost. Raise `backfill` for every binding",
                    t.table, self.position
                ))
            })?;
            if let Some(next) = t.next_instance(ci)
                && next.start_lsn <= to
            {
                to = to.min(next.start_lsn.decrement());
            }
            plan.push((i, ci.clone()));
        }
        Ok((plan, to))
    }

    async fn ddl_notices(&mut self, to: Lsn) -> Result<bool, SourceError> {
        let rows = query_rows(
            &mut self.client.0,
            "SELECT OBJECT_SCHEMA_NAME(source_object_id), OBJECT_NAME(source_object_id), ddl_command \
               FROM cdc.ddl_history WHERE ddl_lsn > @P1 AND ddl_lsn <= @P2",
            vec![lsn_param(self.position), lsn_param(to)],
            "reading cdc.ddl_history",
        )
        .await?;
        let mut any = false;
        for r in &rows {
            let schema = crate::conn::column_string(r, 0).unwrap_or_default();
            let table = crate::conn::column_string(r, 1).unwrap_or_default();
            if self.bound.iter().any(|b| {
                self.tables[b.table].table.namespace == schema
                    && self.tables[b.table].table.stream == table
            }) {
                any = true;
                tracing::warn!(
                    "DDL on {schema}.{table} ({}): the current capture instance keeps its columns; to capture the new shape create a second capture instance (sys.sp_cdc_enable_table with a new @capture_instance) and the connector follows it from its start LSN",
                    crate::conn::column_string(r, 2).unwrap_or_default().trim()
                );
            }
        }
        Ok(any)
    }

    async fn read_instance(
        &mut self,
        ci: &CaptureInstance,
        binding: Option<usize>,
        to: Lsn,
        out: &mut Vec<ChangeRow>,
    ) -> Result<(), SourceError> {
        let columns = readable(&ci.columns);
        let read = if binding.is_none() {
            sql::ChangeRead::DirectBySeqval
        } else if ci.has_command_id {
            sql::ChangeRead::Direct
        } else {
            sql::ChangeRead::Function
        };
        let query = sql::changes(&ci.name, &columns, read);
        let mut params = vec![lsn_param(self.position), lsn_param(to)];
        if read == sql::ChangeRead::Function {
            params.push(lsn_param(ci.min_lsn.max(self.position.increment())));
        }
        let what = format!("reading changes of {}", ci.name);
        let rows = query_rows(&mut self.client.0, &query, params, &what).await?;
        for r in &rows {
            let lsn = column_lsn(r, 0);
            let seqval = column_lsn(r, 1);
            let (Some(lsn), Some(seqval)) = (lsn, seqval) else {
                return Err(Failure::Malformed.error(format!("{what}: a row without an LSN")));
            };
            out.push(ChangeRow {
                lsn,
                seqval,
                op: column_i64(r, 2).unwrap_or(0),
                mask: column_bytes(r, 3).unwrap_or_default(),
                command: column_i64(r, 4).unwrap_or(0),
                binding,
                row: render(&columns, r, sql::CHANGE_HEAD, &ci.name)?,
            });
        }
        Ok(())
    }

    /// Reads what the capture job recorded after the position and queues its events.
    async fn poll(&mut self) -> Result<(), SourceError> {
        let Some(max) = max_lsn(&mut self.client.0).await? else {
            self.pending.push_back(StreamEvent::Progress {
                position: SsPosition(self.position),
            });
            tokio::time::sleep(self.poll_interval).await;
            return Ok(());
        };
        if max <= self.position {
            if self.catalog_read.elapsed() > CATALOG_REFRESH {
                self.refresh_catalog().await?;
            }
            self.pending.push_back(StreamEvent::Progress {
                position: SsPosition(self.position),
            });
            tokio::time::sleep(self.poll_interval).await;
            return Ok(());
        }
        if self.ddl_notices(max).await? || self.catalog_read.elapsed() > CATALOG_REFRESH {
            self.refresh_catalog().await?;
        }
        let (plan, mut to) = self.plan(max)?;
        let wm = CaptureInstance {
            name: self.watermark_instance.clone(),
            min_lsn: Lsn::ZERO,
            start_lsn: Lsn::ZERO,
            columns: Vec::new(),
            has_command_id: true,
            role: None,
        };
        // Bound the poll by rows (a transaction is never split: the cap is on commit LSNs).
        let cap = self.endpoint.advanced.poll_rows.max(1);
        for ci in plan.iter().map(|(_, ci)| ci).chain(std::iter::once(&wm)) {
            let rows = query_rows(
                &mut self.client.0,
                &sql::changes_cap(&ci.name, cap),
                vec![lsn_param(self.position), lsn_param(to)],
                "sizing the poll",
            )
            .await?;
            if let Some(r) = rows.first()
                && column_i64(r, 0).and_then(|n| usize::try_from(n).ok()) == Some(cap)
                && let Some(last) = column_lsn(r, 1)
            {
                to = to.min(last);
            }
        }
        let mut rows = Vec::new();
        for (i, ci) in &plan {
            let binding = self.bound[*i].index;
            self.read_instance(ci, Some(binding), to, &mut rows).await?;
        }
        self.read_instance(&wm, None, to, &mut rows).await?;
        rows.sort_by(|a, b| {
            (a.lsn, a.command, a.seqval, a.op).cmp(&(b.lsn, b.command, b.seqval, b.op))
        });
        let times = self.times(to).await?;
        self.queue(rows, &times)?;
        self.pending.push_back(StreamEvent::Progress {
            position: SsPosition(to),
        });
        self.position = to;
        Ok(())
    }

    async fn times(&mut self, to: Lsn) -> Result<Vec<(Lsn, Option<i64>, String)>, SourceError> {
        let rows = query_rows(
            &mut self.client.0,
            sql::LSN_TIMES,
            vec![lsn_param(self.position), lsn_param(to)],
            "reading cdc.lsn_time_mapping",
        )
        .await?;
        let mut out: Vec<(Lsn, Option<i64>, String)> = rows
            .iter()
            .filter_map(|r| {
                let lsn = column_lsn(r, 0)?;
                let tran = column_bytes(r, 2)
                    .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                    .unwrap_or_default();
                Some((lsn, column_i64(r, 1), tran))
            })
            .collect();
        out.sort_by_key(|t| t.0);
        Ok(out)
    }

    /// What `events` needs to know of each bound table at the current position.
    fn shapes(&self) -> Vec<Shape> {
        self.bound
            .iter()
            .map(|b| Shape {
                index: b.index,
                key: b.key.clone(),
                columns: self.tables[b.table]
                    .instance_for(self.position)
                    .map(|ci| ci.columns.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn queue(
        &mut self,
        rows: Vec<ChangeRow>,
        times: &[(Lsn, Option<i64>, String)],
    ) -> Result<(), SourceError> {
        let shapes = self.shapes();
        self.pending.extend(events(rows, times, &shapes)?);
        Ok(())
    }
}

/// One bound table as the row-to-event mapping sees it.
#[derive(Clone, Debug)]
struct Shape {
    index: usize,
    key: Vec<String>,
    /// The capture instance's columns (ordinals are `__$update_mask` bits).
    columns: Vec<crate::catalog::Column>,
}

fn key_of(shape: &Shape, row: &Row) -> Key {
    Key(shape
        .key
        .iter()
        .map(|k| row.get(k).unwrap_or(Value::Null))
        .collect())
}

/// An image without the large-value columns CDC leaves NULL when an update did not change
/// them (their bit in `mask` unset); a delete keeps whatever values it has.
fn without_unchanged_large(shape: &Shape, mut row: Row, mask: &[u8], delete: bool) -> Row {
    row.retain(|name, v| {
        shape
            .columns
            .iter()
            .find(|c| c.name == name)
            .is_none_or(|c| {
                !c.ty.is_large_value(c.max_length)
                    || mask_has(mask, c.ordinal)
                    || (delete && v != "null")
            })
    });
    row
}

/// Merged change rows (sorted by commit LSN, then command order) as whole transactions:
/// `Begin`, changes, `Commit` per commit LSN; a transaction holding only the connector's
/// watermark becomes a `Progress` at its LSN.
fn events(
    rows: Vec<ChangeRow>,
    times: &[(Lsn, Option<i64>, String)],
    shapes: &[Shape],
) -> Result<Vec<StreamEvent<SsPosition>>, SourceError> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some(first) = rows.next() {
        let lsn = first.lsn;
        let mut txn = vec![first];
        while let Some(r) = rows.next_if(|r| r.lsn == lsn) {
            txn.push(r);
        }
        if txn.iter().all(|r| r.binding.is_none()) {
            out.push(StreamEvent::Progress {
                position: SsPosition(lsn),
            });
            continue;
        }
        let (ts_ms, txid) = times
            .binary_search_by_key(&lsn, |t| t.0)
            .ok()
            .map_or((None, String::new()), |j| (times[j].1, times[j].2.clone()));
        out.push(StreamEvent::Begin);
        let mut index = 0u64;
        let mut before: Option<ChangeRow> = None;
        for r in txn {
            let Some(binding) = r.binding else { continue };
            let shape = shapes.iter().find(|s| s.index == binding).ok_or_else(|| {
                Failure::Malformed.error(format!("a change for unknown binding {binding}"))
            })?;
            let Some(op) = cdc_op(r.op, lsn)? else {
                before = Some(r);
                continue;
            };
            let fields = source_fields(lsn, &r, &txid, ts_ms);
            let [hi, lo] = lsn.pos_parts();
            let (row, prior) = match op {
                Op::Update => {
                    let prior = before
                        .take()
                        .filter(|b| b.seqval == r.seqval && b.binding == r.binding);
                    (
                        without_unchanged_large(shape, r.row, &r.mask, false),
                        prior.map(|b| without_unchanged_large(shape, b.row, &r.mask, false)),
                    )
                }
                Op::Delete => (without_unchanged_large(shape, r.row, &r.mask, true), None),
                Op::Insert => (r.row, None),
            };
            let key = key_of(shape, &row);
            let before_key = prior.as_ref().map(|p| key_of(shape, p));
            out.push(StreamEvent::Change(Change {
                binding,
                op,
                key,
                before_key,
                row,
                before: prior,
                meta: ChangeMeta {
                    pos: vec![hi, lo, index],
                    fields: std::sync::Arc::new(fields),
                },
            }));
            index += 1;
        }
        out.push(StreamEvent::Commit {
            position: SsPosition(lsn),
            txid: None,
            ts_ms,
        });
    }
    Ok(out)
}

/// A change row's `__$operation`: 1 delete, 2 insert, 4 an update's after image; `None`
/// for 3, an update's before image (it pairs with the 4 that follows).
fn cdc_op(code: i64, lsn: Lsn) -> Result<Option<Op>, SourceError> {
    match code {
        1 => Ok(Some(Op::Delete)),
        2 => Ok(Some(Op::Insert)),
        3 => Ok(None),
        4 => Ok(Some(Op::Update)),
        other => {
            Err(Failure::Malformed.error(format!("unknown CDC operation {other} at LSN {lsn}")))
        }
    }
}

/// A change's `_meta.source` fields: its LSN and sequence value, the transaction's id and
/// commit time where the LSN-to-time map has them.
fn source_fields(lsn: Lsn, r: &ChangeRow, txid: &str, ts_ms: Option<i64>) -> Row {
    let mut fields = Row::new();
    fields.push_str("lsn", &lsn.to_string());
    fields.push_str("seqval", &r.seqval.to_string());
    if !txid.is_empty() {
        fields.push_str("txid", txid);
    }
    if let Some(ts) = ts_ms {
        fields.push("ts_ms", &Value::from(ts));
    }
    fields
}

fn lsn_param(l: Lsn) -> ColumnData<'static> {
    ColumnData::Binary(Some(l.0.to_vec().into()))
}

impl ChangeStream for SsStream {
    type Position = SsPosition;

    async fn next_event(&mut self) -> Result<StreamEvent<SsPosition>, SourceError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            self.poll().await?;
        }
    }

    fn next_buffered(&mut self) -> Option<StreamEvent<SsPosition>> {
        self.pending.pop_front()
    }

    /// With `cleanup_acknowledged`, deletes change rows below the durable position (at most
    /// every five minutes); failures are logged, never fatal: CDC's own cleanup job still
    /// bounds the tables.
    async fn acknowledge(&mut self, durable: &SsPosition) -> Result<(), SourceError> {
        if !self.endpoint.advanced.cleanup_acknowledged
            || self.cleaned.is_some_and(|t| t.elapsed() < CLEANUP_EVERY)
        {
            return Ok(());
        }
        self.cleaned = Some(Instant::now());
        let Ok((plan, _)) = self.plan(durable.0) else {
            return Ok(());
        };
        let low = query_rows(
            &mut self.client.0,
            "SELECT MAX(start_lsn) FROM cdc.lsn_time_mapping WHERE start_lsn <= @P1",
            vec![lsn_param(durable.0)],
            "finding the cleanup low-water mark",
        )
        .await?;
        let Some(low) = low.first().and_then(|r| column_lsn(r, 0)) else {
            return Ok(());
        };
        for (_, ci) in plan {
            if let Err(e) = execute(
                &mut self.client.0,
                "EXEC sys.sp_cdc_cleanup_change_table @capture_instance = @P1, @low_water_mark = @P2, @threshold = 5000",
                vec![
                    ColumnData::String(Some(ci.name.clone().into())),
                    lsn_param(low),
                ],
                "cleaning up acknowledged changes",
            )
            .await
            {
                tracing::warn!("{} (cleanup needs db_owner)", e.message());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::Column;
    use crate::value::SqlType;

    fn lsn(n: u8) -> Lsn {
        Lsn([0, 0, 0, 1, 0, 0, 0, 2, 0, n])
    }

    fn column(name: &str, ty: SqlType, max_length: i16, ordinal: i32) -> Column {
        Column {
            name: name.into(),
            type_name: String::new(),
            nullable: true,
            ty,
            max_length,
            ordinal,
        }
    }

    fn shape() -> Shape {
        Shape {
            index: 0,
            key: vec!["id".into()],
            columns: vec![
                column("id", SqlType::Int, 4, 1),
                column("a", SqlType::Int, 4, 2),
                column(
                    "doc",
                    SqlType::Text {
                        collation: None,
                        national: true,
                    },
                    -1,
                    3,
                ),
            ],
        }
    }

    fn row(v: serde_json::Value) -> Row {
        match v {
            Value::Object(m) => Row::from(m),
            _ => Row::new(),
        }
    }

    fn change(
        at: u8,
        seq: u8,
        op: i64,
        mask: u8,
        binding: Option<usize>,
        r: serde_json::Value,
    ) -> ChangeRow {
        ChangeRow {
            lsn: lsn(at),
            command: i64::from(seq),
            seqval: lsn(seq),
            op,
            mask: vec![mask],
            binding,
            row: row(r),
        }
    }

    fn changes(events: &[StreamEvent<SsPosition>]) -> Vec<&Change> {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Change(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn change_rows_become_whole_transactions_in_order() {
        let rows = vec![
            // Transaction at LSN 5: insert 1, update 1 (a), key change 2 -> 3 as a 3/4 pair.
            change(
                5,
                1,
                2,
                0b111,
                Some(0),
                json!({"id": 1, "a": 10, "doc": "x"}),
            ),
            change(
                5,
                2,
                3,
                0b010,
                Some(0),
                json!({"id": 1, "a": 10, "doc": null}),
            ),
            change(
                5,
                2,
                4,
                0b010,
                Some(0),
                json!({"id": 1, "a": 11, "doc": null}),
            ),
            change(
                5,
                3,
                3,
                0b001,
                Some(0),
                json!({"id": 2, "a": 20, "doc": null}),
            ),
            change(
                5,
                3,
                4,
                0b001,
                Some(0),
                json!({"id": 3, "a": 20, "doc": null}),
            ),
            // The connector's watermark alone at LSN 6.
            change(6, 1, 4, 0b11, None, json!({})),
            // A delete at LSN 7 keeps the large value it has.
            change(
                7,
                1,
                1,
                0b111,
                Some(0),
                json!({"id": 3, "a": 20, "doc": "kept"}),
            ),
        ];
        let times = vec![(lsn(5), Some(1_700_000_000_000), "00000000abcd".to_string())];
        let events = events(rows, &times, &[shape()]).expect("maps");
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                StreamEvent::Begin => "begin",
                StreamEvent::Change(_) => "change",
                StreamEvent::Commit { .. } => "commit",
                StreamEvent::Progress { .. } => "progress",
                StreamEvent::Truncate { .. } => "truncate",
                StreamEvent::Reread { .. } => "reread",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "begin", "change", "change", "change", "commit", "progress", "begin", "change",
                "commit"
            ]
        );
        assert!(
            matches!(&events[4], StreamEvent::Commit { position, ts_ms: Some(1_700_000_000_000), .. } if position.0 == lsn(5))
        );
        assert!(matches!(&events[5], StreamEvent::Progress { position } if position.0 == lsn(6)));
        let c = changes(&events);
        // insert
        assert_eq!((c[0].op, &c[0].key), (Op::Insert, &Key(vec![json!(1)])));
        assert_eq!(c[0].row.get("doc").unwrap_or_default(), json!("x"));
        // update: unchanged nvarchar(max) left out of the image and of `before`
        assert_eq!(c[1].op, Op::Update);
        assert_eq!(c[1].row, row(json!({"id": 1, "a": 11})));
        assert_eq!(c[1].before, Some(row(json!({"id": 1, "a": 10}))));
        assert_eq!(c[1].before_key, Some(Key(vec![json!(1)])));
        // key change: before key 2, key 3 (the core emits d + c)
        assert_eq!(c[2].before_key, Some(Key(vec![json!(2)])));
        assert_eq!(c[2].key, Key(vec![json!(3)]));
        // delete
        assert_eq!(c[3].op, Op::Delete);
        assert_eq!(c[3].row.get("doc").unwrap_or_default(), json!("kept"));
        // positions strictly increase; source fields are there
        let pos: Vec<&Vec<u64>> = c.iter().map(|c| &c.meta.pos).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        assert_eq!(
            c[0].meta.fields.get("lsn"),
            Some(json!("00000001:00000002:0005"))
        );
        assert_eq!(c[0].meta.fields.get("txid"), Some(json!("00000000abcd")));
        assert_eq!(
            c[0].meta.fields.get("seqval"),
            Some(json!("00000001:00000002:0001"))
        );
        assert!(
            c[3].meta.fields.get("ts_ms").is_none(),
            "no time mapping for LSN 7"
        );
    }

    #[test]
    fn a_changed_large_value_is_carried_and_unknown_operations_refused() {
        let rows = vec![
            change(
                5,
                1,
                3,
                0b100,
                Some(0),
                json!({"id": 1, "a": 1, "doc": "old"}),
            ),
            change(
                5,
                1,
                4,
                0b100,
                Some(0),
                json!({"id": 1, "a": 1, "doc": "new"}),
            ),
        ];
        let mapped = events(rows, &[], &[shape()]).expect("maps");
        let c = changes(&mapped);
        assert_eq!(c[0].row.get("doc").unwrap_or_default(), json!("new"));
        assert_eq!(
            c[0].before
                .as_ref()
                .map(|b| b.get("doc").unwrap_or_default()),
            Some(json!("old"))
        );
        let bad = vec![change(5, 1, 9, 0, Some(0), json!({"id": 1}))];
        assert!(events(bad, &[], &[shape()]).is_err());
        let unknown = vec![change(5, 1, 2, 0, Some(7), json!({"id": 1}))];
        assert!(events(unknown, &[], &[shape()]).is_err());
    }

    #[test]
    fn update_mask_bits_are_read_from_the_last_byte() {
        // Columns 1 and 3 changed: last byte 0b101.
        let mask = [0x00, 0x05];
        assert!(mask_has(&mask, 1));
        assert!(!mask_has(&mask, 2));
        assert!(mask_has(&mask, 3));
        assert!(!mask_has(&mask, 9));
        // Column 9 is bit 0 of the byte before the last.
        assert!(mask_has(&[0x01, 0x00], 9));
        assert!(!mask_has(&[0x01], 9), "beyond the mask");
        assert!(!mask_has(&mask, 0));
    }
}
