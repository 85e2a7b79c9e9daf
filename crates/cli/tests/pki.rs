//! `etcdguard pki check` and the scan under it, on a kubeadm-shaped PKI made with rcgen:
//! a CA, a server certificate valid a year, one expiring in 10 days, one expired, a bundle
//! of two, keys, a public key and a garbage .crt. `openssl x509` is the independent oracle
//! for notAfter and the serial where it is installed.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use etcdguard_node::pki::{self, Status};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
};

const DAY: u64 = 86400;

fn etcdguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_etcdguard"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// What the fixture wrote, to compare the scan with.
struct Expected {
    path: &'static str,
    index: u32,
    cn: &'static str,
    not_after: i64,
    is_ca: bool,
    serial: &'static str,
}

struct Fixture {
    dir: tempfile::TempDir,
    expected: Vec<Expected>,
}

impl Fixture {
    fn pki(&self) -> std::path::PathBuf {
        self.dir.path().join("pki")
    }
}

/// `pki/` as kubeadm lays it out (a subset), with certificates whose notAfter is relative to now.
fn kubeadm_pki() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(pki.join("etcd")).unwrap();
    let write = |rel: &str, content: &[u8]| std::fs::write(pki.join(rel), content).unwrap();
    // rcgen's time type, without naming it: the epoch plus now.
    let now =
        rcgen::date_time_ymd(1970, 1, 1) + SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // Whole seconds (as X.509 stores them), an hour back: the checks run moments later, and
    // whole days left must not depend on whether they run in the same second.
    let now = now - Duration::from_nanos(now.nanosecond() as u64) - Duration::from_secs(3600);
    let ca = |cn: &str, serial: &[u8]| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(serial));
        p.not_before = now - Duration::from_secs(DAY);
        p.not_after = now + Duration::from_secs(3650 * DAY);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let kube_ca = ca("kubernetes", &[0x8f, 0x01, 0x02]);
    let etcd_ca = ca("etcd-ca", &[0x01]);
    let leaf = |cn: &str,
                sans: Vec<String>,
                serial: &[u8],
                before: i64,
                after: i64,
                issuer: &CertifiedIssuer<'static, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(serial));
        let shift = |days: i64| {
            if days < 0 {
                now - Duration::from_secs(days.unsigned_abs() * DAY)
            } else {
                now + Duration::from_secs(days as u64 * DAY)
            }
        };
        p.not_before = shift(before);
        p.not_after = shift(after);
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (apiserver, apiserver_key) = leaf(
        "kube-apiserver",
        vec![
            "kubernetes".into(),
            "kubernetes.default".into(),
            "10.96.0.1".into(),
            "fd00::1".into(),
        ],
        &[0x10, 0x20],
        -1,
        365,
        &kube_ca,
    );
    let (server, server_key) = leaf(
        "etcd-server",
        vec!["localhost".into(), "127.0.0.1".into()],
        &[0x30],
        -355,
        10,
        &etcd_ca,
    );
    let (peer, peer_key) = leaf("etcd-peer", vec![], &[0x40], -400, -5, &etcd_ca);
    write("ca.crt", kube_ca.pem().as_bytes());
    write("ca.key", KeyPair::generate().unwrap().serialize_pem().as_bytes());
    write("apiserver.crt", apiserver.as_bytes());
    write("apiserver.key", apiserver_key.as_bytes());
    write("sa.pub", b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n");
    write("etcd/ca.crt", etcd_ca.pem().as_bytes());
    write("etcd/server.crt", server.as_bytes());
    write("etcd/server.key", server_key.as_bytes());
    write("etcd/peer.crt", peer.as_bytes());
    write("etcd/peer.key", peer_key.as_bytes());
    // A bundle: both CAs, with a comment line between them as some tools write.
    write("ca-bundle.pem", format!("{}# etcd\n{}", kube_ca.pem(), etcd_ca.pem()).as_bytes());
    write("front-proxy-ca.crt", b"\x00\x01 this is not a certificate \xff\xfe");
    let t = |days: i64| now.unix_timestamp() + days * DAY as i64;
    let expected = vec![
        Expected {
            path: "apiserver.crt",
            index: 0,
            cn: "kube-apiserver",
            not_after: t(365),
            is_ca: false,
            serial: "1020",
        },
        Expected {
            path: "ca-bundle.pem",
            index: 0,
            cn: "kubernetes",
            not_after: t(3650),
            is_ca: true,
            serial: "8F0102",
        },
        Expected {
            path: "ca-bundle.pem",
            index: 1,
            cn: "etcd-ca",
            not_after: t(3650),
            is_ca: true,
            serial: "01",
        },
        Expected {
            path: "ca.crt",
            index: 0,
            cn: "kubernetes",
            not_after: t(3650),
            is_ca: true,
            serial: "8F0102",
        },
        Expected {
            path: "etcd/ca.crt",
            index: 0,
            cn: "etcd-ca",
            not_after: t(3650),
            is_ca: true,
            serial: "01",
        },
        Expected {
            path: "etcd/peer.crt",
            index: 0,
            cn: "etcd-peer",
            not_after: t(-5),
            is_ca: false,
            serial: "40",
        },
        Expected {
            path: "etcd/server.crt",
            index: 0,
            cn: "etcd-server",
            not_after: t(10),
            is_ca: false,
            serial: "30",
        },
    ];
    Fixture { dir, expected }
}

