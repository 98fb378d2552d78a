//! A capture's backfill requests (incremental, reset, cancel; see [`crate::request`]),
//! carried out between two starts of its connector.
//!
//! [`start`] runs before a start: for each pending request it commits the truncate
//! markers (their own unit, the state unchanged), raises the counters in the connector's
//! config (to the request's targets, so a repeat changes nothing), or, for a cancel, commits
//! the state with the bindings set active (and marks it done); then marks the request
//! running. [`watch`] runs
//! beside the connector: a new request stops it (SIGTERM: it finishes its unit) so that the
//! next start carries the request out, and a running request whose bindings are all
//! active again at their new counters is marked done, here or by [`finish`] after the run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Pid;
use serde_json::Value;

use super::RunOptions;
use crate::error::{Error, Result};
use crate::request::{self, Kind, Phase, Request, TableAction};
use crate::spec::Capture;
use crate::status::now_ms;
use crate::store::{Commit, Store};

fn mine<'a>(capture: &'a Capture, requests: &'a [Request]) -> impl Iterator<Item = &'a Request> {
    requests.iter().filter(|r| {
        r.open()
            && r.capture.as_deref() == Some(capture.name.as_str())
            && matches!(r.kind, Kind::Incremental | Kind::Reset | Kind::Cancel)
    })
}

/// Carries out the capture's pending requests (see the module docs).
pub(super) fn start(capture: &Capture, store: &dyn Store) -> Result<()> {
    let requests = store.requests()?;
    for request in mine(capture, &requests).filter(|r| r.phase == Phase::Pending) {
        let mut request = request.clone();
        let bindings: Vec<usize> = capture
            .collections
            .iter()
            .enumerate()
            .filter(|(_, c)| request.collections.contains(c))
            .map(|(i, _)| i)
            .collect();
        match request.kind {
            Kind::Cancel => {
                cancel(capture, store, &bindings)?;
                request.phase = Phase::Done;
                request.note = "backfills stopped; the tables are partial".into();
            }
            _ => {
                if request.table != TableAction::Keep {
                    commit_markers(capture, store, &bindings, &request)?;
                }
                raise_counters(&capture.config, capture, &bindings, &request)?;
                request.phase = Phase::Running;
                request.note = "counters raised; backfilling".into();
            }
        }
        tracing::info!(capture = %capture.name, request = %request.id, "{}", request.note);
        store.put_request(&request)?;
    }
    Ok(())
}

/// Marks running requests done whose bindings are all active at their new counters; a
/// reset that rebuilds downstream tables then asks each materialization for a rebuild.
pub(super) fn finish(
    capture: &Capture,
    store: &dyn Store,
    materializations: &[(String, Vec<String>)],
) -> Result<()> {
    let requests = store.requests()?;
    let running: Vec<&Request> = mine(capture, &requests)
        .filter(|r| r.phase == Phase::Running)
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let state = store
        .committed(&capture.name)?
        .map(|c| c.state)
        .unwrap_or_default();
    for request in running {
        let done = request.collections.iter().all(|collection| {
            let Some(b) = capture.collections.iter().position(|c| c == collection) else {
                return true;
            };
            let counter = request.counters.get(collection).copied().unwrap_or(0);
            state["bindings"][state_key(capture, b, counter)]["phase"] == "active"
        });
        if !done {
            continue;
        }
        let mut request = request.clone();
        request.phase = Phase::Done;
        request.note = "every table re-read".into();
        if request.table == TableAction::Rebuild {
            for (m, reads) in materializations {
                let collections: Vec<String> = request
                    .collections
                    .iter()
                    .filter(|c| reads.contains(c))
                    .cloned()
                    .collect();
                if collections.is_empty() {
                    continue;
                }
                let follow_up = Request {
                    id: format!("{}-{m}", request.id),
                    kind: Kind::Materialization,
                    capture: None,
                    materialization: Some(m.clone()),
                    collections,
                    mode: None,
                    table: TableAction::Rebuild,
                    counters: Default::default(),
                    endpoint: Default::default(),
                    phase: Phase::Pending,
                    created_at_ms: now_ms(),
                    note: format!("follows {}", request.id),
                };
                store.put_request(&follow_up)?;
            }
            request.note =
                "every table re-read; a rebuild of the destination tables follows".into();
        }
        tracing::info!(capture = %capture.name, request = %request.id, "{}", request.note);
        store.put_request(&request)?;
    }
    Ok(())
}

