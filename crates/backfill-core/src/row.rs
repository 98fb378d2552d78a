//! A row image, kept as the JSON text it will be written as.
//!
//! A row is the body of a JSON object, `"id":1,"b":"x","e":{"k":[1]}`, plus where each
//! entry starts and ends. Sources render each value once, straight into that text, and
//! the output copies the body into the document line as it stands:
//!
//! ```text
//!   source value ──render──▶ body: "id":1,"b":"x"     spans: [(0,5,6), (7,11,14)]
//!                                   └──────┬──────┘
//!   output line:  {"binding":0,"doc":{ body ,"_meta":{...}}}
//! ```
//!
//! A row is two allocations however many columns it has, where a `serde_json` map takes
//! a `String` per column name and per number (`arbitrary_precision`), a tree per JSON
//! value and a hash table, all built, serialized and freed per change.
//!
//! Invariants: `body` is valid UTF-8 and is the comma-separated entries of a JSON
//! object, each a JSON string (the name) and a JSON value, in insertion order; no two
//! entries have the same name; `spans` holds one entry per entry, in order. Every
//! constructor keeps them: values are written by `serde_json` or checked
//! ([`Row::push_raw`]), names are always escaped by `serde_json`.
//!
//! Equality is map equality (order-insensitive, values compared as their text); numbers
//! keep their source digits, so `1.50` and `1.5` differ, as with `arbitrary_precision`.

use std::borrow::Cow;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json::{
    is_json_number, write_i64, write_json_str, write_json_str_inner, write_json_utf8, write_u64,
};

/// A column name as rows take it: a `str`, escaped for every value pushed, or a
/// [`QuotedName`], escaped once.
pub trait ColumnName {
    /// The name.
    fn as_str(&self) -> &str;
    /// Appends the name as a JSON string.
    fn write_quoted(&self, out: &mut Vec<u8>);
}

impl ColumnName for str {
    fn as_str(&self) -> &str {
        self
    }

    fn write_quoted(&self, out: &mut Vec<u8>) {
        write_json_str(out, self);
    }
}

impl ColumnName for String {
    fn as_str(&self) -> &str {
        self
    }

    fn write_quoted(&self, out: &mut Vec<u8>) {
        write_json_str(out, self);
    }
}

/// A column name with its JSON string made once: a source that renders many rows of a
/// table keeps one per column, so that no row escapes the name again (3% of MariaDB
/// streaming's instructions, BENCHMARKS.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotedName {
    name: Box<str>,
    quoted: Box<[u8]>,
}

impl QuotedName {
    /// The name, quoted once.
    pub fn new(name: &str) -> Self {
        let mut quoted = Vec::with_capacity(name.len() + 2);
        write_json_str(&mut quoted, name);
        Self {
            name: name.into(),
            quoted: quoted.into(),
        }
    }
}

impl ColumnName for QuotedName {
    fn as_str(&self) -> &str {
        &self.name
    }

    fn write_quoted(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.quoted);
    }
}

/// One entry's offsets in the body: the opening quote of its name, the first byte of its
/// value, and one past its value's last byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    name: u32,
    value: u32,
    end: u32,
}

/// A row image: column names and values in table column order, as JSON text.
#[derive(Clone, Default)]
pub struct Row {
    body: Vec<u8>,
    spans: Vec<Span>,
}

