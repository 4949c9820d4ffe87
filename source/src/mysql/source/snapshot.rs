//! The MySQL/MariaDB source's initial snapshot: every captured table read in key order, in
//! chunks, inside one consistent read whose binlog position is where streaming starts; and the
//! same copy for a base backup, into the archive (see `crate::copy`).

use super::*;
use crate::copy::{BASE_BACKUP, Copied, CopyKind, CopyOutput, INITIAL, SpoolOutput};

impl MysqlSource {
    /// The initial snapshot: every captured table read in one consistent-snapshot transaction
    /// whose binlog position is known, written as one spool transaction at that position.
    /// `None` when shutdown interrupted it (it starts over at the next start).
    pub(super) async fn snapshot(
        &mut self,
        opts: Opts,
        shutdown: &CancellationToken,
    ) -> Result<Option<BinlogPos>> {
        let mut conn = ferry_db::mysql::connect(opts).await?;
        let (mut pos, _) = start_consistent_snapshot(&mut conn).await?;
        pos.epoch = self.epoch;
        let position = Position::Binlog(pos.clone());
        let now = crate::postgres::replication::unix_now_micros();
        let begin = self.writer.spool().end();
        self.append(&Event::Begin(Begin {
            position: position.clone(),
            xid: 0,
            commit_time: now,
        }))?;
        let settings = self.settings.clone();
        let mut out = SpoolOutput(self.writer.spool_mut());
        let copied =
            copy_tables(&mut conn, &settings, &position, &mut out, shutdown, INITIAL).await?;
        if copied.is_none() {
            self.writer.spool_mut().truncate_from(begin)?;
            return Ok(None);
        }
        self.append(&Event::Commit(Commit {
            position,
            xid: 0,
            commit_time: now,
        }))?;
        self.commit_spool()?;
        Ok(Some(pos))
    }
}

/// A base backup: the same copy as the initial snapshot, in a consistent snapshot of its own,
/// into `out`, while the stream keeps running; its position is in `epoch`, the epoch of the
/// spool's positions now ([`crate::mysql::server::spool_epoch`]). `None` when `shutdown` came
/// first.
pub async fn base_backup(
    settings: &MysqlSettings,
    epoch: u32,
    out: &mut impl CopyOutput,
    shutdown: &CancellationToken,
) -> Result<Option<Copied>> {
    let opts = ferry_db::mysql::opts_from_url(&settings.url)
        .map_err(|e| Error::Config(format!("source url: {e}")))?;
    let mut conn = ferry_db::mysql::connect(opts).await?;
    let (mut pos, snapshot_time) = start_consistent_snapshot(&mut conn).await?;
    pos.epoch = epoch;
    let position = Position::Binlog(pos);
    let tables = copy_tables(&mut conn, settings, &position, out, shutdown, BASE_BACKUP).await?;
    Ok(tables.map(|tables| Copied {
        position,
        snapshot_time,
        tables,
    }))
}

