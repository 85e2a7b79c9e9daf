//! What the agent tests share: the agent process (killed by PID when dropped), HTTP GETs of
//! its endpoint, reading one sample of the metrics text, polling, the repository's list.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use etcdguard_testkit::{EtcdServer, EtcdVersion};

use crate::live_support::{etcdguard, expect_code};

/// The agent process, killed by PID when dropped.
pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    /// Still running (not exited).
    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }
}

/// GET `path` on 127.0.0.1:`port`: (status, body), or None while nothing listens.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let (status, resp) = get_raw(port, path)?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// GET `path`: (status, the whole response with its headers).
pub fn get_raw(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, resp))
}

/// The body of /metrics, empty while nothing answers.
pub fn metrics(port: u16) -> String {
    get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

/// The value of one sample line of the Prometheus text (`name{labels}` exactly).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` every 200 ms until it holds; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_for_or(what, timeout, String::new, &mut check)
}

/// Like [`wait_for`], and a timeout shows `log()` (the agent's own account of what it did).
pub fn wait_for_or(
    what: &str,
    timeout: Duration,
    log: impl Fn() -> String,
    check: &mut dyn FnMut() -> bool,
) {
    poll(what, timeout, Duration::from_millis(200), log, check)
}

/// Polls `check` every `every` (short, to catch a brief state such as a backup running).
pub fn poll(
    what: &str,
    timeout: Duration,
    every: Duration,
    log: impl Fn() -> String,
    check: &mut dyn FnMut() -> bool,
) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}\n{}", log());
        std::thread::sleep(every);
    }
}

/// The ids `backup list` shows, oldest first.
pub fn list_ids(repo: &Path) -> Vec<String> {
    let out = etcdguard()
        .args(["backup", "list", "--repo"])
        .arg(repo)
        .args(["-w", "json"])
        .output()
        .unwrap();
    expect_code(&out, 0, "backup list");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

/// `DIR/snap.db`: a snapshot of a 3.5 server holding one key (the server is stopped).
pub fn one_key_snapshot(dir: &Path) -> PathBuf {
    let mut server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/a", b"1");
    let snap = dir.join("snap.db");
    server.snapshot_save(&snap);
    server.stop();
    snap
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}
