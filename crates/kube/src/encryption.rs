//! Encryption at rest: the API server's `EncryptionConfiguration` and the values it writes.
//!
//! An encrypted value is `k8s:enc:<provider>:<v1|v2>:<name>:<body>`; the plaintext is the whole
//! value as it would have been stored unencrypted (protobuf envelope, JSON or CBOR). Bodies:
//! - `aescbc`: IV(16) ‖ AES-CBC ciphertext, PKCS#7 padded; no integrity check, no AAD;
//! - `aesgcm`: nonce(12) ‖ ciphertext ‖ tag(16), AES-GCM with the etcd key as AAD, so a value
//!   copied under another key does not decrypt;
//! - `secretbox`: nonce(24) ‖ tag(16) ‖ ciphertext, XSalsa20-Poly1305 (NaCl secretbox);
//! - `kms` v1/v2: a data key wrapped by an external KMS plugin — recognised and described
//!   (provider name, KMS v2 key id) but not decrypted offline.
//!
//! Key names may contain `:`, so a value is matched against the names the configuration has
//! rather than split at the next colon; without a configuration the name is the text up to
//! the next `:` (right for every name without a colon).
//!
//! ## How it works
//!
//! `encryption` loads an `EncryptionConfiguration` (YAML or JSON via `serde_norway`; keys
//! checked for base64 and size as the API server does; secrets are zeroized and never in
//! `Debug` or an error) and decrypts `k8s:enc:` values offline with RustCrypto: `aescbc`
//! (PKCS#7; a plaintext that is not an object counts as a wrong key, since CBC has no integrity
//! check), `aesgcm` (the full etcd key is the AAD, so `decrypt` takes it), `secretbox`. The
//! value names its provider and key; only keys of that provider whose `name:` prefixes the
//! value are tried (names may hold `:`), those of rules covering the key's resource first. KMS
//! v1/v2 values are described (plugin name, v2 key id) and refused with `NeedsKms`. Every
//! failure is a typed `DecryptError` for that one value; `decode_stored` folds it into the
//! `Object` (`encryption.error`) so a listing goes on. `KeyNameTally`/`key_names_used` collect
//! the (provider, key name) pairs of live encrypted values, each with one sample value for a
//! trial decryption — for the pre-restore key check. Its test vectors are made by PyPI
//! `cryptography` and `PyNaCl` (`tests/encryption_vectors/`), never by our code.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use base64::Engine;
use etcdguard_storage::keys::Revision;
use etcdguard_storage::proto::{for_each_field, Value};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ENCRYPTED_PREFIX;

/// The provider an encrypted value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ProviderKind {
    #[serde(rename = "aescbc")]
    AesCbc,
    #[serde(rename = "aesgcm")]
    AesGcm,
    #[serde(rename = "secretbox")]
    Secretbox,
    #[serde(rename = "kms-v1")]
    KmsV1,
    #[serde(rename = "kms-v2")]
    KmsV2,
}

impl ProviderKind {
    const ALL: [ProviderKind; 5] = [
        ProviderKind::AesCbc,
        ProviderKind::AesGcm,
        ProviderKind::Secretbox,
        ProviderKind::KmsV1,
        ProviderKind::KmsV2,
    ];

    /// What follows `k8s:enc:` in a value this provider wrote.
    fn marker(self) -> &'static [u8] {
        match self {
            ProviderKind::AesCbc => b"aescbc:v1:",
            ProviderKind::AesGcm => b"aesgcm:v1:",
            ProviderKind::Secretbox => b"secretbox:v1:",
            ProviderKind::KmsV1 => b"kms:v1:",
            ProviderKind::KmsV2 => b"kms:v2:",
        }
    }

    pub fn is_kms(self) -> bool {
        matches!(self, ProviderKind::KmsV1 | ProviderKind::KmsV2)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::AesCbc => "aescbc",
            ProviderKind::AesGcm => "aesgcm",
            ProviderKind::Secretbox => "secretbox",
            ProviderKind::KmsV1 => "kms v1",
            ProviderKind::KmsV2 => "kms v2",
        })
    }
}

