//! Base backups: a consistent copy of the captured tables at a known source position, stored in
//! the archive as chunks (objects in the log's format: frames, zstd, optional encryption,
//! crc32c) and committed by a manifest written after the last chunk. A restore to a point after
//! the position starts from the newest such copy and replays only the log after it, and
//! retention can delete the log before the oldest base backup it keeps.
//!
//! Names: `base/<id>/<n:06>.ferry` for the chunks, `base/<id>/backup.json` for the manifest;
//! `<id>` is the UTC time the backup started (`20261203T174501.123Z`), so ids sort in time.

use ferry_proto::{Event, Position};
use serde::{Deserialize, Serialize};

use crate::error::{ArchiveError, Result};
use crate::object;
use crate::store::Archive;

/// What a base backup holds, and where it stands in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseManifest {
    pub format: u8,
    pub id: String,
    /// Every transaction committed at or before this position is in the copy, none after.
    pub position: Position,
    /// The source server's clock when the snapshot was taken (µs since the epoch): every
    /// transaction in the copy committed at or before it.
    pub snapshot_time: i64,
    /// When the backup started and finished, on ferry's clock (µs since the epoch).
    pub started: i64,
    pub finished: i64,
    pub tables: Vec<TableRows>,
    pub rows: u64,
    pub chunks: Vec<Chunk>,
    /// Stored bytes, all chunks.
    pub bytes: u64,
    pub encrypted: bool,
    pub compression: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

/// One stored chunk: its name, size and crc32c, and how many events it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub object: String,
    pub bytes: u64,
    pub crc32c: u32,
    pub events: u64,
}

impl BaseManifest {
    /// The manifest's own name.
    pub fn name(&self) -> String {
        manifest_name(&self.id)
    }
}

pub fn manifest_name(id: &str) -> String {
    format!("base/{id}/backup.json")
}

/// The id of a base backup started at `micros` (µs since the epoch, UTC).
pub fn id_at(micros: i64) -> String {
    let (y, m, d, h, min, s, us) = ferry_proto::civil::utc(micros);
    format!("{y:04}{m:02}{d:02}T{h:02}{min:02}{s:02}.{:03}Z", us / 1000)
}

/// Writes one base backup: events in, chunks out as they fill, the manifest last.
#[derive(Debug)]
pub struct BaseWriter {
    archive: Archive,
    id: String,
    started: i64,
    chunk_bytes: usize,
    frames: Vec<u8>,
    events: u64,
    chunks: Vec<Chunk>,
}

impl BaseWriter {
    /// A new base backup, started now; chunks hold about `chunk_bytes` of frames each.
    pub fn new(archive: Archive, chunk_bytes: usize) -> BaseWriter {
        let started = ferry_proto::civil::now_micros();
        BaseWriter {
            archive,
            id: id_at(started),
            started,
            chunk_bytes: chunk_bytes.max(1 << 16),
            frames: Vec::new(),
            events: 0,
            chunks: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the next events of the copy, storing a chunk each time one fills.
    pub async fn write(&mut self, events: &[Event]) -> Result<()> {
        for e in events {
            ferry_proto::frame::encode(e, &mut self.frames)
                .map_err(|e| ArchiveError::Format(format!("base backup {}: {e}", self.id)))?;
            self.events += 1;
        }
        if self.frames.len() >= self.chunk_bytes {
            self.store_chunk().await?;
        }
        Ok(())
    }

    async fn store_chunk(&mut self) -> Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let name = format!("base/{}/{:06}.ferry", self.id, self.chunks.len());
        let bytes = object::seal(&self.frames, self.archive.key.as_ref(), &name)?;
        let chunk = Chunk {
            object: name.clone(),
            bytes: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
            events: self.events,
        };
        self.archive.put_object(&name, bytes).await?;
        self.chunks.push(chunk);
        self.frames.clear();
        self.events = 0;
        Ok(())
    }

    /// Stores the last chunk and commits the backup with its manifest.
    pub async fn finish(
        mut self,
        position: Position,
        snapshot_time: i64,
        tables: Vec<(String, u64)>,
    ) -> Result<BaseManifest> {
        self.store_chunk().await?;
        let tables: Vec<TableRows> = tables
            .into_iter()
            .map(|(table, rows)| TableRows { table, rows })
            .collect();
        let manifest = BaseManifest {
            format: 1,
            id: self.id.clone(),
            position,
            snapshot_time,
            started: self.started,
            finished: ferry_proto::civil::now_micros(),
            rows: tables.iter().map(|t| t.rows).sum(),
            tables,
            bytes: self.chunks.iter().map(|c| c.bytes).sum(),
            chunks: self.chunks,
            encrypted: self.archive.key.is_some(),
            compression: "zstd".into(),
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ArchiveError::Format(format!("base manifest: {e}")))?;
        self.archive.put_new(&manifest.name(), text).await?;
        Ok(manifest)
    }
}

/// The events of a base backup's chunk, after checking it against its manifest entry.
pub async fn read_chunk(archive: &Archive, chunk: &Chunk) -> Result<Vec<Event>> {
    let events = archive
        .read_checked(&chunk.object, chunk.bytes, chunk.crc32c)
        .await?;
    if events.len() as u64 != chunk.events {
        return Err(ArchiveError::Damaged {
            object: chunk.object.clone(),
            reason: format!(
                "it holds {} events, its manifest says {}",
                events.len(),
                chunk.events
            ),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_time_and_read_as_utc() {
        assert_eq!(id_at(0), "19700101T000000.000Z");
        // 2026-12-03 17:45:01.123456 UTC
        assert_eq!(id_at(1_796_319_901_123_456), "20261203T174501.123Z");
        let a = id_at(1_796_319_901_123_456);
        let b = id_at(1_796_319_901_124_456);
        assert!(a < b);
    }
}
