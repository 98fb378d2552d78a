//! The binlog stream (MariaDB): row events turned into the core's [`StreamEvent`]s.
//!
//! * A GTID event (MariaDB's, or MySQL's GTID or anonymous GTID) opens a transaction;
//!   `XID` (or a `COMMIT` query) commits it at the event's end position; a standalone GTID
//!   with a query is a DDL: the catalog of the captured tables is read again, and the
//!   transaction commits.
//! * `SAVEPOINT`, `ROLLBACK TO` and `RELEASE SAVEPOINT` queries inside a transaction are
//!   places in it, not statements that end it (ORMs nest transactions with them).
//! * An XA transaction commits at its `XA COMMIT`, not where its rows are logged: its
//!   rows (between `XA START`, or MariaDB's GTID flagged prepared-XA, and the
//!   `XA_PREPARE` event) are held by xid, delivered at `XA COMMIT` with that event's
//!   positions, and dropped at `XA ROLLBACK`; a one-phase XA commits at its `XA_PREPARE`.
//!   An `XA COMMIT` of an xid this run did not see prepared (the capture restarted in
//!   between) stops the capture: its rows cannot be read again.
//! * Heartbeats (`@master_heartbeat_period`, half a second) carry the server's position
//!   on an idle server: they become `Progress` between transactions.
//! * Column names come with every table map (`binlog_row_metadata=FULL`), so a row is
//!   always decoded with its own columns; a column the catalog does not know yet makes the
//!   stream read the catalog again before rendering, never misaligning a document.
//! * `pos` is `[logical binlog file number, event end offset, row index]` (the file's
//!   number plus the history's base, see [`crate::position`]); `_meta.source.cursor` is
//!   `file:offset`, `txid` the GTID.
//! * Each GTID event updates the stream's GTID state, which every position it reports
//!   carries, so a checkpoint can resume by GTID on another server.
//! * MySQL opens by GTID set, after a *floor*: the position the capture starts from. The
//!   server sends every transaction the set lacks, which may include some written to the
//!   binlog at or before the floor but not yet committed when the set was read (InnoDB
//!   writes the binlog before it commits). Those are not delivered (the floor says the
//!   capture starts after them) but their GTIDs are recorded in the set the source waits
//!   for before each chunk's snapshot (see [`crate::scan`]), so every one of them is
//!   visible to the backfill. Opening returns once the stream has passed the floor.

mod statement;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_core::catalog::CatalogTable as _;
use backfill_core::cli::CheckItem;
use backfill_core::key::Key;
use backfill_core::source::{
    BindingSpec, BoundTables, Change, ChangeMeta, ChangeStream, Op, Row, StreamEvent,
};
use backfill_core::{Failure, SourceError};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest};
use serde_json::Value;

use crate::catalog::{Column, Table, load_tables};
use crate::conn::{Flavor, Server, connect, my_error};
use crate::endpoint::Endpoint;
use crate::position::{BinlogPosition, Gtid, GtidSet, Gtids, file_number, uuid_string};
use crate::rows::{Cell, ColumnPlan, Image, decode_each, plan};
use crate::sql;
use crate::value::{key_value, render_cell};
use statement::{Statement, Xa};

/// MariaDB's GTID event type (opens a transaction; not in mysql_common's `EventType`).
pub const MARIADB_GTID_EVENT: u8 = 162;

/// MariaDB's compressed query and rows events (`log_bin_compress=ON`): skipping them
/// would lose their rows, so they stop the capture with the setting to change.
pub const COMPRESSED_EVENTS: std::ops::RangeInclusive<u8> = 165..=171;

/// `QUERY_EVENT`: a statement (BEGIN, COMMIT, DDL).
pub const QUERY_EVENT: u8 = 2;
/// `ROTATE_EVENT`: the next binlog file's name.
pub const ROTATE_EVENT: u8 = 4;
/// `FORMAT_DESCRIPTION_EVENT`: the file's event format (and whether events carry checksums).
pub const FORMAT_DESCRIPTION_EVENT: u8 = 15;
/// `XID_EVENT`: a transaction commits.
pub const XID_EVENT: u8 = 16;
/// `TABLE_MAP_EVENT`: the table and column types the next rows events use.
pub const TABLE_MAP_EVENT: u8 = 19;
/// The version 1 rows events (write, update, delete).
pub const ROWS_V1_EVENTS: std::ops::RangeInclusive<u8> = 23..=25;
/// `HEARTBEAT_LOG_EVENT`: the server is idle at a position.
pub const HEARTBEAT_EVENT: u8 = 27;
/// The version 2 rows events (write, update, delete).
pub const ROWS_V2_EVENTS: std::ops::RangeInclusive<u8> = 30..=32;
/// MySQL's `PARTIAL_UPDATE_ROWS_EVENT` (refused by the decoder with the setting to change).
pub const PARTIAL_UPDATE_ROWS_EVENT: u8 = 39;