/// Why one value could not be decrypted. Each names the provider and key so that the user
/// knows which key to look for; none holds key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("encrypted by an unknown provider {provider:?} (known: aescbc, aesgcm, secretbox, kms v1/v2); a newer API server or a damaged value")]
    UnknownProvider { provider: String },
    #[error("the {provider} value names no key (expected k8s:enc:{marker}<key name>:<data>); the value is damaged")]
    NoKeyName { provider: ProviderKind, marker: String },
    #[error("{provider} key {key_name:?} is not in the encryption config; give the EncryptionConfiguration that was in place when the value was written (after a key rotation the old key must still be listed)")]
    KeyNotInConfig { provider: ProviderKind, key_name: String },
    #[error("the {provider} value of key {key_name:?} is truncated: {len} bytes after the key name, {expected}")]
    Truncated { provider: ProviderKind, key_name: String, len: usize, expected: String },
    #[error("{provider} key {key_name:?} does not decrypt this value: {reason}")]
    Rejected { provider: ProviderKind, key_name: String, reason: String },
    #[error("encrypted with KMS ({provider}, plugin {plugin:?}{}): decrypting it needs the KMS plugin, which inspect cannot call offline", key_id.as_ref().map(|k| format!(", key id {k:?}")).unwrap_or_default())]
    NeedsKms { provider: ProviderKind, plugin: String, key_id: Option<String> },
}

impl Serialize for DecryptError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the encryption marker of a value says, without any key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub provider: ProviderKind,
    /// The key name (for KMS: the plugin's name).
    pub key_name: String,
    /// KMS v2 only: the key id the plugin reported when it wrapped the data key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// `None` when the value is not encrypted at rest; else its provider and key name, or why
/// the marker cannot be read.
pub fn marker(value: &[u8]) -> Option<Result<Marker, DecryptError>> {
    let rest = value.strip_prefix(ENCRYPTED_PREFIX)?;
    Some(marker_with(rest, None))
}

/// The provider and the text after its marker, or `UnknownProvider`.
fn provider_of(rest: &[u8]) -> Result<(ProviderKind, &[u8]), DecryptError> {
    for p in ProviderKind::ALL {
        if let Some(body) = rest.strip_prefix(p.marker()) {
            return Ok((p, body));
        }
    }
    // Show `<provider>:<version>` as far as it is text.
    let shown: Vec<u8> = rest.iter().copied().take(32).collect();
    let mut parts = shown.splitn(3, |&b| b == b':');
    let provider = [parts.next(), parts.next()]
        .into_iter()
        .flatten()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    Err(DecryptError::UnknownProvider { provider })
}

/// The key name: a configured name when one matches (names may hold `:`), else the text up to
/// the next `:`. Returns the name and the body after `name:`.
fn split_name<'a>(
    provider: ProviderKind,
    body: &'a [u8],
    configured: &[&str],
) -> Result<(String, &'a [u8]), DecryptError> {
    if let Some(name) = configured
        .iter()
        .filter(|n| body.len() > n.len() && body.starts_with(n.as_bytes()) && body[n.len()] == b':')
        .max_by_key(|n| n.len())
    {
        return Ok((name.to_string(), &body[name.len() + 1..]));
    }
    match body.iter().position(|&b| b == b':') {
        Some(i) if i > 0 => match std::str::from_utf8(&body[..i]) {
            Ok(name) => Ok((name.to_string(), &body[i + 1..])),
            Err(_) => Err(no_key_name(provider)),
        },
        _ => Err(no_key_name(provider)),
    }
}

fn no_key_name(provider: ProviderKind) -> DecryptError {
    DecryptError::NoKeyName {
        provider,
        marker: String::from_utf8_lossy(provider.marker()).into_owned(),
    }
}

fn marker_with(rest: &[u8], config: Option<&EncryptionConfig>) -> Result<Marker, DecryptError> {
    let (provider, body) = provider_of(rest)?;
    let names = config.map(|c| c.names_of(provider)).unwrap_or_default();
    let (key_name, data) = split_name(provider, body, &names)?;
    let kms_key_id = if provider == ProviderKind::KmsV2 { kms_v2_key_id(data) } else { None };
    Ok(Marker { provider, key_name, kms_key_id })
}

