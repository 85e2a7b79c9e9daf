//! `etcdguard backup …`: snapshots and control-plane files in a deduplicated repository.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_repo::crypto::Passphrase;
use etcdguard_repo::manifest::{FileKind, Manifest, Source};
use etcdguard_repo::retention::{parse_duration, Policy};
use etcdguard_repo::{RepoError, Repository};
use etcdguard_storage::TrailerCheck;
use etcdguard_workflow::backup::{self, CreateOptions, KeyEvent, RestoreEvent};
use etcdguard_workflow::restore::SnapshotRestoreOptions;
use etcdguard_workflow::{PassphraseSource, RepoSpec};
use serde_json::json;

use crate::cmd::table;
use crate::exit::{Code, Failure};

pub(crate) use etcdguard_workflow::text::{created_line, duration_short, human};

pub(crate) const REPO_HELP: &str = "Repository: a local directory (the default), s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or \
az://CONTAINER[/PREFIX]. Options go in the query: ?endpoint=http://host:9000&region=us-east-1&path-style=true \
(S3-compatible servers), ?account=NAME (Azure), ?retries=N; S3 also ?checksum=sha256 (needed by a bucket with \
Object Lock) and ?sse=AES256|aws:kms[&sse-kms-key-id=KEY] (server-side encryption). Credentials come from the environment and files as \
the cloud SDKs read them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE and ~/.aws/credentials, \
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY). Without S3 credentials \
the EC2 instance metadata address is asked for them only for AWS itself and unless AWS_EC2_METADATA_DISABLED=true; \
requests to another endpoint go unsigned.";

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Store a snapshot and control-plane files (PKI, static pod manifests, encryption config) as a new backup.
    ///
    /// The snapshot is checked first (sha256 trailer, bbolt structure, etcd schema; a damaged
    /// snapshot is refused), then cut into page-aligned chunks; only chunks the repository does
    /// not hold yet are compressed (zstd) and uploaded, so a backup taken after a little churn
    /// costs a small fraction of the first. The backup appears in `backup list` only once every
    /// part is stored. A repository is created on first use. Without --from-file the snapshot
    /// is taken from the live cluster (same connection flags and environment as `snapshot
    /// save`), spooled to a private scratch file, checked, stored, and the scratch file removed.
    ///
    /// Examples:
    ///   etcdguard backup create --repo s3://etcd-backups/prod-eu --cluster prod-eu \
    ///       --endpoints https://10.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt \
    ///       --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
    ///       --key /etc/kubernetes/pki/etcd/healthcheck-client.key --pki-dir /etc/kubernetes/pki
    ///   etcdguard backup create --repo /var/backups/etcd --from-file /tmp/snapshot.db \
    ///       --pki-dir /etc/kubernetes/pki --manifests-dir /etc/kubernetes/manifests \
    ///       --encryption-config /etc/kubernetes/enc/encryption-config.yaml --label env=prod
    ///   AWS_PROFILE=backup etcdguard backup create --repo s3://etcd-backups/prod-eu --from-file snap.db
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    #[command(long_about = crate::cmd::import::IMPORT_HELP, after_help = crate::cmd::import::IMPORT_EXAMPLES)]
    /// Bring in backups other tools made (OpenShift cluster-backup.sh, etcdctl, k3s/RKE2,
    /// etcd-druid), with their original times.
    Import(crate::cmd::import::ImportArgs),
    /// List the backups in a repository, oldest first.
    ///
    /// Example: etcdguard backup list --repo s3://etcd-backups/prod-eu -w json
    List(ListArgs),
    /// Show one backup: etcd status at the time, sizes, checksums and the files it holds.
    ///
    /// ID is a backup id, a unique prefix of one (4 characters or more) or `latest`.
    ///
    /// Example: etcdguard backup show latest --repo /var/backups/etcd
    Show(ShowArgs),
    /// Download a backup and check it completely: the snapshot's sha256 (which covers every
    /// chunk; a damaged one is named), its trailer, bbolt structure and etcd schema (as
    /// `snapshot verify`), and every file.
    ///
    /// A backup that passes is recorded as verified (prune never removes the newest verified
    /// backup). Exits non-zero when anything is wrong (9 checksum mismatch, 10 damaged).
    ///
    /// Example: etcdguard backup verify latest --repo s3://etcd-backups/prod-eu
    Verify(VerifyArgs),
    /// Bring a backup back: the snapshot file (byte-identical to the one backed up), new etcd
    /// data dirs built from it, and the control-plane files with their modes.
    ///
    /// With --data-dir (or --cluster-out) the snapshot is downloaded, its sha256 checked, and
    /// restored as `etcdguard snapshot restore` does, with the same flags. With --to-file the
    /// snapshot file itself is written (and kept when --data-dir is given too). Nothing
    /// existing is overwritten.
    ///
    /// Examples:
    ///   etcdguard backup restore latest --repo /var/backups/etcd --data-dir /var/lib/etcd-restored \
    ///       --bump-revision 1000000000 --mark-compacted --files-to /root/restore-files
    ///   etcdguard backup restore 3f9a1c2b --repo s3://etcd-backups/prod-eu --to-file /root/snapshot.db
    #[command(verbatim_doc_comment)]
    Restore(RestoreArgs),
    /// Remove one backup from the list. Its data is freed by the next `backup prune`.
    ///
    /// Refuses to remove the newest verified backup unless --force is given.
    ///
    /// Example: etcdguard backup delete 3f9a1c2b --repo /var/backups/etcd
    Delete(DeleteArgs),
    /// Apply a retention policy and free the space of data no remaining backup uses.
    ///
    /// Rules as restic's `forget`: --keep-last N keeps the N newest; --keep-hourly/daily/
    /// weekly/monthly/yearly N keep the newest backup of each of the last N periods (UTC)
    /// that have one; --keep-within D keeps all taken within D of the newest. A backup kept by
    /// any rule stays; the newest verified backup always stays. Without rules only unused data
    /// is removed (after `backup delete`, or left by an interrupted create). Waits for no one:
    /// fails at once (exit 15) while another etcdguard writes to the repository; locks left
    /// unrefreshed for 5 minutes (by the storage's clock) are stale and removed.
    ///
    /// Examples:
    ///   etcdguard backup prune --repo /var/backups/etcd --keep-hourly 24 --keep-daily 7 --keep-weekly 4 --dry-run
    ///   etcdguard backup prune --repo s3://etcd-backups/prod-eu --keep-within 72h --keep-monthly 12
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Read every pack and mend a damaged repository: salvage what damaged packs still hold,
    /// store lost chunks again from the data at hand, rebuild the index, and name the backups
    /// that stay unrestorable.
    ///
    /// Damage found by `backup verify`, a restore, the agent's scrub or `backup create` is
    /// recorded in the repository; a create already stores fresh copies of what it reuses.
    /// Repair goes further: every pack is read whole (a pack is intact when it hashes to its
    /// name), the sound blobs of damaged packs are copied into new packs, lost chunks are
    /// looked for in --from-file snapshots, --from-repo repositories and, with --from-live,
    /// a fresh snapshot of the cluster; then one new index replaces the old ones and the
    /// damaged packs are removed. Takes the exclusive lock (as prune). Exits 10 while any
    /// backup stays unrestorable. Run it with --dry-run first.
    ///
    /// Examples:
    ///   etcdguard backup repair --repo /var/backups/etcd --dry-run
    ///   etcdguard backup repair --repo s3://etcd-backups/prod-eu --from-file /root/snapshot-monday.db
    ///   etcdguard backup repair --repo /var/backups/etcd --from-live --endpoints https://10.0.0.1:2379 \
    ///       --cacert ca.crt --cert client.crt --key client.key
    #[command(verbatim_doc_comment)]
    Repair(crate::cmd::repair::RepairArgs),
    /// Remove stale repository locks: those whose holder has not rewritten them for 5 minutes
    /// by the storage's clock (a killed or disconnected etcdguard), unreadable lock files and
    /// leftover temporary files. Live locks are kept and listed.
    ///
    /// With --remove-all every lock goes, live ones too: only when you know no etcdguard is
    /// running against the repository (a prune running beside a create can delete data the
    /// create is about to reference). `backup prune` removes stale locks by itself.
    ///
    /// Example: etcdguard backup unlock --repo s3://etcd-backups/prod-eu
    #[command(verbatim_doc_comment)]
    Unlock(UnlockArgs),
    /// Print presigned download URLs (S3, GCS, Azure) of a backup's objects, for restore flows
    /// that fetch from a URL without credentials.
    ///
    /// Example: etcdguard backup url latest --repo s3://etcd-backups/prod-eu --expires 1h
    Url(UrlArgs),
    /// The passphrases of an encrypted repository: list, add, remove, passwd.
    ///
    /// Each passphrase opens its own key file (`keys/<id>.json`) holding the one master key,
    /// so a passphrase can be added for a colleague or a vault and removed later without
    /// re-encrypting anything. The current passphrase comes as for every command
    /// (ETCDGUARD_PASSPHRASE or --passphrase-file), a new one from ETCDGUARD_NEW_PASSPHRASE or
    /// --new-passphrase-file.
    ///
    /// Examples:
    ///   etcdguard backup key list --repo s3://etcd-backups/prod-eu
    ///   etcdguard backup key passwd --repo /var/backups/etcd \
    ///       --passphrase-file /root/old-pass --new-passphrase-file /root/new-pass
    #[command(verbatim_doc_comment)]
    Key(KeyArgs),
    /// Continuous capture: store every change after the newest full backup, as it happens.
    ///
    /// Takes a full backup first when the repository has none (same flags as `backup
    /// create`), then watches the whole keyspace from the revision after it and stores the
    /// changes as segments every --segment-interval: a disaster loses at most that much. A
    /// restart resumes after the last stored revision, with no gap and no duplicate. When
    /// etcd has compacted past that point the lost range is recorded and a new full backup
    /// is taken. Auth and membership changes are not in the watch stream: the next full
    /// backup carries them. `backup restore --at` builds the database at any revision or
    /// time from a full backup and these changes; `backup log` lists them.
    ///
    /// Examples:
    ///   etcdguard backup follow --repo s3://etcd-backups/prod-eu --full-every 24h \
    ///       --endpoints https://10.0.0.1:2379,https://10.0.0.2:2379 --cacert … --cert … --key …
    ///   etcdguard backup follow --repo /var/backups/etcd --until-revision 120345   # scripts, tests
    #[command(verbatim_doc_comment)]
    Follow(crate::cmd::capture::FollowArgs),
    /// The changes stored by continuous capture: revision, time, put or delete, object kind,
    /// namespace and name. Finds the moment to restore to.
    ///
    /// Example — when was namespace prod deleted?
    ///   etcdguard backup log --repo /var/backups/etcd --key /registry/namespaces/prod
    ///   etcdguard backup restore --repo /var/backups/etcd --at <that revision - 1> --to-file before.db
    #[command(verbatim_doc_comment)]
    Log(crate::cmd::capture::LogArgs),
    /// Copy backups into a second repository (another bucket, region, cloud or directory),
    /// with their continuous-capture changes.
    ///
    /// Each backup keeps its id and creation time, so both sites list it the same way. Its
    /// snapshot and files are read from the source (sha256 checked, as `verify` checks them)
    /// and stored as `backup create` stores them: only chunks the destination lacks are
    /// uploaded, sealed under the destination's own key, and a backup is listed there only
    /// once complete, so a copy that was stopped is simply run again. Backups already there
    /// are skipped; another backup under the same id is refused (exit 14). A backup whose
    /// source data is damaged is not copied (exit 10 at the end), the others are. The
    /// destination is created when missing, chunked as the source (encrypted when
    /// ETCDGUARD_TO_PASSPHRASE or --to-passphrase-file is given; required when the source
    /// is encrypted). The source is only read.
    ///
    /// Examples:
    ///   etcdguard backup copy --from /var/backups/etcd --to s3://etcd-backups-dr/prod-eu
    ///   ETCDGUARD_PASSPHRASE=… ETCDGUARD_TO_PASSPHRASE=… etcdguard backup copy \
    ///       --from s3://etcd-backups/prod-eu --to az://dr/prod-eu?account=drbackups latest
    #[command(verbatim_doc_comment)]
    Copy(crate::cmd::copy::CopyArgs),
}

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the keys, oldest first; with the passphrase given, marks the key it opens.
    List(KeyListArgs),
    /// Add a passphrase. The ones already there keep working.
    Add(KeyNewArgs),
    /// Remove a key by id. Refuses the key the given passphrase opens, and the last key.
    Remove(KeyRemoveArgs),
    /// Change the passphrase: add a key for the new one, then remove the key of the current one.
    Passwd(KeyNewArgs),
}

