//! A source transaction's events, held until the transaction commits or aborts.
//!
//! ferry writes only committed transactions to the spool, so a sink never reads a change that
//! could still be rolled back and a reconnect never leaves half a transaction behind. Events are
//! kept in memory up to a byte budget; past it, the whole buffer moves to a file in the spill
//! directory and later events append to that file, so a transaction of any size costs bounded
//! memory. Each event carries the subtransaction id it came from, so the events of an aborted
//! subtransaction of a streamed transaction can be dropped on replay.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ferry_proto::{Event, frame};

use crate::error::{Error, Result};

/// Events of one transaction, in memory or in a file.
#[derive(Debug)]
pub struct TxnBuffer {
    name: String,
    mem: Vec<(u32, Event)>,
    mem_bytes: usize,
    limit: usize,
    file: Option<(PathBuf, BufWriter<File>)>,
    aborted: HashSet<u32>,
    events: u64,
    scratch: Vec<u8>,
}

impl TxnBuffer {
    /// A buffer that spills to `dir/<name>.spill` once it holds more than `limit` bytes.
    pub fn new(name: String, limit: usize) -> Self {
        TxnBuffer {
            name,
            mem: Vec::new(),
            mem_bytes: 0,
            limit,
            file: None,
            aborted: HashSet::new(),
            events: 0,
            scratch: Vec::new(),
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Adds an event of subtransaction `sub` (0 for the top level).
    pub fn push(&mut self, dir: &Path, sub: u32, event: Event) -> Result<()> {
        self.events += 1;
        if self.file.is_none() {
            self.mem_bytes += event_size(&event);
            self.mem.push((sub, event));
            if self.mem_bytes > self.limit {
                let path = dir.join(format!("{}.spill", self.name));
                let f = File::create(&path)
                    .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
                self.file = Some((path, BufWriter::with_capacity(1 << 20, f)));
                for (sub, ev) in std::mem::take(&mut self.mem) {
                    self.write(sub, &ev)?;
                }
                self.mem_bytes = 0;
            }
            return Ok(());
        }
        self.write(sub, &event)
    }

    fn write(&mut self, sub: u32, event: &Event) -> Result<()> {
        let Some((path, out)) = self.file.as_mut() else {
            return Ok(());
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&sub.to_le_bytes());
        self.scratch
            .push(u8::from(matches!(event, Event::Relation(_))));
        frame::encode(event, &mut self.scratch).map_err(|e| Error::Protocol(e.to_string()))?;
        out.write_all(&self.scratch)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    /// Drops the events of subtransaction `sub` (a streamed transaction's aborted savepoint).
    pub fn abort_sub(&mut self, sub: u32) {
        self.mem.retain(|(s, _)| *s != sub);
        self.aborted.insert(sub);
    }

    /// Hands every surviving event, in order, to `each`, and removes the spill file.
    pub fn replay(self, mut each: impl FnMut(Event) -> Result<()>) -> Result<()> {
        self.replay_frames(|item| match item {
            Replayed::Event(ev) => each(ev),
            Replayed::Frame(bytes) => {
                let (ev, _) = frame::decode(bytes).map_err(|e| Error::Protocol(e.to_string()))?;
                each(ev)
            }
        })
    }

    /// Like [`replay`](Self::replay), but events read back from the spill file (except
    /// Relation events) come as their encoded frames, to be copied without decoding.
    pub fn replay_frames(mut self, mut each: impl FnMut(Replayed<'_>) -> Result<()>) -> Result<()> {
        for (sub, ev) in std::mem::take(&mut self.mem) {
            if !self.aborted.contains(&sub) {
                each(Replayed::Event(ev))?;
            }
        }
        let Some((path, out)) = self.file.take() else {
            return Ok(());
        };
        let ctx = |op: &str| format!("{op} {}", path.display());
        let file = out
            .into_inner()
            .map_err(|e| Error::io(ctx("write"), e.into_error()))?;
        drop(file);
        let result = (|| {
            let f = File::open(&path).map_err(|e| Error::io(ctx("open"), e))?;
            let mut reader = BufReader::with_capacity(1 << 20, f);
            let mut head = [0u8; 5 + frame::HEADER_LEN];
            let mut record = Vec::new();
            loop {
                match reader.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(Error::io(ctx("read"), e)),
                }
                let sub = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                let is_relation = head[4] == 1;
                let header = frame::decode_header(&head[5..])
                    .map_err(|e| Error::Protocol(format!("{}: {e}", ctx("decode"))))?;
                record.clear();
                record.extend_from_slice(&head[5..]);
                record.resize(header.frame_len(), 0);
                reader
                    .read_exact(&mut record[frame::HEADER_LEN..])
                    .map_err(|e| Error::io(ctx("read"), e))?;
                if self.aborted.contains(&sub) {
                    continue;
                }
                if is_relation {
                    let (ev, _) = frame::decode(&record)
                        .map_err(|e| Error::Protocol(format!("{}: {e}", ctx("decode"))))?;
                    each(Replayed::Event(ev))?;
                } else {
                    each(Replayed::Frame(&record))?;
                }
            }
        })();
        let _ = fs::remove_file(&path);
        result
    }

    /// Discards the transaction (abort, or a disconnect before its commit).
    pub fn discard(mut self) {
        if let Some((path, _)) = self.file.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// An event handed back by [`TxnBuffer::replay_frames`].
#[derive(Debug)]
pub enum Replayed<'a> {
    Event(Event),
    /// An encoded frame (never a Relation event).
    Frame(&'a [u8]),
}

/// Memory an event takes in the buffer: the value enums themselves plus what they point to.
fn event_size(event: &Event) -> usize {
    let value = std::mem::size_of::<ferry_proto::Value>();
    let row = |r: &ferry_proto::Row| r.iter().map(|v| v.approx_size() + value).sum::<usize>();
    64 + match event {
        Event::Insert(e) => row(&e.new),
        Event::Update(e) => row(&e.new) + e.old.as_ref().map_or(0, |o| row(o.row())),
        Event::Delete(e) => row(e.old.row()),
        Event::Message(m) => m.content.len() + m.prefix.len(),
        Event::Relation(r) => r.columns.len() * 64,
        Event::Truncate(t) => t.relations.len() * 8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::samples;

    fn collect(buf: TxnBuffer) -> Vec<Event> {
        let mut out = Vec::new();
        buf.replay(|e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn keeps_order_in_memory_and_across_a_spill() {
        let dir = tempfile::tempdir().unwrap();
        for limit in [usize::MAX, 0, 2_000] {
            let mut buf = TxnBuffer::new(format!("t{limit}"), limit);
            let events: Vec<Event> = (0..100).map(|i| samples::insert(1, i, 50)).collect();
            for (i, e) in events.iter().enumerate() {
                buf.push(dir.path(), (i % 3) as u32, e.clone()).unwrap();
            }
            assert_eq!(buf.spilled(), limit != usize::MAX);
            buf.abort_sub(1);
            let want: Vec<Event> = events
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != 1)
                .map(|(_, e)| e.clone())
                .collect();
            assert_eq!(collect(buf), want);
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill files removed"
        );
    }

    #[test]
    fn discard_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = TxnBuffer::new("x".into(), 0);
        buf.push(dir.path(), 0, samples::insert(1, 1, 10)).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        buf.discard();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
