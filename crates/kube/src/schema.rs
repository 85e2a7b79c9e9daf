//! The protobuf schema of the built-in Kubernetes types, as build.rs compiled it from the
//! `generated.proto` files of the `k8s-rs-pb` crate (union of Kubernetes 1.30–1.35), plus the
//! few facts the wire format does not carry and kubectl's JSON needs (see kube-storage.md §4.1).
//!
//! Types and fields of newer releases come from [`Schema::load_dirs`]: the `generated.proto`
//! files of a k8s.io/api release, compiled at run time and laid over the built-in schema;
//! [`activate`] makes that the schema of the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::go_types::GoField;
use crate::proto_table;

static SCHEMA_TEXT: &str = include_str!(concat!(env!("OUT_DIR"), "/schema.txt"));

/// How one field's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum,
    Message,
}

#[derive(Debug, Clone)]
pub struct Field {
    /// The JSON name kubectl prints.
    pub json_name: String,
    pub repeated: bool,
    pub kind: Kind,
    /// The message type's full name, for `Kind::Message`.
    pub message: Option<String>,
    /// An embedded Go struct: JSON puts its fields into the parent.
    pub inline: bool,
    /// What the Go type says of the field's zero value in JSON (and then `json_name` is its
    /// tag's); only for `--schema-dir`
    /// releases, whose modules ship their Go types (see [`crate::go_types`]).
    pub go: Option<GoField>,
}

#[derive(Debug, Clone, Default)]
pub struct Message {
    /// A `map<K, V>` entry {1 key, 2 value}.
    pub map_entry: bool,
    pub fields: HashMap<u32, Field>,
}

#[derive(Debug, Default)]
pub struct Schema {
    messages: HashMap<String, Message>,
}

/// Proto field names that differ from the Go `json` tag (kubectl's name).
const RENAMED: &[(&str, &str)] = &[
    ("Webhooks", "webhooks"),
    ("Expression", "expression"),
    ("Name", "name"),
    ("uID", "uid"),
    ("aPIGroup", "apiGroup"),
];

/// Embedded structs (message simple name, field): Go's JSON flattens them into the parent,
/// protobuf nests them.
const INLINE: &[(&str, &str)] = &[
    ("Volume", "volumeSource"),
    ("PersistentVolumeSpec", "persistentVolumeSource"),
    ("Probe", "handler"),
    ("EphemeralContainer", "ephemeralContainerCommon"),
    ("SecretProjection", "localObjectReference"),
    ("ConfigMapVolumeSource", "localObjectReference"),
    ("ConfigMapProjection", "localObjectReference"),
    ("ConfigMapKeySelector", "localObjectReference"),
    ("SecretKeySelector", "localObjectReference"),
    ("ConfigMapEnvSource", "localObjectReference"),
    ("SecretEnvSource", "localObjectReference"),
    ("IngressRule", "ingressRuleValue"),
    ("DeviceClaimConfiguration", "deviceConfiguration"),
    ("DeviceAllocationConfiguration", "deviceConfiguration"),
    ("DeviceClassConfiguration", "deviceConfiguration"),
    ("NamedRuleWithOperations", "ruleWithOperations"),
    ("RuleWithOperations", "rule"),
];

fn kind(s: &str) -> Option<Kind> {
    Some(match s {
        "double" => Kind::Double,
        "float" => Kind::Float,
        "int32" => Kind::Int32,
        "int64" => Kind::Int64,
        "uint32" => Kind::Uint32,
        "uint64" => Kind::Uint64,
        "sint32" => Kind::Sint32,
        "sint64" => Kind::Sint64,
        "fixed32" => Kind::Fixed32,
        "fixed64" => Kind::Fixed64,
        "sfixed32" => Kind::Sfixed32,
        "sfixed64" => Kind::Sfixed64,
        "bool" => Kind::Bool,
        "string" => Kind::String,
        "bytes" => Kind::Bytes,
        "enum" => Kind::Enum,
        "message" => Kind::Message,
        _ => return None,
    })
}

static ACTIVE: OnceLock<Schema> = OnceLock::new();

/// Makes `schema` the one every render and encode of this process uses. Only before the
/// first use (a program chooses its schema once, at start); otherwise `schema` comes back.
pub fn activate(schema: Schema) -> Result<(), Schema> {
    ACTIVE.set(schema)
}

