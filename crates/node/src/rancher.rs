//! k3s and RKE2 servers, whose etcd is embedded in the server process (k3s) or run by it as a
//! static pod it rewrites at every start (RKE2), so there is no manifest to read or park. What
//! `node restore --layout k3s|rke2` needs is learnt from how those servers lay out their data
//! (`<data-dir>/server/db/etcd`, the member name in its `name` file, the peer URL
//! `https://<node IP>:2380`) and from their `--cluster-reset` flow (the old dir moved to
//! `etcd-old-<unix time>`, a one-member cluster restored, `server/db/reset-flag` written so the
//! next start knows a reset happened). Stopping the server is the park: the service is not
//! ours to stop, so [`RancherPlan::build`] refuses while etcd still runs there.
//!
//! [`RancherPlan::build`] changes nothing and checks every step can be taken; `execute` moves
//! the old dir aside, restores (a callback, as for static pods), writes the name file, gives
//! the new dir the old one's owner, mode and SELinux context, writes the server token when the
//! backup has one and the node none, then the reset flag. A failure before the reset flag puts
//! the old dir back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::quorum::KnownMember;
use crate::{Ownership, RestoreSpec};

/// Which of the two servers: they differ only in names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    K3s,
    Rke2,
}

impl Distro {
    pub fn name(self) -> &'static str {
        match self {
            Distro::K3s => "k3s",
            Distro::Rke2 => "rke2",
        }
    }

    /// The server's `--data-dir` default.
    pub fn default_data_dir(self) -> PathBuf {
        PathBuf::from(format!("/var/lib/rancher/{}", self.name()))
    }

    /// Where the server reads its flags from.
    pub fn default_config(self) -> PathBuf {
        PathBuf::from(format!("/etc/rancher/{}/config.yaml", self.name()))
    }

    /// How the operator stops the server on this node.
    pub fn stop_hint(self) -> &'static str {
        match self {
            Distro::K3s => "systemctl stop k3s (or k3s-killall.sh)",
            // Stopping the service leaves the static pods' containers running.
            Distro::Rke2 => "systemctl stop rke2-server, then rke2-killall.sh (the etcd container outlives the service)",
        }
    }

    pub fn start_hint(self) -> &'static str {
        match self {
            Distro::K3s => "systemctl start k3s",
            Distro::Rke2 => "systemctl start rke2-server",
        }
    }
}

/// For a static-pod command run on a k3s/RKE2 server: what to do instead (or nothing).
pub fn hint_on_this_host() -> String {
    for distro in [Distro::K3s, Distro::Rke2] {
        if distro.default_data_dir().join("server/db/etcd").is_dir() {
            let d = distro.name();
            return format!(
                ". This is a {d} server: its etcd has no manifest to park; stop the server ({}) and use `etcdguard node restore --layout {d}`",
                distro.stop_hint()
            );
        }
    }
    String::new()
}

/// The etcd peer port k3s and RKE2 use; not configurable there.
pub const PEER_PORT: u16 = 2380;
/// The etcd client port, on the node IP and on 127.0.0.1.
pub const CLIENT_PORT: u16 = 2379;
/// k3s restores with etcd's default cluster token.
pub const CLUSTER_TOKEN: &str = "etcd-cluster";

/// What a restore on a k3s/RKE2 server is given.
#[derive(Debug, Clone)]
pub struct RancherRequest {
    pub distro: Distro,
    /// The server's `--data-dir` (`/var/lib/rancher/k3s`).
    pub data_dir: PathBuf,
    /// The server's config file (`/etc/rancher/k3s/config.yaml`); may be missing.
    pub config: PathBuf,
    /// The member name [default: `server/db/etcd/name`].
    pub name: Option<String>,
    /// This node's IP [default: the config's `node-ip`, else the current member's peer URL].
    pub node_ip: Option<IpAddr>,
    /// The server token kept in the backup (`backup import --file …/server/token`).
    pub backup_token: Option<String>,
    /// The members the current data dir records (empty when it has none or no data dir).
    pub current_members: Vec<KnownMember>,
    /// The members the snapshot records.
    pub snapshot_members: Vec<KnownMember>,
    /// Unix seconds, for `etcd-old-<time>` as k3s names it.
    pub unix_time: i64,
    /// Go on although the node IP or the token disagree with what is recorded.
    pub force: bool,
}

