//! Where a repository's objects live: a local directory or an object store bucket.
//!
//! [`Store`] is the small, synchronous interface the rest of the crate uses: whole-object
//! put/get, ranged get, list by prefix, delete and (object stores only) presigned URLs.
//! Every `put` is atomic: a reader sees the old object, or none, or the whole new one.
//!
//! The local backend is our own rather than `object_store`'s `LocalFileSystem`: that one
//! stages and renames, but neither fsyncs the file and its directory nor makes files private,
//! and backups hold cluster CA keys. Here every file is written 0600 under a temporary name
//! in its final directory, fsynced, renamed into place, and the directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, PutPayload};

/// A temporary file (`.tmp-*`, local directories) this old belongs to a killed writer: no
/// write of one object takes this long, and a lock's lifetime is far shorter.
pub const TEMPORARY_FILE_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// What went wrong talking to the storage, sorted by what a user does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("access denied: {0}")]
    Auth(String),
    #[error("bucket or container does not exist: {0}")]
    BucketMissing(String),
    #[error("storage unreachable: {0}")]
    Unreachable(String),
    /// The server answered with 5xx errors until the retries ran out.
    #[error("the storage server kept failing: {0}")]
    ServerFailing(String),
    #[error("{0}: not supported by this kind of repository")]
    Unsupported(String),
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An object is shorter than what is read of it: it was truncated (damage).
    #[error("{0}: shorter than expected; the object was truncated (damaged)")]
    Truncated(String),
    #[error("{0}")]
    Other(String),
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// Last modification, seconds since the epoch (0 when unknown).
    pub modified: i64,
}

