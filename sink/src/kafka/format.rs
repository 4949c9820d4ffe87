//! What a Kafka message holds: its key (the row's key columns as a JSON object, so every change
//! of a row goes to one partition) and its value in one of three formats:
//!
//! - `json`, ferry's compact envelope: `{"op":"c|u|d|t","schema","table","before","after",
//!   "unchanged":[columns],"position","xid","commit_time"}`;
//! - `debezium`, Debezium's envelope with schemas off: `{"before","after","source":{…},"op",
//!   "ts_ms"}`, so existing Debezium consumers read it unchanged (values as Debezium renders them
//!   with `decimal.handling.mode=string` and ISO 8601 time types; an unchanged TOAST value is
//!   Debezium's own `__debezium_unavailable_value`);
//! - `binary`, the event's ferry frame (see `docs/format.md`).
//!
//! Values are typed faithfully in JSON: numerics as exact strings, bytes as base64, dates and
//! times as ISO 8601 (with `Z` for instants), infinities as `"infinity"`/`"-infinity"`.

use base64::Engine as _;
use ferry_proto::{Begin, Event, Relation, Row, Value, frame};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Value as Json, json};

use crate::error::{Result, SinkError};

/// The `format` of a Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Debezium,
    Binary,
}

/// Debezium's placeholder for a value the source did not send.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// A value in JSON.
pub fn value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Unchanged => Json::String(UNAVAILABLE.into()),
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) if f.is_finite() => json!(f),
        Value::Float(f) if f.is_nan() => Json::String("NaN".into()),
        Value::Float(f) => Json::String(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()),
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) => Json::String(s.clone()),
        Value::Other { text, .. } => Json::String(text.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Date(d) => Json::String(match *d {
            i32::MAX => "infinity".into(),
            i32::MIN => "-infinity".into(),
            d => ymd(i64::from(d)),
        }),
        Value::Time(us) => Json::String(clock(*us)),
        Value::TimeTz {
            micros,
            offset_secs,
        } => Json::String(format!("{}{}", clock(*micros), offset(*offset_secs))),
        Value::Timestamp(us) => Json::String(timestamp(*us, false)),
        Value::TimestampTz(us) => Json::String(timestamp(*us, true)),
        Value::Interval {
            months,
            days,
            micros,
        } => {
            let sign = if *micros < 0 { "-" } else { "" };
            let a = micros.unsigned_abs();
            Json::String(format!(
                "P{months}M{days}DT{sign}{}.{:06}S",
                a / 1_000_000,
                a % 1_000_000
            ))
        }
        Value::Uuid(u) => {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            Json::String(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        Value::Array(items) => Json::Array(items.iter().map(value).collect()),
    }
}

fn ymd(days: i64) -> String {
    let (y, m, d) = crate::postgres::encode::civil_from_days(days);
    // ISO 8601 years: 0000 is 1 BC, negative before it.
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{y:+05}-{m:02}-{d:02}")
    }
}

fn clock(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let a = us.unsigned_abs();
    let secs = a / 1_000_000;
    format!(
        "{sign}{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        a % 1_000_000
    )
}

fn offset(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
}

fn timestamp(us: i64, zone: bool) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => format!(
            "{}T{}{}",
            ymd(us.div_euclid(86_400_000_000)),
            clock(us.rem_euclid(86_400_000_000)),
            if zone { "Z" } else { "" }
        ),
    }
}

/// A value serialized straight into the output: no intermediate JSON tree (most of the sink's
/// CPU went to allocating one per message).
struct ValueRef<'a>(&'a Value);

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Numeric(t) | Value::Text(t) | Value::Json(t) => s.serialize_str(t),
            Value::Other { text, .. } => s.serialize_str(text),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&ValueRef(v))?;
                }
                seq.end()
            }
            other => value(other).serialize(s),
        }
    }
}

/// A row as a JSON object of its columns (unchanged values left out when `skip_unchanged`).
struct RowRef<'a> {
    rel: &'a Relation,
    row: &'a Row,
    skip_unchanged: bool,
}

impl Serialize for RowRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (c, v) in self.rel.columns.iter().zip(self.row) {
            if self.skip_unchanged && matches!(v, Value::Unchanged) {
                continue;
            }
            m.serialize_entry(&c.name, &ValueRef(v))?;
        }
        m.end()
    }
}

