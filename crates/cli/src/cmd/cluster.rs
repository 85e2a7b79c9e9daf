//! `etcdguard cluster health|members|member|defrag|alarm|hashkv`.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_client::{ClientError, ErrorKind, MemberStatus};
use etcdguard_storage::status::humanize_bytes;
use serde_json::json;

use crate::args::{client_failure, print_json, ConnArgs};
use crate::cmd::table;
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Check that each endpoint serves: a linearizable read commits through raft and no alarm
    /// (NOSPACE, CORRUPT) is raised. Exits non-zero if any endpoint is unhealthy.
    ///
    /// Example: etcdguard cluster health --endpoints https://10.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    Health(HealthArgs),
    /// List the members with their role, version, DB size, revision and raft indexes, as
    /// each member reports itself: what to check before and after a backup or a member
    /// replacement.
    ///
    /// Example: etcdguard cluster members -w json
    Members(MembersArgs),
    /// Replace a member safely: remove, add (as a learner), promote — etcdctl's arguments,
    /// with guards against losing quorum.
    ///
    /// Replacing a failed member, in this order:
    ///   1. etcdguard cluster members              note the failed member's hex ID
    ///   2. etcdguard cluster member remove ID     refused while it is healthy, or when the
    ///                                             others would not keep a quorum
    ///   3. etcdguard cluster member add NAME --peer-urls https://NEW:2380 --learner
    ///   4. on the new node: empty data dir, start etcd with the printed ETCD_INITIAL_*
    ///      values (--initial-cluster-state existing)
    ///   5. etcdguard cluster members              wait until its applied index is close
    ///                                             to the leader's
    ///   6. etcdguard cluster member promote ID
    ///
    /// Refusals change nothing and exit with 17.
    #[command(subcommand, verbatim_doc_comment)]
    Member(MemberCommand),
    /// Defragment every member, one at a time: followers first, the leader last, the
    /// cluster's health checked between members, freed space reported per member.
    ///
    /// Defragmenting blocks reads and writes on that member while it runs (seconds per GiB),
    /// so the leader goes last and the next member waits until all are healthy again. Refused
    /// when a member is down or unhealthy. After a NOSPACE alarm: compact, defrag, then
    /// `cluster alarm disarm`.
    ///
    /// Example: etcdguard cluster defrag --endpoints https://10.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    Defrag(DefragArgs),
    /// List or disarm alarms (NOSPACE, CORRUPT).
    ///
    /// A NOSPACE alarm makes etcd refuse writes. Free space first (compact old revisions,
    /// `cluster defrag`, or raise --quota-backend-bytes), then `cluster alarm disarm`; disarming
    /// without freeing space raises it again at the next write.
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Hash every member's key-value history (Maintenance.HashKV) at one revision and check
    /// that they agree: equal hashes over equal revision ranges mean equal data.
    ///
    /// Asks every client URL of every member, as `etcdctl endpoint hashkv --cluster` does, and
    /// prints its lines (`endpoint, hash, hash_revision`; no hash_revision from an etcd that
    /// reports none: before 3.6). Without --rev each member hashes
    /// its current revision; members that answer at different revisions (writes in flight)
    /// are asked again at the smallest. Exits 0 when all agree; 1 when the hashes differ
    /// (the members hold different data), the ranges cannot be compared, or a member does
    /// not answer (its own exit code when all fail alike).
    ///
    /// Example: etcdguard cluster hashkv --rev 120000 --endpoints https://10.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    Hashkv(HashkvArgs),
    /// After etcd is restored: bring the Kubernetes side back. Waits for the API server's
    /// /readyz, then lists — and with --apply does — what a restore leaves to do:
    ///
    ///   - pending kubelet CSRs (client and serving signers), approved only when the
    ///     requestor is the node the request names (or a bootstrap token for a Node that
    ///     exists or a host in --hosts) and a serving request's SANs are the Node's addresses;
    ///     every other one is skipped with the reason
    ///   - Nodes of control-plane hosts not in --hosts, their node Lease and their entries in
    ///     the apiserver's endpoints (default/kubernetes): removed only when named in
    ///     --remove-nodes
    ///   - OpenShift: a fresh spec.forceRedeploymentReason on the etcd, kube-apiserver,
    ///     kube-controller-manager and kube-scheduler operators, then waits until every node
    ///     runs the new revision
    ///   - every Node Ready (waited for with --apply, up to --wait): the Ready condition
    ///     and a kubelet heartbeat within --heartbeat-grace, since a restore brings back the
    ///     backup's conditions; CSRs that arrive during the wait are judged and approved too
    ///
    /// Each phase is timed (the Phases table; `phases` in -w json).
    ///
    /// HyperShift (with the management cluster's kubeconfig): --hosted-cluster NS/NAME
    /// --restore-snapshot-url-file FILE writes the URL of `backup url` into the HostedCluster's
    /// managed etcd, paused and resumed, with the previous values put back on failure.
    ///
    /// Without --apply nothing changes (a dry run); exit 0. With --apply it exits 1 when
    /// something is still to do at the end (listed), 17 when --remove-nodes names a Node that
    /// is not a gone host (nothing changed).
    ///
    /// Runbook: `node restore` (one node) or `cluster recover` (quorum loss), then:
    ///   etcdguard cluster finish --hosts cp-1,cp-2,cp-3
    ///   etcdguard cluster finish --hosts cp-1,cp-2,cp-3 --apply --remove-nodes cp-old --wait 15m
    ///   etcdguard cluster finish --hosts cp-1,cp-2,cp-3 --apply --compare-with snap.db \
    ///       --endpoints https://cp-1:2379 --cacert ca.crt --cert client.crt --key client.key
    ///   etcdguard backup url latest --repo s3://b/p > url.txt
    ///   etcdguard cluster finish --kubeconfig mgmt.kubeconfig --hosted-cluster clusters/prod \
    ///       --restore-snapshot-url-file url.txt --apply
    #[command(verbatim_doc_comment)]
    Finish(crate::cmd::finish::FinishArgs),
    /// Recover a control plane that lost quorum, on every control-plane host at once, over SSH.
    ///
    /// Runs the recovery `node park` / `node restore --new-cluster` / `node join` describe, on
    /// each host through the system's ssh (BatchMode=yes, StrictHostKeyChecking=yes: host keys
    /// are always checked, against --known-hosts when given), with the etcdguard installed on
    /// each host (--remote-binary). Nothing secret is put on a command line.
    ///   1. preflight on every host (`node preflight`): the same etcdguard version everywhere,
    ///      etcd's manifest found and read, free space for the snapshot, which members answer;
    ///      refused (exit 17) while a linearizable read commits anywhere (the cluster has
    ///      quorum) unless --force; the snapshot checked here (or the backup verified from the
    ///      restore host). The plan is printed; --dry-run stops here, changing nothing;
    ///   2. copy the snapshot to the restore host (--remote-dir, 0600) and check it there;
    ///   3. `node park` on every host; 4. `node restore --new-cluster` on the restore host
    ///      (--restore-on, default the first host) and wait until it is healthy;
    ///   5. `node join` each other host, one at a time; 6. wait until every member is healthy.
    ///      restore and join wait for their host's API server (/readyz) when it has a manifest.
    ///
    /// Each step's start and end are printed with their times, and the plan's state is kept
    /// in --state-file: after a kill, `--resume` goes on at the first unfinished step. When a
    /// step fails, every host a step touched is rolled back (`node rollback`: parked, its
    /// original data dir and etcd manifest put back, unparked when it ran before), what was
    /// rolled back is printed, and the exit code is the failed step's.
    ///
    /// Examples:
    ///   etcdguard cluster recover --hosts cp1,cp2,cp3 --snapshot /backups/etcd.db --dry-run
    ///   etcdguard cluster recover --hosts cp1,cp2,cp3 --snapshot /backups/etcd.db --ssh-user root
    ///   etcdguard cluster recover --hosts cp1,cp2,cp3 --backup latest --repo s3://etcd-backups/prod \
    ///       --restore-on cp2 --known-hosts ~/.ssh/known_hosts_prod
    ///   etcdguard cluster recover --hosts cp1,cp2,cp3 --resume
    #[command(verbatim_doc_comment)]
    Recover(crate::cmd::recover::RecoverArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum HashkvFormat {
    /// etcdctl's lines: endpoint, hash, hash_revision
    Simple,
    Json,
}

#[derive(Args)]
pub struct HashkvArgs {
    /// Hash the history up to this revision (default: each member's current revision).
    #[arg(long, value_name = "REV", value_parser = clap::value_parser!(i64).range(1..))]
    pub rev: Option<i64>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = HashkvFormat::Simple)]
    pub write_out: HashkvFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Remove a member by its hex ID (as `cluster members` prints it).
    ///
    /// Refused, changing nothing, when the cluster has no quorum now, when the healthy voting
    /// members left would be fewer than the quorum of the smaller cluster, or when the member
    /// itself is healthy (stop it first when you replace a working node). --force overrides
    /// the last two.
    ///
    /// Next step of a replacement: `cluster member add NAME --peer-urls URL --learner`.
    Remove(MemberRemoveArgs),
    /// Add a member; print the ETCD_INITIAL_* settings the new member must start with.
    ///
    /// Prefer --learner: a learner does not count for quorum until it is promoted, so the
    /// cluster keeps accepting writes while the new member starts and catches up. Adding a
    /// voting member that the healthy members could not out-vote is refused (--force
    /// overrides). Learners need etcd 3.4 or newer.
    ///
    /// Next steps: start etcd on the new node with an empty data dir and the printed values,
    /// then `cluster member promote ID` once it has caught up.
    Add(MemberAddArgs),
    /// Promote a learner to a voting member once it has caught up.
    ///
    /// Refused, changing nothing, when the learner does not answer (not started yet) or its
    /// applied raft index is more than 1000 entries behind the leader's; check with `cluster
    /// members` and retry.
    Promote(MemberPromoteArgs),
}

