//! Kubernetes for the tests: a real kube-apiserver over a real etcd ([`ApiServer`]), and the
//! `generated.proto` files of a k8s.io/api release from the Go module cache
//! ([`k8s_api_module`]).
//!
//! The API server and kubectl are the ones `.ci/install-go-peers` builds into
//! `/usr/local/lib/kubernetes` (or `ETCDGUARD_KUBE_DIR`). Everything is on 127.0.0.1: the
//! server listens there on a free port, talks only to the etcd given, and is stopped by PID
//! when the handle is dropped. Its PKI is made at start (rcgen): a CA, a serving certificate
//! for 127.0.0.1, an admin client certificate (group system:masters) that kubectl uses, and
//! the service-account signing key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Where kube-apiserver and kubectl are: `ETCDGUARD_KUBE_DIR`, else /usr/local/lib/kubernetes.
pub fn kube_dir() -> PathBuf {
    std::env::var_os("ETCDGUARD_KUBE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/kubernetes"))
}

/// Panics with the install hint when the binaries are missing (a test that skips cannot fail).
fn kube_binary(name: &str) -> PathBuf {
    let p = kube_dir().join(name);
    assert!(p.is_file(), "{} not found; run `bash .ci/install-go-peers` (builds kube-apiserver and kubectl from their Go modules) or set ETCDGUARD_KUBE_DIR", p.display());
    p
}

/// A running kube-apiserver on 127.0.0.1.
pub struct ApiServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    etcd_endpoint: String,
    port: u16,
    /// How long the last start took until /readyz answered ok.
    pub startup: Duration,
}

/// Writes `text` to `path` readable by the owner only (keys are among them).
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

