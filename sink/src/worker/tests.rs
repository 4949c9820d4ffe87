//! The worker against an in-memory destination, with faults injected where real destinations
//! fail: a transient error on the Nth apply, on a commit before it is durable, after a commit
//! before the worker heard of it (a crash between the destination's commit and the cursor),
//! and changes the destination refuses every time. No server needed.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{
    Begin, Column, Commit, Event, Insert, Lsn, Position, Relation, RelationId, ReplicaIdentity,
    Value,
};
use ferry_spool::{Offset, SpoolWriter, WriterOptions};
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::OnError;
use crate::destination::{
    Checkpoint, Destination, Opened, Refusal, Relations, Step, WorkerSettings,
};
use crate::error::{Result, SinkError};
use crate::progress::{SinkProgress, Status};

/// What the in-memory destination holds durably, and the faults it is told to inject.
#[derive(Debug, Default)]
struct Store {
    rows: BTreeMap<i64, String>,
    /// Rows committed a second time: must stay zero.
    duplicates: u32,
    checkpoint: Option<(Position, Offset)>,
    commits: u32,
    opens: u32,
    change_applies: u32,
    change_by_change: bool,
    /// A transient failure on this (1-based, over all sessions) change apply.
    fail_apply: Option<u32>,
    /// A transient failure on this commit, before anything is durable.
    fail_commit: Option<u32>,
    /// This commit is durable, then the worker gets a transient error (its ack is lost).
    lose_commit_ack: Option<u32>,
    /// Keys refused on every apply.
    refuse: HashSet<i64>,
}

struct MemConfig {
    settings: WorkerSettings,
    store: Arc<Mutex<Store>>,
}

/// The in-memory destination: a batch is a list of pending rows, a mark is a length.
struct Mem {
    store: Arc<Mutex<Store>>,
    pending: Vec<(i64, String)>,
    marked: usize,
}

fn gone() -> SinkError {
    SinkError::io("memory", std::io::Error::other("connection lost"))
}

impl Destination for Mem {
    type Config = MemConfig;

    fn settings(cfg: &MemConfig) -> WorkerSettings {
        cfg.settings.clone()
    }

    async fn open(cfg: &MemConfig, _: Status) -> Result<(Self, Opened)> {
        let mut s = cfg.store.lock().unwrap();
        s.opens += 1;
        let opened = Opened {
            resume: s.checkpoint.as_ref().map(|c| c.1),
            applied: s.checkpoint.as_ref().map(|c| c.0.clone()),
            change_by_change: s.change_by_change,
        };
        let mem = Mem {
            store: cfg.store.clone(),
            pending: Vec::new(),
            marked: 0,
        };
        Ok((mem, opened))
    }

    async fn begin(&mut self) -> Result<()> {
        self.pending.clear();
        self.marked = 0;
        Ok(())
    }

    async fn apply(&mut self, step: Step<'_>, _: &(dyn Relations + Sync)) -> Result<()> {
        let Step::Change(Event::Insert(i), _) = step else {
            return Ok(());
        };
        let (Some(Value::Int(id)), Some(Value::Text(v))) = (i.new.first(), i.new.get(1)) else {
            return Err(SinkError::Fatal("unexpected row".into()));
        };
        let mut s = self.store.lock().unwrap();
        s.change_applies += 1;
        if s.fail_apply == Some(s.change_applies) {
            return Err(gone());
        }
        if s.refuse.contains(id) {
            return Err(SinkError::Value(format!("row {id} refused")));
        }
        self.pending.push((*id, v.clone()));
        Ok(())
    }

    async fn flush(&mut self) -> Result<Vec<Refusal>> {
        Ok(Vec::new())
    }

    async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let mut s = self.store.lock().unwrap();
        let n = s.commits + 1;
        if s.fail_commit == Some(n) {
            s.fail_commit = None;
            return Err(gone());
        }
        s.commits = n;
        for (id, v) in self.pending.drain(..) {
            if s.rows.insert(id, v).is_some() {
                s.duplicates += 1;
            }
        }
        s.checkpoint = Some((checkpoint.position.clone(), checkpoint.offset));
        if s.lose_commit_ack == Some(n) {
            return Err(gone());
        }
        Ok(())
    }

    async fn abort(&mut self) -> Result<()> {
        self.pending.clear();
        Ok(())
    }

    async fn record_idle(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.store.lock().unwrap().checkpoint =
            Some((checkpoint.position.clone(), checkpoint.offset));
        Ok(())
    }

    async fn mark(&mut self) -> Result<()> {
        self.marked = self.pending.len();
        Ok(())
    }

    async fn keep(&mut self) -> Result<()> {
        self.marked = self.pending.len();
        Ok(())
    }

    async fn undo(&mut self) -> Result<()> {
        self.pending.truncate(self.marked);
        Ok(())
    }
}

