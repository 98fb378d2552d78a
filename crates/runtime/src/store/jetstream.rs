//! The JetStream store: one stream per capture on a NATS cluster, replicated as the
//! pipeline asks (`nats://host:port[,host:port...]/<prefix>?replicas=3`), so captures and
//! the processes that read collections can run on different machines and a node can die.
//!
//! A capture's stream `<prefix>_<capture>` holds two subjects: `<prefix>.<capture>.log`,
//! the lines back to back in messages of up to 256 KiB (a unit's messages end with its
//! last line's newline), and `<prefix>.<capture>.commit`, one **commit record** per unit:
//! the range of log sequences the unit holds (`first`, `last`; none for an empty unit),
//! the connector state that follows it, and the runtime's figures.
//!
//! * **Atomic units.** A unit's lines are published as they come; a commit waits until
//!   every one is acknowledged by the stream (stored on a quorum of replicas), then
//!   publishes the commit record and waits for its acknowledgement. Until then no commit
//!   record names those sequences, and readers read only the ranges commit records name:
//!   a discarded unit, or one a crash cut short, stays in the stream unread.
//! * **One writer per capture.** Each commit record is published with
//!   `Nats-Expected-Last-Subject-Sequence` set to the previous record's sequence, so a
//!   second writer's commit is refused by the server instead of interleaving.
//! * **Failures are transient.** A node that dies or a connection that drops fails the
//!   unit in hand ([`Error::Unavailable`]); the runtime restarts the connector from the
//!   last commit it can read, so a unit whose commit record was stored although its
//!   acknowledgement was lost is found committed, and one whose record was not is redone.
//!
//! The client is async (`async-nats`, without the features that need servers newer than
//! Debian 12's 2.9); the store trait is not, so each store owns a small runtime.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use super::{CaptureLog, Commit, Compaction, Compactor, Store};
use crate::error::{Error, Result};
use crate::request::Request;

/// Where a JetStream store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamLocation {
    /// Server URLs (`nats://host:port`).
    pub servers: Vec<String>,
    /// Prefix of stream names and subjects.
    pub prefix: String,
    /// Replicas of each stream.
    pub replicas: usize,
}

impl JetStreamLocation {
    /// Parses `nats://h1:4222[,h2:4222...][/prefix][?replicas=N]`.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let rest = url.strip_prefix("nats://").ok_or("a nats:// URL")?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = if prefix.is_empty() { "cdc" } else { prefix };
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "prefix {prefix:?}: letters, digits, '-' and '_' only"
            ));
        }
        let mut replicas = 1;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("replicas", n)) => {
                    replicas = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or(format!("replicas={n}: a number from 1 to 5"))?;
                }
                _ => return Err(format!("{pair:?}: the only option is replicas=N")),
            }
        }
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("nats://{h}"))
            .collect();
        if servers.is_empty() {
            return Err("no server: nats://host:port".into());
        }
        Ok(Self {
            servers,
            prefix: prefix.to_string(),
            replicas,
        })
    }
}

/// The JetStream store (see the module docs).
#[derive(Clone, Debug)]
pub struct JetStreamStore {
    location: JetStreamLocation,
    runtime: Arc<Runtime>,
    context: Context,
}

/// A commit record as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The unit's log sequences, when it has lines.
    first: Option<u64>,
    last: Option<u64>,
    /// A compaction's **base**: its range holds the whole compacted log, lines 0 to
    /// `commit.documents`, instead of one unit's lines.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    base: bool,
    /// Bytes of the committed log's lines.
    #[serde(default)]
    bytes: u64,
    /// Where compaction stands.
    #[serde(default)]
    compaction: Compaction,
    #[serde(flatten)]
    commit: Commit,
}

fn unavailable(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Unavailable(format!("{what}: {e}"))
}

