//! The static pod manifests a kubeadm-style control plane keeps in `/etc/kubernetes/manifests`:
//! what etcdguard needs from them to restore etcd where the kubelet will start it again.
//!
//! Layouts seen in the field: kubeadm (`etcd.yaml`, the flags in `command:`), the same with
//! the flags in `args:` and `--flag value` spelling (GKE on-prem, etcd as uid 2001), and
//! OpenShift (`etcd-pod.yaml`, a `/bin/sh -c` script ending in `exec etcd …`, flags partly
//! from `ETCD_*` environment variables, static-pod-resources hostPath volumes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::script::{self, Unresolved, Value, Vars};
use crate::NodeError;

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize)]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default, rename = "securityContext")]
    security_context: Option<SecurityContext>,
    #[serde(default, rename = "hostNetwork")]
    host_network: bool,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default, rename = "volumeMounts")]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default, rename = "securityContext")]
    security_context: Option<SecurityContext>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    /// `None` for `valueFrom`.
    #[serde(default)]
    value: Option<String>,
    #[serde(default, rename = "valueFrom")]
    value_from: Option<ValueFrom>,
}

#[derive(Deserialize)]
struct ValueFrom {
    #[serde(default, rename = "fieldRef")]
    field_ref: Option<FieldRef>,
}

#[derive(Deserialize)]
struct FieldRef {
    #[serde(rename = "fieldPath")]
    field_path: String,
}

/// What this node says about itself, for `valueFrom.fieldRef` values of the pod's env
/// (`spec.nodeName`, `status.hostIP`): flags, else the host's name and the address it
/// resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The kubelet's node name [default: this host's name, in lower case].
    pub node_name: Option<String>,
    /// The node's IP [default: the first non-loopback address this host's name resolves to].
    pub node_ip: Option<String>,
}

fn hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

impl NodeFacts {
    fn node_name(&self) -> Value {
        match self.node_name.clone().or_else(hostname) {
            Some(n) => Value::Known(n),
            None => Value::Unknown(
                "spec.nodeName: this host has no name; give it with --node-name".into(),
            ),
        }
    }

    fn node_ip(&self) -> Value {
        if let Some(ip) = &self.node_ip {
            return Value::Known(ip.clone());
        }
        use std::net::ToSocketAddrs;
        let found = hostname()
            .and_then(|h| (h.as_str(), 0).to_socket_addrs().ok())
            .and_then(|mut a| a.find(|a| !a.ip().is_loopback()));
        match found {
            Some(a) => Value::Known(a.ip().to_string()),
            None => Value::Unknown("the node's IP (status.hostIP): this host's name resolves to no address but loopback; give it with --node-ip".into()),
        }
    }
}

#[derive(Deserialize, Clone, Copy, Default)]
struct SecurityContext {
    #[serde(default, rename = "runAsUser")]
    run_as_user: Option<u32>,
    #[serde(default, rename = "runAsGroup")]
    run_as_group: Option<u32>,
}

#[derive(Deserialize)]
struct VolumeMount {
    name: String,
    #[serde(rename = "mountPath")]
    mount_path: String,
}

#[derive(Deserialize)]
struct Volume {
    name: String,
    #[serde(rename = "hostPath")]
    host_path: Option<HostPath>,
}

#[derive(Deserialize)]
struct HostPath {
    path: String,
}

/// The etcd member a static pod manifest runs, as far as a restore needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPod {
    pub manifest: PathBuf,
    /// `--name` (etcd's default: `default`). May hold a shell variable (`${NODE_NAME}`):
    /// see [`EtcdPod::resolved`].
    pub name: String,
    /// `--data-dir` on the host (through the pod's hostPath volume).
    pub data_dir: PathBuf,
    /// `--wal-dir` on the host, when the manifest sets one.
    pub wal_dir: Option<PathBuf>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    /// `host:port` of each `--listen-client-urls` entry, `0.0.0.0`/`[::]` as loopback.
    pub client_addrs: Vec<String>,
    /// The container image, e.g. `registry.k8s.io/etcd:3.5.9-0`.
    pub image: Option<String>,
    /// etcd's major.minor read from the image tag; `None` when the tag does not tell (a
    /// digest, or an image that is not named etcd).
    pub image_version: Option<(u32, u32)>,
    /// `runAsUser` / `runAsGroup` of the container (or the pod).
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// Variables (as written in a value above) whose value is known only when the pod runs,
    /// and why: `${ETCD_INITIAL_CLUSTER}` set from `$(discover-etcd-initial-cluster …)`.
    pub unresolved: Vec<(String, String)>,
}

/// The API server of a static pod manifest: where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerPod {
    pub manifest: PathBuf,
    /// `127.0.0.1:<--secure-port>` (6443 by default).
    pub addr: String,
}

/// A value the shell (or the kubelet) fills in when the pod starts: `${VAR}`, `$VAR`, `$(VAR)`.
pub fn is_variable(value: &str) -> bool {
    value.contains('$')
}

impl EtcdPod {
    /// `value` of flag `flag`, refused when it is a variable only known when the pod starts.
    pub fn resolved<'a>(
        &self,
        flag: &str,
        value: &'a str,
        override_flag: &str,
    ) -> Result<&'a str, NodeError> {
        if is_variable(value) {
            return Err(NodeError::Manifest(
                self.manifest.clone(),
                format!("--{flag} is {value:?}, a variable set when the pod starts{}; give its value with {override_flag}", self.why(value)),
            ));
        }
        Ok(value)
    }

    /// Why the variables in `value` are not known before the pod runs (empty when not told).
    pub fn why(&self, value: &str) -> String {
        let mut whys: Vec<&str> = Vec::new();
        for (_, why) in self.unresolved.iter().filter(|(what, _)| value.contains(what.as_str())) {
            if !whys.contains(&why.as_str()) {
                whys.push(why);
            }
        }
        if whys.is_empty() {
            String::new()
        } else {
            format!(" ({})", whys.join("; "))
        }
    }
}

/// `--flag=value` and `--flag value` arguments of a container's command line.
fn flags(argv: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < argv.len() {
        if let Some(flag) = argv[i].strip_prefix("--") {
            if let Some((k, v)) = flag.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            } else if i + 1 < argv.len() && !argv[i + 1].starts_with("--") {
                out.insert(flag.to_string(), argv[i + 1].clone());
                i += 1;
            } else {
                out.insert(flag.to_string(), "true".to_string());
            }
        }
        i += 1;
    }
    out
}

