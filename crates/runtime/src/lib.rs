//! The `cdc` runtime (PIPELINE.md): runs each capture connector as a child process, reads
//! its protocol (DESIGN.md §4) and lands its committed units, exactly once, in collections
//! of a store, telling the connector on stdin what is durable so that it acknowledges its
//! source no sooner (`capture --acks stdin`).
//!
//! The runtime links no source crate and names no database: the connector protocol is the
//! seam, and the consumer rule comes from `backfill_core::consumer`, the one
//! implementation the suites' checker uses too.
//!
//! * [`spec`]: the pipeline spec, validated with errors that name the field and the fix;
//! * [`store`]: the store trait (atomic, read-committed units, one writer per capture) and
//!   the embedded store;
//! * [`capture`]: one capture's supervisor, with the exactly-once argument;
//! * [`compaction`]: `compacted` retention, what it drops and why readers see the same tables;
//! * [`destination`]: the destination seam a destination crate implements;
//! * [`discovery`]: the collections' schemas, from the connectors' `discover --json`;
//! * [`materialize`]: one materialization's loop, with its exactly-once argument;
//! * [`request`]: backfill requests, durable in the store until carried out;
//! * [`status`]: progress read back from the store;
//! * [`console`]: the web console and the runtime's Prometheus page, on one HTTP server;
//! * [`cli`]: `cdc spec | check | run | status | backfill | console | read`.

pub mod capture;
pub mod cli;
pub mod compaction;
pub mod console;
pub mod destination;
pub mod discovery;
pub mod error;
pub mod materialize;
pub mod request;
pub mod spec;
pub mod status;
pub mod store;

pub use error::{Error, Result};
