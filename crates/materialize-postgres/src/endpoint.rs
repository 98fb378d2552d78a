//! The `endpoint` of a PostgreSQL materialization. The password may be inline, in an
//! environment variable or in a file; it never appears in logs or `Debug` output.

use std::fmt;

use postgres_conn::Tls;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the destination database.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database holding the tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// User; needs CREATE on the schema (tables and the checkpoint table are created).
    pub user: String,
    /// Password, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Path of a file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// TLS (libpq's sslmode; `prefer` by default).
    #[serde(default)]
    pub tls: Tls,
    /// Schema of tables named without one, and of the checkpoint table.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_port() -> u16 {
    5432
}
fn default_database() -> String {
    "postgres".into()
}
fn default_schema() -> String {
    "public".into()
}

impl Endpoint {
    /// The password from wherever the config says, or `None` for trust/peer auth.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        backfill_core::config::resolve_secret(
            self.password.as_deref(),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            "password",
        )
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("schema", &self.schema)
            .finish()
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
            (e.port, e.database.as_str(), e.schema.as_str()),
            (5432, "postgres", "public")
        );
    }
}
