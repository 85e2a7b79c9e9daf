//! Restore drill: the agent's `--drill-every`. Restores the newest backup the way an operator
//! would at 3 a.m. and checks the result, so a backup that cannot be restored is found on a
//! quiet afternoon instead.
//!
//! In a private spool (0700, removed afterwards; a killed agent's is swept by the next
//! spool): fetch the snapshot (checked against its sha256), check its status
//! (revision, key count, hash) against the manifest, restore it into a scratch data dir as
//! `snapshot restore` does, and check the restored database's revision. With an etcd binary
//! (`--drill-etcd`) the drill also boots it on the restored data dir (loopback only, free
//! ports, stopped by PID; it dies with the agent if the agent is killed) and reads the first
//! key through raft: the answer's revision must be the backup's, and the key's value and
//! revision must be what the snapshot holds for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdguard_client::{ConnectConfig, Session};
use etcdguard_repo::manifest::Manifest;

use crate::error::{Error, Kind, Result};
use crate::repo::RepoSpec;
use crate::restore::{snapshot_restore_with, SnapshotRestoreOptions, Source};
use crate::snapshot::open_snapshot;
use crate::spool;
use crate::stop::Stop;

/// How long the booted etcd gets to answer.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const MEMBER: &str = "etcdguard-drill";

/// What a drill restores, and where.
#[derive(Clone)]
pub struct DrillOptions {
    pub repo: RepoSpec,
    /// Parent of the drill's spool (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    /// Boot this etcd binary on the restored data dir.
    pub etcd: Option<PathBuf>,
}

/// A drill that passed.
#[derive(Debug)]
pub struct Drilled {
    pub backup: String,
    pub revision: i64,
    pub total_key: u64,
    /// The key read from the booted etcd (lossy UTF-8), when one was booted and the keyspace
    /// is not empty.
    pub key_read: Option<String>,
    pub booted: bool,
    pub elapsed: Duration,
}

/// Runs one drill on the newest backup; `Ok(None)` when the repository has no backup (or
/// does not exist yet: the agent's first backup creates it).
pub fn drill(
    opts: &DrillOptions,
    stop: &Stop,
    note: &mut dyn FnMut(&str),
) -> Result<Option<Drilled>> {
    let started = Instant::now();
    let repo = match opts.repo.open_unlocked() {
        Err(e) if e.kind == Kind::NotFound => return Ok(None),
        other => other?,
    };
    // As `latest` means it: a damaged newest manifest fails the drill, not an older backup.
    let m = match repo.latest() {
        Ok(m) => m,
        Err(etcdguard_repo::RepoError::BackupNotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let m = &m;
    let parent = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (spool, _) = spool::create(&parent)?;
    let snapshot = spool.path().join("snapshot.db");
    note(&format!("drill: restoring backup {} (revision {})", m.id, m.etcd.revision));
    let index = repo.load_index()?;
    repo.restore_snapshot_to_file(&index, &m.snapshot, &snapshot, 0o600)?;
    stop.check()?;
    check_status(m, &snapshot)?;
    stop.check()?;
    let data_dir = spool.path().join("data");
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    // A drill checks the backup's own keys too: its EncryptionConfiguration must decrypt it.
    let in_place = crate::keycheck::InPlace::from_backup(&repo, m)?;
    snapshot_restore_with(
        &SnapshotRestoreOptions {
            file: snapshot.clone(),
            data_dir: Some(data_dir.clone()),
            name: MEMBER.into(),
            initial_cluster: Some(format!("{MEMBER}={peer_url}")),
            initial_cluster_token: "etcdguard-drill".into(),
            initial_advertise_peer_urls: peer_url.clone(),
            skip_hash_check: m.etcd.trailer == "absent",
            ..Default::default()
        },
        in_place,
        Source { verified: m.etcd.verified, temporary: false },
    )
    .map_err(|e| e.context("drill: restoring the snapshot into a scratch data dir"))?;
    let restored = status_of(&data_dir.join("member/snap/db"))?;
    if restored.revision != m.etcd.revision {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "drill: the restored data dir is at revision {}, the backup {} says {}",
                restored.revision, m.id, m.etcd.revision
            ),
        ));
    }
    stop.check()?;
    let mut drilled = Drilled {
        backup: m.id.clone(),
        revision: m.etcd.revision,
        total_key: m.etcd.total_key,
        key_read: None,
        booted: false,
        elapsed: Duration::ZERO,
    };
    if let Some(etcd) = &opts.etcd {
        let mut member =
            Member::boot(etcd, &data_dir, spool.path(), client_port, &peer_url, peer_port)?;
        let read = member.read_first_key(stop);
        member.stop();
        let first = read?;
        if first.header_revision != m.etcd.revision {
            return Err(Error::new(
                Kind::Corrupt,
                format!(
                    "drill: the booted etcd answers at revision {}, the backup {} is at {}",
                    first.header_revision, m.id, m.etcd.revision
                ),
            ));
        }
        if let Some(kv) = &first.kv {
            check_key_in_snapshot(&snapshot, kv)?;
            drilled.key_read = Some(String::from_utf8_lossy(&kv.key).into_owned());
        }
        drilled.booted = true;
    }
    drop(spool);
    drilled.elapsed = started.elapsed();
    // The inventory (`backup list`, the operator's records) shows it; a read-only or
    // immutable store that refuses the record does not fail the drill.
    if let Err(e) = repo.record_drill(&m.id, drilled.booted) {
        note(&format!("drill: passed, but its record could not be written: {e}"));
    }
    Ok(Some(drilled))
}

