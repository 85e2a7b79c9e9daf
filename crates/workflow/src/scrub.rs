//! Scrub: the agent's `--verify-every`. Re-reads stored backups with the checks of `backup
//! verify` (the snapshot's sha256, which covers every chunk, and trailer, bbolt structure and etcd
//! schema, the status against the manifest, every file) and reads every pack a checked
//! backup draws on whole (its content against its sha256 name, then its framing), so a
//! flipped bit anywhere in those packs is found, not only in the chunks of that backup.
//!
//! Each scrub checks the newest backup first, then older ones in rotation (the [`Cursor`]
//! remembers where the last scrub stopped), starting no new backup once the time budget is
//! spent (the newest is always checked; a backup under way is finished). Packs shared by
//! several backups are read once per round (a round ends when the rotation wraps), so a
//! deduplicated repository is not read many times over.
//!
//! The scrub takes no repository lock: a prune running meanwhile may remove a backup or
//! rewrite the index under it. A failed check is therefore repeated once when the index
//! changed, and a backup removed meanwhile is skipped, not reported as damage.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcdguard_repo::id::Id;
use etcdguard_repo::manifest::Manifest;
use etcdguard_repo::pack::Index;
use etcdguard_repo::{RepoError, Repository};

use crate::backup::check_stored;
use crate::error::{Error, Result};
use crate::repo::RepoSpec;
use crate::stop::Stop;

/// What a scrub reads, and for how long.
#[derive(Clone)]
pub struct ScrubOptions {
    pub repo: RepoSpec,
    /// Where snapshots are reassembled (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    /// No backup is started after this much time (the newest is always checked).
    pub budget: Duration,
    /// Record each backup that passed as verified (what `backup verify` records).
    pub record: bool,
}

/// Where the rotation stands between scrubs.
#[derive(Default)]
pub struct Cursor {
    /// The older backup checked last; the next scrub goes on with the next older one.
    last_older: Option<String>,
    /// Packs read whole in this round.
    packs_checked: HashSet<Id>,
}

/// One backup's result.
pub struct Checked {
    pub id: String,
    /// `Err` holds what is wrong (damage) or why it could not be read.
    pub result: std::result::Result<(), String>,
}

/// What one scrub did.
#[derive(Default)]
pub struct ScrubReport {
    pub checked: Vec<Checked>,
    /// Packs read whole.
    pub packs_checked: usize,
    /// Backups listed in the repository.
    pub backups: usize,
    /// Backups removed (by a prune) while they were being checked.
    pub vanished: usize,
    pub elapsed: Duration,
}

impl ScrubReport {
    pub fn failures(&self) -> impl Iterator<Item = &Checked> {
        self.checked.iter().filter(|c| c.result.is_err())
    }
}

/// Runs one scrub. `Err` only when the repository cannot be opened or listed; damage found in
/// a backup is in the report. A repository that does not exist yet (the agent's first backup
/// creates it) is an empty report. Lines for the operator go to `note`.
pub fn scrub(
    opts: &ScrubOptions,
    cursor: &mut Cursor,
    stop: &Stop,
    note: &mut dyn FnMut(&str),
) -> Result<ScrubReport> {
    let started = Instant::now();
    let repo = match opts.repo.open_unlocked() {
        Err(e) if e.kind == crate::Kind::NotFound => return Ok(ScrubReport::default()),
        other => other?,
    };
    let (backups, unreadable) = repo.list_backups()?;
    let mut report =
        ScrubReport { backups: backups.len() + unreadable.len(), ..ScrubReport::default() };
    // A manifest that does not read is damage too (its backup cannot be restored).
    for bad in &unreadable {
        let id = bad.split(':').next().unwrap_or(bad).to_string();
        report
            .checked
            .push(Checked { id, result: Err(format!("the manifest cannot be read: {bad}")) });
    }
    let order = rotation(&backups, cursor);
    let mut generation = repo.index_generation()?;
    let mut index = repo.load_index()?;
    for (n, m) in order.iter().enumerate() {
        if stop.is_raised() || (n > 0 && started.elapsed() >= opts.budget) {
            break;
        }
        let mut result = check_one(&repo, &index, m, opts, cursor, &mut report.packs_checked, note);
        if result.is_err() {
            // A prune may have run meanwhile: a removed backup is not damage, and a rewritten
            // index is reloaded and the check repeated once.
            match repo.manifest(&m.id) {
                Err(RepoError::BackupNotFound(_)) => {
                    report.vanished += 1;
                    continue;
                }
                _ => {
                    let now = repo.index_generation()?;
                    if now != generation {
                        generation = now;
                        index = repo.load_index()?;
                        result = check_one(
                            &repo,
                            &index,
                            m,
                            opts,
                            cursor,
                            &mut report.packs_checked,
                            note,
                        );
                    }
                }
            }
        }
        if result.is_ok() && opts.record {
            if let Err(e) = repo.record_verification(&m.id) {
                result = Err(Error::from(e));
            }
        }
        if n > 0 {
            cursor.last_older = Some(m.id.clone());
        }
        report
            .checked
            .push(Checked { id: m.id.clone(), result: result.map_err(|e| e.to_string()) });
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The newest backup, then the older ones from just past the cursor, wrapping around once.
/// When the rotation starts over, a new round begins: every pack is read again.
fn rotation<'m>(backups: &'m [Manifest], cursor: &mut Cursor) -> Vec<&'m Manifest> {
    // `backups` is oldest first.
    let Some((newest, older)) = backups.split_last() else { return Vec::new() };
    // Older backups newest first: the rotation walks back in time.
    let older: Vec<&Manifest> = older.iter().rev().collect();
    let start = match &cursor.last_older {
        Some(id) => older.iter().position(|m| &m.id == id).map_or(0, |p| p + 1),
        None => 0,
    };
    if start == 0 || start >= older.len() {
        cursor.packs_checked.clear();
    }
    let start = if start >= older.len() { 0 } else { start };
    let mut order = vec![newest];
    order.extend(older[start..].iter().chain(older[..start].iter()).copied());
    order
}

