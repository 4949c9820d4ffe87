//! The PostgreSQL source against a real server: values of every supported type, replica
//! identities and TOAST, the snapshot meeting the stream with concurrent writes, streamed and
//! aborted large transactions, SIGKILL at random points, and gaps reported instead of skipped.
//!
//! Each test reads the spool back and checks the data itself: a strict model applies the events
//! (an insert of a key that exists, or an update or delete of one that does not, fails the test),
//! and its final state must equal the source table.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_proto::{Event, OldRow, Position, Relation, RelationId, ReplicaIdentity, Row, Value};
use ferry_spool::{Offset, read_all};
use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::postgres::PostgresOptions;
use ferry_tests::samples::{TYPES_DDL, types_insert};
use tokio_postgres::Client;

fn events(dir: &Path) -> Vec<Event> {
    if !dir.exists() {
        return Vec::new();
    }
    match read_all(dir, Offset(0)) {
        Ok(v) => v.into_iter().map(|(_, e)| e).collect(),
        // The directory exists but its first segment does not yet.
        Err(ferry_spool::SpoolError::Empty(_)) => Vec::new(),
        Err(e) => panic!("reading the spool: {e}"),
    }
}

/// Polls the spool until `done` holds for its events.
fn wait_for(dir: &Path, what: &str, timeout: Duration, done: impl Fn(&[Event]) -> bool) {
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

/// Waits for the message `pg_logical_emit_message(…, 'ferry-test', …)` the tests end with.
fn wait_for_marker(dir: &Path, secs: u64) {
    wait_for(dir, "the marker message", Duration::from_secs(secs), |e| {
        e.iter()
            .any(|e| matches!(e, Event::Message(m) if m.prefix == "ferry-test"))
    });
}

/// Waits for the initial snapshot's transaction.
fn wait_for_snapshot(dir: &Path, secs: u64) {
    wait_for(dir, "the snapshot", Duration::from_secs(secs), |e| {
        e.iter().any(|e| matches!(e, Event::Commit(_)))
    });
}

/// The committed row events of the spool, per table, with the relation they belong to.
#[derive(Debug, Default)]
struct Model {
    relations: HashMap<RelationId, Relation>,
    /// `schema.table` -> key (debug text of the key values) -> row.
    tables: HashMap<String, BTreeMap<String, Row>>,
    transactions: usize,
    last_commit: Option<Position>,
}

impl Model {
    /// Applies every event, strictly: a doubled insert or a missed row panics, and commit
    /// positions must increase.
    fn build(events: &[Event]) -> Model {
        let mut m = Model::default();
        let mut open = false;
        for ev in events {
            match ev {
                Event::Begin(b) => {
                    assert!(!open, "Begin inside a transaction");
                    open = true;
                    if let Some(last) = &m.last_commit {
                        assert!(
                            b.position > *last,
                            "commit order: {:?} after {last:?}",
                            b.position
                        );
                    }
                }
                Event::Commit(c) => {
                    assert!(open, "Commit without Begin");
                    open = false;
                    m.transactions += 1;
                    m.last_commit = Some(c.position.clone());
                }
                Event::Relation(r) => {
                    m.relations.insert(r.id, r.clone());
                }
                Event::Insert(i) => {
                    assert!(open, "row outside a transaction");
                    let (name, key) = m.key(i.relation, &i.new);
                    let prev = m
                        .tables
                        .entry(name.clone())
                        .or_default()
                        .insert(key.clone(), i.new.clone());
                    assert!(prev.is_none(), "{name}: key {key} inserted twice");
                }
                Event::Update(u) => {
                    let old_key = match &u.old {
                        Some(o) => m.key(u.relation, o.row()).1,
                        None => m.key(u.relation, &u.new).1,
                    };
                    let (name, new_key) = m.key(u.relation, &u.new);
                    let table = m.tables.entry(name.clone()).or_default();
                    let old = table
                        .remove(&old_key)
                        .unwrap_or_else(|| panic!("{name}: update of missing key {old_key}"));
                    let row = u
                        .new
                        .iter()
                        .zip(old)
                        .map(|(n, o)| if *n == Value::Unchanged { o } else { n.clone() })
                        .collect();
                    table.insert(new_key, row);
                }
                Event::Delete(d) => {
                    let (name, key) = m.key(d.relation, d.old.row());
                    let table = m.tables.entry(name.clone()).or_default();
                    assert!(
                        table.remove(&key).is_some(),
                        "{name}: delete of missing key {key}"
                    );
                }
                Event::Truncate(t) => {
                    for id in &t.relations {
                        let name = m.relations[id].qualified_name();
                        m.tables.remove(&name);
                    }
                }
                Event::Message(_) | Event::Heartbeat(_) => {}
            }
        }
        m
    }

    fn key(&self, rel: RelationId, row: &Row) -> (String, String) {
        let r = self
            .relations
            .get(&rel)
            .unwrap_or_else(|| panic!("row of relation {rel:?} before its Relation event"));
        let key: Vec<&Value> = r.key_columns().map(|i| &row[i]).collect();
        (r.qualified_name(), format!("{key:?}"))
    }

    /// The rows of a table as `id -> text` pairs (columns `id int`, `v text`).
    fn id_text(&self, table: &str) -> BTreeMap<i64, String> {
        self.tables
            .get(table)
            .map(|t| {
                t.values()
                    .map(|r| match (&r[0], &r[1]) {
                        (Value::Int(i), Value::Text(s)) => (*i, s.clone()),
                        other => panic!("unexpected row {other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn source_id_text(client: &Client, table: &str) -> BTreeMap<i64, String> {
    client
        .query(&format!("SELECT id::int8, v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn other(type_name: &str, text: &str) -> Value {
    Value::Other {
        type_name: type_name.into(),
        text: text.into(),
    }
}

/// What the three rows of [`types_insert`] must decode to, without their ids.
fn types_expected() -> Vec<Vec<Value>> {
    use Value::*;
    let uuid = ferry_proto::position::parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let row1 = vec![
        Bool(true),
        Int(-32768),
        Int(-2147483648),
        Int(i64::MIN),
        Float(f64::NAN),
        Float(f64::NEG_INFINITY),
        Numeric("NaN".into()),
        Numeric("123.45".into()),
        Text("h\u{e9}llo \u{2603} \"q\" \t\n".into()),
        Text("abc".into()),
        Text("ab ".into()),
        Bytes(vec![0, 255]),
        Date(-719_162),
        Time(86_400_000_000),
        TimeTz {
            micros: 86_399_999_999,
            offset_secs: 14 * 3600,
        },
        Timestamp(946_684_800_000_001),
        TimestampTz(i64::MAX),
        Interval {
            months: 14,
            days: -3,
            micros: 14_706_789_000,
        },
        Uuid(uuid),
        Json("{\"a\": [1, 2]}".into()),
        Json("{\"a\": null, \"b\": 1}".into()),
        Array(vec![]),
        Array(vec![Text("x y".into()), Null, Text(String::new())]),
        Array(vec![Numeric("NaN".into()), Numeric("1.5".into())]),
        other("inet", "192.168.0.1/24"),
        other("cidr", "10.0.0.0/8"),
        other("macaddr", "08:00:2b:01:02:03"),
        other("mood", "happy"),
        Int(42),
        other("point", "(1,2)"),
        Array(vec![
            TimestampTz(1_709_204_400_000_000),
            TimestampTz(i64::MAX),
        ]),
    ];
    let row2 = vec![Null; row1.len()];
    let row3 = vec![
        Bool(false),
        Int(32767),
        Int(2147483647),
        Int(i64::MAX),
        Float(f64::INFINITY),
        Float(1.5e300),
        Numeric("-Infinity".into()),
        Numeric("-0.01".into()),
        Text(String::new()),
        Text("x".into()),
        Text("xyz".into()),
        Bytes(vec![]),
        Date(i32::MAX),
        Time(0),
        TimeTz {
            micros: 0,
            offset_secs: -19_800,
        },
        // 15 March 44 BC (astronomical year -43), noon.
        Timestamp(-63_517_780_800_000_000),
        TimestampTz(i64::MIN),
        Interval {
            months: 0,
            days: 0,
            micros: -1,
        },
        Uuid([0; 16]),
        Json("[]".into()),
        Json("[]".into()),
        Array(vec![Array(vec![Int(1), Int(2)]), Array(vec![Int(3), Null])]),
        Array(vec![]),
        Array(vec![Numeric("-Infinity".into())]),
        other("inet", "::1"),
        other("cidr", "::/0"),
        other("macaddr", "ff:ff:ff:ff:ff:ff"),
        other("mood", "sad"),
        Int(2147483647),
        other("point", "(-1.5,0)"),
        Array(vec![]),
    ];
    vec![row1, row2, row3]
}

/// NaN is not equal to itself: compare values by their debug text.
fn dbg<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_replica_identity_and_toast_round_trip() {
    let pg = Postgres::start().unwrap();
    let client = pg.connect().await;
    client.batch_execute(TYPES_DDL).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE ri_default (id int PRIMARY KEY, v text);
             CREATE TABLE ri_full (id int, v text); ALTER TABLE ri_full REPLICA IDENTITY FULL;
             CREATE TABLE ri_index (id int, code text NOT NULL, v text);
             CREATE UNIQUE INDEX ri_index_code ON ri_index (code);
             ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_code;
             CREATE TABLE ri_nothing (id int, v text); ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE toast (id int PRIMARY KEY, big text, small int);
             ALTER TABLE toast ALTER big SET STORAGE EXTERNAL;",
        )
        .await
        .unwrap();
    // Rows 1-3 go through the snapshot (COPY), rows 11-13 through the stream (pgoutput).
    client.batch_execute(&types_insert(0)).await.unwrap();
    // ri_nothing is published as it is: its inserts are what this test reads.
    let config = FerryConfig::postgres(&pg.url("postgres"), "keyless = \"allow\"").unwrap();
    let ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 60);
    client.batch_execute(&types_insert(10)).await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO ri_default VALUES (1, 'a'), (2, 'b');
             INSERT INTO ri_full VALUES (1, 'a'), (2, 'b');
             INSERT INTO ri_index VALUES (1, 'c1', 'a'), (2, 'c2', 'b');
             INSERT INTO ri_nothing VALUES (1, 'a');
             UPDATE ri_default SET id = 3 WHERE id = 2; DELETE FROM ri_default WHERE id = 1;
             UPDATE ri_full SET v = 'z' WHERE id = 2; DELETE FROM ri_full WHERE id = 1;
             UPDATE ri_index SET code = 'c3' WHERE id = 2; DELETE FROM ri_index WHERE id = 1;
             INSERT INTO toast VALUES (1, '{}', 1);
             UPDATE toast SET small = 2 WHERE id = 1;
             CREATE TABLE late (id int PRIMARY KEY, v text);
             INSERT INTO late VALUES (1, 'created after the start');
             ALTER TABLE ri_default ADD COLUMN extra int;
             INSERT INTO ri_default VALUES (4, 'd', 44);
             ALTER TABLE ri_default DROP COLUMN extra;
             INSERT INTO ri_default VALUES (5, 'e');
             SELECT pg_logical_emit_message(true, 'ferry-test', 'done');",
            "x".repeat(100_000)
        ))
        .await
        .unwrap();
    wait_for_marker(&config.spool_dir(), 60);
    ferry.stop().unwrap();
    let evs = events(&config.spool_dir());
    let model = Model::build(&evs);

    // Every type, through the snapshot and through the stream.
    let types = &model.tables["public.types"];
    let rows: BTreeMap<i64, &Row> = types
        .values()
        .map(|r| match r[0] {
            Value::Int(id) => (id, r),
            _ => panic!("id"),
        })
        .collect();
    let expected = types_expected();
    for (base, path) in [(0, "snapshot"), (10, "stream")] {
        for (k, want) in expected.iter().enumerate() {
            let got = &rows[&(base + k as i64 + 1)][1..];
            for (col, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(dbg(g), dbg(w), "{path}: row {} column {}", k + 1, col + 1);
            }
            assert_eq!(got.len(), want.len());
        }
    }
    let types_rel = model
        .relations
        .values()
        .find(|r| r.name == "types")
        .unwrap();
    let names: Vec<&str> = types_rel
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(names[8], "numeric(12,2)");
    assert_eq!(names[10], "character varying(10)");
    assert_eq!(names[28], "mood");
    assert_eq!(names[29], "posint");

    // Replica identities: which columns are keys, and what the old row of an update or delete is.
    let rel = |name: &str| model.relations.values().find(|r| r.name == name).unwrap();
    let keys = |name: &str| -> Vec<bool> { rel(name).columns.iter().map(|c| c.key).collect() };
    assert_eq!(rel("ri_default").replica_identity, ReplicaIdentity::Default);
    assert_eq!(keys("ri_default"), [true, false]);
    assert_eq!(rel("ri_full").replica_identity, ReplicaIdentity::Full);
    assert_eq!(keys("ri_full"), [true, true]);
    assert_eq!(rel("ri_index").replica_identity, ReplicaIdentity::Index);
    assert_eq!(keys("ri_index"), [false, true, false]);
    assert_eq!(rel("ri_nothing").replica_identity, ReplicaIdentity::Nothing);
    assert_eq!(keys("ri_nothing"), [false, false]);
    let olds: Vec<(String, &OldRow)> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Update(u) => u
                .old
                .as_ref()
                .map(|o| (model.relations[&u.relation].name.clone(), o)),
            Event::Delete(d) => Some((model.relations[&d.relation].name.clone(), &d.old)),
            _ => None,
        })
        .collect();
    let find = |name: &str| -> Vec<&OldRow> {
        olds.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, o)| *o)
            .collect()
    };
    // Key change and delete by primary key: the key only.
    assert_eq!(
        find("ri_default"),
        [
            &OldRow::Key(vec![Value::Int(2), Value::Null]),
            &OldRow::Key(vec![Value::Int(1), Value::Null])
        ]
    );
    assert_eq!(
        find("ri_full"),
        [
            &OldRow::Full(vec![Value::Int(2), Value::Text("b".into())]),
            &OldRow::Full(vec![Value::Int(1), Value::Text("a".into())])
        ]
    );
    assert_eq!(
        find("ri_index"),
        [
            &OldRow::Key(vec![Value::Null, Value::Text("c2".into()), Value::Null]),
            &OldRow::Key(vec![Value::Null, Value::Text("c1".into()), Value::Null])
        ]
    );
    // A table created after the start (FOR ALL TABLES publication), and a column added and
    // dropped: each schema reaches the spool before the rows that have it.
    assert_eq!(
        model.id_text("public.late"),
        BTreeMap::from([(1, "created after the start".to_string())])
    );
    let ri_default_shapes: Vec<usize> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Relation(r) if r.name == "ri_default" => Some(r.columns.len()),
            _ => None,
        })
        .collect();
    assert_eq!(ri_default_shapes, [2, 3, 2]);
    let ri_rows: Vec<usize> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Insert(i) if model.relations[&i.relation].name == "ri_default" => {
                Some(i.new.len())
            }
            _ => None,
        })
        .collect();
    assert_eq!(ri_rows, [2, 2, 3, 2]);

    // An unchanged TOAST value is marked unchanged, never a placeholder.
    let toast_updates: Vec<&Row> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Update(u) if model.relations[&u.relation].name == "toast" => Some(&u.new),
            _ => None,
        })
        .collect();
    assert_eq!(
        toast_updates,
        [&vec![Value::Int(1), Value::Unchanged, Value::Int(2)]]
    );
    let toast = &model.tables["public.toast"];
    let row = toast.values().next().unwrap();
    assert_eq!(row[1], Value::Text("x".repeat(100_000)));
    assert_eq!(row[2], Value::Int(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_meets_the_stream_with_concurrent_writes() {
    let pg = Postgres::start().unwrap();
    let client = pg.connect().await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 100000) g;
             INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 50000) g;",
        )
        .await
        .unwrap();
    // A writer commits small transactions on both tables throughout the snapshot.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = pg.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE a SET v = 'u{i}' WHERE id = {};
                         DELETE FROM a WHERE id = {};
                         INSERT INTO a VALUES ({}, 'n{i}');
                         UPDATE b SET id = id + 1000000 WHERE id = {};
                         COMMIT;",
                        (i * 7919) % 100000 + 1,
                        (i * 104729) % 100000 + 1,
                        200000 + i,
                        (i * 31) % 50000 + 1,
                    ))
                    .await
                    .unwrap();
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = FerryConfig::postgres(&pg.url("postgres"), "snapshot_workers = 2").unwrap();
    let ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 120);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(
        writes > 10,
        "the writer ran during the snapshot ({writes} transactions)"
    );
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'ferry-test', 'done')")
        .await
        .unwrap();
    wait_for_marker(&config.spool_dir(), 60);
    ferry.stop().unwrap();
    let model = Model::build(&events(&config.spool_dir()));
    assert_eq!(
        model.id_text("public.a"),
        source_id_text(&client, "a").await
    );
    assert_eq!(
        model.id_text("public.b"),
        source_id_text(&client, "b").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_transactions_commit_whole_in_order_and_aborted_ones_vanish() {
    let pg = Postgres::start_with(PostgresOptions {
        settings: vec![("logical_decoding_work_mem".into(), "64kB".into())],
        ..Default::default()
    })
    .unwrap();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "txn_memory_mb = 1").unwrap();
    let ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 60);
    let other = pg.connect().await;
    // A large transaction, streamed while in progress, with a rolled-back savepoint in the
    // middle; a small transaction commits while it is open; then a large one aborts.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO big SELECT g, 'first' FROM generate_series(1, 30000) g;
             SAVEPOINT s;
             INSERT INTO big SELECT g, 'rolled back' FROM generate_series(30001, 40000) g;
             ROLLBACK TO s;",
        )
        .await
        .unwrap();
    other
        .batch_execute("INSERT INTO big VALUES (-1, 'small')")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO big SELECT g, 'second' FROM generate_series(40001, 60000) g; COMMIT;",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "BEGIN; INSERT INTO big SELECT g, 'aborted' FROM generate_series(100001, 150000) g;
             ROLLBACK;
             SELECT pg_logical_emit_message(false, 'ferry-test', 'done');",
        )
        .await
        .unwrap();
    wait_for_marker(&config.spool_dir(), 60);
    ferry.stop().unwrap();
    let evs = events(&config.spool_dir());
    let model = Model::build(&evs);
    assert_eq!(
        model.id_text("public.big"),
        source_id_text(&client, "big").await
    );
    // Transactions: snapshot, the small one, then the large one (commit order), nothing else.
    let sizes: Vec<usize> = evs
        .split(|e| matches!(e, Event::Commit(_)))
        .map(|txn| txn.iter().filter(|e| matches!(e, Event::Insert(_))).count())
        .collect();
    assert_eq!(sizes[..3], [0, 1, 50000], "rows per transaction");
    assert!(
        !evs.iter()
            .any(|e| matches!(e, Event::Insert(i) if i.new[1] == Value::Text("aborted".into()))),
        "rows of the aborted transaction reached the spool"
    );
    let spill = std::fs::read_dir(config.spool_dir().join("spill"))
        .unwrap()
        .count();
    assert_eq!(spill, 0, "spill files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_points_keeps_every_change_exactly_once_in_order() {
    let pg = Postgres::start_with(PostgresOptions {
        settings: vec![("logical_decoding_work_mem".into(), "64kB".into())],
        ..Default::default()
    })
    .unwrap();
    let client = pg.connect().await;
    client
        .batch_execute(
            "CREATE TABLE log (id int PRIMARY KEY, v text);
             CREATE TABLE counter (id int PRIMARY KEY, v text);
             INSERT INTO counter VALUES (1, '0');
             INSERT INTO log SELECT g, 'initial' FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "txn_memory_mb = 1").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = pg.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                // Every 50th transaction is large enough to be streamed.
                let rows = if i % 50 == 0 { 2000 } else { 1 };
                let first = 1_000_000 + i * 10_000;
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         INSERT INTO log SELECT g, 'w{i}' FROM generate_series({first}, {}) g;
                         UPDATE counter SET v = '{i}' WHERE id = 1;
                         COMMIT;",
                        first + rows - 1
                    ))
                    .await
                    .unwrap();
            }
            i
        })
    };
    // Kill ferry at pseudo-random moments (including during the snapshot), restarting each time.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for n in 0..5 {
        let ferry = config.start(n).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let ms = 100 + seed % 1500;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ferry.kill();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'ferry-test', 'done')")
        .await
        .unwrap();
    let ferry = config.start(99).unwrap();
    wait_for_marker(&config.spool_dir(), 120);
    ferry.stop().unwrap();
    let evs = events(&config.spool_dir());
    let model = Model::build(&evs);
    assert_eq!(
        model.id_text("public.log"),
        source_id_text(&client, "log").await
    );
    assert_eq!(
        model.id_text("public.counter"),
        BTreeMap::from([(1, writes.to_string())])
    );
    // The counter's updates after the snapshot are 1, 2, 3, … in order, each exactly once.
    let counter_id = model
        .relations
        .values()
        .find(|r| r.name == "counter")
        .unwrap()
        .id;
    // The counter's value in an insert (the snapshot) or an update (the stream) of its row.
    let counter = |e: &Event| -> Option<(bool, i32)> {
        let (insert, row) = match e {
            Event::Insert(i) if i.relation == counter_id => (true, &i.new),
            Event::Update(u) if u.relation == counter_id => (false, &u.new),
            _ => return None,
        };
        match &row[1] {
            Value::Text(t) => Some((insert, t.parse().unwrap())),
            _ => None,
        }
    };
    let values: Vec<(bool, i32)> = evs.iter().filter_map(counter).collect();
    let snapshot_value = values.iter().find(|(insert, _)| *insert).unwrap().1;
    let seen: Vec<i32> = values.iter().filter(|(i, _)| !i).map(|(_, v)| *v).collect();
    let want: Vec<i32> = (snapshot_value + 1..=writes).collect();
    assert_eq!(seen, want, "counter updates in the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_slot_or_an_advanced_slot_is_a_gap_not_a_silent_restart() {
    let pg = Postgres::start().unwrap();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 60);
    ferry.stop().unwrap();

    // Another consumer advances the slot past what the spool holds.
    client
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    client
        .query("SELECT * FROM pg_logical_slot_get_binary_changes('ferry', NULL, NULL, 'proto_version', '1', 'publication_names', 'ferry')", &[])
        .await
        .unwrap();
    let fails_with = |n: usize, needle: &str| {
        let (code, log) = config
            .start(n)
            .unwrap()
            .wait_exit(Duration::from_secs(90))
            .unwrap();
        assert_eq!(code, 1, "{log}");
        assert!(log.contains(needle), "{needle:?} not in: {log}");
        log
    };
    fails_with(1, "another consumer advanced the slot");

    // The slot is dropped.
    client
        .batch_execute("SELECT pg_drop_replication_slot('ferry')")
        .await
        .unwrap();
    let log = fails_with(2, "does not exist");
    assert!(
        log.contains("snapshot = \\\"initial\\\"") || log.contains("snapshot = \"initial\""),
        "{log}"
    );
    // Nothing was added to the spool by either failed start.
    let model = Model::build(&events(&config.spool_dir()));
    assert_eq!(
        model.id_text("public.t"),
        BTreeMap::from([(1, "a".to_string())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_after_killed_walsenders_without_loss() {
    let mut pg = Postgres::start_with(PostgresOptions {
        settings: vec![("logical_decoding_work_mem".into(), "64kB".into())],
        ..Default::default()
    })
    .unwrap();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE log (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 60);
    // Transactions, some streamed, while the walsender is terminated every 200 ms.
    let killer = {
        let client = pg.connect().await;
        tokio::spawn(async move {
            let mut kills = 0;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = client
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                         WHERE slot_name = 'ferry' AND active_pid IS NOT NULL",
                        &[],
                    )
                    .await
                    .unwrap();
                kills += n;
            }
            kills
        })
    };
    for i in 0..300 {
        let rows = if i % 30 == 0 { 3000 } else { 1 };
        let first = i * 10_000;
        client
            .batch_execute(&format!(
                "INSERT INTO log SELECT g, 'a{i}' FROM generate_series({first}, {}) g",
                first + rows - 1
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kills = killer.await.unwrap();
    assert!(kills >= 3, "the walsender was terminated {kills} times");
    ferry.check_alive().unwrap();
    // Everything so far arrives (streamed transactions cut by a kill are sent again whole).
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'caught-up', '')")
        .await
        .unwrap();
    wait_for(
        &config.spool_dir(),
        "the first marker",
        Duration::from_secs(120),
        |e| {
            e.iter()
                .any(|e| matches!(e, Event::Message(m) if m.prefix == "caught-up"))
        },
    );

    // Then the server restarts in the middle of more of the same workload.
    let writer = {
        let client = pg.connect().await;
        tokio::spawn(async move {
            for i in 300..360 {
                let rows = if i % 20 == 0 { 3000 } else { 1 };
                let first = i * 10_000;
                // The server goes away for a moment: a failed statement is simply not committed.
                let _ = client
                    .batch_execute(&format!(
                        "INSERT INTO log SELECT g, 'b{i}' FROM generate_series({first}, {}) g",
                        first + rows - 1
                    ))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    pg.restart().unwrap();
    let _ = writer.await;
    let client = pg.connect().await;
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'after-restart', '')")
        .await
        .unwrap();
    wait_for(
        &config.spool_dir(),
        "the marker after the restart",
        Duration::from_secs(150),
        |e| {
            e.iter()
                .any(|e| matches!(e, Event::Message(m) if m.prefix == "after-restart"))
        },
    );
    ferry.check_alive().unwrap();
    let log = ferry.log_text();
    assert!(
        log.contains("reconnecting"),
        "no reconnect in the log:\n{log}"
    );
    ferry.stop().unwrap();
    let model = Model::build(&events(&config.spool_dir()));
    assert_eq!(
        model.id_text("public.log"),
        source_id_text(&client, "log").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_snapshot_starts_over_and_copies_each_row_once() {
    let pg = Postgres::start().unwrap();
    let client = pg.connect().await;
    client
        .batch_execute(
            "CREATE TABLE wide (id int PRIMARY KEY, v text);
             INSERT INTO wide SELECT g, repeat('v', 100) || g FROM generate_series(1, 1000000) g;",
        )
        .await
        .unwrap();
    let config = FerryConfig::postgres(&pg.url("postgres"), "snapshot_workers = 1").unwrap();
    let ferry = config.start(0).unwrap();
    // SIGTERM once part of the copy is durable in the spool (watching the files' size, which is
    // cheap enough to catch the copy in its first second), before its Commit.
    let spool_bytes = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while spool_bytes(&config.spool_dir()) < 8 << 20 {
        assert!(Instant::now() < deadline, "the copy did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped = Instant::now();
    ferry.stop().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "stop waited for the copy"
    );
    let partial = events(&config.spool_dir());
    assert!(partial.iter().any(|e| matches!(e, Event::Insert(_))));
    assert!(
        !partial.iter().any(|e| matches!(e, Event::Commit(_))),
        "the copy finished before the test could interrupt it; make the table larger"
    );

    client
        .batch_execute("UPDATE wide SET v = 'changed' WHERE id = 1")
        .await
        .unwrap();
    let ferry = config.start(1).unwrap();
    // The slot is recreated for the new copy: changes before that are in the copy.
    wait_for_snapshot(&config.spool_dir(), 120);
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'ferry-test', 'done')")
        .await
        .unwrap();
    wait_for_marker(&config.spool_dir(), 120);
    ferry.stop().unwrap();
    let evs = events(&config.spool_dir());
    let model = Model::build(&evs);
    assert_eq!(
        model.id_text("public.wide"),
        source_id_text(&client, "wide").await
    );
    let begins = evs.iter().filter(|e| matches!(e, Event::Begin(_))).count();
    assert_eq!(begins, 2, "one snapshot and the marker's transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authenticates_with_scram_md5_and_cleartext_passwords() {
    let pg = Postgres::start().unwrap();
    let client = pg.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE u_scram SUPERUSER LOGIN PASSWORD 'pw scram';
             CREATE ROLE u_clear SUPERUSER LOGIN PASSWORD 'pw clear';
             SET password_encryption = 'md5';
             CREATE ROLE u_md5 SUPERUSER LOGIN PASSWORD 'pw md5';",
        )
        .await
        .unwrap();
    // Password methods for these roles come before the harness's `trust` lines.
    let hba = pg.dir().join("data/pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all u_scram 127.0.0.1/32 scram-sha-256\nhost all u_md5 127.0.0.1/32 md5\n\
             host all u_clear 127.0.0.1/32 password\n{old}"
        ),
    )
    .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let port = pg.port();
    for (user, password) in [
        ("u_scram", "pw%20scram"),
        ("u_md5", "pw%20md5"),
        ("u_clear", "pw%20clear"),
    ] {
        let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/postgres");
        let config = FerryConfig::postgres(&url, &format!("slot = \"{user}\"")).unwrap();
        let ferry = config.start(0).unwrap();
        wait_for_snapshot(&config.spool_dir(), 60);
        ferry.stop().unwrap();
        let model = Model::build(&events(&config.spool_dir()));
        assert_eq!(
            model.id_text("public.t"),
            BTreeMap::from([(1, "a".to_string())])
        );

        // A wrong password is a clear failure, not a retry loop.
        let url = format!("postgres://{user}:wrong@127.0.0.1:{port}/postgres");
        let config = FerryConfig::postgres(&url, &format!("slot = \"{user}_x\"")).unwrap();
        let (code, log) = config
            .start(1)
            .unwrap()
            .wait_exit(Duration::from_secs(30))
            .unwrap();
        assert_eq!(code, 1, "{user}: {log}");
        assert!(
            log.contains("password authentication failed"),
            "{user}: {log}"
        );
    }
}

/// A source server restart while ferry streams: the server ends the replication stream at its
/// shutdown, ferry reconnects once it is back, and every committed change arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_waited_out_and_nothing_is_lost() {
    let mut pg = Postgres::start().unwrap();
    {
        let c = pg.connect().await;
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
            .await
            .unwrap();
    }
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_snapshot(&config.spool_dir(), 60);
    {
        let c = pg.connect().await;
        c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    }
    let has = |id: i32| {
        move |e: &[Event]| {
            e.iter()
                .any(|e| matches!(e, Event::Insert(i) if i.new[0] == Value::Int(i64::from(id))))
        }
    };
    wait_for(
        &config.spool_dir(),
        "row 1",
        Duration::from_secs(60),
        has(1),
    );
    pg.restart().unwrap();
    {
        let c = pg.connect().await;
        c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    }
    wait_for(
        &config.spool_dir(),
        "row 2 after the restart",
        Duration::from_secs(90),
        has(2),
    );
    ferry.check_alive().unwrap();
    ferry.stop().unwrap();
    let inserts = events(&config.spool_dir())
        .iter()
        .filter(|e| matches!(e, Event::Insert(_)))
        .count();
    assert_eq!(inserts, 2, "each row exactly once");
}
