//! How documents spell the values JSON has no type for (DESIGN.md §5), shared by every
//! source so that the same stored value reads the same whichever database it came from:
//! bytes as standard base64, numbers with exactly their stored digits, dates in the
//! proleptic Gregorian calendar.

use std::cell::RefCell;

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

/// (year, month, day) in the proleptic Gregorian calendar → days since 1970-01-01: the
/// inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A JSON document's text as the source prints it: [`compact_json`] where that gives
/// the bytes, else parsed and written back (a repeated key keeps its last value, in its
/// first place), numbers through `number` either way.
pub fn write_json_document(
    text: &str,
    out: &mut Vec<u8>,
    mut number: impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let mark = out.len();
    if compact_json(text, out, &mut number)? {
        return Ok(());
    }
    out.truncate(mark);
    let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    write_value(&v, out, &mut number)
}

fn write_value(
    v: &Value,
    out: &mut Vec<u8>,
    number: &mut impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => number(&n.to_string(), out)?,
        Value::String(s) => crate::json::write_json_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, number)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::json::write_json_str(out, k);
                out.push(b':');
                write_value(item, out, number)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A JSON number's text as `serde_json` prints it after a parse: every digit kept, an
/// exponent spelled `e+N` / `e-N`. The `number` of [`compact_json`] for sources that
/// print JSON documents as parsed.
pub fn json_number_as_parsed(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if text.contains(['e', 'E']) {
        let n: Number = serde_json::from_str(text).map_err(|_| format!("bad number {text:?}"))?;
        out.extend_from_slice(n.to_string().as_bytes());
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    Ok(())
}

/// A fraction of a second (or any fraction) as text: `.` and the first `keep` digits of
/// `value` units of 10^-`digits`, zero-padded on the left to `digits` digits; empty
/// when `keep` is 0. `fraction(1_500, 6, 3)` is `.001`, `fraction(7, 2, 2)` is `.07`.
pub fn fraction(value: u64, digits: usize, keep: usize) -> String {
    if keep == 0 {
        return String::new();
    }
    let text = format!("{value:0digits$}");
    format!(".{}", &text[..keep.min(text.len())])
}

/// Copies JSON text without the whitespace between tokens, each number through
/// `number` (which writes it as the source's type spells it), each string escaped as
/// `serde_json` escapes it: the bytes `serde_json` would print after parsing the text,
/// without building the value. `Err` when the text is not exactly one JSON value (the
/// grammar is checked as the text is copied, so what is written needs no second parse).
/// `Ok(false)`, with `out` to be discarded, when only a parse gives those bytes: an
/// object repeats a key (a parse keeps the last value) or a key is escaped (so repeats
/// cannot be compared as bytes).
pub fn compact_json(
    text: &str,
    out: &mut Vec<u8>,
    number: impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
) -> Result<bool, String> {
    // The stacks are kept per thread, not allocated per value. A nested call (a `number`
    // that compacts) takes fresh ones.
    thread_local! {
        static STACKS: RefCell<Stacks> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    STACKS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut stacks) => {
            let (open, keys) = &mut *stacks;
            open.clear();
            keys.clear();
            compact_with(text, out, number, open, keys)
        }
        Err(_) => compact_with(text, out, number, &mut Vec::new(), &mut Vec::new()),
    })
}

/// The stacks of [`compact_with`].
type Stacks = (Vec<(bool, usize)>, Vec<(usize, usize)>);

/// What the grammar allows next in [`compact_with`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A value (the start, or after `:` or an array's `,`).
    Value,
    /// A value or `]` (after `[`).
    ValueOrEnd,
    /// A key or `}` (after `{`).
    KeyOrEnd,
    /// A key (after an object's `,`).
    Key,
    /// `:` (after a key).
    Colon,
    /// `,` or the open container's end (after a value inside one).
    CommaOrEnd,
    /// Nothing but whitespace (after the top value).
    Done,
}

