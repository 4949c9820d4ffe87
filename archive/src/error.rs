//! The archive's error type: what is wrong with the configuration, an object, the chain of
//! objects, or the object store, each said so that the operator knows which object and why.

/// An archive failure.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Config(String),
    #[error("archive object {object} is damaged: {reason}")]
    Damaged { object: String, reason: String },
    #[error(
        "archive object {0} does not decrypt with the configured key (a wrong key, or the \
         object was changed)"
    )]
    Decrypt(String),
    /// Objects missing between two that are there, or an archive that does not begin where a
    /// restore needs it to.
    #[error("the archive has a gap: {0}")]
    Gap(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Spool(#[from] ferry_spool::SpoolError),
    #[error("{0}")]
    Format(String),
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

impl ArchiveError {
    /// An object store that is unreachable or failing is retried; a missing or damaged object,
    /// a wrong key or a gap needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            ArchiveError::Store(e) => !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            ArchiveError::Spool(_) => false,
            _ => false,
        }
    }
}
