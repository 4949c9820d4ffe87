//! `ferry run`: opens the spool, prepares the source (which cuts a transaction a crash left
//! incomplete, before any sink reads), starts one worker per sink, ties the source's
//! acknowledgement to what the sinks have applied, and stops everything on the shutdown signal:
//! the source first (its last complete transactions made durable), then the sinks (each commits
//! the whole transactions it holds).

use std::time::Duration;

use ferry_sink::kafka::format::Format;
use ferry_sink::kafka::{KafkaSink, KafkaSinkConfig};
use ferry_sink::postgres::{PgSink, PgSinkConfig, SinkProgress, SinkState};
use ferry_spool::{Cursors, Offset, SpoolWriter, WriterOptions, segment};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AckPolicy, Config, SinkKind, SnapshotMode, SourceKind};
use ferry_source::error::{Error, Result};
use ferry_source::filter::TableFilter;
use ferry_source::postgres::replication::ConnParams;
use ferry_source::postgres::{PgSource, SourceSettings};

/// Builds the MySQL/MariaDB source settings from the configuration.
pub fn mysql_settings(config: &Config) -> Result<ferry_source::mysql::MysqlSettings> {
    let src = &config.source;
    let filter = TableFilter::new(
        src.tables.iter().map(|t| t.as_str()),
        src.exclude.iter().map(|t| t.as_str()),
    )
    .map_err(|e| Error::Config(format!("source.tables: {e}")))?;
    Ok(ferry_source::mysql::MysqlSettings {
        url: src.url.expose().to_owned(),
        server_id: src.server_id.unwrap_or_default(),
        filter,
        snapshot: src.snapshot == SnapshotMode::Initial,
        zero_dates: src.zero_dates.unwrap_or_default(),
        txn_memory: src.txn_memory_bytes(),
        min_binlog_margin_seconds: src.min_binlog_margin_seconds,
        applied: None,
        truncate_below: None,
    })
}

/// The database a source URL names (`{database}` in Kafka topics).
fn source_database(config: &Config) -> Result<String> {
    match config.source.kind {
        SourceKind::Postgres => Ok(ConnParams::parse(config.source.url.expose())?.dbname),
        SourceKind::Mysql => Ok(ferry_db::mysql::opts_from_url(config.source.url.expose())
            .map_err(|e| Error::Config(format!("source url: {e}")))?
            .db_name()
            .unwrap_or("")
            .to_owned()),
    }
}

/// The running source, by kind.
enum Source {
    Postgres(Box<PgSource>),
    Mysql(Box<ferry_source::mysql::MysqlSource>),
}

impl Source {
    async fn run(&mut self, shutdown: CancellationToken) -> Result<()> {
        match self {
            Source::Postgres(s) => s.run(shutdown).await,
            Source::Mysql(s) => s.run(shutdown).await,
        }
    }

    fn spool(&self) -> &SpoolWriter {
        match self {
            Source::Postgres(s) => s.spool(),
            Source::Mysql(s) => s.spool(),
        }
    }

    fn stats(&self) -> watch::Receiver<ferry_source::capture::stats::SourceStats> {
        match self {
            Source::Postgres(s) => s.stats(),
            Source::Mysql(s) => s.stats(),
        }
    }
}

/// Builds the Postgres source settings from the configuration.
pub fn pg_settings(config: &Config) -> Result<SourceSettings> {
    let src = &config.source;
    let filter = TableFilter::new(
        src.tables.iter().map(|t| t.as_str()),
        src.exclude.iter().map(|t| t.as_str()),
    )
    .map_err(|e| Error::Config(format!("source.tables: {e}")))?;
    Ok(SourceSettings {
        params: ConnParams::parse(src.url.expose())?,
        slot: src.slot().to_owned(),
        failover_slot: src.failover_slot,
        publication: src.publication().to_owned(),
        filter,
        snapshot: src.snapshot == SnapshotMode::Initial,
        snapshot_workers: src.snapshot_workers(),
        txn_memory: src.txn_memory_bytes(),
        keyless: src.keyless.unwrap_or_default(),
        min_safe_wal_mb: src.min_safe_wal_mb,
        until: None,
        applied: None,
        truncate_below: None,
    })
}

