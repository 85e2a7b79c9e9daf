//! `inspect` against a real kube-apiserver (Kubernetes built by .ci/install-go-peers) over a
//! real etcd 3.5, encrypting at rest (aescbc for secrets, aesgcm for configmaps, secretbox for
//! serviceaccounts and deployments, identity for the rest): objects of many built-in types
//! are created through the API, the member is snapshotted with `etcdguard snapshot save`, and
//! what `inspect get`, `list` and `extract` say of every object in the snapshot must equal
//! what the API server returns for it at the snapshot's revision (JSON compared as parsed,
//! managed fields shown). The extracted YAML must apply to a fresh API server
//! (server-side, dry run), and `inspect history`/`diff` must follow a key rotation.
//!
//! Everything listens on 127.0.0.1; the servers are stopped by PID when dropped.

mod live_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use etcdguard_testkit::apiserver::ApiServer;
use etcdguard_testkit::{run_checked, EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The keys of one EncryptionConfiguration; `secrets` is a list for rotations (first encrypts).
struct Keys {
    secrets: Vec<(String, String)>,
    gcm: String,
    secretbox: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            secrets: vec![("key1".into(), random_key())],
            gcm: random_key(),
            secretbox: random_key(),
        }
    }

    fn config(&self) -> String {
        let secret_keys: String = self
            .secrets
            .iter()
            .map(|(n, k)| format!("          - {{name: {n}, secret: \"{k}\"}}\n"))
            .collect();
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n{secret_keys}  - identity: {{}}\n\
             - resources: [configmaps]\n  providers:\n  - aesgcm:\n      keys:\n          - {{name: gcm1, secret: \"{gcm}\"}}\n  - identity: {{}}\n\
             - resources: [serviceaccounts, deployments.apps]\n  providers:\n  - secretbox:\n      keys:\n          - {{name: box1, secret: \"{sb}\"}}\n  - identity: {{}}\n\
             - resources: [\"*.*\"]\n  providers:\n  - identity: {{}}\n",
            gcm = self.gcm,
            sb = self.secretbox,
        )
    }
}

/// The newest k8s.io/api release (the server is newer than the built-in schema): its protos
/// and Go types, so that objects render as this server prints them.
fn schema_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        etcdguard_testkit::apiserver::k8s_api_module()
            .expect("`go` is needed to download k8s.io/api (the API server under test was built with it)")
            .0
    })
}

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = etcdguard()
        .arg("inspect")
        .args(args)
        .env("ETCDGUARD_SCHEMA_DIR", schema_dir())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn kubectl_ok(cmd: &mut Command) -> String {
    text(&run_checked(cmd).stdout)
}

/// `etcdguard snapshot save` of the member, and the snapshot's revision.
fn snapshot(etcd: &EtcdServer, path: &Path) -> i64 {
    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(path)
        .args(["--endpoints", etcd.endpoint()])
        .output()
        .unwrap();
    expect_code(&out, 0, "snapshot save");
    let out =
        etcdguard().args(["snapshot", "status"]).arg(path).args(["-w", "json"]).output().unwrap();
    expect_code(&out, 0, "snapshot status");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["revision"].as_i64().unwrap()
}

/// Every kind the server serves: (apiVersion, kind) → (plural resource, stored: listable).
fn discovery(api: &ApiServer) -> HashMap<(String, String), (String, bool)> {
    let mut group_versions = vec!["v1".to_string()];
    for g in api.get_raw("/apis")["groups"].as_array().unwrap() {
        for v in g["versions"].as_array().unwrap() {
            group_versions.push(v["groupVersion"].as_str().unwrap().to_string());
        }
    }
    let mut out = HashMap::new();
    for gv in group_versions {
        let path = if gv == "v1" { "/api/v1".to_string() } else { format!("/apis/{gv}") };
        for r in api.get_raw(&path)["resources"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            if !name.contains('/') {
                let listable = r["verbs"].as_array().is_some_and(|v| v.iter().any(|v| v == "list"));
                out.insert(
                    (gv.clone(), r["kind"].as_str().unwrap().to_string()),
                    (name.to_string(), listable),
                );
            }
        }
    }
    out
}

