//! ferry's sources: each reads committed changes from its server and writes them into the spool
//! in whole transactions, through the one writer both share (`capture`).
//!
//! - `postgres/`: a logical replication slot and pgoutput (the slot, publication, replication
//!   connection, decoding, the initial snapshot, schema changes).
//! - `mysql/`: the binlog, read as a replica (decoding, DDL, the initial snapshot).
//! - `capture/`: what both share: the spool writer with group commit and truncation, a
//!   transaction held until its commit, stats, the server prerequisites.
//! - `copy`: the one chunked copy (initial snapshot, base backups): tables read in a consistent
//!   snapshot at a known position, handed to an output.
//! - `lag`, `retention`, `progress`: the figures the sources publish (lag in seconds, what the
//!   server keeps for ferry, the snapshot's progress); `filter`, `table_def`: which tables, and
//!   their whole definitions; `error`: the sources' error and its retry class.

pub mod capture;
pub mod copy;
pub mod error;
pub mod filter;
pub mod lag;
pub mod mysql;
pub mod postgres;
pub mod progress;
pub mod retention;
pub mod table_def;
