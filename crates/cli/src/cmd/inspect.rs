//! `etcdguard inspect`: the Kubernetes objects in a snapshot, offline. The newest value of
//! every key comes from `etcdguard_storage::keys`; what each value is from `etcdguard_kube`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_kube::{decode, key_path, Encoding, KeyPath, Object};
use serde_json::json;

use crate::cmd::backup::TableJson;
use crate::cmd::snapshot::{db_failure, open_snapshot};
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum InspectCommand {
    /// List the objects a snapshot holds (newest value of each key; deleted keys are gone).
    ///
    /// Reads apiVersion, kind and metadata from protobuf, JSON and (as far as the marker
    /// goes) encrypted-at-rest values. No server needed; works on `snapshot save` files,
    /// restored files and copied member/snap/db files.
    ///
    /// Examples:
    ///   etcdguard inspect list snapshot.db --resource secrets -n kube-system
    ///   etcdguard inspect list snapshot.db -l app=web -o json
    #[command(verbatim_doc_comment)]
    List(ListArgs),
    /// Print one key's stored value: JSON objects as JSON; for protobuf objects their
    /// apiVersion, kind and metadata (-o raw writes the stored bytes, e.g. for other tools).
    ///
    /// Example: etcdguard inspect get snapshot.db /registry/configmaps/default/app-config
    #[command(verbatim_doc_comment)]
    Get(GetArgs),
    /// What changed between two snapshots, or two backups of a repository: objects added
    /// (+), deleted (-) and modified (~).
    ///
    /// Examples:
    ///   etcdguard inspect diff yesterday.db today.db --resource deployments
    ///   etcdguard inspect diff 3f9a1c2b latest --repo s3://etcd-backups/prod
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),
}

#[derive(Args, Clone)]
pub struct Filter {
    /// Only keys under this prefix.
    #[arg(long, default_value = "/registry/", value_name = "PREFIX")]
    pub prefix: String,
    /// Only this resource (`secrets`, `deployments`, `example.com/widgets` or just `widgets`).
    #[arg(long, short = 'r', value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only objects with this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only objects with these labels (key=value[,key=value…]; encrypted objects never match).
    #[arg(long = "selector", short = 'l', value_name = "KEY=VALUE,…")]
    pub selector: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    pub snapshot: PathBuf,
    #[command(flatten)]
    pub filter: Filter,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TableJson::Table)]
    pub output: TableJson,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum GetFormat {
    Json,
    Raw,
}

#[derive(Args)]
pub struct GetArgs {
    pub snapshot: PathBuf,
    /// The etcd key, e.g. /registry/secrets/default/db-password.
    pub key: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = GetFormat::Json)]
    pub output: GetFormat,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older snapshot (a backup id with --repo).
    pub old: PathBuf,
    /// The newer snapshot (a backup id, or `latest`, with --repo).
    pub new: PathBuf,
    /// OLD and NEW are backups of this repository; their snapshots are fetched (sha256
    /// checked) into a private scratch dir and removed after.
    #[arg(long, value_name = "URL", value_parser = crate::args::repo)]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository (or ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file, requires = "repo")]
    pub passphrase_file: Option<PathBuf>,
    /// Where --repo snapshots are fetched to [default: the system temp dir].
    #[arg(long, value_name = "DIR", requires = "repo")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub filter: Filter,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TableJson::Table)]
    pub output: TableJson,
}

pub fn run(cmd: InspectCommand) -> Result<()> {
    match cmd {
        InspectCommand::List(a) => list(a),
        InspectCommand::Get(a) => get(a),
        InspectCommand::Diff(a) => diff(a),
    }
}

/// The newest value of one key.
struct Entry {
    mod_revision: i64,
    create_revision: i64,
    version: i64,
    value_len: usize,
    value_crc: u32,
    object: Object,
    path: Option<KeyPath>,
}

impl Entry {
    fn json(&self, key: &[u8]) -> serde_json::Value {
        let p = self.path.as_ref();
        json!({
            "key": String::from_utf8_lossy(key),
            "resource": p.map(|p| p.resource.clone()),
            "namespace": p.map(|p| p.namespace.clone()).filter(|n| !n.is_empty()),
            "name": p.map(|p| p.name.clone()),
            "modRevision": self.mod_revision,
            "createRevision": self.create_revision,
            "version": self.version,
            "size": self.value_len,
            "object": self.object,
        })
    }
}

