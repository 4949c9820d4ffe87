//! ferry's archive: the spool's transactions kept as immutable, checksummed, compressed and
//! optionally encrypted objects in an object store, so that any database can be rebuilt as it
//! was at any archived transaction (`ferry restore`).
//!
//! - `archiver`: one more reader of the spool, writing objects of whole transactions.
//! - `base`: base backups (a consistent copy at a known position, in chunks).
//! - `object`: an object's bytes and its manifest.
//! - `store`: the object store, names, and the chain the objects form.
//! - `retention`: `keep`, and deleting only what no kept restore point needs.
//! - `restore`: the chain read back to a target, into a spool a sink worker applies; `verify`.

pub mod archiver;
pub mod base;
pub mod error;
pub mod object;
pub mod restore;
pub mod retention;
pub mod store;

use std::time::Duration;

pub use archiver::{ArchiveProgress, Archiver};
pub use error::ArchiveError;
pub use store::Archive;

/// How the archive is set up (`[archive]`).
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// `file:///dir` or `s3://bucket/prefix`.
    pub url: String,
    /// For `s3://`: the endpoint of an S3-compatible store (AWS when `None`), region and
    /// credentials (from the environment's `AWS_*` when not set).
    pub s3: S3Settings,
    /// Encrypts every object when set.
    pub key: Option<object::Key>,
    /// An object is sealed once it holds this many bytes of frames…
    pub object_bytes: usize,
    /// …or once this long has passed since its first transaction.
    pub timeout: Duration,
}

/// An S3-compatible store's connection settings. `Debug` hides the secret.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}
