//! The check before a restore that the restored cluster can read its encrypted data: every
//! key name that live encrypted values of the snapshot use (`k8s:enc:<provider>:v1:<name>:`)
//! must be in the EncryptionConfiguration that will be in place, and one value per key name
//! must decrypt with it. A restore without the keys brings back a cluster whose API server
//! cannot read its Secrets.

use std::path::{Path, PathBuf};

use etcdguard_kube::encryption::{EncryptionConfig, KeyNameTally, KeyUse};
use etcdguard_repo::manifest::{FileKind, Manifest};
use etcdguard_repo::Repository;
use etcdguard_storage::keys::Revision;
use etcdguard_storage::restore::Gate;

use crate::error::{Error, Kind, Result};
use crate::snapshot::open_snapshot;

/// Where a backup keeps the API server's EncryptionConfiguration (`--encryption-config`, or
/// found through `--manifests-dir`).
pub const STORED_PREFIX: &str = "encryption-config/";

/// The EncryptionConfiguration the restored cluster will use, and where it comes from.
pub struct InPlace {
    /// `None`: the cluster will have none (the API server reads only plain values).
    pub config: Option<EncryptionConfig>,
    /// For messages: `--encryption-config /x`, `the one in backup 3f9a…`, `the node's (…)`.
    pub source: String,
}

impl InPlace {
    pub fn file(path: &Path) -> Result<InPlace> {
        let config = EncryptionConfig::load(path)
            .map_err(|e| Error::usage(format!("--encryption-config {}: {e}", path.display())))?;
        Ok(InPlace {
            config: Some(config),
            source: format!("--encryption-config {}", path.display()),
        })
    }

    /// The configuration stored in backup `m`, if it holds one.
    pub fn from_backup(repo: &Repository, m: &Manifest) -> Result<InPlace> {
        let source = format!("the EncryptionConfiguration stored in backup {}", m.id);
        match stored_config(repo, m)? {
            Some((path, bytes)) => {
                let config = EncryptionConfig::parse(&bytes).map_err(|e| {
                    Error::new(Kind::Corrupt, format!("backup {}: {path}: {e}", m.id))
                })?;
                Ok(InPlace { config: Some(config), source })
            }
            None => Ok(InPlace {
                config: None,
                source: format!("none: backup {} holds no EncryptionConfiguration", m.id),
            }),
        }
    }

    /// The node's: the API server manifest's `--encryption-provider-config`, on the host.
    pub fn from_apiserver_manifest(manifest: &Path) -> Result<InPlace> {
        let path: Option<PathBuf> =
            etcdguard_node::pods::read_apiserver_encryption_config(manifest)
                .map_err(crate::error::node_error)?;
        match path {
            Some(p) => {
                let config = EncryptionConfig::load(&p).map_err(|e| {
                    Error::usage(format!(
                        "{} (the API server's --encryption-provider-config): {e}",
                        p.display()
                    ))
                })?;
                Ok(InPlace {
                    config: Some(config),
                    source: format!(
                        "the API server's {} (from {})",
                        p.display(),
                        manifest.display()
                    ),
                })
            }
            None => Ok(InPlace {
                config: None,
                source: format!(
                    "none: {} sets no --encryption-provider-config",
                    manifest.display()
                ),
            }),
        }
    }
}

/// The file of backup `m` under `encryption-config/`, read into memory (it is small).
pub fn stored_config(repo: &Repository, m: &Manifest) -> Result<Option<(String, Vec<u8>)>> {
    let Some(entry) =
        m.files.iter().find(|f| f.kind == FileKind::File && f.path.starts_with(STORED_PREFIX))
    else {
        return Ok(None);
    };
    let Some(part) = &entry.content else { return Ok(None) };
    let index = repo.load_index()?;
    let mut bytes = Vec::new();
    repo.read_part(&index, part, &mut bytes)?;
    Ok(Some((entry.path.clone(), bytes)))
}

/// What the check found.
pub struct KeyCheck {
    /// Key names in use, with how many live values use each.
    pub uses: Vec<KeyUse>,
    /// Each problem in one sentence (a missing key name, a key that does not decrypt).
    pub problems: Vec<String>,
    /// Notes that do not refuse (KMS values cannot be trial-decrypted offline).
    pub notes: Vec<String>,
}

