//! The `endpoint` section of the MySQL/MariaDB config. The password never appears in logs.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the server.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User; needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT.
    pub user: String,
    /// Password, inline. Prefer `password_env` or `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// TLS: "disable", "require" (encrypt, do not verify) or "verify-full".
    #[serde(default)]
    pub tls: Tls,
    /// Server id of the replica connection; unique among the server's replicas.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

/// TLS settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// disable, require or verify-full.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM root certificate for verify-full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cert: Option<String>,
}

/// TLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted, certificate not verified.
    Require,
    /// Encrypted, certificate and host name verified.
    VerifyFull,
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

impl Endpoint {
    /// The password from wherever the config says.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        backfill_core::config::resolve_secret(
            self.password.as_deref(),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            "password",
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("server_id", &self.server_id)
            .field("advanced", &self.advanced)
            .finish_non_exhaustive()
    }
}
