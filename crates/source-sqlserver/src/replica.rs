//! Backfill chunks scanned on a readable secondary of an availability group
//! (`endpoint.replica`) while the change tables are read on the primary.
//!
//! **Not run against a server here**: no SQL Server runs on our machines, so what follows
//! is the method, with its pure parts (the decimal LSN, the statements) unit-tested. It is
//! the same method PostgreSQL's standby path uses and proves (`source_postgres::replica`).
//!
//! ## Why the primary's proof does not serve
//!
//! On the primary a chunk is read with locking reads, which wait for any transaction
//! holding a row, so every delivered transaction is visible (see [`crate::scan`]). A
//! readable secondary maps every read to snapshot isolation: a chunk is one statement's
//! snapshot of the database as the secondary has redone it, which lags the primary by the
//! redo queue. A snapshot taken there may miss a change the stream has already delivered.
//!
//! ## The method
//!
//! ```text
//!   core: await_visible(P)      P = the commit LSN the stream delivered
//!   secondary: poll last_redone_lsn until >= P
//!   secondary: R0 = last_redone_lsn                          -- the witness
//!   secondary: SELECT TOP (n+1) ... ORDER BY key             -- one snapshot, S
//!   primary:   the watermark fence, as on the primary        -- F = W
//! ```
//!
//! * **Witness.** A transaction's changes become visible to new snapshots on a secondary
//!   once its commit record is redone, and redo runs in log order. `R0`, read before the
//!   statement takes its snapshot, is a redone record, so every commit at or before it is
//!   visible in `S`: `SnapshotWitness::SeesThrough(R0)`. The stream's positions are commit
//!   LSNs of the primary's log, which the secondary redoes byte for byte, so they compare.
//! * **Fence.** The watermark is written on the primary after the scan; everything the
//!   secondary had redone when the scan ran was in the primary's log before it, so its
//!   commit LSN `W` is at or after every commit `S` sees.
//!
//! A secondary far behind makes the chunk wait, saying every few seconds how far behind it
//! is. `check` and every start verify that the secondary holds the same availability-group
//! database (`group_database_id`) and is not itself the primary.

use std::time::{Duration, Instant};

use backfill_core::{Failure, SourceError};
use tiberius::Row;

use crate::conn::{Client, ClientBox, connect_secondary, query_rows};
use crate::endpoint::{Endpoint, SsLogin};
use crate::position::Lsn;
use crate::sql;

/// How often a waiting backfill says what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// How often the redo position is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The readable secondary chunks are scanned on.
#[derive(Debug)]
pub(crate) struct Secondary {
    client: ClientBox,
    login: SsLogin,
}

