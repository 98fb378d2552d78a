//! Values in `COPY`'s binary format, for the typed path's whole rows ([`crate::typed`]).
//!
//! The server reads binary `COPY` with each type's receive function instead of parsing
//! text: loading the 1M-row bench table from a file took it 1.51 to 1.69 s in binary
//! against 2.06 to 2.17 s in text (BENCHMARKS.md), and in an initial load the destination
//! server's `COPY` is the busiest single thread. So a table whose every column has an
//! encoder here is loaded in binary.
//!
//! An encoder takes a value only in the one form the sources write it (a JSON number's
//! digits; ISO 8601 dates and times with at most six fractional digits; a canonical UUID;
//! base64 bytes) and computes exactly what the type's input function would store:
//! integers range-checked, floats correctly rounded as `strtod` and `strtof` round,
//! numerics as their decimal digits with the scale written (the column's typmod then
//! rounds them on the server as it rounds text), times to the microsecond. Anything else
//! (an exponent, `NaN` in a numeric, `infinity`, a year outside 1 to 9999, a leap second,
//! an integer out of range) is refused, and its row is written as text instead, where the
//! server's own input function decides. The materialize suite loads the same values both
//! ways into two tables and compares them.

use backfill_core::encode::days_from_civil;

use crate::cell::Cell;
use crate::types::{Conversion, base_name};

/// How one column's values are written in binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    /// text, varchar, character: the UTF-8 bytes (the receive function applies the
    /// column's length as input does).
    Text,
    Numeric,
    Date,
    Timestamp,
    Timestamptz,
    Json,
    Jsonb,
    Bytea,
    Uuid,
}

impl Binary {
    /// The binary form of a column of type `pg_type` whose values convert by `conversion`;
    /// `None` where there is none here.
    pub fn of(pg_type: &str, conversion: Conversion) -> Option<Self> {
        let name = base_name(pg_type);
        let kind = match (name.as_str(), conversion) {
            ("smallint" | "int2", Conversion::Text) => Self::I16,
            ("integer" | "int" | "int4", Conversion::Text) => Self::I32,
            ("bigint" | "int8", Conversion::Text) => Self::I64,
            ("real" | "float4", Conversion::Text) => Self::F32,
            ("double precision" | "float8", Conversion::Text) => Self::F64,
            ("boolean" | "bool", Conversion::Text) => Self::Bool,
            (
                "text" | "character varying" | "varchar" | "character" | "bpchar",
                Conversion::Text,
            ) => Self::Text,
            ("numeric" | "decimal", Conversion::Text) => Self::Numeric,
            ("date", Conversion::Text | Conversion::MysqlDate) => Self::Date,
            (
                "timestamp" | "timestamp without time zone",
                Conversion::Text | Conversion::MysqlDate,
            ) => Self::Timestamp,
            (
                "timestamptz" | "timestamp with time zone",
                Conversion::Text | Conversion::MysqlDate,
            ) => Self::Timestamptz,
            ("json", Conversion::Json) => Self::Json,
            ("jsonb", Conversion::Json) => Self::Jsonb,
            ("bytea", Conversion::Base64) => Self::Bytea,
            ("uuid", Conversion::Text) => Self::Uuid,
            _ => return None,
        };
        Some(kind)
    }

