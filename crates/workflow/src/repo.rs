//! Opening a repository from what the user gave: its URL and, for an encrypted one, a
//! passphrase, read only when it is needed (a metadata-only command never reads the file).

use std::sync::Arc;

use etcdguard_repo::crypto::Passphrase;
use etcdguard_repo::repository::Transfer;
use etcdguard_repo::{open_url, Manifest, RepoError, Repository};

use crate::error::{repo_error, Result};

/// Where the passphrase comes from; called at most when an encrypted repository is unlocked
/// (and when a new one may be created encrypted). The command line reads its flag or
/// environment variable here.
pub type PassphraseSource = Arc<dyn Fn() -> Result<Option<Passphrase>> + Send + Sync>;

/// A repository as the user named it.
#[derive(Clone)]
pub struct RepoSpec {
    /// A local directory, s3://, gs:// or az:// URL.
    pub url: String,
    pub passphrase: PassphraseSource,
    /// Parallelism, rate limit and progress of the backups and restores it runs.
    pub transfer: Transfer,
    /// A key management service key that unwraps one of the repository's key files
    /// (`--kms-key`, [`etcdguard_repo::kms::open_kms`]); tried before the passphrase.
    pub kms: Option<String>,
}

impl RepoSpec {
    /// A repository without a passphrase.
    pub fn new(url: impl Into<String>) -> RepoSpec {
        RepoSpec {
            url: url.into(),
            passphrase: Arc::new(|| Ok(None)),
            transfer: Transfer::default(),
            kms: None,
        }
    }

    pub fn passphrase(&self) -> Result<Option<Passphrase>> {
        (self.passphrase)()
    }

    /// Opens the repository for reading metadata (manifests, index): no passphrase needed.
    pub fn open(&self) -> Result<Repository> {
        let store = open_url(&self.url).map_err(|e| repo_error(e.into()))?;
        let mut r = Repository::open(store)?;
        r.set_transfer(self.transfer.clone());
        Ok(r)
    }

    /// Opens the repository for reading or writing content: an encrypted one is unlocked.
    pub fn open_unlocked(&self) -> Result<Repository> {
        let mut r = self.open()?;
        self.unlock(&mut r)?;
        Ok(r)
    }

    /// Unlocks `r` with the passphrase when it is encrypted. A passphrase given for a
    /// repository that is not encrypted is refused: someone who can write to the bucket can
    /// turn an encrypted repository into a plain one (remove `keys/`, rewrite `config`) and
    /// plant content; with the passphrase in hand the user expected sealed, authenticated
    /// content, so nothing from such a repository is used.
    pub fn unlock(&self, r: &mut Repository) -> Result<()> {
        if !r.is_encrypted() {
            if self.passphrase()?.is_some() || self.kms.is_some() {
                return Err(crate::error::Error::new(
                    crate::error::Kind::KeyRequired,
                    format!("{} is not encrypted, but a passphrase was given", r.location()),
                )
                .with_hint(
                    "if this repository was created encrypted, its keys were removed and its config rewritten: do not \
                     trust its content. Otherwise unset ETCDGUARD_PASSPHRASE/--passphrase-file for it",
                ));
            }
            return Ok(());
        }
        if let Some(spec) = &self.kms {
            let kms = etcdguard_repo::kms::open_kms(spec)?;
            match (r.unlock_with_kms(kms.as_ref()), self.passphrase()?) {
                (Ok(()), _) => return Ok(()),
                // A passphrase given as well may still open the repository.
                (Err(_), Some(p)) => return Ok(r.unlock(&p)?),
                (Err(e), None) => return Err(e.into()),
            }
        }
        match self.passphrase()? {
            Some(p) => Ok(r.unlock(&p)?),
            None => Err(repo_error(RepoError::KeyRequired(r.location()))),
        }
    }
}

/// Adds a key file wrapped by the key management service key `kms_spec` to the (unlocked)
/// repository; returns its id and the repository's location.
pub fn add_kms_key(repo: &RepoSpec, kms_spec: &str) -> Result<(String, String)> {
    let r = repo.open_unlocked()?;
    let kms = etcdguard_repo::kms::open_kms(kms_spec)?;
    let id = r.add_kms_key(kms.as_ref())?;
    Ok((id, r.location()))
}

/// The manifest of backup `id` (an id, a unique prefix or `latest`).
pub fn resolve(repo: &Repository, id: &str) -> Result<Manifest> {
    let id = repo.resolve(id)?;
    Ok(repo.manifest(&id)?)
}

/// How many backups the repository lists, when it can be read.
pub fn count_backups(repo: &RepoSpec) -> Option<usize> {
    repo.open().ok()?.list_backups().ok().map(|(backups, _)| backups.len())
}
