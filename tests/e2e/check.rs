//! `ferry check` and the same checks at `ferry run`'s start, against real servers: a complete
//! setup passes; each missing prerequisite is one line saying what to change, exit 1, and
//! `ferry run` refuses to start on it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_tests::ferry::{FerryConfig, command};
use ferry_tests::postgres::PostgresOptions;
use ferry_tests::{Kafka, MariaDb, Postgres};
use mysql_async::prelude::Queryable;

fn check(config: &FerryConfig) -> (i32, String) {
    let path = config.path();
    let (code, out, err) = command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_and_sinks_pass_and_each_missing_prerequisite_is_named() {
    let pg = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let kafka = Kafka::start().unwrap();
    let (c, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (a int);
         CREATE ROLE plain LOGIN PASSWORD 'p'; GRANT SELECT ON t, nokey TO plain;",
    )
    .await
    .unwrap();
    let (r, conn) = tokio_postgres::connect(&replica.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    r.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = FerryConfig::pg_to_pg(
        &pg.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"events\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"x.{{table}}\"\n",
            kafka.bootstrap()
        ),
    )
    .unwrap();
    // A table without a primary key is an error by default (its updates and deletes would
    // fail on the source once published), and a warning once the config allows it.
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: public.nokey has no primary key"),
        "{out}"
    );
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replacen("[source]\n", "[source]\nkeyless = \"allow\"\n", 1),
    )
    .unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: wal_level = logical"), "{out}");
    assert!(out.contains("ok: 2 table(s) to capture"), "{out}");
    assert!(
        out.contains("warning: public.nokey has no primary key: published anyway"),
        "{out}"
    );
    assert!(
        out.contains("topic x.t will be created by the broker"),
        "{out}"
    );
    assert!(!out.contains("error:"), "{out}");

    // The replica without create_tables lacks a table; the source role cannot replicate.
    std::fs::write(
        config.path(),
        std::fs::read_to_string(config.path())
            .unwrap()
            .replace("create_tables = true", "")
            .replace(
                &pg.url("postgres"),
                &pg.url("postgres").replace("://postgres@", "://plain:p@"),
            ),
    )
    .unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: sink replica: target table public.nokey does not exist: create it, or set create_tables = true"),
        "{out}"
    );
    assert!(out.contains("neither REPLICATION nor superuser"), "{out}");
    // `ferry run` refuses on the same findings.
    let (code, log) = config
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("ferry cannot run"), "{log}");
    assert!(log.contains("public.nokey does not exist"), "{log}");
    // Refused before it touched anything: no slot, no publication, no ferry schema.
    let created: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots)
                  + (SELECT count(*) FROM pg_publication)
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "ferry created something on the source");
    let created: i64 = r
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "ferry created its schema on the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_an_error_with_the_fix() {
    let pg = Postgres::start_with(PostgresOptions {
        settings: vec![("wal_level".into(), "replica".into())],
        ..Default::default()
    })
    .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: wal_level is replica: set wal_level = logical in postgresql.conf and restart the server"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_source_settings_and_privileges_are_checked() {
    let db = MariaDb::start().unwrap();
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&db.url("")).unwrap())
        .await
        .unwrap();
    c.query_drop(
        "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY); CREATE TABLE app.nokey (a int);
         CREATE USER 'reader'@'%' IDENTIFIED BY 'r'; GRANT SELECT ON app.* TO 'reader'@'%';",
    )
    .await
    .unwrap();
    let config = FerryConfig::mysql(&db.url("app"), db.server_id() + 5, "", "").unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: binlog_row_metadata = FULL"), "{out}");
    assert!(
        out.contains("warning: app.nokey has no primary key"),
        "{out}"
    );

    c.query_drop("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
        .await
        .unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: binlog_row_metadata is MINIMAL: set binlog_row_metadata = FULL"),
        "{out}"
    );
    c.query_drop("SET GLOBAL binlog_row_metadata = 'FULL'")
        .await
        .unwrap();

    // An account without replication privileges, and ferry's server_id equal to the server's.
    let url = db.url("app").replace(
        &format!(
            "{}:{}",
            ferry_tests::mariadb::USER,
            ferry_tests::mariadb::PASSWORD
        ),
        "reader:r",
    );
    let config = FerryConfig::mysql(&url, db.server_id(), "", "").unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lacks REPLICATION SLAVE"), "{out}");
    assert!(out.contains("is the source server's own id"), "{out}");
    // A query ferry cannot run is an error that says so, never read as "nothing found".
    assert!(out.contains("error: SHOW SLAVE HOSTS failed"), "{out}");

    // A wrong password: one line from `check`, and `run` exits 1 instead of retrying.
    let url = db
        .url("app")
        .replace(ferry_tests::mariadb::PASSWORD, "wrong");
    let config = FerryConfig::mysql(&url, db.server_id() + 9, "", "").unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: cannot connect to the source"), "{out}");
    assert!(out.contains("Access denied"), "{out}");
    let (code, log) = config
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("Access denied"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
