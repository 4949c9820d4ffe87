//! Retention (`keep`): which restore points the archive keeps, and deleting only what none of
//! them needs.
//!
//! The restore points are the base backups and, while the log still begins with it, the
//! initial snapshot at the log's start. `keep = N` keeps the newest N base backups; `keep =
//! "14d"` keeps every point newer than 14 days and the newest one older, so that every moment of
//! the last 14 days stays restorable (pgBackRest's time-based retention does the same). The log
//! before the oldest kept point is deleted, except the object that holds that point's position
//! (a restore needs it to prove the log has no gap after the point). Base backups not kept are
//! deleted. A manifest is deleted before its data, so a deletion cut off half-way leaves an
//! unlisted object (swept at the next run), never a listed one that is missing.

use std::time::Duration;

use crate::error::{ArchiveError, Result};
use crate::restore::log_start;
use crate::store::{Archive, offsets_of};

/// How much the archive keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The newest N base backups.
    Count(usize),
    /// Every restore point of this period, and the newest one before it.
    Period(Duration),
}

/// A period such as `90s`, `30m`, `12h`, `14d` or `2w`.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d, w)"))?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        other => {
            return Err(format!(
                "{text:?}: unit {other:?} is not one of s, m, h, d, w"
            ));
        }
    };
    if secs == 0 {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(Duration::from_secs(secs))
}

/// What a retention run deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub base_backups: Vec<String>,
    pub log_objects: usize,
}

/// Applies `keep` at `now` (µs since the epoch). Deletes nothing while the archive holds no base
/// backup, or when the oldest kept point cannot be followed by the log (that archive needs a
/// person, not fewer objects).
pub async fn apply(archive: &Archive, keep: Keep, now: i64) -> Result<Pruned> {
    let manifests = archive.manifests().await?;
    let bases = archive.base_manifests().await?;
    let mut pruned = Pruned::default();
    if bases.is_empty() {
        return Ok(pruned);
    }
    // Restore points as (time, base index or None for the log's initial snapshot), oldest first.
    let mut points: Vec<(i64, Option<usize>)> = Vec::new();
    if let Some(first) = manifests.first().filter(|m| m.first_offset == 0) {
        points.push((first.first_commit_time, None));
    }
    points.extend(
        bases
            .iter()
            .enumerate()
            .map(|(i, b)| (b.snapshot_time, Some(i))),
    );
    points.sort_by_key(|p| p.0);
    let first_kept = match keep {
        Keep::Count(n) => {
            let n = n.max(1);
            let base_points: Vec<usize> = (0..points.len())
                .filter(|&i| points[i].1.is_some())
                .collect();
            if base_points.len() <= n {
                0
            } else {
                base_points[base_points.len() - n]
            }
        }
        Keep::Period(p) => {
            let cutoff = now - p.as_micros() as i64;
            // The newest point at or before the cutoff, so the whole period stays restorable.
            points.iter().rposition(|pt| pt.0 <= cutoff).unwrap_or(0)
        }
    };
    let Some(oldest) = points[first_kept].1 else {
        // The oldest kept point is the log's own beginning: nothing before it to delete.
        return Ok(pruned);
    };
    let start = log_start(&manifests, &bases[oldest]).map_err(|why| {
        ArchiveError::Gap(format!(
            "retention deletes nothing: the oldest kept base backup {} cannot be followed by \
             the log ({why})",
            bases[oldest].id
        ))
    })?;
    for m in &manifests[..start] {
        let (name, object) = (m.object.replace(".ferry", ".json"), m.object.clone());
        archive.delete(&name).await?;
        archive.delete(&object).await?;
        pruned.log_objects += 1;
    }
    let kept_ids: Vec<&str> = points[first_kept..]
        .iter()
        .filter_map(|p| p.1.map(|i| bases[i].id.as_str()))
        .collect();
    for b in &bases {
        if kept_ids.contains(&b.id.as_str()) {
            continue;
        }
        archive.delete(&b.name()).await?;
        for c in &b.chunks {
            archive.delete(&c.object).await?;
        }
        pruned.base_backups.push(b.id.clone());
    }
    sweep(
        archive,
        manifests.get(start).map(|m| m.first_offset),
        &bases[oldest].id,
    )
    .await?;
    Ok(pruned)
}

