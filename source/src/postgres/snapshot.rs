//! The initial copy: every captured table read in the slot's exported snapshot, so the copy and the
//! stream that follows meet exactly at the slot's consistent point: a change committed before it
//! is in the copy, a change committed after it is in the stream, none is in both.
//!
//! Several tables are copied at once, each worker on its own connection that imports the
//! snapshot (`SET TRANSACTION SNAPSHOT`) and reads with `COPY … TO STDOUT` (text format: the
//! values then parse exactly as the stream's do). Workers hand batches of rows to the one spool
//! writer through a bounded channel, so memory stays bounded whatever the table sizes.
//!
//! The copy is written to the spool as one transaction positioned just below the consistent point
//! (each table announced by its Relation, then its rows as inserts). If ferry dies during the
//! copy, the incomplete transaction is cut from the spool at the next start and the copy starts
//! over with a new slot (see `source`): never a silently partial replica.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::{
    Begin, Column, Commit, Event, Insert, Lsn, Position, Relation, RelationId, ReplicaIdentity,
    Value,
};
use ferry_spool::SpoolWriter;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog::TypeCatalog;
use super::slot::{quote_ident, quote_literal};
use super::source::{SourceSettings, stderr_is_terminal};
use super::types;
use crate::copy::{BASE_BACKUP, Copied, CopyKind, CopyOutput, INITIAL, SpoolOutput};
use crate::error::{Error, Result};

/// Rows per batch handed from a worker to the writer, and batches in flight per worker.
const BATCH_ROWS: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

/// A table to copy.
#[derive(Debug, Clone)]
struct Table {
    oid: u32,
    schema: String,
    name: String,
    replident: String,
}

#[derive(Debug, Default)]
struct Progress {
    rows: AtomicU64,
    tables_done: AtomicU64,
}

/// The initial snapshot: every published table that passes the filter copied into the spool as
/// one transaction at the slot's consistent point. Returns false if `shutdown` came first: the
/// copy is then left incomplete (its transaction has no Commit), to be cut and started over at
/// the next start.
pub async fn copy_all(
    settings: &SourceSettings,
    snapshot_name: &str,
    consistent_point: u64,
    spool: &mut SpoolWriter,
    shutdown: &CancellationToken,
) -> Result<bool> {
    // The snapshot holds every transaction whose commit record ends at or before the slot's
    // consistent point: that is the point's meaning as a position.
    let position = Position::Postgres(Lsn(consistent_point));
    let now = super::replication::unix_now_micros();
    spool.append(&Event::Begin(Begin {
        position: position.clone(),
        xid: 0,
        commit_time: now,
    }))?;
    let mut out = SpoolOutput(spool);
    let copied = copy_tables(
        settings,
        snapshot_name,
        &position,
        &mut out,
        shutdown,
        INITIAL,
    )
    .await?;
    if copied.is_none() {
        return Ok(false);
    }
    spool.append(&Event::Commit(Commit {
        position,
        xid: 0,
        commit_time: now,
    }))?;
    tokio::task::block_in_place(|| spool.commit())?;
    Ok(true)
}

/// A position fixed on the source: a temporary slot's consistent point and its exported
/// snapshot, which stays valid while `repl` is left idle (closing it drops the slot).
#[derive(Debug)]
pub struct Exported {
    pub repl: super::replication::ReplicationConn,
    pub position: Position,
    pub snapshot_name: String,
    /// The server's clock just after: every transaction the snapshot holds committed before it.
    pub snapshot_time: i64,
}

/// Creates a temporary slot that exports its snapshot (for a base backup or a drill).
pub async fn export_snapshot(settings: &SourceSettings, purpose: &'static str) -> Result<Exported> {
    let mut repl = super::replication::ReplicationConn::connect(&settings.params).await?;
    let version = server_version(&mut repl).await?;
    let name = format!(
        "ferry_{purpose}_{}_{}",
        std::process::id(),
        super::replication::unix_now_micros()
    );
    let (clock, _conn_task) = settings
        .params
        .tls
        .connect_client(&settings.params.pg_config, purpose)
        .await?;
    let created = super::slot::create_slot(&mut repl, &name, true, true, false, version).await?;
    // Commit times are the server's: its clock, read after the slot's consistent point.
    let snapshot_time: i64 = clock
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .await?
        .get(0);
    Ok(Exported {
        repl,
        position: Position::Postgres(Lsn(created.consistent_point)),
        snapshot_name: created
            .snapshot_name
            .ok_or_else(|| Error::Protocol("the slot exported no snapshot".into()))?,
        snapshot_time,
    })
}

