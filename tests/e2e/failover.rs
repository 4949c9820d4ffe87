//! Failover of the source: a PostgreSQL primary replaced by its promoted streaming standby,
//! which has none of the primary's logical slots, is a gap ferry names with the way out; it never
//! silently takes a new snapshot or streams from a new slot.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_without_the_slot_is_a_gap_not_a_new_snapshot() {
    let mut primary = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let p = primary.connect().await;
    p.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let standby = Postgres::standby_of(&primary).unwrap();
    let config = FerryConfig::pg_to_pg(
        &primary.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let ferry = config.start(0).unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'while ferry runs' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    let r = replica.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&r).await != 150 {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    let s = standby.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&s).await != 150 {
        assert!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The failover: the primary is gone, the standby is promoted, ferry is pointed at it.
    primary.stop();
    s.query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    s.batch_execute("INSERT INTO t VALUES (151, 'on the new primary')")
        .await
        .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace(
            &format!("127.0.0.1:{}/", primary.port()),
            &format!("127.0.0.1:{}/", standby.port()),
        ),
    )
    .unwrap();
    let (code, log) = config
        .start(1)
        .unwrap()
        .wait_exit(Duration::from_secs(90))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("it is a promoted standby"), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("clearing the spool directory"), "{log}");
    // No slot was created on the new primary, and the replica was not copied again.
    let slots: i64 = s
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    assert_eq!(count(&r).await, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_source_on_another_server_is_position_lost_not_a_silent_resume() {
    use mysql_async::prelude::Queryable;
    let a = ferry_tests::MariaDb::start().unwrap();
    let b = ferry_tests::MariaDb::start().unwrap();
    for db in [&a, &b] {
        let mut c = db.connect().await;
        c.query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY, v text);
             INSERT INTO app.t VALUES (1, 'a');",
        )
        .await
        .unwrap();
    }
    let config = FerryConfig::mysql(&a.url("app"), a.server_id() + 1000, "", "").unwrap();
    let ferry = config.start(0).unwrap();
    let spool = config.spool_dir();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ferry.log_text().contains("initial snapshot: done") {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = a.connect().await;
    c.query_drop("INSERT INTO app.t VALUES (2, 'b')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ferry.stop().unwrap();
    assert!(spool.join("mysql-source.json").exists());

    // Another server behind the URL: its binlog positions are not the spool's.
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(config.path(), text.replace(&a.url("app"), &b.url("app"))).unwrap();
    let (code, log) = config
        .start(1)
        .unwrap()
        .wait_exit(Duration::from_secs(90))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("position lost"), "{log}");
}
