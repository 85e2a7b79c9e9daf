//! Builds the protobuf schema of every built-in Kubernetes type from the `generated.proto`
//! files that the registry crate `k8s-rs-pb` ships in its source (Kubernetes 1.30 to 1.35),
//! compiled with protox. Nothing of them is kept in this repository: the result is a compact
//! table in OUT_DIR (`schema.txt`, read by `src/schema.rs`; its format is in
//! `src/proto_table.rs`, which `--schema-dir` shares at run time).
//!
//! The schema is the union over releases: a message of a removed API version is kept, and a
//! field number keeps the newest release's name and type.

use std::path::{Path, PathBuf};

#[path = "src/proto_table.rs"]
mod proto_table;

const K8S_RS_PB: &str = "k8s-rs-pb-0.5.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/proto_table.rs");
    println!("cargo:rerun-if-env-changed=ETCDGUARD_K8S_PROTO_DIR");
    let src = proto_root();
    let mut releases: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("v1_"))
        })
        .collect();
    // v1_30 < v1_35 < v1_100: by the minor number, so that newer releases win.
    releases.sort_by_key(|p| {
        p.file_name().and_then(|n| n.to_str()).and_then(|n| n[3..].parse::<u32>().ok()).unwrap_or(0)
    });
    assert!(!releases.is_empty(), "no v1_* release folders under {}", src.display());

    let mut schema = proto_table::Table::new();
    for release in &releases {
        let mut files = Vec::new();
        find_protos(release, release, &mut files);
        files.sort();
        let mut compiler = protox::Compiler::new([release])
            .unwrap_or_else(|e| panic!("{}: {e}", release.display()));
        compiler.include_imports(true);
        compiler
            .open_files(&files)
            .unwrap_or_else(|e| panic!("compiling the protos of {}: {e}", release.display()));
        proto_table::add_pool(&compiler.descriptor_pool(), &mut schema);
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("schema.txt");
    std::fs::write(&dest, proto_table::to_text(&schema)).unwrap();
}

fn find_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            find_protos(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            // Test-only API groups are not stored by any API server.
            if !rel.to_string_lossy().contains("testapigroup") {
                out.push(rel);
            }
        }
    }
}

/// The `src` folder of the k8s-rs-pb package (a build dependency, so cargo has fetched it):
/// `ETCDGUARD_K8S_PROTO_DIR` if set, else cargo's registry sources, else `cargo metadata`
/// (vendored builds).
fn proto_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("ETCDGUARD_K8S_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        if let Ok(registries) = std::fs::read_dir(home.join("registry/src")) {
            for r in registries.flatten() {
                let candidate = r.path().join(K8S_RS_PB).join("src");
                if candidate.is_dir() {
                    return candidate;
                }
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.toml");
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata to find k8s-rs-pb");
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata output");
    let found = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "k8s-rs-pb")
        .and_then(|p| p["manifest_path"].as_str());
    match found {
        Some(m) => Path::new(m).parent().unwrap().join("src"),
        None => panic!("cannot find the k8s-rs-pb sources (its generated.proto files are the schema); set ETCDGUARD_K8S_PROTO_DIR to its src folder"),
    }
}
