//! `etcdguard operator` against a real kube-apiserver on a real etcd (testkit), with a
//! local-directory repository: the CRDs of deploy/crds apply and equal what the binary prints;
//! an EtcdBackup of the live etcd completes (conditions, Event, inventory record); its spec is
//! immutable (CEL rule, checked by the server); a backup of an unreachable endpoint fails with
//! that reason; a seconds-level schedule fires, its history limit prunes EtcdBackup objects
//! and its retention the repository; the inventory follows `backup create`/`backup delete`
//! run outside the cluster, and a record is deleted with its backup only under
//! deletionPolicy Delete; of two operator processes only one leads, and the other takes over.
//! Each serves /livez, /healthz and /metrics (leader or standby, backups by result).

mod agent_support;
mod backup_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use etcdguard_testkit::apiserver::ApiServer;
use etcdguard_testkit::{run_checked, EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

fn crds_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds/etcdguard.io_v1alpha1.yaml")
}

#[test]
fn deploy_crds_equal_what_the_binary_prints() {
    let out = etcdguard().args(["operator", "crds"]).output().unwrap();
    expect_code(&out, 0, "operator crds");
    let committed = std::fs::read_to_string(crds_file()).unwrap();
    assert!(
        committed == text(&out.stdout),
        "deploy/crds/etcdguard.io_v1alpha1.yaml is stale: regenerate it with \
         `etcdguard operator crds > deploy/crds/etcdguard.io_v1alpha1.yaml`"
    );
    // The Helm chart installs the same CRDs from its own crds/ directory.
    let chart = crds_file()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("helm/etcdguard/crds/etcdguard.io_v1alpha1.yaml");
    let in_chart = std::fs::read_to_string(&chart).unwrap_or_default();
    assert!(
        in_chart == committed,
        "{} differs from deploy/crds/etcdguard.io_v1alpha1.yaml: copy it",
        chart.display()
    );
}

/// A running `etcdguard operator`, stopped by PID (SIGTERM) when dropped.
struct Operator {
    child: Option<Child>,
    log: PathBuf,
    identity: String,
    /// Where it serves /livez, /healthz and /metrics.
    port: u16,
}

impl Operator {
    fn start(api: &ApiServer, dir: &Path, identity: &str, lease_duration: &str) -> Operator {
        let log = dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let port = etcdguard_testkit::free_port();
        let child = etcdguard()
            .args(["operator", "--lease-namespace", "default", "--identity", identity])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--lease-duration", lease_duration, "--inventory-interval", "2s"])
            .arg("--work-dir")
            .arg(dir.join(format!("{identity}-work")))
            .env("KUBECONFIG", api.kubeconfig_path())
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            // No ambient cloud identity: credentials come from Secrets or not at all.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { child: Some(child), log, identity: identity.into(), port }
    }

