//! `etcdguard agent` against a real etcd 3.5 with client-certificate TLS: scheduled backups
//! into a local repository, retention after each, /healthz and /metrics; a dead server turns
//! /healthz to 503 and the agent keeps going. Also: the shipped Kubernetes manifests name only
//! flags etcdguard has.

mod agent_support;
mod live_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::*;
use etcdguard_testkit::{free_port, EtcdVersion};
use live_support::*;

#[test]
fn agent_backs_up_on_schedule_applies_retention_and_reports_health() {
    let pki = Pki::new();
    let mut server = pki.server(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/first", b"one");
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let files = work.path().join("pki");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("ca.key"),
        "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
    let mut cmd = etcdguard();
    cmd.arg("agent")
        .arg("--repo")
        .arg(&repo)
        .args(pki.args(server.endpoint()))
        .arg("--pki-dir")
        .arg(&files)
        .args(["--every", "2s", "--keep-last", "2", "--listen", &format!("127.0.0.1:{port}")])
        // One agent: its failed runs are counted (with an election, an agent that cannot reach
        // etcd stands by instead: `agent_without_etcd_stands_by_and_is_unhealthy`).
        .arg("--no-elect")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let agent = Agent(cmd.spawn().unwrap());
    let agent_log = || std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default();

    // Three backups succeed; each run writes a key first so the revisions move. A run's prune
    // follows its backup, so wait for both counters (on a busy machine a poll can fall between).
    let mut metrics = String::new();
    wait_for_or(
        "three successful backups and prunes",
        Duration::from_secs(90),
        agent_log,
        &mut || {
            server.put(
                b"/registry/configmaps/default/tick",
                Instant::now().elapsed().as_nanos().to_string().as_bytes(),
            );
            metrics = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
            sample(&metrics, "etcdguard_backup_runs_total{result=\"success\"}").unwrap_or(0.0)
                >= 3.0
                && sample(&metrics, "etcdguard_prune_runs_total{result=\"success\"}").unwrap_or(0.0)
                    >= 3.0
        },
    );
    assert_eq!(
        sample(&metrics, "etcdguard_backup_runs_total{result=\"failure\"}"),
        Some(0.0),
        "{}",
        agent_log()
    );
    assert!(
        sample(&metrics, "etcdguard_prune_runs_total{result=\"success\"}").unwrap() >= 3.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "etcdguard_agent_healthy"), Some(1.0));
    assert!(
        sample(&metrics, "etcdguard_backup_last_snapshot_bytes").unwrap() > 10_000.0,
        "{metrics}"
    );
    let last_success = sample(&metrics, "etcdguard_backup_last_success_timestamp_seconds").unwrap();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - last_success).abs() < 30.0, "last success {last_success}, now {now}");
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok: last backup "), "{body}");
    assert_eq!(get(port, "/nope").unwrap().0, 404);

    // Retention keeps two; the newest restores, with the PKI file, at the revision reported.
    let ids = list_ids(&repo);
    assert_eq!(
        ids.len(),
        2,
        "--keep-last 2 after {} runs: {ids:?}\n{}",
        sample(&metrics, "etcdguard_backup_runs_total{result=\"success\"}").unwrap(),
        agent_log()
    );
    let show = etcdguard()
        .args(["backup", "show", ids.last().unwrap(), "--repo"])
        .arg(&repo)
        .args(["-w", "json"])
        .output()
        .unwrap();
    expect_code(&show, 0, "backup show");
    let manifest: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert!(manifest["etcd"]["revision"].as_i64().unwrap() > 1);
    assert!(manifest["files"].to_string().contains("ca.key"), "{manifest}");
    assert!(!agent_log().contains("secret"), "the agent logged a secret:\n{}", agent_log());

    // The server dies: the next run fails, /healthz says so with 503, and the agent goes on.
    server.kill();
    wait_for("a failed run", Duration::from_secs(90), || {
        let m = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        sample(&m, "etcdguard_backup_runs_total{result=\"failure\"}").unwrap_or(0.0) >= 1.0
    });
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the last backup failed"), "{body}");
    // Liveness is not backup health: a failing etcd or store must not get the agent restarted.
    assert_eq!(get(port, "/livez").map(|(s, _)| s), Some(200));
    assert!(agent_log().contains("backup failed"), "{}", agent_log());
    wait_for("a second failed run (the agent keeps its schedule)", Duration::from_secs(90), || {
        let m = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        sample(&m, "etcdguard_backup_runs_total{result=\"failure\"}").unwrap_or(0.0) >= 2.0
    });
    assert_eq!(list_ids(&repo), ids, "a failed run must not change the repository's list");
    drop(agent);
}

