//! `snapshot verify`: everything `status` checks (bbolt structure) plus etcd's own schema:
//! every revision key well formed, every stored value a decodable `mvccpb.KeyValue` whose
//! revisions agree with its key, and the `meta`, `members`, `lease` buckets readable.
//!
//! The checks keep memory constant: nothing is remembered per user key.

use etcdguard_bolt::walk::display_key;
use etcdguard_bolt::{walk, Db, MetaError, Visitor, WalkOptions, WalkReport};

use crate::proto::{KeyValue, Lease};
use crate::status::Status;

/// One problem in etcd's data (as opposed to the bbolt structure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub bucket: String,
    /// The key, as a revision (`1234_0`, `1234_0 tombstone`) in the `key` bucket.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bucket {:?}", self.bucket)?;
        if let Some(key) = &self.key {
            write!(f, " at key {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything verify learned.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Meta pages 0 and 1 as validated (one damaged meta is survivable, both are not).
    pub metas: [Result<etcdguard_bolt::Meta, MetaError>; 2],
    pub active_meta: usize,
    pub structure: WalkReport,
    pub schema_problems: Vec<SchemaProblem>,
    pub schema_problem_count: usize,
    /// Present when the structure is sound.
    pub status: Option<Status>,
    pub stats: SchemaStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStats {
    pub buckets: Vec<String>,
    pub revisions: u64,
    pub tombstones: u64,
    pub max_revision: i64,
    pub leases: u64,
    pub members: u64,
    pub consistent_index: Option<u64>,
    pub term: Option<u64>,
    pub compacted_revision: Option<i64>,
    pub scheduled_compact_revision: Option<i64>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.structure.is_ok()
            && self.schema_problem_count == 0
            && self.metas.iter().all(|m| m.is_ok())
    }
}

const MAX_PROBLEMS: usize = 100;

struct SchemaVisitor {
    bucket: Vec<u8>,
    problems: Vec<SchemaProblem>,
    count: usize,
    stats: SchemaStats,
    hash: u32,
    total_key: u64,
    last_key_rev: Option<i64>,
    root_non_bucket: Vec<String>,
}

impl SchemaVisitor {
    fn problem(&mut self, key: Option<String>, message: String) {
        self.count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            let bucket = String::from_utf8_lossy(&self.bucket).into_owned();
            self.problems.push(SchemaProblem { bucket, key, message });
        }
    }

    fn check_revision_entry(&mut self, key: &[u8], value: &[u8]) {
        let (main, sub, tombstone) = match parse_revision(key) {
            Ok(r) => r,
            Err(why) => return self.problem(Some(display_key(key)), why),
        };
        let name = format!("{main}_{sub}{}", if tombstone { " tombstone" } else { "" });
        self.stats.revisions += 1;
        self.stats.max_revision = self.stats.max_revision.max(main);
        self.last_key_rev = Some(main);
        if value.is_empty() {
            // A `--bump-revision` marker: a plain revision key with no value.
            if tombstone {
                self.problem(Some(name), "tombstone without a value".into());
            }
            return;
        }
        let kv = match KeyValue::decode(value) {
            Ok(kv) => kv,
            Err(why) => {
                return self.problem(Some(name), format!("value is not an mvccpb.KeyValue: {why}"))
            }
        };
        if kv.key.is_empty() {
            return self.problem(Some(name), "KeyValue without a user key".into());
        }
        if tombstone {
            self.stats.tombstones += 1;
            return;
        }
        let user_key = display_key(kv.key);
        if kv.mod_revision != main {
            self.problem(
                Some(name.clone()),
                format!(
                    "{user_key}: mod_revision {} differs from the key's revision",
                    kv.mod_revision
                ),
            );
        }
        if kv.create_revision <= 0 || kv.create_revision > main {
            self.problem(
                Some(name.clone()),
                format!("{user_key}: create_revision {} outside 1..={main}", kv.create_revision),
            );
        }
        if kv.version < 1 {
            self.problem(
                Some(name.clone()),
                format!("{user_key}: version {} is below 1", kv.version),
            );
        } else if kv.version == 1 && kv.create_revision != main {
            self.problem(
                Some(name),
                format!("{user_key}: first version but created at revision {}", kv.create_revision),
            );
        }
    }

    fn check_meta_entry(&mut self, key: &[u8], value: &[u8]) {
        let name = display_key(key);
        match key {
            b"consistent_index" | b"term" => match <[u8; 8]>::try_from(value) {
                Ok(b) => {
                    let v = u64::from_be_bytes(b);
                    if key == b"term" {
                        self.stats.term = Some(v)
                    } else {
                        self.stats.consistent_index = Some(v)
                    }
                }
                Err(_) => {
                    self.problem(Some(name), format!("expected 8 bytes, found {}", value.len()))
                }
            },
            b"scheduledCompactRev" | b"finishedCompactRev" => match parse_revision(value) {
                Ok((main, _, false)) => {
                    if key == b"finishedCompactRev" {
                        self.stats.compacted_revision = Some(main)
                    } else {
                        self.stats.scheduled_compact_revision = Some(main)
                    }
                }
                Ok(_) => self.problem(Some(name), "compaction revision marked as tombstone".into()),
                Err(why) => self.problem(Some(name), why),
            },
            b"confState" if serde_json::from_slice::<serde_json::Value>(value).is_err() => {
                self.problem(Some(name), "not valid JSON".into());
            }
            _ => {}
        }
    }

    fn check_member(&mut self, key: &[u8], value: &[u8]) {
        let name = display_key(key);
        let id = std::str::from_utf8(key).ok().and_then(|s| u64::from_str_radix(s, 16).ok());
        let Some(id) = id else {
            return self.problem(Some(name), "member key is not a hex member id".into());
        };
        self.stats.members += 1;
        match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(v) if v["id"].as_u64() == Some(id) && v["peerURLs"].is_array() => {}
            Ok(_) => self.problem(
                Some(name),
                "member record does not match its id or lacks peerURLs".into(),
            ),
            Err(e) => self.problem(Some(name), format!("member record is not valid JSON: {e}")),
        }
    }

    fn check_lease(&mut self, key: &[u8], value: &[u8]) {
        let name = display_key(key);
        let Ok(id) = <[u8; 8]>::try_from(key) else {
            return self
                .problem(Some(name), format!("lease id of {} bytes, expected 8", key.len()));
        };
        self.stats.leases += 1;
        match Lease::decode(value) {
            Ok(lease) if lease.id == i64::from_be_bytes(id) => {}
            Ok(lease) => self.problem(Some(name), format!("lease record carries id {}", lease.id)),
            Err(why) => self.problem(Some(name), format!("not a leasepb.Lease: {why}")),
        }
    }
}

