//! Set-based application of row changes inside one target transaction.
//!
//! Changes are gathered per table and per key: each key keeps only its final state in the window
//! (an upsert of a full row, a patch of the columns that changed when some were unchanged TOAST
//! values, or a delete), which is exactly what applying the changes one by one would leave. A
//! flush then writes each table with at most a few statements, whatever the number of rows:
//! `DELETE … USING unnest(…)`, a COPY (or, for a few rows, a plain INSERT) of the keys the target
//! cannot have yet ([`super::copy`]), `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO
//! UPDATE`, and `UPDATE … FROM unnest(…)` per set of changed columns. Every column travels as one
//! array parameter ([`super::wire`]) and is cast to the target column's type.
//!
//! Tables whose replica identity is FULL have no key to merge on (identical rows may repeat), so
//! their changes are applied one statement per change, in order, matching a whole old row. Tables
//! without any identity take inserts only. A key change whose new row has unchanged TOAST values
//! is applied as one `UPDATE … SET key = …` after flushing the table, in order.
//!
//! Cross-table order does not matter when the session has `session_replication_role = replica`
//! (foreign keys and triggers do not fire, as in PostgreSQL's own apply worker); without it, the
//! caller flushes after every change (sequential mode).

use std::collections::HashMap;

use ferry_proto::{Event, Relation, RelationId, ReplicaIdentity, Row, Value};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::copy::{Binary, COPY_MIN_ROWS, Conn, CopyInto};

use super::encode::to_text;
use super::schema::{self, SchemaChanges, TargetTable, quote_ident};
use super::wire::Wire;
use crate::error::{Result, SinkError};

/// One column of a pending row: `None` is an unchanged TOAST value (left as it is on the target),
/// `Some(None)` is NULL.
type Cell = Option<Option<String>>;
type Key = Vec<Option<String>>;

#[derive(Debug, Clone)]
enum RowState {
    /// A full row to insert, or to overwrite the target's row with.
    Upsert(Row),
    /// A full row for a key the target does not have (an insert, after a delete of the key in
    /// the window if any): a plain INSERT, which costs less than INSERT … ON CONFLICT and, like
    /// PostgreSQL's own apply, fails on a replica that already has the key.
    Insert(Row),
    /// The changed columns of a row; the others are [`Value::Unchanged`].
    Patch(Row),
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMode {
    /// Merge by these key columns.
    Keyed,
    /// REPLICA IDENTITY FULL: every change on its own, matching the whole old row.
    Full,
    /// No identity: inserts only.
    None,
}

#[derive(Debug)]
struct Table {
    rel: Relation,
    target: TargetTable,
    mode: KeyMode,
    keys: Vec<usize>,
    index: HashMap<Key, usize>,
    /// Each key's final state, and whether the target had the key before the window (its
    /// first change in the window was not an insert).
    rows: Vec<(Key, RowState, bool)>,
    /// Rows of a table without identity, to insert.
    inserts: Vec<Row>,
}

impl Table {
    fn pending(&self) -> usize {
        self.rows.len() + self.inserts.len()
    }
}

/// The pending changes of one target transaction, and what the sink knows of each table.
#[derive(Debug)]
pub struct Applier {
    tables: HashMap<RelationId, Table>,
    pending: usize,
    /// Rough bytes of the pending changes.
    pending_bytes: usize,
    changes: SchemaChanges,
    create_tables: bool,
    /// Per (schema, table): the values existing rows hold in columns the table's next
    /// definition adds ([`Applier::backfill`]).
    backfill: HashMap<(String, String), schema::Backfill>,
    /// Per (schema, table): the source's whole definition, for creating the table.
    defs: HashMap<(String, String), ferry_proto::TableDef>,
    /// Index statements waiting for the end of the source transaction.
    deferred: Vec<String>,
}

impl Applier {
    pub fn new(changes: SchemaChanges, create_tables: bool) -> Self {
        Applier {
            tables: HashMap::new(),
            pending: 0,
            pending_bytes: 0,
            changes,
            create_tables,
            backfill: HashMap::new(),
            defs: HashMap::new(),
            deferred: Vec::new(),
        }
    }

    /// Remembers a table's whole definition for when the target creates it.
    pub fn define(&mut self, def: ferry_proto::TableDef) {
        self.defs
            .insert((def.schema.clone(), def.name.clone()), def);
    }