/// A sink's settings, by kind.
#[derive(Debug)]
pub enum SinkSettings {
    Postgres(PgSinkConfig),
    Mysql(PgSinkConfig),
    Kafka(Box<KafkaSinkConfig>),
}

impl SinkSettings {
    pub fn name(&self) -> &str {
        match self {
            SinkSettings::Postgres(c) | SinkSettings::Mysql(c) => &c.name,
            SinkSettings::Kafka(c) => &c.name,
        }
    }
}

/// Every sink's settings from the configuration.
pub fn sink_settings(config: &Config) -> Result<Vec<SinkSettings>> {
    let mut out: Vec<SinkSettings> = db_sink_configs(config)?
        .into_iter()
        .map(|(kind, c)| match kind {
            SinkKind::Mysql => SinkSettings::Mysql(c),
            _ => SinkSettings::Postgres(c),
        })
        .collect();
    let dbname = source_database(config)?;
    for spanned in &config.sinks {
        let sink = spanned.get_ref();
        if sink.kind != SinkKind::Kafka {
            continue;
        }
        let text = |v: &Option<crate::config::Expanded>| v.as_ref().map(|x| x.as_str().to_owned());
        out.push(SinkSettings::Kafka(Box::new(KafkaSinkConfig {
            name: sink.name.as_str().to_owned(),
            brokers: text(&sink.brokers).unwrap_or_default(),
            topic: text(&sink.topic).unwrap_or_default(),
            topics: sink
                .topics
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect(),
            format: match sink.format {
                Some(crate::config::KafkaFormat::Debezium) => Format::Debezium,
                Some(crate::config::KafkaFormat::Binary) => Format::Binary,
                _ => Format::Json,
            },
            on_error: sink.on_error,
            tombstones: sink.tombstones.unwrap_or(false),
            exactly_once: sink.exactly_once.unwrap_or(false),
            checkpoint_topic: text(&sink.checkpoint_topic)
                .unwrap_or_else(|| "ferry.checkpoints".into()),
            dead_letter_topic: text(&sink.dead_letter_topic),
            transaction_topic: text(&sink.transaction_topic),
            properties: sink
                .kafka
                .iter()
                .flat_map(|p| p.iter())
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect(),
            spool_dir: config.spool.dir().to_owned(),
            database: dbname.clone(),
            server: "ferry".into(),
            max_batch_messages: 10_000,
            max_batch_delay: Duration::from_millis(u64::from(sink.max_batch_ms.unwrap_or(100))),
        })));
    }
    Ok(out)
}

/// The PostgreSQL sinks' settings from the configuration.
pub fn pg_sink_configs(config: &Config) -> Result<Vec<PgSinkConfig>> {
    Ok(db_sink_configs(config)?
        .into_iter()
        .filter(|(k, _)| *k == SinkKind::Postgres)
        .map(|(_, c)| c)
        .collect())
}

/// The database sinks' settings from the configuration, with their kind.
pub fn db_sink_configs(config: &Config) -> Result<Vec<(SinkKind, PgSinkConfig)>> {
    let mut out = Vec::new();
    for spanned in &config.sinks {
        let sink = spanned.get_ref();
        if sink.kind == SinkKind::Kafka {
            continue;
        }
        let url = sink
            .url
            .as_ref()
            .ok_or_else(|| Error::Config(format!("sink {:?} needs url", sink.name.as_str())))?;
        if sink.kind == SinkKind::Postgres {
            // A URL or TLS setting that cannot work stops `ferry run` before anything starts.
            ferry_db::postgres::parse_url(url.expose())?;
        }
        out.push((
            sink.kind,
            PgSinkConfig {
                name: sink.name.as_str().to_owned(),
                url: url.expose().to_owned(),
                on_error: sink.on_error,
                schema_changes: sink.schema_changes.unwrap_or_default(),
                create_tables: sink.create_tables.unwrap_or(false),
                zero_dates: sink.zero_dates.unwrap_or_default(),
                spool_dir: config.spool.dir().to_owned(),
                max_batch_rows: sink.max_batch_rows.unwrap_or(10_000) as usize,
                max_batch_delay: Duration::from_millis(u64::from(sink.max_batch_ms.unwrap_or(200))),
            },
        ));
    }
    Ok(out)
}

