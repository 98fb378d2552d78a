//! Rows of a binlog rows event, decoded in place.
//!
//! This decoder reads the layout below with mysql_common's value parser, looks each
//! column up once per event (a [`ColumnPlan`]) and leaves values borrowing the event's
//! bytes. mysql_common's own row iterator instead builds a `BinlogRow` per row image: a
//! `Column` per column with the names copied into it, the column's metadata found by a
//! walk from the first column, and every value copied out of the event, an allocation
//! or more per value on the streaming path.
//!
//! The layout of `rows_data`, row after row (MySQL's `log_event.h`, WL#2955):
//!
//! ```text
//!   row   = [before image] [after image]   (delete: before only; insert: after only)
//!   image = null bitmap                    (one bit per column present in the image's
//!                                           column bitmap, rounded up to bytes)
//!           value value ...                (present, non-null columns, in column order)
//! ```
//!
//! Every image takes at least one byte when the table has a column, so a malformed event
//! cannot make the iterator spin: an image with no columns is refused, and the rows are
//! bounded by the bytes left. A `PARTIAL_UPDATE_ROWS_EVENT` (MySQL's partial JSON, with
//! `binlog_row_value_options=PARTIAL_JSON`) carries diffs, not rows, so it is refused with
//! the setting to change; `check` names it too.

use std::borrow::Cow;

use backfill_core::json::decimal_digits;

use mysql_async::Value as MyValue;
use mysql_async::binlog::events::{OptionalMetaExtractor, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_common::binlog::decimal::{DIG_TO_BYTES, decimal_bin_size};
use mysql_common::io::ParseBuf;

/// One column of a table map, looked up once per event.
#[derive(Debug, Clone)]
pub struct ColumnPlan<'a> {
    /// The column's type in the binlog.
    pub ty: ColumnType,
    /// Its table-map metadata (lengths, precision, ...).
    pub meta: &'a [u8],
    /// Whether a numeric column is unsigned (from `binlog_row_metadata=FULL`).
    pub unsigned: bool,
    /// The column's name, where the table map carries names (`binlog_row_metadata=FULL`).
    pub name: Option<String>,
    /// For MariaDB's pre-10.1 TIME(n), DATETIME(n) and TIMESTAMP(n) with n > 0 (tables
    /// made with `mysql56_temporal_format=OFF`): n, from the catalog. Their binlog type is
    /// the old one and carries no metadata, so only the catalog says how long a value is
    /// and how to read it ([`mariadb_hires`]).
    pub hires: Option<u8>,
}

/// The columns of a table map event, in table order.
pub fn plan<'a>(tme: &'a TableMapEvent<'a>) -> Result<Vec<ColumnPlan<'a>>, String> {
    let count = usize::try_from(tme.columns_count()).map_err(|e| e.to_string())?;
    let optional = OptionalMetaExtractor::new(tme.iter_optional_meta())
        .map_err(|e| format!("bad table map metadata: {e}"))?;
    let mut signedness = optional.iter_signedness();
    let mut names = optional.iter_column_name();
    let mut columns = Vec::with_capacity(count);
    for i in 0..count {
        let ty = tme
            .get_column_type(i)
            .map_err(|e| format!("column {i}: {e}"))?
            .ok_or_else(|| format!("column {i} has no type"))?;
        // A walk from the first column each time: once per event, not per row.
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        let unsigned = ty.is_numeric_type() && signedness.next().unwrap_or(false);
        let name = match names.next() {
            Some(Ok(n)) => Some(String::from_utf8_lossy(n.name_raw()).into_owned()),
            Some(Err(e)) => return Err(format!("column {i}: bad name: {e}")),
            None => None,
        };
        columns.push(ColumnPlan {
            ty,
            meta,
            unsigned,
            name,
            hires: None,
        });
    }
    Ok(columns)
}

/// One value of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// As mysql_common's value parser reads it.
    Binlog(BinlogValue<'a>),
    /// A TIMESTAMP(n) (`MYSQL_TYPE_TIMESTAMP2`), read here as numbers: mysql_common
    /// prints it as text (`secs.micros`) that would have to be parsed back. Seconds are
    /// unsigned, as stored (MariaDB 11.5 stores timestamps past 2038); mysql_common reads
    /// them as `i32`.
    Timestamp {
        /// Seconds since the epoch; 0 is the zero timestamp.
        secs: u32,
        /// Microseconds.
        micros: u32,
    },
    /// A string, BLOB or (MariaDB's) JSON value: its bytes, borrowed from the event where
    /// mysql_common's parser copies them into a `Vec` of their own.
    Bytes(Cow<'a, [u8]>),
    /// A DECIMAL (`MYSQL_TYPE_NEWDECIMAL`) in its binary form, printed by
    /// [`write_decimal`] straight into the row (mysql_common formats it per digit group).
    Decimal {
        /// The stored bytes.
        bin: Cow<'a, [u8]>,
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
}

impl Cell<'_> {
    /// The value, owning its bytes.
    pub fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Binlog(v) => Cell::Binlog(v.into_owned()),
            Cell::Timestamp { secs, micros } => Cell::Timestamp { secs, micros },
            Cell::Bytes(b) => Cell::Bytes(Cow::Owned(b.into_owned())),
            Cell::Decimal {
                bin,
                precision,
                scale,
            } => Cell::Decimal {
                bin: Cow::Owned(bin.into_owned()),
                precision,
                scale,
            },
        }
    }
}

/// One row image: the values of the table's columns by position (`None`: not in the
/// image's column bitmap).
pub type Image<'a> = Vec<Option<Cell<'a>>>;

/// A row's before and after images (an insert has no before, a delete no after).
pub type RowImages<'a> = (Option<Image<'a>>, Option<Image<'a>>);

