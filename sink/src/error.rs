//! The sink crate's error type, and the one function that decides whether an error is worth
//! retrying (transient) or needs the `on_error` policy or a person (permanent).

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("target: {}", ferry_db::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Spool(#[from] ferry_spool::SpoolError),
    /// A broker or client error; librdkafka retries what it can itself, so what reaches ferry is
    /// retried by restarting the session (a fenced or failed producer is created anew).
    #[error("kafka: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("target: {0}")]
    MySql(#[from] mysql_async::Error),
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A value the target cannot take (for example a MySQL time of 30 hours into `time`).
    #[error("{0}")]
    Value(String),
    /// An event failed permanently and `on_error = "halt"`: the sink stops here.
    #[error(transparent)]
    Halted(Box<Halt>),
    #[error("{0}")]
    Fatal(String),
}

/// Where and why a sink halted.
#[derive(Debug, thiserror::Error)]
#[error(
    "sink {sink} halted at {position} on {table} key {key}: {error} \
     (fix the target or set on_error = \"skip\" or \"dead_letter\", then restart)"
)]
pub struct Halt {
    pub sink: String,
    pub position: String,
    pub table: String,
    pub key: String,
    pub error: String,
}

pub type Result<T, E = SinkError> = std::result::Result<T, E>;

/// A connection that could not be set up keeps its class: a certificate that does not verify
/// needs a person, a lost connection is retried.
impl From<ferry_db::ConnectError> for SinkError {
    fn from(e: ferry_db::ConnectError) -> Self {
        use ferry_db::ConnectError as C;
        match e {
            C::Postgres(p) => SinkError::Postgres(p),
            C::Io { context, source } => SinkError::Io { context, source },
            C::Tls(t) => SinkError::Config(format!("TLS: {t}")),
            C::Config(c) => SinkError::Config(c),
            C::Protocol(p) => SinkError::Fatal(format!("protocol: {p}")),
        }
    }
}

impl SinkError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            context: context.into(),
            source,
        }
    }

    /// Connection loss, shutdown or restart of the target, too many connections, serialization
    /// failure, deadlock, read-only during failover: retry (reconnecting) after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Postgres(e) => is_transient_postgres(e),
            SinkError::Io { .. } | SinkError::Kafka(_) => true,
            SinkError::MySql(e) => is_transient_mysql(e),
            _ => false,
        }
    }

    /// The SQLSTATE of a target error, if it has one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SinkError::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

pub use ferry_db::transient::{is_transient_mysql, is_transient_postgres, is_transient_sqlstate};
