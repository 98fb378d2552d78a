//! One keyed chunk read on several connections at once, each a key range of it, all in the
//! chunk's one snapshot (`advanced.backfill_ranges`, a binding's `resource.ranges`).
//!
//! ## Why the chunk is still one chunk
//!
//! The first connection starts the chunk's repeatable-read transaction and names its
//! snapshot with `pg_export_snapshot()`; each other connection starts its own transaction
//! with `SET TRANSACTION SNAPSHOT` on that name, which makes its snapshot *the same*: the
//! same transactions visible, the same rows. The exporting transaction stays open until
//! every other part has read (a snapshot can be imported only while its exporter runs).
//! The fence and witness are read on the first connection, after its rows, exactly as for
//! a chunk read on one. So the core receives what [`ChunkScanner`] promises, one snapshot's
//! rows with its fence and witness, and the merger's argument (DESIGN.md §7) does not know
//! how many connections read them.
//!
//! ## Why the parts cover the chunk without a gap or an overlap
//!
//! With `n` rows a chunk and `p` parts of `h = n / p` rows, part `j` reads, in key order,
//!
//! ```text
//! part 0:  key > cursor                                   LIMIT h
//! part j:  key > (the key h·j - 1 rows past the cursor)   LIMIT h      (0 < j < p - 1)
//! last:    key > (the key h·j - 1 rows past the cursor)   LIMIT rest + 1
//! ```
//!
//! where "the key `h·j - 1` rows past the cursor" is a sub-select on the key index, in the
//! same snapshot, in the same key order (the columns' own collations). Part `j` therefore
//! starts right after the last row part `j - 1` can hold, and the parts concatenated are
//! the first `n` rows after the cursor: what one connection's `LIMIT n` would have read.
//! When there are fewer rows, the sub-select finds none, and the later parts read nothing.
//!
//! The chunk is assembled in part order and stops at the first part that did not read
//! everything it could: one cut by its share of the chunk's memory bound (the chunk ends
//! at its last row; later parts' rows are dropped, read again by the next chunk), or one
//! with fewer than `h` rows (the table ends there). The chunk is `complete` when the
//! table ended inside it, as for one connection. The rows are therefore a key-ordered
//! prefix of what the snapshot holds after the cursor, with nothing skipped, and each
//! part is held to `1 / p` of the chunk's memory bound. A sabotaged run that skips the
//! row at each boundary (`SOURCE_POSTGRES_SABOTAGE=range-gap`) loses rows, and the test
//! of this module fails.
//!
//! ## Where the rows are rendered
//!
//! The first part is read and rendered on the connector's thread, as a chunk read on one
//! connection is. Each other part is read by a [`Worker`]: a connection driven by a thread
//! of its own, which renders the part's rows there and hands them back whole. So the
//! rendering, most of the connector's work per row, is split the way the server's work
//! is, and the connector's own thread keeps the first part, the merge and the output.
//!
//! ## Keyless tables: ranges of pages
//!
//! A keyless (Without Primary Key) chunk is a range of heap pages. Its parts are that
//! range cut into `p` ranges of pages, `ctid` bounds that meet exactly and need no
//! sub-select; the first part also reads the table's page count, and the rows come back
//! in page order, as one connection's would. The chunk is cut to its bound afterwards, as
//! before.
//!
//! ## When one connection reads
//!
//! A chunk has at most one part a row (a page, keyless). A keyed backfill limited by
//! transaction ids (`min_backfill_xid`, `max_backfill_xid`) reads on one: the sub-select
//! counts rows the filter would drop, so the parts would not meet.
//!
//! [`ChunkScanner`]: backfill_core::source::ChunkScanner

use std::sync::Arc;

use backfill_core::key::Key;
use backfill_core::source::{BindingSpec, Chunk, ChunkLimits, ScanRequest};
use backfill_core::worker::Worker;
use backfill_core::{Failure, SourceError};

