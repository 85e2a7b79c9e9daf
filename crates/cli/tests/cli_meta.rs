//! The command line describing itself: --version, shell completions and man pages come from
//! the same definitions the parser uses.

mod command_tree;

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

/// What an exit code means, in words its documentation uses (`crates/cli/src/exit.rs`).
fn meaning(code: u32) -> &'static [&'static str] {
    match code {
        0 => &["stop", "success", "exit 0"],
        10 => &["damage", "corrupt", "unrestorable", "integrity"],
        12 => &["unreachable", "reach"],
        14 => &["exists", "already", "same id"],
        15 => &["another etcdguard", "lock", "in use"],
        16 => &["passphrase", "key"],
        17 => &["refuse"],
        18 => &["expire", "not yet valid"],
        _ => &[],
    }
}

#[test]
fn every_documented_exit_code_is_the_code_for_what_it_says() {
    // The table in `etcdguard --help` lists every code of the Code enum.
    let source = include_str!("../src/exit.rs");
    let enum_body = source.split("pub enum Code {").nth(1).unwrap().split("\n}").next().unwrap();
    let codes: Vec<u32> = enum_body
        .lines()
        .filter_map(|l| l.trim().split(" = ").nth(1))
        .map(|n| n.trim_end_matches(',').parse().unwrap())
        .collect();
    assert_eq!(codes, (1..=18).collect::<Vec<_>>(), "exit.rs");
    let (_, top, _) = etcdguard(&["--help"]);
    let table = top.split("Exit codes:").nth(1).expect("an exit code table in --help");
    let table = format!(" {} ", table.split_whitespace().collect::<Vec<_>>().join(" "));
    for code in &codes {
        assert!(table.contains(&format!(" {code} ")), "exit {code} is not in the --help table");
    }
    // Every "exit N" any command's help mentions is a code whose meaning the sentence names.
    let commands = command_tree::all();
    assert!(commands.len() > 40, "found only {} commands", commands.len());
    let mut checked = 0;
    for cmd in commands {
        let path = &cmd.path;
        let help = cmd.help();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut rest = flat.as_str();
        while let Some(at) = rest.find("exit") {
            let after = &rest[at + 4..];
            let after = after.strip_prefix("s").unwrap_or(after);
            let after = after.strip_prefix(" code").unwrap_or(after);
            let digits: String = after
                .strip_prefix(' ')
                .unwrap_or("")
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(code) = digits.parse::<u32>() {
                let start = flat.len() - rest.len() + at;
                let window = &flat[start.saturating_sub(120)..(start + 120).min(flat.len())];
                let window = window.to_lowercase();
                let words = meaning(code);
                assert!(
                    code == 0 || codes.contains(&code),
                    "`{}` documents exit {code}, which is no exit code",
                    path.join(" ")
                );
                assert!(
                    words.is_empty() || words.iter().any(|w| window.contains(w)),
                    "`{}` documents exit {code} for: …{window}…",
                    path.join(" ")
                );
                checked += 1;
            }
            rest = &rest[at + 4..];
        }
    }
    assert!(checked >= 10, "only {checked} documented exit codes found");
}
