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

use backfill_core::SourceError;
use backfill_core::cli::CheckItem;
use backfill_core::key::{Hi, Key, Region, Window};
use backfill_core::mode::{KeyColumnFacts, KeyOrdering, TableFacts};
use backfill_core::row::QuotedName;
use backfill_core::source::{
    BindingSpec, Chunk, ChunkScanner, ColumnInfo, Discovery, KeyClassifier, Row, ScanRequest,
    SnapshotWitness, Source, StreamStart, TableInfo, TableRef, buffered_bytes, classify_natively,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};
use serde_json::Value;

use crate::conn::{Flavor, Server, connect, my_error};
use crate::endpoint::Endpoint;
use crate::position::{BinlogPosition, GtidSet, GtidState};
use crate::stream::MyStream;
use crate::value::{AddressKind, ColType, Origin, key_value, render};

/// A column as the connector uses it.
#[derive(Clone, Debug)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `COLUMN_TYPE` spelling.
    pub column_type: String,
    /// `DATA_TYPE`.
    pub data_type: String,
    /// NULL allowed.
    pub nullable: bool,
    /// Character set, for character columns.
    pub charset: Option<String>,
    /// Collation, for character columns.
    pub collation: Option<String>,
    /// How values render.
    pub ty: ColType,
    /// The name as rows take it, quoted once.
    pub quoted: QuotedName,
}

/// A capturable table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Database and table.
    pub table: TableRef,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// The usable key.
    pub key: Vec<String>,
}

impl Table {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn info(&self) -> TableInfo {
        TableInfo {
            table: self.table.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    // MariaDB's JSON is LONGTEXT with a json_valid check; its values are
                    // JSON documents (DESIGN.md §5), so discover names it json.
                    type_name: if c.ty == ColType::Json {
                        "json".into()
                    } else {
                        c.column_type.clone()
                    },
                    nullable: c.nullable,
                })
                .collect(),
            facts: TableFacts {
                key: self
                    .key
                    .iter()
                    .map(|k| {
                        let c = self.column(k);
                        KeyColumnFacts {
                            name: k.clone(),
                            type_name: c.map(|c| c.column_type.clone()).unwrap_or_default(),
                            ordering: c.map_or(KeyOrdering::Unorderable, key_ordering),
                        }
                    })
                    .collect(),
            },
            warnings: Vec::new(),
        }
    }
}

/// Integers compare natively; everything the server can cast back from its JSON form is
/// compared by the server in the column's own collation.
fn key_ordering(c: &Column) -> KeyOrdering {
    match c.ty {
        ColType::Int => KeyOrdering::Native,
        ColType::Decimal { .. }
        | ColType::Date
        | ColType::DateTime { .. }
        | ColType::Timestamp { .. }
        | ColType::Time { .. }
        | ColType::Text { .. }
        | ColType::Binary { .. }
        | ColType::Year
        | ColType::Enum(_)
        | ColType::Address(_) => KeyOrdering::Database,
        _ => KeyOrdering::Unorderable,
    }
}

/// Quotes an identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The SQL expression a key parameter is cast with, so the server compares it as the column.
fn key_expr(c: &Column) -> String {
    match &c.ty {
        ColType::Int => "?".into(),
        ColType::Decimal { .. } => "CAST(? AS DECIMAL(65,30))".into(),
        ColType::Date => "CAST(? AS DATE)".into(),
        ColType::DateTime { .. } => "CAST(REPLACE(?, 'T', ' ') AS DATETIME(6))".into(),
        ColType::Timestamp { .. } => {
            "CAST(REPLACE(REPLACE(?, 'T', ' '), 'Z', '') AS DATETIME(6))".into()
        }
        ColType::Time { .. } => "CAST(? AS TIME(6))".into(),
        ColType::Binary { .. } => "FROM_BASE64(?)".into(),
        // MariaDB orders UUIDs by their groups in reverse (time-ordered UUIDs sort by
        // time): only the server's own comparison agrees with the index.
        ColType::Address(AddressKind::Uuid) => "CAST(? AS UUID)".into(),
        ColType::Address(AddressKind::Inet4) => "CAST(? AS INET4)".into(),
        ColType::Address(AddressKind::Inet6) => "CAST(? AS INET6)".into(),
        _ => match (&c.charset, &c.collation) {
            (Some(cs), Some(coll)) => format!("CONVERT(? USING {cs}) COLLATE {coll}"),
            _ => "?".into(),
        },
    }
}

