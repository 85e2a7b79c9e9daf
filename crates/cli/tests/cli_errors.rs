//! Small errors at the edges of the command line (issue #10, "leftovers and small errors"):
//! output into a closed pipe, empty and out-of-range argument values, a restore of a file
//! that is not a database, `--user` against an etcd without auth, and passphrase files
//! others can read. Each case ends with a deliberate exit and one clear message, never a
//! panic.

mod live_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;

const USAGE: i32 = 2;

/// No panic, no backtrace, no crash other than the SIGPIPE asked for.
fn assert_no_panic(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && out.status.code() != Some(101),
        "{what}: panicked\nstatus: {:?}\nstderr: {stderr}",
        out.status
    );
}

/// A server with a few keys, its snapshot, and a repository holding one backup of it.
struct Setup {
    _dir: tempfile::TempDir,
    server: EtcdServer,
    snapshot: PathBuf,
    repo: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    // Enough output that `inspect list` and `backup show` write more than one pipe buffer
    // would hold if the pipe were open.
    for i in 0..300 {
        server.put(
            format!("/registry/configmaps/default/cm-{i:04}").as_bytes(),
            format!("value {i}").as_bytes(),
        );
    }
    let snapshot = dir.path().join("snapshot.db");
    server.snapshot_save(&snapshot);
    let repo = dir.path().join("repo");
    let out = etcdguard()
        .args(["backup", "create", "--repo"])
        .arg(&repo)
        .arg("--from-file")
        .arg(&snapshot)
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create");
    Setup { _dir: dir, server, snapshot, repo }
}

