//! Repository locks: `locks/<random>.json`.
//!
//! Writers (`backup create`, `backup delete`) hold a shared lock; `backup prune` holds an
//! exclusive one. Taking a lock is "write mine, then list": each side writes its own lock
//! object first and only then looks at the others, so of two racing processes at least one
//! sees the other and backs off (object stores list strongly-consistently after a put).
//! A lock is refreshed every few minutes while held; one not refreshed for
//! [`STALE_AFTER`] — or one from this host whose process is gone — is stale and ignored.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::RepoError;

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub exclusive: bool,
    pub purpose: String,
    pub hostname: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

impl LockInfo {
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        if (now - self.refreshed).to_std().map(|age| age > STALE_AFTER).unwrap_or(false) {
            return true;
        }
        if self.hostname == hostname() && self.pid != std::process::id() {
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            return !alive;
        }
        false
    }

    pub fn describe(&self) -> String {
        format!(
            "{} lock for {} by pid {} on {} since {}",
            if self.exclusive { "an exclusive" } else { "a" },
            self.purpose,
            self.pid,
            self.hostname,
            self.created.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A held lock; released (deleted) on drop.
pub struct Lock {
    store: Arc<dyn Store>,
    key: String,
    refresher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Lock {
    pub fn acquire(store: Arc<dyn Store>, exclusive: bool, purpose: &str) -> Result<Lock, RepoError> {
        let now = Utc::now();
        let info = LockInfo {
            exclusive,
            purpose: purpose.to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
        };
        let key = format!("locks/{:032x}.json", rand::random::<u128>());
        store.put(&key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes")))?;
        let mut lock = Lock { store: store.clone(), key: key.clone(), refresher: None };
        // Now look at the others; dropping `lock` on error removes ours again.
        for other in store.list("locks/")? {
            if other.key == key {
                continue;
            }
            let theirs: LockInfo = match store.get(&other.key) {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(i) => i,
                    Err(_) => continue, // not a lock we understand; a half-listed delete
                },
                Err(crate::store::StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if theirs.is_stale(Utc::now()) {
                if exclusive {
                    let _ = store.delete(&other.key);
                }
                continue;
            }
            if exclusive || theirs.exclusive {
                return Err(RepoError::Locked(format!(
                    "the repository is in use: {} (wait for it to finish; a lock not refreshed for {} minutes, \
                     or whose process is gone, is ignored)",
                    theirs.describe(),
                    STALE_AFTER.as_secs() / 60
                )));
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        let refresh_store = store.clone();
        let handle = std::thread::Builder::new()
            .name("etcdguard-lock".into())
            .spawn(move || {
                let mut info = info;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                    info.refreshed = Utc::now();
                    let _ = refresh_store.put(&key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes")));
                }
            })
            .map_err(|e| RepoError::Io(format!("starting the lock refresher: {e}")))?;
        lock.refresher = Some((tx, handle));
        Ok(lock)
    }

    pub fn release(self) {}
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.refresher.take() {
            drop(tx);
            let _ = handle.join();
        }
        let _ = self.store.delete(&self.key);
    }
}
