//! Values: SQL Server values as documents spell them (DESIGN.md §5).
//!
//! Rendering is driven by the column's declared type from the catalog ([`SqlType`]), and
//! each column is selected with the expression that makes the server hand back an exact
//! value ([`SqlType::select_expr`]): `money` arrives from TDS as a float, so it is cast to
//! `decimal(19,4)`; spatial values are asked for as WKB; `hierarchyid` as its path text.
//! The same expressions are used for the backfill and for the change functions, so both
//! paths render a stored value identically.
//!
//! | type | JSON |
//! |---|---|
//! | tinyint, smallint, int, bigint | number, exact |
//! | bit | `true` / `false` |
//! | decimal(p,s), numeric(p,s) | number with exactly s fraction digits |
//! | money, smallmoney | number with exactly 4 fraction digits |
//! | float, real | shortest round-trip number (real at single precision) |
//! | date | `"YYYY-MM-DD"` |
//! | time(n) | `"HH:MM:SS[.f]"`, n fraction digits |
//! | datetime2(n) | `"YYYY-MM-DDTHH:MM:SS[.f]"`, n fraction digits, no zone |
//! | datetime | `"YYYY-MM-DDTHH:MM:SS.fff"` (the server's 1/300 s ticks, rounded as it does) |
//! | smalldatetime | `"YYYY-MM-DDTHH:MM:00"` |
//! | datetimeoffset(n) | the instant in UTC, `"YYYY-MM-DDTHH:MM:SS[.f]Z"` |
//! | char, varchar, text, nchar, nvarchar, ntext, sysname | string |
//! | binary, varbinary, image, rowversion | base64 |
//! | uniqueidentifier | `"6F9619FF-8B86-D011-B42D-00C04FC964FF"` (upper case, as the server prints it) |
//! | xml | string (the server's serialisation) |
//! | geometry, geography | base64 of the WKB (`STAsBinary()`) |
//! | hierarchyid | string path (`ToString()`, e.g. `"/1/2/"`) |
//! | sql_variant | string (`CONVERT(nvarchar(4000), …)`) |
//! | NULL | `null` |

use backfill_core::encode::{base64, civil_from_days, number, scaled_decimal, shortest_float};
use serde_json::Value;
use tiberius::ColumnData;

use backfill_core::source::Row;
use backfill_core::{Failure, SourceError};

/// Days from 0001-01-01 to 1970-01-01.
const DAYS_0001_TO_1970: i64 = 719_162;
/// Days from 1900-01-01 to 1970-01-01.
const DAYS_1900_TO_1970: i64 = 25_567;

/// A column's declared type, as far as reading and rendering are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlType {
    /// tinyint, smallint, int, bigint.
    Int,
    /// bit.
    Bit,
    /// decimal(p,s), numeric(p,s).
    Decimal {
        /// s.
        scale: u8,
    },
    /// money (`small` for smallmoney).
    Money {
        /// smallmoney.
        small: bool,
    },
    /// float.
    Float,
    /// real.
    Real,
    /// date.
    Date,
    /// time(n).
    Time {
        /// Fraction digits.
        scale: u8,
    },
    /// datetime.
    DateTime,
    /// smalldatetime.
    SmallDateTime,
    /// datetime2(n).
    DateTime2 {
        /// Fraction digits.
        scale: u8,
    },
    /// datetimeoffset(n).
    DateTimeOffset {
        /// Fraction digits.
        scale: u8,
    },
    /// Character types, with the column's collation.
    Text {
        /// `COLLATE` name.
        collation: Option<String>,
        /// nchar / nvarchar / ntext.
        national: bool,
    },
    /// binary, varbinary, image, rowversion.
    Binary,
    /// uniqueidentifier.
    Guid,
    /// xml.
    Xml,
    /// geometry, geography.
    Spatial,
    /// hierarchyid.
    HierarchyId,
    /// sql_variant.
    Variant,
    /// A type the connector cannot render (CLR user types); the column is left out of
    /// documents and discovery says so.
    Unsupported(String),
}

