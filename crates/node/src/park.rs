//! `node park` / `node unpark`: stop etcd and the API server on this node by moving their
//! static pod manifests out of the kubelet's manifests dir (where `node restore` parks them),
//! wait until both are down; and put them back, waiting until both serve again. This is
//! the barrier a restore of a multi-member cluster needs: every old member down before any
//! member comes back with the restored data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{
    aside, etcd_up, io, list_manifests, locate, parked_dirs, secs, wait_apiserver, wait_down,
    ApiServerPod, EtcdPod, NodeError, NodeFacts, Timings,
};

/// Where the manifests are and how long to wait.
#[derive(Debug, Clone)]
pub struct ParkRequest {
    pub manifests_dir: PathBuf,
    /// etcd's manifest when it has another name than `etcd.yaml` / `etcd-pod.yaml`.
    pub etcd_manifest: Option<PathBuf>,
    /// Goes into the parked dir's name, e.g. `20261123T124500Z`.
    pub stamp: String,
    pub wait_timeout: Duration,
    /// This node's name and IP, for values the manifest takes from `valueFrom.fieldRef`.
    pub node: NodeFacts,
}

/// Parking etcd and the API server.
#[derive(Debug, Clone)]
pub struct Park {
    pub manifests_dir: PathBuf,
    pub parked_dir: PathBuf,
    /// What is still to move (empty when both are parked already).
    pub to_move: Vec<PathBuf>,
    /// etcd's manifest was parked before (a second `node park` only waits).
    pub already_parked: bool,
    pub etcd: EtcdPod,
    /// etcd's manifest the kubelet runs (live or parked); `etcd` may come from a copy.
    pub etcd_manifest: PathBuf,
    pub apiserver: Option<ApiServerPod>,
    pub wait_timeout: Duration,
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

impl Park {
    /// Finds the manifests (live or parked); changes nothing.
    pub fn build(req: &ParkRequest) -> Result<Park, NodeError> {
        let found = locate(
            &req.manifests_dir,
            Some(&req.manifests_dir),
            req.etcd_manifest.as_deref(),
            &req.node,
        )?;
        let already_parked = found.parked_in.is_some();
        let parked_dir =
            found.parked_in.clone().unwrap_or_else(|| aside(&found.manifests_dir, &req.stamp));
        let mut to_move = Vec::new();
        if !already_parked {
            to_move.push(found.etcd_manifest.clone());
        }
        // The API server's manifest may still be live when an earlier park stopped halfway.
        let apiserver = match (&found.apiserver, already_parked) {
            (Some(a), _) => Some(a.clone()),
            (None, true) => locate_live_apiserver(&found.manifests_dir),
            (None, false) => None,
        };
        if let Some(a) = &apiserver {
            if a.manifest.parent() == Some(found.manifests_dir.as_path()) {
                to_move.push(a.manifest.clone());
            }
        }
        if !already_parked && parked_dir.exists() {
            return Err(NodeError::Preflight(format!(
                "{} already exists; run again in a second",
                parked_dir.display()
            )));
        }
        Ok(Park {
            manifests_dir: found.manifests_dir,
            parked_dir,
            to_move,
            already_parked,
            etcd: found.etcd,
            etcd_manifest: found.etcd_manifest,
            apiserver,
            wait_timeout: req.wait_timeout,
        })
    }

    /// The steps, in words, as `--dry-run` prints them.
    pub fn steps(&self) -> Vec<String> {
        let mut s = Vec::new();
        if self.to_move.is_empty() {
            s.push(format!(
                "etcd's and the API server's manifests are already parked in {}: nothing to move",
                self.parked_dir.display()
            ));
        } else {
            let names: Vec<String> = self.to_move.iter().map(|p| file_name(p)).collect();
            s.push(format!(
                "move {} from {} to {}: the kubelet stops those pods",
                names.join(" and "),
                self.manifests_dir.display(),
                self.parked_dir.display()
            ));
        }
        let mut waits = vec![format!(
            "etcd's client port{} {} closed",
            if self.etcd.client_addrs.len() > 1 { "s" } else { "" },
            self.etcd.client_addrs.join(", ")
        )];
        waits.push(format!("{} unlocked", self.etcd.data_dir.join("member/snap/db").display()));
        if let Some(a) = &self.apiserver {
            waits.push(format!("the API server's port {} closed", a.addr));
        }
        s.push(format!(
            "wait (at most {} s) for {}",
            self.wait_timeout.as_secs(),
            waits.join(", ")
        ));
        s
    }