fn list_path(api_version: &str, plural: &str) -> String {
    if api_version == "v1" {
        format!("/api/v1/{plural}")
    } else {
        format!("/apis/{api_version}/{plural}")
    }
}

/// Objects (apiVersion, kind, namespace, name) of the snapshot as `inspect list -o json` rows.
fn listed(snap: &str, config: &Path) -> Vec<Value> {
    let (code, out, err) =
        inspect(&["list", snap, "-o", "json", "--encryption-config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

/// The API's objects of one kind at exactly `revision` (etcd's state in the snapshot),
/// by (namespace, name), with apiVersion and kind set as a GET sets them.
fn api_objects_at(
    api: &ApiServer,
    api_version: &str,
    kind: &str,
    plural: &str,
    revision: i64,
) -> HashMap<(String, String), Value> {
    let list = api.get_raw(&format!(
        "{}?resourceVersion={revision}&resourceVersionMatch=Exact",
        list_path(api_version, plural)
    ));
    let mut out = HashMap::new();
    for item in list["items"].as_array().unwrap() {
        let mut item = item.clone();
        item["apiVersion"] = Value::String(api_version.to_string());
        item["kind"] = Value::String(kind.to_string());
        let meta = &item["metadata"];
        let id = (
            meta["namespace"].as_str().unwrap_or_default().to_string(),
            meta["name"].as_str().unwrap().to_string(),
        );
        out.insert(id, item);
    }
    out
}

/// Defaults the API server fills in when it reads an object (its decoder defaults), which the
/// stored bytes do not hold; inspect shows objects as stored: (kind, JSON pointer).
const DEFAULTED_ON_READ: &[(&str, &str)] = &[
    // SetDefaults_Job: no labels → the template's (the controller-uid labels added on create).
    ("Job", "/metadata/labels"),
    // SetDefaults_PersistentVolumeClaim: an empty phase reads as Pending.
    ("PersistentVolumeClaim", "/status/phase"),
    // SetDefaults_StatefulSet: the claim templates' apiVersion and kind (not in protobuf).
    ("StatefulSet", "/spec/volumeClaimTemplates/0/apiVersion"),
    ("StatefulSet", "/spec/volumeClaimTemplates/0/kind"),
];

fn differences(want: &Value, got: &Value) -> Option<String> {
    let kind = want["kind"].as_str().unwrap_or_default();
    let mut ops = etcdguard_kube::jsondiff::diff(want, got);
    ops.retain(|o| !(o.op == "remove" && DEFAULTED_ON_READ.contains(&(kind, o.path.as_str()))));
    (!ops.is_empty()).then(|| {
        ops.iter().take(4).map(|o| serde_json::to_string(o).unwrap()).collect::<Vec<_>>().join("; ")
    })
}

/// The YAML documents of `inspect extract` output.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn create_objects(api: &ApiServer) {
    let objects =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apiserver_support/objects.yaml");
    kubectl_ok(
        api.kubectl()
            .args(["apply", "--server-side", "--field-manager=etcdguard-test", "-f"])
            .arg(&objects),
    );
    // Updates by other managers, through subresources too.
    kubectl_ok(api.kubectl().args([
        "-n",
        "team-a",
        "label",
        "configmap",
        "app-config",
        "edited=yes",
    ]));
    kubectl_ok(api.kubectl().args(["-n", "team-a", "scale", "deployment", "web", "--replicas=4"]));
    kubectl_ok(api.kubectl().args([
        "-n",
        "team-a",
        "annotate",
        "secret",
        "db-password",
        "rotated=2026-02-02",
        "--overwrite",
    ]));
    kubectl_ok(api.kubectl().args(["-n", "team-a", "patch", "pod", "web-0", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running","podIP":"10.244.0.7","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-01-02T03:04:05Z"}]}}"#]));
    kubectl_ok(api.kubectl().args([
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/widgets.example.invalid",
    ]));
    let widget = r#"{"apiVersion":"example.invalid/v1","kind":"Widget","metadata":{"name":"w1","namespace":"team-a","labels":{"app":"web"}},"spec":{"size":3,"color":"blue"}}"#;
    let mut create = api.kubectl();
    create
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), widget.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "creating the widget: {}", text(&out.stderr));
    // A certificate signing request with a real PKCS#10 request.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr_json = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "alice"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(csr), "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "expirationSeconds": 3600}
    });
    let mut create = api.kubectl();
    create
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), csr_json.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "creating the CSR: {}", text(&out.stderr));
    // A ClusterTrustBundle (certificates.k8s.io/v1: a type of 1.36+) with a real certificate.
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "etcdguard test trust anchor");
    let anchor = ca.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
    let bundle = serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle", "metadata": {"name": "test-anchors"}, "spec": {"trustBundle": anchor}});
    let mut create = api.kubectl();
    create
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bundle.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "creating the ClusterTrustBundle: {}", text(&out.stderr));
}

