//! The fast path for whole rows: documents holding every column of a keyed standard table
//! (inserts, backfilled rows, updates with nothing left out) are written as `COPY` rows
//! of the table's own columns, straight into the table or into a typed staging table then
//! upserted in one statement. Where every column has a binary form ([`crate::binary`])
//! they are written in binary, read by the server's receive functions; otherwise, and for
//! a row with a value in a form the binary encoders do not take, as text, which the server
//! parses once with the column's input function, as it does `pg_dump`'s output. The
//! `jsonb` path (a document staged whole, each column extracted) stays for deletes,
//! partial rows and small batches.
//!
//! A value is typed as text only where its text is the column's input: a JSON string's
//! content, a number's digits, a boolean, a JSON document for json and jsonb columns,
//! base64 decoded to `\\x` hex for bytea. Anything else (an array, a composite, a JSON
//! value in a text column) sends the row down the `jsonb` path.

#[cfg(test)]
use backfill_core::consumer::Document;
use backfill_core::consumer::Fields;
use cdc_runtime::destination::Image;

use crate::binary::Binary;
use crate::cell::Cell;
use crate::sql::{Column, Shape};
use crate::types::{Conversion, zero_in_date};

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

/// Where typed rows are written: `COPY` text (a `String`) or binary ([`BinaryRows`]).
pub trait Rows {
    /// Where the row being written started, to go back to when it is refused.
    fn mark(&self) -> usize;
    /// Drops what was written after `mark`.
    fn undo(&mut self, mark: usize);
    /// Starts a row of `columns` values.
    fn begin(&mut self, columns: usize);
    /// Appends column `i`'s value; `false` refuses the row.
    fn cell(&mut self, i: usize, column: &Column, value: &Cell<'_>) -> bool;
    /// Ends the row.
    fn end(&mut self);
}

impl Rows for String {
    fn mark(&self) -> usize {
        self.len()
    }

    fn undo(&mut self, mark: usize) {
        self.truncate(mark);
    }

    fn begin(&mut self, _: usize) {}

