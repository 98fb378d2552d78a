//! The collections' schemas, read from each capture connector's `discover --json`: the
//! columns and key a materialization creates its tables from and a compaction keys its
//! collections by. The runtime names no database: the connector says what its columns are.

use std::process::Command;

use serde_json::Value;

use crate::destination::{CollectionSchema, ColumnSchema};
use crate::error::{Error, Result};
use crate::spec::Capture;

/// One capture connector's `discover --json`.
#[derive(Clone, Debug)]
pub struct Discovered(Value);

impl Discovered {
    /// Runs `capture`'s connector's `discover --json`. A failure to reach the source is
    /// [`Error::Unavailable`] (the caller retries).
    pub fn run(capture: &Capture) -> Result<Self> {
        let out = Command::new(&capture.connector)
            .args(["discover", "--json", "--config"])
            .arg(&capture.config)
            .output()
            .map_err(|e| Error::Connector {
                capture: capture.name.clone(),
                message: format!("cannot run {}: {e}", capture.connector.display()),
            })?;
        if !out.status.success() {
            return Err(Error::Unavailable(format!(
                "capture {}'s discover (for the collections' schemas) failed: {}",
                capture.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map(Self)
            .map_err(|e| Error::Connector {
                capture: capture.name.clone(),
                message: format!("discover --json printed no JSON: {e}"),
            })
    }

    /// The schema of `capture`'s binding `index`.
    pub fn schema(&self, capture: &Capture, index: usize) -> Result<CollectionSchema> {
        let (namespace, stream) = &capture.resources[index];
        let entry = self
            .0
            .get("bindings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| {
                e.pointer("/resource/namespace").and_then(Value::as_str) == Some(namespace)
                    && e.pointer("/resource/stream").and_then(Value::as_str) == Some(stream)
            })
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "capture {}'s discover does not list {namespace}.{stream} (collection {})",
                    capture.name, capture.collections[index]
                ))
            })?;
        let columns: Vec<ColumnSchema> =
            serde_json::from_value(entry["columns"].clone()).map_err(|e| Error::Connector {
                capture: capture.name.clone(),
                message: format!("discover's columns of {namespace}.{stream} are unreadable: {e}"),
            })?;
        let key = entry["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        Ok(CollectionSchema {
            connector: self.0["connector"].as_str().unwrap_or_default().to_string(),
            columns,
            key,
        })
    }
}
