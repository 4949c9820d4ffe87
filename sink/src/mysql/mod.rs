//! The MySQL/MariaDB replica target of the database sink ([`crate::db`]): the checkpoint in
//! `ferry.checkpoints` (InnoDB, in the batch's transaction), foreign key checks off in the apply
//! session as native replication does, strict SQL mode so a value that does not fit is an error,
//! and set-based statements.
//!
//! Changes are gathered per table and key, each key keeping its final state in the window, as
//! the PostgreSQL target does; a flush then writes grouped deletes (`WHERE (key) IN (…)`) and
//! multi-row `INSERT … ON DUPLICATE KEY UPDATE`, a few statements per table whatever the row count.
//! Upserts make a replay converge, which matters here: MySQL has no transactional DDL, so a schema
//! change (or a table created with `create_tables`) commits the open batch implicitly. Tables
//! without a primary key are applied one statement per change, matching the whole old row.

pub mod create;
mod params;

use params::check_decimals;
pub use params::{into_param, to_param};

use std::collections::HashMap;

use ferry_proto::{Event, Position, Relation, RelationId, ReplicaIdentity, Row, Value};
use ferry_spool::Offset;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as My};

pub(crate) use ferry_db::mysql::{connect, opts_from_url, quote};

use crate::db::{Db, DbSinkConfig, Target, TxnControl};
use crate::error::{Result, SinkError};
use crate::postgres::schema::SchemaChanges;
use crate::types::to_mysql;

/// A MySQL/MariaDB sink worker.
pub type MySink = crate::worker::Worker<Db<MyTarget>>;

const CHECKPOINT_DDL: [&str; 2] = [
    "CREATE DATABASE IF NOT EXISTS ferry",
    "CREATE TABLE IF NOT EXISTS ferry.checkpoints (
        sink varchar(191) PRIMARY KEY,
        position text NOT NULL,
        spool_offset bigint NOT NULL,
        updated_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
];

/// Placeholders per statement stay below the protocol's 65,535.
const MAX_PARAMS: usize = 60_000;

fn quoted_name(rel: &Relation) -> String {
    format!("{}.{}", quote(&rel.schema), quote(&rel.name))
}

#[derive(Debug, Clone)]
enum RowState {
    Upsert(Row),
    /// The changed columns; the others are [`Value::Unchanged`].
    Patch(Row),
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMode {
    Keyed,
    Full,
    None,
}

#[derive(Debug)]
struct Table {
    rel: Relation,
    name: String,
    cols: Vec<String>,
    /// Per column, the target's DECIMAL(precision, scale) if it is one: a value with more
    /// digits would be rounded by MySQL without an error, so it is refused instead.
    decimals: Vec<Option<(u32, u32)>>,
    keys: Vec<usize>,
    mode: KeyMode,
    index: HashMap<String, usize>,
    rows: Vec<(Row, RowState)>,
}

/// A MySQL/MariaDB target: a connection and the pending changes of its open transaction.
pub struct MyTarget {
    conn: Conn,
    tables: HashMap<RelationId, Table>,
    pending: usize,
    pending_bytes: usize,
    changes: SchemaChanges,
    create_tables: bool,
    /// A DDL statement committed the open transaction implicitly since the worker last asked.
    implicit_commit: bool,
    /// Per (database, table): the source's whole definition, for creating the table.
    defs: HashMap<(String, String), ferry_proto::TableDef>,
    /// `ALTER TABLE … ADD KEY` statements waiting for the end of the source transaction.
    deferred: Vec<String>,
}

impl std::fmt::Debug for MyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyTarget")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

fn key_of(keys: &[usize], row: &[Value]) -> (String, Row) {
    let vals: Row = keys
        .iter()
        .map(|&i| row.get(i).cloned().unwrap_or(Value::Null))
        .collect();
    (format!("{vals:?}"), vals)
}

fn merge(old: &[Value], new: &[Value]) -> Row {
    old.iter()
        .zip(new)
        .map(|(o, n)| match n {
            Value::Unchanged => o.clone(),
            n => n.clone(),
        })
        .collect()
}

/// Reads a sink's checkpoint from a MySQL target.
pub async fn read_checkpoint(conn: &mut Conn, sink: &str) -> Result<Option<(Position, Offset)>> {
    let row: Option<(String, i64)> = conn
        .exec_first(
            "SELECT position, spool_offset FROM ferry.checkpoints WHERE sink = ?",
            (sink,),
        )
        .await?;
    let Some((text, offset)) = row else {
        return Ok(None);
    };
    let position = text
        .parse()
        .map_err(|e| SinkError::Fatal(format!("ferry.checkpoints of sink {sink}: {e}")))?;
    Ok(Some((position, Offset(offset as u64))))
}

impl MyTarget {
    /// Runs a DDL statement. MySQL commits the open transaction before and after one, so a new
    /// transaction is opened for what follows, and the worker is told (its savepoint is gone).
    async fn ddl(&mut self, sql: &str) -> Result<()> {
        self.conn.query_drop(sql).await?;
        self.implicit_commit = true;
        self.conn.query_drop("BEGIN").await?;
        Ok(())
    }

