//! `cluster recover` end to end: three simulated control-plane hosts on 127.0.0.11–.13, each
//! a root dir named after its address (etc/kubernetes/manifests, var/lib/etcd), its own
//! kubelet stand-in (kubelet_support) running a real etcd 3.5 from its manifest, and its own
//! real `sshd` (ssh_support) on that address. `cluster recover` reaches them with the system's
//! ssh, host keys checked against a generated known_hosts, and runs this build's etcdguard on
//! each (`--remote-binary`). Quorum is lost by parking two members and deleting their data.
//!
//! The recovery's wall time is printed (`--nocapture`); the data's size is
//! `ETCDGUARD_RECOVERY_MB` MiB (default 4).

mod etcdctl_support;
mod kubelet_support;
mod live_support;
mod recover_support;
mod ssh_support;

use std::time::{Duration, Instant};

use etcdctl_support::*;
use live_support::*;
use recover_support::*;

#[test]
fn refusals_dry_run_and_full_recovery() {
    let site = start_site();
    let (snap, want) = snapshot(&site);
    let snap_arg = snap.to_str().unwrap();

    // A healthy cluster is refused: nothing to recover, and every later write would be lost.
    let out = site.recover(&["--snapshot", snap_arg, "--dry-run"]).output().unwrap();
    expect_code(&out, 17, "recover while the cluster has quorum");
    assert!(text(&out.stderr).contains("has quorum"), "{}", text(&out.stderr));

    // A host key that does not match known_hosts is refused, with what to do.
    let wrong = site.path().join("known_hosts_wrong");
    let other = site.path().join("other_key");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(kg.status.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let known = std::fs::read_to_string(&site.ssh.known_hosts).unwrap();
    let mut lines: Vec<String> = known.lines().map(String::from).collect();
    let k: Vec<&str> = other_pub.split_whitespace().collect();
    lines[1] = format!("[{}]:{} {} {}", site.hosts[1].addr, site.ssh.port, k[0], k[1]);
    std::fs::write(&wrong, lines.join("\n") + "\n").unwrap();
    let out = site
        .recover(&["--snapshot", snap_arg, "--dry-run", "--known-hosts", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    expect_code(&out, 13, "recover with a known_hosts that does not match");
    let err = text(&out.stderr);
    assert!(
        err.contains(&site.hosts[1].addr) && err.contains("host key") && err.contains("never"),
        "{err}"
    );

    lose_quorum(&site);
    let before: Vec<_> = site.hosts.iter().map(host_state).collect();

    // The dry run: the plan, and nothing changed on any host.
    let out = site.recover(&["--snapshot", snap_arg, "--dry-run"]).output().unwrap();
    expect_code(&out, 0, "recover --dry-run");
    let stdout = text(&out.stdout);
    for needle in ["127.0.0.11 (restore)", "Plan:", "node restore --new-cluster", "Dry run"] {
        assert!(stdout.contains(needle), "{needle:?} missing\n{stdout}");
    }
    let out = site.recover(&["--snapshot", snap_arg, "--dry-run", "-w", "json"]).output().unwrap();
    expect_code(&out, 0, "recover --dry-run -w json");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["restoreHost"], "127.0.0.11");
    assert_eq!(plan["steps"].as_array().unwrap().len(), 9, "{plan}");
    assert_eq!(plan["hosts"][1]["facts"]["parked"], true);
    assert_eq!(plan["hosts"][0]["facts"]["etcdAnswers"], true);
    assert_eq!(plan["hosts"][0]["facts"]["etcdHealthy"], false);
    let after: Vec<_> = site.hosts.iter().map(host_state).collect();
    assert!(before == after, "the dry run changed a host");
    assert_eq!(site.hosts[0].kubelet.as_ref().unwrap().starts(), 1, "the dry run restarted m1");
    assert!(!site.path().join("recover-state.json").exists(), "the dry run wrote a state file");
    assert!(!site.path().join("127.0.0.11/var/tmp").exists(), "the dry run copied the snapshot");

    // The recovery, from the first command to three healthy members.
    let started = Instant::now();
    let out = site.recover(&["--snapshot", snap_arg]).output().unwrap();
    let took = started.elapsed();
    expect_code(&out, 0, "recover");
    let err = text(&out.stderr);
    assert!(
        err.contains("start: [127.0.0.13] node join")
            && err.contains("done: [127.0.0.13] node join"),
        "{err}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Recovered: 3 healthy members"), "{stdout}");
    // Each step's time, the preflight's and the total, in a table.
    for step in ["preflight", "copy_snapshot", "restore", "join", "wait_all_healthy", "total"] {
        let line =
            stdout.lines().skip_while(|l| *l != "Times:").find(|l| l.trim().starts_with(step));
        let secs = line.and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
        assert!(secs.is_some(), "no time for {step}\n{stdout}");
    }
    // The time is printed before the data is compared, so a bench sees it either way (the
    // test still fails when the data is wrong); the step table goes with it.
    println!(
        "RECOVERY TIME (cluster recover over ssh, 3 hosts): {:.1} s, snapshot {:.1} MiB, {} keys",
        took.as_secs_f64(),
        std::fs::metadata(&snap).unwrap().len() as f64 / 1048576.0,
        want.len()
    );
    println!("{stdout}");
    assert_recovered(&site.hosts, &want);
    let state_file = site.path().join("recover-state.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777, 0o600);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["outcome"], "recovered");
    assert!(state["steps"].as_array().unwrap().iter().all(|s| s["status"] == "done"), "{state}");
    let copies: Vec<_> =
        std::fs::read_dir(site.path().join("127.0.0.11/var/tmp")).unwrap().collect();
    assert!(copies.is_empty(), "the snapshot's copy stays on the restore host");
    // A second run is refused: the cluster is healthy again.
    let out = site.recover(&["--snapshot", snap_arg, "--dry-run"]).output().unwrap();
    expect_code(&out, 17, "recover a recovered cluster");
}

#[test]
fn a_failed_join_rolls_every_host_back() {
    let mut site = start_site();
    let (snap, _) = snapshot(&site);
    lose_quorum(&site);
    let m1_data_inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&site.hosts[0].data).unwrap().ino()
    };
    let before: Vec<_> = site.hosts.iter().map(host_state).collect();
    // m3's kubelet is dead: its etcd never starts, so its join times out after the add.
    drop(site.hosts[2].kubelet.take());

    let out = site
        .recover(&["--snapshot", snap.to_str().unwrap(), "--wait-timeout", "20s"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "the recovery succeeded without m3's kubelet");
    let err = text(&out.stderr);
    assert!(err.contains("FAILED: [127.0.0.13] node join"), "{err}");
    for h in &site.hosts {
        assert!(
            err.contains(&format!("rolled back {}", h.addr)),
            "{} not rolled back\n{err}",
            h.addr
        );
    }
    assert!(err.contains("each is as it was before the recovery"), "{err}");

    // Every host as it was: m1 runs its old data (the old cluster, the write after the
    // snapshot), m2 and m3 parked with their original manifests and no data dir.
    let after: Vec<_> = site.hosts.iter().map(host_state).collect();
    assert!(before == after, "not as before:\n{before:#?}\n{after:#?}");
    // m1's etcd runs again on its original data dir (the same directory, not a copy); it
    // has no quorum, as before, so it serves no requests: its port and its lock are the proof.
    let m1 = &site.hosts[0];
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&m1.data).unwrap().ino(),
        m1_data_inode,
        "m1's original data dir is not back"
    );
    let addr = m1.client.trim_start_matches("http://").to_string();
    wait_until(Duration::from_secs(30), "m1's old etcd listening", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert!(!healthy(&m1.client), "m1 has quorum after the rollback");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.path().join("recover-state.json")).unwrap())
            .unwrap();
    assert_eq!(state["outcome"], "rolled_back");
    // Nothing to resume after a rollback.
    let out = site.recover(&["--snapshot", snap.to_str().unwrap(), "--resume"]).output().unwrap();
    expect_code(&out, 2, "--resume after a rollback");
}

