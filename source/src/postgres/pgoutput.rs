//! Decoder of the pgoutput logical replication protocol (versions 1 to 4), the payload of the
//! walsender's XLogData messages.
//!
//! Pure and borrowing: a message is parsed from a byte slice into a [`PgMessage`] whose column
//! values point into that slice. Every length and count is checked against the bytes present, so
//! arbitrary input gives a [`DecodeError`], never a panic or an oversized allocation.
//!
//! Inside a streamed transaction block (between Stream Start and Stream Stop) the row, relation,
//! type and message messages carry the transaction id first; the caller says whether it is inside
//! such a block.

use std::fmt;

/// PostgreSQL's epoch (2000-01-01) in microseconds after the Unix epoch.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Bytes that are not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput: message ends early reading {0}")]
    Truncated(&'static str),
    #[error("pgoutput: unknown message type {0:?}")]
    UnknownMessage(char),
    #[error("pgoutput: unknown tuple column kind {0:?}")]
    UnknownColumnKind(char),
    #[error("pgoutput: unexpected tuple marker {0:?} in {1}")]
    UnexpectedMarker(char, &'static str),
    #[error("pgoutput: negative {0}")]
    Negative(&'static str),
    #[error("pgoutput: string is not valid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("pgoutput: {0} trailing bytes after {1} message")]
    Trailing(usize, &'static str),
    #[error("pgoutput: unknown replica identity {0:?}")]
    ReplicaIdentity(char),
}

/// One column value of a tuple, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnData<'a> {
    Null,
    /// An unchanged TOASTed value: not sent.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

pub type Tuple<'a> = Vec<ColumnData<'a>>;

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old tuple of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// 'K': replica identity key columns only.
    Key(Tuple<'a>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Old(Tuple<'a>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgMessage<'a> {
    Begin {
        final_lsn: u64,
        /// Microseconds since the Unix epoch.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<RelColumn>,
    },
    Type {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        oid: u32,
        new: Tuple<'a>,
    },
    Update {
        xid: Option<u32>,
        oid: u32,
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        xid: Option<u32>,
        oid: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        xid: Option<u32>,
        cascade: bool,
        restart_identity: bool,
        oids: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: &'a [u8],
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

impl PgMessage<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            PgMessage::Begin { .. } => "Begin",
            PgMessage::Commit { .. } => "Commit",
            PgMessage::Origin { .. } => "Origin",
            PgMessage::Relation { .. } => "Relation",
            PgMessage::Type { .. } => "Type",
            PgMessage::Insert { .. } => "Insert",
            PgMessage::Update { .. } => "Update",
            PgMessage::Delete { .. } => "Delete",
            PgMessage::Truncate { .. } => "Truncate",
            PgMessage::Message { .. } => "Message",
            PgMessage::StreamStart { .. } => "Stream Start",
            PgMessage::StreamStop => "Stream Stop",
            PgMessage::StreamCommit { .. } => "Stream Commit",
            PgMessage::StreamAbort { .. } => "Stream Abort",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn timestamp(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok((self.u64(what)? as i64).saturating_add(PG_EPOCH_OFFSET_MICROS))
    }
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::Utf8(what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s.to_owned())
    }
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| DecodeError::Negative(what))
    }
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.count("tuple column count")?;
        // Each column takes at least one byte: bound the allocation by what is there.
        let mut cols = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            let col = match self.u8("tuple column kind")? {
                b'n' => ColumnData::Null,
                b'u' => ColumnData::Unchanged,
                kind @ (b't' | b'b') => {
                    let len = self.i32("column length")?;
                    let len =
                        usize::try_from(len).map_err(|_| DecodeError::Negative("column length"))?;
                    let data = self.take(len, "column data")?;
                    if kind == b't' {
                        ColumnData::Text(data)
                    } else {
                        ColumnData::Binary(data)
                    }
                }
                other => return Err(DecodeError::UnknownColumnKind(other as char)),
            };
            cols.push(col);
        }
        Ok(cols)
    }
    fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len(), what))
        }
    }
}