/// MySQL's GTID and anonymous GTID events (each opens a transaction).
pub const MYSQL_GTID_EVENT: u8 = 33;
/// See [`MYSQL_GTID_EVENT`].
pub const MYSQL_ANONYMOUS_GTID_EVENT: u8 = 34;
/// MySQL's compressed transaction (`binlog_transaction_compression=ON`).
pub const MYSQL_TRANSACTION_PAYLOAD_EVENT: u8 = 40;
/// MySQL's heartbeat for positions past 4 GiB (`HEARTBEAT_LOG_EVENT_V2`).
pub const MYSQL_HEARTBEAT_V2_EVENT: u8 = 41;
/// MySQL 8.4's tagged GTID event.
pub const MYSQL_TAGGED_GTID_EVENT: u8 = 42;

/// The binlog change stream.
pub struct MyStream {
    stream: BinlogStream,
    endpoint: Endpoint,
    tables: Vec<Table>,
    bindings: BoundTables,
    file: String,
    in_txn: bool,
    /// Whether a format description event has been read (see the rotate handling).
    seen_format: bool,
    /// The current transaction's GTID (`txid`).
    gtid: Option<String>,
    /// The GTID state after the last transaction read, where the server has GTIDs.
    gtids: Option<Gtids>,
    /// MySQL: the set the source waits for before a chunk's snapshot (shared with it).
    read_through: Option<Arc<Mutex<GtidSet>>>,
    /// Told when a DDL made the stream read the catalog again (shared with the source).
    catalog_changed: Arc<std::sync::atomic::AtomicBool>,
    /// Until the stream passes it: the start, at or before which nothing is delivered.
    floor: Option<BinlogPosition>,
    /// The position's `file_base` (see [`crate::position`]).
    file_base: u64,
    /// End offset of the last event read (for messages).
    last_end: u64,
    pending: VecDeque<StreamEvent<BinlogPosition>>,
    /// The XA transaction being logged (`XA START` to `XA_PREPARE`): its xid when known
    /// yet, and its changes, held.
    xa: Option<(Option<String>, Vec<Change>)>,
    /// Prepared XA transactions' changes by xid, until `XA COMMIT` or `XA ROLLBACK`.
    prepared: std::collections::HashMap<String, Vec<Change>>,
}

/// `XA_PREPARE_LOG_EVENT`: an XA transaction is prepared (or, one-phase, committed).
pub const XA_PREPARE_LOG_EVENT: u8 = 0x26;

/// MariaDB's GTID event flag of a transaction that is an XA PREPARE.
const MARIADB_FL_PREPARED_XA: u8 = 64;

