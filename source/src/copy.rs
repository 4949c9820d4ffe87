//! The one chunked copy: the captured tables read inside one consistent snapshot whose source
//! position is known, handed on in batches of events (each table's whole definition, its
//! Relation, then its rows as Inserts), so that the copy and the stream meet exactly at that
//! position. The engines' readers are `postgres::snapshot` and `mysql::source::snapshot`;
//! where the batches go is a `CopyOutput`:
//!
//! - the initial snapshot writes them into the spool as one transaction at the position
//!   (`SpoolOutput`);
//! - a base backup writes them to the archive in chunks (the agent's `backup` module), while the
//!   stream keeps running.

use std::future::Future;

use ferry_proto::{Event, Position};
use ferry_spool::SpoolWriter;

use crate::error::Result;
use crate::progress::SnapshotProgress;

/// Where a copy's batches go.
pub trait CopyOutput: Send {
    /// Takes the next batch, in copy order.
    fn write(&mut self, events: Vec<Event>) -> impl Future<Output = Result<()>> + Send;
}

/// Which copy is running, for logs and `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct CopyKind {
    /// "initial snapshot" or "base backup".
    pub label: &'static str,
    pub progress: &'static SnapshotProgress,
}

pub const INITIAL: CopyKind = CopyKind {
    label: "initial snapshot",
    progress: &crate::progress::SNAPSHOT,
};

pub const BASE_BACKUP: CopyKind = CopyKind {
    label: "base backup",
    progress: &crate::progress::BASE_BACKUP,
};

/// A finished copy.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Every transaction committed at or before it is in the copy, none after it.
    pub position: Position,
    /// The source server's clock when the snapshot was taken (µs since the epoch): every
    /// transaction in the copy committed at or before it.
    pub snapshot_time: i64,
    /// Rows per table (`schema.table`), in copy order.
    pub tables: Vec<(String, u64)>,
}

impl Copied {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// The initial snapshot's output: the spool, made durable every few MiB so a large copy does not
/// wait for one fsync at its end.
#[derive(Debug)]
pub struct SpoolOutput<'a>(pub &'a mut SpoolWriter);

impl CopyOutput for SpoolOutput<'_> {
    async fn write(&mut self, events: Vec<Event>) -> Result<()> {
        for ev in &events {
            self.0.append(ev)?;
        }
        if self.0.end().0 - self.0.durable_end().0 >= 4 << 20 {
            tokio::task::block_in_place(|| self.0.commit())?;
        }
        Ok(())
    }
}
