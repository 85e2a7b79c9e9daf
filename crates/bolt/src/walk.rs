//! One pass over a database: visits every bucket and key in byte order and runs the
//! consistency rules of bbolt's `tx.Check` on the way (page bounds and types, no page used
//! twice, key order, freelist agreement). Problems are collected, not thrown: a damaged
//! subtree is reported and skipped, and the rest is still walked.

use std::fmt;

use crate::page::{BucketHeader, ElementError, Page, PageKind, NO_FREELIST};
use crate::{Db, PageError};

/// Deeper trees than this cannot come from bbolt (it would need more pages than a u64 has).
const MAX_TREE_DEPTH: usize = 64;
/// etcd never nests buckets; bbolt allows it. Deeper than this is certainly damage.
const MAX_BUCKET_DEPTH: usize = 64;

/// Receives the database's contents in byte order.
///
/// `depth` is the depth of the bucket the entry belongs to: 0 for the root bucket (whose
/// entries are the top-level bucket names), 1 for entries of a top-level bucket, and so on.
/// A sub-bucket entry is reported with `is_bucket = true` and its header bytes as `value`,
/// then its contents follow between `enter_bucket` and `leave_bucket`. Keys and values borrow
/// the database's bytes (`'a`), so a visitor may keep them past the walk without copying.
pub trait Visitor<'a> {
    fn entry(&mut self, _depth: usize, _key: &'a [u8], _value: &'a [u8], _is_bucket: bool) {}
    fn enter_bucket(&mut self, _depth: usize, _name: &'a [u8]) {}
    fn leave_bucket(&mut self, _depth: usize, _name: &[u8]) {}
}

impl Visitor<'_> for () {}

/// Knobs for [`walk`].
pub struct WalkOptions<'r> {
    /// Problems kept in the report; later ones are only counted.
    pub max_problems: usize,
    /// Called after every `release_every` bytes of pages visited, to drop resident pages of
    /// a memory map when they have grown ([`crate::MappedFile::release_resident`] checks the
    /// resident set first, so frequent calls are cheap). Small steps matter: each fault can
    /// map a whole large page-cache folio (a file just written has them), so far more than N
    /// bytes can be resident after N bytes of pages.
    pub release: Option<&'r dyn Fn()>,
    pub release_every: u64,
}

impl Default for WalkOptions<'_> {
    fn default() -> Self {
        WalkOptions { max_problems: 100, release: None, release_every: 1 << 16 }
    }
}

