//! The HTTP endpoint against a running ferry (PostgreSQL to PostgreSQL): `/metrics` counts match
//! the changes made, `/readyz` goes unready while a sink is over its lag limit and ready again when
//! it catches up, and unready for good when a sink halts; `/healthz` and `/status` answer.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::http::{get, sample, wait_http};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_changes_and_readyz_follows_lag_and_halts() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let s = source.connect().await;
    let r = replica.connect().await;
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v >= 0))";
    s.batch_execute(&ddl.replace(" CHECK (v >= 0)", ""))
        .await
        .unwrap();
    r.batch_execute(ddl).await.unwrap();
    let port = ferry_tests::process::free_port();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "max_lag_seconds = 2",
    )
    .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!("{text}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_http(port, "/readyz", 200, 60, &mut ferry);
    assert_eq!(get(port, "/healthz").0, 200);

    // 10 transactions of 10 inserts, then 25 updates and 5 deletes: 130 row changes.
    for txn in 0..10 {
        let values: Vec<String> = (0..10).map(|i| format!("({}, 1)", txn * 10 + i)).collect();
        s.batch_execute(&format!("INSERT INTO t VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
    s.batch_execute("UPDATE t SET v = 2 WHERE id < 25; DELETE FROM t WHERE id >= 95")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, m) = get(port, "/metrics");
        // The source publishes its counters every second.
        if sample(
            &m,
            "ferry_sink_rows_total{sink=\"replica\",type=\"postgres\"}",
        ) >= 130.0
            && sample(&m, "ferry_source_rows_total{source=\"postgres\"}") >= 130.0
        {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}\n{}", ferry.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        sample(
            &metrics,
            "ferry_sink_rows_total{sink=\"replica\",type=\"postgres\"}"
        ),
        130.0
    );
    assert_eq!(
        sample(&metrics, "ferry_source_rows_total{source=\"postgres\"}"),
        130.0
    );
    assert_eq!(
        sample(
            &metrics,
            "ferry_sink_transactions_total{sink=\"replica\",type=\"postgres\"}"
        ),
        12.0,
        "the (empty) snapshot, 10 inserts, the update and delete"
    );
    assert_eq!(
        sample(&metrics, "ferry_source_connected{source=\"postgres\"}"),
        1.0
    );
    assert!(sample(&metrics, "ferry_spool_segments") >= 1.0);
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_table_rows_total{source=\"postgres\",table=\"public.t\"}"
        ),
        130.0
    );
    assert_eq!(sample(&metrics, "ferry_snapshot_tables"), 1.0);
    assert_eq!(sample(&metrics, "ferry_snapshot_tables_done"), 1.0);
    assert_eq!(sample(&metrics, "ferry_snapshot_running"), 0.0);
    assert!(sample(&metrics, "ferry_process_resident_memory_bytes") > 1e6);
    assert!(metrics.contains("# TYPE ferry_sink_lag_seconds gauge"));
    let (code, status) = get(port, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["sinks"][0]["name"], "replica");
    assert_eq!(status["sinks"][0]["rows"], 130);
    assert_eq!(status["ready"], true);

    // A lock on the replica holds the sink back: over its 2 s limit it is not ready, and ready
    // again once it catches up.
    let (locker, conn) = tokio_postgres::connect(&replica.conn_str("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    s.batch_execute("INSERT INTO t VALUES (1000, 1)")
        .await
        .unwrap();
    let body = wait_http(port, "/readyz", 503, 30, &mut ferry);
    assert!(body.contains("behind"), "{body}");
    locker.batch_execute("COMMIT").await.unwrap();
    wait_http(port, "/readyz", 200, 30, &mut ferry);

    // A value the replica refuses halts the sink (on_error = halt): not ready, for good.
    s.batch_execute("INSERT INTO t VALUES (2000, -1)")
        .await
        .unwrap();
    let body = wait_http(port, "/readyz", 503, 30, &mut ferry);
    assert!(body.contains("halted"), "{body}");
    let (_, m) = get(port, "/metrics");
    assert_eq!(
        sample(&m, "ferry_sink_halted{sink=\"replica\",type=\"postgres\"}"),
        1.0
    );
}