    /// At the end of a source transaction: writes what is pending, then builds the indexes of
    /// the tables it created.
    pub async fn end_source_txn(&mut self, conn: &mut Conn) -> Result<()> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.flush(conn).await?;
        let sql = std::mem::take(&mut self.deferred).join(";\n");
        tracing::info!(%sql, "building the new tables' indexes now that their rows are in");
        conn.client().await?.batch_execute(&sql).await?;
        Ok(())
    }

    /// Remembers a [`ferry_proto::BACKFILL_PREFIX`] message's values for the table's next
    /// definition.
    pub fn backfill(&mut self, content: &[u8]) -> Result<()> {
        let bad = |e: String| SinkError::Fatal(format!("a backfill message: {e}"));
        let v: serde_json::Value =
            serde_json::from_slice(content).map_err(|e| bad(e.to_string()))?;
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("no {k}")))
        };
        let (schema_name, table) = (text("schema")?, text("table")?);
        let columns = v
            .get("columns")
            .and_then(|c| c.as_object())
            .ok_or_else(|| bad("no columns".into()))?;
        let values = columns
            .iter()
            .map(|(k, x)| (k.clone(), x.as_str().map(str::to_owned)))
            .collect();
        self.backfill.insert((schema_name, table), values);
        Ok(())
    }

    /// Notes that the target renamed a column of `table` (its pending changes written before),
    /// so the definition the sink compares the source's next one with has the new name.
    pub fn renamed_column(&mut self, table: (&str, &str), from: &str, to: &str) {
        for t in self.tables.values_mut() {
            if (t.rel.schema.as_str(), t.rel.name.as_str()) == table {
                for c in t.rel.columns.iter_mut().filter(|c| c.name == from) {
                    c.name = to.to_owned();
                }
                if let Some(ty) = t.target.types.remove(from) {
                    t.target.types.insert(to.to_owned(), ty);
                }
            }
        }
    }

    /// Forgets a table the target dropped (its pending changes written before).
    pub fn dropped_table(&mut self, table: (&str, &str)) {
        self.tables
            .retain(|_, t| (t.rel.schema.as_str(), t.rel.name.as_str()) != table);
    }

    /// The definition the sink applies a table's rows with.
    pub fn relation_of(&self, id: RelationId) -> Option<&Relation> {
        self.tables.get(&id).map(|t| &t.rel)
    }

    /// Whether the table has been announced in this session.
    pub fn knows(&self, id: RelationId) -> bool {
        self.tables.contains_key(&id)
    }

    /// Whether `rel` changes the definition of a table announced in this session.
    pub fn differs(&self, rel: &Relation) -> bool {
        self.tables.get(&rel.id).is_some_and(|t| t.rel != *rel)
    }

    /// Rows waiting for a flush.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Rough bytes of the changes waiting for a flush.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Forgets every pending change and what is known of the target (after a rollback or a
    /// reconnect: the target may have changed meanwhile).
    pub fn reset(&mut self) {
        self.tables.clear();
        self.backfill.clear();
        self.deferred.clear();
        self.pending = 0;
        self.pending_bytes = 0;
    }

    /// Makes sure the target has the table as `rel` defines it, flushing what is pending for it
    /// under an older definition first.
    pub async fn relation(&mut self, conn: &mut Conn, rel: &Relation) -> Result<()> {
        let prev = match self.tables.get(&rel.id) {
            Some(t) if t.rel == *rel => return Ok(()),
            Some(t) => {
                let prev = t.rel.clone();
                self.flush_table(conn, rel.id).await?;
                Some(prev)
            }
            None => None,
        };
        let backfill = self
            .backfill
            .remove(&(rel.schema.clone(), rel.name.clone()))
            .unwrap_or_default();
        let def = self.defs.get(&(rel.schema.clone(), rel.name.clone()));
        let target = schema::ensure(
            conn.client().await?,
            rel,
            prev.as_ref(),
            self.changes,
            self.create_tables,
            &backfill,
            def,
            &mut self.deferred,
        )
        .await?;
        let keys: Vec<usize> = rel.key_columns().collect();
        let mode = match rel.replica_identity {
            ReplicaIdentity::Full => KeyMode::Full,
            _ if keys.is_empty() => KeyMode::None,
            ReplicaIdentity::Nothing => KeyMode::None,
            _ => KeyMode::Keyed,
        };
        for c in &rel.columns {
            if !target.types.contains_key(&c.name) {
                return Err(SinkError::Config(format!(
                    "target table {} has no column {:?}",
                    target.quoted, c.name
                )));
            }
        }
        self.tables.insert(
            rel.id,
            Table {
                rel: rel.clone(),
                target,
                mode,
                keys,
                index: HashMap::new(),
                rows: Vec::new(),
                inserts: Vec::new(),
            },
        );
        Ok(())
    }

    /// Adds one row change (Insert, Update or Delete) of a table [`relation`](Self::relation)
    /// announced. FULL tables and key changes with unchanged values are written at once.
    /// `bytes` is the change's [`event_bytes`], which the caller has computed already.
    pub async fn change(&mut self, conn: &mut Conn, event: &Event, bytes: usize) -> Result<()> {
        let Some(id) = event.relation_id() else {
            return Ok(());
        };
        self.pending_bytes += bytes;
        let table = self
            .tables
            .get_mut(&id)
            .ok_or_else(|| SinkError::Fatal(format!("row of unknown relation {}", id.0)))?;
        match table.mode {
            KeyMode::Full => {
                return full_identity_change(conn.client().await?, table, event).await;
            }
            KeyMode::None => {
                return match event {
                    Event::Insert(i) => {
                        table.inserts.push(i.new.clone());
                        self.pending += 1;
                        Ok(())
                    }
                    _ => Err(SinkError::Value(format!(
                        "{} has no replica identity (no primary key, or REPLICA IDENTITY \
                         NOTHING): its updates and deletes cannot be applied",
                        table.rel.qualified_name()
                    ))),
                };
            }
            KeyMode::Keyed => {}
        }
        match event {
            Event::Insert(i) => {
                let key = key_text(&table.keys, &i.new)?;
                // A key the target had (deleted earlier in the window) is overwritten instead.
                let state = match table.index.get(&key).map(|&i| table.rows[i].2) {
                    Some(true) => RowState::Upsert(i.new.clone()),
                    _ => RowState::Insert(i.new.clone()),
                };
                self.pending += put(table, key, state);
            }
            Event::Delete(d) => {
                let key = key_text(&table.keys, d.old.row())?;
                self.pending += put(table, key, RowState::Delete);
            }
            Event::Update(u) => {
                let new = &u.new;
                let new_key = key_text(&table.keys, new)?;
                let old_key = match &u.old {
                    Some(o) => key_text(&table.keys, o.row())?,
                    None => new_key.clone(),
                };
                let has_unchanged = new.iter().any(|v| matches!(v, Value::Unchanged));
                if old_key != new_key {
                    let prev = table.index.get(&old_key).map(|&i| table.rows[i].1.clone());
                    match (has_unchanged, prev) {
                        (false, _) => {
                            self.pending += put(table, old_key, RowState::Delete);
                            self.pending += put(table, new_key, RowState::Upsert(new.clone()));
                        }
                        (true, Some(RowState::Upsert(old) | RowState::Insert(old))) => {
                            let row = merge(&old, new);
                            self.pending += put(table, old_key, RowState::Delete);
                            self.pending += put(table, new_key, RowState::Upsert(row));
                        }
                        (true, _) => {
                            // The unchanged values live only in the target's old row: move it.
                            self.flush_table(conn, id).await?;
                            let table = self.tables.get(&id).ok_or_else(|| {
                                SinkError::Fatal("table vanished during a flush".into())
                            })?;
                            return key_change(
                                conn.client().await?,
                                table,
                                &old_key,
                                &encode_cells(new)?,
                            )
                            .await;
                        }
                    }
                } else {
                    let state = match table.index.get(&new_key).map(|&i| &table.rows[i].1) {
                        Some(RowState::Upsert(old)) => RowState::Upsert(merge(old, new)),
                        Some(RowState::Insert(old)) => RowState::Insert(merge(old, new)),
                        Some(RowState::Patch(old)) => RowState::Patch(merge(old, new)),
                        _ if has_unchanged => RowState::Patch(new.clone()),
                        _ => RowState::Upsert(new.clone()),
                    };
                    self.pending += put(table, new_key, state);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Truncates tables, after flushing everything pending (a truncate is ordered against all).
    pub async fn truncate(
        &mut self,
        conn: &mut Conn,
        ids: &[RelationId],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<()> {
        self.flush(conn).await?;
        let names: Vec<String> = ids
            .iter()
            .filter_map(|id| self.tables.get(id).map(|t| t.target.quoted.clone()))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "TRUNCATE {}{}{}",
            names.join(", "),
            if restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            },
            if cascade { " CASCADE" } else { "" }
        );
        conn.client().await?.batch_execute(&sql).await?;
        Ok(())
    }

    /// Writes everything pending.
    pub async fn flush(&mut self, conn: &mut Conn) -> Result<()> {
        let ids: Vec<RelationId> = self
            .tables
            .iter()
            .filter(|(_, t)| t.pending() > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush_table(conn, id).await?;
        }
        self.pending = 0;
        self.pending_bytes = 0;
        Ok(())
    }

    async fn flush_table(&mut self, conn: &mut Conn, id: RelationId) -> Result<()> {
        let Some(table) = self.tables.get_mut(&id) else {
            return Ok(());
        };
        let rows = std::mem::take(&mut table.rows);
        let inserts = std::mem::take(&mut table.inserts);
        table.index.clear();
        self.pending = self.pending.saturating_sub(rows.len() + inserts.len());
        let table = &*table;
        let cols = &table.rel.columns;
        let all: Vec<usize> = (0..cols.len()).collect();
        if !inserts.is_empty() {
            let rows: Vec<&Row> = inserts.iter().collect();
            write_new(conn, id, table, &rows).await?;
        }
        let mut deletes: Vec<&Key> = Vec::new();
        let mut upserts: Vec<&Row> = Vec::new();
        let mut fresh: Vec<&Row> = Vec::new();
        let mut patches: HashMap<Vec<bool>, Vec<&Row>> = HashMap::new();
        for (key, state, _) in &rows {
            match state {
                RowState::Delete => deletes.push(key),
                RowState::Upsert(row) => upserts.push(row),
                RowState::Insert(row) => fresh.push(row),
                RowState::Patch(row) => {
                    let mask = row.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                    patches.entry(mask).or_default().push(row);
                }
            }
        }
        if !deletes.is_empty() {
            let idx: Vec<usize> = (0..table.keys.len()).collect();
            let sql = format!(
                "DELETE FROM {} AS t USING {} WHERE {}",
                table.target.quoted,
                unnest(table.keys.len()),
                key_match(table)
            );
            let rows: Vec<Vec<Option<String>>> = deletes.into_iter().cloned().collect();
            execute(conn.client().await?, &sql, columns_of(&rows, &idx)).await?;
        }
        if !fresh.is_empty() {
            write_new(conn, id, table, &fresh).await?;
        }
        if !upserts.is_empty() {
            let non_key: Vec<&str> = cols
                .iter()
                .filter(|c| !c.key)
                .map(|c| c.name.as_str())
                .collect();
            let action = if non_key.is_empty() {
                "NOTHING".to_owned()
            } else {
                let sets: Vec<String> = non_key
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                    .collect();
                format!("UPDATE SET {}", sets.join(", "))
            };
            let keys: Vec<usize> = table.keys.clone();
            let (from, wires) = typed_unnest(&upserts, &all)?;
            let sql = format!(
                "INSERT INTO {} ({}) SELECT {} FROM {from} ON CONFLICT ({}) DO {action}",
                table.target.quoted,
                column_list(table, &all),
                casts(table, &all),
                column_list(table, &keys)
            );
            execute_wires(conn.client().await?, &sql, &wires).await?;
        }
        for (mask, group) in patches {
            let set: Vec<usize> = mask
                .iter()
                .enumerate()
                .filter(|(i, m)| **m && !cols[*i].key)
                .map(|(i, _)| i)
                .collect();
            if set.is_empty() {
                continue;
            }
            let nkeys = table.keys.len();
            let assignments = assign(table, &set, |j| format!("s.c{}", nkeys + j));
            let idx: Vec<usize> = table.keys.iter().chain(&set).copied().collect();
            let (from, wires) = typed_unnest(&group, &idx)?;
            let sql = format!(
                "UPDATE {} AS t SET {} FROM {from} WHERE {}",
                table.target.quoted,
                assignments.join(", "),
                key_match(table)
            );
            execute_wires(conn.client().await?, &sql, &wires).await?;
        }
        Ok(())
    }
}

pub use crate::db::event_bytes;

/// Inserts rows whose keys the target does not have: a COPY when there are many (continuing
/// the one in progress), else one `INSERT … SELECT … FROM unnest(…)`.
async fn write_new(conn: &mut Conn, id: RelationId, table: &Table, rows: &[&Row]) -> Result<()> {
    let all: Vec<usize> = (0..table.rel.columns.len()).collect();
    if rows.len() >= COPY_MIN_ROWS && table.target.copy && conn.may_copy(&table.target.quoted) {
        let copy = CopyInto {
            table: &table.target.quoted,
            columns: column_list(table, &all),
            kinds: table
                .rel
                .columns
                .iter()
                .map(|c| Binary::of(&table.target.types[&c.name]))
                .collect(),
        };
        return conn.copy_rows(id, &copy, rows).await;
    }
    let (from, wires) = typed_unnest(rows, &all)?;
    let sql = format!(
        "INSERT INTO {} ({}) SELECT {} FROM {from}",
        table.target.quoted,
        column_list(table, &all),
        casts(table, &all),
    );
    execute_wires(conn.client().await?, &sql, &wires).await?;
    Ok(())
}

/// Records `state` as the final state of `key`; returns 1 if the key is new in the window.
fn put(table: &mut Table, key: Key, state: RowState) -> usize {
    match table.index.get(&key) {
        Some(&i) => {
            table.rows[i].1 = state;
            0
        }
        None => {
            let existed = !matches!(state, RowState::Insert(_));
            table.index.insert(key.clone(), table.rows.len());
            table.rows.push((key, state, existed));
            1
        }
    }
}

/// `new`, with its unchanged values taken from `old`.
fn merge(old: &[Value], new: &[Value]) -> Row {
    new.iter()
        .zip(old)
        .map(|(n, o)| match n {
            Value::Unchanged => o.clone(),
            v => v.clone(),
        })
        .collect()
}

/// The key columns of `row` as text: the identity of a row within a window.
fn key_text(keys: &[usize], row: &[Value]) -> Result<Key> {
    keys.iter()
        .map(|&i| to_text(row.get(i).unwrap_or(&Value::Null)))
        .collect()
}

/// `unnest($1::<type>[], …) AS s(c0, …)` over the columns `idx` of `rows`, and the parameters.
fn typed_unnest(rows: &[&Row], idx: &[usize]) -> Result<(String, Vec<Wire>)> {
    let wires: Vec<Wire> = idx
        .iter()
        .map(|&i| Wire::of(rows.iter().map(move |r| &r[i])))
        .collect::<Result<_>>()?;
    let params: Vec<String> = wires
        .iter()
        .enumerate()
        .map(|(j, w)| format!("${}::{}", j + 1, w.sql_type()))
        .collect();
    let names: Vec<String> = (0..idx.len()).map(|j| format!("c{j}")).collect();
    Ok((
        format!("unnest({}) AS s({})", params.join(", "), names.join(", ")),
        wires,
    ))
}

async fn execute_wires(client: &Client, sql: &str, wires: &[Wire]) -> Result<u64> {
    let refs: Vec<&(dyn ToSql + Sync)> = wires.iter().map(Wire::param).collect();
    Ok(client.execute(sql, &refs).await?)
}

fn encode_row(row: &Row) -> Result<Vec<Option<String>>> {
    row.iter()
        .map(|v| match v {
            // An old key row leaves non-key columns NULL; an unchanged value cannot be a key.
            Value::Unchanged => Ok(None),
            v => to_text(v),
        })
        .collect()
}

fn encode_cells(row: &Row) -> Result<Vec<Cell>> {
    row.iter()
        .map(|v| match v {
            Value::Unchanged => Ok(None),
            v => to_text(v).map(Some),
        })
        .collect()
}

fn column_list(table: &Table, idx: &[usize]) -> String {
    idx.iter()
        .map(|&i| quote_ident(&table.rel.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s.c0::type0, s.c1::type1, …` for the columns `idx`, numbered from 0.
fn casts(table: &Table, idx: &[usize]) -> String {
    idx.iter()
        .enumerate()
        .map(|(j, &i)| {
            let name = &table.rel.columns[i].name;
            format!("s.c{j}::{}", table.target.types[name])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `col = <value j>::type, …` for the columns `set`, the `j`th value written by `value(j)`.
fn assign(table: &Table, set: &[usize], value: impl Fn(usize) -> String) -> Vec<String> {
    set.iter()
        .enumerate()
        .map(|(j, &i)| {
            let name = &table.rel.columns[i].name;
            format!(
                "{} = {}::{}",
                quote_ident(name),
                value(j),
                table.target.types[name]
            )
        })
        .collect()
}

/// `unnest($1::text[], …) AS s(c0, …)`.
fn unnest(n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    format!("unnest({}) AS s({})", params.join(", "), names.join(", "))
}

/// `t.k0 = s.c0::type AND …` for the key columns, numbered from 0.
fn key_match(table: &Table) -> String {
    table
        .keys
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let name = &table.rel.columns[i].name;
            format!(
                "t.{} = s.c{j}::{}",
                quote_ident(name),
                table.target.types[name]
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Transposes rows into one array per column.
fn columns_of(rows: &[Vec<Option<String>>], idx: &[usize]) -> Vec<Vec<Option<String>>> {
    idx.iter()
        .map(|&i| rows.iter().map(|r| r[i].clone()).collect())
        .collect()
}

async fn execute(client: &Client, sql: &str, params: Vec<Vec<Option<String>>>) -> Result<u64> {
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    Ok(client.execute(sql, &refs).await?)
}

/// A change of a REPLICA IDENTITY FULL table: one statement, matching one row equal to the old
/// row (compared as text, which works for every type, json and point included).
async fn full_identity_change(client: &Client, table: &Table, event: &Event) -> Result<()> {
    let cols = &table.rel.columns;
    let ty = |i: usize| table.target.types[&cols[i].name].clone();
    let matcher = |first: usize| -> String {
        (0..cols.len())
            .map(|i| {
                format!(
                    "{}::text IS NOT DISTINCT FROM (${}::text::{})::text",
                    quote_ident(&cols[i].name),
                    first + i,
                    ty(i)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let one_row = |first: usize| {
        format!(
            "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
            table.target.quoted,
            matcher(first)
        )
    };
    let (sql, params): (String, Vec<Option<String>>) = match event {
        Event::Insert(i) => {
            let vals: Vec<String> = (0..cols.len())
                .map(|k| format!("${}::text::{}", k + 1, ty(k)))
                .collect();
            (
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    table.target.quoted,
                    column_list(table, &(0..cols.len()).collect::<Vec<_>>()),
                    vals.join(", ")
                ),
                encode_row(&i.new)?,
            )
        }
        Event::Delete(d) => (
            format!("DELETE FROM {} WHERE {}", table.target.quoted, one_row(1)),
            encode_row(d.old.row())?,
        ),
        Event::Update(u) => {
            let Some(old) = &u.old else {
                return Err(SinkError::Value(format!(
                    "an update of {} (REPLICA IDENTITY FULL) came without its old row",
                    table.rel.qualified_name()
                )));
            };
            let new = encode_cells(&u.new)?;
            let set: Vec<usize> = (0..cols.len()).filter(|&i| new[i].is_some()).collect();
            let n = cols.len();
            let assignments = assign(table, &set, |j| format!("${}::text", n + j + 1));
            let mut params = encode_row(old.row())?;
            params.extend(set.iter().map(|&i| new[i].clone().flatten()));
            (
                format!(
                    "UPDATE {} SET {} WHERE {}",
                    table.target.quoted,
                    assignments.join(", "),
                    one_row(1)
                ),
                params,
            )
        }
        _ => return Ok(()),
    };
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client.execute(&sql, &refs).await?;
    Ok(())
}

/// Moves a row to a new key keeping its unchanged values: `UPDATE … SET key = new, changed = …
/// WHERE key = old`.
async fn key_change(client: &Client, table: &Table, old_key: &Key, new: &[Cell]) -> Result<()> {
    let cols = &table.rel.columns;
    let set: Vec<usize> = (0..cols.len()).filter(|&i| new[i].is_some()).collect();
    let nk = table.keys.len();
    let assignments = assign(table, &set, |j| format!("${}::text", nk + j + 1));
    let conds: Vec<String> = table
        .keys
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            format!(
                "{} = ${}::text::{}",
                quote_ident(&cols[i].name),
                j + 1,
                table.target.types[&cols[i].name]
            )
        })
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        table.target.quoted,
        assignments.join(", "),
        conds.join(" AND ")
    );
    let mut params: Vec<Option<String>> = old_key.clone();
    params.extend(set.iter().map(|&i| new[i].clone().flatten()));
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client.execute(&sql, &refs).await?;
    Ok(())
}
