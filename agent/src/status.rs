//! `ferry status`: positions and lag per sink, from the spool directory, the source's slot and
//! each sink's checkpoint on its target; it needs no running ferry (nor its HTTP endpoint).

use std::fmt::Write as _;

use ferry_proto::{Lsn, Position};
use ferry_spool::{Cursors, segment};

use crate::config::{Config, SinkKind, SourceKind};
use ferry_db::postgres::tls;
use ferry_source::error::Result;
use ferry_source::postgres::source::spool_tail;

/// The status report as text.
pub async fn status(config: &Config) -> Result<String> {
    let mut out = String::new();
    spool_line(config, &mut out)?;
    let mut now = SourceNow::default();
    if config.source.kind == SourceKind::Mysql {
        now.binlog_sizes = mysql_source_line(config, &mut out).await;
        now.binlog = ferry_source::mysql::server::current_position(&now.binlog_sizes);
    } else {
        now.wal = postgres_source_line(config, &mut out).await?;
    }
    if let Some(a) = &config.archive {
        archive_line(a, &mut out).await;
    }
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<20} {:>14} {:>8} {:>12} {:>14}  state",
        "sink", "type", "applied position", "lag bytes", "lag s", "checkpoint age", "spool offset"
    );
    for spanned in &config.sinks {
        let line = sink_line(config, spanned.get_ref(), &now).await;
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

/// The archive's line: how many objects, and the newest transaction it holds.
async fn archive_line(a: &crate::config::ArchiveConfig, out: &mut String) {
    let archive = match a.settings().and_then(|s| ferry_archive::Archive::open(&s)) {
        Ok(archive) => archive,
        Err(e) => {
            let _ = writeln!(out, "archive: {e}");
            return;
        }
    };
    let line = match archive.last_manifest().await {
        Ok(Some((objects, m))) => {
            let age = (ferry_source::postgres::replication::unix_now_micros() - m.last_commit_time)
                as f64
                / 1e6;
            format!(
                "archive {}: {objects} object(s), holds the source up to {} (committed {}, {age:.1} s ago)",
                archive.url,
                m.last_position,
                crate::backup::format_time(m.last_commit_time)
            )
        }
        Ok(None) => format!("archive {}: empty", archive.url),
        Err(e) => format!("archive {}: unreadable: {e}", archive.url),
    };
    let _ = writeln!(out, "{line}");
    let now = ferry_source::postgres::replication::unix_now_micros();
    match archive.base_manifests().await {
        Ok(bases) => match bases.last() {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "base backups: {}, newest {} at {} ({:.1} h old, {} rows)",
                    bases.len(),
                    b.id,
                    b.position,
                    (now - b.snapshot_time) as f64 / 3.6e9,
                    b.rows
                );
            }
            None => {
                let _ = writeln!(out, "base backups: none");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "base backups: unreadable: {e}");
        }
    }
    if let Some(d) = crate::drill::last_record(&archive).await {
        let _ = writeln!(
            out,
            "last drill: {} at {} ({})",
            if d.passed { "passed" } else { "FAILED" },
            crate::backup::format_time(d.finished),
            if d.passed {
                d.position
            } else {
                d.problems.join("; ")
            }
        );
    }
}

/// Where the source's server is now, for the sinks' lag in bytes.
#[derive(Debug, Default)]
struct SourceNow {
    wal: Option<Lsn>,
    binlog: Option<ferry_proto::BinlogPos>,
    binlog_sizes: Vec<(String, u64)>,
}

/// The spool's line: segments, size, and the source position it holds up to.
fn spool_line(config: &Config, out: &mut String) -> Result<()> {
    let dir = config.spool.dir();
    let bases = if dir.exists() {
        segment::list(dir)?
    } else {
        Vec::new()
    };
    let bytes: u64 = bases
        .iter()
        .filter_map(|b| std::fs::metadata(segment::segment_path(dir, *b)).ok())
        .map(|m| m.len())
        .sum();
    let spooled: Option<String> = if bases.is_empty() {
        None
    } else if config.source.kind == SourceKind::Mysql {
        ferry_source::mysql::source::resume_position(dir)?.map(|p| p.to_string())
    } else {
        spool_tail(dir)?.resume_from.map(|l| Lsn(l).to_string())
    };
    let _ = writeln!(
        out,
        "spool {}: {} segment(s), {} MiB, holds the source up to {}",
        dir.display(),
        bases.len(),
        bytes >> 20,
        spooled.unwrap_or_else(|| "nothing yet".into())
    );
    Ok(())
}

