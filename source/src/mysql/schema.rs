//! What the MySQL/MariaDB source knows of a table: its columns from `information_schema` (type
//! text, character set, enum and set members, key), checked against the column names the binlog's
//! `TABLE_MAP` carries with `binlog_row_metadata=FULL`, and the [`Relation`] sinks see.

use std::collections::HashMap;

use ferry_proto::{Column, Relation, RelationId, ReplicaIdentity};
use mysql_async::prelude::Queryable;

use crate::error::{Error, Result};

/// How one column's values are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Int,
    /// `bigint unsigned`: beyond i64, kept as an unsigned value.
    BigUnsigned,
    Float,
    Decimal,
    Bit(u32),
    /// Character data in this character set (`utf8mb4`, `latin1`, ...).
    Text(String),
    Binary,
    Date,
    Time,
    DateTime,
    /// `timestamp`: an instant, stored in UTC.
    Timestamp,
    Year,
    Enum(Vec<String>),
    Set(Vec<String>),
    /// MySQL's `json`, or MariaDB's `longtext` checked with `json_valid`.
    Json,
    Geometry,
}

/// One column as `information_schema` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColInfo {
    pub name: String,
    /// `COLUMN_TYPE`, as MySQL spells it (`int(11) unsigned`, `varchar(40)`, `enum('a','b')`).
    pub column_type: String,
    pub kind: Kind,
    pub nullable: bool,
    pub key: bool,
}

/// A captured table.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: Vec<ColInfo>,
    pub relation: Relation,
}

/// A relation id stable across restarts and DDL (FNV-1a of `db.table`): the binlog's table ids
/// change whenever the server reopens a table, while a sink needs one id per table so that a new
/// definition replaces the old one.
pub fn relation_id(db: &str, table: &str) -> RelationId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in db.bytes().chain([0]).chain(table.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    RelationId(h >> 1)
}

/// The members of an `enum('a','b')` or `set(...)` column type, unquoted.
pub fn members(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let body = column_type[open + 1..].trim_end_matches(')');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = body.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '\'') => quoted = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                quoted = false;
                out.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            (false, _) => {}
        }
    }
    out
}

fn kind(data_type: &str, column_type: &str, charset: Option<&str>, json: bool) -> Result<Kind> {
    let unsigned = column_type.contains("unsigned");
    Ok(match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" => Kind::Int,
        "bigint" if unsigned => Kind::BigUnsigned,
        "bigint" => Kind::Int,
        "float" | "double" | "real" => Kind::Float,
        "decimal" | "numeric" => Kind::Decimal,
        "bit" => {
            let n = column_type
                .trim_start_matches("bit(")
                .trim_end_matches(')')
                .parse()
                .unwrap_or(1);
            Kind::Bit(n)
        }
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            if json {
                Kind::Json
            } else {
                match charset {
                    Some("binary") | None => Kind::Binary,
                    Some(cs) => Kind::Text(cs.to_owned()),
                }
            }
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        "date" => Kind::Date,
        "time" => Kind::Time,
        "datetime" => Kind::DateTime,
        "timestamp" => Kind::Timestamp,
        "year" => Kind::Year,
        "enum" => Kind::Enum(members(column_type)),
        "set" => Kind::Set(members(column_type)),
        "json" => Kind::Json,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Kind::Geometry,
        other => {
            return Err(Error::Config(format!(
                "column type {other} ({column_type}) is not supported by the mysql source"
            )));
        }
    })
}

type ColumnRow = (String, String, String, Option<String>, String, String);

