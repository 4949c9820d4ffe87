//! `ferry verify`: compares the source with every PostgreSQL sink, table by table.
//!
//! Each captured table is cut into chunks of about [`CHUNK_ROWS`] rows by its primary key (the
//! boundaries come from one index-ordered scan of the source), and each chunk's row count and an
//! order-independent checksum (the sum of a 64-bit hash of every row's text, over the source's
//! columns) are computed on both sides with the same output settings. On a live system a chunk
//! may differ only because the sink has not applied the latest changes yet, so a differing chunk
//! is checked again after waiting for the sink's checkpoint to pass the source's current WAL
//! position; only a chunk that still differs after that is reported.

pub mod mysql;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry_db::postgres::quote_ident;
use ferry_sink::postgres::read_checkpoint;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::config::{Config, SinkKind};
use crate::supervisor::pg_settings;
use ferry_db::postgres::tls;
use ferry_source::error::{Error, Result};

/// Rows per chunk.
pub const CHUNK_ROWS: i64 = 50_000;
/// Re-checks of a differing chunk.
const RECHECKS: usize = 3;

pub(crate) const SESSION: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC';
    SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

#[derive(Debug)]
pub(crate) struct Table {
    schema: String,
    name: String,
    columns: Vec<String>,
    key: Vec<(String, String)>,
}

