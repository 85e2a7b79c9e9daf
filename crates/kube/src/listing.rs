//! The live objects of a snapshot as `inspect list` and `inspect diff` show them: each live
//! key's newest value decoded (decrypted when keys are given) next to its etcd facts, chosen
//! with kubectl-like filters, and the changes between two snapshots.
//!
//! Both read the snapshot the same way ([`etcdguard_storage::keys::map_newest_live`]): one
//! walk of the `key` bucket finds each live key's newest revision while a second core already
//! works on the revisions as they come; the rest is done afterwards on all cores, in the
//! order the values lie in the file. `list` decodes every value there; `diff` only takes a
//! checksum of each, merges the two key-sorted lists, and decodes just the keys that
//! changed, a batch at a time, so neither holds a snapshot's values.

use std::borrow::Cow;
use std::collections::BTreeMap;

use etcdguard_bolt::Db;
use etcdguard_storage::keys::{map_in_file_order, map_newest_live, Newest};
use etcdguard_storage::SnapshotFile;
use serde::Serialize;

use crate::encryption::EncryptionConfig;
use crate::selector::Filter;
use crate::{decode_stored, key_path, KeyPath, Object};

/// The newest value of one live key, decoded.
#[derive(Debug, Clone)]
pub struct Entry {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    /// Bytes as stored (encrypted, when it is).
    pub value_len: usize,
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
    fn decode(
        key: &[u8],
        value: &[u8],
        revisions: (i64, i64, i64),
        config: Option<&EncryptionConfig>,
    ) -> Entry {
        let object = decode_stored(key, value, config);
        let path = key_path(key, object.metadata.as_ref());
        let (create_revision, mod_revision, version) = revisions;
        Entry { mod_revision, create_revision, version, value_len: value.len(), object, path }
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

/// Whether `filter` selects the entry: its key's resource, namespace and name (a key
/// outside Kubernetes' layout only when the filter names none), and its labels.
fn selects(filter: &Filter, e: &Entry) -> bool {
    let empty = BTreeMap::new();
    filter.selects_path(e.path.as_ref(), false)
        && filter.selects_labels(e.object.metadata.as_ref().map_or(&empty, |m| &m.labels))
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
        let e =
            Entry::decode(&n.key, value, (n.create_revision, n.mod_revision, n.version), config);
        selects(filter, &e).then(|| (row(&n.key, &e), e.undecrypted()))
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

/// One snapshot's live keys under a prefix as [`diff`] compares them: each key's newest
/// revision and a checksum of its value. The values stay in the file, so this grows with the
/// number of keys, not with their size.
pub struct LiveKeys<'f, 'a> {
    file: &'f SnapshotFile,
    live: Vec<Newest<'a>>,
    crcs: Vec<u32>,
}

impl<'f, 'a> LiveKeys<'f, 'a> {
    pub fn load(
        file: &'f SnapshotFile,
        db: &Db<'a>,
        prefix: &[u8],
    ) -> Result<LiveKeys<'f, 'a>, String> {
        let (live, crcs) =
            map_newest_live(file, db, &|key| key.starts_with(prefix), &|_, value| {
                crc32c::crc32c(value)
            })?
            .into_iter()
            .unzip();
        Ok(LiveKeys { file, live, crcs })
    }

    /// The entries at `at` (indices into `live`), decoded, with their stored values when
    /// `with_values`; read in file order on all cores.
    fn decode(
        &self,
        at: &[usize],
        config: Option<&EncryptionConfig>,
        with_values: bool,
    ) -> Vec<(Entry, Option<Vec<u8>>)> {
        let items: Vec<Newest<'a>> = at.iter().map(|&i| self.live[i].clone()).collect();
        map_in_file_order(self.file, &items, &|n, value| {
            (
                Entry::decode(
                    &n.key,
                    value,
                    (n.create_revision, n.mod_revision, n.version),
                    config,
                ),
                with_values.then(|| value.to_vec()),
            )
        })
    }
}

/// Changed keys decoded at a time by [`diff`], at most, and their stored bytes at most: what
/// bounds its memory (values go up to etcd's request limit, 1.5 MiB by default).
const DIFF_BATCH: usize = 1024;
const DIFF_BATCH_BYTES: usize = 32 << 20;

/// How a key differs between two snapshots, or one revision of a key from the one before
/// (`inspect history`).
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

/// How many keys were added, deleted and modified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub added: usize,
    pub deleted: usize,
    pub modified: usize,
}

impl ChangeCounts {
    pub fn count(&mut self, kind: ChangeKind) {
        match kind {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Deleted => self.deleted += 1,
            ChangeKind::Modified => self.modified += 1,
        }
    }
}

/// One key that differs between two snapshots.
pub struct Change<'c> {
    pub kind: ChangeKind,
    pub key: &'c [u8],
    /// The newer entry, or the deleted one.
    pub entry: &'c Entry,
    /// The older entry of a modified key.
    pub old: Option<&'c Entry>,
    /// The stored values (older, newer) when [`diff`] was asked for them; `None` on the side
    /// that does not have the key.
    pub values: (Option<&'c [u8]>, Option<&'c [u8]>),
}

impl Change<'_> {
    /// Whether `filter` selects the key on either side (a relabelled object still shows).
    pub fn selected_by(&self, filter: &Filter) -> bool {
        selects(filter, self.entry) || self.old.is_some_and(|o| selects(filter, o))
    }
}

