//! The `endpoint` section of the MySQL/MariaDB config: the shared [`Login`] block (host,
//! port, user, password, TLS; see [`backfill_core::endpoint`] for the TLS policy) beside the
//! port, the replica server id and advanced options.

pub use backfill_core::endpoint::{Backfill, Login, Tls, TlsMode};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host, port, user (it needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT), password
    /// and TLS.
    #[serde(flatten)]
    pub login: MyLogin,
    /// Server id of the replica connection; unique among the server's replicas.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// A replica of this server to scan backfill chunks on, while the binlog stream stays
    /// on the primary: the same fields as the primary's login (host, port, user, password,
    /// TLS). It must replicate this server directly, with GTIDs (MariaDB
    /// `MASTER_USE_GTID`, MySQL `gtid_mode=ON`), and should be `read_only` (`check` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Replica>,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

/// The login block of a MySQL or MariaDB server (port 3306 by default).
pub type MyLogin = Login<3306>;

/// A replica to scan on (see `Endpoint::replica`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Host, port, user (it needs SELECT, and REPLICATION CLIENT or SLAVE MONITOR to show
    /// its replication status), password and TLS.
    #[serde(flatten)]
    pub login: MyLogin,
}

/// Advanced options.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Advanced {
    /// Rows per backfill chunk and bindings backfilled at once.
    #[serde(flatten)]
    pub backfill: Backfill,
}

fn default_server_id() -> u32 {
    9_418_001
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redaction() {
        let e: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password": "hunter2"}"#).unwrap();
        assert_eq!((e.login.port, e.server_id), (3306, 9_418_001));
        assert_eq!(e.login.tls.mode, TlsMode::Prefer);
        assert!(!format!("{e:?}").contains("hunter2"));
        assert!(
            serde_json::from_str::<Endpoint>(r#"{"host": "h", "user": "u", "server": 1}"#).is_err()
        );
        let advanced: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "advanced": {"chunk_size": 2}}"#)
                .unwrap();
        assert_eq!(
            (
                advanced.advanced.backfill.chunk_size,
                advanced.advanced.backfill.backfill_concurrency
            ),
            (2, 1)
        );
        assert!(
            serde_json::from_str::<Endpoint>(
                r#"{"host": "h", "user": "u", "advanced": {"chunk_sise": 2}}"#
            )
            .is_err(),
            "a misspelt advanced option is refused"
        );
        let replica: Endpoint = serde_json::from_str(
            r#"{"host": "h", "user": "u", "replica": {"host": "r", "user": "ro", "password_env": "X"}}"#,
        )
        .unwrap();
        let login = &replica.replica.as_ref().unwrap().login;
        assert_eq!((login.host.as_str(), login.port), ("r", 3306));
        assert!(
            serde_json::from_str::<Endpoint>(
                r#"{"host": "h", "user": "u", "replica": {"host": "r", "user": "u", "server_id": 2}}"#
            )
            .is_err(),
            "the replica takes login fields only"
        );
    }
}
