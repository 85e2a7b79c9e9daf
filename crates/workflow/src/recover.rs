//! `cluster recover`: one quorum-loss recovery across every control-plane host, from the
//! operator's machine. Every step is an etcdguard node command run on its host through the
//! system's OpenSSH client (`ssh -o BatchMode=yes -o StrictHostKeyChecking=yes`): host keys are
//! always checked, nothing secret goes into a command line, and each step is the command an
//! operator would run by hand (`node park`, `node restore --new-cluster`, `node join`).
//!
//! Order: preflight on every host (`node preflight -w json`: version, the manifest, free
//! disk, whether etcd answers and has quorum; the snapshot checked) → plan (printed; a dry
//! run stops) → copy the snapshot to the restore host → park every host → restore a one-member
//! cluster on the restore host → wait until it is healthy → join the others one at a time →
//! wait until every member is healthy. `node restore` and `node join` themselves wait for
//! their host's API server (`/readyz`) when it has a manifest.
//!
//! The plan and each step's state are kept in a state file on the operator's machine (JSON,
//! written atomically, 0600) so `--resume` goes on at the first unfinished step after a kill.
//! A failed step rolls back every host a step touched: `node rollback --since <the host's
//! stamp at preflight>` parks it and puts back the data dir and manifest that restore/join
//! moved aside or rewrote; hosts that ran before are unparked in a second pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};

/// Facts about one host, as `node preflight -w json` prints them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    /// etcdguard's version and commit on that host.
    pub version: String,
    /// The host's clock as a stamp (`20261123T124500Z`): what a rollback undoes from.
    pub now: String,
    /// etcd's and the API server's manifests are parked (`node park`).
    pub parked: bool,
    pub etcd_manifest: PathBuf,
    pub member: String,
    pub data_dir: PathBuf,
    pub data_dir_exists: bool,
    /// Free bytes on the data dir's file system.
    pub free_bytes: u64,
    pub peer_urls: Option<String>,
    pub initial_cluster: Option<String>,
    /// Client URLs (`--advertise-client-urls`, else `--listen-client-urls`).
    pub client_urls: Vec<String>,
    /// TLS files the manifest's etcd serves with, usable as a client (paths on the host).
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The API server's address when it has a manifest.
    pub apiserver: Option<String>,
    /// etcd's client port accepts connections.
    pub etcd_answers: bool,
    /// A linearizable read through this member committed (the cluster has quorum).
    pub etcd_healthy: bool,
    /// Why the health check failed, when it did.
    pub health_error: Option<String>,
    /// The snapshot asked about with `--snapshot`, checked here.
    pub snapshot: Option<SnapshotFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFacts {
    pub path: PathBuf,
    pub bytes: u64,
    pub revision: i64,
    pub total_keys: u64,
    /// The sha256 trailer and the structure were checked.
    pub verified: bool,
    /// Free bytes where the snapshot is.
    pub free_bytes: u64,
}

/// What `node preflight` looks at.
pub struct FactsOptions {
    pub version: String,
    pub park: etcdguard_node::park::ParkRequest,
    pub snapshot: Option<PathBuf>,
    pub skip_hash_check: bool,
}

/// `node preflight`: facts of this host; changes nothing.
pub fn host_facts(opts: &FactsOptions) -> Result<HostFacts> {
    use crate::error::node_error;
    let park = etcdguard_node::park::Park::build(&opts.park).map_err(node_error)?;
    let etcd = &park.etcd;
    let access = etcdguard_node::read_etcd_client_access(&park.etcd_manifest).ok();
    let client_urls = access
        .as_ref()
        .and_then(|a| a.endpoints.as_ref().map(|(u, _)| u.clone()))
        .unwrap_or_else(|| etcd.client_addrs.iter().map(|a| format!("http://{a}")).collect());
    let cacert = access.as_ref().and_then(|a| a.cacert.as_ref().map(|c| c.0.clone()));
    let (cert, key) = access
        .as_ref()
        .and_then(|a| a.cert_key.as_ref().map(|c| (Some(c.0.clone()), Some(c.1.clone()))))
        .unwrap_or((None, None));
    let etcd_answers = etcd.client_addrs.iter().any(|a| etcdguard_node::port_open(a));
    let (etcd_healthy, health_error) = if etcd_answers {
        own_health(&client_urls, &cacert, &cert, &key)
    } else {
        (false, Some("etcd's client port is closed".into()))
    };
    let snapshot = match &opts.snapshot {
        None => None,
        Some(p) => {
            let bytes = std::fs::metadata(p)
                .map_err(|e| Error::new(Kind::NotFound, format!("{}: {e}", p.display())))?
                .len();
            let (status, _) = crate::snapshot::check_snapshot(p, opts.skip_hash_check)?;
            Some(SnapshotFacts {
                path: p.clone(),
                bytes,
                revision: status.revision,
                total_keys: status.total_key,
                verified: !opts.skip_hash_check,
                free_bytes: etcdguard_node::rollback::free_bytes(p).map_err(node_error)?,
            })
        }
    };
    Ok(HostFacts {
        version: opts.version.clone(),
        now: stamp(),
        parked: park.already_parked,
        etcd_manifest: park.etcd_manifest.clone(),
        member: etcd.name.clone(),
        data_dir: etcd.data_dir.clone(),
        data_dir_exists: etcd.data_dir.exists(),
        free_bytes: etcdguard_node::rollback::free_bytes(&etcd.data_dir).map_err(node_error)?,
        peer_urls: etcd.initial_advertise_peer_urls.clone(),
        initial_cluster: etcd.initial_cluster.clone(),
        client_urls,
        cacert,
        cert,
        key,
        apiserver: park.apiserver.as_ref().map(|a| a.addr.clone()),
        etcd_answers,
        etcd_healthy,
        health_error,
        snapshot,
    })
}

