//! What the subcommands' flags share: etcdctl's connection flags, the repository flags
//! (`--repo`, its passphrase or KMS key, `--parallel`), the output formats and `-w json` printing, and the value parsers:
//! values that would parse but mean nothing (an empty --repo, an empty member name) are usage
//! errors (exit 2), caught by clap before anything runs. Nothing here depends on a command
//! module (`crate::cmd`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use etcdguard_repo::crypto::Passphrase;
use etcdguard_workflow::RepoSpec;

use crate::exit::{Code, Failure};

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

pub(crate) const REPO_HELP: &str = "Repository: a local directory (the default), s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or \
az://CONTAINER[/PREFIX]. Options go in the query: ?endpoint=http://host:9000&region=us-east-1&path-style=true \
(S3-compatible servers), ?account=NAME (Azure), ?retries=N; S3 also ?checksum=sha256 (needed by a bucket with \
Object Lock) and ?sse=AES256|aws:kms[&sse-kms-key-id=KEY] (server-side encryption). Credentials come from the environment and files as \
the cloud SDKs read them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE and ~/.aws/credentials, \
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY). Without S3 credentials \
the EC2 instance metadata address is asked for them only for AWS itself and unless AWS_EC2_METADATA_DISABLED=true; \
requests to another endpoint go unsigned.";

/// `--repo` and how to unlock it: every command that reads or writes a backup repository.
#[derive(Args, Clone)]
pub struct RepoArg {
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL", help = REPO_HELP, value_parser = crate::args::repo)]
    pub repo: String,
    /// File holding the passphrase of an encrypted repository (or put the passphrase itself in
    /// ETCDGUARD_PASSPHRASE). A repository that `backup create` makes while a passphrase is
    /// given is encrypted with it: chunks and files (CA keys included) are sealed with
    /// XChaCha20-Poly1305 under a key only the passphrase opens. Lose it and the backups are lost.
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub passphrase_file: Option<PathBuf>,
    /// Unlock an encrypted repository with a key management service instead of a passphrase:
    /// aws-kms:KEY[?region=R&endpoint=URL] (KEY: key id, alias/NAME or ARN; AWS credentials
    /// from the environment), for a key file `backup key add --new-kms-key` wrote.
    #[arg(long, env = "ETCDGUARD_KMS_KEY", value_name = "KMS")]
    pub kms_key: Option<String>,
}

impl RepoArg {
    /// The passphrase from --passphrase-file or ETCDGUARD_PASSPHRASE, if any.
    fn passphrase(&self) -> Result<Option<Passphrase>, Failure> {
        read_passphrase(
            self.passphrase_file.as_deref(),
            "--passphrase-file",
            "ETCDGUARD_PASSPHRASE",
        )
    }

    /// The repository as the workflows take it; the passphrase is read when one is needed.
    pub fn spec(&self) -> RepoSpec {
        let arg = self.clone();
        RepoSpec {
            url: self.repo.clone(),
            passphrase: Arc::new(move || Ok(arg.passphrase()?)),
            transfer: Default::default(),
            kms: self.kms_key.clone(),
        }
    }
}

/// `--parallel`: how many packs are fetched (restore, verify) or chunks compressed and
/// packs uploaded (create) at once.
#[derive(Args, Clone, Default)]
pub struct ParallelArg {
    /// Range reads of packs (restore, verify) or compression threads and uploads (create) at
    /// once [default: the number of cores, 2 to 8]. More helps against a distant bucket;
    /// memory grows by about 8 MiB each.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
}

impl ParallelArg {
    /// The transfer settings, with a progress bar on stderr when it is a terminal.
    pub fn transfer(&self, limit_rate: Option<u64>) -> etcdguard_repo::repository::Transfer {
        use std::io::IsTerminal;
        etcdguard_repo::repository::Transfer {
            parallel: self.parallel.map(usize::from).unwrap_or(0),
            limit_rate,
            compression_level: None,
            progress: std::io::stderr()
                .is_terminal()
                .then(|| Arc::new(Bar::default()) as Arc<dyn etcdguard_repo::repository::Progress>),
            ..Default::default()
        }
    }
}

