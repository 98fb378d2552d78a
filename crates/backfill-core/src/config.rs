//! The connector config (DESIGN.md §2): a database-specific `endpoint` and bindings of one
//! shape for every database. Unknown fields are refused, so a typo never silently turns an
//! option off; every message names the binding and the fix.

use std::collections::HashSet;
use std::path::Path;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mode::BackfillMode;

/// A whole config file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config<E> {
    /// Connection and database-specific options.
    pub endpoint: E,
    /// One entry per captured table; a document's `binding` is the index into this list.
    pub bindings: Vec<Binding>,
}

/// One captured table.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Which table, and how to backfill it.
    pub resource: Resource,
    /// Where the documents go; carried through for the runtime, not used by the connector.
    #[serde(default)]
    pub target: String,
    /// Backfill counter: raising it re-backfills this binding; raising it for every binding
    /// at once also re-establishes the stream position at the current end of the log.
    #[serde(default)]
    pub backfill: u32,
    /// Key columns in key order as `discover --json` reported them (DESIGN.md §3: its
    /// entries paste into a config as they are). Informational, like `columns`, `reason`
    /// and `warnings`: the connector reads the table's key from the database at every
    /// start, and warns when it differs from this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    /// Columns as `discover --json` reported them; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub columns: Option<serde_json::Value>,
    /// Why Automatic chose the mode, as `discover --json` reported it; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What `discover --json` warned about; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// The table a binding captures.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Schema (PostgreSQL, SQL Server) or database (MySQL).
    pub namespace: String,
    /// Table name.
    pub stream: String,
    /// Backfill mode; absent or empty means Automatic.
    #[serde(default)]
    pub mode: BackfillMode,
    /// Connections that read one chunk of this table at once, 1 to 64
    /// (`advanced.backfill_ranges` when absent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_ranges"
    )]
    pub ranges: Option<usize>,
}

/// The most connections one chunk may be read by: each is a backend on the source server.
pub const MAX_RANGES: usize = 64;

/// `advanced.backfill_ranges`, refused outside 1 to [`MAX_RANGES`] with the bounds named.
pub fn ranges<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    ranges_of("advanced.backfill_ranges", d)
}

/// A binding's `resource.ranges`, refused as [`ranges`] is.
fn some_ranges<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<usize>, D::Error> {
    ranges_of("resource.ranges", d).map(Some)
}

fn ranges_of<'de, D: serde::Deserializer<'de>>(
    field: &str,
    d: D,
) -> std::result::Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if (1..=MAX_RANGES).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{field} must be between 1 and {MAX_RANGES} (connections that read one chunk), not {n}"
        )))
    }
}

impl Resource {
    /// `namespace.stream` backfilled in `mode`, with the endpoint's ranges.
    pub fn new(
        namespace: impl Into<String>,
        stream: impl Into<String>,
        mode: BackfillMode,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            stream: stream.into(),
            mode,
            ranges: None,
        }
    }

    /// The table this resource names.
    pub fn table(&self) -> crate::source::TableRef {
        crate::source::TableRef::new(&self.namespace, &self.stream)
    }
}

/// `namespace.stream`, as a [`TableRef`](crate::source::TableRef) shows.
impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.namespace, self.stream)
    }
}

impl Binding {
    /// A binding of `resource` with none of the informational fields.
    pub fn new(resource: Resource, target: impl Into<String>, backfill: u32) -> Self {
        Self {
            resource,
            target: target.into(),
            backfill,
            key: None,
            columns: None,
            reason: None,
            warnings: None,
        }
    }

    /// `<namespace>.<stream>`, with `.v<N>` appended when the counter N is above 0.
    pub fn state_key(&self) -> String {
        state_key(
            &self.resource.namespace,
            &self.resource.stream,
            self.backfill,
        )
    }

    /// `<namespace>.<stream>`, for messages.
    pub fn table_name(&self) -> String {
        self.resource.to_string()
    }
}

/// The state key of a table at a backfill counter.
pub fn state_key(namespace: &str, stream: &str, counter: u32) -> String {
    if counter == 0 {
        format!("{namespace}.{stream}")
    } else {
        format!("{namespace}.{stream}.v{counter}")
    }
}

impl<E: DeserializeOwned + JsonSchema> Config<E> {
    /// Parses and validates a config document. An unknown field is named with the
    /// accepted one it is closest to (a flattened endpoint block leaves serde's own message
    /// without the list of fields).
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |at: String, e: serde_json::Error| {
            let hint = unknown_field(&e.to_string())
                .and_then(closest_field::<Self>)
                .map(|known| format!(" (did you mean `{known}`?)"))
                .unwrap_or_default();
            Error::Config(format!(
                "config is not valid{at}: {e}{hint}; see `spec` for the accepted shape"
            ))
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config<E> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // `.` is the whole document: nothing worth naming.
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!(" at `{path}`")
            };
            invalid(at, e.into_inner())
        })?;
        de.end().map_err(|e| invalid(String::new(), e))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
    }
}