fn key_param(v: &Value) -> MyValue {
    match v {
        Value::Number(n) => n.as_i64().map_or_else(
            || {
                n.as_u64()
                    .map_or_else(|| MyValue::Bytes(n.to_string().into_bytes()), MyValue::UInt)
            },
            MyValue::Int,
        ),
        Value::String(s) => MyValue::Bytes(s.clone().into_bytes()),
        Value::Null => MyValue::NULL,
        other => MyValue::Bytes(other.to_string().into_bytes()),
    }
}

fn purged(file: &str) -> SourceError {
    SourceError::definite(format!(
        "binlog file {file} was purged: the stream position is lost. Raise `backfill` for every binding to re-establish it (and keep binlogs longer: binlog_expire_logs_seconds)"
    ))
}

/// A keyless table read in one consistent snapshot, chunk by chunk.
#[derive(Debug)]
struct KeylessScan {
    binding: usize,
    conn: Conn,
    position: BinlogPosition,
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
}

impl MySource {
    /// Connects, refuses servers it cannot capture correctly, and reads the catalog.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, SourceError> {
        let mut conn = connect(endpoint).await?;
        let server = Server::probe(&mut conn).await?;
        let tables = load_tables(&mut conn).await?;
        Ok(Self {
            endpoint: endpoint.clone(),
            server,
            conn,
            tables,
            keyless: None,
            file_base: 0,
        })
    }

    /// The binlog settings capture depends on, one `check` item each, every failure
    /// naming the setting to change: statement-based or partial row images, missing column
    /// names or compressed events would lose or misrender changes silently. `check`
    /// prints them, and `capture` runs them before anything is read.
    pub async fn binlog_setting_items(&mut self) -> Result<Vec<CheckItem>, SourceError> {
        let flavor = self.server.flavor;
        let compression = match flavor {
            Flavor::MariaDb => "@@log_bin_compress",
            Flavor::MySql => "@@binlog_transaction_compression",
        };
        let row: Option<(String, String, String, String, String)> = self
            .conn
            .query_first(format!(
                "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, {compression}"
            ))
            .await
            .map_err(|e| my_error(&e, "reading the binlog settings"))?;
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

    /// [`Self::binlog_setting_items`] as a start-up check: the first failure stops.
    pub async fn ensure_binlog_settings(&mut self) -> Result<(), SourceError> {
        match self
            .binlog_setting_items()
            .await?
            .into_iter()
            .find(|i| !i.ok)
        {
            Some(failed) => Err(SourceError::definite(failed.line())),
            None => Ok(()),
        }
    }

    /// The query connection, for `check`.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The server's flavor and GTID mode.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// MySQL: makes every transaction the stream has read visible to a snapshot taken
    /// next (see the module docs); a backfill without GTIDs stops with the setting.
    async fn before_snapshot(&mut self, what: &str) -> Result<(), SourceError> {
        if self.server.flavor == Flavor::MariaDb {
            return Ok(());
        }
        if !self.server.gtid_mode {
            return Err(SourceError::definite(format!(
                "{what}: a MySQL backfill needs gtid_mode=ON, the only way the connector can prove a chunk's snapshot sees every change already streamed. Set enforce_gtid_consistency=ON and gtid_mode=ON (online: OFF_PERMISSIVE, ON_PERMISSIVE, then ON), or give the binding `\"mode\": \"Only Changes\"`"
            )));
        }
        let set = self
            .server
            .read_through
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_string();
        let timed_out: Option<i64> = self
            .conn
            .exec_first("SELECT WAIT_FOR_EXECUTED_GTID_SET(?, 30)", (set,))
            .await
            .map_err(|e| my_error(&e, what))?;
        if timed_out != Some(0) {
            return Err(SourceError::transient(format!(
                "{what}: the server did not commit, within 30 s, transactions its binlog already holds"
            )));
        }
        Ok(())
    }

    fn table(&self, spec: &BindingSpec) -> Result<&Table, SourceError> {
        self.tables
            .iter()
            .find(|t| t.table == spec.table)
            .ok_or_else(|| {
                SourceError::definite(format!(
                    "{}.{}: table not found; was it dropped or renamed?",
                    spec.table.namespace, spec.table.stream
                ))
            })
    }

    /// A row of `values` selected as `t.columns`, in order (both scans select them so).
    fn row_from(t: &Table, values: &[MyValue]) -> Result<Row, SourceError> {
        let mut row = Row::with_capacity(values.len(), 256 + 16 * values.len());
        for (c, v) in t.columns.iter().zip(values) {
            render(&c.ty, v, Origin::Query, &mut row, &c.quoted).map_err(|e| {
                SourceError::definite(format!(
                    "{}.{} column {}: {e}",
                    t.table.namespace, t.table.stream, c.name
                ))
            })?;
        }
        Ok(row)
    }

    /// Starts a consistent snapshot on `conn`. On MariaDB, returns the binlog position it
    /// sees exactly (`binlog_snapshot_file` and `_position`), read in the same round
    /// trip: a chunk's snapshot starts while the last chunk is emitted, and every round
    /// trip before its rows is time the server spends idle.
    async fn start_snapshot(
        conn: &mut Conn,
        flavor: Flavor,
        file_base: u64,
        what: &str,
    ) -> Result<Option<BinlogPosition>, SourceError> {
        const START: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT";
        if flavor == Flavor::MySql {
            conn.query_drop(START)
                .await
                .map_err(|e| my_error(&e, what))?;
            return Ok(None);
        }
        let mut result = conn
            .query_iter(format!("{START}; SHOW STATUS LIKE 'binlog_snapshot_%'"))
            .await
            .map_err(|e| my_error(&e, what))?;
        // Two result sets: the START's (no rows), then the status rows.
        let mut rows: Vec<(String, String)> = Vec::new();
        while !result.is_empty() {
            let set: Vec<(String, String)> = result
                .collect()
                .await
                .map_err(|e| my_error(&e, "reading the snapshot's binlog position"))?;
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
                SourceError::definite(
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
        let t = self.table(req.binding)?.clone();
        let names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        let select = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = req
            .binding
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "SELECT {select} FROM {}.{}",
            quote(&t.table.namespace),
            quote(&t.table.stream)
        );
        let mut params = Vec::new();
        if let Some(after) = req.after {
            let exprs = req
                .binding
                .key
                .iter()
                .map(|k| t.column(k).map_or_else(|| "?".into(), key_expr))
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" WHERE ({keys}) > ({exprs})"));
            params = after.0.iter().map(key_param).collect();
        }
        sql.push_str(&format!(" ORDER BY {keys} LIMIT {}", req.limits.rows + 1));
        let what = format!("scanning {}.{}", t.table.namespace, t.table.stream);
        self.before_snapshot(&what).await?;
        let seen_through =
            Self::start_snapshot(&mut self.conn, self.server.flavor, self.file_base, &what).await?;
        // Each key column's place among the selected ones, for [`key_value`].
        let key_at: Vec<Option<(usize, &Column)>> = req
            .binding
            .key
            .iter()
            .map(|k| Some((names.iter().position(|n| n == k)?, t.column(k)?)))
            .collect();
        // Rows are rendered as they arrive, up to the limits; any after them are read and
        // dropped (they only say the chunk is not complete).
        let mut out = Vec::new();
        let (mut read, mut bytes) = (0, 0);
        let mut result = self
            .conn
            .exec_iter(&sql, params)
            .await
            .map_err(|e| my_error(&e, &what))?;
        while let Some(r) = result.next().await.map_err(|e| my_error(&e, &what))? {
            read += 1;
            if read > req.limits.rows || bytes >= req.limits.bytes {
                continue;
            }
            let values = r.unwrap();
            let row = Self::row_from(&t, &values)?;
            let key = Key(req
                .binding
                .key
                .iter()
                .zip(&key_at)
                .map(|(k, at)| {
                    let read = at.and_then(|(i, c)| key_value(&c.ty, values.get(i)?));
                    // Debug builds (the suites') check the shortcut against the text.
                    debug_assert!(read.is_none() || read == row.get(k));
                    read.or_else(|| row.get(k)).unwrap_or(Value::Null)
                })
                .collect());
            bytes += buffered_bytes(&row, &key);
            out.push((key, row));
        }
        drop(result);
        let (fence, witness) = match seen_through {
            Some(p) => (p.clone(), SnapshotWitness::SeesThrough(p)),
            None => (self.end_position().await?, SnapshotWitness::Proven),
        };
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(|e| my_error(&e, &what))?;
        let complete = read == out.len();
        Ok(Chunk {
            rows: out,
            complete,
            fence,
            witness,
        })
    }

    /// Keyless tables: one consistent snapshot held open across chunks, paged by offset
    /// inside it (stable, since the snapshot does not move). Its guarantee ("exact when the
    /// table is not written during its backfill") does not rest on the fence ordering, so
    /// the later chunks report the snapshot as proven.
    async fn scan_keyless(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<Chunk<BinlogPosition>, SourceError> {
        let t = self.table(req.binding)?.clone();
        let what = format!("scanning {}.{}", t.table.namespace, t.table.stream);
        let offset: u64 = req
            .after
            .and_then(|k| k.0.first())
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let fresh =
            !matches!(&self.keyless, Some(k) if k.binding == req.binding.index) || offset == 0;
        if fresh {
            self.before_snapshot(&what).await?;
            let mut conn = connect(&self.endpoint).await?;
            // MySQL: the binlog's end, read after the snapshot, is its fence (the wait
            // above proved the ordering).
            let position =
                match Self::start_snapshot(&mut conn, self.server.flavor, self.file_base, &what)
                    .await?
                {
                    Some(seen_through) => seen_through,
                    None => {
                        binlog_status(&mut conn, Flavor::MySql, self.file_base)
                            .await?
                            .0
                    }
                };
            self.keyless = Some(KeylessScan {
                binding: req.binding.index,
                conn,
                position,
            });
        }
        let scan = self
            .keyless
            .as_mut()
            .ok_or_else(|| SourceError::definite("keyless scan lost"))?;
        let names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        let select = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        // A prepared statement, like the keyed scan's: the binary protocol is the one the
        // value table renders from (the text protocol hands dates back as text).
        let sql = format!(
            "SELECT {select} FROM {}.{} LIMIT ? OFFSET ?",
            quote(&t.table.namespace),
            quote(&t.table.stream),
        );
        let rows: Vec<mysql_async::Row> = scan
            .conn
            .exec(&sql, (req.limits.rows as u64 + 1, offset))
            .await
            .map_err(|e| my_error(&e, &what))?;
        let position = scan.position.clone();
        let complete = rows.len() <= req.limits.rows;
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.into_iter().take(req.limits.rows).enumerate() {
            let row = Self::row_from(&t, &r.unwrap())?;
            out.push((Key(vec![Value::from(offset + i as u64 + 1)]), row));
        }
        if complete {
            self.keyless = None;
        }
        Ok(Chunk {
            rows: out,
            complete,
            fence: position.clone(),
            witness: if fresh && self.server.flavor == Flavor::MariaDb {
                SnapshotWitness::SeesThrough(position)
            } else {
                SnapshotWitness::Proven
            },
        })
    }
}

