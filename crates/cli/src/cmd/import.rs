//! `etcdguard backup import` (backups other tools made) and the OpenShift layout of `backup
//! restore --format openshift`. The work is `etcdguard_workflow::import` and `::openshift`.

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use etcdguard_workflow::backup::CreateOptions;
use etcdguard_workflow::import::{Format, ImportEvent, ImportOptions};
use etcdguard_workflow::RepoSpec;
use serde_json::json;

use crate::args::TextJson;
use crate::args::{ParallelArg, RepoArg};

pub const IMPORT_HELP: &str = "\
Bring backups other tools made into the repository, each with its original time (the backup's \
`created`) and its origin recorded (`source.import.format`). Each snapshot is checked as \
`backup create --from-file` checks it (sha256 trailer, bbolt structure, etcd schema) before it \
is stored; a snapshot already stored with the same time (same sha256) is skipped with a note.

Formats (--format auto tells them from names and places):
  openshift   a cluster-backup.sh directory: snapshot_<YYYY-MM-DD_HHMMSS>.db and
              static_kuberesources_<same>.tar.gz. The time stamp is read as UTC (RHCOS's
              zone). The tarball's static-pod-resources/<component>-pod-<N>/… are stored as
              files/static-pod-resources/…, the newest kube-apiserver revision's
              secrets/encryption-config/encryption-config also as encryption-config/, and their
              certificates are recorded. The snapshot's ClusterVersion gives the label
              openshift.version; __POSSIBLY_DIRTY__ (cluster-backup.sh --force) the label
              openshift.possibly-dirty=true. A directory with several runs, or with one
              directory per run (up to 3 levels down), imports each.
  etcdctl     a plain `etcdctl snapshot save` file; its time is its modification time, or --created.
  k3s, rke2   `etcd-snapshot` files <name>-<node>-<unix time>, plain or .zip (one entry); the
              time is the name's. The node and the extra metadata k3s keeps in
              ../.metadata/<file name> become labels (k3s.node, k3s.metadata.<key>, …). A
              snapshots directory imports every snapshot in it.
  druid       etcd-backup-restore (etcd-druid) full snapshots Full-<start>-<last>-<unix time>,
              plain, .gz or .zlib, optionally .final; delta snapshots (Incr-…) are not databases
              and are skipped. Revisions and compression become labels (druid.*).";

pub const IMPORT_EXAMPLES: &str = "\
Examples:
  etcdguard backup import --repo /var/backups/etcd /home/core/backup
  etcdguard backup import --repo s3://etcd-backups/k3s /var/lib/rancher/k3s/server/db/snapshots \
      --file /var/lib/rancher/k3s/server/token
  etcdguard backup import --repo /var/backups/etcd --format etcdctl --created 2026-11-20T10:15:00Z snap.db
  etcdguard backup import --repo /var/backups/etcd gardener-backups/v2/Full-00000000-00012345-1764000000.gz";

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Auto,
    Openshift,
    Etcdctl,
    K3s,
    Rke2,
    Druid,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Auto => Format::Auto,
            FormatArg::Openshift => Format::OpenShift,
            FormatArg::Etcdctl => Format::Etcdctl,
            FormatArg::K3s => Format::K3s,
            FormatArg::Rke2 => Format::Rke2,
            FormatArg::Druid => Format::Druid,
        }
    }
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backups to import: files, or directories holding them.
    #[arg(required = true, value_name = "PATH", value_parser = crate::args::path)]
    pub paths: Vec<PathBuf>,
    /// The layout of the paths given.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// The original backup's time (RFC 3339), when its name does not tell it (one backup only).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub created: Option<DateTime<Utc>>,
    /// Another file or directory to keep with each imported backup (repeatable), stored as
    /// files/<its name>: e.g. the k3s/RKE2 server token (/var/lib/rancher/k3s/server/token),
    /// without which a snapshot's bootstrap data cannot be decrypted on a new host.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// A PKI directory to keep with each imported backup, stored as pki/… with its
    /// certificates recorded (e.g. k3s's /var/lib/rancher/k3s/server/tls).
    #[arg(long, value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,
    /// The encryption-at-rest configuration to keep with each imported backup, stored as
    /// encryption-config/… (e.g. k3s's /var/lib/rancher/k3s/server/cred/encryption-config.json);
    /// for OpenShift it replaces the one found in the static pod resources.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// KEY=VALUE label to attach (repeatable); wins over the labels a format gives.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Cluster name shown in `backup list`.
    #[arg(long, value_name = "NAME", value_parser = crate::args::non_empty)]
    pub cluster: Option<String>,
    /// Skip the structural and schema check of the snapshots (the sha256 trailer is still checked).
    #[arg(long)]
    pub skip_verify: bool,
    /// Where compressed snapshots and archives are unpacked (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub parallel: ParallelArg,
    #[arg(long, value_name = "BYTES", default_value_t = etcdguard_repo::repository::DEFAULT_CHUNK_SIZE, hide = true)]
    pub chunk_size: u32,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?}: not an RFC 3339 time (e.g. 2026-11-20T10:15:00Z): {e}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

pub fn import(args: ImportArgs) -> Result<()> {
    let create = CreateOptions {
        repo: RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() },
        from_file: None,
        snapshot_from: etcdguard_client::SnapshotFrom::Follower,
        scratch_dir: args.scratch_dir.clone(),
        conn: Default::default(),
        pki_dir: args.pki_dir.clone(),
        manifests_dir: None,
        encryption_config: args.encryption_config.clone(),
        files: args.files.clone(),
        labels: args.labels.clone(),
        cluster: args.cluster.clone(),
        skip_verify: args.skip_verify,
        chunk_size: args.chunk_size,
    };
    let opts = ImportOptions {
        create,
        paths: args.paths.clone(),
        format: args.format.into(),
        created: args.created,
    };
    let mut rows = Vec::new();
    let (stored, skipped) = etcdguard_workflow::import::import(&opts, &mut |event| match event {
        ImportEvent::Note(n) => eprintln!("{n}"),
        ImportEvent::Skipped { found, existing } => {
            eprintln!(
                "note: {} is already backup {existing} (same snapshot, same time {}); skipped",
                found.snapshot.display(),
                found.created.format("%Y-%m-%d %H:%M:%S UTC")
            );
            rows.push(json!({"path": found.snapshot, "format": found.format.name(), "created": found.created, "skipped": true, "backup": existing}));
        }
        ImportEvent::Imported { found, manifest } => {
            if args.write_out == TextJson::Text {
                println!(
                    "backup {} imported from {} ({}, taken {} by {}): revision {}, {} files",
                    manifest.id,
                    found.snapshot.display(),
                    found.format.name(),
                    manifest.created.format("%Y-%m-%d %H:%M:%S UTC"),
                    found.time_from,
                    manifest.etcd.revision,
                    etcdguard_workflow::backup::file_count(manifest)
                );
            }
            rows.push(json!({"path": found.snapshot, "format": found.format.name(), "created": manifest.created, "skipped": false, "backup": manifest.id, "manifest": manifest}));
        }
    })?;
    match args.write_out {
        TextJson::Json => crate::args::print_json(
            &json!({"imported": stored, "skipped": skipped, "backups": rows}),
        )?,
        TextJson::Text => {
            eprintln!("{stored} backup(s) imported, {skipped} already in the repository")
        }
    }
    Ok(())
}
