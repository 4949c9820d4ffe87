//! The harness's servers are real: a logical decoding change from PostgreSQL, a row event in
//! MariaDB's binlog, a message through Kafka. Each server is gone once its handle is dropped, also
//! when the test panics.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use ferry_tests::process::pid_alive;
use ferry_tests::{Kafka, MariaDb, Postgres};

fn wait_gone(pid: u32) -> bool {
    for _ in 0..200 {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn postgres_logical_decoding_sees_an_insert() {
    let pg = Postgres::start().unwrap();
    let (client, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");
    // One statement per call: a multi-statement query is one transaction, and a slot cannot be
    // created in a transaction that has written.
    for sql in [
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "CREATE PUBLICATION smoke FOR TABLE items",
        "SELECT pg_create_logical_replication_slot('smoke', 'pgoutput')",
        "INSERT INTO items VALUES (1, 'hello from the harness')",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('smoke', NULL, NULL,
                'proto_version', '1', 'publication_names', 'smoke')",
            &[],
        )
        .await
        .unwrap();
    let messages: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    // Begin, Relation, Insert, Commit.
    let kinds: Vec<u8> = messages.iter().map(|m| m[0]).collect();
    assert_eq!(kinds, b"BRIC".to_vec(), "pgoutput message kinds");
    let insert = &messages[2];
    assert!(
        insert
            .windows(b"hello from the harness".len())
            .any(|w| w == b"hello from the harness"),
        "insert carries the row"
    );
    let pid = pg.pid();
    drop(client);
    drop(pg);
    assert!(wait_gone(pid), "postgres still running after drop");
}

#[tokio::test]
async fn mariadb_binlog_records_a_row_event() {
    use mysql_async::prelude::*;
    let db = MariaDb::start().unwrap();
    let pool = mysql_async::Pool::new(db.url("").as_str());
    let mut conn = pool.get_conn().await.unwrap();
    let vars: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN
             ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'server_id')",
        )
        .await
        .unwrap();
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("log_bin"), Some("ON"));
    assert_eq!(get("binlog_format"), Some("ROW"));
    assert_eq!(get("binlog_row_image"), Some("FULL"));
    assert_eq!(get("binlog_row_metadata"), Some("FULL"));
    assert_eq!(get("server_id"), Some(db.server_id().to_string().as_str()));

    conn.query_drop(
        "CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, name TEXT);
         INSERT INTO app.items VALUES (1, 'hello from the harness');",
    )
    .await
    .unwrap();
    let status: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .unwrap();
    let file: String = status.get(0).unwrap();
    let events: Vec<mysql_async::Row> = conn
        .query(format!("SHOW BINLOG EVENTS IN '{file}'"))
        .await
        .unwrap();
    let described: Vec<(String, String)> = events
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(2).unwrap(),
                r.get::<String, _>(5).unwrap(),
            )
        })
        .collect();
    let table_map = described
        .iter()
        .position(|(t, info)| t == "Table_map" && info.replace('`', "").contains("app.items"))
        .unwrap_or_else(|| panic!("a table map for app.items in {described:?}"));
    assert!(
        described[table_map + 1].0.starts_with("Write_rows"),
        "row event after the table map: {described:?}"
    );
    drop(conn);
    pool.disconnect().await.unwrap();
    let pid = db.pid();
    drop(db);
    assert!(wait_gone(pid), "mariadbd still running after drop");
}

#[tokio::test]
async fn kafka_round_trips_a_message() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let kafka = Kafka::start().unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to("ferry.smoke")
                .key("k1")
                .payload("hello from the harness"),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!((delivery.partition, delivery.offset), (0, 0));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "smoke")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ferry.smoke", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let got = tokio::task::spawn_blocking(move || {
        for _ in 0..60 {
            if let Some(msg) = consumer.poll(Duration::from_secs(1)) {
                let msg = msg.unwrap();
                return Some((
                    msg.key().map(<[u8]>::to_vec),
                    msg.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("message consumed within a minute");
    assert_eq!(got.0.as_deref(), Some(&b"k1"[..]));
    assert_eq!(got.1.as_deref(), Some(&b"hello from the harness"[..]));
    drop(producer);
    let pid = kafka.pid();
    drop(kafka);
    assert!(wait_gone(pid), "kafka still running after drop");
}

#[test]
fn a_panicking_test_still_stops_its_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let pg = Postgres::start().unwrap();
        tx.send((pg.pid(), pg.dir().to_owned())).unwrap();
        panic!("test failure while the server runs");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let (pid, dir) = rx.recv().unwrap();
    assert!(wait_gone(pid), "postgres outlived the panicking test");
    assert!(!dir.exists(), "temporary directory removed");
}