#[derive(Args)]
pub struct MemberRemoveArgs {
    /// Member ID in hex
    #[arg(value_name = "ID")]
    pub id: String,
    /// Remove even when the member is healthy or the removal leaves no quorum
    #[arg(long)]
    pub force: bool,
    /// Run the safety checks and print what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct MemberAddArgs {
    /// The new member's name (its --name)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The new member's peer URLs, comma-separated (its --initial-advertise-peer-urls)
    #[arg(long, value_delimiter = ',', value_name = "URLS", required = true)]
    pub peer_urls: Vec<String>,
    /// Add as a learner (non-voting until promoted)
    #[arg(long)]
    pub learner: bool,
    /// Add a voting member even when the cluster cannot keep its quorum until it starts
    #[arg(long)]
    pub force: bool,
    /// Run the safety checks and print what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct MemberPromoteArgs {
    /// Learner ID in hex
    #[arg(value_name = "ID")]
    pub id: String,
    /// Run the safety checks and print what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct DefragArgs {
    /// Every member of the cluster (the default; accepted for etcdctl compatibility)
    #[arg(long)]
    pub cluster: bool,
    /// Time allowed for one member's defragmentation, Go syntax
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub member_timeout: String,
    /// Run the safety checks and print what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand)]
pub enum AlarmCommand {
    /// List raised alarms (prints nothing when there are none).
    List(AlarmArgs),
    /// Disarm every raised alarm; prints the ones disarmed.
    Disarm(AlarmArgs),
}

#[derive(Args)]
pub struct AlarmArgs {
    #[command(flatten)]
    pub out: crate::args::WriteOut,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ClusterFormat {
    Table,
    Json,
}

#[derive(Args)]
pub struct HealthArgs {
    /// Check every member's client URL from the member list instead of just --endpoints.
    #[arg(long)]
    pub cluster: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = ClusterFormat::Table)]
    pub write_out: ClusterFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct MembersArgs {
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = ClusterFormat::Table)]
    pub write_out: ClusterFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Health(a) => health(a),
        ClusterCommand::Members(a) => members(a),
        ClusterCommand::Member(MemberCommand::Remove(a)) => member_remove(a),
        ClusterCommand::Member(MemberCommand::Add(a)) => member_add(a),
        ClusterCommand::Member(MemberCommand::Promote(a)) => member_promote(a),
        ClusterCommand::Defrag(a) => defrag(a),
        ClusterCommand::Alarm(AlarmCommand::List(a)) => alarm_list(a),
        ClusterCommand::Alarm(AlarmCommand::Disarm(a)) => alarm_disarm(a),
        ClusterCommand::Hashkv(a) => hashkv(a),
        ClusterCommand::Finish(a) => crate::cmd::finish::run(a),
        ClusterCommand::Recover(a) => crate::cmd::recover::run(a),
    }
}

