//! Named, durable cursors: how far each consumer of the spool has made its work durable.
//!
//! A sink saves its cursor only after its own checkpoint is durable on its target, so a cursor
//! never runs ahead of what a restart will resume from; segments below every cursor can go.
//! Each cursor is a small file `cursors/<name>` holding the offset in decimal, replaced atomically
//! (write, fsync, rename, fsync the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Offset, SpoolError, segment};

/// The cursor directory of one spool.
#[derive(Debug, Clone)]
pub struct Cursors {
    dir: PathBuf,
}

impl Cursors {
    pub fn new(spool_dir: impl AsRef<Path>) -> Self {
        Self {
            dir: spool_dir.as_ref().join("cursors"),
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf, SpoolError> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !ok {
            return Err(SpoolError::BadCursor {
                path: self.dir.join(name),
                reason: "cursor names use letters, digits, '-', '_' and '.'".into(),
            });
        }
        Ok(self.dir.join(name))
    }

    /// Durably records `offset` for `name`.
    pub fn save(&self, name: &str, offset: Offset) -> Result<(), SpoolError> {
        let path = self.path(name)?;
        fs::create_dir_all(&self.dir).map_err(|e| SpoolError::io("create", &self.dir, e))?;
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(|e| SpoolError::io("create", &tmp, e))?;
        writeln!(f, "{offset}")
            .and_then(|_| f.sync_all())
            .map_err(|e| SpoolError::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| SpoolError::io("rename", &tmp, e))?;
        segment::sync_dir(&self.dir)
    }

    /// The saved offset of `name`, if any.
    pub fn load(&self, name: &str) -> Result<Option<Offset>, SpoolError> {
        let path = self.path(name)?;
        match fs::read_to_string(&path) {
            Ok(s) => s.parse().map(Some).map_err(|_| SpoolError::BadCursor {
                path,
                reason: format!("{:?} is not an offset", s.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SpoolError::io("read", &path, e)),
        }
    }

    /// Every saved cursor, sorted by name.
    pub fn all(&self) -> Result<Vec<(String, Offset)>, SpoolError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SpoolError::io("list", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("list", &self.dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.ends_with(".tmp") {
                continue;
            }
            if let Some(offset) = self.load(&name)? {
                out.push((name, offset));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The lowest saved offset: nothing before it is needed by any consumer with a cursor.
    pub fn min(&self) -> Result<Option<Offset>, SpoolError> {
        Ok(self.all()?.into_iter().map(|(_, o)| o).min())
    }
}
