//! The `source-mysql` binary's glue: the core's [`Connector`] and `check`.

use backfill_core::SourceError;
use backfill_core::cli::{CheckItem, Connector};
use backfill_core::config::Binding;
use backfill_core::merger::EngineOptions;
use mysql_async::prelude::Queryable;

use crate::conn::Flavor;
use crate::endpoint::Endpoint;
use crate::scan::MySource;
use crate::stream::binlog_setting_items;

/// MySQL/MariaDB, as the shared command line drives it.
#[derive(Debug)]
pub struct MysqlConnector;

impl Connector for MysqlConnector {
    type Endpoint = Endpoint;
    type Source = MySource;

    const NAME: &'static str = "source-mysql";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    async fn connect(endpoint: &Endpoint) -> Result<MySource, SourceError> {
        MySource::connect(endpoint).await
    }

    async fn check(
        endpoint: &Endpoint,
        bindings: &[Binding],
        source: &mut MySource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        let mut items = Vec::new();
        items.push(CheckItem::new("connect", true, "connected"));
        let tables: Vec<(String, String)> = source
            .tables()
            .iter()
            .map(|t| (t.table.namespace.clone(), t.table.stream.clone()))
            .collect();
        items.extend(charset_items(bindings, source.tables()));
        let flavor = source.server().flavor;
        items.extend(binlog_setting_items(source.conn(), flavor).await?);
        if source.server().flavor == Flavor::MySql {
            mysql_items(source, bindings, &mut items).await;
        }
        items.extend(replica_items(endpoint, source).await);
        items.extend(range_connections(endpoint, bindings, source).await);
        let conn = source.conn();
        let grants: Vec<String> = conn.query("SHOW GRANTS").await.unwrap_or_default();
        let all = grants.join(" ").to_ascii_uppercase();
        let repl = all.contains("ALL PRIVILEGES")
            || (all.contains("REPLICATION SLAVE") || all.contains("REPLICATION REPLICA"));
        items.push(CheckItem::new(
            "replication grants",
            repl,
            if repl {
                "REPLICATION SLAVE present".to_string()
            } else {
                format!(
                    "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{}'",
                    endpoint.login.user
                )
            },
        ));
        let var = |v: Option<String>| v.unwrap_or_default();
        let retention: Option<String> = conn
            .query_first("SELECT @@binlog_expire_logs_seconds")
            .await
            .unwrap_or(None);
        let retention = var(retention);
        items.push(CheckItem::new(
            "binlog retention",
            true,
            if retention == "0" {
                "binlog_expire_logs_seconds = 0: binlogs are not purged by age".to_string()
            } else {
                format!("binlog_expire_logs_seconds = {retention} (keep it longer than the longest pause of the capture)")
            },
        ));
        for b in bindings {
            let found = tables
                .iter()
                .any(|(d, t)| d == &b.resource.namespace && t == &b.resource.stream);
            items.push(CheckItem::new(
                &format!("table {}", b.resource),
                found,
                if found {
                    "readable".to_string()
                } else {
                    format!(
                        "not found, or '{}' cannot read it: check the name (`discover` lists what it can read), or GRANT SELECT ON `{}`.`{}` TO '{}'",
                        endpoint.login.user, b.resource.namespace, b.resource.stream, endpoint.login.user
                    )
                },
            ));
        }
        Ok(items)
    }

    async fn preflight(
        _endpoint: &Endpoint,
        source: &mut MySource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        let flavor = source.server().flavor;
        binlog_setting_items(source.conn(), flavor).await
    }

    fn engine_options(endpoint: &Endpoint) -> EngineOptions {
        endpoint.advanced.backfill.engine_options()
    }
}

/// [`CheckItem::range_connections`], with the free connections of the server chunks are
/// read on (`max_connections` less `Threads_connected`; a status variable every user may
/// read).
async fn range_connections(
    endpoint: &Endpoint,
    bindings: &[Binding],
    source: &mut MySource,
) -> Option<CheckItem> {
    let conn = match source.replica_conn() {
        Some(conn) => conn,
        None => source.conn(),
    };
    let max: i64 = conn.query_first("SELECT @@max_connections").await.ok()??;
    let (_, connected): (String, i64) = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        .await
        .ok()??;
    CheckItem::range_connections(
        endpoint.advanced.backfill.backfill_ranges,
        bindings,
        max - connected,
    )
}

/// MySQL's own item: GTIDs (what a backfill's snapshot ordering rests on).
async fn mysql_items(source: &mut MySource, bindings: &[Binding], items: &mut Vec<CheckItem>) {
    let backfills = bindings
        .iter()
        .any(|b| b.resource.mode != backfill_core::mode::BackfillMode::OnlyChanges);
    let gtid_mode = source.server().gtid_mode;
    items.push(CheckItem::new(
        "gtid_mode",
        gtid_mode || !backfills,
        if gtid_mode {
            "ON".to_string()
        } else {
            "is not ON; MySQL backfills need it: SET GLOBAL enforce_gtid_consistency = ON, then gtid_mode = OFF_PERMISSIVE, ON_PERMISSIVE, ON (and in the server options); Only Changes bindings work without".to_string()
        },
    ));
}

/// A warning for each bound table with text in a charset the stream cannot decode beyond
/// ASCII (`value::Charset::Unknown`): such a value stops the stream with the column named.
fn charset_items(bindings: &[Binding], tables: &[crate::catalog::Table]) -> Vec<CheckItem> {
    tables
        .iter()
        .filter(|t| {
            bindings.iter().any(|b| {
                b.resource.namespace == t.table.namespace && b.resource.stream == t.table.stream
            })
        })
        .filter_map(|t| {
            let odd: Vec<String> = t
                .columns
                .iter()
                .filter_map(|c| match c.ty {
                    crate::value::ColType::Text {
                        charset: crate::value::Charset::Unknown(name),
                    } => Some(format!("{} ({name})", c.name)),
                    _ => None,
                })
                .collect();
            (!odd.is_empty()).then(|| {
                CheckItem::warning(
                    &format!("charset {}.{}", t.table.namespace, t.table.stream),
                    format!(
                        "{}: the stream reads these charsets only as far as ASCII and stops at another byte; ALTER TABLE `{}`.`{}` CONVERT TO CHARACTER SET utf8mb4",
                        odd.join(", "),
                        t.table.namespace,
                        t.table.stream
                    ),
                )
            })
        })
        .collect()
}

/// The replica chunks are scanned on, when one is set: connecting already proved it a
/// direct replica of the primary (or failed with the remedy); these say whether it applies
/// and whether it is read-only.
async fn replica_items(endpoint: &Endpoint, source: &mut MySource) -> Vec<CheckItem> {
    let (Some(replica), Some(conn)) = (&endpoint.replica, source.replica_conn()) else {
        return Vec::new();
    };
    let address = replica.login.address();
    let status: Result<Option<(u8, String)>, _> =
        conn.query_first("SELECT @@read_only, @@version").await;
    let Ok(Some((read_only, version))) = status else {
        return vec![CheckItem::new(
            "replica",
            false,
            format!("{address}: cannot read @@read_only"),
        )];
    };
    let mut items = vec![CheckItem::new(
        "replica",
        true,
        format!("{address} ({version}) replicates the primary; chunks are scanned there"),
    )];
    items.push(if read_only == 1 {
        CheckItem::new("replica read_only", true, "ON")
    } else {
        CheckItem::warning(
            "replica read_only",
            "is OFF: a write made on the replica alone is never in the primary's binlog, so the backfill and the stream disagree about it; on the replica: SET GLOBAL read_only = ON (and in its options)",
        )
    });
    items
}
