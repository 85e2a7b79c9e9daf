//! Bad input for `etcdguard snapshot status` / `snapshot verify`: missing, unreadable, empty,
//! foreign, truncated and damaged files, and wrong usage. Every case must end with one clear
//! `Error: …` line on stderr and its own exit code (crates/cli/src/exit.rs), never a panic.
//!
//! Damaged files are made from a real snapshot (etcd 3.5.1, saved by the real etcdctl), and
//! where the real `etcdutl snapshot status` can judge a damaged file, etcdguard is held to
//! at least its strictness: whatever etcdutl rejects, etcdguard rejects; whatever both
//! accept, both print identically.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcdguard_bolt::{walk, Db, Visitor, WalkOptions};
use etcdguard_testkit::{load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec};

// Exit codes, as documented in README.md and crates/cli/src/exit.rs.
const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const PERMISSION_DENIED: i32 = 4;
const IS_DIRECTORY: i32 = 5;
const EMPTY: i32 = 6;
const NOT_SNAPSHOT: i32 = 7;
const TRUNCATED: i32 = 8;
const SHA256_MISMATCH: i32 = 9;
const CORRUPT: i32 = 10;
const LOCKED: i32 = 11;

// ---------------------------------------------------------------------------------------
// Fixture: one real snapshot, shared by all tests of this binary.

struct Fixture {
    dir: PathBuf,
    /// Snapshot from `etcdctl snapshot save` (image + sha256 trailer).
    snapshot: PathBuf,
    bytes: Vec<u8>,
    /// Length of the bbolt image (`bytes.len() - 32`).
    image_len: usize,
    page_size: usize,
    /// etcdguard run on the live server's `member/snap/db` while etcd held its lock.
    live_db_run: Run,
    /// The server's `member/snap/db` after it stopped (no trailer; metas of txid T and T-1).
    raw_db: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad_input");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = EtcdServer::start(EtcdVersion::V3_5);
        let spec = LoadSpec {
            objects: 100,
            large_objects: 2,
            updates: 20,
            deletes: 10,
            ..LoadSpec::default()
        };
        load_kubernetes_shaped(&server, &spec);
        let snapshot = dir.join("snapshot.db");
        server.snapshot_save(&snapshot);
        let live_db_run =
            etcdguard(&["snapshot", "status"], &server.data_dir().join("member/snap/db"));
        server.stop();
        let raw_db = std::fs::read(server.data_dir().join("member/snap/db")).unwrap();

        let bytes = std::fs::read(&snapshot).unwrap();
        assert_eq!(bytes.len() % 512, 32, "a snapshot ends with a 32-byte sha256 trailer");
        let page_size = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        let image_len = bytes.len() - 32;
        assert_eq!(image_len % page_size, 0);
        Fixture { dir, snapshot, bytes, image_len, page_size, live_db_run, raw_db }
    })
}

impl Fixture {
    /// Writes `bytes` to a fresh file named `name` in a private scratch dir.
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
    fn image(&self) -> &[u8] {
        &self.bytes[..self.image_len]
    }
}

// ---------------------------------------------------------------------------------------
// Running programs.

