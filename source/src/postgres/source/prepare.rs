//! Before the PostgreSQL source streams: the server's prerequisites, keyless tables, the
//! publication, the slot (and the initial snapshot for a new one), and the check that the spool
//! belongs to this server, database and slot.

use super::*;

/// Which source a spool belongs to: a spool holds one source's positions, and positions of
/// another cluster (or of another slot) mean nothing in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceIdentity {
    /// `IDENTIFY_SYSTEM`'s system identifier: the same on a primary and its physical standbys,
    /// so a failover keeps it.
    pub system_id: String,
    pub database: String,
    pub slot: String,
    /// The server's timeline when the spool was written: a promoted standby (a failover) has
    /// the same system identifier on a later timeline. Not part of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
}

impl SourceIdentity {
    fn same_source(&self, other: &SourceIdentity) -> bool {
        (&self.system_id, &self.database, &self.slot)
            == (&other.system_id, &other.database, &other.slot)
    }
}

const IDENTITY_FILE: &str = "source.json";

/// Records the source's identity in a new spool, or checks that it matches the recorded one.
/// Returns the recorded timeline when the server is now on another one (it was promoted).
pub fn check_identity(dir: &Path, id: &SourceIdentity) -> Result<Option<u32>> {
    let path = dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let recorded: SourceIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!(
                    "{} is not a ferry source identity: {e}",
                    path.display()
                ))
            })?;
            if !recorded.same_source(id) {
                return Err(Error::Config(format!(
                    "the spool in {} was written from PostgreSQL system {} database {:?} slot {:?}, \
                     but the source is system {} database {:?} slot {:?}: give this source its own \
                     spool directory (or, to start over, empty this one)",
                    dir.display(),
                    recorded.system_id,
                    recorded.database,
                    recorded.slot,
                    id.system_id,
                    id.database,
                    id.slot
                )));
            }
            Ok(match (recorded.timeline, id.timeline) {
                (Some(old), Some(new)) if old != new => Some(old),
                _ => None,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            record_identity(dir, id)?;
            Ok(None)
        }
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Writes the spool's source identity (durably, replacing any).
pub fn record_identity(dir: &Path, id: &SourceIdentity) -> Result<()> {
    let path = dir.join(IDENTITY_FILE);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(id)
        .map_err(|e| Error::Fatal(format!("encode source identity: {e}")))?;
    fs::write(&tmp, text)
        .and_then(|_| fs::File::open(&tmp)?.sync_all())
        .and_then(|_| fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

impl PgSource {
    /// Checks the server, sets up publication and slot (and the snapshot for a new slot), and
    /// returns the replication connection ready to start streaming.
    /// `None` when shutdown interrupted the initial snapshot.
    pub(super) async fn prepare(
        &mut self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<Option<(ReplicationConn, i32)>> {
        let (version, found) =
            crate::postgres::prerequisites(client, &self.settings.params.dbname).await?;
        crate::capture::prerequisite::refuse(&found)?;
        // Before anything is created: a table without a replica identity must not be published
        // in a way that fails the application's updates and deletes.
        let keyless = keyless::find(client, &self.settings.filter).await?;
        let excluded = match self.settings.keyless {
            Keyless::Error if !keyless.is_empty() => {
                return Err(Error::Config(keyless::refusal(&keyless)));
            }
            Keyless::Full => {
                keyless::make_full(client, &keyless).await?;
                Vec::new()
            }
            Keyless::Exclude => keyless,
            _ => Vec::new(),
        };
        slot::ensure_publication(
            client,
            &self.settings.publication,
            &self.settings.filter,
            version,
            &excluded,
        )
        .await?;
        let mut repl = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ReplicationConn::connect(&self.settings.params),
        )
        .await
        .map_err(|_| stalled("the replication connection did not become ready"))??;
        let system = repl.simple_query("IDENTIFY_SYSTEM").await?;
        let system_id = system
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM returned no system id".into()))?;
        let timeline: Option<u32> = system
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|t| t.parse().ok());
        let identity = SourceIdentity {
            system_id,
            database: self.settings.params.dbname.clone(),
            slot: self.settings.slot.clone(),
            timeline,
        };
        let promoted = check_identity(self.writer.spool().dir(), &identity)?;
        // Said in the errors below: why a slot may be missing or behind.
        let failover = match (promoted, timeline) {
            (Some(old), Some(new)) => {
                tracing::warn!(
                    from = old,
                    to = new,
                    "the source server is on timeline {new}, ferry's spool was written on \
                     timeline {old}: it was promoted from a standby (a failover)"
                );
                format!(
                    "the server is on timeline {new} but the spool was written on timeline \
                     {old}: it is a promoted standby, and logical slots are not copied to \
                     standbys (before PostgreSQL 17's failover slots). "
                )
            }
            _ => String::new(),
        };
        let slot_name = &self.settings.slot;
        let mut state = slot::inspect_slot(client, slot_name, &self.settings.params.dbname).await?;
        if state.is_some() && self.settings.snapshot && self.resume_from.is_none() {
            // The slot exists but the spool holds no completed snapshot: an earlier start died
            // during the initial copy, and its exported snapshot is gone. Start the copy over with
            // a new slot rather than stream from a slot whose earlier rows were never copied.
            tracing::warn!(slot = %slot_name, "the initial snapshot was never completed; recreating the slot and copying again");
            // WAIT (for a walsender still holding it to go) exists from PostgreSQL 13.
            repl.simple_query(&format!(
                "DROP_REPLICATION_SLOT {}{}",
                slot::quote_ident(slot_name),
                if version >= 130_000 { " WAIT" } else { "" }
            ))
            .await?;
            state = None;
        }
        match state {
            None => {
                if let Some(resume) = self.resume_from {
                    return Err(Error::Gap(format!(
                        "{failover}replication slot {slot_name:?} does not exist, but the spool \
                         holds changes up to {}: the changes since then are gone. Recover by \
                         clearing the spool directory and the replicas and starting again with \
                         snapshot = \"initial\" (or restore the replicas from the archive and \
                         then start a new spool)",
                        Lsn(resume)
                    )));
                }
                let created = slot::create_slot(
                    &mut repl,
                    slot_name,
                    false,
                    self.settings.snapshot,
                    self.settings.failover_slot,
                    version,
                )
                .await?;
                if self.settings.snapshot {
                    let done = crate::postgres::snapshot::copy_all(
                        &self.settings,
                        created.snapshot_name.as_deref().unwrap_or_default(),
                        created.consistent_point,
                        self.writer.spool_mut(),
                        shutdown,
                    )
                    .await?;
                    if !done {
                        repl.close().await;
                        return Ok(None);
                    }
                }
                // Nothing committed before the consistent point is decoded.
                self.resume_from = Some(created.consistent_point);
                self.durable_ack = created.consistent_point;
                self.pending_ack = created.consistent_point;
            }
            Some(s) => {
                if let Some(pid) = s.active_pid {
                    return Err(Error::Server {
                        context: format!("replication slot {slot_name:?}"),
                        error: Box::new(crate::error::DbError {
                            severity: "ERROR".into(),
                            code: "55006".into(),
                            message: format!("the slot is in use by process {pid}"),
                            detail: None,
                            hint: Some("another ferry may be running with this slot".into()),
                        }),
                    });
                }
                if let (Some(resume), Some(confirmed)) = (self.resume_from, s.confirmed_flush)
                    && confirmed > resume
                {
                    return Err(Error::Gap(format!(
                        "{failover}replication slot {slot_name:?} has confirmed {} but the spool only holds \
                         changes up to {}: another consumer advanced the slot, or the spool was \
                         restored from an older copy, and the changes in between are gone. \
                         Recover by dropping the slot (SELECT pg_drop_replication_slot('{slot_name}')), \
                         clearing the spool directory and the replicas, and starting again with \
                         snapshot = \"initial\"",
                        Lsn(confirmed),
                        Lsn(resume)
                    )));
                }
                if self.settings.failover_slot && !s.failover {
                    if version < 170_000 {
                        return Err(slot::failover_needs_17(version));
                    }
                    slot::make_failover(&mut repl, slot_name).await?;
                }
                if self.resume_from.is_none() {
                    // snapshot = "never" on an existing slot: stream from where it stands.
                    let from = s.confirmed_flush.unwrap_or(0);
                    self.durable_ack = from;
                    self.pending_ack = from;
                }
            }
        }
        if promoted.is_some() {
            // The slot is here on the new timeline (a failover slot): the spool now follows it.
            record_identity(self.writer.spool().dir(), &identity)?;
        }
        Ok(Some((repl, version)))
    }
}