/// Field 2 (`keyID`) of a KMS v2 `EncryptedObject`, when the message reads.
fn kms_v2_key_id(data: &[u8]) -> Option<String> {
    let mut id = None;
    for_each_field(data, |f, v| {
        if let (2, Value::Bytes(b)) = (f, v) {
            id = std::str::from_utf8(b).ok().map(str::to_string);
        }
        Ok(())
    })
    .ok()?;
    id.filter(|i| !i.is_empty())
}

/// Errors loading an `EncryptionConfiguration`. Never include a key's secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not an EncryptionConfiguration (YAML or JSON): {0}")]
    Parse(String),
    #[error(
        "kind {0:?}: expected EncryptionConfiguration (apiVersion apiserver.config.k8s.io/v1)"
    )]
    Kind(String),
    #[error("apiVersion {0:?}: expected apiserver.config.k8s.io/v1 (or v1 for the old kind EncryptionConfig)")]
    ApiVersion(String),
    #[error("resources[{rule}].providers[{item}]: {problem}")]
    Provider { rule: usize, item: usize, problem: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    resources: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
struct RawProvider {
    aescbc: Option<RawKeys>,
    aesgcm: Option<RawKeys>,
    secretbox: Option<RawKeys>,
    kms: Option<RawKms>,
    identity: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawKeys {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKms {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    name: String,
}

/// One named key. Its secret never appears in `Debug` output.
struct Key {
    name: String,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ name: {:?}, secret: <{} bytes> }}", self.name, self.secret.len())
    }
}

#[derive(Debug)]
enum Provider {
    Keys { kind: ProviderKind, keys: Vec<Key> },
    Kms { kind: ProviderKind, name: String },
    Identity,
}

