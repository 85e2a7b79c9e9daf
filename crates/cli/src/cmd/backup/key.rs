//! `backup key list|add|passwd|remove`: the passphrases and KMS keys of an encrypted repository.

use super::*;

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the keys, oldest first; with the passphrase given, marks the key it opens.
    List(KeyListArgs),
    /// Add a passphrase. The ones already there keep working.
    Add(KeyNewArgs),
    /// Remove a key by id. Refuses the key the given passphrase opens, and the last key.
    Remove(KeyRemoveArgs),
    /// Change the passphrase: add a key for the new one, then remove the key of the current one.
    Passwd(KeyNewArgs),
}

#[derive(Args)]
pub struct KeyListArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

#[derive(Args)]
pub struct KeyNewArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// File holding the new passphrase (or put it in ETCDGUARD_NEW_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_NEW_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub new_passphrase_file: Option<PathBuf>,
    /// `key add`: wrap the master key with this key management service key instead of a
    /// passphrase (aws-kms:KEY[?region=R&endpoint=URL]); unlock with --kms-key then.
    #[arg(long, value_name = "KMS", conflicts_with = "new_passphrase_file")]
    pub new_kms_key: Option<String>,
}

#[derive(Args)]
pub struct KeyRemoveArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub repo: RepoArg,
    /// Key id, as `backup key list` shows it.
    pub id: String,
}

pub(super) fn key(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::List(a) => key_list(a),
        KeyCommand::Add(a) => key_add(a, false),
        KeyCommand::Passwd(a) => key_add(a, true),
        KeyCommand::Remove(a) => {
            let location = backup::key_remove(&a.repo.spec(), &a.id)?;
            if a.out.json() {
                return crate::args::print_json(
                    &json!({ "removed": [{ "id": a.id, "location": location.to_string() }] }),
                );
            }
            println!("Removed key {} from {location}", a.id);
            Ok(())
        }
    }
}

pub(super) fn key_list(args: KeyListArgs) -> Result<()> {
    let keys = backup::key_list(&args.repo.spec())?;
    match args.write_out {
        TableJson::Json => crate::args::print_json(&keys)?,
        TableJson::Table => {
            let mut rows = vec![["ID", "CREATED (UTC)", "HOST", ""].map(String::from).to_vec()];
            for k in &keys {
                let current = match (&k.kms, k.current) {
                    (Some(kms), true) => format!("{kms} (the key given)"),
                    (Some(kms), false) => kms.clone(),
                    (None, true) => "(the passphrase given)".into(),
                    (None, false) => String::new(),
                };
                rows.push(vec![
                    k.id.clone(),
                    k.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                    k.hostname.clone(),
                    current,
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// `key add`, and `key passwd` (`replace`).
pub(super) fn key_add(args: KeyNewArgs, replace: bool) -> Result<()> {
    if let Some(kms) = &args.new_kms_key {
        if replace {
            return Err(Failure::new(
                Code::Usage,
                "--new-kms-key: use `backup key add`, then `backup key remove` the old key",
            )
            .into());
        }
        let (id, location) = etcdguard_workflow::repo::add_kms_key(&args.repo.spec(), kms)?;
        if args.out.json() {
            return crate::args::print_json(
                &json!({ "added": [{ "id": id, "kms": kms, "location": location.to_string() }] }),
            );
        }
        println!("Added key {id} ({kms}) to {location}");
        return Ok(());
    }
    let file = args.new_passphrase_file.clone();
    let new: PassphraseSource = Arc::new(move || {
        Ok(read_passphrase(file.as_deref(), "--new-passphrase-file", "ETCDGUARD_NEW_PASSPHRASE")?)
    });
    let json_out = args.out.json();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    backup::key_add(&args.repo.spec(), &new, replace, &mut |event| match event {
        KeyEvent::Added { id, location } if json_out => {
            added.push(json!({ "id": id, "location": location.to_string() }))
        }
        KeyEvent::Removed { id, location } if json_out => {
            removed.push(json!({ "id": id, "location": location.to_string() }))
        }
        KeyEvent::Added { id, location } => println!("Added key {id} to {location}"),
        KeyEvent::Removed { id, location } => {
            println!("Removed key {id}: the old passphrase no longer opens {location}")
        }
    })?;
    if json_out {
        return crate::args::print_json(&json!({ "added": added, "removed": removed }));
    }
    Ok(())
}
