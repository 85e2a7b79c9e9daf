//! `etcdguard cluster finish`: what the cluster needs after etcd was restored.
//!
//! A restored etcd brings back the API objects of the backup's moment; the machines moved
//! on. Kubelets whose certificates rotated since then ask again (pending CSRs), hosts that
//! left the control plane still have Node objects, Leases and apiserver endpoints, and on
//! OpenShift the static-pod operators must roll their pods out again. [`finish`] looks at
//! all of it through the API server (kube-rs), reports what needs doing, and with
//! [`Options::apply`] does it — approving only CSRs whose requestor is the node named in
//! the request, removing only the hosts the caller named, and waiting (bounded) for the
//! rollouts and for every Node to be Ready.
//!
//! Nothing here prints: progress lines go through the caller's callback, the result is a
//! [`Report`] (serde, snake_case) the CLI renders.

mod csr;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::Serialize;

pub use csr::{review as review_csr, CsrFacts};

/// The admin kubeconfigs a control-plane node has, in the order they are tried when neither
/// `--kubeconfig` nor `$KUBECONFIG` names one: kubeadm, OpenShift's localhost recovery
/// kubeconfig (works while the load balancer or DNS does not), k3s/RKE2.
pub const NODE_KUBECONFIGS: [&str; 4] = [
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/static-pod-resources/kube-apiserver-certs/secrets/node-kubeconfigs/localhost-recovery.kubeconfig",
    "/etc/rancher/k3s/k3s.yaml",
    "/etc/rancher/rke2/rke2.yaml",
];

/// The kubelet signers whose pending requests `finish` reviews.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// What `finish` should do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--kubeconfig`; else `$KUBECONFIG` (`kubeconfig_env`), else the node's admin kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// The value of `$KUBECONFIG` (passed in so the library reads no environment).
    pub kubeconfig_env: Option<String>,
    /// Where the node's files are (`/`; tests point it elsewhere).
    pub root: PathBuf,
    /// Change things; without it nothing is written.
    pub apply: bool,
    /// The control-plane hosts of the restored cluster (node names or addresses): control-plane
    /// Nodes not among them are gone hosts; a bootstrap client CSR for one of them may be
    /// approved before its Node exists.
    pub hosts: Vec<String>,
    /// Gone hosts whose Node, Lease and apiserver endpoints may be removed (each must be a gone
    /// host; this is the confirmation, so there is no "all").
    pub remove_nodes: Vec<String>,
    /// Bound of every wait: /readyz, the OpenShift rollouts, every Node Ready.
    pub wait: Duration,
    /// How often the waits look again.
    pub poll: Duration,
    /// A Node counts as Ready only when its Ready condition is True and its kubelet's last
    /// heartbeat (node Lease renewal, else the condition's lastHeartbeatTime) is at most this
    /// old: a restore brings back the backup's conditions, which say Ready whether or not the
    /// kubelet reports today. Zero: the condition alone.
    pub heartbeat_grace: Duration,
    /// HyperShift: `NAMESPACE/NAME` of the HostedCluster (the kubeconfig is then the
    /// management cluster's, and this is the only step).
    pub hosted_cluster: Option<String>,
    /// The snapshot URL to write into the HostedCluster (`backup url`'s output; a credential:
    /// never printed nor reported).
    pub restore_snapshot_url: Option<String>,
    /// Test hook (`ETCDGUARD_FAILPOINT`): `hostedcluster-after-url` fails right after the
    /// URL is written, so the undo runs.
    pub failpoint: Option<String>,
}

/// What kind of failure (the CLI maps these to exit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No kubeconfig found, or a flag that cannot work.
    Usage,
    NotFound,
    /// The API server did not answer (or not ready within the wait).
    Unreachable,
    /// Authentication or authorization failed.
    TlsOrAuth,
    /// A safety check refused the change; nothing was changed.
    Refused,
    Failure,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
}

fn kube_err(what: &str, e: kube::Error) -> Error {
    let kind = match &e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => ErrorKind::TlsOrAuth,
        kube::Error::Api(s) if s.code == 404 => ErrorKind::NotFound,
        kube::Error::Api(_) => ErrorKind::Failure,
        kube::Error::Auth(_) | kube::Error::TlsRequired => ErrorKind::TlsOrAuth,
        _ => ErrorKind::Unreachable,
    };
    Error::new(kind, format!("{what}: {e}"))
}

