//! `etcdguard inspect`: the Kubernetes objects in a snapshot, offline. The newest value of
//! every key comes from `etcdguard_storage::keys`; what each value is from `etcdguard_kube`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use etcdguard_kube::encryption::{ConfigError, EncryptionConfig};
use etcdguard_kube::listing::{self, ChangeKind, Entry};
use etcdguard_kube::selector::{Filter, Selector};
use etcdguard_kube::{Encoding, Object};
use serde_json::json;

use crate::args::TableJson;
use crate::cmd::snapshot::{db_failure, open_snapshot};
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum InspectCommand {
    /// List the objects a snapshot holds (newest value of each key; deleted keys are gone).
    ///
    /// Reads apiVersion, kind and metadata from protobuf and JSON values. Encrypted-at-rest
    /// values show their provider and key name, or, with --encryption-config, are decrypted
    /// (values that do not decrypt are named on stderr; the exit code is then 1). No server
    /// needed; works on `snapshot save` files, restored files and copied member/snap/db files.
    ///
    /// Examples:
    ///   etcdguard inspect list snapshot.db --resource secrets -n kube-system
    ///   etcdguard inspect list snapshot.db -l app=web -o json
    ///   etcdguard inspect list snapshot.db -r secrets --encryption-config /etc/kubernetes/enc/enc.yaml
    #[command(verbatim_doc_comment)]
    List(ListArgs),
    /// Print one object as `kubectl get -o json|yaml` would: every built-in type and version
    /// decoded from protobuf, custom resources as stored, metadata.resourceVersion = the key's
    /// mod revision, managedFields hidden unless --show-managed-fields. Encrypted values are
    /// decrypted with --encryption-config. Shown as stored: no defaults are applied and the
    /// version is the one etcd holds. Fields newer than the built-in schema (Kubernetes
    /// 1.30-1.35) are kept under "x-etcdguard-unknown-fields" and named on stderr;
    /// --schema-dir loads a newer release's schema so that they render.
    /// -o raw writes the stored bytes (decrypted with --encryption-config), e.g. for values
    /// that do not render (CBOR).
    ///
    /// Examples:
    ///   etcdguard inspect get snapshot.db /registry/configmaps/default/app-config -o yaml
    ///   etcdguard inspect get snapshot.db /registry/secrets/default/db --encryption-config enc.yaml
    ///   etcdguard inspect get snapshot.db /registry/deployments/default/web -o wide
    ///   etcdguard inspect get snapshot.db /registry/pods/default/web-0 --schema-dir ~/go/pkg/mod/k8s.io/api@v0.37.2
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
    /// What takes the space: objects and bytes per resource and per namespace (newest values,
    /// and all revisions still in the file), the largest objects, the keys with the most
    /// revisions. Keys are read from the file in one pass; values are not decoded.
    ///
    /// Examples:
    ///   etcdguard inspect stats snapshot.db
    ///   etcdguard inspect stats snapshot.db --top 25 -o json
    #[command(verbatim_doc_comment)]
    Stats(StatsArgs),
    /// Write objects as YAML ready for `kubectl apply`: the newest value of each selected key,
    /// decrypted, without what the API server sets (resourceVersion, uid, creationTimestamp,
    /// generation, managedFields, selfLink, status), CustomResourceDefinitions first, then
    /// Namespaces, then the rest. `-n NS` includes the Namespace object NS itself.
    /// CustomResourceDefinitions (stored as v1beta1) are written as apiextensions.k8s.io/v1,
    /// and objects stored in a version that a newer one of the schema took over unchanged (a
    /// promotion: stored as beta for a release, served only as v1) in that newer version;
    /// a Job's generated selector and controller-uid template labels are left out (the API
    /// server makes them anew for the re-created Job).
    ///
    /// Left out: objects a controller owns (their controller makes them again; --include-owned
    /// keeps them), and events, leases and the API server's own ranges/masterleases/peerserverleases unless
    /// --resource names them. Secrets that cannot be decrypted are skipped with a warning.
    /// With --repo, the backup's snapshot is fetched and the EncryptionConfiguration stored in
    /// the backup (backup create --encryption-config or --manifests-dir) decrypts it.
    ///
    /// Examples:
    ///   etcdguard inspect extract --repo s3://etcd-backups/prod latest -n payments > payments.yaml
    ///   etcdguard inspect extract snapshot.db --all-namespaces --output-dir restored/
    ///   etcdguard inspect extract snapshot.db -r configmaps -n default --name app-config
    #[command(verbatim_doc_comment)]
    Extract(ExtractArgs),
    /// Every revision of one key still in the snapshot (etcd keeps them until a compaction),
    /// with its time (the newest managedFields time, or creationTimestamp for a creation) and
    /// the fields changed from the version before, including the deletion.
    ///
    /// Example: etcdguard inspect history snapshot.db /registry/configmaps/default/app-config
    #[command(verbatim_doc_comment)]
    History(HistoryArgs),
}