/// Runs etcdguard with stdout a pipe whose reader has already gone (as `| head -0` ends up).
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    etcdguard()
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Runs `cmd` with stdout and stderr captured; kills it (and says so in stderr) after `limit`.
fn output_within(cmd: &mut std::process::Command, limit: std::time::Duration) -> Output {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let mut out = child.wait_with_output().unwrap();
            out.stderr
                .extend_from_slice(format!("\n(killed by the test after {limit:?})").as_bytes());
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Output into a closed pipe.

/// `etcdguard … | head -1` for every kind of output (text, tables, JSON, raw bytes, a
/// streamed snapshot): the process ends as `cat` would, killed by SIGPIPE, with nothing on
/// stderr but its usual notes; never a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let s = setup();
    let snap = s.snapshot.to_str().unwrap();
    let repo = s.repo.to_str().unwrap();
    // A second snapshot with every key rewritten, for `inspect diff`'s streamed output.
    for i in 0..300 {
        s.server.put(
            format!("/registry/configmaps/default/cm-{i:04}").as_bytes(),
            format!("changed {i}").as_bytes(),
        );
    }
    let changed = s.snapshot.with_file_name("changed.db");
    s.server.snapshot_save(&changed);
    let changed = changed.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", "diff", snap, changed],
        vec!["inspect", "diff", snap, changed, "-o", "json"],
        vec!["inspect", "diff", snap, changed, "-o", "yaml"],
        vec!["inspect", "diff", snap, changed, "-o", "json-patch"],
        vec!["backup", "show", "latest", "--repo", repo, "-w", "json"],
        vec!["backup", "show", "latest", "--repo", repo],
        vec!["backup", "list", "--repo", repo],
        vec!["backup", "list", "--repo", repo, "-w", "json"],
        vec!["snapshot", "status", snap],
        vec!["snapshot", "status", snap, "-w", "json"],
        vec!["snapshot", "verify", snap],
        vec!["inspect", "list", snap],
        vec!["inspect", "list", snap, "-o", "json"],
        vec!["inspect", "get", snap, "/registry/configmaps/default/cm-0001", "-o", "raw"],
        vec!["cluster", "members", "--endpoints", s.server.endpoint()],
        vec!["snapshot", "save", "-", "--endpoints", s.server.endpoint()],
    ];
    let mut failures = Vec::new();
    for args in &cases {
        let out = into_closed_pipe(args);
        let stderr = text(&out.stderr);
        if out.status.signal() != Some(libc::SIGPIPE)
            || stderr.contains("panicked")
            || stderr.contains("Error")
        {
            failures.push(format!(
                "{args:?}: expected death by SIGPIPE and no error\nstatus: {:?}\nstderr: {stderr}",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A command that fails still says why (stderr is open) with its own exit code.
    let out = into_closed_pipe(&["backup", "show", "no-such-backup", "--repo", repo]);
    assert_no_panic(&out, "failing command into a closed pipe");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Any other write error on stdout is an error, not a panic and not silence.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = etcdguard()
        .args(["snapshot", "status", snap])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_no_panic(&out, "stdout on a full disk");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("writing to stdout: No space left"),
        "{}",
        text(&out.stderr)
    );
}

/// A usage error: exit 2, clap's `error: …` naming `flag`, nothing on stdout, no panic.
fn check_usage_error(out: &Output, flag: &str, what: &str) -> Option<String> {
    let stderr = text(&out.stderr);
    let ok = out.status.code() == Some(USAGE)
        && stderr.starts_with("error: ")
        && stderr.contains(flag)
        && out.stdout.is_empty();
    (!ok || stderr.contains("panicked")).then(|| format!("{what}: expected exit 2 with an error naming {flag}\nstatus: {:?}\nstdout: {}\nstderr: {stderr}", out.status, text(&out.stdout)))
}

/// Nothing was written into `dir` (the working directory of a refused command).
fn assert_empty_dir(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{what}: wrote {left:?} into the working directory");
}

// ---------------------------------------------------------------------------------------
// 2. An empty --repo.

/// `--repo ""` and `ETCDGUARD_REPO=""` used to make a repository in the current directory.
/// Every command that takes a repository refuses an empty one before doing anything.
#[test]
fn empty_repo_is_a_usage_error_for_every_command() {
    let cwd = tempfile::tempdir().unwrap();
    let snapshot = cwd.path().join("..").join("no-snapshot.db"); // never opened: refused first
    let snap = snapshot.to_str().unwrap();
    // Each command with its other required arguments; `--repo` is added below.
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "create", "--from-file", snap],
        vec!["backup", "list"],
        vec!["backup", "show", "latest"],
        vec!["backup", "verify", "latest"],
        vec!["backup", "restore", "latest", "--to-file", "out.db"],
        vec!["backup", "delete", "0123abcd"],
        vec!["backup", "prune", "--keep-last", "1"],
        vec!["backup", "url", "latest"],
        vec!["backup", "key", "list"],
        vec!["backup", "key", "add"],
        vec!["backup", "key", "remove", "0123abcd"],
        vec!["backup", "key", "passwd"],
        vec!["agent", "--from-file", snap, "--runs", "1", "--listen", "off"],
        vec!["node", "restore", "--backup", "latest", "--dry-run"],
        vec!["inspect", "diff", "a", "b"],
    ];
    let mut failures = Vec::new();
    for args in &commands {
        for empty in ["", " "] {
            let out = etcdguard()
                .current_dir(cwd.path())
                .args(args)
                .arg("--repo")
                .arg(empty)
                .env_remove("ETCDGUARD_REPO")
                .output()
                .unwrap();
            failures.extend(check_usage_error(
                &out,
                "--repo",
                &format!("{args:?} --repo {empty:?}"),
            ));
        }
        if args[0] == "inspect" {
            continue; // inspect diff reads --repo only from the flag
        }
        let out = etcdguard()
            .current_dir(cwd.path())
            .args(args)
            .env("ETCDGUARD_REPO", "")
            .output()
            .unwrap();
        failures.extend(check_usage_error(
            &out,
            "--repo",
            &format!("{args:?} with ETCDGUARD_REPO=\"\""),
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_empty_dir(cwd.path(), "empty --repo");
}

// ---------------------------------------------------------------------------------------
// 3. Empty restore arguments.

/// An empty --name used to be accepted; an empty --data-dir would build the member's dirs
/// in the working directory; an empty token gives member ids that collide with every other
/// tokenless restore of the same URLs. All are refused with exit 2, in `snapshot restore`,
/// `backup restore` and `node restore`, before the snapshot or repository is opened.
#[test]
fn empty_restore_arguments_are_usage_errors() {
    let cwd = tempfile::tempdir().unwrap();
    let snap = "../no-snapshot.db";
    let mut failures = Vec::new();
    let snapshot_restore: Vec<(&str, Vec<&str>)> = vec![
        ("--name", vec!["--data-dir", "restored", "--name", ""]),
        ("--name", vec!["--data-dir", "restored", "--name", " "]),
        ("--initial-cluster-token", vec!["--data-dir", "restored", "--initial-cluster-token", ""]),
        ("--data-dir", vec!["--data-dir", ""]),
        ("--wal-dir", vec!["--data-dir", "restored", "--wal-dir", ""]),
        ("--cluster-out", vec!["--cluster-out", ""]),
    ];
    for (flag, extra) in &snapshot_restore {
        let out = etcdguard()
            .current_dir(cwd.path())
            .args(["snapshot", "restore", snap])
            .args(extra)
            .output()
            .unwrap();
        failures.extend(check_usage_error(&out, flag, &format!("snapshot restore {extra:?}")));
        let out = etcdguard()
            .current_dir(cwd.path())
            .args(["backup", "restore", "latest", "--repo", "../no-repo"])
            .args(extra)
            .output()
            .unwrap();
        failures.extend(check_usage_error(&out, flag, &format!("backup restore {extra:?}")));
    }
    for (flag, extra) in [
        ("--to-file", vec!["--to-file", ""]),
        ("--files-to", vec!["--to-file", "x.db", "--files-to", ""]),
    ] {
        let out = etcdguard()
            .current_dir(cwd.path())
            .args(["backup", "restore", "latest", "--repo", "../no-repo"])
            .args(&extra)
            .output()
            .unwrap();
        failures.extend(check_usage_error(&out, flag, &format!("backup restore {extra:?}")));
    }
    for (flag, extra) in [
        ("--name", vec!["--name", ""]),
        ("--initial-cluster-token", vec!["--initial-cluster-token", ""]),
    ] {
        let out = etcdguard()
            .current_dir(cwd.path())
            .args(["node", "restore", snap, "--dry-run", "--kubernetes-dir", "../no-kube"])
            .args(&extra)
            .output()
            .unwrap();
        failures.extend(check_usage_error(&out, flag, &format!("node restore {extra:?}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_empty_dir(cwd.path(), "empty restore arguments");
}

// ---------------------------------------------------------------------------------------
// 4. Restoring a file that is not a database.

/// A file of zeros (as a 10 GB one in the field; a few MB here), random bytes or text given to
/// `snapshot restore` is "not a bbolt database" (exit 7), as `snapshot status` and `verify`
/// say, not "no sha256 trailer" (9); a real database without its trailer still gets exit 9
/// and the --skip-hash-check hint.
#[test]
fn restore_of_a_non_database_says_not_bbolt() {
    const NOT_SNAPSHOT: i32 = 7;
    const SHA256: i32 = 9;
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x5eed_u64;
    let random: Vec<u8> = (0..1 << 20)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zeros-4MiB.db", vec![0; 4 << 20]),
        ("zeros-4MiB-plus-32.db", vec![0; (4 << 20) + 32]),
        ("random-1MiB.db", random),
        ("text.yaml", b"apiVersion: v1\nkind: Secret\n".repeat(2048)),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in &cases {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        for skip in [false, true] {
            let data_dir = dir.path().join(format!("restored-{name}-{skip}"));
            let mut cmd = etcdguard();
            cmd.args(["snapshot", "restore"]).arg(&file).arg("--data-dir").arg(&data_dir);
            if skip {
                cmd.arg("--skip-hash-check");
            }
            let out = cmd.output().unwrap();
            let stderr = text(&out.stderr);
            if out.status.code() != Some(NOT_SNAPSHOT)
                || !stderr.contains("not a bbolt database")
                || data_dir.exists()
            {
                failures.push(format!("{name} (skip-hash-check {skip}): expected exit 7, \"not a bbolt database\", no data dir\nstatus: {:?}\nstderr: {stderr}", out.status));
            }
            let status = etcdguard().args(["snapshot", "status"]).arg(&file).output().unwrap();
            assert_eq!(
                status.status.code(),
                Some(NOT_SNAPSHOT),
                "snapshot status agrees: {}",
                text(&status.stderr)
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A real database without its trailer: still exit 9 with the hint.
    let server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/one", b"1");
    let snapshot = dir.path().join("snapshot.db");
    server.snapshot_save(&snapshot);
    drop(server);
    let bytes = std::fs::read(&snapshot).unwrap();
    let plain = dir.path().join("no-trailer.db");
    std::fs::write(&plain, &bytes[..bytes.len() - 32]).unwrap();
    let out = etcdguard()
        .args(["snapshot", "restore"])
        .arg(&plain)
        .arg("--data-dir")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    expect_code(&out, SHA256, "a database without its trailer");
    assert!(text(&out.stderr).contains("--skip-hash-check"), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------
// 5. --user against an etcd without authentication.

/// etcd without auth answers Authenticate with "authentication is not enabled". That is a
/// credentials problem: exit 13 (TLS or authentication) with what to do, not exit 1.
#[test]
fn user_against_etcd_without_auth_exits_13_with_a_hint() {
    const TLS_OR_AUTH: i32 = 13;
    let dir = tempfile::tempdir().unwrap();
    for version in [EtcdVersion::V3_5, EtcdVersion::V3_4] {
        let server = EtcdServer::start(version);
        let ep = server.endpoint().to_string();
        let dest = dir.path().join(format!("snap-{}.db", version.label()));
        let repo = dir.path().join(format!("repo-{}", version.label()));
        let runs: Vec<(&str, Vec<String>)> = vec![
            ("cluster health", vec!["cluster".into(), "health".into()]),
            ("snapshot save", vec!["snapshot".into(), "save".into(), dest.display().to_string()]),
            (
                "backup create",
                vec!["backup".into(), "create".into(), "--repo".into(), repo.display().to_string()],
            ),
        ];
        for (what, args) in &runs {
            let out = etcdguard()
                .args(args)
                .args(["--endpoints", &ep, "--user", "root", "--password", "not-a-real-password"])
                .output()
                .unwrap();
            let what = format!("{what} --user on etcd {} without auth", version.label());
            assert_no_panic(&out, &what);
            expect_code(&out, TLS_OR_AUTH, &what);
            // (`cluster health` reports each endpoint on stdout, the summary on stderr.)
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(
                said.contains("authentication is not enabled on this cluster; drop --user"),
                "{what}: {said}"
            );
            assert!(
                !said.contains("not-a-real-password"),
                "{what}: the password was printed: {said}"
            );
            // The same command without --user works, so the code is about the credentials.
            let out = etcdguard().args(args).args(["--endpoints", &ep]).output().unwrap();
            expect_code(&out, 0, &format!("{what}, without --user"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. Passphrase files other users can read or write.

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// As ssh does for private keys: a passphrase file (--passphrase-file,
/// ETCDGUARD_PASSPHRASE_FILE, --new-passphrase-file) that group or others can read or write
/// is used, with one warning on stderr naming it; a private one gives no warning; the
/// passphrase itself is never printed.
#[test]
fn passphrase_file_open_to_others_is_used_with_a_warning() {
    const PASS: &str = "correct-horse-battery-staple-7f3a";
    const NEW_PASS: &str = "second-passphrase-0c41b9";
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/secrets/default/s", b"not-a-real-secret");
    let snapshot = dir.path().join("snapshot.db");
    server.snapshot_save(&snapshot);
    drop(server);
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let new_file = dir.path().join("new-pass");
    std::fs::write(&new_file, format!("{NEW_PASS}\n")).unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    let pass_s = pass_file.to_str().unwrap();
    let warned = |out: &Output, file: &Path| {
        let stderr = text(&out.stderr);
        let warnings = stderr
            .lines()
            .filter(|l| {
                l.starts_with("warning:")
                    && l.contains(&file.display().to_string())
                    && l.contains("chmod 600")
            })
            .count();
        assert!(
            !stderr.contains(PASS)
                && !stderr.contains(NEW_PASS)
                && !text(&out.stdout).contains(PASS),
            "a passphrase was printed: {stderr}"
        );
        warnings
    };

    chmod(&pass_file, 0o600);
    let out = etcdguard()
        .args(["backup", "create", "--repo", repo_s, "--passphrase-file", pass_s, "--from-file"])
        .arg(&snapshot)
        .output()
        .unwrap();
    expect_code(&out, 0, "create with a private passphrase file");
    assert_eq!(warned(&out, &pass_file), 0, "no warning for mode 0600: {}", text(&out.stderr));

    let mut failures = Vec::new();
    for (mode, word) in [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable"),
        (0o602, "writable"),
    ] {
        chmod(&pass_file, mode);
        let runs: Vec<(&str, Output)> = vec![
            (
                "verify --passphrase-file",
                etcdguard()
                    .args([
                        "backup",
                        "verify",
                        "latest",
                        "--repo",
                        repo_s,
                        "--passphrase-file",
                        pass_s,
                    ])
                    .output()
                    .unwrap(),
            ),
            (
                "list --passphrase-file (not read)",
                etcdguard()
                    .args(["backup", "list", "--repo", repo_s, "--passphrase-file", pass_s])
                    .output()
                    .unwrap(),
            ),
            (
                "show with ETCDGUARD_PASSPHRASE_FILE",
                etcdguard()
                    .args(["backup", "show", "latest", "--repo", repo_s])
                    .env("ETCDGUARD_PASSPHRASE_FILE", pass_s)
                    .output()
                    .unwrap(),
            ),
        ];
        for (what, out) in runs {
            let stderr = text(&out.stderr);
            if out.status.code() != Some(0)
                || warned(&out, &pass_file) != 1
                || !stderr.contains(word)
            {
                failures.push(format!("mode {mode:o}, {what}: expected success with one warning saying {word}\nstatus: {:?}\nstderr: {stderr}", out.status));
            }
        }
    }
    chmod(&pass_file, 0o400);
    let out = etcdguard()
        .args(["backup", "verify", "latest", "--repo", repo_s, "--passphrase-file", pass_s])
        .output()
        .unwrap();
    expect_code(&out, 0, "verify with a read-only private passphrase file");
    assert_eq!(warned(&out, &pass_file), 0, "no warning for mode 0400: {}", text(&out.stderr));

    // The new passphrase of `backup key add`, from a file others can read.
    chmod(&new_file, 0o644);
    let out = etcdguard()
        .args([
            "backup",
            "key",
            "add",
            "--repo",
            repo_s,
            "--passphrase-file",
            pass_s,
            "--new-passphrase-file",
        ])
        .arg(&new_file)
        .output()
        .unwrap();
    expect_code(&out, 0, "key add");
    if warned(&out, &new_file) != 1 || warned(&out, &pass_file) != 0 {
        failures.push(format!(
            "key add: expected one warning, for the new passphrase file only: {}",
            text(&out.stderr)
        ));
    }
    // It works: the new passphrase opens the repository.
    let out = etcdguard()
        .args(["backup", "verify", "latest", "--repo", repo_s])
        .env("ETCDGUARD_PASSPHRASE", NEW_PASS)
        .output()
        .unwrap();
    expect_code(&out, 0, "verify with the added passphrase");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------
// 7. Out-of-range values.

/// Huge durations (the agent's `--every 99999999999h` panicked: `DateTime + TimeDelta
/// overflowed`), huge and zero sizes, an empty cluster name, a revision bump past etcd's
/// largest revision: each is a clean usage error (exit 2), never a panic. Durations are
/// refused by the one shared parser (at most 100 years) before any command runs.
#[test]
fn out_of_range_values_are_usage_errors() {
    let s = setup();
    let snap = s.snapshot.to_str().unwrap();
    let repo = s.repo.to_str().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let new_repo = scratch.path().join("new-repo");
    let new_repo = new_repo.to_str().unwrap();
    let data_dir = scratch.path().join("restored");
    let data_dir = data_dir.to_str().unwrap();
    let ep = s.server.endpoint();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "--every",
            vec![
                "agent",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--every",
                "99999999999h",
                "--runs",
                "2",
                "--listen",
                "off",
            ],
        ),
        (
            "--every",
            vec![
                "agent",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--every",
                "101y",
                "--runs",
                "2",
                "--listen",
                "off",
            ],
        ),
        (
            "--every",
            vec![
                "agent",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--every",
                "0s",
                "--runs",
                "2",
                "--listen",
                "off",
            ],
        ),
        (
            "--keep-within",
            vec![
                "agent",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--keep-within",
                "18446744073709551615s",
                "--runs",
                "1",
                "--listen",
                "off",
            ],
        ),
        (
            "--keep-within",
            vec!["backup", "prune", "--repo", repo, "--keep-within", "99999999999h", "--dry-run"],
        ),
        ("--expires", vec!["backup", "url", "latest", "--repo", repo, "--expires", "99999999999h"]),
        (
            "--wait-timeout",
            vec!["node", "restore", snap, "--dry-run", "--wait-timeout", "99999999999h"],
        ),
        (
            "--dial-timeout",
            vec!["cluster", "health", "--endpoints", ep, "--dial-timeout", "99999999999h"],
        ),
        (
            "--command-timeout",
            vec![
                "snapshot",
                "save",
                "-",
                "--endpoints",
                ep,
                "--command-timeout",
                "99999999999999999999s",
            ],
        ),
        (
            "chunk size",
            vec!["backup", "create", "--repo", new_repo, "--from-file", snap, "--chunk-size", "0"],
        ),
        (
            "chunk size",
            vec![
                "backup",
                "create",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--chunk-size",
                "4294967295",
            ],
        ),
        (
            "--chunk-size",
            vec![
                "backup",
                "create",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--chunk-size",
                "99999999999",
            ],
        ),
        ("--keep-last", vec!["backup", "prune", "--repo", repo, "--keep-last=-1", "--dry-run"]),
        (
            "--keep-daily",
            vec![
                "backup",
                "prune",
                "--repo",
                repo,
                "--keep-daily",
                "99999999999999999999",
                "--dry-run",
            ],
        ),
        (
            "--runs",
            vec![
                "agent",
                "--repo",
                new_repo,
                "--from-file",
                snap,
                "--runs",
                "18446744073709551616",
            ],
        ),
        (
            "--cluster",
            vec!["backup", "create", "--repo", new_repo, "--from-file", snap, "--cluster", ""],
        ),
        (
            "--bump-revision",
            vec![
                "snapshot",
                "restore",
                snap,
                "--data-dir",
                data_dir,
                "--bump-revision",
                "18446744073709551615",
                "--mark-compacted",
            ],
        ),
        (
            "--bump-revision",
            vec![
                "snapshot",
                "restore",
                snap,
                "--data-dir",
                data_dir,
                "--bump-revision",
                "9223372036854775807",
                "--mark-compacted",
            ],
        ),
        (
            "--bump-revision",
            vec![
                "backup",
                "restore",
                "latest",
                "--repo",
                repo,
                "--data-dir",
                data_dir,
                "--bump-revision",
                "9223372036854775800",
                "--mark-compacted",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (flag, args) in &cases {
        // (Before the bound, `--every 101y` parsed, and the agent slept for a century.)
        let out = output_within(etcdguard().args(args), std::time::Duration::from_secs(60));
        let stderr = text(&out.stderr);
        if out.status.code() != Some(USAGE) || stderr.contains("panicked") || !stderr.contains(flag)
        {
            failures.push(format!(
                "{args:?}: expected exit 2 naming {flag}\nstatus: {:?}\nstderr: {stderr}",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(!Path::new(new_repo).exists(), "a refused command created the repository");
    assert!(!Path::new(data_dir).exists(), "a refused restore left a data dir");
    // The limit itself is accepted.
    let out = etcdguard()
        .args(["backup", "prune", "--repo", repo, "--keep-within", "100y", "--dry-run"])
        .output()
        .unwrap();
    expect_code(&out, 0, "--keep-within 100y");
}

/// An S3 repository without credentials whose endpoint is down: "unreachable" (exit 12),
/// not "access denied", and no request to a cloud instance metadata address (a stand-in
/// for it listens on loopback, named by AWS_METADATA_ENDPOINT, and must see no connection),
/// even with AWS_EC2_METADATA_DISABLED unset.
#[test]
fn s3_without_credentials_and_a_dead_endpoint_is_unreachable_and_asks_no_metadata() {
    let home = tempfile::tempdir().unwrap();
    let metadata = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    metadata.set_nonblocking(true).unwrap();
    let metadata_url = format!("http://{}", metadata.local_addr().unwrap());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let repo =
        format!("s3://etcd-backups/p?endpoint=http://127.0.0.1:{dead_port}&retries=0&timeout=5s");
    let mut cmd = etcdguard();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("AWS_EC2_METADATA_DISABLED")
        .env("HOME", home.path())
        .env("AWS_METADATA_ENDPOINT", &metadata_url)
        .env("AWS_REGION", "us-east-1")
        .args(["backup", "list", "--repo", &repo]);
    let out = output_within(&mut cmd, std::time::Duration::from_secs(60));
    assert_no_panic(&out, "backup list");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "{stderr}");
    assert!(stderr.contains("unreachable") && !stderr.contains("access denied"), "{stderr}");
    assert!(metadata.accept().is_err(), "the metadata address was asked");
}
