//! The `endpoint` of a PostgreSQL materialization: the shared [`Login`] block (host, port, user,
//! password, TLS; see [`backfill_core::endpoint`] for the TLS policy) beside the port,
//! database and schema.

pub use backfill_core::endpoint::Login;
pub use postgres_conn::PgLogin;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the destination database.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host, port, user (it needs CREATE on the schema: tables and the checkpoint table are
    /// created), password and TLS.
    #[serde(flatten)]
    pub login: PgLogin,
    /// Database holding the tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// Schema of tables named without one, and of the checkpoint table.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_database() -> String {
    "postgres".into()
}
fn default_schema() -> String {
    "public".into()
}

impl Endpoint {
    /// `host:port/database`, for messages.
    pub fn target(&self) -> String {
        format!("{}/{}", self.login.address(), self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_debug() {
        let e: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password": "hunter2"}"#).unwrap();
        assert!(!format!("{e:?}").contains("hunter2"));
        assert_eq!(
            (e.login.port, e.database.as_str(), e.schema.as_str()),
            (5432, "postgres", "public")
        );
    }
}