/// A schema loaded from `generated.proto` files, and what it was made of.
#[derive(Debug)]
pub struct Loaded {
    pub schema: Schema,
    /// The Go modules (`k8s.io/api@v0.37.2`) or include roots the files came from.
    pub sources: Vec<String>,
    /// How many messages the files define.
    pub messages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaDirError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: no generated.proto files; give the folder of a k8s.io/api release (the Dir that `go mod download -json k8s.io/api@VERSION` prints)", .0.display())]
    Empty(PathBuf),
    #[error("{0}")]
    Compile(String),
}

impl SchemaDirError {
    /// The folder was not there (as opposed to unreadable or not a schema).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SchemaDirError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl Schema {
    /// The schema of this process: the one given to [`activate`], else the built-in one
    /// (parsed once).
    pub fn get() -> &'static Schema {
        ACTIVE.get_or_init(Schema::built_in)
    }

    /// The schema compiled into the binary (Kubernetes 1.30–1.35).
    pub fn built_in() -> Schema {
        Schema::parse(SCHEMA_TEXT)
    }

    /// The built-in schema with the `generated.proto` files under `dirs` laid over it: their
    /// messages are added and their field numbers win, so every type and field of that
    /// release renders, and fields it dropped still render from the built-in schema.
    ///
    /// A folder with a `go.mod` is a Go module (the Dir of `go mod download -json
    /// k8s.io/api@v0.37.2`): its files are imported as `<module path>/…`, and the modules it
    /// requires (k8s.io/apimachinery) are found beside it in the module cache when not given.
    /// A folder without one is an include root (`DIR/k8s.io/api/core/v1/generated.proto`).
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Loaded, SchemaDirError> {
        let resolver = ProtoDirs::find(dirs)?;
        let files = resolver.proto_files()?;
        if files.is_empty() {
            return Err(SchemaDirError::Empty(dirs.first().cloned().unwrap_or_default()));
        }
        let sources = resolver.sources();
        let proto_dirs: Vec<PathBuf> = files.iter().filter_map(|f| resolver.path_of(f)).collect();
        let mut chain = protox::file::ChainFileResolver::new();
        chain.add(resolver);
        chain.add(protox::file::GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler
            .open_files(&files)
            .map_err(|e| SchemaDirError::Compile(compile_error(&e, &sources)))?;
        let mut table = proto_table::Table::new();
        proto_table::add_pool(&compiler.descriptor_pool(), &mut table);
        let messages = table.len();
        let mut schema = Schema::built_in();
        for (name, over) in Schema::parse(&proto_table::to_text(&table)).messages {
            let m = schema.messages.entry(name).or_default();
            m.map_entry = over.map_entry;
            m.fields.extend(over.fields);
        }
        for proto in &proto_dirs {
            schema.add_go_facts(proto)?;
        }
        Ok(Loaded { schema, sources, messages })
    }

    /// The Go struct facts of the package of `generated_proto` (its folder's .go files).
    fn add_go_facts(&mut self, generated_proto: &Path) -> Result<(), SchemaDirError> {
        let read = |path: &Path, e: std::io::Error| SchemaDirError::Read {
            path: path.to_path_buf(),
            source: e,
        };
        let text =
            std::fs::read_to_string(generated_proto).map_err(|e| read(generated_proto, e))?;
        let Some(package) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';').trim())
        else {
            return Ok(());
        };
        let package = package.strip_prefix("k8s.io.").unwrap_or(package);
        let dir = generated_proto.parent().unwrap_or(Path::new("."));
        for (name, fields) in crate::go_types::scan_dir(dir).map_err(|e| read(dir, e))? {
            let Some(message) = self.messages.get_mut(&format!("{package}.{name}")) else {
                continue;
            };
            for (number, (go, json_name)) in fields {
                if let Some(f) = message.fields.get_mut(&number) {
                    // The Go tag is what JSON calls the field.
                    if !go.inline && !go.hidden && !json_name.is_empty() {
                        f.json_name = json_name;
                    }
                    f.go = Some(go);
                }
            }
        }
        Ok(())
    }

    fn parse(text: &str) -> Schema {
        let mut messages: HashMap<String, Message> = HashMap::new();
        let mut current: Option<(String, Message)> = None;
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["M", name, rest @ ..] => {
                    if let Some((n, m)) = current.take() {
                        messages.insert(n, m);
                    }
                    current = Some((
                        name.to_string(),
                        Message { map_entry: rest.first() == Some(&"map"), fields: HashMap::new() },
                    ));
                }
                ["F", number, name, rep, k, rest @ ..] => {
                    let (Some((msg_name, msg)), Ok(number), Some(kind)) =
                        (current.as_mut(), number.parse::<u32>(), kind(k))
                    else {
                        continue;
                    };
                    let simple = msg_name.rsplit('.').next().unwrap_or_default();
                    let json_name = RENAMED
                        .iter()
                        .find(|(p, _)| p == name)
                        .map(|(_, j)| j.to_string())
                        .unwrap_or_else(|| name.to_string());
                    let inline = kind == Kind::Message
                        && INLINE.iter().any(|(m, f)| *m == simple && f == name);
                    msg.fields.insert(
                        number,
                        Field {
                            json_name,
                            repeated: *rep == "r",
                            kind,
                            message: rest.first().map(|s| s.to_string()),
                            inline,
                            go: None,
                        },
                    );
                }
                _ => {}
            }
        }
        if let Some((n, m)) = current {
            messages.insert(n, m);
        }
        Schema { messages }
    }

    pub fn message(&self, full_name: &str) -> Option<&Message> {
        self.messages.get(full_name)
    }

    /// The full names of every message.
    pub fn message_names(&self) -> impl Iterator<Item = &str> {
        self.messages.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The message full name of a top-level object of `kind` in `api_version`, if the schema
    /// has it (kube-storage.md §3: the proto package follows from the API group).
    pub fn type_of(&self, api_version: &str, kind: &str) -> Option<String> {
        if kind.is_empty() || api_version.is_empty() {
            return None;
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let package = match group {
            "" => format!("api.core.{version}"),
            "apiextensions.k8s.io" => {
                format!("apiextensions_apiserver.pkg.apis.apiextensions.{version}")
            }
            "apiregistration.k8s.io" => {
                format!("kube_aggregator.pkg.apis.apiregistration.{version}")
            }
            "internal.apiserver.k8s.io" => format!("api.apiserverinternal.{version}"),
            "metrics.k8s.io" => format!("metrics.pkg.apis.metrics.{version}"),
            g => format!("api.{}.{version}", g.split('.').next().unwrap_or(g)),
        };
        let full = format!("{package}.{kind}");
        if self.messages.contains_key(&full) {
            return Some(full);
        }
        // The meta types (Status, DeleteOptions, …) are registered in every group version.
        let meta = format!("apimachinery.pkg.apis.meta.v1.{kind}");
        self.messages.contains_key(&meta).then_some(meta)
    }

    /// A newer version of `api_version`'s group whose message for `kind` has the same shape
    /// (the same fields by number, JSON name, kind and repetition, recursively through the
    /// group's own types): the newest such stable, else beta, version. When a version is
    /// promoted unchanged, the API server goes on storing its objects in the old version for a
    /// release and serves only the new one, so an object read as stored can be written in it.
    pub fn same_shape_newer_version(&self, api_version: &str, kind: &str) -> Option<String> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let stored = self.type_of(api_version, kind)?;
        let base = stored.strip_suffix(&format!("{version}.{kind}"))?;
        let mut newer: Vec<&str> = self
            .messages
            .keys()
            .filter_map(|n| n.strip_prefix(base)?.strip_suffix(kind)?.strip_suffix('.'))
            .filter(|v| !v.contains('.') && version_rank(v) > version_rank(version))
            .collect();
        newer.sort_by_key(|v| std::cmp::Reverse(version_rank(v)));
        let found = newer.into_iter().find(|v| {
            let mut seen = std::collections::HashSet::new();
            self.same_shape(
                &stored,
                &format!("{base}{v}.{kind}"),
                &format!("{base}{version}."),
                &format!("{base}{v}."),
                &mut seen,
            )
        })?;
        Some(if group.is_empty() { found.to_string() } else { format!("{group}/{found}") })
    }

    fn same_shape(
        &self,
        a: &str,
        b: &str,
        package_a: &str,
        package_b: &str,
        seen: &mut std::collections::HashSet<String>,
    ) -> bool {
        if !seen.insert(a.to_string()) {
            return true;
        }
        let (Some(ma), Some(mb)) = (self.messages.get(a), self.messages.get(b)) else {
            return false;
        };
        if ma.map_entry != mb.map_entry || ma.fields.len() != mb.fields.len() {
            return false;
        }
        ma.fields.iter().all(|(number, fa)| {
            let Some(fb) = mb.fields.get(number) else { return false };
            if fa.json_name != fb.json_name
                || fa.kind != fb.kind
                || fa.repeated != fb.repeated
                || fa.inline != fb.inline
            {
                return false;
            }
            match (&fa.message, &fb.message) {
                (Some(ta), Some(tb)) => match ta.strip_prefix(package_a) {
                    // The group's own type: the same type of the other version, same shape.
                    Some(rest) => {
                        tb.strip_prefix(package_b) == Some(rest)
                            && self.same_shape(ta, tb, package_a, package_b, seen)
                    }
                    None => ta == tb,
                },
                (None, None) => true,
                _ => false,
            }
        })
    }
}

