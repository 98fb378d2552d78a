//! Live progress for a person at a terminal: one bar per table being backfilled (rows of
//! the estimate, percent, rows/s, ETA), drawn on stderr by `indicatif`, with log lines
//! printed above the bars instead of through them. In a log file or a pipe there are no
//! bars, only the periodic progress lines of [`crate::metrics`].

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one capture.
#[derive(Clone, Debug)]
pub struct Bars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<usize, ProgressBar>>>,
}

impl Bars {
    /// Bars on stderr when it is a terminal; `None` otherwise.
    pub fn for_stderr() -> Option<Self> {
        std::io::stderr().is_terminal().then(|| Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Arc::default(),
        })
    }

    /// A writer for log lines that prints them above the bars.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.multi.clone())
    }

    /// A table's backfill starts or resumes at `done` rows of `estimate`.
    pub fn started(&self, binding: usize, table: &str, done: u64, estimate: Option<u64>) {
        let bar = self.multi.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{wide_bar}] {human_pos}/{human_len} rows {percent:>3}% {rate} ETA {eta}",
            )
            .map(|style| {
                style.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", state.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(table.to_string());
        if let Some(total) = estimate {
            bar.set_length(total.max(done));
        }
        bar.set_position(done);
        let old = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(binding, bar);
        if let Some(old) = old {
            self.multi.remove(&old);
        }
    }

    /// A table's backfill has emitted `done` rows; `complete` when it is done.
    pub fn advanced(&self, binding: usize, done: u64, complete: bool) {
        let bars = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bar) = bars.get(&binding) else {
            return;
        };
        if bar.length().is_some_and(|len| done > len) || complete {
            bar.set_length(done);
        }
        bar.set_position(done);
        if complete {
            bar.finish();
        }
    }
}

/// Writes each log line above the bars (see [`Bars::log_writer`]).
#[derive(Clone, Debug)]
pub struct LogWriter(MultiProgress);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Sets up logging on stderr for every binary: human-readable lines, or JSON with
/// `json`; colour only for a person at a terminal (never in a log file or a pipe, and
/// never when `NO_COLOR` is set, <https://no-color.org>); above the bars when there are.
pub fn init_logging(level: tracing::Level, json: bool, bars: Option<&Bars>) {
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_max_level(level);
    match (json, bars) {
        (true, _) => builder.with_writer(std::io::stderr).json().init(),
        (false, Some(bars)) => {
            let writer = bars.log_writer();
            builder.with_writer(move || writer.clone()).init();
        }
        (false, None) => builder.with_writer(std::io::stderr).init(),
    }
}
