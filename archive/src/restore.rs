//! Reading the archive back: the chain of objects from the beginning, whole transactions up to
//! a target (a time, a position, or the latest), into a spool that the sink worker then applies
//! to an empty database. Also `verify` (every object read and checked) and `list`.

use std::path::Path;

use ferry_proto::{Begin, Commit, Event, Position, RelationId};
use ferry_spool::{Offset, SpoolWriter, WriterOptions};
use tokio::sync::watch;

use crate::base::BaseManifest;
use crate::error::{ArchiveError, Result};
use crate::object::Manifest;
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
    pub fn includes(&self, position: &Position, commit_time: i64) -> bool {
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
    /// The tables restored (`schema`, `name`), sorted.
    pub tables: Vec<(String, String)>,
}

/// What a restore to a target reads: the base backup it starts from (`None`: the log from the
/// archive's beginning, which holds the initial snapshot), then the log objects in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub base: Option<BaseManifest>,
    pub log: Vec<Manifest>,
}

impl Plan {
    /// Every object the restore reads, in order.
    pub fn objects(&self) -> Vec<String> {
        let base = self
            .base
            .iter()
            .flat_map(|b| b.chunks.iter().map(|c| c.object.clone()));
        base.chain(self.log.iter().map(|m| m.object.clone()))
            .collect()
    }
}

/// The plan of a restore to `target`: the newest base backup the target includes, then the log
/// from the last object that begins at or before the base's position up to the first object
/// past the target. Without a usable base backup, the log from the archive's beginning (which
/// must hold the initial snapshot). A gap is an error naming it, never a restore of less.
pub async fn plan(archive: &Archive, target: &Target) -> Result<Plan> {
    let manifests = archive.manifests().await?;
    let bases = archive.base_manifests().await?;
    let base = bases
        .into_iter()
        .rev()
        .find(|b| target.includes(&b.position, b.snapshot_time));
    let start = match &base {
        Some(b) => log_start(&manifests, b).map_err(|why| {
            ArchiveError::Gap(format!(
                "base backup {} (at {}) cannot be followed by the log: {why}",
                b.id, b.position
            ))
        })?,
        None => {
            let Some(first) = manifests.first() else {
                return Err(ArchiveError::Gap(format!(
                    "the archive {} holds no object and no base backup the target includes",
                    archive.url
                )));
            };
            if first.first_offset != 0 {
                return Err(ArchiveError::Gap(format!(
                    "the archive {} begins at spool offset {} ({}), not with the initial \
                     snapshot, and holds no base backup the target includes: nothing to restore \
                     from",
                    archive.url, first.first_offset, first.object
                )));
            }
            0
        }
    };
    check_chain(&manifests[start..])?;
    let mut log = Vec::new();
    for m in manifests.into_iter().skip(start) {
        let past = !target.includes(&m.first_position, m.first_commit_time);
        log.push(m);
        if past {
            break;
        }
    }
    Ok(Plan { base, log })
}

/// Where the log a base backup needs begins: the last object whose first transaction is at or
/// before the base's position. From there on the chain holds every transaction after it (the
/// spool is contiguous); an archive whose log begins after the base's position may have lost
/// the transactions in between, and is refused.
pub fn log_start(
    manifests: &[Manifest],
    base: &BaseManifest,
) -> std::result::Result<usize, String> {
    manifests
        .iter()
        .rposition(|m| base.position.covers(&m.first_position))
        .ok_or_else(|| match manifests.first() {
            None => "the archive holds no log object".to_owned(),
            Some(m) => format!(
                "the log begins at {} ({}), after the base backup's position",
                m.first_position, m.object
            ),
        })
}

