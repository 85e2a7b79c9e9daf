//! The work is done by the etcdguard binary itself, one child process per operation
//! (`backup create`, `backup list`, `backup prune`, `backup delete`, `backup follow`), with
//! the repository's credentials from Secrets in its environment only. A child per backup
//! keeps the credentials of one repository away from every other (the storage clients read
//! them from the environment, which a multi-threaded process cannot change safely), and a
//! crash or a stuck upload never takes the operator down.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::process::Command;

use crate::crd::{EtcdBackupSpec, RepositorySpec};
use crate::Error;

/// Variables of the operator's own environment that must not leak into a child working on
/// another repository.
const SCRUBBED_ENV: &[&str] = &[
    "ETCDGUARD_REPO",
    "ETCDGUARD_PASSPHRASE",
    "ETCDGUARD_PASSPHRASE_FILE",
    "ETCDGUARD_KMS_KEY",
    "ETCDCTL_ENDPOINTS",
    "ETCDCTL_CACERT",
    "ETCDCTL_CERT",
    "ETCDCTL_KEY",
    "ETCDCTL_USER",
    "ETCDCTL_PASSWORD",
];

/// How a failed child ended: its exit code's name (the condition's reason) and the last
/// lines it printed on stderr.
#[derive(Debug)]
pub struct ChildFailure {
    pub reason: &'static str,
    pub message: String,
}

/// The reason for an exit code of the binary (README "Exit codes").
pub fn reason_of(code: Option<i32>) -> &'static str {
    match code {
        Some(2) => "InvalidSpec",
        Some(3) => "NotFound",
        Some(4) => "PermissionDenied",
        Some(7) | Some(8) | Some(9) | Some(10) => "SnapshotDamaged",
        Some(12) => "Unreachable",
        Some(13) => "TlsOrAuth",
        Some(15) => "RepositoryBusy",
        Some(16) => "KeyRequired",
        None => "Killed",
        _ => "BackupFailed",
    }
}

/// Prepares child processes for one namespace: reads Secrets through the API.
#[derive(Clone)]
pub struct Runner {
    pub exe: PathBuf,
    pub client: Client,
    /// Private scratch space (TLS files from Secrets, snapshot spools).
    pub work_dir: PathBuf,
}