/// Live keys with their newest value decoded, and the raw values `load` was asked to keep.
type Loaded = (BTreeMap<Vec<u8>, Entry>, BTreeMap<Vec<u8>, Vec<u8>>);

/// Every live key under `prefix` with its newest value decoded (and, with `keep`, the value
/// of the keys it accepts).
fn load(path: &Path, prefix: &[u8], keep: &dyn Fn(&[u8]) -> bool) -> Result<Loaded, Failure> {
    let file = open_snapshot(path)?;
    let db = file.db().map_err(|e| db_failure(path, e))?;
    let release = || file.release_resident();
    let mut entries = BTreeMap::new();
    let mut values = BTreeMap::new();
    etcdguard_storage::keys::for_each_revision(&db, Some(&release), &mut |r| {
        if !r.kv.key.starts_with(prefix) {
            return;
        }
        if r.tombstone {
            entries.remove(r.kv.key);
            values.remove(r.kv.key);
            return;
        }
        let object = decode(r.kv.value);
        let path = key_path(r.kv.key, object.metadata.as_ref());
        entries.insert(
            r.kv.key.to_vec(),
            Entry {
                mod_revision: r.kv.mod_revision,
                create_revision: r.kv.create_revision,
                version: r.kv.version,
                value_len: r.kv.value.len(),
                value_crc: crc32c::crc32c(r.kv.value),
                object,
                path,
            },
        );
        if keep(r.kv.key) {
            values.insert(r.kv.key.to_vec(), r.kv.value.to_vec());
        }
    })
    .map_err(|e| Failure::new(Code::Corrupt, format!("{}: {e}", path.display())))?;
    Ok((entries, values))
}

