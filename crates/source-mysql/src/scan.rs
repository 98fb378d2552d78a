//! The MariaDB and MySQL source: discovery, key-ordered chunks in consistent snapshots, key
//! classification by the server, and opening the binlog stream.
//!
//! ## Chunks, fences and the witness (MariaDB)
//!
//! ```text
//! START TRANSACTION WITH CONSISTENT SNAPSHOT
//!   SHOW STATUS LIKE 'binlog_snapshot_%'        -- the snapshot's exact binlog position P
//!   SELECT ... WHERE (k) > (cursor) ORDER BY k LIMIT n+1
//! COMMIT
//! ```
//!
//! MariaDB takes the snapshot and reads the binlog position under the same lock, so the
//! snapshot sees exactly the transactions whose commit is at or before P. P is therefore
//! both the fence (every visible transaction commits at or before it) and the witness
//! ([`SnapshotWitness::SeesThrough`]): the core rescans until P is at or past what the
//! stream delivered, which is how InnoDB's write-binlog-then-commit gap is closed.
//!
//! ## Chunks, fences and the wait (MySQL 8.0+)
//!
//! MySQL has no `binlog_snapshot_*`, and it too writes a transaction to the binlog (and
//! the stream may deliver it) before the engine commits it, so a snapshot taken just then
//! would miss a delivered change. What MySQL does expose is the order of the other end:
//! a GTID enters `@@gtid_executed` only after its transaction's engine commit. So:
//!
//! ```text
//!   stream reads GTID g  ──►  read_through ∪= {g}          (shared with the source)
//!   SELECT WAIT_FOR_EXECUTED_GTID_SET(read_through, 30)   -- every g committed: visible
//!   START TRANSACTION WITH CONSISTENT SNAPSHOT
//!   SELECT ... WHERE (k) > (cursor) ORDER BY k LIMIT n+1
//!   SHOW BINARY LOG STATUS                                 -- the fence F
//!   COMMIT
//! ```
//!
//! Every transaction the stream has read (a superset of what it delivered) is committed
//! before the snapshot is taken, so the snapshot sees it: the fence-ordering invariant,
//! established here ([`SnapshotWitness::Proven`]). A transaction visible in the snapshot
//! committed before the binlog position read after the scan, so that position is a fence.
//! Without `gtid_mode=ON` there is no such witness: MySQL backfills then stop with the
//! setting to change, and Only Changes bindings run as they do anywhere. The stream's
//! side of this (the start, and transactions logged but not yet committed when it was
//! read) is in [`crate::stream`].

use std::cmp::Ordering;

use backfill_core::catalog::{Catalog, CatalogTable};
use backfill_core::key::{Hi, Key, Region};
use backfill_core::source::{
    BindingSpec, Chunk, ChunkLimits, ChunkScanner, ClassifyBatch, KeyClassifier, Row, ScanRequest,
    SnapshotWitness, Source, StreamStart, buffered_bytes,
};
use backfill_core::{Failure, SourceError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};
use serde_json::Value;

use crate::catalog::{Column, Table, load_tables};
use crate::conn::{Flavor, Server, connect, connect_to, my_error};
use crate::endpoint::Endpoint;
use crate::position::{BinlogPosition, GtidSet, GtidState, Gtids};
use crate::replica::Replica;
use crate::sql;
use crate::stream::{MyStream, ensure_binlog_settings};
use crate::value::{ColType, Origin, key_value, render};

mod ranges;

fn purged(file: &str) -> SourceError {
    Failure::Lost.error(format!(
        "binlog file {file} was purged: the stream position is lost. Raise `backfill` for every binding to re-establish it (and keep binlogs longer: binlog_expire_logs_seconds)"
    ))
}

