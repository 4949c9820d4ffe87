//! `ferry promote --reverse FILE`: after a switchover, a configuration that replicates the
//! promoted replica (now the primary) back into the old primary, so that a fallback finds the
//! old primary current.
//!
//! The reverse stream must start exactly where the promoted replica stood when it took over:
//! the old primary already has everything before, and nothing the application writes after may
//! be missed. So its start is fixed here, before the application moves: on PostgreSQL a slot
//! (and a publication) on the new primary; on MySQL/MariaDB a new spool holding the new
//! primary's binlog position (and GTIDs). The configuration then starts there with
//! `snapshot = "never"`. The
//! secrets of the original configuration stay references (`${VAR}`, `${file:…}`): its URLs are
//! copied as written, not as expanded.

use std::fmt::Write as _;
use std::path::Path;

use ferry_source::error::{Error, Result};

use crate::config::{Config, SinkConfig, SinkKind, SourceKind};

/// The slot and publication the reverse configuration streams from (PostgreSQL).
pub const REVERSE_SLOT: &str = "ferry_reverse";
/// The replica id of the reverse stream from a MySQL/MariaDB new primary when the forward
/// source had none (it was PostgreSQL).
const REVERSE_SERVER_ID: u32 = 4_242_001;

/// The original configuration's values as written (before `${…}` expansion).
struct Raw {
    source_url: String,
    sink_url: String,
    tables: Option<toml::Value>,
    exclude: Option<toml::Value>,
    keyless: Option<toml::Value>,
}

fn raw(config_path: &Path, sink_index: usize) -> Result<Raw> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Error::io(format!("read {}", config_path.display()), e))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", config_path.display())))?;
    let source = table.get("source").and_then(|s| s.as_table());
    let get = |t: Option<&toml::Table>, k: &str| t.and_then(|t| t.get(k)).cloned();
    let sink = table
        .get("sink")
        .and_then(|s| s.as_array())
        .and_then(|a| a.get(sink_index))
        .and_then(|s| s.as_table());
    let text_of = |v: Option<toml::Value>, what: &str| match v {
        Some(toml::Value::String(s)) => Ok(s),
        _ => Err(Error::Config(format!(
            "{}: no {what}",
            config_path.display()
        ))),
    };
    Ok(Raw {
        source_url: text_of(get(source, "url"), "[source] url")?,
        sink_url: text_of(get(sink, "url"), "url of the promoted sink")?,
        tables: get(source, "tables"),
        exclude: get(source, "exclude"),
        keyless: get(source, "keyless"),
    })
}

/// A PostgreSQL new primary: a publication of the same tables (never ferry's own bookkeeping)
/// and a slot that holds its position from now on. The `[source]` lines that use them.
async fn start_slot(config: &Config, target: &SinkConfig, out: &mut String) -> Result<String> {
    let (client, _task) =
        ferry_db::postgres::tls::Tls::connect_url(&target.url_exposed(), "ferry promote").await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let src = &config.source;
    let filter = ferry_source::filter::TableFilter::new(
        src.tables.iter().map(|t| t.as_str()),
        src.exclude.iter().map(|t| t.as_str()).chain(["ferry.*"]),
    )
    .map_err(Error::Config)?;
    ferry_source::postgres::slot::ensure_publication(&client, REVERSE_SLOT, &filter, version, &[])
        .await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&REVERSE_SLOT],
        )
        .await?
        .is_some();
    if !exists {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&REVERSE_SLOT],
            )
            .await?;
    }
    let at: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&REVERSE_SLOT],
        )
        .await?
        .get(0);
    let _ = writeln!(
        out,
        "reverse: slot {REVERSE_SLOT:?} on sink {} starts at {at}; it holds the new primary's \
         WAL until the reverse ferry runs",
        target.name.as_str()
    );

    Ok(format!(
        "type = \"postgres\"\nslot = \"{REVERSE_SLOT}\"\npublication = \"{REVERSE_SLOT}\"\n"
    ))
}

/// A MySQL/MariaDB new primary: a new spool that starts at its binlog position now. The
/// `[source]` lines that use it (a `server_id`: the forward source's, else one to change if
/// `ferry check` finds it taken).
async fn start_spool(
    config: &Config,
    target: &SinkConfig,
    spool: &Path,
    out: &mut String,
) -> Result<String> {
    let mut conn = crate::verify::mysql::connect(&target.url_exposed()).await?;
    let at = ferry_source::mysql::server::start_spool_here(&mut conn, spool).await?;
    let _ = writeln!(
        out,
        "reverse: spool {} starts at sink {}'s position {at}",
        spool.display(),
        target.name.as_str()
    );
    let server_id = config.source.server_id.unwrap_or(REVERSE_SERVER_ID);
    Ok(format!("type = \"mysql\"\nserver_id = {server_id}\n"))
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string or an array of strings (all `tables`, `exclude` and `keyless` can be) as TOML.
fn value_text(key: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(quoted(s)),
        toml::Value::Array(a) => {
            let items: Result<Vec<String>> = a.iter().map(|i| value_text(key, i)).collect();
            Ok(format!("[{}]", items?.join(", ")))
        }
        _ => Err(Error::Config(format!(
            "[source] {key} is not a string or a list of them"
        ))),
    }
}

