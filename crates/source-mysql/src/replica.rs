//! Backfill chunks scanned on a replica (`endpoint.replica`) while the binlog stream reads
//! the primary.
//!
//! ## Why the primary's proof does not serve
//!
//! On the primary, MariaDB's snapshot names the binlog position it sees exactly
//! (`binlog_snapshot_position`), and MySQL waits for the GTIDs the stream has read to
//! commit (see [`crate::scan`]). On a replica, the snapshot's binlog position names the
//! *replica's* binlog (or nothing, without `log_bin`), which the stream does not read; and
//! the replica applies the primary's transactions late, at its own pace, so a snapshot
//! taken there may miss a change the stream has already delivered. A chunk from it would
//! then re-emit that row's older image after the change: a lost update.
//!
//! ## The wait, and the fence
//!
//! ```text
//!   core: await_visible(P)          P = what the stream has delivered
//!   replica: MASTER_GTID_WAIT(gtids(P), 5)              -- MariaDB, until it returns 0
//!            WAIT_FOR_EXECUTED_GTID_SET(read_through, 5)  -- MySQL, until it returns 0
//!   replica: START TRANSACTION WITH CONSISTENT SNAPSHOT; SELECT ... ; (rows)
//!   primary: SHOW MASTER STATUS / SHOW BINARY LOG STATUS                    -- the fence F
//!   replica: COMMIT
//! ```
//!
//! * **Witness.** Both waits are the servers' read-your-writes primitives: they return
//!   once the replica has *committed* the given GTIDs (MariaDB advances `gtid_slave_pos`
//!   after the applier's commit, MySQL adds a GTID to `gtid_executed` after the engine
//!   commit, the same order the primary's own MySQL wait relies on). A snapshot started
//!   after the wait therefore sees every transaction the stream delivered: the invariant
//!   holds by construction (`SnapshotWitness::Proven`). MariaDB's GTIDs are those of `P`
//!   itself (its state after the last delivered event, or `BINLOG_GTID_POS` of its file
//!   and offset on the primary); MySQL's are every GTID the stream has read, a superset.
//! * **Fence.** `F` is the primary's binlog end read *after* the scan. A transaction the
//!   replica's snapshot sees was applied there, so the primary had written it to its
//!   binlog before, and it lies at or before `F`: the stream delivers it by `F`. `F` may
//!   be later than needed; the changes between are patched into the chunk like any
//!   change after its snapshot.
//!
//! A replica that is far behind makes the chunk wait: every 5 s the wait times out, says
//! how far the replica has applied and what it waits for, and waits again. A replica whose
//! applier has stopped waits until it is started again.
//!
//! `check` and every start verify the replica replicates this primary directly: its
//! replication status names the primary's `server_id` (and on MySQL its `server_uuid`).

use std::time::Instant;

use backfill_core::{Failure, SourceError};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::conn::{Flavor, connect_to, my_error};
use crate::endpoint::{Endpoint, MyLogin};
use crate::sql;

/// Seconds one wait for the replica lasts before it says so and waits again.
const WAIT_SECONDS: u32 = 5;

/// The replica chunks are scanned on.
#[derive(Debug)]
pub(crate) struct Replica {
    conn: Conn,
    login: MyLogin,
}

/// What the replica's replication status says about its source.
#[derive(Debug, PartialEq, Eq)]
struct Lineage {
    /// `Master_Server_Id` / `Source_Server_Id`.
    server_id: u64,
    /// MySQL's `Source_UUID`.
    uuid: Option<String>,
    /// Whether the applier runs.
    applying: bool,
}

