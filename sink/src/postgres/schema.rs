//! The target's tables as the sink needs them: their column types (every value is cast to the
//! target column's own type), created when missing if `create_tables = true`, and kept in step
//! with the source's schema changes when `schema_changes = "apply"`.

use crate::types::to_postgres;
use std::collections::HashMap;

use ferry_proto::{Relation, ReplicaIdentity};
use tokio_postgres::Client;

use crate::error::{Result, SinkError};

/// What to do when the source's schema of a table changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaChanges {
    /// Add, drop and retype columns on the target as the source does (default).
    #[default]
    Apply,
    /// Stop the sink with an error naming the change.
    Halt,
}

/// A target table: its quoted name and its columns' types (`format_type`).
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub quoted: String,
    pub types: HashMap<String, String>,
    /// Whether new rows may go in with COPY: not into a table with row-level security, which
    /// COPY FROM refuses unless the role bypasses it (INSERT applies the policies instead).
    pub copy: bool,
}

pub use ferry_db::postgres::{quote_ident, quote_literal};

pub fn quoted_name(rel: &Relation) -> String {
    format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name))
}

/// The target's columns of `rel`'s table, or `None` if it has no such table.
pub async fn load(client: &Client, rel: &Relation) -> Result<Option<TargetTable>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    NOT c.relrowsecurity OR (SELECT rolbypassrls OR rolsuper FROM pg_roles
                                             WHERE rolname = current_user)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&rel.schema, &rel.name],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(TargetTable {
        quoted: quoted_name(rel),
        types: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        copy: rows[0].get::<_, Option<bool>>(2).unwrap_or(false),
    }))
}

/// The values rows that exist hold in added columns, by column name (text input; `None` is NULL).
pub type Backfill = HashMap<String, Option<String>>;

/// Makes the target table fit `rel`: creates it (with `create_tables`), adds the columns the
/// source has and the target lacks, and applies the differences from `prev`, the definition the
/// sink last applied (dropped and retyped columns). Returns the target's columns afterwards.
///
/// With the source's whole definition (`def`), a table is created as the source defines it
/// ([`super::create`]); its non-unique indexes are pushed to `deferred`, for the end of the
/// source transaction.
#[allow(clippy::too_many_arguments)]
pub async fn ensure(
    client: &Client,
    rel: &Relation,
    prev: Option<&Relation>,
    changes: SchemaChanges,
    create_tables: bool,
    backfill: &Backfill,
    def: Option<&ferry_proto::TableDef>,
    deferred: &mut Vec<String>,
) -> Result<TargetTable> {
    let name = quoted_name(rel);
    let planned = def
        .filter(|_| create_tables)
        .and_then(|d| super::create::plan(rel, d));
    let table = match (load(client, rel).await?, planned) {
        (Some(t), _) => t,
        (None, Some(plan)) => {
            for what in &plan.unmapped {
                tracing::warn!(table = %rel.qualified_name(), %what, "not carried to the target table");
            }
            let sql = plan.now.join(";\n");
            tracing::info!(table = %rel.qualified_name(), %sql, "creating target table as the source defines it");
            client.batch_execute(&sql).await?;
            deferred.extend(plan.deferred);
            load(client, rel).await?.ok_or_else(|| {
                SinkError::Fatal(format!("{name} was created but cannot be found"))
            })?
        }
        (None, None) if create_tables => {
            let mut cols: Vec<String> = rel
                .columns
                .iter()
                .map(|c| format!("{} {}", quote_ident(&c.name), to_postgres(&c.type_name)))
                .collect();
            let keys: Vec<String> = rel
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| quote_ident(&c.name))
                .collect();
            let keyed = matches!(
                rel.replica_identity,
                ReplicaIdentity::Default | ReplicaIdentity::Index
            );
            if keyed && !keys.is_empty() {
                cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
            }
            let sql = format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {name} ({})",
                quote_ident(&rel.schema),
                cols.join(", ")
            );
            tracing::info!(table = %rel.qualified_name(), %sql, "creating target table");
            client.batch_execute(&sql).await?;
            load(client, rel).await?.ok_or_else(|| {
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
    // Columns added with the value existing rows hold: a default for the ADD, dropped after.
    let mut defaults = Vec::new();
    for c in &rel.columns {
        match (
            table.types.get(&c.name),
            prev.and_then(|p| p.columns.iter().find(|x| x.name == c.name)),
        ) {
            (None, _) => {
                let ty = to_postgres(&c.type_name);
                let default = match backfill.get(&c.name) {
                    Some(Some(v)) => {
                        defaults.push(format!(
                            "ALTER COLUMN {} DROP DEFAULT",
                            quote_ident(&c.name)
                        ));
                        format!(" DEFAULT {}::{ty}", quote_literal(v))
                    }
                    _ => String::new(),
                };
                alters.push(format!(
                    "ADD COLUMN IF NOT EXISTS {} {ty}{default}",
                    quote_ident(&c.name),
                ))
            }
            (Some(_), Some(old)) if old.type_name != c.type_name => alters.push(format!(
                "ALTER COLUMN {0} TYPE {1} USING {0}::{1}",
                quote_ident(&c.name),
                to_postgres(&c.type_name)
            )),
            _ => {}
        }
    }
    if let Some(prev) = prev {
        for old in &prev.columns {
            if !rel.columns.iter().any(|c| c.name == old.name)
                && table.types.contains_key(&old.name)
            {
                alters.push(format!("DROP COLUMN IF EXISTS {}", quote_ident(&old.name)));
            }
        }
    }
    if alters.is_empty() {
        return Ok(table);
    }
    if changes == SchemaChanges::Halt {
        return Err(SinkError::Config(format!(
            "the source's schema of {} changed ({}) and schema_changes = \"halt\": change the \
             target table to match, then restart",
            rel.qualified_name(),
            alters.join(", ")
        )));
    }
    let mut sql = format!("ALTER TABLE {name} {}", alters.join(", "));
    if !defaults.is_empty() {
        sql.push_str(&format!("; ALTER TABLE {name} {}", defaults.join(", ")));
    }
    tracing::info!(table = %rel.qualified_name(), %sql, "applying a schema change");
    client.batch_execute(&sql).await?;
    load(client, rel)
        .await?
        .ok_or_else(|| SinkError::Fatal(format!("{name} disappeared while altering it")))
}
