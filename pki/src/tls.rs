//! The real adapter: mutual TLS between nodes with rustls (ring provider, TLS 1.3 only)
//! through tokio-rustls.
//!
//! Both sides accept only a certificate that chains to the cluster CA (the only root),
//! is within its validity, carries exactly one `<node id>.node.shoal` name matching its
//! key, and whose node id is not in the shared [`Revocations`] set. The checks wrap
//! rustls' WebPKI verifiers (`WebPkiClientVerifier` / `WebPkiServerVerifier`), which
//! do the chain, validity and key-usage work; ours add the node id rules.
//!
//! Revocation applies to every new handshake: session resumption is disabled on both
//! sides (a resumed TLS 1.3 session would skip certificate verification). Connections
//! already open are not cut by a revocation; the owner of those connections closes them.
//!
//! A client names the node it wants with the server name `<id>.node.shoal`
//! ([`server_name`]`(Some(id))`), or accepts any cluster node with `node.shoal`
//! ([`server_name`]`(None)`). Note that in TLS 1.3 the client finishes its handshake
//! before the server has checked the client certificate: a client whose certificate is
//! refused learns it at its first read (an alert, then the connection closes).
//!
//! The node's own certificate sits in [`NodeCredentials`], which can be swapped while
//! the configs are in use: renewal needs no restart and no new config.

use super::cert::node_id_of_cert;
use super::client::{holder_of_cert, Holder};
use super::{node_dns_name, node_id_from_dns_name, NODE_DNS_SUFFIX};
use super::PkiError;
use rcgen::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// How long a TLS handshake may take before the connection is dropped. A LAN handshake
/// takes milliseconds; a Pi under load well under a second. Bounds what a silent or
/// slow peer can hold.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocol of node-to-node sessions (Raft RPC) on the node's one TCP port; the port
/// routes a connection by the ALPN its client offers, so every client config here sends it.
pub const RAFT_ALPN: &[u8] = b"shoal-raft/1";

/// ALPN of the shoal API (the CLI's JSON lines) on the node's port, for users' client
/// certificates (`shoal --host tcp://…`).
pub const API_ALPN: &[u8] = b"shoal-api/1";
/// ALPN of the Docker Engine API on the node's port (a client offering none gets it too).
pub const HTTP11_ALPN: &[u8] = b"http/1.1";

/// The crypto provider of the whole binary: ring, chosen explicitly in every config.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS operation failed. Setup errors mean a config could not be built (nothing
/// changed); handshake errors concern one connection, which is dropped.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("peer has no usable node certificate: {0}")]
    PeerIdentity(String),
}

