//! The kubelet stand-in shared by the node tests: while a static pod manifest exists, the
//! etcd it describes runs (a real etcd 3.5, its command line with the pod's hostPath mounts
//! applied, as its runAsUser) and an API server manifest gets a TLS stand-in whose /readyz
//! answers 200 once etcd's port is open; when the file goes, the pod is stopped by PID.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdguard_testkit::EtcdVersion;

/// The kubelet stand-in: polls the manifests dir and starts/stops, by manifest file, the
/// etcd pods (a real etcd, by PID) and, when asked, the API server pods (a stand-in: a TLS
/// listener whose /readyz answers 200 once etcd's port is open).
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    starts: Arc<Mutex<u32>>,
    pub apiserver: Arc<ApiStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the API server stand-ins answered on /readyz.
#[derive(Default)]
pub struct ApiStats {
    pub not_ready: std::sync::atomic::AtomicU32,
    pub ready: std::sync::atomic::AtomicU32,
}

enum Running {
    Etcd(Child),
    ApiServer(Arc<AtomicBool>, std::thread::JoinHandle<()>),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Etcd(mut c) => terminate(&mut c),
            Running::ApiServer(stop, t) => {
                stop.store(true, Ordering::SeqCst);
                let _ = t.join();
            }
        }
    }
}

impl Kubelet {
    pub fn start(manifests: PathBuf, log_dir: PathBuf) -> Kubelet {
        Kubelet::start_with(manifests, log_dir, true)
    }

    /// `run_apiserver`: start the API server stand-in for manifests that run kube-apiserver.
    pub fn start_with(manifests: PathBuf, log_dir: PathBuf, run_apiserver: bool) -> Kubelet {
        Kubelet::start_pods(manifests, log_dir, run_apiserver, PodRuntime::default())
    }

