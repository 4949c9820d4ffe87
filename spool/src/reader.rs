//! Spool readers: each reads the log from its own offset, in order, across segments, and can tail
//! the writer. A reader never yields a frame that fails its checksum: at the tail a partial frame
//! means "not written yet", anywhere else it is corruption and an error.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ferry_proto::frame::{self, FrameError, HEADER_LEN};
use ferry_proto::{Event, Relation, RelationId};
use tokio::sync::watch;

use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::{Offset, SpoolError};

const READ_CHUNK: usize = 1 << 20;

/// Reads events from a spool directory starting at an offset.
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    base: u64,
    file: File,
    /// Unconsumed bytes are `buf[start..]`; `buf_end` is the file position just past `buf`.
    buf: Vec<u8>,
    start: usize,
    buf_end: u64,
    /// Frames before this offset are read only to learn relations, not yielded.
    skip_until: Offset,
    /// The length of the frame last yielded, which ends at `buf[start]`.
    last_len: usize,
    /// The writer's durable end, when tailing an in-process writer; otherwise the files' ends.
    limit: Option<watch::Receiver<Offset>>,
    relations: BTreeMap<RelationId, Relation>,
}

impl SpoolReader {
    /// Opens a reader that yields the events at and after `from`, reading what is on disk (for a
    /// reader in another process than the writer, such as `ferry log dump`).
    pub fn open(dir: impl AsRef<Path>, from: Offset) -> Result<Self, SpoolError> {
        Self::open_inner(dir.as_ref(), from, None)
    }

    /// Opens a reader that reads only what `durable` says the writer has made durable and can wait
    /// for more with [`next_wait`](Self::next_wait).
    pub fn open_tailing(
        dir: impl AsRef<Path>,
        from: Offset,
        durable: watch::Receiver<Offset>,
    ) -> Result<Self, SpoolError> {
        Self::open_inner(dir.as_ref(), from, Some(durable))
    }

    fn open_inner(
        dir: &Path,
        from: Offset,
        limit: Option<watch::Receiver<Offset>>,
    ) -> Result<Self, SpoolError> {
        let bases = segment::list(dir)?;
        let Some(&oldest) = bases.first() else {
            return Err(SpoolError::Empty(dir.to_owned()));
        };
        if from.0 < oldest {
            return Err(SpoolError::Gap {
                requested: from,
                oldest: Offset(oldest),
            });
        }
        let base = bases
            .iter()
            .rev()
            .copied()
            .find(|&b| b <= from.0)
            .unwrap_or(oldest);
        let (file, buf_end) = open_segment(dir, base)?;
        Ok(SpoolReader {
            dir: dir.to_owned(),
            base,
            file,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            buf_end,
            skip_until: from,
            last_len: 0,
            limit,
            relations: BTreeMap::new(),
        })
    }

    /// The offset of the next frame this reader will look at.
    pub fn position(&self) -> Offset {
        Offset(self.base + self.buf_end - (self.buf.len() - self.start) as u64)
    }

    /// The relation with this id as of the reader's position: every relation announced before it,
    /// including in segment prologues and frames skipped on open.
    pub fn relation(&self, id: RelationId) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// Every relation as of the reader's position.
    pub fn relations(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }

    /// The bytes of the frame of the event last yielded, as stored (checksum verified): copied
    /// on as they are by a reader that passes frames on (the archive), with no encoding again.
    pub fn last_frame(&self) -> &[u8] {
        &self.buf[self.start - self.last_len..self.start]
    }

    /// The next event and its offset, or `None` when no complete durable frame is available now.
    pub fn try_next(&mut self) -> Result<Option<(Offset, Event)>, SpoolError> {
        loop {
            let offset = self.position();
            let avail = &self.buf[self.start..];
            let need = match frame::decode_header(avail) {
                Ok(h) if avail.len() >= h.frame_len() => {
                    let event = frame::decode_payload(
                        &segment::header_array(avail),
                        &h,
                        &avail[HEADER_LEN..h.frame_len()],
                    )
                    .map_err(|e| self.corrupt(offset, e))?;
                    self.start += h.frame_len();
                    self.last_len = h.frame_len();
                    if let Event::Relation(r) = &event {
                        self.relations.insert(r.id, r.clone());
                    }
                    if offset < self.skip_until {
                        if self.position() > self.skip_until {
                            return Err(SpoolError::InvalidCursor(self.skip_until));
                        }
                        continue;
                    }
                    return Ok(Some((offset, event)));
                }
                Ok(h) => h.frame_len() - avail.len(),
                Err(FrameError::Incomplete { needed }) => needed,
                Err(e) => return Err(self.corrupt(offset, e)),
            };
            if self.fill(need)? == 0 && !self.advance_segment()? {
                return Ok(None);
            }
        }
    }

