//! `backfill-core`: the database-neutral heart of the CDC connectors.
//!
//! | module | concern |
//! |---|---|
//! | [`catalog`] | the one shape of a source's catalog: table lookup, discovery's view, key compare |
//! | [`config`] | the config file: endpoint + bindings (DESIGN.md §2) |
//! | [`endpoint`] | the login block every endpoint flattens: host, user, secret, TLS policy |
//! | [`mode`] | backfill modes and Automatic selection (§6) |
//! | [`key`] | keys, the backfill window, regions (§7 "Key order") |
//! | [`json`] | JSON text primitives: escaped strings, integers, the number grammar |
//! | [`row`] | a row image as the JSON text it is written as |
//! | [`source`] | the traits a database crate implements |
//! | [`state`] | the state file, reconciliation with the config, atomic replace (§4) |
//! | [`output`] | the JSONL protocol and its commit protocol (§4) |
//! | [`merger`] | the chunk / fence / patch cycle and its correctness argument (§7) |
//! | [`metrics`] | progress, lag, Prometheus endpoint |
//! | [`worker`] | a connection on a thread of its own, for a chunk's parts read at once |
//! | [`cli`] | the shared command line: `spec`, `check`, `discover`, `capture` (§3) |
//!
//! Nothing here names a database: a new database is a crate that implements
//! [`source::Source`] and [`source::Discovery`] and a binary that calls [`cli::main`].

// The traits are driven from one task by the merger; no caller needs `Send` futures.
#![allow(async_fn_in_trait)]

pub mod catalog;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod encode;
pub mod endpoint;
pub mod error;
pub mod json;
pub mod key;
pub mod merger;
pub mod metrics;
pub mod mode;
pub mod output;
pub mod row;
pub mod source;
pub mod state;
pub mod terminal;
pub mod worker;

pub use error::{Error, ErrorKind, Failure, Result, SourceError};