/// With the election on (the default), an agent whose etcd is gone cannot be elected, and
/// nobody can back up: /healthz turns 503 and says why instead of trusting the repository.
#[test]
fn agent_without_etcd_stands_by_and_is_unhealthy() {
    let mut server = etcdguard_testkit::EtcdServer::start(EtcdVersion::V3_5);
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
    let mut cmd = etcdguard();
    cmd.arg("agent")
        .arg("--repo")
        .arg(work.path().join("repo"))
        .args(["--endpoints", server.endpoint()]);
    cmd.args(["--every", "2s", "--elect-ttl", "2s", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let agent = Agent(cmd.spawn().unwrap());
    let agent_log = || std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default();
    wait_for_or(
        "a first backup by the elected agent",
        Duration::from_secs(60),
        agent_log,
        &mut || {
            get(port, "/metrics").is_some_and(|(_, m)| {
                sample(&m, "etcdguard_backup_runs_total{result=\"success\"}").unwrap_or(0.0) >= 1.0
            })
        },
    );
    server.kill();
    let mut body = String::new();
    wait_for_or("/healthz 503 once etcd is gone", Duration::from_secs(60), agent_log, &mut || {
        let Some((status, b)) = get(port, "/healthz") else { return false };
        body = b;
        status == 503
    });
    assert!(body.contains("cannot reach etcd"), "{body}");
    let metrics = get(port, "/metrics").unwrap().1;
    assert_eq!(sample(&metrics, "etcdguard_agent_role{role=\"standby\"}"), Some(1.0), "{metrics}");
    drop(agent);
}

#[test]
fn agent_refuses_bad_arguments() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();
    let out = etcdguard()
        .args(["agent", "--repo", repo, "--every", "0s", "--runs", "0"])
        .output()
        .unwrap();
    expect_code(&out, 2, "--every 0s");
    let out = etcdguard()
        .args(["agent", "--repo", repo, "--listen", "not-an-address", "--runs", "0"])
        .output()
        .unwrap();
    expect_code(&out, 2, "--listen not-an-address");
    assert!(text(&out.stderr).contains("--listen"), "{}", text(&out.stderr));
    let out = etcdguard().args(["agent", "--repo", repo, "--keep-daily", "x"]).output().unwrap();
    expect_code(&out, 2, "--keep-daily x");
    let out = etcdguard()
        .args(["agent", "--repo", repo, "--listen", "127.0.0.1:0", "--runs", "0"])
        .output()
        .unwrap();
    expect_code(&out, 0, "--runs 0");
    assert!(!repo_exists(repo), "--runs 0 must not touch the repository");
}

fn repo_exists(repo: &str) -> bool {
    Path::new(repo).exists()
}

/// Every container of the shipped manifests runs an etcdguard command whose flags all exist
/// and whose values parse (`--help` at the end: clap reads everything before it first).
#[test]
fn shipped_kubernetes_manifests_use_real_flags() {
    let (checked, daemonsets) = check_shipped_manifests("kubernetes");
    assert!(checked >= 4, "only {checked} containers found under deploy/kubernetes");
    assert_eq!(daemonsets, 1, "the DaemonSet variant under deploy/kubernetes");
}

/// The HyperShift variant: the agent in the HCP namespace, reaching etcd through its client
/// Service with the client certificate mounted where --etcd-secrets-dir reads it, and the
/// encryption config Secret kept with each backup.
#[test]
fn shipped_hypershift_manifests_use_real_flags() {
    let (checked, _) = check_shipped_manifests("hypershift");
    assert!(checked >= 1, "no container found under deploy/hypershift");
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/hypershift/agent-deployment.yaml");
    let doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pod = &doc["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let args: Vec<&str> =
        agent["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
    };
    assert_eq!(arg("--endpoints="), "https://etcd-client.$(POD_NAMESPACE).svc:2379");
    let mounts: Vec<&str> = agent["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for flag in ["--etcd-secrets-dir=", "--file=", "--scratch-dir="] {
        assert!(
            mounts.contains(&arg(flag)),
            "{flag}{} is not a mount of the agent: {mounts:?}",
            arg(flag)
        );
    }
    // The projected volume holds the files under the names --etcd-secrets-dir looks for.
    let volume =
        pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "etcd-client").unwrap();
    let paths: Vec<&str> = volume["projected"]["sources"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["secret"]["items"].as_sequence().or(s["configMap"]["items"].as_sequence()).unwrap()
        })
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["etcd-client.crt", "etcd-client.key", "ca.crt"]);
    let names: Vec<String> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"kas-secret-encryption-config".to_string()), "{names:?}");
}

