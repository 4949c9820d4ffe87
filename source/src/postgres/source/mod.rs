//! The PostgreSQL source: streams the slot through pgoutput into the spool, in commit order, once.
//!
//! Only committed transactions reach the spool. Each transaction's events are held in a
//! [`TxnBuffer`] (memory, then a spill file) until its Commit, or for a streamed in-progress
//! transaction (protocol 2+, `streaming on`) until its Stream Commit; aborted transactions and
//! aborted subtransactions are dropped. So a disconnect mid-transaction leaves nothing to undo.
//!
//! Positions and acknowledgement (see `ferry_proto::position` for their one meaning): a Commit in
//! the spool at LSN `c`, the end of its commit record, means every transaction whose commit
//! record ends at or before `c` is captured; a Heartbeat at `p` (the server's WAL end when
//! nothing was in flight) means the same for `p`. A transaction whose commit record starts at
//! `p` ends after it, so it is not covered. The source
//! acknowledges to the server (flush LSN) only a position that such a durable spool event
//! records, so after a crash the spool's last position is never behind the slot's confirmed
//! position: if it is, the slot moved without ferry and changes are missing, which is reported as
//! a gap. Resume skips any transaction the server sends again that commits below that position.

use std::collections::HashMap;
use std::fs;
use std::io::IsTerminal;
mod prepare;
mod relations;

pub use prepare::{SourceIdentity, check_identity, record_identity};

use std::path::Path;
use std::time::Duration;

use ferry_proto::{
    BACKFILL_PREFIX, Begin, Column, Commit, Delete, Event, Heartbeat, Insert, Lsn, Message, OldRow,
    Position, Relation, RelationId, ReplicaIdentity, Row, Truncate, Update, Value,
};
use ferry_spool::{Offset, SpoolWriter};
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog::TypeCatalog;
use super::ddl::{self, DDL_PREFIX};
use super::keyless::{self, Keyless};
use super::pgoutput::{self, ColumnData, OldTuple, PgMessage};
use super::replication::{ConnParams, ReplMessage, ReplicationConn, unix_now_micros};
use super::schema_change::SchemaTracker;
use super::{slot, types};
use crate::capture::spill::{Replayed, TxnBuffer};
use crate::capture::stats::SourceStats;
use crate::capture::writer::SourceWriter;
use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// What the source needs from the configuration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub params: ConnParams,
    pub slot: String,
    /// PostgreSQL 17+: create (or turn) the slot into a failover slot, which standbys with
    /// `sync_replication_slots` keep, so a promoted standby has it.
    pub failover_slot: bool,
    pub publication: String,
    pub filter: TableFilter,
    /// Copy existing rows before streaming, when the slot is new.
    pub snapshot: bool,
    /// Tables copied at once during the snapshot.
    pub snapshot_workers: usize,
    /// Memory a transaction may hold before it spills to disk.
    pub txn_memory: usize,
    /// What to do about captured tables without a replica identity.
    pub keyless: super::keyless::Keyless,
    /// Warn when the slot's `safe_wal_size` falls below this many MiB (default: a quarter of
    /// `max_slot_wal_keep_size`).
    pub min_safe_wal_mb: Option<u32>,
    /// Stop cleanly once everything committed at or before this LSN (a commit record ending at
    /// or before it) is durable in the spool.
    pub until: Option<u64>,
    /// With `ack = "applied"`: the spool offset below which every sink has applied everything.
    /// The server is then acknowledged only up to what lies below it.
    pub applied: Option<watch::Receiver<Offset>>,
    /// The spool offset every sink has applied below, whatever `ack` says: the segments all
    /// of it lies before are deleted.
    pub truncate_below: Option<watch::Receiver<Offset>>,
}

/// Standby status updates at least this often while the acknowledged position moves.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// A connection that is not ready after this long is given up and tried again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The server sends a keepalive at least every `wal_sender_timeout / 2` (30 s by default): a
/// stream silent for longer than this is dead (a half-open connection) and is reconnected.
const SILENCE_LIMIT: Duration = Duration::from_secs(75);

/// A connection that stopped answering: retried like a lost one.
fn stalled(what: &str) -> Error {
    Error::io(
        what,
        std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the server"),
    )
}

/// Progress lines in the log this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The slot's retention (`wal_status`, `safe_wal_size`) is read this often; a lost slot is found
/// within it.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct RelInfo {
    relation: Relation,
    /// Type OID each column's text is parsed as (a domain's base type).
    parse: Vec<u32>,
    included: bool,
}

