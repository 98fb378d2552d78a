//! Values: MySQL/MariaDB values as DESIGN.md §5 renders them, from either path.
//!
//! The binary protocol (backfill, prepared statements) and the binlog (stream) hand back
//! the same column in different shapes: a TIMESTAMP is a date-time in the session's zone
//! in one and epoch seconds in the other, an ENUM is its label in one and its index in
//! the other, a SET its labels or a bitmask. Conversion is therefore driven by the
//! *declared* column type from the catalog ([`ColType`]), so both paths produce the same
//! JSON for the same stored value:
//!
//! | type | JSON |
//! |---|---|
//! | integers (unsigned BIGINT too), BIT, YEAR | number |
//! | DECIMAL(p,s) | number with exactly s fraction digits |
//! | FLOAT, DOUBLE | shortest round-trip number |
//! | DATE | `"YYYY-MM-DD"`; zero date `null` |
//! | DATETIME(n) | `"YYYY-MM-DDTHH:MM:SS[.f]"`, n fraction digits; zero `null` |
//! | TIMESTAMP(n) | the same in UTC with `Z`; zero `null` |
//! | TIME(n) | `"[-]HH:MM:SS[.f]"` (hours may exceed 24) |
//! | CHAR, VARCHAR, TEXT | string, decoded from the column's charset |
//! | BINARY, VARBINARY, BLOB | base64 |
//! | GEOMETRY | base64 of the stored value (4-byte SRID, then the WKB) |
//! | UUID, INET4, INET6 (MariaDB) | string as the server prints it (binary in the binlog) |
//! | ENUM, SET | label(s), SET as `"a,b"` |
//! | JSON (MariaDB: LONGTEXT with `json_valid`) | the parsed document |

pub use backfill_core::encode::base64;
use backfill_core::encode::{civil_from_days, json_number_as_parsed, number};
use backfill_core::json::{decimal_digits, two_digits};
use backfill_core::row::ColumnName;
use backfill_core::source::Row;
use mysql_async::Value as MyValue;

use crate::rows::{Cell, write_decimal};
use mysql_async::binlog::value::BinlogValue;
use serde_json::Value;

/// A column's declared type, as far as rendering is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColType {
    /// TINYINT … BIGINT.
    Int,
    /// DECIMAL(p, s).
    Decimal {
        /// s.
        scale: usize,
    },
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// BIT(n).
    Bit,
    /// YEAR.
    Year,
    /// DATE.
    Date,
    /// DATETIME(fsp).
    DateTime {
        /// Fraction digits.
        fsp: usize,
    },
    /// TIMESTAMP(fsp).
    Timestamp {
        /// Fraction digits.
        fsp: usize,
    },
    /// TIME(fsp).
    Time {
        /// Fraction digits.
        fsp: usize,
    },
    /// Character data.
    Text {
        /// The column's charset, which binlog values arrive in.
        charset: Charset,
    },
    /// Byte strings; `BINARY(n)` values are padded with zero bytes to `n`, which the
    /// binlog strips.
    Binary {
        /// n of BINARY(n).
        pad_to: Option<usize>,
    },
    /// MariaDB's UUID, INET4 and INET6: text in query results, their binary form (16, 4
    /// or 16 bytes) in the binlog, rendered as the server prints them.
    Address(AddressKind),
    /// ENUM('a', …).
    Enum(Vec<String>),
    /// SET('a', …).
    Set(Vec<String>),
    /// JSON, or MariaDB's LONGTEXT with a `json_valid` check.
    Json,
}

/// Which of MariaDB's fixed-size textual types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    /// UUID: `123e4567-e89b-12d3-a456-426614174000`.
    Uuid,
    /// INET4: dotted quad.
    Inet4,
    /// INET6: RFC 5952 text (as the server prints it).
    Inet6,
}

impl AddressKind {
    /// The server's text for the binary form, or `None` when the bytes do not fit. The
    /// binlog drops trailing zero bytes of fixed-size binary values, as for BINARY(n).
    pub fn render(self, b: &[u8]) -> Option<String> {
        let size = if self == Self::Inet4 { 4 } else { 16 };
        if b.len() > size {
            return None;
        }
        let mut padded = b.to_vec();
        padded.resize(size, 0);
        let b = padded.as_slice();
        match (self, b.len()) {
            (Self::Uuid, 16) => {
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                Some(format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                ))
            }
            (Self::Inet4, 4) => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
            (Self::Inet6, 16) => {
                let octets: [u8; 16] = b.try_into().ok()?;
                Some(std::net::Ipv6Addr::from(octets).to_string())
            }
            _ => None,
        }
    }
}