#[derive(Debug, Clone)]
struct Run {
    what: String,
    /// None when killed by a signal or by the timeout.
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn describe(&self) -> String {
        format!(
            "{}\n  exit: {:?}{}\n  stdout: {}\n  stderr: {}",
            self.what,
            self.code,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            truncate(&self.stdout),
            truncate(&self.stderr)
        )
    }
    /// No panic, no crash, no hang: a deliberate exit.
    fn problems_with_exit(&self) -> Option<String> {
        if self.timed_out {
            return Some(format!("hung: {}", self.describe()));
        }
        if self.code.is_none() || self.code == Some(101) || self.stderr.contains("panicked") {
            return Some(format!("panic or crash: {}", self.describe()));
        }
        None
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 1500 {
        let mut end = 1500;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// Runs a command with stdout/stderr captured, killing it after `limit`.
fn run_cmd(mut cmd: Command, limit: Duration) -> Run {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    Run { what, code: status.code(), timed_out, stdout, stderr }
}

fn etcdguard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_etcdguard")
}

/// `etcdguard <args…> <file>`
fn etcdguard(args: &[&str], file: &Path) -> Run {
    let mut cmd = Command::new(etcdguard_bin());
    cmd.args(args).arg(file);
    run_cmd(cmd, Duration::from_secs(60))
}

fn etcdguard_args(args: &[&str]) -> Run {
    let mut cmd = Command::new(etcdguard_bin());
    cmd.args(args);
    run_cmd(cmd, Duration::from_secs(60))
}

/// The real `etcdutl snapshot status` 3.5.1.
fn etcdutl_status(file: &Path, format: &str) -> Run {
    let mut cmd = EtcdVersion::V3_5.binaries().snapshot_tool();
    cmd.args(["snapshot", "status", "-w", format]).arg(file);
    // bbolt can recurse forever on some damaged trees; a hang counts as a rejection.
    run_cmd(cmd, Duration::from_secs(20))
}

/// The contract for a rejected input: the expected code, exactly one `Error: …` line (the
/// first line of stderr), nothing on stdout, no panic.
fn check_clean_failure(run: &Run, code: i32) -> Option<String> {
    if let Some(p) = run.problems_with_exit() {
        return Some(p);
    }
    if run.code != Some(code) {
        return Some(format!("expected exit {code}: {}", run.describe()));
    }
    let error_lines = run.stderr.lines().filter(|l| l.starts_with("Error:")).count();
    if error_lines != 1
        || !run.stderr.starts_with("Error: ")
        || run.stderr.trim().len() <= "Error:".len()
    {
        return Some(format!("expected one `Error: …` line first on stderr: {}", run.describe()));
    }
    if !run.stdout.is_empty() {
        return Some(format!("expected nothing on stdout: {}", run.describe()));
    }
    None
}

fn assert_clean_failure(run: &Run, code: i32) {
    if let Some(p) = check_clean_failure(run, code) {
        panic!("{p}");
    }
}

fn assert_none(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Both subcommands on one file, each expected to fail with `code`.
fn both_fail(file: &Path, code: i32) -> Vec<String> {
    [etcdguard(&["snapshot", "status"], file), etcdguard(&["snapshot", "verify"], file)]
        .iter()
        .filter_map(|r| check_clean_failure(r, code))
        .collect()
}

/// splitmix64: a tiny seeded generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Files that are not there or cannot be read.

#[test]
fn missing_file_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-snapshot.db");
    let failures = both_fail(&path, NOT_FOUND);
    assert_none(failures);
    let run = etcdguard(&["snapshot", "status"], &path);
    assert!(run.stderr.contains("no-such-snapshot.db"), "the error names the file: {}", run.stderr);
}

#[test]
fn directory_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    assert_none(both_fail(dir.path(), IS_DIRECTORY));
}

#[test]
fn empty_file_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    assert_none(both_fail(&path, EMPTY));
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Runs etcdguard as user `nobody` (via setpriv) when we are root; root reads everything, so
/// running as root could never reach the EACCES path.
fn etcdguard_as_nobody(bin: &Path, args: &[&str], file: &Path) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin)
        .args(args)
        .arg(file);
    run_cmd(cmd, Duration::from_secs(60))
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn unreadable_file_exits_4() {
    let fx = fixture();
    // A world-traversable scratch dir holding: a copy of the binary, a readable snapshot (to
    // prove the unprivileged run works at all), a snapshot only root may read, and a
    // directory only root may enter.
    let scratch = tempfile::Builder::new().prefix("etcdguard-perm-").tempdir().unwrap();
    chmod(scratch.path(), 0o755);
    let bin = scratch.path().join("etcdguard");
    std::fs::copy(etcdguard_bin(), &bin).unwrap();
    chmod(&bin, 0o755);
    let readable = scratch.path().join("readable.db");
    std::fs::write(&readable, &fx.bytes).unwrap();
    chmod(&readable, 0o644);
    let private_file = scratch.path().join("private.db");
    std::fs::write(&private_file, &fx.bytes).unwrap();
    chmod(&private_file, 0o600);
    let private_dir = scratch.path().join("private-dir");
    std::fs::create_dir(&private_dir).unwrap();
    let inside = private_dir.join("snapshot.db");
    std::fs::write(&inside, &fx.bytes).unwrap();
    chmod(&inside, 0o644);
    chmod(&private_dir, 0o700);

    let mut failures = Vec::new();
    if is_root() {
        // The unprivileged user really cannot read these (checked with another program).
        for p in [&private_file, &inside] {
            let cat = run_cmd(
                {
                    let mut c = Command::new("setpriv");
                    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat"])
                        .arg(p);
                    c
                },
                Duration::from_secs(10),
            );
            assert!(
                !cat.ok() && cat.stderr.contains("Permission denied"),
                "setup: nobody can read {}: {}",
                p.display(),
                cat.describe()
            );
        }
        let ok = etcdguard_as_nobody(&bin, &["snapshot", "status"], &readable);
        assert!(
            ok.ok(),
            "setup: etcdguard must run as nobody on a readable file: {}",
            ok.describe()
        );
        for p in [&private_file, &inside] {
            for sub in ["status", "verify"] {
                let run = etcdguard_as_nobody(&bin, &["snapshot", sub], p);
                failures.extend(check_clean_failure(&run, PERMISSION_DENIED));
                if !run.stderr.to_lowercase().contains("permission denied") {
                    failures.push(format!(
                        "the error should say `permission denied`: {}",
                        run.describe()
                    ));
                }
            }
        }
    } else {
        chmod(&readable, 0o000);
        for sub in ["status", "verify"] {
            failures.extend(check_clean_failure(
                &etcdguard(&["snapshot", sub], &readable),
                PERMISSION_DENIED,
            ));
        }
    }
    chmod(&private_dir, 0o755);
    assert_none(failures);
}