/// The flags of `etcdguard_kube::selector::Filter`, and the key prefix.
#[derive(Args, Clone)]
pub struct FilterArgs {
    /// Only keys under this prefix.
    #[arg(long, default_value = "/registry/", value_name = "PREFIX")]
    pub prefix: String,
    /// Only this resource (`secrets`, `deployments`, `example.com/widgets`, `widgets.example.com`
    /// or just `widgets`).
    #[arg(long, short = 'r', value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only objects with this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only objects with these labels, as kubectl -l: key=value, key!=value, key, !key,
    /// key in (a,b), key notin (a,b); a comma means AND (encrypted objects match only when
    /// decrypted with --encryption-config).
    #[arg(long = "selector", short = 'l', value_name = "KEY=VALUE,…")]
    pub selector: Option<String>,
}

#[derive(Args, Clone)]
pub struct Decryption {
    /// The API server's EncryptionConfiguration (its --encryption-provider-config file):
    /// aescbc, aesgcm and secretbox values are decrypted and decoded as usual; values it
    /// cannot decrypt (KMS, unknown key, wrong key, damage) are listed with the reason.
    /// Without it, encrypted values show their provider and key name only.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
}

impl Decryption {
    fn load(&self) -> Result<Option<EncryptionConfig>, Failure> {
        let Some(path) = &self.encryption_config else { return Ok(None) };
        EncryptionConfig::load(path).map(Some).map_err(|e| {
            let code = match &e {
                ConfigError::Read { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Code::NotFound
                }
                ConfigError::Read { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Code::PermissionDenied
                }
                _ => Code::Usage,
            };
            Failure::new(code, format!("--encryption-config {}: {e}", path.display()))
        })
    }
}

#[derive(Args, Clone)]
pub struct SchemaDir {
    /// Render with the types and fields of a newer Kubernetes release: the folder of its
    /// k8s.io/api Go module, whose generated.proto files are loaded over the built-in schema
    /// (Kubernetes 1.30-1.35); k8s.io/apimachinery is found beside it in the module cache, or
    /// give its folder too (repeat the flag). Get it with
    /// `go mod download -json k8s.io/api@v0.37.2 k8s.io/apimachinery@v0.37.2` (prints each Dir).
    #[arg(long, env = "ETCDGUARD_SCHEMA_DIR", value_name = "DIR")]
    pub schema_dir: Vec<PathBuf>,
}

impl SchemaDir {
    /// Loads and activates the schema, before anything is rendered.
    fn activate(&self) -> Result<(), Failure> {
        if self.schema_dir.is_empty() {
            return Ok(());
        }
        use etcdguard_kube::schema::{activate, Schema};
        let shown =
            self.schema_dir.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        let loaded = Schema::load_dirs(&self.schema_dir).map_err(|e| {
            let code = if e.is_not_found() { Code::NotFound } else { Code::Usage };
            Failure::new(code, format!("--schema-dir {shown}: {e}"))
        })?;
        eprintln!(
            "schema: {} messages from {} over the built-in schema",
            loaded.messages,
            loaded.sources.join(", ")
        );
        activate(loaded.schema)
            .map_err(|_| Failure::new(Code::Failure, "the schema was already in use"))
    }
}

#[derive(Args)]
pub struct ListArgs {
    pub snapshot: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub decryption: Decryption,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TableJson::Table)]
    pub output: TableJson,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum GetFormat {
    Json,
    Yaml,
    /// YAML with the etcd facts (key, revisions, encoding, size) as leading comments.
    Wide,
    Raw,
}

