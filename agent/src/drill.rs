//! `ferry backup drill`: a backup proven by restoring it. The drill fixes a position Q on the
//! source with a consistent snapshot of its own (a temporary slot's exported snapshot on
//! PostgreSQL), waits until the archive holds Q, restores to exactly Q into a scratch database,
//! and compares every captured table there with the source as of Q (inside that snapshot), with
//! `verify`'s chunked checksums. The result is written to the archive (`drill/<id>.json`), where
//! the running ferry reads the newest for `/metrics`, so an alert can fire when drills stop
//! passing.

use serde::{Deserialize, Serialize};

use ferry_archive::Archive;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry_proto::Position;
use ferry_source::error::{Error, Result};
use mysql_async::prelude::Queryable;

use crate::backup::{archive_error, archive_of};
use crate::config::{Config, SourceKind};
use crate::verify::{TableReport, write_header, write_line};

/// One drill's result, as stored in the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When it finished, µs since the epoch.
    pub finished: i64,
    pub passed: bool,
    /// The position it restored to and compared at.
    pub position: String,
    pub tables: usize,
    pub rows: i64,
    /// The tables that differ, or why the drill could not finish.
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// The newest drill record in the archive, if any can be read.
pub async fn last_record(archive: &Archive) -> Option<DrillRecord> {
    let names = archive.list("drill").await.ok()?;
    let name = names.iter().rev().find(|n| n.ends_with(".json"))?;
    let bytes = archive.get(name).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `ferry backup drill`: the report, and whether the restored database equals the source. Its
/// result (pass, fail, or the reason it could not finish) is also written to the archive.
pub async fn drill(config: &Config, into: &str, wait: Duration) -> Result<(String, bool)> {
    let archive = archive_of(config)?;
    let started = Instant::now();
    let mut out = String::new();
    let result = match config.source.kind {
        SourceKind::Postgres => postgres(config, &archive, into, wait, &mut out).await,
        SourceKind::Mysql => mysql(config, &archive, into, wait, &mut out).await,
    };
    let finished = ferry_source::postgres::replication::unix_now_micros();
    let record = match &result {
        Ok((position, reports)) => DrillRecord {
            finished,
            passed: reports.iter().all(|r| r.differing_chunks == 0),
            position: position.to_string(),
            tables: reports.len(),
            rows: reports.iter().map(|r| r.source_rows).sum(),
            problems: reports
                .iter()
                .filter(|r| r.differing_chunks > 0)
                .map(|r| format!("{} differs", r.table))
                .collect(),
            seconds: started.elapsed().as_secs_f64(),
        },
        Err(e) => DrillRecord {
            finished,
            passed: false,
            position: String::new(),
            tables: 0,
            rows: 0,
            problems: vec![e.to_string()],
            seconds: started.elapsed().as_secs_f64(),
        },
    };
    let name = format!("drill/{}.json", ferry_archive::base::id_at(finished));
    let text = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::Fatal(format!("drill record: {e}")))?;
    archive.put_new(&name, text).await.map_err(archive_error)?;
    let (position, _) = result?;
    let _ = writeln!(
        out,
        "drill {} at {position}: {} table(s), {} row(s) compared in {:.1} s (recorded as {name})",
        if record.passed { "PASSED" } else { "FAILED" },
        record.tables,
        record.rows,
        record.seconds
    );
    Ok((out, record.passed))
}

/// Waits until the archive holds every transaction at or before `q`.
async fn wait_for_archive(archive: &Archive, q: &Position, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let last = archive.last_manifest().await.map_err(archive_error)?;
        if last
            .as_ref()
            .is_some_and(|(_, m)| m.last_position.covers(q))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Fatal(format!(
                "the archive does not hold {q} after {} s (it ends at {}): is ferry running with \
                 this [archive]?",
                wait.as_secs(),
                last.map_or("nothing".into(), |(_, m)| m.last_position.to_string())
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Restores to exactly `q` into `into`, and says so in `out`.
async fn restore_to(config: &Config, q: &Position, into: &str, out: &mut String) -> Result<()> {
    let text = crate::backup::restore(config, &q.to_string(), into, &[], false).await?;
    out.push_str(&text);
    Ok(())
}

async fn postgres(
    config: &Config,
    archive: &Archive,
    into: &str,
    wait: Duration,
    out: &mut String,
) -> Result<(Position, Vec<TableReport>)> {
    let settings = crate::supervisor::pg_settings(config)?;
    let exported = ferry_source::postgres::snapshot::export_snapshot(&settings, "drill").await?;
    // The source as of Q: a transaction that imports the snapshot keeps it after the slot goes.
    let source =
        ferry_source::postgres::snapshot::connect(&settings, &exported.snapshot_name).await;
    exported.repl.close().await;
    let source = source?;
    source.batch_execute(crate::verify::SESSION).await?;
    let q = exported.position;
    let _ = writeln!(
        out,
        "drill position {q}: waiting for the archive to hold it"
    );
    wait_for_archive(archive, &q, wait).await?;
    restore_to(config, &q, into, out).await?;
    let (target, _task) = ferry_db::postgres::tls::Tls::connect_url(into, "drill").await?;
    target.batch_execute(crate::verify::SESSION).await?;
    let tables = crate::verify::captured_tables(&source, &settings).await?;
    write_header(out, "drill");
    let mut reports = Vec::new();
    for t in &tables {
        let r = crate::verify::compare(&source, &target, "drill", t, 0).await?;
        write_line(out, &r);
        reports.push(r);
    }
    Ok((q, reports))
}

async fn mysql(
    config: &Config,
    archive: &Archive,
    into: &str,
    wait: Duration,
    out: &mut String,
) -> Result<(Position, Vec<TableReport>)> {
    let settings = crate::supervisor::mysql_settings(config)?;
    let mut source = crate::verify::mysql::connect(config.source.url.expose()).await?;
    let (pos, _) = ferry_source::mysql::start_consistent_snapshot(&mut source).await?;
    // verify's session settings, inside the snapshot's transaction.
    source
        .query_drop("SET SESSION time_zone = '+00:00'")
        .await?;
    let q = Position::Binlog(pos);
    let _ = writeln!(
        out,
        "drill position {q}: waiting for the archive to hold it"
    );
    wait_for_archive(archive, &q, wait).await?;
    restore_to(config, &q, into, out).await?;
    let mut target = crate::verify::mysql::connect(into).await?;
    let tables = crate::verify::mysql::captured_tables(&mut source, &settings).await?;
    write_header(out, "drill");
    let mut reports = Vec::new();
    for t in &tables {
        let r = crate::verify::mysql::compare(&mut source, &mut target, "drill", t, 0).await?;
        write_line(out, &r);
        reports.push(r);
    }
    Ok((q, reports))
}