/// One linearizable read through this member, with the manifest's TLS files.
fn own_health(
    urls: &[String],
    cacert: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> (bool, Option<String>) {
    let https = urls.iter().any(|u| u.starts_with("https"));
    let flags = etcdguard_client::ConnectFlags {
        endpoints: Some(urls.to_vec()),
        cacert: cacert.clone().filter(|_| https),
        cert: cert.clone().filter(|_| https),
        key: key.clone().filter(|_| https),
        dial_timeout: Some("2s".into()),
        command_timeout: Some("3s".into()),
        ..Default::default()
    };
    let session = match crate::backup::connect(&flags, &mut |_| {}) {
        Ok(s) => s,
        Err(e) => return (false, Some(e.message)),
    };
    let health = session.health(&session.config().endpoints.clone());
    match health.iter().find(|h| h.result.is_ok()) {
        Some(_) => (true, None),
        None => (false, health.into_iter().find_map(|h| h.result.err().map(|e| e.to_string()))),
    }
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// How to reach the hosts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    /// `-o` options added after etcdguard's own (which they cannot weaken: ssh takes the first
    /// value of an option, and etcdguard's come first).
    pub options: Vec<String>,
    pub known_hosts: Option<PathBuf>,
    /// The etcdguard binary on the hosts.
    pub remote_binary: String,
    /// The ssh program [default: `ssh`].
    pub program: Option<String>,
}

/// A word for the remote shell: as is when it is plain, else single-quoted.
pub fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./=:,@%+-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

impl SshSettings {
    fn command(&self, host: &str, remote: &str) -> Command {
        let mut c = Command::new(self.program.as_deref().unwrap_or("ssh"));
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=15",
        ]);
        if let Some(k) = &self.known_hosts {
            c.arg("-o").arg(format!("UserKnownHostsFile={}", k.display()));
            c.args(["-o", "GlobalKnownHostsFile=/dev/null"]);
        }
        if let Some(p) = self.port {
            c.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.user {
            c.arg("-l").arg(u);
        }
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c.arg("--").arg(host).arg(remote);
        c
    }

    fn etcdguard(&self, args: &[String]) -> String {
        std::iter::once(self.remote_binary.as_str())
            .chain(args.iter().map(String::as_str))
            .map(sh_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a remote command printed.
struct Remote {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr_tail: Vec<String>,
    /// sha256 of what was sent on stdin, when something was.
    sent_sha256: Option<String>,
}

fn ssh_error(host: &str, r: &Remote) -> Option<Error> {
    if r.code != Some(255) {
        return None;
    }
    let said = r.stderr_tail.join("\n");
    if said.contains("Host key verification failed")
        || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || said.contains("No ED25519 host key is known")
        || said.contains("host key is known")
    {
        return Some(Error::new(Kind::TlsOrAuth, format!("{host}: its SSH host key is not the one known_hosts holds (or none is known); nothing was changed on it")).with_hint(
            "check the host's key fingerprint out of band and add it to ~/.ssh/known_hosts (or the file given with --known-hosts); etcdguard never turns host key checking off",
        ));
    }
    Some(
        Error::new(Kind::Unreachable, format!("{host}: ssh failed: {said}"))
            .with_hint("check that `ssh -o BatchMode=yes HOST true` works for this user (keys in the agent or ~/.ssh, --ssh-user, --ssh-port)"),
    )
}

/// Events for the operator.
pub enum RecoverEvent<'a> {
    /// A line of progress (remote output carries its host).
    Note(&'a str),
    /// Preflight is done: the plan.
    Planned(&'a RecoverState),
    StepStarted(&'a Step),
    StepEnded(&'a Step),
    RolledBack {
        host: &'a str,
        steps: Vec<String>,
    },
}

/// Where the snapshot comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Source {
    /// A file on the operator's machine, copied to the restore host.
    LocalFile { path: PathBuf, bytes: u64, revision: i64, total_keys: u64 },
    /// A backup of a repository the restore host reads.
    Backup { id: String, repo: String, passphrase_file: Option<PathBuf> },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    CopySnapshot,
    Park,
    Restore,
    WaitHealthy,
    Join,
    WaitAllHealthy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub kind: StepKind,
    pub host: String,
    pub what: String,
    pub status: StepStatus,
    pub started_at: Option<String>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPlan {
    pub host: String,
    pub facts: HostFacts,
    /// The layout flags of every node command on this host.
    pub layout: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Planned,
    Running,
    Recovered,
    RolledBack,
}

/// The plan and where it stands: the state file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverState {
    pub outcome: Outcome,
    pub restore_host: String,
    pub hosts: Vec<HostPlan>,
    pub source: Source,
    /// Where the snapshot is on the restore host (a local file's copy).
    pub remote_snapshot: Option<PathBuf>,
    pub ssh: SshSettings,
    pub wait_timeout_secs: u64,
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

impl RecoverState {
    fn host(&self, name: &str) -> &HostPlan {
        self.hosts.iter().find(|h| h.host == name).expect("a planned host")
    }
}

/// Where each host keeps its control plane (passed to every node command there).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub manifests_dir: Option<PathBuf>,
    pub kubernetes_dir: Option<PathBuf>,
    pub etcd_manifest: Option<PathBuf>,
}

impl Layout {
    fn flags(&self, kubernetes_dir: bool) -> Vec<String> {
        let mut f = Vec::new();
        let mdir = self
            .manifests_dir
            .clone()
            .or_else(|| self.kubernetes_dir.as_ref().map(|k| k.join("manifests")));
        if let Some(m) = mdir {
            f.extend(["--manifests-dir".into(), m.display().to_string()]);
        }
        if let (true, Some(k)) = (kubernetes_dir, &self.kubernetes_dir) {
            f.extend(["--kubernetes-dir".into(), k.display().to_string()]);
        }
        if let Some(e) = &self.etcd_manifest {
            f.extend(["--etcd-manifest".into(), e.display().to_string()]);
        }
        f
    }
}

pub struct RecoverOptions {
    pub hosts: Vec<String>,
    /// Where each host keeps its control plane; `{host}` in a path is the host's name.
    pub layout: Layout,
    pub ssh: SshSettings,
    pub snapshot: Option<PathBuf>,
    pub backup: Option<(String, String, Option<PathBuf>)>,
    pub restore_on: Option<String>,
    /// Where a local snapshot goes on the restore host.
    pub remote_dir: PathBuf,
    pub wait_timeout: Duration,
    pub dry_run: bool,
    pub force: bool,
    pub resume: bool,
    pub state_file: PathBuf,
    /// This binary's version: the hosts' must be equal to each other (a different local one
    /// is a note).
    pub version: String,
}

/// The layout of one host: `{host}` in a path is replaced by the host's name as given.
fn layout_for(opts: &RecoverOptions, host: &str) -> Layout {
    let sub = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| PathBuf::from(p.display().to_string().replace("{host}", host)))
    };
    Layout {
        manifests_dir: sub(&opts.layout.manifests_dir),
        kubernetes_dir: sub(&opts.layout.kubernetes_dir),
        etcd_manifest: sub(&opts.layout.etcd_manifest),
    }
}

/// Runs a remote etcdguard command, streaming its stderr lines to `on` with the host.
fn run_remote(
    ssh: &SshSettings,
    host: &str,
    args: &[String],
    stdin: Option<std::fs::File>,
    remote_override: Option<String>,
    on: &mut dyn FnMut(RecoverEvent<'_>),
) -> Result<Remote> {
    let remote = remote_override.unwrap_or_else(|| ssh.etcdguard(args));
    let mut cmd = ssh.command(host, &remote);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::failure(format!("starting ssh: {e}"))
            .with_hint("install the OpenSSH client (`ssh` on PATH)")
    })?;
    // What goes to the host is hashed as it is sent, so the copy can be compared with the
    // original without reading either file again.
    let sender = stdin.map(|mut file| {
        let mut to = child.stdin.take().expect("piped");
        std::thread::spawn(move || -> std::io::Result<String> {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                to.write_all(&buf[..n])?;
            }
            Ok(format!("{:x}", hash.finalize()))
        })
    });
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        on(RecoverEvent::Note(&format!("  [{host}] {line}")));
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let stdout = reader.join().unwrap_or_default();
    let status =
        child.wait().map_err(|e| Error::failure(format!("waiting for ssh to {host}: {e}")))?;
    // A send that broke off is reported by the remote side's exit status; only a whole send
    // has a digest.
    let sent_sha256 = sender.and_then(|t| t.join().ok()).and_then(|r| r.ok());
    Ok(Remote { code: status.code(), stdout, stderr_tail: tail, sent_sha256 })
}

fn remote_failed(host: &str, what: &str, r: &Remote) -> Error {
    if let Some(e) = ssh_error(host, r) {
        return e;
    }
    let last =
        r.stderr_tail.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
    let kind = match r.code {
        Some(17) => Kind::Refused,
        Some(12) => Kind::Unreachable,
        Some(13) => Kind::TlsOrAuth,
        Some(2) => Kind::Usage,
        Some(127) => Kind::NotFound,
        _ => Kind::Failure,
    };
    let code = r.code.map_or("a signal".to_string(), |c| format!("exit {c}"));
    let mut e = Error::new(kind, format!("{host}: {what} failed ({code}): {last}"));
    if r.code == Some(127) {
        e = e.with_hint(
            "etcdguard is not on that host's PATH: install it there, or give --remote-binary PATH",
        );
    }
    e
}

fn facts_of(
    ssh: &SshSettings,
    host: &str,
    layout: &[String],
    snapshot: Option<&Path>,
    on: &mut dyn FnMut(RecoverEvent<'_>),
) -> Result<HostFacts> {
    let mut args: Vec<String> = vec!["node".into(), "preflight".into(), "-w".into(), "json".into()];
    args.extend(layout.iter().cloned());
    if let Some(s) = snapshot {
        args.extend(["--snapshot".into(), s.display().to_string()]);
    }
    let r = run_remote(ssh, host, &args, None, None, on)?;
    if r.code != Some(0) {
        return Err(remote_failed(host, "node preflight", &r));
    }
    serde_json::from_slice(&r.stdout).map_err(|e| {
        Error::failure(format!(
            "{host}: `node preflight -w json` printed no facts ({e}); is the etcdguard there as new as this one?"
        ))
    })
}

/// Writes the state file atomically (temp file 0600, fsync, rename, dir fsync).
pub fn save_state(path: &Path, state: &RecoverState) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
    let text = serde_json::to_vec_pretty(state).expect("state serializes");
    let io = |e: std::io::Error| {
        Error::failure(format!("writing the state file {}: {e}", path.display()))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn load_state(path: &Path) -> Result<Option<RecoverState>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::usage(format!(
                "the state file {} is not one `cluster recover` wrote: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::failure(format!("reading {}: {e}", path.display()))),
    }
}

/// Preflight on every host, then the plan. Changes nothing.
pub fn plan(opts: &RecoverOptions, on: &mut dyn FnMut(RecoverEvent<'_>)) -> Result<RecoverState> {
    if opts.hosts.len() < 2 {
        return Err(Error::usage(
            "--hosts needs every control-plane host (two or more), comma-separated",
        ));
    }
    let restore_host = opts.restore_on.clone().unwrap_or_else(|| opts.hosts[0].clone());
    if !opts.hosts.contains(&restore_host) {
        return Err(Error::usage(format!("--restore-on {restore_host} is not one of --hosts")));
    }
    let mut notes = Vec::new();
    // The snapshot first: a bad local file stops everything before any host is asked.
    let source = match (&opts.snapshot, &opts.backup) {
        (Some(p), None) => {
            on(RecoverEvent::Note(&format!(
                "checking {} (sha256 trailer and structure)",
                p.display()
            )));
            let bytes = std::fs::metadata(p)
                .map_err(|e| Error::new(Kind::NotFound, format!("{}: {e}", p.display())))?
                .len();
            let (status, _) = crate::snapshot::check_snapshot(p, false)?;
            Source::LocalFile {
                path: p.clone(),
                bytes,
                revision: status.revision,
                total_keys: status.total_key,
            }
        }
        (None, Some((id, repo, pf))) => {
            Source::Backup { id: id.clone(), repo: repo.clone(), passphrase_file: pf.clone() }
        }
        _ => {
            return Err(Error::usage(
                "give the snapshot to restore: --snapshot FILE or --backup ID --repo URL",
            ))
        }
    };
    let mut hosts = Vec::new();
    for h in &opts.hosts {
        on(RecoverEvent::Note(&format!("preflight on {h}")));
        let layout = layout_for(opts, h);
        let flags = layout.flags(false);
        let facts = facts_of(&opts.ssh, h, &flags, None, on)?;
        hosts.push(HostPlan { host: h.clone(), facts, layout: flags });
    }
    // Versions: the hosts must agree with each other.
    let versions: std::collections::BTreeSet<&str> =
        hosts.iter().map(|h| h.facts.version.as_str()).collect();
    if versions.len() > 1 {
        let each: Vec<String> =
            hosts.iter().map(|h| format!("{}: {}", h.host, h.facts.version)).collect();
        return Err(Error::usage(format!(
            "the hosts run different etcdguard versions ({}); nothing was changed",
            each.join("; ")
        ))
        .with_hint("install the same etcdguard on every control-plane host"));
    }
    if versions.first() != Some(&opts.version.as_str()) {
        notes.push(format!(
            "note: the hosts run etcdguard {}, this machine {}",
            hosts[0].facts.version, opts.version
        ));
    }
    // Quorum: a member whose linearizable read commits means the cluster is not lost.
    let healthy: Vec<&str> =
        hosts.iter().filter(|h| h.facts.etcd_healthy).map(|h| h.host.as_str()).collect();
    if !healthy.is_empty() {
        let msg = format!(
            "the cluster has quorum: a linearizable read commits through etcd on {}; recovering would throw away every write since the snapshot",
            healthy.join(", ")
        );
        if !opts.force {
            return Err(Error::new(Kind::Refused, format!("{msg}; nothing was changed")).with_hint(
                "for a single broken member use `cluster member remove` + `node join`; --force recovers anyway",
            ));
        }
        notes.push(format!("warning (--force): {msg}"));
    }
    // Disk: every data dir receives the whole database (restore, or a join's catch-up).
    let size = match &source {
        Source::LocalFile { bytes, .. } => Some(*bytes),
        Source::Backup { .. } => None,
    };
    let remote_snapshot = match &source {
        Source::LocalFile { path, .. } => Some(
            PathBuf::from(opts.remote_dir.display().to_string().replace("{host}", &restore_host))
                .join(format!(
                    "etcdguard-recover-{}-{}",
                    stamp(),
                    path.file_name().unwrap_or_default().to_string_lossy()
                )),
        ),
        Source::Backup { .. } => None,
    };
    if let Some(size) = size {
        for h in &hosts {
            let mut need = size;
            if h.host == restore_host {
                need += size; // the copy of the snapshot beside the restored data dir
            }
            if h.facts.free_bytes < need {
                return Err(Error::usage(format!(
                    "{}: {} has {} free, {} needed (the snapshot is {}); nothing was changed",
                    h.host,
                    h.facts.data_dir.display(),
                    etcdguard_storage::status::humanize_bytes(h.facts.free_bytes),
                    etcdguard_storage::status::humanize_bytes(need),
                    etcdguard_storage::status::humanize_bytes(size)
                )));
            }
        }
    }
    if let Source::Backup { id, repo, passphrase_file } = &source {
        // The restore host must read the backup: verify it there.
        let mut args: Vec<String> =
            vec!["backup".into(), "verify".into(), id.clone(), "--repo".into(), repo.clone()];
        if let Some(p) = passphrase_file {
            args.extend(["--passphrase-file".into(), p.display().to_string()]);
        }
        on(RecoverEvent::Note(&format!("verifying backup {id} of {repo} from {restore_host}")));
        let r = run_remote(&opts.ssh, &restore_host, &args, None, None, on)?;
        if r.code != Some(0) {
            return Err(remote_failed(&restore_host, "reading and verifying the backup", &r)
                .with_hint(
                "the restore host must read the repository (its URL, credentials, passphrase file)",
            ));
        }
    }
    let mut steps = Vec::new();
    let step = |kind: StepKind, host: &str, what: String| Step {
        kind,
        host: host.to_string(),
        what,
        status: StepStatus::Pending,
        started_at: None,
        seconds: None,
        error: None,
    };
    if let (Source::LocalFile { path, .. }, Some(dest)) = (&source, &remote_snapshot) {
        steps.push(step(
            StepKind::CopySnapshot,
            &restore_host,
            format!(
                "copy {} to {}:{} and verify it there",
                path.display(),
                restore_host,
                dest.display()
            ),
        ));
    }
    for h in &hosts {
        let what = if h.facts.parked {
            "node park (parked already: waits until down)"
        } else {
            "node park: stop etcd and the API server"
        };
        steps.push(step(StepKind::Park, &h.host, what.to_string()));
    }
    let r = hosts.iter().find(|h| h.host == restore_host).expect("checked");
    steps.push(step(
        StepKind::Restore,
        &restore_host,
        format!(
            "node restore --new-cluster: member {} from the snapshot, data dir {}",
            r.facts.member,
            r.facts.data_dir.display()
        ),
    ));
    steps.push(step(
        StepKind::WaitHealthy,
        &restore_host,
        format!("wait until {} is healthy", r.facts.client_urls.join(",")),
    ));
    for h in hosts.iter().filter(|h| h.host != restore_host) {
        steps.push(step(
            StepKind::Join,
            &h.host,
            format!(
                "node join --endpoints {}: member {} added as a learner, started, promoted",
                r.facts.client_urls.join(","),
                h.facts.member
            ),
        ));
    }
    steps.push(step(
        StepKind::WaitAllHealthy,
        &restore_host,
        "wait until every member is healthy".into(),
    ));
    let state = RecoverState {
        outcome: Outcome::Planned,
        restore_host,
        hosts,
        source,
        remote_snapshot,
        ssh: opts.ssh.clone(),
        wait_timeout_secs: opts.wait_timeout.as_secs(),
        steps,
        notes,
    };
    on(RecoverEvent::Planned(&state));
    Ok(state)
}

/// The whole recovery: plan (or the state file with `resume`), then the steps.
pub fn recover(
    opts: &RecoverOptions,
    on: &mut dyn FnMut(RecoverEvent<'_>),
) -> Result<RecoverState> {
    let existing = load_state(&opts.state_file)?;
    let mut state = if opts.resume {
        let Some(s) = existing else {
            return Err(Error::usage(format!(
                "--resume: there is no state file {}",
                opts.state_file.display()
            )));
        };
        if s.outcome != Outcome::Running {
            return Err(Error::usage(format!(
                "--resume: the recovery in {} is {:?}, not running; start a new one without --resume",
                opts.state_file.display(),
                s.outcome
            )));
        }
        let mut hosts: Vec<&str> = s.hosts.iter().map(|h| h.host.as_str()).collect();
        let mut asked: Vec<&str> = opts.hosts.iter().map(String::as_str).collect();
        hosts.sort();
        asked.sort();
        if !opts.hosts.is_empty() && hosts != asked {
            return Err(Error::usage(format!(
                "--resume: the state file is for the hosts {}, not {}",
                hosts.join(","),
                asked.join(",")
            )));
        }
        on(RecoverEvent::Note(&format!("resuming the recovery in {}", opts.state_file.display())));
        on(RecoverEvent::Planned(&s));
        s
    } else {
        if let Some(s) = existing.filter(|s| s.outcome == Outcome::Running) {
            return Err(Error::usage(format!(
                "{} holds a recovery that has not finished (restore on {}); go on with --resume, or remove the file to start over",
                opts.state_file.display(),
                s.restore_host
            )));
        }
        let s = plan(opts, on)?;
        if opts.dry_run {
            return Ok(s);
        }
        s
    };
    state.outcome = Outcome::Running;
    save_state(&opts.state_file, &state)?;
    for i in 0..state.steps.len() {
        if state.steps[i].status == StepStatus::Done {
            continue;
        }
        state.steps[i].status = StepStatus::Running;
        state.steps[i].started_at = Some(chrono::Utc::now().to_rfc3339());
        state.steps[i].error = None;
        save_state(&opts.state_file, &state)?;
        on(RecoverEvent::StepStarted(&state.steps[i]));
        let t = Instant::now();
        let result = run_step(&state, &state.steps[i], on);
        state.steps[i].seconds = Some(t.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                state.steps[i].status = StepStatus::Done;
                save_state(&opts.state_file, &state)?;
                on(RecoverEvent::StepEnded(&state.steps[i]));
            }
            Err(e) => {
                state.steps[i].status = StepStatus::Failed;
                state.steps[i].error = Some(e.message.clone());
                save_state(&opts.state_file, &state)?;
                on(RecoverEvent::StepEnded(&state.steps[i]));
                let rolled = rollback(&state, on);
                state.outcome = Outcome::RolledBack;
                save_state(&opts.state_file, &state)?;
                let summary = match rolled {
                    Ok(hosts) if hosts.is_empty() => "nothing had been changed".to_string(),
                    Ok(hosts) => format!(
                        "rolled back {}: each is as it was before the recovery",
                        hosts.join(", ")
                    ),
                    Err(r) => format!("the rollback failed too: {}", r.message),
                };
                let step = &state.steps[i];
                return Err(Error::new(
                    e.kind,
                    format!(
                        "step `{}` on {} failed: {}; {summary}",
                        step.what, step.host, e.message
                    ),
                )
                .with_hint(e.hint.unwrap_or_else(|| {
                    "fix the cause on that host, then run `cluster recover` again".into()
                })));
            }
        }
    }
    state.outcome = Outcome::Recovered;
    save_state(&opts.state_file, &state)?;
    if let Some(p) = &state.remote_snapshot {
        let rm = format!("rm -f -- {}", sh_quote(&p.display().to_string()));
        let _ = run_remote(&state.ssh, &state.restore_host, &[], None, Some(rm), &mut |_| {});
    }
    Ok(state)
}

fn wait_timeout_flag(state: &RecoverState) -> Vec<String> {
    vec!["--wait-timeout".into(), format!("{}s", state.wait_timeout_secs)]
}

fn run_step(state: &RecoverState, step: &Step, on: &mut dyn FnMut(RecoverEvent<'_>)) -> Result<()> {
    let host = state.host(&step.host);
    let ssh = &state.ssh;
    let restore = state.host(&state.restore_host);
    let node = |sub: &str| -> Vec<String> {
        let mut a: Vec<String> = vec!["node".into(), sub.into()];
        a.extend(host.layout.iter().cloned());
        a
    };
    let check = |r: Remote, what: &str| -> Result<Remote> {
        if r.code == Some(0) {
            Ok(r)
        } else {
            Err(remote_failed(&step.host, what, &r))
        }
    };
    match step.kind {
        StepKind::CopySnapshot => {
            let (Source::LocalFile { path, .. }, Some(dest)) =
                (&state.source, &state.remote_snapshot)
            else {
                return Ok(());
            };
            let f = std::fs::File::open(path)
                .map_err(|e| Error::new(Kind::NotFound, format!("{}: {e}", path.display())))?;
            let d = sh_quote(&dest.display().to_string());
            let part = sh_quote(&format!("{}.part", dest.display()));
            let dir = sh_quote(&dest.parent().unwrap_or(Path::new("/")).display().to_string());
            // umask: the copy holds every secret of the cluster. The copy is hashed where it
            // lands and compared with what was sent: the original was checked in the plan and
            // `node restore` checks the copy again, so a third full check would only cost time.
            let remote = format!(
                "umask 077 && mkdir -p -- {dir} && cat > {part} && sha256sum -- {part} && mv -f -- {part} {d}"
            );
            let r = run_remote(ssh, &step.host, &[], Some(f), Some(remote), on)?;
            // 127 here is a missing shell tool, not a missing etcdguard (remote_failed's hint).
            if r.code == Some(127) {
                return Err(Error::new(
                    Kind::NotFound,
                    format!("{}: copying the snapshot needs `sha256sum` and `cat` there (coreutils)", step.host),
                )
                .with_hint("install coreutils on that host (a `.part` copy may be left in --remote-dir); no host was parked yet"));
            }
            let r = check(r, "copying the snapshot")?;
            let landed = String::from_utf8_lossy(&r.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match &r.sent_sha256 {
                Some(sent) if *sent == landed => on(RecoverEvent::Note(&format!(
                    "  the copy on {} is byte for byte the checked snapshot (sha256 {})",
                    step.host,
                    &sent[..16]
                ))),
                Some(sent) => {
                    return Err(Error::failure(format!(
                        "the copy on {} has sha256 {landed:?}, the original {sent}",
                        step.host
                    ))
                    .with_hint(
                        "the copy was damaged on its way: run the recovery again with --resume",
                    ))
                }
                None => {
                    return Err(Error::failure(format!(
                        "the snapshot could not be read while copying it to {}",
                        step.host
                    )))
                }
            }
        }
        StepKind::Park => {
            let mut a = node("park");
            a.extend(["--timeout".into(), format!("{}s", state.wait_timeout_secs)]);
            check(run_remote(ssh, &step.host, &a, None, None, on)?, "node park")?;
        }
        StepKind::Restore => {
            let mut a: Vec<String> = vec!["node".into(), "restore".into()];
            match (&state.source, &state.remote_snapshot) {
                (Source::LocalFile { .. }, Some(p)) => a.push(p.display().to_string()),
                (Source::Backup { id, repo, passphrase_file }, _) => {
                    a.extend(["--backup".into(), id.clone(), "--repo".into(), repo.clone()]);
                    if let Some(p) = passphrase_file {
                        a.extend(["--passphrase-file".into(), p.display().to_string()]);
                    }
                }
                _ => return Err(Error::failure("no snapshot on the restore host")),
            }
            a.push("--new-cluster".into());
            a.extend(host.layout.iter().cloned());
            a.extend(wait_timeout_flag(state));
            check(run_remote(ssh, &step.host, &a, None, None, on)?, "node restore --new-cluster")?;
        }
        StepKind::WaitHealthy | StepKind::WaitAllHealthy => {
            let hosts: Vec<&HostPlan> = match step.kind {
                StepKind::WaitHealthy => vec![restore],
                _ => state.hosts.iter().collect(),
            };
            let deadline = Instant::now() + Duration::from_secs(state.wait_timeout_secs);
            for h in hosts {
                loop {
                    let f = facts_of(ssh, &h.host, &h.layout, None, &mut |_| {})?;
                    if f.etcd_healthy {
                        on(RecoverEvent::Note(&format!("  {} ({}) is healthy", h.host, f.member)));
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(Error::new(
                            Kind::Unreachable,
                            format!(
                                "{}: etcd did not become healthy within {} s ({})",
                                h.host,
                                state.wait_timeout_secs,
                                f.health_error.unwrap_or_default()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        StepKind::Join => {
            let mut a = node("join");
            a.extend(["--endpoints".into(), restore.facts.client_urls.join(",")]);
            if restore.facts.client_urls.iter().any(|u| u.starts_with("https")) {
                if let (Some(c), Some(cert), Some(k)) =
                    (&host.facts.cacert, &host.facts.cert, &host.facts.key)
                {
                    a.extend([
                        "--cacert".into(),
                        c.display().to_string(),
                        "--cert".into(),
                        cert.display().to_string(),
                        "--key".into(),
                        k.display().to_string(),
                    ]);
                }
            }
            a.extend(wait_timeout_flag(state));
            check(run_remote(ssh, &step.host, &a, None, None, on)?, "node join")?;
        }
    }
    Ok(())
}

/// Rolls back every host a step touched (parks them, puts back data dir and manifest); then
/// unparks those that ran before. Returns the hosts rolled back.
fn rollback(state: &RecoverState, on: &mut dyn FnMut(RecoverEvent<'_>)) -> Result<Vec<String>> {
    let touched: Vec<&HostPlan> = state
        .hosts
        .iter()
        .filter(|h| {
            state.steps.iter().any(|s| {
                s.host == h.host
                    && s.kind != StepKind::CopySnapshot
                    && s.status != StepStatus::Pending
                    && !matches!(s.kind, StepKind::WaitHealthy | StepKind::WaitAllHealthy)
            })
        })
        .collect();
    let mut first_error = None;
    let mut done = Vec::new();
    for (pass, unpark) in [(1, false), (2, true)] {
        for h in &touched {
            if unpark && h.facts.parked {
                continue; // parked before the recovery: it stays parked
            }
            let mut a: Vec<String> = vec![
                "node".into(),
                "rollback".into(),
                "--since".into(),
                h.facts.now.clone(),
                "-w".into(),
                "json".into(),
            ];
            a.extend(h.layout.iter().cloned());
            a.extend(["--timeout".into(), format!("{}s", state.wait_timeout_secs)]);
            if unpark {
                a.push("--unpark".into());
            }
            on(RecoverEvent::Note(&format!(
                "rollback pass {pass} on {}{}",
                h.host,
                if unpark { " (unpark)" } else { "" }
            )));
            match run_remote(&state.ssh, &h.host, &a, None, None, on) {
                Ok(r) if r.code == Some(0) => {
                    let steps: Vec<String> = serde_json::from_slice::<serde_json::Value>(&r.stdout)
                        .ok()
                        .and_then(|v| {
                            v["steps"].as_array().map(|a| {
                                a.iter().filter_map(|s| s.as_str().map(String::from)).collect()
                            })
                        })
                        .unwrap_or_default();
                    on(RecoverEvent::RolledBack { host: &h.host, steps });
                    if !done.contains(&h.host) {
                        done.push(h.host.clone());
                    }
                }
                Ok(r) => {
                    let e = remote_failed(&h.host, "node rollback", &r);
                    on(RecoverEvent::Note(&format!(
                        "rollback on {} failed: {}",
                        h.host, e.message
                    )));
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_the_remote_shell() {
        assert_eq!(sh_quote("/etc/kubernetes/manifests"), "/etc/kubernetes/manifests");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn ssh_never_loosens_host_key_checking() {
        let s = SshSettings {
            options: vec!["StrictHostKeyChecking=no".into()],
            remote_binary: "etcdguard".into(),
            ..Default::default()
        };
        let c = s.command("cp1", "true");
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let ours = args.iter().position(|a| a == "StrictHostKeyChecking=yes").unwrap();
        let theirs = args.iter().position(|a| a == "StrictHostKeyChecking=no").unwrap();
        assert!(ours < theirs, "ssh takes the first value: ours must come first: {args:?}");
    }
}
