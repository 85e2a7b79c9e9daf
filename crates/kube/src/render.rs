//! A stored value rendered as the object `kubectl get -o json` would show.
//!
//! JSON values (custom resources, CRDs, APIServices) pass through. Protobuf values are decoded
//! by one schema-driven walker (see [`crate::schema`]) for every built-in type and version.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value as Json};

use crate::encryption::{DecryptError, EncryptionConfig};
use crate::{decode_meta, unwrap_envelope, PROTOBUF_MAGIC};

/// The key under which fields unknown to the schema are kept, in the object that holds them.
pub const UNKNOWN_FIELDS_KEY: &str = "x-etcdguard-unknown-fields";

/// The CBOR self-described tag (55799) custom resources start with when stored as CBOR.
const CBOR_MAGIC: &[u8] = &[0xd9, 0xd9, 0xf7];

#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Keep `metadata.managedFields` (kubectl hides them unless asked).
    pub show_managed_fields: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The object (serialize it with [`KubectlOrder`] to put apiVersion and kind first).
    pub object: Json,
    /// JSON paths (`.spec.template.spec`) of objects that hold fields the schema does not
    /// know, kept under [`UNKNOWN_FIELDS_KEY`]. Empty for JSON values.
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Stored as CBOR (custom resources with the CBOR feature gate).
    Cbor,
    /// Protobuf of a type the schema does not have.
    UnknownType { api_version: String, kind: String },
    /// Claims to be protobuf or JSON and does not decode as such.
    Malformed(String),
    /// Not a Kubernetes object at all (still encrypted, a plain etcd key, …).
    NotAnObject,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Cbor => write!(f, "the value is stored as CBOR, which inspect cannot render yet; use -o raw to see the stored bytes"),
            RenderError::UnknownType { api_version, kind } => write!(
                f,
                "no schema for {kind} in {} (a type newer than the built-in schema); use -o raw to see the stored bytes",
                if api_version.is_empty() { "an empty apiVersion" } else { api_version }
            ),
            RenderError::Malformed(why) => write!(f, "the value does not decode: {why}; use -o raw to see the stored bytes"),
            RenderError::NotAnObject => write!(f, "the value is not a Kubernetes object (encrypted without a usable key, or not written by the API server); use -o raw to see the stored bytes"),
        }
    }
}

impl std::error::Error for RenderError {}

/// The plaintext of a stored value read under `etcd_key`: decrypted with `config` when the
/// value is encrypted at rest, else the value itself. Without a config an encrypted value
/// comes back as is (and [`render`] then says it is not an object).
pub fn plain_value<'v>(etcd_key: &[u8], value: &'v [u8], config: Option<&EncryptionConfig>) -> Result<Cow<'v, [u8]>, DecryptError> {
    match config {
        Some(c) => c.decrypt(etcd_key, value),
        None => Ok(Cow::Borrowed(value)),
    }
}

/// Renders `plain`, a stored value after decryption (protobuf `k8s\0…` or JSON).
/// With `mod_revision`, `metadata.resourceVersion` is set to it as the API server does on
/// read; without, whatever the value holds is kept.
pub fn render(plain: &[u8], mod_revision: Option<i64>, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    let (object, unknown_fields) = if plain.starts_with(PROTOBUF_MAGIC) {
        render_protobuf(plain)?
    } else if plain.starts_with(CBOR_MAGIC) {
        return Err(RenderError::Cbor);
    } else if plain.first() == Some(&b'{') {
        let v: Json = serde_json::from_slice(plain).map_err(|e| RenderError::Malformed(format!("JSON: {e}")))?;
        match v {
            Json::Object(m) => (m, Vec::new()),
            _ => return Err(RenderError::NotAnObject),
        }
    } else {
        return Err(RenderError::NotAnObject);
    };
    let mut object = object;
    if let Some(Json::Object(meta)) = object.get_mut("metadata") {
        if let Some(rev) = mod_revision {
            meta.insert("resourceVersion".into(), Json::String(rev.to_string()));
        }
        if !opts.show_managed_fields {
            meta.remove("managedFields");
        }
    }
    Ok(Rendered { object: Json::Object(object), unknown_fields })
}

/// Serializes an object with `apiVersion` and `kind` first, then the other keys in order
/// (serde_json's map is sorted, as `kubectl get -o yaml` prints them).
pub struct KubectlOrder<'a>(pub &'a Json);

impl serde::Serialize for KubectlOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Json::Object(m) = self.0 else { return self.0.serialize(s) };
        let mut out = s.serialize_map(Some(m.len()))?;
        for k in ["apiVersion", "kind"] {
            if let Some(v) = m.get(k) {
                out.serialize_entry(k, v)?;
            }
        }
        for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "apiVersion" && k.as_str() != "kind") {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

impl Rendered {
    /// Indented JSON, apiVersion and kind first.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&KubectlOrder(&self.object)).unwrap_or_default()
    }

    /// YAML, apiVersion and kind first.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&KubectlOrder(&self.object)).unwrap_or_default()
    }
}

fn render_protobuf(plain: &[u8]) -> Result<(Map<String, Json>, Vec<String>), RenderError> {
    let (api_version, kind, raw) = unwrap_envelope(plain).map_err(|e| RenderError::Malformed(format!("protobuf envelope: {e}")))?;
    let mut m = Map::new();
    m.insert("apiVersion".into(), Json::String(api_version));
    m.insert("kind".into(), Json::String(kind));
    // Metadata-only for now: the schema-driven walker replaces this.
    let mut meta = None;
    etcdguard_storage::proto::for_each_field(raw, |f, v| {
        if let (1, etcdguard_storage::proto::Value::Bytes(b)) = (f, v) {
            meta = Some(decode_meta(b)?);
        }
        Ok(())
    })
    .map_err(|e| RenderError::Malformed(format!("protobuf: {e}")))?;
    if let Some(meta) = meta {
        m.insert("metadata".into(), serde_json::to_value(meta).unwrap_or(Json::Null));
    }
    Ok((m, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_passes_through_with_resource_version() {
        let v = br#"{"kind":"Widget","apiVersion":"example.com/v1","metadata":{"name":"w","resourceVersion":"1","managedFields":[{}]},"spec":{"a":1}}"#;
        let r = render(v, Some(42), &RenderOptions::default()).unwrap();
        assert_eq!(r.object["metadata"]["resourceVersion"], "42");
        assert!(r.object["metadata"].get("managedFields").is_none());
        assert_eq!(r.object["spec"]["a"], 1);
        assert!(r.to_json_pretty().trim_start_matches(['{', '\n', ' ']).starts_with("\"apiVersion\""));
        let kept = render(v, None, &RenderOptions { show_managed_fields: true }).unwrap();
        assert_eq!(kept.object["metadata"]["resourceVersion"], "1");
        assert!(kept.object["metadata"].get("managedFields").is_some());
    }

    #[test]
    fn other_encodings_are_errors() {
        assert_eq!(render(&[0xd9, 0xd9, 0xf7, 0xa0], None, &RenderOptions::default()), Err(RenderError::Cbor));
        assert_eq!(render(b"k8s:enc:aescbc:v1:k:xx", None, &RenderOptions::default()), Err(RenderError::NotAnObject));
        assert!(matches!(render(b"{not json", None, &RenderOptions::default()), Err(RenderError::Malformed(_))));
        assert!(matches!(render(b"k8s\0\x0a\xff", None, &RenderOptions::default()), Err(RenderError::Malformed(_))));
    }
}
