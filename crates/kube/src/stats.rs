//! What takes the space in a snapshot ("why is my etcd 7 GB"): count and bytes per resource
//! and per namespace, the largest objects, the keys with the most revisions.
//!
//! Streamed: the walk of the `key` bucket keeps a few numbers per key, never a value, so
//! memory grows with the number of keys, not with the size of the snapshot.

use std::collections::{BTreeMap, HashMap};

use etcdguard_storage::keys::Revision;
use serde::Serialize;

/// Totals for one group of objects (a resource or a namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Live keys (newest entry not a deletion).
    pub objects: u64,
    /// Bytes of their newest values.
    pub bytes: u64,
    /// Entries in the `key` bucket, history and deletions included (what compaction frees).
    pub revisions: u64,
    /// Bytes of the values of all those entries.
    pub all_revision_bytes: u64,
}

impl Usage {
    fn add(&mut self, k: &KeyState) {
        self.objects += k.live as u64;
        self.bytes += if k.live { k.size } else { 0 };
        self.revisions += k.revisions;
        self.all_revision_bytes += k.all_bytes;
    }
}

/// One key, for the largest-objects and most-revisions lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    pub key: String,
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Size of the newest value (0 when the key is deleted).
    pub bytes: u64,
    pub live: bool,
    /// Entries of this key still in the snapshot.
    pub revisions: u64,
    /// etcd's per-key version: modifications since the key was (re)created, compacted ones included.
    pub version: i64,
    pub all_revision_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total: Usage,
    pub by_resource: BTreeMap<String, Usage>,
    /// Cluster-scoped objects under "" (shown as "-").
    pub by_namespace: BTreeMap<String, Usage>,
    /// Live objects, largest first.
    pub largest: Vec<KeyUsage>,
    /// Keys with the most entries in the snapshot, most first.
    pub most_revisions: Vec<KeyUsage>,
}

#[derive(Default)]
struct KeyState {
    live: bool,
    size: u64,
    revisions: u64,
    all_bytes: u64,
    version: i64,
}

/// Accumulates [`Stats`] over a walk of the `key` bucket (revision order).
#[derive(Default)]
pub struct StatsBuilder {
    keys: HashMap<Box<[u8]>, KeyState>,
}

impl StatsBuilder {
    pub fn observe(&mut self, r: &Revision<'_>) {
        let k = match self.keys.get_mut(r.kv.key) {
            Some(k) => k,
            None => self.keys.entry(r.kv.key.into()).or_default(),
        };
        k.revisions += 1;
        k.all_bytes += r.kv.value.len() as u64;
        k.live = !r.tombstone;
        k.size = if r.tombstone { 0 } else { r.kv.value.len() as u64 };
        if !r.tombstone {
            k.version = r.kv.version;
        }
    }

    /// The totals, with the `top` largest objects and most-revised keys.
    pub fn finish(self, top: usize) -> Stats {
        let mut stats = Stats {
            total: Usage::default(),
            by_resource: BTreeMap::new(),
            by_namespace: BTreeMap::new(),
            largest: Vec::new(),
            most_revisions: Vec::new(),
        };
        let mut largest: Vec<(&[u8], &KeyState)> = Vec::new();
        let mut most: Vec<(&[u8], &KeyState)> = Vec::new();
        for (key, k) in &self.keys {
            let (resource, namespace) = resource_and_namespace(key);
            stats.total.add(k);
            stats.by_resource.entry(resource).or_default().add(k);
            stats.by_namespace.entry(namespace).or_default().add(k);
            if k.live {
                keep_top(&mut largest, (key, k), top, |(key, k)| (k.size, std::cmp::Reverse(*key)));
            }
            keep_top(&mut most, (key, k), top, |(key, k)| (k.revisions, std::cmp::Reverse(*key)));
        }
        let usage = |(key, k): (&[u8], &KeyState)| {
            let (resource, namespace) = resource_and_namespace(key);
            KeyUsage {
                key: String::from_utf8_lossy(key).into_owned(),
                resource,
                namespace,
                bytes: k.size,
                live: k.live,
                revisions: k.revisions,
                version: k.version,
                all_revision_bytes: k.all_bytes,
            }
        };
        stats.largest = largest.into_iter().map(usage).collect();
        stats.most_revisions = most.into_iter().map(usage).collect();
        stats
    }
}

/// Keeps `list` as the `top` greatest items by `rank`, greatest first (a short sorted list:
/// `top` is small, and the walk stays one pass).
fn keep_top<'a, R: Ord>(
    list: &mut Vec<(&'a [u8], &'a KeyState)>,
    item: (&'a [u8], &'a KeyState),
    top: usize,
    rank: impl Fn(&(&'a [u8], &'a KeyState)) -> R,
) {
    if top == 0 {
        return;
    }
    let r = rank(&item);
    if list.len() == top && rank(list.last().unwrap()) >= r {
        return;
    }
    let at = list.partition_point(|x| rank(x) >= r);
    list.insert(at, item);
    list.truncate(top);
}

/// Resource and namespace from the key alone (values are not decoded): `<prefix>/<resource>/
/// [<namespace>/]<name>`, where a first segment with a dot is a group (`example.com/widgets`)
/// and `services/specs|endpoints` are the API server's two-segment resource prefixes.
/// Non-`/registry` keys count under their first segment.
pub fn resource_and_namespace(key: &[u8]) -> (String, String) {
    let key = String::from_utf8_lossy(key);
    let Some(rest) = key.strip_prefix('/').and_then(|k| k.split_once('/')).map(|(_, r)| r) else {
        return (format!("(other: {})", key.split('/').next().unwrap_or_default()), String::new());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let resource_len = match parts.as_slice() {
        [first, ..] if first.contains('.') => 2,
        ["services", "specs" | "endpoints", ..] => 2,
        _ => 1,
    };
    if parts.len() <= resource_len {
        return (parts.join("/"), String::new());
    }
    let resource = parts[..resource_len].join("/");
    // resource/name or resource/namespace/name.
    let namespace = if parts.len() == resource_len + 2 {
        parts[resource_len].to_string()
    } else {
        String::new()
    };
    (resource, namespace)
}

/// [`Stats`] of a snapshot in one streamed pass.
pub fn snapshot_stats(
    db: &etcdguard_bolt::Db<'_>,
    release: Option<&dyn Fn()>,
    top: usize,
) -> Result<Stats, String> {
    let mut b = StatsBuilder::default();
    etcdguard_storage::keys::for_each_revision(db, release, &mut |r| b.observe(&r))?;
    Ok(b.finish(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_namespaces_from_keys() {
        let rn = |k: &str| resource_and_namespace(k.as_bytes());
        assert_eq!(
            rn("/registry/secrets/kube-system/tok"),
            ("secrets".into(), "kube-system".into())
        );
        assert_eq!(rn("/registry/namespaces/default"), ("namespaces".into(), "".into()));
        assert_eq!(
            rn("/registry/services/specs/default/kubernetes"),
            ("services/specs".into(), "default".into())
        );
        assert_eq!(
            rn("/registry/example.com/widgets/team-a/w1"),
            ("example.com/widgets".into(), "team-a".into())
        );
        assert_eq!(
            rn("/registry/apiregistration.k8s.io/apiservices/v1.apps"),
            ("apiregistration.k8s.io/apiservices".into(), "".into())
        );
        assert_eq!(rn("compact_rev_key"), ("(other: compact_rev_key)".into(), "".into()));
    }
}
