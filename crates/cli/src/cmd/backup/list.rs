//! `backup list`: the backups of a repository, newest last.

use super::*;

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

pub(super) fn list(args: ListArgs) -> Result<()> {
    let mut repo = open_repo(&args.repo)?;
    let authenticated = unlock_if_given(&mut repo, &args.repo)?;
    let (backups, bad) = repo.list_backups().map_err(failure)?;
    for b in &bad {
        eprintln!("warning: unreadable manifest {b}");
    }
    match args.write_out {
        TableJson::Json => {
            let rows: Vec<_> = backups
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "created": m.created,
                        "ageSeconds": (Utc::now() - m.created).num_seconds(),
                        "cluster": m.cluster,
                        "revision": m.etcd.revision,
                        "size": m.sizes.original,
                        "snapshotSize": m.snapshot.size,
                        "added": m.sizes.added,
                        "verified": m.etcd.verified,
                        // When `backup verify` or a scrub last passed on it (None: never).
                        "lastVerified": repo.verification(&m.id).ok().flatten(),
                        // When a restore drill last passed on it (None: never).
                        "lastDrilled": repo.drill_record(&m.id).ok().flatten(),
                        "labels": m.labels,
                        "hostname": m.hostname,
                        "authenticated": authenticated,
                    })
                })
                .collect();
            crate::args::print_json(&rows)?;
        }
        TableJson::Table => {
            let mut rows = vec![[
                "ID",
                "CREATED (UTC)",
                "AGE",
                "CLUSTER",
                "REVISION",
                "SIZE",
                "ADDED",
                "LABELS",
            ]
            .map(String::from)
            .to_vec()];
            for m in &backups {
                rows.push(vec![
                    m.id.clone(),
                    m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                    age(m.created),
                    m.cluster.clone().unwrap_or_else(|| "-".into()),
                    m.etcd.revision.to_string(),
                    human(m.sizes.original),
                    human(m.sizes.added),
                    labels_text(m),
                ]);
            }
            print!("{}", table(&rows));
            if backups.is_empty() {
                eprintln!("no backups in {}", repo.location());
            } else if repo.is_encrypted() && !authenticated {
                eprintln!("{UNAUTHENTICATED_NOTE}");
            }
        }
    }
    if !bad.is_empty() {
        return Err(Failure::new(
            Code::Corrupt,
            format!("{} manifest(s) could not be read", bad.len()),
        )
        .into());
    }
    Ok(())
}