fn hashkv(args: HashkvArgs) -> Result<()> {
    use etcdguard_client::Agreement;
    let session = args.conn.session()?;
    let report = session.cluster_hash_kv(args.rev).map_err(client_failure)?;
    let verdict = etcdguard_client::agreement(&report.hashes);
    match args.write_out {
        HashkvFormat::Simple => {
            for (endpoint, r) in &report.hashes {
                match r {
                    // etcd before 3.6 reports no hash revision, and its etcdctl prints none.
                    Ok(h) if h.hash_revision == 0 => println!("{endpoint}, {}", h.hash),
                    Ok(h) => println!("{endpoint}, {}, {}", h.hash, h.hash_revision),
                    Err(e) => eprintln!(
                        "Failed to get the hash of endpoint {endpoint} ({})",
                        strip_endpoint(&e.to_string(), endpoint)
                    ),
                }
            }
        }
        HashkvFormat::Json => {
            let members: Vec<_> = report
                .hashes
                .iter()
                .map(|(endpoint, r)| match r {
                    Ok(h) => json!({
                        "endpoint": endpoint,
                        "memberID": format!("{:x}", h.member_id),
                        "hash": h.hash,
                        "hashRevision": h.hash_revision,
                        "compactRevision": h.compact_revision,
                    }),
                    Err(e) => json!({"endpoint": endpoint, "error": strip_endpoint(&e.to_string(), endpoint)}),
                })
                .collect();
            println!(
                "{}",
                json!({
                    "members": members,
                    "agree": matches!(verdict, Agreement::Agree { .. }),
                    "rehashedAt": report.rehashed_at,
                })
            );
        }
    }
    if let Some(rev) = report.rehashed_at {
        eprintln!("the members were at different revisions; all hashed again at revision {rev}");
    }
    let failed: Vec<&ClientError> =
        report.hashes.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    if !failed.is_empty() {
        let code = if failed.len() == report.hashes.len()
            && failed.iter().all(|e| e.kind() == ErrorKind::TlsOrAuth)
        {
            Code::TlsOrAuth
        } else if failed.len() == report.hashes.len()
            && failed.iter().all(|e| e.kind() == ErrorKind::Unreachable)
        {
            Code::Unreachable
        } else {
            Code::Failure
        };
        return Err(Failure::new(
            code,
            format!(
                "{} of {} endpoints did not answer; agreement not established",
                failed.len(),
                report.hashes.len()
            ),
        )
        .into());
    }
    match verdict {
        Agreement::Agree { hash, hash_revision, compact_revision } => {
            eprintln!(
                "all {} endpoints agree: hash {hash} of revisions {compact_revision}..={hash_revision}",
                report.hashes.len()
            );
            Ok(())
        }
        Agreement::Differ { hash_revision, groups } => {
            let list: Vec<String> =
                groups.iter().map(|(h, eps)| format!("hash {h} on {}", eps.join(", "))).collect();
            Err(Failure::new(
                Code::Failure,
                format!(
                    "the members hold different data at revision {hash_revision}: {}",
                    list.join("; ")
                ),
            )
            .into())
        }
        Agreement::Incomparable(why) => Err(Failure::new(
            Code::Failure,
            format!("cannot compare: {why}; run again with --rev REV"),
        )
        .into()),
        Agreement::NoAnswer => Err(Failure::new(Code::Failure, "no member answered").into()),
    }
}

