//! `etcdguard inspect … --encryption-config` on a snapshot of a real etcd 3.5 holding values
//! encrypted at rest by independent implementations (PyPI `cryptography` and `PyNaCl`, via
//! crates/kube/tests/encryption_vectors/make_vectors.py) in the API server's layouts.

mod live_support;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = etcdguard().arg("inspect").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn encrypted_values_round_trip_through_etcd() {
    let kube_tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/tests");
    let dir = tempfile::tempdir().unwrap();
    let vectors = dir.path().join("vectors");
    let run = Command::new("python3")
        .arg(kube_tests.join("encryption_vectors/make_vectors.py"))
        .arg(kube_tests.join("fixtures"))
        .arg(&vectors)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "make_vectors.py (needs cryptography and PyNaCl: bash .ci/install-deps): {}",
        text(&run.stderr)
    );
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(vectors.join("vectors.json")).unwrap()).unwrap();
    let case = |name: &str| -> (String, Vec<u8>) {
        let c =
            cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}"));
        (
            c["etcdKey"].as_str().unwrap().to_string(),
            base64::engine::general_purpose::STANDARD.decode(c["value"].as_str().unwrap()).unwrap(),
        )
    };
    let config = vectors.join("config.yaml");
    let config = config.to_str().unwrap();

    let server = EtcdServer::start(EtcdVersion::V3_5);
    // Each value where it was encrypted for (aesgcm binds it to that key).
    let (gcm_key, gcm) = case("aesgcm gcm-key secret");
    server.put(gcm_key.as_bytes(), &gcm);
    let (cbc_key, cbc) = case("aescbc cbc-key configmap");
    server.put(cbc_key.as_bytes(), &cbc);
    let (_, boxed) = case("secretbox box-key secret");
    server.put(b"/registry/secrets/team-a/boxed", &boxed);
    // Failures: a value moved under another key (aesgcm AAD), a wrong key, KMS.
    let (_, moved) = case("aesgcm gcm:128 secret");
    server.put(b"/registry/secrets/team-a/moved", &moved);
    let (_, wrong) = case("secretbox box-key secret wrong key");
    server.put(b"/registry/secrets/team-a/wrong", &wrong);
    let (_, kms) = case("kms v2");
    server.put(b"/registry/secrets/team-a/kms", &kms);
    let snapshot = dir.path().join("s.db");
    server.snapshot_save(&snapshot);
    let s = snapshot.to_str().unwrap();

    // Without keys: encrypted, with provider and key name; nothing fails.
    let (code, out, err) = inspect(&["list", s, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let by_key = |list: &[serde_json::Value], k: &str| {
        list.iter().find(|o| o["key"] == k).unwrap_or_else(|| panic!("{k} not listed")).clone()
    };
    let o = by_key(&all, &gcm_key);
    assert_eq!(o["object"]["encoding"]["encrypted"], "aesgcm");
    assert_eq!(
        (
            o["object"]["encryption"]["provider"].as_str(),
            o["object"]["encryption"]["keyName"].as_str()
        ),
        (Some("aesgcm"), Some("gcm-key"))
    );
    assert_eq!(o["object"]["encryption"]["decrypted"], false);
    assert_eq!(
        by_key(&all, "/registry/secrets/team-a/kms")["object"]["encryption"]["kmsKeyId"],
        "key-id-2026"
    );
    let (code, table, _) = inspect(&["list", s]);
    assert_eq!(code, 0);
    assert!(table.contains("encrypted (secretbox:box-key)"), "{table}");

    // With the config: decrypted and decoded; the three failures listed, each with its reason.
    let (code, out, err) = inspect(&["list", s, "-o", "json", "--encryption-config", config]);
    assert_eq!(code, 1, "decryption failures make the exit code non-zero: {err}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 6, "the listing goes on past failures");
    let o = by_key(&all, &gcm_key);
    assert_eq!(
        (o["object"]["kind"].as_str(), o["object"]["encoding"].as_str()),
        (Some("Secret"), Some("protobuf"))
    );
    assert_eq!(o["object"]["encryption"]["decrypted"], true);
    assert_eq!(o["object"]["metadata"]["uid"], "uidValue");
    assert_eq!(by_key(&all, &cbc_key)["object"]["kind"], "ConfigMap");
    assert_eq!(by_key(&all, "/registry/secrets/team-a/boxed")["object"]["kind"], "Secret");
    let moved_err = by_key(&all, "/registry/secrets/team-a/moved")["object"]["encryption"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(moved_err.contains("gcm:128") && moved_err.contains("another etcd key"), "{moved_err}");
    assert!(err.contains("not decrypted: /registry/secrets/team-a/wrong: secretbox key \"box-key\" does not decrypt"), "{err}");
    assert!(
        err.contains("not decrypted: /registry/secrets/team-a/kms:")
            && err.contains("needs the KMS plugin"),
        "{err}"
    );
    assert!(err.contains("3 object(s) could not be decrypted"), "{err}");
    // Label selectors now see the decrypted metadata.
    let (code, out, _) = inspect(&[
        "list",
        s,
        "-o",
        "json",
        "--encryption-config",
        config,
        "-l",
        "labelsKey=labelsValue",
        "-r",
        "configmaps",
    ]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap().len(), 1);

    // get: the decrypted object; -o raw the plaintext, byte for byte the fixture.
    let (code, out, err) = inspect(&["get", s, &gcm_key, "--encryption-config", config]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The object itself, as kubectl prints it (no wrapper of inspect's own).
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["name"].as_str()),
        (Some("Secret"), Some("nameValue"))
    );
    let raw = etcdguard()
        .args(["inspect", "get", s, &cbc_key, "-o", "raw", "--encryption-config", config])
        .output()
        .unwrap();
    assert!(
        raw.stdout == std::fs::read(kube_tests.join("fixtures/core.v1.ConfigMap.pb")).unwrap(),
        "decrypted bytes differ"
    );
    let raw = etcdguard().args(["inspect", "get", s, &cbc_key, "-o", "raw"]).output().unwrap();
    assert!(raw.stdout == cbc, "without keys, -o raw writes the stored bytes");
    let (code, _, err) =
        inspect(&["get", s, "/registry/secrets/team-a/wrong", "--encryption-config", config]);
    assert_eq!(code, 1);
    assert!(err.contains("does not decrypt") && err.contains("box-key"), "{err}");

    // diff: modified objects are decrypted on both sides.
    server.put(b"/registry/secrets/team-a/boxed", &case("secretbox box-key configmap").1);
    let second = dir.path().join("t.db");
    server.snapshot_save(&second);
    let (code, out, err) = inspect(&[
        "diff",
        s,
        second.to_str().unwrap(),
        "-o",
        "json",
        "--encryption-config",
        config,
        "--name",
        "boxed",
    ]);
    assert_eq!(code, 0, "{err}");
    let changes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0]["change"].as_str(), changes[0]["object"]["kind"].as_str()),
        (Some("modified"), Some("ConfigMap"))
    );

    // A bad config: a clear error naming the file, before the snapshot is read.
    std::fs::write(dir.path().join("bad.yaml"), "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: c2hvcnQ=}]}\n").unwrap();
    let (code, _, err) =
        inspect(&["list", s, "--encryption-config", dir.path().join("bad.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.yaml") && err.contains("5 bytes") && !err.contains("c2hvcnQ"),
        "{err}"
    );
    assert_eq!(inspect(&["list", s, "--encryption-config", "/nonexistent/enc.yaml"]).0, 3);
}
