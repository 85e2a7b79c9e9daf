//! `snapshot status`: the numbers `etcdutl snapshot status` prints, computed in one streaming
//! pass over the bbolt file, and their exact text forms, for each release line:
//!
//! - 3.4/3.5: hash, revision, total keys (every entry of every top-level bucket), total size.
//! - 3.6: a fifth column, `version` (`meta/storageVersion`, `""` when absent), and total keys
//!   becomes the number of live user keys (keys whose newest revision is not a tombstone).
//! - 3.7: as 3.6, but the table is drawn with box-drawing characters.

use std::collections::HashSet;

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions, WalkReport};

use crate::release::{Provenance, Release};

/// What `snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C over every bucket name, key and value in byte order.
    pub hash: u32,
    /// Largest main revision in the `key` bucket (0 when it is empty).
    pub revision: i64,
    /// 3.4/3.5: key/value pairs in all top-level buckets; 3.6+: live user keys.
    pub total_key: u64,
    /// High-water mark × page size: the database without trailer or slack.
    pub total_size: u64,
    /// `meta/storageVersion` (written by 3.6+), e.g. `3.6.0`.
    pub storage_version: Option<String>,
    /// `cluster/clusterVersion`, e.g. `3.5.0`: the version the cluster ran at.
    pub cluster_version: Option<String>,
    /// The release whose `etcdutl snapshot status` this is: it fixes what `total_key` counts
    /// and the output forms of [`Status::render`].
    pub release: Release,
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
    /// Counting live keys (3.6+) needs every revision's `mvccpb.KeyValue`; this one is not.
    #[error("the value of revision key {key} in bucket \"key\" is not a KeyValue: {why}")]
    BadKeyValue { key: String, why: String },
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
struct StatusVisitor<'a> {
    hash: u32,
    total_key: u64,
    in_key_bucket: bool,
    last_revision_key: Option<Vec<u8>>,
    non_bucket_at_root: Option<Vec<u8>>,
    bucket: Vec<u8>,
    storage_version: Option<String>,
    cluster_version: Option<String>,
    /// 3.6+: the user keys whose newest revision so far is a put. The `key` bucket is walked
    /// in revision order, so the last word on each key wins. The keys are borrowed from the
    /// file's map, not copied.
    live_keys: Option<HashSet<&'a [u8]>>,
    bad_key_value: Option<(Vec<u8>, String)>,
}

impl<'a> StatusVisitor<'a> {
    fn track_live_key(&mut self, revision_key: &[u8], value: &'a [u8]) {
        let Some(live) = self.live_keys.as_mut() else { return };
        match user_key(value) {
            Ok(key) if is_tombstone(revision_key) => {
                live.remove(key);
            }
            Ok(key) => {
                live.insert(key);
            }
            Err(why) => {
                if self.bad_key_value.is_none() {
                    self.bad_key_value = Some((revision_key.to_vec(), why));
                }
            }
        }
    }
}

/// A deletion's revision key is the 17-byte revision plus `t`.
fn is_tombstone(revision_key: &[u8]) -> bool {
    revision_key.len() == 18 && revision_key[17] == b't'
}

/// Field 1 (`key`) of an `mvccpb.KeyValue`, other fields skipped as a protobuf decoder does.
fn user_key(value: &[u8]) -> Result<&[u8], String> {
    let mut key: &[u8] = &[];
    crate::proto::for_each_field(value, |field, v| {
        match (field, v) {
            (1, crate::proto::Value::Bytes(b)) => key = b,
            (1, other) => return Err(format!("field 1 (key) has the wrong type ({other:?})")),
            _ => {}
        }
        Ok(())
    })?;
    Ok(key)
}

