//! What the MySQL/MariaDB source asks of its server outside the binlog stream: the settings it
//! needs (`prerequisites`, read by `ferry check` too), the binlog files and their sizes, the
//! current position, and how long binlogs are kept.

use std::time::{Duration, Instant};

use ferry_proto::{BinlogPos, Gtids};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::capture::prerequisite::Prerequisite;
use crate::error::{Error, Result};

/// The server's binlog position now (`SHOW MASTER STATUS`), with the GTIDs executed up to it
/// where the server has them.
pub async fn master_position(conn: &mut Conn) -> Result<BinlogPos> {
    let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
    let Some(row) = row else {
        return Err(Error::Config(
            "the source has no binary log: start it with log_bin (and binlog_format=ROW)".into(),
        ));
    };
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    let mut at = match (file, pos) {
        (Some(file), Some(pos)) => BinlogPos::new(file, pos),
        _ => {
            return Err(Error::Protocol(
                "SHOW MASTER STATUS without a file and position".into(),
            ));
        }
    };
    at.gtids = if is_mariadb(conn).await? {
        mariadb_gtids_at(conn, &at).await?
    } else {
        // MySQL prints the set executed at this position in the same row.
        let executed: Option<String> = row.get(4);
        mysql_gtids(conn, executed.as_deref()).await?
    };
    Ok(at)
}

/// Whether the server is MariaDB (its GTIDs are per-domain lists, not MySQL's sets).
pub async fn is_mariadb(conn: &mut Conn) -> Result<bool> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(version.is_some_and(|v| v.contains("MariaDB")))
}

/// The GTIDs a MariaDB server had executed at `pos` of its binlog (`BINLOG_GTID_POS`); `None`
/// when the server cannot say (the file purged, or not one of its binlogs).
pub async fn mariadb_gtids_at(conn: &mut Conn, pos: &BinlogPos) -> Result<Option<Gtids>> {
    let text: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (pos.file.as_str(), pos.pos))
        .await?;
    match text.flatten() {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(|l| Some(Gtids::MariaDb(l)))
            .map_err(|e| Error::Protocol(format!("BINLOG_GTID_POS({pos}) gave {t:?}: {e}"))),
    }
}

/// A MySQL server's executed GTID set (tags included) as `SHOW MASTER STATUS` printed it; `None`
/// when GTIDs are off: a failover is then "position lost", never a guess.
async fn mysql_gtids(conn: &mut Conn, executed: Option<&str>) -> Result<Option<Gtids>> {
    let mode: Option<String> = conn
        .query_first("SELECT @@global.gtid_mode")
        .await
        .unwrap_or(None);
    if !mode.is_some_and(|m| m.eq_ignore_ascii_case("ON")) {
        return Ok(None);
    }
    match executed.unwrap_or("").parse() {
        Ok(set) => Ok(Some(Gtids::MySql(set))),
        Err(e) => Err(Error::Protocol(format!(
            "the source's executed GTID set does not parse: {e}"
        ))),
    }
}

/// The server settings the binlog source needs, and a `server_id` no connected replica uses:
/// (satisfied, what was found or what to change).
pub async fn prerequisites(conn: &mut Conn, server_id: u32) -> Result<Vec<Prerequisite>> {
    let vars: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'server_id')",
        )
        .await?;
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.to_ascii_uppercase())
    };
    let want = [
        ("log_bin", "ON", "start the server with log_bin"),
        ("binlog_format", "ROW", "set binlog_format = ROW"),
        ("binlog_row_image", "FULL", "set binlog_row_image = FULL"),
        (
            "binlog_row_metadata",
            "FULL",
            "set binlog_row_metadata = FULL (MySQL 8.0.1+, MariaDB 10.5+)",
        ),
    ];
    let mut out = Vec::new();
    for (var, value, fix) in want {
        out.push(match get(var) {
            Some(v) if v == value => Prerequisite::met(format!("{var} = {v}")),
            Some(v) => Prerequisite::unmet(format!("{var} is {v}: {fix} and restart the server")),
            None => Prerequisite::unmet(format!("{var} is not set: {fix}")),
        });
    }
    if get("server_id").as_deref() == Some(&server_id.to_string()) {
        out.push(Prerequisite::unmet(format!(
            "server_id {server_id} is the source server's own id: give ferry another"
        )));
    }
    // MariaDB spells it SHOW SLAVE HOSTS, MySQL 8.0.22+ SHOW REPLICAS (and still accepts the old).
    let hosts: Vec<mysql_async::Row> = match conn.query("SHOW SLAVE HOSTS").await {
        Ok(h) => h,
        Err(e) => {
            out.push(Prerequisite::unmet(format!(
                "SHOW SLAVE HOSTS failed ({e}), so ferry cannot tell whether another replica \
                 uses server_id {server_id}: grant the account REPLICATION CLIENT (MariaDB \
                 10.5.9+: REPLICA MONITOR)"
            )));
            Vec::new()
        }
    };
    if hosts.iter().any(|h| h.get::<u32, _>(0) == Some(server_id)) {
        // Possibly ferry's own previous connection, killed a moment ago: the server drops it
        // once it notices, within a heartbeat or two.
        out.push(Prerequisite {
            ok: false,
            transient: true,
            text: format!(
                "another replica connected to the source already uses server_id {server_id}: \
                 give ferry a server_id no replica uses"
            ),
        });
    }
    Ok(out)
}

