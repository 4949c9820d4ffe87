//! ferry's database plumbing, shared by the sources, the sinks and the commands: connecting to
//! PostgreSQL (with `sslmode`/`sslrootcert` as libpq means them) and to MySQL/MariaDB (with
//! `ssl_ca`), each within a time limit; quoting; which errors are worth retrying and the backoff
//! between tries; and keeping secrets out of logs.

pub mod error;
pub mod mysql;
pub mod postgres;
pub mod redact;
pub mod retry;
pub mod transient;

pub use error::ConnectError;

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