fn member_remove(args: MemberRemoveArgs) -> Result<()> {
    let id = etcdguard_client::parse_member_id(&args.id).map_err(client_failure)?;
    let session = args.conn.session()?;
    if args.dry_run {
        let report = session.members().map_err(client_failure)?;
        let plan =
            etcdguard_client::check_remove(&report, id, args.force).map_err(client_failure)?;
        for w in &plan.warnings {
            eprintln!("warning (--force): {w}");
        }
        if args.out.json() {
            return print_json(&removed_json(&plan, true));
        }
        println!(
            "Would remove member {:x} ({}): {} voting members left, {} healthy, quorum {} (dry run: nothing changed)",
            plan.member.id,
            if plan.member.name.is_empty() { "unstarted" } else { &plan.member.name },
            plan.voters_after,
            plan.healthy_voters_after,
            plan.quorum_after
        );
        return Ok(());
    }
    let plan = session.member_remove(id, args.force).map_err(client_failure)?;
    for w in &plan.warnings {
        eprintln!("warning (--force): {w}");
    }
    if args.out.json() {
        return print_json(&removed_json(&plan, false));
    }
    println!(
        "Member {:x} ({}) removed; {} voting members left, {} healthy, quorum {}",
        plan.member.id,
        if plan.member.name.is_empty() { "unstarted" } else { &plan.member.name },
        plan.voters_after,
        plan.healthy_voters_after,
        plan.quorum_after
    );
    eprintln!("next: etcdguard cluster member add NAME --peer-urls URL --learner");
    Ok(())
}

