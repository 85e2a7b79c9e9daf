//! The `key` bucket in revision order: what `inspect` reads to find each key's newest value.

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions};

use crate::proto::KeyValue;
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
pub struct RevisionVisitor<'f> {
    in_key_bucket: bool,
    f: &'f mut dyn FnMut(Revision<'_>),
    first_error: Option<String>,
}

impl<'f> RevisionVisitor<'f> {
    pub fn new(f: &'f mut dyn FnMut(Revision<'_>)) -> Self {
        RevisionVisitor { in_key_bucket: false, f, first_error: None }
    }

    /// The first entry that did not decode; no revision after it was handed on.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }
}

impl Visitor for RevisionVisitor<'_> {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        if depth != 1 || !self.in_key_bucket || is_bucket || self.first_error.is_some() {
            return;
        }
        match (parse_revision(key), KeyValue::decode(value)) {
            (Ok((main, sub, tombstone)), Ok(kv)) => (self.f)(Revision { main, sub, tombstone, kv }),
            (Err(e), _) | (_, Err(e)) => self.first_error = Some(e),
        }
    }

    fn enter_bucket(&mut self, depth: usize, name: &[u8]) {
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

/// Calls `f` for every revision in the `key` bucket, oldest first. Fails on the first entry
/// that does not decode, or when the tree walk finds damage.
pub fn for_each_revision(db: &Db<'_>, release: Option<&dyn Fn()>, f: &mut dyn FnMut(Revision<'_>)) -> Result<(), String> {
    let mut v = RevisionVisitor::new(f);
    let opts = WalkOptions { release, ..WalkOptions::default() };
    let report = walk(db, &mut v, &opts);
    if let Some(e) = v.first_error {
        return Err(format!("key bucket: {e}"));
    }
    if !report.is_ok() {
        return Err(format!("the database is damaged ({} problems); run `etcdguard snapshot verify`", report.problem_count));
    }
    Ok(())
}
