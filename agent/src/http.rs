//! The HTTP endpoint (`[http] listen`): `/metrics` in Prometheus text format, `/healthz` (the
//! process answers and its runtime is not wedged), `/readyz` (the source is connected and every
//! sink runs within its `max_lag_seconds`), and `/status` (positions and lag as JSON).
//!
//! Every metric is computed at scrape time from what the source and sinks already publish
//! (their progress channels), the spool directory and `/proc/self`; labels are the source kind
//! and the configured sink names only, so their number is bounded.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ferry_sink::postgres::{SinkProgress, SinkState};
use ferry_spool::{Offset, segment};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ferry_source::capture::stats::SourceStats;
use ferry_source::error::{Error, Result};

/// A sink as the endpoint sees it.
#[derive(Debug, Clone)]
pub struct SinkView {
    pub name: String,
    pub kind: &'static str,
    pub max_lag_seconds: f64,
    pub progress: watch::Receiver<SinkProgress>,
    /// Its sequences' sync, for database sinks that keep them.
    pub sequences: Option<crate::sequences::SyncHandle>,
}

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct Shared {
    pub source_kind: &'static str,
    pub source: watch::Receiver<SourceStats>,
    pub sinks: Vec<SinkView>,
    pub durable: watch::Receiver<Offset>,
    pub spool_dir: PathBuf,
    /// Unix seconds of the runtime's last tick: a wedged runtime stops ticking.
    pub tick: Arc<AtomicI64>,
    /// The control routes (`POST /v1/<command>`), when `[http] token` is set.
    pub control: Option<crate::control::Control>,
    /// The archive's progress, when `[archive]` is set.
    pub archive: Option<watch::Receiver<ferry_archive::ArchiveProgress>>,
    /// `[archive] max_lag_seconds`: `/readyz` is unready while the archive is further behind.
    pub archive_max_lag: Option<f64>,
    /// Base backups and drills, when `[archive]` is set.
    pub base_backups: Option<crate::base_backup::BaseBackups>,
}

/// A sink's lag in seconds, as [`ferry_source::lag`] defines it. Should the spool not be readable at
/// its offset, the age of the last source transaction or heartbeat it applied (or of the
/// process) stands in: never less than the real figure.
fn lag_seconds(s: &Shared, p: &SinkProgress, durable: Offset, started: i64) -> f64 {
    behind(s, p.offset, p.last_commit_time, durable, started)
}

/// How long the oldest spooled transaction a reader at `offset` lacks has waited; the age of
/// `last` (or of the process) when the spool cannot be read there, never 0 while behind.
fn behind(s: &Shared, offset: Offset, last: Option<i64>, durable: Offset, started: i64) -> f64 {
    if offset >= durable {
        return 0.0;
    }
    let now = ferry_source::postgres::replication::unix_now_micros();
    ferry_source::lag::seconds_behind(&s.spool_dir, offset, now).unwrap_or_else(|| {
        let since = last.unwrap_or(started);
        ((now - since) as f64 / 1e6).max(0.0)
    })
}

/// A sink's lag in bytes of the source's log, as [`ferry_source::lag`] defines it.
fn lag_bytes(src: &SourceStats, p: &SinkProgress) -> Option<u64> {
    ferry_source::lag::bytes_behind(
        &src.position_now()?,
        p.position.as_ref()?,
        &src.binlog_sizes,
    )
}

/// Process resident memory in bytes and CPU seconds, from `/proc/self`.
fn process() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    // utime and stime, fields 14 and 15, in clock ticks (100 a second on Linux).
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

fn spool_usage(dir: &std::path::Path) -> (u64, usize) {
    let bases = segment::list(dir).unwrap_or_default();
    let bytes = bases
        .iter()
        .filter_map(|b| std::fs::metadata(segment::segment_path(dir, *b)).ok())
        .map(|m| m.len())
        .sum();
    (bytes, bases.len())
}

fn started_micros() -> i64 {
    static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(ferry_source::postgres::replication::unix_now_micros)
}

/// One metric family after another, in the Prometheus text format.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }
}