/// Runs until `shutdown` turns true or the source fails permanently. With `until`, stops once
/// everything the source committed before it is spooled and applied by every sink. A sink that
/// halts leaves the others running; `run` then ends with its error.
pub async fn run(
    config: Config,
    until: Option<ferry_proto::Lsn>,
    shutdown: CancellationToken,
) -> Result<()> {
    let sink_configs = sink_settings(&config)?;
    preflight(&config).await?;
    let mysql = config.source.kind == SourceKind::Mysql;
    if mysql && until.is_some() {
        return Err(Error::Config(
            "--until takes a PostgreSQL LSN; it does not apply to a mysql source".into(),
        ));
    }
    let dir = config.spool.dir().to_owned();
    let spool = open_spool(&config, &sink_configs)?;
    let durable = spool.subscribe();
    let (applied_tx, applied_rx) = watch::channel(Offset(0));
    // The archive is one more reader of the spool: a segment goes once every sink has applied
    // it and the archive holds it, but the source's acknowledgement never waits for the archive.
    let archive = match &config.archive {
        Some(a) => Some(
            a.settings()
                .map_err(|e| Error::Config(format!("[archive]: {e}")))?,
        ),
        None => None,
    };
    let base_backups = match (&config.archive, &archive) {
        (Some(a), Some(settings)) => Some((
            crate::base_backup::BaseBackups::default(),
            ferry_archive::Archive::open(settings)
                .map_err(|e| Error::Config(format!("[archive]: {e}")))?,
            crate::base_backup::Schedule {
                every: a.base_backup_every().map_err(Error::Config)?,
                keep: a.keep().map_err(Error::Config)?,
                chunk_bytes: settings.object_bytes,
            },
        )),
        _ => None,
    };
    let backup_source = if mysql {
        crate::base_backup::BackupSource::Mysql(Box::new(mysql_settings(&config)?), dir.clone())
    } else {
        crate::base_backup::BackupSource::Postgres(Box::new(pg_settings(&config)?))
    };
    let archiver = archive.map(|settings| ferry_archive::Archiver::new(settings, dir.clone()));
    let (truncate_tx, truncate_rx) = watch::channel(Offset(0));
    let sinks_applied = (!sink_configs.is_empty()).then(|| applied_rx.clone());
    // Segments every sink (and the archive) has go, whatever the acknowledgement waits for;
    // with `ack = "applied"` the source acknowledges only what the sinks applied.
    let truncate_below = match &archiver {
        Some(_) => Some(truncate_rx),
        None => sinks_applied.clone(),
    };
    let applied = sinks_applied
        .clone()
        .filter(|_| config.spool.ack == AckPolicy::Applied);
    tracing::info!(
        spool = %dir.display(),
        source = %config.source.url,
        sinks = sink_configs.len(),
        ack = ?config.spool.ack,
        "ferry starting"
    );
    let mut source = if mysql {
        let settings = ferry_source::mysql::MysqlSettings {
            applied,
            truncate_below,
            ..mysql_settings(&config)?
        };
        Source::Mysql(Box::new(ferry_source::mysql::MysqlSource::new(
            settings, spool,
        )?))
    } else {
        let settings = SourceSettings {
            until: until.map(|l| l.0),
            applied,
            truncate_below,
            ..pg_settings(&config)?
        };
        Source::Postgres(Box::new(PgSource::new(settings, spool)?))
    };

    let sequence_sinks = crate::sequences::plan(&config);
    let counter_source = crate::sequences::CounterSource::of(&config)?;
    // Sinks stop after the source, so they apply what it spooled last.
    let sinks_stop = CancellationToken::new();
    let (mut progress, mut tasks) = spawn_sinks(sink_configs, &durable, &sinks_stop);
    let watchers: Vec<watch::Receiver<SinkProgress>> =
        progress.iter().map(|(_, rx)| rx.clone()).collect();
    let http_stop = CancellationToken::new();
    let http_task = match &config.http {
        Some(http) => {
            let sinks = sink_views(&config, &progress, &sequence_sinks);
            let shared = crate::http::Shared {
                source_kind: if mysql { "mysql" } else { "postgres" },
                source: source.stats(),
                sinks,
                durable: durable.clone(),
                spool_dir: dir.clone(),
                tick: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0)),
                control: http.token.clone().map(|t| {
                    crate::control::Control::new(
                        t,
                        shutdown.clone(),
                        base_backups.as_ref().map(|b| b.0.clone()),
                    )
                }),
                base_backups: base_backups.as_ref().map(|b| b.0.clone()),
                archive: archiver.as_ref().map(|(_, rx)| rx.clone()),
                archive_max_lag: config
                    .archive
                    .as_ref()
                    .and_then(|a| a.max_lag_seconds)
                    .map(f64::from),
            };
            let listener = crate::http::bind(http.listen).await?;
            Some(tokio::spawn(crate::http::serve(
                listener,
                shared,
                http_stop.clone(),
            )))
        }
        None => None,
    };
    let min_stop = CancellationToken::new();
    let min_task = tokio::spawn(track_min_applied(watchers, applied_tx, min_stop.clone()));
    let archive_stop = CancellationToken::new();
    let archive_task = archiver.map(|(archiver, progress)| {
        tokio::spawn(track_truncation(
            sinks_applied.clone(),
            progress,
            truncate_tx,
            min_stop.clone(),
        ));
        tokio::spawn(archiver.run(durable.clone(), archive_stop.clone()))
    });
    // The replicas' counters follow the source's while it runs.
    let sequences_stop = shutdown.child_token();
    let sequences_task = tokio::spawn(crate::sequences::run(
        counter_source,
        sequence_sinks,
        sequences_stop.clone(),
    ));
    // Base backups read the source database, not the spool: they stop with the source.
    let backups_stop = shutdown.child_token();
    let backups_task = base_backups.map(|(handle, archive, schedule)| {
        tokio::spawn(crate::base_backup::run(
            handle,
            archive,
            backup_source,
            schedule,
            backups_stop.clone(),
        ))
    });

    let source_result = source.run(shutdown).await;
    backups_stop.cancel();
    sequences_stop.cancel();
    let _ = sequences_task.await;
    if let Some(task) = backups_task {
        let _ = task.await;
    }
    if let Err(e) = &source_result {
        // Logged when it happens: the sinks' shutdown below may take a while.
        tracing::error!(error = %e, "the source stopped");
    }
    if until.is_some() && source_result.is_ok() {
        // Wait until every sink has applied everything spooled (or one halted).
        let end = source.spool().durable_end();
        for (name, rx) in &mut progress {
            let _ = rx
                .wait_for(|p| p.offset >= end || matches!(p.state, SinkState::Halted(_)))
                .await;
            tracing::debug!(sink = %name, "sink caught up with --until");
        }
    }
    sinks_stop.cancel();
    let halted = join_sinks(&mut tasks, source_result.is_err()).await;
    // In dependency order: the sinks are done (above), then the archive (it seals what it
    // holds), then what watched them, then the HTTP endpoint that reported on everything.
    archive_stop.cancel();
    let archive_result = match archive_task {
        Some(t) => t
            .await
            .map_err(|e| Error::Fatal(format!("archive task: {e}")))?
            .map_err(|e| Error::Fatal(format!("the archive stopped: {e}"))),
        None => Ok(()),
    };
    min_stop.cancel();
    let _ = min_task.await;
    http_stop.cancel();
    if let Some(t) = http_task
        && let Ok(Err(e)) = t.await
    {
        tracing::warn!(error = %e, "http endpoint");
    }
    source_result?;
    match halted {
        Some(e) => Err(e),
        None => archive_result,
    }
}