/// Decodes one pgoutput message. `in_stream` is true between Stream Start and Stream Stop.
pub fn decode(buf: &[u8], in_stream: bool) -> Result<PgMessage<'_>, DecodeError> {
    let mut r = Reader { buf };
    let tag = r.u8("message type")?;
    let stream_xid = |r: &mut Reader<'_>| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32("transaction id").map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        b'B' => PgMessage::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.timestamp("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.timestamp("commit time")?,
        },
        b'O' => PgMessage::Origin {
            lsn: r.u64("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let xid = stream_xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            if !matches!(replica_identity, b'd' | b'n' | b'f' | b'i') {
                return Err(DecodeError::ReplicaIdentity(replica_identity as char));
            }
            let n = r.count("column count")?;
            let mut columns = Vec::with_capacity(n.min(r.buf.len() / 10 + 1));
            for _ in 0..n {
                columns.push(RelColumn {
                    key: r.u8("column flags")? & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            PgMessage::Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => PgMessage::Type {
            xid: stream_xid(&mut r)?,
            oid: r.u32("type oid")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let xid = stream_xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            match r.u8("insert marker")? {
                b'N' => {}
                m => return Err(DecodeError::UnexpectedMarker(m as char, "Insert")),
            }
            PgMessage::Insert {
                xid,
                oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = stream_xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let mut marker = r.u8("update marker")?;
            let old = match marker {
                b'K' | b'O' => {
                    let t = r.tuple()?;
                    let old = if marker == b'K' {
                        OldTuple::Key(t)
                    } else {
                        OldTuple::Old(t)
                    };
                    marker = r.u8("update new-tuple marker")?;
                    Some(old)
                }
                _ => None,
            };
            if marker != b'N' {
                return Err(DecodeError::UnexpectedMarker(marker as char, "Update"));
            }
            PgMessage::Update {
                xid,
                oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = stream_xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let old = match r.u8("delete marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Old(r.tuple()?),
                m => return Err(DecodeError::UnexpectedMarker(m as char, "Delete")),
            };
            PgMessage::Delete { xid, oid, old }
        }
        b'T' => {
            let xid = stream_xid(&mut r)?;
            let n = r.u32("relation count")? as usize;
            let options = r.u8("truncate options")?;
            let mut oids = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                oids.push(r.u32("truncated relation oid")?);
            }
            PgMessage::Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                oids,
            }
        }
        b'M' => {
            let xid = stream_xid(&mut r)?;
            let transactional = r.u8("message flags")? & 1 == 1;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.u32("message length")? as usize;
            PgMessage::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content: r.take(len, "message content")?,
            }
        }
        b'S' => PgMessage::StreamStart {
            xid: r.u32("stream xid")?,
            first_segment: r.u8("first segment")? == 1,
        },
        b'E' => PgMessage::StreamStop,
        b'c' => PgMessage::StreamCommit {
            xid: r.u32("stream xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.timestamp("commit time")?,
        },
        b'A' => {
            let msg = PgMessage::StreamAbort {
                xid: r.u32("stream xid")?,
                subxid: r.u32("subtransaction xid")?,
            };
            // Protocol 4 (parallel streaming) appends the abort LSN and time; not needed here.
            if r.buf.len() == 16 {
                r.take(16, "abort LSN and time")?;
            }
            msg
        }
        other => return Err(DecodeError::UnknownMessage(other as char)),
    };
    r.finish(msg.name())?;
    Ok(msg)
}

impl fmt::Display for ColumnData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnData::Null => f.write_str("NULL"),
            ColumnData::Unchanged => f.write_str("(unchanged)"),
            ColumnData::Text(t) => write!(f, "{:?}", String::from_utf8_lossy(t)),
            ColumnData::Binary(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, cols: &[Option<&str>]) {
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in cols {
            match c {
                None => out.push(b'n'),
                Some("~unchanged") => out.push(b'u'),
                Some(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    #[test]
    fn decodes_relation_and_rows() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "items");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        cstr(&mut m, "id");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        cstr(&mut m, "body");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let PgMessage::Relation { columns, name, .. } = decode(&m, false).unwrap() else {
            panic!()
        };
        assert_eq!(name, "items");
        assert!(columns[0].key && !columns[1].key);

        let mut u = vec![b'U'];
        u.extend_from_slice(&7u32.to_be_bytes()); // streamed: xid first
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'K');
        tuple(&mut u, &[Some("1"), None]);
        u.push(b'N');
        tuple(&mut u, &[Some("2"), Some("~unchanged")]);
        assert_eq!(
            decode(&u, true).unwrap(),
            PgMessage::Update {
                xid: Some(7),
                oid: 16384,
                old: Some(OldTuple::Key(vec![
                    ColumnData::Text(b"1"),
                    ColumnData::Null
                ])),
                new: vec![ColumnData::Text(b"2"), ColumnData::Unchanged],
            }
        );
        // The same bytes outside a stream block misparse the xid as the oid and must not panic.
        assert!(decode(&u, false).is_err());
    }

    #[test]
    fn begin_commit_times_are_unix_micros() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&99u32.to_be_bytes());
        assert_eq!(
            decode(&b, false).unwrap(),
            PgMessage::Begin {
                final_lsn: 0x1_0000_0000,
                commit_time: PG_EPOCH_OFFSET_MICROS,
                xid: 99
            }
        );
        assert_eq!(
            decode(&b[..b.len() - 1], false),
            Err(DecodeError::Truncated("xid"))
        );
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            decode(&long, false),
            Err(DecodeError::Trailing(1, _))
        ));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut m = vec![b'T'];
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        m.push(0);
        assert!(decode(&m, false).is_err());
        let mut i = vec![b'I'];
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&i16::MAX.to_be_bytes());
        assert!(decode(&i, false).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), s in any::<bool>()) {
            let _ = decode(&bytes, s);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_tag_never_panic(
            tag in proptest::sample::select(b"BCORYIUDTMSEcA".to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
            s in any::<bool>(),
        ) {
            let mut m = vec![tag];
            m.extend(rest);
            let _ = decode(&m, s);
        }
    }
}
