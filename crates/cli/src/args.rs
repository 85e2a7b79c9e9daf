//! Value parsers shared by the subcommands' flags: values that would parse but mean nothing
//! (an empty --repo, an empty member name) are usage errors (exit 2), caught by clap before
//! anything runs.

use std::path::PathBuf;

/// `--repo` (and ETCDGUARD_REPO): an empty value would make a repository in the current
/// directory, which nobody means.
pub fn repo(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("empty; give a directory or an s3://, gs:// or az:// URL (`.` for the current directory)".into());
    }
    Ok(s.to_string())
}

/// A name or token that must not be empty (--name, --initial-cluster-token, …).
pub fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_string())
}

/// A path that must not be empty: "" is not the current directory to open(2), and a restore
/// into it would put its temporary and final directories somewhere no one asked for.
pub fn path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(
            "empty path; give a directory or file name (`.` for the current directory)".into()
        );
    }
    Ok(PathBuf::from(s))
}

/// `--etcd-version`: a release line etcdguard knows.
pub fn release(text: &str) -> Result<etcdguard_storage::Release, String> {
    use etcdguard_storage::Release;
    Release::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Release::ALL.iter().map(|r| r.label()).collect();
        format!("unknown etcd release line {text:?}; known: {}", known.join(", "))
    })
}

/// `--passphrase-file`, `--new-passphrase-file` (and their environment variables): a file
/// other users can read leaks the passphrase, one they can write lets them choose it. As
/// ssh does for private keys, say so (at parse time, so every command warns once, whether or
/// not it ends up reading the file). Never prints the content. A missing file is left to
/// the read, which names it with its exit code.
pub fn passphrase_file(s: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = self::path(s)?;
    if let Ok(meta) = std::fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        let what = if mode & 0o044 != 0 {
            "is readable by other users"
        } else if mode & 0o022 != 0 {
            "is writable by other users (they could choose the passphrase)"
        } else if mode & 0o011 != 0 {
            "is accessible by other users"
        } else {
            return Ok(path);
        };
        eprintln!(
            "warning: passphrase file {} {what} (mode {mode:04o}); chmod 600 it",
            path.display()
        );
    }
    Ok(path)
}

/// The two output formats of a command whose result is a few lines: `text` for people,
/// `json` for scripts.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum TextJson {
    Text,
    Json,
}

/// `-w/--write-out` for commands whose result is a few lines of text: `json` prints one JSON
/// object instead (camelCase keys, as every JSON output of etcdguard), for scripts.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct WriteOut {
    /// Output format: `text` for people, `json` for scripts (one object, camelCase keys).
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = TextJson::Text)]
    pub write_out: TextJson,
}

impl WriteOut {
    pub fn json(self) -> bool {
        self.write_out == TextJson::Json
    }
}

/// Prints a result on stdout as every `-w json` does: pretty, every key camelCase (one casing
/// for all output, whatever the library's field names or a stored format's own casing).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(value)?;
    camel_keys(&mut value);
    let mut text = serde_json::to_string_pretty(&value)?;
    text.push('\n');
    crate::output::stdout_write(text.as_bytes());
    Ok(())
}

/// Renames `snake_case` and `kebab-case` object keys to camelCase, except inside maps whose
/// keys are the user's data (labels, annotations).
pub fn camel_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut v) in old {
                if !matches!(k.as_str(), "labels" | "annotations") {
                    camel_keys(&mut v);
                }
                map.insert(camel(&k), v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(camel_keys),
        _ => {}
    }
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' || c == '-' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_become_camel_case_but_labels_stay() {
        let mut v = serde_json::json!({
            "cluster_id": 1, "chunk-size": 2, "memberID": 3,
            "labels": {"app_name": "x"}, "files": [{"not_after": 4}],
        });
        super::camel_keys(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "clusterId": 1, "chunkSize": 2, "memberID": 3,
                "labels": {"app_name": "x"}, "files": [{"notAfter": 4}],
            })
        );
    }
}
