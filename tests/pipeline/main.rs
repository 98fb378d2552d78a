//! The pipeline suite (PIPELINE.md §7): the `cdc` runtime landing captures in its store,
//! against throwaway servers. Exactly once: under concurrent writes, the runtime, the
//! connector, or both are SIGKILLed again and again; what the store committed must then
//! merge-apply to the source tables and keep every guarantee of DESIGN.md §6, checked by
//! the same checker (and the same consumer rule) as the connectors' own suites.

#![allow(clippy::unwrap_used)]

use backfill_core::mode::ResolvedMode;
use testkit::live::{LiveDb, Scenario};
use testkit::pipeline::{PipelineDriver, Victim};
use testkit::servers::{MariaDbServer, NatsServer, PgServer};

fn exactly_once_under_kills(db: &dyn LiveDb, name: &str, store: Option<&str>) {
    let scenario = Scenario {
        modes: vec![
            ResolvedMode::Precise,
            ResolvedMode::Normal,
            ResolvedMode::WithoutPrimaryKey,
        ],
        initial_rows: 300,
        txns: 600,
        kills: 9,
        endpoint_extra: serde_json::json!({"advanced": {"chunk_size": 11}}),
    };
    let victims = [Victim::Runtime, Victim::Connector, Victim::Both];
    let report = testkit::live::run_with(db, name, &scenario, &|connector, config, dir| {
        PipelineDriver::new(connector, config, dir, &victims, store)
            .map(|d| Box::new(d) as Box<dyn testkit::live::Driver>)
            .map_err(Some)
    })
    .expect("scenario setup");
    let Some(report) = report else { return };
    eprintln!(
        "{}: {} kills, {} committed lines",
        db.name(),
        report.kills,
        report.lines
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn postgres_lands_exactly_once_in_the_embedded_store_under_kills() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    exactly_once_under_kills(&pg, "pipe", None);
}

#[test]
fn mariadb_lands_exactly_once_in_the_embedded_store_under_kills() {
    let Some(db) = MariaDbServer::start_or_skip() else {
        return;
    };
    exactly_once_under_kills(&db, "pipe", None);
}

#[test]
fn postgres_lands_exactly_once_on_jetstream_under_kills() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    exactly_once_under_kills(&pg, "js", Some(&format!("{}/t1", nats.url)));
}

#[test]
fn mariadb_lands_exactly_once_on_jetstream_under_kills() {
    let Some(db) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    exactly_once_under_kills(&db, "js", Some(&format!("{}/t1", nats.url)));
}

/// Streams replicated three ways on a three-node cluster: one node SIGKILLed and
/// restarted mid-run, while the runtime and the connector are killed too. Nothing is lost
/// and nothing is landed twice.
#[test]
fn a_nats_node_dies_and_returns_and_nothing_is_lost_or_doubled() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let Some(mut nodes) = NatsServer::cluster_or_skip() else {
        return;
    };
    let servers: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let url = format!("nats://{}/r3?replicas=3", servers.join(","));
    let mut victim = nodes.remove(1);
    let chaos = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        victim.kill();
        std::thread::sleep(std::time::Duration::from_secs(4));
        victim.restart().unwrap();
        victim
    });
    exactly_once_under_kills(&pg, "r3", Some(&url));
    nodes.push(chaos.join().unwrap());
}

/// The runtime's commit rule on the edges a live run rarely hits, with a scripted
/// connector that speaks the protocol: a run that dies mid-unit leaves nothing in the
/// store; the next run resumes from the store's last state (written to its state file),
/// its resume checkpoint discards nothing committed, and its unit lands once. Every
/// committed checkpoint is acknowledged on the connector's stdin, and only those.
#[test]
fn a_unit_cut_short_is_not_committed_and_its_rerun_lands_once() {
    cut_short(None);
    if let Some(nats) = NatsServer::start_or_skip() {
        cut_short(Some(&format!("{}/scripted", nats.url)));
    }
}

