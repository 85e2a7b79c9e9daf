//! A repository: open or create it, write a backup, read one back, delete, prune.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::crypto::{self, KdfParams, KeyFile, Keys, Passphrase};
use crate::lock::{hostname, Lock};
use crate::manifest::*;
use crate::pack::{decode_blob, encode_blob, hex, BlobKind, Id, Index, Location, PackBuilder};
use crate::retention::{self, Candidate, Decision, Policy};
use crate::store::{Store, StoreError};
use crate::RepoError;

/// Default chunk size for new repositories: four 4 KiB bbolt pages. See
/// `docs/formats/repository.md` for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;
pub const DEFAULT_PACK_SIZE: u64 = 8 << 20;
pub const DEFAULT_LIST_FANOUT: u32 = 1024;
const COMPRESSION_LEVEL: i32 = 3;
/// Packs uploading or queued at once (each is at most a pack size plus one blob).
const UPLOADS_IN_FLIGHT: usize = 2;
/// A range read covers at most this many bytes of one pack.
const MAX_READ_SPAN: u64 = 16 << 20;

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
        InitOptions { chunk_size: DEFAULT_CHUNK_SIZE, pack_size: DEFAULT_PACK_SIZE, passphrase: None, kdf: KdfParams::default() }
    }
}

pub struct Repository {
    store: Arc<dyn Store>,
    config: Config,
    /// The master key, once an encrypted repository is unlocked.
    keys: Option<Keys>,
    /// Which `keys/<id>.json` the passphrase opened.
    unlocked_by: Option<String>,
}

/// One key of an encrypted repository: the master key wrapped under one passphrase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: DateTime<Utc>,
    pub hostname: String,
    /// Opened by the passphrase this repository was unlocked with.
    pub current: bool,
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

pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}.json")
}

