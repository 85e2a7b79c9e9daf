//! `etcdguard cluster recover`: the quorum-loss recovery across every control-plane host over
//! SSH. The work is `etcdguard_workflow::recover`; this prints the plan, each step's start and
//! end, and the outcome.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::recover::{
    recover, Layout, RecoverEvent, RecoverOptions, RecoverState, Source, SshSettings, StepStatus,
};

use crate::cmd::node::NodeFormat;
use crate::cmd::table;

#[derive(Args)]
pub struct RecoverArgs {
    /// Every control-plane host, comma-separated, as `ssh` reaches them (names or addresses;
    /// ~/.ssh/config applies).
    #[arg(long, value_delimiter = ',', value_name = "HOSTS", required = true)]
    pub hosts: Vec<String>,
    /// The snapshot file on this machine: checked here, copied to the restore host over SSH
    /// (into --remote-dir, 0600) and checked there again.
    #[arg(long, value_name = "FILE", conflicts_with = "backup", required_unless_present_any = ["backup", "resume"])]
    pub snapshot: Option<PathBuf>,
    /// Restore this backup (id, prefix or `latest`) of --repo; the restore host reads the
    /// repository itself (verified from there before anything changes).
    #[arg(long, value_name = "ID", requires = "repo")]
    pub backup: Option<String>,
    /// The backup repository of --backup, as the restore host reaches it.
    #[arg(long, value_name = "URL", value_parser = crate::args::repo)]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository, a path on the restore host.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The host that restores the one-member cluster [default: the first of --hosts].
    #[arg(long, value_name = "HOST")]
    pub restore_on: Option<String>,
    /// Where the snapshot's copy goes on the restore host (removed after a recovery).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub remote_dir: PathBuf,
    /// The kubelet's static pod manifests dir on the hosts; `{host}` in any of these paths
    /// is replaced by the host's name as given in --hosts.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// etcd's manifest on the hosts, when it is neither etcd.yaml nor etcd-pod.yaml.
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// The SSH user [default: ssh's: ~/.ssh/config, else yours].
    #[arg(long, value_name = "USER")]
    pub ssh_user: Option<String>,
    /// The SSH port [default: ssh's].
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// More `ssh -o` options (repeat). They come after etcdguard's own BatchMode=yes and
    /// StrictHostKeyChecking=yes, which ssh therefore keeps.
    #[arg(long, value_name = "OPTION")]
    pub ssh_option: Vec<String>,
    /// The known_hosts file to check host keys against [default: ssh's own files].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// The etcdguard binary on the hosts.
    #[arg(long, value_name = "PATH", default_value = "etcdguard")]
    pub remote_binary: String,
    /// Bound for each wait on a host (pods down, etcd up, learner caught up, healthy).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// The plan and each step's state, written after every step (JSON, 0600).
    #[arg(long, value_name = "FILE", default_value = "etcdguard-recover.json")]
    pub state_file: PathBuf,
    /// Run the preflight on every host, print the plan, and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Go on with the recovery in --state-file at its first unfinished step.
    #[arg(long, conflicts_with = "dry_run")]
    pub resume: bool,
    /// Recover although a member still has quorum (every write since the snapshot is lost).
    #[arg(long)]
    pub force: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = NodeFormat::Table)]
    pub write_out: NodeFormat,
}

fn print_plan(s: &RecoverState) {
    let mut rows = vec![vec![
        "HOST".to_string(),
        "MEMBER".into(),
        "ETCD".into(),
        "PARKED".into(),
        "DATA DIR".into(),
        "FREE".into(),
        "ETCDGUARD".into(),
    ]];
    for h in &s.hosts {
        let f = &h.facts;
        rows.push(vec![
            format!("{}{}", h.host, if h.host == s.restore_host { " (restore)" } else { "" }),
            f.member.clone(),
            if f.etcd_healthy {
                "healthy".into()
            } else if f.etcd_answers {
                "answers, no quorum".into()
            } else {
                "down".into()
            },
            f.parked.to_string(),
            format!(
                "{}{}",
                f.data_dir.display(),
                if f.data_dir_exists { "" } else { " (missing)" }
            ),
            etcdguard_storage::status::humanize_bytes(f.free_bytes),
            f.version.clone(),
        ]);
    }
    print!("{}", table(&rows));
    match &s.source {
        Source::LocalFile { path, bytes, revision, total_keys } => println!(
            "Snapshot: {} ({}, revision {revision}, {total_keys} keys, verified here)",
            path.display(),
            etcdguard_storage::status::humanize_bytes(*bytes)
        ),
        Source::Backup { id, repo, .. } => {
            println!("Snapshot: backup {id} of {repo} (verified from {})", s.restore_host)
        }
    }
    for n in &s.notes {
        println!("{n}");
    }
    println!("Plan:");
    for (i, st) in s.steps.iter().enumerate() {
        let mark = match st.status {
            StepStatus::Done => " (done)",
            StepStatus::Running => " (started, not finished)",
            StepStatus::Failed => " (failed)",
            StepStatus::Pending => "",
        };
        println!("  {}. [{}] {}{mark}", i + 1, st.host, st.what);
    }
}

