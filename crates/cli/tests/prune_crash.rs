//! Crash safety of the backup repository, through the real binary and real etcd snapshots:
//! - the interrupted-prune data loss of issue #10 as a deterministic reproduction;
//! - `backup create` and `backup prune` killed with SIGKILL at random points (seeded), after
//!   which every listed backup must verify, and a new create and a new prune must succeed.
//!
//! `backup repair` is killed too (its index replacement follows prune's order).
//! `CRASH_SEED` and `CRASH_TRIALS` choose the run; every trial prints what it did and when it
//! killed, so a failure can be replayed. The long version is ignored:
//! `CRASH_TRIALS=200 cargo test --release -p etcdguard --test prune_crash -- --ignored --nocapture`
//! (`bench/crash-trials.sh` does that and prints the totals).

mod backup_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use backup_support::*;

const PASSPHRASE: &str = "crash test passphrase";
const DEFAULT_SEED: u64 = 20261130;
/// Trials of the suite's version: about two minutes in a debug build on two cores.
const SUITE_TRIALS: u64 = 16;
const LONG_TRIALS: u64 = 200;

/// Stale locks of killed processes that had to be removed by hand (see [`run_checked`]).
static LOCKS_CLEARED: AtomicUsize = AtomicUsize::new(0);

/// The reproduction of issue #10, step by step as written there: a prune killed between
/// uploading a repacked pack and writing the new index leaves that pack behind (copied here
/// from a finished prune of a copy); the next prune lists it as an orphan, recreates it under
/// the same name and must not delete it.
#[test]
fn prune_after_an_interrupted_prune_keeps_the_recreated_pack() {
    let snaps = snapshots();
    let work = scratch("crash-leftover");
    let snap = snaps.first.to_str().unwrap();
    let rand_bin = work.join("rand.bin");
    let mut bytes = vec![0u8; 3_000_000];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(&rand_bin, &bytes).unwrap();
    let (repo, copy) = (work.join("repo"), work.join("copy"));
    let (repo_s, copy_s) = (repo.to_str().unwrap(), copy.to_str().unwrap());

    ok(&[
        "backup",
        "create",
        "--repo",
        repo_s,
        "--from-file",
        snap,
        "--file",
        rand_bin.to_str().unwrap(),
    ]);
    let newest = created_id(&ok(&["backup", "create", "--repo", repo_s, "--from-file", snap]));
    cp_a(&repo, &copy);
    ok(&["backup", "prune", "--repo", copy_s, "--keep-last", "1"]);
    let repacked: Vec<String> = pack_files(&copy).difference(&pack_files(&repo)).cloned().collect();
    assert!(!repacked.is_empty(), "the prune of the copy wrote no new pack: nothing to reproduce");
    for rel in &repacked {
        // cp copy/packs/xx/<id> repo/packs/xx/ (the killed prune had created packs/xx/)
        let dir = repo.join(rel).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let out = run(Command::new("cp").arg(copy.join(rel)).arg(&dir));
        assert!(out.status.success(), "cp {rel}: {}", String::from_utf8_lossy(&out.stderr));
    }

    ok(&["backup", "prune", "--repo", repo_s, "--keep-last", "1"]);
    let scratch_dir = work.to_str().unwrap();
    ok(&["backup", "verify", "--repo", repo_s, "latest", "--scratch-dir", scratch_dir]);
    let restored = work.join("restored.db");
    ok(&["backup", "restore", &newest, "--repo", repo_s, "--to-file", restored.to_str().unwrap()]);
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&snaps.first).unwrap(),
        "restored snapshot differs"
    );
    ok(&["backup", "verify", "--repo", repo_s, "latest", "--packs", "--scratch-dir", scratch_dir]);
    for rel in &repacked {
        assert!(repo.join(rel).is_file(), "prune deleted {rel}, which its new index names");
    }
}

