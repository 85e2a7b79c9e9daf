//! Repository locks: `locks/<random>.json`.
//!
//! Writers (`backup create`, `backup delete`) hold a shared lock; `backup prune` holds an
//! exclusive one. Taking a lock is "write mine, then list": each side writes its own lock
//! object first and only then looks at the others, so of two racing processes at least one
//! sees the other and backs off (object stores list strongly-consistently after a put).
//!
//! A lock is stale [`LOCK_TTL`] after its object was last written, *by the storage's clock*:
//! the object's last-modified time as the store lists it, compared with the last-modified
//! time of an object this process has just written (its own lock). No time written by
//! another host is trusted: a planted lock claiming to be valid until 2099, or one written by
//! a host whose clock runs an hour ahead, is stale 5 minutes after it was written like any
//! other. A lock may ask for a shorter lifetime (`ttl_ms`), never a longer one. Its holder
//! rewrites it every [`REFRESH_EVERY`], and measures its own lifetime from its last
//! successful write with its monotonic clock; a holder that could not refresh in time knows
//! its lock may have been judged stale and stops before it writes anything that relies on
//! it ([`Lock::check_held`]). A process id means nothing across PID namespaces (two pods on
//! one node share a host name), so it is only used as a shortcut when host, boot and PID
//! namespace are all ours and the process is gone. Lock files of older versions (no
//! `expires`) are stale [`LEGACY_STALE_AFTER`] after their last write.
//!
//! [`unlock`] removes stale locks (or, asked to, every lock), unreadable lock objects and
//! leftover temporary files; an exclusive locker (`prune`) does the same on its way in.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::host::hostname;
use crate::store::{ObjectInfo, Store, StoreError, TEMPORARY_FILE_MAX_AGE};
use crate::RepoError;

/// How long a lock stays valid after its object was last written (by the storage's clock);
/// also the most any lock may claim.
pub const LOCK_TTL: Duration = Duration::from_secs(5 * 60);
/// How often a held lock is refreshed: four missed refreshes still leave it valid.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A holder gives its lock up this long before it may be judged stale: the storage's
/// timestamps are whole seconds, a listing takes time, and clocks run at slightly
/// different rates.
pub const HOLD_MARGIN: Duration = Duration::from_secs(60);
/// Lock files without `expires` (etcdguard before lock expiry) are stale this long after
/// their last write.
pub const LEGACY_STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub exclusive: bool,
    pub purpose: String,
    pub hostname: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
    /// When the holder's clock says the lock ends (for people and older versions only:
    /// staleness is judged by the storage's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// The lifetime the holder asks for, in milliseconds after each write; capped at
    /// [`LOCK_TTL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` of the holder's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The holder's PID namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
}

/// Where this process runs, as far as process ids are meaningful.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|p| p.to_string_lossy().into_owned())
}