/// Checks the snapshot's key names against `in_place`, with a walk of its own (the check
/// before a `node restore` stops anything; a restore into a new data dir uses [`KeyGate`]).
pub fn check(snapshot: &Path, in_place: &InPlace) -> Result<KeyCheck> {
    let file = open_snapshot(snapshot)?;
    let db = file.db().map_err(|e| crate::error::db_error(snapshot, e))?;
    let release = || file.release_resident();
    let (uses, _unreadable) = etcdguard_kube::encryption::key_names_used(&db, Some(&release))
        .map_err(|e| Error::new(Kind::Corrupt, format!("{}: {e}", snapshot.display())))?;
    Ok(judge(uses, in_place))
}

/// Holds each key name in use against the configuration that will be in place.
fn judge(uses: Vec<KeyUse>, in_place: &InPlace) -> KeyCheck {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for u in &uses {
        let name = format!("{}:{}", u.provider, u.key_name);
        let Some(config) = &in_place.config else {
            problems.push(format!("{} value(s) are encrypted with key {name}, and no EncryptionConfiguration will be in place ({})", u.values, in_place.source));
            continue;
        };
        if !config.key_names().iter().any(|(p, n)| *p == u.provider && n == &u.key_name) {
            problems.push(format!(
                "{} value(s) are encrypted with key {name}, which is not in {}",
                u.values, in_place.source
            ));
            continue;
        }
        if u.provider.is_kms() {
            notes.push(format!(
                "{} value(s) use KMS plugin {}; they can only be checked with the plugin running",
                u.values, u.key_name
            ));
            continue;
        }
        if let Err(e) = config.decrypt(&u.sample.0, &u.sample.1) {
            problems.push(format!(
                "key {name} of {} does not decrypt {}: {e}",
                in_place.source,
                String::from_utf8_lossy(&u.sample.0)
            ));
        }
    }
    KeyCheck { uses, problems, notes }
}

/// The key check as a restore [`Gate`]: it tallies the key names during the restore's own
/// walk of the restored database (no pass of its own) and refuses before the data dir is
/// put in place. Read its outcome with [`KeyGate::take`] after the restore.
pub struct KeyGate {
    tally: KeyNameTally,
    in_place: InPlace,
    force: bool,
    undecodable: Option<String>,
    outcome: Option<KeyCheck>,
}

impl KeyGate {
    pub fn new(in_place: InPlace, force: bool) -> KeyGate {
        KeyGate {
            tally: KeyNameTally::default(),
            in_place,
            force,
            undecodable: None,
            outcome: None,
        }
    }

    /// What the check found, once the restore has asked for the verdict.
    pub fn take(&mut self) -> Option<KeyCheck> {
        self.outcome.take()
    }
}

impl Gate for KeyGate {
    fn observe(&mut self, revision: &Revision<'_>) {
        self.tally.observe(revision);
    }

    fn undecodable(&mut self, why: &str) {
        self.undecodable = Some(why.to_string());
    }

    fn verdict(&mut self) -> std::result::Result<(), String> {
        let (uses, _unreadable) = std::mem::take(&mut self.tally).finish();
        let mut check = judge(uses, &self.in_place);
        if let Some(why) = &self.undecodable {
            check.problems.push(format!("an entry of the key bucket does not decode ({why}), so the keys of the values after it were not checked"));
        }
        let refused = !check.problems.is_empty() && !self.force;
        let reason =
            refused.then(|| format!("refused by safety check: {}", check.problems.join("; ")));
        self.outcome = Some(check);
        reason.map_or(Ok(()), Err)
    }
}

/// Refuses (exit 17) when the check found problems, unless `force`; `note` gets the
/// warnings.
pub fn enforce(check: &KeyCheck, force: bool, note: &mut dyn FnMut(&str)) -> Result<()> {
    for n in &check.notes {
        note(&format!("note: {n}"));
    }
    if check.problems.is_empty() {
        if !check.uses.is_empty() {
            let names: Vec<String> =
                check.uses.iter().map(|u| format!("{}:{}", u.provider, u.key_name)).collect();
            note(&format!("encryption keys checked: {} (each trial-decrypted)", names.join(", ")));
        }
        return Ok(());
    }
    if force {
        for p in &check.problems {
            note(&format!("warning: --force: going on although {p}"));
        }
        return Ok(());
    }
    Err(Error::new(
        Kind::Refused,
        format!("refused by safety check: the restored cluster could not read its encrypted data: {}; nothing was changed", check.problems.join("; ")),
    )
    .with_hint("give the EncryptionConfiguration that holds these keys with --encryption-config FILE (and put it in place for the API server), or --force to restore anyway (those objects stay unreadable until the keys are back)"))
}
