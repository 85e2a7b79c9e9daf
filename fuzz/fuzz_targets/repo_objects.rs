//! The repository's readers on arbitrary bytes: everything in a bucket may be damaged or
//! planted, so pack headers, index files, stored blobs (plain and sealed), manifests, key
//! files and the config must give errors, never panics or unbounded allocations.
#![no_main]

use std::sync::OnceLock;

use etcdguard_repo::crypto::{KeyFile, Keys};
use etcdguard_repo::id::Id;
use etcdguard_repo::pack::{decode_blob, parse_pack, Encoding, Index, MAX_BLOB_LEN};
use etcdguard_repo::Manifest;
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_pack(data) {
        for e in &entries {
            assert!(
                e.offset as u64 + e.stored_len as u64 <= data.len() as u64,
                "entry outside the pack"
            );
        }
    }
    let _ = std::hint::black_box(Index::decode(data));
    if data.len() >= 5 {
        let encoding = [Encoding::Raw, Encoding::Zstd, Encoding::SealedRaw, Encoding::SealedZstd]
            [data[0] as usize % 4];
        let raw_len = u32::from_le_bytes(data[1..5].try_into().unwrap());
        let stored = &data[5..];
        for k in [None, Some(keys())] {
            if let Ok(raw) = decode_blob(k, Id::of(stored), encoding, raw_len, stored) {
                assert!(raw.len() as u32 == raw_len && raw_len <= MAX_BLOB_LEN);
            }
        }
    }
    let _ = std::hint::black_box(serde_json::from_slice::<Manifest>(data));
    let _ = std::hint::black_box(serde_json::from_slice::<KeyFile>(data));
    let _ = std::hint::black_box(serde_json::from_slice::<etcdguard_repo::manifest::Config>(data));
});