/// Splits a shell script into its simple commands' words (see [`script::commands`]), each
/// word as written: `$VAR`, `${…}` and `$(…)` unexpanded.
pub fn shell_commands(script: &str) -> Result<Vec<Vec<String>>, String> {
    Ok(script::commands(script)?.iter().map(|c| c.iter().map(script::raw).collect()).collect())
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Words that may come before the program in a command line: `exec`, shell keywords,
/// variable assignments, and wrappers with their options (`nice -n -19 ionice -c2 -n0 etcd`).
fn is_prefix_word(word: &str) -> bool {
    matches!(
        word,
        "exec"
            | "then"
            | "do"
            | "else"
            | "{"
            | "("
            | "!"
            | "env"
            | "nice"
            | "ionice"
            | "chrt"
            | "taskset"
            | "nohup"
            | "setpriv"
            | "tini"
            | "dumb-init"
            | "--"
    ) || word.starts_with('-')
        || word.parse::<i64>().is_ok()
        || word.starts_with("0x")
        || (word.contains('=') && !word.starts_with('$'))
}

/// Where the argv of `program` starts in `words` (`hyperkube kube-apiserver` as well as
/// `kube-apiserver`).
fn find_program_at(words: &[String], program: &str) -> Option<usize> {
    for (i, w) in words.iter().enumerate() {
        if basename(w) == program {
            // `etcd grpc-proxy …` (OpenShift's metrics container) is not the server.
            if words.get(i + 1).is_some_and(|a| !a.starts_with('-')) {
                return None;
            }
            return Some(i);
        }
        if basename(w) == "hyperkube" && words.get(i + 1).is_some_and(|n| n == program) {
            return Some(i + 1);
        }
        if !is_prefix_word(w) {
            // `watch-termination --flags -- hyperkube kube-apiserver …`: a wrapper we do not
            // know, running the program after `--`.
            let dashes = words[i..].iter().position(|w| w == "--")?;
            let after = i + dashes + 1;
            return find_program_at(&words[after..], program).map(|j| after + j);
        }
    }
    None
}

/// The argv of `program` in `words`, from the program on.
fn find_program(words: &[String], program: &str) -> Option<Vec<String>> {
    find_program_at(words, program).map(|i| words[i..].to_vec())
}

fn is_shell(word: &str) -> bool {
    matches!(basename(word), "sh" | "bash" | "dash" | "ash" | "zsh")
}

/// The container's env as the kubelet sets it: literal values (with `$(VAR)` of earlier
/// ones filled in), and `valueFrom.fieldRef` where this node can tell the value. A fieldRef
/// is only looked up when the container's command mentions the variable, or it is an
/// `ETCD_*` one (etcd reads those), and only with `facts` (the API server's manifest is read
/// without: nothing there needs them).
fn container_env(pod: &Pod, c: &Container, facts: Option<&NodeFacts>) -> Vars {
    let command_text: String =
        c.command.iter().chain(&c.args).map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
    let mut vars = Vars::default();
    for e in &c.env {
        let needed =
            facts.filter(|_| e.name.starts_with("ETCD_") || command_text.contains(&e.name));
        let value = match (&e.value, &e.value_from, needed) {
            (Some(v), _, _) => Value::Known(script::kubelet_expand(v, &vars.values)),
            (None, Some(ValueFrom { field_ref: Some(f) }), Some(facts)) => {
                match f.field_path.as_str() {
                    "spec.nodeName" => facts.node_name(),
                    "status.hostIP" => facts.node_ip(),
                    "status.podIP" if pod.spec.host_network => facts.node_ip(),
                    "metadata.namespace" => Value::Known(pod.metadata.namespace.clone()),
                    // A static pod's mirror pod is named <name>-<node name>.
                    "metadata.name" => match facts.node_name() {
                        Value::Known(n) => Value::Known(format!("{}-{n}", pod.metadata.name)),
                        unknown => unknown,
                    },
                    other => Value::Unknown(format!("the pod's {other}, known only when it runs")),
                }
            }
            (None, Some(ValueFrom { field_ref: Some(f) }), None) => {
                Value::Unknown(format!("the pod's {}", f.field_path))
            }
            (None, Some(_), _) => Value::Unknown(
                "from a ConfigMap, Secret or resource field, known only when the pod runs".into(),
            ),
            (None, None, _) => Value::Known(String::new()),
        };
        let value = match value {
            Value::Unknown(why) => Value::Unknown(format!("{} is {why}", e.name)),
            known => known,
        };
        vars.values.insert(e.name.clone(), value);
        vars.exported.insert(e.name.clone());
    }
    vars
}

/// The command line of `program` in a container, as it will run.
struct Found {
    argv: Vec<String>,
    /// The variables the program gets (the env, plus what the script sets and exports).
    vars: Vars,
    /// Variables in `argv` (kept as written there) whose values are known only at run time.
    unresolved: Vec<Unresolved>,
}

/// The command line of `program` in a container: its `command` + `args`, or, when those
/// run a shell with `-c SCRIPT`, the command in the script that runs `program`, with the
/// variables the env and the script's assignments before it give filled in.
fn container_argv(
    pod: &Pod,
    c: &Container,
    program: &str,
    facts: Option<&NodeFacts>,
) -> Result<Option<Found>, String> {
    let mut vars = container_env(pod, c, facts);
    let full: Vec<String> =
        c.command.iter().chain(&c.args).map(|a| script::kubelet_expand(a, &vars.values)).collect();
    let Some(first) = full.first() else { return Ok(None) };
    if !is_shell(first) {
        return Ok(find_program(&full, program).map(|argv| Found {
            argv,
            vars,
            unresolved: Vec::new(),
        }));
    }
    // `sh -c SCRIPT`, `bash -ec SCRIPT`, `sh -x -c SCRIPT`: the first word after an option
    // with a `c` in it.
    let Some(c_at) = full
        .iter()
        .skip(1)
        .position(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('c'))
    else {
        return Ok(None);
    };
    let Some(text) = full.get(c_at + 2) else { return Ok(None) };
    let commands = script::commands(text)
        .map_err(|e| format!("container {:?}: cannot read its shell script: {e}", c.name))?;
    for words in &commands {
        if vars.apply_assignments(words) {
            continue;
        }
        let texts: Vec<String> =
            words.iter().map(|w| vars.expand(w).unwrap_or_else(|_| script::raw(w))).collect();
        let Some(start) = find_program_at(&texts, program) else { continue };
        vars.apply_prefix(&words[..start]);
        let mut unresolved = Vec::new();
        let argv = words[start..]
            .iter()
            .map(|w| match vars.expand(w) {
                Ok(s) => s,
                Err(u) => {
                    unresolved.push(u);
                    script::raw(w)
                }
            })
            .collect();
        return Ok(Some(Found { argv, vars, unresolved }));
    }
    Ok(None)
}

/// The container of a pod that runs a program, and how.
struct Read {
    pod: Pod,
    index: usize,
    flags: BTreeMap<String, String>,
    found: Found,
}

/// The container of `pod` that runs `program`, with its argv and flags.
fn read_container(
    path: &Path,
    program: &str,
    facts: Option<&NodeFacts>,
) -> Result<Read, NodeError> {
    let bad = |m: String| NodeError::Manifest(path.to_path_buf(), m);
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let pod = parse_pod(&text).map_err(bad)?;
    let mut found = Vec::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        if let Some(f) = container_argv(&pod, c, program, facts).map_err(bad)? {
            found.push((i, f));
        }
    }
    // Several (a sidecar running the same binary): the one named after the program.
    let pick = found.iter().position(|(i, _)| pod.spec.containers[*i].name == program).unwrap_or(0);
    if found.is_empty() {
        return Err(bad(format!(
            "no container runs {program} (looked at command, args and `sh -c` scripts)"
        )));
    }
    let (index, found) = found.swap_remove(pick);
    let flags = flags(&found.argv);
    Ok(Read { pod, index, flags, found })
}

