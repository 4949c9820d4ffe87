//! The configuration file: TOML, `${VAR}` expanded from the environment (and `${file:PATH}` from
//! a secret file) inside string values,
//! unknown keys and wrong types reported with the file, line and column, secrets never printed.
//!
//! Parsing is strict by design: a typo in a production config must stop ferry at start, not be
//! silently ignored until the day its default matters.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ferry_sink::OnError;
use serde::{Deserialize, Deserializer};

/// A configuration problem, already formatted as `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seconds a stop (SIGTERM, SIGINT) may take before ferry exits anyway (default 10).
    pub shutdown_grace_seconds: Option<u32>,
    pub source: SourceConfig,
    pub spool: SpoolConfig,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<toml::Spanned<SinkConfig>>,
    pub http: Option<HttpConfig>,
    /// Keeps the spool's transactions in an object store, for `ferry restore`; off when absent.
    pub archive: Option<ArchiveConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    pub url: ConnUrl,
    /// Include patterns (`schema.table`, `*` matches within a name part); empty means all tables.
    #[serde(default)]
    pub tables: Vec<Expanded>,
    #[serde(default)]
    pub exclude: Vec<Expanded>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// PostgreSQL replication slot name.
    pub slot: Option<Expanded>,
    /// PostgreSQL 17+: make the slot a failover slot, which standbys synchronizing slots keep.
    #[serde(default)]
    pub failover_slot: bool,
    /// PostgreSQL publication name.
    pub publication: Option<Expanded>,
    /// MySQL/MariaDB replica server id.
    pub server_id: Option<u32>,
    /// Tables copied in parallel during the initial snapshot (default 4).
    pub snapshot_workers: Option<u16>,
    /// MiB a transaction may hold in memory before it spills to the spool directory (default 64).
    pub txn_memory_mb: Option<u32>,
    /// MySQL: what a zero date (`0000-00-00`) becomes: "keep" (default), "null" or "error".
    pub zero_dates: Option<ferry_source::mysql::decode::ZeroDates>,
    /// PostgreSQL: what to do about captured tables without a replica identity.
    pub keyless: Option<ferry_source::postgres::keyless::Keyless>,
    /// PostgreSQL: warn (and turn `/readyz` unready) when the slot's `safe_wal_size` falls below
    /// this many MiB (default: a quarter of `max_slot_wal_keep_size`).
    pub min_safe_wal_mb: Option<u32>,
    /// MySQL/MariaDB: warn (and turn `/readyz` unready) when the binlog ferry would resume from
    /// may be purged within this many seconds (default: a quarter of the server's expiry).
    pub min_binlog_margin_seconds: Option<u64>,
}

impl SourceConfig {
    pub fn slot(&self) -> &str {
        self.slot.as_deref().unwrap_or("ferry")
    }
    pub fn publication(&self) -> &str {
        self.publication.as_deref().unwrap_or("ferry")
    }
    pub fn snapshot_workers(&self) -> usize {
        usize::from(self.snapshot_workers.unwrap_or(4).max(1))
    }
    pub fn txn_memory_bytes(&self) -> usize {
        (self.txn_memory_mb.unwrap_or(64) as usize) << 20
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Acknowledge the source up to what every sink has applied durably.
    #[default]
    Applied,
    /// Acknowledge the source up to what is fsynced in the spool.
    Spooled,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: Expanded,
    #[serde(default)]
    pub ack: AckPolicy,
    /// Segment size in MiB (default 64).
    pub segment_mb: Option<u32>,
}

impl SpoolConfig {
    pub fn dir(&self) -> &Path {
        Path::new(self.dir.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Postgres,
    Mysql,
    Kafka,
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkKind::Postgres => "postgres",
            SinkKind::Mysql => "mysql",
            SinkKind::Kafka => "kafka",
        })
    }
}

/// `[sink.kafka]`: librdkafka properties. `Debug` shows the values of secret ones as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, Expanded>);

