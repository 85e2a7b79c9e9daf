//! `etcdguard`: a thin command line over the etcdguard library crates.
//! Each subcommand lives in `cmd/`; this file only parses arguments and maps errors to exit codes.

mod cmd;
mod exit;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "etcdguard",
    version,
    about = "Keeps Kubernetes control planes recoverable: etcd snapshots you can trust, verified and restorable",
    long_about = None,
    after_help = "Exit codes: see `etcdguard help exit-codes` or README.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with etcd snapshot files: status, verify, restore, save.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snapshot(c) => cmd::snapshot::run(c),
    };
    if let Err(err) = result {
        let code = exit::report(&err);
        std::process::exit(code);
    }
}
