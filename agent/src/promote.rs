//! `ferry promote --sink NAME [--fence]`: makes one database sink ready to take over from the
//! source.
//!
//! - A planned switchover (`--fence`) first stops writes on the source: on PostgreSQL the source
//!   database stops accepting connections (`ALLOW_CONNECTIONS false`, new sessions read-only by
//!   default) and every client session still connected to it is ended, so sessions opened and
//!   pooled before the fence cannot write either; on MySQL/MariaDB `read_only` (MySQL:
//!   `super_read_only`) is set and every client session is ended. It proves the fence (a new
//!   session cannot connect / the server is read-only, and no other client session is left),
//!   reads the source's final position, and waits until the sink's checkpoint covers it.
//! - An unplanned failover (no `--fence`) works from what the sink has applied and reports what
//!   may be missing (the RPO): the source's position past the sink's, when it can be read.
//!
//! Then the sink's sequences and `AUTO_INCREMENT` counters are synced a last time, the sink is
//! compared with the source table by table (`verify`'s chunked checksums, the same engine; a
//! fenced source does not change during it), and a report says the position, how long writes
//! were fenced (the switchover's RTO) and what was verified. The running ferry keeps applying
//! until the sink has everything; stop it after.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ferry_proto::Position;
use ferry_source::error::{Error, Result};
use mysql_async::prelude::Queryable;

use crate::config::{Config, SinkConfig, SinkKind, SourceKind};

/// `ferry promote`: the report, and whether the sink is ready (caught up and equal).
/// With `reverse` (the original configuration's path, and where to write), a ready sink also
/// gets the configuration that replicates it back into the old primary ([`crate::reverse`]).
pub async fn promote(
    config: &Config,
    sink: &str,
    fence: bool,
    wait: Duration,
    reverse: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<(String, bool)> {
    let target = config
        .sinks
        .iter()
        .map(|s| s.get_ref())
        .find(|s| s.name.as_str() == sink)
        .filter(|s| matches!(s.kind, SinkKind::Postgres | SinkKind::Mysql))
        .ok_or_else(|| Error::Config(format!("no database sink named {sink:?}")))?;
    let mut out = String::new();
    let started = Instant::now();
    // On PostgreSQL the fence refuses new sessions: the fencing session serves the checks.
    let (final_position, fenced_session) = if fence {
        // A sink that applied nothing yet (ferry not running, or its initial snapshot not
        // applied) would make the fence stop ferry's own first connections too.
        if checkpoint(target).await?.is_none() {
            return Err(Error::Config(format!(
                "sink {sink:?} has applied nothing yet: start `ferry run` and let it apply the \
                 initial snapshot before a switchover; the source was not fenced"
            )));
        }
        let (position, session) = fence_source(config, &mut out).await?;
        let _ = writeln!(out, "source fenced at {position}");
        (Some(position), session)
    } else {
        (None, None)
    };
    let applied = match &final_position {
        Some(p) => wait_for_sink(target, p, wait).await?,
        None => checkpoint(target).await?.ok_or_else(|| {
            Error::Config(format!(
                "sink {sink:?} has no checkpoint: it applied nothing"
            ))
        })?,
    };
    let caught_up = started.elapsed();
    let _ = writeln!(out, "sink {sink} has applied up to {applied}");
    if final_position.is_none() {
        match source_position(config).await {
            Ok(now) if now.covers(&applied) && now != applied => {
                let _ = writeln!(
                    out,
                    "the source is at {now}: the transactions after {applied} may be missing \
                     on the sink (the RPO of this failover)"
                );
            }
            Ok(_) => {
                let _ = writeln!(out, "the sink has everything the source has");
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "the source cannot be read ({e}): what it committed after {applied} is not \
                     on the sink"
                );
            }
        }
    }
    let synced = last_sequence_sync(config, target, fenced_session.as_ref(), &mut out).await;
    let (equal, rows) = match verify(config, target, fenced_session.as_ref(), &mut out).await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "not verified: {e}");
            (final_position.is_none(), 0)
        }
    };
    let ready = equal && synced;
    if let Some((config_path, reverse_path)) = reverse {
        if ready {
            crate::reverse::write(
                config,
                config_path,
                target,
                fenced_session.as_ref(),
                reverse_path,
                &mut out,
            )
            .await?;
        } else {
            let _ = writeln!(out, "reverse: not written, the sink is not ready");
        }
    }
    let _ = writeln!(
        out,
        "promote {}: sink {sink} at {applied}, {rows} row(s) verified{}{}",
        if equal && synced {
            "READY"
        } else {
            "NOT READY"
        },
        if fence {
            format!(
                ", writes fenced for {:.1} s until the sink caught up ({:.1} s with the checks)",
                caught_up.as_secs_f64(),
                started.elapsed().as_secs_f64()
            )
        } else {
            String::new()
        },
        if fence && reverse.is_none() {
            "; the source stays fenced: retire it, or undo the fence as printed above"
        } else {
            ""
        }
    );
    Ok((out, ready))
}

