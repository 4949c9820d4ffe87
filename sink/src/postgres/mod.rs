//! The PostgreSQL replica sink: reads the spool from its own position and applies whole source
//! transactions, in commit order, exactly once.
//!
//! Many consecutive source transactions go into one target transaction (a batch, bounded by rows
//! and time: it is committed as soon as the spool has nothing more to give, so latency stays low
//! under light load and batches grow under heavy load), never part of one. The batch's last
//! source position and the spool offset after it are written to `ferry.checkpoints` in the same
//! target transaction, so after any crash the sink resumes exactly after what the target has,
//! and a transaction it sees again (at or below the checkpoint) is skipped: replay is a no-op.
//!
//! Failures: a transient error (connection lost, target restarting, deadlock, …) rolls the batch
//! back and the sink reconnects with capped exponential backoff and jitter, resuming from the
//! checkpoint. A permanent error in a batch rolls it back and replays the same transactions one
//! change at a time, each under a savepoint, to find the failing change; `on_error` then decides:
//! `halt` stops the sink naming table, key and position; `skip` logs and counts it;
//! `dead_letter` writes it to the dead-letter file. Then batching resumes.

pub mod apply;
pub mod encode;
pub mod schema;
pub mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_proto::{Event, Position, Relation};
use ferry_spool::{Cursors, Offset, SpoolReader, segment};
use tokio::sync::watch;
use tokio_postgres::Client;

use self::apply::{Applier, Culprit};
use self::schema::SchemaChanges;
use crate::deadletter::DeadLetters;
use crate::error::{Result, SinkError};
use crate::{Backoff, OnError};

/// How a PostgreSQL sink is set up.
#[derive(Debug, Clone)]
pub struct PgSinkConfig {
    pub name: String,
    /// tokio-postgres connection string (URL or key=value).
    pub url: String,
    pub on_error: OnError,
    pub schema_changes: SchemaChanges,
    pub create_tables: bool,
    pub spool_dir: PathBuf,
    /// A batch is committed once it holds this many row changes (at a transaction boundary)…
    pub max_batch_rows: usize,
    /// …or once its first transaction has waited this long.
    pub max_batch_delay: Duration,
}

pub use crate::progress::{SinkProgress, SinkState, read_state, state_path};

/// Pending row changes (or bytes of them) that make the applier write them out, inside the
/// target transaction: what the sink holds in memory stays bounded whatever the transaction size.
const FLUSH_ROWS: usize = 25_000;
const FLUSH_BYTES: usize = 32 << 20;
/// A batch is also committed once it holds this many bytes of changes.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// The checkpoint table on the target.
const CHECKPOINT_DDL: &str = "CREATE SCHEMA IF NOT EXISTS ferry;
    CREATE TABLE IF NOT EXISTS ferry.checkpoints (
        sink text PRIMARY KEY,
        position text NOT NULL,
        spool_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())";

/// A PostgreSQL sink worker.
#[derive(Debug)]
pub struct PgSink {
    cfg: PgSinkConfig,
    progress: watch::Sender<SinkProgress>,
    dead: DeadLetters,
}

/// Reads a sink's checkpoint from its target: (position, spool offset).
pub async fn read_checkpoint(client: &Client, sink: &str) -> Result<Option<(Position, Offset)>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('ferry.checkpoints') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let Some(row) = client
        .query_opt(
            "SELECT position, spool_offset FROM ferry.checkpoints WHERE sink = $1",
            &[&sink],
        )
        .await?
    else {
        return Ok(None);
    };
    let text: String = row.get(0);
    let position = text
        .parse()
        .map_err(|e| SinkError::Fatal(format!("ferry.checkpoints of sink {sink}: {e}")))?;
    Ok(Some((position, Offset(row.get::<_, i64>(1) as u64))))
}

/// One source transaction being read: whether it is already on the target, and where it began.
#[derive(Debug)]
struct Txn {
    begin: ferry_proto::Begin,
    skip: bool,
}

/// Per-session state of the apply loop.
struct Session<'a> {
    client: &'a Client,
    applier: Applier,
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
    last_offset: Offset,
    /// Spool offset of the last checkpoint committed on the target.
    committed_offset: Offset,
}