/// Reads a table's columns and key from `information_schema`; `None` when it does not exist.
pub async fn load(
    conn: &mut mysql_async::Conn,
    db: &str,
    table: &str,
) -> Result<Option<TableSchema>> {
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, IS_NULLABLE, COLUMN_KEY \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // MariaDB's JSON is longtext with a json_valid check; MySQL's has a type of its own.
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await
        .unwrap_or_default();
    let json_cols: Vec<String> = checks
        .iter()
        .filter_map(|c| {
            let c = c.to_ascii_lowercase();
            let rest = c.strip_prefix("json_valid(`")?;
            Some(rest.split('`').next()?.to_owned())
        })
        .collect();
    let mut columns = Vec::with_capacity(rows.len());
    for (name, data_type, column_type, charset, nullable, key) in rows {
        let json = json_cols.iter().any(|c| c.eq_ignore_ascii_case(&name));
        let kind = kind(
            &data_type.to_ascii_lowercase(),
            &column_type.to_ascii_lowercase(),
            charset.as_deref(),
            json,
        )
        .map_err(|e| Error::Config(format!("{db}.{table}.{name}: {e}")))?;
        columns.push(ColInfo {
            name,
            column_type: column_type.to_ascii_lowercase(),
            kind,
            nullable: nullable == "YES",
            key: key == "PRI",
        });
    }
    let has_key = columns.iter().any(|c| c.key);
    let relation = Relation {
        id: relation_id(db, table),
        schema: db.to_owned(),
        name: table.to_owned(),
        // Without a primary key the binlog's full before-image identifies the row.
        replica_identity: if has_key {
            ReplicaIdentity::Default
        } else {
            ReplicaIdentity::Full
        },
        columns: columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: c.column_type.clone(),
                type_id: 0,
                type_modifier: -1,
                key: c.key,
                nullable: c.nullable,
            })
            .collect(),
    };
    Ok(Some(TableSchema { columns, relation }))
}

/// Base tables of the server matching the source's table filter, as `(db, table)`.
pub async fn list_tables(
    conn: &mut mysql_async::Conn,
    wanted: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN \
             ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    Ok(rows.into_iter().filter(|(d, t)| wanted(d, t)).collect())
}

/// Known tables, refreshed when DDL touches them.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: HashMap<(String, String), Option<TableSchema>>,
}

impl Catalog {
    /// The table's schema, checked against the binlog's column names; reloaded once when they
    /// differ (DDL since it was read). A mismatch that remains is an error, never a guess.
    pub async fn get(
        &mut self,
        conn: &mut mysql_async::Conn,
        db: &str,
        table: &str,
        binlog_names: Option<&[String]>,
    ) -> Result<Option<&TableSchema>> {
        let key = (db.to_owned(), table.to_owned());
        let fits = |s: &Option<TableSchema>| match (s, binlog_names) {
            (Some(s), Some(names)) => {
                s.columns.len() == names.len()
                    && s.columns.iter().zip(names).all(|(c, n)| &c.name == n)
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        let cached_fits = self.tables.get(&key).is_some_and(fits);
        if !cached_fits {
            let fresh = load(conn, db, table).await?;
            if let (Some(s), Some(names)) = (&fresh, binlog_names)
                && !fits(&fresh)
            {
                let known: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
                return Err(Error::Fatal(format!(
                    "{db}.{table}: the binlog's row has columns {names:?} but the table now has \
                     {known:?}; the table changed in a way ferry cannot follow from the binlog \
                     alone (take a new snapshot: a new spool directory)"
                )));
            }
            self.tables.insert(key.clone(), fresh);
        }
        Ok(self.tables.get(&key).and_then(Option::as_ref))
    }

    /// Forgets every table of `db` (or every table): DDL changed them.
    pub fn invalidate(&mut self, db: Option<&str>) {
        match db {
            Some(d) => self.tables.retain(|(db, _), _| db != d),
            None => self.tables.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_members() {
        assert_eq!(members("enum('a','b c','it''s')"), ["a", "b c", "it's"]);
        assert_eq!(members("set('x')"), ["x"]);
        assert!(members("int").is_empty());
    }

    #[test]
    fn relation_ids_are_stable_and_distinct() {
        assert_eq!(relation_id("app", "t"), relation_id("app", "t"));
        assert_ne!(relation_id("app", "t"), relation_id("ap", "pt"));
    }
}
