//! Tables a sink creates are the source's tables: after the initial snapshot of an OLTP schema
//! with composite keys (primary keys in an order other than the columns'), an identity, a
//! serial, an enum, a domain, a composite type, a generated column, unique constraints and
//! secondary indexes, and for a table created while ferry streams, the replica's catalog matches
//! the source's: on a PostgreSQL replica exactly, on a MariaDB replica as mapped.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_tests::ferry::{FerryConfig, FerryRun};
use ferry_tests::{MariaDb, Postgres};
use mysql_async::prelude::Queryable;
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
    CREATE TYPE addr AS (street text, zip text);
    CREATE TABLE warehouse (w_id int PRIMARY KEY, w_name varchar(10) NOT NULL,
        w_ytd numeric(12,2) NOT NULL);
    CREATE TABLE district (d_id int NOT NULL, d_w_id int NOT NULL, d_name text,
        PRIMARY KEY (d_w_id, d_id));
    CREATE TABLE orders (o_id bigint GENERATED ALWAYS AS IDENTITY, o_d_id int NOT NULL,
        o_w_id int NOT NULL, o_c_id int, o_mood mood, o_qty positive, o_ship addr,
        o_total integer GENERATED ALWAYS AS (o_qty * 2) STORED,
        PRIMARY KEY (o_w_id, o_d_id, o_id), UNIQUE (o_c_id, o_id));
    CREATE INDEX orders_c ON orders (o_c_id);
    CREATE INDEX orders_mood ON orders (o_mood) WHERE o_mood IS NOT NULL;
    CREATE TABLE history (h_id serial PRIMARY KEY, h_amount numeric(6,2) NOT NULL);
    INSERT INTO warehouse SELECT g, 'w' || g, 0 FROM generate_series(1, 3) g;
    INSERT INTO district SELECT d, w, 'd' FROM generate_series(1, 3) w, generate_series(1, 4) d;
    INSERT INTO orders (o_d_id, o_w_id, o_c_id, o_mood, o_qty, o_ship)
        SELECT g % 4 + 1, g % 3 + 1, g, 'ok', g, ROW('street ' || g, '1000')::addr
        FROM generate_series(1, 300) g;
    INSERT INTO history (h_amount) SELECT 1.5 FROM generate_series(1, 50);";

const TABLES: &[&str] = &["warehouse", "district", "orders", "history", "later"];

