//! Sequences and identity counters on the replicas: after a switch to the replica, the
//! application's inserts get new ids instead of colliding, PostgreSQL to PostgreSQL and across
//! engines.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::ferry::FerryConfig;
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

use crate::archive::one;

/// Waits until `probe` on the replica reaches `want`.
async fn wait_pg(c: &tokio_postgres::Client, probe: &str, want: i64, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Option<i64> = one(c, probe).await;
        if got.is_some_and(|g| g >= want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{probe}: {got:?} < {want}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_serial_and_identity_sequences_follow_so_inserts_after_a_switch_succeed() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text);
         INSERT INTO orders (note) SELECT 'before' FROM generate_series(1, 100);
         INSERT INTO events (what) SELECT 'before' FROM generate_series(1, 50);",
    )
    .await
    .unwrap();
    // A sequence that counts down, on both sides (the replica's made by hand): "ahead" is lower.
    let refunds = "CREATE SEQUENCE refund_ids INCREMENT -1 START -1 MAXVALUE -1;
         CREATE TABLE refunds (id int PRIMARY KEY DEFAULT nextval('refund_ids'), note text);
         ALTER SEQUENCE refund_ids OWNED BY refunds.id;";
    s.batch_execute(refunds).await.unwrap();
    replica
        .connect()
        .await
        .batch_execute(refunds)
        .await
        .unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true\nsequences_seconds = 1",
    )
    .unwrap();
    let ferry = config.start(0).unwrap();
    // A workload, some of it rolled back (a sequence moves on without a row).
    for i in 0..30 {
        s.batch_execute(&format!(
            "INSERT INTO orders (note) VALUES ('during {i}');
             INSERT INTO events (what) VALUES ('during {i}');"
        ))
        .await
        .unwrap();
    }
    s.batch_execute("INSERT INTO refunds (note) SELECT 'r' FROM generate_series(1, 30)")
        .await
        .unwrap();
    s.batch_execute(
        "BEGIN; INSERT INTO orders (note) SELECT 'lost' FROM generate_series(1, 20); ROLLBACK;",
    )
    .await
    .unwrap();
    let orders_seq: i64 = one(&s, "SELECT last_value FROM orders_id_seq").await;
    assert_eq!(orders_seq, 150);
    let events_seq: i64 = one(
        &s,
        "SELECT max(last_value) FROM pg_sequences WHERE sequencename = 'events_id_seq'",
    )
    .await;
    let r = replica.connect().await;
    wait_pg(
        &r,
        "SELECT max(last_value) FROM pg_sequences WHERE sequencename = 'orders_id_seq'",
        orders_seq,
        || ferry.log_text(),
    )
    .await;
    wait_pg(
        &r,
        "SELECT max(last_value) FROM pg_sequences WHERE sequencename = 'events_id_seq'",
        events_seq,
        || ferry.log_text(),
    )
    .await;
    // Down to -30, not up to the largest key (-1), which would hand out -2 again.
    wait_pg(
        &r,
        "SELECT -max(last_value) FROM pg_sequences WHERE sequencename = 'refund_ids'",
        30,
        || ferry.log_text(),
    )
    .await;
    let rows: i64 = one(&r, "SELECT count(*) FROM orders").await;
    assert_eq!(rows, 130);
    ferry.stop().unwrap();

    // The switch: the application inserts into the replica, and gets new ids.
    let id: i32 = one(
        &r,
        "INSERT INTO orders (note) VALUES ('after the switch') RETURNING id",
    )
    .await;
    assert!(id > orders_seq as i32, "{id}");
    let id: i64 = one(
        &r,
        "INSERT INTO events (what) VALUES ('after the switch') RETURNING id",
    )
    .await;
    assert!(id > events_seq, "{id}");
    let id: i32 = one(
        &r,
        "INSERT INTO refunds (note) VALUES ('after the switch') RETURNING id",
    )
    .await;
    assert!(id < -30, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_follow_across_engines_both_ways() {
    // MariaDB AUTO_INCREMENT into a PostgreSQL identity sequence.
    let maria = MariaDb::start().unwrap();
    let pg = Postgres::start().unwrap();
    let mut m = maria.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int AUTO_INCREMENT PRIMARY KEY, note varchar(50));
         INSERT INTO shop.orders (note) VALUES ('a'), ('b'), ('c');",
    )
    .await
    .unwrap();
    let sink = format!(
        "[[sink]]\nname = \"pg\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n\
         sequences_seconds = 1\n",
        pg.url("postgres")
    );
    let config = FerryConfig::mysql(&maria.url("shop"), maria.server_id() + 1, "", &sink).unwrap();
    let ferry = config.start(0).unwrap();
    for i in 0..20 {
        m.query_drop(format!("INSERT INTO shop.orders (note) VALUES ('w{i}')"))
            .await
            .unwrap();
    }
    m.query_drop("DELETE FROM shop.orders WHERE id > 20")
        .await
        .unwrap();
    let p = pg.connect().await;
    wait_pg(
        &p,
        "SELECT max(last_value) FROM pg_sequences WHERE sequencename LIKE 'orders_id_seq'",
        23,
        || ferry.log_text(),
    )
    .await;
    ferry.stop().unwrap();
    let id: i32 = one(
        &p,
        "INSERT INTO shop.orders (note) VALUES ('after') RETURNING id",
    )
    .await;
    assert!(id > 23, "{id}");

    // A PostgreSQL serial into a MariaDB AUTO_INCREMENT.
    let source = Postgres::start().unwrap();
    let target = MariaDb::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE items (id serial PRIMARY KEY, sku text);
         INSERT INTO items (sku) SELECT 'x' FROM generate_series(1, 40);",
    )
    .await
    .unwrap();
    let config = FerryConfig::postgres(&source.url("postgres"), "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\n\
             create_tables = true\nsequences_seconds = 1\n",
            target.url("")
        ),
    )
    .unwrap();
    let ferry = config.start(0).unwrap();
    s.batch_execute(
        "BEGIN; INSERT INTO items (sku) SELECT 'y' FROM generate_series(1, 15); ROLLBACK;",
    )
    .await
    .unwrap();
    s.batch_execute("INSERT INTO items (sku) VALUES ('z')")
        .await
        .unwrap();
    let mut t = target.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next: Option<Option<u64>> = t
            .query_first(
                "SELECT AUTO_INCREMENT FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = 'public' AND TABLE_NAME = 'items'",
            )
            .await
            .unwrap();
        if next.flatten().is_some_and(|n| n > 56) {
            break;
        }
        assert!(Instant::now() < deadline, "{next:?}\n{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    t.query_drop("INSERT INTO public.items (sku) VALUES ('after')")
        .await
        .unwrap();
    let id: Option<u64> = t.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert!(id.unwrap() > 56, "{id:?}");
}