#[derive(Args)]
pub struct GetArgs {
    pub snapshot: PathBuf,
    /// The etcd key, e.g. /registry/secrets/default/db-password.
    pub key: String,
    #[command(flatten)]
    pub decryption: Decryption,
    #[command(flatten)]
    pub schema: SchemaDir,
    /// json, yaml, wide (yaml with etcd facts as comments), or raw: the stored bytes
    /// (decrypted when --encryption-config is given).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = GetFormat::Json)]
    pub output: GetFormat,
    /// Also show the etcd facts: key, create/mod revision, version, encoding, size (on
    /// stderr with -o json, as comments with -o yaml; the object itself stays as is).
    #[arg(long)]
    pub with_etcd_info: bool,
    /// Keep metadata.managedFields (hidden by default, as kubectl does).
    #[arg(long)]
    pub show_managed_fields: bool,
}

/// Where `inspect` reads backups instead of snapshot files.
#[derive(Args)]
pub struct FromBackups {
    /// Read backups of this repository instead of snapshot files: their snapshots are
    /// fetched (sha256 checked) into a private scratch dir and removed after.
    #[arg(long, value_name = "URL", value_parser = crate::args::repo)]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository (or ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file, requires = "repo")]
    pub passphrase_file: Option<PathBuf>,
    /// Where --repo snapshots are fetched to [default: the system temp dir].
    #[arg(long, value_name = "DIR", requires = "repo")]
    pub scratch_dir: Option<PathBuf>,
}

impl FromBackups {
    /// The repository, when one was given.
    fn spec(&self) -> Option<etcdguard_workflow::repo::RepoSpec> {
        self.repo.as_ref().map(|url| {
            crate::args::RepoArg {
                repo: url.clone(),
                passphrase_file: self.passphrase_file.clone(),
                kms_key: None,
            }
            .spec()
        })
    }
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older snapshot (a backup id with --repo).
    pub old: PathBuf,
    /// The newer snapshot (a backup id, or `latest`, with --repo).
    pub new: PathBuf,
    #[command(flatten)]
    pub backups: FromBackups,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub decryption: Decryption,
    #[command(flatten)]
    pub schema: SchemaDir,
    /// table or json: the objects added, deleted and modified; yaml: also the fields changed
    /// in each, unified style (`@@ /spec/replicas @@`, `- 2`, `+ 3`); json-patch: per object,
    /// RFC 6902 operations that turn the old object into the new one.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DiffFormat::Table)]
    pub output: DiffFormat,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum DiffFormat {
    Table,
    Json,
    Yaml,
    JsonPatch,
}

#[derive(Args)]
pub struct ExtractArgs {
    /// The snapshot file; with --repo, the backup (id, unique prefix or `latest`) [default: latest].
    #[arg(value_name = "SNAPSHOT|BACKUP")]
    pub source: Option<String>,
    #[command(flatten)]
    pub backups: FromBackups,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Objects of every namespace (and cluster-scoped ones).
    #[arg(long, short = 'A', conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Keep objects a controller owns (pods of a ReplicaSet, …).
    #[arg(long)]
    pub include_owned: bool,
    #[command(flatten)]
    pub decryption: Decryption,
    #[command(flatten)]
    pub schema: SchemaDir,
    /// One file per object under DIR (must not exist, or be empty), in apply order:
    /// `kubectl apply -R -f DIR`. Files are 0600 (Secrets are among them). Default: stdout.
    #[arg(long, value_name = "DIR", value_parser = crate::args::path)]
    pub output_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct HistoryArgs {
    pub snapshot: PathBuf,
    /// The etcd key, e.g. /registry/configmaps/default/app-config.
    pub key: String,
    #[command(flatten)]
    pub decryption: Decryption,
    #[command(flatten)]
    pub schema: SchemaDir,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = HistoryFormat::Text)]
    pub output: HistoryFormat,
}

#[derive(Args)]
pub struct StatsArgs {
    pub snapshot: PathBuf,
    /// How many of the largest objects and most-revised keys to show.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TableJson::Table)]
    pub output: TableJson,
}

