//! The pipeline spec (PIPELINE.md §2): one JSON file naming the store and the captures,
//! validated before anything runs, every error naming the field and the fix.
//!
//! ```json
//! {
//!   "store": "file:///var/lib/cdc/shop",
//!   "captures": [
//!     { "name": "shop", "connector": "source-postgres", "config": "shop-postgres.json" }
//!   ]
//! }
//! ```
//!
//! A capture's collections are its config's bindings, named by each binding's `target`.
//! Materializations land collections in destination tables:
//!
//! ```json
//! "materializations": [
//!   { "name": "warehouse", "destination": "postgres",
//!     "endpoint": { "host": "db.internal", "database": "analytics", "user": "cdc",
//!                   "password_env": "WAREHOUSE_PASSWORD" },
//!     "bindings": [ { "source": "shop/orders", "target": "orders" },
//!                   { "source": "shop/orders", "target": "orders_history", "delta_updates": true } ] }
//! ]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// A whole pipeline spec.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Where collections live: `file:///absolute/dir` or `file:relative/dir` (the embedded
    /// store: a local directory, nothing to install or start), or
    /// `nats://host:port[,host:port...][/prefix][?replicas=N]` (NATS JetStream: streams
    /// replicated across a cluster).
    pub store: String,
    /// The captures, each a connector run as a child process.
    pub captures: Vec<CaptureSpec>,
    /// The materializations, each landing collections in a destination's tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub materializations: Vec<MaterializationSpec>,
}

/// One materialization.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaterializationSpec {
    /// A name unique in the pipeline: letters, digits, `-` and `_`. The destination keeps
    /// its read positions under it.
    pub name: String,
    /// The kind of destination: `postgres`.
    pub destination: String,
    /// The destination's connection settings (the kind's endpoint; secrets inline, from an
    /// env variable or a file, never logged).
    pub endpoint: Value,
    /// Collections and the tables they land in.
    pub bindings: Vec<MaterializationBindingSpec>,
}

/// A collection landed in a destination table.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaterializationBindingSpec {
    /// The collection (a capture binding's `target`).
    pub source: String,
    /// The destination table (`table` or `schema.table`).
    pub target: String,
    /// Append every document as a row with its op, position and commit time (`true`), or
    /// merge by key so the table equals the source table (`false`, the default).
    #[serde(default)]
    pub delta_updates: bool,
    /// Delta tables: an incremental backfill re-reads every row, and each would become a
    /// row again; with this set, a re-read row equal to its key's latest row is left out
    /// (keyed collections only).
    #[serde(default)]
    pub skip_unchanged_rereads: bool,
}

/// One capture.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// A name unique in the pipeline: letters, digits, `-` and `_`.
    pub name: String,
    /// The connector binary: a path, or a name found beside `cdc` or on `PATH`
    /// (`source-postgres`, `source-mysql`, `source-sqlserver`).
    pub connector: String,
    /// The connector's config file (DESIGN.md §2), relative to the pipeline file.
    pub config: PathBuf,
    /// Per collection of this capture, what it keeps: `full` (every document; the default)
    /// or `compacted` (each key's latest document, deletes kept as tombstones for
    /// `tombstone_hours`; keyed collections only). A delta table rebuilt
    /// from a compacted collection holds the kept documents only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retention: BTreeMap<String, Retention>,
    /// Compacted collections: hours a delete is kept (by its source commit time) before a
    /// compaction may drop it. A materialization further behind than that must be rebuilt
    /// (`cdc backfill PIPELINE materialization`). Default 168 (a week).
    #[serde(default = "default_tombstone_hours")]
    pub tombstone_hours: u64,
    /// Compacted collections: the capture's log is compacted once its committed size is at
    /// least this many KiB and has doubled since the last compaction. Default 65536 (64 MiB).
    #[serde(default = "default_compact_after_kib")]
    pub compact_after_kib: u64,
}

/// What a collection keeps (PIPELINE.md §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Every document.
    #[default]
    Full,
    /// The latest document per key (see [`crate::compaction`]).
    Compacted,
}

fn default_tombstone_hours() -> u64 {
    168
}

fn default_compact_after_kib() -> u64 {
    64 << 10
}

/// A validated pipeline: the spec with every path resolved and every collection named.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The spec as written.
    pub spec: PipelineSpec,
    /// The store's location.
    pub store: StoreLocation,
    /// Per capture: the connector binary, the config path, the collections by binding.
    pub captures: Vec<Capture>,
}

impl Pipeline {
    /// The capture holding `collection`, and the collection's binding index in it.
    pub fn collection(&self, collection: &str) -> Option<(&Capture, usize)> {
        self.captures.iter().find_map(|c| {
            c.collections
                .iter()
                .position(|n| n == collection)
                .map(|b| (c, b))
        })
    }
}

