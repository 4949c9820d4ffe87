//! The publication and the replication slot: created when missing, reused when present, refused
//! with a clear message when they are not what ferry needs.

use tokio_postgres::Client;

use super::replication::ReplicationConn;
use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// What the server says about an existing slot.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub confirmed_flush: Option<u64>,
    pub active_pid: Option<i32>,
    /// PostgreSQL 17+: the slot is synchronized to standbys (`failover`).
    pub failover: bool,
}

/// The result of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub consistent_point: u64,
    pub snapshot_name: Option<String>,
}

pub use ferry_db::postgres::{quote_ident, quote_literal};

/// Creates the publication when it does not exist: `FOR ALL TABLES` without include patterns
/// (so new tables appear without a restart), otherwise `TABLES IN SCHEMA` for `schema.*` patterns
/// (PostgreSQL 15+) and the matching tables for the rest. An existing publication is used as it is.
///
/// Tables in `excluded` (without a replica identity, `keyless = "exclude"`) are left out: the
/// publication then lists every other matching table by name, so a table created later joins it
/// only when ferry next starts (and adds it then).
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    filter: &TableFilter,
    server_version: i32,
    excluded: &[super::keyless::KeylessTable],
) -> Result<()> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some();
    if !excluded.is_empty() {
        return listed_publication(client, name, filter, excluded, exists).await;
    }
    if exists {
        return Ok(());
    }
    let target = if filter.includes_all() {
        "FOR ALL TABLES".to_owned()
    } else {
        let mut parts = Vec::new();
        let mut explicit = Vec::new();
        for pattern in filter.include_patterns() {
            match pattern.whole_schema() {
                Some(schema) if server_version >= 150_000 => {
                    parts.push(format!("TABLES IN SCHEMA {}", quote_ident(schema)));
                }
                _ => explicit.push(pattern),
            }
        }
        if !explicit.is_empty() {
            let rows = client
                .query(
                    "SELECT schemaname, tablename FROM pg_tables
                     WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                    &[],
                )
                .await?;
            let mut tables = Vec::new();
            for row in rows {
                let (schema, table): (String, String) = (row.get(0), row.get(1));
                if explicit.iter().any(|p| p.matches(&schema, &table)) {
                    tables.push(format!("{}.{}", quote_ident(&schema), quote_ident(&table)));
                }
            }
            if tables.is_empty() && parts.is_empty() {
                return Err(Error::Config(format!(
                    "no table matches source.tables {:?}: create the tables first or fix the patterns",
                    filter
                        .include_patterns()
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                )));
            }
            if !tables.is_empty() {
                parts.push(format!("TABLE {}", tables.join(", ")));
            }
        }
        format!("FOR {}", parts.join(", "))
    };
    let sql = format!("CREATE PUBLICATION {} {target}", quote_ident(name));
    tracing::info!(publication = name, %sql, "creating publication");
    client.batch_execute(&sql).await?;
    Ok(())
}

/// A publication of every table `filter` captures except `excluded`, by name: created, or (when
/// it exists and lists its tables) given the tables that appeared since.
async fn listed_publication(
    client: &Client,
    name: &str,
    filter: &TableFilter,
    excluded: &[super::keyless::KeylessTable],
    exists: bool,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry')
               AND n.nspname NOT LIKE 'pg_toast%'
               AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                               WHERE p.pubname = $1 AND p.schemaname = n.nspname
                                 AND p.tablename = c.relname)
             ORDER BY 1, 2",
            &[&name],
        )
        .await?;
    let tables: Vec<String> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(s, t)| filter.accepts(s, t))
        .filter(|(s, t)| !excluded.iter().any(|e| &e.schema == s && &e.name == t))
        .map(|(s, t)| format!("{}.{}", quote_ident(&s), quote_ident(&t)))
        .collect();
    let all_tables: bool = if exists {
        client
            .query_one(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await?
            .get(0)
    } else {
        false
    };
    if all_tables {
        return Err(Error::Config(format!(
            "keyless = \"exclude\": publication {name} is FOR ALL TABLES, so it publishes the \
             tables without a replica identity too; drop it (DROP PUBLICATION {}) and let ferry \
             create one that lists its tables",
            quote_ident(name)
        )));
    }
    let sql = match (exists, tables.is_empty()) {
        (true, true) => return Ok(()),
        (true, false) => format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            tables.join(", ")
        ),
        (false, true) => format!("CREATE PUBLICATION {}", quote_ident(name)),
        (false, false) => format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            tables.join(", ")
        ),
    };
    tracing::info!(publication = name, %sql, excluded = excluded.len(), "publication without the tables that have no replica identity");
    client.batch_execute(&sql).await?;
    Ok(())
}

