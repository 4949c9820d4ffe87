//! Failover of the source: a PostgreSQL primary replaced by its promoted streaming standby,
//! which has none of the primary's logical slots, is a gap ferry names with the way out; it never
//! silently takes a new snapshot or streams from a new slot. A MariaDB primary replaced by its
//! promoted native replica is followed by GTID: nothing lost, nothing read twice; a server that
//! lacks what ferry read is "position lost".

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_without_the_slot_is_a_gap_not_a_new_snapshot() {
    let mut primary = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let p = primary.connect().await;
    p.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let standby = Postgres::standby_of(&primary).unwrap();
    let config = FerryConfig::pg_to_pg(
        &primary.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let ferry = config.start(0).unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'while ferry runs' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    let r = replica.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&r).await != 150 {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    let s = standby.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&s).await != 150 {
        assert!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The failover: the primary is gone, the standby is promoted, ferry is pointed at it.
    primary.stop();
    s.query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    s.batch_execute("INSERT INTO t VALUES (151, 'on the new primary')")
        .await
        .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace(
            &format!("127.0.0.1:{}/", primary.port()),
            &format!("127.0.0.1:{}/", standby.port()),
        ),
    )
    .unwrap();
    let (code, log) = config
        .start(1)
        .unwrap()
        .wait_exit(Duration::from_secs(90))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("it is a promoted standby"), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("clearing the spool directory"), "{log}");
    // No slot was created on the new primary, and the replica was not copied again.
    let slots: i64 = s
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    assert_eq!(count(&r).await, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_source_on_another_server_is_position_lost_not_a_silent_resume() {
    use mysql_async::prelude::Queryable;
    let a = ferry_tests::MariaDb::start().unwrap();
    let b = ferry_tests::MariaDb::start().unwrap();
    for db in [&a, &b] {
        let mut c = db.connect().await;
        c.query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY, v text);
             INSERT INTO app.t VALUES (1, 'a');",
        )
        .await
        .unwrap();
    }
    let config = FerryConfig::mysql(&a.url("app"), a.server_id() + 1000, "", "").unwrap();
    let ferry = config.start(0).unwrap();
    let spool = config.spool_dir();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ferry.log_text().contains("initial snapshot: done") {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = a.connect().await;
    c.query_drop("INSERT INTO app.t VALUES (2, 'b')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ferry.stop().unwrap();
    assert!(spool.join("mysql-source.json").exists());

    // Another server behind the URL: its binlog positions are not the spool's.
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(config.path(), text.replace(&a.url("app"), &b.url("app"))).unwrap();
    let (code, log) = config
        .start(1)
        .unwrap()
        .wait_exit(Duration::from_secs(90))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("position lost"), "{log}");
}

/// The table `app.t` as the spool's events leave it: every insert of an id counted, so a
/// transaction read twice shows.
fn spool_state(spool: &std::path::Path) -> (std::collections::BTreeMap<i64, String>, Vec<i64>) {
    use ferry_proto::{Event, OldRow, Value};
    let text = |v: &Value| match v {
        Value::Text(t) => t.clone(),
        other => panic!("v {other:?}"),
    };
    let mut rows = std::collections::BTreeMap::new();
    let mut twice = Vec::new();
    let mut inserted = std::collections::BTreeSet::new();
    for e in crate::mysql_source::events(spool) {
        match e {
            Event::Insert(i) => {
                let id = crate::mysql_source::id(&i.new[0]);
                if !inserted.insert(id) {
                    twice.push(id);
                }
                rows.insert(id, text(&i.new[1]));
            }
            Event::Update(u) => {
                rows.insert(crate::mysql_source::id(&u.new[0]), text(&u.new[1]));
            }
            Event::Delete(d) => {
                let (OldRow::Key(r) | OldRow::Full(r)) = &d.old;
                rows.remove(&crate::mysql_source::id(&r[0]));
            }
            _ => {}
        }
    }
    (rows, twice)
}

/// The application's transactions `from..to` on `db`: an insert, and an update and a delete of
/// earlier rows, each its own transaction.
async fn mariadb_workload(db: &ferry_tests::MariaDb, from: i64, to: i64) {
    use mysql_async::prelude::Queryable;
    let mut c = db.connect().await;
    for i in from..to {
        c.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'v{i}')"))
            .await
            .unwrap();
        if i % 5 == 0 {
            c.query_drop(format!("UPDATE app.t SET v = 'u{i}' WHERE id = {}", i - 3))
                .await
                .unwrap();
        }
        if i % 7 == 0 {
            c.query_drop(format!("DELETE FROM app.t WHERE id = {}", i - 6))
                .await
                .unwrap();
        }
    }
}

