//! A requested stop (SIGTERM/SIGINT to the agent), seen by long steps at safe points: the
//! snapshot stream, every read of the upload, between the steps of a create.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Kind, Result};

/// Raised once; every clone sees it.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// A stop nobody raises (the one-shot commands: SIGINT kills them, which is safe).
    pub fn never() -> Stop {
        Stop::default()
    }

    /// The flag itself, for a signal handler to set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted)` once raised.
    pub fn check(&self) -> Result<()> {
        if self.is_raised() {
            return Err(interrupted());
        }
        Ok(())
    }

    /// `e`, or the interruption when a stop caused it.
    pub fn error_or(&self, e: Error) -> Error {
        if self.is_raised() {
            interrupted()
        } else {
            e
        }
    }

    /// `inner`, failing its next read once the stop is raised.
    pub fn reader<R: Read>(&self, inner: R) -> StopReader<R> {
        StopReader { inner, stop: self.clone() }
    }
}

fn interrupted() -> Error {
    Error::new(
        Kind::Interrupted,
        "stopped on request (SIGTERM or SIGINT); nothing was added to the list of backups",
    )
}

pub struct StopReader<R> {
    inner: R,
    stop: Stop,
}

impl<R: Read> Read for StopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.is_raised() {
            // Not `ErrorKind::Interrupted`: by std's convention that means "retry the read",
            // and read loops (`read_exact`, the chunker's) would spin on it forever.
            return Err(std::io::Error::other("stopped on request"));
        }
        self.inner.read(buf)
    }
}
