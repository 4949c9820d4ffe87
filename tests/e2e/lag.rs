//! The lag figures as `crate::lag` defines them, read from `/metrics`, `/status` and `ferry
//! status`, for a PostgreSQL and a MariaDB source into a PostgreSQL sink:
//!
//! - idle (nothing committed for a while): 0 seconds, and a few bytes at most;
//! - a stopped sink (its table locked on the replica): the seconds the unapplied change has
//!   waited (never more), bytes above 0, and back to 0 once the lock goes;
//! - under load: never more than the age of the oldest change written.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, FerryRun};
use ferry_tests::http::{get, sample, wait_http};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

const SECONDS: &str = "ferry_sink_lag_seconds{sink=\"replica\",type=\"postgres\"}";
const BYTES: &str = "ferry_sink_lag_bytes{sink=\"replica\",type=\"postgres\"}";

/// The `lag s` column of `ferry status` for sink `replica`.
fn status_seconds(config: &FerryConfig) -> f64 {
    let (code, out, err) =
        ferry_tests::ferry::command(&["status", "--config", config.path().to_str().unwrap()])
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("replica "))
        .unwrap_or_else(|| panic!("{out}"));
    line.split_whitespace()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lag seconds in {line:?}"))
}

/// The three phases, `write(sql)` committing on the source.
async fn phases<F, Fut>(
    config: &FerryConfig,
    port: u16,
    replica: &Postgres,
    ferry: &mut FerryRun,
    write: F,
) where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let r = replica.connect().await;
    wait_http(port, "/readyz", 200, 60, ferry);
    write("INSERT INTO t VALUES (1)".into()).await;
    ferry.wait_rows(&r, "t", 1).await;

    // Idle: nothing committed for 12 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = get(port, "/metrics").1;
    assert_eq!(sample(&metrics, SECONDS), 0.0, "{metrics}");
    let bytes = sample(&metrics, BYTES);
    assert!((0.0..65536.0).contains(&bytes), "idle lag bytes {bytes}");
    assert_eq!(status_seconds(config), 0.0);
    let status = get(port, "/status").1;
    assert!(status.contains("\"lag_seconds\":0.0"), "{status}");

    // A stopped sink: the change waits, and the figures say for how long.
    let lock = replica.connect().await;
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let committed = Instant::now();
    write("INSERT INTO t VALUES (2)".into()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = get(port, "/metrics").1;
    let waited = committed.elapsed().as_secs_f64();
    let lag = sample(&metrics, SECONDS);
    assert!(
        lag >= 3.0 && lag <= waited + 1.0,
        "lag {lag} s, the change has waited {waited:.1} s"
    );
    assert!(sample(&metrics, BYTES) > 0.0);
    let s = status_seconds(config);
    assert!(
        s >= 3.0 && s <= committed.elapsed().as_secs_f64() + 1.0,
        "{s}"
    );
    lock.batch_execute("COMMIT").await.unwrap();
    ferry.wait_rows(&r, "t", 2).await;

    // Under load: 50 transactions over 5 s; no figure exceeds the age of the oldest change.
    let load = Instant::now();
    let mut worst: f64 = 0.0;
    for i in 0..50 {
        write(format!("INSERT INTO t VALUES ({})", 100 + i)).await;
        if i % 5 == 0 {
            let lag = sample(&get(port, "/metrics").1, SECONDS);
            assert!(
                lag <= load.elapsed().as_secs_f64() + 1.0,
                "lag {lag} s after {:?} of load",
                load.elapsed()
            );
            worst = worst.max(lag);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ferry.wait_rows(&r, "t", 52).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&get(port, "/metrics").1, SECONDS) != 0.0 {
        assert!(Instant::now() < deadline, "the lag never returned to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("worst lag under load: {worst:.3} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_from_a_postgresql_source() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let s = source.connect().await;
    let ddl = "CREATE TABLE t (id int PRIMARY KEY)";
    s.batch_execute(ddl).await.unwrap();
    replica.connect().await.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let port = config.with_http(None).unwrap();
    let mut ferry = config.start(0).unwrap();
    let s = &s;
    phases(&config, port, &replica, &mut ferry, |sql| async move {
        s.batch_execute(&sql).await.unwrap();
    })
    .await;
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_from_a_mariadb_source() {
    let db = MariaDb::start().unwrap();
    let replica = Postgres::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    replica
        .connect()
        .await
        .batch_execute("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"postgres\"\nurl = \"{}\"",
        replica.url("postgres")
    );
    let config = FerryConfig::mysql(
        &db.url("app"),
        db.server_id() + 7,
        "tables = [\"app.*\"]",
        &sink,
    )
    .unwrap();
    let port = config.with_http(None).unwrap();
    let mut ferry = config.start(0).unwrap();
    let c = tokio::sync::Mutex::new(c);
    let c = &c;
    // The replica's table is app.t: the queries above name `t` on the search path.
    replica
        .connect()
        .await
        .batch_execute("ALTER ROLE postgres SET search_path = app, public")
        .await
        .unwrap();
    phases(&config, port, &replica, &mut ferry, |sql| async move {
        let sql = sql.replace("INTO t ", "INTO app.t ");
        c.lock().await.query_drop(sql).await.unwrap();
    })
    .await;
    ferry.stop().unwrap();
}