    /// As [`Kubelet::start_with`], the etcd pods run as `runtime` says.
    pub fn start_pods(
        manifests: PathBuf,
        log_dir: PathBuf,
        run_apiserver: bool,
        runtime: PodRuntime,
    ) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(Mutex::new(0));
        let apiserver = Arc::new(ApiStats::default());
        let (stop2, starts2, api2) = (stop.clone(), starts.clone(), apiserver.clone());
        let thread = std::thread::spawn(move || {
            let mut pods: std::collections::BTreeMap<PathBuf, Running> = Default::default();
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let present: Vec<PathBuf> = std::fs::read_dir(&manifests)
                    .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                for gone in
                    pods.keys().filter(|p| !present.contains(p)).cloned().collect::<Vec<_>>()
                {
                    pods.remove(&gone).unwrap().stop();
                }
                // An etcd that exited is started again on the next round, as the kubelet does.
                pods.retain(|_, r| match r {
                    Running::Etcd(c) => c.try_wait().unwrap().is_none(),
                    Running::ApiServer(..) => true,
                });
                for m in present {
                    if pods.contains_key(&m) {
                        continue;
                    }
                    let text = std::fs::read_to_string(&m).unwrap_or_default();
                    if text.contains("kube-apiserver") {
                        if run_apiserver {
                            pods.insert(m, start_apiserver(&text, api2.clone()));
                        }
                    } else if text.contains("etcd") && text.contains("data-dir") {
                        let mut n = starts2.lock().unwrap();
                        *n += 1;
                        pods.insert(
                            m.clone(),
                            Running::Etcd(run_pod_in(
                                &m,
                                &log_dir.join(format!("etcd-{n}.log")),
                                &runtime,
                            )),
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for (_, r) in pods {
                r.stop();
            }
        });
        Kubelet { stop, starts, apiserver, thread: Some(thread) }
    }

    pub fn starts(&self) -> u32 {
        *self.starts.lock().unwrap()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn terminate(c: &mut Child) {
    // SAFETY: kill(2) with SIGTERM on the child we started, by its PID.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = c.wait();
}

/// The value of `--flag=VALUE` in a manifest's text.
pub fn flag_in(text: &str, flag: &str) -> Option<String> {
    let at = text.find(&format!("--{flag}="))? + flag.len() + 3;
    Some(
        text[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'' && *c != ',')
            .collect(),
    )
}

/// The API server stand-in: HTTPS on 127.0.0.1:<--secure-port> with a throwaway
/// certificate; /readyz is 503 until etcd (the first of --etcd-servers) accepts connections
/// and a second has passed, then 200.
fn start_apiserver(manifest: &str, stats: Arc<ApiStats>) -> Running {
    use std::io::{Read, Write};
    let port: u16 = flag_in(manifest, "secure-port").unwrap().parse().unwrap();
    let etcd = flag_in(manifest, "etcd-servers").unwrap();
    let etcd_addr = etcd.split_once("://").unwrap().1.to_string();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // The previous stand-in (before a park) may still hold the port for a moment.
    let bind_started = Instant::now();
    let listener = loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && bind_started.elapsed() < Duration::from_secs(20) =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("API server stand-in: bind 127.0.0.1:{port}: {e}"),
        }
    };
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let t = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let Ok((tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            if !req.starts_with(b"GET /readyz ") {
                continue;
            }
            let ready = started.elapsed() > Duration::from_secs(1)
                && std::net::TcpStream::connect(&etcd_addr).is_ok();
            let status = if ready { "200 OK" } else { "503 Service Unavailable" };
            let counter = if ready { &stats.ready } else { &stats.not_ready };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = tls.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .as_bytes(),
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    Running::ApiServer(stop, t)
}

/// Replaces every container path under a mount with its host path, in one pass (a host path
/// may contain a mount path).
fn map_paths(text: &str, mounts: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        match mounts
            .iter()
            .filter(|(m, _)| text[i..].starts_with(m.as_str()))
            .max_by_key(|(m, _)| m.len())
        {
            Some((m, host)) => {
                out.push_str(host);
                i += m.len();
            }
            None => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// How the etcd pods run: which etcd, what else their image has on PATH.
#[derive(Clone, Default)]
pub struct PodRuntime {
    /// The etcd binaries' dir [default: etcd 3.5's].
    pub etcd_dir: Option<PathBuf>,
    /// More of the image's programs, first on PATH (stand-ins for its helper tools).
    pub extra_path: Option<PathBuf>,
    /// `/bin/sh` is bash, as in RHEL-based images (Debian's is dash).
    pub sh_is_bash: bool,
    /// The container's working dir (where etcd puts a `unixs://` socket).
    pub workdir: Option<PathBuf>,
}

/// Runs the etcd container of a static pod manifest as the kubelet would: its command line
/// (a `sh -c` script is run by sh, with etcd 3.5 first on PATH), its literal env values,
/// as its runAsUser, with container paths under a hostPath mount turned into host paths.
pub fn run_pod(manifest: &Path, log: &Path) -> Child {
    run_pod_in(manifest, log, &PodRuntime::default())
}

/// [`run_pod`] with the etcd and PATH of `runtime`.
pub fn run_pod_in(manifest: &Path, log: &Path, runtime: &PodRuntime) -> Child {
    use std::os::unix::process::CommandExt;
    let pod: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let c =
        containers.iter().find(|c| c["name"].as_str() == Some("etcd")).unwrap_or(&containers[0]);
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let vol = pod["spec"]["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap();
            let host = match vol["hostPath"]["path"].as_str() {
                Some(p) => p.to_string(),
                // An emptyDir: a dir of the pod's own beside its logs.
                None => {
                    let d = log.parent().unwrap().join(format!("emptydir-{name}"));
                    std::fs::create_dir_all(&d).unwrap();
                    d.display().to_string()
                }
            };
            (m["mountPath"].as_str().unwrap().trim_end_matches('/').to_string(), host)
        })
        .collect();
    let words = |key: &str| -> Vec<String> {
        c[key]
            .as_sequence()
            .map(|s| s.iter().map(|a| a.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let argv: Vec<String> =
        words("command").into_iter().chain(words("args")).map(|a| map_paths(&a, &mounts)).collect();
    let run_as = |key: &str| {
        c["securityContext"][key].as_u64().or(pod["spec"]["securityContext"][key].as_u64())
    };
    // The etcd release the pod's image names (registry.k8s.io/etcd:3.6.17-0 → 3.6), 3.5
    // otherwise; a runtime's own etcd dir wins.
    let release = c["image"]
        .as_str()
        .and_then(|image| image.rsplit_once(':'))
        .and_then(|(_, tag)| EtcdVersion::from_label(tag))
        .unwrap_or(EtcdVersion::V3_5);
    let mut etcd_bin = match &runtime.etcd_dir {
        Some(d) => d.join("etcd"),
        None => release.binaries().etcd,
    };
    if run_as("runAsUser").is_some() {
        // The installed binary may sit under a dir only root can enter: run a copy.
        use std::os::unix::fs::PermissionsExt;
        let copy = log.parent().unwrap().join("bin/etcd");
        if !copy.exists() {
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(&etcd_bin, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        etcd_bin = copy;
    }
    let mut cmd = if argv[0].ends_with("sh") {
        let shell =
            if runtime.sh_is_bash && argv[0] == "/bin/sh" { "/bin/bash" } else { argv[0].as_str() };
        let mut cmd = Command::new(shell);
        let extra =
            runtime.extra_path.as_ref().map(|p| format!("{}:", p.display())).unwrap_or_default();
        let path = format!(
            "{extra}{}:{}",
            etcd_bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(&argv[1..]).env("PATH", path);
        cmd
    } else {
        assert!(argv[0].ends_with("etcd"), "{argv:?}");
        let mut cmd = Command::new(&etcd_bin);
        cmd.args(&argv[1..]);
        cmd
    };
    for e in c["env"].as_sequence().cloned().unwrap_or_default() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), map_paths(v, &mounts));
        }
    }
    if let Some(uid) = run_as("runAsUser") {
        cmd.gid(run_as("runAsGroup").unwrap_or(uid) as u32).uid(uid as u32);
    }
    if let Some(d) = &runtime.workdir {
        cmd.current_dir(d);
    }
    let log = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap()
}
