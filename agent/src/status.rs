//! `ferry status`: positions and lag per sink, from the spool directory, the source's slot and
//! each sink's checkpoint on its target; it needs no running ferry (nor its HTTP endpoint).

use std::fmt::Write as _;

use ferry_proto::{Lsn, Position};
use ferry_spool::{Cursors, segment};

use crate::config::{Config, SinkKind};
use crate::error::Result;
use crate::postgres::source::spool_tail;
use crate::postgres::tls;

/// The status report as text.
pub async fn status(config: &Config) -> Result<String> {
    let mut out = String::new();
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
    let spooled = if bases.is_empty() {
        None
    } else {
        spool_tail(dir)?.resume_from
    };
    let _ = writeln!(
        out,
        "spool {}: {} segment(s), {} MiB, holds the source up to {}",
        dir.display(),
        bases.len(),
        bytes >> 20,
        spooled.map_or("nothing yet".into(), |l| Lsn(l).to_string())
    );
    let mut wal_now = None;
    match tls::parse_url(config.source.url.expose()) {
        Ok((cfg, tls)) => match tls.connect_client(&cfg, "status").await {
            Ok((client, _task)) => {
                let row = client
                    .query_opt(
                        "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text,
                                s.active, s.wal_status
                         FROM (SELECT 1) x LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                        &[&config.source.slot()],
                    )
                    .await?;
                if let Some(row) = row {
                    let now: String = row.get(0);
                    wal_now = now.parse::<Lsn>().ok();
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
                }
            }
            Err(e) => {
                let _ = writeln!(out, "source: unreachable: {e}");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "source: {e}");
        }
    }
    let cursors = Cursors::new(dir);
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<20} {:>14} {:>12} {:>14}  state",
        "sink", "type", "applied position", "lag bytes", "checkpoint age", "spool offset"
    );
    for spanned in &config.sinks {
        let sink = spanned.get_ref();
        let name = sink.name.as_str();
        let cursor = cursors
            .load(name)
            .ok()
            .flatten()
            .map_or("-".into(), |o| o.to_string());
        let state =
            ferry_sink::postgres::read_state(dir, name).map_or("-".to_owned(), |s| s.to_string());
        if sink.kind != SinkKind::Postgres {
            // A Kafka sink's position is its cursor in the spool (or, exactly once, the
            // checkpoint topic, which this command does not read).
            let _ = writeln!(
                out,
                "{name:<16} {:<10} {:<20} {:>14} {:>14} {cursor:>14}  {state}",
                sink.kind.to_string(),
                "-",
                "-",
                "-"
            );
            continue;
        }
        let url = sink.url_exposed();
        let line = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let row = client
                    .query_opt(
                        "SELECT position, extract(epoch FROM now() - updated_at)::float8
                         FROM ferry.checkpoints WHERE sink = $1",
                        &[&name],
                    )
                    .await;
                match row {
                    Ok(Some(r)) => {
                        let position: String = r.get(0);
                        let age: f64 = r.get(1);
                        let lag = match (wal_now, position.parse::<Position>()) {
                            (Some(n), Ok(Position::Postgres(p))) => {
                                n.0.saturating_sub(p.0).to_string()
                            }
                            _ => "-".into(),
                        };
                        format!(
                            "{name:<16} {:<10} {position:<20} {lag:>14} {age:>12.1} {cursor:>14}",
                            "postgres"
                        )
                    }
                    Ok(None) | Err(_) => format!(
                        "{name:<16} {:<10} {:<20} {:>14} {:>12} {cursor:>14}",
                        "postgres", "(no checkpoint yet)", "-", "-"
                    ),
                }
            }
            Err(e) => format!("{name:<16} {:<10} unreachable: {e}", "postgres"),
        };
        let state =
            ferry_sink::postgres::read_state(dir, name).map_or("-".to_owned(), |s| s.to_string());
        let _ = writeln!(out, "{line}  {state}");
    }
    Ok(out)
}
