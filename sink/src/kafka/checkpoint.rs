//! Where a Kafka sink with `exactly_once` resumes: the last checkpoint record it committed, in
//! the same Kafka transaction as its batch, to the compacted checkpoint topic.

use std::time::{Duration, Instant};

use ferry_proto::Position;
use ferry_spool::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};

use super::{KafkaSinkConfig, kafka};
use crate::error::{Result, SinkError};

/// The last checkpoint a sink with `exactly_once` committed with a batch, from the checkpoint
/// topic: the spool offset after the batch, and its source position when the record has one.
pub(super) async fn read(cfg: &KafkaSinkConfig) -> Result<Option<(Offset, Option<Position>)>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", format!("ferry-{}-checkpoint", cfg.name))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    for (k, v) in &cfg.properties {
        if !k.starts_with("transaction") && !k.starts_with("enable.idempotence") {
            c.set(k, v);
        }
    }
    let consumer: BaseConsumer = c.create().map_err(kafka)?;
    let topic = cfg.checkpoint_topic.clone();
    let name = cfg.name.clone();
    tokio::task::spawn_blocking(move || -> Result<Option<(Offset, Option<Position>)>> {
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
                    let record = msg
                        .payload()
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok());
                    let offset = record.as_ref().and_then(|j| j["offset"].as_u64());
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
                    // A record written by hand may hold only the offset: nothing is skipped
                    // by position then, and the batch after the offset is the next one.
                    let position = record
                        .as_ref()
                        .and_then(|j| j["position"].as_str())
                        .and_then(|p| p.parse::<Position>().ok());
                    found = Some((Offset(o), position));
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