fn offset(n: usize) -> u32 {
    // A row's text over 4 GiB cannot be a document anyone consumes; saturating keeps the
    // spans ordered, and `push_*` refuses such rows before this matters.
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty row with room for `columns` entries of about `text` bytes in all.
    pub fn with_capacity(columns: usize, text: usize) -> Self {
        Self {
            body: Vec::with_capacity(text + columns * 8),
            spans: Vec::with_capacity(columns),
        }
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of JSON text the row holds.
    pub fn text_len(&self) -> usize {
        self.body.len()
    }

    /// What the row costs while a chunk holds it: its text, its spans and the two
    /// vectors' headers (the key is counted by the caller's [`crate::source::buffered_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.body.capacity() + self.spans.capacity() * std::mem::size_of::<Span>() + 48
    }

    /// Writes the separator and `name:`; returns where the entry and its value start.
    fn begin<N: ColumnName + ?Sized>(&mut self, name: &N) -> (u32, u32) {
        debug_assert!(
            !self.contains_key(name.as_str()),
            "column {} pushed twice into a row",
            name.as_str()
        );
        if !self.body.is_empty() {
            self.body.push(b',');
        }
        let start = offset(self.body.len());
        name.write_quoted(&mut self.body);
        self.body.push(b':');
        (start, offset(self.body.len()))
    }

    fn finish(&mut self, (name, value): (u32, u32)) {
        let end = offset(self.body.len());
        self.spans.push(Span { name, value, end });
    }

    /// Appends a column whose name is not in the row yet.
    pub fn push<N: ColumnName + ?Sized>(&mut self, name: &N, value: &Value) {
        let start = self.begin(name);
        // Writing a `Value` to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut self.body, value);
        self.finish(start);
    }

    /// Appends a column with a string value, escaped as JSON.
    pub fn push_str<N: ColumnName + ?Sized>(&mut self, name: &N, value: &str) {
        let start = self.begin(name);
        write_json_str(&mut self.body, value);
        self.finish(start);
    }

    /// Appends a column with a string value given as bytes, escaped as JSON; `Err` (and
    /// the row unchanged) when they are not UTF-8. Text a database sends is mostly ASCII,
    /// which is checked a word at a time; only other text takes the full UTF-8 check.
    pub fn push_utf8<N: ColumnName + ?Sized>(
        &mut self,
        name: &N,
        value: &[u8],
    ) -> Result<(), std::str::Utf8Error> {
        if !value.is_ascii() {
            std::str::from_utf8(value)?;
        }
        let start = self.begin(name);
        write_json_utf8(&mut self.body, value);
        self.finish(start);
        Ok(())
    }

    /// Appends a column with a string value made of `parts` in order, escaped as JSON:
    /// for values a source rewrites a little (a separator replaced, a suffix added),
    /// without building the string first.
    pub fn push_str_parts<N: ColumnName + ?Sized>(&mut self, name: &N, parts: &[&str]) {
        let start = self.begin(name);
        self.body.push(b'"');
        for part in parts.iter().filter(|p| !p.is_empty()) {
            write_json_str_inner(&mut self.body, part);
        }
        self.body.push(b'"');
        self.finish(start);
    }

    /// Appends a column with a null value.
    pub fn push_null<N: ColumnName + ?Sized>(&mut self, name: &N) {
        self.push_raw_unchecked(name, "null");
    }

    /// Appends a column with a signed integer value.
    pub fn push_i64<N: ColumnName + ?Sized>(&mut self, name: &N, value: i64) {
        let start = self.begin(name);
        write_i64(&mut self.body, value);
        self.finish(start);
    }

    /// Appends a column with an unsigned integer value.
    pub fn push_u64<N: ColumnName + ?Sized>(&mut self, name: &N, value: u64) {
        let start = self.begin(name);
        write_u64(&mut self.body, value);
        self.finish(start);
    }

    /// Appends a column whose value is JSON text the source produced; `Err` (and the row
    /// unchanged) when it is not exactly one JSON value. Use it for text that is already
    /// JSON, such as a number's digits: a number is checked in a scan, other text is
    /// parsed.
    pub fn push_raw<N: ColumnName + ?Sized>(&mut self, name: &N, json: &str) -> Result<(), String> {
        if !is_json_number(json) && serde_json::from_str::<&RawValue>(json).is_err() {
            return Err(format!("not a JSON value: {json:.64}"));
        }
        self.push_raw_unchecked(name, json.trim());
        Ok(())
    }

    /// Appends a column whose value is a number's text, written as it stands (every
    /// digit kept); `Err` when it is not exactly a JSON number.
    pub fn push_number<N: ColumnName + ?Sized>(
        &mut self,
        name: &N,
        text: impl AsRef<[u8]>,
    ) -> Result<(), String> {
        let text = text.as_ref();
        if !is_json_number(text) {
            return Err(format!("bad number {:.64}", String::from_utf8_lossy(text)));
        }
        self.push_raw_unchecked(name, text);
        Ok(())
    }

    /// Appends text the caller wrote as JSON: for the writers in this module only.
    fn push_raw_unchecked<N: ColumnName + ?Sized>(&mut self, name: &N, json: impl AsRef<[u8]>) {
        let start = self.begin(name);
        self.body.extend_from_slice(json.as_ref());
        self.finish(start);
    }

    /// Appends a column whose value the caller writes into `out` as one JSON value with
    /// `write`; `Err` (and the row unchanged) when what it wrote is not one.
    pub fn push_with<N: ColumnName + ?Sized, E>(
        &mut self,
        name: &N,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let body_len = self.body.len();
        let start = self.begin(name);
        let value_at = self.body.len();
        let written = write(&mut self.body);
        let ok = match &written {
            Ok(()) => {
                let text = &self.body[value_at..];
                // A number (the common case) is ASCII: no UTF-8 check before the scan.
                is_json_number(text)
                    || std::str::from_utf8(text)
                        .is_ok_and(|t| serde_json::from_str::<&RawValue>(t).is_ok())
            }
            Err(_) => false,
        };
        if !ok {
            self.body.truncate(body_len);
            return Err(match written {
                Err(e) => PushError::Write(e),
                Ok(()) => PushError::NotJson,
            });
        }
        self.finish(start);
        Ok(())
    }

    /// Appends a column whose value is the JSON document `text`, compacted as
    /// [`crate::encode::write_json_document`] writes it, each number through `number`;
    /// `Err` (and the row unchanged) when the text is not exactly one JSON value, or
    /// `number` writes something that is not a JSON number. The document's grammar is
    /// checked as it is copied, so unlike [`Row::push_with`] it is not parsed again.
    pub fn push_json<N: ColumnName + ?Sized>(
        &mut self,
        name: &N,
        text: &str,
        mut number: impl FnMut(&str, &mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let body_len = self.body.len();
        let start = self.begin(name);
        let checked = |token: &str, out: &mut Vec<u8>| {
            let at = out.len();
            number(token, out)?;
            if is_json_number(&out[at..]) {
                Ok(())
            } else {
                Err(format!("{token} was written as a number that is not JSON"))
            }
        };
        if let Err(e) = crate::encode::write_json_document(text, &mut self.body, checked) {
            self.body.truncate(body_len);
            return Err(e);
        }
        debug_assert!(
            serde_json::from_slice::<&RawValue>(&self.body[start.1 as usize..]).is_ok(),
            "a compacted document is JSON"
        );
        self.finish(start);
        Ok(())
    }

    fn name_of(&self, span: &Span) -> &[u8] {
        &self.body[span.name as usize..span.value as usize - 1]
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.spans
            .iter()
            .position(|s| json_str_eq(self.name_of(s), name))
    }

    /// Whether the row has the column.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The column's value as JSON text.
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        let span = self.spans.get(self.position(name)?)?;
        std::str::from_utf8(&self.body[span.value as usize..span.end as usize]).ok()
    }

    /// The column's value, parsed.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.get_raw(name).and_then(parse_value)
    }

    /// Columns in order: the name, and the value as JSON text.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, &str)> + '_ {
        self.spans.iter().map(|s| {
            let name = serde_json::from_slice::<Cow<'_, str>>(self.name_of(s)).unwrap_or_default();
            let value =
                std::str::from_utf8(&self.body[s.value as usize..s.end as usize]).unwrap_or("null");
            (name, value)
        })
    }

    /// Sets the column to `value`: replaced where the row has it (keeping its place),
    /// appended where it does not, as a map insert does.
    pub fn insert(&mut self, name: &str, value: &Value) {
        match self.position(name) {
            None => self.push(name, value),
            Some(i) => {
                let mut text = Vec::new();
                let _ = serde_json::to_writer(&mut text, value);
                self.replace_value(i, &text);
            }
        }
    }

    fn replace_value(&mut self, i: usize, text: &[u8]) {
        let Some(span) = self.spans.get(i).copied() else {
            return;
        };
        self.body
            .splice(span.value as usize..span.end as usize, text.iter().copied());
        let new_end = offset(span.value as usize + text.len());
        let shift = i64::from(new_end) - i64::from(span.end);
        let moved = |at: u32| offset(usize::try_from(i64::from(at) + shift).unwrap_or(0));
        self.spans[i].end = new_end;
        for s in &mut self.spans[i + 1..] {
            *s = Span {
                name: moved(s.name),
                value: moved(s.value),
                end: moved(s.end),
            };
        }
    }

    /// Appends every column of `other` this row lacks, with its value (a row from the
    /// database that omitted unchanged values, completed from the row it replaces).
    pub fn fill_from(&mut self, other: &Row) {
        for s in &other.spans {
            let name = other.name_of(s);
            if self.spans.iter().any(|m| self.name_of(m) == name) {
                continue;
            }
            if !self.body.is_empty() {
                self.body.push(b',');
            }
            let start = offset(self.body.len());
            self.body
                .extend_from_slice(&other.body[s.name as usize..s.end as usize]);
            let value = start + (s.value - s.name);
            let end = offset(self.body.len());
            self.spans.push(Span {
                name: start,
                value,
                end,
            });
        }
    }

    /// Keeps only the columns for which `keep(name, value as JSON text)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut kept = Row::with_capacity(self.len(), self.body.len());
        for (name, value) in self.iter() {
            if keep(&name, value) {
                kept.push_raw_unchecked(name.as_ref(), value);
            }
        }
        *self = kept;
    }

    /// Writes the row as a JSON object.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        out.extend_from_slice(&self.body);
        out.push(b'}');
    }

    /// The comma-separated entries, `"name":value,...`: a JSON object without its braces.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The entries one at a time as raw bytes, `("\"name\"", value)`: for the output's
    /// slow path.
    pub fn raw_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|s| {
            (
                self.name_of(s),
                &self.body[s.value as usize..s.end as usize],
            )
        })
    }

    /// The row as a map: for tests and the rare paths that edit values.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(n, v)| {
                (
                    n.into_owned(),
                    serde_json::from_str(v).unwrap_or(Value::Null),
                )
            })
            .collect()
    }
}