impl SqlType {
    /// From `sys.types` (the system type's name), `sys.columns.scale` and the collation.
    pub fn from_catalog(system_type: &str, scale: u8, collation: Option<&str>) -> Self {
        let text = |national| Self::Text {
            collation: collation.map(str::to_string),
            national,
        };
        match system_type.to_ascii_lowercase().as_str() {
            "tinyint" | "smallint" | "int" | "bigint" => Self::Int,
            "bit" => Self::Bit,
            "decimal" | "numeric" => Self::Decimal { scale },
            "money" => Self::Money { small: false },
            "smallmoney" => Self::Money { small: true },
            "float" => Self::Float,
            "real" => Self::Real,
            "date" => Self::Date,
            "time" => Self::Time { scale },
            "datetime" => Self::DateTime,
            "smalldatetime" => Self::SmallDateTime,
            "datetime2" => Self::DateTime2 { scale },
            "datetimeoffset" => Self::DateTimeOffset { scale },
            "char" | "varchar" | "text" => text(false),
            "nchar" | "nvarchar" | "ntext" | "sysname" => text(true),
            "binary" | "varbinary" | "image" | "timestamp" | "rowversion" => Self::Binary,
            "uniqueidentifier" => Self::Guid,
            "xml" => Self::Xml,
            "geometry" | "geography" => Self::Spatial,
            "hierarchyid" => Self::HierarchyId,
            "sql_variant" => Self::Variant,
            other => Self::Unsupported(other.to_string()),
        }
    }

    /// The select-list expression that reads a column of this type exactly, given the
    /// column's quoted name (`[c]` or `t.[c]`); aliased back to the column name.
    pub fn select_expr(&self, quoted: &str, alias: &str) -> String {
        let expr = match self {
            Self::Money { small: false } => format!("CAST({quoted} AS decimal(19,4))"),
            Self::Money { small: true } => format!("CAST({quoted} AS decimal(10,4))"),
            Self::Spatial => format!("{quoted}.STAsBinary()"),
            Self::HierarchyId => format!("{quoted}.ToString()"),
            Self::Variant => format!("CONVERT(nvarchar(4000), {quoted})"),
            _ => quoted.to_string(),
        };
        format!("{expr} AS {alias}")
    }

    /// Whether SQL Server's CDC leaves the column NULL in an update's images when the update
    /// did not change it (large-value types): such a column is omitted from an update
    /// document unless its bit in `__$update_mask` is set.
    pub fn is_large_value(&self, max_length: i16) -> bool {
        match self {
            Self::Xml => true,
            Self::Text { .. } | Self::Binary | Self::Spatial => {
                max_length == -1 || max_length == 16
            }
            _ => false,
        }
    }

    /// Whether keys of this type are compared natively (integers), rather than by the
    /// server in the column's collation and type.
    pub fn compares_natively(&self) -> bool {
        matches!(self, Self::Int)
    }

    /// Whether the type can be a key the server orders (drives Automatic).
    pub fn server_orderable(&self) -> bool {
        !matches!(
            self,
            Self::Xml
                | Self::Spatial
                | Self::Variant
                | Self::Unsupported(_)
                | Self::Float
                | Self::Real
        )
    }
}

/// `increments` of 10^-`scale` seconds, at that scale.
fn fraction(increments: u64, scale: u8) -> String {
    let scale = usize::from(scale);
    backfill_core::encode::fraction(increments, scale, scale)
}

/// `seconds` since midnight plus `frac` at `scale` digits, as `HH:MM:SS[.f]`.
fn clock(seconds: u64, frac: u64, scale: u8) -> String {
    format!(
        "{:02}:{:02}:{:02}{}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        fraction(frac, scale)
    )
}

fn ymd(days_since_1970: i64) -> String {
    let (y, m, d) = civil_from_days(days_since_1970);
    format!("{y:04}-{m:02}-{d:02}")
}

fn pow10(scale: u8) -> u64 {
    10u64.pow(u32::from(scale))
}

/// A TDS time: increments of 10^-scale seconds since midnight.
fn split_time(t: tiberius::time::Time) -> (u64, u64, u8) {
    let p = pow10(t.scale());
    (t.increments() / p, t.increments() % p, t.scale())
}

fn shortest_f64(f: f64) -> Result<Value, String> {
    number(&shortest_float(f).ok_or_else(|| format!("non-finite float {f}"))?)
}

