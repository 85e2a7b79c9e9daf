//! A stored value rendered as the object `kubectl get -o json` would show.
//!
//! JSON values (custom resources, CRDs, APIServices) pass through. Protobuf values are decoded
//! by one schema-driven walker (see [`crate::schema`]) for every built-in type and version.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value as Json};

use crate::encryption::{DecryptError, EncryptionConfig};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use etcdguard_storage::proto::{for_each_field, read_varint, Value};

use crate::schema::{Kind, Schema};
use crate::{unwrap_envelope, PROTOBUF_MAGIC};

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
                "no schema for {kind} in {} (a type newer than the schema; --schema-dir loads a newer release's); use -o raw to see the stored bytes",
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
pub fn plain_value<'v>(
    etcd_key: &[u8],
    value: &'v [u8],
    config: Option<&EncryptionConfig>,
) -> Result<Cow<'v, [u8]>, DecryptError> {
    match config {
        Some(c) => c.decrypt(etcd_key, value),
        None => Ok(Cow::Borrowed(value)),
    }
}

/// Renders `plain`, a stored value after decryption (protobuf `k8s\0…` or JSON).
/// With `mod_revision`, `metadata.resourceVersion` is set to it as the API server does on
/// read; without, whatever the value holds is kept.
pub fn render(
    plain: &[u8],
    mod_revision: Option<i64>,
    opts: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let (object, unknown_fields) = if plain.starts_with(PROTOBUF_MAGIC) {
        render_protobuf(plain)?
    } else if plain.starts_with(CBOR_MAGIC) {
        return Err(RenderError::Cbor);
    } else if plain.first() == Some(&b'{') {
        let v: Json = serde_json::from_slice(plain)
            .map_err(|e| RenderError::Malformed(format!("JSON: {e}")))?;
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
        crate::yaml::to_yaml(&self.object)
    }
}

fn render_protobuf(plain: &[u8]) -> Result<(Map<String, Json>, Vec<String>), RenderError> {
    let (api_version, kind, raw) = unwrap_envelope(plain)
        .map_err(|e| RenderError::Malformed(format!("protobuf envelope: {e}")))?;
    let schema = Schema::get();
    let Some(message) = schema.type_of(&api_version, &kind) else {
        return Err(RenderError::UnknownType { api_version, kind });
    };
    let mut walker = Walker { schema, unknown: Vec::new() };
    let mut m = walker.message(&message, raw, "", 0).map_err(RenderError::Malformed)?;
    m.insert("apiVersion".into(), Json::String(api_version));
    m.insert("kind".into(), Json::String(kind));
    // An inline struct reports its parent's path, which the parent may report too.
    let mut seen = std::collections::HashSet::new();
    let unknown = walker.unknown.into_iter().filter(|p| seen.insert(p.clone())).collect();
    Ok((m, unknown))
}

/// Deeper nesting than this is not a real object (and would exhaust the stack).
const MAX_DEPTH: usize = 64;

struct Walker<'s> {
    schema: &'s Schema,
    unknown: Vec<String>,
}