fn member_add(args: MemberAddArgs) -> Result<()> {
    let session = args.conn.session()?;
    if args.dry_run {
        let report = session.members().map_err(client_failure)?;
        let plan = etcdguard_client::check_add(
            &report,
            &args.name,
            &args.peer_urls,
            args.learner,
            args.force,
        )
        .map_err(client_failure)?;
        for w in &plan.warnings {
            eprintln!("warning (--force): {w}");
        }
        if args.out.json() {
            return print_json(&json!({
                "dryRun": true, "name": args.name, "peerURLs": args.peer_urls,
                "isLearner": args.learner, "warnings": plan.warnings,
            }));
        }
        println!(
            "Would add member {} with peer URLs {}{} (dry run: nothing changed)",
            args.name,
            args.peer_urls.join(","),
            if args.learner { " as a learner" } else { " as a voting member" }
        );
        return Ok(());
    }
    let added = session
        .member_add(&args.name, &args.peer_urls, args.learner, args.force)
        .map_err(client_failure)?;
    for w in &added.warnings {
        eprintln!("warning (--force): {w}");
    }
    if args.out.json() {
        return print_json(&json!({
            "dryRun": false, "memberID": format!("{:x}", added.id), "name": added.name,
            "peerURLs": added.peer_urls, "isLearner": added.learner,
            "initialCluster": added.initial_cluster, "initialClusterState": "existing",
            "warnings": added.warnings,
        }));
    }
    println!("Member {:x} added{}", added.id, if added.learner { " as a learner" } else { "" });
    println!();
    println!("ETCD_NAME=\"{}\"", added.name);
    println!("ETCD_INITIAL_CLUSTER=\"{}\"", added.initial_cluster);
    println!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", added.peer_urls.join(","));
    println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    if added.learner {
        eprintln!("next: start etcd on the new node (empty data dir, the values above), wait until it has caught up, then: etcdguard cluster member promote {:x}", added.id);
    } else {
        eprintln!("next: start etcd on the new node now (empty data dir, the values above): the cluster counts it for quorum");
    }
    Ok(())
}