/// Renders one value of a column of type `ty`.
pub fn to_json(ty: &SqlType, v: &ColumnData<'_>) -> Result<Value, String> {
    let bad = || format!("unexpected {v:?} for a {ty:?} column");
    if is_null(v) {
        return Ok(Value::Null);
    }
    Ok(match v {
        ColumnData::U8(Some(x)) => Value::from(*x),
        ColumnData::I16(Some(x)) => Value::from(*x),
        ColumnData::I32(Some(x)) => Value::from(*x),
        ColumnData::I64(Some(x)) => Value::from(*x),
        ColumnData::Bit(Some(b)) => Value::Bool(*b),
        ColumnData::F32(Some(f)) => {
            // Shortest digits at single precision, written as the f64 they denote.
            match f
                .is_finite()
                .then(|| format!("{f}").parse::<f64>().ok())
                .flatten()
                .and_then(shortest_float)
            {
                Some(t) => number(&t)?,
                None => return Err(bad()),
            }
        }
        ColumnData::F64(Some(f)) => double(ty, *f).map_err(|e| e.unwrap_or_else(bad))?,
        ColumnData::Numeric(Some(n)) => {
            let text = scaled_decimal(n.value(), u32::from(n.scale()));
            number(&text)?
        }
        ColumnData::String(Some(s)) => Value::String(s.to_string()),
        ColumnData::Xml(Some(x)) => Value::String(x.to_string()),
        ColumnData::Guid(Some(g)) => Value::String(g.hyphenated().to_string().to_uppercase()),
        ColumnData::Binary(Some(b)) => Value::String(base64(b)),
        _ => Value::String(temporal(v).ok_or_else(bad)?),
    })
}

/// Whether `v` is a NULL of any type.
fn is_null(v: &ColumnData<'_>) -> bool {
    matches!(
        v,
        ColumnData::U8(None)
            | ColumnData::I16(None)
            | ColumnData::I32(None)
            | ColumnData::I64(None)
            | ColumnData::F32(None)
            | ColumnData::F64(None)
            | ColumnData::Bit(None)
            | ColumnData::String(None)
            | ColumnData::Guid(None)
            | ColumnData::Binary(None)
            | ColumnData::Numeric(None)
            | ColumnData::Xml(None)
            | ColumnData::DateTime(None)
            | ColumnData::SmallDateTime(None)
            | ColumnData::Time(None)
            | ColumnData::Date(None)
            | ColumnData::DateTime2(None)
            | ColumnData::DateTimeOffset(None)
    )
}

/// A float column's value; a real read through a float-typed path goes back to single
/// precision. `Err(None)` when the text does not parse back.
fn double(ty: &SqlType, f: f64) -> Result<Value, Option<String>> {
    match ty {
        #[allow(clippy::cast_possible_truncation)]
        SqlType::Real => {
            let single = format!("{}", f as f32);
            shortest_f64(single.parse::<f64>().map_err(|_| None)?).map_err(Some)
        }
        SqlType::Money { .. } => Err(Some(
            "money must be selected as decimal (select_expr)".into(),
        )),
        _ => shortest_f64(f).map_err(Some),
    }
}

/// A date or time value as ISO text; `None` for a value that is neither.
fn temporal(v: &ColumnData<'_>) -> Option<String> {
    Some(match v {
        ColumnData::Date(Some(d)) => ymd(i64::from(d.days()) - DAYS_0001_TO_1970),
        ColumnData::Time(Some(t)) => {
            let (secs, frac, scale) = split_time(*t);
            clock(secs, frac, scale)
        }
        ColumnData::DateTime2(Some(dt)) => {
            let (secs, frac, scale) = split_time(dt.time());
            format!(
                "{}T{}",
                ymd(i64::from(dt.date().days()) - DAYS_0001_TO_1970),
                clock(secs, frac, scale)
            )
        }
        ColumnData::DateTimeOffset(Some(dto)) => {
            // TDS carries the UTC instant and the offset; the document holds the instant.
            let dt = dto.datetime2();
            let (secs, frac, scale) = split_time(dt.time());
            format!(
                "{}T{}Z",
                ymd(i64::from(dt.date().days()) - DAYS_0001_TO_1970),
                clock(secs, frac, scale)
            )
        }
        ColumnData::DateTime(Some(dt)) => {
            // 1/300 s ticks; the server shows them rounded to milliseconds (.000/.003/.007).
            let ticks = u64::from(dt.seconds_fragments());
            let ms_total = (ticks * 10 + 1) / 3;
            let (secs, ms) = (ms_total / 1000, ms_total % 1000);
            let days = i64::from(dt.days()) - DAYS_1900_TO_1970
                + i64::try_from(secs / 86_400).unwrap_or(0);
            format!("{}T{}", ymd(days), clock(secs % 86_400, ms, 3))
        }
        ColumnData::SmallDateTime(Some(dt)) => {
            let minutes = u64::from(dt.seconds_fragments());
            format!(
                "{}T{}",
                ymd(i64::from(dt.days()) - DAYS_1900_TO_1970),
                clock(minutes * 60, 0, 0)
            )
        }
        _ => return None,
    })
}

