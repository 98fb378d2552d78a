//! The live scenarios through the `cdc` runtime ([`PipelineDriver`]): the connector runs
//! as the runtime's child, and the runs SIGKILL the runtime, the connector, or both; the
//! checker then reads what the store committed, which must satisfy every guarantee the
//! connector's own committed output does (PIPELINE.md §3, "Exactly once").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cdc_runtime::store::{EmbeddedStore, JetStreamLocation, JetStreamStore, Store};
use serde_json::{Value, json};

use crate::live::{Driver, workspace_binary};

/// What a killed run kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// The runtime alone (its connector sees its stdin close and stops).
    Runtime,
    /// The connector alone (the runtime restarts it), then the runtime.
    Connector,
    /// Both at once.
    Both,
}

/// Called before each killed run with its number (a test restarts a destination server).
pub type KillHook = Box<dyn FnMut(usize)>;

/// Drives a scenario through `cdc run`, with an embedded store or on JetStream.
pub struct PipelineDriver {
    cdc: PathBuf,
    pipeline: PathBuf,
    /// The store's URL in the pipeline.
    store_url: String,
    victims: Vec<Victim>,
    hook: Option<KillHook>,
}

impl std::fmt::Debug for PipelineDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineDriver")
            .field("pipeline", &self.pipeline)
            .field("store_url", &self.store_url)
            .field("victims", &self.victims)
            .finish_non_exhaustive()
    }
}

/// The capture's name in the scenario's pipeline.
const CAPTURE: &str = "scenario";

impl PipelineDriver {
    /// A pipeline in `dir` with one capture of `connector` with `config`, its runs killing
    /// `victims` in turn; its store is `store_url`, or an embedded store in `dir` when
    /// `None`. `Err` when `cdc` is not built.
    pub fn new(
        connector: &Path,
        config: &Path,
        dir: &Path,
        victims: &[Victim],
        store_url: Option<&str>,
    ) -> Result<Self, String> {
        let cdc = workspace_binary("cdc")?;
        let store_url = store_url.map_or_else(
            || format!("file://{}", dir.join("store").display()),
            str::to_string,
        );
        let pipeline = dir.join("pipeline.json");
        std::fs::write(
            &pipeline,
            json!({"store": store_url,
                   "captures": [{"name": CAPTURE, "connector": connector, "config": config}]})
            .to_string(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            cdc,
            pipeline,
            store_url,
            victims: victims.to_vec(),
            hook: None,
        })
    }

    /// Adds a materialization `dest` to the pipeline: each collection of the capture lands
    /// in a standard table named like it on `destination` (a `postgres` endpoint), and in a
    /// delta table `<name>_delta`.
    pub fn materializing(self, destination: &Value) -> Result<Self, String> {
        let text = std::fs::read_to_string(&self.pipeline).map_err(|e| e.to_string())?;
        let mut pipeline: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let config_path = pipeline["captures"][0]["config"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(&config_path).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut bindings = Vec::new();
        for b in config["bindings"].as_array().into_iter().flatten() {
            let target = b["target"].as_str().unwrap_or_default();
            bindings.push(json!({"source": target, "target": target}));
            bindings.push(
                json!({"source": target, "target": format!("{target}_delta"), "delta_updates": true}),
            );
        }
        pipeline["materializations"] = json!([{
            "name": "dest", "destination": "postgres", "endpoint": destination, "bindings": bindings
        }]);
        std::fs::write(&self.pipeline, pipeline.to_string()).map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Calls `hook` before each killed run.
    pub fn on_kill(mut self, hook: KillHook) -> Self {
        self.hook = Some(hook);
        self
    }

    fn open_store(&self) -> Box<dyn Store> {
        match self.store_url.strip_prefix("file://") {
            Some(dir) => Box::new(EmbeddedStore::open(dir).expect("the store opens")),
            None => Box::new(
                JetStreamStore::connect(JetStreamLocation::parse(&self.store_url).expect("a URL"))
                    .expect("the store connects"),
            ),
        }
    }

    /// Copies the store's last committed state to [`Driver::state_file`], where the
    /// scenario's writers look for active bindings.
    fn mirror_state(&self) {
        if let Ok(Some(commit)) = self.open_store().committed(CAPTURE) {
            let path = self.state_file();
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(path, json!({ "state": commit.state }).to_string());
        }
    }

    fn start(&self, until_caught_up: bool) -> Child {
        let mut cmd = Command::new(&self.cdc);
        cmd.args(["--log-level", "warn", "run"]).arg(&self.pipeline);
        if until_caught_up {
            cmd.arg("--until-caught-up");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cdc starts")
    }
}

/// The process ids of `parent`'s children.
fn children(parent: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn kill(pid: &str) {
    let _ = Command::new("kill").args(["-KILL", pid]).status();
}

impl Driver for PipelineDriver {
    fn killed_run(&mut self, k: usize, after: Duration) {
        let victim = self.victims[k % self.victims.len()];
        if let Some(hook) = self.hook.as_mut() {
            hook(k);
        }
        let mut runtime = self.start(false);
        // The writers see the committed state as the run goes on (from a JetStream store,
        // which takes a connection to read, once the run has had its time).
        let until = std::time::Instant::now() + after;
        while std::time::Instant::now() < until {
            if self.store_url.starts_with("file://") {
                self.mirror_state();
            }
            std::thread::sleep(Duration::from_millis(50).min(after));
        }
        self.mirror_state();
        let connectors = children(runtime.id());
        match victim {
            Victim::Runtime => {
                let _ = runtime.kill();
            }
            Victim::Both => {
                for c in &connectors {
                    kill(c);
                }
                let _ = runtime.kill();
            }
            Victim::Connector => {
                for c in &connectors {
                    kill(c);
                }
                // The runtime restarts it from the store; then this run ends.
                std::thread::sleep(after);
                let _ = runtime.kill();
            }
        }
        let _ = runtime.wait();
        // A connector that outlived its runtime stops once it sees its stdin closed;
        // give it the moment it needs before the next run starts another.
        for c in connectors {
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{c}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn final_run(&mut self) {
        let status = self.start(true).wait().expect("cdc runs");
        assert!(
            status.success(),
            "cdc run --until-caught-up failed: {status}"
        );
    }

    /// The store's committed log as one run: a checkpoint no state equals, the committed
    /// lines in order, and the last committed state.
    ///
    /// A read the store answers as unavailable (a JetStream cluster still electing after
    /// a node came back, on a busy machine) is read again, whole, for up to half a minute:
    /// the oracle's read is not what the scenario tests.
    fn outputs(&mut self) -> Vec<Vec<String>> {
        let store = self.open_store();
        let mut lines = vec![
            json!({"checkpoint": {"version": 1, "position": null, "bindings": {}}}).to_string(),
        ];
        let mut attempts = 0;
        let read = loop {
            let read: Result<Vec<String>, _> = store.read(CAPTURE).and_then(|mut all| {
                all.try_fold(Vec::new(), |mut v, l| {
                    v.push(l?);
                    Ok(v)
                })
            });
            match read {
                Err(e) if attempts < 30 => {
                    attempts += 1;
                    eprintln!("reading the store again: {e:?}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                read => break read.expect("the store reads"),
            }
        };
        lines.extend(read);
        let state: Value = store
            .committed(CAPTURE)
            .expect("the store reads")
            .map(|c| c.state)
            .unwrap_or_default();
        lines.push(json!({ "checkpoint": state }).to_string());
        vec![lines]
    }

    fn state_file(&self) -> PathBuf {
        self.pipeline.with_file_name("state.mirror.json")
    }
}