fn member_promote(args: MemberPromoteArgs) -> Result<()> {
    let id = etcdguard_client::parse_member_id(&args.id).map_err(client_failure)?;
    let session = args.conn.session()?;
    if args.dry_run {
        let report = session.members().map_err(client_failure)?;
        let plan = etcdguard_client::check_promote(&report, id).map_err(client_failure)?;
        if args.out.json() {
            return print_json(&promoted_json(&plan, true));
        }
        println!(
            "Would promote member {:x} ({}) to a voting member (applied index {} of the leader's {}; dry run: nothing changed)",
            plan.member.id, plan.member.name, plan.learner_applied, plan.leader_applied
        );
        return Ok(());
    }
    let plan = session.member_promote(id).map_err(client_failure)?;
    if args.out.json() {
        return print_json(&promoted_json(&plan, false));
    }
    println!(
        "Member {:x} ({}) promoted to a voting member (applied index {} of the leader's {})",
        plan.member.id, plan.member.name, plan.learner_applied, plan.leader_applied
    );
    Ok(())
}

fn removed_json(plan: &etcdguard_client::RemovePlan, dry_run: bool) -> serde_json::Value {
    json!({
        "dryRun": dry_run, "memberID": format!("{:x}", plan.member.id), "name": plan.member.name,
        "votersAfter": plan.voters_after, "healthyVotersAfter": plan.healthy_voters_after,
        "quorumAfter": plan.quorum_after, "warnings": plan.warnings,
    })
}

fn promoted_json(plan: &etcdguard_client::PromotePlan, dry_run: bool) -> serde_json::Value {
    json!({
        "dryRun": dry_run, "memberID": format!("{:x}", plan.member.id), "name": plan.member.name,
        "learnerApplied": plan.learner_applied, "leaderApplied": plan.leader_applied,
    })
}

fn defrag(args: DefragArgs) -> Result<()> {
    let limit = etcdguard_client::parse_go_duration(&args.member_timeout)
        .map_err(|e| Failure::new(Code::Usage, format!("--member-timeout: {e}")))?;
    let session = args.conn.session()?;
    if args.dry_run {
        let report = session.members().map_err(client_failure)?;
        let order = etcdguard_client::defrag_order(&report).map_err(client_failure)?;
        if args.out.json() {
            let members: Vec<_> = order
                .iter()
                .map(|&i| {
                    let m = &report.members[i];
                    let status = report.statuses[i].as_ref().ok();
                    json!({
                        "memberID": format!("{:x}", m.id), "name": m.name,
                        "role": status.map(|st| st.role()), "dbSize": status.map(|st| st.db_size),
                    })
                })
                .collect();
            return print_json(&json!({ "dryRun": true, "order": members }));
        }
        println!("Would defragment, one at a time with a health check after each (dry run: nothing changed):");
        for i in order {
            let m = &report.members[i];
            let (role, size) = match &report.statuses[i] {
                Ok(st) => (st.role(), humanize_bytes(st.db_size.max(0) as u64)),
                Err(_) => ("unknown", "?".into()),
            };
            println!("  {:x} ({}, {role}, db {size})", m.id, m.name);
        }
        return Ok(());
    }
    let json_out = args.out.json();
    let mut on_member =
        |m: &etcdguard_client::Member, done: Option<&etcdguard_client::Defragmented>| match done {
            None => eprintln!("defragmenting {:x} ({}) …", m.id, m.name),
            Some(_) if json_out => {}
            Some(d) => println!(
                "Defragmented {:x} ({}, {}) in {:.1}s: {} -> {}, freed {}",
                d.id,
                d.name,
                d.role,
                d.took.as_secs_f64(),
                humanize_bytes(d.size_before.max(0) as u64),
                humanize_bytes(d.size_after.max(0) as u64),
                humanize_bytes(d.freed().max(0) as u64),
            ),
        };
    let done = session.defrag(limit, &mut on_member).map_err(client_failure)?;
    let freed: i64 = done.iter().map(|d| d.freed().max(0)).sum();
    if json_out {
        let members: Vec<_> = done
            .iter()
            .map(|d| {
                json!({
                    "memberID": format!("{:x}", d.id), "name": d.name, "role": d.role,
                    "tookSeconds": d.took.as_secs_f64(), "sizeBefore": d.size_before,
                    "sizeAfter": d.size_after, "freed": d.freed().max(0),
                })
            })
            .collect();
        return print_json(&json!({ "dryRun": false, "members": members, "freed": freed }));
    }
    println!(
        "{} members defragmented, {} freed in total; cluster healthy",
        done.len(),
        humanize_bytes(freed as u64)
    );
    Ok(())
}

