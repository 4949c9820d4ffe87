//! Base backups taken while the stream runs (on demand with `ferry backup now`, and on a
//! schedule), retention that deletes only what no kept restore point needs, restores that start
//! from a base backup, and drills that prove a backup by restoring it and comparing with the
//! source at the same position.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, command};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

use crate::archive::{
    archive_config, assert_verifies, client, manifests, now, one, restore, restore_into,
};

const DUMP: &str = "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM big t";
const DUMP_SMALL: &str = "SELECT coalesce(string_agg(t::text, '|' ORDER BY id), '') FROM small t";

/// The committed base backups (ids) in an archive directory.
fn bases(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("base"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.join("backup.json").exists())
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn drill(config: &Path, into: &str) -> (i32, String) {
    let (code, out, err) = command(&[
        "backup",
        "drill",
        "--config",
        config.to_str().unwrap(),
        "--into",
        into,
        "--wait",
        "60",
    ])
    .unwrap();
    (code, format!("{out}{err}"))
}

/// Waits until `/metrics` has a line starting with `line`.
async fn wait_metric(port: u16, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, body) = ferry_tests::http::get(port, "/metrics");
        if body.lines().any(|l| l.starts_with(line)) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line} in\n{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes to `big` and `small` until `stop`.
fn writer(url: String, stop: Arc<AtomicBool>, from: u64) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut i = from;
        while !stop.load(Ordering::Relaxed) {
            c.batch_execute(&format!(
                "BEGIN; UPDATE big SET v = v + 1 WHERE id = {};
                 INSERT INTO small VALUES ({i}, 'w{i}'); COMMIT;",
                i * 7919 % 100_000 + 1
            ))
            .await
            .unwrap();
            i += 1;
        }
        i - from
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_backups_under_load_retention_restore_and_a_drill() {
    let source = Postgres::start().unwrap();
    let target = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v int, note text);
         INSERT INTO big SELECT g, 0, repeat('x', 50) FROM generate_series(1, 100000) g;
         CREATE TABLE small (id bigint PRIMARY KEY, note text);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = archive_config(&source, dir.path(), "keep = 1\nobject_mb = 1");
    let port = config.with_http(Some("drill-token")).unwrap();
    let mut ferry = config.start(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Two base backups, each taken while transactions commit.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(source.conn_str("postgres"), stop.clone(), 0);
    let c = config.path();
    let first = tokio::task::spawn_blocking({
        let c = c.clone();
        move || command(&["backup", "now", "--config", c.to_str().unwrap()]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(first.0, 0, "{}{}", first.1, first.2);
    assert_eq!(bases(dir.path()).len(), 1);
    let first_id = bases(dir.path())[0].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (between, _) = now(&s).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tokio::task::spawn_blocking({
        let config_path = c.clone();
        move || command(&["backup", "now", "--config", config_path.to_str().unwrap()]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.0, 0, "{}{}", out.1, out.2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = w.await.unwrap();
    assert!(writes > 10, "{writes} writes");
    // A last transaction, committed after this moment: once it is archived, all before it are.
    let (_, done) = now(&s).await;
    s.batch_execute("INSERT INTO small VALUES (-1, 'last')")
        .await
        .unwrap();
    crate::archive::wait_archived(dir.path(), done).await;
    ferry.check_alive().unwrap();

    // keep = 1: the first base backup and the log before the second are gone.
    let kept = bases(dir.path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_ne!(kept[0], first_id);
    // (a local directory keeps the emptied folder; its objects are gone)
    let left = std::fs::read_dir(dir.path().join("base").join(&first_id))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "{first_id}");
    let log = manifests(dir.path());
    assert_ne!(log[0]["first_offset"].as_u64(), Some(0), "{log:?}");

    // Latest, from the kept base backup and the log after it: the source exactly.
    let (l, out) = restore_into(&config, &target, "latest", "latest", &[]).await;
    assert!(out.contains("stopped at pg:"), "{out}");
    for dump in [DUMP, DUMP_SMALL] {
        let a: String = one(&s, dump).await;
        let b: String = one(&l, dump).await;
        assert_eq!(a, b, "{dump}");
    }
    // A moment only the deleted base backup could restore: refused, not restored short.
    let (code, out) = restore(&config, &between, &target.url("postgres"), &["--dry-run"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("no base backup the target includes"), "{out}");

    let out = assert_verifies(&config);
    assert!(out.contains("1 base backup(s)"), "{out}");
    let path = config.path();
    let (_, out, _) = command(&["backup", "list", "--config", path.to_str().unwrap()]).unwrap();
    assert!(out.contains("(base backup "), "{out}");

    // A drill against the running source, with writes going on.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(source.conn_str("postgres"), stop.clone(), 1 << 40);
    target
        .connect()
        .await
        .batch_execute("CREATE DATABASE scratch")
        .await
        .unwrap();
    let into = target.url("scratch");
    let (code, out) = tokio::task::spawn_blocking(move || drill(&c, &into))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("drill PASSED"), "{out}");
    assert!(out.contains("public.big"), "{out}");
    wait_metric(port, "ferry_backup_drill_last_passed 1").await;
    wait_metric(port, "ferry_base_backup_age_seconds").await;
    wait_metric(port, "ferry_archive_stored_bytes").await;

    // A drill (or restore) into a database that already holds a table is refused, recorded as
    // failed, and the metric follows.
    let t = target.connect().await;
    t.batch_execute("CREATE DATABASE busy").await.unwrap();
    client(&target, "busy")
        .await
        .batch_execute("CREATE TABLE small (id bigint PRIMARY KEY, note text)")
        .await
        .unwrap();
    let (code, out) = drill(&config.path(), &target.url("busy"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("already holds public.small"), "{out}");
    wait_metric(port, "ferry_backup_drill_last_passed 0").await;
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_base_backups_on_a_schedule_restore_and_drill() {
    let src = MariaDb::start().unwrap();
    let target = MariaDb::start().unwrap();
    let scratch = MariaDb::start().unwrap();
    let mut m = src.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int PRIMARY KEY, amount decimal(10,2), note varchar(100));
         USE shop;",
    )
    .await
    .unwrap();
    for i in 0..20 {
        m.query_drop(format!(
            "INSERT INTO shop.orders SELECT seq, seq * 1.5, 'n{i}' FROM seq_{}_to_{}",
            i * 500 + 1,
            i * 500 + 500
        ))
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = FerryConfig::mysql(&src.url("shop"), src.server_id() + 1, "", "").unwrap();
    crate::archive::add_archive(&config, dir.path(), "base_backup_every = \"2s\"\nkeep = 2");
    let ferry = config.start(0).unwrap();
    // Writes while base backups come and go.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    while ferry.log_text().matches("base backup: stored").count() < 4 {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        m.query_drop(format!(
            "UPDATE shop.orders SET amount = amount + 1, note = 'u{i}' WHERE id % 97 = {};
             INSERT INTO shop.orders VALUES ({}, 1, 'new')",
            i % 97,
            20_000 + i
        ))
        .await
        .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // keep = 2: retention, which follows each stored backup, leaves two.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bases(dir.path()).len() > 2 {
        assert!(Instant::now() < deadline, "{:?}", bases(dir.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pos: (String, u64) = {
        let row: mysql_async::Row = m.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = manifests(dir.path())
            .last()
            .map(|m| m["last_position"].clone())
            .unwrap_or_default();
        // A binlog position with GTIDs (MariaDB's always) is the `BinlogAt` variant.
        let at = if last["BinlogAt"].is_null() {
            last["Binlog"].clone()
        } else {
            last["BinlogAt"].clone()
        };
        if at["file"].as_str() == Some(pos.0.as_str()) && at["pos"].as_u64() >= Some(pos.1) {
            break;
        }
        assert!(Instant::now() < deadline, "{last:?} {pos:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out) = restore(&config, "latest", &target.url(""), &[]);
    assert_eq!(code, 0, "{out}");
    let dump = "SELECT md5(group_concat(concat_ws(',', id, amount, note) ORDER BY id SEPARATOR '|')), \
                count(*) FROM shop.orders";
    let a: Option<(String, i64)> = m.query_first(dump).await.unwrap();
    let mut t = target.connect().await;
    let b: Option<(String, i64)> = t.query_first(dump).await.unwrap();
    assert_eq!(a, b);

    let (code, out) = drill(&config.path(), &scratch.url(""));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("drill PASSED"), "{out}");
    assert!(out.contains("shop.orders"), "{out}");
    ferry.stop().unwrap();
}
