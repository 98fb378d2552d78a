//! `compacted` retention (PIPELINE.md §3): a collection that keeps the latest document per
//! key, so that a materialization backfill reads the size of the table, not the length of
//! its history, and a key's latest state is never lost to expiry.
//!
//! ## What a compaction keeps
//!
//! A collection is read by materializations from a **line number** of its capture's log
//! (their position), so a compaction never renumbers: a dropped line stays in the log as a
//! gap that reads as an empty line ([`crate::store::Store::read`]). A line of a compacted
//! collection is dropped when one of these holds, and only then:
//!
//! 1. **A later complete document of its key exists.** A `c` (an insert or a backfilled
//!    row carries every column) or a `d` (the key's state is gone) is complete; so is a
//!    `u` carrying at least as many columns as the table has (its current `discover`). A
//!    `u` with fewer columns (an unchanged TOASTed value PostgreSQL did not send,
//!    DESIGN.md §5) is not: the lines before it still hold that column's value, and they
//!    are kept.
//! 2. **A later truncate of its collection exists.** Truncates themselves are kept (they are
//!    few, and requests mark their starts with them).
//! 3. **It is an expired tombstone**: a `d` that is its key's latest line (or the latest the
//!    pass can see), committed at the source longer ago than the capture's
//!    `tombstone_hours`. Its key's earlier lines are dropped with it by rule 1.
//!
//! ## Why readers see the same tables
//!
//! DESIGN.md §6's merge makes a key's row after a complete document a function of that
//! document and what follows it; rule 1 drops only what precedes one, and rule 2 only what a
//! truncate empties. So a reader that applies the compacted log from line 0, or from any
//! position it had reached before, ends with the same table as with the full log: it skips
//! the dropped lines, and each key's next kept line is complete or follows everything the
//! reader already applied. Rule 3 is the exception Kafka's log cleaner also makes: a reader
//! positioned before an expired tombstone that still holds the row would miss the delete.
//! The store keeps the line past the last expired tombstone it dropped as the collection's
//! **horizon**, and a materialization whose position lies between 0 and the horizon
//! refuses to go on and names the remedy (a materialization backfill, which reads from
//! line 0 and so misses nothing). From line 0 nothing is missed: the tombstone's key has no
//! earlier line left.
//!
//! Delta materializations of a compacted collection receive the kept documents only: a
//! delta table that must be rebuilt exactly needs `full` retention.
//!
//! ## Bounded memory
//!
//! A pass maps each key to its latest line and the line before which its lines may be
//! dropped, keys held as 128-bit hashes (32 bytes an entry). The map holds at most
//! [`MAX_KEYS`] keys: a pass starts where the last one stopped (the log before it is
//! *clean*: no key there has an earlier droppable line) and stops planning where the map
//! is full; the rewrite then drops what the map proves droppable in the whole log, and the
//! next pass goes on from there (the method of Kafka's log cleaner). Lines past the
//! planned range are kept as they are.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use backfill_core::consumer::Line;
use serde_json::{Map, Value};

use crate::discovery::Discovered;
use crate::spec::Capture;
use crate::store::{CaptureLog, Compaction, Compactor, Store};

/// Keys one pass plans for at most: 7/8 of 2^20, so the map stays within 2^20 buckets of
/// 33 bytes (about 33 MiB).
pub const MAX_KEYS: usize = (1 << 20) / 8 * 7;

/// How a capture's collections are compacted.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Per binding: its key columns and its column count when it is compacted and keyed;
    /// `None` when it keeps every document.
    pub bindings: Vec<Option<KeyedBinding>>,
    /// Tombstones older than this (source commit time), in milliseconds, are dropped.
    pub tombstone_ms: u64,
    /// Now, in milliseconds since the epoch.
    pub now_ms: u64,
    /// Keys a pass plans for at most ([`MAX_KEYS`]).
    pub max_keys: usize,
}

/// A compacted collection's key, from its capture's `discover`.
#[derive(Clone, Debug)]
pub struct KeyedBinding {
    /// The key columns.
    pub key: Vec<String>,
    /// The table's columns: an update carrying as many is complete.
    pub columns: usize,
}