/// The pod of a manifest: a Pod (a static pod), or the pod template of a workload
/// (StatefulSet, Deployment…); in a file of several documents, the first with containers.
fn parse_pod(text: &str) -> Result<Pod, String> {
    #[derive(Deserialize)]
    struct Workload {
        spec: WorkloadSpec,
    }
    #[derive(Deserialize)]
    struct WorkloadSpec {
        template: Pod,
    }
    let mut first_error = None;
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(document).map_err(|e| e.to_string())?;
        let is_workload = value.get("spec").and_then(|s| s.get("template")).is_some();
        let pod = if is_workload {
            serde_norway::from_value::<Workload>(value).map(|w| w.spec.template)
        } else {
            serde_norway::from_value::<Pod>(value)
        };
        match pod {
            Ok(pod) if !pod.spec.containers.is_empty() => return Ok(pod),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| "no Pod, or workload with a pod template, with containers".into()))
}

/// Where a path inside the container is on the host: through the hostPath volume mounted at
/// the longest prefix of it.
fn host_path(pod: &Pod, container: usize, path: &str) -> Option<PathBuf> {
    let c = &pod.spec.containers[container];
    c.volume_mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .and_then(|m| {
            let host = pod.spec.volumes.iter().find(|v| v.name == m.name)?.host_path.as_ref()?;
            let rest = Path::new(path).strip_prefix(&m.mount_path).ok()?;
            // `join("")` would add a trailing slash (a mount at `/var/lib/etcd/`).
            let trimmed = host.path.trim_end_matches('/');
            let host = Path::new(if trimmed.is_empty() { "/" } else { trimmed });
            Some(if rest.as_os_str().is_empty() { host.to_path_buf() } else { host.join(rest) })
        })
}

/// `host:port` to probe for each URL; wildcard hosts are probed on loopback.
fn probe_addrs(urls: &str) -> Vec<String> {
    urls.split(',')
        .filter_map(|u| {
            let (scheme, rest) = u.trim().split_once("://")?;
            if !matches!(scheme, "http" | "https") {
                return None; // unix sockets are not probed
            }
            let hostport = rest.split('/').next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let host = match host {
                "0.0.0.0" | "" => "127.0.0.1",
                "[::]" => "[::1]",
                h => h,
            };
            Some(format!("{host}:{port}"))
        })
        .collect()
}

/// etcd's major.minor from an image reference: `registry.k8s.io/etcd:3.5.9-0` → 3.5,
/// `gke.gcr.io/etcd:v3.4.13-1-gke.3` → 3.4. A digest without a tag, or an image whose name
/// is not etcd's (a release image whose tag is the product's version), tells nothing.
pub fn image_etcd_version(image: &str) -> Option<(u32, u32)> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    let (name, tag) = last.split_once(':')?;
    if !name.contains("etcd") {
        return None;
    }
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = tag.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn read_etcd_pod(path: &Path) -> Result<EtcdPod, NodeError> {
    read_etcd_pod_on(path, &NodeFacts::default())
}