/// A progress bar on stderr (bytes, rate, ETA); only made when stderr is a terminal.
#[derive(Default)]
struct Bar(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl etcdguard_repo::repository::Progress for Bar {
    fn begin(&self, total: Option<u64>) {
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        let template = match total {
            Some(_) => "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            None => "{spinner} {bytes} {binary_bytes_per_sec}",
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        if let Some(old) = self.0.lock().unwrap_or_else(|p| p.into_inner()).replace(bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            b.inc(bytes);
        }
    }
    fn end(&self) {
        if let Some(b) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

/// A passphrase from a file (trailing newline dropped) or else from an environment variable.
pub(crate) fn read_passphrase(
    file: Option<&Path>,
    flag: &str,
    env: &str,
) -> Result<Option<Passphrase>, Failure> {
    if let Some(path) = file {
        // Its mode was checked (with a warning) when the flag was parsed: passphrase_file.
        let bytes = std::fs::read(path).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                _ => Code::Failure,
            };
            Failure::new(code, format!("{flag} {}: {e}", path.display()))
        })?;
        let p = Passphrase::new(bytes);
        if p.bytes().is_empty() {
            return Err(Failure::new(
                Code::Usage,
                format!("{flag} {}: the file is empty", path.display()),
            ));
        }
        return Ok(Some(p));
    }
    match std::env::var_os(env) {
        Some(v) if !v.is_empty() => Ok(Some(Passphrase::new(
            std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
        ))),
        _ => Ok(None),
    }
}

/// The output formats of a command whose result is a table.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TableJson {
    Table,
    Json,
}

/// etcdctl's connection flags. Each falls back to the `ETCDCTL_*` variable etcdctl reads,
/// then to what --etcd-secrets-dir and --etcd-manifest hold.
#[derive(Args, Clone, Debug, Default)]
pub struct ConnArgs {
    /// gRPC endpoints, comma-separated: host:port or http(s)://host:port
    /// [env: ETCDCTL_ENDPOINTS] [default: 127.0.0.1:2379]
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub endpoints: Option<Vec<String>>,
    /// CA bundle that signed the server certificates [env: ETCDCTL_CACERT]
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) [env: ETCDCTL_CERT]
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [env: ETCDCTL_KEY]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// User name, or name:password [env: ETCDCTL_USER]
    #[arg(long, value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
    /// Password for --user [env: ETCDCTL_PASSWORD]
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Time allowed to connect, Go syntax [env: ETCDCTL_DIAL_TIMEOUT] [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub dial_timeout: Option<String>,
    /// Time allowed for each request, Go syntax [env: ETCDCTL_COMMAND_TIMEOUT] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub command_timeout: Option<String>,
    /// etcd's manifest (a static pod such as /etc/kubernetes/manifests/etcd.yaml, or a Pod or
    /// StatefulSet spec): endpoints from its --advertise-client-urls (else
    /// --listen-client-urls), --cacert from --trusted-ca-file, --cert/--key from
    /// --cert-file/--key-file (the peer pair when that certificate is for servers only), on
    /// the host through its hostPath volumes; used where no flag or ETCDCTL_* variable gives a value
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// A directory of mounted Secrets, as a pod mounts them: --cacert from ca.crt or
    /// etcd-client-ca.crt, --cert/--key from tls.crt/tls.key or etcd-client.crt/etcd-client.key
    /// (HyperShift's etcd-client-tls); before --etcd-manifest's files
    #[arg(long, value_name = "DIR")]
    pub etcd_secrets_dir: Option<PathBuf>,
}

impl ConnArgs {
    /// Resolves flags and environment, prints the notes, and opens a session.
    pub fn session(&self) -> anyhow::Result<etcdguard_client::Session> {
        Ok(etcdguard_workflow::backup::connect(&self.flags(), &mut |note| eprintln!("{note}"))?)
    }

    /// The flags as the client library takes them.
    pub fn flags(&self) -> etcdguard_client::ConnectFlags {
        etcdguard_client::ConnectFlags {
            endpoints: self.endpoints.clone(),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
            password: self.password.clone().map(etcdguard_client::Secret::new),
            dial_timeout: self.dial_timeout.clone(),
            command_timeout: self.command_timeout.clone(),
            etcd_manifest: self.etcd_manifest.clone(),
            etcd_secrets_dir: self.etcd_secrets_dir.clone(),
        }
    }
}

/// Maps a client error to its exit code; the message is the error's own sentence.
pub fn client_failure(e: etcdguard_client::ClientError) -> Failure {
    etcdguard_workflow::error::client_error(e).into()
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
