//! A replication slot at risk is visible before it is lost, and a lost slot ends ferry with the
//! gap error: with `max_slot_wal_keep_size = 1MB` and the replica's table locked (so the sink,
//! and with `ack = "applied"` the slot, stay behind), WAL moves on past what the slot may keep.
//! The slot turns `unreserved`: `/readyz` answers 503 saying so, `/metrics` shows it, `ferry
//! status` warns. A checkpoint then invalidates the slot: ferry exits 1 with the gap message
//! instead of reconnecting quietly.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::http::{get, sample, wait_http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreserved_slot_is_reported_and_a_lost_slot_ends_ferry_with_the_gap() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    // No margin: only `unreserved` and `lost` count here (1 MB leaves none to speak of).
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "min_safe_wal_mb = 0",
        "",
    )
    .unwrap();
    let port = config.with_http(None).unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_http(port, "/readyz", 200, 60, &mut ferry);
    s.batch_execute("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    ferry.wait_rows(&r, "t", 1).await;
    let metrics = get(port, "/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_slot_wal_status{source=\"postgres\",wal_status=\"reserved\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_retention_at_risk{source=\"postgres\"}"
        ),
        0.0
    );
    assert!(
        sample(
            &metrics,
            "ferry_source_slot_safe_wal_bytes{source=\"postgres\"}"
        ) > 0.0
    );

    // The sink's next batch waits on the replica's lock; the slot stays where it applied.
    let lock = replica.connect().await;
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    s.batch_execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(2, 20000) g")
        .await
        .unwrap();
    s.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    s.batch_execute("INSERT INTO t VALUES (20001, 'after the switch')")
        .await
        .unwrap();
    let status: String = s
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "unreserved", "the test did not move WAL far enough");

    let body = wait_http(port, "/readyz", 503, 30, &mut ferry);
    assert!(body.contains("unreserved"), "{body}");
    let metrics = get(port, "/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_slot_wal_status{source=\"postgres\",wal_status=\"unreserved\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_retention_at_risk{source=\"postgres\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &metrics,
            "ferry_source_slot_safe_wal_bytes{source=\"postgres\"}"
        ) < 0.0
    );
    let status = get(port, "/status").1;
    assert!(
        status.contains("\"slot_wal_status\":\"unreserved\""),
        "{status}"
    );
    let (code, out, err) =
        ferry_tests::ferry::command(&["status", "--config", config.path().to_str().unwrap()])
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("WARNING: the replication slot is unreserved"),
        "{out}{err}"
    );

    // A checkpoint removes the WAL: the slot is lost.
    s.batch_execute("CHECKPOINT").await.unwrap();
    let lost = Instant::now();
    let status: String = s
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "lost");
    // ferry reads the slot every 5 s and gives a sink held inside a batch 5 s to stop: 10 s by
    // design; the wait allows for a loaded machine.
    let (code, log) = ferry.wait_exit(Duration::from_secs(30)).unwrap();
    let took = lost.elapsed();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("wal_status = lost"), "{log}");
    assert!(log.contains("the source stopped"), "{log}");
    eprintln!("ferry exited {took:?} after the slot was lost");
    drop(lock);
}
