//! Repository locks: `locks/<random>.json`.
//!
//! Writers (`backup create`, `backup delete`) hold a shared lock; `backup prune` holds an
//! exclusive one. Taking a lock is "write mine, then list": each side writes its own lock
//! object first and only then looks at the others, so of two racing processes at least one
//! sees the other and backs off (object stores list strongly-consistently after a put).
//!
//! A lock carries an expiry, [`LOCK_TTL`] after its last refresh; its holder rewrites it
//! every [`REFRESH_EVERY`]. A lock whose expiry has passed is stale, whoever wrote it: a
//! process id means nothing across PID namespaces (two pods on one node share a host name),
//! so it is only used as a shortcut when host, boot and PID namespace are all ours and the
//! process is gone. A holder that could not refresh in time knows its lock may have been
//! judged stale and stops before it writes anything that relies on it ([`Lock::check_held`]).
//! Lock files of older versions (no expiry) keep their rule: stale [`LEGACY_STALE_AFTER`]
//! after their last refresh, or when their process is gone on a host of this name.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::RepoError;

/// How long a lock stays valid after its last refresh.
pub const LOCK_TTL: Duration = Duration::from_secs(5 * 60);
/// How often a held lock is refreshed: four missed refreshes still leave it valid.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A holder gives its lock up this long before its expiry: clocks of hosts sharing a
/// repository may disagree by up to this much.
pub const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(60);
/// Lock files without `expires` (etcdguard before lock expiry) are stale after this.
pub const LEGACY_STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub exclusive: bool,
    pub purpose: String,
    pub hostname: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
    /// The lock is stale after this instant (absent in lock files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// `/proc/sys/kernel/random/boot_id` of the holder's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The holder's PID namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
}

/// Where this process runs, as far as process ids are meaningful.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|p| p.to_string_lossy().into_owned())
}

