//! Three simulated OpenShift control-plane nodes on one machine, each with the etcd-pod.yaml
//! cluster-etcd-operator would install there, rendered from tests/data/openshift-etcd-releases.yaml
//! (what differs per release) and these inputs: node names master-0..2, one loopback address
//! per node (127.0.<subnet>.1-3), revision 3, a release image by digest.
//!
//! Where the rendering departs from the operator's, because three nodes share one machine:
//! - host paths live under each node's root dir (the hostPath volumes say so);
//! - the listen address is the node's own address instead of 0.0.0.0, so each node's etcd
//!   can bind the template's fixed ports 2379/2380/9978 (and 2381);
//! - the image's helpers are stand-ins on the pod's PATH: `ss` sees only this node's
//!   listeners (another node's, or a stopped member's TIME-WAIT sockets, would hold the
//!   start), and `discover-etcd-initial-cluster` does what the operator documents for the
//!   cases here: a member with data starts from it (prints nothing), an added, unstarted
//!   member prints the started members plus itself, anything else fails (the kubelet
//!   starts the container again);
//! - /bin/sh is bash, as in the RHEL-based image.
//!
//! etcd, etcdctl and etcdutl are real (3.5, or 3.6 for releases that need it); TLS is real
//! (a CA from rcgen, per-node serving and peer certificates under static-pod-certs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde::Deserialize;

use crate::kubelet_support::{Kubelet, PodRuntime};

/// One release group of the data file.
#[derive(Deserialize, Clone, Debug)]
pub struct Release {
    pub release: String,
    pub same: Vec<String>,
    pub etcd: String,
    pub template: String,
    pub server_ca: String,
    pub peer_ca: String,
    pub corrupt_check: Vec<String>,
    pub unix_socket: bool,
    pub client_http: bool,
    pub ports: bool,
    pub more_volumes: bool,
    pub read_only_root: bool,
    pub env: BTreeMap<String, String>,
    pub sidecars: Vec<String>,
}

#[derive(Deserialize)]
struct Data {
    releases: Vec<Release>,
}

pub fn releases() -> Vec<Release> {
    let data: Data =
        serde_norway::from_str(include_str!("../data/openshift-etcd-releases.yaml")).unwrap();
    data.releases
}

pub fn release(name: &str) -> Release {
    releases()
        .into_iter()
        .find(|r| r.release == name)
        .unwrap_or_else(|| panic!("no release {name} in the data file"))
}

/// The etcd binaries' dir for a release.
pub fn etcd_dir(rel: &Release) -> PathBuf {
    match rel.etcd.as_str() {
        "3.5" => EtcdVersion::V3_5.binaries().etcd.parent().unwrap().to_path_buf(),
        "3.6" => {
            let dir = std::env::var("ETCDGUARD_ETCD36_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("/usr/local/lib/etcd-3.6"));
            assert!(dir.join("etcd").is_file(), "etcd 3.6 not found in {} (set ETCDGUARD_ETCD36_DIR; scripts/install-go-peers builds it)", dir.display());
            dir
        }
        other => panic!("no etcd {other} for the tests"),
    }
}

/// A node as the renderer sees it.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub ip: String,
}

impl NodeSpec {
    /// The node name as the operator puts it into env var names.
    pub fn safe(&self) -> String {
        self.name.replace(['-', '.'], "_")
    }
}

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Every env entry of the etcd containers (sorted by name, as the operator sorts them).
pub fn env_entries(
    rel: &Release,
    nodes: &[NodeSpec],
    me: &NodeSpec,
    image: &str,
) -> BTreeMap<String, String> {
    let mut env = rel.env.clone();
    let mut endpoints: Vec<String> =
        nodes.iter().map(|n| format!("https://{}:2379", n.ip)).collect();
    endpoints.sort();
    let certs = "/etc/kubernetes/static-pod-certs";
    env.insert("ALL_ETCD_ENDPOINTS".into(), endpoints.join(","));
    env.insert("ETCDCTL_ENDPOINTS".into(), endpoints.join(","));
    env.insert("ETCDCTL_CACERT".into(), format!("{certs}/configmaps/{}", rel.server_ca));
    env.insert(
        "ETCDCTL_CERT".into(),
        format!("{certs}/secrets/etcd-all-certs/etcd-peer-{}.crt", me.name),
    );
    env.insert(
        "ETCDCTL_KEY".into(),
        format!("{certs}/secrets/etcd-all-certs/etcd-peer-{}.key", me.name),
    );
    env.insert("ETCD_IMAGE".into(), image.into());
    for n in nodes {
        env.insert(format!("NODE_{}_ETCD_NAME", n.safe()), n.name.clone());
        env.insert(format!("NODE_{}_ETCD_URL_HOST", n.safe()), n.ip.clone());
        env.insert(format!("NODE_{}_IP", n.safe()), n.ip.clone());
    }
    env
}

