//! etcdguard's client for live etcd (v3 gRPC API, etcd 3.4 – 3.7).
//!
//! - [`ConnectConfig`]: endpoints, TLS files, user, timeouts — flags first, then `ETCDCTL_*`
//!   environment variables, then etcdctl's defaults.
//! - [`Session`]: a small runtime plus the connection settings; blocking methods for the CLI:
//!   status of every endpoint ([`Session::probe_all`]), health, member list, and
//!   [`Session::save`], which streams a snapshot to a file (`FILE.part`, 0600, fsync, rename)
//!   or to stdout while checking the server's sha256 trailer.
//! - [`election::Election`]: campaign for leadership among several agents (etcd's election API,
//!   a lease kept alive by the handle's own thread); `is_leader()` before acting.
//! - Member replacement with guards ([`Session::member_remove`], [`Session::member_add`],
//!   [`Session::member_promote`]; the pure checks [`check_remove`], [`check_add`],
//!   [`check_promote`]) and maintenance ([`Session::defrag`], [`Session::alarms`]).
//! - [`choose_member`]: which member to snapshot (a caught-up follower unless told otherwise).
//! - [`Session::cluster_hash_kv`]: `Maintenance.HashKV` on every member at one revision, and
//!   [`agreement`] over the answers (the check etcd's corruption detection makes).
//!
//! Nothing here prints; errors are [`ClientError`]s with an [`ErrorKind`] for exit codes.
//!
//! ## How it works
//!
//! Everything that talks to a running etcd (3.4 – 3.7), on `etcd-client` (tonic, rustls with
//! ring; `protoc` is needed at build time). `config` resolves connection settings the way
//! etcdctl does: flags, then `ETCDCTL_*` variables, then etcdctl's defaults (Go duration
//! syntax, `--user name:password`; the password is a `Secret` that never prints), and after the
//! variables what `--etcd-secrets-dir` (mounted Secret file names) and `--etcd-manifest` hold
//! (read with `crates/node`'s manifest parser, `pods::read_etcd_client_access`), with a note
//! per value saying where it came from. `conn` opens one connection per endpoint with large
//! HTTP/2 windows (the server never waits for window updates while streaming), eager connect
//! within `--dial-timeout`, and turns tonic/rustls/io errors into `ClientError`s whose
//! `ErrorKind` the CLI maps to exit codes (unknown issuer, rejected client certificate, key not
//! matching the certificate, connection refused …). `cluster` has endpoint status/health, the
//! member list, and `choose_member`, a pure function that picks the member to snapshot (a
//! healthy follower with the highest applied index unless `--snapshot-from` says otherwise) and
//! says why. `snapshot` streams `Maintenance.Snapshot` into any `Write`, hashing all but the
//! last 32 bytes seen (`TrailerHasher`) so the trailer is checked however the stream is cut,
//! with a stall timeout and SIGINT/SIGTERM handling; `PartFile` writes `FILE.part` (0600),
//! fsyncs, renames, and removes the part file on drop unless committed. `Session` wraps a
//! single-threaded tokio runtime and is all the CLI uses. `members` has the guarded cluster
//! changes: pure checks over the member list plus each member's own status (`check_remove`:
//! quorum now, healthy voters after the removal against the smaller cluster's quorum, not a
//! healthy member unless forced; `check_add`; `check_promote`: the learner answers and is
//! within 1000 applied entries of the leader; `defrag_order`: followers first, leader last),
//! and the `Session` methods that run a check on a fresh member list before calling etcd
//! (defrag checks every member's health before the next one). `hashkv` asks
//! `Maintenance.HashKV` on every client URL of every member (`--rev`, or each member's current
//! revision, asked again at the smallest when they differ) and `agreement` compares the
//! answers: equal revision ranges (compaction..hash revision) and equal hashes, or which
//! members differ. `watch` follows every change of the keyspace from a revision
//! (`Session::follow`: one watch, progress requests on a tick, `ErrCompacted` as its own error)
//! and lists the leases with their granted TTLs, for continuous capture. `election` is leader
//! election for agents on etcd's election API. A `Session` cannot host it (its runtime only
//! runs while a blocking call is in progress), so `Election::start` spawns one thread with its
//! own current-thread runtime that owns the connection, grants a lease (TTL 15 s by default),
//! keeps it alive every TTL/3, campaigns, confirms the leader key is ours and watches it; on
//! any doubt it steps down, revokes the lease when it can, and campaigns again. `is_leader()`
//! is computed in the caller's thread from the last answered keepalive's send time + TTL − a
//! margin, a bound etcd's own expiry cannot beat, so two campaigners never both believe they
//! lead; drop or `shutdown()` resigns.

mod cluster;
mod config;
mod conn;
pub mod election;
mod error;
mod hashkv;
mod kv;
mod members;
mod snapshot;
mod watch;

use std::io::Write;
use std::ops::ControlFlow;

