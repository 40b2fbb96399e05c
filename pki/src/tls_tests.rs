//! Real TLS handshakes over 127.0.0.1 TCP (ephemeral ports), each test bounded by a
//! timeout: who gets a session with a node and who does not.

use super::issuer::{IssuePolicy, Issuer, NodeGrant};
use super::testing::Cluster;
use super::tls::{client_config_builder, MutualTls, NodeCredentials, Revocations};
use super::{node_dns_name, node_id_of_key, ClusterCa, NodeRole};
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Every test finishes well within this or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// A node of `cluster`: its endpoint, id, credentials and revoked set.
struct Node {
    tls: MutualTls,
    id: NodeId,
    creds: Arc<NodeCredentials>,
    key: KeyPair,
    revoked: Revocations,
}

fn node_at(cluster: &Cluster, now: SystemTime) -> Node {
    let (key, cert) = cluster.join(NodeRole::Worker, now);
    node_with(cluster.issuer.ca().cert_der(), cert, key)
}

fn node(cluster: &Cluster) -> Node {
    node_at(cluster, SystemTime::now())
}

/// A node trusting `ca` but presenting `cert` (which may come from anywhere).
fn node_with(ca: &CertificateDer<'static>, cert: CertificateDer<'static>, key: KeyPair) -> Node {
    let id = node_id_of_key(&key);
    let creds = NodeCredentials::new(cert, &key).expect("credentials");
    let revoked = Revocations::new();
    let tls =
        MutualTls::new(ca, creds.clone(), revoked.clone()).expect("tls").with_handshake_timeout(Duration::from_secs(2));
    Node { tls, id, creds, key, revoked }
}

/// An echo server: each connection gets its handshake in its own task; the outcome
/// (peer id, or the error) is reported on `events`.
struct Server {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Result<NodeId, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(tls: MutualTls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tls.accept(tcp).await {
                        Ok((mut stream, peer)) => {
                            let _ = tx.send(Ok(peer));
                            let mut buf = [0u8; 256];
                            if let Ok(n @ 1..) = stream.read(&mut buf).await {
                                let mut reply = b"echo:".to_vec();
                                reply.extend_from_slice(&buf[..n]);
                                let _ = stream.write_all(&reply).await;
                            }
                            let _ = stream.shutdown().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        Self { addr, events, task }
    }

    async fn next_event(&mut self) -> Result<NodeId, String> {
        self.events.recv().await.expect("server running")
    }
}

/// Writes `ping`, reads the whole answer. Errors (alerts, resets) become `Err`.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.map_err(|e| e.to_string())?;
    Ok(reply)
}

/// Connects as `client` to `addr` expecting `expected`; gives the server's id and the reply.
async fn exchange(client: &MutualTls, addr: SocketAddr, expected: Option<NodeId>) -> Result<(NodeId, Vec<u8>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut stream, server) = client.connect(tcp, expected).await.map_err(|e| e.to_string())?;
    let reply = ping(&mut stream).await?;
    Ok((server, reply))
}

/// Asserts that `client` gets no session: either its handshake fails, or (TLS 1.3: the
/// server checks the client certificate after the client is done) its first read does.
async fn assert_refused(client: &MutualTls, server: &mut Server, expected: Option<NodeId>) -> String {
    match exchange(client, server.addr, expected).await {
        Ok((_, reply)) => assert!(!reply.starts_with(b"echo:"), "session established: {reply:?}"),
        Err(e) => eprintln!("client side: {e}"),
    }
    let event = server.next_event().await;
    match event {
        Ok(peer) => panic!("server accepted {peer:?}"),
        Err(e) => {
            eprintln!("server side: {e}");
            e
        }
    }
}

#[tokio::test]
async fn ca_issued_nodes_talk_both_ways() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let mut server = Server::start(a.tls.clone()).await;
        let (server_id, reply) = exchange(&b.tls, server.addr, Some(a.id)).await.expect("session");
        assert_eq!(server_id, a.id);
        assert_eq!(reply, b"echo:ping");
        assert_eq!(server.next_event().await, Ok(b.id));
        // Without naming the node: any node of the cluster is fine.
        let (server_id, reply) = exchange(&b.tls, server.addr, None).await.expect("session");
        assert_eq!((server_id, reply.as_slice()), (a.id, &b"echo:ping"[..]));
        assert_eq!(server.next_event().await, Ok(b.id));
    })
    .await;
}

