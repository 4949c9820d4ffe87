//! How far a source has come, whichever kind it is: published on a watch channel for the progress
//! log, `/metrics`, `/status` and `/readyz`.

use ferry_proto::{Lsn, Position};

/// How far the source has come, for logs, `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStats {
    /// Position acknowledged to the server (flush LSN).
    pub acknowledged: u64,
    /// The server's WAL end as last reported.
    pub server_wal_end: u64,
    /// Transactions and row events written to the spool.
    pub transactions: u64,
    pub rows: u64,
    /// Commit time (µs since the epoch) of the last transaction written.
    pub last_commit_time: Option<i64>,
    /// Transactions that spilled to disk before committing.
    pub spilled: u64,
    /// Transactions the server streamed while in progress (larger than its
    /// `logical_decoding_work_mem`).
    pub streamed: u64,
    /// Streaming from the server right now.
    pub connected: bool,
    /// Row changes read per captured table (`schema.table`), committed or not.
    pub tables: std::collections::BTreeMap<String, u64>,
    /// What the server keeps for ferry, and how close it is to dropping it.
    pub retention: crate::retention::Retention,
    /// MySQL/MariaDB: the server's binlog end and every binlog file's size (`SHOW BINARY LOGS`,
    /// read every few seconds), for lag in bytes across files.
    pub binlog_now: Option<ferry_proto::BinlogPos>,
    pub binlog_sizes: Vec<(String, u64)>,
}

impl SourceStats {
    /// The source server's current position, as last seen.
    pub fn position_now(&self) -> Option<Position> {
        if let Some(b) = &self.binlog_now {
            return Some(Position::Binlog(b.clone()));
        }
        (self.server_wal_end > 0).then_some(Position::Postgres(Lsn(self.server_wal_end)))
    }

    /// Slot lag in bytes: WAL the server keeps for ferry.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end.saturating_sub(self.acknowledged)
    }
}