#[derive(Debug)]
struct Rule {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// A loaded `EncryptionConfiguration`: which keys can decrypt which values.
#[derive(Debug)]
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl EncryptionConfig {
    pub fn load(path: &Path) -> Result<EncryptionConfig, ConfigError> {
        let bytes =
            Zeroizing::new(std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?);
        EncryptionConfig::parse(&bytes)
    }

    /// Parses the YAML or JSON of an `EncryptionConfiguration` (or the older `EncryptionConfig`
    /// of apiVersion v1) and checks every key as the API server does at startup.
    pub fn parse(text: &[u8]) -> Result<EncryptionConfig, ConfigError> {
        let raw: RawConfig =
            serde_norway::from_slice(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        match (raw.kind.as_str(), raw.api_version.as_str()) {
            ("EncryptionConfiguration", "apiserver.config.k8s.io/v1")
            | ("EncryptionConfig", "v1") => {}
            ("EncryptionConfiguration" | "EncryptionConfig", other) => {
                return Err(ConfigError::ApiVersion(other.to_string()))
            }
            (other, _) => return Err(ConfigError::Kind(other.to_string())),
        }
        let mut rules = Vec::new();
        for (r, rule) in raw.resources.into_iter().enumerate() {
            let mut providers = Vec::new();
            for (i, p) in rule.providers.into_iter().enumerate() {
                let bad = |problem: String| ConfigError::Provider { rule: r, item: i, problem };
                let given = [
                    p.aescbc.is_some(),
                    p.aesgcm.is_some(),
                    p.secretbox.is_some(),
                    p.kms.is_some(),
                    p.identity.is_some(),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err(bad("each provider item must hold exactly one of aescbc, aesgcm, secretbox, kms, identity".into()));
                }
                let keyed = [
                    (ProviderKind::AesCbc, p.aescbc),
                    (ProviderKind::AesGcm, p.aesgcm),
                    (ProviderKind::Secretbox, p.secretbox),
                ];
                if let Some((kind, Some(raw_keys))) = keyed.into_iter().find(|(_, k)| k.is_some()) {
                    if raw_keys.keys.is_empty() {
                        return Err(bad(format!("{kind} has no keys")));
                    }
                    let mut keys = Vec::new();
                    for k in raw_keys.keys {
                        if k.name.is_empty() {
                            return Err(bad(format!("a {kind} key has no name")));
                        }
                        if keys.iter().any(|seen: &Key| seen.name == k.name) {
                            return Err(bad(format!("{kind} key name {:?} appears twice", k.name)));
                        }
                        let secret = Zeroizing::new(
                            base64::engine::general_purpose::STANDARD
                                .decode(k.secret.trim())
                                .map_err(|_| {
                                    bad(format!(
                                        "{kind} key {:?}: the secret is not base64",
                                        k.name
                                    ))
                                })?,
                        );
                        let sizes: &[usize] =
                            if kind == ProviderKind::Secretbox { &[32] } else { &[16, 24, 32] };
                        if !sizes.contains(&secret.len()) {
                            return Err(bad(format!(
                                "{kind} key {:?}: the secret is {} bytes, expected {}",
                                k.name,
                                secret.len(),
                                sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                            )));
                        }
                        keys.push(Key { name: k.name, secret });
                    }
                    providers.push(Provider::Keys { kind, keys });
                } else if let Some(kms) = p.kms {
                    let kind = match kms.api_version.as_str() {
                        "" | "v1" => ProviderKind::KmsV1,
                        "v2" => ProviderKind::KmsV2,
                        other => {
                            return Err(bad(format!("kms apiVersion {other:?}: expected v1 or v2")))
                        }
                    };
                    if kms.name.is_empty() {
                        return Err(bad("a kms provider has no name".into()));
                    }
                    providers.push(Provider::Kms { kind, name: kms.name });
                } else {
                    providers.push(Provider::Identity);
                }
            }
            rules.push(Rule { resources: rule.resources, providers });
        }
        Ok(EncryptionConfig { rules })
    }

    /// Every (provider, key name) the configuration holds, KMS plugins included.
    pub fn key_names(&self) -> Vec<(ProviderKind, String)> {
        let mut out = Vec::new();
        for p in self.rules.iter().flat_map(|r| &r.providers) {
            match p {
                Provider::Keys { kind, keys } => {
                    out.extend(keys.iter().map(|k| (*kind, k.name.clone())))
                }
                Provider::Kms { kind, name } => out.push((*kind, name.clone())),
                Provider::Identity => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn names_of(&self, provider: ProviderKind) -> Vec<&str> {
        let mut names = Vec::new();
        for p in self.rules.iter().flat_map(|r| &r.providers) {
            match p {
                Provider::Keys { kind, keys } if *kind == provider => {
                    names.extend(keys.iter().map(|k| k.name.as_str()))
                }
                Provider::Kms { kind, name } if *kind == provider => names.push(name.as_str()),
                _ => {}
            }
        }
        names
    }

    /// The marker of an encrypted value, key names resolved against this configuration.
    pub fn marker(&self, value: &[u8]) -> Option<Result<Marker, DecryptError>> {
        let rest = value.strip_prefix(ENCRYPTED_PREFIX)?;
        Some(marker_with(rest, Some(self)))
    }

    /// The keys of `provider` whose name prefixes `body`, those of rules that cover the etcd
    /// key's resource first (the API server would try those), without repeats.
    fn candidates<'s>(
        &'s self,
        provider: ProviderKind,
        etcd_key: &[u8],
        body: &[u8],
    ) -> Vec<&'s Key> {
        let resource = resource_of_key(etcd_key);
        let mut rules: Vec<&Rule> = self.rules.iter().collect();
        rules.sort_by_key(|r| {
            !r.resources.iter().any(|pattern| resource_matches(pattern, &resource))
        });
        let mut out: Vec<&Key> = Vec::new();
        for p in rules.iter().flat_map(|r| &r.providers) {
            if let Provider::Keys { kind, keys } = p {
                if *kind != provider {
                    continue;
                }
                for k in keys {
                    let fits = body.len() > k.name.len()
                        && body.starts_with(k.name.as_bytes())
                        && body[k.name.len()] == b':';
                    if fits && !out.iter().any(|o| o.name == k.name && o.secret == k.secret) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    /// The plaintext of a value read under `etcd_key` (the full key, e.g.
    /// `/registry/secrets/default/db-pass`: aesgcm authenticates it). A value that is not
    /// encrypted comes back unchanged, as the `identity` provider reads it.
    pub fn decrypt<'v>(
        &self,
        etcd_key: &[u8],
        value: &'v [u8],
    ) -> Result<Cow<'v, [u8]>, DecryptError> {
        let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) else {
            return Ok(Cow::Borrowed(value));
        };
        let m = marker_with(rest, Some(self))?;
        if m.provider.is_kms() {
            return Err(DecryptError::NeedsKms {
                provider: m.provider,
                plugin: m.key_name,
                key_id: m.kms_key_id,
            });
        }
        let (_, body) = provider_of(rest)?;
        let candidates = self.candidates(m.provider, etcd_key, body);
        if candidates.is_empty() {
            return Err(DecryptError::KeyNotInConfig {
                provider: m.provider,
                key_name: m.key_name,
            });
        }
        let mut first_error = None;
        for key in candidates {
            match open(m.provider, key, &body[key.name.len() + 1..], etcd_key) {
                Ok(plain) => return Ok(Cow::Owned(plain)),
                // Too short for the provider: no other key can do better.
                Err(e @ DecryptError::Truncated { .. }) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or(DecryptError::KeyNotInConfig { provider: m.provider, key_name: m.key_name }))
    }
}

/// Does a plaintext look like a stored Kubernetes value (protobuf envelope, JSON, CBOR)? The
/// check that makes a wrong aescbc key (whose padding happens to read well) fail.
fn looks_like_object(plain: &[u8]) -> bool {
    plain.starts_with(crate::PROTOBUF_MAGIC)
        || plain.first() == Some(&b'{')
        || plain.starts_with(&[0xd9, 0xd9, 0xf7])
}

#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; rust-version is 1.80
fn open(
    provider: ProviderKind,
    key: &Key,
    data: &[u8],
    etcd_key: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    let truncated = |expected: &str| DecryptError::Truncated {
        provider,
        key_name: key.name.clone(),
        len: data.len(),
        expected: expected.to_string(),
    };
    let rejected = |reason: &str| DecryptError::Rejected {
        provider,
        key_name: key.name.clone(),
        reason: reason.to_string(),
    };
    match provider {
        ProviderKind::AesCbc => {
            use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
            const BLOCK: usize = 16;
            if data.len() < 2 * BLOCK || data.len() % BLOCK != 0 {
                return Err(truncated("expected a 16-byte IV and whole 16-byte blocks"));
            }
            let (iv, ciphertext) = data.split_at(BLOCK);
            let mut buf = Zeroizing::new(ciphertext.to_vec());
            let unpadded = match key.secret.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key.secret, iv)
                    .ok()
                    .and_then(|d| d.decrypt_padded_mut::<Pkcs7>(&mut buf).ok().map(<[u8]>::len)),
                24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key.secret, iv)
                    .ok()
                    .and_then(|d| d.decrypt_padded_mut::<Pkcs7>(&mut buf).ok().map(<[u8]>::len)),
                _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key.secret, iv)
                    .ok()
                    .and_then(|d| d.decrypt_padded_mut::<Pkcs7>(&mut buf).ok().map(<[u8]>::len)),
            };
            let reason = "the wrong secret for this key name, or a damaged value (aescbc carries no integrity check)";
            let len = unpadded.ok_or_else(|| rejected(&format!("{reason}: bad padding")))?;
            if !looks_like_object(&buf[..len]) {
                return Err(rejected(&format!(
                    "{reason}: the plaintext is not a Kubernetes object"
                )));
            }
            Ok(buf[..len].to_vec())
        }
        ProviderKind::AesGcm => {
            use aes_gcm::aead::generic_array::GenericArray;
            const NONCE: usize = 12;
            const TAG: usize = 16;
            if data.len() < NONCE + TAG {
                return Err(truncated(
                    "expected a 12-byte nonce, the ciphertext and a 16-byte tag",
                ));
            }
            let (nonce, rest) = data.split_at(NONCE);
            let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
            let mut buf = ciphertext.to_vec();
            let (nonce, tag) = (GenericArray::from_slice(nonce), GenericArray::from_slice(tag));
            let ok = match key.secret.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(&key.secret)
                    .ok()
                    .map(|c| c.decrypt_in_place_detached(nonce, etcd_key, &mut buf, tag)),
                24 => aes_gcm::AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(
                    &key.secret,
                )
                .ok()
                .map(|c| c.decrypt_in_place_detached(nonce, etcd_key, &mut buf, tag)),
                _ => aes_gcm::Aes256Gcm::new_from_slice(&key.secret)
                    .ok()
                    .map(|c| c.decrypt_in_place_detached(nonce, etcd_key, &mut buf, tag)),
            };
            match ok {
                Some(Ok(())) => Ok(buf),
                _ => Err(rejected(&format!(
                    "authentication failed: the wrong secret for this key name, a damaged value, or a value written under another etcd key than {:?} (aesgcm binds each value to its key)",
                    String::from_utf8_lossy(etcd_key)
                ))),
            }
        }
        ProviderKind::Secretbox => {
            use crypto_secretbox::aead::generic_array::GenericArray;
            const NONCE: usize = 24;
            const TAG: usize = 16;
            if data.len() < NONCE + TAG {
                return Err(truncated(
                    "expected a 24-byte nonce, a 16-byte tag and the ciphertext",
                ));
            }
            let (nonce, rest) = data.split_at(NONCE);
            let (tag, ciphertext) = rest.split_at(TAG);
            let mut buf = ciphertext.to_vec();
            let ok =
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(&key.secret).ok().map(|c| {
                    c.decrypt_in_place_detached(
                        GenericArray::from_slice(nonce),
                        b"",
                        &mut buf,
                        GenericArray::from_slice(tag),
                    )
                });
            match ok {
                Some(Ok(())) => Ok(buf),
                _ => Err(rejected(
                    "authentication failed: the wrong secret for this key name, or a damaged value",
                )),
            }
        }
        ProviderKind::KmsV1 | ProviderKind::KmsV2 => {
            Err(DecryptError::NeedsKms { provider, plugin: key.name.clone(), key_id: None })
        }
    }
}