/// Which keys differ: (kind, index in `old`, index in `new`), in key order. A key differs
/// when it is on one side only, or has another revision or other bytes.
fn key_changes<'k>(
    (old, old_crcs): (&'k [Newest<'_>], &'k [u32]),
    (new, new_crcs): (&'k [Newest<'_>], &'k [u32]),
) -> impl Iterator<Item = (ChangeKind, Option<usize>, Option<usize>)> + 'k {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || loop {
        // A side that has ended sorts after every key of the other.
        let order = match (old.get(i), new.get(j)) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(o), Some(n)) => o.key.cmp(&n.key),
        };
        match order {
            std::cmp::Ordering::Less => {
                i += 1;
                return Some((ChangeKind::Deleted, Some(i - 1), None));
            }
            std::cmp::Ordering::Greater => {
                j += 1;
                return Some((ChangeKind::Added, None, Some(j - 1)));
            }
            std::cmp::Ordering::Equal => {
                let (o, n) = (&old[i], &new[j]);
                let same = o.mod_revision == n.mod_revision
                    && o.value.len() == n.value.len()
                    && old_crcs[i] == new_crcs[j];
                i += 1;
                j += 1;
                if !same {
                    return Some((ChangeKind::Modified, Some(i - 1), Some(j - 1)));
                }
            }
        }
    })
}