/// The result: what was found, what was done, and what is still to do.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kubeconfig: String,
    pub server: String,
    pub applied: bool,
    pub csrs: Vec<CsrItem>,
    pub gone_nodes: Vec<GoneNode>,
    /// Present on OpenShift (the operator.openshift.io API group is served).
    pub openshift: Option<Vec<Rollout>>,
    pub nodes: Vec<NodeState>,
    /// HyperShift: the HostedCluster step, when `--hosted-cluster` was given.
    pub hosted_cluster: Option<HostedClusterStep>,
    /// What is left to do, one sentence each; empty when the cluster is finished.
    pub pending: Vec<String>,
    /// Each phase of this run and its wall time, in order.
    pub phases: Vec<Phase>,
}

/// One phase of the run and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// `api_ready`, `csrs`, `gone_hosts`, `openshift_rollout`, `hosted_cluster`, `nodes_ready`
    pub name: String,
    pub seconds: f64,
}

/// Times the phases of a run, each from the end of the previous one.
struct Phases {
    list: Vec<Phase>,
    since: Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases { list: Vec::new(), since: Instant::now() }
    }

    /// Ends the current phase as `name`.
    fn end(&mut self, name: &str) {
        let now = Instant::now();
        self.list.push(Phase { name: name.into(), seconds: (now - self.since).as_secs_f64() });
        self.since = now;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HostedClusterStep {
    /// `namespace/name`
    pub name: String,
    /// `spec.pausedUntil` before this run (put back after the write).
    pub paused_until_before: Option<String>,
    /// Whether `spec.etcd.managed.storage.restoreSnapshotURL` held a URL before this run.
    pub had_restore_snapshot_url: bool,
    /// True once the URL is written and reconciliation resumed.
    pub done: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CsrItem {
    pub name: String,
    pub signer: String,
    pub requestor: String,
    /// The node named in the request (CN system:node:NAME), when it names one.
    pub node: Option<String>,
    /// "approve" or "skip".
    pub decision: String,
    pub reason: String,
    /// True once approved by this run.
    pub approved: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct GoneNode {
    pub name: String,
    pub addresses: Vec<String>,
    pub lease: bool,
    /// `namespace/name` of the Endpoints and EndpointSlices holding one of its addresses.
    pub endpoints: Vec<String>,
    /// "remove" (named in --remove-nodes), "keep" (not named).
    pub decision: String,
    pub removed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    /// `etcds/cluster` …
    pub resource: String,
    pub force_redeployment_reason: Option<String>,
    pub latest_available_revision: i64,
    /// Each node's current revision (`status.nodeStatuses`).
    pub node_revisions: Vec<NodeRevision>,
    /// The revision a rollout started by this run had to reach, when one was started.
    pub started_above: Option<i64>,
    pub done: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeRevision {
    pub node: String,
    pub revision: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeState {
    pub name: String,
    /// Ready condition True and a heartbeat within [`Options::heartbeat_grace`].
    pub ready: bool,
    /// The Ready condition as stored (it may be the backup's).
    pub ready_condition: bool,
    /// Seconds since the kubelet's last heartbeat (Lease renewTime, else the Ready
    /// condition's lastHeartbeatTime), by this machine's clock; none when neither is set.
    pub heartbeat_age_seconds: Option<f64>,
}

/// The kubeconfig to use: the flag, then `$KUBECONFIG` (its first existing file), then the
/// first of [`NODE_KUBECONFIGS`] under `root`.
pub fn resolve_kubeconfig(opts: &Options) -> Result<PathBuf, Error> {
    if let Some(p) = &opts.kubeconfig {
        if !p.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("--kubeconfig {}: no such file", p.display()),
            ));
        }
        return Ok(p.clone());
    }
    if let Some(env) = opts.kubeconfig_env.as_deref().filter(|v| !v.is_empty()) {
        if let Some(p) = std::env::split_paths(env).find(|p| p.is_file()) {
            return Ok(p);
        }
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("KUBECONFIG={env}: no such file; fix it or pass --kubeconfig"),
        ));
    }
    let root = if opts.root.as_os_str().is_empty() { Path::new("/") } else { &opts.root };
    for candidate in NODE_KUBECONFIGS {
        let p = root.join(candidate.trim_start_matches('/'));
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::new(
        ErrorKind::Usage,
        format!(
            "no kubeconfig: pass --kubeconfig FILE or set KUBECONFIG (looked for {})",
            NODE_KUBECONFIGS.join(", ")
        ),
    ))
}

/// Looks at the cluster, and with `opts.apply` finishes it. `progress` gets one line per step.
pub fn finish(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report, Error> {
    let path = resolve_kubeconfig(opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Failure, format!("starting the runtime: {e}")))?;
    rt.block_on(run(opts, &path, progress))
}