use super::{At, Layout, PgSource, Scanned, Side, read_chunk};
use crate::catalog::{Table, Types};
use crate::conn::db_error;
use crate::position::PgPosition;
use crate::sql;

/// One part's statement and bounds.
struct Part {
    sql: String,
    limits: ChunkLimits,
}

/// What a part's rows are read and rendered against, shared with the workers' threads.
#[derive(Clone, Debug)]
struct Plan {
    table: Arc<Table>,
    types: Arc<Types>,
    ask: Arc<[String]>,
    binding: BindingSpec,
    after: Option<Key>,
    side: Side,
    layout: Layout,
    what: Arc<str>,
}

/// Reads a part's `batch` on a worker's connection (`client`), its rows rendered there.
async fn read_on_worker(
    client: &tokio_postgres::Client,
    batch: &str,
    limits: ChunkLimits,
    plan: &Plan,
) -> Result<Option<Scanned>, SourceError> {
    let at = At {
        rows: 2,
        export: None,
        pages: None,
        fence: None,
    };
    let req = ScanRequest {
        binding: &plan.binding,
        after: plan.after.as_ref(),
        limits,
    };
    read_chunk(
        client,
        (batch, at, None),
        (&plan.table, &plan.types, &plan.ask),
        (req, plan.side, plan.layout),
        &plan.what,
    )
    .await
}

impl PgSource {
    /// How many connections read the next keyed chunk of `req`'s binding.
    pub(super) fn keyed_parts(&self, req: ScanRequest<'_>) -> usize {
        if req.binding.ranges <= 1 || !self.xmin_filter().is_empty() {
            return 1;
        }
        req.binding.ranges.min(req.limits.rows).max(1)
    }

    /// Opens the connections that read the other parts, up to `n`, to the server chunks
    /// are read on, each on a thread of its own.
    async fn ensure_helpers(&mut self, n: usize) -> Result<(), SourceError> {
        while self.helpers.len() < n {
            let login = self
                .replica
                .as_ref()
                .map_or(&self.endpoint.login, |r| r.login())
                .clone();
            let endpoint = self.endpoint.clone();
            let worker = Worker::start("scan-range", move || async move {
                crate::conn::connect_to(&endpoint, &login).await
            })
            .await?;
            self.helpers.push(worker);
        }
        Ok(())
    }

    /// One keyed chunk in `parts` key ranges, one connection each (module docs); `None`
    /// when the table's columns are not the catalog's.
    pub(super) async fn scan_ranges(
        &mut self,
        req: ScanRequest<'_>,
        parts: usize,
        (t, select, ask): (&Table, &str, &[String]),
        after: Option<&[String]>,
        what: &str,
    ) -> Result<Option<Chunk<PgPosition>>, SourceError> {
        let planned = plan(req, parts, (t, select), after);
        let Some(scanned) = self
            .run_parts(req, &planned, Layout::Keyed, (t, ask), what)
            .await?
        else {
            return Ok(None);
        };
        let (fence, witness) = scanned[0].fence(what)?;
        let (rows, complete) = assemble(scanned, &planned);
        Ok(Some(Chunk {
            rows,
            complete,
            fence,
            witness,
        }))
    }

    /// The rows of the heap pages from `from` to `end_page` of a keyless table, read in
    /// `parts` ranges of pages at once, one connection each, in one snapshot (module
    /// docs): what [`read_chunk`] reads from one connection for the whole range, the
    /// parts' rows in page order. `None` when the table's columns are not the catalog's.
    pub(super) async fn read_pages_in_ranges(
        &mut self,
        req: ScanRequest<'_>,
        parts: usize,
        (t, select, ask): (&Table, &str, &[String]),
        (from, end_page): ((u64, u64), u64),
        what: &str,
    ) -> Result<Option<Scanned>, SourceError> {
        let filter = self.xmin_filter();
        let span = end_page - from.0;
        let gap = u64::from(sabotaged());
        let planned: Vec<Part> = (0..parts as u64)
            .map(|j| {
                let (lo, hi) = (
                    from.0 + span * j / parts as u64,
                    from.0 + span * (j + 1) / parts as u64,
                );
                let start = if j == 0 { from } else { (lo, gap) };
                Part {
                    sql: sql::page_scan(&t.table, select, start, hi, &filter),
                    // A page range's rows are all kept and cut by the caller; this only
                    // sizes the part's buffer.
                    limits: ChunkLimits {
                        rows: req.limits.rows.div_ceil(parts),
                        ..req.limits
                    },
                }
            })
            .collect();
        let Some(scanned) = self
            .run_parts(req, &planned, Layout::Physical, (t, ask), what)
            .await?
        else {
            return Ok(None);
        };
        let mut parts = scanned.into_iter();
        let Some(mut whole) = parts.next() else {
            return Ok(None);
        };
        for part in parts {
            whole.read += part.read;
            whole.rows.extend(part.rows);
        }
        Ok(Some(whole))
    }

