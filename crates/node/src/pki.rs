//! The certificates of a node's PKI directory and when they expire.
//!
//! [`scan_dir`] walks a directory (kubeadm's `/etc/kubernetes/pki` with `etcd/`, the
//! front-proxy files …; OpenShift's `static-pod-resources`; any other) and reads every PEM
//! file's CERTIFICATE blocks, whatever the file is called. Keys, CSRs and files that are not
//! PEM are skipped without a word; a file that should hold a certificate but cannot be read
//! or parsed is a [`Problem`], never a panic. [`scan_file`] does the same for one file's
//! bytes (it is what the fuzz target drives). [`expiry_findings`] and [`check`] judge the
//! result against a point in time; they are pure, so the agent and `backup create` can use
//! the same code with their own clock.
//!
//! [`Certificate`] is small and serde-stable on purpose: it is meant to be recorded in backup
//! manifests, where fields may be added (with `#[serde(default)]`) but never renamed.
//!
//! ## How it works
//!
//! `pki` scans a PKI directory for certificates (every PEM CERTIFICATE block of any file, DER
//! for `.crt`/`.cer`/`.der`; keys and other files skipped, damaged certificate files reported
//! as problems) with `x509-parser`, and judges expiry at a given time (`expiry_findings`,
//! `check`: pure, the caller passes the clock). It lives here because the certificates are
//! facts of the node, like its static pod manifests, and it needs nothing from etcd or the
//! repository; `pki check` calls it, and so do `backup create --pki-dir` (which records them in
//! the manifest, through `workflow::certs`) and the agent (expiry metrics). `Certificate` is
//! serialized into manifests, so it stays small and its fields are only ever added.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Files larger than this are not certificates (a kubeadm PKI file is a few KiB; a big CA
/// bundle a few hundred): they are not read.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// One certificate found under the PKI directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Path relative to the scanned directory, `/`-separated (e.g. `etcd/server.crt`).
    pub path: String,
    /// Position among the certificates of the file (0 for the first; bundles have more).
    pub index: u32,
    /// Distinguished names in the certificate's order, as `openssl x509 -subject` prints
    /// them, e.g. `O=system:masters, CN=kube-apiserver-etcd-client`.
    pub subject: String,
    pub issuer: String,
    /// Upper-case hex without separators, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// DNS names of the subjectAltName extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// IP addresses of the subjectAltName extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
}

impl Certificate {
    /// `path` for the first certificate of a file, `path#index` for the others.
    pub fn display_name(&self) -> String {
        if self.index == 0 {
            self.path.clone()
        } else {
            format!("{}#{}", self.path, self.index)
        }
    }
}

/// A file that should hold certificates but could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Relative to the scanned directory, `/`-separated.
    pub path: String,
    pub message: String,
}

/// What [`scan_dir`] found: certificates in path order, then by position in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    pub certificates: Vec<Certificate>,
    pub problems: Vec<Problem>,
}

/// The directory itself could not be scanned. Problems with single files are in [`Scan`].
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: no such directory; give the node's PKI directory (kubeadm: /etc/kubernetes/pki)", .0.display())]
    NotFound(PathBuf),
    #[error("{}: not a directory; give the directory that holds the certificates", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: permission denied; run as root (or as the owner of the PKI directory)", .0.display())]
    PermissionDenied(PathBuf),
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
}

/// Reads every certificate under `dir` (recursively, in name order). Symbolic links to files
/// are followed; links to directories are not (no loops), and names starting with `..` are
/// skipped: they are the hidden copies of Kubernetes' atomic volume writer, whose files are
/// reached through the visible links.
pub fn scan_dir(dir: &Path) -> Result<Scan, PkiError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(PkiError::NotADirectory(dir.to_path_buf())),
        Err(e) => return Err(root_error(dir, e)),
    }
    let mut scan = Scan::default();
    // The root must be listable; below it, an unreadable directory is a problem, not a failure.
    let entries = std::fs::read_dir(dir).map_err(|e| root_error(dir, e))?;
    walk(dir, "", Some(entries), &mut scan);
    Ok(scan)
}