async fn connect(path: &Path) -> Result<(Client, String), Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Usage, format!("kubeconfig {}: {e}", path.display()))
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(&e))?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| bad(&e))?;
    Ok((client, server))
}

async fn wait_ready(
    client: &Client,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let deadline = Instant::now() + opts.wait;
    let mut said = false;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).expect("static request");
        let last = match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => format!("not ready: {}", body.trim()),
            Err(e) => {
                let err = kube_err("GET /readyz", e);
                if err.kind == ErrorKind::TlsOrAuth {
                    return Err(err);
                }
                err.message
            }
        };
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!(
                    "the API server is not ready after {:?} ({last}); is etcd up? see `etcdguard cluster health`",
                    opts.wait
                ),
            ));
        }
        if !said {
            progress(&format!("waiting for the API server's /readyz ({last})"));
            said = true;
        }
        tokio::time::sleep(opts.poll).await;
    }
}

fn is_control_plane(node: &Node) -> bool {
    node.metadata.labels.as_ref().is_some_and(|l| {
        l.contains_key("node-role.kubernetes.io/control-plane")
            || l.contains_key("node-role.kubernetes.io/master")
    })
}

fn addresses(node: &Node) -> Vec<String> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().map(|a| a.address.clone()).collect())
        .unwrap_or_default()
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status.as_ref().and_then(|s| s.conditions.as_ref())?.iter().find(|c| c.type_ == "Ready")
}

/// Each Node's readiness: the Ready condition, and how old the kubelet's last heartbeat is.
fn node_states(
    nodes: &[Node],
    leases: &[Lease],
    skip: &BTreeSet<String>,
    grace: Duration,
) -> Vec<NodeState> {
    let now = k8s_openapi::jiff::Timestamp::now();
    nodes
        .iter()
        .filter(|n| !skip.contains(&node_name(n)))
        .map(|n| {
            let name = node_name(n);
            let condition = ready_condition(n);
            let renewed = leases
                .iter()
                .find(|l| l.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
            let heartbeat =
                renewed.or(condition.and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0)));
            let age = heartbeat
                .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0);
            let ready_condition = condition.is_some_and(|c| c.status == "True");
            let fresh = grace.is_zero() || age.is_none_or(|a| a <= grace.as_secs_f64());
            NodeState {
                name,
                ready: ready_condition && fresh,
                ready_condition,
                heartbeat_age_seconds: age,
            }
        })
        .collect()
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

/// Control-plane Nodes that are not among `hosts` (by name or any address).
fn gone_hosts<'a>(nodes: &'a [Node], hosts: &[String]) -> Vec<&'a Node> {
    if hosts.is_empty() {
        return Vec::new();
    }
    nodes
        .iter()
        .filter(|n| is_control_plane(n))
        .filter(|n| {
            let name = node_name(n);
            let addrs = addresses(n);
            !hosts.iter().any(|h| *h == name || addrs.contains(h))
        })
        .collect()
}

const OPENSHIFT_OPERATORS: [(&str, &str); 4] = [
    ("Etcd", "etcds"),
    ("KubeAPIServer", "kubeapiservers"),
    ("KubeControllerManager", "kubecontrollermanagers"),
    ("KubeScheduler", "kubeschedulers"),
];

fn operator_api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("operator.openshift.io", "v1", kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural))
}