impl KafkaProperties {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Expanded)> {
        self.0.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if ferry_db::redact::secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    Json,
    Debezium,
    Binary,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: Expanded,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    #[serde(default)]
    pub on_error: OnError,
    /// Database sinks.
    pub url: Option<ConnUrl>,
    /// Database sinks: "apply" (default) or "halt" when the source's schema changes.
    pub schema_changes: Option<ferry_sink::postgres::schema::SchemaChanges>,
    /// PostgreSQL sinks: what a MySQL/MariaDB zero date becomes.
    pub zero_dates: Option<ferry_sink::postgres::zero_date::ZeroDatePolicy>,
    /// Database sinks: create a missing target table from the source's definition.
    pub create_tables: Option<bool>,
    /// Database sinks: move the replica's sequences and `AUTO_INCREMENT` counters ahead to the
    /// source's this often, in seconds (default 10; 0 turns it off).
    pub sequences_seconds: Option<u32>,
    /// Database sinks: commit a batch once it holds this many row changes (default 10000).
    pub max_batch_rows: Option<u32>,
    /// Database sinks: commit a batch once it is this old, in milliseconds (default 200).
    pub max_batch_ms: Option<u32>,
    /// `/readyz` reports not ready while this sink is further behind (default 300 s).
    pub max_lag_seconds: Option<u32>,
    /// Kafka: a null-value message after each delete, for compacted topics.
    pub tombstones: Option<bool>,
    /// Kafka: each batch and the checkpoint in one Kafka transaction.
    pub exactly_once: Option<bool>,
    /// Kafka: the compacted topic holding exactly-once checkpoints (default "ferry.checkpoints").
    pub checkpoint_topic: Option<Expanded>,
    /// Kafka: where `on_error = "dead_letter"` sends a refused message.
    pub dead_letter_topic: Option<Expanded>,
    /// Kafka: transaction BEGIN/END markers go to this topic when set.
    pub transaction_topic: Option<Expanded>,
    /// Kafka: librdkafka properties passed through (`[sink.kafka]`, string values, `${VAR}`
    /// expanded).
    pub kafka: Option<KafkaProperties>,
    /// Kafka sinks.
    pub brokers: Option<Expanded>,
    pub topic: Option<Expanded>,
    /// Kafka: per-table topic overrides, `"schema.table" = "topic"` (`[sink.topics]`).
    pub topics: Option<std::collections::BTreeMap<String, Expanded>>,
    pub format: Option<KafkaFormat>,
}

impl SinkConfig {
    /// The database URL with its secrets, for connecting (empty for Kafka sinks).
    pub fn url_exposed(&self) -> String {
        self.url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .unwrap_or_default()
    }
}

/// `[archive]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `file:///absolute/dir` or `s3://bucket/prefix`.
    pub url: Expanded,
    /// `s3://`: an S3-compatible store's endpoint (`https://…`, or `http://…` for a private
    /// one); AWS when absent.
    pub endpoint: Option<Expanded>,
    pub region: Option<Expanded>,
    /// `s3://` credentials; the environment's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` when
    /// absent.
    pub access_key_id: Option<Expanded>,
    pub secret_access_key: Option<Secret>,
    /// 64 hex digits (32 bytes): every object is encrypted with XChaCha20-Poly1305 when set.
    pub encryption_key: Option<Secret>,
    /// An object is written at the latest this many seconds after its first transaction
    /// (default 10): the newest transactions of a quiet database reach the archive within it.
    pub archive_timeout_seconds: Option<u32>,
    /// An object is written once it holds this many MiB of the spool (default 16).
    pub object_mb: Option<u32>,
    /// `/readyz` is unready while the newest transaction the archive lacks has waited longer
    /// (default: no limit; a failing archive is unready whatever this says).
    pub max_lag_seconds: Option<u32>,
    /// A base backup is taken this often (`24h`, `7d`; units s, m, h, d, w) while ferry runs;
    /// default: only when asked (`ferry backup now`).
    pub base_backup_every: Option<String>,
    /// Retention: `keep = 3` keeps the newest 3 base backups, `keep = "14d"` every restore
    /// point of the last 14 days (and the newest before them); what no kept restore point
    /// needs is deleted after each base backup. Default: everything is kept.
    pub keep: Option<KeepConfig>,
}

