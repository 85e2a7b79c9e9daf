//! `backup verify ID`: read a backup back whole and check every byte.

use super::*;

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    /// Where to reassemble the snapshot while checking it (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Also read every pack of the repository and check it against its name and header.
    #[arg(long)]
    pub packs: bool,
    #[command(flatten)]
    pub parallel: ParallelArg,
}

pub(super) fn verify(args: VerifyArgs) -> Result<()> {
    let opts = backup::VerifyOptions {
        repo: RepoSpec { transfer: args.parallel.transfer(None), ..args.repo.spec() },
        id: args.id.clone(),
        scratch_dir: args.scratch_dir.clone(),
        packs: args.packs,
    };
    let v = backup::verify(&opts, &mut |note| eprintln!("{note}"))?;
    let m = &v.manifest;
    if args.out.json() {
        return crate::args::print_json(&json!({
            "id": m.id, "ok": true, "snapshotSize": m.snapshot.size, "sha256": m.snapshot.sha256,
            "trailer": matches!(v.trailer, TrailerCheck::Verified), "revision": m.etcd.revision,
            "files": backup::file_count(m),
        }));
    }
    println!(
        "backup {}: OK (snapshot {} sha256 {}, trailer {}, revision {}, {} files)",
        m.id,
        human(m.snapshot.size),
        m.snapshot.sha256,
        match v.trailer {
            TrailerCheck::Verified => "verified",
            _ => "absent",
        },
        m.etcd.revision,
        backup::file_count(m)
    );
    Ok(())
}
