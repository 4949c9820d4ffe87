//! The MySQL/MariaDB replica sink against real servers: MariaDB into MariaDB (tables created by
//! the sink, a mixed multi-table workload, a 200,000-row transaction, a column added, ferry
//! SIGKILLed several times; the target ends equal to the source row for row), and PostgreSQL
//! into MariaDB with the type mapping, a value MySQL cannot hold going to the dead-letter file.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, FerryRun};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

/// Every row of `table`, ordered by its first column, as values.
async fn rows(c: &mut mysql_async::Conn, table: &str) -> Vec<Vec<mysql_async::Value>> {
    match c
        .query::<mysql_async::Row, _>(format!("SELECT * FROM {table} ORDER BY 1"))
        .await
    {
        Ok(rs) => rs.into_iter().map(|r| r.unwrap()).collect(),
        // Not created on the target yet.
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => Vec::new(),
        Err(e) => panic!("{table}: {e}"),
    }
}

/// Waits until every table has the same rows on both servers.
async fn converge(
    src: &mut mysql_async::Conn,
    dst: &mut mysql_async::Conn,
    tables: &[&str],
    ferry: &mut FerryRun,
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    'again: loop {
        for t in tables {
            let (a, b) = (rows(src, t).await, rows(dst, t).await);
            if a != b {
                ferry.check_alive().unwrap();
                assert!(
                    Instant::now() < deadline,
                    "{t} differs: {} source rows, {} target rows; first difference {:?}\n{}",
                    a.len(),
                    b.len(),
                    a.iter().zip(&b).find(|(x, y)| x != y),
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
async fn mariadb_into_mariadb_survives_kills_ddl_and_a_large_transaction() {
    let src = MariaDb::start().unwrap();
    let dst = MariaDb::start().unwrap();
    let mut s = src.connect().await;
    s.query_drop(
        "CREATE DATABASE app DEFAULT CHARACTER SET utf8mb4;
         CREATE TABLE app.items (id int PRIMARY KEY, name varchar(40), price decimal(12,2),
           qty int unsigned, big bigint unsigned, at datetime(6), seen timestamp(3) NULL,
           t time, kind enum('a','b','c'), tags set('x','y'), flags bit(5), doc json,
           raw varbinary(16), note text CHARACTER SET latin1, d date, y year);
         CREATE TABLE app.moves (id int PRIMARY KEY, item int, delta int);
         CREATE TABLE app.big (id int PRIMARY KEY, v varchar(20));
         CREATE TABLE app.digits (d int PRIMARY KEY);
         INSERT INTO app.digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9);",
    )
    .await
    .unwrap();
    let row = |i: i64| {
        format!(
            "({i}, 'item {i} ✓', {i}.25, {q}, 18446744073709551615, '2024-02-29 12:00:00.{f:06}', \
             '2001-09-09 01:46:40.5', '-30:00:01', 'b', 'x,y', b'10101', '{{\"n\": {i}}}', x'00ff', \
             'café', '2024-01-{day:02}', 2024)",
            q = i % 7,
            f = i % 1000,
            day = i % 28 + 1
        )
    };
    for i in 1..=50 {
        s.query_drop(format!("INSERT INTO app.items VALUES {}", row(i)))
            .await
            .unwrap();
    }
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url("")
    );
    let config = FerryConfig::mysql(&src.url("app"), src.server_id() + 1, "", &sink).unwrap();

    // A workload of multi-table transactions while ferry is killed three times.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut c = src.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 50i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.query_drop(format!(
                    "START TRANSACTION;
                     INSERT INTO app.items VALUES {};
                     UPDATE app.items SET qty = qty + 1, name = concat(name, '+') WHERE id = {};
                     DELETE FROM app.items WHERE id = {};
                     INSERT INTO app.moves VALUES ({i}, {}, {});
                     COMMIT",
                    row(i),
                    i / 2,
                    i - 40,
                    i / 3,
                    i % 5 - 2
                ))
                .await
                .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for n in 0..3 {
        let ferry = config.start(n).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(1500 + seed % 2000)).await;
        ferry.kill();
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // One transaction of 200,000 rows, then a key change, while ferry runs again.
    let mut ferry = config.start(3).unwrap();
    s.query_drop(
        "INSERT INTO app.big SELECT a.d + 10*b.d + 100*c.d + 1000*e.d + 10000*f.d + 100000*g.d, \
           concat('v', a.d, b.d, c.d) \
         FROM app.digits a, app.digits b, app.digits c, app.digits e, app.digits f, app.digits g \
         WHERE g.d < 2",
    )
    .await
    .unwrap();
    s.query_drop("UPDATE app.items SET id = id + 100000 WHERE id = 45")
        .await
        .unwrap();
    let mut d = dst.connect().await;
    let tables = ["app.items", "app.moves", "app.big", "app.digits"];
    converge(&mut s, &mut d, &tables, &mut ferry, 180).await;
    assert_eq!(rows(&mut d, "app.big").await.len(), 200_000);

    // A column added (once ferry has caught up: see the source's documented limit; without a
    // default, since the binlog does not carry the backfill of existing rows), then more changes
    // that use it.
    s.query_drop("ALTER TABLE app.moves ADD COLUMN memo varchar(20)")
        .await
        .unwrap();
    s.query_drop("INSERT INTO app.moves VALUES (1000000, 1, 1, 'added'); UPDATE app.moves SET memo = 'u' WHERE id < 60")
        .await
        .unwrap();
    converge(&mut s, &mut d, &tables, &mut ferry, 60).await;
    let cols: Vec<String> = d
        .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'moves' ORDER BY ORDINAL_POSITION")
        .await
        .unwrap();
    assert_eq!(cols, ["id", "item", "delta", "memo"]);
    // A table renamed: the replica's table is renamed with its rows, and later rows follow.
    s.query_drop("RENAME TABLE app.moves TO app.moved; INSERT INTO app.moved VALUES (1000001, 2, 2, 'after')")
        .await
        .unwrap();
    let tables = ["app.items", "app.moved", "app.big", "app.digits"];
    converge(&mut s, &mut d, &tables, &mut ferry, 60).await;
    let gone: Option<i64> = d
        .query_first("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'moves'")
        .await
        .unwrap();
    assert_eq!(gone, Some(0), "the old name is gone on the replica");

    // `ferry verify` agrees, and finds a row changed behind ferry's back.
    let path = config.path();
    let (code, out, err) =
        ferry_tests::ferry::command(&["verify", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("app.big"), "{out}");
    assert_eq!(out.matches("equal").count(), 4, "{out}");
    // `ferry status` shows the binlog position and the sink's checkpoint on its target.
    let (code, out, err) =
        ferry_tests::ferry::command(&["status", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("source: binlog at mysql-bin."), "{out}");
    assert!(out.contains("holds the source up to mysql-bin."), "{out}");
    let line = out.lines().find(|l| l.starts_with("replica")).unwrap();
    assert!(
        line.contains("mysql") && line.contains("binlog:mysql-bin."),
        "{out}"
    );
    ferry.stop().unwrap();
    d.query_drop("UPDATE app.big SET v = 'tampered' WHERE id = 123456")
        .await
        .unwrap();
    let (code, out, err) =
        ferry_tests::ferry::command(&["verify", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DIFFERS (1 of 5 chunks)"), "{out}");
    assert!(err.contains("app.big on replica"), "{err}");
    // The checkpoint is on the target, in ferry.checkpoints.
    let cp: Option<String> = d
        .query_first("SELECT position FROM ferry.checkpoints WHERE sink = 'replica'")
        .await
        .unwrap();
    assert!(cp.unwrap().starts_with("binlog:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_into_mariadb_maps_types_and_dead_letters_what_mysql_cannot_hold() {
    let pg = Postgres::start().unwrap();
    let dst = MariaDb::start().unwrap();
    let (pgc, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pgc.batch_execute(
        "CREATE TABLE acct (id bigint PRIMARY KEY, name character varying(40), ok boolean,
           amount numeric(14,4), ratio double precision, born date, at timestamptz,
           local timestamp(3), blob bytea, uid uuid, doc jsonb, tags int[], memo text);
         CREATE TABLE odd (id int PRIMARY KEY, span interval);
         INSERT INTO acct SELECT g, 'n' || g, g % 2 = 0, g * 1.0001, g / 3.0, DATE '2020-01-01' + g,
           TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 minute', TIMESTAMP '2024-05-05 10:00:00.123',
           '\\x00ff'::bytea, '2f1e6a52-0c5b-4a39-9c4a-0ddc1f1e2a3b', '{\"a\": 1}', ARRAY[g, 2], NULL
         FROM generate_series(1, 200) g;
         INSERT INTO odd VALUES (1, '1 day'), (2, NULL);
         CREATE TABLE precise (id int PRIMARY KEY, n numeric, f float8[]);
         INSERT INTO precise VALUES (1, 1.5, '{1.5, 2}'),
           (2, -0.0000000000000000000000000000001, '{1}'), (3, 1, '{NaN, 1}');",
    )
    .await
    .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\n\
             create_tables = true\non_error = \"dead_letter\"\n",
            dst.url("")
        ),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    pgc.batch_execute(
        "UPDATE acct SET name = 'renamed', memo = 'm' WHERE id <= 10;
         DELETE FROM acct WHERE id > 190;
         UPDATE acct SET id = id + 1000 WHERE id = 100;
         INSERT INTO odd VALUES (3, NULL);",
    )
    .await
    .unwrap();
    let source: Vec<String> = pgc
        .query(
            "SELECT concat_ws('|', id, name, ok::int, amount, to_char(born, 'YYYY-MM-DD'), \
             to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
             to_char(local, 'YYYY-MM-DD HH24:MI:SS.US'), encode(blob, 'hex'), uid, \
             coalesce(memo, 'null')) FROM acct ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut d = dst.connect().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let target: Vec<String> = d
            .query(
                "SELECT concat_ws('|', id, name, ok, amount, date_format(born, '%Y-%m-%d'), \
                 date_format(`at`, '%Y-%m-%d %H:%i:%s.%f'), date_format(`local`, '%Y-%m-%d %H:%i:%s.%f'), \
                 lower(hex(`blob`)), uid, ifnull(memo, 'null')) FROM public.acct ORDER BY id",
            )
            .await
            .unwrap_or_default();
        if target == source {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "acct differs ({} vs {} rows): {:?}\n{}",
            target.len(),
            source.len(),
            target.iter().zip(&source).find(|(a, b)| a != b),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The mapped types, and values that round-trip through them.
    let types: Vec<(String, String)> = d
        .query(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = 'public' AND TABLE_NAME = 'acct' ORDER BY ORDINAL_POSITION",
        )
        .await
        .unwrap();
    let t: std::collections::HashMap<_, _> = types.into_iter().collect();
    assert_eq!(t["amount"], "decimal(14,4)");
    assert_eq!(t["name"], "varchar(40)");
    assert_eq!(t["uid"], "char(36)");
    assert_eq!(t["blob"], "longblob");
    let (doc, tags): (String, String) = d
        .query_first("SELECT doc, tags FROM public.acct WHERE id = 5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&doc).unwrap(),
        serde_json::json!({"a": 1})
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&tags).unwrap(),
        serde_json::json!([5, 2])
    );
    // An interval has no MySQL type: that row is dead-lettered, the others arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<i32> = d
            .query("SELECT id FROM public.odd ORDER BY id")
            .await
            .unwrap_or_default();
        if ids == [2, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "odd ids {ids:?}\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Values MySQL would round or cannot hold are refused, never rounded or turned into null.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<(i32, String)> = d
            .query("SELECT id, CAST(n AS char) FROM public.precise ORDER BY id")
            .await
            .unwrap_or_default();
        if rows.len() == 1 {
            assert_eq!(rows[0].0, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "precise {rows:?}\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead = std::fs::read_to_string(config.spool_dir().join("dead-letter").join("maria.jsonl"))
        .unwrap();
    assert_eq!(dead.lines().count(), 3, "{dead}");
    assert!(dead.contains("interval"), "{dead}");
    assert!(dead.contains("DECIMAL(65,30)"), "{dead}");
    assert!(dead.contains("no JSON value"), "{dead}");
    // `ferry status` gives a MariaDB sink fed by PostgreSQL its lag in bytes, as it does a
    // PostgreSQL sink (it showed "-").
    let (code, out, err) =
        ferry_tests::ferry::command(&["status", "--config", config.path().to_str().unwrap()])
            .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("maria "))
        .unwrap_or_else(|| panic!("{out}"));
    let lag: Vec<&str> = line.split_whitespace().collect();
    assert!(lag[3].parse::<u64>().is_ok(), "lag bytes in {line:?}");
    ferry.stop().unwrap();
}