fn matches(f: &Filter, e: &Entry) -> Result<bool, Failure> {
    let p = e.path.as_ref();
    if let Some(r) = &f.resource {
        let ok = p.is_some_and(|p| &p.resource == r || p.resource.rsplit('/').next() == Some(r.as_str()));
        if !ok {
            return Ok(false);
        }
    }
    if let Some(ns) = &f.namespace {
        if p.is_none_or(|p| &p.namespace != ns) {
            return Ok(false);
        }
    }
    if let Some(name) = &f.name {
        if p.is_none_or(|p| &p.name != name) {
            return Ok(false);
        }
    }
    if let Some(sel) = &f.selector {
        let labels = e.object.metadata.as_ref().map(|m| &m.labels);
        for term in sel.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| Failure::new(Code::Usage, format!("--selector {term:?}: use key=value")))?;
            if labels.and_then(|l| l.get(k.trim())) != Some(&v.trim().to_string()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn encoding_text(e: &Encoding) -> String {
    match e {
        Encoding::Protobuf => "protobuf".into(),
        Encoding::Json => "json".into(),
        Encoding::Encrypted(p) => format!("encrypted ({p})"),
        Encoding::Other => "other".into(),
    }
}

fn row(key: &[u8], e: &Entry) -> Vec<String> {
    let p = e.path.as_ref();
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    vec![
        dash(p.map(|p| p.resource.clone()).unwrap_or_else(|| String::from_utf8_lossy(key).into_owned())),
        dash(p.map(|p| p.namespace.clone()).unwrap_or_default()),
        dash(p.map(|p| p.name.clone()).unwrap_or_default()),
        dash(e.object.kind.clone()),
        encoding_text(&e.object.encoding),
        e.mod_revision.to_string(),
        dash(e.object.metadata.as_ref().and_then(|m| m.creation_timestamp.clone()).unwrap_or_default()),
    ]
}

const HEADER: [&str; 7] = ["RESOURCE", "NAMESPACE", "NAME", "KIND", "ENCODING", "REVISION", "CREATED"];

fn list(args: ListArgs) -> Result<()> {
    let (entries, _) = load(&args.snapshot, args.filter.prefix.as_bytes(), &|_| false)?;
    let mut selected = Vec::new();
    for (k, e) in &entries {
        if matches(&args.filter, e)? {
            selected.push((k, e));
        }
    }
    match args.output {
        TableJson::Json => println!("{}", serde_json::to_string_pretty(&selected.iter().map(|(k, e)| e.json(k)).collect::<Vec<_>>())?),
        TableJson::Table => {
            let mut rows = vec![HEADER.map(String::from).to_vec()];
            rows.extend(selected.iter().map(|(k, e)| row(k, e)));
            print!("{}", crate::cmd::table(&rows));
        }
    }
    eprintln!("{} object(s) of {} under {}", selected.len(), entries.len(), args.filter.prefix);
    Ok(())
}

fn get(args: GetArgs) -> Result<()> {
    let key = args.key.as_bytes().to_vec();
    let (entries, values) = load(&args.snapshot, &key, &|k| k == key.as_slice())?;
    let (Some(entry), Some(value)) = (entries.get(&key), values.get(&key)) else {
        return Err(Failure::new(Code::NotFound, format!("{}: no key {} (deleted, or never there); `inspect list` shows what is", args.snapshot.display(), args.key)).into());
    };
    match args.output {
        GetFormat::Raw => crate::output::stdout_write(value),
        GetFormat::Json => match entry.object.encoding {
            Encoding::Json => {
                let v: serde_json::Value = serde_json::from_slice(value)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            _ => {
                println!("{}", serde_json::to_string_pretty(&entry.json(&key))?);
                if entry.object.encoding == Encoding::Protobuf {
                    eprintln!("note: a protobuf object; its apiVersion, kind and metadata are shown, not its body (-o raw gives the stored bytes)");
                }
            }
        },
    }
    Ok(())
}

fn diff(args: DiffArgs) -> Result<()> {
    let prefix = args.filter.prefix.as_bytes();
    let mut _scratch = None;
    let (old_path, new_path) = match &args.repo {
        None => (args.old.clone(), args.new.clone()),
        Some(url) => {
            use crate::cmd::backup::{fetch_snapshot, tempfile_in, RepoArg};
            let repo = RepoArg { repo: url.clone(), passphrase_file: args.passphrase_file.clone() };
            let scratch = tempfile_in(&args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir))?;
            let old = fetch_snapshot(&repo, &args.old.to_string_lossy(), scratch.path())?;
            let new = fetch_snapshot(&repo, &args.new.to_string_lossy(), scratch.path())?;
            _scratch = Some(scratch);
            (old, new)
        }
    };
    let (old, _) = load(&old_path, prefix, &|_| false)?;
    let (new, _) = load(&new_path, prefix, &|_| false)?;
    let mut changes: Vec<(char, &Vec<u8>, &Entry, Option<&Entry>)> = Vec::new();
    for (k, n) in &new {
        match old.get(k) {
            None => changes.push(('+', k, n, None)),
            Some(o) if o.mod_revision != n.mod_revision || o.value_crc != n.value_crc || o.value_len != n.value_len => changes.push(('~', k, n, Some(o))),
            Some(_) => {}
        }
    }
    for (k, o) in &old {
        if !new.contains_key(k) {
            changes.push(('-', k, o, None));
        }
    }
    let mut selected = Vec::new();
    for c in changes {
        // An object matches when either side does (a relabelled object still shows).
        if matches(&args.filter, c.2)? || c.3.map(|o| matches(&args.filter, o)).transpose()?.unwrap_or(false) {
            selected.push(c);
        }
    }
    selected.sort_by(|a, b| a.1.cmp(b.1));
    let count = |c: char| selected.iter().filter(|s| s.0 == c).count();
    match args.output {
        TableJson::Json => {
            let rows: Vec<_> = selected
                .iter()
                .map(|(c, k, e, o)| {
                    let change = match c {
                        '+' => "added",
                        '-' => "deleted",
                        _ => "modified",
                    };
                    let mut v = e.json(k);
                    v["change"] = json!(change);
                    if let Some(o) = o {
                        v["oldModRevision"] = json!(o.mod_revision);
                    }
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        TableJson::Table => {
            let mut rows = vec![std::iter::once("").chain(HEADER).map(String::from).collect::<Vec<_>>()];
            for (c, k, e, _) in &selected {
                let mut r = vec![c.to_string()];
                r.extend(row(k, e));
                rows.push(r);
            }
            print!("{}", crate::cmd::table(&rows));
        }
    }
    eprintln!("{} added, {} deleted, {} modified", count('+'), count('-'), count('~'));
    Ok(())
}
