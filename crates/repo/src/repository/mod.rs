//! A repository: open or create it, unlock it, read its config, keys, index and manifests.
//! Writing a backup is in `writer`, reading one back in `reader`, deleting and pruning (and
//! index maintenance) in `prune`.

mod copy;
mod damage;
mod kms_keys;
mod pipeline;
mod prune;
mod reader;
mod repair;
mod scrub;
#[cfg(test)]
pub(crate) mod test_support;
mod writer;

pub use copy::CopyOutcome;
pub use damage::{Damage, DamageRecord, PackCheck};
pub use pipeline::{parse_rate, Notes, Progress, Transfer};
pub use prune::{part_blob_ids, stored_bytes, PruneReport};
pub use repair::{RepairReport, RepairSource, UnrestorableBackup};
pub use writer::{BackupMeta, BackupWriter, UnhashedPart};

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::crypto::{self, KdfParams, KeyFile, Keys, Passphrase};
use crate::host::hostname;
use crate::id::Id;
use crate::manifest::*;
use crate::pack::Index;
use crate::store::{Store, StoreError, TEMPORARY_FILE_MAX_AGE};
use crate::RepoError;

/// Default chunk size for new repositories: four 4 KiB bbolt pages. See
/// `docs/formats/repository.md` for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;
pub const DEFAULT_PACK_SIZE: u64 = 8 << 20;
pub const DEFAULT_LIST_FANOUT: u32 = 1024;
const COMPRESSION_LEVEL: i32 = 1;
/// Packs uploading or queued at once (each is at most a pack size plus one blob).
const UPLOADS_IN_FLIGHT: usize = 2;
/// A range read covers at most this many bytes of one pack.
const MAX_READ_SPAN: u64 = 16 << 20;
/// What only `create`/`prune` write: under prune's exclusive lock, their temporaries of
/// any age are a dead writer's.
const DATA_PREFIXES: [&str; 3] = ["packs/", "index/", "backups/"];

/// Options for a new repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub pack_size: u64,
    /// Encrypt the new repository under this passphrase.
    pub passphrase: Option<Passphrase>,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            pack_size: DEFAULT_PACK_SIZE,
            passphrase: None,
            kdf: KdfParams::default(),
        }
    }
}

pub struct Repository {
    store: Arc<dyn Store>,
    config: Config,
    /// The master key, once an encrypted repository is unlocked.
    keys: Option<Keys>,
    /// Which `keys/<id>.json` the passphrase opened.
    unlocked_by: Option<String>,
    /// Parallelism, rate limit and progress of backups and restores.
    transfer: Transfer,
}

/// One key of an encrypted repository: the master key wrapped under one passphrase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: DateTime<Utc>,
    pub hostname: String,
    /// Opened by the passphrase this repository was unlocked with.
    pub current: bool,
    /// The key management service key that wraps it; `None` for a passphrase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
}

fn key_object(id: &str) -> String {
    format!("keys/{id}.json")
}

fn key_id_of(object: &str) -> Option<String> {
    object.strip_prefix("keys/")?.strip_suffix(".json").map(str::to_string)
}

/// Before an init: key files without a config were left by an init that was interrupted (the
/// config is written last), so no data is sealed under them; kept, the same passphrase would
/// also open their master key, and unlock could pick it instead of the one the data uses.
/// With data beside them the config was lost some other way: refuse, so those keys survive.
fn remove_keys_of_an_interrupted_init(store: &dyn Store) -> Result<(), RepoError> {
    let leftovers = store.list("keys/")?;
    if leftovers.is_empty() {
        return Ok(());
    }
    for prefix in ["backups/", "index/", "packs/"] {
        if !store.list(prefix)?.is_empty() {
            return Err(RepoError::Damaged(format!(
                "{} holds keys/ and {prefix} but no config file: the config was lost; restore it from a copy \
                 of the repository (a new repository here would leave that data unreadable)",
                store.location()
            )));
        }
    }
    for obj in leftovers {
        store.delete(&obj.key)?;
    }
    Ok(())
}

pub fn pack_key(id: &Id) -> String {
    let h = id.hex();
    format!("packs/{}/{h}", &h[..2])
}

/// Magic of an authenticated index file (format 2); format 1 starts with `EGINDX01`.
const INDEX_MAGIC_SEALED: &[u8; 8] = b"EGINDX02";

/// What a sealed manifest is bound to: its purpose and its backup id (a manifest copied
/// under another id does not open).
fn manifest_aad(id: &str) -> Vec<u8> {
    let mut aad = crypto::MANIFEST_CONTEXT.to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}.json")
}

