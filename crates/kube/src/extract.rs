//! `inspect extract`: the objects of a snapshot as YAML that `kubectl apply` takes back.
//!
//! The newest value of every selected key is decrypted (when a config is given), rendered as
//! the API server would show it ([`crate::render`]), stripped of what the server owns
//! (`resourceVersion`, `uid`, `creationTimestamp`, `generation`, `managedFields`, `selfLink`,
//! `status`) and ordered so that an apply succeeds in one pass: CustomResourceDefinitions,
//! then Namespaces, then the rest.
//!
//! ## How it works
//!
//! Object-level recovery sits on `render` (the schema-driven decoder): `extract_to` streams
//! with memory that does not grow with the data: one walk of the `key` bucket finds the newest
//! revision of each key that may match the filter (`newest_live`; a necessary test on the key
//! alone), the live keys are put in apply order — CRDs, Namespaces, the rest, by key within a
//! stage — and rendered in batches (256 objects or 4 MiB of stored values) on all cores
//! (`map_in_file_order`), each object as its YAML document, while the previous batch goes in
//! that order to a sink that writes it at once (stdout, or `DirWriter`). Rendering decrypts,
//! renders, applies the exact filter (resource, namespace — which includes the Namespace object
//! itself —, name, `selector`, which is kubectl's `-l` grammar), drops controller-owned objects
//! and events/leases by default and strips what the API server sets. `DirWriter` refuses a
//! non-empty directory before the walk and puts one 0600 file per object (temporary name,
//! rename; one `syncfs` at the end) under `1-customresourcedefinitions/`, `2-namespaces/`,
//! `3-objects/<ns>/<resource>/` so a recursive apply keeps that order. `history` collects every
//! revision of one key from the `key` bucket (etcd keeps them all until a compaction), takes
//! each version's time from `managedFields` (or `creationTimestamp` for a creation) and diffs
//! consecutive versions without `managedFields`/`resourceVersion`. `jsondiff` is the one
//! generic field diff (RFC 6902 add/remove/replace at JSON pointers, arrays by index with
//! removals from the end so the ops apply in order), printed unified-style or as a JSON patch;
//! `inspect history` and `inspect diff -o yaml|json-patch` use it. `stats` (`inspect stats`)
//! keeps a few counters per key during the same walk — never a value — and reports per
//! resource, per namespace, the largest objects and the keys with the most revisions; resource
//! and namespace come from the key alone.

use std::io::Write;
use std::path::{Path, PathBuf};

use etcdguard_storage::keys::{map_in_file_order, newest_live};
use etcdguard_storage::SnapshotFile;
use serde_json::Value as Json;

use crate::encryption::EncryptionConfig;
use crate::render::{plain_value, render, RenderOptions, UNKNOWN_FIELDS_KEY};
use crate::selector::{labels_of, Filter};
use crate::{key_path, KeyPath, Meta, ENCRYPTED_PREFIX};

/// Metadata fields the API server sets; an apply must not carry them.
pub const STRIPPED_METADATA: [&str; 6] =
    ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink"];

/// Resources left out unless `--resource` names them: history (events), heartbeats and
/// leader locks (leases), and the API server's own bookkeeping (service IP and port ranges,
/// its endpoints as a master lease, and, since 1.33, as a peer server lease: Endpoints with
/// no name that no API serves).
pub const LEFT_OUT: [&str; 6] =
    ["events", "events.k8s.io/events", "leases", "ranges", "masterleases", "peerserverleases"];

const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// Whether extract takes objects of `resource` when the filter names none: everything but
/// [`LEFT_OUT`].
fn resource_wanted(filter: &Filter, resource: &str) -> bool {
    filter.resource.is_some() || !LEFT_OUT.contains(&resource)
}

/// Where an object goes in the apply order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    CustomResourceDefinitions,
    Namespaces,
    Objects,
}