/// The rows of `rows`, decoded with the columns of its table map (`plan`), collected.
pub fn decode<'a>(
    rows: &'a RowsEventData<'a>,
    plan: &[ColumnPlan<'a>],
) -> Result<Vec<RowImages<'a>>, String> {
    let mut decoded = Vec::new();
    decode_each(
        rows,
        plan,
        |e| e,
        |before, after| {
            decoded.push((before.map(std::mem::take), after.map(std::mem::take)));
            Ok(())
        },
    )?;
    Ok(decoded)
}

/// Decodes the rows of `rows` one at a time and hands each row's before and after
/// images to `row` (an insert has no before, a delete no after), with the columns of its
/// table map (`plan`). The images are two buffers reused from row to row, so a row costs
/// no allocation here: `row` may take cells out of them (leaving `None`), not keep them.
/// A malformed event is reported through `malformed`, after the rows before it.
pub fn decode_each<'a, E>(
    rows: &'a RowsEventData<'a>,
    plan: &[ColumnPlan<'a>],
    malformed: impl Fn(String) -> E,
    mut row: impl FnMut(Option<&mut Image<'a>>, Option<&mut Image<'a>>) -> Result<(), E>,
) -> Result<(), E> {
    if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
        return Err(malformed(
            "partial JSON updates are not supported: set binlog_row_value_options='' on the server"
                .into(),
        ));
    }
    let count = usize::try_from(rows.num_columns()).map_err(|e| malformed(e.to_string()))?;
    if count > plan.len() {
        return Err(malformed(format!(
            "the rows event has {count} columns, its table map {}",
            plan.len()
        )));
    }
    // The positions of the columns set in each image's column bitmap.
    let before = rows.columns_before_image().map(|bits| {
        (0..count)
            .filter(|&i| bits.get(i).is_some_and(|b| *b))
            .collect::<Vec<_>>()
    });
    let after = rows.columns_after_image().map(|bits| {
        (0..count)
            .filter(|&i| bits.get(i).is_some_and(|b| *b))
            .collect::<Vec<_>>()
    });
    if before.is_none() && after.is_none() {
        return Err(malformed(
            "a rows event with neither a before nor an after image".into(),
        ));
    }
    let mut buf = ParseBuf(rows.rows_data());
    let (mut b_image, mut a_image) = (Image::new(), Image::new());
    while !buf.is_empty() {
        let b = match &before {
            Some(cols) => {
                image(&mut buf, cols, plan, &mut b_image).map_err(&malformed)?;
                Some(&mut b_image)
            }
            None => None,
        };
        let a = match &after {
            Some(cols) => {
                image(&mut buf, cols, plan, &mut a_image).map_err(&malformed)?;
                Some(&mut a_image)
            }
            None => None,
        };
        row(b, a)?;
    }
    Ok(())
}

/// One row image at the front of `buf`, decoded into `values` (its earlier content
/// cleared).
fn image<'a>(
    buf: &mut ParseBuf<'a>,
    columns: &[usize],
    plan: &[ColumnPlan<'a>],
    values: &mut Image<'a>,
) -> Result<(), String> {
    if columns.is_empty() {
        return Err("a row image with no columns".into());
    }
    let nulls = buf
        .checked_eat(columns.len().div_ceil(8))
        .ok_or("a row image shorter than its null bitmap")?;
    values.clear();
    values.resize(plan.len(), None);
    for (n, &i) in columns.iter().enumerate() {
        let null = nulls
            .get(n / 8)
            .is_none_or(|byte| byte & (1 << (n % 8)) != 0);
        let slot = &mut values[i];
        // Each branch writes its slot in place rather than building a cell to move in.
        if null {
            *slot = Some(Cell::Binlog(BinlogValue::Value(mysql_async::Value::NULL)));
            continue;
        }
        let c = &plan[i];
        let at = |e: String| format!("column {}: {e}", i + 1);
        if let Some(n) = c.hires {
            *slot = Some(mariadb_hires(buf, c.ty, n).map_err(at)?);
        } else if c.ty == ColumnType::MYSQL_TYPE_TIMESTAMP2 {
            *slot = Some(timestamp2(buf, c.meta).map_err(at)?);
        } else if c.ty == ColumnType::MYSQL_TYPE_TIME {
            let bytes = buf
                .checked_eat(3)
                .ok_or_else(|| at("a TIME shorter than 3 bytes".into()))?;
            *slot = Some(Cell::Binlog(BinlogValue::Value(
                old_time(bytes).map_err(at)?,
            )));
        } else if c.ty == ColumnType::MYSQL_TYPE_YEAR {
            let byte = buf
                .checked_eat(1)
                .ok_or_else(|| at("a YEAR without its byte".into()))?;
            *slot = Some(Cell::Binlog(BinlogValue::Value(year(byte[0]))));
        } else if c.ty == ColumnType::MYSQL_TYPE_TIME2 {
            *slot = Some(Cell::Binlog(BinlogValue::Value(
                time2(buf, c.meta).map_err(at)?,
            )));
        } else if c.ty == ColumnType::MYSQL_TYPE_NEWDECIMAL {
            *slot = Some(decimal(buf, c.meta).map_err(at)?);
        } else if let Some(v) = integer(buf, c).map_err(at)? {
            *slot = Some(Cell::Binlog(BinlogValue::Value(v)));
        } else if let Some(bytes) = string(buf, c).map_err(at)? {
            *slot = Some(Cell::Bytes(Cow::Borrowed(bytes)));
        } else {
            *slot = Some(Cell::Binlog(
                buf.parse::<BinlogValue<'a>>((c.ty, c.meta, c.unsigned, false))
                    .map_err(|e| at(e.to_string()))?,
            ));
        }
    }
    Ok(())
}

