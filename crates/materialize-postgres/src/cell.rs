//! A document's value as the typed path reads it ([`crate::typed`], [`crate::binary`]):
//! from the document's JSON text as written, or from merged values.

use std::borrow::Cow;

use serde_json::Value;

/// A value as the typed path sees it, from a document's text or from merged values.
#[derive(Debug)]
pub enum Cell<'a> {
    Null,
    /// A JSON string's content.
    Str(Cow<'a, str>),
    /// A number's digits, or `true` / `false`.
    Scalar(Cow<'a, str>),
    /// An object or array, as JSON text.
    Composite(Cow<'a, str>),
}

impl<'a> Cell<'a> {
    /// A value from its JSON text (as written: no re-parse where there is no escape).
    pub fn from_text(raw: &'a str) -> Option<Self> {
        Some(match raw.as_bytes().first()? {
            b'n' => Cell::Null,
            b'"' if !raw.contains('\\') => Cell::Str(Cow::Borrowed(&raw[1..raw.len() - 1])),
            b'"' => Cell::Str(Cow::Owned(serde_json::from_str(raw).ok()?)),
            b'{' | b'[' => Cell::Composite(Cow::Borrowed(raw)),
            _ => Cell::Scalar(Cow::Borrowed(raw)),
        })
    }

    pub fn from_value(value: &'a Value) -> Self {
        match value {
            Value::Null => Cell::Null,
            Value::String(s) => Cell::Str(Cow::Borrowed(s)),
            Value::Number(n) => Cell::Scalar(Cow::Owned(n.to_string())),
            Value::Bool(b) => Cell::Scalar(Cow::Borrowed(if *b { "true" } else { "false" })),
            other => Cell::Composite(Cow::Owned(other.to_string())),
        }
    }

    /// Its JSON text, for json and jsonb columns.
    pub fn json(&self) -> Cow<'_, str> {
        match self {
            Cell::Null => Cow::Borrowed("null"),
            Cell::Str(s) => Cow::Owned(Value::String(s.to_string()).to_string()),
            Cell::Scalar(t) | Cell::Composite(t) => Cow::Borrowed(t),
        }
    }
}
