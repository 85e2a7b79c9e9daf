//! The command line describing itself: --version, shell completions and man pages come from
//! the same definitions the parser uses.

use std::process::Command;

fn etcdguard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etcdguard")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_commit_build_date_and_tested_etcd_versions() {
    let (ok, out, _) = etcdguard(&["--version"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("etcdguard 0."), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("commit: ") && l.len() > "commit: ".len()), "{out}");
    let built = lines.iter().find_map(|l| l.strip_prefix("built: ")).expect("a build date");
    assert!(built == "unknown" || chrono::DateTime::parse_from_rfc3339(built).is_ok(), "{built}");
    assert!(out.contains("3.4, 3.5, 3.6, 3.7"), "{out}");
}

#[test]
fn completions_for_every_shell_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, out, err) = etcdguard(&["completion", shell]);
        assert!(ok, "{shell}: {err}");
        for word in ["backup", "repair", "snapshot", "restore"] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
    }
    let (ok, _, err) = etcdguard(&["completion", "tcsh"]);
    assert!(!ok && err.contains("possible values"), "{err}");
}

#[test]
fn man_pages_cover_every_command() {
    let (ok, page, _) = etcdguard(&["man"]);
    assert!(ok && page.contains(".TH etcdguard 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = etcdguard(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    for name in [
        "etcdguard.1",
        "etcdguard-backup.1",
        "etcdguard-backup-repair.1",
        "etcdguard-snapshot-status.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".SH NAME"), "{name}");
    }
}
