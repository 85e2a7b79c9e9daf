//! Stamps `etcdguard --version` with the commit and the build date (UTC).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    // SOURCE_DATE_EPOCH makes the date reproducible, as reproducible-builds.org asks.
    let date = match std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<i64>().ok()) {
        Some(secs) => Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output(),
        None => Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output(),
    }
    .ok()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ETCDGUARD_COMMIT={commit}");
    println!("cargo:rustc-env=ETCDGUARD_BUILD_DATE={date}");
    // A new commit changes HEAD or the branch it points to (a worktree has its own HEAD and
    // shares the refs). Outside a checkout, only this file.
    println!("cargo:rerun-if-changed=build.rs");
    let git = |arg: &str| {
        Command::new("git")
            .args(["rev-parse", arg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let (Some(dir), Some(common)) = (git("--absolute-git-dir"), git("--git-common-dir")) {
        let common = if common.is_absolute() {
            common
        } else {
            std::env::current_dir().unwrap_or_default().join(common)
        };
        for f in [dir.join("HEAD"), common.join("refs/heads"), common.join("packed-refs")] {
            if f.exists() {
                println!("cargo:rerun-if-changed={}", f.display());
            }
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
