//! `backup copy` (and the agent's `--copy-to`): backups of one repository into a second one,
//! which may be another kind of store and is sealed under its own key. See
//! `etcdguard_repo::repository::copy` for what a copy keeps and checks.
//!
//! ## How it works
//!
//! `copy::copy` is `backup copy` and the agent's `--copy-to`: it opens the source unlocked,
//! opens or creates the destination (`InitOptions::like` the source; an encrypted source is
//! refused into a plain destination), and copies the chosen backups oldest first with
//! `Repository::copy_backup_from` and `copy_segments_from`; a failure that concerns one backup
//! (damage at the source, another backup under its id) is reported as a `CopyEvent` and the
//! rest go on, anything else stops the copy.

use std::collections::BTreeSet;

use etcdguard_repo::repository::CopyOutcome;
use etcdguard_repo::{open_url, InitOptions, Manifest, Repository};

use crate::error::{repo_error, Error, Kind, Result};
use crate::repo::RepoSpec;

/// What to copy where.
#[derive(Clone)]
pub struct CopyOptions {
    /// The repository backups are read from (only read: no lock, no write).
    pub from: RepoSpec,
    /// The repository they are copied to; created, chunked as the source, when missing
    /// (encrypted when `to` has a passphrase).
    pub to: RepoSpec,
    /// Ids, unique prefixes or `latest`; empty: every backup of the source.
    pub backups: Vec<String>,
    /// Only those at least as new as the destination's newest backup (the agent: a copy
    /// that failed is caught up by the next, the newest one's new segments follow, and what
    /// the destination's own retention removed is not brought back).
    pub from_destination_newest: bool,
}

/// What a copy did, as it goes.
#[derive(Debug)]
pub enum CopyEvent<'a> {
    /// The destination did not exist and was made.
    Created {
        location: String,
        encrypted: bool,
    },
    /// The manifest as stored at the destination (its sizes say what the copy added there).
    Copied(&'a Manifest),
    AlreadyThere(&'a Manifest),
    /// Continuous-capture segments and gap records of a full backup, copied.
    Changes {
        id: &'a str,
        segments: usize,
        gaps: usize,
    },
    /// This backup was not copied; the others go on.
    Failed {
        id: &'a str,
        error: &'a Error,
    },
}

/// What a finished copy did.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub copied: Vec<String>,
    pub already_there: Vec<String>,
    pub segments: usize,
    pub gaps: usize,
}

/// Failures that concern one backup (its data at the source, its id at the destination):
/// the copy of the others goes on. Anything else (the destination unreachable, a lock, a
/// key) would fail every backup the same way, so it stops the copy.
fn concerns_one_backup(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Corrupt | Kind::ChecksumMismatch | Kind::DestinationExists | Kind::NotFound
    )
}

/// Copies the chosen backups, oldest first, with their segments and gap records. A backup
/// whose copy fails (a damaged source blob, another backup under its id at the
/// destination) is reported and skipped; the copy then fails with the first such error
/// after trying every backup.
pub fn copy(opts: &CopyOptions, on: &mut dyn FnMut(CopyEvent)) -> Result<CopyReport> {
    let source = opts.from.open_unlocked()?;
    let mut chosen = choose(&source, &opts.backups)?;
    let dest = open_destination(&source, &opts.to, on)?;
    if opts.from_destination_newest {
        if let Some(newest) = dest.list_backups()?.0.last() {
            chosen.retain(|m| m.created >= newest.created);
        }
    }
    let index = source.load_index()?;
    let mut report = CopyReport::default();
    let mut failures: Vec<(String, Error)> = Vec::new();
    for manifest in &chosen {
        let result = dest.copy_backup_from(&source, &index, manifest).map_err(repo_error).and_then(
            |outcome| {
                match &outcome {
                    CopyOutcome::Copied(copied) => {
                        on(CopyEvent::Copied(copied));
                        report.copied.push(manifest.id.clone());
                    }
                    CopyOutcome::AlreadyThere => {
                        on(CopyEvent::AlreadyThere(manifest));
                        report.already_there.push(manifest.id.clone());
                    }
                }
                let (segments, gaps) =
                    dest.copy_segments_from(&source, &manifest.id).map_err(repo_error)?;
                if segments + gaps > 0 {
                    on(CopyEvent::Changes { id: &manifest.id, segments, gaps });
                }
                report.segments += segments;
                report.gaps += gaps;
                Ok(())
            },
        );
        // The repository's errors name the backup (and the pack or object).
        if let Err(e) = result {
            if !concerns_one_backup(e.kind) {
                return Err(e);
            }
            on(CopyEvent::Failed { id: &manifest.id, error: &e });
            failures.push((manifest.id.clone(), e));
        }
    }
    match failures.into_iter().next() {
        None => Ok(report),
        Some((_, first)) if chosen.len() == 1 => Err(first),
        Some((_, first)) => {
            let failed = chosen.len() - report.copied.len() - report.already_there.len();
            Err(Error::new(
                first.kind,
                format!(
                    "{failed} of {} backups were not copied; the first: {}",
                    chosen.len(),
                    first.message
                ),
            ))
        }
    }
}

