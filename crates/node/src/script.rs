//! The shell scripts and variables of a static pod's container, as far as etcdguard needs
//! them: words split as `sh` splits them, with `${VAR}`, `$VAR` and `$(…)` kept apart so
//! they can be filled in from the container's `env` (and the script's own assignments,
//! `export ETCD_NAME=${NODE_master_0_ETCD_NAME}`), the way the kubelet and the shell will.

use std::collections::BTreeMap;

/// A piece of a shell word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as the shell passes it on (quotes and escapes removed).
    Lit(String),
    /// `$NAME`, `${NAME}`, `${NAME:-default}` (`default` when it is plain text), `${NAME?msg}`.
    Var { name: String, default: Option<String>, raw: String },
    /// `$(…)` or a backquoted command: known only when the script runs.
    Cmd(String),
}

/// One word of a command, in pieces.
pub type Word = Vec<Part>;

/// The word as written, variables and command substitutions unexpanded.
pub fn raw(word: &Word) -> String {
    word.iter()
        .map(|p| match p {
            Part::Lit(s) => s.clone(),
            Part::Var { raw, .. } => raw.clone(),
            Part::Cmd(c) => c.clone(),
        })
        .collect()
}

fn push_lit(word: &mut Word, c: char) {
    match word.last_mut() {
        Some(Part::Lit(s)) => s.push(c),
        _ => word.push(Part::Lit(c.to_string())),
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Reads what follows a `$` into `word`.
fn dollar(chars: &mut Chars<'_>, word: &mut Word) -> Result<(), String> {
    match chars.peek().copied() {
        Some(open @ ('(' | '{')) => {
            chars.next();
            let close = if open == '(' { ')' } else { '}' };
            let mut inner = String::new();
            let mut depth = 1;
            loop {
                match chars.next() {
                    Some(n) if n == open => {
                        depth += 1;
                        inner.push(n);
                    }
                    Some(n) if n == close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        inner.push(n);
                    }
                    Some(n) => inner.push(n),
                    None => return Err(format!("a \"${open}\" is not closed")),
                }
            }
            let raw = format!("${open}{inner}{close}");
            if open == '(' {
                word.push(Part::Cmd(raw));
                return Ok(());
            }
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            let default = op
                .strip_prefix(":-")
                .or_else(|| op.strip_prefix('-'))
                .filter(|d| !d.contains(['$', '`', '\'', '"']))
                .map(str::to_string);
            // `${#NAME}`, `${NAME+alt}`, `${NAME%suffix}`: not a plain value; an empty name
            // is never set, so the word stays unresolved.
            let plain =
                op.is_empty() || default.is_some() || op.starts_with('?') || op.starts_with(":?");
            word.push(Part::Var {
                name: if plain { name.to_string() } else { String::new() },
                default,
                raw,
            });
        }
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            let mut name = String::new();
            while let Some(&n) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_') {
                    break;
                }
                name.push(n);
                chars.next();
            }
            word.push(Part::Var { raw: format!("${name}"), name, default: None });
        }
        Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
            chars.next();
            word.push(Part::Var { name: String::new(), default: None, raw: format!("${c}") });
        }
        _ => push_lit(word, '$'),
    }
    Ok(())
}

