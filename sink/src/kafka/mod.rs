//! The Kafka sink: every row change of the spool as a message, keyed by the row's key so each
//! row's changes stay in order on one partition.
//!
//! The producer is safe by default: idempotent, `acks=all`, at most 5 requests in flight (which
//! idempotence keeps in order across retries), lz4 compression, and no delivery timeout, so a
//! broker down for minutes stalls the sink (its state says so) instead of losing messages.
//!
//! At least once (default): messages of a batch of source transactions are sent, every delivery
//! is awaited, then the sink's cursor (a file in the spool directory: the spool is what a restart
//! re-reads from, so the cursor lives beside it) moves past the batch. A crash re-sends at most
//! the batch in flight; the headers `ferry.position` and `ferry.xid` let consumers drop
//! duplicates. Exactly once (`exactly_once = true`): each batch and a checkpoint record (to the
//! compacted topic `checkpoint_topic`) are committed in one Kafka transaction; a restart reads the
//! last committed checkpoint and resumes after it, and the transactional id fences a zombie.

pub mod format;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::{Begin, Event, Position};
use ferry_spool::{Cursors, Offset, SpoolReader, segment};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::format::{Format, Origin};
use crate::error::{Result, SinkError};
use crate::progress::{SinkProgress, SinkState, write_state};
use crate::{Backoff, OnError};

/// How a Kafka sink is set up. `Debug` shows secret properties as `***`.
#[derive(Clone)]
pub struct KafkaSinkConfig {
    pub name: String,
    pub brokers: String,
    /// Topic template: `{schema}`, `{table}`, `{database}`.
    pub topic: String,
    /// Per-table overrides of the template, by `schema.table`.
    pub topics: std::collections::HashMap<String, String>,
    pub format: Format,
    pub on_error: OnError,
    /// A null-value message after each delete, for compacted topics.
    pub tombstones: bool,
    pub exactly_once: bool,
    pub checkpoint_topic: String,
    /// Where `dead_letter` sends failed messages (with `ferry.error` in a header).
    pub dead_letter_topic: Option<String>,
    /// Transaction BEGIN/END markers go here when set.
    pub transaction_topic: Option<String>,
    /// librdkafka properties passed through (SASL, TLS, tuning), after ferry's defaults.
    pub properties: Vec<(String, String)>,
    pub spool_dir: PathBuf,
    /// The source database's name, for `{database}` and the envelopes.
    pub database: String,
    /// The source's logical name in Debezium envelopes (`source.name`).
    pub server: String,
    pub max_batch_messages: usize,
    pub max_batch_delay: Duration,
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("exactly_once", &self.exactly_once)
            .field("properties", &crate::redact::properties(&self.properties))
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

/// Where one message goes and what identifies it.
#[derive(Debug)]
struct Outgoing<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    /// The binary format's Relation frame for the `ferry.relation` header.
    relation: Option<&'a [u8]>,
}

/// A table's topic: its override, or the template filled in.
pub fn topic_name(cfg: &KafkaSinkConfig, schema: &str, table: &str) -> String {
    let template = cfg
        .topics
        .get(&format!("{schema}.{table}"))
        .unwrap_or(&cfg.topic);
    template
        .replace("{schema}", schema)
        .replace("{table}", table)
        .replace("{database}", &cfg.database)
}

use crate::redact::secret_property as secret;

/// The header texts of the transaction being sent.
#[derive(Debug, Default)]
struct TxnTexts {
    position: String,
    xid: String,
    commit_time: String,
}

/// The source transactions and messages of the batch being sent, and since when.
#[derive(Debug, Default)]
struct Batch {
    txns: u64,
    msgs: usize,
    started: Option<Instant>,
}

/// A message the broker refused, as librdkafka's delivery report gives it back.
struct Failed {
    topic: String,
    key: Option<Vec<u8>>,
    /// The `ferry.position` header: which source transaction it belonged to.
    position: String,
    error: KafkaError,
}

