//! `snapshot status`: the numbers `etcdutl snapshot status` (3.4/3.5 semantics) prints, computed
//! in one streaming pass over the bbolt file, and their exact text forms.

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions, WalkReport};

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C over every bucket name, key and value in byte order.
    pub hash: u32,
    /// Largest main revision in the `key` bucket (0 when it is empty).
    pub revision: i64,
    /// Key/value pairs in all top-level buckets (3.4/3.5 meaning).
    pub total_key: u64,
    /// High-water mark × page size: the database without trailer or slack.
    pub total_size: u64,
    /// `meta/storageVersion` (written by 3.6+), e.g. `3.6.0`.
    pub storage_version: Option<String>,
    /// `cluster/clusterVersion`, e.g. `3.5.0`: the version the cluster ran at.
    pub cluster_version: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StatusError {
    /// The bbolt structure is damaged; the report lists where.
    #[error("snapshot file integrity check failed: {} problem{} found", .0.problem_count, if .0.problem_count == 1 { "" } else { "s" })]
    Integrity(Box<WalkReport>),
    /// A top-level entry that is not a bucket: etcd never writes one.
    #[error("top-level entry {0} is not a bucket; this is not an etcd database")]
    NotABucket(String),
    /// The newest revision key is too short to hold a revision.
    #[error("the last key of bucket \"key\" is {0} bytes long; a revision key has 17 or 18")]
    BadRevisionKey(usize),
}

/// The `-w` output formats of `etcdutl snapshot status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Table,
    Json,
    Fields,
}

#[derive(Default)]
struct StatusVisitor {
    hash: u32,
    total_key: u64,
    in_key_bucket: bool,
    last_revision_key: Option<Vec<u8>>,
    non_bucket_at_root: Option<Vec<u8>>,
    bucket: Vec<u8>,
    storage_version: Option<String>,
    cluster_version: Option<String>,
}

impl Visitor<'_> for StatusVisitor {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        match depth {
            0 => {
                if !is_bucket && self.non_bucket_at_root.is_none() {
                    self.non_bucket_at_root = Some(key.to_vec());
                }
                // The bucket name goes into the hash before its contents (which follow).
                self.hash = crc32c::crc32c_append(self.hash, key);
            }
            1 => {
                self.hash = crc32c::crc32c_append(self.hash, key);
                if !is_bucket {
                    self.hash = crc32c::crc32c_append(self.hash, value);
                }
                self.total_key += 1;
                match (self.bucket.as_slice(), key) {
                    (b"meta", b"storageVersion") => self.storage_version = Some(String::from_utf8_lossy(value).into_owned()),
                    (b"cluster", b"clusterVersion") => self.cluster_version = Some(String::from_utf8_lossy(value).into_owned()),
                    _ => {}
                }
                if self.in_key_bucket {
                    match &mut self.last_revision_key {
                        Some(last) => {
                            last.clear();
                            last.extend_from_slice(key);
                        }
                        None => self.last_revision_key = Some(key.to_vec()),
                    }
                }
            }
            _ => {}
        }
    }

    fn enter_bucket(&mut self, depth: usize, name: &[u8]) {
        if depth == 1 {
            self.in_key_bucket = name == b"key";
            self.bucket = name.to_vec();
        }
    }

    fn leave_bucket(&mut self, depth: usize, _name: &[u8]) {
        if depth == 1 {
            self.in_key_bucket = false;
            self.bucket.clear();
        }
    }
}

/// Computes the status of an opened database. Fails, like etcdutl, when the integrity check
/// finds any problem. `release` is called periodically to let a memory map shed pages.
pub fn status(db: &Db<'_>, release: Option<&dyn Fn()>) -> Result<Status, StatusError> {
    let mut v = StatusVisitor::default();
    let opts = WalkOptions { release, ..WalkOptions::default() };
    let report = walk(db, &mut v, &opts);
    if !report.is_ok() {
        return Err(StatusError::Integrity(Box::new(report)));
    }
    if let Some(name) = v.non_bucket_at_root {
        return Err(StatusError::NotABucket(etcdguard_bolt::walk::display_key(&name)));
    }
    let revision = match v.last_revision_key {
        None => 0,
        Some(k) if k.len() < 17 => return Err(StatusError::BadRevisionKey(k.len())),
        Some(k) => i64::from_be_bytes(k[..8].try_into().unwrap()),
    };
    Ok(Status {
        hash: v.hash,
        revision,
        total_key: v.total_key,
        total_size: db.total_size(),
        storage_version: v.storage_version,
        cluster_version: v.cluster_version,
    })
}