/// The charset of a text column, which its binlog values arrive in (query results arrive
/// in the connection's, utf8mb4, converted by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3, ascii: the bytes are the text.
    Utf8,
    /// utf32: four big-endian bytes a character (a form `encoding_rs` does not read).
    Utf32,
    /// A charset `encoding_rs` decodes as MySQL does. MySQL's `latin1` is windows-1252
    /// (`0x80` is the euro sign), not ISO 8859-1; `ucs2` and `utf16` are UTF-16 big-endian.
    Decoded(&'static encoding_rs::Encoding),
    /// A charset read here only as far as ASCII goes (dec8, hp8, swe7, armscii8, ...):
    /// other bytes are refused rather than guessed at.
    Unknown(&'static str),
}

impl Charset {
    /// The charset MySQL names `name` (information_schema's `CHARACTER_SET_NAME`).
    pub fn named(name: &str) -> Self {
        use encoding_rs as e;
        Charset::Decoded(match name {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => return Charset::Utf8,
            "utf32" => return Charset::Utf32,
            "latin1" => e::WINDOWS_1252,
            "latin2" => e::ISO_8859_2,
            "latin5" => e::WINDOWS_1254,
            "latin7" => e::ISO_8859_13,
            "cp1250" => e::WINDOWS_1250,
            "cp1251" => e::WINDOWS_1251,
            "cp1256" => e::WINDOWS_1256,
            "cp1257" => e::WINDOWS_1257,
            "cp866" => e::IBM866,
            "koi8r" => e::KOI8_R,
            "koi8u" => e::KOI8_U,
            "greek" => e::ISO_8859_7,
            "hebrew" => e::ISO_8859_8,
            "macroman" => e::MACINTOSH,
            "tis620" => e::WINDOWS_874,
            "gbk" | "gb2312" => e::GBK,
            "gb18030" => e::GB18030,
            "big5" => e::BIG5,
            "sjis" | "cp932" => e::SHIFT_JIS,
            "ujis" | "eucjpms" => e::EUC_JP,
            "euckr" => e::EUC_KR,
            "ucs2" | "utf16" => e::UTF_16BE,
            "utf16le" => e::UTF_16LE,
            other => {
                return Charset::Unknown(match other {
                    "dec8" => "dec8",
                    "hp8" => "hp8",
                    "swe7" => "swe7",
                    "keybcs2" => "keybcs2",
                    "armscii8" => "armscii8",
                    "geostd8" => "geostd8",
                    "cp850" => "cp850",
                    "cp852" => "cp852",
                    "macce" => "macce",
                    _ => "an unknown charset",
                });
            }
        })
    }

    /// A binlog value's bytes as text; `Err` for bytes that are not text in the charset.
    pub fn decode<'b>(&self, b: &'b [u8]) -> Result<std::borrow::Cow<'b, str>, String> {
        let bad = |what: &str| format!("text that is not {what}: {}", base64(b));
        match self {
            Charset::Utf8 => std::str::from_utf8(b)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|_| bad("UTF-8")),
            Charset::Utf32 => b
                .chunks(4)
                .map(|c| {
                    <[u8; 4]>::try_from(c)
                        .ok()
                        .and_then(|c| char::from_u32(u32::from_be_bytes(c)))
                })
                .collect::<Option<String>>()
                .map(std::borrow::Cow::Owned)
                .ok_or_else(|| bad("UTF-32")),
            Charset::Decoded(encoding) => {
                let (text, malformed) = encoding.decode_without_bom_handling(b);
                if malformed {
                    Err(bad(encoding.name()))
                } else {
                    Ok(text)
                }
            }
            Charset::Unknown(name) => match std::str::from_utf8(b) {
                Ok(text) if b.is_ascii() => Ok(std::borrow::Cow::Borrowed(text)),
                _ => Err(format!(
                    "text in {name} outside ASCII, which the connector does not decode: {}",
                    base64(b)
                )),
            },
        }
    }
}

impl ColType {
    /// From information_schema's `DATA_TYPE` and `COLUMN_TYPE`.
    pub fn from_catalog(
        data_type: &str,
        column_type: &str,
        charset: Option<&str>,
        json_checked: bool,
    ) -> Self {
        // The digits between the parentheses: MariaDB spells a pre-10.1 temporal column
        // `datetime(3) /* mariadb-5.3 */`.
        let fsp = || {
            column_type
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .and_then(|(n, _)| n.trim().parse().ok())
                .unwrap_or(0)
        };
        match data_type {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => ColType::Int,
            "decimal" | "numeric" => ColType::Decimal {
                scale: column_type
                    .split_once(',')
                    .and_then(|(_, r)| {
                        r.trim_end_matches([')', ' '])
                            .trim_end_matches(" unsigned")
                            .trim_end_matches(')')
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0),
            },
            "float" => ColType::Float,
            "double" | "real" => ColType::Double,
            "bit" => ColType::Bit,
            "year" => ColType::Year,
            "date" => ColType::Date,
            "datetime" => ColType::DateTime { fsp: fsp() },
            "timestamp" => ColType::Timestamp { fsp: fsp() },
            "time" => ColType::Time { fsp: fsp() },
            "json" => ColType::Json,
            "longtext" if json_checked => ColType::Json,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => ColType::Text {
                charset: Charset::named(charset.unwrap_or("utf8mb4")),
            },
            "enum" => ColType::Enum(labels(column_type)),
            "set" => ColType::Set(labels(column_type)),
            "uuid" => ColType::Address(AddressKind::Uuid),
            "inet4" => ColType::Address(AddressKind::Inet4),
            "inet6" => ColType::Address(AddressKind::Inet6),
            "binary" => ColType::Binary {
                pad_to: Some(fsp()),
            },
            _ => ColType::Binary { pad_to: None },
        }
    }
}

/// `enum('a','b''c')` → ["a", "b'c"].
fn labels(column_type: &str) -> Vec<String> {
    let inner = column_type
        .split_once('(')
        .map_or("", |(_, r)| r.strip_suffix(')').unwrap_or(r));
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            ('\'', true) => {
                quoted = false;
                out.push(std::mem::take(&mut cur));
            }
            (c, true) => cur.push(c),
            _ => {}
        }
    }
    out
}

