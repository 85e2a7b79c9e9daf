//! Stored values as a real API server writes them: built-in types as protobuf (encoded by
//! `etcdguard_kube::encode` from the JSON kubectl would show), CRDs and custom resources as
//! JSON. Object bodies follow what such objects hold in a cluster (owner references, managed
//! fields, container specs, status), with their bulk in the field where real objects carry it
//! (ConfigMap data, Secret data, env vars and last-applied annotations, event messages), so
//! `inspect` renders every field and the repository compresses them as it would real ones.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

const WORDS: &[&str] = &[
    "server",
    "listen",
    "port",
    "timeout",
    "retry",
    "backend",
    "cache",
    "enabled",
    "replicas",
    "image",
    "log",
    "level",
    "info",
    "debug",
    "warn",
    "upstream",
    "proxy",
    "buffer",
    "size",
    "worker",
    "queue",
    "metrics",
    "path",
    "/api/v1",
    "tls",
    "cert",
    "true",
    "false",
    "0.5",
    "30s",
    "5m",
    "8080",
    "443",
    "service",
    "cluster.local",
    "namespace",
    "token",
    "endpoint",
    "region",
    "eu-west-1",
    "storage",
    "bucket",
    "max",
    "min",
    "connections",
    "pool",
    "database",
    "postgres",
    "redis",
    "kafka",
    "topic",
];

/// Text of about `len` bytes: config-like lines of common words and numbers.
fn text(rng: &mut StdRng, len: usize) -> String {
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        let indent = rng.gen_range(0..3) * 2;
        s.push_str(&" ".repeat(indent));
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        s.push_str(": ");
        for _ in 0..rng.gen_range(1..4) {
            if rng.gen_bool(0.3) {
                s.push_str(&rng.gen_range(0..100_000u32).to_string());
            } else {
                s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
            }
            s.push(' ');
        }
        s.push('\n');
    }
    s.truncate(len);
    s
}

fn uid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.gen();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn time(rng: &mut StdRng) -> String {
    let t = 1_735_689_600 + rng.gen_range(0..30_000_000i64);
    chrono::DateTime::from_timestamp(t, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn metadata(
    rng: &mut StdRng,
    name: &str,
    namespace: Option<&str>,
    app: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    if let Some(ns) = namespace {
        m.insert("namespace".into(), json!(ns));
    }
    m.insert("uid".into(), json!(uid(rng)));
    m.insert("creationTimestamp".into(), json!(time(rng)));
    m.insert("labels".into(), json!({"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop", "tier": if rng.gen_bool(0.5) { "frontend" } else { "backend" }}));
    m.insert(
        "managedFields".into(),
        json!([{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1", "time": time(rng), "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:tier": {}}}}}]),
    );
    m
}

fn owner(rng: &mut StdRng, kind: &str, name: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid(rng), "controller": true, "blockOwnerDeletion": true}])
}

fn container(rng: &mut StdRng, app: &str, env_bytes: usize) -> Value {
    let mut env = Vec::new();
    let mut used = 0;
    while used < env_bytes {
        let n = rng.gen_range(20..200);
        let value = text(rng, n).replace('\n', " ");
        used += value.len() + 24;
        env.push(json!({"name": format!("{}_{}", WORDS[rng.gen_range(0..WORDS.len())].to_uppercase().replace(['/', '.', '-'], "_"), env.len()), "value": value}));
    }
    json!({
        "name": app, "image": format!("registry.example.com/{app}:1.{}.{}", rng.gen_range(0..30), rng.gen_range(0..10)),
        "args": ["--port=8080", "--log-level=info"], "env": env,
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "initialDelaySeconds": 10, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
    })
}

fn pod_spec(rng: &mut StdRng, app: &str, env_bytes: usize) -> Value {
    json!({
        "containers": [container(rng, app, env_bytes)],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "schedulerName": "default-scheduler", "enableServiceLinks": true,
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}]
    })
}