/// Kubernetes' version order: stable above beta above alpha, then by number (`v2` > `v1` >
/// `v1beta2` > `v1beta1` > `v1alpha1`); names of another form rank lowest.
fn version_rank(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u32>() else { return (0, 0, 0) };
    let (stability, minor) = match &rest[digits..] {
        "" => (3, 0),
        s => match s
            .strip_prefix("beta")
            .map(|m| (2, m))
            .or_else(|| s.strip_prefix("alpha").map(|m| (1, m)))
        {
            Some((st, m)) => match m.parse::<u32>() {
                Ok(n) => (st, n),
                Err(_) => return (0, 0, 0),
            },
            None => return (0, 0, 0),
        },
    };
    (stability, major, minor)
}

/// Says which module to add when an import is missing (the usual mistake: k8s.io/api alone,
/// outside the module cache).
fn compile_error(e: &protox::Error, sources: &[String]) -> String {
    let text = e.to_string();
    let missing = text
        .split(['"', '\''])
        .find(|part| part.starts_with("k8s.io/") && part.ends_with(".proto"))
        .filter(|_| text.contains("not found"));
    match missing {
        Some(import) => {
            let module = import.split('/').take(2).collect::<Vec<_>>().join("/");
            format!(
                "compiling the schema from {}: {text}; add the folder of {module} with another --schema-dir (`go mod download -json {module}@VERSION` prints it as Dir)",
                sources.join(", ")
            )
        }
        None => format!("compiling the schema from {}: {text}", sources.join(", ")),
    }
}

