//! Every protobuf golden fixture (`tests/fixtures/`, kubernetes/api `testdata/HEAD`) renders
//! equal to its JSON twin: the whole object, compared as parsed JSON.

use std::path::Path;

use etcdguard_kube::render::{render, RenderError, RenderOptions, UNKNOWN_FIELDS_KEY};
use serde_json::Value;

/// The first difference between two values, as a path and both sides.
fn first_difference(path: &str, got: &Value, want: &Value) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for k in g.keys().chain(w.keys()) {
                let (a, b) = (g.get(k).unwrap_or(&Value::Null), w.get(k).unwrap_or(&Value::Null));
                if g.contains_key(k) != w.contains_key(k) {
                    return Some(format!(
                        "{path}.{k}: rendered {} / fixture {}",
                        short(g.get(k)),
                        short(w.get(k))
                    ));
                }
                if let Some(d) = first_difference(&format!("{path}.{k}"), a, b) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ if got == want => None,
        _ => Some(format!("{path}: rendered {} / fixture {}", short(Some(got)), short(Some(want)))),
    }
}

/// `got` without the unknown-field markers holds nothing that `want` does not (fields the
/// schema does not know are missing from it, kept under the marker instead).
fn subset_but_unknown(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => g
            .iter()
            .filter(|(k, _)| k.as_str() != UNKNOWN_FIELDS_KEY)
            .all(|(k, v)| w.get(k).is_some_and(|wv| subset_but_unknown(v, wv))),
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| subset_but_unknown(a, b))
        }
        _ => got == want,
    }
}

/// Fixtures of Kubernetes newer than the schema (the k8s-rs-pb crate has 1.30–1.35; the
/// fixtures are 1.37-dev): types it does not have, or fields added since.
const NEWER_THAN_SCHEMA: &[&str] = &[
    "admission.k8s.io.v1.AdmissionReview",
    "admission.k8s.io.v1beta1.AdmissionReview",
    "admissionregistration.k8s.io.v1.MutatingAdmissionPolicyBinding",
    "apps.v1.DaemonSet",
    "apps.v1.Deployment",
    "apps.v1.StatefulSet",
    "apps.v1beta2.DaemonSet",
    "apps.v1beta2.ReplicaSet",
    "authentication.k8s.io.v1.TokenRequest",
    "batch.v1.CronJob",
    "batch.v1beta1.CronJob",
    "core.v1.Pod",
    "core.v1.PodTemplate",
    "core.v1.Status",
    "extensions.v1beta1.DaemonSet",
    "extensions.v1beta1.ReplicaSet",
    "lifecycle.k8s.io.v1alpha1.Eviction",
    "lifecycle.k8s.io.v1alpha1.EvictionRequest",
    "resource.k8s.io.v1.DeviceTaintRule",
    "resource.k8s.io.v1.ResourceSlice",
    "resource.k8s.io.v1alpha3.ResourcePoolStatusRequest",
    "resource.k8s.io.v1beta1.ResourceSlice",
    "resource.k8s.io.v1beta2.DeviceTaintRule",
    "resource.k8s.io.v1beta2.ResourceClaim",
    "resource.k8s.io.v1beta2.ResourceSlice",
    "scheduling.k8s.io.v1alpha3.PodGroup",
    "scheduling.k8s.io.v1alpha3.Workload",
    "scheduling.k8s.io.v1beta1.Workload",
    "storage.k8s.io.v1.CSINode",
    "storage.k8s.io.v1beta1.CSINode",
    "autoscaling.v2.HorizontalPodAutoscaler",
    "certificates.k8s.io.v1.PodCertificateRequest",
    "certificates.k8s.io.v1beta1.PodCertificateRequest",
    "core.v1.Node",
];

