//! The block every endpoint shares: where the server is, who logs in, the secret, and TLS.
//!
//! A database crate's `Endpoint` flattens a [`Login`] beside its own fields (database,
//! slot, server id, ...), so a config names `host`, `port`, `user`, `password` and `tls` at
//! the same level in every connector and the destination. `Login<PORT>` carries the
//! database's default port as a constant (`Login<5432>`), so the schema shows it:
//!
//! ```json
//! {"host": "db", "port": 5432, "user": "cdc", "password_env": "PGPASSWORD",
//!  "tls": {"mode": "verify-full", "root_cert": "/etc/ssl/root.pem"}, "slot": "cdc_slot"}
//! ```
//!
//! The crate's `Endpoint` keeps `#[serde(deny_unknown_fields)]`: serde then refuses a
//! field that neither it nor the flattened [`Login`] names (a misspelt `pasword` is an
//! error, not a silent default). [`Login`] itself must not deny unknown fields, since it
//! sees the crate's fields too.
//!
//! ## The TLS policy, one for every database
//!
//! | mode | encrypted | server authenticated |
//! |---|---|---|
//! | `disable` | no (SQL Server: the login only, the server's minimum) | no |
//! | `prefer` (default) | whenever the server offers TLS | no |
//! | `require` | always; refused by a server without TLS | no |
//! | `verify-full` | always | certificate against `root_cert` (or the public web roots) and host name |
//!
//! `prefer` is the default because it is what libpq and the MySQL client do by default:
//! a server with TLS gets an encrypted session without any setting, and a server without
//! it still works. Only `verify-full` authenticates the server; use it across networks you
//! do not control.
//!
//! The password never appears in logs or `Debug` output.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Host, port, user, password and TLS: flattened into every endpoint. `PORT` is the
/// database's default port.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
pub struct Login<const PORT: u16> {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    #[serde(default = "default_port::<PORT>")]
    pub port: u16,
    /// User (or role) to log in as; `check` lists what it needs.
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
    /// TLS settings (`prefer` by default).
    #[serde(default)]
    pub tls: Tls,
}

fn default_port<const PORT: u16>() -> u16 {
    PORT
}

impl<const PORT: u16> Login<PORT> {
    /// The password from wherever the config says (inline, then the environment variable,
    /// then the file), or `None` for trust/peer authentication. Errors name the field.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        resolve_secret(
            self.password.as_deref(),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            "password",
        )
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl<const PORT: u16> fmt::Debug for Login<PORT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS mode; the table in the module docs says what each one guarantees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP (SQL Server: the login alone is encrypted).
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not verified.
    #[default]
    Prefer,
    /// TLS always, the certificate not verified (encrypts, does not authenticate).
    Require,
    /// TLS always, the certificate verified against the roots and the host name checked.
    VerifyFull,
}

/// TLS settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// disable, prefer (default), require or verify-full.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the root certificate(s) to trust for verify-full (a self-signed
    /// server's own certificate works too); the public web roots otherwise. `trust_cert`,
    /// its earlier name in the SQL Server connector, is accepted.
    #[serde(default, alias = "trust_cert", skip_serializing_if = "Option::is_none")]
    pub root_cert: Option<String>,
}

/// The backfill options every connector's `advanced` section flattens.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct Backfill {
    /// Rows per backfill chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Bindings backfilled at once.
    #[serde(default = "default_concurrency")]
    pub backfill_concurrency: usize,
    /// Connections that read one chunk of a binding at once, each a key range of it (a
    /// binding's `resource.ranges` overrides it). Sources that cannot read a chunk in
    /// parts ([`crate::source::ChunkScanner::reads_in_parts`]) read every chunk on one and
    /// say so.
    #[serde(default = "default_ranges", deserialize_with = "crate::config::ranges")]
    pub backfill_ranges: usize,
}

fn default_chunk_size() -> usize {
    10_000
}
fn default_concurrency() -> usize {
    1
}
fn default_ranges() -> usize {
    1
}

impl Default for Backfill {
    fn default() -> Self {
        Self {
            chunk_size: default_chunk_size(),
            backfill_concurrency: default_concurrency(),
            backfill_ranges: default_ranges(),
        }
    }
}

impl Backfill {
    /// The merger's options for these settings.
    pub fn engine_options(&self) -> crate::merger::EngineOptions {
        crate::merger::EngineOptions {
            ranges: self.backfill_ranges.max(1),
            ..crate::merger::EngineOptions::for_backfill(self.chunk_size, self.backfill_concurrency)
        }
    }
}

/// Resolves a secret given inline, through an environment variable, or in a file (first
/// line), in that order of precedence; `None` when none is given. Errors name the field.
pub fn resolve_secret(
    inline: Option<&str>,
    env: Option<&str>,
    file: Option<&str>,
    field: &str,
) -> Result<Option<String>, String> {
    if let Some(p) = inline {
        return Ok(Some(p.to_string()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("endpoint.{field}_env names {var:?}, which is not set"));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("endpoint.{field}_file {path:?} cannot be read: {e}"))?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint shaped as the database crates shape theirs.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Endpoint {
        #[serde(flatten)]
        login: Login<5432>,
        #[serde(default)]
        slot: u16,
    }

    #[test]
    fn flattened_login_keeps_unknown_fields_refused_and_the_secret_out_of_debug() {
        let e: Endpoint =
            serde_json::from_str(r#"{"host": "h", "user": "u", "password": "hunter2", "slot": 7}"#)
                .unwrap();
        assert_eq!(
            (e.login.host.as_str(), e.login.port, e.slot),
            ("h", 5432, 7)
        );
        assert_eq!(e.login.address(), "h:5432");
        assert_eq!(e.login.tls.mode, TlsMode::Prefer, "the one default");
        assert_eq!(
            e.login.resolve_password().unwrap().as_deref(),
            Some("hunter2")
        );
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );

        let typo =
            serde_json::from_str::<Endpoint>(r#"{"host": "h", "user": "u", "pasword": "x"}"#)
                .unwrap_err()
                .to_string();
        assert!(typo.contains("pasword"), "{typo}");
        assert!(
            serde_json::from_str::<Endpoint>(
                r#"{"host": "h", "user": "u", "tls": {"mode": "verify-full", "root": "x"}}"#
            )
            .is_err(),
            "a misspelt TLS field is refused"
        );
        let old: Endpoint = serde_json::from_str(
            r#"{"host": "h", "user": "u", "tls": {"mode": "verify-full", "trust_cert": "/c.pem"}}"#,
        )
        .unwrap();
        assert_eq!(old.login.tls.root_cert.as_deref(), Some("/c.pem"));
    }

    #[test]
    fn secrets_resolve_inline_then_env_then_file() {
        let missing = resolve_secret(None, Some("NO_SUCH_VAR_X"), None, "password").unwrap_err();
        assert!(missing.contains("NO_SUCH_VAR_X") && missing.contains("password_env"));
        let dir = std::env::temp_dir().join(format!("secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\nignored\n").unwrap();
        let path = dir.to_str().unwrap();
        assert_eq!(
            resolve_secret(None, None, Some(path), "password")
                .unwrap()
                .as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            resolve_secret(Some("inline"), None, Some(path), "password")
                .unwrap()
                .as_deref(),
            Some("inline")
        );
        assert_eq!(resolve_secret(None, None, None, "password").unwrap(), None);
        let _ = std::fs::remove_file(&dir);
    }
}
