//! Shared by the save_* and cluster_* tests: the binary under test with a clean environment,
//! and a throwaway PKI made with rcgen for TLS servers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcdguard_testkit::{ClientTls, EtcdServer, EtcdVersion};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// `etcdguard` with no ETCDCTL_* variables from the caller's environment, and no cloud
/// instance metadata lookups.
/// The binary under test: this build's, or `ETCDGUARD_BIN` (the benches point it at a release
/// build, so a timing is not a debug build's).
pub fn etcdguard_bin() -> std::path::PathBuf {
    std::env::var_os("ETCDGUARD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_etcdguard").into())
}

pub fn etcdguard() -> Command {
    let mut cmd = Command::new(etcdguard_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    // No test asks a cloud metadata address (S3 without credentials would).
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// A 3.5 server holding ~64 MiB of incompressible values, so a snapshot or a backup of it
/// takes a while. Loaded with `etcdctl put` (value on stdin): much faster than the JSON
/// gateway for MiB values.
pub fn big_server() -> EtcdServer {
    use std::io::Read;
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    let mut value = vec![0u8; 1 << 20];
    let value_file = dir.path().join("value");
    for i in 0..64 {
        urandom.read_exact(&mut value).unwrap();
        std::fs::write(&value_file, &value).unwrap();
        let stdin = std::fs::File::open(&value_file).unwrap();
        let out = server
            .etcdctl()
            .args(["put", &format!("/registry/configmaps/big/{i:03}")])
            .stdin(stdin)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl put: {}", text(&out.stderr));
    }
    server
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics with both streams unless the command exited with `code`.
pub fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Neither FILE nor FILE.part exists.
pub fn assert_no_file(dest: &Path) {
    let part = PathBuf::from(format!("{}.part", dest.display()));
    assert!(!dest.exists(), "{} must not exist after a failed save", dest.display());
    assert!(!part.exists(), "{} must be removed after a failed save", part.display());
}

/// A CA, a server certificate for 127.0.0.1/localhost, and client certificates: one good,
/// one expired, one from a different CA; plus that other CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// A key that does not belong to `client_cert`.
    pub wrong_key: PathBuf,
    /// Signed by `ca` for servers only (no clientAuth usage): etcd refuses it from a client.
    pub server_only_cert: PathBuf,
    pub server_only_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca1 = ca("etcdguard test CA");
        let ca2 = ca("some other CA");
        let leaf = |cn: &str, sans: Vec<String>, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages =
                vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            p.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = p.signed_by(&key, &ca1).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf("etcd", vec!["127.0.0.1".into(), "localhost".into()], false);
        let (client_cert, client_key) = leaf("root", vec![], false);
        let (expired_cert, expired_key) = leaf("root", vec![], true);
        let (server_only_cert, server_only_key) = {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, "etcd server only");
            p.key_usages =
                vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            (p.signed_by(&key, &ca1).unwrap().pem(), key.serialize_pem())
        };
        Pki {
            ca: write("ca.crt", ca1.pem()),
            other_ca: write("other-ca.crt", ca2.pem()),
            server_cert: write("server.crt", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.crt", client_cert),
            client_key: write("client.key", client_key),
            expired_cert: write("expired.crt", expired_cert),
            expired_key: write("expired.key", expired_key),
            wrong_key: write("wrong.key", KeyPair::generate().unwrap().serialize_pem()),
            server_only_cert: write("server-only.crt", server_only_cert),
            server_only_key: write("server-only.key", server_only_key),
            dir,
        }
    }

    /// An etcd requiring client certificates signed by this CA.
    pub fn server(&self, version: EtcdVersion) -> EtcdServer {
        EtcdServer::builder(version)
            .client_tls(ClientTls {
                cert_file: self.server_cert.clone(),
                key_file: self.server_key.clone(),
                trusted_ca_file: self.ca.clone(),
                client_cert_auth: true,
                etcdctl_files: Some((
                    self.ca.clone(),
                    self.client_cert.clone(),
                    self.client_key.clone(),
                )),
            })
            .start()
    }

    /// `--endpoints … --cacert … --cert … --key …` with the good files.
    pub fn args(&self, endpoint: &str) -> Vec<String> {
        self.args_with(endpoint, &self.ca, &self.client_cert, &self.client_key)
    }

    pub fn args_with(&self, endpoint: &str, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
        vec![
            "--endpoints".into(),
            endpoint.into(),
            "--cacert".into(),
            ca.display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]
    }
}
