//! From quorum loss to every Node Ready, in one run: `cluster recover` then `cluster finish`.
//!
//! The site is recover_support's: three simulated control-plane hosts on 127.0.0.11–.13, each
//! with a kubelet stand-in running a real etcd 3.5 from its static pod manifest and a real
//! sshd. One real kube-apiserver (testkit) serves from the three members (`--etcd-servers`
//! lists all of them); the test starts and restarts it, as the kubelet would its static pod
//! (its PKI is the testkit's, so it is not run from the hosts' manifests).
//!
//! Each host's kubelet, as the API server sees it, is a [`NodeAgent`]: acting as
//! `system:node:<name>` (impersonation, so the Node authorizer judges its writes) it renews its
//! node Lease and posts its Node's Ready condition every [`BEAT`]. When the API server goes
//! away and comes back it models a kubelet whose client certificate the restored cluster does
//! not know: it submits a new kubelet client CSR and posts nothing until that is approved.
//! A fourth Node, `cp-old`, is a control-plane host of the backup that is no longer a member.
//!
//! Every phase is timed by the tools (`-w json`); the test prints them one per line,
//! `PHASE <name>: <seconds> s`, and the total from the first command to every Node Ready
//! (`bench/recover-to-ready.sh` collects them). Data size: `ETCDGUARD_RECOVERY_MB` (default 4).

mod etcdctl_support;
mod kube_support;
mod kubelet_support;
mod live_support;
mod recover_support;
mod ssh_support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdguard_testkit::apiserver::{kube_dir, ApiServer};
use kube_support::*;
use live_support::*;
use recover_support::*;
use serde_json::{json, Value};

/// How often a kubelet stand-in renews its Lease and posts its status.
const BEAT: Duration = Duration::from_secs(2);
/// `cluster finish --heartbeat-grace`: a few beats.
const GRACE: &str = "10s";
const GONE: &str = "cp-old";
const GONE_ADDR: &str = "127.0.0.14";

/// What a kubelet stand-in did.
#[derive(Clone, Debug, Default)]
struct AgentLog {
    beats: u32,
    lost_contact: bool,
    /// The client CSR it submitted after the API server came back.
    csr: Option<String>,
    /// When it saw that CSR approved.
    approved_at: Option<Instant>,
    beats_after_approval: u32,
    /// What kubectl said when a beat last failed.
    last_error: Option<String>,
}

/// A kubelet as the API server sees it (see the module doc).
struct NodeAgent {
    name: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<AgentLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum AgentState {
    Beating,
    /// The API server did not answer: a new client certificate is needed once it does.
    Lost,
    WaitingFor(String),
}

impl NodeAgent {
    fn start(api: &ApiServer, name: &str, addr: &str) -> NodeAgent {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let kubeconfig = api.kubeconfig_path();
        let (name2, addr2, stop2, log2) =
            (name.to_string(), addr.to_string(), stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let kubectl = |as_node: bool| {
                let mut c = Command::new(kube_dir().join("kubectl"));
                c.arg(format!("--kubeconfig={}", kubeconfig.display())).arg("--request-timeout=5s");
                if as_node {
                    c.args(node_user(&name2));
                }
                c
            };
            let mut state = AgentState::Beating;
            let mut generation = 0;
            while !stop2.load(Ordering::SeqCst) {
                let pause = match &state {
                    AgentState::Beating => {
                        let result = beat(&kubectl, &name2, &addr2);
                        if let Err(e) = &result {
                            log2.lock().unwrap().last_error = Some(e.clone());
                        }
                        if result.is_ok() {
                            let mut l = log2.lock().unwrap();
                            l.beats += 1;
                            if l.approved_at.is_some() {
                                l.beats_after_approval += 1;
                            }
                        } else {
                            log2.lock().unwrap().lost_contact = true;
                            state = AgentState::Lost;
                        }
                        BEAT
                    }
                    AgentState::Lost => {
                        let ready = kubectl(true).args(["get", "--raw", "/readyz"]).output();
                        if ready.is_ok_and(|o| o.status.success()) {
                            generation += 1;
                            let csr = format!("kubelet-client-{name2}-{generation}");
                            let obj = csr_object(
                                &csr,
                                CLIENT,
                                &csr_pem(&format!("system:node:{name2}"), &[]),
                            );
                            if run_stdin(kubectl(true).args(["create", "-f", "-"]), &obj) {
                                log2.lock().unwrap().csr = Some(csr.clone());
                                state = AgentState::WaitingFor(csr);
                            }
                        }
                        Duration::from_millis(500)
                    }
                    AgentState::WaitingFor(csr) => {
                        let out = kubectl(false).args(["get", "csr", csr, "-o", "json"]).output();
                        let approved = out.ok().filter(|o| o.status.success()).is_some_and(|o| {
                            serde_json::from_slice(&o.stdout).is_ok_and(|v: Value| is_approved(&v))
                        });
                        if approved {
                            log2.lock().unwrap().approved_at = Some(Instant::now());
                            state = AgentState::Beating;
                            Duration::ZERO
                        } else {
                            Duration::from_millis(500)
                        }
                    }
                };
                std::thread::sleep(pause);
            }
        });
        NodeAgent { name: name.into(), stop, log, thread: Some(thread) }
    }