/// The non-streamed transaction being received.
#[derive(Debug)]
struct OpenTxn {
    xid: u32,
    /// Already in the spool (sent again after a restart): its events are ignored.
    skip: bool,
    buf: TxnBuffer,
}

/// The one element of `attmissingval`'s text (`{7}`, `{"a b"}`, `{NULL}`): the value's text,
/// `Some(None)` for NULL; `None` if it is not one element as array output writes it.
fn missing_value(text: &str) -> Option<Option<String>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner == "NULL" {
        return Some(None);
    }
    let Some(quoted) = inner.strip_prefix('"') else {
        // Unquoted output has no separators or quotes in it.
        return (!inner.is_empty() && !inner.contains([',', '{', '}', '"', '\\']))
            .then(|| Some(inner.to_owned()));
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(Some(out)),
            c => out.push(c),
        }
    }
    None
}

/// Where the spool ends, as far as the source is concerned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolTail {
    /// Every transaction whose commit record ends at or before this LSN (so starts before it) is
    /// in the spool: the last Commit's or Heartbeat's position, whichever is later; `None` for a
    /// spool without either.
    pub resume_from: Option<u64>,
    /// Offset of a Begin with no Commit after it: the start of a transaction cut short by a crash.
    pub incomplete_from: Option<Offset>,
}

/// Reads the newest segments back to the last Commit, to find where to resume.
pub fn spool_tail(dir: &Path) -> Result<SpoolTail> {
    let tail = crate::capture::writer::tail(dir, |p| matches!(p, Position::Postgres(_)))?;
    Ok(SpoolTail {
        resume_from: match tail.resume {
            Some(Position::Postgres(l)) => Some(l.0),
            _ => None,
        },
        incomplete_from: tail.incomplete_from,
    })
}

/// The replication stream's state for one run of the source.
pub struct PgSource {
    settings: SourceSettings,
    /// The spool, written in whole transactions.
    writer: SourceWriter,
    relations: HashMap<u32, RelInfo>,
    types: TypeCatalog,
    /// Transactions committing below this are in the spool already; `None` before anything is.
    resume_from: Option<u64>,
    /// Acknowledged (or acknowledgeable) to the server: recorded by a durable spool event.
    durable_ack: u64,
    /// Becomes `durable_ack` once the spool's pending bytes are durable.
    pending_ack: u64,
    txn: Option<OpenTxn>,
    /// Streamed transactions in progress, by top-level xid.
    streams: HashMap<u32, TxnBuffer>,
    in_stream: Option<u32>,
    /// With `applied`: (spool end after an event, the position it lets the server forget).
    marks: std::collections::VecDeque<(u64, u64)>,
    /// The current session got its replication stream started.
    streaming: bool,
    /// The highest position every sink has applied (with `applied`).
    applied_ack: u64,
    stats: SourceStats,
    stats_tx: watch::Sender<SourceStats>,
    /// Row changes read per relation OID (named in `stats.tables` when published).
    table_counts: HashMap<u32, u64>,
    /// Each table's definition at this point of the stream, and the DDL trigger's word on it.
    schema: SchemaTracker,
    /// Source time of the last commit or heartbeat spooled, for the lag in seconds.
    spooled_time: Option<i64>,
    /// `server_version_num` of the source, learned at each session start.
    server_version: i32,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("slot", &self.settings.slot)
            .field("resume_from", &self.resume_from.map(Lsn))
            .finish()
    }
}

impl PgSource {
    /// Prepares the source over an open spool, before any reader of it starts: cuts a transaction
    /// a crash left incomplete at the spool's end, and learns where to resume.
    pub fn new(settings: SourceSettings, mut spool: SpoolWriter) -> Result<PgSource> {
        let tail = spool_tail(spool.dir())?;
        if let Some(off) = tail.incomplete_from {
            tracing::warn!(offset = %off, "cutting an incomplete transaction from the spool's end");
            spool.truncate_from(off)?;
        }
        let writer = SourceWriter::new(spool, settings.truncate_below.clone())?;
        let ack = tail.resume_from.unwrap_or(0);
        let stats = SourceStats {
            acknowledged: ack,
            ..SourceStats::default()
        };
        let (stats_tx, _) = watch::channel(stats.clone());
        Ok(PgSource {
            settings,
            writer,
            relations: HashMap::new(),
            types: TypeCatalog::default(),
            resume_from: tail.resume_from,
            durable_ack: ack,
            pending_ack: ack,
            txn: None,
            streams: HashMap::new(),
            in_stream: None,
            marks: std::collections::VecDeque::new(),
            streaming: false,
            applied_ack: 0,
            stats,
            stats_tx,
            table_counts: HashMap::new(),
            schema: SchemaTracker::default(),
            spooled_time: None,
            server_version: 0,
        })
    }