/// The storage interface of a repository. Keys are `/`-separated and relative to the
/// repository root (the local directory, or bucket + prefix).
pub trait Store: Send + Sync {
    /// Human-readable location, for messages (no credentials).
    fn location(&self) -> String;
    /// Writes a whole object atomically, replacing any existing one.
    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Writes an object as `produce` streams it, without holding it in memory (multipart
    /// upload, or a temporary file renamed at the end). When `produce` fails nothing is left
    /// under `key`.
    fn put_streaming(
        &self,
        key: &str,
        produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), StoreError>;
    fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Removes an object; removing one that is already gone is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether the repository location itself exists (directory, bucket).
    fn check_reachable(&self) -> Result<(), StoreError>;
    /// Removes what killed writers left under `prefix`: in a local directory, `.tmp-*`
    /// files whose last change is at least `older_than` ago (a live writer's temporary file
    /// is younger, or protected by a lock the caller holds). Object stores leave nothing
    /// visible (an unfinished multipart upload is not an object; a bucket lifecycle rule
    /// aborts those). Returns how many were removed.
    fn sweep_temporaries(&self, prefix: &str, older_than: Duration) -> Result<usize, StoreError> {
        let _ = (prefix, older_than);
        Ok(0)
    }
    /// A URL anyone holding it can GET the object from until it expires.
    fn presigned_url(&self, key: &str, expires: Duration) -> Result<String, StoreError> {
        let _ = expires;
        Err(StoreError::Unsupported(format!("presigned URLs for {key} in {}", self.location())))
    }
}

/// Opens the store a repository URL names: a path or `file://` URL (local directory),
/// `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or `az://container[/prefix]`.
///
/// Object store options come from the environment as the cloud SDKs read it
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_PROFILE` and `~/.aws/credentials`; `GOOGLE_APPLICATION_CREDENTIALS`;
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR` …)
/// and from query parameters on the URL: `endpoint=`, `region=`, `path-style=true|false`
/// (S3), `account=` (Azure), `retries=`. Without S3 credentials, the instance metadata
/// address is asked only for AWS itself and unless `AWS_EC2_METADATA_DISABLED=true`;
/// otherwise requests go unsigned.
pub fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let invalid =
        |reason: &str| StoreError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let Some((scheme, _)) = url.split_once("://") else {
        return Ok(Arc::new(LocalDir::new(PathBuf::from(url))));
    };
    if scheme == "file" {
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let path = parsed.to_file_path().map_err(|_| invalid("not an absolute local path"))?;
        return Ok(Arc::new(LocalDir::new(path)));
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    let bucket = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("no bucket name"))?
        .to_string();
    let prefix = parsed.path().trim_matches('/').to_string();
    let opts: Vec<(String, String)> =
        parsed.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let opt = |name: &str| opts.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for (k, _) in &opts {
        if !KNOWN_OPTIONS.contains(&k.as_str()) {
            return Err(invalid(&format!(
                "unknown option {k:?} (known: {})",
                KNOWN_OPTIONS.join(", ")
            )));
        }
        if S3_ONLY_OPTIONS.contains(&k.as_str()) && scheme != "s3" {
            return Err(invalid(&format!("{k} is an option of s3:// repositories")));
        }
    }
    let retries: usize = match opt("retries") {
        Some(v) => v.parse().map_err(|_| invalid("retries must be a number"))?,
        None => {
            std::env::var("ETCDGUARD_STORE_RETRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
        }
    };
    let timeout = match opt("timeout") {
        Some(v) => {
            crate::retention::parse_duration(&v).map_err(|e| invalid(&format!("timeout: {e}")))?
        }
        None => Duration::from_secs(120),
    };
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: retries,
        retry_timeout: Duration::from_secs(120),
    };
    let endpoint_opt = opt("endpoint");
    let client = object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(timeout)
        .with_allow_http(endpoint_opt.as_deref().is_some_and(|e| e.starts_with("http://")));
    let build_err = |e: object_store::Error| invalid(&e.to_string());
    let (store, signer, kind): (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>, &str) = match scheme
    {
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket);
            let endpoint = opt("endpoint")
                .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            let mut client = client;
            if let Some(e) = &endpoint {
                b = b.with_endpoint(e);
                client = client.with_allow_http(e.starts_with("http://"));
            }
            let region = opt("region")
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .or_else(|| aws_profile_value("region", true));
            if let Some(r) = region {
                b = b.with_region(r);
            }
            // Path-style is what S3-compatible servers (MinIO, Ceph, moto) expect; AWS takes both.
            let path_style = match opt("path-style").as_deref() {
                None => endpoint.is_some(),
                Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(_) => return Err(invalid("path-style must be true or false")),
            };
            b = b.with_virtual_hosted_style_request(!path_style);
            // Server-side encryption of every object etcdguard writes (on top of its own,
            // when the repository is encrypted): SSE-S3, or SSE-KMS with the bucket's or a given key.
            match (opt("sse"), opt("sse-kms-key-id")) {
                (None, None) => {}
                (Some(kind), key) => {
                    use object_store::aws::AmazonS3ConfigKey;
                    let config = |k: &str| {
                        k.parse::<AmazonS3ConfigKey>().expect("an object_store S3 option")
                    };
                    if !["AES256", "aws:kms", "aws:kms:dsse"].contains(&kind.as_str()) {
                        return Err(invalid("sse must be AES256, aws:kms or aws:kms:dsse"));
                    }
                    if key.is_some() && kind == "AES256" {
                        return Err(invalid("sse-kms-key-id needs sse=aws:kms or aws:kms:dsse"));
                    }
                    b = b.with_config(config("aws_server_side_encryption"), kind);
                    if let Some(key) = key {
                        b = b.with_config(config("aws_sse_kms_key_id"), key);
                    }
                }
                (None, Some(_)) => {
                    return Err(invalid("sse-kms-key-id needs sse=aws:kms or aws:kms:dsse"))
                }
            }
            // A SHA-256 of every upload, checked by the server before it stores the object.
            // Buckets with S3 Object Lock (a default retention) refuse uploads without one.
            match opt("checksum").as_deref() {
                None => {}
                Some("sha256") => {
                    b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
                    let mut headers = http::HeaderMap::new();
                    // What the AWS SDKs send along with the checksum; S3-compatible servers
                    // (moto) look for it on uploads into an Object Lock bucket.
                    headers.insert(
                        "x-amz-sdk-checksum-algorithm",
                        http::HeaderValue::from_static("SHA256"),
                    );
                    client = client.with_default_headers(headers);
                }
                Some(_) => return Err(invalid("checksum must be sha256")),
            }
            if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
                if let (Some(id), Some(secret)) = (
                    aws_profile_value("aws_access_key_id", false),
                    aws_profile_value("aws_secret_access_key", false),
                ) {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(token) = aws_profile_value("aws_session_token", false) {
                        b = b.with_token(token);
                    }
                }
            }
            let has_credentials = [
                "AWS_ACCESS_KEY_ID",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
                || (std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
                    && std::env::var_os("AWS_ROLE_ARN").is_some())
                || aws_profile_value("aws_access_key_id", false).is_some();
            let metadata_disabled = std::env::var("AWS_EC2_METADATA_DISABLED")
                .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            if !has_credentials
                && !may_ask_instance_metadata(endpoint.as_deref(), metadata_disabled)
            {
                // No credentials to sign with: requests go unsigned (a server that wants
                // them answers 403), and nothing asks the cloud metadata address.
                b = b.with_skip_signature(true);
            }
            let s3 = Arc::new(
                b.with_retry(retry).with_client_options(client).build().map_err(build_err)?,
            );
            (s3.clone(), Some(s3), "s3")
        }
        "gs" => {
            let g = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(build_err)?;
            let g = Arc::new(g);
            (g.clone(), Some(g), "gs")
        }
        "az" | "azure" => {
            let mut b =
                object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(&bucket);
            if let Some(a) = opt("account") {
                b = b.with_account(a);
            }
            if let Some(e) = opt("endpoint") {
                b = b.with_endpoint(e.clone());
            }
            if std::env::var("AZURE_STORAGE_USE_EMULATOR").is_ok_and(|v| v == "true" || v == "1") {
                b = b.with_use_emulator(true);
            }
            let a = Arc::new(
                b.with_retry(retry).with_client_options(client).build().map_err(build_err)?,
            );
            (a.clone(), Some(a), "az")
        }
        other => {
            return Err(invalid(&format!(
                "unknown scheme {other:?} (use a path, file://, s3://, gs:// or az://)"
            )))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("etcdguard-store")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Other(format!("starting the I/O runtime: {e}")))?;
    Ok(Arc::new(ObjectStoreBackend {
        store,
        signer,
        runtime,
        location: format!("{kind}://{bucket}{}{prefix}", if prefix.is_empty() { "" } else { "/" }),
        bucket,
        prefix,
    }))
}