    fn cell(&mut self, i: usize, column: &Column, value: &Cell<'_>) -> bool {
        if i > 0 {
            self.push('\t');
        }
        match (column.mapped.conversion, value) {
            (_, Cell::Null) => {
                self.push_str("\\N");
                true
            }
            (Conversion::Text | Conversion::MysqlDate, Cell::Str(s)) => {
                escape(self, s);
                true
            }
            (Conversion::Text | Conversion::MysqlDate, Cell::Scalar(t)) => {
                self.push_str(t);
                true
            }
            (Conversion::Json, v) => {
                escape(self, &v.json());
                true
            }
            (Conversion::Base64, Cell::Str(s)) => match base64_hex(s) {
                Some(hex) => {
                    self.push_str("\\\\x");
                    self.push_str(&hex);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn end(&mut self) {
        self.push('\n');
    }
}

/// Whole rows in `COPY`'s binary format ([`crate::binary`]): the header, a tuple per row,
/// and the trailer once finished.
#[derive(Debug)]
pub struct BinaryRows {
    buf: Vec<u8>,
    kinds: Vec<Binary>,
    rows: usize,
}

impl BinaryRows {
    /// Rows of `shape`, when every one of its columns has a binary form.
    pub fn of(shape: &Shape) -> Option<Self> {
        let kinds = shape
            .columns
            .iter()
            .map(|c| Binary::of(&c.mapped.pg_type, c.mapped.conversion))
            .collect::<Option<Vec<_>>>()?;
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Some(Self {
            buf,
            kinds,
            rows: 0,
        })
    }

    /// Rows written.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The whole `COPY` data, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

impl Rows for BinaryRows {
    fn mark(&self) -> usize {
        self.buf.len()
    }

    fn undo(&mut self, mark: usize) {
        self.buf.truncate(mark);
    }

    fn begin(&mut self, columns: usize) {
        let count = i16::try_from(columns).unwrap_or(i16::MAX);
        self.buf.extend_from_slice(&count.to_be_bytes());
    }

    fn cell(&mut self, i: usize, _: &Column, value: &Cell<'_>) -> bool {
        self.kinds[i].field(&mut self.buf, value)
    }

    fn end(&mut self) {
        self.rows += 1;
    }
}

/// Appends `doc` as one row of `shape`'s columns, or returns `false` (leaving `out` as it
/// was) when a value cannot be typed here or a column is absent.
pub fn row(out: &mut impl Rows, shape: &Shape, doc: &Image) -> bool {
    match doc {
        Image::Text(doc) => match doc.fields() {
            Some(fields) => write_text_fields(out, shape, |i| fields.at(i), |n| fields.get(n)),
            // A name with an escape: read the fields again from the text.
            None => {
                let Ok(fields) = Fields::parse(doc.text()) else {
                    return false;
                };
                write_text_fields(
                    out,
                    shape,
                    |i| fields.0.get(i).map(|(n, raw)| (n.as_ref(), raw.get())),
                    |n| fields.get(n).map(|raw| raw.get()),
                )
            }
        },
        Image::Merged(fields) => {
            write_row(out, shape, |_, name| fields.get(name).map(Cell::from_value))
        }
    }
}

/// A row of fields given as JSON text: the `i`th field by `at`, any by name by `get`. The
/// connector writes columns in table order, so each column is looked for there first.
fn write_text_fields<'a>(
    out: &mut impl Rows,
    shape: &Shape,
    at: impl Fn(usize) -> Option<(&'a str, &'a str)>,
    get: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    write_row(out, shape, |i, name| {
        let raw = match at(i) {
            Some((n, raw)) if n == name => raw,
            _ => get(name)?,
        };
        Cell::from_text(raw)
    })
}

fn write_row<'a>(
    out: &mut impl Rows,
    shape: &Shape,
    cell: impl Fn(usize, &str) -> Option<Cell<'a>>,
) -> bool {
    let start = out.mark();
    out.begin(shape.columns.len());
    for (i, column) in shape.columns.iter().enumerate() {
        let ok = cell(i, &column.field).is_some_and(|value| {
            let value = match value {
                Cell::Str(s)
                    if column.mapped.conversion == Conversion::MysqlDate && zero_in_date(&s) =>
                {
                    Cell::Null
                }
                value => value,
            };
            out.cell(i, column, &value)
        });
        if !ok {
            out.undo(start);
            return false;
        }
    }
    out.end();
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
                .map(|(n, c)| {
                    Column::new(
                        n,
                        Mapped {
                            pg_type: "text".into(),
                            conversion: *c,
                            warning: None,
                        },
                    )
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
        // A document as the connector wrote it, and the same fields merged: one row.
        let doc = json!({"id": 12345678901234567890_u64, "t": "a\tb\\c\nd", "j": {"k": [1, "x\ty"]}, "b": "AP8Q", "n": null, "_meta": {"op": "c"}});
        let mut fields = doc.as_object().cloned().unwrap();
        fields.remove("_meta");
        for image in [
            Image::Text(Document::read(&doc.to_string()).unwrap()),
            Image::Merged(fields),
        ] {
            let mut out = String::new();
            assert!(row(&mut out, &s, &image));
            assert_eq!(
                out,
                // JSON's own escapes (`\t` in a string) get their backslash doubled for COPY.
                "12345678901234567890\ta\\tb\\\\c\\nd\t{\"k\":[1,\"x\\\\ty\"]}\t\\\\x00ff10\t\\N\n",
                "{image:?}"
            );
        }
        // An absent column (TOAST) or an array in a text column goes the jsonb way.
        let mut out = String::from("kept");
        for refused in [
            json!({"id": 1, "t": "x", "j": 1, "b": "AA=="}),
            json!({"id": 1, "t": [1], "j": 1, "b": "AA==", "n": 1}),
        ] {
            assert!(!row(
                &mut out,
                &s,
                &Image::Text(Document::read(&refused.to_string()).unwrap())
            ));
            let fields = refused.as_object().cloned().unwrap();
            assert!(!row(&mut out, &s, &Image::Merged(fields)));
        }
        assert_eq!(out, "kept");
        // Columns in another order than the table's are found by name.
        let mut out = String::new();
        let text = r#"{"n":2,"b":"AA==","j":"s","t":"\u00e9","id":1}"#;
        assert!(row(
            &mut out,
            &s,
            &Image::Text(Document::read(text).unwrap())
        ));
        assert_eq!(out, "1\té\t\"s\"\t\\\\x00\t2\n");
        // A name written with an escape is read again from the text, to the same row.
        let mut again = String::new();
        let escaped = r#"{"\u006e":2,"b":"AA==","j":"s","t":"\u00e9","id":1}"#;
        let doc = Document::read(escaped).unwrap();
        assert!(doc.fields().is_none());
        assert!(row(&mut again, &s, &Image::Text(doc)));
        assert_eq!(again, out);
        assert_eq!(base64_hex("AQID").as_deref(), Some("010203"));
        assert_eq!(base64_hex("/w==").as_deref(), Some("ff"));
    }
}
