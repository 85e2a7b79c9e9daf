//! `Maintenance.HashKV` on every member, and whether the members agree.
//!
//! A member's KV hash covers every revision it keeps from its compaction revision up to the
//! hash revision, so two members' hashes are comparable when both hashed at the same revision
//! with the same compaction revision; then different hashes mean different data.

use crate::cluster::Member;
use crate::conn::Connection;
use crate::error::ClientError;

/// One member's answer to `HashKV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// The member that answered (from the response header).
    pub member_id: u64,
    pub hash: u32,
    /// The revision the hash goes up to (0 from etcd 3.4, which does not report it).
    pub hash_revision: i64,
    /// The member's compaction revision: the hash starts there.
    pub compact_revision: i64,
}

impl Connection {
    /// `HashKV` at `revision` (0: the member's current revision).
    pub async fn hash_kv(&mut self, revision: i64) -> Result<KvHash, ClientError> {
        let mut m = self.client.maintenance_client();
        let r = self.unary("waiting for the member's KV hash", m.hash_kv(revision)).await?;
        Ok(KvHash {
            member_id: r.header().map(|h| h.member_id()).unwrap_or(0),
            hash: r.hash(),
            hash_revision: r.hash_revision(),
            compact_revision: r.compact_version(),
        })
    }
}

/// `cluster hashkv`: every member's client URLs, as etcdctl's `--cluster` lists them, with
/// each one's answer.
#[derive(Debug)]
pub struct ClusterHashes {
    /// The endpoint that answered the member list.
    pub from: String,
    pub members: Vec<Member>,
    /// (client URL as the member advertises it, its answer), members in list order.
    pub hashes: Vec<(String, Result<KvHash, ClientError>)>,
    /// Without `--rev`, members that hashed at different revisions (writes in flight) were
    /// asked again at the smallest of them; this is that revision.
    pub rehashed_at: Option<i64>,
}

/// Whether the answers agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// Every member hashed the same revisions to the same hash.
    Agree { hash: u32, hash_revision: i64, compact_revision: i64 },
    /// Same revisions, different hashes: the members hold different data. Groups of
    /// endpoints by hash, largest group first.
    Differ { hash_revision: i64, groups: Vec<(u32, Vec<String>)> },
    /// The answers cover different revision ranges, so they cannot be compared.
    Incomparable(String),
    /// No member answered.
    NoAnswer,
}

/// Compares the answers that came back (errors are the caller's to report).
pub fn agreement(hashes: &[(String, Result<KvHash, ClientError>)]) -> Agreement {
    let ok: Vec<(&String, &KvHash)> =
        hashes.iter().filter_map(|(e, r)| r.as_ref().ok().map(|h| (e, h))).collect();
    let Some((_, first)) = ok.first() else { return Agreement::NoAnswer };
    let ranges: std::collections::BTreeSet<(i64, i64)> =
        ok.iter().map(|(_, h)| (h.compact_revision, h.hash_revision)).collect();
    if ranges.len() > 1 {
        let list: Vec<String> = ok
            .iter()
            .map(|(e, h)| {
                format!("{e} hashed revisions {}..={}", h.compact_revision, h.hash_revision)
            })
            .collect();
        return Agreement::Incomparable(format!(
            "the members hashed different revision ranges ({})",
            list.join("; ")
        ));
    }
    let mut groups: Vec<(u32, Vec<String>)> = Vec::new();
    for (e, h) in &ok {
        match groups.iter_mut().find(|(hash, _)| *hash == h.hash) {
            Some((_, eps)) => eps.push((*e).clone()),
            None => groups.push((h.hash, vec![(*e).clone()])),
        }
    }
    if groups.len() == 1 {
        return Agreement::Agree {
            hash: first.hash,
            hash_revision: first.hash_revision,
            compact_revision: first.compact_revision,
        };
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    Agreement::Differ { hash_revision: first.hash_revision, groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hash: u32, rev: i64, compact: i64) -> Result<KvHash, ClientError> {
        Ok(KvHash { member_id: 1, hash, hash_revision: rev, compact_revision: compact })
    }

    #[test]
    fn agreement_needs_equal_ranges_then_equal_hashes() {
        let e = |s: &str| s.to_string();
        assert_eq!(
            agreement(&[(e("a"), h(7, 10, 2)), (e("b"), h(7, 10, 2))]),
            Agreement::Agree { hash: 7, hash_revision: 10, compact_revision: 2 }
        );
        assert_eq!(
            agreement(&[(e("a"), h(7, 10, 2)), (e("b"), h(8, 10, 2)), (e("c"), h(8, 10, 2))]),
            Agreement::Differ {
                hash_revision: 10,
                groups: vec![(8, vec![e("b"), e("c")]), (7, vec![e("a")])]
            }
        );
        assert!(matches!(
            agreement(&[(e("a"), h(7, 10, 2)), (e("b"), h(7, 11, 2))]),
            Agreement::Incomparable(_)
        ));
        assert!(matches!(
            agreement(&[(e("a"), h(7, 10, 2)), (e("b"), h(7, 10, 3))]),
            Agreement::Incomparable(_)
        ));
        let down = Err(ClientError::Config("down".into()));
        assert_eq!(agreement(&[(e("a"), down)]), Agreement::NoAnswer);
    }
}
