//! Exit codes and the one place errors are printed. Each kind of failure a script may want
//! to tell apart has its own code; they are listed in README.md and `etcdguard --help`.

use std::fmt;

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
    /// `pki check`: a certificate has expired, expires within --warn, or is not yet valid.
    CertificateExpiry = 17,
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

/// Prints `Error: …` (with the cause chain) on stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    eprintln!("Error: {err:#}");
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map(|f| f.code as i32)
        .unwrap_or(Code::Failure as i32)
}
