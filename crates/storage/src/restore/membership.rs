//! The cluster a restore creates: peer URL parsing and validation as etcd does it, member ids
//! and the cluster id (both derived with SHA-1 exactly like etcd, so every member computes the
//! same ids independently), and the JSON etcd stores for a member.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha1::{Digest, Sha1};

/// A configuration mistake in the flags; nothing has been written when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Parses one peer URL the way etcd's `types.NewURLs` does and returns its canonical text
/// (scheme lower-cased, the rest as given).
pub fn parse_url(raw: &str) -> Result<String, ConfigError> {
    let s = raw.trim();
    let scheme_error = || err(format!("URL scheme must be http, https, unix, or unixs: {s}"));
    let (scheme, rest) = s.split_once("://").ok_or_else(scheme_error)?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(scheme_error());
    }
    if rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(err(format!("URL contains whitespace: {s:?}")));
    }
    if scheme == "http" || scheme == "https" {
        let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(cut);
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if !is_host_port(host) {
            return Err(err(format!("URL address does not have the form \"host:port\": {s}")));
        }
        if !tail.is_empty() {
            return Err(err(format!("URL must not contain a path: {s}")));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Go's `net.SplitHostPort` acceptance: `host:port` or `[v6]:port`, one colon outside brackets.
fn is_host_port(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[') {
        match inner.split_once(']') {
            Some((addr, after)) => {
                !addr.contains(['[', ']'])
                    && after.starts_with(':')
                    && !after[1..].contains([':', '[', ']'])
            }
            None => false,
        }
    } else {
        h.matches(':').count() == 1 && !h.contains(['[', ']'])
    }
}

/// A comma-separated URL list (`--initial-advertise-peer-urls`), canonical and sorted.
pub fn parse_url_list(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut urls = list.split(',').map(parse_url).collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(err("no URLs given"));
    }
    urls.sort();
    Ok(urls)
}

/// `--initial-cluster`: `name=url,name=url,…`; a repeated name collects several URLs.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in spec.split(',').filter(|i| !i.trim().is_empty()) {
        let (name, url) = item.split_once('=').ok_or_else(|| {
            err(format!("--initial-cluster item {item:?} is not of the form name=url"))
        })?;
        map.entry(name.trim().to_string()).or_default().push(parse_url(url)?);
    }
    if map.is_empty() {
        return Err(err("--initial-cluster is empty"));
    }
    for urls in map.values_mut() {
        urls.sort();
    }
    Ok(map)
}

/// A member of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Canonical, sorted.
    pub peer_urls: Vec<String>,
}

impl Member {
    /// Member id as etcd writes it in keys and file names: lower-case hex, no leading zeros.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }

    /// The member record etcd stores (`members` bucket, ConfChange context):
    /// `{"id":…,"peerURLs":[…],"name":"…"}` in Go's JSON encoding (`name` omitted when empty).
    pub fn json(&self) -> String {
        let mut s =
            format!("{{\"id\":{},\"peerURLs\":{}", self.id, go_json_string_array(&self.peer_urls));
        if !self.name.is_empty() {
            s.push_str(",\"name\":");
            s.push_str(&go_json_string(&self.name));
        }
        s.push('}');
        s
    }

    /// `{"peerURLs":[…]}`: the raft attributes kept in the v2 store.
    pub fn raft_attributes_json(&self) -> String {
        format!("{{\"peerURLs\":{}}}", go_json_string_array(&self.peer_urls))
    }
}