/// A running etcd holds an exclusive lock on its db; etcdguard says so instead of waiting
/// (etcdutl would block forever).
#[test]
fn live_db_locked_by_etcd_exits_11() {
    assert_clean_failure(&fixture().live_db_run, LOCKED);
}

// ---------------------------------------------------------------------------------------
// Files that are not bbolt databases.

#[test]
fn foreign_files_exit_7() {
    let fx = fixture();
    let mut rng = Rng(0xf0e1);
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(rng.bytes(3000));
    let text: Vec<u8> =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-a-snapshot\n".repeat(40);
    let gzipped = {
        let out = Command::new("gzip").arg("-c").arg(&fx.snapshot).output().expect("gzip");
        assert!(out.status.success());
        out.stdout
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one-byte", b"x".to_vec()),
        ("random-32", rng.bytes(32)), // as long as a sha256 trailer alone
        ("random-544", rng.bytes(544)),
        ("random-100", rng.bytes(100)),
        ("random-4096", rng.bytes(4096)),
        ("random-20480", rng.bytes(20480)),
        ("random-20512", rng.bytes(20512)), // the length of a snapshot with a trailer
        ("zeros-8192", vec![0; 8192]),
        ("text.yaml", text),
        ("image.png", png),
        ("snapshot.db.gz", gzipped),
        ("etcdguard-binary", std::fs::read(etcdguard_bin()).unwrap()),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        let path = fx.write(&format!("foreign-{name}"), &bytes);
        failures.extend(both_fail(&path, NOT_SNAPSHOT));
    }
    assert_none(failures);
}

/// bbolt writes native byte order; a file from a big-endian host (s390x) is refused as foreign.
#[test]
fn big_endian_file_exits_7() {
    let fx = fixture();
    let mut bytes = fx.image().to_vec();
    for meta in [0, fx.page_size] {
        bytes[meta + 16..meta + 20].copy_from_slice(&0xED0C_DAEDu32.to_be_bytes());
    }
    let path = fx.write("big-endian.db", &bytes);
    assert_none(both_fail(&path, NOT_SNAPSHOT));
    let run = etcdguard(&["snapshot", "status"], &path);
    assert!(run.stderr.contains("big-endian"), "{}", run.describe());
}

// ---------------------------------------------------------------------------------------
// Truncation.