fn text_of(v: &MyValue) -> Option<String> {
    match v {
        MyValue::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        MyValue::Int(i) => Some(i.to_string()),
        MyValue::UInt(u) => Some(u.to_string()),
        _ => None,
    }
}

/// Microseconds at a column's fractional-second precision.
fn fraction(us: u32, fsp: usize) -> String {
    backfill_core::encode::fraction(u64::from(us), 6, fsp)
}

/// (year, month, day, hour, minute, second, microsecond) as `YYYY-MM-DDTHH:MM:SS[.f]`.
/// Written digit by digit, without the formatting machinery: it runs for every temporal
/// value streamed.
fn datetime(parts: DateParts, fsp: usize) -> String {
    DateText::new(parts, fsp, "").as_str().to_owned()
}

/// A date-time's fields: year, month, day, hour, minute, second, microseconds.
type DateParts = (u16, u8, u8, u8, u8, u8, u32);

/// A date-time's text in a buffer of its own (the longest, a five-digit year with a
/// fraction and a zone, is 34 bytes): rendered into a row without a `String` per value.
struct DateText {
    buf: [u8; 40],
    len: usize,
}

impl DateText {
    /// `YYYY-MM-DDTHH:MM:SS[.f]` with `fsp` fraction digits, then `suffix`.
    fn new((y, mo, d, h, mi, s, us): DateParts, fsp: usize, suffix: &str) -> Self {
        let mut t = Self {
            buf: [0; 40],
            len: 0,
        };
        if y <= 9999 && [mo, d, h, mi, s].iter().all(|&v| v < 100) {
            // Every date the server stores: a fixed layout, two digits at a time.
            let [y0, y1] = two_digits(u32::from(y) / 100);
            let [y2, y3] = two_digits(u32::from(y));
            let [mo0, mo1] = two_digits(u32::from(mo));
            let [d0, d1] = two_digits(u32::from(d));
            let [h0, h1] = two_digits(u32::from(h));
            let [mi0, mi1] = two_digits(u32::from(mi));
            let [s0, s1] = two_digits(u32::from(s));
            t.buf[..19].copy_from_slice(&[
                y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':',
                s0, s1,
            ]);
            t.len = 19;
            if fsp > 0 {
                let us = us % 1_000_000;
                let [f0, f1] = two_digits(us / 10_000);
                let [f2, f3] = two_digits(us / 100);
                let [f4, f5] = two_digits(us);
                t.buf[19..26].copy_from_slice(&[b'.', f0, f1, f2, f3, f4, f5]);
                t.len = 20 + fsp.min(6);
            }
            for &b in suffix.as_bytes() {
                t.push_byte(b);
            }
            return t;
        }
        t.padded(u32::from(y), 4);
        for (sep, v) in [(b'-', mo), (b'-', d), (b'T', h), (b':', mi), (b':', s)] {
            t.push_byte(sep);
            t.padded(u32::from(v), 2);
        }
        if fsp > 0 {
            t.push_byte(b'.');
            t.padded(us % 1_000_000, 6);
            // Six digits written, the first `fsp` kept.
            t.len -= 6 - fsp.min(6);
        }
        t.push(suffix.as_bytes());
        t
    }

