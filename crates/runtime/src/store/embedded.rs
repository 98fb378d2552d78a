//! The embedded store: a local directory (the layout and the crash argument are in the
//! parent module's docs).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{CaptureLog, Commit, Compaction, Compactor, Store, gap_length, gap_line};

mod slots;
use crate::error::{Error, Result};
use crate::request::Request;

/// The embedded store: a local directory (see the module docs).
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    /// Per capture, the last line and byte offset a reader of it reached: a follower that
    /// reads on from where it stopped seeks there instead of reading the log again.
    marks: Marks,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Committed bytes of the log.
    offset: u64,
    /// The log file's generation: each compaction writes the next ([`log_name`]).
    #[serde(default)]
    generation: u64,
    /// Where compaction stands.
    #[serde(default)]
    compaction: Compaction,
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
        Ok(self.numbered_record(capture)?.map(|(_, r)| r))
    }

    /// The commit record and its commit number ([`slots`]).
    fn numbered_record(&self, capture: &str) -> Result<Option<(u64, Record)>> {
        let dir = self.capture_dir(capture);
        let Some((n, bytes)) = slots::read(&dir).map_err(Error::store(format!(
            "reading {}'s commit record",
            dir.display()
        )))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(|r| Some((n, r)))
            .map_err(|e| {
                Error::Damaged(format!(
                    "{}'s commit record is not one ({e}); restore the store from a backup",
                    dir.display()
                ))
            })
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
        let numbered = self.numbered_record(capture)?;
        let commits = numbered.as_ref().map_or(0, |(n, _)| *n);
        let record = numbered.map(|(_, r)| r);
        if commits == 0
            && let Some(record) = &record
        {
            // A record from before the slots moves into one.
            let bytes = serde_json::to_vec(record).map_err(|e| Error::Damaged(e.to_string()))?;
            slots::write(&dir, 1, &bytes)
                .and_then(|()| slots::retire_legacy(&dir))
                .map_err(Error::store("moving the commit record into its slot"))?;
        }
        let commits = commits.max(u64::from(record.is_some()));
        let committed = record.as_ref().map_or(0, |r| r.offset);
        let generation = record.as_ref().map_or(0, |r| r.generation);
        let compaction = record.as_ref().map(|r| r.compaction).unwrap_or_default();
        remove_other_generations(&dir, generation)?;
        let log_path = dir.join(log_name(generation));
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
            commits,
            generation,
            compaction,
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

    fn compaction(&self, capture: &str) -> Result<Compaction> {
        Ok(self
            .record(capture)?
            .map(|r| r.compaction)
            .unwrap_or_default())
    }

    fn read(&self, capture: &str) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        match self.open_log(capture)? {
            Some((record, log)) => Ok(Box::new(LogReader::new(log, record.offset, 0, 0))),
            None => Ok(Box::new(std::iter::empty())),
        }
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
        let Some((record, mut log)) = self.open_log(capture)? else {
            return Ok(Box::new(std::iter::empty()));
        };
        let (line, offset) = self
            .marks
            .lock()
            .ok()
            .and_then(|m| m.get(capture).copied())
            .filter(|m| {
                m.generation == record.generation && m.line <= from && m.offset <= record.offset
            })
            .map_or((0, 0), |m| (m.line, m.offset));
        log.seek(SeekFrom::Start(offset))
            .map_err(Error::store("seeking in the log"))?;
        let mut reader = LogReader::new(log, record.offset, line, offset);
        reader.mark = Some((
            capture.to_string(),
            record.generation,
            Arc::clone(&self.marks),
        ));
        reader.skip_to(from)?;
        Ok(Box::new(reader))
    }
}

impl EmbeddedStore {
    /// The commit record and the log file it names, opened; `None` if the capture never
    /// committed. A compaction may replace the file between the two reads: then the record
    /// is read again.
    fn open_log(&self, capture: &str) -> Result<Option<(Record, File)>> {
        let mut tries = 0;
        loop {
            let Some(record) = self.record(capture)? else {
                return Ok(None);
            };
            let path = self.capture_dir(capture).join(log_name(record.generation));
            match File::open(&path) {
                Ok(log) => return Ok(Some((record, log))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
                Err(e) => return Err(Error::store(format!("opening {}", path.display()))(e)),
            }
        }
    }
}

/// The log file of a generation (0: never compacted).
fn log_name(generation: u64) -> String {
    if generation == 0 {
        "log.jsonl".into()
    } else {
        format!("log.{generation}.jsonl")
    }
}

/// Where a reader of a capture's log last stopped.
#[derive(Clone, Copy, Debug)]
struct Mark {
    generation: u64,
    line: u64,
    offset: u64,
}

type Marks = Arc<Mutex<HashMap<String, Mark>>>;

/// The committed lines of a log from a byte offset, a run of dropped lines read as that
/// many empty lines; with a mark, it leaves the line and offset it stopped at as the
/// capture's mark when dropped.
struct LogReader {
    lines: BufReader<std::io::Take<File>>,
    /// The number of the next line at `offset` (before the gap still to read).
    line: u64,
    offset: u64,
    /// Dropped lines still to yield.
    gap: u64,
    mark: Option<(String, u64, Marks)>,
}

impl LogReader {
    fn new(log: File, committed: u64, line: u64, offset: u64) -> Self {
        Self {
            lines: BufReader::with_capacity(1 << 16, log.take(committed - offset)),
            line,
            offset,
            gap: 0,
            mark: None,
        }
    }

