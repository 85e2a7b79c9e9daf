//! Kubernetes objects as the API server stores them in etcd.
//!
//! A value under `/registry/…` is one of:
//! - protobuf: the magic `k8s\0`, then a `runtime.Unknown` message — field 1 `typeMeta`
//!   {1 apiVersion, 2 kind}, field 2 `raw` (the object's own message), 3 contentEncoding,
//!   4 contentType. Every top-level object carries its `ObjectMeta` as field 1 of `raw`;
//! - JSON (custom resources, and servers configured for it);
//! - encrypted at rest: `k8s:enc:<provider>:v1:<key name>:` then ciphertext.
//!
//! [`decode`] reads what every object has — apiVersion, kind and metadata — from all three
//! without a schema per type; the full protobuf body of built-in types is not decoded here.
//!
//! ## How it works
//!
//! `decode` tells a value's encoding (the `k8s\0` protobuf envelope, JSON, the `k8s:enc:`
//! marker of encryption at rest) and reads what every object has — apiVersion, kind and
//! `ObjectMeta` — with the wire reader of `storage::proto`, without a schema per type (what
//! `list`, `diff` and filters need, fast). `render` prints a whole object as kubectl would:
//! JSON passes through; protobuf is walked by one generic decoder over `schema`, a field table
//! that `build.rs` compiles (protox) from the `generated.proto` files shipped in the
//! `k8s-rs-pb` registry crate (Kubernetes 1.30–1.35, union by message and field number, newest
//! name wins; nothing upstream is kept in the repository). `--schema-dir` compiles a newer
//! release's files (a k8s.io/api Go module and the k8s.io/apimachinery beside it) the same way
//! at run time (`proto_table.rs` is shared with `build.rs`) and lays them over the built-in
//! table; `schema::activate` makes that the process's schema before anything renders. Those
//! modules also ship their Go types: `go_types` reads each struct field's pointer-ness and
//! `json` tag by its protobuf number, so zeros of plain `omitempty` fields are left out and nil
//! slices print `null` exactly as the API server's JSON does (the built-in schema cannot know:
//! it shows zeros, and drops empty strings). What the wire does not say is in `schema.rs`: the
//! JSON names that differ from proto names, the embedded (inline) structs, and the apimachinery
//! types printed as scalars (Time, MicroTime, Duration, Quantity, IntOrString, RawExtension,
//! FieldsV1, named string slices). Empty strings are omitted (Go's `omitempty`; the wire cannot
//! tell which fields have it). Fields not in the schema are kept under
//! `x-etcdguard-unknown-fields` by number and their paths returned. `encode` is its inverse
//! (kubectl's JSON of a built-in type → the stored `k8s\0` envelope, over the same schema); the
//! bench's dataset is made with it, and every fixture the schema knows round-trips through
//! both. `yaml` writes objects as `kubectl get -o yaml` does (block style, apiVersion and kind
//! first, literal blocks for text, double quotes for any string a YAML reader could take for
//! something else); it replaced serde_norway's emitter, which wrote 23–39 MB/s. `inspect` holds
//! the single-key logic of `inspect get` (newest value, decrypt, render, etcd facts).
//! `key_path` splits `/registry/…` keys into resource, namespace and name with the object's own
//! metadata. Its tests decode every golden fixture of kubernetes/api (`tests/fixtures/`, with
//! their license note) and compare with the JSON twin (`render_fixtures`: whole objects; 96 of
//! 130 equal, the other 34 are 1.36+ types or fields, whose known part must still match;
//! `schema_dir`: with the newest k8s.io/api from the Go module cache all 130 are equal).
//! `storage::keys::for_each_revision` feeds it the `key` bucket in revision order. `listing` is
//! what `inspect list` and `inspect diff` show: one walk finds each live key's newest revision
//! (`storage::keys::newest_live`: keys copied, values left in the file), then
//! `storage::keys::map_in_file_order` decodes the values on all cores, in the order they lie in
//! the file and copied out with positioned reads (`MappedFile::copy_out`: mapping and dropping
//! every page of a 1 GiB file cost more than the copy). `map_newest_live` does both at once:
//! during the walk a second core already decodes revisions as they come (most are their key's
//! newest), and only what it missed is decoded afterwards. `list` hands each selected entry to
//! the caller's row renderer on those threads, so memory holds rows of text, not objects.
//! `Filter` is kubectl's selection (resource with or without group, namespace, name, `-l`).
//! `diff` compares two snapshots' `LiveKeys` (each live key's revision, size and crc32c of its
//! value, from the same walk; values stay in the file), merges the two key-sorted lists, and
//! decodes only the changed keys, 1024 or 32 MiB of values at a time, handing them to the
//! caller in key order: `inspect diff` prints each one as it comes (a JSON array element by
//! element), so its memory does not grow with the snapshots (~80 MiB on two 1 GiB snapshots).

