//! The `cdc` command line (PIPELINE.md §1):
//!
//! ```text
//! cdc spec                              JSON Schema of the pipeline spec
//! cdc check  PIPELINE                   validate the spec, then each connector's `check`
//! cdc run    PIPELINE [--until-caught-up] [--console [ADDR]]
//! cdc status PIPELINE [--json]          per binding phase, rows, %, rows/s, ETA; lag
//! cdc backfill PIPELINE KIND [...]      request a backfill (PIPELINE.md §5)
//! cdc console PIPELINE [--addr ADDR]    the web console, from the store
//! cdc read   PIPELINE COLLECTION        the collection's committed documents, one per line
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command as Process, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::io::Write;

use backfill_core::consumer::Line;
use backfill_core::terminal::Bars;
use clap::{Parser, Subcommand};

use crate::capture::{self, RunOptions};
use crate::console;
use crate::destination::{self, DestinationKind};
use crate::error::{Error, Result};
use crate::materialize::{self, MaterializeOptions};
use crate::request::wanted::{self, Wanted};
use crate::spec::{Pipeline, PipelineSpec, StoreLocation};
use crate::status;
use crate::store::{EmbeddedStore, JetStreamStore, Store};

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
        /// Serve the web console and the Prometheus page (/metrics) at ADDR (127.0.0.1:8642
        /// when no ADDR is given). Any address but loopback needs CDC_CONSOLE_TOKEN.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = console::DEFAULT_ADDR, value_parser = console_addr)]
        console: Option<SocketAddr>,
        #[command(flatten)]
        console_tls: console::TlsFiles,
    },
    /// Serve the web console of a pipeline that runs elsewhere (or not at all), from its
    /// store. Any address but loopback needs CDC_CONSOLE_TOKEN.
    Console {
        pipeline: PathBuf,
        /// Where to serve it.
        #[arg(long, default_value = console::DEFAULT_ADDR, value_parser = console_addr)]
        addr: SocketAddr,
        #[command(flatten)]
        tls: console::TlsFiles,
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
        wanted: Wanted,
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
        let kind = destination::kind(destinations, &m.destination)
            .map_err(|e| Error::Spec(format!("materializations[{i}].destination: {e}")))?;
        kind.validate(&m.endpoint)
            .map_err(|e| Error::Spec(format!("materializations[{i}].endpoint: {e}")))?;
    }
    Ok(pipeline)
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
            console,
            console_tls,
        } => {
            let pipeline = load(&pipeline, destinations)?;
            if console.is_none() && console_tls.cert.is_some() {
                return Err(Error::Spec(
                    "--console-cert serves the console over HTTPS: add --console".into(),
                ));
            }
            let console = console
                .map(|addr| console::Bound::bind(addr, console_token(), &console_tls))
                .transpose()?;
            run(
                &pipeline,
                RunWith {
                    until_caught_up,
                    log_level,
                    console,
                },
                bars,
                destinations,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Console {
            pipeline,
            addr,
            tls,
        } => {
            let pipeline = load(&pipeline, destinations)?;
            let bound = console::Bound::bind(addr, console_token(), &tls)?;
            let store = open_store(&pipeline, false)?;
            let stop = Arc::new(AtomicBool::new(false));
            on_stop_signals(Arc::clone(&stop));
            bound.serve(&pipeline, &*store, destinations, &stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { pipeline, json } => {
            let pipeline = load(&pipeline, destinations)?;
            let store = open_store(&pipeline, false)?;
            let status = status::Watcher::new(&pipeline, destinations).read(&*store)?;
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
            for request in wanted::requests(&pipeline, &wanted)? {
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

/// How `cdc run` was asked to run.
#[derive(Debug)]
struct RunWith {
    until_caught_up: bool,
    log_level: tracing::Level,
    /// The console, bound at start.
    console: Option<console::Bound>,
}

/// A console address: `HOST:PORT` (a name such as `localhost` is looked up).
fn console_addr(given: &str) -> std::result::Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    given
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!(
                "{given:?} is no address: write HOST:PORT, like {}; for that default, put --console after the pipeline",
                console::DEFAULT_ADDR
            )
        })
}

/// The console's token, from its environment variable.
fn console_token() -> Option<String> {
    std::env::var(console::TOKEN_ENV).ok()
}

/// Runs every capture and every materialization on a thread of its own until each ends;
/// the first error stops the others.
fn run(
    pipeline: &Pipeline,
    with: RunWith,
    bars: Option<Bars>,
    destinations: &[Box<dyn DestinationKind>],
) -> Result<()> {
    let RunWith {
        until_caught_up,
        log_level,
        console,
    } = with;
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
    // The console serves until the captures and materializations have ended.
    let console_stop = AtomicBool::new(false);
    let results: Vec<Result<()>> =
        std::thread::scope(|s| {
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
                let kind = destination::kind(destinations, &m.destination).map_err(Error::Spec);
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
            let console = console.map(|bound| {
                let (store, console_stop) = (Arc::clone(&store), &console_stop);
                s.spawn(move || bound.serve(pipeline, &*store, destinations, console_stop))
            });
            let mut results: Vec<Result<()>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Damaged("a capture thread panicked".into())))
                })
                .collect();
            console_stop.store(true, Ordering::SeqCst);
            if let Some(console) = console {
                results.push(console.join().unwrap_or_else(|_| {
                    Err(Error::Damaged("the console's thread panicked".into()))
                }));
            }
            results
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
