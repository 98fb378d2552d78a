//! A simulated database for the model-based suite: tables, a commit log, snapshots, and the
//! commit-before-visible gap (a transaction's log record reaches the stream before new
//! snapshots see it). It implements the core's source traits exactly as a real database
//! crate would, and runs a random workload from inside those calls, so every interleaving
//! of scans, fences, stream reads and writes is reachable.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::rc::Rc;

use backfill_core::SourceError;
use backfill_core::key::{Key, Region, Window};
use backfill_core::merger::Shutdown;
use backfill_core::mode::ResolvedMode;
use backfill_core::output::Sink;
use backfill_core::source::{
    BindingSpec, Change, ChangeMeta, ChangeStream, Chunk, ChunkScanner, KeyClassifier, Op,
    Position, Row, ScanRequest, SnapshotWitness, Source, StreamEvent, StreamStart,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use testkit::checker::{KeyEvent, Oracle};
pub(crate) use testkit::rng::Rng;

/// Log position: a commit sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Seq {
    pub(crate) seq: u64,
}

impl Position for Seq {}

#[derive(Clone, Debug)]
enum SimChange {
    Insert {
        table: usize,
        id: i64,
        row: Row,
    },
    Update {
        table: usize,
        old: i64,
        id: i64,
        before: Row,
        row: Row,
    },
    Delete {
        table: usize,
        id: i64,
        before: Row,
    },
    Truncate {
        table: usize,
    },
    /// The table's rows all take new values that no change carries, as a column added
    /// with a default gives them; the stream says so with a `Reread`.
    Rewrite {
        table: usize,
        rows: BTreeMap<i64, Row>,
    },
}

#[derive(Clone, Debug)]
struct Txn {
    seq: u64,
    changes: Vec<SimChange>,
    touched: HashSet<(usize, i64)>,
}

/// How a case is set up.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Per binding: its mode; `WithoutPrimaryKey` tables are keyless.
    pub(crate) modes: Vec<ResolvedMode>,
    /// Probability that a commit is not yet visible to new snapshots.
    pub(crate) gap: f64,
    /// Probability, at each source call, that a commit in the gap becomes visible.
    pub(crate) reveal: f64,
    /// Transactions the workload writes after the initial load.
    pub(crate) txns: usize,
    /// Rows per table before the capture starts.
    pub(crate) initial_rows: usize,
    /// Witness the scanner returns: MVCC ids or a log position.
    pub(crate) mvcc_witness: bool,
    /// How keyed chunks are read.
    pub(crate) reads: Reads,
    /// Precise keys are classified by "asking the database" instead of natively.
    pub(crate) database_classification: bool,
    /// Probability that a source call fails transiently.
    pub(crate) fail: f64,
}

/// How the scanner reads a keyed chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reads {
    /// One snapshot for the whole chunk, with the witness of `mvcc_witness`.
    Snapshot,
    /// SQL Server's method: rows read one at a time while transactions commit between the
    /// reads; each read is a locking read, so it waits for (and so sees) every transaction
    /// whose commit is in the log; the fence is a position after the scan and the witness
    /// `Proven`.
    Locking,
    /// A defect, for the sensitivity test: the same, but the reads do not wait, so a
    /// transaction in the commit-before-visible gap is not seen.
    LockingWithoutWaiting,
    /// MySQL's and MariaDB's parallel read: the chunk cut into this many key ranges at
    /// keys found first, each range read in a snapshot of its own, taken in any order with
    /// writes committing between them; the witness is the earliest snapshot's (visibility
    /// only grows, so it sees least) and the fence the log's end after the last.
    Parts(usize),
    /// A defect, for the sensitivity test: the same, but the witness is the *latest*
    /// snapshot's, so an earlier part may miss a delivered transaction unchecked.
    PartsWitnessOfLatest(usize),
}