/// The rule for a snapshot cut at byte `t` (D = image length, trailer at [D, D+32)):
/// - t = 0: empty file, exit 6;
/// - 0 < t < 80 (meta page 0 not even complete): exit 7 or 8 (nothing or too little to tell);
/// - 80 ≤ t < D: truncated, exit 8;
/// - t = D: the whole trailer is gone and what is left is a complete bbolt file: status
///   succeeds with the real tool's output and notes the missing trailer; verify succeeds;
/// - D < t < D + 32: a partial trailer, i.e. a copy cut short: exit 8 (the content can be
///   neither checksummed nor trusted to be complete).
#[test]
fn truncated_files_fail_cleanly() {
    let fx = fixture();
    let (d, p) = (fx.image_len, fx.page_size);
    let mut offsets = vec![1, 15, 16, 19, 20, 32, 50, 79, 80, 81, 511, 512, 513, 544, p / 2];
    for k in [1, 2, 3, 4] {
        offsets.extend([k * p - 1, k * p, k * p + 1, k * p + 32]);
    }
    offsets.extend([
        d / 3,
        d / 2,
        d / 2 + 32,
        d - p - 1,
        d - p,
        d - p + 32,
        d - 33,
        d - 32,
        d - 31,
        d - 1,
    ]);
    offsets.extend([d, d + 1, d + 16, d + 31]);
    let mut rng = Rng(0x7a11);
    offsets.extend((0..6).map(|_| 80 + rng.below(d - 80)));
    offsets.sort();
    offsets.dedup();
    assert!(offsets.len() >= 40, "{} offsets", offsets.len());

    let mut failures = Vec::new();
    for t in offsets {
        let path = fx.write("truncated.db", &fx.bytes[..t]);
        let status = etcdguard(&["snapshot", "status"], &path);
        let verify = etcdguard(&["snapshot", "verify"], &path);
        let ctx = |s: String| format!("cut at {t} of {}: {s}", fx.bytes.len());
        if t == d {
            let real = etcdutl_status(&path, "simple");
            assert!(real.ok(), "etcdutl accepts the image without trailer: {}", real.describe());
            let ours = etcdguard(&["snapshot", "status", "-w", "simple"], &path);
            if !ours.ok()
                || ours.stdout != real.stdout
                || !ours.stderr.contains("no sha256 trailer")
            {
                failures.push(ctx(format!(
                    "want etcdutl's output and a note: real {real:?}\nours {}",
                    ours.describe()
                )));
            }
            if !verify.ok() {
                failures
                    .push(ctx(format!("verify of a complete image failed: {}", verify.describe())));
            }
            continue;
        }
        for run in [&status, &verify] {
            let problem = if t < 80 {
                match check_clean_failure(run, TRUNCATED) {
                    Some(_) => check_clean_failure(run, NOT_SNAPSHOT),
                    None => None,
                }
            } else {
                check_clean_failure(run, TRUNCATED)
            };
            failures.extend(problem.map(ctx));
        }
    }
    assert_none(failures);
}

// ---------------------------------------------------------------------------------------
// Bit flips.

/// Picks flip positions: half uniformly over `[0, len)`, half in the first 64 bytes of a
/// random page (headers and element tables, where structure lives).
fn flip_positions(rng: &mut Rng, len: usize, page_size: usize, n: usize) -> Vec<(usize, u8)> {
    (0..n)
        .map(|i| {
            let at = if i % 2 == 0 {
                rng.below(len)
            } else {
                let pages = len / page_size;
                (rng.below(pages) * page_size + rng.below(64)).min(len - 1)
            };
            let mask = (rng.next() as u8).max(1);
            (at, mask)
        })
        .collect()
}

/// With the trailer present, any changed byte (image or trailer) is a sha256 mismatch.
#[test]
fn bit_flips_with_trailer_are_caught_by_sha256() {
    let fx = fixture();
    let mut rng = Rng(0x5eed_0001);
    let mut failures = Vec::new();
    let mut positions = flip_positions(&mut rng, fx.bytes.len(), fx.page_size, 200);
    // And some inside the trailer itself.
    positions.extend((0..8).map(|_| (fx.image_len + rng.below(32), (rng.next() as u8).max(1))));
    for (at, mask) in positions {
        let mut bytes = fx.bytes.clone();
        bytes[at] ^= mask;
        let path = fx.write("flipped-with-trailer.db", &bytes);
        for sub in ["status", "verify"] {
            let run = etcdguard(&["snapshot", sub], &path);
            // verify prints its report on stdout before failing; only status must keep it empty.
            let problem = if sub == "verify" {
                run.problems_with_exit().or_else(|| {
                    (run.code != Some(SHA256_MISMATCH))
                        .then(|| format!("expected exit 9: {}", run.describe()))
                })
            } else {
                check_clean_failure(&run, SHA256_MISMATCH)
            };
            failures.extend(problem.map(|p| format!("byte {at} ^= {mask:#04x}: {p}")));
        }
    }
    assert_none(failures);
}

