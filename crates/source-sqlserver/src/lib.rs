//! SQL Server source for the CDC connectors (SQL Server 2017+ with CDC enabled): change
//! rows from CDC change tables, key-ordered backfill with locking reads, fences from a
//! watermark table. The correctness argument for the fence is in [`scan`]'s docs, the
//! stream's in [`stream`]'s, the value table in [`value`]'s.

pub mod catalog;
pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod position;
pub mod replica;
pub mod scan;
pub mod sql;
pub mod stream;
pub mod value;
