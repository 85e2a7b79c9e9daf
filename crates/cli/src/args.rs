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