#[tokio::test]
async fn client_with_a_self_made_certificate_is_refused() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let a = node(&cluster);
        let mut server = Server::start(a.tls.clone()).await;
        // Self-signed, with the right name for its own key: only the issuer is wrong.
        let key = KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![node_dns_name(node_id_of_key(&key))]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        let mallory = node_with(cluster.issuer.ca().cert_der(), cert.der().clone(), key);
        let err = assert_refused(&mallory.tls, &mut server, Some(a.id)).await;
        assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn client_with_a_certificate_of_another_cluster_is_refused() {
    bounded(async {
        let ours = Cluster::created_at(1, SystemTime::now());
        let theirs = Cluster::created_at(2, SystemTime::now());
        let a = node(&ours);
        let mut server = Server::start(a.tls.clone()).await;
        let (key, cert) = theirs.join(NodeRole::Manager, SystemTime::now());
        let stranger = node_with(ours.issuer.ca().cert_der(), cert, key);
        let err = assert_refused(&stranger.tls, &mut server, Some(a.id)).await;
        assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
        // Same secret but another CA (e.g. a second cluster formed by mistake): refused too.
        let twin = Cluster::created_at(1, SystemTime::now());
        let (key, cert) = twin.join(NodeRole::Manager, SystemTime::now());
        let twin_node = node_with(ours.issuer.ca().cert_der(), cert, key);
        assert_refused(&twin_node.tls, &mut server, Some(a.id)).await;
    })
    .await;
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let a = node(&cluster);
        let mut server = Server::start(a.tls.clone()).await;
        let config = client_config_builder(cluster.issuer.ca().cert_der(), Revocations::new())
            .expect("builder")
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        if let Ok(mut stream) = connector.connect(super::tls::server_name(Some(a.id)), tcp).await {
            let reply = ping(&mut stream).await;
            assert!(!matches!(&reply, Ok(r) if r.starts_with(b"echo:")), "session established: {reply:?}");
        }
        let err = server.next_event().await.expect_err("server must refuse");
        assert!(err.contains("NoCertificatesPresented") || err.contains("certificate"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn revoked_client_is_refused_from_then_on() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let mut server = Server::start(a.tls.clone()).await;
        exchange(&b.tls, server.addr, Some(a.id)).await.expect("before revocation");
        assert_eq!(server.next_event().await, Ok(b.id));
        a.revoked.revoke(b.id);
        let err = assert_refused(&b.tls, &mut server, Some(a.id)).await;
        assert!(err.contains("Revoked") || err.contains("revoked"), "{err}");
        // A third node is unaffected.
        let c = node(&cluster);
        exchange(&c.tls, server.addr, Some(a.id)).await.expect("other nodes still served");
        assert_eq!(server.next_event().await, Ok(c.id));
    })
    .await;
}

