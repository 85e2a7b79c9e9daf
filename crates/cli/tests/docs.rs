//! The documentation is checked like code: the guide (`docs/guide`, an mdBook) must build
//! without a warning, every relative link in it and in README.md must point at a file that
//! exists (and a `#anchor` at a heading of that file), README.md must stay short and open
//! with the two commands it promises (`scripts/demo`, `scripts/test`), and the exit-code
//! chapter must list every code of `crates/cli/src/exit.rs`.
//!
//! The mdBook build needs `mdbook` (installed by `.ci/install-deps`). Without it the build
//! test is skipped with a message, except under CI (`CI=true`), where it fails.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use pulldown_cmark::{Event, Parser, Tag, TagEnd};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn guide_src() -> PathBuf {
    repo_root().join("docs/guide/src")
}

/// Every Markdown file of the guide's source, and README.md.
fn checked_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![repo_root().join("README.md")];
    walk(&guide_src(), &mut files);
    files.sort();
    files
}

/// The text mdBook (and GitHub) read: a chapter made of `{{#include FILE}}` lines is the
/// included file.
fn rendered_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    for line in text.lines() {
        match line.trim().strip_prefix("{{#include ").and_then(|l| l.strip_suffix("}}")) {
            Some(included) => {
                let included = path.parent().unwrap().join(included.trim());
                out.push_str(&rendered_text(&included));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A heading's anchor as mdBook makes it: lower case; letters, digits, `-` and `_` kept;
/// white space becomes `-`; everything else dropped. A repeated heading gets `-1`, `-2`, ….
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) if heading.is_some() => {
                heading.as_mut().unwrap().push_str(&t)
            }
            Event::End(TagEnd::Heading(_)) => {
                let text = heading.take().unwrap();
                let id: String = text
                    .trim()
                    .chars()
                    .filter_map(|c| {
                        if c.is_alphanumeric() || c == '-' || c == '_' {
                            Some(c.to_lowercase().next().unwrap())
                        } else if c.is_whitespace() {
                            Some('-')
                        } else {
                            None
                        }
                    })
                    .collect();
                let n = seen.entry(id.clone()).or_insert(0);
                out.insert(if *n == 0 { id.clone() } else { format!("{id}-{n}") });
                *n += 1;
            }
            _ => {}
        }
    }
    out
}

/// Link and image targets outside code (pulldown-cmark skips code blocks and spans).
fn link_targets(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_relative_link_points_at_an_existing_file_and_heading() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in checked_files() {
        let text = rendered_text(&file);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue; // outside the repository: not checked (no network in tests)
            }
            checked += 1;
            let (path_part, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path_part.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path_part)
            };
            let shown = format!("{}: link `{target}`", file.strip_prefix(&root).unwrap().display());
            if !dest.exists() {
                broken.push(format!("{shown}: no such file {}", dest.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if dest.extension().is_some_and(|e| e == "md") {
                    let headings = anchors(&rendered_text(&dest));
                    if !headings.contains(anchor) {
                        broken.push(format!(
                            "{shown}: no heading with anchor #{anchor} (there are: {headings:?})"
                        ));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} relative links found: is the link scanner broken?");
}

#[test]
fn every_guide_chapter_is_in_the_summary() {
    let src = guide_src();
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<String> = link_targets(&summary).into_iter().collect();
    let missing: Vec<String> = checked_files()
        .iter()
        .filter_map(|f| f.strip_prefix(&src).ok())
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|f| f != "SUMMARY.md" && !listed.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "chapters mdBook would not show (add them to SUMMARY.md): {missing:?}"
    );
}

#[test]
fn readme_is_short_and_opens_with_demo_and_test() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; the limit is 200: move detail into docs/guide"
    );
    // The first code block is what a reader runs first: the demo, then the test suite.
    let first_block: String =
        readme.split("```").nth(1).expect("README.md has no code block").to_string();
    let commands: Vec<&str> =
        first_block.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(commands, ["scripts/demo", "scripts/test"], "README.md's first code block");
    for script in ["scripts/demo", "scripts/test"] {
        assert!(root.join(script).is_file(), "README.md names {script}, which does not exist");
    }
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let lines = architecture.lines().count();
    assert!(
        lines <= 250,
        "ARCHITECTURE.md has {lines} lines; the limit is 250: move detail into module docs"
    );
}

#[test]
fn exit_code_chapter_lists_every_code() {
    let root = repo_root();
    let exit_rs = std::fs::read_to_string(root.join("crates/cli/src/exit.rs")).unwrap();
    let enum_body = exit_rs.split("pub enum Code {").nth(1).unwrap().split('}').next().unwrap();
    let codes: Vec<u32> = enum_body
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').rsplit_once(" = "))
        .map(|(_, n)| n.parse().unwrap())
        .collect();
    assert!(codes.len() >= 18, "read only {codes:?} from exit.rs");
    let chapter = std::fs::read_to_string(guide_src().join("exit-codes.md")).unwrap();
    let documented: BTreeSet<u32> = chapter
        .lines()
        .filter_map(|l| l.strip_prefix('|')?.split('|').next()?.trim().parse().ok())
        .collect();
    for code in codes {
        assert!(
            documented.contains(&code),
            "exit code {code} of exit.rs is not in docs/guide/src/exit-codes.md"
        );
    }
}

#[test]
fn guide_builds_without_warnings() {
    let mdbook = std::env::var("MDBOOK").unwrap_or_else(|_| "mdbook".into());
    if Command::new(&mdbook).arg("--version").output().is_err() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "`{mdbook}` not found; under CI it must be there (bash .ci/install-deps installs it)"
        );
        eprintln!("skipped: `{mdbook}` not found (bash .ci/install-deps installs it)");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let output = Command::new(&mdbook)
        .arg("build")
        .arg(repo_root().join("docs/guide"))
        .arg("-d")
        .arg(out_dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error"))
        .collect();
    assert!(output.status.success() && complaints.is_empty(), "mdbook build docs/guide:\n{stderr}");
    assert!(out_dir.path().join("index.html").is_file(), "mdbook wrote no index.html:\n{stderr}");
    let recovery = std::fs::read_to_string(out_dir.path().join("recovery.html")).unwrap();
    assert!(recovery.contains("node restore"), "the recovery chapter was rendered empty");
}
