//! Runs one capture: the connector as a child process, its units committed to the store.
//!
//! ## Exactly once, across crashes of the runtime, the connector or both
//!
//! The store is the capture's recovery log (PIPELINE.md §3). Before each start of the
//! connector the runtime writes the state of the store's last commit to the connector's
//! state file (or removes the file when the capture never committed), so the connector
//! resumes exactly after the last unit the store holds, and its first line is that
//! state's checkpoint. Then, for every line (the consumer rule of DESIGN.md §4, applied by
//! `backfill_core::consumer`):
//!
//! * a document or truncate is appended to the store's uncommitted unit;
//! * a checkpoint unlike the last one committed commits the unit with that state, in one
//!   atomic store commit; a checkpoint equal to it (the resume checkpoint, or the
//!   connector's in-process retry) discards the unit;
//! * once the commit is durable, the runtime acknowledges the checkpoint's position on the
//!   connector's stdin (`capture --acks stdin`), and only then may the connector tell its
//!   source the position is consumed. The embedded store makes a unit durable on a thread
//!   while the next unit is read; the acknowledgement is written from that thread when the
//!   commit is done, and one commit is in flight at most.
//!
//! A crash of the connector leaves an uncommitted unit: discarded, and the next start
//! re-reads it from the source, which was never told it was consumed. A crash of the
//! runtime leaves the same in the store (truncated by the next writer) and a connector
//! whose stdout is gone (it dies on the broken pipe or is killed with it). A crash between
//! the store's commit and the acknowledgement only delays the acknowledgement. So every
//! committed source change is in the store exactly once, in commit order; and since the
//! committed log is exactly the connector's committed output, DESIGN.md §6's guarantees
//! hold for each collection.
//!
//! Memory stays bounded: lines are handed to the store as they are read, never a unit
//! whole.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backfill_core::consumer::{CommitRule, Line, Verdict};
use backfill_core::terminal::Bars;
use rustix::process::Pid;
use serde_json::{Value, json};

use crate::compaction;
use crate::error::{Error, Result};
use crate::spec::Capture;

mod requests;
use crate::status::{Progress, now_ms};
use crate::store::{Commit, Store};

/// How a capture runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop once the connector has caught up (`capture --until-caught-up`) and exited.
    pub until_caught_up: bool,
    /// Where the connector's state file is written before each start.
    pub work_dir: PathBuf,
    /// Set on SIGTERM/SIGINT: finish the unit in hand and stop.
    pub stop: Arc<AtomicBool>,
    /// Progress bars at a terminal.
    pub bars: Option<Bars>,
    /// Told of every durable commit (the materializations wait on it).
    pub committed: Arc<crate::store::Committed>,
    /// The connectors' log level (the runtime's own).
    pub log_level: tracing::Level,
    /// Each materialization's name and the collections it reads: a reset that rebuilds
    /// downstream tables asks them for a rebuild once its backfills are done.
    pub materializations: Vec<(String, Vec<String>)>,
}

/// How often `cdc run` logs a capture's progress when no bars are drawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Connector exits in a row without a commit before the runtime gives up.
const MAX_FAILED_STARTS: u32 = 5;

