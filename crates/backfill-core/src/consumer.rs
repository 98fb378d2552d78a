//! The reading side of the output protocol (DESIGN.md §4): which of a connector's lines
//! are committed.
//!
//! A connector prints the checkpoint it resumes from before anything else, then units
//! (documents, then the checkpoint that commits them); a crash or an in-process retry
//! leaves documents after the last checkpoint, which the next run either committed (its
//! state was replaced before the crash: its first checkpoint differs from the last one
//! seen) or did not (the first checkpoint equals the last one seen: discard them). A
//! checkpoint equal to the last one seen never follows documents in normal operation
//! (every unit moves the position or a cursor), so the rule is unambiguous.
//!
//! This module is the one implementation of that rule: the `cdc` runtime commits units to
//! its store by it, and the suites' checker judges connectors by it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// One line of a connector's stdout, by its shape. Documents are not parsed into values:
/// their text is kept as it is (the runtime stores it byte for byte).
#[derive(Debug)]
pub enum Line<'a> {
    /// `{"binding": N, "doc": {...}}`.
    Document {
        /// Index of the config binding.
        binding: usize,
        /// The document's JSON text.
        doc: &'a str,
    },
    /// `{"binding": N, "truncate": {...}}`.
    Truncate {
        /// Index of the config binding.
        binding: usize,
        /// The truncate's JSON text.
        truncate: &'a str,
    },
    /// `{"checkpoint": {...}}`: the complete state.
    Checkpoint(Value),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape<'a> {
    binding: Option<usize>,
    #[serde(borrow)]
    doc: Option<&'a RawValue>,
    #[serde(borrow)]
    truncate: Option<&'a RawValue>,
    checkpoint: Option<Value>,
}

impl<'a> Line<'a> {
    /// Reads one line; `Err` says how it breaks the protocol.
    ///
    /// Documents and truncates as this core writes them (`{"binding":N,"doc":{...}}`, no
    /// spaces) are recognised by their frame alone: the body is the connector's, and the
    /// connector writes only valid JSON there (ARCHITECTURE.md, invariant 7); checking it
    /// again cost a consumer as much as writing it. Anything else is parsed in full.
    pub fn parse(line: &'a str) -> Result<Self, String> {
        if let Some(framed) = Self::framed(line) {
            return Ok(framed);
        }
        let shape: Shape<'a> =
            serde_json::from_str(line).map_err(|e| format!("not a protocol line ({e})"))?;
        match shape {
            Shape {
                binding: Some(binding),
                doc: Some(doc),
                truncate: None,
                checkpoint: None,
            } if doc.get().starts_with('{') => Ok(Line::Document {
                binding,
                doc: doc.get(),
            }),
            Shape {
                binding: Some(binding),
                doc: None,
                truncate: Some(truncate),
                checkpoint: None,
            } => Ok(Line::Truncate {
                binding,
                truncate: truncate.get(),
            }),
            Shape {
                binding: None,
                doc: None,
                truncate: None,
                checkpoint: Some(state @ Value::Object(_)),
            } => Ok(Line::Checkpoint(state)),
            _ => Err("a line has one of three shapes: {\"binding\", \"doc\"}, {\"binding\", \"truncate\"}, {\"checkpoint\"}".into()),
        }
    }
}

impl<'a> Line<'a> {
    /// A document or truncate line in the writer's own frame, if it is one.
    fn framed(line: &'a str) -> Option<Self> {
        let rest = line.strip_prefix("{\"binding\":")?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let binding: usize = rest.get(..digits)?.parse().ok()?;
        let rest = &rest[digits..];
        let (doc, body) = match rest.strip_prefix(",\"doc\":") {
            Some(body) => (true, body),
            None => (false, rest.strip_prefix(",\"truncate\":")?),
        };
        let body = body.strip_suffix('}')?;
        if !(body.starts_with('{') && body.ends_with('}')) {
            return None;
        }
        Some(if doc {
            Line::Document { binding, doc: body }
        } else {
            Line::Truncate {
                binding,
                truncate: body,
            }
        })
    }
}

