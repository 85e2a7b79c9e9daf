//! The operations of etcdguard below the command line.
//!
//! Every workflow takes plain option structs, returns typed results, and reports failures
//! as one [`Error`] whose [`Kind`] the command line maps to an exit code. Nothing here
//! prints: lines meant for the operator go through the callback each workflow takes.
//!
//! - [`backup`]: create (live or from a file), verify, restore, delete, prune, export URLs,
//!   passphrase keys, fetch a backup's snapshot;
//! - [`restore`]: `snapshot restore` (new data dirs from a snapshot file);
//! - [`node`]: `node restore` (fetch and check, then the control-plane runbook; `--new-cluster`);
//! - [`join`]: `node join` (a node's etcd joins the restored cluster as a learner, promoted);
//! - [`agent`]: the loop, its state, `/healthz` and `/metrics`; [`schedule`]: when it runs;
//!   [`checks`]: what it checks besides backing up: [`scrub`] (re-read stored backups),
//!   [`drill`] (restore the newest, optionally boot etcd on it), [`certs`] (expiry);
//! - [`copy`]: `backup copy`, backups into a second repository (another store, another key);
//! - [`import`]: backups made by other tools (OpenShift, etcdctl, k3s/RKE2, etcd-druid)
//!   brought into a repository, and `backup restore --format openshift`;
//! - [`capture`]: continuous capture (`backup follow`), point-in-time plans and replay, the change log;
//! - [`snapshot`], [`repo`], [`spool`], [`stop`]: what they share.

pub mod agent;
pub mod backup;
pub mod capture;
pub mod certs;
pub mod checks;
pub mod copy;
pub mod drill;
pub mod error;
pub mod import;
pub mod inspect;
pub mod join;
pub mod keycheck;
pub mod node;
pub mod openshift;
pub mod recover;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod schedule;
pub mod scrub;
pub mod snapshot;
pub mod spool;
pub mod stop;
pub mod text;

pub use error::{Error, Kind, Result};
pub use repo::{PassphraseSource, RepoSpec};
pub use stop::Stop;