/// A table's catalog on PostgreSQL, as comparable text lines: columns (name, type, NOT NULL,
/// identity, generated, default), the primary key in order, and every index's definition.
async fn pg_catalog(c: &Client, table: &str) -> Vec<String> {
    let mut out: Vec<String> = c
        .query(
            "SELECT format('%s %s notnull=%s identity=%s generated=%s default=%s', a.attname,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    -- ferry creates ALWAYS as BY DEFAULT: it writes the source's values.
                    CASE a.attidentity WHEN '' THEN '' ELSE 'yes' END, a.attgenerated,
                    pg_get_expr(d.adbin, d.adrelid))
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.extend(
        c.query(
            "SELECT 'pk ' || string_agg(a.attname, ',' ORDER BY k.ord)
             FROM pg_constraint con, unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attnum = k.attnum
             WHERE con.conrelid = $1::text::regclass AND con.contype = 'p' AND a.attrelid = con.conrelid",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()),
    );
    let mut indexes: Vec<String> = c
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    indexes.sort();
    out.extend(indexes);
    out
}

async fn wait_rows(s: &Client, r: &Client, table: &str, ferry: &mut FerryRun) {
    let q = format!("SELECT t::text FROM {table} t ORDER BY 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a: Vec<String> = s
            .query(&q, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let b: Vec<String> = match r.query(&q, &[]).await {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(_) => Vec::new(),
        };
        if a == b {
            return;
        }
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "{table}: {} source rows, {} replica rows\n{}",
            a.len(),
            b.len(),
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A table's keys and columns on MariaDB: (column, type, nullable, extra) in order, then each
/// index with its columns in order.
async fn my_catalog(c: &mut mysql_async::Conn, table: &str) -> Vec<String> {
    let mut out: Vec<String> = c
        .exec::<(String, String, String, String), _, _>(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = 'public' AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (table,),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(n, t, null, extra)| format!("{n} {t} null={null} {extra}"))
        .collect();
    out.extend(
        c.exec::<(String, i64, String), _, _>(
            "SELECT INDEX_NAME, NON_UNIQUE, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'public' AND TABLE_NAME = ? \
             GROUP BY INDEX_NAME, NON_UNIQUE ORDER BY INDEX_NAME",
            (table,),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(n, nu, cols)| format!("index {n} unique={} ({cols})", nu == 0)),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn created_tables_are_the_source_tables_on_both_engines() {
    let source = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let maria = MariaDb::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    s.batch_execute(SCHEMA).await.unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &replica.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\n\
             create_tables = true\n",
            maria.url("")
        ),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    for t in ["warehouse", "district", "orders", "history"] {
        wait_rows(&s, &r, t, &mut ferry).await;
    }
    // A table created while ferry streams.
    s.batch_execute(
        "CREATE TABLE later (id bigserial PRIMARY KEY, k text NOT NULL UNIQUE, v int, w int NOT NULL);
         CREATE INDEX later_vw ON later (w, v);
         INSERT INTO later (k, v, w) SELECT 'k' || g, g, g % 5 FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    wait_rows(&s, &r, "later", &mut ferry).await;

    // PostgreSQL: the same catalog, table by table, and the types.
    for t in TABLES {
        assert_eq!(
            pg_catalog(&r, t).await,
            pg_catalog(&s, t).await,
            "{t} differs on the replica\n{}",
            ferry.log_text()
        );
    }
    let labels = "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum
                  WHERE enumtypid = 'mood'::regtype";
    let (a, b): (String, String) = (
        s.query_one(labels, &[]).await.unwrap().get(0),
        r.query_one(labels, &[]).await.unwrap().get(0),
    );
    assert_eq!(a, b);
    let domain =
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = 'positive'::regtype";
    let (a, b): (String, String) = (
        s.query_one(domain, &[]).await.unwrap().get(0),
        r.query_one(domain, &[]).await.unwrap().get(0),
    );
    assert_eq!(a, b);
    // A promoted replica takes the application's next insert: its counters are defined.
    r.batch_execute(
        "SELECT setval('history_h_id_seq', (SELECT max(h_id) FROM history));
         INSERT INTO history (h_amount) VALUES (9.99);",
    )
    .await
    .unwrap();

    // MariaDB: keys in the source's order, NOT NULL, counters, unique keys and indexes mapped.
    let mut m = maria.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: Option<i64> = m
            .query_first("SELECT COUNT(*) FROM public.later")
            .await
            .unwrap_or(None);
        if n == Some(20) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let orders = my_catalog(&mut m, "orders").await;
    assert!(
        orders.contains(&"index PRIMARY unique=true (o_w_id,o_d_id,o_id)".to_owned()),
        "{orders:?}"
    );
    assert!(
        orders.contains(&"index orders_c unique=false (o_c_id)".to_owned()),
        "{orders:?}"
    );
    assert!(
        orders
            .iter()
            .any(|l| l.starts_with("index orders_o_c_id_o_id_key unique=true (o_c_id,o_id)")),
        "{orders:?}"
    );
    assert!(
        orders
            .iter()
            .any(|l| l.starts_with("o_d_id int(11) null=NO")),
        "{orders:?}"
    );
    let district = my_catalog(&mut m, "district").await;
    assert!(
        district.contains(&"index PRIMARY unique=true (d_w_id,d_id)".to_owned()),
        "{district:?}"
    );
    let history = my_catalog(&mut m, "history").await;
    assert!(
        history
            .iter()
            .any(|l| l.starts_with("h_id int(11) null=NO auto_increment")),
        "{history:?}"
    );
    let later = my_catalog(&mut m, "later").await;
    assert!(
        later
            .iter()
            .any(|l| l.starts_with("id bigint(20) null=NO auto_increment")),
        "{later:?}"
    );
    assert!(
        later.contains(&"index later_vw unique=false (w,v)".to_owned()),
        "{later:?}"
    );
    assert!(
        later.iter().any(|l| l.starts_with("w int(11) null=NO")),
        "{later:?}"
    );
    // What does not map is named in the log: the partial index, the key on text.
    let log = ferry.log_text();
    assert!(log.contains("orders_mood"), "{log}");
    assert!(log.contains("later_k_key"), "{log}");
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_tables_are_created_as_the_source_defines_them_on_both_engines() {
    let src = MariaDb::start().unwrap();
    let dst = MariaDb::start().unwrap();
    let pg = Postgres::start().unwrap();
    let mut s = src.connect().await;
    s.query_drop(
        "CREATE DATABASE app;
         CREATE TABLE app.stock (s_i_id int NOT NULL, s_w_id int NOT NULL, s_qty smallint NOT NULL,
           note varchar(40), PRIMARY KEY (s_w_id, s_i_id), KEY qty (s_qty),
           UNIQUE KEY note_u (note(10)));
         CREATE TABLE app.item (i_id int NOT NULL AUTO_INCREMENT PRIMARY KEY,
           i_name varchar(24) NOT NULL, KEY by_name (i_name));
         INSERT INTO app.stock VALUES (1, 1, 5, 'a'), (2, 1, 6, 'b'), (1, 2, 7, NULL);
         INSERT INTO app.item (i_name) VALUES ('x'), ('y');",
    )
    .await
    .unwrap();
    let sinks = format!(
        "[[sink]]\nname = \"maria\"\ntype = \"mysql\"\nurl = \"{}\"\ncreate_tables = true\n\n\
         [[sink]]\nname = \"pg\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n",
        dst.url(""),
        pg.url("postgres")
    );
    let config = FerryConfig::mysql(&src.url("app"), src.server_id() + 1, "", &sinks).unwrap();
    let mut ferry = config.start(0).unwrap();
    let mut d = dst.connect().await;
    let r = pg.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: Option<i64> = d
            .query_first("SELECT COUNT(*) FROM app.item")
            .await
            .unwrap_or(None);
        let m = r
            .query_one("SELECT count(*) FROM app.item", &[])
            .await
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0);
        if n == Some(2) && m == 2 {
            break;
        }
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // MariaDB into MariaDB: the same keys, counters and indexes.
    let catalog = |db: &str, t: &str| {
        format!(
            "SELECT CONCAT_WS(' ', INDEX_NAME, NON_UNIQUE, GROUP_CONCAT(CONCAT(COLUMN_NAME, \
             IFNULL(CONCAT('(', SUB_PART, ')'), '')) ORDER BY SEQ_IN_INDEX)) \
             FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{t}' \
             GROUP BY INDEX_NAME, NON_UNIQUE ORDER BY INDEX_NAME"
        )
    };
    for t in ["stock", "item"] {
        let a: Vec<String> = s.query(catalog("app", t)).await.unwrap();
        let b: Vec<String> = d.query(catalog("app", t)).await.unwrap();
        assert_eq!(a, b, "{t}\n{}", ferry.log_text());
        let cols = format!(
            "SELECT CONCAT_WS(' ', COLUMN_NAME, IS_NULLABLE, EXTRA) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = '{t}' ORDER BY ORDINAL_POSITION"
        );
        let a: Vec<String> = s.query(&cols).await.unwrap();
        let b: Vec<String> = d.query(&cols).await.unwrap();
        assert_eq!(a, b, "{t}");
    }
    // MariaDB into PostgreSQL: the key in its order, NOT NULL, the counter as an identity, the
    // plain index; the prefix unique key cannot be the same on PostgreSQL and is named in the log.
    let pk: String = r
        .query_one(
            "SELECT string_agg(a.attname, ',' ORDER BY k.ord)
             FROM pg_constraint con, unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attnum = k.attnum
             WHERE con.conrelid = 'app.stock'::regclass AND con.contype = 'p'
               AND a.attrelid = con.conrelid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "s_w_id,s_i_id");
    let identity: String = r
        .query_one(
            "SELECT attidentity::text FROM pg_attribute
             WHERE attrelid = 'app.item'::regclass AND attname = 'i_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "d");
    let not_null: bool = r
        .query_one(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'app.stock'::regclass
             AND attname = 's_qty'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(not_null);
    let index: i64 = r
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND indexname = 'item_by_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(index, 1, "{}", ferry.log_text());
    assert!(ferry.log_text().contains("note_u"));
    ferry.stop().unwrap();
}