/// Without a trailer nothing but structure can catch a flip. Each flipped image is judged
/// by the real etcdutl 3.5.1 and by etcdguard:
/// - etcdguard never panics or hangs;
/// - whatever etcdutl rejects, `status` and `verify` reject;
/// - whatever `status` rejects, `verify` rejects;
/// - when both tools accept, stdout is identical.
#[test]
fn bit_flips_without_trailer_at_least_as_strict_as_etcdutl() {
    let fx = fixture();
    let image = fx.image();
    let mut rng = Rng(0x5eed_0002);
    let mut failures = Vec::new();
    let (mut both_ok, mut both_reject, mut only_we_reject) = (0, 0, 0);
    let mut codes = std::collections::BTreeMap::new();
    for (at, mask) in flip_positions(&mut rng, image.len(), fx.page_size, 200) {
        let mut bytes = image.to_vec();
        bytes[at] ^= mask;
        let path = fx.write("flipped-plain.db", &bytes);
        let real = etcdutl_status(&path, "json");
        let status = etcdguard(&["snapshot", "status", "-w", "json"], &path);
        let verify = etcdguard(&["snapshot", "verify"], &path);
        let ctx = |s: String| format!("byte {at} (page {}) ^= {mask:#04x}: {s}", at / fx.page_size);
        for run in [&status, &verify] {
            failures.extend(run.problems_with_exit().map(ctx));
        }
        if !status.ok() {
            *codes.entry(status.code).or_insert(0) += 1;
            failures.extend(check_clean_failure(&status, status.code.unwrap_or(-1)).map(ctx));
            if ![NOT_SNAPSHOT, TRUNCATED, CORRUPT].contains(&status.code.unwrap_or(-1)) {
                failures.push(ctx(format!(
                    "unexpected exit code for a damaged file: {}",
                    status.describe()
                )));
            }
        }
        match (real.ok(), status.ok()) {
            (true, true) => {
                both_ok += 1;
                if real.stdout != status.stdout {
                    failures.push(ctx(format!(
                        "both accept but differ:\n{}\n{}",
                        real.describe(),
                        status.describe()
                    )));
                }
            }
            (false, true) => failures.push(ctx(format!(
                "etcdutl rejects, etcdguard status accepts:\n{}\n{}",
                real.describe(),
                status.describe()
            ))),
            (false, false) => both_reject += 1,
            (true, false) => only_we_reject += 1,
        }
        if !real.ok() && verify.ok() {
            failures.push(ctx(format!(
                "etcdutl rejects, verify accepts:\n{}\n{}",
                real.describe(),
                verify.describe()
            )));
        }
        if !status.ok() && verify.ok() {
            failures.push(ctx(format!(
                "status rejects, verify accepts:\n{}\n{}",
                status.describe(),
                verify.describe()
            )));
        }
    }
    eprintln!(
        "bit flips without trailer: {both_ok} accepted by both, {both_reject} rejected by both, \
         {only_we_reject} rejected only by etcdguard; etcdguard status exit codes {codes:?}"
    );
    assert!(both_reject > 0, "no flip hit structure; the test proves nothing");
    assert_none(failures);
}

// ---------------------------------------------------------------------------------------
// Meta pages.

/// Changes one checksummed byte (the txid) of meta page `index` of `bytes`.
fn damage_meta(bytes: &mut [u8], page_size: usize, index: usize) {
    bytes[index * page_size + 16 + 48] ^= 0x40;
}

/// One damaged meta page is survivable, as in bbolt: status uses the other one and prints
/// exactly what etcdutl prints; verify reports the damage.
#[test]
fn one_damaged_meta_page_status_works_verify_reports() {
    let fx = fixture();
    let mut failures = Vec::new();
    for index in [0, 1] {
        let mut bytes = fx.image().to_vec();
        damage_meta(&mut bytes, fx.page_size, index);
        let path = fx.write(&format!("meta{index}-damaged.db"), &bytes);
        for format in ["simple", "json"] {
            let real = etcdutl_status(&path, format);
            let ours = etcdguard(&["snapshot", "status", "-w", format], &path);
            assert!(real.ok(), "etcdutl survives one damaged meta: {}", real.describe());
            if !ours.ok() || ours.stdout != real.stdout {
                failures.push(format!(
                    "meta {index}: status differs from etcdutl:\n{}\n{}",
                    real.describe(),
                    ours.describe()
                ));
            }
        }
        let verify = etcdguard(&["snapshot", "verify"], &path);
        if verify.problems_with_exit().is_some() || verify.code != Some(CORRUPT) {
            failures
                .push(format!("meta {index}: verify must exit {CORRUPT}: {}", verify.describe()));
        }
        let report = verify.stdout.to_lowercase();
        if !report.contains(&format!("{index}: damaged")) {
            failures.push(format!(
                "meta {index}: verify must name the damaged meta page: {}",
                verify.describe()
            ));
        }
        let json = etcdguard(&["snapshot", "verify", "-w", "json"], &path);
        match serde_json::from_str::<serde_json::Value>(&json.stdout) {
            Ok(v)
                if v["metas"][index]["ok"] == false
                    && v["metas"][1 - index]["ok"] == true
                    && v["ok"] == false => {}
            _ => failures.push(format!("meta {index}: verify -w json: {}", json.describe())),
        }
    }
    assert_none(failures);
}