/// Each sink as the HTTP endpoint shows it: kind, lag limit, progress.
fn sink_views(
    config: &Config,
    progress: &[(String, watch::Receiver<SinkProgress>)],
    sequences: &[(crate::sequences::SyncSink, Duration)],
) -> Vec<crate::http::SinkView> {
    progress
        .iter()
        .map(|(name, rx)| {
            let cfg = config
                .sinks
                .iter()
                .map(|s| s.get_ref())
                .find(|s| s.name.as_str() == name);
            crate::http::SinkView {
                name: name.clone(),
                kind: match cfg.map(|c| c.kind) {
                    Some(SinkKind::Postgres) => "postgres",
                    Some(SinkKind::Mysql) => "mysql",
                    _ => "kafka",
                },
                max_lag_seconds: f64::from(cfg.and_then(|c| c.max_lag_seconds).unwrap_or(300)),
                progress: rx.clone(),
                sequences: sequences
                    .iter()
                    .find(|(s, _)| &s.name == name)
                    .map(|(s, _)| s.status.clone()),
            }
        })
        .collect()
}

/// Opens the spool, recovering from an interrupted write, and starts each sink that has never
/// run at the spool's beginning, which must still be there.
fn open_spool(config: &Config, sinks: &[SinkSettings]) -> Result<SpoolWriter> {
    let opts = WriterOptions {
        segment_bytes: u64::from(config.spool.segment_mb.unwrap_or(64)) << 20,
    };
    let dir = config.spool.dir();
    let (spool, recovery) = SpoolWriter::open(dir, opts)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "spool recovered from an interrupted write"
        );
    }
    let cursors = Cursors::new(dir);
    let oldest = segment::list(dir)?.first().copied().unwrap_or(0);
    for sink in sinks {
        if cursors.load(sink.name())?.is_none() {
            if oldest > 0 {
                return Err(Error::Gap(format!(
                    "sink {:?} is new, but the spool no longer holds its beginning (segments \
                     were deleted once the other sinks applied them): start the new sink with \
                     its own spool directory and a new slot, so it gets a snapshot",
                    sink.name()
                )));
            }
            cursors.save(sink.name(), Offset(0))?;
        }
    }
    Ok(spool)
}