/// What went wrong, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub page: Option<u64>,
    /// Bucket names from the top level down; empty for the root bucket.
    pub bucket: Vec<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The id is at or past the high-water mark.
    OutOfBounds {
        pgid: u64,
    },
    /// The page's overflow run goes past the high-water mark.
    SpanOutOfBounds {
        overflow: u32,
        pgid: u64,
    },
    /// The page (or one of its overflow pages) is referenced twice, or is a meta page.
    MultipleReferences,
    /// The page header names another page id.
    IdMismatch {
        found: u64,
    },
    /// A page in a bucket tree that is neither branch nor leaf.
    InvalidType {
        kind: PageKind,
    },
    /// The page is in use and also listed as free.
    ReachableFreed,
    /// Not in use and not listed as free (only checkable with a persisted freelist).
    UnreachableUnfreed,
    /// The freelist lists the page twice.
    AlreadyFreed,
    /// The freelist lists a page past the high-water mark or a meta page.
    FreedOutOfRange,
    /// The freelist page is missing, of the wrong type or malformed.
    BadFreelist(String),
    Element(ElementError),
    /// Keys not strictly increasing.
    KeyOrder {
        previous: Vec<u8>,
    },
    /// A key below the branch key that leads to its page.
    KeyBelowBranch {
        branch_key: Vec<u8>,
    },
    /// A key at or above the next branch key of an ancestor.
    KeyAboveBranch {
        next_key: Vec<u8>,
    },
    EmptyBranch,
    /// A sub-bucket value too short for a bucket header.
    BadBucketHeader {
        len: usize,
    },
    /// An inline bucket whose page is not a leaf.
    InlineNotLeaf,
    TooDeep,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(page) = self.page {
            write!(f, "page {page}")?;
        } else {
            write!(f, "inline page")?;
        }
        if !self.bucket.is_empty() {
            let names: Vec<String> = self.bucket.iter().map(|b| display_key(b)).collect();
            write!(f, " in bucket {}", names.join("/"))?;
        }
        if let Some(key) = &self.key {
            write!(f, " at key {}", display_key(key))?;
        }
        write!(f, ": ")?;
        match &self.kind {
            ProblemKind::OutOfBounds { pgid } => {
                write!(f, "out of bounds (high-water mark {pgid})")
            }
            ProblemKind::SpanOutOfBounds { overflow, pgid } => {
                write!(f, "{overflow} overflow pages run past the high-water mark {pgid}")
            }
            ProblemKind::MultipleReferences => write!(f, "multiple references"),
            ProblemKind::IdMismatch { found } => write!(f, "header says it is page {found}"),
            ProblemKind::InvalidType { kind } => match kind {
                PageKind::Unknown(flags) => write!(f, "invalid page type (flags {flags:#06x})"),
                k => write!(f, "invalid page type {} in a bucket tree", k.name()),
            },
            ProblemKind::ReachableFreed => write!(f, "in use but listed as free"),
            ProblemKind::UnreachableUnfreed => write!(f, "unreachable and not free"),
            ProblemKind::AlreadyFreed => write!(f, "listed twice in the freelist"),
            ProblemKind::FreedOutOfRange => write!(f, "freelist lists a page that cannot be free"),
            ProblemKind::BadFreelist(why) => write!(f, "bad freelist: {why}"),
            ProblemKind::Element(e) => write!(f, "{e}"),
            ProblemKind::KeyOrder { previous } => {
                write!(f, "keys out of order (previous key {})", display_key(previous))
            }
            ProblemKind::KeyBelowBranch { branch_key } => {
                write!(f, "key sorts before its branch key {}", display_key(branch_key))
            }
            ProblemKind::KeyAboveBranch { next_key } => {
                write!(f, "key sorts at or after the next branch key {}", display_key(next_key))
            }
            ProblemKind::EmptyBranch => write!(f, "branch page without elements"),
            ProblemKind::BadBucketHeader { len } => {
                write!(f, "bucket value of {len} bytes is too short for a bucket header")
            }
            ProblemKind::InlineNotLeaf => write!(f, "inline bucket page is not a leaf"),
            ProblemKind::TooDeep => {
                write!(f, "tree or bucket nesting deeper than {MAX_TREE_DEPTH}")
            }
        }
    }
}

/// A key for humans: printable ASCII in quotes, anything else as hex.
pub fn display_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(key))
    } else {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

/// What a walk saw.
#[derive(Debug, Clone, Default)]
pub struct WalkReport {
    /// The first `max_problems` problems, in the order found.
    pub problems: Vec<Problem>,
    /// All problems found, including those not kept.
    pub problem_count: usize,
    pub reachable_pages: u64,
    /// Pages free by the persisted freelist, or unreachable ones when none is persisted.
    pub free_pages: u64,
    /// Whether the file persists a freelist (etcd on Linux does not).
    pub freelist_persisted: bool,
}

impl WalkReport {
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets bit i; returns whether it was already set.
    fn set(&mut self, i: u64) -> bool {
        let word = &mut self.0[(i / 64) as usize];
        let was = *word & (1 << (i % 64)) != 0;
        *word |= 1 << (i % 64);
        was
    }
}

struct Walker<'a, 'd, 'v, 'r, V: Visitor<'a>> {
    db: &'d Db<'a>,
    visitor: &'v mut V,
    opts: &'d WalkOptions<'r>,
    reachable: Bits,
    free: Option<Bits>,
    path: Vec<&'a [u8]>,
    report: WalkReport,
    bytes_since_release: u64,
}

/// Walks the whole database: the freelist, then the root bucket and every bucket below it.
pub fn walk<'a, V: Visitor<'a>>(
    db: &Db<'a>,
    visitor: &mut V,
    opts: &WalkOptions<'_>,
) -> WalkReport {
    let pgid = db.meta().pgid;
    let mut w = Walker {
        db,
        visitor,
        opts,
        reachable: Bits::new(pgid),
        free: None,
        path: Vec::new(),
        report: WalkReport::default(),
        bytes_since_release: 0,
    };
    w.reachable.set(0);
    w.reachable.set(1);
    w.load_freelist();
    let root = db.meta().root;
    let mut prev = None;
    w.walk_tree(root, 0, None, None, 0, &mut prev);
    w.finish()
}

impl<'a, V: Visitor<'a>> Walker<'a, '_, '_, '_, V> {
    fn problem(&mut self, page: Option<u64>, key: Option<&[u8]>, kind: ProblemKind) {
        self.report.problem_count += 1;
        if self.report.problems.len() < self.opts.max_problems {
            self.report.problems.push(Problem {
                page,
                bucket: self.path.iter().map(|b| b.to_vec()).collect(),
                key: key.map(|k| k.to_vec()),
                kind,
            });
        }
    }

