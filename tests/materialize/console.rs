//! The console's HTTP API without a browser (the browser tests are `cargo xtask
//! browser-test`): the status a live pipeline shows, a backfill requested through it and
//! carried out, and every refusal of the safe defaults: another origin, another host name,
//! a form's body, a missing or wrong token, a public address without a token. No endpoint
//! secret ever leaves the console.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::http::{Response, exchange};
use testkit::servers::{PgServer, Throwaway as _, free_port};

use crate::backfill::{Running, converges, status};
use crate::types::{cdc, pipeline};

/// A secret put in both endpoints: no answer of the console may carry it.
const SECRET: &str = "s3cret-never-shown";

/// GET `path` from the console at `addr`.
fn get(addr: &str, path: &str) -> Response {
    get_with(addr, path, &[])
}

/// GET `path` with `headers`.
fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    exchange(addr, "GET", path, headers, "", None).unwrap()
}

/// POST `body` to `/api/backfill` as the console's own page does.
fn post(addr: &str, body: &Value) -> Response {
    let origin = format!("http://{addr}");
    exchange(
        addr,
        "POST",
        "/api/backfill",
        &[
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
        None,
    )
    .unwrap()
}

/// Waits until the console answers `/api/status` with a status satisfying `ok`.
fn wait_for(addr: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = exchange(addr, "GET", "/api/status", &[], "", None);
        if let Ok(r) = &answer
            && r.status == 200
            && ok(&r.json())
        {
            return r.json();
        }
        assert!(Instant::now() < deadline, "{what}: {answer:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A source server and a destination server (`None` once one printed `SKIPPED:`).
fn servers() -> Option<(PgServer, PgServer)> {
    Some((PgServer::start_or_skip()?, PgServer::start_or_skip()?))
}

/// A source table `t` of 3,000 rows, a pipeline to `dest`, and a secret in both endpoints.
fn setup(src: &PgServer, dest: &PgServer, name: &str) -> std::path::PathBuf {
    src.sql("CREATE TABLE t (id int PRIMARY KEY, v int, pad text); INSERT INTO t SELECT g, g, 'initial' FROM generate_series(1, 3000) g").unwrap();
    let dir = std::env::temp_dir().join(format!("mat-console-{name}-{}", std::process::id()));
    let path = pipeline(src, dest, &dir, &["t"]);
    // Trust authentication ignores the passwords; the console must not show them anyway.
    for (file, pointer) in [
        ("config.json", "/endpoint"),
        ("pipeline.json", "/materializations/0/endpoint"),
    ] {
        let file = dir.join(file);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        v.pointer_mut(pointer).unwrap()["password"] = json!(SECRET);
        std::fs::write(&file, v.to_string()).unwrap();
    }
    path
}

fn no_secret_in(answers: &[&Response]) {
    for a in answers {
        assert!(
            !a.body.contains(SECRET),
            "a secret left the console: {}",
            a.body
        );
    }
}

#[test]
fn the_console_shows_a_live_pipeline_and_carries_out_a_backfill_from_its_api() {
    let Some((src, dest)) = servers() else {
        return;
    };
    let pipeline = setup(&src, &dest, "live");
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let run = Running::command("run", &pipeline, &[&format!("--console={addr}")], &[]);

    // The backfill reaches 100% and the destination catches up, as the page shows it.
    let shown = wait_for(&addr, "the backfill does not complete", |s| {
        s["status"]["captures"][0]["bindings"][0]["percent"] == 100.0
            && s["status"]["materializations"][0]["tables"][0]["lag_lines"] == 0
            && s["status"]["materializations"][0]["tables"][0]["position"].as_u64() > Some(0)
    });
    assert_eq!(
        shown["pipeline"]["captures"][0]["collections"],
        json!(["t"])
    );
    assert_eq!(
        shown["pipeline"]["materializations"][0]["bindings"][0]["target"],
        "t"
    );
    converges(&src, &dest, "t", "the initial backfill");

    let page = get(&addr, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<title>cdc console</title>"),
        "{}",
        page.body
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    for asset in ["/console.js", "/console.css"] {
        assert_eq!(get(&addr, asset).status, 200, "{asset}");
    }
    // Live updates: server-sent events, the status as the first one.
    let events = exchange(&addr, "GET", "/api/events", &[], "", Some(2048)).unwrap();
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert!(events.body.contains("event: status"), "{}", events.body);
    assert!(events.body.contains("\"captures\""), "{}", events.body);
    // The runtime's Prometheus page on the same server.
    let metrics = get(&addr, "/metrics");
    assert!(
        metrics
            .body
            .contains("cdc_capture_documents_total{capture=\"c\"}"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("cdc_materialization_behind_lines{materialization=\"m\",table=\"t\"} 0"),
        "{}",
        metrics.body
    );
    let history = get(&addr, "/api/history");
    assert!(
        !history.json().as_array().unwrap().is_empty(),
        "{}",
        history.body
    );

    // What cdc backfill refuses, the console refuses, with the same words.
    let keep = post(&addr, &json!({"kind": "materialization", "table": "keep"}));
    assert_eq!(keep.status, 400, "{}", keep.body);
    assert!(
        keep.json()["error"]
            .as_str()
            .unwrap()
            .contains("--table keep"),
        "{}",
        keep.body
    );
    let unknown = post(&addr, &json!({"kind": "incremental", "bindings": ["nope"]}));
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let misspelt = post(&addr, &json!({"kind": "materialization", "tabel": "drop"}));
    assert_eq!(misspelt.status, 400, "{}", misspelt.body);

    // A materialization backfill under writes, requested through the API.
    let asked = post(
        &addr,
        &json!({"kind": "materialization", "bindings": ["t"], "table": "rebuild"}),
    );
    assert_eq!(asked.status, 200, "{}", asked.body);
    let lines = asked.json()["requested"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 1, "{}", asked.body);
    assert!(
        lines[0]
            .as_str()
            .unwrap()
            .contains("materialization of m [t] tables: rebuild")
    );
    src.sql("UPDATE t SET v = v + 1 WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0")
        .unwrap();
    let done = wait_for(&addr, "the materialization backfill is not done", |s| {
        s["status"]["requests"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["phase"] == "done")
    });
    assert_eq!(done["status"]["requests"][0]["kind"], "materialization");
    // The request is the store's: cdc status shows the same one.
    assert_eq!(
        status(&pipeline)["requests"][0]["id"],
        done["status"]["requests"][0]["id"]
    );
    converges(
        &src,
        &dest,
        "t",
        "a materialization backfill from the console",
    );

    no_secret_in(&[
        &get(&addr, "/"),
        &get(&addr, "/api/status"),
        &get(&addr, "/api/history"),
        &get(&addr, "/metrics"),
        &events,
    ]);
    run.stop();
    let _ = std::fs::remove_dir_all(pipeline.parent().unwrap());
}

#[test]
fn the_console_refuses_other_origins_other_hosts_and_requests_without_its_token() {
    let Some((src, dest)) = servers() else {
        return;
    };
    let pipeline = setup(&src, &dest, "refusals");
    // The pipeline ran once; the console then runs alone against its store.
    cdc(&["run", "--until-caught-up"], &pipeline);
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let console =
        |env: &[(&str, &str)]| Running::command("console", &pipeline, &["--addr", &addr], env);
    let served = console(&[]);
    wait_for(&addr, "the console does not serve", |_| true);

    let own = format!("http://{addr}");
    let body = json!({"kind": "reset"}).to_string();
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let attempts: [(&str, Headers<'_>, u16); 4] = [
        (
            "another origin",
            vec![
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/json"),
            ],
            403,
        ),
        (
            "a cross-site fetch without an Origin",
            vec![
                ("Sec-Fetch-Site", "cross-site"),
                ("Content-Type", "application/json"),
            ],
            403,
        ),
        (
            "a form's body from the console's own origin",
            vec![("Origin", &own), ("Content-Type", "text/plain")],
            415,
        ),
        (
            "a host name rebound to loopback",
            vec![
                ("Host", "evil.example"),
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/json"),
            ],
            403,
        ),
    ];
    for (what, headers, code) in &attempts {
        let r = exchange(&addr, "POST", "/api/backfill", headers, &body, None).unwrap();
        assert_eq!(r.status, *code, "{what}: {}", r.body);
    }
    let foreign_read = get_with(&addr, "/api/status", &[("Host", "evil.example:80")]);
    assert_eq!(foreign_read.status, 403, "{}", foreign_read.body);
    assert_eq!(
        wait_for(&addr, "status", |_| true)["status"]["requests"],
        json!([]),
        "a refused request was written"
    );

    // A request the console takes is durable: shown after the console restarts, and by
    // cdc status, pending until a cdc run carries it out.
    let asked = post(&addr, &json!({"kind": "incremental", "bindings": ["t"]}));
    assert_eq!(asked.status, 200, "{}", asked.body);
    drop(served);
    let served = console(&[]);
    let shown = wait_for(&addr, "the request after a restart", |s| {
        s["status"]["requests"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    assert_eq!(shown["status"]["requests"][0]["kind"], "incremental");
    assert_eq!(shown["status"]["requests"][0]["phase"], "pending");
    assert_eq!(status(&pipeline)["requests"][0]["phase"], "pending");
    drop(served);

    // A public address needs a token.
    let public = format!("0.0.0.0:{}", free_port().unwrap());
    let out = std::process::Command::new(testkit::live::workspace_binary("cdc").unwrap())
        .args(["console"])
        .arg(&pipeline)
        .args(["--addr", &public])
        .env_remove("CDC_CONSOLE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success(), "served {public} without a token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CDC_CONSOLE_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With a token, every route wants it; opening /?token= once keeps it in a cookie.
    let _served = console(&[("CDC_CONSOLE_TOKEN", "let-me-in")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while exchange(&addr, "GET", "/api/status", &[], "", None).is_err() {
        assert!(
            Instant::now() < deadline,
            "the console with a token does not serve"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in ["/", "/api/status", "/api/events", "/metrics"] {
        assert_eq!(get(&addr, path).status, 401, "{path} without the token");
    }
    let wrong = get_with(
        &addr,
        "/api/status",
        &[("Authorization", "Bearer let-me-In")],
    );
    assert_eq!(wrong.status, 401);
    let bearer = get_with(&addr, "/metrics", &[("Authorization", "Bearer let-me-in")]);
    assert_eq!(bearer.status, 200, "{}", bearer.body);
    let opened = get(&addr, "/?token=let-me-in");
    assert_eq!(opened.status, 303);
    assert_eq!(opened.header("location"), Some("/"));
    let cookie = opened.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = get_with(&addr, "/", &[("Cookie", pair)]);
    assert_eq!(page.status, 200);
    let _ = std::fs::remove_dir_all(pipeline.parent().unwrap());
}

#[test]
fn a_destination_that_is_down_is_shown_unreadable_and_read_again_once_it_is_back() {
    let Some((src, mut dest)) = servers() else {
        return;
    };
    if dest.pid().is_none() {
        println!(
            "SKIPPED: the destination is not a server the harness started, so it cannot be stopped"
        );
        return;
    }
    let pipeline = setup(&src, &dest, "down");
    cdc(&["run", "--until-caught-up"], &pipeline);
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let _served = Running::command("console", &pipeline, &["--addr", &addr], &[]);
    wait_for(&addr, "the destination's position", |s| {
        s["status"]["materializations"][0]["tables"][0]["position"].as_u64() > Some(0)
    });
    if let Some(p) = dest.process_mut() {
        p.kill();
    }
    // The page lives on: the captures as before, the destination named unreadable.
    let down = wait_for(&addr, "the destination is not shown down", |s| {
        s["status"]["materializations"][0]["error"].is_string()
    });
    assert_eq!(down["status"]["captures"][0]["capture"], "c");
    dest.launch().unwrap();
    let back = wait_for(&addr, "the destination is not read again", |s| {
        s["status"]["materializations"][0]["error"].is_null()
            && s["status"]["materializations"][0]["tables"][0]["lag_lines"] == 0
    });
    assert!(back["status"]["materializations"][0]["tables"][0]["position"].as_u64() > Some(0));
    let _ = std::fs::remove_dir_all(pipeline.parent().unwrap());
}

/// `curl` against the console over HTTPS, trusting `root`: the status code and the headers.
fn curl(url: &str, root: Option<&Path>, headers: &[&str]) -> (String, String) {
    let mut command = std::process::Command::new("curl");
    command.args([
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(root) = root {
        command.arg("--cacert").arg(root);
    }
    for h in headers {
        command.args(["-H", h]);
    }
    let out = command.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text.lines().last().unwrap_or_default().to_string();
    (code, text)
}

#[test]
fn the_console_serves_https_with_its_certificate_and_refuses_a_bad_one_at_start() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: no curl to speak HTTPS with");
        return;
    }
    let Some((src, dest)) = servers() else {
        return;
    };
    let pipeline = setup(&src, &dest, "https");
    cdc(&["run", "--until-caught-up"], &pipeline);
    let dir = pipeline.parent().unwrap();
    let certs = match testkit::tls::make(dir, None) {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: no test certificates: {e}");
            return;
        }
    };
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());

    // A key that is not one stops the console at start, naming the file.
    let bad = std::process::Command::new(testkit::live::workspace_binary("cdc").unwrap())
        .arg("console")
        .arg(&pipeline)
        .args(["--addr", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--console-cert", cert, "--console-key", cert])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "served with a certificate as its key"
    );
    assert!(
        stderr.contains("--console-key") && stderr.contains("no private key"),
        "{stderr}"
    );

    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _served = Running::command(
        "console",
        &pipeline,
        &[
            "--addr",
            &addr,
            "--console-cert",
            cert,
            "--console-key",
            key,
        ],
        &[("CDC_CONSOLE_TOKEN", "over-tls")],
    );
    let url = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = curl(
            &format!("{url}/metrics"),
            Some(&certs.root),
            &["Authorization: Bearer over-tls"],
        );
        if code == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "no HTTPS answer: {code}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The token's cookie is Secure over HTTPS.
    let (code, headers) = curl(&format!("{url}/?token=over-tls"), Some(&certs.root), &[]);
    assert_eq!(code, "303", "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains("; secure"),
        "{headers}"
    );
    // A client that does not trust the certificate gets nothing; plain HTTP gets no page.
    let (untrusted, _) = curl(&format!("{url}/"), None, &[]);
    assert_eq!(untrusted, "000");
    let plain = exchange(&addr, "GET", "/", &[], "", None);
    assert!(
        plain.map_or(true, |r| r.status == 0),
        "plain HTTP was served"
    );
    let _ = std::fs::remove_dir_all(dir);
}
