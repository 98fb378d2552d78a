//! The embedded store: a local directory (the layout and the crash argument are in the
//! parent module's docs).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{CaptureLog, Commit, Store};
use crate::error::{Error, Result};
use crate::request::Request;

/// The embedded store: a local directory (see the module docs).
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    /// Per capture, the last `(line, byte offset)` a reader of it reached: a follower that
    /// reads on from where it stopped seeks there instead of reading the log again.
    marks: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Committed bytes of the log.
    offset: u64,
    #[serde(flatten)]
    commit: Commit,
}

impl EmbeddedStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("captures"))
            .map_err(Error::store(format!("creating {}", dir.display())))?;
        Ok(Self {
            dir,
            marks: Arc::default(),
        })
    }

    fn capture_dir(&self, capture: &str) -> PathBuf {
        self.dir.join("captures").join(capture)
    }

    fn record(&self, capture: &str) -> Result<Option<Record>> {
        let path = self.capture_dir(capture).join("commit.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Damaged(format!(
                    "{} is not a commit record ({e}); restore it from a backup",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::store(format!("reading {}", path.display()))(e)),
        }
    }
}

impl Store for EmbeddedStore {
    fn writer(&self, capture: &str) -> Result<Box<dyn CaptureLog>> {
        let dir = self.capture_dir(capture);
        std::fs::create_dir_all(&dir)
            .map_err(Error::store(format!("creating {}", dir.display())))?;
        let lock =
            File::create(dir.join("lock")).map_err(Error::store("creating the lock file"))?;
        lock.try_lock().map_err(|_| {
            Error::Damaged(format!(
                "capture {capture} is being written by another runtime (it holds {}); stop it first",
                dir.join("lock").display()
            ))
        })?;
        let record = self.record(capture)?;
        let committed = record.as_ref().map_or(0, |r| r.offset);
        let log_path = dir.join("log.jsonl");
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&log_path)
            .map_err(Error::store(format!("opening {}", log_path.display())))?;
        let len = log
            .metadata()
            .map_err(Error::store("reading the log's length"))?
            .len();
        if len < committed {
            return Err(Error::Damaged(format!(
                "{} is shorter ({len} bytes) than its commit record says ({committed}); restore the store from a backup",
                log_path.display()
            )));
        }
        // What a crash left past the last commit was never committed.
        log.set_len(committed)
            .map_err(Error::store("truncating the uncommitted tail"))?;
        log.seek(SeekFrom::Start(committed))
            .map_err(Error::store("seeking the log"))?;
        Ok(Box::new(EmbeddedLog {
            dir,
            log,
            _lock: lock,
            committed,
            written: committed,
            buffer: Vec::with_capacity(BUFFER),
            in_flight: None,
        }))
    }

    fn committed(&self, capture: &str) -> Result<Option<Commit>> {
        Ok(self.record(capture)?.map(|r| r.commit))
    }

    fn read(&self, capture: &str) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        let Some(record) = self.record(capture)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        let path = self.capture_dir(capture).join("log.jsonl");
        let log = File::open(&path).map_err(Error::store(format!("opening {}", path.display())))?;
        Ok(Box::new(
            BufReader::with_capacity(1 << 16, log.take(record.offset))
                .lines()
                .map(|l| l.map_err(Error::store("reading the log"))),
        ))
    }

    fn requests(&self) -> Result<Vec<Request>> {
        let dir = self.dir.join("requests");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::store(format!("reading {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(Error::store("listing requests"))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path)
                .map_err(Error::store(format!("reading {}", path.display())))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| {
                Error::Damaged(format!("{} is not a request ({e})", path.display()))
            })?);
        }
        out.sort_by(|a: &Request, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn put_request(&self, request: &Request) -> Result<()> {
        let dir = self.dir.join("requests");
        std::fs::create_dir_all(&dir)
            .map_err(Error::store(format!("creating {}", dir.display())))?;
        let path = dir.join(format!("{}.json", request.id));
        let bytes =
            serde_json::to_vec_pretty(request).map_err(|e| Error::Damaged(e.to_string()))?;
        backfill_core::state::write_atomically(&path, &bytes)
            .map_err(Error::store(format!("writing {}", path.display())))
    }

    fn read_from(
        &self,
        capture: &str,
        from: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        let Some(record) = self.record(capture)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        let path = self.capture_dir(capture).join("log.jsonl");
        let mut log =
            File::open(&path).map_err(Error::store(format!("opening {}", path.display())))?;
        let (line, offset) = self
            .marks
            .lock()
            .ok()
            .and_then(|m| m.get(capture).copied())
            .filter(|&(line, offset)| line <= from && offset <= record.offset)
            .unwrap_or((0, 0));
        log.seek(SeekFrom::Start(offset))
            .map_err(Error::store("seeking in the log"))?;
        let mut reader = MarkedReader {
            lines: BufReader::with_capacity(1 << 16, log.take(record.offset - offset)),
            line,
            offset,
            capture: capture.to_string(),
            marks: Arc::clone(&self.marks),
        };
        while reader.line < from {
            if reader.next().transpose()?.is_none() {
                break;
            }
        }
        Ok(Box::new(reader))
    }
}

