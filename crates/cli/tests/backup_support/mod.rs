//! Shared by the `backup_*` tests: real snapshots from a real etcd, the etcdguard binary, and a
//! real S3-compatible server (moto) on a free loopback port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcdguard_testkit::{free_port, load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec};

/// Snapshots of one real etcd 3.5 server: `first`, then `second` after ~1% of the keys were
/// rewritten, and `third` after more churn.
pub struct Snapshots {
    pub dir: PathBuf,
    pub first: PathBuf,
    pub second: PathBuf,
    pub third: PathBuf,
}

pub fn snapshots() -> &'static Snapshots {
    static CELL: OnceLock<Snapshots> = OnceLock::new();
    CELL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("backup-snapshots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let server = EtcdServer::start(EtcdVersion::V3_5);
        let spec = LoadSpec { objects: 1500, updates: 200, deletes: 50, ..LoadSpec::default() };
        load_kubernetes_shaped(&server, &spec);
        let first = dir.join("first.db");
        server.snapshot_save(&first);
        for i in 0..15 {
            server.put(
                format!("/registry/pods/default/object-{:06}", i * 97).as_bytes(),
                format!("churn {i} {}", "x".repeat(700)).as_bytes(),
            );
        }
        let second = dir.join("second.db");
        server.snapshot_save(&second);
        for i in 0..15 {
            server.put(
                format!("/registry/configmaps/team-a/object-{:06}", i * 89 + 3).as_bytes(),
                format!("more {i} {}", "y".repeat(900)).as_bytes(),
            );
        }
        let third = dir.join("third.db");
        server.snapshot_save(&third);
        Snapshots { dir, first, second, third }
    })
}

pub fn etcdguard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_etcdguard"));
    c.env_remove("ETCDGUARD_REPO")
        .env_remove("ETCDGUARD_PASSPHRASE")
        .env_remove("ETCDGUARD_PASSPHRASE_FILE")
        .env_remove("ETCDGUARD_NEW_PASSPHRASE")
        .env_remove("ETCDGUARD_NEW_PASSPHRASE_FILE")
        // No test asks a cloud metadata address (S3 without credentials would).
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "etcdguard panicked: {stderr}");
    out
}

/// Runs etcdguard with `args` and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    ok_with(&mut etcdguard(), args)
}

/// Runs etcdguard with `args`, asserts exit `code`, returns stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    fails_with(&mut etcdguard(), args, code)
}

/// As [`ok`], on a prepared command (e.g. with S3 or Azure credentials in its environment).
pub fn ok_with(cmd: &mut Command, args: &[&str]) -> String {
    let out = run(cmd.args(args));
    assert!(
        out.status.success(),
        "etcdguard {args:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// As [`fails`], on a prepared command.
pub fn fails_with(cmd: &mut Command, args: &[&str], code: i32) -> String {
    let out = run(cmd.args(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "etcdguard {args:?}: expected exit {code}, got {}:\n{stderr}",
        out.status
    );
    stderr
}

pub fn created_id(stdout: &str) -> String {
    let id = stdout.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert_eq!(id.len(), 16, "no backup id in {stdout:?}");
    id
}

/// The arguments `backup create --repo REPO --from-file SNAPSHOT EXTRA…`.
pub fn create_args<'a>(repo: &'a str, snapshot: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let snapshot = snapshot.to_str().unwrap();
    [&["backup", "create", "--repo", repo, "--from-file", snapshot], extra].concat()
}

/// The arguments `backup restore ID --repo REPO --to-file FILE EXTRA…`.
pub fn restore_args<'a>(
    id: &'a str,
    repo: &'a str,
    file: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let file = file.to_str().unwrap();
    [&["backup", "restore", id, "--repo", repo, "--to-file", file], extra].concat()
}

/// The arguments `backup restore ID --repo REPO --to-file SNAPSHOT --files-to FILES`.
pub fn restore_with_files<'a>(
    id: &'a str,
    repo: &'a str,
    snapshot: &'a Path,
    files: &'a Path,
) -> Vec<&'a str> {
    restore_args(id, repo, snapshot, &["--files-to", files.to_str().unwrap()])
}

/// `backup create --repo REPO --from-file SNAPSHOT EXTRA…`; asserts success and returns the
/// new backup's id.
pub fn create_from_file(repo: &str, snapshot: &Path, extra: &[&str]) -> String {
    create_from_file_with(&mut etcdguard(), repo, snapshot, extra)
}