/// The folders given to [`Schema::load_dirs`] and the modules found beside them, as a protox
/// file resolver: an import `k8s.io/api/core/v1/generated.proto` is opened from the folder of
/// module `k8s.io/api`, or under an include root.
struct ProtoDirs {
    /// (module path, version if known, folder)
    modules: Vec<(String, Option<String>, PathBuf)>,
    includes: Vec<PathBuf>,
}

/// A module path and the modules it requires, with versions.
type GoMod = (String, Vec<(String, String)>);

/// A module's `go.mod`: its path and the modules it requires, with versions.
fn read_go_mod(dir: &Path) -> Result<Option<GoMod>, SchemaDirError> {
    let path = dir.join("go.mod");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SchemaDirError::Read { path, source }),
    };
    let mut module = None;
    let mut requires = Vec::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["module", m] => module = Some(m.trim_matches('"').to_string()),
            ["require", m, v] | [m, v] if m.contains('/') && v.starts_with('v') => {
                requires.push((m.to_string(), v.to_string()))
            }
            _ => {}
        }
    }
    Ok(module.map(|m| (m, requires)))
}

impl ProtoDirs {
    fn find(dirs: &[PathBuf]) -> Result<ProtoDirs, SchemaDirError> {
        let mut found = ProtoDirs { modules: Vec::new(), includes: Vec::new() };
        let mut wanted: Vec<(String, String, PathBuf)> = Vec::new();
        for dir in dirs {
            std::fs::read_dir(dir)
                .map_err(|source| SchemaDirError::Read { path: dir.clone(), source })?;
            match read_go_mod(dir)? {
                Some((module, requires)) => {
                    // In the module cache the folder is <cache>/<module path>@<version>.
                    let name = dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let version = name.rsplit_once('@').map(|(_, v)| v.to_string());
                    if let (Some(_), Some(cache)) =
                        (&version, dir.ancestors().nth(module.split('/').count()))
                    {
                        // Only the modules whose protos others import (not klog, utils, …).
                        for (r, v) in requires
                            .into_iter()
                            .filter(|(r, _)| r == "k8s.io/apimachinery" || r == "k8s.io/api")
                        {
                            wanted.push((r.clone(), v.clone(), cache.join(format!("{r}@{v}"))));
                        }
                    }
                    found.modules.push((module, version, dir.clone()));
                }
                None => found.includes.push(dir.clone()),
            }
        }
        for (module, version, dir) in wanted {
            if !found.modules.iter().any(|(m, _, _)| *m == module) && dir.join("go.mod").is_file() {
                found.modules.push((module, Some(version), dir));
            }
        }
        Ok(found)
    }

