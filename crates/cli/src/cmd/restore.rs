//! `etcdguard snapshot restore`: flags as `etcdutl snapshot restore` 3.5 has them, plus
//! `--cluster-out` to write every member's data dir in one run. The work is in
//! `etcdguard_storage::restore`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use etcdguard_storage::TrailerCheck;
use etcdguard_workflow::restore::{Restored, SnapshotRestoreOptions};

pub const RESTORE_LONG_HELP: &str = "\
Restore a snapshot into new etcd data directories.

Writes, for the member named by --name, a data dir that etcd starts from: member/snap/db (the \
snapshot's database with the new cluster's membership, consistent index and term), \
member/snap/0000000000000001-<N>.snap and member/wal/0000000000000000-0000000000000000.wal. \
Same flags and byte for byte the same WAL and .snap as `etcdutl snapshot restore` of the etcd \
release that wrote the snapshot (3.5, 3.6 or 3.7; 3.4 snapshots get 3.5's layout), or of \
--etcd-version X.Y, which also refuses a snapshot of a newer release than X.Y. The data dirs \
boot etcd 3.4, 3.5, 3.6 and 3.7 (a snapshot of that release or the one before it). Member and cluster IDs are derived from --initial-cluster and \
--initial-cluster-token exactly as etcd derives them, so run the restore once per member with \
identical --initial-cluster and --initial-cluster-token (or once with --cluster-out).

Safety: an existing non-empty --data-dir or an existing --wal-dir is refused before anything \
is written. Everything is built in a hidden temporary directory next to the destination: the \
snapshot's sha256 trailer and database structure are checked while it is copied there (a bad \
snapshot is refused and the temporary directory removed), the result is fsynced, checked \
again and renamed into place at the end, so an interrupted restore never leaves a data dir \
that etcd would start from (at most a hidden .<name>.etcdguard-restore-* directory).";

pub const RESTORE_EXAMPLES: &str = "\
Examples:
  # One member (etcd then starts with --name default --data-dir /var/lib/etcd-restored):
  etcdguard snapshot restore snapshot.db --data-dir /var/lib/etcd-restored

  # A 3-member cluster: run on each node with its own --name, --initial-advertise-peer-urls
  # and --data-dir, and the same --initial-cluster and --initial-cluster-token everywhere:
  etcdguard snapshot restore snapshot.db \\
      --name m1 --data-dir /var/lib/etcd-restored \\
      --initial-cluster m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380,m3=https://10.0.0.3:2380 \\
      --initial-cluster-token prod-restore-1 \\
      --initial-advertise-peer-urls https://10.0.0.1:2380

  # The same cluster in one run: writes restored/m1, restored/m2, restored/m3; copy each to
  # its node and start etcd there with --name <m> --data-dir <copied dir>:
  etcdguard snapshot restore snapshot.db --cluster-out restored \\
      --initial-cluster m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380,m3=https://10.0.0.3:2380 \\
      --initial-cluster-token prod-restore-1

  # Kubernetes: make every revision newer than anything clients (informers) have seen, and
  # mark older revisions compacted so watches re-list instead of missing changes:
  etcdguard snapshot restore snapshot.db --data-dir /var/lib/etcd-restored \\
      --bump-revision 1000000000 --mark-compacted

  # A member/snap/db copied from a stopped etcd has no sha256 trailer:
  etcdguard snapshot restore db --data-dir /var/lib/etcd-restored --skip-hash-check

After starting the restored members, `etcdctl endpoint status` shows the new member and
cluster IDs; the old cluster's members are gone from `etcdctl member list`.";

/// This member and the new cluster it belongs to, and the revision flags: the flags every
/// restore shares (`snapshot restore`, `backup restore`, `node restore`). They have no
/// defaults here: `DataDirArgs` gives etcdutl's, `node restore` takes the manifest's.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Name of the member being restored; must appear in --initial-cluster.
    #[arg(long, value_parser = crate::args::non_empty)]
    pub name: Option<String>,
    /// Every member of the new cluster as name=peer-url[,name=peer-url…]
    /// [default: <name>=http://localhost:2380]
    #[arg(long, value_name = "NAME=URL,…")]
    pub initial_cluster: Option<String>,
    /// Token for the new cluster; it goes into every member ID. Use a new one per restore.
    #[arg(long, value_name = "TOKEN", value_parser = crate::args::non_empty)]
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs (comma-separated); must equal its entry in --initial-cluster.
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Raise the revision by this much above the snapshot's newest revision (needs --mark-compacted).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub bump_revision: u64,
    /// Mark every revision up to the bumped one compacted (needs --bump-revision).
    #[arg(long)]
    pub mark_compacted: bool,
}