pub fn run(cmd: InspectCommand) -> Result<()> {
    match cmd {
        InspectCommand::List(a) => list(a),
        InspectCommand::Get(a) => get(a),
        InspectCommand::Diff(a) => diff(a),
        InspectCommand::Stats(a) => stats(a),
        InspectCommand::Extract(a) => extract(a),
        InspectCommand::History(a) => history(a),
    }
}

impl FilterArgs {
    /// The library's filter, with `--selector` parsed (once, before any work).
    fn parsed(&self) -> Result<Filter, Failure> {
        Ok(Filter {
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            selector: self.selector.as_deref().map(parse_selector).transpose()?,
        })
    }
}

fn parse_selector(text: &str) -> Result<Selector, Failure> {
    Selector::parse(text).map_err(|e| {
        Failure::new(
            Code::Usage,
            format!(
                "--selector {text:?}: {e} (use key=value, key!=value, key, !key, key in (a,b))"
            ),
        )
    })
}

fn encoding_text(o: &Object) -> String {
    let base = match &o.encoding {
        Encoding::Protobuf => "protobuf".into(),
        Encoding::Json => "json".into(),
        Encoding::Encrypted(_) => "encrypted".to_string(),
        Encoding::Other => "other".into(),
    };
    match (&o.encoding, o.encryption.as_ref().and_then(|s| s.marker.as_ref())) {
        (_, Some(m)) => format!("{base} ({}:{})", m.provider, m.key_name),
        (Encoding::Encrypted(p), None) => format!("{base} ({p}?)"),
        _ => base,
    }
}

/// Lists the values that did not decrypt (key, why) and fails when a config was given; the
/// objects that did are shown all the same.
fn report_undecrypted(decrypting: bool, failed: &[(Vec<u8>, String)]) -> Result<(), Failure> {
    if !decrypting || failed.is_empty() {
        return Ok(());
    }
    for (k, err) in failed {
        eprintln!("not decrypted: {}: {err}", String::from_utf8_lossy(k));
    }
    Err(Failure::new(
        Code::Failure,
        format!(
            "{} object(s) could not be decrypted (listed above; the others are shown)",
            failed.len()
        ),
    ))
}

fn row(key: &[u8], e: &Entry) -> Vec<String> {
    let p = e.path.as_ref();
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    vec![
        dash(
            p.map(|p| p.resource.clone())
                .unwrap_or_else(|| String::from_utf8_lossy(key).into_owned()),
        ),
        dash(p.map(|p| p.namespace.clone()).unwrap_or_default()),
        dash(p.map(|p| p.name.clone()).unwrap_or_default()),
        dash(e.object.kind.clone()),
        encoding_text(&e.object),
        e.mod_revision.to_string(),
        dash(
            e.object
                .metadata
                .as_ref()
                .and_then(|m| m.creation_timestamp.clone())
                .unwrap_or_default(),
        ),
    ]
}

const HEADER: [&str; 7] =
    ["RESOURCE", "NAMESPACE", "NAME", "KIND", "ENCODING", "REVISION", "CREATED"];

/// Rows are rendered as text on the decoding threads ([`listing::list`]) and printed in key
/// order, so memory holds text, not decoded objects.
fn list(args: ListArgs) -> Result<()> {
    let config = args.decryption.load()?;
    let filter = args.filter.parsed()?;
    let file = open_snapshot(&args.snapshot)?;
    let db = file.db().map_err(|e| db_failure(&args.snapshot, e))?;
    let json = args.output == TableJson::Json;
    /// A row as the chosen output prints it.
    enum Line {
        /// An element of a pretty JSON array, indented as one (`[row]` without its brackets).
        Json(String),
        Table(Vec<String>),
    }
    let listed = listing::list(
        &file,
        &db,
        args.filter.prefix.as_bytes(),
        &filter,
        config.as_ref(),
        &|key, e| {
            if json {
                let text = serde_json::to_string_pretty(&[e.row(key)]).unwrap_or_default();
                Line::Json(text[2..text.len() - 2].to_string())
            } else {
                Line::Table(row(key, e))
            }
        },
    )
    .map_err(|e| Failure::new(Code::Corrupt, format!("{}: {e}", args.snapshot.display())))?;
    let selected = listed.rows.len();
    if json {
        let mut out = String::with_capacity(1 << 17);
        let texts = listed.rows.into_iter().filter_map(|l| match l {
            Line::Json(text) => Some(text),
            Line::Table(_) => None,
        });
        for (i, text) in texts.enumerate() {
            out.push_str(if i == 0 { "[\n" } else { ",\n" });
            out.push_str(&text);
            if out.len() >= 1 << 16 {
                crate::output::stdout_write(out.as_bytes());
                out.clear();
            }
        }
        out.push_str(if selected == 0 { "[]\n" } else { "\n]\n" });
        crate::output::stdout_write(out.as_bytes());
    } else {
        let mut table = vec![HEADER.map(String::from).to_vec()];
        table.extend(listed.rows.into_iter().filter_map(|l| match l {
            Line::Table(cells) => Some(cells),
            Line::Json(_) => None,
        }));
        print!("{}", crate::cmd::table(&table));
    }
    eprintln!("{selected} object(s) of {} under {}", listed.total, args.filter.prefix);
    report_undecrypted(config.is_some(), &listed.undecrypted)?;
    Ok(())
}

