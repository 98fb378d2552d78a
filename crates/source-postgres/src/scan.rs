//! The PostgreSQL source: discovery, key-ordered and ctid-ordered chunk scans with their
//! fence and snapshot witness, key classification, and opening the replication stream.
//!
//! ## Chunks, fences and the witness
//!
//! A chunk is read in its own `REPEATABLE READ READ ONLY` transaction, the whole of it
//! sent as one simple query (one round trip; the statements run in order, and the rows
//! stream back while the server reads them):
//!
//! ```text
//! START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
//!   SELECT t.* ... WHERE (k1, k2) > (cursor) ORDER BY k1, k2 LIMIT n+1   -- snapshot S taken here
//!   SELECT pg_current_wal_insert_lsn(), txid_snapshot_xmax/xip(txid_current_snapshot())
//! COMMIT
//! BEGIN; SET LOCAL synchronous_commit = on                                -- unless read-only
//!   SELECT pg_logical_emit_message(true, 'source-postgres', '')
//!     WHERE pg_current_wal_insert_lsn() > 'D'                            -- D: delivered
//! COMMIT
//! ```
//!
//! It took six round trips before (the transaction's start, the rows, the fence's prepare
//! and execute, the commit, the watermark), about a millisecond a chunk on a loaded
//! machine, in which the server sat idle. A statement that fails makes the server skip
//! the rest, so the scan then rolls back before it returns the error. Keyless scans send
//! the same batch with a range of heap pages for the rows, and the table's pages after
//! them.
//!
//! The insert LSN is read *after* the rows, inside the transaction: a transaction visible in
//! S has inserted its commit record before S was taken (an asynchronous commit is visible
//! before its record is flushed, but not before it is inserted), so the fence is at or
//! after every visible commit. `txid_current_snapshot()` in a repeatable-read transaction is
//! S itself, so its `xmax` and in-progress list are the witness the core checks against the
//! transaction ids the stream delivered. The logical message after the fence gives an idle
//! database a WAL record past the fence, so the walsender's keepalive position reaches it.
//!
//! The message is written only when the server's insert position has passed `D`, what the
//! stream had delivered when the chunk was asked for ([`ChunkScanner::await_visible`]):
//! otherwise the fence, read before it, is at or before `D`, the merger's stream to the
//! fence has nothing to read, and the message would cost a WAL flush for nothing. In a
//! backfill of a table nobody writes, every chunk but the first is so: the last message
//! delivered is the last WAL record. A message not written leaves its transaction without
//! a transaction id, and its commit writes nothing.
//!
//! Rows come in the text protocol and are rendered by the stream's converter (`rows`), so
//! backfilled and streamed values are one function's output; the cursor is inlined as an
//! escaped literal, since the simple protocol takes no parameters. Keys are compared
//! against the cursor with a row comparison on the key columns in their own collations,
//! so the primary-key index serves the scan.

use std::cmp::Ordering;

use backfill_core::key::{Hi, Key, Region};
use backfill_core::source::TableRef;
use backfill_core::source::{
    BindingSpec, Chunk, ChunkScanner, ClassifyBatch, KeyClassifier, Row, ScanRequest,
    SnapshotWitness, Source, StreamStart, buffered_bytes,
};
use backfill_core::{Failure, SourceError};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::catalog::{self, Table, Types};
use crate::endpoint::Endpoint;
use crate::position::{Lsn, PgPosition};
use crate::replica::Standby;
use crate::replication::ReplicationConn;
use crate::rows;
use crate::sql;
use crate::stream::PgStream;
use backfill_core::catalog::Catalog;

mod ranges;

/// The PostgreSQL source.
#[derive(Debug)]
pub struct PgSource {
    endpoint: Endpoint,
    client: Client,
    tables: Vec<Table>,
    /// Shared with the threads that read a chunk's other key ranges ([`ranges`]).
    types: std::sync::Arc<Types>,
    server_version: u32,
    /// The hot standby chunks are scanned on, when `endpoint.replica` names one.
    replica: Option<Standby>,
    /// Connections to the scanning server that read a chunk's other key ranges, each on
    /// a thread of its own ([`ranges`]), opened at the first chunk that asks for them.
    helpers: Vec<backfill_core::worker::Worker<tokio_postgres::Client>>,
    /// What the stream had delivered when the core last asked for a chunk
    /// ([`ChunkScanner::await_visible`]): a chunk's watermark is written only past it.
    delivered: Option<Lsn>,
    /// Rows per page each keyless table's last chunk found, which sizes its next chunk
    /// ([`pages_for`]). A table's first chunk of a run takes the planner's figure
    /// (`pg_class`), or for a table never analyzed the rows on its first pages that the
    /// backfill's estimate counted (`estimate_rows`).
    densities: std::collections::HashMap<backfill_core::source::TableRef, f64>,
}

/// Where a chunk's snapshot is taken, which decides how its fence and witness are read.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// The primary: the WAL insert position, and the snapshot's own `xmax` and in-progress
    /// list (module docs).
    Primary,
    /// A hot standby that had replayed `before` when the snapshot was taken: the witness is
    /// `SeesThrough(before)` and the fence the replay position after the rows (see
    /// [`crate::replica`]). `None` only when a test sabotages the proof.
    Standby { before: Option<Lsn> },
}

impl Side {
    /// The statement, inside the chunk's transaction after its rows, that reads the fence.
    fn fence_sql(self) -> &'static str {
        match self {
            Side::Primary => sql::FENCE,
            Side::Standby { .. } => sql::REPLAYED,
        }
    }
}

/// The tables read at connect (again when a chunk finds a table changed).
impl Catalog for PgSource {
    type Table = Table;