/// Why [`Row::push_with`] refused a value.
#[derive(Debug)]
pub enum PushError<E> {
    /// The writer failed.
    Write(E),
    /// The writer wrote something that is not one JSON value.
    NotJson,
}

impl<E: fmt::Display> fmt::Display for PushError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Write(e) => e.fmt(f),
            Self::NotJson => f.write_str("the value rendered is not JSON"),
        }
    }
}

/// A value of the body as a `Value`. Sources take every row's key this way, so the two
/// common key shapes skip the parser: a string with no escape, and an integer that fits
/// an `i64` (built as the parser builds it: `arbitrary_precision` keeps the digits,
/// and a JSON integer has no leading zero; `-0` alone would come back as `0`).
fn parse_value(raw: &str) -> Option<Value> {
    let b = raw.as_bytes();
    if b.len() >= 2 && b[0] == b'"' && !b.contains(&b'\\') {
        return Some(Value::String(raw[1..raw.len() - 1].to_owned()));
    }
    if (1..=18).contains(&b.len())
        && raw != "-0"
        && b.iter()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || (i == 0 && *c == b'-'))
        && let Ok(i) = raw.parse::<i64>()
    {
        return Some(Value::from(i));
    }
    serde_json::from_str(raw).ok()
}

/// Whether the escaped, quoted JSON string `quoted` spells `name`. Escapes only
/// lengthen a string, so the lengths settle most comparisons.
fn json_str_eq(quoted: &[u8], name: &str) -> bool {
    let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or(&[]);
    if inner.len() <= name.len() {
        return inner == name.as_bytes() && !inner.contains(&b'\\');
    }
    if !inner.contains(&b'\\') {
        return false;
    }
    serde_json::from_slice::<Cow<'_, str>>(quoted).is_ok_and(|n| n == name)
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.spans.iter().all(|s| {
                let name = self.name_of(s);
                other.spans.iter().any(|o| {
                    other.name_of(o) == name
                        && other.body[o.value as usize..o.end as usize]
                            == self.body[s.value as usize..s.end as usize]
                })
            })
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", String::from_utf8_lossy(&self.body))
    }
}