pub mod encode;
pub mod encryption;
pub mod extract;
pub mod go_types;
pub mod history;
pub mod inspect;
pub mod jsondiff;
pub mod listing;
mod proto_table;
pub mod render;
pub mod schema;
pub mod selector;
pub mod stats;
pub mod yaml;

use std::collections::BTreeMap;

use etcdguard_storage::proto::{for_each_field, Value};
use serde::Serialize;

pub const PROTOBUF_MAGIC: &[u8; 4] = b"k8s\0";
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

/// How a value is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Protobuf,
    Json,
    /// Encrypted at rest by this provider (`aescbc`, `aesgcm`, `secretbox`, `kms`, …).
    Encrypted(String),
    /// Not a Kubernetes object (e.g. a plain etcd key).
    Other,
}

/// The fields of `ObjectMeta` a listing or a diff needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// What [`decode`] finds in a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub encoding: Encoding,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `None` when the value is encrypted, not an object, or its metadata does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Meta>,
    /// Set when the value is encrypted at rest (see [`decode_stored`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionState>,
}

/// How an encrypted-at-rest value was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionState {
    /// Provider and key name from the value's marker; `None` when the marker does not read.
    #[serde(flatten)]
    pub marker: Option<encryption::Marker>,
    /// The object fields were read from the decrypted value.
    pub decrypted: bool,
    /// Why it was not decrypted (absent when no encryption config was given and the marker reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<encryption::DecryptError>,
}

