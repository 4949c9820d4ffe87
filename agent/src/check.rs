//! `ferry check`: connects to the source and every sink and checks what ferry needs of each,
//! reporting one line per finding with what to change. `ferry run` performs the same checks at
//! start and refuses a fatal one; what may pass by itself (a server not reachable yet) is left to
//! its retries.

use std::fmt;
use std::time::Duration;

use ferry_sink::kafka::KafkaSinkConfig;
use mysql_async::prelude::Queryable;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{Config, SourceKind};
use crate::supervisor::{SinkSettings, pg_settings, sink_settings};
use ferry_db::postgres::tls;
use ferry_source::error::Result;
use ferry_source::mysql::server::ResumeBy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// Whether it may pass by itself (a server not reachable yet): `run` retries instead.
    pub transient: bool,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        write!(f, "{tag}: {}", self.text)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, text: impl Into<String>) {
        self.findings.push(Finding {
            level,
            transient: false,
            text: text.into(),
        });
    }

    fn unreachable(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            level: Level::Error,
            transient: true,
            text: text.into(),
        });
    }

    fn ok(&mut self, text: impl Into<String>) {
        self.push(Level::Ok, text);
    }

    fn warn(&mut self, text: impl Into<String>) {
        self.push(Level::Warning, text);
    }

    fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text);
    }

    /// Whether ferry would run: no error at all.
    pub fn passes(&self) -> bool {
        !self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// Errors that retrying cannot fix.
    pub fn fatal(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error && !f.transient)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Awaits a connection for at most 15 s; a failure becomes a finding naming `what` (transient:
/// `run` retries it), and `None`.
async fn reach<T, E: fmt::Display>(
    r: &mut Report,
    what: &str,
    connect: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(x)) => Some(x),
        Ok(Err(e)) => {
            r.unreachable(format!(
                "cannot connect to {what}: {e} (check host, port, user and password)"
            ));
            None
        }
        Err(_) => {
            r.unreachable(format!("{what} did not answer within 15 s"));
            None
        }
    }
}

/// The captured tables: (schema or database, table, has a key).
type Tables = Vec<(String, String, bool)>;

/// Checks the source and every sink.
pub async fn check(config: &Config) -> Result<Report> {
    let mut r = Report::default();
    let tables = match config.source.kind {
        SourceKind::Postgres => check_postgres_source(config, &mut r).await?,
        SourceKind::Mysql => check_mysql_source(config, &mut r).await?,
    };
    for sink in sink_settings(config)? {
        match sink {
            SinkSettings::Postgres(c) => check_postgres_sink(&c, &tables, &mut r).await,
            SinkSettings::Mysql(c) => check_mysql_sink(&c, &tables, &mut r).await,
            SinkSettings::Kafka(c) => check_kafka_sink(&c, &tables, &mut r).await,
        }
    }
    if let Some(a) = &config.archive {
        check_archive(a, &mut r).await;
    }
    Ok(r)
}

/// The archive: its settings, and that its store answers a listing.
async fn check_archive(a: &crate::config::ArchiveConfig, r: &mut Report) {
    let archive = match a.settings().and_then(|s| ferry_archive::Archive::open(&s)) {
        Ok(archive) => archive,
        Err(e) => {
            r.error(format!("[archive]: {e}"));
            return;
        }
    };
    match archive.manifest_names().await {
        Ok(names) => r.ok(format!(
            "archive {} reachable ({} object(s))",
            archive.url,
            names.len()
        )),
        // Unreachable now: `run` keeps the spool until it answers.
        Err(e) if e.is_transient() => r.unreachable(format!("archive {}: {e}", archive.url)),
        Err(e) => r.error(format!("archive {}: {e}", archive.url)),
    }
}

