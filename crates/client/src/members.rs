//! Member replacement and maintenance with guards: `member remove|add|promote`, `defrag`,
//! `alarm list|disarm`.
//!
//! The guards are pure functions over a [`MembersReport`] (the member list plus each
//! member's own status), so they are unit-tested without a server; the [`Session`] methods
//! take a fresh report, run the guard, and only then change the cluster.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, MemberAddOptions};

use crate::cluster::{Member, MemberStatus};
use crate::conn::{connect_with, Connection};
use crate::error::ClientError;
use crate::{MembersReport, Session};

/// A learner whose applied index is more than this many entries behind the leader's is not
/// promoted (etcd's own check is looser: 90 % of the leader's progress).
pub const PROMOTE_MAX_LAG: u64 = 1_000;

/// Parses a member ID as etcdctl prints and takes it (hex, optionally `0x`-prefixed).
pub fn parse_member_id(s: &str) -> Result<u64, ClientError> {
    let t = s.trim();
    let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u64::from_str_radix(digits, 16)
        .ok()
        .filter(|&id| id != 0)
        .ok_or_else(|| ClientError::Config(format!("member ID {s:?}: expected a hex ID as `cluster members` prints it, e.g. 8e9e05c52164694d")))
}

fn refused(msg: String) -> ClientError {
    ClientError::Refused(msg)
}

/// A member's condition as the guards see it.
fn healthy(st: &Result<MemberStatus, ClientError>) -> bool {
    matches!(st, Ok(s) if s.leader != 0 && s.errors.is_empty())
}

