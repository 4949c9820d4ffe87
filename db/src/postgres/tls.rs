//! TLS to PostgreSQL (the source, its replication connection, and the sinks): the one place that
//! knows `sslmode` and `sslrootcert`.
//!
//! It owns (1) taking `sslmode`/`sslrootcert` out of the source URL, because tokio-postgres knows
//! neither `verify-ca`/`verify-full` nor `sslrootcert`; (2) the rustls client configuration (ring
//! provider) whose certificate verifier gives each mode its libpq meaning; (3) the connector for
//! tokio-postgres connections; and (4) the SSLRequest negotiation and handshake for ferry's own
//! replication connection. Both kinds of connection therefore behave the same for one URL.
//!
//! | sslmode       | TLS                          | certificate checked                          |
//! |---------------|------------------------------|----------------------------------------------|
//! | `disable`     | never                        | –                                            |
//! | `prefer` (default) | if the server offers it | no (chain only if `sslrootcert` is given)   |
//! | `require`     | always                       | no (chain only if `sslrootcert` is given)    |
//! | `verify-ca`   | always                       | chain                                        |
//! | `verify-full` | always                       | chain and host name                          |
//!
//! Roots: the PEM file `sslrootcert`, or, when it is unset or `system` (libpq's spelling), the
//! operating system's trust store (rustls-native-certs), so that a private CA installed in the
//! host or container store works without shipping a bundle.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::{ConnectError as Error, Result};

/// libpq's `sslmode` values (`allow` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "source url: sslmode={other:?} is not supported; use disable, prefer, \
                     require, verify-ca or verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres must do; the verify modes differ only in the rustls verifier.
    fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS settings of the source, with the rustls configuration built from them.
#[derive(Clone)]
pub struct Tls {
    pub mode: SslMode,
    root_cert: Option<PathBuf>,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// Parses a source URL (`postgres://` or `key=value`) into the tokio-postgres configuration and
/// the TLS settings, loading `sslrootcert` now so that a bad path fails at startup.
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Tls)> {
    let (rest, sslmode, rootcert) = split_tls_params(url)?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| Error::Config(format!("source url: {e}")))?;
    let mode = sslmode
        .as_deref()
        .map(SslMode::parse)
        .transpose()?
        .unwrap_or(SslMode::Prefer);
    cfg.ssl_mode(mode.for_tokio_postgres());
    let root_cert = rootcert
        .filter(|r| !r.is_empty() && r != "system")
        .map(PathBuf::from);
    let tls = Tls::new(mode, root_cert)?;
    Ok((cfg, tls))
}

