//! The PostgreSQL replica sink against real source and replica servers: a mixed workload with
//! SIGKILLs ends with every table equal to the source, a replica restart is retried through,
//! a reader of the replica never sees half a source transaction, and a permanent error does what
//! `on_error` says.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::postgres::PostgresOptions;
use tokio_postgres::Client;

/// The one value a query without parameters returns.
async fn one<T: tokio_postgres::types::FromSqlOwned>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// A source and a replica server, and a client of each.
async fn servers() -> (Postgres, Postgres, Client, Client) {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    (source, replica, s, r)
}

/// Row count and an order-independent checksum of every row's text (a missing table is -1).
async fn checksum(client: &Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
                 FROM {table} t"
            ),
            &[],
        )
        .await;
    match row {
        Ok(row) => (row.get(0), row.get(1)),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => (-1, "missing".into()),
        Err(e) => panic!("checksum of {table}: {e}"),
    }
}

/// Waits until every table has the same checksum on both sides.
async fn wait_equal(source: &Client, replica: &Client, tables: &[&str], timeout: Duration) {
    wait_equal_or(source, replica, tables, timeout, &String::new).await
}

/// [`wait_equal`], with `log()` (ferry's log) in the failure message.
async fn wait_equal_or(
    source: &Client,
    replica: &Client,
    tables: &[&str],
    timeout: Duration,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut diff = Vec::new();
        for t in tables {
            let (a, b) = (checksum(source, t).await, checksum(replica, t).await);
            if a != b {
                diff.push(format!("{t}: source {a:?} replica {b:?}"));
            }
        }
        if diff.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica differs from source: {}\n{}",
            diff.join("; "),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(12,2) NOT NULL,
        doc text, tags text[], updated timestamptz);
    ALTER TABLE accounts ALTER doc SET STORAGE EXTERNAL;
    CREATE TABLE orders (a int, b text, qty int, PRIMARY KEY (a, b));
    CREATE TABLE items (id int PRIMARY KEY, account_id int REFERENCES accounts (id), v jsonb);
    CREATE TABLE fullrow (x int, y text);
    ALTER TABLE fullrow REPLICA IDENTITY FULL;
    CREATE TABLE bulk (id int PRIMARY KEY, v text);";

const TABLES: &[&str] = &["accounts", "orders", "items", "fullrow", "bulk"];

