//! Deployable as shipped: the image and the Helm chart.
//!
//! * `image_runs_as_shipped`: `scripts/image` writes the OCI archive (from this build's
//!   binary); its manifest and config are checked (non-root user, entrypoint, labels), the
//!   layers are unpacked into a folder, and inside it (chroot as the image's uid 65532 when
//!   the test runs as root, else `unshare -r --root`) `etcdguard --version`, etcd and etcdutl
//!   run, and a real etcd 3.6 snapshot is restored and the restored member checked.
//! * `helm_chart_applies_to_a_real_api_server`: `helm lint` and `helm template` of
//!   deploy/helm/etcdguard with the default values and with every feature on
//!   (ci/all-features-values.yaml); every rendered object, and every plain manifest under
//!   deploy/, is applied with `kubectl apply --dry-run=server` to a real kube-apiserver over a
//!   real etcd, after the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule, from its
//!   published Go module) were installed there.
//!
//! helm, etcd, kube-apiserver and kubectl come from `.ci/install-go-peers`. Everything runs on
//! 127.0.0.1; servers are stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcdguard_testkit::apiserver::{go_module_dir, ApiServer};
use etcdguard_testkit::{run_checked, EtcdServer, EtcdVersion};
use serde_json::Value;

/// The release of the Prometheus Operator whose CRDs the chart's monitoring objects target.
const PROMETHEUS_OPERATOR: &str = "v0.85.0";
/// The image's user and group (scripts/oci_image.py, Dockerfile).
const IMAGE_UID: u32 = 65532;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn helm() -> PathBuf {
    let p = std::env::var_os("ETCDGUARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/tools/helm"));
    assert!(p.is_file(), "{} not found; run `bash .ci/install-go-peers` (builds helm from its Go module) or set ETCDGUARD_HELM", p.display());
    p
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

// ---------------------------------------------------------------------------------------------
// the image

/// A blob of the OCI layout by its digest ("sha256:…").
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let data = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    use sha2::Digest as _;
    let actual: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(actual, hex, "blob {digest} does not match its digest");
    data
}

/// `name` found on the host's PATH (the commands below run with the image's PATH).
fn host_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH (coreutils/util-linux)"))
}

/// How to run a program inside an unpacked root: chroot as the image's user when we are root,
/// else a user namespace (`unshare -r --root`). `None` when the kernel allows neither.
type InImage = Box<dyn Fn(&[&str]) -> Output>;

fn image_runner(root: &Path) -> Option<InImage> {
    let root = root.to_path_buf();
    let is_root = unsafe { libc::geteuid() } == 0;
    let run = move |args: &[&str]| -> Output {
        let mut cmd = if is_root {
            let mut c = Command::new(host_program("chroot"));
            c.arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}")).arg(&root);
            c
        } else {
            let mut c = Command::new(host_program("unshare"));
            c.arg("-r").arg(format!("--root={}", root.display()));
            c
        };
        // Only what the image's config sets: nothing of the host's environment leaks in.
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/home/etcdguard")
            .args(args);
        cmd.output().expect("starting chroot/unshare")
    };
    let probe = run(&["/usr/local/bin/etcdguard", "--version"]);
    if probe.status.success() {
        return Some(Box::new(run));
    }
    let text = output_text(&probe);
    if !is_root && text.contains("Operation not permitted") {
        eprintln!("SKIP: not root and the kernel forbids user namespaces (unshare -r): {text}");
        return None;
    }
    panic!("etcdguard --version inside the image failed: {text}");
}

