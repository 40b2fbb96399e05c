//! The join transport end to end: real TCP on 127.0.0.1 (ephemeral ports), real TLS, the
//! real issuer behind the server. Every test is bounded by a timeout.

use super::client::connect;
use super::{request_certificate, JoinAuthority, JoinError, JoinServer, JoinServerConfig, JoinStatsSnapshot, Refusal};
use crate::pki::issuer::NodeGrant;
use crate::pki::{
    node_id_of_key, JoinRequest, JoinResponse, MutualTls, NodeCredentials, NodeRole, PkiError, Revocations,
    MAX_JOIN_MESSAGE_LEN,
};
use rand::SeedableRng;
use rcgen::KeyPair;
use shoal_secret::JoinSecret;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn os_rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::from_rng(&mut rand::rng())
}

/// A cluster: its secret and an issuer with its CA, created now for real TLS.
use crate::pki::testing::Cluster;

/// The honest authority: the cluster's issuer and revoked set.
struct Authority {
    cluster: Arc<Cluster>,
    revoked: Revocations,
}

impl JoinAuthority for Authority {
    fn answer(
        &self,
        request: JoinRequest,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Result<JoinResponse, Refusal>> + Send + '_>> {
        Box::pin(async move {
            let grant = NodeGrant { role: NodeRole::Worker, addresses: vec![peer.ip()], names: Vec::new() };
            Ok(self.cluster.issuer.answer_join(
                &request,
                &grant,
                &self.revoked.snapshot(),
                SystemTime::now(),
                &mut os_rng(),
            )?)
        })
    }
}

/// A liar holding another secret: answers every request (re-signing it with its own
/// secret so its issuer accepts it) with a certificate of its own CA.
struct ForeignAuthority {
    cluster: Arc<Cluster>,
}

impl JoinAuthority for ForeignAuthority {
    fn answer(
        &self,
        request: JoinRequest,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Result<JoinResponse, Refusal>> + Send + '_>> {
        Box::pin(async move {
            let resigned = JoinRequest::signed(&self.cluster.secret, request.node_id, request.csr_der, request.nonce);
            let grant = NodeGrant { role: NodeRole::Worker, addresses: vec![peer.ip()], names: Vec::new() };
            Ok(self.cluster.issuer.answer_join(
                &resigned,
                &grant,
                &Default::default(),
                SystemTime::now(),
                &mut os_rng(),
            )?)
        })
    }
}

fn fast_config() -> JoinServerConfig {
    JoinServerConfig {
        max_connections: 8,
        handshake_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(500),
        answer_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(2),
    }
}

async fn start(creds: Arc<NodeCredentials>, authority: Arc<dyn JoinAuthority>, config: JoinServerConfig) -> JoinServer {
    JoinServer::bind("127.0.0.1:0".parse().expect("addr"), creds, authority, config).await.expect("bind")
}

/// A server of `cluster` with the honest authority; also gives the revoked set.
async fn honest(cluster: &Arc<Cluster>, config: JoinServerConfig) -> (JoinServer, Revocations) {
    let revoked = Revocations::new();
    let authority = Arc::new(Authority { cluster: cluster.clone(), revoked: revoked.clone() });
    (start(cluster.node_credentials(), authority, config).await, revoked)
}