/// The Prometheus text exposition.
pub fn metrics(s: &Shared) -> String {
    let mut out = Exposition(String::new());
    source_metrics(&mut out, s);
    snapshot_metrics(&mut out);
    spool_metrics(&mut out, s);
    archive_metrics(&mut out, s);
    base_backup_metrics(&mut out, s);
    sink_metrics(&mut out, s);
    process_metrics(&mut out);
    out.0
}

/// The source: its progress, and what its server keeps for ferry.
fn source_metrics(out: &mut Exposition, s: &Shared) {
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let src = s.source.borrow().clone();
    let sl = format!("{{source=\"{}\"}}", s.source_kind);
    family(
        "ferry_source_transactions_total",
        "counter",
        "Source transactions written to the spool.",
        &[(sl.clone(), src.transactions as f64)],
    );
    family(
        "ferry_source_rows_total",
        "counter",
        "Row changes (insert, update, delete) streamed into the spool; the initial snapshot's copied rows are not counted.",
        &[(sl.clone(), src.rows as f64)],
    );
    family(
        "ferry_source_connected",
        "gauge",
        "1 while the source streams from its server.",
        &[(sl.clone(), f64::from(u8::from(src.connected)))],
    );
    family(
        "ferry_source_lag_bytes",
        "gauge",
        "PostgreSQL: WAL the slot holds for ferry (server WAL end minus acknowledged position).",
        &[(sl.clone(), src.lag_bytes() as f64)],
    );
    family(
        "ferry_source_last_commit_timestamp_seconds",
        "gauge",
        "Source commit time of the last transaction spooled.",
        &[(
            sl.clone(),
            src.last_commit_time.map_or(0.0, |t| t as f64 / 1e6),
        )],
    );
    family(
        "ferry_source_spilled_transactions_total",
        "counter",
        "Transactions larger than txn_memory_mb, spilled to disk before their commit.",
        &[(sl.clone(), src.spilled as f64)],
    );
    let now = ferry_source::postgres::replication::unix_now_micros();
    let ret = &src.retention;
    if let Some(status) = &ret.wal_status {
        let samples: Vec<(String, f64)> = ["reserved", "extended", "unreserved", "lost"]
            .iter()
            .map(|st| {
                (
                    format!("{{source=\"{}\",wal_status=\"{st}\"}}", s.source_kind),
                    f64::from(u8::from(status == st)),
                )
            })
            .collect();
        family(
            "ferry_source_slot_wal_status",
            "gauge",
            "PostgreSQL 13+: 1 for the replication slot's wal_status (reserved, extended, unreserved, lost).",
            &samples,
        );
    }
    if let Some(safe) = ret.safe_wal_bytes {
        family(
            "ferry_source_slot_safe_wal_bytes",
            "gauge",
            "PostgreSQL 13+: WAL that may still be written before the slot may lose what ferry needs (absent while max_slot_wal_keep_size = -1).",
            &[(sl.clone(), safe as f64)],
        );
    }
    if let Some(expire) = ret.binlog_expire_seconds {
        family(
            "ferry_source_binlog_expire_seconds",
            "gauge",
            "MySQL/MariaDB: the server's binlog expiry (0: never purged by age).",
            &[(sl.clone(), expire as f64)],
        );
    }
    if let Some(margin) = ret.binlog_margin_seconds(now) {
        family(
            "ferry_source_binlog_margin_seconds",
            "gauge",
            "MySQL/MariaDB: seconds until the binlog ferry would resume from may be purged, at the earliest.",
            &[(sl.clone(), margin)],
        );
    }
    family(
        "ferry_source_retention_at_risk",
        "gauge",
        "1 while what ferry still needs on the source is close to being removed (see /status).",
        &[(sl, f64::from(u8::from(ret.warning(now).is_some())))],
    );
    let tables: Vec<(String, f64)> = src
        .tables
        .iter()
        .map(|(t, n)| {
            (
                format!(
                    "{{source=\"{}\",table=\"{}\"}}",
                    s.source_kind,
                    t.replace('"', "")
                ),
                *n as f64,
            )
        })
        .collect();
    family(
        "ferry_source_table_rows_total",
        "counter",
        "Row changes read per captured table (one series per table).",
        &tables,
    );
}

