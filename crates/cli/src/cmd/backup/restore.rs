//! `backup restore ID`: a backup's snapshot, data dir or control-plane files back on disk.

use super::*;

#[derive(Args)]
#[command(mut_arg("cluster_out", |a| a.conflicts_with("data_dir")))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`. With --at: the full backup to start from (the
    /// point must be at or after it); without, the newest full backup before the point.
    #[arg(required_unless_present = "at")]
    pub id: Option<String>,
    /// Point in time: the database exactly as it was at this revision, or at the last revision
    /// seen at or before this time (RFC 3339), from the newest full backup before it plus the
    /// changes `backup follow` stored (see `backup log` to find the moment).
    #[arg(long, value_name = "REV|TIME", value_parser = crate::cmd::capture::parse_at)]
    pub at: Option<etcdguard_workflow::capture::At>,
    /// With --at: say which full backup and changes would be used, and the resulting revision; change nothing.
    #[arg(long, requires = "at")]
    pub dry_run: bool,
    /// Write the snapshot file here (must not exist); byte-identical to the file backed up.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["data_dir", "cluster_out", "format"], value_parser = crate::args::path)]
    pub to_file: Option<PathBuf>,
    /// Also unpack the control-plane files under DIR (pki/, manifests/, …) with their modes.
    #[arg(long, value_name = "DIR", value_parser = crate::args::path)]
    pub files_to: Option<PathBuf>,
    #[command(flatten)]
    pub parallel: ParallelArg,
    #[command(
        flatten,
        next_help_heading = "Restore into a data dir (flags of `snapshot restore`)"
    )]
    pub data: crate::cmd::restore::DataDirArgs,
    /// The EncryptionConfiguration the restored cluster will use [default: the one stored in
    /// the backup]. Every key name the snapshot's encrypted values use must be in it and one
    /// value per key must decrypt, or the restore is refused (exit 17) before the data dir is made.
    #[arg(long, value_name = "FILE", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::path)]
    pub encryption_config: Option<PathBuf>,
    /// Restore into a data dir although the encryption key check refuses; with --format
    /// openshift, write the files although the version check refuses.
    #[arg(long, help_heading = "Restore into a data dir (flags of `snapshot restore`)")]
    pub force: bool,
    /// Write the backup in OpenShift's layout into --files-to DIR: snapshot_<time>.db and
    /// static_kuberesources_<time>.tar.gz (the newest kube-apiserver, kube-controller-manager,
    /// kube-scheduler and etcd static-pod-resources the backup holds), as cluster-backup.sh
    /// writes them, for cluster-restore.sh. Refused (exit 17) unless the backup's OpenShift
    /// version (its ClusterVersion) is the node's z-stream, or --force; warns about a backup
    /// taken in the cluster's first 24 hours (certificates rotated since).
    #[arg(long, value_enum, value_name = "FORMAT", requires = "files_to", conflicts_with_all = ["to_file", "data_dir", "cluster_out", "at"], help_heading = "OpenShift")]
    pub format: Option<RestoreFormat>,
    /// --format openshift: this node's OpenShift version [default: the
    /// machineconfiguration.openshift.io/release-image-version annotation of
    /// /etc/machine-config-daemon/currentconfig, else /etc/mcs-machine-config-content.json].
    #[arg(long, value_name = "X.Y.Z", requires = "format", help_heading = "OpenShift")]
    pub node_version: Option<String>,
    /// --format openshift: read the node's version from this machine config (JSON) instead.
    #[arg(
        long,
        value_name = "FILE",
        requires = "format",
        conflicts_with = "node_version",
        help_heading = "OpenShift"
    )]
    pub machine_config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RestoreFormat {
    /// cluster-backup.sh's two files.
    Openshift,
}

pub(super) fn restore(args: RestoreArgs) -> Result<()> {
    if let Some(RestoreFormat::Openshift) = args.format {
        return restore_openshift(&args);
    }
    let into_data_dir = args.data.data_dir.is_some() || args.data.cluster_out.is_some();
    let data_dir = into_data_dir.then(|| SnapshotRestoreOptions {
        encryption_config: args.encryption_config.clone(),
        force: args.force,
        ..args.data.options()
    });
    if args.dry_run {
        let at = args.at.expect("clap: --dry-run requires --at");
        let plan = etcdguard_workflow::capture::plan(&args.repo.spec(), at, args.id.as_deref())?;
        print!("{}", crate::cmd::capture::plan_text(&plan));
        return Ok(());
    }
    let opts = backup::RestoreOptions {
        repo: RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() },
        // With --at and no ID the right full backup is found.
        id: args.id.clone().unwrap_or_default(),
        to_file: args.to_file.clone(),
        files_to: args.files_to.clone(),
        data_dir,
        at: args.at,
    };
    let json_out = args.out.json();
    let mut restored_json = None;
    let kept = backup::restore(&opts, &mut |event| match event {
        RestoreEvent::Replayed { plan, replayed } => eprintln!(
            "full backup {} (revision {}) plus {} changes in {} revisions: revision {}",
            plan.base.id,
            plan.base.etcd.revision,
            replayed.events,
            replayed.revisions,
            replayed.to_revision
        ),
        RestoreEvent::SnapshotWritten { manifest, path } => {
            eprintln!(
                "snapshot of backup {} written to {} (sha256 {} verified)",
                manifest.id,
                path.display(),
                manifest.snapshot.sha256
            )
        }
        RestoreEvent::DataDirRestored(restored) if json_out => {
            restored_json = Some(crate::cmd::restore::restored_json(restored))
        }
        RestoreEvent::DataDirRestored(restored) => crate::cmd::restore::print_restored(restored),
        RestoreEvent::FilesWritten { count, dir } => {
            eprintln!("{count} control-plane entries written under {}", dir.display())
        }
        RestoreEvent::Note(line) => eprintln!("{line}"),
    })?;
    if json_out {
        return crate::args::print_json(&json!({
            "id": opts.id, "snapshotFile": kept, "dataDirs": restored_json, "filesTo": opts.files_to,
        }));
    }
    if let (false, Some(path)) = (into_data_dir, kept) {
        println!("{}", path.display());
    }
    Ok(())
}

/// `backup restore ID --format openshift --files-to DIR`.
fn restore_openshift(args: &RestoreArgs) -> Result<()> {
    let dir = args.files_to.clone().expect("clap: --format requires --files-to");
    let opts = etcdguard_workflow::openshift::OpenShiftRestoreOptions {
        repo: RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() },
        id: args.id.clone().unwrap_or_default(),
        dir,
        node_version: args.node_version.clone(),
        machine_config: args.machine_config.clone(),
        force: args.force,
        scratch_dir: None,
    };
    let w = etcdguard_workflow::openshift::restore(&opts, &mut |n| eprintln!("{n}"))?;
    eprintln!("backup {} written as cluster-backup.sh writes it; on the recovery control-plane node run: cluster-restore.sh {}", w.manifest.id, opts.dir.display());
    println!("{}", w.snapshot.display());
    println!("{}", w.resources.display());
    Ok(())
}
