//! `etcdguard backup copy`: flags in, `etcdguard_workflow::copy::copy`, one line per backup out.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use etcdguard_workflow::copy::{self, CopyEvent, CopyOptions};
use etcdguard_workflow::RepoSpec;
use serde_json::json;

use crate::args::TextJson;
use crate::args::{read_passphrase, ParallelArg, REPO_HELP};
use etcdguard_workflow::text::human;

#[derive(Args)]
pub struct CopyArgs {
    /// The repository to copy from (only read). Same forms as --repo.
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL", value_parser = crate::args::repo)]
    pub from: String,
    /// File holding the source's passphrase (or put it in ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub passphrase_file: Option<PathBuf>,
    /// Unlock the source with this KMS key instead of a passphrase (as --kms-key of the other commands).
    #[arg(long, env = "ETCDGUARD_KMS_KEY", value_name = "KMS")]
    pub kms_key: Option<String>,
    #[arg(long, env = "ETCDGUARD_TO_REPO", value_name = "URL", help = REPO_HELP, value_parser = crate::args::repo)]
    pub to: String,
    /// Unlock the destination with this KMS key (a destination the copy creates gets it as a
    /// second key, beside the passphrase, which is still needed to create it).
    #[arg(long, env = "ETCDGUARD_TO_KMS_KEY", value_name = "KMS")]
    pub to_kms_key: Option<String>,
    /// File holding the destination's passphrase (or put it in ETCDGUARD_TO_PASSPHRASE). A
    /// destination created by the copy is encrypted with it; an encrypted source needs one.
    #[arg(long, env = "ETCDGUARD_TO_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub to_passphrase_file: Option<PathBuf>,
    /// Backups to copy: ids, unique prefixes or `latest` [default: every backup of the source].
    #[arg(value_name = "BACKUP")]
    pub backups: Vec<String>,
    #[command(flatten)]
    pub parallel: ParallelArg,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

pub fn run(args: CopyArgs) -> Result<()> {
    let from_file = args.passphrase_file.clone();
    let to_file = args.to_passphrase_file.clone();
    let transfer = args.parallel.transfer(None);
    let opts = CopyOptions {
        // The progress bar follows the source's reassembly; the destination's writes keep pace.
        from: RepoSpec {
            url: args.from.clone(),
            passphrase: Arc::new(move || {
                Ok(read_passphrase(
                    from_file.as_deref(),
                    "--passphrase-file",
                    "ETCDGUARD_PASSPHRASE",
                )?)
            }),
            transfer: transfer.clone(),
            kms: args.kms_key.clone(),
        },
        to: RepoSpec {
            url: args.to.clone(),
            passphrase: Arc::new(move || {
                Ok(read_passphrase(
                    to_file.as_deref(),
                    "--to-passphrase-file",
                    "ETCDGUARD_TO_PASSPHRASE",
                )?)
            }),
            transfer: etcdguard_repo::repository::Transfer { progress: None, ..transfer },
            kms: args.to_kms_key.clone(),
        },
        backups: args.backups.clone(),
        from_destination_newest: false,
    };
    let text = args.write_out == TextJson::Text;
    let mut rows = Vec::new();
    let result = copy::copy(&opts, &mut |event| match event {
        CopyEvent::Created { location, encrypted } => {
            eprintln!(
                "created repository {location}, {}",
                if encrypted {
                    "encrypted with the destination's passphrase"
                } else {
                    "not encrypted"
                }
            )
        }
        CopyEvent::Copied(m) => {
            if text {
                println!(
                    "backup {} copied: snapshot {} (revision {}), {} new in the destination",
                    m.id,
                    human(m.snapshot.size),
                    m.etcd.revision,
                    human(m.sizes.added)
                );
            }
            rows.push(json!({"id": m.id, "status": "copied", "added": m.sizes.added}));
        }
        CopyEvent::AlreadyThere(m) => {
            if text {
                println!("backup {} already in the destination", m.id);
            }
            rows.push(json!({"id": m.id, "status": "already-there"}));
        }
        CopyEvent::Changes { id, segments, gaps } => {
            if text {
                println!(
                    "backup {id}: {segments} change segment(s) and {gaps} gap record(s) copied"
                );
            }
        }
        CopyEvent::Failed { id, error } => {
            eprintln!("not copied: {error}");
            rows.push(json!({"id": id, "status": "failed", "error": error.message}));
        }
    });
    if !text {
        crate::args::print_json(&json!({"from": args.from, "to": args.to, "backups": rows}))?;
    }
    let report = result?;
    if text && report.copied.is_empty() && report.already_there.is_empty() {
        eprintln!("no backups in {}", args.from);
    }
    Ok(())
}