/// Whether an S3 client without credentials may fetch them from the EC2 instance metadata
/// address (169.254.169.254), as the AWS SDKs do: not when `AWS_EC2_METADATA_DISABLED=true`,
/// and not for an endpoint outside AWS (MinIO, Ceph, a test server), whose credentials no
/// instance role provides.
fn may_ask_instance_metadata(endpoint: Option<&str>, disabled: bool) -> bool {
    let aws_endpoint = |e: &str| {
        url::Url::parse(e)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|h| h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn"))
    };
    !disabled && endpoint.is_none_or(aws_endpoint)
}

/// Query options of a repository URL.
const KNOWN_OPTIONS: [&str; 9] = [
    "endpoint",
    "region",
    "path-style",
    "account",
    "retries",
    "timeout",
    "sse",
    "sse-kms-key-id",
    "checksum",
];
const S3_ONLY_OPTIONS: [&str; 3] = ["sse", "sse-kms-key-id", "checksum"];

/// Reads one value from the AWS shared config files, as the SDKs do: `AWS_PROFILE` (or
/// `default`) in `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`), or in
/// `AWS_CONFIG_FILE` (or `~/.aws/config`, where sections are `[profile NAME]`).
fn aws_profile_value(key: &str, config_file: bool) -> Option<String> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let (path, section) = if config_file {
        let p = std::env::var_os("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        (p, if profile == "default" { "default".to_string() } else { format!("profile {profile}") })
    } else {
        let p = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        (p, profile)
    };
    let text = fs::read_to_string(path).ok()?;
    ini_value(&text, &section, key)
}

fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current == section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Local directory

/// A repository in a local directory. Directories are created 0700, files 0600.
pub struct LocalDir {
    root: PathBuf,
}

const TEMP_PREFIX: &str = ".tmp-";

impl LocalDir {
    pub fn new(root: PathBuf) -> LocalDir {
        LocalDir { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io_err(&self, key: &str, e: io::Error) -> StoreError {
        let what = self.path(key).display().to_string();
        match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(what),
            io::ErrorKind::PermissionDenied => {
                StoreError::Auth(format!("{what}: permission denied"))
            }
            _ => StoreError::Other(format!("{what}: {e}")),
        }
    }

    fn list_into(&self, dir: &Path, rel: &str, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let ty = entry.file_type()?;
            let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if ty.is_dir() {
                self.list_into(&entry.path(), &key, out)?;
            } else if ty.is_file() {
                let meta = entry.metadata()?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                out.push(ObjectInfo { key, size: meta.len(), modified });
            }
        }
        Ok(())
    }
}

/// Removes `.tmp-*` files under `dir` last modified before `cutoff` (symlinks and
/// directories of that name are left alone; nothing etcdguard writes is one).
fn sweep_dir(dir: &Path, cutoff: std::time::SystemTime, removed: &mut usize) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            sweep_dir(&entry.path(), cutoff, removed)?;
        } else if ty.is_file() && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let old = entry.metadata()?.modified().map(|m| m <= cutoff).unwrap_or(false);
            if old {
                match fs::remove_file(entry.path()) {
                    Ok(()) => *removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700.
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `data` to `path` atomically: a private temporary file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_file_atomic_with(path, &mut |w: &mut dyn Write| w.write_all(data))
}

/// As [`write_file_atomic`], with the content streamed by `produce`; when it fails the
/// temporary file is removed and `path` is untouched.
pub fn write_file_atomic_with(
    path: &Path,
    produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        produce(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Store for LocalDir {
    fn put_streaming(
        &self,
        key: &str,
        produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            create_private_dirs(dir).map_err(|e| self.io_err(key, e))?;
        }
        write_file_atomic_with(&path, produce).map_err(|e| self.io_err(key, e))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            create_private_dirs(dir).map_err(|e| self.io_err(key, e))?;
        }
        write_file_atomic(&path, &data).map_err(|e| self.io_err(key, e))
    }

    fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        fs::read(self.path(key)).map(Bytes::from).map_err(|e| self.io_err(key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let f = File::open(self.path(key)).map_err(|e| self.io_err(key, e))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.read_exact_at(&mut buf, range.start).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::Truncated(format!(
                    "{} (wanted bytes {range:?})",
                    self.path(key).display()
                ))
            } else {
                self.io_err(key, e)
            }
        })?;
        Ok(Bytes::from(buf))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let rel = prefix.trim_end_matches('/');
        let mut out = Vec::new();
        self.list_into(&self.path(rel), rel, &mut out).map_err(|e| self.io_err(prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(key, e)),
        }
    }

    fn sweep_temporaries(&self, prefix: &str, older_than: Duration) -> Result<usize, StoreError> {
        let rel = prefix.trim_end_matches('/');
        let cutoff =
            std::time::SystemTime::now().checked_sub(older_than).unwrap_or(std::time::UNIX_EPOCH);
        let mut removed = 0;
        sweep_dir(&self.path(rel), cutoff, &mut removed).map_err(|e| self.io_err(prefix, e))?;
        Ok(removed)
    }

    fn check_reachable(&self) -> Result<(), StoreError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Other(format!("{}: not a directory", self.root.display()))),
            Err(e) => Err(self.io_err("", e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Object stores

/// S3, GCS or Azure through the `object_store` crate, driven by a small private runtime.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<dyn Signer>>,
    runtime: tokio::runtime::Runtime,
    location: String,
    bucket: String,
    prefix: String,
}

/// Objects larger than this are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 << 20;
const MULTIPART_PART: usize = 8 << 20;

impl ObjectStoreBackend {
    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> StoreError {
        let text = error_chain(&e);
        match e {
            object_store::Error::NotFound { .. } => {
                if text.contains("NoSuchBucket")
                    || text.contains("ContainerNotFound")
                    || text.contains("bucket does not exist")
                {
                    StoreError::BucketMissing(format!("{} ({text})", self.bucket))
                } else {
                    StoreError::NotFound(format!("{}/{key}", self.location))
                }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                StoreError::Auth(format!("{}: {text}", self.location))
            }
            _ => classify_text(&self.location, &self.bucket, &text),
        }
    }
}

fn classify_text(location: &str, bucket: &str, text: &str) -> StoreError {
    let lower = text.to_ascii_lowercase();
    if text.contains("NoSuchBucket")
        || text.contains("ContainerNotFound")
        || lower.contains("specified bucket does not exist")
    {
        StoreError::BucketMissing(format!("{bucket} ({text})"))
    } else if text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("AccessDenied")
        || text.contains("AuthenticationFailed")
        || text.contains("AuthorizationFailure")
        || lower.contains("403 forbidden")
        || lower.contains("401 unauthorized")
    {
        StoreError::Auth(format!("{location}: {text}"))
    } else if lower.contains("error sending request")
        || lower.contains("connection refused")
        || lower.contains("connect error")
        || lower.contains("dns error")
        || lower.contains("timed out")
        || lower.contains("connection reset")
    {
        StoreError::Unreachable(format!("{location}: {text}"))
    } else if lower.contains("status code: 5") {
        StoreError::ServerFailing(format!("{location}: {text}"))
    } else {
        StoreError::Other(format!("{location}: {text}"))
    }
}

/// The error and its sources on one line (object_store nests the HTTP status and body).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// Feeds a multipart upload from synchronous writes, with at most a few parts in flight.
struct MultipartWriter<'a> {
    runtime: &'a tokio::runtime::Runtime,
    writer: Option<object_store::WriteMultipart>,
}