/// A keyless table read in one consistent snapshot, chunk by chunk: one query over the
/// whole table, whose rows a task streams to the scanner through a bounded channel. (A
/// query per chunk paged by OFFSET would read every earlier row again: quadratic.)
#[derive(Debug)]
struct KeylessScan {
    binding: usize,
    position: BinlogPosition,
    rows: tokio::sync::mpsc::Receiver<Result<mysql_async::Row, SourceError>>,
    /// The row received to learn that the last chunk was not the table's end.
    peeked: Option<mysql_async::Row>,
    /// Rows handed out so far: the next row's ordinal (its key) is this + 1.
    read: u64,
}

impl KeylessScan {
    /// The next `limit` rows of `t` at most, keyed by their ordinal, and whether they end
    /// the table.
    async fn next_chunk(
        &mut self,
        t: &Table,
        limit: usize,
    ) -> Result<(Vec<(Key, Row)>, bool), SourceError> {
        let mut out = Vec::with_capacity(limit.min(KEYLESS_AHEAD));
        while out.len() < limit {
            let next = match self.peeked.take() {
                Some(row) => Some(row),
                None => self.rows.recv().await.transpose()?,
            };
            let Some(r) = next else { break };
            self.read += 1;
            out.push((
                Key(vec![Value::from(self.read)]),
                MySource::row_from(t, &r.unwrap())?,
            ));
        }
        let complete = out.len() < limit
            || match self.rows.recv().await.transpose()? {
                Some(row) => {
                    self.peeked = Some(row);
                    false
                }
                None => true,
            };
        Ok((out, complete))
    }
}

/// Rows a keyless scan's task reads ahead of the scanner, at most.
const KEYLESS_AHEAD: usize = 1024;

/// The task of a keyless scan: streams the rows of `query` (run on `conn`, inside its
/// snapshot) into `tx` until the table ends, a read fails, or the scanner hangs up.
async fn stream_keyless(
    mut conn: Conn,
    query: String,
    tx: tokio::sync::mpsc::Sender<Result<mysql_async::Row, SourceError>>,
    what: String,
) {
    // A prepared statement, like the keyed scan's: the binary protocol is the one the
    // value table renders from.
    let mut result = match conn.exec_iter(query.as_str(), ()).await {
        Ok(result) => result,
        Err(e) => {
            let _ = tx.send(Err(my_error(e, &what))).await;
            return;
        }
    };
    loop {
        let next = match result.next().await {
            Ok(Some(row)) => Ok(row),
            Ok(None) => return,
            Err(e) => Err(my_error(e, &what)),
        };
        let failed = next.is_err();
        if tx.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// What one keyed read returned: its rows up to the limits, how many the server sent
/// (more than `rows` when the limits cut the read), and the snapshot's own binlog position
/// where it names one.
#[derive(Debug)]
pub(crate) struct KeyedRead {
    rows: Vec<(Key, Row)>,
    read: usize,
    seen_through: Option<BinlogPosition>,
}

/// Reads `statement` in a consistent snapshot of its own on `conn` (`start`: whether it
/// names its binlog position, and the history's `file_base`), renders the rows of `t` as
/// they arrive, up to `limits` (any after them are read and dropped: they only say the
/// read was cut), and commits.
pub(crate) async fn read_keyed(
    conn: &mut Conn,
    (exact, file_base): (bool, u64),
    (statement, params): (&str, Vec<MyValue>),
    (t, key): (&Table, &[String]),
    limits: ChunkLimits,
    what: &str,
) -> Result<KeyedRead, SourceError> {
    let seen_through = MySource::start_snapshot(conn, exact, file_base, what).await?;
    // Each key column's place among the selected ones, for [`key_value`].
    let key_at: Vec<Option<(usize, &Column)>> = key
        .iter()
        .map(|k| Some((t.columns.iter().position(|c| &c.name == k)?, t.column(k)?)))
        .collect();
    let mut rows = Vec::new();
    let (mut read, mut bytes) = (0, 0);
    let mut result = conn
        .exec_iter(statement, params)
        .await
        .map_err(|e| my_error(e, what))?;
    while let Some(r) = result.next().await.map_err(|e| my_error(e, what))? {
        read += 1;
        if read > limits.rows || bytes >= limits.bytes {
            continue;
        }
        let values = r.unwrap();
        let row = MySource::row_from(t, &values)?;
        let key = key_of(key, &key_at, &values, &row);
        bytes += buffered_bytes(&row, &key);
        rows.push((key, row));
    }
    drop(result);
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| my_error(e, what))?;
    Ok(KeyedRead {
        rows,
        read,
        seen_through,
    })
}

/// The connection chunks are read on: the replica's when there is one, else `primary`.
/// (Fields, not `&mut self`: the chunk's other ranges are read on workers borrowed beside
/// it.)
pub(crate) fn scanning<'a>(
    replica: &'a mut Option<Replica>,
    primary: &'a mut Conn,
) -> &'a mut Conn {
    match replica {
        Some(r) => r.conn(),
        None => primary,
    }
}

