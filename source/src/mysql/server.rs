//! What the MySQL/MariaDB source asks of its server outside the binlog stream: the settings it
//! needs (`prerequisites`, read by `ferry check` too), the binlog files and their sizes, the
//! current position, and how long binlogs are kept.

use std::time::{Duration, Instant};

use ferry_proto::BinlogPos;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::capture::prerequisite::Prerequisite;
use crate::error::{Error, Result};

/// The server's binlog position now (`SHOW MASTER STATUS`).
pub async fn master_position(conn: &mut Conn) -> Result<BinlogPos> {
    let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
    let Some(row) = row else {
        return Err(Error::Config(
            "the source has no binary log: start it with log_bin (and binlog_format=ROW)".into(),
        ));
    };
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    match (file, pos) {
        (Some(file), Some(pos)) => Ok(BinlogPos { file, pos }),
        _ => Err(Error::Protocol(
            "SHOW MASTER STATUS without a file and position".into(),
        )),
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
    sizes.last().map(|(file, size)| BinlogPos {
        file: file.clone(),
        pos: *size,
    })
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

const IDENTITY_FILE: &str = "mysql-source.json";

/// The identity of the server behind `conn`.
pub(crate) async fn server_identity(conn: &mut Conn) -> Result<ServerIdentity> {
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

/// Records the server's identity in the spool, or checks it against the recorded one when the
/// spool holds a position to resume from: another server's binlog positions mean nothing here,
/// so resuming one would read the wrong changes (or none) without a word. That is "position
/// lost", said with the way out, never a silent resume.
pub(crate) fn check_server_identity(
    dir: &std::path::Path,
    now: &ServerIdentity,
    resuming: Option<&BinlogPos>,
) -> Result<()> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let recorded: ServerIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!(
                    "{} is not a ferry server identity: {e}",
                    path.display()
                ))
            })?;
            match resuming {
                Some(pos) if recorded != *now => {
                    let name = |id: &ServerIdentity| match &id.server_uuid {
                        Some(u) => format!("server_id {} (server_uuid {u})", id.server_id),
                        None => format!("server_id {}", id.server_id),
                    };
                    return Err(Error::Gap(format!(
                        "position lost: the spool's binlog position {pos} was read from {}, but \
                         the source is now {}: a binlog file:position means nothing on another \
                         server (a failover, or another server behind the URL), and ferry does \
                         not resume by GTID yet. Recover by pointing ferry back at the first \
                         server, or by clearing the spool directory and the replicas and \
                         starting again with snapshot = \"initial\" (or restoring the replicas \
                         from the archive)",
                        name(&recorded),
                        name(now)
                    )));
                }
                Some(_) => return Ok(()),
                // No position yet: the spool starts on this server.
                None => {}
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    }
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(now)
        .map_err(|e| Error::Fatal(format!("encode server identity: {e}")))?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
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
        let pos = BinlogPos {
            file: "mysql-bin.000003".into(),
            pos: 400,
        };
        check_server_identity(dir.path(), &a, None).unwrap();
        check_server_identity(dir.path(), &a, Some(&pos)).unwrap();
        let e = check_server_identity(dir.path(), &b, Some(&pos))
            .unwrap_err()
            .to_string();
        assert!(e.contains("position lost"), "{e}");
        assert!(
            e.contains("server_id 1") && e.contains("server_id 2"),
            "{e}"
        );
        // Before any position, the spool simply starts on the new server.
        check_server_identity(dir.path(), &b, None).unwrap();
        check_server_identity(dir.path(), &b, Some(&pos)).unwrap();
    }
}