    fn load_freelist(&mut self) {
        let meta = *self.db.meta();
        if meta.freelist == NO_FREELIST {
            return;
        }
        self.report.freelist_persisted = true;
        let mut free = Bits::new(meta.pgid);
        let page = match self.db.page(meta.freelist) {
            Ok(p) => p,
            Err(e) => {
                self.problem(
                    Some(meta.freelist),
                    None,
                    ProblemKind::BadFreelist(page_error_text(e)),
                );
                self.free = Some(free);
                return;
            }
        };
        if page.kind != PageKind::Freelist {
            let why = format!("page is a {} page", page.kind.name());
            self.problem(Some(meta.freelist), None, ProblemKind::BadFreelist(why));
        }
        for id in meta.freelist..=meta.freelist + page.overflow as u64 {
            if self.reachable.set(id) {
                self.problem(Some(id), None, ProblemKind::MultipleReferences);
            }
        }
        match page.freelist_ids() {
            Ok(ids) => {
                for id in ids {
                    if id < 2 || id >= meta.pgid {
                        self.problem(Some(id), None, ProblemKind::FreedOutOfRange);
                    } else if free.set(id) {
                        self.problem(Some(id), None, ProblemKind::AlreadyFreed);
                    }
                }
            }
            Err(e) => {
                self.problem(Some(meta.freelist), None, ProblemKind::BadFreelist(e.to_string()))
            }
        }
        self.free = Some(free);
    }

    fn walk_bucket(&mut self, header: BucketHeader<'a>, depth: usize) {
        let mut prev = None;
        match header.inline_page {
            None => self.walk_tree(header.root, depth, None, None, 0, &mut prev),
            Some(bytes) => match Page::parse(bytes) {
                Some(page) if page.kind == PageKind::Leaf => {
                    self.walk_leaf(None, page, depth, None, None, &mut prev)
                }
                _ => self.problem(None, None, ProblemKind::InlineNotLeaf),
            },
        }
    }

    /// Walks the subtree at page `id`. `lower` is the branch key that led here, `upper` the
    /// next branch key of the nearest ancestor that has one.
    fn walk_tree(
        &mut self,
        id: u64,
        depth: usize,
        lower: Option<&'a [u8]>,
        upper: Option<&'a [u8]>,
        level: usize,
        prev: &mut Option<&'a [u8]>,
    ) {
        if level > MAX_TREE_DEPTH {
            return self.problem(Some(id), None, ProblemKind::TooDeep);
        }
        let page = match self.db.page(id) {
            Ok(p) => p,
            Err(PageError::OutOfBounds { pgid }) => {
                return self.problem(Some(id), None, ProblemKind::OutOfBounds { pgid })
            }
            Err(PageError::SpanOutOfBounds { overflow, pgid }) => {
                return self.problem(
                    Some(id),
                    None,
                    ProblemKind::SpanOutOfBounds { overflow, pgid },
                )
            }
        };
        let mut twice = false;
        for p in id..=id + page.overflow as u64 {
            twice |= self.reachable.set(p);
        }
        if twice {
            // Walking it again could loop forever on a cycle.
            return self.problem(Some(id), None, ProblemKind::MultipleReferences);
        }
        self.report.reachable_pages += 1 + page.overflow as u64;
        if page.id != id {
            return self.problem(Some(id), None, ProblemKind::IdMismatch { found: page.id });
        }
        if self.free.as_ref().is_some_and(|f| f.get(id)) {
            self.problem(Some(id), None, ProblemKind::ReachableFreed);
        }
        self.account(page.bytes.len());
        match page.kind {
            PageKind::Branch => self.walk_branch(page, depth, lower, upper, level, prev),
            PageKind::Leaf => self.walk_leaf(Some(id), page, depth, lower, upper, prev),
            kind => self.problem(Some(id), None, ProblemKind::InvalidType { kind }),
        }
    }