fn row_ref<'a>(
    rel: &'a Relation,
    row: Option<&'a Row>,
    skip_unchanged: bool,
) -> Option<RowRef<'a>> {
    row.map(|row| RowRef {
        rel,
        row,
        skip_unchanged,
    })
}

/// The message key: the key columns of `row` as a JSON object, or `None` for a table without a
/// key (its messages are spread over partitions). A key that does not encode is an error, never
/// a message without a key (which would lose the row's order).
pub fn key(rel: &Relation, row: &Row) -> Result<Option<Vec<u8>>> {
    struct KeyRef<'a>(&'a Relation, &'a Row);
    impl Serialize for KeyRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for i in self.0.key_columns() {
                m.serialize_entry(
                    &self.0.columns[i].name,
                    &ValueRef(self.1.get(i).unwrap_or(&Value::Null)),
                )?;
            }
            m.end()
        }
    }
    if rel.key_columns().next().is_none() {
        return Ok(None);
    }
    serde_json::to_vec(&KeyRef(rel, row))
        .map(Some)
        .map_err(|e| {
            SinkError::Value(format!(
                "{}: the row's key does not encode: {e}",
                rel.qualified_name()
            ))
        })
}

/// The messages a row change becomes, with the row each is keyed by. An update that changes the
/// row's key is what Debezium makes of it: a delete under the old key, then a create under the
/// new one, so a compacted topic keeps no row under the old key (the caller adds the tombstone
/// after the delete when tombstones are on).
pub fn split_key_change<'e>(rel: &Relation, event: &'e Event) -> Vec<std::borrow::Cow<'e, Event>> {
    use std::borrow::Cow;
    // Compared by value, not by encoding both keys: this runs for every update that carries
    // its old row (all of them from a MySQL source).
    if let Event::Update(u) = event
        && let Some(old) = &u.old
        && rel.key_columns().any(|i| old.row().get(i) != u.new.get(i))
    {
        return vec![
            Cow::Owned(Event::Delete(ferry_proto::Delete {
                relation: u.relation,
                old: old.clone(),
            })),
            Cow::Owned(Event::Insert(ferry_proto::Insert {
                relation: u.relation,
                new: u.new.clone(),
            })),
        ];
    }
    vec![Cow::Borrowed(event)]
}

/// The row whose key identifies the change (the old row of a delete).
pub fn key_row(event: &Event) -> Option<&Row> {
    match event {
        Event::Insert(i) => Some(&i.new),
        Event::Update(u) => Some(&u.new),
        Event::Delete(d) => Some(d.old.row()),
        _ => None,
    }
}

/// Where a change comes from, for the envelopes; the texts are made once per transaction.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub begin: &'a Begin,
    pub database: &'a str,
    pub server: &'a str,
    pub position: &'a str,
    pub commit_time: &'a str,
}

/// The commit time as the json envelope writes it.
pub fn commit_time(begin: &Begin) -> String {
    timestamp(begin.commit_time, true)
}

#[derive(Serialize)]
struct FerryEnvelope<'a> {
    op: &'a str,
    schema: &'a str,
    table: &'a str,
    before: Option<RowRef<'a>>,
    after: Option<RowRef<'a>>,
    unchanged: Vec<&'a str>,
    position: &'a str,
    xid: u64,
    commit_time: &'a str,
}

#[derive(Serialize)]
struct DebeziumSource<'a> {
    version: &'a str,
    connector: &'a str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'a str,
    db: &'a str,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<u64>,
    /// MySQL/MariaDB: the binlog file and position of the transaction's commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<u64>,
}

#[derive(Serialize)]
struct DebeziumEnvelope<'a> {
    before: Option<RowRef<'a>>,
    after: Option<RowRef<'a>>,
    source: DebeziumSource<'a>,
    op: &'a str,
    ts_ms: i64,
}