impl From<Map<String, Value>> for Row {
    fn from(map: Map<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

impl<S: AsRef<str>> FromIterator<(S, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (S, Value)>>(iter: I) -> Self {
        let mut row = Row::new();
        for (name, value) in iter {
            row.insert(name.as_ref(), &value);
        }
        row
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
            let raw: &RawValue = serde_json::from_str(value).map_err(serde::ser::Error::custom)?;
            map.serialize_entry(&name, raw)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn utf8_bytes_are_pushed_as_the_str_is_and_other_bytes_refused() {
        let texts = [
            "",
            "plain ascii",
            "a \"quote\" and a \\ backslash",
            "tab\tnew line\ncontrol \u{1}\u{1f}",
            "longer than sixteen bytes, with \"escapes\" past the sixteenth",
            "é, ü and 漢字",
            "emoji 🦀 after ascii",
            "\u{7f} and \u{80}",
        ];
        for text in texts {
            let (mut by_str, mut by_bytes) = (Row::new(), Row::new());
            by_str.push_str("v", text);
            by_bytes
                .push_utf8("v", text.as_bytes())
                .expect("UTF-8 is accepted");
            assert_eq!(by_bytes, by_str, "{text:?}");
            assert_eq!(by_bytes.get("v"), Some(Value::from(text)));
        }
        for bad in [
            &b"\xff"[..],
            b"ascii then \xc3",
            b"\xed\xa0\x80 (a surrogate)",
        ] {
            let mut row = Row::new();
            row.push_i64("before", 1);
            let unchanged = row.clone();
            assert!(row.push_utf8("v", bad).is_err(), "{bad:?}");
            assert_eq!(row, unchanged);
        }
    }

    #[test]
    fn a_quoted_name_writes_what_the_str_does() {
        for name in ["id", "a \"quoted\" name", "tab\there", "é", ""] {
            let (mut by_str, mut quoted) = (Row::new(), Row::new());
            by_str.push_i64(name, 1);
            by_str.push_str("next", "x");
            quoted.push_i64(&QuotedName::new(name), 1);
            quoted.push_str(&QuotedName::new("next"), "x");
            assert_eq!(by_str.body(), quoted.body(), "{name}");
            assert_eq!(quoted.get(name), Some(Value::from(1)), "{name}");
        }
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for v in [0, 1, -1, 9, 10, -10, 1234567890, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap_or_default(), v.to_string());
        }
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            u64::MAX.to_string()
        );
    }

    #[test]
    fn digits_are_zero_padded_as_format_pads_them() {
        let mut values = vec![0, u64::MAX];
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            values.extend([p - 1, p, p + 1, p * 7 + 3]);
            p = next;
        }
        for v in values {
            for width in 0..=20 {
                let (digits, at) = decimal_digits(v, width);
                assert_eq!(
                    std::str::from_utf8(&digits[at..]).unwrap_or_default(),
                    format!("{v:0width$}")
                );
            }
        }
        for v in 0..300 {
            assert_eq!(two_digits(v), *format!("{:02}", v % 100).as_bytes());
        }
    }

