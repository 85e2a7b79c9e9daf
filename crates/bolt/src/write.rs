//! The write side of the format, kept small: encode leaf, branch and meta pages, and append
//! new pages past the high-water mark, the way a bbolt copy-on-write commit does.
//!
//! A commit built with this module never touches a page that the current meta reaches: new
//! versions of changed nodes are appended at the end of the file, then a new meta page (next
//! txid, on page `txid % 2`) points at them. Pages the new tree no longer reaches become free
//! implicitly when the meta says no freelist is persisted (what etcd on Linux writes).
//!
//! Reading helpers ([`collect_entries`], [`last_entry`]) are bounds-checked like the walker;
//! they return an error string instead of panicking on a damaged tree.

use crate::meta::Meta;
use crate::page::{
    BucketHeader, Page, PageKind, BUCKET_HEADER_SIZE, ELEMENT_SIZE, FLAG_BRANCH, FLAG_LEAF,
    FLAG_META, LEAF_FLAG_BUCKET, PAGE_HEADER_SIZE,
};
use crate::Db;

/// Trees deeper than this cannot come from bbolt.
const MAX_DEPTH: usize = 64;

/// One key/value of a leaf (owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 0, or [`LEAF_FLAG_BUCKET`] when `value` is a bucket header.
    pub flags: u32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Entry {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Entry {
        Entry { flags: 0, key: key.into(), value: value.into() }
    }
    pub fn bucket(name: impl Into<Vec<u8>>, header: Vec<u8>) -> Entry {
        Entry { flags: LEAF_FLAG_BUCKET, key: name.into(), value: header }
    }
    pub fn is_bucket(&self) -> bool {
        self.flags & LEAF_FLAG_BUCKET != 0
    }
    fn leaf_size(&self) -> usize {
        ELEMENT_SIZE + self.key.len() + self.value.len()
    }
}

/// Why a page cannot be written or a tree cannot be read for rewriting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("page {page}: {why}")]
    Read { page: u64, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn read_err(page: u64, why: impl Into<String>) -> WriteError {
    WriteError::Read { page, why: why.into() }
}

/// Bytes a leaf node with these entries takes (header included).
pub fn leaf_node_size(entries: &[Entry]) -> usize {
    PAGE_HEADER_SIZE + entries.iter().map(Entry::leaf_size).sum::<usize>()
}

fn check_order<'k>(keys: impl Iterator<Item = &'k [u8]>) -> Result<(), WriteError> {
    let mut prev: Option<&[u8]> = None;
    for k in keys {
        if k.is_empty() {
            return Err(WriteError::Invalid("empty key".into()));
        }
        if prev.is_some_and(|p| p >= k) {
            return Err(WriteError::Invalid("keys not strictly increasing".into()));
        }
        prev = Some(k);
    }
    Ok(())
}

fn header(out: &mut [u8], id: u64, flags: u16, count: usize, overflow: u32) {
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..10].copy_from_slice(&flags.to_le_bytes());
    out[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    out[12..16].copy_from_slice(&overflow.to_le_bytes());
}

fn pages_for(size: usize, page_size: u32) -> usize {
    size.div_ceil(page_size as usize).max(1)
}

fn check_count(count: usize) -> Result<(), WriteError> {
    if count >= 0xFFFF {
        return Err(WriteError::Invalid(format!("{count} elements do not fit one page header")));
    }
    Ok(())
}

/// Encodes a leaf node. With `page_size` = `Some(P)` the result is padded to whole pages and
/// its header carries `id` and the overflow count; with `None` it is an inline bucket page
/// (id 0, exact length).
pub fn encode_leaf(
    id: u64,
    entries: &[Entry],
    page_size: Option<u32>,
) -> Result<Vec<u8>, WriteError> {
    check_count(entries.len())?;
    check_order(entries.iter().map(|e| e.key.as_slice()))?;
    let size = leaf_node_size(entries);
    let (len, overflow) = match page_size {
        Some(p) => {
            let n = pages_for(size, p);
            (n * p as usize, (n - 1) as u32)
        }
        None => (size, 0),
    };
    let mut out = vec![0u8; len];
    header(&mut out, id, FLAG_LEAF, entries.len(), overflow);
    let mut data = PAGE_HEADER_SIZE + entries.len() * ELEMENT_SIZE;
    for (i, e) in entries.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let pos =
            u32::try_from(data - at).map_err(|_| WriteError::Invalid("node too large".into()))?;
        let ksize =
            u32::try_from(e.key.len()).map_err(|_| WriteError::Invalid("key too large".into()))?;
        let vsize = u32::try_from(e.value.len())
            .map_err(|_| WriteError::Invalid("value too large".into()))?;
        out[at..at + 4].copy_from_slice(&e.flags.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&ksize.to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&vsize.to_le_bytes());
        out[data..data + e.key.len()].copy_from_slice(&e.key);
        data += e.key.len();
        out[data..data + e.value.len()].copy_from_slice(&e.value);
        data += e.value.len();
    }
    Ok(out)
}