type SinkTasks = tokio::task::JoinSet<(String, ferry_sink::error::Result<()>)>;

/// Starts one worker per sink, each tailing the spool until `stop`; returns their progress
/// channels and tasks.
fn spawn_sinks(
    sink_configs: Vec<SinkSettings>,
    durable: &watch::Receiver<Offset>,
    stop: &CancellationToken,
) -> (Vec<(String, watch::Receiver<SinkProgress>)>, SinkTasks) {
    let mut progress: Vec<(String, watch::Receiver<SinkProgress>)> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for cfg in sink_configs {
        let name = cfg.name().to_owned();
        let (durable, stop) = (durable.clone(), stop.clone());
        match cfg {
            SinkSettings::Postgres(cfg) => {
                let (sink, rx) = PgSink::new(cfg);
                progress.push((name.clone(), rx));
                tasks.spawn(async move { (name, sink.run(durable, stop).await) });
            }
            SinkSettings::Mysql(cfg) => {
                let (sink, rx) = ferry_sink::mysql::MySink::new(cfg);
                progress.push((name.clone(), rx));
                tasks.spawn(async move { (name, sink.run(durable, stop).await) });
            }
            SinkSettings::Kafka(cfg) => {
                let (sink, rx) = KafkaSink::new(*cfg);
                progress.push((name.clone(), rx));
                tasks.spawn(async move { (name, sink.run(durable, stop).await) });
            }
        }
    }
    (progress, tasks)
}

