//! Which etcd release line wrote a database, as far as the file tells.
//!
//! Every etcd from 3.4 on records the cluster version in `cluster/clusterVersion` (`3.4.0`,
//! `3.5.0`, …); 3.6 and later also record the storage schema version in `meta/storageVersion`
//! (`3.6.0`, `3.7.0`) once the whole cluster runs that version. Both live in small buckets,
//! so they are read directly, before (and without) a walk of the whole file.

use etcdguard_bolt::write::{collect_bucket, collect_entries};
use etcdguard_bolt::Db;

/// An etcd release line whose on-disk conventions and `etcdutl` output etcdguard knows.
/// Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    V3_4,
    V3_5,
    V3_6,
    V3_7,
}

impl Release {
    pub const ALL: [Release; 4] = [Release::V3_4, Release::V3_5, Release::V3_6, Release::V3_7];
    pub const NEWEST: Release = Release::V3_7;

    /// `3.4` … `3.7`.
    pub fn label(self) -> &'static str {
        match self {
            Release::V3_4 => "3.4",
            Release::V3_5 => "3.5",
            Release::V3_6 => "3.6",
            Release::V3_7 => "3.7",
        }
    }

    /// `3.6` or `3.6.17` → `V3_6`; `None` for a line etcdguard does not know.
    pub fn parse(text: &str) -> Option<Release> {
        let mut parts = text.trim().split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        Release::ALL.into_iter().find(|r| r.label() == format!("{major}.{minor}"))
    }

    /// The release line of a `major.minor.patch` version written by etcd: an older line
    /// than 3.4 counts as 3.4, a newer one than the newest known as the newest (its files
    /// are read the way the newest known release reads them).
    fn of_version(major: i64, minor: i64) -> Release {
        match (major, minor) {
            (m, _) if m < 3 => Release::V3_4,
            (3, n) if n <= 4 => Release::V3_4,
            (3, 5) => Release::V3_5,
            (3, 6) => Release::V3_6,
            _ => Release::NEWEST,
        }
    }

    /// 3.6 removed the v2 store and keeps the membership only in the backend.
    pub fn has_v2_store(self) -> bool {
        self <= Release::V3_5
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The version markers a database carries (raw bytes as stored, lossily decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// `meta/storageVersion` (3.6+).
    pub storage_version: Option<String>,
    /// `cluster/clusterVersion`.
    pub cluster_version: Option<String>,
}

/// Why a release line was chosen for a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// `meta/storageVersion` holds this version.
    StorageVersion(String),
    /// No storage version; `cluster/clusterVersion` holds this one.
    ClusterVersion(String),
    /// Neither marker (or neither parses): the newest known line is assumed.
    Nothing,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Evidence::StorageVersion(v) => write!(f, "its meta/storageVersion is {v}"),
            Evidence::ClusterVersion(v) => {
                write!(f, "it has no meta/storageVersion and its cluster/clusterVersion is {v}")
            }
            Evidence::Nothing => f.write_str(
                "it records neither a storage nor a cluster version; assuming the newest",
            ),
        }
    }
}

impl Provenance {
    /// Reads the two markers. A damaged or unusual root, `meta` or `cluster` bucket gives
    /// `None` for what could not be read: the full walk that follows reports the damage.
    pub fn read(db: &Db<'_>) -> Provenance {
        let Ok(root) = collect_entries(db, db.meta().root, 256) else {
            return Provenance::default();
        };
        let lookup = |bucket: &[u8], key: &[u8]| -> Option<String> {
            let entry = root.iter().find(|e| e.key == bucket && e.is_bucket())?;
            let entries = collect_bucket(db, &entry.value, 4096).ok()?;
            let found = entries.into_iter().find(|e| e.key == key && !e.is_bucket())?;
            Some(String::from_utf8_lossy(&found.value).into_owned())
        };
        Provenance {
            storage_version: lookup(b"meta", b"storageVersion"),
            cluster_version: lookup(b"cluster", b"clusterVersion"),
        }
    }

