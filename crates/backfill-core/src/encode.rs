//! How documents spell the values JSON has no type for (DESIGN.md §5), shared by every
//! source so that the same stored value reads the same whichever database it came from:
//! bytes as standard base64, numbers with exactly their stored digits, dates in the
//! proleptic Gregorian calendar.

use serde_json::{Number, Value};

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let idx = |shift: u32| T[usize::try_from((n >> shift) & 63).unwrap_or(0)] as char;
        s.push(idx(18));
        s.push(idx(12));
        s.push(if chunk.len() > 1 { idx(6) } else { '=' });
        s.push(if chunk.len() > 2 { idx(0) } else { '=' });
    }
    s
}

/// Decodes standard base64 (padding optional); `None` on any other character.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xFF).ok()?);
        }
    }
    Some(out)
}

/// A JSON number with exactly the digits of `text` (the workspace runs serde_json with
/// `arbitrary_precision`, so nothing is rounded through a float).
pub fn number(text: &str) -> Result<Value, String> {
    serde_json::from_str::<Number>(text)
        .map(Value::Number)
        .map_err(|_| format!("bad number {text:?}"))
}

/// The shortest text that reads back as `f` (as JavaScript prints numbers: plain digits
/// between 1e-6 and 1e21, exponent form outside); `None` for NaN and infinities, which JSON
/// cannot hold.
pub fn shortest_float(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let a = f.abs();
    Some(if a != 0.0 && !(1e-6..1e21).contains(&a) {
        format!("{f:e}")
    } else {
        format!("{f}")
    })
}

/// `value / 10^scale` written with exactly `scale` fraction digits (`150`, 2 is `1.50`).
pub fn scaled_decimal(value: i128, scale: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"h"), "aA==");
        assert_eq!(base64(b"he"), "aGU=");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        for bytes in [&b""[..], b"h", b"he", b"hel", b"hello", &[0, 255, 254, 1]] {
            assert_eq!(base64_decode(&base64(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_decode("a$=="), None);
    }

    #[test]
    fn scaled_decimals_keep_every_digit() {
        assert_eq!(scaled_decimal(150, 2), "1.50");
        assert_eq!(scaled_decimal(-5, 3), "-0.005");
        assert_eq!(scaled_decimal(0, 2), "0.00");
        assert_eq!(scaled_decimal(42, 0), "42");
        assert_eq!(
            scaled_decimal(-99_999_999_999_999_999_999_999_999_999_999_999_999, 10),
            "-9999999999999999999999999999.9999999999"
        );
        assert_eq!(number("1.50").expect("number").to_string(), "1.50");
    }

    #[test]
    fn floats_are_shortest_and_json() {
        assert_eq!(shortest_float(0.1).as_deref(), Some("0.1"));
        assert_eq!(shortest_float(3.0).as_deref(), Some("3"));
        assert_eq!(shortest_float(-2.5e-300).as_deref(), Some("-2.5e-300"));
        assert_eq!(shortest_float(1e21).as_deref(), Some("1e21"));
        assert_eq!(shortest_float(123_456.75).as_deref(), Some("123456.75"));
        assert_eq!(shortest_float(f64::NAN), None);
        for f in [0.1, -2.5e-300, 1e21, f64::MAX, f64::MIN_POSITIVE, 5e-324] {
            let text = shortest_float(f).expect("finite");
            assert_eq!(text.parse::<f64>().ok(), Some(f), "{text}");
            assert!(number(&text).is_ok(), "{text} is a JSON number");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-719_162), (1, 1, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
