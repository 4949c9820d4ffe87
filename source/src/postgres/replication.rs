//! ferry's own PostgreSQL replication connection.
//!
//! tokio-postgres cannot speak the replication sub-protocol (CopyBoth), so this module implements
//! the little that is needed on top of postgres-protocol's message codecs: startup with
//! `replication=database`, authentication (trust, cleartext, md5, SCRAM-SHA-256), simple queries
//! (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, …), and the CopyBoth stream of XLogData and
//! keepalive messages with standby status updates going back. Nothing outside this module needs
//! to know the wire protocol.

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pgoutput::PG_EPOCH_OFFSET_MICROS;
use super::types::SESSION_OPTIONS;
use crate::error::{DbError, Error, Result};
use ferry_db::postgres::tls::{PgStream, Tls};

/// Where and as whom to connect, parsed from the source URL.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
    /// For ordinary (tokio-postgres) connections, without the TLS parameters it does not know.
    pub pg_config: tokio_postgres::Config,
    pub tls: Tls,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.tls.mode)
            .finish()
    }
}

impl ConnParams {
    /// Parses a `postgres://` URL or a `key=value` connection string, as libpq does.
    pub fn parse(url: &str) -> Result<ConnParams> {
        let (cfg, tls) = ferry_db::postgres::parse_url(url)?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => {
                return Err(Error::Config(format!(
                    "source url: Unix socket {} is not supported for replication; use a TCP host",
                    p.display()
                )));
            }
            None => "localhost".to_owned(),
        };
        let user = cfg
            .get_user()
            .map(str::to_owned)
            .ok_or_else(|| Error::Config("source url: no user given".into()))?;
        // Every session ferry opens to the source (query, snapshot, base backup, counters)
        // carries the replication connection's name, so the server and `ferry promote`'s fence
        // can tell them from the application's.
        let application_name = cfg.get_application_name().unwrap_or("ferry").to_owned();
        let mut cfg = cfg;
        cfg.application_name(&application_name);
        Ok(ConnParams {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            dbname: cfg
                .get_dbname()
                .map(str::to_owned)
                .unwrap_or_else(|| user.clone()),
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            application_name,
            pg_config: cfg,
            tls,
        })
    }
}

/// One message of the replication stream.
#[derive(Debug)]
pub enum ReplMessage {
    /// WAL data: a pgoutput message starting at `wal_start`.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        data: Bytes,
    },
    /// The server's WAL end; `reply_requested` asks for a status update now.
    Keepalive { wal_end: u64, reply_requested: bool },
}

enum Incoming {
    CopyBoth,
    Message(backend::Message),
}

/// A replication connection.
#[derive(Debug)]
pub struct ReplicationConn {
    stream: PgStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    context: String,
}