    #[test]
    fn values_read_back_as_the_parser_reads_them() {
        for raw in [
            "0",
            "-0",
            "42",
            "-42",
            "123456789012345678",
            "-12345678901234567",
            "-9223372036854775808",
            "99999999999999999999",
            "1.50",
            "1e5",
            "-0.0",
            "\"\"",
            "\"abc\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "true",
            "null",
            "[1,2]",
            "{\"a\":1}",
        ] {
            let parsed: Value = serde_json::from_str(raw).expect("valid JSON");
            let ours = parse_value(raw).expect("read back");
            assert_eq!(ours, parsed, "{raw}");
            assert_eq!(ours.to_string(), parsed.to_string(), "{raw}");
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        // Every ASCII character, alone and at each offset of a word (the scan goes eight
        // bytes at a time), beside non-ASCII text.
        let mut cases: Vec<String> = (0u8..=0x7F).map(|c| char::from(c).to_string()).collect();
        for c in ['"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '\u{7f}'] {
            for at in 0..20 {
                let mut s = "abcdéfghijklmnopqrstu".to_string();
                s.insert(s.char_indices().nth(at).map_or(s.len(), |(i, _)| i), c);
                cases.push(s);
            }
        }
        cases.push(String::new());
        cases.push("ünïcødé ✓ plain text of some length, no escapes at all".into());
        cases.push("\"\"\\\\\t\t\u{0}\u{0}".into());
        for s in cases {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &s);
            assert_eq!(
                String::from_utf8(ours).expect("utf-8"),
                serde_json::to_string(&s).expect("a string serializes"),
                "{s:?}"
            );
        }
        let mut row = Row::new();
        row.push_str_parts("t", &["2020-01-01", "T", "10:00:00+01", ":00", " \"BC\""]);
        assert_eq!(
            row.get("t"),
            Some(json!("2020-01-01T10:00:00+01:00 \"BC\""))
        );
    }