/// The database: tables as the log defines them, which commits are visible, and the
/// workload's own randomness.
#[derive(Debug)]
pub(crate) struct SimDb {
    pub(crate) rng: Rng,
    pub(crate) layout: Layout,
    log: Vec<Txn>,
    visible: Vec<bool>,
    /// Current committed content of each table (keyless: key is a physical slot).
    truth: Vec<BTreeMap<i64, Row>>,
    next_id: i64,
    next_version: u64,
    deleted_ids: Vec<(usize, i64)>,
    pub(crate) writes_left: usize,
    /// The state last made durable by the sink, for the keyless-write rule.
    pub(crate) durable: Rc<RefCell<Option<Vec<u8>>>>,
    /// Each binding's state key in the running config.
    pub(crate) state_keys: Vec<String>,
    /// Writes are paused until the durable state holds `state_keys`: the upgrade path
    /// (every counter raised) is taken with writes paused.
    pub(crate) paused: bool,
    pub(crate) shutdown: Option<Shutdown>,
    pub(crate) stop_after_calls: Option<u64>,
    /// Once the workload is written and delivered, the stream waits (as a real one does on
    /// an idle database) instead of reporting progress.
    pub(crate) idle_waits: bool,
    calls: u64,
}

impl SimDb {
    pub(crate) fn new(seed: u64, layout: Layout) -> Self {
        let tables = layout.modes.len();
        let mut db = Self {
            rng: Rng::new(seed),
            writes_left: layout.txns,
            layout,
            log: Vec::new(),
            visible: Vec::new(),
            truth: vec![BTreeMap::new(); tables],
            next_id: 1,
            next_version: 1,
            deleted_ids: Vec::new(),
            durable: Rc::new(RefCell::new(None)),
            state_keys: Vec::new(),
            paused: false,
            shutdown: None,
            stop_after_calls: None,
            idle_waits: false,
            calls: 0,
        };
        for t in 0..tables {
            for _ in 0..db.layout.initial_rows {
                let (id, row) = db.new_row(t);
                db.commit(vec![SimChange::Insert { table: t, id, row }], true);
            }
        }
        db
    }

    fn keyless(&self, table: usize) -> bool {
        self.layout.modes[table] == ResolvedMode::WithoutPrimaryKey
    }

    fn new_row(&mut self, table: usize) -> (i64, Row) {
        let id = self.next_id;
        self.next_id += 1;
        (id, self.row(table, id))
    }

    fn row(&mut self, table: usize, id: i64) -> Row {
        let v = self.next_version;
        self.next_version += 1;
        let mut row = Map::new();
        if !self.keyless(table) {
            row.insert("id".into(), json!(id));
        }
        row.insert("v".into(), json!(v));
        if v.is_multiple_of(3) {
            row.insert("pad".into(), json!(format!("p{v}")));
        } else {
            row.insert("pad".into(), Value::Null);
        }
        Row::from(row)
    }

    fn apply(tables: &mut [BTreeMap<i64, Row>], change: &SimChange) {
        match change {
            SimChange::Insert { table, id, row } => {
                tables[*table].insert(*id, row.clone());
            }
            SimChange::Update {
                table,
                old,
                id,
                row,
                ..
            } => {
                tables[*table].remove(old);
                tables[*table].insert(*id, row.clone());
            }
            SimChange::Delete { table, id, .. } => {
                tables[*table].remove(id);
            }
            SimChange::Truncate { table } => tables[*table].clear(),
            SimChange::Rewrite { table, rows } => {
                for (id, row) in rows {
                    if let Some(stored) = tables[*table].get_mut(id) {
                        *stored = row.clone();
                    }
                }
            }
        }
    }