/// One object ready for `kubectl apply`.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub key: String,
    pub path: KeyPath,
    pub stage: Stage,
    pub mod_revision: i64,
    /// Paths of objects holding fields the schema did not know (kept in the output).
    pub unknown_fields: Vec<String>,
    /// The object, stripped (see [`strip_for_apply`]), as one YAML document ([`document`]).
    /// Written by the thread that rendered it, so the object's tree never leaves that thread.
    pub yaml: String,
}

/// An object as one YAML document (apiVersion and kind first). Fields the schema did not know
/// cannot be applied (they have no names, only protobuf field numbers, and a strict `kubectl
/// apply` refuses the marker), so they move out of the object into a comment at the top of
/// the document: the file applies as it is, and nothing is lost.
pub fn document(object: &Json, unknown_fields: &[String]) -> String {
    if unknown_fields.is_empty() {
        return crate::yaml::to_yaml(object);
    }
    let mut object = object.clone();
    let mut moved = Vec::new();
    take_unknown(&mut object, "", &mut moved);
    let mut out = String::from("# etcdguard: fields unknown to its schema (written by a newer Kubernetes), by protobuf field\n# number; they are not in the object below:\n");
    for (path, fields) in moved {
        out.push_str(&format!("#   {}: {}\n", if path.is_empty() { "." } else { &path }, fields));
    }
    out.push_str(&crate::yaml::to_yaml(&object));
    out
}

impl Extracted {
    pub fn is_secret(&self) -> bool {
        self.path.resource == "secrets"
    }

    /// Its file under an `--output-dir`, in apply order when the directory is applied
    /// recursively (`kubectl apply -R -f DIR` reads files in lexical order).
    pub fn relative_path(&self) -> PathBuf {
        let file = format!("{}.yaml", safe_segment(&self.path.name));
        match self.stage {
            Stage::CustomResourceDefinitions => Path::new("1-customresourcedefinitions").join(file),
            Stage::Namespaces => Path::new("2-namespaces").join(file),
            Stage::Objects => {
                let ns = if self.path.namespace.is_empty() {
                    "_cluster".to_string()
                } else {
                    safe_segment(&self.path.namespace)
                };
                let resource = match self.path.resource.split_once('/') {
                    Some((group, name)) => format!("{name}.{group}"),
                    None => self.path.resource.clone(),
                };
                Path::new("3-objects")
                    .join(ns)
                    .join(safe_segment(&resource.replace('/', ".")))
                    .join(file)
            }
        }
    }
}