/// Member id: the first 8 bytes (big-endian) of SHA-1 over the sorted peer URLs joined with
/// nothing, followed by the cluster token.
pub fn member_id(sorted_peer_urls: &[String], token: &str) -> u64 {
    let mut h = Sha1::new();
    for u in sorted_peer_urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

/// Cluster id: the first 8 bytes (big-endian) of SHA-1 over the member ids, ascending, each
/// as 8 big-endian bytes.
pub fn cluster_id(ids_ascending: &[u64]) -> u64 {
    let mut h = Sha1::new();
    for id in ids_ascending {
        h.update(id.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

/// The whole cluster, members in ascending id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub token: String,
    pub members: Vec<Member>,
    pub id: u64,
}

impl Cluster {
    /// Builds the cluster from `--initial-cluster` and `--initial-cluster-token`, with the
    /// checks etcd runs: no URL twice, no id twice, no id 0.
    pub fn new(initial_cluster: &str, token: &str) -> Result<Cluster, ConfigError> {
        let map = parse_initial_cluster(initial_cluster)?;
        let mut seen = BTreeMap::new();
        for (name, urls) in &map {
            for u in urls {
                if let Some(other) = seen.insert(u.clone(), name.clone()) {
                    return Err(err(format!(
                        "--initial-cluster has the peer URL {u} twice (members {other:?} and {name:?}); every member needs its own URLs"
                    )));
                }
            }
        }
        let mut members: Vec<Member> = map
            .into_iter()
            .map(|(name, peer_urls)| Member { id: member_id(&peer_urls, token), name, peer_urls })
            .collect();
        members.sort_by_key(|m| m.id);
        for w in members.windows(2) {
            if w[0].id == w[1].id {
                return Err(err(format!(
                    "member exists with identical ID {:x} ({:?} and {:?})",
                    w[0].id, w[0].name, w[1].name
                )));
            }
        }
        if let Some(m) = members.iter().find(|m| m.id == 0) {
            return Err(err(format!("member {:?}: cannot use 0 as member id", m.name)));
        }
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Ok(Cluster { token: token.to_string(), id: cluster_id(&ids), members })
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// etcd's bootstrap check for the member being restored: `name` is in the cluster and
    /// `--initial-advertise-peer-urls` equals its URLs there. (etcd also accepts lists that
    /// only match after DNS resolution; we compare the canonical strings and say so.)
    pub fn verify_local(&self, name: &str, advertise: &[String]) -> Result<&Member, ConfigError> {
        let m = self.member(name).ok_or_else(|| {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            err(format!(
                "couldn't find local name {name:?} in the initial cluster configuration (members: {})",
                names.join(", ")
            ))
        })?;
        if m.peer_urls != advertise {
            return Err(err(format!(
                "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {} (they must list the same URLs, \
                 spelled the same way)",
                m.peer_urls.join(","),
                advertise.join(",")
            )));
        }
        Ok(m)
    }
}

/// Go `encoding/json` string encoding (HTML-safe escaping, as etcd's JSON is written).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn go_json_string_array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| go_json_string(s)).collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_lab_vectors() {
        let c = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        assert_eq!(c.members[0].id, 0x8e9e05c52164694d);
        assert_eq!(c.id, 0xcdf818194e3a8c32);
        assert_eq!(c.members[0].hex_id(), "8e9e05c52164694d");
        assert_eq!(
            c.members[0].json(),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default"}"#
        );
        assert_eq!(
            c.members[0].raft_attributes_json(),
            r#"{"peerURLs":["http://localhost:2380"]}"#
        );
    }

    #[test]
    fn members_sorted_by_id_and_urls_canonical() {
        let c = Cluster::new(
            "a=http://127.0.0.1:2380, b=HTTP://127.0.0.1:2381,c=http://127.0.0.1:2382,a=http://10.0.0.1:2380",
            "tok",
        )
        .unwrap();
        assert_eq!(c.members.len(), 3);
        assert!(c.members.windows(2).all(|w| w[0].id < w[1].id));
        let b = c.member("b").unwrap();
        assert_eq!(b.peer_urls, vec!["http://127.0.0.1:2381"]);
        let a = c.member("a").unwrap();
        assert_eq!(a.peer_urls, vec!["http://10.0.0.1:2380", "http://127.0.0.1:2380"]);
        assert_eq!(a.id, member_id(&a.peer_urls, "tok"));
        assert!(c
            .verify_local(
                "a",
                &parse_url_list("http://127.0.0.1:2380,http://10.0.0.1:2380").unwrap()
            )
            .is_ok());
        assert!(c.verify_local("a", &parse_url_list("http://127.0.0.1:2380").unwrap()).is_err());
        let e = c.verify_local("zz", &[]).unwrap_err();
        assert!(e.0.contains("couldn't find local name \"zz\""), "{e}");
    }

    #[test]
    fn url_rules() {
        assert_eq!(parse_url(" http://h:1 ").unwrap(), "http://h:1");
        assert_eq!(parse_url("https://[::1]:2380").unwrap(), "https://[::1]:2380");
        assert!(parse_url("ftp://h:1").unwrap_err().0.starts_with("URL scheme must be"));
        assert!(parse_url("localhost:2380").is_err());
        assert!(parse_url("http://h").unwrap_err().0.contains("host:port"));
        assert!(parse_url("http://h:1/x").unwrap_err().0.contains("path"));
        assert!(parse_url("http://h:1/").unwrap_err().0.contains("path"));
        assert!(parse_url("unix://some/path").is_ok());
    }

    #[test]
    fn cluster_rules() {
        assert!(Cluster::new("a=http://h:1,b=http://h:1", "t").unwrap_err().0.contains("twice"));
        assert!(Cluster::new("", "t").is_err());
        assert!(Cluster::new("a", "t").is_err());
        assert!(Cluster::new("a=http://h", "t").is_err());
    }

    #[test]
    fn go_json_escaping() {
        assert_eq!(go_json_string("a<b>&\"\\\u{1}\n"), r#""a\u003cb\u003e\u0026\"\\\u0001\n""#);
    }
}
