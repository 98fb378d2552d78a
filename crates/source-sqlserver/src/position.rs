//! SQL Server log sequence numbers and the connector's stream position.
//!
//! An LSN is ten bytes, `binary(10)` in every CDC table and function: the virtual log file
//! sequence number (4 bytes), the log block offset (4 bytes) and the record's slot in the
//! block (2 bytes), all big-endian. **Ordering** is the log's order, which is the byte
//! order of the ten bytes (the server compares `binary(10)` values bytewise), so [`Lsn`]
//! derives `Ord` on the array. **Increment** is what `sys.fn_cdc_increment_lsn` computes:
//! the ten bytes read as one 80-bit unsigned number, plus one.
//!
//! The state holds the position as `{"lsn": "0000002A:00000B28:0003"}`: upper-case hex, the
//! three fields separated as SQL Server's own tools print them. Parsing also takes the
//! `0x0000002A00000B280003` form that `SELECT` shows for `binary(10)`.

use std::fmt;
use std::str::FromStr;

use backfill_core::source::Position;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A log sequence number, ordered as the log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub [u8; 10]);

impl Lsn {
    /// The smallest LSN.
    pub const ZERO: Self = Self([0; 10]);

    /// From the bytes a query returns; `None` unless exactly ten.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 10]>::try_from(bytes).ok().map(Self)
    }

    /// The next LSN (`sys.fn_cdc_increment_lsn`); saturates at the largest one.
    #[must_use]
    pub fn increment(self) -> Self {
        let mut b = self.0;
        for byte in b.iter_mut().rev() {
            let (v, carry) = byte.overflowing_add(1);
            *byte = v;
            if !carry {
                return Self(b);
            }
        }
        Self([0xFF; 10])
    }

    /// The previous LSN; saturates at zero.
    #[must_use]
    pub fn decrement(self) -> Self {
        if self == Self::ZERO {
            return self;
        }
        let mut b = self.0;
        for byte in b.iter_mut().rev() {
            let (v, borrow) = byte.overflowing_sub(1);
            *byte = v;
            if !borrow {
                break;
            }
        }
        Self(b)
    }

    /// From the decimal form the availability-group views use (`numeric(25,0)`, as in
    /// `sys.dm_hadr_database_replica_states.last_redone_lsn`): the virtual log file
    /// times 10^15, plus the block offset times 10^5, plus the slot, so
    /// `0000001B:00000188:0001` is `27000000039200001`. `None` for text that is not such a
    /// number or a part that does not fit its field.
    pub fn from_decimal(text: &str) -> Option<Self> {
        let n: u128 = text.trim().parse().ok()?;
        let vlf = u32::try_from(n / 1_000_000_000_000_000).ok()?;
        let block = u32::try_from((n / 100_000) % 10_000_000_000).ok()?;
        let slot = u16::try_from(n % 100_000).ok()?;
        let mut b = [0u8; 10];
        b[..4].copy_from_slice(&vlf.to_be_bytes());
        b[4..8].copy_from_slice(&block.to_be_bytes());
        b[8..].copy_from_slice(&slot.to_be_bytes());
        Some(Self(b))
    }

    /// The LSN as two integers that order as it does: the first eight bytes and the last
    /// two, for `_meta.source.pos`.
    pub fn pos_parts(self) -> [u64; 2] {
        let mut hi = [0u8; 8];
        hi.copy_from_slice(&self.0[..8]);
        [
            u64::from_be_bytes(hi),
            u64::from(u16::from_be_bytes([self.0[8], self.0[9]])),
        ]
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}:{:02X}{:02X}{:02X}{:02X}:{:02X}{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]
        )
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Why a string is not an LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsnParseError(String);

impl fmt::Display for LsnParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an LSN (want 0000002A:00000B28:0003 or 0x0000002A00000B280003)",
            self.0
        )
    }
}

impl std::error::Error for LsnParseError {}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let hex: String = if let Some(rest) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
        {
            if rest.len() != 20 {
                return Err(err());
            }
            rest.to_string()
        } else {
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() != 3 || parts[0].len() != 8 || parts[1].len() != 8 || parts[2].len() != 4
            {
                return Err(err());
            }
            parts.concat()
        };
        let mut out = [0u8; 10];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

