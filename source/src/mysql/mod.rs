//! The MySQL/MariaDB source: table schemas from `information_schema` checked against the binlog's
//! own column metadata, value decoding for binlog images and snapshot results, and the binlog
//! streaming loop with its consistent initial snapshot.

pub mod compressed;
pub mod ddl;
pub mod decode;
pub mod gtid;
pub mod payload;
pub mod schema;
pub mod server;
pub mod source;
pub mod table_def;

pub use source::{MysqlSettings, MysqlSource, base_backup, start_consistent_snapshot};
