//! The commit record, kept in two slot files written in place (`commit.0`, `commit.1`).
//!
//! Replacing a file (temp file, rename, directory fsync) is a metadata change: under
//! writeback of other data the filesystem's journal makes each one wait tens of
//! milliseconds, and a unit waits for its record (BENCHMARKS.md: p99 latency). Overwriting
//! a file's bytes and `fdatasync`ing them changes no metadata while the file does not
//! grow, and is as cheap as the log's own sync.
//!
//! Commit number `n` is written into slot `n % 2`, so the slot holding the last durable
//! record is never the one being written (one commit is in flight at most, and it starts
//! after the one before it is durable). A slot is a header line
//! `cdc-commit <n> <length> <crc32>` and the record's JSON; bytes past the length are left
//! from a longer earlier record. A crash mid-write leaves that slot's checksum wrong, and
//! readers take the other: the newest valid slot is the record. A store written before the
//! slots keeps `commit.json` until its next writer moves it into a slot.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// The record before the slots: read while no slot is valid.
const LEGACY: &str = "commit.json";

fn slot_name(n: u64) -> String {
    format!("commit.{}", n % 2)
}

/// The newest valid record in `dir` and its commit number (0 for a record from before
/// the slots), if any.
pub(super) fn read(dir: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut newest: Option<(u64, Vec<u8>)> = None;
    for slot in 0..2 {
        let Some((n, body)) = read_slot(&dir.join(slot_name(slot)))? else {
            continue;
        };
        if newest.as_ref().is_none_or(|(m, _)| n > *m) {
            newest = Some((n, body));
        }
    }
    if newest.is_some() {
        return Ok(newest);
    }
    match std::fs::read(dir.join(LEGACY)) {
        Ok(body) => Ok(Some((0, body))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A slot's commit number and record, or `None` when it is missing or torn.
fn read_slot(path: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let header = String::from_utf8_lossy(&bytes[..end]);
    let mut parts = header.split(' ');
    let (Some("cdc-commit"), Some(n), Some(len), Some(crc), None) = (
        parts.next(),
        parts.next().and_then(|n| n.parse::<u64>().ok()),
        parts.next().and_then(|l| l.parse::<usize>().ok()),
        parts.next().and_then(|c| u32::from_str_radix(c, 16).ok()),
        parts.next(),
    ) else {
        return Ok(None);
    };
    let Some(body) = bytes.get(end + 1..end + 1 + len) else {
        return Ok(None);
    };
    Ok((crc32fast::hash(body) == crc).then(|| (n, body.to_vec())))
}

/// Writes `body` as commit `n` into its slot and makes it durable (the directory too when
/// the slot file is new).
pub(super) fn write(dir: &Path, n: u64, body: &[u8]) -> std::io::Result<()> {
    let path = dir.join(slot_name(n));
    let new = !path.exists();
    let mut bytes = format!(
        "cdc-commit {n} {} {:08x}\n",
        body.len(),
        crc32fast::hash(body)
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    if new {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes the record from before the slots once a slot holds its successor.
pub(super) fn retire_legacy(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(LEGACY)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_is_the_record_and_a_torn_one_is_passed_over() {
        let dir = std::env::temp_dir().join(format!("cdc-slots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        std::fs::write(dir.join(LEGACY), b"{\"old\":1}").unwrap();
        assert_eq!(read(&dir).unwrap(), Some((0, b"{\"old\":1}".to_vec())));
        write(&dir, 1, b"{\"a\":1}").unwrap();
        write(&dir, 2, b"{\"a\":2, \"longer\": true}").unwrap();
        write(&dir, 3, b"{\"a\":3}").unwrap();
        assert_eq!(read(&dir).unwrap(), Some((3, b"{\"a\":3}".to_vec())));
        // Commit 4 torn in slot 0: commit 3 in slot 1 is the record.
        let mut torn = std::fs::read(dir.join("commit.0")).unwrap();
        torn[25] ^= 0xff;
        std::fs::write(dir.join("commit.0"), &torn).unwrap();
        write(&dir, 3, b"{\"a\":3}").unwrap();
        assert_eq!(read(&dir).unwrap(), Some((3, b"{\"a\":3}".to_vec())));
        // A shorter record over a longer one: the rest of the file is not read.
        write(&dir, 4, b"{}").unwrap();
        assert_eq!(read(&dir).unwrap(), Some((4, b"{}".to_vec())));
        retire_legacy(&dir).unwrap();
        assert!(!dir.join(LEGACY).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
