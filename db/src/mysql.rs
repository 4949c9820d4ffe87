//! Connecting to MySQL/MariaDB: URL options (with `ssl_ca`), a connect time limit mysql_async
//! does not have, and identifier quoting.

use mysql_async::{Conn, Opts};

/// Opens a connection within [`crate::CONNECT_TIMEOUT`] (mysql_async has no connect timeout of
/// its own, and an unanswered SYN or a server that accepts and never greets would otherwise hang
/// for minutes); running out of time is an I/O error (`TimedOut`),
/// which every caller retries as it retries a refused connection.
pub async fn connect(opts: Opts) -> std::result::Result<Conn, mysql_async::Error> {
    match tokio::time::timeout(crate::CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(r) => r,
        Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
            crate::connect_timed_out(crate::CONNECT_TIMEOUT),
        ))),
    }
}

/// Connection options from a `mysql://` URL. Besides mysql_async's own parameters
/// (`require_ssl=true`, `verify_ca`, `verify_identity`, `built_in_roots`), `ssl_ca=PATH` names the
/// CA certificate (PEM) the server's certificate must chain to, and turns TLS on.
pub fn opts_from_url(url: &str) -> std::result::Result<Opts, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut ca = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| match kv.split_once('=') {
            Some(("ssl_ca", v)) => {
                ca = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let opts = Opts::from_url(&url).map_err(|e| e.to_string())?;
    let Some(ca) = ca else {
        return Ok(opts);
    };
    let ssl = opts
        .ssl_opts()
        .cloned()
        .unwrap_or_default()
        .with_root_certs(vec![std::path::PathBuf::from(ca).into()]);
    Ok(mysql_async::OptsBuilder::from_opts(opts)
        .ssl_opts(Some(ssl))
        .into())
}

/// Backtick-quotes an identifier.
pub fn quote(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}