fn label(m: &Member) -> String {
    if m.name.is_empty() {
        format!("{:x} (unstarted)", m.id)
    } else {
        format!("{:x} ({})", m.id, m.name)
    }
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The leader's status, when some member that answered names a leader that also answered.
fn leader_status(report: &MembersReport) -> Option<&MemberStatus> {
    let leader_id = report
        .statuses
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .map(|s| s.leader)
        .find(|&l| l != 0)?;
    report.statuses.iter().filter_map(|s| s.as_ref().ok()).find(|s| s.member_id == leader_id)
}

/// What a removal will leave behind; `warnings` are the checks `--force` overrode.
#[derive(Clone, Debug)]
pub struct RemovePlan {
    pub member: Member,
    pub voters_after: usize,
    pub healthy_voters_after: usize,
    pub quorum_after: usize,
    pub warnings: Vec<String>,
}

/// Checks `member remove ID`: the member exists; the cluster has quorum now; after the
/// removal the healthy voting members still make a quorum of the smaller cluster; and the
/// member is not healthy (removing a working member is rarely what a replacement needs).
/// `force` turns the last two refusals into warnings; nothing overrides the first two.
pub fn check_remove(
    report: &MembersReport,
    id: u64,
    force: bool,
) -> Result<RemovePlan, ClientError> {
    let Some(pos) = report.members.iter().position(|m| m.id == id) else {
        let known: Vec<String> = report.members.iter().map(label).collect();
        return Err(ClientError::Config(format!(
            "no member with ID {id:x}; the members are {}",
            known.join(", ")
        )));
    };
    let member = report.members[pos].clone();
    let voters: Vec<usize> =
        (0..report.members.len()).filter(|&i| !report.members[i].is_learner).collect();
    let healthy_voters = voters.iter().filter(|&&i| healthy(&report.statuses[i])).count();
    if healthy_voters < quorum(voters.len()) {
        return Err(refused(format!(
            "the cluster has no quorum now ({healthy_voters} of {} voting members healthy, {} needed), so a removal \
             cannot commit; bring members back, or restore from a snapshot (node restore)",
            voters.len(),
            quorum(voters.len())
        )));
    }
    let voters_after = voters.len() - usize::from(!member.is_learner);
    if voters_after == 0 {
        return Err(refused(format!(
            "member {} is the last voting member; removing it would end the cluster",
            label(&member)
        )));
    }
    let healthy_voters_after =
        voters.iter().filter(|&&i| i != pos && healthy(&report.statuses[i])).count();
    let quorum_after = quorum(voters_after);
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    if healthy_voters_after < quorum_after {
        problems.push(format!(
            "removing {} leaves {healthy_voters_after} healthy of {voters_after} voting members, below the quorum of \
             {quorum_after}: the cluster would stop accepting writes",
            label(&member)
        ));
    }
    if healthy(&report.statuses[pos]) {
        problems.push(format!(
            "member {} is healthy; remove a member only when it is broken or being replaced (stop it first)",
            label(&member)
        ));
    }
    if !problems.is_empty() {
        if !force {
            return Err(refused(format!(
                "{}; nothing was changed (--force overrides)",
                problems.join("; ")
            )));
        }
        warnings = problems;
    }
    Ok(RemovePlan { member, voters_after, healthy_voters_after, quorum_after, warnings })
}

/// What an add will do.
#[derive(Clone, Debug)]
pub struct AddPlan {
    pub warnings: Vec<String>,
}

/// Checks `member add NAME --peer-urls URLS [--learner]`: a name and well-formed, unused
/// peer URLs; quorum now; and, for a voting member, that the cluster keeps its quorum while
/// the new member is not started yet (otherwise suggest `--learner`; `force` overrides).
pub fn check_add(
    report: &MembersReport,
    name: &str,
    peer_urls: &[String],
    learner: bool,
    force: bool,
) -> Result<AddPlan, ClientError> {
    if name.trim().is_empty() {
        return Err(ClientError::Config("member name is empty".into()));
    }
    if peer_urls.is_empty() {
        return Err(ClientError::Config(
            "--peer-urls is empty; give the new member's peer URL, e.g. https://10.0.0.4:2380"
                .into(),
        ));
    }
    for u in peer_urls {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.split_once("://").is_some_and(|(_, rest)| {
                rest.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            });
        if !ok {
            return Err(ClientError::Config(format!(
                "peer URL {u:?}: expected scheme://host:port, e.g. https://10.0.0.4:2380"
            )));
        }
        if let Some(m) = report.members.iter().find(|m| {
            m.peer_urls.iter().any(|p| p.trim_end_matches('/') == u.trim_end_matches('/'))
        }) {
            return Err(refused(format!(
                "peer URL {u} already belongs to member {}; remove that member first",
                label(m)
            )));
        }
    }
    if let Some(m) = report.members.iter().find(|m| m.name == name) {
        return Err(refused(format!(
            "a member named {name} exists ({}); remove it first or pick another name",
            label(m)
        )));
    }
    let voters = report.members.iter().filter(|m| !m.is_learner).count();
    let healthy_voters = report
        .members
        .iter()
        .zip(&report.statuses)
        .filter(|(m, s)| !m.is_learner && healthy(s))
        .count();
    if healthy_voters < quorum(voters) {
        return Err(refused(format!(
            "the cluster has no quorum now ({healthy_voters} of {voters} voting members healthy); an add cannot commit"
        )));
    }
    let mut warnings = Vec::new();
    if !learner && healthy_voters < quorum(voters + 1) {
        let msg = format!(
            "adding a voting member raises the quorum to {} while only {healthy_voters} members are healthy: the \
             cluster stops accepting writes until the new member has started and caught up; add it with --learner \
             and promote it once it has caught up",
            quorum(voters + 1)
        );
        if !force {
            return Err(refused(format!("{msg}; nothing was changed (--force overrides)")));
        }
        warnings.push(msg);
    }
    Ok(AddPlan { warnings })
}

/// What a promotion is based on.
#[derive(Clone, Debug)]
pub struct PromotePlan {
    pub member: Member,
    pub learner_applied: u64,
    pub leader_applied: u64,
}

/// Checks `member promote ID`: the member is a learner that answers and whose applied index
/// is within [`PROMOTE_MAX_LAG`] of the leader's.
pub fn check_promote(report: &MembersReport, id: u64) -> Result<PromotePlan, ClientError> {
    let Some(pos) = report.members.iter().position(|m| m.id == id) else {
        return Err(ClientError::Config(format!("no member with ID {id:x}")));
    };
    let member = report.members[pos].clone();
    if !member.is_learner {
        return Err(refused(format!(
            "member {} is already a voting member; only learners are promoted",
            label(&member)
        )));
    }
    let Some(leader) = leader_status(report) else {
        return Err(refused("no leader answered, so the learner's progress cannot be compared; check `cluster members`".into()));
    };
    let learner = match &report.statuses[pos] {
        Ok(s) => s,
        Err(e) => {
            return Err(refused(format!(
                "learner {} does not answer ({e}); start it (with --initial-cluster-state existing) and wait until it \
                 has caught up, then promote",
                label(&member)
            )))
        }
    };
    let (have, want) = (learner.applied(), leader.applied());
    if have + PROMOTE_MAX_LAG < want {
        return Err(refused(format!(
            "learner {} has applied index {have}, the leader {want}: {} entries behind (at most {PROMOTE_MAX_LAG} \
             allowed); wait until it has caught up (watch `cluster members`) and promote again",
            label(&member),
            want - have
        )));
    }
    Ok(PromotePlan { member, learner_applied: have, leader_applied: want })
}

/// Defrag order: learners and followers first, the leader last. Refuses when a member is
/// unhealthy or does not answer (defragmenting blocks a member; with another one down that
/// could cost the quorum).
pub fn defrag_order(report: &MembersReport) -> Result<Vec<usize>, ClientError> {
    let mut bad = Vec::new();
    for (m, s) in report.members.iter().zip(&report.statuses) {
        match s {
            Err(e) => bad.push(format!("{} does not answer ({e})", label(m))),
            Ok(st) if !m.is_learner && !healthy(s) => {
                bad.push(format!("{} is unhealthy ({})", label(m), st.role()))
            }
            Ok(st) if !st.errors.is_empty() => {
                bad.push(format!("{} reports {}", label(m), st.errors.join("; ")))
            }
            Ok(_) => {}
        }
    }
    if !bad.is_empty() {
        return Err(refused(format!(
            "not defragmenting: {}; fix that first (nothing was changed)",
            bad.join(", ")
        )));
    }
    let is_leader = |i: usize| report.statuses[i].as_ref().map(|s| s.is_leader()).unwrap_or(false);
    let mut order: Vec<usize> = (0..report.members.len()).filter(|&i| !is_leader(i)).collect();
    order.extend((0..report.members.len()).filter(|&i| is_leader(i)));
    Ok(order)
}

/// The result of `member add`: what the new member must be started with.
#[derive(Clone, Debug)]
pub struct Added {
    pub id: u64,
    pub name: String,
    pub learner: bool,
    pub peer_urls: Vec<String>,
    /// `--initial-cluster` for the new member: every member's name=peerURL.
    pub initial_cluster: String,
    pub warnings: Vec<String>,
}

/// One member's defragmentation.
#[derive(Clone, Debug)]
pub struct Defragmented {
    pub id: u64,
    pub name: String,
    pub endpoint: String,
    pub role: &'static str,
    pub size_before: i64,
    pub size_after: i64,
    pub took: Duration,
}

impl Defragmented {
    pub fn freed(&self) -> i64 {
        self.size_before - self.size_after
    }
}

/// One raised alarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: u64,
    /// `NOSPACE`, `CORRUPT`.
    pub kind: String,
}