/// `[archive] keep`: a count of base backups or a period.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeepConfig {
    Count(u32),
    Period(String),
}

impl ArchiveConfig {
    /// `base_backup_every`, parsed.
    pub fn base_backup_every(&self) -> Result<Option<std::time::Duration>, String> {
        self.base_backup_every
            .as_deref()
            .map(|t| {
                ferry_archive::retention::parse_period(t)
                    .map_err(|e| format!("[archive] base_backup_every = {e}"))
            })
            .transpose()
    }

    /// `keep`, parsed.
    pub fn keep(&self) -> Result<Option<ferry_archive::retention::Keep>, String> {
        use ferry_archive::retention::{Keep, parse_period};
        match &self.keep {
            None => Ok(None),
            Some(KeepConfig::Count(0)) => {
                Err("[archive] keep = 0 would keep no base backup: use 1 or more".into())
            }
            Some(KeepConfig::Count(n)) => Ok(Some(Keep::Count(*n as usize))),
            Some(KeepConfig::Period(p)) => parse_period(p)
                .map(|d| Some(Keep::Period(d)))
                .map_err(|e| format!("[archive] keep = {e}")),
        }
    }

    /// The archiver's settings, defaults filled in.
    pub fn settings(&self) -> Result<ferry_archive::ArchiveSettings, ferry_archive::ArchiveError> {
        let key = match &self.encryption_key {
            Some(k) => Some(ferry_archive::object::Key::from_hex(k.expose())?),
            None => None,
        };
        Ok(ferry_archive::ArchiveSettings {
            url: self.url.as_str().to_owned(),
            s3: ferry_archive::S3Settings {
                endpoint: self.endpoint.as_ref().map(|e| e.as_str().to_owned()),
                region: self.region.as_ref().map(|e| e.as_str().to_owned()),
                access_key_id: self.access_key_id.as_ref().map(|e| e.as_str().to_owned()),
                secret_access_key: self
                    .secret_access_key
                    .as_ref()
                    .map(|e| e.expose().to_owned()),
            },
            key,
            object_bytes: (self.object_mb.unwrap_or(16).max(1) as usize) << 20,
            timeout: std::time::Duration::from_secs(u64::from(
                self.archive_timeout_seconds.unwrap_or(10).max(1),
            )),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Enables the control routes (`POST /v1/...`) for requests that present it as a bearer
    /// token; without it they are off.
    pub token: Option<Secret>,
}

/// A secret value (a token): `Debug` never shows it; only [`expose`](Self::expose) does.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Secret(Expanded);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("{origin}:{line}:{col}")
                })
                .unwrap_or_else(|| origin.to_owned());
            ConfigError(format!("{at}: {}", explain(e.message())))
        })?;
        config.validate(text, origin)?;
        Ok(config)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        if self.source.kind == SourceKind::Mysql && self.source.server_id.is_none() {
            return Err(ConfigError(format!(
                "{origin}: [source] of type \"mysql\" needs server_id, a number no other replica of \
                 the server uses"
            )));
        }
        if self.source.kind == SourceKind::Mysql && self.source.failover_slot {
            return Err(ConfigError(format!(
                "{origin}: [source] key `failover_slot` applies to postgres sources only (a \
                 MySQL/MariaDB source follows a failover by GTID)"
            )));
        }
        if self.source.kind == SourceKind::Postgres && self.source.server_id.is_some() {
            return Err(ConfigError(format!(
                "{origin}: [source] key `server_id` applies to mysql sources only"
            )));
        }
        if let Some(a) = &self.archive {
            a.base_backup_every()
                .and(a.keep())
                .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        }
        let mut names = HashSet::new();
        for spanned in &self.sinks {
            let sink = spanned.get_ref();
            let (line, _) = line_col(text, spanned.span().start);
            let at = format!("{origin}:{line}");
            let name = sink.name.as_str();
            let valid_name = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid_name {
                return Err(ConfigError(format!(
                    "{at}: sink name {name:?} must be letters, digits, '-', '_' or '.'"
                )));
            }
            if !names.insert(name) {
                return Err(ConfigError(format!(
                    "{at}: two sinks are named {name:?}; sink names must be unique"
                )));
            }
            let is_db = matches!(sink.kind, SinkKind::Postgres | SinkKind::Mysql);
            let mut required: Vec<&str> = Vec::new();
            let mut stray: Vec<&str> = Vec::new();
            let mut check = |key: &'static str, present: bool, wanted: bool| {
                if wanted && !present {
                    required.push(key);
                }
                if !wanted && present {
                    stray.push(key);
                }
            };
            check("url", sink.url.is_some(), is_db);
            check("brokers", sink.brokers.is_some(), !is_db);
            check("topic", sink.topic.is_some(), !is_db);
            if is_db && sink.format.is_some() {
                stray.push("format");
            }
            if sink.kind != SinkKind::Postgres && sink.zero_dates.is_some() {
                stray.push("zero_dates");
            }
            for (key, present) in [
                ("schema_changes", sink.schema_changes.is_some()),
                ("create_tables", sink.create_tables.is_some()),
                ("max_batch_rows", sink.max_batch_rows.is_some()),
                ("sequences_seconds", sink.sequences_seconds.is_some()),
            ] {
                if present && !is_db {
                    stray.push(key);
                }
            }
            for (key, present) in [
                ("tombstones", sink.tombstones.is_some()),
                ("exactly_once", sink.exactly_once.is_some()),
                ("checkpoint_topic", sink.checkpoint_topic.is_some()),
                ("dead_letter_topic", sink.dead_letter_topic.is_some()),
                ("transaction_topic", sink.transaction_topic.is_some()),
                ("kafka", sink.kafka.is_some()),
                ("topics", sink.topics.is_some()),
            ] {
                if present && is_db {
                    stray.push(key);
                }
            }
            if let Some(key) = required.first() {
                return Err(ConfigError(format!(
                    "{at}: sink {name:?} of type \"{}\" needs `{key}`",
                    sink.kind
                )));
            }
            if let Some(key) = stray.first() {
                return Err(ConfigError(format!(
                    "{at}: key `{key}` does not apply to sink {name:?} of type \"{}\"",
                    sink.kind
                )));
            }
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Adds "did you mean" to serde's unknown-field and unknown-variant messages.
fn explain(message: &str) -> String {
    let msg = message.trim();
    // Rust's integer type names mean nothing to a person writing TOML.
    for (rust, plain) in [
        ("expected u16", "expected a whole number (0 to 65535)"),
        ("expected u32", "expected a whole number (0 to 4294967295)"),
        ("expected u64", "expected a whole number"),
    ] {
        if let Some(i) = msg.find(rust) {
            return format!("{}{plain}{}", &msg[..i], &msg[i + rust.len()..]);
        }
    }
    let Some(rest) = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))
    else {
        return msg.to_owned();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return msg.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(given, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3));
    match best {
        Some((_, c)) => format!("{msg}; did you mean `{c}`?"),
        None => msg.to_owned(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A string value with `${VAR}` replaced from the environment and `${file:PATH}` by the file's
/// content (`$$` is a literal `$`). A variable that is not set, or a file that cannot be read, is
/// an error naming it, reported at the value's position.
#[derive(Clone, PartialEq, Eq)]
pub struct Expanded(String);

impl Expanded {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Expanded {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw, |k| std::env::var(k).ok())
            .map(Expanded)
            .map_err(serde::de::Error::custom)
    }
}

/// The content of a secret file (`${file:PATH}`), without the one line ending such files
/// usually end with (Docker and Kubernetes secrets, `echo pw > file`). The error names the path,
/// never the content.
fn read_secret(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("${file:} names no file".into());
    }
    let mut text = std::fs::read_to_string(path).map_err(|e| format!("secret file {path}: {e}"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Expands `${VAR}`, `${file:PATH}` and `$$` in `raw`, looking variables up with `lookup`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {:?}", redact(raw)))?;
            let name = &body[..end];
            if let Some(path) = name.strip_prefix("file:") {
                out.push_str(&read_secret(path)?);
                rest = &body[end + 1..];
                continue;
            }
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A connection URL or DSN that may hold a password. `Debug` and `Display` redact it; only
/// [`expose`](Self::expose) gives the real text, for the code that connects.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct ConnUrl(Expanded);

impl ConnUrl {
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_str()))
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(self.0.as_str()), f)
    }
}

