//! The JSON documents of a repository: `config` and `backups/<id>.json`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::Id;

pub const FORMAT_NAME: &str = "etcdguard-repository";
/// Format of unencrypted repositories and their manifests (and of encrypted repositories
/// made before manifests were sealed).
pub const FORMAT_VERSION: u32 = 1;
/// Format of encrypted repositories whose manifests are sealed and index files authenticated.
pub const SEALED_FORMAT_VERSION: u32 = 2;
/// What the public part of a sealed manifest says in place of a sealed value.
pub const SEALED_PLACEHOLDER: &str = "(encrypted)";

/// `config`: written once when the repository is created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub format: String,
    pub version: u32,
    /// Random id of this repository.
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunking: Chunking,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u64,
    /// zstd level used for new blobs.
    pub compression_level: i32,
    /// `none` (encryption of blobs is not implemented yet; the field is here so a later
    /// version can refuse to write plaintext into an encrypted repository).
    pub encryption: String,
}

/// How snapshots and files are cut into chunks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chunking {
    /// `fixed-page-multiple`: snapshots are cut at fixed offsets every `chunk_size` bytes, a
    /// multiple of the bbolt page size (a database with larger pages uses the next multiple
    /// of its page size; the manifest records the size used).
    pub kind: String,
    pub chunk_size: u32,
    /// Chunk ids per list blob.
    pub list_fanout: u32,
}

/// `backups/<id>.json`: one backup. Written last, after every blob it names is in a pack
/// and every such pack is in an index file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub tool_version: String,
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Cluster name (flag or label) or id, when known.
    #[serde(default)]
    pub cluster: Option<String>,
    pub source: Source,
    pub etcd: EtcdInfo,
    pub snapshot: Part,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// How every blob of this backup is encoded (per blob in the pack header).
    pub encoding: PartEncoding,
    pub sizes: Sizes,
    /// The certificates found under `--pki-dir` when the backup was taken (absent in
    /// manifests written before this field existed, or without `--pki-dir`). Sealed with the
    /// file list in an encrypted repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateRecord>,
    /// Format 2 (encrypted repositories), as stored: the whole manifest sealed under the
    /// master key (hex). Present only while the manifest was read without the key: then
    /// `files` is empty and the snapshot's sha256 and the source path are
    /// [`SEALED_PLACEHOLDER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl Manifest {
    /// Whether the file list, hashes and source are sealed (read without the passphrase).
    pub fn contents_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// What a sealed manifest shows in clear: everything `backup list`/`show` need without
    /// the passphrase, nothing that reveals content.
    pub fn public_part(&self) -> Manifest {
        let mut m = self.clone();
        m.source = match &m.source {
            Source::File { import, .. } => {
                Source::File { path: SEALED_PLACEHOLDER.into(), import: import.clone() }
            }
            Source::Cluster { .. } => Source::Cluster { endpoint: SEALED_PLACEHOLDER.into() },
        };
        m.snapshot.sha256 = SEALED_PLACEHOLDER.into();
        m.files = Vec::new();
        m.certificates = Vec::new();
        m.sealed = None;
        m
    }
}

/// One certificate of the PKI directory, as recorded in a manifest: enough to tell which
/// certificate expires when, nothing secret. Fields may be added, never renamed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Relative to the PKI directory, `/`-separated; `path#N` for the N-th certificate of a
    /// bundle (counting from 0).
    pub path: String,
    /// As `openssl x509 -subject` prints it, e.g. `CN=etcd-ca`.
    pub subject: String,
    pub not_after: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Upper-case hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    #[serde(default)]
    pub is_ca: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    File {
        path: String,
        /// Set when `backup import` brought in a backup another tool made (readers that do
        /// not know the field see a file backup).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        import: Option<Import>,
    },
    Cluster {
        endpoint: String,
    },
}

/// Where an imported backup came from: the tool's format, and when it was imported (the
/// manifest's `created` is the original backup's time). Not secret: kept in clear in a
/// sealed manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Import {
    /// `openshift` (cluster-backup.sh), `etcdctl` (a plain `snapshot save` file), `k3s`,
    /// `rke2` (their etcd-snapshot files, plain or zipped), `etcd-druid` (a full snapshot of
    /// gardener's etcd-backup-restore).
    pub format: String,
    pub imported: DateTime<Utc>,
}

/// What the snapshot says about itself (as `snapshot status` and `snapshot verify` see it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct EtcdInfo {
    pub cluster_id: Option<String>,
    pub member_id: Option<String>,
    pub member_name: Option<String>,
    pub version: Option<String>,
    pub revision: i64,
    pub compacted_revision: Option<i64>,
    pub hash: u32,
    pub total_key: u64,
    pub total_size: u64,
    pub page_size: u32,
    pub consistent_index: Option<u64>,
    pub term: Option<u64>,
    /// sha256 trailer: `verified`, `absent` (a plain db file).
    pub trailer: String,
    /// The snapshot passed `snapshot verify` (structure and schema) before it was stored.
    pub verified: bool,
}

/// Content cut into chunks: the snapshot, or one file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    pub size: u64,
    pub sha256: String,
    pub chunk_size: u32,
    pub chunks: u64,
    /// List blobs: each holds up to `list_fanout` 32-byte chunk ids in order.
    pub chunk_lists: Vec<Id>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

/// One control-plane file or directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Where it goes under `--files-to`: `<group>/<relative path>` (e.g. `pki/ca.key`).
    pub path: String,
    /// Where it was taken from.
    pub source: String,
    pub kind: FileKind,
    /// Permission bits (e.g. 0o600).
    pub mode: u32,
    #[serde(default)]
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Part>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartEncoding {
    pub compression: String,
    pub encryption: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Sizes {
    /// Snapshot plus files, as they were.
    pub original: u64,
    /// Stored bytes of blobs this backup added (what it cost).
    pub added: u64,
    /// Blobs this backup added / referenced.
    pub blobs_added: u64,
    pub blobs_total: u64,
}
