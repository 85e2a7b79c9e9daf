//! `EtcdBackupSchedule`: every tick each schedule is checked. When its next cron match after
//! the last run (or after its creation) has passed, one `EtcdBackup` is created from the
//! template (missed matches are not made up one by one: one backup catches up). The
//! schedule's succeeded and failed `EtcdBackup`s beyond the history limits are deleted; after
//! each backup of the schedule that succeeded, the repository is pruned by the retention
//! rules. With `continuous`, a child `backup follow` runs while the schedule exists.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    EtcdBackup, EtcdBackupSchedule, EtcdBackupScheduleStatus, RetentionSpec, SCHEDULE_LABEL,
};
use crate::{runner, set_condition, Context, Error};

/// A running `backup follow` of one schedule.
struct Capture {
    child: tokio::process::Child,
    /// Holds the TLS files the child reads.
    scratch: tempfile::TempDir,
}

impl Drop for Capture {
    /// A schedule that is gone, suspended or no longer continuous (or an operator that
    /// stops) ends its capture with SIGTERM: `backup follow` stores what it has and releases
    /// the repository's lock.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // Our own child's pid; it has not been reaped (id() is Some).
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

pub async fn run(ctx: Context) -> Result<(), Error> {
    let api: Api<EtcdBackupSchedule> = match &ctx.opts.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut captures: HashMap<(String, String), Capture> = HashMap::new();
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let mut wanted = Vec::new();
                for s in &list.items {
                    let key = (s.namespace().unwrap_or_default(), s.name_any());
                    let status = match tick(&ctx, s).await {
                        Ok(status) => Some(status),
                        Err(e) => {
                            tracing::warn!(schedule = %format!("{}/{}", key.0, key.1), "{e}");
                            None
                        }
                    };
                    if s.spec.continuous
                        && !s.spec.suspend
                        && s.metadata.deletion_timestamp.is_none()
                    {
                        wanted.push(key.clone());
                        // Its status is written only after tick() stored one (never a stale copy).
                        if let Some(status) = status {
                            keep_capturing(&ctx, s, status, &key, &mut captures).await;
                        }
                    }
                }
                captures.retain(|key, _| wanted.contains(key));
            }
            Err(e) => tracing::warn!("listing EtcdBackupSchedules: {e}"),
        }
        tokio::time::sleep(ctx.opts.tick).await;
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

async fn patch_status(
    api: &Api<EtcdBackupSchedule>,
    name: &str,
    status: &EtcdBackupScheduleStatus,
) -> Result<(), Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await?;
    Ok(())
}

