//! The Kafka sink's producer: ferry's safe settings, and delivery accounting so a batch is known
//! to be settled (every message acknowledged or refused, and which were refused).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

use super::KafkaSinkConfig;
use crate::error::{Result, SinkError};

/// A message the broker refused, as librdkafka's delivery report gives it back.
pub(super) struct Failed {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// The `ferry.position` and `ferry.xid` headers: which source transaction it belonged to.
    pub position: String,
    pub xid: u64,
    pub error: KafkaError,
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

pub(super) struct Tracker(Arc<Deliveries>);

impl ClientContext for Tracker {}

impl ProducerContext for Tracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, m)) = result {
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let failed = Failed {
                topic: m.topic().to_string(),
                key: m.key().map(<[u8]>::to_vec),
                position: header("ferry.position"),
                xid: header("ferry.xid").parse().unwrap_or(0),
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
#[derive(Clone)]
pub(super) struct Out {
    pub producer: Arc<ThreadedProducer<Tracker>>,
    deliveries: Arc<Deliveries>,
}

impl Out {
    /// Waits until every message handed over is settled; `on_slow` runs once if that takes long
    /// (a broker that is down: librdkafka keeps retrying, with no delivery timeout).
    pub async fn settle(&self, mut on_slow: impl FnMut(usize)) -> Vec<Failed> {
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
    pub async fn send(
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

impl Out {
    /// A producer for one session.
    pub fn create(cfg: &KafkaSinkConfig) -> Result<Out> {
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<Tracker> = client_config(cfg)
            .create_with_context(Tracker(deliveries.clone()))
            .map_err(SinkError::Kafka)?;
        Ok(Out {
            producer: Arc::new(producer),
            deliveries,
        })
    }
}

/// The producer's settings: ferry's safe defaults, then the sink's `[sink.kafka]` properties.
pub(super) fn client_config(cfg: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "0");
    if cfg.exactly_once {
        c.set("transactional.id", format!("ferry-{}", cfg.name))
            .set("transaction.timeout.ms", "60000");
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}