#[test]
fn image_runs_as_shipped() {
    let repo = repo_root();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("etcdguard-oci.tar");
    let started = std::time::Instant::now();
    run_checked(
        Command::new(repo.join("scripts/image"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_etcdguard"))
            .arg("--out")
            .arg(&archive)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    eprintln!(
        "scripts/image: {:?}, {} bytes",
        started.elapsed(),
        archive.metadata().unwrap().len()
    );

    // The layout: index -> manifest -> config and layers, every blob matching its digest.
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_checked(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));
    let oci_layout: Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], version);
    let manifest: Value =
        serde_json::from_slice(&blob(&layout, manifests[0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config: Value =
        serde_json::from_slice(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], format!("{IMAGE_UID}:{IMAGE_UID}"), "the image runs as non-root");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/etcdguard"]));
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "etcdguard");
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(labels["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");

    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), config["rootfs"]["diff_ids"].as_array().unwrap().len());
    for layer in layers {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let digest = layer["digest"].as_str().unwrap();
        blob(&layout, digest); // checks the digest
        let path = layout.join("blobs/sha256").join(&digest[7..]);
        run_checked(Command::new("tar").arg("-xzf").arg(&path).arg("-C").arg(&root));
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains(&format!("etcdguard:x:{IMAGE_UID}:{IMAGE_UID}:")), "{passwd}");

    // The same archive twice: reproducible.
    let again = work.path().join("again.tar");
    run_checked(
        Command::new(repo.join("scripts/image"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_etcdguard"))
            .arg("--out")
            .arg(&again)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&archive).unwrap(), "not reproducible");

    let Some(run) = image_runner(&root) else { return };
    let out = run(&["/usr/local/bin/etcdguard", "--version"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("etcdguard {version}\n")),
        "{}",
        output_text(&out)
    );
    let out = run(&["etcd", "--version"]);
    assert!(out.status.success(), "etcd in the image: {}", output_text(&out));
    let etcd_line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
    assert!(etcd_line.starts_with("etcd Version: 3.6."), "{etcd_line}");
    let out = run(&["etcdutl", "version"]);
    assert!(out.status.success(), "etcdutl in the image: {}", output_text(&out));

    // A restore inside the image, of a real etcd 3.6's snapshot.
    let etcd = EtcdServer::start(EtcdVersion::V3_6);
    for i in 0..50 {
        etcd.put(format!("/registry/configmaps/default/cm-{i}").as_bytes(), b"value");
    }
    let snap = root.join("tmp/snapshot.db");
    etcd.snapshot_save(&snap);
    std::os::unix::fs::chown(&snap, Some(IMAGE_UID), Some(IMAGE_UID)).ok();
    let out = run(&[
        "etcdguard",
        "snapshot",
        "restore",
        "/tmp/snapshot.db",
        "--data-dir",
        "/tmp/restored",
        "--name",
        "m1",
        "--initial-cluster",
        "m1=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--etcd-version",
        "3.6",
    ]);
    assert!(out.status.success(), "restore inside the image: {}", output_text(&out));
    let out =
        run(&["etcdguard", "snapshot", "status", "-w", "json", "/tmp/restored/member/snap/db"]);
    assert!(out.status.success(), "status inside the image: {}", output_text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    // etcdutl's JSON shape (-w json prints as etcdutl does).
    assert_eq!(status["totalKey"], 50, "restored member lacks the 50 keys written: {status}");
    // etcdutl of the image agrees that the restored database is a good one.
    let out = run(&["etcdutl", "snapshot", "status", "/tmp/restored/member/snap/db", "-w", "json"]);
    assert!(out.status.success(), "etcdutl status inside the image: {}", output_text(&out));
}

// ---------------------------------------------------------------------------------------------
// the Helm chart

fn helm_template(chart: &Path, values: Option<&Path>) -> String {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "etcdguard"]).arg(chart).args([
        "--namespace",
        "kube-system",
        "--include-crds",
    ]);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    String::from_utf8(run_checked(&mut cmd).stdout).unwrap()
}

/// The kinds of the YAML documents of a stream (order kept).
fn kinds(stream: &str) -> Vec<String> {
    stream
        .split("\n---")
        .filter_map(|doc| {
            doc.lines().find_map(|l| l.strip_prefix("kind: ").map(|k| k.trim().to_string()))
        })
        .collect()
}

