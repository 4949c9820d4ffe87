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