/// An integer column's value, as mysql_common reads it (`Int`, except an unsigned
/// BIGINT past `i64::MAX`), but with a signed MEDIUMINT's sign, which mysql_common
/// drops; `None` for every other type.
fn integer(buf: &mut ParseBuf<'_>, c: &ColumnPlan<'_>) -> Result<Option<MyValue>, String> {
    use ColumnType::{
        MYSQL_TYPE_INT24, MYSQL_TYPE_LONG, MYSQL_TYPE_LONGLONG, MYSQL_TYPE_SHORT, MYSQL_TYPE_TINY,
    };
    let width = match c.ty {
        MYSQL_TYPE_TINY => 1,
        MYSQL_TYPE_SHORT => 2,
        MYSQL_TYPE_INT24 => 3,
        MYSQL_TYPE_LONG => 4,
        MYSQL_TYPE_LONGLONG => 8,
        _ => return Ok(None),
    };
    let bytes = buf
        .checked_eat(width)
        .ok_or("an integer shorter than its type")?;
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(bytes);
    let raw = u64::from_le_bytes(le);
    if c.unsigned {
        return Ok(Some(match i64::try_from(raw) {
            Ok(i) => MyValue::Int(i),
            Err(_) => MyValue::UInt(raw),
        }));
    }
    // Sign-extend from the type's width.
    let shift = 8 * (8 - width);
    Ok(Some(MyValue::Int((raw << shift) as i64 >> shift)))
}

/// A string-like value's bytes, for the types whose layout is a length then the bytes
/// (as mysql_common reads them): BLOB and TEXT (and MariaDB's JSON), with a length of
/// `meta[0]` bytes; VARCHAR, with one byte of length for a maximum under 256 bytes, else
/// two. `None` for every other type.
fn string<'a>(buf: &mut ParseBuf<'a>, c: &ColumnPlan<'a>) -> Result<Option<&'a [u8]>, String> {
    use ColumnType::{
        MYSQL_TYPE_BLOB, MYSQL_TYPE_LONG_BLOB, MYSQL_TYPE_MEDIUM_BLOB, MYSQL_TYPE_TINY_BLOB,
        MYSQL_TYPE_VAR_STRING, MYSQL_TYPE_VARCHAR,
    };
    let width = match c.ty {
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            match c.meta.first() {
                Some(&w @ 1..=4) => usize::from(w),
                _ => return Err("a BLOB with an unknown length size".into()),
            }
        }
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => match c.meta {
            [lo, hi, ..] if u16::from_le_bytes([*lo, *hi]) < 256 => 1,
            [_, _, ..] => 2,
            _ => return Err("a VARCHAR without metadata".into()),
        },
        _ => return Ok(None),
    };
    let length = buf
        .checked_eat(width)
        .ok_or("a string shorter than its length")?;
    let n = length
        .iter()
        .rev()
        .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
    buf.checked_eat(n)
        .map(Some)
        .ok_or_else(|| "a string shorter than its length".into())
}

/// How MySQL 5.6's temporal types store the fraction of a `what`(n): in `(n + 1) / 2`
/// big-endian bytes, in units of 10^-2, 10^-4 or 10^-6 seconds (as bytes, and the
/// microseconds of a unit).
fn fraction_layout(n: u8, what: &str) -> Result<(usize, u32), String> {
    Ok(match n {
        0 => (0, 0),
        1 | 2 => (1, 10_000),
        3 | 4 => (2, 100),
        5 | 6 => (3, 1),
        n => return Err(format!("a {what} with {n} fraction digits")),
    })
}

/// A `MYSQL_TYPE_TIMESTAMP2` value: four bytes of big-endian epoch seconds, then the
/// fraction in `(n + 1) / 2` big-endian bytes for TIMESTAMP(n), in units of 10^-2,
/// 10^-4 or 10^-6 seconds (MySQL's `my_timestamp_from_binary`; `meta` is `[n]`).
fn timestamp2<'a>(buf: &mut ParseBuf<'a>, meta: &[u8]) -> Result<Cell<'a>, String> {
    let (frac_bytes, unit) = fraction_layout(meta.first().copied().unwrap_or(0), "TIMESTAMP")?;
    let bytes = buf
        .checked_eat(4 + frac_bytes)
        .ok_or("a TIMESTAMP shorter than its precision")?;
    let be = |b: &[u8]| b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    let micros = be(&bytes[4..]) * unit;
    if micros > 999_999 {
        return Err(format!("a TIMESTAMP fraction of {micros} microseconds"));
    }
    Ok(Cell::Timestamp {
        secs: be(&bytes[..4]),
        micros,
    })
}

