//! Certificates of the node's PKI directory: recorded in a backup's manifest by
//! `backup create --pki-dir`, and watched by the agent (expiry metric, `/healthz` warning).
//! The scan itself is `etcdguard_node::pki`, the same code as `pki check`.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcdguard_node::pki;
use etcdguard_repo::manifest::CertificateRecord;

/// Every certificate under `dir`, as a manifest records it. A file that cannot be read or
/// parsed is noted and skipped: the backup of the directory itself goes on (its files are
/// stored whatever they hold).
pub fn records_of_dir(dir: &Path, note: &mut dyn FnMut(&str)) -> Vec<CertificateRecord> {
    match pki::scan_dir(dir) {
        Ok(scan) => {
            for p in &scan.problems {
                note(&format!(
                    "note: {}/{}: {} (not recorded in the manifest)",
                    dir.display(),
                    p.path,
                    p.message
                ));
            }
            scan.certificates.iter().map(record).collect()
        }
        Err(e) => {
            note(&format!("note: certificates not recorded in the manifest: {e}"));
            Vec::new()
        }
    }
}

/// A scanned certificate as the manifest records it.
pub fn record(c: &pki::Certificate) -> CertificateRecord {
    CertificateRecord {
        path: c.display_name(),
        subject: c.subject.clone(),
        not_after: c.not_after,
        not_before: Some(c.not_before),
        serial: c.serial.clone(),
        is_ca: c.is_ca,
    }
}

/// A line for the operator when `cert` has expired or expires within `warn` at `now`.
pub fn expiry_warning(
    cert: &CertificateRecord,
    now: DateTime<Utc>,
    warn: Duration,
) -> Option<String> {
    let left = cert.not_after.signed_duration_since(now);
    let at = cert.not_after.format("%Y-%m-%dT%H:%M:%SZ");
    if left <= chrono::Duration::zero() {
        return Some(format!("certificate {} ({}) expired at {at}", cert.path, cert.subject));
    }
    let left = left.to_std().unwrap_or(Duration::ZERO);
    (left <= warn).then(|| {
        format!("certificate {} ({}) expires in {} (at {at})", cert.path, cert.subject, rough(left))
    })
}

/// Days and hours (or minutes under a day): precise enough for an expiry.
pub fn rough(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m", s.div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(path: &str, not_after: DateTime<Utc>) -> CertificateRecord {
        CertificateRecord {
            path: path.into(),
            subject: "CN=x".into(),
            not_after,
            not_before: None,
            serial: String::new(),
            is_ca: false,
        }
    }

    #[test]
    fn warns_within_the_window_and_after_expiry_only() {
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let warn = Duration::from_secs(30 * 86_400);
        let soon = expiry_warning(&cert("a.crt", now + day * 5), now, warn).unwrap();
        assert!(soon.contains("a.crt (CN=x) expires in 5d 0h"), "{soon}");
        assert!(expiry_warning(&cert("b.crt", now + day * 365), now, warn).is_none());
        let gone = expiry_warning(&cert("c.crt", now - day), now, warn).unwrap();
        assert!(gone.contains("expired at"), "{gone}");
        // The window's edge counts as within.
        assert!(expiry_warning(&cert("d.crt", now + day * 30), now, warn).is_some());
    }
}
