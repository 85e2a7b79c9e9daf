//! The write-ahead log a restored member starts from: one file holding the cluster's
//! membership as committed raft entries, a hard state and a snapshot record matching the raft
//! `.snap` file. Format notes: `docs/formats/wal-and-snap.md`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::membership::Cluster;

/// etcd preallocates every WAL segment to this size (zero-filled past the records).
pub const SEGMENT_SIZE: u64 = 64_000_000;
/// The first (and, after a restore, only) segment: sequence 0, first index 0.
pub const FIRST_SEGMENT_NAME: &str = "0000000000000000-0000000000000000.wal";

const REC_METADATA: u64 = 1;
const REC_ENTRY: u64 = 2;
const REC_STATE: u64 = 3;
const REC_CRC: u64 = 4;
const REC_SNAPSHOT: u64 = 5;

/// Which etcd release's record layout to write (each release reads every layout; the
/// choice only makes the files byte-identical to that release's `etcdutl snapshot restore`).
/// 3.5 adds the ConfState to the WAL snapshot record (3.4 servers skip it, so 3.5 serves
/// 3.4 too); 3.6 writes the 3.5 WAL but its `.snap` counts one failed v2 lookup; 3.7
/// encodes with protobuf-go, which leaves out fields never set (ConfChange.ID,
/// ConfState.auto_leave) where gogo-protobuf wrote zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavor {
    V3_4,
    V3_5,
    V3_6,
    V3_7,
}

impl Flavor {
    /// The layout for data dirs that `release` will run (3.4 gets 3.5's, which it reads).
    pub fn for_release(release: crate::Release) -> Flavor {
        match release {
            crate::Release::V3_4 | crate::Release::V3_5 => Flavor::V3_5,
            crate::Release::V3_6 => Flavor::V3_6,
            crate::Release::V3_7 => Flavor::V3_7,
        }
    }

    /// gogo-protobuf (up to 3.6) writes unset proto2 scalars as explicit zeros.
    fn explicit_zeros(self) -> bool {
        self <= Flavor::V3_6
    }
}

// --- protobuf encoding (just what these messages need) ---

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn field_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, (field as u64) << 3);
    varint(out, v);
}

pub(crate) fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `raftpb.ConfState` with every member a voter: each voter as its own field 1, then
/// `auto_leave` (field 5), always written.
pub fn conf_state(cluster: &Cluster, flavor: Flavor) -> Vec<u8> {
    let mut out = Vec::new();
    for m in &cluster.members {
        field_varint(&mut out, 1, m.id);
    }
    if flavor.explicit_zeros() {
        field_varint(&mut out, 5, 0); // auto_leave
    }
    out
}

/// `walpb.Record`: type and crc always, data when present.
fn record(kind: u64, crc: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.map_or(0, <[u8]>::len));
    field_varint(&mut out, 1, kind);
    field_varint(&mut out, 2, crc as u64);
    if let Some(d) = data {
        field_bytes(&mut out, 3, d);
    }
    out
}

/// Frames a record: u64le length (top byte flags the padding), record, zero padding to 8.
fn frame(out: &mut Vec<u8>, rec: &[u8]) {
    let n = rec.len() as u64;
    let pad = (8 - n % 8) % 8;
    let len_field = if pad == 0 { n } else { n | ((0x80 | pad) << 56) };
    out.extend_from_slice(&len_field.to_le_bytes());
    out.extend_from_slice(rec);
    out.resize(out.len() + pad as usize, 0);
}

/// Writes records with the running CRC-32C chain.
struct Encoder {
    out: Vec<u8>,
    crc: u32,
}

impl Encoder {
    fn data_record(&mut self, kind: u64, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        let rec = record(kind, self.crc, Some(data));
        frame(&mut self.out, &rec);
    }
}