/// etcdutl's defaults of `--name`, `--initial-cluster-token`, `--initial-advertise-peer-urls`.
const DEFAULT_NAME: &str = "default";
const DEFAULT_TOKEN: &str = "etcd-cluster";
const DEFAULT_PEER_URLS: &str = "http://localhost:2380";

/// Where a restore writes data dirs, for the new cluster of `ClusterArgs` with etcdutl's
/// defaults: `snapshot restore` and `backup restore --data-dir/--cluster-out`. Which flags
/// are required or conflict differs between the two (as etcdutl's and ours always did), so
/// those rules are added where each command flattens this.
#[derive(Args, Clone, Debug)]
#[command(
    mut_arg("name", |a| a.default_value(DEFAULT_NAME)),
    mut_arg("initial_cluster_token", |a| a.default_value(DEFAULT_TOKEN)),
    mut_arg("initial_advertise_peer_urls", |a| a.default_value(DEFAULT_PEER_URLS))
)]
pub struct DataDirArgs {
    /// Data dir to create for the member named by --name (must not exist, or be empty).
    #[arg(long, value_name = "DIR", value_parser = crate::args::path)]
    pub data_dir: Option<PathBuf>,
    /// Put the WAL here instead of <data-dir>/member/wal (must not exist; start etcd with the same --wal-dir).
    #[arg(long, value_name = "DIR", value_parser = crate::args::path)]
    pub wal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Write one data dir per member of --initial-cluster, as DIR/<name>, in one run
    /// (instead of --data-dir/--name).
    #[arg(long, value_name = "DIR", value_parser = crate::args::path)]
    pub cluster_out: Option<PathBuf>,
    /// The etcd release (X.Y) that will run the restored members: its etcdutl's file layout
    /// is written, and a snapshot written by a newer release (its storage or cluster
    /// version) is refused with exit 17, since etcd does not downgrade a data dir.
    #[arg(long, value_name = "X.Y", value_parser = crate::args::release)]
    pub etcd_version: Option<etcdguard_storage::Release>,
}

impl DataDirArgs {
    /// The library's options from these flags; the snapshot file, hash check and
    /// encryption check are the command's.
    pub fn options(&self) -> SnapshotRestoreOptions {
        let c = &self.cluster;
        SnapshotRestoreOptions {
            data_dir: self.data_dir.clone(),
            wal_dir: self.wal_dir.clone(),
            name: c.name.clone().unwrap_or_else(|| DEFAULT_NAME.into()),
            initial_cluster: c.initial_cluster.clone(),
            initial_cluster_token: c
                .initial_cluster_token
                .clone()
                .unwrap_or_else(|| DEFAULT_TOKEN.into()),
            initial_advertise_peer_urls: c
                .initial_advertise_peer_urls
                .clone()
                .unwrap_or_else(|| DEFAULT_PEER_URLS.into()),
            bump_revision: c.bump_revision,
            mark_compacted: c.mark_compacted,
            cluster_out: self.cluster_out.clone(),
            etcd_version: self.etcd_version,
            ..SnapshotRestoreOptions::default()
        }
    }
}