    /// Moves the manifests and waits. A timeout leaves them parked (run `node unpark` to
    /// undo): the caller asked for this node to be down.
    pub fn execute(&self, log: &mut dyn FnMut(&str)) -> Result<Timings, NodeError> {
        let steps = self.steps();
        let started = Instant::now();
        log(&format!("[1/2] {}", steps[0]));
        if !self.to_move.is_empty() && !self.parked_dir.exists() {
            std::fs::create_dir(&self.parked_dir)
                .map_err(|e| io("creating", &self.parked_dir, e))?;
        }
        for m in &self.to_move {
            let to = self.parked_dir.join(m.file_name().unwrap_or_default());
            std::fs::rename(m, &to).map_err(|e| io("moving", m, e))?;
        }
        log(&format!("[2/2] {}", steps[1]));
        wait_down(&self.etcd, self.apiserver.as_ref(), started + self.wait_timeout).map_err(|what| NodeError::StillRunning {
            what,
            secs: self.wait_timeout.as_secs(),
            undone: format!("the manifests stay parked in {}; is the kubelet running? (`etcdguard node unpark` puts them back)", self.parked_dir.display()),
        })?;
        log(&format!("      etcd and the API server down after {}", secs(started.elapsed())));
        Ok(Timings { steps: vec![("down".into(), started.elapsed())], apiserver: None })
    }
}

fn locate_live_apiserver(manifests_dir: &std::path::Path) -> Option<ApiServerPod> {
    list_manifests(manifests_dir).ok()?.iter().find_map(|p| crate::read_apiserver_pod(p).ok())
}

/// Putting parked manifests back.
#[derive(Debug, Clone)]
pub struct Unpark {
    pub manifests_dir: PathBuf,
    pub parked_dir: PathBuf,
    /// Every file in the parked dir (a `node restore` that stopped parks the whole dir).
    pub files: Vec<PathBuf>,
    pub etcd: EtcdPod,
    /// etcd's manifest the kubelet runs, where it is parked now; `etcd` may come from a copy.
    pub etcd_manifest: PathBuf,
    pub apiserver: Option<ApiServerPod>,
    pub wait_timeout: Duration,
}

impl Unpark {
    /// `Ok(None)`: nothing is parked (etcd's manifest is where the kubelet reads it).
    pub fn build(req: &ParkRequest) -> Result<Option<Unpark>, NodeError> {
        let found = locate(
            &req.manifests_dir,
            Some(&req.manifests_dir),
            req.etcd_manifest.as_deref(),
            &req.node,
        )?;
        let Some(parked_dir) = found.parked_in else {
            // A parked dir holding only other manifests is left to the operator.
            if let Some(d) = parked_dirs(&found.manifests_dir).first() {
                return Err(NodeError::Preflight(format!(
                    "etcd's manifest is in {}, but {} holds parked manifests too; move them back by hand if they belong there",
                    found.manifests_dir.display(),
                    d.display()
                )));
            }
            return Ok(None);
        };
        let files = list_manifests(&parked_dir)?;
        let clashes: Vec<String> = files
            .iter()
            .filter(|f| found.manifests_dir.join(f.file_name().unwrap_or_default()).exists())
            .map(|f| file_name(f))
            .collect();
        if !clashes.is_empty() {
            return Err(NodeError::Preflight(format!(
                "{} exist both in {} and in {}; decide which to keep, then run again",
                clashes.join(", "),
                found.manifests_dir.display(),
                parked_dir.display()
            )));
        }
        let apiserver = found.apiserver.or_else(|| locate_live_apiserver(&found.manifests_dir));
        Ok(Some(Unpark {
            manifests_dir: found.manifests_dir,
            parked_dir,
            files,
            etcd: found.etcd,
            etcd_manifest: found.etcd_manifest,
            apiserver,
            wait_timeout: req.wait_timeout,
        }))
    }

    pub fn steps(&self) -> Vec<String> {
        let names: Vec<String> = self.files.iter().map(|p| file_name(p)).collect();
        let api = match &self.apiserver {
            Some(a) => format!(", then until the API server on {} is ready (/readyz, or its port when /readyz cannot be read)", a.addr),
            None => String::new(),
        };
        vec![
            format!(
                "move {} from {} back to {}: the kubelet starts those pods",
                names.join(", "),
                self.parked_dir.display(),
                self.manifests_dir.display()
            ),
            format!(
                "wait (at most {} s) until etcd serves on {}{api}",
                self.wait_timeout.as_secs(),
                self.etcd.client_addrs.join(", ")
            ),
        ]
    }

    pub fn execute(&self, log: &mut dyn FnMut(&str)) -> Result<Timings, NodeError> {
        let steps = self.steps();
        log(&format!("[1/2] {}", steps[0]));
        self.move_back()?;
        log(&format!("[2/2] {}", steps[1]));
        let t = Instant::now();
        let deadline = t + self.wait_timeout;
        let mut timings = Timings::default();
        self.wait_etcd(deadline)?;
        timings.steps.push(("etcd serving".into(), t.elapsed()));
        log(&format!("      etcd serving after {}", secs(t.elapsed())));
        if let Some(how) = self.wait_apiserver(deadline)? {
            timings.steps.push(("API server ready".into(), t.elapsed()));
            log(&format!("      API server ready after {} ({how})", secs(t.elapsed())));
            timings.apiserver = Some(how);
        }
        Ok(timings)
    }

    /// Moves the parked files back into the manifests dir (the kubelet starts them).
    pub fn move_back(&self) -> Result<(), NodeError> {
        for f in &self.files {
            let to = self.manifests_dir.join(f.file_name().unwrap_or_default());
            std::fs::rename(f, &to).map_err(|e| io("moving back", f, e))?;
        }
        let _ = std::fs::remove_dir(&self.parked_dir);
        Ok(())
    }

    /// Waits until etcd listens on its client port and holds its database lock.
    pub fn wait_etcd(&self, deadline: Instant) -> Result<(), NodeError> {
        while !etcd_up(&self.etcd) {
            if Instant::now() > deadline {
                return Err(NodeError::NotReady {
                    what: "etcd".into(),
                    secs: self.wait_timeout.as_secs(),
                    last: "its client port is closed or its database unlocked".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Waits until the API server (when there is one) is ready; how it was seen.
    pub fn wait_apiserver(&self, deadline: Instant) -> Result<Option<String>, NodeError> {
        let Some(a) = &self.apiserver else { return Ok(None) };
        wait_apiserver(a, deadline).map(Some).map_err(|last| NodeError::NotReady {
            what: format!("etcd serves, but the API server ({})", a.manifest.display()),
            secs: self.wait_timeout.as_secs(),
            last,
        })
    }
}