    fn push(&mut self, bytes: &[u8]) {
        // Fields are bounded (u16 year, u8 parts), so this never truncates.
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Byte by byte: these are a few bytes each, shorter than a `memcpy` call is worth.
    fn push_byte(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn padded(&mut self, v: u32, width: usize) {
        let (digits, at) = decimal_digits(u64::from(v), width);
        for &digit in &digits[at..] {
            self.push_byte(digit);
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    /// Appends the text to `row` as a string column, without making it a `str` first
    /// (it is ASCII, which [`Row::push_utf8`] checks a word at a time).
    fn push_to<N: ColumnName + ?Sized>(&self, row: &mut Row, name: &N) -> Result<(), String> {
        row.push_utf8(name, &self.buf[..self.len])
            .map_err(|e| format!("a date's text: {e}"))
    }
}

/// A TIMESTAMP's epoch seconds as UTC date-time fields.
fn epoch_parts(secs: i64, us: u32) -> DateParts {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let part = |x: i64| u8::try_from(x).unwrap_or(0);
    (
        u16::try_from(y).unwrap_or(0),
        part(i64::from(m)),
        part(i64::from(d)),
        part(rem / 3600),
        part(rem % 3600 / 60),
        part(rem % 60),
        us,
    )
}

/// Where a value comes from: the two paths encode some types differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A prepared statement's result (binary protocol), session time zone UTC.
    Query,
    /// A binlog rows event.
    Binlog,
}

/// Renders one value of a column of type `ty` into `row` as column `name`: what
/// [`to_json`] returns, written straight into the row's text for the common types,
/// without a `Value`.
pub fn render<N: ColumnName + ?Sized>(
    ty: &ColType,
    v: &MyValue,
    origin: Origin,
    row: &mut Row,
    name: &N,
) -> Result<(), String> {
    match (ty, v) {
        (_, MyValue::NULL) => row.push_null(name),
        (ColType::Int | ColType::Year, MyValue::Int(i)) => row.push_i64(name, *i),
        (ColType::Int | ColType::Year, MyValue::UInt(u)) => row.push_u64(name, *u),
        (_, MyValue::Bytes(b)) => return render_bytes(ty, b, origin, row, name),
        (ColType::DateTime { fsp }, MyValue::Date(y, mo, d, h, mi, s, us))
            if (*y, *mo, *d) != (0, 0, 0) =>
        {
            DateText::new((*y, *mo, *d, *h, *mi, *s, *us), *fsp, "").push_to(row, name)?;
        }
        (ColType::Timestamp { fsp }, MyValue::Date(y, mo, d, h, mi, s, us))
            if (*y, *mo, *d) != (0, 0, 0) =>
        {
            DateText::new((*y, *mo, *d, *h, *mi, *s, *us), *fsp, "Z").push_to(row, name)?;
        }
        _ => row.push(name, &to_json(ty, v, origin)?),
    }
    Ok(())
}

/// [`render`] for a value the protocol or the binlog carries as bytes (strings, JSON,
/// decimals' text, ...), borrowed: the binlog's strings are rendered straight from the
/// event (see [`Cell::Bytes`]).
pub fn render_bytes<N: ColumnName + ?Sized>(
    ty: &ColType,
    b: &[u8],
    origin: Origin,
    row: &mut Row,
    name: &N,
) -> Result<(), String> {
    match ty {
        ColType::Text { charset } if *charset == Charset::Utf8 || origin == Origin::Query => row
            .push_utf8(name, b)
            .map_err(|_| format!("text that is not UTF-8: {}", base64(b)))?,
        // The common decimal: its text already has the column's scale.
        ColType::Decimal { scale } if has_scale(b, *scale) => row.push_number(name, b)?,
        ColType::Json => {
            let text = std::str::from_utf8(b).map_err(|e| format!("bad JSON value: {e}"))?;
            row.push_json(name, text, json_number_as_parsed)
                .map_err(|e| format!("bad JSON value: {e}"))?;
        }
        _ => row.push(name, &to_json(ty, &MyValue::Bytes(b.to_vec()), origin)?),
    }
    Ok(())
}

/// A key column's value straight from the database's value, where that is cheap and
/// exactly what parsing its rendered text back gives (an integer column's integer);
/// `None` for every other case, which takes the rendered text.
pub fn key_value(ty: &ColType, v: &MyValue) -> Option<Value> {
    match (ty, v) {
        (ColType::Int, MyValue::Int(i)) => Some(Value::from(*i)),
        _ => None,
    }
}

/// Whether a decimal's text has exactly `scale` digits after its point.
fn has_scale(text: &[u8], scale: usize) -> bool {
    match text.iter().position(|&c| c == b'.') {
        Some(point) => text.len() - point - 1 == scale,
        None => scale == 0,
    }
}

/// [`render`] for a value of a binlog rows event.
pub fn render_binlog<N: ColumnName + ?Sized>(
    ty: &ColType,
    v: &BinlogValue<'_>,
    row: &mut Row,
    name: &N,
) -> Result<(), String> {
    match v {
        BinlogValue::Value(v) => render(ty, v, Origin::Binlog, row, name),
        // MySQL's binary JSON, printed as the server prints it, then as a backfilled
        // JSON value is.
        BinlogValue::Jsonb(j) => render(
            ty,
            &MyValue::Bytes(json_text(j)?.into_bytes()),
            Origin::Binlog,
            row,
            name,
        ),
        BinlogValue::JsonDiff(_) => Err(PARTIAL_JSON.into()),
    }
}

/// [`render`] for a value of a row image as the stream decodes it.
pub fn render_cell<N: ColumnName + ?Sized>(
    ty: &ColType,
    cell: &Cell<'_>,
    row: &mut Row,
    name: &N,
) -> Result<(), String> {
    match *cell {
        Cell::Binlog(ref v) => render_binlog(ty, v, row, name),
        Cell::Bytes(ref b) => render_bytes(ty, b, Origin::Binlog, row, name),
        Cell::Timestamp { secs, micros } => match ty {
            ColType::Timestamp { fsp } => {
                if secs == 0 {
                    row.push_null(name);
                } else {
                    let parts = epoch_parts(i64::from(secs), micros);
                    DateText::new(parts, *fsp, "Z").push_to(row, name)?;
                }
                Ok(())
            }
            // Another declared type (the table changed under the event): the text
            // mysql_common would have given, through the general path.
            _ => {
                let text = if micros == 0 {
                    secs.to_string()
                } else {
                    format!("{secs}.{micros:06}")
                };
                render(
                    ty,
                    &MyValue::Bytes(text.into_bytes()),
                    Origin::Binlog,
                    row,
                    name,
                )
            }
        },
        Cell::Decimal {
            ref bin,
            precision,
            scale,
        } => {
            let (precision, scale) = (usize::from(precision), usize::from(scale));
            if *ty == (ColType::Decimal { scale }) {
                row.push_with(name, |out| write_decimal(bin, precision, scale, out))
                    .map_err(|e| e.to_string())
            } else {
                // Another declared scale or type: the text, through the general path.
                let mut text = Vec::new();
                write_decimal(bin, precision, scale, &mut text)?;
                render(ty, &MyValue::Bytes(text), Origin::Binlog, row, name)
            }
        }
    }
}

const PARTIAL_JSON: &str =
    "partial JSON updates are not supported: set binlog_row_value_options=''";

/// MySQL's binary JSON (a JSON column in the binlog) as the text the server prints for it,
/// which is what a backfill reads: object members in their stored order, numbers as
/// [`json_double`] prints a double, and the values SQL put in as their own types (a JSON
/// document built with `JSON_OBJECT('price', price)` holds a DECIMAL, not a number) as
/// MySQL's `Json_wrapper` prints them: DECIMAL as a number with its scale (`1.50`), DATE
/// `"YYYY-MM-DD"`, TIME `"[-]HH:MM:SS.ffffff"`, DATETIME and TIMESTAMP
/// `"YYYY-MM-DD HH:MM:SS.ffffff"`, any other type `"base64:type<N>:<bytes>"`.
///
/// mysql_common's conversion to a `serde_json::Value` refuses those typed values, which
/// stopped the stream at the first such row; its `JsonDom` sorts members and writes a
/// DECIMAL as a string.
pub fn json_text(j: &mysql_common::binlog::jsonb::Value<'_>) -> Result<String, String> {
    let mut out = String::new();
    write_json(j, &mut out).map_err(|e| format!("bad JSON value: {e}"))?;
    Ok(out)
}

fn write_json(j: &mysql_common::binlog::jsonb::Value<'_>, out: &mut String) -> Result<(), String> {
    use mysql_common::binlog::jsonb::Value as J;
    use std::fmt::Write as _;
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map_err(|e| e.to_string())
            .map(str::to_owned)
    };
    let quoted = |out: &mut String, s: &str| {
        out.push_str(&serde_json::to_string(s).map_err(|e| e.to_string())?);
        Ok::<_, String>(())
    };
    let e = |e: std::io::Error| e.to_string();
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::I16(v) => out.push_str(&v.to_string()),
        J::U16(v) => out.push_str(&v.to_string()),
        J::I32(v) => out.push_str(&v.to_string()),
        J::U32(v) => out.push_str(&v.to_string()),
        J::I64(v) => out.push_str(&v.to_string()),
        J::U64(v) => out.push_str(&v.to_string()),
        J::F64(v) => json_double(*v, out)?,
        J::String(s) => quoted(out, &utf8(s.str_raw())?)?,
        J::SmallArray(a) => write_elements("[]", a.iter().map(|v| v.map(|v| (None, v))), out)?,
        J::LargeArray(a) => write_elements("[]", a.iter().map(|v| v.map(|v| (None, v))), out)?,
        J::SmallObject(o) => {
            write_elements("{}", o.iter().map(|m| m.map(|(k, v)| (Some(k), v))), out)?;
        }
        J::LargeObject(o) => {
            write_elements("{}", o.iter().map(|m| m.map(|(k, v)| (Some(k), v))), out)?;
        }
        J::Opaque(o) => {
            use mysql_async::consts::ColumnType as T;
            use mysql_common::binlog::time::MysqlTime;
            let packed = || {
                o.data_raw()
                    .first_chunk::<8>()
                    .map(|b| i64::from_le_bytes(*b))
                    .ok_or_else(|| {
                        format!("a {:?} of {} bytes", o.value_type(), o.data_raw().len())
                    })
            };
            let text = match o.value_type() {
                T::MYSQL_TYPE_NEWDECIMAL => {
                    let d =
                        mysql_common::binlog::decimal::Decimal::read_packed(o.data_raw(), false)
                            .map_err(e)?;
                    let _ = write!(out, "{d}");
                    return Ok(());
                }
                T::MYSQL_TYPE_DATE => format!("{}", MysqlTime::from_int64_date_packed(packed()?)),
                T::MYSQL_TYPE_TIME => {
                    format!("{:.6}", MysqlTime::from_int64_time_packed(packed()?))
                }
                T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_TIMESTAMP => {
                    format!("{:.6}", MysqlTime::from_int64_datetime_packed(packed()?))
                }
                other => format!("base64:type{}:{}", other as u8, base64(o.data_raw())),
            };
            quoted(out, &text)?;
        }
    }
    Ok(())
}

/// A JSON array's elements or an object's members, in their stored order, between the
/// two characters of `brackets`.
fn write_elements<'k, 'v>(
    brackets: &str,
    items: impl Iterator<
        Item = std::io::Result<(
            Option<mysql_common::binlog::jsonb::ObjectKey<'k>>,
            mysql_common::binlog::jsonb::Value<'v>,
        )>,
    >,
    out: &mut String,
) -> Result<(), String> {
    out.push_str(&brackets[..1]);
    for (i, item) in items.enumerate() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        if i > 0 {
            out.push(',');
        }
        if let Some(key) = key {
            let key = std::str::from_utf8(key.value_raw()).map_err(|e| e.to_string())?;
            out.push_str(&serde_json::to_string(key).map_err(|e| e.to_string())?);
            out.push(':');
        }
        write_json(&value, out)?;
    }
    out.push_str(&brackets[1..]);
    Ok(())
}

