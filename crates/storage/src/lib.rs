//! etcd's storage schema on top of the bbolt reader: what the buckets mean, how
//! `snapshot status` numbers are computed, deep verification, and (in `restore`) writing
//! data directories etcd boots from.

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
