//! Builds the protobuf schema of every built-in Kubernetes type from the `generated.proto`
//! files that the registry crate `k8s-rs-pb` ships in its source (Kubernetes 1.30 to 1.35),
//! compiled with protox. Nothing of them is kept in this repository: the result is a compact
//! table in OUT_DIR (`schema.txt`, read by `src/schema.rs`):
//!
//! ```text
//! M <message full name> [map]
//! F <number> <proto field name> <r|s> <kind> [<message full name>]
//! ```
//!
//! The schema is the union over releases: a message of a removed API version is kept, and a
//! field number keeps the newest release's name and type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protox::prost_reflect::{Cardinality, Kind};

const K8S_RS_PB: &str = "k8s-rs-pb-0.5.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ETCDGUARD_K8S_PROTO_DIR");
    let src = proto_root();
    let mut releases: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("v1_")))
        .collect();
    // v1_30 < v1_35 < v1_100: by the minor number, so that newer releases win.
    releases.sort_by_key(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n[3..].parse::<u32>().ok()).unwrap_or(0));
    assert!(!releases.is_empty(), "no v1_* release folders under {}", src.display());

    // message → (is map entry, field number → line)
    let mut schema: BTreeMap<String, (bool, BTreeMap<u32, String>)> = BTreeMap::new();
    for release in &releases {
        let mut files = Vec::new();
        find_protos(release, release, &mut files);
        files.sort();
        let mut compiler = protox::Compiler::new([release]).unwrap_or_else(|e| panic!("{}: {e}", release.display()));
        compiler.include_imports(true);
        compiler.open_files(&files).unwrap_or_else(|e| panic!("compiling the protos of {}: {e}", release.display()));
        let pool = compiler.descriptor_pool();
        for m in pool.all_messages() {
            let entry = schema.entry(m.full_name().to_string()).or_default();
            entry.0 = m.is_map_entry();
            for f in m.fields() {
                let (kind, target) = match f.kind() {
                    Kind::Message(t) => ("message", t.full_name().to_string()),
                    Kind::Enum(_) => ("enum", String::new()),
                    k => (scalar(&k), String::new()),
                };
                let rep = if f.cardinality() == Cardinality::Repeated { "r" } else { "s" };
                entry.1.insert(f.number(), format!("F {} {} {rep} {kind} {target}", f.number(), f.name()).trim_end().to_string());
            }
        }
    }
    let mut out = String::new();
    for (name, (map, fields)) in &schema {
        out.push_str(&format!("M {name}{}\n", if *map { " map" } else { "" }));
        for line in fields.values() {
            out.push_str(line);
            out.push('\n');
        }
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("schema.txt");
    std::fs::write(&dest, out).unwrap();
}

fn scalar(k: &Kind) -> &'static str {
    match k {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) | Kind::Enum(_) => unreachable!(),
    }
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
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata output");
    let found = meta["packages"].as_array().into_iter().flatten().find(|p| p["name"] == "k8s-rs-pb").and_then(|p| p["manifest_path"].as_str());
    match found {
        Some(m) => Path::new(m).parent().unwrap().join("src"),
        None => panic!("cannot find the k8s-rs-pb sources (its generated.proto files are the schema); set ETCDGUARD_K8S_PROTO_DIR to its src folder"),
    }
}