pub use ferry_db::redact::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_of_every_setting_hold_no_secret() {
        let text = r#"
[source]
type = "mysql"
url = "mysql://repl:hunter2@db:3306/app"
server_id = 7

[spool]
dir = "/var/lib/ferry"

[[sink]]
name = "replica"
type = "postgres"
url = "postgres://app:s3cret@replica:5432/app"

[[sink]]
name = "events"
type = "kafka"
brokers = "kafka:9092"
topic = "t"
format = "json"

[sink.kafka]
"sasl.password" = "k4fka"
"ssl.key.password" = "k3y"
"client.id" = "visible"
"#;
        let config: Config = toml::from_str(text).unwrap();
        let mut prints = vec![format!("{config:?}")];
        prints.push(format!(
            "{:?}",
            crate::supervisor::mysql_settings(&config).unwrap()
        ));
        for sink in crate::supervisor::sink_settings(&config).unwrap() {
            prints.push(format!("{sink:?}"));
        }
        for p in &prints {
            for secret in ["hunter2", "s3cret", "k4fka", "k3y"] {
                assert!(!p.contains(secret), "{secret} in {p}");
            }
        }
        assert!(prints.iter().any(|p| p.contains("visible")));
        assert!(prints.iter().any(|p| p.contains("repl:***@db")));
    }

    const GOOD: &str = r#"