impl Status {
    /// The text `etcdutl snapshot status -w <format>` prints, newline included.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Simple => format!(
                "{:x}, {}, {}, {}\n",
                self.hash,
                self.revision,
                self.total_key,
                humanize_bytes(self.total_size)
            ),
            Format::Json => format!(
                "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
                self.hash, self.revision, self.total_key, self.total_size
            ),
            Format::Fields => format!(
                "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
                self.hash, self.revision, self.total_key, self.total_size
            ),
            Format::Table => render_table(
                &["hash", "revision", "total keys", "total size"],
                &[
                    format!("{:x}", self.hash),
                    self.revision.to_string(),
                    self.total_key.to_string(),
                    humanize_bytes(self.total_size),
                ],
            ),
        }
    }
}

/// A one-row table in the style etcdutl prints: centred upper-case headers, right-aligned cells.
fn render_table(headers: &[&str], cells: &[String]) -> String {
    let widths: Vec<usize> =
        headers.iter().zip(cells).map(|(h, c)| h.chars().count().max(c.chars().count())).collect();
    let border: String = std::iter::once("+".to_string())
        .chain(widths.iter().map(|w| format!("{}+", "-".repeat(w + 2))))
        .collect::<String>()
        + "\n";
    let mut out = border.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let text = h.to_uppercase();
        let pad = w - text.chars().count();
        let left = pad / 2;
        out.push_str(&format!(" {}{}{} |", " ".repeat(left), text, " ".repeat(pad - left)));
    }
    out.push('\n');
    out.push_str(&border);
    out.push('|');
    for (c, w) in cells.iter().zip(&widths) {
        out.push_str(&format!(" {c:>w$} |", w = *w));
    }
    out.push('\n');
    out.push_str(&border);
    out
}

/// Sizes as etcdutl prints them (SI units, one decimal below 10): `20 kB`, `8.2 kB`, `1.6 GB`.
pub fn humanize_bytes(s: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if s < 10 {
        return format!("{s} B");
    }
    let mut e = 0;
    let mut scale = 1u64;
    while e + 1 < UNITS.len() && scale.checked_mul(1000).is_some_and(|next| next <= s) {
        scale *= 1000;
        e += 1;
    }
    let val = ((s as f64 / scale as f64) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_go_humanize() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(20_480), "20 kB");
        assert_eq!(humanize_bytes(8_192), "8.2 kB");
        assert_eq!(humanize_bytes(24_576), "25 kB");
        assert_eq!(humanize_bytes(798_720), "799 kB");
        assert_eq!(humanize_bytes(999_999), "1000 kB");
        assert_eq!(humanize_bytes(1_600_000_000), "1.6 GB");
    }

    #[test]
    fn renders_every_format() {
        let s = Status { hash: 0x3307ab0, revision: 7, total_key: 14, total_size: 20_480, storage_version: None, cluster_version: None };
        assert_eq!(s.render(Format::Simple), "3307ab0, 7, 14, 20 kB\n");
        assert_eq!(s.render(Format::Json), "{\"hash\":53508784,\"revision\":7,\"totalKey\":14,\"totalSize\":20480}\n");
        assert_eq!(s.render(Format::Fields), "\"Hash\" : 53508784\n\"Revision\" : 7\n\"Keys\" : 14\n\"Size\" : 20480\n");
        let table = "+---------+----------+------------+------------+\n\
                     |  HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
                     +---------+----------+------------+------------+\n\
                     | 3307ab0 |        7 |         14 |      20 kB |\n\
                     +---------+----------+------------+------------+\n";
        assert_eq!(s.render(Format::Table), table);
    }
}
