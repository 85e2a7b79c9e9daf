//! `etcdguard backup repair`: check every pack and mend what the data at hand allows.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use etcdguard_repo::repository::RepairReport;
use etcdguard_workflow::repair::{repair as run_repair, RepairOptions};
use etcdguard_workflow::RepoSpec;
use serde_json::json;

use crate::args::ConnArgs;
use crate::args::TextJson;
use crate::args::{ParallelArg, RepoArg};
use crate::cmd::table;
use crate::exit::{Code, Failure};

#[derive(Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// A snapshot (or any file backed up) that may hold lost chunks; repeatable. An older
    /// snapshot of the same cluster shares most chunks with the damaged backups; the very
    /// file a backup was made of brings that backup back whole.
    #[arg(long = "from-file", value_name = "FILE")]
    pub from_files: Vec<PathBuf>,
    /// Another repository to copy lost chunks from, when its chunk ids agree with this one's
    /// (a plain repository, or one with the same key; opened with the same passphrase).
    #[arg(long = "from-repo", value_name = "URL", value_parser = crate::args::repo)]
    pub from_repos: Vec<String>,
    /// Take a snapshot of the live cluster (connection flags as `snapshot save`) and look
    /// for lost chunks in it: pages that did not change since the damaged backup match.
    #[arg(long)]
    pub from_live: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Where the live snapshot is spooled (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Read and report; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub parallel: ParallelArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub fn repair(args: RepairArgs) -> Result<()> {
    let spec = RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() };
    let repos = args
        .from_repos
        .iter()
        .map(|url| RepoSpec { url: url.clone(), ..args.repo.spec() })
        .collect();
    let opts = RepairOptions {
        repo: spec,
        files: args.from_files.clone(),
        repos,
        live: args.from_live.then(|| args.conn.flags()),
        scratch_dir: args.scratch_dir.clone(),
        dry_run: args.dry_run,
    };
    let report = run_repair(&opts, &mut |line| eprintln!("{line}"))?;
    if args.write_out == TextJson::Json {
        crate::args::print_json(&report_json(&report))?;
    } else {
        print!("{}", report_text(&report));
    }
    // Exit 10 while any backup stays unrestorable (or, dry, while there is damage to mend).
    let damaged = !report.unrestorable.is_empty()
        || !report.unreadable_manifests.is_empty()
        || (report.dry_run && !report.is_clean());
    if damaged {
        return Err(Failure::new(Code::Corrupt, "the repository is not whole (see above)").into());
    }
    Ok(())
}

fn report_json(r: &RepairReport) -> serde_json::Value {
    json!({
        "dryRun": r.dry_run,
        "packsChecked": r.packs_checked,
        "packsDamaged": r.packs_damaged,
        "packsReindexed": r.packs_reindexed,
        "blobsDamaged": r.blobs_damaged,
        "blobsSalvaged": r.blobs_salvaged,
        "blobsRefilled": r.blobs_refilled,
        "blobsMissing": r.blobs_missing,
        "unrestorable": r.unrestorable.iter().map(|u| json!({
            "id": u.id, "created": u.created, "missingBlobs": u.missing_blobs, "parts": u.parts,
        })).collect::<Vec<_>>(),
        "unreadableManifests": r.unreadable_manifests,
        "damageRecordsRemoved": r.damage_records_removed,
        "indexFilesReplaced": r.index_files_replaced,
    })
}

fn report_text(r: &RepairReport) -> String {
    let (would, did) = if r.dry_run { ("would be ", "would ") } else { ("", "") };
    let mut out =
        format!("{} pack(s) read whole: {} damaged", r.packs_checked, r.packs_damaged.len());
    if r.packs_reindexed > 0 {
        out.push_str(&format!(", {} in no index ({would}indexed again)", r.packs_reindexed));
    }
    out.push('\n');
    for p in &r.packs_damaged {
        out.push_str(&format!(
            "  damaged pack {p} ({did}{}removed)\n",
            if r.dry_run { "be " } else { "" }
        ));
    }
    if r.blobs_damaged > 0 || r.blobs_salvaged > 0 {
        out.push_str(&format!(
            "{} damaged blob(s); {} sound blob(s) of damaged packs {would}salvaged\n",
            r.blobs_damaged, r.blobs_salvaged
        ));
    }
    for (source, n) in &r.blobs_refilled {
        out.push_str(&format!("{n} lost blob(s) {would}stored again from {source}\n"));
    }
    if r.unrestorable.is_empty() {
        out.push_str(if r.dry_run && !r.is_clean() {
            "every backup would be restorable after the repair\n"
        } else {
            "every backup is restorable\n"
        });
    } else {
        out.push_str(&format!(
            "{} backup(s) stay unrestorable ({} blob(s) lost); give the snapshot they were made of with --from-file, \
             try --from-live or --from-repo, or remove them with `etcdguard backup delete ID`:\n",
            r.unrestorable.len(),
            r.blobs_missing
        ));
        let mut rows =
            vec![["ID", "CREATED (UTC)", "LOST BLOBS", "PARTS"].map(String::from).to_vec()];
        for u in &r.unrestorable {
            rows.push(vec![
                u.id.clone(),
                u.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                u.missing_blobs.to_string(),
                u.parts.join(", "),
            ]);
        }
        out.push_str(&table(&rows));
    }
    for m in &r.unreadable_manifests {
        out.push_str(&format!("unreadable manifest: {m}\n"));
    }
    out
}
