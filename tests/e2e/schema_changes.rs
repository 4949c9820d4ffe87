//! Schema changes that lose data unless carried exactly: a column rename (its values must stay,
//! not become NULL under a new column), a table rename (its rows must follow) and a dropped table
//! (the replica's goes too), with ferry running and with ferry stopped across the DDL, from a
//! MariaDB source and from a PostgreSQL source with ferry's DDL trigger; and without the trigger,
//! a PostgreSQL column rename stops ferry with the reason instead of turning values into NULL.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, FerryRun};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;
use tokio_postgres::{Client, NoTls};

/// `SELECT *` of a table as text rows, with the column names first; `None` if it is missing.
async fn my_table(c: &mut mysql_async::Conn, table: &str) -> Option<Vec<Vec<String>>> {
    let (d, t) = table.split_once('.').unwrap();
    let cols: Vec<String> = c
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND \
             TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (d, t),
        )
        .await
        .unwrap();
    if cols.is_empty() {
        return None;
    }
    let rows: Vec<mysql_async::Row> = c
        .query(format!("SELECT * FROM {table} ORDER BY 1"))
        .await
        .unwrap();
    let mut out = vec![cols];
    for r in rows {
        out.push(r.unwrap().into_iter().map(|v| v.as_sql(true)).collect());
    }
    Some(out)
}

