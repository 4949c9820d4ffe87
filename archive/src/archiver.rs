//! The archiver: one more reader of the spool, beside the sinks. It cuts the spool into objects
//! of whole transactions, each beginning exactly where the one before ended, and writes each
//! with its manifest. A segment leaves the spool only once every sink has applied it and the
//! archive holds it; the source's acknowledgement never waits for the archive.
//!
//! An object is sealed when it holds `object_bytes` or when `archive_timeout` has passed since
//! its first transaction (or heartbeat: a position passed without a captured change), so a quiet
//! database's newest transactions are archived within that time (the RPO). Where the archive ends is read from the archive itself (the last manifest's
//! name) at every start, so a crash between an object and the cursor neither repeats nor loses
//! a transaction. An object store that fails is retried with backoff; meanwhile the spool grows
//! and the progress says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_proto::{Event, Position, Relation, RelationId};
use ferry_spool::{Cursors, Offset, SpoolReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ArchiveSettings;
use crate::error::{ArchiveError, Result};
use crate::object::{self, Manifest, TxnMark};
use crate::store::{Archive, offsets_of};

/// The spool cursor that keeps segments the archive still needs.
pub const CURSOR: &str = "archive";

/// What the archive holds, for metrics, `/status` and the spool's truncation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// Everything before this spool offset is in the archive.
    pub offset: Offset,
    /// The last archived transaction's (or heartbeat's) position and commit time (µs).
    pub position: Option<Position>,
    pub last_commit_time: Option<i64>,
    /// Objects and bytes written by this process.
    pub objects: u64,
    pub bytes: u64,
    /// Why the archive is not keeping up, while it retries.
    pub failing: Option<String>,
}

/// The archiver task.
#[derive(Debug)]
pub struct Archiver {
    settings: ArchiveSettings,
    spool_dir: PathBuf,
    progress: watch::Sender<ArchiveProgress>,
}

/// The object being filled.
struct Batch {
    /// Where it begins: where the previous object ended.
    first_offset: Offset,
    /// The definitions in force where it begins (its prologue, so it decodes on its own), then
    /// the frames of the whole transactions (and heartbeats between them) it holds, compressed
    /// as they arrive.
    frames: object::Packer,
    first: Option<(Position, i64)>,
    last_position: Option<Position>,
    last_commit_time: Option<i64>,
    transactions: u64,
    /// When its first transaction arrived, for `archive_timeout`.
    started: Option<Instant>,
    /// Just after its last complete event.
    end_offset: Offset,
}

impl Batch {
    fn new(at: Offset, relations: &BTreeMap<RelationId, Relation>) -> Result<Batch> {
        let mut frames = object::Packer::new()?;
        let mut prologue = Vec::with_capacity(4096);
        for r in relations.values() {
            ferry_proto::frame::encode(&Event::Relation(r.clone()), &mut prologue)
                .map_err(|e| ArchiveError::Format(e.to_string()))?;
        }
        frames.write(&prologue)?;
        Ok(Batch {
            first_offset: at,
            frames,
            first: None,
            last_position: None,
            last_commit_time: None,
            transactions: 0,
            started: None,
            end_offset: at,
        })
    }
}

/// A transaction being read: where it began, its frames while they fit in an object (`None`
/// after: it is read again from the spool once its Commit is there), and the definitions it
/// changes.
struct OpenTxn {
    mark: TxnMark,
    frames: Option<Vec<u8>>,
    relations: Vec<Relation>,
}

impl OpenTxn {
    fn hold(&mut self, frame: &[u8], limit: usize) {
        if let Some(frames) = &mut self.frames {
            frames.extend_from_slice(frame);
            if frames.len() > limit {
                self.frames = None;
            }
        }
    }
}

impl Archiver {
    pub fn new(
        settings: ArchiveSettings,
        spool_dir: PathBuf,
    ) -> (Archiver, watch::Receiver<ArchiveProgress>) {
        let (progress, rx) = watch::channel(ArchiveProgress::default());
        (
            Archiver {
                settings,
                spool_dir,
                progress,
            },
            rx,
        )
    }

