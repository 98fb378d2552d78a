//! The command line every connector binary shares (DESIGN.md §3):
//!
//! ```text
//! source-<db> spec
//! source-<db> check    --config FILE
//! source-<db> discover --config FILE [--json]
//! source-<db> capture  --config FILE --state FILE [--until-caught-up] [--metrics-addr ADDR]
//! ```
//!
//! A binary implements [`Connector`] and calls [`main`]. Logs go to stderr (human-readable,
//! or JSON with `--log-format json`); stdout carries only the protocol. A failure exits
//! non-zero with one line that says what is wrong and what to do. Transient failures
//! during `capture` restart the merger from the state file with exponential backoff.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{Binding, Config, Resource};
use crate::error::{Error, ErrorKind, Result, SourceError};
use crate::merger::{self, EngineOptions, Outcome, Shutdown};
use crate::metrics::Metrics;
use crate::mode::{BackfillMode, resolve_mode, select_mode};
use crate::output::StdoutSink;
use crate::source::{ColumnInfo, Discovery, Source, TableInfo};
use crate::state::{ResolvedBinding, State};
use crate::terminal::Bars;

/// One result line of `check`.
#[derive(Clone, Debug, Serialize)]
pub struct CheckItem {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Passed, with a caveat worth reading.
    pub warning: bool,
    /// What was found, and on failure what to change.
    pub detail: String,
}

impl CheckItem {
    /// With any binding's chunks read in more than one range (its `resource.ranges`, or
    /// `default`, the endpoint's `advanced.backfill_ranges`), whether the server chunks are
    /// read on has a free connection for each range after the first, `free` as the source
    /// counts them: a range's connection refused for "too many" connections would make the
    /// capture retry until one frees up. A warning, since the count moves. `None` when every
    /// binding reads on one connection.
    pub fn range_connections(
        default: usize,
        bindings: &[crate::config::Binding],
        free: i64,
    ) -> Option<Self> {
        let ranges = bindings
            .iter()
            .map(|b| b.resource.ranges.unwrap_or(default))
            .max()
            .filter(|r| *r > 1)?;
        let more = i64::try_from(ranges - 1).unwrap_or(i64::MAX);
        let detail = format!(
            "backfill ranges up to {ranges} open {more} more connection(s) to the server that chunks are read on, which has {free} free"
        );
        Some(if free >= more {
            Self::new("connections", true, detail)
        } else {
            Self::warning(
                "connections",
                format!(
                    "{detail}: lower backfill_ranges (or a binding's ranges), or raise max_connections"
                ),
            )
        })
    }

    /// A check's result.
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok,
            warning: false,
            detail: detail.into(),
        }
    }

    /// A check that passed with a caveat.
    pub fn warning(name: &str, detail: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::new(name, true, detail)
        }
    }

    /// The line `check` prints for it: `ok   name: detail`, `warn name: detail` or
    /// `FAIL name: detail`.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {}",
            match (self.ok, self.warning) {
                (false, _) => "FAIL",
                (true, true) => "warn",
                (true, false) => "ok  ",
            },
            self.name,
            self.detail
        )
    }
}

/// What a connector binary provides.
pub trait Connector {
    /// The `endpoint` section of the config.
    type Endpoint: DeserializeOwned + JsonSchema;
    /// The source it drives.
    type Source: Source + Discovery;

    /// Binary name, for messages and `--version`.
    const NAME: &'static str;
    /// The connector's version, for `--version` (its crate's `CARGO_PKG_VERSION`).
    const VERSION: &'static str;

    /// Connects (and verifies the server settings capture needs).
    async fn connect(endpoint: &Self::Endpoint) -> Result<Self::Source, SourceError>;

    /// Verifies permissions, server settings and what each binding needs on the connected
    /// `source`; one item per check, each failure naming the fix. The first item says what
    /// the connection reached (the server and its version). A connection that fails is
    /// the core's one failing `connect` item, and `check` is not called.
    async fn check(
        endpoint: &Self::Endpoint,
        bindings: &[Binding],
        source: &mut Self::Source,
    ) -> Result<Vec<CheckItem>, SourceError>;