impl Secondary {
    /// Connects to `endpoint.replica` (with a read-only intent) and checks that it is a
    /// secondary of the primary `primary` is connected to; `None` without a replica.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        primary: &mut Client,
    ) -> Result<Option<Self>, SourceError> {
        let Some(replica) = &endpoint.replica else {
            return Ok(None);
        };
        let mut this = Self {
            client: ClientBox(connect_secondary(endpoint, &replica.login).await?),
            login: replica.login.clone(),
        };
        this.ensure_secondary_of(primary).await?;
        Ok(Some(this))
    }

    /// The query connection, for scans.
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client.0
    }

    /// Fails, with the remedy, unless the replica is a readable secondary of the same
    /// availability-group database.
    async fn ensure_secondary_of(&mut self, primary: &mut Client) -> Result<(), SourceError> {
        let address = self.login.address();
        let ours = group_database_id(primary, "the primary").await?;
        let theirs = group_database_id(&mut self.client.0, "the replica").await?;
        let (_, is_primary) = self.status().await?;
        let verdict = lineage_verdict(ours.as_deref(), theirs.as_deref(), is_primary);
        verdict.map_err(|why| {
            Failure::Setup.error(format!(
                "endpoint.replica ({address}) {why}: name a readable secondary of the primary's availability group (SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_ONLY or ALL)), or remove endpoint.replica to scan the primary"
            ))
        })
    }

    /// The last log record redone here, and whether this replica is the primary.
    async fn status(&mut self) -> Result<(Lsn, bool), SourceError> {
        let rows = query_rows(
            &mut self.client.0,
            sql::REDONE,
            Vec::new(),
            "reading the replica's redo position (it needs VIEW SERVER STATE)",
        )
        .await?;
        parse_status(rows.first())
    }

    /// The last log record redone here.
    pub(crate) async fn redone(&mut self) -> Result<Lsn, SourceError> {
        Ok(self.status().await?.0)
    }

    /// Waits until the secondary has redone `target`, saying every few seconds how far
    /// behind it is.
    pub(crate) async fn await_redone(&mut self, target: Lsn) -> Result<(), SourceError> {
        let started = Instant::now();
        let mut said = started;
        loop {
            let at = self.redone().await?;
            if at >= target {
                return Ok(());
            }
            if said.elapsed() >= SAY_EVERY {
                said = Instant::now();
                tracing::info!(
                    replica = %self.login.address(),
                    redone = %at,
                    delivered = %target,
                    waited_s = started.elapsed().as_secs(),
                    "the backfill waits for the replica: it has redone the log to {at}, short of {target} the stream delivered (its redo queue is long, or data movement is suspended)"
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// The database's `group_database_id` on one side, `None` outside any availability group.
async fn group_database_id(client: &mut Client, side: &str) -> Result<Option<String>, SourceError> {
    let rows = query_rows(
        client,
        sql::GROUP_DATABASE_ID,
        Vec::new(),
        &format!("reading {side}'s availability-group database id"),
    )
    .await?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<&str, _>(0))
        .map(str::to_string))
}

/// Whether the replica is a secondary of the primary's database: `Err` says why not.
fn lineage_verdict(
    primary: Option<&str>,
    replica: Option<&str>,
    replica_is_primary: bool,
) -> Result<(), String> {
    match (primary, replica) {
        (None, _) => Err("is named, but the primary's database is in no availability group".into()),
        (_, None) => Err("holds a database that is in no availability group".into()),
        (Some(p), Some(r)) if !p.eq_ignore_ascii_case(r) => Err(format!(
            "holds another availability-group database ({r}, the primary's is {p})"
        )),
        _ if replica_is_primary => Err("is the primary replica itself".into()),
        _ => Ok(()),
    }
}

/// The redo position and role from [`sql::REDONE`]'s row.
fn parse_status(row: Option<&Row>) -> Result<(Lsn, bool), SourceError> {
    let row = row.ok_or_else(|| {
        Failure::Setup.error(
            "endpoint.replica: the database is in no availability group there (sys.dm_hadr_database_replica_states has no local row)",
        )
    })?;
    let text: Option<&str> = row.get(0);
    let lsn = text.and_then(Lsn::from_decimal).ok_or_else(|| {
        Failure::Malformed.error(format!(
            "the replica's last_redone_lsn {text:?} is not an LSN"
        ))
    })?;
    Ok((lsn, row.get::<bool, _>(1).unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_secondary_of_the_same_group_database_is_accepted() {
        let g = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
        assert_eq!(
            lineage_verdict(Some(g), Some(&g.to_lowercase()), false),
            Ok(())
        );
        for (p, r, is_primary, why) in [
            (
                None,
                Some(g),
                false,
                "primary's database is in no availability group",
            ),
            (Some(g), None, false, "in no availability group"),
            (
                Some(g),
                Some("00000000-0000-0000-0000-000000000000"),
                false,
                "another availability-group database",
            ),
            (Some(g), Some(g), true, "the primary replica itself"),
        ] {
            let verdict = lineage_verdict(p, r, is_primary).unwrap_err();
            assert!(verdict.contains(why), "{verdict}");
        }
    }

    #[test]
    fn no_local_replica_state_is_a_setup_error_with_the_cause() {
        let e = parse_status(None).unwrap_err();
        assert_eq!(e.failure(), Failure::Setup);
        assert!(e.to_string().contains("no availability group"), "{e}");
    }
}
