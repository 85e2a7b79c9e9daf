//! Optional encryption of a repository's blobs, chosen when the repository is created.
//!
//! An encrypted repository has one random master key: 32 bytes that seal blobs with
//! XChaCha20-Poly1305 (random 24-byte nonce per blob, the blob id and encoding as associated
//! data, so a blob cannot be swapped for another) and 32 bytes that name blobs by
//! HMAC-SHA256 of their plain content instead of a bare sha256, so nobody holding the bucket
//! can confirm a guess of what a chunk holds. The master key is stored only wrapped, in
//! `keys/<id>.json`, under a key derived from a passphrase with Argon2id; losing every
//! passphrase loses the backups.
//!
//! Manifests (format 2) keep a public part readable (id, time, labels, cluster, etcd status,
//! sizes), so `backup list` and `backup show` work without the passphrase; the whole
//! manifest, with file names, modes, hashes and source paths, is sealed beside it, and
//! index files carry a MAC. Contents (snapshot chunks, CA keys) never leave the machine in
//! clear.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::id::{hex, Id};

/// `Config::encryption` of an encrypted repository.
pub const SCHEME: &str = "xchacha20poly1305+hmac-sha256";
/// `Config::encryption` of a plain one.
pub const NONE: &str = "none";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed blob has beyond its plain (compressed) form.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The master key of an encrypted repository (wiped from memory when dropped).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    seal: [u8; 32],
    name: [u8; 32],
    /// Manifests and index files are sealed / authenticated under this key (repository
    /// format 2). Stored inside the wrapped key, where nobody without a passphrase can
    /// change it, so a config edited back to format 1 cannot turn authentication off.
    #[zeroize(skip)]
    authenticated: bool,
}

/// Context strings: what a sealed document or a MAC is for, so one can never pass for another.
pub const MANIFEST_CONTEXT: &[u8] = b"etcdguard manifest v2\0";
pub const INDEX_CONTEXT: &[u8] = b"etcdguard index v2\0";

impl Keys {
    pub fn generate() -> Keys {
        Keys { seal: rand::random(), name: rand::random(), authenticated: true }
    }

    /// Whether manifests and index files of this repository are sealed and authenticated.
    pub fn authenticates_metadata(&self) -> bool {
        self.authenticated
    }

    /// `nonce || XChaCha20-Poly1305(seal key, plain) || tag`, bound to `aad` (a context string
    /// and, for a manifest, its backup id).
    pub fn seal_document(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encrypts any length a manifest has");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain bytes of a sealed document, or `None` when it was altered, sealed for
    /// another `aad` or under another key.
    pub fn open_document(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad }).ok()
    }

    /// HMAC-SHA256 of `context || data` under a key derived from the master key (distinct
    /// from the blob-naming key, so a MAC is never a blob id).
    pub fn mac(&self, context: &[u8], data: &[u8]) -> [u8; 32] {
        let mut derive =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.seal).expect("HMAC takes any key length");
        derive.update(b"etcdguard metadata mac key");
        let key = Zeroizing::new(<[u8; 32]>::from(derive.finalize().into_bytes()));
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
        mac.update(context);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Checks a MAC in constant time.
    pub fn verify_mac(&self, context: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let mut derive =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.seal).expect("HMAC takes any key length");
        derive.update(b"etcdguard metadata mac key");
        let key = Zeroizing::new(<[u8; 32]>::from(derive.finalize().into_bytes()));
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
        mac.update(context);
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    /// The id of a blob with this plain content.
    pub fn blob_id(&self, raw: &[u8]) -> Id {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.name).expect("HMAC takes any key length");
        mac.update(raw);
        Id(mac.finalize().into_bytes().into())
    }

    fn aad(id: &Id, encoding: u8) -> [u8; 33] {
        let mut aad = [0u8; 33];
        aad[..32].copy_from_slice(&id.0);
        aad[32] = encoding;
        aad
    }

    /// `nonce || ciphertext || tag` of `plain`, bound to the blob's id and encoding.
    pub fn seal(&self, id: &Id, encoding: u8, plain: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = Keys::aad(id, encoding);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
            .expect("XChaCha20-Poly1305 encrypts any length a blob has");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain bytes of a sealed blob, or `None` when it was altered, belongs to another
    /// id, or was sealed with another key.
    pub fn open(&self, id: &Id, encoding: u8, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let aad = Keys::aad(id, encoding);
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: &aad }).ok()
    }

    /// The wrapped form: 64 key bytes, then (format 2) one byte `2`.
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::with_capacity(65));
        b.extend_from_slice(&self.seal);
        b.extend_from_slice(&self.name);
        if self.authenticated {
            b.push(2);
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Keys> {
        let authenticated = match b.len() {
            64 => false,
            65 if b[64] == 2 => true,
            _ => return None,
        };
        let mut k = Keys { seal: [0; 32], name: [0; 32], authenticated };
        k.seal.copy_from_slice(&b[..32]);
        k.name.copy_from_slice(&b[32..64]);
        Some(k)
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(…)")
    }
}

/// A passphrase, wiped from memory when dropped and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Takes a passphrase as typed or read from a file: one trailing newline is dropped, as
    /// `echo pass > file` adds it.
    pub fn new(mut bytes: Vec<u8>) -> Passphrase {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Passphrase(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(…)")
    }
}

/// Argon2id cost of a key file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: about a quarter of a second here, per command that unlocks.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

