//! Tables PostgreSQL cannot publish updates and deletes of: no primary key and `REPLICA
//! IDENTITY DEFAULT`, or `REPLICA IDENTITY NOTHING`. Once such a table is in a publication that
//! publishes updates and deletes, the application's own `UPDATE` and `DELETE` on it fail ("cannot
//! update table … because it does not have a replica identity and publishes updates"). Attaching
//! ferry must never do that, so the source's `keyless` setting decides, before anything is
//! created on the source, and a table created later without an identity is caught when the
//! stream first shows it.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// What the source does about a captured table without a replica identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keyless {
    /// Refuse to start (and `check` reports an error), naming the tables and the choices.
    #[default]
    Error,
    /// Set `REPLICA IDENTITY FULL` on them (needs the table's owner; under a short lock timeout).
    Full,
    /// Leave them out of the publication ferry creates (which then lists its tables).
    Exclude,
    /// Publish them anyway: their updates and deletes fail on the source (insert-only tables).
    Allow,
}

/// A captured table without a replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessTable {
    pub schema: String,
    pub name: String,
    /// `REPLICA IDENTITY NOTHING` (else: DEFAULT without a primary key).
    pub nothing: bool,
}

impl std::fmt::Display for KeylessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} ({})",
            self.schema,
            self.name,
            if self.nothing {
                "REPLICA IDENTITY NOTHING"
            } else {
                "no primary key"
            }
        )
    }
}

/// The tables `filter` captures that have no replica identity.
pub async fn find(client: &Client, filter: &TableFilter) -> Result<Vec<KeylessTable>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident = 'n'
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry')
               AND n.nspname NOT LIKE 'pg_toast%'
               AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
                     SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeylessTable {
            schema: r.get(0),
            name: r.get(1),
            nothing: r.get(2),
        })
        .filter(|t| filter.accepts(&t.schema, &t.name))
        .collect())
}

/// The refusal for `tables` under `keyless = "error"`.
pub fn refusal(tables: &[KeylessTable]) -> String {
    let list: Vec<String> = tables.iter().map(ToString::to_string).collect();
    format!(
        "{} captured table(s) have no replica identity: {}. Once published, the application's \
         UPDATE and DELETE on them would fail on the source, so ferry creates nothing. Choose: \
         add a primary key (or ALTER TABLE … REPLICA IDENTITY FULL) yourself; or set [source] \
         keyless = \"full\" (ferry sets REPLICA IDENTITY FULL; needs the tables' owner), \
         \"exclude\" (ferry leaves them out of its publication) or \"allow\" (publish them \
         anyway: insert-only tables)",
        tables.len(),
        list.join(", ")
    )
}

/// Sets `REPLICA IDENTITY FULL` on each table, waiting at most 2 s for its lock each, so an
/// application holding the table is never queued behind ferry for long.
/// How many times `keyless = "full"` tries to take a table's lock (2 s each) before giving up.
const LOCK_ATTEMPTS: u32 = 20;

pub async fn make_full(client: &Client, tables: &[KeylessTable]) -> Result<()> {
    for t in tables {
        let name = format!(
            "{}.{}",
            super::slot::quote_ident(&t.schema),
            super::slot::quote_ident(&t.name)
        );
        let sql = format!(
            "SET lock_timeout = '2s'; ALTER TABLE {name} REPLICA IDENTITY FULL; RESET lock_timeout"
        );
        // Another session holding the table's lock (autovacuum, a long transaction) makes the
        // ALTER give up after 2 s, so that it never queues the application behind it for long;
        // it is tried again, since a table published without an identity fails the
        // application's updates and deletes until it is done.
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match client.batch_execute(&sql).await {
                // A lock timeout, a deadlock or a serialization failure: tried again.
                Err(e)
                    if attempt < LOCK_ATTEMPTS
                        && e.code().is_some_and(|c| {
                            ferry_db::transient::is_transient_sqlstate(c.code())
                        }) =>
                {
                    let _ = client.batch_execute("RESET lock_timeout").await;
                    tracing::warn!(table = %t, attempt, error = %ferry_db::postgres::describe(&e), "keyless = \"full\": the table's lock is not available; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            let _ = client.batch_execute("RESET lock_timeout").await;
            return Err(Error::Config(format!(
                "keyless = \"full\": setting REPLICA IDENTITY FULL on {t} failed: {}. It needs \
                 the table's owner and its lock (ferry waits 2 s); run `ALTER TABLE {name} \
                 REPLICA IDENTITY FULL` as the owner, or choose keyless = \"exclude\"",
                ferry_db::postgres::describe(&e)
            )));
        }
        tracing::warn!(table = %format!("{}.{}", t.schema, t.name), "keyless = \"full\": set REPLICA IDENTITY FULL on a table without a primary key, so the application's updates and deletes keep working once it is published");
    }
    Ok(())
}
