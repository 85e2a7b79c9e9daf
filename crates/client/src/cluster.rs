//! Endpoint status and health, the member list, and which member to take a snapshot from.

use std::time::{Duration, Instant};

use crate::conn::Connection;
use crate::error::ClientError;

/// What one member says about itself (Maintenance.Status) plus the revision of its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub endpoint: String,
    /// The cluster's id, as every response header carries it.
    pub cluster_id: u64,
    pub member_id: u64,
    pub leader: u64,
    pub version: String,
    /// Size of the backend file (bytes), as etcd reports `dbSize`.
    pub db_size: i64,
    /// Bytes in use inside it (`dbSizeInUse`; 0 from servers before 3.4).
    pub db_size_in_use: i64,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub is_learner: bool,
    pub errors: Vec<String>,
    pub took: Duration,
}

impl MemberStatus {
    pub fn is_leader(&self) -> bool {
        self.member_id != 0 && self.member_id == self.leader
    }
    /// The applied index when the server reports it (3.4+), else the raft index.
    pub fn applied(&self) -> u64 {
        if self.raft_applied_index != 0 {
            self.raft_applied_index
        } else {
            self.raft_index
        }
    }
    /// Serving, in a cluster with a leader, no errors, not a learner.
    pub fn is_healthy_voter(&self) -> bool {
        self.errors.is_empty() && self.leader != 0 && !self.is_learner
    }
    pub fn role(&self) -> &'static str {
        if self.is_learner {
            "learner"
        } else if self.is_leader() {
            "leader"
        } else if self.leader == 0 {
            "no leader"
        } else {
            "follower"
        }
    }
}

/// The outcome of asking one endpoint for its status.
#[derive(Debug)]
pub struct Probe {
    pub endpoint: String,
    pub result: Result<MemberStatus, ClientError>,
}

/// Result of `cluster health` for one endpoint.
#[derive(Debug)]
pub struct Health {
    pub endpoint: String,
    pub took: Duration,
    /// `Ok(())` when a linearizable read committed through raft and no alarm is raised.
    pub result: Result<(), ClientError>,
}

/// One entry of the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Connection {
    pub async fn status(&mut self) -> Result<MemberStatus, ClientError> {
        let started = Instant::now();
        let mut m = self.client.maintenance_client();
        let st = self.unary("waiting for the member's status", m.status()).await?;
        let header = st.header();
        Ok(MemberStatus {
            endpoint: self.endpoint.clone(),
            cluster_id: header.map(|h| h.cluster_id()).unwrap_or(0),
            member_id: header.map(|h| h.member_id()).unwrap_or(0),
            leader: st.leader(),
            version: st.version().to_string(),
            db_size: st.db_size(),
            db_size_in_use: st.raft_used_db_size(),
            revision: header.map(|h| h.revision()).unwrap_or(0),
            raft_term: st.raft_term(),
            raft_index: st.raft_index(),
            raft_applied_index: st.raft_applied_index(),
            is_learner: st.is_learner(),
            errors: st.errors().to_vec(),
            took: started.elapsed(),
        })
    }

    /// What `etcdctl endpoint health` checks: a linearizable read goes through raft (a
    /// permission error still proves that), and no alarm (NOSPACE, CORRUPT) is raised.
    pub async fn health(&mut self) -> Result<(), ClientError> {
        let mut kv =
            self.client.kv_client().max_decoding_message_size(crate::conn::MAX_MESSAGE_BYTES);
        let got = tokio::time::timeout(self.cfg.command_timeout, kv.get("health", None)).await;
        match got {
            Err(_) => {
                return Err(ClientError::Timeout {
                    endpoint: self.endpoint.clone(),
                    during: "a linearizable read did not commit (no leader, or no quorum?)",
                    after: self.cfg.command_timeout,
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => match self.classify(e) {
                ClientError::Auth { .. } => {}
                other => return Err(other),
            },
        }
        let mut m = self.client.maintenance_client();
        let alarms = self
            .unary(
                "listing alarms",
                m.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None),
            )
            .await?;
        if !alarms.alarms().is_empty() {
            let list: Vec<String> = alarms
                .alarms()
                .iter()
                .map(|a| format!("{:?} on member {:x}", a.alarm(), a.member_id()))
                .collect();
            return Err(ClientError::Server {
                endpoint: self.endpoint.clone(),
                detail: format!("active alarm(s): {}", list.join(", ")),
            });
        }
        Ok(())
    }

    /// The cluster's members as this endpoint knows them.
    pub async fn members(&mut self) -> Result<Vec<Member>, ClientError> {
        let mut c = self.client.cluster_client();
        let list = self.unary("listing members", c.member_list()).await?;
        Ok(list
            .members()
            .iter()
            .map(|m| Member {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect())
    }
}

/// Where `snapshot save` takes its snapshot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFrom {
    /// A healthy, caught-up follower (spares the leader); the leader when there is none.
    Follower,
    Leader,
    /// This endpoint, whatever its role.
    Endpoint(String),
}

impl std::str::FromStr for SnapshotFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "follower" => Ok(SnapshotFrom::Follower),
            "leader" => Ok(SnapshotFrom::Leader),
            "" => Err("expected leader, follower or an endpoint".into()),
            other => Ok(SnapshotFrom::Endpoint(other.to_string())),
        }
    }
}