/// Writes the base backup and archived transactions of a restore to `target` into a new spool
/// in `dir`; `wanted` decides which tables' row changes are kept. Returns where it stopped, and
/// the spool's durable end for a reader (its writer is gone: a tailing reader reads to the end
/// and stops). Events stream through: memory holds one object, whatever a transaction's size.
/// `progress` is told after each object read: (objects read, objects planned).
pub async fn to_spool(
    archive: &Archive,
    plan: &Plan,
    target: &Target,
    wanted: &(dyn Fn(&str, &str) -> bool + Sync),
    dir: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Stopped, watch::Receiver<Offset>)> {
    let planned = plan.objects().len();
    let (mut spool, _) = SpoolWriter::open(dir, WriterOptions::default())?;
    let durable = spool.subscribe();
    let mut stopped = Stopped::default();
    let mut names = std::collections::HashMap::new();
    // The base's position while the log is still at or before it: those transactions and the
    // relations in force before it are in the base already, in their newer form.
    let mut covered: Option<Position> = None;
    if let Some(b) = &plan.base {
        let begin = Begin {
            position: b.position.clone(),
            xid: 0,
            commit_time: b.snapshot_time,
        };
        spool.append(&Event::Begin(begin))?;
        for chunk in &b.chunks {
            for event in crate::base::read_chunk(archive, chunk).await? {
                if let Event::Relation(r) = &event {
                    names.insert(r.id, (r.schema.clone(), r.name.clone()));
                }
                if keep(&event, &names, wanted) {
                    if event.relation_id().is_some() && !matches!(event, Event::Relation(_)) {
                        stopped.changes += 1;
                    }
                    spool.append(&event)?;
                }
            }
            stopped.objects.push(chunk.object.clone());
            progress(stopped.objects.len(), planned);
            spool.commit()?;
        }
        spool.append(&Event::Commit(Commit {
            position: b.position.clone(),
            xid: 0,
            commit_time: b.snapshot_time,
        }))?;
        stopped.position = Some(b.position.clone());
        stopped.commit_time = Some(b.snapshot_time);
        stopped.xid = Some(0);
        stopped.transactions += 1;
        covered = Some(b.position.clone());
    }
    // Whether the transaction being read is written (false: covered by the base).
    let mut writing = false;
    let mut in_txn = false;
    // Where the transaction being written began in the private spool.
    let mut txn_begin = spool.end();
    'objects: for m in &plan.log {
        let events = read_object(archive, m).await?;
        stopped.objects.push(m.object.clone());
        progress(stopped.objects.len(), planned);
        // An object begins with the definitions in force (its prologue).
        let mut prologue = true;
        for event in events {
            if !matches!(event, Event::Relation(_)) {
                prologue = false;
            }
            match event {
                Event::Begin(b) => {
                    if !target.includes(&b.position, b.commit_time) {
                        break 'objects;
                    }
                    if covered.as_ref().is_some_and(|q| q.covers(&b.position)) {
                        writing = false;
                    } else {
                        covered = None;
                        writing = true;
                        txn_begin = spool.end();
                        spool.append(&Event::Begin(b))?;
                    }
                    in_txn = true;
                }
                Event::Commit(c) => {
                    in_txn = false;
                    if writing {
                        spool.append(&Event::Commit(c.clone()))?;
                        stopped.position = Some(c.position);
                        stopped.commit_time = Some(c.commit_time);
                        stopped.xid = Some(c.xid);
                        stopped.transactions += 1;
                    }
                }
                Event::Heartbeat(_) => {}
                Event::Relation(r) => {
                    names.insert(r.id, (r.schema.clone(), r.name.clone()));
                    // An object's prologue is written unless the base has the tables in a newer
                    // form, or the object continues a transaction (whose stream has them).
                    let write = if prologue || !in_txn {
                        !in_txn && covered.is_none()
                    } else {
                        writing
                    };
                    if write {
                        spool.append(&Event::Relation(r))?;
                    }
                }
                other => {
                    if writing && keep(&other, &names, wanted) {
                        if other.relation_id().is_some() || matches!(other, Event::Truncate(_)) {
                            stopped.changes += 1;
                        }
                        spool.append(&restrict_truncate(other, &names, wanted))?;
                    }
                }
            }
        }
        // Made durable once per object, not per transaction: this spool is private to the
        // restore, which starts over if it fails.
        spool.commit()?;
    }
    let mut tables: Vec<(String, String)> = names
        .into_values()
        .filter(|(schema, name)| wanted(schema, name))
        .collect();
    tables.sort();
    tables.dedup();
    stopped.tables = tables;
    spool.commit()?;
    if in_txn && writing {
        // The archive ends inside a transaction it holds only part of (the archiver is still
        // writing it): the restore ends before it, never with part of it.
        spool.truncate_from(txn_begin)?;
    }
    Ok((stopped, durable))
}

