//! The capture state (DESIGN.md §4): the stream position and one entry per binding, and
//! how a loaded state is reconciled with the config at start.
//!
//! Reconciliation rules (DESIGN.md §2):
//! * a binding's entry is keyed by its state key, `<namespace>.<stream>[.v<N>]`, so raising
//!   the backfill counter makes a new entry that starts over (an *incremental* backfill);
//! * raising the counter of **every** binding at once also drops the stream position: the
//!   source re-establishes it at the current end of the log;
//! * a keyless binding whose counter was raised first emits a `truncate` line, since a
//!   multiset cannot be re-read on top of itself;
//! * an entry keeps the mode it was created with until its counter is raised;
//! * entries of bindings no longer in the config are dropped.
//!
//! With no state file the initial state depends on the config alone (position `null`, every
//! binding pending), so the resume checkpoint of a run that never checkpointed is the same
//! every time: the consumer protocol of §4 relies on that.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Binding;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::mode::ResolvedMode;
use crate::source::{ColumnInfo, Position};

/// Where a binding is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Chunks are being read; `cursor` is the last key emitted.
    Backfilling,
    /// Every change is emitted.
    Active,
}

/// One binding's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingState {
    /// The mode it runs.
    pub mode: ResolvedMode,
    /// Where it is.
    pub phase: Phase,
    /// The last key emitted in a chunk (physical locator for keyless tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Key>,
    /// Rows emitted by its backfill so far.
    #[serde(default)]
    pub rows_done: u64,
    /// The backfill counter this entry belongs to; above 0 the backfill is incremental.
    #[serde(default)]
    pub backfill: u32,
    /// The source's estimate of the table's rows, read when its backfill started: a
    /// consumer's progress (percent, ETA) reads it from the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
    /// The table's highest column ordinal when its backfill started, where the database
    /// numbers columns for good ([`ColumnInfo::ordinal`]): a column numbered past it was
    /// added since, and one that fills the rows already there makes the table read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_mark: Option<u64>,
    /// How often this entry's table was read again because it came to hold values the log
    /// never carried ([`crate::source::StreamEvent::Reread`]); each read is incremental.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rereads: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl BindingState {
    /// Whether the destination may already hold rows of this table, so Precise must
    /// forward deletes of keys the scanner has not reached yet.
    pub fn incremental(&self) -> bool {
        self.backfill > 0 || self.rereads > 0
    }

    /// Whether the table is read again when it comes to hold values the log never
    /// carried: once its backfill has started, and unless it runs Only Changes (which
    /// reads no rows by choice: the stale rows are then only said).
    pub fn rereads_on_rewrite(&self) -> bool {
        self.phase != Phase::Pending && self.mode != ResolvedMode::OnlyChanges
    }

    /// Starts this entry's backfill over, as an incremental one: its table holds values
    /// the log never carried.
    pub fn read_again(&mut self, column_mark: Option<u64>) {
        *self = BindingState {
            mode: self.mode,
            phase: Phase::Pending,
            cursor: None,
            rows_done: 0,
            backfill: self.backfill,
            estimated_rows: None,
            column_mark: column_mark.or(self.column_mark),
            rereads: self.rereads + 1,
        };
    }
}

/// The complete state. Every checkpoint carries all of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: DeserializeOwned"))]
pub struct State<P> {
    /// Format version; 1.
    pub version: u32,
    /// The database's resume point; `null` before the stream was first opened.
    pub position: Option<P>,
    /// Entries by state key.
    pub bindings: BTreeMap<String, BindingState>,
}

/// Current state format version.
pub const STATE_VERSION: u32 = 1;

/// A binding of the config with the mode it resolves to now.
#[derive(Clone, Debug)]
pub struct ResolvedBinding {
    /// The config binding.
    pub binding: Binding,
    /// The mode Automatic or the config chose for it today.
    pub mode: ResolvedMode,
    /// Key columns in key order (empty for a keyless table).
    pub key: Vec<String>,
    /// The table's columns as discovered at start.
    pub columns: Vec<ColumnInfo>,
}