/// Why a k3s/RKE2 restore cannot go on; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RancherError {
    #[error("{0}")]
    Usage(String),
    /// A safety check refused (exit 17 in the CLI); nothing was changed.
    #[error("{0}")]
    Refused(String, String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Running(String),
    #[error("{0}")]
    Io(String),
    /// The restore callback failed; the old data dir was put back.
    #[error("restore failed: {0}; the old data directory was put back")]
    Restore(String),
}

/// What to do with `server/token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStep {
    /// The backup holds no token: nothing to check or write.
    NoneInBackup,
    /// The node's token and the backup's agree.
    Same,
    /// The node has none: write the backup's (0600).
    Write(String),
    /// They differ and `--force` was given: leave the node's.
    KeptDifferent,
}

/// The checked steps of a k3s/RKE2 restore.
#[derive(Debug, Clone)]
pub struct RancherPlan {
    pub distro: Distro,
    /// `<data-dir>/server`.
    pub server_dir: PathBuf,
    /// `<data-dir>/server/db/etcd`.
    pub etcd_dir: PathBuf,
    /// Where the current etcd dir goes (`None`: there is none).
    pub old_dir: Option<PathBuf>,
    pub name: String,
    /// Where the name came from.
    pub name_from: String,
    pub node_ip: IpAddr,
    pub node_ip_from: String,
    pub restore: RestoreSpec,
    pub reset_flag: PathBuf,
    pub token_file: PathBuf,
    pub token: TokenStep,
    pub ownership: Option<Ownership>,
    /// Warnings for the operator (already decided to go on).
    pub notes: Vec<String>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> RancherError {
    RancherError::Io(format!("{what} {}: {e}", path.display()))
}

/// `https://<ip>:2380`, with brackets for IPv6.
pub fn peer_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{PEER_PORT}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{PEER_PORT}"),
    }
}

/// The password part of a k3s token: `K10<ca hash>::<user>:<password>` or the bare secret.
/// Two tokens that share it open the same bootstrap data.
pub fn token_secret(token: &str) -> &str {
    let t = token.trim();
    match t.strip_prefix("K10").and_then(|r| r.split_once("::")) {
        Some((_, creds)) => creds.split_once(':').map_or(creds, |(_, password)| password),
        None => t,
    }
}

/// The first `node-ip` of the server's config file, if it names one.
pub fn config_node_ip(config: &Path) -> Result<Option<IpAddr>, RancherError> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", config, e)),
    };
    let value: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| RancherError::Usage(format!("{}: not YAML: {e}", config.display())))?;
    let first = match value.get("node-ip") {
        None | Some(serde_norway::Value::Null) => return Ok(None),
        Some(serde_norway::Value::String(s)) => s.clone(),
        Some(serde_norway::Value::Sequence(items)) => match items.first() {
            Some(serde_norway::Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        Some(_) => String::new(),
    };
    // `node-ip: 10.0.0.5,fd00::5` (dual stack): etcd uses the first.
    let first = first.split(',').next().unwrap_or_default().trim().to_string();
    first.parse().map(Some).map_err(|_| {
        RancherError::Usage(format!(
            "{}: node-ip {first:?} is not an IP address; fix it or give --node-ip",
            config.display()
        ))
    })
}

/// The config file's `token`, if it has one.
fn config_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: serde_norway::Value = serde_norway::from_str(&text).ok()?;
    value.get("token")?.as_str().map(str::to_string)
}

/// The host of an `https://host:port` URL, as an IP when it is one.
fn url_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.parse().ok()
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