/// A `backup create` killed while it creates an encrypted repository, after storing the key
/// file and before the config (written last), leaves a key file that seals no data. The next
/// create makes the repository anew; the same passphrase must not then open that leftover's
/// master key instead of the one the data is sealed with.
#[test]
fn create_after_an_interrupted_encrypted_init_uses_the_right_key() {
    use std::os::unix::fs::DirBuilderExt;
    let snaps = snapshots();
    let work = scratch("crash-init");
    let with_pass = || {
        let mut c = etcdguard();
        c.env("ETCDGUARD_PASSPHRASE", PASSPHRASE);
        c
    };
    let (first, second) = (snaps.first.to_str().unwrap(), snaps.second.to_str().unwrap());
    // The killed init's leftover: a key file wrapping a random master key under the passphrase
    // (taken from another repository made with it), and nothing else. Key ids are random; this
    // one sorts before the next create's, as half of them would.
    let other = work.join("other");
    ok_with(
        &mut with_pass(),
        &["backup", "create", "--repo", other.to_str().unwrap(), "--from-file", first],
    );
    let leftover = std::fs::read_dir(other.join("keys")).unwrap().next().unwrap().unwrap().path();
    let repo = work.join("repo");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(repo.join("keys")).unwrap();
    std::fs::copy(&leftover, repo.join("keys/0000000000000000.json")).unwrap();
    let repo_s = repo.to_str().unwrap();
    let scratch_dir = work.to_str().unwrap();

    let id = created_id(&ok_with(
        &mut with_pass(),
        &["backup", "create", "--repo", repo_s, "--from-file", first],
    ));
    ok_with(
        &mut with_pass(),
        &["backup", "verify", &id, "--repo", repo_s, "--packs", "--scratch-dir", scratch_dir],
    );
    // A later create unlocks the repository rather than creating it; both backups restore.
    let id2 = created_id(&ok_with(
        &mut with_pass(),
        &["backup", "create", "--repo", repo_s, "--from-file", second],
    ));
    for (id, snap) in [(&id, &snaps.first), (&id2, &snaps.second)] {
        let dest = work.join(format!("{id}.db"));
        ok_with(
            &mut with_pass(),
            &["backup", "restore", id, "--repo", repo_s, "--to-file", dest.to_str().unwrap()],
        );
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(snap).unwrap(),
            "backup {id} did not restore byte-identical"
        );
    }

    // Keys beside data but no config: the config was lost, not an init interrupted. Making a
    // repository there would strand that data; the keys must stay.
    std::fs::remove_file(other.join("config")).unwrap();
    let err = fails_with(
        &mut with_pass(),
        &["backup", "create", "--repo", other.to_str().unwrap(), "--from-file", first],
        10,
    );
    assert!(err.contains("no config"), "{err}");
    assert!(leftover.is_file(), "the key of a repository that lost its config was removed");
}

#[test]
fn random_kills_of_create_and_prune_leave_a_usable_repository() {
    crash_trials("suite", SUITE_TRIALS);
}

/// The long run: `CRASH_TRIALS=200 cargo test --release -p etcdguard --test prune_crash -- --ignored`.
#[test]
#[ignore]
fn random_kills_long_run() {
    crash_trials("long", LONG_TRIALS);
}

// ---------------------------------------------------------------------------------------------
// The random trials

/// splitmix64: small, seedable, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// A uniform fraction in [0, 1].
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a non-negative integer")),
        Err(_) => default,
    }
}

/// One repository the trials work on.
struct TrialRepo {
    dir: PathBuf,
    encrypted: bool,
}