impl Policy {
    /// `capture`'s policy, its keys read from its connector's `discover`. A compacted
    /// collection without a key keeps every document (said once per pass).
    pub fn discover(capture: &Capture) -> crate::Result<Self> {
        let discovered = Discovered::run(capture)?;
        let mut bindings = Vec::new();
        for (index, &compacted) in capture.compacted.iter().enumerate() {
            if !compacted {
                bindings.push(None);
                continue;
            }
            let schema = discovered.schema(capture, index)?;
            if schema.key.is_empty() {
                tracing::warn!(capture = %capture.name, "collection {} has no key: it is kept in full, not compacted", capture.collections[index]);
                bindings.push(None);
                continue;
            }
            bindings.push(Some(KeyedBinding {
                key: schema.key,
                columns: schema.columns.len(),
            }));
        }
        Ok(Self {
            bindings,
            tombstone_ms: capture.tombstone_ms,
            now_ms: crate::status::now_ms(),
            max_keys: MAX_KEYS,
        })
    }
}

/// Whether `capture`'s log is due a compaction: it has compacted collections, and its
/// committed log (`bytes`) has reached the capture's threshold and doubled since the last
/// pass (so the rewrites cost a constant share of what is written).
pub fn due(capture: &Capture, last: &Compaction, bytes: u64) -> bool {
    capture.compacted.contains(&true)
        && bytes
            >= capture
                .compact_after_bytes
                .max(last.bytes.saturating_mul(2))
}

/// Compacts `capture`'s log by one pass, once its commit in flight is durable. The
/// connector waits meanwhile (its lines are not read), which the doubling in [`due`]
/// keeps to a constant share of the capture's time.
pub fn compact(
    capture: &Capture,
    store: &dyn Store,
    log: &mut dyn CaptureLog,
) -> crate::Result<Option<Compaction>> {
    let started = std::time::Instant::now();
    log.finish()?;
    let policy = Policy::discover(capture)?;
    let from = store.compaction(&capture.name)?.through;
    let before = log.compactable_bytes().unwrap_or(0);
    let mut plan = Plan::build(policy, from, store.read_from(&capture.name, from)?)?;
    let done = log.compact(&mut plan)?;
    if let Some(done) = &done {
        tracing::info!(
            capture = %capture.name,
            "compacted the log: {} lines dropped, {:.1} MiB to {:.1} MiB in {:.1} s (pass {})",
            plan.dropped,
            before as f64 / f64::from(1 << 20),
            done.bytes as f64 / f64::from(1 << 20),
            started.elapsed().as_secs_f64(),
            done.passes
        );
    }
    Ok(done)
}

/// One key in a pass.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Its latest line in the planned range.
    latest: u64,
    /// Its lines before this one may be dropped (its latest complete document).
    drop_before: u64,
}

/// One pass's plan: built by reading the log from where the last pass stopped, then asked
/// about every line of the log while the store rewrites it.
#[derive(Debug)]
pub struct Plan {
    policy: Policy,
    hashers: (RandomState, RandomState),
    keys: HashMap<u128, Entry>,
    /// Per binding, its last truncate in the planned range.
    truncated: Vec<Option<u64>>,
    /// Lines before this were planned.
    through: u64,
    /// One past the last expired tombstone dropped.
    horizon: u64,
    /// Lines dropped by this pass.
    pub dropped: u64,
}

impl Compactor for Plan {
    /// Lines before this were planned: where the next pass starts.
    fn through(&self) -> u64 {
        self.through
    }

    /// One past the last expired tombstone this pass dropped (0: none).
    fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Whether the rewrite keeps line `at` (its text `line`).
    fn keep(&mut self, at: u64, line: &str) -> crate::Result<bool> {
        if at >= self.through {
            return Ok(true);
        }
        let Some((binding, Some(seen))) = self.read(at, line)? else {
            return Ok(true);
        };
        if self.truncated[binding].is_some_and(|t| t > at) {
            self.dropped += 1;
            return Ok(false);
        }
        let entry = self.keys.get(&seen.key).copied();
        if entry.is_some_and(|e| at < e.drop_before) {
            self.dropped += 1;
            return Ok(false);
        }
        let latest = entry.is_none_or(|e| e.latest == at);
        let expired = seen
            .committed_at_ms
            .is_some_and(|t| self.policy.now_ms.saturating_sub(t) > self.policy.tombstone_ms);
        if seen.op == Op::Delete && latest && expired {
            self.dropped += 1;
            self.horizon = self.horizon.max(at + 1);
            return Ok(false);
        }
        Ok(true)
    }
}

