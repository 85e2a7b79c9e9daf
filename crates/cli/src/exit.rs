//! Exit codes and the one place errors are printed. Each kind of failure a script may want
//! to tell apart has its own code; they are listed in README.md and `etcdguard --help`.

use std::fmt;

use etcdguard_workflow::{Error as WorkflowError, Kind};

/// Process exit codes. 0 is success; clap's usage errors exit with 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// Anything not covered below.
    Failure = 1,
    /// Wrong flags or arguments (clap uses the same code).
    Usage = 2,
    NotFound = 3,
    PermissionDenied = 4,
    IsDirectory = 5,
    EmptyFile = 6,
    /// Not a bbolt/etcd file at all.
    NotSnapshot = 7,
    /// Shorter than its own header says.
    Truncated = 8,
    /// The sha256 trailer does not match the content.
    ChecksumMismatch = 9,
    /// Structural damage found by the integrity check.
    Corrupt = 10,
    /// The file is locked by another process (a running etcd).
    Locked = 11,
    /// No endpoint could be reached, or a storage server kept failing.
    Unreachable = 12,
    /// TLS or authentication failed.
    TlsOrAuth = 13,
    /// The destination already exists and would be overwritten.
    DestinationExists = 14,
    /// The backup repository is locked by another etcdguard (e.g. a prune while a create runs).
    RepositoryBusy = 15,
    /// An encrypted backup repository needs its passphrase, and none (or a wrong one) was given.
    KeyRequired = 16,
    /// A safety check refused a cluster change (quorum, a healthy member, a lagging learner);
    /// nothing was changed.
    Refused = 17,
    /// `pki check`: a certificate has expired, expires within --warn, or is not yet valid.
    CertificateExpiry = 18,
}

/// An error that carries its exit code. Library errors are mapped to this in `cmd/`.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code of each kind of workflow failure.
pub fn code_of(kind: Kind) -> Code {
    match kind {
        Kind::Failure | Kind::Interrupted => Code::Failure,
        Kind::Usage => Code::Usage,
        Kind::NotFound => Code::NotFound,
        Kind::PermissionDenied => Code::PermissionDenied,
        Kind::IsDirectory => Code::IsDirectory,
        Kind::EmptyFile => Code::EmptyFile,
        Kind::NotSnapshot => Code::NotSnapshot,
        Kind::Truncated => Code::Truncated,
        Kind::ChecksumMismatch => Code::ChecksumMismatch,
        Kind::Corrupt => Code::Corrupt,
        Kind::Locked => Code::Locked,
        Kind::Unreachable => Code::Unreachable,
        Kind::TlsOrAuth => Code::TlsOrAuth,
        Kind::DestinationExists => Code::DestinationExists,
        Kind::RepositoryBusy => Code::RepositoryBusy,
        Kind::KeyRequired => Code::KeyRequired,
        Kind::Refused => Code::Refused,
    }
}

fn kind_of(code: Code) -> Kind {
    match code {
        Code::Failure => Kind::Failure,
        Code::Usage => Kind::Usage,
        Code::NotFound => Kind::NotFound,
        Code::PermissionDenied => Kind::PermissionDenied,
        Code::IsDirectory => Kind::IsDirectory,
        Code::EmptyFile => Kind::EmptyFile,
        Code::NotSnapshot => Kind::NotSnapshot,
        Code::Truncated => Kind::Truncated,
        Code::ChecksumMismatch => Kind::ChecksumMismatch,
        Code::Corrupt => Kind::Corrupt,
        Code::Locked => Kind::Locked,
        Code::Unreachable => Kind::Unreachable,
        Code::TlsOrAuth => Kind::TlsOrAuth,
        Code::DestinationExists => Kind::DestinationExists,
        Code::RepositoryBusy => Kind::RepositoryBusy,
        Code::KeyRequired => Kind::KeyRequired,
        Code::Refused => Kind::Refused,
        // Only `pki check` uses it, and it never hands its failure to a workflow.
        Code::CertificateExpiry => Kind::Failure,
    }
}

impl From<WorkflowError> for Failure {
    fn from(e: WorkflowError) -> Failure {
        Failure::new(code_of(e.kind), e.to_string())
    }
}

/// A CLI failure handed to a workflow (e.g. from reading a passphrase file).
impl From<Failure> for WorkflowError {
    fn from(f: Failure) -> WorkflowError {
        WorkflowError::new(kind_of(f.code), f.message)
    }
}

/// Prints `Error: …` (with the cause chain) on stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    eprintln!("Error: {err:#}");
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<Failure>()
                .map(|f| f.code)
                .or_else(|| e.downcast_ref::<WorkflowError>().map(|w| code_of(w.kind)))
        })
        .map(|c| c as i32)
        .unwrap_or(Code::Failure as i32)
}