    /// Reads past lines before `from`.
    fn skip_to(&mut self, from: u64) -> Result<()> {
        while self.line < from {
            if self.gap > 0 {
                let n = self.gap.min(from - self.line);
                self.gap -= n;
                self.line += n;
            } else if self.next().transpose()?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

impl Iterator for LogReader {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.gap > 0 {
            self.gap -= 1;
            self.line += 1;
            return Some(Ok(String::new()));
        }
        let mut text = String::new();
        match self.lines.read_line(&mut text) {
            Ok(0) => None,
            Ok(n) => {
                self.offset += n as u64;
                if text.ends_with('\n') {
                    text.pop();
                }
                match gap_length(&text) {
                    Ok(Some(gap)) => {
                        self.gap = gap;
                        return self.next();
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                self.line += 1;
                Some(Ok(text))
            }
            Err(e) => Some(Err(Error::store("reading the log")(e))),
        }
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        if let Some((capture, generation, marks)) = self.mark.take()
            && let Ok(mut marks) = marks.lock()
        {
            marks.insert(
                capture,
                Mark {
                    generation,
                    line: self.line + self.gap,
                    offset: self.offset,
                },
            );
        }
    }
}

/// Removes log files a compaction left without a record naming them (a crash before the
/// record's replace, or after it and before the old file's removal).
fn remove_other_generations(dir: &std::path::Path, generation: u64) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(Error::store(format!("listing {}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_log = name == "log.jsonl"
            || name
                .strip_prefix("log.")
                .and_then(|n| n.strip_suffix(".jsonl"))
                .is_some_and(|n| n.parse::<u64>().is_ok());
        if is_log && name != log_name(generation) {
            std::fs::remove_file(entry.path())
                .map_err(Error::store(format!("removing {}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Bytes of lines buffered before they are written to the log.
const BUFFER: usize = 1 << 20;

/// Bytes of the next unit held in memory while a commit is in flight, at most; past it,
/// the commit is waited for.
const HOLD: usize = 8 << 20;

struct EmbeddedLog {
    dir: PathBuf,
    /// The commit number of the last record written ([`slots`]).
    commits: u64,
    /// The log file's generation and where compaction stands (kept in every record).
    generation: u64,
    compaction: Compaction,
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
    /// The commit record of the log written so far.
    fn record(&self, commit: &Commit) -> Record {
        Record {
            offset: self.written,
            generation: self.generation,
            compaction: self.compaction,
            commit: commit.clone(),
        }
    }

    /// Writes the committed log at `old` to `new` as `plan` compacts it, then the part of
    /// the current unit written so far as it is; syncs `new` and its directory. Returns
    /// the compacted committed length and the unit's bytes after it.
    fn write_compacted(
        &self,
        plan: &mut dyn Compactor,
        old: &std::path::Path,
        new: &std::path::Path,
    ) -> Result<(u64, u64)> {
        let written = |e: std::io::Error| Error::store(format!("writing {}", new.display()))(e);
        let open = |path: &std::path::Path| {
            File::open(path).map_err(Error::store(format!("opening {}", path.display())))
        };
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(new).map_err(Error::store(format!("creating {}", new.display())))?,
        );
        let mut gap = 0u64;
        for (at, line) in (0u64..).zip(LogReader::new(open(old)?, self.committed, 0, 0)) {
            let line = line?;
            if !line.is_empty() && plan.keep(at, &line)? {
                if gap > 0 {
                    out.write_all(gap_line(gap).as_bytes()).map_err(written)?;
                    gap = 0;
                }
                out.write_all(line.as_bytes()).map_err(written)?;
                out.write_all(b"\n").map_err(written)?;
            } else {
                gap += 1;
            }
        }
        if gap > 0 {
            out.write_all(gap_line(gap).as_bytes()).map_err(written)?;
        }
        out.flush().map_err(written)?;
        let committed = out
            .get_ref()
            .metadata()
            .map_err(Error::store("reading the new log's length"))?
            .len();
        let mut tail = open(old)?;
        tail.seek(SeekFrom::Start(self.committed))
            .map_err(Error::store("seeking the log"))?;
        let tail = std::io::copy(&mut tail.take(self.written - self.committed), &mut out)
            .map_err(written)?;
        let file = out.into_inner().map_err(|e| written(e.into_error()))?;
        file.sync_all().map_err(written)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::store("syncing the capture's directory"))?;
        Ok((committed, tail))
    }

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
        let record = self.record(commit);
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Damaged(e.to_string()))?;
        let log = self
            .log
            .try_clone()
            .map_err(Error::store("sharing the log with the commit thread"))?;
        let sync = self.written > self.committed;
        let dir = self.dir.clone();
        self.commits += 1;
        let n = self.commits;
        let thread = std::thread::spawn(move || {
            if sync {
                log.sync_data()?;
            }
            slots::write(&dir, n, &bytes)?;
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
        let record = self.record(commit);
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Damaged(e.to_string()))?;
        self.commits += 1;
        slots::write(&self.dir, self.commits, &bytes)
            .map_err(Error::store("writing the commit record"))?;
        self.committed = self.written;
        Ok(())
    }

    fn compactable_bytes(&self) -> Option<u64> {
        Some(self.committed)
    }

    fn compact(&mut self, plan: &mut dyn Compactor) -> Result<Option<Compaction>> {
        self.settle()?;
        let Some(last) = slots::read(&self.dir)
            .ok()
            .flatten()
            .and_then(|(_, b)| serde_json::from_slice::<Record>(&b).ok())
        else {
            return Ok(None);
        };
        let old_path = self.dir.join(log_name(self.generation));
        let generation = self.generation + 1;
        let new_path = self.dir.join(log_name(generation));
        let (committed, tail) = self.write_compacted(plan, &old_path, &new_path)?;
        let compaction = Compaction {
            through: plan.through(),
            horizon: self.compaction.horizon.max(plan.horizon()),
            bytes: committed,
            passes: self.compaction.passes + 1,
        };
        let record = Record {
            offset: committed,
            generation,
            compaction,
            commit: last.commit,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Damaged(e.to_string()))?;
        self.commits += 1;
        slots::write(&self.dir, self.commits, &bytes)
            .map_err(Error::store("writing the commit record"))?;
        // The new log is in force; readers that opened the old one read on in it.
        let _ = std::fs::remove_file(&old_path);
        self.log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&new_path)
            .map_err(Error::store(format!("opening {}", new_path.display())))?;
        self.log
            .seek(SeekFrom::End(0))
            .map_err(Error::store("seeking the log"))?;
        self.generation = generation;
        self.compaction = compaction;
        self.committed = committed;
        self.written = committed + tail;
        Ok(Some(compaction))
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

    fn doc(id: u64, v: &str) -> String {
        json!({"binding": 0, "doc": {"id": id, "v": v, "_meta": {"op": "u", "source": {"ts_ms": 1}}}})
            .to_string()
    }

    /// A pass that drops the given lines and plans up to `through`.
    struct DropLines(Vec<u64>, u64);

    impl Compactor for DropLines {
        fn keep(&mut self, at: u64, _line: &str) -> Result<bool> {
            Ok(!self.0.contains(&at))
        }
        fn through(&self) -> u64 {
            self.1
        }
        fn horizon(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_compaction_keeps_line_numbers_the_unit_in_hand_and_readers_that_follow() {
        let (s, dir) = store("compact");
        let mut w = s.writer("c").unwrap();
        for v in ["a", "b", "c"] {
            w.append(&doc(1, v)).unwrap();
        }
        w.append(&doc(2, "x")).unwrap();
        w.commit(&commit(1)).unwrap();
        // A follower has read two lines; a unit is half written.
        let followed: Vec<_> = s.read_from("c", 0).unwrap().take(2).collect();
        assert_eq!(followed.len(), 2);
        w.append(&doc(1, "d")).unwrap();
        let done = w.compact(&mut DropLines(vec![0, 1], 4)).unwrap().unwrap();
        assert_eq!((done.through, done.passes), (4, 1));
        let kept = ["", "", &doc(1, "c"), &doc(2, "x")];
        assert_eq!(lines(&s), kept, "dropped lines read as empty lines");
        assert_eq!(
            s.read_from("c", 1)
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            kept[1..],
            "a follower reads on from its line in the new log"
        );
        assert_eq!(
            s.read_from("c", 3)
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            kept[3..]
        );
        // The unit in hand commits after the compacted lines; a second pass drops line 2.
        w.commit(&commit(2)).unwrap();
        assert_eq!(lines(&s)[4], doc(1, "d"));
        w.compact(&mut DropLines(vec![2], 5)).unwrap().unwrap();
        assert_eq!(lines(&s), ["", "", "", &doc(2, "x"), &doc(1, "d")]);
        assert_eq!(
            s.committed("c").unwrap().unwrap().units,
            2,
            "the state is kept"
        );
        // A crash after writing a next generation and before the record names it: the next
        // writer removes it and appends to the named one.
        drop(w);
        std::fs::write(dir.join("captures/c/log.9.jsonl"), "junk").unwrap();
        let mut w = s.writer("c").unwrap();
        assert!(!dir.join("captures/c/log.9.jsonl").exists());
        w.append(&doc(3, "y")).unwrap();
        w.commit(&commit(3)).unwrap();
        assert_eq!(lines(&s).len(), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