    /// The cheap checks of `check` that a capture cannot run without (server settings,
    /// the replication privilege): run by `capture` on the connected source before anything
    /// is read or created on the server, so a server that is not set up stops the capture
    /// with `check`'s line and its remedy. `check` prints the same items.
    async fn preflight(
        _endpoint: &Self::Endpoint,
        _source: &mut Self::Source,
    ) -> Result<Vec<CheckItem>, SourceError> {
        Ok(Vec::new())
    }

    /// Merger options from the endpoint's advanced settings.
    fn engine_options(_endpoint: &Self::Endpoint) -> EngineOptions {
        EngineOptions::default()
    }
}

#[derive(Debug, Parser)]
#[command(version, about = "Change-data-capture source connector")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: tracing::Level,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the JSON Schema of the endpoint and resource config.
    Spec,
    /// Connect and verify permissions and server settings.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// List every capturable table with its key, columns and the mode Automatic picks.
    Discover {
        #[arg(long)]
        config: PathBuf,
        /// Print `{"bindings": [...]}` ready to paste into a config.
        #[arg(long)]
        json: bool,
    },
    /// Backfill and stream the configured bindings to stdout.
    Capture {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        state: PathBuf,
        /// Exit 0 once every backfill is done and the log end read then is checkpointed.
        #[arg(long)]
        until_caught_up: bool,
        /// Serve Prometheus metrics on this address (for example 127.0.0.1:9187).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Acknowledge the source only as far as a consumer has acknowledged on stdin, one
        /// line `{"position": ...}` per checkpoint it has made durable (the `cdc` runtime
        /// does). Without it, the source is acknowledged once the state file is durable.
        #[arg(long, value_enum)]
        acks: Option<AckSource>,
    },
}

/// Where acknowledgements come from.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum AckSource {
    /// One line per durable checkpoint on stdin: `{"position": <its position>}`.
    Stdin,
}

