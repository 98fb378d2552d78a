//! The guarantee checker: reads a capture's output the way a transactional consumer
//! would, and checks it against DESIGN.md §4 and §6.
//!
//! It is shared by the model-based suite (where an oracle knows every version every key
//! ever had) and the live suites (where the oracle is the table itself). It knows nothing
//! of the merger's internals: it sees only the lines a user's pipeline would see.
//!
//! What it checks:
//! * **protocol**: each line is one of the three shapes and nothing else; each run starts
//!   with a checkpoint; snapshot documents are `c` with `snapshot: true` and no `pos`;
//!   streamed documents have a `pos` that strictly increases over the committed output;
//! * **consumer protocol**: documents count once a checkpoint the consumer has not seen
//!   follows them; a checkpoint equal to the last one seen (the resume checkpoint of a new
//!   process, or of a retry inside one) discards them;
//! * **convergence** (every mode): merge-applying the committed output gives the table;
//! * **Precise histories** (with an oracle): per key, the first document is `c` (or `d` in
//!   an incremental backfill), `c` follows only nothing or `d`, and every image is a state
//!   the row really had, strictly later than the previous document's;
//! * **Only Changes**: the output merge-applied onto the table as it was at activation
//!   gives the table.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use backfill_core::consumer::{CommitRule, Verdict};
use backfill_core::mode::ResolvedMode;
use serde_json::{Map, Value};

/// A row as the checker sees it: columns without `_meta`.
pub type Row = Map<String, Value>;

/// What the checker needs to know of a binding.
#[derive(Clone, Debug)]
pub struct BindingExpect {
    /// The mode it runs.
    pub mode: ResolvedMode,
    /// Key columns; empty for keyless tables (applied as multisets).
    pub key: Vec<String>,
    /// `<namespace>.<stream>`: its state keys are this, or this with `.v<N>`.
    pub table: String,
    /// A column every write sets to a larger number than any write before it: without an
    /// oracle of histories, Precise images must then show it strictly increasing per key
    /// (no version twice, never an older one after a newer one).
    pub version_column: Option<String>,
}

/// One run of the connector: its stdout lines and the backfill counters of its config.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// stdout, line by line.
    pub lines: Vec<String>,
    /// Each binding's backfill counter in this run's config.
    pub counters: Vec<u32>,
}

/// A committed line, after the consumer protocol.
#[derive(Clone, Debug)]
pub enum Committed {
    /// A document.
    Doc {
        /// Index of the run that wrote it.
        run: usize,
        /// Binding index.
        binding: usize,
        /// Operation: `c`, `u` or `d`.
        op: String,
        /// The columns.
        row: Row,
        /// `_meta.before`, if any.
        before: Option<Row>,
        /// Whether it is a backfill document.
        snapshot: bool,
    },
    /// A truncate.
    Truncate {
        /// Index of the run that wrote it.
        run: usize,
        /// Binding index.
        binding: usize,
    },
    /// A checkpoint: the complete state.
    Checkpoint {
        /// Index of the run that wrote it.
        run: usize,
        /// The state.
        state: Value,
    },
}

/// What the oracle remembers of one key: its states in commit order.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyEvent {
    /// The row took this image.
    Write(Row),
    /// The row was deleted (or truncated, or its key changed away).
    Delete,
}

/// Knows the truth about the source tables.
pub trait Oracle {
    /// The table's rows now.
    fn final_rows(&self, binding: usize) -> Vec<Row>;
    /// Every state of the key with this identity (see [`key_identity`]), in commit order;
    /// `None` when the oracle does not know histories.
    fn history(&self, _binding: usize, _key_identity: &str) -> Option<Vec<KeyEvent>> {
        None
    }
    /// The table's rows as of a state's `position`; `None` when unknown.
    fn rows_at(&self, _binding: usize, _position: &Value) -> Option<Vec<Row>> {
        None
    }
}

