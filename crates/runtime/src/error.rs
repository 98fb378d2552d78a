//! The runtime's one error type: what failed, with the cause kept and a message that says
//! what to do.

/// The runtime's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline spec is unusable; the message names the field and the fix.
    #[error("{0}")]
    Spec(String),
    /// The store failed (a disk error, a damaged file).
    #[error("store: {what}: {source}")]
    Store {
        /// What the store was doing.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be reached or refused a write for now (a node died, a connection
    /// dropped, a timeout): the capture restarts from the last commit.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store's files are not what this runtime writes.
    #[error("store: {0}")]
    Damaged(String),
    /// A destination refused something it will keep refusing (permissions, a change of a
    /// table it cannot follow); the message says what to do.
    #[error("materialization {materialization}: {message}")]
    Destination {
        /// The materialization.
        materialization: String,
        /// What happened and what to do.
        message: String,
    },
    /// A connector broke its protocol (DESIGN.md §4) or could not be run.
    #[error("capture {capture}: {message}")]
    Connector {
        /// The capture.
        capture: String,
        /// What happened and what to do.
        message: String,
    },
}

impl Error {
    /// A store I/O error while doing `what`.
    pub fn store(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Error::Store { what, source }
    }
}

/// The runtime's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