    fn walk_branch(
        &mut self,
        page: Page<'a>,
        depth: usize,
        lower: Option<&'a [u8]>,
        upper: Option<&'a [u8]>,
        level: usize,
        prev: &mut Option<&'a [u8]>,
    ) {
        let id = page.id;
        if page.count == 0 {
            return self.problem(Some(id), None, ProblemKind::EmptyBranch);
        }
        let count = page.count as usize;
        let mut elem = match page.branch_element(0) {
            Ok(e) => e,
            Err(e) => return self.problem(Some(id), None, ProblemKind::Element(e)),
        };
        if let Some(lower) = lower {
            if elem.key < lower {
                self.problem(
                    Some(id),
                    Some(elem.key),
                    ProblemKind::KeyBelowBranch { branch_key: lower.to_vec() },
                );
            }
        }
        for i in 0..count {
            let next = if i + 1 < count {
                match page.branch_element(i + 1) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        self.problem(Some(id), None, ProblemKind::Element(e));
                        None
                    }
                }
            } else {
                None
            };
            if let Some(n) = &next {
                if n.key <= elem.key {
                    self.problem(
                        Some(id),
                        Some(n.key),
                        ProblemKind::KeyOrder { previous: elem.key.to_vec() },
                    );
                }
            }
            if let Some(upper) = upper {
                if elem.key >= upper {
                    self.problem(
                        Some(id),
                        Some(elem.key),
                        ProblemKind::KeyAboveBranch { next_key: upper.to_vec() },
                    );
                }
            }
            let child_upper = next.map(|n| n.key).or(upper);
            self.walk_tree(elem.child, depth, Some(elem.key), child_upper, level + 1, prev);
            match next {
                Some(n) => elem = n,
                None if i + 1 < count => return, // element error already reported
                None => {}
            }
        }
    }

    fn walk_leaf(
        &mut self,
        id: Option<u64>,
        page: Page<'a>,
        depth: usize,
        lower: Option<&'a [u8]>,
        upper: Option<&'a [u8]>,
        prev: &mut Option<&'a [u8]>,
    ) {
        for i in 0..page.count as usize {
            let elem = match page.leaf_element(i) {
                Ok(e) => e,
                Err(e) => return self.problem(id, None, ProblemKind::Element(e)),
            };
            if i == 0 {
                if let Some(lower) = lower {
                    if elem.key < lower {
                        let kind = ProblemKind::KeyBelowBranch { branch_key: lower.to_vec() };
                        self.problem(id, Some(elem.key), kind);
                    }
                }
            }
            if let Some(p) = *prev {
                if elem.key <= p {
                    self.problem(
                        id,
                        Some(elem.key),
                        ProblemKind::KeyOrder { previous: p.to_vec() },
                    );
                }
            }
            if let Some(upper) = upper {
                if elem.key >= upper {
                    self.problem(
                        id,
                        Some(elem.key),
                        ProblemKind::KeyAboveBranch { next_key: upper.to_vec() },
                    );
                }
            }
            *prev = Some(elem.key);
            let is_bucket = elem.is_bucket();
            self.visitor.entry(depth, elem.key, elem.value, is_bucket);
            if !is_bucket {
                continue;
            }
            let Some(header) = BucketHeader::parse(elem.value) else {
                self.problem(
                    id,
                    Some(elem.key),
                    ProblemKind::BadBucketHeader { len: elem.value.len() },
                );
                continue;
            };
            if depth >= MAX_BUCKET_DEPTH {
                self.problem(id, Some(elem.key), ProblemKind::TooDeep);
                continue;
            }
            self.path.push(elem.key);
            self.visitor.enter_bucket(depth + 1, elem.key);
            self.walk_bucket(header, depth + 1);
            self.visitor.leave_bucket(depth + 1, elem.key);
            self.path.pop();
        }
    }

    fn account(&mut self, bytes: usize) {
        self.bytes_since_release += bytes as u64;
        if self.bytes_since_release >= self.opts.release_every {
            self.bytes_since_release = 0;
            if let Some(release) = self.opts.release {
                release();
            }
        }
    }

    fn finish(mut self) -> WalkReport {
        let pgid = self.db.meta().pgid;
        match self.free.take() {
            Some(free) => {
                for id in 2..pgid {
                    let is_free = free.get(id);
                    if is_free {
                        self.report.free_pages += 1;
                    } else if !self.reachable.get(id) {
                        self.path.clear();
                        self.problem(Some(id), None, ProblemKind::UnreachableUnfreed);
                    }
                }
            }
            None => {
                self.report.free_pages =
                    (2..pgid).filter(|&id| !self.reachable.get(id)).count() as u64;
            }
        }
        self.report
    }
}

fn page_error_text(e: PageError) -> String {
    match e {
        PageError::OutOfBounds { pgid } => format!("out of bounds (high-water mark {pgid})"),
        PageError::SpanOutOfBounds { overflow, pgid } => {
            format!("{overflow} overflow pages run past the high-water mark {pgid}")
        }
    }
}
