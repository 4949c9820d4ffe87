//! Sequences and identity counters on the database sinks: logical decoding and the binlog carry
//! row values, not counters, so a replica's `serial`/identity sequences and `AUTO_INCREMENT`
//! would stay at their start and the first `INSERT` after a switch to the replica would collide.
//! Every `sequences_seconds` this task reads the source's counters of the captured tables (a
//! PostgreSQL sequence owned by a column or used by its default: its `last_value`; a
//! MySQL/MariaDB `AUTO_INCREMENT`: the next value less one) and moves each sink's counter of the
//! same table and column ahead to it (down, for a descending sequence), never back; where the
//! column is the target's one-column primary key, also past the extreme key applied. Across engines the same: a MariaDB
//! `AUTO_INCREMENT` sets a PostgreSQL identity sequence, a PostgreSQL sequence a MariaDB
//! `AUTO_INCREMENT`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkKind, SourceKind};
use ferry_source::error::{Error, Result};

/// A counter on the source: the table and column it numbers, and the last value it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub last: i64,
}

/// What `/status` and `/metrics` show per sink.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// µs since the epoch of the last sync that reached every counter.
    pub last_sync: Option<i64>,
    /// Counters the source has, and counters moved ahead on the sink (since start).
    pub counters: usize,
    pub moved: u64,
    pub last_error: Option<String>,
}

/// The per-sink status, shared with the HTTP endpoint.
pub type SyncHandle = Arc<Mutex<SyncStatus>>;

/// A database sink whose counters follow the source.
#[derive(Debug, Clone)]
pub struct SyncSink {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub status: SyncHandle,
}

/// The sinks to keep in step, and how often (`None`: none).
pub fn plan(config: &Config) -> Vec<(SyncSink, Duration)> {
    config
        .sinks
        .iter()
        .map(|s| s.get_ref())
        .filter(|s| matches!(s.kind, SinkKind::Postgres | SinkKind::Mysql))
        .filter_map(|s| {
            let secs = s.sequences_seconds.unwrap_or(10);
            (secs > 0).then(|| {
                (
                    SyncSink {
                        name: s.name.as_str().to_owned(),
                        kind: s.kind,
                        url: s.url_exposed(),
                        status: SyncHandle::default(),
                    },
                    Duration::from_secs(u64::from(secs)),
                )
            })
        })
        .collect()
}

/// Where the counters are read: the source, as configured.
#[derive(Debug, Clone)]
pub enum CounterSource {
    Postgres {
        url: String,
        settings: Box<ferry_source::postgres::source::SourceSettings>,
    },
    Mysql {
        url: String,
        settings: Box<ferry_source::mysql::MysqlSettings>,
    },
}

impl CounterSource {
    pub fn of(config: &Config) -> Result<CounterSource> {
        let url = config.source.url.expose().to_owned();
        Ok(match config.source.kind {
            SourceKind::Postgres => CounterSource::Postgres {
                url,
                settings: Box::new(crate::supervisor::pg_settings(config)?),
            },
            SourceKind::Mysql => CounterSource::Mysql {
                url,
                settings: Box::new(crate::supervisor::mysql_settings(config)?),
            },
        })
    }
}

/// Runs until `stop`: reads the source's counters and moves each sink's ahead.
pub async fn run(source: CounterSource, sinks: Vec<(SyncSink, Duration)>, stop: CancellationToken) {
    let Some(every) = sinks.iter().map(|(_, d)| *d).min() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A server that does not answer must not hold up the stop.
        tokio::select! {
            _ = stop.cancelled() => return,
            () = round(&source, &sinks, &mut said) => {}
        }
    }
}

/// One poll: the source's counters, then each sink's moved ahead.
async fn round(source: &CounterSource, sinks: &[(SyncSink, Duration)], said: &mut Option<String>) {
    let counters = match source_counters(source).await {
        Ok(c) => c,
        Err(e) => {
            // Said once per change of reason, not every poll.
            let text = e.to_string();
            if said.as_deref() != Some(text.as_str()) {
                tracing::warn!(error = %e, "sequences: the source's counters could not be read");
                *said = Some(text);
            }
            for (s, _) in sinks {
                set(&s.status, |st| st.last_error = Some(format!("source: {e}")));
            }
            return;
        }
    };
    let mut failed = false;
    for (sink, _) in sinks {
        match sync_sink(sink, &counters).await {
            Ok(moved) => set(&sink.status, |st| {
                st.last_sync = Some(ferry_source::postgres::replication::unix_now_micros());
                st.counters = counters.len();
                st.moved += moved;
                st.last_error = None;
            }),
            Err(e) => {
                failed = true;
                let text = format!("{}: {e}", sink.name);
                if said.as_deref() != Some(text.as_str()) {
                    tracing::warn!(sink = %sink.name, error = %e, "sequences: the sink's counters could not be moved");
                    *said = Some(text);
                }
                set(&sink.status, |st| st.last_error = Some(e.to_string()));
            }
        }
    }
    if !failed {
        *said = None;
    }
}

