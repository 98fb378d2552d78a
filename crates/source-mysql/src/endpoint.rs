//! The `endpoint` section of the MySQL/MariaDB config: the shared [`Login`] block (host,
//! user, password, TLS; see [`backfill_core::endpoint`] for the TLS policy) beside the
//! port, the replica server id and advanced options.

pub use backfill_core::endpoint::{Login, Tls, TlsMode};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host, user (it needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT), password
    /// and TLS.
    #[serde(flatten)]
    pub login: Login,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Server id of the replica connection; unique among the server's replicas.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

/// Advanced options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Advanced {
    /// Rows per backfill chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Bindings backfilled at once.
    #[serde(default = "default_concurrency")]
    pub backfill_concurrency: usize,
}

impl Default for Advanced {
    fn default() -> Self {
        Self {
            chunk_size: default_chunk_size(),
            backfill_concurrency: default_concurrency(),
        }
    }
}

fn default_port() -> u16 {
    3306
}
fn default_server_id() -> u32 {
    9_418_001
}
fn default_chunk_size() -> usize {
    10_000
}
fn default_concurrency() -> usize {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redaction() {
        let e: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password": "hunter2"}"#).unwrap();
        assert_eq!((e.port, e.server_id), (3306, 9_418_001));
        assert_eq!(e.login.tls.mode, TlsMode::Prefer);
        assert!(!format!("{e:?}").contains("hunter2"));
        assert!(
            serde_json::from_str::<Endpoint>(r#"{"host": "h", "user": "u", "server": 1}"#).is_err()
        );
    }
}