    /// Reads `planned` on the scanning connection and the helpers, and ends the first
    /// part's transaction (with the watermark on the primary) once every part has read in
    /// its snapshot. `None` when the table's columns are not the catalog's.
    async fn run_parts(
        &mut self,
        req: ScanRequest<'_>,
        planned: &[Part],
        layout: Layout,
        (t, ask): (&Table, &[String]),
        what: &str,
    ) -> Result<Option<Vec<Scanned>>, SourceError> {
        self.ensure_helpers(planned.len() - 1).await?;
        let side = self.side().await?;
        let read = self
            .read_parts(req, planned, (side, layout), (t, ask), what)
            .await;
        let scanned = match read {
            Ok(Some(scanned)) => scanned,
            Ok(None) => {
                self.end_first().await;
                return Ok(None);
            }
            Err(e) => {
                self.end_first().await;
                // A connection that failed may be gone: open them again next time.
                self.helpers.clear();
                return Err(e);
            }
        };
        self.scanning_client()
            .batch_execute(&self.commit_sql(side))
            .await
            .map_err(|e| db_error(e, what))?;
        self.watermark_after(side).await?;
        Ok(Some(scanned))
    }

    /// Reads every part at once: the first on the scanning connection, exporting its
    /// snapshot, the others in that snapshot as soon as its name arrives. The first
    /// part's transaction is left open.
    async fn read_parts(
        &self,
        req: ScanRequest<'_>,
        planned: &[Part],
        (side, layout): (Side, Layout),
        (t, ask): (&Table, &[String]),
        what: &str,
    ) -> Result<Option<Vec<Scanned>>, SourceError> {
        let (named, name) = tokio::sync::oneshot::channel();
        // A keyless range reads the table's pages in the same snapshot, after its rows.
        let (first, at_first) = match layout {
            Layout::Keyed => (
                format!(
                    "{}; {}; {}; {}",
                    sql::START_SNAPSHOT,
                    sql::EXPORT_SNAPSHOT,
                    planned[0].sql,
                    side.fence_sql()
                ),
                At {
                    rows: 2,
                    export: Some(1),
                    pages: None,
                    fence: Some(3),
                },
            ),
            Layout::Physical => (
                format!(
                    "{}; {}; {}; {}; {}",
                    sql::START_SNAPSHOT,
                    sql::EXPORT_SNAPSHOT,
                    planned[0].sql,
                    sql::relation_pages(&t.table),
                    side.fence_sql()
                ),
                At {
                    rows: 2,
                    export: Some(1),
                    pages: Some(3),
                    fence: Some(4),
                },
            ),
        };
        let exporter = read_chunk(
            self.scanning_client(),
            (&first, at_first, Some(named)),
            (t, &self.types, ask),
            (part_request(req, &planned[0]), side, layout),
            what,
        );
        let plan = Plan {
            table: Arc::new(t.clone()),
            types: Arc::clone(&self.types),
            ask: ask.into(),
            binding: req.binding.clone(),
            after: req.after.cloned(),
            side,
            layout,
            what: what.into(),
        };
        let others = async {
            let Ok(name) = name.await else {
                // The first part failed before naming its snapshot; its error says why.
                return Ok(Vec::new());
            };
            let start = sql::start_in_snapshot(&name);
            let reads = self
                .helpers
                .iter()
                .zip(&planned[1..])
                .map(|(worker, part)| {
                    let batch = format!("{start}; {}; COMMIT", part.sql);
                    let (limits, plan) = (part.limits, plan.clone());
                    async move {
                        worker
                            .run(move |client: tokio_postgres::Client| async move {
                                let read = read_on_worker(&client, &batch, limits, &plan).await;
                                // A failed batch may have left its transaction open: the
                                // connection is closed, and opened again next time.
                                (read.is_ok().then_some(client), read)
                            })
                            .await?
                    }
                });
            futures_util::future::try_join_all(reads).await
        };
        let (first, others) = futures_util::future::join(exporter, others).await;
        let Some(first) = first? else {
            return Ok(None);
        };
        let others = others?;
        if others.len() + 1 != planned.len() {
            return Err(
                Failure::Malformed.error(format!("{what}: the chunk's snapshot was not named"))
            );
        }
        let mut all = Vec::with_capacity(planned.len());
        all.push(first);
        for part in others {
            let Some(part) = part else {
                return Ok(None);
            };
            all.push(part);
        }
        Ok(Some(all))
    }

