//! `backup url ID`: a presigned URL of a backup's snapshot.

use super::*;

#[derive(Args)]
pub struct UrlArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    /// How long the URLs stay valid (e.g. 15m, 1h, 7d; S3 allows at most 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub expires: Duration,
    /// Print URLs of the backup's repository objects (manifest, index, packs) instead of
    /// exporting its snapshot: for a restore that runs etcdguard on the far side.
    #[arg(long)]
    pub objects: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub(super) fn url(args: UrlArgs) -> Result<()> {
    if args.objects {
        let (m, urls) = backup::object_urls(&args.repo.spec(), &args.id, args.expires)?;
        match args.write_out {
            TextJson::Json => {
                let v: Vec<_> = urls.iter().map(|(k, u)| json!({"object": k, "url": u})).collect();
                crate::args::print_json(
                    &json!({"backup": m.id, "expiresInSeconds": args.expires.as_secs(), "objects": v}),
                )?;
            }
            TextJson::Text => {
                for (k, u) in &urls {
                    println!("{k}\t{u}");
                }
            }
        }
        let _ = std::io::stdout().flush();
        return Ok(());
    }
    let e = backup::export_url(&args.repo.spec(), &args.id, args.expires)?;
    let m = &e.manifest;
    eprintln!(
        "backup {}: snapshot ({}, sha256 {}) is {} in {}; the URL is valid for {}",
        m.id,
        human(m.snapshot.size),
        m.snapshot.sha256,
        e.key,
        e.location,
        duration_short(args.expires)
    );
    match args.write_out {
        TextJson::Json => crate::args::print_json(&json!({
            "backup": m.id, "object": e.key, "url": e.url, "size": m.snapshot.size,
            "sha256": m.snapshot.sha256, "expiresInSeconds": args.expires.as_secs(),
        }))?,
        TextJson::Text => println!("{}", e.url),
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
