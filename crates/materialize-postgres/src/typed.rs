//! The fast path for whole rows: documents holding every column of a keyed standard table
//! (inserts, backfilled rows, updates with nothing left out) are written as `COPY` text
//! rows of the table's own columns into a typed staging table, then upserted in one
//! statement. The server parses each value once, with the column's input function, as it
//! does for `pg_dump`'s output; the `jsonb` path (a document staged whole, each column
//! extracted) stays for deletes, partial rows and small batches.
//!
//! A value is typed here only where its text is the column's input: a JSON string's
//! content, a number's digits, a boolean, a JSON document for json and jsonb columns,
//! base64 decoded to `\\x` hex for bytea. Anything else (an array, a composite, a JSON
//! value in a text column) sends the row down the `jsonb` path.

use serde_json::Value;

use crate::sql::Shape;
use crate::types::Conversion;

/// Rows of whole documents below which the `jsonb` path is used (the typed path's
/// staging table is recreated per batch).
pub const MIN_ROWS: usize = 256;

/// Appends `text` escaped for COPY's text format: runs without a special byte are copied
/// whole.
fn escape(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(at) = rest.find(['\\', '\n', '\r', '\t']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Appends `doc` as one COPY text row of `shape`'s columns, or returns `false` (leaving
/// `out` as it was) when a value cannot be typed here or a column is absent.
pub fn row(out: &mut String, shape: &Shape, doc: &Value) -> bool {
    let start = out.len();
    for (i, column) in shape.columns.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        let Some(value) = doc.get(&column.name) else {
            out.truncate(start);
            return false;
        };
        let ok = match (column.mapped.conversion, value) {
            (_, Value::Null) => {
                out.push_str("\\N");
                true
            }
            (Conversion::Text, Value::String(s)) => {
                escape(out, s);
                true
            }
            (Conversion::Text, Value::Number(n)) => {
                out.push_str(&n.to_string());
                true
            }
            (Conversion::Text, Value::Bool(b)) => {
                out.push_str(if *b { "true" } else { "false" });
                true
            }
            (Conversion::Json, v) => {
                escape(out, &v.to_string());
                true
            }
            (Conversion::Base64, Value::String(s)) => match base64_hex(s) {
                Some(hex) => {
                    out.push_str("\\\\x");
                    out.push_str(&hex);
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !ok {
            out.truncate(start);
            return false;
        }
    }
    out.push('\n');
    true
}

/// Standard base64 (the core's decoder) written as lowercase hex.
fn base64_hex(text: &str) -> Option<String> {
    use std::fmt::Write as _;
    let bytes = backfill_core::encode::base64_decode(text)?;
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Column;
    use crate::types::Mapped;
    use serde_json::json;

    fn shape(columns: &[(&str, Conversion)]) -> Shape {
        Shape {
            schema: "public".into(),
            name: "t".into(),
            columns: columns
                .iter()
                .map(|(n, c)| Column {
                    name: (*n).into(),
                    mapped: Mapped {
                        pg_type: "text".into(),
                        conversion: *c,
                        warning: None,
                    },
                })
                .collect(),
            key: vec!["id".into()],
            delta: false,
            reread_key: Vec::new(),
        }
    }

    #[test]
    fn values_become_copy_text_and_the_rest_is_refused() {
        let s = shape(&[
            ("id", Conversion::Text),
            ("t", Conversion::Text),
            ("j", Conversion::Json),
            ("b", Conversion::Base64),
            ("n", Conversion::Text),
        ]);
        let mut out = String::new();
        let doc = json!({"id": 12345678901234567890_u64, "t": "a\tb\\c\nd", "j": {"k": [1, "x\ty"]}, "b": "AP8Q", "n": null});
        assert!(row(&mut out, &s, &doc));
        assert_eq!(
            out,
            // JSON's own escapes (`\\t` in a string) get their backslash doubled for COPY.
            "12345678901234567890\ta\\tb\\\\c\\nd\t{\"k\":[1,\"x\\\\ty\"]}\t\\\\x00ff10\t\\N\n"
        );
        // An absent column (TOAST) or an array in a text column goes the jsonb way.
        let before = out.clone();
        assert!(!row(
            &mut out,
            &s,
            &json!({"id": 1, "t": "x", "j": 1, "b": "AA=="})
        ));
        assert!(!row(
            &mut out,
            &s,
            &json!({"id": 1, "t": [1], "j": 1, "b": "AA==", "n": 1})
        ));
        assert_eq!(out, before);
        assert_eq!(base64_hex("AQID").as_deref(), Some("010203"));
        assert_eq!(base64_hex("/w==").as_deref(), Some("ff"));
    }
}
