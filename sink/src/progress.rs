//! What every sink reports: its state and progress (for the source's acknowledgement, `ferry
//! status` and metrics), and the state file `ferry status` reads when ferry is not running.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_proto::Position;
use ferry_spool::Offset;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a sink is doing, for status, metrics and the source's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum SinkState {
    Starting,
    Running,
    /// Waiting to retry after a transient failure.
    Retrying(String),
    /// Stopped by a permanent failure.
    Halted(String),
    Stopped,
}

impl std::fmt::Display for SinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkState::Starting => f.write_str("starting"),
            SinkState::Running => f.write_str("running"),
            SinkState::Retrying(r) => write!(f, "retrying ({r})"),
            SinkState::Halted(r) => write!(f, "HALTED: {r}"),
            SinkState::Stopped => f.write_str("stopped"),
        }
    }
}

/// Where a sink's last state is kept for `ferry status`: `<spool dir>/state/<sink>.json`.
pub fn state_path(spool_dir: &std::path::Path, sink: &str) -> PathBuf {
    spool_dir.join("state").join(format!("{sink}.json"))
}

/// The state a sink last recorded, if any.
pub fn read_state(spool_dir: &std::path::Path, sink: &str) -> Option<SinkState> {
    let text = std::fs::read(state_path(spool_dir, sink)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A sink's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkProgress {
    /// Everything before this spool offset is applied durably (or needs nothing applied).
    pub offset: Offset,
    /// The source position of the last transaction or heartbeat covered.
    pub position: Option<Position>,
    pub state: SinkState,
    pub transactions: u64,
    pub rows: u64,
    pub batches: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// MySQL/MariaDB zero dates written as NULL (a PostgreSQL sink's `zero_dates = "null"`).
    pub zero_dates: u64,
    pub retries: u64,
    /// Source time (µs since the epoch) of the last transaction (its commit) or heartbeat
    /// applied, for lag: while behind, the lag is how long ago the source was there.
    pub last_commit_time: Option<i64>,
}

impl SinkProgress {
    pub fn new() -> Self {
        SinkProgress {
            offset: Offset(0),
            position: None,
            state: SinkState::Starting,
            transactions: 0,
            rows: 0,
            batches: 0,
            skipped: 0,
            dead_lettered: 0,
            zero_dates: 0,
            retries: 0,
            last_commit_time: None,
        }
    }
}

impl Default for SinkProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Records `state` in the state file (best effort: the file is for people; checkpoints are
/// elsewhere).
pub fn write_state(spool_dir: &std::path::Path, sink: &str, state: &SinkState) {
    let path = state_path(spool_dir, sink);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_vec(state) {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// A sink's handle on its state and counters, shared by the worker and its destination: the
/// progress channel (for the source's acknowledgement, `/metrics`, `/status`) and the state file.
#[derive(Debug, Clone)]
pub struct Status {
    name: Arc<str>,
    spool_dir: Arc<Path>,
    progress: Arc<watch::Sender<SinkProgress>>,
}

impl Status {
    pub fn new(name: &str, spool_dir: &Path) -> (Status, watch::Receiver<SinkProgress>) {
        let (tx, rx) = watch::channel(SinkProgress::new());
        (
            Status {
                name: name.into(),
                spool_dir: spool_dir.into(),
                progress: Arc::new(tx),
            },
            rx,
        )
    }

    /// Sets the state, in the progress channel and in the state file (best effort: the file is
    /// for people, the checkpoint is on the destination).
    pub fn set(&self, state: SinkState) {
        write_state(&self.spool_dir, &self.name, &state);
        self.progress.send_modify(|p| p.state = state);
    }

    pub fn update(&self, f: impl FnOnce(&mut SinkProgress)) {
        self.progress.send_modify(f);
    }

    pub fn get(&self) -> SinkProgress {
        self.progress.borrow().clone()
    }
}

/// What a sink's run loop does when a session ends with `e`: a transient error waits out the
/// backoff (true: run another session; false: shutdown came meanwhile), a permanent one halts
/// the sink (the error is returned). States are recorded for `ferry status`.
pub async fn after_failure(
    e: crate::SinkError,
    transient: bool,
    status: &Status,
    backoff: &mut crate::Backoff,
    session_started: std::time::Instant,
    shutdown: &CancellationToken,
) -> crate::error::Result<bool> {
    let sink = &*status.name;
    let set = |state: SinkState| status.set(state);
    if !transient {
        tracing::error!(%sink, error = %e, "sink halted");
        set(SinkState::Halted(e.to_string()));
        return Err(e);
    }
    if session_started.elapsed() > std::time::Duration::from_secs(30) {
        backoff.reset();
    }
    let delay = backoff.next_delay();
    tracing::warn!(%sink, error = %e, retry_in = ?delay, "sink failed; retrying");
    set(SinkState::Retrying(e.to_string()));
    status.update(|p| p.retries += 1);
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(true),
        _ = shutdown.cancelled() => {
            set(SinkState::Stopped);
            Ok(false)
        }
    }
}