async fn check_postgres_source(config: &Config, r: &mut Report) -> Result<Tables> {
    let settings = pg_settings(config)?;
    let (cfg, tls) = tls::parse_url(config.source.url.expose())?;
    let what = format!("the source {}", config.source.url);
    let Some((client, _task)) = reach(r, &what, tls.connect_client(&cfg, "check source")).await
    else {
        return Ok(Vec::new());
    };
    r.ok(format!("source {} reachable", config.source.url));
    let (version, found) =
        ferry_source::postgres::prerequisites(&client, &settings.params.dbname).await?;
    for p in found {
        if p.ok {
            r.ok(p.text);
        } else {
            r.error(p.text);
        }
    }
    let major = version / 10_000;
    if (110_000..140_000).contains(&version) {
        r.warn(format!(
            "PostgreSQL {major} cannot stream transactions in progress, nor pass ferry the DDL \
             trigger's messages (both 14+): a large transaction reaches ferry only at its \
             commit, and a column rename stops ferry as ambiguous"
        ));
    }
    match ferry_source::postgres::ddl::installed(&client).await {
        Ok(_) if version < 140_000 => {}
        Ok(true) => r.ok(
            "the DDL trigger is installed: column and table renames and dropped tables reach \
             the replicas exactly",
        ),
        Ok(false) => r.warn(
            "ferry's DDL trigger is not installed: a column rename (a column gone and another \
             added in one change) stops ferry as ambiguous, and dropped tables stay on the \
             replicas; install it with `ferry ddl-trigger install` (a superuser)",
        ),
        Err(e) => r.error(format!("cannot read pg_event_trigger: {e}")),
    }
    retention_settings(&client, r).await?;
    let slot_exists = match ferry_source::postgres::slot::inspect_slot(
        &client,
        &settings.slot,
        &settings.params.dbname,
    )
    .await
    {
        Ok(s) => {
            if s.is_some() {
                r.ok(format!(
                    "replication slot {:?} exists and fits",
                    settings.slot
                ));
            }
            s.is_some()
        }
        Err(e) => {
            r.error(e.to_string());
            true
        }
    };
    slots_and_senders(&client, slot_exists, config.archive.is_some(), r).await?;
    failover_slots(&client, version, settings.failover_slot, r).await?;
    let tables = postgres_tables(&client, &settings, r).await?;
    if tables.is_empty() {
        r.warn("no table matches source.tables and source.exclude: nothing would be captured");
    } else {
        r.ok(format!("{} table(s) to capture", tables.len()));
    }
    publication_coverage(&client, &settings, &tables, r).await?;
    Ok(tables)
}

/// Failover slots (PostgreSQL 17+): with `failover_slot`, a standby that synchronizes slots
/// keeps ferry's, and `synchronized_standby_slots` must name the standbys' physical slots so that
/// ferry is never sent a change such a standby has not received (else a promoted standby's copy
/// of the slot is behind what ferry read, or the standby lacks what ferry applied).
async fn failover_slots(
    client: &tokio_postgres::Client,
    version: i32,
    wanted: bool,
    r: &mut Report,
) -> Result<()> {
    if version < 170_000 {
        if wanted {
            r.error(ferry_source::postgres::slot::failover_needs_17(version).to_string());
        }
        return Ok(());
    }
    if !wanted {
        r.warn(
            "failover_slot is off: on PostgreSQL 17+ a standby can keep a copy of ferry's slot \
             (failover_slot = true, and sync_replication_slots on the standby), so a failover \
             is not a gap",
        );
        return Ok(());
    }
    let standby_slots: String = client
        .query_one("SELECT current_setting('synchronized_standby_slots')", &[])
        .await?
        .get(0);
    if standby_slots.trim().is_empty() {
        r.warn(
            "failover_slot = true but synchronized_standby_slots is empty: ferry may read \
             changes a standby has not received, and after that standby is promoted ferry's \
             slot copy (or the data) is behind the spool, which stops ferry with a gap; set it \
             to the physical slots of the standbys that may take over",
        );
    } else {
        r.ok(format!(
            "failover_slot = true; changes reach ferry only after the standbys of \
             synchronized_standby_slots ({standby_slots}) have them"
        ));
    }
    Ok(())
}

/// Whether a replication slot (unless ferry's exists) and a WAL sender are free; with an
/// archive, one more of each for the temporary slot of a base backup or a drill.
async fn slots_and_senders(
    client: &tokio_postgres::Client,
    slot_exists: bool,
    archive: bool,
    r: &mut Report,
) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*)::int FROM pg_stat_replication)",
            &[],
        )
        .await?;
    let (max_slots, slots, max_senders, senders): (i32, i32, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if !slot_exists && slots >= max_slots {
        r.error(format!(
            "all {max_slots} replication slots are in use: raise max_replication_slots and \
             restart, or drop an unused slot"
        ));
    }
    let needed_slots = slots + i32::from(!slot_exists) + i32::from(archive);
    if archive && needed_slots > max_slots && (slot_exists || slots < max_slots) {
        r.warn(format!(
            "base backups and drills need a temporary replication slot beside ferry's, but \
             max_replication_slots = {max_slots} leaves none free: raise it (and \
             max_wal_senders) and restart"
        ));
    }
    if senders >= max_senders {
        // Maybe a departing walsender of ferry's own: it may pass by itself.
        r.unreachable(format!(
            "all {max_senders} WAL senders are busy: raise max_wal_senders and restart"
        ));
    }
    Ok(())
}