/// `resource` or `resource.group` of a key, as EncryptionConfiguration rules name them. Built-in
/// keys carry no group; they match `resource`, `resource.<any group>` and wildcards by resource.
fn resource_of_key(etcd_key: &[u8]) -> String {
    let key = String::from_utf8_lossy(etcd_key);
    let mut parts = key.trim_start_matches('/').split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some(group), Some(resource)) if group.contains('.') => format!("{resource}.{group}"),
        (Some("minions"), _) => "nodes".into(),
        (Some("controllers"), _) => "replicationcontrollers".into(),
        (Some("ingress"), _) => "ingresses".into(),
        (Some("services"), Some("endpoints")) => "endpoints".into(),
        (Some(resource), _) => resource.to_string(),
        _ => String::new(),
    }
}

fn resource_matches(pattern: &str, resource: &str) -> bool {
    let (r_name, r_group) = resource.split_once('.').unwrap_or((resource, ""));
    match pattern.split_once('.') {
        None => pattern == r_name,
        Some(("*", "*")) => true,
        Some(("*", group)) => group == r_group || r_group.is_empty(),
        Some((name, _)) => name == r_name,
    }
}

/// One key name used by live encrypted values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUse {
    pub provider: ProviderKind,
    pub key_name: String,
    /// Live keys whose newest value names this key.
    pub values: u64,
    /// One value written with this key and the etcd key it was written under, for a trial
    /// decryption (the newest seen; it may since have been overwritten, and still tests the key).
    #[serde(skip)]
    pub sample: (Vec<u8>, Vec<u8>),
}

