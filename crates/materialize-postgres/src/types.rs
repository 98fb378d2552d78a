//! The type mapping: a source column's type, as its database spells it, to the
//! destination column's PostgreSQL type, and how a document's JSON value becomes it.
//!
//! | source | source type | PostgreSQL type | value |
//! |---|---|---|---|
//! | PostgreSQL | any built-in or known type | the same type, modifiers kept | text input of `to_jsonb`'s rendering; arrays and composites through `jsonb_populate_record`; json/jsonb as JSON |
//! | PostgreSQL | a type the destination does not have (a user enum, a domain) | `text`, with a warning | its text |
//! | MySQL/MariaDB | TINYINT, SMALLINT (and TINYINT UNSIGNED) | smallint | number |
//! | | SMALLINT UNSIGNED, MEDIUMINT, INT | integer | number |
//! | | MEDIUMINT UNSIGNED, INT UNSIGNED, BIGINT | bigint | number |
//! | | BIGINT UNSIGNED, BIT(n) | numeric(20,0) | number, every digit |
//! | | DECIMAL(p,s) | numeric(p,s) | number, every digit |
//! | | FLOAT, DOUBLE | double precision | shortest round-trip number |
//! | | YEAR | smallint | number |
//! | | DATE | date | `YYYY-MM-DD`; a zero month or day (`2020-00-00`) NULL |
//! | | DATETIME(n) | timestamp(n) | no zone; a zero month or day NULL |
//! | | TIMESTAMP(n) | timestamptz(n) | UTC |
//! | | TIME(n) | interval | `[-]HHH:MM:SS[.f]`: TIME's range (±838 h) does not fit `time` |
//! | | CHAR, VARCHAR(n) | varchar(n) (CHAR: text, since CHAR drops trailing spaces) | string |
//! | | TEXT family, ENUM, SET | text | string (`"a,b"` for SET) |
//! | | BINARY, VARBINARY, BLOB family, GEOMETRY | bytea | base64 decoded |
//! | | JSON | jsonb | the JSON value |
//! | | UUID (MariaDB) | uuid | string |
//! | | INET4, INET6 (MariaDB) | inet | string |
//! | SQL Server | INT family, BIT | the integer of the same width, boolean | number |
//! | | DECIMAL/NUMERIC(p,s), MONEY | numeric | number |
//! | | DATETIME2/DATETIME/SMALLDATETIME, DATETIMEOFFSET | timestamp, timestamptz | ISO 8601 |
//! | | (N)CHAR/(N)VARCHAR/(N)TEXT | text | string |
//! | | BINARY/VARBINARY/IMAGE | bytea | base64 decoded |
//! | | UNIQUEIDENTIFIER | uuid | string |
//! | any | anything else | jsonb, with a warning | the JSON value, kept whole |
//!
//! Nothing is lost: each PostgreSQL type holds every value of its source type, except
//! MySQL's dates with a zero month or day, which no PostgreSQL type holds: they land as
//! NULL (the collection keeps them as written).

/// How a document's JSON value becomes the column's value (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// The JSON string's text, or the number's, through the type's text input.
    Text,
    /// The JSON value itself (json and jsonb columns); JSON `null` is SQL NULL.
    Json,
    /// Through `jsonb_populate_record` (arrays, composites).
    Record,
    /// A base64 string decoded to bytes.
    Base64,
    /// [`Conversion::Text`] for a MySQL/MariaDB date or time stamp, except that a value
    /// with a zero month or day (`2020-00-00`, which MySQL keeps without `NO_ZERO_IN_DATE`
    /// and no PostgreSQL type holds) is NULL, as the zero date is at the source. The
    /// collection keeps the value as the source wrote it.
    MysqlDate,
}

/// Whether a date's text (`YYYY-MM-DD...`) has a zero month or day.
pub fn zero_in_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && (&b[5..7] == b"00" || &b[8..10] == b"00")
}

