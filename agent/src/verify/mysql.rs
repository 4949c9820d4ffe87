//! `ferry verify` for a MySQL/MariaDB source and its MySQL/MariaDB sinks, table by table.
//!
//! As for PostgreSQL: each captured table is cut into chunks of [`CHUNK_ROWS`] rows by primary key
//! (boundaries from one window-function scan of the source), and each chunk's row count and an
//! order-independent checksum (the sum of the first 64 bits of an MD5 of every row's bytes, text
//! as utf8mb4 characters since a replica may keep another character set) are
//! computed by the same statement on both servers, sessions in UTC. A chunk that differs is checked
//! again after waiting for the sink's checkpoint to reach the source's current binlog position;
//! only what still differs is reported. Sinks of another engine are not compared.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry_db::mysql::quote;
use ferry_proto::Position;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as My};

use super::{CHUNK_ROWS, TableReport, write_header, write_line};
use crate::config::{Config, SinkKind};
use ferry_source::error::{Error, Result};
use ferry_source::mysql::schema::{self, TableSchema};

const RECHECKS: usize = 3;

/// A key's values.
type Key = Vec<My>;

pub(crate) async fn connect(url: &str) -> Result<Conn> {
    let opts =
        ferry_db::mysql::opts_from_url(url).map_err(|e| Error::Config(format!("url: {e}")))?;
    let mut conn = ferry_db::mysql::connect(opts).await?;
    conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
    Ok(conn)
}

/// Compares every captured table on every MySQL/MariaDB sink.
pub async fn verify(config: &Config, out: &mut String) -> Result<Vec<TableReport>> {
    let settings = crate::supervisor::mysql_settings(config)?;
    let mut source = connect(config.source.url.expose()).await?;
    let tables = captured_tables(&mut source, &settings).await?;
    let mut reports = Vec::new();
    for spanned in &config.sinks {
        let sink = spanned.get_ref();
        if sink.kind != SinkKind::Mysql {
            let _ = writeln!(
                out,
                "sink {}: {} sinks of a mysql source are not verified",
                sink.name.as_str(),
                sink.kind
            );
            continue;
        }
        let mut target = connect(&sink.url_exposed()).await?;
        let name = sink.name.as_str().to_owned();
        write_header(out, &name);
        for t in &tables {
            let r = compare(&mut source, &mut target, &name, t, RECHECKS).await?;
            write_line(out, &r);
            reports.push(r);
        }
    }
    Ok(reports)
}

/// The captured tables' schemas.
pub(crate) async fn captured_tables(
    source: &mut Conn,
    settings: &ferry_source::mysql::MysqlSettings,
) -> Result<Vec<TableSchema>> {
    let names = schema::list_tables(source, &|d, t| settings.wanted(d, t)).await?;
    let mut tables = Vec::new();
    for (db, t) in names {
        if let Some(s) = schema::load(source, &db, &t).await? {
            tables.push(s);
        }
    }
    Ok(tables)
}

fn key_list(t: &TableSchema) -> Vec<String> {
    t.columns
        .iter()
        .filter(|c| c.key)
        .map(|c| quote(&c.name))
        .collect()
}

fn qualified(t: &TableSchema) -> String {
    format!("{}.{}", quote(&t.relation.schema), quote(&t.relation.name))
}

/// Every [`CHUNK_ROWS`]th key of the source, in key order.
async fn boundaries(source: &mut Conn, t: &TableSchema) -> Result<Vec<Vec<My>>> {
    let keys = key_list(t);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {k} FROM (SELECT {k}, ROW_NUMBER() OVER (ORDER BY {k}) AS rn FROM {}) s \
         WHERE rn % {CHUNK_ROWS} = 0 ORDER BY rn",
        qualified(t),
        k = keys.join(", ")
    );
    let rows: Vec<mysql_async::Row> = source.query(sql).await?;
    Ok(rows.into_iter().map(|r| r.unwrap()).collect())
}