fn relation() -> Relation {
    let col = |name: &str, key: bool| Column {
        name: name.into(),
        type_name: if key { "int8" } else { "text" }.into(),
        type_id: if key { 20 } else { 25 },
        type_modifier: -1,
        key,
        nullable: !key,
    };
    Relation {
        id: RelationId(1),
        schema: "public".into(),
        name: "t".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", true), col("v", false)],
    }
}

/// A spool of `txns` transactions of `rows` inserts each (ids 1, 2, …), the first announcing
/// the table; the position of transaction `n` (1-based) is `pg:0/n`.
fn spool(dir: &std::path::Path, txns: u64, rows: u64) -> SpoolWriter {
    let (mut w, _) = SpoolWriter::open(dir, WriterOptions::default()).unwrap();
    let mut id = 0;
    for n in 1..=txns {
        let position = Position::Postgres(Lsn(n));
        w.append(&Event::Begin(Begin {
            position: position.clone(),
            xid: n,
            commit_time: n as i64,
        }))
        .unwrap();
        if n == 1 {
            w.append(&Event::Relation(relation())).unwrap();
        }
        for _ in 0..rows {
            id += 1;
            w.append(&Event::Insert(Insert {
                relation: RelationId(1),
                new: vec![Value::Int(id), Value::Text(format!("row {id}"))],
            }))
            .unwrap();
        }
        w.append(&Event::Commit(Commit {
            position,
            xid: n,
            commit_time: n as i64,
        }))
        .unwrap();
        w.commit().unwrap();
    }
    w
}

struct Run {
    store: Arc<Mutex<Store>>,
    progress: SinkProgress,
    result: Result<()>,
    /// The spool directory (dead letters are beside it).
    dir: tempfile::TempDir,
}

/// Runs a worker over a spool of 10 transactions of 3 rows into a destination set up as
/// `store` says.
async fn run_ten(store: Store, on_error: OnError) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let w = spool(dir.path(), 10, 3);
    let mut r = run(dir.path(), &w, Arc::new(Mutex::new(store)), on_error).await;
    r.dir = dir;
    r
}

/// Every row of the ten transactions but `missing`, each committed once.
fn assert_all_but(s: &Store, missing: &[i64]) {
    let want: Vec<i64> = (1..=30).filter(|i| !missing.contains(i)).collect();
    assert_eq!(ids(s), want);
    assert_eq!(s.duplicates, 0);
}

