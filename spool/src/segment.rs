//! Segment files: naming, the segment header, and scanning a segment's frames.
//!
//! A segment is `<base>.seg`, where `<base>` (20 decimal digits) is the spool offset of the file's
//! first byte; the next segment's base is this base plus this file's length, so a spool offset
//! names one byte of one segment. The file starts with a [`SEGMENT_HEADER_LEN`]-byte header:
//!
//! ```text
//! 0  8  magic    b"FERRYSEG"
//! 8  4  version  SEGMENT_VERSION, u32 little-endian
//! 12 4  reserved 0
//! 16 8  base     the segment's base offset, u64 little-endian (must match the file name)
//! ```
//!
//! followed by frames (`ferry_proto::frame`) back to back.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ferry_proto::Event;
use ferry_proto::frame::{self, FrameError, HEADER_LEN};

use crate::SpoolError;

pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYSEG";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 24;
const EXT: &str = "seg";

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{EXT}"))
}

pub fn header_bytes(base: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    h
}

/// Base offsets of the segments in `dir`, ascending. Files that are not segments are ignored.
pub fn list(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut bases = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Checks a segment header read from the file for segment `base`.
pub fn check_header(path: &Path, base: u64, h: &[u8]) -> Result<(), SpoolError> {
    let corrupt = |what: &str| SpoolError::Corrupt {
        path: path.to_owned(),
        offset: base,
        reason: what.to_owned(),
    };
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err(corrupt("segment header is truncated"));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(corrupt("not a ferry spool segment (bad magic)"));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(corrupt(&format!(
            "segment version {version} is not supported (this build reads {SEGMENT_VERSION})"
        )));
    }
    let stored = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    if stored != base {
        return Err(corrupt(&format!(
            "header says base {stored}, file name says {base}"
        )));
    }
    Ok(())
}

/// One pass over a segment's frames, from the header to the first frame that does not decode.
#[derive(Debug)]
pub struct Scan {
    /// File position just past the last good frame.
    pub good_end: u64,
    /// File length.
    pub file_len: u64,
    /// The error that stopped the scan before the end of the file, if any.
    pub stopped_by: Option<FrameError>,
    /// When the scan stopped early: the file position of the first whole, valid frame after the
    /// bad bytes, if there is one. A torn write leaves nothing valid after it (it can only follow
    /// the last fsync); valid frames after bad bytes mean the log was damaged after it was
    /// written.
    pub valid_after: Option<u64>,
}

impl Scan {
    /// Whether the scan stopped at damage rather than at a torn write at the end.
    pub fn damaged(&self) -> bool {
        self.stopped_by.is_some() && self.valid_after.is_some()
    }
}

/// The file position of the first whole, valid frame that starts at or after `from` in `data`
/// (a segment's bytes), if any.
pub fn next_valid_frame(data: &[u8], from: usize) -> Option<u64> {
    let mut pos = from.max(SEGMENT_HEADER_LEN as usize);
    while pos + HEADER_LEN <= data.len() {
        let hit = data[pos..]
            .windows(2)
            .position(|w| w == frame::MAGIC)
            .map(|i| pos + i)?;
        if frame::decode(&data[hit..]).is_ok() {
            return Some(hit as u64);
        }
        pos = hit + 1;
    }
    None
}

/// Reads a whole segment, calling `each` with every good frame's file position and event.
pub fn scan(path: &Path, base: u64, mut each: impl FnMut(u64, Event)) -> Result<Scan, SpoolError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| SpoolError::io("read", path, e))?;
    check_header(path, base, &data)?;
    let mut pos = SEGMENT_HEADER_LEN as usize;
    let mut stopped_by = None;
    while pos < data.len() {
        match frame::decode(&data[pos..]) {
            Ok((event, n)) => {
                each(pos as u64, event);
                pos += n;
            }
            Err(e) => {
                stopped_by = Some(e);
                break;
            }
        }
    }
    let valid_after = stopped_by
        .as_ref()
        .and_then(|_| next_valid_frame(&data, pos + 1));
    Ok(Scan {
        good_end: pos as u64,
        file_len: data.len() as u64,
        stopped_by,
        valid_after,
    })
}

/// Reads exactly `buf.len()` bytes unless the file ends first; returns how many were read.
pub fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A frame's header bytes as an array, for [`frame::decode_payload`].
pub fn header_array(b: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&b[..HEADER_LEN]);
    h
}

/// Makes a directory entry change (create, rename, delete) durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("sync directory", dir, e))
}