#[tokio::test]
async fn revoked_server_is_refused_by_the_client() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let server = Server::start(a.tls.clone()).await;
        b.revoked.replace(BTreeSet::from([a.id]));
        let err = exchange(&b.tls, server.addr, None).await.expect_err("client refuses");
        assert!(err.contains("Revoked") || err.contains("revoked"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn server_with_a_certificate_of_another_ca_is_refused_by_the_client() {
    bounded(async {
        let ours = Cluster::created_at(1, SystemTime::now());
        let theirs = Cluster::created_at(2, SystemTime::now());
        let b = node(&ours);
        let impostor = node(&theirs);
        let server = Server::start(impostor.tls.clone()).await;
        let err = exchange(&b.tls, server.addr, None).await.expect_err("client refuses");
        assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
        let err = exchange(&b.tls, server.addr, Some(impostor.id)).await.expect_err("client refuses");
        assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn client_refuses_a_cluster_node_that_is_not_the_one_it_asked_for() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let server = Server::start(a.tls.clone()).await;
        let err = exchange(&b.tls, server.addr, Some(NodeId([9; 16]))).await.expect_err("wrong node");
        assert!(err.contains("NotValidForName") || err.contains("name"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    bounded(async {
        let now = SystemTime::now();
        let cluster = Cluster::created_at(1, now - 30 * DAY);
        let a = node(&cluster);
        let old = node_at(&cluster, now - 20 * DAY); // expired 13 days ago
        let mut server = Server::start(a.tls.clone()).await;
        let err = assert_refused(&old.tls, &mut server, Some(a.id)).await;
        assert!(err.contains("Expired") || err.contains("expired"), "{err}");
        let old_server = Server::start(old.tls.clone()).await;
        let err = exchange(&a.tls, old_server.addr, None).await.expect_err("client refuses");
        assert!(err.contains("Expired") || err.contains("expired"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn garbage_closes_that_connection_and_the_server_keeps_serving() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let mut server = Server::start(a.tls.clone()).await;
        let garbage: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3], // a TLS record header claiming 64 KiB
            &[0xAA; 4096],
        ];
        for bytes in garbage {
            let mut tcp = TcpStream::connect(server.addr).await.expect("tcp");
            tcp.write_all(bytes).await.expect("write");
            let mut sink = Vec::new();
            // The server answers with at most an alert, then closes: EOF or a reset.
            let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink))
                .await
                .expect("server closes the connection");
            assert!(sink.len() < 64, "server sent {} bytes to garbage", sink.len());
            assert!(server.next_event().await.is_err());
        }
        // A peer that connects and says nothing is dropped at the handshake timeout.
        let mut silent = TcpStream::connect(server.addr).await.expect("tcp");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink))
            .await
            .expect("server drops a silent peer");
        assert!(server.next_event().await.expect_err("timeout").contains("timed out"));
        // A connection that stops in the middle of its handshake changes nothing either.
        let mut half = TcpStream::connect(server.addr).await.expect("tcp");
        half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01]).await.expect("write");
        drop(half);
        assert!(server.next_event().await.is_err());
        // Meanwhile the server serves real nodes as before.
        let (_, reply) = exchange(&b.tls, server.addr, Some(a.id)).await.expect("still serving");
        assert_eq!(reply, b"echo:ping");
        assert_eq!(server.next_event().await, Ok(b.id));
    })
    .await;
}

#[tokio::test]
async fn renewed_certificate_is_presented_without_a_new_config() {
    bounded(async {
        let cluster = Cluster::created_at(1, SystemTime::now());
        let (a, b) = (node(&cluster), node(&cluster));
        let mut server = Server::start(a.tls.clone()).await;
        let first = a.creds.certificate();
        // Renewal: a new certificate for the same key, swapped into the running endpoint.
        let csr = super::JoinRequest::new(&cluster.secret, &a.key, &mut super::testing::rng(5)).expect("csr").csr_der;
        let grant = NodeGrant { role: NodeRole::Manager, addresses: vec![], names: vec![] };
        let renewed = cluster
            .issuer
            .issue(&csr, a.id, &grant, &BTreeSet::new(), SystemTime::now(), &mut super::testing::rng(6))
            .expect("renewed");
        assert_ne!(renewed, first);
        a.creds.replace(renewed.clone(), &a.key).expect("replace");
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        let (mut stream, server_id) = b.tls.connect(tcp, Some(a.id)).await.expect("session");
        assert_eq!(server_id, a.id);
        let presented = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().expect("cert");
        assert_eq!(presented, renewed);
        assert_eq!(ping(&mut stream).await.expect("reply"), b"echo:ping");
        assert_eq!(server.next_event().await, Ok(b.id));
        // A certificate for another key is refused by `replace`.
        let (_, other_cert) = cluster.join(NodeRole::Worker, SystemTime::now());
        assert!(a.creds.replace(other_cert, &a.key).is_err());
    })
    .await;
}

#[tokio::test]
async fn unsealed_ca_from_the_replicated_state_serves_the_same_trust() {
    bounded(async {
        // The leader changes: the new one unseals the CA and issues; old and new nodes
        // still trust each other.
        let cluster = Cluster::created_at(1, SystemTime::now());
        let a = node(&cluster);
        let sealed = cluster.issuer.ca().seal_key(&cluster.secret, &mut super::testing::rng(3));
        let ca = ClusterCa::unseal(cluster.issuer.ca().cert_pem(), &sealed, &cluster.secret).expect("unseal");
        let next = Cluster {
            secret: cluster.secret.clone(),
            issuer: Issuer::new(ca, &cluster.secret, IssuePolicy::default()),
        };
        let b = node(&next);
        let mut server = Server::start(a.tls.clone()).await;
        exchange(&b.tls, server.addr, Some(a.id)).await.expect("session");
        assert_eq!(server.next_event().await, Ok(b.id));
    })
    .await;
}

