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

/// Double-quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` as an SQL literal (with `standard_conforming_strings` on, the default, and set in
/// the sinks' sessions).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
