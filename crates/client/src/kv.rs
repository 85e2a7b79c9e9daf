//! One read of the keyspace: what a restore drill asks the etcd it booted on a restored
//! data dir, to prove the member serves its data (a linearizable read goes through raft).

use etcd_client::GetOptions;

use crate::conn::{connect_with, Connection};
use crate::error::ClientError;
use crate::Session;

/// The first key of the keyspace (in byte order) as the server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstKey {
    /// The store's revision when it answered.
    pub header_revision: i64,
    /// `None` when the keyspace is empty.
    pub kv: Option<crate::watch::Change>,
}

impl Connection {
    /// A linearizable range over the whole keyspace with limit 1.
    pub async fn first_key(&mut self) -> Result<FirstKey, ClientError> {
        let mut kv =
            self.client.kv_client().max_decoding_message_size(crate::conn::MAX_MESSAGE_BYTES);
        let opts = GetOptions::new().with_from_key().with_limit(1);
        let resp = self.unary("reading the first key", kv.get(vec![0u8], Some(opts))).await?;
        let header_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kv = resp.kvs().first().map(|k| crate::watch::Change {
            put: true,
            key: k.key().to_vec(),
            value: k.value().to_vec(),
            create_revision: k.create_revision(),
            mod_revision: k.mod_revision(),
            version: k.version(),
            lease: k.lease(),
        });
        Ok(FirstKey { header_revision, kv })
    }
}

impl Session {
    /// [`Connection::first_key`] on `endpoint`.
    pub fn first_key(&self, endpoint: &str) -> Result<FirstKey, ClientError> {
        self.rt.block_on(async {
            let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
            conn.first_key().await
        })
    }
}
