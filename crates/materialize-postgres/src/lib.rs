//! The PostgreSQL destination (PIPELINE.md §4): collections materialized into tables, with
//! standard (merge) or delta updates, exactly once.
//!
//! * [`endpoint`]: the connection settings (secrets never logged, TLS as libpq);
//! * [`types`]: the documented mapping from each source's types to PostgreSQL's;
//! * [`sql`]: every statement, built from a table's shape;
//! * [`stage`]: the binary `COPY` encoding of staged rows;
//! * [`typed`], [`binary`]: whole rows as `COPY` of the table's own columns, in binary
//!   where every column has a binary form;
//! * [`statistics`]: the planner's statistics of tables the stream grows.
//!
//! ## Exactly once
//!
//! Each batch runs in one transaction: the staged steps, then one row per binding in
//! `cdc_checkpoints` (materialization, target table, log line) moved to where the batch
//! ends. A crash or a server restart before the commit leaves neither; after it, both. On
//! start the runtime reads the checkpoint rows back and reads each collection on from
//! there (`cdc_runtime::materialize`).

pub mod binary;
pub mod cell;
pub mod endpoint;
pub mod sql;
pub mod stage;
pub mod statistics;
pub mod typed;
pub mod types;

use std::collections::HashMap;

use cdc_runtime::destination::{
    Batch, Destination, DestinationKind, Image, MultisetOp, Step, TableBinding, TableReset,
};
use cdc_runtime::{Error, Result};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_postgres::Client;

use crate::endpoint::Endpoint;
use crate::sql::{Column, CopyFormat, Shape};
use crate::stage::{Encoder, Json, StageRow};

/// Startup options of the destination session. Values are converted in UTC with ISO
/// dates. Joins of a batch with its table are nested loops over the table's key index:
/// the staging table has no statistics, and a hash or merge join would read the whole
/// table for every batch (quadratic in the table's size for an initial load, and hundreds
/// of milliseconds per batch when streaming into a large table); a batch costs what its
/// rows cost.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c enable_hashjoin=off -c enable_mergejoin=off";

/// The `postgres` destination kind.
#[derive(Debug, Clone, Copy)]
pub struct Postgres;

impl DestinationKind for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn validate(&self, endpoint: &Value) -> std::result::Result<(), String> {
        let endpoint: Endpoint = serde_json::from_value(endpoint.clone())
            .map_err(|e| format!("{e}; fields: host, port, database, user, password | password_env | password_file, tls {{mode, root_cert}}, schema"))?;
        endpoint.login.resolve_password().map(drop)
    }

    fn open(&self, materialization: &str, endpoint: &Value) -> Result<Box<dyn Destination>> {
        let definite = |message: String| Error::Destination {
            materialization: materialization.to_string(),
            message,
        };
        let endpoint: Endpoint = serde_json::from_value(endpoint.clone())
            .map_err(|e| definite(format!("endpoint: {e}")))?;
        // One worker: a batch is applied on it while the runtime reads the next one.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| definite(format!("cannot start a runtime: {e}")))?;
        let config = postgres_conn::Target {
            login: &endpoint.login,
            database: &endpoint.database,
            application: "cdc materialize-postgres",
            options: SESSION_OPTIONS,
        }
        .config()
        .map_err(definite)?;
        let client = runtime
            .block_on(postgres_conn::connect(&config, &endpoint.login.tls))
            .map_err(|e| match e {
                postgres_conn::ConnectError::Tls(text) => definite(text),
                postgres_conn::ConnectError::Driver(e) => classify(
                    materialization,
                    &format!("connecting to {}", endpoint.target()),
                    &e,
                ),
            })?;
        Ok(Box::new(PgDestination {
            runtime,
            client: Some(client),
            in_flight: None,
            materialization: materialization.to_string(),
            schema: endpoint.schema,
            tables: Vec::new(),
            written: statistics::Written::default(),
        }))
    }
}