/// Tallies, over a walk of the `key` bucket in revision order, the key names that live
/// encrypted values use. Feed it every revision, then call [`KeyNameTally::finish`].
#[derive(Default)]
pub struct KeyNameTally {
    live: HashMap<Vec<u8>, (ProviderKind, String)>,
    samples: BTreeMap<(ProviderKind, String), (Vec<u8>, Vec<u8>)>,
    unreadable: u64,
}

impl KeyNameTally {
    pub fn observe(&mut self, r: &Revision<'_>) {
        if r.tombstone {
            self.live.remove(r.kv.key);
            return;
        }
        match marker(r.kv.value) {
            Some(Ok(m)) => {
                let id = (m.provider, m.key_name);
                self.samples.insert(id.clone(), (r.kv.key.to_vec(), r.kv.value.to_vec()));
                self.live.insert(r.kv.key.to_vec(), id);
            }
            Some(Err(_)) => {
                self.unreadable += 1;
                self.live.remove(r.kv.key);
            }
            None => {
                self.live.remove(r.kv.key);
            }
        }
    }

    /// The key names in use, sorted, and how many values had a marker that does not read.
    pub fn finish(self) -> (Vec<KeyUse>, u64) {
        let mut counts: BTreeMap<(ProviderKind, String), u64> = BTreeMap::new();
        for id in self.live.into_values() {
            *counts.entry(id).or_default() += 1;
        }
        let mut samples = self.samples;
        let uses = counts
            .into_iter()
            .map(|(id, values)| {
                let sample = samples.remove(&id).unwrap_or_default();
                KeyUse { provider: id.0, key_name: id.1, values, sample }
            })
            .collect();
        (uses, self.unreadable)
    }
}

