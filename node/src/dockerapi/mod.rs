//! The Docker Engine API (v1.41) of a node: the unmodified `docker` CLI drives the whole
//! cluster through it as one virtual Docker host, as with classic Docker Swarm.
//!
//! - [`http`]: bodies (with a length, or streamed), `{"message": …}` errors, bounded bodies;
//! - [`route`]: the `/vX.Y` prefix and the endpoint table (everything else is 501, named);
//! - [`query`]: Docker's booleans, numbers and both `filters` shapes;
//! - [`view`]: the cluster as one Docker host (lists, inspect, info), pure;
//! - [`create`]: a container config and its scheduling hints → the replicated
//!   `ContainerDef`, pure;
//! - `containers`: the endpoints that change containers, one replicated command each
//!   (through `Control::write`) and a bounded wait until the chosen node has done it;
//! - [`logs`]: `docker logs [-f]` of a container on this node, from its engine;
//! - [`networks`]: `docker network create|ls|inspect|rm` (and compose's default network)
//!   as cluster objects; a node creates a network in its engine when a container on it
//!   is started there;
//! - [`images`]: `docker images` and image inspect merged over the nodes (with the nodes
//!   holding each), pulls streamed as Docker's progress JSON;
//! - [`events`]: `GET /events` as a stream that stays open (no events yet).
//! - [`attach`]: `docker run` without `-d` and `docker attach`: the container's output
//!   from its start until it exits, on a hijacked connection;
//! - [`exec`]: `docker exec [-i] [-t]` through the engine of the container's node;
//! - [`proxy`]: requests about a container on another node (logs, attach, exec) are
//!   forwarded to it over node-to-node mutual TLS (ALPN `shoal-docker/1`), where the same
//!   API answers in "this node only" mode.
//!
//! HTTP/1.1 is served by hyper 1 over any `AsyncRead + AsyncWrite` stream
//! ([`serve_connection`]): the unix socket `DATA_DIR/docker.sock` (mode 0600,
//! [`serve_unix`]), the node's TCP port under ALPN `http/1.1` or none, for client
//! certificates (`crate::remote`), and, for forwarded requests, the node's TCP port under
//! `shoal-docker/1` ([`proxy::PeerService`]).
//! Limits: [`MAX_CONNECTIONS`] at once, request headers within [`HEADER_TIMEOUT`] and
//! [`MAX_HEADER_BYTES`], bodies within [`http::MAX_BODY_BYTES`], and every request answered
//! within [`REQUEST_TIMEOUT`] except long streams (`wait`, `logs`, hijacked attach and exec
//! sessions), which end with the container (or exec) or when the client goes away.

pub mod attach;
mod containers;
pub mod create;
pub mod events;
pub mod images;
pub mod networks;
pub mod exec;
pub mod http;
pub mod logs;
pub mod proxy;
pub mod query;
pub mod route;
pub mod view;

use crate::control::Control;
use anyhow::Result;
use http::{ApiError, Body};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use route::Endpoint;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

