//! MariaDB with `log_bin_compress = ON`: the binlog holds compressed row and query events
//! (asserted with `SHOW BINLOG EVENTS`), and every insert, update and delete reaches a MariaDB
//! replica, compared row by row, across a restart of ferry. Before, these events were dropped
//! without a word.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::MariaDb;
use ferry_tests::ferry::FerryConfig;
use mysql_async::prelude::Queryable;

async fn rows(c: &mut mysql_async::Conn, table: &str) -> Vec<Vec<mysql_async::Value>> {
    match c
        .query::<mysql_async::Row, _>(format!("SELECT * FROM {table} ORDER BY 1"))
        .await
    {
        Ok(rs) => rs.into_iter().map(|r| r.unwrap()).collect(),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => Vec::new(),
        Err(e) => panic!("{table}: {e}"),
    }
}

/// The event types of every binlog file of the server.
async fn binlog_event_types(c: &mut mysql_async::Conn) -> Vec<String> {
    let files: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
    let mut types = Vec::new();
    for f in files {
        let name: String = f.get(0).unwrap();
        let evs: Vec<mysql_async::Row> = c
            .query(format!("SHOW BINLOG EVENTS IN '{name}'"))
            .await
            .unwrap();
        types.extend(evs.into_iter().map(|r| r.get::<String, _>(2).unwrap()));
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_binlog_events_all_arrive() {
    let src = MariaDb::start_with(&[
        "--log-bin-compress=ON".into(),
        "--log-bin-compress-min-len=10".into(),
    ])
    .unwrap();
    let dst = MariaDb::start().unwrap();
    let mut s = src.connect().await;
    s.query_drop(
        "CREATE DATABASE app;
         CREATE TABLE app.items (id int PRIMARY KEY, name varchar(200), qty int);",
    )
    .await
    .unwrap();
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url("")
    );
    let config = FerryConfig::mysql(&src.url("app"), src.server_id() + 1, "", &sink).unwrap();
    let ferry = config.start(0).unwrap();
    let mut d = dst.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The stream is being read once a first row has arrived.
    s.query_drop("INSERT INTO app.items VALUES (-1, 'first', 0)")
        .await
        .unwrap();
    while rows(&mut d, "app.items").await.len() != 1 {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 2,500 rows in 50 transactions, then updates and deletes, with a restart in between.
    for t in 0..50 {
        let values: Vec<String> = (0..50)
            .map(|i| {
                let id = t * 50 + i;
                format!("({id}, concat('item {id} ', repeat('x', 40)), {i})")
            })
            .collect();
        s.query_drop(format!("INSERT INTO app.items VALUES {}", values.join(",")))
            .await
            .unwrap();
    }
    ferry.stop().unwrap();
    s.query_drop(
        "UPDATE app.items SET qty = qty + 1000, name = concat(name, ' updated') WHERE id % 3 = 0;
         DELETE FROM app.items WHERE id % 7 = 0;",
    )
    .await
    .unwrap();
    let mut ferry = config.start(1).unwrap();
    converge(&mut s, &mut d, &mut ferry).await;
    // A statement (compressed too) and rows that use it, with ferry running: the MySQL source
    // reads a table's columns from the server when its rows arrive.
    s.query_drop(
        "ALTER TABLE app.items ADD COLUMN note varchar(50) DEFAULT NULL;
         UPDATE app.items SET note = 'a note that is long enough' WHERE id % 5 = 0;",
    )
    .await
    .unwrap();
    converge(&mut s, &mut d, &mut ferry).await;
    let types = binlog_event_types(&mut s).await;
    for kind in [
        "Write_rows_compressed_v1",
        "Update_rows_compressed_v1",
        "Delete_rows_compressed_v1",
        "Query_compressed",
    ] {
        assert!(
            types.iter().any(|t| t == kind),
            "no {kind} event in the binlog: {types:?}"
        );
    }
    let n = rows(&mut d, "app.items").await.len();
    assert_eq!(
        n,
        1 + 2500 - (2500 / 7 + 1),
        "every insert and delete arrived"
    );
    ferry.stop().unwrap();
}

async fn converge(
    s: &mut mysql_async::Conn,
    d: &mut mysql_async::Conn,
    ferry: &mut ferry_tests::ferry::FerryRun,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (a, b) = (rows(s, "app.items").await, rows(d, "app.items").await);
        if a == b {
            return;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "app.items differs: {} source rows, {} replica rows; first difference {:?}\n{}",
            a.len(),
            b.len(),
            a.iter().zip(&b).find(|(x, y)| x != y),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