/// A document's top-level fields, each value kept as its JSON text and borrowed from the
/// document: what a consumer that types values itself needs, without building a tree of
/// values (a million documents' trees cost a materialization most of its time).
#[derive(Debug, Default)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Reads the fields of `doc`, a JSON object's text.
    pub fn parse(doc: &'a str) -> Result<Self, String> {
        serde_json::from_str(doc).map_err(|e| format!("a document is not a JSON object ({e})"))
    }

    /// The text of field `name`'s value, if present.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// `_meta.op`: `c`, `u` or `d` (`c` when absent).
    pub fn op(&self) -> Result<Op, String> {
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow)]
            op: Option<&'a str>,
        }
        let Some(meta) = self.get("_meta") else {
            return Ok(Op::Create);
        };
        let meta: Meta<'_> = serde_json::from_str(meta.get())
            .map_err(|e| format!("a document's _meta is unreadable ({e})"))?;
        Ok(match meta.op {
            Some("u") => Op::Update,
            Some("d") => Op::Delete,
            _ => Op::Create,
        })
    }
}

/// A document's text kept with where each of its top-level fields lies in it: [`Fields`]
/// read once and kept as offsets. A consumer that reads a document's key and op and hands
/// the document on, and one that later types its values, then read its text once between
/// them (an initial load reads a million documents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    text: String,
    /// Per field, the byte ranges of its name and of its value's JSON text in `text`;
    /// `None` when a name holds an escape (the fields are then read again from the text).
    spans: Option<Vec<[u32; 4]>>,
}

impl Document {
    /// Keeps `text` with `fields`, which must have been read from `text` itself.
    pub fn new(text: &str, fields: &Fields<'_>) -> Self {
        let base = text.as_ptr() as usize;
        let span = |part: &str| -> Option<[u32; 2]> {
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(part.len())?;
            (end <= text.len()).then_some([u32::try_from(start).ok()?, u32::try_from(end).ok()?])
        };
        let spans = fields
            .0
            .iter()
            .map(|(name, raw)| match name {
                Cow::Borrowed(name) => {
                    let ([ns, ne], [vs, ve]) = (span(name)?, span(raw.get())?);
                    Some([ns, ne, vs, ve])
                }
                Cow::Owned(_) => None,
            })
            .collect();
        Self {
            text: text.to_string(),
            spans,
        }
    }

    /// Reads `text`, a JSON object's text.
    pub fn read(text: &str) -> Result<Self, String> {
        Ok(Self::new(text, &Fields::parse(text)?))
    }

    /// The document's text, as it was read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its fields without reading the text again, or `None` when a name holds an escape
    /// (read [`Fields`] from [`Self::text`] then).
    pub fn fields(&self) -> Option<DocumentFields<'_>> {
        Some(DocumentFields {
            text: &self.text,
            spans: self.spans.as_deref()?,
        })
    }
}

/// A [`Document`]'s fields, as names and their values' JSON text.
#[derive(Clone, Copy, Debug)]
pub struct DocumentFields<'a> {
    text: &'a str,
    spans: &'a [[u32; 4]],
}

impl<'a> DocumentFields<'a> {
    /// The `i`th field (in the document's order): its name and its value's JSON text.
    pub fn at(&self, i: usize) -> Option<(&'a str, &'a str)> {
        let [ns, ne, vs, ve] = *self.spans.get(i)?;
        let part = |s: u32, e: u32| self.text.get(s as usize..e as usize);
        Some((part(ns, ne)?, part(vs, ve)?))
    }

