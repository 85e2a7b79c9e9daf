//! Streaming a snapshot (Maintenance.Snapshot) into a sink while checking the server's
//! sha256 trailer, and writing it to a file atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::conn::Connection;
use crate::error::ClientError;

/// Hashes everything but the last 32 bytes seen so far, so that at the end of the stream the
/// held-back bytes are the trailer and the hash covers exactly the image before it, however
/// the server cut the stream into messages.
#[derive(Clone, Default)]
pub struct TrailerHasher {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

/// What the trailer check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrailerVerdict {
    Verified([u8; 32]),
    Mismatch {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    /// `total % 512 != 32`: no trailer where etcd puts one.
    Missing {
        total: u64,
    },
}

impl TrailerHasher {
    pub fn new() -> TrailerHasher {
        TrailerHasher { hasher: Sha256::new(), tail: Vec::with_capacity(64), total: 0 }
    }

    pub fn update(&mut self, blob: &[u8]) {
        self.total += blob.len() as u64;
        if blob.len() >= 32 {
            self.hasher.update(&self.tail);
            self.tail.clear();
            let (body, last) = blob.split_at(blob.len() - 32);
            self.hasher.update(body);
            self.tail.extend_from_slice(last);
        } else {
            self.tail.extend_from_slice(blob);
            if self.tail.len() > 32 {
                let extra = self.tail.len() - 32;
                self.hasher.update(&self.tail[..extra]);
                self.tail.drain(..extra);
            }
        }
    }

    /// Bytes seen, trailer included.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// sha256 of every byte seen, trailer included: what a repository records for the file,
    /// from the same pass over the bytes as the trailer check.
    pub fn file_sha256(&self) -> [u8; 32] {
        let mut whole = self.hasher.clone();
        whole.update(&self.tail);
        whole.finalize().into()
    }