impl Table {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.table`, unquoted.
    pub(crate) fn name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The result for one table and sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub sink: String,
    pub table: String,
    pub source_rows: i64,
    pub sink_rows: i64,
    pub differing_chunks: usize,
    pub chunks: usize,
}

/// The heading of a sink's table of results.
pub fn write_header(out: &mut String, sink: &str) {
    let _ = writeln!(out, "sink {sink}:");
    let _ = writeln!(
        out,
        "  {:<40} {:>12} {:>12}  result",
        "table", "source rows", "sink rows"
    );
}

/// One table's result line.
pub fn write_line(out: &mut String, r: &TableReport) {
    let verdict = if r.differing_chunks == 0 {
        "equal".to_owned()
    } else {
        format!("DIFFERS ({} of {} chunks)", r.differing_chunks, r.chunks)
    };
    let _ = writeln!(
        out,
        "  {:<40} {:>12} {:>12}  {verdict}",
        r.table, r.source_rows, r.sink_rows
    );
}

/// Compares every captured table on every PostgreSQL sink; writes a report to `out` and returns
/// the tables that differ.
pub async fn verify(config: &Config, out: &mut String) -> Result<Vec<TableReport>> {
    if config.source.kind == crate::config::SourceKind::Mysql {
        return crate::verify::mysql::verify(config, out).await;
    }
    let settings = pg_settings(config)?;
    let (cfg, tls) = tls::parse_url(config.source.url.expose())?;
    let (source, _task) = tls.connect_client(&cfg, "verify source").await?;
    source.batch_execute(SESSION).await?;
    let tables = captured_tables(&source, &settings).await?;
    let mut reports = Vec::new();
    for spanned in &config.sinks {
        let sink = spanned.get_ref();
        if sink.kind != SinkKind::Postgres {
            let _ = writeln!(
                out,
                "sink {}: {} sinks are not verified",
                sink.name.as_str(),
                sink.kind
            );
            continue;
        }
        let url = sink.url_exposed();
        let (target, _task) = tls::Tls::connect_url(&url, "verify sink").await?;
        target.batch_execute(SESSION).await?;
        let name = sink.name.as_str().to_owned();
        write_header(out, &name);
        for t in &tables {
            let r = compare(&source, &target, &name, t, RECHECKS).await?;
            write_line(out, &r);
            reports.push(r);
        }
    }
    Ok(reports)
}

pub(crate) async fn captured_tables(
    client: &Client,
    settings: &ferry_source::postgres::SourceSettings,
) -> Result<Vec<Table>> {
    let rows = client
        .query(
            "SELECT p.schemaname::text, p.tablename::text, c.oid
             FROM pg_publication_tables p
             JOIN pg_namespace n ON n.nspname = p.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&settings.publication],
        )
        .await?;
    let mut tables = Vec::new();
    for r in rows {
        let (schema, name, oid): (String, String, u32) = (r.get(0), r.get(1), r.get(2));
        if !settings.filter.accepts(&schema, &name) {
            continue;
        }
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                        coalesce(a.attnum = ANY(i.indkey), false)
                 FROM pg_attribute a
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                       AND coalesce(to_jsonb(a) ->> 'attgenerated', '') = ''
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await?;
        tables.push(Table {
            schema,
            name,
            columns: cols.iter().map(|c| c.get(0)).collect(),
            key: cols
                .iter()
                .filter(|c| c.get::<_, bool>(2))
                .map(|c| (c.get(0), c.get(1)))
                .collect(),
        });
    }
    Ok(tables)
}

/// A key's columns as text.
type Key = Vec<String>;

/// Chunk boundaries: every [`CHUNK_ROWS`]th key, as text.
async fn boundaries(source: &Client, t: &Table) -> Result<Vec<Key>> {
    if t.key.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = t.key.iter().map(|(k, _)| quote_ident(k)).collect();
    let key_text: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
    let sql = format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS rn FROM {}) s
         WHERE rn % {CHUNK_ROWS} = 0 ORDER BY rn",
        key_text.join(", "),
        keys.join(", "),
        keys.join(", "),
        t.qualified()
    );
    Ok(source
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| (0..keys.len()).map(|i| r.get(i)).collect())
        .collect())
}

/// Count and checksum of the rows with key in (lo, hi].
async fn chunk(
    client: &Client,
    t: &Table,
    lo: Option<&Vec<String>>,
    hi: Option<&Vec<String>>,
) -> Result<(i64, String)> {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    let keys: Vec<String> = t.key.iter().map(|(k, _)| quote_ident(k)).collect();
    let mut params: Vec<String> = Vec::new();
    let mut conds = Vec::new();
    let mut bound = |vals: &Vec<String>, op: &str, params: &mut Vec<String>| {
        let typed: Vec<String> = vals
            .iter()
            .zip(&t.key)
            .map(|(v, (_, ty))| {
                params.push(v.clone());
                format!("${}::text::{ty}", params.len())
            })
            .collect();
        conds.push(format!("({}) {op} ({})", keys.join(", "), typed.join(", ")));
    };
    if let Some(lo) = lo {
        bound(lo, ">", &mut params);
    }
    if let Some(hi) = hi {
        bound(hi, "<=", &mut params);
    }
    let sql = format!(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)::text
         FROM {} {}",
        cols.join(", "),
        t.qualified(),
        if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        }
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let row = client.query_one(&sql, &refs).await?;
    Ok((row.get(0), row.get(1)))
}

/// Compares one table; a differing chunk is checked again up to `rechecks` times after waiting
/// for the sink (none when both sides are fixed, as in a drill).
pub(crate) async fn compare(
    source: &Client,
    target: &Client,
    sink: &str,
    t: &Table,
    rechecks: usize,
) -> Result<TableReport> {
    let bounds = boundaries(source, t).await?;
    let ranges: Vec<(Option<&Key>, Option<&Key>)> = (0..=bounds.len())
        .map(|i| (i.checked_sub(1).map(|j| &bounds[j]), bounds.get(i)))
        .collect();
    let mut report = TableReport {
        sink: sink.to_owned(),
        table: format!("{}.{}", t.schema, t.name),
        source_rows: 0,
        sink_rows: 0,
        differing_chunks: 0,
        chunks: ranges.len(),
    };
    for (lo, hi) in ranges {
        let mut attempt = 0;
        loop {
            let a = chunk(source, t, lo, hi).await?;
            let b = match chunk(target, t, lo, hi).await {
                Ok(b) => b,
                Err(Error::Postgres(e)) if e.code().map(|c| c.code()) == Some("42P01") => {
                    (0, "missing table".into())
                }
                Err(e) => return Err(e),
            };
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

/// Waits (up to 10 s, or 2 s without any progress: no ferry is running) for the sink's
/// checkpoint to reach the source's current WAL position.
async fn wait_for_sink(source: &Client, target: &Client, sink: &str) -> Result<()> {
    let now: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let now: ferry_proto::Lsn = now
        .parse()
        .map_err(|e| Error::Protocol(format!("pg_current_wal_lsn: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    let mut moved = Instant::now();
    while Instant::now() < deadline {
        let checkpoint = read_checkpoint(target, sink).await.map_err(sink_error)?;
        if checkpoint
            .as_ref()
            .is_some_and(|(applied, _)| applied.covers(&ferry_proto::Position::Postgres(now)))
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

fn sink_error(e: ferry_sink::SinkError) -> Error {
    Error::Fatal(e.to_string())
}