/// A destination column's type and conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The PostgreSQL type, as written in `CREATE TABLE`.
    pub pg_type: String,
    /// How values convert.
    pub conversion: Conversion,
    /// Set when the mapping fell back to a catch-all type: why.
    pub warning: Option<String>,
}

fn mapped(pg_type: &str, conversion: Conversion) -> Mapped {
    Mapped {
        pg_type: pg_type.to_string(),
        conversion,
        warning: None,
    }
}

/// The mapping of `source_type` from `connector`. `known_to_destination` says whether a
/// PostgreSQL type name exists in the destination (asked of the server).
pub fn map(connector: &str, source_type: &str, known_to_destination: bool) -> Mapped {
    let t = source_type.trim().to_ascii_lowercase();
    let fallback = |why: String| Mapped {
        pg_type: "jsonb".into(),
        conversion: Conversion::Json,
        warning: Some(why),
    };
    if connector.contains("postgres") {
        if !known_to_destination {
            return Mapped {
                pg_type: "text".into(),
                conversion: Conversion::Text,
                warning: Some(format!(
                    "type {source_type:?} does not exist in the destination; the column is text (create the type there and rebuild the table to keep it)"
                )),
            };
        }
        let conversion = if t.ends_with("[]") {
            Conversion::Record
        } else if t == "json" || t == "jsonb" {
            Conversion::Json
        } else {
            Conversion::Text
        };
        return Mapped {
            pg_type: source_type.to_string(),
            conversion,
            warning: None,
        };
    }
    if connector.contains("mysql") || connector.contains("mariadb") {
        return map_mysql(&t).unwrap_or_else(|| {
            fallback(format!(
                "MySQL type {source_type:?} has no mapping; the column is jsonb"
            ))
        });
    }
    if connector.contains("sqlserver") {
        return map_sqlserver(&t).unwrap_or_else(|| {
            fallback(format!(
                "SQL Server type {source_type:?} has no mapping; the column is jsonb"
            ))
        });
    }
    fallback(format!(
        "connector {connector:?} has no type mapping; the column {source_type:?} is jsonb"
    ))
}

/// Whether a column of PostgreSQL type `from` can become `to` with every value kept, both
/// as `format_type` writes them: `to` is the same, or a wider integer, a `numeric` with
/// as many digits before and after the point, `double precision` for `real`, a longer or
/// unbounded `character varying` (or `text`), a longer `bit varying`, a time stamp or
/// time of the same zone with as many fractional digits. Anything else (a narrower type,
/// another kind) is not.
pub fn widens(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    // The modifiers, as numbers (none when absent or not all numbers).
    let modifiers = |t: &str| -> Option<Vec<u32>> {
        parts(t)
            .1?
            .split(',')
            .map(|n| n.trim().parse().ok())
            .collect()
    };
    let (fb, fa) = (base_name(from), modifiers(from));
    let (tb, ta) = (base_name(to), modifiers(to));
    let integer_digits = |t: &str| match t {
        "smallint" => Some(5),
        "integer" => Some(10),
        "bigint" => Some(19),
        _ => None,
    };
    let arg = |a: &Option<Vec<u32>>, i: usize| a.as_ref().and_then(|a| a.get(i).copied());
    // An unbounded `to` holds everything; a bounded one, what is no longer than it.
    let longer = |i: usize| match (arg(&fa, i), arg(&ta, i)) {
        (_, None) => ta.is_none(),
        (Some(f), Some(t)) => f <= t,
        (None, Some(_)) => false,
    };
    match (fb.as_str(), tb.as_str()) {
        (f, t) if integer_digits(f).is_some() && integer_digits(t).is_some() => {
            integer_digits(f) <= integer_digits(t)
        }
        (f, "numeric") if integer_digits(f).is_some() => match (arg(&ta, 0), arg(&ta, 1)) {
            (None, _) => true,
            (Some(p), s) => {
                i64::from(p) - i64::from(s.unwrap_or(0))
                    >= i64::from(integer_digits(f).unwrap_or(u32::MAX))
            }
        },
        ("real", "double precision") | ("character varying", "text") => true,
        ("character varying", "character varying") | ("bit varying", "bit varying") => longer(0),
        ("numeric", "numeric") => match (arg(&fa, 0), arg(&ta, 0)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(fp), Some(tp)) => {
                let (fs, ts) = (arg(&fa, 1).unwrap_or(0), arg(&ta, 1).unwrap_or(0));
                ts >= fs && i64::from(tp) - i64::from(ts) >= i64::from(fp) - i64::from(fs)
            }
        },
        (f, t)
            if f == t
                && (f.starts_with("timestamp") || f.starts_with("time ") || f == "interval") =>
        {
            longer(0)
        }
        _ => false,
    }
}