impl RancherPlan {
    /// Checks everything and changes nothing.
    pub fn build(req: &RancherRequest) -> Result<RancherPlan, RancherError> {
        let d = req.distro.name();
        if !req.data_dir.is_dir() {
            return Err(RancherError::Usage(format!(
                "{} is not a directory: where is this {d} server's --data-dir? Give it with --rancher-data-dir",
                req.data_dir.display()
            )));
        }
        let server_dir = req.data_dir.join("server");
        let db_dir = server_dir.join("db");
        let etcd_dir = db_dir.join("etcd");
        let mut notes = Vec::new();

        // The member name: k3s writes it at first start and reuses it ever after.
        let name_file = etcd_dir.join("name");
        let from_file = match std::fs::read(&name_file) {
            Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| {
                RancherError::Usage(format!("{}: not UTF-8; give --name", name_file.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &name_file, e)),
        };
        let (name, name_from) = match (&req.name, from_file) {
            (Some(n), Some(f)) if *n != f => {
                notes.push(format!("--name {n:?} replaces the name {f:?} of {}", name_file.display()));
                (n.clone(), "--name".to_string())
            }
            (Some(n), _) => (n.clone(), "--name".to_string()),
            (None, Some(f)) if !f.trim().is_empty() => (f, name_file.display().to_string()),
            (None, _) => {
                return Err(RancherError::Usage(format!(
                    "{} is missing or empty: this is not a {d} server with embedded etcd, or its data dir is gone. Give --rancher-data-dir, or --name for a rebuilt node ({d} names members <hostname>-<8 hex digits>)",
                    name_file.display()
                )))
            }
        };
        if name.contains(['\n', ',', '=']) {
            return Err(RancherError::Usage(format!(
                "member name {name:?} has a newline, comma or '='; give --name"
            )));
        }

        // The node IP: flag, config, or what the current member's peer URL says.
        let recorded = req.current_members.iter().find(|m| m.name == name);
        let recorded_ip = recorded.and_then(|m| m.peer_urls.iter().find_map(|u| url_ip(u)));
        let config_ip = config_node_ip(&req.config)?;
        let (node_ip, node_ip_from) = match (req.node_ip, config_ip, recorded_ip) {
            (Some(ip), _, _) => (ip, "--node-ip".to_string()),
            (None, Some(ip), _) => (ip, format!("node-ip in {}", req.config.display())),
            (None, None, Some(ip)) => {
                (ip, format!("member {name:?} in the current data dir"))
            }
            (None, None, None) => {
                return Err(RancherError::Usage(format!(
                    "this node's IP is not known: {} names no node-ip and the current data dir no member {name:?}; give --node-ip (the address {d} advertises to the other servers)",
                    req.config.display()
                )))
            }
        };
        let own_url = peer_url(node_ip);
        // The member's peer URL must be this node's, in what is recorded about it.
        for (members, what) in [
            (&req.current_members, "the current data dir"),
            (&req.snapshot_members, "the snapshot"),
        ] {
            if let Some(m) = members.iter().find(|m| m.name == name) {
                if !m.peer_urls.is_empty() && !m.peer_urls.iter().any(|u| same_url(u, &own_url)) {
                    let msg = format!(
                        "member {name:?} has peer URL {} in {what}, but the node IP ({node_ip}, from {node_ip_from}) makes it {own_url}",
                        m.peer_urls.join(",")
                    );
                    if !req.force {
                        return Err(RancherError::Refused(
                            format!("{msg}; nothing was changed"),
                            "give the node's IP with --node-ip (the address the member had); --force if the node's address changed on purpose".into(),
                        ));
                    }
                    notes.push(format!("--force: {msg}"));
                }
            }
        }

        // Stopping the server is the park; it must be down.
        let db = etcd_dir.join("member/snap/db");
        let client = std::net::SocketAddr::new(node_ip, CLIENT_PORT).to_string();
        if crate::locked(&db) || crate::port_open(&client) {
            return Err(RancherError::Running(format!(
                "etcd still runs on this node ({} is locked or {client} answers): stop the {d} server first: {}",
                db.display(),
                req.distro.stop_hint()
            )));
        }

        let old_dir = match std::fs::symlink_metadata(&etcd_dir) {
            Ok(m) if m.is_dir() => {
                let aside = db_dir.join(format!("etcd-old-{}", req.unix_time));
                if std::fs::symlink_metadata(&aside).is_ok() {
                    return Err(RancherError::Exists(format!(
                        "{} exists already; nothing was overwritten (wait a second and run again, or move it)",
                        aside.display()
                    )));
                }
                Some(aside)
            }
            Ok(_) => {
                return Err(RancherError::Usage(format!(
                    "{} is not a directory",
                    etcd_dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &etcd_dir, e)),
        };
        let ownership = match &old_dir {
            Some(_) => Some(Ownership::of(&etcd_dir).map_err(|e| io("reading", &etcd_dir, e))?),
            None => None,
        };

        // The server token the snapshot's bootstrap data is sealed with.
        let token_file = server_dir.join("token");
        let node_token = match std::fs::read_to_string(&token_file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &token_file, e)),
        };
        let token = match &req.backup_token {
            None => TokenStep::NoneInBackup,
            Some(backup) => {
                let mut differs = Vec::new();
                if let Some(t) = &node_token {
                    if token_secret(t) != token_secret(backup) {
                        differs.push(token_file.display().to_string());
                    }
                }
                if let Some(t) = config_token(&req.config) {
                    if token_secret(&t) != token_secret(backup) {
                        differs.push(format!("token in {}", req.config.display()));
                    }
                }
                match (differs.is_empty(), &node_token) {
                    (true, Some(_)) => TokenStep::Same,
                    (true, None) => TokenStep::Write(backup.clone()),
                    (false, _) if req.force => {
                        notes.push(format!("--force: the backup's server token differs from {}; {d} will not open the snapshot's bootstrap data with it", differs.join(" and ")));
                        TokenStep::KeptDifferent
                    }
                    (false, _) => {
                        return Err(RancherError::Refused(
                            format!("the backup's server token differs from {}: {d} seals its bootstrap data (CA keys, service-account key) with the token, and would not start on this snapshot; nothing was changed", differs.join(" and ")),
                            format!("start {d} with the token the snapshot was taken with (restore the backup's files with `backup restore ID --files-to DIR` and put files/token in place); --force to go on anyway"),
                        ))
                    }
                }
            }
        };
        if token == TokenStep::NoneInBackup {
            notes.push(format!("the snapshot holds {d}'s bootstrap data sealed with the server token it was taken with; this restore does not check that {} (or --token) is that token", token_file.display()));
        }

        let restore = RestoreSpec {
            data_dir: etcd_dir.clone(),
            wal_dir: None,
            initial_cluster: format!("{name}={own_url}"),
            initial_cluster_token: CLUSTER_TOKEN.to_string(),
            initial_advertise_peer_urls: own_url,
            name: name.clone(),
        };
        Ok(RancherPlan {
            distro: req.distro,
            reset_flag: db_dir.join("reset-flag"),
            server_dir,
            etcd_dir,
            old_dir,
            name,
            name_from,
            node_ip,
            node_ip_from,
            restore,
            token_file,
            token,
            ownership,
            notes,
        })
    }

    /// The steps, for the plan and `--dry-run`.
    pub fn steps(&self) -> Vec<String> {
        let d = self.distro.name();
        let mut steps = vec![format!(
            "check that {d} is stopped on this node (its etcd database unlocked, port {CLIENT_PORT} closed): done, it is"
        )];
        if let Some(old) = &self.old_dir {
            steps.push(format!("move {} aside to {}", self.etcd_dir.display(), old.display()));
        }
        steps.push(format!(
            "restore the snapshot into {} as member {:?} (from {}) of a one-member cluster, peer URL {} (node IP from {})",
            self.etcd_dir.display(),
            self.name,
            self.name_from,
            self.restore.initial_advertise_peer_urls,
            self.node_ip_from
        ));
        steps.push(format!("write the member name to {}", self.etcd_dir.join("name").display()));
        match &self.ownership {
            Some(o) => steps.push(format!(
                "give {} the old dir's {}",
                self.etcd_dir.display(),
                o.describe()
            )),
            None => steps.push(format!("give {} mode 0700", self.etcd_dir.display())),
        }
        match &self.token {
            TokenStep::Write(_) => steps.push(format!(
                "write the backup's server token to {} (0600)",
                self.token_file.display()
            )),
            TokenStep::Same => steps
                .push(format!("keep {}: it matches the backup's token", self.token_file.display())),
            TokenStep::KeptDifferent => steps.push(format!(
                "keep {} although it differs from the backup's token (--force)",
                self.token_file.display()
            )),
            TokenStep::NoneInBackup => {}
        }
        steps.push(format!(
            "write {} ({d} then knows at its next start that the cluster was reset)",
            self.reset_flag.display()
        ));
        steps
    }

    /// Carries out the plan; a failure before the reset flag puts the old data dir back.
    pub fn execute(
        &self,
        restore: &mut dyn FnMut(&RestoreSpec) -> Result<(), String>,
        note: &mut dyn FnMut(&str),
    ) -> Result<(), RancherError> {
        let db_dir = self.etcd_dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(db_dir).map_err(|e| io("creating", db_dir, e))?;
        if let Some(old) = &self.old_dir {
            note(&format!("moving {} to {}", self.etcd_dir.display(), old.display()));
            std::fs::rename(&self.etcd_dir, old).map_err(|e| io("moving", &self.etcd_dir, e))?;
        }
        let undo = |why: String, restored: bool| -> RancherError {
            if restored {
                let failed = db_dir.join(format!(
                    "etcd-failed-{}",
                    self.old_dir
                        .as_ref()
                        .and_then(|o| o.file_name())
                        .map(|n| n.to_string_lossy().trim_start_matches("etcd-old-").to_string())
                        .unwrap_or_default()
                ));
                let _ = std::fs::rename(&self.etcd_dir, failed);
            }
            if let Some(old) = &self.old_dir {
                let _ = std::fs::rename(old, &self.etcd_dir);
            }
            RancherError::Restore(why)
        };
        note(&format!("restoring into {}", self.etcd_dir.display()));
        if let Err(e) = restore(&self.restore) {
            return Err(undo(e, false));
        }
        let finish = || -> Result<(), String> {
            write_new(&self.etcd_dir.join("name"), self.name.as_bytes())
                .map_err(|e| format!("writing the name file: {e}"))?;
            match &self.ownership {
                Some(o) => o.apply_tree(&self.etcd_dir).map_err(|e| e.to_string())?,
                None => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&self.etcd_dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| e.to_string())?
                }
            }
            if let TokenStep::Write(t) = &self.token {
                write_new(&self.token_file, t.as_bytes())
                    .map_err(|e| format!("writing {}: {e}", self.token_file.display()))?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            return Err(undo(e, true));
        }
        match write_new(&self.reset_flag, b"") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                note(&format!("{} is there already; kept", self.reset_flag.display()))
            }
            Err(e) => return Err(io("writing", &self.reset_flag, e)),
        }
        Ok(())
    }
}

