//! Label selectors as `kubectl -l` takes them: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a,b)`; a comma means AND.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Term>);

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn key(k: &str, term: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c)) {
        return Err(format!("{term:?}: {k:?} is not a label key"));
    }
    Ok(k.to_string())
}

fn set(rest: &str, term: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("{term:?}: expected (value,…)"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in split_terms(text)? {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            let term = if let Some(k) = t.strip_prefix('!') {
                Term::NotExists(key(k, t)?)
            } else if let Some((k, v)) = t.split_once("!=") {
                Term::NotEquals(key(k, t)?, v.trim().to_string())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Equals(key(k, t)?, v.trim().to_string())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                Term::NotIn(key(k, t)?, set(rest, t)?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                Term::In(key(k, t)?, set(rest, t)?)
            } else {
                Term::Exists(key(t, t)?)
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::NotExists(k) => !labels.contains_key(k),
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// The labels of a rendered object (`metadata.labels`), as a map.
pub fn labels_of(object: &serde_json::Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_and_existence() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&l);
        assert!(
            m("app=web") && m("app==web") && m("app=web,tier=front") && m(" app = web , tier ")
        );
        assert!(!m("app=db") && !m("app=web,tier=back"));
        assert!(m("app!=db") && !m("app!=web") && m("missing!=x"));
        assert!(m("tier") && !m("missing") && m("!missing") && !m("!app"));
        assert!(
            m("")
                && m("app in (db, web)")
                && !m("app notin (db,web)")
                && m("tier notin (back)")
                && m("x notin (a)")
        );
        assert!(!m("x in (a)") && m("app in (web),tier"));
    }

    #[test]
    fn bad_selectors() {
        for bad in ["=v", "a b", "app in (x", "app in x", "!", "a)b"] {
            assert!(Selector::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
