//! `node restore --layout k3s|rke2`: k3s's `--cluster-reset --cluster-reset-restore-path`
//! done by etcdguard, with its checks. The snapshot (a file, or a backup fetched into a
//! private dir under the server's data dir) is checked first; the member lists of the current
//! data dir and of the snapshot, the backup's server token and the node's are handed to
//! `etcdguard_node::rancher::RancherPlan::build`, which refuses before anything changes; then
//! the plan runs with `snapshot restore`'s code as its restore step. The server is not
//! started: that, and the other servers' rejoin, are the operator's (the CLI says how).

use std::path::{Path, PathBuf};

use etcdguard_node::quorum::KnownMember;
use etcdguard_node::rancher::{RancherError, RancherPlan, RancherRequest};
use etcdguard_node::RestoreSpec;
use etcdguard_storage::restore::{membership, Cluster};

use crate::error::{Error, Kind, Result};
use crate::node::{
    fetch_backup, restore_member, restore_options, Layout, NodeEvent, NodeOutcome,
    NodeRestoreOptions,
};
use crate::snapshot::{check_snapshot, open_snapshot};

fn rancher_error(e: RancherError) -> Error {
    match e {
        RancherError::Usage(m) => Error::usage(m),
        RancherError::Refused(m, hint) => Error::new(Kind::Refused, m).with_hint(hint),
        RancherError::Exists(m) => Error::new(Kind::DestinationExists, m),
        RancherError::Running(m) => Error::new(Kind::Locked, m),
        e @ (RancherError::Io(_) | RancherError::Restore(_)) => Error::failure(e.to_string()),
    }
}

/// The members a bbolt file records; none when it cannot be read (a data dir too damaged
/// to read is why one restores).
fn members_of(db: &Path) -> Vec<KnownMember> {
    let Ok(file) = open_snapshot(db) else { return Vec::new() };
    let Ok(db) = file.db() else { return Vec::new() };
    etcdguard_storage::members::stored_members(&db)
        .unwrap_or_default()
        .into_iter()
        .map(|m| KnownMember {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        })
        .collect()
}

