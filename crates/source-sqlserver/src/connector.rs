//! The `source-sqlserver` binary's glue: the core's [`Connector`] and `check`.

use backfill_core::SourceError;
use backfill_core::cli::{CheckItem, Connector};
use backfill_core::config::Binding;
use backfill_core::merger::EngineOptions;
use tiberius::ColumnData;

use crate::conn::max_lsn;
use crate::conn::{column_i64, query_rows};
use crate::endpoint::Endpoint;
use crate::scan::SqlSource;
use crate::sql;

/// SQL Server, as the shared command line drives it.
#[derive(Debug)]
pub struct SqlServerConnector;

async fn yes(source: &mut SqlSource, query: &str, params: Vec<ColumnData<'static>>) -> bool {
    query_rows(source.client(), query, params, "checking")
        .await
        .ok()
        .and_then(|rows| rows.first().and_then(|r| column_i64(r, 0)))
        == Some(1)
}

impl Connector for SqlServerConnector {
    type Endpoint = Endpoint;
    type Source = SqlSource;

    const NAME: &'static str = "source-sqlserver";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    async fn connect(endpoint: &Endpoint) -> Result<SqlSource, SourceError> {
        SqlSource::connect(endpoint).await
    }

    async fn check(
        endpoint: &Endpoint,
        bindings: &[Binding],
        source: &mut SqlSource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        let mut items = Vec::new();
        items.push(CheckItem::new("connect", true, "connected"));
        items.extend(server_items(endpoint, source).await);
        let (ws, wt) = endpoint.watermarks();
        let wm_exists = yes(
            source,
            "SELECT CASE WHEN OBJECT_ID(@P1) IS NULL THEN 0 ELSE 1 END",
            vec![ColumnData::String(Some(sql::qualified(&ws, &wt).into()))],
        )
        .await;
        let owner = yes(
            source,
            "SELECT CAST(IS_ROLEMEMBER('db_owner') AS int)",
            Vec::new(),
        )
        .await;
        items.push(CheckItem::new(
            "watermark table",
            wm_exists || owner,
            if wm_exists {
                format!("{ws}.{wt} exists")
            } else if owner {
                format!("{ws}.{wt} will be created at the first capture")
            } else {
                format!(
                    "{ws}.{wt} is missing and the user is not db_owner; as db_owner run: {}",
                    sql::create_watermarks(&ws, &wt)
                )
            },
        ));
        for b in bindings {
            let name = b.resource.to_string();
            let Some(t) = source
                .tables()
                .iter()
                .find(|t| {
                    t.table.namespace == b.resource.namespace && t.table.stream == b.resource.stream
                })
                .cloned()
            else {
                items.push(CheckItem::new(
                    &format!("table {name}"),
                    false,
                    "not found, or the user cannot see it (GRANT SELECT)",
                ));
                continue;
            };
            let select = yes(
                source,
                "SELECT CAST(HAS_PERMS_BY_NAME(@P1, 'OBJECT', 'SELECT') AS int)",
                vec![ColumnData::String(Some(
                    sql::qualified(&t.table.namespace, &t.table.stream).into(),
                ))],
            )
            .await;
            items.push(CheckItem::new(
                &format!("table {name}"),
                select,
                if select {
                    "SELECT granted".to_string()
                } else {
                    format!(
                        "GRANT SELECT ON {} TO [{}]",
                        sql::qualified(&t.table.namespace, &t.table.stream),
                        endpoint.login.user
                    )
                },
            ));
            match t.newest_instance() {
                None => items.push(CheckItem::new(
                    &format!("CDC on {name}"),
                    false,
                    format!(
                        "not enabled: EXEC sys.sp_cdc_enable_table @source_schema = N'{}', @source_name = N'{}', @role_name = NULL",
                        t.table.namespace, t.table.stream
                    ),
                )),
                Some(ci) => {
                    let ct = format!("cdc.{}", sql::quote(&format!("{}_CT", ci.name)));
                    let readable = yes(
                        source,
                        "SELECT CAST(HAS_PERMS_BY_NAME(@P1, 'OBJECT', 'SELECT') AS int)",
                        vec![ColumnData::String(Some(ct.clone().into()))],
                    )
                    .await;
                    let role_ok = match &ci.role {
                        None => true,
                        Some(role) => {
                            yes(
                                source,
                                "SELECT CAST(IS_ROLEMEMBER(@P1) AS int)",
                                vec![ColumnData::String(Some(role.clone().into()))],
                            )
                            .await
                        }
                    };
                    items.push(CheckItem::new(
                        &format!("CDC on {name}"),
                        readable && role_ok,
                        if !role_ok {
                            format!(
                                "capture instance {} is gated by role {}: ALTER ROLE [{}] ADD MEMBER [{}]",
                                ci.name,
                                ci.role.clone().unwrap_or_default(),
                                ci.role.clone().unwrap_or_default(),
                                endpoint.login.user
                            )
                        } else if !readable {
                            format!("GRANT SELECT ON SCHEMA::cdc TO [{}]", endpoint.login.user)
                        } else {
                            format!(
                                "capture instance {}{}",
                                ci.name,
                                if ci.has_command_id {
                                    ""
                                } else {
                                    " (no __$command_id: read through fn_cdc_get_all_changes)"
                                }
                            )
                        },
                    ));
                }
            }
        }
        Ok(items)
    }

    async fn preflight(
        endpoint: &Endpoint,
        source: &mut SqlSource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        Ok(server_items(endpoint, source).await)
    }

    fn engine_options(endpoint: &Endpoint) -> EngineOptions {
        endpoint.advanced.backfill.engine_options()
    }
}

/// Database CDC and the capture job, without which a capture reads nothing: `check`
/// prints them, and `capture` runs them first (its preflight).
async fn server_items(endpoint: &Endpoint, source: &mut SqlSource) -> Vec<CheckItem> {
    let mut items = Vec::new();
    let db_cdc = yes(
        source,
        "SELECT CAST(is_cdc_enabled AS int) FROM sys.databases WHERE database_id = DB_ID()",
        Vec::new(),
    )
    .await;
    items.push(CheckItem::new(
        "database CDC",
        db_cdc,
        if db_cdc {
            "enabled".to_string()
        } else {
            format!(
                "not enabled: in database {}, as sysadmin, EXEC sys.sp_cdc_enable_db",
                endpoint.database
            )
        },
    ));
    if db_cdc {
        let agent = max_lsn(source.client()).await.ok().flatten().is_some();
        items.push(CheckItem::new(
            "capture job",
            agent,
            if agent {
                "has recorded changes (sys.fn_cdc_get_max_lsn() is set)"
            } else {
                "sys.fn_cdc_get_max_lsn() is NULL: start SQL Server Agent (Linux: MSSQL_AGENT_ENABLED=true) and check EXEC sys.sp_cdc_help_jobs"
            },
        ));
    }
    items
}