/// The wire type's name, for unknown fields and errors.
fn wire_name(v: &Value<'_>) -> &'static str {
    match v {
        Value::Varint(_) => "varint",
        Value::Bytes(_) => "bytes",
        Value::Fixed64(_) => "fixed64",
        Value::Fixed32(_) => "fixed32",
    }
}

fn unknown_value(v: &Value<'_>) -> Json {
    let mut m = Map::new();
    match v {
        Value::Varint(x) | Value::Fixed64(x) => m.insert(wire_name(v).into(), Json::from(*x)),
        Value::Fixed32(x) => m.insert(wire_name(v).into(), Json::from(*x)),
        Value::Bytes(b) => m.insert("bytes".into(), Json::String(BASE64.encode(b))),
    };
    Json::Object(m)
}

fn number_f64(x: f64) -> Json {
    serde_json::Number::from_f64(x).map(Json::Number).unwrap_or(Json::Null)
}

/// A scalar value, or `None` when the wire type does not fit the field's kind.
fn scalar(kind: Kind, v: &Value<'_>) -> Option<Json> {
    Some(match (kind, *v) {
        (Kind::Int32, Value::Varint(x)) => Json::from(x as i32),
        (Kind::Int64, Value::Varint(x)) => Json::from(x as i64),
        (Kind::Uint32, Value::Varint(x)) => Json::from(x as u32),
        (Kind::Uint64, Value::Varint(x)) => Json::from(x),
        (Kind::Sint32, Value::Varint(x)) => {
            Json::from(((x >> 1) as i64 ^ -((x & 1) as i64)) as i32)
        }
        (Kind::Sint64, Value::Varint(x)) => Json::from((x >> 1) as i64 ^ -((x & 1) as i64)),
        (Kind::Enum, Value::Varint(x)) => Json::from(x as i32),
        (Kind::Bool, Value::Varint(x)) => Json::Bool(x != 0),
        (Kind::Fixed32, Value::Fixed32(x)) => Json::from(x),
        (Kind::Sfixed32, Value::Fixed32(x)) => Json::from(x as i32),
        (Kind::Float, Value::Fixed32(x)) => number_f64(f32::from_bits(x) as f64),
        (Kind::Fixed64, Value::Fixed64(x)) => Json::from(x),
        (Kind::Sfixed64, Value::Fixed64(x)) => Json::from(x as i64),
        (Kind::Double, Value::Fixed64(x)) => number_f64(f64::from_bits(x)),
        (Kind::String, Value::Bytes(b)) => Json::String(String::from_utf8_lossy(b).into_owned()),
        (Kind::Bytes, Value::Bytes(b)) => Json::String(BASE64.encode(b)),
        _ => return None,
    })
}

/// The values of a packed repeated scalar field.
fn packed(kind: Kind, b: &[u8]) -> Option<Vec<Json>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let v = match kind {
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => {
                let x = b.get(pos..pos + 4)?;
                pos += 4;
                Value::Fixed32(u32::from_le_bytes(x.try_into().ok()?))
            }
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => {
                let x = b.get(pos..pos + 8)?;
                pos += 8;
                Value::Fixed64(u64::from_le_bytes(x.try_into().ok()?))
            }
            Kind::String | Kind::Bytes | Kind::Message => return None,
            _ => Value::Varint(read_varint(b, &mut pos).ok()?),
        };
        out.push(scalar(kind, &v)?);
    }
    Some(out)
}

fn field_list(b: &[u8]) -> Result<Vec<(u32, Value<'_>)>, String> {
    let mut out = Vec::new();
    for_each_field(b, |f, v| {
        out.push((f, v));
        Ok(())
    })?;
    Ok(out)
}