/// The revoked node ids, shared between the replicated state (which writes) and every
/// TLS verifier (which reads on each handshake). Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<BTreeSet<NodeId>>>);

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revoke(&self, id: NodeId) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(id);
    }

    /// Replaces the whole set (e.g. after applying a snapshot).
    pub fn replace(&self, ids: BTreeSet<NodeId>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = ids;
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    pub fn snapshot(&self) -> BTreeSet<NodeId> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// This node's certificate and key as rustls uses them; swappable at run time (renewal).
#[derive(Debug)]
pub struct NodeCredentials {
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCredentials {
    /// Fails if the key cannot be loaded or does not match the certificate.
    pub fn new(cert: CertificateDer<'static>, key: &KeyPair) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(certified_key(cert, key)?) }))
    }

    /// Installs a renewed certificate (and key); handshakes from now on present it.
    pub fn replace(&self, cert: CertificateDer<'static>, key: &KeyPair) -> Result<(), TlsError> {
        let new = certified_key(cert, key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }

    /// The certificate currently presented.
    pub fn certificate(&self) -> CertificateDer<'static> {
        let current = self.get();
        current.cert.first().cloned().unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn certified_key(cert: CertificateDer<'static>, key: &KeyPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(Arc::new(CertifiedKey::from_der(vec![cert], key_der, &crypto_provider())?))
}

impl ResolvesServerCert for NodeCredentials {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for NodeCredentials {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn other_error(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Server side: the WebPKI client verifier (cluster CA only), then `holder`'s rules on the
/// certificate, whose id must not be revoked. Node-to-node endpoints take
/// [`node_id_of_cert`] (a node's certificate only: a client's is refused), the user-facing
/// ones [`holder_id`] (a node's or a client's).
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revocations,
    holder: fn(&[u8]) -> Result<NodeId, PkiError>,
}

/// The id of a node's or a user's client certificate.
fn holder_id(der: &[u8]) -> Result<NodeId, PkiError> {
    holder_of_cert(der).map(|h| h.id())
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let id = (self.holder)(end_entity).map_err(other_error)?;
        if self.revoked.contains(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server config of a user-facing endpoint on the node's port (the Docker API, the
/// shoal API): TLS 1.3, the node's certificate, a client certificate of the cluster CA
/// required (a user's client certificate or a node's), not revoked, no resumption; `alpn`
/// is what the server selects (a client that offers none gets none).
pub fn user_server_config(
    ca: &CertificateDer<'static>,
    credentials: Arc<NodeCredentials>,
    revoked: Revocations,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(CheckedClientVerifier { inner, revoked, holder: holder_id }))
        .with_cert_resolver(credentials);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client config of a user's CLI (`shoal --host tcp://…`): presents the client
/// certificate, accepts any node certificate of the cluster CA (server name
/// [`server_name`]`(None)`), offers `alpn`.
pub fn user_client_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = client_config_builder(ca, Revocations::new())?.with_client_auth_cert(vec![cert], key)?;
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Who the peer of an established user-facing connection is (from its verified certificate).
pub fn peer_holder(conn: &CommonState) -> Result<Holder, TlsError> {
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| TlsError::PeerIdentity("no certificate".to_string()))?;
    holder_of_cert(cert).map_err(|e| TlsError::PeerIdentity(e.to_string()))
}

/// Client side: the node id rules, then the WebPKI server verifier (cluster CA only)
/// against the node's own name.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Revocations,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = node_id_of_cert(end_entity).map_err(other_error)?;
        let wanted = match server_name {
            ServerName::DnsName(name) if name.as_ref() == NODE_DNS_SUFFIX => None,
            ServerName::DnsName(name) => match node_id_from_dns_name(name.as_ref()) {
                Some(wanted) => Some(wanted),
                None => return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
            },
            _ => return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
        };
        if wanted.is_some_and(|w| w != id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        let own_name = ServerName::try_from(node_dns_name(id))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let verified = self.inner.verify_server_cert(end_entity, intermediates, &own_name, ocsp_response, now)?;
        if self.revoked.contains(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The server config of a node: TLS 1.3, client certificates required and checked.
pub fn server_config(
    ca: &CertificateDer<'static>,
    credentials: Arc<NodeCredentials>,
    revoked: Revocations,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(CheckedClientVerifier { inner, revoked, holder: node_id_of_cert }))
        .with_cert_resolver(credentials);
    // No resumption: every session verifies the certificate against the revoked set.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![RAFT_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client config builder with the node server verifier, before choosing the client
/// certificate (tests use it to build a client without one).
#[doc(hidden)]
pub fn client_config_builder(
    ca: &CertificateDer<'static>,
    revoked: Revocations,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    let provider = crypto_provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner, revoked })))
}

/// The client config of a node: TLS 1.3, presents its certificate, checks the server's.
pub fn client_config(
    ca: &CertificateDer<'static>,
    credentials: Arc<NodeCredentials>,
    revoked: Revocations,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = client_config_builder(ca, revoked)?.with_client_cert_resolver(credentials);
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![RAFT_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The server name for a connection: `<id>.node.shoal` to require that node, or
/// `node.shoal` to accept any node of the cluster.
pub fn server_name(expected: Option<NodeId>) -> ServerName<'static> {
    let name = match expected {
        Some(id) => node_dns_name(id),
        None => NODE_DNS_SUFFIX.to_string(),
    };
    // Both forms are valid DNS names (hex labels under `node.shoal`), so the fallback is
    // never taken; if it were, the verifier refuses any IP server name.
    ServerName::try_from(name).unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// The node id of the peer of an established connection (from its verified certificate).
pub fn peer_node_id(conn: &CommonState) -> Result<NodeId, TlsError> {
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| TlsError::PeerIdentity("no certificate".to_string()))?;
    node_id_of_cert(cert).map_err(|e| TlsError::PeerIdentity(e.to_string()))
}

/// The role the peer's verified certificate grants (`None`: the certificate names none, or
/// the connection has none). A role decides what the peer may ask, not who it is.
pub fn peer_role(conn: &CommonState) -> Option<super::NodeRole> {
    let cert = conn.peer_certificates().and_then(|certs| certs.first())?;
    super::CertInfo::parse(cert).ok().and_then(|info| info.role)
}

/// A node's mutual-TLS endpoint: accepts and opens connections to other nodes.
#[derive(Clone)]
pub struct MutualTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualTls").field("handshake_timeout", &self.handshake_timeout).finish_non_exhaustive()
    }
}

impl MutualTls {
    /// Both configs from the cluster CA certificate, this node's credentials and the
    /// shared revoked set.
    pub fn new(
        ca: &CertificateDer<'static>,
        credentials: Arc<NodeCredentials>,
        revoked: Revocations,
    ) -> Result<Self, TlsError> {
        let server = server_config(ca, credentials.clone(), revoked.clone())?;
        let client = client_config(ca, credentials, revoked)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(server.clone()),
            server,
            connector: TlsConnector::from(client.clone()),
            client,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// The same endpoint (certificates, checks, revoked set) for another protocol on the
    /// node's port: both sides offer only `alpn` (the port routes by it).
    pub fn with_alpn(&self, alpn: &[u8]) -> Self {
        let mut server = (*self.server).clone();
        server.alpn_protocols = vec![alpn.to_vec()];
        let mut client = (*self.client).clone();
        client.alpn_protocols = vec![alpn.to_vec()];
        let (server, client) = (Arc::new(server), Arc::new(client));
        Self {
            acceptor: TlsAcceptor::from(server.clone()),
            connector: TlsConnector::from(client.clone()),
            server,
            client,
            handshake_timeout: self.handshake_timeout,
        }
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// Server side of a handshake on an accepted connection; gives the stream and the
    /// verified node id of the peer. Any failure (garbage, a refused certificate, a
    /// timeout) drops `io`, which closes that connection only.
    pub async fn accept<IO>(&self, io: IO) -> Result<(server::TlsStream<IO>, NodeId), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(self.handshake_timeout))?
            .map_err(TlsError::Handshake)?;
        let peer = peer_node_id(stream.get_ref().1)?;
        Ok((stream, peer))
    }

    /// Server side of a handshake whose ClientHello the node's port has already read (it
    /// routed the connection here by its ALPN); same checks and result as [`Self::accept`].
    pub async fn accept_started<IO>(
        &self,
        start: tokio_rustls::StartHandshake<IO>,
    ) -> Result<(server::TlsStream<IO>, NodeId), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.handshake_timeout, start.into_stream(self.server.clone()))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(self.handshake_timeout))?
            .map_err(TlsError::Handshake)?;
        let peer = peer_node_id(stream.get_ref().1)?;
        Ok((stream, peer))
    }

    /// Client side of a handshake to `expected` (or any cluster node if `None`); gives the
    /// stream and the verified node id of the server.
    pub async fn connect<IO>(
        &self,
        io: IO,
        expected: Option<NodeId>,
    ) -> Result<(client::TlsStream<IO>, NodeId), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.handshake_timeout, self.connector.connect(server_name(expected), io))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(self.handshake_timeout))?
            .map_err(TlsError::Handshake)?;
        let peer = peer_node_id(stream.get_ref().1)?;
        Ok((stream, peer))
    }
}
