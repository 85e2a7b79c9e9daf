//! The crate's one error type: a kind the command line maps to its exit code, the sentence
//! the user reads, and a hint saying what to do. Library errors of the crates below are
//! sorted into kinds here, once, so every command reports the same failure the same way.

use std::fmt;
use std::path::Path;

use etcdguard_bolt::{OpenError, OpenFileError};
use etcdguard_client::{ClientError, ErrorKind as ClientKind};
use etcdguard_node::NodeError;
use etcdguard_repo::{RepoError, StoreError};
use etcdguard_storage::restore::RestoreError;

/// What kind of failure, as far as a script or a person deciding what to do next cares.
/// The command line gives each its own exit code (see `etcdguard --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anything not covered below.
    Failure,
    /// Wrong flags, arguments or options.
    Usage,
    NotFound,
    PermissionDenied,
    IsDirectory,
    EmptyFile,
    /// Not a bbolt/etcd file at all.
    NotSnapshot,
    /// Shorter than its own header says.
    Truncated,
    /// A sha256 (trailer, chunk or file) does not match the content.
    ChecksumMismatch,
    /// Structural damage found by an integrity check.
    Corrupt,
    /// A file locked by another process (a running etcd), or a node's etcd that will not stop.
    Locked,
    /// No endpoint could be reached, or a storage server kept failing.
    Unreachable,
    TlsOrAuth,
    /// The destination already exists; nothing was overwritten.
    DestinationExists,
    /// The backup repository is locked by another etcdguard.
    RepositoryBusy,
    /// An encrypted repository needs its passphrase (none or a wrong one was given).
    KeyRequired,
    /// Stopped on request (SIGINT/SIGTERM).
    Interrupted,
    /// A safety check refused a cluster change (quorum, a healthy member, a lagging
    /// learner); nothing was changed.
    Refused,
}