/// A PostgreSQL URL whose sessions are not read-only by default: the old primary keeps the
/// fence's `default_transaction_read_only = on` for everyone else.
fn read_write_url(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20default_transaction_read_only%3Doff")
}

/// Prepares the new primary (publication and slot), re-opens a fenced PostgreSQL old primary to
/// connections (read-only by default), and writes the reverse configuration to `out_path`.
pub async fn write(
    config: &Config,
    config_path: &Path,
    target: &SinkConfig,
    fenced_session: Option<&tokio_postgres::Client>,
    out_path: &Path,
    out: &mut String,
) -> Result<()> {
    let index = config
        .sinks
        .iter()
        .position(|s| std::ptr::eq(s.get_ref(), target))
        .ok_or_else(|| Error::Fatal("the promoted sink is not in the configuration".into()))?;
    let raw = raw(config_path, index)?;

    let spool = config.spool.dir().with_file_name(format!(
        "{}-reverse",
        config
            .spool
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spool".into())
    ));
    let source_lines = match target.kind {
        SinkKind::Postgres => start_slot(config, target, out).await?,
        _ => start_spool(config, target, &spool, out).await?,
    };

    // The old primary takes the reverse sink's writes.
    let sink_url = match (config.source.kind, fenced_session) {
        (SourceKind::Postgres, Some(session)) => {
            let db: String = session
                .query_one("SELECT current_database()", &[])
                .await?
                .get(0);
            let quoted = ferry_db::postgres::quote_ident(&db);
            session
                .batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS true"))
                .await?;
            let _ = writeln!(
                out,
                "reverse: database {db} accepts connections again, read-only by default (the \
                 reverse sink's sessions turn that off); the application must use the new \
                 primary"
            );
            read_write_url(&raw.source_url)
        }
        (SourceKind::Postgres, None) => read_write_url(&raw.source_url),
        // MySQL/MariaDB keeps read_only: the reverse sink's account must bypass it (MariaDB:
        // READ ONLY ADMIN; MySQL: super_read_only off, and CONNECTION_ADMIN or SUPER).
        (SourceKind::Mysql, _) => raw.source_url.clone(),
    };
    let sink_type = match config.source.kind {
        SourceKind::Postgres => "postgres",
        SourceKind::Mysql => "mysql",
    };
    let mut text = format!(
        "# Written by `ferry promote --reverse`: replicates sink {:?} (promoted, now the \
         primary)\n# back into the old primary, so that a fallback finds it current. Stop the \
         forward ferry,\n# then run `ferry check` and `ferry run` with this file.\n\n\
         [source]\n{source_lines}url = {}\n# Its start was fixed at the switchover: the old \
         primary has everything before it.\nsnapshot = \"never\"\n",
        target.name.as_str(),
        quoted(&raw.sink_url)
    );
    for (key, value) in [("tables", &raw.tables), ("keyless", &raw.keyless)] {
        if let Some(v) = value {
            let _ = writeln!(text, "{key} = {}", value_text(key, v)?);
        }
    }
    let mut exclude: Vec<toml::Value> = match &raw.exclude {
        Some(toml::Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    exclude.push(toml::Value::String("ferry.*".into()));
    let _ = writeln!(
        text,
        "exclude = {}",
        value_text("exclude", &toml::Value::Array(exclude))?
    );
    let _ = write!(
        text,
        "\n[spool]\ndir = {}\n\n[[sink]]\nname = \"old-primary\"\ntype = \"{sink_type}\"\n\
         url = {}\n",
        quoted(&spool.display().to_string()),
        quoted(&sink_url)
    );
    // Parsed before it is written: a file `ferry run` would refuse is never left behind.
    Config::parse(&text, &out_path.display().to_string())
        .map_err(|e| Error::Fatal(format!("the reverse configuration does not parse: {e}")))?;
    std::fs::write(out_path, text)
        .map_err(|e| Error::io(format!("write {}", out_path.display()), e))?;
    let _ = writeln!(out, "reverse: wrote {}", out_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_as_toml_reads_them() {
        for s in [
            "plain",
            "a\"b",
            "back\\slash",
            "tab\tnew\nline",
            "${SECRET}",
            "ü",
        ] {
            let text = format!("k = {}", quoted(s));
            let t: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(t["k"].as_str(), Some(s), "{text}");
        }
    }

    #[test]
    fn the_old_primary_url_turns_read_only_off() {
        assert_eq!(
            read_write_url("postgres://u@h/db"),
            "postgres://u@h/db?options=-c%20default_transaction_read_only%3Doff"
        );
        assert_eq!(
            read_write_url("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require&options=-c%20default_transaction_read_only%3Doff"
        );
        let (cfg, _) =
            ferry_db::postgres::tls::parse_url(&read_write_url("postgres://u@h/db")).unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c default_transaction_read_only=off")
        );
    }
}