/// `meta.v1.Time`: RFC 3339 in seconds, as the API server prints it; zero → null.
fn time_text(b: &[u8], micro: bool) -> Result<Json, String> {
    if b.is_empty() {
        return Ok(Json::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i64);
    for (f, v) in field_list(b)? {
        match (f, v) {
            (1, Value::Varint(s)) => seconds = s as i64,
            (2, Value::Varint(n)) => nanos = n as i32 as i64,
            _ => {}
        }
    }
    let t = chrono::DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| format!("time {seconds} is out of range"))?;
    Ok(Json::String(if micro {
        format!("{}.{:06}Z", t.format("%Y-%m-%dT%H:%M:%S"), nanos.clamp(0, 999_999_999) / 1000)
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `0s`, `1.5µs`, `-2ms`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let frac = |v: u64, unit: u64| -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 1_000))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 1_000_000))
    } else {
        let secs = u / 1_000_000_000;
        let (h, m) = (secs / 3600, (secs % 3600) / 60);
        let s = frac(u % 60_000_000_000, 1_000_000_000);
        if h > 0 {
            format!("{h}h{m}m{s}s")
        } else if m > 0 {
            format!("{m}m{s}s")
        } else {
            format!("{s}s")
        }
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

impl Walker<'_> {
    /// One field value of message type `name`: the special apimachinery types as scalars,
    /// others as objects.
    fn value(&mut self, name: &str, b: &[u8], path: &str, depth: usize) -> Result<Json, String> {
        const META: &str = "apimachinery.pkg.apis.meta.v1.";
        let first_bytes = |b: &[u8]| -> Result<Option<Vec<u8>>, String> {
            Ok(field_list(b)?.into_iter().find_map(|(f, v)| match (f, v) {
                (1, Value::Bytes(x)) => Some(x.to_vec()),
                _ => None,
            }))
        };
        match name.strip_prefix(META).unwrap_or(name) {
            "Time" if name.starts_with(META) => return time_text(b, false),
            "MicroTime" if name.starts_with(META) => return time_text(b, true),
            "Duration" if name.starts_with(META) => {
                let mut ns = 0i64;
                for (f, v) in field_list(b)? {
                    if let (1, Value::Varint(x)) = (f, v) {
                        ns = x as i64;
                    }
                }
                return Ok(Json::String(go_duration(ns)));
            }
            "FieldsV1" if name.starts_with(META) => {
                return Ok(self.embedded_json(&first_bytes(b)?.unwrap_or_default(), path, depth))
            }
            "Verbs" if name.starts_with(META) => return self.string_items(b),
            _ => {}
        }
        match name {
            "apimachinery.pkg.api.resource.Quantity" => {
                let s = first_bytes(b)?.unwrap_or_default();
                return Ok(Json::String(String::from_utf8_lossy(&s).into_owned()));
            }
            "apimachinery.pkg.util.intstr.IntOrString" => {
                let (mut ty, mut int_val, mut str_val) = (0u64, 0i32, String::new());
                for (f, v) in field_list(b)? {
                    match (f, v) {
                        (1, Value::Varint(x)) => ty = x,
                        (2, Value::Varint(x)) => int_val = x as i32,
                        (3, Value::Bytes(x)) => str_val = String::from_utf8_lossy(x).into_owned(),
                        _ => {}
                    }
                }
                return Ok(if ty == 0 { Json::from(int_val) } else { Json::String(str_val) });
            }
            "apimachinery.pkg.runtime.RawExtension" => {
                return Ok(self.embedded_json(&first_bytes(b)?.unwrap_or_default(), path, depth))
            }
            _ => {}
        }
        if name.ends_with(".ExtraValue") || name.ends_with(".AttestationValue") {
            return self.string_items(b);
        }
        Ok(Json::Object(self.message(name, b, path, depth + 1)?))
    }

    fn string_items(&self, b: &[u8]) -> Result<Json, String> {
        Ok(Json::Array(
            field_list(b)?
                .into_iter()
                .filter_map(|(f, v)| match (f, v) {
                    (1, Value::Bytes(x)) => {
                        Some(Json::String(String::from_utf8_lossy(x).into_owned()))
                    }
                    _ => None,
                })
                .collect(),
        ))
    }

    /// The raw bytes of a RawExtension or FieldsV1: JSON text (an object stored as protobuf
    /// inside is rendered too); anything else as a string.
    fn embedded_json(&mut self, raw: &[u8], path: &str, depth: usize) -> Json {
        if raw.is_empty() {
            return Json::Null;
        }
        if raw.starts_with(PROTOBUF_MAGIC) && depth < MAX_DEPTH {
            if let Ok((api_version, kind, inner)) = unwrap_envelope(raw) {
                if let Some(t) = self.schema.type_of(&api_version, &kind) {
                    if let Ok(mut m) = self.message(&t, inner, path, depth + 1) {
                        m.insert("apiVersion".into(), Json::String(api_version));
                        m.insert("kind".into(), Json::String(kind));
                        return Json::Object(m);
                    }
                }
            }
        }
        serde_json::from_slice(raw)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(raw).into_owned()))
    }

    /// A message as a JSON object. Fields the schema does not know (or whose wire type does
    /// not match it) are kept under [`UNKNOWN_FIELDS_KEY`] by field number.
    fn message(
        &mut self,
        name: &str,
        b: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<Map<String, Json>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "nested deeper than {MAX_DEPTH} messages at {}",
                display_path(path)
            ));
        }
        let Some(message) = self.schema.message(name) else {
            return Err(format!("no schema for message {name} at {}", display_path(path)));
        };
        let mut out = Map::new();
        let mut unknown = Map::new();
        let mut inline: Vec<Map<String, Json>> = Vec::new();
        for (number, v) in field_list(b).map_err(|e| format!("{e} at {}", display_path(path)))? {
            let Some(field) = message.fields.get(&number) else {
                push_unknown(&mut unknown, number, &v);
                continue;
            };
            let child_path =
                if field.inline { path.to_string() } else { format!("{path}.{}", field.json_name) };
            let rendered: Option<Vec<Json>> = match (field.kind, &v) {
                (Kind::Message, Value::Bytes(x)) => {
                    let target = field.message.as_deref().unwrap_or_default();
                    let is_map = self.schema.message(target).is_some_and(|m| m.map_entry);
                    if is_map {
                        let (k, val) = self.map_entry(target, x, &child_path, depth)?;
                        let entry = out
                            .entry(field.json_name.clone())
                            .or_insert_with(|| Json::Object(Map::new()));
                        if let Json::Object(m) = entry {
                            m.insert(k, val);
                        }
                        continue;
                    }
                    let item_path = if field.repeated {
                        let n = out
                            .get(&field.json_name)
                            .and_then(|a| a.as_array())
                            .map_or(0, |a| a.len());
                        format!("{child_path}[{n}]")
                    } else {
                        child_path.clone()
                    };
                    let val = self.value(target, x, &item_path, depth)?;
                    if field.inline {
                        if let Json::Object(m) = val {
                            inline.push(m);
                        }
                        continue;
                    }
                    Some(vec![val])
                }
                (Kind::Message, _) => None,
                (k, Value::Bytes(x))
                    if field.repeated && !matches!(k, Kind::String | Kind::Bytes) =>
                {
                    packed(k, x)
                }
                (k, v) => scalar(k, v).map(|j| vec![j]),
            };
            let Some(values) = rendered else {
                push_unknown(&mut unknown, number, &v);
                continue;
            };
            if field.repeated {
                let entry =
                    out.entry(field.json_name.clone()).or_insert_with(|| Json::Array(Vec::new()));
                if let Json::Array(a) = entry {
                    a.extend(values);
                }
            } else if let Some(val) = values.into_iter().next() {
                if omitted(field, &val) {
                    out.remove(&field.json_name);
                    continue;
                }
                out.insert(field.json_name.clone(), val);
            }
        }
        // A nil slice, map or pointer without omitempty prints as null (only the Go types tell).
        for field in message.fields.values() {
            if let Some(g) = field.go {
                if !g.inline
                    && !g.hidden
                    && !g.omitempty
                    && !g.omitzero
                    && (g.collection || g.pointer)
                    && !out.contains_key(&field.json_name)
                {
                    out.insert(field.json_name.clone(), Json::Null);
                }
            }
        }
        for m in inline {
            for (k, v) in m {
                match (k.as_str(), out.get_mut(&k), v) {
                    (UNKNOWN_FIELDS_KEY, Some(Json::Object(mine)), Json::Object(theirs)) => {
                        mine.extend(theirs)
                    }
                    (_, _, v) => {
                        out.insert(k, v);
                    }
                }
            }
        }
        if !unknown.is_empty() {
            self.unknown.push(display_path(path));
            match out.get_mut(UNKNOWN_FIELDS_KEY) {
                Some(Json::Object(mine)) => mine.extend(unknown),
                _ => {
                    out.insert(UNKNOWN_FIELDS_KEY.into(), Json::Object(unknown));
                }
            }
        }
        Ok(out)
    }

    /// One `map<K, V>` entry: the key as text, the value rendered.
    fn map_entry(
        &mut self,
        name: &str,
        b: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<(String, Json), String> {
        let message = self.schema.message(name).ok_or_else(|| format!("no schema for {name}"))?;
        let (mut key, mut value) = (String::new(), None);
        for (number, v) in field_list(b)? {
            let Some(field) = message.fields.get(&number) else { continue };
            match (number, field.kind, &v) {
                (1, k, v) => {
                    key = match scalar(k, v) {
                        Some(Json::String(s)) => s,
                        Some(other) => other.to_string(),
                        None => continue,
                    }
                }
                (2, Kind::Message, Value::Bytes(x)) => {
                    let target = field.message.clone().unwrap_or_default();
                    value = Some(self.value(&target, x, &format!("{path}.{key}"), depth)?);
                }
                (2, k, v) => value = scalar(k, v),
                _ => {}
            }
        }
        // Go writes an absent value as its zero value: "" for strings, {} for structs.
        let value = value.unwrap_or_else(|| match message.fields.get(&2).map(|f| f.kind) {
            Some(Kind::Message) => Json::Object(Map::new()),
            Some(Kind::String) | Some(Kind::Bytes) => Json::String(String::new()),
            Some(Kind::Bool) => Json::Bool(false),
            _ => Json::from(0),
        });
        Ok((key, value))
    }
}

