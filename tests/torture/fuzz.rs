//! The decoders take arbitrary bytes without panicking: real messages captured from the
//! throwaway servers (every type the value tables cover, inserts, updates with TOAST,
//! deletes, truncates), mutated at random, and fed through the code the streams run:
//!
//! * PostgreSQL: backend message framing (`split_message`), the replication message
//!   (`replication_message`), `pgoutput::decode`, and every text cell converted as every
//!   kind of value;
//! * MariaDB: mysql_common's event reader, the stream's own rows decoder (`rows::plan`,
//!   `rows::decode`; mysql_common's row iterator never ends on some malformed events: this
//!   test found it, and it is no longer used), the GTID event body, and every row value
//!   rendered as every column type. The rows decoder runs inside the guard, because it
//!   calls mysql_common's value parser.
//!
//! mysql_common panics on some malformed events; the stream turns such a panic into one
//! clear error (`MyStream::next_event`), so here those are caught and counted, while a
//! panic in this project's own decoding fails the test. `FUZZ_SECONDS` sets the time per
//! decoder (CI: a few seconds; `cargo xtask torture` runs longer).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};
use testkit::servers::Throwaway as _;

use backfill_core::source::Row;
use bytes::BytesMut;
use mysql_common::binlog::EventStreamReader;
use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::EventData;
use source_mysql::rows::{Cell as BinlogCell, decode, plan};
use source_mysql::stream::{MARIADB_GTID_EVENT, parsed_by_the_stream};
use source_mysql::value::{AddressKind, Charset, ColType, render_cell};
use source_postgres::pgoutput::{self, Cell, Message};
use source_postgres::replication::{ReplMessage, replication_message, split_message};
use source_postgres::value::{Kind, convert};
use testkit::rng::Rng;
use testkit::servers::{MariaDbServer, PgServer};

fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

fn seed() -> u64 {
    crate::seed()
}

/// One to four mutations: bit flips, boundary bytes and integers, truncation, inserted
/// garbage, and a splice from another message.
fn mutate(rng: &mut Rng, msg: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for _ in 0..=rng.index(4) {
        let at = rng.index(m.len() + 1);
        match rng.index(6) {
            0 if at < m.len() => m[at] ^= 1 << rng.index(8),
            1 if at < m.len() => m[at] = [0, 1, 0x7f, 0x80, 0xfe, 0xff][rng.index(6)],
            2 => m.truncate(at),
            3 => {
                let junk: Vec<u8> = (0..=rng.index(8))
                    .map(|_| rng.next().to_le_bytes()[0])
                    .collect();
                m.splice(at..at, junk);
            }
            4 if at + 4 <= m.len() => {
                let v: [u8; 4] = [0u32, u32::MAX, 0x7fff_ffff, 0x8000_0000, 0xffff, 1 << 24]
                    [rng.index(6)]
                .to_be_bytes();
                m[at..at + 4].copy_from_slice(&v);
            }
            _ => {
                let other = &corpus[rng.index(corpus.len())];
                let from = rng.index(other.len() + 1);
                m.truncate(at);
                m.extend_from_slice(&other[from..]);
            }
        }
    }
    m
}

fn kinds() -> Vec<Kind> {
    let scalar = [
        Kind::Bool,
        Kind::Int,
        Kind::Float,
        Kind::Numeric,
        Kind::Json,
        Kind::Date,
        Kind::Timestamp,
        Kind::Timestamptz,
        Kind::Text,
    ];
    let mut all = scalar.to_vec();
    all.extend(scalar.iter().map(|k| Kind::Array(Box::new(k.clone()))));
    all.push(Kind::Array(Box::new(Kind::Array(Box::new(Kind::Numeric)))));
    all
}