/// The server's binlog files and their sizes (`SHOW BINARY LOGS`), oldest first.
pub async fn binlog_sizes(conn: &mut Conn) -> Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// The server's current binlog position: the end of the newest file in [`binlog_sizes`].
pub fn current_position(sizes: &[(String, u64)]) -> Option<BinlogPos> {
    sizes
        .last()
        .map(|(file, size)| BinlogPos::new(file.clone(), *size))
}

/// The server's binlog expiry in seconds, 0 when binlogs are never purged by age:
/// `binlog_expire_logs_seconds` (MySQL 8, MariaDB 10.6+), else `expire_logs_days`.
pub async fn binlog_expiry(conn: &mut Conn) -> Result<u64> {
    let seconds: std::result::Result<Option<u64>, _> = conn
        .query_first("SELECT @@global.binlog_expire_logs_seconds")
        .await;
    if let Ok(Some(s)) = seconds {
        return Ok(s);
    }
    // A fraction of days on MariaDB before 10.6; whole days on MySQL 5.7.
    let days: Option<f64> = conn
        .query_first("SELECT CAST(@@global.expire_logs_days AS DOUBLE)")
        .await?;
    Ok((days.unwrap_or(0.0) * 86_400.0).max(0.0) as u64)
}

/// Refuses an unmet prerequisite; one that may pass by itself (a server_id still registered by
/// ferry's own killed predecessor) is given 30 s.
pub(crate) async fn check_server(conn: &mut Conn, server_id: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unmet: Vec<Prerequisite> = prerequisites(conn, server_id)
            .await?
            .into_iter()
            .filter(|p| !p.ok)
            .collect();
        match unmet.first() {
            None => return Ok(()),
            Some(p) if unmet.iter().all(|p| p.transient) && Instant::now() < deadline => {
                tracing::info!("{}; waiting for it to go away", p.text);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(_) => {
                let p = unmet.iter().find(|p| !p.transient).unwrap_or(&unmet[0]);
                return Err(Error::Config(p.text.clone()));
            }
        }
    }
}

/// Which server a spool's binlog positions belong to: a `file:position` means something only on
/// the server that wrote that binlog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerIdentity {
    pub server_id: u32,
    /// MySQL's `server_uuid` (MariaDB has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_uuid: Option<String>,
}

impl std::fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server_uuid {
            Some(u) => write!(f, "server_id {} (server_uuid {u})", self.server_id),
            None => write!(f, "server_id {}", self.server_id),
        }
    }
}

/// What the spool records about its server: who it is, and the epoch of its positions (how
/// many times ferry has moved to another server by GTID).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SpoolServer {
    #[serde(flatten)]
    identity: ServerIdentity,
    #[serde(default)]
    epoch: u32,
}

const IDENTITY_FILE: &str = "mysql-source.json";

/// The identity of the server behind `conn`.
pub async fn server_identity(conn: &mut Conn) -> Result<ServerIdentity> {
    let server_id: Option<u32> = conn.query_first("SELECT @@global.server_id").await?;
    // MariaDB has no server_uuid: the query fails there, and only that is expected.
    let server_uuid: Option<String> = conn
        .query_first("SELECT @@global.server_uuid")
        .await
        .unwrap_or(None);
    Ok(ServerIdentity {
        server_id: server_id.unwrap_or(0),
        server_uuid,
    })
}

/// How the stream is resumed on the server behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeBy {
    /// At the spool's `file:position`: the server wrote that binlog (or there is no position
    /// yet, and the spool starts here).
    FilePos,
    /// After the spool position's GTIDs: the server is another one (a failover).
    Gtid,
}

