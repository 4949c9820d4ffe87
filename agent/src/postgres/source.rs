//! The PostgreSQL source: streams the slot through pgoutput into the spool, in commit order, once.
//!
//! Transactions reach the spool whole: a streamed in-progress transaction (protocol 2+, `streaming
//! on`) is spilled to a file per transaction and written to the spool only at Stream Commit, in
//! commit order; aborted ones (and aborted subtransactions) are dropped. Resume: at start, the last
//! transaction committed in the spool gives the position to restart from, an incomplete transaction
//! at the spool's end is cut off, and anything the server sends again at or below that position is
//! skipped, so the spool never holds a change twice.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_proto::{
    Begin, Column, Commit, Delete, Event, Heartbeat, Insert, Lsn, Message, OldRow, Position,
    Relation, RelationId, ReplicaIdentity, Row, Truncate, Update, Value, frame,
};
use ferry_spool::{Offset, SpoolReader, SpoolWriter, segment};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::pgoutput::{self, ColumnData, OldTuple, PgMessage};
use super::replication::{ConnParams, ReplMessage, ReplicationConn, unix_now_micros};
use super::{slot, types};
use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// What the source needs from the configuration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The source URL, for ordinary connections (tokio-postgres).
    pub url: String,
    pub params: ConnParams,
    pub slot: String,
    pub publication: String,
    pub filter: TableFilter,
    /// Copy existing rows before streaming, when the slot is new.
    pub snapshot: bool,
}

/// Spool commit policy: fsync when this much is pending, or when the oldest pending byte is this old.
const GROUP_BYTES: u64 = 4 << 20;
const GROUP_DELAY: Duration = Duration::from_millis(10);
/// Standby status updates at least this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct RelInfo {
    relation: Relation,
    included: bool,
}

/// A streamed transaction being spilled to disk until it commits or aborts.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    out: BufWriter<File>,
    aborted_subxacts: HashSet<u32>,
    events: u64,
}

/// Where the spool ends, as far as the source is concerned.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpoolTail {
    /// Commit LSN of the last transaction in the spool.
    pub last_commit: Option<u64>,
    /// Offset of a Begin with no Commit after it: the start of a cut-short transaction.
    pub incomplete_from: Option<Offset>,
}

/// Finds the last committed transaction in the spool, reading segments from the newest back until
/// one holds a Begin or Commit.
pub fn spool_tail(dir: &Path) -> Result<SpoolTail> {
    let bases = segment::list(dir)?;
    let mut tail = SpoolTail::default();
    let mut later_begin: Option<Offset> = None;
    for (i, &base) in bases.iter().enumerate().rev() {
        let next = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        let mut reader = SpoolReader::open(dir, Offset(base))?;
        let mut last_begin = None;
        let mut last_commit = None;
        while let Some((off, ev)) = reader.try_next()? {
            if off.0 >= next {
                break;
            }
            match ev {
                Event::Begin(_) => last_begin = Some(off),
                Event::Commit(c) => last_commit = Some((off, c.position)),
                _ => {}
            }
        }
        let begin = last_begin.or(later_begin);
        match last_commit {
            Some((coff, Position::Postgres(lsn))) => {
                tail.last_commit = Some(lsn.0);
                tail.incomplete_from = begin.filter(|b| *b > coff).or(later_begin);
                return Ok(tail);
            }
            Some((_, other)) => {
                return Err(Error::Config(format!(
                    "the spool holds changes from another kind of source (position {other}); \
                     give this source its own spool directory"
                )));
            }
            None => later_begin = begin.or(later_begin),
        }
    }
    tail.incomplete_from = later_begin;
    Ok(tail)
}

/// The replication stream's state for one run of the source.
pub struct PgSource {
    settings: SourceSettings,
    spool: SpoolWriter,
    relations: HashMap<u32, RelInfo>,
    type_names: HashMap<(u32, i32), String>,
    /// Commit LSN of the last transaction in the spool (durable or pending).
    last_commit: Option<u64>,
    /// Everything strictly below this is durable in the spool: the flush position to report.
    durable_ack: u64,
    pending_ack: u64,
    pending_since: Option<Instant>,
    in_txn: Option<TxnState>,
    in_stream: Option<u32>,
    spills: HashMap<u32, Spill>,
    spill_dir: PathBuf,
    ack_tx: watch::Sender<Lsn>,
}

