use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::{run_checked, EtcdBinaries, EtcdVersion};

/// Asks the kernel for a free TCP port on 127.0.0.1. Another process could take it before
/// etcd binds it, so [`EtcdServerBuilder::start`] retries with fresh ports.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on another loopback address (e.g. `127.0.0.12` for a second "node").
pub fn free_port_on(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind {host}:0: {e}"))
}

/// One key as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Options for a server; `EtcdServer::start(version)` uses the defaults.
pub struct EtcdServerBuilder {
    version: EtcdVersion,
    name: String,
    data_dir: Option<PathBuf>,
    extra_args: Vec<String>,
    quota_bytes: u64,
    client_tls: Option<ClientTls>,
    host: String,
    client_port: Option<u16>,
    peer_port: Option<u16>,
    initial_cluster: Option<String>,
    join_existing: bool,
    wait_healthy: bool,
}

/// TLS for the client URL (`--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--client-cert-auth`). The server then advertises an https client URL; the JSON-gateway
/// helpers (`put`, `get_all`, …) keep working through a second, plain-http listener on
/// loopback, and [`EtcdServer::etcdctl`] passes the client files below.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
    pub client_cert_auth: bool,
    /// Files `etcdctl` uses: (CA, client cert, client key).
    pub etcdctl_files: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl EtcdServerBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Starts on an existing data dir (e.g. one that a restore wrote) instead of a fresh one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serves clients over https (see [`ClientTls`]).
    pub fn client_tls(mut self, tls: ClientTls) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// Listens on this loopback address instead of 127.0.0.1 (one address per simulated node).
    pub fn host(mut self, ip: &str) -> Self {
        self.host = ip.to_string();
        self
    }

    /// Fixed client and peer ports (e.g. to restart a member where its peers expect it).
    pub fn ports(mut self, client: u16, peer: u16) -> Self {
        self.client_port = Some(client);
        self.peer_port = Some(peer);
        self
    }

    /// `--initial-cluster` for a member of a multi-member cluster (default: just this one).
    pub fn initial_cluster(mut self, spec: &str) -> Self {
        self.initial_cluster = Some(spec.to_string());
        self
    }

    /// Joins a running cluster (`--initial-cluster-state existing`) after `member add`.
    pub fn join_existing(mut self) -> Self {
        self.join_existing = true;
        self
    }

    /// Returns once the client port answers `/version` instead of waiting for `/health`:
    /// for a member that cannot be healthy alone (a learner, or the first of a cluster).
    pub fn no_health_wait(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// Backend quota; the default (8 GiB) leaves room for benchmark-sized data.
    pub fn quota_bytes(mut self, bytes: u64) -> Self {
        self.quota_bytes = bytes;
        self
    }

    /// Starts the server with `peer_url` as its listen/advertise peer URL. Useful when a
    /// restored data dir fixes the peer URL.
    pub fn start_with_peer_port(self, peer_port: u16) -> EtcdServer {
        self.try_start(Some(peer_port)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One attempt, no retry: for ports fixed by the caller (a cluster member).
    pub fn try_start_once(self) -> Result<EtcdServer, String> {
        self.try_start(None)
    }

    pub fn start(self) -> EtcdServer {
        let mut last_err = String::new();
        for _ in 0..3 {
            match self.try_start(None) {
                Ok(server) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("etcd did not start after 3 attempts: {last_err}");
    }

    fn try_start(&self, peer_port: Option<u16>) -> Result<EtcdServer, String> {
        let bins = self.version.binaries();
        let temp = tempfile::Builder::new()
            .prefix(&format!("etcd{}-", self.version.label()))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| temp.path().join("data"));
        let host = self.host.as_str();
        let client_port = self.client_port.unwrap_or_else(|| free_port_on(host));
        let peer_port = peer_port.or(self.peer_port).unwrap_or_else(|| free_port_on(host));
        let gateway_url = format!("http://{host}:{client_port}");
        let (client_url, listen_urls) = match &self.client_tls {
            None => (gateway_url.clone(), gateway_url.clone()),
            Some(_) => {
                let https = format!("https://{host}:{}", free_port_on(host));
                (https.clone(), format!("{gateway_url},{https}"))
            }
        };
        let peer_url = format!("http://{host}:{peer_port}");
        let log_path = temp.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bins.etcd);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&listen_urls)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={}", self.name, peer_url)),
            )
            .arg("--quota-backend-bytes")
            .arg(self.quota_bytes.to_string())
            .args(&self.extra_args)
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if self.join_existing {
            cmd.arg("--initial-cluster-state").arg("existing");
        }
        if let Some(tls) = &self.client_tls {
            cmd.arg("--cert-file").arg(&tls.cert_file).arg("--key-file").arg(&tls.key_file);
            cmd.arg("--trusted-ca-file").arg(&tls.trusted_ca_file);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        // Debian's etcd reads defaults from ETCD_* variables; keep the environment clean.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child =
            cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bins.etcd.display()))?;
        let mut server = EtcdServer {
            bins,
            child: Some(child),
            name: self.name.clone(),
            client_url,
            gateway_url,
            client_tls: self.client_tls.clone(),
            peer_url,
            data_dir,
            log_path,
            http: ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build(),
            _temp: temp,
        };
        if self.wait_healthy {
            server.wait_healthy(Duration::from_secs(30))?;
        } else {
            server.wait_listening(Duration::from_secs(30))?;
        }
        Ok(server)
    }
}

