//! `ferry run`: opens the spool, starts the source (and, as they are built, the sink workers), and
//! stops them in dependency order when the shutdown signal comes.

use ferry_spool::{SpoolWriter, WriterOptions};
use tokio::sync::watch;

use crate::config::{Config, SnapshotMode, SourceKind};
use crate::error::{Error, Result};
use crate::filter::TableFilter;
use crate::postgres::replication::ConnParams;
use crate::postgres::{PgSource, SourceSettings};

/// Builds the Postgres source settings from the configuration.
pub fn pg_settings(config: &Config) -> Result<SourceSettings> {
    let src = &config.source;
    let filter = TableFilter::new(
        src.tables.iter().map(|t| t.as_str()),
        src.exclude.iter().map(|t| t.as_str()),
    )
    .map_err(|e| Error::Config(format!("source.tables: {e}")))?;
    Ok(SourceSettings {
        params: ConnParams::parse(src.url.expose())?,
        slot: src.slot().to_owned(),
        publication: src.publication().to_owned(),
        filter,
        snapshot: src.snapshot == SnapshotMode::Initial,
        snapshot_workers: src.snapshot_workers(),
        txn_memory: src.txn_memory_bytes(),
        until: None,
    })
}

/// Runs until `shutdown` turns true or a permanent error occurs.
/// With `until`, stops cleanly once the source has spooled everything committed before it.
pub async fn run(
    config: Config,
    until: Option<ferry_proto::Lsn>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    if config.source.kind == SourceKind::Mysql {
        return Err(Error::Fatal(
            "the mysql source is not built yet; only type = \"postgres\" runs".into(),
        ));
    }
    if !config.sinks.is_empty() {
        return Err(Error::Fatal(format!(
            "sink workers are not built yet, and with {} sink(s) configured nothing would consume \
             the spool; remove the [[sink]] tables to capture into the spool only",
            config.sinks.len()
        )));
    }
    let mut settings = pg_settings(&config)?;
    settings.until = until.map(|l| l.0);
    let opts = WriterOptions {
        segment_bytes: u64::from(config.spool.segment_mb.unwrap_or(64)) << 20,
    };
    let (spool, recovery) = SpoolWriter::open(config.spool.dir(), opts)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "spool recovered from an interrupted write"
        );
    }
    tracing::info!(
        spool = %config.spool.dir().display(),
        source = %config.source.url,
        slot = %settings.slot,
        "ferry starting: capturing into the spool (no sinks configured)"
    );
    let mut source = PgSource::new(settings, spool)?;
    source.run(shutdown).await
}
