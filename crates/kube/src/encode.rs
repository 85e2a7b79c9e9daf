//! The inverse of [`crate::render`]: an object as `kubectl get -o json` shows it, encoded as the
//! API server stores a built-in type (`k8s\0` + `runtime.Unknown` around the protobuf object),
//! driven by the same schema.
//!
//! It exists for what must make realistic stored objects without an API server: the bench's
//! dataset and the tests, whose round trip `render(encode(x)) == x` over the golden fixtures
//! checks both directions. Fields are written in field-number order, as Go's marshaller does;
//! fields the schema does not know (and [`crate::render::UNKNOWN_FIELDS_KEY`]) are an error.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Value as Json};

use crate::schema::{Field, Kind, Message, Schema};
use crate::PROTOBUF_MAGIC;

const META: &str = "apimachinery.pkg.apis.meta.v1.";

/// Encodes `object` (with `apiVersion` and `kind`) as a stored protobuf value.
pub fn encode_object(object: &Json) -> Result<Vec<u8>, String> {
    let Json::Object(m) = object else { return Err("not a JSON object".into()) };
    let text = |k: &str| m.get(k).and_then(Json::as_str).ok_or_else(|| format!("no {k}"));
    let (api_version, kind) = (text("apiVersion")?, text("kind")?);
    let schema = Schema::get();
    let name = schema
        .type_of(api_version, kind)
        .ok_or_else(|| format!("no schema for {kind} in {api_version}"))?;
    let mut body = Map::new();
    for (k, v) in m.iter().filter(|(k, _)| *k != "apiVersion" && *k != "kind") {
        body.insert(k.clone(), v.clone());
    }
    let raw = Encoder { schema }.message(&name, &body, "")?;
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = PROTOBUF_MAGIC.to_vec();
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, &raw);
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn put_tag(out: &mut Vec<u8>, number: u32, wire: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, number: u32, b: &[u8]) {
    put_tag(out, number, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Go's `time.ParseDuration`, for what [`crate::render::go_duration`] prints.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a Go duration");
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    let ns = total.round() as i64;
    Ok(if neg { -ns } else { ns })
}

struct Encoder<'s> {
    schema: &'s Schema,
}

