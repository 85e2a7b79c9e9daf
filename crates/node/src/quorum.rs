//! Recovery from quorum loss, "restore one, grow back": the checks and manifest edits the
//! workflow needs on a node.
//!
//! - [`probe_targets`] / [`probe`]: before `node restore --new-cluster` makes a one-member
//!   cluster, every other member of the old cluster (from the manifest's `--initial-cluster`
//!   and the snapshot's member list) must be silent on its peer and client URLs; an old
//!   member still running would go on with its own copy of the data (split brain).
//! - [`rewrite_for_join`]: `node join` points etcd's manifest at the existing cluster
//!   (`--initial-cluster-state=existing`, the full `--initial-cluster`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pods::EtcdPod;
use crate::NodeError;

/// One URL of an old member to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The member's name (or `id <hex>` when the record has none).
    pub member: String,
    pub url: String,
    /// "peer" or "client".
    pub kind: &'static str,
    /// Where the URL was read: "manifest" or "snapshot".
    pub source: &'static str,
}

/// A probed URL: did anything accept a TCP connection there?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub target: ProbeTarget,
    pub answered: bool,
}

/// A member as the snapshot lists it (name may be empty).
#[derive(Debug, Clone, Default)]
pub struct KnownMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// `name=url,name=url` into pairs (a malformed entry is skipped: the restore itself refuses it).
pub fn parse_initial_cluster(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|p| p.trim().split_once('='))
        .map(|(n, u)| (n.trim().to_string(), u.trim().to_string()))
        .collect()
}

/// The URLs of every member but this one (`own_name`, `own_peer_urls`), from the manifest's
/// `--initial-cluster` (peer URLs) and the snapshot's member list (peer URLs, and client URLs
/// where the record has them: etcd 3.5 keeps only id, name and peer URLs in its database).
pub fn probe_targets(
    etcd: &EtcdPod,
    own_name: &str,
    own_peer_urls: &[String],
    snapshot: &[KnownMember],
) -> Vec<ProbeTarget> {
    let own = |name: &str, peers: &[String]| {
        (!name.is_empty() && name == own_name)
            || peers.iter().any(|p| own_peer_urls.iter().any(|o| same_url(p, o)))
    };
    let mut out: Vec<ProbeTarget> = Vec::new();
    let push = |t: ProbeTarget, out: &mut Vec<ProbeTarget>| {
        if !out.iter().any(|o| same_url(&o.url, &t.url))
            && !own_peer_urls.iter().any(|o| same_url(o, &t.url))
        {
            out.push(t);
        }
    };
    if let Some(ic) = etcd.initial_cluster.as_deref().filter(|c| !crate::pods::is_variable(c)) {
        for (name, url) in parse_initial_cluster(ic) {
            if !own(&name, std::slice::from_ref(&url)) {
                push(ProbeTarget { member: name, url, kind: "peer", source: "manifest" }, &mut out);
            }
        }
    }
    for m in snapshot {
        if own(&m.name, &m.peer_urls) {
            continue;
        }
        let member = if m.name.is_empty() { format!("id {:x}", m.id) } else { m.name.clone() };
        for u in &m.peer_urls {
            push(
                ProbeTarget {
                    member: member.clone(),
                    url: u.clone(),
                    kind: "peer",
                    source: "snapshot",
                },
                &mut out,
            );
        }
        for u in &m.client_urls {
            push(
                ProbeTarget {
                    member: member.clone(),
                    url: u.clone(),
                    kind: "client",
                    source: "snapshot",
                },
                &mut out,
            );
        }
    }
    out
}

/// `scheme://host:port[/…]` → `host:port`.
pub fn url_addr(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(format!("{host}:{port}"))
}

/// Tries a TCP connection to every target at once (each bounded by `timeout`).
pub fn probe(targets: &[ProbeTarget], timeout: Duration) -> Vec<ProbeResult> {
    use std::net::ToSocketAddrs;
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let answered = url_addr(&t.url)
                        .and_then(|a| a.to_socket_addrs().ok())
                        .is_some_and(|mut addrs| {
                            addrs.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
                        });
                    ProbeResult { target: t.clone(), answered }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| h.join().unwrap_or(ProbeResult { target: t.clone(), answered: false }))
            .collect()
    })
}

/// Where a `--flag=VALUE` token's value lies in `text`: (start of the token, start of the
/// value, end of the value). A value starting with a quote runs to the matching quote;
/// otherwise to whitespace or a quote.
fn flag_spans(text: &str, flag: &str) -> Vec<(usize, usize, usize)> {
    let pat = format!("--{flag}=");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let start = from + i;
        let vstart = start + pat.len();
        let rest = &text[vstart..];
        let vend = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                vstart + 1 + rest[1..].find(q).map_or(rest.len() - 1, |j| j + 1)
            }
            _ => {
                vstart
                    + rest
                        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                        .unwrap_or(rest.len())
            }
        };
        out.push((start, vstart, vend));
        from = vend.max(vstart);
    }
    out
}

