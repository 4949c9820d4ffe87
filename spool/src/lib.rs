//! ferry's spool: the durable, append-only event log between a source and its sinks.
//!
//! The agent's pipeline is the one [`SpoolWriter`]; every sink reads with its own [`SpoolReader`]
//! from its own offset, so a slow or stopped sink never holds back the source or the other sinks.
//! The log is a directory of segment files ([`segment`]) holding frames of `ferry_proto`; the
//! writer makes a batch of frames durable with one fsync (group commit) and publishes the durable
//! end, which tailing readers wait on. Named cursors ([`Cursors`]) record how far each consumer has
//! made its work durable, and the segments below all of them can be deleted.
//!
//! Both `ferry-agent` (writer) and `ferry-sink` (readers) depend on this crate; it depends only on
//! `ferry-proto`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub mod cursor;
pub mod reader;
pub mod segment;
pub mod writer;

pub use cursor::Cursors;
pub use reader::{SpoolReader, read_all};
pub use writer::{Recovery, SpoolWriter, WriterOptions};

/// A byte offset in the spool's log: names one frame for as long as its segment exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Offset {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(Offset)
    }
}

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool: {} is in use by another ferry process (it holds {}/LOCK)",
        .0.display(), .0.display()
    )]
    Locked(PathBuf),
    #[error("spool: {} holds no segments", .0.display())]
    Empty(PathBuf),
    #[error(
        "spool: corrupt data in {} at offset {offset}: {reason}. Nothing was skipped or deleted; \
         `ferry log dump` shows the damage and what follows it. Ways out: restore the spool \
         directory from a copy; or, if the source still holds the changes after the damage \
         (ack = \"applied\" and no sink's checkpoint past offset {offset}), stop ferry, cut the \
         log at that offset and start again; otherwise re-create the replicas from a new snapshot",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "spool: {} is damaged at offset {offset} ({reason}), and valid frames follow from offset \
         {valid_from}: this is not a write cut short by a crash (that can only be the log's last \
         bytes) but data changed after it was written (a disk or filesystem fault, or an edit). \
         ferry deleted nothing. Affected: the transactions after position {last_before} \
         (the frame after the damage carries {first_after}). Ways out: restore the spool \
         directory from a copy; or, with ack = \"applied\" and no sink's checkpoint past offset \
         {offset} (see `ferry status`), the source still holds these changes: stop ferry, cut \
         this segment at byte {file_pos} (`truncate -s {file_pos} {}`), delete the segments \
         after it, and start ferry, which reads them from the source again; otherwise \
         re-create the replicas from a new snapshot",
        path.display(), path.display()
    )]
    Damaged {
        path: PathBuf,
        /// Spool offset of the first bad byte.
        offset: Offset,
        /// Position in the segment file of the first bad byte.
        file_pos: u64,
        reason: String,
        /// Spool offset of the first valid frame after the damage.
        valid_from: Offset,
        /// The last position recorded before the damage, or "none".
        last_before: String,
        /// The first position recorded after it, or "none".
        first_after: String,
    },
    #[error(
        "spool: offset {requested} is no longer in the spool (oldest is {oldest}); the segments \
         were deleted, so this consumer must be re-synchronised from a new snapshot"
    )]
    Gap { requested: Offset, oldest: Offset },
    #[error("spool: offset {0} is not the start of a frame")]
    InvalidCursor(Offset),
    #[error("spool: cannot encode event: {0}")]
    Frame(#[source] ferry_proto::FrameError),
    #[error("spool: an earlier write failed; the writer must be reopened to recover")]
    Failed,
    #[error("spool: this reader does not tail a writer")]
    NotTailing,
    #[error("spool: bad cursor file {}: {reason}", path.display())]
    BadCursor { path: PathBuf, reason: String },
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