    /// Like [`try_next`](Self::try_next), but waits for the writer to make more events durable. Returns
    /// `None` once the writer is gone and everything durable has been read. Only for readers opened
    /// with [`open_tailing`](Self::open_tailing).
    pub async fn next_wait(&mut self) -> Result<Option<(Offset, Event)>, SpoolError> {
        loop {
            if let Some(item) = self.try_next()? {
                return Ok(Some(item));
            }
            let Some(rx) = self.limit.as_mut() else {
                return Err(SpoolError::NotTailing);
            };
            if rx.changed().await.is_err() {
                // The writer is gone: drain whatever it made durable last, then stop.
                return self.try_next();
            }
        }
    }

    /// Reads at least `need` more bytes if the durable data holds them; returns the bytes read.
    fn fill(&mut self, need: usize) -> Result<usize, SpoolError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut max = need.max(READ_CHUNK) as u64;
        if let Some(rx) = &self.limit {
            let limit = rx.borrow().0;
            let here = self.base + self.buf_end;
            if limit <= here {
                return Ok(0);
            }
            max = max.min(limit - here);
        }
        let old = self.buf.len();
        self.buf.resize(old + max as usize, 0);
        let res = segment::read_full(&mut self.file, &mut self.buf[old..]);
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(old);
                return Err(SpoolError::io("read", &self.path(), e));
            }
        };
        self.buf.truncate(old + n);
        self.buf_end += n as u64;
        Ok(n)
    }

    /// At the end of the current segment's data: moves to the next segment if it exists. A partial
    /// frame left behind in a segment the writer has moved past is corruption.
    fn advance_segment(&mut self) -> Result<bool, SpoolError> {
        let next = self.base + self.buf_end;
        let next_path = segment::segment_path(&self.dir, next);
        match std::fs::metadata(&next_path) {
            // Missing, or created but its header not written yet: nothing more to read for now.
            Ok(m) if m.len() >= SEGMENT_HEADER_LEN => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(SpoolError::io("stat", &next_path, e)),
        }
        // Everything of this segment must have been read: re-check the file length, since the
        // writer may have appended to it just before rotating.
        let len = self
            .file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &self.path(), e))?
            .len();
        if len > self.buf_end {
            return Ok(true);
        }
        if self.start < self.buf.len() {
            let offset = self.position();
            return Err(SpoolError::Corrupt {
                path: self.path(),
                offset: offset.0,
                reason: "segment ends inside a frame, but a later segment exists".into(),
            });
        }
        let (file, buf_end) = open_segment(&self.dir, next)?;
        self.file = file;
        self.base = next;
        self.buf.clear();
        self.start = 0;
        self.buf_end = buf_end;
        Ok(true)
    }

    fn path(&self) -> PathBuf {
        segment::segment_path(&self.dir, self.base)
    }

    /// After [`try_next`](Self::try_next) reported a corrupt frame: moves past the damage to the
    /// next whole, valid frame of the same segment and returns its offset, or `None` when nothing
    /// valid follows in this segment. For tools that show the damage (`ferry log dump`), never
    /// for a consumer that applies events.
    pub fn skip_damage(&mut self) -> Result<Option<Offset>, SpoolError> {
        let path = self.path();
        let here = self.position().0 - self.base;
        let data = std::fs::read(&path).map_err(|e| SpoolError::io("read", &path, e))?;
        let Some(next) = segment::next_valid_frame(&data, here as usize + 1) else {
            return Ok(None);
        };
        self.file
            .seek(SeekFrom::Start(next))
            .map_err(|e| SpoolError::io("seek", &path, e))?;
        self.buf.clear();
        self.start = 0;
        self.buf_end = next;
        Ok(Some(Offset(self.base + next)))
    }

    fn corrupt(&self, offset: Offset, e: FrameError) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path(),
            offset: offset.0,
            reason: e.to_string(),
        }
    }
}

fn open_segment(dir: &Path, base: u64) -> Result<(File, u64), SpoolError> {
    let path = segment::segment_path(dir, base);
    let mut file = File::open(&path).map_err(|e| SpoolError::io("open", &path, e))?;
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = segment::read_full(&mut file, &mut h).map_err(|e| SpoolError::io("read", &path, e))?;
    segment::check_header(&path, base, &h[..n])?;
    file.seek(SeekFrom::Start(SEGMENT_HEADER_LEN))
        .map_err(|e| SpoolError::io("seek", &path, e))?;
    Ok((file, SEGMENT_HEADER_LEN))
}

/// Reads every event from `from` to the current end of the spool in `dir`.
pub fn read_all(dir: impl AsRef<Path>, from: Offset) -> Result<Vec<(Offset, Event)>, SpoolError> {
    let mut reader = SpoolReader::open(dir, from)?;
    let mut out = Vec::new();
    while let Some(item) = reader.try_next()? {
        out.push(item);
    }
    Ok(out)
}
