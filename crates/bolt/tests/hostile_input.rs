//! The reader must answer every input with a value: damaged copies of real snapshots are
//! opened and walked, and any panic fails the test. (`fuzz/` does the same, unboundedly.)

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions};

const FIXTURES: [&[u8]; 2] =
    [include_bytes!("data/etcd-3.5.1-k8s-small.db"), include_bytes!("data/etcd-3.4.23-tiny.db")];

/// Counts what it sees, so the walk really visits values.
#[derive(Default)]
struct Count {
    entries: u64,
    bytes: u64,
}

impl Visitor<'_> for Count {
    fn entry(&mut self, _depth: usize, key: &[u8], value: &[u8], _is_bucket: bool) {
        self.entries += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }
}

fn image(fixture: &[u8]) -> &[u8] {
    &fixture[..fixture.len() - 32]
}

/// A small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn pristine_fixtures_walk_without_problems() {
    for fixture in FIXTURES {
        let db = Db::open(image(fixture)).expect("fixture opens");
        let mut count = Count::default();
        let report = walk(&db, &mut count, &WalkOptions::default());
        assert!(report.is_ok(), "{:?}", report.problems);
        assert!(count.entries > 10);
        assert_eq!(report.reachable_pages + report.free_pages + 2, db.meta().pgid);
    }
}

#[test]
fn random_byte_damage_never_panics_and_is_usually_seen() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for fixture in FIXTURES {
        let clean = image(fixture).to_vec();
        let mut detected = 0;
        let rounds = 1500;
        for _ in 0..rounds {
            let mut bytes = clean.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            match Db::open(&bytes) {
                Err(_) => detected += 1,
                Ok(db) => {
                    let report = walk(&db, &mut Count::default(), &WalkOptions::default());
                    if !report.is_ok() {
                        detected += 1;
                    }
                }
            }
        }
        // Most flips land in key/value bytes or slack, which only a content hash can see;
        // the structure check must still catch a share of them.
        assert!(detected > 0, "no damage detected in {rounds} rounds");
    }
}

#[test]
fn header_fields_overwritten_with_extremes_never_panic() {
    let mut rng = Rng(42);
    let clean = image(FIXTURES[0]).to_vec();
    let page_size = 4096;
    let pages = clean.len() / page_size;
    let extremes =
        [0u64, 1, 2, 0xFFFF, 0xFFFF_FFFF, u64::MAX, u64::MAX / 2, pages as u64, pages as u64 - 1];
    for _ in 0..3000 {
        let mut bytes = clean.clone();
        let page = rng.below(pages);
        // Page header, an element slot, or a meta field.
        let offset = page * page_size + rng.below(96) / 8 * 8;
        let value = extremes[rng.below(extremes.len())];
        let width = [2usize, 4, 8][rng.below(3)];
        bytes[offset..offset + width].copy_from_slice(&value.to_le_bytes()[..width]);
        if let Ok(db) = Db::open(&bytes) {
            walk(&db, &mut Count::default(), &WalkOptions::default());
        }
    }
}

#[test]
fn every_truncation_is_refused_or_walks() {
    let clean = image(FIXTURES[0]);
    for len in (0..clean.len()).step_by(97).chain([1, 15, 16, 79, 80, 4095, 4096, 8191, 8192]) {
        match Db::open(&clean[..len]) {
            Ok(db) => panic!("a {len}-byte prefix opened (pgid {})", db.meta().pgid),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
