//! `ferry ddl-trigger install`: puts ferry's DDL trigger on the configured PostgreSQL source.

use ferry_source::error::{Error, Result};

/// Installs the trigger on the configured PostgreSQL source.
pub async fn install_for(config: &crate::config::Config) -> Result<()> {
    if config.source.kind != crate::config::SourceKind::Postgres {
        return Err(Error::Config(
            "the DDL trigger is for a PostgreSQL source; a MySQL/MariaDB source's DDL is read \
             from the binlog"
                .into(),
        ));
    }
    let (cfg, tls) = ferry_db::postgres::parse_url(config.source.url.expose())?;
    let (client, _task) = tls.connect_client(&cfg, "ddl trigger").await?;
    ferry_source::postgres::ddl::install(&client).await
}
