//! A multi-member etcd cluster on one machine: member `i` is "node" `127.0.0.(11+i)` with its
//! own client and peer port, data dirs under one temp dir that outlives stops and restarts.

use std::path::{Path, PathBuf};

use crate::server::{free_port_on, EtcdServer};
use crate::EtcdVersion;

/// Where one member lives: fixed for its lifetime, so it can be stopped and started again.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }
}

/// A running (or partly stopped) cluster. Dropping it stops every member by PID.
pub struct EtcdCluster {
    version: EtcdVersion,
    specs: Vec<MemberSpec>,
    servers: Vec<Option<EtcdServer>>,
    root: tempfile::TempDir,
}

/// The loopback address of simulated node `i` (0-based): 127.0.0.11, .12, …
pub fn node_host(i: usize) -> String {
    format!("127.0.0.{}", 11 + i)
}

impl EtcdCluster {
    /// Starts `size` members named m1…mN on 127.0.0.11… and waits until all are healthy.
    /// Retries with fresh ports when one was taken meanwhile; panics with the logs otherwise.
    pub fn start(version: EtcdVersion, size: usize) -> EtcdCluster {
        let mut last = String::new();
        for _ in 0..3 {
            let root =
                tempfile::Builder::new().prefix("etcd-cluster-").tempdir().expect("temp dir");
            let specs: Vec<MemberSpec> = (0..size)
                .map(|i| {
                    let host = node_host(i);
                    let spec = MemberSpec {
                        name: format!("m{}", i + 1),
                        client_port: free_port_on(&host),
                        peer_port: free_port_on(&host),
                        data_dir: root.path().join(format!("m{}", i + 1)),
                        host,
                    };
                    std::fs::create_dir_all(&spec.data_dir).expect("member dir");
                    spec
                })
                .collect();
            let initial = initial_cluster(&specs);
            let started: Vec<Result<EtcdServer, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = specs
                    .iter()
                    .map(|spec| {
                        let initial = initial.clone();
                        s.spawn(move || {
                            builder(version, spec).initial_cluster(&initial).try_start_once()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("start panicked".into())))
                    .collect()
            });
            if started.iter().all(|r| r.is_ok()) {
                let servers = started.into_iter().map(|r| r.ok()).collect();
                return EtcdCluster { version, specs, servers, root };
            }
            last = started.into_iter().filter_map(|r| r.err()).collect::<Vec<_>>().join("\n");
        }
        panic!("{size}-member etcd {} cluster did not start:\n{last}", version.label());
    }

    pub fn version(&self) -> EtcdVersion {
        self.version
    }
    pub fn len(&self) -> usize {
        self.specs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
    pub fn spec(&self, i: usize) -> &MemberSpec {
        &self.specs[i]
    }
    /// Directory for test files next to the data dirs (removed with the cluster).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The running server of member `i`; panics when it is stopped.
    pub fn member(&self, i: usize) -> &EtcdServer {
        self.servers[i]
            .as_ref()
            .unwrap_or_else(|| panic!("member {} is stopped", self.specs[i].name))
    }
    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].is_some()
    }

    /// Every member's client URL (running or not), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.client_url()).collect()
    }
    /// `--endpoints` value for all members.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }
    /// Client URLs of the running members only.
    pub fn running_endpoints(&self) -> Vec<String> {
        (0..self.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.specs[i].client_url())
            .collect()
    }

    /// Stops member `i` (SIGTERM, then SIGKILL); its data dir stays.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.stop();
        }
    }

    /// Starts member `i` again on its data dir and ports; returns when it listens (it may
    /// need its peers to be healthy).
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "member {} is running", self.specs[i].name);
        let initial = initial_cluster(&self.specs);
        let s = builder(self.version, &self.specs[i])
            .initial_cluster(&initial)
            .no_health_wait()
            .try_start_once()
            .unwrap_or_else(|e| panic!("restart {}: {e}", self.specs[i].name));
        self.servers[i] = Some(s);
    }

    /// A place for a new member on node `node` (fresh ports, an empty data dir), to be given
    /// to `member add` and then [`join`](Self::join).
    pub fn new_member_spec(&self, name: &str, node: usize) -> MemberSpec {
        let host = node_host(node);
        let data_dir = self.root.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("member dir");
        MemberSpec {
            name: name.into(),
            client_port: free_port_on(&host),
            peer_port: free_port_on(&host),
            data_dir,
            host,
        }
    }

    /// Starts a member that `member add` announced, with `--initial-cluster-state existing` and
    /// the `--initial-cluster` the add printed; returns its index. Waits only until it listens
    /// (a learner never passes `/health`'s linearizable read).
    pub fn join(&mut self, spec: MemberSpec, initial_cluster: &str) -> usize {
        let s = builder(self.version, &spec)
            .initial_cluster(initial_cluster)
            .join_existing()
            .no_health_wait()
            .try_start_once()
            .unwrap_or_else(|e| panic!("join {}: {e}", spec.name));
        self.specs.push(spec);
        self.servers.push(Some(s));
        self.specs.len() - 1
    }
}

fn builder(version: EtcdVersion, spec: &MemberSpec) -> crate::EtcdServerBuilder {
    EtcdServer::builder(version)
        .name(&spec.name)
        .host(&spec.host)
        .ports(spec.client_port, spec.peer_port)
        .data_dir(spec.data_dir.join("data"))
        .quota_bytes(1 << 30)
}

fn initial_cluster(specs: &[MemberSpec]) -> String {
    specs.iter().map(|s| format!("{}={}", s.name, s.peer_url())).collect::<Vec<_>>().join(",")
}