/// Encodes a branch node (first key of each child, child page id), padded to whole pages.
pub fn encode_branch(
    id: u64,
    children: &[(Vec<u8>, u64)],
    page_size: u32,
) -> Result<Vec<u8>, WriteError> {
    check_count(children.len())?;
    if children.is_empty() {
        return Err(WriteError::Invalid("branch without children".into()));
    }
    check_order(children.iter().map(|(k, _)| k.as_slice()))?;
    let size = branch_node_size(children);
    let n = pages_for(size, page_size);
    let mut out = vec![0u8; n * page_size as usize];
    header(&mut out, id, FLAG_BRANCH, children.len(), (n - 1) as u32);
    let mut data = PAGE_HEADER_SIZE + children.len() * ELEMENT_SIZE;
    for (i, (key, child)) in children.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let pos =
            u32::try_from(data - at).map_err(|_| WriteError::Invalid("node too large".into()))?;
        out[at..at + 4].copy_from_slice(&pos.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
        out[data..data + key.len()].copy_from_slice(key);
        data += key.len();
    }
    Ok(out)
}

fn branch_node_size(children: &[(Vec<u8>, u64)]) -> usize {
    PAGE_HEADER_SIZE + children.iter().map(|(k, _)| ELEMENT_SIZE + k.len()).sum::<usize>()
}

/// A whole meta page (`page_size` bytes) for page `page_id` (0 or 1), checksum computed.
pub fn encode_meta_page(page_id: u64, meta: &Meta) -> Vec<u8> {
    let mut out = vec![0u8; meta.page_size as usize];
    header(&mut out, page_id, FLAG_META, 0, 0);
    out[16..80].copy_from_slice(&meta.encode());
    out
}

/// A bucket value: the 16-byte header, plus the inline page when `root` is 0.
pub fn bucket_value(root: u64, sequence: u64, inline_page: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE + inline_page.map_or(0, |p| p.len()));
    v.extend_from_slice(&root.to_le_bytes());
    v.extend_from_slice(&sequence.to_le_bytes());
    if let Some(p) = inline_page {
        v.extend_from_slice(p);
    }
    v
}

/// New pages appended at the end of a file, starting at the old high-water mark.
pub struct Appender {
    page_size: u32,
    start: u64,
    next: u64,
    /// Page id of `bytes[0]`: pages before it were handed out by [`Appender::take_pending`].
    pending_start: u64,
    bytes: Vec<u8>,
}

/// Receives appended pages as they are made: `(first page id, whole pages)`.
pub type PageSink<'s> = dyn FnMut(u64, &[u8]) -> Result<(), WriteError> + 's;

/// Pages are handed to the sink of [`Appender::append_sorted`] once this many bytes are pending.
const SPILL_BYTES: usize = 8 << 20;

impl Appender {
    /// Starts appending at page `pgid` (the current high-water mark).
    pub fn new(page_size: u32, pgid: u64) -> Appender {
        Appender { page_size, start: pgid, next: pgid, pending_start: pgid, bytes: Vec::new() }
    }

    /// Page id where the bytes of [`Appender::bytes`] belong (equal to [`Appender::start`]
    /// unless pages were already taken).
    pub fn pending_start(&self) -> u64 {
        self.pending_start
    }