/// The tables the filter captures (with SELECT granted, and each keyless one as `keyless` will
/// treat it): (schema, name, has a key or REPLICA IDENTITY FULL).
async fn postgres_tables(
    client: &tokio_postgres::Client,
    settings: &ferry_source::postgres::source::SourceSettings,
    r: &mut Report,
) -> Result<Tables> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                    has_table_privilege(c.oid, 'SELECT'),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry')
               AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut tables = Vec::new();
    for row in rows {
        let (schema, name, ident, select, pk): (String, String, String, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if !settings.filter.accepts(&schema, &name) {
            continue;
        }
        if !select {
            r.error(format!(
                "no SELECT on {schema}.{name}: GRANT SELECT ON {schema}.{name} TO <user>"
            ));
        }
        tables.push((schema, name, pk || ident == "f"));
    }
    // The same tables `run` refuses or handles: one query decides both.
    for t in ferry_source::postgres::keyless::find(client, &settings.filter).await? {
        use ferry_source::postgres::keyless::Keyless;
        let (table, what) = (
            format!("{}.{}", t.schema, t.name),
            if t.nothing {
                "has REPLICA IDENTITY NOTHING"
            } else {
                "has no primary key"
            },
        );
        match settings.keyless {
            Keyless::Error => r.error(format!(
                "{table} {what}: once published, the application's UPDATE and DELETE on it fail \
                 on the source, so `ferry run` refuses; add a primary key, or set [source] \
                 keyless = \"full\" (ferry sets REPLICA IDENTITY FULL), \"exclude\" or \"allow\""
            )),
            Keyless::Full => r.ok(format!(
                "{table} {what}: ferry sets REPLICA IDENTITY FULL on it (keyless = \"full\"; \
                 needs the table's owner)"
            )),
            Keyless::Exclude => r.ok(format!(
                "{table} {what}: left out of the publication (keyless = \"exclude\")"
            )),
            Keyless::Allow => r.warn(format!(
                "{table} {what}: published anyway (keyless = \"allow\"): its UPDATE and DELETE \
                 fail on the source"
            )),
        }
    }
    Ok(tables)
}

/// An existing publication that lists its tables: every captured table must be in it.
async fn publication_coverage(
    client: &tokio_postgres::Client,
    settings: &ferry_source::postgres::source::SourceSettings,
    tables: &Tables,
    r: &mut Report,
) -> Result<()> {
    let publication = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&settings.publication],
        )
        .await?;
    if let Some(p) = publication
        && !p.get::<_, bool>(0)
    {
        let published: Vec<(String, String)> = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&settings.publication],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (s, t, _) in tables {
            if !published.iter().any(|(ps, pt)| ps == s && pt == t) {
                r.warn(format!(
                    "publication {:?} does not include {s}.{t}: ALTER PUBLICATION {} ADD TABLE {s}.{t}",
                    settings.publication, settings.publication
                ));
            }
        }
    }
    Ok(())
}

/// How much WAL the server keeps for a slot that falls behind, and how long it keeps an idle one:
/// what decides whether a stopped or slow ferry loses its slot.
async fn retention_settings(client: &tokio_postgres::Client, r: &mut Report) -> Result<()> {
    let rows = client
        .query(
            "SELECT name, setting, unit FROM pg_settings
             WHERE name IN ('max_slot_wal_keep_size', 'idle_replication_slot_timeout')
             ORDER BY name",
            &[],
        )
        .await?;
    let mut keep = None;
    for row in rows {
        let (name, setting, unit): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let unit = unit.unwrap_or_default();
        match name.as_str() {
            "max_slot_wal_keep_size" => keep = Some(setting.clone()),
            _ if setting == "0" => r.ok(
                "idle_replication_slot_timeout = 0: the server never invalidates ferry's slot \
                 for being idle",
            ),
            _ => r.warn(format!(
                "idle_replication_slot_timeout = {setting}{unit}: if ferry is stopped longer \
                 than that, the server invalidates its slot at a checkpoint and the replicas \
                 must be copied again; keep ferry's downtime shorter or set it to 0"
            )),
        }
    }
    match keep.as_deref() {
        Some("-1") => r.warn(
            "max_slot_wal_keep_size = -1: the server keeps WAL for ferry's slot without limit, \
             so a stopped or stuck ferry can fill the source's disk; set a limit larger than \
             the WAL written during the longest outage you accept",
        ),
        Some(mb) => r.ok(format!(
            "max_slot_wal_keep_size = {mb}MB: ferry's slot is invalidated (and the replicas \
             must be copied again) if it falls that far behind; watch \
             ferry_source_slot_safe_wal_bytes"
        )),
        None => r.warn(
            "PostgreSQL before 13 has no max_slot_wal_keep_size: a stopped or stuck ferry \
             makes the server keep WAL without limit",
        ),
    }
    Ok(())
}

