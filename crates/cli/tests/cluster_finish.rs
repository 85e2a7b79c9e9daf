//! `cluster finish` against a real kube-apiserver over a real etcd 3.5 (loopback only).
//!
//! The test plays the kubelets (CSRs made with rcgen and submitted through the API as the
//! node or a bootstrap token would, by impersonation, so the server records that requestor),
//! the gone host (its Node, node Lease and apiserver endpoint entries) and, on OpenShift, the
//! static-pod operators (CRDs from the published github.com/openshift/api Go module; the test
//! bumps the revisions after `forceRedeploymentReason` changes).
//!
//! Node addresses are documentation addresses (RFC 5737): the API server refuses loopback
//! ones in endpoints, and nothing here ever connects to a node.

mod kube_support;
mod live_support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcdguard_testkit::apiserver::{go_module_dir, ApiServer};
use etcdguard_testkit::{EtcdServer, EtcdVersion};
use kube_support::*;
use live_support::*;
use serde_json::{json, Value};

/// The openshift/api release whose operator CRDs the test installs (a pseudo-version: the
/// module has no recent tags).
const OPENSHIFT_API: &str = "v0.0.0-20251021124544-a2cb0c5d994d";

/// A Node with addresses and a Ready condition (`ready`), as a kubelet would report it.
fn node(api: &ApiServer, name: &str, ip: &str, control_plane: bool, ready: bool) {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    create(
        api,
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
        &[],
    );
    set_ready(api, name, ip, ready);
}

/// The Ready condition with a heartbeat of now.
fn set_ready(api: &ApiServer, name: &str, ip: &str, ready: bool) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "reason": "Test", "lastHeartbeatTime": now,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    etcdguard_testkit::run_checked(api.kubectl().args([
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]));
}

/// resourceVersion of every object the command may touch.
fn versions(api: &ApiServer) -> Vec<String> {
    let mut out = Vec::new();
    for what in [
        vec!["nodes"],
        vec!["csr"],
        vec!["leases", "-n", "kube-node-lease"],
        vec!["endpoints", "-n", "default"],
        vec!["endpointslices", "-n", "default"],
    ] {
        for item in get_json(api, &what)["items"].as_array().unwrap() {
            out.push(format!(
                "{} {} {}",
                item["kind"], item["metadata"]["name"], item["metadata"]["resourceVersion"]
            ));
        }
    }
    out.sort();
    out
}

fn finish(api: &ApiServer, args: &[&str]) -> (i32, Value, String, Duration) {
    let started = Instant::now();
    // The heartbeats here are set once; recover_to_ready.rs has kubelets that keep beating.
    let mut args = args.to_vec();
    if !args.iter().any(|a| a.starts_with("--heartbeat-grace")) {
        args.push("--heartbeat-grace=1h");
    }
    let out = etcdguard()
        .args(["cluster", "finish", "-w", "json", "--kubeconfig"])
        .arg(api.kubeconfig_path())
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let took = started.elapsed();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, text(&out.stderr), took)
}

