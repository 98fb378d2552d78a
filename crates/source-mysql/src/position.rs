//! Binlog positions and GTID states.
//!
//! A [`BinlogPosition`] is a binlog file and a byte offset in it, with the server's GTID
//! state at that point ([`GtidState`], MariaDB's `domain-server-sequence` per replication
//! domain) where the server has GTIDs.
//!
//! **Order.** Positions order as the log does: files by their numeric suffix
//! (`binlog.000012` after `binlog.000009`), then the offset. A file number means something
//! only within one binlog history, and a failover moves the capture to a server whose
//! files have other numbers (a replica whose binlog began later has lower ones). So the
//! order uses the *logical* file number, the file's own number plus `file_base`: within
//! one history the base is constant, and when a stream resumes by GTID on a history that
//! does not hold the stored file and offset, the base becomes the stored logical number,
//! so that every position of the new history orders after every position of the old one.
//! `pos` in documents carries the logical number, which therefore keeps increasing across
//! a failover; `cursor` names the real file.
//!
//! ```text
//!   primary   binlog.000007:1200  (base 0)  ->  pos [7, 1200, i]
//!   ---- failover: resume by GTID 0-1-130 on the replica ----
//!   replica   binlog.000002:880   (base 7)  ->  pos [9, 880, i]
//! ```
//!
//! **Resume.** Where the position carries a GTID state (`"resume_by": "gtid"`), the stream
//! resumes by file and offset only if the server's own GTID state at that file and offset
//! (`BINLOG_GTID_POS`) is the stored one, that is on the same history; otherwise it resumes
//! by GTID (`@slave_connect_state`), which finds the same transaction boundary in any
//! server's binlog that holds it. Without a GTID state it resumes by file and offset.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use backfill_core::source::Position;
use serde::{Deserialize, Serialize};

/// A binlog file and offset, with the GTID state there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogPosition {
    /// Binlog file name.
    pub file: String,
    /// Offset in the file: the end of the last event delivered.
    pub pos: u64,
    /// The server's GTIDs after the last event delivered, where the server has GTIDs:
    /// MariaDB's state (`@@gtid_binlog_pos` form) or MySQL's set (`@@gtid_executed`
    /// form), stored as that text.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "gtids_text")]
    pub gtids: Option<Gtids>,
    /// How the stream resumes from this position.
    #[serde(default)]
    pub resume_by: ResumeBy,
    /// Added to the file's number for the order (see the module docs); 0 until a failover.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_base: u64,
    /// The last transaction's GTID, written by earlier versions; read and ignored.
    #[serde(default, rename = "gtid", skip_serializing)]
    _gtid: Option<serde::de::IgnoredAny>,
}

/// How a stream resumes from a stored position (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeBy {
    /// By binlog file and offset.
    #[default]
    File,
    /// By the GTIDs the position carries.
    Gtid,
}