/// Whether a restore keeps an event: row changes of the wanted tables only (a truncate when it
/// names any wanted table), everything else.
fn keep(
    event: &Event,
    names: &std::collections::HashMap<RelationId, (String, String)>,
    wanted: &(dyn Fn(&str, &str) -> bool + Sync),
) -> bool {
    let is_wanted = |id: &RelationId| {
        names
            .get(id)
            .is_none_or(|(schema, name)| wanted(schema, name))
    };
    match event {
        Event::Relation(_) => true,
        Event::Truncate(t) => t.relations.iter().any(is_wanted),
        other => other.relation_id().is_none_or(|id| is_wanted(&id)),
    }
}

/// A truncate keeps only the wanted tables: the others are not restored at all.
fn restrict_truncate(
    event: Event,
    names: &std::collections::HashMap<RelationId, (String, String)>,
    wanted: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Event {
    match event {
        Event::Truncate(mut t) => {
            t.relations.retain(|id| {
                names
                    .get(id)
                    .is_none_or(|(schema, name)| wanted(schema, name))
            });
            Event::Truncate(t)
        }
        other => other,
    }
}

/// An object's events, after checking it against its manifest.
pub async fn read_object(archive: &Archive, m: &Manifest) -> Result<Vec<Event>> {
    archive.read_checked(&m.object, m.bytes, m.crc32c).await
}

/// What `ferry backup verify` found: objects read, and what is wrong (empty when nothing).
#[derive(Debug, Default)]
pub struct Verified {
    pub objects: usize,
    pub transactions: u64,
    pub base_backups: usize,
    pub rows: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Reads every object of the archive and checks it: present, checksum, decryption, frames,
/// the transactions (or rows) its manifest counts; the log's chain unbroken; and each base
/// backup followed by the log without a gap. An archive without base backups must begin with
/// the initial snapshot.
pub async fn verify(archive: &Archive) -> Result<Verified> {
    let manifests = archive.manifests().await?;
    let bases = archive.base_manifests().await?;
    let mut v = Verified::default();
    if let Err(e) = check_chain(&manifests) {
        v.problems.push(e.to_string());
    }
    if bases.is_empty()
        && let Some(first) = manifests.first()
        && first.first_offset != 0
    {
        v.problems.push(format!(
            "the archive begins at spool offset {} ({}), not with the initial snapshot, and \
             holds no base backup",
            first.first_offset, first.object
        ));
    }
    for b in &bases {
        v.base_backups += 1;
        if let Err(why) = log_start(&manifests, b) {
            v.problems.push(format!(
                "base backup {} (at {}) cannot be followed by the log: {why}",
                b.id, b.position
            ));
        }
        let mut inserts = 0u64;
        for c in &b.chunks {
            v.objects += 1;
            v.bytes += c.bytes;
            match crate::base::read_chunk(archive, c).await {
                Ok(events) => {
                    inserts += events
                        .iter()
                        .filter(|e| matches!(e, Event::Insert(_)))
                        .count() as u64
                }
                Err(e) => v.problems.push(e.to_string()),
            }
        }
        v.rows += inserts;
        if inserts != b.rows && v.problems.is_empty() {
            v.problems.push(format!(
                "base backup {} holds {inserts} rows, its manifest says {}",
                b.id, b.rows
            ));
        }
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
