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
pub mod spill;
pub mod table_def;
pub mod tls;
pub mod types;

pub use source::{PgSource, SourceSettings};