/// Beside a running connector (`pid`), until `running` is cleared: stops it when a
/// request arrives (setting `interrupted`), and marks finished requests done.
pub(super) fn watch(
    capture: &Capture,
    store: &dyn Store,
    running: &AtomicBool,
    interrupted: &AtomicBool,
    pid: Option<Pid>,
    options: &RunOptions,
) {
    let mut waited = Duration::ZERO;
    while running.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
        if waited < Duration::from_secs(1) || interrupted.load(Ordering::SeqCst) {
            continue;
        }
        waited = Duration::ZERO;
        let Ok(requests) = store.requests() else {
            continue;
        };
        if mine(capture, &requests).any(|r| r.phase == Phase::Pending) {
            interrupted.store(true, Ordering::SeqCst);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        if let Err(e) = finish(capture, store, &options.materializations) {
            tracing::warn!(capture = %capture.name, "checking backfill requests: {e}");
        }
    }
}

/// The state key of binding `b` at backfill counter `counter` (DESIGN.md §4).
fn state_key(capture: &Capture, b: usize, counter: u32) -> String {
    let (namespace, stream) = &capture.resources[b];
    if counter == 0 {
        format!("{namespace}.{stream}")
    } else {
        format!("{namespace}.{stream}.v{counter}")
    }
}

/// Commits one truncate marker per binding as a unit of its own, the state unchanged.
fn commit_markers(
    capture: &Capture,
    store: &dyn Store,
    bindings: &[usize],
    request: &Request,
) -> Result<()> {
    let Some(last) = store.committed(&capture.name)? else {
        // Nothing landed yet: there is nothing downstream to empty.
        return Ok(());
    };
    let mut log = store.writer(&capture.name)?;
    for &b in bindings {
        log.append(&request::marker(b, request))?;
    }
    log.commit(&Commit {
        units: last.units + 1,
        documents: last.documents + bindings.len() as u64,
        committed_at_ms: now_ms(),
        ..last
    })
}

/// Sets the state of each binding still backfilling active (`cdc status` shows its table
/// partial while the cancel is its last request).
fn cancel(capture: &Capture, store: &dyn Store, bindings: &[usize]) -> Result<()> {
    let Some(mut last) = store.committed(&capture.name)? else {
        return Ok(());
    };
    let config = read_config(&capture.config)?;
    for &b in bindings {
        let counter = config["bindings"][b]["backfill"].as_u64().unwrap_or(0);
        let key = state_key(capture, b, u32::try_from(counter).unwrap_or(0));
        if let Some(binding) = last.state["bindings"].get_mut(&key)
            && binding["phase"] != "active"
        {
            binding["phase"] = "active".into();
        }
    }
    let mut log = store.writer(&capture.name)?;
    last.units += 1;
    last.committed_at_ms = now_ms();
    log.commit(&last)
}

fn read_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(Error::store(format!("reading {}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Spec(format!("{} is not JSON: {e}", path.display())))
}

/// Raises the counters (and sets the mode and endpoint settings) of a request in the
/// connector's config file, replaced atomically.
fn raise_counters(
    path: &Path,
    capture: &Capture,
    bindings: &[usize],
    request: &Request,
) -> Result<()> {
    let mut config = read_config(path)?;
    for &b in bindings {
        let collection = &capture.collections[b];
        let binding = &mut config["bindings"][b];
        let target = u64::from(request.counters.get(collection).copied().unwrap_or(0));
        let current = binding["backfill"].as_u64().unwrap_or(0);
        binding["backfill"] = current.max(target).into();
        if let Some(mode) = &request.mode {
            binding["resource"]["mode"] = mode.clone().into();
        }
    }
    for (setting, value) in &request.endpoint {
        let mut at = &mut config["endpoint"];
        for part in setting.split('.') {
            at = &mut at[part];
        }
        *at = value.clone();
    }
    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::Damaged(e.to_string()))?;
    backfill_core::state::write_atomically(path, &bytes)
        .map_err(Error::store(format!("writing {}", path.display())))
}
