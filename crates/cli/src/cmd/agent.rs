//! `etcdguard agent`: flags in, `etcdguard_workflow::agent::run` (backup create on a schedule,
//! retention, /healthz and /metrics), log lines with a time stamp on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::agent::{self, AgentOptions, ContinuousSettings, ElectionSettings};
use etcdguard_workflow::checks::ChecksOptions;
use etcdguard_workflow::schedule::Schedule;
use etcdguard_workflow::Stop;

use crate::cmd::backup::create::CreateArgs;
use crate::cmd::backup::KeepArgs;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten, next_help_heading = "What to back up (as `backup create`)")]
    pub create: CreateArgs,
    #[command(flatten, next_help_heading = "Retention (as `backup prune`)")]
    pub keep: KeepArgs,
    /// Time from the start of one backup to the start of the next (e.g. 30m, 1h, 6h). The
    /// first backup is taken at start; a backup that overruns starts the next one at once.
    #[arg(help_heading = "Schedule", long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration, conflicts_with = "schedule")]
    pub every: Duration,
    /// Back up on a cron schedule instead of --every: five fields in UTC (minute hour
    /// day-of-month month day-of-week; an optional leading sixth field gives seconds), e.g.
    /// "0 */6 * * *". The first backup waits for the first match.
    #[arg(help_heading = "Schedule", long, value_name = "CRON")]
    pub schedule: Option<String>,
    /// Delay each start by a random time up to this (e.g. 5m), so agents of many clusters do
    /// not hit one bucket at the same second.
    #[arg(help_heading = "Schedule", long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Log lines as text or as one JSON object per line.
    #[arg(help_heading = "HTTP endpoint and logs", long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the HTTP endpoint (/healthz, /metrics), or `off`.
    #[arg(
        help_heading = "HTTP endpoint and logs",
        long,
        value_name = "ADDR",
        env = "ETCDGUARD_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: String,
    /// Stop after this many runs (default: run until stopped). `--runs 0` checks the
    /// arguments and the listen address, then exits.
    #[arg(help_heading = "Schedule", long, value_name = "N")]
    pub runs: Option<u64>,
    /// /healthz answers 503 once this many retention runs (prune) failed in a row.
    #[arg(help_heading = "HTTP endpoint and logs", long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub prune_failures_unhealthy: u32,
    /// Leader election (the default with a live cluster): agents for the same repository
    /// (and --cluster) elect one of themselves through etcd's election API, and only that
    /// one takes backups; the others stand by and take over when it is gone. Off with
    /// --from-file.
    #[arg(help_heading = "Leader election", long, overrides_with = "no_elect")]
    pub elect: bool,
    /// Do not elect: this agent takes every scheduled backup, whatever other agents do.
    #[arg(help_heading = "Leader election", long, overrides_with = "elect")]
    pub no_elect: bool,
    /// Lease TTL of the election (whole seconds, at least 2s): a dead leader's turn passes
    /// to a standby within about this long.
    #[arg(help_heading = "Leader election", long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub elect_ttl: Duration,
    /// Continuous capture: the (elected) agent stores every change as segments after a full
    /// backup, and takes a new full every --full-every; restore any revision with `backup
    /// restore --at`. Replaces the backup schedule (--every/--schedule).
    #[arg(help_heading = "Continuous capture", long, conflicts_with_all = ["schedule", "from_file"])]
    pub continuous: bool,
    /// With --continuous: store the changes seen so far at least this often.
    #[arg(help_heading = "Continuous capture", long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, requires = "continuous")]
    pub segment_interval: Duration,
    /// With --continuous: take a new full backup this long after the last one (default: --every).
    #[arg(help_heading = "Continuous capture", long, value_name = "DURATION", value_parser = parse_duration, requires = "continuous")]
    pub full_every: Option<Duration>,
    /// With --continuous: /healthz answers 503 when the RPO (seconds of changes not yet
    /// stored) exceeds this.
    #[arg(help_heading = "Continuous capture", long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, requires = "continuous")]
    pub rpo_bound: Duration,
    /// Scrub this often (e.g. 24h; the first at start): re-read stored backups with the
    /// checks of `backup verify` and every pack they use, the newest backup first, then older
    /// ones in rotation until --verify-budget is spent. Only the active agent scrubs; damage
    /// turns /healthz red until a scrub passes again.
    #[arg(help_heading = "Checks: scrub, drill, certificates", long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub verify_every: Option<Duration>,
    /// A scrub starts no further backup after this long (the newest is always checked).
    #[arg(help_heading = "Checks: scrub, drill, certificates", long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration, requires = "verify_every")]
    pub verify_budget: Duration,
    /// Restore drill this often (e.g. 24h; the first at start): restore the newest backup into
    /// a scratch data dir (under --scratch-dir, removed afterwards) and check its revision,
    /// key count and hash against the manifest. Only the active agent drills.
    #[arg(help_heading = "Checks: scrub, drill, certificates", long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub drill_every: Option<Duration>,
    /// With --drill-every: also boot this etcd binary on the restored data dir (loopback,
    /// free ports) and read a key through it. Use the cluster's etcd version.
    #[arg(
        help_heading = "Checks: scrub, drill, certificates",
        long,
        value_name = "PATH",
        requires = "drill_every"
    )]
    pub drill_etcd: Option<PathBuf>,
    /// After each backup, copy it to this second repository (as `backup copy`, e.g. another
    /// region or cloud), with any earlier backup a failed copy missed; with --continuous,
    /// the changes too, every ten --segment-interval (5s to 1m). A new repository there is chunked as --repo and
    /// encrypted with ETCDGUARD_TO_PASSPHRASE / --copy-to-passphrase-file. /healthz turns
    /// red after --prune-failures-unhealthy failed copies in a row.
    #[arg(help_heading = "Copy to a second repository", long, env = "ETCDGUARD_COPY_TO", value_name = "URL", value_parser = crate::args::repo)]
    pub copy_to: Option<String>,
    /// File holding the passphrase of the --copy-to repository (or put it in ETCDGUARD_TO_PASSPHRASE).
    #[arg(help_heading = "Copy to a second repository", long, env = "ETCDGUARD_TO_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file, requires = "copy_to")]
    pub copy_to_passphrase_file: Option<PathBuf>,
    /// Unlock the --copy-to repository with this KMS key (aws-kms:KEY[?region=R&endpoint=URL]).
    #[arg(
        help_heading = "Copy to a second repository",
        long,
        env = "ETCDGUARD_TO_KMS_KEY",
        value_name = "KMS",
        requires = "copy_to"
    )]
    pub copy_to_kms_key: Option<String>,
    /// /healthz warns (in its body; it stays 200) when a certificate of --pki-dir (else of the
    /// newest backup's manifest) expires within this. The expiry of each is in /metrics.
    #[arg(help_heading = "Checks: scrub, drill, certificates", long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub cert_warn: Duration,
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

