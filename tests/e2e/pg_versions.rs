//! The oldest and newest PostgreSQL ferry claims, as real servers (`tests/pg/<major>`, fetched by
//! `scripts/fetch-postgres-versions`): `ferry check` passes, and ferry copies existing rows, then
//! streams inserts, updates, deletes and a truncate from a server of that version into a database
//! of the same server, replica and source compared row by row. PostgreSQL 11 is the oldest (no
//! `messages` option, no streaming of transactions in progress, no `wal_status`, no generated
//! columns; 10 is refused: its logical replication does not carry TRUNCATE); 18 the newest
//! (`idle_replication_slot_timeout`, reported by `check`).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::postgres::PostgresOptions;

async fn rows(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT t::text FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn replicate_on(major: u32) {
    let pg = Postgres::start_with(PostgresOptions {
        version: Some(major),
        ..Default::default()
    })
    .unwrap();
    let s = pg.connect().await;
    let version: i32 = s
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version / 10_000, major as i32);
    s.batch_execute("CREATE DATABASE replica").await.unwrap();
    s.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(12,2), at timestamptz, j jsonb);
         INSERT INTO t SELECT g, 'before ' || g, g * 1.5, '2026-01-01'::timestamptz + g * interval '1 hour',
                              jsonb_build_object('g', g)
         FROM generate_series(1, 500) g",
    )
    .await
    .unwrap();
    let config = FerryConfig::pg_to_pg(
        &pg.url("postgres"),
        &pg.url("replica"),
        "snapshot = \"initial\"",
        "create_tables = true",
    )
    .unwrap();
    let path = config.path();
    let (code, out, err) =
        ferry_tests::ferry::command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "ferry check on PostgreSQL {major}:\n{out}{err}");
    if major >= 18 {
        assert!(
            out.contains("idle_replication_slot_timeout = 0"),
            "{out}{err}"
        );
    }
    assert!(out.contains("max_slot_wal_keep_size"), "{out}{err}");

    let mut ferry = config.start(0).unwrap();
    s.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT g, 'streamed ' || g, g, now(), '[1, 2]' FROM generate_series(501, 700) g;
         UPDATE t SET v = v || ' updated', j = j || '{\"u\": true}' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         COMMIT;
         UPDATE t SET id = id + 10000 WHERE id = 3;",
    )
    .await
    .unwrap();
    let r = tokio_postgres::connect(&pg.conn_str("replica"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(r.1);
    let r = r.0;
    let want = rows(&s).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The table appears when the sink creates it.
        let got: Vec<String> = match r.query("SELECT t::text FROM t ORDER BY id", &[]).await {
            Ok(v) => v.iter().map(|x| x.get(0)).collect(),
            Err(_) => Vec::new(),
        };
        if got == want {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "PostgreSQL {major}: the replica has {} rows, the source {}\n{}",
            got.len(),
            want.len(),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.batch_execute("TRUNCATE t; INSERT INTO t (id, v) VALUES (1, 'after truncate')")
        .await
        .unwrap();
    let want = rows(&s).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&r).await != want {
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_11_the_oldest_claimed() {
    replicate_on(11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_18_the_newest_claimed() {
    replicate_on(18).await;
}