async fn check_mysql_source(config: &Config, r: &mut Report) -> Result<Tables> {
    let settings = crate::supervisor::mysql_settings(config)?;
    let opts = match ferry_db::mysql::opts_from_url(config.source.url.expose()) {
        Ok(o) => o,
        Err(e) => {
            r.error(format!("source url: {e}"));
            return Ok(Vec::new());
        }
    };
    let what = format!("the source {}", config.source.url);
    let Some(mut conn) = reach(r, &what, ferry_db::mysql::connect(opts)).await else {
        return Ok(Vec::new());
    };
    r.ok(format!("source {} reachable", config.source.url));
    for p in ferry_source::mysql::server::prerequisites(&mut conn, settings.server_id).await? {
        match (p.ok, p.transient) {
            (true, _) => r.ok(p.text),
            // `run` waits for it to pass (ferry's own killed predecessor, most likely).
            (false, true) => r.unreachable(p.text),
            (false, false) => r.error(p.text),
        }
    }
    let grants: Vec<String> = match conn.query("SHOW GRANTS").await {
        Ok(g) => g,
        Err(e) => {
            r.error(format!(
                "SHOW GRANTS failed on the source ({e}): the account's privileges cannot be \
                 checked"
            ));
            return Ok(Vec::new());
        }
    };
    let all = grants.join(" ").to_ascii_uppercase();
    let has = |p: &[&str]| all.contains("ALL PRIVILEGES") || p.iter().any(|x| all.contains(x));
    if !has(&["REPLICATION SLAVE", "REPLICATION REPLICA"]) {
        r.error("the account lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO <user>");
    }
    if !has(&["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"]) {
        r.error(
            "the account lacks REPLICATION CLIENT (MariaDB: BINLOG MONITOR): GRANT REPLICATION \
             CLIENT ON *.* TO <user>",
        );
    }
    if !has(&["SELECT"]) {
        r.error("the account lacks SELECT for the snapshot: GRANT SELECT ON <db>.* TO <user>");
    }
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await?
        .unwrap_or_default();
    if !version.contains("MariaDB") {
        let gtid: Option<String> = conn.query_first("SELECT @@gtid_mode").await.unwrap_or(None);
        if gtid.as_deref() != Some("ON") {
            r.warn("gtid_mode is not ON (advisory): ferry resumes by file:position either way");
        }
    }
    match ferry_source::mysql::server::binlog_expiry(&mut conn).await {
        Ok(0) => r.warn(
            "binlogs are never expired (binlog_expire_logs_seconds and expire_logs_days are 0): \
             the source's disk grows; ferry needs them kept only as long as it may be down",
        ),
        Ok(seconds) => r.ok(format!(
            "binlogs expire after {seconds} s (binlog_expire_logs_seconds): ferry may be down \
             at most that long before the binlog it resumes from is purged; watch \
             ferry_source_binlog_margin_seconds"
        )),
        Err(e) => r.error(format!("the binlog expiry cannot be read: {e}")),
    }
    // The position the spool would resume from must still be on the server.
    let resume = match ferry_source::mysql::source::resume_position(config.spool.dir()) {
        Ok(p) => p,
        Err(e) => {
            r.error(format!(
                "the spool's resume position cannot be read ({e}), so whether the source still \
                 holds it is unknown"
            ));
            None
        }
    };
    // Another server behind the URL (a failover) is resumed by GTID, or not at all.
    let resume = match resume {
        Some(pos) => match failover_plan(config, &mut conn, &pos, r).await {
            Ok(ResumeBy::FilePos) => Some(pos),
            Ok(ResumeBy::Gtid) => None,
            Err(e) => {
                r.error(e.to_string());
                None
            }
        },
        None => None,
    };
    if let Some(pos) = resume {
        let names: Vec<String> = match conn.query::<mysql_async::Row, _>("SHOW BINARY LOGS").await {
            Ok(logs) => logs.iter().filter_map(|l| l.get(0)).collect(),
            Err(e) => {
                r.error(format!(
                    "SHOW BINARY LOGS failed ({e}): whether binlog {} (the spool's resume \
                     position) is still on the server cannot be checked; grant the account \
                     REPLICATION CLIENT (MariaDB: BINLOG MONITOR)",
                    pos.file
                ));
                return Ok(Vec::new());
            }
        };
        if names.contains(&pos.file) {
            r.ok(format!(
                "binlog {} (the spool's resume position) is on the server",
                pos.file
            ));
        } else {
            r.error(format!(
                "binlog {} (the spool's resume position) is no longer on the server: it was \
                 purged; take a new snapshot with a new spool directory",
                pos.file
            ));
        }
    }
    let rows: Vec<(String, String, i64)> = conn
        .query(
            "SELECT t.TABLE_SCHEMA, t.TABLE_NAME, \
               (SELECT COUNT(*) FROM information_schema.TABLE_CONSTRAINTS c \
                WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
                  AND c.CONSTRAINT_TYPE = 'PRIMARY KEY') \
             FROM information_schema.TABLES t WHERE t.TABLE_TYPE = 'BASE TABLE' \
               AND t.TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys', 'ferry') \
             ORDER BY 1, 2",
        )
        .await?;
    let mut tables = Vec::new();
    for (db, t, pk) in rows {
        if !settings.filter.accepts(&db, &t) {
            continue;
        }
        if pk == 0 {
            r.warn(format!(
                "{db}.{t} has no primary key: replicas apply its updates and deletes by matching \
                 whole rows, slowly"
            ));
        }
        tables.push((db, t, pk > 0));
    }
    if tables.is_empty() {
        r.warn("no table matches source.tables and source.exclude: nothing would be captured");
    } else {
        r.ok(format!("{} table(s) to capture", tables.len()));
    }
    Ok(tables)
}