/// Committed lines from a byte offset, leaving the line and offset it stopped at as the
/// capture's mark when dropped.
struct MarkedReader {
    lines: BufReader<std::io::Take<File>>,
    line: u64,
    offset: u64,
    capture: String,
    marks: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

impl Iterator for MarkedReader {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut text = String::new();
        match self.lines.read_line(&mut text) {
            Ok(0) => None,
            Ok(n) => {
                self.line += 1;
                self.offset += n as u64;
                if text.ends_with('\n') {
                    text.pop();
                }
                Some(Ok(text))
            }
            Err(e) => Some(Err(Error::store("reading the log")(e))),
        }
    }
}

impl Drop for MarkedReader {
    fn drop(&mut self) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.insert(std::mem::take(&mut self.capture), (self.line, self.offset));
        }
    }
}

/// Bytes of lines buffered before they are written to the log.
const BUFFER: usize = 1 << 20;

/// Bytes of the next unit held in memory while a commit is in flight, at most; past it,
/// the commit is waited for.
const HOLD: usize = 8 << 20;

struct EmbeddedLog {
    dir: PathBuf,
    log: File,
    _lock: File,
    /// Committed bytes of the log.
    committed: u64,
    /// Bytes written to the file (committed or not), before the buffer.
    written: u64,
    buffer: Vec<u8>,
    /// The commit in flight: its thread (log fsync, then the record's replace) and the
    /// length it commits. Lines appended meanwhile stay in `buffer`, so nothing touches
    /// the file while it syncs.
    in_flight: Option<(std::thread::JoinHandle<std::io::Result<()>>, u64)>,
}

