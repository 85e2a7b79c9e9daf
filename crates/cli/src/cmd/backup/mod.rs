//! `etcdguard backup …`: snapshots and control-plane files in a deduplicated repository.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_repo::manifest::{FileKind, Manifest, Source};
use etcdguard_repo::retention::{parse_duration, Policy};
use etcdguard_repo::{RepoError, Repository};
use etcdguard_storage::TrailerCheck;
use etcdguard_workflow::backup::{self, KeyEvent, RestoreEvent};
use etcdguard_workflow::restore::SnapshotRestoreOptions;
use etcdguard_workflow::{PassphraseSource, RepoSpec};
use serde_json::json;

use crate::args::{read_passphrase, ParallelArg, RepoArg, TableJson, TextJson};
use crate::cmd::table;
use crate::exit::{Code, Failure};

pub mod create;
mod delete;
mod key;
mod list;
mod prune;
mod restore;
mod show;
mod unlock;
mod url;
mod verify;

use self::create::{create, CreateArgs};
use self::{
    delete::delete, key::key, list::list, prune::prune, restore::restore, show::show,
    unlock::unlock, url::url, verify::verify,
};
pub use delete::DeleteArgs;
pub use key::KeyArgs;
pub use list::ListArgs;
pub use prune::PruneArgs;
pub use restore::RestoreArgs;
pub use show::ShowArgs;
pub use unlock::UnlockArgs;
pub use url::UrlArgs;
pub use verify::VerifyArgs;

pub(crate) use etcdguard_workflow::text::{duration_short, human};

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