/// Count and checksum of the rows with key in (lo, hi]; `None` when the table is missing.
async fn chunk(
    conn: &mut Conn,
    t: &TableSchema,
    lo: Option<&Vec<My>>,
    hi: Option<&Vec<My>>,
) -> Result<Option<(i64, String)>> {
    let keys = key_list(t);
    let row_bytes: Vec<String> = t
        .columns
        .iter()
        .map(|c| match c.kind {
            // Text compares as characters: a replica may store it in another character set.
            schema::Kind::Text(_)
            | schema::Kind::Json
            | schema::Kind::Enum(_)
            | schema::Kind::Set(_) => {
                format!(
                    "IFNULL(HEX(CONVERT({} USING utf8mb4)), 'N')",
                    quote(&c.name)
                )
            }
            _ => format!("IFNULL(HEX(CONCAT({})), 'N')", quote(&c.name)),
        })
        .collect();
    let tuple = format!("({})", keys.join(", "));
    let marks = format!("({})", vec!["?"; keys.len()].join(", "));
    let mut conds = Vec::new();
    let mut params: Vec<My> = Vec::new();
    if let Some(lo) = lo {
        conds.push(format!("{tuple} > {marks}"));
        params.extend(lo.iter().cloned());
    }
    if let Some(hi) = hi {
        conds.push(format!("{tuple} <= {marks}"));
        params.extend(hi.iter().cloned());
    }
    let sql = format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(CAST(CONV(LEFT(MD5(CONCAT_WS('#', {})), 16), 16, 10) \
         AS DECIMAL(20))), 0) AS CHAR) FROM {} {}",
        row_bytes.join(", "),
        qualified(t),
        if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        }
    );
    let result: std::result::Result<Option<(i64, String)>, mysql_async::Error> =
        conn.exec_first(sql, params).await;
    match result {
        Ok(r) => Ok(r),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Compares one table; a differing chunk is checked again up to `rechecks` times after waiting
/// for the sink.
pub(crate) async fn compare(
    source: &mut Conn,
    target: &mut Conn,
    sink: &str,
    t: &TableSchema,
    rechecks: usize,
) -> Result<TableReport> {
    let bounds = boundaries(source, t).await?;
    let ranges: Vec<(Option<&Key>, Option<&Key>)> = (0..=bounds.len())
        .map(|i| (i.checked_sub(1).map(|j| &bounds[j]), bounds.get(i)))
        .collect();
    let mut report = TableReport {
        sink: sink.to_owned(),
        table: t.relation.qualified_name(),
        source_rows: 0,
        sink_rows: 0,
        differing_chunks: 0,
        chunks: ranges.len(),
    };
    for (lo, hi) in ranges {
        let mut attempt = 0;
        loop {
            let a = chunk(source, t, lo, hi).await?.unwrap_or((0, "0".into()));
            let b = chunk(target, t, lo, hi)
                .await?
                .unwrap_or((0, "missing table".into()));
            if a == b || attempt == rechecks {
                report.source_rows += a.0;
                report.sink_rows += b.0;
                report.differing_chunks += usize::from(a != b);
                break;
            }
            attempt += 1;
            wait_for_sink(source, target, sink).await?;
        }
    }
    Ok(report)
}

/// Waits (up to 10 s, or 2 s without progress) for the sink's checkpoint to reach the source's
/// current binlog position.
async fn wait_for_sink(source: &mut Conn, target: &mut Conn, sink: &str) -> Result<()> {
    let row: Option<mysql_async::Row> = source.query_first("SHOW MASTER STATUS").await?;
    let now = row.and_then(|r| {
        Some(ferry_proto::BinlogPos::new(
            r.get::<String, _>(0)?,
            r.get::<u64, _>(1)?,
        ))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    let mut moved = Instant::now();
    while Instant::now() < deadline {
        let checkpoint = ferry_sink::mysql::read_checkpoint(target, sink)
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        if let (Some((applied, _)), Some(now)) = (&checkpoint, &now)
            && applied.covers(&Position::Binlog(now.clone()))
        {
            return Ok(());
        }
        let position = checkpoint.map(|c| c.0);
        if position != last {
            last = position;
            moved = Instant::now();
        } else if moved.elapsed() > Duration::from_secs(2) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
