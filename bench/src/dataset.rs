//! The benchmark's input: a Kubernetes-shaped etcd database of a chosen size, written by a
//! real etcd 3.5.1 and saved with the real `etcdctl snapshot save`, cached under the work dir.
//!
//! Layout of one cached dataset (`<work>/dataset-<size>mb-seed<seed>-g<GEN>/`):
//!   snapshot.db   the snapshot (what `snapshot status|restore` cases read)
//!   etcd-data/    the data dir of the server that wrote it (what a live-server case starts)
//!   dataset.json  what was written; written last, so its presence marks a complete dataset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcdguard_testkit::{EtcdServer, EtcdVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Bump when the generator changes what it writes, so old caches are not reused.
const GENERATOR: u32 = 2;

#[derive(Clone, Debug)]
pub struct DatasetSpec {
    pub size_mb: u64,
    pub seed: u64,
    /// Concurrent writers (each its own HTTP connection to the gateway).
    pub load_threads: usize,
}

/// What was written; stored as `dataset.json` next to the snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub generator: u32,
    pub size_mb: u64,
    pub seed: u64,
    pub etcd_version: String,
    pub snapshot_bytes: u64,
    pub puts: u64,
    pub deletes: u64,
    pub value_bytes: u64,
    pub compacted_at: Vec<i64>,
    pub final_revision: i64,
    pub generation_seconds: f64,
    /// Peer port the data dir was created with; a restarted member keeps its peer URL.
    pub peer_port: u16,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub snapshot: PathBuf,
    /// The generating server's data dir, if this dataset was generated here.
    pub data_dir: Option<PathBuf>,
    pub meta: Option<DatasetMeta>,
}

impl Dataset {
    /// A snapshot the user supplied: status/restore cases work, live-server cases do not.
    pub fn external(snapshot: &Path) -> Result<Dataset> {
        if !snapshot.is_file() {
            bail!("{}: no such snapshot file", snapshot.display());
        }
        Ok(Dataset { snapshot: snapshot.to_path_buf(), data_dir: None, meta: None })
    }

    pub fn snapshot_bytes(&self) -> u64 {
        std::fs::metadata(&self.snapshot).map(|m| m.len()).unwrap_or(0)
    }
}

