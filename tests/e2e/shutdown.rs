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
