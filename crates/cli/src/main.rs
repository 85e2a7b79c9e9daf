//! `etcdguard`: a thin command line over the etcdguard library crates.
//! Each subcommand lives in `cmd/`; this file only parses arguments and maps errors to exit codes.
//!
//! ## How it works
//!
//! `main.rs` parses arguments (clap) and maps errors to exit codes (`exit.rs`, one code per
//! kind of failure a script may want to tell apart; the table is in `--help` and README;
//! `exit::code_of` maps a workflow `Kind`). `cmd/` has one module per subcommand group; each
//! turns its flags into the workflow's options (`CreateArgs::options`, `RepoArg::spec`), calls
//! one library function and prints the result (tables, JSON, the `created` line). Passphrases
//! are read here (`read_passphrase`), from a file or the environment, never from argv.
//! `output.rs` replaces std's `print!` family crate-wide so that output into a closed pipe is
//! not a panic: the command finishes, then the process ends by SIGPIPE (SIGPIPE itself stays
//! ignored, so a reset socket is an error, never a sudden death midway through a backup).
//! `args.rs` holds the value parsers flags share (non-empty --repo, names, tokens and paths,
//! passphrase files others can read), so clap refuses meaningless values with exit 2 before
//! anything runs. `deploy/kubernetes/` holds the manifests that run the agent (a Deployment, or
//! a DaemonSet with election) or the one-shot commands (a CronJob), plus Service,
//! ServiceMonitor and PrometheusRule for monitoring; `tests/agent.rs` checks that the
//! containers' arguments parse and that every alert queries an `etcdguard_` metric.

// Doc comments here are `--help` text laid out for a terminal (aligned columns, numbered
// steps with hanging indents), not Markdown.
#![allow(clippy::doc_overindented_list_items, clippy::doc_lazy_continuation)]

// First: its print!/println!/eprint!/eprintln! replace std's in every module below.
#[macro_use]
mod output;
mod args;
mod cmd;
mod exit;

use clap::{Parser, Subcommand};

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0 success            1 other failure        2 wrong flags or arguments
  3 file not found     4 permission denied    5 is a directory
  6 empty file         7 not an etcd snapshot 8 truncated file
  9 sha256 mismatch   10 corrupt (integrity)  11 file locked by a running etcd
 12 endpoint or storage unreachable, or storage kept failing
 13 TLS or authentication failure
 14 destination exists (nothing was overwritten)
 15 backup repository in use by another etcdguard (locked)
 16 encrypted backup repository: passphrase missing or wrong
 17 refused by a safety check (quorum, healthy member, lagging learner, OpenShift z-stream); nothing changed
 18 a certificate expired, expires within --warn, or is not yet valid (pki check)

Environment: ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY … as etcdctl reads them;
ETCDGUARD_REPO, ETCDGUARD_PASSPHRASE, ETCDGUARD_PASSPHRASE_FILE for `backup` and `agent`;
ETCDGUARD_NEW_PASSPHRASE(_FILE) for `backup key`; ETCDGUARD_LISTEN for `agent`.";

/// `--version`: what was built, from which commit and when, and what it is tested against.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("ETCDGUARD_COMMIT"),
    "\nbuilt: ",
    env!("ETCDGUARD_BUILD_DATE"),
    "\ntested against: etcd 3.4, 3.5, 3.6, 3.7; Kubernetes API objects up to 1.35 built in (newer with --schema-dir)"
);

