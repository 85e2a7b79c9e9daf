//! Key files wrapped by a key management service ([`crate::kms`]).

use bytes::Bytes;

use super::*;
use crate::kms::KeyWrapper;

impl Repository {
    /// Wraps the master key with `kms` into one more key file (the repository must be
    /// unlocked); passphrases and other keys keep working. Returns the new key's id.
    pub fn add_kms_key(&self, kms: &dyn KeyWrapper) -> Result<String, RepoError> {
        self.require_encrypted()?;
        let keys = self.keys()?.expect("an encrypted repository's keys");
        let wrapped = kms.wrap(&keys.export(), &self.config.id)?;
        // Proves the service gives it back before anyone relies on it.
        let back = zeroize::Zeroizing::new(kms.unwrap(&wrapped, &self.config.id)?);
        if back[..] != keys.export()[..] {
            return Err(RepoError::Invalid(format!(
                "{}: the key service returned another key than it was given",
                kms.name()
            )));
        }
        let file = KeyFile::kms(kms.name(), &wrapped, hostname());
        let id = format!("{:016x}", rand::random::<u64>());
        self.store.put(
            &key_object(&id),
            Bytes::from(serde_json::to_vec_pretty(&file).expect("key file serializes")),
        )?;
        Ok(id)
    }

    /// Unlocks an encrypted repository with a key file `kms` wrapped (no-op for a plain one).
    pub fn unlock_with_kms(&mut self, kms: &dyn KeyWrapper) -> Result<(), RepoError> {
        if !self.is_encrypted() || self.keys.is_some() {
            return Ok(());
        }
        let name = kms.name();
        let mut last = None;
        for obj in self.store.list("keys/")? {
            let Ok(file) = serde_json::from_slice::<KeyFile>(&self.store.get(&obj.key)?) else {
                continue;
            };
            if file.kms.as_deref() != Some(name.as_str()) {
                continue;
            }
            let wrapped = crypto::unhex(&file.sealed)
                .ok_or_else(|| RepoError::Damaged(format!("{}: sealed key is not hex", obj.key)))?;
            match kms.unwrap(&wrapped, &self.config.id) {
                Ok(plain) => {
                    let plain = zeroize::Zeroizing::new(plain);
                    let keys = Keys::import(&plain).ok_or_else(|| {
                        RepoError::Damaged(format!(
                            "{}: the unwrapped key has the wrong length",
                            obj.key
                        ))
                    })?;
                    self.keys = Some(keys);
                    self.unlocked_by = key_id_of(&obj.key);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RepoError::WrongPassphrase(format!(
                "{}: no key file is wrapped by {name}",
                self.location()
            ))
        }))
    }
}