/// Checks one schedule (creates its backup when due, trims its history) and returns its
/// status as now stored.
async fn tick(ctx: &Context, s: &EtcdBackupSchedule) -> Result<EtcdBackupScheduleStatus, Error> {
    let namespace = s.namespace().unwrap_or_else(|| "default".into());
    let name = s.name_any();
    let api: Api<EtcdBackupSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = s.metadata.generation;
    let old = s.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let cron = match etcdguard_workflow::schedule::Schedule::cron(&s.spec.schedule) {
        Ok(c) => c,
        Err(e) => {
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                "InvalidSchedule",
                &e.to_string(),
                generation,
            );
            if !same_conditions(&old, &status) {
                patch_status(&api, &name, &status).await?;
                ctx.event(s, true, "InvalidSchedule", e.to_string()).await;
            }
            return Ok(status);
        }
    };
    let msg = format!("backups {}", cron.describe());
    set_condition(&mut status.conditions, "Ready", true, "Scheduled", &msg, generation);
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Utc::now();
    let last = old
        .last_schedule_time
        .as_deref()
        .and_then(parse_time)
        .or_else(|| {
            s.metadata.creation_timestamp.as_ref().and_then(|t| parse_time(&t.0.to_string()))
        })
        .unwrap_or(now);
    let due = cron.next(last, Some(last)).is_some_and(|next| next <= now);
    if due && !s.spec.suspend && s.metadata.deletion_timestamp.is_none() {
        let backup_name = format!("{name}-{}", now.format("%Y%m%d%H%M%S"));
        let backup = EtcdBackup {
            metadata: ObjectMeta {
                name: Some(backup_name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(SCHEDULE_LABEL.to_string(), name.clone())])),
                owner_references: Some(vec![owner(s)]),
                ..Default::default()
            },
            spec: s.spec.template.clone(),
            status: None,
        };
        match backups.create(&PostParams::default(), &backup).await {
            Ok(_) => {
                ctx.event(s, false, "BackupCreated", format!("created EtcdBackup {backup_name}"))
                    .await
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        status.last_schedule_time = Some(now.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    status.last_successful_backup =
        trim_history(ctx, s, &backups).await?.or(old.last_successful_backup.clone());
    if status != old {
        patch_status(&api, &name, &status).await?;
    }
    Ok(status)
}

fn same_conditions(a: &EtcdBackupScheduleStatus, b: &EtcdBackupScheduleStatus) -> bool {
    a.conditions.len() == b.conditions.len()
        && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

fn owner(s: &EtcdBackupSchedule) -> OwnerReference {
    OwnerReference {
        api_version: EtcdBackupSchedule::api_version(&()).into_owned(),
        kind: EtcdBackupSchedule::kind(&()).into_owned(),
        name: s.name_any(),
        uid: s.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Deletes the schedule's finished `EtcdBackup`s beyond its history limits (oldest first);
/// returns the name of the newest that succeeded.
async fn trim_history(
    ctx: &Context,
    s: &EtcdBackupSchedule,
    backups: &Api<EtcdBackup>,
) -> Result<Option<String>, Error> {
    let list = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={}", s.name_any())))
        .await?;
    let mut items = list.items;
    // Newest first: the name carries the time, the creation time breaks ties.
    items.sort_by(|a, b| {
        (b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any())
            .cmp(&(a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any()))
    });
    let phase =
        |b: &EtcdBackup| b.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let newest_ok = items.iter().find(|b| phase(b) == "Succeeded").map(|b| b.name_any());
    for (wanted, limit) in
        [("Succeeded", s.spec.successful_history_limit), ("Failed", s.spec.failed_history_limit)]
    {
        for old in items.iter().filter(|b| phase(b) == wanted).skip(limit as usize) {
            match backups.delete(&old.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(backup = %old.name_any(), "history limit: EtcdBackup deleted (the backup stays in the repository)")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let _ = ctx;
    Ok(newest_ok)
}

/// The `backup prune` flags of a retention policy; empty when it has no rule.
fn keep_flags(r: &RetentionSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, v) in [
        ("--keep-last", r.keep_last),
        ("--keep-hourly", r.keep_hourly),
        ("--keep-daily", r.keep_daily),
        ("--keep-weekly", r.keep_weekly),
        ("--keep-monthly", r.keep_monthly),
        ("--keep-yearly", r.keep_yearly),
    ] {
        if let Some(n) = v.filter(|n| *n > 0) {
            out.push(flag.to_string());
            out.push(n.to_string());
        }
    }
    if let Some(w) = &r.keep_within {
        out.push("--keep-within".into());
        out.push(w.clone());
    }
    out
}

/// After a backup of schedule `name` succeeded: prune the repository by its retention rules.
pub async fn after_success(ctx: &Context, namespace: &str, name: &str) {
    let api: Api<EtcdBackupSchedule> = Api::namespaced(ctx.client.clone(), namespace);
    let Ok(Some(s)) = api.get_opt(name).await else { return };
    let Some(retention) = &s.spec.retention else { return };
    let flags = keep_flags(retention);
    if flags.is_empty() {
        return;
    }
    let cmd = match ctx.runner.repo_command(namespace, &s.spec.template.repository, "prune").await {
        Ok(mut cmd) => {
            cmd.args(&flags).args(["-w", "json"]);
            cmd
        }
        Err(e) => {
            ctx.event(&s, true, "PruneFailed", e.to_string()).await;
            return;
        }
    };
    match runner::output(cmd).await {
        Ok(out) => {
            let report: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
            let removed = report["backupsRemoved"].as_u64().unwrap_or(0);
            ctx.event(
                &s,
                false,
                "Pruned",
                format!("retention applied: {removed} backup(s) removed"),
            )
            .await;
            ctx.inventory_wake.notify_one();
        }
        Err(f) => ctx.event(&s, true, "PruneFailed", f.message).await,
    }
}

/// Keeps a `backup follow` running for a continuous schedule, restarting one that ended,
/// and says so in the `Capturing` condition.
async fn keep_capturing(
    ctx: &Context,
    s: &EtcdBackupSchedule,
    mut status: EtcdBackupScheduleStatus,
    key: &(String, String),
    captures: &mut HashMap<(String, String), Capture>,
) {
    let generation = s.metadata.generation;
    // `status` is what tick() stored just now, so this patch never undoes its changes.
    let before = status.clone();
    if let Some(c) = captures.get_mut(key) {
        match c.child.try_wait() {
            Ok(None) => {
                set_condition(
                    &mut status.conditions,
                    "Capturing",
                    true,
                    "Following",
                    "backup follow runs",
                    generation,
                );
                if !same_conditions(&before, &status) {
                    let api: Api<EtcdBackupSchedule> = Api::namespaced(ctx.client.clone(), &key.0);
                    let _ = patch_status(&api, &key.1, &status).await;
                }
                return;
            }
            Ok(Some(exit)) => {
                let reason = runner::reason_of(exit.code());
                let log = std::fs::read(c.scratch.path().join("follow.log")).unwrap_or_default();
                let msg = format!(
                    "backup follow ended ({exit}): {}; restarting",
                    runner::last_lines(&log)
                );
                set_condition(&mut status.conditions, "Capturing", false, reason, &msg, generation);
                ctx.event(s, true, "CaptureStopped", msg).await;
                captures.remove(key);
            }
            Err(_) => {
                captures.remove(key);
            }
        }
    }
    let started = async {
        let scratch = ctx.runner.scratch()?;
        let mut cmd =
            ctx.runner.backup_command(&key.0, &s.spec.template, "follow", scratch.path()).await?;
        // Its log goes to a file (a pipe nobody reads would fill up); its end says why it stopped.
        let log_path = scratch.path().join("follow.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Error::Io(log_path.clone(), e))?;
        cmd.stdout(std::process::Stdio::null()).stderr(log).kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| Error::Io(ctx.runner.exe.clone(), e))?;
        Ok::<_, Error>(Capture { child, scratch })
    };
    match started.await {
        Ok(c) => {
            captures.insert(key.clone(), c);
            set_condition(
                &mut status.conditions,
                "Capturing",
                true,
                "Following",
                "backup follow runs",
                generation,
            );
        }
        Err(e) => {
            set_condition(
                &mut status.conditions,
                "Capturing",
                false,
                "InvalidSpec",
                &e.to_string(),
                generation,
            );
        }
    }
    if !same_conditions(&before, &status) {
        let api: Api<EtcdBackupSchedule> = Api::namespaced(ctx.client.clone(), &key.0);
        let _ = patch_status(&api, &key.1, &status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_becomes_prune_flags_and_no_rule_means_no_prune() {
        assert!(keep_flags(&RetentionSpec::default()).is_empty());
        assert!(keep_flags(&RetentionSpec { keep_last: Some(0), ..Default::default() }).is_empty());
        let r = RetentionSpec {
            keep_last: Some(3),
            keep_daily: Some(7),
            keep_within: Some("72h".into()),
            ..Default::default()
        };
        assert_eq!(
            keep_flags(&r),
            ["--keep-last", "3", "--keep-daily", "7", "--keep-within", "72h"]
        );
    }
}