#[derive(Parser)]
#[command(
    name = "etcdguard",
    version,
    long_version = LONG_VERSION,
    about = "Keeps Kubernetes control planes recoverable: etcd snapshots you can trust, verified and restorable",
    long_about = None,
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the biggest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Work with etcd snapshot files: status, verify, restore, save.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCommand),
    /// Live cluster checks and changes: health, members, guarded member remove/add/promote,
    /// defrag, alarms.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Backups in a deduplicated repository (local dir, S3, GCS, Azure): create, list, show, verify, restore, prune, copy.
    #[command(subcommand)]
    Backup(cmd::backup::BackupCommand),
    /// Take backups on a schedule, apply retention, serve /healthz and Prometheus /metrics.
    ///
    /// Runs `backup create` (same flags: --repo, connection flags or --from-file, --pki-dir,
    /// --manifests-dir, …) every --every (or on --schedule CRON), then, when any --keep-* rule is given, `backup
    /// prune` with those rules. A failed backup is logged and counted, and the next one runs
    /// on time. /healthz answers 503 while the last backup failed or the last success is
    /// older than twice --every, or once retention failed --prune-failures-unhealthy times in
    /// a row. SIGTERM/SIGINT stop it within 10 s with exit 0, abandoning a running backup
    /// (nothing is listed, the scratch file goes, the repository lock is released).
    /// To run it in a cluster, see deploy/kubernetes/.
    ///
    /// Example:
    ///   etcdguard agent --repo s3://etcd-backups/prod-eu --every 1h \
    ///       --keep-hourly 24 --keep-daily 7 --keep-weekly 4 \
    ///       --endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt \
    ///       --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
    ///       --key /etc/kubernetes/pki/etcd/healthcheck-client.key --pki-dir /etc/kubernetes/pki
    #[command(verbatim_doc_comment)]
    Agent(cmd::agent::AgentArgs),
    /// Backups as Kubernetes objects: run the operator (in a cluster), or print its CRDs.
    ///
    /// Watches EtcdBackup (one backup, taken once by a child `etcdguard backup create`),
    /// EtcdBackupSchedule (EtcdBackups on a cron schedule, retention, history limits,
    /// optional continuous capture) and keeps an EtcdBackupRecord per backup of each
    /// repository they name, following changes made outside the cluster. Replicas elect one
    /// leader through a coordination.k8s.io Lease. The operator records and schedules only:
    /// restore with `backup restore` / `node restore`, which need no API server.
    /// Manifests: deploy/crds/ and deploy/operator/.
    ///
    /// Examples:
    ///   etcdguard operator crds | kubectl apply --server-side -f -
    ///   etcdguard operator --namespace etcd-backups     # in a pod: its service account
    ///   KUBECONFIG=~/.kube/config etcdguard operator --lease-namespace default
    #[command(verbatim_doc_comment)]
    Operator(cmd::operator::OperatorArgs),
    /// On a control-plane node: restore etcd in place (stop the static pods, move the data
    /// dir aside, restore, start again), with a --dry-run plan.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Kubernetes objects in a snapshot, offline: list (filter by resource, namespace, name,
    /// labels), get one, diff two snapshots.
    #[command(subcommand)]
    Inspect(cmd::inspect::InspectCommand),
    /// The node's certificates: check when they expire (exit 18 when one has expired or
    /// expires within --warn).
    #[command(subcommand)]
    Pki(cmd::pki::PkiCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Examples:
    ///   etcdguard completion bash > /etc/bash_completion.d/etcdguard
    ///   etcdguard completion zsh > "${fpath[1]}/_etcdguard"
    #[command(verbatim_doc_comment)]
    Completion(cmd::shell::CompletionArgs),
    /// Print the man page, or write one per command into --dir.
    ///
    /// Example: etcdguard man --dir /usr/local/share/man/man1
    Man(cmd::shell::ManArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snapshot(c) => cmd::snapshot::run(c),
        Command::Cluster(c) => cmd::cluster::run(c),
        Command::Backup(c) => cmd::backup::run(c),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Operator(a) => cmd::operator::run(a),
        Command::Node(c) => cmd::node::run(c),
        Command::Inspect(c) => cmd::inspect::run(c),
        Command::Pki(c) => cmd::pki::run(c),
        Command::Completion(a) => cmd::shell::completion::<Cli>(a),
        Command::Man(a) => cmd::shell::man::<Cli>(a),
    };
    if let Err(err) = result {
        let code = exit::report(&err);
        std::process::exit(code);
    }
    match output::finish_stdout() {
        None => {}
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => output::exit_by_sigpipe(),
        Some(e) => {
            eprintln!("Error: writing to stdout: {e}");
            std::process::exit(exit::Code::Failure as i32);
        }
    }
}