    fn commit(&mut self, changes: Vec<SimChange>, visible_now: bool) {
        let mut touched = HashSet::new();
        for c in &changes {
            match c {
                SimChange::Insert { table, id, .. } | SimChange::Delete { table, id, .. } => {
                    touched.insert((*table, if self.keyless(*table) { -1 } else { *id }));
                }
                SimChange::Update { table, old, id, .. } => {
                    touched.insert((*table, if self.keyless(*table) { -1 } else { *old }));
                    touched.insert((*table, if self.keyless(*table) { -1 } else { *id }));
                }
                SimChange::Truncate { table } | SimChange::Rewrite { table, .. } => {
                    touched.insert((*table, -1));
                }
            }
        }
        // A transaction that conflicts with one still in the gap waits for it (row locks).
        for i in 0..self.log.len() {
            if !self.visible[i] {
                let conflict = self.log[i].touched.iter().any(|(t, k)| {
                    touched.contains(&(*t, *k))
                        || touched.contains(&(*t, -1))
                        || *k == -1 && touched.iter().any(|(t2, _)| t2 == t)
                });
                if conflict {
                    self.visible[i] = true;
                }
            }
        }
        for c in &changes {
            Self::apply(&mut self.truth, c);
        }
        let seq = self.log.len() as u64 + 1;
        self.log.push(Txn {
            seq,
            changes,
            touched,
        });
        self.visible.push(visible_now);
    }

    fn tick(&mut self) {
        for i in 0..self.visible.len() {
            if !self.visible[i] && self.rng.chance(self.layout.reveal) {
                self.visible[i] = true;
            }
        }
    }

    /// Keyless tables are written only once their current backfill is durably complete:
    /// Without Primary Key is exact only when the table is not written during its backfill.
    fn binding_active(&self, table: usize) -> bool {
        let durable = self.durable.borrow();
        let Some(bytes) = durable.as_ref() else {
            return false;
        };
        let Ok(state) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        let Some(key) = self.state_keys.get(table) else {
            return false;
        };
        state["bindings"][key.as_str()]["phase"] == "active"
    }

    /// Whether the durable state holds an entry for each of `keys`.
    pub(crate) fn durable_has(&self, keys: &[String]) -> bool {
        let durable = self.durable.borrow();
        let Some(bytes) = durable.as_ref() else {
            return false;
        };
        let Ok(state) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        keys.iter()
            .all(|k| state["bindings"].get(k.as_str()).is_some())
    }

    /// Whether the stream has nothing left to deliver past the durable position.
    pub(crate) fn durably_caught_up(&self) -> bool {
        let durable = self.durable.borrow();
        let Some(bytes) = durable.as_ref() else {
            return false;
        };
        let Ok(state) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        state["position"]["seq"].as_u64() == Some(self.log_end())
    }

    /// Called at every source call: maybe fail, maybe request a stop, let time pass, and
    /// maybe write.
    fn step(&mut self) -> Result<(), SourceError> {
        self.calls += 1;
        if let (Some(limit), Some(shutdown)) = (self.stop_after_calls, &self.shutdown)
            && self.calls >= limit
        {
            shutdown.request();
        }
        if self.rng.chance(self.layout.fail) {
            return Err(SourceError::transient("simulated connection reset"));
        }
        self.tick();
        if self.paused {
            if !self.durable_has(&self.state_keys) {
                return Ok(());
            }
            self.paused = false;
        }
        let n = self.rng.range(0, 3);
        for _ in 0..n {
            if self.writes_left == 0 {
                break;
            }
            self.write_txn();
        }
        Ok(())
    }

