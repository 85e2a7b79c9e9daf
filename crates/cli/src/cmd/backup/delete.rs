//! `backup delete ID`: forget one backup (its data goes at the next prune).

use super::*;

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id or unique prefix.
    pub id: String,
    /// Delete even the newest verified backup.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn delete(args: DeleteArgs) -> Result<()> {
    let id = backup::delete(&args.repo.spec(), &args.id, args.force)?;
    if args.out.json() {
        return crate::args::print_json(&json!({ "id": id, "deleted": true }));
    }
    println!("backup {id} deleted; run `etcdguard backup prune` to free its space");
    Ok(())
}
