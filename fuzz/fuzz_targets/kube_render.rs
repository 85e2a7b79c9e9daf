//! The schema-driven protobuf walker behind `inspect get` on arbitrary bytes. The first byte
//! picks a built-in type, so that the rest is walked as that type's message (not only
//! rejected at the envelope); the same bytes are also rendered as a whole stored value. What
//! renders must also come back from its YAML and encode without a panic.
#![no_main]

use etcdguard_kube::render::{render, RenderOptions};
use libfuzzer_sys::fuzz_target;

/// Types with deep and varied schemas: inline structs, maps, Time, Quantity, IntOrString,
/// RawExtension, FieldsV1.
const TYPES: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolume"),
    ("apps/v1", "ControllerRevision"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("resource.k8s.io/v1", "ResourceClaim"),
];

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(number: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(number << 3 | 2);
    varint(body.len(), out);
    out.extend_from_slice(body);
}

fuzz_target!(|data: &[u8]| {
    let opts = RenderOptions { show_managed_fields: data.first().is_some_and(|b| b & 0x80 != 0) };
    let _ = std::hint::black_box(render(data, Some(1), &opts));
    let Some((&pick, raw)) = data.split_first() else { return };
    let (api_version, kind) = TYPES[pick as usize % TYPES.len()];
    let mut type_meta = Vec::new();
    field(1, api_version.as_bytes(), &mut type_meta);
    field(2, kind.as_bytes(), &mut type_meta);
    let mut value = b"k8s\0".to_vec();
    field(1, &type_meta, &mut value);
    field(2, raw, &mut value);
    if let Ok(r) = render(&value, None, &opts) {
        assert_eq!(r.object["kind"], kind);
        // Whatever rendered prints, and its YAML reads back as the same object (the YAML
        // writer quotes whatever a reader could take for something else).
        assert!(!r.to_json_pretty().is_empty());
        let back: serde_json::Value =
            serde_norway::from_str(&r.to_yaml()).expect("our YAML parses");
        assert_eq!(back, r.object, "YAML round trip");
        // An object the renderer made encodes again (unknown fields aside, which it refuses).
        if r.unknown_fields.is_empty() {
            let _ = etcdguard_kube::encode::encode_object(&r.object);
        }
    }
});