    /// The source's progress, updated as it moves.
    pub fn stats(&self) -> watch::Receiver<SourceStats> {
        self.stats_tx.subscribe()
    }

    pub fn spool(&self) -> &SpoolWriter {
        self.writer.spool()
    }

    /// Streams until `shutdown` turns true, reconnecting after transient failures with backoff.
    pub async fn run(&mut self, shutdown: CancellationToken) -> Result<()> {
        let mut backoff = ferry_db::retry::Backoff::default();
        loop {
            self.streaming = false;
            let result = self.session(&shutdown).await;
            self.stats.connected = false;
            self.publish_stats();
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    self.reset_session_state()?;
                    // A stream that was running and broke is retried at once; only attempts
                    // that fail to get a stream going back off further and further.
                    if self.streaming {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "source connection failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a disconnect the server sends every unacknowledged transaction again, in full: drop
    /// what was buffered of the unfinished ones. The spool holds only whole transactions.
    fn reset_session_state(&mut self) -> Result<()> {
        if let Some(t) = self.txn.take() {
            t.buf.discard();
        }
        self.in_stream = None;
        for (_, buf) in self.streams.drain() {
            buf.discard();
        }
        self.commit_spool()
    }

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let params = &self.settings.params;
        let connecting = tokio::time::timeout(
            CONNECT_TIMEOUT,
            params.tls.connect_client(&params.pg_config, "source query"),
        );
        // A server that does not answer must not hold up a stop: nothing is in flight yet.
        let (client, conn_task) = tokio::select! {
            r = connecting => {
                r.map_err(|_| stalled("the query connection did not become ready"))??
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        let result = self.stream(&client, shutdown).await;
        drop(client);
        conn_task.abort();
        result
    }

    async fn stream(&mut self, client: &Client, shutdown: &CancellationToken) -> Result<()> {
        let Some((mut repl, version)) = self.prepare(client, shutdown).await? else {
            return Ok(());
        };
        // pgoutput passes logical decoding messages (the trigger's) from PostgreSQL 14 on:
        // before that an installed trigger says nothing, and must not be counted on.
        let trigger = ddl::installed(client).await?;
        self.schema.trigger = trigger && version >= 140_000;
        if trigger && version < 140_000 {
            tracing::warn!(
                "ferry's DDL trigger is installed, but PostgreSQL {} does not pass its messages \
                 to ferry (14+): column renames stop ferry as ambiguous",
                version / 10_000
            );
        }
        self.server_version = version;
        let start = self.durable_ack;
        let streaming = version >= 140_000;
        let publication = slot::quote_literal(&slot::quote_ident(&self.settings.publication));
        let options = if streaming {
            format!(
                "proto_version '2', publication_names {publication}, messages 'true', \
                 streaming 'on'"
            )
        } else {
            format!("proto_version '1', publication_names {publication}")
        };
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({options})",
            slot::quote_ident(&self.settings.slot),
            Lsn(start)
        );
        tracing::info!(slot = %self.settings.slot, start = %Lsn(start), streaming, "starting replication");
        tokio::time::timeout(CONNECT_TIMEOUT, repl.start_replication(&sql))
            .await
            .map_err(|_| stalled("START_REPLICATION did not answer"))??;
        self.streaming = true;
        self.stats.connected = true;
        self.publish_stats();

        let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
        let mut group_timer = tokio::time::interval(crate::capture::writer::GROUP_DELAY);
        let mut progress_timer = tokio::time::interval(PROGRESS_INTERVAL);
        let mut retention_timer = tokio::time::interval(RETENTION_INTERVAL);
        let mut last_status_sent = u64::MAX;
        let mut last_progress = self.stats.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // A transaction still being received is sent again on the next start.
                    self.reset_session_state()?;
                    let ack = self.ack_position();
                    repl.send_status(ack, ack, false).await?;
                    self.publish_stats();
                    repl.close().await;
                    self.log_totals("source stopped");
                    return Ok(());
                }
                msg = tokio::time::timeout(SILENCE_LIMIT, repl.recv()) => {
                    let msg = msg.map_err(|_| stalled("the replication stream was silent"))?;
                    match msg? {
                        ReplMessage::XLogData { data, wal_end, wal_start } => {
                            tracing::trace!(wal_start = %Lsn(wal_start), wal_end = %Lsn(wal_end), kind = %data.first().map_or('?', |b| *b as char), "xlogdata");
                            self.stats.server_wal_end = self.stats.server_wal_end.max(wal_end);
                            self.handle(client, &data).await?;
                        }
                        ReplMessage::Keepalive { wal_end, reply_requested } => {
                            tracing::trace!(wal_end = %Lsn(wal_end), reply_requested, "keepalive");
                            self.stats.server_wal_end = self.stats.server_wal_end.max(wal_end);
                            self.maybe_commit(true)?;
                            if reply_requested || self.reached_until()? {
                                let ack = self.ack_position();
                                repl.send_status(ack, ack, false).await?;
                                last_status_sent = ack;
                            }
                        }
                    }
                }
                _ = group_timer.tick() => {
                    self.maybe_commit(true)?;
                    if self.reached_until()? {
                        let ack = self.ack_position();
                        repl.send_status(ack, ack, false).await?;
                        self.publish_stats();
                        repl.close().await;
                        self.log_totals("source reached --until; stopped");
                        return Ok(());
                    }
                }
                _ = status_timer.tick() => {
                    self.follow_server()?;
                    let ack = self.ack_position();
                    if ack != last_status_sent {
                        repl.send_status(ack, ack, false).await?;
                        last_status_sent = ack;
                    }
                    self.publish_stats();
                }
                _ = retention_timer.tick() => {
                    let retention = slot::retention(
                        client,
                        &self.settings.slot,
                        self.settings.min_safe_wal_mb,
                    )
                    .await?;
                    // Logged as the risk appears and as the slot's state changes, not every read.
                    let old = &self.stats.retention;
                    if let Some(why) = retention.warning(0)
                        && (old.warning(0).is_none() || old.wal_status != retention.wal_status)
                    {
                        tracing::warn!(slot = %self.settings.slot, "{why}");
                    }
                    self.stats.retention = retention;
                    self.publish_stats();
                }
                _ = progress_timer.tick() => {
                    self.truncate_spool()?;
                    if self.stats != last_progress {
                        let lag_secs = self.slot_lag_seconds();
                        tracing::info!(
                            transactions = self.stats.transactions,
                            rows = self.stats.rows,
                            acknowledged = %Lsn(self.durable_ack),
                            slot_lag_bytes = self.stats.lag_bytes(),
                            slot_lag_seconds = lag_secs,
                            "source progress"
                        );
                        last_progress = self.stats.clone();
                    }
                }
            }
        }
    }

