//! One connection to one endpoint: TLS material, HTTP/2 settings, auth.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::ConnectConfig;
use crate::error::{classify, classify_chain, ClientError, Context};

/// HTTP/2 windows large enough that the server never waits for window updates while it
/// streams a snapshot (it sends 32 KiB messages back to back).
const STREAM_WINDOW: u32 = 32 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest gRPC message accepted; etcd's own server-side default limit is 1.5 MiB requests and
/// responses up to 2 GiB, so be generous.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// A connected client for one endpoint.
pub struct Connection {
    pub endpoint: String,
    pub(crate) client: etcd_client::Client,
    pub(crate) cfg: ConnectConfig,
}

impl Connection {
    pub(crate) fn ctx(&self) -> Context<'_> {
        context(&self.cfg, &self.endpoint)
    }

    pub(crate) fn classify(&self, e: etcd_client::Error) -> ClientError {
        classify(&self.ctx(), e)
    }

    /// Runs a unary call with `--command-timeout`.
    pub(crate) async fn unary<T, F>(&self, during: &'static str, fut: F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.cfg.command_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => Err(ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                during,
                after: self.cfg.command_timeout,
            }),
        }
    }
}

pub(crate) fn context<'a>(cfg: &'a ConnectConfig, endpoint: &'a str) -> Context<'a> {
    Context { endpoint, cacert: cfg.cacert.as_deref(), has_client_cert: cfg.cert.is_some() }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ClientError::BadFile {
            what,
            path: path.to_path_buf(),
            detail: "not a PEM file (no -----BEGIN line)".into(),
        });
    }
    Ok(bytes)
}

/// TLS settings for https endpoints, built once from the files named in the config.
#[derive(Clone)]
pub(crate) struct TlsMaterial {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    pub(crate) fn load(cfg: &ConnectConfig) -> Result<Option<TlsMaterial>, ClientError> {
        if !cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Ok(None);
        }
        let ca = cfg.cacert.as_deref().map(|p| read_pem("--cacert", p)).transpose()?;
        let identity = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((read_pem("--cert", c)?, read_pem("--key", k)?)),
            _ => None,
        };
        Ok(Some(TlsMaterial { ca, identity }))
    }

    fn config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}

/// Connects to `endpoint` (a normalised URL) within `--dial-timeout` and authenticates when
/// a user is configured.
pub async fn connect(cfg: &ConnectConfig, endpoint: &str) -> Result<Connection, ClientError> {
    let tls = TlsMaterial::load(cfg)?;
    connect_with(cfg, tls.as_ref(), endpoint).await
}

pub(crate) async fn connect_with(
    cfg: &ConnectConfig,
    tls: Option<&TlsMaterial>,
    endpoint: &str,
) -> Result<Connection, ClientError> {
    let ctx = context(cfg, endpoint);
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| ClientError::Config(format!("endpoint {endpoint}: {e}")))?
        .connect_timeout(cfg.dial_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        let Some(tls) = tls else {
            return Err(ClientError::Config(format!(
                "endpoint {endpoint}: TLS settings were not loaded"
            )));
        };
        ep = ep.tls_config(tls.config()).map_err(|e| classify_chain(&ctx, &e, None))?;
    }
    let channel = match tokio::time::timeout(cfg.dial_timeout, ep.connect()).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => return Err(classify_chain(&ctx, &e, None)),
        Err(_) => {
            return Err(ClientError::Timeout {
                endpoint: endpoint.to_string(),
                during: "connecting (check the address and --dial-timeout)",
                after: cfg.dial_timeout,
            })
        }
    };
    let mut options = etcd_client::ConnectOptions::new();
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        options = options.with_user(user.clone(), password.expose().to_string());
    }
    let client = match tokio::time::timeout(
        cfg.command_timeout,
        etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(classify(&ctx, e)),
        Err(_) => {
            return Err(ClientError::Timeout {
                endpoint: endpoint.to_string(),
                during: "authenticating",
                after: cfg.command_timeout,
            })
        }
    };
    Ok(Connection { endpoint: endpoint.to_string(), client, cfg: cfg.clone() })
}
