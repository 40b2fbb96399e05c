//! Requests about a container that runs on another node go to that node: over
//! node-to-node mutual TLS on the node's one port (ALPN [`DOCKER_ALPN`], a node
//! certificate of the cluster CA required, as for Raft), where the same Docker API answers
//! in "this node only" mode (a forwarded request is never forwarded again, so there are no
//! loops). The front node relays the HTTP request and answer: a short answer with its
//! length as is, a stream chunk by chunk as it comes (stopped when the client goes away),
//! and a `101` upgrade (attach, exec start) by splicing the two hijacked connections,
//! bytes both ways with half-close.
//!
//! A container on a node that gossip sees down gets a clear error at once; one whose node
//! does not answer within [`CONNECT_TIMEOUT`] gets one soon after.
//!
//! - [`target`]: where a request about a container on `node` goes, pure;
//! - [`PeerService`]: the server side, mounted on the node's port;
//! - `DockerApi::forward`, `DockerApi::open_upgraded`: the client side.

use super::http::{self, ApiError, Body};
use super::DockerApi;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shoal_consensus::ClusterState;
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::StartHandshake;

/// ALPN of the Docker API between nodes on the node's port.
pub const DOCKER_ALPN: &[u8] = b"shoal-docker/1";
/// How long dialling a node (TCP and TLS) may take before the request fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the node may take to answer a forwarded request's head (the body then streams
/// as long as it lasts). Above the longest non-streaming request (`super::REQUEST_TIMEOUT`
/// bounds the whole request on the front node anyway).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest answer relayed whole (with its `Content-Length`); longer or unsized answers are
/// streamed.
pub const MAX_WHOLE_ANSWER_BYTES: u64 = 1 << 20;
/// Forwarded connections a node serves at once (each is one request or one hijacked
/// stream of one client).
pub const MAX_PEER_CONNECTIONS: usize = 64;

/// A node to forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub name: String,
    pub addr: SocketAddr,
}

/// Where a request about `what` (a container, an exec), which runs on `node`, goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This node runs it.
    Here,
    Peer(Peer),
}

/// Pure routing: this node, another node (alive as far as gossip knows), or a clear
/// refusal (the node is down, gone, or this request was forwarded already).
pub fn target(state: &ClusterState, down: &BTreeSet<NodeId>, me: NodeId, forward: bool, what: &str, node: NodeId) -> Result<Target, ApiError> {
    if node == me {
        return Ok(Target::Here);
    }
    let Some(record) = state.nodes.get(&node) else {
        return Err(ApiError::unavailable(format!(
            "{what} runs on node {}, which is no longer in the cluster; remove it (docker rm -f) and create it again",
            node.short()
        )));
    };
    if !forward {
        return Err(ApiError::conflict(format!(
            "{what} runs on {}, not on this node (a request forwarded between nodes is not forwarded again)",
            record.name
        )));
    }
    if down.contains(&node) {
        return Err(ApiError::unavailable(format!(
            "{what} runs on {}, which is down; it cannot be reached until {} is back (see `shoal node ls`)",
            record.name, record.name
        )));
    }
    Ok(Target::Peer(Peer { id: node, name: record.name.clone(), addr: record.addr }))
}

/// Whether a request asks for a hijacked connection (`Connection: Upgrade` and an
/// `Upgrade` header), as the CLI's attach and exec start do.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    connection_upgrade && headers.contains_key(UPGRADE)
}

/// The answer to a hijacking request, exactly as Docker sends it.
pub fn upgraded_response() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.docker.raw-stream"));
    resp.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(b"UPGRADED"));
    resp
}

/// Headers that belong to one hop (or that hyper sets itself), not relayed.
fn hop_header(name: &HeaderName, upgrade: bool) -> bool {
    let n = name.as_str();
    n == CONTENT_LENGTH.as_str()
        || n == TRANSFER_ENCODING.as_str()
        || n == HOST.as_str()
        || n == "keep-alive"
        || n == "proxy-connection"
        || (!upgrade && (n == CONNECTION.as_str() || n == UPGRADE.as_str()))
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    for (name, value) in from {
        if !hop_header(name, upgrade) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Copies bytes both ways between two hijacked connections until both directions end;
/// an end of input on one side is passed on as a half-close of the other.
pub async fn splice<A, B>(a: A, b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut a, mut b) = (a, b);
    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        tracing::debug!(error = %e, "docker api: a relayed stream ended with an error");
    }
}

/// The server side: the Docker API in "this node only" mode for other nodes.
pub struct PeerService {
    api: Arc<DockerApi>,
    slots: Arc<Semaphore>,
}

impl PeerService {
    /// `api` is the node's API; the service serves its "this node only" twin.
    pub fn new(api: &Arc<DockerApi>) -> Arc<Self> {
        Arc::new(Self { api: api.local_only(), slots: Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS)) })
    }
}