/// The message value of a row change or truncate, in `format`.
pub fn message(
    format: Format,
    rel: &Relation,
    event: &Event,
    origin: &Origin<'_>,
) -> Result<Vec<u8>> {
    if format == Format::Binary {
        return frame::encode_to_vec(event).map_err(|e| SinkError::Fatal(e.to_string()));
    }
    let json_format = format == Format::Json;
    let (op, before, after, unchanged) = match event {
        Event::Insert(i) => ("c", None, Some(&i.new), Vec::new()),
        Event::Update(u) => {
            let unchanged = rel
                .columns
                .iter()
                .zip(&u.new)
                .filter(|(_, v)| matches!(v, Value::Unchanged))
                .map(|(c, _)| c.name.as_str())
                .collect();
            (
                "u",
                u.old.as_ref().map(|o| o.row()),
                Some(&u.new),
                unchanged,
            )
        }
        Event::Delete(d) => ("d", Some(d.old.row()), None, Vec::new()),
        Event::Truncate(_) => ("t", None, None, Vec::new()),
        _ => {
            return Err(SinkError::Fatal(format!(
                "no message for a {} event",
                event.kind()
            )));
        }
    };
    let out = if json_format {
        serde_json::to_vec(&FerryEnvelope {
            op,
            schema: &rel.schema,
            table: &rel.name,
            before: row_ref(rel, before, false),
            after: row_ref(rel, after, true),
            unchanged,
            position: origin.position,
            xid: origin.begin.xid,
            commit_time: origin.commit_time,
        })
    } else {
        let snapshot = origin.begin.xid == 0;
        serde_json::to_vec(&DebeziumEnvelope {
            before: row_ref(rel, before, false),
            after: row_ref(rel, after, false),
            source: DebeziumSource {
                version: env!("CARGO_PKG_VERSION"),
                connector: match &origin.begin.position {
                    ferry_proto::Position::Postgres(_) => "postgresql",
                    _ => "mysql",
                },
                name: origin.server,
                ts_ms: origin.begin.commit_time.div_euclid(1000),
                snapshot: if snapshot { "true" } else { "false" },
                db: origin.database,
                schema: &rel.schema,
                table: &rel.name,
                tx_id: origin.begin.xid,
                lsn: match &origin.begin.position {
                    ferry_proto::Position::Postgres(l) => Some(l.0),
                    _ => None,
                },
                file: match &origin.begin.position {
                    ferry_proto::Position::Binlog(b) => Some(b.file.as_str()),
                    _ => None,
                },
                pos: match &origin.begin.position {
                    ferry_proto::Position::Binlog(b) => Some(b.pos),
                    _ => None,
                },
            },
            op: if snapshot && op == "c" { "r" } else { op },
            ts_ms: origin.begin.commit_time.div_euclid(1000),
        })
    };
    out.map_err(|e| SinkError::Fatal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{OldRow, RelationId, Update, samples};

    #[test]
    fn a_key_change_is_a_delete_under_the_old_key_then_a_create_under_the_new() {
        let rel = samples::relation(1);
        let update = |old: i64, new: i64| {
            Event::Update(Update {
                relation: RelationId(1),
                old: Some(OldRow::Key(vec![Value::Int(old), Value::Null])),
                new: vec![Value::Int(new), Value::Text("x".into())],
            })
        };
        let moved = update(1, 2);
        let parts = split_key_change(&rel, &moved);
        let kinds: Vec<&str> = parts.iter().map(|p| p.kind()).collect();
        assert_eq!(kinds, ["delete", "insert"]);
        let keys: Vec<String> = parts
            .iter()
            .map(|p| String::from_utf8(key(&rel, key_row(p).unwrap()).unwrap().unwrap()).unwrap())
            .collect();
        assert_eq!(keys, [r#"{"id":1}"#, r#"{"id":2}"#]);
        // The same key: one update, as it came.
        let same = update(3, 3);
        let parts = split_key_change(&rel, &same);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].as_ref(), &same);
    }

    #[test]
    fn values_render_faithfully() {
        assert_eq!(value(&Value::Numeric("-0.010".into())), json!("-0.010"));
        assert_eq!(value(&Value::Bytes(vec![0, 255])), json!("AP8="));
        assert_eq!(value(&Value::Date(0)), json!("1970-01-01"));
        assert_eq!(value(&Value::Date(-719_528)), json!("0000-01-01"));
        assert_eq!(
            value(&Value::TimestampTz(1_709_204_400_000_001)),
            json!("2024-02-29T11:00:00.000001Z")
        );
        assert_eq!(value(&Value::Timestamp(i64::MAX)), json!("infinity"));
        assert_eq!(value(&Value::Float(f64::NAN)), json!("NaN"));
        assert_eq!(
            value(&Value::Interval {
                months: 14,
                days: -3,
                micros: -1
            }),
            json!("P14M-3DT-0.000001S")
        );
        assert_eq!(
            value(&Value::TimeTz {
                micros: 3_723_000_000,
                offset_secs: -19_800
            }),
            json!("01:02:03.000000-05:30")
        );
    }
}
