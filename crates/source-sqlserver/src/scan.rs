//! The SQL Server source: discovery, key-ordered chunks, the fence, key classification by
//! the server, and opening the change stream.
//!
//! ## Chunks, fences and the witness (SQL Server)
//!
//! ```text
//!  scan:    SELECT TOP (n+1) … WITH (READCOMMITTEDLOCK) WHERE key > cursor ORDER BY key
//!  fence:   UPDATE watermarks SET watermark = 'w-…'        (own transaction, commits at W)
//!           wait until cdc.<watermarks>_CT holds 'w-…'  →  F = its __$start_lsn = W
//!
//!  log:  … T1 commit … [scan reads] … W commit … T2 commit …
//!                  visible ↑            ↑ F         ↑ after F: streamed after the chunk
//! ```
//!
//! SQL Server's CDC has no snapshot whose log position is known, so the chunk is read with
//! **locking reads** (`READCOMMITTEDLOCK`, which holds even where READ_COMMITTED_SNAPSHOT is
//! on) and the fence comes from a **watermark** written after the scan:
//!
//! 1. *Fence.* A row the scan read was last changed by a transaction that had committed
//!    when it was read, so its commit record precedes the watermark's, which is written
//!    after the scan in a transaction of its own: `F = W` is at or after the commit of
//!    everything the chunk saw. Waiting for the watermark to appear in its change table
//!    is waiting for "the CDC capture job has passed the scan" (DESIGN.md §7), and the
//!    watermark's change is also the stream event at `F` that an idle database would
//!    otherwise never produce.
//! 2. *Fence ordering.* A transaction the stream delivered has its commit record in the
//!    log (the capture job reads only committed log). A locking read of a row it changed
//!    either finds it finished, or waits on its exclusive lock until it is: so every
//!    delivered transaction is visible to the next chunk's reads of the rows it touched.
//!    This is [`SnapshotWitness::Proven`]; there is no commit-before-visible gap to check.
//! 3. *Not one snapshot.* Locking reads see each row as of its own read, not one instant.
//!    Every transaction that commits during the scan has its commit after the previous
//!    fence (the stream had delivered everything up to it, and those are visible), and
//!    before `F`; so it is streamed between the fences and patched into the chunk in
//!    Precise mode, which replaces a row's image with the newer one and removes deleted
//!    keys. A row read before such a transaction and one read after it therefore both end
//!    as the transaction left them; a key moved from ahead of the scan to behind it, or
//!    back, is fixed by the `d` and `c` of its change. The model suite runs the merger
//!    against exactly this scanner (rows read one at a time while writes commit between
//!    reads, locking reads waiting for committed transactions) and checks DESIGN.md §6.
//!
//! Keyless tables (Without Primary Key) are read in `%%physloc%%` order the same way.
//!
//! The start of a run needs no waiting either (`Source::open_stream`'s promise): a locking
//! read sees every transaction whose commit is in the log.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use backfill_core::key::{Hi, Key, Region};
use backfill_core::source::{
    BindingSpec, Chunk, ChunkScanner, ClassifyBatch, KeyClassifier, Row, ScanRequest,
    SnapshotWitness, Source, StreamStart,
};
use backfill_core::{Failure, SourceError};
use serde_json::Value;
use tiberius::ColumnData;

use crate::catalog::{self, Column, Table, readable};
use crate::conn::{Client, ClientBox, column_bytes, column_lsn, connect, execute, query_rows};
use crate::endpoint::Endpoint;
use crate::position::{Lsn, SsPosition};
use crate::replica::Secondary;
use crate::sql;
use crate::stream::SsStream;
use crate::value::render;
use backfill_core::catalog::{Catalog, CatalogTable};

/// How long a fence waits for the capture job to record its watermark before the attempt
/// fails (transiently: the job may be restarting).
const WATERMARK_WAIT: Duration = Duration::from_secs(300);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The SQL Server source.
#[derive(Debug)]
pub struct SqlSource {
    endpoint: Endpoint,
    client: ClientBox,
    tables: Vec<Table>,
    watermarks: (String, String),
    watermarks_ready: bool,
    last_fence: Lsn,
    marks: u64,
    /// The readable secondary chunks are scanned on, when `endpoint.replica` names one.
    replica: Option<Secondary>,
}

/// The tables read at connect (again when a chunk finds a table changed).
impl Catalog for SqlSource {
    type Table = Table;