    /// Appends `value` as one field (its length, then its bytes), or returns `false`
    /// leaving `out` as it was.
    pub fn field(self, out: &mut Vec<u8>, value: &Cell<'_>) -> bool {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let ok = match value {
            Cell::Null => {
                out.truncate(at);
                out.extend_from_slice(&(-1i32).to_be_bytes());
                return true;
            }
            Cell::Str(s) | Cell::Scalar(s) => self.encode(out, value, s),
            Cell::Composite(_) => {
                matches!(self, Self::Json | Self::Jsonb) && { self.encode(out, value, "") }
            }
        };
        let len = out.len() - at - 4;
        match i32::try_from(len) {
            Ok(len) if ok => {
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
                true
            }
            _ => {
                out.truncate(at);
                false
            }
        }
    }

    /// The value's bytes after its length; `text` is a string's content or a scalar's text.
    fn encode(self, out: &mut Vec<u8>, value: &Cell<'_>, text: &str) -> bool {
        let scalar = matches!(value, Cell::Scalar(_));
        match self {
            Self::I16 => put(out, text.parse::<i16>().ok().map(i16::to_be_bytes)),
            Self::I32 => put(out, text.parse::<i32>().ok().map(i32::to_be_bytes)),
            Self::I64 => put(out, text.parse::<i64>().ok().map(i64::to_be_bytes)),
            Self::F32 => put(out, float::<f32>(text, scalar).map(f32::to_be_bytes)),
            Self::F64 => put(out, float::<f64>(text, scalar).map(f64::to_be_bytes)),
            Self::Bool => match (scalar, text) {
                (true, "true") => put(out, Some([1])),
                (true, "false") => put(out, Some([0])),
                _ => false,
            },
            Self::Text => {
                out.extend_from_slice(text.as_bytes());
                true
            }
            Self::Numeric => scalar && numeric(out, text),
            Self::Date => !scalar && put(out, date(text).map(|d| d.to_be_bytes())),
            Self::Timestamp => !scalar && put(out, timestamp(text, false).map(i64::to_be_bytes)),
            Self::Timestamptz => !scalar && put(out, timestamp(text, true).map(i64::to_be_bytes)),
            Self::Json => {
                out.extend_from_slice(value.json().as_bytes());
                true
            }
            Self::Jsonb => {
                out.push(1);
                out.extend_from_slice(value.json().as_bytes());
                true
            }
            Self::Bytea => match backfill_core::encode::base64_decode(text) {
                Some(bytes) if !scalar => {
                    out.extend_from_slice(&bytes);
                    true
                }
                _ => false,
            },
            Self::Uuid => !scalar && put(out, uuid(text)),
        }
    }
}

fn put<const N: usize>(out: &mut Vec<u8>, bytes: Option<[u8; N]>) -> bool {
    match bytes {
        Some(b) => {
            out.extend_from_slice(&b);
            true
        }
        None => false,
    }
}

/// A JSON number's text, or the strings the sources write for the special values. Rust's
/// parsing rounds correctly, as `strtod` and `strtof` do.
fn float<F: std::str::FromStr + FloatSpecial>(text: &str, scalar: bool) -> Option<F> {
    if scalar {
        // A JSON number: digits, a point, an exponent; nothing Rust would read otherwise.
        let json_number = text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        return if json_number { text.parse().ok() } else { None };
    }
    match text {
        "NaN" => Some(F::NAN),
        "Infinity" => Some(F::INFINITY),
        "-Infinity" => Some(F::NEG_INFINITY),
        _ => None,
    }
}

/// The special values of a float type.
trait FloatSpecial {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
}

impl FloatSpecial for f32 {
    const NAN: Self = f32::NAN;
    const INFINITY: Self = f32::INFINITY;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
}

impl FloatSpecial for f64 {
    const NAN: Self = f64::NAN;
    const INFINITY: Self = f64::INFINITY;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
}