/// The backups named (all when none is), oldest first, each once.
fn choose(source: &Repository, wanted: &[String]) -> Result<Vec<Manifest>> {
    let (all, unreadable) = source.list_backups()?;
    if wanted.is_empty() {
        if let Some(bad) = unreadable.first() {
            // Copying the rest would look like a complete copy.
            return Err(Error::new(
                Kind::Corrupt,
                format!("{}: a manifest could not be read: {bad}", source.location()),
            ));
        }
        return Ok(all);
    }
    let mut ids = BTreeSet::new();
    for w in wanted {
        ids.insert(source.resolve(w)?);
    }
    let mut chosen = Vec::new();
    for id in ids {
        match all.iter().find(|m| m.id == id) {
            Some(m) => chosen.push(m.clone()),
            None => chosen.push(source.manifest(&id)?),
        }
    }
    chosen.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(chosen)
}

/// Opens the destination, unlocked, or creates it chunked as the source. A copy never
/// takes backups out of an encrypted repository into a plain one (their CA keys would be
/// stored in clear), nor pretends to encrypt into a plain one.
fn open_destination(
    source: &Repository,
    to: &RepoSpec,
    on: &mut dyn FnMut(CopyEvent),
) -> Result<Repository> {
    let store = open_url(&to.url).map_err(|e| repo_error(e.into()))?;
    let passphrase = to.passphrase()?;
    let plain_from_sealed = |location: String| {
        Error::usage(format!(
            "{} is encrypted and {location} would not be: its backups (with their CA keys) would be stored in clear",
            source.location()
        ))
        .with_hint("give the destination a passphrase (ETCDGUARD_TO_PASSPHRASE or --to-passphrase-file); a new destination is created encrypted with it")
    };
    let mut dest = match Repository::open(store.clone()) {
        Ok(r) => r,
        Err(etcdguard_repo::RepoError::NotARepository(location)) => {
            if source.is_encrypted() && passphrase.is_none() {
                return Err(plain_from_sealed(location));
            }
            if passphrase.is_none() && to.kms.is_some() {
                return Err(Error::usage(format!(
                    "{location} holds no repository yet: a new one is created encrypted with a passphrase; give \
                     ETCDGUARD_TO_PASSPHRASE or --to-passphrase-file as well and the KMS key is added as a second key"
                )));
            }
            let r =
                Repository::init(store, &InitOptions::like(source.config(), passphrase.clone()))?;
            if let Some(kms) = &to.kms {
                r.add_kms_key(etcdguard_repo::kms::open_kms(kms)?.as_ref())?;
            }
            on(CopyEvent::Created { location: r.location(), encrypted: r.is_encrypted() });
            r
        }
        Err(e) => return Err(e.into()),
    };
    if !dest.is_encrypted() && source.is_encrypted() {
        return Err(plain_from_sealed(dest.location()));
    }
    if !dest.is_encrypted() && passphrase.is_some() {
        return Err(Error::usage(format!(
            "{} is not encrypted, but a passphrase was given for it; the copies would be stored in clear",
            dest.location()
        ))
        .with_hint("copy to a new location (it is created encrypted), or unset ETCDGUARD_TO_PASSPHRASE/--to-passphrase-file"));
    }
    to.unlock(&mut dest)?;
    dest.set_transfer(to.transfer.clone());
    Ok(dest)
}