/// A value of MariaDB's pre-10.1 high-resolution TIME(n), DATETIME(n) or TIMESTAMP(n)
/// (`n` 1 to 6; MariaDB's `Field_time_hires`, `Field_datetime_hires`,
/// `Field_timestamp_hires`), all big-endian in units of 10^-n seconds:
///
/// - TIME: 3 to 6 bytes (`[3, 4, 4, 5, 5, 5, 6][n]`), the signed time's units plus the
///   units of 839 hours (so that the bytes sort as the values do);
/// - DATETIME: 5 to 8 bytes (`[5, 6, 6, 7, 7, 7, 8][n]`), `pack_time`'s
///   `(((((year·13 + month)·32 + day)·24 + hour)·60 + minute)·60 + second)` in units;
/// - TIMESTAMP: four bytes of epoch seconds, then the fraction in `[0, 1, 1, 2, 2, 3, 3][n]`
///   bytes.
fn mariadb_hires<'a>(buf: &mut ParseBuf<'a>, ty: ColumnType, n: u8) -> Result<Cell<'a>, String> {
    const TIME_BYTES: [usize; 7] = [3, 4, 4, 5, 5, 5, 6];
    const DATETIME_BYTES: [usize; 7] = [5, 6, 6, 7, 7, 7, 8];
    const FRACTION_BYTES: [usize; 7] = [0, 1, 1, 2, 2, 3, 3];
    let d = usize::from(n);
    if !(1..=6).contains(&d) {
        return Err(format!("a {ty:?} with {n} fraction digits"));
    }
    let scale = 10u64.pow(6 - u32::from(n));
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
    let take = |buf: &mut ParseBuf<'a>, len: usize| {
        buf.checked_eat(len)
            .ok_or_else(|| format!("a {ty:?}({n}) shorter than {len} bytes"))
    };
    match ty {
        ColumnType::MYSQL_TYPE_TIME => {
            // 839 hours in units: `(TIME_MAX_VALUE_SECONDS + 1) · 10^n`.
            let zero = 3_020_400 * 1_000_000 / scale;
            let units = i128::from(be(take(buf, TIME_BYTES[d])?)) - i128::from(zero);
            let micros = units.unsigned_abs() * u128::from(scale);
            let secs = micros / 1_000_000;
            let wide = |v: u128| u64::try_from(v).map_err(|e| e.to_string());
            let (hours, minutes, seconds) =
                (wide(secs / 3600)?, wide(secs / 60 % 60)?, wide(secs % 60)?);
            let micros = wide(micros % 1_000_000)?;
            Ok(Cell::Binlog(BinlogValue::Value(time_value(
                units < 0,
                (hours, minutes, seconds),
                micros,
            )?)))
        }
        ColumnType::MYSQL_TYPE_DATETIME => {
            let full = be(take(buf, DATETIME_BYTES[d])?) * scale;
            let micros = full % 1_000_000;
            let mut t = full / 1_000_000;
            let mut part = |m: u64| {
                let v = t % m;
                t /= m;
                v
            };
            let (second, minute, hour, day, month) =
                (part(60), part(60), part(24), part(32), part(13));
            let narrow = |v: u64| u8::try_from(v).map_err(|e| e.to_string());
            Ok(Cell::Binlog(BinlogValue::Value(MyValue::Date(
                u16::try_from(t).map_err(|e| e.to_string())?,
                narrow(month)?,
                narrow(day)?,
                narrow(hour)?,
                narrow(minute)?,
                narrow(second)?,
                u32::try_from(micros).map_err(|e| e.to_string())?,
            ))))
        }
        ColumnType::MYSQL_TYPE_TIMESTAMP => {
            let bytes = take(buf, 4 + FRACTION_BYTES[d])?;
            let secs = u32::try_from(be(&bytes[..4])).map_err(|e| e.to_string())?;
            let micros = be(&bytes[4..]) * scale;
            if micros > 999_999 {
                return Err(format!("a TIMESTAMP fraction of {micros} microseconds"));
            }
            Ok(Cell::Timestamp {
                secs,
                micros: u32::try_from(micros).map_err(|e| e.to_string())?,
            })
        }
        other => Err(format!("{other:?} is not a MariaDB high-resolution type")),
    }
}

/// A pre-5.6 `MYSQL_TYPE_TIME` value (MariaDB's TIME made with
/// `mysql56_temporal_format=OFF`): three little-endian bytes of the signed
/// `±(hours·10000 + minutes·100 + seconds)`. mysql_common reads them unsigned and the hours
/// into a byte, so `-838:59:59` became `71:12:57`.
fn old_time(bytes: &[u8]) -> Result<MyValue, String> {
    let raw = bytes
        .iter()
        .rev()
        .fold(0i32, |acc, &b| (acc << 8) | i32::from(b));
    let signed = (raw << 8) >> 8;
    let v = signed.unsigned_abs();
    let (hours, minutes, seconds) = (v / 10_000, v / 100 % 100, v % 100);
    if minutes > 59 || seconds > 59 {
        return Err(format!("a TIME of {signed}"));
    }
    time_value(
        signed < 0,
        (u64::from(hours), u64::from(minutes), u64::from(seconds)),
        0,
    )
}

/// A TIME as mysql_common's value holds it: sign, days, then the hours of the last day,
/// minutes, seconds, microseconds.
fn time_value(
    negative: bool,
    (hours, minutes, seconds): (u64, u64, u64),
    micros: u64,
) -> Result<MyValue, String> {
    let narrow = |v: u64| u8::try_from(v).map_err(|e| e.to_string());
    Ok(MyValue::Time(
        negative,
        u32::try_from(hours / 24).map_err(|e| e.to_string())?,
        narrow(hours % 24)?,
        narrow(minutes)?,
        narrow(seconds)?,
        u32::try_from(micros).map_err(|e| e.to_string())?,
    ))
}

/// A `MYSQL_TYPE_YEAR` value: one byte, the years after 1900, except that 0 is the zero
/// year `0000` (YEAR's range is 1901 to 2155, and 0000). mysql_common reads 0 as 1900.
fn year(byte: u8) -> MyValue {
    MyValue::Int(if byte == 0 { 0 } else { 1900 + i64::from(byte) })
}