    /// Hands the pending pages to `sink` and forgets them (memory stays bounded while a large
    /// tree is appended).
    fn spill(&mut self, sink: &mut PageSink<'_>) -> Result<(), WriteError> {
        if !self.bytes.is_empty() {
            sink(self.pending_start, &self.bytes)?;
            self.bytes.clear();
            self.pending_start = self.next;
        }
        Ok(())
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }
    /// First appended page id.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// The new high-water mark.
    pub fn next_pgid(&self) -> u64 {
        self.next
    }
    /// The appended pages, to be written at file offset `start() × page_size`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn push(&mut self, page: Vec<u8>) -> u64 {
        let id = self.next;
        self.next += (page.len() / self.page_size as usize) as u64;
        self.bytes.extend_from_slice(&page);
        id
    }

    pub fn leaf(&mut self, entries: &[Entry]) -> Result<u64, WriteError> {
        let page = encode_leaf(self.next, entries, Some(self.page_size))?;
        Ok(self.push(page))
    }

    pub fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> Result<u64, WriteError> {
        let page = encode_branch(self.next, children, self.page_size)?;
        Ok(self.push(page))
    }

    /// Writes a whole tree for `entries` (sorted, unique keys): leaves packed up to one page
    /// each (a single oversized entry gets overflow pages), then branch levels. Returns the
    /// root page id. An empty tree is one empty leaf.
    pub fn tree(&mut self, entries: &[Entry]) -> Result<u64, WriteError> {
        check_order(entries.iter().map(|e| e.key.as_slice()))?;
        let p = self.page_size as usize;
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut start = 0;
        while start < entries.len() || (start == 0 && level.is_empty()) {
            let mut end = start;
            let mut size = PAGE_HEADER_SIZE;
            while end < entries.len()
                && (end == start || size + entries[end].leaf_size() <= p)
                && end - start < 0xFFFE
            {
                size += entries[end].leaf_size();
                end += 1;
            }
            let id = self.leaf(&entries[start..end])?;
            level.push((entries.get(start).map(|e| e.key.clone()).unwrap_or_default(), id));
            start = end;
            if entries.is_empty() {
                break;
            }
        }
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut start = 0;
            while start < level.len() {
                let mut end = start;
                let mut size = PAGE_HEADER_SIZE;
                while end < level.len()
                    && (end - start < 2 || size + ELEMENT_SIZE + level[end].0.len() <= p)
                    && end - start < 0xFFFE
                {
                    size += ELEMENT_SIZE + level[end].0.len();
                    end += 1;
                }
                let id = self.branch(&level[start..end])?;
                next.push((level[start].0.clone(), id));
                start = end;
            }
            level = next;
        }
        Ok(level[0].1)
    }

    /// The value for a bucket holding `entries`: inline (as bbolt keeps small buckets) when
    /// the leaf fits in a quarter page and holds no sub-bucket, otherwise a tree of new pages.
    pub fn bucket(&mut self, entries: &[Entry], sequence: u64) -> Result<Vec<u8>, WriteError> {
        let inline_ok = !entries.iter().any(Entry::is_bucket)
            && leaf_node_size(entries) <= self.page_size as usize / 4;
        if inline_ok {
            let page = encode_leaf(0, entries, None)?;
            Ok(bucket_value(0, sequence, Some(&page)))
        } else {
            let root = self.tree(entries)?;
            Ok(bucket_value(root, sequence, None))
        }
    }

    /// Appends `entries` (keys strictly increasing, all after the last key of the tree at
    /// `root`) by rewriting the tree's right edge only: the rightmost leaf is refilled and
    /// followed by new full leaves, then each branch of the rightmost path is rewritten with
    /// its new children (split over as many pages as needed), and new levels are added on
    /// top while more than one node remains. Pages nobody else reaches are never read, so a
    /// million appended keys cost the new pages plus one path. Pages go to `sink` whenever
    /// [`SPILL_BYTES`] are pending; the rest stay pending. Returns the new root page id
    /// (`root` itself when `entries` is empty) and the number of entries appended.
    pub fn append_sorted(
        &mut self,
        db: &Db<'_>,
        root: u64,
        entries: &mut dyn Iterator<Item = Entry>,
        sink: &mut PageSink<'_>,
    ) -> Result<(u64, u64), WriteError> {
        let mut entries = entries.peekable();
        if entries.peek().is_none() {
            return Ok((root, 0));
        }
        // The rightmost path: every branch's children (root first), then the leaf.
        let mut spine: Vec<Vec<(Vec<u8>, u64)>> = Vec::new();
        let mut id = root;
        let leaf = loop {
            if spine.len() > MAX_DEPTH {
                return Err(read_err(root, "tree too deep"));
            }
            let page = tree_page(db, id)?;
            match page.kind {
                PageKind::Leaf => break leaf_entries(&page, id)?,
                PageKind::Branch => {
                    let children = branch_children(&page, id)?;
                    id = children.last().ok_or_else(|| read_err(id, "branch without elements"))?.1;
                    spine.push(children);
                }
                kind => return Err(read_err(id, format!("{} page in a bucket tree", kind.name()))),
            }
        };
        let p = self.page_size as usize;
        let mut last_key = leaf.last().map(|e| e.key.clone());
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut current = leaf;
        let mut size = leaf_node_size(&current);
        let mut appended = 0u64;
        for e in entries {
            if e.key.is_empty() || last_key.as_ref().is_some_and(|k| *k >= e.key) {
                return Err(WriteError::Invalid(
                    "appended keys must be increasing and sort after the tree's last key".into(),
                ));
            }
            last_key = Some(e.key.clone());
            if !current.is_empty() && (size + e.leaf_size() > p || current.len() >= 0xFFFE) {
                let first = current[0].key.clone();
                let id = self.leaf(&current)?;
                level.push((first, id));
                current.clear();
                size = PAGE_HEADER_SIZE;
                if self.bytes.len() >= SPILL_BYTES {
                    self.spill(sink)?;
                }
            }
            size += e.leaf_size();
            current.push(e);
            appended += 1;
        }
        let first = current[0].key.clone();
        let id = self.leaf(&current)?;
        level.push((first, id));
        // Up the rightmost path: the replaced child keeps the key that led to it (it may be
        // below the child's first key, which keeps the ancestors' bounds valid).
        while let Some(mut children) = spine.pop() {
            let (old_key, _) =
                children.pop().ok_or_else(|| read_err(root, "branch without elements"))?;
            let mut replaced = level.into_iter();
            let (_, first_id) = replaced.next().expect("a level has at least one node");
            children.push((old_key, first_id));
            children.extend(replaced);
            level = self.branch_level(&children)?;
        }
        while level.len() > 1 {
            level = self.branch_level(&level)?;
        }
        self.spill(sink)?;
        Ok((level[0].1, appended))
    }

    /// Packs `children` into as few branch pages as fit (at least two children per page),
    /// returning each page's (first key, page id).
    fn branch_level(
        &mut self,
        children: &[(Vec<u8>, u64)],
    ) -> Result<Vec<(Vec<u8>, u64)>, WriteError> {
        let p = self.page_size as usize;
        let mut out = Vec::new();
        let mut start = 0;
        while start < children.len() {
            let mut end = start;
            let mut size = PAGE_HEADER_SIZE;
            while end < children.len()
                && (end - start < 2 || size + ELEMENT_SIZE + children[end].0.len() <= p)
                && end - start < 0xFFFE
            {
                size += ELEMENT_SIZE + children[end].0.len();
                end += 1;
            }
            // Never leave a last page with a single child when it can borrow one.
            if end == children.len() - 1 && end - start > 2 {
                end -= 1;
            }
            let id = self.branch(&children[start..end])?;
            out.push((children[start].0.clone(), id));
            start = end;
        }
        Ok(out)
    }

    /// Appends `entry`, whose key must sort after every key of the tree at `root`, by writing
    /// new copies of the rightmost path only. Returns the new root page id.
    pub fn append_last(&mut self, db: &Db<'_>, root: u64, entry: Entry) -> Result<u64, WriteError> {
        let mut replaced = self.append_rec(db, root, entry, 0)?;
        if replaced.len() == 1 {
            return Ok(replaced.pop().unwrap().1);
        }
        self.branch(&replaced)
    }

    /// Returns the (first key, page id) pairs that replace page `id`: one or two nodes.
    fn append_rec(
        &mut self,
        db: &Db<'_>,
        id: u64,
        entry: Entry,
        depth: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, WriteError> {
        if depth > MAX_DEPTH {
            return Err(read_err(id, "tree too deep"));
        }
        let page = tree_page(db, id)?;
        match page.kind {
            PageKind::Leaf => {
                let mut entries = leaf_entries(&page, id)?;
                if let Some(last) = entries.last() {
                    if last.key >= entry.key {
                        return Err(WriteError::Invalid("appended key does not sort last".into()));
                    }
                }
                let first = entries.first().map(|e| e.key.clone());
                if entries.is_empty()
                    || leaf_node_size(&entries) + entry.leaf_size() <= self.page_size as usize
                {
                    let key = first.unwrap_or_else(|| entry.key.clone());
                    entries.push(entry);
                    let new_id = self.leaf(&entries)?;
                    Ok(vec![(key, new_id)])
                } else {
                    // Full: keep the old leaf as it is and start a new one.
                    let key = entry.key.clone();
                    let new_id = self.leaf(&[entry])?;
                    Ok(vec![(first.unwrap(), id), (key, new_id)])
                }
            }
            PageKind::Branch => {
                let mut children = branch_children(&page, id)?;
                let (_, last_child) =
                    children.pop().ok_or_else(|| read_err(id, "branch without elements"))?;
                let last_key_before = children.len();
                let replaced = self.append_rec(db, last_child, entry, depth + 1)?;
                // Keep the branch key that led to the old child (it may be smaller than the
                // child's first key, which is legal and keeps the ancestors' bounds valid).
                let old_key = branch_children(&page, id)?.pop().unwrap().0;
                children.push((old_key, replaced[0].1));
                children.extend(replaced.into_iter().skip(1));
                if branch_node_size(&children) <= self.page_size as usize
                    || children.len() - last_key_before < 2
                {
                    let first = children[0].0.clone();
                    return Ok(vec![(first, self.branch(&children)?)]);
                }
                // Too big for one page: the new last child goes into a branch of its own.
                let tail = children.split_off(children.len() - 1);
                let first = children[0].0.clone();
                let a = self.branch(&children)?;
                let b = self.branch(&tail)?;
                Ok(vec![(first, a), (tail[0].0.clone(), b)])
            }
            kind => Err(read_err(id, format!("{} page in a bucket tree", kind.name()))),
        }
    }
}