/// Stops writes on the source and proves it; returns the source's final position (and, on
/// PostgreSQL, the fencing session: the only one the source still accepts).
async fn fence_source(
    config: &Config,
    out: &mut String,
) -> Result<(Position, Option<tokio_postgres::Client>)> {
    let url = config.source.url.expose();
    match config.source.kind {
        SourceKind::Postgres => {
            // The session that serves the checks after the fence: opened before it, and spared.
            let (client, _task) =
                ferry_db::postgres::tls::Tls::connect_url(url, "ferry promote").await?;
            let row = client
                .query_one("SELECT current_database(), pg_backend_pid()", &[])
                .await?;
            let (db, pid): (String, i32) = (row.get(0), row.get(1));
            // A database's connections are refused from a session in another database.
            let (mut cfg, tls) = ferry_db::postgres::tls::parse_url(url)?;
            // The running ferry's sessions (its account, its application name) are spared:
            // it must stream the source's last transactions to the sink.
            let ferry_name = cfg.get_application_name().unwrap_or("ferry").to_owned();
            cfg.dbname(if db == "template1" {
                "postgres"
            } else {
                "template1"
            });
            let (admin, _admin_task) = tls.connect_client(&cfg, "ferry promote fence").await?;
            let quoted = ferry_db::postgres::quote_ident(&db);
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {quoted} SET default_transaction_read_only = on;
                     ALTER DATABASE {quoted} ALLOW_CONNECTIONS false;"
                ))
                .await?;
            let others = "FROM pg_stat_activity WHERE datname = $1 AND pid <> $2
                          AND backend_type = 'client backend'
                          AND NOT (usename = current_user AND application_name = $3)";
            let ended: i64 = admin
                .query_one(
                    &format!("SELECT count(pg_terminate_backend(pid)) {others}"),
                    &[&db, &pid, &ferry_name],
                )
                .await?
                .get(0);
            let _ = writeln!(
                out,
                "fence: database {db} accepts no connection and {ended} client session(s) were \
                 ended (undo: ALTER DATABASE {quoted} ALLOW_CONNECTIONS true; ALTER DATABASE \
                 {quoted} RESET default_transaction_read_only)"
            );
            // The proof: no other client session is left, and a new one is refused.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left: i64 = admin
                    .query_one(
                        &format!("SELECT count(*) {others}"),
                        &[&db, &pid, &ferry_name],
                    )
                    .await?
                    .get(0);
                if left == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Fatal(format!(
                        "fence: {left} client session(s) are still connected to {db} after being \
                         ended"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if ferry_db::postgres::tls::Tls::connect_url(url, "ferry promote proof")
                .await
                .is_ok()
            {
                return Err(Error::Fatal(format!(
                    "fence: a new session could still connect to {db}"
                )));
            }
            let _ = writeln!(
                out,
                "fence proven: a new session is refused, none other is left"
            );
            Ok((wal_position(&client).await?, Some(client)))
        }
        SourceKind::Mysql => {
            let mut conn = crate::verify::mysql::connect(url).await?;
            let version: String = conn
                .query_first("SELECT VERSION()")
                .await?
                .unwrap_or_default();
            let setting = if version.contains("MariaDB") {
                "read_only"
            } else {
                "super_read_only"
            };
            conn.query_drop(format!("SET GLOBAL {setting} = ON"))
                .await?;
            let ids: Vec<u64> = conn
                .query(
                    "SELECT ID FROM information_schema.PROCESSLIST
                     WHERE ID <> CONNECTION_ID() AND USER <> 'system user'
                       AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon')",
                )
                .await?;
            for id in &ids {
                // A session that ended meanwhile is not an error.
                let _ = conn.query_drop(format!("KILL {id}")).await;
            }
            let _ = writeln!(
                out,
                "fence: {setting} = ON and {} client session(s) were ended (undo: SET GLOBAL \
                 {setting} = OFF); accounts that bypass it (MariaDB: READ ONLY ADMIN or SUPER) \
                 must not be used by the application",
                ids.len()
            );
            let on: Option<i64> = conn
                .query_first(format!("SELECT @@global.{setting}"))
                .await?;
            if on != Some(1) {
                return Err(Error::Fatal(format!("fence: {setting} did not turn on")));
            }
            Ok((mysql_position(&mut conn, config).await?, None))
        }
    }
}