fn alarm_list(args: AlarmArgs) -> Result<()> {
    let session = args.conn.session()?;
    let alarms = session.alarms().map_err(client_failure)?;
    if args.out.json() {
        return print_json(&alarms_json(&alarms, false));
    }
    for a in alarms {
        println!("memberID:{:x} alarm:{}", a.member_id, a.kind);
    }
    Ok(())
}

fn alarm_disarm(args: AlarmArgs) -> Result<()> {
    let session = args.conn.session()?;
    let disarmed = session.disarm_alarms().map_err(client_failure)?;
    if args.out.json() {
        return print_json(&alarms_json(&disarmed, true));
    }
    for a in &disarmed {
        println!("memberID:{:x} alarm:{} disarmed", a.member_id, a.kind);
    }
    if disarmed.is_empty() {
        eprintln!("no alarm was raised");
    }
    Ok(())
}

fn alarms_json(alarms: &[etcdguard_client::Alarm], disarmed: bool) -> serde_json::Value {
    let list: Vec<_> = alarms
        .iter()
        .map(|a| json!({ "memberID": format!("{:x}", a.member_id), "alarm": a.kind.to_string() }))
        .collect();
    let key = if disarmed { "disarmed" } else { "alarms" };
    json!({ key: list })
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn health(args: HealthArgs) -> Result<()> {
    let session = args.conn.session()?;
    let endpoints: Vec<String> = if args.cluster {
        let report = session.members().map_err(client_failure)?;
        report
            .members
            .iter()
            .filter_map(|m| m.client_urls.first())
            .map(|u| {
                etcdguard_client::normalize_endpoint(u, session.config().uses_tls_files())
                    .unwrap_or_else(|_| u.clone())
            })
            .collect()
    } else {
        session.config().endpoints.clone()
    };
    let results = session.health(&endpoints);
    match args.write_out {
        ClusterFormat::Table => {
            for h in &results {
                match &h.result {
                    Ok(()) => println!(
                        "{} is healthy: committed a linearizable read in {}",
                        h.endpoint,
                        ms(h.took)
                    ),
                    Err(e) => println!(
                        "{} is unhealthy: {}",
                        h.endpoint,
                        strip_endpoint(&e.to_string(), &h.endpoint)
                    ),
                }
            }
        }
        ClusterFormat::Json => {
            let v: Vec<_> = results
                .iter()
                .map(|h| {
                    json!({
                        "endpoint": h.endpoint,
                        "health": h.result.is_ok(),
                        "took": ms(h.took),
                        "error": h.result.as_ref().err().map(|e| strip_endpoint(&e.to_string(), &h.endpoint)),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
    }
    let bad: Vec<&ClientError> = results.iter().filter_map(|h| h.result.as_ref().err()).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let code = if bad.iter().any(|e| e.kind() == ErrorKind::TlsOrAuth) {
        Code::TlsOrAuth
    } else if bad.iter().all(|e| e.kind() == ErrorKind::Unreachable) {
        Code::Unreachable
    } else {
        Code::Failure
    };
    Err(Failure::new(code, format!("{} of {} endpoints unhealthy", bad.len(), results.len()))
        .into())
}

fn strip_endpoint(msg: &str, endpoint: &str) -> String {
    msg.strip_prefix(endpoint).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg).to_string()
}

fn members(args: MembersArgs) -> Result<()> {
    let session = args.conn.session()?;
    let report = session.members().map_err(client_failure)?;
    let leader = report
        .statuses
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .find(|s| s.leader != 0)
        .map(|s| s.leader);
    match args.write_out {
        ClusterFormat::Json => {
            let v: Vec<_> = report
                .members
                .iter()
                .zip(&report.statuses)
                .map(|(m, st)| {
                    let mut o = json!({
                        "id": format!("{:x}", m.id),
                        "name": m.name,
                        "peerURLs": m.peer_urls,
                        "clientURLs": m.client_urls,
                        "isLearner": m.is_learner,
                        "isLeader": Some(m.id) == leader,
                    });
                    match st {
                        Ok(s) => {
                            o["status"] = json!({
                                "endpoint": s.endpoint,
                                "version": s.version,
                                "dbSize": s.db_size,
                                "dbSizeInUse": s.db_size_in_use,
                                "revision": s.revision,
                                "raftTerm": s.raft_term,
                                "raftIndex": s.raft_index,
                                "raftAppliedIndex": s.raft_applied_index,
                                "leader": format!("{:x}", s.leader),
                                "errors": s.errors,
                            })
                        }
                        Err(e) => o["error"] = json!(e.to_string()),
                    }
                    o
                })
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
        ClusterFormat::Table => {
            let header = [
                "ID",
                "NAME",
                "ROLE",
                "VERSION",
                "DB SIZE",
                "IN USE",
                "REVISION",
                "RAFT TERM",
                "RAFT INDEX",
                "APPLIED",
                "CLIENT URLS",
                "ERRORS",
            ];
            let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
            for (m, st) in report.members.iter().zip(&report.statuses) {
                let mut row = vec![
                    format!("{:x}", m.id),
                    if m.name.is_empty() { "(unstarted)".into() } else { m.name.clone() },
                ];
                match st {
                    Ok(s) => row.extend(status_cells(s)),
                    Err(e) => {
                        row.push(if m.is_learner {
                            "learner".into()
                        } else {
                            "unreachable".into()
                        });
                        row.extend((0..7).map(|_| "-".to_string()));
                        row.push(m.client_urls.join(","));
                        row.push(e.to_string());
                        rows.push(row);
                        continue;
                    }
                }
                row.push(m.client_urls.join(","));
                row.push(st.as_ref().map(|s| s.errors.join("; ")).unwrap_or_default());
                rows.push(row);
            }
            print!("{}", table(&rows));
            let up = report.statuses.iter().filter(|s| s.is_ok()).count();
            let leader_txt = match leader {
                Some(id) => {
                    let name = report
                        .members
                        .iter()
                        .find(|m| m.id == id)
                        .map(|m| m.name.as_str())
                        .unwrap_or("?");
                    format!("leader {id:x} ({name})")
                }
                None => "NO LEADER".to_string(),
            };
            println!(
                "{} members, {up} answering, {leader_txt}; member list from {}",
                report.members.len(),
                report.from
            );
        }
    }
    if report.statuses.iter().any(|s| s.is_err()) {
        let n = report.statuses.iter().filter(|s| s.is_err()).count();
        return Err(Failure::new(
            Code::Unreachable,
            format!("{n} of {} members did not answer", report.members.len()),
        )
        .into());
    }
    Ok(())
}

fn status_cells(s: &MemberStatus) -> Vec<String> {
    vec![
        s.role().to_string(),
        s.version.clone(),
        humanize_bytes(s.db_size.max(0) as u64),
        humanize_bytes(s.db_size_in_use.max(0) as u64),
        s.revision.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
    ]
}
