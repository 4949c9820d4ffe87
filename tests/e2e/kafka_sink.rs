//! The Kafka sink against a real Apache Kafka (KRaft) and a real PostgreSQL: per-key order across
//! partitions, the envelopes, at-least-once across SIGKILL, and exactly-once with transactions.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::ferry::FerryConfig;
use ferry_tests::{Kafka, Postgres};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, TopicPartitionList};
use serde_json::Value as Json;

async fn create_topic(kafka: &Kafka, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// One consumed message: partition, key, value and the `ferry.position` header.
#[derive(Debug, Clone)]
struct Msg {
    partition: i32,
    key: Option<Json>,
    value: Option<Json>,
    position: String,
}

/// Every message of `topic`, reading until `done` holds or `timeout` passes.
fn consume(
    kafka: &Kafka,
    topic: &str,
    read_committed: bool,
    timeout: Duration,
    done: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "ferry-test")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    // `done` is asked when the topic is drained for now, or every 5,000 messages.
    let mut since_check = 0;
    while Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            if done(&out) {
                break;
            }
            continue;
        };
        since_check += 1;
        if since_check >= 5000 {
            since_check = 0;
            if done(&out) {
                break;
            }
        }
        let m = m.unwrap();
        let position = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "ferry.position")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
            .unwrap_or_default();
        out.push(Msg {
            partition: m.partition(),
            key: m.key().map(|k| serde_json::from_slice(k).unwrap()),
            value: m.payload().map(|p| serde_json::from_slice(p).unwrap()),
            position,
        });
    }
    out
}

