//! The cluster's member list as a snapshot records it (`members` bucket): who the old
//! cluster's members were, so a restore into a new one-member cluster can first check that
//! none of them still runs.

use etcdguard_bolt::write::{collect_bucket, collect_entries};
use etcdguard_bolt::Db;

/// One member record (`{"id":…,"peerURLs":[…],"name":"…","clientURLs":[…]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub id: u64,
    /// Empty for a member that was added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Bounds what is read from a damaged file; real clusters have a handful of members.
const LIMIT: usize = 10_000;

/// The members of the snapshot's cluster, by id. A snapshot without a `members` bucket has none.
pub fn stored_members(db: &Db<'_>) -> Result<Vec<StoredMember>, String> {
    let root = collect_entries(db, db.meta().root, LIMIT)
        .map_err(|e| format!("reading the root bucket: {e}"))?;
    let Some(bucket) = root.iter().find(|e| e.key == b"members") else { return Ok(Vec::new()) };
    let entries = collect_bucket(db, &bucket.value, LIMIT)
        .map_err(|e| format!("reading the members bucket: {e}"))?;
    let mut out = Vec::new();
    for e in entries {
        let key = String::from_utf8_lossy(&e.key).into_owned();
        let v: serde_json::Value = serde_json::from_slice(&e.value)
            .map_err(|err| format!("member {key}: not JSON: {err}"))?;
        let id = v["id"].as_u64().ok_or_else(|| format!("member {key}: no id"))?;
        let strings = |field: &str| -> Vec<String> {
            v[field]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        out.push(StoredMember {
            id,
            name: v["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: strings("peerURLs"),
            client_urls: strings("clientURLs"),
            is_learner: v["isLearner"].as_bool().unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_member_list_of_an_etcd_3_5_snapshot() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../bolt/tests/data/etcd-3.5.1-k8s-small.db");
        let bytes = std::fs::read(path).unwrap();
        let db = Db::open(&bytes[..bytes.len() - 32]).unwrap();
        let members = stored_members(&db).unwrap();
        assert_eq!(
            members,
            vec![StoredMember {
                id: 3594421348685379207,
                name: "default".into(),
                peer_urls: vec!["http://127.0.0.1:36851".into()],
                client_urls: vec![],
                is_learner: false
            }]
        );
    }
}
