//! What a user asks for (`cdc backfill`'s arguments, or the console's backfill dialog),
//! turned into durable requests, one per capture or materialization it touches, each naming
//! its collections, counters and table action. Both front ends share this one validation.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::request::{Kind, Phase, Request, TableAction};
use crate::spec::Pipeline;
use crate::status::now_ms;

/// What the user asked for: `cdc backfill`'s arguments after the pipeline, or the JSON the
/// console's dialog posts (the same fields, `bindings` and `endpoint_set` as lists).
#[derive(Debug, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wanted {
    /// incremental: re-read source tables; materialization: rebuild destination tables
    /// from their collections; reset: re-read every table of the captures and rebuild
    /// downstream; cancel: stop a running capture backfill.
    pub kind: Kind,
    /// A collection (or a destination table, for a materialization backfill); repeat
    /// for several; all when not given.
    #[arg(long = "binding")]
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Incremental: the backfill mode for the re-read (only-changes jumps ahead).
    #[arg(long)]
    #[serde(default)]
    pub mode: Option<String>,
    /// What happens to destination tables: keep (incremental's default), truncate,
    /// drop, rebuild (zero downtime; the default of materialization and reset).
    #[arg(long)]
    #[serde(default)]
    pub table: Option<TableAction>,
    /// Only this materialization (materialization backfills).
    #[arg(long)]
    #[serde(default)]
    pub materialization: Option<String>,
    /// Reset: an endpoint setting of the connector config, `path=JSON` (for example
    /// `advanced.min_backfill_xid=1234`); repeatable.
    #[arg(long = "endpoint-set")]
    #[serde(default)]
    pub endpoint_set: Vec<String>,
}

/// The mode as the config spells it: `only-changes` and `Only Changes` alike.
fn mode(given: &str) -> Result<String> {
    let words: Vec<String> = given
        .split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect()
            })
        })
        .collect();
    let spelled = words.join(" ");
    backfill_core::mode::BackfillMode::parse(&spelled)
        .map(|_| spelled)
        .map_err(|e| Error::Spec(format!("--mode: {e}")))
}

/// The requests for `wanted`, validated against the pipeline.
pub fn requests(pipeline: &Pipeline, wanted: &Wanted) -> Result<Vec<Request>> {
    let created_at_ms = now_ms();
    let id = |n: usize| format!("r{created_at_ms}-{n}");
    let mode = wanted.mode.as_deref().map(mode).transpose()?;
    let mut endpoint = BTreeMap::new();
    for set in &wanted.endpoint_set {
        let (path, value) = set.split_once('=').ok_or_else(|| {
            Error::Spec(format!("--endpoint-set {set:?}: write path=JSON, for example advanced.min_backfill_xid=1234"))
        })?;
        let value: Value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        endpoint.insert(path.to_string(), value);
    }
    let all: Vec<&String> = pipeline
        .captures
        .iter()
        .flat_map(|c| &c.collections)
        .collect();
    let mut out = Vec::new();
    if wanted.kind == Kind::Materialization {
        let table = wanted.table.unwrap_or(TableAction::Rebuild);
        if table == TableAction::Keep {
            return Err(Error::Spec("--table keep rebuilds nothing; a materialization backfill takes rebuild, truncate or drop".into()));
        }
        for m in &pipeline.spec.materializations {
            if wanted
                .materialization
                .as_ref()
                .is_some_and(|n| n != &m.name)
            {
                continue;
            }
            let mut collections: Vec<String> = Vec::new();
            for b in &m.bindings {
                let chosen = wanted.bindings.is_empty()
                    || wanted.bindings.contains(&b.source)
                    || wanted.bindings.contains(&b.target);
                if chosen && !collections.contains(&b.source) {
                    collections.push(b.source.clone());
                }
            }
            if collections.is_empty() {
                continue;
            }
            out.push(Request {
                id: id(out.len()),
                kind: Kind::Materialization,
                capture: None,
                materialization: Some(m.name.clone()),
                collections,
                mode: None,
                table,
                counters: BTreeMap::new(),
                endpoint: BTreeMap::new(),
                phase: Phase::Pending,
                created_at_ms,
                note: String::new(),
            });
        }
        if out.is_empty() {
            return Err(Error::Spec(
                "no materialization binding matches; `cdc status` lists them".into(),
            ));
        }
        return Ok(out);
    }
    for b in &wanted.bindings {
        if !all.contains(&b) {
            return Err(Error::Spec(format!(
                "--binding {b:?} is no collection of this pipeline; `cdc status` lists them"
            )));
        }
    }
    let table = wanted.table.unwrap_or(match wanted.kind {
        Kind::Reset => TableAction::Rebuild,
        _ => TableAction::Keep,
    });
    for capture in &pipeline.captures {
        let config: Value = std::fs::read_to_string(&capture.config)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let collections: Vec<String> = capture
            .collections
            .iter()
            .filter(|c| {
                wanted.kind == Kind::Reset && wanted.bindings.is_empty()
                    || wanted.bindings.is_empty()
                    || wanted.bindings.contains(c)
            })
            .cloned()
            .collect();
        if collections.is_empty() {
            continue;
        }
        let counters = if wanted.kind == Kind::Cancel {
            BTreeMap::new()
        } else {
            collections
                .iter()
                .map(|c| {
                    let b = capture.collections.iter().position(|x| x == c).unwrap_or(0);
                    let now = config["bindings"][b]["backfill"].as_u64().unwrap_or(0);
                    (c.clone(), u32::try_from(now + 1).unwrap_or(u32::MAX))
                })
                .collect()
        };
        out.push(Request {
            id: id(out.len()),
            kind: wanted.kind,
            capture: Some(capture.name.clone()),
            materialization: None,
            collections,
            mode: mode.clone(),
            table,
            counters,
            endpoint: endpoint.clone(),
            phase: Phase::Pending,
            created_at_ms,
            note: String::new(),
        });
    }
    Ok(out)
}
