//! The one way to ask a running ferry to do something: `POST /v1/<command>` on the `[http]`
//! listener, answered only when `[http] token` is set and the request presents it
//! (`Authorization: Bearer <token>`), and `ferry ctl <command>`, which sends that request.
//! Commands are few and each is an operation ferry already knows how to do safely; today:
//!
//! - `stop`: the clean stop a SIGTERM starts (exit 0 once the source and sinks have stopped).
//! - `backup`: a base backup now (`ferry backup now`); answered with the request's number, which
//!   `/status` says is served once a backup that started after it has ended.
//!
//! Security model: the routes are off unless a token is configured; the listener is whatever
//! `[http] listen` says (bind it to loopback unless something else must reach it); the token is
//! compared in constant time and never logged; there is no TLS, so across hosts put it behind a
//! proxy that terminates TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use ferry_source::error::{Error, Result};

/// What the control routes act on.
#[derive(Debug, Clone)]
pub struct Control {
    token: crate::config::Secret,
    /// The clean stop of the whole process (the token SIGTERM cancels).
    stop: CancellationToken,
    /// Base backups, when `[archive]` is set.
    backups: Option<crate::base_backup::BaseBackups>,
}

/// The answer to a control request: status code and body.
pub type Answer = (u16, String);

impl Control {
    pub fn new(
        token: crate::config::Secret,
        stop: CancellationToken,
        backups: Option<crate::base_backup::BaseBackups>,
    ) -> Control {
        Control {
            token,
            stop,
            backups,
        }
    }

    /// Answers `POST /v1/<command>` with the request's `Authorization` header.
    pub fn handle(&self, command: &str, authorization: Option<&str>) -> Answer {
        let presented = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(presented.as_bytes(), self.token.expose().as_bytes()) {
            return (401, "a valid bearer token is required\n".into());
        }
        match command {
            "stop" => {
                tracing::info!("stop requested over the control route; stopping cleanly");
                self.stop.cancel();
                (202, "{\"accepted\":\"stop\"}\n".into())
            }
            "backup" => match &self.backups {
                Some(b) => {
                    let request = b.request();
                    tracing::info!(request, "base backup requested over the control route");
                    (
                        202,
                        format!("{{\"accepted\":\"backup\",\"request\":{request}}}\n"),
                    )
                }
                None => (
                    409,
                    "no [archive] is configured: there is nowhere to write a base backup\n".into(),
                ),
            },
            other => (404, format!("no control command {other:?}: stop, backup\n")),
        }
    }
}

/// The answer when no token is configured.
pub fn off() -> Answer {
    (
        404,
        "control commands are off: set [http] token to enable POST /v1/<command>\n".into(),
    )
}

/// Byte strings compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `ferry ctl <command>`: sends the request to the running ferry this configuration describes.
pub fn request(config: &Config, command: &str) -> Result<Answer> {
    http(config, "POST", &format!("/v1/{command}"))
}

/// One HTTP request to the running ferry this configuration describes, with its token.
pub fn http(config: &Config, method: &str, path: &str) -> Result<Answer> {
    let http = config.http.as_ref().ok_or_else(|| {
        Error::Config("ferry ctl needs [http] listen (and token) in the configuration".into())
    })?;
    let token = http.token.as_ref().ok_or_else(|| {
        Error::Config("ferry ctl needs [http] token: the control routes are off without it".into())
    })?;
    // A wildcard listener is reached on loopback.
    let addr = if http.listen.ip().is_unspecified() {
        SocketAddr::new(
            if http.listen.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            http.listen.port(),
        )
    } else {
        http.listen
    };
    let io = |e| Error::io(format!("ferry ctl: {addr}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        token.expose()
    )
    .map_err(io)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(io)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("ferry ctl: not an HTTP answer: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> (Control, CancellationToken) {
        let stop = CancellationToken::new();
        let token: crate::config::Secret = toml::from_str::<
            std::collections::HashMap<String, crate::config::Secret>,
        >("t = \"s3cret-token\"")
        .unwrap()
        .remove("t")
        .unwrap();
        (Control::new(token, stop.clone(), None), stop)
    }

    #[test]
    fn only_the_token_stops_ferry() {
        let (c, stop) = control();
        assert_eq!(c.handle("stop", None).0, 401);
        assert_eq!(c.handle("stop", Some("Bearer wrong")).0, 401);
        assert_eq!(c.handle("stop", Some("s3cret-token")).0, 401);
        assert!(!stop.is_cancelled());
        assert_eq!(c.handle("nope", Some("Bearer s3cret-token")).0, 404);
        assert!(!stop.is_cancelled());
        assert_eq!(c.handle("stop", Some("Bearer s3cret-token")).0, 202);
        assert!(stop.is_cancelled());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