fn verified_key(id: &str) -> String {
    format!("verified/{id}.json")
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
        let config: Config = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Damaged(format!("{}/config: not a repository config: {e}", store.location())))?;
        if config.format != FORMAT_NAME {
            return Err(RepoError::NotARepository(store.location()));
        }
        if config.version != FORMAT_VERSION {
            return Err(RepoError::Unsupported(format!(
                "repository format version {} (this etcdguard reads version {FORMAT_VERSION}); upgrade etcdguard",
                config.version
            )));
        }
        if config.encryption != crypto::NONE && config.encryption != crypto::SCHEME {
            return Err(RepoError::Unsupported(format!("encryption {:?}; upgrade etcdguard", config.encryption)));
        }
        let c = &config.chunking;
        if c.kind != "fixed-page-multiple" || c.chunk_size < 512 || c.chunk_size & 511 != 0 || c.chunk_size > (16 << 20) || c.list_fanout == 0 || c.list_fanout > (1 << 20) {
            return Err(RepoError::Damaged(format!("{}/config: unsupported chunking {c:?}", store.location())));
        }
        Ok(Repository { store, config, keys: None, unlocked_by: None })
    }

    /// Creates a repository (the location must hold none yet).
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<Repository, RepoError> {
        if opts.chunk_size < 512 || opts.chunk_size & 511 != 0 || opts.chunk_size > (16 << 20) {
            return Err(RepoError::Invalid(format!("chunk size {} is not a multiple of 512 up to 16 MiB", opts.chunk_size)));
        }
        match store.get("config") {
            Ok(_) => return Err(RepoError::Invalid(format!("{} already holds a repository", store.location()))),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let config = Config {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: format!("{:032x}", rand::random::<u128>()),
            created: Utc::now(),
            chunking: Chunking {
                kind: "fixed-page-multiple".into(),
                chunk_size: opts.chunk_size,
                list_fanout: DEFAULT_LIST_FANOUT,
            },
            pack_size: opts.pack_size,
            compression_level: COMPRESSION_LEVEL,
            encryption: if opts.passphrase.is_some() { crypto::SCHEME } else { crypto::NONE }.into(),
        };
        remove_keys_of_an_interrupted_init(&*store)?;
        let mut keys = None;
        if let Some(passphrase) = &opts.passphrase {
            let k = Keys::generate();
            let file = KeyFile::wrap(&k, passphrase.bytes(), opts.kdf, hostname()).map_err(|e| RepoError::Invalid(e.to_string()))?;
            let id = format!("{:016x}", rand::random::<u64>());
            store.put(&key_object(&id), Bytes::from(serde_json::to_vec_pretty(&file).expect("key file serializes")))?;
            keys = Some((k, id));
        }
        // The config last: a location is a repository only once its key is stored.
        store.put("config", Bytes::from(serde_json::to_vec_pretty(&config).expect("config serializes")))?;
        let (keys, unlocked_by) = keys.map_or((None, None), |(k, id)| (Some(k), Some(id)));
        Ok(Repository { store, config, keys, unlocked_by })
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
            return Err(RepoError::Damaged(format!("{} is encrypted but holds no keys/ (the key was lost)", self.location())));
        }
        let mut problems = Vec::new();
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
        let extra = if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) };
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
            out.push(KeyInfo { id, created: file.created, hostname: file.hostname, current });
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Wraps the master key under one more passphrase; the others keep working. Needs the
    /// repository unlocked. Returns the new key's id.
    pub fn add_key(&self, passphrase: &Passphrase, kdf: KdfParams) -> Result<String, RepoError> {
        self.require_encrypted()?;
        let keys = self.keys()?.expect("an encrypted repository's keys");
        let file = KeyFile::wrap(keys, passphrase.bytes(), kdf, hostname()).map_err(|e| RepoError::Invalid(e.to_string()))?;
        // Proves the new file opens before anyone relies on it.
        file.unwrap(passphrase.bytes()).map_err(|e| RepoError::Invalid(format!("the new key does not open: {e}")))?;
        let id = format!("{:016x}", rand::random::<u64>());
        self.store.put(&key_object(&id), Bytes::from(serde_json::to_vec_pretty(&file).expect("key file serializes")))?;
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
            return Err(RepoError::Invalid(format!("{} has no key {id:?} (keys: {})", self.location(), known.join(", "))));
        };
        if key.current {
            return Err(RepoError::Invalid(format!(
                "key {id} is the one the passphrase given opens; remove it with another passphrase (or use `backup key passwd`)"
            )));
        }
        if all.len() == 1 {
            return Err(RepoError::Invalid(format!("key {id} is the last key of {}", self.location())));
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
    pub fn open_or_init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<(Repository, bool), RepoError> {
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

    /// Reads and merges every index file.
    pub fn load_index(&self) -> Result<Index, RepoError> {
        Ok(self.load_index_files()?.1)
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
                return Err(RepoError::Damaged(format!("{}: content does not match its name (damaged)", obj.key)));
            }
            let part = Index::decode(&bytes).map_err(|e| RepoError::Damaged(format!("{}: {e}", obj.key)))?;
            index.merge(&part);
            keys.push(obj.key);
        }
        Ok((keys, index))
    }

    /// Every backup, oldest first. Manifests that cannot be read are returned as errors
    /// beside the good ones, so one damaged manifest does not hide the rest.
    pub fn list_backups(&self) -> Result<(Vec<Manifest>, Vec<String>), RepoError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for obj in self.store.list("backups/")? {
            let Some(id) = obj.key.strip_prefix("backups/").and_then(|k| k.strip_suffix(".json")) else { continue };
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
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Damaged(format!("backups/{id}.json: not a backup manifest: {e}")))?;
        if m.id != id {
            return Err(RepoError::Damaged(format!("backups/{id}.json names itself {:?}", m.id)));
        }
        Ok(m)
    }

    /// Turns what a user typed (a full id, a unique prefix, or `latest`) into an id.
    pub fn resolve(&self, wanted: &str) -> Result<String, RepoError> {
        let ids: Vec<String> = self
            .store
            .list("backups/")?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("backups/").and_then(|k| k.strip_suffix(".json")).map(str::to_string))
            .collect();
        if wanted == "latest" {
            let (all, _) = self.list_backups()?;
            return all.last().map(|m| m.id.clone()).ok_or_else(|| RepoError::BackupNotFound("latest (the repository has no backups)".into()));
        }
        if ids.iter().any(|i| i == wanted) {
            return Ok(wanted.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(wanted)).collect();
        match matches.len() {
            0 => Err(RepoError::BackupNotFound(wanted.to_string())),
            1 if wanted.len() >= 4 => Ok(matches[0].clone()),
            1 => Err(RepoError::Invalid(format!("{wanted:?} is too short to name a backup; give at least 4 characters"))),
            _ => Err(RepoError::AmbiguousId { prefix: wanted.to_string(), matches: matches.into_iter().cloned().collect() }),
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

    pub fn record_verification(&self, id: &str) -> Result<(), RepoError> {
        let v = serde_json::json!({"backup": id, "verified": Utc::now(), "tool_version": env!("CARGO_PKG_VERSION")});
        self.store.put(&verified_key(id), Bytes::from(v.to_string()))?;
        Ok(())
    }

    /// Starts a backup. Takes a shared lock held until the writer is committed or dropped.
    pub fn begin_backup(&self) -> Result<BackupWriter<'_>, RepoError> {
        self.keys()?;
        let lock = Lock::acquire(self.store.clone(), false, "backup create")?;
        let index = self.load_index()?;
        Ok(BackupWriter {
            repo: self,
            _lock: lock,
            index,
            written: Index::new(),
            pending: HashSet::new(),
            pack: PackBuilder::new(),
            uploader: Uploader::start(self.store.clone()),
            files: Vec::new(),
            stats: Sizes::default(),
        })
    }

    // ---------------------------------------------------------------------------------
    // Reading

    /// Every chunk id of a part, in order.
    pub fn chunk_ids(&self, index: &Index, part: &Part) -> Result<Vec<Id>, RepoError> {
        let mut ids = Vec::with_capacity(part.chunks as usize);
        for list in &part.chunk_lists {
            let raw = self.read_blob(index, list)?;
            if raw.len() % 32 != 0 {
                return Err(RepoError::Damaged(format!("chunk list {list:?} is {} bytes, not a multiple of 32", raw.len())));
            }
            ids.extend(raw.chunks_exact(32).map(|c| Id(c.try_into().unwrap())));
        }
        if ids.len() as u64 != part.chunks {
            return Err(RepoError::Damaged(format!("chunk lists name {} chunks, the manifest says {}", ids.len(), part.chunks)));
        }
        Ok(ids)
    }

    fn locate<'i>(&self, index: &'i Index, id: &Id) -> Result<&'i Location, RepoError> {
        index.get(id).ok_or_else(|| {
            RepoError::Damaged(format!("blob {} is in no index: the repository lost data (run `backup verify`)", id.hex()))
        })
    }

    /// Reads bytes of a pack; a pack the index names but the store lacks is damage, not "not found".
    fn pack_range(&self, pack: &Id, range: std::ops::Range<u64>) -> Result<Bytes, RepoError> {
        match self.store.get_range(&pack_key(pack), range) {
            Ok(b) => Ok(b),
            Err(StoreError::NotFound(_)) => Err(RepoError::Damaged(format!(
                "pack {} is in the index but missing from the repository",
                pack.hex()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>, RepoError> {
        let loc = *self.locate(index, id)?;
        let stored = self.pack_range(&loc.pack, loc.offset as u64..loc.offset as u64 + loc.stored_len as u64)?;
        decode_blob(self.keys()?, *id, loc.encoding, loc.raw_len, &stored)
            .map_err(|e| RepoError::Damaged(format!("pack {}: {e}", loc.pack.hex())))
    }

    /// Writes a part's content to `out`, checking every chunk's hash and the whole part's
    /// sha256. Consecutive chunks stored next to each other are fetched in one range read.
    pub fn read_part(&self, index: &Index, part: &Part, out: &mut dyn Write) -> Result<(), RepoError> {
        let keys = self.keys()?;
        let ids = self.chunk_ids(index, part)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut i = 0;
        while i < ids.len() {
            let first = *self.locate(index, &ids[i])?;
            let start = first.offset as u64;
            let mut end = start + first.stored_len as u64;
            let mut run = vec![(ids[i], first)];
            let mut j = i + 1;
            while j < ids.len() {
                let loc = *self.locate(index, &ids[j])?;
                let contiguous = loc.pack == first.pack && loc.offset as u64 == end;
                if !contiguous || end + loc.stored_len as u64 - start > MAX_READ_SPAN {
                    break;
                }
                end += loc.stored_len as u64;
                run.push((ids[j], loc));
                j += 1;
            }
            let bytes = self.pack_range(&first.pack, start..end)?;
            for (id, loc) in run {
                let off = (loc.offset as u64 - start) as usize;
                let raw = decode_blob(keys, id, loc.encoding, loc.raw_len, &bytes[off..off + loc.stored_len as usize])
                    .map_err(|e| RepoError::Damaged(format!("pack {}: {e}", loc.pack.hex())))?;
                hasher.update(&raw);
                written += raw.len() as u64;
                out.write_all(&raw).map_err(|e| RepoError::Io(format!("writing: {e}")))?;
            }
            i = j;
        }
        let actual = hex(&hasher.finalize());
        if written != part.size || actual != part.sha256 {
            return Err(RepoError::ChecksumMismatch(format!(
                "reassembled content is {written} bytes with sha256 {actual}; the manifest says {} bytes with sha256 {}",
                part.size, part.sha256
            )));
        }
        Ok(())
    }

    /// Reassembles a part into `dest` (must not exist): a private temporary file next to it,
    /// fsynced and renamed only once the sha256 matches.
    pub fn restore_part_to_file(&self, index: &Index, part: &Part, dest: &Path, mode: u32) -> Result<(), RepoError> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.etcdguard-{:08x}",
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            rand::random::<u32>()
        ));
        let io_err = |what: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", what.display()));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| io_err(&tmp, e))?;
            let mut w = io::BufWriter::with_capacity(1 << 20, f);
            self.read_part(index, part, &mut w)?;
            let f = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
            if mode != 0o600 {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| io_err(&tmp, e))?;
            }
            drop(f);
            // Refuse to replace: link() fails if dest exists, unlike rename().
            fs::hard_link(&tmp, dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    RepoError::DestinationExists(dest.display().to_string())
                } else {
                    io_err(dest, e)
                }
            })?;
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Unpacks the control-plane files of a backup under `dir` with their modes. Existing
    /// files are not overwritten.
    pub fn restore_files(&self, index: &Index, manifest: &Manifest, dir: &Path) -> Result<usize, RepoError> {
        let io_err = |what: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", what.display()));
        fs::DirBuilder::new().recursive(true).mode_private().create(dir).map_err(|e| io_err(dir, e))?;
        let mut n = 0;
        let mut dir_modes = Vec::new();
        for f in &manifest.files {
            let rel = safe_relative(&f.path).ok_or_else(|| RepoError::Damaged(format!("file path {:?} escapes the target", f.path)))?;
            let dest = dir.join(rel);
            if let Some(parent) = dest.parent() {
                fs::DirBuilder::new().recursive(true).mode_private().create(parent).map_err(|e| io_err(parent, e))?;
            }
            match f.kind {
                FileKind::Dir => {
                    fs::DirBuilder::new().recursive(true).mode_private().create(&dest).map_err(|e| io_err(&dest, e))?;
                    dir_modes.push((dest, f.mode));
                }
                FileKind::Symlink => {
                    let target = f.target.as_deref().unwrap_or_default();
                    std::os::unix::fs::symlink(target, &dest).map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            RepoError::DestinationExists(dest.display().to_string())
                        } else {
                            io_err(&dest, e)
                        }
                    })?;
                }
                FileKind::File => {
                    let part = f.content.as_ref().ok_or_else(|| RepoError::Damaged(format!("file {:?} has no content", f.path)))?;
                    self.restore_part_to_file(index, part, &dest, f.mode)?;
                }
            }
            n += 1;
        }
        // Directory modes last, so a read-only directory does not stop its own restore.
        for (d, mode) in dir_modes.into_iter().rev() {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| io_err(&d, e))?;
        }
        Ok(n)
    }

    /// Reads every part of a backup back (without writing it anywhere but `snapshot_out`)
    /// and checks all hashes.
    pub fn check_backup(&self, index: &Index, manifest: &Manifest, snapshot_out: &mut dyn Write) -> Result<(), RepoError> {
        self.read_part(index, &manifest.snapshot, snapshot_out)
            .map_err(|e| e.context(&format!("backup {} snapshot", manifest.id)))?;
        for f in &manifest.files {
            if let Some(part) = &f.content {
                self.read_part(index, part, &mut io::sink()).map_err(|e| e.context(&format!("backup {} file {}", manifest.id, f.path)))?;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Deleting

    /// Removes one backup's manifest; its data goes at the next prune.
    pub fn delete_backup(&self, id: &str) -> Result<(), RepoError> {
        let _lock = Lock::acquire(self.store.clone(), false, "backup delete")?;
        self.manifest(id)?;
        self.store.delete(&manifest_key(id))?;
        self.store.delete(&verified_key(id))?;
        self.store.delete(&export_key(id))?;
        Ok(())
    }

    /// Plans (and unless `dry_run`, carries out) a prune: the policy's decisions, then
    /// removal of everything no remaining backup references.
    pub fn prune(&self, policy: Option<&Policy>, dry_run: bool) -> Result<PruneReport, RepoError> {
        // Used backups are found by reading their chunk lists, which needs the key.
        let keys = self.keys()?;
        let _lock = Lock::acquire(self.store.clone(), true, if dry_run { "backup prune --dry-run" } else { "backup prune" })?;
        let (backups, bad) = self.list_backups()?;
        if !bad.is_empty() {
            return Err(RepoError::Damaged(format!(
                "cannot prune while manifests are unreadable (their data would look unused): {}",
                bad.join("; ")
            )));
        }
        let mut candidates = Vec::new();
        for m in &backups {
            let verified = m.etcd.verified || self.verification(&m.id)?.is_some();
            candidates.push(Candidate { id: m.id.clone(), time: m.created, verified });
        }
        let decisions: Vec<Decision> = match policy {
            Some(p) => retention::apply(p, &candidates),
            None => retention::apply(&Policy { keep_last: usize::MAX, ..Default::default() }, &candidates)
                .into_iter()
                .map(|d| Decision { reasons: vec!["no policy given".into()], ..d })
                .collect(),
        };
        let remove: HashSet<String> = decisions.iter().filter(|d| !d.keep).map(|d| d.id.clone()).collect();

        let (index_keys, index) = self.load_index_files()?;
        // Everything the remaining backups reference.
        let mut used: HashSet<Id> = HashSet::new();
        for m in backups.iter().filter(|m| !remove.contains(&m.id)) {
            let parts = std::iter::once(&m.snapshot).chain(m.files.iter().filter_map(|f| f.content.as_ref()));
            for part in parts {
                used.extend(part.chunk_lists.iter().copied());
                for id in self.chunk_ids(&index, part).map_err(|e| e.context(&format!("backup {}", m.id)))? {
                    used.insert(id);
                }
            }
        }
        for id in &used {
            if !index.contains(id) {
                return Err(RepoError::Damaged(format!(
                    "blob {} used by a remaining backup is in no index; not pruning (run `backup verify`)",
                    id.hex()
                )));
            }
        }

        let stored_packs: HashMap<Id, u64> = self
            .store
            .list("packs/")?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse).map(|id| (id, o.size)))
            .collect();
        let mut report = PruneReport { decisions, dry_run, ..Default::default() };
        let mut delete_packs = Vec::new();
        let mut repack = Vec::new();
        let mut keep_index = Index::new();
        for pack in index.packs().copied().collect::<Vec<_>>() {
            let Some(&size) = stored_packs.get(&pack) else {
                report.missing_packs += 1;
                continue;
            };
            let entries = index.pack_entries(&pack);
            let used_bytes: u64 = entries.iter().filter(|e| used.contains(&e.id)).map(|e| e.stored_len as u64).sum();
            let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
            if used_bytes == 0 {
                delete_packs.push((pack, size));
            } else if used_bytes < total && (total - used_bytes) * 5 >= total {
                // More than a fifth unused: rewrite the used blobs into new packs.
                repack.push((pack, size, entries));
            } else {
                keep_index.add_pack(pack, &entries);
            }
        }
        let indexed: HashSet<Id> = index.packs().copied().collect();
        for (pack, size) in &stored_packs {
            if !indexed.contains(pack) {
                // Left by a create that did not finish (no index names it, and the exclusive
                // lock means no create is running now).
                report.orphan_packs += 1;
                delete_packs.push((*pack, *size));
            }
        }
        report.packs_deleted = delete_packs.len();
        report.bytes_deleted = delete_packs.iter().map(|(_, s)| s).sum();
        report.packs_repacked = repack.len();
        report.manifests_removed = remove.len();
        report.bytes_before = stored_packs.values().sum();
        if dry_run {
            report.bytes_after = report.bytes_before - report.bytes_deleted
                - repack.iter().map(|(_, s, e)| s - e.iter().filter(|e| used.contains(&e.id)).map(|e| e.stored_len as u64).sum::<u64>()).sum::<u64>();
            return Ok(report);
        }

        // 1. Forget the backups the policy removes.
        for id in &remove {
            self.store.delete(&manifest_key(id))?;
            self.store.delete(&verified_key(id))?;
        }
        // 2. Repack partly used packs (stored bytes are copied, not re-encoded).
        let uploader = Uploader::start(self.store.clone());
        let mut builder = PackBuilder::new();
        let mut copied: HashSet<Id> = HashSet::new();
        for (pack, size, entries) in &repack {
            let bytes = self.store.get(&pack_key(pack))?;
            for e in entries.iter().filter(|e| used.contains(&e.id)) {
                if copied.contains(&e.id) {
                    continue;
                }
                let stored = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
                decode_blob(keys, e.id, e.encoding, e.raw_len, stored)
                    .map_err(|err| RepoError::Damaged(format!("pack {} while repacking: {err}", pack.hex())))?;
                builder.add(e.id, e.kind, e.encoding, e.raw_len, stored);
                copied.insert(e.id);
                if builder.len() as u64 >= self.config.pack_size {
                    let (id, data, entries) = std::mem::take(&mut builder).finish();
                    keep_index.add_pack(id, &entries);
                    uploader.send(pack_key(&id), data)?;
                }
            }
            delete_packs.push((*pack, *size));
        }
        if !builder.is_empty() {
            let (id, data, entries) = builder.finish();
            keep_index.add_pack(id, &entries);
            uploader.send(pack_key(&id), data)?;
        }
        uploader.finish()?;
        // A pack the new index names is never deleted, whatever put it on the list: pack
        // names are the sha256 of their content, so a repack can recreate, under the same
        // name, a pack an interrupted prune left behind (and this prune listed as orphan).
        let kept_packs: HashSet<Id> = keep_index.packs().copied().collect();
        delete_packs.retain(|(pack, _)| !kept_packs.contains(pack));
        // 3. One new index for everything kept, then the old index files, then the packs.
        let data = keep_index.encode();
        let new_key = format!("index/{}", Id::of(&data).hex());
        self.store.put(&new_key, Bytes::from(data))?;
        for key in index_keys.iter().filter(|k| **k != new_key) {
            self.store.delete(key)?;
        }
        for (pack, _) in &delete_packs {
            self.store.delete(&pack_key(pack))?;
        }
        // 4. Verification records of backups that are gone.
        let remaining: HashSet<String> = self.store.list("backups/")?.into_iter().map(|o| o.key).collect();
        for v in self.store.list("verified/")? {
            let id = v.key.trim_start_matches("verified/").trim_end_matches(".json");
            if !remaining.contains(&manifest_key(id)) {
                self.store.delete(&v.key)?;
            }
        }
        // 5. Exported snapshots of backups that are gone.
        for e in self.store.list("exports/")? {
            let id = e.key.trim_start_matches("exports/").split('/').next().unwrap_or_default();
            if !remaining.contains(&manifest_key(id)) {
                self.store.delete(&e.key)?;
            }
        }
        report.bytes_after = self.store.list("packs/")?.iter().map(|o| o.size).sum();
        report.bytes_deleted = report.bytes_before.saturating_sub(report.bytes_after);
        Ok(report)
    }

    /// Rebuilds the index from the pack headers (for a repository whose index files were
    /// lost or damaged). Replaces all index files with one.
    pub fn rebuild_index(&self) -> Result<usize, RepoError> {
        let _lock = Lock::acquire(self.store.clone(), true, "index rebuild")?;
        let mut index = Index::new();
        let mut n = 0;
        for obj in self.store.list("packs/")? {
            let Some(id) = obj.key.rsplit('/').next().and_then(Id::parse) else { continue };
            let bytes = self.store.get(&obj.key)?;
            if Id::of(&bytes) != id {
                return Err(RepoError::Damaged(format!("{}: content does not match its name", obj.key)));
            }
            let entries = crate::pack::parse_pack(&bytes).map_err(|e| RepoError::Damaged(format!("{}: {e}", obj.key)))?;
            index.add_pack(id, &entries);
            n += 1;
        }
        let old: Vec<String> = self.store.list("index/")?.into_iter().map(|o| o.key).collect();
        let data = index.encode();
        let key = format!("index/{}", Id::of(&data).hex());
        self.store.put(&key, Bytes::from(data))?;
        for k in old.iter().filter(|k| **k != key) {
            self.store.delete(k)?;
        }
        Ok(n)
    }

    /// Checks every pack's name against its content and header (`backup verify --packs`).
    pub fn check_packs(&self) -> Result<(usize, Vec<String>), RepoError> {
        let mut problems = Vec::new();
        let mut n = 0;
        for obj in self.store.list("packs/")? {
            n += 1;
            let Some(id) = obj.key.rsplit('/').next().and_then(Id::parse) else {
                problems.push(format!("{}: not a pack name", obj.key));
                continue;
            };
            let bytes = self.store.get(&obj.key)?;
            if Id::of(&bytes) != id {
                problems.push(format!("{}: content does not match its sha256 name (damaged)", obj.key));
                continue;
            }
            if let Err(e) = crate::pack::parse_pack(&bytes) {
                problems.push(format!("{}: {e}", obj.key));
            }
        }
        Ok((n, problems))
    }

    /// Presigned GET URLs for the objects of a backup.
    /// Reassembles a backup's snapshot into one object, `exports/<id>/snapshot.db`, streamed
    /// (multipart) and checked against the manifest's sha256 before the upload completes, so
    /// restore flows that only take a URL can fetch it. Refused for an encrypted repository:
    /// the export would put the cluster's data in the bucket in clear. An earlier export of
    /// the right size is reused (backups never change). Returns the object's key.
    pub fn export_snapshot(&self, manifest: &Manifest) -> Result<String, RepoError> {
        if self.is_encrypted() {
            return Err(RepoError::Invalid(format!(
                "{} is encrypted; exporting the snapshot would store it in the bucket in clear.\n  \
                 Use `backup url --objects` (sealed objects, for etcdguard), or `backup restore --to-file` and upload the file yourself",
                self.location()
            )));
        }
        let key = export_key(&manifest.id);
        let existing = self.store.list(&format!("exports/{}/", manifest.id))?;
        if existing.iter().any(|o| o.key == key && o.size == manifest.snapshot.size) {
            return Ok(key);
        }
        let index = self.load_index()?;
        let mut failure = None;
        let put = self.store.put_streaming(&key, &mut |w: &mut dyn Write| {
            self.read_part(&index, &manifest.snapshot, w).map_err(|e| {
                let m = e.to_string();
                failure = Some(e);
                io::Error::other(m)
            })
        });
        match (put, failure) {
            (_, Some(e)) => Err(e.context(&format!("exporting backup {}", manifest.id))),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(key),
        }
    }

    /// A presigned GET URL for one object of the repository.
    pub fn presigned_url(&self, key: &str, expires: std::time::Duration) -> Result<String, RepoError> {
        Ok(self.store.presigned_url(key, expires)?)
    }

    pub fn presigned_urls(&self, manifest: &Manifest, expires: std::time::Duration) -> Result<Vec<(String, String)>, RepoError> {
        let index = self.load_index()?;
        let mut packs: Vec<Id> = Vec::new();
        let mut seen = HashSet::new();
        let parts = std::iter::once(&manifest.snapshot).chain(manifest.files.iter().filter_map(|f| f.content.as_ref()));
        for part in parts {
            for id in part.chunk_lists.iter().copied().chain(self.chunk_ids(&index, part)?) {
                let loc = self.locate(&index, &id)?;
                if seen.insert(loc.pack) {
                    packs.push(loc.pack);
                }
            }
        }
        let mut out = vec![(manifest_key(&manifest.id), self.store.presigned_url(&manifest_key(&manifest.id), expires)?)];
        for key in self.store.list("index/")?.into_iter().map(|o| o.key) {
            out.push((key.clone(), self.store.presigned_url(&key, expires)?));
        }
        for p in packs {
            out.push((pack_key(&p), self.store.presigned_url(&pack_key(&p), expires)?));
        }
        Ok(out)
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
    let ok = !p.is_empty()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then_some(path)
}

#[derive(Debug, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub manifests_removed: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub orphan_packs: usize,
    pub missing_packs: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_deleted: u64,
}