/// A `MYSQL_TYPE_TIME2` value (`meta` is `[n]` for TIME(n)), as MySQL's
/// `my_time_packed_from_binary` and `TIME_from_longlong_time_packed` read it: three
/// big-endian bytes of `hours << 12 | minutes << 6 | seconds` offset by `0x800000`, then
/// the fraction in `(n + 1) / 2` bytes; TIME(5) and TIME(6) store both in six bytes as
/// microseconds offset by `0x800000000000`. A negative value's fraction is stored as its
/// complement (so that the bytes sort as the values do): `-00:00:00.01` is `7FFFFF.FF`,
/// integer part -1 and fraction 255, which mean 0 seconds and -0.01.
///
/// mysql_common 0.37 reads TIME(1) and TIME(2) with that complement in an unsigned
/// integer, which overflows for a negative value with a fraction: it panics where
/// overflow is checked and yields a large positive time where it is not.
fn time2(buf: &mut ParseBuf<'_>, meta: &[u8]) -> Result<MyValue, String> {
    const INT_OFS: i64 = 0x80_0000;
    let (frac_bytes, unit) = fraction_layout(meta.first().copied().unwrap_or(0), "TIME")?;
    let bytes = buf
        .checked_eat(3 + frac_bytes)
        .ok_or("a TIME shorter than its precision")?;
    let be = |b: &[u8]| b.iter().fold(0i64, |acc, &x| (acc << 8) | i64::from(x));
    // Both parts as one signed count of microseconds' packed form: seconds' fields in
    // the integer part, microseconds in the low 24 bits.
    let packed = if frac_bytes == 3 {
        be(bytes) - (INT_OFS << 24)
    } else {
        let mut int = be(&bytes[..3]) - INT_OFS;
        let mut frac = be(&bytes[3..]);
        if int < 0 && frac != 0 {
            int += 1;
            frac -= 1 << (8 * frac_bytes);
        }
        (int << 24) + frac * i64::from(unit)
    };
    let neg = packed < 0;
    let abs = packed.unsigned_abs();
    let hms = abs >> 24;
    let micros = abs & 0xFF_FFFF;
    let (hours, minutes, seconds) = ((hms >> 12) & 0x3FF, (hms >> 6) & 0x3F, hms & 0x3F);
    if micros > 999_999 || minutes > 59 || seconds > 59 {
        return Err(format!("a TIME of {hms:#x} with {micros} microseconds"));
    }
    time_value(neg, (hours, minutes, seconds), micros)
}

/// A `MYSQL_TYPE_NEWDECIMAL` value (`meta` is `[precision, scale]`), its bytes taken.
fn decimal<'a>(buf: &mut ParseBuf<'a>, meta: &[u8]) -> Result<Cell<'a>, String> {
    let (&[precision, scale], _) = meta
        .split_at_checked(2)
        .ok_or("a DECIMAL without metadata")?
    else {
        return Err("a DECIMAL without metadata".into());
    };
    let size = decimal_size(usize::from(precision), usize::from(scale))?;
    let bin = buf
        .checked_eat(size)
        .ok_or("a DECIMAL shorter than its precision")?;
    Ok(Cell::Decimal {
        bin: Cow::Borrowed(bin),
        precision,
        scale,
    })
}

/// Bytes of a DECIMAL(precision, scale): nine digits per four bytes, the integer part's
/// leading and the fraction's trailing partial groups in fewer.
fn decimal_size(precision: usize, scale: usize) -> Result<usize, String> {
    // mysql_common's size, which underflows when the scale exceeds the precision.
    if scale > precision {
        return Err(format!("a DECIMAL({precision},{scale})"));
    }
    Ok(decimal_bin_size(precision, scale))
}

