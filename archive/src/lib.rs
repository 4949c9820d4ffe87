//! ferry's archive: the spool's transactions kept as immutable, checksummed, compressed and
//! optionally encrypted objects in an object store, so that any database can be rebuilt as it
//! was at any archived transaction (`ferry restore`).
//!
//! - `archiver`: one more reader of the spool, writing objects of whole transactions.
//! - `object`: an object's bytes and its manifest.
//! - `store`: the object store, names, and the chain the objects form.
//! - `restore`: the chain read back to a target, into a spool a sink worker applies; `verify`.

pub mod archiver;
pub mod error;
pub mod object;
pub mod restore;
pub mod store;

use std::time::Duration;

pub use archiver::{ArchiveProgress, Archiver};
pub use error::ArchiveError;
pub use store::Archive;

/// How the archive is set up (`[archive]`).
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// `file:///dir` (or, later, `s3://bucket/prefix`).
    pub url: String,
    /// Encrypts every object when set.
    pub key: Option<object::Key>,
    /// An object is sealed once it holds this many bytes of frames…
    pub object_bytes: usize,
    /// …or once this long has passed since its first transaction.
    pub timeout: Duration,
}
