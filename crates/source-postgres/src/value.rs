//! Values: PostgreSQL's text output turned into exactly what `to_jsonb(value)` renders in a
//! `TimeZone = 'UTC'` session (DESIGN.md §5).
//!
//! `to_jsonb` sorts every type into a few categories, and so does [`Kind`]:
//!
//! | category | to_jsonb renders | from the text form |
//! |---|---|---|
//! | bool | `true` / `false` | `t` / `f` |
//! | integers | a number | as is |
//! | numeric | a number with every digit; `NaN`, `Infinity` as strings | as is |
//! | float4/8 | the value *as a numeric*: plain decimal, no exponent; NaN, ±Infinity as strings | exponent expanded |
//! | json, jsonb | the document, as jsonb normalises it | parsed; numbers as numeric |
//! | date | ISO date | as is |
//! | timestamp | `YYYY-MM-DDTHH:MM:SS[.f]` | space → `T` |
//! | timestamptz | `…T…+00:00` | space → `T`, `+00` → `+00:00` |
//! | arrays | a JSON array of the elements (bounds dropped) | parsed, elements converted |
//! | everything else | its text output as a string | as is |
//!
//! Composite types and extension base types (which `to_jsonb` may render through a cast to
//! json) are [`Kind::AskServer`]: the stream asks the server to render them. Backfill
//! chunks are read in the text protocol and converted here too (`rows`), so a backfilled
//! and a streamed row of the same data are the same document; the suite compares both
//! with `to_jsonb` type by type.

use backfill_core::source::Row;
use serde_json::{Map, Number, Value};

/// How a type's text form becomes JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`.
    Bool,
    /// `smallint`, `integer`, `bigint`.
    Int,
    /// `real`, `double precision`.
    Float,
    /// `numeric`.
    Numeric,
    /// `json`, `jsonb`.
    Json,
    /// `date`.
    Date,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    Timestamptz,
    /// An array of the element kind.
    Array(Box<Kind>),
    /// A string: the text output as is.
    Text,
    /// Rendered by the server (`SELECT to_jsonb($1::text::<type>)`).
    AskServer,
}

impl Kind {
    /// The kind of a built-in type OID, or `None` when the catalog must say.
    pub fn builtin(oid: u32) -> Option<Kind> {
        Some(match oid {
            16 => Kind::Bool,
            20 | 21 | 23 => Kind::Int,
            700 | 701 => Kind::Float,
            1700 => Kind::Numeric,
            114 | 3802 => Kind::Json,
            1082 => Kind::Date,
            1114 => Kind::Timestamp,
            1184 => Kind::Timestamptz,
            // int2vector and oidvector: arrays to `to_jsonb`, space-separated in their text.
            22 | 30 => Kind::AskServer,
            1000 => Kind::Array(Box::new(Kind::Bool)),
            1005 | 1007 | 1016 => Kind::Array(Box::new(Kind::Int)),
            1021 | 1022 => Kind::Array(Box::new(Kind::Float)),
            1231 => Kind::Array(Box::new(Kind::Numeric)),
            199 | 3807 => Kind::Array(Box::new(Kind::Json)),
            1182 => Kind::Array(Box::new(Kind::Date)),
            1115 => Kind::Array(Box::new(Kind::Timestamp)),
            1185 => Kind::Array(Box::new(Kind::Timestamptz)),
            25 | 1043 | 1042 | 18 | 19 | 2950 | 17 | 1083 | 1266 | 1186 | 26 | 869 | 650 | 829
            | 774 | 142 | 790 | 1560 | 1562 | 3614 | 3615 => Kind::Text,
            1009 | 1015 | 1014 | 1002 | 1003 | 2951 | 1001 | 1183 | 1270 | 1187 | 1028 | 1041
            | 651 | 1040 | 143 | 791 | 1561 | 1563 => Kind::Array(Box::new(Kind::Text)),
            _ => return None,
        })
    }

    /// Whether converting needs the server.
    pub fn needs_server(&self) -> bool {
        match self {
            Kind::AskServer => true,
            Kind::Array(e) => e.needs_server(),
            _ => false,
        }
    }
}

