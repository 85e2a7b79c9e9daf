//! `backup repair`: check every pack of a repository and mend what the data at hand allows
//! (see `etcdguard_repo::repository::repair`). Sources of lost content: snapshot files, other
//! repositories, and a fresh snapshot of the live cluster.

use std::path::PathBuf;

use etcdguard_client::ConnectFlags;
use etcdguard_repo::repository::{RepairReport, RepairSource};

use crate::backup::snapshot_into_spool;
use crate::error::{Error, Result};
use crate::repo::RepoSpec;

pub struct RepairOptions {
    pub repo: RepoSpec,
    /// Snapshot (or other) files that may hold lost chunks.
    pub files: Vec<PathBuf>,
    /// Other repositories whose blob ids agree with this one's (a plain repository, or one
    /// with the same key).
    pub repos: Vec<RepoSpec>,
    /// Take a snapshot of the live cluster first and use it as a source.
    pub live: Option<ConnectFlags>,
    /// Where the live snapshot is spooled (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    pub dry_run: bool,
}

pub fn repair(opts: &RepairOptions, note: &mut dyn FnMut(&str)) -> Result<RepairReport> {
    let repo = opts.repo.open_unlocked()?;
    let others = opts.repos.iter().map(|r| r.open_unlocked()).collect::<Result<Vec<_>>>()?;
    let mut files = opts.files.clone();
    for f in &files {
        std::fs::metadata(f)
            .map_err(|e| Error::usage(format!("--from-file {}: {e}", f.display())))?;
    }
    // The spool lives until the repair is done.
    let mut spool_dir = None;
    if let Some(flags) = &opts.live {
        let parent = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
        let (dir, path) = snapshot_into_spool(flags, &parent, "to look for lost chunks in", note)?;
        files.push(path);
        spool_dir = Some(dir);
    }
    let mut sources: Vec<RepairSource<'_>> = files.into_iter().map(RepairSource::File).collect();
    sources.extend(others.iter().map(RepairSource::Repository));
    note(&format!(
        "reading every pack of {}{}",
        repo.location(),
        if opts.dry_run { " (dry run: nothing is changed)" } else { "" }
    ));
    let report = repo.repair(&sources, opts.dry_run)?;
    drop(spool_dir);
    Ok(report)
}