// -------------------------------------------------------------------------------------
// Uploads

/// A few threads putting finished packs; at most `UPLOADS_IN_FLIGHT` queued.
struct Uploader {
    tx: Option<SyncSender<(String, Vec<u8>)>>,
    threads: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<StoreError>>>,
}

impl Uploader {
    fn start(store: Arc<dyn Store>) -> Uploader {
        let (tx, rx) = sync_channel::<(String, Vec<u8>)>(UPLOADS_IN_FLIGHT);
        let rx = Arc::new(Mutex::new(rx));
        let error: Arc<Mutex<Option<StoreError>>> = Arc::new(Mutex::new(None));
        let threads = (0..UPLOADS_IN_FLIGHT)
            .map(|i| {
                let rx = rx.clone();
                let store = store.clone();
                let error = error.clone();
                std::thread::Builder::new()
                    .name(format!("etcdguard-upload-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((key, data)) = job else { return };
                        if error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            continue; // drain: a failed backup uploads nothing more
                        }
                        if let Err(e) = store.put(&key, Bytes::from(data)) {
                            error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    })
                    .expect("spawning an upload thread")
            })
            .collect();
        Uploader { tx: Some(tx), threads, error }
    }

    fn check(&self) -> Result<(), RepoError> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn send(&self, key: String, data: Vec<u8>) -> Result<(), RepoError> {
        self.check()?;
        self.tx.as_ref().expect("uploader open").send((key, data)).map_err(|_| RepoError::Io("upload threads stopped".into()))
    }

