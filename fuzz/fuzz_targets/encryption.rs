//! Encryption at rest on arbitrary bytes: the `k8s:enc:` marker parser, decryption with a
//! configuration holding every provider (names with colons included), `decode_stored`, and the
//! EncryptionConfiguration parser. Values and config files both come from outside: a snapshot
//! from a damaged disk, a config file someone edited.
#![no_main]

use std::sync::OnceLock;

use etcdguard_kube::encryption::{marker, EncryptionConfig};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
kind: EncryptionConfiguration
apiVersion: apiserver.config.k8s.io/v1
resources:
  - resources: [secrets]
    providers:
      - aesgcm: {keys: [{name: g, secret: "AAECAwQFBgcICQoLDA0ODw=="}, {name: "g:2", secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"}]}
      - aescbc: {keys: [{name: c, secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}
      - secretbox: {keys: [{name: s, secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}
      - kms: {apiVersion: v2, name: k, endpoint: "unix:///kms.sock"}
      - kms: {name: "k:1", endpoint: "unix:///kms1.sock"}
      - identity: {}
"#;

fuzz_target!(|data: &[u8]| {
    let config = OnceLock::new();
    let config = config.get_or_init(|| EncryptionConfig::parse(CONFIG.as_bytes()).unwrap());
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let _ = std::hint::black_box(EncryptionConfig::parse(rest));
        return;
    }
    // The etcd key (AAD) is the text before the first newline, the value the rest.
    let (etcd_key, value) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"/registry/secrets/default/s"[..], rest),
    };
    let m = marker(value);
    match config.decrypt(etcd_key, value) {
        Ok(plain) => {
            if m.is_none() {
                assert!(plain.as_ref() == value, "identity must not change a value");
            }
        }
        Err(e) => {
            assert!(m.is_some(), "a value without the marker failed: {e}");
            let _ = e.to_string();
        }
    }
    let object = etcdguard_kube::decode_stored(etcd_key, value, Some(config));
    assert_eq!(object.encryption.is_some(), m.is_some());
});
