//! `node join`: the "grow back" half of recovering from quorum loss, and the on-node half of
//! a member replacement. On a node whose etcd is (or was) a member of an old cluster, it
//! makes that etcd a member of the cluster a restored member runs:
//!
//! 1. park the node (`node park`) and move the old data dir aside;
//! 2. add this member as a learner (a plain member where the server refuses learners);
//! 3. rewrite etcd's manifest: `--initial-cluster-state=existing`, the full `--initial-cluster`;
//! 4. unpark (the kubelet starts etcd, which fetches the data from the leader);
//! 5. wait until the learner has caught up with the leader, then promote it;
//! 6. wait until every member is healthy, then until this node's API server is ready.
//!
//! Every step looks first whether it is done already, so running the command again after a
//! crash (or a timeout) goes on where it stopped. Nothing is deleted: the old data dir stays
//! beside the new one, and the manifest's previous version is kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcdguard_client::{ConnectFlags, Member, MembersReport, Session, PROMOTE_MAX_LAG};
use etcdguard_node::park::{Park, ParkRequest, Unpark};
use etcdguard_node::quorum::{replace_manifest, rewrite_for_join};
use etcdguard_node::{port_open, Ownership};

use crate::error::{client_error, node_error, Error, Kind, Result};

/// The environment variable of the test-only failpoint: `join-after-add` makes the process
/// exit (code 86) right after the member was added, as a crash there would. Never set it
/// outside tests.
pub const FAILPOINT_ENV: &str = "ETCDGUARD_FAILPOINT";

/// The flags of `node join`.
pub struct JoinOptions {
    /// Where the restored member (any member of the cluster to join) answers.
    pub connect: ConnectFlags,
    /// The kubelet's static pod manifests dir.
    pub manifests_dir: PathBuf,
    /// etcd's manifest, when it is neither etcd.yaml nor etcd-pod.yaml.
    pub etcd_manifest: Option<PathBuf>,
    /// This member's name [default: the manifest's --name].
    pub name: Option<String>,
    /// This member's peer URLs [default: the manifest's --initial-advertise-peer-urls].
    pub peer_urls: Option<String>,
    pub dry_run: bool,
    /// Bound for each wait (pods down, etcd up, learner caught up, cluster healthy).
    pub wait_timeout: Duration,
    /// This node's name and IP, for manifest values from `valueFrom.fieldRef`.
    pub node: etcdguard_node::NodeFacts,
}

/// What `node join` does, as it happens.
pub enum JoinEvent<'a> {
    Note(&'a str),
    /// The plan, before anything is changed.
    Planned {
        name: &'a str,
        peer_urls: &'a [String],
        steps: &'a [String],
    },
}

/// How a join that did not fail ended.
pub enum JoinOutcome {
    DryRun,
    Joined(Joined),
}

pub struct Joined {
    pub name: String,
    pub id: u64,
    /// Added as a plain (voting) member because the server refused learners.
    pub without_learner: bool,
    pub members: usize,
    pub endpoints: Vec<String>,
    /// Where the old data dir went, when this run moved it.
    pub old_data_dir: Option<PathBuf>,
    pub steps: Vec<(String, Duration)>,
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

fn ours<'a>(report: &'a MembersReport, peer_urls: &[String]) -> Option<(usize, &'a Member)> {
    report
        .members
        .iter()
        .enumerate()
        .find(|(_, m)| m.peer_urls.iter().any(|p| peer_urls.iter().any(|u| same_url(p, u))))
}

/// `--initial-cluster` for a member joining: every member's name=peerURL, this member under
/// `name`, members added but not started yet under a placeholder (etcd matches by URL).
fn initial_cluster(
    report: &MembersReport,
    own_id: Option<u64>,
    name: &str,
    peer_urls: &[String],
) -> String {
    let mut parts = Vec::new();
    let mut seen_own = false;
    for m in &report.members {
        let n = if Some(m.id) == own_id {
            seen_own = true;
            name.to_string()
        } else if m.name.is_empty() {
            format!("unstarted-{:x}", m.id)
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            parts.push(format!("{n}={u}"));
        }
    }
    if !seen_own {
        parts.extend(peer_urls.iter().map(|u| format!("{name}={u}")));
    }
    parts.join(",")
}

