//! One keyed chunk read on several connections at once, each a key range of it in a
//! snapshot of its own (`advanced.backfill_ranges`, a binding's `resource.ranges`).
//!
//! ## Why the parts need no shared snapshot
//!
//! MySQL and MariaDB cannot give two connections one snapshot (PostgreSQL's exported
//! snapshots have no counterpart). They do not need to: the merger's argument (DESIGN.md
//! §7, `backfill_core::merger`) is made key by key. A key's row is right if the snapshot
//! it was read in (1) sees every transaction the stream had delivered when the chunk is
//! taken, and (2) sees only transactions that commit at or before the fence. So each part
//! reads in its own snapshot, and the chunk carries
//!
//! * as its **witness** the weakest part's: on MariaDB each snapshot names the binlog
//!   position it sees through (`binlog_snapshot_position`), and the chunk's witness is the
//!   lowest of them, so the core's check holds for every part or the chunk is read again;
//!   on MySQL (and on a replica) the wait of `before_snapshot` runs once, before any part
//!   starts its snapshot, so every part sees what the stream had read ([`Proven`]);
//! * as its **fence** the highest part's position (MariaDB), or the primary's binlog end
//!   read after every part has read (MySQL, a replica).
//!
//! The model suite runs the merger against a scanner that reads this way, snapshots taken
//! in any order with writes committing between them, and catches the witness of the
//! *latest* snapshot instead.
//!
//! ## Why the parts cover the chunk without a gap or an overlap
//!
//! With `n` rows a chunk and `p` parts of `h = n / p` rows, the *cuts* are found first,
//! before any part's snapshot: the keys `h`, `2h`, ... `(p - 1)·h` rows after the cursor,
//! each read `h` keys past the one before it (`sql::range_cut`), so finding them reads
//! the chunk's keys once whatever `p` is (one query with every offset from the cursor
//! would read `(p - 1)·n / 2`). Part `j` then reads the keys in
//! `(cut j, cut j+1]` (the first from the cursor, the last with no upper end), at most
//! `h` rows (the last `n - h·(p - 1)`), each bound compared in the key columns'
//! collations. The cuts are fixed values, so the ranges meet exactly whatever each
//! snapshot holds: a key is in one range. Rows written between the cuts' query and a
//! part's snapshot only change how many rows a range holds:
//!
//! * a range that holds more than its share is cut there, the chunk ends at its last row
//!   kept, and the ranges after it are dropped (the next chunk reads them again): the
//!   rows are a key-ordered prefix of what the parts saw, nothing skipped;
//! * a range that holds fewer is simply short; the next range starts at its cut anyway.
//!
//! The chunk is `complete` when the last range read fewer rows than its share allows. Each
//! part is held to `1 / p` of the chunk's memory bound. A debug build with
//! `SOURCE_MYSQL_SABOTAGE=range-gap` reads each range up to its cut *exclusive*, losing the
//! row at every cut, and the test of this module then fails.
//!
//! ## Where the rows are read and rendered
//!
//! The first part on the scanning connection, on the connector's thread; each other part
//! on a [`Worker`]: its own connection (to the replica when chunks are read there) on a
//! thread of its own, which renders the part's rows and hands them back whole. Keyless
//! tables are read by one streamed query in one snapshot whatever `ranges` says: their
//! rows have no key to cut at.
//!
//! [`Proven`]: backfill_core::source::SnapshotWitness::Proven

use std::sync::Arc;

use backfill_core::catalog::CatalogTable as _;
use backfill_core::key::Key;
use backfill_core::source::{Chunk, ChunkLimits, ScanRequest, SnapshotWitness, Source};
use backfill_core::worker::Worker;
use backfill_core::{Failure, SourceError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};

use super::{KeyedRead, MySource, key_of, read_keyed, render_columns, scanning};
use crate::catalog::{Column, Table};
use crate::conn::{connect_to, my_error};
use crate::position::BinlogPosition;
use crate::replica::Replica;
use crate::sql;