/// Feeds a byte stream through the PostgreSQL stream's decoding; the messages decoded.
fn feed_postgres(bytes: &[u8], kinds: &[Kind]) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Some((tag, body))) = split_message(&mut buf) {
        let Ok(Some(ReplMessage::XLogData { data, .. })) = replication_message(tag, body) else {
            continue;
        };
        let Ok(message) = pgoutput::decode(&data) else {
            continue;
        };
        decoded += 1;
        let cells: Vec<&Cell<'_>> = match &message {
            Message::Insert { new, .. } => new.iter().collect(),
            Message::Update { old, new, .. } => old
                .iter()
                .flat_map(|(_, o)| o.iter())
                .chain(new.iter())
                .collect(),
            Message::Delete { old, .. } => old.1.iter().collect(),
            _ => Vec::new(),
        };
        for cell in cells {
            if let Cell::Text(text) = cell {
                for k in kinds {
                    let _ = convert(k, text);
                }
            }
        }
    }
    decoded
}

/// An XLogData frame around a pgoutput message, as the walsender sends it.
fn xlogdata(payload: &[u8], lsn: u64) -> Vec<u8> {
    let mut body = vec![b'w'];
    body.extend(lsn.to_be_bytes());
    body.extend(lsn.to_be_bytes());
    body.extend(0i64.to_be_bytes());
    body.extend_from_slice(payload);
    let mut frame = vec![b'd'];
    frame.extend(u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    frame.extend(body);
    frame
}

#[test]
fn postgres_decoders_take_mutated_real_messages() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    pg.sql(
        "CREATE TABLE fz (id int PRIMARY KEY, b bool, i bigint, n numeric(20,4), f float8, t text, j jsonb, d date, ts timestamp(6), tz timestamptz, ai int[], at text[], by bytea, u uuid, big text);
         ALTER TABLE fz ALTER big SET STORAGE EXTERNAL;
         CREATE TABLE fk (id bigint, v text); ALTER TABLE fk REPLICA IDENTITY FULL;
         CREATE PUBLICATION fz FOR ALL TABLES;",
    )
    .unwrap();
    pg.sql("SELECT pg_create_logical_replication_slot('fz', 'pgoutput')")
        .unwrap();
    pg.sql(
        "INSERT INTO fz SELECT g, g % 2 = 0, g::bigint * 1000000007, g / 7.0, g / 3.0, 'tëxt ' || g, jsonb_build_object('k', g, 'a', jsonb_build_array(1.5, 'x', null)), date '2024-02-29' + g, timestamp '1999-12-31 23:59:59.123456' + g * interval '1 hour', timestamptz '2020-01-01 00:00+05' + g * interval '1 day', ARRAY[g, -g, NULL], ARRAY['a,b', 'c\"d', NULL], decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex'), gen_random_uuid(), repeat(md5(g::text), 100) FROM generate_series(1, 20) g;
         UPDATE fz SET i = -i, n = 'NaN', f = 'Infinity' WHERE id % 3 = 0;
         UPDATE fz SET id = id + 100 WHERE id % 5 = 0;
         DELETE FROM fz WHERE id % 4 = 0;
         INSERT INTO fk VALUES (1, 'a'), (2, NULL); UPDATE fk SET v = 'b'; DELETE FROM fk WHERE id = 1;
         TRUNCATE fk;",
    )
    .unwrap();
    let hex = pg
        .sql("SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('fz', NULL, NULL, 'proto_version', '1', 'publication_names', 'fz')")
        .unwrap();
    let corpus: Vec<Vec<u8>> = hex
        .lines()
        .enumerate()
        .map(|(i, h)| {
            let bytes: Vec<u8> = (0..h.len() / 2)
                .map(|j| u8::from_str_radix(&h[2 * j..2 * j + 2], 16).unwrap())
                .collect();
            xlogdata(&bytes, 0x1000 + i as u64)
        })
        .collect();
    let kinds = kinds();
    // Real messages all decode.
    let whole: Vec<u8> = corpus.concat();
    assert_eq!(
        feed_postgres(&whole, &kinds),
        corpus.len(),
        "every real message decodes"
    );
    assert!(
        corpus.len() > 30,
        "a varied corpus: {} messages",
        corpus.len()
    );
    let mut rng = Rng::new(seed());
    let (started, mut fed, mut decoded) = (Instant::now(), 0u64, 0usize);
    while started.elapsed() < budget() {
        let at = rng.index(corpus.len());
        let n = 1 + rng.index(3);
        let input: Vec<u8> = if rng.chance(0.05) {
            (0..rng.index(64))
                .map(|_| rng.next().to_le_bytes()[0])
                .collect()
        } else {
            mutate(
                &mut rng,
                &corpus[at..(at + n).min(corpus.len())].concat(),
                &corpus,
            )
        };
        let result = catch_unwind(AssertUnwindSafe(|| feed_postgres(&input, &kinds)));
        match result {
            Ok(n) => decoded += n,
            Err(_) => panic!("the PostgreSQL decoding panicked on {input:02x?}"),
        }
        fed += 1;
    }
    eprintln!(
        "postgres decoders: {fed} mutated inputs from {} real messages, {decoded} messages still decoded, no panic",
        corpus.len()
    );
    assert!(fed > 1_000 && decoded > 0);
}