impl std::fmt::Debug for MyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyStream")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl MyStream {
    /// Opens the stream after `at`: at its file and offset, or, with `by_gtid`, after its
    /// GTID state wherever this server's binlog holds it (then `at.file_base` must already
    /// order the server's files after `floor`'s, the position the core resumes from).
    pub(crate) async fn open(
        endpoint: &Endpoint,
        tables: &[Table],
        bindings: &[BindingSpec],
        at: BinlogPosition,
        by_gtid: bool,
        server: &Server,
        floor: &BinlogPosition,
    ) -> Result<Self, SourceError> {
        let mut conn = connect(endpoint).await?;
        // Both spellings: MySQL 8.0.26+ reads the `source_` names, older servers the others.
        for setting in [
            "SET @mariadb_slave_capability = 4",
            "SET @master_heartbeat_period = 500000000",
            "SET @source_heartbeat_period = 500000000",
            "SET @source_binlog_checksum = 'ALL'",
        ] {
            conn.query_drop(setting)
                .await
                .map_err(|e| my_error(e, "preparing the binlog connection"))?;
        }
        let gtids = match server.flavor {
            Flavor::MariaDb => at.mariadb_state().map(Gtids::MariaDb),
            Flavor::MySql => at.mysql_set().map(Gtids::MySql),
        };
        let request = BinlogStreamRequest::new(endpoint.server_id);
        let (request, file) = match (&gtids, by_gtid) {
            (Some(Gtids::MySql(set)), true) => (
                // The server finds the first transaction the set lacks; its first (fake)
                // rotate names the file.
                request
                    .with_gtid()
                    .with_gtid_set(set.sids())
                    .with_filename(&b""[..])
                    .with_pos(4u64),
                String::new(),
            ),
            (Some(Gtids::MariaDb(state)), true) => {
                conn.exec_drop("SET @slave_connect_state = ?", (state.to_string(),))
                    .await
                    .map_err(|e| my_error(e, "preparing the binlog connection"))?;
                // The server finds the file; its first (fake) rotate names it.
                (
                    request.with_filename(&b""[..]).with_pos(4u64),
                    String::new(),
                )
            }
            _ => (
                request.with_filename(at.file.as_bytes()).with_pos(at.pos),
                at.file.clone(),
            ),
        };
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| my_error(e, "starting the binlog stream"))?;
        let mysql_by_gtid = matches!(gtids, Some(Gtids::MySql(_))) && by_gtid;
        let mut this = Self {
            stream,
            endpoint: endpoint.clone(),
            tables: tables.to_vec(),
            bindings: BoundTables::new(bindings),
            file,
            in_txn: false,
            seen_format: false,
            gtid: None,
            gtids,
            read_through: (server.flavor == Flavor::MySql).then(|| server.read_through.clone()),
            catalog_changed: server.catalog_changed.clone(),
            floor: mysql_by_gtid.then(|| floor.clone()),
            file_base: at.file_base,
            last_end: at.pos,
            pending: VecDeque::new(),
            xa: None,
            prepared: std::collections::HashMap::new(),
        };
        this.pass_the_floor().await?;
        Ok(this)
    }

    /// Reads until the stream is past its floor (see the module docs): the events at or
    /// before it only record their GTIDs. An idle server's heartbeat (half a second) says
    /// when the end is reached.
    async fn pass_the_floor(&mut self) -> Result<(), SourceError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.floor.is_some() {
            let event = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| {
                    Failure::Interrupted
                        .error("the binlog stream did not reach the start position within 60 s")
                })?
                .ok_or_else(|| Failure::Interrupted.error("the server closed the binlog stream"))?
                .map_err(|e| my_error(e, "reading the binlog"))?;
            self.handle(event).await?;
        }
        Ok(())
    }

    /// Records a MySQL transaction's GTID in the stream's set and the shared one.
    fn record_mysql(&mut self, uuid: &str, gno: u64) {
        if let Some(Gtids::MySql(set)) = &mut self.gtids {
            set.record(uuid, gno);
        }
        if let Some(shared) = &self.read_through {
            shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(uuid, gno);
        }
    }

    fn position(&self, pos: u64) -> BinlogPosition {
        let mut p = BinlogPosition::new(self.file.clone(), pos);
        p.file_base = self.file_base;
        match &self.gtids {
            Some(gtids) => p.with_gtids(gtids.clone()),
            None => p,
        }
    }

    /// Reads the catalog again (after a DDL).
    async fn reload_catalog(&mut self) -> Result<(), SourceError> {
        self.tables = read_catalog(&self.endpoint, &self.bindings).await?;
        self.catalog_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// One binlog event: a transaction's bounds (GTID, XID, COMMIT), a schema change, rows
    /// of bound tables, or the file and position the stream is at.
    async fn handle(&mut self, event: Event) -> Result<(), SourceError> {
        let header = event.header();
        let end = u64::from(header.log_pos());
        self.last_end = end;
        let kind = header.event_type_raw();
        self.pass_floor(kind, end);
        // At or before the floor only GTIDs are recorded, and the file name followed.
        let behind = self.floor.is_some();
        if self.transaction_event(kind, &event, end, behind)? {
            return Ok(());
        }
        if behind && !matches!(kind, ROTATE_EVENT | FORMAT_DESCRIPTION_EVENT) {
            return Ok(());
        }
        if COMPRESSED_EVENTS.contains(&kind) {
            return Err(Failure::Setup.error(format!(
                "compressed binlog event at {}:{end}: the server writes compressed events (log_bin_compress=ON), which the connector cannot read. SET GLOBAL log_bin_compress = OFF, then raise `backfill` for every binding whose table was written while it was on",
                self.file
            )));
        }
        if !parsed_by_the_stream(kind) {
            return Ok(());
        }
        self.data_event(&event, end).await
    }

    /// Lifts the floor once the stream is past it. An event ending at the floor may close
    /// the last transaction before it; a heartbeat there says the server has nothing more
    /// before it.
    fn pass_floor(&mut self, kind: u8, end: u64) {
        let Some(floor) = &self.floor else { return };
        if end == 0 || self.file.is_empty() {
            return;
        }
        let mut here = BinlogPosition::new(self.file.clone(), end);
        here.file_base = self.file_base;
        let heartbeat = matches!(kind, HEARTBEAT_EVENT | MYSQL_HEARTBEAT_V2_EVENT);
        if here > *floor || (heartbeat && here == *floor) {
            self.floor = None;
        }
    }

    /// GTID events (a transaction begins), the events refused with their setting, and
    /// MySQL's long-position heartbeat; `true` when the event is dealt with.
    fn transaction_event(
        &mut self,
        kind: u8,
        event: &Event,
        end: u64,
        behind: bool,
    ) -> Result<bool, SourceError> {
        // An XA transaction's rows end at its XA_PREPARE event, before the next group:
        // rows still held here would never be delivered.
        if matches!(
            kind,
            MARIADB_GTID_EVENT | MYSQL_GTID_EVENT | MYSQL_ANONYMOUS_GTID_EVENT
        ) && self.xa.take().is_some_and(|(_, held)| !held.is_empty())
        {
            return Err(Failure::Malformed.error(format!(
                "an XA transaction's rows without its XA PREPARE, before {}:{end}",
                self.file
            )));
        }
        match kind {
            MARIADB_GTID_EVENT => {
                // Behind the floor nothing is delivered, so nothing is held either.
                if !behind
                    && event
                        .data()
                        .get(12)
                        .is_some_and(|flags| flags & MARIADB_FL_PREPARED_XA != 0)
                {
                    self.xa = Some((None, Vec::new()));
                }
                if let Some(gtid) = mariadb_gtid(event.data(), event.header().server_id()) {
                    self.gtid = Some(gtid.to_string());
                    if let Some(Gtids::MariaDb(state)) = &mut self.gtids {
                        state.record(gtid);
                    }
                }
            }
            MYSQL_GTID_EVENT => {
                let (uuid, gno) = mysql_gtid(event.data()).ok_or_else(|| {
                    Failure::Malformed.error(format!("malformed GTID event at {}:{end}", self.file))
                })?;
                self.record_mysql(&uuid, gno);
                self.gtid = Some(format!("{uuid}:{gno}"));
            }
            MYSQL_ANONYMOUS_GTID_EVENT => self.gtid = None,
            MYSQL_TAGGED_GTID_EVENT => {
                return Err(Failure::Setup.error(format!(
                    "a tagged GTID at {}:{end}: the connector does not read tagged GTIDs yet; stop writing them (gtid_next with a tag)",
                    self.file
                )));
            }
            MYSQL_TRANSACTION_PAYLOAD_EVENT => {
                return Err(Failure::Setup.error(format!(
                    "compressed transaction at {}:{end}: the server compresses binlog transactions (binlog_transaction_compression=ON), which the connector cannot read. SET GLOBAL binlog_transaction_compression = OFF, then raise `backfill` for every binding whose table was written while it was on",
                    self.file
                )));
            }
            MYSQL_HEARTBEAT_V2_EVENT if !behind && !self.in_txn && end > 0 => {
                self.pending.push_back(StreamEvent::Progress {
                    position: self.position(end),
                });
                return Ok(true);
            }
            _ => return Ok(false),
        }
        if !behind {
            self.in_txn = true;
            self.pending.push_back(StreamEvent::Begin);
        }
        Ok(true)
    }

    /// An event the stream parses (see [`parsed_by_the_stream`]).
    async fn data_event(&mut self, event: &Event, end: u64) -> Result<(), SourceError> {
        let header = event.header();
        let ts_ms = i64::from(header.timestamp()) * 1000;
        let Some(data) = event
            .read_data()
            .map_err(|e| Failure::Malformed.error(format!("malformed binlog event: {e}")))?
        else {
            return Ok(());
        };
        match data {
            EventData::RotateEvent(r) => {
                let raw = if self.seen_format {
                    r.name_raw()
                } else {
                    without_checksum(&header, event.data(), r.name_raw())
                };
                self.file = String::from_utf8_lossy(raw).into_owned();
            }
            EventData::FormatDescriptionEvent(_) => self.seen_format = true,
            EventData::HeartbeatEvent if !self.in_txn && end > 0 && !self.file.is_empty() => {
                self.pending.push_back(StreamEvent::Progress {
                    position: self.position(end),
                });
            }
            EventData::XidEvent(_) => self.commit(end, ts_ms),
            EventData::QueryEvent(q) => {
                let text = q.query().trim().to_ascii_uppercase();
                if text == "BEGIN" {
                    return Ok(());
                }
                if let Some(xa) = statement::xa(&text) {
                    return self.xa_statement(xa, end, ts_ms);
                }
                // Inside a transaction: its rows rolled back to a savepoint are not in the
                // binlog (the server truncates the transaction's cache), so these only
                // mark places; the transaction goes on.
                if ["SAVEPOINT", "ROLLBACK TO", "RELEASE SAVEPOINT"]
                    .iter()
                    .any(|p| text.starts_with(p))
                {
                    return Ok(());
                }
                if let Some(statement) = statement::parse(&q.query(), &q.schema())
                    && self.bound_tables_statement(&statement, end, ts_ms)?
                {
                    return Ok(());
                }
                if !text.starts_with("COMMIT") {
                    // A DDL (or a non-transactional statement): follow the schema.
                    self.reload_catalog().await?;
                    if !self.in_txn {
                        self.pending.push_back(StreamEvent::Begin);
                    }
                }
                self.commit(end, ts_ms);
            }
            EventData::RowsEvent(rows) => self.rows_event(&rows, end, ts_ms).await?,
            EventData::XaPrepareLogEvent(body) => {
                let (xid, changes) = self.xa.take().unwrap_or_default();
                if body.first() == Some(&1) {
                    // One phase: this is the commit.
                    self.pending
                        .extend(changes.into_iter().map(StreamEvent::Change));
                } else {
                    let xid = xid.ok_or_else(|| {
                        Failure::Malformed.error(format!(
                            "an XA PREPARE at {}:{end} without its XA START or XA END",
                            self.file
                        ))
                    })?;
                    self.prepared.insert(xid, changes);
                }
                self.commit(end, ts_ms);
            }
            _ => {}
        }
        Ok(())
    }

    /// A statement about bound tables (`statement::parse`): a truncate of one is
    /// delivered; a drop, or a rename that leaves its name to no other table, stops the
    /// capture with the remedy (the name may be taken by a new table the stream must not
    /// take for the old one). A rename that puts another table under the bound name in the
    /// same statement (the swap of an online schema change, gh-ost or pt-osc) is followed.
    /// `true` when the statement was a bound table's truncate, delivered here.
    fn bound_tables_statement(
        &mut self,
        statement: &Statement,
        end: u64,
        ts_ms: i64,
    ) -> Result<bool, SourceError> {
        let bound = |(db, table): &statement::Name| self.bindings.get(db, table).is_some();
        let at = format!("{}:{end}", self.file);
        match statement {
            Statement::Truncate(name) => {
                let Some(binding) = self.bindings.get(&name.0, &name.1).map(|b| b.index) else {
                    return Ok(false);
                };
                // Every row of a bound table removed: a truncate, in a statement of its
                // own.
                if !self.in_txn {
                    self.pending.push_back(StreamEvent::Begin);
                }
                let meta = ChangeMeta {
                    pos: vec![file_number(&self.file) + self.file_base, end, 0],
                    fields: self.source_fields(end, ts_ms),
                };
                self.pending.push_back(StreamEvent::Truncate {
                    bindings: vec![binding],
                    meta,
                });
                self.commit(end, ts_ms);
                Ok(true)
            }
            Statement::Write(name) if bound(name) => {
                let (db, table) = name;
                Err(Failure::Setup.error(format!(
                    "{db}.{table} was written at {at} by a statement logged as a statement, not as rows (a session with binlog_format STATEMENT or MIXED): its rows are not in the binlog. Make every session log rows (SET GLOBAL binlog_format = ROW, and reconnect the writers), then raise the binding's `backfill`"
                )))
            }
            Statement::Write(_) => Ok(false),
            Statement::AddFilled(name, columns) => {
                if let Some(binding) = self.bindings.get(&name.0, &name.1).map(|b| b.index) {
                    // The DDL is followed as any other; the table is read again.
                    self.pending.push_back(StreamEvent::Reread {
                        binding,
                        column_mark: None,
                        reason: format!(
                            "{}.{} gained {columns:?} at {at}, with a default (or NOT NULL, an identity, a generation)",
                            name.0, name.1
                        ),
                    });
                }
                Ok(false)
            }
            Statement::Drop(names) => match names.iter().find(|n| bound(n)) {
                Some((db, table)) => Err(Failure::Lost.error(format!(
                    "{db}.{table} was dropped at {at}: remove its binding, or, once it is created again, raise its `backfill`"
                ))),
                None => Ok(false),
            },
            Statement::Rename(pairs) => {
                let left = pairs
                    .iter()
                    .find(|(from, _)| bound(from) && !pairs.iter().any(|(_, to)| to == from));
                match left {
                    Some(((db, table), (to_db, to))) => Err(Failure::Lost.error(format!(
                        "{db}.{table} was renamed to {to_db}.{to} at {at}: point its binding at the new name and raise its `backfill`"
                    ))),
                    None => {
                        if let Some(((db, table), _)) = pairs.iter().find(|(from, _)| bound(from)) {
                            tracing::warn!(table = %format!("{db}.{table}"), at = %at, "a bound table was swapped for another under its name (an online schema change?); following the name");
                        }
                        Ok(false)
                    }
                }
            }
        }
    }

    /// `_meta.source`'s fields of an event ending at `end`: `ts_ms`, `txid` (the GTID)
    /// and `cursor`.
    fn source_fields(&self, end: u64, ts_ms: i64) -> Arc<Row> {
        let mut f = Row::with_capacity(3, 96);
        f.push_i64("ts_ms", ts_ms);
        if let Some(g) = &self.gtid {
            f.push_str("txid", g);
        }
        f.push_str("cursor", &format!("{}:{end}", self.file));
        Arc::new(f)
    }

    /// An XA statement logged as a query (see the module docs).
    fn xa_statement(&mut self, xa: Xa<'_>, end: u64, ts_ms: i64) -> Result<(), SourceError> {
        match xa {
            Xa::Start(xid) => self.xa = Some((Some(xid.to_string()), Vec::new())),
            Xa::End(xid) => {
                if let Some((known, _)) = &mut self.xa {
                    known.get_or_insert_with(|| xid.to_string());
                }
            }
            Xa::Commit(xid) => {
                let Some(changes) = self.prepared.remove(xid) else {
                    return Err(Failure::Setup.error(format!(
                        "XA COMMIT {xid} at {}:{end}: its rows were logged at its XA PREPARE, before this capture read the binlog (it restarted in between), and cannot be read again; raise `backfill` of every binding, which starts the stream past this point",
                        self.file
                    )));
                };
                // Delivered here, so their positions are this event's.
                let file_no = file_number(&self.file) + self.file_base;
                for (i, mut change) in (0u64..).zip(changes) {
                    change.meta.pos = vec![file_no, end, i];
                    self.pending.push_back(StreamEvent::Change(change));
                }
                self.commit(end, ts_ms);
            }
            Xa::Rollback(xid) => {
                self.prepared.remove(xid);
                self.commit(end, ts_ms);
            }
        }
        Ok(())
    }

    /// The open transaction (or statement) commits at `end`.
    fn commit(&mut self, end: u64, ts_ms: i64) {
        self.in_txn = false;
        self.pending.push_back(StreamEvent::Commit {
            position: self.position(end),
            txid: None,
            ts_ms: Some(ts_ms),
        });
    }
}

