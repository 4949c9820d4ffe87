//! Connecting to PostgreSQL with TLS as the URL says ([`tls`]), and quoting.

pub mod tls;

pub use tls::{PgStream, SslMode, Tls, parse_url};

/// Opens a connection to `url` (with its `sslmode` and `sslrootcert`) within its time limit and
/// drives it on a task; `what` names it in logs.
pub async fn connect(
    url: &str,
    what: &'static str,
) -> crate::error::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    Tls::connect_url(url, what).await
}

/// A PostgreSQL error with the server's severity, SQLSTATE, message and detail: tokio-postgres's
/// own text for a server error is only "db error", which tells a person nothing.
pub fn describe(e: &tokio_postgres::Error) -> String {
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

/// Double-quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` as an SQL literal (with `standard_conforming_strings` on, the default, and set in
/// the sinks' sessions).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
