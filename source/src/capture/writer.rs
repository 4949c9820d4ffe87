//! The spool as both sources write it: whole transactions appended as frames, made durable by
//! group commit (fsync once enough is pending or the oldest pending byte has waited long
//! enough), segments every sink is past deleted, and where a restart resumes read back from the
//! spool's tail. The sources decide what a transaction is and when the server may be
//! acknowledged; this decides nothing about positions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_proto::{Event, Position};
use ferry_spool::{Offset, SpoolReader, SpoolWriter, segment};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Group commit: fsync once this much is pending…
pub const GROUP_BYTES: u64 = 4 << 20;
/// …or once the oldest pending byte has waited this long.
pub const GROUP_DELAY: Duration = Duration::from_millis(10);
/// Deleting the segments every sink is past is tried at most this often.
const TRUNCATE_INTERVAL: Duration = Duration::from_secs(1);

/// A source's handle on the spool.
#[derive(Debug)]
pub struct SourceWriter {
    spool: SpoolWriter,
    spill_dir: PathBuf,
    /// When the oldest byte not yet fsynced was appended.
    pending_since: Option<Instant>,
    /// The spool offset every sink has applied below: segments all before it are deleted.
    truncate_below: Option<watch::Receiver<Offset>>,
    last_truncate: Option<Instant>,
}

impl SourceWriter {
    /// Takes over the spool; `<spool>/spill`, where transactions too large for memory wait for
    /// their commit, starts empty (what a crash left there was never committed).
    pub fn new(
        spool: SpoolWriter,
        truncate_below: Option<watch::Receiver<Offset>>,
    ) -> Result<SourceWriter> {
        let spill_dir = spool.dir().join("spill");
        let _ = std::fs::remove_dir_all(&spill_dir);
        std::fs::create_dir_all(&spill_dir)
            .map_err(|e| Error::io(format!("create {}", spill_dir.display()), e))?;
        Ok(SourceWriter {
            spool,
            spill_dir,
            pending_since: None,
            truncate_below,
            last_truncate: None,
        })
    }

    pub fn spool(&self) -> &SpoolWriter {
        &self.spool
    }

    pub fn spool_mut(&mut self) -> &mut SpoolWriter {
        &mut self.spool
    }

    /// The spool, once the source has stopped.
    pub fn into_spool(self) -> SpoolWriter {
        self.spool
    }

    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// Bytes appended but not yet durable.
    pub fn pending(&self) -> u64 {
        self.spool.end().0 - self.spool.durable_end().0
    }

    /// Appends an event; a Relation only when the spool's catalog does not hold it as it is.
    pub fn append(&mut self, event: &Event) -> Result<()> {
        if let Event::Relation(r) = event
            && self.spool.relations().get(&r.id) == Some(r)
        {
            return Ok(());
        }
        self.spool.append(event)?;
        self.appended()
    }

    /// Appends an encoded frame (never a Relation: those go through [`Self::append`]).
    pub fn append_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.spool.append_frame(frame)?;
        self.appended()
    }

    /// A large transaction streams through the spool: its write buffer stays bounded.
    fn appended(&mut self) -> Result<()> {
        self.pending_since.get_or_insert_with(Instant::now);
        if self.pending() >= GROUP_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    /// Whether group commit says to fsync now: enough pending, or (on a timer tick) the oldest
    /// pending byte has waited [`GROUP_DELAY`].
    pub fn due(&self, timer: bool) -> bool {
        let pending = self.pending();
        pending > 0
            && (pending >= GROUP_BYTES
                || (timer
                    && self
                        .pending_since
                        .is_some_and(|t| t.elapsed() >= GROUP_DELAY)))
    }

    /// Makes everything appended durable.
    pub fn commit(&mut self) -> Result<()> {
        if self.pending() > 0 {
            tokio::task::block_in_place(|| self.spool.commit())?;
        }
        self.pending_since = None;
        Ok(())
    }

    /// Deletes the segments every sink is past, at most once a second.
    pub fn truncate(&mut self) -> Result<()> {
        let Some(below) = &self.truncate_below else {
            return Ok(());
        };
        if self
            .last_truncate
            .is_some_and(|t| t.elapsed() < TRUNCATE_INTERVAL)
        {
            return Ok(());
        }
        self.last_truncate = Some(Instant::now());
        let below = *below.borrow();
        let n = self.spool.truncate_before(below)?;
        if n > 0 {
            tracing::debug!(segments = n, below = %below, "deleted spool segments every sink has applied");
        }
        Ok(())
    }
}

