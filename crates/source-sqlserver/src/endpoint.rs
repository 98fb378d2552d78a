//! The `endpoint` section of the SQL Server config: the shared [`Login`] block (host,
//! port, user, password, TLS; see [`backfill_core::endpoint`] for the TLS policy) beside the
//! port, database, polling and advanced options.

pub use backfill_core::endpoint::{Backfill, Login, Tls, TlsMode};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach the server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host, port, SQL login (it needs SELECT on the captured tables and their change tables; see
    /// `check`), password and TLS. SQL Server always encrypts the login; with `disable`
    /// nothing else is encrypted.
    #[serde(flatten)]
    pub login: SsLogin,
    /// Database whose tables are captured (CDC enabled with `sys.sp_cdc_enable_db`).
    pub database: String,
    /// Milliseconds between polls of the change tables when there is nothing new.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A readable secondary of an availability group to scan backfill chunks on, while the
    /// change tables are read on the primary: the same fields as the primary's login. The
    /// database is the primary's; the connection declares a read-only intent, so an AG
    /// listener may be named too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Replica>,
    /// Advanced options.
    #[serde(default)]
    pub advanced: Advanced,
}

/// The login block of a SQL Server (port 1433 by default).
pub type SsLogin = Login<1433>;

/// A readable secondary to scan on (see `Endpoint::replica`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Host, port, SQL login (it needs SELECT on the captured tables and VIEW SERVER STATE
    /// for the replica's redo position), password and TLS.
    #[serde(flatten)]
    pub login: SsLogin,
}

/// Advanced options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Advanced {
    /// Rows per backfill chunk and bindings backfilled at once.
    #[serde(flatten)]
    pub backfill: Backfill,
    /// The watermark table (`schema.table`) the connector writes after each chunk to
    /// learn the chunk's fence from the change stream; created, with CDC enabled on it,
    /// when missing and the user may (db_owner).
    #[serde(default = "default_watermarks")]
    pub watermarks_table: String,
    /// Delete change-table rows up to each durable position (`sys.sp_cdc_cleanup_change_table`,
    /// needs db_owner). Off by default: the CDC cleanup job keeps its own retention.
    #[serde(default)]
    pub cleanup_acknowledged: bool,
    /// Change rows read per poll before the stream emits what it has (bounds memory; a
    /// single transaction is always read whole).
    #[serde(default = "default_poll_rows")]
    pub poll_rows: usize,
}

impl Default for Advanced {
    fn default() -> Self {
        Self {
            backfill: Backfill::default(),
            watermarks_table: default_watermarks(),
            cleanup_acknowledged: false,
            poll_rows: default_poll_rows(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    500
}
fn default_watermarks() -> String {
    "dbo.cdc_backfill_watermarks".into()
}
fn default_poll_rows() -> usize {
    50_000
}

impl Endpoint {
    /// The watermark table as (schema, table).
    pub fn watermarks(&self) -> (String, String) {
        match self.advanced.watermarks_table.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => ("dbo".to_string(), self.advanced.watermarks_table.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redaction() {
        let e: Endpoint = serde_json::from_value(serde_json::json!({
            "host": "db", "database": "shop", "user": "cdc", "password": "hunter2"
        }))
        .expect("parses");
        assert_eq!(e.login.port, 1433);
        assert_eq!(e.login.tls.mode, TlsMode::Prefer);
        assert_eq!(e.advanced.backfill.chunk_size, 10_000);
        assert!(!e.advanced.cleanup_acknowledged);
        assert_eq!(
            e.watermarks(),
            ("dbo".to_string(), "cdc_backfill_watermarks".to_string())
        );
        let shown = format!("{e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            serde_json::from_value::<Endpoint>(serde_json::json!({
                "host": "db", "database": "shop", "user": "cdc", "pasword": "x"
            }))
            .is_err(),
            "a misspelt field is refused"
        );
    }
}
