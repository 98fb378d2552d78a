//! MySQL and MariaDB source for the CDC connectors (MariaDB 10.6+ today).

pub mod catalog;
pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod position;
pub mod replica;
pub mod rows;
pub mod scan;
pub mod sql;
pub mod stream;
pub mod value;