/// The same checks as `ferry check`, logged: refuses what retrying cannot fix.
async fn preflight(config: &Config) -> Result<()> {
    let report = crate::check::check(config).await?;
    for f in &report.findings {
        match f.level {
            crate::check::Level::Warning => tracing::warn!("check: {}", f.text),
            crate::check::Level::Error if f.transient => tracing::warn!("check: {}", f.text),
            _ => {}
        }
    }
    let fatal: Vec<String> = report.fatal().iter().map(|f| f.text.clone()).collect();
    if !fatal.is_empty() {
        return Err(Error::Config(format!(
            "ferry cannot run (see `ferry check`): {}",
            fatal.join("; ")
        )));
    }
    Ok(())
}

/// Waits for the sinks to finish their batch and checkpoint. Each sink's error, or the give-up
/// when they do not stop in time, is the result.
async fn join_sinks(
    tasks: &mut tokio::task::JoinSet<(String, std::result::Result<(), ferry_sink::SinkError>)>,
    source_failed: bool,
) -> Option<Error> {
    // Each sink finishes its batch and checkpoint; one whose target does not answer (a lock it
    // waits on, a hung server) is given up after a grace period, shorter when the source has
    // failed, so ferry never sits idle with its error unreported. What it had not committed is
    // rolled back by its target and applied again at the next start.
    let grace = if source_failed {
        SINK_STOP_GRACE_AFTER_FAILURE
    } else {
        SINK_STOP_GRACE
    };
    let give_up = tokio::time::sleep(grace);
    tokio::pin!(give_up);
    let mut halted = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok((_, Ok(())))) => {}
                Some(Ok((name, Err(e)))) => halted = Some(Error::Fatal(format!("sink {name}: {e}"))),
                Some(Err(e)) => halted = Some(Error::Fatal(format!("sink task: {e}"))),
            },
            _ = &mut give_up => {
                tracing::error!(
                    sinks = tasks.len(),
                    grace_seconds = grace.as_secs(),
                    "sinks did not stop in time (their target does not answer); abandoning their \
                     uncommitted batches, which the next start applies again"
                );
                tasks.abort_all();
                halted.get_or_insert_with(|| {
                    Error::Fatal(format!(
                        "{} sink(s) did not stop within {} s: their target did not answer",
                        tasks.len(),
                        grace.as_secs()
                    ))
                });
                break;
            }
        }
    }
    halted
}

/// How long sinks may take to stop: after a signal, and after the source failed.
const SINK_STOP_GRACE: Duration = Duration::from_secs(20);
const SINK_STOP_GRACE_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Publishes the lowest spool offset every sink has applied below.
/// Publishes how far the spool may be truncated: the archive's offset, and the sinks' minimum
/// when there are sinks.
async fn track_truncation(
    mut applied: Option<watch::Receiver<Offset>>,
    mut archived: watch::Receiver<ferry_archive::ArchiveProgress>,
    tx: watch::Sender<Offset>,
    stop: CancellationToken,
) {
    loop {
        let a = archived.borrow().offset;
        let min = applied.as_ref().map_or(a, |r| a.min(*r.borrow()));
        tx.send_if_modified(|v| {
            let changed = *v != min;
            *v = min;
            changed
        });
        let sinks = async {
            match applied.as_mut() {
                Some(r) => r.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = archived.changed() => if r.is_err() { return },
            r = sinks => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

async fn track_min_applied(
    mut watchers: Vec<watch::Receiver<SinkProgress>>,
    tx: watch::Sender<Offset>,
    stop: CancellationToken,
) {
    if watchers.is_empty() {
        return;
    }
    loop {
        let min = watchers
            .iter()
            .map(|w| w.borrow().offset)
            .min()
            .unwrap_or(Offset(0));
        tx.send_if_modified(|v| {
            let changed = *v != min;
            *v = min;
            changed
        });
        let changes = watchers.iter_mut().map(|w| Box::pin(w.changed()));
        tokio::select! {
            (changed, _, _) = futures_util::future::select_all(changes) => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
