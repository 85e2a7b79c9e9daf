//! A field-level diff of two JSON values, for `inspect diff` and `inspect history`.
//!
//! [`diff`] gives RFC 6902-style operations (`add`, `remove`, `replace` at JSON-pointer
//! paths) that, applied in order to the old value, give the new one. Objects are compared
//! key by key; arrays element by element over their common length, then elements are added
//! at the end or removed from the end (last first, so every index stays valid).
//!
//! Why not `json_patch::diff` (4.2): its patches apply too, but read worse and change our
//! output. It lists an object's added and replaced keys (in the new object's order) before
//! its removed ones, where this walks the old object's keys first (`{"a":1}` to `{"b":2}`:
//! it gives `add /b, remove /a`; this, `remove /a, add /b`); it removes an array's tail from
//! the front, so `[a,b,x,y]` to `[a,b]` is `remove /c/2` twice, where this says `remove
//! /c/3, remove /c/2`, naming each removed element by its index in the old array (which the
//! unified form shows); and it has no old values, which the unified form needs.

use serde::Serialize;
use serde_json::Value as Json;

/// One change, as a JSON Patch operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Op {
    /// `add`, `remove` or `replace`.
    pub op: &'static str,
    /// JSON pointer (`/spec/replicas`, `/metadata/labels/app.kubernetes.io~1name`).
    pub path: String,
    /// The new value (`add`, `replace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// The value replaced or removed (not part of RFC 6902; shown by the unified form).
    #[serde(skip_serializing_if = "Option::is_none", rename = "oldValue")]
    pub old_value: Option<Json>,
}

/// The operations that turn `old` into `new`; empty when they are equal.
pub fn diff(old: &Json, new: &Json) -> Vec<Op> {
    let mut ops = Vec::new();
    walk(old, new, &mut String::new(), &mut ops);
    ops
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn walk(old: &Json, new: &Json, path: &mut String, ops: &mut Vec<Op>) {
    match (old, new) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, va) in a {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(k));
                match b.get(k) {
                    Some(vb) => walk(va, vb, path, ops),
                    None => ops.push(Op {
                        op: "remove",
                        path: path.clone(),
                        value: None,
                        old_value: Some(va.clone()),
                    }),
                }
                path.truncate(len);
            }
            for (k, vb) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                ops.push(Op {
                    op: "add",
                    path: format!("{path}/{}", escape(k)),
                    value: Some(vb.clone()),
                    old_value: None,
                });
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            let common = a.len().min(b.len());
            for i in 0..common {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(&a[i], &b[i], path, ops);
                path.truncate(len);
            }
            for (i, va) in a.iter().enumerate().skip(common).rev() {
                ops.push(Op {
                    op: "remove",
                    path: format!("{path}/{i}"),
                    value: None,
                    old_value: Some(va.clone()),
                });
            }
            for (i, vb) in b.iter().enumerate().skip(common) {
                ops.push(Op {
                    op: "add",
                    path: format!("{path}/{i}"),
                    value: Some(vb.clone()),
                    old_value: None,
                });
            }
        }
        _ if old == new => {}
        _ => ops.push(Op {
            op: "replace",
            path: path.clone(),
            value: Some(new.clone()),
            old_value: Some(old.clone()),
        }),
    }
}

/// The operations as RFC 6902 JSON Patch (without the old values).
pub fn to_json_patch(ops: &[Op]) -> Json {
    Json::Array(
        ops.iter()
            .map(|o| {
                let mut m = serde_json::Map::new();
                m.insert("op".into(), Json::String(o.op.into()));
                m.insert("path".into(), Json::String(o.path.clone()));
                if let Some(v) = &o.value {
                    m.insert("value".into(), v.clone());
                }
                Json::Object(m)
            })
            .collect(),
    )
}

/// A value as YAML lines (scalars on one line).
fn yaml_lines(v: &Json) -> Vec<String> {
    let text = match v {
        Json::Object(m) if m.is_empty() => "{}".to_string(),
        Json::Array(a) if a.is_empty() => "[]".to_string(),
        _ => serde_norway::to_string(v).unwrap_or_else(|_| v.to_string()),
    };
    text.trim_end().lines().map(str::to_string).collect()
}

