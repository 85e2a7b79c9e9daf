//! The master key of an encrypted repository wrapped by a key management service instead
//! of (or beside) a passphrase: `keys/<id>.json` then holds what the service's Encrypt
//! returned (`kdf: "kms"`, `kms`: which key), and unlocking asks the service to Decrypt it,
//! so access to the backups follows the service's access policy and audit log.
//!
//! [`KeyWrapper`] is the seam; [`AwsKms`] implements it for AWS KMS (and servers that speak
//! its API). GCP Cloud KMS, Azure Key Vault (wrapKey/unwrapKey) and Vault Transit
//! (encrypt/decrypt) fit the same two calls.

use std::sync::Arc;

use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::RepoError;

/// A key management service key that wraps and unwraps small secrets.
pub trait KeyWrapper: Send + Sync {
    /// Which key, as recorded in a key file (no secret): e.g. `aws-kms:alias/etcd-backups`.
    fn name(&self) -> String;
    /// Encrypts `plain` (the master key) bound to `context` (the repository's id).
    fn wrap(&self, plain: &[u8], context: &str) -> Result<Vec<u8>, RepoError>;
    /// Decrypts what [`KeyWrapper::wrap`] returned under the same `context`.
    fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<Vec<u8>, RepoError>;
}

/// Opens a key named as `--kms-key` takes it: `aws-kms:KEY[?region=R&endpoint=URL]`, KEY a
/// key id, alias (`alias/…`) or ARN.
pub fn open_kms(spec: &str) -> Result<Arc<dyn KeyWrapper>, RepoError> {
    let invalid = |why: &str| RepoError::Invalid(format!("--kms-key {spec:?}: {why}"));
    let Some(rest) = spec.strip_prefix("aws-kms:") else {
        return Err(invalid(
            "give aws-kms:KEY[?region=R&endpoint=URL] (the only service supported so far)",
        ));
    };
    let (key, query) = rest.split_once('?').unwrap_or((rest, ""));
    if key.is_empty() {
        return Err(invalid("no key id, alias or ARN"));
    }
    let mut region = None;
    let mut endpoint = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("region", v)) => region = Some(v.to_string()),
            Some(("endpoint", v)) => endpoint = Some(v.to_string()),
            _ => {
                return Err(invalid(&format!("unknown option {pair:?} (known: region, endpoint)")))
            }
        }
    }
    // An ARN names its region.
    let region = region
        .or_else(|| {
            key.strip_prefix("arn:")
                .and_then(|a| a.split(':').nth(2))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
        })
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .ok_or_else(|| invalid("no region: add ?region=… or set AWS_REGION"))?;
    let endpoint = endpoint
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_KMS").ok())
        .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
    let credentials = Credentials::from_env().ok_or_else(|| {
        RepoError::Store(crate::StoreError::Auth(format!(
            "{spec}: no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )))
    })?;
    Ok(Arc::new(AwsKms {
        key: key.to_string(),
        region,
        endpoint: endpoint.trim_end_matches('/').to_string(),
        credentials,
    }))
}

struct Credentials {
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

impl Credentials {
    fn from_env() -> Option<Credentials> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Credentials {
            access_key: var("AWS_ACCESS_KEY_ID")?,
            secret_key: var("AWS_SECRET_ACCESS_KEY")?,
            token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// A key of AWS KMS, called over its JSON API with Signature V4.
pub struct AwsKms {
    key: String,
    region: String,
    endpoint: String,
    credentials: Credentials,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl AwsKms {
    /// One KMS call (`TrentService.<action>`); the answer's JSON.
    fn call(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value, RepoError> {
        let body = body.to_string();
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let target = format!("TrentService.{action}");
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1".to_string()),
            ("host", host),
            ("x-amz-date", amz_date.clone()),
            ("x-amz-target", target),
        ];
        if let Some(t) = &self.credentials.token {
            headers.push(("x-amz-security-token", t.clone()));
        }
        headers.sort();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        let signed = signed.join(";");
        let canonical_headers: String =
            headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let canonical = format!(
            "POST\n/\n\n{canonical_headers}\n{signed}\n{}",
            hex(&Sha256::digest(body.as_bytes()))
        );
        let scope = format!("{date}/{}/kms/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key =
            hmac(format!("AWS4{}", self.credentials.secret_key).as_bytes(), date.as_bytes());
        for part in [self.region.as_str(), "kms", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.credentials.access_key
        );
        let mut request = ureq::post(&format!("{}/", self.endpoint))
            .timeout(std::time::Duration::from_secs(30))
            .set("Authorization", &authorization);
        for (k, v) in &headers {
            if *k != "host" {
                request = request.set(k, v);
            }
        }
        let what = format!("KMS {action} with {}", self.name());
        match request.send_string(&body) {
            Ok(resp) => resp
                .into_json()
                .map_err(|e| RepoError::Io(format!("{what}: unreadable answer: {e}"))),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let error = crate::StoreError::Auth(format!(
                    "{what}: HTTP {code}: {}",
                    text.chars().take(300).collect::<String>()
                ));
                Err(match code {
                    400 if text.contains("InvalidCiphertext") => RepoError::WrongPassphrase(
                        format!("{what}: the key does not open this key file"),
                    ),
                    400..=499 => RepoError::Store(error),
                    _ => RepoError::Store(crate::StoreError::ServerFailing(format!(
                        "{what}: HTTP {code}"
                    ))),
                })
            }
            Err(e) => Err(RepoError::Store(crate::StoreError::Unreachable(format!("{what}: {e}")))),
        }
    }
}

impl KeyWrapper for AwsKms {
    fn name(&self) -> String {
        format!("aws-kms:{}", self.key)
    }

    fn wrap(&self, plain: &[u8], context: &str) -> Result<Vec<u8>, RepoError> {
        let answer = self.call(
            "Encrypt",
            serde_json::json!({"KeyId": self.key, "Plaintext": B64.encode(plain), "EncryptionContext": {"etcdguard-repository": context}}),
        )?;
        blob(&answer, "CiphertextBlob")
    }

    fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<Vec<u8>, RepoError> {
        let answer = self.call(
            "Decrypt",
            serde_json::json!({"KeyId": self.key, "CiphertextBlob": B64.encode(wrapped), "EncryptionContext": {"etcdguard-repository": context}}),
        )?;
        blob(&answer, "Plaintext")
    }
}

fn blob(answer: &serde_json::Value, field: &str) -> Result<Vec<u8>, RepoError> {
    answer
        .get(field)
        .and_then(|v| v.as_str())
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| RepoError::Io(format!("KMS answer without {field}")))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    crate::id::hex(b)
}