pub use cluster::{
    all_failed, choose_member, Choice, Health, Member, MemberStatus, Probe, SnapshotFrom,
    MAX_FOLLOWER_LAG,
};
pub use config::{
    normalize_endpoint, parse_go_duration, ConnectConfig, ConnectFlags, Secret, ENV_VARS,
};
pub use conn::{connect, Connection, MAX_MESSAGE_BYTES};
pub use error::{ClientError, ErrorKind};
pub use hashkv::{agreement, Agreement, ClusterHashes, KvHash};
pub use members::{
    check_add, check_promote, check_remove, defrag_order, parse_member_id, AddPlan, Added, Alarm,
    Defragmented, PromotePlan, RemovePlan, PROMOTE_MAX_LAG,
};
pub use snapshot::{
    stream_snapshot, Destination, NoProgress, PartFile, Progress, SnapshotSummary, TrailerHasher,
    TrailerVerdict,
};

pub use kv::FirstKey;
pub use watch::{Change, WatchUpdate};

use conn::{connect_with, TlsMaterial};

/// Connection settings plus a single-threaded runtime; every method blocks.
pub struct Session {
    rt: tokio::runtime::Runtime,
    cfg: ConnectConfig,
    tls: Option<TlsMaterial>,
}

/// `cluster members`: the list as one endpoint knows it and each member's own status.
#[derive(Debug)]
pub struct MembersReport {
    /// The endpoint that answered the member list.
    pub from: String,
    pub members: Vec<Member>,
    /// One entry per member, same order: its status asked on its first client URL.
    pub statuses: Vec<Result<MemberStatus, ClientError>>,
}

