//! `inspect extract`, `inspect history`, `inspect diff -o yaml|json-patch` and the
//! pre-restore encryption key check, on snapshots of a real etcd 3.5 holding the protobuf
//! golden fixtures (crates/kube/tests/fixtures), JSON custom resources and values encrypted
//! by PyPI `cryptography`/`PyNaCl` (crates/kube/tests/encryption_vectors/make_vectors.py).

mod live_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::{json, Value};

fn kube_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/tests")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(kube_tests().join("fixtures").join(name)).unwrap()
}

fn twin(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = etcdguard().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// What `extract` must leave of an object: everything but the server-owned fields.
fn stripped(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    v.as_object_mut().unwrap().remove("status");
    v
}

fn yaml_docs(text: &str) -> Vec<Value> {
    // Documents start with a `---` line (serde_norway writes none inside a document).
    let mut docs = Vec::new();
    for doc in format!("\n{text}").split("\n---\n").skip(1) {
        docs.push(serde_norway::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{e}:\n{doc}")));
    }
    assert!(text.is_empty() || text.starts_with("---\n"), "{text}");
    docs
}

fn key_of(o: &Value) -> (String, String, String) {
    let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// Encryption vectors made by make_vectors.py: (config path, case name -> (etcd key, value)).
fn vectors(dir: &Path) -> (PathBuf, Vec<Value>) {
    let out = dir.join("vectors");
    let r = Command::new("python3")
        .arg(kube_tests().join("encryption_vectors/make_vectors.py"))
        .arg(kube_tests().join("fixtures"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "make_vectors.py (needs cryptography and PyNaCl): {}",
        text(&r.stderr)
    );
    (
        out.join("config.yaml"),
        serde_json::from_slice(&std::fs::read(out.join("vectors.json")).unwrap()).unwrap(),
    )
}

fn case(cases: &[Value], name: &str) -> (String, Vec<u8>) {
    let c = cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}"));
    (
        c["etcdKey"].as_str().unwrap().to_string(),
        base64::engine::general_purpose::STANDARD.decode(c["value"].as_str().unwrap()).unwrap(),
    )
}

const CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.example.com","uid":"crd-uid","resourceVersion":"1","creationTimestamp":"2026-01-01T00:00:00Z","generation":1},"spec":{"group":"example.com","names":{"kind":"Widget","plural":"widgets","singular":"widget","listKind":"WidgetList"},"scope":"Namespaced","versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]},"status":{"acceptedNames":{"kind":"Widget","plural":"widgets"},"storedVersions":["v1"]}}"#;
const NAMESPACE: &str = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"namespaceValue","uid":"ns-uid","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"kubernetes.io/metadata.name":"namespaceValue"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}"#;
const WIDGET: &str = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"namespaceValue","uid":"w-uid","resourceVersion":"7","generation":3,"creationTimestamp":"2026-01-02T03:04:05Z","labels":{"app":"web"},"annotations":{"note":"kept"},"managedFields":[{"manager":"kubectl","operation":"Apply","time":"2026-01-02T03:04:05Z"}]},"spec":{"size":3,"colors":["red","blue"]},"status":{"ready":true}}"#;
const OTHER_CM: &str = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"other","labels":{"app":"db"}},"data":{"k":"v"}}"#;