/// A server error: transient (the work is retried from the checkpoints) or definite.
fn classify(materialization: &str, what: &str, e: &tokio_postgres::Error) -> Error {
    let text = match e.as_db_error() {
        // The server's context names the table, line and column of a `COPY` it refused.
        Some(db) => format!(
            "{what}: {} (SQLSTATE {}{})",
            db.message(),
            db.code().code(),
            db.where_().map(|w| format!("; {w}")).unwrap_or_default()
        ),
        None => format!("{what}: {}", backfill_core::error::error_chain(e)),
    };
    if postgres_conn::is_transient(e) {
        Error::Unavailable(text)
    } else {
        let remedy = match e.as_db_error().map(|d| d.code().code()) {
            Some("42501") => {
                "; grant the materialization's user CREATE on the schema and write access to its tables"
            }
            Some("28P01" | "28000") => "; check the endpoint's user and password, and pg_hba.conf",
            Some("3D000") => "; check endpoint.database",
            Some("3F000") => "; create the schema, or fix endpoint.schema",
            Some(code) if code.starts_with("22") => {
                "; a value of the collection that the destination column's type cannot hold (the context names the table and column). If its source column was widened, run the materialization again: it widens the destination column at start"
            }
            _ => "",
        };
        Error::Destination {
            materialization: materialization.to_string(),
            message: format!("{text}{remedy}"),
        }
    }
}

/// One materialization's connection to a PostgreSQL database.
#[derive(Debug)]
pub struct PgDestination {
    runtime: tokio::runtime::Runtime,
    /// The connection; with the batch in flight while it is applied.
    client: Option<Client>,
    /// The batch being applied, which hands the connection back.
    in_flight: Option<InFlight>,
    materialization: String,
    schema: String,
    /// Per binding index: its table, and the target name its checkpoint row is kept under.
    tables: Vec<(Shape, String)>,
    /// Rows written to each table, for its statistics ([`statistics`]).
    written: statistics::Written,
}

/// A batch applied on the runtime's worker: the connection comes back with its result.
type InFlight = tokio::task::JoinHandle<(Client, std::result::Result<(), tokio_postgres::Error>)>;

impl PgDestination {
    /// The positions of the tables named `targets` (by index), from the checkpoint table;
    /// with `if_exists`, none when that table does not exist (a destination never
    /// prepared), which is asked without creating it.
    fn read_positions(
        &mut self,
        targets: &[String],
        if_exists: bool,
    ) -> Result<HashMap<usize, u64>> {
        let materialization = self.materialization.clone();
        let rows: Vec<(String, i64)> = self.run("reading the checkpoints", |client, schema| {
            let exists = sql::checkpoints_exist(schema);
            let statement = sql::read_checkpoints(schema);
            async move {
                if if_exists
                    && client
                        .query_one(&exists, &[])
                        .await?
                        .get::<_, Option<String>>(0)
                        .is_none()
                {
                    return Ok(Vec::new());
                }
                let rows = client.query(&statement, &[&materialization]).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        })?;
        Ok(targets
            .iter()
            .enumerate()
            .filter_map(|(i, target)| {
                rows.iter()
                    .find(|(t, _)| t == target)
                    .map(|(_, line)| (i, u64::try_from(*line).unwrap_or(0)))
            })
            .collect())
    }

    /// Waits for the batch in flight; its error, if it failed.
    fn settle(&mut self) -> Result<()> {
        let Some(handle) = self.in_flight.take() else {
            return Ok(());
        };
        match self.runtime.block_on(handle) {
            Ok((client, result)) => {
                self.client = Some(client);
                result.map_err(|e| classify(&self.materialization, "applying a batch", &e))
            }
            // A panic is a bug, not a passing failure: retrying would repeat it.
            Err(e) if e.is_panic() => Err(self.definite(format!("applying a batch panicked: {e}"))),
            Err(e) => Err(Error::Unavailable(format!("applying a batch: {e}"))),
        }
    }

    /// Runs `work` on the connection, mapping errors.
    fn run<'a, T, F>(
        &'a mut self,
        what: &str,
        work: impl FnOnce(&'a mut Client, &'a str) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>> + 'a,
    {
        self.settle()?;
        let materialization = self.materialization.clone();
        let Some(client) = self.client.as_mut() else {
            return Err(Error::Unavailable(
                "the destination connection was lost".into(),
            ));
        };
        let result = self.runtime.block_on(work(client, self.schema.as_str()));
        result.map_err(|e| classify(&materialization, what, &e))
    }

    fn definite(&self, message: String) -> Error {
        Error::Destination {
            materialization: self.materialization.clone(),
            message,
        }
    }

    /// The shape of `binding`'s table, with each column's type mapped.
    fn shape(&mut self, binding: &TableBinding) -> Result<Shape> {
        let (schema, name) = match binding.table.split_once('.') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => (self.schema.clone(), binding.table.clone()),
        };
        for part in [&schema, &name] {
            if part.len() > sql::MAX_NAME {
                return Err(self.definite(format!(
                    "target {:?}: {part:?} is {} bytes, and PostgreSQL cuts a name to {} bytes; name a shorter target",
                    binding.table,
                    part.len(),
                    sql::MAX_NAME
                )));
            }
        }
        let mut columns: Vec<Column> = Vec::new();
        for c in &binding.schema.columns {
            let known = if binding.schema.connector.contains("postgres") {
                let ty = c.source_type.clone();
                self.run("looking up a type", |client, _| async move {
                    let row = client.query_one(sql::TYPE_NAME, &[&ty]).await?;
                    Ok(row.get::<_, Option<String>>(0).is_some())
                })?
            } else {
                true
            };
            let mapped = types::map(&binding.schema.connector, &c.source_type, known);
            if let Some(warning) = &mapped.warning {
                tracing::warn!(table = %binding.table, column = %c.name, "{warning}");
            }
            let column = Column::new(&c.name, mapped);
            if let Some(other) = columns.iter().find(|o| o.name == column.name) {
                return Err(self.definite(format!(
                    "target {:?}: fields {:?} and {:?} would both be column {:?}; rename one at the source",
                    binding.table, other.field, column.field, column.name
                )));
            }
            if binding.delta && sql::DELTA_COLUMNS.iter().any(|(n, _)| *n == column.name) {
                return Err(self.definite(format!(
                    "target {:?}: field {:?} is a column every delta table adds; rename it at the source, or materialize the collection with standard updates",
                    binding.table, column.field
                )));
            }
            if column.name != column.field {
                tracing::info!(table = %binding.table, field = %column.field, column = %column.name, "a field longer than a PostgreSQL name lands in a fitted column");
            }
            columns.push(column);
        }
        let key: Vec<String> = binding
            .schema
            .key
            .iter()
            .map(|k| sql::fitted(k, ""))
            .collect();
        Ok(Shape {
            schema,
            name,
            columns,
            key: if binding.delta {
                Vec::new()
            } else {
                key.clone()
            },
            delta: binding.delta,
            reread_key: if binding.delta && binding.skip_unchanged_rereads {
                key
            } else {
                Vec::new()
            },
        })
    }

