//! What the operator serves over HTTP (`--listen`): `/livez`, `/healthz` and Prometheus
//! `/metrics`, as the agent does.
//!
//! Liveness says only that the process answers: a Kubernetes API that is away for a while must
//! not get the operator restarted in a loop. Health says whether it does its job: a standby is
//! healthy (waiting is its job); a leader is healthy while it renews its Lease and its last
//! inventory pass succeeded. The metrics are rendered by `prometheus-client` from [`Stats`] at
//! each scrape.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the operator has done since it started; shared by its tasks.
#[derive(Clone, Default)]
pub struct Stats(Arc<Mutex<Counts>>);

#[derive(Default)]
struct Counts {
    leader: bool,
    lease_renewed: Option<SystemTime>,
    lease_duration: Duration,
    backups_succeeded: u64,
    backups_failed: u64,
    last_backup_success: Option<SystemTime>,
    inventory_passes_ok: u64,
    inventory_passes_failed: u64,
    last_inventory_ok: Option<SystemTime>,
    /// The last inventory pass failed, and why.
    inventory_error: Option<String>,
    records: u64,
}

fn unix(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}

impl Stats {
    fn with<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// This replica now leads (its lease was just taken or renewed).
    pub fn lease_renewed(&self, duration: Duration) {
        self.with(|c| {
            c.leader = true;
            c.lease_renewed = Some(SystemTime::now());
            c.lease_duration = duration;
        })
    }

    pub fn backup_finished(&self, ok: bool) {
        self.with(|c| {
            if ok {
                c.backups_succeeded += 1;
                c.last_backup_success = Some(SystemTime::now());
            } else {
                c.backups_failed += 1;
            }
        })
    }

    /// One pass of the inventory over every repository: how many records it keeps, or why
    /// it failed.
    pub fn inventory_pass(&self, result: Result<u64, String>) {
        self.with(|c| match result {
            Ok(records) => {
                c.inventory_passes_ok += 1;
                c.last_inventory_ok = Some(SystemTime::now());
                c.inventory_error = None;
                c.records = records;
            }
            Err(e) => {
                c.inventory_passes_failed += 1;
                c.inventory_error = Some(e);
            }
        })
    }

    /// `/healthz`: the status and one line that says why.
    pub fn health(&self) -> (bool, String) {
        self.with(|c| {
            if !c.leader {
                return (true, "ok: standing by for the leader lease".into());
            }
            let renewed_ago = c
                .lease_renewed
                .and_then(|t| t.elapsed().ok())
                .unwrap_or(Duration::MAX);
            if renewed_ago > c.lease_duration {
                return (
                    false,
                    format!(
                        "the leader lease was last renewed {}s ago (duration {}s): the Kubernetes API does not answer",
                        renewed_ago.as_secs(),
                        c.lease_duration.as_secs()
                    ),
                );
            }
            match &c.inventory_error {
                Some(e) => (false, format!("leading, but the last inventory pass failed: {e}")),
                None => (true, format!("ok: leading; {} backup records", c.records)),
            }
        })
    }

    /// The metrics in the OpenMetrics text format.
    pub fn metrics(&self) -> String {
        let mut registry = Registry::with_prefix("etcdguard_operator");
        self.with(|c| {
            let by_result = |ok: u64, failed: u64| {
                let family = Family::<Vec<(String, String)>, Counter>::default();
                family.get_or_create(&vec![("result".into(), "success".into())]).inc_by(ok);
                family.get_or_create(&vec![("result".into(), "failure".into())]).inc_by(failed);
                family
            };
            let gauge = |v: f64| {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(v);
                g
            };
            registry.register(
                "leader",
                "1 while this replica holds the leader lease",
                gauge(if c.leader { 1.0 } else { 0.0 }),
            );
            registry.register(
                "backups",
                "EtcdBackups taken by this replica, by result",
                by_result(c.backups_succeeded, c.backups_failed),
            );
            registry.register(
                "last_backup_success_timestamp_seconds",
                "When an EtcdBackup taken by this replica last succeeded (0: never)",
                gauge(unix(c.last_backup_success)),
            );
            registry.register(
                "inventory_passes",
                "Passes of the inventory over every repository, by result",
                by_result(c.inventory_passes_ok, c.inventory_passes_failed),
            );
            registry.register(
                "last_inventory_success_timestamp_seconds",
                "When an inventory pass last succeeded (0: never)",
                gauge(unix(c.last_inventory_ok)),
            );
            registry.register(
                "backup_records",
                "EtcdBackupRecords the last inventory pass keeps",
                gauge(c.records as f64),
            );
        });
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Serves `/livez`, `/healthz` (and `/readyz`) and `/metrics` on `listen` from a thread of its
/// own, so a busy runtime does not make a probe time out.
pub fn serve(listen: &str, stats: Stats) -> std::io::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, e.to_string()))?;
    let addr =
        server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("not an IP listener"))?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let (status, body, content_type) = match request.url() {
                "/livez" => (200, "alive\n".to_string(), "text/plain; charset=utf-8"),
                "/healthz" | "/readyz" => {
                    let (ok, text) = stats.health();
                    (if ok { 200 } else { 503 }, text + "\n", "text/plain; charset=utf-8")
                }
                "/metrics" => (
                    200,
                    stats.metrics(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                _ => (
                    404,
                    "not found: try /livez, /healthz or /metrics\n".into(),
                    "text/plain; charset=utf-8",
                ),
            };
            etcdguard_workflow::agent::respond(request, status, body, content_type);
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_healthy_and_a_leader_that_stopped_renewing_is_not() {
        let stats = Stats::default();
        assert!(stats.health().0, "a standby waits: healthy");
        stats.lease_renewed(Duration::from_secs(15));
        stats.inventory_pass(Ok(3));
        let (ok, text) = stats.health();
        assert!(ok && text.contains("3 backup records"), "{text}");
        stats.with(|c| c.lease_renewed = Some(SystemTime::now() - Duration::from_secs(60)));
        let (ok, text) = stats.health();
        assert!(!ok && text.contains("60s ago"), "{text}");
        stats.lease_renewed(Duration::from_secs(15));
        stats.inventory_pass(Err("s3://b: access denied".into()));
        let (ok, text) = stats.health();
        assert!(!ok && text.contains("access denied"), "{text}");
    }

    #[test]
    fn metrics_count_backups_by_result() {
        let stats = Stats::default();
        stats.backup_finished(true);
        stats.backup_finished(false);
        stats.backup_finished(true);
        let m = stats.metrics();
        assert!(m.contains("etcdguard_operator_backups_total{result=\"success\"} 2"), "{m}");
        assert!(m.contains("etcdguard_operator_backups_total{result=\"failure\"} 1"), "{m}");
        assert!(m.contains("etcdguard_operator_leader 0"), "{m}");
        assert!(m.ends_with("# EOF\n"), "{m}");
    }
}