impl Write for MultipartWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let w = self.writer.as_mut().expect("writer open until finished");
        self.runtime
            .block_on(w.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT))
            .map_err(io::Error::other)?;
        w.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

impl Store for ObjectStoreBackend {
    fn put_streaming(
        &self,
        key: &str,
        produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let path = self.path(key);
        let upload = self
            .runtime
            .block_on(self.store.put_multipart(&path))
            .map_err(|e| self.map_err(key, e))?;
        let mut w = MultipartWriter {
            runtime: &self.runtime,
            writer: Some(object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART)),
        };
        // WriteMultipart spawns its part uploads on the runtime of the calling context.
        let produced = {
            let _in_runtime = self.runtime.enter();
            produce(&mut w)
        };
        let writer = w.writer.take().expect("writer open until finished");
        match produced {
            Ok(()) => {
                self.runtime.block_on(writer.finish()).map(|_| ()).map_err(|e| self.map_err(key, e))
            }
            Err(e) => {
                // Abort so no part lingers (and nothing appears under the key).
                let _ = self.runtime.block_on(writer.abort());
                Err(StoreError::Other(format!("{}/{key}: {e}", self.location)))
            }
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if data.len() > MULTIPART_THRESHOLD {
            // Large objects go in parts; a failed upload is aborted so nothing partial remains.
            return self.put_streaming(key, &mut |w: &mut dyn Write| w.write_all(&data));
        }
        let path = self.path(key);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.map_err(key, e))
    }

    fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        self.runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| self.map_err(key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        let want = range.end - range.start;
        let got = self
            .runtime
            .block_on(self.store.get_range(&path, range.clone()))
            .map_err(|e| self.map_err(key, e))?;
        if got.len() as u64 != want {
            return Err(StoreError::Truncated(format!(
                "{}/{key} (wanted {want} bytes at {}, got {})",
                self.location,
                range.start,
                got.len()
            )));
        }
        Ok(got)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip =
            if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out: Vec<ObjectInfo> = self
            .runtime
            .block_on(async { self.store.list(Some(&full)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.map_err(prefix, e))?
            .into_iter()
            .map(|m| ObjectInfo {
                key: m
                    .location
                    .as_ref()
                    .strip_prefix(strip.as_str())
                    .unwrap_or(m.location.as_ref())
                    .to_string(),
                size: m.size,
                modified: m.last_modified.timestamp(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(key, e)),
        }
    }

    fn check_reachable(&self) -> Result<(), StoreError> {
        // Listing a prefix that need not exist tells a missing bucket and bad credentials
        // apart from an empty repository.
        let path = self.path("config");
        match self.runtime.block_on(async { self.store.list_with_delimiter(Some(&path)).await }) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.map_err("", e)),
        }
    }

    fn presigned_url(&self, key: &str, expires: Duration) -> Result<String, StoreError> {
        let Some(signer) = &self.signer else {
            return Err(StoreError::Unsupported(format!("presigned URLs in {}", self.location)));
        };
        let path = self.path(key);
        self.runtime
            .block_on(signer.signed_url(http::Method::GET, &path, expires))
            .map(|u| u.to_string())
            .map_err(|e| self.map_err(key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn local_put_is_private_and_listable() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path().join("repo"));
        store.put("packs/ab/abcd", Bytes::from_static(b"hello")).unwrap();
        store.put("config", Bytes::from_static(b"{}")).unwrap();
        let mode =
            fs::metadata(dir.path().join("repo/packs/ab/abcd")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(dir.path().join("repo/packs/ab")).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let keys: Vec<_> = store.list("packs/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["packs/ab/abcd"]);
        assert_eq!(&store.get_range("packs/ab/abcd", 1..4).unwrap()[..], b"ell");
        assert!(matches!(store.get("nope"), Err(StoreError::NotFound(_))));
        store.delete("packs/ab/abcd").unwrap();
        store.delete("packs/ab/abcd").unwrap();
        assert!(store.list("packs/").unwrap().is_empty());
        assert!(store.list("missing/").unwrap().is_empty());
    }

    #[test]
    fn ini_profiles() {
        let text = "[default]\naws_access_key_id = A\n\n[profile x]\nregion=eu-west-1\n[other]\naws_access_key_id=B\n";
        assert_eq!(ini_value(text, "default", "aws_access_key_id").as_deref(), Some("A"));
        assert_eq!(ini_value(text, "other", "aws_access_key_id").as_deref(), Some("B"));
        assert_eq!(ini_value(text, "profile x", "region").as_deref(), Some("eu-west-1"));
        assert_eq!(ini_value(text, "nope", "region"), None);
    }

    #[test]
    fn instance_metadata_is_asked_only_on_aws_without_credentials() {
        assert!(may_ask_instance_metadata(None, false));
        assert!(may_ask_instance_metadata(
            Some("https://bucket.vpce-1a2b.s3.us-east-1.vpce.amazonaws.com"),
            false
        ));
        assert!(!may_ask_instance_metadata(None, true));
        assert!(!may_ask_instance_metadata(Some("http://127.0.0.1:9000"), false));
        assert!(!may_ask_instance_metadata(Some("https://minio.example.com"), false));
        assert!(!may_ask_instance_metadata(Some("not a url"), false));
    }

    #[test]
    fn urls() {
        assert!(open_url("/tmp/x").unwrap().location().ends_with("/tmp/x"));
        assert!(matches!(open_url("ftp://x/y"), Err(StoreError::InvalidUrl { .. })));
        assert!(matches!(open_url("s3://b/p?bogus=1"), Err(StoreError::InvalidUrl { .. })));
        let s = open_url("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&region=us-east-1")
            .unwrap();
        assert_eq!(s.location(), "s3://bucket/some/prefix");
    }
}
