//! Rows of the staging table in `COPY`'s binary format: a header, one tuple per row, a
//! trailer. `jsonb` is sent as its version byte 1 and the JSON text; `bigint` big-endian;
//! `text` as UTF-8; NULL as length -1.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

/// A document to stage as `jsonb`.
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    /// A value.
    Value(&'a Value),
    /// An object's fields.
    Map(&'a Map<String, Value>),
    /// JSON text as the connector wrote it (`_meta` and all: the statements read columns
    /// by name).
    Text(&'a str),
}

/// One staged row.
#[derive(Debug, Default)]
pub struct StageRow<'a> {
    /// The document.
    pub d: Option<Json<'a>>,
    /// Its log line (delta rows).
    pub line: Option<i64>,
    /// Its op (delta rows).
    pub op: Option<&'a str>,
    /// Its source position (delta rows).
    pub pos: Option<&'a Value>,
    /// Its commit time in ms (delta rows).
    pub ts: Option<i64>,
}

/// Encodes staged rows, flushing in chunks of about `CHUNK` bytes.
#[derive(Debug)]
pub struct Encoder {
    buf: BytesMut,
}

/// Bytes handed to the server at a time.
pub const CHUNK: usize = 1 << 20;

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A new encoding, header written.
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(CHUNK + 4096);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        Self { buf }
    }

    /// Adds a row.
    pub fn row(&mut self, row: &StageRow<'_>) {
        self.buf.put_i16(5);
        self.jsonb(row.d);
        self.bigint(row.line);
        match row.op {
            Some(op) => {
                self.buf.put_i32(len(op.len()));
                self.buf.put_slice(op.as_bytes());
            }
            None => self.buf.put_i32(-1),
        }
        self.jsonb(row.pos.map(Json::Value));
        self.bigint(row.ts);
    }

    fn jsonb(&mut self, value: Option<Json<'_>>) {
        let text = match value {
            Some(Json::Text(text)) => std::borrow::Cow::Borrowed(text),
            Some(Json::Value(v)) => std::borrow::Cow::Owned(v.to_string()),
            Some(Json::Map(m)) => {
                std::borrow::Cow::Owned(serde_json::to_string(m).unwrap_or_default())
            }
            None => {
                self.buf.put_i32(-1);
                return;
            }
        };
        self.buf.put_i32(len(text.len() + 1));
        self.buf.put_u8(1);
        self.buf.put_slice(text.as_bytes());
    }

    fn bigint(&mut self, value: Option<i64>) {
        match value {
            Some(v) => {
                self.buf.put_i32(8);
                self.buf.put_i64(v);
            }
            None => self.buf.put_i32(-1),
        }
    }

    /// The bytes encoded so far, when there are enough to send.
    pub fn take_full(&mut self) -> Option<Bytes> {
        (self.buf.len() >= CHUNK).then(|| self.buf.split().freeze())
    }

    /// The rest, trailer included.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

fn len(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_format_frames_each_field() {
        let mut e = Encoder::new();
        let d = serde_json::json!({"a": 1});
        e.row(&StageRow {
            d: Some(Json::Value(&d)),
            line: Some(7),
            ..StageRow::default()
        });
        let bytes = e.finish();
        let body = &bytes[19..];
        assert_eq!(&body[..2], &5i16.to_be_bytes());
        assert_eq!(&body[2..6], &8i32.to_be_bytes());
        assert_eq!(&body[6..14], b"\x01{\"a\":1}");
        assert_eq!(&body[14..18], &8i32.to_be_bytes());
        assert_eq!(&body[18..26], &7i64.to_be_bytes());
        assert_eq!(&bytes[bytes.len() - 2..], &(-1i16).to_be_bytes());
    }
}