/// The stored text of [`BinlogPosition::gtids`]: MySQL's set names source UUIDs
/// (`uuid:1-5`), MariaDB's state does not (`0-1-7`); an empty text is the empty state or
/// set, which the accessors read as either.
mod gtids_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{GtidSet, GtidState, Gtids};

    pub(super) fn serialize<S: Serializer>(gtids: &Option<Gtids>, s: S) -> Result<S::Ok, S::Error> {
        match gtids {
            Some(g) => s.collect_str(g),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Gtids>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let parsed = if text.contains(':') {
            GtidSet::parse(&text).map(Gtids::MySql)
        } else {
            GtidState::parse(&text).map(Gtids::MariaDb)
        };
        parsed
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not a GTID state or set: {text:?}")))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BinlogPosition {
    /// A position without a GTID state, in the first history.
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        Self {
            file: file.into(),
            pos,
            gtids: None,
            resume_by: ResumeBy::File,
            file_base: 0,
            _gtid: None,
        }
    }

    /// The same point with the GTIDs there: it resumes by GTID.
    #[must_use]
    pub fn with_gtids(mut self, gtids: Gtids) -> Self {
        self.gtids = Some(gtids);
        self.resume_by = ResumeBy::Gtid;
        self
    }

    /// The MariaDB GTID state this position carries (an empty text reads as the empty
    /// state).
    pub fn mariadb_state(&self) -> Option<GtidState> {
        match &self.gtids {
            Some(Gtids::MariaDb(state)) => Some(state.clone()),
            Some(Gtids::MySql(set)) if set.is_empty() => Some(GtidState::default()),
            _ => None,
        }
    }

    /// The MySQL GTID set this position carries (an empty text reads as the empty set).
    pub fn mysql_set(&self) -> Option<GtidSet> {
        match &self.gtids {
            Some(Gtids::MySql(set)) => Some(set.clone()),
            Some(Gtids::MariaDb(state)) if state.is_empty() => Some(GtidSet::default()),
            _ => None,
        }
    }

    /// The file's number in the order (and in documents' `pos`): see the module docs.
    pub fn logical_file(&self) -> u64 {
        file_number(&self.file) + self.file_base
    }
}

/// A binlog file's number within its history: its numeric suffix (`binlog.000012` is 12).
pub fn file_number(file: &str) -> u64 {
    file.rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl PartialEq for BinlogPosition {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for BinlogPosition {}

impl PartialOrd for BinlogPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BinlogPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.logical_file(), self.file.as_str(), self.pos).cmp(&(
            other.logical_file(),
            other.file.as_str(),
            other.pos,
        ))
    }
}

impl Position for BinlogPosition {
    fn bytes_until(&self, later: &Self) -> Option<u64> {
        (self.file == later.file && self.file_base == later.file_base)
            .then(|| later.pos.saturating_sub(self.pos))
    }
}

/// One MariaDB GTID: replication domain, originating server, sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// Server that originated the transaction.
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl Gtid {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(3, '-');
        Some(Self {
            domain: parts.next()?.parse().ok()?,
            server: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
        })
    }
}

/// A MariaDB GTID state: the last GTID of each replication domain (`0-1-100,1-2-7`), the
/// form `@@gtid_binlog_pos`, `BINLOG_GTID_POS()` and `@slave_connect_state` use. Sequence
/// numbers order only within a domain, so states have no order of their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidState(BTreeMap<u32, (u32, u64)>);

