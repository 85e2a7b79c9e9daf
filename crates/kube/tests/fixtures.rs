//! Every protobuf fixture of kubernetes/api's golden data (`tests/fixtures/`, see its README
//! for the source and license) decodes to the apiVersion, kind and metadata its JSON twin has.

use std::path::Path;

use etcdguard_kube::{decode, Encoding};

#[test]
fn protobuf_fixtures_match_their_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (mut checked, mut with_meta) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let pb = entry.unwrap().path();
        if pb.extension().is_none_or(|e| e != "pb") {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pb.with_extension("json")).unwrap()).unwrap();
        let value = std::fs::read(&pb).unwrap();
        let o = decode(&value);
        let name = pb.file_name().unwrap().to_string_lossy();
        assert_eq!(o.encoding, Encoding::Protobuf, "{name}");
        assert_eq!(o.api_version, json["apiVersion"].as_str().unwrap(), "{name}: apiVersion");
        assert_eq!(o.kind, json["kind"].as_str().unwrap(), "{name}: kind");
        // ObjectMeta (it has a uid; ListMeta and the like do not) must match field by field.
        if json["metadata"].get("uid").is_some() {
            let m = o.metadata.clone().unwrap_or_else(|| panic!("{name}: no metadata decoded"));
            let jm = &json["metadata"];
            let expect = |k: &str| jm[k].as_str().unwrap_or_default().to_string();
            assert_eq!(m.name, expect("name"), "{name}");
            assert_eq!(m.generate_name, expect("generateName"), "{name}");
            assert_eq!(m.namespace, expect("namespace"), "{name}");
            assert_eq!(m.uid, expect("uid"), "{name}");
            assert_eq!(m.resource_version, expect("resourceVersion"), "{name}");
            assert_eq!(m.generation, jm["generation"].as_i64(), "{name}");
            assert_eq!(m.creation_timestamp.as_deref(), jm["creationTimestamp"].as_str(), "{name}");
            assert_eq!(m.deletion_timestamp.as_deref(), jm["deletionTimestamp"].as_str(), "{name}");
            let map = |k: &str| serde_json::to_value(&jm[k]).unwrap();
            assert_eq!(serde_json::to_value(&m.labels).unwrap(), map("labels"), "{name}");
            assert_eq!(serde_json::to_value(&m.annotations).unwrap(), map("annotations"), "{name}");
            assert_eq!(serde_json::to_value(&m.finalizers).unwrap(), map("finalizers"), "{name}");
            // The same object as JSON (how custom resources are stored) decodes alike.
            let from_json = decode(&std::fs::read(pb.with_extension("json")).unwrap());
            assert_eq!(from_json.encoding, Encoding::Json);
            assert_eq!(from_json.metadata.as_ref(), Some(&m), "{name}: JSON and protobuf disagree");
            with_meta += 1;
        }
        checked += 1;
    }
    assert!(checked >= 120, "only {checked} fixtures found in {}", dir.display());
    assert!(with_meta >= 100, "only {with_meta} fixtures with ObjectMeta");
    // Damage never panics: every prefix of a fixture decodes to something.
    let value = std::fs::read(dir.join("core.v1.Pod.pb")).unwrap();
    for cut in 0..value.len().min(400) {
        let _ = decode(&value[..cut]);
    }
}