    fn tables(&self) -> &[Table] {
        &self.tables
    }
}

use crate::conn::db_error;

/// A key value as the text of a query parameter (cast to the column type in SQL).
pub(crate) fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

impl PgSource {
    /// Connects and reads the catalog.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, SourceError> {
        let client = crate::conn::connect(endpoint).await?;
        let version: i32 = client
            .query_one(sql::SERVER_VERSION, &[])
            .await
            .map_err(|e| db_error(e, "reading the server version"))?
            .get(0);
        let tables = catalog::tables(&client).await?;
        let types = std::sync::Arc::new(Types::load(&client).await?);
        let replica = Standby::connect(endpoint, &client).await?;
        Ok(Self {
            endpoint: endpoint.clone(),
            client,
            tables,
            types,
            server_version: u32::try_from(version).unwrap_or(0),
            replica,
            helpers: Vec::new(),
            delivered: None,
            densities: std::collections::HashMap::new(),
        })
    }

    /// The query connection, for `check`.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The replica's query connection, when chunks are scanned on a hot standby.
    pub fn replica_client(&self) -> Option<&Client> {
        self.replica.as_ref().map(Standby::query_client)
    }

    /// Where the next chunk's snapshot is taken: on a standby, its replay position is read
    /// first, before the snapshot (see [`crate::replica`]).
    async fn side(&self) -> Result<Side, SourceError> {
        Ok(match &self.replica {
            None => Side::Primary,
            Some(_) if crate::replica::sabotaged() => Side::Standby { before: None },
            Some(r) => Side::Standby {
                before: Some(r.replayed().await?),
            },
        })
    }

    /// The server's version number (150004 for 15.4).
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    fn xmin_filter(&self) -> String {
        let advanced = &self.endpoint.advanced;
        sql::xmin_filter(advanced.min_backfill_xid, advanced.max_backfill_xid)
    }

    async fn emit_watermark(&self) -> Result<(), SourceError> {
        if self.endpoint.advanced.read_only {
            return Ok(());
        }
        self.client
            .batch_execute(&sql::watermark(None))
            .await
            .map_err(|e| db_error(e, "emitting a watermark"))?;
        Ok(())
    }

    /// Reads the catalog and the types again: a chunk found the table's columns changed.
    async fn reload_catalog(&mut self) -> Result<(), SourceError> {
        self.tables = catalog::tables(&self.client).await?;
        self.types = std::sync::Arc::new(Types::load(&self.client).await?);
        Ok(())
    }

    /// A scan that finds the table's columns changed since the catalog was read reads the
    /// catalog again and runs once more (see `rows`).
    async fn scan_fresh(&mut self, req: ScanRequest<'_>) -> Result<Chunk<PgPosition>, SourceError> {
        for attempt in 0..2 {
            let scanned = if req.binding.scans_physically() {
                self.scan_physical(req).await?
            } else {
                self.scan_keyed(req).await?
            };
            match scanned {
                Some(chunk) => return Ok(chunk),
                None if attempt == 0 => self.reload_catalog().await?,
                None => {}
            }
        }
        Err(Failure::Interrupted.error(format!(
            "{}: its columns changed twice during one chunk",
            req.binding.table
        )))
    }

    /// One key-ordered chunk; `None` when the table's columns are not the catalog's.
    async fn scan_keyed(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<Option<Chunk<PgPosition>>, SourceError> {
        let t = self.table(&req.binding.table)?.clone();
        let key = &req.binding.key;
        let (select, ask) = rows::select_list(&t, &self.types);
        let after: Option<Vec<String>> = req.after.map(|after| {
            t.key_types(key)
                .into_iter()
                .zip(&after.0)
                .map(|(ty, v)| sql::typed(&sql::literal(&param_text(v)), ty))
                .collect()
        });
        let what = format!("scanning {}", t.table);
        let parts = self.keyed_parts(req);
        if parts > 1 {
            return self
                .scan_ranges(req, parts, (&t, &select, &ask), after.as_deref(), &what)
                .await;
        }
        let sql = sql::keyed_scan(
            &sql::relation(&t.table, t.partitioned),
            &select,
            key,
            after.as_deref(),
            &self.xmin_filter(),
            req.limits.rows,
        );
        let side = self.side().await?;
        // One round trip (see the module docs).
        let batch = self.batch(&sql, side);
        let Some(scanned) = self
            .read_batch(&batch, (&t, &ask), (req, side, Layout::Keyed), &what)
            .await?
        else {
            return Ok(None);
        };
        let (fence, witness) = scanned.fence(&what)?;
        Ok(Some(Chunk {
            complete: scanned.read == scanned.rows.len(),
            rows: scanned.rows,
            fence,
            witness,
        }))
    }

    /// The connection chunks are read on: the standby's when there is one.
    fn scanning_client(&self) -> &Client {
        match &self.replica {
            Some(r) => r.query_client(),
            None => &self.client,
        }
    }

    /// A chunk's batch on the scanning connection ([`read_chunk`]), then the watermark on
    /// the primary when the chunk was read on a standby.
    async fn read_batch(
        &self,
        batch: &str,
        (t, ask): (&Table, &[String]),
        (req, side, layout): (ScanRequest<'_>, Side, Layout),
        what: &str,
    ) -> Result<Option<Scanned>, SourceError> {
        let client = self.scanning_client();
        let scanned = read_chunk(
            client,
            (batch, At::whole(layout), None),
            (t, &self.types, ask),
            (req, side, layout),
            what,
        )
        .await;
        if scanned.is_err() {
            // A statement failed: the server skipped the rest, leaving the transaction
            // open and aborted. The run ends with the error; this leaves the session clean
            // for anything that still uses it.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        let scanned = scanned?;
        if scanned.is_some() {
            self.watermark_after(side).await?;
        }
        Ok(scanned)
    }

    /// A chunk's batch: the transaction, `statements` (rows first), the fence and witness
    /// read inside it after them, and its end ([`Self::commit_sql`]).
    fn batch(&self, statements: &str, side: Side) -> String {
        format!(
            "{}; {statements}; {}; {}",
            sql::START_SNAPSHOT,
            side.fence_sql(),
            self.commit_sql(side)
        )
    }

    /// What ends a chunk's transaction: the commit and, on the primary, the watermark in
    /// the same round trip (not in read-only mode).
    fn commit_sql(&self, side: Side) -> String {
        if !self.endpoint.advanced.read_only && matches!(side, Side::Primary) {
            format!("COMMIT; {}", sql::watermark(self.delivered))
        } else {
            "COMMIT".to_string()
        }
    }

    /// After a chunk read on a standby, the watermark on the primary, in a round trip of
    /// its own (a primary's chunk wrote it in its batch, [`Self::commit_sql`]).
    async fn watermark_after(&self, side: Side) -> Result<(), SourceError> {
        if matches!(side, Side::Primary) {
            return Ok(());
        }
        self.emit_watermark().await
    }
}

/// How a chunk's batch lays out its statements and its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `START; rows; fence; COMMIT`: rows in key order, their key read from their columns;
    /// rows past the limits are counted, not rendered.
    Keyed,
    /// `START; ctid, rows; pages; fence; COMMIT`: a page range's rows, keyed by `ctid`,
    /// all kept (the caller sorts and cuts them: a plan other than a TID range scan need
    /// not return them in page order), and the table's pages in the same snapshot.
    Physical,
}

/// What a chunk's batch read.
#[derive(Debug)]
struct Scanned {
    rows: Vec<(Key, Row)>,
    /// Rows the server sent (more than `rows` when the limits cut them).
    read: usize,
    /// The fence and witness, where the batch reads them ([`At::fence`]).
    fenced: Option<(PgPosition, SnapshotWitness<PgPosition>)>,
    /// The table's pages ([`Layout::Physical`]).
    pages: Option<u64>,
}

impl Scanned {
    /// The fence and witness a chunk's batch must have read.
    fn fence(&self, what: &str) -> Result<(PgPosition, SnapshotWitness<PgPosition>), SourceError> {
        self.fenced
            .clone()
            .ok_or_else(|| Failure::Malformed.error(format!("{what}: no fence read")))
    }
}

/// Which statement of a batch (counted from 0, `START` first) answers what.
#[derive(Clone, Copy, Debug)]
struct At {
    /// The rows.
    rows: usize,
    /// `pg_export_snapshot()`, whose answer is handed on as soon as it arrives.
    export: Option<usize>,
    /// The table's pages ([`Layout::Physical`]).
    pages: Option<usize>,
    /// The fence and witness.
    fence: Option<usize>,
}

impl At {
    /// `START; rows; [pages;] fence; COMMIT`: a chunk's whole batch.
    fn whole(layout: Layout) -> Self {
        match layout {
            Layout::Keyed => Self {
                rows: 1,
                export: None,
                pages: None,
                fence: Some(2),
            },
            Layout::Physical => Self {
                rows: 1,
                export: None,
                pages: Some(2),
                fence: Some(3),
            },
        }
    }
}

/// Sends a chunk's batch as one simple query and reads the answer as it streams in, so the
/// rows are rendered while the server is still reading; `None` when the table's columns
/// are not the catalog's. The exported snapshot's name, when `at.export` asks for one, goes
/// to `export` the moment it arrives, while the rows after it are still being read.
async fn read_chunk(
    client: &Client,
    (batch, at, mut export): (&str, At, Option<tokio::sync::oneshot::Sender<String>>),
    (t, types, ask): (&Table, &Types, &[String]),
    (req, side, layout): (ScanRequest<'_>, Side, Layout),
    what: &str,
) -> Result<Option<Scanned>, SourceError> {
    let key = &req.binding.key;
    let first = match layout {
        Layout::Keyed => 0,
        Layout::Physical => 1,
    };
    let stream = client
        .simple_query_raw(batch)
        .await
        .map_err(|e| db_error(e, what))?;
    let mut stream = std::pin::pin!(stream);
    let mut plan = None;
    let mut out = Vec::with_capacity(req.limits.rows.min(16_384));
    let (mut bytes, mut read, mut full) = (0, 0, false);
    let (mut statement, mut fenced, mut pages) = (0, None, None);
    while let Some(message) = stream.next().await {
        match message.map_err(|e| db_error(e, what))? {
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            SimpleQueryMessage::RowDescription(d) if statement == at.rows => {
                match rows::Plan::new(&d, first, t, types, ask) {
                    Some(p) => plan = Some(p),
                    None => return Ok(None),
                }
            }
            SimpleQueryMessage::Row(r) if statement == at.rows => {
                read += 1;
                // Past the limits: counted, not rendered (it only says "not complete").
                if full || (layout == Layout::Keyed && read > req.limits.rows) {
                    full = true;
                    continue;
                }
                let plan = plan.as_ref().ok_or_else(|| {
                    Failure::Malformed.error(format!("{what}: a row before its description"))
                })?;
                let row = plan
                    .row(&r, first)
                    .map_err(|e| Failure::Malformed.error(format!("{what}: {e}")))?;
                let k = match layout {
                    Layout::Keyed => Key(key
                        .iter()
                        .map(|c| row.get(c).unwrap_or(Value::Null))
                        .collect()),
                    Layout::Physical => {
                        let ctid = r.try_get(0).ok().flatten().unwrap_or_default();
                        if parse_ctid(ctid).is_none() {
                            return Err(
                                Failure::Malformed.error(format!("{what}: bad ctid {ctid:?}"))
                            );
                        }
                        Key(vec![Value::String(ctid.to_string())])
                    }
                };
                bytes += buffered_bytes(&row, &k);
                out.push((k, row));
                if layout == Layout::Keyed && bytes >= req.limits.bytes {
                    full = true;
                }
            }
            SimpleQueryMessage::Row(r) if Some(statement) == at.export => {
                let name: Option<&str> = r.try_get(0).ok().flatten();
                if let (Some(name), Some(to)) = (name, export.take()) {
                    // A receiver gone has failed, and says so itself.
                    let _ = to.send(name.to_string());
                }
            }
            SimpleQueryMessage::Row(r) if Some(statement) == at.pages => {
                pages = r
                    .try_get(0)
                    .ok()
                    .flatten()
                    .and_then(|p: &str| p.parse().ok());
            }
            SimpleQueryMessage::Row(r) if Some(statement) == at.fence => {
                fenced = Some(parse_fence(&r, side).map_err(|e| {
                    Failure::Malformed.error(format!("{what}: reading the fence: {e}"))
                })?);
            }
            _ => {}
        }
    }
    Ok(Some(Scanned {
        rows: out,
        read,
        fenced,
        pages,
    }))
}

impl PgSource {
    /// Keyless tables: ranges of heap pages in physical order; the key is the `ctid`. One
    /// round trip a range, like a keyed chunk's, with the table's pages read in the same
    /// snapshot after the rows; a range with no rows before the table's end (pages of dead
    /// rows) is followed by the next. `None` when the table's columns are not the catalog's.
    async fn scan_physical(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<Option<Chunk<PgPosition>>, SourceError> {
        let t = self.table(&req.binding.table)?.clone();
        let what = format!("scanning {}", t.table);
        let after = match req.after.and_then(|k| k.0.first()).and_then(Value::as_str) {
            Some(c) => parse_ctid(c)
                .ok_or_else(|| Failure::Malformed.error(format!("{what}: bad cursor {c:?}")))?,
            None => (0, 0),
        };
        let density: Option<f64> = match self.densities.get(&t.table) {
            Some(found) => Some(*found),
            None => self
                .client
                .query_one(&sql::rows_per_page(&t.table), &[])
                .await
                .map_err(|e| db_error(e, &what))?
                .get(0),
        };
        let pages_per_chunk = pages_for(req.limits.rows, density);
        let xmin_filter = self.xmin_filter();
        let (select, ask) = rows::select_list(&t, &self.types);
        // Ranges of pages at once: at most one a page ([`ranges`]).
        let parts = usize::try_from(pages_per_chunk)
            .unwrap_or(usize::MAX)
            .min(req.binding.ranges)
            .max(1);
        let mut start = after;
        loop {
            let end_page = start.0 + pages_per_chunk;
            let scanned = if parts > 1 {
                self.read_pages_in_ranges(req, parts, (&t, &select, &ask), (start, end_page), &what)
                    .await?
            } else {
                let side = self.side().await?;
                let statements = format!(
                    "{}; {}",
                    sql::page_scan(&t.table, &select, start, end_page, &xmin_filter),
                    sql::relation_pages(&t.table)
                );
                let batch = self.batch(&statements, side);
                self.read_batch(&batch, (&t, &ask), (req, side, Layout::Physical), &what)
                    .await?
            };
            let Some(mut scanned) = scanned else {
                return Ok(None);
            };
            let relpages = scanned.pages.ok_or_else(|| {
                Failure::Malformed.error(format!("{what}: the table's pages were not read"))
            })?;
            if scanned.rows.is_empty() && end_page < relpages {
                start = (end_page, 0);
                continue;
            }
            if let Some(found) = observed_density(scanned.read, start, end_page.min(relpages)) {
                match self.densities.get_mut(&t.table) {
                    Some(known) => *known = found,
                    None => {
                        self.densities.insert(t.table.clone(), found);
                    }
                }
            }
            let at = |k: &Key| {
                k.0.first()
                    .and_then(Value::as_str)
                    .and_then(parse_ctid)
                    .unwrap_or_default()
            };
            // A TID range scan returns page order: checked once, sorted only otherwise.
            if !scanned.rows.is_sorted_by_key(|(k, _)| at(k)) {
                scanned.rows.sort_by_cached_key(|(k, _)| at(k));
            }
            let truncated = scanned.rows.len() > req.limits.rows;
            scanned.rows.truncate(req.limits.rows);
            let (fence, witness) = scanned.fence(&what)?;
            return Ok(Some(Chunk {
                rows: scanned.rows,
                complete: !truncated && end_page >= relpages,
                fence,
                witness,
            }));
        }
    }
}

/// Pages a physical chunk reads for about `rows` rows, at the table's rows per page as
/// last found (`PgSource::densities`; 32 when nothing is known). A little under: rows past
/// the chunk's bound are read for nothing (the next chunk reads them again), and at a
/// guess of 32 rows a page a table of 45 read two rows in five twice, which made keyless
/// backfills half as fast as keyed ones.
fn pages_for(rows: usize, rows_per_page: Option<f64>) -> u64 {
    let density = rows_per_page.filter(|d| *d > 0.0).unwrap_or(32.0);
    // At most a chunk's rows, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let pages = (rows as f64 * 0.9 / density).floor() as u64;
    pages.max(1)
}

/// Rows per page a physical chunk found: `read` rows from tuple `start` up to page `end`.
/// `None` for a chunk too small to say (under a page or no rows): the last figure stays.
/// The first page counts whole although the chunk read only its tuples after `start`, so
/// the figure errs low, the side [`pages_for`] wants.
fn observed_density(read: usize, start: (u64, u64), end: u64) -> Option<f64> {
    let pages = end.checked_sub(start.0).filter(|p| *p > 0)?;
    // Counts far under 2^52: exact as floats.
    #[allow(clippy::cast_precision_loss)]
    (read > 0).then(|| read as f64 / pages as f64)
}

/// The fence and witness from the row of the side's fence statement.
fn parse_fence(
    row: &tokio_postgres::SimpleQueryRow,
    side: Side,
) -> Result<(PgPosition, SnapshotWitness<PgPosition>), String> {
    let field = |i: usize| -> Result<&str, String> {
        row.try_get(i)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("column {i} is null"))
    };
    let lsn: Lsn = field(0)?.parse()?;
    if let Side::Standby { before } = side {
        let witness = before.map_or(SnapshotWitness::Proven, |lsn| {
            SnapshotWitness::SeesThrough(PgPosition { lsn })
        });
        return Ok((PgPosition { lsn }, witness));
    }
    let xmax = field(1)?;
    let xmax: u64 = xmax.parse().map_err(|e| format!("xmax {xmax:?}: {e}"))?;
    let in_progress = field(2)?
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u64>().map_err(|e| format!("xip {x:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        PgPosition { lsn },
        SnapshotWitness::Mvcc { xmax, in_progress },
    ))
}

/// `(12,3)` → (12, 3).
///
/// By hand over the bytes: a keyless backfill parses every row's `ctid` a few times (its
/// check, the page order, the merger's key order), and `split_once` and `str::parse` took
/// 8% of the connector's samples there.
pub(crate) fn parse_ctid(s: &str) -> Option<(u64, u64)> {
    let inner = s.as_bytes().strip_prefix(b"(")?.strip_suffix(b")")?;
    let comma = inner.iter().position(|&b| b == b',')?;
    let number = |digits: &[u8]| -> Option<u64> {
        // A block number and a tuple offset are 32 and 16 bits: 10 digits at most.
        if digits.is_empty() || digits.len() > 10 {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    Some((number(&inner[..comma])?, number(&inner[comma + 1..])?))
}

impl ChunkScanner for PgSource {
    type Position = PgPosition;

    /// Exported snapshots ([`ranges`]), keyed and keyless tables alike.
    fn reads_in_parts(&self, _binding: &BindingSpec) -> bool {
        true
    }

    /// On a standby, a chunk cancelled by a recovery conflict is scanned again (see
    /// [`crate::replica`]).
    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<PgPosition>, SourceError> {
        let mut conflicts = 0;
        loop {
            match self.scan_fresh(req).await {
                Err(e) if self.replica.is_some() && crate::replica::is_recovery_conflict(&e) => {
                    conflicts += 1;
                    if conflicts > crate::replica::CONFLICT_RETRIES {
                        return Err(e);
                    }
                    tracing::warn!(table = %req.binding.table, conflicts, "a chunk was cancelled on the replica ({e}); scanning it again");
                    tokio::time::sleep(std::time::Duration::from_millis(
                        100 * u64::from(conflicts),
                    ))
                    .await;
                }
                Err(e) if self.replica.is_some() && crate::replica::lacks_a_table_yet(&e) => {
                    let text =
                        format!("{e}; the replica has not replayed the table's creation yet");
                    return Err(Failure::Interrupted.error(text).because(e));
                }
                scanned => return scanned,
            }
        }
    }

    /// On a standby, waits until it has replayed what the stream delivered.
    async fn await_visible(&mut self, delivered: &PgPosition) -> Result<(), SourceError> {
        self.delivered = Some(delivered.lsn);
        match &mut self.replica {
            Some(r) if !crate::replica::sabotaged() => r.await_replayed(delivered.lsn).await,
            _ => Ok(()),
        }
    }

    /// The planner's row count (`reltuples`); for a table never analyzed (a table just
    /// created and loaded, before autovacuum's analyze), its pages times the rows on its
    /// first pages, which a TID range scan reads alone (PostgreSQL 14+). Those two take
    /// the table's lock: they give up after [`sql::ESTIMATE_LOCK_TIMEOUT`] (no estimate)
    /// rather than hold the backfill, whose scan then waits for the lock itself.
    async fn estimate_rows(&mut self, binding: &BindingSpec) -> Option<u64> {
        let t = self.table(&binding.table).ok()?.clone();
        // A partitioned table's rows are its partitions': the sum of theirs, where
        // analyzed; it has no pages of its own to sample.
        let planner = if t.partitioned {
            sql::ESTIMATE_PARTITIONED_ROWS
        } else {
            sql::ESTIMATE_ROWS
        };
        let analyzed: Option<i64> = self.client.query_one(planner, &[&t.oid]).await.ok()?.get(0);
        if analyzed.is_some() || t.partitioned {
            return analyzed.and_then(|rows| u64::try_from(rows).ok());
        }
        if self.server_version < 140_000 {
            return None;
        }
        // Dropped without a commit on any error: rolled back.
        let tx = self.client.transaction().await.ok()?;
        tx.batch_execute(sql::ESTIMATE_LOCK_TIMEOUT).await.ok()?;
        let pages: i64 = tx
            .query_one(sql::RELATION_PAGES_BY_OID, &[&t.oid])
            .await
            .ok()?
            .get(0);
        if pages == 0 {
            return Some(0);
        }
        let sampled = pages.min(sql::SAMPLED_PAGES);
        let counted: i64 = tx
            .query_one(&sql::rows_on_first_pages(&t.table, sampled), &[])
            .await
            .ok()?
            .get(0);
        tx.commit().await.ok()?;
        if binding.scans_physically() && counted > 0 {
            // The same sample sizes the first chunk's pages (see `densities`).
            #[allow(clippy::cast_precision_loss)]
            self.densities
                .insert(t.table.clone(), counted as f64 / sampled as f64);
        }
        u64::try_from(counted.saturating_mul(pages) / sampled).ok()
    }
}

impl KeyClassifier for PgSource {
    fn compare_native(&self, binding: &BindingSpec, a: &Key, b: &Key) -> Option<Ordering> {
        if binding.scans_physically() {
            let p = |k: &Key| k.0.first().and_then(Value::as_str).and_then(parse_ctid);
            return Some(p(a)?.cmp(&p(b)?));
        }
        // Once per key pair of every chunk (the merger checks the scan's order): no
        // allocation here.
        self.compare_by_column(binding, a, b, |c, x, y| {
            catalog::compare_native(catalog::native_order(c)?, x, y)
        })
    }

    async fn classify_in_database(
        &mut self,
        ClassifyBatch {
            binding,
            window,
            keys,
        }: ClassifyBatch<'_>,
    ) -> Result<Vec<Region>, SourceError> {
        // Ask the server: one query for the whole batch, in the key columns' collations.
        let t = self.table(&binding.table)?.clone();
        let n = binding.key.len();
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
        for i in 0..n {
            let col: Vec<String> = keys
                .iter()
                .map(|k| k.0.get(i).map(param_text).unwrap_or_default())
                .collect();
            params.push(Box::new(col));
        }
        let hi = match window.hi {
            Hi::Key(h) => Some(h),
            Hi::Empty | Hi::Unbounded => None,
        };
        for bound in [window.lo, hi].into_iter().flatten() {
            for i in 0..n {
                params.push(Box::new(bound.0.get(i).map(param_text).unwrap_or_default()));
            }
        }
        let sql = sql::classify(
            &t.key_types(&binding.key),
            window.lo.is_some(),
            hi.is_some(),
        );
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        let rows = self
            .client
            .query(&sql, &refs)
            .await
            .map_err(|e| db_error(e, "classifying keys"))?;
        rows.iter()
            .map(|r| {
                let above = |i: usize| {
                    r.try_get::<_, Option<bool>>(i)
                        .map(|b| b.unwrap_or(false))
                        .map_err(|e| db_error(e, "classifying keys"))
                };
                Ok(window.region_from(above(0)?, above(1)?))
            })
            .collect()
    }
}

impl Source for PgSource {
    type Stream = PgStream;

    async fn open_stream(
        &mut self,
        start: StreamStart<PgPosition>,
        bindings: &[BindingSpec],
    ) -> Result<(PgStream, PgPosition), SourceError> {
        self.ensure_publication(bindings).await?;
        let slot = self.endpoint.slot.clone();
        let existing = self.slot_state(&slot).await?;
        let read_only = self.endpoint.advanced.read_only;
        let lost = |why: String| {
            Failure::Lost.error(format!(
                "{why}: the stream position is lost. Raise `backfill` for every binding to re-establish it (and re-read the tables)"
            ))
        };
        let mut repl = ReplicationConn::connect(&self.endpoint).await?;
        let start_lsn = match (start, existing) {
            (StreamStart::Resume(_), None) => {
                return Err(lost(format!("replication slot {slot:?} does not exist")));
            }
            (StreamStart::Resume(p), Some(s)) => {
                if s.lost {
                    return Err(lost(format!(
                        "replication slot {slot:?} was invalidated (max_slot_wal_keep_size exceeded)"
                    )));
                }
                if s.confirmed > p.lsn {
                    return Err(lost(format!(
                        "replication slot {slot:?} has confirmed {} but the state resumes at {}",
                        s.confirmed, p.lsn
                    )));
                }
                p.lsn
            }
            (StreamStart::Fresh, Some(s)) if !s.lost => s.confirmed,
            (StreamStart::Reset | StreamStart::Fresh, existing) => {
                if existing.is_some() {
                    if read_only {
                        return Err(Failure::Setup.error(format!(
                            "every backfill counter was raised, which recreates slot {slot:?}, but endpoint.advanced.read_only is set; drop and recreate it by hand"
                        )));
                    }
                    self.client
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await
                        .map_err(|e| db_error(e, &format!("dropping replication slot {slot:?}")))?;
                }
                if read_only {
                    return Err(Failure::Setup.error(format!(
                        "replication slot {slot:?} does not exist and endpoint.advanced.read_only is set; create it: SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                    )));
                }
                let rows = repl
                    .simple_query(&format!(
                        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                        sql::quote(&slot)
                    ))
                    .await?;
                let point = rows
                    .first()
                    .and_then(|r| r.get(1))
                    .cloned()
                    .flatten()
                    .ok_or_else(|| {
                        Failure::Malformed
                            .error("CREATE_REPLICATION_SLOT returned no consistent point")
                    })?;
                tracing::info!(slot = %slot, consistent_point = %point, "created replication slot");
                point.parse().map_err(|e| Failure::Setup.error(e))?
            }
        };
        self.wait_for_running_transactions().await?;
        let xid_ref: i64 = self
            .client
            .query_one("SELECT txid_snapshot_xmax(txid_current_snapshot())", &[])
            .await
            .map_err(|e| db_error(e, "reading the transaction horizon"))?
            .get(0);
        repl.start_replication(
            &slot,
            start_lsn,
            &[
                ("proto_version", "1"),
                ("publication_names", self.endpoint.publication.as_str()),
            ],
        )
        .await?;
        let stream = PgStream::new(
            repl,
            crate::conn::connect(&self.endpoint).await?,
            (*self.types).clone(),
            bindings,
            bindings
                .iter()
                .filter_map(|b| {
                    self.tables.iter().find(|t| t.table == b.table).map(|t| {
                        let columns = t.columns.iter().map(|c| c.name.clone());
                        let bound = crate::stream::BoundTable {
                            binding: b.index,
                            columns: columns.chain(t.generated.iter().cloned()).collect(),
                        };
                        (t.oid, bound)
                    })
                })
                .collect(),
            start_lsn,
            u64::try_from(xid_ref).unwrap_or(0),
            self.endpoint.heartbeat(),
        );
        Ok((stream, PgPosition { lsn: start_lsn }))
    }

    async fn end_position(&mut self) -> Result<PgPosition, SourceError> {
        let lsn: String = self
            .client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(|e| db_error(e, "reading the WAL position"))?
            .get(0);
        self.emit_watermark().await?;
        Ok(PgPosition {
            lsn: lsn.parse().map_err(|e| Failure::Setup.error(e))?,
        })
    }
}

#[derive(Debug)]
struct SlotState {
    confirmed: Lsn,
    lost: bool,
}

impl PgSource {
    async fn slot_state(&self, slot: &str) -> Result<Option<SlotState>, SourceError> {
        let wal_status = if self.server_version >= 130_000 {
            "wal_status::text"
        } else {
            "NULL::text"
        };
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT COALESCE(confirmed_flush_lsn, restart_lsn)::text, {wal_status}, plugin::text, database::text = current_database()
                       FROM pg_replication_slots WHERE slot_name = $1"
                ),
                &[&slot],
            )
            .await
            .map_err(|e| db_error(e, "reading pg_replication_slots"))?;
        let Some(row) = row else { return Ok(None) };
        let plugin: Option<String> = row.get(2);
        let same_db: Option<bool> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
            return Err(Failure::Setup.error(format!(
                "replication slot {slot:?} exists but is not a pgoutput slot of this database; choose another endpoint.slot"
            )));
        }
        let confirmed: Option<String> = row.get(0);
        let status: Option<String> = row.get(1);
        Ok(Some(SlotState {
            confirmed: confirmed
                .as_deref()
                .unwrap_or("0/0")
                .parse()
                .map_err(|e| Failure::Setup.error(e))?,
            lost: status.as_deref() == Some("lost") || confirmed.is_none(),
        }))
    }

    /// Waits until every transaction running now has finished, so that everything before
    /// the stream's start is visible to later snapshots (the promise of `open_stream`).
    async fn wait_for_running_transactions(&self) -> Result<(), SourceError> {
        let horizon: i64 = self
            .client
            .query_one("SELECT txid_snapshot_xmax(txid_current_snapshot())", &[])
            .await
            .map_err(|e| db_error(e, "reading the transaction horizon"))?
            .get(0);
        let started = std::time::Instant::now();
        let mut warned = 0;
        loop {
            let xmin: i64 = self
                .client
                .query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())", &[])
                .await
                .map_err(|e| db_error(e, "reading the transaction horizon"))?
                .get(0);
            if xmin >= horizon {
                return Ok(());
            }
            let waited = started.elapsed().as_secs();
            if waited / 10 > warned {
                warned = waited / 10;
                tracing::warn!(
                    waited_s = waited,
                    "waiting for transactions that were running at start to finish (see pg_stat_activity)"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn ensure_publication(&self, bindings: &[BindingSpec]) -> Result<(), SourceError> {
        let publication = &self.endpoint.publication;
        let read_only = self.endpoint.advanced.read_only;
        let via_root = self.server_version >= 130_000;
        let mut partitioned = false;
        for b in bindings {
            let t = self.table(&b.table)?;
            if let Some(why) = t.unstreamable() {
                return Err(Failure::Setup.error(why));
            }
            partitioned |= t.partitioned;
            if b.scans_physically() && t.partitioned {
                return Err(Failure::Setup.error(format!(
                    "{} is partitioned and has no key: its partitions cannot be read by ctid as one table; add a primary key (it includes the partition key)",
                    b.table
                )));
            }
            if b.scans_physically() && t.replica_identity != 'f' {
                return Err(Failure::Setup.error(format!(
                    "{} has no primary key and needs REPLICA IDENTITY FULL so its updates and deletes carry the old row: {}",
                    b.table,
                    sql::replica_identity_full(&t.table)
                )));
            }
        }
        let exists = self
            .client
            .query_opt(
                if via_root {
                    "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1"
                } else {
                    "SELECT puballtables, false FROM pg_publication WHERE pubname = $1"
                },
                &[publication],
            )
            .await
            .map_err(|e| db_error(e, "reading pg_publication"))?;
        let sql = sql::create_publication(publication, bindings.iter().map(|b| &b.table), via_root);
        // A partitioned table's changes must come as its own, not its partitions'.
        if exists
            .as_ref()
            .is_some_and(|r| partitioned && !r.get::<_, bool>(1))
        {
            let alter = sql::publish_via_root(publication);
            if read_only || !via_root {
                return Err(Failure::Setup.error(format!(
                    "publication {publication:?} publishes a partitioned table's changes under its partitions' names; {}",
                    if via_root { alter } else { "PostgreSQL 13 or later is needed".into() }
                )));
            }
            self.client
                .batch_execute(&alter)
                .await
                .map_err(|e| db_error(e, &format!("altering publication {publication:?}")))?;
            tracing::warn!(publication = %publication, "set publish_via_partition_root = true for the bound partitioned tables");
        }
        if exists.is_some() {
            let tables: Vec<TableRef> = bindings.iter().map(|b| b.table.clone()).collect();
            let defects =
                publication_defects(&self.client, publication, self.server_version, &tables)
                    .await?;
            if !defects.is_empty() {
                return Err(Failure::Setup.error(defects.join("; ")));
            }
        }
        match exists {
            None if read_only => Err(Failure::Setup.error(format!(
                "publication {publication:?} does not exist and endpoint.advanced.read_only is set; create it: {sql}"
            ))),
            None => {
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| db_error(e, &format!("creating publication {publication:?}")))?;
                tracing::info!(publication = %publication, "created publication");
                Ok(())
            }
            Some(row) if row.get::<_, bool>(0) => Ok(()),
            Some(_) => {
                let published: Vec<(String, String)> = self
                    .client
                    .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[publication])
                    .await
                    .map_err(|e| db_error(e, "reading pg_publication_tables"))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let missing: Vec<String> = bindings
                    .iter()
                    .filter(|b| {
                        !published.contains(&(b.table.namespace.clone(), b.table.stream.clone()))
                    })
                    .map(|b| sql::qualified(&b.table))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                let list = missing.join(", ");
                if read_only {
                    return Err(Failure::Setup.error(format!(
                        "publication {publication:?} lacks {list} and endpoint.advanced.read_only is set: {}",
                        sql::add_to_publication(publication, &list)
                    )));
                }
                self.client
                    .batch_execute(&sql::add_to_publication(publication, &list))
                    .await
                    .map_err(|e| {
                        db_error(e, &format!("adding {list} to publication {publication:?}"))
                    })?;
                Ok(())
            }
        }
    }
}

/// What an existing publication leaves out of the bound tables' changes, each with the
/// statement that mends it: an operation it does not publish (`publish = 'insert'`), and
/// (PostgreSQL 15+) a row filter or column list on a bound table. The backfill reads the
/// tables whole, so their later changes would miss rows, columns or kinds of change, and
/// the tables downstream would go stale without a word.
pub async fn publication_defects(
    client: &Client,
    publication: &str,
    server_version: u32,
    tables: &[TableRef],
) -> Result<Vec<String>, SourceError> {
    let mut defects = Vec::new();
    let published = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| db_error(e, "reading pg_publication"))?;
    if published.is_some_and(|r| !r.get::<_, bool>(0)) {
        defects.push(format!(
            "publication {publication:?} does not publish every kind of change: ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
            sql::quote(publication)
        ));
    }
    if server_version >= 150_000 {
        let filtered = client
            .query(
                "SELECT n.nspname::text, c.relname::text, pr.prqual IS NOT NULL, pr.prattrs IS NOT NULL
                   FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE p.pubname = $1 AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)",
                &[&publication],
            )
            .await
            .map_err(|e| db_error(e, "reading pg_publication_rel"))?;
        for r in &filtered {
            let table = TableRef::new(r.get::<_, String>(0), r.get::<_, String>(1));
            if !tables.contains(&table) {
                continue;
            }
            let what = match (r.get::<_, bool>(2), r.get::<_, bool>(3)) {
                (true, true) => "some rows (a WHERE clause) and some columns",
                (true, false) => "some rows (a WHERE clause)",
                _ => "some columns",
            };
            defects.push(format!(
                "publication {publication:?} publishes only {what} of {table}, which the backfill reads whole: ALTER PUBLICATION {} SET TABLE {} (with the other tables it publishes), or bind a publication without filters",
                sql::quote(publication),
                sql::qualified(&table)
            ));
        }
    }
    Ok(defects)
}

#[cfg(test)]
mod tests {
    use super::{observed_density, pages_for, parse_ctid};

    #[test]
    fn a_ctid_is_parsed_and_anything_else_refused() {
        assert_eq!(parse_ctid("(0,1)"), Some((0, 1)));
        assert_eq!(
            parse_ctid("(4294967295,65535)"),
            Some((4_294_967_295, 65_535))
        );
        for bad in [
            "",
            "()",
            "(1)",
            "(1,)",
            "(,1)",
            "1,2",
            "(1,2",
            "(a,2)",
            "(1,2,3)",
            "(-1,2)",
            "( 1,2)",
            "(12345678901,1)",
        ] {
            assert_eq!(parse_ctid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_physical_chunk_learns_its_tables_rows_per_page() {
        // 5,000 rows from pages 10 to 38.
        assert_eq!(observed_density(5_000, (10, 0), 38), Some(5_000.0 / 28.0));
        // From inside page 10: the page counts whole, the figure errs low.
        assert_eq!(observed_density(100, (10, 7), 11), Some(100.0));
        // Nothing to learn from no rows (dead pages) or no whole page.
        assert_eq!(observed_density(0, (10, 0), 38), None);
        assert_eq!(observed_density(5, (10, 3), 10), None);
    }

    #[test]
    fn a_physical_chunk_reads_pages_for_a_little_under_its_rows() {
        // 45 rows a page: 200 pages hold 9,000 rows, none read twice.
        assert_eq!(pages_for(10_000, Some(45.0)), 200);
        // Never analyzed: the old guess of 32 rows a page.
        assert_eq!(pages_for(10_000, None), 281);
        // Sparse pages (dead rows, wide rows): more of them.
        assert_eq!(pages_for(1_000, Some(0.5)), 1_800);
        // At least one page.
        assert_eq!(pages_for(10, Some(500.0)), 1);
    }
}