/// A row of `values` selected as `columns` of `t`, in order.
pub(crate) fn render_columns<'a>(
    t: &Table,
    columns: impl IntoIterator<Item = &'a Column>,
    values: &[MyValue],
) -> Result<Row, SourceError> {
    let mut row = Row::with_capacity(values.len(), 256 + 16 * values.len());
    for (c, v) in columns.into_iter().zip(values) {
        render(&c.ty, v, Origin::Query, &mut row, &c.quoted)
            .map_err(|e| Failure::Malformed.error(format!("{} column {}: {e}", t.table, c.name)))?;
    }
    Ok(row)
}

/// The key of a row read as `values` and rendered as `row`: each key column's value read
/// from `values` where that is exact ([`key_value`], at its place `key_at`), its rendered
/// text otherwise.
pub(crate) fn key_of(
    key: &[String],
    key_at: &[Option<(usize, &Column)>],
    values: &[MyValue],
    row: &Row,
) -> Key {
    Key(key
        .iter()
        .zip(key_at)
        .map(|(k, at)| {
            let read = at.and_then(|(i, c)| key_value(&c.ty, values.get(i)?));
            // Debug builds (the suites') check the shortcut against the text.
            debug_assert!(read.is_none() || read == row.get(k));
            read.or_else(|| row.get(k)).unwrap_or(Value::Null)
        })
        .collect())
}

/// The MariaDB and MySQL source.
#[derive(Debug)]
pub struct MySource {
    endpoint: Endpoint,
    server: Server,
    conn: Conn,
    tables: Vec<Table>,
    keyless: Option<KeylessScan>,
    /// The binlog history's `file_base` (see [`crate::position`]), set when the stream opens.
    file_base: u64,
    /// The replica chunks are scanned on, when `endpoint.replica` names one.
    replica: Option<Replica>,
    /// What the stream had delivered when the core last asked for a scan, for the
    /// replica's wait (see [`crate::replica`]).
    awaited: Option<BinlogPosition>,
    /// The connections that read a chunk's other key ranges ([`ranges`]).
    helpers: Vec<backfill_core::worker::Worker<Conn>>,
}

/// The tables read at connect, and again at a backfill's first chunk after a DDL.
impl Catalog for MySource {
    type Table = Table;

    fn tables(&self) -> &[Table] {
        &self.tables
    }
}

