//! Continuous capture under the heaviest write load this machine gives a real etcd 3.5.1.
//!
//! `cargo build --release -p etcdguard -p etcdguard-bench &&
//!  target/release/capture --etcdguard target/release/etcdguard`
//!
//! 1. Ceiling: many concurrent gRPC clients write Txns of several puts to etcd for
//!    `--seconds`, with no capture running: puts/s and revisions/s etcd itself reaches here.
//! 2. The same load while `etcdguard agent --continuous` (a separate process) captures into a
//!    local repository. Every 200 ms: the agent's `etcdguard_rpo_seconds` and durable revision
//!    (/metrics), the live revision (from the writers' responses), the agent's RSS.
//! 3. Reports puts/s, revisions/s, RPO p50/p99/max, lag p50/p99 in revisions, the agent's peak
//!    RSS, and how long capture took to store the last revision after the load stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, Txn, TxnOp};
use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};

#[derive(Parser)]
struct Opts {
    /// The etcdguard binary (a release build for meaningful numbers).
    #[arg(long, default_value = "target/release/etcdguard")]
    etcdguard: PathBuf,
    /// Seconds of load in each phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Puts per Txn (one revision each Txn).
    #[arg(long, default_value_t = 8)]
    puts_per_txn: usize,
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    #[arg(long, default_value = "1s")]
    segment_interval: String,
    #[arg(long, default_value = "bench/work/capture")]
    work_dir: PathBuf,
}

struct LoadResult {
    puts: u64,
    txns: u64,
    seconds: f64,
    errors: u64,
}