/// What one document says about its key.
struct Seen {
    key: u128,
    op: Op,
    complete: bool,
    committed_at_ms: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Upsert,
    Delete,
}

impl Plan {
    /// Plans a pass over `lines`, the committed log read from line `from` (where the last
    /// pass stopped).
    pub fn build(
        policy: Policy,
        from: u64,
        lines: impl Iterator<Item = crate::Result<String>>,
    ) -> crate::Result<Self> {
        let mut plan = Self {
            truncated: vec![None; policy.bindings.len()],
            policy,
            hashers: (RandomState::new(), RandomState::new()),
            keys: HashMap::new(),
            through: from,
            horizon: 0,
            dropped: 0,
        };
        for line in lines {
            let line = line?;
            let at = plan.through;
            match plan.read(at, &line)? {
                Some((_, Some(seen))) => {
                    if plan.keys.len() >= plan.policy.max_keys && !plan.keys.contains_key(&seen.key)
                    {
                        break;
                    }
                    let entry = plan.keys.entry(seen.key).or_insert(Entry {
                        latest: at,
                        drop_before: 0,
                    });
                    entry.latest = at;
                    if seen.complete {
                        entry.drop_before = at;
                    }
                }
                Some((binding, None)) => plan.truncated[binding] = Some(at),
                None => {}
            }
            plan.through += 1;
        }
        Ok(plan)
    }

    /// A line of a compacted keyed collection: its binding, and its document's key and
    /// kind (`None` for a truncate). `None` for any other line.
    fn read(&self, at: u64, line: &str) -> crate::Result<Option<(usize, Option<Seen>)>> {
        if line.is_empty() {
            return Ok(None);
        }
        let damaged = |e: String| crate::Error::Damaged(format!("log line {at}: {e}"));
        let (binding, doc) = match Line::parse(line).map_err(damaged)? {
            Line::Document { binding, doc } => (binding, Some(doc)),
            Line::Truncate { binding, .. } => (binding, None),
            Line::Checkpoint(_) => return Ok(None),
        };
        let Some(Some(keyed)) = self.policy.bindings.get(binding) else {
            return Ok(None);
        };
        let Some(doc) = doc else {
            return Ok(Some((binding, None)));
        };
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(doc) else {
            return Err(damaged("a document is not a JSON object".into()));
        };
        let meta = fields.remove("_meta").unwrap_or(Value::Null);
        let op = match meta["op"].as_str() {
            Some("d") => Op::Delete,
            _ => Op::Upsert,
        };
        let complete = match meta["op"].as_str() {
            Some("u") => fields.len() >= keyed.columns,
            _ => true,
        };
        Ok(Some((
            binding,
            Some(Seen {
                key: self.key(binding, &keyed.key, &fields),
                op,
                complete,
                committed_at_ms: meta.pointer("/source/ts_ms").and_then(Value::as_u64),
            }),
        )))
    }