impl crate::port::Service for PeerService {
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: crate::port::Gate) -> crate::port::BoxFuture<()> {
        let (api, slots) = (self.api.clone(), self.slots.clone());
        Box::pin(async move {
            // Only a node of the cluster (not a client) may send forwarded requests.
            let Some(tls) = api.ctl.running().map(|r| r.docker_tls()) else { return };
            match tls.accept_started(start).await {
                Ok((stream, peer)) => {
                    // A certificate of the cluster CA is not enough: only registered nodes
                    // forward (not, say, a client certificate).
                    let registered = match api.snapshot().await {
                        Ok(snap) => snap.state.nodes.contains_key(&peer),
                        Err(_) => false,
                    };
                    if !registered {
                        tracing::debug!(%peer_addr, peer = %peer.short(), "forwarded docker api connection refused: not a registered node");
                        return;
                    }
                    let Ok(_session) = gate.authenticated(peer_addr, &slots) else { return };
                    tracing::debug!(%peer_addr, peer = %peer.short(), "forwarded docker api connection");
                    super::serve_connection(stream, api).await;
                }
                Err(e) => tracing::debug!(%peer_addr, error = %e, "forwarded docker api connection refused at the TLS handshake"),
            }
        })
    }
}

type PeerStream = tokio_rustls::client::TlsStream<TcpStream>;