async fn wait_stats(server: &JoinServer, what: &str, ok: impl Fn(&JoinStatsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if ok(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes; gives the bytes read (the server must send nothing).
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.expect("server closes");
    got
}

#[tokio::test]
async fn joiner_with_the_secret_gets_a_certificate_of_the_cluster_ca() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(1));
        let (server, _) = honest(&cluster, JoinServerConfig::default()).await;
        let key = KeyPair::generate().expect("key");
        let got = request_certificate(server.local_addr(), &cluster.secret, &key, JOIN_TIMEOUT).await.expect("joined");
        assert_eq!(got.ca_der.as_ref(), cluster.ca_der().as_ref());
        assert_eq!(got.info.node_id, node_id_of_key(&key));
        assert_eq!(got.info.role, Some(NodeRole::Worker));
        assert_eq!(got.info.addresses, vec!["127.0.0.1".parse::<std::net::IpAddr>().expect("ip")]);
        // Signed by the cluster CA (independently of JoinResponse::verify).
        let (_, ca) = x509_parser::parse_x509_certificate(cluster.ca_der()).expect("ca");
        let (_, leaf) = x509_parser::parse_x509_certificate(&got.cert_der).expect("leaf");
        leaf.verify_signature(Some(ca.public_key())).expect("signed by the cluster CA");
        // Usable at once for mutual TLS with a node of the cluster, both ways verified.
        let member = cluster.node_credentials();
        let member_tls = MutualTls::new(cluster.ca_der(), member, Revocations::new()).expect("member tls");
        let joiner_creds = NodeCredentials::new(got.cert_der.clone(), &key).expect("credentials");
        let joiner_tls = MutualTls::new(&got.ca_der, joiner_creds, Revocations::new()).expect("joiner tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mtls_addr = listener.local_addr().expect("addr");
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (mut stream, peer) = member_tls.accept(tcp).await.expect("member accepts the joiner");
            stream.write_all(b"ok").await.expect("write");
            stream.shutdown().await.expect("shutdown");
            peer
        });
        let tcp = TcpStream::connect(mtls_addr).await.expect("tcp");
        let (mut stream, _) = joiner_tls.connect(tcp, None).await.expect("joiner accepts the member");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"ok");
        assert_eq!(accepting.await.expect("task"), node_id_of_key(&key));
        wait_stats(&server, "one grant", |s| s.granted == 1 && s.refused == 0).await;
    })
    .await;
}

#[tokio::test]
async fn wrong_secret_is_refused_without_a_certificate() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(2));
        let (server, _) = honest(&cluster, JoinServerConfig::default()).await;
        let wrong = JoinSecret::generate(&mut rng(99));
        let key = KeyPair::generate().expect("key");
        let err = request_certificate(server.local_addr(), &wrong, &key, JOIN_TIMEOUT).await.expect_err("refused");
        let JoinError::Refused { message, .. } = &err else { panic!("expected Refused, got {err:?}") };
        assert!(message.contains("HMAC"), "{message}");
        for token in [cluster.secret.to_token(), wrong.to_token()] {
            let hex = token.trim_start_matches("shoal1-");
            assert!(!message.contains(hex) && !err.to_string().contains(hex), "{err}");
        }
        wait_stats(&server, "one refusal", |s| s.refused == 1 && s.granted == 0).await;
    })
    .await;
}

#[tokio::test]
async fn server_with_another_secret_is_not_trusted_although_tls_completed() {
    bounded(async {
        let ours = Arc::new(Cluster::live(3));
        let theirs = Arc::new(Cluster::live(4));
        let authority = Arc::new(ForeignAuthority { cluster: theirs.clone() });
        let server = start(theirs.node_credentials(), authority, JoinServerConfig::default()).await;
        let key = KeyPair::generate().expect("key");
        let err =
            request_certificate(server.local_addr(), &ours.secret, &key, JOIN_TIMEOUT).await.expect_err("untrusted");
        assert!(
            matches!(err, JoinError::Untrusted { source: PkiError::JoinResponseForged, .. }),
            "expected a forged response, got {err:?}"
        );
        // The liar did answer: TLS and the exchange completed.
        wait_stats(&server, "the liar's grant", |s| s.granted == 1).await;
    })
    .await;
}

#[tokio::test]
async fn secret_holder_outside_the_cluster_is_not_trusted() {
    // The answer verifies (the authority is the real cluster's) but the TLS certificate the
    // server presented is from another CA: the joiner did not talk to a cluster member.
    bounded(async {
        let cluster = Arc::new(Cluster::live(5));
        let other = Arc::new(Cluster::live(6));
        let authority = Arc::new(Authority { cluster: cluster.clone(), revoked: Revocations::new() });
        let server = start(other.node_credentials(), authority, JoinServerConfig::default()).await;
        let key = KeyPair::generate().expect("key");
        let err =
            request_certificate(server.local_addr(), &cluster.secret, &key, JOIN_TIMEOUT).await.expect_err("refused");
        assert!(matches!(err, JoinError::ServerNotInCluster { .. }), "got {err:?}");
    })
    .await;
}