    fn write_txn(&mut self) {
        let tables = self.layout.modes.len();
        let mut work = self.truth.clone();
        let mut changes = Vec::new();
        let size = if self.rng.chance(0.1) {
            self.rng.range(4, 12)
        } else {
            self.rng.range(1, 4)
        };
        for _ in 0..size {
            let t = self.rng.range(0, tables as u64) as usize;
            if self.keyless(t) && !self.binding_active(t) {
                continue;
            }
            let roll = self.rng.range(0, 100);
            let existing: Vec<i64> = work[t].keys().copied().collect();
            let pick = |rng: &mut Rng| {
                existing
                    .get(rng.range(0, existing.len().max(1) as u64) as usize)
                    .copied()
            };
            let change = if roll < 35 || existing.is_empty() {
                let reinsert = !self.keyless(t) && self.rng.chance(0.3);
                let id = match self
                    .deleted_ids
                    .iter()
                    .position(|(tt, id)| *tt == t && !work[t].contains_key(id))
                {
                    Some(i) if reinsert => self.deleted_ids.swap_remove(i).1,
                    _ => {
                        self.next_id += 1;
                        self.next_id - 1
                    }
                };
                let row = self.row(t, id);
                SimChange::Insert { table: t, id, row }
            } else if roll < 65 {
                let Some(old) = pick(&mut self.rng) else {
                    continue;
                };
                let before = work[t][&old].clone();
                if self.keyless(t) {
                    // A keyless update moves the row to a new physical slot.
                    self.next_id += 1;
                    let row = self.row(t, old);
                    SimChange::Update {
                        table: t,
                        old,
                        id: self.next_id - 1,
                        before,
                        row,
                    }
                } else {
                    let row = self.row(t, old);
                    SimChange::Update {
                        table: t,
                        old,
                        id: old,
                        before,
                        row,
                    }
                }
            } else if roll < 75 && !self.keyless(t) {
                let Some(old) = pick(&mut self.rng) else {
                    continue;
                };
                let before = work[t][&old].clone();
                self.next_id += 1;
                let id = self.next_id - 1;
                let row = self.row(t, id);
                self.deleted_ids.push((t, old));
                SimChange::Update {
                    table: t,
                    old,
                    id,
                    before,
                    row,
                }
            } else if roll == 98
                && !self.keyless(t)
                && self.layout.modes[t] != ResolvedMode::OnlyChanges
            {
                // Keyless tables are left out: Without Primary Key is exact only when the
                // table is not written during its backfill, which a reread cannot wait for;
                // Only Changes reads no rows by choice.
                let ids: Vec<i64> = work[t].keys().copied().collect();
                let rows = ids.into_iter().map(|id| (id, self.row(t, id))).collect();
                SimChange::Rewrite { table: t, rows }
            } else if roll < 99 {
                let Some(id) = pick(&mut self.rng) else {
                    continue;
                };
                let before = work[t][&id].clone();
                self.deleted_ids.push((t, id));
                SimChange::Delete {
                    table: t,
                    id,
                    before,
                }
            } else {
                SimChange::Truncate { table: t }
            };
            Self::apply(&mut work, &change);
            changes.push(change);
        }
        if changes.is_empty() {
            return;
        }
        self.writes_left -= 1;
        let visible = !self.rng.chance(self.layout.gap);
        self.commit(changes, visible);
    }

    /// Makes every commit visible and stops writing: the quiet end of a case.
    pub(crate) fn quiesce(&mut self) {
        self.writes_left = 0;
        self.visible.iter_mut().for_each(|v| *v = true);
    }

    pub(crate) fn dump_log(&self) -> String {
        self.log
            .iter()
            .map(|t| format!("{} {:?}\n", t.seq, t.changes))
            .collect()
    }

    pub(crate) fn log_end(&self) -> u64 {
        self.log.len() as u64
    }

    fn snapshot(&self) -> Vec<BTreeMap<i64, Row>> {
        let mut tables = vec![BTreeMap::new(); self.truth.len()];
        for (txn, &vis) in self.log.iter().zip(&self.visible) {
            if vis {
                for c in &txn.changes {
                    Self::apply(&mut tables, c);
                }
            }
        }
        tables
    }

    /// A chunk read one row at a time, writes committing between the reads ([`Reads`]).
    fn scan_row_by_row(&mut self, req: ScanRequest<'_>) -> Result<Chunk<Seq>, SourceError> {
        let t = req.binding.index;
        let mut last = req
            .after
            .and_then(|k| k.0.first())
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        let mut rows: Vec<(Key, Row)> = Vec::new();
        while rows.len() <= req.limits.rows {
            if self.rng.chance(0.4) {
                self.step()?;
            }
            let next = if self.layout.reads == Reads::Locking {
                // Waiting on the row locks of committed transactions = reading the log's state.
                self.truth[t]
                    .range(last.saturating_add(1)..)
                    .next()
                    .map(|(id, row)| (*id, row.clone()))
            } else {
                self.snapshot()
                    .swap_remove(t)
                    .range(last.saturating_add(1)..)
                    .next()
                    .map(|(id, row)| (*id, row.clone()))
            };
            let Some((id, row)) = next else { break };
            last = id;
            rows.push((Key(vec![json!(id)]), row));
        }
        let complete = rows.len() <= req.limits.rows;
        rows.truncate(req.limits.rows);
        Ok(Chunk {
            rows,
            complete,
            // The watermark commits after the scan: after every commit the reads saw.
            fence: Seq {
                seq: self.log_end(),
            },
            witness: SnapshotWitness::Proven,
        })
    }