impl PgSink {
    pub fn new(cfg: PgSinkConfig) -> (PgSink, watch::Receiver<SinkProgress>) {
        let (progress, rx) = watch::channel(SinkProgress::new());
        let dead = DeadLetters::new(&cfg.spool_dir, &cfg.name);
        (
            PgSink {
                cfg,
                progress,
                dead,
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
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.session(durable.clone(), &mut shutdown).await {
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
                        &mut shutdown,
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
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let (client, conn) = tokio_postgres::connect(&self.cfg.url, tokio_postgres::NoTls).await?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "sink connection closed");
            }
        });
        let result = self.apply_loop(&client, durable, shutdown).await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        drop(client);
        conn_task.abort();
        result
    }

    async fn apply_loop(
        &mut self,
        client: &Client,
        durable: watch::Receiver<Offset>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let name = self.cfg.name.clone();
        client.batch_execute(CHECKPOINT_DDL).await?;
        let sequential = match client
            .batch_execute("SET session_replication_role = replica")
            .await
        {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(
                    sink = %name, error = %e,
                    "cannot set session_replication_role = replica (needs a superuser): \
                     applying change by change in source order, with the target's foreign \
                     keys and triggers active"
                );
                true
            }
        };
        let checkpoint = read_checkpoint(client, &name).await?;
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
            client,
            applier: Applier::new(self.cfg.schema_changes, self.cfg.create_tables),
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
            last_offset: start,
            committed_offset: start,
        };
        loop {
            match self.step(&mut s, &mut reader, shutdown, &cursors).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) if !e.is_transient() && !s.sequential && s.in_target_txn => {
                    // A permanent error in a batch: roll it back and replay the same
                    // transactions change by change to find the one that fails.
                    tracing::warn!(sink = %name, error = %e, "a batch failed; replaying it change by change");
                    client.batch_execute("ROLLBACK").await?;
                    s.in_target_txn = false;
                    s.applier.reset();
                    s.txn = None;
                    s.batch_rows = 0;
                    s.batch_bytes = 0;
                    s.batch_txns = 0;
                    s.batch_started = None;
                    s.sequential = true;
                    s.replay_until = Some(reader.position());
                    s.last_offset = s.committed_offset;
                    s.last_position = s.checkpoint.clone();
                    reader = SpoolReader::open_tailing(
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
        s: &mut Session<'_>,
        reader: &mut SpoolReader,
        shutdown: &mut watch::Receiver<bool>,
        cursors: &Cursors,
    ) -> Result<bool> {
        let idle = !s.in_target_txn && s.txn.is_none();
        let next = if idle {
            tokio::select! {
                biased;
                _ = async { shutdown.wait_for(|v| *v).await.is_ok() } => return Ok(false),
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
                        _ = async { shutdown.wait_for(|v| *v).await.is_ok() } => {
                            s.client.batch_execute("ROLLBACK").await?;
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
        let stop = *shutdown.borrow();
        if stop && s.txn.is_none() {
            self.commit_batch(s, cursors).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn begin_target(&self, s: &mut Session<'_>) -> Result<()> {
        if !s.in_target_txn {
            s.client.batch_execute("BEGIN").await?;
            s.in_target_txn = true;
            s.batch_started.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    async fn event(
        &mut self,
        s: &mut Session<'_>,
        reader: &SpoolReader,
        offset: Offset,
        after: Offset,
        event: Event,
    ) -> Result<()> {
        match &event {
            Event::Begin(b) => {
                let skip = s.checkpoint.as_ref().is_some_and(|c| b.position <= *c);
                s.txn = Some(Txn {
                    begin: b.clone(),
                    skip,
                });
                if !skip {
                    self.begin_target(s).await?;
                    if s.sequential {
                        s.client.batch_execute("SAVEPOINT ferry_event").await?;
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
                if !skipping && s.applier.differs(rel) {
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
                    if !s.applier.knows(id)
                        && let Some(rel) = reader.relation(id)
                    {
                        self.guarded(s, &event, Some(rel), Op::Relation(rel))
                            .await?;
                    }
                }
                let rel = event.relation_id().and_then(|id| reader.relation(id));
                // Sized once: the applier bounds its pending changes by it, the batch its size.
                let bytes = apply::event_bytes(&event);
                self.guarded(s, &event, rel, Op::Change(&event, bytes))
                    .await?;
                s.batch_rows += 1;
                s.batch_bytes += bytes;
                if s.applier.pending() >= FLUSH_ROWS || s.applier.pending_bytes() >= FLUSH_BYTES {
                    s.applier.flush(s.client).await?;
                }
            }
            Event::Message(_) => {}
            Event::Heartbeat(h) if s.txn.is_none() && s.in_target_txn => {
                // Between transactions of an open batch: the batch's checkpoint covers it.
                s.last_position = Some(h.position.clone());
                s.last_offset = after;
            }
            Event::Heartbeat(h) => {
                if s.txn.is_none() && !s.in_target_txn {
                    s.last_position = Some(h.position.clone());
                    s.last_offset = after;
                    s.committed_offset = after;
                    // The checkpoint follows idle progress (heartbeats come at most once a
                    // second), so `verify` and `status` see the target as current, and the
                    // position published for the source's acknowledgement is always one the
                    // target has recorded.
                    self.save_checkpoint(s).await?;
                    Cursors::new(&self.cfg.spool_dir).save(&self.cfg.name, after)?;
                    self.progress.send_modify(|p| {
                        p.offset = after;
                        p.position = Some(h.position.clone());
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
        s: &mut Session<'_>,
        event: &Event,
        rel: Option<&Relation>,
        op: Op<'_>,
    ) -> Result<()> {
        let result = async {
            op.run(&mut s.applier, s.client).await?;
            if s.sequential {
                s.applier.flush(s.client).await?;
            }
            Ok(())
        }
        .await;
        if !s.sequential {
            return result;
        }
        match result {
            Ok(()) => {
                s.client
                    .batch_execute("RELEASE SAVEPOINT ferry_event; SAVEPOINT ferry_event")
                    .await?;
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                s.client
                    .batch_execute("ROLLBACK TO SAVEPOINT ferry_event")
                    .await?;
                s.applier.reset();
                let (position, xid) = s
                    .txn
                    .as_ref()
                    .map(|t| (t.begin.position.clone(), t.begin.xid))
                    .unwrap_or((Position::Postgres(ferry_proto::Lsn(0)), 0));
                let Culprit { table, key } = Applier::culprit(event, rel);
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

    async fn save_checkpoint(&self, s: &Session<'_>) -> Result<()> {
        let Some(position) = &s.last_position else {
            return Ok(());
        };
        let sql = "INSERT INTO ferry.checkpoints (sink, position, spool_offset, updated_at)
                   VALUES ($1, $2, $3, now())
                   ON CONFLICT (sink) DO UPDATE SET position = EXCLUDED.position,
                       spool_offset = EXCLUDED.spool_offset, updated_at = now()";
        let offset = s.last_offset.0 as i64;
        s.client
            .execute(sql, &[&self.cfg.name, &position.to_string(), &offset])
            .await?;
        Ok(())
    }

    /// Flushes and commits the open target transaction with the checkpoint in it.
    async fn commit_batch(&mut self, s: &mut Session<'_>, cursors: &Cursors) -> Result<()> {
        if !s.in_target_txn {
            return Ok(());
        }
        s.applier.flush(s.client).await?;
        self.save_checkpoint(s).await?;
        s.client.batch_execute("COMMIT").await?;
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
        self.progress.send_modify(|p| {
            p.offset = offset;
            p.position = position;
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
    /// A row change or truncate, with its size from [`apply::event_bytes`].
    Change(&'e Event, usize),
}

impl Op<'_> {
    async fn run(&self, applier: &mut Applier, client: &Client) -> Result<()> {
        match self {
            Op::Relation(rel) => applier.relation(client, rel).await,
            Op::Change(Event::Truncate(t), _) => {
                applier
                    .truncate(client, &t.relations, t.cascade, t.restart_identity)
                    .await
            }
            Op::Change(ev, bytes) => applier.change(client, ev, *bytes).await,
        }
    }
}
