//! The MySQL/MariaDB binlog source against a real MariaDB: values of every supported type through
//! the snapshot and the binlog alike, exact resume after a restart, DDL and TRUNCATE, refusals
//! (a server_id in use), and MariaDB replicated into PostgreSQL through the Postgres sink.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_proto::{Event, Position, Value};
use ferry_spool::{Offset, read_all};
use ferry_tests::ferry::FerryConfig;
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

pub(crate) fn id(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("id {other:?}"),
    }
}

pub(crate) fn events(dir: &Path) -> Vec<Event> {
    if !dir.exists() {
        return Vec::new();
    }
    match read_all(dir, Offset(0)) {
        Ok(v) => v.into_iter().map(|(_, e)| e).collect(),
        Err(ferry_spool::SpoolError::Empty(_)) => Vec::new(),
        Err(e) => panic!("reading the spool: {e}"),
    }
}

fn wait_for(dir: &Path, what: &str, timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let evs = events(dir);
        if done(&evs) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Purges every binlog before `current` (MariaDB purges only behind its binlog checkpoint, so
/// this may take a few tries).
async fn purge_to(c: &mut mysql_async::Conn, current: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.query_drop(format!("PURGE BINARY LOGS TO '{current}'"))
            .await
            .unwrap();
        let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
        let names: Vec<String> = logs.iter().map(|r| r.get(0).unwrap()).collect();
        if names.first().map(String::as_str) == Some(current) {
            return;
        }
        assert!(Instant::now() < deadline, "cannot purge: {names:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const TYPES: &str = "CREATE DATABASE app;
CREATE TABLE app.types (
  id int PRIMARY KEY,
  tiny tinyint, small_u smallint unsigned, big bigint, big_u bigint unsigned,
  dec_ decimal(30,10), f float, d double, b bit(10),
  name varchar(40) CHARACTER SET utf8mb4, l1 varchar(20) CHARACTER SET latin1,
  body text, bin varbinary(10), blb blob,
  day date, t time(6), dt datetime(6), ts timestamp(6) NULL, y year,
  e enum('small','large'), s set('x','y','z'), j json, g geometry
) ENGINE=InnoDB";

/// One row of every type; `n` varies the values.
fn types_insert(n: i64) -> String {
    format!(
        "INSERT INTO app.types VALUES ({n}, -{m}, 65535, -9223372036854775807, 18446744073709551615, \
         '-12345678901234567890.0123456789', 1.5, -2.25, b'1000000001', 'héllo ✓ {n}', 'café', \
         repeat('long text ', 50), x'00ff10', x'deadbeef', '2024-02-29', '-838:59:59.5', \
         '2024-02-29 12:34:56.123456', '2001-09-09 01:46:40.5', 2024, 'large', 'x,z', \
         '{{\"k\": [1, 2.5, \"v\"]}}', ST_GeomFromText('POINT(1 2)'))",
        m = n % 128
    )
}

/// The values a row written by [`types_insert`] must have in the spool.
fn check_types_row(row: &[Value], n: i64) {
    assert_eq!(row[0], Value::Int(n));
    assert_eq!(row[1], Value::Int(-(n % 128)));
    assert_eq!(row[2], Value::Int(65535));
    assert_eq!(row[3], Value::Int(-9_223_372_036_854_775_807));
    assert_eq!(row[4], Value::UInt(u64::MAX));
    assert_eq!(
        row[5],
        Value::Numeric("-12345678901234567890.0123456789".into())
    );
    assert_eq!(row[6], Value::Float(1.5));
    assert_eq!(row[7], Value::Float(-2.25));
    assert_eq!(
        row[8],
        Value::Other {
            type_name: "bit(10)".into(),
            text: "1000000001".into()
        }
    );
    assert_eq!(row[9], Value::Text(format!("héllo ✓ {n}")));
    assert_eq!(row[10], Value::Text("café".into()));
    assert_eq!(row[11], Value::Text("long text ".repeat(50)));
    assert_eq!(row[12], Value::Bytes(vec![0, 0xff, 0x10]));
    assert_eq!(row[13], Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(row[14], Value::Date(19_782));
    assert_eq!(
        row[15],
        Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 500_000)
    );
    assert_eq!(row[16], Value::Timestamp(1_709_210_096_123_456));
    assert_eq!(row[17], Value::TimestampTz(1_000_000_000_500_000));
    assert_eq!(row[18], Value::Int(2024));
    assert_eq!(row[19], Value::Text("large".into()));
    assert_eq!(row[20], Value::Text("x,z".into()));
    match &row[21] {
        Value::Json(j) => {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            assert_eq!(v, serde_json::json!({"k": [1, 2.5, "v"]}));
        }
        other => panic!("json column: {other:?}"),
    }
    // WKB of POINT(1 2): little-endian, type 1, x, y.
    let mut wkb = vec![1, 1, 0, 0, 0];
    wkb.extend(1.0f64.to_le_bytes());
    wkb.extend(2.0f64.to_le_bytes());
    assert_eq!(row[22], Value::Bytes(wkb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_through_snapshot_and_binlog_and_an_exact_resume() {
    let db = MariaDb::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop(TYPES).await.unwrap();
    c.query_drop(
        "CREATE TABLE app.log (id int PRIMARY KEY, v varchar(20)); \
         CREATE TABLE app.nokey (a int, b varchar(10)); \
         CREATE TABLE app.skipped (id int PRIMARY KEY)",
    )
    .await
    .unwrap();
    for n in 1..=3 {
        c.query_drop(types_insert(n)).await.unwrap();
    }
    c.query_drop("INSERT INTO app.nokey VALUES (1, 'a'), (1, 'a'), (2, NULL)")
        .await
        .unwrap();
    // A zero date: NULL by default (zero_dates = "null").
    c.query_drop("INSERT INTO app.log VALUES (0, 'before')")
        .await
        .unwrap();
    let config = FerryConfig::mysql(
        &db.url("app"),
        db.server_id() + 1,
        "exclude = [\"app.skipped\"]",
        "",
    )
    .unwrap();
    let spool = config.spool_dir();
    let mut ferry = config.start(0).unwrap();
    let t0 = Instant::now();
    wait_for(&spool, "the snapshot", Duration::from_secs(60), |e| {
        let done = e.iter().any(|e| matches!(e, Event::Commit(_)));
        if !done {
            ferry.check_alive().unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(55),
                "{}",
                ferry.log_text()
            );
        }
        done
    });
    // Streamed: more rows of every type, updates, deletes, a multi-statement transaction.
    for n in 4..=5 {
        c.query_drop(types_insert(n)).await.unwrap();
    }
    c.query_drop(
        "START TRANSACTION; \
         UPDATE app.types SET name = 'renamed', big_u = 1 WHERE id = 2; \
         DELETE FROM app.types WHERE id = 3; \
         INSERT INTO app.skipped VALUES (1); \
         UPDATE app.nokey SET b = 'z' WHERE a = 2; \
         COMMIT",
    )
    .await
    .unwrap();
    for i in 1..=50 {
        c.query_drop(format!("INSERT INTO app.log VALUES ({i}, 'v{i}')"))
            .await
            .unwrap();
    }
    wait_for(&spool, "row 50", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(50)))
    });
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
    // Written while ferry is down, read after the restart: each exactly once.
    for i in 51..=80 {
        c.query_drop(format!("INSERT INTO app.log VALUES ({i}, 'v{i}')"))
            .await
            .unwrap();
    }
    let mut ferry = config.start(1).unwrap();
    // The schema change comes once ferry has caught up: ferry reads column types from
    // information_schema, so a table altered while ferry is behind stops it (documented).
    let t0 = Instant::now();
    wait_for(&spool, "row 80", Duration::from_secs(60), |e| {
        let done = e
            .iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(80)));
        assert!(
            done || t0.elapsed() < Duration::from_secs(55),
            "{}",
            ferry.log_text()
        );
        done
    });
    c.query_drop("ALTER TABLE app.log ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.log VALUES (81, 'v81', 8)")
        .await
        .unwrap();
    c.query_drop("TRUNCATE TABLE app.nokey").await.unwrap();
    c.query_drop("INSERT INTO app.log VALUES (82, 'last', 9)")
        .await
        .unwrap();
    wait_for(&spool, "row 82", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(82)))
    });
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();

    let evs = events(&spool);
    let mut relations = BTreeMap::new();
    let mut inserts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut types_rows = BTreeMap::new();
    let mut log_ids = Vec::new();
    let mut open = false;
    let mut last_commit: Option<Position> = None;
    let mut truncated = false;
    for e in &evs {
        match e {
            Event::Begin(_) => {
                assert!(!open, "nested Begin");
                open = true;
            }
            Event::Commit(c) => {
                assert!(open);
                open = false;
                if let Some(prev) = &last_commit {
                    assert!(c.position > *prev, "commit positions increase");
                }
                last_commit = Some(c.position.clone());
            }
            Event::Relation(r) => {
                relations.insert(r.id, r.clone());
            }
            Event::Insert(i) => {
                let r = &relations[&i.relation];
                if r.name != "nokey" {
                    *inserts
                        .entry((r.name.clone(), format!("{:?}", i.new[0])))
                        .or_default() += 1;
                }
                if r.name == "types" {
                    types_rows.insert(id(&i.new[0]), i.new.clone());
                }
                if r.name == "log" {
                    log_ids.push(i.new[0].clone());
                }
            }
            Event::Update(u) => {
                let r = &relations[&u.relation];
                if r.name == "types" {
                    assert!(u.old.is_some());
                    types_rows.insert(id(&u.new[0]), u.new.clone());
                }
            }
            Event::Delete(d) => {
                let r = &relations[&d.relation];
                if r.name == "types" {
                    types_rows.remove(&id(&d.old.row()[0]));
                }
            }
            Event::Truncate(t) => {
                assert_eq!(relations[&t.relations[0]].name, "nokey");
                truncated = true;
            }
            _ => {}
        }
    }
    assert!(!open);
    assert!(truncated, "TRUNCATE became a Truncate event");
    assert!(relations.values().all(|r| r.name != "skipped"));
    // Every insert exactly once, across the snapshot, the stream and the restart.
    assert!(inserts.values().all(|&n| n == 1), "{inserts:?}");
    assert_eq!(log_ids.len(), 83, "log rows 0..=82");
    for (n, row) in &types_rows {
        if *n == 2 {
            assert_eq!(row[9], Value::Text("renamed".into()));
            assert_eq!(row[4], Value::UInt(1));
        } else {
            check_types_row(row, *n);
        }
    }
    let ids: Vec<i64> = types_rows.keys().copied().collect();
    assert_eq!(ids, [1, 2, 4, 5]);
    // The added column appears in a new definition of the same relation.
    let log = relations.values().find(|r| r.name == "log").unwrap();
    assert_eq!(log.columns.len(), 3, "{log:?}");
    assert!(matches!(last_commit, Some(Position::Binlog(_))));

    // A server_id in use is refused with the reason.
    let other = FerryConfig::mysql(&db.url("app"), db.server_id(), "", "").unwrap();
    let (code, log) = other
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("server_id"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_into_postgres_equals_the_source() {
    let db = MariaDb::start().unwrap();
    let pg = Postgres::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer varchar(40), \
           amount decimal(12,2), placed datetime(3), paid timestamp NULL, state enum('new','paid','gone'), \
           qty int unsigned, took time)",
    )
    .await
    .unwrap();
    let values: Vec<String> = (1..=500)
        .map(|n| {
            format!(
                "({n}, 'c{}', {n} * 1.25, '2024-01-01 00:00:00' + INTERVAL {n} MINUTE, NULL, 'new', {}, '{}')",
                n % 7,
                n % 5,
                // MySQL's TIME is a duration, beyond what a time of day holds.
                ["838:59:59", "-12:30:00", "01:02:03"][n as usize % 3]
            )
        })
        .collect();
    c.query_drop(format!(
        "INSERT INTO shop.orders VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    let (pgc, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pgc.batch_execute(
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer varchar(40), \
         amount numeric(12,2), placed timestamp(3), paid timestamptz, state text, qty bigint, \
         took interval)",
    )
    .await
    .unwrap();
    let config = FerryConfig::mysql(
        &db.url("shop"),
        db.server_id() + 7,
        "",
        &format!(
            "[[sink]]\nname = \"replica\"\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    // Concurrent changes while the snapshot and the stream run.
    for i in 0..40 {
        c.query_drop(format!(
            "START TRANSACTION; \
             UPDATE shop.orders SET state = 'paid', paid = '2024-06-01 10:00:00' + INTERVAL {i} SECOND WHERE id % 40 = {i}; \
             DELETE FROM shop.orders WHERE id = {}; \
             INSERT INTO shop.orders VALUES ({}, 'late', 9.99, NOW(3), NULL, 'new', 1, '-838:59:59'); \
             COMMIT",
            i * 3 + 1,
            1000 + i
        ))
        .await
        .unwrap();
    }
    c.query_drop("UPDATE shop.orders SET id = id + 10000 WHERE id = 2")
        .await
        .unwrap();
    // The replica converges to the source, compared row by row in a common text form.
    let source_rows: Vec<String> = c
        .query(
            "SELECT concat_ws('|', id, customer, amount, date_format(placed, '%Y-%m-%d %H:%i:%s.%f'), \
             ifnull(unix_timestamp(paid), 'null'), state, qty, took) FROM shop.orders ORDER BY id",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = pgc
            .query(
                "SELECT concat_ws('|', id, customer, amount, to_char(placed, 'YYYY-MM-DD HH24:MI:SS.US'), \
                 coalesce(extract(epoch from paid)::bigint::text, 'null'), state, qty, took) FROM shop.orders ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let target: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if target == source_rows {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "replica differs: {} rows vs {} source rows; first difference: {:?}\n{}",
            target.len(),
            source_rows.len(),
            target.iter().zip(&source_rows).find(|(a, b)| a != b),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(source_rows.len(), 500);
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_binlog_stops_ferry_with_the_reason() {
    let db = MariaDb::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = FerryConfig::mysql(&db.url("app"), db.server_id() + 3, "", "").unwrap();
    let spool = config.spool_dir();
    let ferry = config.start(0).unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1)").await.unwrap();
    wait_for(&spool, "row 1", Duration::from_secs(60), |e| {
        e.iter().any(|e| matches!(e, Event::Insert(_)))
    });
    ferry.stop().unwrap();
    // Written and purged while ferry is down: the binlog it needs is gone.
    c.query_drop("INSERT INTO app.t VALUES (2); FLUSH BINARY LOGS")
        .await
        .unwrap();
    // MariaDB purges a binlog only once its binlog checkpoint has moved past it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.query_drop("FLUSH BINARY LOGS").await.unwrap();
        let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        let newest: String = row.get(0).unwrap();
        c.query_drop(format!("PURGE BINARY LOGS TO '{newest}'"))
            .await
            .unwrap();
        let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
        let names: Vec<String> = logs.iter().map(|r| r.get(0).unwrap()).collect();
        if !names.iter().any(|n| n.ends_with(".000001")) {
            break;
        }
        assert!(Instant::now() < deadline, "cannot purge: {names:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run = config.start(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let early = run.log_text();
    let (code, log) = run
        .wait_exit(Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{early}"))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("purged"), "{log}");
    // Nothing was skipped: row 2 is not in the spool.
    assert!(
        !events(&spool)
            .iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(2)))
    );
}

/// TLS to MariaDB: a server that requires secure transport, its certificate from a CA made here.
/// ferry's URL asks for TLS with that CA (`require_ssl=true&ssl_ca=…`) and captures; with another
/// CA it stops with the verification error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_mariadb_that_requires_it() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::Builder::new()
        .prefix("ferry-mtls-")
        .tempdir()
        .unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferry test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = other_params.self_signed(&other_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "mariadb");
    let server = params
        .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let p = dir.path();
    std::fs::write(p.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p.join("other.pem"), other.pem()).unwrap();
    std::fs::write(p.join("server.pem"), server.pem()).unwrap();
    std::fs::write(p.join("server.key"), server_key.serialize_pem()).unwrap();
    ferry_tests::process::RunAs::service_user("mysql")
        .unwrap()
        .own(p)
        .unwrap();
    let arg = |k: &str, f: &str| format!("--{k}={}", p.join(f).display());
    let db = MariaDb::start_with(&[
        arg("ssl-ca", "ca.pem"),
        arg("ssl-cert", "server.pem"),
        arg("ssl-key", "server.key"),
        "--require-secure-transport=ON".to_owned(),
    ])
    .unwrap();
    db.sql_as_root("CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY); INSERT INTO app.t VALUES (1)")
        .unwrap();
    let url = |ca: &str| {
        format!(
            "{}?require_ssl=true&ssl_ca={}",
            db.url("app"),
            p.join(ca).display()
        )
    };
    let config = FerryConfig::mysql(&url("ca.pem"), db.server_id() + 11, "", "").unwrap();
    let spool = config.spool_dir();
    let mut ferry = config.start(0).unwrap();
    db.sql_as_root("INSERT INTO app.t VALUES (2)").unwrap();
    let t0 = Instant::now();
    wait_for(&spool, "rows over TLS", Duration::from_secs(60), |e| {
        let n = e.iter().filter(|e| matches!(e, Event::Insert(_))).count();
        assert!(
            n == 2 || t0.elapsed() < Duration::from_secs(55),
            "{}",
            ferry.log_text()
        );
        n == 2
    });
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
    let bad = FerryConfig::mysql(&url("other.pem"), db.server_id() + 12, "", "").unwrap();
    let (code, log) = bad
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

/// The binlog connection killed three times during a workload: ferry reconnects from the last
/// transaction it spooled, so every insert is in the spool exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_killed_binlog_connections_without_duplicates() {
    let db = MariaDb::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop("CREATE DATABASE app; CREATE TABLE app.log (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = FerryConfig::mysql(&db.url("app"), db.server_id() + 21, "", "").unwrap();
    let spool = config.spool_dir();
    let mut ferry = config.start(0).unwrap();
    wait_for(&spool, "the snapshot", Duration::from_secs(60), |e| {
        e.iter().any(|e| matches!(e, Event::Commit(_)))
    });
    let writer = {
        let mut w = db.connect().await;
        tokio::spawn(async move {
            for i in 1..=600 {
                w.query_drop(format!("INSERT INTO app.log VALUES ({i})"))
                    .await
                    .unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let mut kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ids: Vec<u64> = c
            .query(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
            )
            .await
            .unwrap();
        for id in ids {
            if c.query_drop(format!("KILL {id}")).await.is_ok() {
                kills += 1;
            }
        }
    }
    writer.await.unwrap();
    assert!(kills >= 2, "the binlog connection was killed {kills} times");
    wait_for(&spool, "row 600", Duration::from_secs(90), |e| {
        e.iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(600)))
    });
    ferry.check_alive().unwrap();
    assert!(
        ferry.log_text().contains("reconnecting"),
        "{}",
        ferry.log_text()
    );
    ferry.stop().unwrap();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for e in events(&spool) {
        if let Event::Insert(i) = e {
            *seen.entry(id(&i.new[0])).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 600);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "inserted more than once: {twice:?}");
}

/// Zero and partial dates (a permissive `sql_mode` stores them): a MariaDB replica keeps them; a
/// PostgreSQL sink writes NULL (the default, counted in a metric and logged once for the table)
/// or, with `zero_dates = "halt"`, refuses the change (here to its dead-letter file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_are_kept_on_mariadb_and_follow_each_postgres_sink() {
    use std::io::{Read, Write};
    let db = MariaDb::start().unwrap();
    let dst = MariaDb::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (pgc, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pgc.batch_execute("CREATE DATABASE strict").await.unwrap();
    let mut c = db.connect().await;
    c.query_drop(
        "CREATE DATABASE cal; CREATE TABLE cal.days (id int PRIMARY KEY, d date, t datetime)",
    )
    .await
    .unwrap();
    let port = ferry_tests::process::free_port();
    let sinks = format!(
        "[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n\n\
         [[sink]]\nname = \"pg\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n\n\
         [[sink]]\nname = \"strict\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n\
         zero_dates = \"halt\"\non_error = \"dead_letter\"\n\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\n",
        dst.url(""),
        pg.url("postgres"),
        pg.url("strict")
    );
    let config = FerryConfig::mysql(&db.url("cal"), db.server_id() + 3, "", &sinks).unwrap();
    let mut ferry = config.start(0).unwrap();
    c.query_drop(
        "SET SESSION sql_mode = '';
         INSERT INTO cal.days VALUES (1, '0000-00-00', '0000-00-00 00:00:00'),
           (2, '2026-00-10', '2026-05-00 10:00:00'), (3, '2024-01-02', '2024-01-02 03:04:05');
         UPDATE cal.days SET d = '0000-00-00' WHERE id = 3;",
    )
    .await
    .unwrap();
    let source: Vec<String> = c
        .query(
            "SELECT concat_ws('|', id, CAST(d AS char), CAST(t AS char)) FROM cal.days ORDER BY id",
        )
        .await
        .unwrap();
    let mut d = dst.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let target: Vec<String> = d
            .query("SELECT concat_ws('|', id, CAST(d AS char), CAST(t AS char)) FROM cal.days ORDER BY id")
            .await
            .unwrap_or_default();
        let pg_rows: Vec<String> = pgc
            .query(
                "SELECT concat_ws('|', id, coalesce(d::text, 'null'), coalesce(t::text, 'null'))
                 FROM cal.days ORDER BY id",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        if target == source
            && pg_rows == ["1|null|null", "2|null|null", "3|null|2024-01-02 03:04:05"]
        {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "maria {target:?} vs source {source:?}; postgres {pg_rows:?}\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(source[0].contains("0000-00-00"), "{source:?}");
    // Logged once for the table, and counted.
    let log = ferry.log_text();
    assert_eq!(
        log.matches("zero dates from MySQL/MariaDB become NULL")
            .count(),
        1,
        "{log}"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ferry_sink_zero_dates_total") && l.contains("\"pg\""))
        .unwrap_or_default()
        .to_owned();
    assert!(line.ends_with(" 5"), "{line}\n{metrics}");
    // The halting sink dead-lettered every change with a zero date; the last row's insert
    // arrived before its update made it one.
    let dead = std::fs::read_to_string(config.spool_dir().join("dead-letter").join("strict.jsonl"))
        .unwrap();
    assert_eq!(dead.lines().count(), 3, "{dead}");
    assert!(
        dead.contains("zero_dates = \\\"halt\\\"") || dead.contains("zero date"),
        "{dead}"
    );
    ferry.stop().unwrap();
}

/// Transactions of tables ferry does not capture move its saved position too, so binlogs purged
/// after ferry read past them are no gap: here ferry reads a stretch of other tables' writes in
/// a later binlog file, stops, the earlier files are purged, and it starts again and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_other_tables_move_the_position_past_purged_binlogs() {
    let db = MariaDb::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop(
        "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY);
         CREATE DATABASE other; CREATE TABLE other.noise (id int PRIMARY KEY)",
    )
    .await
    .unwrap();
    let config = FerryConfig::mysql(
        &db.url("app"),
        db.server_id() + 5,
        "tables = [\"app.*\"]",
        "",
    )
    .unwrap();
    let spool = config.spool_dir();
    let ferry = config.start(0).unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1)").await.unwrap();
    wait_for(&spool, "row 1", Duration::from_secs(60), |e| {
        e.iter().any(|e| matches!(e, Event::Insert(_)))
    });
    // Only other tables' writes, in a new binlog file, over more than a second.
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    let current: String = row.get(0).unwrap();
    for i in 0..30 {
        c.query_drop(format!("INSERT INTO other.noise VALUES ({i})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The saved position reaches the new file.
    wait_for(
        &spool,
        "a heartbeat in the new file",
        Duration::from_secs(30),
        |e| {
            e.iter().any(|e| {
                matches!(e, Event::Heartbeat(h)
                if matches!(&h.position, Position::Binlog(b) if b.file == current))
            })
        },
    );
    ferry.stop().unwrap();
    purge_to(&mut c, &current).await;
    let mut run = config.start(1).unwrap();
    c.query_drop("INSERT INTO app.t VALUES (2)").await.unwrap();
    wait_for(&spool, "row 2", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(2)))
    });
    run.check_alive().unwrap();
    run.stop().unwrap();
}

/// The binlog expiry and how close the binlog ferry resumes from is to being purged are
/// reported, `/readyz` turns unready below the configured margin, and a rotation alone (no
/// transaction after it) moves the saved position into the new file, so the old one may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_retention_is_reported_and_a_rotation_moves_the_position() {
    use ferry_tests::http::{get, sample, wait_http};
    let db = MariaDb::start().unwrap();
    let mut c = db.connect().await;
    c.query_drop(
        "SET GLOBAL binlog_expire_logs_seconds = 7200;
         CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY)",
    )
    .await
    .unwrap();
    let port = ferry_tests::process::free_port();
    let config = FerryConfig::mysql(
        &db.url("app"),
        db.server_id() + 6,
        "tables = [\"app.*\"]\nmin_binlog_margin_seconds = 8000",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
    )
    .unwrap();
    let spool = config.spool_dir();
    let mut ferry = config.start(0).unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1)").await.unwrap();
    wait_for(&spool, "row 1", Duration::from_secs(60), |e| {
        e.iter().any(|e| matches!(e, Event::Insert(_)))
    });
    // Unready for the retention warning (the published stats may say "not connected" for a
    // moment first: they are published once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let body = wait_http(port, "/readyz", 503, 30, &mut ferry);
        if body.contains("may be purged in") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("may be purged in"), "{body}");
    let metrics = get(port, "/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "ferry_source_binlog_expire_seconds{source=\"mysql\"}"
        ),
        7200.0
    );
    let margin = sample(
        &metrics,
        "ferry_source_binlog_margin_seconds{source=\"mysql\"}",
    );
    assert!((7000.0..=7200.0).contains(&margin), "{margin}");
    assert_eq!(
        sample(&metrics, "ferry_source_retention_at_risk{source=\"mysql\"}"),
        1.0
    );

    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    let current: String = row.get(0).unwrap();
    wait_for(
        &spool,
        "a heartbeat in the new file",
        Duration::from_secs(30),
        |e| {
            e.iter().any(|e| {
                matches!(e, Event::Heartbeat(h)
                if matches!(&h.position, Position::Binlog(b) if b.file == current))
            })
        },
    );
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
    // The old file goes; a restart resumes from the rotation's position in the new one.
    purge_to(&mut c, &current).await;
    let mut again = config.start(1).unwrap();
    c.query_drop("INSERT INTO app.t VALUES (2)").await.unwrap();
    wait_for(
        &spool,
        "row 2 after the restart",
        Duration::from_secs(60),
        |e| {
            e.iter()
                .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(2)))
        },
    );
    again.check_alive().unwrap();
    again.stop().unwrap();
}
