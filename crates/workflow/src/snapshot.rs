//! Opening and checking snapshot files: every way a file can be unusable becomes an [`Error`]
//! with its kind, before any command writes anything based on it.

use std::path::Path;

use etcdguard_bolt::{Db, OpenError};
use etcdguard_storage::snapshot_file::hex;
use etcdguard_storage::{
    Evidence, Layout, Provenance, Release, SnapshotFile, Status, StatusError, TrailerCheck,
};

use crate::error::{db_error, open_file_error, Error, Kind, Result};

/// Opens a snapshot and maps every way it can be unusable to a message and kind.
pub fn open_snapshot(path: &Path) -> Result<SnapshotFile> {
    let file = SnapshotFile::open(path).map_err(open_file_error)?;
    if file.is_empty() {
        return Err(Error::new(Kind::EmptyFile, format!("{}: the file is empty", path.display())));
    }
    // Exactly 32 bytes is "a trailer and no image": nothing a snapshot can be.
    let cut_short = match file.layout() {
        Layout::Ragged { remainder } => Some(remainder),
        Layout::WithTrailer { .. }
            if file.len() == etcdguard_storage::snapshot_file::TRAILER_LEN =>
        {
            Some(32)
        }
        _ => None,
    };
    if let Some(remainder) = cut_short {
        // A text file, a gzip, a PNG … has a ragged length too: say what it is, not "truncated".
        let looks = if file.image().is_empty() {
            Db::open(&std::fs::read(path).unwrap_or_default()).map(|_| ())
        } else {
            file.db().map(|_| ())
        };
        if let Err(
            e @ (OpenError::NotBolt
            | OpenError::ForeignByteOrder
            | OpenError::UnsupportedVersion(_)),
        ) = looks
        {
            return Err(db_error(path, e));
        }
        let why = if file.image().is_empty() {
            "only 32 bytes long, no database at all".to_string()
        } else {
            format!(
                "{} bytes long, which is neither whole pages nor whole pages plus a 32-byte sha256 trailer \
                 ({remainder} bytes past a 512-byte boundary)",
                file.len()
            )
        };
        return Err(Error::new(
            Kind::Truncated,
            format!("{}: truncated: {why}; the copy was cut short", path.display()),
        ));
    }
    Ok(file)
}

pub fn trailer_error(path: &Path, expected: &[u8; 32], actual: &[u8; 32]) -> Error {
    Error::new(
        Kind::ChecksumMismatch,
        format!(
            "{}: sha256 trailer mismatch: the content was changed or damaged after the snapshot was taken \
             (trailer {}, content {})",
            path.display(),
            hex(expected),
            hex(actual)
        ),
    )
}

/// A `status` failure of the file at `path`: damage is listed (the first ten problems).
pub fn status_error(path: &Path, e: StatusError) -> Error {
    match e {
        StatusError::Integrity(report) => {
            let mut msg = format!("{}: {}", path.display(), StatusError::Integrity(report.clone()));
            for p in report.problems.iter().take(10) {
                msg.push_str(&format!("\n  {p}"));
            }
            if report.problem_count > 10 {
                msg.push_str(&format!(
                    "\n  … and {} more; run `etcdguard snapshot verify` for the full list",
                    report.problem_count - 10
                ));
            }
            Error::new(Kind::Corrupt, msg)
        }
        e @ StatusError::BadKeyValue { .. } => {
            Error::new(Kind::Corrupt, format!("{}: {e}", path.display()))
        }
        other => Error::new(Kind::NotSnapshot, format!("{}: {other}", path.display())),
    }
}

/// Runs `work` while the trailer is hashed on another thread (the two are independent and
/// each takes about as long on a large file).
pub fn with_trailer_check<T>(
    file: &SnapshotFile,
    skip: bool,
    work: impl FnOnce() -> T,
) -> (std::io::Result<TrailerCheck>, T) {
    if skip {
        return (Ok(TrailerCheck::Skipped), work());
    }
    std::thread::scope(|s| {
        let hashing = s.spawn(|| file.check_trailer());
        let out = work();
        (
            hashing
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the trailer check panicked"))),
            out,
        )
    })
}

/// What `snapshot status` checks (the sha256 trailer unless skipped, and the structure it
/// walks): commands that must refuse a bad snapshot before they change anything call it first.
pub fn check_snapshot(path: &Path, skip_hash_check: bool) -> Result<(Status, TrailerCheck)> {
    let checked = snapshot_status(path, skip_hash_check, Some(Release::V3_5))?;
    Ok((checked.status, checked.trailer))
}

/// What `snapshot status` found.
pub struct CheckedStatus {
    /// The numbers as `etcdutl snapshot status` of `status.release` computes them.
    pub status: Status,
    pub trailer: TrailerCheck,
    /// Why `status.release` was chosen when the caller left it to the file.
    pub detected: Option<Evidence>,
}

/// `snapshot status` as etcdutl of release line `as_of` computes it; `None` takes the line
/// that wrote the file (its storage version, else its cluster version, else the newest line).
pub fn snapshot_status(
    path: &Path,
    skip_hash_check: bool,
    as_of: Option<Release>,
) -> Result<CheckedStatus> {
    let file = open_snapshot(path)?;
    let db = file.db().map_err(|e| db_error(path, e))?;
    let (as_of, detected) = match as_of {
        Some(r) => (r, None),
        None => {
            let (r, evidence) = Provenance::read(&db).writer();
            (r, Some(evidence))
        }
    };
    let release = || file.release_resident();
    let (trailer, status) = with_trailer_check(&file, skip_hash_check, || {
        etcdguard_storage::status_as(&db, as_of, Some(&release))
    });
    let trailer = trailer
        .map_err(|e| Error::failure(format!("{}: reading for sha256: {e}", path.display())))?;
    if let TrailerCheck::Mismatch { expected, actual } = trailer {
        return Err(trailer_error(path, &expected, &actual));
    }
    Ok(CheckedStatus { status: status.map_err(|e| status_error(path, e))?, trailer, detected })
}