#[derive(Debug, Clone, Copy)]
struct TxnState {
    skip: bool,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("slot", &self.settings.slot)
            .field("last_commit", &self.last_commit.map(Lsn))
            .finish()
    }
}

impl PgSource {
    /// Prepares the source over an open spool: cuts an incomplete transaction from the spool's end
    /// and learns where to resume.
    pub fn new(settings: SourceSettings, mut spool: SpoolWriter) -> Result<PgSource> {
        let tail = spool_tail(spool.dir())?;
        if let Some(off) = tail.incomplete_from {
            tracing::warn!(offset = %off, "cutting an incomplete transaction from the spool's end");
            spool.truncate_from(off)?;
        }
        let spill_dir = spool.dir().join("spill");
        let _ = fs::remove_dir_all(&spill_dir);
        fs::create_dir_all(&spill_dir).map_err(|e| Error::io("create spill directory", e))?;
        let mut relations = HashMap::new();
        for rel in spool.relations().values() {
            relations.insert(
                rel.id.0 as u32,
                RelInfo {
                    included: true,
                    relation: rel.clone(),
                },
            );
        }
        let ack = tail.last_commit.map_or(0, |l| l + 1);
        let (ack_tx, _) = watch::channel(Lsn(ack));
        Ok(PgSource {
            settings,
            spool,
            relations,
            type_names: HashMap::new(),
            last_commit: tail.last_commit,
            durable_ack: ack,
            pending_ack: ack,
            pending_since: None,
            in_txn: None,
            in_stream: None,
            spills: HashMap::new(),
            spill_dir,
            ack_tx,
        })
    }

    /// The position acknowledged to the server, as it moves.
    pub fn ack_watch(&self) -> watch::Receiver<Lsn> {
        self.ack_tx.subscribe()
    }

    pub fn spool(&self) -> &SpoolWriter {
        &self.spool
    }