fn rollout_of(plural: &str, obj: &DynamicObject) -> Rollout {
    let latest = obj.data["status"]["latestAvailableRevision"].as_i64().unwrap_or(0);
    let node_revisions: Vec<NodeRevision> = obj.data["status"]["nodeStatuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| NodeRevision {
                    node: n["nodeName"].as_str().unwrap_or_default().to_string(),
                    revision: n["currentRevision"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let done = !node_revisions.is_empty() && node_revisions.iter().all(|n| n.revision == latest);
    Rollout {
        resource: format!("{plural}/cluster"),
        force_redeployment_reason: obj.data["spec"]["forceRedeploymentReason"]
            .as_str()
            .map(str::to_string),
        latest_available_revision: latest,
        node_revisions,
        started_above: None,
        done,
    }
}

async fn serves_group(client: &Client, group: &str) -> Result<bool, Error> {
    let groups = client.list_api_groups().await.map_err(|e| kube_err("listing API groups", e))?;
    Ok(groups.groups.iter().any(|g| g.name == group))
}

async fn run(
    opts: &Options,
    kubeconfig: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, Error> {
    let (client, server) = connect(kubeconfig).await?;
    progress(&format!("API server {server} (kubeconfig {})", kubeconfig.display()));
    let mut phases = Phases::new();
    wait_ready(&client, opts, progress).await?;
    phases.end("api_ready");
    if let Some(hc) = &opts.hosted_cluster {
        let step = hosted_cluster(&client, opts, hc, progress).await?;
        phases.end("hosted_cluster");
        let pending = if step.done {
            Vec::new()
        } else {
            vec![format!("write restoreSnapshotURL into HostedCluster {hc} (run with --apply)")]
        };
        return Ok(Report {
            kubeconfig: kubeconfig.display().to_string(),
            server,
            applied: opts.apply,
            csrs: Vec::new(),
            gone_nodes: Vec::new(),
            openshift: None,
            nodes: Vec::new(),
            hosted_cluster: Some(step),
            pending,
            phases: phases.list,
        });
    }

    let node_api: Api<Node> = Api::all(client.clone());
    let nodes = node_api
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_err("listing Nodes", e))?
        .items;
    let node_names: BTreeSet<String> = nodes.iter().map(node_name).collect();

    // Gone hosts first: a --remove-nodes naming anything else is refused before any change.
    let gone = gone_hosts(&nodes, &opts.hosts);
    let gone_names: BTreeSet<String> = gone.iter().map(|n| node_name(n)).collect();
    for want in &opts.remove_nodes {
        if !gone_names.contains(want) {
            let why = if !node_names.contains(want) {
                "there is no such Node".to_string()
            } else if opts.hosts.is_empty() {
                "no --hosts were given, so no Node is judged gone".to_string()
            } else if opts.hosts.contains(want) {
                "it is one of --hosts".to_string()
            } else {
                "it is not a control-plane Node".to_string()
            };
            return Err(Error::new(
                ErrorKind::Refused,
                format!("--remove-nodes {want}: refused, {why}; nothing was changed"),
            ));
        }
    }

    // Kubelet CSRs.
    let csr_api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut csrs = review_pending_csrs(&csr_api, &nodes, &opts.hosts, &[]).await?;

    let mut gone_nodes = Vec::new();
    let ep_api: Api<Endpoints> = Api::all(client.clone());
    let slice_api: Api<EndpointSlice> = Api::all(client.clone());
    let all_endpoints = ep_api
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_err("listing Endpoints", e))?
        .items;
    let all_slices = slice_api
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_err("listing EndpointSlices", e))?
        .items;
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for n in &gone {
        let name = node_name(n);
        let addrs = addresses(n);
        let lease =
            lease_api.get_opt(&name).await.map_err(|e| kube_err("reading a Lease", e))?.is_some();
        let mut endpoints = Vec::new();
        for e in &all_endpoints {
            let holds =
                e.subsets.iter().flatten().any(|s| {
                    s.addresses.iter().chain(s.not_ready_addresses.iter()).flatten().any(|a| {
                        addrs.contains(&a.ip) || a.node_name.as_deref() == Some(name.as_str())
                    })
                });
            if holds && is_apiserver_service(&e.metadata) {
                endpoints.push(format!("endpoints {}", ns_name(&e.metadata)));
            }
        }
        for s in &all_slices {
            let holds = s.endpoints.iter().flatten().any(|ep| {
                ep.addresses.iter().any(|a| addrs.contains(a))
                    || ep.node_name.as_deref() == Some(name.as_str())
            });
            if holds && is_apiserver_slice(s) {
                endpoints.push(format!("endpointslice {}", ns_name(&s.metadata)));
            }
        }
        gone_nodes.push(GoneNode {
            decision: if opts.remove_nodes.contains(&name) { "remove" } else { "keep" }.into(),
            name,
            addresses: addrs,
            lease,
            endpoints,
            removed: false,
        });
    }

    let openshift = serves_group(&client, "operator.openshift.io").await?;
    let mut rollouts = Vec::new();
    if openshift {
        for (kind, plural) in OPENSHIFT_OPERATORS {
            let api = operator_api(&client, kind, plural);
            if let Some(obj) = api.get_opt("cluster").await.map_err(|e| kube_err(plural, e))? {
                rollouts.push(rollout_of(plural, &obj));
            }
        }
    }

    let mut pending = Vec::new();
    if opts.apply {
        // CSRs whose node is named in the request and is the requestor.
        for item in csrs.iter_mut().filter(|c| c.decision == "approve") {
            approve_item(&csr_api, item, "", progress).await?;
        }
    }
    phases.end("csrs");
    if opts.apply {
        for g in gone_nodes.iter_mut().filter(|g| g.decision == "remove") {
            remove_gone_host(&client, g, &all_endpoints, &all_slices).await?;
            g.removed = true;
            progress(&format!("removed Node {} (lease, apiserver endpoints)", g.name));
        }
    }
    phases.end("gone_hosts");
    if openshift {
        if opts.apply {
            rollouts = redeploy(&client, opts, rollouts, progress).await?;
        }
        phases.end("openshift_rollout");
    }

    // The end: every Node (but the removed ones) Ready with a fresh heartbeat; waited for only
    // when applying. Kubelets that come back during the wait ask for certificates then: their
    // requests are judged and approved as the first ones were.
    let removed: BTreeSet<String> =
        gone_nodes.iter().filter(|g| g.removed).map(|g| g.name.clone()).collect();
    let deadline = Instant::now() + opts.wait;
    let mut last_waiting = String::new();
    let nodes = loop {
        let listed = node_api
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_err("listing Nodes", e))?
            .items;
        let leases = lease_api
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_err("listing Leases", e))?;
        let now = node_states(&listed, &leases.items, &removed, opts.heartbeat_grace);
        let waiting: Vec<String> = now
            .iter()
            .filter(|n| !n.ready)
            .map(|n| match (n.ready_condition, n.heartbeat_age_seconds) {
                (true, Some(age)) => format!("{} (no heartbeat for {age:.0} s)", n.name),
                _ => n.name.clone(),
            })
            .collect();
        if waiting.is_empty() || !opts.apply || Instant::now() >= deadline {
            break now;
        }
        let seen: Vec<String> = csrs.iter().map(|c| c.name.clone()).collect();
        for mut item in review_pending_csrs(&csr_api, &listed, &opts.hosts, &seen).await? {
            if item.decision == "approve" {
                approve_item(&csr_api, &mut item, " (arrived during the wait)", progress).await?;
            } else {
                progress(&format!("skipped CSR {}: {}", item.name, item.reason));
            }
            csrs.push(item);
        }
        let line = waiting.join(", ");
        if line != last_waiting {
            progress(&format!("waiting for Nodes to be Ready: {line}"));
            last_waiting = line;
        }
        tokio::time::sleep(opts.poll.max(Duration::from_millis(200))).await;
    };
    phases.end("nodes_ready");

    for c in &csrs {
        if c.decision == "approve" && !c.approved {
            pending.push(format!("approve CSR {} (run with --apply)", c.name));
        }
    }
    for g in &gone_nodes {
        if !g.removed {
            pending.push(format!(
                "remove gone host {} (run with --apply --remove-nodes {})",
                g.name, g.name
            ));
        }
    }
    for r in &rollouts {
        if !r.done || (!opts.apply && openshift) {
            pending.push(if opts.apply {
                format!("{}: rollout not finished after {:?}", r.resource, opts.wait)
            } else {
                format!("{}: force a redeployment (run with --apply)", r.resource)
            });
        }
    }
    for n in nodes.iter().filter(|n| !n.ready) {
        pending.push(match (n.ready_condition, n.heartbeat_age_seconds) {
            (true, Some(age)) => format!(
                "Node {} is not Ready: its Ready condition is the stored one, the kubelet's last \
                 heartbeat was {age:.0} s ago (are its pending CSRs approved? is its kubelet running?)",
                n.name
            ),
            _ => format!("Node {} is not Ready", n.name),
        });
    }
    Ok(Report {
        kubeconfig: kubeconfig.display().to_string(),
        server,
        applied: opts.apply,
        csrs,
        gone_nodes,
        openshift: openshift.then_some(rollouts),
        nodes,
        hosted_cluster: None,
        pending,
        phases: phases.list,
    })
}

