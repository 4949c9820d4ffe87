//! The MySQL/MariaDB source: registers as a replica with the configured `server_id`, reads the
//! row binlog from the spool's last position, and writes each committed transaction to the spool
//! whole, in commit order; takes the initial snapshot consistent with a binlog position first.
//!
//! Positions are binlog `file:position` after a transaction's commit event: exact on MySQL and
//! MariaDB alike, with or without GTIDs, so a restart resumes after the last spooled transaction
//! and nothing is read twice. The MariaDB GTID of each transaction becomes its id.

mod snapshot;

pub use snapshot::{base_backup, start_consistent_snapshot};

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_db::mysql::quote;
use ferry_proto::{
    Begin, BinlogPos, Commit, Delete, Event, Gtids, Heartbeat, Insert, Message, OldRow, Position,
    Relation, Truncate, Update, Value,
};
use ferry_spool::{Offset, SpoolWriter};
use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::compressed;
use super::ddl;
use super::decode::{self, ZeroDates};
use super::gtid::{self, MARIADB_GTID_EVENT, MARIADB_GTID_LIST_EVENT, MariaGtidEvent};
use super::payload;
use super::schema::{self, Catalog, TableSchema};
use super::server::{
    ResumeBy, binlog_expiry, binlog_sizes, check_server, check_server_identity, current_position,
    master_position, server_identity,
};
use super::table_def;
use crate::capture::spill::TxnBuffer;
use crate::capture::stats::SourceStats;
use crate::capture::writer::SourceWriter;
use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// How long the source waits for the next event before making what it wrote durable (the
/// binlog is pulled: a quiet stream is the moment to fsync).
const QUIET: Duration = Duration::from_millis(2);
/// Rows per key-ordered snapshot chunk.
const CHUNK_ROWS: usize = 10_000;
/// An event header flag: a reader that does not know the event type may skip it.
const LOG_EVENT_IGNORABLE: u16 = 0x80;
/// The server's binlog list (sizes, for lag in bytes) is read this often.
const BINLOGS_INTERVAL: Duration = Duration::from_secs(5);

/// Event types mysql_common does not parse that carry no row change or statement: MySQL's
/// heartbeat v2 (41); MariaDB's annotate rows (160, the statement text of row events), binlog
/// checkpoint (161) and start encryption (164; what follows is sent decrypted, and anything
/// that is not fails to decode). MariaDB's GTID (162) and GTID list (163) are read by [`gtid`].
const CHANGELESS_EVENTS: [u8; 4] = [41, 160, 161, 164];

/// `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct MysqlSettings {
    pub url: String,
    pub server_id: u32,
    pub filter: TableFilter,
    pub snapshot: bool,
    pub zero_dates: ZeroDates,
    pub txn_memory: usize,
    /// Warn when the binlog ferry would resume from may be purged within this many seconds
    /// (default: a quarter of the server's expiry).
    pub min_binlog_margin_seconds: Option<u64>,
    /// With `ack = "applied"`: the spool offset every sink has applied below, so segments all
    /// sinks are past can be deleted.
    pub applied: Option<watch::Receiver<Offset>>,
    /// The spool offset every sink has applied below, whatever `ack` says: the segments all
    /// of it lies before are deleted.
    pub truncate_below: Option<watch::Receiver<Offset>>,
}

impl std::fmt::Debug for MysqlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSettings")
            .field("url", &ferry_db::redact::redact(&self.url))
            .field("server_id", &self.server_id)
            .field("filter", &self.filter)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl MysqlSettings {
    /// Whether the table is captured.
    pub fn wanted(&self, db: &str, table: &str) -> bool {
        self.filter.accepts(db, table)
    }
}

/// Where the spool ends for this source: the last Commit or Heartbeat position, and the start of
/// a transaction a crash cut short.
fn spool_tail(dir: &Path) -> Result<(Option<BinlogPos>, Option<Offset>)> {
    let tail = crate::capture::writer::tail(dir, |p| matches!(p, Position::Binlog(_)))?;
    let resume = match tail.resume {
        Some(Position::Binlog(b)) => Some(b),
        _ => None,
    };
    Ok((resume, tail.incomplete_from))
}

/// A transaction being read from the binlog.
struct OpenTxn {
    xid: u64,
    time: i64,
    buf: TxnBuffer,
    /// Relations already in `buf`: one Relation event a table definition, not one a rows event.
    announced: Vec<Relation>,
    /// A DDL statement logged on its own (MariaDB's standalone GTID): it ends at its query.
    standalone: bool,
}

/// Where the binlog stream is and what is open in it.
struct StreamState {
    file: String,
    /// The end of the last event read in `file`.
    read_end: u64,
    /// Events end with a checksum (`binlog_checksum`).
    checksummed: bool,
    seen_format: bool,
    /// The stream entered `file` at its start, so the GTID list that opens it is the state.
    from_start: bool,
    gtid: Option<MariaGtidEvent>,
    txn: Option<OpenTxn>,
    /// The compressed transaction payload whose events are being read (MySQL 8).
    payload: Option<payload::Pending>,
}