/// The (provider, key name) pairs the live encrypted values of a snapshot use — what a restore
/// must have keys for — and the count of values whose marker does not read.
pub fn key_names_used(
    db: &etcdguard_bolt::Db<'_>,
    release: Option<&dyn Fn()>,
) -> Result<(Vec<KeyUse>, u64), String> {
    let mut tally = KeyNameTally::default();
    etcdguard_storage::keys::for_each_revision(db, release, &mut |r| tally.observe(&r))?;
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
kind: EncryptionConfiguration
apiVersion: apiserver.config.k8s.io/v1
resources:
  - resources: [secrets]
    providers:
      - aesgcm: {keys: [{name: "k:colon", secret: "AAECAwQFBgcICQoLDA0ODw=="}]}
      - kms: {apiVersion: v2, name: vault, endpoint: unix:///kms.sock}
      - identity: {}
"#;

    #[test]
    fn config_and_markers() {
        let c = EncryptionConfig::parse(CONFIG.as_bytes()).unwrap();
        assert_eq!(
            c.key_names(),
            vec![
                (ProviderKind::AesGcm, "k:colon".to_string()),
                (ProviderKind::KmsV2, "vault".to_string())
            ]
        );
        assert!(!format!("{c:?}").contains("AAECAwQ"), "Debug shows a secret");
        // A configured name with a colon is matched whole; without the config, up to the colon.
        let v = b"k8s:enc:aesgcm:v1:k:colon:rest";
        assert_eq!(c.marker(v).unwrap().unwrap().key_name, "k:colon");
        assert_eq!(marker(v).unwrap().unwrap().key_name, "k");
        assert!(marker(b"k8s\0abc").is_none());
        assert_eq!(
            marker(b"k8s:enc:rot13:v1:x:y").unwrap(),
            Err(DecryptError::UnknownProvider { provider: "rot13:v1".into() })
        );
        assert!(matches!(marker(b"k8s:enc:aescbc:v1:"), Some(Err(DecryptError::NoKeyName { .. }))));
        // KMS v2: plugin name and the key id from the EncryptedObject (field 2).
        let kms = b"k8s:enc:kms:v2:vault:\x0a\x03abc\x12\x05key-7";
        let err = c.decrypt(b"/registry/secrets/a/b", kms).unwrap_err();
        assert_eq!(
            err,
            DecryptError::NeedsKms {
                provider: ProviderKind::KmsV2,
                plugin: "vault".into(),
                key_id: Some("key-7".into())
            }
        );
        assert!(err.to_string().contains("needs the KMS plugin"), "{err}");
        assert_eq!(c.decrypt(b"/k", b"{}").unwrap(), Cow::Borrowed(b"{}"));
        assert!(matches!(
            c.decrypt(b"/k", b"k8s:enc:aesgcm:v1:other:xxxx"),
            Err(DecryptError::KeyNotInConfig { .. })
        ));
        assert!(matches!(
            c.decrypt(b"/k", b"k8s:enc:aesgcm:v1:k:colon:short"),
            Err(DecryptError::Truncated { .. })
        ));
    }

    #[test]
    fn config_errors() {
        let bad = |t: &str| EncryptionConfig::parse(t.as_bytes()).unwrap_err().to_string();
        assert!(bad("kind: Pod\napiVersion: v1\n").contains("expected EncryptionConfiguration"));
        assert!(bad("kind: EncryptionConfiguration\napiVersion: v2\n").contains("apiVersion"));
        let head = "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n";
        assert!(bad(&format!("{head}  - aescbc: {{keys: [{{name: a, secret: 'AAAA'}}]}}\n"))
            .contains("3 bytes"));
        assert!(bad(&format!(
            "{head}  - secretbox: {{keys: [{{name: a, secret: 'AAECAwQFBgcICQoLDA0ODw=='}}]}}\n"
        ))
        .contains("expected 32"));
        assert!(bad(&format!("{head}  - aescbc: {{keys: [{{name: a, secret: '%%%'}}]}}\n"))
            .contains("not base64"));
        assert!(bad(&format!("{head}  - aescbc: {{keys: []}}\n    identity: {{}}\n"))
            .contains("exactly one"));
        let e = bad(&format!(
            "{head}  - aesgcm: {{keys: [{{name: a, secret: 'c2VjcmV0LXNlY3JldC1zZWNyZXQ='}}]}}\n"
        ));
        assert!(
            !e.contains("c2VjcmV0") && !e.contains("secret-secret"),
            "an error shows the secret: {e}"
        );
        // The old kind and apiVersion, and JSON.
        EncryptionConfig::parse(br#"{"kind":"EncryptionConfig","apiVersion":"v1","resources":[{"resources":["secrets"],"providers":[{"identity":{}}]}]}"#).unwrap();
    }

    #[test]
    fn key_names_of_live_values() {
        use etcdguard_storage::proto::KeyValue;
        let mut tally = KeyNameTally::default();
        let mut rev = 0;
        let mut step = |t: &mut KeyNameTally, key: &[u8], value: &[u8], tombstone: bool| {
            rev += 1;
            t.observe(&Revision {
                main: rev,
                sub: 0,
                tombstone,
                kv: KeyValue {
                    key,
                    create_revision: 1,
                    mod_revision: rev,
                    version: 1,
                    value,
                    lease: 0,
                },
            });
        };
        // A rotation: /a moves from old to new; /b keeps old then is deleted; /c keeps old.
        step(&mut tally, b"/a", b"k8s:enc:aesgcm:v1:old:xxxx", false);
        step(&mut tally, b"/b", b"k8s:enc:aesgcm:v1:old:yyyy", false);
        step(&mut tally, b"/c", b"k8s:enc:aesgcm:v1:old:zzzz", false);
        step(&mut tally, b"/a", b"k8s:enc:aesgcm:v1:new:xxxx", false);
        step(&mut tally, b"/b", b"", true);
        step(&mut tally, b"/d", b"k8s:enc:secretbox:v1:gone:1", false);
        step(&mut tally, b"/d", b"{\"plain\":1}", false);
        step(&mut tally, b"/e", b"k8s:enc:aescbc:v1:", false);
        let (uses, unreadable) = tally.finish();
        let names: Vec<_> =
            uses.iter().map(|u| (u.provider, u.key_name.as_str(), u.values)).collect();
        assert_eq!(names, vec![(ProviderKind::AesGcm, "new", 1), (ProviderKind::AesGcm, "old", 1)]);
        assert_eq!(unreadable, 1);
        // The sample of "old" is the newest value written with it (here /c), with its etcd key.
        assert_eq!(uses[1].sample, (b"/c".to_vec(), b"k8s:enc:aesgcm:v1:old:zzzz".to_vec()));
    }

    #[test]
    fn resources_of_keys() {
        assert_eq!(resource_of_key(b"/registry/secrets/default/a"), "secrets");
        assert_eq!(resource_of_key(b"/registry/example.com/widgets/ns/w"), "widgets.example.com");
        assert_eq!(resource_of_key(b"/registry/minions/n1"), "nodes");
        assert!(
            resource_matches("secrets", "secrets")
                && resource_matches("*.*", "x")
                && resource_matches("*.example.com", "widgets.example.com")
        );
        assert!(
            !resource_matches("configmaps", "secrets")
                && !resource_matches("*.apps", "widgets.example.com")
        );
    }
}