/// One backup: the checks of `backup verify`, then every pack it draws on not yet read in
/// this round.
fn check_one(
    repo: &Repository,
    index: &Index,
    m: &Manifest,
    opts: &ScrubOptions,
    cursor: &mut Cursor,
    packs_checked: &mut usize,
    note: &mut dyn FnMut(&str),
) -> Result<()> {
    check_stored(repo, index, m, opts.scratch_dir.as_deref(), note)?;
    let needed = repo.blobs_of(index, m)?;
    for pack in repo.packs_of(index, m)? {
        if cursor.packs_checked.contains(&pack) {
            continue;
        }
        let checked = repo
            .check_pack_for(&pack, index, &needed)
            .map_err(|e| Error::from(e.context(&format!("backup {}", m.id))))?;
        if let Some(line) = checked {
            note(&line);
        }
        cursor.packs_checked.insert(pack);
        *packs_checked += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_checks_the_newest_first_then_walks_back_and_wraps() {
        // Manifests only need ids and order here.
        let mk = |id: &str| -> Manifest {
            let json = serde_json::json!({
                "format": "etcdguard-repository", "version": 1, "id": id, "created": "2026-01-01T00:00:00Z",
                "tool_version": "0", "hostname": "h", "source": {"kind": "file", "path": "x"},
                "etcd": {"cluster_id": null, "member_id": null, "member_name": null, "version": null, "revision": 1,
                         "compacted_revision": null, "hash": 0, "total_key": 0, "total_size": 0, "page_size": 4096,
                         "consistent_index": null, "term": null, "trailer": "verified", "verified": true},
                "snapshot": {"size": 0, "sha256": "", "chunk_size": 4096, "chunks": 0, "chunk_lists": []},
                "encoding": {"compression": "zstd", "encryption": "none"},
                "sizes": {"original": 0, "added": 0, "blobs_added": 0, "blobs_total": 0}
            });
            serde_json::from_value(json).unwrap()
        };
        let backups: Vec<Manifest> = ["a", "b", "c", "d"].iter().map(|i| mk(i)).collect();
        let mut cursor = Cursor::default();
        let ids = |o: Vec<&Manifest>| o.iter().map(|m| m.id.clone()).collect::<Vec<_>>().join("");
        assert_eq!(ids(rotation(&backups, &mut cursor)), "dcba");
        cursor.last_older = Some("c".into());
        cursor.packs_checked.insert(Id([1; 32]));
        assert_eq!(ids(rotation(&backups, &mut cursor)), "dbac");
        assert_eq!(cursor.packs_checked.len(), 1, "mid-round: packs read stay read");
        cursor.last_older = Some("a".into());
        assert_eq!(ids(rotation(&backups, &mut cursor)), "dcba");
        assert!(cursor.packs_checked.is_empty(), "a wrapped rotation starts a new round");
        assert!(rotation(&[], &mut cursor).is_empty());
    }
}
