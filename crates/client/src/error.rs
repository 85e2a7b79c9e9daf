//! One error type for everything that can go wrong talking to etcd, with a coarse kind the
//! CLI maps to exit codes, and sentences an operator can act on.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure, for exit codes and retry decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad flags or environment.
    Config,
    /// A local file (TLS material, destination) could not be read or written.
    LocalIo(io::ErrorKind),
    /// The endpoint could not be reached, timed out, or went away.
    Unreachable,
    /// TLS handshake or certificate problem, or authentication/permission refused.
    TlsOrAuth,
    /// The stream's sha256 trailer did not match the received bytes, or was missing.
    Checksum,
    /// Stopped by SIGINT/SIGTERM.
    Interrupted,
    /// The server answered with an error.
    Server,
    /// A safety check refused the operation (quorum, a healthy member, a lagging learner);
    /// nothing was changed.
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {}: {detail}", path.display())]
    BadFile { what: &'static str, path: PathBuf, detail: String },
    #[error("{endpoint}: unreachable: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("{endpoint}: no answer within {}: {during}", fmt_duration(*after))]
    Timeout { endpoint: String, during: &'static str, after: Duration },
    #[error("{endpoint}: TLS failure: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("{endpoint}: authentication failed: {detail}")]
    Auth { endpoint: String, detail: String },
    #[error("{endpoint}: the server refused: {detail}")]
    Server { endpoint: String, detail: String },
    #[error("{endpoint}: the snapshot stream broke after {received} of {expected} bytes: {}", strip_endpoint(&cause.to_string(), endpoint))]
    StreamBroken { endpoint: String, received: u64, expected: u64, cause: Box<ClientError> },
    #[error("{endpoint}: the snapshot stream stalled: no data for {} after {received} of {expected} bytes", fmt_duration(*after))]
    Stalled { endpoint: String, received: u64, expected: u64, after: Duration },
    #[error(
        "{endpoint}: the snapshot stream ended after {received} bytes, {expected} were announced"
    )]
    ShortStream { endpoint: String, received: u64, expected: u64 },
    #[error("{endpoint}: sha256 checksum not found at the end of the stream ({bytes} bytes received); the snapshot is incomplete")]
    NoTrailer { endpoint: String, bytes: u64 },
    #[error("{endpoint}: sha256 mismatch: the server's trailer says {}, the received bytes hash to {}; the snapshot was damaged in transit", hex(expected), hex(actual))]
    Checksum { endpoint: String, expected: [u8; 32], actual: [u8; 32] },
    #[error("writing {target}: {source}")]
    Write { target: String, source: io::Error },
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
    #[error("{0}")]
    NoEndpoint(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{endpoint}: revision {requested} is compacted (the oldest kept is {compact_revision}); the changes before it are gone, a new full snapshot is needed")]
    Compacted { endpoint: String, requested: i64, compact_revision: i64 },
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Config(_) => ErrorKind::Config,
            ClientError::ReadFile { source, .. } => ErrorKind::LocalIo(source.kind()),
            ClientError::BadFile { .. } => ErrorKind::TlsOrAuth,
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Stalled { .. } => ErrorKind::Unreachable,
            ClientError::ShortStream { .. } => ErrorKind::Unreachable,
            ClientError::Tls { .. } | ClientError::Auth { .. } => ErrorKind::TlsOrAuth,
            ClientError::Server { .. } => ErrorKind::Server,
            ClientError::StreamBroken { cause, .. } => cause.kind(),
            ClientError::NoTrailer { .. } | ClientError::Checksum { .. } => ErrorKind::Checksum,
            ClientError::Write { source, .. } => ErrorKind::LocalIo(source.kind()),
            ClientError::Interrupted(_) => ErrorKind::Interrupted,
            ClientError::NoEndpoint(_) => ErrorKind::Unreachable,
            ClientError::Refused(_) => ErrorKind::Refused,
            ClientError::Compacted { .. } => ErrorKind::Server,
        }
    }
}

fn strip_endpoint(msg: &str, endpoint: &str) -> String {
    msg.strip_prefix(endpoint).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg).to_string()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What the classifier needs to know to phrase TLS hints.
pub(crate) struct Context<'a> {
    pub endpoint: &'a str,
    pub cacert: Option<&'a std::path::Path>,
    pub has_client_cert: bool,
}

/// Turns an etcd-client error into a [`ClientError`] with an actionable sentence.
pub(crate) fn classify(ctx: &Context<'_>, err: etcd_client::Error) -> ClientError {
    let endpoint = ctx.endpoint.to_string();
    match err {
        etcd_client::Error::TransportError(e) => classify_chain(ctx, &e, None),
        etcd_client::Error::GRpcStatus(status) => {
            use tonic::Code;
            let msg = status.message().to_string();
            let lower = msg.to_ascii_lowercase();
            let auth_words = [
                "authentication failed",
                "user name",
                "invalid auth token",
                "auth: ",
                "permission denied",
            ];
            match status.code() {
                // etcd answers Authenticate with this when auth is off; the credentials are
                // the problem to fix, so it is an authentication failure, with what to do.
                _ if lower.contains("authentication is not enabled") => ClientError::Auth {
                    endpoint,
                    detail: "authentication is not enabled on this cluster; drop --user/--password (and ETCDCTL_USER/ETCDCTL_PASSWORD), or enable auth (etcdctl auth enable)".into(),
                },
                Code::Unauthenticated | Code::PermissionDenied => ClientError::Auth { endpoint, detail: msg },
                Code::InvalidArgument | Code::FailedPrecondition if auth_words.iter().any(|w| lower.contains(w)) => {
                    ClientError::Auth { endpoint, detail: msg }
                }
                Code::DeadlineExceeded => ClientError::Timeout { endpoint, during: "deadline exceeded", after: Duration::ZERO },
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                    match status.source() {
                        Some(src) => classify_chain(ctx, src, Some(&msg)),
                        None if status.code() == Code::Unavailable => ClientError::Unreachable { endpoint, detail: msg },
                        None => ClientError::Server { endpoint, detail: format!("{:?}: {msg}", status.code()) },
                    }
                }
                code => ClientError::Server { endpoint, detail: format!("{code:?}: {msg}") },
            }
        }
        etcd_client::Error::IoError(e) => classify_chain(ctx, &e, None),
        etcd_client::Error::InvalidUri(e) => {
            ClientError::Config(format!("endpoint {endpoint}: {e}"))
        }
        etcd_client::Error::InvalidArgs(e) => {
            ClientError::Config(format!("endpoint {endpoint}: {e}"))
        }
        other => ClientError::Server { endpoint, detail: other.to_string() },
    }
}