/// A running etcd process. Dropping it stops the process (by PID) and removes its temp dir.
pub struct EtcdServer {
    bins: EtcdBinaries,
    child: Option<Child>,
    name: String,
    client_url: String,
    /// Plain-http URL for the JSON gateway (equal to `client_url` without TLS).
    gateway_url: String,
    client_tls: Option<ClientTls>,
    peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    http: ureq::Agent,
    _temp: tempfile::TempDir,
}

impl EtcdServer {
    pub fn start(version: EtcdVersion) -> EtcdServer {
        Self::builder(version).start()
    }

    pub fn builder(version: EtcdVersion) -> EtcdServerBuilder {
        EtcdServerBuilder {
            version,
            name: "default".to_string(),
            data_dir: None,
            extra_args: Vec::new(),
            quota_bytes: 8 << 30,
            client_tls: None,
            host: "127.0.0.1".to_string(),
            client_port: None,
            peer_port: None,
            initial_cluster: None,
            join_existing: false,
            wait_healthy: true,
        }
    }

    pub fn version(&self) -> EtcdVersion {
        self.bins.version
    }
    pub fn binaries(&self) -> &EtcdBinaries {
        &self.bins
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.client_url
    }
    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The server's combined stdout/stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited early with {status}; log:\n{}", self.log()));
                }
            }
            let ok = self
                .http
                .get(&format!("{}/health", self.gateway_url))
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .map(|v| v["health"] == "true")
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if start.elapsed() > limit {
                self.kill();
                return Err(format!("etcd not healthy after {limit:?}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_listening(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited early with {status}; log:\n{}", self.log()));
                }
            }
            let url = format!("{}/version", self.gateway_url);
            if self.http.get(&url).timeout(Duration::from_secs(2)).call().is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                self.kill();
                return Err(format!("etcd not listening after {limit:?}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/health` says true (e.g. after the cluster regained quorum); panics with
    /// the log after `limit`.
    pub fn wait_until_healthy(&mut self, limit: Duration) {
        if let Err(e) = self.wait_healthy(limit) {
            panic!("{}: {e}", self.name);
        }
    }

    fn call(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{}", self.gateway_url, path);
        match self.http.post(&url).send_json(body) {
            Ok(resp) => resp.into_json().expect("etcd gateway returned non-JSON"),
            Err(e) => panic!("etcd gateway call {url} failed: {e}"),
        }
    }

    /// Puts one key; returns the revision of the write.
    pub fn put(&self, key: &[u8], value: &[u8]) -> i64 {
        let v =
            self.call("/v3/kv/put", json!({"key": B64.encode(key), "value": B64.encode(value)}));
        header_revision(&v)
    }

    /// Puts a key attached to a lease.
    pub fn put_with_lease(&self, key: &[u8], value: &[u8], lease: i64) -> i64 {
        let v = self.call(
            "/v3/kv/put",
            json!({"key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string()}),
        );
        header_revision(&v)
    }

    /// Grants a lease with the given TTL; returns its id.
    pub fn grant_lease(&self, ttl_seconds: i64) -> i64 {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl_seconds.to_string()}));
        json_i64(&v["ID"])
    }

    /// Deletes one key; returns the number deleted.
    pub fn delete(&self, key: &[u8]) -> i64 {
        let v = self.call("/v3/kv/deleterange", json!({"key": B64.encode(key)}));
        json_i64(&v["deleted"])
    }

    /// Compacts the key history up to `revision` and waits for it to be physically applied.
    pub fn compact(&self, revision: i64) {
        self.call("/v3/kv/compaction", json!({"revision": revision.to_string(), "physical": true}));
    }

    /// Current revision of the store.
    pub fn revision(&self) -> i64 {
        let v = self.call("/v3/kv/range", json!({"key": B64.encode(b"\0"), "count_only": true}));
        header_revision(&v)
    }

    /// Every live key with its metadata, in key order, read at the current revision.
    pub fn get_all(&self) -> Vec<KeyValue> {
        let mut out = Vec::new();
        let mut start = b"\0".to_vec();
        loop {
            let v = self.call(
                "/v3/kv/range",
                json!({"key": B64.encode(&start), "range_end": B64.encode(b"\0"), "limit": "1000"}),
            );
            let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
            for kv in &kvs {
                out.push(KeyValue {
                    key: b64_field(&kv["key"]),
                    value: b64_field(&kv["value"]),
                    create_revision: json_i64(&kv["create_revision"]),
                    mod_revision: json_i64(&kv["mod_revision"]),
                    version: json_i64(&kv["version"]),
                    lease: json_i64(&kv["lease"]),
                });
            }
            if v["more"] != Value::Bool(true) || kvs.is_empty() {
                return out;
            }
            start = out.last().unwrap().key.clone();
            start.push(0);
        }
    }

    /// `etcdctl` of the same release, pointed at this server.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = self.bins.etcdctl();
        cmd.arg("--endpoints").arg(&self.client_url);
        if let Some((ca, cert, key)) =
            self.client_tls.as_ref().and_then(|t| t.etcdctl_files.as_ref())
        {
            cmd.arg("--cacert").arg(ca).arg("--cert").arg(cert).arg("--key").arg(key);
        }
        cmd
    }

    /// `etcdctl endpoint hashkv --rev REV`: the hash of the keyspace at `rev`.
    pub fn hashkv(&self, rev: i64) -> u64 {
        let out = run_checked(self.etcdctl().args([
            "endpoint",
            "hashkv",
            "--rev",
            &rev.to_string(),
            "-w",
            "json",
        ]));
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl hashkv: not JSON");
        v[0]["HashKV"]["hash"].as_u64().unwrap_or_else(|| panic!("no hash in {v}"))
    }

    /// `etcdctl txn` with no compares and `ops` (one per line, etcdctl's syntax) as the
    /// success branch: several changes in one revision.
    pub fn txn(&self, ops: &str) {
        use std::io::Write;
        let mut child = self
            .etcdctl()
            .arg("txn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl txn");
        // No compares, then the success ops, then no failure ops.
        child.stdin.take().unwrap().write_all(format!("\n{ops}\n\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "etcdctl txn: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Takes a snapshot with the real `etcdctl snapshot save`.
    pub fn snapshot_save(&self, path: &Path) {
        run_checked(self.etcdctl().arg("snapshot").arg("save").arg(path));
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn json_i64(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn header_revision(v: &Value) -> i64 {
    json_i64(&v["header"]["revision"])
}

fn b64_field(v: &Value) -> Vec<u8> {
    v.as_str().map(|s| B64.decode(s).expect("gateway base64")).unwrap_or_default()
}

impl EtcdServer {
    /// Starts the members of a restored cluster at the same time (a member of a multi-member
    /// cluster is only healthy once a quorum is up, so they cannot be started one by one).
    /// Each entry is (member name, restored data dir, the peer port its restored peer URL
    /// `http://127.0.0.1:<port>` uses). Panics, after stopping the others, if any fails.
    pub fn start_members(version: EtcdVersion, members: &[(&str, &Path, u16)]) -> Vec<EtcdServer> {
        let results: Vec<std::thread::Result<Result<EtcdServer, String>>> =
            std::thread::scope(|s| {
                let handles: Vec<_> = members
                    .iter()
                    .map(|(name, dir, port)| {
                        s.spawn(move || {
                            // A fresh client port per attempt: another test may have taken the last one.
                            let mut last = String::new();
                            for _ in 0..3 {
                                match EtcdServer::builder(version)
                                    .name(name)
                                    .data_dir(*dir)
                                    .try_start(Some(*port))
                                {
                                    Ok(server) => return Ok(server),
                                    Err(e) => last = e,
                                }
                            }
                            Err(last)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect()
            });
        let mut servers = Vec::new();
        let mut errors = Vec::new();
        for (r, (name, _, _)) in results.into_iter().zip(members) {
            match r {
                Ok(Ok(server)) => servers.push(server),
                Ok(Err(e)) => errors.push(format!("{name}: {e}")),
                Err(_) => errors.push(format!("{name}: start panicked")),
            }
        }
        if !errors.is_empty() {
            drop(servers);
            panic!("restored cluster did not start:\n{}", errors.join("\n"));
        }
        servers
    }
}