impl MyStream {
    /// A rows event of a bound table: its rows as changes. A column the catalog does not
    /// know yet makes the stream read the catalog again first; one it still does not know
    /// stops the capture rather than misalign a document.
    async fn rows_event(
        &mut self,
        rows: &RowsEventData<'_>,
        end: u64,
        ts_ms: i64,
    ) -> Result<(), SourceError> {
        let no_map = || Failure::Malformed.error("a rows event arrived before its table map");
        let tme = self.stream.get_tme(rows.table_id()).ok_or_else(no_map)?;
        let (db, table) = (
            tme.database_name().into_owned(),
            tme.table_name().into_owned(),
        );
        let Some(bound) = self.bindings.get(&db, &table) else {
            return Ok(());
        };
        let undecodable = |e: String| {
            Failure::Malformed.error(format!("{db}.{table}: undecodable rows event: {e}"))
        };
        let mut columns = plan(tme).map_err(undecodable)?;
        if !knows_columns(&self.tables, &db, &table, &columns) {
            // `columns` borrows the stream's table map, so only the tables are replaced.
            self.tables = read_catalog(&self.endpoint, &self.bindings).await?;
        }
        mark_mariadb_hires(&self.tables, &db, &table, &mut columns);
        let images = Images::new(&self.tables, (&db, &table), &columns, &bound.key);
        let file_no = file_number(&self.file) + self.file_base;
        // The same for every row of the event.
        let fields = self.source_fields(end, ts_ms);
        let (pending, mut held) = (&mut self.pending, self.xa.as_mut().map(|(_, held)| held));
        let mut i = 0u64;
        decode_each(rows, &columns, undecodable, |before, after| {
            let meta = ChangeMeta {
                pos: vec![file_no, end, i],
                fields: fields.clone(),
            };
            // A row with no image still takes its place in `pos`.
            i += 1;
            if let Some(change) = images.change(bound.index, before, after, meta)? {
                match held.as_mut() {
                    Some(held) => held.push(change),
                    None => pending.push_back(StreamEvent::Change(change)),
                }
            }
            Ok(())
        })
    }
}

