//! The server dies in the middle of a large snapshot: clear error, non-zero exit, no file.

mod live_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use live_support::*;

#[test]
fn server_killed_mid_stream_leaves_no_file() {
    // ~64 MiB of incompressible values, so the stream cannot finish before the kill.
    let mut server = big_server();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snap.db");
    let part = dir.path().join("snap.db.part");
    let mut child = etcdguard()
        .args(["snapshot", "save"])
        .arg(&dest)
        .args(["--endpoints", server.endpoint()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Freeze etcdguard as soon as data has reached the .part file, kill the server, resume.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::metadata(&part).map(|m| m.len() > 0).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "no data reached {} in time", part.display());
        assert!(
            child.try_wait().unwrap().is_none(),
            "etcdguard ended before the server was killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let partial = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    server.kill();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        partial < 60 << 20,
        "the stream should have been cut well before the end ({partial} bytes written)"
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail; stderr: {stderr}");
    eprintln!("etcdguard said: {stderr}");
    expect_code(&out, 12, "server killed mid-stream");
    assert!(stderr.contains("stream broke after"), "unclear message: {stderr}");
    assert_no_file(&dest);
}
