//! A table's definition beyond what a [`Relation`](crate::Relation) says: what a sink needs to
//! create the source's table rather than a lookalike. Carried as JSON in a
//! [`TABLE_PREFIX`] message, in the transaction just before the table's first [`Relation`] (the
//! snapshot's, or the stream's for a table created later), so it needs no new frame version.
//!
//! Native texts (`type_name`, `definition`, `generated`) are the source engine's own SQL: a sink
//! of the same engine uses them as they are; a sink of the other engine maps what it can and
//! logs what it cannot.

use serde::{Deserialize, Serialize};

/// The [`Message`](crate::Message) prefix of a [`TableDef`].
pub const TABLE_PREFIX: &str = "ferry.table";

/// The engine a definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Postgres,
    Mysql,
}

/// One table as the source defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub engine: Engine,
    pub schema: String,
    pub name: String,
    /// Every column, in the table's order, generated ones included.
    pub columns: Vec<ColumnDef>,
    /// The primary key's columns in the key's order (not the table's).
    pub primary_key: Vec<String>,
    /// Unique constraints (PostgreSQL) or unique indexes that are not the primary key.
    pub unique: Vec<IndexDef>,
    /// Other indexes.
    pub indexes: Vec<IndexDef>,
    /// User-defined types the columns use (PostgreSQL: enums, domains, composites), in an order
    /// that creates each after those it uses.
    pub types: Vec<TypeDef>,
}

impl TableDef {
    /// Whether every column `rel` carries is one of this definition's (a definition read
    /// after a later change may not be; a sink then creates the table from `rel` alone).
    pub fn describes(&self, rel: &crate::Relation) -> bool {
        rel.columns
            .iter()
            .all(|c| self.columns.iter().any(|d| d.name == c.name))
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// The native type (`format_type` on PostgreSQL, `COLUMN_TYPE` on MySQL).
    pub type_name: String,
    pub not_null: bool,
    /// Values come from a counter: a PostgreSQL identity or serial column, a MySQL
    /// `AUTO_INCREMENT`.
    pub auto_increment: Option<AutoIncrement>,
    /// A generated column's expression, in the source engine's SQL.
    pub generated: Option<String>,
}

/// How a column's counter is defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoIncrement {
    /// `"always"` or `"by_default"` for a PostgreSQL identity; `"serial"` for a column whose
    /// default is `nextval` of a sequence it owns; `"auto_increment"` for MySQL.
    pub kind: String,
    /// The sequence (PostgreSQL), qualified: `schema.name`.
    pub sequence: Option<String>,
}

/// An index or unique constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub unique: bool,
    /// Its columns in order, when it is on plain columns (not expressions, not partial, no
    /// prefix lengths); a sink of the other engine maps only these.
    pub columns: Option<Vec<String>>,
    /// The native definition (`pg_get_indexdef` / `pg_get_constraintdef`, or MySQL's key
    /// clause).
    pub definition: String,
}

/// A PostgreSQL user-defined type a column uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDef {
    pub schema: String,
    pub name: String,
    /// The statement that creates it (`CREATE TYPE … AS ENUM (…)`, `CREATE DOMAIN …`,
    /// `CREATE TYPE … AS (…)`).
    pub create: String,
}
