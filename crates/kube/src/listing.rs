//! The live objects of a snapshot as `inspect list` and `inspect diff` show them: each live
//! key's newest value decoded (decrypted when keys are given) next to its etcd facts, chosen
//! with kubectl-like filters, and the changes between two snapshots.
//!
//! Both read the snapshot the same way ([`etcdguard_storage::keys::map_newest_live`]): one
//! walk of the `key` bucket finds each live key's newest revision while a second core already
//! decodes the revisions as they come; the rest is decoded afterwards on all cores, in the
//! order the values lie in the file.

use std::borrow::Cow;
use std::collections::BTreeMap;

use etcdguard_bolt::Db;
use etcdguard_storage::keys::map_newest_live;
use etcdguard_storage::SnapshotFile;
use serde::Serialize;

use crate::encryption::EncryptionConfig;
use crate::selector::Selector;
use crate::{decode_stored, key_path, KeyPath, Object};

/// The newest value of one live key, decoded.
#[derive(Debug, Clone)]
pub struct Entry {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    /// Bytes as stored (encrypted, when it is).
    pub value_len: usize,
    /// crc32c of the stored bytes, when asked for (what `diff` compares); 0 otherwise.
    pub value_crc: u32,
    pub object: Object,
    pub path: Option<KeyPath>,
}

/// One entry as `inspect list -o json` prints it, serialized straight from the entry (no JSON
/// tree built first: a list of 80,000 objects spent more time building trees than decoding).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row<'a> {
    create_revision: i64,
    key: Cow<'a, str>,
    mod_revision: i64,
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    object: &'a Object,
    resource: Option<&'a str>,
    size: usize,
    version: i64,
}

impl Entry {
    fn decode(key: &[u8], value: &[u8], revisions: (i64, i64, i64), config: Option<&EncryptionConfig>, crc: bool) -> Entry {
        let object = decode_stored(key, value, config);
        let path = key_path(key, object.metadata.as_ref());
        let (create_revision, mod_revision, version) = revisions;
        Entry { mod_revision, create_revision, version, value_len: value.len(), value_crc: if crc { crc32c::crc32c(value) } else { 0 }, object, path }
    }

    pub fn row<'a>(&'a self, key: &'a [u8]) -> Row<'a> {
        let p = self.path.as_ref();
        Row {
            create_revision: self.create_revision,
            key: String::from_utf8_lossy(key),
            mod_revision: self.mod_revision,
            name: p.map(|p| p.name.as_str()),
            namespace: p.map(|p| p.namespace.as_str()).filter(|n| !n.is_empty()),
            object: &self.object,
            resource: p.map(|p| p.resource.as_str()),
            size: self.value_len,
            version: self.version,
        }
    }

    /// The row as a JSON value (for `diff`, which adds its own fields).
    pub fn json(&self, key: &[u8]) -> serde_json::Value {
        serde_json::to_value(self.row(key)).unwrap_or_default()
    }

    /// Why the value did not decrypt, when keys were given and it did not.
    pub fn undecrypted(&self) -> Option<String> {
        Some(self.object.encryption.as_ref()?.error.as_ref()?.to_string())
    }
}

/// kubectl-like selection: resource (as `extract` reads it: `widgets`, `example.com/widgets`
/// or `widgets.example.com`), namespace, name, labels.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Matches encrypted objects only once decrypted (their labels are unknown before).
    pub selector: Option<Selector>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        let p = e.path.as_ref();
        if let Some(r) = &self.resource {
            if !p.is_some_and(|p| crate::extract::resource_is(&p.resource, r)) {
                return false;
            }
        }
        if self.namespace.as_ref().is_some_and(|ns| p.is_none_or(|p| &p.namespace != ns)) {
            return false;
        }
        if self.name.as_ref().is_some_and(|name| p.is_none_or(|p| &p.name != name)) {
            return false;
        }
        if let Some(sel) = &self.selector {
            let empty = BTreeMap::new();
            if !sel.matches(e.object.metadata.as_ref().map_or(&empty, |m| &m.labels)) {
                return false;
            }
        }
        true
    }
}