impl Tls {
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verify_chain = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (root_cert.is_some() && mode != SslMode::Disable);
        let verifier: Arc<dyn ServerCertVerifier> = if !verify_chain {
            Arc::new(NoCertCheck {
                algs: provider.signature_verification_algorithms,
            })
        } else {
            let roots = Arc::new(load_roots(root_cert.as_ref())?);
            if mode == SslMode::VerifyFull {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| Error::Tls(format!("certificate verifier: {e}")))?
            } else {
                Arc::new(ChainOnly {
                    roots,
                    algs: provider.signature_verification_algorithms,
                })
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls {
            mode,
            root_cert,
            config: Arc::new(config),
        })
    }

    /// Opens a connection to `url` (with its `sslmode` and `sslrootcert`) and drives it on a task.
    pub async fn connect_url(
        url: &str,
        what: &'static str,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>)> {
        let (cfg, tls) = parse_url(url)?;
        tls.connect_client(&cfg, what).await
    }

    /// Opens a tokio-postgres connection with these TLS settings and drives it on a task.
    pub async fn connect_client(
        &self,
        cfg: &tokio_postgres::Config,
        what: &'static str,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>)> {
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*self.config).clone());
        // A server that accepts and never answers the startup would hang here: the whole
        // handshake gets the limit, and running out is retried like a refused connection.
        let limit = crate::pg_connect_limit(cfg);
        let (client, conn) = tokio::time::timeout(limit, cfg.connect(connector))
            .await
            .map_err(|_| {
                Error::io(
                    format!("connecting ({what})"),
                    crate::connect_timed_out(limit),
                )
            })?
            .map_err(|e| self.classify(e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "{what} connection closed");
            }
        });
        Ok((client, task))
    }

    /// Turns a TLS failure of a tokio-postgres connect into [`Error::Tls`] (not transient: a
    /// certificate that does not verify or a server without TLS needs a person). I/O errors
    /// during the handshake stay transient.
    fn classify(&self, e: tokio_postgres::Error) -> Error {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => Error::Tls(self.describe(tls)),
                    None => Error::Postgres(e),
                };
            }
            source = s.source();
        }
        // tokio-postgres reports "server does not support TLS" (sslmode require and stricter)
        // as a TLS error without an I/O source.
        if e.to_string().starts_with("error performing TLS handshake") {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Error::Tls(format!("{e}{cause} (sslmode={})", self.mode.as_str()));
        }
        Error::Postgres(e)
    }

    fn describe(&self, e: &rustls::Error) -> String {
        let roots = match &self.root_cert {
            Some(p) => format!("sslrootcert={}", p.display()),
            None => "system roots".to_owned(),
        };
        format!(
            "TLS handshake failed: {e} (sslmode={}, {roots})",
            self.mode.as_str()
        )
    }

    /// Whether to send an SSLRequest before the startup message.
    pub fn wanted(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// Negotiates TLS on a fresh connection (SSLRequest, then the handshake on 'S'), for ferry's
    /// own replication connection.
    pub async fn negotiate(
        &self,
        mut tcp: TcpStream,
        host: &str,
        context: &str,
    ) -> Result<PgStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if !self.wanted() {
            return Ok(PgStream::Plain(tcp));
        }
        let mut buf = bytes::BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut buf);
        tcp.write_all(&buf)
            .await
            .map_err(|e| Error::io(format!("{context}: SSLRequest"), e))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| Error::io(format!("{context}: SSLRequest"), e))?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(PgStream::Plain(tcp)),
            b'N' => {
                return Err(Error::Tls(format!(
                    "{context}: the server does not support TLS, but sslmode={}",
                    self.mode.as_str()
                )));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "{context}: unexpected answer {other:#04x} to SSLRequest"
                )));
            }
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Tls(format!("{context}: host {host:?} as TLS name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match connector.connect(name, tcp).await {
            Ok(s) => Ok(PgStream::Tls(Box::new(s))),
            Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls) => Err(Error::Tls(format!("{context}: {}", self.describe(tls)))),
                None => Err(Error::io(format!("{context}: TLS handshake"), e)),
            },
        }
    }
}