/// The PostgreSQL source's lines: WAL position, the slot and what the server keeps for it.
/// Returns the WAL position now.
async fn postgres_source_line(config: &Config, out: &mut String) -> Result<Option<Lsn>> {
    let client = match tls::parse_url(config.source.url.expose()) {
        Ok((cfg, tls)) => match tls.connect_client(&cfg, "status").await {
            Ok((client, _task)) => client,
            Err(e) => {
                let _ = writeln!(out, "source: unreachable: {e}");
                return Ok(None);
            }
        },
        Err(e) => {
            let _ = writeln!(out, "source: {e}");
            return Ok(None);
        }
    };
    let row = client
        .query_opt(
            "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text,
                s.active, to_jsonb(s) ->> 'wal_status'
         FROM (SELECT 1) x LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&config.source.slot()],
        )
        .await?;
    let retention = ferry_source::postgres::slot::retention(
        &client,
        config.source.slot(),
        config.source.min_safe_wal_mb,
    )
    .await;
    let Some(row) = row else {
        return Ok(None);
    };
    let now: String = row.get(0);
    let wal_now = now.parse::<Lsn>().ok();
    let confirmed: Option<String> = row.get(1);
    let active: Option<bool> = row.get(2);
    let wal_status: Option<String> = row.get(3);
    let lag = match (
        wal_now,
        confirmed.as_deref().and_then(|c| c.parse::<Lsn>().ok()),
    ) {
        (Some(n), Some(c)) => format!("{} bytes", n.0.saturating_sub(c.0)),
        _ => "-".into(),
    };
    let _ = writeln!(
        out,
        "source: WAL at {now}; slot {:?} {} confirmed {} (slot lag {lag}, wal_status {})",
        config.source.slot(),
        match active {
            Some(true) => "active,",
            Some(false) => "inactive,",
            None => "MISSING,",
        },
        confirmed.unwrap_or_else(|| "-".into()),
        wal_status.unwrap_or_else(|| "-".into())
    );
    match retention {
        Ok(r) => {
            if let Some(safe) = r.safe_wal_bytes {
                let _ = writeln!(
                    out,
                    "source: slot safe_wal_size {} MiB (margin {} MiB)",
                    safe >> 20,
                    r.min_safe_wal_bytes >> 20
                );
            }
            if let Some(why) = r.warning(0) {
                let _ = writeln!(out, "WARNING: {why}");
            }
        }
        Err(e) if active.is_some() => {
            let _ = writeln!(out, "WARNING: {e}");
        }
        Err(_) => {}
    }
    Ok(wal_now)
}

/// One sink's line: its applied position (a database sink's checkpoint), lag, checkpoint age,
/// spool offset and state.
async fn sink_line(config: &Config, sink: &crate::config::SinkConfig, now: &SourceNow) -> String {
    let dir = config.spool.dir();
    let name = sink.name.as_str();
    let offset = Cursors::new(dir).load(name).ok().flatten();
    let cursor = offset.map_or("-".into(), |o| o.to_string());
    let lag_s = offset
        .and_then(|o| {
            ferry_source::lag::seconds_behind(
                dir,
                o,
                ferry_source::postgres::replication::unix_now_micros(),
            )
        })
        .map_or("-".into(), |s| format!("{s:.1}"));
    let state =
        ferry_sink::progress::read_state(dir, name).map_or("-".to_owned(), |s| s.to_string());
    let kind = sink.kind.to_string();
    let url = sink.url_exposed();
    let checkpoint = match sink.kind {
        SinkKind::Mysql => mysql_checkpoint(&url, name).await,
        SinkKind::Postgres => postgres_checkpoint(&url, name).await,
        // A Kafka sink's position is its cursor in the spool (or, exactly once, the
        // checkpoint topic, which this command does not read).
        _ => {
            return format!(
                "{name:<16} {kind:<10} {:<20} {:>14} {lag_s:>8} {:>12} {cursor:>14}  {state}",
                "-", "-", "-"
            );
        }
    };
    match checkpoint {
        Ok(Some((position, age))) => {
            let lag = lag_bytes(now, &position);
            format!(
                "{name:<16} {kind:<10} {position:<20} {lag:>14} {lag_s:>8} {age:>12.1} {cursor:>14}  {state}"
            )
        }
        Ok(None) => format!(
            "{name:<16} {kind:<10} {:<20} {:>14} {lag_s:>8} {:>12} {cursor:>14}  {state}",
            "(no checkpoint yet)", "-", "-"
        ),
        Err(e) => format!("{name:<16} {kind:<10} unreachable: {e}  {state}"),
    }
}

