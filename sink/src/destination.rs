//! The contract between the sink worker ([`crate::worker`]) and what it writes to: a PostgreSQL
//! or MySQL/MariaDB replica ([`crate::db`]), Kafka topics ([`crate::kafka`]), or, in the unit
//! tests, memory.
//!
//! The worker owns everything about the spool (tailing, transaction framing, batching, skipping
//! what the destination already has, heartbeats, retries, halts, `on_error`, cursor, progress).
//! A destination only opens, says where it is, and applies batches: `begin`, `apply` each step,
//! `flush`, then `commit` with the checkpoint, after which the batch is durable there; or
//! `abort`. Change-by-change replay (to find the change a batch failed on) uses `mark`, `keep`
//! and `undo` around each step. Errors are classified once, by [`Destination::classify`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use ferry_proto::{Begin, Commit, Event, Position, Relation, RelationId, TableDef};
use ferry_spool::Offset;

use crate::OnError;
use crate::error::{Result, SinkError};

/// What a destination holds durably: every source transaction up to `position`, and the spool
/// offset just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: Position,
    pub offset: Offset,
}

/// A destination just opened: its checkpoint, committed with what it applied; `None` when it
/// keeps none (a Kafka sink without `exactly_once` resumes from the spool cursor alone) or has
/// none yet.
#[derive(Debug)]
pub struct Opened {
    /// The spool offset after the last transaction it has.
    pub resume: Option<Offset>,
    /// The source position it has applied up to: transactions it covers are skipped.
    pub applied: Option<Position>,
    /// Apply change by change, in source order, from the start (a replica where foreign keys
    /// cannot be deferred); otherwise batches, replayed change by change only when one fails.
    pub change_by_change: bool,
}

/// One thing for a destination to do, in spool order.
#[derive(Debug)]
pub enum Step<'a> {
    /// A source transaction begins; its changes follow.
    Begin(&'a Begin),
    /// A table's definition changed during this session (a table met for the first time comes
    /// with its first change: [`Relations`] has it).
    Relation(&'a Relation),
    /// A row change or truncate, with its approximate size ([`crate::db::event_bytes`]).
    Change(&'a Event, usize),
    /// A table renamed, a column renamed, a table dropped.
    Ddl(&'a crate::db::Ddl),
    /// A table's whole definition, for when the destination creates the table.
    Define(TableDef),
    /// What rows that exist hold in the columns a table's next definition adds.
    Backfill(&'a [u8]),
    /// The source transaction's changes are over; `changes` is how many it had.
    End { commit: &'a Commit, changes: u64 },
}

/// The table definitions in force at the step being applied.
pub trait Relations {
    fn relation(&self, id: RelationId) -> Option<&Relation>;
}

impl Relations for ferry_spool::SpoolReader {
    fn relation(&self, id: RelationId) -> Option<&Relation> {
        ferry_spool::SpoolReader::relation(self, id)
    }
}

/// What an error means for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The destination is unreachable, restarting or busy: retry the session after a pause.
    Transient,
    /// The destination refuses this change (a constraint, a value it cannot take, a message too
    /// large): `on_error` decides.
    Refused,
    /// Nothing to retry and no change to blame (configuration, a damaged spool, a schema change
    /// under `schema_changes = "halt"`): the sink halts.
    Halt,
}

/// The class an error has by nature: transient when [`SinkError::is_transient`], a halt for
/// errors about the sink itself, otherwise a refused change.
pub fn default_class(e: &SinkError) -> ErrorClass {
    if e.is_transient() {
        return ErrorClass::Transient;
    }
    match e {
        SinkError::Spool(_) | SinkError::Config(_) | SinkError::Halted(_) | SinkError::Fatal(_) => {
            ErrorClass::Halt
        }
        _ => ErrorClass::Refused,
    }
}

/// A change the destination refused, as `on_error` gets it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The source transaction's position.
    pub position: String,
    pub xid: u64,
    /// `schema.table`, and the row's key, for people.
    pub table: String,
    pub key: String,
    pub error: String,
    /// The change, when the destination refused it while applying it.
    pub event: Option<Event>,
    /// Where a message destination sent it and under what key.
    pub topic: Option<String>,
    pub message_key: Option<Vec<u8>>,
}

/// Where `on_error = "dead_letter"` puts refused changes: a file beside the spool
/// ([`crate::deadletter::DeadLetterFile`]) or a topic (the Kafka sink's `dead_letter_topic`).
pub trait DeadLetters: Send {
    /// Records one refused change; the file is fsynced before this returns, a topic's message
    /// is settled with the batch (a refused dead letter halts the sink).
    fn write<'a>(
        &'a mut self,
        sink: &'a str,
        refusal: &'a Refusal,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;
    /// Where letters go, for logs.
    fn place(&self) -> String;
}

/// What the worker needs of every sink's configuration.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub name: String,
    pub spool_dir: PathBuf,
    pub on_error: OnError,
    /// A batch is committed once it holds this many row changes (at a transaction boundary)…
    pub max_batch_rows: usize,
    /// …or once its first transaction has waited this long.
    pub max_batch_delay: Duration,
}

/// A place the sink worker applies the spool to. See the module documentation.
pub trait Destination: Send + Sized + 'static {
    type Config: Send + Sync + 'static;

    /// The worker's part of the configuration.
    fn settings(cfg: &Self::Config) -> WorkerSettings;

    /// Connects and reads the destination's checkpoint. `status` lets it report a state (a
    /// broker that does not acknowledge) and counters while it works.
    fn open(
        cfg: &Self::Config,
        status: crate::progress::Status,
    ) -> impl Future<Output = Result<(Self, Opened)>> + Send;

    /// Starts a batch: a target transaction.
    fn begin(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Applies one step inside the batch.
    fn apply(
        &mut self,
        step: Step<'_>,
        relations: &(dyn Relations + Sync),
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes out what the batch holds so far; returns the changes the destination refused
    /// after the fact (a broker's delivery reports), for `on_error`.
    fn flush(&mut self) -> impl Future<Output = Result<Vec<Refusal>>> + Send;

    /// Commits the batch with its checkpoint: once this returns, both are durable together.
    fn commit(&mut self, checkpoint: &Checkpoint) -> impl Future<Output = Result<()>> + Send;

    /// Abandons the open batch and whatever was applied in it.
    fn abort(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Records a checkpoint outside any batch (the source was idle: a heartbeat).
    fn record_idle(&mut self, _checkpoint: &Checkpoint) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Change by change: marks the point before a step…
    fn mark(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// …keeps what the step did and marks again…
    fn keep(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// …or undoes it; the batch goes on.
    fn undo(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// What an error means here; [`default_class`] unless the destination knows better.
    fn classify(&self, e: &SinkError) -> ErrorClass {
        default_class(e)
    }

    /// Where this destination's dead letters go: by default a file beside the spool.
    fn dead_letters(&self, settings: &WorkerSettings) -> Box<dyn DeadLetters> {
        Box::new(crate::deadletter::DeadLetterFile::new(
            &settings.spool_dir,
            &settings.name,
        ))
    }
}

/// The spool directory's segments: the oldest offset a sink without a cursor starts from.
pub(crate) fn oldest_offset(spool_dir: &Path) -> Result<Offset> {
    Ok(Offset(
        ferry_spool::segment::list(spool_dir)?
            .first()
            .copied()
            .unwrap_or(0),
    ))
}