/// Runs a worker over the spool until it has applied everything (or stopped), then shuts it
/// down and joins it.
async fn run(
    dir: &std::path::Path,
    w: &SpoolWriter,
    store: Arc<Mutex<Store>>,
    on_error: OnError,
) -> Run {
    let settings = WorkerSettings {
        name: "mem".into(),
        spool_dir: dir.to_owned(),
        on_error,
        max_batch_rows: 7,
        max_batch_delay: Duration::from_secs(60),
    };
    let (worker, mut rx) = Worker::<Mem>::new(MemConfig {
        settings,
        store: store.clone(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(w.subscribe(), stop.clone()));
    let end = w.durable_end();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if rx.borrow().offset >= end || task.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not finish: {:?}",
            *rx.borrow()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
    stop.cancel();
    let result = task.await.unwrap();
    let progress = rx.borrow().clone();
    Run {
        store,
        progress,
        result,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn ids(store: &Store) -> Vec<i64> {
    store.rows.keys().copied().collect()
}

#[tokio::test]
async fn applies_every_transaction_once_in_batches() {
    let r = run_ten(Store::default(), OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    assert_all_but(&s, &[]);
    assert_eq!(
        s.checkpoint.as_ref().unwrap().0,
        Position::Postgres(Lsn(10))
    );
    // Batches of whole transactions: at 7 rows a batch is due at its third transaction.
    assert!(s.commits < 10, "{} commits for 10 transactions", s.commits);
    assert_eq!(r.progress.rows, 30);
    assert_eq!(r.progress.transactions, 10);
}

#[tokio::test]
async fn a_change_by_change_destination_commits_each_transaction() {
    let store = Store {
        change_by_change: true,
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    assert_all_but(&s, &[]);
    assert_eq!(s.commits, 10);
}

#[tokio::test]
async fn a_transient_apply_failure_retries_without_duplicates() {
    let store = Store {
        fail_apply: Some(12),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    assert_all_but(&s, &[]);
    assert_eq!(s.opens, 2);
    assert_eq!(r.progress.retries, 1);
}

#[tokio::test]
async fn a_failed_commit_is_retried_whole() {
    let store = Store {
        fail_commit: Some(1),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    r.result.unwrap();
    assert_all_but(&r.store.lock().unwrap(), &[]);
    assert_eq!(r.progress.retries, 1);
}

#[tokio::test]
async fn a_commit_whose_ack_is_lost_is_not_applied_twice() {
    let store = Store {
        lose_commit_ack: Some(1),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    // The reopened destination's checkpoint says what it has; the worker resumes after it.
    assert_all_but(&s, &[]);
    assert_eq!(s.opens, 2);
}

#[tokio::test]
async fn transactions_the_destination_has_are_skipped() {
    // The destination has transactions 1–4 and keeps no offset: the worker reads the spool
    // from its start and skips what the position covers.
    let store = Store {
        checkpoint: Some((Position::Postgres(Lsn(4)), Offset(0))),
        rows: (1..=12).map(|i| (i, format!("row {i}"))).collect(),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    assert_all_but(&s, &[]);
    assert_eq!(s.change_applies, 18);
}

#[tokio::test]
async fn a_refused_change_halts_after_the_transactions_before_it() {
    let store = Store {
        refuse: [14].into(),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Halt).await;
    let err = r.result.unwrap_err().to_string();
    assert!(
        err.contains("pg:0/5") && err.contains("id=Int(14)"),
        "{err}"
    );
    let s = r.store.lock().unwrap();
    // Row 14 is in transaction 5: the four before it are applied, nothing of it or after.
    assert_eq!(ids(&s), (1..=12).collect::<Vec<_>>());
    assert_eq!(s.checkpoint.as_ref().unwrap().0, Position::Postgres(Lsn(4)));
    assert!(matches!(
        r.progress.state,
        crate::progress::SinkState::Halted(_)
    ));
}

#[tokio::test]
async fn a_refused_change_is_skipped_and_the_rest_applied() {
    let store = Store {
        refuse: [14].into(),
        ..Store::default()
    };
    let r = run_ten(store, OnError::Skip).await;
    r.result.unwrap();
    assert_all_but(&r.store.lock().unwrap(), &[14]);
    assert_eq!(r.progress.skipped, 1);
}

#[tokio::test]
async fn a_refused_change_becomes_a_dead_letter() {
    let store = Store {
        refuse: [14, 29].into(),
        ..Store::default()
    };
    let r = run_ten(store, OnError::DeadLetter).await;
    r.result.unwrap();
    assert_all_but(&r.store.lock().unwrap(), &[14, 29]);
    assert_eq!(r.progress.dead_lettered, 2);
    let text = std::fs::read_to_string(r.dir.path().join("dead-letter/mem.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["position"], "pg:0/5");
    assert_eq!(lines[0]["table"], "public.t");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("row 14 refused")
    );
    assert_eq!(lines[1]["xid"], 10);
    assert!(
        lines[1]["event"].to_string().contains("row 29"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn a_second_run_resumes_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = spool(dir.path(), 4, 3);
    let store: Arc<Mutex<Store>> = Arc::default();
    run(dir.path(), &w, store.clone(), OnError::Halt)
        .await
        .result
        .unwrap();
    // More transactions after the first run stopped.
    let position = Position::Postgres(Lsn(5));
    w.append(&Event::Begin(Begin {
        position: position.clone(),
        xid: 5,
        commit_time: 5,
    }))
    .unwrap();
    w.append(&Event::Insert(Insert {
        relation: RelationId(1),
        new: vec![Value::Int(13), Value::Text("row 13".into())],
    }))
    .unwrap();
    w.append(&Event::Commit(Commit {
        position,
        xid: 5,
        commit_time: 5,
    }))
    .unwrap();
    w.commit().unwrap();
    let r = run(dir.path(), &w, store, OnError::Halt).await;
    r.result.unwrap();
    let s = r.store.lock().unwrap();
    assert_eq!(ids(&s), (1..=13).collect::<Vec<_>>());
    assert_eq!(s.duplicates, 0);
    assert_eq!(s.change_applies, 13);
}
