//! Base backups while `ferry run` runs: one at a time, every `[archive] base_backup_every` and
//! whenever asked (`ferry backup now`, which is `POST /v1/backup`), each read from a consistent
//! snapshot of the source's own (the one chunked copy the initial snapshot uses, in
//! `ferry_source::copy`) into the archive's chunks, while the stream keeps running; retention
//! (`keep`) after each. The task also reads the newest drill record, so `/metrics` can say
//! when backups were last proven by a restore.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_archive::Archive;
use ferry_archive::base::{BaseManifest, BaseWriter};
use ferry_archive::retention::Keep;
use ferry_proto::Event;
use ferry_source::copy::CopyOutput;
use ferry_source::error::{Error, Result};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backup::archive_error;

/// After a failed scheduled backup, the next try comes this soon (or at the schedule, if
/// sooner).
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// The newest drill record is read this often.
const DRILL_POLL: Duration = Duration::from_secs(15);
/// The archive's size is listed this often (a listing of every object).
const SIZE_POLL: Duration = Duration::from_secs(300);

/// What `/status` and `/metrics` show of base backups and drills.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaseBackupStatus {
    pub running: bool,
    /// Requests accepted (`ferry backup now`), and how many of them have been answered (by a
    /// backup that started after the request, whether it succeeded or failed).
    pub requested: u64,
    pub served: u64,
    pub last: Option<LastBase>,
    pub last_error: Option<String>,
    pub failures: u64,
    pub last_drill: Option<crate::drill::DrillRecord>,
    /// Bytes the archive stores (log, base backups, drill records), listed every few minutes.
    pub stored_bytes: Option<u64>,
}

/// The newest base backup in the archive.
#[derive(Debug, Clone, Serialize)]
pub struct LastBase {
    pub id: String,
    pub position: String,
    /// µs since the epoch.
    pub snapshot_time: i64,
    pub finished: i64,
    pub rows: u64,
    pub bytes: u64,
}

impl From<&BaseManifest> for LastBase {
    fn from(b: &BaseManifest) -> LastBase {
        LastBase {
            id: b.id.clone(),
            position: b.position.to_string(),
            snapshot_time: b.snapshot_time,
            finished: b.finished,
            rows: b.rows,
            bytes: b.bytes,
        }
    }
}

/// The handle the control route and the HTTP endpoint hold.
#[derive(Debug, Clone, Default)]
pub struct BaseBackups {
    status: Arc<Mutex<BaseBackupStatus>>,
    wake: Arc<Notify>,
}

impl BaseBackups {
    /// Asks for a base backup now; returns the request's number.
    pub fn request(&self) -> u64 {
        let n = self.update(|s| {
            s.requested += 1;
            s.requested
        });
        self.wake.notify_one();
        n
    }

