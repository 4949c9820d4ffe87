//! ferry's event model and binary frame format.
//!
//! This crate owns the data every other part of ferry agrees on: [`Event`]s with their
//! [`Position`]s and [`Value`]s, and the [`frame`] that carries one event on disk or on the wire.
//! It does no I/O.

pub mod civil;
pub mod event;
pub mod frame;
pub mod position;
pub mod table;
pub mod value;

pub use event::{
    BACKFILL_PREFIX, Begin, Column, Commit, DROP_TABLE_PREFIX, Delete, Event, Heartbeat, Insert,
    Message, OldRow, RENAME_COLUMN_PREFIX, RENAME_PREFIX, Relation, RelationId, ReplicaIdentity,
    Truncate, Update,
};
pub use frame::FrameError;
pub use position::{
    BinlogPos, GtidSet, Gtids, Lsn, MariaGtid, MariaGtidList, MysqlGtids, ParsePositionError,
    Position,
};
pub use table::{TABLE_PREFIX, TableDef};
pub use value::{Micros, Row, Value};

/// Strategies and samples shared by this crate's tests and other crates' tests.
#[doc(hidden)]
pub mod samples;

#[cfg(test)]
mod position_tests;
