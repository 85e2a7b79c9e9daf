//! One key of a snapshot as `inspect get` shows it: its newest value, decrypted and rendered
//! as the object kubectl would print, with the etcd facts kept apart.

use etcdguard_bolt::Db;
use serde::Serialize;

use crate::encryption::{DecryptError, EncryptionConfig};
use crate::render::{plain_value, render, RenderError, RenderOptions, Rendered};
use crate::{Encoding, PROTOBUF_MAGIC};

/// The newest revision of one key.
#[derive(Debug, Clone)]
pub struct StoredValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
}

/// The newest value of `key` in `db`, `None` when the key is absent or deleted.
pub fn newest_value(
    db: &Db<'_>,
    key: &[u8],
    release: Option<&dyn Fn()>,
) -> Result<Option<StoredValue>, String> {
    let mut found = None;
    etcdguard_storage::keys::for_each_revision(db, release, &mut |r| {
        if r.kv.key != key {
            return;
        }
        found = (!r.tombstone).then(|| StoredValue {
            key: key.to_vec(),
            create_revision: r.kv.create_revision,
            mod_revision: r.kv.mod_revision,
            version: r.kv.version,
            value: r.kv.value.to_vec(),
        });
    })?;
    Ok(found)
}

/// What etcd knows about a value, shown only on request (`-o wide`, `--with-etcd-info`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdInfo {
    pub key: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// `protobuf`, `json`, `cbor` or `other`, plus `encrypted (provider:key)` when it was.
    pub encoding: String,
    /// Bytes as stored (encrypted, when it is).
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("{0}")]
    Decrypt(DecryptError),
    #[error("encrypted at rest ({provider}, key {key_name:?}); give the API server's EncryptionConfiguration with --encryption-config FILE, or use -o raw for the stored bytes")]
    NeedsKeys { provider: String, key_name: String },
    #[error("{0}")]
    Render(RenderError),
}

/// `stored` decrypted (with `config`) and rendered; `metadata.resourceVersion` is its mod
/// revision, as the API server shows it.
pub fn get_object(
    stored: &StoredValue,
    config: Option<&EncryptionConfig>,
    opts: &RenderOptions,
) -> Result<(Rendered, EtcdInfo), GetError> {
    let marker = match config {
        Some(c) => c.marker(&stored.value),
        None => crate::encryption::marker(&stored.value),
    };
    if config.is_none() {
        if let Some(m) = &marker {
            let (provider, key_name) = match m {
                Ok(m) => (m.provider.to_string(), m.key_name.clone()),
                Err(e) => return Err(GetError::Decrypt(e.clone())),
            };
            return Err(GetError::NeedsKeys { provider, key_name });
        }
    }
    let plain = plain_value(&stored.key, &stored.value, config).map_err(GetError::Decrypt)?;
    let info = etcd_info(
        stored,
        &plain,
        marker.and_then(Result::ok).map(|m| format!("{}:{}", m.provider, m.key_name)),
    );
    let rendered = render(&plain, Some(stored.mod_revision), opts).map_err(GetError::Render)?;
    Ok((rendered, info))
}

fn etcd_info(stored: &StoredValue, plain: &[u8], encrypted: Option<String>) -> EtcdInfo {
    let base = if plain.starts_with(PROTOBUF_MAGIC) {
        "protobuf"
    } else if plain.starts_with(&[0xd9, 0xd9, 0xf7]) {
        "cbor"
    } else if crate::decode(plain).encoding == Encoding::Json {
        "json"
    } else {
        "other"
    };
    EtcdInfo {
        key: String::from_utf8_lossy(&stored.key).into_owned(),
        create_revision: stored.create_revision,
        mod_revision: stored.mod_revision,
        version: stored.version,
        encoding: match encrypted {
            Some(m) => format!("{base}, encrypted ({m})"),
            None => base.to_string(),
        },
        size: stored.value.len(),
    }
}