    /// A chunk read in key ranges, each in its own snapshot ([`Reads::Parts`]). The
    /// ranges meet at keys read before any part's snapshot, so they tile the chunk
    /// whatever the snapshots see; a range whose snapshot holds more rows than its share
    /// ends the chunk at its share, and the ranges after it are dropped.
    fn scan_in_parts(
        &mut self,
        req: ScanRequest<'_>,
        parts: usize,
        witness_of_latest: bool,
    ) -> Result<Chunk<Seq>, SourceError> {
        let t = req.binding.index;
        let after = req
            .after
            .and_then(|k| k.0.first())
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        let n = req.limits.rows;
        let parts = parts.clamp(1, n.max(1));
        let share = (n / parts).max(1);
        let keys: Vec<i64> = self.snapshot()[t]
            .range(after.saturating_add(1)..)
            .take(n)
            .map(|(id, _)| *id)
            .collect();
        // Part j reads (bounds[j - 1], bounds[j]]; the last has no upper bound.
        let bounds: Vec<i64> = (1..parts)
            .filter_map(|j| keys.get(j * share - 1).copied())
            .collect();
        let count = bounds.len() + 1;
        let mut order: Vec<usize> = (0..count).collect();
        for i in (1..count).rev() {
            order.swap(i, self.rng.index(i + 1));
        }
        let mut read: Vec<Vec<(i64, Row)>> = vec![Vec::new(); count];
        let mut witnesses = Vec::with_capacity(count);
        for &j in &order {
            // The parts' snapshots start at different moments: time passes between them.
            for _ in 0..self.rng.range(0, 4) {
                self.step()?;
            }
            // ...and commits in the gap become visible meanwhile, the moment the defect
            // of [`Reads::PartsWitnessOfLatest`] needs.
            for _ in 0..self.rng.range(0, 12) {
                self.tick();
            }
            let lo = if j == 0 { after } else { bounds[j - 1] };
            let cap = if j + 1 == count {
                n - share * bounds.len()
            } else {
                share
            };
            let snapshot = self.snapshot().swap_remove(t);
            read[j] = snapshot
                .range(lo.saturating_add(1)..)
                .take_while(|(id, _)| bounds.get(j).is_none_or(|hi| **id <= *hi))
                .take(cap + 1)
                .map(|(id, row)| (*id, row.clone()))
                .collect();
            witnesses.push(self.witness());
        }
        let witness = if witness_of_latest {
            witnesses.pop()
        } else {
            witnesses.into_iter().next()
        };
        let mut rows = Vec::new();
        let mut complete = true;
        for (j, part) in read.into_iter().enumerate() {
            let cap = if j + 1 == count {
                n - share * bounds.len()
            } else {
                share
            };
            let cut = part.len() > cap;
            rows.extend(
                part.into_iter()
                    .take(cap)
                    .map(|(id, row)| (Key(vec![json!(id)]), row)),
            );
            if cut {
                complete = false;
                break;
            }
        }
        Ok(Chunk {
            rows,
            complete,
            fence: Seq {
                seq: self.log_end(),
            },
            witness: witness.expect("a chunk has a part"),
        })
    }