impl TrialRepo {
    fn new(dir: PathBuf, encrypted: bool, snapshot: &Path) -> TrialRepo {
        let r = TrialRepo { dir, encrypted };
        let out = run(r.cmd().args([
            "backup",
            "create",
            "--repo",
            r.path(),
            "--from-file",
            snapshot.to_str().unwrap(),
        ]));
        assert!(
            out.status.success(),
            "creating {}: {}",
            r.path(),
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn cmd(&self) -> Command {
        let mut c = etcdguard();
        if self.encrypted {
            c.env("ETCDGUARD_PASSPHRASE", PASSPHRASE);
        }
        c
    }

    fn label(&self) -> &'static str {
        if self.encrypted {
            "encrypted"
        } else {
            "plain"
        }
    }
}

/// The command a trial kills, as arguments after `backup`, and a short description of it.
fn pick_action(rng: &mut Rng, snaps: &Snapshots, files_dir: &Path) -> (Vec<String>, String) {
    if rng.percent(60) {
        pick_create(rng, snaps, files_dir, "killed")
    } else if rng.percent(15) {
        // A repair of a sound repository still replaces every index file: killed anywhere,
        // it must leave every backup readable.
        (vec!["repair".to_string()], "repair".to_string())
    } else {
        // Rules that remove backups, mostly: a removed backup's packs hold blobs the kept ones
        // share, so the prune repacks them.
        let mut args = vec!["prune".to_string()];
        match rng.below(20) {
            0..=7 => args.extend(["--keep-last".into(), "1".into()]),
            8..=10 => args.extend(["--keep-last".into(), "2".into()]),
            11..=15 => args.extend(["--keep-within".into(), format!("{}s", 1 + rng.below(5))]),
            _ => {} // no policy: only data no backup uses
        }
        let about = args.join(" ");
        (args, about)
    }
}

/// A `backup create` of one of the snapshots, sometimes with files of random bytes (written
/// as `files_dir/NAME-<i>.bin`).
fn pick_create(
    rng: &mut Rng,
    snaps: &Snapshots,
    files_dir: &Path,
    name: &str,
) -> (Vec<String>, String) {
    let snapshot = [&snaps.first, &snaps.second, &snaps.third][rng.below(3) as usize];
    let mut args = vec!["create".into(), "--from-file".into(), snapshot.display().to_string()];
    let mut about =
        format!("create --from-file {}", snapshot.file_name().unwrap().to_string_lossy());
    if rng.percent(60) {
        // Files no later backup has: their blobs become garbage and their packs get repacked.
        for i in 0..=rng.below(2) {
            let mut data = vec![0u8; 200_000 + rng.below(2_800_000) as usize];
            rng.fill(&mut data);
            let path = files_dir.join(format!("{name}-{i}.bin"));
            std::fs::write(&path, &data).unwrap();
            args.extend(["--file".into(), path.display().to_string()]);
            about.push_str(&format!(" --file <{} random bytes>", data.len()));
        }
    }
    if rng.percent(30) {
        // The structural check dominates a create; without it more kills land in uploads.
        args.push("--skip-verify".into());
        about.push_str(" --skip-verify");
    }
    (args, about)
}

/// `backup ARGS…` with `--repo` inserted after the subcommand.
fn backup_args(repo: &str, action: &[String]) -> Vec<String> {
    let mut v = vec!["backup".to_string(), action[0].clone(), "--repo".into(), repo.into()];
    v.extend(action[1..].iter().cloned());
    v
}

fn crash_trials(name: &str, default_trials: u64) {
    let seed = env_u64("CRASH_SEED", DEFAULT_SEED);
    let trials = env_u64("CRASH_TRIALS", default_trials);
    eprintln!("crash trials: seed {seed}, {trials} trials (replay with CRASH_SEED={seed} CRASH_TRIALS={trials})");
    let snaps = snapshots();
    let work = scratch(&format!("crash-{name}-{seed}"));
    let files_dir = work.join("files");
    std::fs::create_dir_all(&files_dir).unwrap();
    let mut rng = Rng(seed);
    let mut repos = [
        TrialRepo::new(work.join("plain-0"), false, &snaps.first),
        TrialRepo::new(work.join("encrypted-0"), true, &snaps.first),
    ];
    let started = Instant::now();
    let mut failures = Vec::new();
    for trial in 1..=trials {
        let which = usize::from(rng.percent(35));
        // Now and then the create that makes a new repository is the one killed.
        let new_repo = rng.percent(10);
        let (action, about) = if new_repo {
            pick_create(&mut rng, snaps, &files_dir, "killed")
        } else {
            pick_action(&mut rng, snaps, &files_dir)
        };
        let fraction = rng.fraction();
        // The next create after the kill, with random files as often as the killed ones: most
        // killed creates leave no backup, and without such data in kept backups prunes would
        // seldom repack.
        let (fresh_create, _) = pick_create(&mut rng, snaps, &files_dir, "next");
        let fresh_keep = (3 + rng.below(2)).to_string();
        let mut fresh =
            TrialRepo { dir: work.join(format!("new-{trial}")), encrypted: repos[which].encrypted };
        let repo = if new_repo { &mut fresh } else { &mut repos[which] };
        let what = format!(
            "trial {trial}: {} {}repository, `backup {about}`",
            repo.label(),
            if new_repo { "new " } else { "" }
        );
        match run_trial(repo, &action, fraction, &fresh_create, &fresh_keep, &work) {
            Ok(outcome) => eprintln!("{what}: {outcome}: OK"),
            Err(e) => {
                eprintln!("{what}: FAILED: {e}");
                // Keep the damaged repository (and the state before the trial) for a post-mortem,
                // and go on with a new one so later trials still count.
                let kept = work.join(format!("failed-trial-{trial}"));
                let _ = std::fs::rename(&repo.dir, &kept);
                let _ = std::fs::rename(
                    work.join("before"),
                    work.join(format!("failed-trial-{trial}-before")),
                );
                failures.push(format!("{what}: {e}\n  (repository kept in {}, its state before the trial in {}-before)", kept.display(), kept.display()));
                if !new_repo {
                    let encrypted = repo.encrypted;
                    *repo = TrialRepo::new(
                        work.join(format!("{}-{trial}", repo.label())),
                        encrypted,
                        &snaps.first,
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&fresh.dir);
        for e in std::fs::read_dir(&files_dir).unwrap() {
            let _ = std::fs::remove_file(e.unwrap().path());
        }
    }
    let failed = failures.len() as u64;
    eprintln!(
        "crash trials: seed {seed}: {trials} trials, {} passed, {failed} failed, {} stale lock(s) of killed processes cleared by hand, {:.0?}",
        trials - failed,
        LOCKS_CLEARED.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {failed} of {trials} trials failed:\n{}",
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// One trial: time the command on a copy of the repository, run it on the repository and kill
/// it with SIGKILL at `fraction` of that time, then check that the repository still works.
fn run_trial(
    repo: &TrialRepo,
    action: &[String],
    fraction: f64,
    fresh_create: &[String],
    fresh_keep: &str,
    work: &Path,
) -> Result<String, String> {
    let before = work.join("before");
    let measure = work.join("measure");
    for d in [&before, &measure] {
        let _ = std::fs::remove_dir_all(d);
    }
    // A new repository has no directory yet: the copies have none either.
    if repo.dir.exists() {
        cp_a(&repo.dir, &before);
        cp_a(&repo.dir, &measure);
    }
    let started = Instant::now();
    let out = run(repo.cmd().args(backup_args(measure.to_str().unwrap(), action)));
    let full = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "the uninterrupted run on a copy failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(&measure);
    // What an uninterrupted prune did ("… N repacked …"): whether this kill could land in a repack.
    let summary = match action[0].as_str() {
        "prune" => format!(
            " (uninterrupted: {})",
            String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default()
        ),
        _ => String::new(),
    };

    let delay = full.mul_f64(fraction);
    let child = repo
        .cmd()
        .args(backup_args(repo.path(), action))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning etcdguard: {e}"))?;
    let pid = child.id();
    std::thread::sleep(delay);
    // SAFETY: kill(2) of the child we started, by its PID (a zombie until waited for).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for etcdguard: {e}"))?;
    let when = format!(
        "killed at {} ms of {} ms ({:.1}%){summary}",
        delay.as_millis(),
        full.as_millis(),
        fraction * 100.0
    );
    let outcome = match (out.status.signal(), out.status.code()) {
        (Some(libc::SIGKILL), _) => format!("{when}, pid {pid}"),
        (_, Some(0)) => format!("{when}: it had finished"),
        _ => {
            return Err(format!(
                "{when}: it failed on its own first ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    let leftovers = temp_files(&repo.dir);

    // A create killed before it wrote the config of a new repository leaves no repository;
    // killed after, a repository that may hold no backup yet.
    let new_repo = !before.exists();
    let listed = if repo.dir.join("config").exists() {
        check_every_backup(repo, work, pid, new_repo)
            .map_err(|e| format!("{outcome}: after the kill: {e}"))?
    } else {
        0
    };
    let create_again = backup_args(repo.path(), fresh_create);
    run_checked(repo, &create_again.iter().map(String::as_str).collect::<Vec<_>>(), pid)
        .map_err(|e| format!("{outcome}: the next create: {e}"))?;
    // A killed prune is run again as it was (as a user or the agent would): the same
    // decisions repack the same blobs into packs of the same names as the killed run's.
    let prune_again = match action[0].as_str() {
        "prune" => backup_args(repo.path(), action),
        _ => backup_args(repo.path(), &["prune".into(), "--keep-last".into(), fresh_keep.into()]),
    };
    run_checked(repo, &prune_again.iter().map(String::as_str).collect::<Vec<_>>(), pid)
        .map_err(|e| format!("{outcome}: the next prune: {e}"))?;
    let after = check_every_backup(repo, work, pid, false)
        .map_err(|e| format!("{outcome}: after the next create and prune: {e}"))?;
    Ok(format!("{outcome}; {listed} backup(s) verified, then {after}; {leftovers} temporary file(s) left by the kill"))
}

/// `backup list`, then `backup verify --packs` of every listed backup. Returns how many.
fn check_every_backup(
    repo: &TrialRepo,
    work: &Path,
    killed: u32,
    may_be_empty: bool,
) -> Result<usize, String> {
    let out = run_checked(repo, &["backup", "list", "--repo", repo.path(), "-w", "json"], killed)?;
    let list: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("backup list -w json: {e}: {out}"))?;
    let ids: Vec<String> = list
        .as_array()
        .ok_or_else(|| format!("backup list -w json is not an array: {out}"))?
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    if ids.is_empty() && !may_be_empty {
        return Err("no backup listed (every prune keeps at least the newest)".into());
    }
    for id in &ids {
        run_checked(
            repo,
            &[
                "backup",
                "verify",
                id,
                "--repo",
                repo.path(),
                "--packs",
                "--scratch-dir",
                work.to_str().unwrap(),
            ],
            killed,
        )?;
    }
    Ok(ids.len())
}

/// Runs etcdguard; Ok(stdout) on exit 0. A lock left by the killed process may make a command
/// exit 15 (locked): rather than wait until the lock is stale (or run `backup unlock
/// --remove-all`), the test removes that process's lock file and runs the command once more.
fn run_checked(repo: &TrialRepo, args: &[&str], killed: u32) -> Result<String, String> {
    let mut retried = false;
    loop {
        let out = repo.cmd().args(args).output().map_err(|e| format!("running etcdguard: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("panicked") {
            return Err(format!("`etcdguard {}` panicked: {stderr}", args.join(" ")));
        }
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if out.status.code() == Some(15) && !retried && remove_locks_of(&repo.dir, killed) > 0 {
            LOCKS_CLEARED.fetch_add(1, Ordering::SeqCst);
            eprintln!("  `etcdguard {}` exited 15 (locked by the killed pid {killed}): removed its lock, retrying", args.join(" "));
            retried = true;
            continue;
        }
        return Err(format!("`etcdguard {}` exited {}: {stderr}", args.join(" "), out.status));
    }
}

/// Removes the lock files of process `pid` from `locks/`; returns how many.
fn remove_locks_of(repo: &Path, pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(repo.join("locks")) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(lock) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if lock["pid"].as_u64() == Some(pid as u64) && std::fs::remove_file(&path).is_ok() {
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Files

fn cp_a(from: &Path, to: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `packs/xx/<id>` of every pack file of a local repository.
fn pack_files(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.insert(format!("packs/{}/{name}", dir.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Temporary files (`.tmp-*`) anywhere in a local repository: what killed writers leave.
fn temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                temp_files(&p)
            } else {
                usize::from(e.file_name().to_string_lossy().starts_with(".tmp-"))
            }
        })
        .sum()
}