/// The field serde's "unknown field `x`" message names.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// The field of `T`'s schema (at any depth) spelled closest to `field`, when it is at
/// most two edits away.
fn closest_field<T: JsonSchema>(field: &str) -> Option<String> {
    fn names(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                map.values().for_each(|v| names(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| names(v, out)),
            _ => {}
        }
    }
    let mut known = Vec::new();
    names(
        &serde_json::to_value(schemars::schema_for!(T)).ok()?,
        &mut known,
    );
    known
        .into_iter()
        .map(|k| (edits(field, &k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl<E> Config<E> {
    /// Checks what the types cannot: names present, no table bound twice.
    pub fn validate(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for (i, b) in self.bindings.iter().enumerate() {
            if b.resource.namespace.trim().is_empty() || b.resource.stream.trim().is_empty() {
                return Err(Error::Config(format!(
                    "binding {i}: resource needs a non-empty \"namespace\" and \"stream\""
                )));
            }
            if !seen.insert((&b.resource.namespace, &b.resource.stream)) {
                return Err(Error::Config(format!(
                    "binding {i} ({}): the table is already bound by an earlier binding; remove one of them",
                    b.table_name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cfg = Config<serde_json::Value>;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only its shape is used
    struct Endpoint {
        #[serde(flatten)]
        login: crate::endpoint::Login<5432>,
        #[serde(default)]
        slot: Option<String>,
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_path() {
        let e = Config::<Endpoint>::parse(
            r#"{"endpoint": {"host": "h", "user": "u"}, "bindings": [{"resource": {"namespace": "a", "stream": "b"}, "target": "t", "backfill": "1"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("at `bindings[0].backfill`") && e.contains("invalid type: string"),
            "{e}"
        );
        let e = Config::<Endpoint>::parse(r#"{"endpoint": {"host": "h", "user": "u"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `bindings`"), "{e}");
        assert!(!e.contains(" at `"), "the whole document is not named: {e}");
    }

    #[test]
    fn an_unknown_field_is_named_with_the_one_it_is_closest_to() {
        let bindings =
            r#""bindings": [{"resource": {"namespace": "a", "stream": "b"}, "target": "t"}]"#;
        let typo =
            format!(r#"{{"endpoint": {{"host": "h", "user": "u", "pasword": "x"}}, {bindings}}}"#);
        let e = Config::<Endpoint>::parse(&typo).unwrap_err().to_string();
        assert!(
            e.contains("`pasword`") && e.contains("did you mean `password`?"),
            "{e}"
        );
        let nested = format!(
            r#"{{"endpoint": {{"host": "h", "user": "u", "tls": {{"root_crt": "x"}}}}, {bindings}}}"#
        );
        let e = Config::<Endpoint>::parse(&nested).unwrap_err().to_string();
        assert!(e.contains("did you mean `root_cert`?"), "{e}");
        let far =
            format!(r#"{{"endpoint": {{"host": "h", "user": "u", "zzzzzz": 1}}, {bindings}}}"#);
        let e = Config::<Endpoint>::parse(&far).unwrap_err().to_string();
        assert!(
            !e.contains("did you mean"),
            "no guess when nothing is close: {e}"
        );
        assert_eq!(edits("slto", "slot"), 2);
    }

    #[test]
    fn ranges_are_refused_outside_their_bounds_with_the_bounds_named() {
        let with = |r: &str| {
            Cfg::parse(&format!(
                r#"{{"endpoint": {{}}, "bindings": [{{"resource": {{"namespace": "a", "stream": "b", "ranges": {r}}}}}]}}"#
            ))
        };
        assert_eq!(with("4").unwrap().bindings[0].resource.ranges, Some(4));
        for bad in ["0", "65"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("resource.ranges must be between 1 and 64"),
                "{e}"
            );
        }
        let advanced: crate::endpoint::Backfill =
            serde_json::from_str(r#"{"backfill_ranges": 3}"#).unwrap();
        assert_eq!(advanced.backfill_ranges, 3);
        let e = serde_json::from_str::<crate::endpoint::Backfill>(r#"{"backfill_ranges": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("advanced.backfill_ranges must be between 1 and 64"),
            "{e}"
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let cfg = Cfg::parse(
            r#"{"endpoint": {"host": "x"}, "bindings": [
                {"resource": {"namespace": "public", "stream": "orders", "mode": "Precise"},
                 "target": "acme/postgres/public/orders", "backfill": 0},
                {"resource": {"namespace": "public", "stream": "items"}, "target": "t", "backfill": 2}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.bindings[0].resource.mode, BackfillMode::Precise);
        assert_eq!(cfg.bindings[1].resource.mode, BackfillMode::Automatic);
        assert_eq!(cfg.bindings[0].state_key(), "public.orders");
        assert_eq!(cfg.bindings[1].state_key(), "public.items.v2");
    }

    #[test]
    fn refuses_unknown_fields_bad_modes_and_duplicates() {
        let unknown = r#"{"endpoint": {}, "bindings": [{"resource": {"namespace": "a", "stream": "b", "mod": "Precise"}}]}"#;
        assert!(Cfg::parse(unknown).unwrap_err().to_string().contains("mod"));
        let bad_mode = r#"{"endpoint": {}, "bindings": [{"resource": {"namespace": "a", "stream": "b", "mode": "Fast"}}]}"#;
        let msg = Cfg::parse(bad_mode).unwrap_err().to_string();
        assert!(msg.contains("\"Without Primary Key\""), "{msg}");
        let dup = r#"{"endpoint": {}, "bindings": [{"resource": {"namespace": "a", "stream": "b"}}, {"resource": {"namespace": "a", "stream": "b"}}]}"#;
        assert!(
            Cfg::parse(dup)
                .unwrap_err()
                .to_string()
                .contains("binding 1 (a.b)")
        );
        let empty =
            r#"{"endpoint": {}, "bindings": [{"resource": {"namespace": "", "stream": "b"}}]}"#;
        assert!(
            Cfg::parse(empty)
                .unwrap_err()
                .to_string()
                .contains("binding 0")
        );
    }
}