/// What waiting on the binlog stream gave.
enum Next {
    Event(BinlogEvent),
    /// Nothing within [`QUIET`] while transactions wait for their group commit.
    Quiet,
    Stop,
}

type BinlogEvent = mysql_async::binlog::events::Event;

pub struct MysqlSource {
    settings: MysqlSettings,
    /// The spool, written in whole transactions.
    writer: SourceWriter,
    catalog: Catalog,
    resume: Option<BinlogPos>,
    /// The epoch of the positions written now (see [`BinlogPos::epoch`]).
    epoch: u32,
    /// The GTIDs the server had executed at the stream's position, where known.
    gtids: Option<Gtids>,
    registered_once: bool,
    stats: SourceStats,
    stats_tx: watch::Sender<SourceStats>,
    last_published: Instant,
    /// Row changes read per table, named in `stats.tables` when published (counting by id keeps
    /// the per-row path free of allocation).
    table_rows: std::collections::HashMap<ferry_proto::RelationId, u64>,
    /// The end of the last transaction passed without spooling anything (or the start of the
    /// next binlog after a rotation), and the source time it was written, not yet recorded.
    passed: Option<(BinlogPos, i64)>,
    last_passed_beat: Instant,
    /// Tables whose whole definition this process has spooled.
    described: std::collections::HashSet<ferry_proto::RelationId>,
    table_names: std::collections::HashMap<ferry_proto::RelationId, String>,
}

impl std::fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSource")
            .field("server_id", &self.settings.server_id)
            .field("resume", &self.resume)
            .finish()
    }
}

impl MysqlSource {
    /// Prepares the source over an open spool: cuts a transaction a crash left incomplete and
    /// learns where to resume.
    pub fn new(settings: MysqlSettings, mut spool: SpoolWriter) -> Result<MysqlSource> {
        let (resume, incomplete) = spool_tail(spool.dir())?;
        if let Some(off) = incomplete {
            tracing::warn!(offset = %off, "cutting an incomplete transaction from the spool's end");
            spool.truncate_from(off)?;
        }
        let writer = SourceWriter::new(spool, settings.truncate_below.clone())?;
        Ok(MysqlSource {
            settings,
            writer,
            catalog: Catalog::default(),
            resume,
            epoch: 0,
            gtids: None,
            registered_once: false,
            stats: SourceStats::default(),
            stats_tx: watch::channel(SourceStats::default()).0,
            last_published: Instant::now(),
            table_rows: std::collections::HashMap::new(),
            described: std::collections::HashSet::new(),
            passed: None,
            last_passed_beat: Instant::now(),
            table_names: std::collections::HashMap::new(),
        })
    }

    pub fn spool(&self) -> &SpoolWriter {
        self.writer.spool()
    }

    /// The source's progress, updated as it moves.
    pub fn stats(&self) -> watch::Receiver<SourceStats> {
        self.stats_tx.subscribe()
    }

    fn publish_stats(&mut self) {
        for (id, n) in &self.table_rows {
            if let Some(name) = self.table_names.get(id) {
                match self.stats.tables.get_mut(name) {
                    Some(v) => *v = *n,
                    None => {
                        self.stats.tables.insert(name.clone(), *n);
                    }
                }
            }
        }
        self.stats_tx.send_replace(self.stats.clone());
    }

    fn set_connected(&mut self, connected: bool) {
        self.stats.connected = connected;
        self.publish_stats();
    }