fn tree_page<'a>(db: &Db<'a>, id: u64) -> Result<Page<'a>, WriteError> {
    if id < 2 {
        return Err(read_err(id, "a meta page in a bucket tree"));
    }
    let page = db.page(id).map_err(|e| read_err(id, format!("{e:?}")))?;
    if page.id != id {
        return Err(read_err(id, format!("header says it is page {}", page.id)));
    }
    Ok(page)
}

fn leaf_entries(page: &Page<'_>, id: u64) -> Result<Vec<Entry>, WriteError> {
    (0..page.count as usize)
        .map(|i| {
            page.leaf_element(i)
                .map(|e| Entry { flags: e.flags, key: e.key.to_vec(), value: e.value.to_vec() })
                .map_err(|e| read_err(id, e.to_string()))
        })
        .collect()
}

fn branch_children(page: &Page<'_>, id: u64) -> Result<Vec<(Vec<u8>, u64)>, WriteError> {
    (0..page.count as usize)
        .map(|i| {
            page.branch_element(i)
                .map(|e| (e.key.to_vec(), e.child))
                .map_err(|e| read_err(id, e.to_string()))
        })
        .collect()
}

/// Every entry of the tree at page `root`, in key order. Meant for small buckets (the root
/// bucket, `meta`, `members`); `limit` bounds the number of entries read.
pub fn collect_entries(db: &Db<'_>, root: u64, limit: usize) -> Result<Vec<Entry>, WriteError> {
    let mut out = Vec::new();
    collect_rec(db, root, limit, 0, &mut out)?;
    Ok(out)
}