/// Writes a new private file (0600) under a temporary name, fsynced, then linked into place
/// only if nothing is there (an existing file is never replaced).
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.etcdguard-tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_their_secret() {
        assert_eq!(token_secret("K10abc::server:s3cret\n"), "s3cret");
        assert_eq!(token_secret("s3cret"), "s3cret");
        assert_eq!(token_secret("K10abc::s3cret"), "s3cret");
        assert_ne!(token_secret("K10abc::server:a"), token_secret("K10abc::server:b"));
    }

    #[test]
    fn peer_urls_and_their_ips() {
        assert_eq!(peer_url("10.0.0.5".parse().unwrap()), "https://10.0.0.5:2380");
        assert_eq!(peer_url("fd00::5".parse().unwrap()), "https://[fd00::5]:2380");
        assert_eq!(url_ip("https://[fd00::5]:2380"), "fd00::5".parse().ok());
        assert_eq!(url_ip("https://10.0.0.5:2380"), "10.0.0.5".parse().ok());
        assert_eq!(url_ip("https://cp-1:2380"), None);
    }

    #[test]
    fn node_ip_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("config.yaml");
        assert_eq!(config_node_ip(&c).unwrap(), None);
        std::fs::write(&c, "token: x\nnode-ip: 10.0.0.5,fd00::5\n").unwrap();
        assert_eq!(config_node_ip(&c).unwrap(), "10.0.0.5".parse().ok());
        std::fs::write(&c, "node-ip:\n  - 10.0.0.6\n").unwrap();
        assert_eq!(config_node_ip(&c).unwrap(), "10.0.0.6".parse().ok());
        std::fs::write(&c, "node-ip: cp-1\n").unwrap();
        assert!(config_node_ip(&c).unwrap_err().to_string().contains("not an IP address"));
    }
}