impl Session {
    /// Reads the TLS files now, so a wrong path is reported before anything is contacted.
    pub fn new(cfg: ConnectConfig) -> Result<Session, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        let tls = TlsMaterial::load(&cfg)?;
        Ok(Session { rt, cfg, tls })
    }

    pub fn config(&self) -> &ConnectConfig {
        &self.cfg
    }

    /// Status of each of `endpoints` (all at once; each bounded by the dial and command timeouts).
    pub fn probe(&self, endpoints: &[String]) -> Vec<Probe> {
        let results = self.for_each(endpoints, |mut conn| async move { conn.status().await });
        endpoints
            .iter()
            .zip(results)
            .map(|(e, (result, _))| Probe { endpoint: e.clone(), result })
            .collect()
    }

    /// Status of every configured endpoint.
    pub fn probe_all(&self) -> Vec<Probe> {
        self.probe(&self.cfg.endpoints.clone())
    }

    /// Health of each of `endpoints`.
    pub fn health(&self, endpoints: &[String]) -> Vec<Health> {
        let results = self.for_each(endpoints, |mut conn| async move { conn.health().await });
        endpoints
            .iter()
            .zip(results)
            .map(|(e, (result, took))| Health { endpoint: e.clone(), took, result })
            .collect()
    }

    /// The member list from the first endpoint that answers, and every member's status.
    pub fn members(&self) -> Result<MembersReport, ClientError> {
        let (from, members) = self.member_list()?;
        let urls: Vec<String> = members
            .iter()
            .map(|m| {
                m.client_urls
                    .first()
                    .map(|u| {
                        normalize_endpoint(u, self.tls.is_some()).unwrap_or_else(|_| u.clone())
                    })
                    .unwrap_or_default()
            })
            .collect();
        let statuses = self
            .probe(&urls)
            .into_iter()
            .zip(&members)
            .map(|(p, m)| {
                if p.endpoint.is_empty() {
                    Err(ClientError::Unreachable {
                        endpoint: format!("member {:x}", m.id),
                        detail: "no client URL (not started yet?)".into(),
                    })
                } else {
                    p.result
                }
            })
            .collect();
        Ok(MembersReport { from, members, statuses })
    }

    /// The member list from the first configured endpoint that answers.
    fn member_list(&self) -> Result<(String, Vec<Member>), ClientError> {
        let mut failures = Vec::new();
        for endpoint in &self.cfg.endpoints {
            let r = self.rt.block_on(async {
                let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
                conn.members().await
            });
            match r {
                Ok(members) => return Ok((endpoint.clone(), members)),
                Err(e) => failures.push(Probe { endpoint: endpoint.clone(), result: Err(e) }),
            }
        }
        Err(all_failed(&failures))
    }

    /// `HashKV` at `revision` (`None`: each member's current one) on every client URL of every
    /// member, as `etcdctl endpoint hashkv --cluster` asks. Without a revision, members that
    /// answered at different revisions (writes in flight) are asked again at the smallest, so
    /// the answers can be compared.
    pub fn cluster_hash_kv(&self, revision: Option<i64>) -> Result<ClusterHashes, ClientError> {
        let (from, members) = self.member_list()?;
        let urls: Vec<String> =
            members.iter().flat_map(|m| m.client_urls.iter().cloned()).collect();
        let dial: Vec<String> = urls
            .iter()
            .map(|u| normalize_endpoint(u, self.tls.is_some()).unwrap_or_else(|_| u.clone()))
            .collect();
        let ask = |rev: i64| -> Vec<Result<KvHash, ClientError>> {
            self.for_each(&dial, move |mut conn| async move { conn.hash_kv(rev).await })
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        let mut answers = ask(revision.unwrap_or(0));
        let mut rehashed_at = None;
        if revision.is_none() {
            let revs: std::collections::BTreeSet<i64> =
                answers.iter().filter_map(|r| r.as_ref().ok()).map(|h| h.hash_revision).collect();
            if revs.len() > 1 {
                let lowest = *revs.iter().next().unwrap();
                answers = ask(lowest);
                rehashed_at = Some(lowest);
            }
        }
        Ok(ClusterHashes {
            from,
            members,
            hashes: urls.into_iter().zip(answers).collect(),
            rehashed_at,
        })
    }

    /// Streams a snapshot from `endpoint` into `dest`. For a file: `FILE.part` (0600), fsync,
    /// rename; on any failure the partial file is removed. Verifies the sha256 trailer.
    pub fn save(
        &self,
        endpoint: &str,
        dest: &Destination,
        progress: &mut dyn Progress,
    ) -> Result<SnapshotSummary, ClientError> {
        dest.preflight()?;
        self.rt.block_on(async {
            let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
            match dest {
                Destination::File(path) => {
                    let mut part = PartFile::create(path)?;
                    let target = PartFile::part_path(path).display().to_string();
                    let summary =
                        stream_snapshot(&mut conn, part.file(), &target, progress).await?;
                    part.commit()?;
                    Ok(summary)
                }
                Destination::Stdout => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    let summary = stream_snapshot(&mut conn, &mut lock, "stdout", progress).await?;
                    lock.flush()
                        .map_err(|source| ClientError::Write { target: "stdout".into(), source })?;
                    Ok(summary)
                }
            }
        })
    }

    /// Streams the snapshot of `endpoint` into `sink` (every byte, trailer included, as
    /// [`Session::save`] writes a file), checking the trailer; `target` names the sink in
    /// errors. For a caller that consumes the snapshot while it arrives.
    pub fn save_into(
        &self,
        endpoint: &str,
        sink: &mut dyn Write,
        target: &str,
        progress: &mut dyn Progress,
    ) -> Result<SnapshotSummary, ClientError> {
        self.rt.block_on(async {
            let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
            stream_snapshot(&mut conn, sink, target, progress).await
        })
    }

    /// Follows every change from `start_revision` on `endpoint` (see [`Connection::follow`]),
    /// blocking until `f` breaks or the watch fails.
    pub fn follow(
        &self,
        endpoint: &str,
        start_revision: i64,
        tick: std::time::Duration,
        f: &mut dyn FnMut(WatchUpdate) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        self.rt.block_on(async {
            let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
            conn.follow(start_revision, tick, f).await
        })
    }

    /// Every lease on `endpoint` with its granted TTL (see [`Connection::leases`]).
    pub fn leases(
        &self,
        endpoint: &str,
        known: &std::collections::HashMap<i64, i64>,
    ) -> Result<Vec<(i64, i64)>, ClientError> {
        self.rt.block_on(async {
            let mut conn = connect_with(&self.cfg, self.tls.as_ref(), endpoint).await?;
            conn.leases(known).await
        })
    }

    /// Runs `f` on a fresh connection to each endpoint concurrently; results in input order
    /// with the time each took (connecting included).
    fn for_each<T, F, Fut>(
        &self,
        endpoints: &[String],
        f: F,
    ) -> Vec<(Result<T, ClientError>, std::time::Duration)>
    where
        T: Send + 'static,
        F: Fn(Connection) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, endpoint) in endpoints.iter().enumerate() {
                let cfg = self.cfg.clone();
                let tls = self.tls.clone();
                let endpoint = endpoint.clone();
                let f = f.clone();
                set.spawn(async move {
                    let started = std::time::Instant::now();
                    if endpoint.is_empty() {
                        return (
                            i,
                            Err(ClientError::Config("empty endpoint".into())),
                            started.elapsed(),
                        );
                    }
                    let r = match connect_with(&cfg, tls.as_ref(), &endpoint).await {
                        Ok(conn) => f(conn).await,
                        Err(e) => Err(e),
                    };
                    (i, r, started.elapsed())
                });
            }
            let mut out: Vec<Option<(Result<T, ClientError>, std::time::Duration)>> =
                (0..endpoints.len()).map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                if let Ok((i, r, took)) = joined {
                    out[i] = Some((r, took));
                }
            }
            out.into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| {
                        (
                            Err(ClientError::Config("internal: task failed".into())),
                            Default::default(),
                        )
                    })
                })
                .collect()
        })
    }
}