/// Where the spool ends, as a source resuming from it sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The last Commit's or Heartbeat's position, whichever comes later: every transaction at
    /// or before it is in the spool. `None` for a spool without either.
    pub resume: Option<Position>,
    /// Offset of a Begin with no Commit after it: a transaction a crash cut short.
    pub incomplete_from: Option<Offset>,
}

/// Reads the newest segments back to the last Commit or Heartbeat. `same_kind` says whether a
/// position belongs to this source: a spool of another kind of source is refused.
pub fn tail(dir: &Path, same_kind: impl Fn(&Position) -> bool) -> Result<Tail> {
    let bases = segment::list(dir)?;
    let mut tail = Tail::default();
    let mut open_begin: Option<Offset> = None;
    let check = |p: &Position| {
        if same_kind(p) {
            Ok(p.clone())
        } else {
            Err(Error::Config(format!(
                "the spool in {} holds changes of another kind of source (position {p}); give \
                 this source its own spool directory",
                dir.display()
            )))
        }
    };
    for (i, &base) in bases.iter().enumerate().rev() {
        let next = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        let mut reader = SpoolReader::open(dir, Offset(base))?;
        let mut last_begin = None;
        let mut last_commit: Option<(Offset, Position)> = None;
        let mut beat: Option<(Offset, Position)> = None;
        while let Some((off, ev)) = reader.try_next()? {
            if off.0 >= next {
                break;
            }
            match ev {
                Event::Begin(_) => last_begin = Some(off),
                Event::Commit(c) => last_commit = Some((off, check(&c.position)?)),
                Event::Heartbeat(h) => beat = Some((off, check(&h.position)?)),
                _ => {}
            }
        }
        if open_begin.is_none() {
            open_begin = last_begin.filter(|b| last_commit.as_ref().is_none_or(|(c, _)| b > c));
        }
        // The later in the spool of the two: positions only grow along it.
        let found = match (last_commit, beat) {
            (Some(c), Some(h)) => Some(if h.0 > c.0 { h.1 } else { c.1 }),
            (c, h) => c.or(h).map(|x| x.1),
        };
        if found.is_some() {
            tail.resume = found;
            break;
        }
    }
    tail.incomplete_from = open_begin;
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use ferry_proto::{Begin, BinlogPos, Commit, Heartbeat, samples};
    use ferry_spool::WriterOptions;

    use super::*;

    fn at(pos: u64) -> Position {
        Position::Binlog(BinlogPos::new("b.000001", pos))
    }

    fn binlog(p: &Position) -> bool {
        matches!(p, Position::Binlog(_))
    }

    /// Tiny segments, so transactions span them: the tail is found from the newest segment back.
    #[test]
    fn the_tail_is_the_last_commit_or_heartbeat_and_a_cut_transaction_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions { segment_bytes: 64 };
        let (mut w, _) = SpoolWriter::open(dir.path(), opts).unwrap();
        assert_eq!(tail(dir.path(), binlog).unwrap(), Tail::default());
        let begin = |p| {
            Event::Begin(Begin {
                position: at(p),
                xid: p,
                commit_time: 0,
            })
        };
        let commit = |p| {
            Event::Commit(Commit {
                position: at(p),
                xid: p,
                commit_time: 0,
            })
        };
        w.append(&Event::Relation(samples::relation(1))).unwrap();
        for p in [100, 200] {
            w.append(&begin(p)).unwrap();
            for k in 0..5 {
                w.append(&samples::insert(1, k, 10)).unwrap();
            }
            w.append(&commit(p)).unwrap();
        }
        w.commit().unwrap();
        assert!(segment::list(dir.path()).unwrap().len() > 3);
        let t = tail(dir.path(), binlog).unwrap();
        assert_eq!(t.resume, Some(at(200)));
        assert_eq!(t.incomplete_from, None);

        w.append(&Event::Heartbeat(Heartbeat {
            position: at(300),
            time: 0,
        }))
        .unwrap();
        let cut = w.append(&begin(400)).unwrap();
        for k in 0..20 {
            w.append(&samples::insert(1, k, 10)).unwrap();
        }
        w.commit().unwrap();
        let t = tail(dir.path(), binlog).unwrap();
        assert_eq!(t.resume, Some(at(300)));
        assert_eq!(t.incomplete_from, Some(cut));

        let e = tail(dir.path(), |p| matches!(p, Position::Postgres(_))).unwrap_err();
        assert!(e.to_string().contains("another kind of source"), "{e}");
    }
}
