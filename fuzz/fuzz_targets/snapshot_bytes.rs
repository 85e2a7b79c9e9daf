//! Arbitrary bytes as a snapshot file: open them as a bbolt database, walk every bucket and
//! key, then run `snapshot status` and `snapshot verify` on them and render every output.
//! Any input must give a value or an error, never a panic, hang or out-of-bounds read.
#![no_main]

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions};
use etcdguard_storage::{status, verify, Format};
use libfuzzer_sys::fuzz_target;

/// Touches every byte it is handed, so a bad slice shows up under the sanitizer.
#[derive(Default)]
struct Touch {
    sum: u64,
    entries: u64,
    depth: usize,
}

impl Visitor<'_> for Touch {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], _is_bucket: bool) {
        self.entries += 1;
        self.sum = key
            .iter()
            .chain(value)
            .fold(self.sum ^ depth as u64, |s, &b| s.rotate_left(5) ^ b as u64);
    }
    fn enter_bucket(&mut self, depth: usize, _name: &[u8]) {
        self.depth = self.depth.max(depth);
    }
}

fn exercise(image: &[u8]) {
    let Ok(db) = Db::open(image) else { return };
    assert!(db.total_size() <= image.len() as u64);
    let _ = db.meta();
    let mut touch = Touch::default();
    let report = walk(&db, &mut touch, &WalkOptions { max_problems: 8, ..WalkOptions::default() });
    for p in &report.problems {
        let _ = p.to_string();
    }
    std::hint::black_box(touch.sum);

    match status(&db, None) {
        Ok(s) => {
            for f in [Format::Simple, Format::Table, Format::Json, Format::Fields] {
                let _ = s.render(f);
            }
            // status only succeeds when the structural walk found nothing.
            assert!(report.is_ok(), "status accepted a file the walk rejected");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    let v = verify(&db, None);
    assert_eq!(v.structure.problem_count, report.problem_count, "verify and walk disagree");
    for p in &v.schema_problems {
        let _ = p.to_string();
    }
    let _ = v.is_ok();
}

fuzz_target!(|data: &[u8]| {
    // As the CLI does: a length 32 past a multiple of 512 means a sha256 trailer.
    if data.len() % 512 == 32 {
        exercise(&data[..data.len() - 32]);
    }
    exercise(data);
});
