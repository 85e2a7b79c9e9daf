//! etcdctl as the recovery tests use it: short timeouts against members without quorum,
//! JSON answers, bulk loads, a member's whole keyspace, waits.
#![allow(dead_code)]

use std::process::Output;
use std::time::{Duration, Instant};

use etcdguard_testkit::EtcdVersion;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    EtcdVersion::V3_5
        .binaries()
        .etcdctl()
        .args(["--endpoints", endpoints, "--command-timeout", "3s", "--dial-timeout", "1s"])
        .args(args)
        .output()
        .unwrap()
}

pub fn json(endpoints: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    let out = etcdctl(endpoints, &a);
    assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn healthy(endpoint: &str) -> bool {
    etcdctl(endpoint, &["endpoint", "health"]).status.success()
}

/// How much longer than at the suite's size waits may take: the benches load up to 1 GiB
/// (`ETCDGUARD_RECOVERY_MB`), and starting a member or catching a learner up grows with it.
pub fn data_slack() -> u32 {
    let mb: u32 =
        std::env::var("ETCDGUARD_RECOVERY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    1 + mb / 128
}

/// The `--wait-timeout` of the recovery commands: 90 s at the suite's size.
pub fn wait_timeout() -> String {
    format!("{}s", 90 * data_slack())
}

pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let limit = limit * data_slack();
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `keys` Kubernetes-shaped keys of `value_bytes` each, 100 puts per transaction and
/// four transactions in flight (a 1 GiB load one etcdctl at a time takes ~20 minutes here).
pub fn load(endpoint: &str, keys: usize, value_bytes: usize) {
    load_under(endpoint, "/registry/configmaps", keys, value_bytes)
}

/// [`load`] under `prefix` (`/registry/<resource>`; a resource no API server serves keeps a
/// live API server from reading the fill, which is not a Kubernetes object).
pub fn load_under(endpoint: &str, prefix: &str, keys: usize, value_bytes: usize) {
    use std::io::Write;
    let txn = |first: usize| {
        let mut script = String::from("\n");
        for k in first..(first + 100).min(keys) {
            let fill: String =
                std::iter::repeat_n(char::from(b'a' + (k % 26) as u8), value_bytes).collect();
            script.push_str(&format!("put {prefix}/ns{}/cm{k} {fill}\n", k % 7));
        }
        script.push_str("\n\n");
        let mut child = EtcdVersion::V3_5
            .binaries()
            .etcdctl()
            .args(["--endpoints", endpoint, "--command-timeout", "60s", "txn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child
    };
    let firsts: Vec<usize> = (0..keys).step_by(100).collect();
    for batch in firsts.chunks(4) {
        let children: Vec<_> = batch.iter().map(|&i| (i, txn(i))).collect();
        for (i, mut child) in children {
            assert!(child.wait().unwrap().success(), "txn of keys {i}..");
        }
    }
}

/// Every key and value under `/` as one member serves them (serializable: its own copy),
/// read in pages: etcdctl holds a whole answer as JSON, ~11 GiB for a 1 GiB keyspace.
pub fn dump(endpoint: &str) -> Vec<(String, String)> {
    const PAGE: usize = 10_000;
    let mut all: Vec<(String, String)> = Vec::new();
    let mut from = "/".to_string();
    loop {
        // [from, "0") is every key from `from` on that starts with "/"; a later
        // --command-timeout wins over etcdctl()'s 3 s.
        let limit = PAGE.to_string();
        let args =
            ["--command-timeout", "120s", "get", &from, "0", "--consistency=s", "--limit", &limit];
        let args = [&args[..], &["-w", "json"]].concat();
        // A member that has just joined may not answer yet (seen at 1 GiB): a few tries.
        let mut tries = 0;
        let v: serde_json::Value = loop {
            let out = etcdctl(endpoint, &args);
            if out.status.success() {
                break serde_json::from_slice(&out.stdout).unwrap();
            }
            tries += 1;
            assert!(tries < 5, "etcdctl {args:?}: {}", text(&out.stderr));
            std::thread::sleep(Duration::from_secs(2));
        };
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        let skip = usize::from(!all.is_empty()); // a page starts at the last key of the one before
        let n = kvs.len();
        for kv in kvs.into_iter().skip(skip) {
            let key = kv["key"].as_str().unwrap().to_string();
            all.push((key, kv["value"].as_str().unwrap_or("").to_string()));
        }
        if n < PAGE {
            return all;
        }
        from = all.last().map(|(k, _)| decode(k)).unwrap();
    }
}

/// A key as etcdctl's JSON has it (base64) back to text.
fn decode(b64: &str) -> String {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

pub fn cluster_id(endpoint: &str) -> u64 {
    json(endpoint, &["endpoint", "status"])[0]["Status"]["header"]["cluster_id"].as_u64().unwrap()
}
