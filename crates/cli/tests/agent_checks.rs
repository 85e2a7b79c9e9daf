//! The agent's checks against real etcd 3.5: a scrub finds a bit flipped in a pack of the
//! repository (metrics, /healthz 503 with the reason, the agent keeps running, green again
//! after the damage is undone); a restore drill boots etcd 3.5.1 on the restored data dir
//! and reads a key; certificate expiry from --pki-dir in /metrics and as a /healthz warning,
//! and `backup show` lists the certificates the manifest recorded (or says they are sealed).

mod agent_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_support::*;
use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
use live_support::*;
use rcgen::{CertificateParams, DnType, KeyPair};

fn spawn_agent(log: &Path, args: &[&str]) -> Agent {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = etcdguard();
    cmd.arg("agent").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    Agent(cmd.spawn().unwrap())
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn scrub_finds_a_flipped_bit_and_a_drill_boots_etcd_on_the_restore() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..50 {
        server.put(
            format!("/registry/configmaps/default/cm-{i:03}").as_bytes(),
            format!("value {i}").as_bytes(),
        );
    }
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let scratch = work.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let port = free_port();
    let etcd35 = EtcdVersion::V3_5.binaries().etcd;
    let log = work.path().join("agent.log");
    let args = [
        "--repo",
        repo.to_str().unwrap(),
        "--endpoints",
        server.endpoint(),
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--every",
        "1h",
        "--verify-every",
        "2s",
        "--drill-every",
        "3s",
        "--drill-etcd",
        etcd35.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ];
    let mut agent = spawn_agent(&log, &args);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // One backup (--every 1h), a scrub that checked it, a drill that booted etcd on it.
    let mut m = String::new();
    wait_for(
        "a backup, a scrub that checked it, and a good drill",
        Duration::from_secs(120),
        || {
            m = metrics(port);
            sample(&m, "etcdguard_backup_runs_total{result=\"success\"}").unwrap_or(0.0) >= 1.0
                && sample(&m, "etcdguard_scrub_backups_checked_total{result=\"success\"}")
                    .unwrap_or(0.0)
                    >= 1.0
                && sample(&m, "etcdguard_drill_runs_total{result=\"success\"}").unwrap_or(0.0)
                    >= 1.0
        },
    );
    assert_eq!(sample(&m, "etcdguard_scrub_failures_total"), Some(0.0), "{}", agent_log());
    assert_eq!(sample(&m, "etcdguard_drill_failures_total"), Some(0.0), "{}", agent_log());
    assert!(sample(&m, "etcdguard_scrub_packs_checked_total").unwrap() >= 1.0, "{m}");
    for series in [
        "etcdguard_scrub_last_success_timestamp_seconds",
        "etcdguard_drill_last_success_timestamp_seconds",
    ] {
        let at = sample(&m, series).unwrap();
        assert!((unix_now() - at).abs() < 60.0, "{series} {at}");
    }
    assert!(agent_log().contains("etcd booted on it and answered"), "{}", agent_log());
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let ids = list_ids(&repo);
    assert_eq!(ids.len(), 1, "{ids:?}");
    // The scrub records what it checked, as `backup verify` does.
    let show = etcdguard().args(["backup", "show", &ids[0], "--repo"]).arg(&repo).output().unwrap();
    expect_code(&show, 0, "backup show");
    assert!(text(&show.stdout).contains("backup verified 20"), "{}", text(&show.stdout));
    // The drill is recorded too: the inventory (`backup list`, the operator's records) shows it.
    let list =
        etcdguard().args(["backup", "list", "-w", "json", "--repo"]).arg(&repo).output().unwrap();
    expect_code(&list, 0, "backup list");
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let drilled = listed[0]["lastDrilled"].as_str().unwrap_or_else(|| panic!("{listed:#}"));
    let at = chrono::DateTime::parse_from_rfc3339(drilled).unwrap().timestamp() as f64;
    assert!((unix_now() - at).abs() < 120.0, "lastDrilled {drilled}");

    // One bit flipped in the middle of the largest pack: the next scrub finds it.
    let pack =
        packs(&repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let at = std::fs::metadata(&pack).unwrap().len() as usize / 2;
    flip_byte(&pack, at);
    wait_for("a scrub failure", Duration::from_secs(60), || {
        sample(&metrics(port), "etcdguard_scrub_failures_total").unwrap_or(0.0) >= 1.0
    });
    let m = metrics(port);
    assert!(
        sample(&m, "etcdguard_scrub_backups_checked_total{result=\"failure\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "etcdguard_agent_healthy"), Some(0.0), "{m}");
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("the last scrub failed at "), "{body}");
    assert!(body.contains(&ids[0]), "the damaged backup is named: {body}");
    assert!(agent_log().contains("damage found"), "{}", agent_log());
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.is_running(), "the agent must survive damage:\n{}", agent_log());
    assert_eq!(
        sample(&metrics(port), "etcdguard_agent_healthy"),
        Some(0.0),
        "still red until a scrub passes"
    );

    // Undone: the next scrub (and drill) pass and /healthz is green again.
    flip_byte(&pack, at);
    wait_for("/healthz green again", Duration::from_secs(90), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let m = metrics(port);
    assert!(sample(&m, "etcdguard_scrub_runs_total{result=\"success\"}").unwrap() >= 2.0, "{m}");
    assert!(agent.is_running());
    drop(agent);
    // Nothing the drill booted is left running on its data dir (it dies with the agent).
    let scratch_arg = scratch.to_str().unwrap().to_string();
    wait_for("no etcd left on the drill's data dir", Duration::from_secs(10), || {
        let leftover =
            std::process::Command::new("pgrep").args(["-f", &scratch_arg]).output().unwrap();
        text(&leftover.stdout).trim().is_empty()
    });
}

/// A self-signed certificate with CN `cn`, valid from a day ago until `days` from now.
fn cert_pem(cn: &str, days: u64) -> (String, i64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let whole = Duration::from_secs(now.as_secs());
    let base = rcgen::date_time_ymd(1970, 1, 1) + whole;
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = base - Duration::from_secs(86_400);
    p.not_after = base + Duration::from_secs(days * 86_400);
    let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
    (cert.pem(), whole.as_secs() as i64 + (days * 86_400) as i64)
}

#[test]
fn certificate_expiry_in_metrics_health_and_backup_show() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/a", b"1");
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let pki = work.path().join("pki");
    std::fs::create_dir_all(pki.join("etcd")).unwrap();
    let (soon, soon_after) = cert_pem("etcd-server", 5);
    let (later, later_after) = cert_pem("kubernetes", 365);
    std::fs::write(pki.join("etcd/server.crt"), soon).unwrap();
    std::fs::write(pki.join("ca.crt"), later).unwrap();
    std::fs::write(
        pki.join("ca.key"),
        "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let port = free_port();
    let log = work.path().join("agent.log");
    let args = [
        "--repo",
        repo.to_str().unwrap(),
        "--endpoints",
        server.endpoint(),
        "--pki-dir",
        pki.to_str().unwrap(),
        "--every",
        "1h",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ];
    let agent = spawn_agent(&log, &args);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let soon_series =
        "etcdguard_certificate_expiry_seconds{path=\"etcd/server.crt\",subject=\"CN=etcd-server\"}";
    let later_series =
        "etcdguard_certificate_expiry_seconds{path=\"ca.crt\",subject=\"CN=kubernetes\"}";
    let mut m = String::new();
    wait_for("a backup and both certificates in /metrics", Duration::from_secs(60), || {
        m = metrics(port);
        sample(&m, "etcdguard_backup_runs_total{result=\"success\"}").unwrap_or(0.0) >= 1.0
            && sample(&m, later_series).is_some()
    });
    // Seconds left, right within a minute.
    let now = unix_now();
    let got = sample(&m, soon_series).unwrap_or_else(|| panic!("{m}"));
    assert!(
        (got - (soon_after as f64 - now)).abs() < 60.0,
        "{soon_series} = {got}, want {}",
        soon_after as f64 - now
    );
    let got = sample(&m, later_series).unwrap();
    assert!((got - (later_after as f64 - now)).abs() < 60.0, "{later_series} = {got}");
    assert_eq!(m.matches("etcdguard_certificate_expiry_seconds{").count(), 2, "{m}");
    // /healthz warns about the one within 30 days, and stays 200.
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok: last backup "), "{body}");
    assert!(
        body.contains("warning: certificate etcd/server.crt (CN=etcd-server) expires in 4d 23h"),
        "{body}"
    );
    assert!(!body.contains("ca.crt"), "{body}");
    drop(agent);
    assert!(!agent_log().contains("secret"), "{}", agent_log());

    // The manifest recorded both; `backup show` lists them.
    let show =
        etcdguard().args(["backup", "show", "latest", "--repo"]).arg(&repo).output().unwrap();
    expect_code(&show, 0, "backup show");
    let out = text(&show.stdout);
    assert!(out.contains("certificates        2"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("etcd/server.crt")
            && l.contains("CN=etcd-server")
            && l.contains(" 4d 23h ")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("ca.crt")
            && l.contains("CN=kubernetes")
            && l.contains(" 364d 23h ")),
        "{out}"
    );
    let show = etcdguard()
        .args(["backup", "show", "latest", "--repo"])
        .arg(&repo)
        .args(["-w", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let certs = v["certificates"].as_array().unwrap_or_else(|| panic!("{v}"));
    let at = |p: &str| {
        let c = certs.iter().find(|c| c["path"] == p).unwrap();
        chrono::DateTime::parse_from_rfc3339(c["notAfter"].as_str().unwrap()).unwrap().timestamp()
    };
    assert_eq!((at("ca.crt"), at("etcd/server.crt")), (later_after, soon_after));

    // An encrypted repository seals them with the file list.
    let snap = work.path().join("snap.db");
    server.snapshot_save(&snap);
    let sealed = work.path().join("sealed");
    let out = etcdguard()
        .args(["backup", "create", "--from-file"])
        .arg(&snap)
        .arg("--repo")
        .arg(&sealed)
        .arg("--pki-dir")
        .arg(&pki)
        .env("ETCDGUARD_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create into an encrypted repository");
    let show = etcdguard()
        .args(["backup", "show", "latest", "--repo"])
        .arg(&sealed)
        .env_remove("ETCDGUARD_PASSPHRASE")
        .output()
        .unwrap();
    expect_code(&show, 0, "backup show without the passphrase");
    assert!(
        text(&show.stdout).contains("file list is encrypted, give the passphrase"),
        "{}",
        text(&show.stdout)
    );
    assert!(!text(&show.stdout).contains("CN=etcd-server"), "{}", text(&show.stdout));
    let show = etcdguard()
        .args(["backup", "show", "latest", "--repo"])
        .arg(&sealed)
        .env("ETCDGUARD_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    expect_code(&show, 0, "backup show with the passphrase");
    assert!(text(&show.stdout).contains("CN=etcd-server"), "{}", text(&show.stdout));
}

#[test]
fn check_flags_are_validated() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();
    for (args, what) in [
        (vec!["--verify-every", "0s"], "--verify-every 0s"),
        (vec!["--drill-every", "soon"], "--drill-every soon"),
        (vec!["--drill-etcd", "/usr/bin/etcd"], "--drill-etcd without --drill-every"),
        (vec!["--verify-budget", "5m"], "--verify-budget without --verify-every"),
        (vec!["--cert-warn", "x"], "--cert-warn x"),
    ] {
        let out = etcdguard()
            .args(["agent", "--repo", repo, "--runs", "0", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        expect_code(&out, 2, what);
    }
    let out = etcdguard()
        .args([
            "agent",
            "--repo",
            repo,
            "--runs",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--verify-every",
            "24h",
            "--verify-budget",
            "30m",
            "--drill-every",
            "24h",
        ])
        .args(["--drill-etcd", "/usr/bin/etcd", "--cert-warn", "14d"])
        .output()
        .unwrap();
    expect_code(&out, 0, "valid check flags with --runs 0");
    assert!(!Path::new(repo).exists(), "--runs 0 must not touch the repository");
}

/// A byte flipped in a stored pack: the scrub turns /healthz red; the agent's next backup
/// reads back the packs it reuses, stores the damaged content again and records the damage,
/// and the scrub after it is green again, without anyone undoing the damage.
#[test]
fn damage_found_by_the_scrub_is_healed_by_the_next_backup() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..200 {
        server.put(
            format!("/registry/configmaps/default/cm-{i:03}").as_bytes(),
            "v".repeat(300).as_bytes(),
        );
    }
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let port = free_port();
    let log = work.path().join("agent.log");
    let args = [
        "--repo",
        repo.to_str().unwrap(),
        "--endpoints",
        server.endpoint(),
        "--every",
        "6s",
        "--verify-every",
        "1s",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ];
    let mut agent = spawn_agent(&log, &args);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("a backup and a good scrub", Duration::from_secs(60), || {
        let m = metrics(port);
        sample(&m, "etcdguard_backup_runs_total{result=\"success\"}").unwrap_or(0.0) >= 1.0
            && sample(&m, "etcdguard_scrub_backups_checked_total{result=\"success\"}")
                .unwrap_or(0.0)
                >= 1.0
    });
    let pack =
        packs(&repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let at = std::fs::metadata(&pack).unwrap().len() as usize / 2;
    flip_byte(&pack, at);
    wait_for("/healthz red", Duration::from_secs(30), || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 503)
    });
    let backups_before =
        sample(&metrics(port), "etcdguard_backup_runs_total{result=\"success\"}").unwrap();
    wait_for_or(
        "/healthz green after the next backup",
        Duration::from_secs(60),
        agent_log,
        &mut || get(port, "/healthz").is_some_and(|(s, _)| s == 200),
    );
    let m = metrics(port);
    assert!(
        sample(&m, "etcdguard_backup_runs_total{result=\"success\"}").unwrap() > backups_before,
        "{m}"
    );
    assert!(agent_log().contains("is damaged"), "the backup says what it found:\n{}", agent_log());
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(repo.join("damaged").join(format!("{name}.json")).exists(), "the damage is recorded");
    assert!(agent.is_running());
}