/// Writes a binary DECIMAL as text, as mysql_common prints it: the integer part
/// without leading zeros (`0` when none), then exactly `scale` fraction digits; a sign
/// for a negative value, except for a zero of scale 0.
///
/// The binary form (MySQL's `decimal2bin`): big-endian groups, the integer part's
/// `int % 9` leading digits first, then nine digits per four bytes, the fraction the
/// same way with its partial group last. The first bit is flipped, so that the bytes
/// compare as the values do; a negative value has every bit inverted besides.
pub fn write_decimal(
    bin: &[u8],
    precision: usize,
    scale: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let bad = || "a malformed DECIMAL".to_string();
    if bin.len() != decimal_size(precision, scale)? || bin.is_empty() {
        return Err(bad());
    }
    let negative = bin[0] & 0x80 == 0;
    let mask = if negative { 0xFF } else { 0 };
    let mut at = 0;
    // The next group of `digits` digits, checked to hold no more than that many.
    let mut group = |digits: usize| -> Result<u32, String> {
        let n = usize::from(DIG_TO_BYTES[digits]);
        let mut v = 0u32;
        for (k, &b) in bin.get(at..at + n).ok_or_else(bad)?.iter().enumerate() {
            let b = if at + k == 0 { b ^ 0x80 } else { b };
            v = (v << 8) | u32::from(b ^ mask);
        }
        at += n;
        if v >= 10u32.pow(u32::try_from(digits).unwrap_or(9)) {
            return Err(bad());
        }
        Ok(v)
    };
    let int = precision - scale;
    let sign_at = out.len();
    if negative {
        out.push(b'-');
    }
    let mut started = false;
    for width in std::iter::once(int % 9)
        .filter(|&w| w > 0)
        .chain(std::iter::repeat_n(9, int / 9))
    {
        let v = group(width)?;
        if !started && v == 0 {
            continue;
        }
        let (digits, from) = decimal_digits(u64::from(v), if started { width } else { 1 });
        out.extend_from_slice(&digits[from..]);
        started = true;
    }
    if !started {
        if scale == 0 {
            out.truncate(sign_at);
        }
        out.push(b'0');
    }
    if scale > 0 {
        out.push(b'.');
        for width in
            std::iter::repeat_n(9, scale / 9).chain(std::iter::once(scale % 9).filter(|&w| w > 0))
        {
            let v = group(width)?;
            let (digits, from) = decimal_digits(u64::from(v), width);
            out.extend_from_slice(&digits[from..]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use backfill_core::source::Row;

    use super::*;
    use crate::value::{ColType, render_cell};

    /// The JSON a TIMESTAMP(fsp) column gets from `cell`.
    fn rendered(cell: &Cell<'_>, fsp: usize) -> Option<serde_json::Value> {
        let mut row = Row::new();
        render_cell(&ColType::Timestamp { fsp }, cell, &mut row, "t").ok()?;
        row.get("t")
    }

    /// An unnamed column's plan.
    fn column(ty: ColumnType, meta: &[u8], unsigned: bool) -> ColumnPlan<'_> {
        ColumnPlan {
            ty,
            meta,
            unsigned,
            name: None,
            hires: None,
        }
    }

    /// mysql_common's reading of one value's bytes, the oracle for the readers here.
    fn mysql_commons<'a>(bytes: &'a [u8], ty: ColumnType, meta: &'a [u8]) -> Cell<'a> {
        Cell::Binlog(
            ParseBuf(bytes)
                .parse::<BinlogValue<'a>>((ty, meta, false, false))
                .expect("mysql_common decodes"),
        )
    }

    /// A DECIMAL(precision, scale) in the binary form, from its digit groups in order.
    fn encode(precision: usize, scale: usize, groups: &[(usize, u32)], negative: bool) -> Vec<u8> {
        let mut bin = Vec::new();
        for &(digits, v) in groups {
            let n = usize::from(DIG_TO_BYTES[digits]);
            bin.extend_from_slice(&v.to_be_bytes()[4 - n..]);
        }
        assert_eq!(bin.len(), decimal_size(precision, scale).unwrap_or(0));
        bin[0] ^= 0x80;
        if negative {
            bin.iter_mut().for_each(|b| *b = !*b);
        }
        bin
    }

    #[test]
    fn strings_read_here_are_mysql_commons_reading_of_them() {
        use ColumnType::*;
        let text = "héllo \"x\" ".repeat(30);
        for value in [&b""[..], b"a", text.as_bytes()] {
            for (ty, meta, width) in [
                (MYSQL_TYPE_BLOB, vec![1u8], 1),
                (MYSQL_TYPE_BLOB, vec![2], 2),
                (MYSQL_TYPE_MEDIUM_BLOB, vec![3], 3),
                (MYSQL_TYPE_LONG_BLOB, vec![4], 4),
                (MYSQL_TYPE_VARCHAR, 255u16.to_le_bytes().to_vec(), 1),
                (MYSQL_TYPE_VARCHAR, 256u16.to_le_bytes().to_vec(), 2),
                (MYSQL_TYPE_VAR_STRING, 1020u16.to_le_bytes().to_vec(), 2),
            ] {
                if value.len() >= 1 << (8 * width).min(16) {
                    continue;
                }
                let mut bytes = value.len().to_le_bytes()[..width].to_vec();
                bytes.extend_from_slice(value);
                bytes.push(7); // the next value's first byte stays unread
                let plan = column(ty, &meta, false);
                let mut buf = ParseBuf(&bytes);
                let ours = string(&mut buf, &plan)
                    .expect("reads")
                    .expect("a string type");
                assert_eq!(buf.0, &[7], "{ty:?} {meta:?}");
                let Cell::Binlog(BinlogValue::Value(mysql_async::Value::Bytes(theirs))) =
                    mysql_commons(&bytes, ty, &meta)
                else {
                    panic!("mysql_common reads {ty:?} as bytes");
                };
                assert_eq!(ours, &theirs[..], "{ty:?} {meta:?}");
                // Cut short, it is refused, not read past.
                let mut short = ParseBuf(&bytes[..bytes.len() - 2]);
                assert!(value.is_empty() || string(&mut short, &plan).is_err());
            }
        }
        let int = column(MYSQL_TYPE_LONG, &[], false);
        assert_eq!(string(&mut ParseBuf(&[1, 0, 0, 0]), &int), Ok(None));
    }

    #[test]
    fn integers_read_here_are_mysql_commons_reading_of_them() {
        use ColumnType::*;
        let edges = [
            0u64, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0x7f_ffff, 0x80_0000,
        ];
        let edges = edges.into_iter().chain([
            u64::from(u32::MAX >> 1),
            1 << 31,
            u64::from(u32::MAX),
            i64::MAX as u64,
            1 << 63,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ]);
        for raw in edges {
            for (ty, width) in [
                (MYSQL_TYPE_TINY, 1),
                (MYSQL_TYPE_SHORT, 2),
                (MYSQL_TYPE_INT24, 3),
                (MYSQL_TYPE_LONG, 4),
                (MYSQL_TYPE_LONGLONG, 8),
            ] {
                for unsigned in [false, true] {
                    let mut bytes = raw.to_le_bytes()[..width].to_vec();
                    bytes.push(7); // the next value's first byte stays unread
                    let plan = column(ty, &[], unsigned);
                    let mut buf = ParseBuf(&bytes);
                    let ours = integer(&mut buf, &plan)
                        .expect("reads")
                        .expect("an integer");
                    assert_eq!(buf.0, &[7], "{ty:?}");
                    let mut theirs = ParseBuf(&bytes)
                        .parse::<BinlogValue<'_>>((ty, &[][..], unsigned, false))
                        .expect("mysql_common decodes");
                    // Except that mysql_common reads a signed MEDIUMINT without its sign
                    // (-1 as 16777215), which the server's text of the value says is wrong.
                    if let (MYSQL_TYPE_INT24, false, BinlogValue::Value(MyValue::Int(i))) =
                        (ty, unsigned, &mut theirs)
                        && *i >= 1 << 23
                    {
                        *i -= 1 << 24;
                    }
                    let context = format!("{ty:?} unsigned={unsigned} {raw:#x}");
                    assert_eq!(BinlogValue::Value(ours), theirs, "{context}");
                    // Cut short, it is refused, not read past.
                    assert!(integer(&mut ParseBuf(&bytes[..width - 1]), &plan).is_err());
                }
            }
        }
        let text = column(MYSQL_TYPE_VARCHAR, &[10, 0], false);
        assert_eq!(integer(&mut ParseBuf(&[1, b'a']), &text), Ok(None));
    }

    #[test]
    fn decimals_read_here_render_as_mysql_commons_reading_of_them() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let shapes = [
            (1, 0),
            (5, 2),
            (9, 0),
            (10, 0),
            (10, 4),
            (18, 9),
            (20, 4),
            (30, 10),
            (65, 30),
            (65, 0),
            (38, 38),
        ];
        for (precision, scale) in shapes {
            for round in 0..200 {
                let int = precision - scale;
                let mut widths: Vec<usize> = Vec::new();
                if int % 9 > 0 {
                    widths.push(int % 9);
                }
                widths.extend(std::iter::repeat_n(9, int / 9 + scale / 9));
                if scale % 9 > 0 {
                    widths.push(scale % 9);
                }
                // Zeros often: leading zero groups and a zero value are the edge cases.
                let groups: Vec<(usize, u32)> = widths
                    .iter()
                    .map(|&w| {
                        let limit = 10u64.pow(u32::try_from(w).unwrap_or(9));
                        let v = if round % 3 == 0 || next() % 4 == 0 {
                            0
                        } else {
                            next() % limit
                        };
                        (w, u32::try_from(v).unwrap_or(0))
                    })
                    .collect();
                let bin = encode(precision, scale, &groups, next() % 2 == 0);
                let meta = [
                    u8::try_from(precision).unwrap_or(0),
                    u8::try_from(scale).unwrap_or(0),
                ];
                let ours = decimal(&mut ParseBuf(&bin), &meta).expect("decodes");
                let theirs = mysql_commons(&bin, ColumnType::MYSQL_TYPE_NEWDECIMAL, &meta);
                let render = |cell: Cell<'_>| {
                    let mut row = Row::new();
                    render_cell(&ColType::Decimal { scale }, &cell, &mut row, "d").map(|()| row)
                };
                let ours = render(ours).expect("a valid DECIMAL renders");
                assert_eq!(
                    Ok(ours),
                    render(theirs),
                    "DECIMAL({precision},{scale}) {groups:?}"
                );
            }
        }
        // A group past its digits, or bytes of the wrong length: refused, not misread.
        let mut bad = encode(10, 0, &[(1, 0), (9, 0)], false);
        bad[1..].fill(0xFF);
        let mut text = Vec::new();
        assert!(write_decimal(&bad, 10, 0, &mut text).is_err());
        assert!(write_decimal(&bad[1..], 10, 0, &mut text).is_err());
        assert!(decimal(&mut ParseBuf(&bad), &[2, 5]).is_err());
    }

    #[test]
    fn timestamps_read_here_render_as_mysql_commons_reading_of_them() {
        // (fraction digits, seconds, fraction in the column's units)
        for (dec, secs, frac) in [
            (0u8, 1_577_836_801u32, 0u32),
            (0, 0, 0),
            (2, 1_577_836_801, 99),
            (2, 1_577_836_801, 5),
            (4, 86_399, 1234),
            (6, 1_700_000_000, 123_456),
            (6, 1, 0),
            (6, 0, 0),
        ] {
            let frac_bytes = usize::from(dec).div_ceil(2);
            let mut bytes = secs.to_be_bytes().to_vec();
            bytes.extend_from_slice(&frac.to_be_bytes()[4 - frac_bytes..]);
            let meta = [dec];
            let ours = timestamp2(&mut ParseBuf(&bytes), &meta).expect("decodes");
            let theirs = mysql_commons(&bytes, ColumnType::MYSQL_TYPE_TIMESTAMP2, &meta);
            let fsp = usize::from(dec);
            assert_eq!(
                rendered(&ours, fsp),
                rendered(&theirs, fsp),
                "{dec} {secs} {frac}"
            );
        }
        // Past 2038 the seconds stay unsigned (mysql_common would read a negative i32).
        let bytes = 3_000_000_000u32.to_be_bytes();
        let cell = timestamp2(&mut ParseBuf(&bytes), &[0]).expect("decodes");
        assert_eq!(rendered(&cell, 0), Some("2065-01-24T05:20:00Z".into()));
        // Too short, or an impossible fraction: refused, not misread.
        assert!(timestamp2(&mut ParseBuf(&[0, 0, 1]), &[0]).is_err());
        assert!(timestamp2(&mut ParseBuf(&[0, 0, 0, 1, 0x0F, 0x42, 0x40]), &[6]).is_err());
    }

    /// MySQL's `my_time_packed_to_binary`: TIME(`dec`) of a packed time (`seconds'
    /// fields << 24 | microseconds`, negated for a negative time).
    fn time_to_binary(packed: i64, dec: u8) -> Vec<u8> {
        let int = (packed >> 24) + 0x80_0000;
        let frac = packed % (1 << 24); // C's remainder: the sign of `packed`
        let mut out = int.to_be_bytes()[5..].to_vec();
        match dec {
            0 => {}
            // The low bytes of the two's complement, as C's casts keep them.
            1 | 2 => out.push((frac / 10_000).to_be_bytes()[7]),
            3 | 4 => out.extend_from_slice(&(frac / 100).to_be_bytes()[6..]),
            _ => out = (packed + (0x80_0000 << 24)).to_be_bytes()[2..].to_vec(),
        }
        out
    }

    #[test]
    fn mariadbs_old_temporal_forms_are_read_as_it_writes_them() {
        // Pre-5.6 TIME: the signed hhmmss in three little-endian bytes.
        let le = |v: i32| v.to_le_bytes()[..3].to_vec();
        assert_eq!(
            old_time(&le(-8_385_959)),
            Ok(MyValue::Time(true, 34, 22, 59, 59, 0))
        );
        assert_eq!(
            old_time(&le(123_456)),
            Ok(MyValue::Time(false, 0, 12, 34, 56, 0))
        );
        assert!(old_time(&le(99)).is_err());
        // High-resolution TIME(1) -00:00:00.1: 839 hours in tenths, less one.
        let units = 3_020_400u64 * 10 - 1;
        let time1 = units.to_be_bytes()[4..].to_vec();
        let mut buf = ParseBuf(&time1);
        assert_eq!(
            mariadb_hires(&mut buf, ColumnType::MYSQL_TYPE_TIME, 1),
            Ok(Cell::Binlog(BinlogValue::Value(MyValue::Time(
                true, 0, 0, 0, 0, 100_000
            ))))
        );
        // DATETIME(3) 2020-02-29 23:59:59.999: pack_time in milliseconds, seven bytes.
        let packed =
            (((((2020u64 * 13 + 2) * 32 + 29) * 24 + 23) * 60 + 59) * 60 + 59) * 1000 + 999;
        let dt3 = packed.to_be_bytes()[1..].to_vec();
        assert_eq!(
            mariadb_hires(&mut ParseBuf(&dt3), ColumnType::MYSQL_TYPE_DATETIME, 3),
            Ok(Cell::Binlog(BinlogValue::Value(MyValue::Date(
                2020, 2, 29, 23, 59, 59, 999_000
            ))))
        );
        // TIMESTAMP(6): seconds, then three bytes of microseconds.
        let ts6 = [0, 0, 0, 1, 0x0F, 0x42, 0x3F];
        assert_eq!(
            mariadb_hires(&mut ParseBuf(&ts6), ColumnType::MYSQL_TYPE_TIMESTAMP, 6),
            Ok(Cell::Timestamp {
                secs: 1,
                micros: 999_999
            })
        );
        // Too short, or no fraction digits: refused.
        assert!(
            mariadb_hires(&mut ParseBuf(&dt3[..5]), ColumnType::MYSQL_TYPE_DATETIME, 3).is_err()
        );
        assert!(mariadb_hires(&mut ParseBuf(&dt3), ColumnType::MYSQL_TYPE_DATETIME, 0).is_err());
    }

    #[test]
    fn the_zero_year_is_zero_not_1900() {
        assert_eq!(year(0), MyValue::Int(0));
        assert_eq!(year(1), MyValue::Int(1901));
        assert_eq!(year(124), MyValue::Int(2024));
        assert_eq!(year(255), MyValue::Int(2155));
        // Why it is read here: mysql_common's reading of the zero year.
        assert_eq!(
            mysql_commons(&[0], ColumnType::MYSQL_TYPE_YEAR, &[]),
            Cell::Binlog(BinlogValue::Value(MyValue::Bytes(b"1900".to_vec())))
        );
    }

    #[test]
    fn times_are_read_as_mysql_writes_them_negative_fractions_included() {
        let packed = |neg: bool, h: i64, m: i64, s: i64, us: i64| {
            let v = (((h << 12) | (m << 6) | s) << 24) + us;
            if neg { -v } else { v }
        };
        // MySQL's own table (`my_time_packed_from_binary`), TIME(2): disk bytes, value.
        for (bytes, want) in [
            ([0x80, 0, 0, 0x00], MyValue::Time(false, 0, 0, 0, 0, 0)),
            (
                [0x7F, 0xFF, 0xFF, 0xFF],
                MyValue::Time(true, 0, 0, 0, 0, 10_000),
            ),
            (
                [0x7F, 0xFF, 0xFF, 0x9D],
                MyValue::Time(true, 0, 0, 0, 0, 990_000),
            ),
            ([0x7F, 0xFF, 0xFF, 0x00], MyValue::Time(true, 0, 0, 0, 1, 0)),
            (
                [0x7F, 0xFF, 0xFE, 0xFF],
                MyValue::Time(true, 0, 0, 0, 1, 10_000),
            ),
            (
                [0x7F, 0xFF, 0xFE, 0xF6],
                MyValue::Time(true, 0, 0, 0, 1, 100_000),
            ),
        ] {
            assert_eq!(time2(&mut ParseBuf(&bytes), &[2]), Ok(want), "{bytes:x?}");
        }
        // Every width, both signs, with and without a fraction, up to the range's ends.
        for (neg, h, m, s, us) in [
            (false, 0, 0, 0, 0),
            (false, 26, 3, 4, 500_000),
            (true, 26, 3, 4, 500_000),
            (true, 0, 0, 0, 100_000),
            (true, 0, 0, 1, 0),
            (true, 838, 59, 58, 990_000),
            (false, 838, 59, 59, 0),
            (true, 838, 59, 59, 0),
            (true, 12, 0, 0, 10_000),
        ] {
            for dec in 0..=6u8 {
                let unit = 10i64.pow(6 - u32::from(dec));
                let us = us / unit * unit;
                let bytes = time_to_binary(packed(neg, h, m, s, us), dec);
                let got = time2(&mut ParseBuf(&bytes), &[dec]);
                let days = u32::try_from(h / 24).unwrap_or(0);
                let parts = [h % 24, m, s].map(|v| u8::try_from(v).unwrap_or(0));
                let zero = h == 0 && m == 0 && s == 0 && us == 0;
                let want = MyValue::Time(
                    neg && !zero,
                    days,
                    parts[0],
                    parts[1],
                    parts[2],
                    u32::try_from(us).unwrap_or(0),
                );
                assert_eq!(got, Ok(want), "TIME({dec}) {neg} {h}:{m}:{s}.{us}");
                // Where mysql_common reads TIME right (no negative fraction below
                // TIME(3)), it reads it as this does.
                if !(neg && us > 0 && dec <= 2) {
                    let meta = [dec];
                    let theirs = mysql_commons(&bytes, ColumnType::MYSQL_TYPE_TIME2, &meta);
                    assert_eq!(
                        Cell::Binlog(BinlogValue::Value(got.unwrap_or(MyValue::NULL))),
                        theirs
                    );
                }
            }
        }
        // Too short, or fields out of range: refused, not misread.
        assert!(time2(&mut ParseBuf(&[0x80, 0]), &[0]).is_err());
        assert!(time2(&mut ParseBuf(&[0x80, 0x00, 0x3B]), &[0]).is_ok());
        assert!(time2(&mut ParseBuf(&[0x80, 0x00, 0x3C]), &[0]).is_err());
        assert!(time2(&mut ParseBuf(&[0x80, 0, 0, 0x0F, 0x42, 0x40]), &[6]).is_err());
    }
}