/// The member chosen for a snapshot and why.
#[derive(Clone, Debug)]
pub struct Choice {
    pub status: MemberStatus,
    pub reason: String,
}

/// A follower that is this many raft entries behind the most advanced member is not
/// "caught up"; the leader is used instead.
pub const MAX_FOLLOWER_LAG: u64 = 10_000;

/// Chooses the member to snapshot from the probes of every endpoint (pure: no I/O).
pub fn choose_member(probes: &[Probe], from: &SnapshotFrom) -> Result<Choice, ClientError> {
    let ok: Vec<&MemberStatus> = probes.iter().filter_map(|p| p.result.as_ref().ok()).collect();
    if ok.is_empty() {
        return Err(all_failed(probes));
    }
    let skipped = |st: &MemberStatus| -> Option<String> {
        if st.is_learner {
            Some("learner".into())
        } else if st.leader == 0 {
            Some("has no leader".into())
        } else if !st.errors.is_empty() {
            Some(format!("reports errors: {}", st.errors.join("; ")))
        } else {
            None
        }
    };
    let failed_note = {
        let bad: Vec<String> = probes
            .iter()
            .filter_map(|p| match &p.result {
                Err(e) => Some(format!("{} unreachable ({})", p.endpoint, short(e))),
                Ok(st) => skipped(st).map(|why| format!("{} skipped ({why})", p.endpoint)),
            })
            .collect();
        if bad.is_empty() {
            String::new()
        } else {
            format!("; {}", bad.join(", "))
        }
    };
    let healthy: Vec<&MemberStatus> = ok.iter().copied().filter(|s| s.is_healthy_voter()).collect();
    let max_applied = ok.iter().map(|s| s.applied()).max().unwrap_or(0);
    let leader = healthy.iter().copied().find(|s| s.is_leader());

    match from {
        SnapshotFrom::Endpoint(want) => {
            let want_norm = want.trim_end_matches('/');
            let found = probes.iter().find(|p| {
                p.endpoint == want_norm
                    || p.endpoint.split_once("://").map(|(_, hp)| hp) == Some(want_norm)
            });
            match found {
                None => Err(ClientError::Config(format!(
                    "--snapshot-from {want}: not one of the endpoints ({})",
                    probes.iter().map(|p| p.endpoint.as_str()).collect::<Vec<_>>().join(", ")
                ))),
                Some(Probe { result: Err(e), .. }) => Err(clone_err(e)),
                Some(Probe { result: Ok(st), .. }) => {
                    let mut reason = format!("chosen with --snapshot-from ({})", st.role());
                    if let Some(why) = skipped(st) {
                        reason.push_str(&format!("; warning: it {why}"));
                    }
                    Ok(Choice { status: st.clone(), reason })
                }
            }
        }
        SnapshotFrom::Leader => match leader {
            Some(l) => Ok(Choice {
                status: l.clone(),
                reason: format!("the leader, as asked (--snapshot-from leader){failed_note}"),
            }),
            None => Err(ClientError::NoEndpoint(format!(
                "--snapshot-from leader: no endpoint given is a healthy leader{failed_note}"
            ))),
        },
        SnapshotFrom::Follower => {
            let best_follower = healthy.iter().copied().filter(|s| !s.is_leader()).fold(
                None::<&MemberStatus>,
                |best, s| match best {
                    Some(b) if b.applied() >= s.applied() => Some(b),
                    _ => Some(s),
                },
            );
            match (best_follower, leader) {
                (Some(f), _) if f.applied() + MAX_FOLLOWER_LAG >= max_applied => {
                    let others = healthy.iter().filter(|s| !s.is_leader()).count();
                    let why = if others > 1 {
                        format!(
                            "healthy follower with the highest applied index ({} of {max_applied})",
                            f.applied()
                        )
                    } else {
                        format!(
                            "healthy follower, caught up (applied index {} of {max_applied})",
                            f.applied()
                        )
                    };
                    Ok(Choice {
                        status: f.clone(),
                        reason: format!("{why}; sparing the leader{failed_note}"),
                    })
                }
                (Some(f), Some(l)) => Ok(Choice {
                    status: l.clone(),
                    reason: format!(
                        "the leader: the best follower {} is {} entries behind{failed_note}",
                        f.endpoint,
                        max_applied - f.applied()
                    ),
                }),
                (None, Some(l)) => {
                    let why = if probes.len() == 1 {
                        "the only endpoint given"
                    } else {
                        "no healthy follower among the endpoints"
                    };
                    Ok(Choice {
                        status: l.clone(),
                        reason: format!("the leader: {why}{failed_note}"),
                    })
                }
                (Some(f), None) => Ok(Choice {
                    status: f.clone(),
                    reason: format!(
                        "healthy follower (the leader is not among the endpoints){failed_note}"
                    ),
                }),
                (None, None) => Err(ClientError::NoEndpoint(format!(
                    "no healthy member to take a snapshot from{failed_note}"
                ))),
            }
        }
    }
}

