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
    pub login: Login<3306>,
    /// Server id of the replica connection; unique among the server's replicas.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
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
    }
}