/// Like [`decode`], and with `config` decrypts an encrypted-at-rest value read under
/// `etcd_key` first. A value that does not decrypt comes back as `Encoding::Encrypted` with
/// the reason in `encryption.error`; it never fails as a whole.
pub fn decode_stored(
    etcd_key: &[u8],
    value: &[u8],
    config: Option<&encryption::EncryptionConfig>,
) -> Object {
    let marker = match config {
        Some(c) => c.marker(value),
        None => encryption::marker(value),
    };
    let Some(marker) = marker else {
        return decode(value);
    };
    let (marker, error) = match marker {
        Err(e) => (None, Some(e)),
        Ok(m) => match config.map(|c| c.decrypt(etcd_key, value)) {
            Some(Ok(plain)) => {
                let mut object = decode(&plain);
                object.encryption =
                    Some(EncryptionState { marker: Some(m), decrypted: true, error: None });
                return object;
            }
            Some(Err(e)) => (Some(m), Some(e)),
            None => (Some(m), None),
        },
    };
    let mut object = decode(value);
    object.encryption = Some(EncryptionState { marker, decrypted: false, error });
    object
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// `metav1.Time` {1 seconds, 2 nanos} as the API's JSON writes it (RFC 3339, seconds).
fn time(b: &[u8]) -> Result<String, String> {
    let mut seconds = 0i64;
    for_each_field(b, |f, v| {
        if let (1, Value::Varint(s)) = (f, v) {
            seconds = s as i64;
        }
        Ok(())
    })?;
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .ok_or_else(|| format!("time {seconds} is out of range"))
}

/// A `map<string, string>` entry {1 key, 2 value}.
fn map_entry(b: &[u8]) -> Result<(String, String), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for_each_field(b, |f, val| {
        match (f, val) {
            (1, Value::Bytes(x)) => k = text(x)?,
            (2, Value::Bytes(x)) => v = text(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((k, v))
}

/// Decodes a protobuf `ObjectMeta`.
pub fn decode_meta(b: &[u8]) -> Result<Meta, String> {
    let mut m = Meta::default();
    for_each_field(b, |f, v| {
        match (f, v) {
            (1, Value::Bytes(x)) => m.name = text(x)?,
            (2, Value::Bytes(x)) => m.generate_name = text(x)?,
            (3, Value::Bytes(x)) => m.namespace = text(x)?,
            (5, Value::Bytes(x)) => m.uid = text(x)?,
            (6, Value::Bytes(x)) => m.resource_version = text(x)?,
            (7, Value::Varint(x)) => m.generation = Some(x as i64),
            (8, Value::Bytes(x)) => m.creation_timestamp = Some(time(x)?),
            (9, Value::Bytes(x)) => m.deletion_timestamp = Some(time(x)?),
            (11, Value::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                m.labels.insert(k, v);
            }
            (12, Value::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                m.annotations.insert(k, v);
            }
            (14, Value::Bytes(x)) => m.finalizers.push(text(x)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

/// The JSON form of the same fields.
fn meta_from_json(v: &serde_json::Value) -> Meta {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let map = |k: &str| -> BTreeMap<String, String> {
        v.get(k)
            .and_then(|x| x.as_object())
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    Meta {
        name: s("name"),
        generate_name: s("generateName"),
        namespace: s("namespace"),
        uid: s("uid"),
        resource_version: s("resourceVersion"),
        generation: v.get("generation").and_then(|x| x.as_i64()),
        creation_timestamp: v.get("creationTimestamp").and_then(|x| x.as_str()).map(str::to_string),
        deletion_timestamp: v.get("deletionTimestamp").and_then(|x| x.as_str()).map(str::to_string),
        labels: map("labels"),
        annotations: map("annotations"),
        finalizers: v
            .get("finalizers")
            .and_then(|x| x.as_array())
            .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    }
}

/// The protobuf envelope: (apiVersion, kind, raw object bytes).
pub fn unwrap_envelope(value: &[u8]) -> Result<(String, String, &[u8]), String> {
    let body = value.strip_prefix(PROTOBUF_MAGIC).ok_or("no k8s protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for_each_field(body, |f, v| {
        match (f, v) {
            (1, Value::Bytes(tm)) => for_each_field(tm, |f, v| {
                match (f, v) {
                    (1, Value::Bytes(x)) => api_version = text(x)?,
                    (2, Value::Bytes(x)) => kind = text(x)?,
                    _ => {}
                }
                Ok(())
            })?,
            (2, Value::Bytes(x)) => raw = x,
            _ => {}
        }
        Ok(())
    })?;
    Ok((api_version, kind, raw))
}

/// Reads what every stored object has, whatever its encoding. Never fails: a value that does
/// not decode as what it claims to be comes back without metadata.
pub fn decode(value: &[u8]) -> Object {
    if value.starts_with(PROTOBUF_MAGIC) {
        return match unwrap_envelope(value) {
            Ok((api_version, kind, raw)) => {
                let mut metadata = None;
                let _ = for_each_field(raw, |f, v| {
                    if let (1, Value::Bytes(m)) = (f, v) {
                        metadata = decode_meta(m).ok();
                    }
                    Ok(())
                });
                Object {
                    encoding: Encoding::Protobuf,
                    api_version,
                    kind,
                    metadata,
                    encryption: None,
                }
            }
            Err(_) => Object {
                encoding: Encoding::Protobuf,
                api_version: String::new(),
                kind: String::new(),
                metadata: None,
                encryption: None,
            },
        };
    }
    if let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) {
        let provider = rest
            .split(|&b| b == b':')
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        return Object {
            encoding: Encoding::Encrypted(provider),
            api_version: String::new(),
            kind: String::new(),
            metadata: None,
            encryption: None,
        };
    }
    if value.first() == Some(&b'{') {
        if let Some(h) = json_head(value) {
            let s = |v: Option<serde_json::Value>| {
                v.as_ref().and_then(|x| x.as_str()).unwrap_or_default().to_string()
            };
            return Object {
                encoding: Encoding::Json,
                api_version: s(h.api_version),
                kind: s(h.kind),
                metadata: h.metadata.as_ref().map(meta_from_json),
                encryption: None,
            };
        }
    }
    Object {
        encoding: Encoding::Other,
        api_version: String::new(),
        kind: String::new(),
        metadata: None,
        encryption: None,
    }
}

/// The fields of a JSON object that [`decode`] reads.
#[derive(Default)]
struct JsonHead {
    api_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    metadata: Option<serde_json::Value>,
}

/// apiVersion, kind and metadata of a JSON object, read up to where all three have been
/// seen: the API server writes them first, and the rest (a CRD's schema can be hundreds of
/// KiB) is then neither parsed nor read from the file. `None` when the value is not a JSON
/// object, or breaks off before the three were found.
fn json_head(value: &[u8]) -> Option<JsonHead> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    #[derive(serde::Deserialize)]
    #[serde(field_identifier)]
    enum Field {
        #[serde(rename = "apiVersion")]
        ApiVersion,
        #[serde(rename = "kind")]
        Kind,
        #[serde(rename = "metadata")]
        Metadata,
        #[serde(other)]
        Other,
    }
    /// Fills the head; sets the flag when it stops before the object's end.
    struct HeadVisitor<'h>(&'h mut JsonHead, &'h mut bool);
    impl<'de> Visitor<'de> for HeadVisitor<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let head = self.0;
            while let Some(field) = map.next_key::<Field>()? {
                match field {
                    Field::ApiVersion => head.api_version = Some(map.next_value()?),
                    Field::Kind => head.kind = Some(map.next_value()?),
                    Field::Metadata => head.metadata = Some(map.next_value()?),
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if head.api_version.is_some() && head.kind.is_some() && head.metadata.is_some() {
                    // Stop here: the parser then reports the unread rest, which is ignored.
                    *self.1 = true;
                    return Ok(());
                }
            }
            Ok(())
        }
    }
    let mut head = JsonHead::default();
    let mut stopped_early = false;
    let mut de = serde_json::Deserializer::from_slice(value);
    let whole =
        de.deserialize_map(HeadVisitor(&mut head, &mut stopped_early)).and_then(|()| de.end());
    (whole.is_ok() || stopped_early).then_some(head)
}

/// A `/registry/…` key split as the API server builds it: `<prefix>/<resource>[/<namespace>]/<name>`,
/// where the resource may carry its group (`apiregistration.k8s.io/apiservices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyPath {
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

/// Splits `key` using the object's own namespace and name when known (the key alone cannot
/// tell `group/resource/name` from `resource/namespace/name`).
pub fn key_path(key: &[u8], meta: Option<&Meta>) -> Option<KeyPath> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key
        .strip_prefix("/registry/")
        .or_else(|| key.strip_prefix('/').and_then(|k| k.split_once('/').map(|(_, r)| r)))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (name, before) = parts.split_last()?;
    match meta {
        Some(m)
            if !m.namespace.is_empty()
                && before.last() == Some(&m.namespace.as_str())
                && before.len() >= 2 =>
        {
            Some(KeyPath {
                resource: before[..before.len() - 1].join("/"),
                namespace: m.namespace.clone(),
                name: name.to_string(),
            })
        }
        Some(_) | None if !before.is_empty() => {
            // Without metadata, assume core-style `resource/namespace/name` for three parts.
            if meta.is_none() && before.len() == 2 && !before[0].contains('.') {
                Some(KeyPath {
                    resource: before[0].into(),
                    namespace: before[1].into(),
                    name: name.to_string(),
                })
            } else {
                Some(KeyPath {
                    resource: before.join("/"),
                    namespace: String::new(),
                    name: name.to_string(),
                })
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_and_foreign_values() {
        let o = decode(b"k8s:enc:aescbc:v1:key1:\x00\x01garbage");
        assert_eq!(o.encoding, Encoding::Encrypted("aescbc".into()));
        assert_eq!(o.metadata, None);
        assert_eq!(decode(b"plain value").encoding, Encoding::Other);
        let broken = decode(b"k8s\0\x0a\xff\xff");
        assert_eq!(broken.encoding, Encoding::Protobuf);
        assert_eq!(broken.metadata, None);
    }

    #[test]
    fn json_objects_are_read_up_to_their_head() {
        let whole = decode(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"n","labels":{"x":"y"}},"data":{"k":"v"}}"#);
        assert_eq!(
            (whole.encoding, whole.api_version.as_str(), whole.kind.as_str()),
            (Encoding::Json, "v1", "ConfigMap")
        );
        assert_eq!(
            whole.metadata.as_ref().map(|m| (
                m.name.as_str(),
                m.namespace.as_str(),
                m.labels["x"].as_str()
            )),
            Some(("a", "n", "y"))
        );
        // Once the head is read, the rest is not: a body cut short still lists.
        let cut = decode(br#"{"kind":"Widget","apiVersion":"example.com/v1","metadata":{"name":"w"},"spec":{"size": [1, 2"#);
        assert_eq!(
            (cut.encoding, cut.kind.as_str(), cut.metadata.map(|m| m.name)),
            (Encoding::Json, "Widget", Some("w".to_string()))
        );
        // Keys in any order, escaped, or before the head.
        let late = decode(br#"{"spec":{"a":[{"b":"}"}]},"metadat\u0061":{"name":"m"},"kind":"K","apiVersion":"v"}"#);
        assert_eq!(
            (late.encoding, late.metadata.map(|m| m.name)),
            (Encoding::Json, Some("m".to_string()))
        );
        // Without all three the whole object must parse.
        let no_meta = decode(br#"{"apiVersion":"v1","kind":"K"}"#);
        assert_eq!((no_meta.encoding, no_meta.metadata), (Encoding::Json, None));
        assert_eq!(decode(br#"{"apiVersion":"v1","kind":"K","spec":"#).encoding, Encoding::Other);
        assert_eq!(decode(br#"{"apiVersion":"v1"} trailing"#).encoding, Encoding::Other);
        assert_eq!(decode(b"{not json").encoding, Encoding::Other);
    }

    #[test]
    fn key_paths() {
        let m = Meta { namespace: "kube-system".into(), name: "coredns".into(), ..Meta::default() };
        assert_eq!(
            key_path(b"/registry/configmaps/kube-system/coredns", Some(&m)),
            Some(KeyPath {
                resource: "configmaps".into(),
                namespace: "kube-system".into(),
                name: "coredns".into()
            })
        );
        let cr = Meta { namespace: "team-a".into(), name: "w1".into(), ..Meta::default() };
        assert_eq!(
            key_path(b"/registry/example.com/widgets/team-a/w1", Some(&cr)).unwrap().resource,
            "example.com/widgets"
        );
        let cluster = Meta { name: "v1.apps".into(), ..Meta::default() };
        let p = key_path(b"/registry/apiregistration.k8s.io/apiservices/v1.apps", Some(&cluster))
            .unwrap();
        assert_eq!(
            (p.resource.as_str(), p.namespace.as_str()),
            ("apiregistration.k8s.io/apiservices", "")
        );
        assert_eq!(key_path(b"/registry/secrets/default/s1", None).unwrap().namespace, "default");
        assert_eq!(key_path(b"not-a-registry-key", None), None);
    }
}