/// Rows of a result set rendered by `columns`, which start at result column `offset`.
pub fn render<C: Typed>(
    columns: &[C],
    row: &tiberius::Row,
    offset: usize,
    table: &str,
) -> Result<Row, SourceError> {
    let mut out = Row::with_capacity(columns.len(), 256 + 16 * columns.len());
    for (i, c) in columns.iter().enumerate() {
        let data = row.get_column_data(offset + i).map_err(|e| {
            Failure::Malformed.error(format!("{table}: reading column {}: {e}", c.name()))
        })?;
        render_into(c.sql_type(), data, &mut out, c.name())
            .map_err(|e| Failure::Malformed.error(format!("{table} column {}: {e}", c.name())))?;
    }
    Ok(out)
}

/// Renders one value straight into `row` under `name`: NULLs, integers, exact numerics,
/// text, GUIDs and binary without building a `Value`; the rest through [`to_json`].
pub fn render_into(
    ty: &SqlType,
    v: &ColumnData<'_>,
    row: &mut Row,
    name: &str,
) -> Result<(), String> {
    match v {
        v if is_null(v) => row.push_null(name),
        ColumnData::U8(Some(x)) => row.push_u64(name, u64::from(*x)),
        ColumnData::I16(Some(x)) => row.push_i64(name, i64::from(*x)),
        ColumnData::I32(Some(x)) => row.push_i64(name, i64::from(*x)),
        ColumnData::I64(Some(x)) => row.push_i64(name, *x),
        ColumnData::Numeric(Some(n)) => {
            row.push_number(name, scaled_decimal(n.value(), u32::from(n.scale())))?;
        }
        ColumnData::String(Some(s)) => row.push_str(name, s),
        ColumnData::Guid(Some(g)) => row.push_str(name, &g.hyphenated().to_string().to_uppercase()),
        ColumnData::Binary(Some(b)) => row.push_str(name, &base64(b)),
        _ => row.push(name, &to_json(ty, v)?),
    }
    Ok(())
}

