//! The `endpoint` section of the PostgreSQL config.
//!
//! The password may be given inline, through an environment variable or a file; it never
//! appears in logs or `Debug` output.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the database and what the connector may create there.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database to capture.
    #[serde(default = "default_database")]
    pub database: String,
    /// Role to connect as; it needs REPLICATION (or to own the slot) and SELECT on the tables.
    pub user: String,
    /// Password, inline. Prefer `password_env` or `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Path of a file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Tls,
    /// Logical replication slot; created when missing (unless read-only).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication; created when missing and tables added to it (unless read-only).
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

pub use postgres_conn::{Tls, TlsMode};

/// Advanced options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Advanced {
    /// Rows per backfill chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Only backfill rows whose xmin is at or after this transaction id (circular
    /// comparison, as PostgreSQL compares xids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backfill_xid: Option<u32>,
    /// Only backfill rows whose xmin is at or before this transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backfill_xid: Option<u32>,
    /// Never write to the source (no slot, publication or watermark creation); for
    /// replicas. The slot and publication must exist.
    #[serde(default)]
    pub read_only: bool,
    /// Seconds between heartbeats that keep the slot advancing on an idle database.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_s: u64,
    /// Bindings backfilled at once.
    #[serde(default = "default_concurrency")]
    pub backfill_concurrency: usize,
}

impl Default for Advanced {
    fn default() -> Self {
        Self {
            chunk_size: default_chunk_size(),
            min_backfill_xid: None,
            max_backfill_xid: None,
            read_only: false,
            heartbeat_interval_s: default_heartbeat(),
            backfill_concurrency: default_concurrency(),
        }
    }
}

fn default_port() -> u16 {
    5432
}
fn default_database() -> String {
    "postgres".into()
}
fn default_slot() -> String {
    "cdc_slot".into()
}
fn default_publication() -> String {
    "cdc_publication".into()
}
fn default_chunk_size() -> usize {
    10_000
}
fn default_heartbeat() -> u64 {
    10
}
fn default_concurrency() -> usize {
    1
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

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.advanced.heartbeat_interval_s.max(1))
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
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("advanced", &self.advanced)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redaction() {
        let e: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password": "hunter2"}"#).unwrap();
        assert_eq!(
            (e.port, e.database.as_str(), e.slot.as_str()),
            (5432, "postgres", "cdc_slot")
        );
        assert_eq!(e.tls.mode, TlsMode::Prefer);
        assert_eq!(e.advanced.chunk_size, 10_000);
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
        assert_eq!(e.resolve_password().unwrap().as_deref(), Some("hunter2"));
        assert!(
            serde_json::from_str::<Endpoint>(r#"{"host": "h", "user": "u", "passwd": "x"}"#)
                .is_err()
        );
        let env: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password_env": "NO_SUCH_VAR_X"}"#)
                .unwrap();
        assert!(
            env.resolve_password()
                .unwrap_err()
                .contains("NO_SUCH_VAR_X")
        );
    }
}