/// File name of the socket inside the data dir.
pub const SOCKET_FILE: &str = "docker.sock";
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers (also how long an idle
/// keep-alive connection stays open).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers), in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 100;
/// Bound on one request, body and answer included, except long streams. Above a write's
/// own bound (about 10 s, with retries across leader changes) plus the waits of
/// start/stop ([`CHANGE_WAIT`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long start, stop, restart and remove wait for the cluster to carry the change out.
pub const CHANGE_WAIT: Duration = Duration::from_secs(60);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds `DATA_DIR/docker.sock` (mode 0600), replacing a stale socket file; refuses if an
/// agent still answers on it.
pub async fn bind(data_dir: &Path) -> Result<UnixListener> {
    let path = socket_path(data_dir);
    let busy = format!("another process serves {}; stop it first or use another --data-dir", path.display());
    crate::api::bind_private_socket(&path, &busy).await
}

/// The API of one node; cheap to share.
pub struct DockerApi {
    ctl: Control,
    /// Requests about containers on other nodes are forwarded there (the API clients
    /// reach); `false` for requests that other nodes forwarded here (never forwarded again).
    forward: bool,
}

impl DockerApi {
    pub fn new(ctl: Control) -> Arc<Self> {
        Arc::new(Self { ctl, forward: true })
    }

    /// The same API in "this node only" mode, for requests forwarded by other nodes.
    pub fn local_only(&self) -> Arc<Self> {
        Arc::new(Self { ctl: self.ctl.clone(), forward: false })
    }
}

/// Accepts connections on the unix socket until the task is dropped.
pub async fn serve_unix(listener: UnixListener, api: Arc<DockerApi>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "docker api accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("too many docker api connections; closing one");
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            serve_connection(stream, api).await;
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 on one connection until it closes. Generic over the stream so the same
/// server runs on the unix socket and, later, on a TLS stream of the node's port.
pub async fn serve_connection<S>(stream: S, api: Arc<DockerApi>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .half_close(false);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await {
        tracing::debug!(error = %e, "docker api connection ended with an error");
    }
}

impl DockerApi {
    /// One request: route, run the endpoint (within [`REQUEST_TIMEOUT`] unless it streams),
    /// answer errors as Docker does, and stamp the version headers.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut resp = match route::route(&method, &path) {
            Err(e) => e.into_response(),
            Ok(endpoint) => {
                let stream = endpoint.is_stream();
                let work = self.endpoint(endpoint, req);
                let answer = if stream {
                    work.await
                } else {
                    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
                        Ok(answer) => answer,
                        Err(_) => Err(ApiError::internal(format!(
                            "{method} {path} did not finish within {REQUEST_TIMEOUT:?}; the cluster may be busy or without a leader, see `shoal status`"
                        ))),
                    }
                };
                answer.unwrap_or_else(|e| {
                    tracing::debug!(%method, %path, error = %e, "docker api request refused");
                    e.into_response()
                })
            }
        };
        let headers = resp.headers_mut();
        for (name, value) in [("api-version", "1.41"), ("ostype", "linux"), ("docker-experimental", "false")] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers.insert(HeaderName::from_static("server"), HeaderValue::from_static(concat!("shoal/", env!("CARGO_PKG_VERSION"))));
        resp
    }

    async fn endpoint(self: &Arc<Self>, endpoint: Endpoint, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let query = query::Query::parse(req.uri().query())?;
        match endpoint {
            Endpoint::Ping => Ok(ping()),
            Endpoint::Version => Ok(http::ok_json(&view::version_json())),
            Endpoint::Info => {
                let snap = self.snapshot().await?;
                let cluster_id = self.ctl.config().secret.cluster_id().to_string();
                Ok(http::ok_json(&view::info_json(&snap.view(), &cluster_id, &self.ctl.config().name)))
            }
            Endpoint::ContainerList => {
                let snap = self.snapshot().await?;
                let limit = query.int("limit")?;
                let rows = snap.view().list(query.bool("all"), limit, &query.filters()?)?;
                Ok(http::ok_json(&serde_json::Value::Array(rows.iter().map(view::list_json).collect())))
            }
            Endpoint::ContainerInspect(key) => {
                let snap = self.snapshot().await?;
                Ok(http::ok_json(&view::inspect_json(&snap.view().find(&key)?)))
            }
            Endpoint::ContainerCreate => {
                let body = http::read_body(req.into_body()).await?;
                self.create(&query, &body).await
            }
            Endpoint::ContainerStart(key) => self.start(&key).await,
            Endpoint::ContainerRestart(key) => self.restart(&key).await,
            Endpoint::ContainerStop(key) => self.stop(&key, false).await,
            Endpoint::ContainerKill(key) => self.kill(&key, &query).await,
            Endpoint::ContainerDelete(key) => self.remove(&key, &query).await,
            Endpoint::ContainerWait(key) => self.clone().wait(&key, &query).await,
            Endpoint::ContainerLogs(key) => self.clone().logs(&key, &query, req).await,
            Endpoint::NetworkList => self.network_list(&query).await,
            Endpoint::NetworkCreate => {
                let body = http::read_body(req.into_body()).await?;
                self.network_create(&body).await
            }
            Endpoint::NetworkInspect(key) => self.network_inspect(&key).await,
            Endpoint::NetworkDelete(key) => self.network_remove(&key).await,
            Endpoint::NetworkConnect(key) => {
                let body = http::read_body(req.into_body()).await?;
                self.network_connect(&key, &body, true).await
            }
            Endpoint::NetworkDisconnect(key) => {
                let body = http::read_body(req.into_body()).await?;
                self.network_connect(&key, &body, false).await
            }
            Endpoint::ImageList => self.image_list(&query).await,
            Endpoint::ImageInspect(name) => self.image_inspect(&name).await,
            Endpoint::ImageCreate => self.image_pull(&query).await,
            Endpoint::Events => events::events(&query),
            Endpoint::ContainerAttach(key) => self.clone().attach(&key, &query, req).await,
            Endpoint::ExecCreate(key) => self.exec_create(&key, req).await,
            Endpoint::ExecStart(key) => self.exec_start(&key, req).await,
            Endpoint::ExecInspect(key) => self.exec_inspect(&key, req).await,
            Endpoint::ExecResize(key) => self.exec_resize(&key, &query, req).await,
        }
    }

    /// This node's copy of the replicated state and its gossip view, now.
    async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        let running = self
            .ctl
            .running()
            .ok_or_else(|| ApiError::unavailable("this node is not part of a cluster yet; see `shoal status` on it"))?;
        let state = running.state().await.map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        let members = self.ctl.membership().members().await.unwrap_or_default();
        Ok(Snapshot { state, members, now_ms: crate::control::now_ms() })
    }
}

/// What one request reads, taken once.
struct Snapshot {
    state: std::sync::Arc<shoal_consensus::ClusterState>,
    members: Vec<shoal_discovery::MemberView>,
    now_ms: u64,
}

impl Snapshot {
    fn view(&self) -> view::ClusterView<'_> {
        view::ClusterView { state: &self.state, members: &self.members, now_ms: self.now_ms }
    }
}

/// `GET|HEAD /_ping`: `OK`, with the version headers (added for every answer).
fn ping() -> Response<Body> {
    let mut resp = Response::new(Body::full("OK"));
    let headers = resp.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    headers.insert(hyper::header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}