fn col_types() -> Vec<ColType> {
    vec![
        ColType::Int,
        ColType::Decimal { scale: 4 },
        ColType::Float,
        ColType::Double,
        ColType::Bit,
        ColType::Year,
        ColType::Date,
        ColType::DateTime { fsp: 6 },
        ColType::Timestamp { fsp: 3 },
        ColType::Time { fsp: 6 },
        ColType::Text {
            charset: Charset::Utf8,
        },
        ColType::Text {
            charset: Charset::named("latin1"),
        },
        ColType::Text {
            charset: Charset::named("utf16"),
        },
        ColType::Text {
            charset: Charset::named("utf32"),
        },
        ColType::Text {
            charset: Charset::named("gbk"),
        },
        ColType::Text {
            charset: Charset::named("dec8"),
        },
        ColType::Binary { pad_to: Some(4) },
        ColType::Binary { pad_to: None },
        ColType::Address(AddressKind::Uuid),
        ColType::Address(AddressKind::Inet4),
        ColType::Address(AddressKind::Inet6),
        ColType::Enum(vec!["a".into(), "b".into()]),
        ColType::Set(vec!["x".into(), "y".into(), "z".into()]),
        ColType::Json,
    ]
}

/// Parser panics caught (mysql_common's; the stream turns them into an error).
struct Fed {
    rows: usize,
    parser_panics: usize,
}

/// Feeds events through the binlog stream's decoding.
fn feed_binlog(events: &[Vec<u8>], types: &[ColType], fed: &mut Fed) {
    let mut reader = EventStreamReader::new(BinlogVersion::Version4);
    for raw in events {
        // The parser's own work, guarded as the stream guards it.
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            let event = reader.read(raw.as_slice()).ok()??;
            let gtid = (event.header().event_type_raw() == MARIADB_GTID_EVENT)
                .then(|| (event.data().to_vec(), event.header().server_id()));
            let mut rows = Vec::new();
            if !parsed_by_the_stream(event.header().event_type_raw()) {
                return Some((gtid, rows));
            }
            if let Ok(Some(EventData::RowsEvent(r))) = event.read_data()
                && let Some(tme) = reader.get_tme(r.table_id())
                && let Ok(columns) = plan(tme)
                && let Ok(pairs) = decode(&r, &columns)
            {
                for (before, after) in pairs {
                    rows.extend(before.into_iter().chain(after).map(|image| {
                        image
                            .into_iter()
                            .flatten()
                            .map(BinlogCell::into_owned)
                            .collect::<Vec<_>>()
                    }));
                }
            }
            Some((gtid, rows))
        }));
        let Ok(Some((gtid, rows))) = parsed else {
            if parsed.is_err() {
                fed.parser_panics += 1;
            }
            continue;
        };
        // This project's decoding: must never panic (not guarded).
        if let Some((body, server)) = gtid {
            let _ = source_mysql::stream::mariadb_gtid(&body, server);
        }
        for row in rows {
            fed.rows += 1;
            for v in row {
                for ty in types {
                    let _ = render_cell(ty, &v, &mut Row::new(), "c");
                }
            }
        }
    }
}

/// A binlog file's events (after the 4-byte magic), framed by their length field.
fn split_events(file: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut at = 4;
    while at + 19 <= file.len() {
        let len = u32::from_le_bytes(file[at + 9..at + 13].try_into().unwrap()) as usize;
        if len < 19 || at + len > file.len() {
            break;
        }
        events.push(file[at..at + len].to_vec());
        at += len;
    }
    events
}