#[tokio::test]
async fn revoked_node_is_refused() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(7));
        let (server, revoked) = honest(&cluster, JoinServerConfig::default()).await;
        let key = KeyPair::generate().expect("key");
        revoked.revoke(node_id_of_key(&key));
        let err =
            request_certificate(server.local_addr(), &cluster.secret, &key, JOIN_TIMEOUT).await.expect_err("refused");
        let JoinError::Refused { message, .. } = &err else { panic!("expected Refused, got {err:?}") };
        assert!(message.contains("revoked"), "{message}");
        // Another node still joins.
        let other = KeyPair::generate().expect("key");
        request_certificate(server.local_addr(), &cluster.secret, &other, JOIN_TIMEOUT).await.expect("joined");
        wait_stats(&server, "one refusal, one grant", |s| s.refused == 1 && s.granted == 1).await;
    })
    .await;
}

#[tokio::test]
async fn bad_frames_close_their_connection_and_the_server_keeps_serving() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(8));
        let (server, _) = honest(&cluster, fast_config()).await;
        let addr = server.local_addr();
        // Oversized: the length alone closes the connection.
        let mut s = connect(addr).await.expect("tls");
        s.write_all(&((MAX_JOIN_MESSAGE_LEN as u32) + 1).to_be_bytes()).await.expect("write");
        s.flush().await.expect("flush");
        assert!(read_until_closed(&mut s).await.is_empty());
        // Garbage of a plausible length.
        let mut s = connect(addr).await.expect("tls");
        s.write_all(&[0, 0, 0, 16]).await.expect("write");
        s.write_all(&[0xff; 16]).await.expect("write");
        s.flush().await.expect("flush");
        assert!(read_until_closed(&mut s).await.is_empty());
        // Truncated: announces 200 bytes, sends 10, closes its side.
        let mut s = connect(addr).await.expect("tls");
        s.write_all(&[0, 0, 0, 200]).await.expect("write");
        s.write_all(&[1; 10]).await.expect("write");
        s.shutdown().await.expect("shutdown");
        assert!(read_until_closed(&mut s).await.is_empty());
        // Stalled inside a frame: the read timeout closes it.
        let mut s = connect(addr).await.expect("tls");
        s.write_all(&[0, 0, 1]).await.expect("write");
        s.flush().await.expect("flush");
        assert!(read_until_closed(&mut s).await.is_empty());
        // Garbage instead of TLS.
        let mut tcp = TcpStream::connect(addr).await.expect("tcp");
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
        let mut junk = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut junk)).await.expect("closed");
        wait_stats(&server, "every bad frame counted", |s| {
            s.frames_too_large == 1
                && s.frames_undecodable == 1
                && s.frames_truncated == 1
                && s.timeouts == 1
                && s.handshakes_failed == 1
        })
        .await;
        // The server still serves.
        let key = KeyPair::generate().expect("key");
        request_certificate(addr, &cluster.secret, &key, JOIN_TIMEOUT).await.expect("joined after the garbage");
        wait_stats(&server, "the grant", |s| s.granted == 1).await;
    })
    .await;
}

#[tokio::test]
async fn stalled_tcp_is_dropped_after_the_handshake_timeout() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(9));
        let (server, _) = honest(&cluster, fast_config()).await;
        let started = Instant::now();
        let mut tcp = TcpStream::connect(server.local_addr()).await.expect("tcp");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.expect("dropped");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "dropped after {waited:?}, before the timeout");
        assert!(buf.is_empty());
        wait_stats(&server, "the failed handshake", |s| s.handshakes_failed == 1).await;
    })
    .await;
}