/// A base backup: the same copy, from the exported snapshot of a temporary slot created for it
/// (dropped when its connection closes), into `out`, while the stream keeps running. `None`
/// when `shutdown` came first.
pub async fn base_backup(
    settings: &SourceSettings,
    out: &mut impl CopyOutput,
    shutdown: &CancellationToken,
) -> Result<Option<Copied>> {
    let exported = export_snapshot(settings, "backup").await?;
    let tables = copy_tables(
        settings,
        &exported.snapshot_name,
        &exported.position,
        out,
        shutdown,
        BASE_BACKUP,
    )
    .await;
    // Closing the replication connection ends the exported snapshot and drops the slot.
    exported.repl.close().await;
    Ok(tables?.map(|tables| Copied {
        position: exported.position,
        snapshot_time: exported.snapshot_time,
        tables,
    }))
}

/// `SHOW server_version_num` over a replication connection (walsenders answer SHOW).
async fn server_version(repl: &mut super::replication::ReplicationConn) -> Result<i32> {
    let rows = repl.simple_query("SHOW server_version_num").await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol("SHOW server_version_num returned no number".into()))
}

/// Copies every published table that passes the filter, read in the exported snapshot, into
/// `out`. Rows per table, or `None` if `shutdown` came first.
pub async fn copy_tables(
    settings: &SourceSettings,
    snapshot_name: &str,
    position: &Position,
    out: &mut impl CopyOutput,
    shutdown: &CancellationToken,
    kind: CopyKind,
) -> Result<Option<Vec<(String, u64)>>> {
    if snapshot_name.is_empty() {
        return Err(Error::Protocol("the slot exported no snapshot".into()));
    }
    let first = connect(settings, snapshot_name).await?;
    let (tables, foreign_keys) = tables_to_copy(&first, settings).await?;
    let total = tables.len();
    let label = kind.label;
    tracing::info!(
        tables = total,
        workers = settings.snapshot_workers.min(total).max(1),
        %position,
        "{label}: starting"
    );

    kind.progress.start(total as u64);
    let queue = Arc::new(Mutex::new(tables.into_iter().collect::<VecDeque<_>>()));
    let progress = Arc::new(Progress::default());
    let workers = if foreign_keys == 0 {
        settings.snapshot_workers.clamp(1, total.max(1))
    } else {
        tracing::info!(
            foreign_keys,
            "{label}: the tables have foreign keys; copying parents first, one table at a time"
        );
        1
    };
    let (tx, mut rx) = mpsc::channel::<Vec<Event>>(BATCHES_IN_FLIGHT * workers);
    let mut clients = vec![first];
    while clients.len() < workers {
        clients.push(connect(settings, snapshot_name).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (queue, progress, tx) = (queue.clone(), progress.clone(), tx.clone());
        let position = position.clone();
        tasks.spawn(async move {
            let res = worker(&client, queue, progress, tx, position, label).await;
            let _ = client.batch_execute("COMMIT").await;
            res
        });
    }
    drop(tx);

    let reporter = Reporter {
        started: Instant::now(),
        terminal: stderr_is_terminal(),
        total,
        progress: progress.clone(),
        kind,
    };
    let mut tick = tokio::time::interval(if reporter.terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    });
    tick.tick().await;
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(events) => out.write(events).await?,
                None => break,
            },
            _ = tick.tick() => reporter.report(false),
            _ = shutdown.cancelled() => {
                tasks.abort_all();
                if reporter.terminal {
                    eprintln!();
                }
                kind.progress.finish();
                tracing::warn!("{label} interrupted by shutdown; it starts over at the next start");
                return Ok(None);
            }
        }
    }
    let mut copied = Vec::with_capacity(total);
    while let Some(res) = tasks.join_next().await {
        copied.extend(res.map_err(|e| Error::Fatal(format!("{label} worker: {e}")))??);
    }
    reporter.report(true);
    kind.progress.finish();
    let rows = progress.rows.load(Ordering::Relaxed);
    let secs = reporter.started.elapsed().as_secs_f64();
    tracing::info!(
        tables = total,
        rows,
        seconds = secs,
        rows_per_sec = (rows as f64 / secs.max(1e-3)) as u64,
        "{label}: complete"
    );
    Ok(Some(copied))
}