    /// How long the oldest change the slot still holds for ferry has waited since its commit
    /// (the lag in seconds of [`crate::lag`], for the slot): with `ack = "applied"`, that of the
    /// oldest transaction some sink has not applied; with `ack = "spooled"`, since the last
    /// commit or heartbeat spooled, while the server is ahead of it. 0 with nothing held.
    fn slot_lag_seconds(&self) -> f64 {
        if self.stats.lag_bytes() == 0 {
            return 0.0;
        }
        let now = unix_now_micros();
        if let Some(applied) = &self.settings.applied {
            let below = *applied.borrow();
            return crate::lag::seconds_behind(self.writer.spool().dir(), below, now)
                .unwrap_or(0.0);
        }
        self.spooled_time
            .map_or(0.0, |t| (now - t).max(0) as f64 / 1e6)
    }

    /// When nothing is in flight, lets the acknowledged position follow the server's WAL end, so
    /// an idle or filtered database does not pin WAL. The position is first recorded in the spool
    /// (a Heartbeat, fsynced), so the acknowledgement never runs ahead of the spool.
    fn follow_server(&mut self) -> Result<()> {
        let end = self.stats.server_wal_end;
        let idle = self.txn.is_none() && self.streams.is_empty() && self.writer.pending() == 0;
        if !idle || end <= self.durable_ack {
            return Ok(());
        }
        let time = unix_now_micros();
        self.writer.append(&Event::Heartbeat(Heartbeat {
            position: Position::Postgres(Lsn(end)),
            time,
        }))?;
        self.spooled_time = Some(time);
        self.pending_ack = end;
        self.mark(end);
        self.resume_from = Some(end);
        self.commit_spool()
    }