/// Runs a connector binary: parses arguments, sets up logging, runs the command and turns
/// errors into one line on stderr and a non-zero exit.
pub fn main<C: Connector>() -> ExitCode {
    let command = Cli::command()
        .name(C::NAME)
        .bin_name(C::NAME)
        .version(C::VERSION);
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Bars for a person at a terminal; JSON logs are for machines, and get none.
    let json = matches!(cli.log_format, LogFormat::Json);
    let bars = if json { None } else { Bars::for_stderr() };
    crate::terminal::init_logging(cli.log_level, json, bars.as_ref());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_command::<C>(cli.command, bars)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command<C: Connector>(command: Command, bars: Option<Bars>) -> Result<ExitCode> {
    match command {
        Command::Spec => {
            write_stdout(
                &serde_json::to_string_pretty(&spec::<C::Endpoint>()).unwrap_or_default(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = Config::<C::Endpoint>::load(&config)?;
            let items = match C::connect(&config.endpoint).await {
                Ok(mut source) => C::check(&config.endpoint, &config.bindings, &mut source).await?,
                Err(e) => vec![CheckItem::new("connect", false, e.message())],
            };
            let text: Vec<String> = items.iter().map(CheckItem::line).collect();
            write_stdout(&text.join("\n"))?;
            Ok(if items.iter().all(|i| i.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Discover { config, json } => {
            let config = Config::<C::Endpoint>::load(&config)?;
            let mut source = C::connect(&config.endpoint).await?;
            let tables = source.discover().await?;
            let text = if json {
                let mut v = discover_json(&tables);
                // Which database's type names `columns` spells (a destination maps them).
                v["connector"] = json!(C::NAME);
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                discover_table(&tables)
            };
            write_stdout(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture {
            config,
            state,
            until_caught_up,
            metrics_addr,
            acks,
        } => {
            let acks = acks.is_some_and(|AckSource::Stdin| true);
            capture::<C>(&config, &state, until_caught_up, metrics_addr, bars, acks).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::print_stdout)] // the commands' own output
fn write_stdout(text: &str) -> Result<()> {
    println!("{text}");
    Ok(())
}

/// The `spec` document: JSON Schemas of the endpoint and of a binding's resource.
pub fn spec<E: JsonSchema>() -> Value {
    json!({
        "endpoint": schemars::schema_for!(E),
        "resource": schemars::schema_for!(Resource),
        "binding": schemars::schema_for!(Binding),
    })
}

/// `discover --json`: config bindings with the resolved mode, plus key, columns, reason.
pub fn discover_json(tables: &[TableInfo]) -> Value {
    #[derive(Serialize)]
    struct Entry<'a> {
        resource: Resource,
        target: String,
        backfill: u32,
        key: Vec<&'a str>,
        columns: &'a [ColumnInfo],
        reason: String,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        warnings: &'a [String],
    }
    let bindings: Vec<Entry<'_>> = tables
        .iter()
        .map(|t| {
            let (mode, reason) = select_mode(&t.facts);
            Entry {
                resource: Resource::new(
                    t.table.namespace.clone(),
                    t.table.stream.clone(),
                    mode.as_requested(),
                ),
                target: format!("{}/{}", t.table.namespace, t.table.stream),
                backfill: 0,
                key: t.facts.key.iter().map(|c| c.name.as_str()).collect(),
                columns: &t.columns,
                reason,
                warnings: &t.warnings,
            }
        })
        .collect();
    json!({ "bindings": bindings })
}

/// `discover` for people: one row per table, then warnings.
pub fn discover_table(tables: &[TableInfo]) -> String {
    let rows: Vec<[String; 4]> = tables
        .iter()
        .map(|t| {
            let (mode, reason) = select_mode(&t.facts);
            let key = t
                .facts
                .key
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            [
                t.table.to_string(),
                if key.is_empty() { "-".into() } else { key },
                mode.as_str().to_string(),
                reason,
            ]
        })
        .collect();
    let header = [
        "TABLE".to_string(),
        "KEY".into(),
        "MODE".into(),
        "REASON".into(),
    ];
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    for t in tables {
        for w in &t.warnings {
            out.push_str(&format!("warning: {}: {w}\n", t.table));
        }
    }
    out.trim_end().to_string()
}

/// Matches the config's bindings with discovered tables and decides each one's mode. A
/// missing table or a mode the table cannot support is refused, naming the binding.
pub fn resolve_bindings(
    bindings: &[Binding],
    tables: &[TableInfo],
) -> Result<Vec<ResolvedBinding>> {
    bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let table = tables
                .iter()
                .find(|t| t.table.namespace == b.resource.namespace && t.table.stream == b.resource.stream)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "binding {i} ({}): no such table, or the connector's user cannot see it, or it is not a plain table (a view, or a system-versioned or foreign table, which `discover` leaves out); check the spelling (run `discover`) and the user's grants",
                        b.table_name()
                    ))
                })?;
            let (mode, reason) = resolve_mode(b.resource.mode, &table.facts)
                .map_err(|e| Error::Config(format!("binding {i} ({}): {e}", b.table_name())))?;
            if b.resource.mode == BackfillMode::Automatic {
                tracing::info!(table = %b.table_name(), mode = mode.as_str(), %reason, "automatic mode");
            }
            let key: Vec<String> = table.facts.key.iter().map(|c| c.name.clone()).collect();
            if let Some(pasted) = b.key.as_ref().filter(|k| **k != key) {
                tracing::warn!(
                    "binding {i} ({}): the config's \"key\" {pasted:?} is not the table's key {key:?} any more; the table's key is used (run `discover` again to refresh the config)",
                    b.table_name()
                );
            }
            Ok(ResolvedBinding {
                binding: b.clone(),
                mode,
                key,
                columns: table.columns.clone(),
            })
        })
        .collect()
}

/// Reads acknowledgements from stdin on a thread of their own (PIPELINE.md §3): each line
/// `{"position": P}` says the consumer has made the checkpoint at P durable. The last one
/// read is what the merger may tell the source; a line that is not an acknowledgement is
/// logged and ignored, which only acknowledges less. The end of input means the consumer
/// is gone (its stdout reader with it): the capture stops as on SIGTERM, rather than live
/// on, holding the source's replication connection, until its next write fails.
/// While only streaming with `--acks stdin`, checkpoint at most this often.
const ACKED_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::ZERO;

fn acks_from_stdin(shutdown: Shutdown) -> tokio::sync::watch::Receiver<Option<Value>> {
    let (tell, acks) = tokio::sync::watch::channel(None);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(mut ack)) if ack.contains_key("position") => {
                    // A checkpoint before the stream first opened has no position.
                    let position = ack.remove("position").filter(|p| !p.is_null());
                    if position.is_some() && tell.send(position).is_err() {
                        break;
                    }
                }
                _ => {
                    tracing::warn!(%line, "not an acknowledgement (expected {{\"position\": ...}}); ignored")
                }
            }
        }
        tracing::info!("acknowledgements ended (stdin closed): stopping");
        shutdown.request();
    });
    acks
}