fn csr_decisions(report: &Value) -> Vec<(String, String)> {
    let mut d: Vec<(String, String)> = report["csrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["decision"].as_str().unwrap().into()))
        .collect();
    d.sort();
    d
}

#[test]
fn csrs_gone_hosts_and_node_readiness() {
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    // "The backup the restore used": etcd before the nodes and CSRs below exist.
    let backup_dir = tempfile::tempdir().unwrap();
    let backup = backup_dir.path().join("backup.db");
    let saved = etcdguard()
        .args(["snapshot", "save", "--endpoints", etcd.endpoint()])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{}", text(&saved.stderr));

    allow_csr_creation(&api);
    node(&api, "cp-1", "192.0.2.11", true, true);
    node(&api, "cp-2", "192.0.2.12", true, true);
    node(&api, "cp-old", "192.0.2.19", true, false);
    node(&api, "worker-1", "192.0.2.20", false, true);
    create(
        &api,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "cp-old", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "cp-old", "leaseDurationSeconds": 40}}),
        &[],
    );
    create(
        &api,
        &json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.0.2.11"}, {"ip": "192.0.2.12"}, {"ip": "192.0.2.19"}],
                         "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]}),
        &[],
    );
    create(
        &api,
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.11"]}, {"addresses": ["192.0.2.12"]}, {"addresses": ["192.0.2.19"]}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}),
        &[],
    );

    let bootstrap = vec![
        "--as=system:bootstrap:abcdef".to_string(),
        "--as-group=system:bootstrappers".into(),
        "--as-group=system:authenticated".into(),
    ];
    let submit = |name: &str, signer: &str, pem: String, who: &Vec<String>| {
        let args: Vec<&str> = who.iter().map(String::as_str).collect();
        submit_csr(&api, name, signer, &pem, &args);
    };
    submit("renew-cp-1", CLIENT, csr_pem("system:node:cp-1", &[]), &node_user("cp-1"));
    submit("boot-cp-3", CLIENT, csr_pem("system:node:cp-3", &[]), &bootstrap);
    submit("boot-intruder", CLIENT, csr_pem("system:node:intruder", &[]), &bootstrap);
    submit("cp-1-for-cp-2", CLIENT, csr_pem("system:node:cp-2", &[]), &node_user("cp-1"));
    submit(
        "serving-cp-2",
        SERVING,
        csr_pem("system:node:cp-2", &["cp-2", "192.0.2.12"]),
        &node_user("cp-2"),
    );
    submit(
        "serving-foreign-san",
        SERVING,
        csr_pem("system:node:cp-1", &["cp-1", "198.51.100.7"]),
        &node_user("cp-1"),
    );
    submit("client-by-admin", CLIENT, csr_pem("system:node:cp-2", &[]), &vec![]);

    let hosts = "--hosts=cp-1,cp-2,cp-3";
    let expected: Vec<(String, String)> = [
        ("boot-cp-3", "approve"),
        ("boot-intruder", "skip"),
        ("client-by-admin", "skip"),
        ("cp-1-for-cp-2", "skip"),
        ("renew-cp-1", "approve"),
        ("serving-cp-2", "approve"),
        ("serving-foreign-san", "skip"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();

    // Dry run: the plan, and nothing changed.
    let before = versions(&api);
    let compare = format!("--compare-with={}", backup.display());
    let endpoint = format!("--endpoints={}", etcd.endpoint());
    let (code, report, stderr, took) = finish(&api, &[hosts, &compare, &endpoint]);
    assert_eq!(code, 0, "dry run: {stderr}\n{report:#}");
    // What changed in etcd since "the backup", per resource: the four Nodes (stored as
    // `minions`), the seven CSRs, cp-old's Lease; nothing it had was deleted.
    let changes = report["changesSinceBackup"].as_array().unwrap_or_else(|| panic!("{report:#}"));
    let of = |r: &str| changes.iter().find(|c| c["resource"] == r).cloned().unwrap_or_default();
    assert_eq!(of("minions")["added"], 4, "{changes:#?}");
    assert_eq!(of("certificatesigningrequests")["added"], 7, "{changes:#?}");
    assert!(of("leases")["added"].as_u64() >= Some(1), "{changes:#?}");
    assert!(changes.iter().all(|c| c["deleted"] == 0 || c["resource"] == "events"), "{changes:#?}");
    println!("dry run took {took:?}");
    assert_eq!(csr_decisions(&report), expected, "{report:#}");
    for c in report["csrs"].as_array().unwrap() {
        assert!(!c["reason"].as_str().unwrap().is_empty(), "every decision says why: {c}");
        assert_eq!(c["approved"], false);
    }
    let gone = report["goneNodes"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "{report:#}");
    assert_eq!(gone[0]["name"], "cp-old");
    assert_eq!(gone[0]["lease"], true);
    assert_eq!(gone[0]["endpoints"].as_array().unwrap().len(), 2, "{report:#}");
    assert_eq!(gone[0]["decision"], "keep");
    assert!(report["openshift"].is_null(), "not OpenShift: {report:#}");
    assert!(!report["pending"].as_array().unwrap().is_empty());
    assert_eq!(versions(&api), before, "a dry run changed something");

    // Table output names the skipped ones with their reasons.
    let out = etcdguard()
        .args(["cluster", "finish", hosts, "--kubeconfig"])
        .arg(api.kubeconfig_path())
        .output()
        .unwrap();
    expect_code(&out, 0, "table dry run");
    let table = text(&out.stdout);
    assert!(table.contains("boot-intruder") && table.contains("not in --hosts"), "{table}");
    assert!(table.contains("dry run: nothing was changed"), "{table}");
    assert!(table.contains("HEARTBEAT") && table.contains("Phases:"), "{table}");
    assert!(table.contains("nodes_ready") && table.contains("total"), "{table}");

    // A removal naming a host that is not gone is refused before anything changes.
    let (code, _, stderr, _) = finish(&api, &[hosts, "--apply", "--remove-nodes=cp-1"]);
    assert_eq!(code, 17, "{stderr}");
    assert!(stderr.contains("cp-1") && stderr.contains("--hosts"), "{stderr}");
    assert_eq!(versions(&api), before, "a refused run changed something");

    // Apply: approve the safe CSRs, remove cp-old, every remaining Node Ready.
    let (code, report, stderr, took) =
        finish(&api, &[hosts, "--apply", "--remove-nodes=cp-old", "--wait=30s"]);
    assert_eq!(code, 0, "apply: {stderr}\n{report:#}");
    println!("apply took {took:?}");
    for (name, decision) in &expected {
        let csr = get_json(&api, &["csr", name]);
        assert_eq!(is_approved(&csr), decision == "approve", "CSR {name}: {csr:#}");
    }
    let nodes: Vec<String> = get_json(&api, &["nodes"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes, ["cp-1", "cp-2", "worker-1"]);
    let leases = etcdguard_testkit::run_checked(api.kubectl().args([
        "get",
        "leases",
        "-n",
        "kube-node-lease",
        "-o",
        "name",
    ]));
    assert!(!text(&leases.stdout).contains("cp-old"), "{}", text(&leases.stdout));
    let ep = get_json(&api, &["endpoints", "kubernetes", "-n", "default"]);
    let ips: Vec<&str> = ep["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["192.0.2.11", "192.0.2.12"]);
    let slice = get_json(&api, &["endpointslice", "kubernetes", "-n", "default"]);
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2, "{slice:#}");
    assert!(report["pending"].as_array().unwrap().is_empty(), "{report:#}");

    // The stored Ready condition without a recent heartbeat is not Ready.
    std::thread::sleep(Duration::from_secs(2));
    let (code, report, stderr, _) = finish(&api, &[hosts, "--heartbeat-grace=1s"]);
    assert_eq!(code, 0, "{stderr}");
    let cp1 = report["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "cp-1").unwrap();
    assert_eq!(cp1["ready"], false, "{cp1}");
    assert_eq!(cp1["readyCondition"], true, "{cp1}");
    assert!(cp1["heartbeatAgeSeconds"].as_f64().unwrap() >= 1.0, "{cp1}");
    assert!(
        report["pending"]
            .to_string()
            .contains("Node cp-1 is not Ready: its Ready condition is the stored one"),
        "{report:#}"
    );
    let phases: Vec<&str> =
        report["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(phases, ["api_ready", "csrs", "gone_hosts", "nodes_ready"], "{report:#}");

    // A Node that stays NotReady: the wait ends at --wait with exit 1 and says which.
    set_ready(&api, "worker-1", "192.0.2.20", false);
    let (code, report, stderr, took) = finish(&api, &[hosts, "--apply", "--wait=3s"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Node worker-1 is not Ready"), "{stderr}");
    assert!(took < Duration::from_secs(30), "the wait was not bounded: {took:?}");
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3);
}

/// The CRD files of the four static-pod operators in the openshift/api module.
fn openshift_crds(dir: &Path) -> Vec<std::path::PathBuf> {
    let crds = dir.join("operator/v1/zz_generated.crd-manifests");
    let mut out = Vec::new();
    for plural in ["etcds", "kubeapiservers", "kubecontrollermanagers", "kubeschedulers"] {
        let mut found: Vec<_> = std::fs::read_dir(&crds)
            .unwrap_or_else(|e| panic!("{}: {e}", crds.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.contains(&format!("_{plural}"))
                    && (n.ends_with(&format!("{plural}.crd.yaml"))
                        || n.ends_with("-Default.crd.yaml"))
            })
            .collect();
        assert_eq!(found.len(), 1, "{plural}: {found:?}");
        out.push(found.remove(0));
    }
    out
}

const OPERATORS: [(&str, &str); 4] = [
    ("etcds", "Etcd"),
    ("kubeapiservers", "KubeAPIServer"),
    ("kubecontrollermanagers", "KubeControllerManager"),
    ("kubeschedulers", "KubeScheduler"),
];

/// The operator's status: the newest revision and each node's. A node status is created
/// without a revision first (the CRD's validation refuses one on creation).
fn set_revisions(api: &ApiServer, plural: &str, latest: i64, at: i64) {
    let nodes_first =
        json!({"status": {"nodeStatuses": [{"nodeName": "cp-1"}, {"nodeName": "cp-2"}]}});
    let status = json!({"status": {"latestAvailableRevision": latest,
        "nodeStatuses": [{"nodeName": "cp-1", "currentRevision": at}, {"nodeName": "cp-2", "currentRevision": at}]}});
    for patch in [nodes_first, status] {
        etcdguard_testkit::run_checked(api.kubectl().args([
            "patch",
            &format!("{plural}.operator.openshift.io"),
            "cluster",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]));
    }
}

#[test]
fn openshift_forced_redeployment() {
    let Some(module) = go_module_dir("github.com/openshift/api", OPENSHIFT_API) else {
        eprintln!("SKIP: no `go` to download github.com/openshift/api (its operator CRDs)");
        return;
    };
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    for crd in openshift_crds(&module) {
        etcdguard_testkit::run_checked(api.kubectl().args(["create", "-f"]).arg(&crd));
    }
    for (plural, _) in OPERATORS {
        etcdguard_testkit::run_checked(api.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{plural}.operator.openshift.io"),
        ]));
    }
    for (plural, kind) in OPERATORS {
        create(
            &api,
            &json!({"apiVersion": "operator.openshift.io/v1", "kind": kind,
                "metadata": {"name": "cluster"}, "spec": {"managementState": "Managed"}}),
            &[],
        );
        set_revisions(&api, plural, 3, 3);
    }
    let operator_versions = || -> Vec<String> {
        OPERATORS
            .iter()
            .map(|(p, _)| {
                get_json(&api, &[&format!("{p}.operator.openshift.io"), "cluster"])["metadata"]
                    ["resourceVersion"]
                    .to_string()
            })
            .collect()
    };

    // Dry run: seen, not touched.
    let before = operator_versions();
    let (code, report, stderr, _) = finish(&api, &[]);
    assert_eq!(code, 0, "{stderr}");
    let rollouts = report["openshift"].as_array().expect("OpenShift detected");
    assert_eq!(rollouts.len(), 4, "{report:#}");
    assert!(rollouts.iter().all(|r| r["latestAvailableRevision"] == 3));
    assert_eq!(operator_versions(), before, "a dry run changed an operator");

    // No operator answers: the wait ends at --wait, exit 1, the reason is set.
    let (code, report, stderr, took) = finish(&api, &["--apply", "--wait=3s"]);
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert!(stderr.contains("rollout not finished"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let first_reason = get_json(&api, &["etcds.operator.openshift.io", "cluster"])["spec"]
        ["forceRedeploymentReason"]
        .as_str()
        .expect("forceRedeploymentReason set")
        .to_string();

    // The test plays the operators: a new reason → a new revision, rolled out node by node.
    let stop = Arc::new(AtomicBool::new(false));
    let player = {
        let stop = stop.clone();
        let kubeconfig = api.kubeconfig_path();
        std::thread::spawn(move || {
            let kubectl = || {
                let mut c = Command::new(etcdguard_testkit::apiserver::kube_dir().join("kubectl"));
                c.arg(format!("--kubeconfig={}", kubeconfig.display()));
                c
            };
            let mut seen: Vec<String> = vec![String::new(); 4];
            let mut bumped = 0;
            while !stop.load(Ordering::Relaxed) && bumped < 4 {
                for (i, (plural, _)) in OPERATORS.iter().enumerate() {
                    let out = kubectl()
                        .args([
                            "get",
                            &format!("{plural}.operator.openshift.io"),
                            "cluster",
                            "-o",
                            "json",
                        ])
                        .output()
                        .unwrap();
                    let obj: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    let reason =
                        obj["spec"]["forceRedeploymentReason"].as_str().unwrap_or("").to_string();
                    if seen[i].is_empty() {
                        seen[i] = reason;
                        continue;
                    }
                    if reason != seen[i] {
                        seen[i] = reason;
                        let latest = obj["status"]["latestAvailableRevision"].as_i64().unwrap() + 1;
                        for (step, at) in [(0, latest - 1), (1, latest)] {
                            let status = json!({"status": {"latestAvailableRevision": latest,
                                "nodeStatuses": [{"nodeName": "cp-1", "currentRevision": latest},
                                                 {"nodeName": "cp-2", "currentRevision": at}]}});
                            let _ = step;
                            let out = kubectl()
                                .args([
                                    "patch",
                                    &format!("{plural}.operator.openshift.io"),
                                    "cluster",
                                    "--subresource=status",
                                    "--type=merge",
                                    "-p",
                                    &status.to_string(),
                                ])
                                .output()
                                .unwrap();
                            assert!(out.status.success(), "{}", text(&out.stderr));
                            std::thread::sleep(Duration::from_millis(300));
                        }
                        bumped += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2)); // the player has read the current reasons
    let (code, report, stderr, took) = finish(&api, &["--apply", "--wait=60s"]);
    stop.store(true, Ordering::Relaxed);
    player.join().unwrap();
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    println!("rollout wait took {took:?}");
    for r in report["openshift"].as_array().unwrap() {
        assert_eq!(r["done"], true, "{r}");
        assert_eq!(r["latestAvailableRevision"], 4, "{r}");
    }
    assert!(stderr.contains("rollout:"), "progress lines: {stderr}");
    let second = get_json(&api, &["etcds.operator.openshift.io", "cluster"])["spec"]
        ["forceRedeploymentReason"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, first_reason, "each run sets a fresh reason");
}

/// The HyperShift API module whose HostedCluster CRD the test installs.
const HYPERSHIFT_API: &str = "v0.0.0-20250331115040-26fc3ceb1929";

#[test]
fn hypershift_restore_snapshot_url() {
    let Some(module) = go_module_dir("github.com/openshift/hypershift/api", HYPERSHIFT_API) else {
        eprintln!(
            "SKIP: no `go` to download github.com/openshift/hypershift/api (the HostedCluster CRD)"
        );
        return;
    };
    let crd = module.join(
        "hypershift/v1beta1/zz_generated.featuregated-crd-manifests/hostedclusters.hypershift.openshift.io/AAA_ungated.yaml",
    );
    assert!(crd.is_file(), "{} is not in the module", crd.display());
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    // The fragment marks itself with an empty-named feature-gate annotation (its generator's
    // key, not a valid annotation): left out, the rest is the CRD as published.
    let crd_text = std::fs::read_to_string(&crd).unwrap();
    let crd_text = crd_text.replacen(
        "  annotations:\n    feature-gate.release.openshift.io/: \"true\"\n",
        "",
        1,
    );
    assert!(
        !crd_text.contains("feature-gate.release.openshift.io/:"),
        "the CRD's annotations changed"
    );
    kubectl_stdin(&api, &["create", "-f", "-"], &crd_text);
    etcdguard_testkit::run_checked(api.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/hostedclusters.hypershift.openshift.io",
    ]));
    etcdguard_testkit::run_checked(api.kubectl().args(["create", "namespace", "clusters"]));
    let service = |name: &str| json!({"service": name, "servicePublishingStrategy": {"type": "NodePort", "nodePort": {"address": "192.0.2.30"}}});
    create(
        &api,
        &json!({"apiVersion": "hypershift.openshift.io/v1beta1", "kind": "HostedCluster",
            "metadata": {"name": "prod", "namespace": "clusters"},
            "spec": {
                "release": {"image": "example.invalid/ocp-release:4.18.0-x86_64"},
                "pullSecret": {"name": "pull-secret"},
                "platform": {"type": "None"},
                "networking": {"networkType": "OVNKubernetes"},
                "etcd": {"managementType": "Managed", "managed": {"storage": {"type": "PersistentVolume"}}},
                "services": [service("APIServer"), service("OAuthServer"), service("Konnectivity"), service("Ignition")],
                "pausedUntil": "false"}}),
        &[],
    );
    let hc =
        || get_json(&api, &["hostedclusters.hypershift.openshift.io", "prod", "-n", "clusters"]);
    let secret_url = "https://192.0.2.40/etcd-backups/snap.db?X-Amz-Signature=do-not-print-me";
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("url.txt");
    std::fs::write(&url_file, format!("{secret_url}\n")).unwrap();
    let url_arg = format!("--restore-snapshot-url-file={}", url_file.display());

    // Dry run: nothing written.
    let before = hc();
    let (code, report, stderr, _) = finish(&api, &["--hosted-cluster=clusters/prod", &url_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["hostedCluster"]["done"], false);
    assert_eq!(report["hostedCluster"]["pausedUntilBefore"], "false");
    assert_eq!(hc()["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);

    // A step fails after the URL was written: both fields are put back.
    let gen0 = before["metadata"]["generation"].as_i64().unwrap();
    let out = etcdguard()
        .args([
            "cluster",
            "finish",
            "-w",
            "json",
            "--hosted-cluster=clusters/prod",
            "--apply",
            &url_arg,
        ])
        .arg(format!("--kubeconfig={}", api.kubeconfig_path().display()))
        .env("ETCDGUARD_FAILPOINT", "hostedcluster-after-url")
        .output()
        .unwrap();
    expect_code(&out, 1, "failpoint");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("were put back"), "{stderr}");
    assert!(!stderr.contains("do-not-print-me") && !text(&out.stdout).contains("do-not-print-me"));
    let after = hc();
    assert_eq!(after["spec"]["pausedUntil"], "false", "{:#}", after["spec"]);
    assert!(
        after["spec"]["etcd"]["managed"]["storage"]["restoreSnapshotURL"].is_null(),
        "{:#}",
        after["spec"]
    );
    // paused, URL written, both put back: three spec changes.
    assert_eq!(after["metadata"]["generation"].as_i64().unwrap(), gen0 + 3);

    // The real run: paused, written, resumed to the previous value.
    let (code, report, stderr, _) =
        finish(&api, &["--hosted-cluster=clusters/prod", "--apply", &url_arg]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert!(!stderr.contains("do-not-print-me") && !report.to_string().contains("do-not-print-me"));
    assert_eq!(report["hostedCluster"]["done"], true);
    let done = hc();
    assert_eq!(
        done["spec"]["etcd"]["managed"]["storage"]["restoreSnapshotURL"],
        json!([secret_url])
    );
    assert_eq!(done["spec"]["pausedUntil"], "false");
    assert_eq!(done["metadata"]["generation"].as_i64().unwrap(), gen0 + 6);
    assert!(stderr.contains("reconciliation paused") && stderr.contains("resumed"), "{stderr}");

    // A HostedCluster that does not exist: exit 3 (not found).
    let (code, _, stderr, _) =
        finish(&api, &["--hosted-cluster=clusters/none", "--apply", &url_arg]);
    assert_eq!(code, 3, "no such HostedCluster: {stderr}");
}
