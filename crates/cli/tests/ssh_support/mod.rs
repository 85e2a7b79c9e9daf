//! Real OpenSSH servers for the tests that reach "hosts" over SSH: one `sshd -D` per loopback
//! address (127.0.0.11, .12, …), all on one port, running as the current user with a host key,
//! authorized_keys and config generated per test; a client key and a known_hosts file to
//! match. Stopped by PID on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct SshHosts {
    pub dir: PathBuf,
    pub port: u16,
    pub hosts: Vec<String>,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    servers: Vec<Child>,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "etcdguard-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// A port free on every one of `hosts`.
fn common_free_port(hosts: &[String]) -> u16 {
    for _ in 0..100 {
        let p = etcdguard_testkit::free_port_on(&hosts[0]);
        if hosts.iter().all(|h| std::net::TcpListener::bind((h.as_str(), p)).is_ok()) {
            return p;
        }
    }
    panic!("no port free on all of {hosts:?}");
}

impl SshHosts {
    /// Starts one sshd per host address; waits until each accepts connections.
    pub fn start(dir: &Path, hosts: &[String]) -> SshHosts {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (.ci/install-deps)"
        );
        let dir = dir.join("ssh");
        std::fs::create_dir_all(&dir).unwrap();
        // sshd started as root wants its privilege separation dir.
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let client_key = dir.join("client_key");
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_key.pub"), &authorized).unwrap();
        let port = common_free_port(hosts);
        let mut servers = Vec::new();
        let mut known = String::new();
        for h in hosts {
            let key = dir.join(format!("host_key_{h}"));
            keygen(&key);
            let pubkey = std::fs::read_to_string(dir.join(format!("host_key_{h}.pub"))).unwrap();
            let mut words = pubkey.split_whitespace();
            known.push_str(&format!(
                "[{h}]:{port} {} {}\n",
                words.next().unwrap(),
                words.next().unwrap()
            ));
            let config = dir.join(format!("sshd_config_{h}"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {h}:{port}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                     PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n\
                     MaxStartups 50\nMaxSessions 50\n",
                    key.display(),
                    dir.join(format!("sshd_{h}.pid")).display(),
                    authorized.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join(format!("sshd_{h}.log"))).unwrap();
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            servers.push(child);
        }
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, known).unwrap();
        for h in hosts {
            let start = Instant::now();
            while std::net::TcpStream::connect((h.as_str(), port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "sshd on {h}:{port} did not start: {}",
                    std::fs::read_to_string(dir.join(format!("sshd_{h}.log"))).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        SshHosts { dir, port, hosts: hosts.to_vec(), client_key, known_hosts, servers }
    }

    /// The `cluster recover` flags that reach these hosts (but --known-hosts).
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--ssh-port".into(),
            self.port.to_string(),
            "--ssh-option".into(),
            format!("IdentityFile={}", self.client_key.display()),
            "--ssh-option".into(),
            "IdentitiesOnly=yes".into(),
            "--remote-binary".into(),
            std::env::var("ETCDGUARD_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_etcdguard").into()),
        ]
    }
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        for c in &mut self.servers {
            // SAFETY: kill(2) with SIGTERM on the sshd we started, by its PID.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}
