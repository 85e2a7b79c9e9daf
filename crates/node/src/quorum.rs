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
    s.split(',').filter_map(|p| p.trim().split_once('=')).map(|(n, u)| (n.trim().to_string(), u.trim().to_string())).collect()
}

/// The URLs of every member but this one (`own_name`, `own_peer_urls`), from the manifest's
/// `--initial-cluster` (peer URLs) and the snapshot's member list (peer URLs, and client URLs
/// where the record has them: etcd 3.5 keeps only id, name and peer URLs in its database).
pub fn probe_targets(etcd: &EtcdPod, own_name: &str, own_peer_urls: &[String], snapshot: &[KnownMember]) -> Vec<ProbeTarget> {
    let own = |name: &str, peers: &[String]| (!name.is_empty() && name == own_name) || peers.iter().any(|p| own_peer_urls.iter().any(|o| same_url(p, o)));
    let mut out: Vec<ProbeTarget> = Vec::new();
    let push = |t: ProbeTarget, out: &mut Vec<ProbeTarget>| {
        if !out.iter().any(|o| same_url(&o.url, &t.url)) && !own_peer_urls.iter().any(|o| same_url(o, &t.url)) {
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
            push(ProbeTarget { member: member.clone(), url: u.clone(), kind: "peer", source: "snapshot" }, &mut out);
        }
        for u in &m.client_urls {
            push(ProbeTarget { member: member.clone(), url: u.clone(), kind: "client", source: "snapshot" }, &mut out);
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
                        .is_some_and(|mut addrs| addrs.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok()));
                    ProbeResult { target: t.clone(), answered }
                })
            })
            .collect();
        handles.into_iter().zip(targets).map(|(h, t)| h.join().unwrap_or(ProbeResult { target: t.clone(), answered: false })).collect()
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
            Some(q @ ('"' | '\'')) => vstart + 1 + rest[1..].find(q).map_or(rest.len() - 1, |j| j + 1),
            _ => vstart + rest.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len()),
        };
        out.push((start, vstart, vend));
        from = vend.max(vstart);
    }
    out
}

/// etcd's manifest text with `--initial-cluster=<initial_cluster>` and
/// `--initial-cluster-state=existing`: each flag replaced where it is set, the state added
/// right after `--initial-cluster` when it is missing. `Ok(None)`: already so. Refuses
/// manifests that set these flags another way (`--flag value`, `ETCD_*` env), which must be
/// edited by hand.
pub fn rewrite_for_join(text: &str, initial_cluster: &str) -> Result<Option<String>, String> {
    let clusters = flag_spans(text, "initial-cluster");
    if clusters.is_empty() {
        return Err("the manifest has no --initial-cluster=… flag to rewrite".into());
    }
    for bad in ["--initial-cluster ", "--initial-cluster-state ", "ETCD_INITIAL_CLUSTER"] {
        if text.contains(bad) {
            return Err(format!("the manifest sets {} in a form etcdguard does not rewrite (only --flag=value)", bad.trim()));
        }
    }
    let states = flag_spans(text, "initial-cluster-state");
    let mut out = String::with_capacity(text.len() + 64);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for &(_, vs, ve) in &clusters {
        let quoted = matches!(text[vs..].chars().next(), Some('"' | '\''));
        let q = if quoted { &text[vs..vs + 1] } else { "" };
        edits.push((vs, ve, format!("{q}{initial_cluster}{q}")));
    }
    for &(_, vs, ve) in &states {
        edits.push((vs, ve, "existing".into()));
    }
    if states.is_empty() {
        // Insert a new item (or word) after each --initial-cluster token, in the same style.
        for &(start, _, ve) in &clusters {
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let prefix = &text[line_start..start];
            let item = if prefix.trim_start().starts_with("- ") || prefix.trim() == "-" || prefix.trim_start().starts_with("- \"") {
                // A YAML list item: a new item with the same indentation and quoting.
                let indent: String = prefix.chars().take_while(|c| *c == ' ').collect();
                let quote = if prefix.trim_end().ends_with('"') { "\"" } else { "" };
                let line_end = text[ve..].find('\n').map_or(text.len(), |i| ve + i);
                edits.push((line_end, line_end, format!("\n{indent}- {quote}--initial-cluster-state=existing{quote}")));
                continue;
            } else {
                " --initial-cluster-state=existing".to_string()
            };
            edits.push((ve, ve, item));
        }
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut at = 0;
    for (s, e, with) in &edits {
        out.push_str(&text[at..*s]);
        out.push_str(with);
        at = *e;
    }
    out.push_str(&text[at..]);
    Ok((out != text).then_some(out))
}

/// Writes `text` over `manifest` atomically (temp file, fsync, rename, dir fsync), keeping
/// the current file as `<backups>/<name>.<stamp>` first. The temp file is hidden, so a
/// kubelet watching the directory never runs it.
pub fn replace_manifest(manifest: &Path, text: &str, backups: &Path, stamp: &str) -> Result<PathBuf, NodeError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, p: &Path, e: std::io::Error| NodeError::Io(format!("{what} {}: {e}", p.display()));
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
        let out = rewrite_for_join(m, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380").unwrap().unwrap();
        assert_eq!(
            out,
            "    - --initial-advertise-peer-urls=http://10.0.0.2:2380\n    - --initial-cluster=cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380\n    - --initial-cluster-state=existing\n    - --name=cp2\n"
        );
        assert_eq!(rewrite_for_join(&out, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380").unwrap(), None, "a second run changes nothing");
        let with_state = out.replace("existing", "new");
        let again = rewrite_for_join(&with_state, "cp1=http://10.0.0.1:2380,cp2=http://10.0.0.2:2380").unwrap().unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn join_rewrites_a_shell_script_and_refuses_other_forms() {
        let m = "      exec etcd --name \"${N}\" \\\n        --initial-cluster=\"${N}=http://10.0.0.2:2380\" \\\n        --data-dir=/d\n";
        let out = rewrite_for_join(m, "a=http://1:2,b=http://3:4").unwrap().unwrap();
        assert!(out.contains("--initial-cluster=\"a=http://1:2,b=http://3:4\" --initial-cluster-state=existing \\"), "{out}");
        assert!(rewrite_for_join("    - --initial-cluster\n    - a=http://1:2\n", "x").is_err());
        assert!(rewrite_for_join("env: [{name: ETCD_INITIAL_CLUSTER, value: a}]", "x").is_err());
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
        };
        let snap = vec![
            KnownMember { id: 1, name: "m1".into(), peer_urls: vec!["http://127.0.0.11:2380".into()], client_urls: vec!["http://127.0.0.11:2379".into()] },
            KnownMember { id: 2, name: "m2".into(), peer_urls: vec!["http://127.0.0.12:2380/".into()], client_urls: vec!["http://127.0.0.12:2379".into()] },
            KnownMember { id: 0x3f, name: String::new(), peer_urls: vec!["http://127.0.0.13:2380".into()], client_urls: vec![] },
        ];
        let t = probe_targets(&etcd, "m1", &["http://127.0.0.11:2380".into()], &snap);
        let urls: Vec<(&str, &str, &str)> = t.iter().map(|t| (t.member.as_str(), t.url.as_str(), t.source)).collect();
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
        let t = |url: &str| ProbeTarget { member: "x".into(), url: url.into(), kind: "peer", source: "manifest" };
        let r = probe(&[t(&open), t(&closed)], Duration::from_millis(500));
        assert!(r[0].answered && !r[1].answered);
    }
}