/// `pg_type` lowercased, without typmods, its words single-spaced.
pub(crate) fn base_name(pg_type: &str) -> String {
    let mut name = String::with_capacity(pg_type.len());
    let mut depth = 0;
    for c in pg_type.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => name.push(c.to_ascii_lowercase()),
            _ => {}
        }
    }
    name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `name(args) rest` split into the name, the argument text and whether `unsigned` follows.
fn parts(t: &str) -> (&str, Option<&str>, bool) {
    let unsigned = t.contains("unsigned");
    let name_end = t.find(['(', ' ']).unwrap_or(t.len());
    let args = t.find('(').and_then(|open| {
        t[open + 1..]
            .find(')')
            .map(|close| &t[open + 1..open + 1 + close])
    });
    (&t[..name_end], args, unsigned)
}

fn map_mysql(t: &str) -> Option<Mapped> {
    use Conversion::{Base64, Json, MysqlDate, Text};
    let (name, args, unsigned) = parts(t);
    let fraction = |base: &str| match args {
        Some(n) if !n.is_empty() => format!("{base}({n})"),
        _ => base.to_string(),
    };
    Some(match name {
        "tinyint" => mapped("smallint", Text),
        "smallint" if unsigned => mapped("integer", Text),
        "smallint" => mapped("smallint", Text),
        "mediumint" | "int" | "integer" if unsigned => mapped("bigint", Text),
        "mediumint" | "int" | "integer" => mapped("integer", Text),
        "bigint" if unsigned => mapped("numeric(20,0)", Text),
        "bigint" => mapped("bigint", Text),
        "bit" => mapped("numeric(20,0)", Text),
        "decimal" | "numeric" | "dec" | "fixed" => mapped(&fraction("numeric"), Text),
        "float" | "double" | "real" => mapped("double precision", Text),
        "year" => mapped("smallint", Text),
        "date" => mapped("date", MysqlDate),
        "datetime" => mapped(&fraction("timestamp"), MysqlDate),
        "timestamp" => mapped(&fraction("timestamptz"), MysqlDate),
        "time" => mapped("interval", Text),
        "varchar" => mapped(&fraction("varchar"), Text),
        "char" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            mapped("text", Text)
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => mapped("bytea", Base64),
        "json" => mapped("jsonb", Json),
        "uuid" => mapped("uuid", Text),
        "inet4" | "inet6" => mapped("inet", Text),
        _ => return None,
    })
}