async fn mariadb_rows(db: &ferry_tests::MariaDb) -> std::collections::BTreeMap<i64, String> {
    use mysql_async::prelude::Queryable;
    let rows: Vec<(i64, String)> = db
        .connect()
        .await
        .query("SELECT id, v FROM app.t")
        .await
        .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_failover_to_its_native_replica_is_followed_by_gtid() {
    use mysql_async::prelude::Queryable;
    let mut a = ferry_tests::MariaDb::start().unwrap();
    let b = ferry_tests::MariaDb::replica_of(&a).await.unwrap();
    a.connect()
        .await
        .query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY, v text);
             INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        )
        .await
        .unwrap();
    let config = FerryConfig::mysql(&a.url("app"), a.server_id() + 1000, "", "").unwrap();
    let spool = config.spool_dir();
    let ferry = config.start(0).unwrap();
    mariadb_workload(&a, 10, 200).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while spool_state(&spool).0 != mariadb_rows(&a).await {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().unwrap();
    // The primary goes on without ferry, then fails; its replica, which has everything, takes
    // over and the application writes to it before ferry is pointed at it.
    mariadb_workload(&a, 200, 260).await;
    b.caught_up_with(&a).await.unwrap();
    a.stop();
    b.promote().await.unwrap();
    mariadb_workload(&b, 260, 300).await;

    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(config.path(), text.replace(&a.url("app"), &b.url("app"))).unwrap();
    let mut ferry = config.start(1).unwrap();
    mariadb_workload(&b, 300, 350).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, twice) = spool_state(&spool);
        assert!(twice.is_empty(), "read twice: {twice:?}");
        if rows == mariadb_rows(&b).await {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        ferry.check_alive().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = ferry.log_text();
    assert!(log.contains("resuming by GTID"), "{log}");
    // A restart on the new primary resumes at its own file:position, in the new epoch.
    ferry.stop().unwrap();
    let ferry = config.start(2).unwrap();
    mariadb_workload(&b, 350, 370).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, twice) = spool_state(&spool);
        assert!(twice.is_empty(), "read twice: {twice:?}");
        if rows == mariadb_rows(&b).await {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = ferry.log_text();
    assert!(!log.contains("resuming by GTID"), "{log}");
    ferry.stop().unwrap();
    let recorded = std::fs::read_to_string(spool.join("mysql-source.json")).unwrap();
    assert!(recorded.contains("\"epoch\": 1"), "{recorded}");
    assert!(
        recorded.contains(&format!("{}", b.server_id())),
        "{recorded}"
    );
}

/// PostgreSQL 17+ failover slots, on a real PostgreSQL 18 primary and standby: with
/// `failover_slot = true` ferry creates its slot with FAILOVER, the standby keeps a synchronized
/// copy, and after the standby is promoted ferry pointed at it resumes from that copy: every row
/// arrives once, also those written after ferry stopped, and the new primary's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_slot_lets_ferry_follow_a_promoted_postgresql_18_standby() {
    use ferry_tests::postgres::PostgresOptions;
    let mut primary = Postgres::start_with(PostgresOptions {
        version: Some(18),
        ..Default::default()
    })
    .unwrap();
    let p = primary.connect().await;
    p.batch_execute(
        "SELECT pg_create_physical_replication_slot('standby1');
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    drop(p);
    let standby = Postgres::cold_standby_of(
        &mut primary,
        &[
            ("primary_slot_name", "'standby1'"),
            ("hot_standby_feedback", "on"),
        ],
    )
    .unwrap();
    let p = primary.connect().await;
    p.batch_execute("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'")
        .await
        .unwrap();
    p.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let sink = Postgres::start().unwrap();
    let config = FerryConfig::pg_to_pg(
        &primary.url("postgres"),
        &sink.url("postgres"),
        "failover_slot = true",
        "create_tables = true",
    )
    .unwrap();
    let path = config.path();
    let (code, out, err) =
        ferry_tests::ferry::command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("synchronized_standby_slots (standby1)"),
        "{out}"
    );
    let ferry = config.start(0).unwrap();
    let k = sink.connect().await;
    let wait_rows = |n: i64, log: &dyn Fn() -> String| {
        let k = &k;
        let log = log();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(k).await != n {
                assert!(Instant::now() < deadline, "{} rows expected\n{log}", n);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    p.batch_execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 200) g")
        .await
        .unwrap();
    wait_rows(200, &|| ferry.log_text()).await;
    let failover: bool = p
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failover);
    // The standby's copy of the slot is created once ferry's slot has moved past what the
    // standby may have cleaned up: in a lull, a running-transactions record (which the primary
    // also logs on its own) lets ferry's slot move up to the present.
    // `pg_sync_replication_slots()` does now what the standby's worker does on its own.
    let s = standby.connect().await;
    let synced = || async {
        s.batch_execute("SELECT pg_sync_replication_slots()")
            .await
            .unwrap();
        s.query_opt(
            "SELECT synced FROM pg_replication_slots WHERE slot_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .is_some_and(|r| r.get::<_, bool>(0))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !synced().await {
        p.batch_execute("SELECT pg_log_standby_snapshot()")
            .await
            .unwrap();
        if Instant::now() > deadline {
            panic!(
                "primary:\n{}\nstandby:\n{}\n{}\n{}",
                slot_rows(&p).await,
                slot_rows(&s).await,
                standby.log_text(),
                ferry.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ferry.stop().unwrap();
    // Committed after ferry stopped: on the standby, not yet read by ferry.
    p.batch_execute("INSERT INTO t SELECT g, 'unread' FROM generate_series(201, 250) g")
        .await
        .unwrap();
    assert!(synced().await);
    drop(p);
    primary.stop();
    s.batch_execute("SELECT pg_promote()").await.unwrap();

    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace(&primary.url("postgres"), &standby.url("postgres")),
    )
    .unwrap();
    let ferry = config.start(1).unwrap();
    wait_rows(250, &|| ferry.log_text()).await;
    s.batch_execute("INSERT INTO t SELECT g, 'new primary' FROM generate_series(251, 300) g")
        .await
        .unwrap();
    wait_rows(300, &|| ferry.log_text()).await;
    let log = ferry.log_text();
    assert!(log.contains("promoted from a standby"), "{log}");
    let sum: i64 = k
        .query_one("SELECT sum(id)::bigint FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 300 * 301 / 2);
    ferry.stop().unwrap();
}

/// Every replication slot of a server, as JSON lines (for a failure's message).
async fn slot_rows(c: &tokio_postgres::Client) -> String {
    c.query("SELECT to_jsonb(s)::text FROM pg_replication_slots s", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}