impl Runner {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get(name).await.map_err(|e| Error::Secret {
            namespace: namespace.into(),
            name: name.into(),
            reason: e.to_string(),
        })?;
        let mut out: BTreeMap<String, Vec<u8>> =
            secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            out.insert(k, v.into_bytes());
        }
        Ok(out)
    }

    /// `etcdguard backup SUBCOMMAND --repo URL` with the repository's passphrase and
    /// credentials in the environment.
    pub async fn repo_command(
        &self,
        namespace: &str,
        repo: &RepositorySpec,
        subcommand: &str,
    ) -> Result<Command, Error> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["backup", subcommand, "--repo", &repo.url]);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        // The pod's root filesystem may be read-only: temporary files go to the work dir.
        cmd.env("TMPDIR", &self.work_dir);
        if let Some(r) = &repo.credentials_secret_ref {
            for (k, v) in self.secret(namespace, &r.name).await? {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(Error::Spec(format!(
                        "Secret {}: key {k:?} is not an environment variable name (A-Z, 0-9, _)",
                        r.name
                    )));
                }
                cmd.env(k, String::from_utf8_lossy(&v).into_owned());
            }
        }
        if let Some(r) = &repo.passphrase_secret_ref {
            let data = self.secret(namespace, &r.name).await?;
            let value = data.get(&r.key).ok_or_else(|| {
                Error::Spec(format!(
                    "Secret {} has no key {:?} (passphraseSecretRef)",
                    r.name, r.key
                ))
            })?;
            let text = String::from_utf8_lossy(value).trim_end_matches(['\r', '\n']).to_string();
            cmd.env("ETCDGUARD_PASSPHRASE", text);
        }
        if let Some(kms) = &repo.kms_key {
            cmd.env("ETCDGUARD_KMS_KEY", kms);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        Ok(cmd)
    }

    /// The `backup create` (or `backup follow`) command of `spec`; TLS files from the
    /// Secret go into `scratch` (private, removed by the caller).
    pub async fn backup_command(
        &self,
        namespace: &str,
        spec: &EtcdBackupSpec,
        subcommand: &str,
        scratch: &Path,
    ) -> Result<Command, Error> {
        let mut cmd = self.repo_command(namespace, &spec.repository, subcommand).await?;
        if spec.etcd.endpoints.is_empty() {
            return Err(Error::Spec(
                "spec.etcd.endpoints is empty: name at least one member".into(),
            ));
        }
        cmd.arg("--endpoints").arg(spec.etcd.endpoints.join(","));
        if let Some(r) = &spec.etcd.tls_secret_ref {
            let data = self.secret(namespace, &r.name).await?;
            for (key, flag) in [("ca.crt", "--cacert"), ("tls.crt", "--cert"), ("tls.key", "--key")]
            {
                if let Some(v) = data.get(key) {
                    let path = scratch.join(key);
                    write_private(&path, v)?;
                    cmd.arg(flag).arg(path);
                }
            }
        }
        if let Some(inc) = &spec.include {
            for (flag, v) in [
                ("--pki-dir", &inc.pki_dir),
                ("--manifests-dir", &inc.manifests_dir),
                ("--encryption-config", &inc.encryption_config),
            ] {
                if let Some(v) = v {
                    cmd.arg(flag).arg(v);
                }
            }
            for f in &inc.files {
                cmd.arg("--file").arg(f);
            }
        }
        if let Some(c) = &spec.cluster {
            cmd.arg("--cluster").arg(c);
        }
        for (k, v) in &spec.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        cmd.arg("--scratch-dir").arg(scratch);
        Ok(cmd)
    }

    /// A private scratch directory under the work dir.
    pub fn scratch(&self) -> Result<tempfile::TempDir, Error> {
        std::fs::create_dir_all(&self.work_dir).map_err(|e| Error::Io(self.work_dir.clone(), e))?;
        let dir = tempfile::Builder::new()
            .prefix("op-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| Error::Io(self.work_dir.clone(), e))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::Io(dir.path().into(), e))?;
        Ok(dir)
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Io(path.into(), e))?;
    f.write_all(data).map_err(|e| Error::Io(path.into(), e))
}

/// Runs `cmd` to the end: its stdout when it succeeded, else why not.
pub async fn output(mut cmd: Command) -> Result<Vec<u8>, ChildFailure> {
    let out = cmd.output().await.map_err(|e| ChildFailure {
        reason: "BackupFailed",
        message: format!("starting etcdguard: {e}"),
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(ChildFailure { reason: reason_of(out.status.code()), message: last_lines(&out.stderr) })
}

/// The end of a child's stderr, short enough for a condition message.
pub fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join("; ");
    let mut tail = tail.trim().to_string();
    if tail.len() > 1000 {
        let mut cut = 1000;
        while !tail.is_char_boundary(cut) {
            cut -= 1;
        }
        tail.truncate(cut);
        tail.push('…');
    }
    if tail.is_empty() {
        "etcdguard exited without a message".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_name_the_reason() {
        assert_eq!(reason_of(Some(12)), "Unreachable");
        assert_eq!(reason_of(Some(13)), "TlsOrAuth");
        assert_eq!(reason_of(Some(16)), "KeyRequired");
        assert_eq!(reason_of(None), "Killed");
        assert_eq!(reason_of(Some(1)), "BackupFailed");
    }

    #[test]
    fn a_condition_message_is_the_end_of_stderr_and_bounded() {
        assert_eq!(last_lines(b""), "etcdguard exited without a message");
        let text = "a\n\nb\nc\nd\nError: e\n";
        assert_eq!(last_lines(text.as_bytes()), "b; c; d; Error: e");
        let long = "é".repeat(2000);
        let m = last_lines(long.as_bytes());
        assert!(m.len() <= 1000 + '…'.len_utf8() && m.ends_with('…'));
    }
}