fn utc(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

#[test]
fn scan_reads_every_certificate_and_reports_only_the_garbage() {
    let f = kubeadm_pki();
    let scan = pki::scan_dir(&f.pki()).unwrap();
    let got: Vec<_> = scan
        .certificates
        .iter()
        .map(|c| {
            (c.path.as_str(), c.index, c.subject.as_str(), c.not_after, c.is_ca, c.serial.as_str())
        })
        .collect();
    let want: Vec<_> = f
        .expected
        .iter()
        .map(|e| (e.path, e.index, format!("CN={}", e.cn), utc(e.not_after), e.is_ca, e.serial))
        .collect();
    let want: Vec<_> =
        want.iter().map(|(p, i, s, t, ca, se)| (*p, *i, s.as_str(), *t, *ca, *se)).collect();
    assert_eq!(got, want);
    let apiserver = &scan.certificates[0];
    assert_eq!(apiserver.issuer, "CN=kubernetes");
    assert_eq!(apiserver.dns_names, ["kubernetes", "kubernetes.default"]);
    assert_eq!(apiserver.ip_addresses, ["10.96.0.1", "fd00::1"]);
    assert!(apiserver.not_before < apiserver.not_after);
    // Keys and sa.pub are skipped quietly; the garbage .crt is the one problem.
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    assert_eq!(scan.problems[0].path, "front-proxy-ca.crt");

    let now = Utc::now();
    let findings = pki::expiry_findings(&scan.certificates, now, Duration::from_secs(30 * DAY));
    let got: Vec<_> = findings
        .iter()
        .map(|f| (f.path.as_str(), f.status, f.seconds_left.div_euclid(DAY as i64)))
        .collect();
    assert_eq!(
        got,
        vec![("etcd/peer.crt", Status::Expired, -6), ("etcd/server.crt", Status::Expiring, 9)]
    );
    // A shorter window leaves only the expired one.
    let findings = pki::expiry_findings(&scan.certificates, now, Duration::from_secs(5 * DAY));
    assert_eq!(findings.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["etcd/peer.crt"]);
}

/// `openssl x509` reads the same notAfter and serial (the first certificate of each file).
#[test]
fn openssl_agrees_on_not_after_and_serial() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not installed: the oracle comparison is skipped");
        return;
    }
    let f = kubeadm_pki();
    let scan = pki::scan_dir(&f.pki()).unwrap();
    let mut compared = 0;
    for c in scan.certificates.iter().filter(|c| c.index == 0) {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-serial", "-in"])
            .arg(f.pki().join(&c.path))
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl on {}: {}", c.path, text(&out.stderr));
        let stdout = text(&out.stdout);
        let end = stdout.lines().find_map(|l| l.strip_prefix("notAfter=")).unwrap();
        let end = chrono::NaiveDateTime::parse_and_remainder(end, "%b %e %H:%M:%S %Y")
            .unwrap()
            .0
            .and_utc();
        assert_eq!(end, c.not_after, "{}", c.path);
        let serial = stdout.lines().find_map(|l| l.strip_prefix("serial=")).unwrap();
        assert_eq!(serial, c.serial, "{}", c.path);
        compared += 1;
    }
    assert_eq!(compared, 6);
}

#[test]
fn check_table_lists_every_certificate_and_exits_18() {
    let f = kubeadm_pki();
    let out = etcdguard().args(["pki", "check", "--pki-dir"]).arg(f.pki()).output().unwrap();
    expect_code(&out, 18, "expired and expiring certificates");
    // The help says the code it exits with.
    let help = text(&etcdguard().args(["pki", "check", "--help"]).output().unwrap().stdout);
    assert!(help.contains("18 one or more expired"), "{help}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("PATH")
            && lines[0].contains("NOT AFTER (UTC)")
            && lines[0].contains("DAYS LEFT"),
        "{stdout}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{stdout}"))
    };
    for e in &f.expected {
        let name =
            if e.index == 0 { e.path.to_string() } else { format!("{}#{}", e.path, e.index) };
        let r = row(&name);
        assert!(r.contains(&format!("CN={}", e.cn)), "{r}");
        assert!(r.contains(&utc(e.not_after).format("%Y-%m-%d %H:%M:%S").to_string()), "{r}");
    }
    assert!(
        row("etcd/peer.crt").trim_end().ends_with("expired")
            && row("etcd/peer.crt").contains(" -6 "),
        "{}",
        row("etcd/peer.crt")
    );
    assert!(
        row("etcd/server.crt").trim_end().ends_with("expiring")
            && row("etcd/server.crt").contains(" 9 "),
        "{}",
        row("etcd/server.crt")
    );
    assert!(
        row("apiserver.crt").trim_end().ends_with("valid")
            && row("apiserver.crt").contains(" 364 "),
        "{}",
        row("apiserver.crt")
    );
    assert!(!stdout.contains(".key") && !stdout.contains("sa.pub"), "{stdout}");
    assert!(stdout.contains("problems:") && stdout.contains("front-proxy-ca.crt: "), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 of 7 certificates")
            && stderr.contains("1 expired")
            && stderr.contains("1 expiring"),
        "{stderr}"
    );
}

