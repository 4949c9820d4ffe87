//! The spool's single writer: appends frames to the active segment, makes them durable with one
//! fsync per batch (group commit), rotates segments by size, recovers a torn tail after a crash,
//! and deletes segments every cursor has passed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ferry_proto::{Event, FrameError, Relation, RelationId, frame};
use tokio::sync::watch;

use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::{Offset, SpoolError};

/// Tunables of the spool writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// A segment is closed once it holds at least this many bytes (default 64 MiB).
    pub segment_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`SpoolWriter::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Bytes cut from the end of the last segment: a write that was never made durable.
    pub truncated_bytes: u64,
    /// Why the cut was made, when one was.
    pub reason: Option<String>,
}

/// The spool's writer. One per directory, enforced with a lock file.
#[derive(Debug)]
pub struct SpoolWriter {
    dir: PathBuf,
    opts: WriterOptions,
    _lock: File,
    file: File,
    base: u64,
    /// Bytes written to the active segment file (durable or not).
    written: u64,
    /// Frames appended but not yet written.
    buf: Vec<u8>,
    relations: BTreeMap<RelationId, Relation>,
    /// Whether the active segment holds any event besides its prologue; an empty one is never
    /// rotated, however large the prologue.
    segment_has_events: bool,
    durable: watch::Sender<Offset>,
    /// Set after a failed write or fsync: the file's state is unknown, so nothing more is written.
    failed: bool,
}

impl SpoolWriter {
    /// Opens (creating if needed) the spool in `dir`, recovering from an earlier crash.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: WriterOptions,
    ) -> Result<(Self, Recovery), SpoolError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SpoolError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir));
            }
            Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io("lock", &lock_path, e)),
        }

        let (base, file, written, relations, recovery) = load_active(&dir)?;
        let (durable, _) = watch::channel(Offset(base + written));
        let mut writer = SpoolWriter {
            dir,
            opts,
            _lock: lock,
            file,
            base,
            written,
            buf: Vec::with_capacity(1 << 20),
            segment_has_events: written > SEGMENT_HEADER_LEN,
            relations,
            durable,
            failed: false,
        };
        if writer.written == SEGMENT_HEADER_LEN && !writer.relations.is_empty() {
            writer.write_prologue()?;
            writer.commit()?;
        }
        Ok((writer, recovery))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one event to the pending batch and returns its offset. Nothing is durable, or visible
    /// to readers, until [`commit`](Self::commit).
    pub fn append(&mut self, event: &Event) -> Result<Offset, SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        if self.segment_has_events
            && self.written + self.buf.len() as u64 >= self.opts.segment_bytes
        {
            self.rotate()?;
        }
        let offset = self.end();
        self.segment_has_events = true;
        frame::encode(event, &mut self.buf).map_err(SpoolError::Frame)?;
        if let Event::Relation(r) = event {
            self.relations.insert(r.id, r.clone());
        }
        Ok(offset)
    }

    /// Appends one frame that is already encoded (header and payload, as [`frame::encode`]
    /// writes it), copying it as it is: for events ferry encoded itself moments ago (a spilled
    /// transaction), so they are not decoded and encoded again. The frame must not hold a
    /// Relation event (the writer keeps the relation catalog from decoded events), and its
    /// header must be valid; its checksum is verified by every reader.
    pub fn append_frame(&mut self, frame: &[u8]) -> Result<Offset, SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        let header = frame::decode_header(frame).map_err(SpoolError::Frame)?;
        if header.frame_len() != frame.len() {
            return Err(SpoolError::Frame(FrameError::TrailingBytes(
                frame.len().saturating_sub(header.frame_len()),
            )));
        }
        if self.segment_has_events
            && self.written + self.buf.len() as u64 >= self.opts.segment_bytes
        {
            self.rotate()?;
        }
        let offset = self.end();
        self.segment_has_events = true;
        self.buf.extend_from_slice(frame);
        Ok(offset)
    }

    /// Writes the pending batch and fsyncs it: one fsync for the whole batch. Returns the durable end.
    pub fn commit(&mut self) -> Result<Offset, SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        if !self.buf.is_empty() {
            let path = segment::segment_path(&self.dir, self.base);
            let res = self
                .file
                .write_all(&self.buf)
                .and_then(|_| self.file.sync_data());
            if let Err(e) = res {
                self.failed = true;
                return Err(SpoolError::io("write", &path, e));
            }
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        let end = Offset(self.base + self.written);
        self.durable.send_replace(end);
        Ok(end)
    }

    /// Offset the next appended event will get.
    pub fn end(&self) -> Offset {
        Offset(self.base + self.written + self.buf.len() as u64)
    }

    /// The durable end: readers may read everything before it.
    pub fn durable_end(&self) -> Offset {
        *self.durable.borrow()
    }

    /// A receiver of the durable end, for readers that tail the writer.
    pub fn subscribe(&self) -> watch::Receiver<Offset> {
        self.durable.subscribe()
    }

    /// The relation catalog as of the last appended event.
    pub fn relations(&self) -> &BTreeMap<RelationId, Relation> {
        &self.relations
    }

    /// Deletes every segment that lies wholly before `min`, the lowest offset any cursor still
    /// needs. The active segment is never deleted. Returns how many segments were removed.
    pub fn truncate_before(&mut self, min: Offset) -> Result<usize, SpoolError> {
        let bases = segment::list(&self.dir)?;
        let mut removed = 0;
        for pair in bases.windows(2) {
            let (seg, next) = (pair[0], pair[1]);
            if next > min.0 || seg == self.base {
                break;
            }
            let path = segment::segment_path(&self.dir, seg);
            fs::remove_file(&path).map_err(|e| SpoolError::io("remove", &path, e))?;
            removed += 1;
        }
        if removed > 0 {
            segment::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Removes everything from `offset` on (an incomplete source transaction at the end of the log,
    /// found at startup). Only for use before any reader starts; pending appends are discarded.
    pub fn truncate_from(&mut self, offset: Offset) -> Result<(), SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed);
        }
        self.buf.clear();
        let bases = segment::list(&self.dir)?;
        let Some(&keep) = bases.iter().rev().find(|&&b| b < offset.0) else {
            return Err(SpoolError::InvalidCursor(offset));
        };
        for &b in bases.iter().filter(|&&b| b > keep) {
            let path = segment::segment_path(&self.dir, b);
            fs::remove_file(&path).map_err(|e| SpoolError::io("remove", &path, e))?;
        }
        let path = segment::segment_path(&self.dir, keep);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        let len = (offset.0 - keep).max(SEGMENT_HEADER_LEN);
        file.set_len(len)
            .and_then(|_| file.sync_data())
            .map_err(|e| SpoolError::io("truncate", &path, e))?;
        drop(file);
        segment::sync_dir(&self.dir)?;
        let (base, file, written, relations, _) = load_active(&self.dir)?;
        self.base = base;
        self.file = file;
        self.written = written;
        self.relations = relations;
        self.segment_has_events = written > SEGMENT_HEADER_LEN;
        self.durable.send_replace(Offset(base + written));
        if written == SEGMENT_HEADER_LEN && !self.relations.is_empty() {
            self.write_prologue()?;
            self.commit()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.commit()?;
        let next = self.base + self.written;
        let (file, written) = create_segment(&self.dir, next)?;
        self.file = file;
        self.base = next;
        self.written = written;
        self.segment_has_events = false;
        self.write_prologue()
    }

    /// Every segment with frames starts with the relation catalog, so a reader can start at any
    /// segment and still resolve every relation id.
    fn write_prologue(&mut self) -> Result<(), SpoolError> {
        for rel in self.relations.values() {
            frame::encode(&Event::Relation(rel.clone()), &mut self.buf)
                .map_err(SpoolError::Frame)?;
        }
        Ok(())
    }
}

type Active = (u64, File, u64, BTreeMap<RelationId, Relation>, Recovery);

/// Finds the active (last) segment, cuts an incomplete write from its end, and loads the relation
/// catalog.
fn load_active(dir: &Path) -> Result<Active, SpoolError> {
    let bases = segment::list(dir)?;
    let mut recovery = Recovery {
        segments: bases.len(),
        ..Recovery::default()
    };
    let mut relations = BTreeMap::new();
    let (base, file, written) = match bases.last() {
        None => {
            let (file, written) = create_segment(dir, 0)?;
            recovery.segments = 1;
            (0, file, written)
        }
        Some(&base) => {
            let path = segment::segment_path(dir, base);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| SpoolError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| SpoolError::io("stat", &path, e))?
                .len();
            let written = if len < SEGMENT_HEADER_LEN {
                // Crash while creating the segment: lay the header down again.
                file.set_len(0)
                    .and_then(|_| file.write_all(&segment::header_bytes(base)))
                    .and_then(|_| file.sync_data())
                    .map_err(|e| SpoolError::io("repair", &path, e))?;
                SEGMENT_HEADER_LEN
            } else {
                let mut last_before = None;
                let scan = segment::scan(&path, base, |_, ev| {
                    if let Event::Commit(ferry_proto::Commit { position, .. })
                    | Event::Heartbeat(ferry_proto::Heartbeat { position, .. }) = &ev
                    {
                        last_before = Some(position.clone());
                    }
                    remember(&mut relations, ev)
                })?;
                if scan.damaged() {
                    return Err(damage(&path, base, &scan, last_before)?);
                }
                if scan.good_end < scan.file_len {
                    recovery.truncated_bytes = scan.file_len - scan.good_end;
                    recovery.reason = scan.stopped_by.map(|e| e.to_string());
                    tracing::warn!(
                        segment = %path.display(),
                        cut_bytes = recovery.truncated_bytes,
                        reason = recovery.reason.as_deref().unwrap_or(""),
                        "spool: cutting a write a crash left incomplete (nothing valid follows it) \
                         from the end of the log"
                    );
                    file.set_len(scan.good_end)
                        .and_then(|_| file.sync_data())
                        .map_err(|e| SpoolError::io("truncate", &path, e))?;
                }
                scan.good_end
            };
            if written == SEGMENT_HEADER_LEN && bases.len() >= 2 {
                // The active segment never got its relation prologue: take the catalog from
                // the segment before it, which is complete.
                let prev = bases[bases.len() - 2];
                let prev_path = segment::segment_path(dir, prev);
                segment::scan(&prev_path, prev, |_, ev| remember(&mut relations, ev))?;
            }
            file.seek(SeekFrom::Start(written))
                .map_err(|e| SpoolError::io("seek", &path, e))?;
            (base, file, written)
        }
    };
    Ok((base, file, written, relations, recovery))
}

/// The error for a segment damaged in the middle: where, why, and the positions around it.
fn damage(
    path: &Path,
    base: u64,
    scan: &segment::Scan,
    last_before: Option<ferry_proto::Position>,
) -> Result<SpoolError, SpoolError> {
    let valid_from = scan.valid_after.unwrap_or(scan.file_len);
    let data = fs::read(path).map_err(|e| SpoolError::io("read", path, e))?;
    let mut first_after = None;
    let mut pos = valid_from as usize;
    while first_after.is_none() && pos < data.len() {
        let Ok((ev, n)) = frame::decode(&data[pos..]) else {
            break;
        };
        first_after = ev.position().map(ToString::to_string);
        pos += n;
    }
    let none = || "none".to_owned();
    Ok(SpoolError::Damaged {
        path: path.to_owned(),
        offset: Offset(base + scan.good_end),
        file_pos: scan.good_end,
        reason: scan
            .stopped_by
            .as_ref()
            .map_or_else(none, ToString::to_string),
        valid_from: Offset(base + valid_from),
        last_before: last_before.map_or_else(none, |p| p.to_string()),
        first_after: first_after.unwrap_or_else(none),
    })
}

fn remember(relations: &mut BTreeMap<RelationId, Relation>, ev: Event) {
    if let Event::Relation(r) = ev {
        relations.insert(r.id, r);
    }
}

/// Creates a segment whose header is complete the moment its name appears: it is written under a
/// temporary name and renamed, so a reader listing the directory never finds a segment shorter
/// than its header.
fn create_segment(dir: &Path, base: u64) -> Result<(File, u64), SpoolError> {
    let path = segment::segment_path(dir, base);
    if path.exists() {
        return Err(SpoolError::io(
            "create",
            &path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let tmp = path.with_extension("seg.tmp");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| SpoolError::io("create", &tmp, e))?;
    file.write_all(&segment::header_bytes(base))
        .and_then(|_| file.sync_data())
        .map_err(|e| SpoolError::io("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| SpoolError::io("rename", &tmp, e))?;
    segment::sync_dir(dir)?;
    Ok((file, SEGMENT_HEADER_LEN))
}