fn alarm_name(t: AlarmType) -> String {
    match t {
        AlarmType::Nospace => "NOSPACE".into(),
        AlarmType::Corrupt => "CORRUPT".into(),
        AlarmType::None => "NONE".into(),
    }
}

/// etcd's own reconfiguration checks (`--strict-reconfig-check`, on by default) answer
/// "unhealthy cluster" until every voting member has been connected for 5 s, e.g. just after
/// another change; that passes, so it is retried for a while.
const RECONFIG_RETRY: Duration = Duration::from_secs(12);

fn etcd_detail(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Server { detail, .. } | ClientError::Unreachable { detail, .. } => {
            Some(detail)
        }
        _ => None,
    }
}

impl Session {
    /// Runs one membership change against `endpoint`, retrying etcd's transient "unhealthy
    /// cluster" answer, and turning its own quorum refusal into [`ClientError::Refused`].
    fn reconfigure<T, F, Fut>(
        &self,
        endpoint: &str,
        what: &'static str,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(etcd_client::ClusterClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        loop {
            let r = self.rt.block_on(async {
                let conn = self.conn(endpoint).await?;
                let c = conn.client.cluster_client();
                conn.unary(what, f(c)).await
            });
            let e = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let detail = etcd_detail(&e).unwrap_or("").to_string();
            if detail.contains("unhealthy cluster") {
                if started.elapsed() < RECONFIG_RETRY {
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                return Err(refused(format!(
                    "{endpoint}: etcd refused {what}: {detail} (it accepts membership changes once every voting \
                     member has been connected for 5 s); check `cluster health --cluster` and retry"
                )));
            }
            if detail.contains("not enough started members") {
                return Err(refused(format!(
                    "{endpoint}: etcd refused {what}: {detail}; nothing was changed"
                )));
            }
            return Err(e);
        }
    }

