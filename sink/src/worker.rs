//! The sink worker: reads the spool from its own position and applies whole source
//! transactions, in commit order, to one [`Destination`], exactly once where the destination
//! keeps a checkpoint with what it applies (databases, Kafka with `exactly_once`), at least once
//! otherwise.
//!
//! Many consecutive source transactions go into one destination batch (bounded by rows, bytes
//! and time, and committed as soon as the spool has nothing more to give, so latency stays low
//! under light load and batches grow under heavy load), never part of one. The batch's last
//! source position and the spool offset after it are committed with the batch, so after any
//! crash the worker resumes exactly after what the destination has, and a transaction it sees
//! again (covered by the checkpoint) is skipped: replay is a no-op.
//!
//! Failures are classified by the destination ([`ErrorClass`]): a transient one abandons the
//! batch and the worker opens the destination again with capped exponential backoff and
//! jitter, resuming from the checkpoint. A refused change in a batch rolls the batch back and
//! replays the same transactions change by change (each step marked, kept or undone) to find
//! it; `on_error` then decides: `halt` stops the sink naming table, key and position; `skip`
//! logs and counts it; `dead_letter` hands it to the destination's [`DeadLetters`]. Then
//! batching resumes. Anything else halts the sink with its reason.

use std::time::Instant;

use ferry_proto::{Event, Position, Relation};
use ferry_spool::{Cursors, Offset, SpoolReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::destination::{
    Checkpoint, DeadLetters, Destination, ErrorClass, Refusal, Step, WorkerSettings,
};
use crate::error::{Result, SinkError};
use crate::progress::{SinkProgress, SinkState, Status};
use crate::{Backoff, OnError};

/// A batch is also committed once it holds this many bytes of changes.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// A sink worker over one kind of [`Destination`].
pub struct Worker<D: Destination> {
    cfg: D::Config,
    settings: WorkerSettings,
    status: Status,
}

impl<D: Destination> std::fmt::Debug for Worker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One source transaction being read: whether the destination already has it.
#[derive(Debug)]
struct Txn {
    begin: ferry_proto::Begin,
    skip: bool,
    changes: u64,
}

/// Per-session state of the apply loop.
struct Session<D> {
    d: D,
    letters: Box<dyn DeadLetters>,
    /// Apply change by change (the destination asked for it, or a failed batch is replayed).
    sequential: bool,
    /// Replaying a failed batch one change at a time until this offset.
    replay_until: Option<Offset>,
    /// What the destination has committed.
    checkpoint: Option<Position>,
    in_batch: bool,
    batch_rows: usize,
    batch_bytes: usize,
    batch_txns: u64,
    batch_started: Option<Instant>,
    txn: Option<Txn>,
    last_position: Option<Position>,
    last_commit_time: Option<i64>,
    last_offset: Offset,
    /// Spool offset after the last batch committed on the destination.
    committed_offset: Offset,
}

impl<D> Session<D> {
    fn skipping(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.skip)
    }

    fn clear_batch(&mut self) {
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.batch_txns = 0;
        self.batch_started = None;
    }
}

impl<D: Destination> Worker<D> {
    pub fn new(cfg: D::Config) -> (Worker<D>, watch::Receiver<SinkProgress>) {
        let settings = D::settings(&cfg);
        let (status, rx) = Status::new(&settings.name, &settings.spool_dir);
        (
            Worker {
                cfg,
                settings,
                status,
            },
            rx,
        )
    }

