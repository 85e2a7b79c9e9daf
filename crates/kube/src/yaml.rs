//! YAML output of objects, in the block style `kubectl get -o yaml` prints (apiVersion and kind
//! first, then the keys in order; multi-line strings as literal blocks).
//!
//! Why not serde_norway's emitter (which reads our configuration files): it wrote 23–39 MB/s
//! on Kubernetes objects, which made `inspect extract` of a 1 GiB snapshot spend 30 s in YAML
//! alone. The values here are JSON data only, so the emitter is small: every string that a
//! YAML 1.1 or 1.2 reader could take for anything but that string (a number, a bool, a date,
//! `null`, one with `: ` or ` #`, …) is written double-quoted with JSON's escapes, which YAML
//! reads the same. Tests parse the output back with serde_norway and compare.

use serde_json::Value as Json;

/// `object` as one YAML document, apiVersion and kind first; other values as they come.
pub fn to_yaml(object: &Json) -> String {
    let mut out = String::with_capacity(256);
    match object {
        Json::Object(m) if !m.is_empty() => {
            let first = ["apiVersion", "kind"].into_iter().filter_map(|k| m.get_key_value(k));
            let rest = m.iter().filter(|(k, _)| k.as_str() != "apiVersion" && k.as_str() != "kind");
            for (k, v) in first.chain(rest) {
                entry(&mut out, 0, k, v);
            }
        }
        other => {
            value_inline_or_block(&mut out, 0, other, true);
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// `key: value` at `depth`, with the value's block below when it has one.
fn entry(out: &mut String, depth: usize, key: &str, value: &Json) {
    indent(out, depth);
    scalar_string(out, key, depth, false);
    out.push(':');
    value_inline_or_block(out, depth, value, false);
}

/// After `key:` or `-`: a scalar or empty container on the same line, else a block below.
/// `top`: a whole document that is not an object.
fn value_inline_or_block(out: &mut String, depth: usize, value: &Json, top: bool) {
    let sep = if top { "" } else { " " };
    match value {
        Json::Object(m) if m.is_empty() => {
            out.push_str(sep);
            out.push_str("{}\n");
        }
        Json::Array(a) if a.is_empty() => {
            out.push_str(sep);
            out.push_str("[]\n");
        }
        Json::Object(m) => {
            if !top {
                out.push('\n');
            }
            let child = if top { depth } else { depth + 2 };
            for (k, v) in m {
                entry(out, child, k, v);
            }
        }
        Json::Array(a) => {
            if !top {
                out.push('\n');
            }
            // Items at the key's own indentation, as kubectl prints them.
            for item in a {
                list_item(out, depth, item);
            }
        }
        Json::String(s) => {
            out.push_str(sep);
            scalar_string(out, s, depth, true);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        other => {
            out.push_str(sep);
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
}

/// `- item` at `depth`: an object's first key on the dash's line, the others under it.
fn list_item(out: &mut String, depth: usize, item: &Json) {
    indent(out, depth);
    out.push('-');
    match item {
        Json::Object(m) if !m.is_empty() => {
            let mut first = true;
            for (k, v) in m {
                if first {
                    out.push(' ');
                    scalar_string(out, k, depth + 2, false);
                    out.push(':');
                    value_inline_or_block(out, depth + 2, v, false);
                    first = false;
                } else {
                    entry(out, depth + 2, k, v);
                }
            }
        }
        Json::Array(a) if !a.is_empty() => {
            out.push('\n');
            for i in a {
                list_item(out, depth + 2, i);
            }
        }
        other => value_inline_or_block(out, depth, other, false),
    }
}

/// A string: plain when no reader could take it for something else, a literal block when
/// it has lines (and `block` allows: not for keys), else double-quoted.
fn scalar_string(out: &mut String, s: &str, depth: usize, block: bool) {
    if is_plain(s) {
        out.push_str(s);
    } else if block && literal_block_fits(s) {
        literal_block(out, s, depth + 2);
    } else {
        double_quoted(out, s);
    }
}

/// A double-quoted scalar. YAML admits fewer characters in a stream than JSON does in a
/// string (no DEL, no C1 controls, no U+FFFE/FFFF), and readers take NEL, LS and PS for line
/// breaks: everything outside the printable set goes as an escape.
fn double_quoted(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if yaml_printable(c) => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Characters outside ASCII that a YAML stream carries as they are.
fn yaml_printable(c: char) -> bool {
    matches!(c as u32, 0xa0..=0xd7ff | 0xe000..=0xfffd | 0x10000..)
        && !matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}')
}

/// Plain scalars: letters, digits and a few marks, not starting like a number, date or
/// indicator, not a YAML 1.1 keyword.
fn is_plain(s: &str) -> bool {
    const KEYWORDS: &[&str] = &["null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"];
    let Some(first) = s.chars().next() else { return false };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if s.len() > 200 || s.ends_with(' ') {
        return false;
    }
    if !s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '-' | '/' | ' ' | '+' | '=' | '@' | '(' | ')' | '$')
    }) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    !KEYWORDS.contains(&lower.as_str())
        && !matches!(lower.as_str(), ".inf" | ".nan")
        && !s.contains("  ")
}

/// A literal block keeps text exactly when it is printable (tabs allowed), has a line and is
/// not only line breaks (a block of empty lines reads back as "").
fn literal_block_fits(s: &str) -> bool {
    s.contains('\n')
        && s.contains(|c| c != '\n')
        && s.chars().all(|c| matches!(c, '\n' | '\t' | ' '..='~') || yaml_printable(c))
}

/// `|` with the chomping that gives back the trailing newlines exactly, and an indentation
/// indicator when the first line with text starts with a blank (a reader would otherwise take
/// the blank for indentation).
fn literal_block(out: &mut String, s: &str, depth: usize) {
    let trailing = s.len() - s.trim_end_matches('\n').len();
    out.push('|');
    if s.trim_start_matches('\n').starts_with([' ', '\t']) {
        out.push('2');
    }
    match trailing {
        0 => out.push('-'),
        1 => {}
        _ => out.push('+'),
    }
    out.push('\n');
    let body = &s[..s.len() - trailing];
    for line in body.split('\n') {
        if !line.is_empty() {
            indent(out, depth);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: &Json) {
        let text = to_yaml(v);
        let back: Json = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(&back, v, "\n{text}");
    }

    #[test]
    fn what_a_reader_could_misread_is_quoted() {
        for s in [
            "",
            "true",
            "False",
            "yes",
            "NO",
            "on",
            "y",
            "null",
            "~",
            "1",
            "-1",
            "0x1f",
            "1e3",
            ".5",
            ".inf",
            "2024-01-02",
            "12:30",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "[x]",
            "{x}",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "'x",
            "\"x",
            "x ",
            " x",
            "a  b",
            "?",
            ":",
            ",",
            "é",
            "tab\there",
            "cr\rlf",
            "\u{feff}bom",
            "nul\0",
            "line\n",
            "two\nlines",
            "\nlead",
            "trail\n\n\n",
            "  indented\nx",
            "x\n  y\n",
            "a\n\nb",
            "ends with space \nnext",
            "del\u{7f}",
            "c1\u{80}\u{9f}",
            "nel\u{85}x",
            "ls\u{2028}ps\u{2029}",
            "nb\u{a0}sp",
            "\u{fffe}\u{ffff}",
            "lines\nwith\u{7f}del\n",
            "astral 😀",
            "bell\u{7}\u{1b}[0m",
            "\u{e000}\u{fffd}",
            "=",
            "100m",
            "v1",
            "apps/v1",
            "kube-system",
            "k8s.io/x",
            "Always",
            "a b c",
        ] {
            round_trip(&json!({ "k": s, s: 1 }));
            round_trip(&json!([s]));
        }
    }

    /// Every short string over the characters that steer a YAML reader (blanks, breaks,
    /// indicators), as a value, a key and a list item.
    #[test]
    fn every_short_string_of_tricky_characters_round_trips() {
        const ALPHABET: [char; 8] = [' ', '\n', 'a', '\t', '#', ':', '-', '\r'];
        for len in 0..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                round_trip(&json!({ "k": s, s.clone(): [s.clone()], "m": {"n": [{"o": s}]} }));
            }
        }
    }

    #[test]
    fn objects_lists_and_documents() {
        round_trip(
            &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a", "labels": {}}, "spec": {"containers": [
            {"name": "c", "args": ["--x=1", "-v"], "env": [], "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "d", "resources": {"limits": {"cpu": "100m"}}}
        ], "n": [[1, 2], [], [{"a": null}]], "f": 1.5, "t": true, "z": null}}),
        );
        assert!(to_yaml(&json!({"metadata": 1, "kind": "K", "apiVersion": "v"}))
            .starts_with("apiVersion: v\nkind: K\nmetadata: 1\n"));
        round_trip(
            &json!({"big": 1e100, "small": 1.5e-7, "neg": -2.5, "zero": 0.0, "u": 18446744073709551615u64, "i": -9223372036854775808i64}),
        );
        round_trip(&json!("just a string"));
        round_trip(&json!(["a", {"b": 1}]));
    }
}