    fn leader_endpoint(&self, report: &MembersReport) -> String {
        leader_status(report).map(|s| s.endpoint.clone()).unwrap_or_else(|| report.from.clone())
    }

    async fn conn(&self, endpoint: &str) -> Result<Connection, ClientError> {
        connect_with(&self.cfg, self.tls.as_ref(), endpoint).await
    }

    /// `member remove ID` after [`check_remove`].
    pub fn member_remove(&self, id: u64, force: bool) -> Result<RemovePlan, ClientError> {
        let report = self.members()?;
        let plan = check_remove(&report, id, force)?;
        let endpoint = self.leader_endpoint(&report);
        self.reconfigure(&endpoint, "removing the member", |mut c| async move {
            c.member_remove(id).await
        })?;
        Ok(plan)
    }

    /// `member add NAME --peer-urls URLS [--learner]` after [`check_add`].
    pub fn member_add(
        &self,
        name: &str,
        peer_urls: &[String],
        learner: bool,
        force: bool,
    ) -> Result<Added, ClientError> {
        let report = self.members()?;
        let plan = check_add(&report, name, peer_urls, learner, force)?;
        let leader = leader_status(&report);
        if learner {
            if let Some(v) = leader.map(|l| l.version.clone()) {
                if v.starts_with("3.0")
                    || v.starts_with("3.1")
                    || v.starts_with("3.2")
                    || v.starts_with("3.3")
                {
                    return Err(refused(format!(
                        "etcd {v} has no learners (they exist from 3.4 on); add the member without --learner, or \
                         upgrade etcd first"
                    )));
                }
            }
        }
        let endpoint = self.leader_endpoint(&report);
        let version = leader.map(|l| l.version.clone()).unwrap_or_default();
        let urls = peer_urls.to_vec();
        let resp = self.reconfigure(&endpoint, "adding the member", |mut c| {
            let urls = urls.clone();
            async move {
                let options =
                    if learner { Some(MemberAddOptions::new().with_is_learner()) } else { None };
                c.member_add(urls, options).await
            }
        });
        let resp = match resp {
            Ok(r) => r,
            Err(ClientError::Server { endpoint, detail }) if learner => {
                return Err(refused(format!(
                    "{endpoint}: etcd {version} refused to add a learner: {detail}. Without learner support, add the \
                     member without --learner (the cluster then counts it for quorum before it starts: start it at once)"
                )))
            }
            Err(e) => return Err(e),
        };
        let id = resp.member().map(|m| m.id()).unwrap_or(0);
        let mut parts = Vec::new();
        for m in resp.member_list() {
            let n = if m.id() == id { name.to_string() } else { m.name().to_string() };
            for u in m.peer_urls() {
                parts.push(format!("{n}={u}"));
            }
        }
        Ok(Added {
            id,
            name: name.to_string(),
            learner,
            peer_urls: peer_urls.to_vec(),
            initial_cluster: parts.join(","),
            warnings: plan.warnings,
        })
    }