/// How many connections read the next keyed chunk of `req`'s binding: its `ranges`, at
/// most one a row.
pub(super) fn parts(req: ScanRequest<'_>) -> usize {
    req.binding.ranges.clamp(1, req.limits.rows.max(1))
}

/// One part: its statement, its parameters (the lower bound's, then the upper's), and its
/// share of the chunk's bounds.
struct Part {
    statement: String,
    params: Vec<MyValue>,
    limits: ChunkLimits,
}

impl MySource {
    /// One keyed chunk of `t` in `parts` key ranges, one connection each (module docs).
    /// The caller has run `before_snapshot`.
    pub(super) async fn scan_ranges(
        &mut self,
        req: ScanRequest<'_>,
        t: Table,
        parts: usize,
        what: &str,
    ) -> Result<Chunk<BinlogPosition>, SourceError> {
        let key = &req.binding.key;
        let share = req.limits.rows / parts;
        let cuts = self.cuts(&t, key, req.after, share, parts, what).await?;
        let planned = plan(req, &t, &cuts, share);
        let start = (self.snapshot_names_position(), self.file_base);
        let read = self.read_parts(start, planned, &t, key, what).await;
        let reads = match read {
            Ok(reads) => reads,
            Err(e) => {
                // A worker whose part failed has closed its connection: open them again.
                self.helpers.clear();
                return Err(e);
            }
        };
        let seen: Vec<&BinlogPosition> = reads
            .iter()
            .filter_map(|r| r.seen_through.as_ref())
            .collect();
        let (fence, witness) = match (seen.iter().min(), seen.iter().max()) {
            (Some(&lowest), Some(&highest)) if seen.len() == reads.len() => (
                highest.clone(),
                SnapshotWitness::SeesThrough(lowest.clone()),
            ),
            _ => (self.end_position().await?, SnapshotWitness::Proven),
        };
        let (rows, complete) = assemble(reads);
        Ok(Chunk {
            rows,
            complete,
            fence,
            witness,
        })
    }

    /// The keys the ranges meet at, read before any part's snapshot, each from the one
    /// before it; fewer than `parts - 1` where the table ends first. Each is read as a
    /// chunk row's key is (rendered, then bound as a parameter the same way), so a cut
    /// and a cursor are one kind of value.
    async fn cuts(
        &mut self,
        t: &Table,
        key: &[String],
        after: Option<&Key>,
        share: usize,
        parts: usize,
        what: &str,
    ) -> Result<Vec<Key>, SourceError> {
        let columns: Vec<&Column> = key.iter().filter_map(|k| t.column(k)).collect();
        if columns.len() != key.len() {
            return Err(
                Failure::Malformed.error(format!("{what}: a key column is not the table's"))
            );
        }
        let key_at: Vec<Option<(usize, &Column)>> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Some((i, *c)))
            .collect();
        let conn = scanning(&mut self.replica, &mut self.conn);
        let mut cuts: Vec<Key> = Vec::with_capacity(parts - 1);
        while cuts.len() + 1 < parts {
            let from = cuts.last().or(after);
            let statement = sql::range_cut(t, key, from.is_some(), share);
            let params = from.map_or_else(Vec::new, key_params);
            let cut: Option<mysql_async::Row> = conn
                .exec_first(statement, params)
                .await
                .map_err(|e| my_error(e, what))?;
            let Some(cut) = cut else { break };
            let values = cut.unwrap();
            let row = render_columns(t, columns.iter().copied(), &values)?;
            cuts.push(key_of(key, &key_at, &values, &row));
        }
        Ok(cuts)
    }

    /// Opens the workers that read the other parts, up to `n`, to the server chunks are
    /// read on.
    async fn ensure_helpers(&mut self, n: usize) -> Result<(), SourceError> {
        while self.helpers.len() < n {
            let login = self
                .replica
                .as_ref()
                .map_or(&self.endpoint.login, Replica::login)
                .clone();
            let worker = Worker::start(
                "scan-range",
                move || async move { connect_to(&login).await },
            )
            .await?;
            self.helpers.push(worker);
        }
        Ok(())
    }

    /// Reads every part at once, each in a snapshot of its own: the first on the scanning
    /// connection, the others on the workers.
    async fn read_parts(
        &mut self,
        start: (bool, u64),
        planned: Vec<Part>,
        t: &Table,
        key: &[String],
        what: &str,
    ) -> Result<Vec<KeyedRead>, SourceError> {
        self.ensure_helpers(planned.len() - 1).await?;
        let shared = Arc::new((t.clone(), key.to_vec(), what.to_string()));
        let mut planned = planned.into_iter();
        let first = planned.next().expect("a chunk has a part");
        let others = self.helpers.iter().zip(planned).map(|(worker, part)| {
            let shared = Arc::clone(&shared);
            worker.run(move |mut conn: Conn| async move {
                let (t, key, what) = &*shared;
                let limits = part.limits;
                let read = read_keyed(
                    &mut conn,
                    start,
                    (&part.statement, part.params),
                    (t, key),
                    limits,
                    what,
                )
                .await;
                (read.is_ok().then_some(conn), read)
            })
        });
        let conn = scanning(&mut self.replica, &mut self.conn);
        let first = read_keyed(
            conn,
            start,
            (&first.statement, first.params),
            (t, key),
            first.limits,
            what,
        );
        let (first, others) =
            futures_util::future::join(first, futures_util::future::join_all(others)).await;
        let mut reads = Vec::with_capacity(others.len() + 1);
        reads.push(first?);
        for other in others {
            reads.push(other??);
        }
        Ok(reads)
    }
}