fn collect_rec(
    db: &Db<'_>,
    id: u64,
    limit: usize,
    depth: usize,
    out: &mut Vec<Entry>,
) -> Result<(), WriteError> {
    if depth > MAX_DEPTH {
        return Err(read_err(id, "tree too deep"));
    }
    let page = tree_page(db, id)?;
    match page.kind {
        PageKind::Leaf => {
            out.extend(leaf_entries(&page, id)?);
            if out.len() > limit {
                return Err(read_err(id, format!("more than {limit} entries")));
            }
            Ok(())
        }
        PageKind::Branch => {
            for (_, child) in branch_children(&page, id)? {
                collect_rec(db, child, limit, depth + 1, out)?;
            }
            Ok(())
        }
        kind => Err(read_err(id, format!("{} page in a bucket tree", kind.name()))),
    }
}

/// Every entry of a bucket given its value in the parent (inline or not).
pub fn collect_bucket(
    db: &Db<'_>,
    bucket_value: &[u8],
    limit: usize,
) -> Result<Vec<Entry>, WriteError> {
    let header = BucketHeader::parse(bucket_value)
        .ok_or_else(|| WriteError::Invalid("bucket header too short".into()))?;
    match header.inline_page {
        None => collect_entries(db, header.root, limit),
        Some(bytes) => {
            let page = Page::parse(bytes)
                .ok_or_else(|| WriteError::Invalid("inline bucket page too short".into()))?;
            if page.kind != PageKind::Leaf {
                return Err(WriteError::Invalid("inline bucket page is not a leaf".into()));
            }
            let entries = leaf_entries(&page, 0)?;
            if entries.len() > limit {
                return Err(WriteError::Invalid(format!("more than {limit} entries")));
            }
            Ok(entries)
        }
    }
}