impl ApiServer {
    /// Starts kube-apiserver over the etcd at `etcd_endpoint` (`http://127.0.0.1:PORT`),
    /// encrypting at rest with `encryption_config` (an EncryptionConfiguration's YAML) when
    /// given, and waits until /readyz says ok.
    pub fn start(etcd_endpoint: &str, encryption_config: Option<&str>) -> ApiServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, "etcdguard test kubernetes CA");
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf =
            |cn: &str, org: Option<&str>, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
                let key = KeyPair::generate().unwrap();
                let mut p = CertificateParams::new(sans).unwrap();
                p.distinguished_name.push(DnType::CommonName, cn);
                if let Some(o) = org {
                    p.distinguished_name.push(DnType::OrganizationName, o);
                }
                p.key_usages =
                    vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
                p.extended_key_usages = vec![usage];
                let cert = p.signed_by(&key, &ca).unwrap();
                (cert.pem(), key.serialize_pem())
            };
        let (serving_cert, serving_key) = leaf(
            "kube-apiserver",
            None,
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (admin_cert, admin_key) = leaf(
            "etcdguard-test-admin",
            Some("system:masters"),
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let sa_key = KeyPair::generate().unwrap();
        std::fs::write(d.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(d.join("apiserver.crt"), serving_cert).unwrap();
        write_private(&d.join("apiserver.key"), &serving_key);
        std::fs::write(d.join("admin.crt"), &admin_cert).unwrap();
        write_private(&d.join("admin.key"), &admin_key);
        write_private(&d.join("sa.key"), &sa_key.serialize_pem());
        std::fs::write(d.join("sa.pub"), sa_key.public_key_pem()).unwrap();
        if let Some(config) = encryption_config {
            write_private(&d.join("encryption.yaml"), config);
        }
        let port = crate::free_port();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\n\
             users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
            ca = d.join("ca.crt").display(),
            cert = d.join("admin.crt").display(),
            key = d.join("admin.key").display(),
        );
        write_private(&d.join("kubeconfig"), &kubeconfig);
        let mut server = ApiServer {
            child: None,
            dir,
            etcd_endpoint: etcd_endpoint.to_string(),
            port,
            startup: Duration::ZERO,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let path = |name: &str| d.join(name).display().to_string();
        let mut cmd = Command::new(kube_binary("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers={}", self.etcd_endpoint),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The reconciler refuses a loopback address for the `kubernetes` service's endpoints.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={}", self.port),
            format!("--cert-dir={}", path("certs")),
            format!("--tls-cert-file={}", path("apiserver.crt")),
            format!("--tls-private-key-file={}", path("apiserver.key")),
            format!("--client-ca-file={}", path("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // Every revision stays in etcd, so `inspect history` sees all of them.
            "--etcd-compaction-interval=0".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        if d.join("encryption.yaml").is_file() {
            cmd.arg(format!("--encryption-provider-config={}", path("encryption.yaml")));
        }
        let log = std::fs::File::create(d.join("apiserver.log")).unwrap();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let started = Instant::now();
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting kube-apiserver: {e}")));
        let deadline = started + Duration::from_secs(180);
        loop {
            let out = self.kubectl().args(["get", "--raw", "/readyz"]).output().unwrap();
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "kube-apiserver exited with {status} before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!("kube-apiserver not ready after 180 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.startup = started.elapsed();
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The EncryptionConfiguration file the server was started with.
    pub fn encryption_config_path(&self) -> PathBuf {
        self.dir.path().join("encryption.yaml")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The admin kubeconfig (for clients other than kubectl, e.g. `KUBECONFIG=…`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// kubectl with this server's kubeconfig (admin).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(kube_binary("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.dir.path().join("kubeconfig").display()));
        cmd
    }

    /// `kubectl get --raw PATH` as JSON; panics with kubectl's message when it fails.
    pub fn get_raw(&self, path: &str) -> serde_json::Value {
        let out = crate::run_checked(self.kubectl().args(["get", "--raw", path]));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Restarts the server with a new EncryptionConfiguration (a key rotation step), over the
    /// same etcd, PKI and port.
    pub fn restart_with_encryption(&mut self, encryption_config: &str) {
        self.stop();
        write_private(&self.encryption_config_path(), encryption_config);
        self.launch();
    }

    /// Stops the server (if it runs) and starts it again over the same etcd, PKI and port, as
    /// a kubelet restarts a static pod; returns once /readyz says ok (`startup` is its time).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stops the server by its PID (SIGTERM, then SIGKILL after 20 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The folder of Go module `module@version` (`latest` for the newest release) in the Go
/// module cache, downloaded with `go mod download` if it is not there yet; `None` only when
/// no `go` is on PATH (the caller says so and skips). A failing download panics.
pub fn go_module_dir(module: &str, version: &str) -> Option<PathBuf> {
    let go = which("go")?;
    let scratch = tempfile::tempdir().expect("temp dir");
    // Outside any module, with the machine's Go only: a plain download into the cache.
    let out = Command::new(go)
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .current_dir(scratch.path())
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("running go mod download");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {module}@{version}: {e}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && info.get("Error").is_none(),
        "go mod download {module}@{version} failed: {info}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(info["Dir"].as_str().expect("go mod download -json prints Dir"));
    assert!(dir.join("go.mod").is_file(), "{} has no go.mod", dir.display());
    Some(dir)
}

/// The newest k8s.io/api release and the k8s.io/apimachinery it requires (both in the module
/// cache, side by side, as `--schema-dir` expects), and the release's version.
pub fn k8s_api_module() -> Option<(PathBuf, String)> {
    let api = go_module_dir("k8s.io/api", "latest")?;
    let go_mod = std::fs::read_to_string(api.join("go.mod")).expect("reading k8s.io/api's go.mod");
    let machinery = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/apimachinery "))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .expect("k8s.io/api requires k8s.io/apimachinery");
    go_module_dir("k8s.io/apimachinery", &machinery)?;
    let version = api
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('@'))
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    Some((api, version))
}

/// `name` on PATH, or where the Go tarball installs it.
fn which(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/local/go/bin").join(name)).filter(|p| p.is_file()))
}