    /// With `--until`: whether everything committed at or before it is durable in the spool.
    fn reached_until(&mut self) -> Result<bool> {
        let Some(until) = self.settings.until else {
            return Ok(false);
        };
        if self.txn.is_none() && self.streams.is_empty() {
            self.commit_spool()?;
            self.follow_server()?;
        }
        Ok(self.durable_ack >= until)
    }

    fn log_totals(&self, what: &str) {
        tracing::info!(
            acknowledged = %Lsn(self.durable_ack),
            transactions = self.stats.transactions,
            rows = self.stats.rows,
            streamed_transactions = self.stats.streamed,
            spilled_transactions = self.stats.spilled,
            "{what}"
        );
    }

    /// Notes that once the sinks are past the spool's current end, the server may forget what
    /// lies before `lsn`.
    fn mark(&mut self, lsn: u64) {
        if self.settings.applied.is_some() {
            self.marks.push_back((self.writer.spool().end().0, lsn));
        }
    }

    /// The position to acknowledge: durable in the spool (`ack = "spooled"`), and with
    /// `applied` also applied by every sink.
    fn ack_position(&mut self) -> u64 {
        let Some(applied) = &self.settings.applied else {
            return self.durable_ack;
        };
        let below = applied.borrow().0;
        while let Some(&(end, lsn)) = self.marks.front() {
            if end > below {
                break;
            }
            self.applied_ack = self.applied_ack.max(lsn);
            self.marks.pop_front();
        }
        self.applied_ack.min(self.durable_ack)
    }

    /// Deletes the spool segments every sink is past.
    fn truncate_spool(&mut self) -> Result<()> {
        self.writer.truncate()
    }

    fn publish_stats(&mut self) {
        self.stats.acknowledged = self.ack_position();
        for (oid, n) in &self.table_counts {
            if let Some(rel) = self.relations.get(oid) {
                self.stats.tables.insert(rel.relation.qualified_name(), *n);
            }
        }
        self.stats_tx.send_replace(self.stats.clone());
    }

    /// Commits the spool if the group-commit policy says so.
    fn maybe_commit(&mut self, timer: bool) -> Result<()> {
        if self.writer.pending() == 0 {
            self.durable_ack = self.durable_ack.max(self.pending_ack);
            return Ok(());
        }
        if self.writer.due(timer) {
            self.commit_spool()?;
        }
        Ok(())
    }

    fn commit_spool(&mut self) -> Result<()> {
        self.writer.commit()?;
        self.durable_ack = self.durable_ack.max(self.pending_ack);
        Ok(())
    }

    /// Appends to the spool; a Relation only when the spool's catalog does not have it as it is.
    fn append(&mut self, event: &Event) -> Result<()> {
        self.writer.append(event)
    }

