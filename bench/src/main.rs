//! `etcdguard-bench`: runs etcdguard and the real etcd tools on the same files, alternately,
//! and prints median wall times, peak RSS and the ratio against each case's target.
//! See bench/README.md.

mod cases;
mod dataset;
mod measure;
mod objects;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcdguard_testkit::EtcdVersion;

use cases::{Case, Env, Tool};
use dataset::{Dataset, DatasetSpec};
use measure::Measured;
use report::{CaseReport, Report};

/// Compares etcdguard with the real etcd tools (etcdutl/etcdctl 3.5.1) on the same files.
///
/// Builds (once, cached under bench/work/) a Kubernetes-shaped snapshot with a real etcd,
/// then for each case runs the two commands alternately and reports medians, peak RSS and
/// the speed ratio. Build etcdguard first: `cargo build --release -p etcdguard`.
#[derive(Parser, Debug)]
#[command(name = "etcdguard-bench", version)]
struct Opts {
    /// Size of the generated snapshot in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mb: u64,
    /// Seed of the generated data (part of the cache key with the size).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use this snapshot file instead of a generated one (live-server cases are then skipped).
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Measured runs of each tool per case.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unmeasured runs of each tool first (warm the page cache; their outputs are checked).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Cases to run (comma-separated or repeated); default: every default case. See --list.
    #[arg(long = "case", value_delimiter = ',')]
    cases: Vec<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// The etcdguard binary under test.
    #[arg(long, env = "ETCDGUARD_BIN", value_name = "PATH")]
    etcdguard: Option<PathBuf>,
    /// Where datasets and per-run scratch dirs live (default: <workspace>/bench/work).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Concurrent writers when generating a dataset.
    #[arg(long, default_value_t = 4)]
    load_threads: usize,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit with code 2 when a case misses its target (correctness failures always exit 1).
    #[arg(long)]
    strict: bool,
    /// Keep each run's scratch directory (outputs) instead of deleting it after the run.
    #[arg(long)]
    keep_scratch: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(measure::LAUNCHER_ARG) {
        std::process::exit(measure::launcher(std::env::args_os().skip(2).collect()));
    }
    let opts = Opts::parse();
    match run(&opts) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("etcdguard-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(opts: &Opts) -> Result<i32> {
    let all = cases::all();
    if opts.list {
        for case in &all {
            let default = if case.default_on() { "" } else { " (not in the default set)" };
            println!(
                "{:<18} {} vs etcdguard: {}{default}",
                case.name(),
                case.reference(),
                case.about()
            );
        }
        return Ok(0);
    }
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let selected: Vec<&dyn Case> = if opts.cases.is_empty() || opts.cases.iter().any(|c| c == "all")
    {
        all.iter()
            .filter(|c| c.default_on() || opts.cases.iter().any(|n| n == "all"))
            .map(|c| &**c)
            .collect()
    } else {
        let mut v = Vec::new();
        for name in &opts.cases {
            match all.iter().find(|c| c.name() == name) {
                Some(c) => v.push(&**c),
                None => bail!("no case named {name:?}; --list shows them"),
            }
        }
        v
    };

    let root = workspace_root();
    let etcdguard = opts.etcdguard.clone().unwrap_or_else(|| root.join("target/release/etcdguard"));
    if !etcdguard.is_file() {
        bail!(
            "etcdguard binary not found at {}; build it with `cargo build --release -p etcdguard` \
             (from {}) or pass --etcdguard PATH / ETCDGUARD_BIN",
            etcdguard.display(),
            root.display()
        );
    }
    let etcd = EtcdVersion::V3_5.binaries();
    let work = opts.work_dir.clone().unwrap_or_else(|| root.join("bench/work"));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;

    let dataset = match &opts.snapshot {
        Some(file) => Dataset::external(file)?,
        None => dataset::ensure(
            &work,
            &DatasetSpec {
                size_mb: opts.size_mb,
                seed: opts.seed,
                load_threads: opts.load_threads,
            },
        )?,
    };
    let env = Env::new(etcdguard, etcd, dataset);
    let mut report =
        Report::new(opts.runs, opts.warmup, &env, version_of(env.etcdguard().arg("--version")), {
            let mut c = env.etcdutl()?;
            c.arg("version");
            version_of(&mut c)
        });

    for case in selected {
        eprintln!(
            "case {}: {} runs of each tool after {} warm-up",
            case.name(),
            opts.runs,
            opts.warmup
        );
        let result = if case.needs_live_server() && env.dataset.data_dir.is_none() {
            Err(anyhow::anyhow!("skipped: needs a generated dataset (not --snapshot FILE)"))
        } else {
            run_case(case, &env, opts, &work)
        };
        report.cases.push(match result {
            Ok(r) => r,
            Err(e) => CaseReport::failed(case, format!("{e:#}")),
        });
    }

    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.cases.iter().any(|c| c.error.is_some()) {
        1
    } else if opts.strict && report.cases.iter().any(|c| c.target_met == Some(false)) {
        2
    } else {
        0
    })
}

/// Runs one case: warm-up and measured rounds, alternating which tool goes first.
fn run_case(case: &dyn Case, env: &Env, opts: &Opts, work: &Path) -> Result<CaseReport> {
    if case.needs_live_server() {
        env.live_server()?;
    }
    let case_dir = work.join("runs").join(case.name());
    let mut reference = Vec::new();
    let mut guard = Vec::new();
    for round in 0..opts.warmup + opts.runs {
        let order = if round % 2 == 0 {
            [Tool::Reference, Tool::Etcdguard]
        } else {
            [Tool::Etcdguard, Tool::Reference]
        };
        let mut pair: [Option<Measured>; 2] = [None, None];
        for tool in order {
            let label = match tool {
                Tool::Reference => case.reference(),
                Tool::Etcdguard => "etcdguard",
            };
            let scratch = case_dir.join(format!("round{round}-{label}"));
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch)?;
            }
            std::fs::create_dir_all(&scratch)?;
            let mut cmd = case.command(tool, env, &scratch)?;
            let m = measure::run(&mut cmd, &scratch)?;
            if !m.success() {
                bail!(
                    "{label} failed ({}): {}\nstderr: {}\n(outputs kept in {})",
                    m.describe_status(),
                    m.command,
                    m.stderr_text().trim(),
                    scratch.display()
                );
            }
            eprintln!(
                "  round {round}{} {label:<10} {:>9.3} s  {:>8.1} MiB",
                if round < opts.warmup { " (warm-up)" } else { "" },
                m.wall.as_secs_f64(),
                dataset::mib(m.max_rss)
            );
            pair[(tool == Tool::Etcdguard) as usize] = Some(m);
        }
        let [Some(r), Some(g)] = pair else { unreachable!("both tools ran") };
        if round == 0 {
            case.check(env, &r, &g).with_context(|| {
                format!(
                    "check failed (outputs in {} and {})",
                    r.scratch.display(),
                    g.scratch.display()
                )
            })?;
        }
        if !opts.keep_scratch {
            let _ = std::fs::remove_dir_all(&r.scratch);
            let _ = std::fs::remove_dir_all(&g.scratch);
        }
        if round >= opts.warmup {
            reference.push(r);
            guard.push(g);
        }
    }
    Ok(CaseReport::new(case, &reference, &guard))
}

/// First line of a `--version`-style output, or a note that there was none.
fn version_of(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Ok(out) => format!("unknown ({})", out.status),
        Err(e) => format!("unknown ({e})"),
    }
}
