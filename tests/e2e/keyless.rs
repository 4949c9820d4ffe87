//! Attaching ferry never breaks the application's statements on a table without a replica
//! identity (no primary key, or `REPLICA IDENTITY NOTHING`): by default `check` and `run`
//! refuse before creating anything, naming the table and the choices; `keyless = "full"` gives
//! such tables `REPLICA IDENTITY FULL` (also one created while ferry runs); `keyless = "exclude"`
//! leaves them out of the publication. In each case the application's UPDATE and DELETE succeed.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::{FerryConfig, FerryRun};
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, v int);
    CREATE TABLE log (a int, b text);
    INSERT INTO accounts SELECT g, g FROM generate_series(1, 10) g;
    INSERT INTO log SELECT g, 'x' FROM generate_series(1, 10) g;";

/// The application's own statements on `table`: they must succeed.
async fn app_writes(c: &Client, table: &str) {
    c.batch_execute(&format!(
        "INSERT INTO {table} VALUES (100, 'n'); UPDATE {table} SET b = 'y' WHERE a = 100;
         DELETE FROM {table} WHERE a = 100;"
    ))
    .await
    .unwrap_or_else(|e| panic!("the application's statement on {table} failed: {e}"));
}

/// Waits until ferry has created its slot (it started streaming).
async fn wait_for_slot(s: &Client, ferry: &mut FerryRun) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while one::<i64>(s, "SELECT count(*) FROM pg_replication_slots").await == 0 {
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn one<T: tokio_postgres::types::FromSqlOwned>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_ferry_refuses_before_creating_anything() {
    let pg = Postgres::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(SCHEMA).await.unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let path = config.path();
    let (code, out, err) =
        ferry_tests::ferry::command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("error: public.log has no primary key"),
        "{out}"
    );
    assert!(out.contains("keyless"), "{out}");
    let (code, log) = config
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert_ne!(code, 0, "{log}");
    // `run` refuses with what `check` calls an error.
    assert!(log.contains("public.log has no primary key"), "{log}");
    assert!(log.contains("keyless = \"full\""), "{log}");
    let publications: i64 = one(&s, "SELECT count(*) FROM pg_publication").await;
    let slots: i64 = one(&s, "SELECT count(*) FROM pg_replication_slots").await;
    assert_eq!((publications, slots), (0, 0), "ferry created something");
    app_writes(&s, "log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_exclude_keep_the_application_working() {
    // keyless = "full": ferry sets REPLICA IDENTITY FULL, also on a table created later.
    let pg = Postgres::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(SCHEMA).await.unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "keyless = \"full\"").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_slot(&s, &mut ferry).await;
    let ident: String = one(
        &s,
        "SELECT relreplident::text FROM pg_class WHERE relname = 'log'",
    )
    .await;
    assert_eq!(ident, "f");
    app_writes(&s, "log").await;
    s.batch_execute("CREATE TABLE later (a int, b text); INSERT INTO later VALUES (1, 'a')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ident: String = one(
            &s,
            "SELECT relreplident::text FROM pg_class WHERE relname = 'later'",
        )
        .await;
        if ident == "f" {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app_writes(&s, "later").await;
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();

    // keyless = "exclude": the publication lists the other tables only.
    let pg = Postgres::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(SCHEMA).await.unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "keyless = \"exclude\"").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_slot(&s, &mut ferry).await;
    let published: String = one(
        &s,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables",
    )
    .await;
    assert_eq!(published, "accounts");
    app_writes(&s, "log").await;
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_created_while_ferry_runs_stops_it_with_the_reason() {
    let pg = Postgres::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_slot(&s, &mut ferry).await;
    s.batch_execute("CREATE TABLE later (a int, b text); INSERT INTO later VALUES (1, 'a')")
        .await
        .unwrap();
    let (code, log) = ferry.wait_exit(Duration::from_secs(30)).unwrap();
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("public.later (no primary key) is published"),
        "{log}"
    );
}