impl JetStreamStore {
    /// Connects to the cluster.
    pub fn connect(location: JetStreamLocation) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(Error::store("starting the NATS client's runtime"))?;
        let servers: Vec<async_nats::ServerAddr> = location
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Spec(format!("a NATS server URL: {e}")))?;
        let client = runtime
            .block_on(
                async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .connection_timeout(Duration::from_secs(5))
                    .request_timeout(Some(Duration::from_secs(10)))
                    .connect(servers),
            )
            .map_err(|e| unavailable("connecting to NATS")(&e))?;
        // The JetStream context starts its tasks on the runtime it is made in.
        let context = {
            let _inside = runtime.enter();
            jetstream::new(client)
        };
        Ok(Self {
            location,
            runtime: Arc::new(runtime),
            context,
        })
    }

    fn names(&self, capture: &str) -> (String, String, String) {
        let p = &self.location.prefix;
        (
            format!("{p}_{capture}"),
            format!("{p}.{capture}.log"),
            format!("{p}.{capture}.commit"),
        )
    }

    async fn stream(&self, capture: &str) -> Result<Stream> {
        let (name, _, _) = self.names(capture);
        self.context
            .get_or_create_stream(Config {
                name,
                subjects: vec![format!("{}.{capture}.>", self.location.prefix)],
                storage: StorageType::File,
                num_replicas: self.location.replicas,
                ..Config::default()
            })
            .await
            .map_err(|e| unavailable("opening the capture's stream")(&e))
    }

    /// The stream of backfill requests: the last message per request subject.
    async fn requests_stream(&self) -> Result<Stream> {
        let p = &self.location.prefix;
        self.context
            .get_or_create_stream(Config {
                name: format!("{p}__requests"),
                subjects: vec![format!("{p}.requests.>")],
                storage: StorageType::File,
                num_replicas: self.location.replicas,
                max_messages_per_subject: 1,
                ..Config::default()
            })
            .await
            .map_err(|e| unavailable("opening the requests stream")(&e))
    }

    /// The last commit record and its sequence.
    async fn last_record(&self, stream: &Stream, capture: &str) -> Result<Option<(u64, Record)>> {
        let (_, _, commits) = self.names(capture);
        match stream.get_last_raw_message_by_subject(&commits).await {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(|r| Some((m.sequence, r)))
                .map_err(|e| {
                    Error::Damaged(format!("a commit record of {capture} is not one ({e})"))
                }),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(unavailable("reading the last commit")(&e)),
        }
    }
}

impl Store for JetStreamStore {
    fn writer(&self, capture: &str) -> Result<Box<dyn CaptureLog>> {
        let (stream, last) = self.runtime.block_on(async {
            let stream = self.stream(capture).await?;
            let last = self.last_record(&stream, capture).await?;
            Ok::<_, Error>((stream, last))
        })?;
        drop(stream);
        let (_, log, commits) = self.names(capture);
        let (bytes, compaction) = last
            .as_ref()
            .map(|(_, r)| (r.bytes, r.compaction))
            .unwrap_or_default();
        Ok(Box::new(JetStreamLog {
            store: self.clone(),
            capture: capture.to_string(),
            log,
            commits,
            bytes,
            unit_bytes: 0,
            compaction,
            last_record: last.map(|(seq, _)| seq),
            in_flight: Vec::new(),
            buffer: Vec::with_capacity(MESSAGE_BYTES),
            first: None,
            last: None,
        }))
    }

    fn committed(&self, capture: &str) -> Result<Option<Commit>> {
        self.runtime.block_on(async {
            let stream = self.stream(capture).await?;
            Ok(self
                .last_record(&stream, capture)
                .await?
                .map(|(_, r)| r.commit))
        })
    }

    fn compaction(&self, capture: &str) -> Result<Compaction> {
        self.runtime.block_on(async {
            let stream = self.stream(capture).await?;
            Ok(self
                .last_record(&stream, capture)
                .await?
                .map(|(_, r)| r.compaction)
                .unwrap_or_default())
        })
    }