/// The undecided kubelet CSRs (but those named in `seen`), each with its verdict.
async fn review_pending_csrs(
    csr_api: &Api<CertificateSigningRequest>,
    nodes: &[Node],
    hosts: &[String],
    seen: &[String],
) -> Result<Vec<CsrItem>, Error> {
    let all_csrs =
        csr_api.list(&ListParams::default()).await.map_err(|e| kube_err("listing CSRs", e))?.items;
    let mut csrs = Vec::new();
    for c in &all_csrs {
        let name = c.metadata.name.clone().unwrap_or_default();
        if seen.contains(&name) {
            continue;
        }
        let conditions = c.status.as_ref().and_then(|s| s.conditions.as_ref());
        let decided = conditions.is_some_and(|cs| {
            cs.iter().any(|c| c.type_ == "Approved" || c.type_ == "Denied" || c.type_ == "Failed")
        });
        if decided {
            continue;
        }
        let signer = c.spec.signer_name.clone();
        if signer != CLIENT_SIGNER && signer != SERVING_SIGNER {
            continue;
        }
        let facts = CsrFacts {
            signer: &signer,
            username: c.spec.username.as_deref().unwrap_or_default(),
            groups: c.spec.groups.as_deref().unwrap_or_default(),
            request_pem: &c.spec.request.0,
        };
        let verdict = csr::review(
            &facts,
            |name| nodes.iter().find(|n| node_name(n) == name).map(addresses),
            hosts,
        );
        csrs.push(CsrItem {
            name,
            requestor: facts.username.to_string(),
            signer: signer.clone(),
            node: verdict.node,
            decision: if verdict.approve { "approve" } else { "skip" }.into(),
            reason: verdict.reason,
            approved: false,
        });
    }
    Ok(csrs)
}