#[test]
fn binlog_decoders_take_mutated_real_events() {
    let Some(maria) = MariaDbServer::start_or_skip() else {
        return;
    };
    let Some(dir) = maria.dir().map(|d| d.join("data")) else {
        testkit::servers::skip("the binlog files of an external MariaDB cannot be read");
        return;
    };
    maria
        .sql(
            "SET NAMES utf8mb4; CREATE TABLE test.fz (id bigint unsigned PRIMARY KEY, t tinyint, d decimal(20,4), f float, db double, b bit(10), y year, dt date, tm time(3), dtm datetime(6), ts timestamp(6) NULL, c varchar(20) CHARACTER SET latin1, u varchar(40), bi binary(4), bl blob, e enum('a','b'), s set('x','y','z'), j json, uu uuid, i4 inet4, i6 inet6, g geometry);
             INSERT INTO test.fz VALUES (18446744073709551615, -128, -12345678.1234, 1.5, -2.25e300, b'1010101010', 2024, '2024-02-29', '-838:59:58.999', '2038-01-19 03:14:08.123456', '2020-01-01 00:00:00.5', 'café', '😀 ünï', 'ab', x'00ff', 'b', 'x,z', '{\"k\": [1, 2.5, null]}', '123e4567-e89b-12d3-a456-426614174000', '10.0.0.1', '2001:db8::1', ST_GeomFromText('POINT(1 2)'));
             INSERT INTO test.fz (id) VALUES (1), (2), (3);
             UPDATE test.fz SET t = t + 1, u = 'ö' WHERE id < 3;
             UPDATE test.fz SET id = id + 10 WHERE id = 3;
             DELETE FROM test.fz WHERE id = 1;
             FLUSH BINARY LOGS;",
        )
        .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("binlog.0"))
        })
        .collect();
    files.sort();
    let events: Vec<Vec<u8>> = files
        .iter()
        .flat_map(|f| split_events(&std::fs::read(f).unwrap()))
        .collect();
    let types = col_types();
    let mut fed = Fed {
        rows: 0,
        parser_panics: 0,
    };
    feed_binlog(&events, &types, &mut fed);
    assert!(
        fed.rows >= 8 && fed.parser_panics == 0,
        "the real events decode: {} rows",
        fed.rows
    );
    // Mutate one event at a time, after the format description and the table map before it.
    let fde = events.iter().position(|e| e.get(4) == Some(&15)).unwrap();
    let targets: Vec<usize> = (0..events.len())
        .filter(|&i| {
            matches!(
                events[i].get(4).copied(),
                Some(19 | 23 | 24 | 25 | 30 | 31 | 32 | MARIADB_GTID_EVENT)
            )
        })
        .collect();
    // mysql_common's panics are expected and counted: keep them quiet, print the rest.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info
            .location()
            .is_some_and(|l| l.file().contains("mysql_common"))
        {
            default_hook(info);
        }
    }));
    let mut rng = Rng::new(seed());
    let (started, mut inputs) = (Instant::now(), 0u64);
    fed.rows = 0;
    while started.elapsed() < budget() {
        let i = targets[rng.index(targets.len())];
        let map = (0..i).rev().find(|&j| events[j].get(4) == Some(&19));
        let mut seq = vec![events[fde].clone()];
        seq.extend(map.map(|j| events[j].clone()));
        seq.push(events[i].clone());
        let which = rng.index(seq.len());
        let mut m = mutate(&mut rng, &seq[which], &events);
        // Mostly keep the length field true, so that the parser goes past the framing.
        if m.len() >= 13 && rng.chance(0.8) {
            let len = u32::try_from(m.len()).unwrap().to_le_bytes();
            m[9..13].copy_from_slice(&len);
        }
        seq[which] = m;
        feed_binlog(&seq, &types, &mut fed);
        inputs += 1;
    }
    eprintln!(
        "binlog decoders: {inputs} mutated inputs from {} real events, {} rows still decoded and rendered as {} types, {} parser panics caught (the stream reports them as an error), no panic in this project's decoding",
        events.len(),
        fed.rows,
        types.len(),
        fed.parser_panics
    );
    assert!(inputs > 1_000 && fed.rows > 0);
}