/// Source and replica servers with the schema on both and some rows on the source.
async fn setup(work_mem: &str) -> (Postgres, Postgres, Client, Client) {
    let source = Postgres::start_with(PostgresOptions {
        settings: vec![("logical_decoding_work_mem".into(), work_mem.into())],
        ..Default::default()
    })
    .unwrap();
    let replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute(SCHEMA).await.unwrap();
    r.batch_execute(SCHEMA).await.unwrap();
    s.batch_execute(
        "INSERT INTO accounts SELECT g, 'owner ' || g, 1000, repeat('d', 5000) || g,
             ARRAY['a', 'b' || g], now() FROM generate_series(1, 200) g;
         INSERT INTO orders SELECT g % 50, 'k' || g, g FROM generate_series(1, 300) g;
         INSERT INTO items SELECT g, g % 200 + 1, jsonb_build_object('n', g) FROM generate_series(1, 300) g;
         INSERT INTO fullrow SELECT g % 10, 'y' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    (source, replica, s, r)
}

/// One transaction of the mixed workload, number `i`: transfers (the total balance stays 200,000),
/// TOAST left unchanged, composite key changes, delete and re-insert, foreign keys, FULL identity
/// rows, now and then a truncate and a large transaction.
async fn workload_step(c: &Client, i: i32) {
    let a = i % 200 + 1;
    let b = (i * 7) % 200 + 1;
    let mut sql = format!(
        "BEGIN;
         UPDATE accounts SET balance = balance - 1, updated = now() WHERE id = {a};
         UPDATE accounts SET balance = balance + 1, tags = array_append(tags, '{i}') WHERE id = {b};
         UPDATE orders SET b = b || 'x' WHERE a = {} AND b = (SELECT min(b) FROM orders WHERE a = {});
         DELETE FROM items WHERE id = {};
         INSERT INTO items VALUES ({}, {a}, '{{\"i\": {i}}}') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
         UPDATE fullrow SET y = y || '.' WHERE ctid = (SELECT ctid FROM fullrow WHERE x = {} LIMIT 1);
         INSERT INTO fullrow VALUES ({}, 'n{i}');",
        i % 50,
        i % 50,
        i % 300 + 1,
        i % 300 + 1,
        i % 10,
        i % 10
    );
    if i % 97 == 0 {
        sql.push_str("TRUNCATE fullrow; INSERT INTO fullrow VALUES (1, 'after truncate');");
    }
    if i % 150 == 0 {
        let first = 1_000_000 + i * 10_000;
        sql.push_str(&format!(
            "INSERT INTO bulk SELECT g, 'bulk' FROM generate_series({first}, {}) g;
             DELETE FROM bulk WHERE id % 3 = 0;",
            first + 20_000
        ));
    }
    sql.push_str("COMMIT;");
    c.batch_execute(&sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_workload_with_sigkills_leaves_a_replica_equal_to_the_source() {
    let (source, replica, s, r) = setup("64kB").await;
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "max_batch_rows = 500",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = source.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                workload_step(&c, i).await;
            }
            i
        })
    };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for n in 0..4 {
        let ferry = config.start(n).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(500 + seed % 2000)).await;
        ferry.kill();
    }
    stop.store(true, Ordering::Relaxed);
    let steps = writer.await.unwrap();
    assert!(steps > 50, "the workload ran ({steps} transactions)");
    let mut ferry = config.start(99).unwrap();
    wait_equal_or(&s, &r, TABLES, Duration::from_secs(180), &|| {
        ferry.log_text()
    })
    .await;
    ferry.check_alive().unwrap();
    // No batch needed the change-by-change replay: set-based apply got every batch right.
    assert!(
        !ferry.log_text().contains("a batch failed"),
        "{}",
        ferry.log_text()
    );
    // Invariant of every source transaction.
    let total: String = one(&r, "SELECT sum(balance)::text FROM accounts").await;
    assert_eq!(total, "200000.00");
    // The slot is acknowledged only as far as the replica has applied, and follows it.
    let applied: String = one(
        &r,
        "SELECT position FROM ferry.checkpoints WHERE sink = 'replica'",
    )
    .await;
    assert!(applied.starts_with("pg:"), "{applied}");
    ferry.stop().unwrap();
    let confirmed: String = one(
        &s,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ferry'",
    )
    .await;
    let lsn = |t: &str| -> u64 {
        let (hi, lo) = t.trim_start_matches("pg:").split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let applied_now: String = one(
        &r,
        "SELECT position FROM ferry.checkpoints WHERE sink = 'replica'",
    )
    .await;
    assert!(
        lsn(&confirmed) <= lsn(&applied_now) + 1,
        "the slot ({confirmed}) is ahead of what the replica applied ({applied_now})"
    );

    // `ferry verify` agrees, and `ferry status` shows the sink's position.
    let config_path = config.path().display().to_string();
    let (code, out, err) =
        ferry_tests::ferry::command(&["verify", "--config", &config_path]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("equal").count(), TABLES.len(), "{out}");
    let (code, out, err) =
        ferry_tests::ferry::command(&["status", "--config", &config_path]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&applied_now), "{out}");
    // Caught up: nothing waits, so the lag in seconds is 0.
    let line = out.lines().find(|l| l.starts_with("replica")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[4], "0.0", "{out}");
    // A row changed behind ferry's back is found and named.
    r.batch_execute("UPDATE accounts SET owner = 'tampered' WHERE id = 7")
        .await
        .unwrap();
    let (code, out, err) =
        ferry_tests::ferry::command(&["verify", "--config", &config_path]).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("public.accounts on replica"), "{out}{err}");
    assert!(out.contains("DIFFERS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restart_is_retried_and_readers_never_see_half_a_transaction() {
    let (source, mut replica, s, r) = setup("64MB").await;
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_equal(&s, &r, TABLES, Duration::from_secs(60)).await;

    // A reader checks the source's invariant on the replica while transfers are applied.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let r = replica.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let total: String = one(&r, "SELECT sum(balance)::text FROM accounts").await;
                assert_eq!(total, "200000.00", "a reader saw half a source transaction");
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=300 {
        workload_step(&s, i).await;
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 20, "the reader ran ({reads} reads)");

    // The replica restarts while changes keep coming.
    drop(r);
    let writer = {
        let c = source.connect().await;
        tokio::spawn(async move {
            for i in 301..=600 {
                workload_step(&c, i).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    replica.restart().unwrap();
    writer.await.unwrap();
    let r = replica.connect().await;
    wait_equal(&s, &r, TABLES, Duration::from_secs(120)).await;
    ferry.check_alive().unwrap();
    assert!(
        ferry.log_text().contains("retrying"),
        "no retry in the log:\n{}",
        ferry.log_text()
    );
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_error_follows_on_error() {
    for policy in ["skip", "dead_letter", "halt"] {
        let (source, replica, s, r) = servers().await;
        s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
            .await
            .unwrap();
        // Only the replica refuses negative values.
        r.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v >= 0))")
            .await
            .unwrap();
        let config = FerryConfig::pg_to_pg(
            &source.url("postgres"),
            &replica.url("postgres"),
            "",
            &format!("on_error = \"{policy}\""),
        )
        .unwrap();
        s.batch_execute("INSERT INTO t VALUES (1, 1), (2, 2)")
            .await
            .unwrap();
        let mut ferry = config.start(0).unwrap();
        wait_equal(&s, &r, &["t"], Duration::from_secs(60)).await;
        // One transaction of enough rows to be written with COPY, one of them refused.
        s.batch_execute(
            "BEGIN; INSERT INTO t SELECT g, CASE WHEN g = 4 THEN -4 ELSE g END
                      FROM generate_series(3, 300) g; COMMIT;
             INSERT INTO t VALUES (1000, 1000);",
        )
        .await
        .unwrap();
        let mut applied: Vec<i32> = (1..=300).filter(|&i| i != 4).collect();
        applied.push(1000);
        let deadline = Instant::now() + Duration::from_secs(60);
        match policy {
            "halt" => {
                // The sink stops before the failing transaction; the process says why.
                loop {
                    let log = ferry.log_text();
                    if log.contains("sink halted") {
                        assert!(log.contains("public.t"), "{log}");
                        assert!(log.contains("id=Int(4)"), "{log}");
                        break;
                    }
                    assert!(Instant::now() < deadline, "no halt in the log:\n{log}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let got: Vec<i32> = r
                    .query("SELECT id FROM t ORDER BY id", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                assert_eq!(got, [1, 2], "nothing of or after the failing transaction");
                ferry.check_alive().unwrap();
                let (code, log) = ferry.terminate().unwrap();
                assert_eq!(code, 1, "a halted sink makes ferry exit 1: {log}");
                let path = config.path().display().to_string();
                let (_, out, err) =
                    ferry_tests::ferry::command(&["status", "--config", &path]).unwrap();
                assert!(out.contains("HALTED"), "{out}{err}");
                // The failing transaction waits: the lag in seconds is its age.
                let line = out.lines().find(|l| l.starts_with("replica")).unwrap();
                let fields: Vec<&str> = line.split_whitespace().collect();
                let lag: f64 = fields[4].parse().unwrap();
                assert!(lag > 0.0, "{out}");
                assert!(out.contains("id=Int(4)"), "{out}{err}");
            }
            _ => {
                loop {
                    let got: Vec<i32> = r
                        .query("SELECT id FROM t ORDER BY id", &[])
                        .await
                        .unwrap()
                        .iter()
                        .map(|row| row.get(0))
                        .collect();
                    if got == applied {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{policy}: replica has {got:?}:\n{}",
                        ferry.log_text()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ferry.check_alive().unwrap();
                ferry.stop().unwrap();
                let dead = config.spool_dir().join("dead-letter/replica.jsonl");
                if policy == "dead_letter" {
                    let text = std::fs::read_to_string(&dead).unwrap();
                    let lines: Vec<serde_json::Value> = text
                        .lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    assert_eq!(lines.len(), 1, "{text}");
                    assert_eq!(lines[0]["table"], "public.t");
                    assert!(
                        lines[0]["error"].as_str().unwrap().contains("check"),
                        "{text}"
                    );
                    assert_eq!(lines[0]["event"]["Insert"]["new"][1]["Int"], -4);
                } else {
                    assert!(!dead.exists());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_are_created_and_follow_schema_changes() {
    let (source, replica, s, r) = servers().await;
    s.batch_execute(
        "CREATE TABLE shop (id int PRIMARY KEY, name text, price numeric(10,2));
         INSERT INTO shop VALUES (1, 'a', 1.50), (2, 'b', 2.50);",
    )
    .await
    .unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let ferry = config.start(0).unwrap();
    wait_equal(&s, &r, &["shop"], Duration::from_secs(60)).await;
    s.batch_execute(
        "ALTER TABLE shop ADD COLUMN stock int;
         INSERT INTO shop VALUES (3, 'c', 3.50, 7);
         UPDATE shop SET stock = 1 WHERE id = 1;",
    )
    .await
    .unwrap();
    wait_equal(&s, &r, &["shop"], Duration::from_secs(60)).await;
    s.batch_execute(
        "ALTER TABLE shop DROP COLUMN name;
         ALTER TABLE shop ALTER COLUMN price TYPE numeric(12,3);
         INSERT INTO shop VALUES (4, 4.125, 2);",
    )
    .await
    .unwrap();
    wait_equal(&s, &r, &["shop"], Duration::from_secs(60)).await;
    let ty: String = one(
        &r,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'shop'::regclass AND attname = 'price'",
    )
    .await;
    assert_eq!(ty, "numeric(12,3)");

    // Columns added with a default: the rows that existed hold it on the source without any row
    // change saying so; the replica's existing rows get it too (a NULL for `plain`), and new
    // rows carry their own values. Ferry is stopped meanwhile, so the definitions it compares
    // with come from its spool.
    ferry.stop().unwrap();
    s.batch_execute(
        "ALTER TABLE shop ADD COLUMN qty int NOT NULL DEFAULT 7,
                         ADD COLUMN label text DEFAULT 'it''s \"new\", {x}',
                         ADD COLUMN since timestamptz DEFAULT now(),
                         ADD COLUMN plain text;
         INSERT INTO shop (id, price, stock) VALUES (6, 6, 6);
         INSERT INTO shop VALUES (7, 7, 7, 70, 'seven', '2024-02-29 12:00:00+00', 'p');",
    )
    .await
    .unwrap();
    let mut ferry = config.start(2).unwrap();
    wait_equal_or(&s, &r, &["shop"], Duration::from_secs(60), &|| {
        ferry.log_text()
    })
    .await;
    let got: i64 = one(
        &r,
        "SELECT count(*) FROM shop WHERE qty = 7 AND label = 'it''s \"new\", {x}' AND id < 6",
    )
    .await;
    assert_eq!(got, 4, "the existing rows got the added columns' value");
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();

    // With schema_changes = "halt", the next change of schema stops the sink and says why.
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace("create_tables = true", "schema_changes = \"halt\""),
    )
    .unwrap();
    let mut ferry = config.start(3).unwrap();
    s.batch_execute(
        "ALTER TABLE shop ADD COLUMN note text;
         INSERT INTO shop (id, price, stock, note) VALUES (5, 5, 5, 'x')",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ferry.log_text().contains("sink halted")
        && ferry.log_text().contains("schema_changes = \"halt\""))
    {
        assert!(Instant::now() < deadline, "no halt:\n{}", ferry.log_text());
        ferry.check_alive().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = ferry.terminate().unwrap();
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_replica_role_changes_apply_in_source_order_under_foreign_keys() {
    let (source, replica, s, r) = setup("64MB").await;
    // A role that may not set session_replication_role: the replica's foreign keys stay active.
    r.batch_execute(
        "CREATE ROLE app LOGIN; GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
         GRANT CREATE ON DATABASE postgres TO app;",
    )
    .await
    .unwrap();
    let sink_url = format!("postgres://app@127.0.0.1:{}/postgres", replica.port());
    let config = FerryConfig::pg_to_pg(&source.url("postgres"), &sink_url, "", "").unwrap();
    let mut ferry = config.start(0).unwrap();
    for i in 1..=200 {
        workload_step(&s, i).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for t in TABLES {
        while checksum(&s, t).await != checksum(&r, t).await {
            assert!(
                Instant::now() < deadline,
                "{t} differs:\n{}",
                ferry.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ferry.check_alive().unwrap();
    assert!(
        ferry.log_text().contains("applying change by change"),
        "{}",
        ferry.log_text()
    );
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_arrives_on_the_replica_as_it_is_on_the_source() {
    use ferry_tests::samples::{TYPES_DDL, types_insert};
    let (source, replica, s, r) = servers().await;
    s.batch_execute(TYPES_DDL).await.unwrap();
    r.batch_execute(TYPES_DDL).await.unwrap();
    // Rows through the snapshot, then through the stream, then updated (set-based upserts).
    s.batch_execute(&types_insert(0)).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_equal_or(&s, &r, &["types"], Duration::from_secs(60), &|| {
        ferry.log_text()
    })
    .await;
    s.batch_execute(&types_insert(10)).await.unwrap();
    s.batch_execute(
        "UPDATE types SET id = id + 100 WHERE id > 10; UPDATE types SET t = 'x' WHERE id = 1",
    )
    .await
    .unwrap();
    wait_equal_or(&s, &r, &["types"], Duration::from_secs(60), &|| {
        ferry.log_text()
    })
    .await;
    // Equal as text, column by column (the checksum covers the row text; this names a column).
    let dump = "SELECT string_agg(t::text, '|' ORDER BY id) FROM types t";
    let a: String = one(&s, dump).await;
    let b: String = one(&r, dump).await;
    assert_eq!(a, b);

    // Enough new rows in one transaction to be written with COPY: the text format for `types`
    // (numeric, intervals, arrays, … have no binary form in ferry), the binary format for a
    // table of only the types that have one, extremes and NULLs included.
    let bin_ddl = "CREATE TABLE bin (id int8 PRIMARY KEY, i2 int2, i4 int4, f4 real, f8 float8,
        b bool, t text, vc varchar(10), c char(3), d date, ts timestamp, ts3 timestamp(3),
        tstz timestamptz, by bytea, u uuid, j json, jb jsonb)";
    s.batch_execute(bin_ddl).await.unwrap();
    r.batch_execute(bin_ddl).await.unwrap();
    let mut txn = String::from("BEGIN;");
    for k in 0..40 {
        txn.push_str(&types_insert(1000 + 3 * k));
        txn.push(';');
    }
    txn.push_str(
        r#"INSERT INTO bin SELECT g, (g * 7 - 700)::int2, g * 100000, g / 3.0, g / 7.0, g % 2 = 0,
           'row ' || g, 'v' || g, 'c', DATE '2024-02-29' + g, TIMESTAMP '1999-12-31 23:59:59' + g * interval '1 h',
           TIMESTAMP '2024-01-01' + g * interval '1.2345 s', TIMESTAMPTZ '2024-01-01 00:00:00+05' + g * interval '1 min',
           int8send(g), md5(g::text)::uuid, json_build_object('g', g), jsonb_build_object('g', g, 'a', ARRAY[g])
         FROM generate_series(1, 200) g;
       INSERT INTO bin VALUES
         (1001, -32768, -2147483648, 'NaN', '-Infinity', true, E'tab\there\nnew \\ back \u2603', 'abc',
          'ab', 'infinity', '-infinity', '2000-01-01 00:00:00.1235', 'infinity', '\x00ff',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": 1, "a": null}'),
         (1002, 32767, 2147483647, 'Infinity', 1.5e300, false, '', 'x', 'xyz', '0001-01-01 BC',
          '0044-03-15 12:00:00 BC', 'infinity', '-infinity', '\x', '00000000-0000-0000-0000-000000000000',
          '[]', '[]'),
         (1003, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, NULL);
       COMMIT;"#,
    );
    s.batch_execute(&txn).await.unwrap();
    wait_equal_or(&s, &r, &["types", "bin"], Duration::from_secs(60), &|| {
        ferry.log_text()
    })
    .await;
    for table in ["types", "bin"] {
        let dump = format!("SELECT string_agg(t::text, '|' ORDER BY id) FROM {table} t");
        let a: String = one(&s, &dump).await;
        let b: String = one(&r, &dump).await;
        assert_eq!(a, b, "{table}");
    }
    let n: i64 = one(&r, "SELECT count(*) FROM types").await;
    assert_eq!(n, 126);
    let log = ferry.log_text();
    assert!(log.contains("COPY \"public\".\"bin\" ("), "{log}");
    assert!(log.contains("FROM STDIN (FORMAT binary)"), "{log}");
    assert!(log.contains("COPY \"public\".\"types\" ("), "{log}");
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
}

/// A sink role that is no superuser but may set `session_replication_role` (PostgreSQL 15's
/// `GRANT SET ON PARAMETER`) applies in batches; into a table with row-level security (which
/// COPY FROM refuses such a role) new rows go with INSERT, so no batch fails; a table the role
/// may not insert into refuses the COPY once, then its INSERTs follow `on_error`, and the sink
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_granted_replica_role_batches_and_row_level_security_takes_inserts() {
    let (source, replica, s, r) = servers().await;
    let ddl = "CREATE TABLE guarded (id int PRIMARY KEY, v text);
               CREATE TABLE open (id int PRIMARY KEY, v text);
               CREATE TABLE sealed (id int PRIMARY KEY, v text);";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    r.batch_execute(
        "CREATE ROLE applier LOGIN;
         GRANT SET ON PARAMETER session_replication_role TO applier;
         GRANT CREATE ON DATABASE postgres TO applier;
         GRANT ALL ON guarded, open TO applier;
         GRANT SELECT, UPDATE, DELETE ON sealed TO applier;
         ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
         CREATE POLICY everything ON guarded USING (true) WITH CHECK (true);",
    )
    .await
    .unwrap();
    let sink_url = replica.url("postgres").replace("postgres@", "applier@");
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &sink_url,
        "",
        "on_error = \"skip\"",
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    s.batch_execute(
        "BEGIN;
         INSERT INTO guarded SELECT g, 'g' || g FROM generate_series(1, 500) g;
         INSERT INTO open SELECT g, 'o' || g FROM generate_series(1, 500) g;
         COMMIT;",
    )
    .await
    .unwrap();
    wait_equal_or(
        &s,
        &r,
        &["guarded", "open"],
        Duration::from_secs(60),
        &|| ferry.log_text(),
    )
    .await;
    let log = ferry.log_text();
    assert!(log.contains("mode=\"batches\""), "{log}");
    assert!(!log.contains("replaying it change by change"), "{log}");
    assert!(log.contains("COPY \"public\".\"open\""), "{log}");
    assert!(!log.contains("COPY \"public\".\"guarded\""), "{log}");

    // No INSERT privilege: the COPY is refused, the session reconnects, the rows are skipped as
    // on_error says, and what follows arrives.
    s.batch_execute(
        "BEGIN;
         INSERT INTO sealed SELECT g, 's' || g FROM generate_series(1, 300) g;
         INSERT INTO open SELECT g, 'o' || g FROM generate_series(501, 800) g;
         COMMIT;
         INSERT INTO open VALUES (1000, 'after');",
    )
    .await
    .unwrap();
    wait_equal_or(&s, &r, &["open"], Duration::from_secs(60), &|| {
        ferry.log_text()
    })
    .await;
    let sealed: i64 = one(&r, "SELECT count(*) FROM sealed").await;
    assert_eq!(sealed, 0);
    let log = ferry.log_text();
    assert_eq!(
        log.matches("the target refused a COPY").count(),
        1,
        "refused once, then INSERT: {log}"
    );
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
}

/// A row the replica refuses in a later flush of a COPY that stays open across flushes (wide
/// rows fill a flush by bytes within a few thousand rows): the error still surfaces as the
/// replica's own, the batch is replayed to find the row, and the sink halts naming it, with
/// nothing of that transaction on the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_refused_in_a_later_flush_of_an_open_copy_halts_naming_it() {
    let (source, replica, s, r) = servers().await;
    s.batch_execute("CREATE TABLE wide (id int PRIMARY KEY, v int, pad text)")
        .await
        .unwrap();
    r.batch_execute("CREATE TABLE wide (id int PRIMARY KEY, v int CHECK (v >= 0), pad text)")
        .await
        .unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let ferry = config.start(0).unwrap();
    s.batch_execute("INSERT INTO wide VALUES (0, 0, 'first')")
        .await
        .unwrap();
    wait_equal(&s, &r, &["wide"], Duration::from_secs(60)).await;
    // About 22 kB a row: the 32 MiB flush bound is reached near row 1,500.
    s.batch_execute(
        "INSERT INTO wide SELECT g, CASE WHEN g = 2900 THEN -1 ELSE g END,
                repeat(md5(g::text), 700)
         FROM generate_series(1, 3000) g",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = ferry.log_text();
        if log.contains("sink halted") {
            assert!(log.contains("public.wide"), "{log}");
            assert!(log.contains("id=Int(2900)"), "{log}");
            assert!(
                log.matches("starting a COPY").count() == 1,
                "one COPY for the batch, written in several flushes: {log}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no halt:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n: i64 = one(&r, "SELECT count(*) FROM wide").await;
    assert_eq!(n, 1, "nothing of the refused transaction");
    let (code, _) = ferry.terminate().unwrap();
    assert_eq!(code, 1);
}
