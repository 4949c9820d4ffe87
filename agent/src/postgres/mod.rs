//! The PostgreSQL source: ferry's own replication connection, the pgoutput decoder, value
//! conversion, slot and publication management, the initial snapshot, and the streaming loop.

pub mod catalog;
pub mod ddl;
pub mod keyless;
pub mod pgoutput;
pub mod replication;
pub mod schema_change;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod table_def;
pub mod tls;
pub mod types;

pub use source::{PgSource, SourceSettings};

/// Why a server older than PostgreSQL 11 is refused: before 10 there is no pgoutput, and 10's
/// logical replication does not carry TRUNCATE, so a replica would quietly keep rows the source
/// removed.
pub fn unsupported_version(version_num: i32) -> String {
    format!(
        "PostgreSQL {}.{} is not supported: ferry needs PostgreSQL 11 or later (before 11, \
         logical replication does not carry TRUNCATE, so replicas would keep rows the source \
         removed)",
        version_num / 10_000,
        version_num % 10_000
    )
}