    fn sources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .modules
            .iter()
            .map(|(m, v, dir)| match v {
                Some(v) => format!("{m}@{v}"),
                None => format!("{m} ({})", dir.display()),
            })
            .collect();
        out.extend(self.includes.iter().map(|d| d.display().to_string()));
        out
    }

    /// The import names of every `generated.proto` (test API groups are not stored by any
    /// API server, and are left out).
    fn proto_files(&self) -> Result<Vec<String>, SchemaDirError> {
        let mut out = Vec::new();
        let roots = self
            .modules
            .iter()
            .map(|(m, _, d)| (format!("{m}/"), d))
            .chain(self.includes.iter().map(|d| (String::new(), d)));
        for (prefix, root) in roots {
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|source| SchemaDirError::Read { path: dir.clone(), source })?;
                for e in entries {
                    let p = e
                        .map_err(|source| SchemaDirError::Read { path: dir.clone(), source })?
                        .path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.file_name().is_some_and(|n| n == "generated.proto") {
                        let rel = p
                            .strip_prefix(root)
                            .unwrap_or(&p)
                            .to_string_lossy()
                            .replace(std::path::MAIN_SEPARATOR, "/");
                        if !rel.contains("testapigroup") {
                            out.push(format!("{prefix}{rel}"));
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn path_of(&self, name: &str) -> Option<PathBuf> {
        for (module, _, dir) in &self.modules {
            if let Some(rel) = name.strip_prefix(module.as_str()).and_then(|r| r.strip_prefix('/'))
            {
                let p = dir.join(rel);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        self.includes.iter().map(|d| d.join(name)).find(|p| p.is_file())
    }
}

impl protox::file::FileResolver for ProtoDirs {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match self.path_of(name) {
            Some(p) => protox::file::File::open(name, &p),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_the_built_in_types() {
        let s = Schema::get();
        assert!(s.len() > 1000, "{} messages", s.len());
        assert_eq!(s.type_of("v1", "Pod").as_deref(), Some("api.core.v1.Pod"));
        assert_eq!(
            s.type_of("rbac.authorization.k8s.io/v1", "ClusterRole").as_deref(),
            Some("api.rbac.v1.ClusterRole")
        );
        assert_eq!(
            s.type_of("v1", "Status").as_deref(),
            Some("apimachinery.pkg.apis.meta.v1.Status")
        );
        assert_eq!(s.type_of("example.com/v1", "Widget"), None);
        let volume = s.message("api.core.v1.Volume").unwrap();
        assert!(volume.fields[&2].inline);
        let wh = s.message("api.admissionregistration.v1.ValidatingWebhookConfiguration").unwrap();
        assert_eq!(wh.fields[&2].json_name, "webhooks");
        assert!(s.message("api.core.v1.ConfigMap.DataEntry").unwrap().map_entry);
        // Promoted unchanged: IngressClass v1beta1 → v1; PriorityLevelConfiguration v1beta1 only
        // to v1beta2 (v1beta3 renamed a field).
        assert_eq!(
            s.same_shape_newer_version("networking.k8s.io/v1beta1", "IngressClass").as_deref(),
            Some("networking.k8s.io/v1")
        );
        assert_eq!(s.same_shape_newer_version("networking.k8s.io/v1", "IngressClass"), None);
        assert_eq!(
            s.same_shape_newer_version(
                "flowcontrol.apiserver.k8s.io/v1beta1",
                "PriorityLevelConfiguration"
            )
            .as_deref(),
            Some("flowcontrol.apiserver.k8s.io/v1beta2")
        );
        assert!(
            version_rank("v1") > version_rank("v1beta2")
                && version_rank("v1beta2") > version_rank("v1beta1")
                && version_rank("v1beta1") > version_rank("v1alpha3")
        );
        assert!(
            version_rank("v2") > version_rank("v1")
                && version_rank("v2beta1") < version_rank("v1")
                && version_rank("x") < version_rank("v1alpha1")
        );
    }
}