/// Converts one value's text form. `Err` carries a description of the malformed input; the
/// caller turns it into a definite error (a misrendered value is never emitted).
pub fn convert(kind: &Kind, text: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(format!("bad boolean {text:?}")),
        },
        // The common case, without the JSON number parser.
        Kind::Int => Value::Number(match text.parse::<i64>() {
            Ok(i) => Number::from(i),
            Err(_) => number(text)?,
        }),
        Kind::Numeric => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.into()),
            _ => Value::Number(number(text)?),
        },
        Kind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.into()),
            _ => Value::Number(number(&plain_decimal(text)?)?),
        },
        Kind::Json => {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("bad json: {e}"))?;
            normalize_json_numbers(v)?
        }
        Kind::Date | Kind::Text => Value::String(text.into()),
        Kind::Timestamp => Value::String(timestamp(text)),
        Kind::Timestamptz => Value::String(timestamptz(text)),
        Kind::Array(element) => array(element, text)?,
        Kind::AskServer => return Err("this type is rendered by the server".into()),
    })
}

/// Renders one value's text form into `row` as column `name`: what [`convert`] returns,
/// written straight into the row's text for the common kinds, without a `Value`.
pub fn render(kind: &Kind, text: &str, row: &mut Row, name: &str) -> Result<(), String> {
    match kind {
        Kind::Int => row.push_number(name, text),
        Kind::Numeric | Kind::Float if matches!(text, "NaN" | "Infinity" | "-Infinity") => {
            row.push_str(name, text);
            Ok(())
        }
        Kind::Numeric => row.push_number(name, text),
        Kind::Float => row.push_number(name, &plain_decimal(text)?),
        Kind::Date | Kind::Text => {
            row.push_str(name, text);
            Ok(())
        }
        Kind::Timestamp => {
            row.push_str_parts(name, &timestamp_parts(text, false));
            Ok(())
        }
        Kind::Timestamptz => {
            row.push_str_parts(name, &timestamp_parts(text, true));
            Ok(())
        }
        Kind::Json => row
            .push_json(name, text, jsonb_number)
            .map_err(|e| format!("bad json: {e}")),
        Kind::Bool | Kind::Array(_) | Kind::AskServer => {
            row.push(name, &convert(kind, text)?);
            Ok(())
        }
    }
}

/// Pushes a value the server rendered with `to_jsonb(...)::text` (a [`Kind::AskServer`]
/// type), compacted as the other JSON values are: the stream and the backfill both
/// write it here, so the two print the same bytes.
pub fn push_server_json(row: &mut Row, name: &str, text: &str) -> Result<(), String> {
    row.push_json(name, text, jsonb_number)
        .map_err(|e| format!("bad JSON from to_jsonb: {e}"))
}

/// A number in a JSON document as jsonb stores it: as numeric, so `1e2` is `100`.
fn jsonb_number(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if text.contains(['e', 'E']) {
        out.extend_from_slice(plain_decimal(text)?.as_bytes());
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    Ok(())
}

fn number(text: &str) -> Result<Number, String> {
    serde_json::from_str::<Number>(text).map_err(|_| format!("bad number {text:?}"))
}

/// A number's text (possibly with an exponent) as `numeric_in` then `numeric_out` print it:
/// plain decimal, display scale `max(0, fraction digits - exponent)`, no negative zero.
pub fn plain_decimal(text: &str) -> Result<String, String> {
    let bad = || format!("bad number {text:?}");
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).collect();
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| bad())?;
    // value = digits × 10^(exponent − frac_len); `point` digits stand before the point.
    let scale = (frac_len - exponent).max(0);
    let point = i64::try_from(int_part.len()).map_err(|_| bad())? + exponent;
    let digit = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .map_or('0', |&d| d as char)
    };
    let int_digits: String = (0..point.max(0)).map(digit).collect();
    let frac_digits: String = (point..point + scale).map(digit).collect();
    let int_digits = int_digits.trim_start_matches('0');
    let int_digits = if int_digits.is_empty() {
        "0"
    } else {
        int_digits
    };
    let zero = int_digits == "0" && frac_digits.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(int_digits.len() + frac_digits.len() + 2);
    if negative && !zero {
        out.push('-');
    }
    out.push_str(int_digits);
    if !frac_digits.is_empty() {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Ok(out)
}

