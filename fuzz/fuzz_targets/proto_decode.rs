//! The hand-written protobuf decoders and the revision-key parser on arbitrary bytes: every
//! value stored in a snapshot's `key` and `lease` buckets goes through them during verify,
//! and every Kubernetes value through `etcdguard_kube::decode` during `inspect`.
#![no_main]

use etcdguard_storage::proto::{for_each_field, KeyValue, Lease};
use etcdguard_storage::verify::parse_revision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kv) = KeyValue::decode(data) {
        // Decoded slices point into the input.
        assert!(kv.key.len() <= data.len());
        std::hint::black_box(&kv);
    }
    let _ = std::hint::black_box(Lease::decode(data));
    let mut fields = 0usize;
    let _ = for_each_field(data, |_, _| {
        fields += 1;
        Ok(())
    });
    // Every field takes at least one byte.
    assert!(fields <= data.len());
    let object = etcdguard_kube::decode(data);
    let _ = std::hint::black_box(etcdguard_kube::key_path(data, object.metadata.as_ref()));
    if let Ok((main, sub, _)) = parse_revision(data) {
        assert!(main >= 0 && sub >= 0);
        assert!(data.len() == 17 || data.len() == 18);
    }
});