#[test]
fn extract_round_trip_through_a_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    // The fixtures live in namespace "namespaceValue" under the name "nameValue".
    let pb = [
        ("/registry/configmaps/namespaceValue/nameValue", "core.v1.ConfigMap"),
        ("/registry/secrets/namespaceValue/nameValue", "core.v1.Secret"),
        ("/registry/services/specs/namespaceValue/nameValue", "core.v1.Service"),
        ("/registry/serviceaccounts/namespaceValue/nameValue", "core.v1.ServiceAccount"),
    ];
    for (key, name) in pb {
        server.put(key.as_bytes(), &fixture(&format!("{name}.pb")));
    }
    server.put(
        b"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
        CRD.as_bytes(),
    );
    server.put(b"/registry/namespaces/namespaceValue", NAMESPACE.as_bytes());
    server.put(b"/registry/example.com/widgets/namespaceValue/w1", WIDGET.as_bytes());
    server.put(b"/registry/configmaps/other/c", OTHER_CM.as_bytes());
    server.put(b"/registry/configmaps/namespaceValue/gone", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"gone","namespace":"namespaceValue"}}"#);
    server.delete(b"/registry/configmaps/namespaceValue/gone");
    server.put(b"/registry/events/namespaceValue/e1", br#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"e1","namespace":"namespaceValue"}}"#);
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);
    let s = snapshot.to_str().unwrap();

    // Everything, owned objects too: CRD first, then the Namespace, then the rest.
    let (code, out, err) = run(&["inspect", "extract", s, "--all-namespaces", "--include-owned"]);
    assert_eq!(code, 0, "{err}");
    let docs = yaml_docs(&out);
    let kinds: Vec<String> = docs.iter().map(|d| key_of(d).0).collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}\n{out}");
    assert_eq!(
        (kinds[0].as_str(), kinds[1].as_str()),
        ("CustomResourceDefinition", "Namespace"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"Event".to_string()), "events are left out by default");
    let find = |kind: &str, ns: &str, name: &str| -> Value {
        docs.iter()
            .find(|d| key_of(d) == (kind.to_string(), ns.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} not extracted:\n{out}"))
            .clone()
    };
    // Each object equals what was stored (the fixtures' JSON twins) minus the stripped fields.
    for (_, name) in pb {
        let want = stripped(twin(&format!("{name}.json")));
        let (kind, ns, n) = key_of(&want);
        assert_eq!(find(&kind, &ns, &n), want, "{name}");
    }
    assert_eq!(
        find("CustomResourceDefinition", "", "widgets.example.com"),
        stripped(serde_json::from_str(CRD).unwrap())
    );
    assert_eq!(
        find("Namespace", "", "namespaceValue"),
        stripped(serde_json::from_str(NAMESPACE).unwrap())
    );
    let widget = find("Widget", "namespaceValue", "w1");
    assert_eq!(widget, stripped(serde_json::from_str(WIDGET).unwrap()));
    assert_eq!(widget["metadata"]["annotations"]["note"], "kept");
    assert!(widget.get("status").is_none() && widget["metadata"].get("uid").is_none());
    // apiVersion and kind lead each document, as kubectl writes them.
    assert!(
        out.split("---\n").filter(|d| !d.is_empty()).all(|d| d.starts_with("apiVersion: ")),
        "{out}"
    );

    // -n: the namespace and its objects, nothing of other namespaces, no deleted object; the
    // fixtures name a controller owner, so they are left out unless --include-owned.
    let (code, out, err) = run(&["inspect", "extract", s, "-n", "namespaceValue"]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<_> = yaml_docs(&out).iter().map(key_of).collect();
    assert_eq!(
        got,
        vec![
            ("Namespace".into(), "".into(), "namespaceValue".into()),
            ("Widget".into(), "namespaceValue".into(), "w1".into())
        ],
        "{out}"
    );
    assert!(err.contains("4 left out as owned by a controller"), "{err}");
    // Selectors: equality, inequality, existence.
    let (_, out, _) = run(&["inspect", "extract", s, "-A", "-l", "app!=web,app"]);
    assert_eq!(
        yaml_docs(&out).iter().map(key_of).collect::<Vec<_>>(),
        vec![("ConfigMap".into(), "other".into(), "c".into())]
    );
    let (code, _, err) = run(&["inspect", "extract", s, "-A", "-l", "app in (x"]);
    assert_eq!(code, 2, "{err}");
    // Nothing said about what to extract: a usage error, not the whole cluster.
    assert_eq!(run(&["inspect", "extract", s]).0, 2);

    // --output-dir: one file per object, in apply order, 0600.
    let out_dir = dir.path().join("restored");
    let (code, _, err) = run(&[
        "inspect",
        "extract",
        s,
        "-A",
        "--include-owned",
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let secret_file = out_dir.join("3-objects/namespaceValue/secrets/nameValue.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret: Value =
        serde_norway::from_str(&std::fs::read_to_string(&secret_file).unwrap()).unwrap();
    assert_eq!(secret, stripped(twin("core.v1.Secret.json")));
    assert!(out_dir.join("1-customresourcedefinitions/widgets.example.com.yaml").is_file());
    assert!(out_dir.join("2-namespaces/namespaceValue.yaml").is_file());
    assert!(out_dir.join("3-objects/namespaceValue/services/nameValue.yaml").is_file());
    // A second run into the same dir is refused: nothing overwritten.
    let (code, _, err) =
        run(&["inspect", "extract", s, "-A", "--output-dir", out_dir.to_str().unwrap()]);
    assert_eq!(code, 14, "{err}");
}

#[test]
fn extract_decrypts_secrets_or_skips_them_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cases) = vectors(dir.path());
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let (key, value) = case(&cases, "aesgcm gcm-key secret");
    server.put(key.as_bytes(), &value);
    server.put(b"/registry/configmaps/namespaceValue/plain", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"plain","namespace":"namespaceValue"}}"#);
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);
    let s = snapshot.to_str().unwrap();

    let (code, out, err) =
        run(&["inspect", "extract", s, "-n", "namespaceValue", "--include-owned"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("warning: skipped {key}")) && err.contains("--encryption-config"),
        "{err}"
    );
    assert_eq!(yaml_docs(&out).len(), 1);
    let (code, out, err) = run(&[
        "inspect",
        "extract",
        s,
        "-n",
        "namespaceValue",
        "--include-owned",
        "--encryption-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let docs = yaml_docs(&out);
    assert_eq!(docs.len(), 2, "{out}");
    assert_eq!(
        docs.iter().find(|d| d["kind"] == "Secret").unwrap(),
        &stripped(twin("core.v1.Secret.json"))
    );

    // From a repository: the backup's own EncryptionConfiguration decrypts.
    let repo = dir.path().join("repo");
    let (code, _, err) = run(&[
        "backup",
        "create",
        "--repo",
        repo.to_str().unwrap(),
        "--from-file",
        s,
        "--encryption-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("not encrypted"),
        "an unencrypted repository holding keys is not warned about: {err}"
    );
    let (code, out, err) = run(&[
        "inspect",
        "extract",
        "--repo",
        repo.to_str().unwrap(),
        "latest",
        "-r",
        "secrets",
        "-A",
        "--include-owned",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stored in backup"), "{err}");
    assert_eq!(yaml_docs(&out), vec![stripped(twin("core.v1.Secret.json"))]);

    // --manifests-dir: the API server's --encryption-provider-config is found (through its
    // hostPath volume) and stored, so the backup decrypts without being told.
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("kube-apiserver.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver, --encryption-provider-config=/etc/kubernetes/enc/config.yaml]\n    volumeMounts:\n    - {{name: enc, mountPath: /etc/kubernetes/enc}}\n  volumes:\n  - name: enc\n    hostPath: {{path: {}}}\n",
            config.parent().unwrap().display()
        ),
    )
    .unwrap();
    let repo2 = dir.path().join("repo2");
    let (code, _, err) = run(&[
        "backup",
        "create",
        "--repo",
        repo2.to_str().unwrap(),
        "--from-file",
        s,
        "--manifests-dir",
        manifests.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("storing the API server's EncryptionConfiguration"), "{err}");
    let (code, out, err) = run(&[
        "inspect",
        "extract",
        "--repo",
        repo2.to_str().unwrap(),
        "-r",
        "secrets",
        "-A",
        "--include-owned",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(yaml_docs(&out), vec![stripped(twin("core.v1.Secret.json"))]);
}

#[test]
fn history_and_field_diff_of_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let key = b"/registry/configmaps/default/app";
    let cm = |data: Value, time: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default", "uid": "u1",
            "creationTimestamp": "2026-03-01T10:00:00Z", "managedFields": [{"manager": "kubectl", "operation": "Update", "time": time}]}, "data": data})
        .to_string()
    };
    let first = server.put(key, cm(json!({"mode": "a"}), "2026-03-01T10:00:00Z").as_bytes());
    let old_snapshot = dir.path().join("old.db");
    server.snapshot_save(&old_snapshot);
    server.put(key, cm(json!({"mode": "b"}), "2026-03-01T11:00:00Z").as_bytes());
    let third =
        server.put(key, cm(json!({"mode": "b", "extra": "x"}), "2026-03-01T12:00:00Z").as_bytes());
    let mid_snapshot = dir.path().join("mid.db");
    server.snapshot_save(&mid_snapshot);
    let deleted = server.delete(key);
    assert_eq!(deleted, 1);
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);
    let s = snapshot.to_str().unwrap();
    let k = std::str::from_utf8(key).unwrap();

    let (code, out, err) = run(&["inspect", "history", s, k, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "{out}");
    assert_eq!(versions[0]["revision"], first);
    assert_eq!(
        (versions[0]["version"].as_i64(), versions[0]["time"].as_str()),
        (Some(1), Some("2026-03-01T10:00:00Z"))
    );
    assert_eq!(
        versions[1]["changes"],
        json!([{"op": "replace", "path": "/data/mode", "value": "b", "oldValue": "a"}])
    );
    assert_eq!(versions[2]["revision"], third);
    assert_eq!(versions[2]["time"], "2026-03-01T12:00:00Z");
    assert_eq!(versions[2]["changes"], json!([{"op": "add", "path": "/data/extra", "value": "x"}]));
    assert_eq!(versions[3]["deleted"], true);
    assert_eq!(versions[3]["changes"][0]["op"], "remove");
    assert_eq!(versions[3]["changes"][0]["oldValue"]["data"]["extra"], "x");
    let (code, out, _) = run(&["inspect", "history", s, k]);
    assert_eq!(code, 0);
    assert!(out.contains("@@ /data/mode @@\n  - a\n  + b\n") && out.contains(": deleted"), "{out}");
    assert_eq!(run(&["inspect", "history", s, "/registry/configmaps/default/never"]).0, 3);

    // diff between two snapshots: the fields changed, unified and as JSON patch.
    let (o, m) = (old_snapshot.to_str().unwrap(), mid_snapshot.to_str().unwrap());
    let (code, out, err) = run(&["inspect", "diff", o, m, "-o", "yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("~ {k} (revision {first} -> {third})")), "{out}");
    assert!(
        out.contains("@@ /data/extra @@\n+ x\n") && out.contains("@@ /data/mode @@\n- a\n+ b\n"),
        "{out}"
    );
    let (code, out, err) = run(&["inspect", "diff", o, m, "-o", "json-patch"]);
    assert_eq!(code, 0, "{err}");
    let patches: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        patches,
        json!([{"key": k, "change": "modified", "patch": [{"op": "replace", "path": "/data/mode", "value": "b"}, {"op": "add", "path": "/data/extra", "value": "x"}]}])
    );
}

#[test]
fn restores_refuse_a_snapshot_whose_keys_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cases) = vectors(dir.path());
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let (key, value) = case(&cases, "aesgcm gcm-key secret");
    server.put(key.as_bytes(), &value);
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);
    let s = snapshot.to_str().unwrap();
    // A configuration without gcm-key (another aescbc key only).
    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: other, secret: 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='}]}\n  - identity: {}\n",
    )
    .unwrap();
    let m = missing.to_str().unwrap();

    // snapshot restore: refused without a config and with one missing the key; nothing written.
    let target = dir.path().join("data");
    let t = target.to_str().unwrap();
    for extra in [&[][..], &["--encryption-config", m][..]] {
        let (code, _, err) =
            run(&[&["snapshot", "restore", s, "--data-dir", t][..], extra].concat());
        assert_eq!(code, 17, "{err}");
        assert!(err.contains("refused by safety check") && err.contains("aesgcm:gcm-key"), "{err}");
        assert!(!target.exists(), "the target was touched");
    }
    let (code, _, err) = run(&[
        "snapshot",
        "restore",
        s,
        "--data-dir",
        t,
        "--encryption-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("encryption keys checked: aesgcm:gcm-key"), "{err}");
    assert!(target.join("member/snap/db").is_file());

    // backup restore: the backup's stored configuration lacks the key -> refused; --force goes on.
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap();
    let (code, _, err) =
        run(&["backup", "create", "--repo", r, "--from-file", s, "--encryption-config", m]);
    assert_eq!(code, 0, "{err}");
    let target2 = dir.path().join("data2");
    let t2 = target2.to_str().unwrap();
    let (code, _, err) = run(&["backup", "restore", "--repo", r, "latest", "--data-dir", t2]);
    assert_eq!(code, 17, "{err}");
    assert!(err.contains("aesgcm:gcm-key") && err.contains("stored in backup"), "{err}");
    assert!(!target2.exists(), "the target was touched");
    // The key check runs during the restore's own walk, before the data dir is put in place:
    // neither the reassembled snapshot nor the unpublished data dir is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // --encryption-config names the one that will be in place instead.
    let (code, _, err) = run(&[
        "backup",
        "restore",
        "--repo",
        r,
        "latest",
        "--data-dir",
        t2,
        "--encryption-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let target3 = dir.path().join("data3");
    let (code, _, err) = run(&[
        "backup",
        "restore",
        "--repo",
        r,
        "latest",
        "--data-dir",
        target3.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --force") && err.contains("gcm-key"), "{err}");
    assert!(target3.join("member/snap/db").is_file());
}

/// Only each key's newest revision is extracted: an update wins over the value before it, a
/// key deleted and written again is back, and within a stage objects come in key order
/// (stages CRDs, Namespaces, the rest), whatever order they were written in.
#[test]
fn extract_streams_each_keys_newest_version_in_stage_then_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let cm = |name: &str, v: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"a"}},"data":{{"v":"{v}"}}}}"#
        )
    };
    server.put(b"/registry/configmaps/a/first", cm("first", "old").as_bytes());
    server.put(b"/registry/configmaps/a/back", cm("back", "1").as_bytes());
    server.put(b"/registry/configmaps/a/zz", cm("zz", "1").as_bytes());
    server.delete(b"/registry/configmaps/a/back");
    server.put(
        b"/registry/namespaces/a",
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}"#,
    );
    server.put(b"/registry/configmaps/a/back", cm("back", "2").as_bytes());
    server.put(b"/registry/configmaps/a/first", cm("first", "new").as_bytes());
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);

    let (code, out, err) = run(&["inspect", "extract", snapshot.to_str().unwrap(), "-n", "a"]);
    assert_eq!(code, 0, "{err}");
    let docs = yaml_docs(&out);
    let got: Vec<(String, String)> = docs
        .iter()
        .map(|d| (key_of(d).2, d["data"]["v"].as_str().unwrap_or_default().to_string()))
        .collect();
    let want = [("a", ""), ("back", "2"), ("first", "new"), ("zz", "1")];
    assert_eq!(got, want.map(|(n, v)| (n.to_string(), v.to_string())), "{out}");
    assert!(err.contains("4 object(s) extracted (0 secret(s)); 0 skipped"), "{err}");

    // Into a pipe whose reader has gone: it stops at the first object, as `cat` would.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = etcdguard()
        .args(["inspect", "extract", snapshot.to_str().unwrap(), "-n", "a"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{err}");
    assert!(
        !err.contains("extracted") && !err.contains("Error") && !err.contains("panicked"),
        "{err}"
    );
}