fn to_chrono(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

/// Seconds since the epoch as a time (the epoch for nonsense).
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl LockInfo {
    /// How long after its last write this lock stays valid: what it asks for, at most
    /// [`LOCK_TTL`]; lock files of older versions get their old 30 minutes.
    pub fn lifetime(&self) -> Duration {
        match (self.expires, self.ttl_ms) {
            (None, _) => LEGACY_STALE_AFTER,
            (Some(_), None) => LOCK_TTL,
            (Some(_), Some(ms)) => Duration::from_millis(ms).min(LOCK_TTL),
        }
    }

    /// When the lock, last written at `written` by the storage's clock, becomes stale (by
    /// the same clock).
    pub fn stale_after(&self, written: DateTime<Utc>) -> DateTime<Utc> {
        written + to_chrono(self.lifetime())
    }

    /// Whether the lock, last written at `written`, is stale at `store_now`; both times are
    /// the storage's. Only a holder gone from this very host is stale sooner.
    pub fn is_stale(&self, written: DateTime<Utc>, store_now: DateTime<Utc>) -> bool {
        if store_now > self.stale_after(written) {
            return true;
        }
        // Shortcut for a holder killed on this very host: only when the process id is
        // comparable (same host, same boot, same PID namespace; for an older lock file,
        // which names neither, a host of this name).
        let comparable = self.hostname == hostname()
            && self.pid != std::process::id()
            && match self.expires {
                None => true,
                Some(_) => {
                    self.boot_id.is_some()
                        && self.boot_id == boot_id()
                        && self.pid_namespace.is_some()
                        && self.pid_namespace == pid_namespace()
                }
            };
        if comparable {
            // Signal 0 only checks whether the process exists (EPERM: it does, not ours).
            let alive = rustix::process::Pid::from_raw(self.pid as i32).is_some_and(|pid| {
                matches!(
                    rustix::process::test_kill_process(pid),
                    Ok(()) | Err(rustix::io::Errno::PERM)
                )
            });
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

/// "4m 10s", "12s", "2h 5m".
fn rough(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 && s % 60 == 0 => format!("{}m", s / 60),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// The storage's current time: the last-modified time of `mine` in `listing` (an object
/// just written), else this host's clock (a store that gives no times).
fn store_now(listing: &[ObjectInfo], mine: &str) -> DateTime<Utc> {
    listing
        .iter()
        .find(|o| o.key == mine && o.modified > 0)
        .map(|o| at(o.modified))
        .unwrap_or_else(Utc::now)
}

/// When `object` was last written by the storage's clock (this host's `fallback` when the
/// store gives no times).
fn written_at(object: &ObjectInfo, fallback: DateTime<Utc>) -> DateTime<Utc> {
    if object.modified > 0 {
        at(object.modified)
    } else {
        fallback
    }
}

/// One lock object as `backup unlock` found it.
#[derive(Debug, Clone)]
pub struct FoundLock {
    pub key: String,
    /// `None`: not a lock file (unreadable, or not JSON of a lock).
    pub info: Option<LockInfo>,
    /// Last written, by the storage's clock.
    pub written: DateTime<Utc>,
    /// When it is (or was) stale, by the storage's clock, unless rewritten.
    pub stale_at: DateTime<Utc>,
    pub stale: bool,
    pub removed: bool,
}

/// What [`unlock`] did.
#[derive(Debug, Clone, Default)]
pub struct UnlockReport {
    /// Every lock object listed (this run's clock probe aside).
    pub locks: Vec<FoundLock>,
    /// Temporary files of killed writers removed from `locks/` (local directories).
    pub temporaries_removed: usize,
}

/// Removes stale locks, unreadable lock objects older than [`LOCK_TTL`] and old temporary
/// files from `locks/`; with `remove_all`, every lock, live ones too (for when the operator
/// knows no etcdguard is running: a live holder that finds its lock gone rewrites it at its
/// next refresh, but may meanwhile have been ignored).
pub fn unlock(store: &dyn Store, remove_all: bool) -> Result<UnlockReport, RepoError> {
    // The storage's clock: the last-modified time of an object written now.
    let probe = format!("locks/{:032x}.clock", rand::random::<u128>());
    store.put(&probe, Bytes::new())?;
    let listing = store.list("locks/");
    let _ = store.delete(&probe);
    let listing = listing?;
    let now = store_now(&listing, &probe);
    let mut report = UnlockReport::default();
    for object in listing.iter().filter(|o| o.key != probe) {
        let when = written_at(object, now);
        let info = match store.get(&object.key) {
            Ok(b) => serde_json::from_slice::<LockInfo>(&b).ok(),
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let stale_at = info.as_ref().map_or(when + to_chrono(LOCK_TTL), |i| i.stale_after(when));
        let stale = match &info {
            Some(i) => i.is_stale(when, now),
            None => now > stale_at,
        };
        let removed = if stale || remove_all {
            store.delete(&object.key)?;
            true
        } else {
            false
        };
        report.locks.push(FoundLock {
            key: object.key.clone(),
            info,
            written: when,
            stale_at,
            stale,
            removed,
        });
    }
    report.temporaries_removed = store.sweep_temporaries("locks/", TEMPORARY_FILE_MAX_AGE)?;
    Ok(report)
}

/// A held lock; released (deleted) on drop.
pub struct Lock {
    store: Arc<dyn Store>,
    key: String,
    /// When the last successful write of the lock object began.
    written: Arc<Mutex<Instant>>,
    /// The lifetime it asks for.
    ttl: Duration,
    refresher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Lock {
    pub fn acquire(
        store: Arc<dyn Store>,
        exclusive: bool,
        purpose: &str,
    ) -> Result<Lock, RepoError> {
        Lock::acquire_with(store, exclusive, purpose, LOCK_TTL, REFRESH_EVERY)
    }

    /// As [`Lock::acquire`] with another lifetime (at most [`LOCK_TTL`]) and refresh period (tests).
    pub fn acquire_with(
        store: Arc<dyn Store>,
        exclusive: bool,
        purpose: &str,
        ttl: Duration,
        refresh_every: Duration,
    ) -> Result<Lock, RepoError> {
        let ttl = ttl.min(LOCK_TTL);
        let now = Utc::now();
        let info = LockInfo {
            exclusive,
            purpose: purpose.to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
            expires: Some(now + to_chrono(ttl)),
            ttl_ms: Some(ttl.as_millis() as u64),
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
        };
        let key = format!("locks/{:032x}.json", rand::random::<u128>());
        let started = Instant::now();
        store.put(&key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes")))?;
        let written = Arc::new(Mutex::new(started));
        let mut lock = Lock {
            store: store.clone(),
            key: key.clone(),
            written: written.clone(),
            ttl,
            refresher: None,
        };
        // Now look at the others; dropping `lock` on error removes ours again.
        let listing = store.list("locks/")?;
        let store_now = store_now(&listing, &key);
        for other in &listing {
            if other.key == key {
                continue;
            }
            let when = written_at(other, store_now);
            let theirs: LockInfo = match store.get(&other.key) {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(i) => i,
                    Err(_) => {
                        // Not a lock (planted, or another version's clock probe): it blocks
                        // no one; prune clears it once it is older than any lock could be.
                        if exclusive && store_now > when + to_chrono(LOCK_TTL) {
                            let _ = store.delete(&other.key);
                        }
                        continue;
                    }
                },
                Err(StoreError::NotFound(_)) => continue, // a half-listed delete
                Err(e) => return Err(e.into()),
            };
            if theirs.is_stale(when, store_now) {
                if exclusive {
                    let _ = store.delete(&other.key);
                }
                continue;
            }
            if exclusive || theirs.exclusive {
                let stale_at = theirs.stale_after(when);
                return Err(RepoError::Locked(format!(
                    "the repository is in use: {}, last written {} (by the storage's clock). Wait for it to finish; \
                     if its holder stops refreshing it, it is stale in {} ({} after its last write) and then ignored; \
                     `etcdguard backup unlock` removes stale locks",
                    theirs.describe(),
                    when.format("%Y-%m-%d %H:%M:%S UTC"),
                    rough(stale_at - store_now),
                    rough(to_chrono(theirs.lifetime())),
                )));
            }
        }
        if exclusive {
            let _ = store.sweep_temporaries("locks/", TEMPORARY_FILE_MAX_AGE);
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
                    let body =
                        Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serializes"));
                    let started = Instant::now();
                    if refresh_store.put(&key, body).is_ok() {
                        *written.lock().unwrap_or_else(|p| p.into_inner()) = started;
                    }
                }
            })
            .map_err(|e| RepoError::Io(format!("starting the lock refresher: {e}")))?;
        lock.refresher = Some((tx, handle));
        Ok(lock)
    }

    /// Whether the lock is still surely valid for every reader: rewritten within its
    /// lifetime, less a margin (by this process's monotonic clock, which runs at the
    /// storage's rate whatever either's wall clock says). A holder checks this before a
    /// write that relies on the lock (a manifest, a deletion), since once it is stale
    /// another process may ignore it.
    pub fn check_held(&self) -> Result<(), RepoError> {
        let written = *self.written.lock().unwrap_or_else(|p| p.into_inner());
        let margin = HOLD_MARGIN.min(self.ttl / 2);
        let age = written.elapsed();
        if age + margin >= self.ttl {
            return Err(RepoError::Locked(format!(
                "lost the repository lock ({}): it could not be refreshed for {}s (it is stale {}s after its last \
                 write), so another process may have ignored it; nothing more was written. Check the storage is \
                 reachable and run again",
                self.key,
                age.as_secs(),
                self.ttl.as_secs()
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
            ttl_ms: Some(LOCK_TTL.as_millis() as u64),
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

    fn local_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.path().to_path_buf()));
        (dir, store)
    }

    /// Sets a local object's last-modified time, as the storage would have stamped it.
    fn set_written(dir: &std::path::Path, key: &str, when: std::time::SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(dir.join(key))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn minutes_ago(m: u64) -> std::time::SystemTime {
        std::time::SystemTime::now() - Duration::from_secs(m * 60)
    }

    #[test]
    fn staleness_is_by_the_stores_clock_not_by_process_id() {
        let now = Utc::now();
        let minutes = |m: i64| chrono::TimeDelta::minutes(m);
        // Written 6 minutes ago by the storage's clock: stale whatever host and pid say.
        assert!(LockInfo { pid: 1, ..info(now) }.is_stale(now - minutes(6), now));
        // Another PID namespace on a host of the same name (two pods, one node): a pid
        // that is dead here says nothing; the fresh lock is live.
        let other_ns =
            LockInfo { pid: dead_pid(), pid_namespace: Some("pid:[1]".into()), ..info(now) };
        assert!(!other_ns.is_stale(now, now));
        let unknown_ns = LockInfo { pid: dead_pid(), pid_namespace: None, ..info(now) };
        assert!(!unknown_ns.is_stale(now, now));
        let other_boot =
            LockInfo { pid: dead_pid(), boot_id: Some("another boot".into()), ..info(now) };
        assert!(!other_boot.is_stale(now, now));
        // Same host, boot and namespace, process gone: stale at once (a kill -9 here).
        if boot_id().is_some() && pid_namespace().is_some() {
            let dead_here = LockInfo { pid: dead_pid(), ..info(now) };
            assert!(dead_here.is_stale(now, now));
        }
        // Alive (pid 1 exists in every namespace) and fresh: live.
        assert!(!LockInfo { pid: 1, ..info(now) }.is_stale(now - minutes(4), now));
        // What the lock claims does not count: valid until 2099, or written by a clock an
        // hour ahead, it is stale 5 minutes after it was stored; asking for more is capped.
        let far = "2099-01-01T00:00:00Z".parse().unwrap();
        let planted = LockInfo {
            pid: 1,
            hostname: "elsewhere".into(),
            created: far,
            refreshed: far,
            expires: Some(far),
            ..info(now)
        };
        assert!(!planted.is_stale(now - minutes(4), now));
        assert!(planted.is_stale(now - minutes(6), now));
        let greedy = LockInfo { ttl_ms: Some(u64::MAX), ..planted.clone() };
        assert_eq!(greedy.lifetime(), LOCK_TTL);
        assert!(greedy.is_stale(now - minutes(6), now));
        // A shorter lifetime is honoured.
        let short = LockInfo { ttl_ms: Some(1000), ..planted };
        assert!(short.is_stale(now - chrono::TimeDelta::seconds(2), now));
    }

    #[test]
    fn lock_files_of_older_versions_use_the_thirty_minute_rule() {
        let now = Utc::now();
        let json = |refreshed: DateTime<Utc>| {
            serde_json::json!({"exclusive": true, "purpose": "backup prune", "hostname": "elsewhere", "pid": 1,
                               "created": refreshed, "refreshed": refreshed})
            .to_string()
        };
        // (Another host's lock: the old rule's pid check does not apply.) Judged by when it
        // was stored, not by its `refreshed`.
        let old: LockInfo =
            serde_json::from_str(&json(now - chrono::TimeDelta::minutes(31))).unwrap();
        assert!(old.expires.is_none());
        assert!(!old.is_stale(now - chrono::TimeDelta::minutes(10), now));
        assert!(old.is_stale(now - chrono::TimeDelta::minutes(31), now));
        let future: LockInfo =
            serde_json::from_str(&json("2099-01-01T00:00:00Z".parse().unwrap())).unwrap();
        assert!(future.is_stale(now - chrono::TimeDelta::minutes(31), now));
    }

    #[test]
    fn a_planted_lock_blocks_only_until_it_is_stale_by_store_time() {
        let (dir, store) = local_store();
        let planted = serde_json::json!({"exclusive": true, "purpose": "backup prune", "hostname": "elsewhere", "pid": 1,
            "created": "2099-01-01T00:00:00Z", "refreshed": "2099-01-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z"});
        store.put("locks/planted.json", Bytes::from(planted.to_string())).unwrap();
        // Just written: it blocks, and the message says when it will not.
        let err = Lock::acquire(store.clone(), false, "backup create").map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RepoError::Locked(_)), "{err}");
        assert!(msg.contains("is stale in 4m") || msg.contains("is stale in 5m"), "{msg}");
        assert!(!msg.contains("valid until"), "the lock's own claim is shown: {msg}");
        // Written 6 minutes ago: stale, whatever it claims; prune removes it.
        set_written(dir.path(), "locks/planted.json", minutes_ago(6));
        drop(Lock::acquire(store.clone(), false, "backup create").unwrap());
        assert_eq!(store.list("locks/").unwrap().len(), 1, "a shared locker leaves it");
        drop(Lock::acquire(store.clone(), true, "backup prune").unwrap());
        assert!(store.list("locks/").unwrap().is_empty());
    }

    #[test]
    fn unlock_removes_stale_unreadable_and_temporary_lock_files_and_all_only_when_asked() {
        let (dir, store) = local_store();
        let live = Lock::acquire(store.clone(), false, "backup create").unwrap();
        let stale = serde_json::json!({"exclusive": false, "purpose": "backup create", "hostname": "elsewhere", "pid": 1,
            "created": Utc::now(), "refreshed": Utc::now(), "expires": Utc::now() + chrono::TimeDelta::hours(1)});
        store.put("locks/stale.json", Bytes::from(stale.to_string())).unwrap();
        set_written(dir.path(), "locks/stale.json", minutes_ago(10));
        store.put("locks/garbage.json", Bytes::from_static(b"\x00not json")).unwrap();
        set_written(dir.path(), "locks/garbage.json", minutes_ago(10));
        store.put("locks/young-garbage.json", Bytes::from_static(b"{")).unwrap();
        let tmp = dir.path().join("locks/.tmp-abandoned.json-0123");
        std::fs::write(&tmp, b"{").unwrap();
        set_written(dir.path(), "locks/.tmp-abandoned.json-0123", minutes_ago(90));

        let report = unlock(store.as_ref(), false).unwrap();
        let removed: Vec<&str> =
            report.locks.iter().filter(|l| l.removed).map(|l| l.key.as_str()).collect();
        assert_eq!(removed, vec!["locks/garbage.json", "locks/stale.json"]);
        assert_eq!(report.temporaries_removed, 1);
        assert!(!tmp.exists());
        let left: Vec<String> = store.list("locks/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"locks/young-garbage.json".to_string()));

        let report = unlock(store.as_ref(), true).unwrap();
        assert_eq!(report.locks.iter().filter(|l| l.removed && !l.stale).count(), 2);
        assert!(store.list("locks/").unwrap().is_empty());
        drop(live);
    }

    #[test]
    fn a_held_lock_is_refreshed_and_an_unrefreshed_one_is_given_up() {
        let (dir, store) = local_store();
        let read = |store: &Arc<dyn Store>| -> LockInfo {
            let key = store.list("locks/").unwrap()[0].key.clone();
            serde_json::from_slice(&store.get(&key).unwrap()).unwrap()
        };
        // Refreshed every 100 ms with a 3 minute lifetime: the lock is rewritten.
        let lock = Lock::acquire_with(
            store.clone(),
            false,
            "test",
            Duration::from_secs(180),
            Duration::from_millis(100),
        )
        .unwrap();
        let first = read(&store).refreshed;
        std::thread::sleep(Duration::from_millis(400));
        assert!(read(&store).refreshed > first, "not refreshed");
        assert_eq!(read(&store).ttl_ms, Some(180_000));
        lock.check_held().unwrap();
        drop(lock);
        assert!(store.list("locks/").unwrap().is_empty());
        // Never refreshed within its lifetime: the holder knows it lost the lock, and an
        // exclusive locker takes over (the storage's clock has whole seconds).
        let lock = Lock::acquire_with(
            store.clone(),
            false,
            "test",
            Duration::from_millis(300),
            Duration::from_secs(3600),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(lock.check_held(), Err(RepoError::Locked(_))));
        let key = store.list("locks/").unwrap()[0].key.clone();
        set_written(dir.path(), &key, std::time::SystemTime::now() - Duration::from_secs(2));
        let prune = Lock::acquire(store.clone(), true, "backup prune").unwrap();
        prune.check_held().unwrap();
        // A live lock blocks an exclusive one.
        let err = Lock::acquire(store.clone(), true, "backup prune").map(|_| ()).unwrap_err();
        assert!(matches!(err, RepoError::Locked(ref m) if m.contains("is stale in")), "{err}");
    }
}
