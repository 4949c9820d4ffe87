//! `ferry restore` and `ferry backup list|verify`: the archive read back. A restore writes the
//! archived transactions up to its target into a private spool and applies it with the same
//! sink worker and database destination `ferry run` uses, into an empty database (tables
//! created from the source's definitions), so a restore is exactly as faithful as a replica.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry_archive::Archive;
use ferry_archive::restore::{self, Target};
use ferry_proto::Position;
use ferry_sink::db::DbSinkConfig;
use ferry_source::error::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub(crate) fn archive_of(config: &Config) -> Result<Archive> {
    let Some(a) = &config.archive else {
        return Err(Error::Config(
            "the configuration has no [archive]: nothing to restore from".into(),
        ));
    };
    Archive::open(&a.settings().map_err(archive_error)?).map_err(archive_error)
}

pub(crate) fn archive_error(e: ferry_archive::ArchiveError) -> Error {
    if e.is_transient() {
        Error::io("archive", std::io::Error::other(e.to_string()))
    } else {
        Error::Fatal(e.to_string())
    }
}

/// `--to`: `latest`, a position, or a time.
pub fn parse_target(text: &str) -> Result<Target> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(Target::Latest);
    }
    if let Ok(p) = text.parse::<Position>() {
        return Ok(Target::Position(p));
    }
    parse_time(text).map(Target::Time).ok_or_else(|| {
        Error::Config(format!(
            "--to {text:?}: expected `latest`, a time such as 2026-12-03T14:05:00Z (a zone is \
             required: Z or ±HH:MM), or a position such as pg:0/16B3748"
        ))
    })
}

/// An RFC 3339 time (`T` or a space between date and time, optional fraction, `Z` or
/// `±HH:MM`) as microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let mut padded: String = digits.chars().take(6).collect();
        while padded.len() < 6 {
            padded.push('0');
        }
        micros = padded.parse().ok()?;
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if zone.as_bytes()[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // A day the month does not have (2026-02-30) is refused, not carried into the next month.
    let days = ferry_proto::civil::days_from_civil(year, month as u32, day as u32)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// A time for people: UTC, to the microsecond.
pub fn format_time(micros: i64) -> String {
    let (y, m, d, h, min, s, us) = ferry_proto::civil::utc(micros);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{us:06}Z")
}

/// `ferry restore`: returns the report it prints.
pub async fn restore(
    config: &Config,
    to: &str,
    into: &str,
    tables: &[String],
    dry_run: bool,
) -> Result<String> {
    let target = parse_target(to)?;
    let archive = archive_of(config)?;
    let mut out = String::new();
    let plan = restore::plan(&archive, &target)
        .await
        .map_err(archive_error)?;
    if dry_run {
        if let Some(b) = &plan.base {
            let _ = writeln!(out, "{}", describe_base(b));
            for c in &b.chunks {
                let _ = writeln!(out, "{}  {} bytes", c.object, c.bytes);
            }
        }
        for m in &plan.log {
            let _ = writeln!(out, "{}", describe(m));
        }
        let _ = writeln!(out, "{} object(s) to read", plan.objects().len());
        return Ok(out);
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "ferry-restore-{}-{}",
        std::process::id(),
        started.elapsed().as_nanos()
    ));
    let wanted: Vec<(String, String)> = tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some((s, n)) => Ok((s.to_owned(), n.to_owned())),
            None => Err(Error::Config(format!("--tables {t:?}: write schema.table"))),
        })
        .collect::<Result<_>>()?;
    let filter = move |schema: &str, name: &str| {
        wanted.is_empty() || wanted.iter().any(|(s, n)| s == schema && n == name)
    };
    let result = async {
        let terminal = ferry_source::postgres::source::stderr_is_terminal();
        let show = |done: usize, planned: usize| {
            if terminal {
                eprint!("\r\x1b[2Krestore: reading the archive, {done}/{planned} object(s)");
            }
        };
        let (stopped, durable) = restore::to_spool(&archive, &plan, &target, &filter, &dir, &show)
            .await
            .map_err(archive_error)?;
        if terminal {
            eprintln!();
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            objects = stopped.objects.len(),
            "restore: the archive is read into the private spool; applying it"
        );
        refuse_existing(into, &stopped.tables).await?;
        apply(into, &dir, durable, stopped.changes).await?;
        Ok::<_, Error>(stopped)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let stopped = result?;
    let Some(position) = &stopped.position else {
        return Err(Error::Config(
            "no archived transaction is at or before the target: nothing restored".into(),
        ));
    };
    let _ = writeln!(
        out,
        "restored {} transaction(s), {} row change(s) from {} object(s) in {:.1} s",
        stopped.transactions,
        stopped.changes,
        stopped.objects.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "stopped at {position} (committed {}, transaction {})",
        stopped.commit_time.map_or("-".into(), format_time),
        stopped.xid.map_or("-".into(), |x| x.to_string())
    );
    Ok(out)
}

