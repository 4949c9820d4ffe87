//! Creating a MySQL/MariaDB target table from the source's whole definition ([`TableDef`]): the
//! columns in the source's order with NOT NULL, the primary key in its own column order,
//! `AUTO_INCREMENT` (a MySQL source's, or a PostgreSQL identity or serial column), unique keys
//! inline, and other indexes returned apart, to be added once the transaction that fills the
//! table is applied. What does not map (expression and partial indexes, a key on a column MySQL
//! can only index with a prefix, a PostgreSQL generated column) is listed for the log.

use ferry_proto::table::{Engine, TableDef};
use ferry_proto::{Column, Relation};

use super::quote;
use crate::types::to_mysql;

/// The statements that create a table, and what waits or does not map.
#[derive(Debug, Default)]
pub struct Plan {
    /// The `CREATE TABLE` statement.
    pub create: String,
    /// `ALTER TABLE … ADD KEY …` statements for the end of the source transaction.
    pub deferred: Vec<String>,
    /// What the target does not get, for the log.
    pub unmapped: Vec<String>,
}

/// The plan for `rel`'s table (quoted name `name`) from `def`, or `None` when `def` does not
/// describe every column the stream carries.
pub fn plan(rel: &Relation, def: &TableDef, name: &str) -> Option<Plan> {
    if !def.describes(rel) {
        return None;
    }
    let same = def.engine == Engine::Mysql;
    let mut plan = Plan::default();
    let mut cols = Vec::new();
    let mut types = std::collections::HashMap::new();
    for d in &def.columns {
        let Some(streamed): Option<&Column> = rel.columns.iter().find(|c| c.name == d.name) else {
            plan.unmapped.push(format!(
                "column {} (generated on the source, not in the stream)",
                d.name
            ));
            continue;
        };
        let ty = to_mysql(&streamed.type_name);
        types.insert(d.name.as_str(), ty.to_ascii_lowercase());
        let mut col = format!("{} {ty}", quote(&d.name));
        if d.not_null {
            col.push_str(" NOT NULL");
        }
        if let Some(expr) = &d.generated {
            // The stream carries its values; MySQL refuses values for a generated column.
            plan.unmapped.push(format!(
                "generated column {} ({expr}): a plain column holding the source's values",
                d.name
            ));
        }
        if d.auto_increment.is_some() {
            let integer = [
                "tinyint",
                "smallint",
                "mediumint",
                "int",
                "bigint",
                "integer",
            ]
            .iter()
            .any(|t| ty.to_ascii_lowercase().starts_with(t));
            // MySQL wants its one counter column first in a key; the primary key's first.
            if integer && def.primary_key.first() == Some(&d.name) {
                col.push_str(" AUTO_INCREMENT");
            } else {
                plan.unmapped
                    .push(format!("counter of column {} (type {ty})", d.name));
            }
        }
        cols.push(col);
    }
    let indexable = |c: &str| {
        types.get(c).is_some_and(|t| {
            ![
                "text",
                "blob",
                "json",
                "longtext",
                "mediumtext",
                "longblob",
                "mediumblob",
            ]
            .iter()
            .any(|x| t.starts_with(x) || t.contains(&format!(" {x}")))
        })
    };
    let quoted = |c: &[String]| c.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ");
    if !def.primary_key.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", quoted(&def.primary_key)));
    }
    for u in &def.unique {
        match (same, &u.columns) {
            (true, _) => cols.push(u.definition.clone()),
            (false, Some(c)) if c.iter().all(|x| indexable(x)) => {
                cols.push(format!("UNIQUE KEY {} ({})", quote(&u.name), quoted(c)));
            }
            _ => plan
                .unmapped
                .push(format!("unique key {} ({})", u.name, u.definition)),
        }
    }
    for ix in &def.indexes {
        let clause = match (same, &ix.columns) {
            (true, _) if ix.definition.contains('?') => None,
            (true, _) => Some(ix.definition.clone()),
            (false, Some(c)) if c.iter().all(|x| indexable(x)) => Some(format!(
                "{}KEY {} ({})",
                if ix.unique { "UNIQUE " } else { "" },
                quote(&ix.name),
                quoted(c)
            )),
            _ => None,
        };
        match clause {
            Some(clause) => plan
                .deferred
                .push(format!("ALTER TABLE {name} ADD {clause}")),
            None => plan
                .unmapped
                .push(format!("index {} ({})", ix.name, ix.definition)),
        }
    }
    plan.create = format!(
        "CREATE TABLE IF NOT EXISTS {name} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        cols.join(", ")
    );
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::table::{AutoIncrement, ColumnDef, IndexDef};
    use ferry_proto::{RelationId, ReplicaIdentity};

    #[test]
    fn a_postgres_table_maps_keys_counters_and_indexes() {
        let col = |name: &str, ty: &str, key: bool| Column {
            name: name.into(),
            type_name: ty.into(),
            type_id: 0,
            type_modifier: -1,
            key,
            nullable: !key,
        };
        let rel = Relation {
            id: RelationId(1),
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", "bigint", true),
                col("w", "integer", true),
                col("body", "text", false),
            ],
        };
        let cdef = |name: &str, counter: bool| ColumnDef {
            name: name.into(),
            type_name: "x".into(),
            not_null: true,
            auto_increment: counter.then(|| AutoIncrement {
                kind: "by_default".into(),
                sequence: None,
            }),
            generated: None,
        };
        let def = TableDef {
            engine: Engine::Postgres,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![cdef("id", true), cdef("w", false), cdef("body", false)],
            primary_key: vec!["id".into(), "w".into()],
            unique: vec![],
            indexes: vec![
                IndexDef {
                    name: "t_w".into(),
                    unique: false,
                    columns: Some(vec!["w".into()]),
                    definition: "CREATE INDEX t_w ON public.t USING btree (w)".into(),
                },
                IndexDef {
                    name: "t_body".into(),
                    unique: false,
                    columns: Some(vec!["body".into()]),
                    definition: "CREATE INDEX t_body ON public.t USING btree (body)".into(),
                },
            ],
            types: vec![],
        };
        let plan = plan(&rel, &def, "`public`.`t`").unwrap();
        assert!(
            plan.create.contains("`id` bigint NOT NULL AUTO_INCREMENT"),
            "{}",
            plan.create
        );
        assert!(
            plan.create.contains("PRIMARY KEY (`id`, `w`)"),
            "{}",
            plan.create
        );
        assert_eq!(
            plan.deferred,
            ["ALTER TABLE `public`.`t` ADD KEY `t_w` (`w`)"]
        );
        assert!(
            plan.unmapped.iter().any(|u| u.contains("t_body")),
            "{:?}",
            plan.unmapped
        );
    }
}
