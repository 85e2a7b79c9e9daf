//! Is the API server back? Its `/readyz` over HTTPS when it answers one, else its port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What one look at the API server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiServerState {
    /// `/readyz` answered 200.
    Ready,
    /// The port is open but readiness cannot be read (the answer is 401/403 without a client
    /// certificate, or the port does not speak TLS); the open port is all there is to know.
    PortOnly(String),
    /// Not ready yet (port closed, or `/readyz` answered another status).
    NotYet(String),
}

/// Accepts any server certificate, checking only that the handshake is signed by it.
///
/// Used for one thing: asking the API server on this node's loopback address whether it is
/// ready. No secret is sent and nothing in the answer is trusted beyond "ready"; the CA that
/// signed the serving certificate may be the one being restored, and some layouts serve a
/// certificate without the loopback address in it, so verifying would only make the probe
/// fail on healthy nodes.
#[derive(Debug)]
struct LoopbackReadinessOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for LoopbackReadinessOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One look at the API server at `addr` (`host:port`, a loopback address).
pub fn probe_apiserver(addr: &str) -> ApiServerState {
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return ApiServerState::NotYet(format!("cannot resolve {addr}"));
    };
    let Ok(tcp) = TcpStream::connect_timeout(&sock, Duration::from_secs(1)) else {
        return ApiServerState::NotYet("port closed".into());
    };
    if !sock.ip().is_loopback() {
        // Certificates are skipped only on loopback; elsewhere the open port is the answer.
        return ApiServerState::PortOnly("not a loopback address; /readyz not asked".into());
    }
    match readyz(sock, tcp) {
        Ok(200) => ApiServerState::Ready,
        Ok(code @ (401 | 403)) => ApiServerState::PortOnly(format!(
            "/readyz answered {code} without a client certificate"
        )),
        Ok(code) => ApiServerState::NotYet(format!("/readyz answered {code}")),
        Err(e) => ApiServerState::PortOnly(format!("no HTTPS answer on the port ({e})")),
    }
}

fn readyz(sock: SocketAddr, tcp: TcpStream) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LoopbackReadinessOnly(provider)))
        .with_no_client_auth();
    let name = ServerName::IpAddress(sock.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let host = sock.ip();
    tls.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    code.filter(|_| line.starts_with("HTTP/")).ok_or_else(|| "not an HTTP answer".to_string())
}