/// Checks every yaml under deploy/`sub`; returns the containers checked and the DaemonSets.
fn check_shipped_manifests(sub: &str) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(sub);
    let (mut checked, mut daemonsets) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let doc: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        let pod = match kind.as_str() {
            "Deployment" | "DaemonSet" => &doc["spec"]["template"]["spec"],
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            "Service" | "ServiceMonitor" => {
                assert_eq!(
                    doc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
                    Some("etcdguard-agent"),
                    "{}",
                    path.display()
                );
                continue;
            }
            "PrometheusRule" => {
                // Every alert queries a metric the agent exports.
                let rules: Vec<&serde_norway::Value> = doc["spec"]["groups"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .flat_map(|g| g["rules"].as_sequence().unwrap())
                    .collect();
                assert!(rules.len() >= 4, "{}: {} rules", path.display(), rules.len());
                for r in &rules {
                    let (alert, expr) = (r["alert"].as_str().unwrap(), r["expr"].as_str().unwrap());
                    assert!(
                        expr.contains("etcdguard_"),
                        "{}: alert {alert}: {expr}",
                        path.display()
                    );
                }
                // With every agent gone there are no series: the alerts that matter most must
                // still fire.
                for alert in ["EtcdguardBackupTooOld", "EtcdguardNoActiveAgent"] {
                    let r = rules
                        .iter()
                        .find(|r| r["alert"].as_str() == Some(alert))
                        .unwrap_or_else(|| panic!("no {alert}"));
                    assert!(
                        r["expr"].as_str().unwrap().contains("absent("),
                        "{alert} does not fire without agents"
                    );
                }
                continue;
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        };
        if kind == "DaemonSet" {
            daemonsets += 1;
        }
        let containers =
            ["initContainers", "containers"].iter().filter_map(|k| pod[*k].as_sequence()).flatten();
        for c in containers {
            // Liveness is /livez: a storage outage must not restart the agents (/healthz is for alerts).
            if let Some(path_probed) = c["livenessProbe"]["httpGet"]["path"].as_str() {
                assert_eq!(path_probed, "/livez", "{}", path.display());
            }
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let out = etcdguard().args(&args).arg("--help").output().unwrap();
            expect_code(
                &out,
                0,
                &format!(
                    "{} container {}: etcdguard {args:?}",
                    path.display(),
                    c["name"].as_str().unwrap()
                ),
            );
            checked += 1;
        }
    }
    (checked, daemonsets)
}