/// Splits a shell script into its simple commands' words: quotes (single, double),
/// backslash escapes and line continuations, comments, and the separators `;` `&&` `||`
/// `|` `&` and newlines. Variables and command substitutions are kept as [`Part`]s
/// (nothing inside single quotes is one).
pub fn commands(script: &str) -> Result<Vec<Vec<Word>>, String> {
    let mut out = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut word: Word = Vec::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    fn end_word(words: &mut Vec<Word>, word: &mut Word, in_word: &mut bool) {
        if *in_word {
            if word.is_empty() {
                word.push(Part::Lit(String::new()));
            }
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(n) => {
                    push_lit(&mut word, n);
                    in_word = true;
                }
                None => return Err("the script ends in a lone backslash".into()),
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => push_lit(&mut word, n),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(n @ ('"' | '\\' | '$' | '`')) => push_lit(&mut word, n),
                            Some(n) => {
                                push_lit(&mut word, '\\');
                                push_lit(&mut word, n);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some('$') => dollar(&mut chars, &mut word)?,
                        Some(n) => push_lit(&mut word, n),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '$' => {
                in_word = true;
                dollar(&mut chars, &mut word)?;
            }
            '`' => {
                in_word = true;
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some(n) => inner.push(n),
                        None => return Err("a backquote is not closed".into()),
                    }
                }
                word.push(Part::Cmd(format!("`{inner}`")));
            }
            '#' if !in_word => {
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            ' ' | '\t' | '\r' => end_word(&mut words, &mut word, &mut in_word),
            '\n' | ';' | '&' | '|' => {
                end_word(&mut words, &mut word, &mut in_word);
                if !words.is_empty() {
                    out.push(std::mem::take(&mut words));
                }
            }
            c => {
                push_lit(&mut word, c);
                in_word = true;
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    if !words.is_empty() {
        out.push(words);
    }
    Ok(out)
}

/// A variable's value as far as it can be known before the pod starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Known(String),
    /// Set only when the pod runs; the reason, for the operator.
    Unknown(String),
}

/// The variables a container's command sees: its `env` (exported), then whatever its
/// script assigns.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub values: BTreeMap<String, Value>,
    pub exported: std::collections::BTreeSet<String>,
}

/// Why a word could not be expanded: the variable (or command) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub what: String,
    pub why: String,
}

/// The first word of a long `$(…)`, for messages: `$(discover-etcd-initial-cluster …)`.
pub fn short_cmd(raw: &str) -> String {
    let inner = raw
        .trim_start_matches("$(")
        .trim_start_matches('`')
        .trim_end_matches(')')
        .trim_end_matches('`');
    let first = inner.split_whitespace().next().unwrap_or("");
    if inner.trim() == first {
        raw.to_string()
    } else {
        format!("$({first} …)")
    }
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// The word with every variable filled in; the first that cannot be, otherwise.
    pub fn expand(&self, word: &Word) -> Result<String, Unresolved> {
        let mut out = String::new();
        for p in word {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Cmd(c) => {
                    return Err(Unresolved {
                        what: short_cmd(c),
                        why: "its output is known only when the pod runs".into(),
                    })
                }
                Part::Var { name, default, raw } => match (self.values.get(name), default) {
                    (Some(Value::Known(v)), Some(d)) if v.is_empty() && raw.contains(":-") => {
                        out.push_str(d)
                    }
                    (Some(Value::Known(v)), _) => out.push_str(v),
                    (Some(Value::Unknown(why)), _) => {
                        return Err(Unresolved { what: raw.clone(), why: why.clone() })
                    }
                    (None, Some(d)) => out.push_str(d),
                    (None, None) if name.is_empty() => {
                        return Err(Unresolved {
                            what: raw.clone(),
                            why: "set only when the script runs".into(),
                        })
                    }
                    (None, None) => {
                        return Err(Unresolved {
                            what: raw.clone(),
                            why: format!(
                                "{name} is not in the container's env nor set by its script"
                            ),
                        })
                    }
                },
            }
        }
        Ok(out)
    }

    /// `NAME=value` into the variables (`export`ed or not).
    fn assign(&mut self, name: &str, value: &Word, export: bool) {
        let v = match self.expand(value) {
            Ok(s) => Value::Known(s),
            Err(u) => {
                Value::Unknown(format!("{name} is set by the script from {} ({})", u.what, u.why))
            }
        };
        self.values.insert(name.to_string(), v);
        if export {
            self.exported.insert(name.to_string());
        }
    }

    /// Runs the assignments of a command that does nothing else (`A=1`, `export A=1 B`,
    /// `export A`); `false` for any other command.
    pub fn apply_assignments(&mut self, words: &[Word]) -> bool {
        let export = words.first().is_some_and(|w| raw(w) == "export");
        let rest = if export { &words[1..] } else { words };
        if !export && !rest.iter().all(|w| assignment(w).is_some()) {
            return false;
        }
        for w in rest {
            match assignment(w) {
                Some((name, value)) => self.assign(&name, &value, export),
                None if export => {
                    let name = raw(w);
                    if !name.starts_with('-') {
                        self.exported.insert(name);
                    }
                }
                None => {}
            }
        }
        true
    }

    /// Assignments before the program in a command line (`A=1 exec etcd`): exported to it.
    pub fn apply_prefix(&mut self, words: &[Word]) {
        for w in words {
            if let Some((name, value)) = assignment(w) {
                self.assign(&name, &value, true);
            }
        }
    }
}

