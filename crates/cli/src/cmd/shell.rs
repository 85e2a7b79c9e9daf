//! `etcdguard completion` and `etcdguard man`: the command line describing itself, generated
//! from the same clap definitions the parser uses, so they cannot drift.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write one page per command (etcdguard.1, etcdguard-backup-create.1, …) into DIR
    /// instead of printing the top-level page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completion<C: CommandFactory>(args: CompletionArgs) -> Result<()> {
    let mut cmd = C::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "etcdguard", &mut out);
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

pub fn man<C: CommandFactory>(args: ManArgs) -> Result<()> {
    let cmd = C::command();
    match args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            print!("{}", String::from_utf8_lossy(&out));
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| dir.display().to_string())?;
            let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            eprintln!("{n} man page(s) in {}", dir.display());
        }
    }
    Ok(())
}
