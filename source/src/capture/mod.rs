//! What both sources share on the way into the spool: a transaction held until its commit
//! (`spill`), the spool written in whole transactions with group commit, truncation and the
//! resume point read back from its tail (`writer`), and the progress each source publishes
//! (`stats`), and what a source server must offer (`prerequisite`). Each source keeps only its protocol: `postgres/` the slot, replication and
//! pgoutput; `mysql/` the binlog.

pub mod prerequisite;
pub mod spill;
pub mod stats;
pub mod writer;