    /// The JSON text of field `name`'s value, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        (0..self.spans.len())
            .filter_map(|i| self.at(i))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// A document's kind (`_meta.op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `c`: an insert or a backfilled row (every column).
    Create,
    /// `u`: an update (a column may be left out: DESIGN.md §5).
    Update,
    /// `d`: a delete.
    Delete,
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(name) = map.next_key::<Name<'de>>()? {
                    fields.push((name.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A field name, borrowed unless it holds an escape.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// What a checkpoint does to the lines read since the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// They are committed, with this checkpoint's state.
    Commit,
    /// They were never committed (a resume or a retry): drop them.
    Discard,
}

/// The commit rule over a series of runs of one capture.
#[derive(Clone, Debug, Default)]
pub struct CommitRule {
    last_seen: Option<Value>,
}

impl CommitRule {
    /// A consumer that last saw (and committed) the checkpoint `last`, if any.
    pub fn after(last: Option<Value>) -> Self {
        Self { last_seen: last }
    }

    /// A checkpoint line was read: whether the lines since the last one are committed.
    pub fn checkpoint(&mut self, state: &Value) -> Verdict {
        if self.last_seen.as_ref() == Some(state) {
            Verdict::Discard
        } else {
            self.last_seen = Some(state.clone());
            Verdict::Commit
        }
    }

    /// The last checkpoint seen.
    pub fn last(&self) -> Option<&Value> {
        self.last_seen.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_borrowed_as_their_text() {
        let doc = r#"{"id":12345678901234567890.5,"t":"a\"b","a\u0062":[1, 2],"_meta":{"op":"u","source":{}}}"#;
        let f = Fields::parse(doc).unwrap();
        let names: Vec<&str> = f.0.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["id", "t", "ab", "_meta"]);
        assert_eq!(f.get("id").unwrap().get(), "12345678901234567890.5");
        assert_eq!(f.get("t").unwrap().get(), r#""a\"b""#);
        assert_eq!(f.get("ab").unwrap().get(), "[1, 2]");
        assert_eq!(f.op(), Ok(Op::Update));
        assert_eq!(Fields::parse(r#"{"id":1}"#).unwrap().op(), Ok(Op::Create));
        assert!(Fields::parse("[1]").is_err());
    }

    #[test]
    fn a_document_read_once_gives_the_fields_a_second_read_would() {
        let text = r#"{"id":7,"t":"a\"b","ü":{"x":[1, 2]},"n":null,"_meta":{"op":"c"}}"#;
        let doc = Document::read(text).unwrap();
        let fields = doc.fields().expect("no name holds an escape");
        let again = Fields::parse(doc.text()).unwrap();
        assert_eq!(again.0.len(), 5);
        for (i, (name, raw)) in again.0.iter().enumerate() {
            assert_eq!(fields.at(i), Some((name.as_ref(), raw.get())));
            assert_eq!(fields.get(name), Some(raw.get()));
        }
        assert_eq!(fields.at(5), None);
        assert_eq!(fields.get("absent"), None);
        // A name with an escape is not the text's: the fields are read again instead.
        let escaped = Document::read(r#"{"a\u0062":1}"#).unwrap();
        assert!(escaped.fields().is_none());
        assert_eq!(escaped.text(), r#"{"a\u0062":1}"#);
    }

    #[test]
    fn lines_by_shape() {
        assert!(matches!(
            Line::parse(r#"{"binding": 2, "doc": {"id": 1, "_meta": {"op": "c"}}}"#),
            Ok(Line::Document { binding: 2, doc }) if doc == r#"{"id": 1, "_meta": {"op": "c"}}"#
        ));
        assert!(matches!(
            Line::parse(r#"{"binding": 0, "truncate": {"source": {}}}"#),
            Ok(Line::Truncate { binding: 0, .. })
        ));
        assert!(matches!(
            Line::parse(r#"{"checkpoint": {"version": 1}}"#),
            Ok(Line::Checkpoint(_))
        ));
        // The writer's own frame, read without parsing the body.
        assert!(matches!(
            Line::parse(r#"{"binding":12,"doc":{"id":1,"_meta":{"op":"d"}}}"#),
            Ok(Line::Document { binding: 12, doc }) if doc == r#"{"id":1,"_meta":{"op":"d"}}"#
        ));
        assert!(matches!(
            Line::parse(r#"{"binding":0,"truncate":{"source":{}}}"#),
            Ok(Line::Truncate { binding: 0, truncate }) if truncate == r#"{"source":{}}"#
        ));
        for bad in [
            r#"{"binding": 0}"#,
            r#"{"binding": 0, "doc": {}, "extra": 1}"#,
            r#"{"doc": {}}"#,
            r#"{"binding": 0, "doc": 5}"#,
            r#"{"checkpoint": 1}"#,
            r#"{"binding": 0, "doc": {"a": 1"#,
            r#"{"binding":0,"doc":{"a":1}"#,
            r#"{"binding":x,"doc":{}}"#,
            r#"{"binding":0,"doc":5}"#,
            r#"{"binding":0,"other":{}}"#,
        ] {
            assert!(Line::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unseen_checkpoint_commits_and_a_repeated_one_discards() {
        let mut rule = CommitRule::after(Some(json!({"position": 1})));
        // A resume from the last committed state: what came before was not committed.
        assert_eq!(rule.checkpoint(&json!({"position": 1})), Verdict::Discard);
        assert_eq!(rule.checkpoint(&json!({"position": 2})), Verdict::Commit);
        // A retry inside one process prints the state file's checkpoint again.
        assert_eq!(rule.checkpoint(&json!({"position": 2})), Verdict::Discard);
        assert_eq!(rule.last(), Some(&json!({"position": 2})));
        assert_eq!(
            CommitRule::default().checkpoint(&json!({})),
            Verdict::Commit
        );
    }
}