    fn requests(&self) -> Result<Vec<Request>> {
        self.runtime.block_on(async {
            let stream = self.requests_stream().await?;
            let prefix = format!("{}.requests.", self.location.prefix);
            let info = stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(|e| unavailable("listing requests")(&e))?;
            let subjects: Vec<String> = {
                use futures_util::TryStreamExt;
                info.try_collect::<std::collections::HashMap<String, usize>>()
                    .await
                    .map_err(|e| unavailable("listing requests")(&e))?
                    .into_keys()
                    .collect()
            };
            let mut out = Vec::new();
            for subject in subjects {
                let m = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| unavailable("reading a request")(&e))?;
                out.push(
                    serde_json::from_slice(&m.payload).map_err(|e| {
                        Error::Damaged(format!("request {subject} is not one ({e})"))
                    })?,
                );
            }
            out.sort_by(|a: &Request, b| a.id.cmp(&b.id));
            Ok(out)
        })
    }

    fn put_request(&self, request: &Request) -> Result<()> {
        let payload = serde_json::to_vec(request).map_err(|e| Error::Damaged(e.to_string()))?;
        let subject = format!("{}.requests.{}", self.location.prefix, request.id);
        self.runtime.block_on(async {
            self.requests_stream().await?;
            self.context
                .publish(subject, payload.into())
                .await
                .map_err(|e| unavailable("writing a request")(&e))?
                .await
                .map_err(|e| unavailable("writing a request")(&e))?;
            Ok(())
        })
    }

    fn read(&self, capture: &str) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        // Lines go through a small bounded channel: a reader holds a few, never a log.
        self.read_from(capture, 0)
    }

    fn read_from(
        &self,
        capture: &str,
        from: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<String>>(1024);
        let store = self.clone();
        let capture = capture.to_string();
        std::thread::spawn(move || {
            let result = store
                .runtime
                .block_on(store.send_committed(&capture, from, &tx));
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        Ok(Box::new(rx.into_iter()))
    }
}

impl JetStreamStore {
    /// Sends the committed lines of `capture` in order: the log ranges the commit records
    /// name, up to the last record at the start of the read.
    async fn send_committed(
        &self,
        capture: &str,
        from: u64,
        tx: &std::sync::mpsc::SyncSender<Result<String>>,
    ) -> Result<()> {
        let stream = self.stream(capture).await?;
        let Some((last_record, _)) = self.last_record(&stream, capture).await? else {
            return Ok(());
        };
        let (_, log, commits) = self.names(capture);
        let mut records = read_subject(
            &stream,
            commits,
            DeliverPolicy::All,
            "reading commit records",
        )
        .await?;
        let mut lines = None;
        // Lines committed before the current record; units wholly before `from` are not
        // read at all (each record says how many lines the log held after it).
        let mut before = 0u64;
        // The next line to send (lines before `from` are not sent).
        let mut sent = 0u64;
        while let Some(m) = records.next().await {
            let m = m.map_err(|e| unavailable("reading commit records")(&e))?;
            let seq = m
                .info()
                .map_err(|e| unavailable("a commit record's sequence")(&e))?
                .stream_sequence;
            if seq > last_record {
                break;
            }
            let record: Record = serde_json::from_slice(&m.payload).map_err(|e| {
                Error::Damaged(format!("a commit record of {capture} is not one ({e})"))
            })?;
            let unit_start = std::mem::replace(&mut before, record.commit.documents);
            // A base holds every line from 0: a reader that met it after the units it
            // replaces has sent those lines already (the same lines, less compacted).
            let unit_start = if record.base { 0 } else { unit_start };
            let (Some(first), Some(last)) = (record.first, record.last) else {
                if seq == last_record {
                    break;
                }
                continue;
            };
            if record.commit.documents <= from.max(sent) {
                if seq == last_record {
                    break;
                }
                continue;
            }
            let skip = from.max(sent).saturating_sub(unit_start);
            if lines.is_none() {
                let from_first = DeliverPolicy::ByStartSequence {
                    start_sequence: first,
                };
                lines =
                    Some(read_subject(&stream, log.clone(), from_first, "reading the log").await?);
            }
            let Some(reader) = lines.as_mut() else { break };
            let mut delivery = Delivery {
                capture,
                tx,
                skip,
                cursor: unit_start,
                sent,
            };
            let open = send_unit(reader, (first, last), &mut delivery).await?;
            sent = delivery.sent;
            if !open {
                return Ok(());
            }
            if seq == last_record {
                break;
            }
        }
        Ok(())
    }
}

/// An ordered consumer's messages of `subject` from `deliver`.
async fn read_subject(
    stream: &Stream,
    subject: String,
    deliver: DeliverPolicy,
    what: &str,
) -> Result<async_nats::jetstream::consumer::pull::Ordered> {
    let config = OrderedConfig {
        filter_subject: subject,
        deliver_policy: deliver,
        ..OrderedConfig::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| unavailable(what)(&e))?
        .messages()
        .await
        .map_err(|e| unavailable(what)(&e))
}

/// Where a read of committed lines is: the lines still to skip (before the reader's
/// `from`), the line the next one is, the lines sent through, and the reader.
struct Delivery<'a> {
    capture: &'a str,
    tx: &'a std::sync::mpsc::SyncSender<Result<String>>,
    skip: u64,
    cursor: u64,
    sent: u64,
}