/// etcd's manifest, with `valueFrom.fieldRef` values from `facts`.
pub fn read_etcd_pod_on(path: &Path, facts: &NodeFacts) -> Result<EtcdPod, NodeError> {
    let Read { pod, index: c, flags: mut f, found } = read_container(path, "etcd", Some(facts))?;
    let bad = |m: String| NodeError::Manifest(path.to_path_buf(), m);
    let container = &pod.spec.containers[c];
    let mut unresolved: Vec<(String, String)> =
        found.unresolved.iter().map(|u| (u.what.clone(), u.why.clone())).collect();
    // etcd takes every flag from ETCD_<FLAG> in its environment too (the container's env,
    // and what its script exports: `export ETCD_NAME=${NODE_master_0_ETCD_NAME}`); the
    // command line wins.
    for (name, value) in &found.vars.values {
        let Some(flag) = name.strip_prefix("ETCD_").filter(|_| found.vars.exported.contains(name))
        else {
            continue;
        };
        let flag = flag.to_ascii_lowercase().replace('_', "-");
        if f.contains_key(&flag) {
            continue;
        }
        let value = match value {
            Value::Known(v) => v.clone(),
            Value::Unknown(why) => {
                let written = format!("${{{name}}}");
                unresolved.push((written.clone(), why.clone()));
                written
            }
        };
        f.insert(flag, value);
    }
    let needed = |flag: &str, value: &str| -> Result<(), NodeError> {
        if is_variable(value) {
            let mut why: Vec<&str> = Vec::new();
            for (_, y) in unresolved.iter().filter(|(w, _)| value.contains(w.as_str())) {
                if !why.contains(&y.as_str()) {
                    why.push(y);
                }
            }
            return Err(bad(format!(
                "--{flag} is {value:?}, a variable set only when the pod starts{}; etcdguard needs its value here (give a copy of the manifest with it written out: --etcd-manifest COPY --manifests-dir DIR)",
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            )));
        }
        Ok(())
    };
    let data_dir = f.get("data-dir").cloned().unwrap_or_else(|| "default.etcd".into());
    needed("data-dir", &data_dir)?;
    let data_dir = host_path(&pod, c, &data_dir).ok_or_else(|| {
        bad(format!(
            "--data-dir {data_dir} is not on a hostPath volume: the data would not survive the pod"
        ))
    })?;
    let wal_dir = match f.get("wal-dir") {
        Some(w) => {
            needed("wal-dir", w)?;
            Some(
                host_path(&pod, c, w)
                    .ok_or_else(|| bad(format!("--wal-dir {w} is not on a hostPath volume")))?,
            )
        }
        None => None,
    };
    let listen = f.get("listen-client-urls").map_or("http://localhost:2379", |s| s.as_str());
    // Only the TCP URLs are probed: a variable in a unix socket's name does not matter.
    let tcp: Vec<&str> =
        listen.split(',').filter(|u| !u.trim_start().starts_with("unix")).collect();
    needed("listen-client-urls", &tcp.join(","))?;
    let client_addrs = probe_addrs(listen);
    if client_addrs.is_empty() {
        return Err(bad("cannot read --listen-client-urls".into()));
    }
    let security = |pick: fn(&SecurityContext) -> Option<u32>| {
        container
            .security_context
            .as_ref()
            .and_then(pick)
            .or_else(|| pod.spec.security_context.as_ref().and_then(pick))
    };
    Ok(EtcdPod {
        manifest: path.to_path_buf(),
        name: f.get("name").cloned().unwrap_or_else(|| "default".into()),
        data_dir,
        wal_dir,
        initial_cluster: f.get("initial-cluster").cloned(),
        initial_cluster_token: f.get("initial-cluster-token").cloned(),
        initial_advertise_peer_urls: f.get("initial-advertise-peer-urls").cloned(),
        client_addrs,
        image: container.image.clone(),
        image_version: container.image.as_deref().and_then(image_etcd_version),
        run_as_user: security(|s| s.run_as_user),
        run_as_group: security(|s| s.run_as_group),
        unresolved,
    })
}

pub fn read_apiserver_pod(path: &Path) -> Result<ApiServerPod, NodeError> {
    let Read { flags: f, .. } = read_container(path, "kube-apiserver", None)?;
    let port = f.get("secure-port").map_or("6443", |s| s.as_str());
    port.parse::<u16>().map_err(|_| {
        NodeError::Manifest(path.to_path_buf(), format!("--secure-port {port:?} is not a port"))
    })?;
    Ok(ApiServerPod { manifest: path.to_path_buf(), addr: format!("127.0.0.1:{port}") })
}

/// OpenShift's `--openshift-config` file: the API server's flags as `apiServerArguments`
/// (each a list of values).
#[derive(Deserialize)]
struct OpenShiftApiServerConfig {
    #[serde(default, rename = "apiServerArguments")]
    arguments: BTreeMap<String, serde_norway::Value>,
}

/// The API server's `--encryption-provider-config` as a path on the host (through the
/// hostPath volume that holds it); `None` when it is not set. OpenShift passes it in the
/// `--openshift-config` file (`apiServerArguments.encryption-provider-config`), read when
/// the command line does not set it.
pub fn read_apiserver_encryption_config(path: &Path) -> Result<Option<PathBuf>, NodeError> {
    let Read { pod, index: c, flags: f, .. } = read_container(path, "kube-apiserver", None)?;
    let bad = |m: String| NodeError::Manifest(path.to_path_buf(), m);
    let on_host = |flag: &str, value: &str| -> Result<PathBuf, NodeError> {
        if is_variable(value) {
            return Err(bad(format!("{flag} is {value:?}, a variable set when the pod starts")));
        }
        host_path(&pod, c, value)
            .ok_or_else(|| bad(format!("{flag} {value} is not on a hostPath volume of the pod (`node restore --encryption-config FILE` names the EncryptionConfiguration instead)")))
    };
    if let Some(value) = f.get("encryption-provider-config") {
        return on_host("--encryption-provider-config", value).map(Some);
    }
    let Some(config) = f.get("openshift-config") else { return Ok(None) };
    let config_path = on_host("--openshift-config", config)?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        bad(format!("--openshift-config {config} ({}): {e} (`node restore --encryption-config FILE` names the EncryptionConfiguration instead)", config_path.display()))
    })?;
    let parsed: OpenShiftApiServerConfig = serde_norway::from_str(&text).map_err(|e| {
        bad(format!("--openshift-config {config} ({}): {e}", config_path.display()))
    })?;
    let value = match parsed.arguments.get("encryption-provider-config") {
        None => return Ok(None),
        Some(serde_norway::Value::String(s)) => s.clone(),
        Some(serde_norway::Value::Sequence(list)) => match list.as_slice() {
            [] => return Ok(None),
            [serde_norway::Value::String(s)] => s.clone(),
            _ => {
                return Err(bad(format!(
                    "{}: apiServerArguments.encryption-provider-config holds more than one path",
                    config_path.display()
                )))
            }
        },
        Some(_) => {
            return Err(bad(format!(
                "{}: apiServerArguments.encryption-provider-config is not a path",
                config_path.display()
            )))
        }
    };
    on_host(
        &format!("apiServerArguments.encryption-provider-config of {}", config_path.display()),
        &value,
    )
    .map(Some)
}