/// The published tables that pass the filter, parents before children, and how many foreign
/// keys link them.
async fn tables_to_copy(client: &Client, settings: &SourceSettings) -> Result<(Vec<Table>, usize)> {
    let tables: Vec<Table> = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text
             FROM pg_publication_tables p
             JOIN pg_namespace n ON n.nspname = p.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = $1 ORDER BY pg_relation_size(c.oid) DESC, 2, 3",
            &[&settings.publication],
        )
        .await?
        .iter()
        .map(|r| Table {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            replident: r.get(3),
        })
        .filter(|t| settings.filter.accepts(&t.schema, &t.name))
        .collect();
    // Foreign keys among the copied tables: parents are copied before children, one table at a
    // time, so a replica applying the copy in order (without session_replication_role) never
    // meets a row whose parent it has not seen.
    let edges: Vec<(u32, u32)> = client
        .query(
            "SELECT conrelid, confrelid FROM pg_constraint
             WHERE contype = 'f' AND conrelid <> confrelid",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .filter(|(c, p)| tables.iter().any(|t| t.oid == *c) && tables.iter().any(|t| t.oid == *p))
        .collect();
    let foreign_keys = edges.len();
    Ok((parents_first(tables, &edges), foreign_keys))
}

/// The copy's progress, for people and `/metrics`: a status line on a terminal, a log line
/// every 10 s otherwise.
struct Reporter {
    started: Instant,
    terminal: bool,
    total: usize,
    progress: Arc<Progress>,
    kind: CopyKind,
}

impl Reporter {
    fn report(&self, final_line: bool) {
        let progress = &self.progress;
        let total = self.total;
        self.kind.progress.set(
            progress.tables_done.load(Ordering::Relaxed),
            progress.rows.load(Ordering::Relaxed),
        );
        let rows = progress.rows.load(Ordering::Relaxed);
        let done = progress.tables_done.load(Ordering::Relaxed);
        let rate = (rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3)) as u64;
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{}: {done}/{total} tables, {rows} rows, {rate} rows/s",
                self.kind.label
            );
            if final_line {
                let _ = writeln!(err);
            }
        } else if !final_line {
            tracing::info!(
                tables_done = done,
                tables = total,
                rows,
                rows_per_sec = rate,
                "{}: copying",
                self.kind.label
            );
        }
    }
}

/// Orders tables so that every table comes after the tables it references (`edges` are
/// (child, parent) OIDs); tables in a reference cycle keep their order after the rest.
fn parents_first(mut tables: Vec<Table>, edges: &[(u32, u32)]) -> Vec<Table> {
    let mut out = Vec::with_capacity(tables.len());
    while !tables.is_empty() {
        let ready = tables.iter().position(|t| {
            !edges
                .iter()
                .any(|(c, p)| *c == t.oid && tables.iter().any(|o| o.oid == *p))
        });
        out.push(tables.remove(ready.unwrap_or(0)));
    }
    out
}

/// A connection inside a transaction that sees the exported snapshot.
pub async fn connect(settings: &SourceSettings, snapshot_name: &str) -> Result<Client> {
    let params = &settings.params;
    let (client, _conn_task) = params
        .tls
        .connect_client(&params.pg_config, "snapshot")
        .await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
             SET TRANSACTION SNAPSHOT {};
             SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL TimeZone = 'UTC';
             SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL extra_float_digits = 3;
             SET LOCAL bytea_output = 'hex';",
            quote_literal(snapshot_name)
        ))
        .await?;
    Ok(client)
}