/// Walks an error's source chain (looking inside `io::Error`s, whose `source()` skips the
/// wrapped error) for a rustls error or a connection-level io error.
pub(crate) fn classify_chain(
    ctx: &Context<'_>,
    top: &(dyn StdError + 'static),
    status_msg: Option<&str>,
) -> ClientError {
    let endpoint = ctx.endpoint.to_string();
    let mut texts: Vec<String> = Vec::new();
    if let Some(m) = status_msg {
        texts.push(m.to_string());
    }
    let mut io_kind = None;
    let mut stack: Vec<&(dyn StdError + 'static)> = vec![top];
    while let Some(e) = stack.pop() {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return ClientError::Tls { endpoint, detail: tls_sentence(ctx, tls) };
        }
        let text = e.to_string();
        if !text.is_empty() && !texts.iter().any(|t| t.contains(&text)) {
            texts.push(text);
        }
        if let Some(ioe) = e.downcast_ref::<io::Error>() {
            io_kind.get_or_insert(ioe.kind());
            if let Some(inner) = ioe.get_ref() {
                stack.push(inner);
                continue;
            }
        }
        if let Some(next) = e.source() {
            stack.push(next);
        }
    }
    let joined = texts.join(": ");
    let hint = match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => {
            "connection refused (is etcd running and listening on this address?)"
        }
        Some(io::ErrorKind::TimedOut) => {
            "connection timed out (check the address, firewall and --dial-timeout)"
        }
        Some(io::ErrorKind::ConnectionReset)
        | Some(io::ErrorKind::BrokenPipe)
        | Some(io::ErrorKind::UnexpectedEof) => "the connection was closed by the server",
        _ => "",
    };
    let lower = joined.to_ascii_lowercase();
    let closed = ["broken pipe", "connection reset", "unexpected eof", "connection closed"];
    let hint = if hint.is_empty() && closed.iter().any(|w| lower.contains(w)) {
        "the server closed the connection (did it stop, crash or restart?)"
    } else {
        hint
    };
    let plaintext_to_tls = ctx.endpoint.starts_with("http://")
        && (lower.contains("frame with invalid size")
            || lower.contains("http/1")
            || lower.contains("invalid http version"));
    let detail = if plaintext_to_tls {
        format!("{joined} (the server may require TLS: use https:// with --cacert)")
    } else if !hint.is_empty() {
        format!("{hint}: {joined}")
    } else if joined.is_empty() {
        "connection failed".to_string()
    } else {
        joined
    };
    ClientError::Unreachable { endpoint, detail }
}

fn tls_sentence(ctx: &Context<'_>, e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let ca = match ctx.cacert {
        Some(p) => format!("the CA in --cacert {}", p.display()),
        None => "the system's trusted CAs (no --cacert given)".to_string(),
    };
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "the server's certificate was not issued by {ca}; give the cluster's CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)"
            ),
            C::BadSignature => format!("the server's certificate signature does not verify against {ca}"),
            C::Expired | C::ExpiredContext { .. } => format!("the server's certificate has expired ({e})"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet (check the clocks) ({e})")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server's certificate does not name this host ({e}); use the address the certificate was issued for"
            ),
            _ => format!("the server's certificate was rejected: {e}"),
        },
        E::AlertReceived(alert) => {
            let what = match alert {
                A::CertificateRequired | A::HandshakeFailure | A::BadCertificate | A::CertificateUnknown
                    if !ctx.has_client_cert =>
                {
                    return format!("the server requires a client certificate (alert {alert:?}): give --cert and --key");
                }
                A::CertificateExpired => "it has expired",
                A::UnknownCA => "it was not issued by a CA the server trusts",
                A::BadCertificate | A::CertificateUnknown | A::UnsupportedCertificate => {
                    "it is expired, not issued by a CA the server trusts (--trusted-ca-file), or otherwise invalid"
                }
                A::CertificateRevoked => "it was revoked",
                A::DecryptError => "its signature did not verify (does --key belong to --cert?)",
                _ => "",
            };
            if what.is_empty() {
                format!("the server aborted the TLS handshake (alert {alert:?})")
            } else {
                format!("the server rejected the client certificate (--cert): {what} (TLS alert {alert:?})")
            }
        }
        E::InconsistentKeys(_) => "--key does not belong to --cert (the private key does not match the certificate's public key)".to_string(),
        E::InvalidMessage(_) => format!(
            "the endpoint did not answer with TLS ({e}); if it serves plain http, use http:// and no TLS files"
        ),
        other => other.to_string(),
    }
}
