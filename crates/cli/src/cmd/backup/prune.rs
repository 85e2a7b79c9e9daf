//! `backup prune`: retention, then the unused data freed.

use super::*;

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Show what would be removed and why; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub(super) fn prune(args: PruneArgs) -> Result<()> {
    let report = backup::prune(&args.repo.spec(), args.keep.policy().as_ref(), args.dry_run)?;
    if args.write_out == TextJson::Json {
        let v = json!({
            "dryRun": report.dry_run,
            "backups": report.decisions.iter().map(|d| json!({
                "id": d.id, "created": d.time, "keep": d.keep, "reasons": d.reasons,
            })).collect::<Vec<_>>(),
            "backupsRemoved": report.manifests_removed,
            "packsDeleted": report.packs_deleted,
            "packsRepacked": report.packs_repacked,
            "orphanPacks": report.orphan_packs,
            "bytesBefore": report.bytes_before,
            "bytesAfter": report.bytes_after,
        });
        crate::args::print_json(&v)?;
        return Ok(());
    }
    let mut rows = vec![["ID", "CREATED (UTC)", "ACTION", "WHY"].map(String::from).to_vec()];
    for d in &report.decisions {
        rows.push(vec![
            d.id.clone(),
            d.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            if d.keep {
                "keep".into()
            } else if report.dry_run {
                "would remove".into()
            } else {
                "removed".into()
            },
            if d.keep { d.reasons.join(", ") } else { "matches no keep rule".into() },
        ]);
    }
    if !report.decisions.is_empty() {
        print!("{}", table(&rows));
    }
    let verb = if report.dry_run { "would free" } else { "freed" };
    println!(
        "{} backup(s) {}; {} pack(s) {}, {} repacked ({} left by interrupted backups); {verb} {} ({} -> {})",
        report.manifests_removed,
        if report.dry_run { "to remove" } else { "removed" },
        report.packs_deleted,
        if report.dry_run { "to delete" } else { "deleted" },
        report.packs_repacked,
        report.orphan_packs,
        human(report.bytes_before.saturating_sub(report.bytes_after)),
        human(report.bytes_before),
        human(report.bytes_after),
    );
    if report.missing_packs > 0 {
        eprintln!(
            "warning: {} pack(s) named in the index are missing; run `etcdguard backup verify`",
            report.missing_packs
        );
    }
    Ok(())
}
