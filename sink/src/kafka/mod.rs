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

mod checkpoint;
pub mod format;
mod producer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{Begin, Event, RelationId};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;

use self::format::{Format, Origin};
use self::producer::Out;
use crate::OnError;
use crate::destination::{
    Checkpoint, DeadLetters, Destination, ErrorClass, Opened, Refusal, Relations, Step,
    WorkerSettings,
};
use crate::error::{Result, SinkError};
use crate::progress::{SinkState, Status};

/// A Kafka sink worker.
pub type KafkaSink = crate::worker::Worker<Kafka>;

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
            .field(
                "properties",
                &ferry_db::redact::properties(&self.properties),
            )
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

/// The header texts of the transaction being sent.
#[derive(Debug, Default)]
struct TxnTexts {
    position: String,
    xid: String,
    commit_time: String,
}

/// Kafka topics as a [`Destination`]: a batch is the messages of its source transactions, all
/// acknowledged before the batch counts as done (and, with `exactly_once`, one Kafka transaction
/// with the checkpoint record).
pub struct Kafka {
    cfg: Arc<KafkaSinkConfig>,
    out: Out,
    status: Status,
    /// A Kafka transaction is open (`exactly_once`).
    in_txn: bool,
    /// The source transaction being sent, and the header texts its messages carry (made once
    /// per transaction).
    begin: Option<Begin>,
    texts: TxnTexts,
    /// Topic names once per table; the binary format's `ferry.relation` header once per
    /// definition.
    topics: HashMap<RelationId, Arc<str>>,
    relation_frames: HashMap<RelationId, Vec<u8>>,
    /// Messages librdkafka refused on the spot, for `on_error` at the next flush.
    refused: Vec<Refusal>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Kafka {
    /// Sends one message with the transaction's headers (and, in the binary format, the frame
    /// of its table's Relation in `ferry.relation`, so every message decodes on its own).
    /// A permanent refusal of this message is returned, for `on_error`.
    async fn send(
        &self,
        msg: &Outgoing<'_>,
        payload: Option<&[u8]>,
        op: &str,
    ) -> Result<Option<SinkError>> {
        let texts = &self.texts;
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
        match self.out.send(msg.topic, msg.key, payload, headers).await {
            Ok(()) => Ok(None),
            Err(e) => self.refusal(e).map(Some),
        }
    }

    /// A broker error about one message: permanent (too large, unknown topic with
    /// auto-creation off, not authorized) for `on_error`, unless `exactly_once`, where its
    /// transaction cannot be committed without it; anything else is retried.
    fn refusal(&self, e: KafkaError) -> Result<SinkError> {
        let permanent = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic
            )
        );
        if !permanent {
            return Err(kafka(e));
        }
        let e = SinkError::Value(format!("kafka: {e}"));
        if self.cfg.exactly_once {
            return Err(e);
        }
        Ok(e)
    }

    /// A BEGIN or END record on the transaction topic, when one is set.
    async fn marker(&mut self, value: serde_json::Value, op: &str) -> Result<()> {
        let Some(topic) = self.cfg.transaction_topic.clone() else {
            return Ok(());
        };
        let msg = Outgoing {
            topic: &topic,
            key: None,
            relation: None,
        };
        if let Some(e) = self
            .send(&msg, Some(value.to_string().as_bytes()), op)
            .await?
        {
            self.refused.push(Refusal {
                position: self.texts.position.clone(),
                xid: self.begin.as_ref().map_or(0, |b| b.xid),
                table: "-".into(),
                key: "-".into(),
                error: e.to_string(),
                event: None,
                topic: Some(topic.clone()),
                message_key: None,
            });
        }
        Ok(())
    }

    /// The messages of one row change or truncate: one per table it touches (two for an
    /// update that changes the key), and a tombstone after a delete when asked for.
    async fn change(&mut self, event: &Event, relations: &(dyn Relations + Sync)) -> Result<()> {
        // Lent out for the change, not cloned: a MySQL GTID position can be long.
        let Some(begin) = self.begin.take() else {
            return Err(SinkError::Fatal(
                "a row change outside a transaction".into(),
            ));
        };
        let result = self.messages(&begin, event, relations).await;
        self.begin = Some(begin);
        result
    }

    async fn messages(
        &mut self,
        begin: &Begin,
        event: &Event,
        relations: &(dyn Relations + Sync),
    ) -> Result<()> {
        let single = event.relation_id();
        let ids: &[RelationId] = match event {
            Event::Truncate(t) => &t.relations,
            _ => single.as_slice(),
        };
        for &id in ids {
            let Some(rel) = relations.relation(id) else {
                return Err(SinkError::Fatal(format!("relation {} unknown", id.0)));
            };
            let cfg = self.cfg.clone();
            let topic = self
                .topics
                .entry(id)
                .or_insert_with(|| topic_name(&cfg, &rel.schema, &rel.name).into())
                .clone();
            if cfg.format == Format::Binary && !self.relation_frames.contains_key(&id) {
                let frame = ferry_proto::frame::encode_to_vec(&Event::Relation(rel.clone()))
                    .map_err(|e| SinkError::Fatal(e.to_string()))?;
                self.relation_frames.insert(id, frame);
            }
            for part in format::split_key_change(rel, event) {
                let part = part.as_ref();
                let key = match format::key_row(part) {
                    Some(r) => format::key(rel, r)?,
                    None => None,
                };
                let origin = Origin {
                    begin,
                    database: &cfg.database,
                    server: &cfg.server,
                    position: &self.texts.position,
                    commit_time: &self.texts.commit_time,
                };
                let payload = format::message(cfg.format, rel, part, &origin)?;
                let msg = Outgoing {
                    topic: &topic,
                    key: key.as_deref(),
                    relation: self.relation_frames.get(&id).map(Vec::as_slice),
                };
                let mut refused = self.send(&msg, Some(&payload), part.kind()).await?;
                if refused.is_none() && cfg.tombstones && matches!(part, Event::Delete(_)) {
                    refused = self.send(&msg, None, "tombstone").await?;
                }
                if let Some(e) = refused {
                    let culprit = crate::db::culprit(part, Some(rel));
                    self.refused.push(Refusal {
                        position: self.texts.position.clone(),
                        xid: begin.xid,
                        table: culprit.table,
                        key: culprit.key,
                        error: e.to_string(),
                        event: Some(part.clone()),
                        topic: Some(topic.to_string()),
                        message_key: key.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &rdkafka::producer::ThreadedProducer<producer::Tracker>,
        ) -> std::result::Result<T, KafkaError>
        + Send
        + 'static,
    ) -> Result<T> {
        let p = self.out.producer.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| SinkError::Fatal(e.to_string()))?
            .map_err(kafka)
    }
}

impl Destination for Kafka {
    type Config = KafkaSinkConfig;

    fn settings(cfg: &KafkaSinkConfig) -> WorkerSettings {
        WorkerSettings {
            name: cfg.name.clone(),
            spool_dir: cfg.spool_dir.clone(),
            on_error: cfg.on_error,
            max_batch_rows: cfg.max_batch_messages,
            max_batch_delay: cfg.max_batch_delay,
        }
    }

    async fn open(cfg: &KafkaSinkConfig, status: Status) -> Result<(Self, Opened)> {
        let k = Kafka {
            cfg: Arc::new(cfg.clone()),
            out: Out::create(cfg)?,
            status,
            in_txn: false,
            begin: None,
            texts: TxnTexts::default(),
            topics: HashMap::new(),
            relation_frames: HashMap::new(),
            refused: Vec::new(),
        };
        let mut opened = Opened {
            resume: None,
            applied: None,
            change_by_change: false,
        };
        if cfg.exactly_once {
            k.blocking(|p| p.init_transactions(Duration::from_secs(60)))
                .await?;
            if let Some((offset, position)) = checkpoint::read(cfg).await? {
                opened.resume = Some(offset);
                opened.applied = position;
            }
        }
        let shown = ferry_db::redact::properties(&cfg.properties);
        if !cfg.properties.is_empty() {
            tracing::info!(sink = %cfg.name, properties = ?shown, exactly_once = cfg.exactly_once, "kafka producer");
        }
        Ok((k, opened))
    }

    async fn begin(&mut self) -> Result<()> {
        if self.cfg.exactly_once && !self.in_txn {
            self.out.producer.begin_transaction().map_err(kafka)?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn apply(&mut self, step: Step<'_>, relations: &(dyn Relations + Sync)) -> Result<()> {
        match step {
            Step::Begin(b) => {
                self.texts = TxnTexts {
                    position: b.position.to_string(),
                    xid: b.xid.to_string(),
                    commit_time: format::commit_time(b),
                };
                self.begin = Some(b.clone());
                let v = serde_json::json!({"status": "BEGIN", "id": b.xid, "position": b.position.to_string()});
                self.marker(v, "begin").await
            }
            Step::End { commit, changes } => {
                let xid = self.begin.take().map_or(0, |b| b.xid);
                let v = serde_json::json!({"status": "END", "id": xid, "position": commit.position.to_string(), "event_count": changes});
                self.marker(v, "end").await
            }
            Step::Relation(r) => {
                self.topics.remove(&r.id);
                self.relation_frames.remove(&r.id);
                Ok(())
            }
            Step::Change(event, _) => self.change(event, relations).await,
            Step::Ddl(_) | Step::Define(_) | Step::Backfill(_) => Ok(()),
        }
    }

    /// Waits until the broker has acknowledged or refused every message sent; a broker that is
    /// down stalls here (librdkafka keeps retrying, with no delivery timeout), and the state
    /// says so after a while.
    async fn flush(&mut self) -> Result<Vec<Refusal>> {
        let mut stalled = false;
        let failed = self
            .out
            .settle(|n| {
                stalled = true;
                tracing::warn!(sink = %self.cfg.name, unacknowledged = n, "waiting for the broker to acknowledge");
                self.status.set(SinkState::Retrying(format!(
                    "waiting for the broker to acknowledge {n} message(s)"
                )));
            })
            .await;
        if stalled {
            tracing::info!(sink = %self.cfg.name, "the broker acknowledges again");
            self.status.set(SinkState::Running);
        }
        let mut refused = std::mem::take(&mut self.refused);
        for f in failed {
            if self.cfg.dead_letter_topic.as_deref() == Some(f.topic.as_str()) {
                return Err(SinkError::Fatal(format!(
                    "sink {}: the dead-letter topic {} refused a message: {}",
                    self.cfg.name, f.topic, f.error
                )));
            }
            let e = self.refusal(f.error)?;
            refused.push(Refusal {
                position: f.position,
                xid: f.xid,
                table: f.topic.clone(),
                key: f
                    .key
                    .as_deref()
                    .map_or_else(|| "-".into(), |k| String::from_utf8_lossy(k).into_owned()),
                error: e.to_string(),
                event: None,
                topic: Some(f.topic),
                message_key: f.key,
            });
        }
        Ok(refused)
    }

    async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        if !(self.cfg.exactly_once && self.in_txn) {
            return Ok(());
        }
        // The checkpoint record commits with the batch, in the same Kafka transaction.
        let value = serde_json::json!({
            "offset": checkpoint.offset.0,
            "position": checkpoint.position.to_string(),
        })
        .to_string();
        self.out
            .send(
                &self.cfg.checkpoint_topic,
                Some(self.cfg.name.as_bytes()),
                Some(value.as_bytes()),
                OwnedHeaders::new(),
            )
            .await
            .map_err(kafka)?;
        // commit_transaction flushes; a refused checkpoint record fails the commit.
        self.blocking(|p| p.commit_transaction(Duration::from_secs(60)))
            .await?;
        self.in_txn = false;
        Ok(())
    }

    async fn abort(&mut self) -> Result<()> {
        self.refused.clear();
        self.begin = None;
        if self.cfg.exactly_once && self.in_txn {
            self.in_txn = false;
            self.blocking(|p| p.abort_transaction(Duration::from_secs(30)))
                .await?;
        }
        // Without a Kafka transaction, what was sent stays sent (at least once).
        Ok(())
    }

    fn classify(&self, e: &SinkError) -> ErrorClass {
        match crate::destination::default_class(e) {
            // A refused message aborts its Kafka transaction: nothing to skip past.
            ErrorClass::Refused if self.cfg.exactly_once => ErrorClass::Halt,
            class => class,
        }
    }

    fn dead_letters(&self, _: &WorkerSettings) -> Box<dyn DeadLetters> {
        Box::new(TopicLetters {
            out: self.out.clone(),
            topic: self.cfg.dead_letter_topic.clone(),
        })
    }
}

/// Dead letters as messages on the sink's `dead_letter_topic`: the refused message's key, no
/// payload (a message too large is the usual reason), and headers saying where it was going,
/// from which source transaction, and why.
struct TopicLetters {
    out: Out,
    topic: Option<String>,
}

impl DeadLetters for TopicLetters {
    fn write<'a>(
        &'a mut self,
        sink: &'a str,
        r: &'a Refusal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let Some(dlq) = &self.topic else {
                return Err(SinkError::Config(format!(
                    "sink {sink}: on_error = \"dead_letter\" needs dead_letter_topic"
                )));
            };
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ferry.error",
                    value: Some(r.error.as_bytes()),
                })
                .insert(Header {
                    key: "ferry.topic",
                    value: Some(r.topic.as_deref().unwrap_or("-").as_bytes()),
                })
                .insert(Header {
                    key: "ferry.position",
                    value: Some(r.position.as_bytes()),
                });
            // Its delivery is settled with the batch's; a refused dead letter halts the sink.
            self.out
                .send(dlq, r.message_key.as_deref(), None, headers)
                .await
                .map_err(kafka)
        })
    }

    fn place(&self) -> String {
        format!("topic {}", self.topic.as_deref().unwrap_or("(none set)"))
    }
}

fn kafka(e: KafkaError) -> SinkError {
    SinkError::Kafka(e)
}