    /// Archives the spool until `shutdown` (sealing what it holds first), retrying a failing
    /// object store; returns an error that retrying cannot fix.
    pub async fn run(
        self,
        durable: watch::Receiver<Offset>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut backoff = ferry_db::retry::Backoff::default();
        loop {
            let started = Instant::now();
            match self.session(durable.clone(), &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "archive: failing; retrying (the spool keeps what is not archived)");
                    self.progress
                        .send_modify(|p| p.failing = Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "archive: stopped");
                    self.progress
                        .send_modify(|p| p.failing = Some(e.to_string()));
                    return Err(e);
                }
            }
        }
    }

    /// Where the archive ends: after its last object, or (empty) the spool's oldest segment.
    async fn start(&self, archive: &Archive, durable: &watch::Receiver<Offset>) -> Result<Offset> {
        let names = archive.manifest_names().await?;
        let oldest = ferry_spool::segment::list(&self.spool_dir)?
            .first()
            .copied()
            .unwrap_or(0);
        let start = match names.last() {
            Some(name) => {
                let (_, end) = offsets_of(name).ok_or_else(|| {
                    ArchiveError::Format(format!("{name} is not a name ferry writes"))
                })?;
                Offset(end)
            }
            None => {
                if oldest > 0 {
                    tracing::warn!(
                        spool_offset = oldest,
                        "archive: empty, and the spool no longer holds its beginning: the archive \
                         starts here, and restores need a base backup taken after it"
                    );
                }
                Offset(oldest)
            }
        };
        let end = *durable.borrow();
        if start > end {
            return Err(ArchiveError::Config(format!(
                "the archive {} ends at spool offset {start}, beyond this spool's end {end}: it \
                 belongs to another spool; give this one its own archive url",
                archive.url
            )));
        }
        if start.0 < oldest {
            return Err(ArchiveError::Gap(format!(
                "the archive {} ends at spool offset {start}, but the spool begins at {oldest}: \
                 the transactions between were deleted before they were archived",
                archive.url
            )));
        }
        Ok(start)
    }

    async fn session(
        &self,
        durable: watch::Receiver<Offset>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let archive = Archive::open(&self.settings)?;
        let start = self.start(&archive, &durable).await?;
        let cursors = Cursors::new(&self.spool_dir);
        cursors.save(CURSOR, start)?;
        self.progress.send_modify(|p| {
            p.offset = start;
            p.failing = None;
        });
        let mut reader = SpoolReader::open_tailing(&self.spool_dir, start, durable.clone())?;
        tracing::info!(url = %archive.url, offset = %start, "archive: starting");
        // The definitions in force after the last whole transaction read.
        let mut relations: BTreeMap<RelationId, Relation> =
            reader.relations().map(|r| (r.id, r.clone())).collect();
        let mut batch = Batch::new(start, &relations)?;
        // An archive that ends inside a transaction continues it: the rest is read from the
        // spool once its Commit is there.
        let mut txn: Option<OpenTxn> = self.open_at(&archive).await?.map(|mark| OpenTxn {
            mark,
            frames: None,
            relations: Vec::new(),
        });
        let timeout = self.settings.timeout;
        let mut draining = false;
        loop {
            let next = match reader.try_next()? {
                Some(ev) => Some(ev),
                None if draining => {
                    self.seal(&archive, &mut batch, &relations, &cursors, None)
                        .await?;
                    return Ok(());
                }
                None => {
                    let deadline = batch.started.map(|t| t + timeout);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            // The source stopped before the archive was asked to, and what it
                            // made durable last may have come after the read above: read to
                            // the spool's end, then seal.
                            draining = true;
                            continue;
                        }
                        _ = sleep_until(deadline) => {
                            self.seal(&archive, &mut batch, &relations, &cursors, None).await?;
                            continue;
                        }
                        ev = reader.next_wait() => ev?,
                    }
                }
            };
            let Some((offset, event)) = next else {
                // The writer is gone: archive what is whole.
                self.seal(&archive, &mut batch, &relations, &cursors, None)
                    .await?;
                return Ok(());
            };
            let after = reader.position();
            // The spool's own frame, passed on as it is stored.
            let frame = reader.last_frame();
            match (&event, txn.as_mut()) {
                (Event::Begin(b), _) => {
                    txn = Some(OpenTxn {
                        mark: TxnMark {
                            begin_offset: offset.0,
                            position: b.position.clone(),
                            commit_time: b.commit_time,
                        },
                        frames: Some(frame.to_vec()),
                        relations: Vec::new(),
                    });
                }
                (Event::Commit(c), Some(_)) => {
                    let Some(t) = txn.take() else {
                        return Err(ArchiveError::Format("lost txn".into()));
                    };
                    let Some(mut frames) = t.frames else {
                        // Too large to hold: now that its Commit is durable, stream it from
                        // the spool into as many objects as it fills.
                        self.stream_txn(
                            &archive,
                            &mut batch,
                            &mut relations,
                            &cursors,
                            &t.mark,
                            after,
                            &durable,
                        )
                        .await?;
                        continue;
                    };
                    frames.extend_from_slice(frame);
                    for r in t.relations {
                        relations.insert(r.id, r);
                    }
                    batch.frames.write(&frames)?;
                    if batch.first.is_none() {
                        batch.first = Some((t.mark.position.clone(), c.commit_time));
                        batch.started = Some(Instant::now());
                    }
                    batch.last_position = Some(c.position.clone());
                    batch.last_commit_time = Some(c.commit_time);
                    batch.transactions += 1;
                    batch.end_offset = after;
                    if batch.frames.raw_len() >= self.settings.object_bytes {
                        self.seal(&archive, &mut batch, &relations, &cursors, None)
                            .await?;
                    }
                }
                (Event::Relation(r), Some(t)) => {
                    t.relations.push(r.clone());
                    t.hold(frame, self.settings.object_bytes);
                }
                (_, Some(t)) => t.hold(frame, self.settings.object_bytes),
                (Event::Commit(_), None) => {
                    return Err(ArchiveError::Format(format!(
                        "spool offset {offset}: Commit without Begin"
                    )));
                }
                (Event::Relation(r), None) => {
                    // A segment's prologue repeating a definition: already in force.
                    relations.insert(r.id, r.clone());
                    batch.frames.write(frame)?;
                    batch.end_offset = after;
                }
                (Event::Heartbeat(h), None) => {
                    // A position the source passed without a captured change is archived too
                    // (within `archive_timeout`), so the archive shows it holds everything up
                    // to there: what a drill or a restore to that position needs to know.
                    batch.frames.write(frame)?;
                    if batch.first.is_none() {
                        batch.first = Some((h.position.clone(), h.time));
                        batch.started = Some(Instant::now());
                    }
                    batch.last_position = Some(h.position.clone());
                    batch.last_commit_time = Some(h.time);
                    batch.end_offset = after;
                }
                (_, None) => {
                    batch.frames.write(frame)?;
                    batch.end_offset = after;
                }
            }
        }
    }

    /// Whether the archive ends inside a transaction (its last object was cut there).
    async fn open_at(&self, archive: &Archive) -> Result<Option<TxnMark>> {
        Ok(archive
            .last_manifest()
            .await?
            .and_then(|(_, m)| m.ends_in_transaction))
    }

    /// Archives one committed transaction too large to hold in memory, from where the archive
    /// holds it up to (the end of its Commit) `end`, reading it again from the spool: objects are
    /// cut every `object_bytes`, inside the transaction if need be (the manifest of such an
    /// object says so). Only a transaction whose Commit is durable is ever archived, so nothing
    /// archived can be cut from the spool by a crash.
    #[allow(clippy::too_many_arguments)]
    async fn stream_txn(
        &self,
        archive: &Archive,
        batch: &mut Batch,
        relations: &mut BTreeMap<RelationId, Relation>,
        cursors: &Cursors,
        mark: &TxnMark,
        end: Offset,
        durable: &watch::Receiver<Offset>,
    ) -> Result<()> {
        // Whole transactions before it go on their own.
        self.seal(archive, batch, relations, cursors, None).await?;
        let from = batch.first_offset.max(Offset(mark.begin_offset));
        let mut reader = SpoolReader::open_tailing(&self.spool_dir, from, durable.clone())?;
        if batch.first.is_none() {
            batch.first = Some((mark.position.clone(), mark.commit_time));
            batch.started = Some(Instant::now());
        }
        while reader.position() < end {
            let Some((_, event)) = reader.try_next()? else {
                return Err(ArchiveError::Format(format!(
                    "spool offset {}: the transaction from {} ends before its durable Commit",
                    reader.position(),
                    mark.begin_offset
                )));
            };
            batch.frames.write(reader.last_frame())?;
            batch.end_offset = reader.position();
            match &event {
                Event::Relation(r) => {
                    relations.insert(r.id, r.clone());
                }
                Event::Commit(c) => {
                    batch.last_position = Some(c.position.clone());
                    batch.last_commit_time = Some(c.commit_time);
                    batch.transactions += 1;
                }
                _ => {}
            }
            if batch.end_offset < end && batch.frames.raw_len() >= self.settings.object_bytes {
                batch
                    .last_position
                    .get_or_insert_with(|| mark.position.clone());
                self.seal(archive, batch, relations, cursors, Some(mark.clone()))
                    .await?;
                batch.first = Some((mark.position.clone(), mark.commit_time));
                batch.started = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Writes the batch's whole transactions as an object and its manifest, then starts the
    /// next batch where it ended. Nothing to write without a transaction or heartbeat.
    async fn seal(
        &self,
        archive: &Archive,
        batch: &mut Batch,
        relations: &BTreeMap<RelationId, Relation>,
        cursors: &Cursors,
        ends_in_transaction: Option<TxnMark>,
    ) -> Result<()> {
        let Some((first_position, first_commit_time)) = batch.first.clone() else {
            batch.started = None;
            return Ok(());
        };
        // The next object begins where this one ends, with the definitions in force there.
        let next = Batch::new(batch.end_offset, relations)?;
        let batch = std::mem::replace(batch, next);
        let (object_name, manifest_name) = object::names(batch.first_offset, batch.end_offset);
        let last_position = batch
            .last_position
            .clone()
            .ok_or_else(|| ArchiveError::Format("a batch without a position".into()))?;
        let bytes = batch.frames.finish(archive.key.as_ref(), &object_name)?;
        let manifest = Manifest {
            format: 1,
            object: object_name.clone(),
            first_offset: batch.first_offset.0,
            end_offset: batch.end_offset.0,
            first_position,
            last_position,
            first_commit_time,
            last_commit_time: batch.last_commit_time.unwrap_or(first_commit_time),
            transactions: batch.transactions,
            bytes: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
            encrypted: archive.key.is_some(),
            compression: "zstd".into(),
            ends_in_transaction,
        };
        let size = bytes.len() as u64;
        archive.put_object(&object_name, bytes).await?;
        archive.put_manifest(&manifest_name, &manifest).await?;
        cursors.save(CURSOR, Offset(manifest.end_offset))?;
        tracing::debug!(object = %object_name, transactions = manifest.transactions, bytes = size, "archive: object written");
        self.progress.send_modify(|p| {
            p.offset = Offset(manifest.end_offset);
            p.position = Some(manifest.last_position.clone());
            p.last_commit_time = Some(manifest.last_commit_time);
            p.objects += 1;
            p.bytes += size;
            p.failing = None;
        });
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use ferry_proto::{Begin, Commit, Lsn, samples};
    use ferry_spool::{SpoolWriter, WriterOptions};

    pub fn settings(dir: &std::path::Path) -> ArchiveSettings {
        ArchiveSettings {
            url: format!("file://{}", dir.display()),
            s3: Default::default(),
            key: None,
            object_bytes: 64 << 10,
            timeout: Duration::from_secs(3600),
        }
    }

    pub fn txn(spool: &mut SpoolWriter, n: u64, rows: i64) {
        let position = Position::Postgres(Lsn(n));
        spool
            .append(&Event::Begin(Begin {
                position: position.clone(),
                xid: n,
                commit_time: n as i64,
            }))
            .unwrap();
        for i in 0..rows {
            spool.append(&samples::insert(1, i, 200)).unwrap();
        }
        spool
            .append(&Event::Commit(Commit {
                position,
                xid: n,
                commit_time: n as i64,
            }))
            .unwrap();
    }

    /// Archives the spool until its (dropped) writer's end.
    pub async fn archive_all(spool_dir: &std::path::Path, archive_dir: &std::path::Path) {
        let (writer, _) = SpoolWriter::open(spool_dir, WriterOptions::default()).unwrap();
        let durable = writer.subscribe();
        drop(writer);
        let (archiver, _) = Archiver::new(settings(archive_dir), spool_dir.to_owned());
        archiver
            .run(durable, CancellationToken::new())
            .await
            .unwrap();
    }

    /// A spool of three transactions: 10 (3 rows), 20 (about 400 KiB: several 64 KiB objects),
    /// 30 (3 rows).
    pub fn write_spool(dir: &std::path::Path) {
        let (mut spool, _) = SpoolWriter::open(dir, WriterOptions::default()).unwrap();
        spool
            .append(&Event::Relation(samples::relation(1)))
            .unwrap();
        txn(&mut spool, 10, 3);
        txn(&mut spool, 20, 2000);
        txn(&mut spool, 30, 3);
        spool.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use ferry_proto::samples;
    use ferry_spool::{SpoolWriter, WriterOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_transaction_is_cut_into_objects_and_a_restart_inside_it_continues_it() {
        let spool_dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = SpoolWriter::open(spool_dir.path(), WriterOptions::default()).unwrap();
        spool
            .append(&Event::Relation(samples::relation(1)))
            .unwrap();
        txn(&mut spool, 10, 3);
        txn(&mut spool, 20, 2000); // about 400 KiB: several 64 KiB objects
        txn(&mut spool, 30, 3);
        spool.commit().unwrap();
        drop(spool);

        let whole = tempfile::tempdir().unwrap();
        archive_all(spool_dir.path(), whole.path()).await;
        let archive = Archive::open(&settings(whole.path())).unwrap();
        let manifests = archive.manifests().await.unwrap();
        let cut = manifests
            .iter()
            .filter(|m| m.ends_in_transaction.is_some())
            .count();
        assert!(cut >= 4, "{manifests:#?}");
        crate::store::check_chain(&manifests).unwrap();
        assert_eq!(manifests.iter().map(|m| m.transactions).sum::<u64>(), 3);

        // An archiver that stopped after the second piece of the large transaction: the next
        // one continues it, and the chain ends the same, holding the same events.
        let again = tempfile::tempdir().unwrap();
        archive_all(spool_dir.path(), again.path()).await;
        let resumed = Archive::open(&settings(again.path())).unwrap();
        let names = resumed.manifest_names().await.unwrap();
        let second_cut = manifests
            .iter()
            .position(|m| m.ends_in_transaction.is_some())
            .unwrap()
            + 1;
        for name in &names[second_cut + 1..] {
            resumed.delete(name).await.unwrap();
            resumed
                .delete(&name.replace(".json", ".ferry"))
                .await
                .unwrap();
        }
        let left = resumed.manifests().await.unwrap();
        assert!(left.last().unwrap().ends_in_transaction.is_some());
        archive_all(spool_dir.path(), again.path()).await;
        let after = resumed.manifests().await.unwrap();
        crate::store::check_chain(&after).unwrap();
        assert_eq!(
            after.last().unwrap().end_offset,
            manifests.last().unwrap().end_offset
        );
        let events = |a: Archive, ms: Vec<Manifest>| async move {
            let mut out = Vec::new();
            for m in &ms {
                out.extend(
                    crate::restore::read_object(&a, m)
                        .await
                        .unwrap()
                        .into_iter()
                        .filter(|e| !matches!(e, Event::Relation(_))),
                );
            }
            out
        };
        assert_eq!(
            events(resumed, after).await,
            events(archive, manifests).await
        );
    }
}

#[cfg(test)]
mod restore_tests {
    use super::tests_support::*;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_ends_before_a_transaction_the_archive_holds_only_part_of() {
        let spool_dir = tempfile::tempdir().unwrap();
        write_spool(spool_dir.path());
        let dir = tempfile::tempdir().unwrap();
        archive_all(spool_dir.path(), dir.path()).await;
        let archive = Archive::open(&settings(dir.path())).unwrap();
        // Cut the archive right after the first piece of the large transaction.
        let manifests = archive.manifests().await.unwrap();
        let cut = manifests
            .iter()
            .position(|m| m.ends_in_transaction.is_some())
            .unwrap();
        for m in &manifests[cut + 1..] {
            archive
                .delete(&m.object.replace(".ferry", ".json"))
                .await
                .unwrap();
            archive.delete(&m.object).await.unwrap();
        }
        let target = crate::restore::Target::Latest;
        let plan = crate::restore::plan(&archive, &target).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let (stopped, _) = crate::restore::to_spool(
            &archive,
            &plan,
            &target,
            &|_, _| true,
            out.path(),
            &|_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(stopped.transactions, 1);
        assert_eq!(
            stopped.position,
            Some(Position::Postgres(ferry_proto::Lsn(10)))
        );
        let events: Vec<Event> = ferry_spool::read_all(out.path(), ferry_spool::Offset(0))
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        // Transaction 10 whole, nothing of 20.
        let begins = events
            .iter()
            .filter(|e| matches!(e, Event::Begin(_)))
            .count();
        let inserts = events
            .iter()
            .filter(|e| matches!(e, Event::Insert(_)))
            .count();
        assert_eq!((begins, inserts), (1, 3), "{events:?}");
    }
}