#[derive(Args)]
pub struct KeyListArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

#[derive(Args)]
pub struct KeyNewArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// File holding the new passphrase (or put it in ETCDGUARD_NEW_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_NEW_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub new_passphrase_file: Option<PathBuf>,
    /// `key add`: wrap the master key with this key management service key instead of a
    /// passphrase (aws-kms:KEY[?region=R&endpoint=URL]); unlock with --kms-key then.
    #[arg(long, value_name = "KMS", conflicts_with = "new_passphrase_file")]
    pub new_kms_key: Option<String>,
}

#[derive(Args)]
pub struct KeyRemoveArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Key id, as `backup key list` shows it.
    pub id: String,
}

#[derive(Args, Clone)]
pub struct RepoArg {
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL", help = REPO_HELP, value_parser = crate::args::repo)]
    pub repo: String,
    /// File holding the passphrase of an encrypted repository (or put the passphrase itself in
    /// ETCDGUARD_PASSPHRASE). A repository that `backup create` makes while a passphrase is
    /// given is encrypted with it: chunks and files (CA keys included) are sealed with
    /// XChaCha20-Poly1305 under a key only the passphrase opens. Lose it and the backups are lost.
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub passphrase_file: Option<PathBuf>,
    /// Unlock an encrypted repository with a key management service instead of a passphrase:
    /// aws-kms:KEY[?region=R&endpoint=URL] (KEY: key id, alias/NAME or ARN; AWS credentials
    /// from the environment), for a key file `backup key add --new-kms-key` wrote.
    #[arg(long, env = "ETCDGUARD_KMS_KEY", value_name = "KMS")]
    pub kms_key: Option<String>,
}