/// Returns the cached dataset for `spec`, generating it first if there is none.
pub fn ensure(work: &Path, spec: &DatasetSpec) -> Result<Dataset> {
    let dir = work.join(format!("dataset-{}mb-seed{}-g{GENERATOR}", spec.size_mb, spec.seed));
    let meta_path = dir.join("dataset.json");
    let snapshot = dir.join("snapshot.db");
    let data_dir = dir.join("etcd-data");
    if meta_path.is_file() && snapshot.is_file() {
        let meta: DatasetMeta = serde_json::from_slice(&std::fs::read(&meta_path)?)
            .with_context(|| format!("{} is not a dataset description", meta_path.display()))?;
        eprintln!(
            "dataset: reusing {} ({:.1} MiB, {} puts, revision {})",
            snapshot.display(),
            mib(meta.snapshot_bytes),
            meta.puts,
            meta.final_revision
        );
        let data_dir = data_dir.is_dir().then_some(data_dir);
        return Ok(Dataset { snapshot, data_dir, meta: Some(meta) });
    }
    if dir.exists() {
        eprintln!("dataset: removing incomplete {}", dir.display());
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let meta = generate(spec, &data_dir, &snapshot)?;
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    Ok(Dataset { snapshot, data_dir: Some(data_dir), meta: Some(meta) })
}

/// Shared counters of the writer threads.
#[derive(Default)]
struct Progress {
    next_step: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    value_bytes: AtomicU64,
}

fn generate(spec: &DatasetSpec, data_dir: &Path, snapshot: &Path) -> Result<DatasetMeta> {
    let target = spec.size_mb << 20;
    eprintln!(
        "dataset: generating ~{} MiB with etcd 3.5.1 ({} writers, seed {}); this is done once and cached",
        spec.size_mb, spec.load_threads, spec.seed
    );
    let started = Instant::now();
    let mut server = EtcdServer::builder(EtcdVersion::V3_5)
        .name("bench")
        .data_dir(data_dir)
        .quota_bytes((8u64 << 30).max(target * 3))
        // Durability is irrelevant for generated data; fsync per commit only slows loading.
        .arg("--unsafe-no-fsync")
        .start();
    let peer_port: u16 =
        server.peer_url().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let http = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let lease = server.grant_lease(30 * 24 * 3600);
    let progress = Progress::default();
    let mut compacted_at = Vec::new();

    // Phase 1: fill to ~55 %, then compact everything older (old versions of updated keys
    // and deleted keys go; their pages are reused by the next phase).
    fill_until(&server, &http, spec, lease, &progress, target * 55 / 100, started)?;
    let rev = server.revision();
    server.compact(rev);
    compacted_at.push(rev);
    // Phase 2: fill to ~80 % and remember the revision; phase 3: fill to the target, then
    // compact at that remembered revision, so the file ends with free pages and a history.
    fill_until(&server, &http, spec, lease, &progress, target * 80 / 100, started)?;
    let rev = server.revision();
    fill_until(&server, &http, spec, lease, &progress, target, started)?;
    // (A small target can be reached before phase 2 writes anything; etcd refuses to compact
    // at an already compacted revision.)
    if rev > compacted_at[0] {
        server.compact(rev);
        compacted_at.push(rev);
    }
    let final_revision = server.revision();

    let tmp = snapshot.with_extension("db.partial");
    let _ = std::fs::remove_file(&tmp);
    server.snapshot_save(&tmp);
    std::fs::rename(&tmp, snapshot)?;
    server.stop();
    let snapshot_bytes = std::fs::metadata(snapshot)?.len();
    let meta = DatasetMeta {
        generator: GENERATOR,
        size_mb: spec.size_mb,
        seed: spec.seed,
        etcd_version: "3.5.1".into(),
        snapshot_bytes,
        puts: progress.puts.load(Ordering::Relaxed),
        deletes: progress.deletes.load(Ordering::Relaxed),
        value_bytes: progress.value_bytes.load(Ordering::Relaxed),
        compacted_at,
        final_revision,
        generation_seconds: started.elapsed().as_secs_f64(),
        peer_port,
    };
    eprintln!(
        "dataset: {} is {:.1} MiB ({} puts, {} deletes, {:.1} MiB of values) after {:.0} s",
        snapshot.display(),
        mib(snapshot_bytes),
        meta.puts,
        meta.deletes,
        mib(meta.value_bytes),
        meta.generation_seconds
    );
    Ok(meta)
}

/// Runs the writers until the server's backend reaches `target_bytes`.
fn fill_until(
    server: &EtcdServer,
    http: &ureq::Agent,
    spec: &DatasetSpec,
    lease: i64,
    progress: &Progress,
    target_bytes: u64,
    started: Instant,
) -> Result<()> {
    if db_size(server, http)? >= target_bytes {
        return Ok(());
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let writers: Vec<_> = (0..spec.load_threads.max(1))
            .map(|_| scope.spawn(|| writer(server, spec.seed, lease, progress, &stop)))
            .collect();
        let mut last_report = Instant::now();
        let result = loop {
            std::thread::sleep(Duration::from_millis(250));
            if writers.iter().any(|w| w.is_finished()) {
                break Err(anyhow::anyhow!("a writer thread stopped early"));
            }
            let size = match db_size(server, http) {
                Ok(size) => size,
                Err(e) => break Err(e),
            };
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                let puts = progress.puts.load(Ordering::Relaxed);
                eprintln!(
                    "dataset: {:>7.1} MiB of {:.0} MiB, {} puts ({:.0}/s, {:.1} MiB/s of values)",
                    mib(size),
                    mib(target_bytes),
                    puts,
                    puts as f64 / secs,
                    mib(progress.value_bytes.load(Ordering::Relaxed)) / secs
                );
            }
            if size >= target_bytes {
                break Ok(());
            }
        };
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    })
}

fn db_size(server: &EtcdServer, http: &ureq::Agent) -> Result<u64> {
    let url = format!("{}/v3/maintenance/status", server.endpoint());
    let v: Value = http.post(&url).send_json(json!({}))?.into_json()?;
    match &v["dbSize"] {
        Value::String(s) => Ok(s.parse()?),
        Value::Number(n) => Ok(n.as_u64().unwrap_or(0)),
        other => bail!("no dbSize in maintenance status: {other}"),
    }
}