impl Delivery<'_> {
    /// One line of the log: a run of lines a compaction dropped (a gap line) reads as
    /// that many empty lines. `false` when the reader has hung up.
    fn line(&mut self, line: String) -> Result<bool> {
        let gap = super::gap_length(&line)?;
        let lines = gap.unwrap_or(1);
        let skipped = lines.min(self.skip);
        self.skip -= skipped;
        self.cursor += lines;
        self.sent = self.sent.max(self.cursor);
        if gap.is_none() && skipped == 0 {
            return Ok(self.tx.send(Ok(line)).is_ok());
        }
        for _ in skipped..gap.unwrap_or(0) {
            if self.tx.send(Ok(String::new())).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Sends the lines of the unit in log messages `first..=last` from `reader`. A unit's
/// messages carry its lines back to back, each ending in a newline; a message may end
/// inside a line (see `JetStreamLog::append`). `false` when the reader has hung up.
async fn send_unit<S, E>(
    reader: &mut S,
    (first, last): (u64, u64),
    d: &mut Delivery<'_>,
) -> Result<bool>
where
    S: futures_util::Stream<Item = std::result::Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let capture = d.capture;
    let mut partial: Vec<u8> = Vec::new();
    let mut next_seq = first;
    loop {
        let Some(m) = reader.next().await else {
            return Err(Error::Damaged(format!(
                "the log of {capture} ends inside a committed unit"
            )));
        };
        let m = m.map_err(|e| unavailable("reading the log")(&e))?;
        let at = m
            .info()
            .map_err(|e| unavailable("a line's sequence")(&e))?
            .stream_sequence;
        if at < first {
            continue; // a discarded unit's line, or a base already read
        }
        if at != next_seq {
            // A compaction purged the messages this read was in.
            return Err(Error::Unavailable(format!(
                "the log of {capture} was compacted while it was read; reading it again"
            )));
        }
        next_seq += 1;
        let mut rest: &[u8] = &m.payload;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            partial.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = String::from_utf8(std::mem::take(&mut partial))
                .map_err(|e| Error::Damaged(format!("a line of {capture} is not UTF-8 ({e})")))?;
            if !d.line(line)? {
                return Ok(false);
            }
        }
        partial.extend_from_slice(rest);
        if at >= last {
            if !partial.is_empty() {
                return Err(Error::Damaged(format!(
                    "a committed unit of {capture} ends inside a line"
                )));
            }
            return Ok(true);
        }
    }
}