fn short(v: Option<&Value>) -> String {
    let s = v.map_or("(absent)".to_string(), |v| v.to_string());
    if s.len() > 120 {
        format!("{}…", &s[..s.char_indices().nth(120).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

#[test]
fn every_protobuf_fixture_renders_as_its_json_twin() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let opts = RenderOptions { show_managed_fields: true };
    let (mut equal, mut drift, mut failures) = (0, 0, Vec::new());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .collect();
    names.sort();
    for pb in &names {
        let name = pb.file_name().unwrap().to_string_lossy().into_owned();
        let want: Value =
            serde_json::from_slice(&std::fs::read(pb.with_extension("json")).unwrap()).unwrap();
        let base = name.trim_end_matches(".pb");
        let newer = NEWER_THAN_SCHEMA.contains(&base);
        match render(&std::fs::read(pb).unwrap(), None, &opts) {
            Err(RenderError::UnknownType { .. }) if newer => drift += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(r) => match first_difference("", &r.object, &want) {
                None if newer => failures
                    .push(format!("{name}: listed as newer than the schema but renders equal")),
                None => {
                    assert!(
                        r.unknown_fields.is_empty(),
                        "{name}: equal but reports unknown fields {:?}",
                        r.unknown_fields
                    );
                    equal += 1
                }
                // Newer than the schema: what it knows is right, the rest is under the marker.
                Some(_)
                    if newer
                        && !r.unknown_fields.is_empty()
                        && subset_but_unknown(&r.object, &want) =>
                {
                    drift += 1
                }
                Some(d) => {
                    let unknown = if r.unknown_fields.is_empty() {
                        String::new()
                    } else {
                        format!(" (unknown fields at {:?})", r.unknown_fields)
                    };
                    failures.push(format!("{name}: {d}{unknown}"))
                }
            },
        }
    }
    eprintln!("{equal} of {} fixtures render equal to their JSON twin; {drift} are newer than the schema (unknown type, or unknown fields kept under the marker)", names.len());
    for f in &failures {
        eprintln!("  {f}");
    }
    assert_eq!(names.len(), 130, "fixture set changed");
    for n in NEWER_THAN_SCHEMA {
        assert!(dir.join(format!("{n}.pb")).exists(), "{n} is listed but not a fixture");
    }
    assert!(failures.is_empty(), "{} fixtures differ", failures.len());
    assert_eq!(equal + drift, names.len());
    assert!(equal >= 96, "only {equal} equal");
}

/// The encoder is the renderer's inverse: each fixture the schema knows in full, encoded from
/// its JSON twin, renders back to that twin (a check of both directions on objects neither
/// was written against).
#[test]
fn every_known_fixture_encodes_back_to_itself() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let opts = RenderOptions { show_managed_fields: true };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .collect();
    names.sort();
    let (mut round_tripped, mut failures) = (0, Vec::new());
    for pb in &names {
        let base = pb.file_name().unwrap().to_string_lossy().trim_end_matches(".pb").to_string();
        if NEWER_THAN_SCHEMA.contains(&base.as_str()) {
            continue;
        }
        let want: Value =
            serde_json::from_slice(&std::fs::read(pb.with_extension("json")).unwrap()).unwrap();
        let encoded = match etcdguard_kube::encode::encode_object(&want) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{base}: encode: {e}"));
                continue;
            }
        };
        match render(&encoded, None, &opts) {
            Ok(r) => match first_difference("", &r.object, &want) {
                None => round_tripped += 1,
                Some(d) => failures.push(format!("{base}: {d}")),
            },
            Err(e) => failures.push(format!("{base}: render: {e}")),
        }
    }
    for f in &failures {
        eprintln!("  {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures do not round-trip",
        failures.len(),
        failures.len() + round_tripped
    );
    assert_eq!(round_tripped, names.len() - NEWER_THAN_SCHEMA.len());
}

/// The YAML writer gives back every fixture's JSON twin when a YAML reader parses it.
#[test]
fn every_fixture_reads_back_from_its_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let want: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let text = etcdguard_kube::yaml::to_yaml(&want);
        let back: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(first_difference("", &back, &want), None, "{}", p.display());
        n += 1;
    }
    assert_eq!(n, 130);
}