/// A user's client certificate of `cluster` (key, certificate).
fn client_cert(cluster: &Cluster, name: &str) -> (KeyPair, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let csr = crate::client::client_csr(&key).expect("csr");
    let (cert, _) = cluster
        .issuer
        .issue_client(&csr, name, crate::client::DEFAULT_CLIENT_LIFETIME, &BTreeSet::new(), SystemTime::now(), &mut crate::testing::rng(9))
        .expect("issued");
    (key, cert)
}

fn user_client(ca: &CertificateDer<'static>, key: &KeyPair, cert: CertificateDer<'static>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
    tokio_rustls::TlsConnector::from(super::tls::user_client_config(ca, cert, key_der, alpn).expect("config"))
}

/// Connects with `connector` to a server running `config` (one connection); gives the
/// server's view (the peer's holder, or the error) and whether the client read the echo.
async fn user_exchange(
    connector: tokio_rustls::TlsConnector,
    config: Arc<rustls::ServerConfig>,
) -> (Result<crate::Holder, String>, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
            Ok(mut stream) => {
                let holder = super::tls::peer_holder(stream.get_ref().1).map_err(|e| e.to_string());
                let mut buf = [0u8; 16];
                if let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&[b"echo:", &buf[..n]].concat()).await;
                }
                let _ = stream.shutdown().await;
                holder
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let echoed = match connector.connect(super::tls::server_name(None), tcp).await {
        Ok(mut stream) => ping(&mut stream).await.is_ok_and(|r| r.starts_with(b"echo:")),
        Err(_) => false,
    };
    (server.await.expect("server task"), echoed)
}

#[tokio::test]
async fn a_client_certificate_opens_the_user_endpoint_until_revoked_and_never_a_node_session() {
    bounded(async {
        let cluster = Cluster::live(41);
        let ca = cluster.ca_der().clone();
        let revoked = Revocations::new();
        let creds = cluster.node_credentials();
        let user = super::tls::user_server_config(&ca, creds.clone(), revoked.clone(), &[super::tls::API_ALPN]).expect("config");
        let (key, cert) = client_cert(&cluster, "laptop");
        let id = crate::ClientCertInfo::parse(&cert).expect("parse").id;
        // Accepted on the user endpoint, as a client.
        let (seen, echoed) = user_exchange(user_client(&ca, &key, cert.clone(), super::tls::API_ALPN), user.clone()).await;
        assert_eq!(seen, Ok(crate::Holder::Client(id)));
        assert!(echoed);
        // A node certificate is accepted there too, as a node.
        let (nkey, ncert) = cluster.issue();
        let (seen, _) = user_exchange(user_client(&ca, &nkey, ncert, super::tls::API_ALPN), user.clone()).await;
        assert_eq!(seen, Ok(crate::Holder::Node(node_id_of_key(&nkey))));
        // A certificate of another CA (a self-made one) is refused.
        let other = Cluster::live(42);
        let (okey, ocert) = client_cert(&other, "mallory");
        let (seen, echoed) = user_exchange(user_client(&ca, &okey, ocert, super::tls::API_ALPN), user.clone()).await;
        assert!(seen.is_err() && !echoed, "{seen:?}");
        // Revoked: refused at the next handshake.
        revoked.revoke(id);
        let (seen, echoed) = user_exchange(user_client(&ca, &key, cert.clone(), super::tls::API_ALPN), user.clone()).await;
        assert!(seen.as_ref().is_err_and(|e| e.contains("revoked") || e.contains("Revoked")), "{seen:?}");
        assert!(!echoed);
        // On a node-to-node endpoint (Raft, images, …) the client certificate is refused even
        // unrevoked: it is no node certificate.
        let (key2, cert2) = client_cert(&cluster, "laptop2");
        let raft = super::tls::server_config(&ca, creds, Revocations::new()).expect("raft config");
        let (seen, echoed) = user_exchange(user_client(&ca, &key2, cert2, super::tls::RAFT_ALPN), raft).await;
        assert!(seen.as_ref().is_err_and(|e| e.contains("client certificate is not a node certificate")), "{seen:?}");
        assert!(!echoed);
    })
    .await;
}