#[tokio::test]
async fn connection_cap_drops_extra_connections() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(10));
        let config = JoinServerConfig { max_connections: 1, read_timeout: Duration::from_secs(2), ..fast_config() };
        let (server, _) = honest(&cluster, config).await;
        let addr = server.local_addr();
        // A joiner that completes its TLS handshake and then sends nothing holds the one
        // join slot until the read timeout.
        let connector = tokio_rustls::TlsConnector::from(super::client::client_tls_config().expect("config"));
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let _holder = connector.connect(crate::pki::tls::server_name(None), tcp).await.expect("holder's handshake");
        wait_stats(&server, "the first connection", |s| s.connections == 1).await;
        let started = Instant::now();
        let key = KeyPair::generate().expect("key");
        assert!(request_certificate(addr, &cluster.secret, &key, JOIN_TIMEOUT).await.is_err(), "a join past the cap");
        assert!(started.elapsed() < Duration::from_secs(1), "the extra join was held for {:?}", started.elapsed());
        wait_stats(&server, "the refused connection", |s| s.over_capacity == 1).await;
        // Once the stalled holder is dropped (read timeout), joins work again.
        wait_stats(&server, "the holder's timeout", |s| s.timeouts == 1).await;
        request_certificate(addr, &cluster.secret, &key, JOIN_TIMEOUT).await.expect("joined");
    })
    .await;
}

#[tokio::test]
async fn silent_server_times_out_the_joiner() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(11));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let key = KeyPair::generate().expect("key");
        let started = Instant::now();
        let err =
            request_certificate(addr, &cluster.secret, &key, Duration::from_millis(500)).await.expect_err("timeout");
        assert!(matches!(err, JoinError::Timeout { .. }), "got {err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(12));
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        let key = KeyPair::generate().expect("key");
        let err = request_certificate(addr, &cluster.secret, &key, JOIN_TIMEOUT).await.expect_err("no server");
        assert!(matches!(err, JoinError::Connect { .. }), "got {err:?}");
    })
    .await;
}

#[tokio::test]
async fn session_without_the_join_alpn_is_closed_unread() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(13));
        let (server, _) = honest(&cluster, fast_config()).await;
        let mut config = (*super::client::client_tls_config().expect("config")).clone();
        config.alpn_protocols.clear();
        let tcp = TcpStream::connect(server.local_addr()).await.expect("tcp");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        // The port routes by ALPN, so a session without one is closed at its ClientHello,
        // before the server sends its certificate; if a handshake ever completed, nothing
        // sent on it may be read.
        if let Ok(mut s) = connector.connect(crate::pki::tls::server_name(None), tcp).await {
            let key = KeyPair::generate().expect("key");
            let request = JoinRequest::new(&cluster.secret, &key, &mut rng(3)).expect("request");
            let _ = s.write_all(&super::frame(&request.to_bytes().expect("encode"))).await;
            let _ = s.flush().await;
            assert!(read_until_closed(&mut s).await.is_empty());
        }
        wait_stats(&server, "the refused session", |s| s.handshakes_failed == 1 && s.granted == 0).await;
    })
    .await;
}

/// The agent will run joins in spawned tasks: both futures must be `Send`.
#[allow(dead_code)]
fn futures_are_send(addr: SocketAddr, secret: &JoinSecret, key: &KeyPair, authority: &Authority) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&request_certificate(addr, secret, key, JOIN_TIMEOUT));
    is_send(&authority.answer(JoinRequest::new(secret, key, &mut rng(1)).expect("request"), addr));
}

/// Issue 13: a joiner with a `shoal2-` token pins the CA: an answer for a cluster whose CA
/// has another digest is refused, although it holds the secret; the right pin joins.
#[tokio::test]
async fn a_pinned_token_refuses_a_cluster_with_another_ca() {
    bounded(async {
        let cluster = Arc::new(Cluster::live(14));
        let (server, _) = honest(&cluster, fast_config()).await;
        let key = KeyPair::generate().expect("key");
        let other = shoal_secret::CaPin::of_der(b"the CA of another cluster");
        let err = super::request_pinned_certificate(server.local_addr(), &cluster.secret, Some(other), &key, JOIN_TIMEOUT)
            .await
            .expect_err("joined a cluster with another CA");
        let JoinError::OtherCa { got, pinned, .. } = &err else { panic!("got {err:?}") };
        assert_eq!((*got, *pinned), (shoal_secret::CaPin::of_der(cluster.ca_der()), other));
        assert!(err.to_string().contains("refusing to join"), "{err}");
        let right = shoal_secret::CaPin::of_der(cluster.ca_der());
        let got = super::request_pinned_certificate(server.local_addr(), &cluster.secret, Some(right), &key, JOIN_TIMEOUT).await.expect("joined");
        assert_eq!(got.ca_der.as_ref(), cluster.ca_der().as_ref());
    })
    .await;
}
