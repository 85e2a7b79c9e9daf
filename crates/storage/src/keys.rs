//! The `key` bucket in revision order: what `inspect` reads to find each key's newest value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions};

use crate::proto::KeyValue;
use crate::snapshot_file::SnapshotFile;
use crate::verify::parse_revision;

/// One entry of the `key` bucket.
pub struct Revision<'a> {
    pub main: i64,
    pub sub: i64,
    /// A deletion: the key has no value from this revision on.
    pub tombstone: bool,
    pub kv: KeyValue<'a>,
}

/// A walk [`Visitor`] that decodes the `key` bucket's entries and hands each to `f`; for a
/// walk that does other work too (a restore's self-check).
pub struct RevisionVisitor<'f, 'a> {
    in_key_bucket: bool,
    f: &'f mut dyn FnMut(Revision<'a>),
    first_error: Option<String>,
}

impl<'f, 'a> RevisionVisitor<'f, 'a> {
    pub fn new(f: &'f mut dyn FnMut(Revision<'a>)) -> Self {
        RevisionVisitor { in_key_bucket: false, f, first_error: None }
    }

    /// The first entry that did not decode; no revision after it was handed on.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }
}

impl<'a> Visitor<'a> for RevisionVisitor<'_, 'a> {
    fn entry(&mut self, depth: usize, key: &'a [u8], value: &'a [u8], is_bucket: bool) {
        if depth != 1 || !self.in_key_bucket || is_bucket || self.first_error.is_some() {
            return;
        }
        match (parse_revision(key), KeyValue::decode(value)) {
            (Ok((main, sub, tombstone)), Ok(kv)) => (self.f)(Revision { main, sub, tombstone, kv }),
            (Err(e), _) | (_, Err(e)) => self.first_error = Some(e),
        }
    }

    fn enter_bucket(&mut self, depth: usize, name: &'a [u8]) {
        if depth == 1 {
            self.in_key_bucket = name == b"key";
        }
    }

    fn leave_bucket(&mut self, depth: usize, _name: &[u8]) {
        if depth == 1 {
            self.in_key_bucket = false;
        }
    }
}

/// A live key's newest revision. The key is copied (it is small, and sorting or hashing keys
/// left in the file would map pages from all over it); the value stays in the file.
#[derive(Debug, Clone)]
pub struct Newest<'a> {
    pub key: Box<[u8]>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: &'a [u8],
}

/// Each live key's newest revision, for the keys `want` accepts, from one walk; sorted by
/// key. Memory grows with the number of live keys, not with their values.
pub fn newest_live<'a>(
    db: &Db<'a>,
    release: Option<&dyn Fn()>,
    want: &dyn Fn(&[u8]) -> bool,
) -> Result<Vec<Newest<'a>>, String> {
    let mut tracker = Tracker::default();
    for_each_revision(db, release, &mut |r| {
        if want(r.kv.key) {
            tracker.observe(&r);
        }
    })?;
    Ok(tracker.into_sorted())
}

/// Each key's newest revision so far, over revisions seen oldest first.
#[derive(Default)]
struct Tracker<'a> {
    newest: HashMap<Box<[u8]>, Newest<'a>>,
}