fn root_error(dir: &Path, e: std::io::Error) -> PkiError {
    match e.kind() {
        std::io::ErrorKind::NotFound => PkiError::NotFound(dir.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => PkiError::PermissionDenied(dir.to_path_buf()),
        _ => PkiError::Io(dir.to_path_buf(), e),
    }
}

fn walk(abs: &Path, rel: &str, entries: Option<std::fs::ReadDir>, scan: &mut Scan) {
    let entries = match entries.map_or_else(|| std::fs::read_dir(abs), Ok) {
        Ok(e) => e,
        Err(e) => {
            scan.problems.push(Problem {
                path: rel.to_string(),
                message: format!("cannot list the directory: {e}"),
            });
            return;
        }
    };
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("..") {
            continue;
        }
        let child_rel =
            if rel.is_empty() { name_str.to_string() } else { format!("{rel}/{name_str}") };
        let child = abs.join(&name);
        let Ok(link_meta) = std::fs::symlink_metadata(&child) else { continue };
        if link_meta.is_dir() {
            walk(&child, &child_rel, None, scan);
            continue;
        }
        // A link to a directory is not followed; a dangling link is not a certificate.
        let meta = match std::fs::metadata(&child) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        if meta.len() > MAX_FILE_BYTES {
            if certificate_extension(&child_rel) {
                scan.problems.push(Problem {
                    path: child_rel,
                    message: format!(
                        "{} bytes: too large for a certificate file, not read",
                        meta.len()
                    ),
                });
            }
            continue;
        }
        match std::fs::read(&child) {
            Ok(bytes) => {
                let (certs, problems) = scan_file(&child_rel, &bytes);
                scan.certificates.extend(certs);
                scan.problems.extend(problems);
            }
            Err(e) => scan
                .problems
                .push(Problem { path: child_rel, message: format!("cannot read: {e}") }),
        }
    }
}

/// Names that promise a certificate: such a file without one is a problem, not skipped.
fn certificate_extension(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    [".crt", ".cer", ".pem", ".der"].iter().any(|ext| lower.ends_with(ext))
}

/// PEM labels whose body is an X.509 certificate.
fn is_certificate_label(label: &[u8]) -> bool {
    matches!(label, b"CERTIFICATE" | b"X509 CERTIFICATE" | b"TRUSTED CERTIFICATE")
}

/// The certificates in one file's bytes and what was wrong with it. `path` is only used to
/// name things (and its extension decides whether a file without PEM is worth a problem).
/// Never panics, whatever the bytes.
pub fn scan_file(path: &str, bytes: &[u8]) -> (Vec<Certificate>, Vec<Problem>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    let problem = |message: String| Problem { path: path.to_string(), message };
    let mut saw_pem = false;
    // (label, first line number, base64 body) of the block being read.
    let mut open: Option<(&[u8], usize, Vec<u8>)> = None;
    for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = raw.trim_ascii();
        if let Some(label) =
            line.strip_prefix(b"-----BEGIN ").and_then(|l| l.strip_suffix(b"-----"))
        {
            saw_pem = true;
            if let Some((prev, start, _)) = open.take() {
                if is_certificate_label(prev) {
                    problems.push(problem(format!(
                        "line {}: BEGIN {} has no END",
                        start,
                        String::from_utf8_lossy(prev)
                    )));
                }
            }
            open = Some((label, n + 1, Vec::new()));
        } else if let Some(label) =
            line.strip_prefix(b"-----END ").and_then(|l| l.strip_suffix(b"-----"))
        {
            match open.take() {
                Some((begin, start, body)) if begin == label => {
                    if is_certificate_label(label) {
                        let index = certs.len() as u32;
                        match decode_block(&body).and_then(|der| parse_der(path, index, &der)) {
                            Ok(c) => certs.push(c),
                            Err(e) => {
                                problems.push(problem(format!("certificate at line {start}: {e}")))
                            }
                        }
                    }
                }
                Some((begin, start, _)) => {
                    if is_certificate_label(begin) || is_certificate_label(label) {
                        problems.push(problem(format!(
                            "line {}: BEGIN {} (line {start}) ends with END {}",
                            n + 1,
                            String::from_utf8_lossy(begin),
                            String::from_utf8_lossy(label)
                        )));
                    }
                }
                None => {
                    if is_certificate_label(label) {
                        problems.push(problem(format!(
                            "line {}: END {} without BEGIN",
                            n + 1,
                            String::from_utf8_lossy(label)
                        )));
                    }
                }
            }
        } else if let Some((_, _, body)) = open.as_mut() {
            // Encapsulated headers (`Proc-Type: …`) only occur in encrypted keys; skip them.
            if !line.contains(&b':') {
                body.extend_from_slice(line);
            }
        }
    }
    if let Some((label, start, _)) = open {
        if is_certificate_label(label) {
            problems.push(problem(format!(
                "line {start}: BEGIN {} has no END (truncated file?)",
                String::from_utf8_lossy(label)
            )));
        }
    }
    if !saw_pem && certificate_extension(path) {
        // A .crt may be DER; anything else under that name is damage worth reporting.
        match parse_der(path, 0, bytes) {
            Ok(c) => certs.push(c),
            Err(_) if bytes.is_empty() => problems.push(problem("empty file".to_string())),
            Err(_) => problems
                .push(problem("no PEM certificate, and not a DER certificate either".to_string())),
        }
    }
    (certs, problems)
}