/// A PostgreSQL source's WAL position now.
async fn wal_position(client: &tokio_postgres::Client) -> Result<Position> {
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    Position::from_str(&format!("pg:{lsn}"))
        .map_err(|e| Error::Protocol(format!("pg_current_wal_lsn: {e}")))
}

/// The PostgreSQL source session the checks run on: the fencing session when there is one (the
/// fenced database refuses new ones), else a new one.
enum PgSession<'a> {
    Fenced(&'a tokio_postgres::Client),
    Opened(tokio_postgres::Client),
}

impl<'a> PgSession<'a> {
    async fn open(config: &Config, fenced: Option<&'a tokio_postgres::Client>) -> Result<Self> {
        Ok(match fenced {
            Some(client) => PgSession::Fenced(client),
            None => {
                let (client, _task) = ferry_db::postgres::tls::Tls::connect_url(
                    config.source.url.expose(),
                    "ferry promote checks",
                )
                .await?;
                PgSession::Opened(client)
            }
        })
    }
}

impl std::ops::Deref for PgSession<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        match self {
            PgSession::Fenced(c) => c,
            PgSession::Opened(c) => c,
        }
    }
}

/// A MySQL/MariaDB source's binlog position now, in the epoch of the spool's positions (the
/// sinks' checkpoints are in it).
async fn mysql_position(conn: &mut mysql_async::Conn, config: &Config) -> Result<Position> {
    let mut at = ferry_source::mysql::server::master_position(conn).await?;
    at.epoch = ferry_source::mysql::server::spool_epoch(config.spool.dir())?;
    Ok(Position::Binlog(at))
}

/// The source's position now.
async fn source_position(config: &Config) -> Result<Position> {
    let url = config.source.url.expose();
    match config.source.kind {
        SourceKind::Postgres => {
            let (client, _task) =
                ferry_db::postgres::tls::Tls::connect_url(url, "ferry promote").await?;
            wal_position(&client).await
        }
        SourceKind::Mysql => {
            let mut conn = crate::verify::mysql::connect(url).await?;
            mysql_position(&mut conn, config).await
        }
    }
}

/// The sink's checkpoint position, if it has one.
async fn checkpoint(sink: &SinkConfig) -> Result<Option<Position>> {
    let url = sink.url_exposed();
    let name = sink.name.as_str();
    let found = match sink.kind {
        SinkKind::Postgres => crate::status::postgres_checkpoint(&url, name).await?,
        _ => crate::status::mysql_checkpoint(&url, name).await?,
    };
    found
        .map(|(p, _)| {
            Position::from_str(&p)
                .map_err(|e| Error::Protocol(format!("sink {name} checkpoint {p:?}: {e}")))
        })
        .transpose()
}