    /// Streams until `shutdown` turns true, reconnecting after transient failures with backoff.
    pub async fn run(&mut self, shutdown: CancellationToken) -> Result<()> {
        let mut backoff = ferry_db::retry::Backoff::default();
        loop {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.set_connected(false);
            match result {
                Ok(()) => {
                    self.commit_spool()?;
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    self.commit_spool()?;
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = ferry_db::retry::Backoff::default();
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "mysql source: connection failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects, checks the server, takes the initial snapshot when the spool has no position
    /// yet, and opens the binlog stream at the resume position: (the query connection, the
    /// stream, where it starts, whether events carry checksums). `None` when shutdown came first.
    async fn open_stream(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(Conn, mysql_async::BinlogStream, BinlogPos, bool, ResumeBy)>> {
        let opts = ferry_db::mysql::opts_from_url(&self.settings.url)
            .map_err(|e| Error::Config(format!("source url: {e}")))?;
        // A server that does not answer must not hold up a stop: nothing is in flight yet.
        let mut meta = tokio::select! {
            r = ferry_db::mysql::connect(opts.clone()) => r?,
            _ = shutdown.cancelled() => return Ok(None),
        };
        if !self.registered_once {
            check_server(&mut meta, self.settings.server_id).await?;
        }
        // Every connection, not only the first: the server behind the URL may have changed.
        let identity = server_identity(&mut meta).await?;
        let (epoch, by) =
            check_server_identity(self.writer.spool().dir(), &identity, self.resume.as_ref())?;
        self.epoch = epoch;
        let expire = binlog_expiry(&mut meta).await?;
        self.stats.retention.binlog_expire_seconds = Some(expire);
        self.stats.retention.min_binlog_margin_seconds = self
            .settings
            .min_binlog_margin_seconds
            .unwrap_or(expire / 4);
        if self.resume.is_none() {
            let pos = if self.settings.snapshot {
                match self.snapshot(opts.clone(), shutdown).await? {
                    Some(p) => p,
                    None => return Ok(None),
                }
            } else {
                let mut pos = master_position(&mut meta).await?;
                pos.epoch = self.epoch;
                self.writer.append(&Event::Heartbeat(Heartbeat {
                    position: Position::Binlog(pos.clone()),
                    time: crate::postgres::replication::unix_now_micros(),
                }))?;
                self.commit_spool()?;
                pos
            };
            self.resume = Some(pos);
        }
        let Some(start) = self.resume.clone() else {
            return Ok(None);
        };
        // The GTIDs at the resume position: recorded with it, or (a spool written before
        // ferry recorded them) asked of the server that wrote the binlog.
        self.gtids = match (&start.gtids, by) {
            (Some(g), _) => Some(g.clone()),
            (None, ResumeBy::FilePos) if super::server::is_mariadb(&mut meta).await? => {
                super::server::mariadb_gtids_at(&mut meta, &start).await?
            }
            (None, _) => None,
        };
        let mut conn = ferry_db::mysql::connect(opts).await?;
        let checksum: Option<String> = conn.query_first("SELECT @@global.binlog_checksum").await?;
        let checksummed = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        // MariaDB sends its GTID events only to a replica that says it understands them; MySQL
        // ignores the variable.
        conn.query_drop("SET @mariadb_slave_capability = 4").await?;
        // Heartbeats every second keep a quiet connection alive and prove it is.
        conn.query_drop("SET @master_heartbeat_period = 1000000000")
            .await?;
        let mut sids = Vec::new();
        let request = match (by, &self.gtids) {
            (ResumeBy::Gtid, Some(gtids)) => {
                gtid::resume_request(&mut conn, self.settings.server_id, gtids, &mut sids).await?
            }
            _ => BinlogStreamRequest::new(self.settings.server_id)
                .with_filename(start.file.as_bytes())
                .with_pos(start.pos),
        };
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| gap_or(e, by))?;
        self.registered_once = true;
        self.set_connected(true);
        tracing::info!(position = %start, server_id = self.settings.server_id, by = ?by, "mysql source: streaming the binlog");
        Ok(Some((meta, stream, start, checksummed, by)))
    }

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let Some((mut meta, mut stream, start, checksummed, by)) =
            self.open_stream(shutdown).await?
        else {
            return Ok(());
        };
        let mut st = StreamState {
            file: start.file.clone(),
            read_end: 0,
            checksummed,
            seen_format: false,
            from_start: by == ResumeBy::FilePos && start.pos <= 4,
            gtid: None,
            txn: None,
            payload: None,
        };
        let mut binlogs_read = Instant::now() - BINLOGS_INTERVAL;
        loop {
            if binlogs_read.elapsed() >= BINLOGS_INTERVAL {
                binlogs_read = Instant::now();
                self.read_binlogs(&mut meta).await;
            }
            let event = match self.next_event(&mut stream, shutdown).await? {
                Next::Event(e) => e,
                Next::Quiet => {
                    self.commit_spool()?;
                    continue;
                }
                Next::Stop => return Ok(()),
            };
            if self.last_published.elapsed() >= Duration::from_secs(1) {
                self.last_published = Instant::now();
                self.server_at_least(&st.file, st.read_end);
                self.publish_stats();
            }
            self.on_event(&mut st, &mut meta, &stream, event).await?;
        }
    }

    /// The next binlog event. While transactions wait for their group commit the stream is given
    /// only [`QUIET`] (then they are made durable); otherwise a stream silent for 10 s, with a
    /// heartbeat due every second, is lost.
    async fn next_event(
        &mut self,
        stream: &mut mysql_async::BinlogStream,
        shutdown: &CancellationToken,
    ) -> Result<Next> {
        let pending = self.writer.pending() > 0;
        let limit = if pending {
            QUIET
        } else {
            Duration::from_secs(10)
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Next::Stop),
            r = tokio::time::timeout(limit, stream.next()) => r,
        };
        let lost = |kind, what| Error::io("mysql source", std::io::Error::new(kind, what));
        match next {
            Err(_) if pending => Ok(Next::Quiet),
            Err(_) => Err(lost(
                std::io::ErrorKind::TimedOut,
                "no binlog event or heartbeat for 10 s",
            )),
            Ok(None) => Err(lost(
                std::io::ErrorKind::UnexpectedEof,
                "binlog stream ended",
            )),
            Ok(Some(event)) => Ok(Next::Event(
                event.map_err(|e| gap_or(e, ResumeBy::FilePos))?,
            )),
        }
    }

    /// One binlog event: its position accounted for, then what it means for the open
    /// transaction, the file being read, or the schema.
    async fn on_event(
        &mut self,
        st: &mut StreamState,
        meta: &mut Conn,
        stream: &mysql_async::BinlogStream,
        event: BinlogEvent,
    ) -> Result<()> {
        let header = event.header();
        let mut end = u64::from(header.log_pos());
        // An artificial event has position 0.
        st.read_end = st.read_end.max(end);
        if let Some(p) = st.payload.as_mut() {
            // An event from inside a compressed transaction: the payload's position.
            end = p
                .next(end)
                .map_err(|e| Error::Protocol(format!("binlog {} after {}: {e}", st.file, p.end)))?;
            if p.remaining == 0 {
                st.payload = None;
            }
        }
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            let Some(g) = gtid::parse_maria_gtid(event.data()) else {
                return Err(Error::Protocol("a MariaDB GTID event too short".into()));
            };
            gtid::advance_maria(&mut self.gtids, header.server_id(), &g);
            st.gtid = Some(g);
            st.txn = Some(self.open_txn(st.gtid, header.timestamp(), true));
            return Ok(());
        }
        if header.event_type_raw() == MARIADB_GTID_LIST_EVENT {
            let Some(list) = gtid::parse_maria_gtid_list(event.data()) else {
                return Err(Error::Protocol(format!(
                    "a MariaDB GTID list event in {} that does not decode",
                    st.file
                )));
            };
            if st.from_start {
                self.gtids = Some(Gtids::MariaDb(list));
            }
            return Ok(());
        }
        let at = |e: &dyn std::fmt::Display| {
            Error::Protocol(format!("binlog event at {}:{end}: {e}", st.file))
        };
        let plain;
        let event = if compressed::is_compressed(header.event_type_raw()) {
            plain = compressed::plain_event(&event).map_err(|e| at(&e))?;
            &plain
        } else {
            &event
        };
        let Some(data) = event.read_data().map_err(|e| at(&e))? else {
            // A type mysql_common does not know: only one known to carry no change, or
            // one the server marks ignorable (LOG_EVENT_IGNORABLE_F), may pass.
            if CHANGELESS_EVENTS.contains(&header.event_type_raw())
                || header.flags_raw() & LOG_EVENT_IGNORABLE != 0
            {
                return Ok(());
            }
            return Err(Error::Protocol(format!(
                "binlog event of type {} at {}:{end} is not one ferry can decode, and \
                 the server does not mark it ignorable: it may carry changes, so ferry \
                 stops rather than skip it (is binlog encryption or a newer server's \
                 feature in use?)",
                header.event_type_raw(),
                st.file
            )));
        };
        let here = self.at(&st.file, end);
        match data {
            EventData::GtidEvent(g) => gtid::advance_mysql(&mut self.gtids, &g),
            EventData::PreviousGtidsEvent(p) if st.from_start => {
                gtid::mysql_previous(&mut self.gtids, &p)
            }
            EventData::FormatDescriptionEvent(_) => st.seen_format = true,
            EventData::RotateEvent(r) => {
                self.on_rotate(st, &r, header.log_pos(), header.timestamp())?
            }
            EventData::QueryEvent(q) => {
                self.on_query(st, meta, &q, here, header.timestamp())
                    .await?;
            }
            EventData::XidEvent(x) => {
                if let Some(mut t) = st.txn.take() {
                    if st.gtid.is_none() {
                        t.xid = x.xid;
                    }
                    self.write_txn(t, here)?;
                }
                st.gtid = None;
            }
            EventData::HeartbeatEvent if st.txn.is_none() => {
                self.record_passed()?;
                // Heartbeats come only when ferry has read to the end of the binlog being
                // written, which the server never purges: while ferry resumes from that
                // file, it is safe for the full expiry from now.
                if self.resume.as_ref().is_some_and(|r| r.file == st.file) {
                    self.stats.retention.binlog_needed_since =
                        Some(crate::postgres::replication::unix_now_micros());
                }
            }
            EventData::TransactionPayloadEvent(tpe) => {
                // Its events follow; see `payload`.
                let total = payload::inner_events(&tpe).map_err(|e| at(&e))?;
                st.payload = Some(payload::Pending {
                    end,
                    remaining: total,
                    total,
                });
            }
            EventData::RowsEvent(rows) => {
                let Some(tme) = stream.get_tme(rows.table_id()) else {
                    return Err(Error::Protocol(format!(
                        "rows event for table id {} without its table map at {here}",
                        rows.table_id()
                    )));
                };
                self.on_rows(meta, tme, &rows, &mut st.txn, &st.file, end)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The stream moved to another binlog file.
    fn on_rotate(
        &mut self,
        st: &mut StreamState,
        r: &mysql_async::binlog::events::RotateEvent<'_>,
        log_pos: u32,
        timestamp: u32,
    ) -> Result<()> {
        // The server's first, artificial rotate event comes before the format description
        // that tells the reader events end with a checksum, so its name still has the 4
        // checksum bytes after it.
        let raw = r.name_raw();
        let raw = if st.checksummed && !st.seen_format {
            &raw[..raw.len().saturating_sub(4)]
        } else {
            raw
        };
        st.read_end = 0;
        // A real rotation enters the next file at its start; the stream's artificial first
        // one names the file it starts in, at the resume position.
        st.from_start = log_pos != 0 || r.position() <= 4 && st.from_start;
        st.file = binlog_name(raw).ok_or_else(|| {
            Error::Protocol(format!(
                "a rotate event names no binlog file: {:?}",
                String::from_utf8_lossy(r.name_raw())
            ))
        })?;
        // A real rotation (not the stream's artificial first one, at position 0): ferry is
        // past the old file, which the server may purge at once, so the next file's start is
        // recorded as soon as nothing is open.
        if log_pos != 0 && st.txn.is_none() {
            self.passed = Some((
                self.at(&st.file, r.position()),
                i64::from(timestamp) * 1_000_000,
            ));
        }
        Ok(())
    }

    /// A statement event: a transaction's BEGIN, COMMIT or ROLLBACK, or DDL.
    async fn on_query(
        &mut self,
        st: &mut StreamState,
        meta: &mut Conn,
        q: &mysql_async::binlog::events::QueryEvent<'_>,
        here: BinlogPos,
        timestamp: u32,
    ) -> Result<()> {
        let sql = q.query();
        let word = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match word.as_str() {
            "BEGIN" => {
                if st.txn.as_ref().is_none_or(|t| t.buf.events() > 0) {
                    st.txn = Some(self.open_txn(st.gtid, timestamp, false));
                }
                if let Some(t) = st.txn.as_mut() {
                    t.standalone = false;
                }
            }
            "COMMIT" => {
                if let Some(t) = st.txn.take() {
                    self.write_txn(t, here)?;
                }
                st.gtid = None;
            }
            "ROLLBACK" => {
                if let Some(t) = st.txn.take() {
                    t.buf.discard();
                }
            }
            _ => {
                let db = q.schema().into_owned();
                self.ddl(meta, &db, &sql, st.txn.take(), here, timestamp)
                    .await?;
                st.gtid = None;
            }
        }
        Ok(())
    }

    /// A rows event of a captured table: its rows decoded with the table's definition, into the
    /// open transaction (with the table's definition first, the first time).
    async fn on_rows(
        &mut self,
        meta: &mut Conn,
        tme: &mysql_async::binlog::events::TableMapEvent<'_>,
        rows: &RowsEventData<'_>,
        txn: &mut Option<OpenTxn>,
        file: &str,
        end: u64,
    ) -> Result<()> {
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        if !self.settings.wanted(&db, &table) {
            return Ok(());
        }
        let Some(t) = txn.as_mut() else {
            return Err(Error::Protocol(format!(
                "a row event outside a transaction at {file}:{end}"
            )));
        };
        let mut changes = Vec::new();
        let mut names: Option<Vec<String>> = None;
        for row in rows.rows(tme) {
            let (before, after) =
                row.map_err(|e| Error::Protocol(format!("{db}.{table} row at {file}:{end}: {e}")))?;
            if names.is_none() {
                let r = after.as_ref().or(before.as_ref());
                names = r.map(|r| {
                    r.columns_ref()
                        .iter()
                        .map(|c| c.name_str().into_owned())
                        .collect()
                });
            }
            changes.push((before, after));
        }
        let kind = match &rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => 0,
            RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => 1,
            _ => 2,
        };
        let Some(schema) = self
            .catalog
            .get(meta, &db, &table, names.as_deref())
            .await?
        else {
            return Err(Error::Fatal(format!(
                "rows of {db}.{table} at {file}:{end}, but the table no longer \
                 exists on the source (dropped or renamed since these rows were \
                 written), so ferry has no definition to read them with; ferry \
                 stops rather than skip them. Ways out: add {db}.{table} to \
                 `exclude` if its changes are not wanted, or re-create the replica \
                 from a new snapshot"
            )));
        };
        let zero = self.settings.zero_dates;
        let at = || format!("{db}.{table} at {file}:{end}");
        let rel_id = schema.relation.id;
        if !t.announced.contains(&schema.relation) {
            if !self.described.contains(&rel_id)
                && !self.writer.spool().relations().contains_key(&rel_id)
            {
                // A table created since the snapshot: its whole definition first.
                if let Some(def) = table_def::describe(meta, &db, &table).await? {
                    // Fields, not `self.at`: the catalog holds `schema`.
                    let position = Position::Binlog(BinlogPos {
                        file: file.to_owned(),
                        pos: end,
                        epoch: self.epoch,
                        gtids: self.gtids.clone(),
                    });
                    t.buf.push(
                        self.writer.spill_dir(),
                        0,
                        crate::table_def::message(&def, position),
                    )?;
                }
                self.described.insert(rel_id);
            }
            t.announced.push(schema.relation.clone());
            t.buf.push(
                self.writer.spill_dir(),
                0,
                Event::Relation(schema.relation.clone()),
            )?;
        }
        self.table_names
            .entry(rel_id)
            .or_insert_with(|| schema.relation.qualified_name());
        *self.table_rows.entry(rel_id).or_default() += changes.len() as u64;
        for (before, after) in changes {
            let conv = |r| row_values(schema, r, zero, &at);
            let rel = schema.relation.id;
            let ev = match (kind, conv(before)?, conv(after)?) {
                (0, _, Some(new)) => Event::Insert(Insert { relation: rel, new }),
                (1, Some(old), Some(new)) => Event::Update(Update {
                    relation: rel,
                    old: Some(OldRow::Full(old)),
                    new,
                }),
                (2, Some(old), _) => Event::Delete(Delete {
                    relation: rel,
                    old: OldRow::Full(old),
                }),
                _ => {
                    return Err(Error::Protocol(format!(
                        "{}: a row event without its row image",
                        at()
                    )));
                }
            };
            t.buf.push(self.writer.spill_dir(), 0, ev)?;
        }
        Ok(())
    }

    fn open_txn(&self, gtid: Option<MariaGtidEvent>, time: u32, from_gtid: bool) -> OpenTxn {
        OpenTxn {
            xid: gtid
                .map(|g| (u64::from(g.domain) << 48) ^ g.seq)
                .unwrap_or(0),
            time: i64::from(time) * 1_000_000,
            buf: TxnBuffer::new("mysql".into(), self.settings.txn_memory),
            announced: Vec::new(),
            standalone: from_gtid && gtid.is_some_and(|g| g.standalone),
        }
    }

    /// A statement other than BEGIN/COMMIT: DDL. Captured tables it touches are read again when
    /// their rows next arrive; TRUNCATE becomes a Truncate event. The position after it is
    /// recorded so a restart does not read it again.
    async fn ddl(
        &mut self,
        meta: &mut Conn,
        db: &str,
        sql: &str,
        open: Option<OpenTxn>,
        pos: BinlogPos,
        time: u32,
    ) -> Result<()> {
        // The statement's transaction id: its GTID's, or its position (0 marks the snapshot).
        let xid = open
            .as_ref()
            .map(|t| t.xid)
            .filter(|x| *x != 0)
            .unwrap_or(pos.pos.max(1));
        if let Some(t) = open {
            if !t.standalone && t.buf.events() > 0 {
                // A statement inside a transaction (a temporary table, say): keep the transaction.
                return Err(Error::Protocol(format!(
                    "a statement inside a transaction with row changes at {pos}: {sql}"
                )));
            }
            t.buf.discard();
        }
        self.catalog.invalidate(None);
        // Renamed tables and columns, dropped tables: sinks do the same, so rows stay with
        // their table and values with their column.
        let position = Position::Binlog(pos.clone());
        let message = |prefix: &str, content: serde_json::Value| {
            Event::Message(Message {
                transactional: true,
                position: position.clone(),
                prefix: prefix.into(),
                content: content.to_string().into_bytes(),
            })
        };
        let events: Vec<Event> = ddl::changes(sql, db)
            .into_iter()
            .filter_map(|c| match c {
                ddl::Change::RenameTable((fd, ft), (td, tt)) => {
                    (self.settings.wanted(&fd, &ft) || self.settings.wanted(&td, &tt)).then(|| {
                        message(
                            ferry_proto::RENAME_PREFIX,
                            serde_json::json!({"from": [fd, ft], "to": [td, tt]}),
                        )
                    })
                }
                ddl::Change::RenameColumn {
                    table: (d, t),
                    from,
                    to,
                } => self.settings.wanted(&d, &t).then(|| {
                    message(
                        ferry_proto::RENAME_COLUMN_PREFIX,
                        serde_json::json!({"table": [d, t], "from": from, "to": to}),
                    )
                }),
                ddl::Change::DropTable((d, t)) => self.settings.wanted(&d, &t).then(|| {
                    message(
                        ferry_proto::DROP_TABLE_PREFIX,
                        serde_json::json!({"table": [d, t]}),
                    )
                }),
            })
            .collect();
        if !events.is_empty() {
            return self.append_txn(position, xid, time, &events);
        }
        let words: Vec<String> = sql
            .split_whitespace()
            .take(3)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        if words.first().map(String::as_str) == Some("TRUNCATE") {
            let name = sql
                .split_whitespace()
                .nth(if words.get(1).map(String::as_str) == Some("TABLE") {
                    2
                } else {
                    1
                })
                .unwrap_or("")
                .trim_end_matches(';');
            let (d, t) = match name.split_once('.') {
                Some((d, t)) => (unquote(d), unquote(t)),
                None => (db.to_owned(), unquote(name)),
            };
            if self.settings.wanted(&d, &t)
                && let Some(schema) = self.catalog.get(meta, &d, &t, None).await?
            {
                let rel: Relation = schema.relation.clone();
                let truncate = Event::Truncate(Truncate {
                    relations: vec![rel.id],
                    cascade: false,
                    restart_identity: false,
                });
                let events = [Event::Relation(rel), truncate];
                return self.append_txn(Position::Binlog(pos.clone()), xid, time, &events);
            }
        }
        self.append(&Event::Heartbeat(Heartbeat {
            position: Position::Binlog(pos),
            time: i64::from(time) * 1_000_000,
        }))
    }

    /// One transaction of a statement's events (a rename, a truncate).
    fn append_txn(
        &mut self,
        position: Position,
        xid: u64,
        time: u32,
        events: &[Event],
    ) -> Result<()> {
        let commit_time = i64::from(time) * 1_000_000;
        self.append(&Event::Begin(Begin {
            position: position.clone(),
            xid,
            commit_time,
        }))?;
        for e in events {
            self.append(e)?;
        }
        self.append(&Event::Commit(Commit {
            position,
            xid,
            commit_time,
        }))
    }

    fn write_txn(&mut self, t: OpenTxn, pos: BinlogPos) -> Result<()> {
        if t.buf.events() == 0 {
            // A transaction of no captured table: nothing to spool, but ferry is past it.
            t.buf.discard();
            self.passed = Some((pos, t.time));
            return self.record_passed();
        }
        self.passed = None;
        // Without a GTID or an XID (a non-transactional table's COMMIT), the position is the id;
        // 0 is the snapshot's.
        let xid = if t.xid == 0 { pos.pos.max(1) } else { t.xid };
        let position = Position::Binlog(pos);
        self.append(&Event::Begin(Begin {
            position: position.clone(),
            xid,
            commit_time: t.time,
        }))?;
        let mut rows = 0u64;
        t.buf.replay(|ev| {
            rows += u64::from(matches!(
                ev,
                Event::Insert(_) | Event::Update(_) | Event::Delete(_)
            ));
            self.append(&ev)
        })?;
        self.append(&Event::Commit(Commit {
            position,
            xid,
            commit_time: t.time,
        }))?;
        self.stats.transactions += 1;
        self.stats.rows += rows;
        self.stats.last_commit_time = Some(t.time);
        // Published at most once a second: the per-table counts are a map.
        if self.last_published.elapsed() >= Duration::from_secs(1) {
            self.last_published = Instant::now();
            self.publish_stats();
        }
        Ok(())
    }

    fn append(&mut self, event: &Event) -> Result<()> {
        self.writer.append(event)?;
        // A reconnect resumes after the last transaction (or statement) spooled, not where the
        // session started: what is appended but not yet fsynced is made durable by this process.
        if let Event::Commit(Commit {
            position: Position::Binlog(p),
            ..
        })
        | Event::Heartbeat(Heartbeat {
            position: Position::Binlog(p),
            ..
        }) = event
        {
            self.resume = Some(p.clone());
        }
        if let Event::Commit(Commit { commit_time: t, .. })
        | Event::Heartbeat(Heartbeat { time: t, .. }) = event
        {
            self.stats.retention.binlog_needed_since = Some(*t);
        }
        Ok(())
    }

    /// Records, at most once a second, the position of transactions that touched no captured
    /// table (a Heartbeat in the spool, which sinks checkpoint and a restart resumes from), so
    /// binlogs purged after ferry passed them never look like a gap.
    fn record_passed(&mut self) -> Result<()> {
        if self.last_passed_beat.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        let Some((pos, time)) = self.passed.take() else {
            return Ok(());
        };
        self.last_passed_beat = Instant::now();
        self.append(&Event::Heartbeat(Heartbeat {
            position: Position::Binlog(pos),
            time,
        }))
    }

    /// The server is at least as far as what ferry has read (`end` in `file`): its current
    /// position between two binlog listings, for lag in bytes.
    fn server_at_least(&mut self, file: &str, end: u64) {
        if let Some(n) = self.stats.binlog_now.as_mut()
            && n.file == file
            && n.pos < end
        {
            n.pos = end;
            if let Some(last) = self.stats.binlog_sizes.last_mut()
                && last.0 == file
            {
                last.1 = last.1.max(end);
            }
        }
    }

    /// The server's binlog files and their sizes, for lag in bytes. A failure leaves the figure
    /// unknown rather than stopping replication.
    async fn read_binlogs(&mut self, meta: &mut Conn) {
        match binlog_sizes(meta).await {
            Ok(sizes) => {
                self.stats.binlog_now = current_position(&sizes);
                self.stats.binlog_sizes = sizes;
            }
            Err(e) => {
                tracing::debug!(error = %e, "SHOW BINARY LOGS failed: lag in bytes unknown");
                self.stats.binlog_now = None;
            }
        }
    }

    /// A position in the stream now: `file:pos` of this epoch, with the GTIDs executed so far.
    fn at(&self, file: &str, pos: u64) -> BinlogPos {
        BinlogPos {
            file: file.to_owned(),
            pos,
            epoch: self.epoch,
            gtids: self.gtids.clone(),
        }
    }

    fn commit_spool(&mut self) -> Result<()> {
        self.writer.commit()?;
        self.writer.truncate()
    }
}

/// The binlog file a rotate event names: a base name and a numeric extension.
fn binlog_name(raw: &[u8]) -> Option<String> {
    let dot = raw.iter().rposition(|&b| b == b'.')?;
    let ext = &raw[dot + 1..];
    if ext.is_empty() || !ext.iter().all(u8::is_ascii_digit) {
        return None;
    }
    String::from_utf8(raw.to_vec()).ok()
}

/// The tables a statement renames, `((db, old), (db, new))`: `RENAME TABLE a TO b, c TO d` and
/// `ALTER TABLE a RENAME [TO|AS] b`. Unqualified names are in `db`, the statement's database.
fn unquote(s: &str) -> String {
    s.trim_matches('`').replace("``", "`")
}

/// Where a spool of this source would resume, if it has a position.
pub fn resume_position(dir: &Path) -> Result<Option<BinlogPos>> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(spool_tail(dir)?.0)
}

/// One row image as ferry's values, each column decoded with the table's definition; `None` for
/// an absent image. `at` names the table and position for errors.
fn row_values(
    schema: &super::schema::TableSchema,
    row: Option<mysql_async::binlog::row::BinlogRow>,
    zero: ZeroDates,
    at: &dyn Fn() -> String,
) -> Result<Option<Vec<Value>>> {
    use mysql_async::binlog::value::BinlogValue;
    let Some(row) = row else { return Ok(None) };
    let vals = row.unwrap();
    if vals.len() != schema.columns.len() {
        return Err(Error::Fatal(format!(
            "{}: the row image has {} columns, the table {}; ferry needs binlog_row_image=FULL",
            at(),
            vals.len(),
            schema.columns.len()
        )));
    }
    vals.into_iter()
        .zip(&schema.columns)
        .map(|(v, c)| {
            let v = match v {
                BinlogValue::Value(v) => v,
                BinlogValue::Jsonb(j) => {
                    return decode::mysql_json(j)
                        .map_err(|e| Error::Fatal(format!("{}: column {}: {e}", at(), c.name)));
                }
                BinlogValue::JsonDiff(_) => {
                    return Err(Error::Fatal(format!(
                        "{}: column {}: partial JSON updates; set binlog_row_value_options='' on \
                         the server",
                        at(),
                        c.name
                    )));
                }
            };
            decode::binlog(c, v, zero).map_err(|e| Error::Fatal(format!("{}: {e}", at())))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A binlog the server no longer has (or, resuming by GTID, a server that lacks what ferry
/// read) is a gap, never skipped.
fn gap_or(e: mysql_async::Error, by: ResumeBy) -> Error {
    if let mysql_async::Error::Server(s) = &e
        && s.code == 1236
    {
        return Error::Gap(match by {
            ResumeBy::FilePos => format!(
                "the source can no longer send the binlog ferry needs ({}): binlogs were purged \
                 before ferry read them; take a new snapshot with a new spool directory",
                s.message
            ),
            ResumeBy::Gtid => format!(
                "position lost: the new server cannot continue after the GTIDs ferry read ({}). \
                 It lacks transactions ferry already captured from the old primary (it was \
                 behind when it was promoted, so they are lost on it and may be on the \
                 replicas), or its binlogs no longer reach back that far, or it does not log \
                 what it replicates (log_slave_updates). Point ferry back at the old primary \
                 if it can serve, or rebuild the replicas from the new primary (a new spool \
                 directory and snapshot = \"initial\", or a restore from the archive)",
                s.message
            ),
        });
    }
    Error::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rotate_names() {
        assert_eq!(
            binlog_name(b"mysql-bin.000001").unwrap(),
            "mysql-bin.000001"
        );
        assert!(binlog_name(b"mysql-bin.000001\x8a\x07)_").is_none());
        assert_eq!(binlog_name(b"db.log.000012").unwrap(), "db.log.000012");
        assert!(binlog_name(b"nodigits.").is_none());
    }

    proptest! {
        #[test]
        fn rotate_names_never_panic(d in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = binlog_name(&d);
        }

    }
}