/// Delivery accounting shared with librdkafka's polling thread. A delivery report per message,
/// counted instead of answered through a channel each: the sink only needs to know that every
/// message of a batch is settled, and which ones failed.
#[derive(Default)]
struct Deliveries {
    /// Messages handed to librdkafka and not yet acknowledged or refused.
    pending: AtomicUsize,
    failed: Mutex<Vec<Failed>>,
    settled: tokio::sync::Notify,
}

struct Tracker(Arc<Deliveries>);

impl ClientContext for Tracker {}

impl ProducerContext for Tracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, m)) = result {
            let position = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "ferry.position"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let failed = Failed {
                topic: m.topic().to_string(),
                key: m.key().map(<[u8]>::to_vec),
                position,
                error: error.clone(),
            };
            self.0
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(failed);
        }
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// A session's producer and its delivery accounting.
struct Out {
    producer: Arc<ThreadedProducer<Tracker>>,
    deliveries: Arc<Deliveries>,
}

impl Out {
    /// Waits until every message handed over is settled; `on_slow` runs once if that takes long
    /// (a broker that is down: librdkafka keeps retrying, with no delivery timeout).
    async fn settle(&self, mut on_slow: impl FnMut(usize)) -> Vec<Failed> {
        let mut slow = false;
        loop {
            let notified = self.deliveries.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.deliveries.pending.load(Ordering::Acquire);
            if n == 0 {
                break;
            }
            if tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .is_err()
                && !slow
            {
                slow = true;
                on_slow(n);
            }
        }
        std::mem::take(
            &mut *self
                .deliveries
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> std::result::Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        loop {
            self.deliveries.pending.fetch_add(1, Ordering::AcqRel);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    self.deliveries.pending.fetch_sub(1, Ordering::AcqRel);
                    if e != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                        return Err(e);
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// A Kafka sink worker.
#[derive(Debug)]
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    progress: watch::Sender<SinkProgress>,
}

impl KafkaSink {
    pub fn new(cfg: KafkaSinkConfig) -> (KafkaSink, watch::Receiver<SinkProgress>) {
        let (progress, rx) = watch::channel(SinkProgress::new());
        (KafkaSink { cfg, progress }, rx)
    }

    fn set_state(&self, state: SinkState) {
        write_state(&self.cfg.spool_dir, &self.cfg.name, &state);
        self.progress.send_modify(|p| p.state = state);
    }

    fn topic_for(&self, schema: &str, table: &str) -> String {
        topic_name(&self.cfg, schema, table)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("message.timeout.ms", "0");
        if self.cfg.exactly_once {
            c.set("transactional.id", format!("ferry-{}", self.cfg.name))
                .set("transaction.timeout.ms", "60000");
        }
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        let shown: Vec<String> = self
            .cfg
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={}", if secret(k) { "***" } else { v }))
            .collect();
        if !shown.is_empty() {
            tracing::info!(sink = %self.cfg.name, properties = %shown.join(", "), "kafka properties");
        }
        c
    }

    /// Sends the spool until `shutdown`, retrying transient failures.
    pub async fn run(
        self,
        durable: watch::Receiver<Offset>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.session(durable.clone(), &shutdown).await {
                Ok(()) => {
                    self.set_state(SinkState::Stopped);
                    return Ok(());
                }
                Err(e) => {
                    let again = crate::progress::after_failure(
                        e,
                        &self.cfg.name,
                        &self.cfg.spool_dir,
                        &self.progress,
                        &mut backoff,
                        started,
                        &shutdown,
                    )
                    .await?;
                    if !again {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        durable: watch::Receiver<Offset>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let name = self.cfg.name.clone();
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<Tracker> = self
            .client_config()
            .create_with_context(Tracker(deliveries.clone()))
            .map_err(kafka)?;
        let out = Out {
            producer: Arc::new(producer),
            deliveries,
        };
        let cursors = Cursors::new(&self.cfg.spool_dir);
        let oldest = segment::list(&self.cfg.spool_dir)?
            .first()
            .copied()
            .unwrap_or(0);
        let start = if self.cfg.exactly_once {
            let p = out.producer.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(60)))
                .await
                .map_err(|e| SinkError::Fatal(e.to_string()))?
                .map_err(kafka)?;
            self.read_checkpoint().await?.unwrap_or(Offset(oldest))
        } else {
            cursors.load(&name)?.unwrap_or(Offset(oldest))
        };
        let mut reader = SpoolReader::open_tailing(&self.cfg.spool_dir, start, durable)?;
        tracing::info!(sink = %name, offset = %start, exactly_once = self.cfg.exactly_once, "kafka sink starting");
        self.set_state(SinkState::Running);
        self.progress.send_modify(|p| p.offset = start);

        let mut txn: Option<(Begin, usize)> = None;
        // Texts every message of a transaction carries, made once per transaction; topic names
        // once per table.
        let mut texts = TxnTexts::default();
        let mut topics: std::collections::HashMap<ferry_proto::RelationId, std::sync::Arc<str>> =
            std::collections::HashMap::new();
        let mut batch = Batch::default();
        // The binary format's `ferry.relation` header, encoded once per definition.
        let mut relation_frames: std::collections::HashMap<ferry_proto::RelationId, Vec<u8>> =
            std::collections::HashMap::new();
        let mut last: Option<(Offset, Position, Option<i64>)> = None;
        let mut in_kafka_txn = false;
        let mut last_commit_time: Option<i64> = None;
        loop {
            let idle = txn.is_none() && batch.started.is_none();
            let next = if idle {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    ev = reader.next_wait() => ev?,
                }
            } else {
                match reader.try_next()? {
                    Some(ev) => Some(ev),
                    None if txn.is_none() => {
                        self.finish_batch(&out, &mut in_kafka_txn, &last, &mut batch, &cursors)
                            .await?;
                        continue;
                    }
                    None => tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            self.abort(&out, &mut in_kafka_txn).await;
                            return Ok(());
                        }
                        ev = reader.next_wait() => ev?,
                    },
                }
            };
            let Some((_, event)) = next else {
                self.finish_batch(&out, &mut in_kafka_txn, &last, &mut batch, &cursors)
                    .await?;
                return Ok(());
            };
            let after = reader.position();
            match &event {
                Event::Begin(b) => {
                    if self.cfg.exactly_once && !in_kafka_txn {
                        out.producer.begin_transaction().map_err(kafka)?;
                        in_kafka_txn = true;
                    }
                    batch.started.get_or_insert_with(Instant::now);
                    txn = Some((b.clone(), 0));
                    texts = TxnTexts {
                        position: b.position.to_string(),
                        xid: b.xid.to_string(),
                        commit_time: format::commit_time(b),
                    };
                    if let Some(t) = &self.cfg.transaction_topic {
                        let v = serde_json::json!({"status": "BEGIN", "id": b.xid, "position": b.position.to_string()});
                        let msg = Outgoing {
                            topic: t,
                            key: None,
                            relation: None,
                        };
                        self.send(&out, &msg, Some(v.to_string().as_bytes()), &texts, "begin")
                            .await?;
                    }
                }
                Event::Commit(c) => {
                    let Some((b, count)) = txn.take() else {
                        return Err(SinkError::Fatal("Commit without Begin in the spool".into()));
                    };
                    if let Some(t) = &self.cfg.transaction_topic {
                        let v = serde_json::json!({"status": "END", "id": b.xid, "position": c.position.to_string(), "event_count": count});
                        let msg = Outgoing {
                            topic: t,
                            key: None,
                            relation: None,
                        };
                        self.send(&out, &msg, Some(v.to_string().as_bytes()), &texts, "end")
                            .await?;
                    }
                    last_commit_time = Some(c.commit_time);
                    last = Some((after, c.position.clone(), last_commit_time));
                    batch.txns += 1;
                    let due = batch.msgs >= self.cfg.max_batch_messages
                        || batch
                            .started
                            .is_some_and(|t| t.elapsed() >= self.cfg.max_batch_delay);
                    if due || shutdown.is_cancelled() {
                        self.finish_batch(&out, &mut in_kafka_txn, &last, &mut batch, &cursors)
                            .await?;
                        let stop = shutdown.is_cancelled();
                        if stop {
                            return Ok(());
                        }
                    }
                }
                Event::Heartbeat(h) => {
                    // Lag is measured to the source's time at the heartbeat.
                    last_commit_time = last_commit_time.max(Some(h.time));
                    if txn.is_none() && batch.started.is_none() {
                        last = Some((after, h.position.clone(), last_commit_time));
                        cursors.save(&name, after)?;
                        let position = h.position.clone();
                        let time = last_commit_time;
                        self.progress.send_modify(|p| {
                            p.offset = after;
                            p.position = Some(position);
                            p.last_commit_time = time.or(p.last_commit_time);
                        });
                    } else {
                        last = Some((after, h.position.clone(), last_commit_time));
                    }
                }
                Event::Insert(_) | Event::Update(_) | Event::Delete(_) | Event::Truncate(_) => {
                    let Some((b, count)) = txn.as_mut() else {
                        return Err(SinkError::Fatal(
                            "a row change outside a transaction".into(),
                        ));
                    };
                    *count += 1;
                    let b = &*b;
                    let ids: Vec<_> = match &event {
                        Event::Truncate(t) => t.relations.clone(),
                        _ => event.relation_id().into_iter().collect(),
                    };
                    for id in ids {
                        let Some(rel) = reader.relation(id) else {
                            return Err(SinkError::Fatal(format!("relation {} unknown", id.0)));
                        };
                        let topic = topics
                            .entry(id)
                            .or_insert_with(|| self.topic_for(&rel.schema, &rel.name).into())
                            .clone();
                        let origin = Origin {
                            begin: b,
                            database: &self.cfg.database,
                            server: &self.cfg.server,
                            position: &texts.position,
                            commit_time: &texts.commit_time,
                        };
                        if self.cfg.format == Format::Binary && !relation_frames.contains_key(&id) {
                            let frame =
                                ferry_proto::frame::encode_to_vec(&Event::Relation(rel.clone()))
                                    .map_err(|e| SinkError::Fatal(e.to_string()))?;
                            relation_frames.insert(id, frame);
                        }
                        let relation_frame = relation_frames.get(&id).map(Vec::as_slice);
                        for part in format::split_key_change(rel, &event) {
                            let part = part.as_ref();
                            let key = match format::key_row(part) {
                                Some(r) => format::key(rel, r)?,
                                None => None,
                            };
                            let payload = format::message(self.cfg.format, rel, part, &origin)?;
                            let tombstone = self.cfg.tombstones && matches!(part, Event::Delete(_));
                            let msg = Outgoing {
                                topic: &topic,
                                key: key.as_deref(),
                                relation: relation_frame,
                            };
                            self.send(&out, &msg, Some(&payload), &texts, part.kind())
                                .await?;
                            batch.msgs += 1;
                            if tombstone {
                                self.send(&out, &msg, None, &texts, "tombstone").await?;
                                batch.msgs += 1;
                            }
                        }
                    }
                }
                Event::Relation(r) => {
                    topics.remove(&r.id);
                    relation_frames.remove(&r.id);
                }
                Event::Message(_) => {}
            }
        }
    }

    /// Queues one message with the transaction's headers (and, in the binary format, the frame
    /// of its table's Relation in `ferry.relation`, so every message decodes on its own).
    async fn send(
        &self,
        out: &Out,
        msg: &Outgoing<'_>,
        payload: Option<&[u8]>,
        texts: &TxnTexts,
        op: &str,
    ) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "ferry.position",
                value: Some(texts.position.as_bytes()),
            })
            .insert(Header {
                key: "ferry.xid",
                value: Some(texts.xid.as_bytes()),
            })
            .insert(Header {
                key: "ferry.op",
                value: Some(op.as_bytes()),
            });
        if let Some(frame) = msg.relation {
            headers = headers.insert(Header {
                key: "ferry.relation",
                value: Some(frame),
            });
        }
        match out.send(msg.topic, msg.key, payload, headers).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.refuse(out, msg.topic, msg.key, &texts.position, e)
                    .await
            }
        }
    }

    /// A message that could not be delivered: retried (a transient error, or any error with
    /// exactly-once, where the transaction is aborted and redone), or handled as `on_error` says.
    async fn refuse(
        &self,
        out: &Out,
        topic: &str,
        key: Option<&[u8]>,
        position: &str,
        e: KafkaError,
    ) -> Result<()> {
        let err = self.permanent_or_retry(e);
        if err.is_transient() || self.cfg.exactly_once {
            return Err(err);
        }
        match self.cfg.on_error {
            OnError::Halt => Err(SinkError::Fatal(format!(
                "sink {} halted at {position}: topic {topic}: {err}",
                self.cfg.name
            ))),
            OnError::Skip => {
                tracing::warn!(sink = %self.cfg.name, %position, %topic, error = %err, "skipping a message (on_error = skip)");
                self.progress.send_modify(|p| p.skipped += 1);
                Ok(())
            }
            OnError::DeadLetter => {
                let Some(dlq) = &self.cfg.dead_letter_topic else {
                    return Err(SinkError::Config(format!(
                        "sink {}: on_error = \"dead_letter\" needs dead_letter_topic",
                        self.cfg.name
                    )));
                };
                let reason = err.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ferry.error",
                        value: Some(reason.as_bytes()),
                    })
                    .insert(Header {
                        key: "ferry.topic",
                        value: Some(topic.as_bytes()),
                    })
                    .insert(Header {
                        key: "ferry.position",
                        value: Some(position.as_bytes()),
                    });
                // The refused payload (too large, most likely) stays out: the key, the topic,
                // the position and the error say which change it was.
                // Its delivery is settled with the batch's; a refused dead letter stops the sink.
                out.send(dlq, key, None, headers).await.map_err(kafka)?;
                tracing::warn!(sink = %self.cfg.name, %position, %topic, error = %reason, dead_letter_topic = %dlq, "message sent to the dead-letter topic");
                self.progress.send_modify(|p| p.dead_lettered += 1);
                Ok(())
            }
        }
    }

    /// Classifies a broker error: message-specific and permanent ones (too large, unknown topic
    /// with auto-creation off, not authorized) versus the rest, which are retried.
    fn permanent_or_retry(&self, e: KafkaError) -> SinkError {
        let code = e.rdkafka_error_code();
        let permanent = matches!(
            code,
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic
            )
        );
        if permanent {
            SinkError::Value(format!("kafka: {e}"))
        } else {
            kafka(e)
        }
    }

    /// Awaits every delivery of the batch (or commits its Kafka transaction with the checkpoint),
    /// then records the batch's end as the sink's position.
    #[allow(clippy::too_many_arguments)]
    async fn finish_batch(
        &self,
        out: &Out,
        in_kafka_txn: &mut bool,
        last: &Option<(Offset, Position, Option<i64>)>,
        batch: &mut Batch,
        cursors: &Cursors,
    ) -> Result<()> {
        let (txns, msgs) = (batch.txns, batch.msgs);
        *batch = Batch::default();
        // A broker that is down stalls the batch here (librdkafka keeps retrying); the state
        // says so after a while, and goes back to running once the broker acknowledges.
        let mut stalled = false;
        loop {
            let failed = out
                .settle(|n| {
                    stalled = true;
                    tracing::warn!(sink = %self.cfg.name, unacknowledged = n, "waiting for the broker to acknowledge");
                    self.set_state(SinkState::Retrying(format!(
                        "waiting for the broker to acknowledge {n} message(s)"
                    )));
                })
                .await;
            if failed.is_empty() {
                break;
            }
            for f in failed {
                if self.cfg.dead_letter_topic.as_deref() == Some(f.topic.as_str()) {
                    return Err(SinkError::Fatal(format!(
                        "sink {}: the dead-letter topic {} refused a message: {}",
                        self.cfg.name, f.topic, f.error
                    )));
                }
                self.refuse(out, &f.topic, f.key.as_deref(), &f.position, f.error)
                    .await?;
            }
        }
        if stalled {
            tracing::info!(sink = %self.cfg.name, "the broker acknowledges again");
            self.set_state(SinkState::Running);
        }
        let Some((offset, position, last_commit_time)) = last.clone() else {
            return Ok(());
        };
        if self.cfg.exactly_once && *in_kafka_txn {
            // The checkpoint record commits with the batch, in the same Kafka transaction.
            let value = serde_json::json!({"offset": offset.0, "position": position.to_string()})
                .to_string();
            out.send(
                &self.cfg.checkpoint_topic,
                Some(self.cfg.name.as_bytes()),
                Some(value.as_bytes()),
                OwnedHeaders::new(),
            )
            .await
            .map_err(kafka)?;
            // commit_transaction flushes; a refused checkpoint record fails the commit.
            let p = out.producer.clone();
            tokio::task::spawn_blocking(move || p.commit_transaction(Duration::from_secs(60)))
                .await
                .map_err(|e| SinkError::Fatal(e.to_string()))?
                .map_err(kafka)?;
            *in_kafka_txn = false;
        }
        cursors.save(&self.cfg.name, offset)?;
        self.progress.send_modify(|p| {
            p.offset = offset;
            p.position = Some(position);
            p.last_commit_time = last_commit_time.or(p.last_commit_time);
            p.transactions += txns;
            p.rows += msgs as u64;
            p.batches += 1;
        });
        Ok(())
    }

    async fn abort(&self, out: &Out, in_kafka_txn: &mut bool) {
        if self.cfg.exactly_once && *in_kafka_txn {
            let p = out.producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || p.abort_transaction(Duration::from_secs(30)))
                    .await;
            *in_kafka_txn = false;
        }
    }

    /// The offset after the last batch committed with `exactly_once`, from the checkpoint topic.
    async fn read_checkpoint(&self) -> Result<Option<Offset>> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("group.id", format!("ferry-{}-checkpoint", self.cfg.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        for (k, v) in &self.cfg.properties {
            if !k.starts_with("transaction") && !k.starts_with("enable.idempotence") {
                c.set(k, v);
            }
        }
        let consumer: BaseConsumer = c.create().map_err(kafka)?;
        let topic = self.cfg.checkpoint_topic.clone();
        let name = self.cfg.name.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<Offset>> {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(30))
                .map_err(kafka)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut found = None;
            for p in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(30))
                    .map_err(kafka)?;
                if high <= low {
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))
                    .map_err(kafka)?;
                consumer.assign(&tpl).map_err(kafka)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if Instant::now() > deadline {
                        return Err(SinkError::Fatal(format!(
                            "reading the checkpoint topic {topic} timed out"
                        )));
                    }
                    let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                        // read_committed stops at the last stable offset.
                        let pos = consumer.position().map_err(kafka)?;
                        let at = pos
                            .elements_for_topic(&topic)
                            .first()
                            .and_then(|e| e.offset().to_raw())
                            .unwrap_or(0);
                        if at >= high - 1 {
                            break;
                        }
                        continue;
                    };
                    let msg = msg.map_err(kafka)?;
                    if msg.key() == Some(name.as_bytes()) {
                        // A record under this sink's key that is not a checkpoint: resuming
                        // from an older one would send duplicates under exactly-once.
                        let offset = msg
                            .payload()
                            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                            .and_then(|j| j["offset"].as_u64());
                        let Some(o) = offset else {
                            return Err(SinkError::Fatal(format!(
                                "the checkpoint topic {topic} (partition {p}, offset {}) holds a \
                                 record for sink {name} that is not a checkpoint ({}): ferry \
                                 cannot tell where the sink stopped. Remove it (or write the \
                                 right checkpoint, {{\"offset\": N}}), or give the sink another \
                                 checkpoint_topic to start it over",
                                msg.offset(),
                                msg.payload().map_or("a tombstone".into(), |v| format!(
                                    "{:?}",
                                    String::from_utf8_lossy(&v[..v.len().min(200)])
                                ))
                            )));
                        };
                        found = Some(Offset(o));
                    }
                    if msg.offset() >= high - 1 {
                        break;
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?
    }
}

fn kafka(e: KafkaError) -> SinkError {
    SinkError::Kafka(e)
}