    fn log(&self) -> AgentLog {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_stdin(cmd: &mut Command, obj: &Value) -> bool {
    use std::io::Write;
    use std::process::Stdio;
    let Ok(mut child) =
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    else {
        return false;
    };
    let _ = child.stdin.take().unwrap().write_all(obj.to_string().as_bytes());
    child.wait().is_ok_and(|s| s.success())
}

fn now_micro() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One heartbeat as the node: its Lease renewed, its Ready condition posted.
fn beat(kubectl: &dyn Fn(bool) -> Command, name: &str, addr: &str) -> Result<(), String> {
    let now = now_micro();
    let lease =
        json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
    let status = node_status(name, addr, &now);
    let ok = |c: &mut Command| match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(text(&o.stderr)),
        Err(e) => Err(e.to_string()),
    };
    ok(kubectl(true).args([
        "patch",
        "lease",
        name,
        "-n",
        "kube-node-lease",
        "--type=merge",
        "-p",
        &lease.to_string(),
    ]))?;
    ok(kubectl(true).args([
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]))
}

fn node_status(name: &str, addr: &str, heartbeat: &str) -> Value {
    json!({"status": {
        "addresses": [{"type": "InternalIP", "address": addr}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": heartbeat, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

/// A control-plane Node and its node Lease, created by the admin (as the cluster was set up).
fn register(api: &ApiServer, name: &str, addr: &str) {
    create(
        api,
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "node-role.kubernetes.io/control-plane": ""}}}),
        &[],
    );
    etcdguard_testkit::run_checked(api.kubectl().args([
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &node_status(name, addr, &now_micro()).to_string(),
    ]));
    create(
        api,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}}),
        &[],
    );
}

/// `cluster finish -w json` with `args`: exit code, report, stderr, wall time.
fn finish(api: &ApiServer, args: &[&str]) -> (i32, Value, String, f64) {
    let started = Instant::now();
    let out = etcdguard()
        .args(["cluster", "finish", "-w", "json", "--heartbeat-grace", GRACE, "--kubeconfig"])
        .arg(api.kubeconfig_path())
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, text(&out.stderr), took)
}

fn seconds(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number of seconds: {v}"))
}