[source]
type = "postgres"
url = "postgres://repl:hunter2@db:5432/app"
tables = ["public.*"]

[spool]
dir = "/var/lib/ferry"

[[sink]]
name = "replica"
type = "postgres"
url = "postgres://app:s3cret@replica:5432/app"

[[sink]]
name = "events"
type = "kafka"
brokers = "kafka:9092"
topic = "ferry.{schema}.{table}"
format = "json"

[http]
listen = "127.0.0.1:9187"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "ferry.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_design_example() {
        let c = Config::parse(GOOD, "ferry.toml").unwrap();
        assert_eq!(c.source.kind, SourceKind::Postgres);
        assert_eq!(c.source.slot(), "ferry");
        assert_eq!(c.spool.ack, AckPolicy::Applied);
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.sinks[1].get_ref().format, Some(KafkaFormat::Json));
        assert_eq!(c.sinks[0].get_ref().on_error, OnError::Halt);
        assert_eq!(c.source.url.expose(), "postgres://repl:hunter2@db:5432/app");
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let c = Config::parse(GOOD, "ferry.toml").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("postgres://repl:***@db:5432/app"), "{dbg}");
        assert_eq!(
            redact("host=db user=repl password=hunter2 dbname=app"),
            "host=db user=repl password=*** dbname=app"
        );
        assert_eq!(
            redact("mysql://root:p@ss:w0rd@h:3306/db?sslmode=require&Password=x"),
            "mysql://root:***@h:3306/db?sslmode=require&Password=***"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
    }

    #[test]
    fn unknown_key_names_key_line_and_suggestion() {
        let e = err(&GOOD.replace("tables =", "tabels ="));
        assert!(
            e.starts_with("ferry.toml:5:1: unknown field `tabels`"),
            "{e}"
        );
        assert!(e.contains("did you mean `tables`?"), "{e}");
    }

    #[test]
    fn wrong_type_and_value_are_named() {
        let e = err(&GOOD.replace("listen = \"127.0.0.1:9187\"", "listen = 9187"));
        assert!(e.starts_with("ferry.toml:23:10:"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
        let e = err(&GOOD.replace("format = \"json\"", "format = \"jsn\""));
        assert!(
            e.contains("unknown variant `jsn`") && e.contains("did you mean `json`"),
            "{e}"
        );
        let e = err(&GOOD.replace("type = \"kafka\"", "type = \"kafak\""));
        assert!(e.contains("did you mean `kafka`"), "{e}");
    }

    #[test]
    fn env_vars_expand_and_missing_ones_are_named() {
        let raw = "postgres://u:${PW}@h/${DB}?x=$$y&z=$1";
        let got = expand_env(raw, |k| match k {
            "PW" => Some("p\"w".into()),
            "DB" => Some("app".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(got, "postgres://u:p\"w@h/app?x=$y&z=$1");
        assert_eq!(
            expand_env("${NOPE}", |_| None).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(expand_env("${A", |_| None).is_err());
        // Secrets from files: the one trailing line ending is dropped, nothing else.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cr:t$ \r\n").unwrap();
        let raw = format!("postgres://u:${{file:{}}}@h/db", pw.display());
        assert_eq!(
            expand_env(&raw, |_| None).unwrap(),
            "postgres://u:s3cr:t$ @h/db"
        );
        std::fs::write(&pw, "two\n\n").unwrap();
        assert_eq!(
            expand_env(&raw, |_| None).unwrap(),
            "postgres://u:two\n@h/db"
        );
        let missing = dir.path().join("nope");
        let refused =
            expand_env(&format!("${{file:{}}}", missing.display()), |_| None).unwrap_err();
        assert!(
            refused.contains("secret file") && refused.contains("nope"),
            "{refused}"
        );
        assert!(expand_env("${file:}", |_| None).is_err());
        assert!(expand_env("${A-B}", |_| None).is_err());
        let e = err(&GOOD.replace(
            "url = \"postgres://repl:hunter2@db:5432/app\"",
            "url = \"postgres://repl:${FERRY_TEST_SURELY_UNSET_VAR}@db/app\"",
        ));
        assert!(
            e.starts_with("ferry.toml:4:7:")
                && e.contains("environment variable FERRY_TEST_SURELY_UNSET_VAR is not set"),
            "{e}"
        );
    }

    #[test]
    fn sink_keys_must_fit_the_sink_type() {
        let e = err(&GOOD.replace("brokers = \"kafka:9092\"", ""));
        assert!(
            e.contains("sink \"events\" of type \"kafka\" needs `brokers`"),
            "{e}"
        );
        assert!(e.starts_with("ferry.toml:15:"), "{e}"); // the [[sink]] header
        let e = err(&GOOD.replace(
            "url = \"postgres://app:s3cret@replica:5432/app\"",
            "url = \"postgres://app:s3cret@replica:5432/app\"\ntopic = \"x\"",
        ));
        assert!(
            e.contains("key `topic` does not apply to sink \"replica\""),
            "{e}"
        );
        let e = err(&GOOD.replace("name = \"events\"", "name = \"replica\""));
        assert!(e.contains("two sinks are named \"replica\""), "{e}");
        let e = err(&GOOD.replace("name = \"events\"", "name = \"../x\""));
        assert!(e.contains("sink name"), "{e}");
    }

    #[test]
    fn malformed_toml_gives_line_and_column() {
        let e = err("[source]\ntype = \"postgres\nurl = 1\n");
        assert!(e.starts_with("ferry.toml:2:"), "{e}");
        let e = err(&GOOD.replace(
            "type = \"postgres\"\nurl = \"postgres://repl",
            "type = \"mysql\"\nurl = \"mysql://repl",
        ));
        assert!(e.contains("needs server_id"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ferry.toml");
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("${PGPASSWORD}", "pw")
            .replace("${REPLICA_PASSWORD}", "pw");
        let c = Config::parse(&text, "examples/ferry.toml").unwrap();
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.spool.dir(), Path::new("/var/lib/ferry"));
    }
}
