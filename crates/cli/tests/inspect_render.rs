//! `inspect get` through a real etcd 3.5: every golden fixture of kubernetes/api
//! (crates/kube/tests/fixtures) is written where the API server would write it, the member is
//! snapshotted with etcdctl, and `inspect get -o json` must print the fixture's JSON twin
//! (resourceVersion = the key's mod revision, managedFields hidden as kubectl hides them).

mod live_support;

use std::path::Path;

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/tests/fixtures")
}

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = etcdguard().arg("inspect").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The `/registry/…` key of a fixture: `<kind>s/<namespace>/<name>` (the fixtures all use
/// the same namespace and name, so the kind and group tell them apart).
fn key_of(base: &str) -> String {
    let (group_version, kind) = base.rsplit_once('.').unwrap();
    format!(
        "/registry/{}-{}/namespaceValue/nameValue",
        kind.to_lowercase(),
        group_version.replace('.', "-")
    )
}

#[test]
fn get_prints_every_fixture_as_kubectl_would() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".pb")).map(str::to_string)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 130);
    let mut revisions = Vec::new();
    for n in &names {
        revisions.push(server.put(
            key_of(n).as_bytes(),
            &std::fs::read(fixtures_dir().join(format!("{n}.pb"))).unwrap(),
        ));
    }
    let cr = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"team-a","managedFields":[{"manager":"kubectl"}]},"spec":{"size":3}}"#;
    let cr_rev = server.put(b"/registry/example.com/widgets/team-a/w1", cr);
    server.put(
        b"/registry/example.com/widgets/team-a/cbor",
        &[0xd9, 0xd9, 0xf7, 0xa1, 0x61, 0x61, 0x01],
    );
    server
        .put(b"/registry/secrets/team-a/sealed", b"k8s:enc:aescbc:v1:key1:\x8f\x02\x11ciphertext");
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    server.snapshot_save(&snap);
    let f = snap.to_str().unwrap();

    let (mut equal, mut newer) = (0, 0);
    for (n, rev) in names.iter().zip(&revisions) {
        let mut want: Value = serde_json::from_slice(
            &std::fs::read(fixtures_dir().join(format!("{n}.json"))).unwrap(),
        )
        .unwrap();
        if let Some(meta) = want.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            if meta.contains_key("resourceVersion") {
                meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
            }
        }
        let (code, out, err) = inspect(&["get", f, &key_of(n), "-o", "json"]);
        if code != 0 {
            // A type newer than the schema: a clear message naming -o raw.
            assert!(
                err.contains("no schema for") && err.contains("-o raw"),
                "{n}: exit {code}: {err}"
            );
            newer += 1;
            continue;
        }
        let got: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{n}: {e}: {out}"));
        assert!(
            out.trim_start().starts_with("{\n  \"apiVersion\": ") && out.contains("\n  \"kind\": "),
            "{n}: apiVersion/kind not first"
        );
        if err.contains("x-etcdguard-unknown-fields") {
            assert!(
                got.to_string().contains("x-etcdguard-unknown-fields"),
                "{n}: stderr names unknown fields the output lacks"
            );
            newer += 1;
            continue;
        }
        if let Some(rv) = got["metadata"].get("resourceVersion") {
            assert_eq!(rv, &Value::String(rev.to_string()), "{n}");
        }
        // Objects without a resourceVersion in their twin (meta types) get one from etcd.
        let mut got = got;
        if want["metadata"].get("resourceVersion").is_none() {
            if let Some(m) = got.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        }
        assert_eq!(got, want, "{n}");
        equal += 1;
    }
    eprintln!("{equal} fixtures printed equal to their JSON twin, {newer} newer than the schema");
    assert!(equal >= 96, "{equal}");
    assert_eq!(equal + newer, 130);

    // YAML and wide: the same object; wide adds the etcd facts as comments only.
    let pod = key_of("core.v1.Pod");
    let (code, json_out, _) =
        inspect(&["get", f, "/registry/configmap-core-v1/namespaceValue/nameValue"]);
    assert_eq!(code, 0);
    let (code, yaml_out, _) =
        inspect(&["get", f, "/registry/configmap-core-v1/namespaceValue/nameValue", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml_out.starts_with("apiVersion: v1\nkind: ConfigMap\n"), "{yaml_out}");
    let from_yaml: Value = serde_norway::from_str(&yaml_out).unwrap();
    assert_eq!(from_yaml, serde_json::from_str::<Value>(&json_out).unwrap());
    assert!(
        !json_out.contains("modRevision") && !json_out.contains("encoding"),
        "etcd facts only on request"
    );
    let (code, wide, _) = inspect(&["get", f, &pod, "-o", "wide"]);
    assert_eq!(code, 0);
    assert!(
        wide.starts_with(&format!("# key: {pod}\n"))
            && wide.contains("# encoding: protobuf\n")
            && wide.contains("# modRevision: "),
        "{wide}"
    );
    let (code, _, err) = inspect(&["get", f, &pod, "--with-etcd-info"]);
    assert_eq!(code, 0);
    assert!(err.contains(&format!("key: {pod}")) && err.contains("size: "), "{err}");

    // Managed fields only on request.
    let (_, out, _) = inspect(&["get", f, &key_of("core.v1.ConfigMap"), "--show-managed-fields"]);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["metadata"]["managedFields"].is_array());

    // A JSON custom resource: as stored, resourceVersion set, managedFields hidden.
    let (code, out, _) = inspect(&["get", f, "/registry/example.com/widgets/team-a/w1"]);
    assert_eq!(code, 0);
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["metadata"]["resourceVersion"], cr_rev.to_string());
    assert!(w["metadata"].get("managedFields").is_none());
    assert_eq!(w["spec"]["size"], 3);

    // CBOR and encrypted-without-keys: clear errors that point at what to do.
    let (code, _, err) = inspect(&["get", f, "/registry/example.com/widgets/team-a/cbor"]);
    assert_ne!(code, 0);
    assert!(err.contains("CBOR") && err.contains("-o raw"), "{err}");
    let (code, _, err) = inspect(&["get", f, "/registry/secrets/team-a/sealed"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("aescbc") && err.contains("key1") && err.contains("--encryption-config"),
        "{err}"
    );
    let out = etcdguard().args(["inspect", "get", f, &pod, "-o", "raw"]).output().unwrap();
    assert!(
        out.stdout == std::fs::read(fixtures_dir().join("core.v1.Pod.pb")).unwrap(),
        "raw bytes differ"
    );
    assert_eq!(inspect(&["get", f, "/registry/pods/namespaceValue/missing"]).0, 3);
}