/// Removes every [`UNKNOWN_FIELDS_KEY`] object under `value`, with its path.
fn take_unknown(value: &mut Json, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Json::Object(m) => {
            if let Some(u) = m.remove(UNKNOWN_FIELDS_KEY) {
                out.push((path.to_string(), u.to_string()));
            }
            for (k, v) in m.iter_mut() {
                take_unknown(v, &format!("{path}.{k}"), out);
            }
        }
        Json::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                take_unknown(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A path segment from a name read out of the snapshot: never empty, `.`, `..` or hidden.
fn safe_segment(s: &str) -> String {
    let s = s.replace(['/', '\0'], "_");
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// A selected object that is not in the output, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
    /// Encrypted at rest and not decrypted (no config, no key, wrong key, KMS).
    pub encrypted: bool,
}

/// Removes what the API server owns from an object, keeping the rest.
pub fn strip_for_apply(object: &mut Json) {
    if let Some(Json::Object(meta)) = object.get_mut("metadata") {
        for f in STRIPPED_METADATA {
            meta.remove(f);
        }
    }
    if let Json::Object(o) = object {
        o.remove("status");
    }
}

/// The API server stores CustomResourceDefinitions as apiextensions.k8s.io/v1beta1 (JSON),
/// which no API server serves since 1.22, so they are written as v1, as the API server itself
/// converts them: the per-CRD `validation`, `subresources`, `additionalPrinterColumns` and
/// `selectableFields` go into each version that has none of its own, printer columns'
/// `JSONPath` becomes `jsonPath`, the webhook's settings move under `conversion.webhook`, and
/// `version` and a false `preserveUnknownFields` (v1 omits it) are dropped.
pub fn crd_to_v1(object: &mut Json) {
    if object.get("apiVersion").and_then(Json::as_str) != Some("apiextensions.k8s.io/v1beta1")
        || object.get("kind").and_then(Json::as_str) != Some("CustomResourceDefinition")
    {
        return;
    }
    object["apiVersion"] = Json::String("apiextensions.k8s.io/v1".into());
    let Some(spec) = object.get_mut("spec").and_then(Json::as_object_mut) else { return };
    spec.remove("version");
    let shared: Vec<(&str, Json)> = [
        ("validation", "schema"),
        ("subresources", "subresources"),
        ("additionalPrinterColumns", "additionalPrinterColumns"),
        ("selectableFields", "selectableFields"),
    ]
    .into_iter()
    .filter_map(|(from, to)| spec.remove(from).map(|v| (to, v)))
    .collect();
    if let Some(Json::Array(versions)) = spec.get_mut("versions") {
        for v in versions.iter_mut().filter_map(Json::as_object_mut) {
            for (field, value) in &shared {
                if v.get(*field).is_none_or(Json::is_null) {
                    v.insert(field.to_string(), value.clone());
                }
            }
            if let Some(Json::Array(columns)) = v.get_mut("additionalPrinterColumns") {
                for c in columns.iter_mut().filter_map(Json::as_object_mut) {
                    if let Some(path) = c.remove("JSONPath") {
                        c.insert("jsonPath".into(), path);
                    }
                }
            }
        }
    }
    if let Some(Json::Object(conversion)) = spec.get_mut("conversion") {
        let client = conversion.remove("webhookClientConfig");
        let reviews = conversion.remove("conversionReviewVersions");
        if conversion.get("strategy").and_then(Json::as_str) == Some("Webhook") {
            let mut webhook = serde_json::Map::new();
            if let Some(c) = client {
                webhook.insert("clientConfig".into(), c);
            }
            if let Some(r) = reviews {
                webhook.insert("conversionReviewVersions".into(), r);
            }
            conversion.insert("webhook".into(), Json::Object(webhook));
        }
    }
    if spec.get("preserveUnknownFields") == Some(&Json::Bool(false)) {
        spec.remove("preserveUnknownFields");
    }
}

/// An object stored in a version that a newer one took over unchanged is written in the
/// newer one: after a promotion the API server still stores the old version for a release
/// but serves only the new one (ClusterTrustBundle, DeviceTaintRule and
/// StorageVersionMigration of 1.37 are stored as beta, served as v1).
pub fn newest_same_shape_version(object: &mut Json) {
    let (Some(api_version), Some(kind)) = (
        object.get("apiVersion").and_then(Json::as_str),
        object.get("kind").and_then(Json::as_str),
    ) else {
        return;
    };
    if let Some(newer) = crate::schema::Schema::get().same_shape_newer_version(api_version, kind) {
        object["apiVersion"] = Json::String(newer);
    }
}

/// Labels the Job controller's admission puts on a Job's pod template, naming the Job's uid.
const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];

/// A Job's generated selector names its uid, which a re-created Job does not have: the API
/// server refuses it (`selector` not auto-generated). Unless the selector was set by hand
/// (`manualSelector`), it and the uid labels of the pod template are left out, and the API
/// server generates them anew.
pub fn drop_generated_job_selector(object: &mut Json) {
    if object.get("kind").and_then(Json::as_str) != Some("Job")
        || !object.get("apiVersion").and_then(Json::as_str).is_some_and(|v| v.starts_with("batch/"))
    {
        return;
    }
    let Some(spec) = object.get_mut("spec").and_then(Json::as_object_mut) else { return };
    if spec.get("manualSelector") == Some(&Json::Bool(true)) {
        return;
    }
    spec.remove("selector");
    if let Some(Json::Object(labels)) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("metadata"))
        .and_then(|m| m.get_mut("labels"))
    {
        for l in JOB_UID_LABELS {
            labels.remove(l);
        }
    }
}

fn controller_owned(object: &Json) -> bool {
    object.pointer("/metadata/ownerReferences").and_then(|r| r.as_array()).is_some_and(|refs| {
        refs.iter().any(|r| r.get("controller").and_then(Json::as_bool) == Some(true))
    })
}