/// The stream position kept in the state: the commit LSN of the last transaction delivered
/// whole. Ordered as the LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SsPosition(pub Lsn);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionRepr {
    lsn: String,
}

impl Serialize for SsPosition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PositionRepr {
            lsn: self.0.to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SsPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = PositionRepr::deserialize(d)?;
        repr.lsn
            .parse()
            .map(SsPosition)
            .map_err(serde::de::Error::custom)
    }
}

impl Position for SsPosition {}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().expect("valid LSN")
    }

    #[test]
    fn the_availability_groups_decimal_lsn_reads_as_the_same_lsn() {
        assert_eq!(
            Lsn::from_decimal("27000000039200001"),
            Some(lsn("0000001B:00000188:0001"))
        );
        assert_eq!(Lsn::from_decimal(" 0 "), Some(Lsn::ZERO));
        // The largest of each field, and one past each.
        assert_eq!(
            Lsn::from_decimal("4294967295429496729565535"),
            Some(lsn("FFFFFFFF:FFFFFFFF:FFFF"))
        );
        assert_eq!(Lsn::from_decimal("4294967296000000000000000"), None);
        assert_eq!(Lsn::from_decimal("65536"), None);
        assert_eq!(Lsn::from_decimal("12.5"), None);
        // The decimal order is the log's order.
        let (a, b) = ("27000000039200001", "27000000039300000");
        assert!(Lsn::from_decimal(a) < Lsn::from_decimal(b));
    }

    #[test]
    fn parses_both_spellings_and_prints_the_colon_form() {
        let a = lsn("0000002A:00000B28:0003");
        assert_eq!(a, lsn("0x0000002A00000B280003"));
        assert_eq!(a.to_string(), "0000002A:00000B28:0003");
        assert_eq!(lsn("0000002a:00000b28:0003"), a);
        for bad in [
            "",
            "2A:B28:3",
            "0x2A",
            "0000002A:00000B28",
            "0000002A:00000B28:000G",
            "0x0000002A00000B2800031",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_as_the_log_field_by_field() {
        let mut v = [
            lsn("00000001:00000000:0001"),
            lsn("00000000:FFFFFFFF:FFFF"),
            lsn("00000001:00000001:0000"),
            lsn("00000000:00000002:0000"),
            lsn("00000000:00000001:FFFF"),
        ];
        v.sort();
        let printed: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "00000000:00000001:FFFF",
                "00000000:00000002:0000",
                "00000000:FFFFFFFF:FFFF",
                "00000001:00000000:0001",
                "00000001:00000001:0000",
            ]
        );
        // pos parts order the same way.
        let parts: Vec<[u64; 2]> = v.iter().map(|l| l.pos_parts()).collect();
        assert!(parts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn increments_with_carry_like_fn_cdc_increment_lsn() {
        assert_eq!(
            lsn("0000002A:00000B28:0003").increment(),
            lsn("0000002A:00000B28:0004")
        );
        assert_eq!(
            lsn("0000002A:00000B28:FFFF").increment(),
            lsn("0000002A:00000B29:0000")
        );
        assert_eq!(
            lsn("0000002A:FFFFFFFF:FFFF").increment(),
            lsn("0000002B:00000000:0000")
        );
        assert_eq!(Lsn([0xFF; 10]).increment(), Lsn([0xFF; 10]));
        let x = lsn("0000002B:00000000:0000");
        assert_eq!(x.decrement().increment(), x);
        assert_eq!(Lsn::ZERO.decrement(), Lsn::ZERO);
        assert!(x.increment() > x && x.decrement() < x);
    }

    #[test]
    fn position_round_trips_through_the_state() {
        let p = SsPosition(lsn("0000002A:00000B28:0003"));
        let json = serde_json::to_string(&p).expect("serialises");
        assert_eq!(json, r#"{"lsn":"0000002A:00000B28:0003"}"#);
        let back: SsPosition = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, p);
        assert!(serde_json::from_str::<SsPosition>(r#"{"lsn":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<SsPosition>(r#"{"lsn":"0x0000002A00000B280003","x":1}"#)
                .is_err()
        );
    }
}
