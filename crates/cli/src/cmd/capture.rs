//! `etcdguard backup follow | log` and `backup restore --at`: continuous capture and
//! point-in-time restore (the work is in `etcdguard_workflow::capture`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::capture::{
    self, At, AtPlan, CaptureState, FollowOptions, LogFilter, LogItem,
};
use etcdguard_workflow::Stop;

use crate::args::{RepoArg, TableJson};
use crate::cmd::backup::create::CreateArgs;
use crate::cmd::table;
use etcdguard_workflow::text::human;

#[derive(Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Store the changes seen so far at least this often (the RPO while the store answers).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub segment_interval: Duration,
    /// … or as soon as this many bytes of changes wait.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub segment_max_bytes: usize,
    /// Take a new full backup this long after the last one (default: only when needed).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub full_every: Option<Duration>,
    /// … or once the segments since it hold this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub full_after_bytes: u64,
    /// Stop once every change up to this revision is stored.
    #[arg(long, value_name = "REV")]
    pub until_revision: Option<i64>,
    /// Stop after this long (default: until SIGTERM/SIGINT).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub run_for: Option<Duration>,
}

impl FollowArgs {
    pub fn options(&self) -> FollowOptions {
        FollowOptions {
            segment_interval: self.segment_interval.max(Duration::from_millis(100)),
            segment_max_bytes: self.segment_max_bytes.clamp(64 << 10, 24 << 20),
            full_every: self.full_every,
            full_after_bytes: self.full_after_bytes,
            until_revision: self.until_revision,
            duration: self.run_for,
            ..FollowOptions::new(self.create.options())
        }
    }
}

pub fn follow(args: FollowArgs) -> Result<()> {
    let stop = Stop::new();
    etcdguard_workflow::agent::stop_on_signals(&stop)?;
    let state = Arc::new(Mutex::new(CaptureState::default()));
    let report = capture::follow(&args.options(), &state, &mut |n| eprintln!("{n}"), &stop)?;
    let s = report.state;
    println!(
        "stored every change up to revision {} (full backup {} at revision {}): {} segments, {}, {} full backups taken, {} gaps",
        s.durable_revision,
        s.base.as_deref().unwrap_or("-"),
        s.base_revision,
        s.segments_written,
        human(s.segment_bytes),
        s.fulls_taken,
        s.gaps
    );
    Ok(())
}

#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this key (e.g. /registry/namespaces/prod).
    #[arg(long, conflicts_with = "prefix")]
    pub key: Option<String>,
    /// Only keys under this prefix (e.g. /registry/configmaps/prod/).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only changes seen at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// At most this many changes.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TableJson::Table)]
    pub write_out: TableJson,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    match At::parse(s)? {
        At::Time(t) => Ok(t),
        At::Revision(_) => Err(format!("{s:?}: give a time (RFC 3339, e.g. 2026-11-30T14:32:00Z)")),
    }
}

pub fn parse_at(s: &str) -> Result<At, String> {
    At::parse(s)
}

pub fn log(args: LogArgs) -> Result<()> {
    let spec = args.repo.spec();
    let mut repo = spec.open_unlocked()?;
    if repo.is_encrypted() {
        spec.unlock(&mut repo)?;
    }
    let filter = LogFilter {
        key: args.key.map(String::into_bytes),
        prefix: args.prefix.map(String::into_bytes),
        since: args.since,
        limit: args.limit,
    };
    let mut rows = vec![["REVISION", "TIME (UTC)", "OP", "KIND", "NAMESPACE", "NAME", "KEY"]
        .map(String::from)
        .to_vec()];
    let mut json_rows = Vec::new();
    let mut gaps = Vec::new();
    capture::log(&repo, &filter, &mut |item| match (item, args.write_out) {
        (LogItem::Change(e), TableJson::Json) => {
            json_rows.push(serde_json::to_value(&e).unwrap_or_default())
        }
        (LogItem::Change(e), TableJson::Table) => rows.push(vec![
            e.revision.to_string(),
            e.time.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            e.op.to_string(),
            e.kind.unwrap_or_else(|| "-".into()),
            e.namespace.unwrap_or_else(|| "-".into()),
            e.name.unwrap_or_else(|| "-".into()),
            e.key,
        ]),
        (LogItem::Gap(g), write_out) => {
            let range = format!("{}..{}", g.first_revision, g.last_revision);
            match write_out {
                TableJson::Json => json_rows.push(serde_json::json!({ "gap": g })),
                TableJson::Table => rows.push(
                    [
                        range.as_str(),
                        "-",
                        "MISSING",
                        "-",
                        "-",
                        "-",
                        "(no stored segment holds these changes)",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
            }
            gaps.push(format!("revisions {range} after full backup {}", g.full_backup));
        }
    })?;
    match args.write_out {
        TableJson::Json => crate::args::print_json(&json_rows)?,
        TableJson::Table => print!("{}", table(&rows)),
    }
    for g in &gaps {
        eprintln!("warning: changes missing: {g} are in no stored segment (one was lost or deleted); `backup restore --at` cannot reach past them");
    }
    Ok(())
}

/// The `--dry-run` text of a point-in-time restore.
pub fn plan_text(plan: &AtPlan) -> String {
    let mut out = format!(
        "full backup {} (revision {}, taken {})\n",
        plan.base.id,
        plan.base.etcd.revision,
        plan.base.created.format("%Y-%m-%d %H:%M:%S UTC")
    );
    match (plan.segments.first(), plan.segments.last()) {
        (Some(a), Some(b)) => out.push_str(&format!(
            "then {} segments of changes, revisions {}..{} ({})\n",
            plan.segments.len(),
            a.first,
            b.last,
            human(plan.segments.iter().map(|s| s.size).sum())
        )),
        _ => out.push_str("no changes to replay\n"),
    }
    out.push_str(&format!("result: revision {}", plan.revision));
    if let Some(t) = plan.seen {
        out.push_str(&format!(", seen at {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")));
    }
    out.push('\n');
    out
}
