//! Test certificates: a throwaway CA and a server certificate for `localhost` and
//! `127.0.0.1` that it signs (webpki refuses a CA certificate as the end entity), made with
//! the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files a TLS test needs.
#[derive(Clone, Debug)]
pub struct TestCerts {
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The CA certificate a client trusts (PEM).
    pub root: PathBuf,
}

/// Makes the CA and server certificate in `dir`, the server's files owned by `owner` (the
/// OS user the server runs as, when the tests run as root) and readable by it only.
/// `Err` says why they could not be made (the caller skips).
pub fn make(dir: &Path, owner: Option<&str>) -> Result<TestCerts, String> {
    let certs = TestCerts {
        key: dir.join("server.key"),
        cert: dir.join("server.crt"),
        root: dir.join("root.crt"),
    };
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| e.to_string())?;
    let p = |s: &Path| s.to_string_lossy().into_owned();
    let (ca_key, csr) = (dir.join("ca.key"), dir.join("server.csr"));
    let steps: [Vec<String>; 3] = [
        vec![
            "req".into(),
            "-x509".into(),
            "-newkey".into(),
            "rsa:2048".into(),
            "-nodes".into(),
            "-days".into(),
            "2".into(),
            "-subj".into(),
            "/CN=test-ca".into(),
            "-keyout".into(),
            p(&ca_key),
            "-out".into(),
            p(&certs.root),
        ],
        vec![
            "req".into(),
            "-newkey".into(),
            "rsa:2048".into(),
            "-nodes".into(),
            "-subj".into(),
            "/CN=localhost".into(),
            "-keyout".into(),
            p(&certs.key),
            "-out".into(),
            p(&csr),
        ],
        vec![
            "x509".into(),
            "-req".into(),
            "-days".into(),
            "2".into(),
            "-CAcreateserial".into(),
            "-in".into(),
            p(&csr),
            "-CA".into(),
            p(&certs.root),
            "-CAkey".into(),
            p(&ca_key),
            "-extfile".into(),
            p(&ext),
            "-out".into(),
            p(&certs.cert),
        ],
    ];
    for step in &steps {
        let made = Command::new("openssl")
            .args(step)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("openssl cannot make test certificates".into());
        }
    }
    for f in [&certs.key, &certs.cert] {
        if let Some(owner) = owner {
            let _ = Command::new("chown").arg(owner).arg(f).status();
        }
        let _ = Command::new("chmod").arg("600").arg(f).status();
    }
    Ok(certs)
}