/// A key's values as the parameters of a bound on it.
fn key_params(key: &Key) -> Vec<MyValue> {
    sql::bound_params(&key.0.iter().map(sql::key_param).collect::<Vec<_>>())
}

/// The statements of the parts between `cuts`, after the request's cursor (module docs).
fn plan(req: ScanRequest<'_>, t: &Table, cuts: &[Key], share: usize) -> Vec<Part> {
    let count = cuts.len() + 1;
    let bytes = (req.limits.bytes / count).max(1);
    (0..count)
        .map(|j| {
            let lower = if j == 0 {
                req.after
            } else {
                Some(&cuts[j - 1])
            };
            let upper = cuts.get(j);
            let rows = if j + 1 == count {
                req.limits.rows - share * cuts.len()
            } else {
                share
            };
            let mut statement = sql::keyed_range(
                t,
                &req.binding.key,
                (lower.is_some(), upper.is_some()),
                rows,
            );
            if sabotaged() {
                statement = statement.replace(" <= ", " < ");
            }
            Part {
                statement,
                params: lower
                    .into_iter()
                    .chain(upper)
                    .flat_map(key_params)
                    .collect(),
                limits: ChunkLimits { rows, bytes },
            }
        })
        .collect()
}

/// The chunk's rows, the parts in key order up to the first whose range held more than it
/// could take, and whether the table ended inside them (module docs).
fn assemble(
    reads: Vec<KeyedRead>,
) -> (
    Vec<(backfill_core::key::Key, backfill_core::source::Row)>,
    bool,
) {
    let mut rows = Vec::with_capacity(reads.iter().map(|r| r.rows.len()).sum());
    for read in reads {
        let cut = read.read > read.rows.len();
        rows.extend(read.rows);
        if cut {
            return (rows, false);
        }
    }
    (rows, true)
}

/// Tests prove the ranges must meet by losing the row at each cut. Debug builds only,
/// never in a release.
fn sabotaged() -> bool {
    cfg!(debug_assertions) && std::env::var("SOURCE_MYSQL_SABOTAGE").is_ok_and(|v| v == "range-gap")
}