/// The record bytes of the restored member's WAL (without the zero preallocation):
/// crc record, metadata, empty snapshot, one AddNode ConfChange entry per member (ascending
/// id, term 1, index 1…N), hard state {term 1, vote = first member, commit N}, snapshot
/// {index N, term 1 (+ ConfState from 3.5 on)}.
pub fn encode(cluster: &Cluster, local_id: u64, flavor: Flavor) -> Vec<u8> {
    let mut enc = Encoder { out: Vec::new(), crc: 0 };
    frame(&mut enc.out, &record(REC_CRC, 0, None));

    let mut md = Vec::new();
    field_varint(&mut md, 1, local_id);
    field_varint(&mut md, 2, cluster.id);
    enc.data_record(REC_METADATA, &md);

    enc.data_record(REC_SNAPSHOT, &snapshot_record(0, 0, None));

    for (i, m) in cluster.members.iter().enumerate() {
        let mut cc = Vec::new();
        if flavor.explicit_zeros() {
            field_varint(&mut cc, 1, 0); // ConfChange ID
        }
        field_varint(&mut cc, 2, 0); // AddNode
        field_varint(&mut cc, 3, m.id);
        field_bytes(&mut cc, 4, m.json().as_bytes());
        let mut entry = Vec::new();
        field_varint(&mut entry, 1, 1); // EntryConfChange
        field_varint(&mut entry, 2, 1); // term
        field_varint(&mut entry, 3, i as u64 + 1); // index
        field_bytes(&mut entry, 4, &cc);
        enc.data_record(REC_ENTRY, &entry);
    }

    let n = cluster.members.len() as u64;
    let mut hs = Vec::new();
    field_varint(&mut hs, 1, 1); // term
    field_varint(&mut hs, 2, cluster.members[0].id); // vote
    field_varint(&mut hs, 3, n); // commit
    enc.data_record(REC_STATE, &hs);

    let cs = (flavor >= Flavor::V3_5).then(|| conf_state(cluster, flavor));
    enc.data_record(REC_SNAPSHOT, &snapshot_record(n, 1, cs.as_deref()));
    enc.out
}

fn snapshot_record(index: u64, term: u64, conf_state: Option<&[u8]>) -> Vec<u8> {
    let mut s = Vec::new();
    field_varint(&mut s, 1, index);
    field_varint(&mut s, 2, term);
    if let Some(cs) = conf_state {
        field_bytes(&mut s, 3, cs);
    }
    s
}