impl DockerApi {
    /// Mutual TLS to `peer` (the session must be with that node), within
    /// [`CONNECT_TIMEOUT`].
    async fn dial(&self, peer: &Peer, what: &str) -> Result<PeerStream, ApiError> {
        let unreachable = |why: String| {
            ApiError::unavailable(format!(
                "{what} runs on {}, which cannot be reached at {}: {why}; it may be down (see `shoal node ls`)",
                peer.name, peer.addr
            ))
        };
        let tls = self.ctl.running().map(|r| r.docker_tls()).ok_or_else(|| ApiError::unavailable("this node is not part of a cluster yet"))?;
        let dialled = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(peer.addr).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            tls.connect(tcp, Some(peer.id)).await.map(|(s, _)| s).map_err(|e| e.to_string())
        })
        .await;
        match dialled {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(why)) => Err(unreachable(why)),
            Err(_) => Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// Sends one request to `peer` on a connection of its own; gives the answer's head
    /// (its body streams from the peer as it is read).
    async fn send(&self, peer: &Peer, what: &str, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ApiError> {
        let stream = self.dial(peer, what).await?;
        let lost = |e: hyper::Error| ApiError::unavailable(format!("{what} runs on {}; the connection to it failed: {e}", peer.name));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(lost)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "docker api: forwarded connection ended with an error");
            }
        });
        match tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req)).await {
            Ok(answer) => answer.map_err(lost),
            Err(_) => Err(ApiError::unavailable(format!("{what} runs on {}, which did not answer within {HEAD_TIMEOUT:?}", peer.name))),
        }
    }

    /// Relays `req` to `peer` and its answer back: a short answer whole, a stream as it
    /// comes, an upgrade (`101`) by splicing both hijacked connections.
    pub(super) async fn forward(&self, peer: &Peer, what: &str, mut req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let body = http::read_body(body).await?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Request::builder().method(parts.method.clone()).uri(path).body(Full::new(Bytes::from(body))).map_err(|e| ApiError::bad_request(e.to_string()))?;
        copy_headers(&parts.headers, out.headers_mut(), upgrade);
        out.headers_mut().insert(HOST, HeaderValue::from_static("shoal"));
        tracing::debug!(method = %parts.method, path, to = %peer.name, "docker api: forwarding");
        let mut answer = self.send(peer, what, out).await?;
        let status = answer.status();
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ApiError::internal(format!("{} switched protocols on a request that did not ask to", peer.name)));
            };
            copy_headers(answer.headers(), resp.headers_mut(), true);
            resp.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(b"UPGRADED"));
            let peer_upgrade = hyper::upgrade::on(&mut answer);
            tokio::spawn(async move {
                match tokio::join!(client_upgrade, peer_upgrade) {
                    (Ok(client), Ok(node)) => splice(TokioIo::new(client), TokioIo::new(node)).await,
                    (c, n) => tracing::debug!(client = ?c.err(), node = ?n.err(), "docker api: a relayed upgrade failed"),
                }
            });
            return Ok(resp);
        }
        copy_headers(answer.headers(), resp.headers_mut(), false);
        let sized = answer.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let mut incoming = answer.into_body();
        if sized.is_some_and(|n| n <= MAX_WHOLE_ANSWER_BYTES) {
            let whole = tokio::time::timeout(HEAD_TIMEOUT, http_body_util::Limited::new(incoming, MAX_WHOLE_ANSWER_BYTES as usize).collect())
                .await
                .map_err(|_| ApiError::unavailable(format!("{} did not send its whole answer within {HEAD_TIMEOUT:?}", peer.name)))?
                .map_err(|e| ApiError::unavailable(format!("the answer of {} broke off: {e}", peer.name)))?;
            *resp.body_mut() = Body::full(whole.to_bytes());
            return Ok(resp);
        }
        let (tx, body) = Body::stream();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    () = tx.closed() => return, // the client went: dropping `incoming` closes the peer's stream
                    frame = incoming.frame() => frame,
                };
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if !tx.send(data).await {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "docker api: a relayed stream broke off");
                        return;
                    }
                    None => return,
                }
            }
        });
        *resp.body_mut() = body;
        Ok(resp)
    }

    /// Opens a hijacked connection to `peer` for `POST path` (attach after the front node
    /// has upgraded its own client), expecting `101`.
    pub(super) async fn open_upgraded(&self, peer: &Peer, what: &str, path: &str) -> Result<hyper::upgrade::Upgraded, ApiError> {
        let mut req = Request::builder().method(hyper::Method::POST).uri(path).body(Full::new(Bytes::new())).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(HOST, HeaderValue::from_static("shoal"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("tcp"));
        let mut answer = self.send(peer, what, req).await?;
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = answer.status();
            let body = http_body_util::Limited::new(answer.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ApiError::new(status, message));
        }
        hyper::upgrade::on(&mut answer)
            .await
            .map_err(|e| ApiError::unavailable(format!("the hijacked connection to {} failed: {e}", peer.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerapi::view::tests::three_nodes;

    fn node(st: &ClusterState, name: &str) -> NodeId {
        *st.nodes.iter().find(|(_, n)| n.name == name).map(|(id, _)| id).expect("node")
    }

    #[test]
    fn requests_go_here_to_a_live_peer_or_are_refused_with_where_it_runs() {
        let st = three_nodes();
        let (n1, n2, n3) = (node(&st, "n1"), node(&st, "n2"), node(&st, "n3"));
        let down = BTreeSet::from([n3]);
        assert_eq!(target(&st, &down, n1, true, "hello", n1), Ok(Target::Here));
        match target(&st, &down, n1, true, "hello", n2) {
            Ok(Target::Peer(p)) => assert_eq!((p.id, p.name.as_str(), p.addr), (n2, "n2", st.nodes[&n2].addr)),
            other => panic!("{other:?}"),
        }
        let e = target(&st, &down, n1, true, "container hello", n3).expect_err("down");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.starts_with("container hello runs on n3, which is down"), "{}", e.message);
        // A forwarded request is never forwarded again.
        let e = target(&st, &BTreeSet::new(), n1, false, "hello", n2).expect_err("no loops");
        assert!(e.message.contains("not forwarded again"), "{}", e.message);
        assert_eq!(target(&st, &BTreeSet::new(), n1, false, "hello", n1), Ok(Target::Here));
        let gone = NodeId([9; 16]);
        assert!(target(&st, &down, n1, true, "hello", gone).expect_err("gone").message.contains("no longer in the cluster"));
    }

    #[test]
    fn hijack_requests_and_answers_look_like_dockers() {
        let mut h = HeaderMap::new();
        assert!(!wants_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(!wants_upgrade(&h), "no Upgrade header");
        h.insert(UPGRADE, HeaderValue::from_static("tcp"));
        assert!(wants_upgrade(&h));
        let r = upgraded_response();
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(r.headers()[UPGRADE], "tcp");
        assert_eq!(r.headers()[CONNECTION], "Upgrade");
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], "application/vnd.docker.raw-stream");
        assert_eq!(r.extensions().get::<hyper::ext::ReasonPhrase>().map(|p| p.as_bytes()), Some(&b"UPGRADED"[..]));
        // Hop headers are not relayed; an upgrade keeps its Connection and Upgrade.
        let mut from = h.clone();
        from.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        from.insert(HeaderName::from_static("x-keep"), HeaderValue::from_static("1"));
        let mut plain = HeaderMap::new();
        copy_headers(&from, &mut plain, false);
        assert!(plain.contains_key("x-keep") && !plain.contains_key(CONNECTION) && !plain.contains_key(CONTENT_LENGTH));
        let mut up = HeaderMap::new();
        copy_headers(&from, &mut up, true);
        assert!(up.contains_key(CONNECTION) && up.contains_key(UPGRADE) && !up.contains_key(CONTENT_LENGTH));
    }

    #[tokio::test]
    async fn splice_copies_both_ways_and_passes_half_close_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, front) = tokio::io::duplex(64);
        let (node, mut back) = tokio::io::duplex(64);
        let relay = tokio::spawn(splice(front, node));
        client.write_all(b"stdin").await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        back.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"stdin", "the client's input and then its end reach the node");
        back.write_all(b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n").await.expect("write");
        back.shutdown().await.expect("close");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n", "output still flows after the client's half-close");
        relay.await.expect("relay");
    }
}
