//! The PostgreSQL replica target of the database sink ([`crate::db`]): tokio-postgres, the
//! checkpoint in `ferry.checkpoints`, `session_replication_role = replica`, and the set-based
//! [`apply::Applier`].
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
pub mod copy;
pub mod create;
pub mod encode;
pub mod schema;
pub mod wire;
pub mod zero_date;

use ferry_proto::{Event, Position, Relation, RelationId};
use ferry_spool::Offset;
use tokio_postgres::Client;

use self::apply::Applier;
use self::copy::Conn;
use crate::db::{Db, DbSinkConfig, Target, TxnControl};
use crate::error::{Result, SinkError};

/// How a PostgreSQL sink is set up.
pub type PgSinkConfig = DbSinkConfig;
/// A PostgreSQL sink worker.
pub type PgSink = crate::worker::Worker<Db<PgTarget>>;

pub use crate::progress::{SinkProgress, SinkState, read_state, state_path};

/// The checkpoint table on the target.
const CHECKPOINT_DDL: &str = "CREATE SCHEMA IF NOT EXISTS ferry;
    CREATE TABLE IF NOT EXISTS ferry.checkpoints (
        sink text PRIMARY KEY,
        position text NOT NULL,
        spool_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())";

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

/// A PostgreSQL target: a connection and the applier of its open transaction.
pub struct PgTarget {
    conn: Conn,
    conn_task: tokio::task::JoinHandle<()>,
    applier: Applier,
    zero_dates: zero_date::ZeroDates,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").finish_non_exhaustive()
    }
}

impl Drop for PgTarget {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

impl Target for PgTarget {
    async fn connect(cfg: &DbSinkConfig) -> Result<(Self, bool)> {
        let (client, conn_task) = ferry_db::postgres::connect(&cfg.url, "sink").await?;
        let mut t = PgTarget {
            conn: Conn::new(client, &cfg.name),
            conn_task,
            applier: Applier::new(cfg.schema_changes, cfg.create_tables),
            zero_dates: zero_date::ZeroDates::new(cfg.zero_dates),
        };
        // A COPY stays open while a large source transaction streams in, and a batch waits
        // for the rest of a source transaction inside its target transaction: a timeout meant
        // for the replica's interactive users would cut them and retry forever.
        // Backfill defaults are written as '…' literals, hence standard_conforming_strings.
        let setup = format!(
            "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;
             SET standard_conforming_strings = on; {CHECKPOINT_DDL}"
        );
        t.conn.client().await?.batch_execute(&setup).await?;
        let sequential = match t
            .conn
            .client()
            .await?
            .batch_execute("SET session_replication_role = replica")
            .await
        {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(
                    sink = %cfg.name, error = %e,
                    "cannot set session_replication_role = replica (needs a superuser, or on \
                     PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role): applying \
                     change by change in source order, with the target's foreign keys and \
                     triggers active"
                );
                true
            }
        };
        Ok((t, sequential))
    }

    async fn control(&mut self, op: TxnControl) -> Result<()> {
        if matches!(op, TxnControl::Rollback | TxnControl::RollbackToSavepoint) {
            // A COPY in progress belongs to what is rolled back.
            self.conn.abort();
        }
        Ok(self.conn.client().await?.batch_execute(op.sql()).await?)
    }

    async fn read_checkpoint(&mut self, sink: &str) -> Result<Option<(Position, Offset)>> {
        read_checkpoint(self.conn.client().await?, sink).await
    }

    async fn save_checkpoint(&mut self, sink: &str, position: &str, offset: Offset) -> Result<()> {
        let sql = "INSERT INTO ferry.checkpoints (sink, position, spool_offset, updated_at)
                   VALUES ($1, $2, $3, now())
                   ON CONFLICT (sink) DO UPDATE SET position = EXCLUDED.position,
                       spool_offset = EXCLUDED.spool_offset, updated_at = now()";
        let offset = offset.0 as i64;
        self.conn
            .client()
            .await?
            .execute(sql, &[&sink, &position, &offset])
            .await?;
        Ok(())
    }