    fn witness(&self) -> SnapshotWitness<Seq> {
        if self.layout.mvcc_witness {
            let xmax = self
                .log
                .iter()
                .zip(&self.visible)
                .filter(|(_, v)| **v)
                .map(|(t, _)| t.seq)
                .max()
                .unwrap_or(0)
                + 1;
            let in_progress = self
                .log
                .iter()
                .zip(&self.visible)
                .filter(|(t, v)| !**v && t.seq < xmax)
                .map(|(t, _)| t.seq)
                .collect();
            SnapshotWitness::Mvcc { xmax, in_progress }
        } else {
            let through = self.visible.iter().take_while(|v| **v).count() as u64;
            SnapshotWitness::SeesThrough(Seq { seq: through })
        }
    }

    fn events_of(&self, index: usize) -> Vec<StreamEvent<Seq>> {
        let txn = &self.log[index];
        let mut events = vec![StreamEvent::Begin];
        for (i, c) in txn.changes.iter().enumerate() {
            let meta = ChangeMeta {
                pos: vec![txn.seq, i as u64],
                fields: {
                    let mut m = Row::new();
                    m.push_u64("txid", txn.seq);
                    std::sync::Arc::new(m)
                },
            };
            let keyed = |table: usize, id: i64| -> Key {
                if self.keyless(table) {
                    Key(Vec::new())
                } else {
                    Key(vec![json!(id)])
                }
            };
            let event = match c {
                SimChange::Insert { table, id, row } => StreamEvent::Change(Change {
                    binding: *table,
                    op: Op::Insert,
                    key: keyed(*table, *id),
                    before_key: None,
                    row: row.clone(),
                    before: None,
                    meta,
                }),
                SimChange::Update {
                    table,
                    old,
                    id,
                    before,
                    row,
                } => StreamEvent::Change(Change {
                    binding: *table,
                    op: Op::Update,
                    key: keyed(*table, *id),
                    before_key: (!self.keyless(*table)).then(|| keyed(*table, *old)),
                    row: row.clone(),
                    before: (self.keyless(*table) || txn.seq.is_multiple_of(2))
                        .then(|| before.clone()),
                    meta,
                }),
                SimChange::Delete { table, id, before } => {
                    let keyless = self.keyless(*table);
                    StreamEvent::Change(Change {
                        binding: *table,
                        op: Op::Delete,
                        key: keyed(*table, *id),
                        before_key: None,
                        row: if keyless {
                            before.clone()
                        } else {
                            [("id".to_string(), json!(id))].into_iter().collect()
                        },
                        before: keyless.then(|| before.clone()),
                        meta,
                    })
                }
                SimChange::Truncate { table } => StreamEvent::Truncate {
                    bindings: vec![*table],
                    meta,
                },
                SimChange::Rewrite { table, .. } => StreamEvent::Reread {
                    binding: *table,
                    column_mark: None,
                    reason: "rewritten".into(),
                },
            };
            events.push(event);
        }
        events.push(StreamEvent::Commit {
            position: Seq { seq: txn.seq },
            txid: Some(txn.seq),
            ts_ms: Some(0),
        });
        events
    }

    /// The rows of `table` after every transaction up to `seq`.
    fn rows_through(&self, table: usize, seq: u64) -> BTreeMap<i64, Row> {
        let mut tables = vec![BTreeMap::new(); self.truth.len()];
        for txn in self.log.iter().take(seq as usize) {
            for c in &txn.changes {
                Self::apply(&mut tables, c);
            }
        }
        tables.swap_remove(table)
    }
}

impl Oracle for SimDb {
    fn final_rows(&self, binding: usize) -> Vec<Map<String, Value>> {
        self.truth[binding].values().map(Row::to_map).collect()
    }

