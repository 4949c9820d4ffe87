//! The initial copy: every captured table read in the slot's exported snapshot, so the copy and the
//! stream that follows meet exactly at the slot's consistent point: a change committed before it
//! is in the copy, a change committed after it is in the stream, none is in both.
//!
//! The copy is written to the spool as one transaction positioned just below the consistent point
//! (rows as inserts, each table announced by its relation first). Rows stream through with bounded
//! memory (the spool's group commit flushes as it fills). If ferry dies during the copy, the
//! incomplete transaction is cut from the spool at the next start and the copy starts over from a
//! new slot (see `source`), never leaving a silently partial replica.

use std::time::Instant;

use ferry_proto::{
    Begin, Column, Commit, Event, Insert, Lsn, Position, Relation, RelationId, ReplicaIdentity,
};
use ferry_spool::SpoolWriter;
use futures_util::StreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::slot::{quote_ident, quote_literal};
use super::source::SourceSettings;
use super::types;
use crate::error::{Error, Result};

/// Copies every published table that passes the filter into the spool.
pub async fn copy_all(
    settings: &SourceSettings,
    client: &Client,
    snapshot_name: &str,
    consistent_point: u64,
    spool: &mut SpoolWriter,
) -> Result<()> {
    if snapshot_name.is_empty() {
        return Err(Error::Protocol("the slot exported no snapshot".into()));
    }
    let position = Position::Postgres(Lsn(consistent_point.saturating_sub(1)));
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
             SET TRANSACTION SNAPSHOT {};
             SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL TimeZone = 'UTC';
             SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL extra_float_digits = 3;
             SET LOCAL bytea_output = 'hex';",
            quote_literal(snapshot_name)
        ))
        .await?;
    let result = copy_tables(settings, client, position.clone(), spool).await;
    let _ = client.batch_execute("COMMIT").await;
    result
}

async fn copy_tables(
    settings: &SourceSettings,
    client: &Client,
    position: Position,
    spool: &mut SpoolWriter,
) -> Result<()> {
    let tables = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text
             FROM pg_publication_tables p
             JOIN pg_namespace n ON n.nspname = p.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = $1 ORDER BY 2, 3",
            &[&settings.publication],
        )
        .await?;
    let now = super::replication::unix_now_micros();
    spool.append(&Event::Begin(Begin {
        position: position.clone(),
        xid: 0,
        commit_time: now,
    }))?;
    let started = Instant::now();
    let mut total_rows = 0u64;
    let selected: Vec<_> = tables
        .iter()
        .filter(|t| settings.filter.accepts(t.get(1), t.get(2)))
        .collect();
    tracing::info!(tables = selected.len(), "initial snapshot: starting");
    for (i, t) in selected.iter().enumerate() {
        let oid: u32 = t.get(0);
        let relation = describe(client, oid, t.get(1), t.get(2), t.get::<_, String>(3)).await?;
        spool.append(&Event::Relation(relation.clone()))?;
        let table_started = Instant::now();
        let cols: Vec<String> = relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let sql = format!(
            "SELECT {} FROM ONLY {}.{}",
            if cols.is_empty() {
                "".into()
            } else {
                cols.join(", ")
            },
            quote_ident(&relation.schema),
            quote_ident(&relation.name)
        );
        let stream = client.simple_query_raw(&sql).await?;
        futures_util::pin_mut!(stream);
        let mut rows = 0u64;
        while let Some(msg) = stream.next().await {
            if let SimpleQueryMessage::Row(r) = msg? {
                let new = relation
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(k, c)| match r.get(k) {
                        None => ferry_proto::Value::Null,
                        Some(text) => types::from_text(c.type_id, &c.type_name, text.as_bytes()),
                    })
                    .collect();
                spool.append(&Event::Insert(Insert {
                    relation: relation.id,
                    new,
                }))?;
                rows += 1;
                if spool.end().0 - spool.durable_end().0 >= 4 << 20 {
                    tokio::task::block_in_place(|| spool.commit())?;
                }
                if rows.is_multiple_of(1_000_000) {
                    tracing::info!(table = %relation.qualified_name(), rows, "initial snapshot: copying");
                }
            }
        }
        total_rows += rows;
        let secs = table_started.elapsed().as_secs_f64().max(1e-6);
        tracing::info!(
            table = %relation.qualified_name(),
            rows,
            rows_per_sec = (rows as f64 / secs) as u64,
            done = i + 1,
            of = selected.len(),
            "initial snapshot: table copied"
        );
    }
    spool.append(&Event::Commit(Commit {
        position,
        xid: 0,
        commit_time: now,
    }))?;
    tokio::task::block_in_place(|| spool.commit())?;
    tracing::info!(
        tables = selected.len(),
        rows = total_rows,
        seconds = started.elapsed().as_secs_f64(),
        "initial snapshot: complete"
    );
    Ok(())
}

/// The relation as pgoutput would announce it: columns in attribute order, replica identity
/// columns flagged as keys (all columns for REPLICA IDENTITY FULL).
async fn describe(
    client: &Client,
    oid: u32,
    schema: &str,
    name: &str,
    replident: String,
) -> Result<Relation> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, NULLIF(a.atttypmod, -1)),
                    coalesce(a.attnum = ANY(i.indkey), false)
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND
                  (CASE WHEN $2 = 'i' THEN i.indisreplident ELSE i.indisprimary END)
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&oid, &replident],
        )
        .await?;
    let full = replident == "f";
    Ok(Relation {
        id: RelationId(u64::from(oid)),
        schema: schema.to_owned(),
        name: name.to_owned(),
        replica_identity: match replident.as_str() {
            "n" => ReplicaIdentity::Nothing,
            "f" => ReplicaIdentity::Full,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns: rows
            .iter()
            .map(|r| {
                let key = full || (replident != "n" && r.get::<_, bool>(4));
                Column {
                    name: r.get(0),
                    type_id: r.get(1),
                    type_modifier: r.get(2),
                    type_name: r.get(3),
                    key,
                    nullable: !key,
                }
            })
            .collect(),
    })
}