/// `NAME=value` split into the name and the value's word.
pub fn assignment(word: &Word) -> Option<(String, Word)> {
    let Some(Part::Lit(first)) = word.first() else { return None };
    let (name, rest) = first.split_once('=')?;
    let mut cs = name.chars();
    if !cs.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        || !cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    let mut value: Word = Vec::new();
    if !rest.is_empty() {
        value.push(Part::Lit(rest.to_string()));
    }
    value.extend(word[1..].iter().cloned());
    Some((name.to_string(), value))
}

/// The kubelet's own expansion of `command`/`args`/`env` values: `$(NAME)` of a variable
/// defined (with a known value) before, `$$` for `$`; everything else stays.
pub fn kubelet_expand(s: &str, vars: &BTreeMap<String, Value>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        }
        if let Some(inner) = after.strip_prefix('(') {
            if let Some(end) = inner.find(')') {
                let name = &inner[..end];
                if let Some(Value::Known(v)) = vars.get(name) {
                    out.push_str(v);
                    rest = &inner[end + 1..];
                    continue;
                }
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.values.insert(k.to_string(), Value::Known(val.to_string()));
            v.exported.insert(k.to_string());
        }
        v
    }

    #[test]
    fn words_keep_variables_apart() {
        let c = commands("exec etcd --a=https://${IP}:2380 \"--b=$HOST x\" '--c=$NOT' --d=${X:-dflt} --e=$(cmd a b)").unwrap();
        let v = vars(&[("IP", "10.0.0.1"), ("HOST", "h")]);
        let got: Vec<Result<String, Unresolved>> = c[0].iter().map(|w| v.expand(w)).collect();
        assert_eq!(got[2].as_deref().unwrap(), "--a=https://10.0.0.1:2380");
        assert_eq!(got[3].as_deref().unwrap(), "--b=h x");
        assert_eq!(got[4].as_deref().unwrap(), "--c=$NOT", "single quotes keep $ as text");
        assert_eq!(got[5].as_deref().unwrap(), "--d=dflt");
        assert_eq!(got[6].as_ref().unwrap_err().what, "$(cmd …)");
        assert_eq!(raw(&c[0][6]), "--e=$(cmd a b)");
    }

    #[test]
    fn script_assignments_and_exports() {
        let script = "A=$(discover --x y)\nexport A\nexport ETCD_NAME=${NODE_m0_ETCD_NAME}\nLOCAL=1\nexec etcd";
        let c = commands(script).unwrap();
        let mut v = vars(&[("NODE_m0_ETCD_NAME", "master-0")]);
        for words in &c[..4] {
            assert!(v.apply_assignments(words));
        }
        assert!(!v.apply_assignments(&c[4]));
        assert_eq!(v.get("ETCD_NAME"), Some(&Value::Known("master-0".into())));
        assert!(
            matches!(v.get("A"), Some(Value::Unknown(why)) if why.contains("$(discover …)")),
            "{:?}",
            v.get("A")
        );
        assert!(
            v.exported.contains("A")
                && v.exported.contains("ETCD_NAME")
                && !v.exported.contains("LOCAL")
        );
    }

    #[test]
    fn kubelet_expansion() {
        let mut m = BTreeMap::new();
        m.insert("CERT".to_string(), Value::Known("/c.crt".to_string()));
        m.insert("LATER".to_string(), Value::Unknown("x".to_string()));
        assert_eq!(
            kubelet_expand("--cert=$(CERT) $(LATER) $(NONE) $$(CERT) $x", &m),
            "--cert=/c.crt $(LATER) $(NONE) $(CERT) $x"
        );
    }
}