fn get(args: GetArgs) -> Result<()> {
    use etcdguard_kube::inspect::{get_object, newest_value, GetError};
    let key = args.key.as_bytes();
    let config = args.decryption.load()?;
    args.schema.activate()?;
    let file = open_snapshot(&args.snapshot)?;
    let db = file.db().map_err(|e| db_failure(&args.snapshot, e))?;
    let release = || file.release_resident();
    let stored = newest_value(&db, key, Some(&release))
        .map_err(|e| Failure::new(Code::Corrupt, format!("{}: {e}", args.snapshot.display())))?
        .ok_or_else(|| {
            Failure::new(
                Code::NotFound,
                format!(
                    "{}: no key {} (deleted, or never there); `inspect list` shows what is",
                    args.snapshot.display(),
                    args.key
                ),
            )
        })?;
    if args.output == GetFormat::Raw {
        let plain = etcdguard_kube::render::plain_value(key, &stored.value, config.as_ref())
            .map_err(|e| Failure::new(Code::Failure, format!("{}: {e}", args.key)))?;
        crate::output::stdout_write(&plain);
        return Ok(());
    }
    let opts =
        etcdguard_kube::render::RenderOptions { show_managed_fields: args.show_managed_fields };
    let (rendered, info) = get_object(&stored, config.as_ref(), &opts).map_err(|e| {
        let code =
            if matches!(e, GetError::NeedsKeys { .. }) { Code::Usage } else { Code::Failure };
        Failure::new(code, format!("{}: {e}", args.key))
    })?;
    let info_lines = [
        format!("key: {}", info.key),
        format!("createRevision: {}", info.create_revision),
        format!("modRevision: {}", info.mod_revision),
        format!("version: {}", info.version),
        format!("encoding: {}", info.encoding),
        format!("size: {} bytes", info.size),
    ];
    let show_info = args.with_etcd_info || args.output == GetFormat::Wide;
    match args.output {
        GetFormat::Json => {
            println!("{}", rendered.to_json_pretty());
            if show_info {
                info_lines.iter().for_each(|l| eprintln!("{l}"));
            }
        }
        _ => {
            if show_info {
                info_lines.iter().for_each(|l| println!("# {l}"));
            }
            print!("{}", rendered.to_yaml());
        }
    }
    if !rendered.unknown_fields.is_empty() {
        eprintln!(
            "note: fields unknown to the schema (built-in: Kubernetes 1.30-1.35; a newer cluster? see --schema-dir) are kept under \"{}\" at: {}",
            etcdguard_kube::render::UNKNOWN_FIELDS_KEY,
            rendered.unknown_fields.join(", ")
        );
    }
    Ok(())
}

/// A JSON array printed an element at a time, as `serde_json::to_string_pretty` prints the
/// whole array (two more spaces of indent per element; strings never hold a raw newline).
#[derive(Default)]
struct JsonArray {
    started: bool,
}

impl JsonArray {
    fn push(&mut self, v: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(v)?;
        let mut out = String::with_capacity(text.len() + text.len() / 8 + 4);
        out.push_str(if self.started { ",\n" } else { "[\n" });
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str("  ");
            out.push_str(line);
        }
        crate::output::stdout_write(out.as_bytes());
        self.started = true;
        Ok(())
    }

    fn end(self) {
        println!("{}", if self.started { "\n]" } else { "[]" });
    }
}

