//! `etcdguard cluster health|members`, and the connection flags every live command shares.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_client::{ClientError, ConnectFlags, ErrorKind, MemberStatus, Secret, Session};
use etcdguard_storage::status::humanize_bytes;
use serde_json::json;

use crate::cmd::table;
use crate::exit::{Code, Failure};

/// etcdctl's connection flags. Each falls back to the `ETCDCTL_*` variable etcdctl reads.
#[derive(Args, Clone, Debug, Default)]
pub struct ConnArgs {
    /// gRPC endpoints, comma-separated: host:port or http(s)://host:port
    /// [env: ETCDCTL_ENDPOINTS] [default: 127.0.0.1:2379]
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub endpoints: Option<Vec<String>>,
    /// CA bundle that signed the server certificates [env: ETCDCTL_CACERT]
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) [env: ETCDCTL_CERT]
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [env: ETCDCTL_KEY]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// User name, or name:password [env: ETCDCTL_USER]
    #[arg(long, value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
    /// Password for --user [env: ETCDCTL_PASSWORD]
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Time allowed to connect, Go syntax [env: ETCDCTL_DIAL_TIMEOUT] [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub dial_timeout: Option<String>,
    /// Time allowed for each request, Go syntax [env: ETCDCTL_COMMAND_TIMEOUT] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub command_timeout: Option<String>,
}

impl ConnArgs {
    /// Resolves flags and environment, prints the notes, and opens a session.
    pub fn session(&self) -> Result<Session> {
        Ok(etcdguard_workflow::backup::connect(&self.flags(), &mut |note| eprintln!("{note}"))?)
    }

    /// The flags as the client library takes them.
    pub fn flags(&self) -> ConnectFlags {
        ConnectFlags {
            endpoints: self.endpoints.clone(),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
            password: self.password.clone().map(Secret::new),
            dial_timeout: self.dial_timeout.clone(),
            command_timeout: self.command_timeout.clone(),
        }
    }
}

/// Maps a client error to its exit code; the message is the error's own sentence.
pub fn client_failure(e: ClientError) -> Failure {
    etcdguard_workflow::error::client_error(e).into()
}

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
    }
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
            .map(|u| etcdguard_client::normalize_endpoint(u, session.config().uses_tls_files()).unwrap_or_else(|_| u.clone()))
            .collect()
    } else {
        session.config().endpoints.clone()
    };
    let results = session.health(&endpoints);
    match args.write_out {
        ClusterFormat::Table => {
            for h in &results {
                match &h.result {
                    Ok(()) => println!("{} is healthy: committed a linearizable read in {}", h.endpoint, ms(h.took)),
                    Err(e) => println!("{} is unhealthy: {}", h.endpoint, strip_endpoint(&e.to_string(), &h.endpoint)),
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
    Err(Failure::new(code, format!("{} of {} endpoints unhealthy", bad.len(), results.len())).into())
}

fn strip_endpoint(msg: &str, endpoint: &str) -> String {
    msg.strip_prefix(endpoint).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg).to_string()
}

fn members(args: MembersArgs) -> Result<()> {
    let session = args.conn.session()?;
    let report = session.members().map_err(client_failure)?;
    let leader = report.statuses.iter().filter_map(|s| s.as_ref().ok()).find(|s| s.leader != 0).map(|s| s.leader);
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
                "ID", "NAME", "ROLE", "VERSION", "DB SIZE", "IN USE", "REVISION", "RAFT TERM", "RAFT INDEX", "APPLIED",
                "CLIENT URLS", "ERRORS",
            ];
            let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
            for (m, st) in report.members.iter().zip(&report.statuses) {
                let mut row = vec![format!("{:x}", m.id), if m.name.is_empty() { "(unstarted)".into() } else { m.name.clone() }];
                match st {
                    Ok(s) => row.extend(status_cells(s)),
                    Err(e) => {
                        row.push(if m.is_learner { "learner".into() } else { "unreachable".into() });
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
                    let name = report.members.iter().find(|m| m.id == id).map(|m| m.name.as_str()).unwrap_or("?");
                    format!("leader {id:x} ({name})")
                }
                None => "NO LEADER".to_string(),
            };
            println!("{} members, {up} answering, {leader_txt}; member list from {}", report.members.len(), report.from);
        }
    }
    if report.statuses.iter().any(|s| s.is_err()) {
        let n = report.statuses.iter().filter(|s| s.is_err()).count();
        return Err(Failure::new(Code::Unreachable, format!("{n} of {} members did not answer", report.members.len())).into());
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