/// How a client reaches the etcd a manifest runs: its client URLs, and the TLS files it can
/// connect with, as paths on this host (through the hostPath volume that holds them; as
/// written when no hostPath does, where a pod mounting the same Secrets finds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdClientAccess {
    /// The URLs and the flag they came from: `--advertise-client-urls`, else
    /// `--listen-client-urls` (wildcard hosts as loopback); URLs holding variables are left out.
    pub endpoints: Option<(Vec<String>, &'static str)>,
    /// `--trusted-ca-file` (else `--peer-trusted-ca-file`) and the flag.
    pub cacert: Option<(PathBuf, &'static str)>,
    /// Certificate, key and the flag pair: `--cert-file`/`--key-file` when the certificate
    /// allows client authentication, else `--peer-cert-file`/`--peer-key-file`.
    pub cert_key: Option<(PathBuf, PathBuf, &'static str)>,
    /// What was left out, and why.
    pub notes: Vec<String>,
}

/// Reads [`EtcdClientAccess`] from an etcd manifest: a static pod, a Pod, or a workload
/// (StatefulSet…) whose etcd container has the flags on its command line or as `ETCD_*`.
pub fn read_etcd_client_access(path: &Path) -> Result<EtcdClientAccess, NodeError> {
    // No node facts: a pod's fieldRefs (its IP, its node) are not this host's; they stay
    // variables and are left out below.
    let Read { pod, index: c, flags: mut f, .. } = read_container(path, "etcd", None)?;
    for e in &pod.spec.containers[c].env {
        if let (Some(flag), Some(value)) = (e.name.strip_prefix("ETCD_"), &e.value) {
            f.entry(flag.to_ascii_lowercase().replace('_', "-")).or_insert_with(|| value.clone());
        }
    }
    let mut notes = Vec::new();
    let mut urls = |flag: &'static str| -> Option<(Vec<String>, &'static str)> {
        let mut out = Vec::new();
        for url in f.get(flag)?.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if is_variable(url) {
                notes.push(format!("--{flag} {url} left out: a variable set when the pod starts"));
                continue;
            }
            let Some((scheme @ ("http" | "https"), rest)) = url.split_once("://") else { continue };
            let host_port = rest.split('/').next().unwrap_or_default();
            let host_port = match host_port.rsplit_once(':') {
                Some(("0.0.0.0" | "", port)) => format!("127.0.0.1:{port}"),
                Some(("[::]", port)) => format!("[::1]:{port}"),
                _ => host_port.to_string(),
            };
            out.push(format!("{scheme}://{host_port}"));
        }
        (!out.is_empty()).then_some((out, flag))
    };
    let endpoints = urls("advertise-client-urls").or_else(|| urls("listen-client-urls"));
    let mut file = |flag: &str| -> Option<PathBuf> {
        let value = f.get(flag)?;
        if is_variable(value) {
            notes.push(format!("--{flag} {value} left out: a variable set when the pod starts"));
            return None;
        }
        Some(host_path(&pod, c, value).unwrap_or_else(|| PathBuf::from(value)))
    };
    let cacert = match file("trusted-ca-file") {
        Some(p) => Some((p, "--trusted-ca-file")),
        None => file("peer-trusted-ca-file").map(|p| (p, "--peer-trusted-ca-file")),
    };
    let mut cert_key = None;
    let mut server_only_certs = Vec::new();
    for (cert_flag, key_flag, pair) in [
        ("cert-file", "key-file", "--cert-file/--key-file"),
        ("peer-cert-file", "peer-key-file", "--peer-cert-file/--peer-key-file"),
    ] {
        let (Some(cert), Some(key)) = (file(cert_flag), file(key_flag)) else { continue };
        if server_only(&cert) {
            server_only_certs.push(format!("--{cert_flag} {} left out: the certificate is for servers only (no clientAuth usage)", cert.display()));
            continue;
        }
        cert_key = Some((cert, key, pair));
        break;
    }
    notes.extend(server_only_certs);
    Ok(EtcdClientAccess { endpoints, cacert, cert_key, notes })
}

/// True when the PEM certificate at `path` has an extended key usage without clientAuth.
/// A file that cannot be read or parsed is not judged here (the TLS handshake will).
fn server_only(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&bytes) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    match cert.extended_key_usage() {
        Ok(Some(eku)) => !(eku.value.client_auth || eku.value.any),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM_ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.1:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://10.0.0.1:2380
    - --initial-cluster=cp1=https://10.0.0.1:2380
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.1:2379
    - --listen-peer-urls=https://10.0.0.1:2380
    - --name=cp1
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:3.5.15-0
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /mnt/disks/etcd
      type: DirectoryOrCreate
    name: etcd-data
"#;

    #[test]
    fn reads_a_kubeadm_etcd_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.yaml");
        std::fs::write(&p, KUBEADM_ETCD).unwrap();
        let pod = read_etcd_pod(&p).unwrap();
        assert_eq!(pod.name, "cp1");
        assert_eq!(pod.data_dir, PathBuf::from("/mnt/disks/etcd"), "the host side of the volume");
        assert_eq!(pod.initial_cluster.as_deref(), Some("cp1=https://10.0.0.1:2380"));
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.0.0.1:2380"));
        assert_eq!(pod.initial_cluster_token, None);
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379", "10.0.0.1:2379"]);
    }

    #[test]
    fn refuses_what_it_cannot_restore_into() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.yaml");
        std::fs::write(
            &p,
            KUBEADM_ETCD.replace("--data-dir=/var/lib/etcd", "--data-dir=/tmp/etcd"),
        )
        .unwrap();
        let err = read_etcd_pod(&p).unwrap_err().to_string();
        assert!(err.contains("hostPath"), "{err}");
        std::fs::write(&p, "kind: Pod\nspec:\n  containers:\n  - command: [kube-scheduler]\n")
            .unwrap();
        assert!(read_etcd_pod(&p).unwrap_err().to_string().contains("no container runs etcd"));
        std::fs::write(&p, "{{{ not yaml").unwrap();
        assert!(read_etcd_pod(&p).is_err());
    }

    /// A pod-hosted etcd (HyperShift's shape): a Service, then a StatefulSet whose flags are
    /// `ETCD_*` variables, advertised URLs with `$(VAR)`s, TLS files on Secret volumes.
    #[test]
    fn reads_client_access_from_a_statefulset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.yaml");
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: etcd-client}
spec:
  ports: [{name: etcd-client, port: 2379}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: etcd}
spec:
  template:
    spec:
      containers:
      - name: etcd
        command: [/bin/sh, -c, "ETCD_INITIAL_CLUSTER_STATE=$(cat /etc/etcd/clusterstate/state) /usr/bin/etcd"]
        env:
        - {name: ETCD_ADVERTISE_CLIENT_URLS, value: "https://$(HOSTNAME).etcd-discovery.$(NAMESPACE).svc:2379"}
        - {name: ETCD_LISTEN_CLIENT_URLS, value: "https://$(POD_IP):2379,https://0.0.0.0:2379"}
        - {name: ETCD_TRUSTED_CA_FILE, value: /etc/etcd/tls/etcd-ca/ca.crt}
        - {name: ETCD_CERT_FILE, value: /etc/etcd/tls/server/server.crt}
        - {name: ETCD_KEY_FILE, value: /etc/etcd/tls/server/server.key}
        - {name: ETCD_PEER_CERT_FILE, value: /etc/etcd/tls/peer/peer.crt}
        - {name: ETCD_PEER_KEY_FILE, value: /etc/etcd/tls/peer/peer.key}
        volumeMounts: [{mountPath: /etc/etcd/tls/server, name: server-tls}]
      volumes: [{name: server-tls, secret: {secretName: etcd-server-tls}}]