/// The identity of a key: the JSON array of its values, as `backfill_core::key::Key`
/// serialises it.
pub fn key_identity(key_columns: &[String], row: &Row) -> String {
    let values: Vec<&Value> = key_columns
        .iter()
        .map(|c| row.get(c).unwrap_or(&Value::Null))
        .collect();
    serde_json::to_string(&values).unwrap_or_default()
}

/// Applies the consumer protocol of §4 to a series of runs, checking each line's shape.
pub fn committed(runs: &[RunOutput], violations: &mut Vec<String>) -> Vec<Committed> {
    let mut out = Vec::new();
    let mut rule = CommitRule::default();
    let mut trailing: Vec<Committed> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        for (i, line) in run.lines.iter().enumerate() {
            let Some(entry) = parse_line(r, line, violations) else {
                continue;
            };
            match entry {
                Committed::Checkpoint { ref state, .. } => {
                    // The rule the runtime commits by (backfill_core::consumer).
                    if rule.checkpoint(state) == Verdict::Commit {
                        out.append(&mut trailing);
                    }
                    trailing.clear();
                    out.push(entry);
                }
                _ if i == 0 => {
                    violations.push(format!("run {r}: first line is not a checkpoint: {line}"))
                }
                _ => trailing.push(entry),
            }
        }
    }
    out
}

fn parse_line(run: usize, line: &str, violations: &mut Vec<String>) -> Option<Committed> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        violations.push(format!("run {run}: not a JSON object: {line}"));
        return None;
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    match keys.as_slice() {
        ["checkpoint"] => Some(Committed::Checkpoint {
            run,
            state: obj.remove("checkpoint")?,
        }),
        ["binding", "truncate"] => {
            let binding = usize::try_from(obj["binding"].as_u64()?).ok()?;
            Some(Committed::Truncate { run, binding })
        }
        ["binding", "doc"] => {
            let binding = usize::try_from(obj["binding"].as_u64()?).ok()?;
            let Value::Object(mut row) = obj.remove("doc")? else {
                violations.push(format!("run {run}: doc is not an object: {line}"));
                return None;
            };
            let Some(Value::Object(mut meta)) = row.remove("_meta") else {
                violations.push(format!("run {run}: doc without _meta: {line}"));
                return None;
            };
            let op = meta
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !["c", "u", "d"].contains(&op.as_str()) {
                violations.push(format!("run {run}: bad op: {line}"));
            }
            let source = meta
                .get("source")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let snapshot = source.get("snapshot") == Some(&Value::Bool(true));
            if !source.contains_key("schema") || !source.contains_key("table") {
                violations.push(format!(
                    "run {run}: _meta.source lacks schema/table: {line}"
                ));
            }
            if snapshot && (op != "c" || source.contains_key("pos")) {
                violations.push(format!(
                    "run {run}: snapshot document must be c without pos: {line}"
                ));
            }
            if !snapshot && !source.get("pos").is_some_and(Value::is_array) {
                violations.push(format!("run {run}: streamed document without pos: {line}"));
            }
            let before = match meta.remove("before") {
                Some(Value::Object(b)) => Some(b),
                _ => None,
            };
            Some(Committed::Doc {
                run,
                binding,
                op,
                row,
                before,
                snapshot,
            })
        }
        _ => {
            violations.push(format!(
                "run {run}: line has fields {keys:?}, expected one of the three shapes: {line}"
            ));
            None
        }
    }
}