/// The last entry (largest key) of the tree at `root`, following the rightmost path only.
/// `None` for an empty tree.
pub fn last_entry(db: &Db<'_>, root: u64) -> Result<Option<Entry>, WriteError> {
    let mut id = root;
    for _ in 0..=MAX_DEPTH {
        let page = tree_page(db, id)?;
        match page.kind {
            PageKind::Leaf => {
                if page.count == 0 {
                    return Ok(None);
                }
                let e = page
                    .leaf_element(page.count as usize - 1)
                    .map_err(|e| read_err(id, e.to_string()))?;
                return Ok(Some(Entry {
                    flags: e.flags,
                    key: e.key.to_vec(),
                    value: e.value.to_vec(),
                }));
            }
            PageKind::Branch => {
                if page.count == 0 {
                    return Err(read_err(id, "branch without elements"));
                }
                id = page
                    .branch_element(page.count as usize - 1)
                    .map_err(|e| read_err(id, e.to_string()))?
                    .child;
            }
            kind => return Err(read_err(id, format!("{} page in a bucket tree", kind.name()))),
        }
    }
    Err(read_err(root, "tree too deep"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::NO_FREELIST;
    use crate::walk::{walk, Visitor, WalkOptions};

    const P: u32 = 4096;

    /// Builds a whole db from scratch with the appender: metas, then buckets, root last.
    fn build(buckets: &[(&str, Vec<Entry>)]) -> Vec<u8> {
        let mut app = Appender::new(P, 2);
        let mut root = Vec::new();
        for (name, entries) in buckets {
            let v = app.bucket(entries, 0).unwrap();
            root.push(Entry::bucket(name.as_bytes().to_vec(), v));
        }
        let root_id = app.tree(&root).unwrap();
        let meta = Meta {
            page_size: P,
            flags: 0,
            root: root_id,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: app.next_pgid(),
            txid: 1,
            checksum: 0,
        };
        let mut file = encode_meta_page(0, &Meta { txid: 0, ..meta });
        file.extend(encode_meta_page(1, &meta));
        file.extend_from_slice(app.bytes());
        file
    }

    #[derive(Default)]
    struct Collect(Vec<(usize, Vec<u8>, Vec<u8>)>);
    impl Visitor<'_> for Collect {
        fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
            self.0.push((depth, key.to_vec(), if is_bucket { vec![] } else { value.to_vec() }));
        }
    }

    fn keys(n: usize, vlen: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::new(format!("k{i:08}").into_bytes(), vec![b'v'; vlen + i % 7]))
            .collect()
    }

    #[test]
    fn tree_roundtrip_with_branches_overflow_and_inline() {
        let mut big = keys(3000, 40);
        big.push(Entry::new(b"zz-large".to_vec(), vec![7u8; 30_000]));
        let file = build(&[("a", keys(2, 3)), ("b", big.clone()), ("empty", vec![])]);
        let db = Db::open(&file).unwrap();
        let mut c = Collect::default();
        let report = walk(&db, &mut c, &WalkOptions::default());
        assert!(report.is_ok(), "{:?}", report.problems);
        let in_b =
            c.0.iter()
                .filter(|(d, k, _)| *d == 1 && (k.starts_with(b"k") || k == b"zz-large"))
                .count();
        assert_eq!(in_b, 2 + 3001);
        let root = collect_entries(&db, db.meta().root, 10).unwrap();
        assert_eq!(root.len(), 3);
        let a = BucketHeader::parse(&root[0].value).unwrap();
        assert_eq!(a.root, 0, "a small bucket is kept inline");
        let b = BucketHeader::parse(&root[1].value).unwrap();
        let last = last_entry(&db, b.root).unwrap().unwrap();
        assert_eq!(last.key, b"zz-large");
        assert_eq!(last.value.len(), 30_000);
    }

    #[test]
    fn append_last_grows_the_rightmost_path() {
        let file = build(&[("key", keys(5000, 100))]);
        let db = Db::open(&file).unwrap();
        let root_entries = collect_entries(&db, db.meta().root, 10).unwrap();
        let header = BucketHeader::parse(&root_entries[0].value).unwrap();
        let mut app = Appender::new(P, db.meta().pgid);
        let new_root =
            app.append_last(&db, header.root, Entry::new(b"z".to_vec(), vec![])).unwrap();
        let new_root_bucket =
            app.tree(&[Entry::bucket(b"key".to_vec(), bucket_value(new_root, 0, None))]).unwrap();
        let mut file2 = file.clone();
        file2.extend_from_slice(app.bytes());
        let meta = Meta { root: new_root_bucket, pgid: app.next_pgid(), txid: 2, ..*db.meta() };
        file2[..P as usize].copy_from_slice(&encode_meta_page(0, &meta));
        let db2 = Db::open(&file2).unwrap();
        let mut c = Collect::default();
        let report = walk(&db2, &mut c, &WalkOptions::default());
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(c.0.len(), 1 + 5001);
        assert_eq!(c.0.last().unwrap().1, b"z");
        // Only the rightmost path was rewritten: a handful of pages, not the tree.
        assert!(
            app.next_pgid() - db.meta().pgid <= 4,
            "{} new pages",
            app.next_pgid() - db.meta().pgid
        );
        // the old pages are unreachable now, hence implicitly free
        assert!(report.free_pages >= 2);
    }

    /// Appends `extra` entries after `base` ones in bucket `key` with `append_sorted`, pages
    /// spilled through the sink into the file, and returns the new file.
    fn append_many(base: usize, extra: usize, value: usize) -> (Vec<u8>, u64, u64) {
        let file = build(&[("key", keys(base, 100))]);
        let db = Db::open(&file).unwrap();
        let root_entries = collect_entries(&db, db.meta().root, 10).unwrap();
        let header = BucketHeader::parse(&root_entries[0].value).unwrap();
        let mut app = Appender::new(P, db.meta().pgid);
        let mut spilled: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut new = (0..extra)
            .map(|i| Entry::new(format!("l{i:08}").into_bytes(), vec![(i % 251) as u8; value]));
        let mut sink = |at: u64, pages: &[u8]| {
            spilled.push((at, pages.to_vec()));
            Ok(())
        };
        let (new_root, n) = app.append_sorted(&db, header.root, &mut new, &mut sink).unwrap();
        assert_eq!(n, extra as u64);
        let new_root_bucket =
            app.tree(&[Entry::bucket(b"key".to_vec(), bucket_value(new_root, 0, None))]).unwrap();
        let mut file2 = file.clone();
        file2.resize(app.next_pgid() as usize * P as usize, 0);
        spilled.push((app.pending_start(), app.bytes().to_vec()));
        for (at, pages) in spilled {
            let off = at as usize * P as usize;
            file2[off..off + pages.len()].copy_from_slice(&pages);
        }
        let meta = Meta { root: new_root_bucket, pgid: app.next_pgid(), txid: 2, ..*db.meta() };
        file2[..P as usize].copy_from_slice(&encode_meta_page(0, &meta));
        (file2, db.meta().pgid, app.next_pgid())
    }

    #[test]
    fn append_sorted_adds_many_keys_along_the_right_edge() {
        for (base, extra, value) in
            [(5000, 20_000, 300), (41, 2, 10), (41, 5000, 10), (2000, 1, 5000), (700, 40, 9000)]
        {
            let (file, old_pgid, new_pgid) = append_many(base, extra, value);
            let db = Db::open(&file).unwrap();
            let mut c = Collect::default();
            let report = walk(&db, &mut c, &WalkOptions::default());
            assert!(report.is_ok(), "{base}+{extra}: {:?}", report.problems);
            let in_bucket: Vec<&Vec<u8>> =
                c.0.iter().filter(|(d, _, _)| *d == 1).map(|(_, k, _)| k).collect();
            assert_eq!(in_bucket.len(), base + extra, "{base}+{extra}");
            assert!(in_bucket.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(*in_bucket.last().unwrap(), &format!("l{:08}", extra - 1).into_bytes());
            // New pages: about the appended bytes, not a copy of the old tree.
            let entry_size = value + 9 + ELEMENT_SIZE;
            let appended_pages = if entry_size + PAGE_HEADER_SIZE > P as usize {
                (extra * (entry_size + PAGE_HEADER_SIZE).div_ceil(P as usize)) as u64
            } else {
                (extra * entry_size).div_ceil(P as usize) as u64
            };
            assert!(
                new_pgid - old_pgid <= appended_pages * 12 / 10 + 8,
                "{base}+{extra}: {} new pages for {appended_pages} pages of entries",
                new_pgid - old_pgid
            );
        }
    }

    #[test]
    fn append_sorted_refuses_keys_out_of_order() {
        let file = build(&[("key", keys(50, 100))]);
        let db = Db::open(&file).unwrap();
        let root_entries = collect_entries(&db, db.meta().root, 10).unwrap();
        let header = BucketHeader::parse(&root_entries[0].value).unwrap();
        let mut app = Appender::new(P, db.meta().pgid);
        let mut sink = |_: u64, _: &[u8]| Ok(());
        let mut before = std::iter::once(Entry::new(b"a".to_vec(), vec![]));
        assert!(app.append_sorted(&db, header.root, &mut before, &mut sink).is_err());
        let mut unsorted =
            [Entry::new(b"x2".to_vec(), vec![]), Entry::new(b"x1".to_vec(), vec![])].into_iter();
        assert!(app.append_sorted(&db, header.root, &mut unsorted, &mut sink).is_err());
        let mut none = std::iter::empty();
        assert_eq!(
            app.append_sorted(&db, header.root, &mut none, &mut sink).unwrap(),
            (header.root, 0)
        );
    }

    #[test]
    fn append_last_into_full_single_leaf_makes_a_branch() {
        let entries: Vec<Entry> =
            (0..30).map(|i| Entry::new(vec![b'a', i as u8], vec![0u8; 120])).collect();
        let file = build(&[("x", entries)]);
        let db = Db::open(&file).unwrap();
        let root_entries = collect_entries(&db, db.meta().root, 10).unwrap();
        let header = BucketHeader::parse(&root_entries[0].value).unwrap();
        assert_ne!(header.root, 0);
        let mut app = Appender::new(P, db.meta().pgid);
        let r = app.append_last(&db, header.root, Entry::new(b"b".to_vec(), vec![1; 200])).unwrap();
        let mut file2 = file.clone();
        file2.extend_from_slice(app.bytes());
        let db2_meta = Meta { pgid: app.next_pgid(), ..*db.meta() };
        file2[P as usize..2 * P as usize].copy_from_slice(&encode_meta_page(1, &db2_meta));
        let db2 = Db::open(&file2).unwrap();
        let all = collect_entries(&db2, r, 100).unwrap();
        assert_eq!(all.len(), 31);
        assert_eq!(all.last().unwrap().key, b"b");
    }

    #[test]
    fn refuses_unsorted_and_empty_keys() {
        assert!(encode_leaf(
            0,
            &[Entry::new(b"b".to_vec(), vec![]), Entry::new(b"a".to_vec(), vec![])],
            Some(P)
        )
        .is_err());
        assert!(encode_leaf(0, &[Entry::new(Vec::new(), vec![])], Some(P)).is_err());
        assert!(encode_branch(3, &[], P).is_err());
    }

    #[test]
    fn meta_page_roundtrip() {
        let meta = Meta {
            page_size: P,
            flags: 0,
            root: 3,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: 4,
            txid: 9,
            checksum: 0,
        };
        let page = encode_meta_page(1, &meta);
        let parsed = Meta::parse(&page).unwrap();
        assert_eq!(parsed.txid, 9);
        assert_eq!(parsed.root, 3);
        assert_eq!(&page[0..8], &1u64.to_le_bytes());
    }
}