/// A PostgreSQL sink's checkpoint: (position, age in seconds); none when its table or row is
/// not there yet.
pub(crate) async fn postgres_checkpoint(url: &str, sink: &str) -> Result<Option<(String, f64)>> {
    let (client, _task) = tls::Tls::connect_url(url, "status sink").await?;
    let row = client
        .query_opt(
            "SELECT position, extract(epoch FROM now() - updated_at)::float8
             FROM ferry.checkpoints WHERE sink = $1",
            &[&sink],
        )
        .await;
    Ok(row.ok().flatten().map(|r| (r.get(0), r.get(1))))
}

/// The MySQL source's line: its binlog position now. Returns every binlog file and its size
/// (the last one's size is the current position).
async fn mysql_source_line(config: &Config, out: &mut String) -> Vec<(String, u64)> {
    let opts = match ferry_db::mysql::opts_from_url(config.source.url.expose()) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(out, "source: url: {e}");
            return Vec::new();
        }
    };
    let mut conn = match ferry_db::mysql::connect(opts).await {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "source: unreachable: {e}");
            return Vec::new();
        }
    };
    let sizes = match ferry_source::mysql::server::binlog_sizes(&mut conn).await {
        Ok(sizes) => sizes,
        Err(e) => {
            let _ = writeln!(out, "source: SHOW BINARY LOGS failed: {e}");
            return Vec::new();
        }
    };
    let _ = writeln!(
        out,
        "source: binlog at {}",
        ferry_source::mysql::server::current_position(&sizes)
            .map_or("- (no binary log)".into(), |p| p.to_string())
    );
    sizes
}

/// A MySQL sink's checkpoint: (position, age in seconds).
pub(crate) async fn mysql_checkpoint(url: &str, sink: &str) -> Result<Option<(String, f64)>> {
    use mysql_async::prelude::Queryable;
    let opts = ferry_db::mysql::opts_from_url(url)
        .map_err(|e| ferry_source::error::Error::Config(format!("sink url: {e}")))?;
    let mut conn = ferry_db::mysql::connect(opts).await?;
    let row: std::result::Result<Option<(String, f64)>, mysql_async::Error> = conn
        .exec_first(
            "SELECT position, CAST(TIMESTAMPDIFF(MICROSECOND, updated_at, CURRENT_TIMESTAMP(6)) / 1e6 AS DOUBLE) \
             FROM ferry.checkpoints WHERE sink = ?",
            (sink,),
        )
        .await;
    match row {
        Ok(r) => Ok(r),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How many bytes of the source's log lie past a sink's applied position ([`ferry_source::lag`]), or
/// "-" when it cannot be known.
fn lag_bytes(now: &SourceNow, applied: &str) -> String {
    let server = match (now.wal, &now.binlog) {
        (Some(l), _) => Position::Postgres(l),
        (_, Some(b)) => Position::Binlog(b.clone()),
        _ => return "-".into(),
    };
    applied
        .parse::<Position>()
        .ok()
        .and_then(|a| ferry_source::lag::bytes_behind(&server, &a, &now.binlog_sizes))
        .map_or("-".into(), |b| b.to_string())
}