/// The operations in a unified-diff style: one `@@ path` hunk per change, the old value's
/// YAML lines prefixed `-`, the new value's `+`.
pub fn to_unified(ops: &[Op]) -> String {
    let mut out = String::new();
    for o in ops {
        out.push_str(&format!("@@ {} @@\n", if o.path.is_empty() { "/" } else { &o.path }));
        for (sign, v) in [('-', &o.old_value), ('+', &o.value)] {
            if let Some(v) = v {
                for line in yaml_lines(v) {
                    out.push(sign);
                    out.push(' ');
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies RFC 6902 add/remove/replace, to check that a diff is a patch.
    fn apply(mut doc: Json, ops: &[Op]) -> Json {
        for o in ops {
            if o.path.is_empty() {
                doc = o.value.clone().unwrap_or(Json::Null);
                continue;
            }
            let (parent, last) = o.path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = doc.pointer_mut(parent).unwrap();
            match (target, o.op) {
                (Json::Object(m), "remove") => {
                    m.remove(&last).unwrap();
                }
                (Json::Object(m), _) => {
                    m.insert(last, o.value.clone().unwrap());
                }
                (Json::Array(a), "remove") => {
                    a.remove(last.parse().unwrap());
                }
                (Json::Array(a), "add") => {
                    a.insert(last.parse().unwrap(), o.value.clone().unwrap())
                }
                (Json::Array(a), _) => a[last.parse::<usize>().unwrap()] = o.value.clone().unwrap(),
                _ => panic!("bad target for {o:?}"),
            }
        }
        doc
    }

    #[test]
    fn fields_added_removed_replaced() {
        let old = json!({"metadata": {"name": "web", "labels": {"app": "web", "a/b": "x"}}, "spec": {"replicas": 2, "paused": true}});
        let new = json!({"metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}}, "spec": {"replicas": 3}});
        let ops = diff(&old, &new);
        let summary: Vec<_> = ops.iter().map(|o| (o.op, o.path.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                ("remove", "/metadata/labels/a~1b"),
                ("add", "/metadata/labels/tier"),
                ("remove", "/spec/paused"),
                ("replace", "/spec/replicas")
            ]
        );
        assert_eq!(ops[3].old_value, Some(json!(2)));
        assert_eq!(ops[3].value, Some(json!(3)));
        assert_eq!(apply(old.clone(), &ops), new);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn arrays_grow_and_shrink() {
        let old = json!({"c": [{"n": "a", "p": 1}, {"n": "b"}, "x", "y"]});
        let new = json!({"c": [{"n": "a", "p": 2}, {"n": "b"}]});
        let ops = diff(&old, &new);
        assert_eq!(
            ops.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
            vec!["/c/0/p", "/c/3", "/c/2"]
        );
        assert_eq!(apply(old.clone(), &ops), new);
        let back = diff(&new, &old);
        assert_eq!(apply(new.clone(), &back), old);
    }

    #[test]
    fn whole_values_and_types() {
        let old = json!({"kind": "ConfigMap", "data": {"k": "v"}});
        let ops = diff(&old, &Json::Null);
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].op, ops[0].path.as_str()), ("replace", ""));
        assert_eq!(diff(&json!({"a": "1"}), &json!({"a": 1}))[0].op, "replace");
        let patch = to_json_patch(&diff(&json!({"a": 1}), &json!({"b": 2})));
        assert_eq!(
            patch,
            json!([{"op": "remove", "path": "/a"}, {"op": "add", "path": "/b", "value": 2}])
        );
    }

    #[test]
    fn unified_text() {
        let ops = diff(
            &json!({"data": {"k": "v1"}, "spec": {"x": 1}}),
            &json!({"data": {"k": "v2"}, "spec": {"x": 1, "y": {"z": [1, 2]}}}),
        );
        let text = to_unified(&ops);
        assert_eq!(text, "@@ /data/k @@\n- v1\n+ v2\n@@ /spec/y @@\n+ z:\n+ - 1\n+ - 2\n");
    }
}