impl MySource {
    /// Connects, refuses servers it cannot capture correctly, and reads the catalog.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, SourceError> {
        let mut conn = connect(endpoint).await?;
        let server = Server::probe(&mut conn).await?;
        let tables = load_tables(&mut conn).await?;
        let replica = Replica::connect(endpoint, &mut conn, server.flavor).await?;
        Ok(Self {
            endpoint: endpoint.clone(),
            server,
            conn,
            tables,
            keyless: None,
            file_base: 0,
            replica,
            awaited: None,
            helpers: Vec::new(),
        })
    }

    /// The query connection, for `check`.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The server's flavor and GTID mode.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The replica's query connection, when chunks are scanned on a replica.
    pub fn replica_conn(&mut self) -> Option<&mut Conn> {
        self.replica.as_mut().map(Replica::conn)
    }

    /// MySQL: makes every transaction the stream has read visible to a snapshot taken
    /// next (see the module docs); a backfill without GTIDs stops with the setting. On a
    /// replica, both flavors wait there for what the stream delivered ([`crate::replica`]).
    async fn before_snapshot(&mut self, what: &str) -> Result<(), SourceError> {
        if self.server.flavor == Flavor::MySql && !self.server.gtid_mode {
            return Err(Failure::Setup.error(format!(
                "{what}: a MySQL backfill needs gtid_mode=ON, the only way the connector can prove a chunk's snapshot sees every change already streamed. Set enforce_gtid_consistency=ON and gtid_mode=ON (online: OFF_PERMISSIVE, ON_PERMISSIVE, then ON), or give the binding `\"mode\": \"Only Changes\"`"
            )));
        }
        if self.replica.is_some() {
            return self.await_replica(what).await;
        }
        if self.server.flavor == Flavor::MariaDb {
            return Ok(());
        }
        let set = self.read_through();
        let timed_out: Option<i64> = self
            .conn
            .exec_first(sql::WAIT_FOR_GTIDS, (set,))
            .await
            .map_err(|e| my_error(e, what))?;
        if timed_out != Some(0) {
            return Err(Failure::Interrupted.error(format!(
                "{what}: the server did not commit, within 30 s, transactions its binlog already holds"
            )));
        }
        Ok(())
    }

    /// Every GTID the stream has read (MySQL).
    fn read_through(&self) -> String {
        self.server
            .read_through
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_string()
    }

    /// Waits until the replica has committed what the stream delivered: MariaDB's GTID
    /// state of that position, MySQL's GTIDs read so far (see [`crate::replica`]).
    async fn await_replica(&mut self, what: &str) -> Result<(), SourceError> {
        if crate::replica::sabotaged() {
            return Ok(());
        }
        let flavor = self.server.flavor;
        let gtids = match flavor {
            Flavor::MySql => self.read_through(),
            Flavor::MariaDb => {
                let delivered = self.awaited.take().ok_or_else(|| {
                    Failure::Malformed.error(format!(
                        "{what}: a scan on the replica before the core said what the stream delivered"
                    ))
                })?;
                match delivered.mariadb_state() {
                    Some(state) => state.to_string(),
                    None => self
                        .conn
                        .exec_first(sql::GTID_STATE_AT, (&delivered.file, delivered.pos))
                        .await
                        .map_err(|e| my_error(e, what))?
                        .unwrap_or_default(),
                }
            }
        };
        match &mut self.replica {
            Some(r) => r.await_applied(flavor, &gtids).await,
            None => Ok(()),
        }
    }

    /// A row of `values` selected as `t.columns`, in order (both scans select them so).
    fn row_from(t: &Table, values: &[MyValue]) -> Result<Row, SourceError> {
        render_columns(t, &t.columns, values)
    }

    /// Whether a chunk's snapshot names the binlog position it sees exactly: MariaDB's
    /// does, on the primary the stream reads (a replica's names its own binlog).
    fn snapshot_names_position(&self) -> bool {
        self.server.flavor == Flavor::MariaDb && self.replica.is_none()
    }

    /// Starts a consistent snapshot on `conn`. With `exact` (see
    /// [`Self::snapshot_names_position`]), returns the binlog position it sees exactly
    /// (`binlog_snapshot_file` and `_position`), read in the same round trip: a chunk's
    /// snapshot starts while the last chunk is emitted, and every round trip before its
    /// rows is time the server spends idle.
    async fn start_snapshot(
        conn: &mut Conn,
        exact: bool,
        file_base: u64,
        what: &str,
    ) -> Result<Option<BinlogPosition>, SourceError> {
        if !exact {
            conn.query_drop(sql::start_snapshot(false))
                .await
                .map_err(|e| my_error(e, what))?;
            return Ok(None);
        }
        let mut result = conn
            .query_iter(sql::start_snapshot(true))
            .await
            .map_err(|e| my_error(e, what))?;
        // Two result sets: the START's (no rows), then the status rows.
        let mut rows: Vec<(String, String)> = Vec::new();
        while !result.is_empty() {
            let set: Vec<(String, String)> = result
                .collect()
                .await
                .map_err(|e| my_error(e, "reading the snapshot's binlog position"))?;
            rows.extend(set);
        }
        drop(result);
        Self::snapshot_position(&rows, file_base).map(Some)
    }

    /// The snapshot's position from `SHOW STATUS LIKE 'binlog_snapshot_%'`.
    fn snapshot_position(
        rows: &[(String, String)],
        file_base: u64,
    ) -> Result<BinlogPosition, SourceError> {
        let get = |n: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let file = get("binlog_snapshot_file")
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                Failure::Setup.error(
                    "the binlog is off: set log_bin (and binlog_format=ROW) and restart the server",
                )
            })?;
        let pos = get("binlog_snapshot_position")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut at = BinlogPosition::new(file, pos);
        at.file_base = file_base;
        Ok(at)
    }

    async fn scan_keyed(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<Chunk<BinlogPosition>, SourceError> {
        let t = self.table(&req.binding.table)?.clone();
        let what = format!("scanning {}", t.table);
        self.before_snapshot(&what).await?;
        let parts = ranges::parts(req);
        if parts > 1 {
            return self.scan_ranges(req, t, parts, &what).await;
        }
        let sql = sql::keyed_scan(&t, &req.binding.key, req.after.is_some(), req.limits.rows);
        let params: Vec<MyValue> = req
            .after
            .map(|after| sql::bound_params(&after.0.iter().map(sql::key_param).collect::<Vec<_>>()))
            .unwrap_or_default();
        let start = (self.snapshot_names_position(), self.file_base);
        // The rows come from the replica when there is one; the fence from the primary.
        let conn = scanning(&mut self.replica, &mut self.conn);
        let part = read_keyed(
            conn,
            start,
            (&sql, params),
            (&t, &req.binding.key),
            req.limits,
            &what,
        )
        .await?;
        // Without the snapshot's own position, the primary's binlog end read after the
        // scan: every transaction the snapshot saw was in that binlog before it.
        let (fence, witness) = match part.seen_through {
            Some(p) => (p.clone(), SnapshotWitness::SeesThrough(p)),
            None => (self.end_position().await?, SnapshotWitness::Proven),
        };
        let complete = part.read == part.rows.len();
        Ok(Chunk {
            rows: part.rows,
            complete,
            fence,
            witness,
        })
    }

    /// A keyless scan of `t` in a new snapshot, read up to the cursor (`offset` rows).
    async fn open_keyless(
        &mut self,
        t: &Table,
        binding: usize,
        offset: u64,
        what: &str,
    ) -> Result<KeylessScan, SourceError> {
        self.before_snapshot(what).await?;
        let login = self
            .replica
            .as_ref()
            .map_or(&self.endpoint.login, Replica::login);
        let mut conn = connect_to(login).await?;
        // Between chunks the scanner does not read, and the server waits to write.
        conn.query_drop(sql::PATIENT_WRITES)
            .await
            .map_err(|e| my_error(e, what))?;
        // MySQL or a replica: the primary's binlog end, read after the snapshot, is its
        // fence (the wait in `before_snapshot` proved the ordering).
        let exact = self.snapshot_names_position();
        let position = match Self::start_snapshot(&mut conn, exact, self.file_base, what).await? {
            Some(seen_through) => seen_through,
            None => {
                binlog_status(&mut self.conn, self.server.flavor, self.file_base)
                    .await?
                    .0
            }
        };
        let (tx, rows) = tokio::sync::mpsc::channel(KEYLESS_AHEAD);
        tokio::spawn(stream_keyless(
            conn,
            sql::keyless_scan(t),
            tx,
            what.to_string(),
        ));
        let mut scan = KeylessScan {
            binding,
            position,
            rows,
            peeked: None,
            read: 0,
        };
        // A new snapshot resumes at the cursor by position in the table.
        while scan.read < offset && scan.rows.recv().await.transpose()?.is_some() {
            scan.read += 1;
        }
        Ok(scan)
    }

    /// Keyless tables: one consistent snapshot held open across chunks, paged by offset
    /// inside it (stable, since the snapshot does not move). Its guarantee ("exact when the
    /// table is not written during its backfill") does not rest on the fence ordering, so
    /// the later chunks report the snapshot as proven.
    async fn scan_keyless(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<Chunk<BinlogPosition>, SourceError> {
        let t = self.table(&req.binding.table)?.clone();
        let what = format!("scanning {}", t.table);
        let offset: u64 = req
            .after
            .and_then(|k| k.0.first())
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // The scan in hand goes on only from where it is; anything else (another binding,
        // a restart, a new backfill) takes a new snapshot and reads up to the cursor.
        let fresh = !matches!(&self.keyless,
            Some(k) if k.binding == req.binding.index && k.read == offset && offset > 0);
        if fresh {
            self.keyless = None;
            let scan = self
                .open_keyless(&t, req.binding.index, offset, &what)
                .await?;
            self.keyless = Some(scan);
        }
        let scan = self.keyless.as_mut().ok_or_else(|| {
            Failure::Interrupted.error("the keyless scan in hand was lost; reading it again")
        })?;
        let (out, complete) = scan.next_chunk(&t, req.limits.rows).await?;
        let position = scan.position.clone();
        if complete {
            self.keyless = None;
        }
        Ok(Chunk {
            rows: out,
            complete,
            fence: position.clone(),
            witness: if fresh && self.snapshot_names_position() {
                SnapshotWitness::SeesThrough(position)
            } else {
                SnapshotWitness::Proven
            },
        })
    }
}

impl ChunkScanner for MySource {
    type Position = BinlogPosition;

    /// Each key range in a snapshot of its own ([`ranges`]); a keyless table is read by
    /// one query in one snapshot.
    fn reads_in_parts(&self, binding: &BindingSpec) -> bool {
        !binding.scans_physically()
    }

    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<BinlogPosition>, SourceError> {
        // A backfill's first chunk after a DDL reads the catalog as it is now: a table
        // read again because an `ALTER TABLE` gave its rows new columns
        // (`StreamEvent::Reread`) is read with them.
        if req.after.is_none()
            && self
                .server
                .catalog_changed
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.tables = load_tables(&mut self.conn).await?;
        }
        let scanned = if req.binding.scans_physically() {
            self.scan_keyless(req).await
        } else {
            self.scan_keyed(req).await
        };
        match scanned {
            Err(e) if self.replica.is_some() && crate::replica::lacks_a_table_yet(&e) => {
                let text = format!("{e}; the replica has not applied the table's creation yet");
                Err(Failure::Interrupted.error(text).because(e))
            }
            scanned => scanned,
        }
    }

    /// On a replica, remembers what the stream delivered for the scan's wait.
    async fn await_visible(&mut self, delivered: &BinlogPosition) -> Result<(), SourceError> {
        if self.replica.is_some() {
            self.awaited = Some(delivered.clone());
        }
        Ok(())
    }

    async fn estimate_rows(&mut self, binding: &BindingSpec) -> Option<u64> {
        self.conn
            .exec_first(
                sql::ESTIMATE_ROWS,
                (
                    binding.table.namespace.clone(),
                    binding.table.stream.clone(),
                ),
            )
            .await
            .ok()
            .flatten()
    }
}