async fn approve_item(
    csr_api: &Api<CertificateSigningRequest>,
    item: &mut CsrItem,
    note: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    approve(csr_api, &item.name).await?;
    item.approved = true;
    progress(&format!(
        "approved CSR {} ({} for {}){note}",
        item.name,
        item.signer,
        item.node.as_deref().unwrap_or("?")
    ));
    Ok(())
}

async fn merge_patch(
    api: &Api<DynamicObject>,
    name: &str,
    v: serde_json::Value,
) -> Result<(), kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&v)).await.map(|_| ())
}

/// HyperShift: writes `spec.etcd.managed.storage.restoreSnapshotURL` while reconciliation is
/// paused (`spec.pausedUntil: "true"`), then resumes it. A failed step puts the previous
/// values of both fields back before the error is returned.
async fn hosted_cluster(
    client: &Client,
    opts: &Options,
    which: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<HostedClusterStep, Error> {
    let Some((ns, name)) = which.split_once('/').filter(|(n, m)| !n.is_empty() && !m.is_empty())
    else {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("--hosted-cluster {which}: expected NAMESPACE/NAME"),
        ));
    };
    if !serves_group(client, "hypershift.openshift.io").await? {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the API server does not serve hypershift.openshift.io: --hosted-cluster needs the \
             management cluster's kubeconfig",
        ));
    }
    let gvk = GroupVersionKind::gvk("hypershift.openshift.io", "v1beta1", "HostedCluster");
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "hostedclusters"),
    );
    let obj = api.get(name).await.map_err(|e| kube_err(&format!("HostedCluster {which}"), e))?;
    let spec = &obj.data["spec"];
    let management = spec["etcd"]["managementType"].as_str().unwrap_or_default();
    if management != "Managed" {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "HostedCluster {which}: etcd managementType is {management:?}, not Managed; \
                 restoreSnapshotURL applies to managed etcd only; nothing was changed"
            ),
        ));
    }
    let prev_paused = spec["pausedUntil"].clone();
    let prev_url = spec["etcd"]["managed"]["storage"]["restoreSnapshotURL"].clone();
    let mut step = HostedClusterStep {
        name: which.to_string(),
        paused_until_before: prev_paused.as_str().map(str::to_string),
        had_restore_snapshot_url: prev_url.as_array().is_some_and(|a| !a.is_empty()),
        done: false,
    };
    if !opts.apply {
        return Ok(step);
    }
    let Some(url) = opts.restore_snapshot_url.as_deref() else {
        return Err(Error::new(
            ErrorKind::Usage,
            "--hosted-cluster --apply needs the snapshot URL: --restore-snapshot-url-file FILE \
             (the output of `etcdguard backup url`)",
        ));
    };
    let patch = |v: serde_json::Value| merge_patch(&api, name, v);
    patch(serde_json::json!({"spec": {"pausedUntil": "true"}}))
        .await
        .map_err(|e| kube_err(&format!("pausing HostedCluster {which}"), e))?;
    progress(&format!("HostedCluster {which}: reconciliation paused"));
    let steps = async {
        patch(serde_json::json!({"spec": {"etcd": {"managed": {"storage": {"restoreSnapshotURL": [url]}}}}}))
            .await
            .map_err(|e| kube_err("writing restoreSnapshotURL", e))?;
        progress(&format!("HostedCluster {which}: restoreSnapshotURL written"));
        if opts.failpoint.as_deref() == Some("hostedcluster-after-url") {
            return Err(Error::new(ErrorKind::Failure, "failpoint hostedcluster-after-url"));
        }
        patch(serde_json::json!({"spec": {"pausedUntil": prev_paused.clone()}}))
            .await
            .map_err(|e| kube_err("resuming reconciliation", e))?;
        progress(&format!("HostedCluster {which}: reconciliation resumed"));
        Ok(())
    };
    if let Err(e) = steps.await {
        let undo = serde_json::json!({"spec": {"pausedUntil": prev_paused,
            "etcd": {"managed": {"storage": {"restoreSnapshotURL": prev_url}}}}});
        return Err(match patch(undo).await {
            Ok(()) => Error::new(
                e.kind,
                format!(
                    "HostedCluster {which}: {}; the previous pausedUntil and restoreSnapshotURL \
                     were put back",
                    e.message
                ),
            ),
            Err(u) => Error::new(
                e.kind,
                format!(
                    "HostedCluster {which}: {}; putting the previous values back failed too ({u}): \
                     check spec.pausedUntil and spec.etcd.managed.storage.restoreSnapshotURL by hand",
                    e.message
                ),
            ),
        });
    }
    step.done = true;
    Ok(step)
}

