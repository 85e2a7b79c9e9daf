//! Leader election on a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers do
//! it: the holder renews `renewTime` every third of the lease duration; a candidate takes
//! the lease when it is free or its renew time is older than the duration. Every write is a
//! replace carrying the resourceVersion read, so of two candidates only one wins (the other
//! gets 409 Conflict and reads again).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::Error;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// Told of every renewal, for `/healthz` and the `leader` metric.
    pub stats: crate::metrics::Stats,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whether a lease held by someone else has run out.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    renewed.0.as_second().saturating_add(secs) < now.as_second()
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration: duration.max(Duration::from_secs(2)),
            stats: crate::metrics::Stats::default(),
        }
    }

    fn seconds(&self) -> i32 {
        self.duration.as_secs().min(i32::MAX as u64) as i32
    }

    /// One attempt: true when this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired(spec, now) {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(self.seconds());
        spec.renew_time = Some(micro_now());
        // The resourceVersion read above rides along: a concurrent writer makes this 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) -> Result<(), Error> {
        let retry = self.duration / 4;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.stats.lease_renewed(self.duration);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("lease {}: {e}", self.name),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the lease every third of its duration; returns an error once it could not be
    /// renewed for two thirds of it (another replica may take it after the whole duration,
    /// so this one stops working before that).
    pub async fn keep(&self) -> Result<(), Error> {
        let period = self.duration / 3;
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewed = std::time::Instant::now();
                    self.stats.lease_renewed(self.duration);
                }
                Ok(false) => return Err(Error::LostLease(self.name.clone())),
                Err(e) => tracing::warn!("renewing lease {}: {e}", self.name),
            }
            if last_renewed.elapsed() > period * 2 {
                return Err(Error::LostLease(self.name.clone()));
            }
        }
    }

    /// Gives the lease up (on a clean stop), so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            tracing::warn!("releasing lease {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_after_its_duration_since_the_last_renewal() {
        let now = Timestamp::now();
        let at = |secs_ago: i64| {
            Some(MicroTime(now - k8s_openapi::jiff::SignedDuration::from_secs(secs_ago)))
        };
        let spec = |renewed, duration| LeaseSpec {
            renew_time: renewed,
            lease_duration_seconds: Some(duration),
            ..Default::default()
        };
        assert!(!expired(&spec(at(5), 15), now));
        assert!(expired(&spec(at(20), 15), now));
        assert!(expired(&spec(None, 15), now), "never renewed: free");
    }
}