    /// The key of a document of `binding`, as a 128-bit hash of its values' text.
    fn key(&self, binding: usize, columns: &[String], fields: &Map<String, Value>) -> u128 {
        let values: Vec<&Value> = columns
            .iter()
            .map(|c| fields.get(c).unwrap_or(&Value::Null))
            .collect();
        let text = (binding, serde_json::to_string(&values).unwrap_or_default());
        (u128::from(self.hashers.0.hash_one(&text)) << 64)
            | u128::from(self.hashers.1.hash_one(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(binding: usize, op: &str, fields: Value, ts: u64) -> String {
        let mut fields = fields;
        fields["_meta"] = json!({"op": op, "source": {"ts_ms": ts}});
        json!({"binding": binding, "doc": fields}).to_string()
    }

    fn policy(now_ms: u64) -> Policy {
        Policy {
            bindings: vec![
                Some(KeyedBinding {
                    key: vec!["id".into()],
                    columns: 2,
                }),
                None,
            ],
            tombstone_ms: 1000,
            now_ms,
            max_keys: 8,
        }
    }

    /// Runs one pass over `log` from `from`, returning the kept lines (gaps as "").
    fn compact(log: &[String], from: u64, now_ms: u64) -> (Vec<String>, Plan) {
        let lines = log
            .iter()
            .skip(usize::try_from(from).unwrap())
            .cloned()
            .map(Ok);
        let mut plan = Plan::build(policy(now_ms), from, lines).unwrap();
        let kept = log
            .iter()
            .enumerate()
            .map(|(at, l)| {
                if plan.keep(at as u64, l).unwrap() {
                    l.clone()
                } else {
                    String::new()
                }
            })
            .collect();
        (kept, plan)
    }

    #[test]
    fn a_key_keeps_what_follows_its_latest_complete_document() {
        let log = vec![
            doc(0, "c", json!({"id": 1, "v": "a"}), 10),
            doc(0, "u", json!({"id": 1, "v": "b"}), 20),
            // An update without the unchanged TOASTed column: the complete one before it
            // still holds that column's value.
            doc(0, "u", json!({"id": 1}), 30),
            doc(0, "c", json!({"id": 2, "v": "x"}), 40),
            doc(1, "c", json!({"id": 1, "v": "full"}), 50),
            doc(1, "c", json!({"id": 1, "v": "full"}), 60),
        ];
        let (kept, plan) = compact(&log, 0, 100);
        assert_eq!(
            kept,
            ["", &log[1], &log[2], &log[3], &log[4], &log[5]],
            "only the line before the complete update goes; the full collection keeps all"
        );
        assert_eq!(plan.dropped, 1);
        assert_eq!(plan.horizon(), 0);
    }

    #[test]
    fn truncates_drop_what_came_before_and_old_tombstones_go_with_their_key() {
        let log = vec![
            doc(0, "c", json!({"id": 1, "v": "a"}), 10),
            doc(0, "c", json!({"id": 2, "v": "b"}), 10),
            json!({"binding": 0, "truncate": {}}).to_string(),
            doc(0, "c", json!({"id": 3, "v": "c"}), 20),
            doc(0, "d", json!({"id": 3}), 30),
            doc(0, "c", json!({"id": 4, "v": "d"}), 40),
            doc(0, "d", json!({"id": 4}), 5000),
        ];
        let (kept, plan) = compact(&log, 0, 5500);
        assert_eq!(kept, ["", "", &log[2], "", "", "", &log[6]]);
        assert_eq!(
            plan.horizon(),
            5,
            "a reader before the expired tombstone would miss its delete"
        );
    }

    #[test]
    fn a_later_pass_drops_lines_of_the_clean_part_its_keys_supersede() {
        let mut log = vec![
            doc(0, "c", json!({"id": 1, "v": "a"}), 10),
            doc(0, "c", json!({"id": 2, "v": "b"}), 10),
        ];
        let (mut kept, first) = compact(&log, 0, 100);
        assert_eq!(first.through(), 2);
        kept.push(doc(0, "u", json!({"id": 1, "v": "z"}), 20));
        log = kept;
        let (kept, _) = compact(&log, 2, 100);
        assert_eq!(kept, ["", &log[1], &log[2]]);
    }

    #[test]
    fn a_pass_whose_key_map_is_full_stops_planning_and_later_passes_finish() {
        let mut log = vec![
            doc(0, "c", json!({"id": 1, "v": "a"}), 10),
            doc(0, "c", json!({"id": 2, "v": "b"}), 10),
            doc(0, "u", json!({"id": 1, "v": "c"}), 20),
            doc(0, "u", json!({"id": 2, "v": "d"}), 20),
        ];
        let mut passes = Vec::new();
        let mut from = 0;
        while from < 4 {
            let lines = log
                .iter()
                .skip(usize::try_from(from).unwrap())
                .cloned()
                .map(Ok);
            let mut p = policy(100);
            p.max_keys = 1;
            let mut plan = Plan::build(p, from, lines).unwrap();
            log = log
                .iter()
                .enumerate()
                .map(|(at, l)| {
                    if l.is_empty() || plan.keep(at as u64, l).unwrap() {
                        l.clone()
                    } else {
                        String::new()
                    }
                })
                .collect();
            passes.push(plan.through());
            from = plan.through();
        }
        assert_eq!(passes, [1, 2, 3, 4], "one key a pass");
        assert_eq!(
            log,
            [
                "",
                "",
                &doc(0, "u", json!({"id": 1, "v": "c"}), 20),
                &doc(0, "u", json!({"id": 2, "v": "d"}), 20)
            ]
        );
    }
}