    /// Streams until `shutdown` turns true, reconnecting after transient failures with backoff.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut backoff = ferry_sink::Backoff::default();
        loop {
            let started = Instant::now();
            match self.session(&mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    self.reset_session_state();
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "source connection failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reset_session_state(&mut self) {
        // A transaction cut off by the disconnect is sent again in full: drop its partial state.
        self.in_txn = None;
        self.in_stream = None;
        for (_, spill) in self.spills.drain() {
            let _ = fs::remove_file(&spill.path);
        }
        // Pending events of an unfinished transaction must not reach the spool.
        if self.spool.end() > self.spool.durable_end() {
            let _ = self.commit_spool();
        }
        if let Ok(tail) = spool_tail(self.spool.dir())
            && let Some(off) = tail.incomplete_from
        {
            let _ = self.spool.truncate_from(off);
        }
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let (client, conn) =
            tokio_postgres::connect(&self.settings.url, tokio_postgres::NoTls).await?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "source query connection closed");
            }
        });
        let result = self.stream(&client, shutdown).await;
        drop(client);
        conn_task.abort();
        result
    }

    async fn stream(
        &mut self,
        client: &Client,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .get(0);
        if version < 100_000 {
            return Err(Error::Config(format!(
                "PostgreSQL {version} is not supported: ferry needs 10 or later (pgoutput)"
            )));
        }
        let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
        if wal_level != "logical" {
            return Err(Error::Config(format!(
                "wal_level is {wal_level}: set wal_level = logical in postgresql.conf and restart"
            )));
        }
        slot::ensure_publication(
            client,
            &self.settings.publication,
            &self.settings.filter,
            version,
        )
        .await?;
        let mut repl = ReplicationConn::connect(&self.settings.params).await?;
        let mut state =
            slot::inspect_slot(client, &self.settings.slot, &self.settings.params.dbname).await?;
        if state.is_some() && self.settings.snapshot && self.last_commit.is_none() {
            // The slot exists but the spool holds no completed snapshot: an earlier start died
            // during the initial copy, and its exported snapshot is gone. Start the copy over with
            // a new slot rather than stream from a slot whose earlier rows were never copied.
            tracing::warn!(slot = %self.settings.slot, "initial snapshot was not completed; recreating the slot and copying again");
            repl.simple_query(&format!(
                "DROP_REPLICATION_SLOT {} WAIT",
                slot::quote_ident(&self.settings.slot)
            ))
            .await?;
            state = None;
        }
        if state.is_none() {
            if self.last_commit.is_some() {
                return Err(Error::Gap(format!(
                    "replication slot {:?} is gone, but the spool holds changes up to {}: changes \
                     since then may be lost. Recover by clearing the spool directory and the \
                     replicas and starting again with snapshot = \"initial\"",
                    self.settings.slot,
                    Lsn(self.last_commit.unwrap_or(0))
                )));
            }
            let created = slot::create_slot(
                &mut repl,
                &self.settings.slot,
                self.settings.snapshot,
                version,
            )
            .await?;
            if self.settings.snapshot {
                super::snapshot::copy_all(
                    &self.settings,
                    client,
                    created.snapshot_name.as_deref().unwrap_or_default(),
                    created.consistent_point,
                    &mut self.spool,
                )
                .await?;
                self.commit_spool()?;
                self.last_commit = Some(created.consistent_point.saturating_sub(1));
            }
            // Nothing before the consistent point is decoded; start acknowledging from it.
            self.durable_ack = self.durable_ack.max(created.consistent_point);
            self.pending_ack = self.pending_ack.max(created.consistent_point);
        } else if let Some(s) = &state
            && let Some(pid) = s.active_pid
        {
            return Err(Error::Server {
                context: format!("replication slot {:?}", self.settings.slot),
                error: Box::new(crate::error::DbError {
                    severity: "ERROR".into(),
                    code: "55006".into(),
                    message: format!("the slot is in use by process {pid}"),
                    detail: None,
                    hint: Some("another ferry may be running with this slot".into()),
                }),
            });
        }

        let start = self.durable_ack;
        let streaming = version >= 140_000;
        let options = if streaming {
            format!(
                "proto_version '2', publication_names {}, messages 'true', streaming 'on'",
                slot::quote_literal(&slot::quote_ident(&self.settings.publication))
            )
        } else {
            format!(
                "proto_version '1', publication_names {}, messages 'true'",
                slot::quote_literal(&slot::quote_ident(&self.settings.publication))
            )
        };
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({options})",
            slot::quote_ident(&self.settings.slot),
            Lsn(start)
        );
        tracing::info!(slot = %self.settings.slot, start = %Lsn(start), streaming, "starting replication");
        repl.start_replication(&sql).await?;

        let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
        let mut group_timer = tokio::time::interval(GROUP_DELAY);
        let mut last_status_sent = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {
                    // Stop at a transaction boundary: what is pending and complete becomes durable;
                    // a transaction in progress is sent again on the next start.
                    if self.in_txn.is_none() {
                        self.commit_spool()?;
                    }
                    repl.send_status(self.durable_ack, self.durable_ack, false).await?;
                    self.ack_tx.send_replace(Lsn(self.durable_ack));
                    repl.close().await;
                    tracing::info!(acknowledged = %Lsn(self.durable_ack), "source stopped");
                    return Ok(());
                }
                msg = repl.recv() => {
                    match msg? {
                        ReplMessage::XLogData { data, .. } => self.handle(client, &data).await?,
                        ReplMessage::Keepalive { wal_end, reply_requested } => {
                            self.maybe_commit(true)?;
                            if self.idle() && self.spool.end() == self.spool.durable_end() {
                                // Nothing pending: follow the server so an idle or filtered
                                // database does not pin WAL.
                                self.durable_ack = self.durable_ack.max(wal_end);
                            }
                            if reply_requested {
                                repl.send_status(self.durable_ack, self.durable_ack, false).await?;
                                last_status_sent = self.durable_ack;
                            }
                        }
                    }
                }
                _ = group_timer.tick() => self.maybe_commit(true)?,
                _ = status_timer.tick() => {
                    if self.durable_ack != last_status_sent {
                        repl.send_status(self.durable_ack, self.durable_ack, false).await?;
                        last_status_sent = self.durable_ack;
                        self.ack_tx.send_replace(Lsn(self.durable_ack));
                    }
                }
            }
        }
    }

    fn idle(&self) -> bool {
        self.in_txn.is_none() && self.in_stream.is_none() && self.spills.is_empty()
    }

    /// Commits the spool if the group-commit policy says so (or `timer` and anything is pending).
    fn maybe_commit(&mut self, timer: bool) -> Result<()> {
        let pending = self.spool.end().0 - self.spool.durable_end().0;
        if pending == 0 {
            return Ok(());
        }
        let old = self
            .pending_since
            .is_some_and(|t| t.elapsed() >= GROUP_DELAY);
        if pending >= GROUP_BYTES || (timer && old) {
            self.commit_spool()?;
        }
        Ok(())
    }

    fn commit_spool(&mut self) -> Result<()> {
        tokio::task::block_in_place(|| self.spool.commit())?;
        self.pending_since = None;
        if self.in_txn.is_none() || self.durable_ack < self.pending_ack {
            self.durable_ack = self.durable_ack.max(self.pending_ack);
        }
        Ok(())
    }

    fn append(&mut self, event: &Event) -> Result<()> {
        if let Some(xid) = self.in_stream {
            return self.spill(xid, 0, event);
        }
        self.spool.append(event)?;
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        Ok(())
    }

    fn spill(&mut self, top: u32, sub: u32, event: &Event) -> Result<()> {
        let spill = match self.spills.get_mut(&top) {
            Some(s) => s,
            None => {
                let path = self.spill_dir.join(format!("{top}.spill"));
                let file = File::create(&path).map_err(|e| Error::io("create spill file", e))?;
                self.spills.entry(top).or_insert(Spill {
                    path,
                    out: BufWriter::with_capacity(1 << 20, file),
                    aborted_subxacts: HashSet::new(),
                    events: 0,
                })
            }
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&sub.to_le_bytes());
        frame::encode(event, &mut buf).map_err(|e| Error::Protocol(e.to_string()))?;
        spill
            .out
            .write_all(&buf)
            .map_err(|e| Error::io("write spill file", e))?;
        spill.events += 1;
        Ok(())
    }

    async fn handle(&mut self, client: &Client, data: &[u8]) -> Result<()> {
        let msg = pgoutput::decode(data, self.in_stream.is_some())?;
        match msg {
            PgMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let skip = self.last_commit.is_some_and(|l| final_lsn <= l);
                self.in_txn = Some(TxnState { skip });
                if !skip {
                    self.append(&Event::Begin(Begin {
                        position: Position::Postgres(Lsn(final_lsn)),
                        xid: u64::from(xid),
                        commit_time,
                    }))?;
                }
            }
            PgMessage::Commit {
                commit_lsn,
                commit_time,
                ..
            } => {
                let txn = self.in_txn.take();
                if txn.is_some_and(|t| !t.skip) {
                    self.append(&Event::Commit(Commit {
                        position: Position::Postgres(Lsn(commit_lsn)),
                        xid: 0,
                        commit_time,
                    }))?;
                    self.last_commit = Some(commit_lsn);
                    self.pending_ack = commit_lsn + 1;
                } else {
                    self.pending_ack = self.pending_ack.max(commit_lsn + 1);
                }
                self.maybe_commit(false)?;
            }
            PgMessage::Origin { .. } => {}
            PgMessage::Type { oid, name, .. } => {
                self.type_names.insert((oid, -1), name);
            }
            PgMessage::Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
                ..
            } => {
                let type_names = self.resolve_types(client, &columns).await?;
                let relation = Relation {
                    id: RelationId(u64::from(oid)),
                    schema: namespace,
                    name,
                    replica_identity: match replica_identity {
                        b'n' => ReplicaIdentity::Nothing,
                        b'f' => ReplicaIdentity::Full,
                        b'i' => ReplicaIdentity::Index,
                        _ => ReplicaIdentity::Default,
                    },
                    columns: columns
                        .iter()
                        .zip(type_names)
                        .map(|(c, type_name)| Column {
                            name: c.name.clone(),
                            type_name,
                            type_id: c.type_oid,
                            type_modifier: c.type_modifier,
                            key: c.key,
                            nullable: !c.key,
                        })
                        .collect(),
                };
                let included = self
                    .settings
                    .filter
                    .accepts(&relation.schema, &relation.name);
                let changed = self
                    .relations
                    .get(&oid)
                    .is_none_or(|r| r.relation != relation);
                if included && changed && !self.skipping() {
                    self.append(&Event::Relation(relation.clone()))?;
                }
                if !self.skipping() || !self.relations.contains_key(&oid) {
                    self.relations.insert(oid, RelInfo { relation, included });
                }
            }
            PgMessage::Insert { xid, oid, new } => {
                if let Some(rel) = self.row_relation(oid)? {
                    let new = row(rel, &new)?;
                    self.change(
                        xid,
                        Event::Insert(Insert {
                            relation: rel.relation.id,
                            new,
                        }),
                    )?;
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
                }
            }
            PgMessage::Delete { xid, oid, old } => {
                if let Some(rel) = self.row_relation(oid)? {
                    let event = Event::Delete(Delete {
                        relation: rel.relation.id,
                        old: old_row(rel, &old)?,
                    });
                    self.change(xid, event)?;
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
                    self.change(
                        xid,
                        Event::Truncate(Truncate {
                            relations,
                            cascade,
                            restart_identity,
                        }),
                    )?;
                }
            }
            PgMessage::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            } => {
                let event = Event::Message(Message {
                    transactional,
                    position: Position::Postgres(Lsn(lsn)),
                    prefix,
                    content: content.to_vec(),
                });
                if transactional {
                    self.change(xid, event)?;
                } else if self.last_commit.is_none_or(|l| lsn > l) {
                    // Outside any transaction: written where it arrives.
                    let in_stream = self.in_stream.take();
                    self.append(&event)?;
                    self.in_stream = in_stream;
                }
            }
            PgMessage::StreamStart { xid, .. } => self.in_stream = Some(xid),
            PgMessage::StreamStop => {
                if let Some(xid) = self.in_stream.take()
                    && let Some(s) = self.spills.get_mut(&xid)
                {
                    s.out
                        .flush()
                        .map_err(|e| Error::io("write spill file", e))?;
                }
            }
            PgMessage::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    if let Some(s) = self.spills.remove(&xid) {
                        let _ = fs::remove_file(&s.path);
                        tracing::debug!(
                            xid,
                            events = s.events,
                            "dropped aborted streamed transaction"
                        );
                    }
                } else if let Some(s) = self.spills.get_mut(&xid) {
                    s.aborted_subxacts.insert(subxid);
                }
            }
            PgMessage::StreamCommit {
                xid,
                commit_lsn,
                commit_time,
                ..
            } => self.stream_commit(xid, commit_lsn, commit_time)?,
        }
        Ok(())
    }

    fn skipping(&self) -> bool {
        self.in_txn.is_some_and(|t| t.skip)
    }

    fn row_relation(&self, oid: u32) -> Result<Option<&RelInfo>> {
        if self.skipping() {
            return Ok(None);
        }
        match self.relations.get(&oid) {
            Some(r) if r.included => Ok(Some(r)),
            Some(_) => Ok(None),
            None => Err(Error::Protocol(format!(
                "row for relation {oid} before its Relation message"
            ))),
        }
    }

    /// A change inside a transaction: to the spool, or to the spill of a streamed transaction.
    fn change(&mut self, xid: Option<u32>, event: Event) -> Result<()> {
        match (self.in_stream, xid) {
            (Some(top), Some(sub)) => self.spill(top, sub, &event),
            _ => self.append(&event),
        }
    }

    fn stream_commit(&mut self, xid: u32, commit_lsn: u64, commit_time: i64) -> Result<()> {
        let Some(mut spill) = self.spills.remove(&xid) else {
            // A streamed transaction with no change ferry captures.
            self.pending_ack = self.pending_ack.max(commit_lsn + 1);
            return Ok(());
        };
        spill
            .out
            .flush()
            .map_err(|e| Error::io("write spill file", e))?;
        if self.last_commit.is_some_and(|l| commit_lsn <= l) {
            let _ = fs::remove_file(&spill.path);
            return Ok(());
        }
        self.in_txn = Some(TxnState { skip: false });
        self.append(&Event::Begin(Begin {
            position: Position::Postgres(Lsn(commit_lsn)),
            xid: u64::from(xid),
            commit_time,
        }))?;
        let file = File::open(&spill.path).map_err(|e| Error::io("open spill file", e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; 4 + frame::HEADER_LEN];
        let mut payload = Vec::new();
        loop {
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(Error::io("read spill file", e)),
            }
            let sub = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut hb = [0u8; frame::HEADER_LEN];
            hb.copy_from_slice(&header[4..]);
            let h = frame::decode_header(&hb).map_err(|e| Error::Protocol(e.to_string()))?;
            payload.resize(h.payload_len, 0);
            reader
                .read_exact(&mut payload)
                .map_err(|e| Error::io("read spill file", e))?;
            if spill.aborted_subxacts.contains(&sub) {
                continue;
            }
            let event = frame::decode_payload(&hb, &h, &payload)
                .map_err(|e| Error::Protocol(format!("spill file: {e}")))?;
            self.spool.append(&event)?;
            if self.spool.end().0 - self.spool.durable_end().0 >= GROUP_BYTES {
                self.commit_spool()?;
            }
        }
        let _ = fs::remove_file(&spill.path);
        self.append(&Event::Commit(Commit {
            position: Position::Postgres(Lsn(commit_lsn)),
            xid: u64::from(xid),
            commit_time,
        }))?;
        self.in_txn = None;
        self.last_commit = Some(commit_lsn);
        self.pending_ack = commit_lsn + 1;
        self.pending_since.get_or_insert_with(Instant::now);
        self.maybe_commit(false)
    }

    /// Type names as `format_type` spells them (`numeric(12,2)`, `character varying(40)`, an enum's
    /// name), cached by type and modifier.
    async fn resolve_types(
        &mut self,
        client: &Client,
        columns: &[pgoutput::RelColumn],
    ) -> Result<Vec<String>> {
        let missing: Vec<(u32, i32)> = columns
            .iter()
            .map(|c| (c.type_oid, c.type_modifier))
            .filter(|k| !self.type_names.contains_key(k))
            .collect();
        if !missing.is_empty() {
            let oids: Vec<u32> = missing.iter().map(|k| k.0).collect();
            let mods: Vec<i32> = missing.iter().map(|k| k.1).collect();
            let rows = client
                .query(
                    "SELECT t.oid, t.m, format_type(t.oid, NULLIF(t.m, -1))
                     FROM unnest($1::oid[], $2::int4[]) AS t(oid, m)",
                    &[&oids, &mods],
                )
                .await?;
            for r in rows {
                let name: Option<String> = r.get(2);
                self.type_names.insert(
                    (r.get(0), r.get(1)),
                    name.unwrap_or_else(|| "unknown".into()),
                );
            }
        }
        Ok(columns
            .iter()
            .map(|c| {
                self.type_names
                    .get(&(c.type_oid, c.type_modifier))
                    .cloned()
                    .unwrap_or_else(|| format!("oid:{}", c.type_oid))
            })
            .collect())
    }

    /// Appends a heartbeat at the current acknowledged position (used by the supervisor when idle).
    pub fn heartbeat(&mut self) -> Result<()> {
        self.append(&Event::Heartbeat(Heartbeat {
            position: Position::Postgres(Lsn(self.durable_ack)),
            time: unix_now_micros(),
        }))
    }

    /// The spool after the source has stopped.
    pub fn into_spool(self) -> SpoolWriter {
        self.spool
    }
}

fn row(rel: &RelInfo, tuple: &[ColumnData<'_>]) -> Result<Row> {
    let cols = &rel.relation.columns;
    if tuple.len() != cols.len() {
        return Err(Error::Protocol(format!(
            "{} has {} columns but a row has {}",
            rel.relation.qualified_name(),
            cols.len(),
            tuple.len()
        )));
    }
    tuple
        .iter()
        .zip(cols)
        .map(|(d, c)| match d {
            ColumnData::Null => Ok(Value::Null),
            ColumnData::Unchanged => Ok(Value::Unchanged),
            ColumnData::Text(t) => Ok(types::from_text(c.type_id, &c.type_name, t)),
            ColumnData::Binary(_) => Err(Error::Protocol(
                "binary column data, but binary mode was not requested".into(),
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
