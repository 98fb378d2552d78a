//! The change stream: pgoutput messages from the replication connection turned into the
//! core's [`StreamEvent`]s.
//!
//! * `Begin` / `Commit` bound each transaction; a change's `pos` is `[commit LSN, index]`
//!   and its `_meta.source` carries `lsn` (the commit LSN), `txid` and `ts_ms`.
//! * `Commit` carries the commit's *end* LSN: resuming there starts with the next
//!   transaction.
//! * Keepalives become `Progress` at the server's sent position whenever no transaction is
//!   open; while idle the stream asks for one (a status update with the reply flag) with
//!   a short backoff, so fences and `--until-caught-up` are reached promptly.
//! * `Relation` messages keep the column list current: a schema change is followed, and a
//!   row is always decoded with the columns the server sent it with.
//! * Standby status updates report the acknowledged (durable) LSN, and are sent at least
//!   every ten seconds so `wal_sender_timeout` never fires.
//!
//! Memory stays bounded for transactions of any size: each message becomes events as it
//! arrives, and the core writes them out before asking for more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backfill_core::key::Key;
use backfill_core::source::{
    BindingSpec, BoundTables, Change, ChangeMeta, ChangeStream, Op, Row, StreamEvent,
};
use backfill_core::{Failure, SourceError};
use serde_json::Value;
use tokio_postgres::Client;

use crate::catalog::Types;
use crate::pgoutput::{self, Cell, Message, OldImage};
use crate::position::{Lsn, PgPosition};
use crate::replication::{PG_EPOCH_OFFSET_US, ReplMessage, ReplicationConn};
use crate::sql;
use crate::value::{self, Kind};

/// A bound table as the stream knows it.
#[derive(Debug)]
pub(crate) struct BoundTable {
    /// Its binding.
    pub(crate) binding: usize,
    /// The column names known: the catalog's when the stream opened, and every one a
    /// `Relation` message brought since.
    pub(crate) columns: HashSet<String>,
}

#[derive(Debug)]
struct RelInfo {
    binding: Option<usize>,
    namespace: String,
    name: String,
    columns: Vec<(String, Kind, u32)>,
    key: Vec<String>,
}

#[derive(Debug)]
struct Txn {
    final_lsn: Lsn,
    xid: u64,
    index: u64,
    /// `_meta.source`'s fields, the same for every change of the transaction.
    fields: Arc<Row>,
}

/// The PostgreSQL change stream.
#[derive(Debug)]
pub struct PgStream {
    conn: ReplicationConn,
    client: Client,
    types: Types,
    bindings: BoundTables,
    /// The bound tables by OID when the stream opened: a rename or a drop-and-recreate is
    /// noticed, never silently followed or ignored.
    bound_oids: HashMap<u32, BoundTable>,
    relations: HashMap<u32, RelInfo>,
    txn: Option<Txn>,
    pending: VecDeque<StreamEvent<PgPosition>>,
    acked: Lsn,
    progress: Lsn,
    last_status: Instant,
    idle_wait: Duration,
    heartbeat: Duration,
    xid_ref: u64,
}

impl PgStream {
    #[allow(clippy::too_many_arguments)] // one call site, in `open_stream`
    pub(crate) fn new(
        conn: ReplicationConn,
        client: Client,
        types: Types,
        bindings: &[BindingSpec],
        bound_oids: HashMap<u32, BoundTable>,
        start: Lsn,
        xid_ref: u64,
        heartbeat: Duration,
    ) -> Self {
        Self {
            conn,
            client,
            types,
            bindings: BoundTables::new(bindings),
            bound_oids,
            relations: HashMap::new(),
            txn: None,
            pending: VecDeque::new(),
            acked: start,
            progress: start,
            last_status: Instant::now(),
            idle_wait: Duration::from_millis(5),
            heartbeat,
            xid_ref,
        }
    }

    /// The 64-bit id of a 32-bit xid: the one nearest the last id seen.
    fn full_xid(&mut self, xid: u32) -> u64 {
        let base = self.xid_ref & !0xFFFF_FFFF;
        let candidates = [base.wrapping_sub(1 << 32), base, base.wrapping_add(1 << 32)];
        let full = candidates
            .iter()
            .map(|b| b | u64::from(xid))
            .min_by_key(|c| c.abs_diff(self.xid_ref))
            .unwrap_or(u64::from(xid));
        self.xid_ref = self.xid_ref.max(full);
        full
    }