async fn worker(
    client: &Client,
    queue: Arc<Mutex<VecDeque<Table>>>,
    progress: Arc<Progress>,
    tx: mpsc::Sender<Vec<Event>>,
    position: Position,
    label: &'static str,
) -> Result<Vec<(String, u64)>> {
    let mut types = TypeCatalog::default();
    let mut copied = Vec::new();
    loop {
        let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
        let Some(table) = next else {
            return Ok(copied);
        };
        let started = Instant::now();
        let (relation, parse) = describe(client, &mut types, &table).await?;
        let id = relation.id;
        let qualified = relation.qualified_name();
        let cols: Vec<String> = relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let names: Vec<String> = relation
            .columns
            .iter()
            .map(|c| c.type_name.clone())
            .collect();
        // The whole definition first, so a sink creates the source's table (read in the
        // snapshot's transaction: the definition the rows were copied under).
        let mut head = Vec::with_capacity(2);
        if let Some(def) = super::table_def::describe(client, table.oid).await? {
            head.push(crate::table_def::message(&def, position.clone()));
        }
        head.push(Event::Relation(relation));
        send(&tx, head).await?;
        let sql = if cols.is_empty() {
            // COPY needs a column; a table without columns still has rows.
            format!(
                "COPY (SELECT FROM ONLY {}.{}) TO STDOUT",
                quote_ident(&table.schema),
                quote_ident(&table.name)
            )
        } else {
            format!(
                "COPY {}.{} ({}) TO STDOUT",
                quote_ident(&table.schema),
                quote_ident(&table.name),
                cols.join(", ")
            )
        };
        let stream = client.copy_out(&sql).await?;
        futures_util::pin_mut!(stream);
        let mut parser = CopyText::default();
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut batch_bytes = 0;
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk?;
            batch_bytes += chunk.len();
            parser.feed(&chunk, |fields| {
                if fields.len() != parse.len() {
                    return Err(Error::Protocol(format!(
                        "COPY of {qualified}: a row has {} fields, expected {}",
                        fields.len(),
                        parse.len()
                    )));
                }
                let new = fields
                    .iter()
                    .zip(&parse)
                    .zip(&names)
                    .map(|((f, &oid), name)| match f {
                        None => Value::Null,
                        Some(text) => types::from_text(oid, name, text),
                    })
                    .collect();
                batch.push(Event::Insert(Insert { relation: id, new }));
                Ok(())
            })?;
            if batch.len() >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
                rows += batch.len() as u64;
                progress
                    .rows
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                send(
                    &tx,
                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS)),
                )
                .await?;
                batch_bytes = 0;
            }
        }
        parser.finish()?;
        rows += batch.len() as u64;
        progress
            .rows
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        send(&tx, batch).await?;
        progress.tables_done.fetch_add(1, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            table = %qualified,
            rows,
            seconds = secs,
            rows_per_sec = (rows as f64 / secs.max(1e-3)) as u64,
            "{label}: table copied"
        );
        copied.push((qualified, rows));
    }
}

async fn send(tx: &mpsc::Sender<Vec<Event>>, batch: Vec<Event>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    tx.send(batch)
        .await
        .map_err(|_| Error::Fatal("snapshot writer stopped".into()))
}

/// The relation as pgoutput announces it: columns in attribute order (generated columns left out,
/// as pgoutput leaves them out), replica identity columns flagged as keys (all columns for
/// REPLICA IDENTITY FULL, none for NOTHING); and the type each column parses as.
async fn describe(
    client: &Client,
    types: &mut TypeCatalog,
    t: &Table,
) -> Result<(Relation, Vec<u32>)> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod,
                    coalesce(a.attnum = ANY(i.indkey), false), a.attnotnull
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND
                  (CASE WHEN $2 = 'i' THEN i.indisreplident ELSE i.indisprimary END)
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                   AND coalesce(to_jsonb(a) ->> 'attgenerated', '') = ''
             ORDER BY a.attnum",
            &[&t.oid, &t.replident],
        )
        .await?;
    let keys: Vec<(u32, i32)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    types.resolve(client, &keys).await?;
    let full = t.replident == "f";
    let mut parse = Vec::with_capacity(rows.len());
    let columns = rows
        .iter()
        .map(|r| {
            let key = full || (t.replident != "n" && r.get::<_, bool>(3));
            let info = types.get(r.get(1), r.get(2));
            parse.push(info.parse_oid);
            Column {
                name: r.get(0),
                type_id: r.get(1),
                type_modifier: r.get(2),
                type_name: info.name,
                key,
                nullable: !key,
            }
        })
        .collect();
    let relation = Relation {
        id: RelationId(u64::from(t.oid)),
        schema: t.schema.clone(),
        name: t.name.clone(),
        replica_identity: match t.replident.as_str() {
            "n" => ReplicaIdentity::Nothing,
            "f" => ReplicaIdentity::Full,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns,
    };
    Ok((relation, parse))
}