    pub fn finish(self) -> TrailerVerdict {
        if self.total % 512 != 32 || self.tail.len() != 32 {
            return TrailerVerdict::Missing { total: self.total };
        }
        let actual: [u8; 32] = self.hasher.finalize().into();
        let mut expected = [0u8; 32];
        expected.copy_from_slice(&self.tail);
        if actual == expected {
            TrailerVerdict::Verified(actual)
        } else {
            TrailerVerdict::Mismatch { expected, actual }
        }
    }
}

/// Progress of a running save (the CLI draws a bar on a terminal, nothing otherwise).
pub trait Progress {
    /// `total` is the announced stream length (image + trailer).
    fn begin(&mut self, _total: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn end(&mut self) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a finished save reports.
#[derive(Clone, Debug)]
pub struct SnapshotSummary {
    pub endpoint: String,
    /// Bytes written: the database image plus the 32-byte trailer.
    pub bytes: u64,
    /// sha256 of the image, equal to the server's trailer.
    pub sha256: [u8; 32],
    /// sha256 of all the bytes written (image and trailer).
    pub file_sha256: [u8; 32],
    /// The server's storage version (etcd 3.6+; empty before).
    pub server_version: String,
    pub elapsed: Duration,
}

/// Where a snapshot goes.
#[derive(Clone, Debug)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

impl Destination {
    pub fn parse(arg: &Path) -> Destination {
        if arg.as_os_str() == "-" {
            Destination::Stdout
        } else {
            Destination::File(arg.to_path_buf())
        }
    }

    /// Checks what can be checked before connecting, so a bad path fails in milliseconds,
    /// not after streaming gigabytes.
    pub fn preflight(&self) -> Result<(), ClientError> {
        let Destination::File(path) = self else { return Ok(()) };
        let write_err = |source| ClientError::Write { target: path.display().to_string(), source };
        if path.is_dir() {
            return Err(write_err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory; give a file name",
            )));
        }
        if path.file_name().is_none() {
            return Err(write_err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(write_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", parent.display()),
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(write_err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", parent.display()),
            ))),
            Err(e) => Err(write_err(e)),
        }
    }
}

/// `<path>.part`, created 0600; removed on drop unless [`PartFile::commit`] renamed it.
pub struct PartFile {
    part: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl PartFile {
    pub fn part_path(dest: &Path) -> PathBuf {
        let mut s = dest.as_os_str().to_os_string();
        s.push(".part");
        PathBuf::from(s)
    }

    pub fn create(dest: &Path) -> Result<PartFile, ClientError> {
        let part = Self::part_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(|source| ClientError::Write { target: part.display().to_string(), source })?;
        // A stale .part from an earlier crash may have kept wider permissions.
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        Ok(PartFile { part, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("part file open until commit")
    }

    /// fsync, rename to the destination, fsync the directory.
    pub fn commit(mut self) -> Result<(), ClientError> {
        let err = |target: &Path, source| ClientError::Write {
            target: target.display().to_string(),
            source,
        };
        let file = self.file.take().expect("part file open until commit");
        file.sync_all().map_err(|e| err(&self.part, e))?;
        drop(file);
        std::fs::rename(&self.part, &self.dest).map_err(|e| err(&self.dest, e))?;
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// Writes are gathered into chunks this large before they reach the kernel.
const WRITE_CHUNK: usize = 4 << 20;

/// Streams the snapshot of `conn`'s member into `sink`, verifying the trailer. The sink
/// receives every byte (trailer included) exactly as etcdctl would write it. Stops on
/// SIGINT/SIGTERM, when the stream breaks, or when nothing arrives for the stall timeout.
pub async fn stream_snapshot(
    conn: &mut Connection,
    sink: &mut dyn Write,
    target: &str,
    progress: &mut dyn Progress,
) -> Result<SnapshotSummary, ClientError> {
    use tokio::signal::unix::{signal, SignalKind};
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let interrupted = async move {
        match (sigint.as_mut(), sigterm.as_mut()) {
            (Some(i), Some(t)) => {
                tokio::select! { _ = i.recv() => "SIGINT", _ = t.recv() => "SIGTERM" }
            }
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(interrupted);

    let mut maintenance = conn.client.maintenance_client();
    let mut stream = conn.unary("starting the snapshot stream", maintenance.snapshot()).await?;
    let stall = conn.cfg.stall_timeout;
    let mut hasher = TrailerHasher::new();
    let mut expected: Option<u64> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut server_version = String::new();
    let write_err = |source| ClientError::Write { target: target.to_string(), source };
    loop {
        let next = tokio::select! {
            biased;
            sig = &mut interrupted => return Err(ClientError::Interrupted(sig)),
            r = tokio::time::timeout(stall, stream.message()) => r,
        };
        let msg = match next {
            Err(_) => {
                return Err(ClientError::Stalled {
                    endpoint: conn.endpoint.clone(),
                    received: hasher.total(),
                    expected: expected.unwrap_or(0),
                    after: stall,
                })
            }
            Ok(Err(e)) => {
                return Err(ClientError::StreamBroken {
                    endpoint: conn.endpoint.clone(),
                    received: hasher.total(),
                    expected: expected.unwrap_or(0),
                    cause: Box::new(conn.classify(e)),
                })
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        let blob = msg.blob();
        if expected.is_none() {
            // remaining_bytes counts the image after this message; the trailer follows it.
            let total = msg.remaining_bytes() + blob.len() as u64 + 32;
            expected = Some(total);
            server_version = msg.version().to_string();
            progress.begin(total);
        }
        hasher.update(blob);
        if buf.len() + blob.len() > WRITE_CHUNK && !buf.is_empty() {
            sink.write_all(&buf).map_err(write_err)?;
            buf.clear();
        }
        if blob.len() >= WRITE_CHUNK {
            sink.write_all(blob).map_err(write_err)?;
        } else {
            buf.extend_from_slice(blob);
        }
        progress.advance(blob.len() as u64);
    }
    sink.write_all(&buf).map_err(write_err)?;
    sink.flush().map_err(write_err)?;
    progress.end();
    let total = hasher.total();
    if let Some(expected) = expected {
        if total < expected {
            return Err(ClientError::ShortStream {
                endpoint: conn.endpoint.clone(),
                received: total,
                expected,
            });
        }
    }
    let file_sha256 = hasher.file_sha256();
    match hasher.finish() {
        TrailerVerdict::Verified(sha256) => Ok(SnapshotSummary {
            endpoint: conn.endpoint.clone(),
            bytes: total,
            sha256,
            file_sha256,
            server_version,
            elapsed: started.elapsed(),
        }),
        TrailerVerdict::Mismatch { expected, actual } => {
            Err(ClientError::Checksum { endpoint: conn.endpoint.clone(), expected, actual })
        }
        TrailerVerdict::Missing { total } => {
            Err(ClientError::NoTrailer { endpoint: conn.endpoint.clone(), bytes: total })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(image_len: usize) -> (Vec<u8>, [u8; 32]) {
        let image: Vec<u8> = (0..image_len).map(|i| (i * 31 % 251) as u8).collect();
        let digest: [u8; 32] = Sha256::digest(&image).into();
        let mut all = image;
        all.extend_from_slice(&digest);
        (all, digest)
    }

    #[test]
    fn verifies_whatever_the_chunking() {
        let (all, digest) = stream(5 * 4096);
        for chunk in [1usize, 7, 31, 32, 33, 4096, 32 * 1024, all.len()] {
            let mut h = TrailerHasher::new();
            for c in all.chunks(chunk) {
                h.update(c);
            }
            assert_eq!(h.file_sha256(), <[u8; 32]>::from(Sha256::digest(&all)), "chunk {chunk}");
            assert_eq!(h.finish(), TrailerVerdict::Verified(digest), "chunk {chunk}");
        }
    }

    #[test]
    fn trailer_in_its_own_message() {
        let (all, digest) = stream(4096 * 3);
        let (image, trailer) = all.split_at(all.len() - 32);
        let mut h = TrailerHasher::new();
        for c in image.chunks(32 * 1024) {
            h.update(c);
        }
        h.update(trailer);
        assert_eq!(h.finish(), TrailerVerdict::Verified(digest));
    }

    #[test]
    fn flipped_bit_is_a_mismatch() {
        let (mut all, _) = stream(4096 * 2);
        all[100] ^= 1;
        let mut h = TrailerHasher::new();
        h.update(&all);
        assert!(matches!(h.finish(), TrailerVerdict::Mismatch { .. }));
    }

    #[test]
    fn cut_stream_has_no_trailer() {
        let (all, _) = stream(4096 * 2);
        let mut h = TrailerHasher::new();
        h.update(&all[..4096]);
        assert_eq!(h.finish(), TrailerVerdict::Missing { total: 4096 });
        assert_eq!(TrailerHasher::new().finish(), TrailerVerdict::Missing { total: 0 });
    }

    #[test]
    fn part_file_is_private_and_removed_unless_committed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("snap.db");
        {
            let mut p = PartFile::create(&dest).unwrap();
            p.file().write_all(b"partial").unwrap();
            let mode = std::fs::metadata(PartFile::part_path(&dest)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!PartFile::part_path(&dest).exists());
        assert!(!dest.exists());
        let mut p = PartFile::create(&dest).unwrap();
        p.file().write_all(b"whole").unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        assert!(!PartFile::part_path(&dest).exists());
    }

    #[test]
    fn preflight_catches_bad_destinations() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Destination::File(dir.path().to_path_buf()).preflight().is_err());
        let e = Destination::File(dir.path().join("nope/x.db")).preflight().unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(Destination::File(dir.path().join("x.db")).preflight().is_ok());
        assert!(Destination::parse(Path::new("-")).preflight().is_ok());
    }
}