impl<'a> Visitor<'a> for StatusVisitor<'a> {
    fn entry(&mut self, depth: usize, key: &'a [u8], value: &'a [u8], is_bucket: bool) {
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
                    (b"meta", b"storageVersion") => {
                        self.storage_version = Some(String::from_utf8_lossy(value).into_owned())
                    }
                    (b"cluster", b"clusterVersion") => {
                        self.cluster_version = Some(String::from_utf8_lossy(value).into_owned())
                    }
                    _ => {}
                }
                if self.in_key_bucket {
                    self.track_live_key(key, value);
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

/// Computes the status of an opened database as etcdutl 3.5 does (every entry counted).
/// Fails, like etcdutl, when the integrity check finds any problem. `release` is called
/// periodically to let a memory map shed pages.
pub fn status(db: &Db<'_>, release: Option<&dyn Fn()>) -> Result<Status, StatusError> {
    status_as(db, Release::V3_5, release)
}

/// Computes the status as `etcdutl snapshot status` of release line `as_of` does. From 3.6
/// on that keeps a set of the live user keys (borrowed from the map: a pointer and length
/// each) and refuses a `key` bucket value that is not a KeyValue, as etcdutl does.
pub fn status_as<'a>(
    db: &Db<'a>,
    as_of: Release,
    release: Option<&dyn Fn()>,
) -> Result<Status, StatusError> {
    let mut v = StatusVisitor {
        live_keys: (as_of >= Release::V3_6).then(HashSet::new),
        ..StatusVisitor::default()
    };
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
    if let Some((key, why)) = v.bad_key_value {
        let key = match key.len() {
            17 | 18 => format!(
                "{}_{}",
                i64::from_be_bytes(key[..8].try_into().unwrap()),
                i64::from_be_bytes(key[9..17].try_into().unwrap())
            ),
            _ => etcdguard_bolt::walk::display_key(&key),
        };
        return Err(StatusError::BadKeyValue { key, why });
    }
    let total_key = match &v.live_keys {
        Some(live) => live.len() as u64,
        None => v.total_key,
    };
    Ok(Status {
        hash: v.hash,
        revision,
        total_key,
        total_size: db.total_size(),
        storage_version: v.storage_version,
        cluster_version: v.cluster_version,
        release: as_of,
    })
}

impl Status {
    /// The `version` column of 3.6+: the storage version in etcd's canonical form, `""` when
    /// the file has none (or not a version).
    pub fn version_column(&self) -> String {
        Provenance { storage_version: self.storage_version.clone(), cluster_version: None }
            .storage_version_text()
    }

    /// The text `etcdutl snapshot status -w <format>` of [`Status::release`] prints, newline
    /// included.
    pub fn render(&self, format: Format) -> String {
        let with_version = self.release >= Release::V3_6;
        let version = if with_version { Some(self.version_column()) } else { None };
        match format {
            Format::Simple => {
                let mut row = self.row();
                row.extend(version);
                format!("{}\n", row.join(", "))
            }
            Format::Json => {
                let version = version
                    .map(|v| format!(",\"version\":{}", serde_json::Value::String(v)))
                    .unwrap_or_default();
                format!(
                    "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}{version}}}\n",
                    self.hash, self.revision, self.total_key, self.total_size
                )
            }
            Format::Fields => {
                let version = version.map(|v| format!("\"Version\" : {v}\n")).unwrap_or_default();
                format!(
                    "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n{version}",
                    self.hash, self.revision, self.total_key, self.total_size
                )
            }
            Format::Table => {
                let mut headers = vec!["hash", "revision", "total keys", "total size"];
                let mut row = self.row();
                if let Some(v) = version {
                    headers.push("version");
                    row.push(v);
                }
                let style = if self.release >= Release::V3_7 { &BOX_DRAWING } else { &ASCII };
                render_table(&headers, &row, style)
            }
        }
    }

    fn row(&self) -> Vec<String> {
        vec![
            format!("{:x}", self.hash),
            self.revision.to_string(),
            self.total_key.to_string(),
            humanize_bytes(self.total_size),
        ]
    }
}

/// The characters of a table's frame: corners, joints and lines, by row position.
struct TableStyle {
    /// (left, joint, right, line) for the top border, the line under the header, the bottom.
    top: [char; 4],
    middle: [char; 4],
    bottom: [char; 4],
    vertical: char,
}

/// etcdutl up to 3.6 (tablewriter 0.0.x).
const ASCII: TableStyle = TableStyle {
    top: ['+', '+', '+', '-'],
    middle: ['+', '+', '+', '-'],
    bottom: ['+', '+', '+', '-'],
    vertical: '|',
};

/// etcdutl 3.7 (tablewriter 1.x).
const BOX_DRAWING: TableStyle = TableStyle {
    top: ['┌', '┬', '┐', '─'],
    middle: ['├', '┼', '┤', '─'],
    bottom: ['└', '┴', '┘', '─'],
    vertical: '│',
};

