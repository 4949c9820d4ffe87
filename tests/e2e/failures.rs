//! The same failure gets the same answer from every source and sink. Each case writes down the
//! expected answer and checks it against real servers:
//!
//! | failure                         | answer                                   |
//! |---------------------------------|------------------------------------------|
//! | connection refused              | retried with backoff, then it replicates  |
//! | connection attempt not answered | retried (10 s connect timeout)           |
//! | server restart                  | retried, nothing lost or doubled         |
//! | authentication failure          | a stop with the server's reason          |
//! | deadlock, serialization failure | the batch retried, nothing lost          |
//!
//! A source stopping means ferry exits 1; a sink stopping means it halts (`/status`, the log).
//! Restarts of a PostgreSQL source, a PostgreSQL sink and a Kafka broker are in `pg_source.rs`,
//! `pg_sink.rs` and `kafka_sink.rs`; here are the MariaDB ones.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, FerryRun};
use ferry_tests::postgres::PostgresOptions;
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;

/// A port that accepts connections and never says a word: a connection attempt that hangs.
fn silent_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Waits until the log holds `text` `times` times, ferry staying alive.
fn wait_log(ferry: &mut FerryRun, text: &str, times: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = ferry.log_text();
        if log.matches(text).count() >= times {
            return;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "waiting for {times} x {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn my_count(c: &mut mysql_async::Conn, table: &str) -> i64 {
    c.query_first(format!("SELECT count(*) FROM {table}"))
        .await
        .ok()
        .flatten()
        .unwrap_or(-1)
}

async fn wait_my_count(db: &MariaDb, table: &str, n: i64, ferry: &mut FerryRun) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(mut c) =
            mysql_async::Conn::new(mysql_async::Opts::from_url(&db.url("")).unwrap()).await
            && my_count(&mut c, table).await == n
        {
            return;
        }
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Refused at start (the source server is down), then a restart of the source and of the
/// replica while running: ferry waits, retries with backoff, and every row arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_and_sink_refused_and_restarted_are_waited_for() {
    let mut source = MariaDb::start().unwrap();
    let mut replica = MariaDb::start().unwrap();
    let mut c = source.connect().await;
    c.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    drop(c);
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true",
        replica.url("")
    );
    let config = FerryConfig::mysql(
        &source.url("app"),
        source.server_id() + 11,
        "tables = [\"app.*\"]",
        &sink,
    )
    .unwrap();
    // Connection refused: the source is down when ferry starts.
    source.stop();
    let mut ferry = config.start(0).unwrap();
    wait_log(
        &mut ferry,
        "mysql source: connection failed; reconnecting",
        2,
        60,
    );
    source.start_again().unwrap();
    let mut c = source.connect().await;
    c.query_drop("INSERT INTO app.t VALUES (1)").await.unwrap();
    wait_my_count(&replica, "app.t", 1, &mut ferry).await;

    // The source restarts.
    drop(c);
    source.restart().unwrap();
    let mut c = source.connect().await;
    c.query_drop("INSERT INTO app.t VALUES (2)").await.unwrap();
    wait_my_count(&replica, "app.t", 2, &mut ferry).await;

    // The replica restarts, with a row waiting for it.
    replica.stop();
    c.query_drop("INSERT INTO app.t VALUES (3)").await.unwrap();
    wait_log(&mut ferry, "sink failed; retrying", 1, 60);
    replica.start_again().unwrap();
    wait_my_count(&replica, "app.t", 3, &mut ferry).await;
    let mut r = replica.connect().await;
    let ids: Vec<i64> = r.query("SELECT id FROM app.t ORDER BY id").await.unwrap();
    assert_eq!(ids, vec![1, 2, 3]);
    ferry.stop().unwrap();
}

/// A connection attempt nobody answers is retried like a refused one, by each source and each
/// database sink (before, a MySQL source's timeout stopped ferry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_connection_attempts_are_retried_everywhere() {
    let pg = Postgres::start().unwrap();
    pg.connect()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let silent = silent_port();
    let pg_source = FerryConfig::pg_to_pg(
        &format!("postgres://postgres@127.0.0.1:{silent}/postgres"),
        &pg.url("postgres"),
        "",
        "",
    )
    .unwrap();
    let my_source = FerryConfig::mysql(
        &format!("mysql://ferry:x@127.0.0.1:{silent}/app"),
        4242,
        "",
        "",
    )
    .unwrap();
    let pg_sink = FerryConfig::pg_to_pg(
        &pg.url("postgres"),
        &format!("postgres://postgres@127.0.0.1:{silent}/postgres"),
        "slot = \"to_silent_pg\"\npublication = \"to_silent_pg\"",
        "",
    )
    .unwrap();
    let my_sink = FerryConfig::pg_to_pg(&pg.url("postgres"), "x", "", "").unwrap();
    let text = std::fs::read_to_string(my_sink.path())
        .unwrap()
        .replace(
            "type = \"postgres\"\nurl = \"x\"",
            &format!("type = \"mysql\"\nurl = \"mysql://ferry:x@127.0.0.1:{silent}/\""),
        )
        .replace(
            "[source]\n",
            "[source]\nslot = \"to_silent_my\"\npublication = \"to_silent_my\"\n",
        );
    std::fs::write(my_sink.path(), text).unwrap();
    let mut runs: Vec<FerryRun> = [&pg_source, &my_source, &pg_sink, &my_sink]
        .iter()
        .enumerate()
        .map(|(i, c)| c.start(i).unwrap())
        .collect();
    wait_log(
        &mut runs[0],
        "source connection failed; reconnecting",
        2,
        90,
    );
    wait_log(
        &mut runs[1],
        "mysql source: connection failed; reconnecting",
        2,
        90,
    );
    wait_log(&mut runs[2], "sink failed; retrying", 2, 90);
    wait_log(&mut runs[3], "sink failed; retrying", 2, 90);
    for r in &mut runs[..2] {
        let log = r.log_text();
        assert!(
            log.contains("timed out") || log.contains("no answer"),
            "{log}"
        );
    }
    for r in runs {
        r.stop().unwrap();
    }
}

