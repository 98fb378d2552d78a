//! PostgreSQL source for the CDC connectors.

pub mod catalog;
pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod pgoutput;
pub mod position;
pub mod replica;
pub mod replication;
pub mod rows;
pub mod scan;
pub mod sql;
pub mod stream;
pub mod value;
