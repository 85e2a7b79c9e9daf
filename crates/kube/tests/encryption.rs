//! Decryption checked against values encrypted by independent implementations: PyPI
//! `cryptography` and `PyNaCl` (`tests/encryption_vectors/make_vectors.py`, run afresh each
//! time with new random keys and nonces) in the layouts the kube-apiserver writes.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use etcdguard_kube::encryption::{marker, DecryptError, EncryptionConfig, ProviderKind};
use etcdguard_kube::{decode, Encoding};

#[test]
fn independent_vectors_decrypt_or_fail_as_expected() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("python3")
        .arg(here.join("encryption_vectors/make_vectors.py"))
        .arg(here.join("fixtures"))
        .arg(out.path())
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "make_vectors.py failed (needs PyPI cryptography and PyNaCl: bash .ci/install-deps): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let config = EncryptionConfig::load(&out.path().join("config.yaml")).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("vectors.json")).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let expect = c["expect"].as_str().unwrap();
        let etcd_key = c["etcdKey"].as_str().unwrap().as_bytes();
        let value = b64.decode(c["value"].as_str().unwrap()).unwrap();
        let plaintext =
            std::fs::read(here.join("fixtures").join(c["plaintext"].as_str().unwrap())).unwrap();
        *seen.entry(expect.to_string()).or_default() += 1;
        // Without keys the value is still named: encrypted, its provider and its key name.
        if let Encoding::Encrypted(p) = decode(&value).encoding {
            let shown = c["provider"].as_str().unwrap();
            assert!(shown.is_empty() || shown.starts_with(&p), "{name}: provider {p}");
        } else {
            panic!("{name}: not seen as encrypted");
        }
        let result = config.decrypt(etcd_key, &value);
        match expect {
            "ok" => {
                let plain = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(plain.as_ref() == plaintext.as_slice(), "{name}: plaintext differs");
                assert_eq!(
                    decode(&plain).kind,
                    if c["plaintext"] == "core.v1.Secret.pb" { "Secret" } else { "ConfigMap" }
                );
                assert_eq!(
                    config.marker(&value).unwrap().unwrap().key_name,
                    c["keyName"].as_str().unwrap(),
                    "{name}"
                );
            }
            "garbled" => {
                let plain = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(
                    plain.as_ref() != plaintext.as_slice(),
                    "{name}: a flipped bit changed nothing"
                );
            }
            "rejected" => {
                let e = result.err().unwrap_or_else(|| panic!("{name}: decrypted"));
                assert!(matches!(e, DecryptError::Rejected { .. }), "{name}: {e:?}");
                let text = e.to_string();
                assert!(
                    text.contains(c["keyName"].as_str().unwrap())
                        && text.contains("does not decrypt"),
                    "{name}: {text}"
                );
            }
            "truncated" => {
                let e = result.err().unwrap_or_else(|| panic!("{name}: decrypted"));
                assert!(matches!(e, DecryptError::Truncated { .. }), "{name}: {e:?}");
                assert!(e.to_string().contains("truncated"), "{name}: {e}");
            }
            "keyNotInConfig" => {
                let e = result.unwrap_err();
                assert_eq!(
                    e,
                    DecryptError::KeyNotInConfig {
                        provider: ProviderKind::Secretbox,
                        key_name: "retired".into()
                    },
                    "{name}"
                );
                assert!(e.to_string().contains("not in the encryption config"), "{e}");
            }
            "noKeyName" => {
                assert!(matches!(result, Err(DecryptError::NoKeyName { .. })), "{name}: {result:?}")
            }
            "unknownProvider" => assert_eq!(
                result.unwrap_err(),
                DecryptError::UnknownProvider { provider: "aesxts:v1".into() },
                "{name}"
            ),
            "needsKms" => {
                let e = result.unwrap_err();
                let DecryptError::NeedsKms { plugin, key_id, .. } = &e else {
                    panic!("{name}: {e:?}")
                };
                assert_eq!(plugin, c["keyName"].as_str().unwrap());
                if c["provider"] == "kms-v2" {
                    assert_eq!(key_id.as_deref(), Some("key-id-2026"));
                    assert_eq!(
                        marker(&value).unwrap().unwrap().kms_key_id.as_deref(),
                        Some("key-id-2026")
                    );
                }
                assert!(e.to_string().contains("needs the KMS plugin"), "{e}");
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
    // Every kind of case is there (the script did not silently shrink): 5 keys × 2 objects,
    // plus the 3 keys without AAD whose values still read under another etcd key.
    assert_eq!(seen.get("ok"), Some(&(5 * 2 + 3 * 2)), "{seen:?}");
    for kind in [
        "rejected",
        "truncated",
        "garbled",
        "keyNotInConfig",
        "noKeyName",
        "unknownProvider",
        "needsKms",
    ] {
        assert!(seen.contains_key(kind), "no {kind} case: {seen:?}");
    }
}

/// A 32-byte AES key given where the config lists it under another provider's name does not
/// help: the value names its provider, and only keys of that provider are tried.
#[test]
fn keys_are_tried_only_for_their_provider() {
    let cfg = "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: ['*.*']\n  providers:\n  - aescbc: {keys: [{name: k, secret: 'MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY='}]}\n";
    let c = EncryptionConfig::parse(cfg.as_bytes()).unwrap();
    let e = c
        .decrypt(
            b"/registry/secrets/a/b",
            &[b"k8s:enc:secretbox:v1:k:".as_slice(), &[0u8; 64]].concat(),
        )
        .unwrap_err();
    assert_eq!(
        e,
        DecryptError::KeyNotInConfig { provider: ProviderKind::Secretbox, key_name: "k".into() }
    );
}