/// A decimal `-123.4500` as `numeric_recv` reads it: digit count, weight (of the first
/// base-10,000 digit), sign, display scale (the fraction digits written), then the
/// base-10,000 digits without leading or trailing zero groups.
fn numeric(out: &mut Vec<u8>, text: &str) -> bool {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (unsigned.contains('.') && frac.is_empty())
    {
        return false;
    }
    // The largest scale the format carries (`NUMERIC_DSCALE_MASK`); beyond it the
    // server's text input decides.
    let Ok(dscale) = u16::try_from(frac.len()) else {
        return false;
    };
    if dscale > 0x3FFF {
        return false;
    }
    let int = int.trim_start_matches('0');
    // Digits grouped by four from the decimal point (the integer part padded on the left,
    // the fraction on the right), written straight after the header's place; the zero
    // groups at either end are then cut, so no buffer of its own is needed per value.
    let lead = (4 - int.len() % 4) % 4;
    let Ok(int_groups) = i16::try_from((int.len() + lead) / 4) else {
        return false;
    };
    let header = out.len();
    out.extend_from_slice(&[0; 8]);
    let body = out.len();
    let (mut group, mut filled) = (0i16, 0);
    let padded = std::iter::repeat_n(b'0', lead)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', (4 - frac.len() % 4) % 4));
    for b in padded {
        group = group * 10 + i16::from(b - b'0');
        filled += 1;
        if filled == 4 {
            out.extend_from_slice(&group.to_be_bytes());
            (group, filled) = (0, 0);
        }
    }
    let nonzero = |pair: &[u8]| pair != [0, 0];
    let first = out[body..].chunks(2).position(nonzero);
    let last = out[body..].chunks(2).rposition(nonzero);
    let (Some(first), Some(last)) = (first, last) else {
        // Zero: no digits, positive, the scale written.
        out.truncate(body);
        out[header + 6..header + 8].copy_from_slice(&dscale.to_be_bytes());
        return true;
    };
    let (Ok(skipped), Ok(ndigits)) = (i16::try_from(first), i16::try_from(last + 1 - first)) else {
        out.truncate(header);
        return false;
    };
    out.truncate(body + 2 * (last + 1));
    out.drain(body..body + 2 * first);
    let weight = int_groups - 1 - skipped;
    let sign: u16 = if negative { 0x4000 } else { 0 };
    out[header..header + 2].copy_from_slice(&ndigits.to_be_bytes());
    out[header + 2..header + 4].copy_from_slice(&weight.to_be_bytes());
    out[header + 4..header + 6].copy_from_slice(&sign.to_be_bytes());
    out[header + 6..header + 8].copy_from_slice(&dscale.to_be_bytes());
    true
}

/// 2000-01-01, PostgreSQL's epoch, in days from 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `YYYY-MM-DD` (year 1 to 9999) as days from 2000-01-01.
fn date(text: &str) -> Option<i32> {
    let days = civil_days(text)?;
    i32::try_from(days - PG_EPOCH_DAYS).ok()
}

