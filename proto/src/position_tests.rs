//! The one meaning of a position, checked against a model of the whole pipeline: a PostgreSQL
//! server writing interleaved transactions and other records to its WAL, the source spooling
//! committed transactions and heartbeats, a sink checkpointing, and restarts of ferry at every
//! point. Whatever the interleaving, every committed transaction reaches the sink exactly once,
//! in commit order.
//!
//! The model makes each decision the way ferry does, through the same two functions:
//! [`Lsn::covers_commit_at`] (the source, which knows only where a commit record starts when the
//! server sends it again) and [`Position::covers`] (the sink, and every other comparison).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use crate::{Lsn, Position};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// A client starts a transaction and writes its first row.
    Begin,
    /// An open transaction writes a row of `size` bytes.
    Row(u64),
    /// An open transaction commits: its commit record follows in the WAL.
    Commit(usize),
    /// A record that is no transaction's commit (running_xacts, a checkpoint).
    Other(u64),
    /// ferry is idle and follows the server: a heartbeat at the WAL end.
    Heartbeat,
    /// The sink commits its batch with its checkpoint.
    SinkCommit,
    /// ferry stops (cleanly or not) and starts again.
    Restart,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        3 => (1u64..200).prop_map(Op::Row),
        3 => (0usize..4).prop_map(Op::Commit),
        1 => (1u64..100).prop_map(Op::Other),
        2 => Just(Op::Heartbeat),
        2 => Just(Op::SinkCommit),
        1 => Just(Op::Restart),
    ]
}

/// What the spool holds: a whole transaction at its position, or a heartbeat.
#[derive(Debug, Clone)]
enum Spooled {
    Txn { id: u32, position: Position },
    Heartbeat(Position),
}

#[derive(Debug, Default)]
struct World {
    wal_end: u64,
    /// Committed transactions in WAL order: (id, commit record start, end).
    commits: Vec<(u32, u64, u64)>,
    open: Vec<u32>,
    next_id: u32,
    /// The slot's confirmed flush position.
    confirmed: u64,
    spool: Vec<Spooled>,
    /// The source: what the spool covers, and how far into `commits` the server has sent.
    resume_from: u64,
    sent: usize,
    /// The sink: its checkpoint (position, spool index) on the target, and what it has read
    /// since (lost with a restart unless committed).
    checkpoint: Option<(Position, usize)>,
    read_to: usize,
    batch: Vec<u32>,
    batch_last: Option<Position>,
    applied: Vec<u32>,
    ack_applied: bool,
}

fn pg(l: u64) -> Position {
    Position::Postgres(Lsn(l))
}

impl World {
    fn record(&mut self, size: u64) -> (u64, u64) {
        let start = self.wal_end;
        self.wal_end += size;
        (start, self.wal_end)
    }

    /// The server sends what it has not sent; the source spools what it does not have.
    fn source_catch_up(&mut self) {
        while self.sent < self.commits.len() {
            let (id, start, end) = self.commits[self.sent];
            self.sent += 1;
            if !Lsn(self.resume_from).covers_commit_at(Lsn(start)) {
                self.spool.push(Spooled::Txn {
                    id,
                    position: pg(end),
                });
                self.resume_from = end;
            }
        }
        if !self.ack_applied {
            self.confirmed = self.confirmed.max(self.resume_from);
        }
    }

    /// The sink reads everything spooled, skipping what its checkpoint covers.
    fn sink_read(&mut self) {
        while self.read_to < self.spool.len() {
            match self.spool[self.read_to].clone() {
                Spooled::Txn { id, position } => {
                    if !self
                        .checkpoint
                        .as_ref()
                        .is_some_and(|c| c.0.covers(&position))
                    {
                        self.batch.push(id);
                    }
                    self.batch_last = Some(position);
                }
                Spooled::Heartbeat(p) => self.batch_last = Some(p),
            }
            self.read_to += 1;
        }
    }

    fn sink_commit(&mut self) {
        self.sink_read();
        self.applied.append(&mut self.batch);
        if let Some(p) = self.batch_last.clone() {
            self.checkpoint = Some((p.clone(), self.read_to));
            if self.ack_applied
                && let Position::Postgres(Lsn(l)) = p
            {
                self.confirmed = self.confirmed.max(l);
            }
        }
    }

    fn restart(&mut self) {
        // The server sends again everything whose commit record starts at or after the
        // confirmed position; the spool tail tells the source what it has.
        self.sent = self
            .commits
            .iter()
            .position(|&(_, start, _)| start >= self.confirmed)
            .unwrap_or(self.commits.len());
        self.resume_from = self
            .spool
            .iter()
            .map(|s| match s {
                Spooled::Txn { position, .. } | Spooled::Heartbeat(position) => match position {
                    Position::Postgres(Lsn(l)) => *l,
                    _ => unreachable!(),
                },
            })
            .max()
            .unwrap_or(0);
        self.batch.clear();
        self.batch_last = None;
        self.read_to = self.checkpoint.as_ref().map_or(0, |c| c.1);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Begin => {
                self.next_id += 1;
                self.open.push(self.next_id);
                self.record(40);
            }
            Op::Row(n) if !self.open.is_empty() => {
                self.record(n);
            }
            Op::Commit(t) if !self.open.is_empty() => {
                let id = self.open.remove(t % self.open.len());
                let (start, end) = self.record(32);
                self.commits.push((id, start, end));
                self.source_catch_up();
            }
            Op::Row(_) | Op::Commit(_) => {}
            Op::Other(n) => {
                self.record(n);
            }
            Op::Heartbeat => {
                self.source_catch_up();
                if self.wal_end > self.resume_from {
                    self.spool.push(Spooled::Heartbeat(pg(self.wal_end)));
                    self.resume_from = self.wal_end;
                    if !self.ack_applied {
                        self.confirmed = self.resume_from;
                    }
                }
            }
            Op::SinkCommit => self.sink_commit(),
            Op::Restart => {
                self.restart();
                self.source_catch_up();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_committed_transaction_is_applied_once_in_commit_order(
        ops in proptest::collection::vec(arb_op(), 1..120),
        ack_applied in any::<bool>(),
    ) {
        let mut w = World { ack_applied, ..World::default() };
        for op in ops {
            w.step(op);
        }
        // Everything open commits, ferry restarts once more and drains.
        while !w.open.is_empty() {
            w.step(Op::Commit(0));
        }
        w.step(Op::Restart);
        w.step(Op::SinkCommit);
        let committed: Vec<u32> = w.commits.iter().map(|c| c.0).collect();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in &w.applied {
            *counts.entry(*id).or_default() += 1;
        }
        for id in &committed {
            prop_assert_eq!(counts.get(id).copied().unwrap_or(0), 1, "transaction {} applied {:?} times", id, counts.get(id));
        }
        prop_assert_eq!(&w.applied, &committed);
    }
}

/// The reproduction of the lost transaction, step by step: T1 commits and ends at X, a heartbeat
/// at X, T2's commit record starts at X. Neither the source nor the sink may take T2 as covered.
#[test]
fn a_commit_starting_at_a_heartbeat_is_not_covered_by_it() {
    let x = 1000;
    let heartbeat = pg(x);
    assert!(!Lsn(x).covers_commit_at(Lsn(x)));
    assert!(Lsn(x).covers_commit_at(Lsn(x - 1)));
    // T2's position is where its commit record ends, past X.
    assert!(!heartbeat.covers(&pg(x + 32)));
    assert!(heartbeat.covers(&pg(x)));
}
