//! The database replica sink's apply loop, shared by the PostgreSQL and MySQL/MariaDB targets:
//! reads the spool from its own position and applies whole source transactions, in commit order,
//! exactly once.
//!
//! Many consecutive source transactions go into one target transaction (a batch, bounded by rows
//! and time: it is committed as soon as the spool has nothing more to give, so latency stays low
//! under light load and batches grow under heavy load), never part of one. The batch's last
//! source position and the spool offset after it are written to the target's checkpoint table in
//! the same target transaction, so after any crash the sink resumes exactly after what the target
//! has, and a transaction it sees again (at or below the checkpoint) is skipped: replay is a
//! no-op.
//!
//! Failures: a transient error (connection lost, target restarting, deadlock, …) rolls the batch
//! back and the sink reconnects with capped exponential backoff and jitter, resuming from the
//! checkpoint. A permanent error in a batch rolls it back and replays the same transactions one
//! change at a time, each under a savepoint, to find the failing change; `on_error` then decides:
//! `halt` stops the sink naming table, key and position; `skip` logs and counts it;
//! `dead_letter` writes it to the dead-letter file. Then batching resumes.
//!
//! What differs between engines (connecting, the checkpoint table, set-based statements, schema
//! changes) is a [`Target`].

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_proto::{Event, OldRow, Position, Relation, RelationId, Value};
use ferry_spool::{Cursors, Offset, SpoolReader, segment};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::deadletter::DeadLetters;
use crate::error::{Result, SinkError};
use crate::postgres::schema::SchemaChanges;
use crate::progress::{SinkProgress, SinkState};
use crate::{Backoff, OnError};

/// Opens a PostgreSQL target connection (and the task driving it). The agent supplies one that
/// speaks TLS as the URL's `sslmode` says; without one the sink connects in plain text.
#[derive(Clone)]
pub struct PgConnector(
    #[allow(clippy::type_complexity)]
    pub  std::sync::Arc<
        dyn Fn() -> std::pin::Pin<
                Box<
                    dyn Future<
                            Output = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>,
                        > + Send,
                >,
            > + Send
            + Sync,
    >,
);

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgConnector")
    }
}

/// How a database sink is set up. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct DbSinkConfig {
    pub name: String,
    /// Connection URL of the target.
    pub url: String,
    /// PostgreSQL targets: how to connect (TLS); plain text when `None`.
    pub pg_connector: Option<PgConnector>,
    pub on_error: OnError,
    pub schema_changes: SchemaChanges,
    pub create_tables: bool,
    /// PostgreSQL targets: what a MySQL/MariaDB zero date becomes.
    pub zero_dates: crate::postgres::zero_date::ZeroDatePolicy,
    pub spool_dir: PathBuf,
    /// A batch is committed once it holds this many row changes (at a transaction boundary)…
    pub max_batch_rows: usize,
    /// …or once its first transaction has waited this long.
    pub max_batch_delay: Duration,
}

impl std::fmt::Debug for DbSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSinkConfig")
            .field("name", &self.name)
            .field("url", &crate::redact::redact(&self.url))
            .field("on_error", &self.on_error)
            .field("create_tables", &self.create_tables)
            .field("spool_dir", &self.spool_dir)
            .field("max_batch_rows", &self.max_batch_rows)
            .field("max_batch_delay", &self.max_batch_delay)
            .finish_non_exhaustive()
    }
}

