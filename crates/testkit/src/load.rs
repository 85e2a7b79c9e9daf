use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::EtcdServer;

/// What [`load_kubernetes_shaped`] writes.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Objects created (keys `/registry/<resource>/<namespace>/<name>`).
    pub objects: usize,
    /// Of those, how many get values over 64 KiB (so bbolt needs overflow pages).
    pub large_objects: usize,
    /// Objects overwritten once after creation.
    pub updates: usize,
    /// Objects deleted after creation (tombstones in the history).
    pub deletes: usize,
    /// Compact the history at the midpoint of the writes.
    pub compact: bool,
    /// Attach some keys to a lease, as events and leader-election records are.
    pub leases: bool,
    /// Size range of ordinary values in bytes.
    pub value_bytes: (usize, usize),
    pub seed: u64,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            objects: 600,
            large_objects: 3,
            updates: 120,
            deletes: 60,
            compact: true,
            leases: true,
            value_bytes: (512, 8 * 1024),
            seed: 7,
        }
    }
}

/// What was written, for assertions.
#[derive(Clone, Debug, Default)]
pub struct LoadSummary {
    pub puts: usize,
    pub deletes: usize,
    pub compacted_at: Option<i64>,
    pub final_revision: i64,
    pub bytes_written: u64,
}

const RESOURCES: &[&str] = &[
    "pods",
    "configmaps",
    "secrets",
    "services/specs",
    "deployments",
    "replicasets",
    "serviceaccounts",
    "events",
    "leases",
    "endpointslices",
];
const NAMESPACES: &[&str] = &["default", "kube-system", "monitoring", "team-a", "team-b"];

/// Writes Kubernetes-shaped keys and values into `server`: creates, a compaction half way,
/// updates, deletes, large values and leased keys.
pub fn load_kubernetes_shaped(server: &EtcdServer, spec: &LoadSpec) -> LoadSummary {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut summary = LoadSummary::default();
    let keys: Vec<Vec<u8>> = (0..spec.objects)
        .map(|i| {
            let resource = RESOURCES[i % RESOURCES.len()];
            let ns = NAMESPACES[(i / RESOURCES.len()) % NAMESPACES.len()];
            format!("/registry/{resource}/{ns}/object-{i:06}").into_bytes()
        })
        .collect();
    let lease = spec.leases.then(|| server.grant_lease(3600));

    for (i, key) in keys.iter().enumerate() {
        let len = if i < spec.large_objects {
            65 * 1024 + rng.gen_range(0..64 * 1024)
        } else {
            rng.gen_range(spec.value_bytes.0..=spec.value_bytes.1)
        };
        let value = object_value(&mut rng, key, len);
        summary.bytes_written += value.len() as u64;
        match lease {
            Some(lease) if key.starts_with(b"/registry/events/") => {
                server.put_with_lease(key, &value, lease);
            }
            _ => {
                server.put(key, &value);
            }
        }
        summary.puts += 1;
        if spec.compact && i == spec.objects / 2 {
            let rev = server.revision();
            server.compact(rev);
            summary.compacted_at = Some(rev);
        }
    }
    for i in 0..spec.updates.min(keys.len()) {
        let key = &keys[(i * 7) % keys.len()];
        let len = rng.gen_range(spec.value_bytes.0..=spec.value_bytes.1);
        let value = object_value(&mut rng, key, len);
        summary.bytes_written += value.len() as u64;
        server.put(key, &value);
        summary.puts += 1;
    }
    for i in 0..spec.deletes.min(keys.len()) {
        let key = &keys[keys.len() - 1 - (i * 3) % keys.len()];
        summary.deletes += server.delete(key) as usize;
    }
    summary.final_revision = server.revision();
    summary
}

/// A value shaped like a stored Kubernetes object: the protobuf magic, a readable header and
/// a mix of text and random bytes, so compression behaves as on real clusters.
fn object_value(rng: &mut StdRng, key: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(b"k8s\0\n\x0b\n\x02v1\x12\x05Thing\x12");
    v.extend_from_slice(key);
    while v.len() < len {
        if rng.gen_bool(0.5) {
            v.extend_from_slice(b"metadata:{labels:{app:web,tier:frontend},annotations:{}} ");
        } else {
            let n = rng.gen_range(16..64);
            v.extend((0..n).map(|_| rng.gen::<u8>()));
        }
    }
    v.truncate(len);
    v
}