impl<'a> Tracker<'a> {
    /// Takes `r` into account; the key's new newest revision, unless `r` deleted it.
    fn observe(&mut self, r: &Revision<'a>) -> Option<&Newest<'a>> {
        if r.tombstone {
            self.newest.remove(r.kv.key);
            return None;
        }
        let kv = &r.kv;
        let n = Newest {
            key: kv.key.into(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
        };
        let slot = self.newest.entry(kv.key.into()).insert_entry(n);
        Some(slot.into_mut())
    }

    fn into_sorted(self) -> Vec<Newest<'a>> {
        let mut live: Vec<Newest<'a>> = self.newest.into_values().collect();
        live.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        live
    }
}

/// [`newest_live`] and [`map_in_file_order`] in one: each live key's newest revision (for the
/// keys `want` accepts), sorted by key, with `f` of it. While the walk runs on this thread,
/// another core already applies `f` to the revisions as they come (most are their key's
/// newest); what it did not reach, or did for a revision that a later one replaced, is done
/// afterwards on all cores. The extra work is bounded by the walk's time, on a core that
/// would otherwise wait.
pub fn map_newest_live<'a, T: Send>(
    file: &SnapshotFile,
    db: &Db<'a>,
    want: &dyn Fn(&[u8]) -> bool,
    f: &(dyn Fn(&Newest<'a>, &[u8]) -> T + Sync),
) -> Result<Vec<(Newest<'a>, T)>, String> {
    // Revisions handed to the other core at a time.
    const BATCH: usize = 64;
    let release = || file.release_resident();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        let live = newest_live(db, Some(&release), want)?;
        let made = map_in_file_order(file, &live, f);
        return Ok(live.into_iter().zip(made).collect());
    }
    let walk_done = AtomicBool::new(false);
    let (live, mut early) = std::thread::scope(|scope| {
        let (send, batches) = std::sync::mpsc::channel::<Vec<Newest<'a>>>();
        let walk_done = &walk_done;
        let early = scope.spawn(move || {
            // Per key, the newest revision done so far (revisions come in order).
            let mut done: HashMap<Box<[u8]>, (i64, T)> = HashMap::new();
            let mut buf = Vec::new();
            for batch in batches {
                for n in batch {
                    if walk_done.load(Ordering::Relaxed) {
                        return done;
                    }
                    let made = f(&n, value_of(file, n.value, &mut buf));
                    done.insert(n.key, (n.mod_revision, made));
                }
            }
            done
        });
        let mut tracker = Tracker::default();
        let mut batch = Vec::with_capacity(BATCH);
        let walked = for_each_revision(db, Some(&release), &mut |r| {
            if !want(r.kv.key) {
                return;
            }
            let Some(n) = tracker.observe(&r) else { return };
            batch.push(n.clone());
            if batch.len() == BATCH {
                let _ = send.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
        });
        walk_done.store(true, Ordering::Relaxed);
        drop(send);
        let early = early.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        walked.map(|()| (tracker.into_sorted(), early))
    })?;
    // What the other core did for each key's newest revision is kept; the rest is done now.
    let mut made: Vec<Option<T>> = live
        .iter()
        .map(|n| early.remove(&n.key).filter(|(rev, _)| *rev == n.mod_revision).map(|(_, t)| t))
        .collect();
    drop(early);
    let missing: Vec<usize> = (0..live.len()).filter(|&i| made[i].is_none()).collect();
    let rest_items: Vec<Newest<'a>> = missing.iter().map(|&i| live[i].clone()).collect();
    for (i, t) in missing.into_iter().zip(map_in_file_order(file, &rest_items, f)) {
        made[i] = Some(t);
    }
    Ok(live.into_iter().zip(made).filter_map(|(n, t)| Some((n, t?))).collect())
}

/// `f(item, value)` for every item of `file`'s database, on all cores; the results come back
/// in the items' order. The values are visited in the order they lie in the file (so the
/// kernel reads ahead), and copied out with positioned reads rather than read through the map
/// ([`SnapshotFile::copy_out`]): mapping and dropping each page cost more than the copy.
pub fn map_in_file_order<'a, T: Send>(
    file: &SnapshotFile,
    items: &[Newest<'a>],
    f: &(dyn Fn(&Newest<'a>, &[u8]) -> T + Sync),
) -> Vec<T> {
    // Small enough that both cores stay busy to the end, large enough to read ahead.
    const CHUNK: usize = 64;
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by_key(|&i| items[i].value.as_ptr() as usize);
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(order.len().div_ceil(CHUNK).max(1));
    let work = || {
        let mut done: Vec<(usize, T)> = Vec::new();
        let mut buf = Vec::new();
        loop {
            let start = next.fetch_add(CHUNK, Ordering::Relaxed);
            if start >= order.len() {
                break;
            }
            for &i in &order[start..(start + CHUNK).min(order.len())] {
                let kv = &items[i];
                done.push((i, f(kv, value_of(file, kv.value, &mut buf))));
            }
        }
        done
    };
    let parts: Vec<Vec<(usize, T)>> = if threads == 1 {
        vec![work()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    let mut all: Vec<(usize, T)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// `value`, a slice of `file`'s map, copied into `buf` with a positioned read
/// ([`SnapshotFile::copy_out`]); a read that fails (it cannot, for a slice of the map) falls
/// back to the map itself.
fn value_of<'b>(file: &SnapshotFile, value: &'b [u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
    match file.copy_out(value, buf) {
        Ok(()) => &buf[..],
        Err(_) => value,
    }
}

/// Calls `f` for every revision in the `key` bucket, oldest first. Fails on the first entry
/// that does not decode, or when the tree walk finds damage.
pub fn for_each_revision<'a>(
    db: &Db<'a>,
    release: Option<&dyn Fn()>,
    f: &mut dyn FnMut(Revision<'a>),
) -> Result<(), String> {
    let mut v = RevisionVisitor::new(f);
    let opts = WalkOptions { release, ..WalkOptions::default() };
    let report = walk(db, &mut v, &opts);
    if let Some(e) = v.first_error {
        return Err(format!("key bucket: {e}"));
    }
    if !report.is_ok() {
        return Err(format!(
            "the database is damaged ({} problems); run `etcdguard snapshot verify`",
            report.problem_count
        ));
    }
    Ok(())
}
