//! The inventory: one `EtcdBackupRecord` per backup of every repository an `EtcdBackup` or
//! `EtcdBackupSchedule` names, in that object's namespace. Each sync lists the repository
//! (`backup list`) and the records labelled with it: a backup without a record gets one, a
//! record whose backup is gone is deleted. A repository that cannot be read changes nothing
//! (an outage must not empty the inventory).
//!
//! Deleting a record never deletes its backup, unless its `deletionPolicy` is `Delete`: such
//! a record carries a finalizer, and its deletion runs `backup delete --force` first. A
//! record deleted under `Retain` comes back at the next sync, since its backup is still there.

use std::collections::{BTreeMap, HashMap};

use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sha2::Digest;

use crate::crd::{
    DeletionPolicy, EtcdBackup, EtcdBackupRecord, EtcdBackupRecordSpec, EtcdBackupSchedule,
    RepositorySpec, BACKUP_ID_LABEL, REPOSITORY_LABEL,
};
use crate::{runner, Context, Error};

pub const DELETE_FINALIZER: &str = "etcdguard.io/delete-backup";

/// A short stable name of a repository URL (labels cannot hold a URL).
pub fn repository_key(url: &str) -> String {
    let digest = sha2::Sha256::digest(url.trim_end_matches('/').as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

pub async fn run(ctx: Context) -> Result<(), Error> {
    loop {
        match sync_all(&ctx).await {
            Ok(records) => ctx.stats.inventory_pass(Ok(records)),
            Err(e) => {
                tracing::warn!("inventory: {e}");
                ctx.stats.inventory_pass(Err(e.to_string()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.opts.inventory_interval) => {}
            _ = ctx.inventory_wake.notified() => {}
        }
    }
}

/// One pass over every repository: how many backups they hold, or the first failure (every
/// repository is still tried).
async fn sync_all(ctx: &Context) -> Result<u64, Error> {
    let (backups, schedules): (Api<EtcdBackup>, Api<EtcdBackupSchedule>) = match &ctx.opts.namespace
    {
        Some(ns) => {
            (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns))
        }
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // (namespace, repository key) → how to open it; the first object naming it wins.
    let mut repos: BTreeMap<(String, String), RepositorySpec> = BTreeMap::new();
    for s in schedules.list(&ListParams::default()).await?.items {
        let ns = s.namespace().unwrap_or_default();
        let key = repository_key(&s.spec.template.repository.url);
        repos.entry((ns, key)).or_insert(s.spec.template.repository.clone());
    }
    for b in backups.list(&ListParams::default()).await?.items {
        let ns = b.namespace().unwrap_or_default();
        let key = repository_key(&b.spec.repository.url);
        repos.entry((ns, key)).or_insert(b.spec.repository.clone());
    }
    let mut records = 0;
    let mut failed = None;
    for ((namespace, key), repo) in &repos {
        match sync_repository(ctx, namespace, key, repo).await {
            Ok(n) => records += n,
            Err(e) => {
                tracing::warn!(repository = %repo.url, namespace = %namespace, "inventory: {e}");
                failed.get_or_insert(Error::Spec(format!("{}: {e}", repo.url)));
            }
        }
    }
    failed.map_or(Ok(records), Err)
}

/// One backup as `backup list -w json` prints it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    id: String,
    created: String,
    cluster: Option<String>,
    revision: i64,
    size: u64,
    snapshot_size: u64,
    verified: bool,
    last_verified: Option<String>,
    #[serde(default)]
    last_drilled: Option<String>,
    hostname: Option<String>,
}

async fn sync_repository(
    ctx: &Context,
    namespace: &str,
    key: &str,
    repo: &RepositorySpec,
) -> Result<u64, Error> {
    let records: Api<EtcdBackupRecord> = Api::namespaced(ctx.client.clone(), namespace);
    let existing: HashMap<String, EtcdBackupRecord> = records
        .list(&ListParams::default().labels(&format!("{REPOSITORY_LABEL}={key}")))
        .await?
        .items
        .into_iter()
        .map(|r| (r.spec.backup_id.clone(), r))
        .collect();

    // Records being deleted first: a Delete policy deletes the backup before the listing.
    for r in existing.values() {
        if r.metadata.deletion_timestamp.is_some()
            && r.finalizers().iter().any(|f| f == DELETE_FINALIZER)
        {
            delete_backup(ctx, namespace, repo, &records, r).await;
        }
    }

    let mut cmd = ctx.runner.repo_command(namespace, repo, "list").await?;
    cmd.args(["-w", "json"]);
    let out = runner::output(cmd)
        .await
        .map_err(|f| Error::Spec(format!("backup list {}: {}", repo.url, f.message)))?;
    let listed: Vec<Listed> = serde_json::from_slice(&out)
        .map_err(|e| Error::Spec(format!("backup list {} printed no list: {e}", repo.url)))?;

    let mut present = std::collections::HashSet::new();
    for b in listed {
        present.insert(b.id.clone());
        let spec = EtcdBackupRecordSpec {
            repository: repo.url.clone(),
            backup_id: b.id.clone(),
            created: b.created,
            cluster: b.cluster,
            revision: b.revision,
            size: b.size,
            snapshot_size: b.snapshot_size,
            verified: b.verified,
            last_verified: b.last_verified,
            last_drilled: b.last_drilled,
            hostname: b.hostname,
            deletion_policy: None,
        };
        let Some(record) = existing.get(&b.id) else {
            let record = EtcdBackupRecord {
                metadata: ObjectMeta {
                    name: Some(format!("{key}-{}", b.id.to_ascii_lowercase())),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([
                        (REPOSITORY_LABEL.to_string(), key.to_string()),
                        (BACKUP_ID_LABEL.to_string(), b.id.clone()),
                    ])),
                    ..Default::default()
                },
                spec,
            };
            match records.create(&PostParams::default(), &record).await {
                Ok(_) => {
                    tracing::info!(repository = %repo.url, id = %b.id, "inventory: record added")
                }
                // A record of this name is still being deleted (Retain): it comes back next time.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        };
        // What the repository says changed (a verify or scrub since): the record follows;
        // the user's deletionPolicy stays.
        let spec = EtcdBackupRecordSpec { deletion_policy: record.spec.deletion_policy, ..spec };
        if spec != record.spec && record.metadata.deletion_timestamp.is_none() {
            let patch =
                json!({"metadata": {"resourceVersion": record.resource_version()}, "spec": spec});
            match records
                .patch(&record.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                // Changed meanwhile (e.g. its policy): the next sync compares again.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let wants_finalizer = record.spec.deletion_policy == Some(DeletionPolicy::Delete)
            && record.metadata.deletion_timestamp.is_none();
        let has_finalizer = record.finalizers().iter().any(|f| f == DELETE_FINALIZER);
        if wants_finalizer != has_finalizer && record.metadata.deletion_timestamp.is_none() {
            set_finalizer(&records, record, wants_finalizer).await?;
        }
    }
    for (id, r) in &existing {
        if present.contains(id) {
            continue;
        }
        // The backup is gone from the repository (deleted, pruned): so goes its record.
        if r.finalizers().iter().any(|f| f == DELETE_FINALIZER) {
            set_finalizer(&records, r, false).await?;
        }
        if r.metadata.deletion_timestamp.is_none() {
            match records.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(repository = %repo.url, id = %id, "inventory: record removed (backup gone)")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(present.len() as u64)
}

async fn set_finalizer(
    records: &Api<EtcdBackupRecord>,
    r: &EtcdBackupRecord,
    on: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> =
        r.finalizers().iter().filter(|f| *f != DELETE_FINALIZER).cloned().collect();
    if on {
        finalizers.push(DELETE_FINALIZER.into());
    }
    // The resourceVersion makes a concurrent change of the list a conflict, not a loss.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": r.resource_version()}});
    match records.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A record with deletionPolicy Delete is being deleted: delete its backup, then let the
/// record go. A failure leaves the finalizer (and says why in an Event); the next sync tries
/// again.
async fn delete_backup(
    ctx: &Context,
    namespace: &str,
    repo: &RepositorySpec,
    records: &Api<EtcdBackupRecord>,
    r: &EtcdBackupRecord,
) {
    let id = &r.spec.backup_id;
    let result = match ctx.runner.repo_command(namespace, repo, "delete").await {
        Ok(mut cmd) => {
            cmd.args(["--force", id]);
            runner::output(cmd).await.map(|_| ()).or_else(|f| {
                // Already gone from the repository: nothing left to delete.
                if f.reason == "NotFound" {
                    Ok(())
                } else {
                    Err(f.message)
                }
            })
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::info!(repository = %repo.url, id = %id, "backup deleted with its record (deletionPolicy Delete)");
            if let Err(e) = set_finalizer(records, r, false).await {
                tracing::warn!("record {}: {e}", r.name_any());
            }
        }
        Err(message) => ctx.event(r, true, "DeleteFailed", format!("backup {id}: {message}")).await,
    }
}