    fn finish(mut self) -> Result<(), RepoError> {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.check()
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// -------------------------------------------------------------------------------------
// Writing a backup

/// Metadata for [`BackupWriter::commit`].
#[derive(Clone, Debug)]
pub struct BackupMeta {
    pub source: Source,
    pub etcd: EtcdInfo,
    pub labels: BTreeMap<String, String>,
    pub cluster: Option<String>,
}

pub struct BackupWriter<'r> {
    repo: &'r Repository,
    _lock: Lock,
    /// The repository's index when the backup started.
    index: Index,
    /// Packs written by this backup.
    written: Index,
    /// Blobs added by this backup so far (written or in the open pack).
    pending: HashSet<Id>,
    pack: PackBuilder,
    uploader: Uploader,
    files: Vec<FileEntry>,
    stats: Sizes,
}

impl<'r> BackupWriter<'r> {
    fn add_blob(&mut self, kind: BlobKind, raw: &[u8]) -> Result<Id, RepoError> {
        let keys = self.repo.keys()?;
        let id = crate::pack::blob_id(keys, raw);
        self.stats.blobs_total += 1;
        if self.index.contains(&id) || self.pending.contains(&id) {
            return Ok(id);
        }
        let (encoding, stored) = encode_blob(&id, raw, self.repo.config.compression_level, keys);
        self.pack.add(id, kind, encoding, raw.len() as u32, &stored);
        self.pending.insert(id);
        self.stats.added += stored.len() as u64;
        self.stats.blobs_added += 1;
        if self.pack.len() as u64 >= self.repo.config.pack_size {
            self.flush_pack()?;
        }
        Ok(id)
    }

