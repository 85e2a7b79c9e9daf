//! The backup repository of `etcdguard backup …`.
//!
//! A repository is a set of objects in a [`store::Store`] (a local directory or an S3, GCS or
//! Azure bucket), laid out as `docs/formats/repository.md` describes: a `config`, content-
//! addressed `packs/` of zstd-compressed chunks, `index/` files saying which pack holds which
//! chunk, one `backups/<id>.json` manifest per backup, and `locks/`. Snapshots are cut into
//! fixed-size chunks aligned to the bbolt page size, so a snapshot taken after a little churn
//! shares almost all its chunks with the previous one and only the changed ones are stored.
//!
//! Discipline (after restic): every object except locks and verification records is written
//! once under a name derived from its content or a fresh random id; writes are atomic; a
//! backup's manifest is written only after all its packs and their index; only `prune`
//! deletes data, under an exclusive lock no `create` can hold at the same time.

mod beneath;
pub mod crypto;
pub mod kms;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod repository;
pub mod retention;
pub mod segment;
pub mod store;

pub use manifest::Manifest;
pub use repository::{
    BackupMeta, BackupWriter, InitOptions, PruneReport, Repository, UnhashedPart,
};
pub use store::{open_url, Store, StoreError};

/// What can go wrong with a repository, by what the user does about it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0}: no etcdguard repository here (create one with `etcdguard backup create --repo …`)"
    )]
    NotARepository(String),
    #[error("unsupported repository: {0}")]
    Unsupported(String),
    #[error("no backup {0:?} in the repository (see `etcdguard backup list`)")]
    BackupNotFound(String),
    #[error("{prefix:?} matches several backups: {}", .matches.join(", "))]
    AmbiguousId { prefix: String, matches: Vec<String> },
    #[error("repository damaged: {0}")]
    Damaged(String),
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    Locked(String),
    #[error(
        "{0} is encrypted: give its passphrase in ETCDGUARD_PASSPHRASE or with --passphrase-file"
    )]
    KeyRequired(String),
    #[error("{0}: wrong passphrase (it opens none of the repository's keys)")]
    WrongPassphrase(String),
    #[error("{0}: already exists; nothing was overwritten")]
    DestinationExists(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    /// Prefixes the message with what was being done, keeping the kind.
    pub fn context(self, what: &str) -> RepoError {
        match self {
            RepoError::Damaged(m) => RepoError::Damaged(format!("{what}: {m}")),
            RepoError::ChecksumMismatch(m) => RepoError::ChecksumMismatch(format!("{what}: {m}")),
            RepoError::Io(m) => RepoError::Io(format!("{what}: {m}")),
            other => other,
        }
    }
}