/// Pending row changes (or bytes of them) that make the target write them out, inside the
/// target transaction: what the sink holds in memory stays bounded whatever the transaction size.
const FLUSH_ROWS: usize = 25_000;
const FLUSH_BYTES: usize = 32 << 20;
/// A batch is also committed once it holds this many bytes of changes.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// One target database: a connection and the pending changes of its open transaction.
pub trait Target: Send + Sized + 'static {
    /// Connects, creates the checkpoint table if missing, and prepares the session; `true` when
    /// changes must be applied one by one in source order (foreign keys cannot be deferred).
    fn connect(cfg: &DbSinkConfig) -> impl Future<Output = Result<(Self, bool)>> + Send;
    /// Controls the target transaction the batch is applied in.
    fn control(&mut self, op: TxnControl) -> impl Future<Output = Result<()>> + Send;
    /// The sink's checkpoint: (source position, spool offset after it).
    fn read_checkpoint(
        &mut self,
        sink: &str,
    ) -> impl Future<Output = Result<Option<(Position, Offset)>>> + Send;
    /// Writes the checkpoint inside the open transaction.
    fn save_checkpoint(
        &mut self,
        sink: &str,
        position: &str,
        offset: Offset,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Whether the table has been announced in this session.
    fn knows(&self, id: RelationId) -> bool;
    /// Whether `rel` changes the definition of a table announced in this session.
    fn differs(&self, rel: &Relation) -> bool;
    fn pending(&self) -> usize;
    fn pending_bytes(&self) -> usize;
    /// Forgets pending changes and what is known of the target (after a rollback).
    fn reset(&mut self);
    /// Makes sure the target has the table as `rel` defines it.
    fn relation(&mut self, rel: &Relation) -> impl Future<Output = Result<()>> + Send;
    /// Adds one row change; `bytes` is its [`event_bytes`].
    fn change(&mut self, event: &Event, bytes: usize) -> impl Future<Output = Result<()>> + Send;
    fn truncate(
        &mut self,
        ids: &[RelationId],
        cascade: bool,
        restart_identity: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Writes every pending change.
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Remembers the values rows that exist hold in the columns the next definition of a table
    /// adds (a [`ferry_proto::BACKFILL_PREFIX`] message), for when the target adds them.
    /// Targets that cannot use them leave such rows NULL.
    fn backfill(&mut self, _content: &[u8]) -> Result<()> {
        Ok(())
    }
    /// Renames a table (a source's `RENAME TABLE`), after writing what is pending.
    fn rename(
        &mut self,
        from: (&str, &str),
        to: (&str, &str),
    ) -> impl Future<Output = Result<()>> + Send;
    /// Renames a column of a table, after writing what is pending; a no-op when the target
    /// already has the new name (a replay) or has neither.
    fn rename_column(
        &mut self,
        table: (&str, &str),
        from: &str,
        to: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Drops a table the source dropped, after writing what is pending.
    fn drop_table(&mut self, table: (&str, &str)) -> impl Future<Output = Result<()>> + Send;
    /// Whether a statement since the last call committed the open transaction by itself (MySQL's
    /// DDL does; the target has opened a new one), so its savepoints are gone.
    fn take_implicit_commit(&mut self) -> bool {
        false
    }
    /// Zero dates written as NULL since the last call (a PostgreSQL target's `zero_dates`).
    fn take_zero_dates(&mut self) -> u64 {
        0
    }
    /// Remembers a table's whole definition (a [`ferry_proto::TABLE_PREFIX`] message), for
    /// when the target creates the table.
    fn define(&mut self, _def: ferry_proto::TableDef) {}
    /// The end of a source transaction's changes: what waited for its rows (the secondary
    /// indexes of a table it created, built after the initial copy rather than during it).
    fn end_source_txn(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// The transaction control a worker asks of a target: one batch is one target transaction, and
/// a batch replayed change by change puts a savepoint before each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnControl {
    Begin,
    Commit,
    Rollback,
    /// Marks the point before one change.
    Savepoint,
    /// The change since the savepoint stays.
    Release,
    /// The change since the savepoint is undone; the transaction goes on.
    RollbackToSavepoint,
}

impl TxnControl {
    /// The statement, the same on PostgreSQL and MySQL/MariaDB.
    pub fn sql(self) -> &'static str {
        match self {
            TxnControl::Begin => "BEGIN",
            TxnControl::Commit => "COMMIT",
            TxnControl::Rollback => "ROLLBACK",
            TxnControl::Savepoint => "SAVEPOINT ferry_event",
            TxnControl::Release => "RELEASE SAVEPOINT ferry_event",
            TxnControl::RollbackToSavepoint => "ROLLBACK TO SAVEPOINT ferry_event",
        }
    }
}

/// A schema change a source carried as a ferry message, beyond the table's new [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ddl {
    RenameTable((String, String), (String, String)),
    RenameColumn {
        table: (String, String),
        from: String,
        to: String,
    },
    DropTable((String, String)),
}

impl Ddl {
    /// The change a message carries, if its prefix is one of them.
    pub fn from_message(m: &ferry_proto::Message) -> Result<Option<Ddl>> {
        let bad = |what: &str| {
            SinkError::Fatal(format!(
                "a {} message {what}: {}",
                m.prefix,
                String::from_utf8_lossy(&m.content)
            ))
        };
        let json = || -> Result<serde_json::Value> {
            serde_json::from_slice(&m.content).map_err(|e| bad(&e.to_string()))
        };
        let pair = |v: &serde_json::Value, k: &str| -> Option<(String, String)> {
            let a = v.get(k)?.as_array()?;
            Some((
                a.first()?.as_str()?.to_owned(),
                a.get(1)?.as_str()?.to_owned(),
            ))
        };
        Ok(Some(match m.prefix.as_str() {
            ferry_proto::RENAME_PREFIX => {
                let (from, to) = parse_rename(&m.content)?;
                Ddl::RenameTable(from, to)
            }
            ferry_proto::RENAME_COLUMN_PREFIX => {
                let v = json()?;
                let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                match (pair(&v, "table"), text("from"), text("to")) {
                    (Some(table), Some(from), Some(to)) => Ddl::RenameColumn { table, from, to },
                    _ => return Err(bad("without table, from and to")),
                }
            }
            ferry_proto::DROP_TABLE_PREFIX => {
                Ddl::DropTable(pair(&json()?, "table").ok_or_else(|| bad("without a table"))?)
            }
            _ => return Ok(None),
        }))
    }
}

/// A table rename carried by a [`ferry_proto::RENAME_PREFIX`] message: (from, to).
pub fn parse_rename(content: &[u8]) -> Result<((String, String), (String, String))> {
    let v: serde_json::Value = serde_json::from_slice(content)
        .map_err(|e| SinkError::Fatal(format!("a rename message: {e}")))?;
    let pair = |k: &str| -> Option<(String, String)> {
        let a = v.get(k)?.as_array()?;
        Some((
            a.first()?.as_str()?.to_owned(),
            a.get(1)?.as_str()?.to_owned(),
        ))
    };
    match (pair("from"), pair("to")) {
        (Some(f), Some(t)) => Ok((f, t)),
        _ => Err(SinkError::Fatal(format!(
            "a rename message without from and to: {}",
            String::from_utf8_lossy(content)
        ))),
    }
}

/// A rough size of a change in bytes, to bound batches and pending changes.
pub fn event_bytes(event: &Event) -> usize {
    let row = |r: &[Value]| r.iter().map(|v| v.approx_size() + 24).sum::<usize>();
    match event {
        Event::Insert(i) => row(&i.new),
        Event::Update(u) => row(&u.new) + u.old.as_ref().map_or(0, |o| row(o.row())),
        Event::Delete(d) => row(d.old.row()),
        _ => 0,
    }
}

/// Which table and key a failed change touched, for error reports and dead letters.
#[derive(Debug, Clone)]
pub struct Culprit {
    pub table: String,
    pub key: String,
}

/// The table and key a row event touches, described for people.
pub fn culprit(event: &Event, rel: Option<&Relation>) -> Culprit {
    let Some(rel) = rel else {
        return Culprit {
            table: "?".into(),
            key: "?".into(),
        };
    };
    let row = match event {
        Event::Insert(i) => Some(&i.new),
        Event::Update(u) => Some(u.old.as_ref().map_or(&u.new, OldRow::row)),
        Event::Delete(d) => Some(d.old.row()),
        _ => None,
    };
    let key = row
        .map(|r| {
            let parts: Vec<String> = rel
                .key_columns()
                .map(|i| {
                    format!(
                        "{}={:?}",
                        rel.columns[i].name,
                        r.get(i).unwrap_or(&Value::Null)
                    )
                })
                .collect();
            format!("({})", parts.join(", "))
        })
        .unwrap_or_else(|| "-".into());
    Culprit {
        table: rel.qualified_name(),
        key,
    }
}

/// A database sink worker over one kind of [`Target`].
#[derive(Debug)]
pub struct DbSink<T> {
    cfg: DbSinkConfig,
    progress: watch::Sender<SinkProgress>,
    dead: DeadLetters,
    target: std::marker::PhantomData<fn() -> T>,
}

/// One source transaction being read: whether it is already on the target, and where it began.
#[derive(Debug)]
struct Txn {
    begin: ferry_proto::Begin,
    skip: bool,
}

/// Per-session state of the apply loop.
struct Session<T> {
    t: T,
    /// Apply change by change (no replica role, or replaying a failed batch).
    sequential: bool,
    /// Replaying a failed batch one change at a time until this offset.
    replay_until: Option<Offset>,
    checkpoint: Option<Position>,
    in_target_txn: bool,
    batch_rows: usize,
    batch_bytes: usize,
    batch_txns: u64,
    batch_started: Option<Instant>,
    txn: Option<Txn>,
    last_position: Option<Position>,
    last_commit_time: Option<i64>,
    last_offset: Offset,
    /// Spool offset of the last checkpoint committed on the target.
    committed_offset: Offset,
}

impl<T: Target> DbSink<T> {
    pub fn new(cfg: DbSinkConfig) -> (DbSink<T>, watch::Receiver<SinkProgress>) {
        let (progress, rx) = watch::channel(SinkProgress::new());
        let dead = DeadLetters::new(&cfg.spool_dir, &cfg.name);
        (
            DbSink {
                cfg,
                progress,
                dead,
                target: std::marker::PhantomData,
            },
            rx,
        )
    }

    /// Sets the state, in the progress channel and in the state file (best effort: the file is
    /// for people, the checkpoint is on the target).
    fn set_state(&self, state: SinkState) {
        crate::progress::write_state(&self.cfg.spool_dir, &self.cfg.name, &state);
        self.progress.send_modify(|p| p.state = state);
    }

    /// Applies the spool until `shutdown`, retrying transient failures; returns the permanent
    /// failure that halted it, if one did.
    pub async fn run(
        mut self,
        durable: watch::Receiver<Offset>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.session(durable.clone(), &shutdown).await {
                Ok(()) => {
                    self.set_state(SinkState::Stopped);
                    return Ok(());
                }
                Err(e) => {
                    let again = crate::progress::after_failure(
                        e,
                        &self.cfg.name,
                        &self.cfg.spool_dir,
                        &self.progress,
                        &mut backoff,
                        started,
                        &shutdown,
                    )
                    .await?;
                    if !again {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn session(
        &mut self,
        durable: watch::Receiver<Offset>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let (t, sequential) = T::connect(&self.cfg).await?;
        let mut t = Some(t);
        let result = self.apply_loop(&mut t, sequential, durable, shutdown).await;
        if result.is_err()
            && let Some(t) = t.as_mut()
        {
            let _ = t.control(TxnControl::Rollback).await;
        }
        result
    }

    async fn apply_loop(
        &mut self,
        slot: &mut Option<T>,
        sequential: bool,
        durable: watch::Receiver<Offset>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let name = self.cfg.name.clone();
        let Some(mut t) = slot.take() else {
            return Err(SinkError::Fatal("sink session without a connection".into()));
        };
        let checkpoint = match t.read_checkpoint(&name).await {
            Ok(c) => c,
            Err(e) => {
                *slot = Some(t);
                return Err(e);
            }
        };
        let cursors = Cursors::new(&self.cfg.spool_dir);
        let oldest = segment::list(&self.cfg.spool_dir)?
            .first()
            .copied()
            .unwrap_or(0);
        let cursor = cursors.load(&name)?;
        let start = checkpoint
            .as_ref()
            .map(|c| c.1)
            .max(cursor)
            .unwrap_or(Offset(oldest));
        let spool_end = *durable.borrow();
        if start > spool_end {
            return Err(SinkError::Fatal(format!(
                "sink {name}: its checkpoint is at spool offset {start}, beyond the spool's end \
                 {spool_end}: the spool was recreated. Clear the replica (and its \
                 ferry.checkpoints row) and start again from a snapshot"
            )));
        }
        let mut reader = SpoolReader::open_tailing(&self.cfg.spool_dir, start, durable.clone())?;
        tracing::info!(
            sink = %name,
            offset = %start,
            checkpoint = %checkpoint.as_ref().map(|c| c.0.to_string()).unwrap_or_else(|| "none".into()),
            mode = if sequential { "change by change" } else { "set-based batches" },
            "sink starting"
        );
        self.set_state(SinkState::Running);
        self.progress.send_modify(|p| {
            p.offset = start;
            p.position = checkpoint.as_ref().map(|c| c.0.clone());
        });
        let mut s = Session {
            t,
            sequential,
            replay_until: None,
            checkpoint: checkpoint.map(|c| c.0),
            in_target_txn: false,
            batch_rows: 0,
            batch_bytes: 0,
            batch_txns: 0,
            batch_started: None,
            txn: None,
            last_position: None,
            last_commit_time: None,
            last_offset: start,
            committed_offset: start,
        };
        let result = self
            .apply_events(&mut s, &mut reader, shutdown, &cursors, durable)
            .await;
        *slot = Some(s.t);
        result
    }

    async fn apply_events(
        &mut self,
        s: &mut Session<T>,
        reader: &mut SpoolReader,
        shutdown: &CancellationToken,
        cursors: &Cursors,
        durable: watch::Receiver<Offset>,
    ) -> Result<()> {
        let name = self.cfg.name.clone();
        loop {
            match self.step(s, reader, shutdown, cursors).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                // A damaged spool is no change to find by replaying: it halts at once.
                Err(e)
                    if !e.is_transient()
                        && !s.sequential
                        && s.in_target_txn
                        && !matches!(e, SinkError::Spool(_)) =>
                {
                    // A permanent error in a batch: roll it back and replay the same
                    // transactions change by change to find the one that fails.
                    tracing::warn!(sink = %name, error = %e, "a batch failed; replaying it change by change");
                    s.t.control(TxnControl::Rollback).await?;
                    s.in_target_txn = false;
                    s.t.reset();
                    s.txn = None;
                    s.batch_rows = 0;
                    s.batch_bytes = 0;
                    s.batch_txns = 0;
                    s.batch_started = None;
                    s.sequential = true;
                    s.replay_until = Some(reader.position());
                    s.last_offset = s.committed_offset;
                    s.last_position = s.checkpoint.clone();
                    *reader = SpoolReader::open_tailing(
                        &self.cfg.spool_dir,
                        s.committed_offset,
                        durable.clone(),
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and applies one event (committing the batch when it is due); false to stop.
    async fn step(
        &mut self,
        s: &mut Session<T>,
        reader: &mut SpoolReader,
        shutdown: &CancellationToken,
        cursors: &Cursors,
    ) -> Result<bool> {
        let idle = !s.in_target_txn && s.txn.is_none();
        let next = if idle {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(false),
                ev = reader.next_wait() => ev?,
            }
        } else {
            match reader.try_next()? {
                Some(ev) => Some(ev),
                None if s.txn.is_none() => {
                    // The spool has nothing more right now: commit what the batch holds.
                    self.commit_batch(s, cursors).await?;
                    return Ok(true);
                }
                None => {
                    // Mid-transaction: the writer is still writing it.
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            s.t.control(TxnControl::Rollback).await?;
                            s.in_target_txn = false;
                            return Ok(false);
                        }
                        ev = reader.next_wait() => ev?,
                    }
                }
            }
        };
        let Some((offset, event)) = next else {
            // The writer is gone and everything is read.
            self.commit_batch(s, cursors).await?;
            return Ok(false);
        };
        let after = reader.position();
        self.event(s, reader, offset, after, event).await?;
        let stop = shutdown.is_cancelled();
        if stop && s.txn.is_none() {
            self.commit_batch(s, cursors).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn begin_target(&self, s: &mut Session<T>) -> Result<()> {
        if !s.in_target_txn {
            s.t.control(TxnControl::Begin).await?;
            s.in_target_txn = true;
            s.batch_started.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    async fn event(
        &mut self,
        s: &mut Session<T>,
        reader: &SpoolReader,
        offset: Offset,
        after: Offset,
        event: Event,
    ) -> Result<()> {
        match &event {
            Event::Begin(b) => {
                let skip = s.checkpoint.as_ref().is_some_and(|c| c.covers(&b.position));
                s.txn = Some(Txn {
                    begin: b.clone(),
                    skip,
                });
                if !skip {
                    self.begin_target(s).await?;
                    if s.sequential {
                        s.t.control(TxnControl::Savepoint).await?;
                    }
                }
            }
            Event::Commit(c) => {
                let Some(txn) = s.txn.take() else {
                    return Err(SinkError::Fatal(format!(
                        "spool offset {offset}: Commit without Begin"
                    )));
                };
                s.last_position = Some(c.position.clone());
                s.last_commit_time = Some(c.commit_time);
                s.last_offset = after;
                if txn.skip {
                    if !s.in_target_txn {
                        s.committed_offset = after;
                        self.progress.send_modify(|p| {
                            p.offset = after;
                            p.position = Some(c.position.clone());
                        });
                    }
                    return Ok(());
                }
                s.t.end_source_txn().await?;
                s.batch_txns += 1;
                let full = s.batch_rows >= self.cfg.max_batch_rows
                    || s.batch_bytes >= MAX_BATCH_BYTES
                    || s.batch_started
                        .is_some_and(|t| t.elapsed() >= self.cfg.max_batch_delay);
                let replay_done = s.replay_until.is_some_and(|u| after >= u);
                if s.sequential || full {
                    let cursors = Cursors::new(&self.cfg.spool_dir);
                    self.commit_batch(s, &cursors).await?;
                }
                if replay_done {
                    tracing::info!(sink = %self.cfg.name, "failed batch replayed; back to batches");
                    s.replay_until = None;
                    s.sequential = false;
                }
            }
            Event::Relation(rel) => {
                // A table the applier knows under another definition: apply the change now (in
                // a target transaction), so the rows that follow find the new columns.
                let skipping = s.txn.as_ref().is_some_and(|t| t.skip);
                if !skipping && s.t.differs(rel) {
                    self.begin_target(s).await?;
                    self.guarded(s, &event, Some(rel), Op::Relation(rel))
                        .await?;
                }
            }
            Event::Insert(_) | Event::Update(_) | Event::Delete(_) | Event::Truncate(_) => {
                let Some(txn) = &s.txn else {
                    return Err(SinkError::Fatal(format!(
                        "spool offset {offset}: a row change outside a transaction"
                    )));
                };
                if txn.skip {
                    return Ok(());
                }
                // A table met for the first time (in this session): the reader's catalog has
                // its definition as of this event.
                let ids: Vec<ferry_proto::RelationId> = match &event {
                    Event::Truncate(t) => t.relations.clone(),
                    _ => event.relation_id().into_iter().collect(),
                };
                for id in ids {
                    if !s.t.knows(id)
                        && let Some(rel) = reader.relation(id)
                    {
                        self.guarded(s, &event, Some(rel), Op::Relation(rel))
                            .await?;
                    }
                }
                let rel = event.relation_id().and_then(|id| reader.relation(id));
                // Sized once: the applier bounds its pending changes by it, the batch its size.
                let bytes = event_bytes(&event);
                self.guarded(s, &event, rel, Op::Change(&event, bytes))
                    .await?;
                s.batch_rows += 1;
                s.batch_bytes += bytes;
                if s.t.pending() >= FLUSH_ROWS || s.t.pending_bytes() >= FLUSH_BYTES {
                    s.t.flush().await?;
                }
            }
            Event::Message(m)
                if matches!(
                    m.prefix.as_str(),
                    ferry_proto::RENAME_PREFIX
                        | ferry_proto::RENAME_COLUMN_PREFIX
                        | ferry_proto::DROP_TABLE_PREFIX
                ) =>
            {
                if s.txn.as_ref().is_some_and(|t| t.skip) {
                    return Ok(());
                }
                let Some(ddl) = Ddl::from_message(m)? else {
                    return Ok(());
                };
                self.begin_target(s).await?;
                self.guarded(s, &event, None, Op::Ddl(&ddl)).await?;
            }
            Event::Message(m) if m.prefix == ferry_proto::TABLE_PREFIX => {
                if !s.txn.as_ref().is_some_and(|t| t.skip) {
                    let def = serde_json::from_slice(&m.content)
                        .map_err(|e| SinkError::Fatal(format!("a {} message: {e}", m.prefix)))?;
                    s.t.define(def);
                }
            }
            Event::Message(m) if m.prefix == ferry_proto::BACKFILL_PREFIX => {
                if !s.txn.as_ref().is_some_and(|t| t.skip) {
                    s.t.backfill(&m.content)?;
                }
            }
            Event::Message(_) => {}
            Event::Heartbeat(h) if s.txn.is_none() && s.in_target_txn => {
                // Between transactions of an open batch: the batch's checkpoint covers it.
                s.last_position = Some(h.position.clone());
                s.last_offset = after;
                // The source's time at the heartbeat: lag is measured to it, not to the last
                // commit, so an idle source is not "behind" by the age of its last commit.
                s.last_commit_time = s.last_commit_time.max(Some(h.time));
            }
            Event::Heartbeat(h) => {
                if s.txn.is_none() && !s.in_target_txn {
                    s.last_position = Some(h.position.clone());
                    s.last_offset = after;
                    s.committed_offset = after;
                    s.last_commit_time = s.last_commit_time.max(Some(h.time));
                    // The checkpoint follows idle progress (heartbeats come at most once a
                    // second), so `verify` and `status` see the target as current, and the
                    // position published for the source's acknowledgement is always one the
                    // target has recorded.
                    self.save_checkpoint(s).await?;
                    Cursors::new(&self.cfg.spool_dir).save(&self.cfg.name, after)?;
                    let time = s.last_commit_time;
                    self.progress.send_modify(|p| {
                        p.offset = after;
                        p.position = Some(h.position.clone());
                        p.last_commit_time = time.or(p.last_commit_time);
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs one operation. In sequential mode it runs under a savepoint, and a permanent failure
    /// follows `on_error`; in batch mode errors go up (and the batch is replayed sequentially).
    async fn guarded(
        &mut self,
        s: &mut Session<T>,
        event: &Event,
        rel: Option<&Relation>,
        op: Op<'_>,
    ) -> Result<()> {
        let result = async {
            op.run(&mut s.t).await?;
            if s.sequential {
                s.t.flush().await?;
            }
            Ok(())
        }
        .await;
        let committed = s.t.take_implicit_commit();
        let nulled = s.t.take_zero_dates();
        if nulled > 0 {
            self.progress.send_modify(|p| p.zero_dates += nulled);
        }
        if !s.sequential {
            return result;
        }
        match result {
            Ok(()) => {
                if !committed {
                    s.t.control(TxnControl::Release).await?;
                }
                s.t.control(TxnControl::Savepoint).await?;
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                s.t.control(TxnControl::RollbackToSavepoint).await?;
                s.t.reset();
                let (position, xid) = s
                    .txn
                    .as_ref()
                    .map(|t| (t.begin.position.clone(), t.begin.xid))
                    .unwrap_or((Position::Postgres(ferry_proto::Lsn(0)), 0));
                let Culprit { table, key } = culprit(event, rel);
                let error = e.to_string();
                match self.cfg.on_error {
                    OnError::Halt => Err(SinkError::Halted(Box::new(crate::error::Halt {
                        sink: self.cfg.name.clone(),
                        position,
                        table,
                        key,
                        error,
                    }))),
                    OnError::Skip => {
                        tracing::warn!(sink = %self.cfg.name, %position, %table, %key, %error, "skipping a change that failed (on_error = skip)");
                        self.progress.send_modify(|p| p.skipped += 1);
                        Ok(())
                    }
                    OnError::DeadLetter => {
                        self.dead.write(
                            &self.cfg.name,
                            &position,
                            xid,
                            &table,
                            &key,
                            &error,
                            event,
                        )?;
                        tracing::warn!(sink = %self.cfg.name, %position, %table, %key, %error, file = %self.dead.path().display(), "change written to the dead-letter file");
                        self.progress.send_modify(|p| p.dead_lettered += 1);
                        Ok(())
                    }
                }
            }
        }
    }

    async fn save_checkpoint(&self, s: &mut Session<T>) -> Result<()> {
        let Some(position) = &s.last_position else {
            return Ok(());
        };
        let position = position.to_string();
        s.t.save_checkpoint(&self.cfg.name, &position, s.last_offset)
            .await
    }

    /// Flushes and commits the open target transaction with the checkpoint in it.
    async fn commit_batch(&mut self, s: &mut Session<T>, cursors: &Cursors) -> Result<()> {
        if !s.in_target_txn {
            return Ok(());
        }
        s.t.flush().await?;
        self.save_checkpoint(s).await?;
        s.t.control(TxnControl::Commit).await?;
        s.in_target_txn = false;
        s.checkpoint = s.last_position.clone();
        s.committed_offset = s.last_offset;
        cursors.save(&self.cfg.name, s.last_offset)?;
        let (rows, txns) = (s.batch_rows as u64, s.batch_txns);
        s.batch_rows = 0;
        s.batch_bytes = 0;
        s.batch_txns = 0;
        s.batch_started = None;
        let (offset, position) = (s.last_offset, s.last_position.clone());
        let commit_time = s.last_commit_time;
        self.progress.send_modify(|p| {
            p.offset = offset;
            p.position = position;
            p.last_commit_time = commit_time.or(p.last_commit_time);
            p.rows += rows;
            p.transactions += txns;
            p.batches += 1;
        });
        Ok(())
    }
}

/// One thing the applier does for an event.
enum Op<'e> {
    Relation(&'e Relation),
    /// A row change or truncate, with its size from [`event_bytes`].
    Change(&'e Event, usize),
    Ddl(&'e Ddl),
}

impl Op<'_> {
    async fn run<T: Target>(&self, t: &mut T) -> Result<()> {
        match self {
            Op::Relation(rel) => t.relation(rel).await,
            Op::Change(Event::Truncate(tr), _) => {
                t.truncate(&tr.relations, tr.cascade, tr.restart_identity)
                    .await
            }
            Op::Change(ev, bytes) => t.change(ev, *bytes).await,
            Op::Ddl(Ddl::RenameTable(from, to)) => {
                t.rename((&from.0, &from.1), (&to.0, &to.1)).await
            }
            Op::Ddl(Ddl::RenameColumn { table, from, to }) => {
                t.rename_column((&table.0, &table.1), from, to).await
            }
            Op::Ddl(Ddl::DropTable(table)) => t.drop_table((&table.0, &table.1)).await,
        }
    }
}