/// Merge-applies the committed documents of one binding (§6).
pub fn merge_apply<'a>(
    expect: &BindingExpect,
    binding: usize,
    docs: impl IntoIterator<Item = &'a Committed>,
    start: Vec<Row>,
    violations: &mut Vec<String>,
) -> Vec<Row> {
    let keyless = expect.key.is_empty();
    let mut keyed: BTreeMap<String, Row> = BTreeMap::new();
    let mut multiset: Vec<Row> = Vec::new();
    for row in start {
        if keyless {
            multiset.push(row);
        } else {
            keyed.insert(key_identity(&expect.key, &row), row);
        }
    }
    for c in docs {
        match c {
            Committed::Truncate { binding: b, .. } if *b == binding => {
                keyed.clear();
                multiset.clear();
            }
            Committed::Doc {
                binding: b,
                op,
                row,
                before,
                ..
            } if *b == binding => {
                if keyless {
                    let remove = |set: &mut Vec<Row>, r: &Row, violations: &mut Vec<String>| {
                        match set.iter().position(|x| x == r) {
                            Some(i) => {
                                set.swap_remove(i);
                            }
                            None => violations.push(format!("binding {binding}: keyless {op} of a row the consumer does not hold: {r:?}")),
                        }
                    };
                    match op.as_str() {
                        "c" => multiset.push(row.clone()),
                        "d" => remove(&mut multiset, before.as_ref().unwrap_or(row), violations),
                        _ => {
                            match before {
                                Some(b) => remove(&mut multiset, b, violations),
                                None => violations.push(format!(
                                    "binding {binding}: keyless update without before image"
                                )),
                            }
                            multiset.push(row.clone());
                        }
                    }
                } else {
                    let id = key_identity(&expect.key, row);
                    if op == "d" {
                        keyed.remove(&id);
                    } else {
                        let entry = keyed.entry(id).or_default();
                        for (k, v) in row {
                            entry.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if keyless {
        multiset
    } else {
        keyed.into_values().collect()
    }
}

/// Compares two tables as sets of rows (multisets for keyless tables), describing the first
/// few differences.
pub fn compare_tables(
    label: &str,
    expect: &BindingExpect,
    got: &[Row],
    want: &[Row],
    violations: &mut Vec<String>,
) {
    let index = |rows: &[Row]| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in rows {
            let id = if expect.key.is_empty() {
                // Column order differs between sources of rows (`to_jsonb` sorts keys, the
                // stream keeps table order): a keyless row is named by its sorted columns.
                let sorted: BTreeMap<&String, &Value> = r.iter().collect();
                serde_json::to_string(&sorted).unwrap_or_default()
            } else {
                key_identity(&expect.key, r)
            };
            *m.entry(id).or_insert(0) += 1;
        }
        m
    };
    let by_id = |rows: &[Row]| -> HashMap<String, Row> {
        rows.iter()
            .map(|r| (key_identity(&expect.key, r), r.clone()))
            .collect()
    };
    let (g, w) = (index(got), index(want));
    let mut diffs = Vec::new();
    for (id, n) in &w {
        match g.get(id) {
            None => diffs.push(format!("missing {id}")),
            Some(m) if m != n => diffs.push(format!("{id}: {m} copies, want {n}")),
            _ => {}
        }
    }
    for id in g.keys().filter(|id| !w.contains_key(*id)) {
        diffs.push(format!("extra {id}"));
    }
    if !expect.key.is_empty() {
        let (gr, wr) = (by_id(got), by_id(want));
        for (id, row) in &wr {
            if let Some(have) = gr.get(id)
                && have != row
            {
                diffs.push(format!(
                    "{id}: stale {} want {}",
                    Value::Object(have.clone()),
                    Value::Object(row.clone())
                ));
            }
        }
    }
    if !diffs.is_empty() {
        let mut msg = format!(
            "{label}: merge-applied output differs from the table in {} rows:",
            diffs.len()
        );
        for d in diffs.iter().take(5) {
            let _ = write!(msg, " [{d}]");
        }
        violations.push(msg);
    }
}

/// Checks every §6 guarantee for every binding and returns the violations found.
pub fn check(bindings: &[BindingExpect], runs: &[RunOutput], oracle: &dyn Oracle) -> Vec<String> {
    let mut violations = Vec::new();
    let committed = committed(runs, &mut violations);
    check_pos_order(runs, &mut violations);
    for (b, expect) in bindings.iter().enumerate() {
        let label = format!("binding {b} ({})", expect.mode.as_str());
        let want = oracle.final_rows(b);
        if expect.mode == ResolvedMode::OnlyChanges {
            let Some((start, from)) = activation(&committed, b, &expect.table, oracle) else {
                violations.push(format!("{label}: never checkpointed as active"));
                continue;
            };
            let got = merge_apply(expect, b, committed[from..].iter(), start, &mut violations);
            compare_tables(&label, expect, &got, &want, &mut violations);
            continue;
        }
        let got = merge_apply(expect, b, committed.iter(), Vec::new(), &mut violations);
        compare_tables(&label, expect, &got, &want, &mut violations);
        if expect.mode == ResolvedMode::Precise {
            check_histories(&label, b, expect, runs, &committed, oracle, &mut violations);
        }
    }
    violations
}

/// The table at the Only Changes binding's activation, and the index in `committed` after
/// the activating checkpoint.
fn activation(
    committed: &[Committed],
    b: usize,
    table: &str,
    oracle: &dyn Oracle,
) -> Option<(Vec<Row>, usize)> {
    let ours = |key: &str| {
        key == table
            || key
                .strip_prefix(table)
                .is_some_and(|rest| rest.starts_with(".v"))
    };
    for (i, c) in committed.iter().enumerate() {
        if let Committed::Checkpoint { state, .. } = c {
            let active = state["bindings"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.iter())
                .any(|(key, e)| ours(key) && e["phase"] == "active");
            if active && !state["position"].is_null() {
                return Some((oracle.rows_at(b, &state["position"])?, i + 1));
            }
        }
    }
    None
}

/// Streamed documents' `pos` strictly increases over the committed output.
fn check_pos_order(runs: &[RunOutput], violations: &mut Vec<String>) {
    // Recompute the committed lines with their raw text to read `pos`.
    let mut last_seen: Option<Value> = None;
    let mut trailing: Vec<Vec<u64>> = Vec::new();
    let mut positions: Vec<Vec<u64>> = Vec::new();
    for run in runs {
        for line in &run.lines {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(state) = v.get("checkpoint") {
                if last_seen.as_ref() != Some(state) {
                    positions.append(&mut trailing);
                }
                trailing.clear();
                last_seen = Some(state.clone());
            } else {
                let source = v
                    .get("doc")
                    .and_then(|d| d["_meta"]["source"].as_object())
                    .or_else(|| v.get("truncate").and_then(|t| t["source"].as_object()));
                if let Some(pos) = source.and_then(|s| s.get("pos")).and_then(Value::as_array) {
                    trailing.push(pos.iter().filter_map(Value::as_u64).collect());
                }
            }
        }
    }
    for w in positions.windows(2) {
        if w[0] >= w[1] {
            violations.push(format!(
                "pos does not strictly increase: {:?} then {:?}",
                w[0], w[1]
            ));
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_histories(
    label: &str,
    b: usize,
    expect: &BindingExpect,
    runs: &[RunOutput],
    committed: &[Committed],
    oracle: &dyn Oracle,
    violations: &mut Vec<String>,
) {
    #[derive(Default)]
    struct Track {
        epoch: Option<(u32, u64)>,
        prev: Option<String>,
        idx: Option<usize>,
        version: Option<String>,
    }
    let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
    let mut histories: HashMap<String, Option<Vec<KeyEvent>>> = HashMap::new();
    // The last committed checkpoint: how often the entry of a document's counter had its
    // table read again (`rereads`) as of it. Each reread is an incremental backfill, whose
    // history starts over like a counter's.
    let mut last_state: Option<&Value> = None;
    for c in committed {
        match c {
            Committed::Checkpoint { state, .. } => last_state = Some(state),
            Committed::Truncate { binding, .. } if *binding == b => {
                for (id, t) in tracks.iter_mut() {
                    if matches!(t.prev.as_deref(), Some("c" | "u")) {
                        t.prev = Some("d".into());
                        let history = histories
                            .entry(id.clone())
                            .or_insert_with(|| oracle.history(b, id));
                        if let Some(h) = history {
                            let from = t.idx.map_or(0, |i| i + 1);
                            t.idx = (from..h.len())
                                .find(|&j| h[j] == KeyEvent::Delete)
                                .or(t.idx);
                        }
                    }
                }
            }
            Committed::Doc {
                run,
                binding,
                op,
                row,
                ..
            } if *binding == b => {
                let id = key_identity(&expect.key, row);
                let counter = runs[*run].counters.get(b).copied().unwrap_or(0);
                let entry = if counter == 0 {
                    expect.table.clone()
                } else {
                    format!("{}.v{counter}", expect.table)
                };
                let rereads = last_state
                    .and_then(|s| s["bindings"][entry.as_str()]["rereads"].as_u64())
                    .unwrap_or(0);
                let epoch = (counter, rereads);
                let incremental = epoch != (0, 0);
                let t = tracks.entry(id.clone()).or_default();
                if t.epoch != Some(epoch) {
                    // The history starts over at the first document after a counter raise.
                    *t = Track {
                        epoch: Some(epoch),
                        prev: None,
                        idx: None,
                        version: None,
                    };
                }
                let ok_op = match (op.as_str(), t.prev.as_deref()) {
                    ("c", None | Some("d")) => true,
                    ("u", Some("c" | "u")) => true,
                    ("d", Some("c" | "u")) => true,
                    ("d", _) => incremental,
                    _ => false,
                };
                if !ok_op {
                    violations.push(format!("{label}: key {id}: {op} after {:?}", t.prev));
                }
                let history = histories
                    .entry(id.clone())
                    .or_insert_with(|| oracle.history(b, &id));
                if let Some(h) = history {
                    let from = t.idx.map_or(0, |i| i + 1);
                    let hit = if op == "d" {
                        (from..h.len()).find(|&j| h[j] == KeyEvent::Delete)
                    } else {
                        (from..h.len()).find(|&j| h[j] == KeyEvent::Write(row.clone()))
                    };
                    match hit {
                        Some(j) => {
                            t.idx = Some(j);
                        }
                        None => {
                            let earlier = if op == "d" {
                                h.contains(&KeyEvent::Delete)
                            } else {
                                h.contains(&KeyEvent::Write(row.clone()))
                            };
                            violations.push(format!(
                                "{label}: key {id}: {op} {} is {} after the previous document",
                                Value::Object(row.clone()),
                                if earlier {
                                    "an older or repeated version"
                                } else {
                                    "not a state the row ever had"
                                },
                            ));
                        }
                    }
                }
                if let (Some(col), true) = (&expect.version_column, op != "d") {
                    let v = row.get(col).map(|v| v.to_string());
                    if let (Some(prev), Some(now)) = (&t.version, &v)
                        && crate::checker::numeric_cmp(now, prev) != std::cmp::Ordering::Greater
                    {
                        violations.push(format!("{label}: key {id}: {op} with {col} {now} after {prev}: an older or repeated version"));
                    }
                    t.version = v;
                }
                t.prev = Some(op.clone());
            }
            _ => {}
        }
    }
}

/// Compares two JSON number texts by value (integers of any length).
pub fn numeric_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let neg = |s: &str| s.starts_with('-');
    let mag = |s: &str| {
        s.trim_start_matches('-')
            .trim_start_matches('0')
            .to_string()
    };
    match (neg(a), neg(b)) {
        (false, true) => std::cmp::Ordering::Greater,
        (true, false) => std::cmp::Ordering::Less,
        (n, _) => {
            let (x, y) = (mag(a), mag(b));
            let ord = x.len().cmp(&y.len()).then_with(|| x.cmp(&y));
            if n { ord.reverse() } else { ord }
        }
    }
}