fn verified_key(id: &str) -> String {
    format!("verified/{id}.json")
}

fn drilled_key(id: &str) -> String {
    format!("drilled/{id}.json")
}

/// Where `backup url` puts a backup's snapshot reassembled as one plain object.
pub fn export_key(id: &str) -> String {
    format!("exports/{id}/snapshot.db")
}

impl Repository {
    /// Opens an existing repository.
    pub fn open(store: Arc<dyn Store>) -> Result<Repository, RepoError> {
        let bytes = match store.get("config") {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => {
                // A missing bucket or wrong credentials say so; a missing local directory is
                // just "no repository here" (create makes it).
                match store.check_reachable() {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                return Err(RepoError::NotARepository(store.location()));
            }
            Err(e) => return Err(e.into()),
        };
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| {
            RepoError::Damaged(format!("{}/config: not a repository config: {e}", store.location()))
        })?;
        if config.format != FORMAT_NAME {
            return Err(RepoError::NotARepository(store.location()));
        }
        if config.version != FORMAT_VERSION && config.version != SEALED_FORMAT_VERSION {
            return Err(RepoError::Unsupported(format!(
                "repository format version {} (this etcdguard reads versions {FORMAT_VERSION} and {SEALED_FORMAT_VERSION}); upgrade etcdguard",
                config.version
            )));
        }
        if config.encryption != crypto::NONE && config.encryption != crypto::SCHEME {
            return Err(RepoError::Unsupported(format!(
                "encryption {:?}; upgrade etcdguard",
                config.encryption
            )));
        }
        let c = &config.chunking;
        if c.kind != "fixed-page-multiple"
            || c.chunk_size < 512
            || c.chunk_size & 511 != 0
            || c.chunk_size > (16 << 20)
            || c.list_fanout == 0
            || c.list_fanout > (1 << 20)
        {
            return Err(RepoError::Damaged(format!(
                "{}/config: unsupported chunking {c:?}",
                store.location()
            )));
        }
        // The config is not authenticated: one that says "not encrypted" beside key files
        // was edited (to make a passphrase-holder read planted plain data).
        if config.encryption == crypto::NONE && !store.list("keys/")?.is_empty() {
            return Err(RepoError::Damaged(format!(
                "{}/config says the repository is not encrypted, but it holds keys/: the config was modified",
                store.location()
            )));
        }
        Ok(Repository {
            store,
            config,
            keys: None,
            unlocked_by: None,
            transfer: Transfer::default(),
        })
    }