#[test]
fn unknown_fields_are_kept_under_the_marker() {
    // A ConfigMap with a field number no release has (99, a string) at top level.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let value = std::fs::read(dir.join("core.v1.ConfigMap.pb")).unwrap();
    let (api_version, kind, raw) = etcdguard_kube::unwrap_envelope(&value).unwrap();
    let mut inner = raw.to_vec();
    inner.extend_from_slice(&[0x9a, 0x06, 0x03, b'n', b'e', b'w']); // field 99, LEN 3, "new"
    let type_meta = [
        &[0x0a, api_version.len() as u8][..],
        api_version.as_bytes(),
        &[0x12, kind.len() as u8],
        kind.as_bytes(),
    ]
    .concat();
    let mut envelope = b"k8s\0".to_vec();
    envelope.push(0x0a);
    envelope.push(type_meta.len() as u8);
    envelope.extend_from_slice(&type_meta);
    envelope.push(0x12);
    let mut len = inner.len();
    while len >= 0x80 {
        envelope.push((len as u8) | 0x80);
        len >>= 7;
    }
    envelope.push(len as u8);
    envelope.extend_from_slice(&inner);
    let r = render(&envelope, Some(7), &RenderOptions::default()).unwrap();
    assert_eq!(r.unknown_fields, vec![".".to_string()]);
    assert_eq!(r.object[UNKNOWN_FIELDS_KEY]["99"][0]["bytes"], "bmV3");
    assert_eq!(r.object["metadata"]["resourceVersion"], "7");
    assert!(r.object["metadata"].get("managedFields").is_none());
}

#[test]
fn encrypted_values_render_after_decryption() {
    use base64::Engine as _;
    use etcdguard_kube::encryption::EncryptionConfig;
    use etcdguard_kube::inspect::{get_object, GetError, StoredValue};
    // Vectors made by PyPI cryptography / PyNaCl, not by our code (see encryption.rs).
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new("python3")
        .arg(here.join("encryption_vectors/make_vectors.py"))
        .arg(here.join("fixtures"))
        .arg(out.path())
        .output()
        .expect("python3");
    assert!(run.status.success(), "make_vectors.py: {}", String::from_utf8_lossy(&run.stderr));
    let config = EncryptionConfig::load(&out.path().join("config.yaml")).unwrap();
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("vectors.json")).unwrap()).unwrap();
    let mut rendered = 0;
    for c in cases.iter().filter(|c| c["expect"] == "ok") {
        let stored = StoredValue {
            key: c["etcdKey"].as_str().unwrap().as_bytes().to_vec(),
            create_revision: 5,
            mod_revision: 9,
            version: 2,
            value: base64::engine::general_purpose::STANDARD
                .decode(c["value"].as_str().unwrap())
                .unwrap(),
        };
        let twin =
            here.join("fixtures").join(c["plaintext"].as_str().unwrap()).with_extension("json");
        let mut want: Value = serde_json::from_slice(&std::fs::read(twin).unwrap()).unwrap();
        want["metadata"]["resourceVersion"] = Value::String("9".into());
        want["metadata"].as_object_mut().unwrap().remove("managedFields");
        let (r, info) = get_object(&stored, Some(&config), &RenderOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
        assert_eq!(r.object, want, "{}", c["name"]);
        assert!(
            info.encoding.starts_with("protobuf, encrypted (")
                && info.encoding.contains(c["keyName"].as_str().unwrap()),
            "{}",
            info.encoding
        );
        assert_eq!((info.mod_revision, info.size), (9, stored.value.len()));
        // Without keys: named, not rendered.
        assert!(matches!(
            get_object(&stored, None, &RenderOptions::default()),
            Err(GetError::NeedsKeys { .. })
        ));
        rendered += 1;
    }
    assert!(rendered >= 5, "{rendered} vectors rendered");
}