/// Writes for `seconds` from `clients` concurrent writers; `live` follows the newest revision.
fn load(endpoint: &str, opts: &Opts, live: &Arc<AtomicI64>) -> LoadResult {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::connect([endpoint], None).await.expect("connect");
        let (puts, txns, errors) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..opts.clients {
            let (mut kv, puts, txns, errors, stop, live) = (
                client.kv_client(),
                puts.clone(),
                txns.clone(),
                errors.clone(),
                stop.clone(),
                live.clone(),
            );
            let (n, value) = (opts.puts_per_txn, vec![b'v'; opts.value_bytes]);
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ops: Vec<TxnOp> = (0..n)
                        .map(|k| {
                            TxnOp::put(
                                format!(
                                    "/registry/configmaps/ns{w}/cm-{:05}",
                                    (i * n as u64 + k as u64) % 2000
                                ),
                                value.clone(),
                                None,
                            )
                        })
                        .collect();
                    match kv.txn(Txn::new().and_then(ops)).await {
                        Ok(r) => {
                            txns.fetch_add(1, Ordering::Relaxed);
                            puts.fetch_add(n as u64, Ordering::Relaxed);
                            if let Some(h) = r.header() {
                                live.fetch_max(h.revision(), Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        LoadResult {
            puts: puts.load(Ordering::Relaxed),
            txns: txns.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            errors: errors.load(Ordering::Relaxed),
        }
    })
}

fn metrics(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call().ok()?.into_string().ok()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// (VmRSS, VmHWM) of `pid` in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, r: &LoadResult) {
    println!(
        "{name}: {:.0} puts/s, {:.0} revisions (Txns)/s over {:.1} s ({} puts, {} failed Txns)",
        r.puts as f64 / r.seconds,
        r.txns as f64 / r.seconds,
        r.seconds,
        r.puts,
        r.errors
    );
}

fn main() {
    let opts = Opts::parse();
    assert!(
        opts.etcdguard.exists(),
        "{}: build it first (cargo build --release -p etcdguard)",
        opts.etcdguard.display()
    );
    let _ = std::fs::remove_dir_all(&opts.work_dir);
    std::fs::create_dir_all(&opts.work_dir).unwrap();
    let server = EtcdServer::builder(EtcdVersion::V3_5).quota_bytes(8 << 30).start();
    println!(
        "etcd {} at {}; {} writers, Txns of {} puts of {} bytes",
        EtcdVersion::V3_5.label(),
        server.endpoint(),
        opts.clients,
        opts.puts_per_txn,
        opts.value_bytes
    );

    // 1. etcd alone.
    let live = Arc::new(AtomicI64::new(server.revision()));
    let alone = load(server.endpoint(), &opts, &live);
    report("etcd alone (no capture)", &alone);
    // Keep the history short for the capture phase's full backup.
    server.compact(server.revision());

    // 2. Capture while loading.
    let repo = opts.work_dir.join("repo");
    let port = free_port();
    let log = std::fs::File::create(opts.work_dir.join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(&opts.etcdguard)
        .args(["agent", "--continuous", "--no-elect", "--repo"])
        .arg(&repo)
        .args([
            "--endpoints",
            server.endpoint(),
            "--segment-interval",
            &opts.segment_interval,
            "--full-every",
            "24h",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the agent");
    let pid = agent.id();
    let start = Instant::now();
    let base = server.revision();
    while metrics(port)
        .and_then(|m| sample(&m, "etcdguard_capture_durable_revision"))
        .is_none_or(|d| (d as i64) < base)
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "capture did not start (see {})",
            opts.work_dir.join("agent.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("capture started at revision {base} after {:.1} s (full backup included); agent RSS {:.1} MiB", start.elapsed().as_secs_f64(), rss_mib(pid).0);
    let live = Arc::new(AtomicI64::new(server.revision()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (live, sampling) = (live.clone(), sampling.clone());
        std::thread::spawn(move || {
            let (mut rpo, mut lag, mut rss) = (Vec::new(), Vec::new(), Vec::new());
            while sampling.load(Ordering::Relaxed) {
                if let Some(m) = metrics(port) {
                    if let (Some(r), Some(d)) = (
                        sample(&m, "etcdguard_rpo_seconds"),
                        sample(&m, "etcdguard_capture_durable_revision"),
                    ) {
                        rpo.push(r);
                        lag.push((live.load(Ordering::Relaxed) - d as i64).max(0) as f64);
                    }
                }
                rss.push(rss_mib(pid).0);
                std::thread::sleep(Duration::from_millis(200));
            }
            (rpo, lag, rss)
        })
    };
    let captured = load(server.endpoint(), &opts, &live);
    sampling.store(false, Ordering::Relaxed);
    let (mut rpo, mut lag, rss) = sampler.join().unwrap();
    let last = server.revision();
    let stopped = Instant::now();
    while metrics(port)
        .and_then(|m| sample(&m, "etcdguard_capture_durable_revision"))
        .is_none_or(|d| (d as i64) < last)
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(300),
            "capture did not catch up to revision {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let catch_up = stopped.elapsed().as_secs_f64();
    let m = metrics(port).unwrap_or_default();
    let (_, peak) = rss_mib(pid);
    report("etcd with capture", &captured);
    println!(
        "RPO (etcdguard_rpo_seconds, {} samples every 200 ms): p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        rpo.len(),
        percentile(&mut rpo, 0.5),
        percentile(&mut rpo, 0.99),
        rpo.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "lag (live revision - durable revision): p50 {:.0}, p99 {:.0} revisions",
        percentile(&mut lag, 0.5),
        percentile(&mut lag, 0.99)
    );
    println!(
        "agent RSS: peak {peak:.1} MiB (sampled max {:.1} MiB); segments {}, {:.1} MiB; stored revision {last} {catch_up:.2} s after the load stopped",
        rss.iter().cloned().fold(0.0, f64::max),
        sample(&m, "etcdguard_segments_total").unwrap_or(0.0),
        sample(&m, "etcdguard_segment_bytes_total").unwrap_or(0.0) / (1024.0 * 1024.0)
    );
    println!(
        "revisions captured: {} ({} gaps)",
        last - base,
        sample(&m, "etcdguard_capture_gaps_total").unwrap_or(-1.0)
    );
    // SAFETY: plain kill(2) of the agent this bench started, by its PID.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let _ = agent.wait();
}