impl Encoder<'_> {
    fn message(
        &self,
        name: &str,
        object: &Map<String, Json>,
        path: &str,
    ) -> Result<Vec<u8>, String> {
        let message = self
            .schema
            .message(name)
            .ok_or_else(|| format!("no schema for message {name} at {path}"))?;
        // Each field's JSON value; an inline (embedded) struct collects its fields' keys.
        let mut values: Vec<(u32, &Field, Json)> = Vec::new();
        let mut inline: Vec<(u32, &Field, Map<String, Json>)> = Vec::new();
        for (number, field) in &message.fields {
            if field.inline {
                inline.push((*number, field, Map::new()));
            }
        }
        for (key, value) in object {
            if let Some((number, field)) =
                message.fields.iter().find(|(_, f)| !f.inline && f.json_name == *key)
            {
                values.push((*number, field, value.clone()));
                continue;
            }
            let owner = inline.iter_mut().find(|(_, f, _)| self.has_json_field(f, key));
            match owner {
                Some((_, _, m)) => {
                    m.insert(key.clone(), value.clone());
                }
                None => return Err(format!("{path}.{key}: not a field of {name}")),
            }
        }
        for (number, field, m) in inline {
            if !m.is_empty() {
                values.push((number, field, Json::Object(m)));
            }
        }
        values.sort_by_key(|(n, _, _)| *n);
        let mut out = Vec::new();
        for (number, field, value) in values {
            self.field(&mut out, number, field, &value, &format!("{path}.{}", field.json_name))?;
        }
        Ok(out)
    }

    /// Whether `key` is a JSON field of the inline struct `field` (or of one inline in it).
    fn has_json_field(&self, field: &Field, key: &str) -> bool {
        let Some(m) = field.message.as_deref().and_then(|n| self.schema.message(n)) else {
            return false;
        };
        m.fields.values().any(|f| {
            if f.inline {
                self.has_json_field(f, key)
            } else {
                f.json_name == key
            }
        })
    }

    fn field(
        &self,
        out: &mut Vec<u8>,
        number: u32,
        field: &Field,
        value: &Json,
        path: &str,
    ) -> Result<(), String> {
        if field.kind == Kind::Message {
            let target = field.message.as_deref().unwrap_or_default();
            let target_message = self.schema.message(target);
            if let Some(entry) = target_message.filter(|m| m.map_entry) {
                let Json::Object(m) = value else {
                    return if value.is_null() {
                        Ok(())
                    } else {
                        Err(format!("{path}: expected a map"))
                    };
                };
                for (k, v) in m {
                    let mut e = Vec::new();
                    self.map_entry(&mut e, entry, k, v, &format!("{path}.{k}"))?;
                    put_bytes(out, number, &e);
                }
                return Ok(());
            }
            if field.repeated {
                for (i, item) in array(value, path)?.iter().enumerate() {
                    put_bytes(out, number, &self.value(target, item, &format!("{path}[{i}]"))?);
                }
                return Ok(());
            }
            put_bytes(out, number, &self.value(target, value, path)?);
            return Ok(());
        }
        if field.repeated {
            for item in array(value, path)? {
                scalar(out, number, field.kind, item, path)?;
            }
            return Ok(());
        }
        scalar(out, number, field.kind, value, path)
    }

    fn map_entry(
        &self,
        out: &mut Vec<u8>,
        entry: &Message,
        key: &str,
        value: &Json,
        path: &str,
    ) -> Result<(), String> {
        let key_kind = entry.fields.get(&1).map_or(Kind::String, |f| f.kind);
        let key_json = if key_kind == Kind::String {
            Json::String(key.to_string())
        } else {
            key.parse::<Json>().map_err(|_| format!("{path}: map key"))?
        };
        scalar(out, 1, key_kind, &key_json, path)?;
        if let Some(f) = entry.fields.get(&2) {
            self.field(out, 2, f, value, path)?;
        }
        Ok(())
    }

    /// A message-typed value: the apimachinery scalars, else a nested object.
    fn value(&self, name: &str, value: &Json, path: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let text = |v: &Json| {
            v.as_str().map(str::to_string).ok_or_else(|| format!("{path}: expected a string"))
        };
        match name.strip_prefix(META) {
            Some("Time") | Some("MicroTime") => {
                if value.is_null() {
                    return Ok(out);
                }
                let t = chrono::DateTime::parse_from_rfc3339(&text(value)?)
                    .map_err(|e| format!("{path}: {e}"))?;
                if t.timestamp() != 0 {
                    put_tag(&mut out, 1, 0);
                    put_varint(&mut out, t.timestamp() as u64);
                }
                if t.timestamp_subsec_nanos() != 0 {
                    put_tag(&mut out, 2, 0);
                    put_varint(&mut out, u64::from(t.timestamp_subsec_nanos()));
                }
                return Ok(out);
            }
            Some("Duration") => {
                let ns = parse_go_duration(&text(value)?).map_err(|e| format!("{path}: {e}"))?;
                put_tag(&mut out, 1, 0);
                put_varint(&mut out, ns as u64);
                return Ok(out);
            }
            Some("FieldsV1") => return Ok(embedded_json(value)),
            Some("Verbs") => return string_items(value, path),
            _ => {}
        }
        match name {
            "apimachinery.pkg.api.resource.Quantity" => {
                put_bytes(&mut out, 1, text(value)?.as_bytes());
                Ok(out)
            }
            "apimachinery.pkg.util.intstr.IntOrString" => {
                match value {
                    Json::Number(n) => {
                        put_tag(&mut out, 1, 0);
                        put_varint(&mut out, 0);
                        put_tag(&mut out, 2, 0);
                        put_varint(
                            &mut out,
                            n.as_i64().ok_or_else(|| format!("{path}: not an integer"))? as i32
                                as i64 as u64,
                        );
                    }
                    _ => {
                        put_tag(&mut out, 1, 0);
                        put_varint(&mut out, 1);
                        put_bytes(&mut out, 3, text(value)?.as_bytes());
                    }
                }
                Ok(out)
            }
            "apimachinery.pkg.runtime.RawExtension" => Ok(embedded_json(value)),
            _ if name.ends_with(".ExtraValue") || name.ends_with(".AttestationValue") => {
                string_items(value, path)
            }
            _ => match value {
                Json::Object(m) => self.message(name, m, path),
                Json::Null => Ok(out),
                _ => Err(format!("{path}: expected an object for {name}")),
            },
        }
    }
}