impl RepoArg {
    /// The passphrase from --passphrase-file or ETCDGUARD_PASSPHRASE, if any.
    fn passphrase(&self) -> Result<Option<Passphrase>, Failure> {
        read_passphrase(
            self.passphrase_file.as_deref(),
            "--passphrase-file",
            "ETCDGUARD_PASSPHRASE",
        )
    }

    /// The repository as the workflows take it; the passphrase is read when one is needed.
    pub fn spec(&self) -> RepoSpec {
        let arg = self.clone();
        RepoSpec {
            url: self.repo.clone(),
            passphrase: Arc::new(move || Ok(arg.passphrase()?)),
            transfer: Default::default(),
            kms: self.kms_key.clone(),
        }
    }
}

/// `--parallel`: how many packs are fetched (restore, verify) or chunks compressed and
/// packs uploaded (create) at once.
#[derive(Args, Clone, Default)]
pub struct ParallelArg {
    /// Range reads of packs (restore, verify) or compression threads and uploads (create) at
    /// once [default: the number of cores, 2 to 8]. More helps against a distant bucket;
    /// memory grows by about 8 MiB each.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
}

impl ParallelArg {
    /// The transfer settings, with a progress bar on stderr when it is a terminal.
    pub fn transfer(&self, limit_rate: Option<u64>) -> etcdguard_repo::repository::Transfer {
        use std::io::IsTerminal;
        etcdguard_repo::repository::Transfer {
            parallel: self.parallel.map(usize::from).unwrap_or(0),
            limit_rate,
            compression_level: None,
            progress: std::io::stderr()
                .is_terminal()
                .then(|| Arc::new(Bar::default()) as Arc<dyn etcdguard_repo::repository::Progress>),
            ..Default::default()
        }
    }
}