fn load_roots(path: Option<&PathBuf>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(p) => {
            let certs = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Config(format!("sslrootcert {}: {e}", p.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Config(format!(
                    "sslrootcert {}: no usable certificate",
                    p.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "loading the system's trusted certificates");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(Error::Config(
                    "sslmode verify-ca/verify-full without sslrootcert needs the system's \
                     trusted certificates, and none were found; set sslrootcert=PATH"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `prefer`/`require` without `sslrootcert`: encryption without certificate checks (libpq's
/// behaviour). The handshake signatures are still verified against the presented key.
#[derive(Debug)]
struct NoCertCheck {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The replication connection's transport: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum PgStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PgStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Removes `sslmode` and `sslrootcert` from a source URL or `key=value` string and returns the
/// rest with their values (percent- or quote-decoded).
fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>)> {
    let mut sslmode = None;
    let mut rootcert = None;
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None, None));
        };
        let mut kept = Vec::new();
        for part in query.split('&') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "sslmode" => sslmode = Some(percent_decode(v)?),
                "sslrootcert" => rootcert = Some(percent_decode(v)?),
                _ => kept.push(part),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, sslmode, rootcert));
    }
    let mut kept = Vec::new();
    for (k, v) in key_value_pairs(url)? {
        match k.as_str() {
            "sslmode" => sslmode = Some(v),
            "sslrootcert" => rootcert = Some(v),
            _ => kept.push(format!(
                "{k}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), sslmode, rootcert))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Config(format!("source url: bad percent-encoding in {s:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("source url: {s:?} is not UTF-8")))
}

/// libpq's `key = value` syntax: values may be single-quoted, backslash escapes `\'` and `\\`.
fn key_value_pairs(s: &str) -> Result<Vec<(String, String)>> {
    let bad = || Error::Config("source url: malformed key=value connection string".into());
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next().ok_or_else(bad)? {
                    '\'' => break,
                    '\\' => value.push(chars.next().ok_or_else(bad)?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(bad)?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn url_params_are_taken_out() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) = split_tls_params("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
    }

    #[test]
    fn key_value_params_are_taken_out() {
        let (rest, mode, root) = split_tls_params(
            "host=h user = u password='a b\\'c' sslmode=verify-ca sslrootcert='/x y/ca.pem'",
        )
        .unwrap();
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/x y/ca.pem"));
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(cfg.get_user(), Some("u"));
    }

    #[test]
    fn modes_map_to_tokio_postgres() {
        let (cfg, tls) = parse_url("postgres://u@h/db").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let (cfg, tls) = parse_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert!(parse_url("postgres://u@h/db?sslmode=allow").is_err());
        let missing = parse_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent");
        assert!(matches!(missing, Err(Error::Config(_))), "{missing:?}");
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it, as (CA PEM, cert DER, key DER).
    fn server_cert(ca_name: &str) -> (String, Vec<u8>, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        (ca_pem, cert.der().to_vec(), key.serialize_der())
    }

    /// A one-connection server that answers the SSLRequest with `answer` and, on 'S', runs a
    /// TLS handshake with `cert`.
    async fn fake_server(answer: u8, cert: Option<(Vec<u8>, Vec<u8>)>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 8];
            tcp.read_exact(&mut req).await.unwrap();
            tcp.write_all(&[answer]).await.unwrap();
            if let Some((cert, key)) = cert {
                let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(cert)],
                    rustls::pki_types::PrivateKeyDer::try_from(key).unwrap(),
                )
                .unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                }
            }
        });
        addr
    }

    async fn negotiate(
        tls: &Tls,
        host: &str,
        answer: u8,
        cert: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<PgStream> {
        let addr = fake_server(answer, cert).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        tls.negotiate(tcp, host, "test").await
    }

    #[tokio::test]
    async fn replication_connection_negotiation() {
        let (ca_pem, cert, key) = server_cert("test CA");
        let (other_pem, _, _) = server_cert("other CA");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let other = dir.path().join("other.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other, other_pem).unwrap();
        let tls = |mode, root: &PathBuf| Tls::new(mode, Some(root.clone())).unwrap();
        let pair = || Some((cert.clone(), key.clone()));

        let s = negotiate(&tls(SslMode::VerifyFull, &ca), "127.0.0.1", b'S', pair()).await;
        assert!(s.unwrap().is_tls());
        let s = negotiate(&tls(SslMode::VerifyCa, &ca), "localhost", b'S', pair()).await;
        assert!(s.unwrap().is_tls());
        let s = negotiate(
            &Tls::new(SslMode::Require, None).unwrap(),
            "localhost",
            b'S',
            pair(),
        )
        .await;
        assert!(s.unwrap().is_tls());
        let e = negotiate(&tls(SslMode::VerifyFull, &ca), "localhost", b'S', pair())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("not valid for name")),
            "{e}"
        );
        assert!(!e.is_transient());
        let e = negotiate(&tls(SslMode::VerifyCa, &other), "127.0.0.1", b'S', pair())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("UnknownIssuer")),
            "{e}"
        );
        // No TLS on the server.
        let s = negotiate(
            &Tls::new(SslMode::Prefer, None).unwrap(),
            "127.0.0.1",
            b'N',
            None,
        )
        .await;
        assert!(!s.unwrap().is_tls());
        let e = negotiate(
            &Tls::new(SslMode::Require, None).unwrap(),
            "127.0.0.1",
            b'N',
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, Error::Tls(m) if m.contains("does not support TLS")),
            "{e}"
        );
        assert!(!e.is_transient());
    }
}
