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

/// Why a source failed. It decides whether retrying can help, here alone
/// ([`Failure::kind`]): a database crate says why (its server errors sorted by its one
/// classifier in `conn`), never what the core should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection, the server or a wait was interrupted (a reset, a restart, a
    /// failover, a timeout, a lock conflict): it may pass.
    Interrupted,
    /// Something the user must set up or change: credentials, permissions, a server
    /// setting, the config. The message names the setting.
    Setup,
    /// The log position or a bound table is gone; the message names the backfill that
    /// restores it.
    Lost,
    /// The server sent what the connector cannot read as its protocol or as the table's
    /// values: stopping beats a misrendered document.
    Malformed,
}

impl Failure {
    /// Whether retrying can help.
    pub fn kind(self) -> ErrorKind {
        match self {
            Failure::Interrupted => ErrorKind::Transient,
            Failure::Setup | Failure::Lost | Failure::Malformed => ErrorKind::Definite,
        }
    }

    /// The error of this failure, with the message for the person who must act.
    pub fn error(self, message: impl Into<String>) -> SourceError {
        SourceError {
            failure: self,
            message: message.into(),
            cause: None,
        }
    }
}

/// An error raised by a source (a database crate) through the core's traits: why it
/// failed (so whether retrying can help), the message for the person who must act (it
/// already says what the cause means and what to do), and the driver's error it came
/// from, kept as the [`source`](std::error::Error::source) for logs and for code that
/// inspects it.
#[derive(Debug)]
pub struct SourceError {
    failure: Failure,
    message: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SourceError {
    /// A failure that may pass: the core restarts from the last checkpoint after a backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Failure::Interrupted.error(message)
    }

    /// A failure the user must fix; the message must say what to do.
    pub fn definite(message: impl Into<String>) -> Self {
        Failure::Setup.error(message)
    }

    /// Why it failed.
    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The same error, caused by `cause` (a driver's or the system's error).
    #[must_use]
    pub fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// Whether retrying can help.
    pub fn kind(&self) -> ErrorKind {
        self.failure.kind()
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

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

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

/// An error and its causes as one line, each cause once: libraries often print their
/// cause inside their own message *and* return it as `source()`, which a plain walk of the
/// chain would repeat (`Input/output error: Input/output error: Connection refused`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut texts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        texts.push(s.to_string());
        next = s.source();
    }
    let mut parts: Vec<&str> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        // What this level adds to the causes after it.
        let own = texts[i + 1..]
            .iter()
            .find_map(|cause| text.strip_suffix(cause.as_str()))
            .map_or(text.as_str(), |head| head.trim_end_matches([':', ' ']));
        if !own.is_empty() && parts.last() != Some(&own) && !parts.iter().any(|p| p.ends_with(own))
        {
            parts.push(own);
        }
    }
    parts.join(": ")
}

/// The core's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);
    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn only_an_interruption_is_retried() {
        assert_eq!(Failure::Interrupted.kind(), ErrorKind::Transient);
        for f in [Failure::Setup, Failure::Lost, Failure::Malformed] {
            assert_eq!(f.error("x").kind(), ErrorKind::Definite, "{f:?}");
        }
        assert_eq!(SourceError::transient("x").failure(), Failure::Interrupted);
    }

    #[test]
    fn a_source_error_keeps_its_cause() {
        let refused = Layer("Connection refused (os error 111)".into(), None);
        let e = SourceError::transient("connecting to db:5432: Connection refused (os error 111)")
            .because(refused);
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(cause.to_string(), "Connection refused (os error 111)");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(
            error_chain(&e),
            "connecting to db:5432: Connection refused (os error 111)",
            "a message that already says its cause is not repeated"
        );
        assert!(std::error::Error::source(&SourceError::definite("x")).is_none());
    }

    #[test]
    fn each_cause_is_said_once() {
        let refused = || Layer("Connection refused (os error 111)".into(), None);
        let io = Layer(
            "Input/output error: Connection refused (os error 111)".into(),
            Some(Box::new(refused())),
        );
        let top = Layer(
            "Input/output error: Input/output error: Connection refused (os error 111)".into(),
            Some(Box::new(io)),
        );
        assert_eq!(
            error_chain(&top),
            "Input/output error: Connection refused (os error 111)"
        );
        // A library that does not repeat its cause: the causes are appended.
        let plain = Layer(
            "error connecting to server".into(),
            Some(Box::new(refused())),
        );
        assert_eq!(
            error_chain(&plain),
            "error connecting to server: Connection refused (os error 111)"
        );
    }
}
