//! The HTTP endpoint of a running ferry as a test reads it: one GET, one metric sample, and a
//! wait for an answer.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::ferry::FerryRun;

/// GET `path`: (status code, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_owned())
}

/// The value of one sample line `name{labels} value`.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// Waits up to `secs` for `path` to answer `code`; its body.
pub fn wait_http(port: u16, path: &str, code: u16, secs: u64, ferry: &mut FerryRun) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.flush();
            let (c, body) = get(port, path);
            if c == code {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} answered {c} {body}, waiting for {code}\n{}",
                ferry.log_text()
            );
        } else {
            ferry.check_alive().unwrap();
            assert!(
                Instant::now() < deadline,
                "no endpoint\n{}",
                ferry.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
