//! The torture and fault suite (small configuration; `cargo xtask torture --minutes N`
//! runs long ones): each connector binary under concurrent writers, pgbench or sysbench,
//! SIGKILLs and injected faults, checked against DESIGN.md §6 (see `testkit::torture`).

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod fuzz;

use testkit::servers::{MariaDbServer, PgServer};
use testkit::torture::{self, Fault, Figures, Settings};

/// The seed: `TORTURE_SEED` replays one; otherwise it changes with every run.
fn seed() -> u64 {
    std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        })
}

/// Every fault of `kinds` happened, the connector was killed, the lost log was refused,
/// and nothing was lost or stale.
fn assert_clean(figures: &Figures, kinds: &[Fault]) {
    eprintln!("{figures}");
    assert!(figures.violations.is_empty(), "{figures}");
    assert!(figures.kills >= 3, "the connector was killed: {figures}");
    for k in kinds {
        assert!(
            figures.faults.contains_key(k.name()),
            "a {} happened: {figures}",
            k.name()
        );
    }
    assert!(
        figures.retries > 0,
        "faults were felt and retried: {figures}"
    );
    assert_eq!(figures.refused.len(), 1, "{figures}");
    assert!(
        figures.changes > 0 && figures.rows_compared > 0,
        "{figures}"
    );
}

#[test]
fn postgres_random_workload_under_kills_and_faults() {
    let Some(mut pg) = PgServer::start_or_skip() else {
        return;
    };
    if let Some(f) = torture::random_workload(&mut pg, &Settings::small(seed())).unwrap() {
        assert_clean(&f, &Fault::ALL);
    }
}

#[test]
fn mariadb_random_workload_under_kills_and_faults() {
    let Some(mut maria) = MariaDbServer::start_or_skip() else {
        return;
    };
    if let Some(f) = torture::random_workload(&mut maria, &Settings::small(seed())).unwrap() {
        assert_clean(&f, &Fault::ALL);
    }
}

/// The random workload with every backfill chunk scanned on a hot standby (DESIGN.md §7's
/// fence ordering across two servers; see `source_postgres::replica`): the primary is
/// restarted, crashed and cut off as above, and the standby follows it.
#[test]
fn postgres_random_workload_from_replica() {
    let Some(mut pg) = PgServer::start_or_skip() else {
        return;
    };
    let standby = match pg.start_standby(&[("wal_retrieve_retry_interval", "200ms")]) {
        Ok(standby) => standby,
        Err(e) => return testkit::servers::skip(&format!("a standby: {e}")),
    };
    let replica =
        serde_json::json!({"host": "127.0.0.1", "port": standby.port, "user": "postgres"});
    let mut victim = torture::ScannedOnReplica {
        primary: &mut pg,
        replica,
    };
    if let Some(f) = torture::random_workload(&mut victim, &Settings::small(seed())).unwrap() {
        assert_clean(&f, &Fault::ALL);
    }
}

/// The same with a MariaDB replica replicating by GTID.
#[test]
fn mariadb_random_workload_from_replica() {
    let Some(mut maria) = MariaDbServer::start_or_skip() else {
        return;
    };
    let replica = match maria.start_replica() {
        Ok(replica) => replica,
        Err(e) => return testkit::servers::skip(&format!("a replica: {e}")),
    };
    let endpoint = serde_json::json!({"host": "127.0.0.1", "port": replica.port, "user": "root"});
    let mut victim = torture::ScannedOnReplica {
        primary: &mut maria,
        replica: endpoint,
    };
    if let Some(f) = torture::random_workload(&mut victim, &Settings::small(seed())).unwrap() {
        assert_clean(&f, &Fault::ALL);
    }
}

#[test]
fn postgres_under_pgbench() {
    let Some(mut pg) = PgServer::start_or_skip() else {
        return;
    };
    let settings = Settings {
        duration: std::time::Duration::from_secs(25),
        chunk_size: 2_000,
        ranges: 4,
        ..Settings::small(seed())
    };
    if let Some(f) = torture::pgbench(&mut pg, &settings).unwrap() {
        assert_clean(&f, &Fault::CONNECTOR_ONLY);
    }
}

#[test]
fn mariadb_under_sysbench() {
    let Some(mut maria) = MariaDbServer::start_or_skip() else {
        return;
    };
    let settings = Settings {
        duration: std::time::Duration::from_secs(25),
        chunk_size: 100,
        ..Settings::small(seed())
    };
    if let Some(f) = torture::sysbench(&mut maria, &settings).unwrap() {
        assert_clean(&f, &Fault::CONNECTOR_ONLY);
    }
}
