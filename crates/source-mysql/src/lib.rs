//! MySQL and MariaDB source for the CDC connectors (MariaDB 10.6+ today).

pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod position;
pub mod rows;
pub mod source;
pub mod stream;
pub mod value;