/// What [`list`] found.
pub struct Listing<T> {
    /// Live keys under the prefix, selected or not.
    pub total: usize,
    /// What `row` made of each selected entry, in key order.
    pub rows: Vec<T>,
    /// Selected keys whose value did not decrypt although keys were given, with the reason.
    pub undecrypted: Vec<(Vec<u8>, String)>,
}

/// Every live key under `prefix` that `filter` selects, decoded, and turned by `row` (called
/// on all cores, so that rendering output runs in parallel too) into what the caller prints.
pub fn list<T: Send>(
    file: &SnapshotFile,
    db: &Db<'_>,
    prefix: &[u8],
    filter: &Filter,
    config: Option<&EncryptionConfig>,
    row: &(dyn Fn(&[u8], &Entry) -> T + Sync),
) -> Result<Listing<T>, String> {
    let live = map_newest_live(file, db, &|key| key.starts_with(prefix), &|n, value| {
        let e = Entry::decode(&n.key, value, (n.create_revision, n.mod_revision, n.version), config, false);
        filter.matches(&e).then(|| (row(&n.key, &e), e.undecrypted()))
    })?;
    let mut listing = Listing { total: live.len(), rows: Vec::new(), undecrypted: Vec::new() };
    for (n, made) in live {
        let Some((row, undecrypted)) = made else {
            continue;
        };
        if let Some(why) = undecrypted {
            listing.undecrypted.push((n.key.to_vec(), why));
        }
        listing.rows.push(row);
    }
    Ok(listing)
}

/// One snapshot's live keys under a prefix, for [`changes`].
pub struct Loaded {
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// The stored value of every entry, when [`load`] was asked to keep them.
    pub values: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every live key under `prefix`, decoded, with each value's checksum (and the values, with
/// `keep_values`).
pub fn load(file: &SnapshotFile, db: &Db<'_>, prefix: &[u8], config: Option<&EncryptionConfig>, keep_values: bool) -> Result<Loaded, String> {
    let live = map_newest_live(file, db, &|key| key.starts_with(prefix), &|n, value| {
        let e = Entry::decode(&n.key, value, (n.create_revision, n.mod_revision, n.version), config, true);
        (e, keep_values.then(|| value.to_vec()))
    })?;
    let mut loaded = Loaded { entries: BTreeMap::new(), values: BTreeMap::new() };
    for (n, (e, value)) in live {
        let key = n.key.into_vec();
        if let Some(v) = value {
            loaded.values.insert(key.clone(), v);
        }
        loaded.entries.insert(key, e);
    }
    Ok(loaded)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Deleted,
    Modified,
}

impl ChangeKind {
    /// `+`, `-` or `~`, as the diff's first column.
    pub fn sign(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Deleted => '-',
            ChangeKind::Modified => '~',
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Modified => "modified",
        }
    }
}

/// One key that differs between two snapshots.
pub struct Change<'l> {
    pub kind: ChangeKind,
    pub key: &'l [u8],
    /// The newer entry, or the deleted one.
    pub entry: &'l Entry,
    /// The older entry of a modified key.
    pub old: Option<&'l Entry>,
}