impl KeyClassifier for MySource {
    fn compare_native(&self, binding: &BindingSpec, a: &Key, b: &Key) -> Option<Ordering> {
        if binding.scans_physically() {
            return Some(a.0.first()?.as_u64()?.cmp(&b.0.first()?.as_u64()?));
        }
        let n = |v: &Value| {
            v.as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
        };
        self.compare_by_column(binding, a, b, |c, x, y| {
            (c.ty == ColType::Int).then_some(())?;
            Some(n(x)?.cmp(&n(y)?))
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
        // One query per batch: each key against the bounds, in the columns' collations.
        let t = self.table(&binding.table)?.clone();
        let cols = binding
            .key
            .iter()
            .map(|k| t.column(k).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Failure::Setup.error("key column missing"))?;
        let hi = match window.hi {
            Hi::Key(hi) => Some(hi),
            _ => None,
        };
        let mut params: Vec<MyValue> = Vec::new();
        for k in keys {
            for bound in [window.lo, hi].into_iter().flatten() {
                params.extend(k.0.iter().map(sql::key_param));
                params.extend(bound.0.iter().map(sql::key_param));
            }
        }
        let sql = sql::classify(&cols, keys.len(), window.lo.is_some(), hi.is_some());
        let rows: Vec<(i64, i64)> = self
            .conn
            .exec(&sql, params)
            .await
            .map_err(|e| my_error(e, "classifying keys"))?;
        if rows.len() != keys.len() {
            return Err(
                Failure::Malformed.error("classification returned the wrong number of rows")
            );
        }
        Ok(rows
            .into_iter()
            .map(|(above_lo, above_hi)| window.region_from(above_lo == 1, above_hi == 1))
            .collect())
    }
}

impl Source for MySource {
    type Stream = MyStream;

    async fn open_stream(
        &mut self,
        start: StreamStart<BinlogPosition>,
        bindings: &[BindingSpec],
    ) -> Result<(MyStream, BinlogPosition), SourceError> {
        ensure_binlog_settings(&mut self.conn, self.server.flavor).await?;
        let (at, by_gtid) = match start {
            StreamStart::Resume(p) => self.resume_point(p).await?,
            StreamStart::Fresh | StreamStart::Reset => {
                self.file_base = 0;
                let (end, executed) =
                    binlog_status(&mut self.conn, self.server.flavor, self.file_base).await?;
                match self.server.flavor {
                    Flavor::MariaDb => match self.gtid_state_at(&end).await? {
                        Some(state) => (end.with_gtids(Gtids::MariaDb(state)), false),
                        None => (end, false),
                    },
                    // By GTID set from the start: see the stream's module docs.
                    Flavor::MySql => match executed
                        .filter(|_| self.server.gtid_mode)
                        .as_deref()
                        .and_then(GtidSet::parse)
                    {
                        Some(set) => (end.with_gtids(Gtids::MySql(set)), true),
                        None => (end, false),
                    },
                }
            }
        };
        if self.server.flavor == Flavor::MySql {
            let set = at.mysql_set().unwrap_or_default();
            *self
                .server
                .read_through
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        }
        let mut from = at.clone();
        from.file_base = self.file_base;
        let stream = MyStream::open(
            &self.endpoint,
            &self.tables,
            bindings,
            from,
            by_gtid,
            &self.server,
            &at,
        )
        .await?;
        Ok((stream, at))
    }

    async fn end_position(&mut self) -> Result<BinlogPosition, SourceError> {
        Ok(
            binlog_status(&mut self.conn, self.server.flavor, self.file_base)
                .await?
                .0,
        )
    }
}

/// The binlog's end (with the history's `file_base`) and, on MySQL, `@@gtid_executed` as
/// read with it. MySQL 8.2 renamed `SHOW MASTER STATUS` (and 8.4 removed it).
async fn binlog_status(
    conn: &mut Conn,
    flavor: Flavor,
    file_base: u64,
) -> Result<(BinlogPosition, Option<String>), SourceError> {
    let statement = sql::binlog_status(flavor);
    let row: Option<mysql_async::Row> = match conn.query_first(statement).await {
        Err(mysql_async::Error::Server(e)) if e.code == 1064 && flavor == Flavor::MySql => conn
            .query_first(sql::LEGACY_BINLOG_STATUS)
            .await
            .map_err(|e| my_error(e, sql::LEGACY_BINLOG_STATUS))?,
        other => other.map_err(|e| my_error(e, statement))?,
    };
    let row = row.ok_or_else(|| {
        Failure::Setup
            .error("the binlog is off: set log_bin and binlog_format=ROW, then restart the server")
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(0);
    let executed: Option<String> = match flavor {
        Flavor::MariaDb => None,
        Flavor::MySql => row
            .get::<Option<String>, _>(4)
            .flatten()
            .map(|s| s.replace(['\n', ' '], "")),
    };
    let mut end = BinlogPosition::new(file, pos);
    end.file_base = file_base;
    Ok((end, executed))
}

impl MySource {
    /// The server's GTID state at a file and offset of its binlog; `None` where the file
    /// is not in this server's binlog (or the server has no GTIDs).
    async fn gtid_state_at(
        &mut self,
        at: &BinlogPosition,
    ) -> Result<Option<GtidState>, SourceError> {
        let state: Option<Option<String>> = self
            .conn
            .exec_first(sql::GTID_STATE_AT, (at.file.as_str(), at.pos))
            .await
            .map_err(|e| my_error(e, "reading the GTID state of a binlog position"))?;
        Ok(state.flatten().as_deref().and_then(GtidState::parse))
    }

    /// Where a stored position resumes, and whether by GTID (see [`crate::position`]): by
    /// file and offset when this server's binlog holds them with the same GTID state (the
    /// same history), else by GTID, in a new history ordered after the stored one. Without
    /// a GTID state, only the file and offset can say where to resume.
    async fn resume_point(
        &mut self,
        p: BinlogPosition,
    ) -> Result<(BinlogPosition, bool), SourceError> {
        self.file_base = p.file_base;
        if self.server.flavor == Flavor::MySql {
            return self.mysql_resume_point(p).await;
        }
        let Some(stored) = p.mariadb_state() else {
            if !self.holds_file(&p.file).await? {
                return Err(purged(&p.file));
            }
            return Ok((p, false));
        };
        let here = self.gtid_state_at(&p).await?;
        if here == Some(stored) {
            return Ok((p, false));
        }
        tracing::info!(
            file = %p.file,
            pos = p.pos,
            gtids = %p.gtids.as_ref().map(ToString::to_string).unwrap_or_default(),
            "this server's binlog does not hold the stored file and offset as the same history (failover, or purged files): resuming by GTID"
        );
        self.file_base = p.logical_file();
        Ok((p, true))
    }
}

impl MySource {
    /// Whether this server's binlog still holds `file`.
    async fn holds_file(&mut self, file: &str) -> Result<bool, SourceError> {
        let logs: Vec<mysql_async::Row> = self
            .conn
            .query(sql::BINARY_LOGS)
            .await
            .map_err(|e| my_error(e, "listing binary logs"))?;
        Ok(logs
            .iter()
            .any(|r| r.get::<String, _>(0).as_deref() == Some(file)))
    }

    /// MySQL resumes by its GTID set wherever it has one: the set names every delivered
    /// transaction, so any server holding the rest sends exactly the rest (and one that
    /// lost some stops with error 1236). A server that does not hold the stored file is
    /// another history (a failover, or the file was purged): its files order after the
    /// stored one through `file_base`.
    async fn mysql_resume_point(
        &mut self,
        p: BinlogPosition,
    ) -> Result<(BinlogPosition, bool), SourceError> {
        let holds = self.holds_file(&p.file).await?;
        let by_gtid = self.server.gtid_mode && p.mysql_set().is_some();
        if !by_gtid {
            if !holds {
                return Err(purged(&p.file));
            }
            return Ok((p, false));
        }
        if !holds {
            tracing::info!(file = %p.file, pos = p.pos, "this server's binlog does not hold the stored file: resuming by GTID set in a new history");
            self.file_base = p.logical_file();
        }
        Ok((p, true))
    }

    /// The tables read at connect.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }
}