/// A progress bar on stderr (bytes, rate, ETA); only made when stderr is a terminal.
#[derive(Default)]
struct Bar(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl etcdguard_repo::repository::Progress for Bar {
    fn begin(&self, total: Option<u64>) {
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        let template = match total {
            Some(_) => "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            None => "{spinner} {bytes} {binary_bytes_per_sec}",
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        if let Some(old) = self.0.lock().unwrap_or_else(|p| p.into_inner()).replace(bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            b.inc(bytes);
        }
    }
    fn end(&self) {
        if let Some(b) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

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

/// A passphrase from a file (trailing newline dropped) or else from an environment variable.
pub(crate) fn read_passphrase(
    file: Option<&Path>,
    flag: &str,
    env: &str,
) -> Result<Option<Passphrase>, Failure> {
    if let Some(path) = file {
        // Its mode was checked (with a warning) when the flag was parsed: crate::args.
        let bytes = std::fs::read(path).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                _ => Code::Failure,
            };
            Failure::new(code, format!("{flag} {}: {e}", path.display()))
        })?;
        let p = Passphrase::new(bytes);
        if p.bytes().is_empty() {
            return Err(Failure::new(
                Code::Usage,
                format!("{flag} {}: the file is empty", path.display()),
            ));
        }
        return Ok(Some(p));
    }
    match std::env::var_os(env) {
        Some(v) if !v.is_empty() => Ok(Some(Passphrase::new(
            std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
        ))),
        _ => Ok(None),
    }
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
    pub conn: crate::cmd::cluster::ConnArgs,
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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum TextJson {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TableJson {
    Table,
    Json,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    /// Where to reassemble the snapshot while checking it (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Also read every pack of the repository and check it against its name and header.
    #[arg(long)]
    pub packs: bool,
    #[command(flatten)]
    pub parallel: ParallelArg,
}

#[derive(Args)]
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
    /// Restore into this new data dir (as `snapshot restore --data-dir`).
    #[arg(long, value_name = "DIR", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::path)]
    pub data_dir: Option<PathBuf>,
    /// Put the WAL here instead of <data-dir>/member/wal.
    #[arg(long, value_name = "DIR", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::path)]
    pub wal_dir: Option<PathBuf>,
    /// Name of the member being restored; must appear in --initial-cluster.
    #[arg(long, default_value = "default", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::non_empty)]
    pub name: String,
    /// Every member of the new cluster as name=peer-url[,name=peer-url…] [default: <name>=http://localhost:2380]
    #[arg(
        long,
        value_name = "NAME=URL,…",
        help_heading = "Restore into a data dir (flags of `snapshot restore`)"
    )]
    pub initial_cluster: Option<String>,
    /// Token for the new cluster; use a new one per restore.
    #[arg(long, default_value = "etcd-cluster", value_name = "TOKEN", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::non_empty)]
    pub initial_cluster_token: String,
    /// This member's peer URLs (comma-separated); must equal its entry in --initial-cluster.
    #[arg(
        long,
        default_value = "http://localhost:2380",
        value_name = "URLS",
        help_heading = "Restore into a data dir (flags of `snapshot restore`)"
    )]
    pub initial_advertise_peer_urls: String,
    /// Raise the revision by this much (needs --mark-compacted).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        help_heading = "Restore into a data dir (flags of `snapshot restore`)"
    )]
    pub bump_revision: u64,
    /// Mark every revision up to the bumped one compacted (needs --bump-revision).
    #[arg(long, help_heading = "Restore into a data dir (flags of `snapshot restore`)")]
    pub mark_compacted: bool,
    /// Write one data dir per member of --initial-cluster, as DIR/<name>.
    #[arg(long, value_name = "DIR", conflicts_with = "data_dir", help_heading = "Restore into a data dir (flags of `snapshot restore`)", value_parser = crate::args::path)]
    pub cluster_out: Option<PathBuf>,
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
    /// The etcd release (X.Y) that will run the restored members; a backup written by a
    /// newer release is refused (exit 17).
    #[arg(long, value_name = "X.Y", value_parser = crate::cmd::snapshot::parse_release, help_heading = "Restore into a data dir (flags of `snapshot restore`)")]
    pub etcd_version: Option<etcdguard_storage::Release>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RestoreFormat {
    /// cluster-backup.sh's two files.
    Openshift,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id or unique prefix.
    pub id: String,
    /// Delete even the newest verified backup.
    #[arg(long)]
    pub force: bool,
}

/// Retention rules, as restic's `forget` has them.
#[derive(Args, Clone)]
pub struct KeepArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_last: usize,
    /// Keep the newest backup of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_hourly: usize,
    /// Keep the newest backup of each of the last N days (UTC) that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_daily: usize,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_weekly: usize,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_monthly: usize,
    /// Keep the newest backup of each of the last N years that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub keep_yearly: usize,
    /// Keep every backup taken within this long of the newest (e.g. 36h, 7d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
}