#[derive(Args, Debug)]
#[command(
    mut_arg("data_dir", |a| a.required_unless_present("cluster_out")),
    mut_arg("wal_dir", |a| a.conflicts_with("cluster_out")),
    mut_arg("name", |a| a.conflicts_with("cluster_out")),
    mut_arg("initial_advertise_peer_urls", |a| a.conflicts_with("cluster_out"))
)]
pub struct RestoreArgs {
    /// Snapshot file from `snapshot save` (or a copied member/snap/db with --skip-hash-check).
    pub file: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Do not compare the sha256 trailer (needed for a copied member/snap/db). The database
    /// structure is still checked.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// The EncryptionConfiguration the restored cluster's API server will use. Before
    /// anything is written, every key name the snapshot's encrypted values use must be in it
    /// and one value per key must decrypt; otherwise the restore is refused (exit 17).
    #[arg(long, value_name = "FILE", value_parser = crate::args::path)]
    pub encryption_config: Option<PathBuf>,
    /// Restore although the encryption key check refuses.
    #[arg(long)]
    pub force: bool,
    /// Accepted for compatibility with etcdutl; has no effect on the files written.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub initial_memory_map_size: Option<u64>,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
}

pub fn run(args: RestoreArgs) -> Result<()> {
    let restored = etcdguard_workflow::restore::snapshot_restore(&options(&args))?;
    if args.out.json() {
        for n in &restored.notes {
            eprintln!("{n}");
        }
        return crate::args::print_json(&restored_json(&restored));
    }
    print_restored(&restored);
    Ok(())
}

/// The library's options from the flags.
pub(crate) fn options(args: &RestoreArgs) -> SnapshotRestoreOptions {
    SnapshotRestoreOptions {
        file: args.file.clone(),
        skip_hash_check: args.skip_hash_check,
        encryption_config: args.encryption_config.clone(),
        force: args.force,
        ..args.data.options()
    }
}

/// What was restored, for `-w json`.
pub(crate) fn restored_json(restored: &Restored) -> serde_json::Value {
    let report = &restored.report;
    let members: Vec<_> = report
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.member.name, "memberID": m.member.hex_id(), "peerURLs": m.member.peer_urls,
                "dataDir": m.data_dir, "walDir": m.wal_dir,
            })
        })
        .collect();
    serde_json::json!({
        "file": restored.file,
        "trailer": matches!(report.trailer, TrailerCheck::Verified),
        "sourceRevision": report.source_revision,
        "revision": report.revision,
        "clusterID": format!("{:x}", report.cluster.id),
        "members": members,
        "tookSeconds": restored.elapsed.as_secs_f64(),
    })
}

/// What was restored and how to start it: results on stdout, timings on stderr.
pub(crate) fn print_restored(restored: &Restored) {
    for n in &restored.notes {
        eprintln!("{n}");
    }
    let report = &restored.report;
    let trailer = match report.trailer {
        TrailerCheck::Verified => "sha256 verified",
        _ => "sha256 not checked",
    };
    println!(
        "Restored {} ({trailer}, revision {}) in {:.1}s",
        restored.file.display(),
        report.source_revision,
        restored.elapsed.as_secs_f64()
    );
    let phases: Vec<String> =
        report.timings.iter().map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64())).collect();
    eprintln!("phases: {}", phases.join(", "));
    if report.revision != report.source_revision {
        println!("  revision bumped to {} (older revisions marked compacted)", report.revision);
    }
    println!(
        "  cluster id {:x}, {} member{}",
        report.cluster.id,
        report.cluster.members.len(),
        if report.cluster.members.len() == 1 { "" } else { "s" }
    );
    for m in &report.members {
        println!(
            "  member {} (id {}) peer {}: {}",
            m.member.name,
            m.member.hex_id(),
            m.member.peer_urls.join(","),
            m.data_dir.display()
        );
    }
    println!("Next, on each member's node: stop any etcd using the old data, then start etcd with");
    for m in &report.members {
        let mut cmd =
            format!("  etcd --name {} --data-dir {}", m.member.name, m.data_dir.display());
        if m.wal_dir != m.data_dir.join("member").join("wal") {
            cmd.push_str(&format!(" --wal-dir {}", m.wal_dir.display()));
        }
        cmd.push_str(&format!(
            " --listen-peer-urls {} --initial-advertise-peer-urls {} …",
            m.member.peer_urls.join(","),
            m.member.peer_urls.join(",")
        ));
        println!("{cmd}");
    }
    println!("(the membership comes from the restored WAL; --initial-cluster flags are ignored on this start)");
}