/// [`compact_json`] with its stacks: the open containers (true for an object, with
/// where its keys start in `keys`) and the keys of the open objects, as ranges of `text`.
fn compact_with(
    text: &str,
    out: &mut Vec<u8>,
    mut number: impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
    open: &mut Vec<(bool, usize)>,
    keys: &mut Vec<(usize, usize)>,
) -> Result<bool, String> {
    let mut c = Compactor {
        text,
        out,
        open,
        keys,
        next: Next::Value,
        i: 0,
    };
    while let Some(&byte) = c.text.as_bytes().get(c.i) {
        let value_here = matches!(c.next, Next::Value | Next::ValueOrEnd);
        match byte {
            b' ' | b'\n' | b'\t' | b'\r' => c.i += 1,
            b'"' => {
                if !c.string(value_here)? {
                    return Ok(false);
                }
            }
            b'-' | b'0'..=b'9' if value_here => c.number(&mut number)?,
            b't' | b'f' | b'n' if value_here => c.literal(byte)?,
            b'{' | b'[' if value_here => c.open(byte),
            b'}' | b']' => c.close(byte)?,
            b',' if c.next == Next::CommaOrEnd => {
                c.next = if c.open.last().is_some_and(|o| o.0) {
                    Next::Key
                } else {
                    Next::Value
                };
                c.punctuation(byte);
            }
            b':' if c.next == Next::Colon => {
                c.next = Next::Value;
                c.punctuation(byte);
            }
            b'-' | b'0'..=b'9' => return bad("unexpected number", c.i),
            b't' | b'f' | b'n' => return bad("unexpected literal", c.i),
            _ => return bad("unexpected character", c.i),
        }
    }
    if c.next != Next::Done {
        return bad("the text ends inside a value", text.len());
    }
    Ok(true)
}

fn bad<T>(what: &str, at: usize) -> Result<T, String> {
    Err(format!("bad JSON: {what} at byte {at}"))
}

/// [`compact_with`]'s state: where it is in `text`, what the grammar allows next, and
/// the stacks.
struct Compactor<'a> {
    text: &'a str,
    out: &'a mut Vec<u8>,
    open: &'a mut Vec<(bool, usize)>,
    keys: &'a mut Vec<(usize, usize)>,
    next: Next,
    i: usize,
}