/// As [`create_from_file`], on a prepared command (a passphrase or credentials in its
/// environment).
pub fn create_from_file_with(
    cmd: &mut Command,
    repo: &str,
    snapshot: &Path,
    extra: &[&str],
) -> String {
    created_id(&ok_with(cmd, &create_args(repo, snapshot, extra)))
}

/// etcdguard with `ETCDGUARD_PASSPHRASE` set.
pub fn with_passphrase(passphrase: &str) -> Command {
    let mut c = etcdguard();
    c.env("ETCDGUARD_PASSPHRASE", passphrase);
    c
}

/// Runs a prepared command and asserts success; returns stdout.
pub fn ok_cmd(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `backup restore SELECT… --data-dir DATA_DIR` as member `m1` of a new one-member cluster
/// whose peer URL is `peer`; asserts success, returns stdout.
pub fn restore_one_member(
    cmd: &mut Command,
    select: &[&str],
    data_dir: &Path,
    peer: &str,
) -> String {
    let cluster = format!("m1={peer}");
    let member = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        "m1",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        peer,
    ];
    ok_with(cmd, &[&["backup", "restore"], select, &member].concat())
}

/// `backup follow --repo REPO --endpoints ENDPOINT --segment-interval 300ms EXTRA…`, not
/// started.
pub fn follow_cmd(repo: &str, endpoint: &str, extra: &[&str]) -> Command {
    let mut cmd = etcdguard();
    cmd.args(["backup", "follow", "--repo", repo, "--endpoints", endpoint])
        .args(["--segment-interval", "300ms"])
        .args(extra);
    cmd
}

