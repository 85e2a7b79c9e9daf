//! Which objects a command works on, as kubectl selects them: [`Filter`] (resource,
//! namespace, name, labels) for `inspect list`, `diff` and `extract`, with label selectors as
//! `kubectl -l` takes them: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`;
//! a comma means AND.

use std::collections::BTreeMap;

use crate::KeyPath;

/// kubectl-like selection. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `secrets`, `deployments`, `example.com/widgets`, `widgets.example.com` or `widgets`
    /// (see [`resource_is`]).
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Matches encrypted objects only once decrypted (their labels are unknown before).
    pub selector: Option<Selector>,
}

impl Filter {
    /// Whether the object at `path` (`None`: a key outside Kubernetes' layout) is of the
    /// resource, namespace and name asked for. With `namespace_object`, `namespace` also
    /// takes the Namespace object of that name (`inspect extract`: an apply then creates the
    /// namespace before its objects).
    pub fn selects_path(&self, path: Option<&KeyPath>, namespace_object: bool) -> bool {
        let Some(p) = path else {
            return self.resource.is_none() && self.namespace.is_none() && self.name.is_none();
        };
        if self.resource.as_ref().is_some_and(|r| !resource_is(&p.resource, r)) {
            return false;
        }
        if let Some(ns) = &self.namespace {
            let the_namespace_itself =
                namespace_object && p.resource == "namespaces" && &p.name == ns;
            if &p.namespace != ns && !the_namespace_itself {
                return false;
            }
        }
        self.name.as_ref().is_none_or(|n| n == &p.name)
    }

    /// Whether `labels` satisfy the selector (always, without one).
    pub fn selects_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// A necessary condition from the key alone, so that only candidates' values are read.
    pub fn may_match_key(&self, key: &str) -> bool {
        let segments: Vec<&str> = key.split('/').collect();
        if let Some(name) = &self.name {
            if segments.last() != Some(&name.as_str()) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace {
            if !segments.iter().any(|s| s == ns) {
                return false;
            }
        }
        if let Some(r) = &self.resource {
            let last = r.split('/').next_back().unwrap_or(r);
            let short = last.split('.').next().unwrap_or(last);
            if !segments.contains(&short) {
                return false;
            }
        }
        true
    }
}

/// `group/resource` as stored in a key, matched against what a user types.
pub fn resource_is(resource: &str, wanted: &str) -> bool {
    if resource == wanted || resource.rsplit('/').next() == Some(wanted) {
        return true;
    }
    // `widgets.example.com` for `example.com/widgets`.
    match resource.split_once('/') {
        Some((group, name)) => wanted == format!("{name}.{group}"),
        None => false,
    }
}

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

    #[test]
    fn a_filter_selects_by_key_path() {
        let at = |r: &str, ns: &str, n: &str| KeyPath {
            resource: r.into(),
            namespace: ns.into(),
            name: n.into(),
        };
        let payments = Filter { namespace: Some("payments".into()), ..Filter::default() };
        let ns_object = at("namespaces", "", "payments");
        // `-n NS` takes the Namespace object itself only where asked (extract).
        assert!(payments.selects_path(Some(&ns_object), true));
        assert!(!payments.selects_path(Some(&ns_object), false));
        assert!(!payments.selects_path(Some(&at("namespaces", "", "other")), true));
        let named = Filter { name: Some("db".into()), ..payments.clone() };
        assert!(named.selects_path(Some(&at("secrets", "payments", "db")), false));
        assert!(!named.selects_path(Some(&ns_object), true));
        // A key outside Kubernetes' layout: only an empty filter takes it.
        assert!(Filter::default().selects_path(None, false));
        assert!(!payments.selects_path(None, true));
    }

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