impl KeepArgs {
    /// The policy, or `None` when no rule was given.
    pub fn policy(&self) -> Option<Policy> {
        let policy = Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
        };
        (!policy.is_empty()).then_some(policy)
    }
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Show what would be removed and why; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

#[derive(Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Remove live locks too (make sure no etcdguard uses the repository first).
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Args)]
pub struct UrlArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    /// How long the URLs stay valid (e.g. 15m, 1h, 7d; S3 allows at most 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub expires: Duration,
    /// Print URLs of the backup's repository objects (manifest, index, packs) instead of
    /// exporting its snapshot: for a restore that runs etcdguard on the far side.
    #[arg(long)]
    pub objects: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub fn run(cmd: BackupCommand) -> Result<()> {
    match cmd {
        BackupCommand::Create(a) => create(a),
        BackupCommand::Import(a) => crate::cmd::import::import(a),
        BackupCommand::List(a) => list(a),
        BackupCommand::Show(a) => show(a),
        BackupCommand::Verify(a) => verify(a),
        BackupCommand::Restore(a) => restore(a),
        BackupCommand::Delete(a) => delete(a),
        BackupCommand::Prune(a) => prune(a),
        BackupCommand::Repair(a) => crate::cmd::repair::repair(a),
        BackupCommand::Unlock(a) => unlock(a),
        BackupCommand::Url(a) => url(a),
        BackupCommand::Key(a) => key(a),
        BackupCommand::Follow(a) => crate::cmd::capture::follow(a),
        BackupCommand::Log(a) => crate::cmd::capture::log(a),
        BackupCommand::Copy(a) => crate::cmd::copy::run(a),
    }
}

/// Maps a repository error to its exit code; the message is the library's.
pub(crate) fn failure(e: RepoError) -> Failure {
    etcdguard_workflow::error::repo_error(e).into()
}

/// Opens the repository for reading metadata (manifests, index): no passphrase needed.
fn open_repo(repo: &RepoArg) -> Result<Repository, Failure> {
    Ok(repo.spec().open()?)
}

fn resolve(repo: &Repository, id: &str) -> Result<Manifest, Failure> {
    Ok(etcdguard_workflow::repo::resolve(repo, id)?)
}

fn create(args: CreateArgs) -> Result<()> {
    let manifest = backup::create(&args.options(), &mut |note| eprintln!("{note}"))?;
    match args.write_out {
        TextJson::Json => crate::args::print_json(&manifest)?,
        TextJson::Text => println!("{}", created_line(&manifest)),
    }
    Ok(())
}