/// A one-row table in the style etcdutl prints: centred upper-case headers (the extra space
/// of an odd padding on the right), right-aligned cells, one space inside each frame line.
fn render_table(headers: &[&str], cells: &[String], style: &TableStyle) -> String {
    let widths: Vec<usize> =
        headers.iter().zip(cells).map(|(h, c)| h.chars().count().max(c.chars().count())).collect();
    let border = |[left, joint, right, line]: [char; 4]| {
        let segments: Vec<String> = widths.iter().map(|w| line.to_string().repeat(w + 2)).collect();
        format!("{left}{}{right}\n", segments.join(&joint.to_string()))
    };
    let row = |cells: Vec<String>| {
        let v = style.vertical;
        format!(
            "{v}{}{v}\n",
            cells.iter().map(|c| format!(" {c} ")).collect::<Vec<_>>().join(&v.to_string())
        )
    };
    let header_cells = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let text = h.to_uppercase();
            let pad = w - text.chars().count();
            format!("{}{}{}", " ".repeat(pad / 2), text, " ".repeat(pad - pad / 2))
        })
        .collect();
    let value_cells = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}", w = *w)).collect();
    let mut out = border(style.top);
    out.push_str(&row(header_cells));
    out.push_str(&border(style.middle));
    out.push_str(&row(value_cells));
    out.push_str(&border(style.bottom));
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
        let mut s = Status {
            hash: 0x3307ab0,
            revision: 7,
            total_key: 14,
            total_size: 20_480,
            storage_version: None,
            cluster_version: None,
            release: Release::V3_5,
        };
        assert_eq!(s.render(Format::Simple), "3307ab0, 7, 14, 20 kB\n");
        assert_eq!(
            s.render(Format::Json),
            "{\"hash\":53508784,\"revision\":7,\"totalKey\":14,\"totalSize\":20480}\n"
        );
        assert_eq!(
            s.render(Format::Fields),
            "\"Hash\" : 53508784\n\"Revision\" : 7\n\"Keys\" : 14\n\"Size\" : 20480\n"
        );
        let table = "+---------+----------+------------+------------+\n\
                     |  HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
                     +---------+----------+------------+------------+\n\
                     | 3307ab0 |        7 |         14 |      20 kB |\n\
                     +---------+----------+------------+------------+\n";
        assert_eq!(s.render(Format::Table), table);

        s.release = Release::V3_6;
        assert_eq!(
            s.render(Format::Simple),
            "3307ab0, 7, 14, 20 kB, \n",
            "no storage version: an empty column"
        );
        s.storage_version = Some("03.6.0".into());
        assert_eq!(s.render(Format::Simple), "3307ab0, 7, 14, 20 kB, 3.6.0\n");
        assert_eq!(
            s.render(Format::Json),
            "{\"hash\":53508784,\"revision\":7,\"totalKey\":14,\"totalSize\":20480,\"version\":\"3.6.0\"}\n"
        );
        assert!(s.render(Format::Fields).ends_with("\"Size\" : 20480\n\"Version\" : 3.6.0\n"));
        let table = "+---------+----------+------------+------------+---------+\n\
                     |  HASH   | REVISION | TOTAL KEYS | TOTAL SIZE | VERSION |\n\
                     +---------+----------+------------+------------+---------+\n\
                     | 3307ab0 |        7 |         14 |      20 kB |   3.6.0 |\n\
                     +---------+----------+------------+------------+---------+\n";
        assert_eq!(s.render(Format::Table), table);
        s.release = Release::V3_7;
        let table = "┌─────────┬──────────┬────────────┬────────────┬─────────┐\n\
                     │  HASH   │ REVISION │ TOTAL KEYS │ TOTAL SIZE │ VERSION │\n\
                     ├─────────┼──────────┼────────────┼────────────┼─────────┤\n\
                     │ 3307ab0 │        7 │         14 │      20 kB │   3.6.0 │\n\
                     └─────────┴──────────┴────────────┴────────────┴─────────┘\n";
        assert_eq!(s.render(Format::Table), table);
    }

    #[test]
    fn live_keys_follow_the_newest_revision() {
        assert!(is_tombstone(&[0; 18].iter().copied().take(17).chain([b't']).collect::<Vec<u8>>()));
        assert!(!is_tombstone(&[0; 17]));
        // key "a" (field 1), value "x" (field 5), an unknown field 9 is skipped.
        assert_eq!(user_key(&[0x0a, 1, b'a', 0x2a, 1, b'x', 0x48, 1]).unwrap(), b"a");
        assert!(user_key(&[0x08, 1]).is_err(), "key as a varint");
        assert!(user_key(&[0x0a, 5, b'a']).is_err(), "cut short");
    }
}