impl ReplicationConn {
    /// Connects and authenticates with `replication=database`.
    pub async fn connect(p: &ConnParams) -> Result<ReplicationConn> {
        let context = format!("replication connection to {}:{}", p.host, p.port);
        let stream = TcpStream::connect((p.host.as_str(), p.port))
            .await
            .map_err(|e| Error::io(&context, e))?;
        let _ = stream.set_nodelay(true);
        let stream = p.tls.negotiate(stream, &p.host, &context).await?;
        tracing::debug!(tls = stream.is_tls(), "{context}");
        let mut conn = ReplicationConn {
            stream,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::with_capacity(1024),
            context,
        };
        let params = [
            ("user", p.user.as_str()),
            ("database", p.dbname.as_str()),
            ("replication", "database"),
            ("application_name", p.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("options", SESSION_OPTIONS),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
            .map_err(|e| Error::io("encode startup", e))?;
        conn.flush().await?;
        conn.authenticate(p).await?;
        // Parameter status and backend key data until the server is ready.
        loop {
            match conn.read_message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(conn),
                backend::Message::ErrorResponse(body) => {
                    return Err(conn.server_error(&body));
                }
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, p: &ConnParams) -> Result<()> {
        let password = || {
            p.password.as_deref().ok_or_else(|| {
                Error::Auth(format!(
                    "the server asks user {:?} for a password, but the source url has none",
                    p.user
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.wbuf)
                        .map_err(|e| Error::io("encode password", e))?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(p.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::io("encode password", e))?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| Error::io("SASL", e))? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(Error::Auth(
                            "the server offers no SASL mechanism ferry supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let s =
                        sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.wbuf,
                    )
                    .map_err(|e| Error::io("encode SASL", e))?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASL continue before SASL start".into()))?;
                    s.update(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| Error::io("encode SASL", e))?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASL final before SASL start".into()))?;
                    s.finish(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM server signature: {e}")))?;
                    continue;
                }
                backend::Message::ErrorResponse(body) => return Err(self.server_error(&body)),
                other => {
                    return Err(Error::Auth(format!(
                        "unsupported authentication request ({})",
                        message_name(&other)
                    )));
                }
            }
            self.flush().await?;
        }
    }

    /// Runs a simple-protocol command and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| Error::io("encode query", e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(range) = ranges.next().map_err(|e| Error::io("data row", e))? {
                        row.push(range.map(|r| {
                            String::from_utf8_lossy(buf.get(r).unwrap_or_default()).into_owned()
                        }));
                    }
                    rows.push(row);
                }
                backend::Message::ErrorResponse(body) => {
                    error = Some(self.server_error_for(&body, sql));
                }
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION …` and waits for the server to enter CopyBoth mode.
    pub async fn start_replication(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| Error::io("encode query", e))?;
        self.flush().await?;
        loop {
            let msg = match self.read_incoming().await? {
                Incoming::CopyBoth => return Ok(()),
                Incoming::Message(m) => m,
            };
            if let backend::Message::ErrorResponse(body) = msg {
                let e = self.server_error_for(&body, sql);
                // Drain to ReadyForQuery so the connection stays usable for the caller.
                while !matches!(
                    self.read_message().await?,
                    backend::Message::ReadyForQuery(_)
                ) {}
                return Err(e);
            }
        }
    }

    /// The next message of the replication stream. Cancellation-safe: unread bytes stay buffered.
    pub async fn recv(&mut self) -> Result<ReplMessage> {
        loop {
            match self.read_message().await? {
                backend::Message::CopyData(body) => {
                    let mut data = body.into_bytes();
                    if data.is_empty() {
                        return Err(Error::Protocol("empty CopyData".into()));
                    }
                    let tag = data.get_u8();
                    match tag {
                        b'w' if data.len() >= 24 => {
                            let wal_start = data.get_u64();
                            let wal_end = data.get_u64();
                            let _server_time = data.get_i64();
                            return Ok(ReplMessage::XLogData {
                                wal_start,
                                wal_end,
                                data,
                            });
                        }
                        b'k' if data.len() >= 17 => {
                            let wal_end = data.get_u64();
                            let _server_time = data.get_i64();
                            return Ok(ReplMessage::Keepalive {
                                wal_end,
                                reply_requested: data.get_u8() == 1,
                            });
                        }
                        _ => {
                            return Err(Error::Protocol(format!(
                                "unexpected replication message {:?} of {} bytes",
                                tag as char,
                                data.len()
                            )));
                        }
                    }
                }
                backend::Message::ErrorResponse(body) => return Err(self.server_error(&body)),
                // The server ends the stream when it shuts down (CopyDone, then CommandComplete
                // and ReadyForQuery): a restart to wait out and reconnect after, not a failure.
                backend::Message::CopyDone
                | backend::Message::CommandComplete(_)
                | backend::Message::ReadyForQuery(_) => {
                    return Err(Error::io(
                        "replication stream",
                        std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "the server ended the replication stream (shutting down?)",
                        ),
                    ));
                }
                backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} during replication",
                        message_name(&other)
                    )));
                }
            }
        }
    }

    /// Sends a standby status update: everything up to `flushed` is durable on ferry's side and
    /// the server may discard the WAL before it.
    pub async fn send_status(&mut self, written: u64, flushed: u64, reply: bool) -> Result<()> {
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&written.to_be_bytes());
        body.extend_from_slice(&flushed.to_be_bytes());
        body.extend_from_slice(&flushed.to_be_bytes());
        body.extend_from_slice(&pg_now().to_be_bytes());
        body.push(u8::from(reply));
        frontend::CopyData::new(&body[..])
            .map_err(|e| Error::io("encode status", e))?
            .write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the stream politely (CopyDone, Terminate).
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    async fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        res.map_err(|e| Error::io(&self.context, e))
    }

    async fn read_message(&mut self) -> Result<backend::Message> {
        match self.read_incoming().await? {
            Incoming::Message(m) => Ok(m),
            Incoming::CopyBoth => Err(Error::Protocol("unexpected CopyBothResponse".into())),
        }
    }

    /// The next backend message. postgres-protocol does not know CopyBothResponse ('W'), the
    /// answer to START_REPLICATION, so it is recognised here before the codec sees it.
    async fn read_incoming(&mut self) -> Result<Incoming> {
        loop {
            if self.rbuf.len() >= 5 && self.rbuf[0] == b'W' {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if self.rbuf.len() > len {
                    self.rbuf.advance(1 + len);
                    return Ok(Incoming::CopyBoth);
                }
            } else if let Some(msg) =
                backend::Message::parse(&mut self.rbuf).map_err(|e| Error::io(&self.context, e))?
            {
                return Ok(Incoming::Message(msg));
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| Error::io(&self.context, e))?;
            if n == 0 {
                return Err(Error::io(
                    &self.context,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ),
                ));
            }
        }
    }

    fn server_error(&self, body: &backend::ErrorResponseBody) -> Error {
        Error::Server {
            context: self.context.clone(),
            error: Box::new(db_error(body)),
        }
    }

    fn server_error_for(&self, body: &backend::ErrorResponseBody, sql: &str) -> Error {
        Error::Server {
            context: format!("{}: {sql}", self.context),
            error: Box::new(db_error(body)),
        }
    }
}

fn db_error(body: &backend::ErrorResponseBody) -> DbError {
    let mut e = DbError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

fn message_name(m: &backend::Message) -> &'static str {
    match m {
        backend::Message::AuthenticationKerberosV5 => "Kerberos authentication",
        backend::Message::AuthenticationGss => "GSS authentication",
        backend::Message::AuthenticationSspi => "SSPI authentication",
        backend::Message::AuthenticationScmCredential => "SCM credential authentication",
        backend::Message::CopyInResponse(_) => "CopyInResponse",
        backend::Message::CopyOutResponse(_) => "CopyOutResponse",
        backend::Message::RowDescription(_) => "RowDescription",
        backend::Message::DataRow(_) => "DataRow",
        backend::Message::CommandComplete(_) => "CommandComplete",
        backend::Message::ReadyForQuery(_) => "ReadyForQuery",
        _ => "message",
    }
}

/// Now, in microseconds since PostgreSQL's epoch (2000-01-01).
pub fn pg_now() -> i64 {
    ferry_proto::civil::now_micros() - PG_EPOCH_OFFSET_MICROS
}

/// Now, in microseconds since the Unix epoch.
pub fn unix_now_micros() -> i64 {
    ferry_proto::civil::now_micros()
}