    fn knows(&self, id: RelationId) -> bool {
        self.applier.knows(id)
    }

    fn differs(&self, rel: &Relation) -> bool {
        self.applier.differs(rel)
    }

    fn pending(&self) -> usize {
        self.applier.pending()
    }

    fn pending_bytes(&self) -> usize {
        self.applier.pending_bytes()
    }

    fn backfill(&mut self, content: &[u8]) -> Result<()> {
        self.applier.backfill(content)
    }

    fn reset(&mut self) {
        self.conn.abort();
        self.applier.reset();
    }

    async fn relation(&mut self, rel: &Relation) -> Result<()> {
        self.applier.relation(&mut self.conn, rel).await
    }

    async fn change(&mut self, event: &Event, bytes: usize) -> Result<()> {
        let applier = &self.applier;
        let rel = || event.relation_id().and_then(|id| applier.relation_of(id));
        if let Some(fixed) = self.zero_dates.resolve(event, rel)? {
            return self.applier.change(&mut self.conn, &fixed, bytes).await;
        }
        self.applier.change(&mut self.conn, event, bytes).await
    }

    fn take_zero_dates(&mut self) -> u64 {
        std::mem::take(&mut self.zero_dates.nulled)
    }

    async fn truncate(
        &mut self,
        ids: &[RelationId],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<()> {
        self.applier
            .truncate(&mut self.conn, ids, cascade, restart_identity)
            .await
    }

    async fn flush(&mut self) -> Result<()> {
        self.applier.flush(&mut self.conn).await
    }

    async fn rename(&mut self, from: (&str, &str), to: (&str, &str)) -> Result<()> {
        use self::schema::quote_ident;
        self.applier.flush(&mut self.conn).await?;
        let mut sql = format!(
            "ALTER TABLE IF EXISTS {}.{} RENAME TO {}",
            quote_ident(from.0),
            quote_ident(from.1),
            quote_ident(to.1)
        );
        if from.0 != to.0 {
            sql.push_str(&format!(
                "; CREATE SCHEMA IF NOT EXISTS {0}; ALTER TABLE IF EXISTS {1}.{2} SET SCHEMA {0}",
                quote_ident(to.0),
                quote_ident(from.0),
                quote_ident(to.1)
            ));
        }
        tracing::info!(%sql, "renaming a table as the source did");
        self.conn.client().await?.batch_execute(&sql).await?;
        // What the applier knew of either table is stale now.
        self.applier.reset();
        Ok(())
    }

    async fn rename_column(&mut self, table: (&str, &str), from: &str, to: &str) -> Result<()> {
        use self::schema::quote_ident;
        self.applier.flush(&mut self.conn).await?;
        let client = self.conn.client().await?;
        let has: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
                   AND NOT a.attisdropped AND a.attname IN ($3, $4)",
                &[&table.0, &table.1, &from, &to],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if has.iter().any(|n| n == from) && !has.iter().any(|n| n == to) {
            let sql = format!(
                "ALTER TABLE {}.{} RENAME COLUMN {} TO {}",
                quote_ident(table.0),
                quote_ident(table.1),
                quote_ident(from),
                quote_ident(to)
            );
            tracing::info!(%sql, "renaming a column as the source did");
            client.batch_execute(&sql).await?;
        }
        self.applier.renamed_column(table, from, to);
        Ok(())
    }

    fn define(&mut self, def: ferry_proto::TableDef) {
        self.applier.define(def);
    }

    async fn end_source_txn(&mut self) -> Result<()> {
        self.applier.end_source_txn(&mut self.conn).await
    }

    async fn drop_table(&mut self, table: (&str, &str)) -> Result<()> {
        use self::schema::quote_ident;
        self.applier.flush(&mut self.conn).await?;
        let sql = format!(
            "DROP TABLE IF EXISTS {}.{}",
            quote_ident(table.0),
            quote_ident(table.1)
        );
        tracing::info!(%sql, "dropping a table as the source did");
        self.conn.client().await?.batch_execute(&sql).await?;
        self.applier.dropped_table(table);
        Ok(())
    }
}