fn kafka_config(pg: &Postgres, kafka: &Kafka, extra: &str) -> FerryConfig {
    let config = FerryConfig::postgres(&pg.url("postgres"), "").unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"events\"\ntype = \"kafka\"\nbrokers = \"{}\"\n\
             topic = \"ferry.{{schema}}.{{table}}\"\n{extra}\n",
            kafka.bootstrap()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_row_keeps_its_order_across_partitions_in_both_envelopes() {
    let pg = Postgres::start().unwrap();
    let kafka = Kafka::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(
        "CREATE TABLE counters (id int PRIMARY KEY, n int, note text, amount numeric(10,2), at timestamptz);
         INSERT INTO counters SELECT g, 0, 'c' || g, 1.50, '2024-02-29 12:00:00+01' FROM generate_series(1, 20) g;
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await
    .unwrap();
    create_topic(&kafka, "ferry.public.counters", 4).await;
    // notes has a topic of its own (a per-table override of the template).
    let config = kafka_config(
        &pg,
        &kafka,
        "tombstones = true\n[sink.topics]\n\"public.notes\" = \"notes-{database}\"",
    );
    let mut ferry = config.start(0).unwrap();
    // The snapshot first, so every update below is streamed.
    let snap = consume(
        &kafka,
        "ferry.public.counters",
        false,
        Duration::from_secs(60),
        |m| m.len() >= 20,
    );
    assert_eq!(snap.len(), 20, "{}", ferry.log_text());
    // Four writers update the same rows concurrently: each update adds 1 to n.
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = pg.connect().await;
        writers.push(tokio::spawn(async move {
            for i in 0..100 {
                let id = (i * 7 + w) % 20 + 1;
                c.batch_execute(&format!("UPDATE counters SET n = n + 1 WHERE id = {id}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    s.batch_execute("DELETE FROM counters WHERE id = 20")
        .await
        .unwrap();
    // 20 snapshot rows, 400 updates, 1 delete and its tombstone.
    let msgs = consume(
        &kafka,
        "ferry.public.counters",
        false,
        Duration::from_secs(90),
        |m| m.len() >= 422,
    );
    ferry.check_alive().unwrap();
    assert_eq!(msgs.len(), 422, "messages:\n{}", ferry.log_text());
    let mut per_key: BTreeMap<String, Vec<&Msg>> = BTreeMap::new();
    for m in &msgs {
        per_key
            .entry(m.key.as_ref().unwrap().to_string())
            .or_default()
            .push(m);
    }
    assert_eq!(per_key.len(), 20);
    let partitions: std::collections::BTreeSet<i32> = msgs.iter().map(|m| m.partition).collect();
    assert!(partitions.len() > 1, "keys spread over partitions");
    for (key, ms) in &per_key {
        assert!(
            ms.iter().all(|m| m.partition == ms[0].partition),
            "{key}: one partition"
        );
        let ns: Vec<i64> = ms
            .iter()
            .filter_map(|m| m.value.as_ref())
            .filter_map(|v| v["after"]["n"].as_i64())
            .collect();
        assert!(
            ns.windows(2).all(|w| w[1] == w[0] + 1),
            "{key}: {ns:?} not in order"
        );
    }
    // Each row's last message carries its final value on the source.
    for row in s.query("SELECT id, n FROM counters", &[]).await.unwrap() {
        let (id, n): (i32, i32) = (row.get(0), row.get(1));
        let ms = &per_key[&format!("{{\"id\":{id}}}")];
        let last = ms.last().unwrap().value.as_ref().unwrap();
        assert_eq!(last["after"]["n"], i64::from(n), "row {id}");
    }
    // The json envelope, typed values, and the tombstone after the delete.
    let first = msgs.iter().find(|m| m.value.is_some()).unwrap();
    let v = first.value.as_ref().unwrap();
    assert_eq!(v["table"], "counters");
    assert_eq!(v["after"]["amount"], "1.50");
    assert_eq!(v["after"]["at"], "2024-02-29T11:00:00.000000Z");
    assert!(v["position"].as_str().unwrap().starts_with("pg:"));
    let key20 = per_key.get("{\"id\":20}").unwrap();
    assert_eq!(key20.last().unwrap().value, None, "tombstone last");
    assert_eq!(key20[key20.len() - 2].value.as_ref().unwrap()["op"], "d");
    assert!(msgs.iter().all(|m| m.position.starts_with("pg:")));
    let notes = consume(
        &kafka,
        "notes-postgres",
        false,
        Duration::from_secs(30),
        |m| m.len() >= 3,
    );
    let mut bodies: Vec<&str> = notes
        .iter()
        .map(|m| m.value.as_ref().unwrap()["after"]["body"].as_str().unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["a", "b", "c"],
        "the override topic has notes' rows"
    );
    ferry.stop().unwrap();

    // The Debezium envelope, from a second sink reading the same spool from its start.
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace(
            "tombstones = true",
            "format = \"debezium\"\ntransaction_topic = \"dbz.transactions\"",
        )
        .replace("name = \"events\"", "name = \"debezium\"")
        .replace("ferry.{schema}.{table}", "dbz.{schema}.{table}"),
    )
    .unwrap();
    create_topic(&kafka, "dbz.public.counters", 2).await;
    let ferry = config.start(1).unwrap();
    let msgs = consume(
        &kafka,
        "dbz.public.counters",
        false,
        Duration::from_secs(60),
        |m| m.len() >= 421,
    );
    assert!(
        !msgs.is_empty(),
        "no debezium messages:\n{}",
        ferry.log_text()
    );
    ferry.stop().unwrap();
    let snapshot = msgs[0].value.as_ref().unwrap();
    assert_eq!(snapshot["op"], "r");
    assert_eq!(snapshot["before"], Json::Null);
    assert_eq!(snapshot["source"]["connector"], "postgresql");
    assert_eq!(snapshot["source"]["table"], "counters");
    assert!(snapshot["ts_ms"].is_i64());
    let update = msgs
        .iter()
        .find(|m| m.value.as_ref().is_some_and(|v| v["op"] == "u"))
        .unwrap();
    assert!(update.value.as_ref().unwrap()["source"]["lsn"].is_u64());

    // Transaction markers: a BEGIN and an END per source transaction, in order, the END
    // counting the transaction's row changes: 23 snapshot rows, 400 updates, 1 delete.
    let markers = consume(
        &kafka,
        "dbz.transactions",
        false,
        Duration::from_secs(30),
        |m| {
            m.iter()
                .filter_map(|m| m.value.as_ref())
                .filter_map(|v| v["event_count"].as_u64())
                .sum::<u64>()
                >= 424
        },
    );
    let values: Vec<&Json> = markers.iter().filter_map(|m| m.value.as_ref()).collect();
    assert!(values.len() >= 2 * 402, "{} markers", values.len());
    let mut total = 0;
    for pair in values.chunks(2) {
        assert_eq!(pair[0]["status"], "BEGIN", "{pair:?}");
        assert_eq!(pair[1]["status"], "END", "{pair:?}");
        assert_eq!(pair[0]["id"], pair[1]["id"]);
        total += pair[1]["event_count"].as_u64().unwrap();
    }
    assert_eq!(total, 424);
}

/// A workload of inserts with ferry killed at pseudo-random moments; returns the ids inserted.
async fn inserts_with_kills(pg: &Postgres, config: &FerryConfig) -> i64 {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = pg.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.batch_execute(&format!("INSERT INTO log VALUES ({i}, 'v{i}')"))
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            i
        })
    };
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    for n in 0..3 {
        let ferry = config.start(n).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(1500 + seed % 1500)).await;
        ferry.kill();
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_least_once_across_sigkill_and_exactly_once_with_transactions() {
    for exactly_once in [false, true] {
        let pg = Postgres::start().unwrap();
        let kafka = Kafka::start().unwrap();
        let s = pg.connect().await;
        s.batch_execute("CREATE TABLE log (id int8 PRIMARY KEY, v text)")
            .await
            .unwrap();
        create_topic(&kafka, "ferry.public.log", 3).await;
        let config = kafka_config(
            &pg,
            &kafka,
            if exactly_once {
                "exactly_once = true"
            } else {
                ""
            },
        );
        let n = inserts_with_kills(&pg, &config).await;
        let ferry = config.start(9).unwrap();
        let msgs = consume(
            &kafka,
            "ferry.public.log",
            exactly_once,
            Duration::from_secs(120),
            |m| {
                let ids: std::collections::BTreeSet<i64> = m
                    .iter()
                    .filter_map(|m| m.value.as_ref()?["after"]["id"].as_i64())
                    .collect();
                ids.len() as i64 >= n
            },
        );
        ferry.stop().unwrap();
        let mut count: BTreeMap<i64, usize> = BTreeMap::new();
        for m in &msgs {
            if let Some(id) = m.value.as_ref().and_then(|v| v["after"]["id"].as_i64()) {
                *count.entry(id).or_default() += 1;
            }
        }
        let missing: Vec<i64> = (1..=n).filter(|i| !count.contains_key(i)).collect();
        if !missing.is_empty() {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka.bootstrap())
                .create()
                .unwrap();
            let mut per: BTreeMap<i32, usize> = BTreeMap::new();
            for m in &msgs {
                *per.entry(m.partition).or_default() += 1;
            }
            let marks: Vec<(i64, i64)> = (0..3)
                .map(|p| {
                    consumer
                        .fetch_watermarks("ferry.public.log", p, Duration::from_secs(10))
                        .unwrap()
                })
                .collect();
            panic!(
                "lost {} of {n} (exactly_once = {exactly_once}); consumed per partition {per:?}; \
                 watermarks {marks:?}; first lost {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        let duplicates: usize = count.values().map(|c| c - 1).sum();
        eprintln!("exactly_once = {exactly_once}: {n} inserts, {duplicates} duplicates");
        if exactly_once {
            assert_eq!(duplicates, 0, "exactly once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_down_for_30_seconds_stalls_the_sink_and_loses_nothing() {
    let pg = Postgres::start().unwrap();
    let mut kafka = Kafka::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(
        "CREATE TABLE counters (id int PRIMARY KEY, n int);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g;",
    )
    .await
    .unwrap();
    create_topic(&kafka, "ferry.public.counters", 2).await;
    let config = kafka_config(&pg, &kafka, "");
    let mut ferry = config.start(0).unwrap();
    let snap = consume(
        &kafka,
        "ferry.public.counters",
        false,
        Duration::from_secs(60),
        |m| m.len() >= 5,
    );
    assert_eq!(snap.len(), 5);
    let writer = {
        let c = pg.connect().await;
        tokio::spawn(async move {
            for i in 0..300 {
                c.batch_execute(&format!(
                    "UPDATE counters SET n = n + 1 WHERE id = {}",
                    i % 5 + 1
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    ferry.check_alive().unwrap();
    let path = config.path().display().to_string();
    let (_, out, _) = ferry_tests::ferry::command(&["status", "--config", &path]).unwrap();
    assert!(
        out.contains("waiting for the broker"),
        "status while the broker is down:\n{out}\n{}",
        ferry.log_text()
    );
    kafka.start_again().unwrap();
    writer.await.unwrap();
    let msgs = consume(
        &kafka,
        "ferry.public.counters",
        false,
        Duration::from_secs(120),
        |m| m.len() >= 305,
    );
    ferry.check_alive().unwrap();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &msgs {
        per_key
            .entry(m.key.as_ref().unwrap().to_string())
            .or_default()
            .push(m.value.as_ref().unwrap()["after"]["n"].as_i64().unwrap());
    }
    for (key, ns) in &per_key {
        // Every value from 0 to 60, once each, in order: the idempotent producer retried
        // through the outage without duplicating or reordering.
        assert_eq!(ns, &(0..=60).collect::<Vec<_>>(), "{key}");
    }
    ferry.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_follows_on_error() {
    for policy in ["skip", "dead_letter", "halt"] {
        let pg = Postgres::start().unwrap();
        let kafka = Kafka::start().unwrap();
        let s = pg.connect().await;
        s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
        create_topic(&kafka, "ferry.public.t", 1).await;
        let config = kafka_config(
            &pg,
            &kafka,
            &format!(
                "on_error = \"{policy}\"\ndead_letter_topic = \"ferry.dead\"\n\
                 [sink.kafka]\n\"message.max.bytes\" = \"2000\""
            ),
        );
        let mut ferry = config.start(0).unwrap();
        s.batch_execute(&format!(
            "INSERT INTO t VALUES (1, 'small');
             INSERT INTO t VALUES (2, '{}');
             INSERT INTO t VALUES (3, 'small');",
            "x".repeat(5000)
        ))
        .await
        .unwrap();
        match policy {
            "halt" => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !ferry.log_text().contains("sink halted") {
                    assert!(Instant::now() < deadline, "{}", ferry.log_text());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let (code, _) = ferry.terminate().unwrap();
                assert_eq!(code, 1);
            }
            _ => {
                let msgs = consume(
                    &kafka,
                    "ferry.public.t",
                    false,
                    Duration::from_secs(60),
                    |m| m.len() >= 2,
                );
                let ids: Vec<i64> = msgs
                    .iter()
                    .filter_map(|m| m.value.as_ref()?["after"]["id"].as_i64())
                    .collect();
                assert_eq!(ids, [1, 3], "{policy}: {}", ferry.log_text());
                if policy == "dead_letter" {
                    let consumer: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", kafka.bootstrap())
                        .set("group.id", "dlq")
                        .create()
                        .unwrap();
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset("ferry.dead", 0, rdkafka::Offset::Beginning)
                        .unwrap();
                    consumer.assign(&tpl).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let dead = loop {
                        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                            break m.unwrap().detach();
                        }
                        assert!(Instant::now() < deadline, "no dead letter");
                    };
                    let key: Json = serde_json::from_slice(dead.key().unwrap()).unwrap();
                    assert_eq!(key["id"], 2);
                    let error = dead
                        .headers()
                        .unwrap()
                        .iter()
                        .find(|h| h.key == "ferry.error")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap();
                    assert!(error.to_lowercase().contains("size"), "{error}");
                }
                ferry.check_alive().unwrap();
                ferry.stop().unwrap();
            }
        }
    }
}

/// Every message of `topic` as raw bytes: (key, value, the `ferry.relation` header).
type RawMsg = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

fn consume_raw(kafka: &Kafka, topic: &str, n: usize) -> Vec<RawMsg> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "ferry-test-raw")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let relation = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "ferry.relation")
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        out.push((
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            relation,
        ));
    }
    out
}

/// A primary-key change is a delete under the old key (and its tombstone), then a create under
/// the new key, so a compacted topic keeps no ghost row; the binary format decodes on its own
/// (each message carries its table's Relation frame); a checkpoint record that is not one stops
/// an exactly-once sink at start instead of being skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_changes_binary_messages_and_a_bad_checkpoint_record() {
    use ferry_proto::{Event, Value};
    let pg = Postgres::start().unwrap();
    let kafka = Kafka::start().unwrap();
    let s = pg.connect().await;
    s.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;",
    )
    .await
    .unwrap();
    create_topic(&kafka, "ferry.public.items", 2).await;
    let config = kafka_config(&pg, &kafka, "tombstones = true");
    let mut ferry = config.start(0).unwrap();
    let snap = consume(
        &kafka,
        "ferry.public.items",
        false,
        Duration::from_secs(60),
        |m| m.len() >= 5,
    );
    assert_eq!(snap.len(), 5, "{}", ferry.log_text());
    s.batch_execute("UPDATE items SET id = 100, v = 'moved' WHERE id = 1")
        .await
        .unwrap();
    let msgs = consume(
        &kafka,
        "ferry.public.items",
        false,
        Duration::from_secs(60),
        |m| m.len() >= 8,
    );
    ferry.check_alive().unwrap();
    assert_eq!(msgs.len(), 8, "{msgs:?}");
    let old: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.key.as_ref().unwrap()["id"] == 1)
        .collect();
    assert_eq!(old.len(), 3, "snapshot, delete, tombstone: {old:?}");
    assert_eq!(old[1].value.as_ref().unwrap()["op"], "d");
    assert_eq!(old[1].value.as_ref().unwrap()["before"]["id"], 1);
    assert!(old[2].value.is_none(), "the tombstone closes the old key");
    let new: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.key.as_ref().unwrap()["id"] == 100)
        .collect();
    assert_eq!(new.len(), 1);
    let v = new[0].value.as_ref().unwrap();
    assert_eq!(v["op"], "c");
    assert_eq!(v["after"]["v"], "moved");
    ferry.stop().unwrap();

    // The binary format, from a second sink reading the same spool from its start: every
    // message decodes with ferry's frame format, its table's definition in its own header.
    let text = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        text.replace("tombstones = true", "format = \"binary\"")
            .replace("name = \"events\"", "name = \"bin\"")
            .replace("ferry.{schema}.{table}", "bin.{schema}.{table}"),
    )
    .unwrap();
    create_topic(&kafka, "bin.public.items", 2).await;
    let ferry = config.start(1).unwrap();
    let raw = consume_raw(&kafka, "bin.public.items", 7);
    ferry.stop().unwrap();
    assert_eq!(raw.len(), 7, "5 snapshot rows, a delete and a create");
    let mut rows: BTreeMap<i64, String> = BTreeMap::new();
    for (_, value, relation) in &raw {
        let (event, _) = ferry_proto::frame::decode(value.as_ref().unwrap()).unwrap();
        let (Event::Relation(rel), _) =
            ferry_proto::frame::decode(relation.as_ref().expect("ferry.relation header")).unwrap()
        else {
            panic!("the header holds a relation");
        };
        assert_eq!(Some(rel.id), event.relation_id());
        assert_eq!(
            rel.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["id", "v"]
        );
        let int = |v: &Value| match v {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        };
        match event {
            Event::Insert(i) => {
                let Value::Text(t) = &i.new[1] else { panic!() };
                rows.insert(int(&i.new[0]), t.clone());
            }
            Event::Delete(d) => {
                rows.remove(&int(&d.old.row()[0]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let source: BTreeMap<i64, String> = s
        .query("SELECT id, v FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1)))
        .collect();
    assert_eq!(rows, source);

    // An exactly-once sink whose checkpoint topic holds a record under its name that is not a
    // checkpoint stops at start, naming it.
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::BaseRecord::to("ck")
                .key("eo")
                .payload("not a checkpoint"),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    std::fs::write(
        config.path(),
        text.replace(
            "tombstones = true",
            "exactly_once = true\ncheckpoint_topic = \"ck\"",
        )
        .replace("name = \"events\"", "name = \"eo\"")
        .replace("ferry.{schema}.{table}", "eo.{schema}.{table}"),
    )
    .unwrap();
    let ferry = config.start(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ferry.log_text().contains("is not a checkpoint") {
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, log) = ferry.terminate().unwrap();
    assert_eq!(code, 1, "{log}");
}