    fn history(&self, binding: usize, key_identity: &str) -> Option<Vec<KeyEvent>> {
        let id: i64 = serde_json::from_str::<Vec<i64>>(key_identity)
            .ok()?
            .first()
            .copied()?;
        let mut present = false;
        let mut events = Vec::new();
        for txn in &self.log {
            for c in &txn.changes {
                match c {
                    SimChange::Insert { table, id: i, row } if *table == binding && *i == id => {
                        events.push(KeyEvent::Write(row.to_map()));
                        present = true;
                    }
                    SimChange::Update {
                        table,
                        old,
                        id: i,
                        row,
                        ..
                    } if *table == binding => {
                        if *old == id && *i != id {
                            events.push(KeyEvent::Delete);
                            present = false;
                        } else if *i == id {
                            events.push(KeyEvent::Write(row.to_map()));
                            present = true;
                        }
                    }
                    SimChange::Delete { table, id: i, .. } if *table == binding && *i == id => {
                        events.push(KeyEvent::Delete);
                        present = false;
                    }
                    SimChange::Truncate { table } if *table == binding && present => {
                        events.push(KeyEvent::Delete);
                        present = false;
                    }
                    SimChange::Rewrite { table, rows } if *table == binding && present => {
                        if let Some(row) = rows.get(&id) {
                            events.push(KeyEvent::Write(row.to_map()));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(events)
    }

    fn rows_at(&self, binding: usize, position: &Value) -> Option<Vec<Map<String, Value>>> {
        let seq = position["seq"].as_u64()?;
        Some(
            self.rows_through(binding, seq)
                .values()
                .map(Row::to_map)
                .collect(),
        )
    }
}

/// The source a run of the merger drives.
#[derive(Debug)]
pub(crate) struct SimSource {
    pub(crate) db: Rc<RefCell<SimDb>>,
}

#[derive(Debug)]
pub(crate) struct SimStream {
    db: Rc<RefCell<SimDb>>,
    next: usize,
    queue: std::collections::VecDeque<StreamEvent<Seq>>,
}

impl ChunkScanner for SimSource {
    type Position = Seq;

    async fn scan(&mut self, req: ScanRequest<'_>) -> Result<Chunk<Seq>, SourceError> {
        let mut db = self.db.borrow_mut();
        db.step()?;
        let t = req.binding.index;
        match db.layout.reads {
            _ if db.keyless(t) => {}
            Reads::Snapshot => {}
            Reads::Parts(n) => return db.scan_in_parts(req, n, false),
            Reads::PartsWitnessOfLatest(n) => return db.scan_in_parts(req, n, true),
            Reads::Locking | Reads::LockingWithoutWaiting => return db.scan_row_by_row(req),
        }
        let snapshot = db.snapshot().swap_remove(t);
        let after = req
            .after
            .and_then(|k| k.0.first())
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        let mut rows: Vec<(Key, Row)> = snapshot
            .range(after.saturating_add(1)..)
            .take(req.limits.rows + 1)
            .map(|(id, row)| (Key(vec![json!(id)]), row.clone()))
            .collect();
        let complete = rows.len() <= req.limits.rows;
        rows.truncate(req.limits.rows);
        Ok(Chunk {
            rows,
            complete,
            fence: Seq { seq: db.log_end() },
            witness: db.witness(),
        })
    }
}

impl KeyClassifier for SimSource {
    fn compare_native(&self, binding: &BindingSpec, a: &Key, b: &Key) -> Option<Ordering> {
        if self.db.borrow().layout.database_classification && binding.mode == ResolvedMode::Precise
        {
            return None;
        }
        Some(int_key(a).cmp(&int_key(b)))
    }

    async fn classify(
        &mut self,
        binding: &BindingSpec,
        window: Window<'_>,
        keys: &[&Key],
    ) -> Result<Vec<Region>, SourceError> {
        // "Asks the database": one call per batch, answered with the database's order.
        self.db.borrow_mut().step()?;
        let _ = binding;
        Ok(keys
            .iter()
            .map(|k| window.classify_with(k, |a, b| int_key(a).cmp(&int_key(b))))
            .collect())
    }
}

fn int_key(k: &Key) -> i64 {
    k.0.first().and_then(Value::as_i64).unwrap_or(i64::MIN)
}

impl Source for SimSource {
    type Stream = SimStream;

    async fn open_stream(
        &mut self,
        start: StreamStart<Seq>,
        _bindings: &[BindingSpec],
    ) -> Result<(SimStream, Seq), SourceError> {
        let mut db = self.db.borrow_mut();
        let at = match start {
            StreamStart::Resume(p) => p.seq,
            StreamStart::Fresh | StreamStart::Reset => db.log_end(),
        };
        // The trait's promise: what the stream starts after is visible to later snapshots
        // (a real source waits for transactions running at open to finish).
        for v in db.visible.iter_mut().take(at as usize) {
            *v = true;
        }
        db.step()?;
        Ok((
            SimStream {
                db: Rc::clone(&self.db),
                next: at as usize,
                queue: Default::default(),
            },
            Seq { seq: at },
        ))
    }

    async fn end_position(&mut self) -> Result<Seq, SourceError> {
        let mut db = self.db.borrow_mut();
        db.step()?;
        Ok(Seq { seq: db.log_end() })
    }
}

impl ChangeStream for SimStream {
    type Position = Seq;

    async fn next_event(&mut self) -> Result<StreamEvent<Seq>, SourceError> {
        if let Some(e) = self.queue.pop_front() {
            return Ok(e);
        }
        {
            let mut db = self.db.borrow_mut();
            db.step()?;
            if self.next < db.log.len() {
                self.queue.extend(db.events_of(self.next));
                self.next += 1;
                return Ok(self.queue.pop_front().expect("a transaction has events"));
            }
            if !(db.idle_waits && db.writes_left == 0) {
                return Ok(StreamEvent::Progress {
                    position: Seq { seq: db.log_end() },
                });
            }
        }
        // Everything delivered on an idle database: wait, as a real stream does, for a
        // commit that never comes.
        std::future::pending().await
    }

    fn next_buffered(&mut self) -> Option<StreamEvent<Seq>> {
        self.queue.pop_front()
    }

    /// A source may discard its log up to an acknowledged position, so one acknowledged
    /// before the state holding it is durable could lose changes after a crash: refused,
    /// which fails the run with a message the suite reports as a violation.
    async fn acknowledge(&mut self, acknowledged: &Seq) -> Result<(), SourceError> {
        let db = self.db.borrow();
        let durable = db.durable.borrow();
        let at = durable
            .as_ref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|state| state["position"]["seq"].as_u64());
        if at.is_none_or(|seq| seq < acknowledged.seq) {
            return Err(SourceError::definite(format!(
                "acknowledged {acknowledged:?} while the durable state holds {at:?}"
            )));
        }
        Ok(())
    }
}

/// Records lines and the durable state; fails every operation after `ops_left` reaches 0
/// (a crash at that exact instant).
#[derive(Debug)]
pub(crate) struct SimSink {
    pub(crate) lines: Rc<RefCell<Vec<String>>>,
    /// How many of `lines` the last flush made visible.
    pub(crate) flushed: Rc<RefCell<usize>>,
    pub(crate) durable: Rc<RefCell<Option<Vec<u8>>>>,
    pub(crate) ops_left: Option<u64>,
    /// How many times `persisted` says "not yet" before a replacement is durable.
    pub(crate) persist_polls: u32,
    pub(crate) in_flight: Option<(Vec<u8>, u32)>,
}

impl SimSink {
    fn op(&mut self) -> io::Result<()> {
        match &mut self.ops_left {
            Some(0) => Err(io::Error::other("simulated crash")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Sink for SimSink {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.op()?;
        self.lines
            .borrow_mut()
            .push(String::from_utf8_lossy(line).into_owned());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.op()?;
        *self.flushed.borrow_mut() = self.lines.borrow().len();
        Ok(())
    }

    fn persist_state(&mut self, state: Vec<u8>) -> io::Result<()> {
        self.op()?;
        self.in_flight = Some((state, self.persist_polls));
        Ok(())
    }

    /// A replacement becomes durable after `persist_polls` looks, or at once when waited
    /// for; a crash before that leaves the old state.
    fn persisted(&mut self, wait: bool) -> io::Result<bool> {
        let Some((state, polls)) = self.in_flight.take() else {
            return Ok(true);
        };
        if !wait && polls > 0 {
            self.in_flight = Some((state, polls - 1));
            return Ok(false);
        }
        self.op()?;
        *self.durable.borrow_mut() = Some(state);
        Ok(true)
    }
}