/// In a data dir's db the two metas point at different trees (the last two commits). With
/// the newer one damaged, bbolt falls back to the older commit; so must etcdguard.
#[test]
fn damaged_newest_meta_of_a_raw_db_falls_back_like_bbolt() {
    let fx = fixture();
    let txid = |bytes: &[u8], i: usize| {
        let at = i * fx.page_size + 16 + 48;
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    };
    let mut bytes = fx.raw_db.clone();
    assert_eq!(bytes.len() % 512, 0, "a raw db has no trailer");
    let newest = usize::from(txid(&bytes, 1) > txid(&bytes, 0));
    damage_meta(&mut bytes, fx.page_size, newest);
    let path = fx.write("raw-db-newest-meta-damaged.db", &bytes);
    let mut failures = Vec::new();
    for format in ["simple", "table", "json", "fields"] {
        let real = etcdutl_status(&path, format);
        let ours = etcdguard(&["snapshot", "status", "-w", format], &path);
        assert!(real.ok(), "etcdutl survives one damaged meta: {}", real.describe());
        if !ours.ok() || ours.stdout != real.stdout {
            failures.push(format!(
                "-w {format}: status differs from etcdutl:\n{}\n{}",
                real.describe(),
                ours.describe()
            ));
        }
    }
    let verify = etcdguard(&["snapshot", "verify"], &path);
    if verify.code != Some(CORRUPT)
        || !verify.stdout.to_lowercase().contains(&format!("{newest}: damaged"))
    {
        failures.push(format!(
            "verify must exit {CORRUPT} naming meta {newest}: {}",
            verify.describe()
        ));
    }
    assert_none(failures);
}

#[test]
fn both_meta_pages_damaged_is_an_error() {
    let fx = fixture();
    let mut bytes = fx.image().to_vec();
    damage_meta(&mut bytes, fx.page_size, 0);
    damage_meta(&mut bytes, fx.page_size, 1);
    let path = fx.write("both-metas-damaged.db", &bytes);
    let real = etcdutl_status(&path, "simple");
    assert!(!real.ok(), "etcdutl refuses a file with two bad metas: {}", real.describe());
    assert_none(both_fail(&path, CORRUPT));
    let run = etcdguard(&["snapshot", "status"], &path);
    assert!(run.stderr.contains("meta"), "{}", run.describe());
}

// ---------------------------------------------------------------------------------------
// Targeted damage: verify names page, bucket and key.

/// Where the first value of bucket `key` lives in the file, and its revision key.
struct KeyEntry {
    value_offset: usize,
    revision_key: Vec<u8>,
}

#[derive(Default)]
struct FindFirstKeyValue {
    bucket: Vec<u8>,
    base: usize,
    found: Option<KeyEntry>,
}

impl Visitor<'_> for FindFirstKeyValue {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        if depth == 1
            && !is_bucket
            && self.bucket == b"key"
            && self.found.is_none()
            && value.len() > 4
        {
            self.found = Some(KeyEntry {
                value_offset: value.as_ptr() as usize - self.base,
                revision_key: key.to_vec(),
            });
        }
    }
    fn enter_bucket(&mut self, depth: usize, name: &[u8]) {
        if depth == 1 {
            self.bucket = name.to_vec();
        }
    }
}

fn first_key_entry(image: &[u8]) -> KeyEntry {
    let db = Db::open(image).expect("fixture opens");
    let mut v = FindFirstKeyValue { base: image.as_ptr() as usize, ..Default::default() };
    let report = walk(&db, &mut v, &WalkOptions::default());
    assert!(report.is_ok());
    v.found.expect("bucket key has entries")
}