/// A restore rebuilds an empty database: a table it would restore that already exists there is
/// refused before anything is written (restoring over live tables would mix two states).
async fn refuse_existing(into: &str, tables: &[(String, String)]) -> Result<()> {
    let mut found = Vec::new();
    if into.starts_with("mysql://") {
        use mysql_async::prelude::Queryable;
        let mut conn = crate::verify::mysql::connect(into).await?;
        for (schema, name) in tables {
            let n: Option<i64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.tables \
                     WHERE table_schema = ? AND table_name = ?",
                    (schema, name),
                )
                .await?;
            if n.unwrap_or(0) > 0 {
                found.push(format!("{schema}.{name}"));
            }
        }
        let _ = conn.disconnect().await;
    } else if into.starts_with("postgres://") || into.starts_with("postgresql://") {
        let (client, _task) = ferry_db::postgres::tls::Tls::connect_url(into, "restore").await?;
        for (schema, name) in tables {
            let row = client
                .query_one(
                    "SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL",
                    &[schema, name],
                )
                .await?;
            if row.get::<_, bool>(0) {
                found.push(format!("{schema}.{name}"));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--into {} already holds {}: a restore rebuilds an empty database; restore into a new \
         one (or choose --tables) and copy back what you need",
        ferry_db::redact::redact(into),
        found.join(", ")
    )))
}

/// Applies a restore's spool to the database at `into` with the sink worker (`changes` of
/// them, for the progress shown on a terminal).
async fn apply(
    into: &str,
    dir: &std::path::Path,
    durable: tokio::sync::watch::Receiver<ferry_spool::Offset>,
    changes: u64,
) -> Result<()> {
    let cfg = DbSinkConfig {
        name: "restore".into(),
        url: into.to_owned(),
        on_error: ferry_sink::OnError::Halt,
        schema_changes: Default::default(),
        create_tables: true,
        zero_dates: Default::default(),
        spool_dir: dir.to_owned(),
        max_batch_rows: 10_000,
        max_batch_delay: Duration::from_millis(500),
    };
    let stop = CancellationToken::new();
    let result = if into.starts_with("mysql://") {
        let (sink, progress) = ferry_sink::mysql::MySink::new(cfg);
        let shown = show_applied(progress, changes);
        let result = sink.run(durable, stop).await;
        shown.abort();
        result
    } else if into.starts_with("postgres://") || into.starts_with("postgresql://") {
        ferry_db::postgres::parse_url(into)?;
        let (sink, progress) = ferry_sink::postgres::PgSink::new(cfg);
        let shown = show_applied(progress, changes);
        let result = sink.run(durable, stop).await;
        shown.abort();
        result
    } else {
        return Err(Error::Config(format!(
            "--into {}: expected a postgres:// or mysql:// URL",
            ferry_db::redact::redact(into)
        )));
    };
    if ferry_source::postgres::source::stderr_is_terminal() {
        eprintln!();
    }
    result.map_err(|e| Error::Fatal(format!("restoring into the database: {e}")))
}