impl Replica {
    /// Connects to `endpoint.replica` and checks that it replicates the primary `primary`
    /// is connected to; `None` without a replica.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        primary: &mut Conn,
        flavor: Flavor,
    ) -> Result<Option<Self>, SourceError> {
        let Some(replica) = &endpoint.replica else {
            return Ok(None);
        };
        let mut this = Self {
            conn: connect_to(&replica.login).await?,
            login: replica.login.clone(),
        };
        this.ensure_replicates(primary, flavor).await?;
        Ok(Some(this))
    }

    /// The query connection, for scans.
    pub(crate) fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The replica's login, to open more connections to it.
    pub(crate) fn login(&self) -> &MyLogin {
        &self.login
    }

    /// Fails, with the remedy, unless the replica replicates the primary directly.
    async fn ensure_replicates(
        &mut self,
        primary: &mut Conn,
        flavor: Flavor,
    ) -> Result<(), SourceError> {
        let address = self.login.address();
        let (id, uuid): (u64, Option<String>) = primary
            .query_first(sql::server_identity(flavor))
            .await
            .map_err(|e| my_error(e, "reading the primary's server_id"))?
            .unwrap_or_default();
        let lineage = self.lineage(flavor).await?.ok_or_else(|| {
            Failure::Setup.error(format!(
                "endpoint.replica ({address}) replicates nothing: name a replica of the primary (CHANGE MASTER TO / CHANGE REPLICATION SOURCE TO with GTIDs), or remove endpoint.replica to scan the primary"
            ))
        })?;
        let same_uuid = flavor == Flavor::MariaDb || lineage.uuid.as_deref() == uuid.as_deref();
        if lineage.server_id != id || !same_uuid {
            return Err(Failure::Setup.error(format!(
                "endpoint.replica ({address}) replicates server_id {} ({}), not this primary (server_id {id}): name a direct replica of the primary",
                lineage.server_id,
                lineage.uuid.as_deref().unwrap_or("MariaDB")
            )));
        }
        Ok(())
    }

    /// The replica's source, from its replication status; `None` when it replicates
    /// nothing.
    async fn lineage(&mut self, flavor: Flavor) -> Result<Option<Lineage>, SourceError> {
        let what = "reading the replica's replication status; grant its user REPLICATION CLIENT (MySQL) or SLAVE MONITOR (MariaDB)";
        let row: Option<mysql_async::Row> = self
            .conn
            .query_first(sql::replica_status(flavor))
            .await
            .map_err(|e| my_error(e, what))?;
        let Some(row) = row else { return Ok(None) };
        let text = |names: [&str; 2]| {
            names.iter().find_map(|n| {
                row.get_opt::<Option<String>, _>(*n)
                    .and_then(Result::ok)
                    .flatten()
            })
        };
        Ok(Some(Lineage {
            server_id: text(["Master_Server_Id", "Source_Server_Id"])
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            uuid: text(["Master_UUID", "Source_UUID"]).filter(|u| !u.is_empty()),
            applying: text(["Slave_SQL_Running", "Replica_SQL_Running"]).as_deref() == Some("Yes"),
        }))
    }

    /// Waits until the replica has committed `gtids` (MariaDB's state or MySQL's set, as
    /// text), saying every few seconds how far it has applied.
    pub(crate) async fn await_applied(
        &mut self,
        flavor: Flavor,
        gtids: &str,
    ) -> Result<(), SourceError> {
        let started = Instant::now();
        let what = "waiting for the replica to apply what the stream delivered";
        loop {
            let timed_out: Option<i64> = self
                .conn
                .exec_first(sql::replica_wait(flavor), (gtids, WAIT_SECONDS))
                .await
                .map_err(|e| my_error(e, what))?;
            match timed_out {
                Some(0) => return Ok(()),
                Some(_) => {}
                None => {
                    return Err(Failure::Malformed.error(format!(
                        "{what}: the replica did not understand the GTIDs {gtids:?}"
                    )));
                }
            }
            let applied: Option<String> = self
                .conn
                .query_first(sql::applied_gtids(flavor))
                .await
                .map_err(|e| my_error(e, what))?;
            let applying = self.lineage(flavor).await?.is_some_and(|l| l.applying);
            tracing::info!(
                replica = %self.login.address(),
                applied = applied.as_deref().unwrap_or(""),
                waiting_for = gtids,
                waited_s = started.elapsed().as_secs(),
                "the backfill waits for the replica to apply {gtids}; it has applied {}{}",
                applied.as_deref().unwrap_or("nothing"),
                if applying { "" } else { " and its applier is stopped (START REPLICA / START SLAVE)" }
            );
        }
    }
}

/// Whether a scan error on the replica is a table it does not have yet (error 1146): a
/// binding added while the capture was stopped resumes from a position before the table's
/// creation, so the wait does not cover it. Transient there; the primary has the table.
pub(crate) fn lacks_a_table_yet(e: &SourceError) -> bool {
    std::error::Error::source(e)
        .and_then(|c| c.downcast_ref::<mysql_async::Error>())
        .is_some_and(|c| matches!(c, mysql_async::Error::Server(s) if s.code == 1146))
}

/// Tests prove the wait is needed by turning it off: the scan then trusts the replica's
/// snapshot blindly. Debug builds only, never in a release.
pub(crate) fn sabotaged() -> bool {
    cfg!(debug_assertions)
        && std::env::var("SOURCE_MYSQL_SABOTAGE").is_ok_and(|v| v == "replica-visibility")
}
