//! The `pgoutput` logical decoding protocol (version 1), decoded from the bytes of an
//! XLogData message.
//!
//! The decoder takes arbitrary bytes without panicking: every read goes through a
//! bounds-checked [`Reader`], and anything malformed is an `Err` naming what was wrong.
//! Text values stay borrowed from the message buffer until [`crate::value`] converts them.

use crate::position::Lsn;

/// One column of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value the server did not send.
    Unchanged,
    /// The value's text form.
    Text(&'a str),
    /// The value's binary form (not requested by this connector).
    Binary(&'a [u8]),
}

/// A column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity (the key, with the default identity).
    pub key: bool,
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_mod: i32,
}

/// A relation's schema as the stream describes it; sent before its first change and
/// again after every schema change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// OID.
    pub oid: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Vec<RelColumn>,
}

/// Which old image an update or delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldImage {
    /// `K`: the replica identity's key columns only (others are NULL).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// A decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A transaction begins; `final_lsn` is its commit record's location.
    Begin {
        /// Commit record location.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts: i64,
        /// Transaction id (32 bits).
        xid: u32,
    },
    /// The transaction commits.
    Commit {
        /// Commit record location.
        commit_lsn: Lsn,
        /// End of the commit record: resume after it.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts: i64,
    },
    /// Replication origin of the transaction.
    Origin,
    /// A relation's schema.
    Relation(Relation),
    /// A type's name, for non-built-in types.
    Type {
        /// OID.
        oid: u32,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        rel: u32,
        /// The row.
        new: Vec<Cell<'a>>,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        rel: u32,
        /// The old key or row, when the key changed or the identity is FULL.
        old: Option<(OldImage, Vec<Cell<'a>>)>,
        /// The new row.
        new: Vec<Cell<'a>>,
    },
    /// A removed row.
    Delete {
        /// Relation OID.
        rel: u32,
        /// The old key or row.
        old: (OldImage, Vec<Cell<'a>>),
    },
    /// Tables emptied.
    Truncate {
        /// Relation OIDs.
        rels: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage {
        /// Whether it was emitted inside a transaction.
        transactional: bool,
        /// Its location.
        lsn: Lsn,
        /// Prefix.
        prefix: &'a str,
    },
}

/// A bounds-checked cursor over a message.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "message ends at byte {} where {n} more were expected",
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// Big-endian i16.
    pub fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// Big-endian i32.
    pub fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Big-endian u32.
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(self.i32()?.cast_unsigned())
    }

    /// Big-endian i64.
    pub fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// An LSN.
    pub fn lsn(&mut self) -> Result<Lsn, String> {
        Ok(Lsn(self.i64()?.cast_unsigned()))
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, String> {
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("string without its terminator")?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| "string is not UTF-8")?;
        self.pos += len + 1;
        Ok(s)
    }

    /// Bytes left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    fn tuple(&mut self) -> Result<Vec<Cell<'a>>, String> {
        let n = usize::try_from(self.i16()?).map_err(|_| "negative column count")?;
        let mut cells = Vec::with_capacity(n.min(1600));
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = usize::try_from(self.i32()?).map_err(|_| "negative value length")?;
                    Cell::Text(
                        std::str::from_utf8(self.take(len)?)
                            .map_err(|_| "text value is not UTF-8")?,
                    )
                }
                b'b' => {
                    let len = usize::try_from(self.i32()?).map_err(|_| "negative value length")?;
                    Cell::Binary(self.take(len)?)
                }
                other => return Err(format!("unknown tuple cell kind {other:#x}")),
            });
        }
        Ok(cells)
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, String> {
    let mut r = Reader::new(buf);
    let tag = r.u8()?;
    match tag {
        b'B' => Ok(Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => {
            let _flags = r.u8()?;
            Ok(Message::Commit {
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_ts: r.i64()?,
            })
        }
        b'O' => Ok(Message::Origin),
        b'R' => relation(&mut r).map(Message::Relation),
        b'Y' => {
            let oid = r.u32()?;
            let _namespace = r.cstr()?;
            let _name = r.cstr()?;
            Ok(Message::Type { oid })
        }
        b'I' => insert(&mut r),
        b'U' => update(&mut r),
        b'D' => delete(&mut r),
        b'T' => truncate(&mut r),
        b'M' => logical_message(&mut r),
        other => Err(format!("unknown pgoutput message {:?}", other as char)),
    }
}

/// `R`: a relation's OID, names, replica identity and columns.
fn relation(r: &mut Reader<'_>) -> Result<Relation, String> {
    let oid = r.u32()?;
    let namespace = r.cstr()?.to_string();
    let name = r.cstr()?.to_string();
    let replica_identity = r.u8()?;
    let n = usize::try_from(r.i16()?).map_err(|_| "negative column count")?;
    let mut columns = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let flags = r.u8()?;
        columns.push(RelColumn {
            key: flags & 1 == 1,
            name: r.cstr()?.to_string(),
            type_oid: r.u32()?,
            type_mod: r.i32()?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// `I`: the relation and its new tuple (`N`).
fn insert<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, String> {
    let rel = r.u32()?;
    match r.u8()? {
        b'N' => Ok(Message::Insert {
            rel,
            new: r.tuple()?,
        }),
        other => Err(format!("insert without a new tuple (got {other:#x})")),
    }
}

/// `U`: the relation, the old key (`K`) or row (`O`) when logged, then the new tuple (`N`).
fn update<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, String> {
    let rel = r.u32()?;
    let mut kind = r.u8()?;
    let old = match kind {
        b'K' | b'O' => {
            let image = if kind == b'K' {
                OldImage::Key
            } else {
                OldImage::Full
            };
            let t = r.tuple()?;
            kind = r.u8()?;
            Some((image, t))
        }
        _ => None,
    };
    if kind != b'N' {
        return Err(format!("update without a new tuple (got {kind:#x})"));
    }
    Ok(Message::Update {
        rel,
        old,
        new: r.tuple()?,
    })
}

/// `D`: the relation and the old key (`K`) or row (`O`).
fn delete<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, String> {
    let rel = r.u32()?;
    let image = match r.u8()? {
        b'K' => OldImage::Key,
        b'O' => OldImage::Full,
        other => return Err(format!("delete without an old tuple (got {other:#x})")),
    };
    Ok(Message::Delete {
        rel,
        old: (image, r.tuple()?),
    })
}

/// `T`: the truncated relations.
fn truncate<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, String> {
    let n = usize::try_from(r.i32()?).map_err(|_| "negative relation count")?;
    let _options = r.u8()?;
    let mut rels = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        rels.push(r.u32()?);
    }
    Ok(Message::Truncate { rels })
}

/// `M`: a logical decoding message (its content is not used).
fn logical_message<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, String> {
    let flags = r.u8()?;
    let lsn = r.lsn()?;
    let prefix = r.cstr()?;
    let len = usize::try_from(r.i32()?).map_err(|_| "negative message length")?;
    let _content = r.take(len)?;
    Ok(Message::LogicalMessage {
        transactional: flags & 1 == 1,
        lsn,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_bytes() -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(16_384u32.to_be_bytes());
        b.push(b'N');
        b.extend(3i16.to_be_bytes());
        b.push(b't');
        b.extend(2i32.to_be_bytes());
        b.extend(b"42");
        b.push(b'n');
        b.push(b'u');
        b
    }

    #[test]
    fn decodes_an_insert() {
        let bytes = insert_bytes();
        assert_eq!(
            decode(&bytes).unwrap(),
            Message::Insert {
                rel: 16_384,
                new: vec![Cell::Text("42"), Cell::Null, Cell::Unchanged]
            }
        );
    }

    #[test]
    fn never_panics_on_truncated_or_mutated_input() {
        let bytes = insert_bytes();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte mutation decodes or errs; none panics.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, b'K', b'O', b'N', b't'] {
                let mut m = bytes.clone();
                m[i] = v;
                let _ = decode(&m);
            }
        }
        let mut rng = 0x1234_5678_u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 40) as usize;
            let tag = b"BCORYIUDTMx"[(rng >> 8) as usize % 11];
            let mut m = vec![tag];
            m.extend((0..len).map(|i| u8::try_from((rng >> (i % 56)) & 0xff).unwrap_or(0)));
            let _ = decode(&m);
        }
    }
}
