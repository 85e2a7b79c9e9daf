//! Pod-hosted and static-pod etcd: `snapshot save` and `backup create` against a real etcd
//! with client-certificate TLS, taking the endpoint and the TLS files from an etcd manifest
//! (`--etcd-manifest`) or a directory of mounted Secrets (`--etcd-secrets-dir`) and no other
//! connection flag; flags still win; missing or wrong files give a clear error.

mod live_support;

use std::path::Path;

use etcdguard_testkit::EtcdVersion;
use live_support::*;

/// A kubeadm-style static pod whose TLS files live under the container path
/// /etc/kubernetes/pki/etcd, a hostPath volume of the test's PKI dir.
fn static_pod(endpoint: &str, pki_dir: &Path, cert: &str, key: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: etcd, namespace: kube-system}}
spec:
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.5.15-0
    command:
    - etcd
    - --advertise-client-urls={endpoint}
    - --cert-file=/etc/kubernetes/pki/etcd/{cert}
    - --key-file=/etc/kubernetes/pki/etcd/{key}
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --listen-client-urls=https://0.0.0.0:1
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    volumeMounts:
    - {{mountPath: /var/lib/etcd, name: etcd-data}}
    - {{mountPath: /etc/kubernetes/pki/etcd, name: etcd-certs}}
  hostNetwork: true
  volumes:
  - {{hostPath: {{path: {pki}, type: DirectoryOrCreate}}, name: etcd-certs}}
  - {{hostPath: {{path: /var/lib/etcd, type: DirectoryOrCreate}}, name: etcd-data}}
"#,
        pki = pki_dir.display()
    )
}

/// HyperShift's shape: a Service, then the etcd StatefulSet with its flags as `ETCD_*`
/// variables, the advertised URL full of `$(VAR)`s, TLS files on Secret volumes (paths that
/// do not exist outside its pod).
fn statefulset(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: etcd-client}}
spec:
  ports: [{{name: etcd-client, port: 2379}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: etcd}}
spec:
  serviceName: etcd-discovery
  template:
    spec:
      containers:
      - name: etcd
        command: [/bin/sh, -c, "ETCD_INITIAL_CLUSTER_STATE=$(cat /etc/etcd/clusterstate/state) /usr/bin/etcd"]
        env:
        - {{name: ETCD_ADVERTISE_CLIENT_URLS, value: "https://$(HOSTNAME).etcd-discovery.$(NAMESPACE).svc:2379"}}
        - {{name: ETCD_LISTEN_CLIENT_URLS, value: "https://$(POD_IP):{port},https://0.0.0.0:{port}"}}
        - {{name: ETCD_TRUSTED_CA_FILE, value: /etc/etcd/tls/etcd-ca/ca.crt}}
        - {{name: ETCD_CERT_FILE, value: /etc/etcd/tls/server/server.crt}}
        - {{name: ETCD_KEY_FILE, value: /etc/etcd/tls/server/server.key}}
        volumeMounts:
        - {{mountPath: /etc/etcd/tls/server, name: server-tls}}
        - {{mountPath: /etc/etcd/tls/etcd-ca, name: etcd-ca}}
      volumes:
      - {{name: server-tls, secret: {{secretName: etcd-server-tls}}}}
      - {{name: etcd-ca, configMap: {{name: etcd-ca}}}}
"#
    )
}

/// The etcd-client-tls Secret and the etcd-ca ConfigMap projected into one directory, with
/// the file names HyperShift gives them.
fn hypershift_secrets(pki: &Pki, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&pki.client_cert, dir.join("etcd-client.crt")).unwrap();
    std::fs::copy(&pki.client_key, dir.join("etcd-client.key")).unwrap();
    std::fs::copy(&pki.ca, dir.join("ca.crt")).unwrap();
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

fn save(args: &[&str], dest: &Path) -> std::process::Output {
    etcdguard().args(["snapshot", "save"]).arg(dest).args(args).output().unwrap()
}