/// Starts a consistent-snapshot transaction on `conn` (values in each column's own character
/// set, timestamps in UTC, as the binlog has them) and returns its binlog position and the
/// server's clock when it started (µs since the epoch).
pub async fn start_consistent_snapshot(conn: &mut Conn) -> Result<(BinlogPos, i64)> {
    conn.query_drop("SET SESSION time_zone = '+00:00', SESSION character_set_results = NULL")
        .await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await?
        .unwrap_or_default();
    let pos = if version.contains("MariaDB") {
        // MariaDB reports the binlog position of a consistent snapshot without any lock.
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        let rows: Vec<(String, String)> =
            conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let get = |k: &str| {
            rows.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(p)) = (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
        else {
            return Err(Error::Fatal(
                "the server did not report binlog_snapshot_file".into(),
            ));
        };
        let mut at = BinlogPos::new(
            file,
            p.parse()
                .map_err(|_| Error::Protocol(format!("binlog_snapshot_position {p:?}")))?,
        );
        at.gtids = crate::mysql::server::mariadb_gtids_at(conn, &at).await?;
        at
    } else {
        // MySQL: the global read lock is held only while the snapshot starts and the position
        // is read.
        conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        let pos = master_position(conn).await;
        conn.query_drop("UNLOCK TABLES").await?;
        pos?
    };
    // Every transaction in the snapshot committed before this moment, on the server's clock.
    let now: Option<i64> = conn
        .query_first("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
        .await?;
    let now = now.ok_or_else(|| Error::Protocol("the server did not tell its time".into()))?;
    Ok((pos, now))
}

/// Copies every captured table, read in the consistent snapshot open on `conn`, into `out`:
/// each table's whole definition, its Relation, then its rows. Rows per table, or `None` if
/// `shutdown` came first. Ends the snapshot's transaction.
async fn copy_tables(
    conn: &mut Conn,
    settings: &MysqlSettings,
    position: &Position,
    out: &mut impl CopyOutput,
    shutdown: &CancellationToken,
    kind: CopyKind,
) -> Result<Option<Vec<(String, u64)>>> {
    let label = kind.label;
    let tables = schema::list_tables(conn, &|d, t| settings.wanted(d, t)).await?;
    tracing::info!(tables = tables.len(), %position, "{label}: starting");
    kind.progress.start(tables.len() as u64);
    let started = Instant::now();
    let mut total = 0u64;
    let mut copied = Vec::with_capacity(tables.len());
    for (i, (db, table)) in tables.iter().enumerate() {
        let Some(schema) = schema::load(conn, db, table).await? else {
            continue;
        };
        // The whole definition first, so a sink creates the source's table.
        let mut head = Vec::with_capacity(2);
        if let Some(def) = table_def::describe(conn, db, table).await? {
            head.push(crate::table_def::message(&def, position.clone()));
        }
        head.push(Event::Relation(schema.relation.clone()));
        out.write(head).await?;
        let Some(rows) = copy_table(conn, settings.zero_dates, &schema, out, shutdown).await?
        else {
            kind.progress.finish();
            tracing::warn!("{label} interrupted by shutdown; it starts over at the next start");
            return Ok(None);
        };
        total += rows;
        kind.progress.set(i as u64 + 1, total);
        copied.push((format!("{db}.{table}"), rows));
        let secs = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(table = %format!("{db}.{table}"), rows, tables_done = i + 1, tables = tables.len(), rows_per_sec = (total as f64 / secs) as u64, "{label}: table copied");
    }
    conn.query_drop("COMMIT").await?;
    kind.progress.finish();
    tracing::info!(
        rows = total,
        secs = started.elapsed().as_secs_f64(),
        "{label}: done"
    );
    Ok(Some(copied))
}

/// Copies one table in key-ordered chunks (all at once when it has no key), a batch per chunk.
async fn copy_table(
    conn: &mut Conn,
    zero_dates: ZeroDates,
    schema: &TableSchema,
    out: &mut impl CopyOutput,
    shutdown: &CancellationToken,
) -> Result<Option<u64>> {
    let rel = &schema.relation;
    let cols: Vec<String> = schema.columns.iter().map(|c| quote(&c.name)).collect();
    let key: Vec<usize> = rel.key_columns().collect();
    let from = format!("{}.{}", quote(&rel.schema), quote(&rel.name));
    let mut last: Option<Vec<mysql_async::Value>> = None;
    let mut rows = 0u64;
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let order: Vec<String> = key.iter().map(|&i| cols[i].clone()).collect();
        let (sql, params) = if key.is_empty() {
            (
                format!("SELECT {} FROM {from}", cols.join(", ")),
                Vec::new(),
            )
        } else {
            let cond = match &last {
                None => String::new(),
                Some(_) => format!(
                    " WHERE ({}) > ({})",
                    order.join(", "),
                    vec!["?"; order.len()].join(", ")
                ),
            };
            (
                format!(
                    "SELECT {} FROM {from}{cond} ORDER BY {} LIMIT {CHUNK_ROWS}",
                    cols.join(", "),
                    order.join(", ")
                ),
                last.clone().unwrap_or_default(),
            )
        };
        let batch: Vec<mysql_async::Row> = if params.is_empty() {
            conn.query(sql).await?
        } else {
            conn.exec(sql, params).await?
        };
        let n = batch.len();
        let mut events = Vec::with_capacity(n);
        for row in batch {
            let raw = row.unwrap();
            if !key.is_empty() {
                last = Some(key.iter().map(|&i| raw[i].clone()).collect());
            }
            let values = raw
                .into_iter()
                .zip(&schema.columns)
                .map(|(v, c)| {
                    decode::text_result(c, v, zero_dates).map_err(|e| {
                        Error::Fatal(format!("snapshot of {}: {e}", rel.qualified_name()))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            events.push(Event::Insert(Insert {
                relation: rel.id,
                new: values,
            }));
            rows += 1;
        }
        out.write(events).await?;
        if key.is_empty() || n < CHUNK_ROWS {
            return Ok(Some(rows));
        }
    }
}
