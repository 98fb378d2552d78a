//! Log positions.
//!
//! [`Lsn`] is a WAL location: a byte offset in the server's write-ahead log, ordered as the
//! log is written, and printed as PostgreSQL prints it (`16/B374D848`, the high and low 32
//! bits in hex). [`PgPosition`] is what the state file stores: the end LSN of the last
//! transaction the stream delivered (or of a keepalive past it), so a resumed stream
//! starts with the first transaction that commits after it.

use std::fmt;
use std::str::FromStr;

use backfill_core::source::Position;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL location. Ordering is the WAL's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (expected X/Y in hex)"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        if hi > 0xFFFF_FFFF || lo > 0xFFFF_FFFF {
            return Err(format!("{s:?} is not an LSN"));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The state's `position`: `{"lsn": "0/16B3748"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPosition {
    /// Every transaction committing before this location was delivered.
    pub lsn: Lsn,
}

impl Position for PgPosition {
    fn bytes_until(&self, later: &Self) -> Option<u64> {
        later.lsn.0.checked_sub(self.lsn.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_as_postgres_does() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert!("16".parse::<Lsn>().is_err());
        assert!("1/G".parse::<Lsn>().is_err());
        assert!("100000000/0".parse::<Lsn>().is_err());
        assert!(Lsn(1) < Lsn(1 << 32));
    }

    #[test]
    fn position_serialises_as_the_state_format() {
        let p = PgPosition {
            lsn: Lsn(0x16B3748),
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"lsn":"0/16B3748"}"#);
        assert_eq!(
            serde_json::from_str::<PgPosition>(r#"{"lsn":"0/16B3748"}"#).unwrap(),
            p
        );
        assert_eq!(
            p.bytes_until(&PgPosition {
                lsn: Lsn(0x16B3748 + 10)
            }),
            Some(10)
        );
    }
}