/// The `env:` block of a container at `indent` spaces, in the release's template style.
fn env_block(
    rel: &Release,
    env: &BTreeMap<String, String>,
    indent: usize,
    revision: Option<u32>,
) -> String {
    let (item, value) = match rel.template.as_str() {
        "replacer" => (" ".repeat(indent + 2), " ".repeat(indent + 4)),
        _ => (" ".repeat(indent), " ".repeat(indent + 2)),
    };
    let mut out = format!("{}env:\n", " ".repeat(indent));
    let mut all: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(r) = revision {
        all.push(("ETCD_STATIC_POD_VERSION".into(), r.to_string()));
    }
    for (k, v) in all {
        out.push_str(&format!("{item}- name: {}\n{value}value: {}\n", quoted(&k), quoted(&v)));
    }
    out
}

/// etcd-pod.yaml for node `me` of `nodes`, host paths under `host_root`, listening on `listen`.
pub fn render(
    rel: &Release,
    nodes: &[NodeSpec],
    me: &NodeSpec,
    listen: &str,
    host_root: &Path,
) -> String {
    let image = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:4f1e7c0d2b9a8e6f5d3c1b0a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";
    let operator_image = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let revision = 3;
    let env = env_entries(rel, nodes, me, image);
    let node = &me.name;
    let safe = me.safe();
    let certs = "/etc/kubernetes/static-pod-certs";
    let mut wait_ports = vec!["2379", "2380"];
    if rel.client_http {
        wait_ports.push("2381");
    }
    wait_ports.push("9978");
    let ss_filter =
        wait_ports.iter().map(|p| format!("sport = {p}")).collect::<Vec<_>>().join(" or ");
    let (last_port, first_ports) = wait_ports.split_last().unwrap();
    let wait_words = format!("{} and {last_port}", first_ports.join(", "));
    let mut flags: Vec<String> = vec!["--logger=zap".into(), "--log-level=info".into()];
    flags.extend(rel.corrupt_check.iter().cloned());
    flags.extend([
        format!("--initial-advertise-peer-urls=https://${{NODE_{safe}_IP}}:2380"),
        format!("--cert-file={certs}/secrets/etcd-all-certs/etcd-serving-{node}.crt"),
        format!("--key-file={certs}/secrets/etcd-all-certs/etcd-serving-{node}.key"),
        format!("--trusted-ca-file={certs}/configmaps/{}", rel.server_ca),
        "--client-cert-auth=true".into(),
        format!("--peer-cert-file={certs}/secrets/etcd-all-certs/etcd-peer-{node}.crt"),
        format!("--peer-key-file={certs}/secrets/etcd-all-certs/etcd-peer-{node}.key"),
        format!("--peer-trusted-ca-file={certs}/configmaps/{}", rel.peer_ca),
        "--peer-client-cert-auth=true".into(),
        format!("--advertise-client-urls=https://${{NODE_{safe}_IP}}:2379"),
    ]);
    let unix =
        if rel.unix_socket { format!(",unixs://${{NODE_{safe}_IP}}:0") } else { String::new() };
    flags.push(format!("--listen-client-urls=https://{listen}:2379{unix}"));
    if rel.client_http {
        flags.push(format!("--listen-client-http-urls=https://{listen}:2381"));
    }
    flags.push(format!("--listen-peer-urls=https://{listen}:2380"));
    flags.push("--metrics=extensive".into());
    flags.push(format!("--listen-metrics-urls=https://{listen}:9978 ||  mv /etc/kubernetes/etcd-backup-dir/etcd-member.yaml /etc/kubernetes/manifests"));
    let exec = flags.iter().map(|f| format!("          {f}")).collect::<Vec<_>>().join(" \\\n");
    let script = format!(
        r#"        #!/bin/sh
        set -euo pipefail

        etcdctl member list || true

        # the initial cluster comes from the running members when the pod starts
        ETCD_INITIAL_CLUSTER=$(discover-etcd-initial-cluster \
          --cacert={certs}/configmaps/{server_ca} \
          --cert={certs}/secrets/etcd-all-certs/etcd-peer-{node}.crt \
          --key={certs}/secrets/etcd-all-certs/etcd-peer-{node}.key \
          --endpoints=${{ALL_ETCD_ENDPOINTS}} \
          --data-dir=/var/lib/etcd \
          --target-peer-url-host=${{NODE_{safe}_ETCD_URL_HOST}} \
          --target-name={node})
        export ETCD_INITIAL_CLUSTER

        echo -n "Waiting for ports {ports} to be released."
        time while [ -n "$(ss -Htan '( {ss_filter} )')" ]; do
          echo -n "."
          sleep 1
        done

        export ETCD_NAME=${{NODE_{safe}_ETCD_NAME}}
        env | grep ETCD | grep -v NODE

        set -x
        exec nice -n -19 ionice -c2 -n0 etcd \
{exec}
"#,
        server_ca = rel.server_ca,
        ports = wait_words,
    );
    let host = |p: &str| host_root.join(p.trim_start_matches('/')).display().to_string();
    let ports = match (rel.ports, rel.client_http) {
        (false, _) => String::new(),
        (true, http) => format!(
            "    ports:\n    - containerPort: 2379\n      name: etcd\n      protocol: TCP\n{}    - containerPort: 2380\n      name: etcd-peer\n      protocol: TCP\n    - containerPort: 9978\n      name: etcd-metrics\n      protocol: TCP\n",
            if http { "    - containerPort: 2381\n      name: etcd-http\n      protocol: TCP\n" } else { "" }
        ),
    };
    let (security, tmp_mount) = match rel.read_only_root {
        true => (
            "    securityContext:\n      privileged: true\n      readOnlyRootFilesystem: true\n",
            "      - mountPath: /tmp\n        name: tmp-dir\n",
        ),
        false => ("    securityContext:\n      privileged: true\n", ""),
    };
    let mut more_volumes = String::new();
    if rel.more_volumes {
        more_volumes.push_str(&format!(
            "    - hostPath:\n        path: {}\n      name: config-dir\n    - hostPath:\n        path: {}\n      name: etcd-auto-backup-dir\n",
            host("/etc/kubernetes"),
            host("/var/lib/etcd-auto-backup")
        ));
    }
    if rel.read_only_root {
        more_volumes.push_str("    - emptyDir: {}\n      name: tmp-dir\n");
    }
    let mut sidecars = String::new();
    for s in &rel.sidecars {
        let (cmd, mounts) = match s.as_str() {
            "etcd-readyz" => (
                format!("exec nice -n -18 cluster-etcd-operator readyz --target=https://localhost:2379 --listen-port=9980 --serving-cert-file={certs}/secrets/etcd-all-certs/etcd-serving-{node}.crt --client-cert-file=$(ETCDCTL_CERT) --client-key-file=$(ETCDCTL_KEY) --client-cacert-file=$(ETCDCTL_CACERT)"),
                "    - {mountPath: /var/log/etcd/, name: log-dir}\n    - {mountPath: /etc/kubernetes/static-pod-certs, name: cert-dir}\n",
            ),
            "etcd-rev" => (
                "cluster-etcd-operator rev --endpoints=$(ALL_ETCD_ENDPOINTS) --client-cert-file=$(ETCDCTL_CERT) --client-key-file=$(ETCDCTL_KEY) --client-cacert-file=$(ETCDCTL_CACERT)".to_string(),
                "    - {mountPath: /var/lib/etcd, name: data-dir}\n    - {mountPath: /etc/kubernetes/static-pod-certs, name: cert-dir}\n",
            ),
            other => panic!("unknown sidecar {other}"),
        };
        sidecars.push_str(&format!(
            "  - name: {s}\n    image: {operator_image}\n    command:\n      - /bin/sh\n      - -c\n      - |\n        #!/bin/sh\n        set -euo pipefail\n        {cmd}\n    securityContext:\n      privileged: true\n{}    volumeMounts:\n{mounts}",
            env_block(rel, &env, 4, None)
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: openshift-etcd
  annotations:
    kubectl.kubernetes.io/default-container: etcd
  labels:
    app: etcd
    k8s-app: etcd
    etcd: "true"
    revision: "{revision}"
spec:
  initContainers:
    - name: etcd-ensure-env-vars
      image: {image}
      command:
        - /bin/sh
        - -c
        - |
          #!/bin/sh
          set -euo pipefail
          : "${{NODE_{safe}_IP?not set}}"
          if [[ "${{NODE_{safe}_IP}}" != "${{NODE_IP}}" ]]; then exit 1; fi
      env:
      - name: NODE_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
  containers:
  - name: etcdctl
    image: {image}
    command:
      - "/bin/bash"
      - "-c"
      - "trap TERM INT; sleep infinity & wait"
    volumeMounts:
      - mountPath: /etc/kubernetes/static-pod-certs
        name: cert-dir
      - mountPath: /var/lib/etcd/
        name: data-dir
{env_plain}  - name: etcd
    image: {image}
    imagePullPolicy: IfNotPresent
    terminationMessagePolicy: FallbackToLogsOnError
    command:
      - /bin/sh
      - -c
      - |
{script}{ports}{env_etcd}{security}    volumeMounts:
      - mountPath: /etc/kubernetes/manifests
        name: static-pod-dir
      - mountPath: /etc/kubernetes/static-pod-resources
        name: resource-dir
      - mountPath: /etc/kubernetes/static-pod-certs
        name: cert-dir
      - mountPath: /var/lib/etcd/
        name: data-dir
{tmp_mount}  - name: etcd-metrics
    image: {image}
    command:
      - /bin/sh
      - -c
      - |
        #!/bin/sh
        set -euo pipefail
        export ETCD_NAME=${{NODE_{safe}_ETCD_NAME}}
        exec nice -n -18 etcd grpc-proxy start \
          --endpoints https://${{NODE_{safe}_ETCD_URL_HOST}}:9978 \
          --listen-addr 127.0.0.1:9977 \
          --cacert {certs}/configmaps/{server_ca}
{env_metrics}    volumeMounts:
      - mountPath: /etc/kubernetes/static-pod-certs
        name: cert-dir
{sidecars}  hostNetwork: true
  priorityClassName: system-node-critical
  tolerations:
  - operator: "Exists"
  volumes:
    - hostPath:
        path: {manifests}
      name: static-pod-dir
    - hostPath:
        path: {resources}
      name: resource-dir
    - hostPath:
        path: {certs_host}
      name: cert-dir
    - hostPath:
        path: {data}
        type: ""
      name: data-dir
    - hostPath:
        path: {bin}
      name: usr-local-bin
    - hostPath:
        path: {logs}
      name: log-dir
{more_volumes}"#,
        env_plain = env_block(rel, &env, 4, Some(revision)),
        env_etcd = env_block(rel, &env, 4, Some(revision)),
        env_metrics = env_block(rel, &env, 4, Some(revision)),
        server_ca = rel.server_ca,
        manifests = host("/etc/kubernetes/manifests"),
        resources = host(&format!("/etc/kubernetes/static-pod-resources/etcd-pod-{revision}")),
        certs_host = host("/etc/kubernetes/static-pod-resources/etcd-certs"),
        data = host("/var/lib/etcd"),
        bin = host("/usr/local/bin"),
        logs = host("/var/log/etcd"),
    )
}

/// One simulated node.
pub struct OsNode {
    pub spec: NodeSpec,
    pub root: PathBuf,
    pub kubernetes: PathBuf,
    pub manifests: PathBuf,
    pub data: PathBuf,
    pub client: String,
    pub peer: String,
    pub encryption_config: PathBuf,
    pub kubelet: Option<Kubelet>,
}

impl OsNode {
    pub fn mdir(&self) -> &str {
        self.manifests.to_str().unwrap()
    }
    pub fn kdir(&self) -> &str {
        self.kubernetes.to_str().unwrap()
    }
    pub fn manifest(&self) -> PathBuf {
        self.manifests.join("etcd-pod.yaml")
    }
}

/// Three nodes of one release, their kubelets running.
pub struct OsCluster {
    pub rel: Release,
    pub nodes: Vec<OsNode>,
    pub ca: PathBuf,
    /// A client certificate etcd accepts (master-0's peer certificate, as etcdctl in the pod uses).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub etcd_dir: PathBuf,
    pub tmp: tempfile::TempDir,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "openshift-etcd-signer (test)");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<String>,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    (p.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The image's helpers, as stand-ins (see the module doc).
fn write_stand_ins(bin: &Path, ip: &str) {
    write(&bin.join("ss"), &format!("#!/bin/sh\n# stand-in: only this node's listeners\nexec /usr/bin/ss -Htln \"$2 and src {ip}\"\n"), 0o755);
    write(
        &bin.join("discover-etcd-initial-cluster"),
        r#"#!/bin/sh
# stand-in for the image's discover-etcd-initial-cluster (see openshift_support)
for a in "$@"; do
  case "$a" in
    --cacert=*) CA=${a#*=} ;; --cert=*) CERT=${a#*=} ;; --key=*) KEY=${a#*=} ;;
    --endpoints=*) EP=${a#*=} ;; --data-dir=*) DATA=${a#*=} ;;
    --target-peer-url-host=*) HOST=${a#*=} ;; --target-name=*) NAME=${a#*=} ;;
  esac
done
if [ -d "$DATA/member/snap" ]; then echo "dataDir is present on $NAME" >&2; exit 0; fi
# The pod's ETCDCTL_* would clash with the flags below (the real helper is no etcdctl).
unset ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY
TARGET="https://$HOST:2380"
i=0
while [ $i -lt 60 ]; do
  i=$((i + 1))
  LIST=$(etcdctl --cacert="$CA" --cert="$CERT" --key="$KEY" --endpoints="$EP" --dial-timeout=1s --command-timeout=3s member list) || { sleep 1; continue; }
  echo "$LIST" | awk -F', ' -v t="$TARGET" -v n="$NAME" '
    $4 == t { found = 1; if ($3 != "") started = 1; next }
    $3 != "" { out = out (out == "" ? "" : ",") $3 "=" $4 }
    END { if (!found) exit 3; if (started) exit 4; print out (out == "" ? "" : ",") n "=" t }'
  case $? in
    0) exit 0 ;;
    4) echo "member $TARGET dataDir has been destroyed and must be removed from the cluster" >&2; exit 1 ;;
  esac
  echo "member $TARGET not found in member list" >&2
  sleep 1
done
exit 1
"#,
        0o755,
    );
}

/// `etcdctl` of `dir` with the client TLS files.
pub fn etcdctl_in(
    dir: &Path,
    ca: &Path,
    cert: &Path,
    key: &Path,
    endpoints: &str,
    args: &[&str],
) -> Output {
    Command::new(dir.join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoints,
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .args(["--command-timeout", "5s", "--dial-timeout", "2s"])
        .args(args)
        .output()
        .unwrap()
}

pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl OsCluster {
    /// Renders and starts three nodes on 127.0.`subnet`.1-3, seeded with `seed_keys` keys.
    pub fn start(rel: &Release, subnet: u8, seed_keys: usize) -> OsCluster {
        // ETCDGUARD_KEEP_TMP=1 keeps the nodes' dirs (logs) for a look after a failure.
        let tmp = tempfile::Builder::new()
            .disable_cleanup(std::env::var_os("ETCDGUARD_KEEP_TMP").is_some())
            .tempdir()
            .unwrap();
        let etcd_dir = etcd_dir(rel);
        let specs: Vec<NodeSpec> = (0..3)
            .map(|i| NodeSpec {
                name: format!("master-{i}"),
                ip: format!("127.0.{subnet}.{}", i + 1),
            })
            .collect();
        let issuer = ca();
        let ca_path = tmp.path().join("ca.crt");
        write(&ca_path, &issuer.pem(), 0o644);
        // The seed: a snapshot of a one-member etcd with the keys, restored on every node as
        // the installed cluster's data.
        let seed = tmp.path().join("seed.db");
        {
            let server = EtcdServer::builder(EtcdVersion::V3_5).start();
            for k in 0..seed_keys {
                server.put(
                    format!("/kubernetes.io/configmaps/openshift-config/cm{k}").as_bytes(),
                    format!("value {k}").as_bytes(),
                );
            }
            server.snapshot_save(&seed);
        }
        let initial: Vec<String> =
            specs.iter().map(|n| format!("{}=https://{}:2380", n.name, n.ip)).collect();
        let mut nodes = Vec::new();
        for spec in &specs {
            let root = tmp.path().join(&spec.name);
            let kubernetes = root.join("etc/kubernetes");
            let manifests = kubernetes.join("manifests");
            std::fs::create_dir_all(&manifests).unwrap();
            let certs = root.join("etc/kubernetes/static-pod-resources/etcd-certs");
            for bundle in [&rel.server_ca, &rel.peer_ca] {
                write(&certs.join("configmaps").join(bundle), &issuer.pem(), 0o644);
            }
            for kind in ["serving", "peer", "serving-metrics"] {
                let (crt, key) = leaf(
                    &issuer,
                    &format!("system:etcd-{kind}:{}", spec.name),
                    vec![spec.ip.clone(), "localhost".into(), "127.0.0.1".into()],
                );
                write(
                    &certs.join(format!("secrets/etcd-all-certs/etcd-{kind}-{}.crt", spec.name)),
                    &crt,
                    0o600,
                );
                write(
                    &certs.join(format!("secrets/etcd-all-certs/etcd-{kind}-{}.key", spec.name)),
                    &key,
                    0o600,
                );
            }
            write_stand_ins(&root.join("image-bin"), &spec.ip);
            let data = root.join("var/lib/etcd");
            let out = Command::new(etcd_dir.join("etcdutl"))
                .args([
                    "snapshot",
                    "restore",
                    seed.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--name",
                    &spec.name,
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-token",
                    "openshift-etcd",
                    "--initial-advertise-peer-urls",
                    &format!("https://{}:2380", spec.ip),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "seeding {}: {}",
                spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(
                manifests.join("etcd-pod.yaml"),
                render(rel, &specs, spec, &spec.ip, &root),
            )
            .unwrap();
            // The API server (a stand-in serving /readyz) with its encryption configuration
            // in the --openshift-config file, as OpenShift's kube-apiserver-pod.yaml has it.
            let resources = kubernetes.join("static-pod-resources/kube-apiserver-pod-5");
            let encryption_config = resources.join("secrets/encryption-config/encryption-config");
            write(&encryption_config, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n", 0o600);
            write(
                &resources.join("configmaps/config/config.yaml"),
                &format!("apiVersion: kubecontrolplane.config.openshift.io/v1\nkind: KubeAPIServerConfig\napiServerArguments:\n  encryption-provider-config:\n  - /etc/kubernetes/static-pod-resources/secrets/encryption-config/encryption-config\n  etcd-servers:\n  - https://{}:2379\n", spec.ip),
                0o600,
            );
            let port = etcdguard_testkit::free_port();
            std::fs::write(
                manifests.join("kube-apiserver-pod.yaml"),
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: kube-apiserver, namespace: openshift-kube-apiserver}}\nspec:\n  hostNetwork: true\n  containers:\n  - name: kube-apiserver\n    command: [\"/bin/bash\", \"-ec\"]\n    args:\n    - |\n      exec watch-termination --termination-touch-file=/var/log/kube-apiserver/.terminating -- hyperkube kube-apiserver --openshift-config=/etc/kubernetes/static-pod-resources/configmaps/config/config.yaml --advertise-address=${{HOST_IP}} --secure-port={port} --etcd-servers=https://{}:2379 -v=2\n    env:\n    - {{name: HOST_IP, valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}}}\n    volumeMounts:\n    - {{mountPath: /etc/kubernetes/static-pod-resources, name: resource-dir}}\n  volumes:\n  - {{hostPath: {{path: {}}}, name: resource-dir}}\n",
                    spec.ip,
                    resources.display()
                ),
            )
            .unwrap();
            std::fs::write(manifests.join("kube-scheduler-pod.yaml"), "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [hyperkube, kube-scheduler]\n    name: kube-scheduler\n").unwrap();
            let runtime = PodRuntime {
                etcd_dir: Some(etcd_dir.clone()),
                extra_path: Some(root.join("image-bin")),
                sh_is_bash: true,
                workdir: Some(root.clone()),
            };
            let kubelet = Some(Kubelet::start_pods(manifests.clone(), root.clone(), true, runtime));
            nodes.push(OsNode {
                client: format!("https://{}:2379", spec.ip),
                peer: format!("https://{}:2380", spec.ip),
                spec: spec.clone(),
                root,
                kubernetes,
                manifests,
                data,
                encryption_config,
                kubelet,
            });
        }
        let client_cert = nodes[0].root.join("etc/kubernetes/static-pod-resources/etcd-certs/secrets/etcd-all-certs/etcd-peer-master-0.crt");
        let client_key = client_cert.with_extension("key");
        let cluster = OsCluster {
            rel: rel.clone(),
            nodes,
            ca: ca_path,
            client_cert,
            client_key,
            etcd_dir,
            tmp,
        };
        for n in &cluster.nodes {
            wait_until(
                Duration::from_secs(90),
                &format!("{} {} healthy (logs in {})", rel.release, n.spec.name, n.root.display()),
                || cluster.healthy(&n.client),
            );
        }
        cluster
    }

    /// The end of each node's newest etcd log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&n.root)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            if let Some(last) = logs.last() {
                let text = std::fs::read_to_string(last).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                out.push_str(&format!(
                    "--- {} {}:\n{}\n",
                    n.spec.name,
                    last.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        out
    }

    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        etcdctl_in(&self.etcd_dir, &self.ca, &self.client_cert, &self.client_key, endpoints, args)
    }

    pub fn healthy(&self, endpoint: &str) -> bool {
        self.etcdctl(endpoint, &["endpoint", "health"]).status.success()
    }

    /// `--endpoints E --cacert … --cert … --key …` for etcdguard.
    pub fn tls_args(&self, endpoint: &str) -> Vec<String> {
        vec![
            "--endpoints".into(),
            endpoint.into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.client_cert.display().to_string(),
            "--key".into(),
            self.client_key.display().to_string(),
        ]
    }

    pub fn json(&self, endpoint: &str, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        let out = self.etcdctl(endpoint, &a);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// (name, hex id, is learner) of every member, sorted.
    pub fn members(&self, endpoint: &str) -> Vec<(String, String, bool)> {
        let v = self.json(endpoint, &["member", "list"]);
        let mut m: Vec<(String, String, bool)> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    format!("{:x}", m["ID"].as_u64().unwrap()),
                    m["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        m.sort();
        m
    }

    /// Every key and value one member serves (serializable: its own copy).
    pub fn dump(&self, endpoint: &str) -> Vec<(String, String)> {
        let v = self.json(endpoint, &["get", "/", "--prefix", "--consistency=s"]);
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        (
                            kv["key"].as_str().unwrap().to_string(),
                            kv["value"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