/// The columns of the first unique index (of `index_columns`: index name and column, in
/// index order, PRIMARY first) whose columns are all NOT NULL; empty when there is none.
fn first_not_null_index<'a>(
    index_columns: impl Iterator<Item = (&'a str, &'a str)>,
    columns: &[Column],
) -> Vec<String> {
    let not_null = |c: &str| columns.iter().any(|col| col.name == c && !col.nullable);
    let mut current: Option<(&str, Vec<String>, bool)> = None;
    for (index, column) in index_columns {
        if let Some((name, key, usable)) = &mut current {
            if *name == index {
                key.push(column.to_string());
                *usable &= not_null(column);
                continue;
            }
            if *usable {
                return std::mem::take(key);
            }
        }
        current = Some((index, vec![column.to_string()], not_null(column)));
    }
    match current {
        Some((_, key, true)) => key,
        _ => Vec::new(),
    }
}

async fn load_tables(conn: &mut Conn) -> Result<Vec<Table>, SourceError> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
              WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY 1, 2",
        )
        .await
        .map_err(|e| my_error(&e, "reading information_schema.TABLES"))?;
    type ColRow = (
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let cols: Vec<ColRow> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME
               FROM information_schema.COLUMNS
              WHERE TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        )
        .await
        .map_err(|e| my_error(&e, "reading information_schema.COLUMNS"))?;
    let checks: Vec<(String, String, String)> = conn
        .query("SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS")
        .await
        .unwrap_or_default();
    // Unique indexes without a prefix part, PRIMARY first. Nullability is the columns'
    // own (read above): joining STATISTICS to COLUMNS here made the server open every
    // table twice, 35 ms of every start on an idle server, and the join dropped a
    // nullable column's row but kept its index's other columns, so such an index read
    // as a narrower key that is not unique.
    let keys: Vec<(String, String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME
               FROM information_schema.STATISTICS
              WHERE NON_UNIQUE = 0 AND SUB_PART IS NULL
                AND TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX",
        )
        .await
        .map_err(|e| my_error(&e, "reading information_schema.STATISTICS"))?;
    let mut out = Vec::new();
    for (schema, name) in tables {
        let columns: Vec<Column> = cols
            .iter()
            .filter(|c| c.0 == schema && c.1 == name)
            .map(|c| {
                let json_checked = checks.iter().any(|(s, t, clause)| {
                    s == &schema
                        && t == &name
                        && clause.to_ascii_lowercase().replace('`', "")
                            == format!("json_valid({})", c.2.to_ascii_lowercase())
                });
                Column {
                    quoted: QuotedName::new(&c.2),
                    name: c.2.clone(),
                    data_type: c.3.clone(),
                    column_type: c.4.clone(),
                    nullable: c.5 == "YES",
                    charset: c.6.clone(),
                    collation: c.7.clone(),
                    ty: ColType::from_catalog(&c.3, &c.4, c.6.as_deref(), json_checked),
                }
            })
            .collect();
        let index_columns = keys.iter().filter(|k| k.0 == schema && k.1 == name);
        let key = first_not_null_index(
            index_columns.map(|k| (k.2.as_str(), k.3.as_str())),
            &columns,
        );
        out.push(Table {
            table: TableRef {
                namespace: schema,
                stream: name,
            },
            columns,
            key,
        });
    }
    Ok(out)
}