    fn tables(&self) -> &[Table] {
        &self.tables
    }
}

impl SqlSource {
    /// Connects and reads the catalog.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, SourceError> {
        let mut client = connect(endpoint).await?;
        let watermarks = endpoint.watermarks();
        let tables = catalog::load(&mut client, &watermarks).await?;
        let replica = Secondary::connect(endpoint, &mut client).await?;
        Ok(Self {
            endpoint: endpoint.clone(),
            client: ClientBox(client),
            tables,
            watermarks,
            watermarks_ready: false,
            last_fence: Lsn::ZERO,
            marks: 0,
            replica,
        })
    }

    /// The tables read at connect.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The query connection, for `check`.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client.0
    }

    /// CDC on the database and on every bound table; each failure names the statement to run.
    pub async fn ensure_cdc(&mut self, bindings: &[BindingSpec]) -> Result<(), SourceError> {
        if !catalog::cdc_enabled(&mut self.client.0).await? {
            return Err(Failure::Setup.error(format!(
                "CDC is not enabled on database {db}: run EXEC sys.sp_cdc_enable_db in it (as sysadmin)",
                db = self.endpoint.database
            )));
        }
        for b in bindings {
            let t = self.table(&b.table)?;
            if t.instances.is_empty() {
                return Err(Failure::Setup.error(format!(
                    "CDC is not enabled on {s}.{n}: EXEC sys.sp_cdc_enable_table @source_schema = N'{s}', @source_name = N'{n}', @role_name = NULL",
                    s = t.table.namespace,
                    n = t.table.stream
                )));
            }
        }
        Ok(())
    }

    /// SQL Server Agent runs the capture job; a stopped Agent would make every fence wait
    /// in vain. Where the login cannot see `sys.dm_server_services` (VIEW SERVER STATE),
    /// the fence's own timeout names the Agent instead.
    pub async fn ensure_agent(&mut self) -> Result<(), SourceError> {
        let Ok(rows) = query_rows(
            &mut self.client.0,
            "SELECT status_desc FROM sys.dm_server_services WHERE servicename LIKE N'SQL Server Agent%'",
            Vec::new(),
            "reading sys.dm_server_services",
        )
        .await
        else {
            return Ok(());
        };
        match rows.first().and_then(|r| crate::conn::column_string(r, 0)) {
            Some(status) if !status.eq_ignore_ascii_case("Running") => {
                Err(Failure::Setup.error(format!(
                    "SQL Server Agent is {status}: CDC's capture job runs in it. Start it (Linux: MSSQL_AGENT_ENABLED=true, or mssql-conf set sqlagent.enabled true)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The watermark table exists with CDC on it; created when missing.
    async fn ensure_watermarks(&mut self) -> Result<(), SourceError> {
        if self.watermarks_ready {
            return Ok(());
        }
        let (s, t) = self.watermarks.clone();
        let create = sql::create_watermarks(&s, &t);
        execute(&mut self.client.0, &create, Vec::new(), "creating the watermark table")
            .await
            .map_err(|e| {
                Failure::Setup.error(format!(
                    "{}; the connector needs a watermark table with CDC enabled. As db_owner, run: {create}",
                    e.message()
                ))
            })?;
        self.watermarks_ready = true;
        Ok(())
    }

    /// Writes a watermark and waits until the capture job has recorded it: its commit LSN is
    /// after every commit that preceded the call.
    pub async fn fence(&mut self) -> Result<SsPosition, SourceError> {
        self.ensure_watermarks().await?;
        let (s, t) = self.watermarks.clone();
        self.marks += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mark = format!("w-{}-{nanos}-{}", std::process::id(), self.marks);
        execute(
            &mut self.client.0,
            &sql::write_watermark(&s, &t),
            vec![ColumnData::String(Some(mark.clone().into()))],
            "writing a watermark",
        )
        .await?;
        let find = sql::find_watermark(&s, &t);
        let started = Instant::now();
        let mut sleep = Duration::from_millis(20);
        loop {
            let rows = query_rows(
                &mut self.client.0,
                &find,
                vec![ColumnData::String(Some(mark.clone().into()))],
                "waiting for the watermark",
            )
            .await?;
            if let Some(lsn) = rows.first().and_then(|r| column_lsn(r, 0)) {
                self.last_fence = lsn;
                return Ok(SsPosition(lsn));
            }
            if started.elapsed() > WATERMARK_WAIT {
                return Err(Failure::Interrupted.error(format!(
                    "the CDC capture job has not recorded a watermark in {} s: is SQL Server Agent running and the capture job started (EXEC sys.sp_cdc_help_jobs; EXEC sys.sp_cdc_start_job)?",
                    WATERMARK_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(sleep).await;
            sleep = (sleep * 2).min(Duration::from_millis(500));
        }
    }

    async fn scan_rows(
        &mut self,
        req: ScanRequest<'_>,
    ) -> Result<(Vec<(Key, Row)>, bool), SourceError> {
        let t = self.table(&req.binding.table)?.clone();
        let columns = readable(&t.captured_columns());
        let limit = req.limits.rows + 1;
        let name = t.table.to_string();
        let physical = req.binding.scans_physically();
        let reads = if self.replica.is_some() {
            sql::Reads::Snapshot
        } else {
            sql::Reads::Locking
        };
        let (query, params) = if physical {
            let after = req
                .after
                .and_then(|k| k.0.first())
                .and_then(Value::as_str)
                .and_then(unhex);
            (
                sql::scan_physical(
                    (&t.table.namespace, &t.table.stream),
                    &columns,
                    after.is_some(),
                    limit,
                    reads,
                ),
                after
                    .map(|b| vec![ColumnData::Binary(Some(b.into()))])
                    .unwrap_or_default(),
            )
        } else {
            let key: Vec<Column> = req
                .binding
                .key
                .iter()
                .map(|k| {
                    t.column(k).cloned().ok_or_else(|| {
                        Failure::Setup.error(format!("{name}: key column {k} not found"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut params = Vec::new();
            if let Some(after) = req.after {
                for (c, v) in key.iter().zip(&after.0) {
                    params.push(sql::key_param(c, v)?);
                }
            }
            (
                sql::scan_keyed(
                    (&t.table.namespace, &t.table.stream),
                    &columns,
                    &key,
                    req.after.is_some(),
                    limit,
                    reads,
                ),
                params,
            )
        };
        let client = match &mut self.replica {
            Some(r) => r.client(),
            None => &mut self.client.0,
        };
        let rows = query_rows(client, &query, params, &format!("scanning {name}")).await?;
        let complete = rows.len() <= req.limits.rows;
        let mut out = Vec::with_capacity(rows.len().min(req.limits.rows));
        for r in rows.iter().take(req.limits.rows) {
            if physical {
                let loc = column_bytes(r, 0).unwrap_or_default();
                let row = render(&columns, r, 1, &name)?;
                out.push((Key(vec![Value::String(hex(&loc))]), row));
            } else {
                let row = render(&columns, r, 0, &name)?;
                let key = Key(req
                    .binding
                    .key
                    .iter()
                    .map(|k| row.get(k).unwrap_or(Value::Null))
                    .collect());
                out.push((key, row));
            }
        }
        Ok((out, complete))
    }
}

impl ChunkScanner for SqlSource {
    type Position = SsPosition;

    /// On a secondary, the redo position read before the chunk's snapshot is its witness
    /// (see [`crate::replica`]); on the primary, locking reads prove the ordering.
    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<SsPosition>, SourceError> {
        let redone = match &mut self.replica {
            Some(r) => Some(r.redone().await?),
            None => None,
        };
        let (rows, complete) = self.scan_rows(req).await?;
        let fence = self.fence().await?;
        Ok(Chunk {
            rows,
            complete,
            fence,
            witness: redone.map_or(SnapshotWitness::Proven, |lsn| {
                SnapshotWitness::SeesThrough(SsPosition(lsn))
            }),
        })
    }

    /// On a secondary, waits until it has redone what the stream delivered.
    async fn await_visible(&mut self, delivered: &SsPosition) -> Result<(), SourceError> {
        if let Some(r) = &mut self.replica {
            r.await_redone(delivered.0).await?;
        }
        Ok(())
    }

    async fn estimate_rows(&mut self, binding: &BindingSpec) -> Option<u64> {
        let name = sql::qualified(&binding.table.namespace, &binding.table.stream);
        let rows = query_rows(
            &mut self.client.0,
            "SELECT CAST(SUM(p.rows) AS bigint) FROM sys.partitions p WHERE p.object_id = OBJECT_ID(@P1) AND p.index_id IN (0, 1)",
            vec![ColumnData::String(Some(name.into()))],
            "estimating rows",
        )
        .await
        .ok()?;
        rows.first()
            .and_then(|r| crate::conn::column_i64(r, 0))
            .and_then(|n| u64::try_from(n).ok())
    }
}

impl KeyClassifier for SqlSource {
    fn compare_native(&self, binding: &BindingSpec, a: &Key, b: &Key) -> Option<Ordering> {
        if binding.scans_physically() {
            // Physical locators, as upper-case hex of equal length: bytewise order.
            return Some(a.0.first()?.as_str()?.cmp(b.0.first()?.as_str()?));
        }
        self.compare_by_column(binding, a, b, |c, x, y| {
            c.ty.compares_natively().then_some(())?;
            Some(x.as_i64()?.cmp(&y.as_i64()?))
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
        // One query per batch (split to stay under the 2,100-parameter limit): each key
        // against the bounds, in the key columns' own types and collations.
        let t = self.table(&binding.table)?.clone();
        let cols: Vec<Column> = binding
            .key
            .iter()
            .map(|k| t.column(k).cloned())
            .collect::<Option<_>>()
            .ok_or_else(|| Failure::Setup.error("key column missing"))?;
        let n = cols.len().max(1);
        let per_query = (2000 / n).saturating_sub(2).max(1);
        let hi = match window.hi {
            Hi::Key(k) => Some(k),
            _ => None,
        };
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(per_query) {
            let mut params = Vec::new();
            for bound in window.lo.iter().chain(hi.iter()) {
                for (c, v) in cols.iter().zip(&bound.0) {
                    params.push(sql::key_param(c, v)?);
                }
            }
            for k in batch {
                for (c, v) in cols.iter().zip(&k.0) {
                    params.push(sql::key_param(c, v)?);
                }
            }
            let query = sql::classify(&cols, batch.len(), window.lo.is_some(), hi.is_some());
            let rows = query_rows(&mut self.client.0, &query, params, "classifying keys").await?;
            if rows.len() != batch.len() {
                return Err(
                    Failure::Malformed.error("classification returned the wrong number of rows")
                );
            }
            for r in &rows {
                let above_lo = crate::conn::column_i64(r, 1) == Some(1);
                let above_hi = crate::conn::column_i64(r, 2) == Some(1);
                out.push(window.region_from(above_lo, above_hi));
            }
        }
        Ok(out)
    }
}

impl Source for SqlSource {
    type Stream = SsStream;

    async fn open_stream(
        &mut self,
        start: StreamStart<SsPosition>,
        bindings: &[BindingSpec],
    ) -> Result<(SsStream, SsPosition), SourceError> {
        self.ensure_cdc(bindings).await?;
        self.ensure_agent().await?;
        self.ensure_watermarks().await?;
        let at = match start {
            StreamStart::Resume(p) => {
                for b in bindings {
                    let t = self.table(&b.table)?;
                    if t.instance_for(p.0).is_none() {
                        return Err(Failure::Lost.error(format!(
                            "{}: no capture instance still holds changes after LSN {} (CDC cleanup ran past it, or the instance was dropped): the stream position is lost. Raise `backfill` for every binding to re-establish it, and lengthen the cleanup job's retention (sys.sp_cdc_change_job @job_type = 'cleanup', @retention = …)",
                            t.table, p.0
                        )));
                    }
                }
                p
            }
            // A watermark's LSN: every transaction committed before it is visible to the
            // (locking) scans that follow, every one after it is streamed, and every capture
            // instance that exists now started below it. It also fails clearly when the
            // capture job is not running (SQL Server Agent stopped).
            StreamStart::Fresh | StreamStart::Reset => self.fence().await?,
        };
        let stream = SsStream::open(&self.endpoint, self.tables.clone(), bindings, at.0).await?;
        Ok((stream, at))
    }

    /// A watermark's LSN: every transaction committed before the call commits below it, and
    /// the stream reaches it even on an idle database.
    async fn end_position(&mut self) -> Result<SsPosition, SourceError> {
        self.fence().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_locators_round_trip_as_hex() {
        let loc = [0x10, 0, 0, 0, 1, 0, 3, 0];
        assert_eq!(hex(&loc), "1000000001000300");
        assert_eq!(unhex(&hex(&loc)).as_deref(), Some(&loc[..]));
        assert_eq!(unhex("zz"), None);
    }
}