/// Waits until the sink's checkpoint covers `position` (a running ferry applies it).
async fn wait_for_sink(sink: &SinkConfig, position: &Position, wait: Duration) -> Result<Position> {
    let deadline = Instant::now() + wait;
    loop {
        let at = checkpoint(sink).await?;
        if let Some(at) = &at
            && at.covers(position)
        {
            return Ok(at.clone());
        }
        if Instant::now() > deadline {
            return Err(Error::Fatal(format!(
                "sink {} has not reached the source's final position {position} after {} s (it \
                 is at {}): is ferry running with this configuration?",
                sink.name.as_str(),
                wait.as_secs(),
                at.map_or("nothing".into(), |p| p.to_string())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The counters a last time; false when they could not be synced.
async fn last_sequence_sync(
    config: &Config,
    sink: &SinkConfig,
    fenced: Option<&tokio_postgres::Client>,
    out: &mut String,
) -> bool {
    let result = async {
        let counters = match config.source.kind {
            SourceKind::Postgres => {
                let session = PgSession::open(config, fenced).await?;
                let settings = crate::supervisor::pg_settings(config)?;
                crate::sequences::postgres_counters(&session, &settings).await?
            }
            SourceKind::Mysql => {
                let source = crate::sequences::CounterSource::of(config)?;
                crate::sequences::source_counters(&source).await?
            }
        };
        let target = crate::sequences::SyncSink {
            name: sink.name.as_str().to_owned(),
            kind: sink.kind,
            url: sink.url_exposed(),
            status: Default::default(),
        };
        let moved = crate::sequences::sync_sink(&target, &counters).await?;
        Ok::<_, Error>((counters.len(), moved))
    }
    .await;
    match result {
        Ok((n, moved)) => {
            let _ = writeln!(
                out,
                "sequences: {n} counter(s) in step, {moved} moved ahead"
            );
            true
        }
        Err(e) => {
            let _ = writeln!(out, "sequences: not synced: {e}");
            false
        }
    }
}

/// Row counts of every captured table on the source and on a sink of the other engine (the same
/// `schema.table`: a MySQL database is a PostgreSQL schema and the reverse), as verify's reports
/// with one chunk each.
async fn count_rows(
    config: &Config,
    sink: &SinkConfig,
    fenced: Option<&tokio_postgres::Client>,
) -> Result<Vec<crate::verify::TableReport>> {
    let pg_count = |table: &str| {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        format!(
            "SELECT count(*) FROM {}.{}",
            ferry_db::postgres::quote_ident(schema),
            ferry_db::postgres::quote_ident(name)
        )
    };
    let my_count = |table: &str| {
        let (schema, name) = table.split_once('.').unwrap_or(("", table));
        format!(
            "SELECT COUNT(*) FROM {}.{}",
            ferry_db::mysql::quote(schema),
            ferry_db::mysql::quote(name)
        )
    };
    let mut counts: Vec<(String, i64, i64)> = Vec::new();
    match config.source.kind {
        SourceKind::Postgres => {
            let settings = crate::supervisor::pg_settings(config)?;
            let session = PgSession::open(config, fenced).await?;
            let source = &*session;
            let mut target = crate::verify::mysql::connect(&sink.url_exposed()).await?;
            for t in crate::verify::captured_tables(source, &settings).await? {
                let name = t.name();
                let a: i64 = source.query_one(&pg_count(&name), &[]).await?.get(0);
                let b: Option<i64> = target.query_first(my_count(&name)).await.unwrap_or(None);
                counts.push((name, a, b.unwrap_or(-1)));
            }
        }
        SourceKind::Mysql => {
            let settings = crate::supervisor::mysql_settings(config)?;
            let mut source = crate::verify::mysql::connect(config.source.url.expose()).await?;
            let (target, _task) =
                ferry_db::postgres::tls::Tls::connect_url(&sink.url_exposed(), "ferry promote")
                    .await?;
            for t in crate::verify::mysql::captured_tables(&mut source, &settings).await? {
                let name = t.relation.qualified_name();
                let a: Option<i64> = source.query_first(my_count(&name)).await?;
                let b: i64 = target
                    .query_one(&pg_count(&name), &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(-1);
                counts.push((name, a.unwrap_or(0), b));
            }
        }
    }
    Ok(counts
        .into_iter()
        .map(|(table, a, b)| crate::verify::TableReport {
            sink: sink.name.as_str().to_owned(),
            table,
            source_rows: a,
            sink_rows: b,
            differing_chunks: usize::from(a != b),
            chunks: 1,
        })
        .collect())
}

/// Compares the sink with the source (the same engine); (equal, source rows compared).
async fn verify(
    config: &Config,
    sink: &SinkConfig,
    fenced: Option<&tokio_postgres::Client>,
    out: &mut String,
) -> Result<(bool, i64)> {
    let url = sink.url_exposed();
    let reports = match (config.source.kind, sink.kind) {
        (SourceKind::Postgres, SinkKind::Postgres) => {
            let settings = crate::supervisor::pg_settings(config)?;
            let session = PgSession::open(config, fenced).await?;
            let source = &*session;
            source.batch_execute(crate::verify::SESSION).await?;
            let (target, _t2) =
                ferry_db::postgres::tls::Tls::connect_url(&url, "ferry promote verify").await?;
            target.batch_execute(crate::verify::SESSION).await?;
            let mut reports = Vec::new();
            for t in crate::verify::captured_tables(source, &settings).await? {
                reports.push(
                    crate::verify::compare(source, &target, sink.name.as_str(), &t, 0).await?,
                );
            }
            reports
        }
        (SourceKind::Mysql, SinkKind::Mysql) => {
            let settings = crate::supervisor::mysql_settings(config)?;
            let mut source = crate::verify::mysql::connect(config.source.url.expose()).await?;
            let mut target = crate::verify::mysql::connect(&url).await?;
            let mut reports = Vec::new();
            for t in crate::verify::mysql::captured_tables(&mut source, &settings).await? {
                reports.push(
                    crate::verify::mysql::compare(
                        &mut source,
                        &mut target,
                        sink.name.as_str(),
                        &t,
                        0,
                    )
                    .await?,
                );
            }
            reports
        }
        // Across engines the checksums cannot match (values are written differently): each
        // table's rows are counted on both sides instead.
        _ => count_rows(config, sink, fenced).await?,
    };
    crate::verify::write_header(out, sink.name.as_str());
    for r in &reports {
        crate::verify::write_line(out, r);
    }
    Ok((
        reports.iter().all(|r| r.differing_chunks == 0),
        reports.iter().map(|r| r.source_rows).sum(),
    ))
}
