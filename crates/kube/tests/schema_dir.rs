//! `--schema-dir`: the generated.proto files of the newest k8s.io/api release (from the Go
//! module cache, downloaded by the test) laid over the built-in schema make the golden
//! fixtures of types and fields newer than it render in full.
//!
//! The schema is chosen once per process ([`schema::activate`]), so this file is its own test
//! binary; without it, the same fixtures render raw (render_fixtures.rs).

use std::path::Path;

use etcdguard_kube::render::{render, RenderOptions};
use etcdguard_kube::schema::{self, Schema, SchemaDirError};
use serde_json::Value;

fn api_module() -> Option<(std::path::PathBuf, String)> {
    let found = etcdguard_testkit::apiserver::k8s_api_module();
    if found.is_none() {
        eprintln!("SKIPPED: no `go` on PATH to download k8s.io/api (install Go to run this test)");
    }
    found
}

#[test]
fn the_newest_release_renders_every_fixture_in_full() {
    let Some((api, version)) = api_module() else { return };
    let started = std::time::Instant::now();
    let loaded = Schema::load_dirs(std::slice::from_ref(&api))
        .unwrap_or_else(|e| panic!("{}: {e}", api.display()));
    eprintln!(
        "k8s.io/api {version}: {} messages from {:?} in {:?}",
        loaded.messages,
        loaded.sources,
        started.elapsed()
    );
    assert!(
        loaded.sources.iter().any(|s| s.starts_with("k8s.io/apimachinery@")),
        "apimachinery found beside k8s.io/api: {:?}",
        loaded.sources
    );
    assert!(loaded.messages > 500, "{} messages", loaded.messages);

    // Types of 1.36+ (absent from the built-in schema) and fields added since 1.35.
    let built_in = Schema::built_in();
    for (api_version, kind) in [
        ("lifecycle.k8s.io/v1alpha1", "EvictionRequest"),
        ("resource.k8s.io/v1", "DeviceTaintRule"),
        ("certificates.k8s.io/v1", "PodCertificateRequest"),
    ] {
        assert!(built_in.type_of(api_version, kind).is_none(), "{kind} is built in");
        assert!(
            loaded.schema.type_of(api_version, kind).is_some(),
            "{kind} missing from {version}"
        );
    }
    let built_in_status = built_in.message("api.core.v1.PodStatus").unwrap().fields.len();
    assert!(
        loaded.schema.message("api.core.v1.PodStatus").unwrap().fields.len() > built_in_status,
        "PodStatus gained fields after 1.35"
    );
    // Kept from the built-in schema: a version the newer release no longer has.
    assert!(loaded.schema.type_of("flowcontrol.apiserver.k8s.io/v1beta1", "FlowSchema").is_some());

    // The hand-written facts of the built-in schema (JSON names that differ from proto names,
    // embedded structs) agree with the release's Go types wherever both have a field.
    let mut disagree = Vec::new();
    let mut checked = 0;
    for name in loaded.schema.message_names() {
        let (Some(go_side), Some(ours)) = (loaded.schema.message(name), built_in.message(name))
        else {
            continue;
        };
        for (number, f) in &go_side.fields {
            let (Some(go), Some(b)) = (f.go, ours.fields.get(number)) else { continue };
            // Types printed as a scalar (Duration, RawExtension, …) or read as the envelope.
            if go.hidden
                || ["apimachinery.pkg.apis.meta.v1.Duration", "apimachinery.pkg.runtime.Unknown"]
                    .contains(&name)
            {
                continue;
            }
            checked += 1;
            if b.inline != go.inline || (!go.inline && b.json_name != f.json_name) {
                disagree.push(format!(
                    "{name} field {number}: built-in {:?} inline={} / Go {:?} inline={}",
                    b.json_name, b.inline, f.json_name, go.inline
                ));
            }
        }
    }
    disagree.sort();
    eprintln!("{checked} fields checked against the Go types");
    assert!(checked > 3000, "{checked}");
    assert!(
        disagree.is_empty(),
        "the built-in schema disagrees with the Go types:\n{}",
        disagree.join("\n")
    );

    schema::activate(loaded.schema).expect("nothing rendered before");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let opts = RenderOptions { show_managed_fields: true };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for pb in &names {
        let name = pb.file_name().unwrap().to_string_lossy().into_owned();
        let want: Value =
            serde_json::from_slice(&std::fs::read(pb.with_extension("json")).unwrap()).unwrap();
        match render(&std::fs::read(pb).unwrap(), None, &opts) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(r) if !r.unknown_fields.is_empty() => {
                failures.push(format!("{name}: unknown fields at {:?}", r.unknown_fields))
            }
            Ok(r) => {
                let ops = etcdguard_kube::jsondiff::diff(&want, &r.object);
                if let Some(op) = ops.first() {
                    failures.push(format!(
                        "{name}: {} differences, first {}",
                        ops.len(),
                        serde_json::to_string(op).unwrap()
                    ));
                }
            }
        }
    }
    for f in &failures {
        eprintln!("  {f}");
    }
    assert_eq!(names.len(), 130, "fixture set changed");
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ with the schema of k8s.io/api {version}",
        failures.len(),
        names.len()
    );
    // Encoding uses the same schema: a type only the newer release has encodes back.
    let want: Value = serde_json::from_slice(
        &std::fs::read(dir.join("lifecycle.k8s.io.v1alpha1.EvictionRequest.json")).unwrap(),
    )
    .unwrap();
    let encoded = etcdguard_kube::encode::encode_object(&want).unwrap();
    assert_eq!(
        etcdguard_kube::jsondiff::diff(&want, &render(&encoded, None, &opts).unwrap().object),
        vec![]
    );
}

#[test]
fn bad_schema_dirs_say_what_is_wrong() {
    let missing = Schema::load_dirs(&["/nonexistent/k8s.io/api@v9.9.9".into()]).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let empty = tempfile::tempdir().unwrap();
    let err = Schema::load_dirs(&[empty.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, SchemaDirError::Empty(_)), "{err}");
    assert!(err.to_string().contains("go mod download -json k8s.io/api@VERSION"), "{err}");

    let Some((api, _)) = api_module() else { return };
    // k8s.io/api alone, away from the module cache: its imports of apimachinery fail, and the
    // error names the module to add.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(api.join("go.mod"), copy.path().join("go.mod")).unwrap();
    std::fs::create_dir_all(copy.path().join("core/v1")).unwrap();
    std::fs::copy(api.join("core/v1/generated.proto"), copy.path().join("core/v1/generated.proto"))
        .unwrap();
    let err = Schema::load_dirs(&[copy.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, SchemaDirError::Compile(_)), "{err}");
    assert!(
        err.to_string().contains("add the folder of k8s.io/apimachinery with another --schema-dir"),
        "{err}"
    );
}
