//! The `source-postgres` binary's glue: the core's [`Connector`] and the `check` command.

use backfill_core::SourceError;
use backfill_core::cli::{CheckItem, Connector};
use backfill_core::config::Binding;
use backfill_core::merger::EngineOptions;

use crate::endpoint::Endpoint;
use crate::replication::ReplicationConn;
use crate::scan::PgSource;
use crate::sql::{self, quote};

/// PostgreSQL, as the shared command line drives it.
#[derive(Debug)]
pub struct PostgresConnector;

impl Connector for PostgresConnector {
    type Endpoint = Endpoint;
    type Source = PgSource;

    const NAME: &'static str = "source-postgres";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    async fn connect(endpoint: &Endpoint) -> Result<PgSource, SourceError> {
        PgSource::connect(endpoint).await
    }

    async fn check(
        endpoint: &Endpoint,
        bindings: &[Binding],
        source: &mut PgSource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        let mut items = Vec::new();
        items.push(CheckItem::new(
            "connect",
            true,
            format!(
                "PostgreSQL {}.{}",
                source.server_version() / 10000,
                source.server_version() % 10000
            ),
        ));
        items.extend(server_items(endpoint, source.client()).await);
        let client = source.client();
        if source.server_version() >= 130_000 {
            items.push(wal_retention(client).await);
        }
        match ReplicationConn::connect(endpoint).await {
            Ok(mut conn) => {
                let ok = conn.simple_query("IDENTIFY_SYSTEM").await;
                items.push(CheckItem::new(
                    "replication connection",
                    ok.is_ok(),
                    match ok {
                        Ok(_) => "accepted".to_string(),
                        Err(e) => e.message().to_string(),
                    },
                ));
            }
            Err(e) => items.push(CheckItem::new(
                "replication connection",
                false,
                format!(
                    "{}; pg_hba.conf must allow `replication` connections for this user",
                    e.message()
                ),
            )),
        }
        items.extend(replica_items(endpoint, source).await);
        items.extend(range_connections(endpoint, bindings, source).await);
        let tables = catalog_tables(source).await?;
        let user = quote(&endpoint.login.user);
        let mut toasted = Vec::new();
        for b in bindings {
            let name = format!("table {}", b.table_name());
            let table = b.resource.table();
            let qualified = sql::qualified(&table);
            let Some(t) = tables.iter().find(|t| {
                t.table.namespace == b.resource.namespace && t.table.stream == b.resource.stream
            }) else {
                items.push(CheckItem::new(&name, false, format!("not found, or {user} cannot read it: check the name (`discover` lists what it can read), or GRANT SELECT ON {qualified} TO {user}")));
                continue;
            };
            if let Some(why) = t.unstreamable() {
                items.push(CheckItem::new(&name, false, why));
                continue;
            }
            if t.key.is_empty() && t.replica_identity != 'f' {
                items.push(CheckItem::new(&name, false, format!("no primary key, so its updates and deletes must carry the whole old row: {}", sql::replica_identity_full(&table))));
                continue;
            }
            if t.partitioned {
                items.push(CheckItem::warning(
                    &format!("partitions of {}", b.table_name()),
                    "its partitions' changes are published as its own, and PostgreSQL then publishes no TRUNCATE of a single partition: delete a partition's rows instead, or raise the binding's `backfill` after truncating one",
                ));
            }
            if !t.generated.is_empty() {
                items.push(CheckItem::warning(
                    &format!("generated columns of {}", b.table_name()),
                    format!(
                        "{} left out of its documents: logical replication does not carry generated columns before PostgreSQL 18, so a streamed change could not update them; compute them downstream",
                        t.generated.join(", ")
                    ),
                ));
            }
            if t.has_toast_hazard() {
                toasted.push(qualified);
            }
            let detail = if t.key.is_empty() {
                "no primary key; REPLICA IDENTITY FULL".to_string()
            } else {
                format!("key ({})", t.key.join(", "))
            };
            items.push(CheckItem::new(&name, true, detail));
        }
        // One line for every table with the TOAST caveat, so that it does not drown the
        // lines that stop a capture.
        if !toasted.is_empty() {
            items.push(CheckItem::warning(
                "TOAST",
                format!(
                    "{} of the bound tables have TOASTable columns and the default replica identity: an update that leaves such a value unchanged omits it, and a key change cannot carry it to the new key. For whole rows: {}",
                    toasted.len(),
                    toasted.iter().map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL;")).collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        let publication = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&endpoint.publication],
            )
            .await
            .map_err(|e| crate::conn::db_error(e, "reading pg_publication"))?;
        let can_create: bool = client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        if publication.is_some() {
            let tables: Vec<_> = bindings.iter().map(|b| b.resource.table()).collect();
            let defects = crate::scan::publication_defects(
                client,
                &endpoint.publication,
                source.server_version(),
                &tables,
            )
            .await?;
            items.extend(
                defects
                    .into_iter()
                    .map(|d| CheckItem::new("publication filters", false, d)),
            );
        }
        items.push(
            match (
                publication.is_some(),
                endpoint.advanced.read_only,
                can_create,
            ) {
                (true, _, _) => CheckItem::new(
                    "publication",
                    true,
                    format!("{:?} exists", endpoint.publication),
                ),
                (false, false, true) => CheckItem::new(
                    "publication",
                    true,
                    format!("{:?} will be created", endpoint.publication),
                ),
                (false, _, _) => CheckItem::new(
                    "publication",
                    false,
                    format!(
                        "{:?} does not exist and {user} may not create it; as a user who may: {}",
                        endpoint.publication,
                        sql::create_publication(
                            &endpoint.publication,
                            bindings
                                .iter()
                                .map(|b| b.resource.table())
                                .collect::<Vec<_>>()
                                .iter(),
                            source.server_version() >= 130_000
                        )
                    ),
                ),
            },
        );
        let slot = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&endpoint.slot],
            )
            .await
            .map_err(|e| crate::conn::db_error(e, "reading pg_replication_slots"))?;
        items.push(match slot {
            Some(row) => CheckItem::new("slot", true, format!("{:?} exists{}", endpoint.slot, if row.get::<_, bool>(0) { " (in use)" } else { "" })),
            None if endpoint.advanced.read_only => CheckItem::new("slot", false, format!("{:?} does not exist: SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", endpoint.slot, endpoint.slot)),
            None => CheckItem::new("slot", true, format!("{:?} will be created", endpoint.slot)),
        });
        Ok(items)
    }

    async fn preflight(
        endpoint: &Endpoint,
        source: &mut PgSource,
    ) -> Result<Vec<CheckItem>, SourceError> {
        Ok(server_items(endpoint, source.client()).await)
    }

    fn engine_options(endpoint: &Endpoint) -> EngineOptions {
        endpoint.advanced.backfill.engine_options()
    }
}