/// A value in bucket `key` that no longer decodes as mvccpb.KeyValue: bbolt's structure is
/// intact, so status prints what etcdutl prints; verify finds it and names bucket and key.
#[test]
fn damaged_value_status_matches_etcdutl_verify_names_key() {
    let fx = fixture();
    let entry = first_key_entry(fx.image());
    let mut bytes = fx.image().to_vec();
    bytes[entry.value_offset] = 0xff; // field 31 with wire type 7: not protobuf
    let path = fx.write("damaged-value.db", &bytes);
    let main = i64::from_be_bytes(entry.revision_key[..8].try_into().unwrap());

    let real = etcdutl_status(&path, "simple");
    let ours = etcdguard(&["snapshot", "status", "-w", "simple"], &path);
    assert!(real.ok(), "{}", real.describe());
    assert!(
        ours.ok() && ours.stdout == real.stdout,
        "status:\n{}\n{}",
        real.describe(),
        ours.describe()
    );

    // etcdutl 3.6+ decode every revision to count live keys, so they refuse the file; so
    // does etcdguard printing as 3.6, cleanly, naming the revision.
    let mut real_36 = EtcdVersion::V3_6.binaries().snapshot_tool();
    real_36.args(["snapshot", "status"]).arg(&path);
    let real_36 = run_cmd(real_36, Duration::from_secs(20));
    assert!(!real_36.ok(), "etcdutl 3.6 accepted an undecodable KeyValue: {}", real_36.describe());
    let ours_36 = etcdguard(&["snapshot", "status", "--etcd-version", "3.6"], &path);
    assert!(check_clean_failure(&ours_36, CORRUPT).is_none(), "{}", ours_36.describe());
    assert!(
        ours_36.stderr.contains("not a KeyValue") && ours_36.stderr.contains(&format!("{main}_")),
        "{}",
        ours_36.describe()
    );

    for format in ["text", "json"] {
        let verify = etcdguard(&["snapshot", "verify", "-w", format], &path);
        assert_eq!(verify.code, Some(CORRUPT), "{}", verify.describe());
        assert!(verify.problems_with_exit().is_none(), "{}", verify.describe());
        let report = &verify.stdout;
        assert!(
            report.contains("\"key\"") && report.contains(&format!("{main}_")),
            "verify -w {format} must name bucket \"key\" and revision {main}: {}",
            verify.describe()
        );
        assert!(verify.stderr.starts_with("Error: "), "{}", verify.describe());
    }
}

