//! Statistics over the measured runs, and the table / JSON forms of the report.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cases::{Case, Env, Target};
use crate::dataset::mib;
use crate::measure::Measured;

/// Summary of one tool's measured runs in one case.
#[derive(Clone, Debug)]
pub struct ToolStats {
    pub tool: String,
    pub runs: usize,
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
    /// Largest peak RSS over the runs.
    pub peak_rss: u64,
    /// Median user + system CPU time.
    pub median_cpu: Duration,
}

impl ToolStats {
    fn new(tool: &str, runs: &[Measured]) -> ToolStats {
        let walls: Vec<Duration> = runs.iter().map(|m| m.wall).collect();
        let cpus: Vec<Duration> = runs.iter().map(|m| m.user + m.sys).collect();
        ToolStats {
            tool: tool.to_string(),
            runs: runs.len(),
            median: median(&walls),
            min: walls.iter().copied().min().unwrap_or_default(),
            max: walls.iter().copied().max().unwrap_or_default(),
            peak_rss: runs.iter().map(|m| m.max_rss).max().unwrap_or(0),
            median_cpu: median(&cpus),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "tool": self.tool,
            "runs": self.runs,
            "median_s": self.median.as_secs_f64(),
            "min_s": self.min.as_secs_f64(),
            "max_s": self.max.as_secs_f64(),
            "peak_rss_bytes": self.peak_rss,
            "median_cpu_s": self.median_cpu.as_secs_f64(),
        })
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// One case's outcome: either both tools' statistics, or why it could not be measured.
#[derive(Clone, Debug)]
pub struct CaseReport {
    pub case: String,
    pub about: String,
    pub target: Target,
    pub reference: Option<ToolStats>,
    pub etcdguard: Option<ToolStats>,
    /// Reference median / etcdguard median: above 1 means etcdguard is faster.
    pub speedup: Option<f64>,
    pub target_met: Option<bool>,
    /// A failed run or check: the benchmark then exits 1.
    pub error: Option<String>,
}

impl CaseReport {
    pub fn new(case: &dyn Case, reference: &[Measured], etcdguard: &[Measured]) -> CaseReport {
        let r = ToolStats::new(case.reference(), reference);
        let g = ToolStats::new("etcdguard", etcdguard);
        let speedup = r.median.as_secs_f64() / g.median.as_secs_f64().max(1e-9);
        let target = case.target();
        let target_met = (target.min_speedup.is_some() || target.max_rss.is_some()).then(|| {
            target.min_speedup.is_none_or(|x| speedup >= x)
                && target.max_rss.is_none_or(|m| g.peak_rss <= m)
        });
        CaseReport {
            case: case.name().into(),
            about: case.about().into(),
            target,
            reference: Some(r),
            etcdguard: Some(g),
            speedup: Some(speedup),
            target_met,
            error: None,
        }
    }

    pub fn failed(case: &dyn Case, error: String) -> CaseReport {
        CaseReport {
            case: case.name().into(),
            about: case.about().into(),
            target: case.target(),
            reference: None,
            etcdguard: None,
            speedup: None,
            target_met: None,
            error: Some(error),
        }
    }

    fn target_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(x) = self.target.min_speedup {
            // A "no slower than k×" target is stored as the speedup 1/k: say it as the issue does.
            if x < 1.0 {
                parts.push(format!("≥ {x:.2}× (etcdguard ≤ {:.2}× the reference's time)", 1.0 / x));
            } else {
                parts.push(format!("≥ {x:.2}×"));
            }
        }
        if let Some(m) = self.target.max_rss {
            parts.push(format!("etcdguard RSS ≤ {:.0} MiB", mib(m)));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "case": self.case,
            "about": self.about,
            "target": {
                "min_speedup": self.target.min_speedup,
                "max_rss_bytes": self.target.max_rss,
            },
            "reference": self.reference.as_ref().map(ToolStats::to_json),
            "etcdguard": self.etcdguard.as_ref().map(ToolStats::to_json),
            "speedup": self.speedup,
            "target_met": self.target_met,
            "check": if self.error.is_some() { "failed" } else { "ok" },
            "error": self.error,
        })
    }
}

pub struct Report {
    pub runs: usize,
    pub warmup: usize,
    pub snapshot: String,
    pub snapshot_bytes: u64,
    pub dataset: Option<Value>,
    pub etcdguard: String,
    pub etcdguard_version: String,
    pub reference_version: String,
    pub cases: Vec<CaseReport>,
}

impl Report {
    pub fn new(
        runs: usize,
        warmup: usize,
        env: &Env,
        etcdguard_version: String,
        reference_version: String,
    ) -> Report {
        Report {
            runs,
            warmup,
            snapshot: env.snapshot().display().to_string(),
            snapshot_bytes: env.dataset.snapshot_bytes(),
            dataset: env.dataset.meta.as_ref().and_then(|m| serde_json::to_value(m).ok()),
            etcdguard: env.etcdguard.display().to_string(),
            etcdguard_version,
            reference_version,
            cases: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "runs": self.runs,
            "warmup": self.warmup,
            "snapshot": self.snapshot,
            "snapshot_bytes": self.snapshot_bytes,
            "dataset": self.dataset,
            "etcdguard": self.etcdguard,
            "etcdguard_version": self.etcdguard_version,
            "reference_version": self.reference_version,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cases": self.cases.iter().map(CaseReport::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nsnapshot {} ({:.1} MiB); {} measured runs per tool after {} warm-up, alternating",
            self.snapshot,
            mib(self.snapshot_bytes),
            self.runs,
            self.warmup
        );
        let _ = writeln!(s, "etcdguard: {} ({})", self.etcdguard, self.etcdguard_version);
        let _ = writeln!(s, "reference: etcd {}\n", self.reference_version);
        let _ = writeln!(
            s,
            "{:<18} {:<10} {:>9} {:>9} {:>9} {:>11} {:>9}",
            "case", "tool", "median", "min", "max", "peak RSS", "CPU"
        );
        let _ = writeln!(s, "{}", "-".repeat(81));
        for c in &self.cases {
            if let Some(err) = &c.error {
                let _ = writeln!(s, "{:<18} FAILED: {err}", c.case);
                continue;
            }
            for (i, t) in
                [c.reference.as_ref(), c.etcdguard.as_ref()].into_iter().flatten().enumerate()
            {
                let _ = writeln!(
                    s,
                    "{:<18} {:<10} {:>8.3}s {:>8.3}s {:>8.3}s {:>7.1} MiB {:>8.2}s",
                    if i == 0 { c.case.as_str() } else { "" },
                    t.tool,
                    t.median.as_secs_f64(),
                    t.min.as_secs_f64(),
                    t.max.as_secs_f64(),
                    mib(t.peak_rss),
                    t.median_cpu.as_secs_f64()
                );
            }
            let verdict = match c.target_met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "-",
            };
            let _ = writeln!(
                s,
                "{:<18} speedup {:.2}× (median {}/etcdguard); target {}: {verdict}; outputs equal\n",
                "",
                c.speedup.unwrap_or(0.0),
                c.reference.as_ref().map(|r| r.tool.as_str()).unwrap_or("?"),
                c.target_text()
            );
        }
        s
    }
}