/// What [`extract_to`] handed to its sink, and what it left out.
#[derive(Debug, Default)]
pub struct ExtractSummary {
    /// Objects handed to the sink.
    pub extracted: usize,
    /// Of which Secrets.
    pub secrets: usize,
    pub skipped: Vec<Skipped>,
    /// Objects left out because a controller owns them.
    pub owned: usize,
}

/// Why [`extract_to`] stopped.
#[derive(Debug)]
pub enum ExtractError {
    /// The snapshot could not be read.
    Read(String),
    /// The sink refused an object (its own error, unchanged).
    Sink(std::io::Error),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::Read(e) => f.write_str(e),
            ExtractError::Sink(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ExtractError {}

/// The apply stage an object is in, judged from its key alone (as [`extract_to`] orders the
/// keys; the rendered object's own path gives the same answer for every well-formed key).
fn key_stage(key: &[u8]) -> Stage {
    match key_path(key, None) {
        Some(p) if p.resource == CRDS => Stage::CustomResourceDefinitions,
        Some(p) if p.resource == "namespaces" => Stage::Namespaces,
        _ => Stage::Objects,
    }
}

/// The selected live objects of a snapshot, handed to `sink` one at a time in apply order, so
/// memory does not grow with the data.
///
/// One walk of the key bucket finds each candidate key's newest revision (a test on the key
/// alone; values stay in the file). The live keys are put in apply order: by stage
/// (CustomResourceDefinitions, then Namespaces, then the rest), then by key. They are rendered
/// in batches on all cores ([`map_in_file_order`]) and each batch goes to the sink in that
/// order before the next is rendered. Objects that cannot be rendered (not decrypted, an
/// encoding not understood) are listed in `skipped`, never fatal; a sink error stops the
/// extraction. `filter`'s namespace takes the Namespace object itself too, and with no
/// resource named the [`LEFT_OUT`] ones are left out. Objects a controller owns
/// (`ownerReferences` with `controller: true`) are left out unless `include_owned`, since
/// their controller makes them again (and the garbage collector removes copies that name an
/// owner uid that no longer exists).
pub fn extract_to(
    file: &SnapshotFile,
    db: &etcdguard_bolt::Db<'_>,
    prefix: &str,
    filter: &Filter,
    include_owned: bool,
    config: Option<&EncryptionConfig>,
    sink: &mut dyn FnMut(Extracted) -> std::io::Result<()>,
) -> Result<ExtractSummary, ExtractError> {
    // A batch: enough objects to keep every core busy, few enough stored bytes that the
    // rendered trees (several times the stored size; a CRD's schema is large) stay small.
    const BATCH_OBJECTS: usize = 256;
    const BATCH_BYTES: usize = 4 << 20;
    let candidate = |key: &[u8]| {
        std::str::from_utf8(key)
            .ok()
            .filter(|k| k.starts_with(prefix) && filter.may_match_key(k))
            .is_some()
    };
    let release = || file.release_resident();
    let mut live = newest_live(db, Some(&release), &candidate).map_err(ExtractError::Read)?;
    // A stable sort: keys stay in order within a stage.
    live.sort_by_cached_key(|n| key_stage(&n.key));
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, n) in live.iter().enumerate() {
        bytes += n.value.len();
        if i + 1 - start == BATCH_OBJECTS || bytes >= BATCH_BYTES || i + 1 == live.len() {
            batches.push(&live[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    // One thread renders batch after batch (on all cores) while this one hands the previous
    // batch to the sink: writing files overlaps rendering. One batch waits at most.
    let mut out = ExtractSummary::default();
    std::thread::scope(|scope| {
        let (ready, rendered) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for batch in batches {
                let done = map_in_file_order(file, batch, &|n, value| {
                    let mut why = ExtractSummary::default();
                    let object = extract_one(
                        &n.key,
                        value,
                        n.mod_revision,
                        filter,
                        include_owned,
                        config,
                        &mut why,
                    );
                    (object, why)
                });
                // The sink failed when nobody receives: stop.
                if ready.send(done).is_err() {
                    return;
                }
            }
        });
        for done in rendered {
            for (object, why) in done {
                out.skipped.extend(why.skipped);
                out.owned += why.owned;
                let Some(o) = object else { continue };
                out.extracted += 1;
                out.secrets += usize::from(o.is_secret());
                sink(o).map_err(ExtractError::Sink)?;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Renders one live value for apply, or records in `out` why it is left out (`None`).
fn extract_one(
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
    filter: &Filter,
    include_owned: bool,
    config: Option<&EncryptionConfig>,
    out: &mut ExtractSummary,
) -> Option<Extracted> {
    let key_text = String::from_utf8_lossy(key).into_owned();
    let encrypted = value.starts_with(ENCRYPTED_PREFIX);
    let skip = |reason: String| Skipped { key: key_text.clone(), reason, encrypted };
    let plain = match plain_value(key, value, config) {
        Ok(p) => p,
        Err(e) => {
            // The key alone decides whether an undecryptable value was selected.
            if key_selected(key, filter) {
                out.skipped.push(skip(format!("not decrypted: {e}")));
            }
            return None;
        }
    };
    if plain.starts_with(ENCRYPTED_PREFIX) {
        if key_selected(key, filter) {
            out.skipped.push(skip("encrypted at rest; give --encryption-config (the API server's EncryptionConfiguration) to decrypt it".into()));
        }
        return None;
    }
    let rendered = match render(&plain, Some(mod_revision), &RenderOptions::default()) {
        Ok(r) => r,
        Err(e) => {
            if key_selected(key, filter) {
                out.skipped.push(skip(e.to_string()));
            }
            return None;
        }
    };
    let meta = Meta {
        name: rendered
            .object
            .pointer("/metadata/name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        namespace: rendered
            .object
            .pointer("/metadata/namespace")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        ..Meta::default()
    };
    let mut path = key_path(key, Some(&meta))?;
    // Services and their endpoints share one key prefix.
    if let Some(r) = path.resource.strip_prefix("services/") {
        path.resource = if r == "specs" { "services".into() } else { r.to_string() };
    }
    if !object_selected(&path, &rendered.object, filter) {
        return None;
    }
    if !include_owned && controller_owned(&rendered.object) {
        out.owned += 1;
        return None;
    }
    let stage = match path.resource.as_str() {
        CRDS => Stage::CustomResourceDefinitions,
        "namespaces" => Stage::Namespaces,
        _ => Stage::Objects,
    };
    let mut object = rendered.object;
    strip_for_apply(&mut object);
    crd_to_v1(&mut object);
    drop_generated_job_selector(&mut object);
    newest_same_shape_version(&mut object);
    let yaml = document(&object, &rendered.unknown_fields);
    Some(Extracted {
        key: key_text,
        path,
        stage,
        mod_revision,
        unknown_fields: rendered.unknown_fields,
        yaml,
    })
}

/// Whether an object at `path` passes the filter (labels are checked on `object`); `-n NS`
/// takes the Namespace object NS too.
fn object_selected(path: &KeyPath, object: &Json, filter: &Filter) -> bool {
    resource_wanted(filter, &path.resource)
        && filter.selects_path(Some(path), true)
        && filter.selects_labels(&labels_of(object))
}

/// For a value that could not be read: selected judging by its key alone (labels unknown).
fn key_selected(key: &[u8], filter: &Filter) -> bool {
    let Some(path) = key_path(key, None) else { return false };
    let mut f = filter.clone();
    f.selector = None;
    object_selected(&path, &Json::Null, &f)
}

/// One file per object under a directory (see [`Extracted::relative_path`]), written as the
/// objects come: the directory must not exist or be empty, which [`DirWriter::new`] checks
/// before anything is written; each file is written to a temporary name and renamed, private
/// (0600: Secrets are among them), so no file is ever seen half-written. [`DirWriter::finish`]
/// makes them all durable at once (`syncfs`): two fsyncs per file made an extract of 60,000
/// objects wait on the disk for over a minute.
pub struct DirWriter {
    dir: PathBuf,
    created: bool,
    written: usize,
}

impl DirWriter {
    /// Refuses a `dir` that exists and is not empty. Nothing is created yet.
    pub fn new(dir: &Path) -> std::io::Result<DirWriter> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not empty; nothing was written", dir.display()),
            ));
        }
        Ok(DirWriter { dir: dir.to_path_buf(), created: false, written: 0 })
    }

    fn create_dir(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if !self.created {
            std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&self.dir)?;
            self.created = true;
        }
        Ok(())
    }

    /// Writes one object to its file; returns the file.
    pub fn write(&mut self, o: &Extracted) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        self.create_dir()?;
        let path = self.dir.join(o.relative_path());
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(parent)?;
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{}: two objects map to this file ({})", path.display(), o.key),
            ));
        }
        let tmp = parent.join(format!(
            ".{}.tmp-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(o.yaml.as_bytes())?;
        std::fs::rename(&tmp, &path)?;
        self.written += 1;
        Ok(path)
    }

    /// How many files were written so far.
    pub fn count(&self) -> usize {
        self.written
    }

    /// Creates the directory even when no object was written, and puts every file on disk;
    /// returns how many files were written.
    pub fn finish(mut self) -> std::io::Result<usize> {
        self.create_dir()?;
        let dir = std::fs::File::open(&self.dir)?;
        rustix::fs::syncfs(&dir)?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generated_job_selectors_are_left_out() {
        let labels = json!({"controller-uid": "u1", "batch.kubernetes.io/controller-uid": "u1", "job-name": "j", "app": "x"});
        let mut job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}, "template": {"metadata": {"labels": labels}}}});
        drop_generated_job_selector(&mut job);
        assert_eq!(
            job["spec"],
            json!({"template": {"metadata": {"labels": {"job-name": "j", "app": "x"}}}})
        );
        let mut manual = json!({"apiVersion": "batch/v1", "kind": "Job", "spec": {"manualSelector": true, "selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": labels}}}});
        let before = manual.clone();
        drop_generated_job_selector(&mut manual);
        assert_eq!(manual, before);
    }

    #[test]
    fn stored_crds_are_written_as_v1() {
        let mut crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1beta1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.invalid"},
            "spec": {
                "group": "example.invalid", "version": "v1", "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                "validation": {"openAPIV3Schema": {"type": "object"}}, "subresources": {"status": {}},
                "versions": [{"name": "v1", "served": true, "storage": true}, {"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "JSONPath": ".spec.size"}],
                "conversion": {"strategy": "Webhook", "webhookClientConfig": {"url": "https://127.0.0.1:9/convert"}, "conversionReviewVersions": ["v1"]},
                "preserveUnknownFields": false
            }
        });
        crd_to_v1(&mut crd);
        let columns = json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]);
        assert_eq!(
            crd,
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.invalid"},
                "spec": {
                    "group": "example.invalid", "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                    "versions": [
                        {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}, "subresources": {"status": {}}, "additionalPrinterColumns": columns},
                        {"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}, "subresources": {"status": {}}, "additionalPrinterColumns": columns}
                    ],
                    "conversion": {"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://127.0.0.1:9/convert"}, "conversionReviewVersions": ["v1"]}}
                }
            })
        );
        let mut again = crd.clone();
        crd_to_v1(&mut again);
        assert_eq!(again, crd, "v1 objects are left alone");
    }

    #[test]
    fn unknown_fields_go_to_a_comment_and_the_object_applies() {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
            "data": {"k": "v"}, "x-etcdguard-unknown-fields": {"99": [{"bytes": "bmV3"}]},
            "spec": {"list": [{"x-etcdguard-unknown-fields": {"7": [{"varint": 1}]}, "n": 1}]}});
        let yaml = document(&object, &[".".into(), ".spec.list[0]".into()]);
        assert!(yaml.starts_with("# etcdguard: fields unknown"), "{yaml}");
        assert!(
            yaml.contains("#   .: {\"99\":[{\"bytes\":\"bmV3\"}]}")
                && yaml.contains("#   .spec.list[0]: {\"7\""),
            "{yaml}"
        );
        let parsed: Json = serde_norway::from_str(&yaml).unwrap();
        assert!(!parsed.to_string().contains(UNKNOWN_FIELDS_KEY), "{yaml}");
        assert_eq!(parsed["data"]["k"], "v");
        assert_eq!(parsed["spec"]["list"][0]["n"], 1);
    }

    #[test]
    fn strips_what_the_server_owns() {
        let mut o = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "5", "creationTimestamp": "t",
                         "generation": 2, "managedFields": [], "selfLink": "/x", "labels": {"k": "v"}, "annotations": {"a": "b"}},
            "data": {"x": "y"}, "status": {"phase": "Active"}
        });
        strip_for_apply(&mut o);
        assert_eq!(
            o,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n", "labels": {"k": "v"}, "annotations": {"a": "b"}}, "data": {"x": "y"}})
        );
    }

    #[test]
    fn selection() {
        let f = Filter { namespace: Some("payments".into()), ..Filter::default() };
        let p = |r: &str, ns: &str, n: &str| KeyPath {
            resource: r.into(),
            namespace: ns.into(),
            name: n.into(),
        };
        assert!(object_selected(&p("configmaps", "payments", "a"), &Json::Null, &f));
        assert!(object_selected(&p("namespaces", "", "payments"), &Json::Null, &f));
        assert!(!object_selected(&p("namespaces", "", "other"), &Json::Null, &f));
        assert!(!object_selected(&p("configmaps", "other", "a"), &Json::Null, &f));
        assert!(
            !object_selected(&p("events", "payments", "e"), &Json::Null, &f),
            "events are left out by default"
        );
        let ev = Filter { resource: Some("events".into()), ..f.clone() };
        assert!(object_selected(&p("events", "payments", "e"), &Json::Null, &ev));
        assert!(
            crate::selector::resource_is("example.com/widgets", "widgets.example.com")
                && crate::selector::resource_is("example.com/widgets", "widgets")
        );
        assert!(
            f.may_match_key("/registry/namespaces/payments")
                && !f.may_match_key("/registry/configmaps/other/a")
        );
        let sel = Filter {
            selector: Some(crate::selector::Selector::parse("app=web").unwrap()),
            ..Filter::default()
        };
        assert!(object_selected(
            &p("pods", "x", "a"),
            &json!({"metadata": {"labels": {"app": "web"}}}),
            &sel
        ));
        assert!(!object_selected(
            &p("pods", "x", "a"),
            &json!({"metadata": {"labels": {"app": "db"}}}),
            &sel
        ));
    }

    #[test]
    fn file_layout() {
        let e = |r: &str, ns: &str, n: &str, stage| Extracted {
            key: String::new(),
            path: KeyPath { resource: r.into(), namespace: ns.into(), name: n.into() },
            stage,
            mod_revision: 1,
            unknown_fields: Vec::new(),
            yaml: String::new(),
        };
        assert_eq!(
            e(CRDS, "", "widgets.example.com", Stage::CustomResourceDefinitions).relative_path(),
            Path::new("1-customresourcedefinitions/widgets.example.com.yaml")
        );
        assert_eq!(
            e("namespaces", "", "payments", Stage::Namespaces).relative_path(),
            Path::new("2-namespaces/payments.yaml")
        );
        assert_eq!(
            e("example.com/widgets", "payments", "w", Stage::Objects).relative_path(),
            Path::new("3-objects/payments/widgets.example.com/w.yaml")
        );
        assert_eq!(
            e("clusterroles", "", "..", Stage::Objects).relative_path(),
            Path::new("3-objects/_cluster/clusterroles/_...yaml")
        );
        assert!(controller_owned(
            &json!({"metadata": {"ownerReferences": [{"controller": true}]}})
        ));
        assert!(!controller_owned(&json!({"metadata": {"ownerReferences": [{"kind": "X"}]}})));
    }
}