/// `keys/<id>.json`: the master key wrapped under one passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    /// `nonce || ciphertext || tag` of the 64-byte master key, hex.
    pub sealed: String,
    pub created: DateTime<Utc>,
    pub hostname: String,
    /// A key wrapped by a key management service instead of a passphrase (`kdf` is `kms`):
    /// which one ([`crate::kms::KeyWrapper::name`]); `sealed` is what it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the passphrase does not open any key of this repository")]
    WrongPassphrase,
    #[error("key file: {0}")]
    BadKeyFile(String),
    #[error("key derivation: {0}")]
    Kdf(String),
}

fn derive(passphrase: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(out)
}

/// The id that binds a wrapped master key (there is no blob id to bind it to).
const KEY_FILE_AAD: Id = Id(*b"etcdguard repository master key!");

impl KeyFile {
    pub fn wrap(
        keys: &Keys,
        passphrase: &[u8],
        params: KdfParams,
        hostname: String,
    ) -> Result<KeyFile, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::Kdf("the passphrase is empty".into()));
        }
        let salt: [u8; 16] = rand::random();
        let kek = derive(passphrase, &salt, params)?;
        let wrapper = Keys { seal: *kek, name: [0; 32], authenticated: false };
        let sealed = wrapper.seal(&KEY_FILE_AAD, 0, &keys.to_bytes()[..]);
        Ok(KeyFile {
            kdf: "argon2id".into(),
            params,
            salt: hex(&salt),
            sealed: hex(&sealed),
            created: Utc::now(),
            hostname,
            kms: None,
        })
    }

    pub fn unwrap(&self, passphrase: &[u8]) -> Result<Keys, KeyError> {
        if self.kdf == KMS_KDF {
            return Err(KeyError::WrongPassphrase); // no passphrase opens it
        }
        if self.kdf != "argon2id" {
            return Err(KeyError::BadKeyFile(format!("unknown key derivation {:?}", self.kdf)));
        }
        let salt =
            unhex(&self.salt).ok_or_else(|| KeyError::BadKeyFile("salt is not hex".into()))?;
        let sealed = unhex(&self.sealed)
            .ok_or_else(|| KeyError::BadKeyFile("sealed key is not hex".into()))?;
        // Refuse costs that would exhaust memory before trying them (a damaged or hostile file).
        if self.params.memory_kib > 4 * 1024 * 1024
            || self.params.iterations > 64
            || self.params.parallelism > 64
        {
            return Err(KeyError::BadKeyFile(format!(
                "implausible key derivation cost {:?}",
                self.params
            )));
        }
        let kek = derive(passphrase, &salt, self.params)?;
        let wrapper = Keys { seal: *kek, name: [0; 32], authenticated: false };
        let plain = Zeroizing::new(
            wrapper.open(&KEY_FILE_AAD, 0, &sealed).ok_or(KeyError::WrongPassphrase)?,
        );
        Keys::from_bytes(&plain)
            .ok_or_else(|| KeyError::BadKeyFile("master key has the wrong length".into()))
    }
}

/// `kdf` of a key file a key management service wraps.
pub const KMS_KDF: &str = "kms";

impl KeyFile {
    /// The master key as `kms` wrapped it ([`crate::kms`]).
    pub(crate) fn kms(kms: String, wrapped: &[u8], hostname: String) -> KeyFile {
        KeyFile {
            kdf: KMS_KDF.into(),
            params: KdfParams { memory_kib: 0, iterations: 0, parallelism: 0 },
            salt: String::new(),
            sealed: hex(wrapped),
            created: Utc::now(),
            hostname,
            kms: Some(kms),
        }
    }
}

impl Keys {
    /// The master key as a key management service wraps it (wiped when dropped).
    pub(crate) fn export(&self) -> Zeroizing<Vec<u8>> {
        self.to_bytes()
    }

    pub(crate) fn import(bytes: &[u8]) -> Option<Keys> {
        Keys::from_bytes(bytes)
    }
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = Keys::generate();
        let raw = b"-----BEGIN RSA PRIVATE KEY-----".to_vec();
        let id = k.blob_id(&raw);
        assert_ne!(id, Id::of(&raw), "ids are keyed, not bare sha256");
        let sealed = k.seal(&id, 1, &raw);
        assert!(
            !sealed.windows(raw.len()).any(|w| w == raw.as_slice()),
            "plain text must not appear"
        );
        assert_eq!(k.open(&id, 1, &sealed).as_deref(), Some(raw.as_slice()));
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert_eq!(k.open(&id, 1, &flipped), None, "altered ciphertext");
        assert_eq!(k.open(&id, 0, &sealed), None, "other encoding");
        assert_eq!(k.open(&Id::of(b"other"), 1, &sealed), None, "other id");
        assert_eq!(Keys::generate().open(&id, 1, &sealed), None, "other key");
        assert_eq!(k.open(&id, 1, &sealed[..10]), None, "too short");
    }

    #[test]
    fn key_file_wraps_and_refuses_wrong_passphrase() {
        let k = Keys::generate();
        let f = KeyFile::wrap(&k, b"correct horse", cheap(), "h".into()).unwrap();
        let back = f.unwrap(b"correct horse").unwrap();
        assert_eq!(back.blob_id(b"x"), k.blob_id(b"x"));
        assert_eq!(f.unwrap(b"wrong").unwrap_err(), KeyError::WrongPassphrase);
        let json = serde_json::to_string(&f).unwrap();
        let again: KeyFile = serde_json::from_str(&json).unwrap();
        assert!(again.unwrap(b"correct horse").is_ok());
        let mut bad = f.clone();
        bad.sealed.truncate(10);
        assert!(bad.unwrap(b"correct horse").is_err());
        let mut huge = f;
        huge.params.memory_kib = u32::MAX;
        assert!(matches!(huge.unwrap(b"correct horse"), Err(KeyError::BadKeyFile(_))));
        assert!(KeyFile::wrap(&k, b"", cheap(), "h".into()).is_err());
    }
}
