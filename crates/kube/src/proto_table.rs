//! A compiled set of Kubernetes `generated.proto` files as the schema table that
//! [`crate::schema`] reads. Shared by build.rs (the built-in schema, compiled into the binary)
//! and `--schema-dir` (a k8s.io/api release loaded at run time), so both read the files the
//! same way:
//!
//! ```text
//! M <message full name> [map]
//! F <number> <proto field name> <r|s> <kind> [<message full name>]
//! ```

use std::collections::BTreeMap;

use protox::prost_reflect::{Cardinality, DescriptorPool, Kind};

/// message → (is a map entry, field number → its `F` line).
pub type Table = BTreeMap<String, (bool, BTreeMap<u32, String>)>;

/// Upstream packages are `k8s.io.api.core.v1`; the registry crate's (and so the schema's)
/// are `api.core.v1`.
fn normalized(full_name: &str) -> &str {
    full_name.strip_prefix("k8s.io.").unwrap_or(full_name)
}

/// Adds every message of `pool` to `table`; a field number already there takes the pool's
/// name and type (a newer release wins), fields the pool lacks are kept (older objects).
pub fn add_pool(pool: &DescriptorPool, table: &mut Table) {
    for m in pool.all_messages() {
        let entry = table.entry(normalized(m.full_name()).to_string()).or_default();
        entry.0 = m.is_map_entry();
        for f in m.fields() {
            let (kind, target) = match f.kind() {
                Kind::Message(t) => ("message", normalized(t.full_name()).to_string()),
                Kind::Enum(_) => ("enum", String::new()),
                k => (scalar(&k), String::new()),
            };
            let rep = if f.cardinality() == Cardinality::Repeated { "r" } else { "s" };
            entry.1.insert(
                f.number(),
                format!("F {} {} {rep} {kind} {target}", f.number(), f.name())
                    .trim_end()
                    .to_string(),
            );
        }
    }
}

pub fn to_text(table: &Table) -> String {
    let mut out = String::new();
    for (name, (map, fields)) in table {
        out.push_str(&format!("M {name}{}\n", if *map { " map" } else { "" }));
        for line in fields.values() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn scalar(k: &Kind) -> &'static str {
    match k {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) | Kind::Enum(_) => unreachable!("handled by the caller"),
    }
}
