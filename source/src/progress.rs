//! The copies' progress, process-wide (one source, so at most one initial snapshot and one base
//! backup at a time): the copy code of either source updates it, `/metrics` reads it.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct SnapshotProgress {
    pub tables_total: AtomicU64,
    pub tables_done: AtomicU64,
    pub rows: AtomicU64,
    /// 1 while a snapshot runs.
    pub running: AtomicU64,
}

pub static SNAPSHOT: SnapshotProgress = SnapshotProgress {
    tables_total: AtomicU64::new(0),
    tables_done: AtomicU64::new(0),
    rows: AtomicU64::new(0),
    running: AtomicU64::new(0),
};

pub static BASE_BACKUP: SnapshotProgress = SnapshotProgress {
    tables_total: AtomicU64::new(0),
    tables_done: AtomicU64::new(0),
    rows: AtomicU64::new(0),
    running: AtomicU64::new(0),
};

impl SnapshotProgress {
    pub fn start(&self, tables: u64) {
        self.tables_total.store(tables, Ordering::Relaxed);
        self.tables_done.store(0, Ordering::Relaxed);
        self.rows.store(0, Ordering::Relaxed);
        self.running.store(1, Ordering::Relaxed);
    }

    pub fn set(&self, tables_done: u64, rows: u64) {
        self.tables_done.store(tables_done, Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.running.store(0, Ordering::Relaxed);
    }
}