fn set(status: &SyncHandle, f: impl FnOnce(&mut SyncStatus)) {
    let mut guard = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard);
}

/// The source's counters of the captured tables.
pub async fn source_counters(source: &CounterSource) -> Result<Vec<Counter>> {
    match source {
        CounterSource::Postgres { url, settings } => {
            let (client, _task) =
                ferry_db::postgres::tls::Tls::connect_url(url, "ferry sequences").await?;
            postgres_counters(&client, settings).await
        }
        CounterSource::Mysql { url, settings } => {
            let mut conn = crate::verify::mysql::connect(url).await?;
            // MySQL 8 caches information_schema's counters for a day by default.
            let _ = conn
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
            let rows: Vec<(String, String, String, u64)> =
                conn.query(MYSQL_SOURCE_COUNTERS).await?;
            let _ = conn.disconnect().await;
            Ok(rows
                .into_iter()
                .filter(|(db, t, _, _)| settings.wanted(db, t))
                .map(|(schema, table, column, next)| Counter {
                    schema,
                    table,
                    column,
                    last: i64::try_from(next.saturating_sub(1)).unwrap_or(i64::MAX),
                })
                .collect())
        }
    }
}

/// The counters of a PostgreSQL source's captured tables, read on `client`.
pub async fn postgres_counters(
    client: &tokio_postgres::Client,
    settings: &ferry_source::postgres::source::SourceSettings,
) -> Result<Vec<Counter>> {
    let rows = client
        .query(POSTGRES_SOURCE_COUNTERS, &[&settings.publication])
        .await?;
    let mut counters = Vec::new();
    let mut unreadable = Vec::new();
    for r in &rows {
        let (schema, table): (String, String) = (r.get(0), r.get(1));
        if !settings.filter.accepts(&schema, &table) {
            continue;
        }
        if !r.get::<_, bool>(4) {
            unreadable.push(r.get::<_, String>(5));
            continue;
        }
        if let Some(last) = r.get::<_, Option<i64>>(3) {
            counters.push(Counter {
                schema,
                table,
                column: r.get(2),
                last,
            });
        }
    }
    if !unreadable.is_empty() {
        return Err(Error::Config(format!(
            "the source user cannot read sequence(s) {}: GRANT SELECT ON SEQUENCE … TO \
             the user ferry connects as, so the replicas' counters can follow",
            unreadable.join(", ")
        )));
    }
    Ok(counters)
}

/// Sequences owned by a column of a published table (serial, identity) or used by a column's
/// default, with the last value each gave (NULL for one never called, or not readable: the
/// privilege is returned too, so that is said rather than skipped).
const POSTGRES_SOURCE_COUNTERS: &str = "
    WITH used AS (
        SELECT d.refobjid AS tbl, d.refobjsubid AS col, d.objid AS seq
        FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
        UNION
        SELECT ad.adrelid, ad.adnum, d.refobjid
        FROM pg_attrdef ad
        JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
             AND d.refclassid = 'pg_class'::regclass
    )
    SELECT p.schemaname::text, p.tablename::text, a.attname::text, s.last_value,
           has_sequence_privilege(sc.oid, 'SELECT'), format('%I.%I', sn.nspname, sc.relname)
    FROM used u
    JOIN pg_class sc ON sc.oid = u.seq AND sc.relkind = 'S'
    JOIN pg_class t ON t.oid = u.tbl
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_publication_tables p ON p.schemaname = n.nspname AND p.tablename = t.relname
         AND p.pubname = $1
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.col
    JOIN pg_namespace sn ON sn.oid = sc.relnamespace
    JOIN pg_sequences s ON s.schemaname = sn.nspname AND s.sequencename = sc.relname";

/// Every table with an `AUTO_INCREMENT` column, and the counter's next value.
const MYSQL_SOURCE_COUNTERS: &str = "
    SELECT t.TABLE_SCHEMA, t.TABLE_NAME, c.COLUMN_NAME, t.AUTO_INCREMENT
    FROM information_schema.TABLES t
    JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA
         AND c.TABLE_NAME = t.TABLE_NAME AND c.EXTRA LIKE '%auto_increment%'
    WHERE t.AUTO_INCREMENT IS NOT NULL";

