//! A PostgreSQL table's full definition ([`TableDef`]) from the catalog: columns in order with
//! NOT NULL, identity and serial counters and generated expressions, the primary key in its own
//! order, unique constraints, other indexes, and the enums, domains and composite types the
//! columns use, so a sink can create the source's table and not a lookalike.

use ferry_proto::table::{AutoIncrement, ColumnDef, Engine, IndexDef, TableDef, TypeDef};
use tokio_postgres::Client;

use super::slot::quote_ident;

use crate::error::Result;

/// The definition of the table with OID `oid`, or `None` if it no longer exists.
pub async fn describe(client: &Client, oid: u32) -> Result<Option<TableDef>> {
    let Some(head) = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await?
    else {
        return Ok(None);
    };
    let (schema, name): (String, String) = (head.get(0), head.get(1));
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.attidentity::text, coalesce(to_jsonb(a) ->> 'attgenerated', ''), pg_get_expr(d.adbin, d.adrelid),
                    pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            let identity: String = r.get(3);
            let generated: String = r.get(4);
            let default: Option<String> = r.get(5);
            let sequence: Option<String> = r.get(6);
            let auto_increment = match identity.as_str() {
                "a" => Some("always"),
                "d" => Some("by_default"),
                _ if sequence.is_some()
                    && default
                        .as_deref()
                        .is_some_and(|d| d.starts_with("nextval(")) =>
                {
                    Some("serial")
                }
                _ => None,
            }
            .map(|kind| AutoIncrement {
                kind: kind.into(),
                sequence: sequence.clone(),
            });
            ColumnDef {
                name: r.get(0),
                type_name: r.get(1),
                not_null: r.get(2),
                auto_increment,
                generated: (generated == "s").then_some(default).flatten(),
            }
        })
        .collect();
    let primary_key = client
        .query(
            "SELECT a.attname::text FROM pg_constraint con,
                    unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attnum = k.attnum
             WHERE con.conrelid = $1 AND con.contype = 'p' AND a.attrelid = con.conrelid
             ORDER BY k.ord",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unique = client
        .query(
            "SELECT con.conname::text, pg_get_constraintdef(con.oid),
                    (SELECT array_agg(a.attname::text ORDER BY k.ord)
                     FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum)
             FROM pg_constraint con WHERE con.conrelid = $1 AND con.contype = 'u'
             ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| IndexDef {
            name: r.get(0),
            unique: true,
            definition: r.get(1),
            columns: r.get(2),
        })
        .collect();
    let indexes = client
        .query(
            "SELECT ic.relname::text, i.indisunique, pg_get_indexdef(i.indexrelid),
                    CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL AND am.amname = 'btree' THEN
                      (SELECT array_agg(a.attname::text ORDER BY k.ord)
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE k.ord <= coalesce((to_jsonb(i) ->> 'indnkeyatts')::int, i.indnatts))
                    END
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_am am ON am.oid = ic.relam
             WHERE i.indrelid = $1 AND NOT EXISTS (
               SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
                 AND c.contype IN ('p', 'u', 'x'))
             ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| IndexDef {
            name: r.get(0),
            unique: r.get(1),
            definition: r.get(2),
            columns: r.get(3),
        })
        .collect();
    Ok(Some(TableDef {
        engine: Engine::Postgres,
        schema,
        name,
        columns,
        primary_key,
        unique,
        indexes,
        types: user_types(client, oid).await?,
    }))
}

/// The enums, domains and composite types the table's columns use, directly, as array
/// elements, or through other such types; those used by others first.
async fn user_types(client: &Client, oid: u32) -> Result<Vec<TypeDef>> {
    let rows = client
        .query(
            "WITH RECURSIVE used(typ, depth) AS (
               SELECT a.atttypid, 0 FROM pg_attribute a
               WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               UNION ALL
               SELECT d.dep, u.depth + 1 FROM used u
               CROSS JOIN LATERAL (
                 SELECT t.typelem AS dep FROM pg_type t WHERE t.oid = u.typ AND t.typelem <> 0
                   AND t.typcategory = 'A'
                 UNION ALL
                 SELECT t.typbasetype FROM pg_type t WHERE t.oid = u.typ AND t.typtype = 'd'
                 UNION ALL
                 SELECT a.atttypid FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
                 WHERE t.oid = u.typ AND t.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
               ) d
               WHERE u.depth < 16
             )
             SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text, max(u.depth)
             FROM used u JOIN pg_type t ON t.oid = u.typ
             JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typtype IN ('e', 'd', 'c')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
             GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC, 2, 3",
            &[&oid],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let (typ, schema, name, kind): (u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let create = match kind.as_str() {
            "e" => {
                let labels: String = client
                    .query_one(
                        "SELECT coalesce(string_agg(quote_literal(enumlabel), ', '
                                 ORDER BY enumsortorder), '')
                         FROM pg_enum WHERE enumtypid = $1",
                        &[&typ],
                    )
                    .await?
                    .get(0);
                format!("CREATE TYPE {qualified} AS ENUM ({labels})")
            }
            "d" => {
                let d = client
                    .query_one(
                        "SELECT format_type(t.typbasetype, t.typtypmod), t.typnotnull,
                                (SELECT string_agg(format('CONSTRAINT %I %s', c.conname,
                                                          pg_get_constraintdef(c.oid)), ' '
                                                   ORDER BY c.conname)
                                 FROM pg_constraint c WHERE c.contypid = t.oid)
                         FROM pg_type t WHERE t.oid = $1",
                        &[&typ],
                    )
                    .await?;
                let (base, not_null, checks): (String, bool, Option<String>) =
                    (d.get(0), d.get(1), d.get(2));
                format!(
                    "CREATE DOMAIN {qualified} AS {base}{}{}",
                    if not_null { " NOT NULL" } else { "" },
                    checks.map(|c| format!(" {c}")).unwrap_or_default()
                )
            }
            _ => {
                let attrs: String = client
                    .query_one(
                        "SELECT coalesce(string_agg(format('%I %s', a.attname,
                                 format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum), '')
                         FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
                         WHERE t.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                        &[&typ],
                    )
                    .await?
                    .get(0);
                format!("CREATE TYPE {qualified} AS ({attrs})")
            }
        };
        out.push(TypeDef {
            schema,
            name,
            create,
        });
    }
    Ok(out)
}