/// A double in a JSON document as MySQL prints it (`my_gcvt`): the shortest digits that
/// read back as the same double, in plain notation when the decimal point falls within
/// 15 places of the first digit (a whole number with `.0`), else with an exponent. The
/// values suite compares these with the server's own printing across the range.
fn json_double(v: f64, out: &mut String) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!("a JSON double {v}"));
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').ok_or("a double without an exponent")?;
    let exp: i32 = exp.parse().map_err(|_| "a double's exponent")?;
    let digits = mantissa.bytes().filter(u8::is_ascii_digit).count();
    let point = exp + 1;
    let plain = (-14..=15).contains(&point) || usize::try_from(point).is_ok_and(|p| digits > p);
    if plain {
        let text = format!("{v}");
        out.push_str(&text);
        // A whole number keeps a fraction, so that it reads back as a double.
        if !text.contains('.') {
            out.push_str(".0");
        }
    } else {
        out.push_str(&sci);
    }
    Ok(())
}

/// Renders one value of a column of type `ty`: the general path, for the types the row
/// renderer does not write directly (see [`render`]), and for keys.
pub fn to_json(ty: &ColType, v: &MyValue, origin: Origin) -> Result<Value, String> {
    if matches!(v, MyValue::NULL) {
        return Ok(Value::Null);
    }
    match ty {
        ColType::Int
        | ColType::Year
        | ColType::Decimal { .. }
        | ColType::Float
        | ColType::Double
        | ColType::Bit => numeric(ty, v),
        ColType::Date
        | ColType::DateTime { .. }
        | ColType::Timestamp { .. }
        | ColType::Time { .. } => temporal(ty, v),
        _ => textual(ty, v, origin),
    }
}

