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