#[test]
fn manifest_and_secrets_dir_are_enough_to_connect() {
    let pki = Pki::new();
    let server = pki.server(EtcdVersion::V3_5);
    server.put(b"/registry/secrets/default/token", b"k8s\0not-a-real-secret");
    let work = tempfile::tempdir().unwrap();

    // A static pod manifest, its TLS files through the hostPath volume.
    let manifest = work.path().join("etcd.yaml");
    std::fs::write(
        &manifest,
        static_pod(server.endpoint(), pki.dir.path(), "client.crt", "client.key"),
    )
    .unwrap();
    let ours = work.path().join("ours.db");
    let out = save(&["--etcd-manifest", manifest.to_str().unwrap()], &ours);
    expect_code(&out, 0, "save with --etcd-manifest");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "endpoints {} from --etcd-manifest {} advertise-client-urls",
            server.endpoint(),
            manifest.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("--cert {} from --etcd-manifest", pki.client_cert.display())),
        "{stderr}"
    );
    let theirs = work.path().join("theirs.db");
    server.snapshot_save(&theirs);
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "snapshot differs from etcdctl's"
    );

    // HyperShift: the StatefulSet gives the endpoint (its listen URL on loopback), the
    // mounted Secrets give the TLS files.
    let sts = work.path().join("etcd-statefulset.yaml");
    std::fs::write(&sts, statefulset(port_of(server.endpoint()))).unwrap();
    let secrets = work.path().join("etcd-client-tls");
    hypershift_secrets(&pki, &secrets);
    let repo = work.path().join("repo");
    let out = etcdguard()
        .args([
            "backup",
            "create",
            "--repo",
            repo.to_str().unwrap(),
            "--etcd-manifest",
            sts.to_str().unwrap(),
        ])
        .args(["--etcd-secrets-dir", secrets.to_str().unwrap()])
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create with --etcd-manifest and --etcd-secrets-dir");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--key {} from --etcd-secrets-dir",
            secrets.join("etcd-client.key").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("left out: a variable set when the pod starts"), "{stderr}");
    let list =
        etcdguard().args(["backup", "list", "--repo", repo.to_str().unwrap()]).output().unwrap();
    expect_code(&list, 0, "backup list");

    // The Secrets dir alone, the endpoint from ETCDCTL_ENDPOINTS (as a pod's env would set it).
    let alone = work.path().join("alone.db");
    let out = etcdguard()
        .args([
            "snapshot",
            "save",
            alone.to_str().unwrap(),
            "--etcd-secrets-dir",
            secrets.to_str().unwrap(),
        ])
        .env("ETCDCTL_ENDPOINTS", server.endpoint())
        .output()
        .unwrap();
    expect_code(&out, 0, "save with --etcd-secrets-dir");
    assert!(text(&out.stderr).contains("from ETCDCTL_ENDPOINTS"), "{}", text(&out.stderr));
}

/// A manifest whose --cert-file is for servers only: the peer pair connects instead, and
/// stderr says why the server pair was left out.
#[test]
fn server_only_certificate_gives_way_to_the_peer_pair() {
    let pki = Pki::new();
    let server = pki.server(EtcdVersion::V3_5);
    let work = tempfile::tempdir().unwrap();
    let manifest = work.path().join("etcd.yaml");
    let yaml = static_pod(server.endpoint(), pki.dir.path(), "server-only.crt", "server-only.key");
    let with_peer = yaml.replace(
        "    - --client-cert-auth=true\n",
        "    - --client-cert-auth=true\n    - --peer-cert-file=/etc/kubernetes/pki/etcd/client.crt\n    - --peer-key-file=/etc/kubernetes/pki/etcd/client.key\n",
    );
    assert_ne!(yaml, with_peer);
    std::fs::write(&manifest, with_peer).unwrap();
    let dest = work.path().join("snap.db");
    let out = save(&["--etcd-manifest", manifest.to_str().unwrap()], &dest);
    expect_code(&out, 0, "save with the peer pair");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("server-only.crt left out: the certificate is for servers only"),
        "{stderr}"
    );
    assert!(stderr.contains("--peer-cert-file/--peer-key-file"), "{stderr}");

    // Without a peer pair the server-only certificate is not offered: no client certificate,
    // which etcd refuses (exit 13).
    std::fs::write(&manifest, yaml).unwrap();
    let refused = work.path().join("refused.db");
    let out = save(&["--etcd-manifest", manifest.to_str().unwrap()], &refused);
    expect_code(&out, 13, "only a server-only certificate");
    assert!(text(&out.stderr).contains("requires a client certificate"), "{}", text(&out.stderr));
    assert_no_file(&refused);
}