    pub fn status(&self) -> BaseBackupStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update<T>(&self, f: impl FnOnce(&mut BaseBackupStatus) -> T) -> T {
        let mut guard = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

/// Where a base backup copies from.
#[derive(Debug, Clone)]
pub enum BackupSource {
    Postgres(Box<ferry_source::postgres::source::SourceSettings>),
    /// With the spool directory, whose epoch the base backup's position takes.
    Mysql(Box<ferry_source::mysql::MysqlSettings>, std::path::PathBuf),
}

/// How base backups are taken and kept.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub every: Option<Duration>,
    pub keep: Option<Keep>,
    pub chunk_bytes: usize,
}

/// Runs until `stop`: takes base backups when due or asked, applies retention after each.
pub async fn run(
    handle: BaseBackups,
    archive: Archive,
    source: BackupSource,
    schedule: Schedule,
    stop: CancellationToken,
) {
    let newest = match archive.base_manifests().await {
        Ok(bases) => bases.last().cloned(),
        Err(e) => {
            tracing::warn!(error = %e, "base backups: the archive's base backups could not be listed");
            None
        }
    };
    handle.update(|s| s.last = newest.as_ref().map(LastBase::from));
    let now = ferry_source::postgres::replication::unix_now_micros();
    // Due at the schedule after the newest one. Without one: a schedule from now when the log
    // begins with the initial snapshot (a restore point already, maybe still being copied), at
    // once when it does not (an archive added to a running ferry has no restore point yet).
    let log_has_snapshot = match archive.manifests().await {
        Ok(m) => m.first().is_none_or(|m| m.first_offset == 0),
        Err(_) => true,
    };
    let mut due = schedule.every.map(|every| {
        let since = match &newest {
            Some(b) => micros_to(now - b.finished),
            None if log_has_snapshot => Duration::ZERO,
            None => Duration::MAX,
        };
        tokio::time::Instant::now() + every.saturating_sub(since)
    });
    prune(&archive, &schedule).await;
    let mut drills = tokio::time::interval(DRILL_POLL);
    let mut sizes = tokio::time::interval(SIZE_POLL);
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = handle.wake.notified() => {}
            _ = tokio::time::sleep_until(due.unwrap_or(far)) => {}
            _ = drills.tick() => {
                let last = crate::drill::last_record(&archive).await;
                handle.update(|s| s.last_drill = last);
                continue;
            }
            _ = sizes.tick() => {
                measure(&handle, &archive).await;
                continue;
            }
        }
        let answering = handle.update(|s| {
            s.running = true;
            s.requested
        });
        // The copy stops itself on `stop`; a source that does not answer must not hold it up.
        let result = tokio::select! {
            r = take(&archive, &source, schedule.chunk_bytes, &stop) => r,
            _ = stop.cancelled() => Err(Error::Fatal("the base backup was interrupted".into())),
        };
        let ok = result.is_ok();
        handle.update(|s| {
            s.running = false;
            s.served = s.served.max(answering);
            match &result {
                Ok(m) => {
                    s.last = Some(LastBase::from(m));
                    s.last_error = None;
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match result {
            Ok(m) => {
                tracing::info!(id = %m.id, position = %m.position, rows = m.rows, bytes = m.bytes, "base backup: stored");
                prune(&archive, &schedule).await;
                measure(&handle, &archive).await;
            }
            Err(e) if stop.is_cancelled() => {
                tracing::info!(error = %e, "base backup: interrupted by the stop");
                return;
            }
            Err(e) => tracing::error!(error = %e, "base backup failed"),
        }
        due = schedule.every.map(|every| {
            tokio::time::Instant::now() + if ok { every } else { every.min(RETRY_AFTER) }
        });
    }
}

/// Lists the archive's size into the status; a failure leaves the last figure.
async fn measure(handle: &BaseBackups, archive: &Archive) {
    match archive.stored_bytes().await {
        Ok(bytes) => handle.update(|s| s.stored_bytes = Some(bytes)),
        Err(e) => tracing::debug!(error = %e, "archive: its size could not be listed"),
    }
}

fn micros_to(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Retention after a backup; a failure is logged and tried again after the next one.
async fn prune(archive: &Archive, schedule: &Schedule) {
    let Some(keep) = schedule.keep else {
        return;
    };
    match ferry_archive::retention::apply(
        archive,
        keep,
        ferry_source::postgres::replication::unix_now_micros(),
    )
    .await
    {
        Ok(p) if p.log_objects > 0 || !p.base_backups.is_empty() => tracing::info!(
            base_backups = ?p.base_backups,
            log_objects = p.log_objects,
            "archive retention: deleted what no kept restore point needs"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "archive retention failed"),
    }
}

/// Takes one base backup.
pub async fn take(
    archive: &Archive,
    source: &BackupSource,
    chunk_bytes: usize,
    stop: &CancellationToken,
) -> Result<BaseManifest> {
    let mut out = ArchiveOutput(BaseWriter::new(archive.clone(), chunk_bytes));
    tracing::info!(id = out.0.id(), "base backup: starting");
    let copied = match source {
        BackupSource::Postgres(s) => {
            ferry_source::postgres::snapshot::base_backup(s, &mut out, stop).await?
        }
        BackupSource::Mysql(s, spool) => {
            let epoch = ferry_source::mysql::server::spool_epoch(spool)?;
            ferry_source::mysql::base_backup(s, epoch, &mut out, stop).await?
        }
    };
    let Some(c) = copied else {
        return Err(Error::Fatal("the base backup was interrupted".into()));
    };
    out.0
        .finish(c.position, c.snapshot_time, c.tables)
        .await
        .map_err(archive_error)
}

/// The copy's output for a base backup: the archive's chunks.
struct ArchiveOutput(BaseWriter);

impl CopyOutput for ArchiveOutput {
    async fn write(&mut self, events: Vec<Event>) -> Result<()> {
        self.0.write(&events).await.map_err(archive_error)
    }
}
