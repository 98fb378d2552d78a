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

/// One row image: the values of the table's columns by position (`None`: not in the
/// image's column bitmap).
pub type Image<'a> = Vec<Option<BinlogValue<'a>>>;

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
            BinlogValue::Value(mysql_async::Value::NULL)
        } else {
            let c = &plan[i];
            buf.parse::<BinlogValue<'a>>((c.ty, c.meta, c.unsigned, false))
                .map_err(|e| format!("column {}: {e}", i + 1))?
        };
        values[i] = Some(value);
    }
    Ok(values)
}