/// `YYYY-MM-DD` as days from 1970-01-01, checked.
fn civil_days(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if !text.is_ascii() || b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        digits(&text[..4])?,
        digits(&text[5..7])?,
        digits(&text[8..])?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1 || d < 1 || d > month_days {
        return None;
    }
    Some(days_from_civil(
        y,
        u32::try_from(m).ok()?,
        u32::try_from(d).ok()?,
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (a space for the `T` too), with a zone when `zoned`
/// (`Z`, `±HH`, `±HH:MM`, `±HH:MM:SS`), as microseconds from 2000-01-01 00:00:00 (UTC
/// when zoned).
fn timestamp(text: &str, zoned: bool) -> Option<i64> {
    // ASCII only: every slice below is then at a character boundary.
    if !text.is_ascii() || text.len() < 19 || !matches!(text.as_bytes()[10], b'T' | b' ') {
        return None;
    }
    let days = civil_days(&text[..10])?;
    let time = &text[11..];
    let b = time.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, s) = (
        digits(&time[..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut rest = &time[8..];
    let mut micros = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        micros = digits(&fraction[..n])? * 10i64.pow(u32::try_from(6 - n).ok()?);
        rest = &fraction[n..];
    }
    let offset = if zoned {
        zone(rest)?
    } else if rest.is_empty() {
        0
    } else {
        return None;
    };
    let seconds = (days - PG_EPOCH_DAYS) * 86_400 + h * 3_600 + mi * 60 + s - offset;
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

/// A zone's offset east of UTC in seconds.
fn zone(text: &str) -> Option<i64> {
    if !text.is_ascii() {
        return None;
    }
    if text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h] if h.len() == 2 => (digits(h)?, 0, 0),
        [h] if h.len() == 4 => (digits(&h[..2])?, digits(&h[2..])?, 0),
        [h, m] if h.len() == 2 && m.len() == 2 => (digits(h)?, digits(m)?, 0),
        [h, m, s] if h.len() == 2 && m.len() == 2 && s.len() == 2 => {
            (digits(h)?, digits(m)?, digits(s)?)
        }
        _ => return None,
    };
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    Some(sign * (h * 3_600 + m * 60 + s))
}

/// A canonical UUID (`8-4-4-4-12` hex digits) as its 16 bytes.
fn uuid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    // Hex digits only, read by hand (`from_str_radix` would also take a sign).
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|v| u8::try_from(v).ok())
    };
    let mut hex = b.iter().copied().filter(|&c| c != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        *byte = (nibble(hex.next()?)? << 4) | nibble(hex.next()?)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(kind: Binary, cell: &Cell<'_>) -> Option<Vec<u8>> {
        let mut out = vec![9];
        if kind.field(&mut out, cell) {
            Some(out[5..].to_vec())
        } else {
            assert_eq!(out, [9], "a refused value leaves nothing behind");
            None
        }
    }

    fn scalar(t: &str) -> Cell<'_> {
        Cell::Scalar(t.into())
    }

    fn string(t: &str) -> Cell<'_> {
        Cell::Str(t.into())
    }

    #[test]
    fn column_types_find_their_binary_form_and_the_rest_stay_text() {
        use Conversion::{Base64, Json, Record, Text};
        assert_eq!(Binary::of("numeric(20,4)", Text), Some(Binary::Numeric));
        assert_eq!(
            Binary::of("timestamp(3) without time zone", Text),
            Some(Binary::Timestamp)
        );
        assert_eq!(
            Binary::of("TIMESTAMPTZ(6)", Text),
            Some(Binary::Timestamptz)
        );
        assert_eq!(Binary::of("character varying(5)", Text), Some(Binary::Text));
        assert_eq!(Binary::of("jsonb", Json), Some(Binary::Jsonb));
        assert_eq!(Binary::of("bytea", Base64), Some(Binary::Bytea));
        for (ty, conversion) in [
            ("interval", Text),
            ("integer[]", Record),
            ("public.mood", Text),
            ("time", Text),
            ("bytea", Text),
            ("\"char\"", Text),
        ] {
            assert_eq!(Binary::of(ty, conversion), None, "{ty}");
        }
    }

    #[test]
    fn numerics_are_base_ten_thousand_digits_with_the_scale_written() {
        let n = |t: &str| bytes(Binary::Numeric, &scalar(t));
        // ndigits, weight, sign, dscale, digits
        assert_eq!(n("1.2345"), Some(vec![0, 2, 0, 0, 0, 0, 0, 4, 0, 1, 9, 41]));
        assert_eq!(n("-10000"), Some(vec![0, 1, 0, 1, 0x40, 0, 0, 0, 0, 1]));
        assert_eq!(n("0.00"), Some(vec![0, 0, 0, 0, 0, 0, 0, 2]));
        assert_eq!(n("-0"), Some(vec![0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(n("0.0001"), Some(vec![0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1]));
        assert_eq!(
            n("00012345678.9"),
            Some(vec![
                0, 3, 0, 1, 0, 0, 0, 1, 0x04, 0xd2, 0x16, 0x2e, 0x23, 0x28
            ])
        );
        for refused in ["1e5", "NaN", ".5", "5.", "+1", "1.2.3", ""] {
            assert_eq!(n(refused), None, "{refused}");
        }
        assert_eq!(bytes(Binary::Numeric, &string("1")), None);
        let long = format!("0.{}", "1".repeat(0x4000));
        assert_eq!(n(&long), None, "a scale past the format's");
    }

    #[test]
    fn dates_and_times_count_from_two_thousand() {
        assert_eq!(date("2000-01-01"), Some(0));
        assert_eq!(date("1999-12-31"), Some(-1));
        assert_eq!(date("2024-02-29"), Some(8_825));
        assert_eq!(date("2023-02-29"), None);
        assert_eq!(date("0000-01-01"), None);
        assert_eq!(timestamp("2000-01-01T00:00:01.5", false), Some(1_500_000));
        assert_eq!(timestamp("2000-01-01 00:00:00", false), Some(0));
        assert_eq!(timestamp("2000-01-01T02:00:00.000001+02:00", true), Some(1));
        assert_eq!(
            timestamp("1999-12-31T23:00:00Z", true),
            Some(-3_600_000_000)
        );
        assert_eq!(
            timestamp("2000-01-01T00:00:00-0130", true),
            Some(5_400_000_000)
        );
        for refused in [
            "2000-01-01T00:00:00",
            "2000-01-01T24:00:00Z",
            "2000-01-01T23:59:60Z",
            "2000-01-01T00:00:00.1234567Z",
            "infinity",
            "2000-01-01T00:00:00+5",
        ] {
            assert_eq!(timestamp(refused, true), None, "{refused}");
        }
        assert_eq!(timestamp("2000-01-01T00:00:00Z", false), None);
        // Not ASCII: refused, never sliced inside a character.
        for refused in [
            "2000-01-01T12:34:5é",
            "2000-01-01T00:00:00+1é1",
            "2000-01-01T00:00:00.1é",
            "2é00-01-01T00:00:00Z",
        ] {
            assert_eq!(timestamp(refused, true), None, "{refused}");
        }
        assert_eq!(date("2é0-01-01"), None);
        assert_eq!(zone("+é"), None);
    }

    #[test]
    fn scalars_are_range_checked_and_floats_round_as_the_server_does() {
        assert_eq!(bytes(Binary::I16, &scalar("-32768")), Some(vec![0x80, 0]));
        assert_eq!(bytes(Binary::I16, &scalar("32768")), None);
        assert_eq!(
            bytes(Binary::I64, &scalar("9223372036854775807")),
            Some(i64::MAX.to_be_bytes().to_vec())
        );
        assert_eq!(bytes(Binary::I64, &scalar("9223372036854775808")), None);
        assert_eq!(bytes(Binary::I32, &scalar("1.0")), None);
        assert_eq!(
            bytes(Binary::F32, &scalar("0.1")),
            Some(0.1f32.to_be_bytes().to_vec())
        );
        assert_eq!(
            bytes(Binary::F64, &string("-Infinity")),
            Some(f64::NEG_INFINITY.to_be_bytes().to_vec())
        );
        assert_eq!(bytes(Binary::F64, &string("inf")), None);
        assert_eq!(bytes(Binary::F64, &scalar("inf")), None);
        assert_eq!(bytes(Binary::Bool, &scalar("true")), Some(vec![1]));
        assert_eq!(bytes(Binary::Bool, &string("true")), None);
        assert_eq!(bytes(Binary::Jsonb, &scalar("1")), Some(vec![1, b'1']));
        assert_eq!(
            bytes(
                Binary::Uuid,
                &string("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            )
            .map(|b| b.len()),
            Some(16)
        );
        assert_eq!(
            bytes(Binary::Uuid, &string("a0eebc999c0b4ef8bb6d6bb9bd380a11")),
            None
        );
        assert_eq!(
            bytes(
                Binary::Uuid,
                &string("+0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            ),
            None
        );
        let mut out = Vec::new();
        assert!(Binary::Text.field(&mut out, &Cell::Null));
        assert_eq!(out, (-1i32).to_be_bytes());
    }
}
