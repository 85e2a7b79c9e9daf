//! `etcdguard inspect` on snapshots of a real etcd 3.5 holding real Kubernetes values: the
//! protobuf encodings of kubernetes/api's golden fixtures (crates/kube/tests/fixtures), a
//! JSON custom resource, and an encrypted-at-rest secret, written where the API server
//! writes them.

mod live_support;

use std::path::Path;

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/tests/fixtures").join(name))
        .unwrap()
}

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = etcdguard().arg("inspect").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn json_list(args: &[&str]) -> Vec<serde_json::Value> {
    let (code, out, err) = inspect(args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn list_get_and_diff_real_kubernetes_values() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    // The fixtures' objects all live in namespace "namespaceValue" under the name "nameValue".
    server.put(b"/registry/configmaps/namespaceValue/nameValue", &fixture("core.v1.ConfigMap.pb"));
    server.put(b"/registry/secrets/namespaceValue/nameValue", &fixture("core.v1.Secret.pb"));
    server.put(b"/registry/pods/namespaceValue/nameValue", &fixture("core.v1.Pod.pb"));
    server
        .put(b"/registry/deployments/namespaceValue/nameValue", &fixture("apps.v1.Deployment.pb"));
    let cr = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"team-a","uid":"u-1","labels":{"app":"web"},"creationTimestamp":"2026-01-02T03:04:05Z"},"spec":{"size":3}}"#;
    server.put(b"/registry/example.com/widgets/team-a/w1", cr);
    server
        .put(b"/registry/secrets/team-a/sealed", b"k8s:enc:aescbc:v1:key1:\x8f\x02\x11ciphertext");
    server.put(b"/plain/key", b"not kubernetes");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.db");
    server.snapshot_save(&first);
    let f = first.to_str().unwrap();

    // list: every object, with what the envelope and metadata say.
    let all = json_list(&["list", f, "-o", "json"]);
    assert_eq!(all.len(), 6, "{all:#?}");
    let by_key = |k: &str| {
        all.iter().find(|o| o["key"] == k).unwrap_or_else(|| panic!("{k} not listed")).clone()
    };
    let cm = by_key("/registry/configmaps/namespaceValue/nameValue");
    assert_eq!(cm["object"]["kind"], "ConfigMap");
    assert_eq!(cm["object"]["apiVersion"], "v1");
    assert_eq!(cm["object"]["encoding"], "protobuf");
    assert_eq!(cm["object"]["metadata"]["uid"], "uidValue");
    assert_eq!(cm["object"]["metadata"]["labels"]["labelsKey"], "labelsValue");
    assert_eq!(
        (cm["resource"].as_str(), cm["namespace"].as_str(), cm["name"].as_str()),
        (Some("configmaps"), Some("namespaceValue"), Some("nameValue"))
    );
    assert_eq!(
        by_key("/registry/deployments/namespaceValue/nameValue")["object"]["apiVersion"],
        "apps/v1"
    );
    let w = by_key("/registry/example.com/widgets/team-a/w1");
    assert_eq!(
        (w["resource"].as_str(), w["object"]["encoding"].as_str()),
        (Some("example.com/widgets"), Some("json"))
    );
    assert_eq!(
        by_key("/registry/secrets/team-a/sealed")["object"]["encoding"]["encrypted"],
        "aescbc"
    );

    // Filters.
    let secrets = json_list(&["list", f, "-r", "secrets", "-o", "json"]);
    assert_eq!(secrets.len(), 2);
    assert_eq!(json_list(&["list", f, "-r", "secrets", "-n", "team-a", "-o", "json"]).len(), 1);
    assert_eq!(
        json_list(&["list", f, "-r", "widgets", "-o", "json"]).len(),
        1,
        "a resource without its group"
    );
    let web = json_list(&["list", f, "-l", "app=web", "-o", "json"]);
    assert_eq!(web.len(), 1);
    assert_eq!(web[0]["name"], "w1");
    assert_eq!(
        json_list(&["list", f, "-l", "labelsKey=labelsValue", "--name", "nameValue", "-o", "json"])
            .len(),
        4
    );
    assert_eq!(json_list(&["list", f, "--prefix", "/plain/", "-o", "json"]).len(), 1);
    let (code, table, _) = inspect(&["list", f, "-n", "namespaceValue"]);
    assert_eq!(code, 0);
    assert!(
        table.lines().next().unwrap().starts_with("RESOURCE")
            && table.contains("Deployment")
            && table.contains("2008-01-01T01:01:01Z"),
        "{table}"
    );
    // kubectl's selector forms: `key` (exists), `!key`, `in`; a malformed one is a usage error.
    assert_eq!(json_list(&["list", f, "-l", "app", "-o", "json"]).len(), 1);
    assert_eq!(json_list(&["list", f, "-l", "labelsKey,!app", "-o", "json"]).len(), 4);
    assert_eq!(inspect(&["list", f, "-l", "app in (web"]).0, 2, "an unclosed set");

    // get: the JSON object as stored; the stored bytes of a protobuf one with -o raw.
    let (code, out, _) = inspect(&["get", f, "/registry/example.com/widgets/team-a/w1"]);
    assert_eq!(code, 0);
    // As stored, with the key's mod revision as resourceVersion (as the API server shows it).
    let mut got = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert!(
        got["metadata"]["resourceVersion"].as_str().is_some_and(|r| r.parse::<i64>().is_ok()),
        "{out}"
    );
    got["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    assert_eq!(got, serde_json::from_slice::<serde_json::Value>(cr).unwrap());
    let out = etcdguard()
        .args(["inspect", "get", f, "/registry/pods/namespaceValue/nameValue", "-o", "raw"])
        .output()
        .unwrap();
    assert!(out.stdout == fixture("core.v1.Pod.pb"), "raw bytes differ");
    assert_eq!(inspect(&["get", f, "/registry/pods/namespaceValue/missing"]).0, 3);

    // diff: a deletion, a change, an addition.
    server.delete(b"/registry/secrets/namespaceValue/nameValue");
    server.put(
        b"/registry/example.com/widgets/team-a/w1",
        &cr.to_vec().iter().map(|&b| if b == b'3' { b'5' } else { b }).collect::<Vec<u8>>(),
    );
    server.put(b"/registry/configmaps/team-a/new", &fixture("core.v1.ConfigMap.pb"));
    let second = dir.path().join("second.db");
    server.snapshot_save(&second);
    let changes = json_list(&["diff", f, second.to_str().unwrap(), "-o", "json"]);
    let summary: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            (c["change"].as_str().unwrap().to_string(), c["key"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("added".to_string(), "/registry/configmaps/team-a/new".to_string()),
            ("modified".to_string(), "/registry/example.com/widgets/team-a/w1".to_string()),
            ("deleted".to_string(), "/registry/secrets/namespaceValue/nameValue".to_string()),
        ]
    );
    let (code, out, err) = inspect(&["diff", f, second.to_str().unwrap(), "-r", "secrets"]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("-  secrets"), "{out}");
    assert!(err.contains("0 added, 1 deleted, 0 modified"), "{err}");

    // The same diff between two backups of a repository.
    let repo = dir.path().join("repo");
    let mut ids = Vec::new();
    for snap in [&first, &second] {
        let out = etcdguard()
            .env_remove("ETCDGUARD_REPO")
            .args(["backup", "create", "--repo"])
            .arg(&repo)
            .arg("--from-file")
            .arg(snap)
            .output()
            .unwrap();
        expect_code(&out, 0, "backup create");
        ids.push(text(&out.stdout).split_whitespace().nth(1).unwrap().to_string());
    }
    let from_backups =
        json_list(&["diff", &ids[0], "latest", "--repo", repo.to_str().unwrap(), "-o", "json"]);
    assert_eq!(from_backups, changes, "diffing backups differs from diffing their snapshot files");
    assert_eq!(inspect(&["diff", "nosuchid", "latest", "--repo", repo.to_str().unwrap()]).0, 3);

    // Not a snapshot: a clear error.
    std::fs::write(dir.path().join("junk.db"), vec![7u8; 8192]).unwrap();
    assert_eq!(inspect(&["list", dir.path().join("junk.db").to_str().unwrap()]).0, 7);
}
