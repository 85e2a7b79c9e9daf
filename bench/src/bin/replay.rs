//! Offline point-in-time replay speed (continuous capture), against replay through a
//! temporary etcd (what restoring continuous backups costs elsewhere).
//!
//! `cargo run --release -p etcdguard-bench --bin replay -- --revisions 1000000`
//!
//! 1. A base snapshot from a real etcd 3.5.1 (a few thousand Kubernetes-shaped keys), or
//!    `--base FILE` (e.g. the ~1 GiB bench snapshot).
//! 2. N revisions of synthetic changes after it (puts of ~`--value-bytes`, 10 % deletes, 10 %
//!    two-key transactions), generated on the fly: never held in memory.
//! 3. etcdguard's `storage::replay::replay_snapshot` builds the snapshot at the last revision
//!    offline; its time gives revisions/s, and its peak RSS is printed.
//! 4. The same kind of changes written one revision at a time to a temporary etcd (with fsync,
//!    then with --unsafe-no-fsync), as replay-through-etcd restores do: revisions/s.
//! 5. The replayed file is checked: its status revision is base + N.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use etcdguard_storage::replay::{replay_snapshot, Event, EventKind};
use etcdguard_testkit::{EtcdServer, EtcdVersion};

#[derive(Parser)]
struct Opts {
    #[arg(long, default_value_t = 1_000_000)]
    revisions: i64,
    #[arg(long, default_value_t = 300)]
    value_bytes: usize,
    /// Revisions written to the temporary etcd for the reference rate (each mode).
    #[arg(long, default_value_t = 3000)]
    reference_revisions: i64,
    /// Base snapshot (default: a small one made from a real etcd 3.5.1).
    #[arg(long)]
    base: Option<PathBuf>,
    #[arg(long, default_value = "bench/work/replay")]
    work_dir: PathBuf,
}

fn rss_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Changes for revisions base+1 ..= base+n, deterministic, made as they are consumed.
fn changes(base: i64, n: i64, value_bytes: usize) -> impl Iterator<Item = Result<Event, String>> {
    let mut live: std::collections::HashMap<u32, (i64, i64)> = std::collections::HashMap::new();
    let value = vec![b'v'; value_bytes];
    (1..=n).flat_map(move |i| {
        let rev = base + i;
        let a = (i as u64 * 7919 % 50_000) as u32;
        let keys: Vec<u32> = if i % 10 == 3 {
            vec![a, (i as u64 * 104_729 % 50_000) as u32 + 50_000]
        } else {
            vec![a]
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let key = format!("/registry/configmaps/ns{}/cm-{k:06}", k % 20).into_bytes();
            if i % 10 == 7 && live.contains_key(&k) {
                live.remove(&k);
                out.push(Ok(Event {
                    kind: EventKind::Delete,
                    key,
                    mod_revision: rev,
                    create_revision: 0,
                    version: 0,
                    value: Vec::new(),
                    lease: 0,
                }));
            } else {
                let (create, version) = live.get(&k).map(|(c, v)| (*c, v + 1)).unwrap_or((rev, 1));
                live.insert(k, (create, version));
                out.push(Ok(Event {
                    kind: EventKind::Put,
                    key,
                    mod_revision: rev,
                    create_revision: create,
                    version,
                    value: value.clone(),
                    lease: 0,
                }));
            }
        }
        out
    })
}

fn through_etcd(no_fsync: bool, n: i64, value_bytes: usize) -> f64 {
    let mut b = EtcdServer::builder(EtcdVersion::V3_5);
    if no_fsync {
        b = b.arg("--unsafe-no-fsync");
    }
    let server = b.start();
    let value = vec![b'v'; value_bytes];
    let started = Instant::now();
    for i in 0..n {
        server.put(
            format!("/registry/configmaps/ns{}/cm-{:06}", i % 20, (i * 7919) % 50_000).as_bytes(),
            &value,
        );
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn revision_of(path: &std::path::Path) -> anyhow::Result<i64> {
    let f = etcdguard_storage::SnapshotFile::open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let db = f.db().map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
    let release = || f.release_resident();
    Ok(etcdguard_storage::status(&db, Some(&release))
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?
        .revision)
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    std::fs::create_dir_all(&opts.work_dir)?;
    let base = match &opts.base {
        Some(b) => b.clone(),
        None => {
            let base = opts.work_dir.join("base.db");
            if !base.exists() {
                let server = EtcdServer::start(EtcdVersion::V3_5);
                for i in 0..5000 {
                    server.put(
                        format!("/registry/pods/ns{}/p-{i:06}", i % 20).as_bytes(),
                        &[b'p'; 500],
                    );
                }
                server.snapshot_save(&base);
            }
            base
        }
    };
    let base_rev = revision_of(&base)?;
    let out = opts.work_dir.join("replayed.db");
    let _ = std::fs::remove_file(&out);
    let mut events = changes(base_rev, opts.revisions, opts.value_bytes);
    let started = Instant::now();
    let r = replay_snapshot(&base, &out, &mut events, None, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = started.elapsed().as_secs_f64();
    // Before the check below maps and walks the result.
    let replay_rss = rss_peak_mib();
    let rate = r.revisions as f64 / secs;
    let size = std::fs::metadata(&out)?.len();
    let check = revision_of(&out)?;
    anyhow::ensure!(
        check == base_rev + opts.revisions,
        "replayed file is at revision {check}, expected {}",
        base_rev + opts.revisions
    );
    println!(
        "etcdguard offline replay: {} revisions ({} changes) in {secs:.2} s = {rate:.0} revisions/s (copy of the {:.1} MiB base and the new sha256 trailer included); result {:.1} MiB at revision {check}; peak RSS {:.1} MiB",
        r.revisions,
        r.events,
        std::fs::metadata(&base)?.len() as f64 / 1048576.0,
        size as f64 / 1048576.0,
        replay_rss
    );
    if opts.reference_revisions > 0 {
        let fsync = through_etcd(false, opts.reference_revisions, opts.value_bytes);
        let nofsync = through_etcd(true, opts.reference_revisions, opts.value_bytes);
        println!(
            "replay through a temporary etcd 3.5.1, one revision at a time: {fsync:.0} revisions/s with fsync, {nofsync:.0} with --unsafe-no-fsync ({} revisions each)",
            opts.reference_revisions
        );
        println!("ratio: {:.0}x the fsync replay, {:.0}x the no-fsync replay (target: >= 50,000 revisions/s)", rate / fsync, rate / nofsync);
    }
    let _ = std::fs::remove_file(&out);
    Ok(())
}