fn refused(msg: impl Into<String>) -> Error {
    Error::new(Kind::Refused, msg)
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

fn aside(p: &Path, stamp: &str) -> PathBuf {
    let mut n = p.file_name().unwrap_or_default().to_os_string();
    n.push(format!(".etcdguard-{stamp}"));
    p.with_file_name(n)
}

/// Runs `node join`. A refusal or an unreachable cluster changes nothing; a failure later
/// leaves the node where it stopped, and running the command again goes on from there.
pub fn join_node(opts: &JoinOptions, on: &mut dyn FnMut(JoinEvent<'_>)) -> Result<JoinOutcome> {
    let stamp = stamp();
    let park_req = ParkRequest {
        manifests_dir: opts.manifests_dir.clone(),
        etcd_manifest: opts.etcd_manifest.clone(),
        stamp: stamp.clone(),
        wait_timeout: opts.wait_timeout,
        node: opts.node.clone(),
    };
    let park = Park::build(&park_req).map_err(node_error)?;
    let etcd = park.etcd.clone();
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => etcd.resolved("name", &etcd.name, "--name").map_err(node_error)?.to_string(),
    };
    let peer_list = match (&opts.peer_urls, &etcd.initial_advertise_peer_urls) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => etcd.resolved("initial-advertise-peer-urls", u, "--peer-urls").map_err(node_error)?.to_string(),
        (None, None) => return Err(Error::usage(format!("{} sets no --initial-advertise-peer-urls; give this member's peer URL with --peer-urls", etcd.manifest.display()))),
    };
    let peer_urls: Vec<String> =
        peer_list.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();

    // The cluster first: an unreachable or refusing cluster must leave this node untouched.
    let session = crate::backup::connect(&opts.connect, &mut |n| on(JoinEvent::Note(n)))?;
    let report = session.members().map_err(|e| {
        client_error(e).context("the cluster to join does not answer; nothing was changed").with_hint(
            "give --endpoints the client URL of the member restored with `node restore --new-cluster` (and its TLS files), and check that it serves",
        )
    })?;
    if let Some(m) = report.members.iter().find(|m| {
        m.name == name && !m.peer_urls.iter().any(|p| peer_urls.iter().any(|u| same_url(p, u)))
    }) {
        return Err(refused(format!(
            "the cluster has a member named {name} ({:x}) with other peer URLs ({}); remove it first (`etcdguard cluster member remove {:x}`), or give this member another --name; nothing was changed",
            m.id,
            m.peer_urls.join(","),
            m.id
        )));
    }
    let existing = ours(&report, &peer_urls).map(|(_, m)| m.clone());
    // A started member with this node's peer URL but another name is not this member (an
    // old member not removed, or a wrong --name): reusing it would skip the park and the
    // fresh data dir.
    if let Some(m) = existing.as_ref().filter(|m| !m.name.is_empty() && m.name != name) {
        return Err(refused(format!(
            "the cluster's member {} ({:x}) has this node's peer URL ({}) but this node's member name is {name}; remove it first (`etcdguard cluster member remove {:x}`) if it is an old member, or give --name {} if that is this node's name; nothing was changed",
            m.name,
            m.id,
            m.peer_urls.join(","),
            m.id,
            m.name
        )));
    }
    // A member that has started publishes its name: then this node's data dir is already the
    // new cluster's and must not be moved aside again.
    let started = existing.as_ref().is_some_and(|m| !m.name.is_empty());
    if existing.is_none() {
        // The guard `cluster member add --learner` uses, now, before the node is touched.
        etcdguard_client::check_add(&report, &name, &peer_urls, true, false)
            .map_err(client_error)?;
    }
    let data_dir = etcd.data_dir.clone();
    let move_data = !started
        && data_dir.exists()
        && std::fs::read_dir(&data_dir).map(|mut d| d.next().is_some()).unwrap_or(true);
    let old_data_dir = move_data.then(|| aside(&data_dir, &stamp));
    let old_wal_dir =
        etcd.wal_dir.as_ref().filter(|w| !started && w.exists()).map(|w| aside(w, &stamp));

    let mut steps = Vec::new();
    if started {
        steps.push(format!("member {name} has started in the cluster already: its data dir {} stays, the node is not parked", data_dir.display()));
    } else {
        steps.extend(park.steps().into_iter().map(|s| format!("park: {s}")));
        match &old_data_dir {
            Some(old) => steps.push(format!(
                "move the old data dir {} to {}",
                data_dir.display(),
                old.display()
            )),
            None => steps.push(format!(
                "(the data dir {} is empty or missing: nothing to move aside)",
                data_dir.display()
            )),
        }
        if let (Some(w), Some(old)) = (&etcd.wal_dir, &old_wal_dir) {
            steps.push(format!("move the old WAL dir {} to {}", w.display(), old.display()));
        }
    }
    match &existing {
        Some(m) => steps.push(format!("{name} ({}) is a {} of the cluster already: reuse member {:x}", peer_urls.join(","), if m.is_learner { "learner" } else { "voting member" }, m.id)),
        None => steps.push(format!("add {name} ({}) as a learner through {} (a plain member if the server refuses learners)", peer_urls.join(","), report.from)),
    }
    let planned_cluster =
        initial_cluster(&report, existing.as_ref().map(|m| m.id), &name, &peer_urls);
    // A manifest whose form cannot be rewritten is refused now, before the node is touched.
    let live = &park.etcd_manifest;
    let current = std::fs::read_to_string(live)
        .map_err(|e| Error::failure(format!("reading {}: {e}", live.display())))?;
    let planned_edit = rewrite_for_join(&current, &planned_cluster).map_err(|e| {
        Error::usage(format!(
            "{}: {e}; set --initial-cluster-state=existing and --initial-cluster={planned_cluster} by hand, then run again; nothing was changed",
            live.display()
        ))
    })?;
    match &planned_edit.note {
        Some(n) => steps.push(format!("rewrite {} where needed (a copy is kept): initial cluster state existing; {n}", live.display())),
        None => steps.push(format!("rewrite {} (a copy is kept): --initial-cluster-state=existing --initial-cluster={planned_cluster}", live.display())),
    }
    steps.push(format!(
        "unpark: the kubelet starts etcd; wait (at most {} s) until it serves on {}",
        opts.wait_timeout.as_secs(),
        etcd.client_addrs.join(", ")
    ));
    steps.push(format!("wait (at most {} s) until the learner's applied index is within {PROMOTE_MAX_LAG} of the leader's, then promote it", opts.wait_timeout.as_secs()));
    steps.push(format!(
        "wait (at most {} s) until every member is healthy{}",
        opts.wait_timeout.as_secs(),
        park.apiserver
            .as_ref()
            .map(|a| format!(", then until the API server on {} is ready", a.addr))
            .unwrap_or_default()
    ));
    on(JoinEvent::Planned { name: &name, peer_urls: &peer_urls, steps: &steps });
    if opts.dry_run {
        return Ok(JoinOutcome::DryRun);
    }

    let started_at = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut note = |line: &str| on(JoinEvent::Note(line));
    let mark = |what: &str, timings: &mut Vec<(String, Duration)>| {
        timings.push((what.to_string(), started_at.elapsed()))
    };

    // 1. Park, move the old data aside.
    if !started {
        note("park etcd and the API server on this node");
        park.execute(&mut |l| note(l)).map_err(node_error)?;
        let ownership = match data_dir.exists() {
            true => Some(Ownership::of(&data_dir).map_err(|e| {
                Error::failure(format!("reading the owner of {}: {e}", data_dir.display()))
            })?),
            false => etcd.run_as_user.map(|uid| Ownership {
                uid,
                gid: etcd.run_as_group.unwrap_or(uid),
                mode: 0o700,
                selinux: None,
            }),
        };
        for (from, to) in [
            (Some(&data_dir), old_data_dir.as_ref()),
            (etcd.wal_dir.as_ref(), old_wal_dir.as_ref()),
        ] {
            if let (Some(from), Some(to)) = (from, to) {
                note(&format!("move {} to {}", from.display(), to.display()));
                std::fs::rename(from, to).map_err(|e| Error::failure(format!("moving {} aside: {e}; the node stays parked (`etcdguard node unpark` brings it back as it was)", from.display())))?;
            }
        }
        // An empty data dir with the old one's owner and mode: etcd running as another user
        // (GKE on-prem's 2001) must be able to write it.
        if !data_dir.exists() {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| Error::failure(format!("creating {}: {e}", data_dir.display())))?;
            if let Some(o) = &ownership {
                o.apply_tree(&data_dir).map_err(|e| {
                    Error::failure(format!("giving {} {}: {e}", data_dir.display(), o.describe()))
                })?;
            }
        }
        mark("parked, old data aside", &mut timings);
    }

    // 2. Add (or reuse) the member.
    let mut without_learner = false;
    let id = match &existing {
        Some(m) => {
            note(&format!("{name} is member {:x} already; reusing it", m.id));
            m.id
        }
        None => {
            let added = match session.member_add(&name, &peer_urls, true, false) {
                Ok(a) => a,
                Err(e) if matches!(e.kind(), etcdguard_client::ErrorKind::Refused) && e.to_string().contains("learner") => {
                    note(&format!("the cluster refused a learner ({e}); adding {name} as a voting member instead: the cluster counts it for quorum at once, so it is started right away"));
                    without_learner = true;
                    session.member_add(&name, &peer_urls, false, true).map_err(|e| client_error(e).context("adding the member"))?
                }
                Err(e) => return Err(client_error(e).context("adding the member (the node stays parked; run `node join` again, or `node unpark` to give up)")),
            };
            note(&format!(
                "added {name} as {} {:x}",
                if without_learner { "member" } else { "learner" },
                added.id
            ));
            added.id
        }
    };
    mark("member added", &mut timings);
    if std::env::var(FAILPOINT_ENV).as_deref() == Ok("join-after-add") {
        std::process::exit(86);
    }

    // 3. The manifest, from a fresh member list (other members may have joined meanwhile).
    let report = session
        .members()
        .map_err(|e| client_error(e).context("listing the members after the add"))?;
    let full = initial_cluster(&report, Some(id), &name, &peer_urls);
    let unpark = Unpark::build(&park_req).map_err(node_error)?;
    let manifest = unpark.as_ref().map_or(park.etcd_manifest.clone(), |u| u.etcd_manifest.clone());
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| Error::failure(format!("reading {}: {e}", manifest.display())))?;
    let edit = rewrite_for_join(&text, &full).map_err(|e| Error::usage(format!("{}: {e}; set --initial-cluster-state=existing and --initial-cluster={full} by hand, then run again", manifest.display())))?;
    match edit.text {
        Some(new_text) => {
            let copies = opts
                .manifests_dir
                .parent()
                .unwrap_or(Path::new("/"))
                .join("etcdguard-manifest-copies");
            let copy =
                replace_manifest(&manifest, &new_text, &copies, &stamp).map_err(node_error)?;
            note(&format!(
                "rewrote {} (the previous version is {})",
                manifest.display(),
                copy.display()
            ));
        }
        None => note(&format!("{} joins the existing cluster already", manifest.display())),
    }
    if let Some(n) = &edit.note {
        note(n);
    }

    // 4. Start etcd.
    let deadline = Instant::now() + opts.wait_timeout;
    match &unpark {
        Some(u) => {
            note(&format!("unpark: move the manifests back to {}", u.manifests_dir.display()));
            u.move_back().map_err(node_error)?;
            u.wait_etcd(deadline).map_err(node_error)?;
        }
        None => {
            while !etcd.client_addrs.iter().any(|a| port_open(a)) {
                if Instant::now() > deadline {
                    return Err(Error::new(Kind::Unreachable, format!("etcd did not start on {} within {} s; check the kubelet and etcd logs, then run again", etcd.client_addrs.join(", "), opts.wait_timeout.as_secs())));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    note(&format!("etcd serves on {}", etcd.client_addrs.join(", ")));
    mark("etcd started", &mut timings);

    // 5. Caught up, then promoted.
    if !without_learner {
        promote_when_caught_up(&session, id, &name, opts.wait_timeout, &mut note)?;
        mark("learner promoted", &mut timings);
    }

    // 6. Every member healthy, then this node's API server.
    let endpoints = wait_healthy(&session, opts.wait_timeout)?;
    note(&format!("every member is healthy ({})", endpoints.join(", ")));
    mark("cluster healthy", &mut timings);
    if let Some(u) = &unpark {
        if let Some(how) =
            u.wait_apiserver(Instant::now() + opts.wait_timeout).map_err(node_error)?
        {
            note(&format!("API server ready ({how})"));
            mark("API server ready", &mut timings);
        }
    }
    Ok(JoinOutcome::Joined(Joined {
        name,
        id,
        without_learner,
        members: endpoints.len(),
        endpoints,
        old_data_dir,
        steps: timings,
    }))
}

/// Waits until the learner `id` answers within [`PROMOTE_MAX_LAG`] of the leader's applied
/// index, then promotes it (retrying while etcd says it is not in sync yet).
fn promote_when_caught_up(
    session: &Session,
    id: u64,
    name: &str,
    timeout: Duration,
    note: &mut dyn FnMut(&str),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last;
    let mut said = false;
    loop {
        match session.members() {
            Ok(report) => match report.members.iter().position(|m| m.id == id) {
                None => return Err(Error::failure(format!("member {id:x} ({name}) is no longer in the cluster; someone removed it: run `node join` again"))),
                Some(i) if !report.members[i].is_learner => {
                    note(&format!("{name} ({id:x}) is a voting member"));
                    return Ok(());
                }
                Some(i) => {
                    let leader = report.statuses.iter().filter_map(|s| s.as_ref().ok()).find(|s| s.is_leader()).map(|s| s.applied());
                    match (&report.statuses[i], leader) {
                        (Ok(s), Some(l)) if s.applied() + PROMOTE_MAX_LAG >= l => match session.member_promote(id) {
                            Ok(p) => {
                                note(&format!("promoted {name} ({id:x}): applied index {} of the leader's {}", p.learner_applied, p.leader_applied));
                                return Ok(());
                            }
                            Err(e) => last = format!("promote refused: {e}"),
                        },
                        (Ok(s), Some(l)) => {
                            last = format!("learner at applied index {}, the leader at {l}", s.applied());
                            if !said {
                                note(&format!("waiting for {name} to catch up ({last})"));
                                said = true;
                            }
                        }
                        (Ok(_), None) => last = "no leader answers".into(),
                        (Err(e), _) => last = format!("the learner does not answer yet ({e})"),
                    }
                }
            },
            Err(e) => last = format!("the member list: {e}"),
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                Kind::Unreachable,
                format!("learner {name} ({id:x}) was not promoted within {} s ({last}); check its etcd log, then run `node join` again to go on", timeout.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until every member answers a linearizable read (`cluster health --cluster`); the
/// members' client URLs.
fn wait_healthy(session: &Session, timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match session.members() {
            Ok(report) => {
                let urls: Vec<String> = report
                    .statuses
                    .iter()
                    .zip(&report.members)
                    .map(|(s, m)| {
                        s.as_ref()
                            .map(|s| s.endpoint.clone())
                            .unwrap_or_else(|_| m.client_urls.first().cloned().unwrap_or_default())
                    })
                    .collect();
                let learners = report.members.iter().filter(|m| m.is_learner).count();
                let bad: Vec<String> = if urls.iter().any(|u| u.is_empty()) {
                    vec!["a member has not started yet".into()]
                } else {
                    session
                        .health(&urls)
                        .into_iter()
                        .filter_map(|h| h.result.err().map(|e| format!("{}: {e}", h.endpoint)))
                        .collect()
                };
                if bad.is_empty() && learners == 0 {
                    return Ok(urls);
                }
                if learners > 0 {
                    format!("{learners} learner(s) not promoted yet")
                } else {
                    bad.join("; ")
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(Error::new(Kind::Unreachable, format!("the cluster was not healthy within {} s ({last}); run `etcdguard cluster health --cluster`, then `node join` again to go on", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, peer: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn initial_cluster_names_this_member_and_placeholders() {
        let report = MembersReport {
            from: "x".into(),
            members: vec![
                member(1, "m1", "http://a:1"),
                member(2, "", "http://b:1"),
                member(3, "", "http://c:1"),
            ],
            statuses: vec![],
        };
        assert_eq!(
            initial_cluster(&report, Some(3), "m3", &["http://c:1".into()]),
            "m1=http://a:1,unstarted-2=http://b:1,m3=http://c:1"
        );
        let report = MembersReport {
            from: "x".into(),
            members: vec![member(1, "m1", "http://a:1")],
            statuses: vec![],
        };
        assert_eq!(
            initial_cluster(&report, None, "m2", &["http://b:1".into()]),
            "m1=http://a:1,m2=http://b:1"
        );
    }
}