async fn catalog_tables(source: &PgSource) -> Result<Vec<crate::catalog::Table>, SourceError> {
    crate::catalog::tables(source.client()).await
}

/// The replica chunks are scanned on, when one is set: connecting already proved it a
/// standby of the primary (or failed with the remedy); these say how far behind it is and
/// whether its settings let long chunks finish.
async fn replica_items(endpoint: &Endpoint, source: &PgSource) -> Vec<CheckItem> {
    let (Some(replica), Some(client)) = (&endpoint.replica, source.replica_client()) else {
        return Vec::new();
    };
    let status = client
        .query_one(sql::REPLICA_STATUS, &[])
        .await
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
    let (replayed, feedback) = match status {
        Ok(status) => status,
        Err(e) => {
            let detail = format!("{}: {e}", replica.login.address());
            return vec![CheckItem::new("replica", false, detail)];
        }
    };
    let standby = CheckItem::new(
        "replica",
        true,
        format!(
            "{} is a standby of the primary, replayed to {replayed}; chunks are scanned there",
            replica.login.address()
        ),
    );
    let feedback = if feedback == "on" {
        CheckItem::new("hot_standby_feedback", true, "on")
    } else {
        CheckItem::warning(
            "hot_standby_feedback",
            format!(
                "is {feedback:?}: a vacuum on the primary can cancel a chunk on the replica (it is scanned again, but a long chunk may never finish); on the replica: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();"
            ),
        )
    };
    vec![standby, feedback]
}

/// [`CheckItem::range_connections`], with the free connections of the server chunks are
/// read on.
async fn range_connections(
    endpoint: &Endpoint,
    bindings: &[Binding],
    source: &PgSource,
) -> Option<CheckItem> {
    let client = source.replica_client().unwrap_or(source.client());
    let free: i64 = client
        .query_one(sql::FREE_CONNECTIONS, &[])
        .await
        .map(|r| r.get(0))
        .ok()?;
    CheckItem::range_connections(endpoint.advanced.backfill.backfill_ranges, bindings, free)
}

/// Whether a slot's WAL is bounded (`max_slot_wal_keep_size`, PostgreSQL 13+): without a
/// bound, a capture stopped for long keeps every WAL segment since, until the server's
/// disk is full and the database stops.
async fn wal_retention(client: &tokio_postgres::Client) -> CheckItem {
    let keep: String = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    if keep == "-1" {
        CheckItem::warning(
            "WAL retention",
            "max_slot_wal_keep_size = -1: a stopped capture's slot keeps WAL without bound, until the disk is full; bound it by what the disk can spare (a capture stopped past it must backfill again): ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()",
        )
    } else {
        CheckItem::new(
            "WAL retention",
            true,
            format!(
                "max_slot_wal_keep_size = {keep}: a capture stopped past it must backfill again"
            ),
        )
    }
}

/// The server settings and the privilege a capture cannot run without: `check` prints
/// them, and `capture` runs them first (its preflight), before it creates anything.
async fn server_items(endpoint: &Endpoint, client: &tokio_postgres::Client) -> Vec<CheckItem> {
    let mut items = Vec::new();
    let setting = |name: &'static str| async move {
        client
            .query_one(&format!("SELECT current_setting('{name}')"), &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default()
    };
    let wal_level = setting("wal_level").await;
    items.push(CheckItem::new(
        "wal_level",
        wal_level == "logical",
        if wal_level == "logical" {
            "logical".to_string()
        } else {
            format!("is {wal_level:?}; set it: ALTER SYSTEM SET wal_level = logical; then restart the server")
        },
    ));
    let slots: i32 = setting("max_replication_slots").await.parse().unwrap_or(0);
    let senders: i32 = setting("max_wal_senders").await.parse().unwrap_or(0);
    items.push(CheckItem::new(
        "replication capacity",
        slots > 0 && senders > 0,
        format!(
            "max_replication_slots = {slots}, max_wal_senders = {senders}{}",
            if slots > 0 && senders > 0 {
                ""
            } else {
                "; raise both above 0 and restart"
            }
        ),
    ));
    let can_replicate: bool = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(false);
    items.push(CheckItem::new(
        "replication role",
        can_replicate,
        if can_replicate {
            format!("{} may replicate", endpoint.login.user)
        } else {
            format!(
                "{0} lacks REPLICATION: ALTER ROLE {0} WITH REPLICATION",
                endpoint.login.user
            )
        },
    ));
    items
}