fn diff(args: DiffArgs) -> Result<()> {
    use etcdguard_kube::jsondiff::{to_json_patch, to_unified};
    use etcdguard_workflow::inspect::{self as wf, Origin};
    let filter = args.filter.parsed()?;
    let config = args.decryption.load()?;
    args.schema.activate()?;
    let repo = args.backups.spec();
    let (old_id, new_id) = (args.old.to_string_lossy(), args.new.to_string_lossy());
    let scratch = args.backups.scratch_dir.as_deref();
    let (old, new) = match &repo {
        Some(repo) => (
            Origin::Backup { repo, id: &old_id, scratch },
            Origin::Backup { repo, id: &new_id, scratch },
        ),
        None => (Origin::File(&args.old), Origin::File(&args.new)),
    };
    let opts = wf::DiffOptions {
        old,
        new,
        prefix: args.filter.prefix.as_bytes(),
        filter: &filter,
        config,
        fields: matches!(args.output, DiffFormat::Yaml | DiffFormat::JsonPatch),
    };
    let mut array = JsonArray::default();
    let mut table = vec![std::iter::once("").chain(HEADER).map(String::from).collect::<Vec<_>>()];
    // Changes come in key order, a batch decoded at a time: each is printed (or, for the
    // table, kept as its row) and dropped.
    let mut print = |c: &listing::Change<'_>, ops: Option<wf::FieldChanges>| -> Result<()> {
        // Stops at the first failed write (a closed pipe): the whole job is output.
        if let Some(e) = crate::output::stdout_error() {
            return Err(std::io::Error::new(e.kind(), e.to_string()).into());
        }
        let key = String::from_utf8_lossy(c.key);
        match (args.output, ops) {
            (DiffFormat::JsonPatch, Some(ops)) => {
                let mut v = json!({"key": key, "change": c.kind.word()});
                match &ops {
                    Ok(ops) => v["patch"] = to_json_patch(ops),
                    Err(err) => v["error"] = json!(err),
                }
                array.push(&v)?;
            }
            (DiffFormat::Yaml, Some(ops)) => {
                let revisions = match c.old {
                    Some(o) => {
                        format!(" (revision {} -> {})", o.mod_revision, c.entry.mod_revision)
                    }
                    None => format!(" (revision {})", c.entry.mod_revision),
                };
                println!("{} {key}{revisions}", c.kind.sign());
                match ops {
                    Ok(ops) if c.kind == ChangeKind::Modified => print!("{}", to_unified(&ops)),
                    Ok(_) => {}
                    Err(err) => println!("  (fields not shown: {err})"),
                }
            }
            (DiffFormat::Json, _) => {
                let mut v = c.entry.json(c.key);
                v["change"] = json!(c.kind.word());
                if let Some(o) = c.old {
                    v["oldModRevision"] = json!(o.mod_revision);
                }
                array.push(&v)?;
            }
            (DiffFormat::Table, _) | (_, None) => {
                let mut r = vec![c.kind.sign().to_string()];
                r.extend(row(c.key, c.entry));
                table.push(r);
            }
        }
        Ok(())
    };
    let streamed = wf::diff(opts, &mut |line| eprintln!("{line}"), &mut |c, ops| {
        print(c, ops).map_err(std::io::Error::other)
    });
    if streamed.is_err()
        && crate::output::stdout_error().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    {
        crate::output::exit_by_sigpipe();
    }
    let summary = streamed?;
    match args.output {
        DiffFormat::Json | DiffFormat::JsonPatch => array.end(),
        DiffFormat::Table => print!("{}", crate::cmd::table(&table)),
        DiffFormat::Yaml => {}
    }
    let counts = summary.counts;
    eprintln!("{} added, {} deleted, {} modified", counts.added, counts.deleted, counts.modified);
    // Values that did not decrypt although keys were given: listed, and an error for scripts.
    report_undecrypted(summary.decrypted, &summary.undecrypted)?;
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let file = open_snapshot(&args.snapshot)?;
    let db = file.db().map_err(|e| db_failure(&args.snapshot, e))?;
    let release = || file.release_resident();
    let stats = etcdguard_kube::stats::snapshot_stats(&db, Some(&release), args.top)
        .map_err(|e| Failure::new(Code::Corrupt, format!("{}: {e}", args.snapshot.display())))?;
    match args.output {
        TableJson::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
        TableJson::Table => {
            use etcdguard_kube::stats::{KeyUsage, Usage};
            let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
            let usage_rows = |title: &str, groups: &BTreeMap<String, Usage>| {
                let mut sorted: Vec<_> = groups.iter().collect();
                sorted.sort_by(|a, b| {
                    b.1.bytes
                        .cmp(&a.1.bytes)
                        .then(b.1.all_revision_bytes.cmp(&a.1.all_revision_bytes))
                        .then(a.0.cmp(b.0))
                });
                let mut rows = vec![[title, "OBJECTS", "BYTES", "REVISIONS", "ALL-REVISION BYTES"]
                    .map(String::from)
                    .to_vec()];
                let line = |name: String, u: &Usage| {
                    vec![
                        name,
                        u.objects.to_string(),
                        u.bytes.to_string(),
                        u.revisions.to_string(),
                        u.all_revision_bytes.to_string(),
                    ]
                };
                rows.extend(sorted.into_iter().map(|(name, u)| line(dash(name), u)));
                rows.push(line("(total)".into(), &stats.total));
                crate::cmd::table(&rows)
            };
            let key_rows = |keys: &[KeyUsage]| {
                let mut rows = vec![["KEY", "BYTES", "REVISIONS", "VERSION", "LIVE"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(keys.iter().map(|k| {
                    vec![
                        k.key.clone(),
                        k.bytes.to_string(),
                        k.revisions.to_string(),
                        k.version.to_string(),
                        if k.live { "yes" } else { "deleted" }.to_string(),
                    ]
                }));
                crate::cmd::table(&rows)
            };
            print!(
                "{}\n{}\n",
                usage_rows("RESOURCE", &stats.by_resource),
                usage_rows("NAMESPACE", &stats.by_namespace)
            );
            println!("Largest objects:");
            println!("{}", key_rows(&stats.largest));
            println!("Most revisions in the file:");
            print!("{}", key_rows(&stats.most_revisions));
        }
    }
    eprintln!(
        "{} live object(s), {} bytes; {} revision(s) in the file, {} bytes (the difference is history a compaction + defrag frees)",
        stats.total.objects, stats.total.bytes, stats.total.revisions, stats.total.all_revision_bytes
    );
    Ok(())
}

fn extract(args: ExtractArgs) -> Result<()> {
    use etcdguard_workflow::inspect::{self as wf, Origin};
    let f = &args.filter;
    if !args.all_namespaces
        && f.namespace.is_none()
        && f.resource.is_none()
        && f.name.is_none()
        && f.selector.is_none()
    {
        return Err(Failure::new(Code::Usage, "say what to extract: -n NAMESPACE, --resource, --name, -l SELECTOR, or --all-namespaces for everything").into());
    }
    let filter = f.parsed()?;
    let config = args.decryption.load()?;
    args.schema.activate()?;
    let repo = args.backups.spec();
    let snapshot_path;
    let origin = match &repo {
        Some(repo) => Origin::Backup {
            repo,
            id: args.source.as_deref().unwrap_or("latest"),
            scratch: args.backups.scratch_dir.as_deref(),
        },
        None => {
            let Some(source) = &args.source else {
                return Err(Failure::new(
                    Code::Usage,
                    "give a snapshot file, or --repo URL [BACKUP]",
                )
                .into());
            };
            snapshot_path = PathBuf::from(source);
            Origin::File(&snapshot_path)
        }
    };
    let opened = wf::open(&origin, config, &mut |line| eprintln!("{line}"))?;
    if let Some(source) = &opened.config_source {
        eprintln!("decrypting with {source}");
    }
    let note_unknown = |o: &etcdguard_kube::extract::Extracted| {
        for path in &o.unknown_fields {
            eprintln!(
                "note: {} has fields the schema does not know at {path} (written by a newer Kubernetes; they are kept in a comment at the top of its YAML, not in the object, which applies without them; --schema-dir renders them)",
                o.key
            );
        }
    };
    // Each object is written as soon as it is rendered: memory does not grow with the data.
    let summary = match &args.output_dir {
        Some(dir) => {
            let dir_failure = |e: std::io::Error| {
                let code = match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Code::DestinationExists,
                    std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                    _ => Code::Failure,
                };
                Failure::new(code, format!("--output-dir {}: {e}", dir.display()))
            };
            // Refused before anything is read or written when not empty.
            let mut writer = etcdguard_kube::extract::DirWriter::new(dir).map_err(dir_failure)?;
            let mut write_error = None;
            let result = wf::extract_to(
                &opened,
                &args.filter.prefix,
                &filter,
                args.include_owned,
                &mut |o| {
                    note_unknown(&o);
                    writer.write(&o).map(drop).map_err(|e| {
                        let kept = std::io::Error::new(e.kind(), e.to_string());
                        write_error = Some(e);
                        kept
                    })
                },
            );
            if let Some(e) = write_error {
                return Err(dir_failure(e).into());
            }
            let summary = result?;
            let written = writer.finish().map_err(dir_failure)?;
            println!(
                "{} object(s) written under {} (apply with: kubectl apply -R -f {})",
                written,
                dir.display(),
                dir.display()
            );
            summary
        }
        None => {
            // Stops at the first failed write: the whole job is output.
            let streamed = wf::extract_to(
                &opened,
                &args.filter.prefix,
                &filter,
                args.include_owned,
                &mut |o| {
                    note_unknown(&o);
                    let mut doc = String::from("---\n");
                    doc.push_str(&o.yaml);
                    crate::output::stdout_write(doc.as_bytes());
                    match crate::output::stdout_error() {
                        Some(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        None => Ok(()),
                    }
                },
            );
            if streamed.is_err()
                && crate::output::stdout_error()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                crate::output::exit_by_sigpipe();
            }
            streamed?
        }
    };
    for s in &summary.skipped {
        eprintln!("warning: skipped {}: {}", s.key, s.reason);
    }
    eprintln!(
        "{} object(s) extracted ({} secret(s)); {} skipped; {} left out as owned by a controller{}",
        summary.extracted,
        summary.secrets,
        summary.skipped.len(),
        summary.owned,
        if summary.owned > 0 { " (--include-owned keeps them)" } else { "" }
    );
    Ok(())
}