impl Visitor<'_> for SchemaVisitor {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        match depth {
            0 => {
                self.hash = crc32c::crc32c_append(self.hash, key);
                if is_bucket {
                    self.stats.buckets.push(String::from_utf8_lossy(key).into_owned());
                } else {
                    self.root_non_bucket.push(display_key(key));
                }
            }
            1 => {
                self.hash = crc32c::crc32c_append(self.hash, key);
                if !is_bucket {
                    self.hash = crc32c::crc32c_append(self.hash, value);
                }
                self.total_key += 1;
                if is_bucket {
                    return self.problem(
                        Some(display_key(key)),
                        "nested bucket; etcd never writes one".into(),
                    );
                }
                match self.bucket.as_slice() {
                    b"key" => self.check_revision_entry(key, value),
                    b"meta" => self.check_meta_entry(key, value),
                    b"members" => self.check_member(key, value),
                    b"members_removed" if value != b"removed" => {
                        self.problem(Some(display_key(key)), "value is not \"removed\"".into())
                    }
                    b"lease" => self.check_lease(key, value),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn enter_bucket(&mut self, depth: usize, name: &[u8]) {
        if depth == 1 {
            self.bucket = name.to_vec();
        }
    }
}

/// Splits an etcd revision key: 8-byte main, `_`, 8-byte sub, optional `t` for a tombstone.
pub fn parse_revision(key: &[u8]) -> Result<(i64, i64, bool), String> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        18 => return Err(format!("18-byte revision key ends in {:#04x}, not 't'", key[17])),
        n => return Err(format!("revision key of {n} bytes, expected 17 or 18")),
    };
    if key[8] != b'_' {
        return Err(format!("revision key has {:#04x} where '_' belongs", key[8]));
    }
    let main = i64::from_be_bytes(key[..8].try_into().unwrap());
    let sub = i64::from_be_bytes(key[9..17].try_into().unwrap());
    if main < 0 || sub < 0 {
        return Err(format!("negative revision {main}_{sub}"));
    }
    Ok((main, sub, tombstone))
}

/// Runs every check on an opened database.
pub fn verify(db: &Db<'_>, release: Option<&dyn Fn()>) -> VerifyReport {
    let mut v = SchemaVisitor {
        bucket: Vec::new(),
        problems: Vec::new(),
        count: 0,
        stats: SchemaStats::default(),
        hash: 0,
        total_key: 0,
        last_key_rev: None,
        root_non_bucket: Vec::new(),
    };
    let opts = WalkOptions { release, max_problems: MAX_PROBLEMS, ..WalkOptions::default() };
    let structure = walk(db, &mut v, &opts);
    v.bucket.clear();
    for name in std::mem::take(&mut v.root_non_bucket) {
        v.problem(Some(name), "top-level entry is not a bucket".into());
    }
    for required in ["key", "meta"] {
        if !v.stats.buckets.iter().any(|b| b == required) {
            v.problem(None, format!("bucket {required:?} is missing: not an etcd database"));
        }
    }
    // A finished compaction past the newest stored revision is legitimate: compacting at the
    // current revision when the last change was a delete removes that tombstone (etcd then
    // resumes from the compacted revision). So there is no upper bound to check here.
    if let (Some(done), Some(scheduled)) =
        (v.stats.compacted_revision, v.stats.scheduled_compact_revision)
    {
        if done > scheduled {
            v.bucket = b"meta".to_vec();
            v.problem(
                Some("finishedCompactRev".into()),
                format!("finished compaction {done} is past the scheduled one {scheduled}"),
            );
        }
    }
    let status = structure.is_ok().then(|| Status {
        hash: v.hash,
        revision: v.last_key_rev.unwrap_or(0),
        total_key: v.total_key,
        total_size: db.total_size(),
        // Not collected by the verify walk; `status` has them.
        storage_version: None,
        cluster_version: None,
        release: crate::Release::V3_5,
    });
    VerifyReport {
        metas: db.metas().clone(),
        active_meta: db.active_meta_index(),
        structure,
        schema_problems: v.problems,
        schema_problem_count: v.count,
        status,
        stats: v.stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_revision_keys() {
        let mut k = 5i64.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&2i64.to_be_bytes());
        assert_eq!(parse_revision(&k), Ok((5, 2, false)));
        k.push(b't');
        assert_eq!(parse_revision(&k), Ok((5, 2, true)));
        k[17] = b'x';
        assert!(parse_revision(&k).is_err());
        assert!(parse_revision(b"short").is_err());
        k.truncate(17);
        k[8] = b'-';
        assert!(parse_revision(&k).is_err());
    }
}