    #[test]
    fn a_row_is_the_map_it_was_built_from() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"id": 1, "b": "x\"y\n\u0001é", "n": null, "d": 1.50, "e": {"k": [1, "z"]},
                "quote\"d": true, "": -0.0}"#,
        )
        .unwrap_or_default();
        assert_eq!(m.len(), 7);
        let row = Row::from(m.clone());
        assert_eq!(row.to_map(), m);
        let mut text = Vec::new();
        row.write_json(&mut text);
        assert_eq!(
            String::from_utf8(text).unwrap_or_default(),
            serde_json::to_string(&m).unwrap_or_default()
        );
        assert_eq!(row.get("quote\"d"), Some(json!(true)));
        assert_eq!(row.get_raw("d"), Some("1.50"));
        assert!(row.contains_key(""));
        assert!(!row.contains_key("missing"));
        assert_eq!(
            serde_json::to_value(&row).unwrap_or_default(),
            Value::Object(m)
        );
    }

    #[test]
    fn pushes_write_what_the_value_would_serialize_as() {
        let mut row = Row::new();
        row.push_i64("a", i64::MIN);
        row.push_u64("b", u64::MAX);
        row.push_str("c", "tab\there");
        row.push_null("d");
        assert!(row.push_number("e", "12.340").is_ok());
        assert!(row.push_number("e", "[1]").is_err());
        assert!(row.push_raw("f", "NaN").is_err());
        assert!(row.push_raw("f", "1.").is_err());
        assert!(row.push_raw("f", "{\"x\":[1,2]}").is_ok());
        assert!(
            row.push_with("g", |out| {
                out.extend_from_slice(b"not json");
                Ok::<_, String>(())
            })
            .is_err()
        );
        assert!(
            row.push_with("g", |out| {
                out.extend_from_slice(b"\"2020-01-01\"");
                Ok::<_, String>(())
            })
            .is_ok()
        );
        let mut expect = map(json!({
            "a": i64::MIN, "b": u64::MAX, "c": "tab\there", "d": null, "e": null,
            "f": {"x": [1, 2]}, "g": "2020-01-01"
        }));
        expect.insert(
            "e".into(),
            serde_json::from_str("12.340").unwrap_or_default(),
        );
        assert_eq!(row.to_map(), expect);
        assert_eq!(row.get_raw("e"), Some("12.340"));
    }

    #[test]
    fn insert_replaces_in_place_and_fill_appends_what_is_missing() {
        let mut row = Row::from(map(json!({"a": 1, "b": "two", "c": 3})));
        row.insert("b", &json!({"long": "replacement"}));
        row.insert("z", &json!(null));
        let mut without = row.clone();
        without.retain(|name, value| name != "a" && value != "null");
        assert_eq!(
            without.to_map(),
            map(json!({"b": {"long": "replacement"}, "c": 3}))
        );
        assert_eq!(
            row.iter().map(|(n, _)| n.into_owned()).collect::<Vec<_>>(),
            ["a", "b", "c", "z"]
        );
        assert_eq!(row.get("c"), Some(json!(3)));
        let mut partial = Row::from(map(json!({"a": 9})));
        partial.fill_from(&row);
        assert_eq!(
            partial.to_map(),
            map(json!({"a": 9, "b": {"long": "replacement"}, "c": 3, "z": null}))
        );
    }

    #[test]
    fn equality_is_map_equality() {
        let a = Row::from(map(json!({"a": 1, "b": 2})));
        let b = Row::from(map(json!({"b": 2, "a": 1})));
        let c = Row::from(map(json!({"a": 1, "b": 3})));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, Row::from(map(json!({"a": 1}))));
    }

    #[test]
    fn json_numbers_are_recognised_exactly() {
        for ok in [
            "0",
            "-0",
            "12",
            "-1.5",
            "1e9",
            "1.25E-3",
            "123456789012345678901234567890",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "+1", "1e", "NaN", "Infinity", "1 ", "0x1",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
