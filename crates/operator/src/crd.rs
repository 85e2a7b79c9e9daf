//! The custom resources of `etcdguard.io/v1alpha1`, generated from these types
//! (`etcdguard operator crds` prints them; `deploy/crds/` holds the same YAML).
//!
//! - [`EtcdBackup`]: one backup, taken once; its spec cannot change after creation (a CEL
//!   transition rule, checked by the API server).
//! - [`EtcdBackupSchedule`]: creates `EtcdBackup` objects on a cron schedule, applies a
//!   retention policy to the repository, keeps a bounded history of its `EtcdBackup`s, and
//!   can run continuous capture.
//! - [`EtcdBackupRecord`]: the inventory, one object per backup in a repository, kept in
//!   step with the repository whoever changed it.

// Several `printcolumn(...)` in one `#[kube(...)]` share argument names and types, which
// clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "etcdguard.io";

/// On an `EtcdBackup`: the name of the schedule that created it (its history is listed by it).
pub const SCHEDULE_LABEL: &str = "etcdguard.io/schedule";
/// On an `EtcdBackupRecord`: which repository it belongs to (`inventory::repository_key`
/// of its URL).
pub const REPOSITORY_LABEL: &str = "etcdguard.io/repository";
/// On an `EtcdBackupRecord`: the id of the backup it stands for.
pub const BACKUP_ID_LABEL: &str = "etcdguard.io/backup-id";

/// Where backups are stored and how to open the repository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// Repository URL, as `--repo` takes it: a local directory (a volume of the operator's
    /// pod), `s3://BUCKET/PREFIX`, `gs://…` or `az://…`.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Secret key holding the passphrase of an encrypted repository (given to the backup
    /// process as ETCDGUARD_PASSPHRASE, never on a command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_secret_ref: Option<SecretKeyRef>,
    /// KMS key that unlocks the repository (`aws-kms:KEY[?region=R]`), as `--kms-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// Secret whose every key becomes an environment variable of the backup process (e.g.
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_ACCOUNT_KEY). Without it the
    /// operator's own (ambient) cloud identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A key of a Secret in the object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A Secret in the object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    pub name: String,
}

/// The etcd cluster to back up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Client URLs of the members (`https://10.0.0.1:2379`).
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// Secret with the client TLS files: `ca.crt`, `tls.crt`, `tls.key` (each optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
}

/// Files stored with the snapshot, as paths inside the operator's pod (mount the control
/// plane's directories read-only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncludeSpec {
    /// The PKI directory (`/etc/kubernetes/pki`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<String>,
    /// The static pod manifests (`/etc/kubernetes/manifests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests_dir: Option<String>,
    /// The API server's EncryptionConfiguration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config: Option<String>,
    /// Further files or directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// What one backup takes and where it goes.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "etcdguard.io",
    version = "v1alpha1",
    kind = "EtcdBackup",
    namespaced,
    status = "EtcdBackupStatus",
    shortname = "eb",
    doc = "One backup of an etcd cluster into a repository, taken once. The spec cannot be changed after creation.",
    validation = Rule::new("self.spec == oldSelf.spec").message("the spec of an EtcdBackup cannot be changed: create a new EtcdBackup"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backupId"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupSpec {
    pub repository: RepositorySpec,
    pub etcd: EtcdSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<IncludeSpec>,
    /// Cluster name recorded with the backup (`--cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Labels recorded with the backup (`--label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where a backup is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The id of the stored backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Bytes of the snapshot and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Complete` (True once stored) and `Failed` (True with the reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Which backups the repository keeps after each scheduled backup (`backup prune`'s rules;
/// a backup kept by any rule stays). Without rules nothing is removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep everything younger than this (e.g. `72h`, `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

fn default_successful_history() -> u32 {
    3
}

fn default_failed_history() -> u32 {
    1
}

/// Backups on a schedule.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "etcdguard.io",
    version = "v1alpha1",
    kind = "EtcdBackupSchedule",
    namespaced,
    status = "EtcdBackupScheduleStatus",
    shortname = "ebs",
    doc = "Creates EtcdBackup objects on a cron schedule, prunes the repository and the history.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupScheduleSpec {
    /// Cron expression in UTC: minute hour day-of-month month day-of-week (`0 */6 * * *`);
    /// an optional leading sixth field gives seconds.
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// No new backups while true (continuous capture stops too).
    #[serde(default)]
    pub suspend: bool,
    /// The spec of each EtcdBackup created.
    pub template: EtcdBackupSpec,
    /// Applied to the repository after each successful backup of this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// How many succeeded EtcdBackup objects of this schedule to keep (the backups in the
    /// repository are governed by `retention`, not by this).
    #[serde(default = "default_successful_history")]
    pub successful_history_limit: u32,
    /// How many failed EtcdBackup objects of this schedule to keep.
    #[serde(default = "default_failed_history")]
    pub failed_history_limit: u32,
    /// Continuous capture: store every change between the scheduled backups (`backup
    /// follow`), so `backup restore --at` can reach any revision.
    #[serde(default)]
    pub continuous: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupScheduleStatus {
    /// When the last EtcdBackup was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The name of the last EtcdBackup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the schedule parses), `Capturing` (continuous capture runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One backup in a repository.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "etcdguard.io",
    version = "v1alpha1",
    kind = "EtcdBackupRecord",
    namespaced,
    shortname = "ebr",
    doc = "One backup found in a repository (the operator's inventory). Deleting it removes the backup only with deletionPolicy Delete.",
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupId"),
    printcolumn(name = "Created", type_ = "date", json_path = ".spec.created"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".spec.revision"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.size"),
    printcolumn(name = "Verified", type_ = "date", json_path = ".spec.lastVerified"),
    printcolumn(name = "Drilled", type_ = "date", json_path = ".spec.lastDrilled"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.deletionPolicy")
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupRecordSpec {
    /// The repository URL.
    pub repository: String,
    pub backup_id: String,
    /// When the backup was taken (RFC 3339).
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub revision: i64,
    /// Bytes of the snapshot and files.
    pub size: u64,
    pub snapshot_size: u64,
    /// The snapshot passed `snapshot verify` before it was stored.
    pub verified: bool,
    /// When the whole backup was last read back and checked (`backup verify`, the agent's
    /// scrub), RFC 3339; absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<String>,
    /// When a restore drill (the agent's `--drill-every`) last passed on it: restored into a
    /// scratch data dir and, with an etcd binary, booted and read. RFC 3339; absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drilled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `Retain` (default): deleting this object leaves the backup in the repository (the
    /// object comes back at the next inventory sync). `Delete`: deleting this object deletes
    /// the backup from the repository (as `backup delete --force`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    Retain,
    Delete,
}

/// The CustomResourceDefinitions as one multi-document YAML stream (what `deploy/crds/`
/// holds and `etcdguard operator crds` prints).
pub fn crds_yaml() -> String {
    let crds = [EtcdBackup::crd(), EtcdBackupSchedule::crd(), EtcdBackupRecord::crd()];
    let mut out = String::from(
        "# Generated by `etcdguard operator crds` from crates/operator/src/crd.rs: do not edit.\n",
    );
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd).expect("a CRD serializes"));
    }
    out
}