    fn flush_pack(&mut self) -> Result<(), RepoError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let (id, data, entries) = std::mem::take(&mut self.pack).finish();
        self.written.add_pack(id, &entries);
        self.uploader.send(pack_key(&id), data)
    }

    /// Chunks `reader` at `chunk_size` boundaries and stores what is new.
    fn add_stream(&mut self, reader: &mut dyn Read, chunk_size: u32) -> Result<Part, RepoError> {
        let mut buf = vec![0u8; chunk_size as usize];
        let mut hasher = Sha256::new();
        let mut ids: Vec<u8> = Vec::new();
        let mut size = 0u64;
        let mut chunks = 0u64;
        loop {
            let n = read_full(reader, &mut buf).map_err(|e| RepoError::Io(format!("reading: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            let id = self.add_blob(BlobKind::Data, &buf[..n])?;
            ids.extend_from_slice(&id.0);
            size += n as u64;
            chunks += 1;
            if n < buf.len() {
                break;
            }
        }
        let fanout = self.repo.config.chunking.list_fanout as usize * 32;
        let mut lists = Vec::new();
        for piece in ids.chunks(fanout) {
            lists.push(self.add_blob(BlobKind::List, piece)?);
        }
        Ok(Part { size, sha256: hex(&hasher.finalize()), chunk_size, chunks, chunk_lists: lists })
    }

    /// The chunk size used for a database with `page_size`: the repository's, rounded up to
    /// a multiple of the page size.
    pub fn chunk_size_for(&self, page_size: u32) -> u32 {
        let base = self.repo.config.chunking.chunk_size.max(1);
        if page_size == 0 {
            return base;
        }
        base.div_ceil(page_size) * page_size
    }

    /// Stores the snapshot (the whole file, trailer included, so it comes back byte-identical).
    pub fn add_snapshot(&mut self, reader: &mut dyn Read, page_size: u32) -> Result<Part, RepoError> {
        let cs = self.chunk_size_for(page_size);
        self.add_stream(reader, cs)
    }

    /// Adds a file, or a directory with everything under it, as `<group>/<its name>…`
    /// (several `--file` paths side by side).
    pub fn add_path(&mut self, group: &str, path: &Path) -> Result<(), RepoError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
        self.add_path_as(&format!("{group}/{name}"), path)
    }

    /// Adds a file or a directory tree so that it restores at `dest` under `--files-to`
    /// (the PKI directory becomes `pki/`, ready to copy back as /etc/kubernetes/pki).
    pub fn add_path_as(&mut self, dest: &str, path: &Path) -> Result<(), RepoError> {
        let io_err = |p: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", p.display()));
        let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
        if safe_relative(dest).is_none() {
            return Err(RepoError::Invalid(format!("{dest:?}: not a usable name under --files-to")));
        }
        if self.files.iter().any(|f| f.path == dest || f.path.starts_with(&format!("{dest}/")) || dest.starts_with(&format!("{}/", f.path))) {
            return Err(RepoError::Invalid(format!("{} would restore as {dest:?}, which another path of this backup already uses", path.display())));
        }
        self.add_entry(dest, path, &meta)
    }

    fn add_entry(&mut self, dest: &str, path: &Path, meta: &fs::Metadata) -> Result<(), RepoError> {
        let io_err = |p: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", p.display()));
        let base = FileEntry {
            path: dest.to_string(),
            source: path.display().to_string(),
            kind: FileKind::File,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            target: None,
            content: None,
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| io_err(path, e))?;
            self.files.push(FileEntry { kind: FileKind::Symlink, target: Some(target.to_string_lossy().into_owned()), ..base });
        } else if ft.is_dir() {
            self.files.push(FileEntry { kind: FileKind::Dir, ..base });
            let mut entries: Vec<_> = fs::read_dir(path)
                .map_err(|e| io_err(path, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| io_err(path, e))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let m = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
                let child = format!("{dest}/{}", e.file_name().to_string_lossy());
                self.add_entry(&child, &p, &m)?;
            }
        } else if ft.is_file() {
            let mut f = fs::File::open(path).map_err(|e| io_err(path, e))?;
            let cs = self.repo.config.chunking.chunk_size;
            let part = self.add_stream(&mut f, cs).map_err(|e| e.context(&path.display().to_string()))?;
            self.stats.original += part.size;
            self.files.push(FileEntry { content: Some(part), ..base });
        }
        // Sockets, fifos and devices are skipped: nothing in a control plane's files needs them.
        Ok(())
    }

    /// Writes the last pack, the index for this backup's packs and, last, the manifest.
    pub fn commit(mut self, snapshot: Part, meta: BackupMeta) -> Result<Manifest, RepoError> {
        self.flush_pack()?;
        let uploader = std::mem::replace(&mut self.uploader, Uploader { tx: None, threads: Vec::new(), error: Arc::default() });
        uploader.finish()?;
        if self.written.blob_count() > 0 {
            let data = self.written.encode();
            self.repo.store.put(&format!("index/{}", Id::of(&data).hex()), Bytes::from(data))?;
        }
        let created = Utc::now();
        let id = format!("{:016x}", rand::random::<u64>());
        let mut sizes = self.stats.clone();
        sizes.original += snapshot.size;
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: id.clone(),
            created,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            hostname: hostname(),
            labels: meta.labels,
            cluster: meta.cluster,
            source: meta.source,
            etcd: meta.etcd,
            snapshot,
            files: std::mem::take(&mut self.files),
            encoding: PartEncoding { compression: "zstd".into(), encryption: self.repo.config.encryption.clone() },
            sizes,
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        self.repo.store.put(&manifest_key(&id), Bytes::from(body))?;
        Ok(manifest)
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Every blob a part references, for accounting.
pub fn part_blob_ids(repo: &Repository, index: &Index, part: &Part) -> Result<Vec<Id>, RepoError> {
    let mut ids = part.chunk_lists.clone();
    ids.extend(repo.chunk_ids(index, part)?);
    Ok(ids)
}

/// Stored bytes of a set of blobs.
pub fn stored_bytes(index: &Index, ids: impl IntoIterator<Item = Id>) -> u64 {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).filter_map(|id| index.get(&id)).map(|l| l.stored_len as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalDir;
    use rand::{Rng, RngCore, SeedableRng};

    fn repo(dir: &Path, pack_size: u64) -> Repository {
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.to_path_buf()));
        Repository::init(store, &InitOptions { chunk_size: 4096, pack_size, ..Default::default() }).unwrap()
    }

    fn meta() -> BackupMeta {
        BackupMeta {
            source: Source::File { path: "test".into() },
            etcd: EtcdInfo { page_size: 4096, ..Default::default() },
            labels: BTreeMap::new(),
            cluster: None,
        }
    }

    fn backup(r: &Repository, data: &[u8]) -> Manifest {
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &data[..], 4096).unwrap();
        w.commit(part, meta()).unwrap()
    }