fn age(created: chrono::DateTime<Utc>) -> String {
    let secs = (Utc::now() - created).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn labels_text(m: &Manifest) -> String {
    m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Unlocks an encrypted repository when a passphrase is given, so its manifests are
/// checked; says whether they are (see `Repository::authenticates_manifests`).
fn unlock_if_given(repo: &mut Repository, arg: &RepoArg) -> Result<bool, Failure> {
    let spec = arg.spec();
    if repo.is_encrypted() && spec.passphrase()?.is_some() {
        spec.unlock(repo)?;
    }
    Ok(repo.authenticates_manifests())
}

/// What `list` and `show` say when an encrypted repository's manifests were not checked.
const UNAUTHENTICATED_NOTE: &str = "note: without the passphrase the clear fields of these manifests (time, labels, \
cluster, etcd status) cannot be authenticated: anyone who can write to the repository could have changed them. Give \
the passphrase (ETCDGUARD_PASSPHRASE or --passphrase-file) to check them";

fn list(args: ListArgs) -> Result<()> {
    let mut repo = open_repo(&args.repo)?;
    let authenticated = unlock_if_given(&mut repo, &args.repo)?;
    let (backups, bad) = repo.list_backups().map_err(failure)?;
    for b in &bad {
        eprintln!("warning: unreadable manifest {b}");
    }
    match args.write_out {
        TableJson::Json => {
            let rows: Vec<_> = backups
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "created": m.created,
                        "ageSeconds": (Utc::now() - m.created).num_seconds(),
                        "cluster": m.cluster,
                        "revision": m.etcd.revision,
                        "size": m.sizes.original,
                        "snapshotSize": m.snapshot.size,
                        "added": m.sizes.added,
                        "verified": m.etcd.verified,
                        // When `backup verify` or a scrub last passed on it (None: never).
                        "lastVerified": repo.verification(&m.id).ok().flatten(),
                        // When a restore drill last passed on it (None: never).
                        "lastDrilled": repo.drill_record(&m.id).ok().flatten(),
                        "labels": m.labels,
                        "hostname": m.hostname,
                        "authenticated": authenticated,
                    })
                })
                .collect();
            crate::args::print_json(&rows)?;
        }
        TableJson::Table => {
            let mut rows = vec![[
                "ID",
                "CREATED (UTC)",
                "AGE",
                "CLUSTER",
                "REVISION",
                "SIZE",
                "ADDED",
                "LABELS",
            ]
            .map(String::from)
            .to_vec()];
            for m in &backups {
                rows.push(vec![
                    m.id.clone(),
                    m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                    age(m.created),
                    m.cluster.clone().unwrap_or_else(|| "-".into()),
                    m.etcd.revision.to_string(),
                    human(m.sizes.original),
                    human(m.sizes.added),
                    labels_text(m),
                ]);
            }
            print!("{}", table(&rows));
            if backups.is_empty() {
                eprintln!("no backups in {}", repo.location());
            } else if repo.is_encrypted() && !authenticated {
                eprintln!("{UNAUTHENTICATED_NOTE}");
            }
        }
    }
    if !bad.is_empty() {
        return Err(Failure::new(
            Code::Corrupt,
            format!("{} manifest(s) could not be read", bad.len()),
        )
        .into());
    }
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let mut repo = open_repo(&args.repo)?;
    // The file list and certificates of an encrypted repository's manifests are sealed: open
    // them (and check the clear part) when a passphrase is given, else say where they went.
    let authenticated = unlock_if_given(&mut repo, &args.repo)?;
    let m = resolve(&repo, &args.id)?;
    if args.write_out == TextJson::Json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("authenticated".into(), authenticated.into());
        }
        crate::args::print_json(&v)?;
        return Ok(());
    }
    let verified_at = repo.verification(&m.id).map_err(failure)?;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20}{v}\n"));
    line("backup", m.id.clone());
    line(
        "created",
        format!("{} ({} ago)", m.created.format("%Y-%m-%d %H:%M:%S UTC"), age(m.created)),
    );
    line("cluster", m.cluster.clone().unwrap_or_else(|| "-".into()));
    line("labels", if m.labels.is_empty() { "-".into() } else { labels_text(&m) });
    line(
        "source",
        match &m.source {
            Source::File { path, import: None } => format!("file {path}"),
            Source::File { path, import: Some(i) } => {
                format!(
                    "imported {} backup {path} (on {})",
                    i.format,
                    i.imported.format("%Y-%m-%d %H:%M:%S UTC")
                )
            }
            Source::Cluster { endpoint } => format!("cluster {endpoint}"),
        },
    );
    line("host, tool", format!("{}, etcdguard {}", m.hostname, m.tool_version));
    let e = &m.etcd;
    line(
        "revision",
        format!(
            "{}{}",
            e.revision,
            e.compacted_revision.map(|c| format!(" (compacted at {c})")).unwrap_or_default()
        ),
    );
    line(
        "status",
        format!(
            "hash {:x}, {} keys, db size {}, page size {}",
            e.hash,
            e.total_key,
            human(e.total_size),
            e.page_size
        ),
    );
    if let (Some(ci), Some(t)) = (e.consistent_index, e.term) {
        line("raft", format!("consistent index {ci}, term {t}"));
    }
    for (k, v) in
        [("cluster id", &e.cluster_id), ("member", &e.member_id), ("etcd version", &e.version)]
    {
        if let Some(v) = v {
            line(k, v.clone());
        }
    }
    line(
        "checked",
        format!(
            "trailer {}; snapshot {} at create; {}",
            e.trailer,
            if e.verified { "verified" } else { "not verified" },
            verified_at
                .map(|t| format!("backup verified {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_else(|| "backup never verified since".into())
        ),
    );
    line("snapshot", format!("{} sha256 {}", human(m.snapshot.size), m.snapshot.sha256));
    line(
        "chunks",
        format!(
            "{} of {} ({} chunk lists)",
            m.snapshot.chunks,
            human(m.snapshot.chunk_size as u64),
            m.snapshot.chunk_lists.len()
        ),
    );
    line(
        "encoding",
        format!("compression {}, encryption {}", m.encoding.compression, m.encoding.encryption),
    );
    line(
        "size",
        format!(
            "{} original, {} added to the repository",
            human(m.sizes.original),
            human(m.sizes.added)
        ),
    );
    if repo.is_encrypted() && !authenticated {
        line(
            "authenticated",
            "no: the passphrase was not given, so the fields above are as stored, unchecked".into(),
        );
    }
    if m.contents_sealed() {
        // Files and certificates are in the sealed part of an encrypted repository's manifest.
        line("files", "file list is encrypted, give the passphrase (ETCDGUARD_PASSPHRASE or --passphrase-file) to list it".into());
        line("certificates", "encrypted with the file list".into());
        print!("{out}");
        return Ok(());
    }
    line("files", m.files.len().to_string());
    print!("{out}");
    for f in &m.files {
        let kind = match f.kind {
            FileKind::File => format!("{:>10}", human(f.content.as_ref().map_or(0, |c| c.size))),
            FileKind::Dir => format!("{:>10}", "dir"),
            FileKind::Symlink => format!("{:>10}", "symlink"),
        };
        let target = f.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        println!("  {:04o} {kind}  {}{target}", f.mode, f.path);
    }
    if !m.certificates.is_empty() {
        println!(
            "{:<20}{} (notAfter; time left when the backup was taken)",
            "certificates",
            m.certificates.len()
        );
        for c in &m.certificates {
            let left = match (c.not_after - m.created).to_std() {
                Ok(d) if !d.is_zero() => etcdguard_workflow::certs::rough(d),
                _ => "expired".into(),
            };
            println!(
                "  {}  {left:>9}  {}  {}",
                c.not_after.format("%Y-%m-%d %H:%M:%S UTC"),
                c.path,
                c.subject
            );
        }
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> Result<()> {
    let opts = backup::VerifyOptions {
        repo: RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() },
        id: args.id.clone(),
        scratch_dir: args.scratch_dir.clone(),
        packs: args.packs,
    };
    let v = backup::verify(&opts, &mut |note| eprintln!("{note}"))?;
    let m = &v.manifest;
    if args.out.json() {
        return crate::args::print_json(&json!({
            "id": m.id, "ok": true, "snapshotSize": m.snapshot.size, "sha256": m.snapshot.sha256,
            "trailer": matches!(v.trailer, TrailerCheck::Verified), "revision": m.etcd.revision,
            "files": backup::file_count(m),
        }));
    }
    println!(
        "backup {}: OK (snapshot {} sha256 {}, trailer {}, revision {}, {} files)",
        m.id,
        human(m.snapshot.size),
        m.snapshot.sha256,
        match v.trailer {
            TrailerCheck::Verified => "verified",
            _ => "absent",
        },
        m.etcd.revision,
        backup::file_count(m)
    );
    Ok(())
}

/// A private scratch directory (locked while it lives, removed on drop); dead ones beside it are swept.
pub(crate) fn tempfile_in(dir: &Path) -> Result<etcdguard_workflow::spool::Spool, Failure> {
    Ok(etcdguard_workflow::spool::create(dir)?.0)
}

fn restore(args: RestoreArgs) -> Result<()> {
    if let Some(RestoreFormat::Openshift) = args.format {
        return crate::cmd::import::restore_openshift(&args);
    }
    let into_data_dir = args.data_dir.is_some() || args.cluster_out.is_some();
    let data_dir = into_data_dir.then(|| SnapshotRestoreOptions {
        file: PathBuf::new(),
        data_dir: args.data_dir.clone(),
        wal_dir: args.wal_dir.clone(),
        name: args.name.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        skip_hash_check: false,
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
        cluster_out: args.cluster_out.clone(),
        encryption_config: args.encryption_config.clone(),
        force: args.force,
        etcd_version: args.etcd_version,
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

fn delete(args: DeleteArgs) -> Result<()> {
    let id = backup::delete(&args.repo.spec(), &args.id, args.force)?;
    if args.out.json() {
        return crate::args::print_json(&json!({ "id": id, "deleted": true }));
    }
    println!("backup {id} deleted; run `etcdguard backup prune` to free its space");
    Ok(())
}

fn prune(args: PruneArgs) -> Result<()> {
    let report = backup::prune(&args.repo.spec(), args.keep.policy().as_ref(), args.dry_run)?;
    if args.write_out == TextJson::Json {
        let v = json!({
            "dryRun": report.dry_run,
            "backups": report.decisions.iter().map(|d| json!({
                "id": d.id, "created": d.time, "keep": d.keep, "reasons": d.reasons,
            })).collect::<Vec<_>>(),
            "backupsRemoved": report.manifests_removed,
            "packsDeleted": report.packs_deleted,
            "packsRepacked": report.packs_repacked,
            "orphanPacks": report.orphan_packs,
            "bytesBefore": report.bytes_before,
            "bytesAfter": report.bytes_after,
        });
        crate::args::print_json(&v)?;
        return Ok(());
    }
    let mut rows = vec![["ID", "CREATED (UTC)", "ACTION", "WHY"].map(String::from).to_vec()];
    for d in &report.decisions {
        rows.push(vec![
            d.id.clone(),
            d.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            if d.keep {
                "keep".into()
            } else if report.dry_run {
                "would remove".into()
            } else {
                "removed".into()
            },
            if d.keep { d.reasons.join(", ") } else { "matches no keep rule".into() },
        ]);
    }
    if !report.decisions.is_empty() {
        print!("{}", table(&rows));
    }
    let verb = if report.dry_run { "would free" } else { "freed" };
    println!(
        "{} backup(s) {}; {} pack(s) {}, {} repacked ({} left by interrupted backups); {verb} {} ({} -> {})",
        report.manifests_removed,
        if report.dry_run { "to remove" } else { "removed" },
        report.packs_deleted,
        if report.dry_run { "to delete" } else { "deleted" },
        report.packs_repacked,
        report.orphan_packs,
        human(report.bytes_before.saturating_sub(report.bytes_after)),
        human(report.bytes_before),
        human(report.bytes_after),
    );
    if report.missing_packs > 0 {
        eprintln!(
            "warning: {} pack(s) named in the index are missing; run `etcdguard backup verify`",
            report.missing_packs
        );
    }
    Ok(())
}

fn unlock(args: UnlockArgs) -> Result<()> {
    let report = backup::unlock(&args.repo.spec(), args.remove_all)?;
    if args.out.json() {
        let locks: Vec<_> = report
            .locks
            .iter()
            .map(|l| {
                json!({
                    "key": l.key, "removed": l.removed, "stale": l.stale, "written": l.written,
                    "staleAt": l.stale_at, "holder": l.info.as_ref().map(|i| i.describe()),
                })
            })
            .collect();
        return crate::args::print_json(
            &json!({ "locks": locks, "temporariesRemoved": report.temporaries_removed }),
        );
    }
    let (mut removed, mut kept) = (0, 0);
    for l in &report.locks {
        let what = match &l.info {
            Some(i) => i.describe(),
            None => "not a readable lock file".into(),
        };
        let written = l.written.format("%Y-%m-%d %H:%M:%S UTC");
        match (l.removed, l.stale) {
            (true, true) => println!("removed stale lock {}: {what}, last written {written}", l.key),
            (true, false) => eprintln!(
                "warning: removed live lock {}: {what}, last written {written}; if its holder still runs it keeps \
                 going unprotected until its next refresh rewrites the lock",
                l.key
            ),
            (false, _) => println!(
                "kept {} {}: {what}, last written {written}; stale at {} unless its holder refreshes it (--remove-all removes it)",
                if l.info.is_some() { "live lock" } else { "young lock object" },
                l.key,
                l.stale_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        }
        if l.removed {
            removed += 1;
        } else {
            kept += 1;
        }
    }
    println!(
        "{removed} lock(s) removed, {kept} live lock(s) kept, {} temporary file(s) removed",
        report.temporaries_removed
    );
    Ok(())
}

fn url(args: UrlArgs) -> Result<()> {
    if args.objects {
        let (m, urls) = backup::object_urls(&args.repo.spec(), &args.id, args.expires)?;
        match args.write_out {
            TextJson::Json => {
                let v: Vec<_> = urls.iter().map(|(k, u)| json!({"object": k, "url": u})).collect();
                crate::args::print_json(
                    &json!({"backup": m.id, "expiresInSeconds": args.expires.as_secs(), "objects": v}),
                )?;
            }
            TextJson::Text => {
                for (k, u) in &urls {
                    println!("{k}\t{u}");
                }
            }
        }
        let _ = std::io::stdout().flush();
        return Ok(());
    }
    let e = backup::export_url(&args.repo.spec(), &args.id, args.expires)?;
    let m = &e.manifest;
    eprintln!(
        "backup {}: snapshot ({}, sha256 {}) is {} in {}; the URL is valid for {}",
        m.id,
        human(m.snapshot.size),
        m.snapshot.sha256,
        e.key,
        e.location,
        duration_short(args.expires)
    );
    match args.write_out {
        TextJson::Json => crate::args::print_json(&json!({
            "backup": m.id, "object": e.key, "url": e.url, "size": m.snapshot.size,
            "sha256": m.snapshot.sha256, "expiresInSeconds": args.expires.as_secs(),
        }))?,
        TextJson::Text => println!("{}", e.url),
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

fn key(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::List(a) => key_list(a),
        KeyCommand::Add(a) => key_add(a, false),
        KeyCommand::Passwd(a) => key_add(a, true),
        KeyCommand::Remove(a) => {
            let location = backup::key_remove(&a.repo.spec(), &a.id)?;
            if a.out.json() {
                return crate::args::print_json(
                    &json!({ "removed": [{ "id": a.id, "location": location.to_string() }] }),
                );
            }
            println!("Removed key {} from {location}", a.id);
            Ok(())
        }
    }
}

fn key_list(args: KeyListArgs) -> Result<()> {
    let keys = backup::key_list(&args.repo.spec())?;
    match args.write_out {
        TableJson::Json => crate::args::print_json(&keys)?,
        TableJson::Table => {
            let mut rows = vec![["ID", "CREATED (UTC)", "HOST", ""].map(String::from).to_vec()];
            for k in &keys {
                let current = match (&k.kms, k.current) {
                    (Some(kms), true) => format!("{kms} (the key given)"),
                    (Some(kms), false) => kms.clone(),
                    (None, true) => "(the passphrase given)".into(),
                    (None, false) => String::new(),
                };
                rows.push(vec![
                    k.id.clone(),
                    k.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                    k.hostname.clone(),
                    current,
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// `key add`, and `key passwd` (`replace`).
fn key_add(args: KeyNewArgs, replace: bool) -> Result<()> {
    if let Some(kms) = &args.new_kms_key {
        if replace {
            return Err(Failure::new(
                Code::Usage,
                "--new-kms-key: use `backup key add`, then `backup key remove` the old key",
            )
            .into());
        }
        let (id, location) = etcdguard_workflow::repo::add_kms_key(&args.repo.spec(), kms)?;
        if args.out.json() {
            return crate::args::print_json(
                &json!({ "added": [{ "id": id, "kms": kms, "location": location.to_string() }] }),
            );
        }
        println!("Added key {id} ({kms}) to {location}");
        return Ok(());
    }
    let file = args.new_passphrase_file.clone();
    let new: PassphraseSource = Arc::new(move || {
        Ok(read_passphrase(file.as_deref(), "--new-passphrase-file", "ETCDGUARD_NEW_PASSPHRASE")?)
    });
    let json_out = args.out.json();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    backup::key_add(&args.repo.spec(), &new, replace, &mut |event| match event {
        KeyEvent::Added { id, location } if json_out => {
            added.push(json!({ "id": id, "location": location.to_string() }))
        }
        KeyEvent::Removed { id, location } if json_out => {
            removed.push(json!({ "id": id, "location": location.to_string() }))
        }
        KeyEvent::Added { id, location } => println!("Added key {id} to {location}"),
        KeyEvent::Removed { id, location } => {
            println!("Removed key {id}: the old passphrase no longer opens {location}")
        }
    })?;
    if json_out {
        return crate::args::print_json(&json!({ "added": added, "removed": removed }));
    }
    Ok(())
}

/// Writes the snapshot of backup `id` (id, prefix or `latest`) into `dir`; returns its path.
pub(crate) fn fetch_snapshot(repo: &RepoArg, id: &str, dir: &Path) -> Result<PathBuf, Failure> {
    Ok(backup::fetch_snapshot(&repo.spec(), id, dir)?)
}