/// Moves the sink's counters ahead to the source's; returns how many moved.
pub async fn sync_sink(sink: &SyncSink, counters: &[Counter]) -> Result<u64> {
    match sink.kind {
        SinkKind::Postgres => sync_postgres(&sink.url, counters).await,
        SinkKind::Mysql => sync_mysql(&sink.url, counters).await,
        SinkKind::Kafka => Ok(0),
    }
}

async fn sync_postgres(url: &str, counters: &[Counter]) -> Result<u64> {
    let (client, _task) = ferry_db::postgres::tls::Tls::connect_url(url, "ferry sequences").await?;
    let mut moved = 0;
    for c in counters {
        let table = format!(
            "{}.{}",
            ferry_db::postgres::quote_ident(&c.schema),
            ferry_db::postgres::quote_ident(&c.table)
        );
        // The target's own sequence of that column (serial or identity), if the table is there.
        let row = client
            .query_one(
                "SELECT CASE WHEN to_regclass($1) IS NULL THEN NULL
                        ELSE pg_get_serial_sequence($1, $2) END",
                &[&table, &c.column],
            )
            .await?;
        let Some(seq) = row.get::<_, Option<String>>(0) else {
            continue;
        };
        // Ahead in the sequence's own direction: a descending one counts down, so "ahead" is
        // lower, and moving it up would hand out values its rows already hold.
        let descending: bool = client
            .query_one(
                "SELECT increment_by < 0 FROM pg_sequences p
                 WHERE format('%I.%I', p.schemaname, p.sequencename)::regclass = $1::text::regclass",
                &[&seq],
            )
            .await?
            .get(0);
        let (extreme, behind) = if descending {
            ("min", ">")
        } else {
            ("max", "<")
        };
        // Past the extreme key applied, where that costs one index probe.
        let mut want = c.last;
        if single_column_key(&client, &table, &c.column).await? {
            let sql = format!(
                "SELECT {extreme}({})::int8 FROM {table}",
                ferry_db::postgres::quote_ident(&c.column)
            );
            if let Some(key) = client.query_one(&sql, &[]).await?.get::<_, Option<i64>>(0) {
                want = if descending {
                    want.min(key)
                } else {
                    want.max(key)
                };
            }
        }
        let n = client
            .execute(
                &format!(
                    "SELECT setval($1::text::regclass, $2)
                     FROM pg_sequences p
                     WHERE format('%I.%I', p.schemaname, p.sequencename)::regclass
                           = $1::text::regclass
                       AND (p.last_value IS NULL OR p.last_value {behind} $2)"
                ),
                &[&seq, &want],
            )
            .await?;
        moved += n;
    }
    Ok(moved)
}

/// Whether `column` alone is the primary key of `table` (so `max` is one index probe).
async fn single_column_key(
    client: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT count(*) = 1 AND bool_and(a.attname = $2)
             FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
            &[&table, &column],
        )
        .await?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

async fn sync_mysql(url: &str, counters: &[Counter]) -> Result<u64> {
    let mut conn = crate::verify::mysql::connect(url).await?;
    let _ = conn
        .query_drop("SET SESSION information_schema_stats_expiry = 0")
        .await;
    // The ALTER waits for a table's open transactions (the sink's, a reader's): give up after a
    // few seconds and try again at the next poll rather than queue everything behind it.
    conn.query_drop("SET SESSION lock_wait_timeout = 5").await?;
    let mut moved = 0;
    for c in counters {
        let next: Option<Option<u64>> = conn
            .exec_first(
                "SELECT t.AUTO_INCREMENT FROM information_schema.TABLES t
                 JOIN information_schema.COLUMNS k ON k.TABLE_SCHEMA = t.TABLE_SCHEMA
                      AND k.TABLE_NAME = t.TABLE_NAME AND k.COLUMN_NAME = ?
                      AND k.EXTRA LIKE '%auto_increment%'
                 WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?",
                (&c.column, &c.schema, &c.table),
            )
            .await?;
        // No such table, or its column has no AUTO_INCREMENT.
        let Some(current) = next else {
            continue;
        };
        let want = u64::try_from(c.last).unwrap_or(0).saturating_add(1);
        if current.is_some_and(|n| n >= want) {
            continue;
        }
        // InnoDB never sets the counter below the largest key plus one, so this only moves it
        // ahead; a metadata-only change, not a rebuild.
        conn.query_drop(format!(
            "ALTER TABLE {}.{} AUTO_INCREMENT = {want}",
            ferry_db::mysql::quote(&c.schema),
            ferry_db::mysql::quote(&c.table)
        ))
        .await?;
        moved += 1;
    }
    let _ = conn.disconnect().await;
    Ok(moved)
}