/// A page of bucket `key` relabelled as a freelist page: etcdutl refuses (it crashes), and
/// etcdguard fails cleanly naming the page and the bucket.
#[test]
fn damaged_page_header_names_page_and_bucket() {
    let fx = fixture();
    let entry = first_key_entry(fx.image());
    let page = entry.value_offset / fx.page_size;
    let mut bytes = fx.image().to_vec();
    bytes[page * fx.page_size + 8..page * fx.page_size + 10]
        .copy_from_slice(&0x10u16.to_le_bytes());
    let path = fx.write("damaged-page-header.db", &bytes);

    let real = etcdutl_status(&path, "simple");
    assert!(!real.ok(), "etcdutl refuses: {}", real.describe());
    let status = etcdguard(&["snapshot", "status"], &path);
    assert_clean_failure(&status, CORRUPT);
    let verify = etcdguard(&["snapshot", "verify"], &path);
    assert_eq!(verify.code, Some(CORRUPT), "{}", verify.describe());
    for (what, text) in [("status stderr", &status.stderr), ("verify stdout", &verify.stdout)] {
        assert!(
            text.contains(&format!("page {page}")) && text.contains("\"key\""),
            "{what} must name page {page} and bucket \"key\": {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Usage.

#[test]
fn usage_errors_exit_2() {
    let fx = fixture();
    let snap = fx.snapshot.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["snapshot"],
        vec!["snapshot", "status"],
        vec!["snapshot", "verify"],
        vec!["snapshot", "status", snap, snap],
        vec!["snapshot", "status", snap, "-w", "yaml"],
        vec!["snapshot", "status", snap, "-w", "protobuf"],
        vec!["snapshot", "status", snap, "-w"],
        vec!["snapshot", "verify", snap, "-w", "table"],
        vec!["snapshot", "status", snap, "--no-such-flag"],
        vec!["snapshot", "frobnicate", snap],
        vec!["no-such-command"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let run = etcdguard_args(&args);
        if let Some(p) = run.problems_with_exit() {
            failures.push(p);
        } else if run.code != Some(USAGE)
            || !run.stdout.is_empty()
            || (run.stderr.lines().filter(|l| l.to_lowercase().starts_with("error:")).count() != 1
                && !run.stderr.contains("Usage:"))
        {
            // clap's own usage errors: one `error: …` line (clap spells it in lower case), or
            // the usage text when a subcommand is missing.
            failures.push(format!(
                "expected exit 2 with an `error: …` line or usage on stderr: {}",
                run.describe()
            ));
        }
    }
    // Asking for help is not an error.
    for args in
        [vec!["--help"], vec!["snapshot", "status", "--help"], vec!["snapshot", "verify", "--help"]]
    {
        let run = etcdguard_args(&args);
        if !run.ok() || run.stdout.is_empty() {
            failures.push(format!("help must succeed on stdout: {}", run.describe()));
        }
    }
    assert_none(failures);
}

// ---------------------------------------------------------------------------------------
// Not regular files.

/// A FIFO would block `open` until a writer appears, a device has no usable length: both are
/// refused at once, as not a snapshot.
#[test]
fn special_files_exit_7_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("snapshot.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let mut failures = both_fail(&fifo, NOT_SNAPSHOT);
    failures.extend(both_fail(Path::new("/dev/null"), NOT_SNAPSHOT));
    assert_none(failures);
}

// ---------------------------------------------------------------------------------------
// Hostile structure: as deep as the format allows, and deeper.

/// A bbolt file with 512-byte pages in which every bucket's tree is a chain of `tree_depth`
/// single-element branch pages ending in a leaf whose only entry is the next nested bucket,
/// `bucket_depth` buckets deep. Valid page by page; only its depth is hostile.
fn deep_db(bucket_depth: usize, tree_depth: usize) -> Vec<u8> {
    const P: usize = 512;
    let pages_per_bucket = tree_depth + 1;
    let total_pages = 2 + (bucket_depth + 1) * pages_per_bucket;
    let mut data = vec![0u8; total_pages * P];
    let put_header = |data: &mut Vec<u8>, id: usize, flags: u16, count: u16| {
        let at = id * P;
        data[at..at + 8].copy_from_slice(&(id as u64).to_le_bytes());
        data[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        data[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
    };
    // Bucket b (0 = the root bucket) occupies pages first(b) .. first(b) + tree_depth.
    let first = |b: usize| 2 + b * pages_per_bucket;
    for b in 0..=bucket_depth {
        for level in 0..tree_depth {
            let id = first(b) + level;
            put_header(&mut data, id, 0x01, 1);
            let at = id * P + 16;
            data[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // pos
            data[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes()); // ksize
            data[at + 8..at + 16].copy_from_slice(&((id + 1) as u64).to_le_bytes());
            data[at + 16] = b'b';
        }
        let leaf = first(b) + tree_depth;
        put_header(&mut data, leaf, 0x02, 1);
        let at = leaf * P + 16;
        if b < bucket_depth {
            data[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // bucket entry
            data[at + 4..at + 8].copy_from_slice(&16u32.to_le_bytes());
            data[at + 8..at + 12].copy_from_slice(&1u32.to_le_bytes());
            data[at + 12..at + 16].copy_from_slice(&16u32.to_le_bytes());
            data[at + 16] = b'b';
            data[at + 17..at + 25].copy_from_slice(&(first(b + 1) as u64).to_le_bytes());
        } else {
            data[at + 4..at + 8].copy_from_slice(&16u32.to_le_bytes());
            data[at + 8..at + 12].copy_from_slice(&1u32.to_le_bytes());
            data[at + 12..at + 16].copy_from_slice(&1u32.to_le_bytes());
            data[at + 16..at + 18].copy_from_slice(b"bv");
        }
    }
    for (i, txid) in [(0usize, 2u64), (1, 1)] {
        let meta = etcdguard_bolt::Meta {
            page_size: P as u32,
            flags: 0,
            root: first(0) as u64,
            root_sequence: 0,
            freelist: u64::MAX,
            pgid: total_pages as u64,
            txid,
            checksum: 0,
        };
        put_header(&mut data, i, 0x04, 0);
        data[i * P + 16..i * P + 80].copy_from_slice(&meta.encode());
    }
    data
}

#[test]
fn deeply_nested_files_fail_cleanly() {
    let fx = fixture();
    let mut failures = Vec::new();
    for (name, buckets, depth) in
        [("deep-buckets", 100, 64), ("deep-tree", 1, 300), ("deep-both", 70, 70)]
    {
        let bytes = deep_db(buckets, depth);
        // The generator itself is sound: the bolt reader opens it.
        assert!(Db::open(&bytes).is_ok(), "{name}");
        let path = fx.write(&format!("{name}.db"), &bytes);
        for sub in ["status", "verify"] {
            let run = etcdguard(&["snapshot", sub], &path);
            if let Some(p) = run.problems_with_exit() {
                failures.push(format!("{name}: {p}"));
            } else if run.ok() {
                failures.push(format!(
                    "{name}: accepted a file nested deeper than bbolt can write: {}",
                    run.describe()
                ));
            }
        }
    }
    assert_none(failures);
}