impl EmbeddedLog {
    /// Waits for the commit in flight; its length is committed once it returns.
    fn settle(&mut self) -> Result<()> {
        if let Some((thread, offset)) = self.in_flight.take() {
            thread
                .join()
                .map_err(|_| Error::Damaged("the commit thread panicked".into()))?
                .map_err(Error::store("committing a unit"))?;
            self.committed = offset;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<()> {
        self.log
            .write_all(&self.buffer)
            .map_err(Error::store("appending to the log"))?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl CaptureLog for EmbeddedLog {
    fn append(&mut self, line: &str) -> Result<()> {
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
        if self.in_flight.is_some() && self.buffer.len() >= HOLD {
            self.settle()?;
        }
        if self.in_flight.is_none() && self.buffer.len() >= BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// The log's fsync and the record's replace run on a thread while the next unit's
    /// lines are read: with them on the reading thread, the connector waited on a full
    /// pipe at every unit (BENCHMARKS.md).
    fn start_commit(&mut self, commit: &Commit, durable: super::OnDurable) -> Result<()> {
        self.settle()?;
        self.write_buffer()?;
        let record = Record {
            offset: self.written,
            commit: commit.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Damaged(e.to_string()))?;
        let log = self
            .log
            .try_clone()
            .map_err(Error::store("sharing the log with the commit thread"))?;
        let sync = self.written > self.committed;
        let path = self.dir.join("commit.json");
        let thread = std::thread::spawn(move || {
            if sync {
                log.sync_data()?;
            }
            backfill_core::state::write_atomically(&path, &bytes)?;
            durable();
            Ok(())
        });
        self.in_flight = Some((thread, self.written));
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.settle()
    }

    fn commit(&mut self, commit: &Commit) -> Result<()> {
        self.settle()?;
        self.write_buffer()?;
        if self.written > self.committed {
            self.log
                .sync_data()
                .map_err(Error::store("syncing the log"))?;
        }
        let record = Record {
            offset: self.written,
            commit: commit.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Damaged(e.to_string()))?;
        backfill_core::state::write_atomically(&self.dir.join("commit.json"), &bytes)
            .map_err(Error::store("replacing the commit record"))?;
        self.committed = self.written;
        Ok(())
    }

    fn discard(&mut self) -> Result<()> {
        self.settle()?;
        self.buffer.clear();
        if self.written > self.committed {
            self.log
                .set_len(self.committed)
                .map_err(Error::store("dropping an uncommitted unit"))?;
            self.log
                .seek(SeekFrom::Start(self.committed))
                .map_err(Error::store("seeking the log"))?;
            self.written = self.committed;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(name: &str) -> (EmbeddedStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("cdc-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (EmbeddedStore::open(&dir).unwrap(), dir)
    }

    fn lines(s: &EmbeddedStore) -> Vec<String> {
        s.read("c").unwrap().map(Result::unwrap).collect()
    }

    fn commit(n: u64) -> Commit {
        Commit {
            state: json!({"position": n}),
            units: n,
            ..Commit::default()
        }
    }

    #[test]
    fn units_are_atomic_read_committed_and_survive_a_crash() {
        let (s, dir) = store("atomic");
        let mut w = s.writer("c").unwrap();
        w.append("a").unwrap();
        assert!(lines(&s).is_empty(), "nothing before the first commit");
        w.commit(&commit(1)).unwrap();
        // A unit larger than the buffer is written through, and still unseen.
        let big = "x".repeat(1000);
        for _ in 0..2000 {
            w.append(&big).unwrap();
        }
        assert_eq!(lines(&s), ["a"], "uncommitted lines are not read");
        w.discard().unwrap();
        w.append("b").unwrap();
        w.commit(&commit(2)).unwrap();
        assert_eq!(lines(&s), ["a", "b"]);
        assert_eq!(
            s.committed("c").unwrap().unwrap().state,
            json!({"position": 2})
        );
        // A crash mid-unit: the next writer drops the tail.
        for _ in 0..2000 {
            w.append(&big).unwrap();
        }
        drop(w);
        let mut w = s.writer("c").unwrap();
        assert_eq!(
            std::fs::metadata(dir.join("captures/c/log.jsonl"))
                .unwrap()
                .len(),
            4,
            "the uncommitted tail is truncated"
        );
        w.append("c").unwrap();
        w.commit(&commit(3)).unwrap();
        assert_eq!(lines(&s), ["a", "b", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commit_in_flight_is_durable_before_it_says_so_and_the_next_unit_waits() {
        let (s, dir) = store("in-flight");
        let mut w = s.writer("c").unwrap();
        w.append("a").unwrap();
        let (tell, told) = std::sync::mpsc::channel();
        w.start_commit(&commit(1), Box::new(move || tell.send(()).unwrap()))
            .unwrap();
        // The next unit's lines are appended while the commit is in flight.
        w.append("b").unwrap();
        told.recv().unwrap();
        assert_eq!(
            lines(&s),
            ["a"],
            "durable and visible when it says so; b is not"
        );
        w.discard().unwrap();
        w.append("c").unwrap();
        w.start_commit(&commit(2), Box::new(|| ())).unwrap();
        w.finish().unwrap();
        assert_eq!(lines(&s), ["a", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_writer_per_capture() {
        let (s, dir) = store("one-writer");
        let _w = s.writer("c").unwrap();
        let second = s.writer("c").err().unwrap().to_string();
        assert!(second.contains("another runtime"), "{second}");
        assert!(s.writer("d").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