async fn my_converge(
    s: &mut mysql_async::Conn,
    d: &mut mysql_async::Conn,
    tables: &[&str],
    ferry: &mut FerryRun,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    'again: loop {
        for t in tables {
            let (a, b) = (my_table(s, t).await, my_table(d, t).await);
            if a != b {
                ferry.check_alive().unwrap();
                assert!(
                    Instant::now() < deadline,
                    "{t} differs:\nsource  {:?}\nreplica {:?}\n{}",
                    a.as_ref().map(|r| r.iter().take(3).collect::<Vec<_>>()),
                    b.as_ref().map(|r| r.iter().take(3).collect::<Vec<_>>()),
                    ferry.log_text()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue 'again;
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_renames_and_drops_arrive_exactly() {
    let src = MariaDb::start().unwrap();
    let dst = MariaDb::start().unwrap();
    let mut s = src.connect().await;
    s.query_drop(
        "CREATE DATABASE app;
         CREATE TABLE app.people (id int PRIMARY KEY, name varchar(40), city varchar(40));
         CREATE TABLE app.orders (id int PRIMARY KEY, amount decimal(10,2));
         CREATE TABLE app.scratch (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    for i in 0..200 {
        s.query_drop(format!(
            "INSERT INTO app.people VALUES ({i}, 'person {i}', 'city {}');
             INSERT INTO app.orders VALUES ({i}, {i}.50);
             INSERT INTO app.scratch VALUES ({i});",
            i % 7
        ))
        .await
        .unwrap();
    }
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url("")
    );
    let config = FerryConfig::mysql(&src.url("app"), src.server_id() + 1, "", &sink).unwrap();
    let mut ferry = config.start(0).unwrap();
    let mut d = dst.connect().await;
    my_converge(
        &mut s,
        &mut d,
        &["app.people", "app.orders", "app.scratch"],
        &mut ferry,
    )
    .await;

    // With ferry running: RENAME COLUMN, then CHANGE with a new name, then rows using them.
    s.query_drop(
        "ALTER TABLE app.people RENAME COLUMN name TO full_name;
         ALTER TABLE app.people CHANGE city town varchar(40);
         UPDATE app.people SET full_name = concat(full_name, '!') WHERE id % 10 = 0;
         INSERT INTO app.people VALUES (1000, 'new', 'x');",
    )
    .await
    .unwrap();
    my_converge(&mut s, &mut d, &["app.people"], &mut ferry).await;

    // With ferry stopped across the DDL: a table renamed, a column renamed, a table dropped.
    ferry.stop().unwrap();
    s.query_drop(
        "RENAME TABLE app.orders TO app.purchases;
         ALTER TABLE app.purchases RENAME COLUMN amount TO total;
         DROP TABLE app.scratch;
         INSERT INTO app.purchases VALUES (5000, 1.25);",
    )
    .await
    .unwrap();
    let mut ferry = config.start(1).unwrap();
    my_converge(&mut s, &mut d, &["app.people", "app.purchases"], &mut ferry).await;
    assert!(
        my_table(&mut d, "app.orders").await.is_none(),
        "the old name stays"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while my_table(&mut d, "app.scratch").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the dropped table stays on the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
}

/// The column names and every row of a table as text; `None` if it is missing.
async fn pg_table(c: &Client, table: &str) -> Option<(Vec<String>, Vec<String>)> {
    let (schema, name) = table.split_once('.').unwrap();
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if cols.is_empty() {
        return None;
    }
    let rows = c
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    Some((cols, rows))
}

async fn pg_converge(s: &Client, r: &Client, tables: &[&str], ferry: &mut FerryRun) {
    let deadline = Instant::now() + Duration::from_secs(60);
    'again: loop {
        for t in tables {
            let (a, b) = (pg_table(s, t).await, pg_table(r, t).await);
            if a != b {
                ferry.check_alive().unwrap();
                assert!(
                    Instant::now() < deadline,
                    "{t} differs:\nsource  {:?}\nreplica {:?}\n{}",
                    a.as_ref()
                        .map(|(c, r)| (c, r.iter().take(3).collect::<Vec<_>>())),
                    b.as_ref()
                        .map(|(c, r)| (c, r.iter().take(3).collect::<Vec<_>>())),
                    ferry.log_text()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue 'again;
            }
        }
        return;
    }
}

const PG_SCHEMA: &str = "
    CREATE TABLE people (id int PRIMARY KEY, name text, city text);
    CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2));
    CREATE TABLE scratch (id int PRIMARY KEY);
    INSERT INTO people SELECT g, 'person ' || g, 'city ' || g % 7 FROM generate_series(1, 1000) g;
    INSERT INTO orders SELECT g, g + 0.5 FROM generate_series(1, 1000) g;
    INSERT INTO scratch SELECT g FROM generate_series(1, 10) g;";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_renames_and_drops_arrive_exactly_with_the_ddl_trigger() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute(PG_SCHEMA).await.unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let path = config.path();
    let (code, out, err) = ferry_tests::ferry::command(&[
        "ddl-trigger",
        "install",
        "--config",
        path.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        ferry_tests::ferry::command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: the DDL trigger"), "{out}");
    let mut ferry = config.start(0).unwrap();
    let tables = ["public.people", "public.orders", "public.scratch"];
    pg_converge(&s, &r, &tables, &mut ferry).await;

    // With ferry running: a column renamed with data, and rows written right after.
    s.batch_execute(
        "ALTER TABLE people RENAME COLUMN name TO full_name;
         UPDATE people SET full_name = full_name || '!' WHERE id % 10 = 0;
         BEGIN; ALTER TABLE people RENAME COLUMN city TO town; INSERT INTO people VALUES (5000, 'n', 't'); COMMIT;",
    )
    .await
    .unwrap();
    pg_converge(&s, &r, &["public.people"], &mut ferry).await;

    // With ferry stopped across the DDL: a table renamed, a column renamed, a table dropped.
    ferry.stop().unwrap();
    s.batch_execute(
        "ALTER TABLE orders RENAME TO purchases;
         ALTER TABLE purchases RENAME COLUMN amount TO total;
         DROP TABLE scratch;
         INSERT INTO purchases VALUES (5000, 1.25);
         UPDATE purchases SET total = total + 1 WHERE id < 10;",
    )
    .await
    .unwrap();
    let mut ferry = config.start(1).unwrap();
    pg_converge(&s, &r, &["public.people", "public.purchases"], &mut ferry).await;
    assert!(
        pg_table(&r, "public.orders").await.is_none(),
        "the old name stays"
    );
    assert!(
        pg_table(&r, "public.scratch").await.is_none(),
        "the dropped table stays"
    );
    ferry.stop().unwrap();

    // The trigger never fails the application's DDL: even with its state table gone, a
    // non-superuser's DDL succeeds.
    s.batch_execute(
        "CREATE ROLE app LOGIN; GRANT CREATE ON SCHEMA public TO app;
         DROP TABLE ferry.ddl_columns;",
    )
    .await
    .unwrap();
    let app_url = source
        .conn_str("postgres")
        .replace("user=postgres", "user=app");
    let (app, conn) = tokio_postgres::connect(&app_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    app.batch_execute(
        "CREATE TABLE mine (a int PRIMARY KEY, b text); ALTER TABLE mine RENAME COLUMN b TO c;
         DROP TABLE mine;",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_trigger_a_postgres_column_rename_stops_ferry_with_the_reason() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute(PG_SCHEMA).await.unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    pg_converge(&s, &r, &["public.people", "public.orders"], &mut ferry).await;
    // A table rename needs no trigger: the table keeps its identity (its OID).
    s.batch_execute(
        "ALTER TABLE orders RENAME TO purchases; INSERT INTO purchases VALUES (5000, 1.25);",
    )
    .await
    .unwrap();
    pg_converge(&s, &r, &["public.purchases"], &mut ferry).await;
    assert!(
        pg_table(&r, "public.orders").await.is_none(),
        "the old name stays"
    );
    s.batch_execute(
        "ALTER TABLE people RENAME COLUMN name TO full_name;
         UPDATE people SET city = 'moved' WHERE id = 1;",
    )
    .await
    .unwrap();
    let (code, log) = ferry.wait_exit(Duration::from_secs(30)).unwrap();
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("ambiguous"), "{log}");
    assert!(log.contains("ddl-trigger install"), "{log}");
    // Nothing became NULL: the replica still has the old column with every value.
    let nulls: i64 = r
        .query_one("SELECT count(*) FROM people WHERE name IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 0);
}
