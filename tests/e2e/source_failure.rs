//! A source that fails for good is reported and ends ferry even while a sink cannot finish its
//! batch: here the slot is dropped behind ferry's back while the replica's table is locked, so
//! the sink waits inside a batch; ferry logs the reason at once and exits 1 with it instead of
//! sitting idle.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_while_a_sink_is_held_ends_ferry_with_the_reason() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let mut ferry = config.start(0).unwrap();
    s.batch_execute("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    ferry.wait_rows(&r, "t", 1).await;
    // The sink's next batch waits on the replica's lock.
    let lock = replica.connect().await;
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    s.batch_execute("INSERT INTO t SELECT g, 'b' FROM generate_series(2, 100) g")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The slot is dropped behind ferry's back (its walsender ended first).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = s
            .batch_execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = 'ferry' AND active_pid IS NOT NULL",
            )
            .await;
        if s.batch_execute("SELECT pg_drop_replication_slot('ferry')")
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, log) = ferry.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("the source stopped"), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    drop(lock);
}
