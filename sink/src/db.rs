//! A database replica as a [`Destination`] of the sink worker ([`crate::worker`]): what the
//! PostgreSQL and MySQL/MariaDB targets share. One batch is one target transaction with the
//! checkpoint row written in it (so a crash never applies a transaction twice), transaction
//! control is typed ([`TxnControl`]), and change-by-change replay puts a savepoint before each
//! step.
//!
//! What differs between engines (connecting, the checkpoint table, set-based statements, schema
//! changes) is a [`Target`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::{Event, OldRow, Position, Relation, RelationId, Value};
use ferry_spool::Offset;

use crate::OnError;
use crate::destination::{
    Checkpoint, Destination, Opened, Refusal, Relations, Step, WorkerSettings,
};
use crate::error::{Result, SinkError};
use crate::postgres::schema::SchemaChanges;
use crate::progress::Status;

/// How a database sink is set up. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct DbSinkConfig {
    pub name: String,
    /// Connection URL of the target (PostgreSQL: with `sslmode`/`sslrootcert`; MySQL/MariaDB:
    /// with `ssl_ca`), opened by [`ferry_db`].
    pub url: String,
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
            .field("url", &ferry_db::redact::redact(&self.url))
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

/// A database replica as a [`Destination`] over one kind of [`Target`].
pub struct Db<T> {
    t: T,
    name: String,
    status: Status,
    /// A step committed the target transaction by itself (MySQL's DDL): its savepoints are gone.
    implicit_commit: bool,
    /// Replaying change by change: a savepoint stands before each step.
    savepoints: bool,
}

impl<T> std::fmt::Debug for Db<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Target> Db<T> {
    /// Announces a table the target has not met in this session, as the reader's catalog has it.
    async fn ensure_known(
        &mut self,
        id: RelationId,
        relations: &(dyn Relations + Sync),
    ) -> Result<()> {
        if !self.t.knows(id)
            && let Some(rel) = relations.relation(id)
        {
            self.t.relation(rel).await?;
        }
        Ok(())
    }

    async fn step(&mut self, step: Step<'_>, relations: &(dyn Relations + Sync)) -> Result<()> {
        match step {
            Step::Begin(_) => Ok(()),
            // A table the target knows under another definition: changed now, so the rows that
            // follow find the new columns.
            Step::Relation(rel) if self.t.differs(rel) => self.t.relation(rel).await,
            Step::Relation(_) => Ok(()),
            Step::Change(Event::Truncate(tr), _) => {
                for id in &tr.relations {
                    self.ensure_known(*id, relations).await?;
                }
                self.t
                    .truncate(&tr.relations, tr.cascade, tr.restart_identity)
                    .await
            }
            Step::Change(event, bytes) => {
                if let Some(id) = event.relation_id() {
                    self.ensure_known(id, relations).await?;
                    // Creating or altering the table committed on its own (MySQL): the change
                    // needs a savepoint of its own to be undone alone.
                    if self.t.take_implicit_commit() {
                        self.implicit_commit = true;
                        if self.savepoints {
                            self.t.control(TxnControl::Savepoint).await?;
                        }
                    }
                }
                self.t.change(event, bytes).await?;
                if self.t.pending() >= FLUSH_ROWS || self.t.pending_bytes() >= FLUSH_BYTES {
                    self.t.flush().await?;
                }
                Ok(())
            }
            Step::Ddl(Ddl::RenameTable(from, to)) => {
                self.t.rename((&from.0, &from.1), (&to.0, &to.1)).await
            }
            Step::Ddl(Ddl::RenameColumn { table, from, to }) => {
                self.t.rename_column((&table.0, &table.1), from, to).await
            }
            Step::Ddl(Ddl::DropTable(table)) => self.t.drop_table((&table.0, &table.1)).await,
            Step::Define(def) => {
                self.t.define(def);
                Ok(())
            }
            Step::Backfill(content) => self.t.backfill(content),
            Step::End { .. } => self.t.end_source_txn().await,
        }
    }
}

impl<T: Target> Destination for Db<T> {
    type Config = DbSinkConfig;

    fn settings(cfg: &DbSinkConfig) -> WorkerSettings {
        WorkerSettings {
            name: cfg.name.clone(),
            spool_dir: cfg.spool_dir.clone(),
            on_error: cfg.on_error,
            max_batch_rows: cfg.max_batch_rows,
            max_batch_delay: cfg.max_batch_delay,
        }
    }

    async fn open(cfg: &DbSinkConfig, status: Status) -> Result<(Self, Opened)> {
        let (mut t, sequential) = T::connect(cfg).await?;
        let checkpoint = t.read_checkpoint(&cfg.name).await?;
        let db = Db {
            t,
            name: cfg.name.clone(),
            status,
            implicit_commit: false,
            savepoints: false,
        };
        let opened = Opened {
            resume: checkpoint.as_ref().map(|c| c.1),
            applied: checkpoint.map(|c| c.0),
            change_by_change: sequential,
        };
        Ok((db, opened))
    }

    async fn begin(&mut self) -> Result<()> {
        self.t.control(TxnControl::Begin).await
    }

    async fn apply(&mut self, step: Step<'_>, relations: &(dyn Relations + Sync)) -> Result<()> {
        let result = self.step(step, relations).await;
        self.implicit_commit |= self.t.take_implicit_commit();
        let nulled = self.t.take_zero_dates();
        if nulled > 0 {
            self.status.update(|p| p.zero_dates += nulled);
        }
        result
    }

    async fn flush(&mut self) -> Result<Vec<Refusal>> {
        self.t.flush().await?;
        Ok(Vec::new())
    }

    async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.t.flush().await?;
        self.record_idle(checkpoint).await?;
        self.savepoints = false;
        self.t.control(TxnControl::Commit).await
    }

    async fn abort(&mut self) -> Result<()> {
        self.savepoints = false;
        self.t.control(TxnControl::Rollback).await?;
        self.t.reset();
        Ok(())
    }

    async fn record_idle(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let position = checkpoint.position.to_string();
        self.t
            .save_checkpoint(&self.name, &position, checkpoint.offset)
            .await
    }

    async fn mark(&mut self) -> Result<()> {
        self.savepoints = true;
        self.implicit_commit = false;
        self.t.control(TxnControl::Savepoint).await
    }

    async fn keep(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.implicit_commit) {
            self.t.control(TxnControl::Release).await?;
        }
        self.t.control(TxnControl::Savepoint).await
    }

    async fn undo(&mut self) -> Result<()> {
        self.implicit_commit = false;
        self.t.control(TxnControl::RollbackToSavepoint).await?;
        self.t.reset();
        Ok(())
    }
}
