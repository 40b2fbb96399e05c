//! The joiner's side: [`request_certificate`] dials a cluster node's join port, sends one
//! [`JoinRequest`], and checks the answer before trusting anything in it.
//!
//! Order of trust: the TLS layer accepts whatever certificate the server presents (the
//! joiner has no CA yet) but still verifies the handshake signature with that
//! certificate's key, so the session belongs to the holder of that key. Nothing is trusted
//! until [`JoinResponse::verify`] has checked the response HMAC under the join secret (it
//! covers our nonce, the issued certificate and the CA certificate) and the certificate's
//! contents. Then the server's TLS certificate must chain to that CA and be a valid node
//! certificate (WebPKI with the returned CA as the only root; its `<id>.node.shoal` name
//! must match its key): a secret holder outside the cluster is refused.

use super::{frame, JoinReply, JOIN_ALPN, MAX_JOIN_REPLY_LEN, MAX_REFUSAL_LEN};
use crate::pki::cert::node_id_of_cert;
use crate::pki::tls::{crypto_provider, server_name};
use crate::pki::{node_dns_name, JoinRequest, JoinResponse, NodeCertificate, PkiError};
use crate::frame::{read_frame, FrameError, ReadTimeouts};
use rand::SeedableRng;
use rcgen::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use shoal_secret::JoinSecret;
use shoal_wire::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

/// Why a join attempt failed. Nothing was trusted or kept in any case. Messages never
/// contain the secret; a refusal's text comes from the server (control characters
/// removed, length bounded).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot build the join request: {0}")]
    Request(#[source] PkiError),
    #[error("join TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("join with {addr} did not finish within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connection to {addr} failed during the join: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} sent no usable answer: {reason}")]
    BadReply { addr: SocketAddr, reason: String },
    #[error("{addr} refused the join: {message}")]
    Refused { addr: SocketAddr, message: String },
    /// The answer verifies, but its CA is not the one the token pins: whoever answered holds
    /// the secret without being that cluster. Nothing it sent is kept.
    #[error(
        "{addr} answered for a cluster whose CA has digest {got}, but the token pins CA {pinned}: \
         refusing to join (a leaked token, or another cluster started with the same secret); check the token with \
         `shoal token show` on a node of the cluster you meant"
    )]
    OtherCa { addr: SocketAddr, got: shoal_secret::CaPin, pinned: shoal_secret::CaPin },
    /// The answer does not verify: the server does not hold the join secret (HMAC), or the
    /// certificate is not what was asked for.
    #[error("answer from {addr} refused: {source}")]
    Untrusted {
        addr: SocketAddr,
        #[source]
        source: PkiError,
    },
    /// The answer verifies, but the server's own TLS certificate is not a node certificate
    /// of the CA it vouched for.
    #[error("{addr} is not a member of the cluster it vouched for: {reason}")]
    ServerNotInCluster { addr: SocketAddr, reason: String },
}

/// TLS layer of the joiner: accepts any server certificate for this session only, but
/// verifies the handshake signature with the presented key.
#[derive(Debug)]
struct SessionOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SessionOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Deliberately no PKI check here: the joiner has no trust anchor yet. The answer's
        // HMAC and the chain check after it decide (see the module docs).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The joiner's TLS config: TLS 1.3, ring, no client certificate, the session-only
/// verifier, no resumption, ALPN `shoal-join/1`.
pub fn client_tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = crypto_provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SessionOnlyVerifier { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// TCP + TLS to a join port (the server's certificate is not checked yet).
pub(crate) async fn connect(addr: SocketAddr) -> Result<TlsStream<TcpStream>, JoinError> {
    let connector = TlsConnector::from(client_tls_config()?);
    let tcp = TcpStream::connect(addr).await.map_err(|source| JoinError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    connector.connect(server_name(None), tcp).await.map_err(|source| JoinError::Handshake { addr, source })
}

/// Asks the join server at `addr` for a certificate for `key`, proving knowledge of
/// `secret`. The whole exchange (connect, handshake, answer) is bounded by `timeout`.
/// On success the certificate is signed by the cluster CA, names `key`'s node id, and the
/// server that gave it presented a valid node certificate of that CA.
pub async fn request_certificate(
    addr: SocketAddr,
    secret: &JoinSecret,
    key: &KeyPair,
    timeout: Duration,
) -> Result<NodeCertificate, JoinError> {
    request_pinned_certificate(addr, secret, None, key, timeout).await
}

/// [`request_certificate`], refusing an answer whose CA is not `pin` (a `shoal2-` token's).
pub async fn request_pinned_certificate(
    addr: SocketAddr,
    secret: &JoinSecret,
    pin: Option<shoal_secret::CaPin>,
    key: &KeyPair,
    timeout: Duration,
) -> Result<NodeCertificate, JoinError> {
    let request = {
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        JoinRequest::new(secret, key, &mut rng).map_err(JoinError::Request)?
    };
    let exchange = async {
        let (response, server_certs) = exchange(addr, &request, timeout).await?;
        let granted = response.verify(secret, &request, key).map_err(|source| JoinError::Untrusted { addr, source })?;
        if let Some(pinned) = pin {
            if !pinned.matches(&granted.ca_der) {
                return Err(JoinError::OtherCa { addr, got: shoal_secret::CaPin::of_der(&granted.ca_der), pinned });
            }
        }
        let server = server_in_cluster(&server_certs, &granted.ca_der)
            .map_err(|reason| JoinError::ServerNotInCluster { addr, reason })?;
        tracing::debug!(%addr, %server, node = %granted.info.node_id, "join: certificate received");
        Ok(granted)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| JoinError::Timeout { addr, timeout })?
}

/// Sends the request, reads the reply; gives the response and the server's certificates.
async fn exchange(
    addr: SocketAddr,
    request: &JoinRequest,
    timeout: Duration,
) -> Result<(JoinResponse, Vec<CertificateDer<'static>>), JoinError> {
    let body = request.to_bytes().map_err(JoinError::Request)?;
    let mut stream = connect(addr).await?;
    let server_certs = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
    let io = |source| JoinError::Io { addr, source };
    stream.write_all(&frame(&body)).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let timeouts = ReadTimeouts { idle: Some(timeout), frame: timeout };
    let reply = match read_frame(&mut stream, MAX_JOIN_REPLY_LEN, timeouts).await {
        Ok(Some(reply)) => reply,
        Ok(None) => return Err(JoinError::BadReply { addr, reason: "closed without an answer".to_string() }),
        Err(FrameError::Io(source)) => return Err(JoinError::Io { addr, source }),
        Err(e) => return Err(JoinError::BadReply { addr, reason: e.to_string() }),
    };
    match JoinReply::from_bytes(&reply) {
        Ok(JoinReply::Granted(response)) => Ok((response, server_certs)),
        Ok(JoinReply::Refused(message)) => Err(JoinError::Refused { addr, message: clean(&message) }),
        Err(e) => Err(JoinError::BadReply { addr, reason: e.to_string() }),
    }
}

/// A peer's text made safe for logs: no control characters, bounded.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_REFUSAL_LEN).collect()
}

/// Checks that the server's certificate chain is a valid node certificate of `ca` (the
/// CA the verified answer vouched for); gives the server's node id.
fn server_in_cluster(chain: &[CertificateDer<'static>], ca: &CertificateDer<'static>) -> Result<NodeId, String> {
    let (end_entity, intermediates) = chain.split_first().ok_or("no server certificate")?;
    let id = node_id_of_cert(end_entity).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_dns_name(id)).map_err(|e| e.to_string())?;
    verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).map_err(|e| e.to_string())?;
    Ok(id)
}