impl ResolvedBinding {
    /// The highest column ordinal of the table, where its database has them.
    pub fn column_mark(&self) -> Option<u64> {
        self.columns.iter().filter_map(|c| c.ordinal).max()
    }

    /// Columns added since `mark` that fill the rows already there.
    fn filled_since(&self, mark: u64) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| c.fills_existing_rows && c.ordinal.is_some_and(|o| o > mark))
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// The outcome of reconciling a loaded state with the config.
#[derive(Debug)]
pub struct Reconciled<P> {
    /// The state to run from.
    pub state: State<P>,
    /// Every binding's counter was raised: re-establish the stream at the log's end.
    pub reset_stream: bool,
    /// Keyless bindings whose counter was raised: emit a `truncate` for each first.
    pub truncate: Vec<usize>,
    /// Bindings whose counter was raised since the state was written (re-backfilled now).
    pub raised: Vec<usize>,
    /// Bindings read again because columns that fill the rows already there were added
    /// since their backfill started, with those columns' names.
    pub reread: Vec<(usize, Vec<String>)>,
    /// Only Changes bindings whose table gained such columns: not read, by the mode's
    /// choice, only said.
    pub unread: Vec<(usize, Vec<String>)>,
    /// Bindings whose configured mode now resolves to another mode than their entry runs:
    /// `(binding, mode kept, mode asked for)`. The entry keeps its mode until the counter
    /// is raised, so a backfill never changes its guarantees halfway; the user is told.
    pub mode_kept: Vec<(usize, ResolvedMode, ResolvedMode)>,
}

impl<P: Position> State<P> {
    /// The state of a config that never ran.
    pub fn initial(bindings: &[ResolvedBinding]) -> Self {
        Self::reconcile(None, bindings).state
    }

