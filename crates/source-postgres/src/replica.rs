//! Backfill chunks scanned on a hot standby (`endpoint.replica`) while the change stream
//! reads the primary's slot (a logical slot lives on the primary before PostgreSQL 16).
//!
//! ## Why the primary's fence and witness do not serve
//!
//! On the primary a chunk's fence is `pg_current_wal_insert_lsn()` and its witness the
//! snapshot's `xmax` and in-progress list (see [`crate::scan`]). Neither holds on a standby:
//! the standby's insert position does not exist (it writes no WAL of its own), and a
//! standby snapshot keeps every in-progress transaction in its sub-transaction array, so
//! `txid_current_snapshot()` there reports *none* in progress. Taken at face value it would
//! claim a transaction still running on the primary is visible, and the core would accept a
//! chunk that misses a change the stream has already delivered: that change is then lost
//! under the chunk's older row. The suite's sabotaged run, which takes every standby
//! snapshot on trust, loses rows exactly so.
//!
//! ## What does hold
//!
//! A standby applies the primary's WAL in order, byte for byte, so a commit has the same
//! LSN on both and the stream's positions (a commit's end LSN) name places in the standby's
//! WAL too. A transaction becomes visible to new standby snapshots when its commit record
//! is redone, and `pg_last_wal_replay_lsn()` (the end of the last record redone) advances
//! only after the redo. Hence, for a chunk read in one repeatable-read transaction:
//!
//! * **Witness.** `R₀ = pg_last_wal_replay_lsn()` read *before* the transaction takes its
//!   snapshot (a round trip of its own: the snapshot of a repeatable-read transaction is
//!   taken at its first statement, so a read inside it would come after). Every commit
//!   ending at or before `R₀` was redone before the snapshot, so the snapshot sees it:
//!   `SnapshotWitness::SeesThrough(R₀)`, which the core accepts only when `R₀` has reached
//!   what the stream delivered.
//! * **Fence.** `F = pg_last_wal_replay_lsn()` read inside the transaction *after* the rows.
//!   A commit the snapshot sees was redone before the snapshot, so its record ends at or
//!   before `F`: the stream, reading the primary, delivers every such commit by `F`.
//!
//! ## Waiting instead of rescanning
//!
//! A standby that lags would fail the witness and make the core rescan the chunk until it
//! passed. The core instead calls [`ChunkScanner::await_visible`] before each scan with what
//! the stream has delivered; the standby polls `pg_last_wal_replay_lsn()` until it has
//! replayed that far, and says every few seconds how far behind it is and why the backfill
//! waits (a replay paused with `pg_wal_replay_pause()` or held by
//! `recovery_min_apply_delay` never moves). The witness stays the proof; the wait only
//! spares the rescans.
//!
//! ## Recovery conflicts
//!
//! Replaying a record the standby's queries conflict with (a vacuum removing rows their
//! snapshot needs, an exclusive lock) cancels them after `max_standby_streaming_delay`.
//! With `hot_standby_feedback = on` the primary keeps the rows the standby's snapshots need,
//! which removes the common cause; `check` says when it is off. A chunk cancelled anyway is
//! scanned again here (a few times, then the error goes to the core, which retries from the
//! last checkpoint); nothing of a cancelled chunk was used.
//!
//! [`ChunkScanner::await_visible`]: backfill_core::source::ChunkScanner::await_visible

use std::time::{Duration, Instant};

use backfill_core::{Failure, SourceError};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::conn::db_error;
use crate::endpoint::{Endpoint, PgLogin};
use crate::position::Lsn;
use crate::sql;

/// How often a waiting backfill says what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// How often the replay position is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A chunk cancelled by a recovery conflict is scanned again this many times.
pub(crate) const CONFLICT_RETRIES: u32 = 5;

/// The hot standby chunks are scanned on.
#[derive(Debug)]
pub(crate) struct Standby {
    client: Client,
    login: PgLogin,
    /// When the wait was last logged.
    said: Option<Instant>,
}

