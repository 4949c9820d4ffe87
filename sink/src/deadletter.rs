//! The dead-letter file of a sink: events that failed permanently under `on_error =
//! "dead_letter"`, one JSON object a line with the error, in `<spool dir>/dead-letter/<sink>.jsonl`.
//! Each line is fsynced before the sink goes on, so a skipped event is never lost silently.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_proto::Event;
use serde::Serialize;

use crate::destination::{DeadLetters, Refusal};
use crate::error::{Result, SinkError};

/// The dead-letter file of one sink.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    file: Option<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    sink: &'a str,
    position: &'a str,
    xid: u64,
    table: &'a str,
    key: &'a str,
    error: &'a str,
    event: Option<&'a Event>,
}

impl DeadLetters for DeadLetterFile {
    fn write<'a>(
        &'a mut self,
        sink: &'a str,
        r: &'a Refusal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(async move { self.append(sink, r) })
    }

    fn place(&self) -> String {
        format!("file {}", self.path.display())
    }
}

impl DeadLetterFile {
    pub fn new(spool_dir: &Path, sink: &str) -> Self {
        DeadLetterFile {
            path: spool_dir.join("dead-letter").join(format!("{sink}.jsonl")),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and fsyncs it.
    pub fn append(&mut self, sink: &str, r: &Refusal) -> Result<()> {
        let ctx = |op: &str| format!("{op} {}", self.path.display());
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir).map_err(|e| SinkError::io(ctx("create"), e))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| SinkError::io(ctx("open"), e))?;
            self.file = Some(f);
        }
        let mut line = serde_json::to_vec(&Line {
            sink,
            position: &r.position,
            xid: r.xid,
            table: &r.table,
            key: &r.key,
            error: &r.error,
            event: r.event.as_ref(),
        })
        .map_err(|e| SinkError::Fatal(format!("encode dead letter: {e}")))?;
        line.push(b'\n');
        let path = self.path.clone();
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| SinkError::Fatal("dead-letter file not open".into()))?;
        file.write_all(&line)
            .and_then(|_| file.sync_data())
            .map_err(|e| SinkError::io(format!("write {}", path.display()), e))
    }
}