impl Compactor<'_> {
    /// What follows a value: the end, or a comma or the close of its container.
    fn after_value(&self) -> Next {
        if self.open.is_empty() {
            Next::Done
        } else {
            Next::CommaOrEnd
        }
    }

    fn punctuation(&mut self, byte: u8) {
        self.out.push(byte);
        self.i += 1;
    }

    /// A string at `i`, a key or a value; `false` when it is a key that only a parse
    /// can place (escaped, or repeated in its object).
    fn string(&mut self, value_here: bool) -> Result<bool, String> {
        let b = self.text.as_bytes();
        let is_key = matches!(self.next, Next::KeyOrEnd | Next::Key);
        if !is_key && !value_here {
            return bad("unexpected string", self.i);
        }
        let start = self.i;
        let mut escaped = false;
        let mut i = start + 1;
        loop {
            match b.get(i) {
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(b'"') => break,
                Some(&c) if c < 0x20 => return bad("a control character in a string", i),
                Some(_) => i += 1,
                None => return bad("an unterminated string", start),
            }
        }
        i += 1;
        self.i = i;
        let quoted = &b[start..i];
        if is_key {
            let from = self.open.last().map_or(0, |o| o.1);
            if escaped || self.keys[from..].iter().any(|&(s, e)| &b[s..e] == quoted) {
                return Ok(false);
            }
            self.keys.push((start, i));
            self.next = Next::Colon;
        } else {
            self.next = self.after_value();
        }
        if escaped {
            // The parse checks the escapes (and refuses a lone surrogate).
            let s: String =
                serde_json::from_slice(quoted).map_err(|e| format!("bad JSON string: {e}"))?;
            crate::json::write_json_str(self.out, &s);
        } else {
            self.out.extend_from_slice(quoted);
        }
        Ok(true)
    }

    /// A number at `i`, written by `number`.
    fn number(
        &mut self,
        number: &mut impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let b = self.text.as_bytes();
        let start = self.i;
        let mut i = start;
        while b
            .get(i)
            .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            i += 1;
        }
        let token = &self.text[start..i];
        if !crate::json::is_json_number(token) {
            return bad("a malformed number", start);
        }
        number(token, self.out)?;
        self.i = i;
        self.next = self.after_value();
        Ok(())
    }

    /// `true`, `false` or `null` at `i`.
    fn literal(&mut self, first: u8) -> Result<(), String> {
        let literal: &[u8] = match first {
            b't' => b"true",
            b'f' => b"false",
            _ => b"null",
        };
        if !self.text.as_bytes()[self.i..].starts_with(literal) {
            return bad("unexpected literal", self.i);
        }
        self.out.extend_from_slice(literal);
        self.i += literal.len();
        self.next = self.after_value();
        Ok(())
    }

    /// `{` or `[`.
    fn open(&mut self, byte: u8) {
        let object = byte == b'{';
        self.open.push((object, self.keys.len()));
        self.next = if object {
            Next::KeyOrEnd
        } else {
            Next::ValueOrEnd
        };
        self.punctuation(byte);
    }

    /// `}` or `]`, where the grammar allows it and it closes the open container.
    fn close(&mut self, byte: u8) -> Result<(), String> {
        let object = byte == b'}';
        let allowed = match self.next {
            Next::CommaOrEnd => true,
            Next::KeyOrEnd => object,
            Next::ValueOrEnd => !object,
            _ => false,
        };
        match self.open.last() {
            Some(&(o, from)) if allowed && o == object => {
                self.open.pop();
                self.keys.truncate(from);
            }
            _ => return bad("unexpected close", self.i),
        }
        self.next = self.after_value();
        self.punctuation(byte);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(text: &str) -> Option<String> {
        let mut out = Vec::new();
        let whole = compact_json(text, &mut out, json_number_as_parsed).ok()?;
        whole.then(|| String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn fractions_are_zero_padded_then_cut() {
        assert_eq!(fraction(1_500, 6, 3), ".001");
        assert_eq!(fraction(123_456, 6, 2), ".12");
        assert_eq!(fraction(7, 2, 2), ".07");
        assert_eq!(fraction(5, 6, 0), "");
        assert_eq!(fraction(123_456, 6, 9), ".123456");
    }

    #[test]
    fn compacting_json_prints_what_a_parse_would() {
        for text in [
            r#"{"a": 1, "b": [1, 2.50, -0, 1E2, "x  y"], "c": {"a": null, "d": {}}, "": true}"#,
            r#" [ "tab\there", "\u00e9\/", {"k": "\"q\""}, [], false ] "#,
            r#""just a string""#,
            "-12.5e-3",
            r#"[{"a": 1}, {"a": 2}]"#,
        ] {
            let parsed: Value = serde_json::from_str(text).unwrap_or_default();
            assert_eq!(compacted(text), Some(parsed.to_string()), "{text}");
        }
        // Only a parse says which of a repeated key's values stays.
        for text in [
            r#"{"a": 1, "b": {"a": 2, "x": 1E2, "a": 3}}"#,
            r#"{"\u0061": 1, "a": 2}"#,
        ] {
            assert_eq!(compacted(text), None);
            let mut out = Vec::new();
            assert!(write_json_document(text, &mut out, json_number_as_parsed).is_ok());
            let parsed: Value = serde_json::from_str(text).unwrap_or_default();
            assert_eq!(
                String::from_utf8(out).unwrap_or_default(),
                parsed.to_string()
            );
        }
    }

    /// The compactor accepts exactly the texts a parse accepts, and writes what the parse
    /// prints: checked on valid documents and on every one-byte mutation of them.
    #[test]
    fn compacting_checks_the_grammar_as_a_parse_does() {
        let docs = [
            r#"{"a": 1, "b": [1, 2.50, -0, 1E2, "x  y", true, false, null], "c": {"d": {}}}"#,
            r#"[[], {}, [{"k": "v\"w"}], "\u00e9", -12.5e-3, 0.5, 10]"#,
            r#" "s" "#,
            "true",
            "-1",
            r#"{"a":{"a":[null]}}"#,
        ];
        let alphabet = b" \t\n{}[],:\"\\-+.eE019tfnulrsa\x01";
        // Every one-byte deletion, replacement and insertion from the alphabet.
        let mut cases: Vec<String> = docs.iter().map(|d| (*d).to_string()).collect();
        for doc in docs {
            let d = doc.as_bytes();
            for at in 0..=d.len() {
                let mut mutants = Vec::new();
                if at < d.len() {
                    mutants.push([&d[..at], &d[at + 1..]].concat());
                }
                for &c in alphabet {
                    if at < d.len() {
                        mutants.push([&d[..at], &[c], &d[at + 1..]].concat());
                    }
                    mutants.push([&d[..at], &[c], &d[at..]].concat());
                }
                cases.extend(
                    mutants
                        .into_iter()
                        .filter_map(|m| String::from_utf8(m).ok()),
                );
            }
        }
        let mut valid = 0;
        for text in &cases {
            let parsed = serde_json::from_str::<Value>(text);
            let mut out = Vec::new();
            let ours = write_json_document(text, &mut out, json_number_as_parsed);
            match parsed {
                Ok(v) => {
                    valid += 1;
                    assert!(ours.is_ok(), "{text:?} refused: {ours:?}");
                    assert_eq!(
                        String::from_utf8(out).unwrap_or_default(),
                        v.to_string(),
                        "{text:?}"
                    );
                }
                Err(_) => assert!(ours.is_err(), "{text:?} accepted"),
            }
        }
        assert!(
            valid > 100 && valid < cases.len() - 100,
            "{valid} of {}",
            cases.len()
        );
    }

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
        for days in (-719_162..=2_932_896).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