pub fn run(args: AgentArgs) -> Result<()> {
    let continuous = args.continuous.then(|| ContinuousSettings {
        segment_interval: args.segment_interval.max(Duration::from_millis(100)),
        full_every: Some(args.full_every.unwrap_or(args.every)),
        rpo_bound: args.rpo_bound,
    });
    let schedule = match (&args.schedule, &continuous) {
        (Some(expression), _) => Schedule::cron(expression)?,
        // A standby judges the leader by the age of the newest full backup.
        (None, Some(c)) => Schedule::Every(c.full_every.unwrap_or(args.every)),
        (None, None) => Schedule::Every(args.every),
    };
    let create = args.create.options();
    let election = (!args.no_elect && create.from_file.is_none()).then(|| {
        ElectionSettings::for_repository(
            &create.repo.url,
            create.cluster.as_deref(),
            args.elect_ttl,
        )
    });
    let copy_to = args.copy_to.clone().map(|url| {
        let file = args.copy_to_passphrase_file.clone();
        etcdguard_workflow::RepoSpec {
            url,
            passphrase: std::sync::Arc::new(move || {
                Ok(crate::args::read_passphrase(
                    file.as_deref(),
                    "--copy-to-passphrase-file",
                    "ETCDGUARD_TO_PASSPHRASE",
                )?)
            }),
            transfer: Default::default(),
            kms: args.copy_to_kms_key.clone(),
        }
    });
    let opts = AgentOptions {
        copy_to,
        create,
        policy: args.keep.policy(),
        schedule,
        jitter: args.jitter,
        listen: args.listen.clone(),
        runs: args.runs,
        prune_failures_unhealthy: args.prune_failures_unhealthy,
        election,
        continuous,
        checks: ChecksOptions {
            verify_every: args.verify_every,
            verify_budget: args.verify_budget,
            drill_every: args.drill_every,
            drill_etcd: args.drill_etcd.clone(),
            certificates: true,
            cert_warn: args.cert_warn,
        },
    };
    init_logging(args.log_format);
    let stop = Stop::new();
    agent::stop_on_signals(&stop)?;
    Ok(agent::run(opts, stop)?)
}

/// Log lines on stderr: `TIME LEVEL message fields` (UTC), or one JSON object per line.
pub fn init_logging(format: LogFormat) {
    let builder =
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