/// A capture, resolved.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Its name.
    pub name: String,
    /// The connector binary.
    pub connector: PathBuf,
    /// The connector's config file.
    pub config: PathBuf,
    /// Collection names, in binding order.
    pub collections: Vec<String>,
    /// Each binding's source table, `(namespace, stream)`, in binding order.
    pub resources: Vec<(String, String)>,
    /// Per binding, whether its collection is compacted.
    pub compacted: Vec<bool>,
    /// Compacted collections drop deletes older than this, in milliseconds.
    pub tombstone_ms: u64,
    /// The committed log's size at which compaction starts, in bytes.
    pub compact_after_bytes: u64,
}

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// NATS JetStream.
    JetStream(crate::store::JetStreamLocation),
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Spec(format!("cannot read pipeline file {}: {e}", path.display()))
        })?;
        let spec: PipelineSpec = serde_json::from_str(&text).map_err(|e| {
            Error::Spec(format!(
                "{} is not a valid pipeline spec: {e}; `cdc spec` prints the accepted shape",
                path.display()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::resolve(spec, base)
    }

    /// Validates `spec`, resolving paths against `base`.
    pub fn resolve(spec: PipelineSpec, base: &Path) -> Result<Self> {
        let store = store_location(&spec.store, base)?;
        if spec.captures.is_empty() {
            return Err(Error::Spec(
                "captures: the pipeline has none; add {\"name\", \"connector\", \"config\"}".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut collections = HashSet::new();
        let mut captures = Vec::new();
        for (i, c) in spec.captures.iter().enumerate() {
            let at = format!("captures[{i}]");
            if !valid_name(&c.name) {
                return Err(Error::Spec(format!(
                    "{at}.name {:?}: use letters, digits, '-' and '_' only",
                    c.name
                )));
            }
            if !names.insert(c.name.clone()) {
                return Err(Error::Spec(format!(
                    "{at}.name {:?} is used by an earlier capture; names are unique",
                    c.name
                )));
            }
            let connector = find_connector(&c.connector).ok_or_else(|| {
                Error::Spec(format!(
                    "{at}.connector {:?}: no such binary beside cdc or on PATH; give its path",
                    c.connector
                ))
            })?;
            let config = base.join(&c.config);
            let bindings =
                config_bindings(&config).map_err(|e| Error::Spec(format!("{at}.config: {e}")))?;
            let mut names_here = Vec::new();
            let mut resources = Vec::new();
            for (b, binding) in bindings.iter().enumerate() {
                let resource = |field: &str| {
                    binding
                        .pointer(&format!("/resource/{field}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                resources.push((resource("namespace"), resource("stream")));
                let target = binding
                    .get("target")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(Error::Spec(format!(
                        "{at}.config {}: binding {b} has no \"target\"; it names the binding's collection",
                        config.display()
                    )));
                }
                if !collections.insert(target.to_string()) {
                    return Err(Error::Spec(format!(
                        "{at}.config {}: binding {b}'s target {target:?} is already a collection; targets are unique in a pipeline",
                        config.display()
                    )));
                }
                names_here.push(target.to_string());
            }
            for collection in c.retention.keys() {
                if !names_here.contains(collection) {
                    return Err(Error::Spec(format!(
                        "{at}.retention: {collection:?} is no collection of this capture; its collections are {names_here:?}"
                    )));
                }
            }
            let compacted: Vec<bool> = names_here
                .iter()
                .map(|n| c.retention.get(n) == Some(&Retention::Compacted))
                .collect();
            captures.push(Capture {
                name: c.name.clone(),
                connector,
                config,
                collections: names_here,
                resources,
                compacted,
                tombstone_ms: c.tombstone_hours.saturating_mul(3_600_000),
                compact_after_bytes: c.compact_after_kib.saturating_mul(1024),
            });
        }
        let mut materializations = HashSet::new();
        for (i, m) in spec.materializations.iter().enumerate() {
            let at = format!("materializations[{i}]");
            if !valid_name(&m.name) {
                return Err(Error::Spec(format!(
                    "{at}.name {:?}: use letters, digits, '-' and '_' only",
                    m.name
                )));
            }
            if !materializations.insert(m.name.clone()) {
                return Err(Error::Spec(format!(
                    "{at}.name {:?} is used by an earlier materialization; names are unique",
                    m.name
                )));
            }
            if m.bindings.is_empty() {
                return Err(Error::Spec(format!(
                    "{at}.bindings: none; add {{\"source\": <collection>, \"target\": <table>}}"
                )));
            }
            let mut targets = HashSet::new();
            for (j, b) in m.bindings.iter().enumerate() {
                if !collections.contains(&b.source) {
                    return Err(Error::Spec(format!(
                        "{at}.bindings[{j}].source {:?} is no collection of this pipeline; collections are the captures' binding targets",
                        b.source
                    )));
                }
                if b.target.is_empty() || !targets.insert(b.target.clone()) {
                    return Err(Error::Spec(format!(
                        "{at}.bindings[{j}].target {:?}: name a table, once per materialization",
                        b.target
                    )));
                }
            }
        }
        Ok(Self {
            spec,
            store,
            captures,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

fn store_location(url: &str, base: &Path) -> Result<StoreLocation> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Spec(format!(
                "store {url:?}: file:// takes an absolute path (file:///dir); for a path relative to the pipeline file write file:dir"
            )));
        }
        return Ok(StoreLocation::Embedded(PathBuf::from(path)));
    }
    if let Some(path) = url.strip_prefix("file:") {
        return Ok(StoreLocation::Embedded(base.join(path)));
    }
    if url.starts_with("nats://") {
        return crate::store::JetStreamLocation::parse(url)
            .map(StoreLocation::JetStream)
            .map_err(|e| Error::Spec(format!("store {url:?}: {e}")));
    }
    Err(Error::Spec(format!(
        "store {url:?}: use file:///absolute/dir or file:relative/dir (the embedded store), or nats://host:port[/prefix][?replicas=N] (NATS JetStream)"
    )))
}

/// The bindings of a connector config (the runtime reads only their `target`s).
fn config_bindings(config: &Path) -> std::result::Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not JSON: {e}", config.display()))?;
    v.get("bindings")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| format!("{} has no \"bindings\" list", config.display()))
}

/// A connector binary: a path as given, else beside the running `cdc`, else on `PATH`.
fn find_connector(name: &str) -> Option<PathBuf> {
    let given = PathBuf::from(name);
    if name.contains('/') {
        return given.is_file().then_some(given);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    beside.into_iter().chain(on_path).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cdc-spec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn spec(v: Value) -> PipelineSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let d = dir("errors");
        std::fs::write(d.join("c.json"), json!({"endpoint": {}, "bindings": [{"resource": {"namespace": "s", "stream": "t"}, "target": "acme/t"}]}).to_string()).unwrap();
        std::fs::write(
            d.join("untargeted.json"),
            json!({"endpoint": {}, "bindings": [{"resource": {"namespace": "s", "stream": "t"}}]})
                .to_string(),
        )
        .unwrap();
        let sh = "/bin/sh";
        let ok = Pipeline::resolve(spec(json!({"store": "file:store", "captures": [{"name": "a", "connector": sh, "config": "c.json"}]})), &d).unwrap();
        assert_eq!(ok.store, StoreLocation::Embedded(d.join("store")));
        assert_eq!(ok.captures[0].collections, ["acme/t"]);
        let err = |v: Value| Pipeline::resolve(spec(v), &d).unwrap_err().to_string();
        assert!(err(json!({"store": "s3://x", "captures": []})).contains("file:///absolute/dir"));
        assert!(
            err(json!({"store": "file:s", "captures": []}))
                .contains("captures: the pipeline has none")
        );
        assert!(err(json!({"store": "file:s", "captures": [{"name": "a b", "connector": sh, "config": "c.json"}]})).contains("captures[0].name"));
        assert!(err(json!({"store": "file:s", "captures": [{"name": "a", "connector": "no-such-connector", "config": "c.json"}]})).contains("captures[0].connector"));
        assert!(err(json!({"store": "file:s", "captures": [{"name": "a", "connector": sh, "config": "nope.json"}]})).contains("captures[0].config: cannot read"));
        assert!(err(json!({"store": "file:s", "captures": [{"name": "a", "connector": sh, "config": "untargeted.json"}]})).contains("has no \"target\""));
        let twice = err(json!({"store": "file:s", "captures": [
            {"name": "a", "connector": sh, "config": "c.json"},
            {"name": "b", "connector": sh, "config": "c.json"}]}));
        assert!(
            twice.contains("captures[1].config") && twice.contains("already a collection"),
            "{twice}"
        );
        assert!(
            err(json!({"store": "file:s", "captures": [
            {"name": "a", "connector": sh, "config": "c.json"},
            {"name": "a", "connector": sh, "config": "c.json"}]}))
            .contains("captures[1].name")
        );
        assert!(err(json!({"store": "file:s", "captures": [{"name": "a", "connector": sh, "config": "c.json", "retention": {"acme/x": "compacted"}}]})).contains("captures[0].retention: \"acme/x\" is no collection"));
        let compacted = Pipeline::resolve(spec(json!({"store": "file:s", "captures": [{"name": "a", "connector": sh, "config": "c.json", "retention": {"acme/t": "compacted"}}]})), &d).unwrap();
        assert_eq!(compacted.captures[0].compacted, [true]);
        std::fs::write(
            d.join("p.json"),
            r#"{"store": "file:s", "captures": [], "extra": 1}"#,
        )
        .unwrap();
        assert!(
            Pipeline::load(&d.join("p.json"))
                .unwrap_err()
                .to_string()
                .contains("cdc spec")
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
