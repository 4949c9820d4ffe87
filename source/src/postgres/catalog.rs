//! What the source's system catalog says about column types: the name `format_type` gives a
//! column (`numeric(12,2)`, `character varying(40)`, an enum's or a domain's name), and the type
//! a value is parsed as (a domain's base type, recursively; arrays of domains by their base
//! element). Shared by the snapshot and the stream so both describe a table identically.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::Result;

/// How one (type, modifier) pair is named and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `format_type(oid, typmod)`.
    pub name: String,
    /// The OID whose text form the value has: the type itself, or a domain's base type.
    pub parse_oid: u32,
}

/// A cache of [`TypeInfo`] by (type OID, type modifier).
#[derive(Debug, Default)]
pub struct TypeCatalog {
    known: HashMap<(u32, i32), TypeInfo>,
}

impl TypeCatalog {
    /// Looks up every pair not yet cached, in one query.
    pub async fn resolve(&mut self, client: &Client, types: &[(u32, i32)]) -> Result<()> {
        let missing: Vec<(u32, i32)> = types
            .iter()
            .copied()
            .filter(|k| !self.known.contains_key(k))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let oids: Vec<u32> = missing.iter().map(|k| k.0).collect();
        let mods: Vec<i32> = missing.iter().map(|k| k.1).collect();
        // getBaseType, in SQL: follow typbasetype until a non-domain. An array whose element is a
        // domain is parsed as an array of the domain's base type.
        let rows = client
            .query(
                "WITH RECURSIVE t(oid, m) AS (SELECT * FROM unnest($1::oid[], $2::int4[])),
                 base(start, oid, depth) AS (
                     SELECT t.oid, t.oid, 0 FROM t
                     UNION ALL
                     SELECT b.start, ty.typbasetype, b.depth + 1
                     FROM base b JOIN pg_type ty ON ty.oid = b.oid
                     WHERE ty.typtype = 'd' AND b.depth < 16)
                 SELECT t.oid, t.m, format_type(t.oid, NULLIF(t.m, -1)),
                        (SELECT b.oid FROM base b WHERE b.start = t.oid
                         ORDER BY b.depth DESC LIMIT 1)
                 FROM t",
                &[&oids, &mods],
            )
            .await?;
        for r in rows {
            let oid: u32 = r.get(0);
            let name: Option<String> = r.get(2);
            let base: Option<u32> = r.get(3);
            self.known.insert(
                (oid, r.get(1)),
                TypeInfo {
                    name: name.unwrap_or_else(|| format!("oid:{oid}")),
                    parse_oid: base.unwrap_or(oid),
                },
            );
        }
        Ok(())
    }

    /// The cached info, or a placeholder naming the OID (never reached after `resolve`).
    pub fn get(&self, oid: u32, typmod: i32) -> TypeInfo {
        self.known
            .get(&(oid, typmod))
            .cloned()
            .unwrap_or_else(|| TypeInfo {
                name: format!("oid:{oid}"),
                parse_oid: oid,
            })
    }
}