    /// The release line that wrote the database: the storage version when there is one
    /// (3.6+ write it), else the cluster version, else the newest line.
    pub fn writer(&self) -> (Release, Evidence) {
        if let Some(v) = self.storage_version.as_deref().and_then(SemVer::parse) {
            return (
                Release::of_version(v.major, v.minor),
                Evidence::StorageVersion(v.to_string()),
            );
        }
        if let Some(v) = self.cluster_version.as_deref().and_then(SemVer::parse) {
            return (
                Release::of_version(v.major, v.minor),
                Evidence::ClusterVersion(v.to_string()),
            );
        }
        (Release::NEWEST, Evidence::Nothing)
    }

    /// The storage version as etcd 3.6+ prints it (`""` when absent or not a version).
    pub fn storage_version_text(&self) -> String {
        self.storage_version
            .as_deref()
            .and_then(SemVer::parse)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }
}

/// A `major.minor.patch[-pre][+meta]` version with the parsing rules etcd's semver library
/// applies (each number a base-10 int64, identifiers of `[0-9A-Za-z-]` separated by dots),
/// printed back in its canonical form (`03.6.0` reads as and prints `3.6.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemVer {
    pub major: i64,
    pub minor: i64,
    pub patch: i64,
    pub pre_release: String,
    pub metadata: String,
}

impl SemVer {
    pub fn parse(text: &str) -> Option<SemVer> {
        let (rest, metadata) = text.split_once('+').unwrap_or((text, ""));
        let (core, pre_release) = rest.split_once('-').unwrap_or((rest, ""));
        let identifier_ok = |id: &str| {
            id.is_empty()
                || id.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if !identifier_ok(pre_release) || !identifier_ok(metadata) {
            return None;
        }
        let mut numbers = core.splitn(3, '.');
        let mut next = || numbers.next()?.parse::<i64>().ok();
        let (major, minor, patch) = (next()?, next()?, next()?);
        Some(SemVer {
            major,
            minor,
            patch,
            pre_release: pre_release.to_string(),
            metadata: metadata.to_string(),
        })
    }
}

impl std::fmt::Display for SemVer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre_release.is_empty() {
            write!(f, "-{}", self.pre_release)?;
        }
        if !self.metadata.is_empty() {
            write!(f, "+{}", self.metadata)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_follows_etcds_parser() {
        assert_eq!(SemVer::parse("3.6.0").unwrap().to_string(), "3.6.0");
        assert_eq!(SemVer::parse("03.6.0").unwrap().to_string(), "3.6.0");
        assert_eq!(
            SemVer::parse("3.6.0-").unwrap().to_string(),
            "3.6.0",
            "an empty pre-release is none"
        );
        assert_eq!(SemVer::parse("3.6.0-rc.1+abc").unwrap().to_string(), "3.6.0-rc.1+abc");
        for bad in ["", "+3.6.0", "3.6", "3.6.0.1", "3.6.x", "3.6.0-a..b", "3.6.0+a_b", "3.6. 0"] {
            assert_eq!(SemVer::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn writer_prefers_the_storage_version() {
        let p = |s: Option<&str>, c: Option<&str>| Provenance {
            storage_version: s.map(Into::into),
            cluster_version: c.map(Into::into),
        };
        assert_eq!(p(Some("3.6.0"), Some("3.7.0")).writer().0, Release::V3_6);
        assert_eq!(p(Some("3.7.0"), None).writer().0, Release::V3_7);
        assert_eq!(p(Some("3.9.0"), None).writer().0, Release::NEWEST);
        assert_eq!(
            p(None, Some("3.5.0")).writer(),
            (Release::V3_5, Evidence::ClusterVersion("3.5.0".into()))
        );
        assert_eq!(p(None, Some("3.4.0")).writer().0, Release::V3_4);
        assert_eq!(p(None, Some("3.3.0")).writer().0, Release::V3_4);
        assert_eq!(p(Some("garbage"), Some("3.5.0")).writer().0, Release::V3_5);
        assert_eq!(p(None, None).writer(), (Release::NEWEST, Evidence::Nothing));
        assert_eq!(Release::parse("3.6.17"), Some(Release::V3_6));
        assert_eq!(Release::parse("3.8"), None);
    }
}
