//! `etcdguard operator`: backups as Kubernetes objects.
//!
//! The operator records and schedules; it never restores (restore needs no API server). It
//! watches three kinds of `etcdguard.io/v1alpha1` (see [`crd`]):
//!
//! - [`backup`]: an `EtcdBackup` is taken once by a child `etcdguard backup create` (see
//!   [`runner`] for why a child), its status conditions and Events say how it went;
//! - [`schedule`]: an `EtcdBackupSchedule` creates `EtcdBackup`s on its cron schedule, prunes
//!   the repository by its retention rules, keeps its history of `EtcdBackup`s bounded and
//!   runs continuous capture when asked;
//! - [`inventory`]: one `EtcdBackupRecord` per backup of every repository named by an
//!   `EtcdBackup` or a schedule, following the repository whoever changes it.
//!
//! Only one operator works at a time: the replicas elect a leader through a
//! coordination.k8s.io Lease ([`lease`]); the others wait and take over when its lease
//! runs out.

pub mod backup;
pub mod crd;
pub mod inventory;
pub mod lease;
pub mod metrics;
pub mod runner;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

pub use crd::crds_yaml;

/// What went wrong, for the command line's message and exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot reach the Kubernetes API: {0} (in a pod the service account is used; elsewhere set KUBECONFIG)")]
    Config(String),
    #[error("Secret {namespace}/{name}: {reason}")]
    Secret { namespace: String, name: String, reason: String },
    #[error("{0}")]
    Spec(String),
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error("lost the leader lease {0}; exiting so that a standby takes over")]
    LostLease(String),
}

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Watch only this namespace (default: all namespaces).
    pub namespace: Option<String>,
    /// The etcdguard binary the work is done by (the running one).
    pub exe: PathBuf,
    /// Scratch space: TLS files from Secrets, snapshot spools.
    pub work_dir: PathBuf,
    /// How often the inventory re-reads every repository.
    pub inventory_interval: Duration,
    /// How often schedules are checked (a seconds-level cron needs about a second).
    pub tick: Duration,
    /// The leader election's Lease: namespace and name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    /// How long a leader that stopped renewing keeps the lease.
    pub lease_duration: Duration,
    /// Where `/livez`, `/healthz` and `/metrics` are served (None: not at all).
    pub listen: Option<String>,
}

/// What every part of the operator shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub opts: OperatorOptions,
    pub runner: runner::Runner,
    pub recorder: Recorder,
    /// Wakes the inventory (a backup finished, a record was deleted).
    pub inventory_wake: Arc<tokio::sync::Notify>,
    /// The uids of the EtcdBackups this process has taken or is taking. The controller's
    /// cache may still show an older version of an object (no status, or Running) after
    /// our own status update: such an object must not be taken twice, nor be marked
    /// interrupted.
    pub taken: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// What this replica has done, for `/healthz` and `/metrics`.
    pub stats: metrics::Stats,
}

impl Context {
    /// Records a Kubernetes Event on `obj`; a failure to record is only logged.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!("recording event {reason}: {e}");
        }
    }
}

/// Sets condition `type_` in `conditions`: a change of status moves lastTransitionTime, the
/// same status keeps it.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let message: String = message.chars().take(32 * 1024).collect();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs the operator until SIGTERM/SIGINT (then the lease is released) or until the lease
/// is lost (an error: the pod restarts and stands by).
pub fn run(opts: OperatorOptions) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io("tokio runtime".into(), e))?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: OperatorOptions) -> Result<(), Error> {
    // Children keep spools and TLS files here (and use it as TMPDIR): private to us.
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = &opts.work_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::Io(dir.clone(), e))?;
    }
    let stats = metrics::Stats::default();
    // Served before the lease is won: a standby answers its probes too.
    if let Some(listen) = &opts.listen {
        let addr = metrics::serve(listen, stats.clone())
            .map_err(|e| Error::Spec(format!("--listen {listen}: {e}")))?;
        tracing::info!("serving /livez, /healthz and /metrics on http://{addr}");
    }
    let client = Client::try_default().await.map_err(|e| Error::Config(e.to_string()))?;
    let mut elector = lease::Elector::new(
        client.clone(),
        &opts.lease_namespace,
        &opts.lease_name,
        &opts.identity,
        opts.lease_duration,
    );
    elector.stats = stats.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Io("SIGTERM handler".into(), e))?;
    tracing::info!(
        lease = %format!("{}/{}", opts.lease_namespace, opts.lease_name),
        identity = %opts.identity,
        "waiting to lead"
    );
    tokio::select! {
        r = elector.acquire() => r?,
        _ = terminate.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    tracing::info!(identity = %opts.identity, "leading");
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "etcdguard-operator".into(), instance: Some(opts.identity.clone()) },
    );
    let ctx = Context {
        runner: runner::Runner {
            exe: opts.exe.clone(),
            client: client.clone(),
            work_dir: opts.work_dir.clone(),
        },
        client,
        opts,
        recorder,
        inventory_wake: Arc::new(tokio::sync::Notify::new()),
        taken: Arc::default(),
        stats,
    };
    let result = tokio::select! {
        r = elector.keep() => r,
        r = backup::run(ctx.clone()) => r,
        r = schedule::run(ctx.clone()) => r,
        r = inventory::run(ctx.clone()) => r,
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if result.is_ok() {
        elector.release().await;
        tracing::info!("stopped; lease released");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_moves_its_transition_time_only_when_its_status_changes() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Complete", false, "Running", "taking", Some(1));
        let first = conditions[0].last_transition_time.clone();
        conditions[0].last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        set_condition(&mut conditions, "Complete", false, "Running", "still", Some(1));
        assert_eq!(conditions[0].last_transition_time.0, k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(conditions[0].message, "still");
        set_condition(&mut conditions, "Complete", true, "BackupStored", "done", Some(2));
        assert!(conditions[0].last_transition_time.0 >= first.0);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].status, "True");
    }

    #[test]
    fn crds_carry_the_immutability_rule_and_all_three_kinds() {
        let yaml = crds_yaml();
        for kind in ["EtcdBackup", "EtcdBackupSchedule", "EtcdBackupRecord"] {
            assert!(yaml.contains(&format!("kind: {kind}\n")), "{kind}");
        }
        assert!(yaml.contains("rule: self.spec == oldSelf.spec"));
    }
}
