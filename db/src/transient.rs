//! Which database errors are worth retrying, decided once per engine for every connection ferry
//! has (source, sinks, commands): by SQLSTATE or MySQL error code where the server sent one, by
//! the I/O underneath otherwise.

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