/// Runs `node restore --layout k3s|rke2`.
pub fn restore_rancher(
    opts: &NodeRestoreOptions,
    on: &mut dyn FnMut(NodeEvent<'_>),
) -> Result<NodeOutcome> {
    if (opts.bump_revision > 0) != opts.mark_compacted {
        return Err(Error::usage("--bump-revision and --mark-compacted go together (e.g. --bump-revision 1000000000 --mark-compacted)"));
    }
    let Layout::Rancher { distro, data_dir, config } = &opts.layout else {
        return Err(Error::usage("not a k3s/RKE2 layout"));
    };
    let d = distro.name();
    let foreign: Vec<&str> = [
        (opts.restore_pki, "--restore-pki"),
        (opts.manifests_dir.is_some(), "--manifests-dir"),
        (opts.etcd_manifest.is_some(), "--etcd-manifest"),
        (opts.initial_cluster.is_some(), "--initial-cluster"),
        (opts.initial_cluster_token.is_some(), "--initial-cluster-token"),
        (opts.initial_advertise_peer_urls.is_some(), "--initial-advertise-peer-urls"),
        (opts.new_cluster, "--new-cluster"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    if !foreign.is_empty() {
        return Err(Error::usage(format!(
            "{} {} not apply to --layout {d}: it always restores a one-member cluster of this server, with the name, peer URL and data dir {d} uses",
            foreign.join(", "),
            if foreign.len() == 1 { "does" } else { "do" }
        )));
    }
    let data_dir = data_dir.clone().unwrap_or_else(|| distro.default_data_dir());
    let config = config.clone().unwrap_or_else(|| distro.default_config());
    if !data_dir.is_dir() {
        return Err(Error::usage(format!(
            "{} is not a directory: where is this {d} server's --data-dir? Give it with --rancher-data-dir",
            data_dir.display()
        )));
    }
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    let staging = match (&opts.backup, opts.at) {
        (_, Some(_)) => Some(fetch_backup(opts, "", &stamp, &data_dir, on)?),
        (Some(id), None) => Some(fetch_backup(opts, id, &stamp, &data_dir, on)?),
        (None, None) => None,
    };
    let snapshot: PathBuf = match (&staging, &opts.snapshot) {
        (Some(s), _) => s.snapshot.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(Error::usage("give a snapshot file or --backup ID")),
    };
    let skip_hash_check = opts.skip_hash_check || staging.as_ref().is_some_and(|s| s.no_trailer);
    let (status, _) = check_snapshot(&snapshot, skip_hash_check)?;
    let backup_token = match staging.as_ref().and_then(|s| s.token.as_ref()) {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Error::failure(format!("the backup's server token: {e}")))?,
        ),
        None => None,
    };
    let etcd_dir = data_dir.join("server/db/etcd");
    let request = RancherRequest {
        distro: *distro,
        data_dir: data_dir.clone(),
        config,
        name: opts.name.clone(),
        node_ip: match &opts.node.node_ip {
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| Error::usage(format!("--node-ip {ip:?} is not an IP address")))?,
            ),
            None => None,
        },
        backup_token,
        current_members: members_of(&etcd_dir.join("member/snap/db")),
        snapshot_members: members_of(&snapshot),
        unix_time: now.timestamp(),
        force: opts.force,
    };
    let plan = RancherPlan::build(&request).map_err(rancher_error)?;
    let cluster = Cluster::new(&plan.restore.initial_cluster, &plan.restore.initial_cluster_token)
        .map_err(|e| Error::usage(e.0))?;
    let advertise = membership::parse_url_list(&plan.restore.initial_advertise_peer_urls)
        .map_err(|e| Error::usage(e.0))?;
    cluster.verify_local(&plan.restore.name, &advertise).map_err(|e| Error::usage(e.0))?;
    // k3s's secrets encryption config, where it keeps it.
    let encryption = opts.encryption_config.clone().or_else(|| {
        Some(data_dir.join("server/cred/encryption-config.json")).filter(|p| p.is_file())
    });
    match encryption {
        Some(p) => {
            let in_place = crate::keycheck::InPlace::file(&p)?;
            let check = crate::keycheck::check(&snapshot, &in_place)?;
            crate::keycheck::enforce(&check, opts.force, &mut |n| on(NodeEvent::Note(n)))?;
        }
        None => on(NodeEvent::Note(&format!(
            "note: no {} (secrets encryption off): encryption keys not checked",
            data_dir.join("server/cred/encryption-config.json").display()
        ))),
    }
    for n in &plan.notes {
        on(NodeEvent::Note(&format!("warning: {n}")));
    }
    on(NodeEvent::RancherPlanned { snapshot: &snapshot, status: &status, plan: &plan });
    if opts.dry_run {
        return Ok(NodeOutcome::DryRun);
    }
    let options = restore_options(&snapshot, opts, skip_hash_check);
    let mut restore_error_seen: Option<Error> = None;
    let outcome = {
        let on_cell = std::cell::RefCell::new(&mut *on);
        let mut restore_step = |spec: &RestoreSpec| -> std::result::Result<(), String> {
            match restore_member(&snapshot, &cluster, &options, spec) {
                Ok(line) => {
                    (on_cell.borrow_mut())(NodeEvent::Note(&line));
                    Ok(())
                }
                Err(e) => {
                    let text = e.to_string();
                    restore_error_seen = Some(e);
                    Err(text)
                }
            }
        };
        plan.execute(&mut restore_step, &mut |line| (on_cell.borrow_mut())(NodeEvent::Note(line)))
    };
    match outcome {
        Ok(()) => Ok(NodeOutcome::RancherRestored(Box::new(plan))),
        Err(RancherError::Restore(text)) => match restore_error_seen {
            Some(e) => Err(e.context("restore failed; the old data directory was put back")),
            None => Err(rancher_error(RancherError::Restore(text))),
        },
        Err(e) => Err(rancher_error(e)),
    }
}