fn decode_block(body: &[u8]) -> Result<Vec<u8>, String> {
    // Padding is optional in the wild; everything else must be proper base64.
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    if body.is_empty() {
        return Err("empty PEM block".to_string());
    }
    ENGINE.decode(body).map_err(|e| format!("bad base64: {e}"))
}

fn parse_der(path: &str, index: u32, der: &[u8]) -> Result<Certificate, String> {
    // Trailing bytes are allowed: OpenSSL's TRUSTED CERTIFICATE appends its trust settings.
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: &x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| "validity date out of range".to_string())
    };
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    ip_addresses.push(ip_string(b))
                }
                _ => {}
            }
        }
    }
    Ok(Certificate {
        path: path.to_string(),
        index,
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        serial: serial_hex(x.raw_serial()),
        not_before: time(&x.validity().not_before)?,
        not_after: time(&x.validity().not_after)?,
        is_ca: x.is_ca(),
        dns_names,
        ip_addresses,
    })
}

/// The serial as an unsigned number in hex: DER's sign-padding zero bytes dropped.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len().saturating_sub(1));
    let digits: String = raw[start..].iter().map(|b| format!("{b:02X}")).collect();
    if digits.is_empty() {
        "00".to_string()
    } else {
        digits
    }
}

fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ipv6Addr::from(a).to_string()
        }
        // Not an address (name constraints use address/mask pairs); keep the bytes visible.
        _ => b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":"),
    }
}

/// How a certificate stands at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Valid,
    /// Valid now, but notAfter is within the warning window.
    Expiring,
    Expired,
    /// notBefore is in the future (a clock problem, or a certificate issued ahead of time).
    NotYetValid,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Expiring => "expiring",
            Status::Expired => "expired",
            Status::NotYetValid => "not yet valid",
        }
    }
}

/// The status of `cert` at `now`, warning `warn` ahead of notAfter. A certificate is expired
/// from its notAfter second on.
pub fn status(cert: &Certificate, now: DateTime<Utc>, warn: Duration) -> Status {
    if cert.not_after <= now {
        Status::Expired
    } else if cert.not_before > now {
        Status::NotYetValid
    } else if (cert.not_after - now).to_std().map_or(true, |left| left <= warn) {
        Status::Expiring
    } else {
        Status::Valid
    }
}

/// A certificate that is not [`Status::Valid`]: enough to name it in a log line, a metric or
/// a health answer without the rest of the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub path: String,
    pub index: u32,
    pub subject: String,
    pub not_after: DateTime<Utc>,
    /// Seconds from `now` to notAfter; negative once expired.
    pub seconds_left: i64,
    pub status: Status,
}

/// The certificates that have expired, expire within `warn`, or are not valid yet, in the
/// order given.
pub fn expiry_findings(certs: &[Certificate], now: DateTime<Utc>, warn: Duration) -> Vec<Finding> {
    certs
        .iter()
        .filter_map(|c| {
            let status = status(c, now, warn);
            (status != Status::Valid).then(|| Finding {
                path: c.path.clone(),
                index: c.index,
                subject: c.subject.clone(),
                not_after: c.not_after,
                seconds_left: (c.not_after - now).num_seconds(),
                status,
            })
        })
        .collect()
}

/// One row of [`check`]: a certificate with its status at the time of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    #[serde(flatten)]
    pub certificate: Certificate,
    pub status: Status,
    /// Seconds from the check's `now` to notAfter; negative once expired.
    pub seconds_left: i64,
}

