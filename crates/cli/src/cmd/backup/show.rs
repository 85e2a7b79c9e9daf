//! `backup show ID`: one backup's manifest, in full.

use super::*;

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub(super) fn show(args: ShowArgs) -> Result<()> {
    let mut repo = open_repo(&args.repo)?;
    // The file list and certificates of an encrypted repository's manifests are sealed: open
    // them (and check the clear part) when a passphrase is given, else say where they went.
    let authenticated = unlock_if_given(&mut repo, &args.repo)?;
    let m = resolve(&repo, &args.id)?;
    if args.write_out == TextJson::Json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("authenticated".into(), authenticated.into());
        }
        crate::args::print_json(&v)?;
        return Ok(());
    }
    let verified_at = repo.verification(&m.id).map_err(failure)?;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20}{v}\n"));
    line("backup", m.id.clone());
    line(
        "created",
        format!("{} ({} ago)", m.created.format("%Y-%m-%d %H:%M:%S UTC"), age(m.created)),
    );
    line("cluster", m.cluster.clone().unwrap_or_else(|| "-".into()));
    line("labels", if m.labels.is_empty() { "-".into() } else { labels_text(&m) });
    line(
        "source",
        match &m.source {
            Source::File { path, import: None } => format!("file {path}"),
            Source::File { path, import: Some(i) } => {
                format!(
                    "imported {} backup {path} (on {})",
                    i.format,
                    i.imported.format("%Y-%m-%d %H:%M:%S UTC")
                )
            }
            Source::Cluster { endpoint } => format!("cluster {endpoint}"),
        },
    );
    line("host, tool", format!("{}, etcdguard {}", m.hostname, m.tool_version));
    let e = &m.etcd;
    line(
        "revision",
        format!(
            "{}{}",
            e.revision,
            e.compacted_revision.map(|c| format!(" (compacted at {c})")).unwrap_or_default()
        ),
    );
    line(
        "status",
        format!(
            "hash {:x}, {} keys, db size {}, page size {}",
            e.hash,
            e.total_key,
            human(e.total_size),
            e.page_size
        ),
    );
    if let (Some(ci), Some(t)) = (e.consistent_index, e.term) {
        line("raft", format!("consistent index {ci}, term {t}"));
    }
    for (k, v) in
        [("cluster id", &e.cluster_id), ("member", &e.member_id), ("etcd version", &e.version)]
    {
        if let Some(v) = v {
            line(k, v.clone());
        }
    }
    line(
        "checked",
        format!(
            "trailer {}; snapshot {} at create; {}",
            e.trailer,
            if e.verified { "verified" } else { "not verified" },
            verified_at
                .map(|t| format!("backup verified {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_else(|| "backup never verified since".into())
        ),
    );
    line("snapshot", format!("{} sha256 {}", human(m.snapshot.size), m.snapshot.sha256));
    line(
        "chunks",
        format!(
            "{} of {} ({} chunk lists)",
            m.snapshot.chunks,
            human(m.snapshot.chunk_size as u64),
            m.snapshot.chunk_lists.len()
        ),
    );
    line(
        "encoding",
        format!("compression {}, encryption {}", m.encoding.compression, m.encoding.encryption),
    );
    line(
        "size",
        format!(
            "{} original, {} added to the repository",
            human(m.sizes.original),
            human(m.sizes.added)
        ),
    );
    if repo.is_encrypted() && !authenticated {
        line(
            "authenticated",
            "no: the passphrase was not given, so the fields above are as stored, unchecked".into(),
        );
    }
    if m.contents_sealed() {
        // Files and certificates are in the sealed part of an encrypted repository's manifest.
        line("files", "file list is encrypted, give the passphrase (ETCDGUARD_PASSPHRASE or --passphrase-file) to list it".into());
        line("certificates", "encrypted with the file list".into());
        print!("{out}");
        return Ok(());
    }
    line("files", m.files.len().to_string());
    print!("{out}");
    for f in &m.files {
        let kind = match f.kind {
            FileKind::File => format!("{:>10}", human(f.content.as_ref().map_or(0, |c| c.size))),
            FileKind::Dir => format!("{:>10}", "dir"),
            FileKind::Symlink => format!("{:>10}", "symlink"),
        };
        let target = f.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        println!("  {:04o} {kind}  {}{target}", f.mode, f.path);
    }
    if !m.certificates.is_empty() {
        println!(
            "{:<20}{} (notAfter; time left when the backup was taken)",
            "certificates",
            m.certificates.len()
        );
        for c in &m.certificates {
            let left = match (c.not_after - m.created).to_std() {
                Ok(d) if !d.is_zero() => etcdguard_workflow::certs::rough(d),
                _ => "expired".into(),
            };
            println!(
                "  {}  {left:>9}  {}  {}",
                c.not_after.format("%Y-%m-%d %H:%M:%S UTC"),
                c.path,
                c.subject
            );
        }
    }
    Ok(())
}
