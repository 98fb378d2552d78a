//! Binlog positions.
//!
//! A [`BinlogPosition`] is a binlog file and a byte offset in it. Ordering is the log's
//! order: files by their numeric suffix (`binlog.000012` after `binlog.000009`), then the
//! offset. The GTID of the last transaction (`domain-server-sequence` on MariaDB) is kept
//! beside it for people and for failover; it does not take part in the ordering, and the
//! stream resumes by file and offset (`"resume_by": "file"` in the state says so).

use std::cmp::Ordering;

use backfill_core::source::Position;
use serde::{Deserialize, Serialize};

/// A binlog file and offset.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogPosition {
    /// Binlog file name.
    pub file: String,
    /// Offset in the file: the end of the last event delivered.
    pub pos: u64,
    /// GTID of the last transaction delivered, where the server has GTIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// How the stream resumes: always `"file"` for now.
    #[serde(default = "resume_by_file")]
    pub resume_by: String,
}

fn resume_by_file() -> String {
    "file".into()
}

impl BinlogPosition {
    /// A position without a GTID.
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        Self {
            file: file.into(),
            pos,
            gtid: None,
            resume_by: resume_by_file(),
        }
    }

    fn sequence(&self) -> (u64, &str) {
        let n = self
            .file
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (n, self.file.as_str())
    }
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
        self.sequence()
            .cmp(&other.sequence())
            .then(self.pos.cmp(&other.pos))
    }
}

impl Position for BinlogPosition {
    fn bytes_until(&self, later: &Self) -> Option<u64> {
        (self.file == later.file).then(|| later.pos.saturating_sub(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_file_sequence_then_offset() {
        let a = BinlogPosition::new("binlog.000009", 900);
        let b = BinlogPosition::new("binlog.000010", 4);
        assert!(a < b);
        assert!(BinlogPosition::new("binlog.000010", 4) < BinlogPosition::new("binlog.000010", 5));
        let mut g = BinlogPosition::new("binlog.000010", 4);
        g.gtid = Some("0-1-7".into());
        assert_eq!(g, b, "the GTID does not take part in the order");
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"file":"binlog.000010","pos":4,"gtid":"0-1-7","resume_by":"file"}"#
        );
    }
}