"#;
        std::fs::write(&p, yaml).unwrap();
        let access = read_etcd_client_access(&p).unwrap();
        assert_eq!(
            access.endpoints,
            Some((vec!["https://127.0.0.1:2379".to_string()], "listen-client-urls"))
        );
        assert_eq!(
            access.cacert,
            Some((PathBuf::from("/etc/etcd/tls/etcd-ca/ca.crt"), "--trusted-ca-file"))
        );
        let (cert, key, pair) = access.cert_key.unwrap();
        assert_eq!(
            (cert.to_str().unwrap(), key.to_str().unwrap(), pair),
            (
                "/etc/etcd/tls/server/server.crt",
                "/etc/etcd/tls/server/server.key",
                "--cert-file/--key-file"
            )
        );
        assert_eq!(access.notes.len(), 2, "{:?}", access.notes);

        // A static pod: paths through its hostPath volume.
        std::fs::write(&p, KUBEADM_ETCD.replace("- --client-cert-auth=true", "- --key-file=/etc/kubernetes/pki/etcd/server.key\n    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt")).unwrap();
        let access = read_etcd_client_access(&p).unwrap();
        assert_eq!(
            access.endpoints,
            Some((vec!["https://10.0.0.1:2379".to_string()], "advertise-client-urls"))
        );
        assert_eq!(access.cacert.unwrap().0, PathBuf::from("/etc/kubernetes/pki/etcd/ca.crt"));
    }

    /// OpenShift's shape: etcd-pod.yaml, a `/bin/sh -c` script that ends in `exec … etcd \`
    /// with continuation lines and quoted values, the data dir from `ETCD_DATA_DIR`, a
    /// release image by digest, static-pod-resources volumes, and sidecars that run
    /// etcdctl and `etcd grpc-proxy`.
    pub(crate) const OPENSHIFT_ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: openshift-etcd
spec:
  containers:
  - name: etcdctl
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123
    command: [/bin/bash, -c, "trap TERM INT; sleep infinity & wait"]
  - name: etcd
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123
    command:
    - /bin/sh
    - -c
    - |
      #!/bin/sh
      set -euo pipefail
      # the member's certificates were written by the operator
      [ -f /etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-serving-cp1.crt ] || exit 1
      exec nice -n -19 ionice -c2 -n0 etcd \
        --logger=zap --log-level="info" \
        --initial-advertise-peer-urls=https://10.0.0.1:2380 \
        --cert-file=/etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-serving-cp1.crt \
        --listen-client-urls=https://0.0.0.0:2379,unixs://10.0.0.1:0 \
        --listen-peer-urls=https://0.0.0.0:2380 \
        --name "cp1" \
        --initial-cluster='cp1=https://10.0.0.1:2380' \
        --metrics=extensive
    env:
    - name: ETCD_DATA_DIR
      value: /var/lib/etcd
    - name: ETCD_INITIAL_CLUSTER_STATE
      value: existing
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    volumeMounts:
    - {mountPath: /etc/kubernetes/static-pod-resources, name: resource-dir}
    - {mountPath: /etc/kubernetes/static-pod-certs, name: cert-dir}
    - {mountPath: /var/lib/etcd, name: data-dir}
  - name: etcd-metrics
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123
    command: [/bin/sh, -c, "exec nice -n -18 etcd grpc-proxy start --endpoints https://10.0.0.1:9978"]
  hostNetwork: true
  volumes:
  - {hostPath: {path: /etc/kubernetes/static-pod-resources/etcd-pod-4}, name: resource-dir}
  - {hostPath: {path: /etc/kubernetes/static-pod-resources/etcd-certs}, name: cert-dir}
  - {hostPath: {path: /sysroot/var/lib/etcd}, name: data-dir}
"#;

    /// GKE on-prem's shape: the flags in `args:` with `--flag value` spelling, etcd as
    /// uid 2001, a `v`-prefixed image tag.
    const GKE_ONPREM_ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: etcd, namespace: kube-system}
spec:
  securityContext: {runAsUser: 2001, runAsGroup: 2001, fsGroup: 2001}
  containers:
  - name: etcd
    image: gcr.io/gke-on-prem-release/etcd:v3.4.13-1-gke.3
    command: [/usr/local/bin/etcd]
    args:
    - --name
    - admin-cp-1
    - --data-dir
    - /var/lib/etcd
    - --listen-client-urls
    - https://127.0.0.1:2379,https://10.1.0.5:2379
    - --initial-advertise-peer-urls
    - https://10.1.0.5:2380
    - --initial-cluster
    - admin-cp-1=https://10.1.0.5:2380
    - --initial-cluster-token
    - etcd-cluster-1
    volumeMounts:
    - {mountPath: /var/lib/etcd, name: data}
  volumes:
  - {hostPath: {path: /opt/data/var/lib/etcd, type: DirectoryOrCreate}, name: data}
