//! The sink crate's error type, and the one function that decides whether an error is worth
//! retrying (transient) or needs the `on_error` policy or a person (permanent).

use ferry_proto::Position;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("target: {}", describe(.0))]
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
    pub position: Position,
    pub table: String,
    pub key: String,
    pub error: String,
}

/// A target error with the server's message, detail and SQLSTATE (tokio-postgres's own text is
/// only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

pub type Result<T, E = SinkError> = std::result::Result<T, E>;

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

/// PostgreSQL errors worth retrying, for every connection ferry has (source and sinks): by
/// SQLSTATE when the server sent one ([`is_transient_sqlstate`]); without one, a closed
/// connection or I/O underneath (reset, refused, timed out). Anything else without a SQLSTATE (a
/// value that does not convert, a bad configuration, a protocol surprise) needs a person.
pub fn is_transient_postgres(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return is_transient_sqlstate(code.code());
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// MySQL/MariaDB errors worth retrying: the connection lost or refused (I/O, 2006/2013 arrive as
/// I/O errors in mysql_async), too many connections (1040), shutdown in progress (1053, 1077),
/// network errors (1152, 1158–1161), lock wait timeout (1205), deadlock (1213), read-only during
/// a failover (1290, 1836), query interrupted or connection killed (1317, 1927).
pub fn is_transient_mysql(e: &mysql_async::Error) -> bool {
    match e {
        // A certificate that does not verify needs a person, not a retry.
        mysql_async::Error::Io(mysql_async::IoError::Tls(_)) => false,
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => !io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        mysql_async::Error::Driver(d) => matches!(
            d,
            mysql_async::DriverError::ConnectionClosed | mysql_async::DriverError::PoolDisconnected
        ),
        mysql_async::Error::Server(s) => matches!(
            s.code,
            1040 | 1053 | 1077 | 1152 | 1158..=1161 | 1205 | 1213 | 1290 | 1317 | 1836 | 1927
        ),
        _ => false,
    }
}

/// SQLSTATEs worth retrying: connection exceptions (08), insufficient resources (53: too many
/// connections, out of memory, disk full), operator intervention (57P01 admin shutdown, 57P02
/// crash shutdown, 57P03 cannot connect now), serialization failure and deadlock (40001, 40P01),
/// object in use (55006: a replication slot still held by a departing walsender), lock not
/// available (55P03), read-only transaction (25006: a primary that became a standby in a
/// failover).
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55006" | "55P03" | "25006"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        for t in [
            "08006", "08001", "53300", "57P01", "40001", "40P01", "25006",
        ] {
            assert!(is_transient_sqlstate(t), "{t}");
        }
        for p in ["23505", "23503", "22P02", "42703", "42P01", "XX000"] {
            assert!(!is_transient_sqlstate(p), "{p}");
        }
    }
}
