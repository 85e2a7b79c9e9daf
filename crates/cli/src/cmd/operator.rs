//! `etcdguard operator`: flags in, `etcdguard_operator::run` (or the CRDs printed), log
//! lines on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_repo::retention::parse_duration;

use crate::cmd::agent::{init_logging, LogFormat};
use crate::exit::{Code, Failure};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OperatorArgs {
    #[command(subcommand)]
    pub command: Option<OperatorCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Print the CustomResourceDefinitions (EtcdBackup, EtcdBackupSchedule,
    /// EtcdBackupRecord) as YAML, to `kubectl apply -f -` before the operator starts.
    ///
    /// Example:
    ///   etcdguard operator crds | kubectl apply --server-side -f -
    #[command(verbatim_doc_comment)]
    Crds,
}

#[derive(Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, value_name = "NAME", env = "ETCDGUARD_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader election Lease (default: the pod's, from POD_NAMESPACE, else
    /// `default`).
    #[arg(long, value_name = "NAME", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader election Lease: replicas sharing it elect one leader.
    #[arg(long, value_name = "NAME", default_value = "etcdguard-operator")]
    pub lease_name: String,
    /// This replica's name in the Lease (default: POD_NAME, else the host name).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pub identity: Option<String>,
    /// A leader that stops renewing loses the lease after this long; a standby then takes
    /// over.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often every repository is listed to bring the EtcdBackupRecord inventory up to
    /// date (a backup taken by the operator updates it at once).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub inventory_interval: Duration,
    /// How often schedules are checked.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
    /// Scratch space for snapshot spools and TLS files from Secrets (private subdirectories).
    #[arg(long, value_name = "DIR", default_value = "/tmp/etcdguard-operator")]
    pub work_dir: PathBuf,
    /// Serve /livez (the process answers), /healthz (a standby, or a leader that renews its
    /// Lease and whose last inventory pass succeeded) and Prometheus /metrics here; `off`
    /// for none.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9465",
        env = "ETCDGUARD_OPERATOR_LISTEN"
    )]
    pub listen: String,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub fn run(args: OperatorArgs) -> Result<()> {
    if let Some(OperatorCommand::Crds) = args.command {
        crate::output::stdout_write(etcdguard_operator::crds_yaml().as_bytes());
        return Ok(());
    }
    let a = args.run;
    let identity = a.identity.filter(|s| !s.is_empty()).unwrap_or_else(hostname);
    let opts = etcdguard_operator::OperatorOptions {
        namespace: a.namespace,
        exe: std::env::current_exe()?,
        work_dir: a.work_dir,
        inventory_interval: a.inventory_interval.max(Duration::from_secs(1)),
        tick: a.tick.max(Duration::from_millis(200)),
        lease_namespace: a.lease_namespace.unwrap_or_else(|| "default".into()),
        lease_name: a.lease_name,
        identity,
        lease_duration: a.lease_duration,
        listen: Some(a.listen).filter(|l| l != "off"),
    };
    init_logging(a.log_format);
    match etcdguard_operator::run(opts) {
        Ok(()) => Ok(()),
        // No kubeconfig, no in-cluster service account, or a server that does not answer.
        Err(e @ etcdguard_operator::Error::Config(_)) => {
            Err(Failure::new(Code::Unreachable, e.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    if name.is_empty() {
        format!("etcdguard-operator-{}", std::process::id())
    } else {
        name.into_owned()
    }
}