fn history(args: HistoryArgs) -> Result<()> {
    use etcdguard_workflow::inspect::{self as wf, Origin};
    let config = args.decryption.load()?;
    args.schema.activate()?;
    let opened = wf::open(&Origin::File(&args.snapshot), config, &mut |line| eprintln!("{line}"))?;
    let (versions, compacted) = wf::history(&opened, &args.key)?;
    if versions.is_empty() {
        return Err(Failure::new(
            Code::NotFound,
            format!(
                "{}: no revision of {} (never written, or compacted away)",
                args.snapshot.display(),
                args.key
            ),
        )
        .into());
    }
    match args.output {
        HistoryFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"key": args.key, "compactedVersions": compacted, "versions": versions})
            )?
        ),
        HistoryFormat::Text => {
            for v in &versions {
                let what = match v.change() {
                    ChangeKind::Deleted => "deleted".to_string(),
                    ChangeKind::Added => "created".to_string(),
                    ChangeKind::Modified => format!("version {}", v.version),
                };
                let time = match (&v.time, v.time_source) {
                    (Some(t), Some(src)) => format!("{t} ({src})"),
                    _ => "time not recorded".to_string(),
                };
                println!("revision {}: {what}, {time}", v.revision);
                if let Some(e) = &v.error {
                    println!("  (not shown: {e})");
                }
                for line in etcdguard_kube::jsondiff::to_unified(&v.changes).lines() {
                    println!("  {line}");
                }
            }
        }
    }
    let created_in_file = versions.first().is_some_and(|v| v.version == 1);
    eprintln!(
        "{} revision(s) of {}{}",
        versions.len(),
        args.key,
        if compacted > 0 && !created_in_file {
            format!("; {compacted} older version(s) were compacted away")
        } else {
            String::new()
        }
    );
    let failed = versions.iter().filter(|v| v.error.is_some()).count();
    if failed > 0 && opened.config.is_some() {
        return Err(Failure::new(
            Code::Failure,
            format!("{failed} version(s) could not be read (shown above)"),
        )
        .into());
    }
    Ok(())
}