fn ns_name(m: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// The API server's own endpoints (`default/kubernetes`): the entries a gone control-plane
/// host leaves behind. Other services' endpoints follow their pods and are the controllers'.
fn is_apiserver_service(m: &kube::api::ObjectMeta) -> bool {
    m.namespace.as_deref() == Some("default") && m.name.as_deref() == Some("kubernetes")
}

fn is_apiserver_slice(s: &EndpointSlice) -> bool {
    s.metadata.namespace.as_deref() == Some("default")
        && s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .is_some_and(|v| v == "kubernetes")
}

async fn approve(api: &Api<CertificateSigningRequest>, name: &str) -> Result<(), Error> {
    let mut csr = api.get(name).await.map_err(|e| kube_err("reading a CSR", e))?;
    let status = csr.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.push(k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some("EtcdguardClusterFinish".into()),
        message: Some(
            "approved by etcdguard cluster finish: the requestor is the node the request names"
                .into(),
        ),
        ..Default::default()
    });
    api.replace_subresource("approval", name, &PostParams::default(), &csr)
        .await
        .map_err(|e| kube_err(&format!("approving CSR {name}"), e))?;
    Ok(())
}

async fn remove_gone_host(
    client: &Client,
    g: &GoneNode,
    endpoints: &[Endpoints],
    slices: &[EndpointSlice],
) -> Result<(), Error> {
    let gone = |a: &str| g.addresses.iter().any(|x| x == a);
    for e in endpoints.iter().filter(|e| is_apiserver_service(&e.metadata)) {
        let mut e = e.clone();
        let before = serde_json::to_value(&e.subsets).unwrap_or_default();
        for s in e.subsets.iter_mut().flatten() {
            for l in [&mut s.addresses, &mut s.not_ready_addresses].into_iter().flatten() {
                l.retain(|a| !gone(&a.ip) && a.node_name.as_deref() != Some(g.name.as_str()));
            }
        }
        if let Some(subsets) = e.subsets.as_mut() {
            subsets.retain(|s| {
                s.addresses.as_ref().is_some_and(|a| !a.is_empty())
                    || s.not_ready_addresses.as_ref().is_some_and(|a| !a.is_empty())
            });
        }
        if serde_json::to_value(&e.subsets).unwrap_or_default() != before {
            let api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
            api.replace("kubernetes", &PostParams::default(), &e)
                .await
                .map_err(|err| kube_err("updating Endpoints default/kubernetes", err))?;
        }
    }
    for s in slices.iter().filter(|s| is_apiserver_slice(s)) {
        let mut s = s.clone();
        let Some(list) = s.endpoints.as_mut() else { continue };
        let n = list.len();
        list.retain(|ep| {
            !ep.addresses.iter().any(|a| gone(a))
                && ep.node_name.as_deref() != Some(g.name.as_str())
        });
        if list.len() != n {
            let name = s.metadata.name.clone().unwrap_or_default();
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
            api.replace(&name, &PostParams::default(), &s)
                .await
                .map_err(|err| kube_err(&format!("updating EndpointSlice default/{name}"), err))?;
        }
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    match leases.delete(&g.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(kube_err(&format!("deleting Lease {}", g.name), e)),
    }
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(&g.name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(&format!("deleting Node {}", g.name), e)),
    }
}