    /// Appends an encoded frame (never a Relation) to the spool, as [`append`](Self::append).
    fn append_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.writer.append_frame(frame)
    }

    /// Writes one whole committed transaction to the spool; `end_lsn` is the end of its commit
    /// record, the transaction's position.
    fn write_transaction(
        &mut self,
        xid: u32,
        end_lsn: u64,
        commit_time: i64,
        buf: TxnBuffer,
    ) -> Result<()> {
        let position = Position::Postgres(Lsn(end_lsn));
        if buf.events() > 0 {
            if buf.spilled() {
                self.stats.spilled += 1;
            }
            self.append(&Event::Begin(Begin {
                position: position.clone(),
                xid: u64::from(xid),
                commit_time,
            }))?;
            let mut rows = 0u64;
            buf.replay_frames(|item| match item {
                Replayed::Event(ev) => {
                    rows += u64::from(matches!(
                        ev,
                        Event::Insert(_) | Event::Update(_) | Event::Delete(_)
                    ));
                    self.append(&ev)
                }
                Replayed::Frame(bytes) => {
                    // Row changes, truncates and messages of a spilled transaction.
                    rows += 1;
                    self.append_frame(bytes)
                }
            })?;
            self.append(&Event::Commit(Commit {
                position,
                xid: u64::from(xid),
                commit_time,
            }))?;
            self.stats.transactions += 1;
            self.stats.rows += rows;
            self.stats.last_commit_time = Some(commit_time);
            self.spooled_time = self.spooled_time.max(Some(commit_time));
        }
        self.resume_from = Some(end_lsn);
        self.pending_ack = self.pending_ack.max(end_lsn);
        self.mark(end_lsn);
        self.maybe_commit(false)
    }

    /// Whether a transaction whose commit record starts at `commit_lsn` (all that pgoutput's
    /// Begin tells) is in the spool already.
    fn already_spooled(&self, commit_lsn: u64) -> bool {
        self.resume_from
            .is_some_and(|r| Lsn(r).covers_commit_at(Lsn(commit_lsn)))
    }

    /// Buffers a change of the current transaction: of the streamed block in progress (tagged
    /// with its subtransaction), or of the open transaction.
    fn change(&mut self, sub: Option<u32>, event: Event) -> Result<()> {
        if let Some(top) = self.in_stream {
            let limit = self.settings.txn_memory;
            let buf = self
                .streams
                .entry(top)
                .or_insert_with(|| TxnBuffer::new(format!("stream-{top}"), limit));
            let sub = sub.filter(|s| *s != top).unwrap_or(0);
            return buf.push(self.writer.spill_dir(), sub, event);
        }
        match self.txn.as_mut() {
            Some(t) if t.skip => Ok(()),
            Some(t) => t.buf.push(self.writer.spill_dir(), 0, event),
            None => Err(Error::Protocol(format!(
                "pgoutput: a {} change outside any transaction",
                event.kind()
            ))),
        }
    }

    async fn handle(&mut self, client: &Client, data: &[u8]) -> Result<()> {
        let msg = pgoutput::decode(data, self.in_stream.is_some())?;
        match msg {
            PgMessage::Begin { final_lsn, xid, .. } => {
                if let Some(t) = self.txn.take() {
                    t.buf.discard();
                    return Err(Error::Protocol(format!(
                        "pgoutput: Begin of {xid} inside transaction {}",
                        t.xid
                    )));
                }
                self.txn = Some(OpenTxn {
                    xid,
                    skip: self.already_spooled(final_lsn),
                    buf: TxnBuffer::new(format!("txn-{xid}"), self.settings.txn_memory),
                });
            }
            PgMessage::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                let Some(txn) = self.txn.take() else {
                    return Err(Error::Protocol("pgoutput: Commit without Begin".into()));
                };
                if txn.skip {
                    txn.buf.discard();
                    self.maybe_commit(false)?;
                } else {
                    self.write_transaction(txn.xid, end_lsn, commit_time, txn.buf)?;
                }
            }
            PgMessage::Origin { .. } => {}
            PgMessage::Type { .. } => {}
            PgMessage::Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                let (relation, parse) = self
                    .relation_of(client, oid, namespace, name, replica_identity, columns)
                    .await?;
                self.on_relation(client, xid, oid, relation, parse).await?;
            }
            PgMessage::Insert { xid, oid, new } => {
                if let Some(rel) = self.row_relation(oid)? {
                    let new = row(rel, &new)?;
                    let id = rel.relation.id;
                    self.change(xid, Event::Insert(Insert { relation: id, new }))?;
                    *self.table_counts.entry(oid).or_default() += 1;
                }
            }
            PgMessage::Update { xid, oid, old, new } => {
                if let Some(rel) = self.row_relation(oid)? {
                    let event = Event::Update(Update {
                        relation: rel.relation.id,
                        old: old.map(|o| old_row(rel, &o)).transpose()?,
                        new: row(rel, &new)?,
                    });
                    self.change(xid, event)?;
                    *self.table_counts.entry(oid).or_default() += 1;
                }
            }
            PgMessage::Delete { xid, oid, old } => {
                if let Some(rel) = self.row_relation(oid)? {
                    let event = Event::Delete(Delete {
                        relation: rel.relation.id,
                        old: old_row(rel, &old)?,
                    });
                    self.change(xid, event)?;
                    *self.table_counts.entry(oid).or_default() += 1;
                }
            }
            PgMessage::Truncate {
                xid,
                cascade,
                restart_identity,
                oids,
            } => {
                let relations: Vec<RelationId> = oids
                    .iter()
                    .filter(|o| self.relations.get(o).is_some_and(|r| r.included))
                    .map(|&o| RelationId(u64::from(o)))
                    .collect();
                if !relations.is_empty() {
                    let event = Event::Truncate(Truncate {
                        relations,
                        cascade,
                        restart_identity,
                    });
                    self.change(xid, event)?;
                }
            }
            PgMessage::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            } => self.on_message(xid, transactional, lsn, prefix, content)?,
            PgMessage::StreamStart { xid, .. } => {
                if self.in_stream.is_some() {
                    return Err(Error::Protocol(
                        "pgoutput: Stream Start inside a stream block".into(),
                    ));
                }
                self.in_stream = Some(xid);
            }
            PgMessage::StreamStop => self.in_stream = None,
            PgMessage::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    if let Some(buf) = self.streams.remove(&xid) {
                        tracing::debug!(
                            xid,
                            events = buf.events(),
                            "dropped an aborted streamed transaction"
                        );
                        buf.discard();
                    }
                } else if let Some(buf) = self.streams.get_mut(&xid) {
                    buf.abort_sub(subxid);
                }
            }
            PgMessage::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let buf = self
                    .streams
                    .remove(&xid)
                    .unwrap_or_else(|| TxnBuffer::new(String::new(), 0));
                if self.already_spooled(commit_lsn) {
                    buf.discard();
                } else {
                    self.stats.streamed += 1;
                    self.write_transaction(xid, end_lsn, commit_time, buf)?;
                }
            }
        }
        Ok(())
    }

    /// A logical decoding message: the DDL trigger's become the changes they name; any other is
    /// carried as it is (in its transaction, or where it arrives when not transactional).
    fn on_message(
        &mut self,
        xid: Option<u32>,
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: &[u8],
    ) -> Result<()> {
        if transactional && prefix == DDL_PREFIX {
            // ferry's DDL trigger: carried as the changes it names, not as itself.
            let msg = ddl::parse(content)?;
            let spool = self.writer.spool();
            let events = self.schema.on_ddl(
                msg,
                |oid| spool.relations().get(&RelationId(u64::from(oid))).cloned(),
                &self.settings.filter,
                &Position::Postgres(Lsn(lsn)),
            );
            for event in events {
                self.change(xid, event)?;
            }
            return Ok(());
        }
        let event = Event::Message(Message {
            transactional,
            position: Position::Postgres(Lsn(lsn)),
            prefix,
            content: content.to_vec(),
        });
        if transactional {
            self.change(xid, event)?;
        } else if !self.already_spooled(lsn) {
            // Not part of any transaction: written where it arrives.
            self.append(&event)?;
            self.maybe_commit(false)?;
        }
        Ok(())
    }

    /// Whether the changes arriving now belong to a transaction already in the spool (sent
    /// again after a restart), which is discarded.
    fn discarding(&self) -> bool {
        self.in_stream.is_none() && self.txn.as_ref().is_some_and(|t| t.skip)
    }

    fn row_relation(&self, oid: u32) -> Result<Option<&RelInfo>> {
        if self.discarding() {
            return Ok(None);
        }
        match self.relations.get(&oid) {
            Some(r) if r.included => Ok(Some(r)),
            Some(_) => Ok(None),
            None => Err(Error::Protocol(format!(
                "pgoutput: a row of relation {oid} before its Relation message"
            ))),
        }
    }

    /// The spool after the source has stopped.
    pub fn into_spool(self) -> SpoolWriter {
        self.writer.into_spool()
    }
}