fn short(e: &ClientError) -> String {
    let s = e.to_string();
    match s.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => s,
    }
}

/// When every endpoint failed: one error whose kind is TLS/auth if any endpoint failed that
/// way (the likeliest thing to fix), unreachable otherwise.
pub fn all_failed(probes: &[Probe]) -> ClientError {
    let errs: Vec<&ClientError> = probes.iter().filter_map(|p| p.result.as_ref().err()).collect();
    if errs.len() == 1 {
        return clone_err(errs[0]);
    }
    let tls = errs.iter().find(|e| e.kind() == crate::ErrorKind::TlsOrAuth);
    let text = errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    match tls {
        Some(e) => match e {
            ClientError::Auth { .. } => {
                ClientError::Auth { endpoint: "all endpoints".into(), detail: text }
            }
            _ => ClientError::Tls { endpoint: "all endpoints".into(), detail: text },
        },
        None => ClientError::NoEndpoint(format!("no endpoint reachable: {text}")),
    }
}

/// ClientError holds io::Errors, which do not clone; keep the kind and the sentence.
pub(crate) fn clone_err(e: &ClientError) -> ClientError {
    match e {
        ClientError::Config(s) => ClientError::Config(s.clone()),
        ClientError::ReadFile { what, path, source } => ClientError::ReadFile {
            what,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ClientError::BadFile { what, path, detail } => {
            ClientError::BadFile { what, path: path.clone(), detail: detail.clone() }
        }
        ClientError::Unreachable { endpoint, detail } => {
            ClientError::Unreachable { endpoint: endpoint.clone(), detail: detail.clone() }
        }
        ClientError::Timeout { endpoint, during, after } => {
            ClientError::Timeout { endpoint: endpoint.clone(), during, after: *after }
        }
        ClientError::Tls { endpoint, detail } => {
            ClientError::Tls { endpoint: endpoint.clone(), detail: detail.clone() }
        }
        ClientError::Auth { endpoint, detail } => {
            ClientError::Auth { endpoint: endpoint.clone(), detail: detail.clone() }
        }
        ClientError::Server { endpoint, detail } => {
            ClientError::Server { endpoint: endpoint.clone(), detail: detail.clone() }
        }
        other => match other.kind() {
            crate::ErrorKind::TlsOrAuth => {
                ClientError::Tls { endpoint: String::new(), detail: other.to_string() }
            }
            crate::ErrorKind::Unreachable => ClientError::NoEndpoint(other.to_string()),
            _ => ClientError::Server { endpoint: String::new(), detail: other.to_string() },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(endpoint: &str, id: u64, leader: u64, applied: u64) -> MemberStatus {
        MemberStatus {
            endpoint: endpoint.into(),
            cluster_id: 1,
            member_id: id,
            leader,
            version: "3.5.1".into(),
            db_size: 1,
            db_size_in_use: 1,
            revision: 1,
            raft_term: 2,
            raft_index: applied,
            raft_applied_index: applied,
            is_learner: false,
            errors: vec![],
            took: Duration::ZERO,
        }
    }
    fn ok(s: MemberStatus) -> Probe {
        Probe { endpoint: s.endpoint.clone(), result: Ok(s) }
    }
    fn down(e: &str) -> Probe {
        Probe {
            endpoint: e.into(),
            result: Err(ClientError::Unreachable {
                endpoint: e.into(),
                detail: "connection refused".into(),
            }),
        }
    }

    #[test]
    fn prefers_the_most_advanced_follower() {
        let probes = vec![ok(st("a", 1, 1, 100)), ok(st("b", 2, 1, 98)), ok(st("c", 3, 1, 99))];
        let c = choose_member(&probes, &SnapshotFrom::Follower).unwrap();
        assert_eq!(c.status.endpoint, "c");
        assert!(c.reason.contains("highest applied index"), "{}", c.reason);
    }

    #[test]
    fn ties_keep_the_given_order() {
        let probes = vec![ok(st("a", 1, 3, 100)), ok(st("b", 2, 3, 100)), ok(st("c", 3, 3, 100))];
        assert_eq!(choose_member(&probes, &SnapshotFrom::Follower).unwrap().status.endpoint, "a");
    }

    #[test]
    fn single_endpoint_leader_is_used() {
        let probes = vec![ok(st("a", 1, 1, 100))];
        let c = choose_member(&probes, &SnapshotFrom::Follower).unwrap();
        assert_eq!(c.status.endpoint, "a");
        assert!(c.reason.contains("only endpoint"), "{}", c.reason);
    }

    #[test]
    fn lagging_follower_loses_to_the_leader() {
        let probes = vec![ok(st("a", 1, 1, 50_000)), ok(st("b", 2, 1, 100))];
        let c = choose_member(&probes, &SnapshotFrom::Follower).unwrap();
        assert_eq!(c.status.endpoint, "a");
        assert!(c.reason.contains("behind"), "{}", c.reason);
    }

    #[test]
    fn unhealthy_members_are_skipped_and_named() {
        let mut learner = st("c", 3, 1, 100);
        learner.is_learner = true;
        let mut noisy = st("d", 4, 1, 100);
        noisy.errors.push("NOSPACE".into());
        let probes = vec![ok(st("a", 1, 1, 100)), down("b"), ok(learner), ok(noisy)];
        let c = choose_member(&probes, &SnapshotFrom::Follower).unwrap();
        assert_eq!(c.status.endpoint, "a");
        assert!(c.reason.contains("b unreachable"), "{}", c.reason);
        assert!(c.reason.contains("c skipped (learner)"), "{}", c.reason);
        assert!(c.reason.contains("NOSPACE"), "{}", c.reason);
    }

    #[test]
    fn leader_and_explicit_endpoint() {
        let probes = vec![ok(st("http://a:1", 1, 2, 100)), ok(st("http://b:1", 2, 2, 100))];
        assert_eq!(
            choose_member(&probes, &SnapshotFrom::Leader).unwrap().status.endpoint,
            "http://b:1"
        );
        assert_eq!(
            choose_member(&probes, &SnapshotFrom::Endpoint("a:1".into())).unwrap().status.endpoint,
            "http://a:1"
        );
        assert!(matches!(
            choose_member(&probes, &SnapshotFrom::Endpoint("z:1".into())),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn all_down_is_unreachable() {
        let e = choose_member(&[down("a"), down("b")], &SnapshotFrom::Follower).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unreachable);
        assert!(e.to_string().contains("no endpoint reachable"), "{e}");
    }
}
