//! Small renderings shared by the command line and the agent's log.

use std::time::Duration;

use etcdguard_repo::manifest::FileKind;
use etcdguard_repo::Manifest;

/// Bytes in binary units with one decimal (`512 B`, `1.5 MiB`).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A whole duration in its largest exact unit (`7d`, `1h`, `90s`).
pub fn duration_short(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// One line saying what a new backup holds and cost.
pub fn created_line(manifest: &Manifest) -> String {
    let s = &manifest.sizes;
    let reused = 100.0 * (s.blobs_total - s.blobs_added) as f64 / s.blobs_total.max(1) as f64;
    format!(
        "backup {} created: snapshot {} (revision {}), {} files; {} new in the repository ({reused:.1}% of chunks already there)",
        manifest.id,
        human(manifest.snapshot.size),
        manifest.etcd.revision,
        manifest.files.iter().filter(|f| f.kind == FileKind::File).count(),
        human(s.added),
    )
}