/// Where the value of env entry `name` (`- name: NAME` then `value: …`, or the flow form
/// `- {name: NAME, value: …}`) lies in a manifest's text: (start, end) of the value token,
/// quotes included. `None` when no entry of that name has a literal value.
fn env_value_spans(text: &str, name: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some((s, e)) = env_value_span(&text[from..], name) {
        out.push((from + s, from + e));
        from += e;
    }
    out
}

/// The first of [`env_value_spans`].
fn env_value_span(text: &str, name: &str) -> Option<(usize, usize)> {
    let mut offset = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let start = offset;
        offset += line.len();
        let Some(at) = line.find("name:") else { continue };
        let after = line[at + 5..].trim_start();
        let token: String =
            after.chars().take_while(|c| !matches!(c, ',' | '}' | '\n' | '\r' | ' ')).collect();
        if token.trim_matches(|c| c == '"' || c == '\'') != name {
            continue;
        }
        // The value: on this line (flow form) or the next one.
        let here = start + at + 5;
        let search_end = start + line.len() + lines.get(i + 1).map_or(0, |l| l.len());
        let v = text[here..search_end].find("value:")? + here + 6;
        let rest = &text[v..];
        let skip = rest.len() - rest.trim_start_matches(' ').len();
        let vstart = v + skip;
        let rest = &text[vstart..];
        let len = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => 1 + rest[1..].find(q)? + 1,
            _ => rest.find([',', '}', '\n', '\r']).unwrap_or(rest.len()),
        };
        return Some((vstart, vstart + rest[..len].trim_end().len()));
    }
    None
}

fn unquote(v: &str) -> &str {
    v.trim().trim_matches(|c| c == '"' || c == '\'')
}

/// How `node join` changed etcd's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinEdit {
    /// The new text; `None` when the manifest joins an existing cluster already.
    pub text: Option<String>,
    /// What the edit could not do itself (an initial cluster the pod computes when it starts).
    pub note: Option<String>,
}