    /// Applies the spool until `shutdown`, retrying transient failures; returns the failure
    /// that halted it, if one did.
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
                    self.status.set(SinkState::Stopped);
                    return Ok(());
                }
                Err((e, class)) => {
                    let again = crate::progress::after_failure(
                        e,
                        class == ErrorClass::Transient,
                        &self.status,
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

    /// One connection's worth of applying; the error comes with its class.
    async fn session(
        &mut self,
        durable: watch::Receiver<Offset>,
        shutdown: &CancellationToken,
    ) -> std::result::Result<(), (SinkError, ErrorClass)> {
        let (d, opened) = match D::open(&self.cfg, self.status.clone()).await {
            Ok(o) => o,
            Err(e) => {
                let class = crate::destination::default_class(&e);
                return Err((e, class));
            }
        };
        let letters = d.dead_letters(&self.settings);
        let mut s = Session {
            d,
            letters,
            sequential: opened.change_by_change,
            replay_until: None,
            checkpoint: opened.applied.clone(),
            in_batch: false,
            batch_rows: 0,
            batch_bytes: 0,
            batch_txns: 0,
            batch_started: None,
            txn: None,
            last_position: None,
            last_commit_time: None,
            last_offset: Offset(0),
            committed_offset: Offset(0),
        };
        let result = async {
            let mut reader = self.start(&mut s, &opened, &durable)?;
            self.apply_events(&mut s, &mut reader, shutdown, durable)
                .await
        }
        .await;
        result.map_err(|e| {
            let class = s.d.classify(&e);
            (e, class)
        })
    }

    /// Where this session starts reading: after the destination's checkpoint or the spool
    /// cursor, whichever is further (the cursor is saved after the checkpoint commits, and
    /// alone for destinations that keep none), else the oldest segment.
    fn start(
        &self,
        s: &mut Session<D>,
        opened: &crate::destination::Opened,
        durable: &watch::Receiver<Offset>,
    ) -> Result<SpoolReader> {
        let name = &self.settings.name;
        let cursor = Cursors::new(&self.settings.spool_dir).load(name)?;
        let start = match opened.resume.max(cursor) {
            Some(o) => o,
            None => crate::destination::oldest_offset(&self.settings.spool_dir)?,
        };
        let spool_end = *durable.borrow();
        if start > spool_end {
            return Err(SinkError::Fatal(format!(
                "sink {name}: its checkpoint is at spool offset {start}, beyond the spool's end \
                 {spool_end}: the spool was recreated. Clear the destination (and its \
                 checkpoint) and start again from a snapshot"
            )));
        }
        let reader = SpoolReader::open_tailing(&self.settings.spool_dir, start, durable.clone())?;
        tracing::info!(
            sink = %name,
            offset = %start,
            checkpoint = %opened.applied.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            mode = if s.sequential { "change by change" } else { "batches" },
            "sink starting"
        );
        self.status.set(SinkState::Running);
        self.status.update(|p| {
            p.offset = start;
            p.position = opened.applied.clone();
        });
        s.last_offset = start;
        s.committed_offset = start;
        Ok(reader)
    }

    async fn apply_events(
        &mut self,
        s: &mut Session<D>,
        reader: &mut SpoolReader,
        shutdown: &CancellationToken,
        durable: watch::Receiver<Offset>,
    ) -> Result<()> {
        loop {
            let e = match self.step(s, reader, shutdown).await {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => e,
            };
            // A damaged spool is no change to find by replaying: it halts at once.
            let replay = !s.sequential
                && s.in_batch
                && !matches!(e, SinkError::Spool(_))
                && s.d.classify(&e) == ErrorClass::Refused;
            if !replay {
                return Err(e);
            }
            // A change refused in a batch: roll it back and replay the same transactions change
            // by change to find the one that fails.
            tracing::warn!(sink = %self.settings.name, error = %e, "a batch failed; replaying it change by change");
            s.d.abort().await?;
            s.in_batch = false;
            s.txn = None;
            s.clear_batch();
            s.sequential = true;
            s.replay_until = Some(reader.position());
            s.last_offset = s.committed_offset;
            s.last_position = s.checkpoint.clone();
            *reader = SpoolReader::open_tailing(
                &self.settings.spool_dir,
                s.committed_offset,
                durable.clone(),
            )?;
        }
    }

    /// Reads and applies one event (committing the batch when it is due); false to stop.
    async fn step(
        &mut self,
        s: &mut Session<D>,
        reader: &mut SpoolReader,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let idle = !s.in_batch && s.txn.is_none();
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
                    self.commit_batch(s).await?;
                    return Ok(true);
                }
                None => {
                    // Mid-transaction: the source is still writing it.
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            self.abandon(s).await?;
                            return Ok(false);
                        }
                        ev = reader.next_wait() => ev?,
                    }
                }
            }
        };
        let Some((offset, event)) = next else {
            // The writer is gone and everything is read. A transaction without its Commit
            // (there should be none: the source makes only whole ones durable) is not applied.
            if s.txn.is_some() {
                self.abandon(s).await?;
            } else {
                self.commit_batch(s).await?;
            }
            return Ok(false);
        };
        let after = reader.position();
        self.event(s, reader, offset, after, event).await?;
        if shutdown.is_cancelled() && s.txn.is_none() {
            self.commit_batch(s).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Gives up the open batch (shutdown in the middle of a source transaction).
    async fn abandon(&self, s: &mut Session<D>) -> Result<()> {
        if s.in_batch {
            s.d.abort().await?;
            s.in_batch = false;
        }
        Ok(())
    }

    async fn begin_batch(&self, s: &mut Session<D>) -> Result<()> {
        if !s.in_batch {
            s.d.begin().await?;
            s.in_batch = true;
            s.batch_started.get_or_insert_with(Instant::now);
            if s.sequential {
                s.d.mark().await?;
            }
        }
        Ok(())
    }

    async fn event(
        &mut self,
        s: &mut Session<D>,
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
                    changes: 0,
                });
                if !skip {
                    self.begin_batch(s).await?;
                    self.guarded(s, reader, Step::Begin(b), None).await?;
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
                    if !s.in_batch {
                        s.committed_offset = after;
                        self.status.update(|p| {
                            p.offset = after;
                            p.position = Some(c.position.clone());
                        });
                    }
                    return Ok(());
                }
                s.txn = Some(txn);
                let end = Step::End {
                    commit: c,
                    changes: s.txn.as_ref().map_or(0, |t| t.changes),
                };
                let ended = self.guarded(s, reader, end, None).await;
                s.txn = None;
                ended?;
                s.batch_txns += 1;
                let full = s.batch_rows >= self.settings.max_batch_rows
                    || s.batch_bytes >= MAX_BATCH_BYTES
                    || s.batch_started
                        .is_some_and(|t| t.elapsed() >= self.settings.max_batch_delay);
                let replay_done = s.replay_until.is_some_and(|u| after >= u);
                if s.sequential || full {
                    self.commit_batch(s).await?;
                }
                if replay_done {
                    tracing::info!(sink = %self.settings.name, "failed batch replayed; back to batches");
                    s.replay_until = None;
                    s.sequential = false;
                }
            }
            // Outside a transaction a Relation is a segment's prologue repeating the definitions
            // in force: the reader's catalog has it, and the destination learned it in-stream.
            Event::Relation(rel) => {
                if s.txn.is_some() && !s.skipping() {
                    self.guarded(s, reader, Step::Relation(rel), None).await?;
                }
            }
            Event::Insert(_) | Event::Update(_) | Event::Delete(_) | Event::Truncate(_) => {
                let Some(txn) = s.txn.as_mut() else {
                    return Err(SinkError::Fatal(format!(
                        "spool offset {offset}: a row change outside a transaction"
                    )));
                };
                if txn.skip {
                    return Ok(());
                }
                txn.changes += 1;
                // Sized once: the destination bounds what it holds by it, the batch its size.
                let bytes = crate::db::event_bytes(&event);
                let rel = event.relation_id().and_then(|id| reader.relation(id));
                self.guarded(s, reader, Step::Change(&event, bytes), rel)
                    .await?;
                s.batch_rows += 1;
                s.batch_bytes += bytes;
            }
            Event::Message(m) => {
                if s.skipping() {
                    return Ok(());
                }
                let step = match m.prefix.as_str() {
                    ferry_proto::TABLE_PREFIX => {
                        Step::Define(serde_json::from_slice(&m.content).map_err(|e| {
                            SinkError::Fatal(format!("a {} message: {e}", m.prefix))
                        })?)
                    }
                    ferry_proto::BACKFILL_PREFIX => Step::Backfill(&m.content),
                    _ => match crate::db::Ddl::from_message(m)? {
                        Some(ddl) => {
                            self.begin_batch(s).await?;
                            return self.guarded(s, reader, Step::Ddl(&ddl), None).await;
                        }
                        None => return Ok(()),
                    },
                };
                s.d.apply(step, reader).await?;
            }
            Event::Heartbeat(h) => self.heartbeat(s, h, after).await?,
        }
        Ok(())
    }

    /// The source's position and time while it has nothing to send. Lag is measured to the
    /// heartbeat's time, not the last commit's, so an idle source is not "behind" by the age of
    /// its last commit.
    async fn heartbeat(
        &self,
        s: &mut Session<D>,
        h: &ferry_proto::Heartbeat,
        after: Offset,
    ) -> Result<()> {
        if s.txn.is_some() {
            return Ok(());
        }
        s.last_position = Some(h.position.clone());
        s.last_offset = after;
        s.last_commit_time = s.last_commit_time.max(Some(h.time));
        if s.in_batch {
            // The batch's checkpoint covers it.
            return Ok(());
        }
        // The checkpoint follows idle progress (heartbeats come at most once a second), so
        // `verify` and `status` see the destination as current, and the position published
        // for the source's acknowledgement is always one the destination has recorded.
        s.committed_offset = after;
        s.d.record_idle(&Checkpoint {
            position: h.position.clone(),
            offset: after,
        })
        .await?;
        Cursors::new(&self.settings.spool_dir).save(&self.settings.name, after)?;
        let time = s.last_commit_time;
        self.status.update(|p| {
            p.offset = after;
            p.position = Some(h.position.clone());
            p.last_commit_time = time.or(p.last_commit_time);
        });
        Ok(())
    }

    /// Applies one step. Change by change it is marked, then kept, or undone when the
    /// destination refuses it, and `on_error` decides; in batches errors go up (and the batch
    /// is replayed change by change).
    async fn guarded(
        &mut self,
        s: &mut Session<D>,
        reader: &SpoolReader,
        step: Step<'_>,
        rel: Option<&Relation>,
    ) -> Result<()> {
        let event: Option<&Event> = match &step {
            Step::Change(e, _) => Some(e),
            _ => None,
        };
        let result = async {
            s.d.apply(step, reader).await?;
            if s.sequential {
                for r in s.d.flush().await? {
                    self.refused(s, r).await?;
                }
            }
            Ok(())
        }
        .await;
        if !s.sequential {
            return result;
        }
        match result {
            Ok(()) => s.d.keep().await,
            Err(e) if s.d.classify(&e) != ErrorClass::Refused => Err(e),
            Err(e) => {
                s.d.undo().await?;
                let (position, xid) = s
                    .txn
                    .as_ref()
                    .map(|t| (t.begin.position.to_string(), t.begin.xid))
                    .unwrap_or_default();
                let culprit = event
                    .map(|ev| crate::db::culprit(ev, rel))
                    .unwrap_or_else(|| crate::db::Culprit {
                        table: rel.map_or_else(|| "-".into(), Relation::qualified_name),
                        key: "-".into(),
                    });
                let r = Refusal {
                    position,
                    xid,
                    table: culprit.table,
                    key: culprit.key,
                    error: e.to_string(),
                    event: event.cloned(),
                    topic: None,
                    message_key: None,
                };
                self.refused(s, r).await
            }
        }
    }

    /// A change the destination refused, as `on_error` says.
    async fn refused(&self, s: &mut Session<D>, r: Refusal) -> Result<()> {
        let sink = &self.settings.name;
        let (position, table, key, error) = (&r.position, &r.table, &r.key, &r.error);
        match self.settings.on_error {
            OnError::Halt => Err(SinkError::Halted(Box::new(crate::error::Halt {
                sink: sink.clone(),
                position: r.position,
                table: r.table,
                key: r.key,
                error: r.error,
            }))),
            OnError::Skip => {
                tracing::warn!(%sink, %position, %table, %key, %error, "skipping a change that failed (on_error = skip)");
                self.status.update(|p| p.skipped += 1);
                Ok(())
            }
            OnError::DeadLetter => {
                s.letters.write(sink, &r).await?;
                tracing::warn!(%sink, %position, %table, %key, %error, to = %s.letters.place(), "change written as a dead letter");
                self.status.update(|p| p.dead_lettered += 1);
                Ok(())
            }
        }
    }

    /// Writes out, commits the open batch with its checkpoint, and moves the cursor past it.
    async fn commit_batch(&mut self, s: &mut Session<D>) -> Result<()> {
        if !s.in_batch {
            return Ok(());
        }
        // Refusals the destination learns of late (delivery reports) follow `on_error`; a
        // dead letter sent meanwhile is settled by the next round.
        loop {
            let refused = s.d.flush().await?;
            if refused.is_empty() {
                break;
            }
            for r in refused {
                self.refused(s, r).await?;
            }
        }
        let Some(position) = s.last_position.clone() else {
            return Err(SinkError::Fatal(
                "a batch to commit without a source position".into(),
            ));
        };
        s.d.commit(&Checkpoint {
            position,
            offset: s.last_offset,
        })
        .await?;
        s.in_batch = false;
        s.checkpoint = s.last_position.clone();
        s.committed_offset = s.last_offset;
        Cursors::new(&self.settings.spool_dir).save(&self.settings.name, s.last_offset)?;
        let (rows, txns) = (s.batch_rows as u64, s.batch_txns);
        s.clear_batch();
        let (offset, position) = (s.last_offset, s.last_position.clone());
        let commit_time = s.last_commit_time;
        self.status.update(|p| {
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

#[cfg(test)]
mod tests;