fn replica_identity_of(code: u8) -> ReplicaIdentity {
    match code {
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    }
}

fn row(rel: &RelInfo, tuple: &[ColumnData<'_>]) -> Result<Row> {
    let cols = &rel.relation.columns;
    if tuple.len() != cols.len() {
        return Err(Error::Protocol(format!(
            "pgoutput: {} has {} columns but a row has {}",
            rel.relation.qualified_name(),
            cols.len(),
            tuple.len()
        )));
    }
    tuple
        .iter()
        .zip(cols)
        .zip(&rel.parse)
        .map(|((d, c), &parse)| match d {
            ColumnData::Null => Ok(Value::Null),
            ColumnData::Unchanged => Ok(Value::Unchanged),
            ColumnData::Text(t) => Ok(types::from_text(parse, &c.type_name, t)),
            ColumnData::Binary(_) => Err(Error::Protocol(
                "pgoutput: binary column data, but binary mode was not requested".into(),
            )),
        })
        .collect()
}

fn old_row(rel: &RelInfo, old: &OldTuple<'_>) -> Result<OldRow> {
    Ok(match old {
        OldTuple::Key(t) => OldRow::Key(row(rel, t)?),
        OldTuple::Old(t) => OldRow::Full(row(rel, t)?),
    })
}

/// Whether stderr is a terminal (progress bars) or a log collector (progress lines).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_remembers_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let id = SourceIdentity {
            system_id: "7301".into(),
            database: "app".into(),
            slot: "ferry".into(),
            timeline: Some(1),
        };
        assert_eq!(check_identity(dir.path(), &id).unwrap(), None);
        assert_eq!(check_identity(dir.path(), &id).unwrap(), None);
        // A promoted standby: the same source on a later timeline.
        let promoted = SourceIdentity {
            timeline: Some(2),
            ..id.clone()
        };
        assert_eq!(check_identity(dir.path(), &promoted).unwrap(), Some(1));
        for other in [
            SourceIdentity {
                system_id: "9999".into(),
                ..id.clone()
            },
            SourceIdentity {
                slot: "other".into(),
                ..id.clone()
            },
        ] {
            let e = check_identity(dir.path(), &other).unwrap_err().to_string();
            assert!(e.contains("its own spool directory"), "{e}");
        }
    }

    #[test]
    fn spool_tail_finds_the_resume_position_and_a_cut_transaction() {
        use ferry_proto::samples;
        use ferry_spool::WriterOptions;
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SpoolWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(spool_tail(dir.path()).unwrap(), SpoolTail::default());
        let pos = |l| Position::Postgres(Lsn(l));
        let begin = |l| {
            Event::Begin(Begin {
                position: pos(l),
                xid: 1,
                commit_time: 0,
            })
        };
        let commit = |l| {
            Event::Commit(Commit {
                position: pos(l),
                xid: 1,
                commit_time: 0,
            })
        };
        w.append(&Event::Relation(samples::relation(1))).unwrap();
        w.append(&begin(100)).unwrap();
        w.append(&samples::insert(1, 1, 10)).unwrap();
        w.append(&commit(100)).unwrap();
        w.commit().unwrap();
        let tail = spool_tail(dir.path()).unwrap();
        assert_eq!(tail.resume_from, Some(100));
        assert_eq!(tail.incomplete_from, None);
        w.append(&Event::Heartbeat(Heartbeat {
            position: pos(500),
            time: 0,
        }))
        .unwrap();
        let cut = w.append(&begin(600)).unwrap();
        w.append(&samples::insert(1, 2, 10)).unwrap();
        w.commit().unwrap();
        let tail = spool_tail(dir.path()).unwrap();
        assert_eq!(tail.resume_from, Some(500));
        assert_eq!(tail.incomplete_from, Some(cut));
    }
}