/// The fetched snapshot's status must be what the manifest recorded at backup time.
fn check_status(m: &Manifest, snapshot: &Path) -> Result<()> {
    let st = status_of(snapshot)?;
    let e = &m.etcd;
    if st.revision != e.revision || st.total_key != e.total_key || st.hash != e.hash {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "drill: backup {}: the restored snapshot has revision {}, {} keys, hash {:x}; the manifest says revision {}, {} keys, hash {:x}",
                m.id, st.revision, st.total_key, st.hash, e.revision, e.total_key, e.hash
            ),
        ));
    }
    Ok(())
}

fn status_of(path: &Path) -> Result<etcdguard_storage::Status> {
    let file = open_snapshot(path)?;
    let db = file.db().map_err(|e| crate::error::db_error(path, e))?;
    let release = || file.release_resident();
    etcdguard_storage::status(&db, Some(&release))
        .map_err(|e| crate::snapshot::status_error(path, e))
}

/// The key etcd answered must be in the snapshot at that revision with that value, and no
/// later revision may change it.
fn check_key_in_snapshot(snapshot: &Path, kv: &etcdguard_client::Change) -> Result<()> {
    let file = open_snapshot(snapshot)?;
    let db = file.db().map_err(|e| crate::error::db_error(snapshot, e))?;
    let release = || file.release_resident();
    let (mut found, mut later) = (false, None);
    etcdguard_storage::keys::for_each_revision(&db, Some(&release), &mut |r| {
        if r.kv.key != kv.key.as_slice() {
            return;
        }
        if r.main == kv.mod_revision && !r.tombstone && r.kv.value == kv.value.as_slice() {
            found = true;
        } else if r.main > kv.mod_revision {
            later = Some(r.main);
        }
    })
    .map_err(|e| Error::new(Kind::Corrupt, format!("drill: reading the snapshot: {e}")))?;
    let key = String::from_utf8_lossy(&kv.key);
    match (found, later) {
        (true, None) => Ok(()),
        (false, _) => Err(Error::new(
            Kind::Corrupt,
            format!("drill: the booted etcd answers key {key:?} at revision {} with a value the snapshot does not hold there", kv.mod_revision),
        )),
        (true, Some(rev)) => Err(Error::new(
            Kind::Corrupt,
            format!("drill: the booted etcd answers key {key:?} from revision {}, but the snapshot changes it at revision {rev}", kv.mod_revision),
        )),
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's pick; released for etcd to bind).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::failure(format!("drill: finding a free port on 127.0.0.1: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::failure(format!("drill: finding a free port on 127.0.0.1: {e}")))
}

/// The etcd booted on the restored data dir; killed by PID on drop.
struct Member {
    child: Option<Child>,
    endpoint: String,
    log: PathBuf,
}

impl Member {
    fn boot(
        etcd: &Path,
        data_dir: &Path,
        spool: &Path,
        client_port: u16,
        peer_url: &str,
        peer_port: u16,
    ) -> Result<Member> {
        let log = spool.join("etcd.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| Error::failure(format!("drill: {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::failure(format!("drill: {}: {e}", log.display())))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let mut cmd = Command::new(etcd);
        cmd.arg("--name")
            .arg(MEMBER)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer_port}"))
            .arg("--initial-advertise-peer-urls")
            .arg(peer_url)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER}={peer_url}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // etcd reads ETCD_* variables as flags: the agent's own environment must not steer it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        // SAFETY: prctl (a raw system call in rustix) is async-signal-safe; the child dies with the thread that started it,
        // so a killed agent leaves no etcd behind.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::new(Kind::NotFound, format!("drill: cannot start {}: {e}", etcd.display()))
                .with_hint(
                "--drill-etcd names the etcd binary to boot (the version of the cluster's etcd)",
            )
        })?;
        Ok(Member { child: Some(child), endpoint: client_url, log })
    }

    /// Waits for the member to answer, then reads the first key.
    fn read_first_key(&mut self, stop: &Stop) -> Result<etcdguard_client::FirstKey> {
        let cfg = ConnectConfig {
            endpoints: vec![self.endpoint.clone()],
            cacert: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            dial_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
        };
        let session = Session::new(cfg).map_err(crate::error::client_error)?;
        let started = Instant::now();
        loop {
            stop.check()?;
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(Error::failure(format!(
                    "drill: the booted etcd exited ({status}): {}",
                    self.log_tail()
                )));
            }
            let e = match session.first_key(&self.endpoint) {
                Ok(first) => return Ok(first),
                // The backed-up cluster had etcd's own auth on: the read is refused, which still
                // proves the member serves (as `endpoint health` counts it). Its revision comes
                // from the status call, which needs no user.
                Err(e @ etcdguard_client::ClientError::Auth { .. }) => {
                    let probe = session.probe(std::slice::from_ref(&self.endpoint)).pop();
                    match probe.map(|p| p.result) {
                        Some(Ok(st)) => {
                            return Ok(etcdguard_client::FirstKey {
                                header_revision: st.revision,
                                kv: None,
                            })
                        }
                        _ => e,
                    }
                }
                Err(e) => e,
            };
            if started.elapsed() > BOOT_TIMEOUT {
                return Err(Error::failure(format!(
                    "drill: the booted etcd did not answer within {}s: {e}; its log: {}",
                    BOOT_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdguard_repo::manifest::{EtcdInfo, Source as BackupSource};
    use etcdguard_repo::{BackupMeta, InitOptions, Repository};

    /// The drill restores what `latest` names: a damaged newest manifest fails it (exit 10)
    /// rather than drilling the backup before it.
    #[test]
    fn a_damaged_newest_manifest_fails_the_drill() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        let store = etcdguard_repo::open_url(repo_dir.to_str().unwrap()).unwrap();
        let repo = Repository::init(store, &InitOptions { chunk_size: 4096, ..Default::default() })
            .unwrap();
        let mut ids = Vec::new();
        for seed in 0..2u8 {
            let mut w = repo.begin_backup().unwrap();
            let part = w.add_snapshot(&mut &vec![seed; 8192][..], 4096).unwrap();
            let meta = BackupMeta {
                source: BackupSource::File { path: "test".into(), import: None },
                etcd: EtcdInfo { page_size: 4096, ..Default::default() },
                labels: Default::default(),
                cluster: None,
                created: None,
            };
            ids.push(w.commit(part, meta).unwrap().id);
        }
        let manifest = |id: &str| repo_dir.join("backups").join(format!("{id}.json"));
        let older = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(manifest(&ids[0]))
            .unwrap()
            .set_modified(older)
            .unwrap();
        std::fs::write(manifest(&ids[1]), b"{\"id\":").unwrap();
        let opts = DrillOptions {
            repo: RepoSpec::new(repo_dir.to_str().unwrap()),
            scratch_dir: Some(dir.path().to_path_buf()),
            etcd: None,
        };
        let err = drill(&opts, &Stop::never(), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind, Kind::Corrupt, "{err}");
        assert!(err.message.contains(&ids[1]) && err.message.contains(&ids[0]), "{err}");
    }
}