/// How `run` would resume on the server behind the URL: at the spool's `file:position` on the
/// server that wrote it, else by GTID, which needs the server to have every transaction the
/// spool holds.
async fn failover_plan(
    config: &Config,
    conn: &mut mysql_async::Conn,
    pos: &ferry_proto::BinlogPos,
    r: &mut Report,
) -> Result<ResumeBy> {
    use ferry_source::mysql::server;
    let now = server::server_identity(conn).await?;
    let (_, by) = server::resume_plan(config.spool.dir(), &now, Some(pos))?;
    if by == ResumeBy::Gtid
        && let Some(gtids) = &pos.gtids
    {
        match server::gtids_missing(conn, gtids).await? {
            None => r.ok(format!(
                "the source is another server ({now}) than the one the spool was read from: \
                 ferry resumes by GTID after {gtids}, which it has"
            )),
            Some(missing) => r.error(format!(
                "position lost: the source is another server ({now}) than the one the spool \
                 was read from, and it lacks transactions ferry already read ({missing}): it was behind when \
                 it took over, so they are lost on it. Point ferry back at the old primary, or \
                 rebuild the replicas from this server"
            )),
        }
    }
    Ok(by)
}

async fn check_postgres_sink(c: &ferry_sink::db::DbSinkConfig, tables: &Tables, r: &mut Report) {
    let what = format!("sink {}", c.name);
    let Some((client, _task)) = reach(r, &what, tls::Tls::connect_url(&c.url, "check sink")).await
    else {
        return;
    };
    r.ok(format!("sink {}: reachable", c.name));
    let can_write = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')
                 OR (to_regclass('ferry.checkpoints') IS NOT NULL
                     AND has_table_privilege('ferry.checkpoints', 'INSERT, UPDATE'))",
            &[],
        )
        .await
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false);
    if !can_write {
        r.error(format!(
            "sink {}: the role may not create the ferry schema for its checkpoint table: GRANT \
             CREATE ON DATABASE <db> TO <user>, or create ferry.checkpoints for it",
            c.name
        ));
    }
    for (schema, table, _) in tables {
        let name = format!(
            "{}.{}",
            ferry_db::postgres::quote_ident(schema),
            ferry_db::postgres::quote_ident(table)
        );
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false);
        if !exists && !c.create_tables {
            r.error(format!(
                "sink {}: target table {schema}.{table} does not exist: create it, or set \
                 create_tables = true",
                c.name
            ));
        }
    }
}

