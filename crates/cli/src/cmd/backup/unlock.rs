//! `backup unlock`: stale locks and leftovers of killed runs removed.

use super::*;

#[derive(Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Remove live locks too (make sure no etcdguard uses the repository first).
    #[arg(long)]
    pub remove_all: bool,
}

pub(super) fn unlock(args: UnlockArgs) -> Result<()> {
    let report = backup::unlock(&args.repo.spec(), args.remove_all)?;
    if args.out.json() {
        let locks: Vec<_> = report
            .locks
            .iter()
            .map(|l| {
                json!({
                    "key": l.key, "removed": l.removed, "stale": l.stale, "written": l.written,
                    "staleAt": l.stale_at, "holder": l.info.as_ref().map(|i| i.describe()),
                })
            })
            .collect();
        return crate::args::print_json(
            &json!({ "locks": locks, "temporariesRemoved": report.temporaries_removed }),
        );
    }
    let (mut removed, mut kept) = (0, 0);
    for l in &report.locks {
        let what = match &l.info {
            Some(i) => i.describe(),
            None => "not a readable lock file".into(),
        };
        let written = l.written.format("%Y-%m-%d %H:%M:%S UTC");
        match (l.removed, l.stale) {
            (true, true) => println!("removed stale lock {}: {what}, last written {written}", l.key),
            (true, false) => eprintln!(
                "warning: removed live lock {}: {what}, last written {written}; if its holder still runs it keeps \
                 going unprotected until its next refresh rewrites the lock",
                l.key
            ),
            (false, _) => println!(
                "kept {} {}: {what}, last written {written}; stale at {} unless its holder refreshes it (--remove-all removes it)",
                if l.info.is_some() { "live lock" } else { "young lock object" },
                l.key,
                l.stale_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        }
        if l.removed {
            removed += 1;
        } else {
            kept += 1;
        }
    }
    println!(
        "{removed} lock(s) removed, {kept} live lock(s) kept, {} temporary file(s) removed",
        report.temporaries_removed
    );
    Ok(())
}
