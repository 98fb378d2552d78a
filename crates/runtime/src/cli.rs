//! The `cdc` command line (PIPELINE.md §1):
//!
//! ```text
//! cdc spec                              JSON Schema of the pipeline spec
//! cdc check  PIPELINE                   validate the spec, then each connector's `check`
//! cdc run    PIPELINE [--until-caught-up]
//! cdc status PIPELINE [--json]          per binding phase, rows, %, rows/s, ETA; lag
//! cdc read   PIPELINE COLLECTION        the collection's committed documents, one per line
//! ```

use std::path::PathBuf;
use std::process::{Command as Process, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::io::Write;

use backfill_core::consumer::Line;
use backfill_core::terminal::Bars;
use clap::{Parser, Subcommand};

use crate::capture::{self, RunOptions};
use crate::destination::DestinationKind;
use crate::error::{Error, Result};
use crate::materialize::{self, MaterializeOptions};
use crate::spec::{Pipeline, PipelineSpec, StoreLocation};
use crate::status;
use crate::store::{EmbeddedStore, JetStreamStore, Store};

mod backfill;

#[derive(Debug, Parser)]
#[command(
    name = "cdc",
    version,
    about = "Runs capture connectors and lands their changes in collections"
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: tracing::Level,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the JSON Schema of the pipeline spec.
    Spec,
    /// Validate the pipeline spec, then run each capture connector's `check`.
    Check { pipeline: PathBuf },
    /// Run every capture, committing its units to the store, until stopped.
    Run {
        pipeline: PathBuf,
        /// Stop once every capture has caught up (each connector's --until-caught-up).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Show each binding's progress and each capture's lag, read from the store.
    Status {
        pipeline: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Request a backfill (PIPELINE.md §5); `cdc run` carries it out, `cdc status` shows it.
    Backfill {
        pipeline: PathBuf,
        #[command(flatten)]
        wanted: backfill::Wanted,
    },
    /// Print a collection's committed documents (and truncates), one per line.
    Read {
        pipeline: PathBuf,
        collection: String,
    },
}

/// Runs the `cdc` binary with the destination kinds it links.
pub fn main(destinations: &[Box<dyn DestinationKind>]) -> ExitCode {
    let cli = Cli::parse();
    let bars = match &cli.command {
        Command::Run { .. } => Bars::for_stderr(),
        _ => None,
    };
    backfill_core::terminal::init_logging(cli.log_level, false, bars.as_ref());
    match run_command(cli.command, cli.log_level, bars, destinations) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // the commands' own output
fn print(text: &str) {
    println!("{text}");
}

/// The pipeline's store. Only `run` makes an embedded store that does not exist yet: a
/// `status` or `read` of a mistyped path says so instead of showing an empty store.
fn open_store(pipeline: &Pipeline, create: bool) -> Result<Arc<dyn Store>> {
    match &pipeline.store {
        StoreLocation::Embedded(dir) if !create && !dir.is_dir() => Err(Error::Spec(format!(
            "store: {} does not exist; check the pipeline's \"store\", or start the pipeline with `cdc run`",
            dir.display()
        ))),
        StoreLocation::Embedded(dir) => Ok(Arc::new(EmbeddedStore::open(dir)?)),
        StoreLocation::JetStream(location) => {
            Ok(Arc::new(JetStreamStore::connect(location.clone())?))
        }
    }
}

/// Loads the pipeline and checks each materialization's destination kind and endpoint.
fn load(path: &std::path::Path, destinations: &[Box<dyn DestinationKind>]) -> Result<Pipeline> {
    let pipeline = Pipeline::load(path)?;
    for (i, m) in pipeline.spec.materializations.iter().enumerate() {
        let kind = destination_kind(destinations, &m.destination)
            .map_err(|e| Error::Spec(format!("materializations[{i}].destination: {e}")))?;
        kind.validate(&m.endpoint)
            .map_err(|e| Error::Spec(format!("materializations[{i}].endpoint: {e}")))?;
    }
    Ok(pipeline)
}

fn destination_kind<'a>(
    destinations: &'a [Box<dyn DestinationKind>],
    name: &str,
) -> std::result::Result<&'a dyn DestinationKind, String> {
    destinations
        .iter()
        .find(|d| d.name() == name)
        .map(|d| &**d)
        .ok_or_else(|| {
            let known: Vec<&str> = destinations.iter().map(|d| d.name()).collect();
            format!("{name:?} is not a destination this cdc knows; use one of {known:?}")
        })
}

fn run_command(
    command: Command,
    log_level: tracing::Level,
    bars: Option<Bars>,
    destinations: &[Box<dyn DestinationKind>],
) -> Result<ExitCode> {
    match command {
        Command::Spec => {
            print(
                &serde_json::to_string_pretty(&schemars::schema_for!(PipelineSpec))
                    .unwrap_or_default(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { pipeline } => check(&load(&pipeline, destinations)?),
        Command::Run {
            pipeline,
            until_caught_up,
        } => {
            run(
                &load(&pipeline, destinations)?,
                until_caught_up,
                bars,
                destinations,
                log_level,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { pipeline, json } => {
            let pipeline = load(&pipeline, destinations)?;
            let store = open_store(&pipeline, false)?;
            let captures = status::read(&pipeline, &*store)?;
            let status = status::PipelineStatus {
                materializations: materialization_status(&pipeline, &captures, destinations),
                requests: status::shown_requests(&*store)?,
                captures,
            };
            print(&if json {
                serde_json::to_string_pretty(&status).unwrap_or_default()
            } else {
                status::render_pipeline(&status)
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill { pipeline, wanted } => {
            let pipeline = load(&pipeline, destinations)?;
            let store = open_store(&pipeline, true)?;
            for request in backfill::requests(&pipeline, &wanted)? {
                store.put_request(&request)?;
                print(&format!("requested: {}", request.line()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Read {
            pipeline,
            collection,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            read(&pipeline, &collection)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Each materialization binding's position, read from its destination, against its
/// capture's committed lines.
fn materialization_status(
    pipeline: &Pipeline,
    captures: &[status::CaptureStatus],
    destinations: &[Box<dyn DestinationKind>],
) -> Vec<status::MaterializationStatus> {
    pipeline
        .spec
        .materializations
        .iter()
        .map(|m| {
            let positions = destination_kind(destinations, &m.destination)
                .map_err(Error::Spec)
                .and_then(|kind| {
                    let bindings = materialize::table_bindings(m, pipeline)?;
                    let mut d = kind.open(&m.name, &m.endpoint)?;
                    d.prepare(&bindings, &[])?;
                    d.positions()
                });
            let (positions, error) = match positions {
                Ok(p) => (p, None),
                Err(e) => (Default::default(), Some(e.to_string())),
            };
            let tables = m
                .bindings
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let committed = pipeline
                        .collection(&b.source)
                        .and_then(|(c, _)| captures.iter().find(|s| s.capture == c.name))
                        .map_or(0, |s| s.documents);
                    let position = positions.get(&i).copied().unwrap_or(0);
                    status::TableStatus {
                        collection: b.source.clone(),
                        table: b.target.clone(),
                        position,
                        committed,
                        lag_lines: committed.saturating_sub(position),
                    }
                })
                .collect();
            status::MaterializationStatus {
                materialization: m.name.clone(),
                tables,
                error,
            }
        })
        .collect()
}

/// Each capture connector's `check`, its lines prefixed with the capture's name.
fn check(pipeline: &Pipeline) -> Result<ExitCode> {
    let mut ok = true;
    for c in &pipeline.captures {
        let out = Process::new(&c.connector)
            .arg("check")
            .arg("--config")
            .arg(&c.config)
            .output()
            .map_err(|e| Error::Connector {
                capture: c.name.clone(),
                message: format!("cannot run {}: {e}", c.connector.display()),
            })?;
        ok &= out.status.success();
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            print(&format!("{}: {line}", c.name));
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs every capture and every materialization on a thread of its own until each ends;
/// the first error stops the others.
fn run(
    pipeline: &Pipeline,
    until_caught_up: bool,
    bars: Option<Bars>,
    destinations: &[Box<dyn DestinationKind>],
    log_level: tracing::Level,
) -> Result<()> {
    let store = open_store(pipeline, true)?;
    let stop = Arc::new(AtomicBool::new(false));
    on_stop_signals(Arc::clone(&stop));
    let work_dir = std::env::temp_dir().join(format!("cdc-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .map_err(Error::store(format!("creating {}", work_dir.display())))?;
    let options = RunOptions {
        until_caught_up,
        work_dir: work_dir.clone(),
        stop: Arc::clone(&stop),
        bars,
        log_level,
        committed: Arc::default(),
        materializations: pipeline
            .spec
            .materializations
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.bindings.iter().map(|b| b.source.clone()).collect(),
                )
            })
            .collect(),
    };
    let materialize = MaterializeOptions {
        stop: Arc::clone(&stop),
        captures_done: Arc::new(AtomicBool::new(false)),
        poll: std::time::Duration::from_millis(200),
        committed: Arc::clone(&options.committed),
    };
    let captures_running = Arc::new(std::sync::atomic::AtomicUsize::new(pipeline.captures.len()));
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let mut handles: Vec<_> = pipeline
            .captures
            .iter()
            .map(|c| {
                let (store, options, stop) =
                    (Arc::clone(&store), options.clone(), Arc::clone(&stop));
                let (running, done) = (
                    Arc::clone(&captures_running),
                    Arc::clone(&materialize.captures_done),
                );
                s.spawn(move || {
                    let result = capture::run(c, &*store, &options);
                    if result.is_err() {
                        stop.store(true, Ordering::SeqCst);
                        capture::forward_stop();
                    }
                    if running.fetch_sub(1, Ordering::SeqCst) == 1 && until_caught_up {
                        done.store(true, Ordering::SeqCst);
                    }
                    result
                })
            })
            .collect();
        for m in &pipeline.spec.materializations {
            let kind = destination_kind(destinations, &m.destination).map_err(Error::Spec);
            let (store, options, stop) =
                (Arc::clone(&store), materialize.clone(), Arc::clone(&stop));
            handles.push(s.spawn(move || {
                let result = kind.and_then(|kind| {
                    materialize::Job {
                        m,
                        pipeline,
                        store: &*store,
                        kind,
                        options: &options,
                    }
                    .run()
                });
                if result.is_err() {
                    stop.store(true, Ordering::SeqCst);
                    capture::forward_stop();
                }
                result
            }));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Damaged("a capture thread panicked".into())))
            })
            .collect()
    });
    let _ = std::fs::remove_dir_all(&work_dir);
    results.into_iter().collect()
}

/// SIGTERM and SIGINT: stop, and ask each connector to finish its unit.
fn on_stop_signals(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("stop requested; each capture finishes the unit in hand");
            stop.store(true, Ordering::SeqCst);
            capture::forward_stop();
        });
    });
}

/// Prints the committed lines of `collection`: each document or truncate as the connector
/// wrote it, without the binding index.
fn read(pipeline: &Pipeline, collection: &str) -> Result<()> {
    let (capture, binding) = pipeline.collection(collection).ok_or_else(|| {
        Error::Spec(format!(
            "no collection {collection:?}; `cdc status` lists them"
        ))
    })?;
    let store = open_store(pipeline, false)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in store.read(&capture.name)? {
        let line = line?;
        if let Ok(
            Line::Document { binding: b, doc }
            | Line::Truncate {
                binding: b,
                truncate: doc,
            },
        ) = Line::parse(&line)
            && b == binding
        {
            writeln!(out, "{doc}").map_err(Error::store("writing stdout"))?;
        }
    }
    Ok(())
}