/// Reads the slot's state; refuses a slot of another plugin, kind or database, and a slot whose
/// WAL is gone.
pub async fn inspect_slot(client: &Client, slot: &str, dbname: &str) -> Result<Option<SlotState>> {
    let Some(row) = client
        .query_opt(
            "SELECT plugin, slot_type, database, confirmed_flush_lsn::text, active_pid,
                    to_jsonb(s) ->> 'wal_status', coalesce((to_jsonb(s) ->> 'failover')::bool, false)
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await?
    else {
        return Ok(None);
    };
    let plugin: Option<String> = row.get(0);
    let kind: String = row.get(1);
    let database: Option<String> = row.get(2);
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
        return Err(Error::Config(format!(
            "replication slot {slot:?} exists but is a {kind} slot with plugin {:?}; ferry needs a \
             logical pgoutput slot: choose another `slot` name, or drop it with \
             SELECT pg_drop_replication_slot('{slot}')",
            plugin.unwrap_or_default()
        )));
    }
    if database.as_deref() != Some(dbname) {
        return Err(Error::Config(format!(
            "replication slot {slot:?} belongs to database {:?}, not {dbname:?}: choose another \
             `slot` name",
            database.unwrap_or_default()
        )));
    }
    let wal_status: Option<String> = row.get(5);
    if wal_status.as_deref() == Some("lost") {
        return Err(lost(slot));
    }
    let confirmed: Option<String> = row.get(3);
    Ok(Some(SlotState {
        confirmed_flush: confirmed
            .and_then(|s| s.parse::<ferry_proto::Lsn>().ok())
            .map(|l| l.0),
        active_pid: row.get(4),
        failover: row.get(6),
    }))
}

/// `failover_slot = true` on a server before PostgreSQL 17, which has no failover slots.
pub fn failover_needs_17(server_version: i32) -> Error {
    Error::Config(format!(
        "failover_slot = true needs PostgreSQL 17 or later (the source is {}): before 17 a \
         standby has no copy of a logical slot, and a failover is a gap",
        server_version / 10_000
    ))
}

/// Makes an existing slot a failover slot (PostgreSQL 17+), so that standbys synchronize it.
pub async fn make_failover(conn: &mut ReplicationConn, slot: &str) -> Result<()> {
    conn.simple_query(&format!(
        "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
        quote_ident(slot)
    ))
    .await?;
    tracing::info!(slot, "the replication slot is now a failover slot");
    Ok(())
}

/// The gap error of a slot the server invalidated.
pub fn lost(slot: &str) -> Error {
    Error::Gap(format!(
        "replication slot {slot:?} was invalidated (wal_status = lost): the server removed WAL \
         that ferry had not consumed, so changes were lost. Recover by dropping the slot \
         (SELECT pg_drop_replication_slot('{slot}')), clearing the spool directory and \
         starting again with snapshot = \"initial\" to re-copy the tables"
    ))
}

/// The slot's retention as the server sees it now (`wal_status` and `safe_wal_size` exist from
/// PostgreSQL 13; before that both stay unknown). `min_safe_mb` is the configured margin; by
/// default a quarter of `max_slot_wal_keep_size`. A lost slot is the gap error.
pub async fn retention(
    client: &Client,
    slot: &str,
    min_safe_mb: Option<u32>,
) -> Result<crate::retention::Retention> {
    // Through jsonb, so the one query also runs on servers without these columns.
    let row = client
        .query_opt(
            "SELECT to_jsonb(s) ->> 'wal_status', (to_jsonb(s) ->> 'safe_wal_size')::int8,
                    (SELECT setting::int8 FROM pg_settings
                     WHERE name = 'max_slot_wal_keep_size')
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .ok_or_else(|| {
            Error::Gap(format!(
                "replication slot {slot:?} does not exist any more: it was dropped while ferry \
                 used it, and the changes since its last confirmed position are gone. Recover \
                 by clearing the spool directory and the replicas and starting again with \
                 snapshot = \"initial\""
            ))
        })?;
    let wal_status: Option<String> = row.get(0);
    if wal_status.as_deref() == Some("lost") {
        return Err(lost(slot));
    }
    let keep_mb: Option<i64> = row.get(2);
    let min_safe_wal_bytes = match (min_safe_mb, keep_mb) {
        (Some(mb), _) => i64::from(mb) << 20,
        (None, Some(keep)) if keep > 0 => (keep << 20) / 4,
        _ => 0,
    };
    Ok(crate::retention::Retention {
        wal_status,
        safe_wal_bytes: row.get(1),
        min_safe_wal_bytes,
        ..Default::default()
    })
}

/// Creates the slot. With `export_snapshot`, the slot's snapshot is exported for a copy and stays
/// valid until the next command on `conn`. A temporary slot is dropped when `conn` closes. With
/// `failover` (PostgreSQL 17+), standbys that synchronize slots keep a copy of it.
pub async fn create_slot(
    conn: &mut ReplicationConn,
    slot: &str,
    temporary: bool,
    export_snapshot: bool,
    failover: bool,
    server_version: i32,
) -> Result<CreatedSlot> {
    let temporary = if temporary { " TEMPORARY" } else { "" };
    if failover && server_version < 170_000 {
        return Err(failover_needs_17(server_version));
    }
    let sql = if server_version >= 150_000 {
        format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput (SNAPSHOT '{}'{})",
            quote_ident(slot),
            if export_snapshot { "export" } else { "nothing" },
            if failover { ", FAILOVER true" } else { "" }
        )
    } else {
        format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {}",
            quote_ident(slot),
            if export_snapshot {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        )
    };
    let rows = conn.simple_query(&sql).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let consistent_point = row
        .get(1)
        .and_then(|v| v.as_deref())
        .and_then(|s| s.parse::<ferry_proto::Lsn>().ok())
        .ok_or_else(|| Error::Protocol("CREATE_REPLICATION_SLOT: bad consistent point".into()))?
        .0;
    let snapshot_name = row.get(2).cloned().flatten();
    tracing::info!(
        slot,
        consistent_point = %ferry_proto::Lsn(consistent_point),
        snapshot = snapshot_name.as_deref().unwrap_or(""),
        "created replication slot"
    );
    Ok(CreatedSlot {
        consistent_point,
        snapshot_name,
    })
}