/// Sets a fresh `spec.forceRedeploymentReason` on each operator's `cluster` object and waits
/// until its operator made a newer revision and every node runs it.
async fn redeploy(
    client: &Client,
    opts: &Options,
    before: Vec<Rollout>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Rollout>, Error> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let reason = format!("etcdguard-cluster-finish-{stamp}-{:08x}", rand::random::<u32>());
    let mut rollouts = Vec::new();
    for r in before {
        let plural = r.resource.trim_end_matches("/cluster").to_string();
        let kind =
            OPENSHIFT_OPERATORS.iter().find(|(_, p)| *p == plural).map(|(k, _)| *k).unwrap_or("");
        let api = operator_api(client, kind, &plural);
        let patch = serde_json::json!({"spec": {"forceRedeploymentReason": reason}});
        api.patch("cluster", &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(
            |e| kube_err(&format!("setting {plural}/cluster forceRedeploymentReason"), e),
        )?;
        progress(&format!(
            "{plural}/cluster: forceRedeploymentReason={reason} (was revision {})",
            r.latest_available_revision
        ));
        rollouts.push(Rollout {
            started_above: Some(r.latest_available_revision),
            done: false,
            ..r
        });
    }
    let deadline = Instant::now() + opts.wait;
    let mut last_line = String::new();
    loop {
        let mut all_done = true;
        for r in rollouts.iter_mut().filter(|r| !r.done) {
            let plural = r.resource.trim_end_matches("/cluster").to_string();
            let kind = OPENSHIFT_OPERATORS
                .iter()
                .find(|(_, p)| *p == plural)
                .map(|(k, _)| *k)
                .unwrap_or("");
            let obj = operator_api(client, kind, &plural)
                .get("cluster")
                .await
                .map_err(|e| kube_err(&format!("reading {plural}/cluster"), e))?;
            let now = rollout_of(&plural, &obj);
            let above = r.started_above.unwrap_or(0);
            let done = now.done && now.latest_available_revision > above;
            *r = Rollout { started_above: r.started_above, done, ..now };
            all_done &= done;
        }
        let line = rollouts
            .iter()
            .map(|r| {
                let at = r
                    .node_revisions
                    .iter()
                    .filter(|n| n.revision == r.latest_available_revision)
                    .count();
                format!(
                    "{} revision {} ({}/{} nodes)",
                    r.resource,
                    r.latest_available_revision,
                    at,
                    r.node_revisions.len()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if line != last_line {
            progress(&format!("rollout: {line}"));
            last_line = line;
        }
        if all_done || Instant::now() >= deadline {
            return Ok(rollouts);
        }
        tokio::time::sleep(opts.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(root: &Path) -> Options {
        Options { root: root.to_path_buf(), ..Default::default() }
    }

    #[test]
    fn kubeconfig_flag_then_environment_then_the_node_layout() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let err = resolve_kubeconfig(&opts(r)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Usage);
        assert!(err.message.contains("--kubeconfig"), "{}", err.message);

        // k3s only, then OpenShift's recovery kubeconfig too (it comes first).
        let k3s = r.join("etc/rancher/k3s/k3s.yaml");
        std::fs::create_dir_all(k3s.parent().unwrap()).unwrap();
        std::fs::write(&k3s, "x").unwrap();
        assert_eq!(resolve_kubeconfig(&opts(r)).unwrap(), k3s);
        let ocp = r.join(NODE_KUBECONFIGS[1].trim_start_matches('/'));
        std::fs::create_dir_all(ocp.parent().unwrap()).unwrap();
        std::fs::write(&ocp, "x").unwrap();
        assert_eq!(resolve_kubeconfig(&opts(r)).unwrap(), ocp);

        // $KUBECONFIG before the layout; a missing one is an error, not a fallback.
        let env = r.join("env.conf");
        std::fs::write(&env, "x").unwrap();
        let mut o = opts(r);
        o.kubeconfig_env = Some(format!("{}:{}", r.join("nope").display(), env.display()));
        assert_eq!(resolve_kubeconfig(&o).unwrap(), env);
        o.kubeconfig_env = Some(r.join("nope").display().to_string());
        assert_eq!(resolve_kubeconfig(&o).unwrap_err().kind, ErrorKind::NotFound);

        // The flag before everything.
        o.kubeconfig = Some(k3s.clone());
        assert_eq!(resolve_kubeconfig(&o).unwrap(), k3s);
        o.kubeconfig = Some(r.join("missing"));
        assert_eq!(resolve_kubeconfig(&o).unwrap_err().kind, ErrorKind::NotFound);
    }
}