/// Marks the columns whose old temporal binlog type is MariaDB's pre-10.1 high-resolution
/// form (`rows::mariadb_hires`): TIME, DATETIME or TIMESTAMP with fraction digits in the
/// catalog, which the table map cannot say.
fn mark_mariadb_hires(tables: &[Table], db: &str, table: &str, columns: &mut [ColumnPlan<'_>]) {
    use mysql_async::consts::ColumnType as T;
    let Some(t) = find_table(tables, db, table) else {
        return;
    };
    for c in columns.iter_mut().filter(|c| {
        matches!(
            c.ty,
            T::MYSQL_TYPE_TIME | T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_TIMESTAMP
        )
    }) {
        let fsp = match c
            .name
            .as_deref()
            .and_then(|n| t.column(n))
            .map(|col| &col.ty)
        {
            Some(
                crate::value::ColType::Time { fsp }
                | crate::value::ColType::DateTime { fsp }
                | crate::value::ColType::Timestamp { fsp },
            ) => *fsp,
            _ => 0,
        };
        c.hires = u8::try_from(fsp).ok().filter(|&n| n > 0);
    }
}

/// Whether the catalog knows every named column of a table map.
fn knows_columns(tables: &[Table], db: &str, table: &str, columns: &[ColumnPlan<'_>]) -> bool {
    find_table(tables, db, table).is_some_and(|t| {
        columns
            .iter()
            .all(|c| c.name.as_deref().is_some_and(|n| t.column(n).is_some()))
    })
}

/// How the images of one rows event become rows and keys.
struct Images<'a> {
    /// Database and table, for errors.
    table: (&'a str, &'a str),
    /// Each table-map column's catalog column (`None`: one the catalog does not know).
    catalog: Vec<Option<&'a Column>>,
    /// Where each key column is in the images, when [`key_value`] can read every one
    /// from the cells (an integer key): then the key is not parsed back from the row.
    key_at: Option<Vec<(usize, &'a Column)>>,
    /// The key columns.
    key: &'a [String],
}

impl<'a> Images<'a> {
    fn new(
        tables: &'a [Table],
        table: (&'a str, &'a str),
        columns: &[ColumnPlan<'_>],
        key: &'a [String],
    ) -> Self {
        let catalog: Vec<Option<&Column>> = match find_table(tables, table.0, table.1) {
            Some(t) => columns
                .iter()
                .map(|c| c.name.as_deref().and_then(|n| t.column(n)))
                .collect(),
            None => vec![None; columns.len()],
        };
        let key_at = key
            .iter()
            .map(|k| {
                let at = columns.iter().position(|c| c.name.as_deref() == Some(k))?;
                Some((at, (*catalog.get(at)?)?))
            })
            .collect();
        Self {
            table,
            catalog,
            key_at,
            key,
        }
    }

    fn new_row(&self) -> Row {
        let n = self.catalog.len();
        Row::with_capacity(n, 256 + 16 * n)
    }

    fn read_key(&self, image: &Image<'_>) -> Option<Key> {
        self.key_at
            .as_ref()?
            .iter()
            .map(|&(i, c)| match image.get(i)? {
                Some(Cell::Binlog(BinlogValue::Value(v))) => key_value(&c.ty, v),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Key)
    }

    fn key_of(&self, row: &Row) -> Key {
        Key(self
            .key
            .iter()
            .map(|k| row.get(k).unwrap_or(Value::Null))
            .collect())
    }

    /// Renders an image into `row` and returns its key.
    fn render(&self, image: &Image<'_>, row: &mut Row) -> Result<Key, SourceError> {
        let (db, table) = self.table;
        let key = self.read_key(image);
        if !render(image, &self.catalog, row).map_err(|e| e.context(db, table))? {
            return Err(unknown(db, table));
        }
        // Debug builds (the suites') check the shortcut against the general path.
        debug_assert!(key.as_ref().is_none_or(|k| *k == self.key_of(row)));
        Ok(key.unwrap_or_else(|| self.key_of(row)))
    }

    /// The change a row's images make; `None` for a row with neither. Each image is
    /// rendered straight into the row the change carries.
    fn change(
        &self,
        binding: usize,
        before: Option<&mut Image<'_>>,
        after: Option<&mut Image<'_>>,
        meta: ChangeMeta,
    ) -> Result<Option<Change>, SourceError> {
        let mut row = self.new_row();
        Ok(Some(match (before, after) {
            (None, Some(after)) => Change {
                binding,
                op: Op::Insert,
                key: self.render(after, &mut row)?,
                before_key: None,
                row,
                before: None,
                meta,
            },
            (Some(before), Some(after)) => {
                let mut old = self.new_row();
                let before_key = self.render(before, &mut old)?;
                Change {
                    binding,
                    op: Op::Update,
                    key: self.render(after, &mut row)?,
                    before_key: Some(before_key),
                    row,
                    before: Some(old),
                    meta,
                }
            }
            (Some(before), None) => Change {
                binding,
                op: Op::Delete,
                key: self.render(before, &mut row)?,
                before_key: None,
                before: Some(row.clone()),
                row,
                meta,
            },
            (None, None) => return Ok(None),
        }))
    }
}

/// The binlog settings capture depends on, one `check` item each, every failure
/// naming the setting to change: statement-based or partial row images, missing column
/// names or compressed events would lose or misrender changes silently. `check`
/// prints them, and `capture` runs them before anything is read.
pub async fn binlog_setting_items(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
) -> Result<Vec<CheckItem>, SourceError> {
    let row: Option<(String, String, String, String, String)> = conn
        .query_first(sql::binlog_settings(flavor))
        .await
        .map_err(|e| my_error(e, "reading the binlog settings"))?;
    let (log_bin, format, image, metadata, compressed) = row.unwrap_or_default();
    let on = |v: &str| v == "1" || v.eq_ignore_ascii_case("ON");
    let setting = |name: &str, value: &str, ok: bool, fix: &str| {
        CheckItem::new(
            name,
            ok,
            if ok {
                value.to_string()
            } else {
                format!("is {value}; {fix}")
            },
        )
    };
    let (compression_name, compression_fix) = match flavor {
        Flavor::MariaDb => (
            "log_bin_compress",
            "SET GLOBAL log_bin_compress = OFF (the connector cannot read compressed events)",
        ),
        Flavor::MySql => (
            "binlog_transaction_compression",
            "SET GLOBAL binlog_transaction_compression = OFF (the connector cannot read compressed transactions)",
        ),
    };
    Ok(vec![
        setting(
            "log_bin",
            if on(&log_bin) { "ON" } else { "OFF" },
            on(&log_bin),
            "start the server with log_bin (and binlog_format=ROW) in its options",
        ),
        setting(
            "binlog_format",
            &format,
            format.eq_ignore_ascii_case("ROW"),
            "SET GLOBAL binlog_format = 'ROW', and set it in the server options",
        ),
        setting(
            "binlog_row_image",
            &image,
            image.eq_ignore_ascii_case("FULL"),
            "SET GLOBAL binlog_row_image = 'FULL', and set it in the server options",
        ),
        setting(
            "binlog_row_metadata",
            &metadata,
            metadata.eq_ignore_ascii_case("FULL"),
            "SET GLOBAL binlog_row_metadata = 'FULL' (the binlog then carries column names), and set it in the server options",
        ),
        setting(
            compression_name,
            if on(&compressed) { "ON" } else { "OFF" },
            !on(&compressed),
            compression_fix,
        ),
    ])
}

/// [`binlog_setting_items`] as a start-up check: the first failure stops.
pub async fn ensure_binlog_settings(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
) -> Result<(), SourceError> {
    match binlog_setting_items(conn, flavor)
        .await?
        .into_iter()
        .find(|i| !i.ok)
    {
        Some(failed) => Err(Failure::Setup.error(failed.line())),
        None => Ok(()),
    }
}

/// The catalog, read again; a bound table that is gone stops the capture: its later
/// changes could not be rendered, and a recreated table needs a backfill.
async fn read_catalog(
    endpoint: &Endpoint,
    bindings: &BoundTables,
) -> Result<Vec<Table>, SourceError> {
    let tables = load_tables(&mut connect(endpoint).await?).await?;
    for bound in bindings.tables() {
        if find_table(&tables, &bound.namespace, &bound.stream).is_none() {
            return Err(Failure::Lost.error(format!(
                "{bound} was dropped or renamed while being captured: fix its binding (and raise its `backfill` if the table was recreated)"
            )));
        }
    }
    Ok(tables)
}

fn find_table<'t>(tables: &'t [Table], db: &str, table: &str) -> Option<&'t Table> {
    tables
        .iter()
        .find(|t| t.table.namespace == db && t.table.stream == table)
}

/// Renders one row image into `out`; `false` when a column is one the catalog does not
/// know (then `out` is incomplete and must not be used). An `Err` names the column.
fn render(
    image: &Image<'_>,
    catalog: &[Option<&Column>],
    out: &mut Row,
) -> Result<bool, ColumnError> {
    // By reference: the cells stay in the image.
    for (value, column) in image.iter().zip(catalog) {
        let Some(value) = value else { continue };
        let Some(c) = column else {
            return Ok(false);
        };
        render_cell(&c.ty, value, out, &c.quoted).map_err(|why| ColumnError {
            column: c.name.clone(),
            why,
        })?;
    }
    Ok(true)
}

/// A value [`render`] could not render, and why.
#[derive(Debug)]
struct ColumnError {
    column: String,
    why: String,
}

impl ColumnError {
    fn context(self, db: &str, table: &str) -> SourceError {
        Failure::Malformed.error(format!("{db}.{table} column {}: {}", self.column, self.why))
    }
}

/// Whether the stream parses events of this type: the ones it acts on. Every other event
/// is skipped unparsed: mysql_common sizes allocations from some event bodies (previous
/// GTIDs, for one), and a malformed length there aborts the process.
pub fn parsed_by_the_stream(event_type: u8) -> bool {
    matches!(
        event_type,
        QUERY_EVENT
            | ROTATE_EVENT
            | FORMAT_DESCRIPTION_EVENT
            | XID_EVENT
            | TABLE_MAP_EVENT
            | HEARTBEAT_EVENT
            | PARTIAL_UPDATE_ROWS_EVENT
            | XA_PREPARE_LOG_EVENT
    ) || ROWS_V1_EVENTS.contains(&event_type)
        || ROWS_V2_EVENTS.contains(&event_type)
}

/// The GTID of a MariaDB GTID event's body: sequence number (8 bytes, little-endian)
/// then domain id (4 bytes) and flags; `None` when too short.
pub fn mariadb_gtid(body: &[u8], server_id: u32) -> Option<Gtid> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    body.get(12)?;
    Some(Gtid {
        domain,
        server: server_id,
        seq,
    })
}

/// The GTID of a MySQL GTID event's body: flags (1 byte), the source's UUID (16 bytes),
/// the transaction number (8 bytes, little-endian); `None` when too short.
pub fn mysql_gtid(body: &[u8]) -> Option<(String, u64)> {
    let uuid: [u8; 16] = body.get(1..17)?.try_into().ok()?;
    let gno = u64::from_le_bytes(body.get(17..25)?.try_into().ok()?);
    Some((uuid_string(&uuid), gno))
}

/// A rotate event's file name, without the 4 checksum bytes the first (fake) rotate may
/// still carry: it arrives before the format description tells the reader that events
/// have checksums. The bytes are dropped only when they are the CRC32 of the event before
/// them (header and body), so a name is never cut by guesswork, even when the file asked
/// for is not known (a resume by GTID).
fn without_checksum<'n>(
    header: &mysql_async::binlog::events::BinlogEventHeader,
    body: &[u8],
    name: &'n [u8],
) -> &'n [u8] {
    let (Some(split), Some(body_len)) = (name.len().checked_sub(4), body.len().checked_sub(4))
    else {
        return name;
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header.timestamp().to_le_bytes());
    crc.update(&[header.event_type_raw()]);
    crc.update(&header.server_id().to_le_bytes());
    crc.update(&header.event_size().to_le_bytes());
    crc.update(&header.log_pos().to_le_bytes());
    crc.update(&header.flags_raw().to_le_bytes());
    crc.update(&body[..body_len]);
    if crc.finalize().to_le_bytes() == name[split..] {
        &name[..split]
    } else {
        name
    }
}