#[test]
fn quorum_loss_to_every_node_ready() {
    let site = start_site();
    let etcd_servers: Vec<&str> = site.hosts.iter().map(|h| h.client.as_str()).collect();
    let etcd_servers = etcd_servers.join(",");
    let mut api = ApiServer::start(&etcd_servers, None);
    let hosts: Vec<(String, String)> = site
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("cp{}", i + 1), h.addr.clone()))
        .collect();

    // The cluster as it runs: three kubelets beating, and cp-old, a host of the past whose
    // Node and Lease are still there.
    allow_csr_creation(&api);
    // kubectl reads nodes/status before it patches it, which a kubelet (a plain PATCH) never
    // needs and the Node authorizer does not grant.
    create(
        &api,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "test-kubectl-reads-node-status"},
            "rules": [{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["get"]}]}),
        &[],
    );
    create(
        &api,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "test-kubectl-reads-node-status"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-kubectl-reads-node-status"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]}),
        &[],
    );
    for (name, addr) in &hosts {
        register(&api, name, addr);
    }
    register(&api, GONE, GONE_ADDR);
    let agents: Vec<NodeAgent> =
        hosts.iter().map(|(name, addr)| NodeAgent::start(&api, name, addr)).collect();
    let started = Instant::now();
    while !agents.iter().all(|a| a.log().beats >= 2) {
        let logs: Vec<AgentLog> = agents.iter().map(NodeAgent::log).collect();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "kubelet stand-ins not beating: {logs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agents.iter().all(|a| !a.log().lost_contact), "a kubelet lost the API server early");

    // The backup, then writes it does not have.
    let snap = save_snapshot(&site, "/registry/etcdguard-test-fill");
    let snap_arg = snap.to_str().unwrap();
    let after_backup: Vec<String> = (1..=5).map(|i| format!("after-backup-{i}")).collect();
    for cm in &after_backup {
        etcdguard_testkit::run_checked(api.kubectl().args(["create", "configmap", cm]));
    }

    // The disaster: two members gone, the API server down with them.
    lose_quorum(&site);
    api.stop();

    // 1. cluster recover, over SSH.
    let t0 = Instant::now();
    let out = site.recover(&["--snapshot", snap_arg, "-w", "json"]).output().unwrap();
    let recover_wall = t0.elapsed().as_secs_f64();
    expect_code(&out, 0, "cluster recover");
    let recovered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(recovered["outcome"], "recovered", "{recovered:#}");

    // 2. The API server's static pod comes back (the kubelet restarts it) over the new members.
    let t = Instant::now();
    api.restart();
    let restart_wall = t.elapsed().as_secs_f64();

    // Work goes on after the restore: these are changes since the backup.
    let after_restore: Vec<String> = (1..=2).map(|i| format!("after-restore-{i}")).collect();
    for cm in &after_restore {
        etcdguard_testkit::run_checked(api.kubectl().args(["create", "configmap", cm]));
    }
    // A node asking for another's certificate: must never be approved.
    let intruder = "cp1-asks-for-cp2";
    let cp1 = node_user("cp1");
    let cp1: Vec<&str> = cp1.iter().map(String::as_str).collect();
    submit_csr(&api, intruder, CLIENT, &csr_pem("system:node:cp2", &[]), &cp1);

    // 3. cluster finish: first the dry run. The Nodes carry the backup's Ready condition, but
    // no kubelet reports: none is Ready.
    let hosts_arg = format!("--hosts={}", site.addrs());
    let (code, dry, stderr, dry_wall) = finish(&api, &[&hosts_arg]);
    assert_eq!(code, 0, "finish dry run: {stderr}\n{dry:#}");
    for n in dry["nodes"].as_array().unwrap() {
        assert_eq!(n["ready"], false, "a Node without heartbeats counts as Ready: {n}");
        assert_eq!(n["readyCondition"], true, "{n}");
    }
    assert!(agents.iter().all(|a| a.log().approved_at.is_none()), "approved by a dry run");

    // Then for real.
    let compare = format!("--compare-with={snap_arg}");
    let endpoints = format!("--endpoints={etcd_servers}");
    let remove = format!("--remove-nodes={GONE}");
    let (code, report, stderr, finish_wall) =
        finish(&api, &[&hosts_arg, "--apply", &remove, &compare, &endpoints, "--wait=90s"]);
    let total = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "finish --apply: {stderr}\n{report:#}");

    // Every Node Ready, with its kubelet beating again after its CSR was approved.
    let ready: Vec<(String, bool)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_string(), n["ready"].as_bool().unwrap()))
        .collect();
    let want: Vec<(String, bool)> = hosts.iter().map(|(n, _)| (n.clone(), true)).collect();
    assert_eq!(ready, want, "{report:#}");
    assert!(report["pending"].as_array().unwrap().is_empty(), "{report:#}");
    for a in &agents {
        let l = a.log();
        assert!(l.lost_contact && l.approved_at.is_some(), "{}: {l:?}", a.name);
        assert!(l.beats_after_approval >= 1, "{}: no heartbeat after the approval: {l:?}", a.name);
    }

    // The CSRs: each kubelet's own approved, the intruder's not.
    let decisions: Vec<(String, String, String)> = report["csrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["requestor"].as_str().unwrap().to_string(),
                c["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for a in &agents {
        let csr = a.log().csr.unwrap();
        let obj = get_json(&api, &["csr", &csr]);
        assert!(is_approved(&obj), "{csr} not approved: {obj:#}");
        assert_eq!(obj["spec"]["username"], format!("system:node:{}", a.name));
        assert!(
            decisions.contains(&(csr.clone(), format!("system:node:{}", a.name), "approve".into())),
            "{decisions:?}"
        );
    }
    assert!(!is_approved(&get_json(&api, &["csr", intruder])), "the intruder's CSR was approved");
    assert!(decisions.iter().any(|(n, _, d)| n == intruder && d == "skip"), "{decisions:?}");

    // The gone host: its Node and Lease removed.
    let nodes = etcdguard_testkit::run_checked(api.kubectl().args(["get", "nodes", "-o", "name"]));
    assert_eq!(text(&nodes.stdout).trim(), "node/cp1\nnode/cp2\nnode/cp3");
    let leases = etcdguard_testkit::run_checked(api.kubectl().args([
        "get",
        "leases",
        "-n",
        "kube-node-lease",
        "-o",
        "name",
    ]));
    assert!(!text(&leases.stdout).contains(GONE), "{}", text(&leases.stdout));

    // The ConfigMaps written after the backup but before the disaster are lost with it; those
    // written after the restore, the CSRs, the kubelets' renewals and the removal are what
    // changed since the backup.
    for cm in &after_backup {
        let out = api.kubectl().args(["get", "configmap", cm]).output().unwrap();
        assert!(!out.status.success(), "{cm} survived the restore of an older backup");
    }
    let changes = report["changesSinceBackup"].as_array().unwrap_or_else(|| panic!("{report:#}"));
    let of = |r: &str| changes.iter().find(|c| c["resource"] == r).cloned().unwrap_or_default();
    assert_eq!(of("certificatesigningrequests")["added"], 4, "{changes:#?}");
    assert!(of("leases")["modified"].as_u64() >= Some(3), "{changes:#?}");
    assert!(of("leases")["deleted"].as_u64() >= Some(1), "{changes:#?}");
    assert!(of("minions")["deleted"].as_u64() >= Some(1), "{changes:#?}");
    assert_eq!(of("configmaps")["added"], after_restore.len(), "{changes:#?}");

    // The phases, as the tools report them.
    let mut phases: Vec<(String, f64)> = Vec::new();
    let preflight = seconds(&recovered["preflightSeconds"]);
    phases.push(("recover/preflight".into(), preflight));
    for s in recovered["steps"].as_array().unwrap() {
        phases.push((
            format!("recover/{}/{}", s["kind"].as_str().unwrap(), s["host"].as_str().unwrap()),
            seconds(&s["seconds"]),
        ));
    }
    let recover_sum: f64 = phases.iter().map(|p| p.1).sum();
    let recover_total = seconds(&recovered["totalSeconds"]);
    phases.push(("apiserver_restart (the kubelet's; timed by the test)".into(), restart_wall));
    phases.push(("finish dry run (whole command)".into(), dry_wall));
    let finish_phases: Vec<(String, f64)> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (format!("finish/{}", p["name"].as_str().unwrap()), seconds(&p["seconds"])))
        .collect();
    let finish_sum: f64 = finish_phases.iter().map(|p| p.1).sum();
    phases.extend(finish_phases.iter().cloned());
    for (name, secs) in &phases {
        println!("PHASE {name}: {secs:.1} s");
    }
    println!(
        "PHASE recover (whole command): {recover_wall:.1} s\nPHASE finish --apply (whole command): {finish_wall:.1} s"
    );
    println!(
        "TOTAL first command to every Node Ready: {total:.1} s (snapshot {:.1} MiB)",
        std::fs::metadata(&snap).unwrap().len() as f64 / 1048576.0
    );

    let names: Vec<&str> = finish_phases.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "finish/api_ready",
            "finish/csrs",
            "finish/gone_hosts",
            "finish/nodes_ready",
            "finish/compare_with_backup"
        ]
    );
    let kinds: Vec<&str> = recovered["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    for k in ["copy_snapshot", "park", "restore", "wait_healthy", "join", "wait_all_healthy"] {
        assert!(kinds.contains(&k), "no {k} step: {kinds:?}");
    }
    // The tools' own times add up to their wall times (less process start, ssh set-up and
    // output), and the whole to the first command's start to the end.
    assert!(phases.iter().all(|p| p.1 >= 0.0));
    assert!(
        recover_sum <= recover_total + 0.5 && recover_total <= recover_wall + 0.5,
        "recover: steps {recover_sum:.1} s, its total {recover_total:.1} s, wall {recover_wall:.1} s"
    );
    assert!(
        recover_sum >= 0.8 * recover_wall,
        "recover: steps {recover_sum:.1} s of {recover_wall:.1} s"
    );
    assert!(
        finish_sum <= finish_wall + 0.5 && finish_sum >= 0.6 * finish_wall,
        "finish: phases {finish_sum:.1} s, wall {finish_wall:.1} s"
    );
    let parts = recover_wall + restart_wall + dry_wall + finish_wall;
    assert!(parts <= total + 0.5 && parts >= 0.9 * total, "parts {parts:.1} s, total {total:.1} s");
}
