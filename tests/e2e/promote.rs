//! `ferry promote`: a planned switchover fences the source (a session opened before the fence
//! can no longer write), waits until the replica has everything, syncs its counters and verifies
//! it; the application's inserts on the promoted replica then get new ids.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::{FerryConfig, command};

/// `ferry promote --sink SINK --fence`, which must succeed with the sink ready; its report.
async fn promote_fenced(config: &FerryConfig, sink: &str) -> String {
    promote_fenced_with(config, sink, &[]).await
}

/// The same, with more arguments.
async fn promote_fenced_with(config: &FerryConfig, sink: &str, more: &[&str]) -> String {
    let path = config.path();
    let sink = sink.to_owned();
    let more: Vec<String> = more.iter().map(|m| m.to_string()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "promote",
            "--config",
            path.to_str().unwrap(),
            "--sink",
            &sink,
            "--fence",
        ];
        args.extend(more.iter().map(String::as_str));
        command(&args).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("promote READY"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_switchover_leaves_a_replica_the_application_can_write_to() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text);
         INSERT INTO orders (note) SELECT 'before' FROM generate_series(1, 500);
         INSERT INTO events (what) SELECT 'before' FROM generate_series(1, 200);",
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
    // The application: a session opened before the fence, and a writer that keeps writing.
    let app = source.connect().await;
    let writer = {
        let conn = source.conn_str("postgres");
        tokio::spawn(async move {
            let (c, task) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(task);
            let mut written = 0u64;
            while c
                .batch_execute(
                    "INSERT INTO orders (note) VALUES ('app'); INSERT INTO events (what) VALUES ('app');",
                )
                .await
                .is_ok()
            {
                written += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            written
        })
    };
    let r = replica.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = r
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .map(|row| row.get(0))
            .unwrap_or(0);
        if n > 520 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = promote_fenced(&config, "replica").await;
    assert!(out.contains("fence proven"), "{out}");
    assert!(
        out.contains("public.orders") && out.contains("equal"),
        "{out}"
    );
    // The writer was cut off by the fence, and the session opened before it cannot write.
    let written = writer.await.unwrap();
    assert!(written > 0);
    assert!(
        app.batch_execute("INSERT INTO orders (note) VALUES ('late')")
            .await
            .is_err()
    );
    ferry.stop().unwrap();

    // The application moves to the replica: new ids, no collision.
    let max: i32 = r
        .query_one("SELECT max(id) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    let id: i32 = r
        .query_one(
            "INSERT INTO orders (note) VALUES ('on the new primary') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id > max, "{id} <= {max}");
    let max: i64 = r
        .query_one("SELECT max(id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let id: i64 = r
        .query_one(
            "INSERT INTO events (what) VALUES ('on the new primary') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id > max, "{id} <= {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_mariadb_switchover_leaves_a_replica_the_application_can_write_to() {
    use mysql_async::prelude::Queryable;
    let src = ferry_tests::MariaDb::start().unwrap();
    let dst = ferry_tests::MariaDb::start().unwrap();
    let mut m = src.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int AUTO_INCREMENT PRIMARY KEY, note varchar(50));
         INSERT INTO shop.orders (note) VALUES ('a'), ('b'), ('c');
         CREATE USER app@'%' IDENTIFIED BY 'app-pw';
         GRANT SELECT, INSERT ON shop.* TO app@'%';",
    )
    .await
    .unwrap();
    // The application's own account, without the privileges that bypass read_only.
    let app_url = format!("mysql://app:app-pw@127.0.0.1:{}/shop", src.port());
    let app_conn = || async {
        mysql_async::Conn::new(mysql_async::Opts::from_url(&app_url).unwrap())
            .await
            .unwrap()
    };
    let sink = format!(
        "[[sink]]\nname = \"replica\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url("")
    );
    let config = FerryConfig::mysql(&src.url("shop"), src.server_id() + 1000, "", &sink).unwrap();
    let ferry = config.start(0).unwrap();
    // A session the application opened before the fence.
    let mut app = app_conn().await;
    app.query_drop("INSERT INTO shop.orders (note) VALUES ('app')")
        .await
        .unwrap();
    let mut d = dst.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: Option<i64> = d
            .query_first("SELECT count(*) FROM shop.orders")
            .await
            .unwrap_or(None);
        if n == Some(4) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = promote_fenced(&config, "replica").await;
    assert!(
        out.contains("shop.orders") && out.contains("equal"),
        "{out}"
    );
    // The session from before the fence was ended; a new one cannot write.
    assert!(
        app.query_drop("INSERT INTO shop.orders (note) VALUES ('late')")
            .await
            .is_err()
    );
    let mut late = app_conn().await;
    assert!(
        late.query_drop("INSERT INTO shop.orders (note) VALUES ('late')")
            .await
            .is_err()
    );
    ferry.stop().unwrap();
    d.query_drop("INSERT INTO shop.orders (note) VALUES ('on the new primary')")
        .await
        .unwrap();
    let id: Option<u64> = d.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert!(id.unwrap() > 4, "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_to_postgresql_switchover_counts_rows_and_gives_new_ids() {
    use mysql_async::prelude::Queryable;
    let src = ferry_tests::MariaDb::start().unwrap();
    let pg = Postgres::start().unwrap();
    let mut m = src.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int AUTO_INCREMENT PRIMARY KEY, note varchar(50));
         USE shop;
         INSERT INTO shop.orders (note) SELECT concat('n', seq) FROM seq_1_to_300;",
    )
    .await
    .unwrap();
    let sink = format!(
        "[[sink]]\nname = \"pg\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n",
        pg.url("postgres")
    );
    let config = FerryConfig::mysql(&src.url("shop"), src.server_id() + 1000, "", &sink).unwrap();
    let mut ferry = config.start(0).unwrap();
    for i in 0..20 {
        m.query_drop(format!("INSERT INTO shop.orders (note) VALUES ('w{i}')"))
            .await
            .unwrap();
    }
    let p = pg.connect().await;
    ferry.wait_rows(&p, "shop.orders", 320).await;
    let out = promote_fenced(&config, "pg").await;
    assert!(out.contains("shop.orders") && out.contains("320"), "{out}");
    ferry.stop().unwrap();
    let id: i32 = p
        .query_one(
            "INSERT INTO shop.orders (note) VALUES ('after') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id > 320, "{id}");
}

async fn rows(c: &tokio_postgres::Client) -> Vec<(i32, String)> {
    // No table yet (the sink creates it): no rows.
    c.query("SELECT id, note FROM orders ORDER BY id", &[])
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `--reverse`: the promoted replica is replicated back into the old primary from the moment
/// it took over, writes made before the reverse ferry starts included, while the old primary
/// stays read-only for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_replicates_the_new_primary_back_into_the_old_one() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         INSERT INTO orders (note) SELECT 'before' FROM generate_series(1, 100);",
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
    let r = replica.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&r).await.len() < 100 {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its own directory, so the reverse file is not the forward one.
    let reverse = FerryConfig::postgres("postgres://unused", "").unwrap();
    let out = promote_fenced_with(
        &config,
        "replica",
        &["--reverse", reverse.path().to_str().unwrap()],
    )
    .await;
    assert!(out.contains("reverse: wrote"), "{out}");
    ferry.stop().unwrap();

    // The application writes to the new primary before the reverse ferry runs.
    r.batch_execute(
        "INSERT INTO orders (note) SELECT 'after' FROM generate_series(1, 50);
         UPDATE orders SET note = 'changed' WHERE id % 10 = 0;
         DELETE FROM orders WHERE id % 7 = 0;",
    )
    .await
    .unwrap();
    let (code, check, err) =
        command(&["check", "--config", reverse.path().to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{check}{err}");
    let mut back = reverse.start(0).unwrap();
    r.batch_execute("INSERT INTO orders (note) VALUES ('while running')")
        .await
        .unwrap();
    let old = source.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = rows(&r).await;
        if rows(&old).await == want {
            assert_eq!(want.len(), 100 + 50 + 1 - 150 / 7);
            break;
        }
        back.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", back.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everyone else still reads the old primary only.
    assert!(
        old.batch_execute("INSERT INTO orders (note) VALUES ('stray')")
            .await
            .is_err()
    );
    back.stop().unwrap();
}

/// PostgreSQL to MariaDB: `verify` counts rows across engines, so the test compares them row by
/// row itself; the application's inserts on the promoted MariaDB get new ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_to_mariadb_switchover_is_equal_row_by_row() {
    use mysql_async::prelude::Queryable;
    let source = Postgres::start().unwrap();
    let target = ferry_tests::MariaDb::start().unwrap();
    let s = source.connect().await;
    s.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let config = FerryConfig::postgres(&source.url("postgres"), "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\n\
             create_tables = true\n",
            target.url("")
        ),
    )
    .unwrap();
    // Before ferry has applied anything, a switchover is refused and fences nothing.
    let (code, out, err) = command(&[
        "promote",
        "--config",
        config.path().to_str().unwrap(),
        "--sink",
        "maria",
        "--fence",
    ])
    .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("applied nothing yet"), "{out}{err}");
    let probe = source.connect().await;
    probe.batch_execute("SELECT 1").await.unwrap();
    let ferry = config.start(0).unwrap();
    s.batch_execute(
        "UPDATE orders SET note = 'changed' WHERE id % 9 = 0;
         DELETE FROM orders WHERE id % 11 = 0;
         INSERT INTO orders (note) SELECT 'late' FROM generate_series(1, 20);",
    )
    .await
    .unwrap();
    let mut t = target.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: Option<i64> = t
            .query_first("SELECT count(*) FROM public.orders")
            .await
            .unwrap_or(None);
        if n == Some(320 - 300 / 11) {
            break;
        }
        assert!(Instant::now() < deadline, "{n:?}\n{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read before the fence ends this session; the fenced source does not change after it.
    let want: Vec<(i32, String)> = rows(&s).await;
    assert_eq!(want.len(), 320 - 300 / 11);
    let out = promote_fenced(&config, "maria").await;
    assert!(out.contains("public.orders"), "{out}");
    ferry.stop().unwrap();
    let got: Vec<(i32, String)> = t
        .query("SELECT id, note FROM public.orders ORDER BY id")
        .await
        .unwrap();
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    t.query_drop("INSERT INTO public.orders (note) VALUES ('after')")
        .await
        .unwrap();
    let id: Option<u64> = t.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert!(id.unwrap() > 320, "{id:?}");
}

/// `--reverse` from a promoted MariaDB replica: the reverse spool starts at its binlog position
/// (and GTIDs) at the switchover, so writes made before the reverse ferry starts reach the old
/// primary too, which stays `read_only` for the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_from_a_promoted_mariadb_replica() {
    use mysql_async::prelude::Queryable;
    let src = ferry_tests::MariaDb::start().unwrap();
    let dst = ferry_tests::MariaDb::start().unwrap();
    let mut m = src.connect().await;
    m.query_drop(
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id int AUTO_INCREMENT PRIMARY KEY, note varchar(50));
         INSERT INTO shop.orders (note) VALUES ('a'), ('b'), ('c');
         CREATE USER app@'%' IDENTIFIED BY 'app-pw';
         GRANT SELECT, INSERT ON shop.* TO app@'%';",
    )
    .await
    .unwrap();
    let sink = format!(
        "[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url("")
    );
    let config = FerryConfig::mysql(&src.url("shop"), src.server_id() + 1000, "", &sink).unwrap();
    let ferry = config.start(0).unwrap();
    let mut d = dst.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: Option<i64> = d
            .query_first("SELECT count(*) FROM shop.orders")
            .await
            .unwrap_or(None);
        if n == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reverse = FerryConfig::postgres("postgres://unused", "").unwrap();
    let out = promote_fenced_with(
        &config,
        "maria",
        &["--reverse", reverse.path().to_str().unwrap()],
    )
    .await;
    assert!(out.contains("reverse: wrote"), "{out}");
    ferry.stop().unwrap();
    d.query_drop("INSERT INTO shop.orders (note) VALUES ('d'), ('e'); DELETE FROM shop.orders WHERE note = 'a'")
        .await
        .unwrap();
    let (code, check, err) =
        command(&["check", "--config", reverse.path().to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{check}{err}");
    let mut back = reverse.start(0).unwrap();
    d.query_drop("UPDATE shop.orders SET note = 'B' WHERE note = 'b'")
        .await
        .unwrap();
    let want: Vec<(i32, String)> = d
        .query("SELECT id, note FROM shop.orders ORDER BY id")
        .await
        .unwrap();
    let mut old = src.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<(i32, String)> = old
            .query("SELECT id, note FROM shop.orders ORDER BY id")
            .await
            .unwrap();
        if got == want {
            break;
        }
        back.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{got:?}\n{}", back.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The application's account still cannot write to the old primary.
    let app_url = format!("mysql://app:app-pw@127.0.0.1:{}/shop", src.port());
    let mut app = mysql_async::Conn::new(mysql_async::Opts::from_url(&app_url).unwrap())
        .await
        .unwrap();
    assert!(
        app.query_drop("INSERT INTO shop.orders (note) VALUES ('stray')")
            .await
            .is_err()
    );
    back.stop().unwrap();
}