/// Publishes awaited at once, at most; past it, they are all awaited.
const IN_FLIGHT: usize = 64;

/// Bytes of lines per message (NATS's default maximum payload is 1 MiB). Lines are packed
/// back to back, and a line longer than this spans messages: one message per line cost
/// five times the connector's own time on a million rows.
const MESSAGE_BYTES: usize = 256 << 10;

struct JetStreamLog {
    store: JetStreamStore,
    capture: String,
    log: String,
    commits: String,
    /// Bytes of the committed log's lines, and of the unit in hand's.
    bytes: u64,
    unit_bytes: u64,
    /// Where compaction stands (carried in every record).
    compaction: Compaction,
    /// The sequence of the last commit record, for the single-writer check.
    last_record: Option<u64>,
    in_flight: Vec<PublishAckFuture>,
    /// Lines not yet published, each ending in a newline.
    buffer: Vec<u8>,
    first: Option<u64>,
    last: Option<u64>,
}

impl JetStreamLog {
    /// Publishes the buffered lines in messages of at most [`MESSAGE_BYTES`].
    fn publish_buffer(&mut self) -> Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        for part in buffer.chunks(MESSAGE_BYTES) {
            let payload = bytes::Bytes::copy_from_slice(part);
            let ack = self
                .store
                .runtime
                .block_on(self.store.context.publish(self.log.clone(), payload))
                .map_err(|e| unavailable("storing lines")(&e))?;
            self.in_flight.push(ack);
            if self.in_flight.len() >= IN_FLIGHT {
                self.settle()?;
            }
        }
        self.buffer = buffer;
        self.buffer.clear();
        Ok(())
    }

    /// Awaits every publish in flight, noting the unit's sequences.
    fn settle(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.in_flight);
        let seqs: Vec<u64> = self.store.runtime.block_on(async {
            let mut seqs = Vec::with_capacity(pending.len());
            for ack in pending {
                seqs.push(
                    ack.await
                        .map_err(|e| unavailable("storing a line")(&e))?
                        .sequence,
                );
            }
            Ok::<_, Error>(seqs)
        })?;
        for seq in seqs {
            self.first = Some(self.first.map_or(seq, |f| f.min(seq)));
            self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
        }
        Ok(())
    }
}