impl Discovery for MySource {
    async fn discover(&mut self) -> Result<Vec<TableInfo>, SourceError> {
        Ok(self.tables.iter().map(Table::info).collect())
    }
}

impl ChunkScanner for MySource {
    type Position = BinlogPosition;

    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<BinlogPosition>, SourceError> {
        if req.binding.scans_physically() {
            self.scan_keyless(req).await
        } else {
            self.scan_keyed(req).await
        }
    }

    async fn estimate_rows(&mut self, binding: &BindingSpec) -> Option<u64> {
        self.conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (binding.table.namespace.clone(), binding.table.stream.clone()),
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
        let t = self.tables.iter().find(|t| t.table == binding.table)?;
        for (i, k) in binding.key.iter().enumerate() {
            if t.column(k)?.ty != ColType::Int {
                return None;
            }
            let n = |v: &Value| {
                v.as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from))
            };
            match n(a.0.get(i)?)?.cmp(&n(b.0.get(i)?)?) {
                Ordering::Equal => continue,
                other => return Some(other),
            }
        }
        Some(Ordering::Equal)
    }

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
        // One query per batch: each key against the bounds, in the columns' collations.
        let t = self.table(binding)?.clone();
        let cols = binding
            .key
            .iter()
            .map(|k| t.column(k).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| SourceError::definite("key column missing"))?;
        let tuple = || cols.iter().map(key_expr).collect::<Vec<_>>().join(", ");
        let mut params: Vec<MyValue> = Vec::new();
        let mut selects = Vec::with_capacity(keys.len());
        for k in keys {
            let mut parts = Vec::new();
            if let Some(lo) = window.lo {
                parts.push(format!("(({}) > ({}))", tuple(), tuple()));
                params.extend(k.0.iter().map(key_param));
                params.extend(lo.0.iter().map(key_param));
            } else {
                parts.push("1".into());
            }
            if let Hi::Key(hi) = window.hi {
                parts.push(format!("(({}) > ({}))", tuple(), tuple()));
                params.extend(k.0.iter().map(key_param));
                params.extend(hi.0.iter().map(key_param));
            } else {
                parts.push("0".into());
            }
            selects.push(format!("SELECT {}", parts.join(", ")));
        }
        let sql = selects.join(" UNION ALL ");
        let rows: Vec<(i64, i64)> = self
            .conn
            .exec(&sql, params)
            .await
            .map_err(|e| my_error(&e, "classifying keys"))?;
        if rows.len() != keys.len() {
            return Err(SourceError::definite(
                "classification returned the wrong number of rows",
            ));
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
        self.ensure_binlog_settings().await?;
        let (at, by_gtid) = match start {
            StreamStart::Resume(p) => self.resume_point(p).await?,
            StreamStart::Fresh | StreamStart::Reset => {
                self.file_base = 0;
                let (end, executed) =
                    binlog_status(&mut self.conn, self.server.flavor, self.file_base).await?;
                match self.server.flavor {
                    Flavor::MariaDb => match self.gtid_state_at(&end).await? {
                        Some(gtids) => (end.with_gtids(gtids), false),
                        None => (end, false),
                    },
                    // By GTID set from the start: see the stream's module docs.
                    Flavor::MySql => match executed.filter(|_| self.server.gtid_mode) {
                        Some(set) => (end.with_gtids(set), true),
                        None => (end, false),
                    },
                }
            }
        };
        if self.server.flavor == Flavor::MySql {
            let set = at
                .gtids
                .as_deref()
                .and_then(GtidSet::parse)
                .unwrap_or_default();
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
    let statement = match flavor {
        Flavor::MariaDb => "SHOW MASTER STATUS",
        Flavor::MySql => "SHOW BINARY LOG STATUS",
    };
    let row: Option<mysql_async::Row> = match conn.query_first(statement).await {
        Err(mysql_async::Error::Server(e)) if e.code == 1064 && flavor == Flavor::MySql => conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| my_error(&e, "SHOW MASTER STATUS"))?,
        other => other.map_err(|e| my_error(&e, statement))?,
    };
    let row = row.ok_or_else(|| {
        SourceError::definite(
            "the binlog is off: set log_bin and binlog_format=ROW, then restart the server",
        )
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
    async fn gtid_state_at(&mut self, at: &BinlogPosition) -> Result<Option<String>, SourceError> {
        let state: Option<Option<String>> = self
            .conn
            .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (at.file.as_str(), at.pos))
            .await
            .map_err(|e| my_error(&e, "reading the GTID state of a binlog position"))?;
        Ok(state.flatten())
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
        let Some(stored) = p.gtids.as_deref().and_then(GtidState::parse) else {
            if !self.holds_file(&p.file).await? {
                return Err(purged(&p.file));
            }
            return Ok((p, false));
        };
        let here = self.gtid_state_at(&p).await?;
        if here.as_deref().and_then(GtidState::parse) == Some(stored) {
            return Ok((p, false));
        }
        tracing::info!(
            file = %p.file,
            pos = p.pos,
            gtids = p.gtids.as_deref().unwrap_or(""),
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
            .query("SHOW BINARY LOGS")
            .await
            .map_err(|e| my_error(&e, "listing binary logs"))?;
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
        let by_gtid =
            self.server.gtid_mode && p.gtids.as_deref().and_then(GtidSet::parse).is_some();
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