/// [`a_unit_cut_short_is_not_committed_and_its_rerun_lands_once`] on one store; the rerun's
/// last document is larger than a JetStream message, so it spans several.
fn cut_short(store: Option<&str>) {
    use serde_json::{Value, json};
    let Ok(cdc) = testkit::live::workspace_binary("cdc") else {
        testkit::servers::skip("cdc is not built");
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "pipeline-scripted-{}-{}",
        std::process::id(),
        store.is_some()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: u64| json!({"version": 1, "position": {"n": n}, "bindings": {}});
    let doc = |id: u64| json!({"binding": 0, "doc": {"id": id, "_meta": {"op": "c"}}}).to_string();
    let line = |state: &Value| json!({"checkpoint": state}).to_string();
    // Run 1 (no state file): commits doc 1, then dies after docs 2 and 3 (a cut line too).
    // Run 2 (state file = the store's last state, P1): redoes 2 and 3, commits, exits 0.
    let run1 = [
        line(&json!({"version": 1, "position": null, "bindings": {}})),
        doc(1),
        line(&p(1)),
        doc(2),
        doc(3),
    ]
    .join("\n");
    let big =
        json!({"binding": 0, "doc": {"id": 30, "pad": "x".repeat(700_000), "_meta": {"op": "c"}}})
            .to_string();
    let run2 = [line(&p(1)), doc(20), big, line(&p(2))].join("\n");
    std::fs::write(
        dir.join("run1.jsonl"),
        format!("{run1}\n{{\"binding\": 0, \"doc\": {{\"id\""),
    )
    .unwrap();
    std::fs::write(dir.join("run2.jsonl"), format!("{run2}\n")).unwrap();
    let script = dir.join("connector.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# --log-level L capture --config C --state S --acks stdin [--until-caught-up]\nstate=\"$7\"\nexec 3<&0\ncat <&3 >> {acks} &\nif [ -f \"$state\" ]; then cp \"$state\" {seen}; cat {dir}/run2.jsonl; sleep 0.3; exit 0; fi\ncat {dir}/run1.jsonl; sleep 0.3; exit 1\n",
            acks = dir.join("acks").display(),
            seen = dir.join("state-seen.json").display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    std::fs::write(dir.join("config.json"), json!({"endpoint": {}, "bindings": [{"resource": {"namespace": "s", "stream": "t"}, "target": "t"}]}).to_string()).unwrap();
    std::fs::write(dir.join("pipeline.json"), json!({"store": store.unwrap_or("file:store"), "captures": [{"name": "c", "connector": script, "config": "config.json"}]}).to_string()).unwrap();
    let out = std::process::Command::new(&cdc)
        .args(["run", "--until-caught-up"])
        .arg(dir.join("pipeline.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = std::process::Command::new(&cdc)
        .arg("read")
        .arg(dir.join("pipeline.json"))
        .arg("t")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        text.lines()
            .any(|l| l.len() > 700_000 && l.ends_with("\"_meta\":{\"op\":\"c\"}}")),
        "a line larger than a message comes back whole"
    );
    let ids: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        [1, 20, 30],
        "the cut unit is not committed, its rerun lands once"
    );
    let seen: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state-seen.json")).unwrap()).unwrap();
    assert_eq!(
        seen,
        p(1),
        "the connector resumed from the store's last state"
    );
    let acks: Vec<Value> = std::fs::read_to_string(dir.join("acks"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        acks,
        [json!({"position": {"n": 1}}), json!({"position": {"n": 2}})]
    );
    let status = std::process::Command::new(&cdc)
        .args(["status", "--json"])
        .arg(dir.join("pipeline.json"))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["captures"][0]["documents"], 3, "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Peak resident memory of a process, sampled until it exits (MiB), and its exit status.
fn run_measured(cmd: &mut std::process::Command) -> (f64, std::process::ExitStatus) {
    let mut child = cmd.spawn().unwrap();
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak_kib as f64 / 1024.0, status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A one-million-row transaction is one unit (a checkpoint never splits a transaction):
/// it passes through the runtime into each store without being held whole, and lands
/// whole.
#[test]
fn a_million_row_transaction_lands_with_bounded_memory() {
    use serde_json::json;
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let Ok(cdc) = testkit::live::workspace_binary("cdc") else {
        testkit::servers::skip("cdc is not built");
        return;
    };
    let Ok(connector) = testkit::live::workspace_binary("source-postgres") else {
        testkit::servers::skip("source-postgres is not built");
        return;
    };
    let nats = NatsServer::start_or_skip();
    let dir = std::env::temp_dir().join(format!("pipeline-million-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    pg.sql("CREATE TABLE million (id bigint PRIMARY KEY, b text)")
        .unwrap();
    let mut stores = vec![("embedded", "file:store".to_string())];
    if let Some(n) = &nats {
        stores.push(("jetstream", format!("{}/million", n.url)));
    }
    for (name, store) in &stores {
        let slot = format!("million_{name}");
        pg.sql(&format!(
            "CREATE TABLE {slot} (id bigint PRIMARY KEY, b text)"
        ))
        .unwrap();
        std::fs::write(
            dir.join(format!("{name}.json")),
            json!({"endpoint": {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": "postgres",
                                "tls": {"mode": "disable"}, "slot": slot, "publication": slot},
                   "bindings": [{"resource": {"namespace": "public", "stream": slot}, "target": format!("million-{name}")}]})
            .to_string(),
        )
        .unwrap();
        let pipeline = dir.join(format!("{name}-pipeline.json"));
        std::fs::write(
            &pipeline,
            json!({"store": store, "captures": [{"name": "m", "connector": connector, "config": format!("{name}.json")}]}).to_string(),
        )
        .unwrap();
        let run = || {
            run_measured(
                std::process::Command::new(&cdc)
                    .args(["--log-level", "warn", "run", "--until-caught-up"])
                    .arg(&pipeline)
                    .stdout(std::process::Stdio::null()),
            )
        };
        // The slot first, on an empty table; then the transaction, streamed.
        assert!(run().1.success());
        pg.sql(&format!(
            "INSERT INTO {slot} SELECT g, repeat('x', 50) FROM generate_series(1, 1000000) g"
        ))
        .unwrap();
        let (peak_mib, status) = run();
        assert!(status.success(), "{name}: cdc run failed");
        eprintln!("{name}: cdc peak RSS {peak_mib:.1} MiB");
        assert!(
            peak_mib < 64.0,
            "{name}: the runtime held {peak_mib:.1} MiB"
        );
        let status = std::process::Command::new(&cdc)
            .args(["status", "--json"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(
            status["captures"][0]["documents"], 1_000_000,
            "{name}: {status}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Backfill requests are durable store state (PIPELINE.md §5): written, replaced by id,
/// and read back in id order, on both stores, by a reader that is not the writer.
#[test]
fn backfill_requests_are_kept_by_both_stores_and_replaced_by_id() {
    use cdc_runtime::request::{Kind, Phase, Request, TableAction};
    use cdc_runtime::store::{EmbeddedStore, JetStreamLocation, JetStreamStore, Store};
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("requests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = |url: &str| -> Box<dyn Store> {
        match url.strip_prefix("file://") {
            Some(d) => Box::new(EmbeddedStore::open(d).unwrap()),
            None => {
                Box::new(JetStreamStore::connect(JetStreamLocation::parse(url).unwrap()).unwrap())
            }
        }
    };
    let request = |id: &str, phase| Request {
        id: id.into(),
        kind: Kind::Incremental,
        capture: Some("c".into()),
        materialization: None,
        collections: vec!["t".into()],
        mode: None,
        table: TableAction::Truncate,
        counters: [("t".to_string(), 2)].into_iter().collect(),
        endpoint: Default::default(),
        phase,
        created_at_ms: 1,
        note: String::new(),
    };
    for url in [
        format!("file://{}", dir.display()),
        format!("{}/req", nats.url),
    ] {
        let writer = open(&url);
        assert!(writer.requests().unwrap().is_empty(), "{url}");
        writer
            .put_request(&request("r2-0", Phase::Pending))
            .unwrap();
        writer
            .put_request(&request("r1-0", Phase::Pending))
            .unwrap();
        writer.put_request(&request("r1-0", Phase::Done)).unwrap();
        let read = open(&url).requests().unwrap();
        assert_eq!(
            read,
            [
                request("r1-0", Phase::Done),
                request("r2-0", Phase::Pending)
            ],
            "{url}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