/// A column as [`render`] reads it: its name and type (the catalog's columns are).
pub trait Typed {
    /// The column's name, as documents carry it.
    fn name(&self) -> &str;
    /// How its values render.
    fn sql_type(&self) -> &SqlType;
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tiberius::numeric::Numeric;
    use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};

    use super::*;

    #[allow(clippy::needless_pass_by_value)]
    /// A value's JSON text; the row path and the `Value` path must agree on it.
    fn render(ty: &SqlType, v: ColumnData<'_>) -> String {
        let by_value = to_json(ty, &v).expect("renders").to_string();
        let mut row = Row::with_capacity(1, 64);
        render_into(ty, &v, &mut row, "v").expect("renders into a row");
        assert_eq!(row.get_raw("v"), Some(by_value.as_str()), "{ty:?} {v:?}");
        by_value
    }

    fn text() -> SqlType {
        SqlType::Text {
            collation: Some("SQL_Latin1_General_CP1_CI_AS".into()),
            national: true,
        }
    }

    #[test]
    fn the_catalog_names_map_to_types() {
        assert_eq!(SqlType::from_catalog("BIGINT", 0, None), SqlType::Int);
        assert_eq!(
            SqlType::from_catalog("numeric", 4, None),
            SqlType::Decimal { scale: 4 }
        );
        assert_eq!(
            SqlType::from_catalog("smallmoney", 4, None),
            SqlType::Money { small: true }
        );
        assert_eq!(
            SqlType::from_catalog("rowversion", 0, None),
            SqlType::Binary
        );
        assert_eq!(
            SqlType::from_catalog("sysname", 0, Some("Latin1_General_BIN2")),
            SqlType::Text {
                collation: Some("Latin1_General_BIN2".into()),
                national: true
            }
        );
        assert_eq!(
            SqlType::from_catalog("my_clr_type", 0, None),
            SqlType::Unsupported("my_clr_type".into())
        );
    }

    #[test]
    fn select_expressions_read_exact_values() {
        assert_eq!(
            SqlType::Money { small: false }.select_expr("[m]", "[m]"),
            "CAST([m] AS decimal(19,4)) AS [m]"
        );
        assert_eq!(
            SqlType::Spatial.select_expr("[g]", "[g]"),
            "[g].STAsBinary() AS [g]"
        );
        assert_eq!(
            SqlType::HierarchyId.select_expr("[h]", "[h]"),
            "[h].ToString() AS [h]"
        );
        assert_eq!(SqlType::Int.select_expr("[i]", "[i]"), "[i] AS [i]");
    }

    #[test]
    fn integers_bits_and_exact_decimals() {
        assert_eq!(render(&SqlType::Int, ColumnData::U8(Some(255))), "255");
        assert_eq!(
            render(&SqlType::Int, ColumnData::I16(Some(-32768))),
            "-32768"
        );
        assert_eq!(
            render(&SqlType::Int, ColumnData::I32(Some(i32::MIN))),
            "-2147483648"
        );
        assert_eq!(
            render(&SqlType::Int, ColumnData::I64(Some(i64::MAX))),
            "9223372036854775807"
        );
        assert_eq!(render(&SqlType::Bit, ColumnData::Bit(Some(true))), "true");
        let d = SqlType::Decimal { scale: 2 };
        assert_eq!(
            render(
                &d,
                ColumnData::Numeric(Some(Numeric::new_with_scale(150, 2)))
            ),
            "1.50"
        );
        assert_eq!(
            render(
                &d,
                ColumnData::Numeric(Some(Numeric::new_with_scale(-5, 2)))
            ),
            "-0.05"
        );
        let wide = SqlType::Decimal { scale: 10 };
        assert_eq!(
            render(
                &wide,
                ColumnData::Numeric(Some(Numeric::new_with_scale(
                    99_999_999_999_999_999_999_999_999_999_999_999_999,
                    10
                )))
            ),
            "9999999999999999999999999999.9999999999"
        );
        // money, read through its decimal cast, keeps 4 digits and every integer digit.
        assert_eq!(
            render(
                &SqlType::Money { small: false },
                ColumnData::Numeric(Some(Numeric::new_with_scale(9_223_372_036_854_775_807, 4)))
            ),
            "922337203685477.5807"
        );
        // ...and a money value that arrives as a float is refused, never rounded.
        assert!(
            to_json(
                &SqlType::Money { small: false },
                &ColumnData::F64(Some(1.5))
            )
            .is_err()
        );
    }

    #[test]
    fn floats_are_shortest_round_trip() {
        assert_eq!(render(&SqlType::Float, ColumnData::F64(Some(0.1))), "0.1");
        assert_eq!(
            render(&SqlType::Float, ColumnData::F64(Some(-2.5e-300))),
            "-2.5e-300"
        );
        assert_eq!(
            render(&SqlType::Real, ColumnData::F32(Some(3.4e38))),
            "3.4e+38"
        );
        assert_eq!(render(&SqlType::Real, ColumnData::F32(Some(1.1))), "1.1");
        assert_eq!(
            render(&SqlType::Real, ColumnData::F64(Some(f64::from(1.1f32)))),
            "1.1"
        );
        assert_eq!(render(&SqlType::Float, ColumnData::F64(Some(3.0))), "3");
    }

    #[test]
    fn dates_and_times_in_iso_form() {
        // 2024-02-29 is day 738_944 since 0001-01-01.
        assert_eq!(
            render(&SqlType::Date, ColumnData::Date(Some(Date::new(738_944)))),
            "\"2024-02-29\""
        );
        assert_eq!(
            render(&SqlType::Date, ColumnData::Date(Some(Date::new(0)))),
            "\"0001-01-01\""
        );
        assert_eq!(
            render(&SqlType::Date, ColumnData::Date(Some(Date::new(3_652_058)))),
            "\"9999-12-31\""
        );
        // time(7): 13:45:30.1234567
        let t = Time::new(((13 * 3600 + 45 * 60 + 30) * 10_000_000) + 1_234_567, 7);
        assert_eq!(
            render(&SqlType::Time { scale: 7 }, ColumnData::Time(Some(t))),
            "\"13:45:30.1234567\""
        );
        let t0 = Time::new(86_399, 0);
        assert_eq!(
            render(&SqlType::Time { scale: 0 }, ColumnData::Time(Some(t0))),
            "\"23:59:59\""
        );
        // datetime2(3)
        let dt2 = DateTime2::new(Date::new(738_944), Time::new(3_600_000 + 5, 3));
        assert_eq!(
            render(
                &SqlType::DateTime2 { scale: 3 },
                ColumnData::DateTime2(Some(dt2))
            ),
            "\"2024-02-29T01:00:00.005\""
        );
        // datetimeoffset: TDS holds UTC; the document is the instant with Z.
        let dto = DateTimeOffset::new(
            DateTime2::new(Date::new(738_944), Time::new(23 * 3600 * 10 + 5, 1)),
            330,
        );
        assert_eq!(
            render(
                &SqlType::DateTimeOffset { scale: 1 },
                ColumnData::DateTimeOffset(Some(dto))
            ),
            "\"2024-02-29T23:00:00.5Z\""
        );
    }

    #[test]
    fn legacy_datetimes_round_as_the_server_shows_them() {
        // 1900-01-01 is day 0; ticks are 1/300 s.
        let at = |days, ticks| ColumnData::DateTime(Some(DateTime::new(days, ticks)));
        for (days, ticks, shown) in [
            (0, 0, "1900-01-01T00:00:00.000"),
            (0, 1, "1900-01-01T00:00:00.003"),
            (0, 2, "1900-01-01T00:00:00.007"),
            (0, 300, "1900-01-01T00:00:01.000"),
            // 23:59:59.997 is the last tick of a day.
            (45_350, 25_919_999, "2024-03-01T23:59:59.997"),
            // Before 1900 the day count is negative.
            (-53_690, 0, "1753-01-01T00:00:00.000"),
        ] {
            assert_eq!(
                render(&SqlType::DateTime, at(days, ticks)),
                format!("\"{shown}\""),
                "{days} days, {ticks} ticks"
            );
        }
        let small = ColumnData::SmallDateTime(Some(SmallDateTime::new(45_350, 61)));
        assert_eq!(
            render(&SqlType::SmallDateTime, small),
            "\"2024-03-01T01:01:00\""
        );
    }

    #[test]
    fn text_binary_guid_xml_and_null() {
        assert_eq!(
            render(&text(), ColumnData::String(Some(Cow::Borrowed("héllo 🙂")))),
            "\"héllo 🙂\""
        );
        assert_eq!(
            render(
                &SqlType::Binary,
                ColumnData::Binary(Some(Cow::Borrowed(&[0, 1, 254, 255])))
            ),
            "\"AAH+/w==\""
        );
        let g = tiberius::Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").expect("uuid");
        assert_eq!(
            render(&SqlType::Guid, ColumnData::Guid(Some(g))),
            "\"6F9619FF-8B86-D011-B42D-00C04FC964FF\""
        );
        for null in [
            ColumnData::I32(None),
            ColumnData::String(None),
            ColumnData::DateTimeOffset(None),
            ColumnData::Numeric(None),
        ] {
            assert_eq!(render(&SqlType::Int, null), "null");
        }
    }

    #[test]
    fn large_value_columns_are_the_ones_cdc_may_leave_null() {
        assert!(text().is_large_value(-1));
        assert!(text().is_large_value(16));
        assert!(!text().is_large_value(100));
        assert!(SqlType::Xml.is_large_value(-1));
        assert!(SqlType::Binary.is_large_value(-1));
        assert!(!SqlType::Int.is_large_value(4));
    }
}
