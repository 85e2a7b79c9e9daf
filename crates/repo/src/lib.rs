//! The backup repository of `etcdguard backup …`.
//!
//! A repository is a set of objects in a [`store::Store`] (a local directory or an S3, GCS or
//! Azure bucket), laid out as `docs/formats/repository.md` describes: a `config`, content-
//! addressed `packs/` of zstd-compressed chunks, `index/` files saying which pack holds which
//! chunk, one `backups/<id>.json` manifest per backup, and `locks/`. Snapshots are cut into
//! fixed-size chunks aligned to the bbolt page size, so a snapshot taken after a little churn
//! shares almost all its chunks with the previous one and only the changed ones are stored.
//!
//! Discipline (after restic): every object except locks and verification records is written
//! once under a name derived from its content or a fresh random id; writes are atomic; a
//! backup's manifest is written only after all its packs and their index; only `prune`
//! deletes data, under an exclusive lock no `create` can hold at the same time.
//!
//! ## How it works
//!
//! What `backup …` reads and writes (`docs/formats/repository.md`). `store` is a small
//! synchronous interface over a local directory (our own backend: every object written 0600 to
//! a temp name, fsynced, renamed, directory fsynced) or an S3/GCS/Azure bucket through the
//! `object_store` crate on a private two-thread tokio runtime (retries with backoff, multipart
//! above 16 MiB, presigned URLs); errors are sorted into not found / bucket missing / access
//! denied / unreachable so the CLI can give each its exit code. `pack` is the binary format:
//! blobs named by the sha256 of their content, zstd-encoded, grouped into packs that carry
//! their header at the end, and index files rebuildable from those headers (an index keeps
//! every pack's full entry list, so a blob stored twice survives the loss of one copy).
//! `repository` is split along its seams: `repository/mod.rs` opens or creates a repository,
//! unlocks it and reads its config, keys, index files and manifests (sealing and checking them
//! in an encrypted repository), and resolves `latest` (`Repository::latest`: the newest good
//! manifest, refused when a damaged one was written at or after it by the storage's clock);
//! `writer.rs` (`begin_backup`, `BackupWriter`, `Uploader`) cuts a snapshot into fixed chunks
//! that are a multiple of its bbolt page size (so unchanged pages deduplicate across backups),
//! stores only chunks the index knows in a stored pack, uploads `--parallel` packs at a time
//! (default: the cores, 2–8), and writes pack → index → manifest in that order so a backup is
//! listed only when complete; `reader.rs` reassembles parts with ranged reads, checking the
//! whole file's sha256 (which covers every chunk; when it fails, a second pass checks each
//! chunk's hash to name the damaged pack), restores control-plane files through `beneath`
//! (openat walk, never through a symlink, keys 0600), and exports; `prune.rs` holds `delete`,
//! `prune` (the only deleter of packs, under an exclusive lock, in the crash-safe order written
//! down in `docs/formats/repository.md`), `rebuild_index` and the pack and framing checks
//! `verify` uses (and removes the segments of the full backups it removes). `damage.rs` keeps
//! the damage records (`damaged/<pack>.json`) every check writes when it finds a blob that does
//! not match its id; `load_index` prefers sound copies, `begin_backup` deduplicates against no
//! recorded blob, and `BackupWriter::commit` first reads back every stored pack the backup
//! reuses (`check_reused`) and stores a damaged one's content again from the backup's own input
//! (the snapshot file or spool named with `snapshot_source`, the file's path, the chunk list in
//! memory), or fails. `repair.rs` reads every pack whole, salvages sound blobs of damaged packs
//! into new ones, refills lost blobs from files or another repository, writes one index and
//! then deletes the damaged packs (new packs, index, deletions: the same crash-safe order as
//! prune). `scrub.rs` reads a backup's packs whole for the agent; damage a backup reads around
//! (a sound copy elsewhere) is a note, not a failure. `copy.rs` copies a backup into another
//! repository: each part is reassembled from the source (sha256 checked) through a bounded pipe
//! into a `BackupWriter` of the destination (cut at the part's own chunk size, deduplicated and
//! sealed under the destination's key), and the manifest keeps the backup's id and times
//! (`commit_copy`); segments and gap records follow. `kms.rs` (crate root) is the
//! key-management seam: `KeyWrapper` (wrap/unwrap the master key) and `AwsKms` (AWS KMS's JSON
//! API, SigV4 signed by hand over `ureq`); `repository/kms_keys.rs` writes and opens key files
//! it wraps. `pipeline.rs` is the parallel part of both directions (`Transfer`: `--parallel`,
//! `--limit-rate`, a progress hook). Restore: a part's chunks are grouped into runs (neighbours
//! in one pack, ≤ 16 MiB stored and 8 MiB raw, one range read each); N worker threads fetch and
//! decode runs (decrypt, zstd) while the caller's thread writes each run in one `writev` and
//! hashes the whole part (a snapshot's trailer is checked from the same pass: the hasher is
//! cloned where the trailer starts); a worker never runs more than N + 2 runs ahead of the
//! writer, so a restore holds ~ (N + 2) × 8 MiB whatever the snapshot's size, and the first
//! error (a damaged pack, a failed write) stops the workers. `backup restore`, `backup verify`,
//! `node restore --backup`, drills and `inspect --repo` all go through it (`read_part_to`). A
//! reassembly into a file hands its pages to the disk every 32 MiB (`sync_file_range`, not
//! waiting), so the final fsync finds little left; `backup restore` reassembles into a private
//! scratch file next to the data dir (`restore_snapshot_to_scratch`, no fsync of its own) that
//! `storage::restore::restore_consuming` moves in as the db, with `source_verified` (the bytes
//! equal a verified backup's, so the source is not walked or hashed again): the db is committed
//! unsynced, then fsynced while the self-check walks it, and put in place after both. Create:
//! the caller's thread reads 1 MiB batches (through the `--limit-rate` token bucket) and hashes
//! the whole input; N workers hash and compress the chunks (skipping what the index holds); the
//! caller packs them in input order, so packs and chunk lists do not depend on thread timing.
//! `segment` is continuous capture's object: the changes of a contiguous revision range
//! (`segments/<full>/<first>-<last>`), self-checking like a pack's blob and sealed in an
//! encrypted repository; `chain` proves which segments cover a range or names the first gap.
//! `lock` is the lock protocol (write mine, then list; staleness by the storage's last-modified
//! times plus a capped lifetime, refreshed by a thread, not PIDs or times another host wrote;
//! `unlock` clears stale locks and leftovers). `retention` is the policy engine
//! (keep-last/hourly/daily/weekly/monthly/yearly/within), pure and unit-tested. `crypto` is the
//! optional encryption (XChaCha20-Poly1305 per blob, HMAC-SHA256 blob ids, an Argon2id-wrapped
//! master key per passphrase in `keys/`, sealed manifests and MACed index files);
//! `pack::encode_blob`/`decode_blob` are the only places blobs are sealed and opened, and
//! `Repository::keys()` the one gate that refuses content operations on a locked encrypted
//! repository. `export_snapshot` streams a backup's snapshot into one object
//! (`Store::put_streaming`: multipart, or temp file + rename) for `backup url`. The crate does
//! not know etcd: `crates/workflow` checks the snapshot with `crates/storage` first and passes
//! the page size and status in.