    /// Renders a value of a type the server renders ([`Kind::needs_server`]) into `row`.
    async fn render_by_server(
        &self,
        row: &mut Row,
        column: &str,
        kind: &Kind,
        type_oid: u32,
        text: &str,
    ) -> Result<(), SourceError> {
        debug_assert!(kind.needs_server());
        let name = self.types.name(type_oid).unwrap_or("text").to_string();
        let server = self
            .client
            .query_one(
                &format!("SELECT to_jsonb($1::text::{name})::text"),
                &[&text],
            )
            .await
            .map_err(|e| crate::conn::db_error(e, &format!("rendering a {name} value")))?;
        value::push_server_json(row, column, server.get::<_, &str>(0))
            .map_err(|e| Failure::Malformed.error(format!("{column} ({name}): {e}")))
    }

    async fn row(&self, rel: &RelInfo, cells: &[Cell<'_>]) -> Result<Row, SourceError> {
        if cells.len() != rel.columns.len() {
            return Err(Failure::Malformed.error(format!(
                "{}.{}: a row has {} columns where the relation has {}; refusing to emit misaligned columns",
                rel.namespace,
                rel.name,
                cells.len(),
                rel.columns.len()
            )));
        }
        let mut row = Row::with_capacity(cells.len(), 256 + 16 * cells.len());
        for ((name, kind, oid), cell) in rel.columns.iter().zip(cells) {
            match cell {
                Cell::Null => row.push_null(name),
                Cell::Unchanged => {}
                Cell::Text(t) if !kind.needs_server() => value::render(kind, t, &mut row, name)
                    .map_err(|e| {
                        Failure::Malformed
                            .error(format!("{}.{} column {name}: {e}", rel.namespace, rel.name))
                    })?,
                Cell::Text(t) => self.render_by_server(&mut row, name, kind, *oid, t).await?,
                Cell::Binary(_) => {
                    return Err(Failure::Malformed.error("binary tuple data was not requested"));
                }
            }
        }
        Ok(row)
    }

    fn key_of(rel: &RelInfo, row: &Row) -> Key {
        Key(rel
            .key
            .iter()
            .map(|k| row.get(k).unwrap_or(Value::Null))
            .collect())
    }

    fn meta(&mut self) -> Result<ChangeMeta, SourceError> {
        let txn = self
            .txn
            .as_mut()
            .ok_or_else(|| Failure::Malformed.error("a change arrived outside a transaction"))?;
        let pos = vec![txn.final_lsn.0, txn.index];
        txn.index += 1;
        Ok(ChangeMeta {
            pos,
            fields: txn.fields.clone(),
        })
    }

    /// One pgoutput message: a transaction's bounds, a relation's schema, or changes,
    /// which become events in `pending`.
    async fn handle(&mut self, data: &[u8]) -> Result<(), SourceError> {
        let message = pgoutput::decode(data)
            .map_err(|e| Failure::Malformed.error(format!("malformed pgoutput message: {e}")))?;
        match message {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => self.begin(final_lsn, commit_ts, xid),
            Message::Commit {
                end_lsn, commit_ts, ..
            } => self.commit(end_lsn, commit_ts)?,
            Message::Relation(r) => self.relation(r).await?,
            Message::Insert { rel, new } => self.insert(rel, &new).await?,
            Message::Update { rel, old, new } => self.update(rel, old.as_ref(), &new).await?,
            Message::Delete {
                rel,
                old: (image, cells),
            } => self.delete(rel, image, &cells).await?,
            Message::Truncate { rels } => self.truncate(&rels)?,
            Message::Type { .. } | Message::Origin | Message::LogicalMessage { .. } => {}
        }
        Ok(())
    }

    fn begin(&mut self, final_lsn: Lsn, commit_ts: i64, xid: u32) {
        let xid = self.full_xid(xid);
        let ts_ms = (commit_ts + PG_EPOCH_OFFSET_US) / 1000;
        let mut fields = Row::with_capacity(3, 64);
        fields.push_i64("ts_ms", ts_ms);
        fields.push_u64("txid", xid);
        fields.push_str("lsn", &final_lsn.to_string());
        self.txn = Some(Txn {
            final_lsn,
            xid,
            index: 0,
            fields: Arc::new(fields),
        });
        self.pending.push_back(StreamEvent::Begin);
    }

    fn commit(&mut self, end_lsn: Lsn, commit_ts: i64) -> Result<(), SourceError> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| Failure::Malformed.error("commit outside a transaction"))?;
        self.progress = self.progress.max(end_lsn);
        self.pending.push_back(StreamEvent::Commit {
            position: PgPosition { lsn: end_lsn },
            txid: Some(txn.xid),
            ts_ms: Some((commit_ts + PG_EPOCH_OFFSET_US) / 1000),
        });
        Ok(())
    }

    /// A relation's schema: which binding its changes belong to (by OID, checked against
    /// its name: a renamed or recreated bound table stops the capture with the remedy).
    /// A bound table that gained columns which fill the rows already there is read again
    /// ([`PgStream::filled_columns`]).
    async fn relation(&mut self, r: pgoutput::Relation) -> Result<(), SourceError> {
        let by_name = self
            .bindings
            .get(&r.namespace, &r.name)
            .map(|b| (b.index, b.key.clone()));
        let bound = self.bound_oids.get(&r.oid).map(|t| t.binding);
        let (binding, key) = match (bound, by_name) {
            (Some(i), Some((j, key))) if i == j => (Some(i), key),
            (Some(i), _) => {
                return Err(Failure::Lost.error(format!(
                    "the table of binding {i} was renamed to {}.{}; point the binding at the new name and raise its backfill counter",
                    r.namespace, r.name
                )));
            }
            (None, Some((i, _))) => {
                return Err(Failure::Lost.error(format!(
                    "{}.{} (binding {i}) was dropped and created again while captured; raise its backfill counter to read it afresh",
                    r.namespace, r.name
                )));
            }
            (None, None) => (None, Vec::new()),
        };
        if let (Some(i), Some(known)) = (binding, self.bound_oids.get_mut(&r.oid)) {
            let added: Vec<String> = r
                .columns
                .iter()
                .filter(|c| known.columns.insert(c.name.clone()))
                .map(|c| c.name.clone())
                .collect();
            if !added.is_empty()
                && let Some((filled, mark)) = self.filled_columns(r.oid, &added).await?
            {
                self.pending.push_back(StreamEvent::Reread {
                    binding: i,
                    column_mark: Some(mark),
                    reason: format!(
                        "{}.{} gained {filled:?} with a default (or an identity)",
                        r.namespace, r.name
                    ),
                });
            }
        }
        let columns = r
            .columns
            .iter()
            .map(|c| (c.name.clone(), self.types.kind(c.type_oid), c.type_oid))
            .collect();
        self.relations.insert(
            r.oid,
            RelInfo {
                binding,
                namespace: r.namespace,
                name: r.name,
                columns,
                key,
            },
        );
        Ok(())
    }

    /// Which of the `added` columns of table `oid` fill the rows already there (a default
    /// the server gives them, an identity), and the table's highest column number now; `None`
    /// when none does. The catalog is read as it is now: a column dropped since counts as
    /// not filling, and a default set after the column was added counts as filling (a
    /// reread more than needed, never one less).
    async fn filled_columns(
        &self,
        oid: u32,
        added: &[String],
    ) -> Result<Option<(Vec<String>, u64)>, SourceError> {
        let row = self
            .client
            .query_one(sql::FILLED_COLUMNS, &[&oid, &added])
            .await
            .map_err(|e| crate::conn::db_error(e, "reading the columns a table gained"))?;
        let filled: Vec<String> = row.get(0);
        let mark: i32 = row.get(1);
        Ok((!filled.is_empty()).then(|| (filled, u64::try_from(mark).unwrap_or(0))))
    }

    /// The relation `rel` and its binding; `None` for a relation no binding reads.
    fn bound(&self, rel: u32) -> Result<Option<(&RelInfo, usize)>, SourceError> {
        let info = self.relations.get(&rel).ok_or_else(|| unknown(rel))?;
        Ok(info.binding.map(|b| (info, b)))
    }

    /// Appends a change of the open transaction.
    fn push_change(
        &mut self,
        change: impl FnOnce(ChangeMeta) -> Change,
    ) -> Result<(), SourceError> {
        let meta = self.meta()?;
        self.pending.push_back(StreamEvent::Change(change(meta)));
        Ok(())
    }

    async fn insert(&mut self, rel: u32, new: &[Cell<'_>]) -> Result<(), SourceError> {
        let Some((info, binding)) = self.bound(rel)? else {
            return Ok(());
        };
        let row = self.row(info, new).await?;
        let key = Self::key_of(info, &row);
        self.push_change(|meta| Change {
            binding,
            op: Op::Insert,
            key,
            before_key: None,
            row,
            before: None,
            meta,
        })
    }

    async fn update(
        &mut self,
        rel: u32,
        old: Option<&(OldImage, Vec<Cell<'_>>)>,
        new: &[Cell<'_>],
    ) -> Result<(), SourceError> {
        let Some((info, binding)) = self.bound(rel)? else {
            return Ok(());
        };
        let mut row = self.row(info, new).await?;
        let (before_key, before) = match old {
            Some((image, cells)) => {
                let old_row = self.row(info, cells).await?;
                let k = Self::key_of(info, &old_row);
                if *image == OldImage::Full {
                    // REPLICA IDENTITY FULL logs the old row with its TOASTed values
                    // inline: an unchanged value is the old one, so the new row is whole
                    // (a key change's `c` must be).
                    for ((name, ..), cell) in info.columns.iter().zip(new) {
                        if *cell == Cell::Unchanged
                            && let Some(v) = old_row.get(name)
                        {
                            row.insert(name, &v);
                        }
                    }
                }
                (Some(k), (*image == OldImage::Full).then_some(old_row))
            }
            None => (None, None),
        };
        let key = match (&before_key, info.key.iter().all(|k| row.contains_key(k))) {
            (Some(k), false) => k.clone(),
            _ => Self::key_of(info, &row),
        };
        self.push_change(|meta| Change {
            binding,
            op: Op::Update,
            key,
            before_key,
            row,
            before,
            meta,
        })
    }

    async fn delete(
        &mut self,
        rel: u32,
        image: OldImage,
        cells: &[Cell<'_>],
    ) -> Result<(), SourceError> {
        let Some((info, binding)) = self.bound(rel)? else {
            return Ok(());
        };
        let old_row = self.row(info, cells).await?;
        let key = Self::key_of(info, &old_row);
        let (row, before) = match image {
            OldImage::Full => (old_row.clone(), Some(old_row)),
            OldImage::Key => (
                info.key
                    .iter()
                    .filter_map(|k| Some((k, old_row.get(k)?)))
                    .collect(),
                None,
            ),
        };
        self.push_change(|meta| Change {
            binding,
            op: Op::Delete,
            key,
            before_key: None,
            row,
            before,
            meta,
        })
    }

    fn truncate(&mut self, rels: &[u32]) -> Result<(), SourceError> {
        let bindings: Vec<usize> = rels
            .iter()
            .filter_map(|r| self.relations.get(r).and_then(|i| i.binding))
            .collect();
        if !bindings.is_empty() {
            let meta = self.meta()?;
            self.pending
                .push_back(StreamEvent::Truncate { bindings, meta });
        }
        Ok(())
    }
}

fn unknown(rel: u32) -> SourceError {
    Failure::Malformed.error(format!(
        "a change for relation {rel} arrived before its schema"
    ))
}

impl ChangeStream for PgStream {
    type Position = PgPosition;

    async fn next_event(&mut self) -> Result<StreamEvent<PgPosition>, SourceError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            if self.last_status.elapsed() >= Duration::from_secs(10) {
                self.conn.send_status(self.acked, false).await?;
                self.last_status = Instant::now();
            }
            match self.conn.try_next()? {
                Some(ReplMessage::XLogData { data, .. }) => {
                    self.idle_wait = Duration::from_millis(5);
                    self.handle(&data).await?;
                }
                Some(ReplMessage::Keepalive {
                    wal_end,
                    reply_requested,
                }) => {
                    if reply_requested {
                        self.conn.send_status(self.acked, false).await?;
                        self.last_status = Instant::now();
                    }
                    if self.txn.is_none() && wal_end >= self.progress {
                        self.progress = wal_end;
                        return Ok(StreamEvent::Progress {
                            position: PgPosition { lsn: wal_end },
                        });
                    }
                }
                None => match tokio::time::timeout(self.idle_wait, self.conn.fill()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        // Idle: ask where the server is; back off up to the heartbeat.
                        self.conn.send_status(self.acked, true).await?;
                        self.last_status = Instant::now();
                        self.idle_wait =
                            (self.idle_wait * 2).min(self.heartbeat.min(Duration::from_secs(1)));
                    }
                },
            }
        }
    }

    fn next_buffered(&mut self) -> Option<StreamEvent<PgPosition>> {
        self.pending.pop_front()
    }

    async fn acknowledge(&mut self, durable: &PgPosition) -> Result<(), SourceError> {
        if durable.lsn > self.acked {
            self.acked = durable.lsn;
            self.conn.send_status(self.acked, false).await?;
            self.last_status = Instant::now();
        }
        Ok(())
    }
}
