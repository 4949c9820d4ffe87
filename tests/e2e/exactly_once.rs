//! No committed transaction lost or applied twice between a PostgreSQL source and a PostgreSQL
//! replica, where positions meet: a transaction whose commit record starts exactly where a
//! heartbeat (the server's WAL end while ferry was idle) put the sink's checkpoint, with and
//! without a restart in between; and many concurrent, interleaved transactions with idle gaps
//! (so heartbeats fall between them) across repeated clean and killed restarts, compared row by
//! row.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::{FerryConfig, FerryRun};
use tokio_postgres::Client;

async fn one<T: tokio_postgres::types::FromSqlOwned>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Every row of `table` as text, in order.
async fn rows(c: &Client, table: &str) -> Vec<String> {
    match c
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => vec!["<missing>".into()],
        Err(e) => panic!("reading {table}: {e}"),
    }
}

/// Waits until every table holds the same rows on both sides; on timeout, fails naming the
/// first rows that differ.
async fn wait_same_rows(
    source: &Client,
    replica: &Client,
    tables: &[&str],
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut diff = Vec::new();
        for t in tables {
            let (a, b) = (rows(source, t).await, rows(replica, t).await);
            if a != b {
                let only_source: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(3).collect();
                let only_replica: Vec<_> = b.iter().filter(|r| !a.contains(r)).take(3).collect();
                diff.push(format!(
                    "{t}: {} rows on the source, {} on the replica; only on the source {only_source:?}, only on the replica {only_replica:?}",
                    a.len(),
                    b.len()
                ));
            }
        }
        if diff.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica differs from source: {}\n{}",
            diff.join("\n"),
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sink's checkpoint position on the replica, if it has one.
async fn checkpoint(replica: &Client) -> Option<String> {
    replica
        .query_opt(
            "SELECT position FROM ferry.checkpoints WHERE sink = 'replica'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Waits until the sink's checkpoint is at `position` (a heartbeat's, ferry being idle).
async fn wait_checkpoint(replica: &Client, position: &str, run: &FerryRun) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint(replica).await.as_deref() != Some(position) {
        assert!(
            Instant::now() < deadline,
            "the checkpoint never reached {position} (it is {:?})\n{}",
            checkpoint(replica).await,
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// T2 begins and inserts; T1 commits (its commit record ends at X); ferry, idle, writes a
/// heartbeat at X that the sink takes as its checkpoint; then T2 commits with its commit record
/// starting at X. T2 must reach the replica. With `restart`, ferry is stopped before T2 commits
/// and started after. Without, the replica's table is locked while T0 and T1 arrive, so the
/// sink's next batch holds T1 and the heartbeat after it, and commits with the heartbeat's
/// position as its checkpoint.
async fn heartbeat_boundary(restart: bool) {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    let ddl = "CREATE TABLE history (id int PRIMARY KEY, note text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let mut run = Some(config.start(0).unwrap());
    // Creating the slot waits for transactions in progress: T2 begins once it exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint(&r).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint\n{}",
            run.as_ref().unwrap().log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut exact = 0;
    for round in 0..3 {
        let t2 = source.connect().await;
        t2.batch_execute(&format!(
            "BEGIN; INSERT INTO history VALUES ({}, 't2')",
            round * 10 + 2
        ))
        .await
        .unwrap();
        let lock = if restart {
            None
        } else {
            let l = replica.connect().await;
            l.batch_execute("BEGIN; LOCK TABLE history IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            // T0 fills a batch that waits for the lock, so T1 and the heartbeat after it are
            // read into the next batch together.
            s.batch_execute(&format!(
                "INSERT INTO history VALUES ({}, 't0')",
                round * 10
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(l)
        };
        s.batch_execute(&format!(
            "INSERT INTO history VALUES ({}, 't1')",
            round * 10 + 1
        ))
        .await
        .unwrap();
        let x: String = one(&s, "SELECT pg_current_wal_lsn()::text").await;
        if let Some(l) = lock {
            // Heartbeats follow an idle source once a second.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            l.batch_execute("COMMIT").await.unwrap();
        }
        wait_checkpoint(&r, &format!("pg:{x}"), run.as_ref().unwrap()).await;
        if restart {
            run.take().unwrap().stop().unwrap();
        }
        // Nothing wrote WAL since: T2's commit record starts at X (the test says so when not).
        let before: String = one(&s, "SELECT pg_current_wal_lsn()::text").await;
        exact += usize::from(before == x);
        t2.batch_execute("COMMIT").await.unwrap();
        if restart {
            run = Some(config.start(round + 1).unwrap());
        }
        let log = || run.as_ref().unwrap().log_text();
        wait_same_rows(&s, &r, &["history"], &log).await;
    }
    assert!(
        exact > 0,
        "T2's commit never started exactly at the heartbeat's position"
    );
    run.unwrap().stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_starting_at_a_heartbeat_survives_a_restart() {
    heartbeat_boundary(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_starting_at_a_heartbeat_checkpoint_is_applied() {
    heartbeat_boundary(false).await;
}

const OLTP: &str = "
    CREATE TABLE warehouse (id int PRIMARY KEY, ytd numeric(14,2) NOT NULL);
    CREATE TABLE customer (w_id int, id int, balance numeric(14,2) NOT NULL, payments int NOT NULL,
        PRIMARY KEY (w_id, id));
    CREATE TABLE history (id bigserial PRIMARY KEY, w_id int, c_id int, amount numeric(10,2),
        at timestamptz DEFAULT now());
    CREATE TABLE orders (id bigint PRIMARY KEY, c_id int, lines int, status text);";

const OLTP_TABLES: &[&str] = &["warehouse", "customer", "history", "orders"];

/// One client: interleaved multi-statement transactions (payment, new order, delivery), with
/// pauses inside them and idle gaps between them.
async fn client_loop(mut c: Client, n: i64, stop: Arc<AtomicBool>, idle: Arc<AtomicBool>) {
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if idle.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        i += 1;
        let w = (n + i) % 4 + 1;
        let cid = (n * 31 + i * 7) % 50 + 1;
        let order = n * 1_000_000 + i;
        let pause = Duration::from_millis(((n * 13 + i * 17) % 40) as u64);
        let txn = c.transaction().await;
        let Ok(txn) = txn else { continue };
        let body = async {
            match i % 3 {
                0 => {
                    txn.batch_execute(&format!(
                        "UPDATE warehouse SET ytd = ytd + 5 WHERE id = {w};
                         UPDATE customer SET balance = balance - 5, payments = payments + 1
                           WHERE w_id = {w} AND id = {cid};"
                    ))
                    .await?;
                    tokio::time::sleep(pause).await;
                    txn.batch_execute(&format!(
                        "INSERT INTO history (w_id, c_id, amount) VALUES ({w}, {cid}, 5)"
                    ))
                    .await
                }
                1 => {
                    txn.batch_execute(&format!(
                        "INSERT INTO orders VALUES ({order}, {cid}, {}, 'new')",
                        i % 10 + 1
                    ))
                    .await?;
                    tokio::time::sleep(pause).await;
                    txn.batch_execute(&format!(
                        "UPDATE customer SET balance = balance + 1 WHERE w_id = {w} AND id = {cid}"
                    ))
                    .await
                }
                _ => {
                    txn.batch_execute(&format!(
                        "UPDATE orders SET status = 'delivered' WHERE id = {}",
                        order - 2
                    ))
                    .await?;
                    tokio::time::sleep(pause).await;
                    txn.batch_execute(&format!("DELETE FROM orders WHERE id = {}", order - 5))
                        .await
                }
            }
        };
        // Serialization and deadlock failures roll back; the source decides what committed.
        match body.await {
            Ok(()) => {
                let _ = txn.commit().await;
            }
            Err(_) => {
                let _ = txn.rollback().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_interleaved_transactions_with_idle_gaps_and_restarts_arrive_exactly() {
    oltp(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_interleaved_transactions_with_idle_gaps_arrive_exactly() {
    oltp(false).await;
}

/// Eight clients, six rounds of work and an idle gap each; with `restarts`, ferry is stopped
/// (cleanly or killed, in turn) after each round and started again.
async fn oltp(restarts: bool) {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute(OLTP).await.unwrap();
    r.batch_execute(OLTP).await.unwrap();
    s.batch_execute(
        "INSERT INTO warehouse SELECT g, 0 FROM generate_series(1, 4) g;
         INSERT INTO customer SELECT w, c, 100, 0 FROM generate_series(1, 4) w,
             generate_series(1, 50) c;",
    )
    .await
    .unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..8 {
        let c = source.connect().await;
        clients.push(tokio::spawn(client_loop(c, n, stop.clone(), idle.clone())));
    }
    let mut run = config.start(0).unwrap();
    for round in 1..=6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // An idle gap: heartbeats, which the sink takes as checkpoints, fall between commits.
        idle.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        idle.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300 * round as u64)).await;
        if !restarts {
            continue;
        }
        if round % 2 == 0 {
            run.kill();
        } else {
            run.stop().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        run = config.start(round).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let committed: i64 = one(&s, "SELECT count(*) FROM history").await;
    assert!(
        committed > 50,
        "the workload committed only {committed} payments"
    );
    let log = || run.log_text();
    wait_same_rows(&s, &r, OLTP_TABLES, &log).await;
    run.stop().unwrap();
}
