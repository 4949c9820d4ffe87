//! The agent's error type. Whether an error is worth retrying is decided per engine once, in
//! `ferry_db::transient` (`is_transient_postgres`, `is_transient_mysql`, `is_transient_sqlstate`),
//! for the sources and the sinks alike.

use std::io;

use crate::postgres::pgoutput::DecodeError;

/// An error from the server, with the fields operators need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    /// SQLSTATE code.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: server error {error}")]
    Server {
        context: String,
        error: Box<DbError>,
    },
    #[error("postgres: {}", ferry_db::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("mysql: {0}")]
    MySql(#[from] mysql_async::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Spool(#[from] ferry_spool::SpoolError),
    /// TLS could not be set up as `sslmode` demands (certificate not trusted, server without
    /// TLS): not transient.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("{0}")]
    Config(String),
    /// The source no longer has what ferry needs (slot dropped or invalidated, WAL removed): a gap
    /// that must never be skipped silently.
    #[error("{0}")]
    Gap(String),
    #[error("{0}")]
    Fatal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ferry_db::ConnectError> for Error {
    fn from(e: ferry_db::ConnectError) -> Self {
        use ferry_db::ConnectError as C;
        match e {
            C::Postgres(p) => Error::Postgres(p),
            C::Io { context, source } => Error::Io { context, source },
            C::Tls(t) => Error::Tls(t),
            C::Config(c) => Error::Config(c),
            C::Protocol(p) => Error::Protocol(p),
        }
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying after a pause (reconnecting if needed) may succeed: connection loss,
    /// server shutdown or restart, too many connections, a slot still held by a walsender that is
    /// going away, failover. Everything else needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Server { error, .. } => is_transient_sqlstate(&error.code),
            Error::Postgres(e) => ferry_db::transient::is_transient_postgres(e),
            Error::MySql(e) => ferry_db::transient::is_transient_mysql(e),
            _ => false,
        }
    }
}

pub use ferry_db::transient::is_transient_sqlstate;
