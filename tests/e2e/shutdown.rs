//! Graceful shutdown: SIGTERM during a workload stops ferry with exit 0 well within the grace
//! period, and the restart loses and duplicates nothing (in the spool and on the replica).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::{Event, Value};
use ferry_spool::{Offset, read_all};
use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_workload_exits_0_and_the_restart_loses_and_duplicates_nothing() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, conn) = tokio_postgres::connect(&source.conn_str("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (r, conn) = tokio_postgres::connect(&replica.conn_str("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let ddl = "CREATE TABLE log (id bigint PRIMARY KEY, v text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, conn) = tokio_postgres::connect(&source.conn_str("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.batch_execute(&format!("INSERT INTO log VALUES ({i}, 'v{i}')"))
                    .await
                    .unwrap();
            }
            i
        })
    };
    for n in 0..3 {
        let ferry = config.start(n).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let t0 = Instant::now();
        let (code, log) = ferry.terminate().unwrap();
        assert_eq!(code, 0, "{log}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "stopped in {:?}",
            t0.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let mut ferry = config.start(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n: i64 = r
            .query_one("SELECT count(*) FROM log", &[])
            .await
            .unwrap()
            .get(0);
        if n == written {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "replica has {n} of {written}\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    // Every insert is in the spool exactly once.
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, e) in read_all(config.spool_dir(), Offset(0)).unwrap() {
        if let Event::Insert(i) = e
            && let Value::Int(id) = i.new[0]
        {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert_eq!(seen.len() as i64, written);
    assert!(seen.values().all(|&n| n == 1), "duplicates in the spool");
}

/// A sink stuck in its batch (the replica's table locked) holds up a clean stop; a second signal
/// ends ferry at once with 130, and without one the grace period (`shutdown_grace_seconds`) ends
/// it with 1, each saying so. The process is ended by `main`, after the runtime gave up its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_or_the_grace_period_ends_a_stuck_stop() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    let ddl = "CREATE TABLE t (id int PRIMARY KEY)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let lock = replica.connect().await;
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for (n, grace) in [(0, 60), (1, 2)] {
        let config = FerryConfig::pg_to_pg(
            &source.url("postgres"),
            &replica.url("postgres"),
            &format!("slot = \"stuck_{n}\"\npublication = \"stuck_{n}\""),
            "",
        )
        .unwrap();
        let text = std::fs::read_to_string(config.path()).unwrap();
        std::fs::write(
            config.path(),
            format!(
                "shutdown_grace_seconds = {grace}\n{}",
                text.replace("name = \"replica\"", &format!("name = \"replica_{n}\""))
            ),
        )
        .unwrap();
        let mut ferry = config.start(n).unwrap();
        // Started, streaming, and the sink inside a batch it cannot finish.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ferry.log_text().contains("starting replication") {
            ferry.check_alive().unwrap();
            assert!(Instant::now() < deadline, "{}", ferry.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.batch_execute(&format!("INSERT INTO t VALUES ({n})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ferry.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if n == 0 {
            ferry.signal(libc::SIGTERM);
            let (code, log) = ferry.wait_exit(Duration::from_secs(20)).unwrap();
            assert_eq!(code, 130, "{log}");
            assert!(log.contains("second signal: exiting at once"), "{log}");
        } else {
            let (code, log) = ferry.wait_exit(Duration::from_secs(20)).unwrap();
            assert_eq!(code, 1, "{log}");
            assert!(log.contains("not stopped within the grace period"), "{log}");
        }
    }
    drop(lock);
}