fn to_chrono(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

impl LockInfo {
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let comparable = match self.expires {
            // An older etcdguard's lock, judged by its rule: 30 minutes, or its process gone
            // on a host of this name.
            None => {
                if now - self.refreshed > to_chrono(LEGACY_STALE_AFTER) {
                    return true;
                }
                self.hostname == hostname() && self.pid != std::process::id()
            }
            Some(expires) => {
                if now > expires {
                    return true;
                }
                // Shortcut for a holder killed on this very host: only when the process id
                // is comparable (same host, same boot, same PID namespace).
                self.hostname == hostname()
                    && self.boot_id.is_some()
                    && self.boot_id == boot_id()
                    && self.pid_namespace.is_some()
                    && self.pid_namespace == pid_namespace()
                    && self.pid != std::process::id()
            }
        };
        if comparable {
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            return !alive;
        }
        false
    }

    pub fn describe(&self) -> String {
        let until = match self.expires {
            Some(e) => format!(", valid until {}", e.format("%Y-%m-%d %H:%M:%S UTC")),
            None => String::new(),
        };
        format!(
            "{} lock for {} by pid {} on {} since {}{until}",
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
    /// The expiry of the last lock object successfully written.
    expires: Arc<Mutex<DateTime<Utc>>>,
    refresher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Lock {
    pub fn acquire(store: Arc<dyn Store>, exclusive: bool, purpose: &str) -> Result<Lock, RepoError> {
        Lock::acquire_with(store, exclusive, purpose, LOCK_TTL, REFRESH_EVERY)
    }

    /// As [`Lock::acquire`] with another lifetime and refresh period (tests).
    pub fn acquire_with(store: Arc<dyn Store>, exclusive: bool, purpose: &str, ttl: Duration, refresh_every: Duration) -> Result<Lock, RepoError> {
        let now = Utc::now();
        let info = LockInfo {
            exclusive,
            purpose: purpose.to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
            expires: Some(now + to_chrono(ttl)),
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
        };
        let key = format!("locks/{:032x}.json", rand::random::<u128>());
        store.put(&key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes")))?;
        let expires = Arc::new(Mutex::new(info.expires.unwrap_or(now)));
        let mut lock = Lock { store: store.clone(), key: key.clone(), expires: expires.clone(), refresher: None };
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
                    "the repository is in use: {} (wait for it to finish; a lock its holder stops refreshing \
                     expires within {} minutes)",
                    theirs.describe(),
                    LOCK_TTL.as_secs().div_ceil(60)
                )));
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        let refresh_store = store.clone();
        let handle = std::thread::Builder::new()
            .name("etcdguard-lock".into())
            .spawn(move || {
                let mut info = info;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(refresh_every) {
                    let now = Utc::now();
                    info.refreshed = now;
                    info.expires = Some(now + to_chrono(ttl));
                    let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes"));
                    if refresh_store.put(&key, body).is_ok() {
                        *expires.lock().unwrap_or_else(|p| p.into_inner()) = now + to_chrono(ttl);
                    }
                }
            })
            .map_err(|e| RepoError::Io(format!("starting the lock refresher: {e}")))?;
        lock.refresher = Some((tx, handle));
        Ok(lock)
    }

    /// Whether the lock is still surely valid for every reader: refreshed in time, with a
    /// margin for clock skew. A holder checks this before a write that relies on the lock
    /// (a manifest, a deletion), since once it expires another process may ignore it.
    pub fn check_held(&self) -> Result<(), RepoError> {
        let expires = *self.expires.lock().unwrap_or_else(|p| p.into_inner());
        let margin = to_chrono(CLOCK_SKEW_MARGIN).min(to_chrono(LOCK_TTL) / 2);
        if Utc::now() + margin >= expires {
            return Err(RepoError::Locked(format!(
                "lost the repository lock ({}): it could not be refreshed before it expired at {}, so another \
                 process may have ignored it; nothing more was written. Check the storage is reachable and run again",
                self.key,
                expires.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
        Ok(())
    }

    pub fn release(self) {}
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.refresher.take() {
            drop(tx);
            let _ = handle.join();
        }
        if self.store.delete(&self.key).is_err() {
            expire_instead(&*self.store, &self.key);
        }
    }
}

/// Releases a lock that could not be deleted (write-only credentials, e.g. on a bucket with
/// Object Lock where only the privileged prune may delete) by rewriting it expired: every
/// other process then takes it as stale at once, and the next prune removes it.
fn expire_instead(store: &dyn Store, key: &str) {
    let Ok(body) = store.get(key) else { return };
    let Ok(mut info) = serde_json::from_slice::<LockInfo>(&body) else { return };
    info.expires = Some(Utc::now() - chrono::TimeDelta::seconds(1));
    let _ = store.put(key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalDir;

    fn info(now: DateTime<Utc>) -> LockInfo {
        LockInfo {
            exclusive: true,
            purpose: "backup prune".into(),
            hostname: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
            expires: Some(now + to_chrono(LOCK_TTL)),
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
        }
    }

    /// The pid of a process that has exited.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn staleness_is_by_expiry_not_by_process_id() {
        let now = Utc::now();
        // Expired: stale whatever host and pid say (here: this live process).
        let expired = LockInfo { expires: Some(now - chrono::TimeDelta::seconds(1)), pid: 1, ..info(now) };
        assert!(expired.is_stale(now));
        // Another PID namespace on a host of the same name (two pods, one node): a pid
        // that is dead here says nothing; the unexpired lock is live.
        let other_ns = LockInfo { pid: dead_pid(), pid_namespace: Some("pid:[1]".into()), ..info(now) };
        assert!(!other_ns.is_stale(now));
        let unknown_ns = LockInfo { pid: dead_pid(), pid_namespace: None, ..info(now) };
        assert!(!unknown_ns.is_stale(now));
        let other_boot = LockInfo { pid: dead_pid(), boot_id: Some("another boot".into()), ..info(now) };
        assert!(!other_boot.is_stale(now));
        // Same host, boot and namespace, process gone: stale at once (a kill -9 here).
        if boot_id().is_some() && pid_namespace().is_some() {
            let dead_here = LockInfo { pid: dead_pid(), ..info(now) };
            assert!(dead_here.is_stale(now));
        }
        // Alive (pid 1 exists in every namespace) and unexpired: live.
        assert!(!LockInfo { pid: 1, ..info(now) }.is_stale(now));
    }

    #[test]
    fn lock_files_of_older_versions_use_the_thirty_minute_rule() {
        let now = Utc::now();
        let json = |refreshed: DateTime<Utc>| {
            serde_json::json!({"exclusive": true, "purpose": "backup prune", "hostname": "elsewhere", "pid": 1,
                               "created": refreshed, "refreshed": refreshed})
            .to_string()
        };
        // (Another host's lock: the old rule's pid check does not apply.)
        let recent: LockInfo = serde_json::from_str(&json(now - chrono::TimeDelta::minutes(10))).unwrap();
        assert!(recent.expires.is_none());
        assert!(!recent.is_stale(now));
        let old: LockInfo = serde_json::from_str(&json(now - chrono::TimeDelta::minutes(31))).unwrap();
        assert!(old.is_stale(now));
    }

    #[test]
    fn a_held_lock_is_refreshed_and_an_unrefreshed_one_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.path().to_path_buf()));
        let read = |store: &Arc<dyn Store>| -> LockInfo {
            let key = store.list("locks/").unwrap()[0].key.clone();
            serde_json::from_slice(&store.get(&key).unwrap()).unwrap()
        };
        // Refreshed every 100 ms with a 3 minute lifetime: the expiry moves forward.
        let lock = Lock::acquire_with(store.clone(), false, "test", Duration::from_secs(180), Duration::from_millis(100)).unwrap();
        let first = read(&store).expires.unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(read(&store).expires.unwrap() > first, "not refreshed");
        lock.check_held().unwrap();
        drop(lock);
        assert!(store.list("locks/").unwrap().is_empty());
        // Never refreshed within its lifetime: the holder knows it lost the lock, and an
        // exclusive locker takes over.
        let lock = Lock::acquire_with(store.clone(), false, "test", Duration::from_millis(300), Duration::from_secs(3600)).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(lock.check_held(), Err(RepoError::Locked(_))));
        let prune = Lock::acquire(store.clone(), true, "backup prune").unwrap();
        prune.check_held().unwrap();
        // A live lock blocks an exclusive one.
        let err = Lock::acquire(store.clone(), true, "backup prune").map(|_| ()).unwrap_err();
        assert!(matches!(err, RepoError::Locked(ref m) if m.contains("valid until")), "{err}");
    }
}