    /// Creates a repository (the location must hold none yet).
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<Repository, RepoError> {
        if opts.chunk_size < 512 || opts.chunk_size & 511 != 0 || opts.chunk_size > (16 << 20) {
            return Err(RepoError::Invalid(format!(
                "chunk size {} is not a multiple of 512 up to 16 MiB",
                opts.chunk_size
            )));
        }
        match store.get("config") {
            Ok(_) => {
                return Err(RepoError::Invalid(format!(
                    "{} already holds a repository",
                    store.location()
                )))
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let config = Config {
            format: FORMAT_NAME.into(),
            version: if opts.passphrase.is_some() { SEALED_FORMAT_VERSION } else { FORMAT_VERSION },
            id: format!("{:032x}", rand::random::<u128>()),
            created: Utc::now(),
            chunking: Chunking {
                kind: "fixed-page-multiple".into(),
                chunk_size: opts.chunk_size,
                list_fanout: DEFAULT_LIST_FANOUT,
            },
            pack_size: opts.pack_size,
            compression_level: COMPRESSION_LEVEL,
            encryption: if opts.passphrase.is_some() { crypto::SCHEME } else { crypto::NONE }
                .into(),
        };
        remove_keys_of_an_interrupted_init(&*store)?;
        let mut keys = None;
        if let Some(passphrase) = &opts.passphrase {
            let k = Keys::generate();
            let file = KeyFile::wrap(&k, passphrase.bytes(), opts.kdf, hostname())
                .map_err(|e| RepoError::Invalid(e.to_string()))?;
            let id = format!("{:016x}", rand::random::<u64>());
            store.put(
                &key_object(&id),
                Bytes::from(serde_json::to_vec_pretty(&file).expect("key file serializes")),
            )?;
            keys = Some((k, id));
        }
        // The config last: a location is a repository only once its key is stored.
        store.put(
            "config",
            Bytes::from(serde_json::to_vec_pretty(&config).expect("config serializes")),
        )?;
        let (keys, unlocked_by) = keys.map_or((None, None), |(k, id)| (Some(k), Some(id)));
        Ok(Repository { store, config, keys, unlocked_by, transfer: Transfer::default() })
    }

    pub fn is_encrypted(&self) -> bool {
        self.config.encryption != crypto::NONE
    }

    /// Unwraps the master key of an encrypted repository with `passphrase` (no-op for a
    /// plain one).
    pub fn unlock(&mut self, passphrase: &Passphrase) -> Result<(), RepoError> {
        if !self.is_encrypted() || self.keys.is_some() {
            return Ok(());
        }
        let key_files = self.store.list("keys/")?;
        if key_files.is_empty() {
            return Err(RepoError::Damaged(format!(
                "{} is encrypted but holds no keys/ (the key was lost)",
                self.location()
            )));
        }
        let mut problems = Vec::new();
        let key_count = key_files.len();
        for obj in key_files {
            let bytes = self.store.get(&obj.key)?;
            let file: KeyFile = match serde_json::from_slice(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!("{}: {e}", obj.key));
                    continue;
                }
            };
            match file.unwrap(passphrase.bytes()) {
                Ok(k) => {
                    self.keys = Some(k);
                    self.unlocked_by = key_id_of(&obj.key);
                    return Ok(());
                }
                Err(crypto::KeyError::WrongPassphrase) => {}
                Err(e) => problems.push(format!("{}: {e}", obj.key)),
            }
        }
        if problems.len() == key_count {
            // No key file could even be tried: that is damage, not a wrong passphrase.
            return Err(RepoError::Damaged(format!(
                "{}: no key file is readable ({})",
                self.location(),
                problems.join("; ")
            )));
        }
        let extra =
            if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) };
        Err(RepoError::WrongPassphrase(format!("{}{extra}", self.location())))
    }

    /// The keys of an encrypted repository, oldest first (needs no passphrase).
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, RepoError> {
        self.require_encrypted()?;
        let mut out = Vec::new();
        for obj in self.store.list("keys/")? {
            let Some(id) = key_id_of(&obj.key) else { continue };
            let file: KeyFile = serde_json::from_slice(&self.store.get(&obj.key)?)
                .map_err(|e| RepoError::Damaged(format!("{}/{}: {e}", self.location(), obj.key)))?;
            let current = self.unlocked_by.as_deref() == Some(id.as_str());
            out.push(KeyInfo {
                id,
                created: file.created,
                hostname: file.hostname,
                current,
                kms: file.kms,
            });
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Wraps the master key under one more passphrase; the others keep working. Needs the
    /// repository unlocked. Returns the new key's id.
    pub fn add_key(&self, passphrase: &Passphrase, kdf: KdfParams) -> Result<String, RepoError> {
        self.require_encrypted()?;
        let keys = self.keys()?.expect("an encrypted repository's keys");
        let file = KeyFile::wrap(keys, passphrase.bytes(), kdf, hostname())
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        // Proves the new file opens before anyone relies on it.
        file.unwrap(passphrase.bytes())
            .map_err(|e| RepoError::Invalid(format!("the new key does not open: {e}")))?;
        let id = format!("{:016x}", rand::random::<u64>());
        self.store.put(
            &key_object(&id),
            Bytes::from(serde_json::to_vec_pretty(&file).expect("key file serializes")),
        )?;
        Ok(id)
    }

    /// Removes a key. Refuses the key the repository was unlocked with and the last key, so
    /// a mistake cannot lock everyone out. Needs the repository unlocked.
    pub fn remove_key(&self, id: &str) -> Result<(), RepoError> {
        self.require_encrypted()?;
        self.keys()?;
        let all = self.list_keys()?;
        let Some(key) = all.iter().find(|k| k.id == id) else {
            let known: Vec<&str> = all.iter().map(|k| k.id.as_str()).collect();
            return Err(RepoError::Invalid(format!(
                "{} has no key {id:?} (keys: {})",
                self.location(),
                known.join(", ")
            )));
        };
        if key.current {
            return Err(RepoError::Invalid(format!(
                "key {id} is the one the passphrase given opens; remove it with another passphrase (or use `backup key passwd`)"
            )));
        }
        if all.len() == 1 {
            return Err(RepoError::Invalid(format!(
                "key {id} is the last key of {}",
                self.location()
            )));
        }
        self.store.delete(&key_object(id))?;
        Ok(())
    }

    /// The id of the key the repository was unlocked with.
    pub fn current_key(&self) -> Option<&str> {
        self.unlocked_by.as_deref()
    }

    fn require_encrypted(&self) -> Result<(), RepoError> {
        if self.is_encrypted() {
            Ok(())
        } else {
            Err(RepoError::Invalid(format!("{} is not encrypted: it has no keys", self.location())))
        }
    }

    /// How backups and restores move data from now on (`--parallel`, `--limit-rate`, progress).
    pub fn set_transfer(&mut self, transfer: Transfer) {
        self.transfer = transfer;
    }

    /// Lines left for the caller by what ran so far (see [`Transfer::notes`]).
    pub fn take_notes(&self) -> Vec<String> {
        self.transfer.notes.drain()
    }

    /// The master key when the repository is encrypted; an error when it is and the
    /// repository was not unlocked.
    pub(crate) fn keys(&self) -> Result<Option<&Keys>, RepoError> {
        match (&self.keys, self.is_encrypted()) {
            (Some(k), _) => Ok(Some(k)),
            (None, false) => Ok(None),
            (None, true) => Err(RepoError::KeyRequired(self.location())),
        }
    }

    /// Opens the repository, creating it first when the location holds none.
    pub fn open_or_init(
        store: Arc<dyn Store>,
        opts: &InitOptions,
    ) -> Result<(Repository, bool), RepoError> {
        match Repository::open(store.clone()) {
            Ok(r) => Ok((r, false)),
            Err(RepoError::NotARepository(_)) => Ok((Repository::init(store, opts)?, true)),
            Err(e) => Err(e),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Reads and merges every index file; a blob with a damage record in one pack is found
    /// in another copy where there is one (`damaged/`).
    pub fn load_index(&self) -> Result<Index, RepoError> {
        let mut index = self.load_index_files()?.1;
        self.damage()?.prefer_good_copies(&mut index);
        Ok(index)
    }

    fn load_index_files(&self) -> Result<(Vec<String>, Index), RepoError> {
        let mut index = Index::new();
        let mut keys = Vec::new();
        for obj in self.store.list("index/")? {
            let bytes = match self.store.get(&obj.key) {
                Ok(b) => b,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let name = obj.key.rsplit('/').next().unwrap_or_default();
            if Id::parse(name) != Some(Id::of(&bytes)) {
                return Err(RepoError::Damaged(format!(
                    "{}: content does not match its name (damaged)",
                    obj.key
                )));
            }
            let part = self.decode_index(&obj.key, &bytes)?;
            index.merge(&part);
            keys.push(obj.key);
        }
        Ok((keys, index))
    }

    /// Whether the config says manifests and index files are sealed (format 2; checked
    /// against the key, which cannot be edited, once the repository is unlocked).
    fn seals_metadata(&self) -> bool {
        self.is_encrypted() && self.config.version >= SEALED_FORMAT_VERSION
    }

    /// Whether the manifests read are checked against the key: an encrypted repository of
    /// format 2, unlocked. Otherwise their clear fields (time, labels, cluster, status) are
    /// whatever the stored file says: anyone who can write to the storage can change them.
    pub fn authenticates_manifests(&self) -> bool {
        self.metadata_keys().is_some()
    }

    /// The keys when manifests and index files are sealed/authenticated under them.
    fn metadata_keys(&self) -> Option<&Keys> {
        self.keys.as_ref().filter(|k| k.authenticates_metadata())
    }

    /// An index file as stored: in format 2, `EGINDX02`, the entries, then an HMAC of all
    /// that under the master key.
    fn encode_index(&self, index: &Index) -> Vec<u8> {
        let mut data = index.encode();
        if let Some(keys) = self.metadata_keys() {
            data[..8].copy_from_slice(INDEX_MAGIC_SEALED);
            let tag = keys.mac(crypto::INDEX_CONTEXT, &data);
            data.extend_from_slice(&tag);
        }
        data
    }

    fn decode_index(&self, key: &str, bytes: &[u8]) -> Result<Index, RepoError> {
        let damaged = |m: &str| RepoError::Damaged(format!("{key}: {m}"));
        let mut body;
        if bytes.starts_with(INDEX_MAGIC_SEALED) {
            if bytes.len() < 8 + 32 {
                return Err(damaged("truncated index (no MAC)"));
            }
            let (data, tag) = bytes.split_at(bytes.len() - 32);
            // Without the key (list/show) it cannot be checked; every content operation has it.
            if let Some(keys) = &self.keys {
                if !keys.verify_mac(crypto::INDEX_CONTEXT, data, tag) {
                    return Err(damaged(
                        "the index was modified (its MAC does not match the repository key)",
                    ));
                }
            }
            body = data.to_vec();
            body[..8].copy_from_slice(crate::pack::INDEX_MAGIC);
        } else {
            if self.metadata_keys().is_some() || self.seals_metadata() {
                return Err(damaged("index file without a MAC in a repository whose index files all have one: it was planted or modified"));
            }
            body = bytes.to_vec();
        }
        Index::decode(&body).map_err(|e| damaged(&e.to_string()))
    }

    /// Every backup, oldest first. Manifests that cannot be read are returned as errors
    /// beside the good ones, so one damaged manifest does not hide the rest.
    pub fn list_backups(&self) -> Result<(Vec<Manifest>, Vec<String>), RepoError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for obj in self.store.list("backups/")? {
            let Some(id) = obj.key.strip_prefix("backups/").and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            match self.manifest(id) {
                Ok(m) => out.push(m),
                Err(RepoError::BackupNotFound(_)) => {}
                Err(e) => bad.push(format!("{id}: {e}")),
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok((out, bad))
    }

    pub fn manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        let bytes = match self.store.get(&manifest_key(id)) {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => return Err(RepoError::BackupNotFound(id.to_string())),
            Err(e) => return Err(e.into()),
        };
        let mut m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            RepoError::Damaged(format!("backups/{id}.json: not a backup manifest: {e}"))
        })?;
        if m.id != id {
            return Err(RepoError::Damaged(format!("backups/{id}.json names itself {:?}", m.id)));
        }
        let modified = |why: &str| {
            RepoError::Damaged(format!(
                "backups/{id}.json: the manifest was modified ({why}); do not restore from it, and check who can write to the repository"
            ))
        };
        match (self.metadata_keys(), m.sealed.take()) {
            (Some(keys), Some(sealed)) => {
                let sealed =
                    crypto::unhex(&sealed).ok_or_else(|| modified("its sealed part is not hex"))?;
                let plain = keys.open_document(&manifest_aad(id), &sealed).ok_or_else(|| {
                    modified(
                        "its sealed part does not open under the repository key for this backup id",
                    )
                })?;
                let full: Manifest = serde_json::from_slice(&plain)
                    .map_err(|e| modified(&format!("sealed part: {e}")))?;
                if full.id != id || full.public_part() != m {
                    return Err(modified("its public part differs from the sealed one"));
                }
                return Ok(full);
            }
            (Some(_), None) => {
                return Err(modified("it is not sealed, but every manifest of this repository is"))
            }
            (None, None) if self.seals_metadata() => {
                return Err(modified("it is not sealed, but every manifest of this repository is"))
            }
            (None, sealed) => m.sealed = sealed,
        }
        Ok(m)
    }

    /// The newest backup, which `latest` names. The newest readable manifest by its
    /// `created` time, unless a manifest that fails its checks was written (by the
    /// storage's clock, as listed) at or after it: that one may be the newest backup,
    /// truncated or tampered with, so `latest` refuses (`Damaged`, naming it and the newest
    /// good backup) rather than quietly meaning an older backup.
    pub fn latest(&self) -> Result<Manifest, RepoError> {
        let mut good: Vec<(Manifest, i64)> = Vec::new();
        let mut bad: Vec<(String, i64, RepoError)> = Vec::new();
        for obj in self.store.list("backups/")? {
            let Some(id) = obj.key.strip_prefix("backups/").and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            match self.manifest(id) {
                Ok(m) => good.push((m, obj.modified)),
                Err(RepoError::BackupNotFound(_)) => {}
                Err(e @ RepoError::Damaged(_)) => bad.push((id.to_string(), obj.modified, e)),
                Err(e) => return Err(e),
            }
        }
        let newest = good
            .into_iter()
            .max_by(|(a, _), (b, _)| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        let newest_written = newest.as_ref().map_or(i64::MIN, |(_, t)| *t);
        let damaged = bad
            .into_iter()
            .filter(|(_, t, _)| *t >= newest_written)
            .max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        match (damaged, newest) {
            (None, Some((m, _))) => Ok(m),
            (None, None) => {
                Err(RepoError::BackupNotFound("latest (the repository has no backups)".into()))
            }
            (Some((id, written, e)), good) => {
                let when = DateTime::from_timestamp(written, 0)
                    .map(|t| format!(", written {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default();
                let instead = match good {
                    Some((m, _)) => format!(
                        "the newest good backup is {} (created {}); give its id to use it",
                        m.id,
                        m.created.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    None => "no other backup is readable".into(),
                };
                let why = match e {
                    RepoError::Damaged(m) => m,
                    other => other.to_string(),
                };
                Err(RepoError::Damaged(format!(
                    "`latest` is backup {id}{when}, the newest manifest, and it fails its checks ({why}); {instead}"
                )))
            }
        }
    }

    /// Turns what a user typed (a full id, a unique prefix, or `latest`) into an id.
    pub fn resolve(&self, wanted: &str) -> Result<String, RepoError> {
        if wanted == "latest" {
            return self.latest().map(|m| m.id);
        }
        let ids: Vec<String> = self
            .store
            .list("backups/")?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix("backups/")
                    .and_then(|k| k.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect();
        if ids.iter().any(|i| i == wanted) {
            return Ok(wanted.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(wanted)).collect();
        match matches.len() {
            0 => Err(RepoError::BackupNotFound(wanted.to_string())),
            1 if wanted.len() >= 4 => Ok(matches[0].clone()),
            1 => Err(RepoError::Invalid(format!(
                "{wanted:?} is too short to name a backup; give at least 4 characters"
            ))),
            _ => Err(RepoError::AmbiguousId {
                prefix: wanted.to_string(),
                matches: matches.into_iter().cloned().collect(),
            }),
        }
    }

    /// Whether `backup verify` has recorded a successful check of this backup.
    pub fn verification(&self, id: &str) -> Result<Option<DateTime<Utc>>, RepoError> {
        match self.store.get(&verified_key(id)) {
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                Ok(v.get("verified").and_then(|t| t.as_str()).and_then(|t| t.parse().ok()))
            }
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a successful `backup verify`. What it records must mean a restore will work,
    /// so the framing of every pack the backup reads (trailer, header, header covering the
    /// blob area, entries as the index says) is checked first; a damaged one fails
    /// (`Damaged`) and nothing is recorded.
    pub fn record_verification(&self, id: &str) -> Result<(), RepoError> {
        let manifest = self.manifest(id)?;
        let index = self.load_index()?;
        self.check_framing(&index, &manifest)?;
        let v = serde_json::json!({"backup": id, "verified": Utc::now(), "tool_version": env!("CARGO_PKG_VERSION")});
        self.store.put(&verified_key(id), Bytes::from(v.to_string()))?;
        Ok(())
    }

    /// When a restore drill last passed on this backup (restored into a scratch data dir and,
    /// when the drill had an etcd binary, booted and read), if one was recorded.
    pub fn drill_record(&self, id: &str) -> Result<Option<DateTime<Utc>>, RepoError> {
        match self.store.get(&drilled_key(id)) {
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                Ok(v.get("drilled").and_then(|t| t.as_str()).and_then(|t| t.parse().ok()))
            }
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a drill that passed on backup `id` (`booted`: etcd started on the restored
    /// data and answered). Like the verification record, a hint for people and inventories:
    /// nothing trusts it over a check of the bytes.
    pub fn record_drill(&self, id: &str, booted: bool) -> Result<(), RepoError> {
        let v = serde_json::json!({"backup": id, "drilled": Utc::now(), "booted": booted, "tool_version": env!("CARGO_PKG_VERSION")});
        self.store.put(&drilled_key(id), Bytes::from(v.to_string()))?;
        Ok(())
    }
}

trait PrivateDirs {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDirs for fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

/// A relative path without `..`, root or empty components.
fn safe_relative(p: &str) -> Option<&Path> {
    let path = Path::new(p);
    let ok =
        !p.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_support::*;
    use crate::store::LocalDir;
    #[allow(unused_imports)]
    use rand::{Rng, RngCore, SeedableRng};
    use std::collections::BTreeMap;
    use std::io;

    #[test]
    fn encrypted_repository_round_trip_hides_content_and_needs_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.path().to_path_buf()));
        let pass = Passphrase::new(b"s3cret passphrase\n".to_vec());
        let opts = InitOptions {
            chunk_size: 4096,
            pack_size: 64 * 1024,
            passphrase: Some(pass.clone()),
            kdf: cheap_kdf(),
        };
        let r = Repository::init(store.clone(), &opts).unwrap();
        assert!(r.is_encrypted());
        // A recognisable secret, as a CA key would be, in a snapshot and in a file.
        let marker = b"-----BEGIN RSA PRIVATE KEY----- MIIEpAIBAAKCAQEA7marker";
        let mut data = db(5);
        data[4096..4096 + marker.len()].copy_from_slice(marker);
        let key_file = dir.path().join("..").join(format!("ca-{}.key", rand::random::<u32>()));
        fs::write(&key_file, marker.repeat(10)).unwrap();
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &data[..], 4096).unwrap();
        w.add_path("pki", &key_file).unwrap();
        let m = w.commit(part, meta()).unwrap();
        fs::remove_file(&key_file).unwrap();
        assert_eq!(m.encoding.encryption, crypto::SCHEME);
        assert_eq!(restore(&r, &m), data);
        let stored = all_stored_bytes(dir.path());
        assert!(!stored.windows(24).any(|w| w == &marker[..24]), "the secret is stored in clear");

        // A second handle: metadata without the passphrase, content only with the right one.
        let mut other = Repository::open(store.clone()).unwrap();
        assert_eq!(other.list_backups().unwrap().0.len(), 1);
        let index = other.load_index().unwrap();
        let err = other.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(matches!(err, RepoError::KeyRequired(_)), "{err}");
        assert!(matches!(other.begin_backup().map(|_| ()).unwrap_err(), RepoError::KeyRequired(_)));
        let err = other.unlock(&Passphrase::new(b"wrong".to_vec())).unwrap_err();
        assert!(matches!(err, RepoError::WrongPassphrase(_)), "{err}");
        other.unlock(&Passphrase::new(b"s3cret passphrase".to_vec())).unwrap();
        assert_eq!(restore(&other, &m), data);
        let mut out = Vec::new();
        other.read_part(&index, m.files[0].content.as_ref().unwrap(), &mut out).unwrap();
        assert_eq!(out, marker.repeat(10));

        // A second backup of the same data dedups under the keyed ids.
        let m2 = backup(&other, &data);
        assert_eq!(m2.sizes.blobs_added, 0);
        // Prune works on sealed blobs (and needs the key).
        other.delete_backup(&m.id).unwrap();
        other.prune(None, false).unwrap();
        assert_eq!(restore(&other, &m2), data);
        assert!(matches!(
            Repository::open(store).unwrap().prune(None, true),
            Err(RepoError::KeyRequired(_))
        ));
    }

    #[test]
    fn encrypted_manifests_are_sealed_and_any_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (r, store) = encrypted_repo(dir.path());
        assert_eq!(r.config().version, SEALED_FORMAT_VERSION);
        let src = dir.path().join("secret-names");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("very-secret-ca.key"), b"key").unwrap();
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &db(41)[..], 4096).unwrap();
        w.add_path_as("pki", &src).unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("env".to_string(), "prod".to_string());
        let m = w.commit(part, BackupMeta { labels, ..meta() }).unwrap();
        assert_eq!(m.files.len(), 2);
        let key = manifest_key(&m.id);
        let stored = String::from_utf8(store.get(&key).unwrap().to_vec()).unwrap();
        for secret in ["very-secret-ca.key", &src.display().to_string(), &m.snapshot.sha256] {
            assert!(!stored.contains(secret), "{secret} is in the manifest in clear");
        }
        // Without the key: the public part, marked as sealed.
        let locked = Repository::open(store.clone()).unwrap();
        let public = locked.manifest(&m.id).unwrap();
        assert!(public.contents_sealed() && public.files.is_empty());
        assert_eq!(
            (public.labels.clone(), public.etcd.clone(), public.snapshot.size),
            (m.labels.clone(), m.etcd.clone(), m.snapshot.size)
        );
        // With the key: the whole manifest, checked.
        assert_eq!(r.manifest(&m.id).unwrap(), m);

        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&stored).unwrap();
            f(&mut v);
            store.put(&key, Bytes::from(serde_json::to_vec(&v).unwrap())).unwrap();
            let err = r.manifest(&m.id).unwrap_err();
            assert!(
                matches!(err, RepoError::Damaged(ref s) if s.contains("was modified")),
                "{err}"
            );
        };
        edit(&|v| v["labels"]["env"] = "dev".into());
        edit(&|v| v["etcd"]["revision"] = 1.into());
        edit(&|v| v["snapshot"]["chunk_lists"] = serde_json::json!([]));
        edit(&|v| {
            let s = v["sealed"].as_str().unwrap().to_string();
            let mut b = s.into_bytes();
            b[100] = if b[100] == b'0' { b'1' } else { b'0' };
            v["sealed"] = String::from_utf8(b).unwrap().into();
        });
        edit(&|v| {
            v.as_object_mut().unwrap().remove("sealed");
        });
        // A manifest written as format 1 (a plain one planted by hand) is refused too.
        edit(&|v| {
            v.as_object_mut().unwrap().remove("sealed");
            v["version"] = 1.into();
            v["files"] = serde_json::json!([{"path": "pki/evil", "source": "x", "kind": "symlink", "mode": 511, "target": "/tmp"}]);
        });
        // A sealed part moved to another backup id does not open.
        let m2 = backup(&r, &db(42));
        let mut v: serde_json::Value = serde_json::from_str(&stored).unwrap();
        let other: serde_json::Value =
            serde_json::from_slice(&store.get(&manifest_key(&m2.id)).unwrap()).unwrap();
        v["sealed"] = other["sealed"].clone();
        store.put(&key, Bytes::from(serde_json::to_vec(&v).unwrap())).unwrap();
        assert!(matches!(r.manifest(&m.id), Err(RepoError::Damaged(_))));
        store.put(&key, Bytes::from(stored.clone())).unwrap();
        assert_eq!(r.manifest(&m.id).unwrap(), m);
    }

    #[test]
    fn latest_never_quietly_means_an_older_backup() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let stamp = |id: &str, secs_ago: u64| {
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
            fs::File::options()
                .write(true)
                .open(dir.path().join(manifest_key(id)))
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        let old = backup(&r, &db(51));
        let new = backup(&r, &db(52));
        stamp(&old.id, 20);
        stamp(&new.id, 10);
        assert_eq!(r.resolve("latest").unwrap(), new.id);
        // The newest manifest truncated: `latest` refuses, naming it and the good one.
        let path = dir.path().join(manifest_key(&new.id));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        stamp(&new.id, 10);
        let err = r.resolve("latest").unwrap_err();
        assert!(
            matches!(err, RepoError::Damaged(ref m) if m.contains(&new.id) && m.contains(&old.id)),
            "{err}"
        );
        assert!(r.latest().is_err());
        // Its id still works for what can be read; the older one by its id.
        assert_eq!(r.resolve(&old.id).unwrap(), old.id);
        // A damaged manifest written before the newest good one does not hide it.
        fs::write(&path, &bytes).unwrap();
        let oldest_path = dir.path().join(manifest_key(&old.id));
        fs::write(&oldest_path, b"{").unwrap();
        stamp(&old.id, 20);
        stamp(&new.id, 10);
        assert_eq!(r.resolve("latest").unwrap(), new.id);
        // Rewritten (tampered) later than the newest: it may be the newest, so refused.
        stamp(&old.id, 0);
        assert!(matches!(r.resolve("latest"), Err(RepoError::Damaged(_))));
    }

    #[test]
    fn encrypted_index_files_are_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let (r, store) = encrypted_repo(dir.path());
        let m = backup(&r, &db(43));
        let index_key = store.list("index/").unwrap()[0].key.clone();
        let bytes = store.get(&index_key).unwrap().to_vec();
        assert_eq!(&bytes[..8], b"EGINDX02");
        assert!(r.load_index().is_ok());
        // An entry changed (and the file renamed to its new sha256, as an attacker would).
        let mut forged = bytes.clone();
        forged[8 + 36 + 2] ^= 1;
        store.delete(&index_key).unwrap();
        store
            .put(&format!("index/{}", Id::of(&forged).hex()), Bytes::from(forged.clone()))
            .unwrap();
        let err = r.load_index().unwrap_err();
        assert!(matches!(err, RepoError::Damaged(ref s) if s.contains("modified")), "{err}");
        // Without its MAC, as a format 1 file.
        store.delete(&format!("index/{}", Id::of(&forged).hex())).unwrap();
        let mut plain = bytes[..bytes.len() - 32].to_vec();
        plain[..8].copy_from_slice(crate::pack::INDEX_MAGIC);
        store.put(&format!("index/{}", Id::of(&plain).hex()), Bytes::from(plain.clone())).unwrap();
        assert!(matches!(r.load_index(), Err(RepoError::Damaged(_))));
        // Without the key the index is read unchecked (metadata only); rebuilt, all is well.
        assert!(
            Repository::open(store.clone()).unwrap().load_index().is_err(),
            "a plain index in a sealed repository"
        );
        store.delete(&format!("index/{}", Id::of(&plain).hex())).unwrap();
        r.rebuild_index().unwrap();
        assert_eq!(restore(&r, &m), db(43));
        // A config edited to say "not encrypted" is refused.
        let mut config: serde_json::Value =
            serde_json::from_slice(&store.get("config").unwrap()).unwrap();
        config["encryption"] = "none".into();
        config["version"] = 1.into();
        store.put("config", Bytes::from(serde_json::to_vec(&config).unwrap())).unwrap();
        assert!(matches!(Repository::open(store), Err(RepoError::Damaged(_))));
    }
}
