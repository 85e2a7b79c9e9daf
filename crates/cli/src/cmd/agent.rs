//! `etcdguard agent`: flags in, `etcdguard_workflow::agent::run` (backup create on a schedule,
//! retention, /healthz and /metrics), log lines with a time stamp on stderr.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::agent::{self, AgentOptions};
use etcdguard_workflow::Stop;

use crate::cmd::backup::{CreateArgs, KeepArgs};

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Time from the start of one backup to the start of the next (e.g. 30m, 1h, 6h). The
    /// first backup is taken at start; a backup that overruns starts the next one at once.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub every: Duration,
    /// Address of the HTTP endpoint (/healthz, /metrics), or `off`.
    #[arg(long, value_name = "ADDR", env = "ETCDGUARD_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Stop after this many runs (default: run until stopped). `--runs 0` checks the
    /// arguments and the listen address, then exits.
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// /healthz answers 503 once this many retention runs (prune) failed in a row.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub prune_failures_unhealthy: u32,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let opts = AgentOptions {
        create: args.create.options(),
        policy: args.keep.policy(),
        every: args.every,
        listen: args.listen.clone(),
        runs: args.runs,
        prune_failures_unhealthy: args.prune_failures_unhealthy,
    };
    let stop = Stop::new();
    agent::stop_on_signals(&stop)?;
    let log: agent::Log = Arc::new(|message: &str| eprintln!("{} {message}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ")));
    Ok(agent::run(opts, log, stop)?)
}
