//! The archive and point-in-time restore: an accidental DELETE undone by restoring to just
//! before it, restores of some tables and of the latest state, damage and a wrong key found by
//! `ferry backup verify` and refused by `ferry restore`, and an archive written while ferry is
//! killed again and again that still restores to exactly the source.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, command};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

pub(crate) const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A source-only configuration archiving to `dir` (sealing after 1 s), with `extra` lines in
/// `[archive]`.
pub(crate) fn archive_config(source: &Postgres, dir: &Path, extra: &str) -> FerryConfig {
    let config = FerryConfig::postgres(&source.url("postgres"), "").unwrap();
    add_archive(&config, dir, extra);
    config
}

/// Adds an `[archive]` in `dir` (sealing after 1 s) with `extra` lines to `config`.
pub(crate) fn add_archive(config: &FerryConfig, dir: &Path, extra: &str) {
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[archive]\nurl = \"file://{}\"\narchive_timeout_seconds = 1\n{extra}\n",
            dir.display()
        ),
    )
    .unwrap();
}

/// The manifests in the archive directory, in order.
pub(crate) fn manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "json"));
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Waits until the archive holds a transaction committed at or after `micros`.
pub(crate) async fn wait_archived(dir: &Path, micros: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = manifests(dir)
            .last()
            .and_then(|m| m["last_commit_time"].as_i64())
            .unwrap_or(0);
        if last >= micros {
            return;
        }
        assert!(Instant::now() < deadline, "the archive did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    c: &tokio_postgres::Client,
    sql: &str,
) -> T {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// The source's clock now, as RFC 3339 and as µs since the epoch.
pub(crate) async fn now(c: &tokio_postgres::Client) -> (String, i64) {
    let row = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

const DUMP_ORDERS: &str = "SELECT coalesce(string_agg(t::text, '|' ORDER BY id), '') FROM orders t";
const DUMP_ITEMS: &str = "SELECT coalesce(string_agg(t::text, '|' ORDER BY id), '') FROM items t";

/// A client of database `db` on `pg`.
pub(crate) async fn client(pg: &Postgres, db: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&pg.conn_str(db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// Creates database `db` on `pg`, restores into it (which must succeed) and connects to it.
pub(crate) async fn restore_into(
    config: &FerryConfig,
    pg: &Postgres,
    db: &str,
    to: &str,
    extra: &[&str],
) -> (tokio_postgres::Client, String) {
    pg.connect()
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let (code, out) = restore(config, to, &pg.url(db), extra);
    assert_eq!(code, 0, "{out}");
    (client(pg, db).await, out)
}

/// `ferry backup verify` passes.
pub(crate) fn assert_verifies(config: &FerryConfig) -> String {
    let path = config.path();
    let (code, out, err) =
        command(&["backup", "verify", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    out
}

pub(crate) fn restore(config: &FerryConfig, to: &str, into: &str, extra: &[&str]) -> (i32, String) {
    let path = config.path();
    let mut args = vec![
        "restore",
        "--config",
        path.to_str().unwrap(),
        "--to",
        to,
        "--into",
        into,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = command(&args).unwrap();
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_accidental_delete_is_undone_by_restoring_to_just_before_it() {
    let source = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), note text);
         CREATE TABLE items (id int PRIMARY KEY, order_id int, sku text);
         INSERT INTO orders SELECT g, g * 1.5, 'before ' || g FROM generate_series(1, 200) g;
         INSERT INTO items SELECT g, g % 200 + 1, 'sku' || g FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = archive_config(&source, dir.path(), "");
    let mut ferry = config.start(0).unwrap();
    for i in 0..20 {
        s.batch_execute(&format!(
            "BEGIN; INSERT INTO orders VALUES ({id}, 9.99, 'during'); \
             UPDATE orders SET note = 'touched {i}' WHERE id = {i} + 1; \
             INSERT INTO items VALUES ({id}, {id}, 'new'); COMMIT;",
            id = 500 + i
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The moment to go back to, and what the tables held then.
    let (before, _) = now(&s).await;
    let orders_then: String = one(&s, DUMP_ORDERS).await;
    let items_then: String = one(&s, DUMP_ITEMS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.batch_execute("DELETE FROM orders").await.unwrap();
    s.batch_execute("CREATE TABLE scratch (id int PRIMARY KEY); TRUNCATE scratch, items;")
        .await
        .unwrap();
    s.batch_execute("INSERT INTO items SELECT g, 1, 'refilled' FROM generate_series(1, 300) g")
        .await
        .unwrap();
    s.batch_execute(
        "INSERT INTO orders SELECT g, 1, 'after' FROM generate_series(1000, 1050) g;
         UPDATE items SET sku = 'changed' WHERE id < 10;",
    )
    .await
    .unwrap();
    let (_, after_micros) = now(&s).await;
    wait_archived(dir.path(), after_micros - 1_000_000).await;
    ferry.check_alive().unwrap();

    // To just before the DELETE, into an empty database on another server.
    let (r, out) = restore_into(&config, &target, "restored", &before, &[]).await;
    assert!(out.contains("stopped at pg:"), "{out}");
    let orders_restored: String = one(&r, DUMP_ORDERS).await;
    let items_restored: String = one(&r, DUMP_ITEMS).await;
    assert_eq!(orders_restored, orders_then);
    assert_eq!(items_restored, items_then);
    let n: i64 = one(&r, "SELECT count(*) FROM orders").await;
    assert_eq!(n, 220);

    // The latest archived state is the source's now.
    let (l, _) = restore_into(&config, &target, "latest", "latest", &[]).await;
    for dump in [DUMP_ORDERS, DUMP_ITEMS] {
        let a: String = one(&s, dump).await;
        let b: String = one(&l, dump).await;
        assert_eq!(a, b);
    }

    // One table only: the other is not created.
    let (p, _) = restore_into(
        &config,
        &target,
        "partial",
        &before,
        &["--tables", "public.items"],
    )
    .await;
    let items_partial: String = one(&p, DUMP_ITEMS).await;
    assert_eq!(items_partial, items_then);
    let orders: Option<String> = one(&p, "SELECT to_regclass('public.orders')::text").await;
    assert_eq!(orders, None);
    // Through a TRUNCATE of a wanted and an unwanted table: only the wanted one is touched.
    let (q, _) = restore_into(
        &config,
        &target,
        "partial_latest",
        "latest",
        &["--tables", "public.items"],
    )
    .await;
    let a: String = one(&s, DUMP_ITEMS).await;
    let b: String = one(&q, DUMP_ITEMS).await;
    assert_eq!(a, b);
    for table in ["public.orders", "public.scratch"] {
        let t: Option<String> = one(&q, &format!("SELECT to_regclass('{table}')::text")).await;
        assert_eq!(t, None, "{table}");
    }

    let out = assert_verifies(&config);
    assert!(out.contains("the chain is unbroken"), "{out}");
    let path = config.path();
    let (code, out, _) = command(&["backup", "list", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("restorable from"), "{out}");
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_a_missing_object_and_a_wrong_key_are_clear_errors() {
    let source = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = archive_config(&source, dir.path(), &format!("encryption_key = \"{KEY}\""));
    let ferry = config.start(0).unwrap();
    // Bursts more than archive_timeout apart: one object each.
    for burst in 0..4 {
        s.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'b{burst}' FROM generate_series({0}, {0} + 9) g",
            burst * 10
        ))
        .await
        .unwrap();
        let (_, at) = now(&s).await;
        wait_archived(dir.path(), at - 500_000).await;
    }
    ferry.stop().unwrap();
    let objects = manifests(dir.path());
    assert!(objects.len() >= 4, "{objects:?}");
    assert!(objects.iter().all(|m| m["encrypted"] == true));
    let path = config.path();
    let verify = |p: &Path| {
        let (code, out, err) =
            command(&["backup", "verify", "--config", p.to_str().unwrap()]).unwrap();
        (code, format!("{out}{err}"))
    };
    let (code, out) = verify(&path);
    assert_eq!(code, 0, "{out}");
    // The objects hold no readable row: they are encrypted.
    let raw = std::fs::read(dir.path().join(objects[1]["object"].as_str().unwrap())).unwrap();
    assert!(
        !raw.windows(2).any(|w| w == b"b0"),
        "plain text in an encrypted object"
    );

    // A wrong key.
    let text = std::fs::read_to_string(&path).unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(&wrong, text.replace(KEY, &"ab".repeat(32))).unwrap();
    let (code, out) = verify(&wrong);
    assert_ne!(code, 0);
    assert!(out.contains("does not decrypt"), "{out}");

    // One changed byte in the second object.
    let second = dir.path().join(objects[1]["object"].as_str().unwrap());
    let good = std::fs::read(&second).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&second, &bad).unwrap();
    let (code, out) = verify(&path);
    assert_ne!(code, 0);
    assert!(
        out.contains(objects[1]["object"].as_str().unwrap()),
        "{out}"
    );
    let t = target.connect().await;
    for db in ["r1", "r2"] {
        t.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let (code, out) = restore(&config, "latest", &target.url("r1"), &[]);
    assert_ne!(code, 0);
    assert!(out.contains("damaged"), "{out}");
    std::fs::write(&second, &good).unwrap();

    // The third object gone: a gap, named, never a shorter restore.
    let third = dir.path().join(objects[2]["object"].as_str().unwrap());
    std::fs::remove_file(&third).unwrap();
    let (code, out) = verify(&path);
    assert_ne!(code, 0);
    assert!(out.contains("missing"), "{out}");
    let (code, out) = restore(&config, "latest", &target.url("r2"), &[]);
    assert_ne!(code, 0);
    assert!(out.contains("gap"), "{out}");
    let third_manifest = third.with_extension("json");
    std::fs::remove_file(&third_manifest).unwrap();
    let (code, out) = verify(&path);
    assert_ne!(code, 0);
    assert!(out.contains("gap"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_written_through_sigkills_restores_to_exactly_the_source() {
    let source = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), note text);
         CREATE TABLE items (id int PRIMARY KEY, order_id int, sku text);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = archive_config(&source, dir.path(), "object_mb = 1");
    let mut next: i64 = 0;
    for round in 0..4 {
        let ferry = config.start(round).unwrap();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            s.batch_execute(&format!(
                "BEGIN; INSERT INTO orders VALUES ({next}, {next}, repeat('x', 200)); \
                 INSERT INTO items VALUES ({next}, {next}, 'r{round}'); \
                 UPDATE orders SET note = 'u' WHERE id = {next} / 2; COMMIT;"
            ))
            .await
            .unwrap();
            next += 1;
        }
        if round < 3 {
            ferry.kill();
        } else {
            // A clean stop right after the source has spooled the last write: the archive must
            // hold everything the source spooled before it stopped, its last transactions
            // included. (Until then the last commit may still be on its way from the server,
            // which keeps it for the next start; that is not the archive's to hold yet.)
            let last = ferry_proto::Value::Int(next - 1);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ferry_spool::read_all(config.spool_dir(), ferry_spool::Offset(0))
                .unwrap_or_default()
                .iter()
                .any(|(_, e)| matches!(e, ferry_proto::Event::Insert(i) if i.new.first() == Some(&last)))
            {
                assert!(Instant::now() < deadline, "the last write was not spooled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ferry.stop().unwrap();
        }
    }
    // Every object begins where the one before ended: no transaction twice, none missing.
    let objects = manifests(dir.path());
    for pair in objects.windows(2) {
        assert_eq!(pair[0]["end_offset"], pair[1]["first_offset"]);
    }
    assert_verifies(&config);
    let (r, _) = restore_into(&config, &target, "restored", "latest", &[]).await;
    for dump in [DUMP_ORDERS, DUMP_ITEMS] {
        let a: String = one(&s, dump).await;
        let b: String = one(&r, dump).await;
        assert_eq!(a, b);
    }
    let n: i64 = one(&r, "SELECT count(*) FROM orders").await;
    assert_eq!(n, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_archive_restores_into_postgresql() {
    let src = MariaDb::start().unwrap();
    let target = Postgres::start().unwrap();
    let mut m = src.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int PRIMARY KEY, amount decimal(10,2), note varchar(100),
                                   placed datetime(6));
         INSERT INTO shop.orders VALUES (1, 10.50, 'first', '2026-01-02 03:04:05.000006'),
                                        (2, 20.00, NULL, '2026-02-03 04:05:06');",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = FerryConfig::mysql(&src.url("shop"), src.server_id() + 1, "", "").unwrap();
    add_archive(&config, dir.path(), "");
    let ferry = config.start(0).unwrap();
    // The snapshot archived first, so that the changes below come through the binlog.
    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    m.query_drop(
        "INSERT INTO shop.orders VALUES (3, 30.25, 'third', '2026-03-04 05:06:07.5');
         UPDATE shop.orders SET note = 'changed' WHERE id = 1;
         DELETE FROM shop.orders WHERE id = 2;",
    )
    .await
    .unwrap();
    // The last change's commit is archived within archive_timeout_seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(dir.path())
        .iter()
        .map(|m| m["transactions"].as_u64().unwrap())
        .sum::<u64>()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            manifests(dir.path()),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    let (r, out) = restore_into(&config, &target, "restored", "latest", &[]).await;
    assert!(out.contains("stopped at binlog:"), "{out}");
    let rows: String = one(
        &r,
        "SELECT string_agg(concat_ws(',', id, amount, coalesce(note, '-'), placed), '|' ORDER BY id) \
         FROM shop.orders",
    )
    .await;
    assert_eq!(
        rows,
        "1,10.50,changed,2026-01-02 03:04:05.000006|3,30.25,third,2026-03-04 05:06:07.5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_archive_survives_an_outage_and_restores() {
    let mut s3 = ferry_tests::s3::S3Server::start("backups").unwrap();
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    let r = replica.connect().await;
    let ddl = "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), note text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[archive]\nurl = \"s3://backups/prod\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\narchive_timeout_seconds = 1\n\
             keep = 1\n",
            s3.endpoint(),
            ferry_tests::s3::ACCESS_KEY,
            ferry_tests::s3::SECRET_KEY
        ),
    )
    .unwrap();
    config.with_http(Some("s3-token")).unwrap();
    let objects = s3.bucket_dir("backups").join("prod");
    let path = config.path();
    let (code, out, err) = command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("archive s3://backups/prod reachable (0 object(s))"),
        "{out}"
    );
    let mut ferry = config.start(0).unwrap();
    s.batch_execute("INSERT INTO orders SELECT g, g, 'first' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let (_, at) = now(&s).await;
    wait_archived(&objects, at - 1_000_000).await;

    // The store goes away: the replica keeps up (the acknowledgement never waits for the
    // archive), and no object is written meanwhile.
    s3.stop();
    let before = manifests(&objects).len();
    for i in 0..20 {
        s.batch_execute(&format!(
            "INSERT INTO orders VALUES ({}, 1, 'during the outage')",
            100 + i
        ))
        .await
        .unwrap();
    }
    let (_, outage_end) = now(&s).await;
    ferry.wait_rows(&r, "orders", 70).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manifests(&objects).len(), before);
    ferry.check_alive().unwrap();

    // Back: the archive catches up with the transactions of the outage.
    s3.start_again().unwrap();
    wait_archived(&objects, outage_end - 300_000).await;
    assert!(manifests(&objects).len() > before);

    // Two base backups into the store, with keep = 1: the first, and the log before the
    // second, are deleted from it.
    for round in 0..2 {
        let p = path.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            command(&["backup", "now", "--config", p.to_str().unwrap()]).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        s.batch_execute(&format!(
            "INSERT INTO orders VALUES ({}, 2, 'after base backup {round}')",
            1000 + round
        ))
        .await
        .unwrap();
    }
    let (_, last) = now(&s).await;
    s.batch_execute("UPDATE orders SET note = 'last' WHERE id = 1")
        .await
        .unwrap();
    wait_archived(&objects, last).await;
    ferry.stop().unwrap();
    let bases: Vec<_> = std::fs::read_dir(objects.join("base"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("backup.json").exists())
        .collect();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert_ne!(manifests(&objects)[0]["first_offset"].as_u64(), Some(0));
    assert_verifies(&config);
    let (rc, _) = restore_into(&config, &target, "restored", "latest", &[]).await;
    let a: String = one(&s, DUMP_ORDERS).await;
    let b: String = one(&rc, DUMP_ORDERS).await;
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_larger_than_an_object_is_archived_in_pieces_and_restores_whole() {
    let source = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    // The initial snapshot (one spool transaction) is several objects' worth.
    s.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), note text);
         INSERT INTO orders SELECT g, g * 1.5, repeat('n', 40) FROM generate_series(1, 60000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = archive_config(&source, dir.path(), "object_mb = 1");
    let ferry = config.start(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A large transaction while ferry runs, killed while it may be archiving it, and small ones.
    s.batch_execute("UPDATE orders SET amount = amount + 1, note = 'big update'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ferry.kill();
    let ferry = config.start(1).unwrap();
    for i in 0..10 {
        s.batch_execute(&format!(
            "UPDATE orders SET note = 'small {i}' WHERE id = {i} + 1"
        ))
        .await
        .unwrap();
    }
    let (_, last) = now(&s).await;
    s.batch_execute("INSERT INTO orders VALUES (0, 0, 'last')")
        .await
        .unwrap();
    wait_archived(dir.path(), last).await;
    ferry.stop().unwrap();
    let split = manifests(dir.path())
        .iter()
        .filter(|m| m.get("ends_in_transaction").is_some())
        .count();
    assert!(split >= 2, "{:?}", manifests(dir.path()));
    assert_verifies(&config);
    let (r, _) = restore_into(&config, &target, "restored", "latest", &[]).await;
    let a: String = one(&s, DUMP_ORDERS).await;
    let b: String = one(&r, DUMP_ORDERS).await;
    assert!(a == b, "the restore differs from the source");
}
