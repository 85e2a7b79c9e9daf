//! The `EtcdBackup` controller: a new object is taken once by a child `etcdguard backup
//! create`; its status moves Pending → Running → Succeeded or Failed, with the conditions
//! `Complete` and `Failed` and an Event at each step. An object found Running when the
//! operator starts was interrupted by the previous leader's end and is marked Failed (its
//! spec cannot change, so a new object is the retry).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::crd::{EtcdBackup, EtcdBackupStatus, SCHEDULE_LABEL};
use crate::{now_rfc3339, runner, set_condition, Context, Error};

pub async fn run(ctx: Context) -> Result<(), Error> {
    let api: Api<EtcdBackup> = match &ctx.opts.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!("backup controller: {e}");
            }
        })
        .await;
    Ok(())
}

fn error_policy(_obj: Arc<EtcdBackup>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("EtcdBackup: {err}");
    Action::requeue(Duration::from_secs(10))
}

async fn patch_status(
    api: &Api<EtcdBackup>,
    name: &str,
    status: &EtcdBackupStatus,
) -> Result<(), Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await?;
    Ok(())
}

async fn reconcile(obj: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = obj.metadata.generation;
    let mut status = obj.status.clone().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    if ctx.taken.lock().map(|t| t.contains(&uid)).unwrap_or(true) {
        // Ours: this is an older version of it from the cache; the newer one follows.
        return Ok(Action::await_change());
    }
    match status.phase.as_deref() {
        Some("Succeeded") | Some("Failed") => return Ok(Action::await_change()),
        Some("Running") => {
            status.phase = Some("Failed".into());
            status.completion_time = Some(now_rfc3339());
            let msg =
                "the operator stopped while this backup ran; create a new EtcdBackup to retry";
            set_condition(
                &mut status.conditions,
                "Complete",
                false,
                "Interrupted",
                msg,
                generation,
            );
            set_condition(&mut status.conditions, "Failed", true, "Interrupted", msg, generation);
            patch_status(&api, &name, &status).await?;
            ctx.event(obj.as_ref(), true, "Interrupted", msg.into()).await;
            return Ok(Action::await_change());
        }
        _ => {}
    }
    if let Ok(mut taken) = ctx.taken.lock() {
        taken.insert(uid.clone());
    }
    status.phase = Some("Running".into());
    status.start_time = Some(now_rfc3339());
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        "Complete",
        false,
        "Running",
        "taking the backup",
        generation,
    );
    set_condition(&mut status.conditions, "Failed", false, "Running", "", generation);
    if let Err(e) = patch_status(&api, &name, &status).await {
        // Not started: the retry (error_policy) may take it.
        if let Ok(mut taken) = ctx.taken.lock() {
            taken.remove(&uid);
        }
        return Err(e);
    }
    ctx.event(
        obj.as_ref(),
        false,
        "BackupStarted",
        format!(
            "backing up {} into {}",
            obj.spec.etcd.endpoints.join(","),
            obj.spec.repository.url
        ),
    )
    .await;
    tracing::info!(backup = %format!("{namespace}/{name}"), "backup started");

    let result = take(&ctx, &namespace, &obj).await;
    status.completion_time = Some(now_rfc3339());
    match result {
        Ok(manifest) => {
            let id = manifest["id"].as_str().unwrap_or_default().to_string();
            status.phase = Some("Succeeded".into());
            status.backup_id = Some(id.clone());
            status.revision = manifest["etcd"]["revision"].as_i64();
            status.size = manifest["sizes"]["original"].as_u64();
            let msg = format!(
                "backup {id} stored in {} (revision {})",
                obj.spec.repository.url,
                status.revision.unwrap_or_default()
            );
            set_condition(
                &mut status.conditions,
                "Complete",
                true,
                "BackupStored",
                &msg,
                generation,
            );
            set_condition(&mut status.conditions, "Failed", false, "BackupStored", "", generation);
            patch_status(&api, &name, &status).await?;
            ctx.event(obj.as_ref(), false, "BackupStored", msg).await;
            ctx.stats.backup_finished(true);
            tracing::info!(backup = %format!("{namespace}/{name}"), id = %id, "backup stored");
            if let Some(schedule) = obj.labels().get(SCHEDULE_LABEL) {
                crate::schedule::after_success(&ctx, &namespace, schedule).await;
            }
        }
        Err(f) => {
            status.phase = Some("Failed".into());
            set_condition(
                &mut status.conditions,
                "Complete",
                false,
                f.reason,
                &f.message,
                generation,
            );
            set_condition(&mut status.conditions, "Failed", true, f.reason, &f.message, generation);
            patch_status(&api, &name, &status).await?;
            ctx.event(obj.as_ref(), true, f.reason, f.message.clone()).await;
            ctx.stats.backup_finished(false);
            tracing::warn!(backup = %format!("{namespace}/{name}"), reason = f.reason, "backup failed: {}", f.message);
        }
    }
    ctx.inventory_wake.notify_one();
    Ok(Action::await_change())
}

/// Runs `backup create -w json` for the object; the stored manifest, or why not.
async fn take(
    ctx: &Context,
    namespace: &str,
    obj: &EtcdBackup,
) -> Result<serde_json::Value, runner::ChildFailure> {
    let spec_error =
        |e: Error| runner::ChildFailure { reason: "InvalidSpec", message: e.to_string() };
    let scratch = ctx.runner.scratch().map_err(spec_error)?;
    let mut cmd = ctx
        .runner
        .backup_command(namespace, &obj.spec, "create", scratch.path())
        .await
        .map_err(spec_error)?;
    cmd.args(["-w", "json"]);
    let out = runner::output(cmd).await?;
    serde_json::from_slice(&out).map_err(|e| runner::ChildFailure {
        reason: "BackupFailed",
        message: format!("backup create printed no manifest: {e}"),
    })
}