fn map_sqlserver(t: &str) -> Option<Mapped> {
    use Conversion::{Base64, Text};
    let (name, args, _) = parts(t);
    Some(match name {
        "tinyint" | "smallint" => mapped("smallint", Text),
        "int" => mapped("integer", Text),
        "bigint" => mapped("bigint", Text),
        "bit" => mapped("boolean", Text),
        "decimal" | "numeric" => mapped(
            &args.map_or("numeric".to_string(), |a| format!("numeric({a})")),
            Text,
        ),
        "money" | "smallmoney" => mapped("numeric(19,4)", Text),
        "float" | "real" => mapped("double precision", Text),
        "date" => mapped("date", Text),
        "datetime2" | "datetime" | "smalldatetime" => mapped("timestamp", Text),
        "datetimeoffset" => mapped("timestamptz", Text),
        "time" => mapped("time", Text),
        "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "xml" => {
            mapped("text", Text)
        }
        "binary" | "varbinary" | "image" | "rowversion" | "timestamp" => mapped("bytea", Base64),
        "uniqueidentifier" => mapped("uuid", Text),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn widening_keeps_every_value_and_nothing_else_passes() {
        use super::widens;
        for (from, to) in [
            ("character varying(5)", "character varying(20)"),
            ("character varying(5)", "character varying"),
            ("character varying(5)", "text"),
            ("numeric(6,2)", "numeric(12,4)"),
            ("numeric(6,2)", "numeric"),
            ("integer", "bigint"),
            ("smallint", "integer"),
            ("integer", "numeric(10,0)"),
            ("bigint", "numeric"),
            ("real", "double precision"),
            (
                "timestamp(3) without time zone",
                "timestamp without time zone",
            ),
            ("timestamp(3) with time zone", "timestamp(6) with time zone"),
            ("bit varying(3)", "bit varying(8)"),
            ("text", "text"),
        ] {
            assert!(widens(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            ("character varying(20)", "character varying(5)"),
            ("character varying", "character varying(5)"),
            ("text", "character varying(50)"),
            ("numeric(12,4)", "numeric(12,2)"),
            ("numeric(6,2)", "numeric(6,3)"),
            ("numeric", "numeric(30,10)"),
            ("bigint", "integer"),
            ("bigint", "numeric(18,0)"),
            ("integer", "text"),
            ("double precision", "real"),
            ("timestamp without time zone", "timestamp with time zone"),
            (
                "timestamp(6) without time zone",
                "timestamp(3) without time zone",
            ),
            ("character(5)", "character(10)"),
        ] {
            assert!(!widens(from, to), "{from} -> {to}");
        }
    }

    use super::*;

    fn pg(connector: &str, t: &str) -> String {
        map(connector, t, true).pg_type
    }

    #[test]
    fn dates_with_a_zero_month_or_day_are_found() {
        for zero in [
            "2020-00-00",
            "2020-00-15",
            "2020-01-00",
            "2020-01-00 10:00:00.5",
        ] {
            assert!(zero_in_date(zero), "{zero}");
        }
        for fine in [
            "2020-01-01",
            "2020-10-10 00:00:00",
            "0000",
            "",
            "2020-1-0",
            "20200-01-01",
        ] {
            assert!(!zero_in_date(fine), "{fine}");
        }
    }

    #[test]
    fn postgres_keeps_the_type_and_others_map_without_loss() {
        assert_eq!(pg("source-postgres", "numeric(12,3)"), "numeric(12,3)");
        assert_eq!(
            map("source-postgres", "integer[]", true).conversion,
            Conversion::Record
        );
        let unknown = map("source-postgres", "mood", false);
        assert_eq!(unknown.pg_type, "text");
        assert!(unknown.warning.is_some());
        for (my, want) in [
            ("decimal(10,2)", "numeric(10,2)"),
            ("bigint(20) unsigned", "numeric(20,0)"),
            ("bigint unsigned", "numeric(20,0)"),
            ("int(10) unsigned", "bigint"),
            ("datetime(6)", "timestamp(6)"),
            ("datetime", "timestamp"),
            ("timestamp(3)", "timestamptz(3)"),
            ("json", "jsonb"),
            ("varbinary(16)", "bytea"),
            ("time(2)", "interval"),
            ("enum('a','b')", "text"),
            ("varchar(40)", "varchar(40)"),
            ("tinyint(1)", "smallint"),
            ("year", "smallint"),
            ("uuid", "uuid"),
        ] {
            assert_eq!(pg("source-mysql", my), want, "{my}");
        }
        assert_eq!(
            map("source-mysql", "blob", true).conversion,
            Conversion::Base64
        );
        assert_eq!(pg("source-sqlserver", "decimal(9,2)"), "numeric(9,2)");
        assert_eq!(pg("source-sqlserver", "datetimeoffset"), "timestamptz");
        let odd = map("source-mysql", "vector(3)", true);
        assert_eq!(
            (odd.pg_type.as_str(), odd.conversion),
            ("jsonb", Conversion::Json)
        );
    }
}
