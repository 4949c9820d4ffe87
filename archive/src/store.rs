//! Where the archive lives: an object store (a local directory for `file://`), the names of its
//! objects and manifests, and the chain they form.

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload};

use crate::ArchiveSettings;
use crate::base::BaseManifest;
use crate::error::{ArchiveError, Result};
use crate::object::{self, Key, Manifest};
use ferry_proto::Event;

/// An archive: its store and, when encrypted, its key.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    /// The URL, for messages.
    pub url: String,
    pub key: Option<Key>,
}

impl Archive {
    /// Opens the archive the settings name (a `file://` directory is created if missing).
    pub fn open(settings: &ArchiveSettings) -> Result<Archive> {
        let url = settings.url.as_str();
        let store: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(ArchiveError::Config(format!(
                    "archive url {url}: a file:// URL needs an absolute path (file:///var/lib/ferry/archive)"
                )));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| ArchiveError::Config(format!("archive directory {dir}: {e}")))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(ArchiveError::Store)?,
            )
        } else if let Some(rest) = url.strip_prefix("s3://") {
            s3(rest, &settings.s3)?
        } else {
            return Err(ArchiveError::Config(format!(
                "archive url {url}: expected file:///dir or s3://bucket/prefix"
            )));
        };
        Ok(Archive {
            store,
            url: url.to_owned(),
            key: settings.key.clone(),
        })
    }

    /// Writes an object that must not exist yet. A data object left by an attempt that died
    /// before its manifest (which alone commits it) is replaced; a manifest is never replaced.
    pub async fn put_object(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = Path::from(name);
        match self.put_create(&path, bytes.clone()).await {
            Err(ArchiveError::Store(object_store::Error::AlreadyExists { .. })) => {
                let opts = PutOptions {
                    mode: PutMode::Overwrite,
                    ..PutOptions::default()
                };
                self.store
                    .put_opts(&path, PutPayload::from(bytes), opts)
                    .await?;
                Ok(())
            }
            other => other,
        }
    }

    /// Commits an object by writing its manifest.
    pub async fn put_manifest(&self, name: &str, manifest: &Manifest) -> Result<()> {
        let text = serde_json::to_vec_pretty(manifest)
            .map_err(|e| ArchiveError::Format(format!("manifest {name}: {e}")))?;
        self.put_create(&Path::from(name), text).await
    }

    /// Writes an object that must not exist yet (a manifest, a drill's record).
    pub async fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_create(&Path::from(name), bytes).await
    }

    /// Deletes an object; one already gone is not an error (retention may have been cut off
    /// half-way).
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&Path::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes of every object the archive stores (one listing).
    pub async fn stored_bytes(&self) -> Result<u64> {
        let metas: Vec<object_store::ObjectMeta> = self.store.list(None).try_collect().await?;
        Ok(metas.iter().map(|m| m.size).sum())
    }

    /// The names of every object under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?;
        let mut names: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        names.sort();
        Ok(names)
    }

    /// An object's events, after checking its size and crc32c against what its manifest says,
    /// and its frames (and, encrypted, its tag). A missing object is a gap.
    pub async fn read_checked(&self, name: &str, size: u64, crc: u32) -> Result<Vec<Event>> {
        let bytes = self.get(name).await.map_err(|e| match e {
            ArchiveError::Store(object_store::Error::NotFound { .. }) => {
                ArchiveError::Gap(format!("{name} is listed by its manifest but missing"))
            }
            other => other,
        })?;
        if bytes.len() as u64 != size || crc32c::crc32c(&bytes) != crc {
            return Err(ArchiveError::Damaged {
                object: name.to_owned(),
                reason: format!(
                    "it holds {} bytes, its manifest says {size} with another checksum",
                    bytes.len()
                ),
            });
        }
        let frames = object::open(&bytes, self.key.as_ref(), name)?;
        object::events(&frames, name)
    }

    /// Every committed base backup, oldest first.
    pub async fn base_manifests(&self) -> Result<Vec<BaseManifest>> {
        let mut out = Vec::new();
        for name in self.list("base").await? {
            if !name.ends_with("/backup.json") {
                continue;
            }
            let bytes = self.get(&name).await?;
            let m: BaseManifest =
                serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Damaged {
                    object: name.clone(),
                    reason: format!("not a base backup manifest: {e}"),
                })?;
            out.push(m);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn put_create(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await?;
        Ok(())
    }

    /// The bytes of an object.
    pub async fn get(&self, name: &str) -> Result<bytes::Bytes> {
        let result = self
            .store
            .get_opts(&Path::from(name), GetOptions::default())
            .await?;
        Ok(result.bytes().await?)
    }

    /// The names of the committed objects' manifests, in stream order.
    pub async fn manifest_names(&self) -> Result<Vec<String>> {
        let mut names = self.list("log").await?;
        names.retain(|n| n.ends_with(".json"));
        Ok(names)
    }

    /// Every manifest, in stream order.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for name in self.manifest_names().await? {
            out.push(self.manifest(&name).await?);
        }
        Ok(out)
    }

    /// The newest manifest, if any (and how many there are): where the archive ends.
    pub async fn last_manifest(&self) -> Result<Option<(usize, Manifest)>> {
        let names = self.manifest_names().await?;
        match names.last() {
            Some(name) => Ok(Some((names.len(), self.manifest(name).await?))),
            None => Ok(None),
        }
    }

    async fn manifest(&self, name: &str) -> Result<Manifest> {
        let bytes = self.get(name).await?;
        serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Damaged {
            object: name.to_owned(),
            reason: format!("not a manifest: {e}"),
        })
    }
}

/// An S3-compatible store at `bucket[/prefix]`. Path-style requests (what S3-compatible servers
/// expect at an endpoint); plain HTTP only when the endpoint says `http://`. Objects are written
/// create-only with `If-None-Match: *` (object_store's default conditional put).
fn s3(rest: &str, s: &crate::S3Settings) -> Result<Arc<dyn ObjectStore>> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ArchiveError::Config(
            "archive url s3://: name a bucket (s3://bucket/prefix)".into(),
        ));
    }
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &s.endpoint {
        b = b
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if let Some(r) = &s.region {
        b = b.with_region(r);
    }
    if let Some(k) = &s.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    let store = b.build()?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    })
}

/// The spool offsets a manifest's name says it covers: `log/<first>-<end>.json`.
pub fn offsets_of(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix("log/")?.strip_suffix(".json")?;
    let (a, b) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Checks that `manifests` form one unbroken chain (each begins where the one before ended);
/// a missing object between two is a gap, named.
pub fn check_chain(manifests: &[Manifest]) -> Result<()> {
    for pair in manifests.windows(2) {
        if pair[1].first_offset != pair[0].end_offset {
            return Err(ArchiveError::Gap(format!(
                "after {} (ending at spool offset {}) the next object, {}, begins at {}: the \
                 transactions between are not in the archive",
                pair[0].object, pair[0].end_offset, pair[1].object, pair[1].first_offset
            )));
        }
    }
    Ok(())
}