/// jsonb stores numbers as numeric: `1e2` becomes `100`, `3.0E-2` becomes `0.030`.
fn normalize_json_numbers(v: Value) -> Result<Value, String> {
    Ok(match v {
        Value::Number(n) => {
            let s = n.to_string();
            if s.contains(['e', 'E']) {
                Value::Number(number(&plain_decimal(&s)?)?)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(normalize_json_numbers)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => {
            let mut m = Map::with_capacity(o.len());
            for (k, v) in o {
                m.insert(k, normalize_json_numbers(v)?);
            }
            Value::Object(m)
        }
        other => other,
    })
}

/// `2020-01-01 12:00:00.5` → `2020-01-01T12:00:00.5` (`infinity` and BC suffixes kept).
fn timestamp(text: &str) -> String {
    timestamp_parts(text, false).concat()
}

/// `2020-01-01 10:00:00.5+00` → `2020-01-01T10:00:00.5+00:00`; `… BC` kept at the end.
fn timestamptz(text: &str) -> String {
    timestamp_parts(text, true).concat()
}

/// A timestamp's text as documents spell it, in parts (so the row can take it without a
/// string of its own): the date, `T` for the space before the time, the time, `:00`
/// where a zone offset has hours only (`tz`), and ` BC`.
fn timestamp_parts(text: &str, tz: bool) -> [&str; 5] {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) if tz => (b, " BC"),
        _ => (text, ""),
    };
    let Some(space) = body
        .bytes()
        .position(|b| b == b' ')
        .filter(|&i| body.as_bytes().get(i + 1).is_some_and(u8::is_ascii_digit))
    else {
        return [body, "", "", "", bc];
    };
    let (date, time) = (&body[..space], &body[space + 1..]);
    // The zone offset follows the time: its sign is the last '+' or '-' in it.
    let hours_only = tz
        && time
            .bytes()
            .rposition(|b| b == b'+' || b == b'-')
            .is_some_and(|sign| time.len() - sign - 1 == 2);
    [date, "T", time, if hours_only { ":00" } else { "" }, bc]
}