/// Writes the segment file: preallocated to [`SEGMENT_SIZE`] (real blocks where the file
/// system supports it, as etcd does), records at offset 0, fsynced.
pub fn write_segment(file: &File, records: &[u8]) -> io::Result<()> {
    // Mode 0 extends the file with zeroed blocks; without fallocate, a sparse extension.
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, SEGMENT_SIZE) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            file.set_len(SEGMENT_SIZE)?
        }
        Err(e) => return Err(e.into()),
    }
    file.write_all_at(records, 0)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    /// The single-member WAL etcdutl 3.5.1 writes for `--name default` and default flags.
    #[test]
    fn single_member_wal_matches_etcdutl_bytes() {
        let cluster = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        let id = cluster.members[0].id;
        let wal = encode(&cluster, id, Flavor::V3_5);
        assert_eq!(wal.len(), 288);
        assert_eq!(&wal[0..16], &hex("04 00 00 00 00 00 00 84 08 04 10 00 00 00 00 00")[..]);
        assert_eq!(
            &wal[16..56],
            &hex("20 00 00 00 00 00 00 00 08 01 10 bb 81 c7 fc 05 1a 16 \
                  08 cd d2 91 8b d2 b8 81 cf 8e 01 10 b2 98 ea f1 94 83 86 fc cd 01")[..]
        );
        assert_eq!(
            &wal[56..80],
            &hex("0e 00 00 00 00 00 00 82 08 05 10 94 bb c7 ed 0e 1a 04 08 00 10 00 00 00")[..]
        );
        let json =
            br#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default"}"#;
        let mut entry =
            hex("74 00 00 00 00 00 00 84 08 02 10 c2 ee 92 95 0b 1a 6a 08 01 10 01 18 01 22 62 \
                             08 00 10 00 18 cd d2 91 8b d2 b8 81 cf 8e 01 22 51");
        entry.extend_from_slice(json);
        entry.extend_from_slice(&[0; 4]);
        assert_eq!(&wal[80..208], &entry[..]);
        assert_eq!(
            &wal[208..248],
            &hex("19 00 00 00 00 00 00 87 08 03 10 9b 98 d6 c3 08 1a 0f 08 01 10 cd d2 91 8b d2 b8 81 cf 8e 01 18 01 \
                  00 00 00 00 00 00 00")[..]
        );
        assert_eq!(
            &wal[248..288],
            &hex("1d 00 00 00 00 00 00 83 08 05 10 8d 9e ae ef 0d 1a 13 08 01 10 01 1a 0d \
                  08 cd d2 91 8b d2 b8 81 cf 8e 01 28 00 00 00 00")[..]
        );
    }

    #[test]
    fn etcd34_last_record_has_no_conf_state() {
        let cluster = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        let wal = encode(&cluster, cluster.members[0].id, Flavor::V3_4);
        assert_eq!(
            &wal[248..],
            &hex("0e 00 00 00 00 00 00 82 08 05 10 b8 e0 e0 e1 06 1a 04 08 01 10 01 00 00")[..]
        );
    }

    #[test]
    fn flavors_differ_only_where_their_etcdutl_does() {
        let cluster = Cluster::new("default=http://localhost:2380", "etcd-cluster").unwrap();
        let id = cluster.members[0].id;
        assert_eq!(encode(&cluster, id, Flavor::V3_6), encode(&cluster, id, Flavor::V3_5));
        // protobuf-go (3.7) leaves out ConfChange.ID (2 bytes) and ConfState.auto_leave (2 bytes).
        let v37 = encode(&cluster, id, Flavor::V3_7);
        assert_eq!(
            conf_state(&cluster, Flavor::V3_5).len(),
            conf_state(&cluster, Flavor::V3_7).len() + 2
        );
        assert!(v37.windows(4).any(|w| w == [0x22, 0x60, 0x10, 0x00]), "ConfChange starts at Type");
        assert_eq!(Flavor::for_release(crate::Release::V3_4), Flavor::V3_5);
        assert_eq!(Flavor::for_release(crate::Release::V3_7), Flavor::V3_7);
    }

    #[test]
    fn frames_are_aligned_and_chained() {
        let cluster =
            Cluster::new("a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3", "t")
                .unwrap();
        let wal = encode(&cluster, cluster.members[1].id, Flavor::V3_5);
        // walk the frames, recompute the chain
        let mut at = 0;
        let mut crc = 0u32;
        let mut kinds = Vec::new();
        while at < wal.len() {
            let lf = u64::from_le_bytes(wal[at..at + 8].try_into().unwrap());
            let n = (lf & 0x00ff_ffff_ffff_ffff) as usize;
            let pad = if lf >> 63 == 1 { ((lf >> 56) & 0x7) as usize } else { 0 };
            assert_eq!((n + pad) % 8, 0);
            let rec = &wal[at + 8..at + 8 + n];
            kinds.push(rec[1]);
            let (stored, mut i) = read_varint(rec, 3);
            if rec[1] != 4 {
                assert_eq!(rec[i], 0x1a);
                let (len, j) = read_varint(rec, i + 1);
                i = j;
                crc = crc32c::crc32c_append(crc, &rec[i..i + len as usize]);
                assert_eq!(stored as u32, crc, "record at {at}");
            }
            at += 8 + n + pad;
        }
        assert_eq!(kinds, vec![4, 1, 5, 2, 2, 2, 3, 5]);
        assert!(crc != 0);
    }

    fn read_varint(b: &[u8], mut i: usize) -> (u64, usize) {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            v |= ((b[i] & 0x7f) as u64) << shift;
            shift += 7;
            i += 1;
            if b[i - 1] < 0x80 {
                return (v, i);
            }
        }
    }
}