impl Standby {
    /// Connects to `endpoint.replica` and checks that it is a standby of the primary
    /// `primary` is connected to; `None` without a replica.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        primary: &Client,
    ) -> Result<Option<Self>, SourceError> {
        let Some(replica) = &endpoint.replica else {
            return Ok(None);
        };
        let client = crate::conn::connect_to(endpoint, &replica.login).await?;
        let standby = Self {
            client,
            login: replica.login.clone(),
            said: None,
        };
        standby.ensure_replicates(primary).await?;
        Ok(Some(standby))
    }

    /// Fails unless the replica is in recovery and replicates the primary (the same system
    /// identifier): an independent copy's LSNs name nothing on the primary's log.
    async fn ensure_replicates(&self, primary: &Client) -> Result<(), SourceError> {
        let (ours, theirs) = (
            system_identifier(primary, "reading the primary's system identifier").await?,
            system_identifier(&self.client, "reading the replica's system identifier").await?,
        );
        if ours != theirs {
            return Err(Failure::Setup.error(format!(
                "endpoint.replica ({}) is not a standby of the primary: its system identifier is {theirs}, the primary's {ours}; name a physical standby of the primary (pg_basebackup -R)",
                self.login.address()
            )));
        }
        self.replayed().await.map(|_| ())
    }

    /// The standby's login, for the connections that read a chunk's other key ranges.
    pub(crate) fn login(&self) -> &PgLogin {
        &self.login
    }

    /// The query connection, for scans sent as one batch.
    pub(crate) fn query_client(&self) -> &Client {
        &self.client
    }

    /// The end of the last WAL record the standby has replayed.
    pub(crate) async fn replayed(&self) -> Result<Lsn, SourceError> {
        let row = self
            .client
            .query_one(sql::REPLAYED, &[])
            .await
            .map_err(|e| db_error(e, "reading the replica's replay position"))?;
        replayed_lsn(row.get(0), &self.login)
    }

    /// Waits until the standby has replayed `target`, saying every few seconds how far
    /// behind it is.
    pub(crate) async fn await_replayed(&mut self, target: Lsn) -> Result<(), SourceError> {
        let started = Instant::now();
        loop {
            let at = self.replayed().await?;
            if at >= target {
                return Ok(());
            }
            if self.said.is_none_or(|s| s.elapsed() >= SAY_EVERY) && started.elapsed() >= SAY_EVERY
            {
                self.said = Some(Instant::now());
                tracing::info!(
                    replica = %self.login.address(),
                    replayed = %at,
                    delivered = %target,
                    behind_bytes = target.0 - at.0,
                    waited_s = started.elapsed().as_secs(),
                    "the backfill waits for the replica: it has replayed to {at}, {} bytes short of what the stream delivered (a replay paused, delayed by recovery_min_apply_delay or far behind)",
                    target.0 - at.0
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// `pg_control_system()`'s system identifier: a standby has its primary's.
async fn system_identifier(client: &Client, what: &'static str) -> Result<i64, SourceError> {
    client
        .query_one(sql::SYSTEM_IDENTIFIER, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| db_error(e, what))
}

/// The replay position as read, or the remedy when the server is not in recovery.
fn replayed_lsn(text: Option<String>, login: &PgLogin) -> Result<Lsn, SourceError> {
    let text = text.ok_or_else(|| {
        Failure::Setup.error(format!(
            "endpoint.replica ({}) is not in recovery (pg_last_wal_replay_lsn() is null): name a hot standby, or remove endpoint.replica to scan the primary",
            login.address()
        ))
    })?;
    text.parse()
        .map_err(|e| Failure::Malformed.error(format!("the replica's replay position: {e}")))
}

/// Whether a scan error on the standby is a recovery conflict, worth scanning the chunk
/// again: "canceling statement due to conflict with recovery" is SQLSTATE 40001, or 40P01
/// when the replay waited on a buffer pin; a read-only repeatable-read transaction meets
/// neither otherwise.
pub(crate) fn is_recovery_conflict(e: &SourceError) -> bool {
    sqlstate(e).is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Whether a scan error on the standby is a table it does not have yet: a binding added
/// while the capture was stopped resumes from a position before the table's creation, so
/// the wait does not cover it. Transient there (the standby replays the creation soon);
/// the primary's catalog, which the binding was checked against, has the table.
pub(crate) fn lacks_a_table_yet(e: &SourceError) -> bool {
    sqlstate(e).is_some_and(|c| *c == SqlState::UNDEFINED_TABLE)
}

/// The server's SQLSTATE behind a source error, when the server raised it.
fn sqlstate(e: &SourceError) -> Option<&SqlState> {
    std::error::Error::source(e)
        .and_then(|c| c.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::code)
}

/// Tests prove the witness and the wait are needed by turning both off: the scan then
/// trusts the standby's snapshot blindly. Debug builds only, never in a release.
pub(crate) fn sabotaged() -> bool {
    cfg!(debug_assertions)
        && std::env::var("SOURCE_POSTGRES_SABOTAGE").is_ok_and(|v| v == "replica-visibility")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> PgLogin {
        serde_json::from_str(r#"{"host": "r", "user": "u"}"#).unwrap()
    }

    #[test]
    fn a_server_not_in_recovery_is_refused_with_the_remedy() {
        let e = replayed_lsn(None, &login()).unwrap_err();
        assert!(e.to_string().contains("not in recovery"), "{e}");
        assert_eq!(e.failure(), Failure::Setup);
        assert_eq!(
            replayed_lsn(Some("16/B374D848".into()), &login()).unwrap(),
            "16/B374D848".parse().unwrap()
        );
    }
}
