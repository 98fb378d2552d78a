//! PostgreSQL source for the CDC connectors.

pub mod catalog;
pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod rows;
pub mod source;
pub mod stream;
pub mod value;