    /// Creates `shape`'s table, or adds the columns it lacks; refuses a key or type change.
    /// Creates the table if missing, or brings it to the shape. With `forget`, a table
    /// created here has its position deleted in the same transaction: one dropped from
    /// under the materialization (by hand, by a restore) holds none of the lines its
    /// position says were applied, so it is loaded from the collection's start. Without
    /// this it was created empty and filled from where the dropped one had stopped, every
    /// earlier row missing; in two transactions, a crash between them would do the same.
    ///
    /// A column whose collection type the stored one cannot hold is widened in place
    /// when that keeps every value ([`types::widens`]: `varchar(5)` to `varchar(20)`,
    /// `integer` to `bigint`); one stored wider than the collection's type is kept, and
    /// the shape takes the stored type, so rows are written in it. Anything else stops
    /// with the remedy.
    fn ensure(&mut self, shape: &mut Shape, target: &str, forget: bool) -> Result<()> {
        let qualified = shape.qualified();
        let q = qualified.clone();
        let existing: Vec<(String, String)> =
            self.run("reading a table's columns", |client, _| async move {
                let rows = client.query(sql::TABLE_COLUMNS, &[&q]).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })?;
        if let Some(index) = shape.reread_index()
            && !existing.is_empty()
        {
            self.run("creating an index", |client, _| async move {
                client.batch_execute(&index).await
            })?;
        }
        if existing.is_empty() {
            let create = shape.create_once() + ";" + &shape.reread_index().unwrap_or_default();
            tracing::info!(table = %qualified, "creating the table");
            let (materialization, table) = (self.materialization.clone(), target.to_string());
            let forgotten: Option<i64> = self.run("creating a table", |client, schema| {
                let forget_checkpoint = sql::forget_checkpoint(schema);
                async move {
                    let tx = client.transaction().await?;
                    tx.batch_execute(&create).await?;
                    let row = if forget {
                        tx.query_opt(&forget_checkpoint, &[&materialization, &table])
                            .await?
                    } else {
                        None
                    };
                    tx.commit().await?;
                    Ok(row.map(|r| r.get(0)))
                }
            })?;
            if let Some(line) = forgotten {
                tracing::warn!(table = %target, applied_lines = line, "the table was missing though its position said lines were applied (dropped from under the materialization): created again and loaded from the collection's start");
            }
            return Ok(());
        }
        let rebuild = format!(
            "run `cdc backfill PIPELINE materialization --binding {target} --table drop` to recreate it from the collection"
        );
        if !shape.delta && !shape.key.is_empty() {
            let q = qualified.clone();
            let key: Vec<String> = self.run("reading a table's key", |client, _| async move {
                let rows = client.query(sql::TABLE_KEY, &[&q]).await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })?;
            if key != shape.key {
                return Err(self.definite(format!(
                    "table {qualified} has the key {key:?} but its collection's key is {:?}; {rebuild}",
                    shape.key
                )));
            }
        }
        let wanted = self.canonical_types(shape)?;
        for (i, wanted) in wanted.into_iter().enumerate() {
            let column = &shape.columns[i];
            match existing.iter().find(|(n, _)| n == &column.name) {
                None => {
                    let add = shape.add_column(column);
                    tracing::info!(table = %qualified, column = %column.name, "adding a column the collection gained");
                    self.run("adding a column", |client, _| async move {
                        client.batch_execute(&add).await
                    })?;
                }
                Some((_, stored)) if *stored == wanted => {}
                Some((_, stored)) if types::widens(stored, &wanted) => {
                    let alter = shape.widen_column(column, &wanted);
                    tracing::info!(table = %qualified, column = %column.name, from = %stored, to = %wanted, "widening a column as its source column was");
                    self.run("widening a column", |client, _| async move {
                        client.batch_execute(&alter).await
                    })?;
                }
                Some((_, stored)) if types::widens(&wanted, stored) => {
                    tracing::info!(table = %qualified, column = %column.name, stored = %stored, collection = %wanted, "the column holds every value of its narrower source type: kept");
                    shape.columns[i].mapped.pg_type = stored.clone();
                }
                Some((_, stored)) => {
                    return Err(self.definite(format!(
                        "column {} of {qualified} is {stored} but the collection's column maps to {wanted}, which is no wider; {rebuild}",
                        column.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each column type of `shape` as the destination spells it (`format_type` with its
    /// modifiers), read from a temporary table of those types made and rolled back here:
    /// `varchar(20)` is `character varying(20)` there.
    fn canonical_types(&mut self, shape: &Shape) -> Result<Vec<String>> {
        let probe = shape.type_probe();
        self.run("reading column types", |client, _| async move {
            let tx = client.transaction().await?;
            tx.batch_execute(&probe).await?;
            let rows = tx.query(sql::TYPE_PROBE_COLUMNS, &[]).await?;
            tx.rollback().await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn write_checkpoints<'c>(
        tx: &'c tokio_postgres::Transaction<'_>,
        schema: &str,
        materialization: &'c str,
        rows: Vec<(String, i64)>,
    ) -> impl std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>> + 'c
    {
        let statement = sql::write_checkpoint(schema);
        async move {
            for (target, line) in rows {
                tx.execute(&statement, &[&materialization, &target, &line])
                    .await?;
            }
            Ok(())
        }
    }
}

/// Loads `rows` into the emptied staging table by binary `COPY`.
async fn stage<'r>(
    tx: &tokio_postgres::Transaction<'_>,
    rows: impl Iterator<Item = StageRow<'r>>,
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.batch_execute(sql::CLEAR_STAGE).await?;
    let sink = tx.copy_in(sql::COPY_STAGE).await?;
    futures_util::pin_mut!(sink);
    let mut encoder = Encoder::new();
    for row in rows {
        encoder.row(&row);
        if let Some(chunk) = encoder.take_full() {
            sink.send(chunk).await?;
        }
    }
    sink.send(encoder.finish()).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Sends a COPY's data.
async fn copy_data(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &str,
    text: &bytes::Bytes,
) -> std::result::Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(copy).await?;
    futures_util::pin_mut!(sink);
    let mut at = 0;
    while at < text.len() {
        let end = (at + stage::CHUNK).min(text.len());
        // Slices of one buffer: no copy.
        sink.send(text.slice(at..end)).await?;
        at = end;
    }
    sink.as_mut().finish().await?;
    Ok(())
}

fn doc_row(d: &Value) -> StageRow<'_> {
    StageRow {
        d: Some(Json::Value(d)),
        ..StageRow::default()
    }
}

/// A merge step's whole rows as typed COPY text, and the upserts left for the `jsonb`
/// path (see `typed`): written by the thread that hands the batch over, while the batch
/// before it is still being applied, so the server is not kept waiting for it. A table
/// whose every column has a binary form gets its rows in binary (`binary`), each row that
/// one of its values keeps out of it in text.
#[derive(Debug, Default)]
struct TypedRows {
    binary: Option<bytes::Bytes>,
    text: Option<bytes::Bytes>,
    rest: Vec<usize>,
}

impl TypedRows {
    fn of(shape: &Shape, step: &Step) -> Self {
        let Step::Merge { upserts, .. } = step else {
            return Self::default();
        };
        if upserts.len() < typed::MIN_ROWS {
            return Self {
                rest: (0..upserts.len()).collect(),
                ..Self::default()
            };
        }
        let mut binary = typed::BinaryRows::of(shape);
        let mut text = String::new();
        let rest = upserts
            .iter()
            .enumerate()
            .filter(|(_, doc)| {
                let written = binary.as_mut().is_some_and(|b| typed::row(b, shape, doc))
                    || typed::row(&mut text, shape, doc);
                !written
            })
            .map(|(i, _)| i)
            .collect();
        Self {
            binary: binary
                .filter(|b| b.rows() > 0)
                .map(|b| bytes::Bytes::from(b.finish())),
            text: (!text.is_empty()).then(|| bytes::Bytes::from(text)),
            rest,
        }
    }

    /// The rows' `COPY` data, each with its format.
    fn copies(&self) -> impl Iterator<Item = (CopyFormat, &bytes::Bytes)> {
        let binary = self.binary.iter().map(|b| (CopyFormat::Binary, b));
        binary.chain(self.text.iter().map(|t| (CopyFormat::Text, t)))
    }

    fn is_empty(&self) -> bool {
        self.binary.is_none() && self.text.is_none()
    }
}

async fn apply_step(
    tx: &tokio_postgres::Transaction<'_>,
    shape: &Shape,
    step: &Step,
    typed: &TypedRows,
) -> std::result::Result<(), tokio_postgres::Error> {
    match step {
        Step::Merge {
            deletes, upserts, ..
        } => {
            if !deletes.is_empty() {
                stage(tx, deletes.iter().map(doc_row)).await?;
                tx.execute(&shape.delete_keys(), &[]).await?;
            }
            // Whole rows by the typed path, the rest through jsonb.
            let rest: Vec<&Image> = typed.rest.iter().map(|&i| &upserts[i]).collect();
            if !typed.is_empty() {
                // Keys new to the table (an initial load) go straight in, as pg_dump's
                // output would; a key already stored fails the COPY at once, and the rows
                // are upserted from a staging table instead.
                tx.batch_execute("SAVEPOINT cdc_direct").await?;
                let mut direct = Ok(());
                for (format, data) in typed.copies() {
                    direct = copy_data(tx, &shape.copy_into_table(format), data).await;
                    if direct.is_err() {
                        break;
                    }
                }
                match direct {
                    Ok(()) => tx.batch_execute("RELEASE SAVEPOINT cdc_direct").await?,
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                    {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT cdc_direct").await?;
                        tx.batch_execute(&shape.create_typed_stage()).await?;
                        for (format, data) in typed.copies() {
                            copy_data(tx, &shape.copy_typed_stage(format), data).await?;
                        }
                        tx.execute(&shape.upsert_typed(), &[]).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !rest.is_empty() {
                stage(
                    tx,
                    rest.into_iter().map(|image| StageRow {
                        d: Some(match image {
                            Image::Text(doc) => Json::Text(doc.text()),
                            Image::Merged(fields) => Json::Map(fields),
                        }),
                        ..StageRow::default()
                    }),
                )
                .await?;
                if let Some(update) = shape.update() {
                    tx.execute(&update, &[]).await?;
                }
                tx.execute(&shape.insert(), &[]).await?;
            }
        }
        Step::Multiset { ops, .. } => {
            let mut i = 0;
            while i < ops.len() {
                let run = ops[i..]
                    .iter()
                    .take_while(|op| matches!(op, MultisetOp::Insert(_)))
                    .count();
                if run > 0 {
                    stage(
                        tx,
                        ops[i..i + run].iter().filter_map(|op| match op {
                            MultisetOp::Insert(d) => Some(doc_row(d)),
                            MultisetOp::Remove(_) => None,
                        }),
                    )
                    .await?;
                    tx.execute(&shape.insert(), &[]).await?;
                    i += run;
                } else if let MultisetOp::Remove(row) = &ops[i] {
                    tx.execute(&shape.remove_one(), &[&row.to_string()]).await?;
                    i += 1;
                }
            }
        }
        Step::Append { rows, .. } => {
            stage(
                tx,
                rows.iter().map(|r| StageRow {
                    d: (!r.doc.is_null()).then_some(Json::Value(&r.doc)),
                    line: i64::try_from(r.line).ok(),
                    op: Some(r.op.as_str()),
                    pos: r.position.as_ref(),
                    ts: r.committed_at_ms,
                }),
            )
            .await?;
            tx.execute(&shape.append(), &[]).await?;
        }
        Step::Truncate { recreate, .. } => {
            if *recreate {
                tx.batch_execute(&format!("DROP TABLE {}", shape.qualified()))
                    .await?;
                tx.batch_execute(&shape.create()).await?;
            } else {
                tx.batch_execute(&shape.truncate()).await?;
            }
        }
    }
    Ok(())
}

/// One batch and its checkpoint rows in one transaction.
async fn apply_batch(
    client: &mut Client,
    schema: &str,
    materialization: &str,
    shapes: &[Shape],
    batch: &Batch,
    typed: &[TypedRows],
    checkpoints: Vec<(String, i64)>,
) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    for (step, typed) in batch.steps.iter().zip(typed) {
        apply_step(&tx, &shapes[binding_of(step)], step, typed).await?;
    }
    PgDestination::write_checkpoints(&tx, schema, materialization, checkpoints).await?;
    tx.commit().await
}

/// Rows `step` may add to its table.
fn rows_written(step: &Step) -> u64 {
    let rows = match step {
        Step::Merge { upserts, .. } => upserts.len(),
        Step::Multiset { ops, .. } => ops
            .iter()
            .filter(|op| matches!(op, MultisetOp::Insert(_)))
            .count(),
        Step::Append { rows, .. } => rows.len(),
        Step::Truncate { .. } => 0,
    };
    rows as u64
}

fn binding_of(step: &Step) -> usize {
    match step {
        Step::Merge { binding, .. }
        | Step::Multiset { binding, .. }
        | Step::Append { binding, .. }
        | Step::Truncate { binding, .. } => *binding,
    }
}

impl Destination for PgDestination {
    fn positions(&mut self) -> Result<HashMap<usize, u64>> {
        let targets: Vec<String> = self.tables.iter().map(|(_, t)| t.clone()).collect();
        self.read_positions(&targets, false)
    }

    fn observe(&mut self, targets: &[String]) -> Result<HashMap<usize, u64>> {
        self.read_positions(targets, true)
    }

    fn prepare(&mut self, bindings: &[TableBinding], recreate: &[usize]) -> Result<()> {
        self.run(
            "creating the staging and checkpoint tables",
            |client, schema| {
                let checkpoints = sql::create_checkpoints(schema);
                async move {
                    client.batch_execute(sql::CREATE_STAGE).await?;
                    client.batch_execute(&checkpoints).await
                }
            },
        )?;
        let mut tables = Vec::new();
        for (i, binding) in bindings.iter().enumerate() {
            let mut shape = self.shape(binding)?;
            if recreate.contains(&i) {
                let drop = format!("DROP TABLE IF EXISTS {}", shape.qualified());
                tracing::info!(table = %shape.qualified(), "dropping the table, as requested, to create it again");
                self.run("dropping a table", |client, _| async move {
                    client.batch_execute(&drop).await
                })?;
            }
            self.ensure(&mut shape, &binding.table, !recreate.contains(&i))?;
            tables.push((shape, binding.table.clone()));
        }
        self.tables = tables;
        Ok(())
    }

    /// Starts applying `batch` on the worker and returns; the batch in flight before it is
    /// waited for first, and its error returned here.
    fn apply(&mut self, batch: Batch) -> Result<()> {
        let typed: Vec<TypedRows> = batch
            .steps
            .iter()
            .map(|step| TypedRows::of(&self.tables[binding_of(step)].0, step))
            .collect();
        self.settle()?;
        let Some(mut client) = self.client.take() else {
            return Err(Error::Unavailable(
                "the destination connection was lost".into(),
            ));
        };
        let checkpoints: Vec<(String, i64)> = batch
            .positions
            .iter()
            .map(|&(b, line)| {
                (
                    self.tables[b].1.clone(),
                    i64::try_from(line).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let shapes: Vec<Shape> = self.tables.iter().map(|(s, _)| s.clone()).collect();
        let grown: Vec<(String, u64)> = batch
            .steps
            .iter()
            .filter_map(|step| {
                let table = shapes[binding_of(step)].qualified();
                let written = self.written.add(&table, rows_written(step))?;
                Some((table, written))
            })
            .collect();
        let (materialization, schema) = (self.materialization.clone(), self.schema.clone());
        self.in_flight = Some(self.runtime.spawn(async move {
            let result = apply_batch(
                &mut client,
                &schema,
                &materialization,
                &shapes,
                &batch,
                &typed,
                checkpoints,
            )
            .await;
            if result.is_ok() {
                for (table, written) in grown {
                    match statistics::refresh_if_stale(&client, &table, written).await {
                        Ok(true) => tracing::info!(%table, written, "analyzed the table: its planner statistics counted under a quarter of the rows written to it"),
                        Ok(false) => {}
                        Err(e) => tracing::debug!(%table, "analyzing put off: {e}"),
                    }
                }
            }
            (client, result)
        }));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.settle()
    }

    fn reset_table(&mut self, binding: usize, how: TableReset) -> Result<()> {
        let (shape, target) = self.tables[binding].clone();
        let materialization = self.materialization.clone();
        self.run("resetting a table", |client, schema| async move {
            let tx = client.transaction().await?;
            match how {
                TableReset::Truncate => tx.batch_execute(&shape.truncate()).await?,
                TableReset::Drop => {
                    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", shape.qualified()))
                        .await?;
                    tx.batch_execute(&shape.create()).await?;
                }
            }
            Self::write_checkpoints(&tx, schema, &materialization, vec![(target, 0)]).await?;
            tx.commit().await
        })
    }

    fn begin_shadow(&mut self, binding: usize) -> Result<usize> {
        let (shape, target) = self.tables[binding].clone();
        let shadow = Shape {
            name: sql::fitted(&shape.name, "_cdc_shadow"),
            ..shape
        };
        let (drop, create) = (
            format!("DROP TABLE IF EXISTS {}", shadow.qualified()),
            shadow.create(),
        );
        self.run("creating a shadow table", |client, _| async move {
            client.batch_execute(&drop).await?;
            client.batch_execute(&create).await
        })?;
        self.tables.push((shadow, format!("{target} (shadow)")));
        Ok(self.tables.len() - 1)
    }

    fn swap_shadow(&mut self, binding: usize, shadow: usize, position: u64) -> Result<()> {
        let (live, target) = self.tables[binding].clone();
        let (staged, _) = self.tables[shadow].clone();
        let materialization = self.materialization.clone();
        let line = i64::try_from(position).unwrap_or(i64::MAX);
        let swap = format!(
            "DROP TABLE {live_q}; ALTER TABLE {staged_q} RENAME TO {name};{pkey}",
            live_q = live.qualified(),
            staged_q = staged.qualified(),
            name = sql::ident(&live.name),
            pkey = if live.key.is_empty() || live.delta {
                String::new()
            } else {
                format!(
                    " ALTER TABLE {} RENAME CONSTRAINT {} TO {};",
                    live.qualified(),
                    staged.pkey(),
                    live.pkey()
                )
            }
        );
        self.run(
            "swapping in the rebuilt table",
            |client, schema| async move {
                let tx = client.transaction().await?;
                tx.batch_execute(&swap).await?;
                Self::write_checkpoints(&tx, schema, &materialization, vec![(target, line)])
                    .await?;
                tx.commit().await
            },
        )?;
        self.tables.truncate(shadow);
        Ok(())
    }
}
