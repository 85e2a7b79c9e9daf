//! What a release's Go types say about JSON that its `generated.proto` does not: whether a
//! field is a pointer and whether its `json` tag has `omitempty`/`omitzero`. The wire cannot
//! tell a zero written for a plain field (Go's protobuf code writes every non-pointer scalar,
//! zero or not) from a pointer set to zero, yet `kubectl get -o json` omits the first and
//! shows the second; and a nil slice without `omitempty` prints as `null`.
//!
//! Read from the `.go` files beside each `generated.proto` of a `--schema-dir` module (the
//! k8s.io/api and k8s.io/apimachinery modules ship them), by the `protobuf:"…,N,…"` part of
//! each field's tag, which names the proto field number.

use std::collections::HashMap;
use std::path::Path;

/// Struct name → proto field number → (field, its JSON name).
pub type Fields = HashMap<String, HashMap<u32, (GoField, String)>>;

/// One Go struct field, as JSON treats its zero value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoField {
    pub pointer: bool,
    /// A slice or map (nil prints as `null` without `omitempty`).
    pub collection: bool,
    pub omitempty: bool,
    pub omitzero: bool,
    /// Embedded without a name, or `json:",inline"`: its fields go into the parent.
    pub inline: bool,
    /// `json:"-"`: not in JSON at all (types that print as a scalar).
    pub hidden: bool,
}

/// Struct name → proto field number → (field, its JSON name), for the Go files of `dir`
/// (tests and generated code left out).
pub fn scan_dir(dir: &Path) -> std::io::Result<Fields> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.ends_with(".go")
            || name.ends_with("_test.go")
            || name.starts_with("zz_generated")
            || name.starts_with("generated.")
        {
            continue;
        }
        scan_source(&std::fs::read_to_string(&path)?, &mut out);
    }
    Ok(out)
}

fn scan_source(source: &str, out: &mut Fields) {
    let mut current: Option<String> = None;
    let mut depth = 0usize;
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        // Braces count only outside the tag (backticks hold no code).
        let before_tag = code.split('`').next().unwrap_or_default();
        let Some(name) = &current else {
            let t = code.trim();
            if let Some(rest) = t.strip_prefix("type ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.len() >= 3 && words[1] == "struct" && words[2] == "{" {
                    current = Some(words[0].to_string());
                    depth = 1;
                }
            }
            continue;
        };
        if depth == 1 {
            if let Some((number, field)) = field_of(line) {
                out.entry(name.clone()).or_default().insert(number, field);
            }
        }
        depth += before_tag.matches('{').count();
        depth = depth.saturating_sub(before_tag.matches('}').count());
        if depth == 0 {
            current = None;
        }
    }
}

/// `Name Type `json:"name,omitempty" protobuf:"varint,3,opt,name=name"``
fn field_of(line: &str) -> Option<(u32, (GoField, String))> {
    let (decl, rest) = line.split_once('`')?;
    let tag = rest.split('`').next()?;
    let number: u32 = tag_value(tag, "protobuf")?.split(',').nth(1)?.parse().ok()?;
    let words: Vec<&str> = decl.split_whitespace().collect();
    let ty = match words.as_slice() {
        [_, ty @ ..] if !ty.is_empty() => ty.join(" "),
        [embedded] => embedded.to_string(),
        _ => return None,
    };
    let json = tag_value(tag, "json").unwrap_or_default();
    let mut options = json.split(',');
    let json_name = options.next().unwrap_or_default();
    let options: Vec<&str> = options.collect();
    let field = GoField {
        pointer: ty.starts_with('*'),
        collection: ty.starts_with("[]") || ty.starts_with("map["),
        omitempty: options.contains(&"omitempty"),
        omitzero: options.contains(&"omitzero"),
        // An embedded struct with a name in its tag (`metav1.ObjectMeta `json:"metadata"``)
        // is an ordinary field; without one, or `,inline`, its fields go into the parent.
        inline: (words.len() == 1 && json_name.is_empty()) || options.contains(&"inline"),
        hidden: json_name == "-",
    };
    Some((number, (field, json_name.to_string())))
}

/// The value of `key:"…"` in a struct tag.
fn tag_value<'t>(tag: &'t str, key: &str) -> Option<&'t str> {
    let start = tag.find(&format!("{key}:\""))? + key.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_struct_fields_by_proto_number() {
        let src = "package v1\n\n// A thing.\ntype Thing struct {\n\tmetav1.TypeMeta `json:\",inline\"`\n\
                   \tmetav1.ObjectMeta `json:\"metadata,omitempty\" protobuf:\"bytes,1,opt,name=metadata\"`\n\
                   \t// +optional\n\tReplicas *int32 `json:\"replicas,omitempty\" protobuf:\"varint,2,opt,name=replicas\"`\n\
                   \tStdin bool `json:\"stdin,omitempty\" protobuf:\"varint,3,opt,name=stdin\"`\n\
                   \tRules []Rule `json:\"rules\" protobuf:\"bytes,4,rep,name=rules\"`\n\
                   \tCreated Time `json:\"created,omitempty,omitzero\" protobuf:\"bytes,5,opt,name=created\"`\n\
                   \tInner struct {\n\t\tX int `json:\"x\" protobuf:\"varint,9,opt,name=x\"`\n\t} `json:\"inner\"`\n}\n\
                   type Other struct {\n\tName string `json:\"name\" protobuf:\"bytes,1,opt,name=name\"`\n}\n";
        let mut out = HashMap::new();
        scan_source(src, &mut out);
        let thing: HashMap<u32, GoField> =
            out["Thing"].iter().map(|(n, (f, _))| (*n, *f)).collect();
        assert_eq!(out["Thing"][&2].1, "replicas");
        assert!(!thing[&1].inline && thing[&1].omitempty, "embedded with a name: a field");
        assert!(thing[&2].pointer && thing[&2].omitempty);
        assert!(!thing[&3].pointer && thing[&3].omitempty);
        assert!(thing[&4].collection && !thing[&4].omitempty);
        assert!(thing[&5].omitzero);
        assert!(!thing.contains_key(&9), "a nested struct's fields are not the outer one's");
        assert_eq!(out["Other"][&1], (GoField::default(), "name".to_string()));
    }
}
