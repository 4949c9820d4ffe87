//! The MySQL/MariaDB source's initial snapshot: every captured table read in key order, in
//! chunks, inside one consistent read whose binlog position is where streaming starts.

use super::*;

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
        // Values in each column's own character set, timestamps in UTC, as the binlog has them.
        conn.query_drop("SET SESSION time_zone = '+00:00', SESSION character_set_results = NULL")
            .await?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await?
            .unwrap_or_default();
        let mariadb = version.contains("MariaDB");
        let pos = if mariadb {
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
            let (Some(file), Some(p)) =
                (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
            else {
                return Err(Error::Fatal(
                    "the server did not report binlog_snapshot_file".into(),
                ));
            };
            BinlogPos {
                file,
                pos: p
                    .parse()
                    .map_err(|_| Error::Protocol(format!("binlog_snapshot_position {p:?}")))?,
            }
        } else {
            // MySQL: the global read lock is held only while the snapshot starts and the
            // position is read.
            conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await?;
            let pos = master_position(&mut conn).await;
            conn.query_drop("UNLOCK TABLES").await?;
            pos?
        };
        let settings = self.settings.clone();
        let tables = schema::list_tables(&mut conn, &|d, t| settings.wanted(d, t)).await?;
        tracing::info!(tables = tables.len(), position = %pos, "initial snapshot: starting");
        crate::progress::SNAPSHOT.start(tables.len() as u64);
        let position = Position::Binlog(pos.clone());
        let now = crate::postgres::replication::unix_now_micros();
        let begin = self.writer.spool().end();
        self.append(&Event::Begin(Begin {
            position: position.clone(),
            xid: 0,
            commit_time: now,
        }))?;
        let started = Instant::now();
        let mut total = 0u64;
        for (i, (db, table)) in tables.iter().enumerate() {
            let Some(schema) = schema::load(&mut conn, db, table).await? else {
                continue;
            };
            // The whole definition first, so a sink creates the source's table.
            if let Some(def) = table_def::describe(&mut conn, db, table).await? {
                self.append(&crate::table_def::message(&def, position.clone()))?;
            }
            self.described.insert(schema.relation.id);
            self.append(&Event::Relation(schema.relation.clone()))?;
            let rows = self.copy_table(&mut conn, &schema, shutdown).await?;
            let Some(rows) = rows else {
                self.writer.spool_mut().truncate_from(begin)?;
                tracing::warn!(
                    "initial snapshot interrupted by shutdown; it starts over at the next start"
                );
                return Ok(None);
            };
            total += rows;
            crate::progress::SNAPSHOT.set(i as u64 + 1, total);
            let secs = started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(table = %format!("{db}.{table}"), rows, tables_done = i + 1, tables = tables.len(), rows_per_sec = (total as f64 / secs) as u64, "initial snapshot: table copied");
        }
        conn.query_drop("COMMIT").await?;
        crate::progress::SNAPSHOT.finish();
        self.append(&Event::Commit(Commit {
            position,
            xid: 0,
            commit_time: now,
        }))?;
        self.commit_spool()?;
        tracing::info!(
            rows = total,
            secs = started.elapsed().as_secs_f64(),
            "initial snapshot: done"
        );
        Ok(Some(pos))
    }

    /// Copies one table in key-ordered chunks (all at once when it has no key).
    async fn copy_table(
        &mut self,
        conn: &mut Conn,
        schema: &TableSchema,
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
            for row in batch {
                let raw = row.unwrap();
                if !key.is_empty() {
                    last = Some(key.iter().map(|&i| raw[i].clone()).collect());
                }
                let values = raw
                    .into_iter()
                    .zip(&schema.columns)
                    .map(|(v, c)| {
                        decode::text_result(c, v, self.settings.zero_dates).map_err(|e| {
                            Error::Fatal(format!("snapshot of {}: {e}", rel.qualified_name()))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.append(&Event::Insert(Insert {
                    relation: rel.id,
                    new: values,
                }))?;
                rows += 1;
            }
            if key.is_empty() || n < CHUNK_ROWS {
                return Ok(Some(rows));
            }
        }
    }
}
