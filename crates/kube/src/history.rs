//! `inspect history`: every revision of one key still in a snapshot (etcd keeps all
//! revisions since the last compaction in its `key` bucket), each rendered, with its time and
//! the field-level changes from the version before it.

use serde::Serialize;
use serde_json::Value as Json;

use crate::encryption::EncryptionConfig;
use crate::jsondiff::{diff, Op};
use crate::listing::ChangeKind;
use crate::render::{plain_value, render, RenderOptions};

/// One revision of the key.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// The etcd revision of this change.
    pub revision: i64,
    /// etcd's per-key version counter (1 for a creation); 0 for a deletion.
    pub version: i64,
    pub deleted: bool,
    /// When it happened, as far as the object tells (see `time_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `managedFields` (the newest write time the API server recorded), `creationTimestamp`,
    /// or `deletionTimestamp` (a deletion after graceful termination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_source: Option<&'static str>,
    /// The object (without managedFields and resourceVersion, which change on every write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Json>,
    /// Why the object could not be shown (not decrypted, encoding not understood).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changes from the previous version in the file (for the oldest, nothing to compare).
    pub changes: Vec<Op>,
}

impl Version {
    /// A creation (the first version), a deletion, or a modification.
    pub fn change(&self) -> ChangeKind {
        match (self.deleted, self.version) {
            (true, _) => ChangeKind::Deleted,
            (false, 1) => ChangeKind::Added,
            _ => ChangeKind::Modified,
        }
    }
}

/// The revisions of `key` in `db`, oldest first, and how many earlier versions were
/// compacted away (the first version in the file has a per-key version above 1).
pub fn history(
    db: &etcdguard_bolt::Db<'_>,
    release: Option<&dyn Fn()>,
    key: &[u8],
    config: Option<&EncryptionConfig>,
) -> Result<(Vec<Version>, i64), String> {
    let mut raw: Vec<(i64, i64, bool, Vec<u8>)> = Vec::new();
    etcdguard_storage::keys::for_each_revision(db, release, &mut |r| {
        if r.kv.key == key {
            raw.push((
                r.main,
                r.kv.version,
                r.tombstone,
                if r.tombstone { Vec::new() } else { r.kv.value.to_vec() },
            ));
        }
    })?;
    let compacted = raw
        .first()
        .map_or(0, |(_, version, deleted, _)| if *deleted { 0 } else { (version - 1).max(0) });
    let mut versions: Vec<Version> = Vec::with_capacity(raw.len());
    let mut previous: Option<Json> = None;
    let mut first = true;
    for (revision, version, deleted, value) in raw {
        let mut v = Version {
            revision,
            version: if deleted { 0 } else { version },
            deleted,
            time: None,
            time_source: None,
            object: None,
            error: None,
            changes: Vec::new(),
        };
        if deleted {
            if let Some(prev) = &previous {
                if let Some(t) = prev.pointer("/metadata/deletionTimestamp").and_then(Json::as_str)
                {
                    v.time = Some(t.to_string());
                    v.time_source = Some("deletionTimestamp");
                }
                v.changes = vec![Op {
                    op: "remove",
                    path: String::new(),
                    value: None,
                    old_value: Some(prev.clone()),
                }];
            }
            previous = None;
        } else {
            match read(key, &value, revision, config) {
                Ok(mut object) => {
                    (v.time, v.time_source) = time_of(&object, version);
                    drop_write_bookkeeping(&mut object);
                    // A re-creation after a deletion starts from nothing.
                    if !first {
                        v.changes = diff(previous.as_ref().unwrap_or(&Json::Null), &object);
                    }
                    previous = Some(object.clone());
                    v.object = Some(object);
                }
                Err(e) => {
                    v.error = Some(e);
                    previous = None;
                }
            }
        }
        first = false;
        versions.push(v);
    }
    Ok((versions, compacted))
}

/// Removes what changes on every write (managedFields, resourceVersion), so a diff shows
/// what the writer changed.
pub fn drop_write_bookkeeping(object: &mut Json) {
    if let Some(Json::Object(meta)) = object.get_mut("metadata") {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
}

/// A stored value as the object to compare: decrypted, rendered, without write bookkeeping.
pub fn comparable(
    key: &[u8],
    value: &[u8],
    config: Option<&EncryptionConfig>,
) -> Result<Json, String> {
    let mut object = read(key, value, 0, config)?;
    drop_write_bookkeeping(&mut object);
    Ok(object)
}

fn read(
    key: &[u8],
    value: &[u8],
    revision: i64,
    config: Option<&EncryptionConfig>,
) -> Result<Json, String> {
    let plain = plain_value(key, value, config).map_err(|e| format!("not decrypted: {e}"))?;
    let opts = RenderOptions { show_managed_fields: true };
    render(&plain, Some(revision), &opts).map(|r| r.object).map_err(|e| e.to_string())
}

/// The newest `managedFields[].time`, else the creation time for a first version.
fn time_of(object: &Json, version: i64) -> (Option<String>, Option<&'static str>) {
    let newest_write =
        object.pointer("/metadata/managedFields").and_then(Json::as_array).and_then(|fields| {
            fields
                .iter()
                .filter_map(|f| f.get("time").and_then(Json::as_str))
                .max()
                .map(str::to_string)
        });
    if let Some(t) = newest_write {
        return (Some(t), Some("managedFields"));
    }
    match object.pointer("/metadata/creationTimestamp").and_then(Json::as_str) {
        Some(t) if version == 1 => (Some(t.to_string()), Some("creationTimestamp")),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times() {
        let o = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"time": "2026-01-01T00:00:00Z"}, {"time": "2026-01-02T10:00:00Z"}]}});
        assert_eq!(time_of(&o, 3), (Some("2026-01-02T10:00:00Z".into()), Some("managedFields")));
        let c = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}});
        assert_eq!(
            time_of(&c, 1),
            (Some("2026-01-01T00:00:00Z".into()), Some("creationTimestamp"))
        );
        assert_eq!(time_of(&c, 2), (None, None));
    }
}
