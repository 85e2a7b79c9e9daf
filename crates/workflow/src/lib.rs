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
//! - [`rancher`]: `node restore --layout k3s|rke2` (the server's embedded etcd: k3s's
//!   `--cluster-reset` restore with the node IP, member and token checks);
//! - [`join`]: `node join` (a node's etcd joins the restored cluster as a learner, promoted);
//! - [`agent`]: the loop, its state, `/healthz` and `/metrics`; [`schedule`]: when it runs;
//!   [`checks`]: what it checks besides backing up: [`scrub`] (re-read stored backups),
//!   [`drill`] (restore the newest, optionally boot etcd on it), [`certs`] (expiry);
//! - [`copy`]: `backup copy`, backups into a second repository (another store, another key);
//! - [`import`]: backups made by other tools (OpenShift, etcdctl, k3s/RKE2, etcd-druid)
//!   brought into a repository, and `backup restore --format openshift`;
//! - [`capture`]: continuous capture (`backup follow`), point-in-time plans and replay, the change log;
//! - [`snapshot`], [`repo`], [`spool`], [`stop`]: what they share.
//!
//! ## How it works
//!
//! Every multi-step operation lives here, as a function that takes a plain option struct and
//! returns a typed result: `backup::create` (live or from a file), `verify`, `restore`,
//! `delete`, `prune`, `export_url`/`object_urls`, the key glue (`key_list`, `key_add`,
//! `key_remove`); `restore::snapshot_restore`; `node::restore_node` (fetch
//! and check a backup, then `crates/node`'s plan with `snapshot restore`'s code as its restore
//! step; with `new_cluster` it first reads the snapshot's `members` bucket, `storage::members`,
//! probes every other old member and refuses with `Kind::Refused` while one answers);
//! `join::join_node` (`node join`: park and move the old data dir aside, `Session::member_add`
//! as a learner or reuse the member with our peer URL, rewrite the manifest from a fresh member
//! list, unpark, promote once the learner's applied index is within `PROMOTE_MAX_LAG` of the
//! leader's, wait for every member's health and the API server; each step first looks whether
//! it is done — a member that has published its name has a data dir of the new cluster, which
//! is never moved aside — so a re-run after a crash goes on;
//! `ETCDGUARD_FAILPOINT=join-after-add` exits right after the add, for the crash test only);
//! and `agent::run`; `inspect` (`extract`/`history` from a snapshot file or a fetched backup,
//! whose stored EncryptionConfiguration decrypts when no `--encryption-config` is given);
//! `keycheck`, the pre-restore encryption check: the key names the snapshot's live encrypted
//! values use (`kube::encryption::key_names_used`) must be in the configuration that will be in
//! place (`--encryption-config`, else the backup's stored `encryption-config/` file for `backup
//! restore`, else the API server manifest's `--encryption-provider-config` mapped to the host
//! by `node::pods::read_apiserver_encryption_config` for `node restore`), and one sample value
//! per key name must decrypt; otherwise `Kind::Refused` (exit 17), unless `force`. `node
//! restore` runs it with a walk of its own before it stops anything (`keycheck::check`). A
//! restore into a new data dir (`snapshot restore`, `backup restore`, the agent's drill) runs
//! it as a `storage::restore::Gate` (`keycheck::KeyGate`): it is fed every revision during the
//! restore's self-check walk of the unpublished data dir — no pass of its own — and its refusal
//! comes before the rename that puts the data dir in place, so nothing is left behind.
//! `backup::create` finds that same file through `--manifests-dir` and warns when a repository
//! that is not encrypted receives it. Failures are one `Error` (kind, message, hint);
//! `error.rs` sorts the errors of every crate below into kinds once, and the CLI maps each kind
//! to an exit code. Nothing here prints: lines for the operator go through the callback each
//! workflow takes (a `&mut dyn FnMut(&str)` note, or a typed event such as `RestoreEvent`,
//! `NodeEvent`, `KeyEvent` when the CLI formats the result itself). `RepoSpec` is a repository
//! as the user named it; its passphrase is a callback, so the CLI's flag/environment reading
//! stays in the CLI and runs only when an encrypted repository must be unlocked. `spool` makes
//! the private scratch dirs (0700, files 0600) that hold plaintext snapshots in transit; each
//! holds an `flock` on its `.lock` while its run lives, and a new spool first removes the ones
//! whose lock is free (their run died). `stop` is a requested stop that long steps check at
//! safe points.

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
pub mod point_in_time;
pub mod rancher;
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
