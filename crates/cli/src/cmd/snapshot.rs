//! `etcdguard snapshot …`: offline work on snapshot files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_bolt::OpenError;
use etcdguard_storage::snapshot_file::hex;
use etcdguard_storage::{Format, Release, SnapshotFile, TrailerCheck, VerifyReport};
use etcdguard_workflow::snapshot as workflow;
use serde_json::json;

use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Print a snapshot's hash, revision, total keys and size, exactly as `etcdutl snapshot status`.
    ///
    /// Works on files written by `snapshot save` (their sha256 trailer is checked too, and
    /// the result noted on stderr) and on a data dir's `member/snap/db` copied from a stopped
    /// etcd. The bbolt structure is checked first; a damaged file is an error, not a number.
    ///
    /// etcdutl 3.6+ prints a fifth column, the storage version, and counts live keys where
    /// 3.4/3.5 count every stored entry; 3.7 draws its table with box-drawing characters. The
    /// output is that of the etcd that wrote the file (its meta/storageVersion, else its
    /// cluster/clusterVersion, else the newest line; noted on stderr), or of --etcd-version.
    ///
    /// Example: etcdguard snapshot status /backup/snapshot.db -w table --etcd-version 3.6
    Status(StatusArgs),
    /// Check a snapshot thoroughly and say what, if anything, is broken.
    ///
    /// Checks the sha256 trailer, both meta pages, that every page is reachable once and only
    /// once, key order, the freelist, and etcd's schema: every revision key well formed and
    /// every value a KeyValue whose revisions agree with its key, plus the meta, members and
    /// lease buckets. Exits 0 when all is well; otherwise lists the first problems with their
    /// page, bucket and key and exits non-zero (see the exit codes in `etcdguard --help`).
    ///
    /// Example: etcdguard snapshot verify /backup/snapshot.db
    Verify(VerifyArgs),
    /// Restore a snapshot into new data dirs that etcd 3.4–3.7 start from (as `etcdutl snapshot restore`).
    #[command(long_about = crate::cmd::restore::RESTORE_LONG_HELP, after_help = crate::cmd::restore::RESTORE_EXAMPLES)]
    Restore(crate::cmd::restore::RestoreArgs),
    /// Save a snapshot of a live etcd member (v3 gRPC), as `etcdctl snapshot save`: written to
    /// FILE.part, sha256 trailer checked while streaming, fsynced, renamed; removed on failure.
    ///
    /// Example: etcdguard snapshot save /backup/etcd.db --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    Save(crate::cmd::save::SaveArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    /// Snapshot file (from `snapshot save`) or a copied `member/snap/db`.
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = StatusFormat::Simple)]
    pub write_out: StatusFormat,
    /// Do not compare the sha256 trailer with the content (faster on very large files).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Print as etcdutl of this release line does (3.4, 3.5, 3.6 or 3.7; a patch part such
    /// as 3.6.17 is ignored). Default: the line that wrote the snapshot.
    #[arg(long, value_name = "X.Y", value_parser = crate::args::release)]
    pub etcd_version: Option<Release>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StatusFormat {
    Simple,
    Table,
    Json,
    Fields,
}

impl From<StatusFormat> for Format {
    fn from(f: StatusFormat) -> Format {
        match f {
            StatusFormat::Simple => Format::Simple,
            StatusFormat::Table => Format::Table,
            StatusFormat::Json => Format::Json,
            StatusFormat::Fields => Format::Fields,
        }
    }
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Snapshot file (from `snapshot save`) or a copied `member/snap/db`.
    pub file: PathBuf,
    /// Output format of the report.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = VerifyFormat::Text)]
    pub write_out: VerifyFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum VerifyFormat {
    Text,
    Json,
}

pub fn run(cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Status(args) => status(args),
        SnapshotCommand::Verify(args) => verify(args),
        SnapshotCommand::Restore(args) => crate::cmd::restore::run(args),
        SnapshotCommand::Save(args) => crate::cmd::save::run(args),
    }
}

/// Opens a snapshot and maps every way it can be unusable to a message and exit code.
pub fn open_snapshot(path: &Path) -> Result<SnapshotFile, Failure> {
    Ok(workflow::open_snapshot(path)?)
}

/// Maps a bbolt open error to a user-facing failure.
pub fn db_failure(path: &Path, e: OpenError) -> Failure {
    etcdguard_workflow::error::db_error(path, e).into()
}

