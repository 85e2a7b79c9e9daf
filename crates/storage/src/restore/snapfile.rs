//! The raft snapshot file (`member/snap/<term>-<index>.snap`) of a restored member: raft
//! snapshot metadata (index N, term 1, every member a voter) around the v2 store's JSON, which
//! is where etcd 3.4 and 3.5 read the cluster membership from (3.6+ read the db's `members`
//! bucket instead). Format notes:
//! `docs/formats/wal-and-snap.md`.

use std::fmt::Write as _;

use super::membership::{go_json_string, Cluster};
use super::wal::{conf_state, field_bytes, field_varint, Flavor};

/// The v2 store holds a ring of this many events; unused slots serialize as `null`.
const EVENT_HISTORY_CAPACITY: usize = 1000;
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// File name for term 1 and index N: `%016x-%016x.snap`.
pub fn file_name(cluster: &Cluster) -> String {
    format!("{:016x}-{:016x}.snap", 1, cluster.members.len())
}

fn node(out: &mut String, path: &str, index: usize, value: &str) {
    let _ = write!(
        out,
        "\"Path\":{},\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"{ZERO_TIME}\",\"Value\":{}",
        go_json_string(path),
        go_json_string(value)
    );
}

/// The v2 store after creating `/0/members/<hex id>/raftAttributes` for each member in
/// ascending id order (member i at index i), serialized as etcd 3.4/3.5 do (3.6+ look each
/// member up before creating it, which counts one failed get).
pub fn v2_store_json(cluster: &Cluster, flavor: Flavor) -> String {
    let gets_fail = u32::from(flavor >= Flavor::V3_6);
    let n = cluster.members.len();
    let mut s = String::with_capacity(6000 + 400 * n);
    s.push_str("{\"Root\":{");
    node(&mut s, "/", 0, "");
    s.push_str(",\"Children\":{\"0\":{");
    node(&mut s, "/0", 0, "");
    s.push_str(",\"Children\":{\"members\":{");
    node(&mut s, "/0/members", 1, "");
    s.push_str(",\"Children\":{");
    // JSON object keys are sorted as strings; indexes follow the numeric id order.
    let mut by_hex: Vec<(String, usize)> =
        cluster.members.iter().enumerate().map(|(i, m)| (m.hex_id(), i + 1)).collect();
    by_hex.sort();
    for (k, (hex, index)) in by_hex.iter().enumerate() {
        let m = &cluster.members[index - 1];
        if k > 0 {
            s.push(',');
        }
        let dir = format!("/0/members/{hex}");
        let _ = write!(s, "{}:{{", go_json_string(hex));
        node(&mut s, &dir, *index, "");
        s.push_str(",\"Children\":{\"raftAttributes\":{");
        node(&mut s, &format!("{dir}/raftAttributes"), *index, &m.raft_attributes_json());
        s.push_str(",\"Children\":null}}}");
    }
    s.push_str("}}}},\"1\":{");
    node(&mut s, "/1", 0, "");
    s.push_str(",\"Children\":{}}}},\"WatcherHub\":{\"EventHistory\":{\"Queue\":{\"Events\":[");
    for (i, m) in cluster.members.iter().enumerate() {
        let _ = write!(
            s,
            "{{\"action\":\"create\",\"node\":{{\"key\":{},\"value\":{},\"modifiedIndex\":{},\"createdIndex\":{}}}}},",
            go_json_string(&format!("/0/members/{}/raftAttributes", m.hex_id())),
            go_json_string(&m.raft_attributes_json()),
            i + 1,
            i + 1
        );
    }
    for _ in n..EVENT_HISTORY_CAPACITY {
        s.push_str("null,");
    }
    s.pop();
    let _ = write!(
        s,
        "],\"Size\":{n},\"Front\":0,\"Back\":{n},\"Capacity\":{EVENT_HISTORY_CAPACITY}}},\"StartIndex\":1,\"LastIndex\":{n}}}}},\
         \"CurrentIndex\":{n},\"Stats\":{{\"getsSuccess\":0,\"getsFail\":{gets_fail},\"setsSuccess\":0,\"setsFail\":0,\
         \"deleteSuccess\":0,\"deleteFail\":0,\"updateSuccess\":0,\"updateFail\":0,\"createSuccess\":{n},\
         \"createFail\":0,\"compareAndSwapSuccess\":0,\"compareAndSwapFail\":0,\"compareAndDeleteSuccess\":0,\
         \"compareAndDeleteFail\":0,\"expireCount\":0,\"watchers\":0}},\"CurrentVersion\":2}}"
    );
    s
}