    /// `member promote ID` after [`check_promote`].
    pub fn member_promote(&self, id: u64) -> Result<PromotePlan, ClientError> {
        let report = self.members()?;
        let plan = check_promote(&report, id)?;
        let endpoint = self.leader_endpoint(&report);
        match self.reconfigure(&endpoint, "promoting the learner", |mut c| async move { c.member_promote(id).await }) {
            Ok(_) => {}
            // etcd's own readiness check (learner within 90 % of the leader).
            Err(ClientError::Server { endpoint, detail }) if detail.contains("not ready") || detail.contains("in sync") => {
                return Err(refused(format!("{endpoint}: etcd refused: {detail}; wait until the learner has caught up and promote again")))
            }
            Err(e) => return Err(e),
        }
        Ok(plan)
    }

    /// Defragments every member, followers first and the leader last, checking the health of
    /// every member after each one. `on_member` is called before (`None`) and after
    /// (`Some`) each member, for progress output.
    pub fn defrag(
        &self,
        per_member_timeout: Duration,
        on_member: &mut dyn FnMut(&Member, Option<&Defragmented>),
    ) -> Result<Vec<Defragmented>, ClientError> {
        let report = self.members()?;
        let order = defrag_order(&report)?;
        let urls: Vec<String> = report
            .statuses
            .iter()
            .map(|s| s.as_ref().map(|s| s.endpoint.clone()).unwrap_or_default())
            .collect();
        let mut done = Vec::new();
        for i in order {
            let m = &report.members[i];
            let endpoint = &urls[i];
            on_member(m, None);
            let started = Instant::now();
            let (before, after) = self.rt.block_on(async {
                let mut conn = self.conn(endpoint).await?;
                let before = conn.status().await?;
                let mut maint = conn.client.maintenance_client();
                match tokio::time::timeout(per_member_timeout, maint.defragment()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(conn.classify(e)),
                    Err(_) => {
                        return Err(ClientError::Timeout {
                            endpoint: endpoint.clone(),
                            during: "defragmenting",
                            after: per_member_timeout,
                        })
                    }
                }
                let after = conn.status().await?;
                Ok::<_, ClientError>((before, after))
            })?;
            let d = Defragmented {
                id: m.id,
                name: m.name.clone(),
                endpoint: endpoint.clone(),
                role: before.role(),
                size_before: before.db_size,
                size_after: after.db_size,
                took: started.elapsed(),
            };
            on_member(m, Some(&d));
            done.push(d);
            // Every member healthy again before the next one is blocked by a defrag.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let bad: Vec<String> = self
                    .health(&urls)
                    .into_iter()
                    .filter_map(|h| h.result.err().map(|e| format!("{}: {e}", h.endpoint)))
                    .collect();
                if bad.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(refused(format!(
                        "stopped after defragmenting {}: the cluster is not healthy ({}); the remaining members were \
                         not touched",
                        label(m),
                        bad.join("; ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(done)
    }

    /// Raised alarms (`alarm list`), from the first endpoint that answers.
    pub fn alarms(&self) -> Result<Vec<Alarm>, ClientError> {
        self.with_first_endpoint(|conn| async move {
            let mut m = conn.client.maintenance_client();
            let resp = conn
                .unary("listing alarms", m.alarm(AlarmAction::Get, AlarmType::None, None))
                .await?;
            Ok(resp
                .alarms()
                .iter()
                .map(|a| Alarm { member_id: a.member_id(), kind: alarm_name(a.alarm()) })
                .collect())
        })
    }

    /// Disarms every raised alarm (`alarm disarm`); returns those it disarmed.
    pub fn disarm_alarms(&self) -> Result<Vec<Alarm>, ClientError> {
        self.with_first_endpoint(|conn| async move {
            let mut m = conn.client.maintenance_client();
            let resp = conn
                .unary("listing alarms", m.alarm(AlarmAction::Get, AlarmType::None, None))
                .await?;
            let mut out = Vec::new();
            for a in resp.alarms() {
                let mut opts = AlarmOptions::new();
                opts.with_member(a.member_id());
                conn.unary(
                    "disarming an alarm",
                    m.alarm(AlarmAction::Deactivate, a.alarm(), Some(opts)),
                )
                .await?;
                out.push(Alarm { member_id: a.member_id(), kind: alarm_name(a.alarm()) });
            }
            Ok(out)
        })
    }

    fn with_first_endpoint<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut failures = Vec::new();
        for endpoint in &self.cfg.endpoints {
            match self.rt.block_on(async { self.conn(endpoint).await }) {
                Ok(conn) => return self.rt.block_on(f(conn)),
                Err(e) => {
                    failures.push(crate::Probe { endpoint: endpoint.clone(), result: Err(e) })
                }
            }
        }
        Err(crate::all_failed(&failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://127.0.0.{}:2380", 10 + id)],
            client_urls: vec![format!("http://127.0.0.{}:2379", 10 + id)],
            is_learner: learner,
        }
    }
    fn up(id: u64, leader: u64, applied: u64, learner: bool) -> Result<MemberStatus, ClientError> {
        Ok(MemberStatus {
            endpoint: format!("http://127.0.0.{}:2379", 10 + id),
            cluster_id: 7,
            member_id: id,
            leader,
            version: "3.5.1".into(),
            db_size: 1,
            db_size_in_use: 1,
            revision: 1,
            raft_term: 2,
            raft_index: applied,
            raft_applied_index: applied,
            is_learner: learner,
            errors: vec![],
            took: Duration::ZERO,
        })
    }
    fn down(id: u64) -> Result<MemberStatus, ClientError> {
        Err(ClientError::Unreachable {
            endpoint: format!("m{id}"),
            detail: "connection refused".into(),
        })
    }
    fn report(entries: Vec<(Member, Result<MemberStatus, ClientError>)>) -> MembersReport {
        let (members, statuses) = entries.into_iter().unzip();
        MembersReport { from: "http://127.0.0.11:2379".into(), members, statuses }
    }
    fn three(third: Result<MemberStatus, ClientError>) -> MembersReport {
        report(vec![
            (member(1, false), up(1, 1, 100, false)),
            (member(2, false), up(2, 1, 100, false)),
            (member(3, false), third),
        ])
    }
    fn is_refused(r: Result<impl std::fmt::Debug, ClientError>, words: &str) {
        match r {
            Err(ClientError::Refused(msg)) => assert!(msg.contains(words), "{msg}"),
            other => panic!("expected a refusal about {words:?}, got {other:?}"),
        }
    }

    #[test]
    fn member_ids_parse_as_hex() {
        assert_eq!(parse_member_id("8e9e05c52164694d").unwrap(), 0x8e9e05c52164694d);
        assert_eq!(parse_member_id("0x10").unwrap(), 16);
        assert!(parse_member_id("").is_err());
        assert!(parse_member_id("0").is_err());
        assert!(parse_member_id("xyz").is_err());
        assert!(parse_member_id("123456789abcdef01").is_err());
    }

    #[test]
    fn removing_a_stopped_member_is_allowed() {
        let plan = check_remove(&three(down(3)), 3, false).unwrap();
        assert_eq!((plan.voters_after, plan.healthy_voters_after, plan.quorum_after), (2, 2, 2));
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn removing_a_healthy_member_needs_force() {
        is_refused(check_remove(&three(up(3, 1, 100, false)), 3, false), "is healthy");
        let plan = check_remove(&three(up(3, 1, 100, false)), 3, true).unwrap();
        assert_eq!(plan.warnings.len(), 1);
    }

    #[test]
    fn removal_that_breaks_quorum_is_refused() {
        // m3 down: removing healthy m1 leaves m2 alone of {m2, m3}, below a quorum of 2.
        is_refused(check_remove(&three(down(3)), 1, false), "below the quorum of 2");
        // Even with m1 already broken (so "healthy" is not the reason): 5 members, 2 down.
        let r = report(vec![
            (member(1, false), up(1, 2, 100, false)),
            (member(2, false), up(2, 2, 100, false)),
            (member(3, false), up(3, 2, 100, false)),
            (member(4, false), down(4)),
            (member(5, false), down(5)),
        ]);
        assert!(check_remove(&r, 4, false).is_ok(), "4 voters after, 3 healthy, quorum 3");
        let mut r2 = r;
        r2.statuses[2] = down(3);
        is_refused(check_remove(&r2, 4, false), "the cluster has no quorum now");
    }

    #[test]
    fn learners_do_not_count_for_quorum() {
        let r = report(vec![(member(1, false), up(1, 1, 100, false)), (member(2, true), down(2))]);
        let plan = check_remove(&r, 2, false).unwrap();
        assert_eq!((plan.voters_after, plan.quorum_after), (1, 1));
        is_refused(check_remove(&r, 1, true), "last voting member");
    }

    #[test]
    fn unknown_member_is_a_usage_error() {
        assert!(matches!(check_remove(&three(down(3)), 9, true), Err(ClientError::Config(_))));
        assert!(matches!(check_promote(&three(down(3)), 9), Err(ClientError::Config(_))));
    }

    #[test]
    fn promote_only_a_caught_up_learner() {
        let mut r = three(down(3));
        r.members[2].is_learner = true;
        is_refused(check_promote(&r, 3), "does not answer");
        r.statuses[2] = up(3, 1, 1000, true);
        r.statuses[0] = up(1, 1, 1000 + PROMOTE_MAX_LAG + 1, false);
        is_refused(check_promote(&r, 3), "entries behind");
        r.statuses[2] = up(3, 1, 1000, true);
        r.statuses[0] = up(1, 1, 1000 + PROMOTE_MAX_LAG, false);
        let p = check_promote(&r, 3).unwrap();
        assert_eq!((p.learner_applied, p.leader_applied), (1000, 1000 + PROMOTE_MAX_LAG));
        is_refused(check_promote(&r, 2), "already a voting member");
        // No leader that answers: nothing to compare with.
        r.statuses[0] = down(1);
        r.statuses[1] = up(2, 1, 1000, false);
        is_refused(check_promote(&r, 3), "no leader answered");
    }

    #[test]
    fn add_checks_urls_names_and_quorum() {
        let healthy3 = three(up(3, 1, 100, false));
        assert!(
            check_add(&healthy3, "m4", &["http://127.0.0.14:2380".into()], false, false).is_ok()
        );
        is_refused(
            check_add(&healthy3, "m4", &["http://127.0.0.13:2380".into()], true, false),
            "already belongs",
        );
        is_refused(
            check_add(&healthy3, "m2", &["http://127.0.0.14:2380".into()], true, false),
            "named m2 exists",
        );
        assert!(matches!(
            check_add(&healthy3, "m4", &["127.0.0.14".into()], true, false),
            Err(ClientError::Config(_))
        ));
        // 3 voters, 2 healthy: a fourth voter makes the quorum 3 before it starts.
        let degraded = three(down(3));
        is_refused(
            check_add(&degraded, "m4", &["http://127.0.0.14:2380".into()], false, false),
            "--learner",
        );
        assert!(check_add(&degraded, "m4", &["http://127.0.0.14:2380".into()], true, false).is_ok());
        assert_eq!(
            check_add(&degraded, "m4", &["http://127.0.0.14:2380".into()], false, true)
                .unwrap()
                .warnings
                .len(),
            1
        );
    }

    #[test]
    fn defrag_goes_followers_first_leader_last() {
        let r = report(vec![
            (member(1, false), up(1, 2, 100, false)),
            (member(2, false), up(2, 2, 100, false)),
            (member(3, true), up(3, 2, 100, true)),
        ]);
        assert_eq!(defrag_order(&r).unwrap(), vec![0, 2, 1]);
        is_refused(defrag_order(&three(down(3))), "does not answer");
    }
}
