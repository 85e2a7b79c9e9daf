//! Every command of the binary, read from each level's `--help` (so what the tests walk is
//! what users see), for the tests that hold a rule over all of them.
#![allow(dead_code)]

use std::process::Command;

/// A command's path (`["backup", "key", "add"]`; empty for the binary itself) and whether it
/// is a leaf (has no subcommands).
pub struct Cmd {
    pub path: Vec<String>,
    pub leaf: bool,
}

impl Cmd {
    pub fn name(&self) -> String {
        self.path.join(" ")
    }

    /// Its `--help` text.
    pub fn help(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_etcdguard"))
            .args(&self.path)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every command, groups and leaves, depth first.
pub fn all() -> Vec<Cmd> {
    let mut out = Vec::new();
    walk(Vec::new(), &mut out);
    out
}

fn walk(path: Vec<String>, out: &mut Vec<Cmd>) {
    let help = Cmd { path: path.clone(), leaf: false }.help();
    let mut subs = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
        } else if in_commands && line.starts_with("  ") && !line.starts_with("   ") {
            let word = line.split_whitespace().next().unwrap_or("").to_string();
            if word != "help" {
                subs.push(word);
            }
        } else if in_commands && !line.starts_with(' ') {
            in_commands = false;
        }
    }
    out.push(Cmd { path: path.clone(), leaf: subs.is_empty() });
    for s in subs {
        let mut p = path.clone();
        p.push(s);
        walk(p, out);
    }
}