/// Runs `capture` until it is caught up (with `until_caught_up`) or stopped, restarting the
/// connector when it exits, and after the store was unavailable.
pub fn run(capture: &Capture, store: &dyn Store, options: &RunOptions) -> Result<()> {
    let mut progress = Progress::default();
    let mut failed_starts = 0;
    let mut backoff = Duration::from_millis(500);
    loop {
        requests::start(capture, store)?;
        let units_before = store
            .committed(&capture.name)
            .ok()
            .flatten()
            .map(|c| c.units);
        let interrupted = AtomicBool::new(false);
        let outcome = run_once(capture, store, options, &mut progress, &interrupted);
        requests::finish(capture, store, &options.materializations)?;
        if interrupted.load(Ordering::SeqCst) && !options.stop.load(Ordering::SeqCst) {
            tracing::info!(capture = %capture.name, "restarting the connector to carry out a backfill request");
            continue;
        }
        match outcome {
            Ok(true) => {
                tracing::info!(capture = %capture.name, "capture finished");
                return Ok(());
            }
            _ if options.stop.load(Ordering::SeqCst) => return Ok(()),
            Err(e @ (Error::Store { .. } | Error::Damaged(_) | Error::Spec(_))) => return Err(e),
            outcome => {
                let units_after = store
                    .committed(&capture.name)
                    .ok()
                    .flatten()
                    .map(|c| c.units);
                if units_after.unwrap_or(0) > units_before.unwrap_or(0) + 1 {
                    failed_starts = 0;
                    backoff = Duration::from_millis(500);
                }
                failed_starts += 1;
                let why = match outcome {
                    Err(e) => e.to_string(),
                    Ok(_) => "the connector exited".to_string(),
                };
                if failed_starts > MAX_FAILED_STARTS {
                    return Err(Error::Connector {
                        capture: capture.name.clone(),
                        message: format!(
                            "{why}; it failed {MAX_FAILED_STARTS} times in a row without committing, see its error line above"
                        ),
                    });
                }
                tracing::warn!(capture = %capture.name, "{why}; restarting it in {:.1} s from the last commit (attempt {failed_starts} of {MAX_FAILED_STARTS})", backoff.as_secs_f64());
                let until = Instant::now() + backoff;
                while Instant::now() < until && !options.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One start of the connector, from the store's last commit to the connector's exit:
/// whether the capture is done (caught up, or stopped cleanly) or must start again.
fn run_once(
    capture: &Capture,
    store: &dyn Store,
    options: &RunOptions,
    progress: &mut Progress,
    interrupted: &AtomicBool,
) -> Result<bool> {
    let mut log = store.writer(&capture.name)?;
    let committed = store.committed(&capture.name)?;
    let state_file = options
        .work_dir
        .join(format!("{}.state.json", capture.name));
    write_state_file(&state_file, committed.as_ref().map(|c| &c.state))?;
    let mut child = start(capture, &state_file, options)?;
    let pid = pid_of(&child);
    children().extend(pid);
    if options.stop.load(Ordering::SeqCst) {
        forward_stop();
    }
    let running = AtomicBool::new(true);
    let pumped = std::thread::scope(|s| {
        // Watches the store for backfill requests while the connector runs.
        s.spawn(|| requests::watch(capture, store, &running, interrupted, pid, options));
        let pumped = pump(
            capture, store, &mut child, &mut *log, committed, progress, options,
        );
        running.store(false, Ordering::SeqCst);
        pumped
    });
    if pumped.is_err() {
        // A connector whose unit cannot land is stopped, not left to run on.
        let _ = child.kill();
    }
    let status = finish(&mut child);
    children().retain(|p| Some(*p) != pid);
    log.discard()?;
    pumped?;
    Ok(status.is_some_and(|s| s.success())
        && (options.until_caught_up || options.stop.load(Ordering::SeqCst)))
}

/// The connectors running now, for [`forward_stop`].
static CHILDREN: std::sync::Mutex<Vec<Pid>> = std::sync::Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<Pid>> {
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pid_of(child: &Child) -> Option<Pid> {
    Pid::from_raw(i32::try_from(child.id()).ok()?)
}

/// Asks every running connector to finish its unit and exit (SIGTERM), as a stop of the
/// runtime asks.
pub fn forward_stop() {
    for pid in children().iter() {
        let _ = rustix::process::kill_process(*pid, rustix::process::Signal::TERM);
    }
}

/// Writes the store's last committed state where the connector reads it, or removes the
/// file when the capture never committed (the connector then starts from its config).
fn write_state_file(path: &Path, state: Option<&Value>) -> Result<()> {
    match state {
        Some(state) => backfill_core::state::write_atomically(
            path,
            &serde_json::to_vec(state).map_err(|e| Error::Damaged(e.to_string()))?,
        )
        .map_err(Error::store(format!("writing {}", path.display()))),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::store(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        },
    }
}

fn start(capture: &Capture, state_file: &Path, options: &RunOptions) -> Result<Child> {
    let mut cmd = Command::new(&capture.connector);
    cmd.args(["--log-level", options.log_level.as_str()])
        .arg("capture")
        .arg("--config")
        .arg(&capture.config)
        .arg("--state")
        .arg(state_file)
        .args(["--acks", "stdin"]);
    if options.until_caught_up {
        cmd.arg("--until-caught-up");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Connector {
            capture: capture.name.clone(),
            message: format!("cannot start {}: {e}", capture.connector.display()),
        })
}

/// Reads the connector's stdout to its end, committing and acknowledging units.
fn pump(
    capture: &Capture,
    store: &dyn Store,
    child: &mut Child,
    log: &mut dyn crate::store::CaptureLog,
    committed: Option<Commit>,
    progress: &mut Progress,
    options: &RunOptions,
) -> Result<()> {
    let protocol = |message: String| Error::Connector {
        capture: capture.name.clone(),
        message,
    };
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| protocol("no stdout".into()))?;
    // Written by the commit that made a unit durable (perhaps on the store's thread).
    let acks = Arc::new(std::sync::Mutex::new(child.stdin.take()));
    let (mut units, mut documents) = committed
        .as_ref()
        .map_or((0, 0), |c| (c.units, c.documents));
    let mut rule = CommitRule::after(committed.map(|c| c.state));
    let mut compaction = store.compaction(&capture.name)?;
    let mut in_unit = 0u64;
    let mut last_doc = String::new();
    let mut first = true;
    let mut logged = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut line = String::new();
    loop {
        line.clear();
        // A cut last line (the connector was killed mid-write) is not a line.
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => {
                line.pop();
            }
            _ => break,
        }
        let parsed = Line::parse(&line).map_err(|e| protocol(format!("{e}: {line:.200}")))?;
        match parsed {
            Line::Checkpoint(state) => {
                first = false;
                match rule.checkpoint(&state) {
                    Verdict::Discard => {
                        log.discard()?;
                    }
                    Verdict::Commit => {
                        units += 1;
                        documents += in_unit;
                        progress.observe(&state, &last_doc, in_unit);
                        // Once durable, the connector may tell its source.
                        let ack = state
                            .get("position")
                            .filter(|p| !p.is_null())
                            .map(|p| json!({ "position": p }).to_string());
                        let acks = Arc::clone(&acks);
                        let committed = Arc::clone(&options.committed);
                        log.start_commit(
                            &Commit {
                                state: state.clone(),
                                units,
                                documents,
                                committed_at_ms: now_ms(),
                                progress: progress.to_json(),
                            },
                            Box::new(move || {
                                acknowledge(&acks, ack);
                                committed.notify();
                            }),
                        )?;
                        if log
                            .compactable_bytes()
                            .is_some_and(|b| compaction::due(capture, &compaction, b))
                        {
                            match compaction::compact(capture, store, log) {
                                Ok(Some(done)) => compaction = done,
                                Ok(None) => compaction.bytes = u64::MAX / 2,
                                Err(e @ (Error::Unavailable(_) | Error::Connector { .. })) => {
                                    tracing::warn!(capture = %capture.name, "compaction put off until the log has doubled again: {e}");
                                    compaction.bytes = log.compactable_bytes().unwrap_or(0);
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        match &options.bars {
                            Some(bars) => progress.draw(bars, &state, capture),
                            // A log file gets a line every few seconds instead.
                            None if logged.elapsed() >= PROGRESS_EVERY => {
                                logged = Instant::now();
                                tracing::info!(capture = %capture.name, units, documents, "{}", progress.line(&state));
                            }
                            None => {}
                        }
                    }
                }
                in_unit = 0;
            }
            _ if first => {
                return Err(protocol(format!(
                    "the first line is not a checkpoint: {line:.200}"
                )));
            }
            Line::Document { binding, .. } | Line::Truncate { binding, .. } => {
                if binding >= capture.collections.len() {
                    return Err(protocol(format!(
                        "binding {binding} is not in the config: {line:.200}"
                    )));
                }
                log.append(&line)?;
                in_unit += 1;
                std::mem::swap(&mut last_doc, &mut line);
            }
        }
    }
    // What the connector committed last is durable before the run is over.
    log.finish()
}

/// Writes an acknowledgement line on the connector's stdin.
fn acknowledge(stdin: &std::sync::Mutex<Option<std::process::ChildStdin>>, ack: Option<String>) {
    let mut stdin = stdin
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let (Some(pipe), Some(ack)) = (stdin.as_mut(), ack)
        && writeln!(pipe, "{ack}").and_then(|()| pipe.flush()).is_err()
    {
        // The connector is gone; its exit ends this run.
        *stdin = None;
    }
}

/// Waits for the connector to exit (killing it if it does not within a while).
fn finish(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}