fn unknown(db: &str, table: &str) -> SourceError {
    Failure::Malformed.error(format!(
        "{db}.{table}: a row names a column the table no longer has (added and dropped again before the stream read it); refusing to emit misaligned columns. Raise `backfill` for every binding to re-read the tables from the log's end"
    ))
}

impl ChangeStream for MyStream {
    type Position = BinlogPosition;

    /// mysql_common panics on some malformed events (one shorter than its header says,
    /// for one) instead of returning an error. A panic while reading or decoding is a
    /// malformed event: it stops the capture with one clear line instead of a crash, and
    /// nothing after the last checkpoint counts as committed.
    async fn next_event(&mut self) -> Result<StreamEvent<BinlogPosition>, SourceError> {
        match AssertUnwindSafe(self.next_event_unguarded())
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                Err(Failure::Malformed.error(format!(
                    "the binlog stream could not decode an event after {}:{} ({why}); check the binlog on the server (mariadb-binlog), then run again",
                    self.file, self.last_end
                )))
            }
        }
    }

    fn next_buffered(&mut self) -> Option<StreamEvent<BinlogPosition>> {
        self.pending.pop_front()
    }

    async fn acknowledge(&mut self, _durable: &BinlogPosition) -> Result<(), SourceError> {
        // The binlog keeps no consumer position; retention is the server's setting.
        Ok(())
    }
}

impl MyStream {
    async fn next_event_unguarded(&mut self) -> Result<StreamEvent<BinlogPosition>, SourceError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let event = self
                .stream
                .next()
                .await
                .ok_or_else(|| Failure::Interrupted.error("the server closed the binlog stream"))?
                .map_err(|e| my_error(e, "reading the binlog"))?;
            self.handle(event).await?;
        }
    }
}
