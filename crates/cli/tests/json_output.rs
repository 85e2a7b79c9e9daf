//! `-w json` is there on every command that prints a result, and every JSON key is camelCase
//! (etcdctl's and Kubernetes' convention), whichever command printed it.

mod command_tree;

use std::process::Command;

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_etcdguard"))
}

/// Commands that print no result of their own: generated artifacts, daemons, objects in
/// kubectl's formats (`inspect … -o json|yaml`, as kubectl).
const WITHOUT_WRITE_OUT: &[&str] =
    &["completion", "man", "operator", "operator crds", "operator run", "inspect"];

#[test]
fn every_command_that_prints_a_result_has_write_out_json() {
    let mut missing = Vec::new();
    let leaves: Vec<_> = command_tree::all().into_iter().filter(|c| c.leaf).collect();
    assert!(leaves.len() > 30, "found only {} commands", leaves.len());
    for cmd in leaves {
        let name = cmd.name();
        if WITHOUT_WRITE_OUT.iter().any(|w| name == *w || name.starts_with(&format!("{w} "))) {
            continue;
        }
        let help = cmd.help();
        if !help.contains("-w, --write-out") || !help.contains("json") {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "commands without -w json: {missing:?}");
}

/// Every object key in `v` is camelCase (maps whose keys are data are skipped by the caller).
fn assert_camel(v: &Value, what: &str, at: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let ok = k.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && k.chars().all(|c| c.is_ascii_alphanumeric());
                assert!(ok, "{what}: key {at}.{k} is not camelCase");
                // Free-form maps: labels are the user's, buckets are etcd's names.
                if !matches!(k.as_str(), "labels" | "buckets" | "reasons") {
                    assert_camel(child, what, &format!("{at}.{k}"));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| assert_camel(i, what, at)),
        _ => {}
    }
}

fn json_of(args: &[&str]) -> Value {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    assert_camel(&v, &args[..2].join(" "), "$");
    v
}

#[test]
fn json_output_uses_camel_case_keys_everywhere() {
    let etcd = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..20 {
        etcd.put(format!("/registry/configmaps/default/cm{i}").as_bytes(), b"value");
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.db");
    let (snap_s, ep) = (snap.to_str().unwrap(), etcd.endpoint());
    let saved = json_of(&["snapshot", "save", snap_s, "--endpoints", ep, "-w", "json"]);
    assert_eq!(saved["file"], snap_s);
    assert!(saved["status"]["revision"].as_i64().unwrap() >= 21, "{saved}");
    json_of(&["snapshot", "status", snap_s, "-w", "json"]);
    json_of(&["snapshot", "verify", snap_s, "-w", "json"]);
    let data = dir.path().join("restored");
    let restored = json_of(&[
        "snapshot",
        "restore",
        snap_s,
        "--data-dir",
        data.to_str().unwrap(),
        "-w",
        "json",
    ]);
    assert_eq!(restored["members"].as_array().unwrap().len(), 1, "{restored}");

    for cmd in [&["cluster", "members"][..], &["cluster", "health"], &["cluster", "hashkv"]] {
        json_of(&[cmd, &["--endpoints", ep, "-w", "json"]].concat());
    }
    let alarms = json_of(&["cluster", "alarm", "list", "--endpoints", ep, "-w", "json"]);
    assert_eq!(alarms["alarms"], serde_json::json!([]));
    let defrag = json_of(&["cluster", "defrag", "--dry-run", "--endpoints", ep, "-w", "json"]);
    assert_eq!(defrag["order"].as_array().unwrap().len(), 1, "{defrag}");
    json_of(&[
        "cluster",
        "member",
        "add",
        "m2",
        "--peer-urls",
        "http://127.0.0.1:1",
        "--learner",
        "--dry-run",
        "--endpoints",
        ep,
        "-w",
        "json",
    ]);

    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    let created =
        json_of(&["backup", "create", "--from-file", snap_s, "--repo", repo_s, "-w", "json"]);
    let id = created["id"].as_str().expect("an id").to_string();
    for cmd in [
        &["backup", "list"][..],
        &["backup", "show", &id],
        &["backup", "verify", &id],
        &["backup", "prune", "--keep-last", "1", "--dry-run"],
        &["backup", "unlock"],
    ] {
        json_of(&[cmd, &["--repo", repo_s, "-w", "json"]].concat());
    }
    let out = dir.path().join("out.db");
    let r = json_of(&[
        "backup",
        "restore",
        &id,
        "--to-file",
        out.to_str().unwrap(),
        "--repo",
        repo_s,
        "-w",
        "json",
    ]);
    assert_eq!(r["snapshotFile"], out.to_str().unwrap(), "{r}");
    let deleted = json_of(&["backup", "delete", &id, "--force", "--repo", repo_s, "-w", "json"]);
    assert_eq!(deleted["id"], id.as_str());
}