fn status(args: StatusArgs) -> Result<()> {
    let checked = workflow::snapshot_status(&args.file, args.skip_hash_check, args.etcd_version)?;
    print!("{}", checked.status.render(args.write_out.into()));
    if let Some(evidence) = &checked.detected {
        eprintln!(
            "printed as etcdutl {} prints it: {evidence} (--etcd-version picks another)",
            checked.status.release
        );
    }
    match checked.trailer {
        TrailerCheck::Verified => eprintln!("sha256 trailer verified"),
        TrailerCheck::Absent => eprintln!("no sha256 trailer (a plain bbolt file such as member/snap/db); content not checksummed"),
        _ => {}
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> Result<()> {
    let path = &args.file;
    let file = open_snapshot(path)?;
    let db = file.db().map_err(|e| db_failure(path, e))?;
    let release = || file.release_resident();
    let (trailer, report) = workflow::with_trailer_check(&file, false, || {
        etcdguard_storage::verify(&db, Some(&release))
    });
    let trailer = trailer.map_err(|e| {
        Failure::new(Code::Failure, format!("{}: reading for sha256: {e}", path.display()))
    })?;
    match args.write_out {
        VerifyFormat::Text => print!("{}", verify_text(path, &trailer, &report, db.page_size())),
        VerifyFormat::Json => println!("{}", verify_json(path, &trailer, &report, db.page_size())),
    }
    if let TrailerCheck::Mismatch { expected, actual } = trailer {
        return Err(workflow::trailer_error(path, &expected, &actual).into());
    }
    if !report.is_ok() {
        let n = report.structure.problem_count
            + report.schema_problem_count
            + report.metas.iter().filter(|m| m.is_err()).count();
        return Err(Failure::new(
            Code::Corrupt,
            format!("{}: {n} problem{} found", path.display(), if n == 1 { "" } else { "s" }),
        )
        .into());
    }
    Ok(())
}

fn trailer_text(t: &TrailerCheck) -> String {
    match t {
        TrailerCheck::Verified => "verified".into(),
        TrailerCheck::Absent => "absent (plain bbolt file)".into(),
        TrailerCheck::Skipped => "not checked".into(),
        TrailerCheck::Mismatch { expected, actual } => {
            format!("MISMATCH (trailer {}, content {})", hex(expected), hex(actual))
        }
    }
}

fn verify_text(path: &Path, trailer: &TrailerCheck, r: &VerifyReport, page_size: u32) -> String {
    let ok = r.is_ok() && !matches!(trailer, TrailerCheck::Mismatch { .. });
    let mut out = format!("{}: {}\n", path.display(), if ok { "OK" } else { "DAMAGED" });
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("  {label:<17}{value}\n"))
    };
    line(&mut out, "sha256 trailer", trailer_text(trailer));
    let metas: Vec<String> = r
        .metas
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Ok(m) => {
                format!("{i}: txid {}{}", m.txid, if i == r.active_meta { " (active)" } else { "" })
            }
            Err(e) => format!("{i}: DAMAGED ({e})"),
        })
        .collect();
    line(&mut out, "meta pages", metas.join(", "));
    let s = &r.structure;
    line(
        &mut out,
        "pages",
        format!(
            "{} in use, {} free, {} bytes each (freelist {})",
            s.reachable_pages,
            s.free_pages,
            page_size,
            if s.freelist_persisted { "persisted" } else { "not persisted" }
        ),
    );
    line(&mut out, "buckets", r.stats.buckets.join(" "));
    let st = &r.stats;
    let mut revs =
        format!("{} ({} tombstones), newest {}", st.revisions, st.tombstones, st.max_revision);
    if let Some(c) = st.compacted_revision {
        revs.push_str(&format!(", compacted at {c}"));
    }
    line(&mut out, "revisions", revs);
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into());
    line(
        &mut out,
        "raft",
        format!("consistent index {}, term {}", opt(st.consistent_index), opt(st.term)),
    );
    line(&mut out, "members, leases", format!("{}, {}", st.members, st.leases));
    if let Some(status) = &r.status {
        line(&mut out, "status", status.render(Format::Simple).trim_end().to_string());
    }
    let problems = r
        .structure
        .problems
        .iter()
        .map(|p| p.to_string())
        .chain(r.schema_problems.iter().map(|p| p.to_string()));
    let total = r.structure.problem_count + r.schema_problem_count;
    if total > 0 {
        out.push_str(&format!("  problems ({total}):\n"));
        for p in problems {
            out.push_str(&format!("    {p}\n"));
        }
        let shown = r.structure.problems.len() + r.schema_problems.len();
        if total > shown {
            out.push_str(&format!("    … and {} more\n", total - shown));
        }
    }
    out
}

fn verify_json(path: &Path, trailer: &TrailerCheck, r: &VerifyReport, page_size: u32) -> String {
    let structure: Vec<_> = r
        .structure
        .problems
        .iter()
        .map(|p| {
            json!({
                "page": p.page,
                "bucket": p.bucket.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>(),
                "key": p.key.as_ref().map(|k| etcdguard_bolt::walk::display_key(k)),
                "message": p.to_string(),
            })
        })
        .collect();
    let schema: Vec<_> = r
        .schema_problems
        .iter()
        .map(|p| json!({"bucket": p.bucket, "key": p.key, "message": p.to_string()}))
        .collect();
    let st = &r.stats;
    let v = json!({
        "file": path.display().to_string(),
        "ok": r.is_ok() && !matches!(trailer, TrailerCheck::Mismatch { .. }),
        "trailer": match trailer {
            TrailerCheck::Verified => "verified",
            TrailerCheck::Absent => "absent",
            TrailerCheck::Skipped => "skipped",
            TrailerCheck::Mismatch { .. } => "mismatch",
        },
        "metas": r.metas.iter().map(|m| match m {
            Ok(m) => json!({"ok": true, "txid": m.txid}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }).collect::<Vec<_>>(),
        "activeMeta": r.active_meta,
        "pageSize": page_size,
        "pagesInUse": r.structure.reachable_pages,
        "pagesFree": r.structure.free_pages,
        "buckets": st.buckets,
        "revisions": st.revisions,
        "tombstones": st.tombstones,
        "newestRevision": st.max_revision,
        "compactedRevision": st.compacted_revision,
        "consistentIndex": st.consistent_index,
        "term": st.term,
        "members": st.members,
        "leases": st.leases,
        "status": r.status.as_ref().map(|s| json!({
            "hash": s.hash, "revision": s.revision, "totalKey": s.total_key, "totalSize": s.total_size
        })),
        "problemCount": r.structure.problem_count + r.schema_problem_count,
        "structureProblems": structure,
        "schemaProblems": schema,
    });
    v.to_string()
}