/// Each step's wall time (from the state file, so a resumed run shows the earlier ones too),
/// the preflight's and the total of this run.
fn step_times(state: &RecoverState, preflight: Option<f64>, total: f64) -> String {
    let mut rows = vec![["STEP", "HOST", "SECONDS"].map(String::from).to_vec()];
    if let Some(p) = preflight {
        rows.push(vec!["preflight".into(), "all".into(), format!("{p:.1}")]);
    }
    for s in &state.steps {
        let kind = serde_json::to_value(&s.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let secs = s.seconds.map(|t| format!("{t:.1}")).unwrap_or_else(|| "-".into());
        rows.push(vec![kind, s.host.clone(), secs]);
    }
    rows.push(vec!["total".into(), String::new(), format!("{total:.1}")]);
    format!("Times:\n{}", table(&rows).lines().map(|l| format!("  {l}\n")).collect::<String>())
}

pub fn run(args: RecoverArgs) -> Result<()> {
    let json = matches!(args.write_out, NodeFormat::Json);
    let opts = RecoverOptions {
        hosts: args.hosts.clone(),
        layout: Layout {
            manifests_dir: Some(args.manifests_dir.clone()),
            kubernetes_dir: None,
            etcd_manifest: args.etcd_manifest.clone(),
        },
        ssh: SshSettings {
            user: args.ssh_user.clone(),
            port: args.ssh_port,
            options: args.ssh_option.clone(),
            known_hosts: args.known_hosts.clone(),
            remote_binary: args.remote_binary.clone(),
            program: None,
        },
        snapshot: args.snapshot.clone(),
        backup: args
            .backup
            .clone()
            .map(|b| (b, args.repo.clone().unwrap_or_default(), args.passphrase_file.clone())),
        restore_on: args.restore_on.clone(),
        remote_dir: args.remote_dir.clone(),
        wait_timeout: args.wait_timeout,
        dry_run: args.dry_run,
        force: args.force,
        resume: args.resume,
        state_file: args.state_file.clone(),
        version: crate::cmd::node::version(),
    };
    let started = std::time::Instant::now();
    // The preflight: from the start until the plan stands (every host asked over SSH).
    let mut preflight: Option<f64> = None;
    let result = recover(&opts, &mut |event| match event {
        RecoverEvent::Note(line) => eprintln!("{line}"),
        RecoverEvent::Planned(s) => {
            preflight.get_or_insert(started.elapsed().as_secs_f64());
            if !json {
                print_plan(s);
            }
        }
        RecoverEvent::StepStarted(st) => eprintln!(
            "[{:>6.1} s] start: [{}] {}",
            started.elapsed().as_secs_f64(),
            st.host,
            st.what
        ),
        RecoverEvent::StepEnded(st) => eprintln!(
            "[{:>6.1} s] {}: [{}] {} ({:.1} s)",
            started.elapsed().as_secs_f64(),
            if st.status == StepStatus::Done { "done" } else { "FAILED" },
            st.host,
            st.what,
            st.seconds.unwrap_or(0.0)
        ),
        RecoverEvent::RolledBack { host, steps } => {
            eprintln!("rolled back {host}:");
            for s in steps {
                eprintln!("  - {s}");
            }
        }
    });
    let state = match result {
        Ok(s) => s,
        Err(e) => {
            if json {
                if let Ok(Some(s)) = etcdguard_workflow::recover::load_state(&args.state_file) {
                    crate::args::print_json(&s)?;
                }
            }
            return Err(e.into());
        }
    };
    let total = started.elapsed().as_secs_f64();
    if json {
        let mut value = serde_json::to_value(&state)?;
        value["preflightSeconds"] = serde_json::json!(preflight);
        value["totalSeconds"] = serde_json::json!(total);
        crate::args::print_json(&value)?;
        return Ok(());
    }
    if args.dry_run {
        println!("Dry run: nothing was changed.");
        return Ok(());
    }
    println!(
        "Recovered: {} healthy members ({}) in {total:.1} s; restored on {}.",
        state.hosts.len(),
        state.hosts.iter().map(|h| h.facts.member.as_str()).collect::<Vec<_>>().join(", "),
        state.restore_host
    );
    print!("{}", step_times(&state, preflight, total));
    println!("The old data dirs are kept beside the new ones (<data-dir>.etcdguard-<time>); remove them once the cluster is healthy.");
    Ok(())
}
