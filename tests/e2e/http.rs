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
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "max_lag_seconds = 2",
    )
    .unwrap();
    let port = config.with_http(None).unwrap();
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

/// `POST /v1/<command>` with `[http] token`: refused without the token or with another one,
/// and `ferry ctl stop` stops ferry cleanly (exit 0). Without a token the routes are off and
/// `ferry ctl` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_need_the_token_and_ctl_stop_stops_cleanly() {
    use std::io::{Read, Write};
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY)";
    source.connect().await.batch_execute(ddl).await.unwrap();
    replica.connect().await.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let path = config.path();
    let path = path.to_str().unwrap();
    let (code, _, err) = ferry_tests::ferry::command(&["ctl", "stop", "--config", path]).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("[http]"), "{err}");
    let port = config.with_http(Some("t0ken-for-tests")).unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_http(port, "/readyz", 200, 60, &mut ferry);
    let post = |auth: &str| -> u16 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST /v1/stop HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(post(""), 401);
    assert_eq!(post("Authorization: Bearer wrong\r\n"), 401);
    // A GET is not a command.
    assert_eq!(get(port, "/v1/stop").0, 404);
    ferry.check_alive().unwrap();
    let (code, out, err) = ferry_tests::ferry::command(&["ctl", "stop", "--config", path]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("accepted"), "{out}");
    let (code, log) = ferry.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("stop requested over the control route"),
        "{log}"
    );
    assert!(!log.contains("t0ken-for-tests"), "{log}");
}