    fn restore(r: &Repository, m: &Manifest) -> Vec<u8> {
        let index = r.load_index().unwrap();
        let mut out = Vec::new();
        r.read_part(&index, &m.snapshot, &mut out).unwrap();
        out
    }

    /// 1 MiB + 32 bytes of half-compressible "pages".
    fn db(seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; 256 * 4096 + 32];
        for page in v.chunks_mut(4096) {
            let half = page.len() / 2;
            rng.fill_bytes(&mut page[..half]);
        }
        v
    }

    fn cheap_kdf() -> KdfParams {
        KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 }
    }

    /// Every byte of every object under `dir`.
    fn all_stored_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.extend(fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn encrypted_repository_round_trip_hides_content_and_needs_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dir.path().to_path_buf()));
        let pass = Passphrase::new(b"s3cret passphrase\n".to_vec());
        let opts = InitOptions { chunk_size: 4096, pack_size: 64 * 1024, passphrase: Some(pass.clone()), kdf: cheap_kdf() };
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
        assert!(matches!(Repository::open(store).unwrap().prune(None, true), Err(RepoError::KeyRequired(_))));
    }

    #[test]
    fn export_streams_the_snapshot_whole_and_prune_removes_it_with_its_backup() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let first = db(7);
        let m1 = backup(&r, &first);
        let m2 = backup(&r, &db(8));
        let key = r.export_snapshot(&m1).unwrap();
        assert_eq!(key, format!("exports/{}/snapshot.db", m1.id));
        assert!(fs::read(dir.path().join(&key)).unwrap() == first);
        assert_eq!(r.export_snapshot(&m1).unwrap(), key, "an export is reused");
        // A damaged chunk fails the export and leaves no object.
        let index = r.load_index().unwrap();
        let loc = *index.get(&r.chunk_ids(&index, &m2.snapshot).unwrap()[3]).unwrap();
        let pack = dir.path().join(pack_key(&loc.pack));
        let mut bytes = fs::read(&pack).unwrap();
        bytes[loc.offset as usize + 2] ^= 0x55;
        fs::write(&pack, bytes).unwrap();
        assert!(r.export_snapshot(&m2).is_err());
        assert!(r.store.list(&format!("exports/{}/", m2.id)).unwrap().is_empty(), "a failed export left an object");
        // Forgetting the backup removes its export.
        r.delete_backup(&m1.id).unwrap();
        assert!(r.store.list("exports/").unwrap().is_empty());
        // An encrypted repository never exports in clear.
        let edir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(edir.path().to_path_buf()));
        let opts = InitOptions { chunk_size: 4096, pack_size: 64 * 1024, passphrase: Some(Passphrase::new(b"p".to_vec())), kdf: cheap_kdf() };
        let er = Repository::init(store, &opts).unwrap();
        let em = backup(&er, &first);
        assert!(matches!(er.export_snapshot(&em), Err(RepoError::Invalid(_))));
    }

    #[test]
    fn dedup_restore_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let first = db(1);
        let m1 = backup(&r, &first);
        assert_eq!(restore(&r, &m1), first);
        assert_eq!(m1.snapshot.chunks, 257);
        let full = m1.sizes.added;

        // Change 3 pages: only those (and the chunk list) are stored again.
        let mut second = first.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for p in [3usize, 100, 200] {
            rng.fill_bytes(&mut second[p * 4096..p * 4096 + 100]);
        }
        let m2 = backup(&r, &second);
        assert_eq!(m2.sizes.blobs_added, 3 + 1, "three pages and one list");
        assert!(m2.sizes.added < full / 20);
        assert_eq!(restore(&r, &m2), second);
        assert_eq!(restore(&r, &m1), first);

        let (all, bad) = r.list_backups().unwrap();
        assert!(bad.is_empty());
        assert_eq!(all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), vec![m1.id.clone(), m2.id.clone()]);
        assert_eq!(r.resolve(&m2.id[..8]).unwrap(), m2.id);
        assert_eq!(r.resolve("latest").unwrap(), m2.id);
        assert!(matches!(r.resolve("zzzz"), Err(RepoError::BackupNotFound(_))));

        // Nothing unused yet: prune deletes nothing.
        let rep = r.prune(None, false).unwrap();
        assert_eq!(rep.packs_deleted, 0);
        assert_eq!(restore(&r, &m1), first);

        // Forget the first: its three unique pages go, the rest stays for the second.
        let rep = r.prune(Some(&Policy { keep_last: 1, ..Default::default() }), true).unwrap();
        assert_eq!(rep.manifests_removed, 1);
        assert!(r.manifest(&m1.id).is_ok(), "dry run removes nothing");
        let before = rep.bytes_before;
        let rep = r.prune(Some(&Policy { keep_last: 1, ..Default::default() }), false).unwrap();
        assert_eq!(rep.manifests_removed, 1);
        assert!(rep.bytes_after < before, "{rep:?}");
        assert!(matches!(r.manifest(&m1.id), Err(RepoError::BackupNotFound(_))));
        assert_eq!(restore(&r, &m2), second);
        // Packs mostly unused were dropped or rewritten; a few unused blobs may stay in packs
        // that are mostly used (rewriting those would cost more than it frees).
        let index = r.load_index().unwrap();
        let used: HashSet<Id> = part_blob_ids(&r, &index, &m2.snapshot).unwrap().into_iter().collect();
        assert!(used.iter().all(|id| index.contains(id)));
        assert!(index.blob_count() - used.len() <= 4, "{} blobs for {} used", index.blob_count(), used.len());
        assert!(r.store.list("locks/").unwrap().is_empty(), "locks released");

        // The index can be rebuilt from the packs alone.
        for k in r.store.list("index/").unwrap() {
            r.store.delete(&k.key).unwrap();
        }
        assert_eq!(r.rebuild_index().unwrap(), r.store.list("packs/").unwrap().len());
        assert_eq!(restore(&r, &m2), second);
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let data = db(2);
        let m = backup(&r, &data);
        let packs = r.store.list("packs/").unwrap();
        let path = dir.path().join(&packs[0].key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0x55;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, &bytes).unwrap();
        let index = r.load_index().unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(_)), "{err}");
        let (n, problems) = r.check_packs().unwrap();
        assert_eq!(n, packs.len());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn orphan_packs_of_an_unfinished_backup_are_pruned_and_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let m = backup(&r, &db(3));
        {
            // A backup that writes packs and then fails before its manifest.
            let mut w = r.begin_backup().unwrap();
            w.add_snapshot(&mut &db(4)[..], 4096).unwrap();
            w.flush_pack().unwrap();
            drop(w);
        }
        let (all, _) = r.list_backups().unwrap();
        assert_eq!(all.len(), 1, "no half backup listed");
        let rep = r.prune(None, false).unwrap();
        assert!(rep.orphan_packs > 0, "{rep:?}");
        assert_eq!(restore(&r, &m), db(3));
    }

    /// The state a prune killed between "upload repacked pack" and "write index" leaves:
    /// the repacked pack is stored but no index names it. The next prune recreates the same
    /// pack (same content, same name) and must not delete it as an orphan.
    #[test]
    fn a_prune_after_an_interrupted_prune_keeps_the_repacked_pack() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 8 << 20);
        let mut first = db(21);
        first.extend_from_slice(&db(22)); // blobs only the first backup has, in the same pack
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &first[..], 4096).unwrap();
        w.commit(part, meta()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let newest = backup(&r, &db(21));
        copy_tree(dir.path(), copy.path());
        let r2 = Repository::open(Arc::new(LocalDir::new(copy.path().to_path_buf()))).unwrap();
        let policy = Policy { keep_last: 1, ..Default::default() };
        let rep = r2.prune(Some(&policy), false).unwrap();
        assert!(rep.packs_repacked > 0, "the setup needs a repack: {rep:?}");
        // The killed prune's leftover: the repacked pack, in no index of the original.
        let before: HashSet<String> = r.store.list("packs/").unwrap().into_iter().map(|o| o.key).collect();
        let leftovers: Vec<String> =
            r2.store.list("packs/").unwrap().into_iter().map(|o| o.key).filter(|k| !before.contains(k)).collect();
        assert!(!leftovers.is_empty());
        for k in &leftovers {
            r.store.put(k, r2.store.get(k).unwrap()).unwrap();
        }
        r.prune(Some(&policy), false).unwrap();
        assert_eq!(restore(&r, &newest), db(21));
        let (n, problems) = r.check_packs().unwrap();
        assert!(n > 0 && problems.is_empty(), "{problems:?}");
    }

    fn copy_tree(from: &Path, to: &Path) {
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                fs::create_dir_all(&dest).unwrap();
                copy_tree(&e.path(), &dest);
            } else {
                fs::copy(e.path(), &dest).unwrap();
            }
        }
    }

    #[test]
    fn a_missing_pack_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let m = backup(&r, &db(6));
        for p in r.store.list("packs/").unwrap() {
            r.store.delete(&p.key).unwrap();
        }
        let index = r.load_index().unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(ref s) if s.contains("missing")), "{err}");
        // Prune refuses to touch a repository that lost data a backup needs.
        assert!(matches!(r.prune(None, false), Err(RepoError::Damaged(_))));
    }

    #[test]
    fn prune_waits_for_a_running_create() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let w = r.begin_backup().unwrap();
        let err = r.prune(None, false).unwrap_err();
        assert!(matches!(err, RepoError::Locked(_)), "{err}");
        drop(w);
        r.prune(None, false).unwrap();
    }

    #[test]
    fn files_round_trip_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("pki");
        fs::create_dir_all(src.join("etcd")).unwrap();
        fs::write(src.join("ca.key"), b"secret key").unwrap();
        fs::set_permissions(src.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let big: Vec<u8> = (0..20000u32).map(|i| rand::thread_rng().gen::<u8>() ^ (i as u8)).collect();
        fs::write(src.join("etcd/big.crt"), &big).unwrap();
        fs::set_permissions(src.join("etcd/big.crt"), fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("ca.key", src.join("link")).unwrap();
        let r = repo(&dir.path().join("repo"), 1 << 20);
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &db(5)[..], 4096).unwrap();
        w.add_path_as("pki", &src).unwrap();
        assert!(w.add_path("files", &src).is_ok(), "the same tree elsewhere is fine");
        assert!(matches!(w.add_path_as("pki/etcd", &src), Err(RepoError::Invalid(_))), "overlap");
        let m = w.commit(part, meta()).unwrap();
        let out = dir.path().join("out");
        let index = r.load_index().unwrap();
        assert_eq!(r.restore_files(&index, &m, &out).unwrap(), 10);
        assert_eq!(fs::read(out.join("pki/ca.key")).unwrap(), b"secret key");
        assert_eq!(fs::metadata(out.join("pki/ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(out.join("pki/etcd/big.crt")).unwrap(), big);
        assert_eq!(fs::metadata(out.join("pki/etcd/big.crt")).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_link(out.join("pki/link")).unwrap(), Path::new("ca.key"));
        // A second restore into the same place refuses to overwrite.
        assert!(matches!(r.restore_files(&index, &m, &out), Err(RepoError::DestinationExists(_))));
    }
}