#[test]
fn a_killed_recovery_resumes() {
    use std::os::unix::process::CommandExt;
    let site = start_site();
    let (snap, want) = snapshot(&site);
    lose_quorum(&site);
    let state_file = site.path().join("recover-state.json");
    let mut child = site
        .recover(&["--snapshot", snap.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Killed (with its ssh clients) once the restore is done, before the joins.
    wait_until(Duration::from_secs(120), "the restore step done", || {
        std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| {
                s["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|st| st["kind"] == "restore" && st["status"] == "done")
            })
    });
    // SAFETY: kill(2) with SIGKILL on the process group of the child we started.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["outcome"], "running");
    // Without --resume a new recovery is refused while this one is unfinished.
    let out = site.recover(&["--snapshot", snap.to_str().unwrap()]).output().unwrap();
    expect_code(&out, 2, "a second recovery over an unfinished one");
    assert!(text(&out.stderr).contains("--resume"), "{}", text(&out.stderr));

    let out = site.recover(&["--resume"]).output().unwrap();
    expect_code(&out, 0, "recover --resume");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("node restore --new-cluster") && stdout.contains("(done)"), "{stdout}");
    let err = text(&out.stderr);
    assert!(!err.contains("start: [127.0.0.11] node restore"), "the restore ran again\n{err}");
    assert_recovered(&site.hosts, &want);
}