/// The object stored under `key` (`/registry/<resource>/[<namespace>/]<name>`), about `len`
/// bytes once stored.
pub fn stored_object(
    rng: &mut StdRng,
    key: &str,
    resource: &str,
    app: &str,
    len: usize,
) -> Vec<u8> {
    let parts: Vec<&str> = key.trim_start_matches("/registry/").split('/').collect();
    let name = parts.last().copied().unwrap_or("x");
    let namespaced = parts.len() >= 3 + usize::from(resource.contains('/'));
    let ns = namespaced.then(|| parts[parts.len() - 2]);
    let mut meta = metadata(rng, name, ns, app);
    // Most objects carry their bulk in one field; `fill` is how much of `len` is left for it.
    let fill = len.saturating_sub(900);
    let object = match resource {
        "events" => json!({"apiVersion": "v1", "kind": "Event", "metadata": meta,
            "involvedObject": {"kind": "Pod", "namespace": ns.unwrap_or("default"), "name": format!("{app}-{}", rng.gen_range(0..1000)), "uid": uid(rng), "apiVersion": "v1", "resourceVersion": rng.gen_range(1..1_000_000).to_string()},
            "reason": "BackOff", "message": text(rng, fill.max(40)).replace('\n', " "), "source": {"component": "kubelet", "host": format!("node-{}", rng.gen_range(0..20))},
            "firstTimestamp": time(rng), "lastTimestamp": time(rng), "count": rng.gen_range(1..500), "type": "Warning",
            "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": ""}),
        "pods" => {
            meta.insert(
                "ownerReferences".into(),
                owner(rng, "ReplicaSet", &format!("{app}-7d9f8c6b5")),
            );
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(rng, app, fill),
                "status": {"phase": "Running", "hostIP": "10.0.0.7", "podIP": "10.244.3.17", "podIPs": [{"ip": "10.244.3.17"}], "startTime": time(rng), "qosClass": "Burstable",
                    "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(rng)}],
                    "containerStatuses": [{"name": app, "state": {"running": {"startedAt": time(rng)}}, "lastState": {}, "ready": true, "restartCount": 0,
                        "image": format!("registry.example.com/{app}:1.0"), "imageID": format!("registry.example.com/{app}@sha256:{}", uid(rng).replace('-', "")), "containerID": format!("containerd://{}", uid(rng).replace('-', "")), "started": true}]}})
        }
        "configmaps" => {
            let mut data = Map::new();
            let mut left = fill.max(64);
            while left > 0 {
                let n = left.min(rng.gen_range(2_000..40_000));
                data.insert(
                    format!(
                        "{}-{}.yaml",
                        WORDS[rng.gen_range(0..WORDS.len())].replace('/', ""),
                        data.len()
                    ),
                    json!(text(rng, n)),
                );
                left -= n;
            }
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        }
        "secrets" => {
            use base64::Engine as _;
            let mut data = Map::new();
            let mut left = fill.max(32);
            while left > 0 {
                let n = left.min(rng.gen_range(32..4_096));
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                data.insert(
                    format!("key-{}", data.len()),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
                left -= n;
            }
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": data})
        }
        "replicasets" | "deployments" => {
            let kind = if resource == "deployments" { "Deployment" } else { "ReplicaSet" };
            if kind == "ReplicaSet" {
                meta.insert("ownerReferences".into(), owner(rng, "Deployment", app));
            }
            let selector = json!({"matchLabels": {"app.kubernetes.io/name": app}});
            let template = json!({"metadata": {"labels": {"app.kubernetes.io/name": app}, "creationTimestamp": null}, "spec": pod_spec(rng, app, fill)});
            let mut spec = json!({"replicas": rng.gen_range(1..6), "selector": selector, "template": template});
            if kind == "Deployment" {
                spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}});
                spec["revisionHistoryLimit"] = json!(10);
                spec["progressDeadlineSeconds"] = json!(600);
            }
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec,
                "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "observedGeneration": 4}})
        }
        "endpointslices" => {
            let endpoints: Vec<Value> = (0..(fill / 160).clamp(1, 1000))
                .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", i % 20), "targetRef": {"kind": "Pod", "namespace": ns.unwrap_or("default"), "name": format!("{app}-{i}"), "uid": uid(rng)}}))
                .collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
                "endpoints": endpoints, "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
        }
        "services/specs" => {
            let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns.unwrap_or("default"), "annotations": {"note": text(rng, fill / 2)}}}).to_string();
            meta.insert(
                "annotations".into(),
                json!({"kubectl.kubernetes.io/last-applied-configuration": applied}),
            );
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.12.34", "clusterIPs": ["10.96.12.34"], "selector": {"app.kubernetes.io/name": app},
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}], "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
                "status": {"loadBalancer": {}}})
        }
        "leases" => {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": format!("{app}-{}", uid(rng)), "leaseDurationSeconds": 15, "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": "2025-03-01T12:00:00.123456Z", "leaseTransitions": rng.gen_range(0..20)}})
        }
        "serviceaccounts" => {
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "secrets": [{"name": format!("{name}-token")}]})
        }
        "controllerrevisions" => {
            let data = json!({"spec": {"template": {"spec": pod_spec(rng, app, fill)}}});
            json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": meta, "data": data, "revision": rng.gen_range(1..50)})
        }
        // CRDs and custom resources: JSON, as the API server stores them.
        r if r.contains("customresourcedefinitions") => {
            return json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": meta,
                "spec": {"group": "example.io", "names": {"kind": "Widget", "plural": name.split('.').next().unwrap_or(name)}, "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "description": text(rng, fill)}}}]}})
            .to_string()
            .into_bytes();
        }
        _ => {
            return json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta,
                "spec": {"groups": [{"name": app, "rules": [{"alert": "HighErrorRate", "expr": text(rng, fill).replace('\n', " "), "for": "5m"}]}]}})
            .to_string()
            .into_bytes();
        }
    };
    etcdguard_kube::encode::encode_object(&object)
        .unwrap_or_else(|e| panic!("bench object {key} ({resource}) does not encode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdguard_kube::render::{render, RenderOptions};
    use rand::SeedableRng;

    /// Every kind the dataset writes is stored as the API server would and renders in full.
    #[test]
    fn every_kind_renders_without_unknown_fields() {
        let mut rng = StdRng::seed_from_u64(7);
        for (resource, key) in [
            ("events", "/registry/events/team-01/web-1"),
            ("pods", "/registry/pods/team-01/web-1"),
            ("configmaps", "/registry/configmaps/team-01/web-1"),
            ("secrets", "/registry/secrets/team-01/web-1"),
            ("replicasets", "/registry/replicasets/team-01/web-1"),
            ("endpointslices", "/registry/endpointslices/team-01/web-1"),
            ("deployments", "/registry/deployments/team-01/web-1"),
            ("services/specs", "/registry/services/specs/team-01/web-1"),
            ("leases", "/registry/leases/team-01/web-1"),
            ("serviceaccounts", "/registry/serviceaccounts/team-01/web-1"),
            ("controllerrevisions", "/registry/controllerrevisions/team-01/web-1"),
            (
                "apiextensions.k8s.io/customresourcedefinitions",
                "/registry/apiextensions.k8s.io/customresourcedefinitions/webs.example1.io",
            ),
            (
                "monitoring.coreos.com/prometheusrules",
                "/registry/monitoring.coreos.com/prometheusrules/team-01/web-1",
            ),
        ] {
            for len in [600, 20_000] {
                let stored = stored_object(&mut rng, key, resource, "web", len);
                let r = render(&stored, Some(5), &RenderOptions::default())
                    .unwrap_or_else(|e| panic!("{resource}: {e}"));
                assert!(r.unknown_fields.is_empty(), "{resource}: {:?}", r.unknown_fields);
                assert_eq!(
                    r.object["metadata"]["name"],
                    key.rsplit('/').next().unwrap(),
                    "{resource}"
                );
                // Leases and service accounts are small whatever is asked (so are their ranges).
                let fixed = matches!(resource, "leases" | "serviceaccounts");
                assert!(
                    fixed || (stored.len() >= len / 2 && stored.len() <= len * 2 + 3_000),
                    "{resource}: {} bytes for {len}",
                    stored.len()
                );
            }
        }
    }
}