/// Runs the connector's preflight; a failed item stops the capture with `check`'s line.
async fn preflight<C: Connector>(endpoint: &C::Endpoint, source: &mut C::Source) -> Result<()> {
    let failed: Vec<String> = C::preflight(endpoint, source)
        .await?
        .iter()
        .filter(|item| !item.ok)
        .map(CheckItem::line)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::Source(SourceError::definite(format!(
        "the server is not ready for capture: {}",
        failed.join("; ")
    ))))
}

/// Transient failures in a row (about three minutes of backoff) before the capture gives
/// up and reports the last one.
const MAX_CONSECUTIVE_FAILURES: u32 = 10;

async fn capture<C: Connector>(
    config_path: &Path,
    state_path: &Path,
    until_caught_up: bool,
    metrics_addr: Option<std::net::SocketAddr>,
    bars: Option<Bars>,
    acks_on_stdin: bool,
) -> Result<()> {
    let config = Config::<C::Endpoint>::load(config_path)?;
    crate::state::ensure_state_directory(state_path)?;
    let metrics = Metrics::with_bars(config.bindings.iter().map(Binding::table_name), bars);
    let _server = match metrics_addr {
        Some(addr) => Some(
            crate::metrics::serve(addr, Arc::clone(&metrics))
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "cannot serve metrics on {addr}: {e}; choose another --metrics-addr"
                    ))
                })?,
        ),
        None => None,
    };
    let shutdown = Shutdown::default();
    shutdown.on_signals()?;
    let acks = acks_on_stdin.then(|| acks_from_stdin(shutdown.clone()));
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let attempt = async {
            let mut source = C::connect(&config.endpoint).await?;
            preflight::<C>(&config.endpoint, &mut source).await?;
            let tables = source.discover().await?;
            let bindings = resolve_bindings(&config.bindings, &tables)?;
            let loaded = State::load(state_path)?;
            let mut options = C::engine_options(&config.endpoint);
            options.until_caught_up = until_caught_up;
            if acks.is_some() {
                // A consumer that makes units durable itself (the cdc runtime) lands a unit
                // only at its checkpoint, and the merger decides on one only at a
                // transaction boundary: checkpoint at every boundary, so a change lands
                // without waiting for the next one. One checkpoint is in flight at most, so
                // under load units grow instead (group commit).
                options.checkpoint_interval = ACKED_CHECKPOINT_INTERVAL;
            }
            options.acks = acks.clone();
            merger::run(
                source,
                // With --acks stdin the consumer keeps the durable state (it writes the
                // state file before each start): the file's replace is not forced to disk,
                // which halves the fsyncs of every unit.
                if acks.is_some() {
                    StdoutSink::unsynced(state_path.to_path_buf())
                } else {
                    StdoutSink::new(state_path.to_path_buf())
                },
                &bindings,
                loaded,
                options,
                shutdown.clone(),
                Arc::clone(&metrics),
            )
            .await
        };
        match attempt.await {
            Ok((outcome, _)) => {
                tracing::info!(?outcome, "capture finished");
                debug_assert!(matches!(outcome, Outcome::CaughtUp | Outcome::Stopped));
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Transient && !shutdown.requested() => {
                // A run that went on for a while was healthy: start the count again.
                if started.elapsed() > Duration::from_secs(120) {
                    failures = 0;
                    backoff = Duration::from_millis(500);
                }
                failures += 1;
                if failures > MAX_CONSECUTIVE_FAILURES {
                    return Err(e);
                }
                // Said at once and every time, with the cause: a wrong host or port looks
                // like a server that is down, and only the user can tell them apart.
                tracing::warn!(
                    "transient failure: {e}; retrying in {:.1} s (attempt {failures} of {MAX_CONSECUTIVE_FAILURES}), from the last checkpoint",
                    backoff.as_secs_f64()
                );
                if shutdown.sleep(backoff).await {
                    return Err(e);
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::{KeyColumnFacts, KeyOrdering, ResolvedMode, TableFacts};
    use crate::source::TableRef;

    fn table(stream: &str, key: &[&str]) -> TableInfo {
        TableInfo {
            table: TableRef {
                namespace: "public".into(),
                stream: stream.into(),
            },
            columns: vec![ColumnInfo {
                name: "id".into(),
                type_name: "bigint".into(),
                nullable: false,
                ordinal: None,
                fills_existing_rows: false,
            }],
            facts: TableFacts {
                key: key
                    .iter()
                    .map(|k| KeyColumnFacts {
                        name: (*k).into(),
                        type_name: "bigint".into(),
                        ordering: KeyOrdering::Native,
                    })
                    .collect(),
            },
            warnings: vec!["a warning".into()],
        }
    }

    #[test]
    fn discover_json_pastes_into_a_config() {
        let v = discover_json(&[table("orders", &["id"]), table("log", &[])]);
        let b = &v["bindings"];
        assert_eq!(b[0]["resource"]["mode"], "Precise");
        assert_eq!(b[0]["key"], json!(["id"]));
        assert_eq!(
            b[0]["columns"][0],
            json!({"name": "id", "type": "bigint", "nullable": false})
        );
        assert_eq!(b[1]["resource"]["mode"], "Without Primary Key");
        // The entries paste into a config whole, as DESIGN.md §3 promises.
        let config =
            Config::<Value>::parse(&json!({"endpoint": {}, "bindings": b}).to_string()).unwrap();
        assert_eq!(config.bindings[0].resource.mode, BackfillMode::Precise);
        assert_eq!(config.bindings[0].key, Some(vec!["id".to_string()]));
        assert_eq!(config.bindings[1].key, Some(vec![]));
        let text = discover_table(&[table("orders", &["id"])]);
        assert!(
            text.contains("public.orders") && text.contains("warning: public.orders: a warning"),
            "{text}"
        );
    }

    #[test]
    fn resolving_names_the_binding_and_the_fix() {
        let tables = [table("orders", &["id"]), table("log", &[])];
        let b = |stream: &str, mode: BackfillMode| {
            Binding::new(Resource::new("public", stream, mode), "", 0)
        };
        let ok = resolve_bindings(
            &[
                b("orders", BackfillMode::Automatic),
                b("log", BackfillMode::Automatic),
            ],
            &tables,
        )
        .unwrap();
        assert_eq!(ok[0].mode, ResolvedMode::Precise);
        assert_eq!(ok[0].key, ["id"]);
        assert_eq!(ok[1].mode, ResolvedMode::WithoutPrimaryKey);
        let missing = resolve_bindings(&[b("nope", BackfillMode::Automatic)], &tables)
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("binding 0 (public.nope): no such table"),
            "{missing}"
        );
        let keyless = resolve_bindings(
            &[
                b("orders", BackfillMode::Automatic),
                b("log", BackfillMode::Precise),
            ],
            &tables,
        )
        .unwrap_err()
        .to_string();
        assert!(
            keyless.contains("binding 1 (public.log)") && keyless.contains("Without Primary Key"),
            "{keyless}"
        );
    }

    #[test]
    fn spec_has_endpoint_and_resource_schemas() {
        #[derive(JsonSchema)]
        #[allow(dead_code)]
        struct Endpoint {
            host: String,
        }
        let s = spec::<Endpoint>();
        assert!(s["endpoint"]["properties"]["host"].is_object(), "{s}");
        assert!(s["resource"]["properties"]["mode"].is_object(), "{s}");
    }
}