fn array<'j>(value: &'j Json, path: &str) -> Result<&'j [Json], String> {
    match value {
        Json::Array(a) => Ok(a),
        Json::Null => Ok(&[]),
        _ => Err(format!("{path}: expected a list")),
    }
}

/// RawExtension and FieldsV1: the JSON text in field 1 (nothing for null).
fn embedded_json(value: &Json) -> Vec<u8> {
    let mut out = Vec::new();
    if !value.is_null() {
        put_bytes(&mut out, 1, serde_json::to_string(value).unwrap_or_default().as_bytes());
    }
    out
}

fn string_items(value: &Json, path: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for item in array(value, path)? {
        put_bytes(
            &mut out,
            1,
            item.as_str().ok_or_else(|| format!("{path}: expected strings"))?.as_bytes(),
        );
    }
    Ok(out)
}

fn scalar(
    out: &mut Vec<u8>,
    number: u32,
    kind: Kind,
    value: &Json,
    path: &str,
) -> Result<(), String> {
    let int = || {
        value
            .as_i64()
            .or_else(|| value.as_u64().map(|u| u as i64))
            .ok_or_else(|| format!("{path}: expected an integer"))
    };
    let float = || value.as_f64().ok_or_else(|| format!("{path}: expected a number"));
    match kind {
        Kind::String => {
            put_bytes(
                out,
                number,
                value.as_str().ok_or_else(|| format!("{path}: expected a string"))?.as_bytes(),
            );
        }
        Kind::Bytes => {
            let b = BASE64
                .decode(value.as_str().ok_or_else(|| format!("{path}: expected base64 text"))?)
                .map_err(|e| format!("{path}: {e}"))?;
            put_bytes(out, number, &b);
        }
        Kind::Bool => {
            put_tag(out, number, 0);
            put_varint(
                out,
                u64::from(
                    value.as_bool().ok_or_else(|| format!("{path}: expected true or false"))?,
                ),
            );
        }
        Kind::Int32 | Kind::Enum => {
            put_tag(out, number, 0);
            put_varint(out, int()? as i32 as i64 as u64);
        }
        Kind::Int64 | Kind::Uint32 | Kind::Uint64 => {
            put_tag(out, number, 0);
            put_varint(out, int()? as u64);
        }
        Kind::Sint32 | Kind::Sint64 => {
            let x = int()?;
            put_tag(out, number, 0);
            put_varint(out, ((x << 1) ^ (x >> 63)) as u64);
        }
        Kind::Fixed32 | Kind::Sfixed32 => {
            put_tag(out, number, 5);
            out.extend_from_slice(&(int()? as u32).to_le_bytes());
        }
        Kind::Float => {
            put_tag(out, number, 5);
            out.extend_from_slice(&(float()? as f32).to_bits().to_le_bytes());
        }
        Kind::Fixed64 | Kind::Sfixed64 => {
            put_tag(out, number, 1);
            out.extend_from_slice(&(int()? as u64).to_le_bytes());
        }
        Kind::Double => {
            put_tag(out, number, 1);
            out.extend_from_slice(&float()?.to_bits().to_le_bytes());
        }
        Kind::Message => return Err(format!("{path}: internal: a message as a scalar")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{go_duration, render, RenderOptions};
    use serde_json::json;

    #[test]
    fn durations_parse_back() {
        for ns in [0i64, 1, 1_500, 2_000_000, 3_500_000_000, 3_723_000_000_000, -2_000_000] {
            assert_eq!(parse_go_duration(&go_duration(ns)).unwrap(), ns, "{}", go_duration(ns));
        }
        assert!(parse_go_duration("5 parsecs").is_err());
    }

    #[test]
    fn a_config_map_round_trips() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "b", "labels": {"x": "y"}, "creationTimestamp": "2024-05-06T07:08:09Z", "generation": 3},
            "data": {"k": "v"}, "binaryData": {"b": "AAEC"}});
        let stored = encode_object(&cm).unwrap();
        assert!(stored.starts_with(PROTOBUF_MAGIC));
        assert_eq!(
            render(&stored, None, &RenderOptions { show_managed_fields: true }).unwrap().object,
            cm
        );
        let e = encode_object(&json!({"apiVersion": "v1", "kind": "ConfigMap", "nope": 1}))
            .unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