/// A failure of a workflow: its kind, the message (the whole sentence, with the paths and
/// ids it concerns) and an optional hint (what to do about it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  {h}")?;
        }
        Ok(())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), hint: None }
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub fn failure(message: impl Into<String>) -> Error {
        Error::new(Kind::Failure, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with what was being done (`what: message`), keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// A repository error with its kind and, for storage trouble, a hint.
pub fn repo_error(e: RepoError) -> Error {
    let kind = match &e {
        RepoError::Store(s) => match s {
            StoreError::NotFound(_) | StoreError::BucketMissing(_) => Kind::NotFound,
            StoreError::Auth(_) => Kind::TlsOrAuth,
            StoreError::Unreachable(_) | StoreError::ServerFailing(_) => Kind::Unreachable,
            StoreError::InvalidUrl { .. } => Kind::Usage,
            StoreError::Truncated(_) => Kind::Corrupt,
            StoreError::Unsupported(_) | StoreError::Other(_) => Kind::Failure,
        },
        RepoError::NotARepository(_) | RepoError::BackupNotFound(_) => Kind::NotFound,
        RepoError::AmbiguousId { .. } | RepoError::Invalid(_) => Kind::Usage,
        RepoError::Damaged(_) => Kind::Corrupt,
        RepoError::ChecksumMismatch(_) => Kind::ChecksumMismatch,
        RepoError::Locked(_) => Kind::RepositoryBusy,
        RepoError::DestinationExists(_) => Kind::DestinationExists,
        RepoError::KeyRequired(_) | RepoError::WrongPassphrase(_) => Kind::KeyRequired,
        RepoError::Io(_) | RepoError::Unsupported(_) => Kind::Failure,
    };
    let hint = match &e {
        RepoError::Store(StoreError::Auth(_)) => {
            Some("check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, …) and the bucket policy")
        }
        RepoError::Store(StoreError::BucketMissing(_)) => Some("create the bucket first; etcdguard does not create buckets"),
        RepoError::Store(StoreError::Other(m)) if m.contains("Object Lock") => {
            Some("the bucket has S3 Object Lock, which takes only uploads with a checksum: add &checksum=sha256 to the repository URL")
        }
        RepoError::Store(StoreError::Unreachable(_)) => Some("check the endpoint (?endpoint=… or AWS_ENDPOINT_URL) and the network"),
        RepoError::Store(StoreError::ServerFailing(_)) => Some(
            "the server answered every retry with an error; it may be overloaded or down: try again later, or allow more retries with ?retries=N (or ETCDGUARD_STORE_RETRIES)",
        ),
        _ => None,
    };
    Error { kind, message: e.to_string(), hint: hint.map(String::from) }
}

impl From<RepoError> for Error {
    fn from(e: RepoError) -> Error {
        repo_error(e)
    }
}

/// A live-etcd client error; the message is the error's own sentence.
pub fn client_error(e: ClientError) -> Error {
    let kind = match e.kind() {
        ClientKind::Config => Kind::Usage,
        ClientKind::LocalIo(k) => match k {
            std::io::ErrorKind::NotFound => Kind::NotFound,
            std::io::ErrorKind::PermissionDenied => Kind::PermissionDenied,
            std::io::ErrorKind::IsADirectory => Kind::IsDirectory,
            _ => Kind::Failure,
        },
        ClientKind::Unreachable => Kind::Unreachable,
        ClientKind::TlsOrAuth => Kind::TlsOrAuth,
        ClientKind::Checksum => Kind::ChecksumMismatch,
        ClientKind::Interrupted => Kind::Interrupted,
        ClientKind::Server => Kind::Failure,
        ClientKind::Refused => Kind::Refused,
    };
    Error::new(kind, e.to_string())
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        client_error(e)
    }
}

/// A file that cannot be opened as a snapshot; a directory holding a data dir is named.
pub fn open_file_error(e: OpenFileError) -> Error {
    if let OpenFileError::IsDirectory(dir) = &e {
        for candidate in [dir.join("member/snap/db"), dir.join("snap/db")] {
            if candidate.is_file() {
                return Error::new(
                    Kind::IsDirectory,
                    format!(
                        "{}: is a directory; its database is {} (stop etcd before reading it)",
                        dir.display(),
                        candidate.display()
                    ),
                );
            }
        }
    }
    let kind = match &e {
        OpenFileError::NotFound(_) => Kind::NotFound,
        OpenFileError::PermissionDenied(_) => Kind::PermissionDenied,
        OpenFileError::IsDirectory(_) => Kind::IsDirectory,
        OpenFileError::Locked(_) => Kind::Locked,
        OpenFileError::NotRegularFile(_) => Kind::NotSnapshot,
        OpenFileError::Io(..) => Kind::Failure,
    };
    Error::new(kind, e.to_string())
}

/// A bbolt open error for `path`.
pub fn db_error(path: &Path, e: OpenError) -> Error {
    let kind = match &e {
        OpenError::Empty => Kind::EmptyFile,
        OpenError::NotBolt | OpenError::ForeignByteOrder | OpenError::UnsupportedVersion(_) => {
            Kind::NotSnapshot
        }
        OpenError::Truncated { .. } => Kind::Truncated,
        OpenError::BothMetasInvalid(_) | OpenError::BadPageSize(_) | OpenError::BadMeta(_) => {
            Kind::Corrupt
        }
    };
    let hint = match kind {
        Kind::NotSnapshot => " (expected an etcd snapshot or member/snap/db)",
        _ => "",
    };
    Error::new(kind, format!("{}: {e}{hint}", path.display()))
}

/// A `snapshot restore` error.
pub fn restore_error(e: RestoreError) -> Error {
    let kind = match &e {
        RestoreError::Config(_) => Kind::Usage,
        RestoreError::DestinationExists(_) => Kind::DestinationExists,
        RestoreError::MissingHash(_) | RestoreError::HashMismatch { .. } => Kind::ChecksumMismatch,
        RestoreError::Truncated { .. } => Kind::Truncated,
        RestoreError::Open { path, err } => return db_error(path, err.clone()),
        RestoreError::Corrupt { .. } => Kind::Corrupt,
        RestoreError::Refused(_) => Kind::Refused,
        RestoreError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Kind::PermissionDenied
        }
        RestoreError::Io { .. } | RestoreError::Rewrite(_) | RestoreError::SelfCheck(_) => {
            Kind::Failure
        }
    };
    Error::new(kind, e.to_string())
}

/// A node restore error (the plan, its preflight, waiting for the pods).
pub fn node_error(e: NodeError) -> Error {
    let kind = match &e {
        NodeError::Manifest(..) | NodeError::Preflight(_) => Kind::Usage,
        NodeError::StillRunning { .. } => Kind::Locked,
        NodeError::NotStarted { .. } | NodeError::NotReady { .. } => Kind::Unreachable,
        NodeError::Restore(_) | NodeError::Io(_) => Kind::Failure,
    };
    Error::new(kind, e.to_string())
}