    /// Ends the first part's transaction, left open by a failure or a changed table (each
    /// worker ends its own: its batch commits, or its connection is closed).
    async fn end_first(&self) {
        let _ = self.scanning_client().batch_execute("ROLLBACK").await;
    }
}

/// The statements and bounds of `parts` parts of the chunk after `after` (module docs).
fn plan(
    req: ScanRequest<'_>,
    parts: usize,
    (t, select): (&Table, &str),
    after: Option<&[String]>,
) -> Vec<Part> {
    let n = req.limits.rows;
    let h = n / parts;
    let bytes = (req.limits.bytes / parts).max(1);
    let gap = usize::from(sabotaged());
    (0..parts)
        .map(|j| {
            let last = j + 1 == parts;
            let rows = if last { n - h * (parts - 1) } else { h };
            let skip = (j > 0).then(|| h * j - 1 + gap);
            // The last part reads one row more, which only says whether the table goes on.
            let limit = if last { rows + 1 } else { rows };
            Part {
                sql: sql::keyed_range(
                    &sql::relation(&t.table, t.partitioned),
                    select,
                    &req.binding.key,
                    (after, skip),
                    "",
                    limit,
                ),
                limits: ChunkLimits { rows, bytes },
            }
        })
        .collect()
}

/// The scan request of one part: the chunk's, with the part's bounds.
fn part_request<'a>(req: ScanRequest<'a>, part: &Part) -> ScanRequest<'a> {
    ScanRequest {
        limits: part.limits,
        ..req
    }
}

/// The chunk's rows, the parts in order up to the first that did not read all it could,
/// and whether the table ended inside them (module docs).
fn assemble(
    scanned: Vec<Scanned>,
    planned: &[Part],
) -> (
    Vec<(backfill_core::key::Key, backfill_core::source::Row)>,
    bool,
) {
    let total = scanned.iter().map(|s| s.rows.len()).sum();
    let mut rows = Vec::with_capacity(total);
    let last = planned.len() - 1;
    for (j, (part, plan)) in scanned.into_iter().zip(planned).enumerate() {
        let cut = part.read > part.rows.len();
        let short = part.rows.len() < plan.limits.rows;
        rows.extend(part.rows);
        if j == last || cut {
            return (rows, !cut);
        }
        if short {
            return (rows, true);
        }
    }
    (rows, true)
}

/// Tests prove the parts must meet by skipping the row at each boundary. Debug builds
/// only, never in a release.
fn sabotaged() -> bool {
    cfg!(debug_assertions)
        && std::env::var("SOURCE_POSTGRES_SABOTAGE").is_ok_and(|v| v == "range-gap")
}