    /// One sample of its /metrics, e.g. `etcdguard_operator_leader`.
    fn metric(&self, sample: &str) -> Option<f64> {
        agent_support::sample(&agent_support::metrics(self.port), sample)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn leads(&self) -> bool {
        self.log().lines().any(|l| l.contains(" leading"))
    }

    fn signal(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
    }
}

fn kubectl_json(api: &ApiServer, args: &[&str]) -> Value {
    let out = run_checked(api.kubectl().args(args).args(["-o", "json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn apply(api: &ApiServer, yaml: &str) {
    let mut child = api
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    expect_code(&out, 0, &format!("kubectl apply\n{yaml}"));
}

fn install_crds(api: &ApiServer) {
    run_checked(api.kubectl().arg("apply").arg("-f").arg(crds_file()));
    run_checked(api.kubectl().args([
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/etcdbackups.etcdguard.io",
        "crd/etcdbackupschedules.etcdguard.io",
        "crd/etcdbackuprecords.etcdguard.io",
    ]));
}

/// Polls `check` every 200 ms until it returns Some, or panics after `secs` with `what` and
/// the operators' logs.
fn wait_for<T>(
    secs: u64,
    what: &str,
    ops: &[&Operator],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> =
                ops.iter().map(|o| format!("--- {} ---\n{}", o.identity, o.log())).collect();
            panic!("timed out after {secs} s waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn repo_ids(repo: &Path) -> Vec<String> {
    let out =
        etcdguard().args(["backup", "list", "-w", "json", "--repo"]).arg(repo).output().unwrap();
    expect_code(&out, 0, "backup list");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn record_ids(api: &ApiServer) -> Vec<String> {
    let mut ids: Vec<String> = kubectl_json(api, &["get", "etcdbackuprecords"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metadata"]["deletionTimestamp"].is_null())
        .map(|r| r["spec"]["backupId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn backup_yaml(name: &str, repo: &Path, endpoint: &str) -> String {
    format!(
        "apiVersion: etcdguard.io/v1alpha1\nkind: EtcdBackup\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  repository:\n    url: {repo}\n  etcd:\n    endpoints: [\"{endpoint}\"]\n  cluster: test\n",
        repo = repo.display()
    )
}

fn events_for(api: &ApiServer, name: &str) -> Vec<Value> {
    kubectl_json(api, &["get", "events.events.k8s.io"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .cloned()
        .collect()
}

#[test]
fn operator_backups_schedules_and_inventory() {
    let started = Instant::now();
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    eprintln!("kube-apiserver ready in {:?}", api.startup);
    install_crds(&api);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let op = Operator::start(&api, dir.path(), "op-a", "15s");
    let ops = [&op];

    // One backup of the live etcd (the API server's own).
    apply(&api, &backup_yaml("once", &repo, etcd.endpoint()));
    let once = wait_for(90, "EtcdBackup once to finish", &ops, || {
        let b = kubectl_json(&api, &["get", "etcdbackup", "once"]);
        matches!(b["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(b)
    });
    assert_eq!(once["status"]["phase"], "Succeeded", "{once:#}\n{}", op.log());
    let complete = condition(&once, "Complete").unwrap();
    assert_eq!(complete["status"], "True");
    assert_eq!(complete["reason"], "BackupStored");
    assert_eq!(complete["observedGeneration"], once["metadata"]["generation"]);
    assert!(complete["lastTransitionTime"].is_string());
    assert_eq!(condition(&once, "Failed").unwrap()["status"], "False");
    let id = once["status"]["backupId"].as_str().unwrap().to_string();
    assert_eq!(
        repo_ids(&repo),
        vec![id.clone()],
        "the repository holds the backup the status names"
    );
    assert!(once["status"]["revision"].as_i64().unwrap() > 1);
    let reasons: Vec<String> = events_for(&api, "once")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(reasons.contains(&"BackupStored".to_string()), "events: {reasons:?}");
    wait_for(30, "the record of the first backup", &ops, || {
        (record_ids(&api) == vec![id.clone()]).then_some(())
    });
    let record = kubectl_json(&api, &["get", "etcdbackuprecords"])["items"][0].clone();
    assert_eq!(record["spec"]["revision"], once["status"]["revision"]);
    assert_eq!(record["spec"]["cluster"], "test");
    assert_eq!(record["spec"]["verified"], true);
    assert!(record["spec"]["lastVerified"].is_null(), "not read back yet: {record:#}");
    // A verify run outside (as the agent's scrub does) shows in the record.
    let out =
        etcdguard().args(["backup", "verify", "latest", "--repo"]).arg(&repo).output().unwrap();
    expect_code(&out, 0, "backup verify");
    wait_for(30, "the record to show the verification", &ops, || {
        let r = kubectl_json(&api, &["get", "etcdbackuprecords"])["items"][0].clone();
        r["spec"]["lastVerified"].as_str().map(|_| ())
    });

    // The spec is immutable: the server refuses the change (CEL transition rule).
    let out = api
        .kubectl()
        .args([
            "patch",
            "etcdbackup",
            "once",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"cluster":"other"}}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "changing the spec of an EtcdBackup must be refused");
    assert!(text(&out.stderr).contains("cannot be changed"), "{}", text(&out.stderr));

    // A backup of an endpoint nobody listens on fails, and says why.
    let dead = format!("http://127.0.0.1:{}", etcdguard_testkit::free_port());
    apply(&api, &backup_yaml("unreachable", &repo, &dead));
    let failed = wait_for(90, "EtcdBackup unreachable to finish", &ops, || {
        let b = kubectl_json(&api, &["get", "etcdbackup", "unreachable"]);
        matches!(b["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(b)
    });
    assert_eq!(failed["status"]["phase"], "Failed", "{failed:#}");
    let cond = condition(&failed, "Failed").unwrap();
    assert_eq!(cond["status"], "True");
    assert_eq!(cond["reason"], "Unreachable", "{cond:#}");
    assert!(!cond["message"].as_str().unwrap().is_empty());
    assert_eq!(condition(&failed, "Complete").unwrap()["status"], "False");
    assert!(events_for(&api, "unreachable").iter().any(|e| e["type"] == "Warning"));
    assert_eq!(op.metric("etcdguard_operator_backups_total{result=\"success\"}"), Some(1.0));
    assert_eq!(op.metric("etcdguard_operator_backups_total{result=\"failure\"}"), Some(1.0));
    assert!(op.metric("etcdguard_operator_last_backup_success_timestamp_seconds").unwrap() > 0.0);
    let (status, body) = agent_support::get(op.port, "/healthz").unwrap();
    assert_eq!(status, 200, "a failed backup is not the operator's ill health: {body}");

    // The inventory follows changes made outside the cluster.
    let out = etcdguard()
        .args(["backup", "create", "-w", "json", "--endpoints", etcd.endpoint(), "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create");
    let outside: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outside_id = outside["id"].as_str().unwrap().to_string();
    let mut both = vec![id.clone(), outside_id.clone()];
    both.sort();
    wait_for(30, "a record for the backup made outside", &ops, || {
        (record_ids(&api) == both).then_some(())
    });
    let out = etcdguard()
        .args(["backup", "delete", "--force", "--repo"])
        .arg(&repo)
        .arg(&outside_id)
        .output()
        .unwrap();
    expect_code(&out, 0, "backup delete");
    wait_for(30, "the record of the deleted backup to go", &ops, || {
        (record_ids(&api) == vec![id.clone()]).then_some(())
    });

    // Deleting a record (deletionPolicy Retain by default) leaves the backup; it comes back.
    let record_name = |id: &str| {
        kubectl_json(
            &api,
            &["get", "etcdbackuprecords", "-l", &format!("etcdguard.io/backup-id={id}")],
        )["items"][0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let name = record_name(&id);
    run_checked(api.kubectl().args(["delete", "etcdbackuprecord", &name]));
    assert_eq!(repo_ids(&repo), vec![id.clone()], "a Retain record's deletion keeps the backup");
    wait_for(30, "the deleted Retain record to come back", &ops, || {
        (record_ids(&api) == vec![id.clone()]).then_some(())
    });
    // With deletionPolicy Delete, deleting the record deletes the backup.
    let out = etcdguard()
        .args(["backup", "create", "-w", "json", "--endpoints", etcd.endpoint(), "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create");
    let doomed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    wait_for(30, "a record for the second outside backup", &ops, || {
        record_ids(&api).contains(&doomed_id).then_some(())
    });
    let doomed_name = record_name(&doomed_id);
    run_checked(api.kubectl().args([
        "patch",
        "etcdbackuprecord",
        &doomed_name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"deletionPolicy":"Delete"}}"#,
    ]));
    wait_for(30, "the delete finalizer on the record", &ops, || {
        let r = kubectl_json(&api, &["get", "etcdbackuprecord", &doomed_name]);
        r["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()).then_some(())
    });
    run_checked(api.kubectl().args(["delete", "etcdbackuprecord", &doomed_name, "--wait=false"]));
    wait_for(30, "the backup of the Delete record to be deleted", &ops, || {
        (!repo_ids(&repo).contains(&doomed_id)).then_some(())
    });
    wait_for(30, "the Delete record to be gone", &ops, || {
        let out = api.kubectl().args(["get", "etcdbackuprecord", &doomed_name]).output().unwrap();
        (!out.status.success()).then_some(())
    });

    // A schedule every 2 seconds: history limits and retention.
    apply(
        &api,
        &format!(
            "apiVersion: etcdguard.io/v1alpha1\nkind: EtcdBackupSchedule\nmetadata:\n  name: often\n  namespace: default\n\
             spec:\n  schedule: \"*/2 * * * * *\"\n  successfulHistoryLimit: 2\n  failedHistoryLimit: 1\n  \
             retention:\n    keepLast: 3\n  template:\n    repository:\n      url: {repo}\n    etcd:\n      endpoints: [\"{ep}\"]\n",
            repo = repo.display(),
            ep = etcd.endpoint()
        ),
    );
    let schedule_backups = || -> Vec<Value> {
        kubectl_json(&api, &["get", "etcdbackups", "-l", "etcdguard.io/schedule=often"])["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    let mut seen = std::collections::BTreeSet::new();
    wait_for(120, "five scheduled backups", &ops, || {
        for b in schedule_backups() {
            if b["status"]["phase"] == "Succeeded" {
                seen.insert(b["metadata"]["name"].as_str().unwrap().to_string());
            }
        }
        (seen.len() >= 5).then_some(())
    });
    run_checked(api.kubectl().args([
        "patch",
        "etcdbackupschedule",
        "often",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]));
    // The last backup started before the suspension finishes; then the limits hold.
    wait_for(
        60,
        "the history limit (2 succeeded EtcdBackups) and retention (3 backups)",
        &ops,
        || {
            let items = schedule_backups();
            let running = items
                .iter()
                .any(|b| b["status"]["phase"] != "Succeeded" && b["status"]["phase"] != "Failed");
            let succeeded = items.iter().filter(|b| b["status"]["phase"] == "Succeeded").count();
            (!running && succeeded <= 2 && repo_ids(&repo).len() == 3).then_some(())
        },
    );
    let schedule = kubectl_json(&api, &["get", "etcdbackupschedule", "often"]);
    assert_eq!(condition(&schedule, "Ready").unwrap()["status"], "True", "{schedule:#}");
    assert!(schedule["status"]["lastScheduleTime"].is_string());
    assert!(schedule["status"]["lastSuccessfulBackup"].as_str().unwrap().starts_with("often-"));
    assert!(
        events_for(&api, "often").iter().any(|e| e["reason"] == "Pruned"),
        "the schedule's retention ran"
    );
    // The inventory follows the prune.
    let mut ids = repo_ids(&repo);
    ids.sort();
    wait_for(30, "the records to follow the prune", &ops, || {
        (record_ids(&api) == ids).then_some(())
    });
    eprintln!("operator test took {:?}", started.elapsed());
}

#[test]
fn operator_two_processes_one_leader() {
    let started = Instant::now();
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    install_crds(&api);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Operator::start(&api, dir.path(), "op-a", "3s");
    let mut b = Operator::start(&api, dir.path(), "op-b", "3s");
    let holder = |api: &ApiServer| -> Option<String> {
        let out = api
            .kubectl()
            .args(["get", "lease", "etcdguard-operator", "-o", "json"])
            .output()
            .unwrap();
        let lease: Value = serde_json::from_slice(&out.stdout).ok()?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let first = wait_for(60, "a leader", &[&a, &b], || holder(&api).filter(|h| !h.is_empty()));
    assert!(first == "op-a" || first == "op-b", "holder {first}");
    wait_for(30, "the leader to say it leads", &[&a, &b], || {
        (a.leads() || b.leads()).then_some(())
    });
    // Several renewals later there is still one leader and the other waits.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        holder(&api).as_deref(),
        Some(first.as_str()),
        "the lease moved while its holder ran"
    );
    assert!(a.leads() != b.leads(), "exactly one leads:\n{}\n{}", a.log(), b.log());
    let (leader, standby) = if first == "op-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    // Both answer their probes; the metrics say which one leads.
    assert_eq!(leader.metric("etcdguard_operator_leader"), Some(1.0));
    assert_eq!(standby.metric("etcdguard_operator_leader"), Some(0.0));
    for op in [&*leader, &*standby] {
        assert_eq!(agent_support::get(op.port, "/livez").map(|r| r.0), Some(200));
        let (status, body) = agent_support::get(op.port, "/healthz").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(agent_support::get(standby.port, "/healthz").unwrap().1.contains("standing by"));
    assert!(standby.log().contains("waiting to lead"));
    // The leader dies without releasing: the standby takes over after the lease runs out.
    let killed = Instant::now();
    leader.signal(libc::SIGKILL);
    let second = wait_for(30, "the standby to take over", &[&*standby], || {
        holder(&api).filter(|h| *h == standby.identity)
    });
    wait_for(10, "the standby to say it leads", &[&*standby], || standby.leads().then_some(()));
    eprintln!("takeover after {:?} (lease 3s)", killed.elapsed());
    assert_ne!(second, first);
    // A clean stop gives the lease up at once.
    let status = standby.signal(libc::SIGTERM).unwrap();
    assert!(status.success(), "SIGTERM: {status}\n{}", standby.log());
    assert_eq!(holder(&api), None, "a stopped leader releases the lease");
    eprintln!("leader test took {:?}", started.elapsed());
    drop(etcd);
}

/// A repository passphrase from a Secret (the backup is encrypted with it, and it never shows
/// in the object or on a command line), and continuous capture of a schedule.
#[test]
fn operator_secret_passphrase_and_continuous_capture() {
    let started = Instant::now();
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let api = ApiServer::start(etcd.endpoint(), None);
    install_crds(&api);
    // The example manifests are accepted by the server (schemas, RBAC objects).
    run_checked(
        api.kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator")),
    );
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(&api, dir.path(), "op-a", "15s");
    let ops = [&op];
    let passphrase = format!("pass-{}", rand::random::<u64>());
    run_checked(api.kubectl().args([
        "create",
        "secret",
        "generic",
        "repo-key",
        &format!("--from-literal=passphrase={passphrase}"),
    ]));
    let sealed = dir.path().join("sealed");
    let sealed_yaml = backup_yaml("sealed", &sealed, etcd.endpoint()).replacen(
        "  repository:\n",
        "  repository:\n    passphraseSecretRef: {name: repo-key, key: passphrase}\n",
        1,
    );
    apply(&api, &sealed_yaml);
    let b = wait_for(90, "EtcdBackup sealed to finish", &ops, || {
        let b = kubectl_json(&api, &["get", "etcdbackup", "sealed"]);
        matches!(b["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(b)
    });
    assert_eq!(b["status"]["phase"], "Succeeded", "{b:#}\n{}", op.log());
    assert!(!op.log().contains(&passphrase), "the passphrase is in the operator's log");
    let verify = |with_passphrase: bool| {
        let mut cmd = etcdguard();
        cmd.args(["backup", "verify", "latest", "--repo"])
            .arg(&sealed)
            .env_remove("ETCDGUARD_PASSPHRASE");
        if with_passphrase {
            cmd.env("ETCDGUARD_PASSPHRASE", &passphrase);
        }
        cmd.output().unwrap()
    };
    expect_code(&verify(false), 16, "backup verify without the passphrase (encrypted repository)");
    expect_code(&verify(true), 0, "backup verify with the Secret's passphrase");

    // A TLS etcd that requires client certificates: the files come from a Secret; they are
    // gone from the operator's scratch space afterwards. An expired client certificate fails
    // with reason TlsOrAuth.
    let pki = Pki::new();
    let tls_etcd = pki.server(EtcdVersion::V3_5);
    let tls_endpoint = tls_etcd.endpoint().replace("http://", "https://");
    for (secret, cert, key) in [
        ("etcd-client", &pki.client_cert, &pki.client_key),
        ("etcd-expired", &pki.expired_cert, &pki.expired_key),
    ] {
        run_checked(api.kubectl().args(["create", "secret", "generic", secret]).args([
            format!("--from-file=ca.crt={}", pki.ca.display()),
            format!("--from-file=tls.crt={}", cert.display()),
            format!("--from-file=tls.key={}", key.display()),
        ]));
    }
    let tls_repo = dir.path().join("tls");
    for (name, secret) in [("tls", "etcd-client"), ("tls-expired", "etcd-expired")] {
        let yaml = backup_yaml(name, &tls_repo, &tls_endpoint).replacen(
            "  etcd:\n",
            &format!("  etcd:\n    tlsSecretRef: {{name: {secret}}}\n"),
            1,
        );
        apply(&api, &yaml);
    }
    let finished = |name: &str| {
        let name = name.to_string();
        let api = &api;
        move || {
            let b = kubectl_json(api, &["get", "etcdbackup", &name]);
            matches!(b["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(b)
        }
    };
    let tls = wait_for(90, "EtcdBackup tls to finish", &ops, finished("tls"));
    assert_eq!(tls["status"]["phase"], "Succeeded", "{tls:#}\n{}", op.log());
    let expired = wait_for(90, "EtcdBackup tls-expired to finish", &ops, finished("tls-expired"));
    assert_eq!(expired["status"]["phase"], "Failed", "{expired:#}");
    assert_eq!(condition(&expired, "Failed").unwrap()["reason"], "TlsOrAuth", "{expired:#}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("op-a-work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "scratch dirs left behind: {leftovers:?}");

    // An S3 repository (moto): storage credentials from a Secret, in the backup's
    // environment only. Without them the same backup fails.
    let moto = backup_support::Moto::start();
    moto.create_bucket("etcd-ops");
    let s3_repo = format!("s3://etcd-ops/cluster?endpoint={}", moto.endpoint);
    run_checked(api.kubectl().args([
        "create",
        "secret",
        "generic",
        "s3-creds",
        "--from-literal=AWS_ACCESS_KEY_ID=operator-test",
        "--from-literal=AWS_SECRET_ACCESS_KEY=operator-test-secret",
        "--from-literal=AWS_REGION=us-east-1",
    ]));
    let with_creds = backup_yaml("s3", Path::new(&s3_repo), etcd.endpoint()).replacen(
        "  repository:\n",
        "  repository:\n    credentialsSecretRef: {name: s3-creds}\n",
        1,
    );
    apply(&api, &with_creds);
    apply(&api, &backup_yaml("s3-anonymous", Path::new(&s3_repo), etcd.endpoint()));
    let s3 = wait_for(90, "EtcdBackup s3 to finish", &ops, finished("s3"));
    assert_eq!(s3["status"]["phase"], "Succeeded", "{s3:#}\n{}", op.log());
    let anonymous =
        wait_for(90, "EtcdBackup s3-anonymous to finish", &ops, finished("s3-anonymous"));
    assert_eq!(anonymous["status"]["phase"], "Failed", "{anonymous:#}");
    let message = condition(&anonymous, "Failed").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("credentials"), "{message}");
    assert!(!op.log().contains("operator-test-secret"), "a Secret's value is in the log");
    wait_for(30, "the record of the S3 backup", &ops, || {
        let id = s3["status"]["backupId"].as_str()?;
        record_ids(&api).contains(&id.to_string()).then_some(())
    });

    // Continuous capture: a schedule that never fires during the test, with continuous on.
    let follow_repo = dir.path().join("follow");
    apply(
        &api,
        &format!(
            "apiVersion: etcdguard.io/v1alpha1\nkind: EtcdBackupSchedule\nmetadata:\n  name: capture\n  namespace: default\n\
             spec:\n  schedule: \"0 0 1 1 *\"\n  continuous: true\n  template:\n    repository:\n      url: {repo}\n    \
             etcd:\n      endpoints: [\"{ep}\"]\n",
            repo = follow_repo.display(),
            ep = etcd.endpoint()
        ),
    );
    wait_for(60, "the Capturing condition", &ops, || {
        let s = kubectl_json(&api, &["get", "etcdbackupschedule", "capture"]);
        (condition(&s, "Capturing")?["status"] == "True").then_some(())
    });
    // The full backup follow starts with shows up in the inventory; a change after it is
    // stored as a segment.
    wait_for(60, "the record of the capture's full backup", &ops, || {
        let records = kubectl_json(&api, &["get", "etcdbackuprecords"]);
        records["items"]
            .as_array()?
            .iter()
            .any(|r| r["spec"]["repository"] == follow_repo.display().to_string())
            .then_some(())
    });
    let revision = etcd.put(b"/operator-test/changed", b"after the full backup");
    wait_for(60, "the change in the capture's log", &ops, || {
        let out = etcdguard()
            .args(["backup", "log", "-w", "json", "--key", "/operator-test/changed", "--repo"])
            .arg(&follow_repo)
            .output()
            .unwrap();
        (out.status.success() && text(&out.stdout).contains(&revision.to_string())).then_some(())
    });
    eprintln!("secret + capture test took {:?}", started.elapsed());
}

#[test]
fn operator_without_a_cluster_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = etcdguard()
        .arg("operator")
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    expect_code(&out, 12, "operator without a kubeconfig");
    assert!(text(&out.stderr).contains("set KUBECONFIG"), "{}", text(&out.stderr));
}