/// Deletes what an earlier deletion cut off half-way left: log objects without a manifest
/// before the kept log, and base backup chunks without a manifest older than the oldest kept
/// base backup (a backup in progress is newer, so it is never touched).
async fn sweep(archive: &Archive, log_from: Option<u64>, oldest_base: &str) -> Result<()> {
    if let Some(from) = log_from {
        for name in archive.list("log").await? {
            let manifest = name.replace(".ferry", ".json");
            if name.ends_with(".ferry") && offsets_of(&manifest).is_some_and(|(_, end)| end <= from)
            {
                archive.delete(&name).await?;
            }
        }
    }
    let names = archive.list("base").await?;
    for name in &names {
        let Some(id) = name
            .strip_prefix("base/")
            .and_then(|r| r.split_once('/'))
            .map(|(id, _)| id)
        else {
            continue;
        };
        if id < oldest_base && !names.contains(&crate::base::manifest_name(id)) {
            archive.delete(name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::BaseManifest;
    use crate::object::Manifest;
    use ferry_proto::{Lsn, Position};

    const S: i64 = 1_000_000;

    /// An archive whose log runs from the initial snapshot (offset 0, time 0) in objects of 100
    /// bytes, one every 10 s (position = time in s), with base backups at `bases` (s).
    async fn archive(dir: &std::path::Path, objects: u64, bases: &[i64]) -> Archive {
        let a = Archive::open(&crate::ArchiveSettings {
            url: format!("file://{}", dir.display()),
            s3: Default::default(),
            key: None,
            object_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        for i in 0..objects {
            let (object, manifest) = crate::object::names(
                ferry_spool::Offset(i * 100),
                ferry_spool::Offset(i * 100 + 100),
            );
            a.put_object(&object, vec![1]).await.unwrap();
            let t = (i * 10) as i64;
            let m = Manifest {
                format: 1,
                object,
                first_offset: i * 100,
                end_offset: i * 100 + 100,
                first_position: Position::Postgres(Lsn(t as u64)),
                last_position: Position::Postgres(Lsn(t as u64 + 9)),
                first_commit_time: t * S,
                last_commit_time: (t + 9) * S,
                transactions: 1,
                bytes: 1,
                crc32c: 0,
                encrypted: false,
                compression: "zstd".into(),
                ends_in_transaction: None,
            };
            a.put_manifest(&manifest, &m).await.unwrap();
        }
        for &b in bases {
            let id = crate::base::id_at(b * S);
            let chunk = format!("base/{id}/000000.ferry");
            a.put_object(&chunk, vec![1]).await.unwrap();
            let m = BaseManifest {
                format: 1,
                id: id.clone(),
                position: Position::Postgres(Lsn(b as u64)),
                snapshot_time: b * S,
                started: b * S,
                finished: b * S,
                tables: Vec::new(),
                rows: 0,
                chunks: vec![crate::base::Chunk {
                    object: chunk,
                    bytes: 1,
                    crc32c: 0,
                    events: 0,
                }],
                bytes: 1,
                encrypted: false,
                compression: "zstd".into(),
            };
            a.put_new(&m.name(), serde_json::to_vec(&m).unwrap())
                .await
                .unwrap();
        }
        a
    }

    async fn left(a: &Archive) -> (Vec<i64>, u64) {
        let bases = a.base_manifests().await.unwrap();
        let log = a.manifests().await.unwrap();
        (
            bases.iter().map(|b| b.snapshot_time / S).collect(),
            log.first().map_or(u64::MAX, |m| m.first_offset),
        )
    }

    #[tokio::test]
    async fn a_count_keeps_the_newest_base_backups_and_the_log_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), 10, &[25, 55, 75]).await;
        let p = apply(&a, Keep::Count(2), 1000 * S).await.unwrap();
        assert_eq!(p.base_backups.len(), 1);
        // The object holding position 55 (50..59) is the first kept.
        assert_eq!(left(&a).await, (vec![55, 75], 500));
        assert_eq!(p.log_objects, 5);
        // Nothing is listed that is missing, and nothing unlisted is left before the log.
        assert!(
            a.list("log")
                .await
                .unwrap()
                .iter()
                .all(|n| n >= &"log/00000000000001f4".to_owned())
        );
        // Applied again: nothing more.
        assert_eq!(
            apply(&a, Keep::Count(2), 1000 * S).await.unwrap(),
            Pruned::default()
        );
    }

    #[tokio::test]
    async fn a_period_keeps_every_point_in_it_and_the_newest_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), 10, &[25, 55, 75]).await;
        // At 100 s, keep 40 s: points at 75 (in the period) and 55 (the newest before 60).
        apply(&a, Keep::Period(Duration::from_secs(40)), 100 * S)
            .await
            .unwrap();
        assert_eq!(left(&a).await, (vec![55, 75], 500));
        // Keep 90 s: the cutoff (10 s) is before every base backup: the initial snapshot at the
        // log's start is the newest point before it, so everything stays.
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), 10, &[25, 55, 75]).await;
        let p = apply(&a, Keep::Period(Duration::from_secs(90)), 100 * S)
            .await
            .unwrap();
        assert_eq!(p, Pruned::default());
        assert_eq!(left(&a).await, (vec![25, 55, 75], 0));
    }

    #[tokio::test]
    async fn without_base_backups_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), 5, &[]).await;
        assert_eq!(
            apply(&a, Keep::Count(1), 1000 * S).await.unwrap(),
            Pruned::default()
        );
        assert_eq!(left(&a).await, (vec![], 0));
    }

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_period("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_period("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "d", "14", "14y", "0d", "-1d"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }
}
