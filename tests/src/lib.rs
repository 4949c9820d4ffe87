//! The real-server test harness: private PostgreSQL, MariaDB and Apache Kafka servers, each a child
//! process on free loopback ports in its own temporary directory, stopped when dropped, even when
//! the test panics, and killed by the kernel if the test process itself dies.
//!
//! Nothing here is a mock: the servers are the binaries a user runs (Debian's PostgreSQL and
//! MariaDB, Kafka's jars from Maven Central run with the machine's Java). `scripts/install-deps`
//! installs them; a missing binary is an error that says to run it.

#![allow(clippy::unwrap_used)] // a harness failure should fail the test loudly

pub mod ferry;
pub mod http;
pub mod kafka;
pub mod mariadb;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod samples;

pub use kafka::Kafka;
pub use mariadb::MariaDb;
pub use postgres::Postgres;

/// Errors of the harness: what failed and where its log is.
pub type Result<T> = std::result::Result<T, String>;
