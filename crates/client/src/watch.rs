//! Following every change of the keyspace from a revision on (continuous capture).
//!
//! One watch on the whole keyspace from `start_revision`; the server sends the changes of
//! each revision together and in order (one Txn's changes share a revision), so the caller
//! sees a gap-free sequence. A watch that starts below the compaction point is refused by
//! the server with the compaction revision: that is [`ClientError::Compacted`], and the only
//! way on is a new full snapshot. Progress requests at a fixed interval give the store's
//! current revision while nothing changes, so the caller knows how far it is caught up.

use std::ops::ControlFlow;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

use crate::conn::Connection;
use crate::error::ClientError;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// A put (false: a delete).
    pub put: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    /// The revision of the change (for a delete, the deletion's).
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// What the watch reports to the caller.
#[derive(Debug)]
pub enum WatchUpdate {
    /// Changes, oldest first; `header_revision` is the store's revision when they were sent.
    Changes { changes: Vec<Change>, header_revision: i64 },
    /// Nothing changed up to `header_revision` (answer to a progress request).
    Progress { header_revision: i64 },
    /// Time passed without a message (every `tick`): a chance to flush or to stop.
    Tick,
}

impl Connection {
    /// Watches every key from `start_revision` and hands each update to `f` until `f` breaks
    /// or the watch fails. `tick` paces progress requests and [`WatchUpdate::Tick`]s.
    pub async fn follow(
        &mut self,
        start_revision: i64,
        tick: Duration,
        f: &mut dyn FnMut(WatchUpdate) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let (mut watcher, mut stream) = self
            .unary("starting a watch", self.client.clone().watch(vec![0u8], Some(options)))
            .await?
            .split();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(ClientError::Unreachable { endpoint: self.endpoint.clone(), detail: "the watch stream ended".into() }),
                        Err(e) => return Err(self.classify(e)),
                    };
                    if response.compact_revision() > 0 {
                        return Err(ClientError::Compacted {
                            endpoint: self.endpoint.clone(),
                            requested: start_revision,
                            compact_revision: response.compact_revision(),
                        });
                    }
                    if response.canceled() {
                        return Err(ClientError::Server {
                            endpoint: self.endpoint.clone(),
                            detail: format!("the watch was canceled: {}", response.cancel_reason()),
                        });
                    }
                    let header_revision = response.header().map_or(0, |h| h.revision());
                    let changes: Vec<Change> = response
                        .events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            Some(Change {
                                put: e.event_type() == EventType::Put,
                                key: kv.key().to_vec(),
                                value: kv.value().to_vec(),
                                create_revision: kv.create_revision(),
                                mod_revision: kv.mod_revision(),
                                version: kv.version(),
                                lease: kv.lease(),
                            })
                        })
                        .collect();
                    let update = if changes.is_empty() {
                        if response.created() { continue; }
                        WatchUpdate::Progress { header_revision }
                    } else {
                        WatchUpdate::Changes { changes, header_revision }
                    };
                    if f(update).is_break() {
                        return Ok(());
                    }
                }
                _ = ticker.tick() => {
                    // A progress request is answered once the watcher has sent everything up
                    // to the current revision; ignore a failure here, the stream reports it.
                    let _ = watcher.request_progress().await;
                    if f(WatchUpdate::Tick).is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl Connection {
    /// Every lease the server holds, with its granted TTL. `known` supplies TTLs already
    /// asked for (a lease's granted TTL never changes), so only new leases cost a call.
    pub async fn leases(
        &mut self,
        known: &std::collections::HashMap<i64, i64>,
    ) -> Result<Vec<(i64, i64)>, ClientError> {
        let listed = self.unary("listing leases", self.client.clone().leases()).await?;
        let mut out = Vec::with_capacity(listed.leases().len());
        for l in listed.leases() {
            let id = l.id();
            let ttl = match known.get(&id) {
                Some(&ttl) => ttl,
                None => {
                    let t = self
                        .unary("reading a lease", self.client.clone().lease_time_to_live(id, None))
                        .await?;
                    if t.ttl() < 0 {
                        continue; // expired between the list and the question
                    }
                    t.granted_ttl()
                }
            };
            out.push((id, ttl));
        }
        out.sort();
        Ok(out)
    }
}
