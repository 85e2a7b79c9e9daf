//! etcd's storage schema on top of the bbolt reader: what the buckets mean, how
//! `snapshot status` numbers are computed, deep verification, and (in `restore`) writing
//! data directories etcd boots from.
//!
//! ## How it works
//!
//! What etcd keeps in the bbolt file and what the official tools compute from it.
//! `snapshot_file` tells a snapshot (image + 32-byte sha256 trailer) from a plain
//! `member/snap/db` and checks the trailer with positioned reads. `status` computes `etcdutl
//! snapshot status` (hash, revision, total keys, total size; 3.6+: storage version and live
//! keys instead of entries) and renders its four output formats byte for byte for the release
//! line asked (`release`: which line wrote a file, from `meta/storageVersion` or
//! `cluster/clusterVersion`, read without a walk; differences in
//! `docs/formats/etcd-versions.md`). `verify` adds etcd's schema checks on top of the
//! structural walk: revision keys, `mvccpb.KeyValue` values and their revisions, `meta`,
//! `members`, `lease`. `proto` is a strict hand-written decoder for the few protobuf messages
//! stored in buckets. Restore (db rewrite, WAL, raft snap) lives in `restore/`.

pub mod keys;
pub mod members;
pub mod proto;
pub mod release;
pub mod replay;
pub mod restore;
pub mod snapshot_file;
pub mod status;
pub mod verify;

pub use release::{Evidence, Provenance, Release};
pub use snapshot_file::{Layout, SnapshotFile, TrailerCheck};
pub use status::{status, status_as, Format, Status, StatusError};
pub use verify::{verify, VerifyReport};