/// The keys added, deleted or modified from `old` to `new` that `filter` selects on either
/// side, handed to `each` in key order, decoded (with their stored values when
/// `with_values`). Only the changed keys are decoded, a batch at a time ([`DIFF_BATCH`] keys
/// or [`DIFF_BATCH_BYTES`] of values), so memory stays bounded whatever the snapshots' size.
/// The first error of `each` stops it.
pub fn diff<E>(
    old: &LiveKeys<'_, '_>,
    new: &LiveKeys<'_, '_>,
    filter: &Filter,
    config: Option<&EncryptionConfig>,
    with_values: bool,
    each: &mut dyn FnMut(&Change<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut changes = key_changes((&old.live, &old.crcs), (&new.live, &new.crcs)).peekable();
    let stored = |c: &(ChangeKind, Option<usize>, Option<usize>)| {
        c.1.map_or(0, |i| old.live[i].value.len()) + c.2.map_or(0, |j| new.live[j].value.len())
    };
    while changes.peek().is_some() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(c) = changes.next_if(|c| {
            batch.is_empty() || (batch.len() < DIFF_BATCH && bytes + stored(c) <= DIFF_BATCH_BYTES)
        }) {
            bytes += stored(&c);
            batch.push(c);
        }
        let old_at: Vec<usize> = batch.iter().filter_map(|c| c.1).collect();
        let new_at: Vec<usize> = batch.iter().filter_map(|c| c.2).collect();
        let (mut olds, mut news) = (
            old.decode(&old_at, config, with_values).into_iter(),
            new.decode(&new_at, config, with_values).into_iter(),
        );
        for (kind, o, n) in batch {
            let o = o.map(|i| (i, olds.next().expect("one decoded entry per index")));
            let n = n.map(|i| (i, news.next().expect("one decoded entry per index")));
            let (key, entry, older) = match (&o, &n) {
                (Some(_), Some((i, (e, _)))) => {
                    (&new.live[*i].key, e, o.as_ref().map(|(_, (e, _))| e))
                }
                (None, Some((i, (e, _)))) => (&new.live[*i].key, e, None),
                (Some((i, (e, _))), None) => (&old.live[*i].key, e, None),
                (None, None) => unreachable!("a change has a side"),
            };
            let change = Change {
                kind,
                key,
                entry,
                old: older,
                values: (
                    o.as_ref().and_then(|(_, (_, v))| v.as_deref()),
                    n.as_ref().and_then(|(_, (_, v))| v.as_deref()),
                ),
            };
            if change.selected_by(filter) {
                each(&change)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::{Encoding, Meta};

    fn entry(key: &str, labels: &[(&str, &str)]) -> Entry {
        let meta = Meta {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Meta::default()
        };
        let object = Object {
            encoding: Encoding::Protobuf,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: Some(meta),
            encryption: None,
        };
        let path = key_path(key.as_bytes(), None);
        Entry { mod_revision: 1, create_revision: 1, version: 1, value_len: 10, object, path }
    }

    /// (key, mod revision, value, crc) per live key, sorted by key.
    fn side(keys: &[(&'static str, i64, &'static [u8], u32)]) -> (Vec<Newest<'static>>, Vec<u32>) {
        keys.iter()
            .map(|(k, rev, value, crc)| {
                (
                    Newest {
                        key: k.as_bytes().into(),
                        create_revision: 1,
                        mod_revision: *rev,
                        version: 1,
                        value,
                    },
                    *crc,
                )
            })
            .unzip()
    }

    #[test]
    fn changes_between_two_snapshots() {
        let old = side(&[
            ("/registry/configmaps/a/edited", 7, b"v1", 1),
            ("/registry/configmaps/a/gone", 6, b"v1", 1),
            ("/registry/configmaps/a/rewritten", 8, b"v1", 1),
            ("/registry/configmaps/a/same", 5, b"v1", 1),
            ("/registry/configmaps/a/z-resized", 9, b"v1", 1),
        ]);
        let new = side(&[
            ("/registry/configmaps/a/edited", 9, b"v2", 2),
            ("/registry/configmaps/a/rewritten", 8, b"v2", 2),
            ("/registry/configmaps/a/same", 5, b"v1", 1),
            ("/registry/configmaps/a/z-resized", 9, b"v1 ", 1),
            ("/registry/secrets/b/new", 10, b"v1", 1),
        ]);
        let all: Vec<_> = key_changes((&old.0, &old.1), (&new.0, &new.1)).collect();
        assert_eq!(
            all,
            vec![
                (ChangeKind::Modified, Some(0), Some(0)),
                (ChangeKind::Deleted, Some(1), None),
                (ChangeKind::Modified, Some(2), Some(1)),
                (ChangeKind::Modified, Some(4), Some(3)),
                (ChangeKind::Added, None, Some(4)),
            ]
        );
        // Either side empty: everything added, or everything deleted.
        let none = side(&[]);
        assert!(key_changes((&none.0, &none.1), (&new.0, &new.1)).all(|c| c.0 == ChangeKind::Added));
        assert_eq!(
            key_changes((&old.0, &old.1), (&none.0, &none.1))
                .filter(|c| c.0 == ChangeKind::Deleted)
                .count(),
            5
        );
    }

    #[test]
    fn a_filter_selects_a_change_on_either_side() {
        let key = "/registry/configmaps/a/edited";
        let (before, after) = (entry(key, &[("app", "x")]), entry(key, &[("app", "y")]));
        let change = Change {
            kind: ChangeKind::Modified,
            key: key.as_bytes(),
            entry: &after,
            old: Some(&before),
            values: (None, None),
        };
        // A label selector matches either side: the relabelled object still shows.
        let was_x =
            Filter { selector: Some(Selector::parse("app=x").unwrap()), ..Filter::default() };
        let is_z =
            Filter { selector: Some(Selector::parse("app=z").unwrap()), ..Filter::default() };
        assert!(change.selected_by(&was_x) && !change.selected_by(&is_z));
        let grouped = Filter { resource: Some("widgets.example.com".into()), ..Filter::default() };
        let at = |resource: &str| {
            let mut e = entry("/registry/x", &[]);
            e.path = Some(KeyPath {
                resource: resource.into(),
                namespace: "a".into(),
                name: "w".into(),
            });
            e
        };
        assert!(
            selects(&grouped, &at("example.com/widgets"))
                && !selects(&grouped, &at("widgets"))
                && !selects(&grouped, &at("other.io/widgets"))
        );
        let secret = entry("/registry/secrets/b/new", &[]);
        let secrets_in_b = Filter {
            resource: Some("secrets".into()),
            namespace: Some("b".into()),
            ..Filter::default()
        };
        let secrets_in_a = Filter {
            resource: Some("secrets".into()),
            namespace: Some("a".into()),
            ..Filter::default()
        };
        assert!(selects(&secrets_in_b, &secret) && !selects(&secrets_in_a, &secret));
    }
}