fn read_spool_server(path: &std::path::Path) -> Result<Option<SpoolServer>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Config(format!(
                "{} is not a ferry server identity: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// The epoch of the positions a spool's source writes now (0 before any failover).
pub fn spool_epoch(dir: &std::path::Path) -> Result<u32> {
    Ok(read_spool_server(&dir.join(IDENTITY_FILE))?.map_or(0, |s| s.epoch))
}

/// Decides how to resume on the server `now`, and records it in the spool: the same server
/// resumes at `file:position`; another one (a failover, or another server behind the URL)
/// resumes by GTID when the spool's position has them, in a new epoch so that its positions
/// come after every earlier one. Without GTIDs that is "position lost", said with the way out:
/// another server's `file:position` means nothing, and resuming it would read the wrong
/// changes (or none) without a word. Returns the epoch of the positions to write and how to
/// resume.
pub(crate) fn check_server_identity(
    dir: &std::path::Path,
    now: &ServerIdentity,
    resuming: Option<&BinlogPos>,
) -> Result<(u32, ResumeBy)> {
    let path = dir.join(IDENTITY_FILE);
    let (epoch, by) = resume_plan(dir, now, resuming)?;
    if by == ResumeBy::Gtid
        && let Some(pos) = resuming
    {
        tracing::warn!(to = %now, position = %pos, epoch, "mysql source: the server behind the URL is another one than the spool's (a failover?): resuming by GTID");
    }
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&SpoolServer {
        identity: now.clone(),
        epoch,
    })
    .map_err(|e| Error::Fatal(format!("encode server identity: {e}")))?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .and_then(|_| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    Ok((epoch, by))
}

/// What [`check_server_identity`] would decide, without recording it (for `ferry check`).
pub fn resume_plan(
    dir: &std::path::Path,
    now: &ServerIdentity,
    resuming: Option<&BinlogPos>,
) -> Result<(u32, ResumeBy)> {
    let recorded = read_spool_server(&dir.join(IDENTITY_FILE))?;
    Ok(match (&recorded, resuming) {
        // No position yet: the spool starts on this server.
        (None, _) => (0, ResumeBy::FilePos),
        (Some(r), None) if r.identity == *now => (r.epoch, ResumeBy::FilePos),
        (Some(r), None) => (r.epoch + 1, ResumeBy::FilePos),
        (Some(r), Some(pos)) if r.identity == *now && pos.epoch == r.epoch => {
            (r.epoch, ResumeBy::FilePos)
        }
        (Some(r), Some(pos)) if pos.gtids.is_some() => {
            // This server already has the epoch if ferry moved to it but wrote no position
            // from it yet.
            let epoch = if r.identity == *now {
                r.epoch
            } else {
                r.epoch + 1
            };
            (epoch, ResumeBy::Gtid)
        }
        (Some(r), Some(pos)) => {
            return Err(Error::Gap(format!(
                "position lost: the spool's binlog position {pos} was read from {}, but the \
                 source is now {now}: a binlog file:position means nothing on another server \
                 (a failover, or another server behind the URL), and the position carries no \
                 GTIDs to resume by (GTIDs off on MySQL, or a spool written before ferry \
                 recorded them). Recover by pointing ferry back at the first server, or by \
                 clearing the spool directory and the replicas and starting again with \
                 snapshot = \"initial\" (or restoring the replicas from the archive)",
                r.identity
            )));
        }
    })
}

/// Starts a new spool in `dir` at the position of the server behind `conn` now: its identity
/// recorded and a heartbeat at its binlog position (with its GTIDs), so that a source started
/// on it later with `snapshot = "never"` reads every transaction from this moment, however long
/// after it starts. Refuses a directory that already holds a spool.
pub async fn start_spool_here(conn: &mut Conn, dir: &std::path::Path) -> Result<BinlogPos> {
    if dir.join(IDENTITY_FILE).exists()
        || ferry_spool::segment::list(dir).is_ok_and(|l| !l.is_empty())
    {
        return Err(Error::Config(format!(
            "{} already holds a spool: choose another directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let identity = server_identity(conn).await?;
    let (epoch, _) = check_server_identity(dir, &identity, None)?;
    let mut at = master_position(conn).await?;
    at.epoch = epoch;
    let (mut spool, _) =
        ferry_spool::SpoolWriter::open(dir, ferry_spool::WriterOptions::default())?;
    spool.append(&ferry_proto::Event::Heartbeat(ferry_proto::Heartbeat {
        position: ferry_proto::Position::Binlog(at.clone()),
        time: ferry_proto::civil::now_micros(),
    }))?;
    spool.commit()?;
    Ok(at)
}

/// Whether the server's executed GTIDs (`@@gtid_binlog_pos` on MariaDB, `@@gtid_executed` on
/// MySQL) include every transaction of `ferry`: a server promoted while behind lacks some that
/// ferry read. `Ok(None)` when they do; otherwise what is missing.
pub async fn gtids_missing(conn: &mut Conn, ferry: &Gtids) -> Result<Option<String>> {
    match ferry {
        Gtids::MariaDb(list) => {
            let text: Option<String> = conn.query_first("SELECT @@global.gtid_binlog_pos").await?;
            let server: ferry_proto::MariaGtidList = text
                .unwrap_or_default()
                .parse()
                .map_err(|e| Error::Protocol(format!("@@gtid_binlog_pos: {e}")))?;
            let missing: Vec<String> = list
                .gtids()
                .iter()
                .filter(|g| {
                    !server
                        .gtids()
                        .iter()
                        .any(|s| s.domain == g.domain && s.seq >= g.seq)
                })
                .map(|g| format!("{}-{}-{}", g.domain, g.server, g.seq))
                .collect();
            Ok((!missing.is_empty()).then(|| missing.join(",")))
        }
        Gtids::MySql(set) => {
            let text: Option<String> = conn.query_first("SELECT @@global.gtid_executed").await?;
            let server: ferry_proto::MysqlGtids = text
                .unwrap_or_default()
                .parse()
                .map_err(|e| Error::Protocol(format!("@@gtid_executed: {e}")))?;
            let mut missing = Vec::new();
            for (uuid, tag, ranges) in set.ranges() {
                for &(a, b) in ranges {
                    if !server.contains_range(uuid, tag, a, b) {
                        let tag = if tag.is_empty() {
                            String::new()
                        } else {
                            format!(":{tag}")
                        };
                        missing.push(format!(
                            "{}{tag}:{a}-{b}",
                            ferry_proto::position::uuid_text(uuid)
                        ));
                    }
                }
            }
            Ok((!missing.is_empty()).then(|| missing.join(",")))
        }
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn a_spool_resumes_only_on_the_server_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerIdentity {
            server_id: 1,
            server_uuid: None,
        };
        let b = ServerIdentity {
            server_id: 2,
            server_uuid: None,
        };
        let pos = BinlogPos::new("mysql-bin.000003", 400);
        assert_eq!(
            check_server_identity(dir.path(), &a, None).unwrap(),
            (0, ResumeBy::FilePos)
        );
        assert_eq!(
            check_server_identity(dir.path(), &a, Some(&pos)).unwrap(),
            (0, ResumeBy::FilePos)
        );
        let e = check_server_identity(dir.path(), &b, Some(&pos))
            .unwrap_err()
            .to_string();
        assert!(e.contains("position lost"), "{e}");
        assert!(
            e.contains("server_id 1") && e.contains("server_id 2"),
            "{e}"
        );
        // The refusal recorded nothing: the first server still resumes.
        assert_eq!(
            check_server_identity(dir.path(), &a, Some(&pos)).unwrap(),
            (0, ResumeBy::FilePos)
        );
        // Before any position, the spool simply starts on the new server (in a new epoch).
        assert_eq!(
            check_server_identity(dir.path(), &b, None).unwrap(),
            (1, ResumeBy::FilePos)
        );
    }

    #[test]
    fn another_server_is_resumed_by_gtid_in_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerIdentity {
            server_id: 1,
            server_uuid: None,
        };
        let b = ServerIdentity {
            server_id: 2,
            server_uuid: None,
        };
        let mut pos = BinlogPos::new("mariadb-bin.000009", 900);
        pos.gtids = Some(Gtids::MariaDb("0-1-50".parse().unwrap()));
        check_server_identity(dir.path(), &a, None).unwrap();
        assert_eq!(
            check_server_identity(dir.path(), &b, Some(&pos)).unwrap(),
            (1, ResumeBy::Gtid)
        );
        assert_eq!(spool_epoch(dir.path()).unwrap(), 1);
        // Crashed before a position of the new server was written: still by GTID, same epoch.
        assert_eq!(
            check_server_identity(dir.path(), &b, Some(&pos)).unwrap(),
            (1, ResumeBy::Gtid)
        );
        // Once one is, by file:position on that server.
        let mut on_b = BinlogPos::new("mariadb-bin.000001", 700);
        on_b.epoch = 1;
        on_b.gtids = Some(Gtids::MariaDb("0-1-51".parse().unwrap()));
        assert_eq!(
            check_server_identity(dir.path(), &b, Some(&on_b)).unwrap(),
            (1, ResumeBy::FilePos)
        );
        // Back to the first server: by GTID again, in epoch 2, never at B's file:position.
        assert_eq!(
            check_server_identity(dir.path(), &a, Some(&on_b)).unwrap(),
            (2, ResumeBy::Gtid)
        );
    }
}
