//! The error of setting up a database connection: what the URL or TLS settings say is wrong, or
//! what the server or the network answered. Sources, sinks and commands turn it into their own
//! error type, keeping its class.

/// A connection that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or a TLS setting is wrong: not transient.
    #[error("{0}")]
    Config(String),
    /// TLS could not be set up as `sslmode` demands (certificate not trusted, server without
    /// TLS): not transient.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

impl ConnectError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConnectError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether trying again later may succeed: I/O, and PostgreSQL errors
    /// [`crate::transient::is_transient_postgres`] says are.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Io { .. } => true,
            ConnectError::Postgres(e) => crate::transient::is_transient_postgres(e),
            _ => false,
        }
    }
}