/// `kubectl apply --dry-run=server` of `yaml`; panics with kubectl's message when refused.
fn dry_run(api: &ApiServer, what: &str, yaml: &str) -> String {
    use std::io::Write as _;
    let mut child = api
        .kubectl()
        .args(["apply", "--dry-run=server", "-o", "name", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the API server refused {what}:\n{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn helm_chart_applies_to_a_real_api_server() {
    let repo = repo_root();
    let chart = repo.join("deploy/helm/etcdguard");
    let all_features = chart.join("ci/all-features-values.yaml");
    for values in [None, Some(&all_features)] {
        let mut cmd = Command::new(helm());
        cmd.arg("lint").arg("--strict").arg(&chart);
        if let Some(v) = values {
            cmd.arg("-f").arg(v);
        }
        run_checked(&mut cmd);
    }
    let default = helm_template(&chart, None);
    let everything = helm_template(&chart, Some(&all_features));
    let default_kinds = kinds(&default);
    assert!(default_kinds.contains(&"DaemonSet".to_string()), "{default_kinds:?}");
    assert!(!default_kinds.contains(&"ServiceMonitor".to_string()), "{default_kinds:?}");
    for kind in
        ["Deployment", "Secret", "Service", "ServiceMonitor", "PrometheusRule", "ClusterRole"]
    {
        assert!(
            kinds(&everything).contains(&kind.to_string()),
            "no {kind} in {:?}",
            kinds(&everything)
        );
    }
    for flag in
        ["--continuous", "--keep-monthly=12", "--drill-etcd=/usr/local/bin/etcd", "- operator"]
    {
        assert!(everything.contains(flag), "{flag} missing from the all-features render");
    }
    assert!(everything.contains("absent(etcdguard_backup_last_success_timestamp_seconds)"));
    // Prometheus' own templates survive Helm's.
    assert!(everything.contains("{{ $labels.instance }}"));

    // A bad value is refused with a message that says what to set.
    let out = Command::new(helm())
        .args(["template", "x"])
        .arg(&chart)
        .args(["--set", "agent.kind=StatefulSet"])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && output_text(&out).contains("agent.kind must be DaemonSet or Deployment")
    );

    let etcd = EtcdServer::start(EtcdVersion::V3_6);
    let api = ApiServer::start(etcd.endpoint(), None);
    let Some(module) =
        go_module_dir("github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR)
    else {
        panic!("no `go` to download the Prometheus Operator's CRDs; install Go (see .ci/install-go-peers)");
    };
    let crds = module.join("example/prometheus-operator-crd");
    for name in
        ["monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"]
    {
        // Server-side: the CRDs are too large for client-side apply's annotation.
        run_checked(api.kubectl().args(["apply", "--server-side", "-f"]).arg(crds.join(name)));
    }
    run_checked(api.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]));

    let applied = dry_run(&api, "the chart with default values", &default);
    assert!(applied.contains("daemonset.apps/etcdguard-agent"), "{applied}");
    let applied = dry_run(&api, "the chart with every feature on", &everything);
    for object in [
        "deployment.apps/etcdguard-agent",
        "deployment.apps/etcdguard-operator",
        "servicemonitor.monitoring.coreos.com/etcdguard-agent",
        "prometheusrule.monitoring.coreos.com/etcdguard-agent",
        "clusterrole.rbac.authorization.k8s.io/etcdguard-operator",
    ] {
        assert!(applied.contains(object), "{object} not applied: {applied}");
    }

    // The plain manifests: CRDs first (for real, so resources of them can be dry-run), then
    // every other file, each in its namespace (created when missing).
    let deploy = repo.join("deploy");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(&deploy).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() || dir.ends_with("helm") {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(f);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 6, "deploy/ has only {files:?}");
    let (crd_files, others): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|f| f.parent().is_some_and(|p| p.ends_with("crds")));
    for f in &crd_files {
        run_checked(api.kubectl().args(["apply", "--server-side", "-f"]).arg(f));
    }
    if !crd_files.is_empty() {
        run_checked(api.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ]));
    }
    for f in &others {
        let yaml = std::fs::read_to_string(f).unwrap();
        for line in yaml.lines() {
            if let Some(ns) = line.trim().strip_prefix("namespace: ") {
                let ns = ns.split('#').next().unwrap().trim().trim_matches('"');
                if !ns.is_empty() && !ns.contains('{') {
                    let out = api.kubectl().args(["create", "namespace", ns]).output().unwrap();
                    assert!(
                        out.status.success() || output_text(&out).contains("AlreadyExists"),
                        "{}",
                        output_text(&out)
                    );
                }
            }
        }
        dry_run(&api, &f.display().to_string(), &yaml);
    }
    eprintln!(
        "applied (dry run): chart default {} objects, all features {} objects, {} CRD files, {} manifests; API server up in {:?}",
        default_kinds.len(),
        kinds(&everything).len(),
        crd_files.len(),
        others.len(),
        api.startup
    );
}