    /// The target's columns of a table, `None` when it does not exist.
    async fn columns(&mut self, rel: &Relation) -> Result<Option<Vec<String>>> {
        let cols: Vec<String> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&rel.schema, &rel.name),
            )
            .await?;
        Ok((!cols.is_empty()).then_some(cols))
    }

    async fn ensure(&mut self, rel: &Relation, prev: Option<&Relation>) -> Result<()> {
        let name = quoted_name(rel);
        let planned = if self.create_tables {
            self.defs
                .get(&(rel.schema.clone(), rel.name.clone()))
                .and_then(|d| create::plan(rel, d, &name))
        } else {
            None
        };
        let existing = match (self.columns(rel).await?, planned) {
            (Some(c), _) => c,
            (None, Some(plan)) => {
                for what in &plan.unmapped {
                    tracing::warn!(table = %rel.qualified_name(), %what, "not carried to the target table");
                }
                self.ddl(&format!(
                    "CREATE DATABASE IF NOT EXISTS {}",
                    quote(&rel.schema)
                ))
                .await?;
                tracing::info!(table = %rel.qualified_name(), sql = %plan.create, "creating target table as the source defines it");
                self.ddl(&plan.create).await?;
                self.deferred.extend(plan.deferred);
                self.columns(rel).await?.ok_or_else(|| {
                    SinkError::Fatal(format!("{name} was created but cannot be found"))
                })?
            }
            (None, None) if self.create_tables => {
                let mut cols: Vec<String> = rel
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}{}",
                            quote(&c.name),
                            to_mysql(&c.type_name),
                            if c.key { " NOT NULL" } else { "" }
                        )
                    })
                    .collect();
                let keys: Vec<String> = rel
                    .columns
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| quote(&c.name))
                    .collect();
                if matches!(
                    rel.replica_identity,
                    ReplicaIdentity::Default | ReplicaIdentity::Index
                ) && !keys.is_empty()
                {
                    cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
                }
                self.ddl(&format!(
                    "CREATE DATABASE IF NOT EXISTS {}",
                    quote(&rel.schema)
                ))
                .await?;
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {name} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                    cols.join(", ")
                );
                tracing::info!(table = %rel.qualified_name(), %sql, "creating target table");
                self.ddl(&sql).await?;
                self.columns(rel).await?.ok_or_else(|| {
                    SinkError::Fatal(format!("{name} was created but cannot be found"))
                })?
            }
            (None, None) => {
                return Err(SinkError::Config(format!(
                    "target table {name} does not exist: create it, or set create_tables = true"
                )));
            }
        };
        let mut alters = Vec::new();
        for c in &rel.columns {
            let old = prev.and_then(|p| p.columns.iter().find(|x| x.name == c.name));
            if !existing.iter().any(|e| e.eq_ignore_ascii_case(&c.name)) {
                alters.push(format!(
                    "ADD COLUMN {} {}",
                    quote(&c.name),
                    to_mysql(&c.type_name)
                ));
            } else if old.is_some_and(|o| o.type_name != c.type_name) {
                alters.push(format!(
                    "MODIFY COLUMN {} {}",
                    quote(&c.name),
                    to_mysql(&c.type_name)
                ));
            }
        }
        if let Some(prev) = prev {
            for old in &prev.columns {
                if !rel.columns.iter().any(|c| c.name == old.name)
                    && existing.iter().any(|e| e.eq_ignore_ascii_case(&old.name))
                {
                    alters.push(format!("DROP COLUMN {}", quote(&old.name)));
                }
            }
        }
        if alters.is_empty() {
            return Ok(());
        }
        if self.changes == SchemaChanges::Halt {
            return Err(SinkError::Config(format!(
                "the source's schema of {} changed ({}) and schema_changes = \"halt\": change \
                 the target table to match, then restart",
                rel.qualified_name(),
                alters.join(", ")
            )));
        }
        let sql = format!("ALTER TABLE {name} {}", alters.join(", "));
        tracing::info!(table = %rel.qualified_name(), %sql, "applying a schema change");
        self.ddl(&sql).await
    }

    fn put(&mut self, id: RelationId, key: String, keyvals: Row, state: RowState) -> Result<()> {
        let table = self
            .tables
            .get_mut(&id)
            .ok_or_else(|| SinkError::Fatal(format!("row of unknown relation {}", id.0)))?;
        match table.index.get(&key) {
            Some(&i) => table.rows[i].1 = state,
            None => {
                table.index.insert(key, table.rows.len());
                table.rows.push((keyvals, state));
                self.pending += 1;
            }
        }
        Ok(())
    }

    async fn flush_table(&mut self, id: RelationId) -> Result<()> {
        let Some(table) = self.tables.get_mut(&id) else {
            return Ok(());
        };
        if table.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut table.rows);
        table.index.clear();
        let (name, cols, keys) = (table.name.clone(), table.cols.clone(), table.keys.clone());
        self.pending = self.pending.saturating_sub(rows.len());
        let key_cols: Vec<&String> = keys.iter().map(|&i| &cols[i]).collect();
        // The window's rows are owned here: their values move into the statements' parameters.
        let mut deletes: Vec<Row> = Vec::new();
        let mut upserts: Vec<Row> = Vec::new();
        let mut patches: Vec<(Row, Row)> = Vec::new();
        for (keyvals, state) in rows {
            match state {
                RowState::Delete => deletes.push(keyvals),
                RowState::Upsert(r) => upserts.push(r),
                RowState::Patch(r) => patches.push((keyvals, r)),
            }
        }
        // Deletes first: a key that moved frees its old value before a row takes it.
        let tuple = format!("({})", vec!["?"; keys.len()].join(", "));
        for chunk in deletes.chunks((MAX_PARAMS / keys.len().max(1)).max(1)) {
            let sql = format!(
                "DELETE FROM {name} WHERE ({}) IN ({})",
                key_cols
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                vec![tuple.as_str(); chunk.len()].join(", ")
            );
            let params = chunk
                .iter()
                .flat_map(|k| k.iter())
                .map(to_param)
                .collect::<Result<Vec<_>>>()?;
            self.conn.exec_drop(sql, params).await?;
        }
        let row_tuple = format!("({})", vec!["?"; cols.len()].join(", "));
        let updates: Vec<String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| !keys.contains(i))
            .map(|(_, c)| format!("{c} = VALUES({c})"))
            .collect();
        let on_dup = if updates.is_empty() {
            // Every column is the key: an existing row is already this row.
            format!("{} = {}", cols[0], cols[0])
        } else {
            updates.join(", ")
        };
        let per_statement = (MAX_PARAMS / cols.len().max(1)).max(1);
        let mut upserts = upserts.into_iter().peekable();
        while upserts.peek().is_some() {
            let chunk: Vec<Row> = upserts.by_ref().take(per_statement).collect();
            let sql = format!(
                "INSERT INTO {name} ({}) VALUES {} ON DUPLICATE KEY UPDATE {on_dup}",
                cols.join(", "),
                vec![row_tuple.as_str(); chunk.len()].join(", ")
            );
            let params = chunk
                .into_iter()
                .flatten()
                .map(into_param)
                .collect::<Result<Vec<_>>>()?;
            self.conn.exec_drop(sql, params).await?;
        }
        for (keyvals, row) in &patches {
            let set: Vec<(usize, &Value)> = row
                .iter()
                .enumerate()
                .filter(|(i, v)| !matches!(v, Value::Unchanged) && !keys.contains(i))
                .collect();
            if set.is_empty() {
                continue;
            }
            let sql = format!(
                "UPDATE {name} SET {} WHERE {}",
                set.iter()
                    .map(|(i, _)| format!("{} = ?", cols[*i]))
                    .collect::<Vec<_>>()
                    .join(", "),
                key_cols
                    .iter()
                    .map(|c| format!("{c} = ?"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            let params = set
                .iter()
                .map(|(_, v)| *v)
                .chain(keyvals.iter())
                .map(to_param)
                .collect::<Result<Vec<_>>>()?;
            self.conn.exec_drop(sql, params).await?;
        }
        Ok(())
    }

    /// A change of a table without a key: one statement, matching the whole old row.
    async fn full_change(&mut self, id: RelationId, event: &Event) -> Result<()> {
        let Some(table) = self.tables.get(&id) else {
            return Ok(());
        };
        let (name, cols) = (table.name.clone(), table.cols.clone());
        let matching = |old: &Row| -> Result<(String, Vec<My>)> {
            let mut conds = Vec::new();
            let mut params = Vec::new();
            for (c, v) in cols.iter().zip(old) {
                if matches!(v, Value::Unchanged) {
                    continue;
                }
                conds.push(format!("{c} <=> ?"));
                params.push(to_param(v)?);
            }
            Ok((conds.join(" AND "), params))
        };
        match event {
            Event::Insert(i) => {
                let sql = format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    cols.join(", "),
                    vec!["?"; cols.len()].join(", ")
                );
                let params = i.new.iter().map(to_param).collect::<Result<Vec<_>>>()?;
                self.conn.exec_drop(sql, params).await?;
            }
            Event::Delete(d) => {
                let (cond, params) = matching(d.old.row())?;
                self.conn
                    .exec_drop(format!("DELETE FROM {name} WHERE {cond} LIMIT 1"), params)
                    .await?;
            }
            Event::Update(u) => {
                let Some(old) = &u.old else {
                    return Err(SinkError::Value(format!(
                        "{name}: an update without its old row cannot be matched"
                    )));
                };
                let set: Vec<(usize, &Value)> = u
                    .new
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !matches!(v, Value::Unchanged))
                    .collect();
                let (cond, where_params) = matching(old.row())?;
                let mut params = set
                    .iter()
                    .map(|(_, v)| to_param(v))
                    .collect::<Result<Vec<_>>>()?;
                params.extend(where_params);
                let sql = format!(
                    "UPDATE {name} SET {} WHERE {cond} LIMIT 1",
                    set.iter()
                        .map(|(i, _)| format!("{} = ?", cols[*i]))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.conn.exec_drop(sql, params).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Target for MyTarget {
    async fn connect(cfg: &DbSinkConfig) -> Result<(Self, bool)> {
        let opts = opts_from_url(&cfg.url)
            .map_err(|e| SinkError::Config(format!("sink {} url: {e}", cfg.name)))?;
        let mut conn = connect(opts).await?;
        for ddl in CHECKPOINT_DDL {
            conn.query_drop(ddl).await?;
        }
        // As a native replica's applier: no foreign key checks (tables are written in batches,
        // not in source order), values that do not fit are errors, an id 0 stays 0, and
        // date-times are the UTC wall clock the source recorded.
        conn.query_drop(
            "SET SESSION foreign_key_checks = 0, \
             sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
             time_zone = '+00:00', autocommit = 1",
        )
        .await?;
        Ok((
            MyTarget {
                conn,
                tables: HashMap::new(),
                pending: 0,
                pending_bytes: 0,
                changes: cfg.schema_changes,
                create_tables: cfg.create_tables,
                implicit_commit: false,
                defs: HashMap::new(),
                deferred: Vec::new(),
            },
            false,
        ))
    }

    async fn control(&mut self, op: TxnControl) -> Result<()> {
        Ok(self.conn.query_drop(op.sql()).await?)
    }

    fn take_implicit_commit(&mut self) -> bool {
        std::mem::take(&mut self.implicit_commit)
    }

    fn define(&mut self, def: ferry_proto::TableDef) {
        self.defs
            .insert((def.schema.clone(), def.name.clone()), def);
    }

    async fn end_source_txn(&mut self) -> Result<()> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        for sql in std::mem::take(&mut self.deferred) {
            tracing::info!(%sql, "adding a new table's index now that its rows are in");
            self.ddl(&sql).await?;
        }
        Ok(())
    }

    async fn read_checkpoint(&mut self, sink: &str) -> Result<Option<(Position, Offset)>> {
        read_checkpoint(&mut self.conn, sink).await
    }

    async fn save_checkpoint(&mut self, sink: &str, position: &str, offset: Offset) -> Result<()> {
        self.conn
            .exec_drop(
                "INSERT INTO ferry.checkpoints (sink, position, spool_offset) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE position = VALUES(position), \
                 spool_offset = VALUES(spool_offset), updated_at = CURRENT_TIMESTAMP(6)",
                (sink, position, offset.0 as i64),
            )
            .await?;
        Ok(())
    }

    fn knows(&self, id: RelationId) -> bool {
        self.tables.contains_key(&id)
    }

    fn differs(&self, rel: &Relation) -> bool {
        self.tables.get(&rel.id).is_some_and(|t| t.rel != *rel)
    }

    fn pending(&self) -> usize {
        self.pending
    }

    fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn reset(&mut self) {
        self.tables.clear();
        self.pending = 0;
        self.pending_bytes = 0;
    }

    async fn relation(&mut self, rel: &Relation) -> Result<()> {
        let prev = match self.tables.get(&rel.id) {
            Some(t) if t.rel == *rel => return Ok(()),
            Some(t) => {
                let prev = t.rel.clone();
                self.flush_table(rel.id).await?;
                Some(prev)
            }
            None => None,
        };
        self.ensure(rel, prev.as_ref()).await?;
        let decimal: Vec<(String, u64, u64)> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME, NUMERIC_PRECISION, NUMERIC_SCALE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND DATA_TYPE = 'decimal'",
                (&rel.schema, &rel.name),
            )
            .await?;
        let decimals = rel
            .columns
            .iter()
            .map(|c| {
                decimal
                    .iter()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(&c.name))
                    .map(|(_, p, s)| (*p as u32, *s as u32))
            })
            .collect();
        let keys: Vec<usize> = rel.key_columns().collect();
        let mode = match rel.replica_identity {
            ReplicaIdentity::Full => KeyMode::Full,
            ReplicaIdentity::Nothing => KeyMode::None,
            _ if keys.is_empty() => KeyMode::None,
            _ => KeyMode::Keyed,
        };
        self.tables.insert(
            rel.id,
            Table {
                rel: rel.clone(),
                name: quoted_name(rel),
                cols: rel.columns.iter().map(|c| quote(&c.name)).collect(),
                decimals,
                keys,
                mode,
                index: HashMap::new(),
                rows: Vec::new(),
            },
        );
        Ok(())
    }

    async fn change(&mut self, event: &Event, bytes: usize) -> Result<()> {
        let Some(id) = event.relation_id() else {
            return Ok(());
        };
        if let Some(t) = self.tables.get(&id) {
            let rows = match event {
                Event::Insert(i) => [Some(&i.new), None],
                Event::Update(u) => [Some(&u.new), u.old.as_ref().map(|o| o.row())],
                Event::Delete(d) => [Some(d.old.row()), None],
                _ => [None, None],
            };
            for row in rows.into_iter().flatten() {
                check_decimals(t, row)?;
            }
        }
        let (mode, keys) = match self.tables.get(&id) {
            Some(t) => (t.mode, t.keys.clone()),
            None => {
                return Err(SinkError::Fatal(format!(
                    "row of unknown relation {}",
                    id.0
                )));
            }
        };
        match mode {
            KeyMode::Full => return self.full_change(id, event).await,
            KeyMode::None => {
                if matches!(event, Event::Insert(_)) {
                    return self.full_change(id, event).await;
                }
                let name = self.tables.get(&id).map(|t| t.rel.qualified_name());
                return Err(SinkError::Value(format!(
                    "{} has no key: its updates and deletes cannot be applied",
                    name.unwrap_or_default()
                )));
            }
            KeyMode::Keyed => {}
        }
        self.pending_bytes += bytes;
        match event {
            Event::Insert(i) => {
                let (k, kv) = key_of(&keys, &i.new);
                self.put(id, k, kv, RowState::Upsert(i.new.clone()))?;
            }
            Event::Delete(d) => {
                let (k, kv) = key_of(&keys, d.old.row());
                self.put(id, k, kv, RowState::Delete)?;
            }
            Event::Update(u) => {
                let (new_key, new_kv) = key_of(&keys, &u.new);
                let (old_key, old_kv) = match &u.old {
                    Some(o) => key_of(&keys, o.row()),
                    None => (new_key.clone(), new_kv.clone()),
                };
                let prev = self
                    .tables
                    .get(&id)
                    .and_then(|t| t.index.get(&old_key).map(|&i| t.rows[i].1.clone()));
                let has_unchanged = u.new.iter().any(|v| matches!(v, Value::Unchanged));
                let state = match (prev, has_unchanged) {
                    (Some(RowState::Upsert(old)), _) => RowState::Upsert(merge(&old, &u.new)),
                    (Some(RowState::Patch(old)), true) => RowState::Patch(merge(&old, &u.new)),
                    (_, true) if old_key != new_key => {
                        // The unchanged values live only in the target's old row: move it there.
                        self.flush_table(id).await?;
                        return self.move_key(id, &old_kv, &u.new).await;
                    }
                    (_, true) => RowState::Patch(u.new.clone()),
                    (_, false) => RowState::Upsert(u.new.clone()),
                };
                if old_key != new_key {
                    self.put(id, old_key, old_kv, RowState::Delete)?;
                }
                self.put(id, new_key, new_kv, state)?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn truncate(
        &mut self,
        ids: &[RelationId],
        _cascade: bool,
        _restart_identity: bool,
    ) -> Result<()> {
        self.flush().await?;
        for id in ids {
            if let Some(t) = self.tables.get(id) {
                // DELETE, not TRUNCATE: MySQL's TRUNCATE commits the open transaction.
                let sql = format!("DELETE FROM {}", t.name);
                self.conn.query_drop(sql).await?;
            }
        }
        Ok(())
    }

    async fn rename(&mut self, from: (&str, &str), to: (&str, &str)) -> Result<()> {
        self.flush().await?;
        let exists: Option<i64> = self
            .conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (from.0, from.1),
            )
            .await?;
        if exists.unwrap_or(0) > 0 {
            self.ddl(&format!("CREATE DATABASE IF NOT EXISTS {}", quote(to.0)))
                .await?;
            let sql = format!(
                "RENAME TABLE {}.{} TO {}.{}",
                quote(from.0),
                quote(from.1),
                quote(to.0),
                quote(to.1)
            );
            tracing::info!(%sql, "renaming a table as the source did");
            self.ddl(&sql).await?;
        }
        self.reset();
        Ok(())
    }

    async fn rename_column(&mut self, table: (&str, &str), from: &str, to: &str) -> Result<()> {
        self.flush().await?;
        let has: Vec<String> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME IN (?, ?)",
                (table.0, table.1, from, to),
            )
            .await?;
        // Column names compare without case in MySQL.
        let has = |n: &str| has.iter().any(|h| h.eq_ignore_ascii_case(n));
        if has(from) && !has(to) {
            let sql = format!(
                "ALTER TABLE {}.{} RENAME COLUMN {} TO {}",
                quote(table.0),
                quote(table.1),
                quote(from),
                quote(to)
            );
            tracing::info!(%sql, "renaming a column as the source did");
            self.ddl(&sql).await?;
        }
        for t in self.tables.values_mut() {
            if (t.rel.schema.as_str(), t.rel.name.as_str()) == table {
                for c in t.rel.columns.iter_mut().filter(|c| c.name == from) {
                    c.name = to.to_owned();
                }
                t.cols = t.rel.columns.iter().map(|c| quote(&c.name)).collect();
            }
        }
        Ok(())
    }

    async fn drop_table(&mut self, table: (&str, &str)) -> Result<()> {
        self.flush().await?;
        let sql = format!("DROP TABLE IF EXISTS {}.{}", quote(table.0), quote(table.1));
        tracing::info!(%sql, "dropping a table as the source did");
        self.ddl(&sql).await?;
        self.tables
            .retain(|_, t| (t.rel.schema.as_str(), t.rel.name.as_str()) != table);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let ids: Vec<RelationId> = self.tables.keys().copied().collect();
        for id in ids {
            self.flush_table(id).await?;
        }
        self.pending = 0;
        self.pending_bytes = 0;
        Ok(())
    }
}

impl MyTarget {
    /// A key change whose new row has unchanged values: one UPDATE of the old row.
    async fn move_key(&mut self, id: RelationId, old_key: &[Value], new: &Row) -> Result<()> {
        let Some(t) = self.tables.get(&id) else {
            return Ok(());
        };
        let set: Vec<(usize, &Value)> = new
            .iter()
            .enumerate()
            .filter(|(_, v)| !matches!(v, Value::Unchanged))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            t.name,
            set.iter()
                .map(|(i, _)| format!("{} = ?", t.cols[*i]))
                .collect::<Vec<_>>()
                .join(", "),
            t.keys
                .iter()
                .map(|&i| format!("{} = ?", t.cols[i]))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let params = set
            .iter()
            .map(|(_, v)| *v)
            .chain(old_key.iter())
            .map(to_param)
            .collect::<Result<Vec<_>>>()?;
        self.conn.exec_drop(sql, params).await?;
        Ok(())
    }
}