mod beneath;
pub mod crypto;
pub mod host;
pub mod id;
pub mod kms;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod repository;
pub mod retention;
pub mod segment;
pub mod store;

pub use manifest::Manifest;
pub use repository::{
    BackupMeta, BackupWriter, InitOptions, PruneReport, Repository, UnhashedPart,
};
pub use store::{open_url, Store, StoreError};

/// What can go wrong with a repository, by what the user does about it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0}: no etcdguard repository here (create one with `etcdguard backup create --repo …`)"
    )]
    NotARepository(String),
    #[error("unsupported repository: {0}")]
    Unsupported(String),
    #[error("no backup {0:?} in the repository (see `etcdguard backup list`)")]
    BackupNotFound(String),
    #[error("{prefix:?} matches several backups: {}", .matches.join(", "))]
    AmbiguousId { prefix: String, matches: Vec<String> },
    #[error("repository damaged: {0}")]
    Damaged(String),
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    Locked(String),
    #[error(
        "{0} is encrypted: give its passphrase in ETCDGUARD_PASSPHRASE or with --passphrase-file"
    )]
    KeyRequired(String),
    #[error("{0}: wrong passphrase (it opens none of the repository's keys)")]
    WrongPassphrase(String),
    #[error("{0}: already exists; nothing was overwritten")]
    DestinationExists(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    /// Prefixes the message with what was being done, keeping the kind.
    pub fn context(self, what: &str) -> RepoError {
        match self {
            RepoError::Damaged(m) => RepoError::Damaged(format!("{what}: {m}")),
            RepoError::ChecksumMismatch(m) => RepoError::ChecksumMismatch(format!("{what}: {m}")),
            RepoError::Io(m) => RepoError::Io(format!("{what}: {m}")),
            other => other,
        }
    }
}
