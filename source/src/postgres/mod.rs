//! The PostgreSQL source: ferry's own replication connection, the pgoutput decoder, value
//! conversion, slot and publication management, the initial snapshot, and the streaming loop.

use crate::capture::prerequisite::Prerequisite;

pub mod catalog;
pub mod ddl;
pub mod keyless;
pub mod pgoutput;
pub mod replication;
pub mod schema_change;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod table_def;
pub mod types;

pub use source::{PgSource, SourceSettings};

/// What the source server must offer: PostgreSQL 11 or later, `wal_level = logical`, a UTF8
/// database, and a role that may replicate. Returns the server's version number with them.
pub async fn prerequisites(
    client: &tokio_postgres::Client,
    dbname: &str,
) -> crate::error::Result<(i32, Vec<Prerequisite>)> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),
                    current_setting('server_encoding'), r.rolsuper OR r.rolreplication
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let (version, wal_level, encoding, may_replicate): (i32, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut found = vec![if version < 110_000 {
        Prerequisite::unmet(unsupported_version(version))
    } else {
        Prerequisite::met(format!("PostgreSQL {}", version / 10_000))
    }];
    found.push(if wal_level == "logical" {
        Prerequisite::met("wal_level = logical".into())
    } else {
        Prerequisite::unmet(format!(
            "wal_level is {wal_level}: set wal_level = logical in postgresql.conf and restart \
             the server"
        ))
    });
    found.push(if encoding == "UTF8" {
        Prerequisite::met(format!("database {dbname:?} is UTF8"))
    } else {
        Prerequisite::unmet(format!(
            "database {dbname:?} uses encoding {encoding}; ferry captures UTF8 databases only"
        ))
    });
    found.push(if may_replicate {
        Prerequisite::met("the role may replicate".into())
    } else {
        Prerequisite::unmet(
            "the role has neither REPLICATION nor superuser: ALTER ROLE <user> REPLICATION \
             (as a superuser)"
                .into(),
        )
    });
    Ok((version, found))
}

/// Why a server older than PostgreSQL 11 is refused: before 10 there is no pgoutput, and 10's
/// logical replication does not carry TRUNCATE, so a replica would quietly keep rows the source
/// removed.
pub fn unsupported_version(version_num: i32) -> String {
    format!(
        "PostgreSQL {}.{} is not supported: ferry needs PostgreSQL 11 or later (before 11, \
         logical replication does not carry TRUNCATE, so replicas would keep rows the source \
         removed)",
        version_num / 10_000,
        version_num % 10_000
    )
}