/// Whether kubectl's JSON leaves out this value of a singular field. With the Go types
/// (`--schema-dir`): a zero of a plain (non-pointer) field tagged omitempty (scalars) or
/// omitzero (structs; omitempty does not drop those). Without them the wire cannot tell a
/// plain zero from a pointer set to zero, so zeros are shown, except empty strings: Go omits
/// most of them, and one is what an unset field looks like.
fn omitted(field: &crate::schema::Field, val: &Json) -> bool {
    let zero = match val {
        Json::Null => true,
        Json::Bool(b) => !b,
        Json::Number(n) => n.as_f64() == Some(0.0),
        Json::String(s) => s.is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(m) => m.is_empty(),
    };
    match field.go {
        Some(g) => {
            zero && !g.pointer
                && if field.kind == Kind::Message { g.omitzero } else { g.omitempty || g.omitzero }
        }
        None => field.kind == Kind::String && val.as_str() == Some(""),
    }
}

fn push_unknown(unknown: &mut Map<String, Json>, number: u32, v: &Value<'_>) {
    let entry = unknown.entry(number.to_string()).or_insert_with(|| Json::Array(Vec::new()));
    if let Json::Array(a) = entry {
        a.push(unknown_value(v));
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        path.to_string()
    }
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
        assert!(r
            .to_json_pretty()
            .trim_start_matches(['{', '\n', ' '])
            .starts_with("\"apiVersion\""));
        let kept = render(v, None, &RenderOptions { show_managed_fields: true }).unwrap();
        assert_eq!(kept.object["metadata"]["resourceVersion"], "1");
        assert!(kept.object["metadata"].get("managedFields").is_some());
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(2_000_000), "2ms");
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(-60_000_000_000), "-1m0s");
        assert_eq!(go_duration(999), "999ns");
        assert_eq!(time_text(&[], false).unwrap(), Json::Null);
        assert_eq!(
            time_text(&[0x08, 0x01, 0x10, 0xe8, 0x07], true).unwrap(),
            "1970-01-01T00:00:01.000001Z"
        );
    }

    #[test]
    fn other_encodings_are_errors() {
        assert_eq!(
            render(&[0xd9, 0xd9, 0xf7, 0xa0], None, &RenderOptions::default()),
            Err(RenderError::Cbor)
        );
        assert_eq!(
            render(b"k8s:enc:aescbc:v1:k:xx", None, &RenderOptions::default()),
            Err(RenderError::NotAnObject)
        );
        assert!(matches!(
            render(b"{not json", None, &RenderOptions::default()),
            Err(RenderError::Malformed(_))
        ));
        assert!(matches!(
            render(b"k8s\0\x0a\xff", None, &RenderOptions::default()),
            Err(RenderError::Malformed(_))
        ));
    }
}
