//! One error type for the core, with kinds that tell the caller what to do.
//!
//! The split that matters to an operator is between **transient** errors (a connection
//! reset, a server restart, a replication slot still held by a dying walsender: retry with
//! backoff and resume from the last checkpoint) and **definite** ones (bad config, missing
//! permission, lost log position: stop at once, say what to change). Every error carries a
//! message written for the person who has to fix it.

use std::fmt;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retry with backoff from the last durable checkpoint.
    Transient,
    /// Stop and tell the user; retrying cannot help.
    Definite,
}

/// An error raised by a source (a database crate) through the core's traits.
#[derive(Debug)]
pub struct SourceError {
    kind: ErrorKind,
    message: String,
}

impl SourceError {
    /// A failure that may pass: the core restarts from the last checkpoint after a backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }

    /// A failure the user must fix; the message must say what to do.
    pub fn definite(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Definite,
            message: message.into(),
        }
    }

    /// Whether retrying can help.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for the user.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceError {}

/// The core's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is unusable; the message names the binding and the fix.
    #[error("{0}")]
    Config(String),
    /// The state file cannot be used.
    #[error("state file: {0}")]
    State(String),
    /// The source failed.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Writing the output or the state file failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A source broke a promise of the traits (keys out of order, a position going back).
    /// Continuing could lose or duplicate rows, so the capture stops.
    #[error("source broke an ordering guarantee: {0}")]
    Invariant(String),
}

impl Error {
    /// Whether retrying from the last checkpoint can help.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source(e) => e.kind(),
            Error::Output(_) | Error::Config(_) | Error::State(_) | Error::Invariant(_) => {
                ErrorKind::Definite
            }
        }
    }
}

/// The core's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