/// A wrong password stops the source (ferry exits 1 with the server's reason) and halts a sink
/// (the reason in its state), on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_stop_with_the_server_s_reason() {
    // A server that checks passwords over TCP.
    let hba_dir = tempfile::tempdir().unwrap();
    let hba = hba_dir.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(hba_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pg = Postgres::start_with(PostgresOptions {
        settings: vec![("hba_file".into(), hba.display().to_string())],
        ..Default::default()
    })
    .unwrap();
    pg.connect()
        .await
        .batch_execute(
            "CREATE ROLE app LOGIN REPLICATION SUPERUSER PASSWORD 'right';
             CREATE TABLE t (id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    let port = pg.port();
    let db = MariaDb::start().unwrap();

    let pg_source = FerryConfig::pg_to_pg(
        &format!("postgres://app:wrong@127.0.0.1:{port}/postgres"),
        &pg.url("postgres"),
        "",
        "",
    )
    .unwrap();
    let my_source = FerryConfig::mysql(
        &format!("mysql://ferry:wrong@127.0.0.1:{}/", db.port()),
        db.server_id() + 12,
        "",
        "",
    )
    .unwrap();
    let (code, log) = pg_source
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("password authentication failed"), "{log}");
    let (code, log) = my_source
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("Access denied"), "{log}");

    for (i, (kind, url)) in [
        (
            "postgres",
            format!("postgres://app:wrong@127.0.0.1:{port}/postgres"),
        ),
        (
            "mysql",
            format!("mysql://ferry:wrong@127.0.0.1:{}/", db.port()),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let config = FerryConfig::pg_to_pg(
            &pg.url("postgres"),
            &url,
            &format!("slot = \"auth_{i}\"\npublication = \"auth_{i}\""),
            "",
        )
        .unwrap();
        let text = std::fs::read_to_string(config.path()).unwrap().replace(
            "type = \"postgres\"\nurl = \"mysql",
            "type = \"mysql\"\nurl = \"mysql",
        );
        std::fs::write(config.path(), text).unwrap();
        let mut ferry = config.start(1).unwrap();
        wait_log(&mut ferry, "sink halted", 1, 60);
        let log = ferry.log_text();
        let reason = if kind == "postgres" {
            "password authentication failed"
        } else {
            "Access denied"
        };
        assert!(
            log.lines()
                .any(|l| l.contains("sink halted") && l.contains(reason)),
            "{log}"
        );
        assert!(!log.contains("sink failed; retrying"), "{log}");
        ferry.terminate().unwrap();
    }
}

/// A replica that answers a batch with a deadlock or a serialization failure gets the batch
/// again; nothing halts and every row arrives. The replica's trigger fails the first two
/// attempts with the server's own error (PostgreSQL 40P01 then 40001; MariaDB error 1213).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_and_serialization_failures_on_a_replica_are_retried() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let db = MariaDb::start().unwrap();
    let s = source.connect().await;
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let r = replica.connect().await;
    r.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE SEQUENCE attempts;
         CREATE FUNCTION fail_twice() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           CASE nextval('attempts')
             WHEN 1 THEN RAISE EXCEPTION 'simulated' USING ERRCODE = 'deadlock_detected';
             WHEN 2 THEN RAISE EXCEPTION 'simulated' USING ERRCODE = 'serialization_failure';
             ELSE RETURN NEW;
           END CASE;
         END $$;
         CREATE TRIGGER fail_twice BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION fail_twice();
         -- The sink applies as a replica (session_replication_role): only ALWAYS triggers fire.
         ALTER TABLE t ENABLE ALWAYS TRIGGER fail_twice;",
    )
    .await
    .unwrap();
    let mut m = db.connect().await;
    m.query_drop(
        "CREATE DATABASE public; CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE SEQUENCE public.attempts;",
    )
    .await
    .unwrap();
    m.query_drop(
        "CREATE TRIGGER public.fail_twice BEFORE INSERT ON public.t FOR EACH ROW
         IF NEXTVAL(public.attempts) <= 2 THEN
           SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'simulated deadlock';
         END IF",
    )
    .await
    .unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\n",
            db.url("")
        ),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    s.batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    ferry.wait_rows(&r, "t", 10).await;
    wait_my_count(&db, "public.t", 10, &mut ferry).await;
    let log = ferry.log_text();
    assert!(!log.contains("sink halted"), "{log}");
    let retried = |sink: &str, what: &str| {
        log.lines()
            .filter(|l| l.contains("sink failed; retrying") && l.contains(sink) && l.contains(what))
            .count()
    };
    assert_eq!(retried("sink=replica", "40P01"), 1, "{log}");
    assert_eq!(retried("sink=replica", "40001"), 1, "{log}");
    assert_eq!(retried("sink=maria", "1213"), 2, "{log}");
    ferry.stop().unwrap();
}
