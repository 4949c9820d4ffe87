//! A MySQL/MariaDB table's full definition ([`TableDef`]) from `information_schema`: columns in
//! order with NOT NULL, `AUTO_INCREMENT` and generated expressions, the primary key in its own
//! order, unique keys and other indexes (with prefix lengths), so a sink can create the source's
//! table and not a lookalike.

use ferry_db::mysql::quote;
use ferry_proto::table::{AutoIncrement, ColumnDef, Engine, IndexDef, TableDef};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::Result;

/// The definition of `db.table`, or `None` if it does not exist.
pub async fn describe(conn: &mut Conn, db: &str, table: &str) -> Result<Option<TableDef>> {
    type ColumnRow = (String, String, String, String, Option<String>);
    let cols: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA, GENERATION_EXPRESSION \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await?;
    if cols.is_empty() {
        return Ok(None);
    }
    let columns = cols
        .into_iter()
        .map(|(name, type_name, nullable, extra, generated)| ColumnDef {
            name,
            type_name,
            not_null: nullable.eq_ignore_ascii_case("NO"),
            auto_increment: extra
                .to_ascii_lowercase()
                .contains("auto_increment")
                .then(|| AutoIncrement {
                    kind: "auto_increment".into(),
                    sequence: None,
                }),
            generated: generated.filter(|g| !g.is_empty()),
        })
        .collect();
    type IndexRow = (String, i64, Option<String>, Option<i64>, String);
    let parts: Vec<IndexRow> = conn
        .exec(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, INDEX_TYPE \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (db, table),
        )
        .await?;
    let mut primary_key = Vec::new();
    let (mut unique, mut indexes) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < parts.len() {
        let name = parts[i].0.clone();
        let group: Vec<&IndexRow> = parts[i..].iter().take_while(|p| p.0 == name).collect();
        i += group.len();
        let is_unique = group[0].1 == 0;
        let kind = group[0].4.to_ascii_uppercase();
        if name == "PRIMARY" {
            primary_key = group.iter().filter_map(|p| p.2.clone()).collect();
            continue;
        }
        let plain = kind == "BTREE" && group.iter().all(|p| p.2.is_some() && p.3.is_none());
        let parts_sql: Vec<String> = group
            .iter()
            .map(|p| match (&p.2, p.3) {
                (Some(c), Some(n)) => format!("{}({n})", quote(c)),
                (Some(c), None) => quote(c),
                (None, _) => "?".into(),
            })
            .collect();
        let head = match (kind.as_str(), is_unique) {
            ("FULLTEXT", _) => "FULLTEXT KEY",
            ("SPATIAL", _) => "SPATIAL KEY",
            (_, true) => "UNIQUE KEY",
            _ => "KEY",
        };
        let def = IndexDef {
            name: name.clone(),
            unique: is_unique,
            columns: plain.then(|| group.iter().filter_map(|p| p.2.clone()).collect()),
            definition: format!("{head} {} ({})", quote(&name), parts_sql.join(", ")),
        };
        // An index on an expression (MySQL 8) has no column: only its name is known here.
        if group.iter().any(|p| p.2.is_none()) {
            indexes.push(IndexDef {
                columns: None,
                ..def
            });
        } else if is_unique {
            unique.push(def);
        } else {
            indexes.push(def);
        }
    }
    Ok(Some(TableDef {
        engine: Engine::Mysql,
        schema: db.to_owned(),
        name: table.to_owned(),
        columns,
        primary_key,
        unique,
        indexes,
        types: Vec::new(),
    }))
}
