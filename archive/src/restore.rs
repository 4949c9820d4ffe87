//! Reading the archive back: the chain of objects from the beginning, whole transactions up to
//! a target (a time, a position, or the latest), into a spool that the sink worker then applies
//! to an empty database. Also `verify` (every object read and checked) and `list`.

use std::path::Path;

use ferry_proto::{Event, Position};
use ferry_spool::{Offset, SpoolWriter, WriterOptions};
use tokio::sync::watch;

use crate::error::{ArchiveError, Result};
use crate::object::{self, Manifest};
use crate::store::{Archive, check_chain};

/// Where a restore stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every archived transaction.
    Latest,
    /// Transactions committed at or before this time (µs since the epoch): the restore stops
    /// before the first transaction committed after it.
    Time(i64),
    /// Transactions the position covers.
    Position(Position),
}

impl Target {
    fn includes(&self, position: &Position, commit_time: i64) -> bool {
        match self {
            Target::Latest => true,
            Target::Time(t) => commit_time <= *t,
            Target::Position(p) => p.covers(position),
        }
    }
}

/// Where a restore stopped: the last transaction it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    pub position: Option<Position>,
    pub commit_time: Option<i64>,
    pub xid: Option<u64>,
    pub transactions: u64,
    pub changes: u64,
    /// The objects read.
    pub objects: Vec<String>,
}

/// The objects a restore to `target` reads, in order: the chain from the archive's beginning
/// (which holds the initial snapshot) to the first object past the target. A gap, or an archive
/// that does not begin at the spool's beginning, is an error naming it.
pub async fn plan(archive: &Archive, target: &Target) -> Result<Vec<Manifest>> {
    let manifests = archive.manifests().await?;
    let Some(first) = manifests.first() else {
        return Err(ArchiveError::Gap(format!(
            "the archive {} holds no object yet",
            archive.url
        )));
    };
    if first.first_offset != 0 {
        return Err(ArchiveError::Gap(format!(
            "the archive {} begins at spool offset {} ({}), not with the initial snapshot: \
             nothing to restore from without a base backup",
            archive.url, first.first_offset, first.object
        )));
    }
    check_chain(&manifests)?;
    let mut out = Vec::new();
    for m in manifests {
        let past = !target.includes(&m.first_position, m.first_commit_time);
        out.push(m);
        if past {
            break;
        }
    }
    Ok(out)
}

/// Writes the archived transactions up to `target` into a new spool in `dir`; `wanted` decides
/// which tables' row changes are kept. Returns where it stopped, and the spool's durable end
/// for a reader (its writer is gone: a tailing reader reads to the end and stops).
pub async fn to_spool(
    archive: &Archive,
    target: &Target,
    wanted: &(dyn Fn(&str, &str) -> bool + Sync),
    dir: &Path,
) -> Result<(Stopped, watch::Receiver<Offset>)> {
    let plan = plan(archive, target).await?;
    let (mut spool, _) = SpoolWriter::open(dir, WriterOptions::default())?;
    let durable = spool.subscribe();
    let mut stopped = Stopped::default();
    let mut names = std::collections::HashMap::new();
    'objects: for m in &plan {
        let events = read_object(archive, m).await?;
        stopped.objects.push(m.object.clone());
        let mut txn: Vec<Event> = Vec::new();
        let mut changes = 0u64;
        for event in events {
            match event {
                Event::Relation(r) => {
                    names.insert(r.id, (r.schema.clone(), r.name.clone()));
                    if txn.is_empty() {
                        // An object's prologue: the definitions in force where it begins.
                        spool.append(&Event::Relation(r))?;
                    } else {
                        txn.push(Event::Relation(r));
                    }
                }
                Event::Begin(_) => {
                    txn.clear();
                    changes = 0;
                    txn.push(event);
                }
                Event::Commit(c) => {
                    if !target.includes(&c.position, c.commit_time) {
                        break 'objects;
                    }
                    txn.push(Event::Commit(c.clone()));
                    for e in std::mem::take(&mut txn) {
                        spool.append(&e)?;
                    }
                    stopped.position = Some(c.position);
                    stopped.commit_time = Some(c.commit_time);
                    stopped.xid = Some(c.xid);
                    stopped.transactions += 1;
                    stopped.changes += changes;
                }
                Event::Heartbeat(_) => {}
                // Only the wanted tables of a truncate: the others are not restored at all.
                Event::Truncate(mut t) => {
                    t.relations.retain(|id| {
                        names
                            .get(id)
                            .is_none_or(|(schema, name)| wanted(schema, name))
                    });
                    if !t.relations.is_empty() {
                        changes += 1;
                        txn.push(Event::Truncate(t));
                    }
                }
                other => {
                    let keep = match other.relation_id() {
                        Some(id) => names
                            .get(&id)
                            .is_none_or(|(schema, name)| wanted(schema, name)),
                        None => true,
                    };
                    if keep {
                        if other.relation_id().is_some() {
                            changes += 1;
                        }
                        txn.push(other);
                    }
                }
            }
        }
        // Made durable once per object, not per transaction: this spool is private to the
        // restore, which starts over if it fails.
        spool.commit()?;
    }
    spool.commit()?;
    Ok((stopped, durable))
}

/// An object's events, after checking it against its manifest.
pub async fn read_object(archive: &Archive, m: &Manifest) -> Result<Vec<Event>> {
    let bytes = archive.get(&m.object).await.map_err(|e| match e {
        ArchiveError::Store(object_store::Error::NotFound { .. }) => ArchiveError::Gap(format!(
            "{} is listed by its manifest but missing",
            m.object
        )),
        other => other,
    })?;
    if bytes.len() as u64 != m.bytes || crc32c::crc32c(&bytes) != m.crc32c {
        return Err(ArchiveError::Damaged {
            object: m.object.clone(),
            reason: format!(
                "it holds {} bytes, its manifest says {} with another checksum",
                bytes.len(),
                m.bytes
            ),
        });
    }
    let frames = object::open(&bytes, archive.key.as_ref(), &m.object)?;
    object::events(&frames, &m.object)
}

/// What `ferry backup verify` found: objects read, and what is wrong (empty when nothing).
#[derive(Debug, Default)]
pub struct Verified {
    pub objects: usize,
    pub transactions: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Reads every object of the archive and checks it: present, checksum, decryption, frames,
/// the transactions its manifest counts, and the chain unbroken.
pub async fn verify(archive: &Archive) -> Result<Verified> {
    let manifests = archive.manifests().await?;
    let mut v = Verified::default();
    if let Err(e) = check_chain(&manifests) {
        v.problems.push(e.to_string());
    }
    if let Some(first) = manifests.first()
        && first.first_offset != 0
    {
        v.problems.push(format!(
            "the archive begins at spool offset {} ({}), not with the initial snapshot",
            first.first_offset, first.object
        ));
    }
    for m in &manifests {
        v.objects += 1;
        v.bytes += m.bytes;
        match read_object(archive, m).await {
            Ok(events) => {
                let commits = events
                    .iter()
                    .filter(|e| matches!(e, Event::Commit(_)))
                    .count() as u64;
                v.transactions += commits;
                if commits != m.transactions {
                    v.problems.push(format!(
                        "{} holds {commits} transactions, its manifest says {}",
                        m.object, m.transactions
                    ));
                }
            }
            Err(e) => v.problems.push(e.to_string()),
        }
    }
    Ok(v)
}