/// On a terminal, the rows applied so far, twice a second.
fn show_applied(
    mut progress: tokio::sync::watch::Receiver<ferry_sink::postgres::SinkProgress>,
    changes: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !ferry_source::postgres::source::stderr_is_terminal() {
            return;
        }
        loop {
            let rows = progress.borrow_and_update().rows;
            eprint!("\r\x1b[2Krestore: applying, {rows}/{changes} row change(s)");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// One object, for people: name, transactions, positions, commit times, size.
fn describe(m: &ferry_archive::object::Manifest) -> String {
    format!(
        "{}  {} transaction(s)  {} .. {}  {} .. {}  {} bytes{}",
        m.object,
        m.transactions,
        m.first_position,
        m.last_position,
        format_time(m.first_commit_time),
        format_time(m.last_commit_time),
        m.bytes,
        if m.encrypted { "  encrypted" } else { "" }
    )
}

/// One base backup, for people.
fn describe_base(b: &ferry_archive::base::BaseManifest) -> String {
    format!(
        "base {}  at {}  snapshot {}  {} table(s)  {} row(s)  {} chunk(s)  {} bytes{}",
        b.id,
        b.position,
        format_time(b.snapshot_time),
        b.tables.len(),
        b.rows,
        b.chunks.len(),
        b.bytes,
        if b.encrypted { "  encrypted" } else { "" }
    )
}

/// `ferry backup list`: the log's objects, the base backups, and the time ranges each restore
/// point can reach.
pub async fn list(config: &Config) -> Result<String> {
    let archive = archive_of(config)?;
    let manifests = archive.manifests().await.map_err(archive_error)?;
    let bases = archive.base_manifests().await.map_err(archive_error)?;
    let mut out = String::new();
    for m in &manifests {
        let _ = writeln!(out, "{}", describe(m));
    }
    for b in &bases {
        let _ = writeln!(out, "{}", describe_base(b));
    }
    let end = manifests
        .last()
        .map(|m| (format_time(m.last_commit_time), m.last_position.clone()));
    if let (Some(first), Some((time, position))) = (manifests.first(), &end)
        && first.first_offset == 0
    {
        let _ = writeln!(
            out,
            "restorable from {} (the initial snapshot) to {time} ({position})",
            format_time(first.first_commit_time),
        );
    }
    for b in &bases {
        let _ = match (restore::log_start(&manifests, b), &end) {
            (Ok(_), Some((time, position))) => writeln!(
                out,
                "restorable from {} (base backup {}) to {time} ({position})",
                format_time(b.snapshot_time),
                b.id
            ),
            (Err(why), _) => writeln!(
                out,
                "base backup {} restores only to its own position {}: {why}",
                b.id, b.position
            ),
            (Ok(_), None) => Ok(()),
        };
    }
    if manifests.is_empty() && bases.is_empty() {
        let _ = writeln!(out, "the archive {} is empty", archive.url);
    } else if bases.is_empty() && manifests.first().is_some_and(|m| m.first_offset != 0) {
        let _ = writeln!(
            out,
            "not restorable: the archive begins at spool offset {}, after the initial snapshot, \
             and holds no base backup",
            manifests[0].first_offset
        );
    }
    Ok(out)
}

/// `ferry backup verify`: the report, and whether everything is sound.
pub async fn verify(config: &Config) -> Result<(String, bool)> {
    let archive = archive_of(config)?;
    let v = restore::verify(&archive).await.map_err(archive_error)?;
    let mut out = String::new();
    for p in &v.problems {
        let _ = writeln!(out, "error: {p}");
    }
    let _ = writeln!(
        out,
        "{} object(s), {} transaction(s), {} base backup(s) with {} row(s), {} bytes read: {}",
        v.objects,
        v.transactions,
        v.base_backups,
        v.rows,
        v.bytes,
        if v.problems.is_empty() {
            "every object is present, intact and decodes, and the chain is unbroken".to_owned()
        } else {
            format!("{} problem(s)", v.problems.len())
        }
    );
    Ok((out, v.problems.is_empty()))
}

/// `ferry backup now`: asks the running ferry for a base backup and waits until one that
/// started after the request has ended; its report, or the reason it failed.
pub fn now(config: &Config) -> Result<String> {
    let (code, body) = crate::control::request(config, "backup")?;
    if code != 202 {
        return Err(Error::Config(format!(
            "the running ferry answered {code}: {}",
            body.trim()
        )));
    }
    let answer: serde_json::Value = serde_json::from_str(body.trim())
        .map_err(|e| Error::Protocol(format!("ferry backup now: {e}: {body:?}")))?;
    let request = answer["request"].as_u64().unwrap_or(u64::MAX);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (code, body) = crate::control::http(config, "GET", "/status")?;
        if code != 200 && code != 503 {
            return Err(Error::Protocol(format!("/status answered {code}")));
        }
        let status: serde_json::Value = serde_json::from_str(body.trim())
            .map_err(|e| Error::Protocol(format!("/status: {e}")))?;
        let b = &status["base_backup"];
        if b["served"].as_u64().unwrap_or(0) < request {
            continue;
        }
        if let Some(e) = b["last_error"].as_str() {
            return Err(Error::Fatal(format!("the base backup failed: {e}")));
        }
        let last = &b["last"];
        return Ok(format!(
            "base backup {} stored: {} row(s), {} bytes, at {} (snapshot {})\n",
            last["id"].as_str().unwrap_or("?"),
            last["rows"],
            last["bytes"],
            last["position"].as_str().unwrap_or("?"),
            last["snapshot_time"]
                .as_i64()
                .map_or("?".into(), format_time)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc_3339() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-01 00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            parse_time("2026-12-03T15:00:00+01:00"),
            parse_time("2026-12-03T14:00:00Z")
        );
        assert_eq!(
            parse_time("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000)
        );
        for bad in [
            "2026-12-03T15:00:00",
            "2026-13-03T15:00:00Z",
            "yesterday",
            "2026-12-03T15:00:00.Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        let t = parse_time("2026-12-03T14:05:06.000007Z").unwrap();
        assert_eq!(format_time(t), "2026-12-03T14:05:06.000007Z");
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("latest").unwrap(), Target::Latest);
        assert!(matches!(
            parse_target("pg:0/16B3748").unwrap(),
            Target::Position(_)
        ));
        assert!(matches!(
            parse_target("2026-12-03T14:05:00Z").unwrap(),
            Target::Time(_)
        ));
        assert!(parse_target("soon").is_err());
    }
}