#[test]
fn missing_or_wrong_files_are_clear_errors() {
    let pki = Pki::new();
    let server = pki.server(EtcdVersion::V3_5);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("snap.db");

    // The manifest names a key that is not there: exit 2, the file and where it came from.
    let manifest = work.path().join("etcd.yaml");
    std::fs::write(
        &manifest,
        static_pod(server.endpoint(), pki.dir.path(), "client.crt", "gone.key"),
    )
    .unwrap();
    let out = save(&["--etcd-manifest", manifest.to_str().unwrap()], &dest);
    expect_code(&out, 2, "manifest naming a missing key");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("gone.key")
            && stderr.contains("--etcd-manifest")
            && stderr.contains("--key-file"),
        "{stderr}"
    );
    assert_no_file(&dest);

    // A flag wins over the manifest: another CA given with --cacert fails the handshake.
    std::fs::write(
        &manifest,
        static_pod(server.endpoint(), pki.dir.path(), "client.crt", "client.key"),
    )
    .unwrap();
    let out = save(
        &[
            "--etcd-manifest",
            manifest.to_str().unwrap(),
            "--cacert",
            pki.other_ca.to_str().unwrap(),
        ],
        &dest,
    );
    expect_code(&out, 13, "--cacert of another CA over the manifest's");
    assert!(text(&out.stderr).contains("not issued by"), "{}", text(&out.stderr));
    assert_no_file(&dest);

    // Not a manifest, or none at all: exit 2.
    let not_yaml = work.path().join("notes.txt");
    std::fs::write(&not_yaml, "{{{ not yaml").unwrap();
    for m in [not_yaml.clone(), work.path().join("nope.yaml")] {
        let out = save(&["--etcd-manifest", m.to_str().unwrap()], &dest);
        expect_code(&out, 2, "unreadable manifest");
        assert!(text(&out.stderr).contains("--etcd-manifest"), "{}", text(&out.stderr));
    }

    // A Secrets dir with a certificate but no key, or none of the known names: exit 2.
    let secrets = work.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let ep = ["--endpoints", server.endpoint(), "--etcd-secrets-dir", secrets.to_str().unwrap()];
    let out = save(&ep, &dest);
    expect_code(&out, 2, "empty secrets dir");
    assert!(text(&out.stderr).contains("holds none of ca.crt"), "{}", text(&out.stderr));
    std::fs::copy(&pki.client_cert, secrets.join("tls.crt")).unwrap();
    let out = save(&ep, &dest);
    expect_code(&out, 2, "certificate without key");
    assert!(
        text(&out.stderr).contains("tls.crt is there but tls.key is not"),
        "{}",
        text(&out.stderr)
    );

    // The Secret of another cluster's CA: the handshake fails, exit 13.
    std::fs::copy(&pki.client_key, secrets.join("tls.key")).unwrap();
    std::fs::copy(&pki.other_ca, secrets.join("ca.crt")).unwrap();
    let out = save(&ep, &dest);
    expect_code(&out, 13, "secrets dir with another CA");
    assert_no_file(&dest);
}

/// The agent as deploy/hypershift runs it: --endpoints and the mounted Secrets only; its
/// election (in etcd) and its backup both connect with them.
#[test]
fn agent_runs_with_the_secrets_dir() {
    let pki = Pki::new();
    let server = pki.server(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/first", b"one");
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("etcd-client");
    hypershift_secrets(&pki, &secrets);
    let repo = work.path().join("repo");
    let log = work.path().join("agent.log");
    let mut agent = etcdguard()
        .args(["agent", "--repo", repo.to_str().unwrap(), "--endpoints", server.endpoint()])
        .args([
            "--etcd-secrets-dir",
            secrets.to_str().unwrap(),
            "--every",
            "1s",
            "--runs",
            "1",
            "--listen",
            "off",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // An agent that cannot reach etcd stands by instead of exiting: bounded here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            agent.kill().unwrap();
            agent.wait().unwrap();
            panic!(
                "the agent did not finish its run: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "agent: {status}: {agent_log}");
    assert!(
        agent_log.contains(&format!(
            "--cert {} from --etcd-secrets-dir",
            secrets.join("etcd-client.crt").display()
        )),
        "{agent_log}"
    );
    let list = etcdguard()
        .args(["backup", "list", "--repo", repo.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    expect_code(&list, 0, "backup list");
    let backups: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(backups.as_array().map(|a| a.len()), Some(1), "{backups}");
}