/// Parses an array's text form (`{1,2,NULL}`, `{{"a b",c}}`, `[2:3]={1,2}`).
fn array(element: &Kind, text: &str) -> Result<Value, String> {
    let body = match text.find('=') {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let bytes = body.as_bytes();
    let mut pos = 0;
    let v = parse_array(element, body, bytes, &mut pos)?;
    if pos != bytes.len() {
        return Err(format!("trailing characters in array {text:?}"));
    }
    Ok(v)
}

fn parse_array(element: &Kind, text: &str, b: &[u8], pos: &mut usize) -> Result<Value, String> {
    let bad = || format!("bad array {text:?}");
    if b.get(*pos) != Some(&b'{') {
        return Err(bad());
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Ok(Value::Array(items));
    }
    loop {
        match b.get(*pos) {
            Some(b'{') => items.push(parse_array(element, text, b, pos)?),
            Some(b'"') => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(*pos) {
                        Some(b'\\') => {
                            s.push(*b.get(*pos + 1).ok_or_else(bad)?);
                            *pos += 2;
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            *pos += 1;
                        }
                        None => return Err(bad()),
                    }
                }
                let s = String::from_utf8(s).map_err(|_| bad())?;
                items.push(convert(element, &s)?);
            }
            Some(_) => {
                let start = *pos;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    *pos += 1;
                }
                let raw = text[start..*pos].trim();
                items.push(if raw.eq_ignore_ascii_case("NULL") {
                    Value::Null
                } else {
                    convert(element, raw)?
                });
            }
            None => return Err(bad()),
        }
        match b.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                return Ok(Value::Array(items));
            }
            _ => return Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(kind: Kind, text: &str) -> String {
        convert(&{ kind }, text).unwrap().to_string()
    }

    #[test]
    fn rendering_into_a_row_writes_what_convert_returns() {
        let cases: &[(Kind, &str)] = &[
            (Kind::Int, "-9223372036854775808"),
            (Kind::Int, "42"),
            (Kind::Numeric, "12345678901234567890.000100"),
            (Kind::Numeric, "NaN"),
            (Kind::Float, "1.5e-7"),
            (Kind::Float, "-Infinity"),
            (Kind::Bool, "t"),
            (Kind::Text, "tab\there \"quoted\" \\ é"),
            (Kind::Date, "2020-01-01"),
            (Kind::Timestamp, "2020-01-01 12:00:00.5"),
            (Kind::Timestamptz, "2020-01-01 10:00:00.123456+00"),
            (Kind::Timestamptz, "infinity"),
            (
                Kind::Json,
                r#"{"a": 1, "b": [1, 2.50, "x  y", "q\"  ,"], "c": {"d": null, "e": 1e2}, "": true}"#,
            ),
            (Kind::Json, r#""just a string""#),
            (Kind::Json, "-0.5"),
            (Kind::Json, r#"{"b":1,"a":1e2,"a":3.0E-2}"#),
            (Kind::Array(Box::new(Kind::Int)), "{{1,2},{3,NULL}}"),
        ];
        for (kind, text) in cases {
            let mut row = Row::new();
            render(kind, text, &mut row, "v").unwrap();
            let expected = convert(kind, text).unwrap();
            assert_eq!(
                row.get_raw("v").unwrap(),
                expected.to_string(),
                "{kind:?} {text}"
            );
        }
        for (kind, text) in [
            (Kind::Int, "12a"),
            (Kind::Numeric, "1.2.3"),
            (Kind::Json, r#"{"a": 1"#),
            (Kind::Json, r#"{"a": tru}"#),
        ] {
            let mut row = Row::new();
            assert!(
                render(&kind, text, &mut row, "v").is_err(),
                "{kind:?} {text}"
            );
            assert!(row.is_empty());
        }
    }

    #[test]
    fn numbers_render_as_numeric() {
        assert_eq!(
            plain_decimal("1e+100").unwrap(),
            format!("1{}", "0".repeat(100))
        );
        assert_eq!(plain_decimal("1.5e-07").unwrap(), "0.00000015");
        assert_eq!(plain_decimal("3.0E-2").unwrap(), "0.030");
        assert_eq!(
            plain_decimal("1.2345678901234567e+19").unwrap(),
            "12345678901234567000"
        );
        assert_eq!(plain_decimal("-0").unwrap(), "0");
        assert_eq!(plain_decimal("1e-05").unwrap(), "0.00001");
        assert_eq!(plain_decimal("123.25").unwrap(), "123.25");
        assert_eq!(plain_decimal("-2.5e1").unwrap(), "-25");
        assert_eq!(
            plain_decimal("3.4028235e+38").unwrap(),
            "340282350000000000000000000000000000000"
        );
        assert!(plain_decimal("1x").is_err() && plain_decimal("").is_err());
        assert_eq!(j(Kind::Float, "NaN"), "\"NaN\"");
        assert_eq!(j(Kind::Numeric, "1.50"), "1.50");
        assert_eq!(j(Kind::Numeric, "-Infinity"), "\"-Infinity\"");
        assert_eq!(j(Kind::Int, "-32768"), "-32768");
    }

    #[test]
    fn temporal_values_render_as_to_jsonb() {
        for (kind, text, json) in [
            (
                Kind::Timestamptz,
                "2020-01-01 10:00:00.5+00",
                "2020-01-01T10:00:00.5+00:00",
            ),
            (
                Kind::Timestamptz,
                "0044-03-15 12:00:00+00 BC",
                "0044-03-15T12:00:00+00:00 BC",
            ),
            (Kind::Timestamptz, "infinity", "infinity"),
            (
                Kind::Timestamptz,
                "2020-01-01 10:00:00-08",
                "2020-01-01T10:00:00-08:00",
            ),
            (
                Kind::Timestamptz,
                "2020-01-01 10:00:00+05:30",
                "2020-01-01T10:00:00+05:30",
            ),
            (
                Kind::Timestamp,
                "0044-03-15 12:00:00 BC",
                "0044-03-15T12:00:00 BC",
            ),
            (Kind::Timestamp, "-infinity", "-infinity"),
            (Kind::Date, "0044-03-15 BC", "0044-03-15 BC"),
        ] {
            assert_eq!(j(kind, text), format!("\"{json}\""), "{text}");
        }
    }

    #[test]
    fn arrays_and_json() {
        assert_eq!(
            j(Kind::Array(Box::new(Kind::Int)), "{{1,2},{3,NULL}}"),
            "[[1,2],[3,null]]"
        );
        assert_eq!(j(Kind::Array(Box::new(Kind::Int)), "[2:3]={1,2}"), "[1,2]");
        assert_eq!(
            j(
                Kind::Array(Box::new(Kind::Text)),
                r#"{"a b","x\\y","q\"",""}"#
            ),
            r#"["a b","x\\y","q\"",""]"#
        );
        assert_eq!(
            j(
                Kind::Array(Box::new(Kind::Timestamptz)),
                r#"{"2020-01-01 00:00:00+00",NULL}"#
            ),
            r#"["2020-01-01T00:00:00+00:00",null]"#
        );
        assert_eq!(j(Kind::Array(Box::new(Kind::Int)), "{}"), "[]");
        assert_eq!(
            j(Kind::Json, r#"{"b":1,"a":1e2,"a":3.0E-2}"#),
            r#"{"b":1,"a":0.030}"#
        );
        assert!(convert(&Kind::Array(Box::new(Kind::Int)), "{1,2").is_err());
        assert!(convert(&Kind::Bool, "x").is_err());
    }
}
