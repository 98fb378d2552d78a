//! Rows of a binlog rows event, decoded in place.
//!
//! mysql_common's own row iterator builds a `BinlogRow` for every row image: a `Column`
//! per column with the database, table and column names copied into it (some twice),
//! the column's metadata found by a walk from the first column, and every value copied
//! out of the event. In the bench's streaming profile (`cargo xtask bench --perf`) that
//! was a quarter of the connector's time, most of it in malloc and free. This decoder
//! reads the same layout with mysql_common's value parser, but looks each column up
//! once per event (a [`ColumnPlan`]) and leaves values borrowing the event's bytes.
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

use mysql_async::binlog::events::{OptionalMetaExtractor, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
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
        });
    }
    Ok(columns)
}

/// One value of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// As mysql_common's value parser reads it.
    Binlog(BinlogValue<'a>),
    /// A TIMESTAMP(n) (`MYSQL_TYPE_TIMESTAMP2`), read here: mysql_common prints it as
    /// text (`secs.micros`, through `format!`) that the renderer then parsed back, a
    /// tenth of the streaming profile. Seconds are unsigned, as stored (MariaDB 11.5
    /// stores timestamps past 2038); mysql_common reads them as `i32`.
    Timestamp {
        /// Seconds since the epoch; 0 is the zero timestamp.
        secs: u32,
        /// Microseconds.
        micros: u32,
    },
}

impl Cell<'_> {
    /// The value, owning its bytes.
    pub fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Binlog(v) => Cell::Binlog(v.into_owned()),
            Cell::Timestamp { secs, micros } => Cell::Timestamp { secs, micros },
        }
    }
}

/// One row image: the values of the table's columns by position (`None`: not in the
/// image's column bitmap).
pub type Image<'a> = Vec<Option<Cell<'a>>>;

/// A row's before and after images (an insert has no before, a delete no after).
pub type RowImages<'a> = (Option<Image<'a>>, Option<Image<'a>>);

/// The rows of `rows`, decoded with the columns of its table map (`plan`).
pub fn decode<'a>(
    rows: &'a RowsEventData<'a>,
    plan: &[ColumnPlan<'a>],
) -> Result<Vec<RowImages<'a>>, String> {
    if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
        return Err(
            "partial JSON updates are not supported: set binlog_row_value_options='' on the server"
                .into(),
        );
    }
    let count = usize::try_from(rows.num_columns()).map_err(|e| e.to_string())?;
    if count > plan.len() {
        return Err(format!(
            "the rows event has {count} columns, its table map {}",
            plan.len()
        ));
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
        return Err("a rows event with neither a before nor an after image".into());
    }
    let mut buf = ParseBuf(rows.rows_data());
    let mut decoded = Vec::new();
    while !buf.is_empty() {
        let b = match &before {
            Some(cols) => Some(image(&mut buf, cols, plan)?),
            None => None,
        };
        let a = match &after {
            Some(cols) => Some(image(&mut buf, cols, plan)?),
            None => None,
        };
        decoded.push((b, a));
    }
    Ok(decoded)
}

/// One row image at the front of `buf`.
fn image<'a>(
    buf: &mut ParseBuf<'a>,
    columns: &[usize],
    plan: &[ColumnPlan<'a>],
) -> Result<Image<'a>, String> {
    if columns.is_empty() {
        return Err("a row image with no columns".into());
    }
    let nulls = buf
        .checked_eat(columns.len().div_ceil(8))
        .ok_or("a row image shorter than its null bitmap")?;
    let mut values: Image<'a> = vec![None; plan.len()];
    for (n, &i) in columns.iter().enumerate() {
        let null = nulls
            .get(n / 8)
            .is_none_or(|byte| byte & (1 << (n % 8)) != 0);
        let value = if null {
            Cell::Binlog(BinlogValue::Value(mysql_async::Value::NULL))
        } else {
            let c = &plan[i];
            if c.ty == ColumnType::MYSQL_TYPE_TIMESTAMP2 {
                timestamp2(buf, c.meta).map_err(|e| format!("column {}: {e}", i + 1))?
            } else {
                Cell::Binlog(
                    buf.parse::<BinlogValue<'a>>((c.ty, c.meta, c.unsigned, false))
                        .map_err(|e| format!("column {}: {e}", i + 1))?,
                )
            }
        };
        values[i] = Some(value);
    }
    Ok(values)
}

/// A `MYSQL_TYPE_TIMESTAMP2` value: four bytes of big-endian epoch seconds, then the
/// fraction in `(n + 1) / 2` big-endian bytes for TIMESTAMP(n), in units of 10^-2,
/// 10^-4 or 10^-6 seconds (MySQL's `my_timestamp_from_binary`; `meta` is `[n]`).
fn timestamp2<'a>(buf: &mut ParseBuf<'a>, meta: &[u8]) -> Result<Cell<'a>, String> {
    let (frac_bytes, unit) = match meta.first().copied().unwrap_or(0) {
        0 => (0, 0),
        1 | 2 => (1, 10_000),
        3 | 4 => (2, 100),
        5 | 6 => (3, 1),
        n => return Err(format!("a TIMESTAMP with {n} fraction digits")),
    };
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

#[cfg(test)]
mod tests {
    use backfill_core::source::Row;

    use super::*;
    use crate::value::{ColType, render_cell};

    /// The JSON a TIMESTAMP(fsp) column gets from `cell`.
    fn rendered(cell: Cell<'_>, fsp: usize) -> Option<serde_json::Value> {
        let mut row = Row::new();
        render_cell(&ColType::Timestamp { fsp }, cell, &mut row, "t").ok()?;
        row.get("t")
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
            let theirs = ParseBuf(&bytes)
                .parse::<BinlogValue<'_>>((
                    ColumnType::MYSQL_TYPE_TIMESTAMP2,
                    &meta[..],
                    false,
                    false,
                ))
                .expect("mysql_common decodes");
            let fsp = usize::from(dec);
            assert_eq!(
                rendered(ours, fsp),
                rendered(Cell::Binlog(theirs), fsp),
                "{dec} {secs} {frac}"
            );
        }
        // Past 2038 the seconds stay unsigned (mysql_common would read a negative i32).
        let bytes = 3_000_000_000u32.to_be_bytes();
        let cell = timestamp2(&mut ParseBuf(&bytes), &[0]).expect("decodes");
        assert_eq!(rendered(cell, 0), Some("2065-01-24T05:20:00Z".into()));
        // Too short, or an impossible fraction: refused, not misread.
        assert!(timestamp2(&mut ParseBuf(&[0, 0, 1]), &[0]).is_err());
        assert!(timestamp2(&mut ParseBuf(&[0, 0, 0, 1, 0x0F, 0x42, 0x40]), &[6]).is_err());
    }
}