    /// Reads a state file; `Ok(None)` when it does not exist. An empty or unreadable file is
    /// refused, naming the remedy: it is never read as "start over".
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::State(format!("cannot read {}: {e}", path.display()))),
        };
        // The state file is replaced atomically, so it is never empty: an empty one is
        // damage (a copy cut short, a disk that filled), and starting over from it would
        // re-backfill everything and consume the source's position.
        if text.trim().is_empty() {
            return Err(Error::State(format!(
                "{} is empty, which an atomically replaced state never is; restore it from a backup, or remove it to start over with a full backfill",
                path.display()
            )));
        }
        let state: Self = serde_json::from_str(&text).map_err(|e| {
            Error::State(format!(
                "{} is not a state this connector wrote ({e}); restore it, or remove it to start over with a full backfill",
                path.display()
            ))
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::State(format!(
                "{} has version {}, this connector writes version {STATE_VERSION}",
                path.display(),
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Reconciles `loaded` with the config (see the module docs).
    pub fn reconcile(loaded: Option<Self>, bindings: &[ResolvedBinding]) -> Reconciled<P> {
        let Some(loaded) = loaded else {
            let bindings = bindings
                .iter()
                .map(|b| (b.binding.state_key(), fresh_entry(b)))
                .collect();
            return Reconciled {
                state: State {
                    version: STATE_VERSION,
                    position: None,
                    bindings,
                },
                reset_stream: false,
                truncate: Vec::new(),
                raised: Vec::new(),
                reread: Vec::new(),
                unread: Vec::new(),
                mode_kept: Vec::new(),
            };
        };
        // A binding was raised when the state knows its table under another counter.
        let tables_in_state: HashSet<&str> = loaded
            .bindings
            .iter()
            .map(|(key, entry)| table_part(key, entry.backfill))
            .collect();
        let raised = |b: &Binding| {
            !loaded.bindings.contains_key(&b.state_key())
                && tables_in_state.contains(table_part(&b.state_key(), b.backfill))
        };
        let reset_stream = !bindings.is_empty() && bindings.iter().all(|b| raised(&b.binding));
        let (mut truncate, mut raised_now, mut mode_kept) = (Vec::new(), Vec::new(), Vec::new());
        let (mut reread, mut unread) = (Vec::new(), Vec::new());
        let mut entries = BTreeMap::new();
        for (i, b) in bindings.iter().enumerate() {
            let key = b.binding.state_key();
            let entry = match loaded.bindings.get(&key) {
                Some(existing) => {
                    if existing.mode != b.mode {
                        mode_kept.push((i, existing.mode, b.mode));
                    }
                    let mut entry = existing.clone();
                    let added: Vec<String> = match existing.column_mark {
                        Some(mark) if existing.phase != Phase::Pending => b
                            .filled_since(mark)
                            .into_iter()
                            .map(str::to_string)
                            .collect(),
                        _ => Vec::new(),
                    };
                    if added.is_empty() || !existing.rereads_on_rewrite() {
                        // Columns added that fill nothing stream as they come; Only
                        // Changes reads no rows by choice, and is told.
                        entry.column_mark = b.column_mark().or(entry.column_mark);
                        if !added.is_empty() {
                            unread.push((i, added));
                        }
                    } else {
                        entry.read_again(b.column_mark());
                        if b.mode == ResolvedMode::WithoutPrimaryKey {
                            truncate.push(i);
                        }
                        reread.push((i, added));
                    }
                    entry
                }
                None => {
                    if raised(&b.binding) {
                        raised_now.push(i);
                        if b.mode == ResolvedMode::WithoutPrimaryKey {
                            truncate.push(i);
                        }
                    }
                    fresh_entry(b)
                }
            };
            entries.insert(key, entry);
        }
        Reconciled {
            state: State {
                version: STATE_VERSION,
                position: if reset_stream { None } else { loaded.position },
                bindings: entries,
            },
            reset_stream,
            truncate,
            raised: raised_now,
            reread,
            unread,
            mode_kept,
        }
    }

    /// Serialises the state as one JSON line's worth of bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a state always serialises")
    }
}

fn fresh_entry(b: &ResolvedBinding) -> BindingState {
    BindingState {
        mode: b.mode,
        phase: Phase::Pending,
        cursor: None,
        rows_done: 0,
        backfill: b.binding.backfill,
        estimated_rows: None,
        column_mark: b.column_mark(),
        rereads: 0,
    }
}

fn table_part(state_key: &str, counter: u32) -> &str {
    if counter == 0 {
        state_key
    } else {
        state_key.rsplit_once(".v").map_or(state_key, |(t, _)| t)
    }
}

/// The directory a state file is replaced in.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuses a state path whose directory does not exist, at start and before any line is
/// printed: the first checkpoint could not be written there, and a run that prints a
/// checkpoint it cannot make durable breaks the commit protocol.
pub fn ensure_state_directory(path: &Path) -> Result<()> {
    let dir = directory_of(path);
    if dir.is_dir() {
        return Ok(());
    }
    Err(Error::State(format!(
        "{}: its directory {} does not exist; create it (mkdir -p {}) or give --state a path in an existing directory",
        path.display(),
        dir.display(),
        dir.display()
    )))
}

/// Replaces `path` atomically and durably: write a temp file beside it, fsync it, rename it
/// over the old one, fsync the directory. A crash at any instant leaves either the old or
/// the new state, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically (temp file, rename) without forcing either to
/// disk: a reader sees the old file or the new one, but a machine crash may leave the
/// old. For a state file whose consumer keeps the durable copy (`capture --acks stdin`:
/// the cdc runtime writes the state file from its store before every start).
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let dir = directory_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resource;
    use crate::mode::BackfillMode;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    struct Lsn(u64);
    impl Position for Lsn {}

    fn rb(stream: &str, counter: u32, mode: ResolvedMode) -> ResolvedBinding {
        ResolvedBinding {
            binding: Binding::new(
                Resource::new("s", stream, BackfillMode::Automatic),
                "",
                counter,
            ),
            mode,
            key: vec!["id".into()],
            columns: Vec::new(),
        }
    }

    fn active(mut s: State<Lsn>) -> State<Lsn> {
        s.position = Some(Lsn(7));
        for e in s.bindings.values_mut() {
            e.phase = Phase::Active;
        }
        s
    }

    #[test]
    fn initial_state_depends_on_the_config_alone() {
        let cfg = [
            rb("a", 0, ResolvedMode::Precise),
            rb("b", 3, ResolvedMode::Normal),
        ];
        let a = State::<Lsn>::initial(&cfg);
        assert_eq!(a, State::<Lsn>::initial(&cfg));
        assert_eq!(a.position, None);
        assert_eq!(
            String::from_utf8(a.to_json()).unwrap(),
            r#"{"version":1,"position":null,"bindings":{"s.a":{"mode":"Precise","phase":"pending","rows_done":0,"backfill":0},"s.b.v3":{"mode":"Normal","phase":"pending","rows_done":0,"backfill":3}}}"#
        );
    }

    #[test]
    fn raising_one_counter_rebackfills_that_binding_only() {
        let before = active(State::initial(&[
            rb("a", 0, ResolvedMode::Precise),
            rb("k", 0, ResolvedMode::WithoutPrimaryKey),
        ]));
        let r = State::reconcile(
            Some(before),
            &[
                rb("a", 0, ResolvedMode::Precise),
                rb("k", 1, ResolvedMode::WithoutPrimaryKey),
            ],
        );
        assert!(!r.reset_stream);
        assert_eq!(r.state.position, Some(Lsn(7)));
        assert_eq!(r.truncate, vec![1]);
        assert_eq!(r.state.bindings["s.a"].phase, Phase::Active);
        assert_eq!(r.state.bindings["s.k.v1"].phase, Phase::Pending);
        assert!(!r.state.bindings.contains_key("s.k"));
    }

    fn with_columns(mut b: ResolvedBinding, columns: &[(u64, bool)]) -> ResolvedBinding {
        b.columns = columns
            .iter()
            .map(|&(ordinal, fills)| ColumnInfo {
                name: format!("c{ordinal}"),
                type_name: "int".into(),
                nullable: true,
                ordinal: Some(ordinal),
                fills_existing_rows: fills,
            })
            .collect();
        b
    }

    #[test]
    fn a_column_added_since_the_backfill_that_fills_the_rows_reads_the_table_again() {
        let at_backfill = [
            with_columns(rb("a", 0, ResolvedMode::Precise), &[(1, false), (2, true)]),
            with_columns(rb("k", 0, ResolvedMode::WithoutPrimaryKey), &[(1, false)]),
            with_columns(rb("o", 0, ResolvedMode::OnlyChanges), &[(1, false)]),
        ];
        let before = active(State::initial(&at_backfill));
        assert_eq!(before.bindings["s.a"].column_mark, Some(2));
        // A column that fills nothing (nullable, no default) streams as it comes.
        let nullable = [
            with_columns(
                rb("a", 0, ResolvedMode::Precise),
                &[(1, false), (2, true), (3, false)],
            ),
            at_backfill[1].clone(),
            at_backfill[2].clone(),
        ];
        let r = State::reconcile(Some(before.clone()), &nullable);
        assert!(r.reread.is_empty());
        assert_eq!(r.state.bindings["s.a"].phase, Phase::Active);
        assert_eq!(r.state.bindings["s.a"].column_mark, Some(3));
        // One with a default, in each binding: read again, incrementally; a keyless table
        // truncated first; Only Changes reads nothing by choice.
        let filled = [
            with_columns(
                rb("a", 0, ResolvedMode::Precise),
                &[(1, false), (2, true), (4, true)],
            ),
            with_columns(
                rb("k", 0, ResolvedMode::WithoutPrimaryKey),
                &[(1, false), (2, true)],
            ),
            with_columns(
                rb("o", 0, ResolvedMode::OnlyChanges),
                &[(1, false), (2, true)],
            ),
        ];
        let r = State::reconcile(Some(before), &filled);
        assert_eq!(
            r.reread,
            vec![(0, vec!["c4".to_string()]), (1, vec!["c2".to_string()])]
        );
        assert_eq!(r.truncate, vec![1]);
        let a = &r.state.bindings["s.a"];
        assert_eq!(
            (a.phase, a.cursor.clone(), a.rereads),
            (Phase::Pending, None, 1)
        );
        assert!(a.incremental());
        assert_eq!(a.column_mark, Some(4));
        assert_eq!(r.state.bindings["s.o"].phase, Phase::Active);
        assert_eq!(r.unread, vec![(2, vec!["c2".to_string()])]);
        assert_eq!(r.state.position, Some(Lsn(7)));
        // Once read again, the same columns are not news.
        let again = State::reconcile(Some(active(r.state)), &filled);
        assert!(again.reread.is_empty());
    }

    #[test]
    fn raising_every_counter_resets_the_stream() {
        let before = active(State::initial(&[
            rb("a", 0, ResolvedMode::Precise),
            rb("b", 2, ResolvedMode::OnlyChanges),
        ]));
        let r = State::reconcile(
            Some(before),
            &[
                rb("a", 1, ResolvedMode::OnlyChanges),
                rb("b", 3, ResolvedMode::OnlyChanges),
            ],
        );
        assert!(r.reset_stream);
        assert_eq!(r.state.position, None);
        assert!(r.truncate.is_empty());
        assert_eq!(r.state.bindings["s.a.v1"].mode, ResolvedMode::OnlyChanges);
    }

    #[test]
    fn a_new_binding_is_not_a_raise() {
        let before = active(State::initial(&[rb("a", 0, ResolvedMode::Precise)]));
        let r = State::reconcile(
            Some(before),
            &[
                rb("a", 0, ResolvedMode::Precise),
                rb("n", 2, ResolvedMode::WithoutPrimaryKey),
            ],
        );
        assert!(!r.reset_stream);
        assert!(r.truncate.is_empty());
        assert!(r.raised.is_empty());
        assert_eq!(r.state.bindings["s.n.v2"].phase, Phase::Pending);
    }

    #[test]
    fn a_changed_mode_is_kept_until_the_counter_is_raised_and_reported() {
        let before = active(State::initial(&[
            rb("a", 0, ResolvedMode::Precise),
            rb("b", 0, ResolvedMode::Normal),
        ]));
        let r = State::reconcile(
            Some(before.clone()),
            &[
                rb("a", 0, ResolvedMode::Normal),
                rb("b", 0, ResolvedMode::Normal),
            ],
        );
        assert_eq!(r.state.bindings["s.a"].mode, ResolvedMode::Precise);
        assert_eq!(
            r.mode_kept,
            vec![(0, ResolvedMode::Precise, ResolvedMode::Normal)]
        );
        assert!(r.raised.is_empty());
        let r = State::reconcile(
            Some(before),
            &[
                rb("a", 1, ResolvedMode::Normal),
                rb("b", 0, ResolvedMode::Normal),
            ],
        );
        assert_eq!(r.state.bindings["s.a.v1"].mode, ResolvedMode::Normal);
        assert!(r.mode_kept.is_empty());
        assert_eq!(r.raised, vec![0]);
    }

    #[test]
    fn an_empty_state_file_is_damage_not_a_fresh_start() {
        let dir = std::env::temp_dir().join(format!("state-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert!(
            State::<Lsn>::load(&path).unwrap().is_none(),
            "absent: start"
        );
        std::fs::write(&path, b"").unwrap();
        let e = State::<Lsn>::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("is empty") && e.contains("remove it to start over"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let e = ensure_state_directory(&dir.join("state.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not exist") && e.contains("mkdir -p"),
            "{e}"
        );
        assert!(ensure_state_directory(Path::new("state.json")).is_ok());
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