/// One writer: takes step numbers from the shared counter; each step creates a new object,
/// updates an older one or deletes an older one, decided by a per-step RNG, so a step does
/// the same thing whichever thread runs it.
fn writer(server: &EtcdServer, seed: u64, lease: i64, progress: &Progress, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let step = progress.next_step.fetch_add(1, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let roll: f64 = rng.gen();
        let object = if step < 100 || roll < 0.70 { step } else { rng.gen_range(0..step) };
        let (key, kind) = object_key(seed, object);
        if step >= 100 && roll >= 0.94 {
            progress.deletes.fetch_add(server.delete(&key) as u64, Ordering::Relaxed);
            continue;
        }
        let value = object_value(&mut rng, &key, kind);
        progress.value_bytes.fetch_add(value.len() as u64, Ordering::Relaxed);
        if kind.leased {
            server.put_with_lease(&key, &value, lease);
        } else {
            server.put(&key, &value);
        }
        progress.puts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A kind of Kubernetes object: its resource path, how common it is, its value sizes.
#[derive(Clone, Copy)]
struct Kind {
    resource: &'static str,
    weight: u32,
    /// Value size range in bytes, drawn log-uniformly (most small, a few large).
    bytes: (u32, u32),
    leased: bool,
}

const fn kind(resource: &'static str, weight: u32, bytes: (u32, u32), leased: bool) -> Kind {
    Kind { resource, weight, bytes, leased }
}

const KINDS: &[Kind] = &[
    kind("events", 24, (600, 2_500), true),
    kind("pods", 20, (2_000, 24_000), false),
    kind("configmaps", 10, (300, 240_000), false),
    kind("secrets", 9, (400, 12_000), false),
    kind("replicasets", 8, (1_500, 10_000), false),
    kind("endpointslices", 6, (600, 30_000), false),
    kind("deployments", 5, (2_000, 14_000), false),
    kind("services/specs", 4, (500, 3_000), false),
    kind("leases", 4, (300, 600), false),
    kind("serviceaccounts", 3, (300, 1_200), false),
    kind("apiextensions.k8s.io/customresourcedefinitions", 2, (8_000, 400_000), false),
    kind("monitoring.coreos.com/prometheusrules", 3, (4_000, 120_000), false),
    kind("controllerrevisions", 2, (2_000, 90_000), false),
];

const APPS: &[&str] = &[
    "web",
    "api",
    "worker",
    "redis",
    "postgres",
    "ingress-nginx",
    "coredns",
    "grafana",
    "loki",
    "kafka",
];

/// Key and kind of object number `object`; the same number always names the same object.
fn object_key(seed: u64, object: u64) -> (Vec<u8>, Kind) {
    let mut rng =
        StdRng::seed_from_u64(seed.rotate_left(17) ^ object.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let total: u32 = KINDS.iter().map(|k| k.weight).sum();
    let mut pick = rng.gen_range(0..total);
    let kind = *KINDS
        .iter()
        .find(|k| {
            if pick < k.weight {
                true
            } else {
                pick -= k.weight;
                false
            }
        })
        .expect("weights cover the range");
    let ns = rng.gen_range(0..40u32);
    let ns = match ns {
        0 => "kube-system".to_string(),
        1 => "default".to_string(),
        2 => "monitoring".to_string(),
        n => format!("team-{n:02}"),
    };
    let app = APPS[rng.gen_range(0..APPS.len())];
    let key = if kind.resource.contains("customresourcedefinitions") {
        format!("/registry/{}/{app}s.example{object}.io", kind.resource)
    } else {
        format!(
            "/registry/{}/{ns}/{app}-{object:x}-{:05x}",
            kind.resource,
            rng.gen_range(0..0x100000u32)
        )
    };
    (key.into_bytes(), kind)
}

/// The value of one put: a real stored object (see [`crate::objects`]) of a size drawn
/// log-uniformly from the kind's range (most small, a few large).
fn object_value(rng: &mut StdRng, key: &[u8], kind: Kind) -> Vec<u8> {
    let (lo, hi) = (kind.bytes.0 as f64, kind.bytes.1 as f64);
    let len = (lo * (hi / lo).powf(rng.gen::<f64>())) as usize;
    let key = String::from_utf8_lossy(key);
    let name = key.rsplit('/').next().unwrap_or_default();
    let app = APPS.iter().find(|a| name.starts_with(*a)).copied().unwrap_or("app");
    crate::objects::stored_object(rng, &key, kind.resource, app, len)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
