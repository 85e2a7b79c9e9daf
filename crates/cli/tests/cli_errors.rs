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
        !stderr.contains("panicked") && !stderr.contains("backtrace") && out.status.code() != Some(101),
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
        server.put(format!("/registry/configmaps/default/cm-{i:04}").as_bytes(), format!("value {i}").as_bytes());
    }
    let snapshot = dir.path().join("snapshot.db");
    server.snapshot_save(&snapshot);
    let repo = dir.path().join("repo");
    let out = etcdguard().args(["backup", "create", "--repo"]).arg(&repo).arg("--from-file").arg(&snapshot).output().unwrap();
    expect_code(&out, 0, "backup create");
    Setup { _dir: dir, server, snapshot, repo }
}

/// Runs etcdguard with stdout a pipe whose reader has already gone (as `| head -0` ends up).
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    etcdguard().args(args).stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output().unwrap()
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
    let cases: Vec<Vec<&str>> = vec![
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
        if out.status.signal() != Some(libc::SIGPIPE) || stderr.contains("panicked") || stderr.contains("Error") {
            failures.push(format!("{args:?}: expected death by SIGPIPE and no error\nstatus: {:?}\nstderr: {stderr}", out.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A command that fails still says why (stderr is open) with its own exit code.
    let out = into_closed_pipe(&["backup", "show", "no-such-backup", "--repo", repo]);
    assert_no_panic(&out, "failing command into a closed pipe");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Any other write error on stdout is an error, not a panic and not silence.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = etcdguard().args(["snapshot", "status", snap]).stdout(full).stderr(Stdio::piped()).output().unwrap();
    assert_no_panic(&out, "stdout on a full disk");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("writing to stdout: No space left"), "{}", text(&out.stderr));
}