#[test]
fn check_json_has_status_per_certificate() {
    let f = kubeadm_pki();
    let out = etcdguard()
        .args(["pki", "check", "-w", "json", "--warn", "5d", "--pki-dir"])
        .arg(f.pki())
        .output()
        .unwrap();
    expect_code(&out, 18, "one expired certificate");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["warnSeconds"], 5 * DAY);
    let certs = doc["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 7);
    let by_path = |p: &str| certs.iter().find(|c| c["path"] == p && c["index"] == 0).unwrap();
    assert_eq!(by_path("etcd/peer.crt")["status"], "expired");
    // 10 days left is outside a 5-day window.
    assert_eq!(by_path("etcd/server.crt")["status"], "valid");
    assert_eq!(
        by_path("apiserver.crt")["ipAddresses"],
        serde_json::json!(["10.96.0.1", "fd00::1"])
    );
    assert_eq!(by_path("ca.crt")["isCa"], true);
    let not_after: DateTime<Utc> =
        serde_json::from_value(by_path("etcd/server.crt")["notAfter"].clone()).unwrap();
    assert_eq!(
        not_after,
        utc(f.expected.iter().find(|e| e.path == "etcd/server.crt").unwrap().not_after)
    );
    assert_eq!(doc["findings"].as_array().unwrap().len(), 1);
    assert_eq!(doc["problems"][0]["path"], "front-proxy-ca.crt");
}

#[test]
fn check_exit_codes() {
    let f = kubeadm_pki();
    let pki = f.pki();
    // Only valid certificates (and keys): exit 0; a window wider than a year flags them.
    for rel in ["etcd/peer.crt", "etcd/server.crt", "front-proxy-ca.crt"] {
        std::fs::remove_file(pki.join(rel)).unwrap();
    }
    let out = etcdguard().args(["pki", "check", "--pki-dir"]).arg(&pki).output().unwrap();
    expect_code(&out, 0, "all valid");
    let out = etcdguard()
        .args(["pki", "check", "--warn", "400d", "--pki-dir"])
        .arg(&pki)
        .output()
        .unwrap();
    expect_code(&out, 18, "apiserver.crt expires within 400 days");
    // A garbage .crt alone (no expiry finding): exit 1, named.
    std::fs::write(
        pki.join("etcd/healthcheck-client.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = etcdguard().args(["pki", "check", "--pki-dir"]).arg(&pki).output().unwrap();
    expect_code(&out, 1, "malformed certificate file");
    assert!(
        text(&out.stdout)
            .contains("etcd/healthcheck-client.crt: certificate at line 1: bad base64"),
        "{}",
        text(&out.stdout)
    );

    let missing = f.dir.path().join("no-such-dir");
    let out = etcdguard().args(["pki", "check", "--pki-dir"]).arg(&missing).output().unwrap();
    expect_code(&out, 3, "missing dir");
    assert!(text(&out.stderr).contains("no such directory"), "{}", text(&out.stderr));
    let empty = f.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = etcdguard().args(["pki", "check", "--pki-dir"]).arg(&empty).output().unwrap();
    expect_code(&out, 3, "no certificates");
    let out =
        etcdguard().args(["pki", "check", "--pki-dir"]).arg(pki.join("ca.crt")).output().unwrap();
    expect_code(&out, 2, "a file, not a directory");
    let out = etcdguard()
        .args(["pki", "check", "--warn", "soon", "--pki-dir"])
        .arg(&pki)
        .output()
        .unwrap();
    expect_code(&out, 2, "bad --warn");
}

/// Kubernetes' atomic writer layout (OpenShift mounts, projected volumes): the visible names
/// are links into a `..data` directory; each certificate is read once, under its visible name.
#[test]
fn links_are_followed_once() {
    let f = kubeadm_pki();
    let root = f.dir.path().join("static-pod-resources/secrets/etcd-all-certs");
    let stamp = root.join("..2026_11_30_12_00_00.1");
    std::fs::create_dir_all(&stamp).unwrap();
    std::fs::copy(f.pki().join("apiserver.crt"), stamp.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..2026_11_30_12_00_00.1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    // A link to a directory above: not followed (no loop).
    std::os::unix::fs::symlink("../..", root.join("loop")).unwrap();
    let scan = pki::scan_dir(&f.dir.path().join("static-pod-resources")).unwrap();
    assert_eq!(
        scan.certificates.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
        ["secrets/etcd-all-certs/tls.crt"]
    );
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
}