/// Keys in the snapshot that the API serves under no kind (the API server's own bookkeeping).
/// CustomResourceDefinitions are stored as apiextensions.k8s.io/v1beta1, which is served no more.
fn unserved(key: &str) -> bool {
    [
        "/registry/ranges/",
        "/registry/masterleases/",
        "/registry/peerserverleases/",
        "/registry/apiextensions.k8s.io/customresourcedefinitions/",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

#[test]
fn inspect_agrees_with_the_api_server_on_every_object() {
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let keys = Keys::new();
    let api = ApiServer::start(etcd.endpoint(), Some(&keys.config()));
    eprintln!("kube-apiserver ready in {:.1} s (pid {:?})", api.startup.as_secs_f64(), api.pid());
    create_objects(&api);
    let dir = tempfile::tempdir().unwrap();
    let snap_path = dir.path().join("cluster.db");
    let revision = snapshot(&etcd, &snap_path);
    let snap = snap_path.to_str().unwrap();
    let config = api.encryption_config_path();
    let config_arg = config.to_str().unwrap();
    let kinds = discovery(&api);

    let rows = listed(snap, &config);
    let mut api_objects: HashMap<(String, String), HashMap<(String, String), Value>> =
        HashMap::new();
    let (mut compared, mut not_served, mut failures, mut stored_older) =
        (BTreeMap::<String, usize>::new(), Vec::new(), Vec::new(), Vec::new());
    let mut encodings = BTreeMap::<String, usize>::new();
    for row in &rows {
        let key = row["key"].as_str().unwrap();
        let object = &row["object"];
        let (api_version, kind) = (
            object["apiVersion"].as_str().unwrap_or_default().to_string(),
            object["kind"].as_str().unwrap_or_default().to_string(),
        );
        let encryption = object
            .get("encryption")
            .map(|e| {
                format!(
                    " {}:{}",
                    e["provider"].as_str().unwrap_or("?"),
                    e["keyName"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        *encodings
            .entry(format!("{}{encryption}", object["encoding"].as_str().unwrap_or("?")))
            .or_default() += 1;
        // Stored in a version the server no longer serves (a promoted type's old version):
        // compared with the served version of the same group and kind, of the same fields.
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        // (Not CustomResourceDefinitions: v1beta1 has another shape; extract's v1 is compared.)
        let other_shape = kind == "CustomResourceDefinition";
        let served = kinds
            .get(&(api_version.clone(), kind.clone()))
            .map(|(plural, _)| (api_version.clone(), plural.clone()))
            .or_else(|| {
                if other_shape {
                    return None;
                }
                kinds
                    .iter()
                    .find(|((gv, k), _)| {
                        *k == kind
                            && !group.is_empty()
                            && gv.rsplit_once('/').map_or("", |(g, _)| g) == group
                    })
                    .map(|((gv, _), (plural, _))| (gv.clone(), plural.clone()))
            });
        let Some((served_version, plural)) = served else {
            not_served.push(format!("{key} ({api_version} {kind})"));
            continue;
        };
        if served_version != api_version {
            stored_older
                .push(format!("{kind} stored as {api_version}, served as {served_version}"));
        }
        let by_id = api_objects
            .entry((served_version.clone(), kind.clone()))
            .or_insert_with(|| api_objects_at(&api, &served_version, &kind, &plural, revision));
        let meta = &object["metadata"];
        let id = (
            meta["namespace"].as_str().unwrap_or_default().to_string(),
            meta["name"].as_str().unwrap_or_default().to_string(),
        );
        let Some(want) = by_id.get(&id) else {
            not_served.push(format!("{key} ({api_version} {kind}, not in the API's list)"));
            continue;
        };
        let mut want = want.clone();
        want["apiVersion"] = Value::String(api_version.clone());
        let want = &want;
        // list: the row's metadata and revision.
        if row["modRevision"].as_i64().map(|r| r.to_string()).as_deref()
            != want["metadata"]["resourceVersion"].as_str()
            || meta["uid"] != want["metadata"]["uid"]
        {
            failures.push(format!(
                "list {key}: modRevision {} uid {} vs API {}",
                row["modRevision"], meta["uid"], want["metadata"]
            ));
        }
        for field in ["labels", "annotations"] {
            let api_side = want["metadata"].get(field).cloned().unwrap_or(Value::Null);
            let defaulted = meta.get(field).is_none()
                && DEFAULTED_ON_READ.contains(&(kind.as_str(), &format!("/metadata/{field}")));
            if meta.get(field).cloned().unwrap_or(Value::Null) != api_side && !defaulted {
                failures.push(format!(
                    "list {key}: {field} {} vs API {api_side}",
                    meta.get(field).unwrap_or(&Value::Null)
                ));
            }
        }
        // get: the whole object.
        let (code, out, err) = inspect(&[
            "get",
            snap,
            key,
            "--encryption-config",
            config_arg,
            "--show-managed-fields",
            "-o",
            "json",
        ]);
        if code != 0 {
            failures.push(format!("get {key}: exit {code}: {err}"));
            continue;
        }
        let got: Value = serde_json::from_str(&out).unwrap();
        if let Some(d) = differences(want, &got) {
            failures.push(format!("get {key} ({api_version} {kind}): {d}"));
        }
        // Nothing on stderr but the schema's source: no unknown fields.
        if err.lines().any(|l| !l.starts_with("schema: ")) {
            failures.push(format!("get {key}: stderr {err}"));
        }
        *compared.entry(format!("{api_version} {kind}")).or_default() += 1;
    }
    eprintln!(
        "snapshot at revision {revision}: {} keys; compared {} objects of {} kinds: {compared:?}",
        rows.len(),
        compared.values().sum::<usize>(),
        compared.len()
    );
    eprintln!("encodings: {encodings:?}");
    eprintln!("not served by the API: {not_served:?}");
    eprintln!("stored in an older version: {stored_older:?}");
    let mut uncovered: Vec<String> = kinds
        .iter()
        .filter(|((_, kind), (_, listable))| {
            *listable && !compared.keys().any(|k| k.ends_with(&format!(" {kind}")))
        })
        .map(|((gv, kind), _)| format!("{gv} {kind}"))
        .collect();
    uncovered.sort();
    eprintln!("stored kinds the server serves with no object in the snapshot: {uncovered:?}");

    // extract: every object, as the API has it less what the API server sets.
    let (code, out, err) =
        inspect(&["extract", snap, "-A", "--include-owned", "--encryption-config", config_arg]);
    assert_eq!(code, 0, "{err}");
    let mut extracted = 0;
    let mut crds = 0;
    for doc in documents(&out) {
        let (api_version, kind) = (
            doc["apiVersion"].as_str().unwrap_or_default().to_string(),
            doc["kind"].as_str().unwrap_or_default().to_string(),
        );
        let id = (
            doc["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            doc["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        );
        // CustomResourceDefinitions come out as v1 (stored as v1beta1): fetched here.
        let by_id = match kinds.get(&(api_version.clone(), kind.clone())) {
            Some((plural, _)) => api_objects
                .entry((api_version.clone(), kind.clone()))
                .or_insert_with(|| api_objects_at(&api, &api_version, &kind, plural, revision)),
            None => {
                failures.push(format!(
                    "extract: {api_version} {kind} {id:?} is of no kind the API serves"
                ));
                continue;
            }
        };
        let Some(want) = by_id.get(&id) else {
            failures
                .push(format!("extract: {api_version} {kind} {id:?} is not an object of the API"));
            continue;
        };
        let mut want = want.clone();
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            want["metadata"].as_object_mut().unwrap().remove(f);
        }
        want.as_object_mut().unwrap().remove("status");
        // A Job's generated selector and the template's uid labels are left out (they name
        // the Job's uid; the API server makes them anew).
        if kind == "Job" {
            want["spec"].as_object_mut().unwrap().remove("selector");
            let labels = want["spec"]["template"]["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("controller-uid");
            labels.remove("batch.kubernetes.io/controller-uid");
        }
        if let Some(d) = differences(&want, &doc) {
            failures.push(format!("extract {api_version} {kind} {id:?}: {d}"));
        }
        extracted += 1;
        crds += usize::from(kind == "CustomResourceDefinition");
    }
    eprintln!("extract: {extracted} objects compared; {}", err.lines().last().unwrap_or_default());
    for f in &failures {
        eprintln!("  {f}");
    }
    assert!(
        failures.is_empty(),
        "{} differences between inspect and the API server (listed above)",
        failures.len()
    );
    assert!(not_served.iter().all(|k| unserved(k)), "keys the API does not serve: {not_served:?}");
    assert!(compared.len() >= 60, "only {} kinds compared", compared.len());
    for kind in [
        "v1 Secret",
        "v1 ConfigMap",
        "v1 Pod",
        "apps/v1 Deployment",
        "example.invalid/v1 Widget",
        "certificates.k8s.io/v1 CertificateSigningRequest",
        "certificates.k8s.io/v1beta1 ClusterTrustBundle",
        "resource.k8s.io/v1beta2 DeviceTaintRule",
        "admissionregistration.k8s.io/v1 MutatingAdmissionPolicy",
    ] {
        assert!(compared.contains_key(kind), "{kind} not compared");
    }
    for marker in ["aescbc", "aesgcm", "secretbox"] {
        assert!(
            encodings.keys().any(|e| e.contains(marker)),
            "no value encrypted with {marker}: {encodings:?}"
        );
    }
    assert!(extracted >= 100, "{extracted}");
    assert_eq!(crds, 1, "the CRD is extracted (as v1)");

    // The default extract applies to a fresh API server: its namespaces, CRDs and service
    // accounts first (a dry run persists nothing, and pods need their service account), then
    // everything, server-side, as a dry run.
    let (code, out, err) = inspect(&["extract", snap, "-A", "--encryption-config", config_arg]);
    assert_eq!(code, 0, "{err}");
    let all = dir.path().join("extracted.yaml");
    std::fs::write(&all, &out).unwrap();
    let first: Vec<String> = documents(&out)
        .into_iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("Namespace" | "CustomResourceDefinition" | "ServiceAccount")
            )
        })
        .map(|d| serde_json::to_string(&d).unwrap())
        .collect();
    let first_path = dir.path().join("first.json");
    std::fs::write(
        &first_path,
        format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}", first.join(",")),
    )
    .unwrap();
    let fresh_etcd = EtcdServer::start(EtcdVersion::V3_5);
    let fresh = ApiServer::start(fresh_etcd.endpoint(), None);
    eprintln!("fresh kube-apiserver ready in {:.1} s", fresh.startup.as_secs_f64());
    kubectl_ok(
        fresh
            .kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&first_path),
    );
    kubectl_ok(fresh.kubectl().args([
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/widgets.example.invalid",
    ]));
    let out = fresh
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f"])
        .arg(&all)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "applying the extract:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let applied = text(&out.stdout).lines().count();
    eprintln!("extract applied (server-side dry run) to a fresh API server: {applied} objects");
    assert!(applied >= 60, "{applied}");
}

#[test]
fn history_and_diff_follow_a_key_rotation() {
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    let mut keys = Keys::new();
    let mut api = ApiServer::start(etcd.endpoint(), Some(&keys.config()));
    eprintln!("kube-apiserver ready in {:.1} s", api.startup.as_secs_f64());
    kubectl_ok(api.kubectl().args(["create", "namespace", "rot"]));
    for name in ["alpha", "beta", "gamma"] {
        kubectl_ok(api.kubectl().args([
            "-n",
            "rot",
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=value={name}-secret"),
        ]));
    }
    kubectl_ok(api.kubectl().args(["-n", "rot", "label", "secret", "alpha", "stage=one"]));
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.db");
    snapshot(&etcd, &before);
    let old_config = dir.path().join("old-keys.yaml");
    std::fs::write(&old_config, keys.config()).unwrap();

    // Rotation: a new key first (the old one still reads), restart, rewrite every secret.
    keys.secrets.insert(0, ("key2".into(), random_key()));
    api.restart_with_encryption(&keys.config());
    eprintln!("restarted with the new key in {:.1} s", api.startup.as_secs_f64());
    let secrets = kubectl_ok(api.kubectl().args(["get", "secrets", "-A", "-o", "json"]));
    let mut replace = api.kubectl();
    replace
        .args(["replace", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = replace.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), secrets.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rewriting the secrets: {}", text(&out.stderr));
    kubectl_ok(api.kubectl().args([
        "-n",
        "rot",
        "label",
        "secret",
        "alpha",
        "stage=two",
        "--overwrite",
    ]));
    let after = dir.path().join("after.db");
    snapshot(&etcd, &after);
    let new_config = api.encryption_config_path();
    let (b, a, nc, oc) = (
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        new_config.to_str().unwrap(),
        old_config.to_str().unwrap(),
    );

    // list: every secret under key1 before, key2 after.
    for (snap, key_name) in [(b, "key1"), (a, "key2")] {
        let (code, out, err) = inspect(&[
            "list",
            snap,
            "-r",
            "secrets",
            "-n",
            "rot",
            "-o",
            "json",
            "--encryption-config",
            nc,
        ]);
        assert_eq!(code, 0, "{err}");
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(rows.len(), 3, "{out}");
        for r in &rows {
            assert_eq!(r["object"]["encryption"]["keyName"], key_name, "{r}");
            assert_eq!(r["object"]["encryption"]["provider"], "aescbc", "{r}");
        }
    }

    // history of one secret: created and labelled under key1, rewritten and relabelled under
    // key2; the rewrite changes no field, the data is the same throughout.
    let key = "/registry/secrets/rot/alpha";
    let (code, out, err) = inspect(&["history", a, key, "-o", "json", "--encryption-config", nc]);
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "{out}");
    let api_now = api.get_raw("/api/v1/namespaces/rot/secrets/alpha");
    for v in versions {
        assert!(v.get("error").is_none(), "{v}");
        assert_eq!(v["object"]["data"], api_now["data"], "{v}");
    }
    let rewrite = &versions[2]["changes"];
    assert!(
        rewrite
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["path"].as_str().unwrap().starts_with("/data")),
        "{rewrite}"
    );
    assert_eq!(versions[1]["changes"][0]["path"], "/metadata/labels", "{out}");
    assert_eq!(versions[3]["changes"][0]["path"], "/metadata/labels/stage", "{out}");
    assert_eq!(versions[3]["object"]["metadata"]["labels"]["stage"], "two");
    // With the old keys only, the versions under key2 do not decrypt: named, exit 1.
    let (code, out, _) = inspect(&["history", a, key, "--encryption-config", oc]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("key2"), "{out}");

    // diff across the rotation: the three secrets were rewritten (modified), their data equal;
    // alpha's label is the only field change.
    let (code, out, err) = inspect(&[
        "diff",
        b,
        a,
        "-r",
        "secrets",
        "-n",
        "rot",
        "-o",
        "json-patch",
        "--encryption-config",
        nc,
    ]);
    assert_eq!(code, 0, "{err}");
    let patches: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(patches.len(), 3, "{out}");
    for p in &patches {
        assert_eq!(p["change"], "modified", "{p}");
        let ops = p["patch"].as_array().unwrap();
        assert!(ops.iter().all(|o| !o["path"].as_str().unwrap().starts_with("/data")), "{p}");
        if p["key"] == key {
            assert_eq!(ops.len(), 1, "{p}");
            assert_eq!(ops[0]["path"], "/metadata/labels/stage", "{p}");
        }
    }
    let (code, out, err) = inspect(&[
        "diff",
        b,
        a,
        "-r",
        "secrets",
        "-n",
        "rot",
        "-o",
        "json",
        "--encryption-config",
        nc,
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        rows.iter().all(|r| r["object"]["encryption"]["keyName"] == "key2"
            && r["oldModRevision"].as_i64() < r["modRevision"].as_i64()),
        "{out}"
    );
    // The old keys cannot read the new side: each secret is named, exit 1.
    let (code, _, err) =
        inspect(&["diff", b, a, "-r", "secrets", "-n", "rot", "--encryption-config", oc]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("not decrypted: /registry/secrets/rot/").count(), 3, "{err}");
}