impl GtidState {
    /// Parses the comma-separated form; `None` if any part is not a GTID. The empty string
    /// is the empty state (no transaction yet).
    pub fn parse(s: &str) -> Option<Self> {
        let mut state = Self::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            state.record(Gtid::parse(part)?);
        }
        Some(state)
    }

    /// Whether no domain has a GTID yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A transaction of `gtid` was delivered: it is now its domain's last.
    pub fn record(&mut self, gtid: Gtid) {
        self.0.insert(gtid.domain, (gtid.server, gtid.seq));
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (domain, (server, seq))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

/// A MySQL GTID set: for each source server's UUID, the transaction numbers it names, as
/// inclusive intervals (`3e11fa47-...:1-5:7,8a94f357-...:1-3`), the form of
/// `@@gtid_executed`. Unlike a MariaDB state it names every transaction, so a set alone
/// says where a stream resumes (the server sends every transaction it does not hold) and
/// what a server must have committed (`WAIT_FOR_EXECUTED_GTID_SET`). Tagged GTIDs (MySQL
/// 8.4+) are not read: a set holding one does not parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidSet(BTreeMap<String, Vec<(u64, u64)>>);

impl GtidSet {
    /// Parses the server's form (members separated by commas and perhaps newlines); the
    /// empty string is the empty set.
    pub fn parse(s: &str) -> Option<Self> {
        let mut set = Self::default();
        for member in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let mut parts = member.split(':');
            let uuid = parts.next()?.to_ascii_lowercase();
            uuid_bytes(&uuid)?;
            for interval in parts {
                let (a, b) = interval.split_once('-').unwrap_or((interval, interval));
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                if a == 0 || b < a {
                    return None;
                }
                set.add(&uuid, a, b);
            }
        }
        Some(set)
    }

    /// Whether the set holds no transaction.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(Vec::is_empty)
    }

    /// The transaction `uuid:gno` is in the set from now on.
    pub fn record(&mut self, uuid: &str, gno: u64) {
        self.add(uuid, gno, gno);
    }

    /// Whether the set holds `uuid:gno`.
    pub fn contains(&self, uuid: &str, gno: u64) -> bool {
        self.0
            .get(uuid)
            .is_some_and(|v| v.iter().any(|&(a, b)| a <= gno && gno <= b))
    }

    fn add(&mut self, uuid: &str, first: u64, last: u64) {
        let intervals = self.0.entry(uuid.to_string()).or_default();
        // The common case: the next number of the last interval.
        if let Some(end) = intervals.last_mut()
            && end.0 <= first
            && first <= end.1.saturating_add(1)
        {
            end.1 = end.1.max(last);
            return;
        }
        intervals.push((first, last));
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(a, b) in intervals.iter() {
            match merged.last_mut() {
                Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *intervals = merged;
    }

    /// The set as the `COM_BINLOG_DUMP_GTID` request carries it.
    pub fn sids(&self) -> Vec<mysql_async::Sid<'static>> {
        self.0
            .iter()
            .filter_map(|(uuid, intervals)| {
                let sid = mysql_async::Sid::new(uuid_bytes(uuid)?);
                Some(
                    sid.with_intervals(
                        intervals
                            .iter()
                            .map(|&(a, b)| mysql_async::GnoInterval::new(a, b + 1))
                            .collect(),
                    ),
                )
            })
            .collect()
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, intervals)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(uuid)?;
            for (a, b) in intervals {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

/// A UUID's 16 bytes from its hyphenated form.
fn uuid_bytes(uuid: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = uuid.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || uuid.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A UUID's hyphenated lowercase form, as GTID sets spell it.
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The GTIDs a stream has read through, in its server's own form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gtids {
    /// MariaDB: each domain's last GTID.
    MariaDb(GtidState),
    /// MySQL: every transaction's GTID.
    MySql(GtidSet),
}

impl fmt::Display for Gtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MariaDb(s) => s.fmt(f),
            Self::MySql(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_gtids_keep_their_text_and_their_type() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        for (text, mysql) in [
            (format!("{uuid}:1-5:7"), true),
            ("0-1-7,1-2-3".into(), false),
        ] {
            let json = format!(
                r#"{{"file":"binlog.000003","pos":9,"gtids":"{text}","resume_by":"gtid"}}"#
            );
            let p: BinlogPosition = serde_json::from_str(&json).unwrap();
            assert_eq!(matches!(p.gtids, Some(Gtids::MySql(_))), mysql, "{text}");
            assert_eq!(p.resume_by, ResumeBy::Gtid);
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                json,
                "the state file's text is kept"
            );
            assert_eq!(p.mysql_set().is_some(), mysql);
            assert_eq!(p.mariadb_state().is_some(), !mysql);
        }
        let empty: BinlogPosition =
            serde_json::from_str(r#"{"file":"b.000001","pos":4,"gtids":""}"#).unwrap();
        assert!(
            empty.mysql_set().is_some_and(|s| s.is_empty()),
            "either server's empty form"
        );
        assert!(empty.mariadb_state().is_some_and(|s| s.is_empty()));
        assert!(
            serde_json::from_str::<BinlogPosition>(r#"{"file":"b.000001","pos":4,"gtids":"x:y"}"#)
                .is_err(),
            "text that is neither form is refused"
        );
    }

    #[test]
    fn orders_by_file_sequence_then_offset() {
        let a = BinlogPosition::new("binlog.000009", 900);
        let b = BinlogPosition::new("binlog.000010", 4);
        assert!(a < b);
        assert!(BinlogPosition::new("binlog.000010", 4) < BinlogPosition::new("binlog.000010", 5));
        let g = BinlogPosition::new("binlog.000010", 4)
            .with_gtids(Gtids::MariaDb(GtidState::parse("0-1-7").unwrap()));
        assert_eq!(g, b, "the GTID state does not take part in the order");
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"file":"binlog.000010","pos":4,"gtids":"0-1-7","resume_by":"gtid"}"#
        );
    }

    #[test]
    fn a_new_history_orders_after_the_old_one_through_its_base() {
        let old = BinlogPosition::new("binlog.000007", 1200);
        let mut new = BinlogPosition::new("binlog.000002", 880);
        assert!(new < old, "raw numbers say nothing across histories");
        new.file_base = old.logical_file();
        assert!(new > old);
        assert_eq!(new.logical_file(), 9);
        let later = BinlogPosition {
            pos: 881,
            ..new.clone()
        };
        assert!(later > new);
        assert_eq!(new.bytes_until(&later), Some(1));
        assert_eq!(old.bytes_until(&new), None);
    }

    #[test]
    fn earlier_states_with_a_last_gtid_still_load() {
        let p: BinlogPosition = serde_json::from_str(
            r#"{"file":"binlog.000010","pos":4,"gtid":"0-1-7","resume_by":"file"}"#,
        )
        .unwrap();
        assert_eq!((p.gtids.as_ref(), p.resume_by), (None, ResumeBy::File));
        assert!(p._gtid.is_some());
        assert!(!serde_json::to_string(&p).unwrap().contains("gtid\""));
    }

    #[test]
    fn gtid_states_keep_each_domains_last() {
        let mut s = GtidState::parse("1-2-7,0-1-100").unwrap();
        assert_eq!(s.to_string(), "0-1-100,1-2-7");
        s.record(Gtid {
            domain: 0,
            server: 3,
            seq: 101,
        });
        s.record(Gtid {
            domain: 5,
            server: 1,
            seq: 1,
        });
        assert_eq!(s.to_string(), "0-3-101,1-2-7,5-1-1");
        assert_eq!(GtidState::parse(""), Some(GtidState::default()));
        assert_eq!(GtidState::parse("0-1"), None);
        assert_eq!(
            GtidState::parse(" 0-1-5 , 1-1-2 ").unwrap().to_string(),
            "0-1-5,1-1-2"
        );
    }

    #[test]
    fn mysql_gtid_sets_merge_intervals_and_round_trip() {
        let a =
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n8a94f357-aab4-11df-86ab-c80aa9429562:1-3";
        let mut s = GtidSet::parse(a).unwrap();
        assert_eq!(
            s.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,8a94f357-aab4-11df-86ab-c80aa9429562:1-3"
        );
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        s.record(u, 6);
        assert!(s.contains(u, 6) && s.contains(u, 1) && !s.contains(u, 8));
        assert!(s.to_string().starts_with(&format!("{u}:1-7,")));
        s.record(u, 8);
        s.record(u, 10);
        s.record("8a94f357-aab4-11df-86ab-c80aa9429562", 4);
        assert_eq!(
            s.to_string(),
            format!("{u}:1-8:10,8a94f357-aab4-11df-86ab-c80aa9429562:1-4")
        );
        assert_eq!(GtidSet::parse(""), Some(GtidSet::default()));
        assert_eq!(GtidSet::parse("not-a-uuid:1-2"), None);
        assert_eq!(GtidSet::parse(&format!("{u}:5-2")), None);
        assert_eq!(
            GtidSet::parse(&format!("{u}:tag:1-2")),
            None,
            "tagged GTIDs are refused"
        );
        let sids = s.sids();
        assert_eq!(sids.len(), 2);
        assert_eq!(sids[0].to_string(), format!("{u}:1-8:10"));
        assert_eq!(uuid_string(&sids[0].uuid()), u);
    }
}