/// The whole `.snap` file: `snappb.Snapshot{crc, data = raftpb.Snapshot{store JSON,
/// metadata{conf state, index N, term 1}}}`, crc = CRC-32C of `data`.
pub fn encode(cluster: &Cluster, flavor: Flavor) -> Vec<u8> {
    let json = v2_store_json(cluster, flavor);
    let mut metadata = Vec::new();
    field_bytes(&mut metadata, 1, &conf_state(cluster, flavor));
    field_varint(&mut metadata, 2, cluster.members.len() as u64);
    field_varint(&mut metadata, 3, 1);
    let mut raft_snapshot = Vec::with_capacity(json.len() + 64);
    field_bytes(&mut raft_snapshot, 1, json.as_bytes());
    field_bytes(&mut raft_snapshot, 2, &metadata);
    let mut out = Vec::with_capacity(raft_snapshot.len() + 16);
    field_varint(&mut out, 1, crc32c::crc32c(&raft_snapshot) as u64);
    field_bytes(&mut out, 2, &raft_snapshot);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_member_snap_matches_etcdutl_bytes() {
        let c = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        let json = v2_store_json(&c, Flavor::V3_5);
        assert_eq!(json.len(), 6457);
        assert!(json.starts_with(r#"{"Root":{"Path":"/","CreatedIndex":0,"ModifiedIndex":0,"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{"0":{"Path":"/0""#));
        assert!(json
            .contains(r#""Value":"{\"peerURLs\":[\"http://localhost:2380\"]}","Children":null}"#));
        assert!(json.ends_with(r#""expireCount":0,"watchers":0},"CurrentVersion":2}"#));
        assert_eq!(json.matches("null").count(), 999 + 1);
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
        let snap = encode(&c, Flavor::V3_5);
        assert_eq!(snap.len(), 6490);
        assert_eq!(
            &snap[..12],
            &[0x08, 0xb6, 0xf8, 0x81, 0x8f, 0x01, 0x12, 0xd1, 0x32, 0x0a, 0xb9, 0x32]
        );
        assert_eq!(&snap[12..20], b"{\"Root\":");
        let tail = [
            0x12, 0x13, 0x0a, 0x0d, 0x08, 0xcd, 0xd2, 0x91, 0x8b, 0xd2, 0xb8, 0x81, 0xcf, 0x8e,
            0x01, 0x28, 0x00, 0x10, 0x01, 0x18, 0x01,
        ];
        assert_eq!(&snap[snap.len() - tail.len()..], &tail);
        assert_eq!(file_name(&c), "0000000000000001-0000000000000001.snap");
    }

    #[test]
    fn the_3_6_flavor_counts_one_failed_v2_lookup() {
        let cluster = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        let snap = |f| String::from_utf8_lossy(&encode(&cluster, f)).into_owned();
        assert!(
            snap(Flavor::V3_5).contains("\"getsFail\":0")
                && snap(Flavor::V3_6).contains("\"getsFail\":1")
        );
    }

    #[test]
    fn members_keyed_by_hex_string_order_indexed_by_id_order() {
        let c = Cluster::new("a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3", "t")
            .unwrap();
        let json = v2_store_json(&c, Flavor::V3_5);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let members = &v["Root"]["Children"]["0"]["Children"]["members"]["Children"];
        for (i, m) in c.members.iter().enumerate() {
            let node = &members[m.hex_id()];
            assert_eq!(node["CreatedIndex"], i + 1);
            let attrs: serde_json::Value =
                serde_json::from_str(node["Children"]["raftAttributes"]["Value"].as_str().unwrap())
                    .unwrap();
            assert_eq!(attrs["peerURLs"][0], m.peer_urls[0]);
        }
        assert_eq!(
            v["WatcherHub"]["EventHistory"]["Queue"]["Events"].as_array().unwrap().len(),
            1000
        );
        assert_eq!(v["CurrentIndex"], 3);
        assert_eq!(file_name(&c), "0000000000000001-0000000000000003.snap");
    }
}