async fn check_mysql_sink(c: &ferry_sink::db::DbSinkConfig, tables: &Tables, r: &mut Report) {
    let opts = match ferry_db::mysql::opts_from_url(&c.url) {
        Ok(o) => o,
        Err(e) => {
            r.error(format!("sink {}: url: {e}", c.name));
            return;
        }
    };
    let what = format!("sink {}", c.name);
    let Some(mut conn) = reach(r, &what, ferry_db::mysql::connect(opts)).await else {
        return;
    };
    r.ok(format!("sink {}: reachable", c.name));
    let grants: Vec<String> = match conn.query("SHOW GRANTS").await {
        Ok(g) => g,
        Err(e) => {
            r.error(format!(
                "sink {}: SHOW GRANTS failed ({e}): the account's privileges cannot be checked",
                c.name
            ));
            return;
        }
    };
    let all = grants.join(" ").to_ascii_uppercase();
    let has = |p: &str| all.contains("ALL PRIVILEGES") || all.contains(p);
    for p in ["INSERT", "UPDATE", "DELETE", "CREATE"] {
        if !has(p) {
            r.error(format!(
                "sink {}: the account may lack {p} (for rows and the ferry.checkpoints table): \
                 GRANT {p} ON *.* TO <user>",
                c.name
            ));
        }
    }
    for (db, table, _) in tables {
        let n: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, table),
            )
            .await
            .unwrap_or(None);
        if n.unwrap_or(0) == 0 && !c.create_tables {
            r.error(format!(
                "sink {}: target table {db}.{table} does not exist: create it, or set \
                 create_tables = true",
                c.name
            ));
        }
    }
}

async fn check_kafka_sink(c: &KafkaSinkConfig, tables: &Tables, r: &mut Report) {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.brokers);
    for (k, v) in &c.properties {
        if !k.starts_with("transaction")
            && !k.starts_with("enable.idempotence")
            && !k.starts_with("acks")
        {
            cc.set(k, v);
        }
    }
    let consumer: BaseConsumer = match cc.create() {
        Ok(x) => x,
        Err(e) => {
            r.error(format!("sink {}: kafka client: {e}", c.name));
            return;
        }
    };
    let metadata = match tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(None, Duration::from_secs(10))
    })
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            r.unreachable(format!(
                "sink {}: brokers {} unreachable: {e}",
                c.name, c.brokers
            ));
            return;
        }
        Err(e) => {
            r.error(format!("sink {}: {e}", c.name));
            return;
        }
    };
    r.ok(format!("sink {}: brokers {} reachable", c.name, c.brokers));
    let existing: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    let mut wanted: Vec<String> = tables
        .iter()
        .map(|(s, t, _)| ferry_sink::kafka::topic_name(c, s, t))
        .collect();
    if c.exactly_once {
        wanted.push(c.checkpoint_topic.clone());
    }
    wanted.extend(c.transaction_topic.clone());
    wanted.extend(c.dead_letter_topic.clone());
    wanted.sort();
    wanted.dedup();
    let missing: Vec<&String> = wanted.iter().filter(|t| !existing.contains(t)).collect();
    if missing.is_empty() {
        return;
    }
    let auto = match broker_auto_create(&cc, metadata.brokers().first().map(|b| b.id())).await {
        Some(a) => a,
        None => {
            r.warn(format!(
                "sink {}: topics {} do not exist and the broker's auto.create.topics.enable \
                 could not be read",
                c.name,
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return;
        }
    };
    for t in missing {
        if auto {
            r.ok(format!(
                "sink {}: topic {t} will be created by the broker",
                c.name
            ));
        } else {
            r.error(format!(
                "sink {}: topic {t} does not exist and the broker does not create topics \
                 (auto.create.topics.enable = false): create it",
                c.name
            ));
        }
    }
}

/// The broker's `auto.create.topics.enable`, if it can be read.
async fn broker_auto_create(cc: &ClientConfig, broker: Option<i32>) -> Option<bool> {
    let admin: AdminClient<DefaultClientContext> = cc.create().ok()?;
    let results = admin
        .describe_configs(
            &[ResourceSpecifier::Broker(broker?)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    let entry = resource.get("auto.create.topics.enable")?;
    entry.value.as_deref().map(|v| v == "true")
}
