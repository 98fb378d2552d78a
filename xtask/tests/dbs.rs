//! `cargo xtask dbs` keeps its servers until SIGINT or SIGTERM, with stdin closed too
//! (started in the background or with `</dev/null`), and stops them on the signal.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn port_of(line: &str) -> u16 {
    let after = line.rsplit_once(':').unwrap().1;
    after
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn servers_outlive_a_closed_stdin_and_stop_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("dbs")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (Some(Ok(pg)), Some(Ok(maria))) = (lines.next(), lines.next()) else {
        let status = child.wait().unwrap();
        println!("SKIPPED: `xtask dbs` could not start its servers ({status})");
        return;
    };
    let ports = [port_of(&pg), port_of(&maria)];
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "xtask dbs exited with stdin closed"
    );
    assert!(ports.iter().all(|&p| listening(p)), "{pg} {maria}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "xtask dbs ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        ports.iter().all(|&p| !listening(p)),
        "the servers stop with it"
    );
}
