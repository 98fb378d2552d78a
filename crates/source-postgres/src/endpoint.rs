//! The `endpoint` section of the PostgreSQL config: the shared [`Login`] block (host, port, user,
//! password, TLS; see [`backfill_core::endpoint`] for the TLS policy) beside the slot,
//! publication and advanced options.

use std::time::Duration;

pub use backfill_core::endpoint::{Backfill, Login, Tls, TlsMode};
pub use postgres_conn::PgLogin;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the database and what the connector may create there.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host, port, user (it needs REPLICATION, or to own the slot, and SELECT on the tables),
    /// password and TLS.
    #[serde(flatten)]
    pub login: PgLogin,
    /// Database to capture.
    #[serde(default = "default_database")]
    pub database: String,
    /// Logical replication slot; created when missing (unless read-only).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication; created when missing and tables added to it (unless read-only).
    #[serde(default = "default_publication")]
    pub publication: String,
    /// A hot standby of this server to scan backfill chunks on, while the change stream
    /// stays on the primary: the same fields as the primary's login (host, port, user,
    /// password, TLS); the database is the primary's. The standby must replicate this
    /// server physically and should run with `hot_standby_feedback = on` (`check` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Replica>,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

/// A hot standby to scan on (see `Endpoint::replica`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Host, port, user (it needs SELECT on the tables), password and TLS.
    #[serde(flatten)]
    pub login: PgLogin,
}

/// Advanced options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Advanced {
    /// Rows per backfill chunk and bindings backfilled at once.
    #[serde(flatten)]
    pub backfill: Backfill,
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
}

impl Default for Advanced {
    fn default() -> Self {
        Self {
            backfill: Backfill::default(),
            min_backfill_xid: None,
            max_backfill_xid: None,
            read_only: false,
            heartbeat_interval_s: default_heartbeat(),
        }
    }
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
fn default_heartbeat() -> u64 {
    10
}

impl Endpoint {
    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.advanced.heartbeat_interval_s.max(1))
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
            (e.login.port, e.database.as_str(), e.slot.as_str()),
            (5432, "postgres", "cdc_slot")
        );
        assert_eq!(e.login.tls.mode, TlsMode::Prefer);
        assert_eq!(e.advanced.backfill.chunk_size, 10_000);
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
        assert_eq!(
            e.login.resolve_password().unwrap().as_deref(),
            Some("hunter2")
        );
        assert!(
            serde_json::from_str::<Endpoint>(r#"{"host": "h", "user": "u", "passwd": "x"}"#)
                .is_err()
        );
        let env: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password_env": "NO_SUCH_VAR_X"}"#)
                .unwrap();
        assert!(
            env.login
                .resolve_password()
                .unwrap_err()
                .contains("NO_SUCH_VAR_X")
        );
    }

    #[test]
    fn a_replica_takes_the_primarys_login_fields_and_refuses_others() {
        let e: Endpoint = serde_json::from_str(
            r#"{"host": "p", "user": "u", "replica": {"host": "r", "port": 5433, "user": "ro", "password": "s3cret", "tls": {"mode": "require"}}}"#,
        )
        .unwrap();
        let replica = e.replica.as_ref().unwrap();
        assert_eq!(
            (
                replica.login.host.as_str(),
                replica.login.port,
                replica.login.user.as_str()
            ),
            ("r", 5433, "ro")
        );
        assert_eq!(replica.login.tls.mode, TlsMode::Require);
        assert!(!format!("{e:?}").contains("s3cret"));
        let typo =
            r#"{"host": "p", "user": "u", "replica": {"host": "r", "user": "u", "databse": "x"}}"#;
        assert!(serde_json::from_str::<Endpoint>(typo).is_err());
    }
}