"#;

    fn read(text: &str) -> Result<EtcdPod, NodeError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd-pod.yaml");
        std::fs::write(&p, text).unwrap();
        read_etcd_pod(&p)
    }

    #[test]
    fn reads_an_openshift_etcd_pod() {
        let pod = read(OPENSHIFT_ETCD).unwrap();
        assert_eq!(pod.name, "cp1", "quoted --name value");
        assert_eq!(
            pod.data_dir,
            PathBuf::from("/sysroot/var/lib/etcd"),
            "ETCD_DATA_DIR through the data-dir hostPath"
        );
        assert_eq!(
            pod.initial_cluster.as_deref(),
            Some("cp1=https://10.0.0.1:2380"),
            "single-quoted value"
        );
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.0.0.1:2380"));
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379"], "the unix socket is not probed");
        assert_eq!(
            pod.image_version, None,
            "a release image by digest does not tell etcd's version"
        );
        assert_eq!((pod.run_as_user, pod.run_as_group), (None, None));
    }

    #[test]
    fn reads_a_gke_on_prem_etcd_pod() {
        let pod = read(GKE_ONPREM_ETCD).unwrap();
        assert_eq!(pod.name, "admin-cp-1");
        assert_eq!(pod.data_dir, PathBuf::from("/opt/data/var/lib/etcd"));
        assert_eq!(pod.initial_cluster_token.as_deref(), Some("etcd-cluster-1"));
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379", "10.1.0.5:2379"]);
        assert_eq!(pod.image_version, Some((3, 4)));
        assert_eq!((pod.run_as_user, pod.run_as_group), (Some(2001), Some(2001)));
    }

    #[test]
    fn a_needed_flag_set_by_a_variable_is_refused_clearly() {
        let text = OPENSHIFT_ETCD.replace(
            "--listen-client-urls=https://0.0.0.0:2379",
            "--listen-client-urls=https://${LISTEN_ON}:2379",
        );
        let err = read(&text).unwrap_err().to_string();
        assert!(
            err.contains("--listen-client-urls")
                && err.contains("${LISTEN_ON}")
                && err.contains("variable"),
            "{err}"
        );
        // A variable in a flag the user can give (--name) is kept for the plan to refuse.
        let pod = read(&OPENSHIFT_ETCD.replace("--name \"cp1\"", "--name \"${MEMBER}\"")).unwrap();
        assert_eq!(pod.name, "${MEMBER}");
        let err = pod.resolved("name", &pod.name, "--name").unwrap_err().to_string();
        assert!(
            err.contains("give its value with --name")
                && err.contains("MEMBER is not in the container's env"),
            "{err}"
        );
        // A script that never runs etcd itself.
        let only_proxy = OPENSHIFT_ETCD
            .replace("exec nice -n -19 ionice -c2 -n0 etcd", "exec etcd grpc-proxy start");
        assert!(read(&only_proxy).unwrap_err().to_string().contains("no container runs etcd"));
        assert!(read(&OPENSHIFT_ETCD.replace("--name \"cp1\"", "--name \"cp1"))
            .unwrap_err()
            .to_string()
            .contains("not closed"));
    }

    /// The shape cluster-etcd-operator renders (written here from its structure, not copied):
    /// every node's `NODE_<name>_*` value in the env, the member name exported by the
    /// script from one of them, the initial cluster computed by a helper when the pod
    /// starts, the peer URL and a unix socket built from the node's IP variable.
    const OPERATOR_ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: etcd, namespace: openshift-etcd}
spec:
  hostNetwork: true
  containers:
  - name: etcd
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123
    command:
    - /bin/sh
    - -c
    - |
      #!/bin/sh
      set -euo pipefail
      ETCD_INITIAL_CLUSTER=$(discover-etcd-initial-cluster \
        --endpoints=${ALL_ETCD_ENDPOINTS} \
        --target-peer-url-host=${NODE_master_1_ETCD_URL_HOST} \
        --target-name=master-1)
      export ETCD_INITIAL_CLUSTER
      export ETCD_NAME=${NODE_master_1_ETCD_NAME}
      exec nice -n -19 ionice -c2 -n0 etcd \
        --initial-advertise-peer-urls=https://${NODE_master_1_IP}:2380 \
        --cert-file=/etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-serving-master-1.crt \
        --advertise-client-urls=https://${NODE_master_1_IP}:2379 \
        --listen-client-urls=https://0.0.0.0:2379,unixs://${NODE_master_1_IP}:0 \
        --listen-peer-urls=https://0.0.0.0:2380 \
        --client-cert-file=$(ETCDCTL_CERT)
    env:
    - {name: "ALL_ETCD_ENDPOINTS", value: "https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379"}
    - {name: "ETCDCTL_CERT", value: "/etc/kubernetes/static-pod-certs/secrets/etcd-all-certs/etcd-peer-master-1.crt"}
    - {name: "ETCD_DATA_DIR", value: "/var/lib/etcd"}
    - {name: "ETCD_INITIAL_CLUSTER_STATE", value: "existing"}
    - {name: "NODE_master_0_ETCD_NAME", value: "master-0"}
    - {name: "NODE_master_0_IP", value: "10.0.0.1"}
    - {name: "NODE_master_1_ETCD_NAME", value: "master-1"}
    - {name: "NODE_master_1_ETCD_URL_HOST", value: "10.0.0.2"}
    - {name: "NODE_master_1_IP", value: "10.0.0.2"}
    volumeMounts:
    - {mountPath: /var/lib/etcd/, name: data-dir}
  volumes:
  - {hostPath: {path: /var/lib/etcd, type: ""}, name: data-dir}
