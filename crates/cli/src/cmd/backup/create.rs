//! `backup create`: a snapshot (taken, or a file) and the control plane's files into the
//! repository. Its flags are also `backup follow`'s and the agent's.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use etcdguard_workflow::backup::{self, CreateOptions};
use etcdguard_workflow::text::created_line;
use etcdguard_workflow::RepoSpec;

use crate::args::{ParallelArg, RepoArg, TextJson};

fn parse_compression_level(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(level) if (-20..=19).contains(&level) && level != 0 => Ok(level),
        _ => Err(format!(
            "{s:?}: give a zstd level from -20 (fastest, largest) to 19 (smallest, slowest), not 0"
        )),
    }
}

fn parse_limit_rate(s: &str) -> Result<u64, String> {
    etcdguard_repo::repository::parse_rate(s)
}

#[derive(Args, Clone)]
pub struct CreateArgs {
    #[command(flatten, next_help_heading = "Repository")]
    pub repo: RepoArg,
    /// Snapshot file to back up (from `snapshot save` or `etcdctl snapshot save`, or a copied
    /// member/snap/db). Without it, a snapshot is taken from the live cluster (--endpoints …).
    #[arg(help_heading = "Snapshot source", long, value_name = "SNAPSHOT")]
    pub from_file: Option<PathBuf>,
    /// Live cluster: which member to take the snapshot from (`follower`, `leader` or an endpoint).
    #[arg(
        help_heading = "Snapshot source",
        long,
        value_name = "follower|leader|ENDPOINT",
        default_value = "follower",
        conflicts_with = "from_file"
    )]
    pub snapshot_from: etcdguard_client::SnapshotFrom,
    /// Live cluster: where the snapshot is spooled (and checked) before it is stored (default: the system temp dir).
    #[arg(help_heading = "Snapshot source", long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(
        flatten,
        next_help_heading = "Connection to etcd (flags and ETCDCTL_* variables as etcdctl)"
    )]
    pub conn: crate::args::ConnArgs,
    /// Kubernetes PKI directory (e.g. /etc/kubernetes/pki); stored as pki/…
    #[arg(help_heading = "What to back up", long, value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,
    /// Static pod manifests directory (e.g. /etc/kubernetes/manifests); stored as manifests/…
    /// The file kube-apiserver.yaml names with --encryption-provider-config (on the host,
    /// through its hostPath volume) is stored too, unless --encryption-config is given.
    #[arg(help_heading = "What to back up", long, value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// Encryption-at-rest configuration (kube-apiserver --encryption-provider-config); stored as encryption-config/…
    #[arg(help_heading = "What to back up", long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// Any other file or directory to keep with the backup (repeatable); stored as files/…
    /// (FIFOs, sockets and devices are refused; inside a directory they are skipped, with a note).
    #[arg(help_heading = "What to back up", long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// KEY=VALUE label to attach (repeatable).
    #[arg(help_heading = "What to back up", long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Cluster name shown in `backup list`.
    #[arg(help_heading = "What to back up", long, value_name = "NAME", value_parser = crate::args::non_empty)]
    pub cluster: Option<String>,
    /// Skip the structural and schema check of the snapshot (the sha256 trailer is still checked).
    #[arg(help_heading = "Backup options", long)]
    pub skip_verify: bool,
    #[command(flatten, next_help_heading = "Backup options")]
    pub parallel: ParallelArg,
    /// Read the snapshot at most this fast (e.g. 50MiB/s, 800k), so a backup does not
    /// saturate the node's disk or network; compression and uploads follow.
    #[arg(long, value_name = "RATE", value_parser = parse_limit_rate)]
    pub limit_rate: Option<u64>,
    /// zstd level of the chunks this backup adds [default: the repository's, 1]. Higher is
    /// smaller and slower (up to 19, e.g. for long-term storage); negative is faster and
    /// larger (down to -20). Restores read any level; chunks already stored are not redone.
    #[arg(long, value_name = "LEVEL", allow_negative_numbers = true, value_parser = parse_compression_level)]
    pub compression_level: Option<i32>,
    /// Do not read back the stored chunks this backup reuses. By default every pack a backup
    /// reuses is read whole and checked, and a damaged chunk is stored again from this
    /// snapshot (and recorded as damaged), so a new backup never depends on damaged data.
    /// Skipping it saves reading the previous backup's packs (for a distant bucket); a
    /// damaged chunk then spreads into this backup until a scrub or verify finds it.
    #[arg(long)]
    pub trust_stored: bool,
    /// Chunk size of a new repository (a multiple of the bbolt page size; ignored for an existing one).
    #[arg(long, value_name = "BYTES", default_value_t = etcdguard_repo::repository::DEFAULT_CHUNK_SIZE, hide = true)]
    pub chunk_size: u32,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

impl CreateArgs {
    /// The library's options from the flags.
    pub fn options(&self) -> CreateOptions {
        CreateOptions {
            repo: RepoSpec {
                transfer: etcdguard_repo::repository::Transfer {
                    compression_level: self.compression_level,
                    trust_stored: self.trust_stored,
                    ..self.parallel.transfer(self.limit_rate)
                },
                ..self.repo.spec()
            },
            from_file: self.from_file.clone(),
            snapshot_from: self.snapshot_from.clone(),
            scratch_dir: self.scratch_dir.clone(),
            conn: self.conn.flags(),
            pki_dir: self.pki_dir.clone(),
            manifests_dir: self.manifests_dir.clone(),
            encryption_config: self.encryption_config.clone(),
            files: self.files.clone(),
            labels: self.labels.clone(),
            cluster: self.cluster.clone(),
            skip_verify: self.skip_verify,
            chunk_size: self.chunk_size,
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

pub(super) fn create(args: CreateArgs) -> Result<()> {
    let manifest = backup::create(&args.options(), &mut |note| eprintln!("{note}"))?;
    match args.write_out {
        TextJson::Json => crate::args::print_json(&manifest)?,
        TextJson::Text => println!("{}", created_line(&manifest)),
    }
    Ok(())
}