/// What `etcdguard pki check` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub pki_dir: String,
    pub checked_at: DateTime<Utc>,
    pub warn_seconds: u64,
    pub certificates: Vec<Checked>,
    pub problems: Vec<Problem>,
    /// The certificates that are not valid (expired, expiring or not yet valid).
    pub findings: Vec<Finding>,
}

/// Scans `dir` and judges every certificate at `now` with a warning window of `warn`.
pub fn check(dir: &Path, now: DateTime<Utc>, warn: Duration) -> Result<Check, PkiError> {
    let scan = scan_dir(dir)?;
    let findings = expiry_findings(&scan.certificates, now, warn);
    let certificates = scan
        .certificates
        .into_iter()
        .map(|c| Checked {
            status: status(&c, now, warn),
            seconds_left: (c.not_after - now).num_seconds(),
            certificate: c,
        })
        .collect();
    Ok(Check {
        pki_dir: dir.display().to_string(),
        checked_at: now,
        warn_seconds: warn.as_secs(),
        certificates,
        problems: scan.problems,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cert(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Certificate {
        Certificate {
            path: "x.crt".into(),
            index: 0,
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            serial: "01".into(),
            not_before,
            not_after,
            is_ca: false,
            dns_names: vec![],
            ip_addresses: vec![],
        }
    }

    #[test]
    fn status_boundaries() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let day = chrono::Duration::days(1);
        let warn = Duration::from_secs(30 * 86400);
        assert_eq!(
            status(&cert(now - day, now), now, warn),
            Status::Expired,
            "notAfter == now is expired"
        );
        assert_eq!(
            status(&cert(now - day, now + chrono::Duration::seconds(1)), now, warn),
            Status::Expiring
        );
        assert_eq!(
            status(&cert(now - day, now + day * 30), now, warn),
            Status::Expiring,
            "exactly warn ahead warns"
        );
        assert_eq!(
            status(&cert(now - day, now + day * 30 + chrono::Duration::seconds(1)), now, warn),
            Status::Valid
        );
        assert_eq!(status(&cert(now + day, now + day * 400), now, warn), Status::NotYetValid);
        assert_eq!(status(&cert(now - day, now + day * 400), now, Duration::ZERO), Status::Valid);
        let certs = [
            cert(now - day, now + day * 400),
            cert(now - day * 9, now - day),
            cert(now - day, now + day * 10),
        ];
        let f = expiry_findings(&certs, now, warn);
        assert_eq!(
            f.iter().map(|f| (f.status, f.seconds_left)).collect::<Vec<_>>(),
            vec![(Status::Expired, -86400), (Status::Expiring, 10 * 86400)]
        );
    }

    #[test]
    fn serial_and_ip_formatting() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8F01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(ip_string(&[10, 96, 0, 1]), "10.96.0.1");
        assert_eq!(ip_string(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "::1");
        assert_eq!(ip_string(&[1, 2]), "01:02");
    }

    #[test]
    fn pem_framing_problems_and_quiet_skips() {
        // Keys and other PEM blocks: skipped without a problem, whatever the name.
        let key =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(scan_file("apiserver.key", key), (vec![], vec![]));
        assert_eq!(scan_file("weird.pem", key), (vec![], vec![]));
        // Not PEM, not named like a certificate: skipped.
        assert_eq!(scan_file("serial", b"1000\n"), (vec![], vec![]));
        // Named like a certificate but not one: a problem each.
        for (name, bytes) in
            [("a.crt", &b"\x00\x01garbage"[..]), ("b.crt", b""), ("c.pem", b"hello")]
        {
            let (c, p) = scan_file(name, bytes);
            assert!(c.is_empty() && p.len() == 1, "{name}: {p:?}");
        }
        let bad_b64 = b"-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n";
        let (_, p) = scan_file("x.crt", bad_b64);
        assert!(p.len() == 1 && p[0].message.contains("base64"), "{p:?}");
        let not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let (_, p) = scan_file("x.txt", not_der);
        assert!(p.len() == 1 && p[0].message.contains("not an X.509"), "{p:?}");
        let truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let (_, p) = scan_file("x", truncated);
        assert!(p.len() == 1 && p[0].message.contains("no END"), "{p:?}");
        let mismatched = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END PRIVATE KEY-----\n";
        let (_, p) = scan_file("x", mismatched);
        assert!(p.len() == 1 && p[0].message.contains("ends with END"), "{p:?}");
    }
}