/// The keys added, deleted or modified (another revision, or other bytes) from `old` to `new`
/// that `filter` selects on either side (a relabelled object still shows), in key order.
pub fn changes<'l>(old: &'l Loaded, new: &'l Loaded, filter: &Filter) -> Vec<Change<'l>> {
    let mut out = Vec::new();
    for (k, n) in &new.entries {
        match old.entries.get(k) {
            None => out.push(Change { kind: ChangeKind::Added, key: k, entry: n, old: None }),
            Some(o) if o.mod_revision != n.mod_revision || o.value_crc != n.value_crc || o.value_len != n.value_len => {
                out.push(Change { kind: ChangeKind::Modified, key: k, entry: n, old: Some(o) })
            }
            Some(_) => {}
        }
    }
    for (k, o) in &old.entries {
        if !new.entries.contains_key(k) {
            out.push(Change { kind: ChangeKind::Deleted, key: k, entry: o, old: None });
        }
    }
    out.retain(|c| filter.matches(c.entry) || c.old.is_some_and(|o| filter.matches(o)));
    out.sort_by(|a, b| a.key.cmp(b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, Meta};

    fn entry(key: &str, mod_revision: i64, crc: u32, labels: &[(&str, &str)]) -> (Vec<u8>, Entry) {
        let meta = Meta { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Meta::default() };
        let object = Object { encoding: Encoding::Protobuf, api_version: "v1".into(), kind: "ConfigMap".into(), metadata: Some(meta), encryption: None };
        let path = key_path(key.as_bytes(), None);
        (key.as_bytes().to_vec(), Entry { mod_revision, create_revision: 1, version: 1, value_len: 10, value_crc: crc, object, path })
    }

    fn loaded(entries: Vec<(Vec<u8>, Entry)>) -> Loaded {
        Loaded { entries: entries.into_iter().collect(), values: BTreeMap::new() }
    }

    #[test]
    fn changes_between_two_snapshots() {
        let old = loaded(vec![
            entry("/registry/configmaps/a/same", 5, 1, &[]),
            entry("/registry/configmaps/a/gone", 6, 1, &[]),
            entry("/registry/configmaps/a/edited", 7, 1, &[("app", "x")]),
            entry("/registry/configmaps/a/rewritten", 8, 1, &[]),
        ]);
        let new = loaded(vec![
            entry("/registry/configmaps/a/same", 5, 1, &[]),
            entry("/registry/configmaps/a/edited", 9, 2, &[("app", "y")]),
            entry("/registry/configmaps/a/rewritten", 8, 2, &[]),
            entry("/registry/secrets/b/new", 10, 1, &[]),
        ]);
        let all: Vec<(ChangeKind, &[u8])> = changes(&old, &new, &Filter::default()).iter().map(|c| (c.kind, c.key)).collect();
        assert_eq!(
            all,
            vec![
                (ChangeKind::Modified, &b"/registry/configmaps/a/edited"[..]),
                (ChangeKind::Deleted, b"/registry/configmaps/a/gone"),
                (ChangeKind::Modified, b"/registry/configmaps/a/rewritten"),
                (ChangeKind::Added, b"/registry/secrets/b/new"),
            ]
        );
        // A label selector matches either side: the relabelled object still shows.
        let was_x = Filter { selector: Some(Selector::parse("app=x").unwrap()), ..Filter::default() };
        let picked: Vec<&[u8]> = changes(&old, &new, &was_x).iter().map(|c| c.key).collect();
        assert_eq!(picked, vec![&b"/registry/configmaps/a/edited"[..]]);
        let grouped = Filter { resource: Some("widgets.example.com".into()), ..Filter::default() };
        let at = |resource: &str| {
            let mut e = entry("/registry/x", 1, 1, &[]).1;
            e.path = Some(KeyPath { resource: resource.into(), namespace: "a".into(), name: "w".into() });
            e
        };
        assert!(grouped.matches(&at("example.com/widgets")) && !grouped.matches(&at("widgets")) && !grouped.matches(&at("other.io/widgets")));
        let secrets = Filter { resource: Some("secrets".into()), namespace: Some("b".into()), ..Filter::default() };
        assert_eq!(changes(&old, &new, &secrets).len(), 1);
        let other_ns = Filter { resource: Some("secrets".into()), namespace: Some("a".into()), ..Filter::default() };
        assert!(changes(&old, &new, &other_ns).is_empty());
    }
}