/// Integers, decimals (at the column's scale), floats at their stored precision, BIT.
fn numeric(ty: &ColType, v: &MyValue) -> Result<Value, String> {
    let bad = || format!("unexpected {v:?} for a {ty:?} column");
    Ok(match ty {
        ColType::Int | ColType::Year => match v {
            MyValue::Int(i) => Value::from(*i),
            MyValue::UInt(u) => Value::from(*u),
            _ => number(&text_of(v).ok_or_else(bad)?)?,
        },
        ColType::Decimal { scale } => {
            let t = text_of(v).ok_or_else(bad)?;
            // The binlog's and the server's text already has the column's scale.
            if has_scale(t.as_bytes(), *scale) {
                return number(&t);
            }
            let (int, frac) = t.split_once('.').unwrap_or((&t, ""));
            let frac = format!("{frac:0<scale$}");
            number(&if *scale == 0 {
                int.to_string()
            } else {
                format!("{int}.{}", frac.get(..*scale).ok_or_else(bad)?)
            })?
        }
        ColType::Float => match v {
            MyValue::Float(f) => number(&format!("{f}"))?,
            // A FLOAT column read as DOUBLE: back to the stored single precision.
            #[allow(clippy::cast_possible_truncation)]
            MyValue::Double(d) => number(&format!("{}", *d as f32))?,
            _ => number(
                &text_of(v)
                    .ok_or_else(bad)?
                    .parse::<f32>()
                    .map(|f| f.to_string())
                    .map_err(|_| bad())?,
            )?,
        },
        ColType::Double => match v {
            MyValue::Double(d) => number(&format!("{d}"))?,
            MyValue::Float(f) => number(&format!("{}", f64::from(*f)))?,
            _ => number(
                &text_of(v)
                    .ok_or_else(bad)?
                    .parse::<f64>()
                    .map(|f| f.to_string())
                    .map_err(|_| bad())?,
            )?,
        },
        ColType::Bit => match v {
            MyValue::Bytes(b) => {
                Value::from(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
            }
            MyValue::Int(i) => Value::from(*i),
            MyValue::UInt(u) => Value::from(*u),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

/// Dates and times; the zero date is null, TIMESTAMP is UTC (`Z`).
fn temporal(ty: &ColType, v: &MyValue) -> Result<Value, String> {
    let bad = || format!("unexpected {v:?} for a {ty:?} column");
    Ok(match ty {
        ColType::Date => match v {
            MyValue::Date(0, 0, 0, ..) => Value::Null,
            MyValue::Date(y, m, d, ..) => Value::String(format!("{y:04}-{m:02}-{d:02}")),
            _ => return Err(bad()),
        },
        ColType::DateTime { fsp } => match v {
            MyValue::Date(0, 0, 0, ..) => Value::Null,
            MyValue::Date(y, mo, d, h, mi, s, us) => {
                Value::String(datetime((*y, *mo, *d, *h, *mi, *s, *us), *fsp))
            }
            _ => return Err(bad()),
        },
        ColType::Timestamp { fsp } => match v {
            MyValue::Date(0, 0, 0, ..) => Value::Null,
            MyValue::Date(y, mo, d, h, mi, s, us) => {
                let mut text = datetime((*y, *mo, *d, *h, *mi, *s, *us), *fsp);
                text.push('Z');
                Value::String(text)
            }
            // The binlog's form: seconds since the epoch, with microseconds.
            MyValue::Bytes(_) | MyValue::Int(_) | MyValue::UInt(_) => {
                let t = text_of(v).ok_or_else(bad)?;
                let (secs, us) = t.split_once('.').unwrap_or((&t, "0"));
                let secs: i64 = secs.parse().map_err(|_| bad())?;
                if secs == 0 {
                    return Ok(Value::Null);
                }
                // Microseconds: the fraction's digits, padded on the right to six.
                if !us.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let us = us
                    .bytes()
                    .chain(std::iter::repeat(b'0'))
                    .take(6)
                    .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
                Value::String(
                    DateText::new(epoch_parts(secs, us), *fsp, "Z")
                        .as_str()
                        .to_owned(),
                )
            }
            _ => return Err(bad()),
        },
        ColType::Time { fsp } => match v {
            MyValue::Time(neg, days, h, m, s, us) => {
                let hours = u64::from(*days) * 24 + u64::from(*h);
                Value::String(format!(
                    "{}{hours:02}:{m:02}:{s:02}{}",
                    if *neg { "-" } else { "" },
                    fraction(*us, *fsp)
                ))
            }
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

/// Text in its charset, binary as base64, addresses, ENUM and SET labels, JSON.
fn textual(ty: &ColType, v: &MyValue, origin: Origin) -> Result<Value, String> {
    let bad = || format!("unexpected {v:?} for a {ty:?} column");
    Ok(match ty {
        ColType::Address(kind) => match v {
            MyValue::Bytes(b) => match kind.render(b) {
                Some(text) if origin == Origin::Binlog => Value::String(text),
                _ => match std::str::from_utf8(b) {
                    Ok(s) => Value::String(s.to_string()),
                    Err(_) => return Err(bad()),
                },
            },
            _ => return Err(bad()),
        },
        ColType::Text { charset } => match v {
            // Binlog values are in the column's charset; query results in the connection's
            // (utf8mb4).
            MyValue::Bytes(b) if origin == Origin::Binlog => {
                Value::String(charset.decode(b)?.into_owned())
            }
            MyValue::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::String(s.to_string()),
                Err(_) => return Err(format!("text that is not UTF-8: {}", base64(b))),
            },
            _ => Value::String(text_of(v).ok_or_else(bad)?),
        },
        ColType::Binary { pad_to } => match v {
            MyValue::Bytes(b) => match pad_to {
                Some(n) if b.len() < *n => {
                    let mut padded = b.clone();
                    padded.resize(*n, 0);
                    Value::String(base64(&padded))
                }
                _ => Value::String(base64(b)),
            },
            _ => return Err(bad()),
        },
        ColType::Enum(labels) => match v {
            MyValue::Int(i) => Value::String(
                usize::try_from(*i)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| labels.get(i))
                    .cloned()
                    .unwrap_or_default(),
            ),
            MyValue::UInt(u) => Value::String(
                usize::try_from(*u)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| labels.get(i))
                    .cloned()
                    .unwrap_or_default(),
            ),
            _ => Value::String(text_of(v).ok_or_else(bad)?),
        },
        ColType::Set(labels) => match (v, origin) {
            // The binlog sends a little-endian bitmask; queries send the labels.
            (MyValue::Bytes(b), Origin::Binlog) => {
                let mask = b
                    .iter()
                    .rev()
                    .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
                let chosen: Vec<&str> = labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> i & 1 == 1)
                    .map(|(_, l)| l.as_str())
                    .collect();
                Value::String(chosen.join(","))
            }
            _ => Value::String(text_of(v).ok_or_else(bad)?),
        },
        ColType::Json => match v {
            MyValue::Bytes(b) => {
                serde_json::from_slice(b).map_err(|e| format!("bad JSON value: {e}"))?
            }
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_zero_padded_and_cut_to_their_precision() {
        assert_eq!(
            datetime((2024, 2, 9, 3, 4, 5, 60), 6),
            "2024-02-09T03:04:05.000060"
        );
        assert_eq!(
            datetime((1, 12, 31, 23, 59, 59, 999_999), 3),
            "0001-12-31T23:59:59.999"
        );
        assert_eq!(
            datetime((12345, 1, 1, 0, 0, 0, 0), 0),
            "12345-01-01T00:00:00"
        );
        assert_eq!(datetime((2024, 2, 9, 3, 4, 5, 0), 0), "2024-02-09T03:04:05");
    }

    /// The fixed-layout path writes what `format!` writes, for every precision, across
    /// the digits of every field (and a 1,000,000 fraction, cut as the server sends it).
    #[test]
    fn date_text_matches_format_for_every_field_and_precision() {
        let years = [0u16, 1, 9, 10, 99, 100, 999, 1000, 1970, 2038, 9999];
        let micros = [
            0u32, 1, 9, 10, 99, 100, 12_345, 99_999, 100_000, 999_999, 1_000_000,
        ];
        for (i, &y) in years.iter().enumerate() {
            for (j, &us) in micros.iter().enumerate() {
                let v = u8::try_from((i * 7 + j * 13) % 60).unwrap();
                let (mo, d, h) = (v % 12 + 1, v % 31 + 1, v % 24);
                for fsp in 0..=6 {
                    for suffix in ["", "Z"] {
                        let want = format!(
                            "{y:04}-{mo:02}-{d:02}T{h:02}:{v:02}:{v:02}{}{suffix}",
                            fraction(us % 1_000_000, fsp)
                        );
                        let got = DateText::new((y, mo, d, h, v, v, us), fsp, suffix);
                        assert_eq!(got.as_str(), want);
                    }
                }
            }
        }
    }

    #[test]
    fn rendering_into_a_row_writes_what_to_json_returns() {
        let cases = [
            (ColType::Int, MyValue::Int(i64::MIN)),
            (ColType::Int, MyValue::UInt(u64::MAX)),
            (ColType::Int, MyValue::Bytes(b"-12".to_vec())),
            (
                ColType::Text {
                    charset: Charset::Utf8,
                },
                MyValue::Bytes("q\"é\n".as_bytes().to_vec()),
            ),
            (
                ColType::Text {
                    charset: Charset::named("latin1"),
                },
                MyValue::Bytes(vec![0xe9]),
            ),
            (
                ColType::Decimal { scale: 4 },
                MyValue::Bytes(b"-12.3400".to_vec()),
            ),
            (
                ColType::Decimal { scale: 4 },
                MyValue::Bytes(b"12.34".to_vec()),
            ),
            (ColType::Decimal { scale: 0 }, MyValue::Bytes(b"7".to_vec())),
            (
                ColType::Json,
                MyValue::Bytes(br#"{"a": [1, 2.50]}"#.to_vec()),
            ),
            (
                ColType::Json,
                MyValue::Bytes(br#"{"a": 1E2, "b": "\u00e9", "a": [2]}"#.to_vec()),
            ),
            (ColType::Json, MyValue::Bytes(br#" "text" "#.to_vec())),
            (ColType::Json, MyValue::Bytes(br#"{"a": tru"#.to_vec())),
            (ColType::Int, MyValue::NULL),
        ];
        for origin in [Origin::Query, Origin::Binlog] {
            for (ty, v) in &cases {
                let mut row = Row::new();
                let rendered = render(ty, v, origin, &mut row, "v");
                match to_json(ty, v, origin) {
                    Ok(expected) => {
                        assert!(rendered.is_ok(), "{ty:?} {v:?}");
                        assert_eq!(row.get_raw("v"), Some(expected.to_string().as_str()));
                    }
                    // Latin-1 bytes in a query result (which is always utf8mb4).
                    Err(_) => assert!(rendered.is_err() && row.is_empty(), "{ty:?} {v:?}"),
                }
            }
        }
        let mut row = Row::new();
        let bad = MyValue::Bytes(vec![0xff]);
        assert!(
            render(
                &ColType::Text {
                    charset: Charset::Utf8
                },
                &bad,
                Origin::Query,
                &mut row,
                "v"
            )
            .is_err()
        );
        assert!(
            render(
                &ColType::Decimal { scale: 0 },
                &MyValue::Bytes(b"1x".to_vec()),
                Origin::Query,
                &mut row,
                "v"
            )
            .is_err()
        );
        assert!(row.is_empty());
    }

    #[test]
    fn both_paths_render_the_same() {
        let ts = ColType::Timestamp { fsp: 3 };
        let a = to_json(
            &ts,
            &MyValue::Date(2020, 1, 2, 3, 4, 5, 678_000),
            Origin::Query,
        )
        .unwrap();
        let b = to_json(
            &ts,
            &MyValue::Bytes(b"1577934245.678000".to_vec()),
            Origin::Binlog,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Value::String("2020-01-02T03:04:05.678Z".into()));
        let e = ColType::Enum(vec!["a".into(), "b'c".into()]);
        assert_eq!(
            to_json(&e, &MyValue::Int(2), Origin::Binlog).unwrap(),
            to_json(&e, &MyValue::Bytes(b"b'c".to_vec()), Origin::Query).unwrap()
        );
        let s = ColType::Set(vec!["x".into(), "y".into(), "z".into()]);
        assert_eq!(
            to_json(&s, &MyValue::Bytes(vec![0b101]), Origin::Binlog).unwrap(),
            Value::String("x,z".into())
        );
        assert_eq!(
            to_json(&s, &MyValue::Bytes(b"x,z".to_vec()), Origin::Query).unwrap(),
            Value::String("x,z".into())
        );
        let d = ColType::Decimal { scale: 2 };
        assert_eq!(
            to_json(&d, &MyValue::Bytes(b"1.5".to_vec()), Origin::Binlog)
                .unwrap()
                .to_string(),
            "1.50"
        );
        assert_eq!(
            to_json(
                &ColType::Date,
                &MyValue::Date(0, 0, 0, 0, 0, 0, 0),
                Origin::Query
            )
            .unwrap(),
            Value::Null
        );
        assert_eq!(
            to_json(
                &ColType::Time { fsp: 1 },
                &MyValue::Time(true, 1, 2, 3, 4, 500_000),
                Origin::Binlog
            )
            .unwrap(),
            Value::String("-26:03:04.5".into())
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(labels("enum('a','b''c')"), ["a", "b'c"]);
        assert_eq!(
            ColType::from_catalog("decimal", "decimal(10,2) unsigned", None, false),
            ColType::Decimal { scale: 2 }
        );
    }
}