#[cfg(test)]
mod backfill_tests {
    use super::missing_value;
    use proptest::prelude::*;

    proptest! {
        /// Any text, quoted as array output quotes an element, reads back as itself; any input
        /// at all gives an answer, never a panic.
        #[test]
        fn quoted_elements_read_back_and_nothing_panics(text in any::<String>(), junk in any::<String>()) {
            let quoted = format!("{{\"{}\"}}", text.replace('\\', "\\\\").replace('"', "\\\""));
            prop_assert_eq!(missing_value(&quoted), Some(Some(text)));
            let _ = missing_value(&junk);
            let _ = missing_value(&format!("{{{junk}}}"));
        }
    }

    #[test]
    fn one_element_arrays_read_back_as_the_value() {
        assert_eq!(missing_value("{7}"), Some(Some("7".into())));
        assert_eq!(missing_value("{NULL}"), Some(None));
        assert_eq!(missing_value(r#"{"NULL"}"#), Some(Some("NULL".into())));
        assert_eq!(
            missing_value(r#"{"it's \"q\" a\\b, {x}"}"#),
            Some(Some(r#"it's "q" a\b, {x}"#.into()))
        );
        assert_eq!(
            missing_value(r#"{"2024-01-01 00:00:00+00"}"#),
            Some(Some("2024-01-01 00:00:00+00".into()))
        );
        assert_eq!(missing_value(r#"{""}"#), Some(Some(String::new())));
        for bad in ["7", "{1,2}", "{}", r#"{"a"b}"#, r#"{"a"#, "{{1}}"] {
            assert_eq!(missing_value(bad), None, "{bad}");
        }
    }
}