/// A parser of COPY's text format: rows end with `\n`, fields are separated by tabs, `\N` is
/// NULL, and backslash escapes (`\t`, `\n`, `\\`, octal `\123`, hex `\x41`, …) stand for bytes.
#[derive(Debug, Default)]
pub struct CopyText {
    carry: Vec<u8>,
}

impl CopyText {
    /// Parses every complete row in `chunk` (with what an earlier chunk left over).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(&[Option<Vec<u8>>]) -> Result<()>,
    ) -> Result<()> {
        let mut data = chunk;
        let joined;
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(chunk);
            joined = std::mem::take(&mut self.carry);
            data = &joined;
        }
        let mut fields = Vec::new();
        let mut start = 0;
        while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
            fields.clear();
            for f in data[start..start + nl].split(|&b| b == b'\t') {
                fields.push(unescape(f)?);
            }
            row(&fields)?;
            start += nl + 1;
        }
        self.carry.extend_from_slice(&data[start..]);
        Ok(())
    }

    /// Fails if the data ended inside a row.
    pub fn finish(&self) -> Result<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "COPY data ended inside a row ({} bytes left over)",
                self.carry.len()
            )))
        }
    }
}

fn unescape(f: &[u8]) -> Result<Option<Vec<u8>>> {
    if f == b"\\N" {
        return Ok(None);
    }
    if !f.contains(&b'\\') {
        return Ok(Some(f.to_vec()));
    }
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let Some(&c) = f.get(i + 1) else {
            return Err(Error::Protocol(
                "COPY field ends with a lone backslash".into(),
            ));
        };
        i += 2;
        out.push(match c {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match f.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            b'x' if f.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match f.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                v
            }
            other => other,
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let mut p = CopyText::default();
        let mut rows = Vec::new();
        for c in chunks {
            p.feed(c, |f| {
                rows.push(f.to_vec());
                Ok(())
            })?;
        }
        p.finish()?;
        Ok(rows)
    }

    #[test]
    fn copy_text_rows_fields_nulls_and_escapes() {
        let rows = parse_all(&[b"1\t\\N\ta\\tb\\\\c\\nd\n2\t\t\\101\\x42\\q\n"]).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some(b"1".to_vec()), None, Some(b"a\tb\\c\nd".to_vec())],
                vec![Some(b"2".to_vec()), Some(vec![]), Some(b"ABq".to_vec())],
            ]
        );
        // A row split across chunks.
        let rows = parse_all(&[b"1\tab", b"c\n2\t", b"x\n"]).unwrap();
        assert_eq!(rows[0][1], Some(b"abc".to_vec()));
        assert_eq!(rows[1][1], Some(b"x".to_vec()));
        assert!(parse_all(&[b"1\t2"]).is_err());
        assert!(parse_all(&[b"1\\\n"]).is_err());
    }

    proptest! {
        #[test]
        fn copy_text_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..4)) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let _ = parse_all(&refs);
        }

        #[test]
        fn escaped_text_round_trips(fields in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)), 1..5)) {
            let mut line = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                if i > 0 { line.push(b'\t'); }
                match f {
                    None => line.extend_from_slice(b"\\N"),
                    Some(bytes) => for &b in bytes {
                        match b {
                            b'\\' => line.extend_from_slice(b"\\\\"),
                            b'\t' => line.extend_from_slice(b"\\t"),
                            b'\n' => line.extend_from_slice(b"\\n"),
                            b'\r' => line.extend_from_slice(b"\\r"),
                            _ => line.push(b),
                        }
                    },
                }
            }
            line.push(b'\n');
            let rows = parse_all(&[&line]).unwrap();
            prop_assert_eq!(&rows[0], &fields);
        }
    }
}
