//! `inspect --schema-dir`: objects of types and fields newer than the built-in schema
//! (Kubernetes 1.30-1.35) render in full with the generated.proto files of the newest
//! k8s.io/api release (downloaded into the Go module cache by the test), and stay raw (an
//! error naming -o raw, or fields kept under the unknown-fields marker) without.

mod live_support;

use std::path::Path;

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

fn fixture(name: &str, ext: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../kube/tests/fixtures/{name}.{ext}")),
    )
    .unwrap()
}

fn inspect(args: &[&str], env: Option<&Path>) -> (i32, String, String) {
    let mut cmd = etcdguard();
    cmd.arg("inspect").args(args).env_remove("ETCDGUARD_SCHEMA_DIR");
    if let Some(dir) = env {
        cmd.env("ETCDGUARD_SCHEMA_DIR", dir);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The fixture's JSON twin as `inspect get` prints it: resourceVersion = mod revision,
/// managedFields hidden.
fn as_printed(name: &str, revision: i64) -> Value {
    let mut want: Value = serde_json::from_slice(&fixture(name, "json")).unwrap();
    let meta = want["metadata"].as_object_mut().unwrap();
    meta.remove("managedFields");
    meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    want
}

#[test]
fn newer_types_and_fields_render_with_schema_dir_and_raw_without() {
    let Some((api, version)) = etcdguard_testkit::apiserver::k8s_api_module() else {
        eprintln!("SKIPPED: no `go` on PATH to download k8s.io/api (install Go to run this test)");
        return;
    };
    let server = EtcdServer::start(EtcdVersion::V3_5);
    // A type that exists only from 1.36 on, and a Pod with fields added after 1.35.
    let request_key = "/registry/evictionrequests.lifecycle.k8s.io/namespaceValue/nameValue";
    let pod_key = "/registry/pods/namespaceValue/nameValue";
    let request_rev = server
        .put(request_key.as_bytes(), &fixture("lifecycle.k8s.io.v1alpha1.EvictionRequest", "pb"));
    let pod_rev = server.put(pod_key.as_bytes(), &fixture("core.v1.Pod", "pb"));
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    server.snapshot_save(&snap);
    let f = snap.to_str().unwrap();
    let api_dir = api.to_str().unwrap();

    // Without: the type is unknown (a clear error naming -o raw and --schema-dir), and the
    // Pod's newer fields are kept under the marker.
    let (code, _, err) = inspect(&["get", f, request_key], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no schema for EvictionRequest")
            && err.contains("-o raw")
            && err.contains("--schema-dir"),
        "{err}"
    );
    let (code, out, err) = inspect(&["get", f, pod_key], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("x-etcdguard-unknown-fields") && err.contains("--schema-dir"), "{err}");
    assert_ne!(serde_json::from_str::<Value>(&out).unwrap(), as_printed("core.v1.Pod", pod_rev));

    // With (flag, and the environment variable): both equal to their JSON twins.
    for (args, env) in [(vec!["--schema-dir", api_dir], None), (vec![], Some(api.as_path()))] {
        for (key, name, rev) in [
            (request_key, "lifecycle.k8s.io.v1alpha1.EvictionRequest", request_rev),
            (pod_key, "core.v1.Pod", pod_rev),
        ] {
            let mut all = vec!["get", f, key];
            all.extend(&args);
            let (code, out, err) = inspect(&all, env);
            assert_eq!(code, 0, "{name}: {err}");
            assert!(
                err.contains(&format!("k8s.io/api@{version}"))
                    && err.contains("k8s.io/apimachinery@"),
                "{err}"
            );
            assert!(!err.contains("unknown"), "{name}: {err}");
            assert_eq!(
                serde_json::from_str::<Value>(&out).unwrap(),
                as_printed(name, rev),
                "{name}"
            );
        }
    }

    // extract and history take it too: no fields left out of the YAML.
    let (code, out, err) = inspect(
        &["extract", f, "-n", "namespaceValue", "--include-owned", "--schema-dir", api_dir],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("fields the schema does not know") && out.contains("kind: EvictionRequest"),
        "{err}\n{out}"
    );
    let (code, out, err) =
        inspect(&["extract", f, "-n", "namespaceValue", "--include-owned"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("fields the schema does not know") && !out.contains("kind: EvictionRequest"),
        "{err}"
    );
    let (code, out, err) =
        inspect(&["history", f, request_key, "-o", "json", "--schema-dir", api_dir], None);
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history["versions"][0]["object"]["kind"], "EvictionRequest", "{out}");

    // A folder that is not a release: one clear line, usage exit code.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) =
        inspect(&["get", f, pod_key, "--schema-dir", empty.path().to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("Error: --schema-dir") && err.contains("no generated.proto"), "{err}");
    let (code, _, err) = inspect(&["get", f, pod_key, "--schema-dir", "/nonexistent/api@v0"], None);
    assert_eq!(code, 3, "{err}");
}