"#;

    #[test]
    fn reads_the_operators_etcd_pod_with_its_variables() {
        let pod = read(OPERATOR_ETCD).unwrap();
        assert_eq!(pod.name, "master-1", "ETCD_NAME exported by the script from the env");
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.0.0.2:2380"));
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379"]);
        assert_eq!(pod.data_dir, PathBuf::from("/var/lib/etcd"));
        let ic = pod.initial_cluster.clone().unwrap();
        assert_eq!(ic, "${ETCD_INITIAL_CLUSTER}");
        let err =
            pod.resolved("initial-cluster", &ic, "--initial-cluster").unwrap_err().to_string();
        assert!(
            err.contains("$(discover-etcd-initial-cluster …)") && err.contains("--initial-cluster"),
            "{err}"
        );
        // A variable only in the unix socket's name is not needed.
        let pod =
            read(&OPERATOR_ETCD.replace("unixs://${NODE_master_1_IP}:0", "unixs://${UNSET}:0"))
                .unwrap();
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379"]);
        // $VAR spelling, and a variable the env does not set.
        let pod = read(
            &OPERATOR_ETCD
                .replace("https://${NODE_master_1_IP}:2380", "https://$NODE_master_1_IP:2380"),
        )
        .unwrap();
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.0.0.2:2380"));
        let pod = read(
            &OPERATOR_ETCD
                .replace("https://${NODE_master_1_IP}:2380", "https://${NODE_master_9_IP}:2380"),
        )
        .unwrap();
        let peer = pod.initial_advertise_peer_urls.clone().unwrap();
        assert!(pod
            .resolved("initial-advertise-peer-urls", &peer, "--peer-urls")
            .unwrap_err()
            .to_string()
            .contains("NODE_master_9_IP is not in the container's env"));
    }

    #[test]
    fn field_refs_come_from_the_node() {
        let text = OPERATOR_ETCD
            .replace("--initial-advertise-peer-urls=https://${NODE_master_1_IP}:2380", "--initial-advertise-peer-urls=https://${HOST_IP}:2380 --name=${NODE_NAME}")
            .replace("    - {name: \"ETCD_DATA_DIR\"", "    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}\n    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    - {name: \"ETCD_DATA_DIR\"");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd-pod.yaml");
        std::fs::write(&p, text).unwrap();
        let facts = NodeFacts { node_name: Some("cp-7".into()), node_ip: Some("10.9.9.9".into()) };
        let pod = read_etcd_pod_on(&p, &facts).unwrap();
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.9.9.9:2380"));
        assert_eq!(pod.name, "cp-7", "--name from spec.nodeName wins over ETCD_NAME");
    }

    #[test]
    fn encryption_config_through_the_openshift_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let resources = dir.path().join("static-pod-resources/kube-apiserver-pod-7");
        std::fs::create_dir_all(resources.join("configmaps/config")).unwrap();
        let m = dir.path().join("kube-apiserver-pod.yaml");
        std::fs::write(
            &m,
            format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [/bin/bash, -ec]\n    args:\n    - |\n      exec watch-termination --termination-touch-file=/t -- hyperkube kube-apiserver --openshift-config=/etc/kubernetes/static-pod-resources/configmaps/config/config.yaml --advertise-address=${{HOST_IP}} -v=2\n    env:\n    - {{name: HOST_IP, valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}}}\n    volumeMounts:\n    - {{mountPath: /etc/kubernetes/static-pod-resources, name: resource-dir}}\n  volumes:\n  - {{hostPath: {{path: {}}}, name: resource-dir}}\n",
                resources.display()
            ),
        )
        .unwrap();
        let config = resources.join("configmaps/config/config.yaml");
        std::fs::write(&config, "apiVersion: kubecontrolplane.config.openshift.io/v1\nkind: KubeAPIServerConfig\napiServerArguments:\n  encryption-provider-config:\n  - /etc/kubernetes/static-pod-resources/secrets/encryption-config/encryption-config\n  etcd-servers: [https://10.0.0.1:2379]\n").unwrap();
        assert_eq!(
            read_apiserver_encryption_config(&m).unwrap(),
            Some(resources.join("secrets/encryption-config/encryption-config"))
        );
        std::fs::write(&config, "apiServerArguments:\n  etcd-servers: [https://10.0.0.1:2379]\n")
            .unwrap();
        assert_eq!(read_apiserver_encryption_config(&m).unwrap(), None);
        std::fs::write(
            &config,
            "apiServerArguments:\n  encryption-provider-config: [/elsewhere/enc.yaml]\n",
        )
        .unwrap();
        assert!(read_apiserver_encryption_config(&m)
            .unwrap_err()
            .to_string()
            .contains("not on a hostPath volume"));
        std::fs::remove_file(&config).unwrap();
        assert!(read_apiserver_encryption_config(&m)
            .unwrap_err()
            .to_string()
            .contains("--openshift-config"));
    }

    #[test]
    fn shell_scripts_split_into_commands() {
        let script = "set -e\nA=1 B='x y' exec /usr/bin/etcd --a=\"q \\\"r\\\"\" \\\n  --b $(hostname -f) ${X:-d} # comment\necho 'done'; true && false";
        let c = shell_commands(script).unwrap();
        let s = |v: &[&str]| v.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(c[0], s(&["set", "-e"]));
        assert_eq!(
            c[1],
            s(&[
                "A=1",
                "B=x y",
                "exec",
                "/usr/bin/etcd",
                "--a=q \"r\"",
                "--b",
                "$(hostname -f)",
                "${X:-d}"
            ])
        );
        assert_eq!(c[2], s(&["echo", "done"]));
        assert_eq!(c[3..], [s(&["true"]), s(&["false"])]);
        assert_eq!(find_program(&c[1], "etcd").unwrap()[0], "/usr/bin/etcd");
        assert_eq!(
            find_program(&s(&["hyperkube", "kube-apiserver", "--secure-port=1"]), "kube-apiserver")
                .unwrap()[0],
            "kube-apiserver"
        );
        assert_eq!(find_program(&s(&["cp", "etcd", "/x"]), "etcd"), None);
        let wrapped = s(&[
            "exec",
            "watch-termination",
            "--termination-touch-file=/t",
            "--",
            "hyperkube",
            "kube-apiserver",
            "--secure-port=6443",
        ]);
        assert_eq!(
            find_program(&wrapped, "kube-apiserver").unwrap(),
            s(&["kube-apiserver", "--secure-port=6443"])
        );
        assert!(shell_commands("echo 'open").is_err() && shell_commands("echo $(x").is_err());
    }

    #[test]
    fn etcd_version_from_the_image() {
        assert_eq!(image_etcd_version("registry.k8s.io/etcd:3.5.9-0"), Some((3, 5)));
        assert_eq!(
            image_etcd_version("localhost:5000/etcd:3.6.0"),
            Some((3, 6)),
            "a registry with a port"
        );
        assert_eq!(image_etcd_version("gcr.io/etcd-development/etcd:v3.4.27"), Some((3, 4)));
        assert_eq!(image_etcd_version("registry.k8s.io/etcd:3.5.9-0@sha256:abc"), Some((3, 5)));
        assert_eq!(image_etcd_version("registry.k8s.io/etcd@sha256:abc"), None);
        assert_eq!(
            image_etcd_version("quay.io/openshift/origin:4.14"),
            None,
            "not etcd's own version"
        );
        assert_eq!(image_etcd_version("registry.k8s.io/etcd:latest"), None);
    }

    #[test]
    fn apiserver_encryption_config_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("kube-apiserver.yaml");
        let pod = |flag: &str| {
            format!("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver, --secure-port=6443{flag}]\n    volumeMounts:\n    - {{name: enc, mountPath: /etc/kubernetes/enc}}\n  volumes:\n  - {{name: enc, hostPath: {{path: /srv/enc}}}}\n")
        };
        std::fs::write(&m, pod(", --encryption-provider-config=/etc/kubernetes/enc/config.yaml"))
            .unwrap();
        assert_eq!(
            read_apiserver_encryption_config(&m).unwrap(),
            Some(PathBuf::from("/srv/enc/config.yaml"))
        );
        std::fs::write(&m, pod("")).unwrap();
        assert_eq!(read_apiserver_encryption_config(&m).unwrap(), None);
        std::fs::write(&m, pod(", --encryption-provider-config=/elsewhere/c.yaml")).unwrap();
        assert!(read_apiserver_encryption_config(&m).unwrap_err().to_string().contains("hostPath"));
    }

    #[test]
    fn flags_in_both_spellings() {
        let argv: Vec<String> = ["etcd", "--name", "a", "--data-dir=/d", "--enable-v2", "--x", "y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let f = flags(&argv);
        assert_eq!(f["name"], "a");
        assert_eq!(f["data-dir"], "/d");
        assert_eq!(f["enable-v2"], "true");
        assert_eq!(f["x"], "y");
    }
}
