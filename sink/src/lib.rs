//! ferry's sink workers.
//!
//! A sink reads the spool from its own cursor and applies whole source transactions, in commit
//! order, to one target: a PostgreSQL or MySQL/MariaDB replica, or Kafka topics. This crate owns
//! what every sink shares, the error policy ([`OnError`]) and the retry schedule ([`Backoff`]);
//! the target-specific workers live in their own modules as they are built.

pub mod db;
pub mod deadletter;
pub mod error;
pub mod kafka;
pub mod mysql;
pub mod policy;
pub mod postgres;
pub mod progress;
pub mod redact;
pub mod retry;
pub mod types;

pub use error::{SinkError, is_transient_sqlstate};
pub use policy::OnError;
pub use retry::Backoff;

/// How long any connection attempt (source or target, PostgreSQL or MySQL/MariaDB) may take
/// before it counts as failed and is retried like a refused one.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The limit for a whole PostgreSQL connection attempt, handshake included (tokio-postgres's own
/// `connect_timeout` covers the TCP connect only): the URL's `connect_timeout` when it sets one,
/// else [`CONNECT_TIMEOUT`].
pub fn pg_connect_limit(cfg: &tokio_postgres::Config) -> std::time::Duration {
    cfg.get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
}

/// The error of a connection attempt that ran out of time: I/O, so retried like a refused one.
pub fn connect_timed_out(limit: std::time::Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} s", limit.as_secs()),
    )
}
