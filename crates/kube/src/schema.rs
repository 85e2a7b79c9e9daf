//! The protobuf schema of the built-in Kubernetes types, as build.rs compiled it from the
//! `generated.proto` files of the `k8s-rs-pb` crate (union of Kubernetes 1.30–1.35), plus the
//! few facts the wire format does not carry and kubectl's JSON needs (see kube-storage.md §4.1).

use std::collections::HashMap;
use std::sync::OnceLock;

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
const RENAMED: &[(&str, &str)] = &[("Webhooks", "webhooks"), ("Expression", "expression"), ("Name", "name"), ("uID", "uid"), ("aPIGroup", "apiGroup")];

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

impl Schema {
    /// The built-in schema (parsed once).
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| Schema::parse(SCHEMA_TEXT))
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
                    current = Some((name.to_string(), Message { map_entry: rest.first() == Some(&"map"), fields: HashMap::new() }));
                }
                ["F", number, name, rep, k, rest @ ..] => {
                    let (Some((msg_name, msg)), Ok(number), Some(kind)) = (current.as_mut(), number.parse::<u32>(), kind(k)) else { continue };
                    let simple = msg_name.rsplit('.').next().unwrap_or_default();
                    let json_name = RENAMED.iter().find(|(p, _)| p == name).map(|(_, j)| j.to_string()).unwrap_or_else(|| name.to_string());
                    let inline = kind == Kind::Message && INLINE.iter().any(|(m, f)| *m == simple && f == name);
                    msg.fields.insert(number, Field { json_name, repeated: *rep == "r", kind, message: rest.first().map(|s| s.to_string()), inline });
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
            "apiextensions.k8s.io" => format!("apiextensions_apiserver.pkg.apis.apiextensions.{version}"),
            "apiregistration.k8s.io" => format!("kube_aggregator.pkg.apis.apiregistration.{version}"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_the_built_in_types() {
        let s = Schema::get();
        assert!(s.len() > 1000, "{} messages", s.len());
        assert_eq!(s.type_of("v1", "Pod").as_deref(), Some("api.core.v1.Pod"));
        assert_eq!(s.type_of("rbac.authorization.k8s.io/v1", "ClusterRole").as_deref(), Some("api.rbac.v1.ClusterRole"));
        assert_eq!(s.type_of("v1", "Status").as_deref(), Some("apimachinery.pkg.apis.meta.v1.Status"));
        assert_eq!(s.type_of("example.com/v1", "Widget"), None);
        let volume = s.message("api.core.v1.Volume").unwrap();
        assert!(volume.fields[&2].inline);
        let wh = s.message("api.admissionregistration.v1.ValidatingWebhookConfiguration").unwrap();
        assert_eq!(wh.fields[&2].json_name, "webhooks");
        assert!(s.message("api.core.v1.ConfigMap.DataEntry").unwrap().map_entry);
    }
}