/// etcd's manifest text made to join an existing cluster: `--initial-cluster` (a flag, or
/// the `ETCD_INITIAL_CLUSTER` env value) set to `initial_cluster`, and the initial cluster
/// state (flag or `ETCD_INITIAL_CLUSTER_STATE` env value) `existing`; a missing state is
/// added right after `--initial-cluster`. A script that computes `ETCD_INITIAL_CLUSTER`
/// when the pod starts (OpenShift's `$(discover-etcd-initial-cluster …)`, which asks the
/// cluster for its members) keeps doing so. Refuses forms it cannot edit
/// (`--flag value`, no initial cluster at all).
pub fn rewrite_for_join(text: &str, initial_cluster: &str) -> Result<JoinEdit, String> {
    for bad in ["--initial-cluster ", "--initial-cluster-state "] {
        if text.contains(bad) {
            return Err(format!("the manifest sets {} in a form etcdguard does not rewrite (only --flag=value and env values)", bad.trim()));
        }
    }
    let clusters = flag_spans(text, "initial-cluster");
    let states = flag_spans(text, "initial-cluster-state");
    // Every container's entry (OpenShift repeats the env in each container).
    let env_cluster = env_value_spans(text, "ETCD_INITIAL_CLUSTER");
    let env_state = env_value_spans(text, "ETCD_INITIAL_CLUSTER_STATE");
    let computed =
        text.contains("ETCD_INITIAL_CLUSTER=$(") || text.contains("ETCD_INITIAL_CLUSTER=`");
    let mut note = None;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for &(_, vs, ve) in &clusters {
        let quoted = matches!(text[vs..].chars().next(), Some('"' | '\''));
        let q = if quoted { &text[vs..vs + 1] } else { "" };
        edits.push((vs, ve, format!("{q}{initial_cluster}{q}")));
    }
    if clusters.is_empty() {
        match (env_cluster.is_empty(), computed) {
            (false, _) => {
                for &(vs, ve) in env_cluster.iter().filter(|(vs, ve)| unquote(&text[*vs..*ve]) != initial_cluster) {
                    edits.push((vs, ve, format!("\"{initial_cluster}\"")));
                }
            }
            (true, true) => {
                note = Some(format!(
                    "the pod computes its initial cluster when it starts (ETCD_INITIAL_CLUSTER=$(…) in its script, from the cluster's member list); it should come out as {initial_cluster}"
                ))
            }
            (true, false) => return Err("the manifest has no --initial-cluster=… flag nor ETCD_INITIAL_CLUSTER value to rewrite".into()),
        }
    }
    for &(_, vs, ve) in &states {
        edits.push((vs, ve, "existing".into()));
    }
    if states.is_empty() {
        match env_state.is_empty() {
            false => {
                for &(vs, ve) in env_state.iter().filter(|(vs, ve)| unquote(&text[*vs..*ve]) != "existing") {
                    edits.push((vs, ve, "\"existing\"".into()));
                }
            }
            true if clusters.is_empty() => {
                return Err("the manifest sets its initial cluster through the env but no ETCD_INITIAL_CLUSTER_STATE; add ETCD_INITIAL_CLUSTER_STATE=existing".into())
            }
            true => {
                // Insert a new item (or word) after each --initial-cluster token, in the same style.
                for &(start, _, ve) in &clusters {
                    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                    let prefix = &text[line_start..start];
                    if prefix.trim_start().starts_with("- ") || prefix.trim() == "-" || prefix.trim_start().starts_with("- \"") {
                        // A YAML list item: a new item with the same indentation and quoting.
                        let indent: String = prefix.chars().take_while(|c| *c == ' ').collect();
                        let quote = if prefix.trim_end().ends_with('"') { "\"" } else { "" };
                        let line_end = text[ve..].find('\n').map_or(text.len(), |i| ve + i);
                        edits.push((line_end, line_end, format!("\n{indent}- {quote}--initial-cluster-state=existing{quote}")));
                    } else {
                        edits.push((ve, ve, " --initial-cluster-state=existing".to_string()));
                    }
                }
            }
        }
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (s, e, with) in &edits {
        out.push_str(&text[at..*s]);
        out.push_str(with);
        at = *e;
    }
    out.push_str(&text[at..]);
    Ok(JoinEdit { text: (out != text).then_some(out), note })
}

/// Writes `text` over `manifest` atomically (temp file, fsync, rename, dir fsync), keeping
/// the current file as `<backups>/<name>.<stamp>` first. The temp file is hidden, so a
/// kubelet watching the directory never runs it.
pub fn replace_manifest(
    manifest: &Path,
    text: &str,
    backups: &Path,
    stamp: &str,
) -> Result<PathBuf, NodeError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, p: &Path, e: std::io::Error| {
        NodeError::Io(format!("{what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(backups).map_err(|e| io("creating", backups, e))?;
    let name = manifest.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let copy = backups.join(format!("{name}.{stamp}"));
    std::fs::copy(manifest, &copy).map_err(|e| io("keeping a copy of", manifest, e))?;
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.etcdguard-tmp"));
    let mode = std::fs::metadata(manifest).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, manifest)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", manifest, e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_rewrites_kubeadm_list_items() {
        let m = "    - --initial-advertise-peer-urls=http://10.0.0.2:2380\n    - --initial-cluster=cp2=http://10.0.0.2:2380\n    - --name=cp2\n";
        let out = rewrite_for_join(m, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380")
            .unwrap()
            .text
            .unwrap();
        assert_eq!(
            out,
            "    - --initial-advertise-peer-urls=http://10.0.0.2:2380\n    - --initial-cluster=cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380\n    - --initial-cluster-state=existing\n    - --name=cp2\n"
        );
        assert_eq!(
            rewrite_for_join(&out, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380")
                .unwrap()
                .text,
            None,
            "a second run changes nothing"
        );
        let with_state = out.replace("existing", "new");
        let again =
            rewrite_for_join(&with_state, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380")
                .unwrap()
                .text
                .unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn join_rewrites_a_shell_script_and_refuses_other_forms() {
        let m = "      exec etcd --name \"${N}\" \\\n        --initial-cluster=\"${N}=http://10.0.0.2:2380\" \\\n        --data-dir=/d\n";
        let out = rewrite_for_join(m, "a=http://1:2,b=http://3:4").unwrap().text.unwrap();
        assert!(out.contains("--initial-cluster=\"a=http://1:2,b=http://3:4\" --initial-cluster-state=existing \\"), "{out}");
        assert!(rewrite_for_join("    - --initial-cluster\n    - a=http://1:2\n", "x").is_err());
        assert!(
            rewrite_for_join("    command: [etcd, --name=a]\n", "x").is_err(),
            "nothing to rewrite"
        );
        assert!(rewrite_for_join("env: [{name: ETCD_INITIAL_CLUSTER, value: a}]", "x")
            .unwrap_err()
            .contains("ETCD_INITIAL_CLUSTER_STATE"));
    }

    #[test]
    fn join_rewrites_env_values_in_both_yaml_styles() {
        let block = "    env:\n    - name: \"ETCD_INITIAL_CLUSTER\"\n      value: \"m1=http://a:1\"\n    - name: ETCD_INITIAL_CLUSTER_STATE\n      value: new\n    - name: ETCD_INITIAL_CLUSTER_TOKEN\n      value: t\n";
        let out = rewrite_for_join(block, "m1=http://a:1,m2=http://b:1").unwrap().text.unwrap();
        assert_eq!(
            out,
            block
                .replace("\"m1=http://a:1\"", "\"m1=http://a:1,m2=http://b:1\"")
                .replace("value: new", "value: \"existing\"")
        );
        assert_eq!(rewrite_for_join(&out, "m1=http://a:1,m2=http://b:1").unwrap().text, None);
        let flow = "    env:\n    - {name: ETCD_INITIAL_CLUSTER_STATE, value: new}\n    - {name: ETCD_INITIAL_CLUSTER, value: 'm1=http://a:1'}\n";
        let out = rewrite_for_join(flow, "m1=http://a:1,m2=http://b:1").unwrap().text.unwrap();
        assert_eq!(out, "    env:\n    - {name: ETCD_INITIAL_CLUSTER_STATE, value: \"existing\"}\n    - {name: ETCD_INITIAL_CLUSTER, value: \"m1=http://a:1,m2=http://b:1\"}\n");
    }

    #[test]
    fn join_leaves_an_initial_cluster_the_pod_computes() {
        let m = "      ETCD_INITIAL_CLUSTER=$(discover-etcd-initial-cluster --target-name=m2)\n      export ETCD_INITIAL_CLUSTER\n      exec etcd --name=m2\n    env:\n      - name: \"ETCD_INITIAL_CLUSTER_STATE\"\n        value: \"existing\"\n";
        let edit = rewrite_for_join(m, "m1=http://a:1,m2=http://b:1").unwrap();
        assert_eq!(
            edit.text, None,
            "the state is existing already, the cluster computed: nothing to write"
        );
        assert!(edit.note.unwrap().contains("m1=http://a:1,m2=http://b:1"));
        let edit = rewrite_for_join(&m.replace("\"existing\"", "\"new\""), "x").unwrap();
        assert_eq!(edit.text.as_deref(), Some(m));
        assert!(rewrite_for_join(&m.replace("ETCD_INITIAL_CLUSTER_STATE", "OTHER"), "x").is_err());
    }

    #[test]
    fn targets_skip_this_member_and_merge_sources() {
        let etcd = EtcdPod {
            manifest: "/m/etcd.yaml".into(),
            name: "m1".into(),
            data_dir: "/d".into(),
            wal_dir: None,
            initial_cluster: Some("m1=http://127.0.0.11:2380,m2=http://127.0.0.12:2380".into()),
            initial_cluster_token: None,
            initial_advertise_peer_urls: None,
            client_addrs: vec![],
            image: None,
            image_version: None,
            run_as_user: None,
            run_as_group: None,
            unresolved: vec![],
        };
        let snap = vec![
            KnownMember {
                id: 1,
                name: "m1".into(),
                peer_urls: vec!["http://127.0.0.11:2380".into()],
                client_urls: vec!["http://127.0.0.11:2379".into()],
            },
            KnownMember {
                id: 2,
                name: "m2".into(),
                peer_urls: vec!["http://127.0.0.12:2380/".into()],
                client_urls: vec!["http://127.0.0.12:2379".into()],
            },
            KnownMember {
                id: 0x3f,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.13:2380".into()],
                client_urls: vec![],
            },
        ];
        let t = probe_targets(&etcd, "m1", &["http://127.0.0.11:2380".into()], &snap);
        let urls: Vec<(&str, &str, &str)> =
            t.iter().map(|t| (t.member.as_str(), t.url.as_str(), t.source)).collect();
        assert_eq!(
            urls,
            vec![
                ("m2", "http://127.0.0.12:2380", "manifest"),
                ("m2", "http://127.0.0.12:2379", "snapshot"),
                ("id 3f", "http://127.0.0.13:2380", "snapshot"),
            ]
        );
        assert_eq!(url_addr("https://[::1]:2379/x").as_deref(), Some("[::1]:2379"));
    }

    #[test]
    fn probe_sees_a_listener_and_not_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = format!("http://{}", l.local_addr().unwrap());
        let closed = {
            let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", c.local_addr().unwrap())
        };
        let t = |url: &str| ProbeTarget {
            member: "x".into(),
            url: url.into(),
            kind: "peer",
            source: "manifest",
        };
        let r = probe(&[t(&open), t(&closed)], Duration::from_millis(500));
        assert!(r[0].answered && !r[1].answered);
    }
}