/// Asserts that `dir` holds no hidden (temporary) entries: what a failed write leaves.
pub fn assert_no_temporaries(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Every pack file of a local repository (`packs/<xx>/<id>`), sorted by name.
pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(repo.join("packs")).unwrap() {
        for p in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(p.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Damages a file in place: XORs `mask` into the byte at `at(length)`.
pub fn flip_byte(path: &Path, at: impl Fn(usize) -> usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// Every byte stored under `dir`, for "this must not appear in clear" checks.
pub fn all_bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes_under(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn list_json(repo: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&ok(&[
        "backup", "list", "--repo", repo, "-w", "json",
    ]))
    .unwrap()
    .as_array()
    .unwrap()
    .clone()
}

pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("backup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake control plane's files: PKI with a private key, a manifest, an encryption config.
pub fn control_plane(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let pki = dir.join("pki");
    std::fs::create_dir_all(pki.join("etcd")).unwrap();
    std::fs::write(
        pki.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        pki.join("ca.key"),
        "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(pki.join("etcd/server.key"), "etcd key").unwrap();
    std::fs::set_permissions(pki.join("etcd/server.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    std::os::unix::fs::symlink("ca.crt", pki.join("ca-link.crt")).unwrap();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("etcd.yaml"), "apiVersion: v1\nkind: Pod\n").unwrap();
    let enc = dir.join("encryption-config.yaml");
    std::fs::write(&enc, "kind: EncryptionConfiguration\nsecret: c2VjcmV0\n").unwrap();
    std::fs::set_permissions(&enc, std::fs::Permissions::from_mode(0o600)).unwrap();
    (pki, manifests, enc)
}

/// `backup create`'s flags for [`control_plane`]'s files: `--pki-dir`, `--manifests-dir` and,
/// when given, `--encryption-config`.
pub fn control_plane_flags<'a>(
    pki: &'a Path,
    manifests: &'a Path,
    enc: Option<&'a Path>,
) -> Vec<&'a str> {
    let mut flags =
        vec!["--pki-dir", pki.to_str().unwrap(), "--manifests-dir", manifests.to_str().unwrap()];
    if let Some(enc) = enc {
        flags.extend(["--encryption-config", enc.to_str().unwrap()]);
    }
    flags
}

/// moto's S3 server on a free loopback port, stopped by PID on drop.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_env(&[])
    }

    /// A server that checks credentials against its (empty) IAM: every key is wrong.
    pub fn start_with_auth() -> Moto {
        Moto::start_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
    }

    /// A server that checks credentials (and request signatures) once `setup` requests
    /// went through unchecked (to create IAM users and their keys).
    pub fn start_with_auth_after(setup: u32) -> Moto {
        Moto::start_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", &setup.to_string())])
    }

    fn start_env(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let log = std::fs::File::create(scratch(&format!("moto-{port}")).join("moto.log")).unwrap();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .envs(env.iter().copied())
            .spawn()
            .expect("python3 -m moto.server (install with `bash .ci/install-deps`)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let m = Moto { child: Some(child), port, endpoint };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "moto did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Creates a bucket with a plain S3 PUT (moto accepts any credentials).
    pub fn create_bucket(&self, name: &str) {
        let resp = ureq_put(&format!("{}/{name}", self.endpoint));
        assert!(resp, "creating bucket {name}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of the child we started, by its PID.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP PUT with an empty body over a TcpStream (moto ignores signatures).
fn ureq_put(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200")
}

/// Environment for S3 access to moto.
pub fn s3_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing-secret")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN")
}

/// A TCP proxy in front of a server on loopback that forwards until `budget` bytes went from
/// clients to the server, then cuts every connection and refuses new ones: a server dying in
/// the middle of an upload, as the client sees it.
pub struct CuttingProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    pub fn start(upstream: u16, budget: u64) -> CuttingProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let stop2 = stop.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if sent.load(Ordering::SeqCst) >= budget {
                    drop(client); // dead: refuse
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let sent = sent.clone();
                let stop = stop2.clone();
                // client -> server, counting; cut both ends when over budget.
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut c, mut s) = (client, server);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total >= budget || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Both);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let (mut s, mut c) = (s2, c2);
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An HTTP/1.1 proxy in front of a server on loopback that answers some requests itself with
/// `503 Slow Down`, as an overloaded S3 does, and forwards the others: a flaky server. Requests
/// are numbered across connections from 0; request `n` fails when `n % every == 0`, until
/// `max_failures` have failed. Forwarded requests go over a new upstream connection each.
pub struct FlakyProxy {
    pub port: u16,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyProxy {
    pub fn start(upstream: u16, every: usize, max_failures: usize) -> FlakyProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let (stop2, failed2) = (stop.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let (seen, failed) = (seen.clone(), failed2.clone());
                std::thread::spawn(move || {
                    let _ = serve_flaky(client, upstream, &|_| {
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let fail = n % every == 0
                            && failed
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| {
                                    (f < max_failures).then_some(f + 1)
                                })
                                .is_ok();
                        fail.then_some(SLOW_DOWN)
                    });
                });
            }
        });
        FlakyProxy { port, failed, stop }
    }

    /// How many requests were answered with 503 so far.
    pub fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

const SLOW_DOWN: (&str, &str) = ("503 Slow Down", "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>");
const ACCESS_DENIED: (&str, &str) = ("403 Forbidden", "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>");

/// A proxy in front of an S3 server on loopback that refuses every DELETE with 403
/// AccessDenied and forwards the rest: credentials that may write but not delete, as a
/// backup writer gets on a bucket with Object Lock.
pub struct DenyDeleteProxy {
    pub port: u16,
    denied: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DenyDeleteProxy {
    pub fn start(upstream: u16) -> DenyDeleteProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let denied = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = denied.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve_flaky(client, upstream, &|head| {
                        head.starts_with("DELETE ").then(|| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            ACCESS_DENIED
                        })
                    });
                });
            }
        });
        DenyDeleteProxy { port, denied }
    }

    /// How many deletes were refused so far.
    pub fn denied(&self) -> usize {
        self.denied.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One client connection of a [`FlakyProxy`] or [`DenyDeleteProxy`]: requests in turn, each
/// answered with what `fail_this_one` says for its head (status line, XML body) or forwarded.
fn serve_flaky(
    client: std::net::TcpStream,
    upstream: u16,
    fail_this_one: &dyn Fn(&str) -> Option<(&'static str, &'static str)>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let mut head = Vec::new();
        loop {
            let n = reader.read_until(b'\n', &mut head)?;
            if n == 0 {
                return Ok(()); // the client closed the connection
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(
            !text.contains("transfer-encoding: chunked"),
            "FlakyProxy handles Content-Length bodies only"
        );
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if let Some((status, xml)) = fail_this_one(&String::from_utf8_lossy(&head)) {
            write!(client, "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}", xml.len())?;
            continue;
        }
        // Forward with `Connection: close`, so the upstream response ends at EOF; the client
        // is told the same and reconnects for its next request.
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut forwarded: String = head
            .trim_end_matches("\r\n")
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded.push_str("Connection: close\r\n\r\n");
        let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
        up.write_all(forwarded.as_bytes())?;
        up.write_all(&body)?;
        let mut response = Vec::new();
        up.read_to_end(&mut response)?;
        let split =
            response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 2);
        let (resp_head, rest) = response.split_at(split);
        client.write_all(resp_head)?;
        if !String::from_utf8_lossy(resp_head).to_ascii_lowercase().contains("connection: close") {
            client.write_all(b"Connection: close\r\n")?;
        }
        client.write_all(rest)?;
        return Ok(());
    }
}

/// Azurite's blob service on a free loopback port (`azurite-blob` from npm), stopped by PID on
/// drop. Uses the emulator's well-known account `devstoreaccount1`.
pub struct Azurite {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub fn start() -> Azurite {
        let port = free_port();
        let dir = scratch(&format!("azurite-{port}"));
        let log = std::fs::File::create(dir.join("azurite.log")).unwrap();
        let child = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(&dir)
            .args(["--skipApiVersionCheck", "--silent"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("azurite-blob (install with `bash .ci/install-deps`)");
        let a = Azurite { child: Some(child), port, url: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "azurite did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    /// Creates a container with a SharedKey-signed request (python3's hmac, no SDK).
    pub fn create_container(&self, name: &str) {
        let script = r#"
import base64, hashlib, hmac, sys, urllib.request, email.utils
url, name, key = sys.argv[1], sys.argv[2], sys.argv[3]
date = email.utils.formatdate(usegmt=True)
headers = {"x-ms-date": date, "x-ms-version": "2021-08-06", "Content-Type": "application/octet-stream"}
canon_headers = "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in headers.items() if k.startswith("x-ms-")))
canon_res = f"/devstoreaccount1/devstoreaccount1/{name}\nrestype:container"
# VERB, Content-Encoding, -Language, -Length (empty for 0), -MD5, -Type, Date, 5 conditionals
to_sign = "PUT\n\n\n\n\napplication/octet-stream\n" + "\n" * 6 + canon_headers + canon_res
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
headers["Authorization"] = f"SharedKey devstoreaccount1:{sig}"
req = urllib.request.Request(f"{url}/devstoreaccount1/{name}?restype=container", method="PUT", headers=headers, data=b"")
print(urllib.request.urlopen(req).status)
"#;
        let out = Command::new("python3")
            .args(["-c", script, &self.url, name, AZURITE_KEY])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating container {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of the child we started, by its PID.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// Environment for the Azure emulator.
pub fn azure_env<'c>(cmd: &'c mut Command, azurite: &Azurite) -> &'c mut Command {
    cmd.env("AZURE_STORAGE_USE_EMULATOR", "true").env("AZURITE_BLOB_STORAGE_URL", &azurite.url)
}

/// GETs a plain-http URL (a presigned one) and returns the body; asserts 200.
pub fn http_get(url: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let body = resp[split + 4..].to_vec();
    assert!(
        head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200"),
        "{head}\n{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    if !head.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let n =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
        rest = &rest[eol + 2 + n + 2..];
    }
}

/// The live cluster's own history after `from` up to `last`: (revision, put?, key).
pub fn live_history(server: &EtcdServer, from: i64, last: i64) -> Vec<(i64, bool, String)> {
    let flags = etcdguard_client::ConnectFlags {
        endpoints: Some(vec![server.endpoint().to_string()]),
        ..Default::default()
    };
    let (cfg, _) = etcdguard_client::ConnectConfig::resolve_with(flags, |_| None).unwrap();
    let session = etcdguard_client::Session::new(cfg).unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    session
        .follow(server.endpoint(), from + 1, Duration::from_millis(200), &mut |u| {
            match u {
                etcdguard_client::WatchUpdate::Changes { changes, .. } => {
                    // Idle means no change for a while, not a slow replay of a long history.
                    idle = 0;
                    out.extend(changes.into_iter().map(|c| {
                        (c.mod_revision, c.put, String::from_utf8_lossy(&c.key).into_owned())
                    }))
                }
                _ => idle += 1,
            }
            if out.last().is_some_and(|c: &(i64, bool, String)| c.0 >= last) || idle > 50 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
        .unwrap();
    out.retain(|c| c.0 <= last);
    out
}