impl CaptureLog for JetStreamLog {
    fn append(&mut self, line: &str) -> Result<()> {
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
        self.unit_bytes += line.len() as u64 + 1;
        if self.buffer.len() >= MESSAGE_BYTES {
            self.publish_buffer()?;
        }
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<()> {
        self.publish_buffer()?;
        self.settle()?;
        self.bytes += std::mem::take(&mut self.unit_bytes);
        self.publish_record(&Record {
            first: self.first,
            last: self.last,
            base: false,
            bytes: self.bytes,
            compaction: self.compaction,
            commit: commit.clone(),
        })
    }

    fn discard(&mut self) -> Result<()> {
        // Lines stored or not, no commit record will name them.
        self.buffer.clear();
        let _ = self.settle();
        self.in_flight.clear();
        self.first = None;
        self.last = None;
        self.unit_bytes = 0;
        Ok(())
    }

    fn compactable_bytes(&self) -> Option<u64> {
        Some(self.bytes)
    }

    /// Publishes the compacted log as a **base**: its lines (runs of dropped lines as
    /// `#N`) in new messages, then a commit record naming them as lines 0 to the last
    /// commit's, with the last commit's state; then purges the messages and records the
    /// base replaces. A reader meets the base after the units it replaces (and skips what
    /// it sent of them) or, once they are purged, first; a reader inside a purged unit
    /// finds its sequences broken and reads again ([`Error::Unavailable`]). A crash before
    /// the base's record leaves the old log in force (the new messages are named by no
    /// record); after it, the purge is done by the next compaction.
    fn compact(&mut self, plan: &mut dyn Compactor) -> Result<Option<Compaction>> {
        if !self.buffer.is_empty() || self.first.is_some() || !self.in_flight.is_empty() {
            // Lines of the unit in hand would sit inside the base's range: later.
            return Ok(Some(self.compaction));
        }
        let (stream, last) = self.store.runtime.block_on(async {
            let stream = self.store.stream(&self.capture).await?;
            let last = self.store.last_record(&stream, &self.capture).await?;
            Ok::<_, Error>((stream, last))
        })?;
        let Some((_, last)) = last else {
            return Ok(Some(self.compaction));
        };
        let mut bytes = 0u64;
        let mut gap = 0u64;
        for (at, line) in (0u64..).zip(self.store.read_from(&self.capture, 0)?) {
            let line = line?;
            if !line.is_empty() && plan.keep(at, &line)? {
                if gap > 0 {
                    let run = super::gap_line(std::mem::take(&mut gap));
                    bytes += run.len() as u64;
                    self.buffer.extend_from_slice(run.as_bytes());
                }
                bytes += line.len() as u64 + 1;
                self.buffer.extend_from_slice(line.as_bytes());
                self.buffer.push(b'\n');
                if self.buffer.len() >= MESSAGE_BYTES {
                    self.publish_buffer()?;
                }
            } else {
                gap += 1;
            }
        }
        if gap > 0 {
            let run = super::gap_line(gap);
            bytes += run.len() as u64;
            self.buffer.extend_from_slice(run.as_bytes());
        }
        self.publish_buffer()?;
        self.settle()?;
        let compaction = Compaction {
            through: plan.through(),
            horizon: self.compaction.horizon.max(plan.horizon()),
            bytes,
            passes: self.compaction.passes + 1,
        };
        let base_first = self.first;
        self.publish_record(&Record {
            first: self.first,
            last: self.last,
            base: true,
            bytes,
            compaction,
            commit: last.commit,
        })?;
        self.bytes = bytes;
        self.compaction = compaction;
        let (log, commits, record) = (self.log.clone(), self.commits.clone(), self.last_record);
        let purged = self.store.runtime.block_on(async {
            if let Some(first) = base_first {
                stream.purge().filter(log).sequence(first).await?;
            }
            if let Some(record) = record {
                stream.purge().filter(commits).sequence(record).await?;
            }
            Ok::<_, async_nats::jetstream::stream::PurgeError>(())
        });
        if let Err(e) = purged {
            tracing::warn!(capture = %self.capture, "the compacted log's old messages stay until the next compaction: {e}");
        }
        Ok(Some(compaction))
    }
}

impl JetStreamLog {
    /// Publishes a commit record after the last one (refused if another writer's came
    /// between), and starts the next unit.
    fn publish_record(&mut self, record: &Record) -> Result<()> {
        let payload = serde_json::to_vec(record).map_err(|e| Error::Damaged(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.last_record.unwrap_or(0).to_string().as_str(),
        );
        let ack = self.store.runtime.block_on(async {
            self.store
                .context
                .publish_with_headers(self.commits.clone(), headers, payload.into())
                .await
                .map_err(|e| unavailable("storing a commit record")(&e))?
                .await
                .map_err(|e| unavailable("storing a commit record")(&e))
        })?;
        self.last_record = Some(ack.sequence);
        self.first = None;
        self.last = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l = JetStreamLocation::parse("nats://a:4222,b:4223/shop?replicas=3").unwrap();
        assert_eq!(l.servers, ["nats://a:4222", "nats://b:4223"]);
        assert_eq!((l.prefix.as_str(), l.replicas), ("shop", 3));
        let d = JetStreamLocation::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((d.prefix.as_str(), d.replicas), ("cdc", 1));
        assert!(JetStreamLocation::parse("nats://a:1?replicas=9").is_err());
        assert!(JetStreamLocation::parse("nats://a:1/bad.prefix").is_err());
        assert!(JetStreamLocation::parse("nats:///x").is_err());
    }
}