/// The initial snapshot's progress.
fn snapshot_metrics(out: &mut Exposition) {
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let snap = &ferry_source::progress::SNAPSHOT;
    family(
        "ferry_snapshot_running",
        "gauge",
        "1 while the initial snapshot copies tables.",
        &[(String::new(), snap.running.load(Ordering::Relaxed) as f64)],
    );
    family(
        "ferry_snapshot_tables",
        "gauge",
        "Tables the initial snapshot copies.",
        &[(
            String::new(),
            snap.tables_total.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        "ferry_snapshot_tables_done",
        "gauge",
        "Tables the initial snapshot has copied.",
        &[(
            String::new(),
            snap.tables_done.load(Ordering::Relaxed) as f64,
        )],
    );
    family(
        "ferry_snapshot_rows_total",
        "counter",
        "Rows the initial snapshot has copied.",
        &[(String::new(), snap.rows.load(Ordering::Relaxed) as f64)],
    );
}

/// The spool on disk.
fn spool_metrics(out: &mut Exposition, s: &Shared) {
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let durable = *s.durable.borrow();
    let (bytes, segments) = spool_usage(&s.spool_dir);
    family(
        "ferry_spool_bytes",
        "gauge",
        "Bytes of the spool's segments on disk.",
        &[(String::new(), bytes as f64)],
    );
    family(
        "ferry_spool_segments",
        "gauge",
        "Segments in the spool.",
        &[(String::new(), segments as f64)],
    );
    family(
        "ferry_spool_durable_offset",
        "gauge",
        "Spool offset up to which events are fsynced.",
        &[(String::new(), durable.0 as f64)],
    );
}

/// The archive: how far it holds the spool, and how old its newest transaction is (the RPO).
fn archive_metrics(out: &mut Exposition, s: &Shared) {
    let Some(rx) = &s.archive else {
        return;
    };
    let p = rx.borrow().clone();
    let durable = *s.durable.borrow();
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    family(
        "ferry_archive_lag_seconds",
        "gauge",
        "0 when the archive holds every spooled transaction; else how long the oldest one it \
         lacks has waited since its source commit: the recovery point a restore can promise.",
        &[(String::new(), archive_lag_seconds(s, &p, durable))],
    );
    family(
        "ferry_archive_spool_lag_bytes",
        "gauge",
        "Spool bytes not archived yet (kept on disk until they are).",
        &[(String::new(), durable.0.saturating_sub(p.offset.0) as f64)],
    );
    family(
        "ferry_archive_last_commit_time_seconds",
        "gauge",
        "Source commit time of the newest archived transaction (Unix seconds).",
        &[(
            String::new(),
            p.last_commit_time.map_or(0.0, |t| t as f64 / 1e6),
        )],
    );
    family(
        "ferry_archive_objects_total",
        "counter",
        "Archive objects written by this process.",
        &[(String::new(), p.objects as f64)],
    );
    family(
        "ferry_archive_bytes_total",
        "counter",
        "Bytes of archive objects written by this process.",
        &[(String::new(), p.bytes as f64)],
    );
    family(
        "ferry_archive_up",
        "gauge",
        "1 while the archive writes without failing.",
        &[(String::new(), f64::from(u8::from(p.failing.is_none())))],
    );
}

/// Base backups (their age is what a restore must replay) and drills (when backups were last
/// proven by a restore).
fn base_backup_metrics(out: &mut Exposition, s: &Shared) {
    let Some(b) = &s.base_backups else {
        return;
    };
    let st = b.status();
    let now = ferry_source::postgres::replication::unix_now_micros();
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let one = |v: f64| [(String::new(), v)];
    let progress = &ferry_source::progress::BASE_BACKUP;
    family(
        "ferry_base_backup_running",
        "gauge",
        "1 while a base backup copies tables.",
        &one(f64::from(u8::from(st.running))),
    );
    family(
        "ferry_base_backup_rows_copied",
        "gauge",
        "Rows the running (or last) base backup has copied.",
        &one(progress.rows.load(Ordering::Relaxed) as f64),
    );
    if let Some(last) = &st.last {
        family(
            "ferry_base_backup_age_seconds",
            "gauge",
            "Seconds since the newest base backup's snapshot.",
            &one((now - last.snapshot_time).max(0) as f64 / 1e6),
        );
        family(
            "ferry_base_backup_last_bytes",
            "gauge",
            "Stored bytes of the newest base backup.",
            &one(last.bytes as f64),
        );
    }
    if let Some(bytes) = st.stored_bytes {
        family(
            "ferry_archive_stored_bytes",
            "gauge",
            "Bytes the archive stores: log, base backups and drill records (listed every 5 min).",
            &one(bytes as f64),
        );
    }
    family(
        "ferry_base_backup_failures_total",
        "counter",
        "Base backups that failed in this process.",
        &one(st.failures as f64),
    );
    if let Some(d) = &st.last_drill {
        family(
            "ferry_backup_drill_last_timestamp_seconds",
            "gauge",
            "When the newest backup drill finished (Unix seconds).",
            &one(d.finished as f64 / 1e6),
        );
        family(
            "ferry_backup_drill_last_passed",
            "gauge",
            "1 when the newest backup drill restored a database equal to the source.",
            &one(f64::from(u8::from(d.passed))),
        );
    }
}

/// The archive's lag in seconds, as a sink's.
fn archive_lag_seconds(s: &Shared, p: &ferry_archive::ArchiveProgress, durable: Offset) -> f64 {
    behind(s, p.offset, p.last_commit_time, durable, started_micros())
}

/// Each sink: progress, failures, lag, state.
fn sink_metrics(out: &mut Exposition, s: &Shared) {
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let src = s.source.borrow().clone();
    let durable = *s.durable.borrow();
    let started = started_micros();
    let sinks: Vec<(String, SinkProgress, f64)> = s
        .sinks
        .iter()
        .map(|v| {
            let p = v.progress.borrow().clone();
            let lag = lag_seconds(s, &p, durable, started);
            (
                format!("{{sink=\"{}\",type=\"{}\"}}", v.name, v.kind),
                p,
                lag,
            )
        })
        .collect();
    let per = |f: &dyn Fn(&SinkProgress, f64) -> f64| -> Vec<(String, f64)> {
        sinks
            .iter()
            .map(|(l, p, lag)| (l.clone(), f(p, *lag)))
            .collect()
    };
    family(
        "ferry_sink_transactions_total",
        "counter",
        "Source transactions applied (or delivered) by the sink.",
        &per(&|p, _| p.transactions as f64),
    );
    let synced: Vec<(String, crate::sequences::SyncStatus)> = s
        .sinks
        .iter()
        .filter_map(|v| {
            let st = v.sequences.as_ref()?.lock().ok()?.clone();
            Some((format!("{{sink=\"{}\",type=\"{}\"}}", v.name, v.kind), st))
        })
        .collect();
    if !synced.is_empty() {
        family(
            "ferry_sink_sequences_synced_timestamp_seconds",
            "gauge",
            "When the sink's sequences and AUTO_INCREMENT counters were last moved ahead to the \
             source's (Unix seconds; 0 before the first sync).",
            &synced
                .iter()
                .map(|(l, st)| (l.clone(), st.last_sync.map_or(0.0, |t| t as f64 / 1e6)))
                .collect::<Vec<_>>(),
        );
        family(
            "ferry_sink_sequences_moved_total",
            "counter",
            "Sequences and AUTO_INCREMENT counters the sink's sync moved ahead.",
            &synced
                .iter()
                .map(|(l, st)| (l.clone(), st.moved as f64))
                .collect::<Vec<_>>(),
        );
    }
    family(
        "ferry_sink_rows_total",
        "counter",
        "Row changes applied (database sinks) or messages delivered (Kafka) by the sink.",
        &per(&|p, _| p.rows as f64),
    );
    family(
        "ferry_sink_batches_total",
        "counter",
        "Batches committed (target transactions, or Kafka batches); rows_total / batches_total is the mean batch size.",
        &per(&|p, _| p.batches as f64),
    );
    family(
        "ferry_sink_retries_total",
        "counter",
        "Transient failures retried (reconnecting).",
        &per(&|p, _| p.retries as f64),
    );
    family(
        "ferry_sink_skipped_total",
        "counter",
        "Changes that failed permanently and were skipped (on_error = skip).",
        &per(&|p, _| p.skipped as f64),
    );
    family(
        "ferry_sink_dead_lettered_total",
        "counter",
        "Changes that failed permanently and went to the dead-letter file or topic.",
        &per(&|p, _| p.dead_lettered as f64),
    );
    family(
        "ferry_sink_zero_dates_total",
        "counter",
        "MySQL/MariaDB zero dates a PostgreSQL sink wrote as NULL (zero_dates = \"null\").",
        &per(&|p, _| p.zero_dates as f64),
    );
    let behind: Vec<(String, f64)> = sinks
        .iter()
        .filter_map(|(l, p, _)| Some((l.clone(), lag_bytes(&src, p)? as f64)))
        .collect();
    family(
        "ferry_sink_lag_bytes",
        "gauge",
        "Bytes of the source's log (WAL, binlog) between its current position and the sink's applied position.",
        &behind,
    );
    family(
        "ferry_sink_spool_lag_bytes",
        "gauge",
        "Spool bytes the sink has not applied yet.",
        &per(&|p, _| durable.0.saturating_sub(p.offset.0) as f64),
    );
    family(
        "ferry_sink_lag_seconds",
        "gauge",
        "0 when the sink has applied every spooled transaction; else how long the oldest one it has not applied has waited since its source commit.",
        &per(&|_, lag| lag),
    );
    family(
        "ferry_sink_up",
        "gauge",
        "1 while the sink runs (not retrying, halted or stopped).",
        &per(&|p, _| f64::from(u8::from(p.state == SinkState::Running))),
    );
    family(
        "ferry_sink_halted",
        "gauge",
        "1 when the sink halted on a permanent failure (on_error = halt).",
        &per(&|p, _| f64::from(u8::from(matches!(p.state, SinkState::Halted(_))))),
    );
}

/// The process, from `/proc/self`.
fn process_metrics(out: &mut Exposition) {
    let mut family = |n: &str, k: &str, h: &str, v: &[(String, f64)]| out.family(n, k, h, v);
    let (rss, cpu) = process();
    family(
        "ferry_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the ferry process.",
        &[(String::new(), rss as f64)],
    );
    family(
        "ferry_process_cpu_seconds_total",
        "counter",
        "CPU time (user and system) of the ferry process.",
        &[(String::new(), cpu)],
    );
    family(
        "ferry_process_start_time_seconds",
        "gauge",
        "When the process started, Unix seconds.",
        &[(String::new(), started_micros() as f64 / 1e6)],
    );
}

/// Why ferry is not ready, or `None` when it is.
pub fn unready(s: &Shared) -> Option<String> {
    let src = s.source.borrow().clone();
    if !src.connected {
        return Some("the source is not connected".into());
    }
    let now = ferry_source::postgres::replication::unix_now_micros();
    if let Some(why) = src.retention.warning(now) {
        return Some(why);
    }
    let durable = *s.durable.borrow();
    let started = started_micros();
    for v in &s.sinks {
        let p = v.progress.borrow().clone();
        if let SinkState::Halted(why) = &p.state {
            return Some(format!("sink {} halted: {why}", v.name));
        }
        let lag = lag_seconds(s, &p, durable, started);
        if lag > v.max_lag_seconds {
            return Some(format!(
                "sink {} is {lag:.0} s behind (max_lag_seconds = {})",
                v.name, v.max_lag_seconds
            ));
        }
    }
    if let Some(rx) = &s.archive {
        let p = rx.borrow().clone();
        if let Some(why) = &p.failing {
            return Some(format!(
                "the archive is failing (the spool keeps what it lacks): {why}"
            ));
        }
        let lag = archive_lag_seconds(s, &p, durable);
        if let Some(max) = s.archive_max_lag
            && lag > max
        {
            return Some(format!(
                "the archive is {lag:.0} s behind ([archive] max_lag_seconds = {max})"
            ));
        }
    }
    None
}

/// The `/status` document.
pub fn status_json(s: &Shared) -> serde_json::Value {
    let src = s.source.borrow().clone();
    let now = ferry_source::postgres::replication::unix_now_micros();
    let durable = *s.durable.borrow();
    let started = started_micros();
    let (bytes, segments) = spool_usage(&s.spool_dir);
    let sinks: Vec<serde_json::Value> = s
        .sinks
        .iter()
        .map(|v| {
            let p = v.progress.borrow().clone();
            serde_json::json!({
                "name": v.name,
                "type": v.kind,
                "state": p.state.to_string(),
                "position": p.position.as_ref().map(ToString::to_string),
                "offset": p.offset.0,
                "lag_bytes": lag_bytes(&src, &p),
                "spool_lag_bytes": durable.0.saturating_sub(p.offset.0),
                "lag_seconds": lag_seconds(s, &p, durable, started),
                "transactions": p.transactions,
                "rows": p.rows,
                "batches": p.batches,
                "retries": p.retries,
                "skipped": p.skipped,
                "dead_lettered": p.dead_lettered,
                "sequences": v.sequences.as_ref().map(|h| h.lock().map(|g| g.clone()).unwrap_or_default()),
            })
        })
        .collect();
    serde_json::json!({
        "source": {
            "type": s.source_kind,
            "connected": src.connected,
            "transactions": src.transactions,
            "rows": src.rows,
            "lag_bytes": src.lag_bytes(),
            "slot_wal_status": src.retention.wal_status,
            "slot_safe_wal_bytes": src.retention.safe_wal_bytes,
            "binlog_expire_seconds": src.retention.binlog_expire_seconds,
            "binlog_margin_seconds": src.retention.binlog_margin_seconds(now),
            "warning": src.retention.warning(now),
        },
        "spool": {
            "dir": s.spool_dir.display().to_string(),
            "bytes": bytes,
            "segments": segments,
            "durable_offset": durable.0,
        },
        "sinks": sinks,
        "archive": s.archive.as_ref().map(|rx| {
            let p = rx.borrow().clone();
            serde_json::json!({
                "offset": p.offset.0,
                "position": p.position.as_ref().map(ToString::to_string),
                "last_commit_time": p.last_commit_time,
                "lag_seconds": archive_lag_seconds(s, &p, durable),
                "spool_lag_bytes": durable.0.saturating_sub(p.offset.0),
                "objects": p.objects,
                "bytes": p.bytes,
                "failing": p.failing,
            })
        }),
        "base_backup": s.base_backups.as_ref().map(|b| b.status()),
        "ready": unready(s).is_none(),
    })
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(s: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == hyper::Method::POST
        && let Some(command) = req.uri().path().strip_prefix("/v1/")
    {
        let (code, body) = match &s.control {
            Some(c) => c.handle(
                command,
                req.headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
            None => crate::control::off(),
        };
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return respond(code, "text/plain", body);
    }
    if req.method() != hyper::Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET, or POST /v1/<command>\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", metrics(s)),
        "/healthz" => {
            let age = ferry_source::postgres::replication::unix_now_micros() / 1_000_000
                - s.tick.load(Ordering::Relaxed);
            if age <= 30 {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("the runtime has not ticked for {age} s\n"),
                )
            }
        }
        "/readyz" => match unready(s) {
            None => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            format!("{}\n", status_json(s)),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz, /status\n".into(),
        ),
    }
}

/// Binds the endpoint's address (a failure stops ferry's start, not only the endpoint).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("[http] listen {addr}"), e))?;
    tracing::info!(%addr, "http endpoint: /metrics /healthz /readyz /status");
    Ok(listener)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<()> {
    let tick = shared.tick.clone();
    tick.store(
        ferry_source::postgres::replication::unix_now_micros() / 1_000_000,
        Ordering::Relaxed,
    );
    let ticker_stop = shutdown.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tick.store(
                ferry_source::postgres::replication::unix_now_micros() / 1_000_000,
                Ordering::Relaxed,
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = ticker_stop.cancelled() => break,
            }
        }
    });
    // Connections in progress are tracked and given a moment to finish their answer.
    let mut connections = tokio::task::JoinSet::new();
    let shared = Arc::new(shared);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http endpoint: accept failed");
                    continue;
                }
            },
        };
        // Finished connections are reaped as new ones come, so the set stays small.
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let _ = ticker.await;
    // A scraper holding a keep-alive connection open does not hold up the stop.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
