//! The local API: a unix socket in the data dir (mode 0600), one JSON request per line and
//! one JSON response per line. The `shoal` CLI is its client, here or remotely: the same
//! requests are served on the node's TCP port under ALPN `shoal-api/1` to client
//! certificates ([`handle_stream`], `crate::remote`).

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use crate::control::report::{NodeRow, StatusReport};
use crate::control::{now_ms, Control};
use crate::services::{self, ServiceRow, TaskRow};
use shoal_cluster::scheduler::Availability;
use shoal_consensus::state::ServiceDef;
use shoal_consensus::Command;
use shoal_discovery::{GossipStats, MemberView};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the data dir.
pub const SOCKET_FILE: &str = "shoal.sock";
/// Longest request line accepted; requests are tiny, anything longer is an error.
const MAX_REQUEST_LEN: u64 = 64 * 1024;
/// Concurrent API connections served; more are dropped.
const MAX_CONNECTIONS: usize = 32;
/// Bound on one request, answer included. Longer than a replicated write may take
/// (`control::WRITE_TIMEOUT` plus one forward), so a write that finds no leader answers with
/// that reason instead of a closed connection.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on `image push` (streams whole images to every node).
const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a client may take to send its request line.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest response line a client accepts (a members list of thousands of nodes fits).
const MAX_RESPONSE_LEN: u64 = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Members,
    Stats,
    Status,
    Nodes,
    /// Revoke a node (id or unique id prefix).
    NodeRm { node: String },
    /// Change a node's labels in the replicated state.
    NodeUpdate {
        node: String,
        label_add: BTreeMap<String, String>,
        label_rm: Vec<String>,
        #[serde(default)]
        availability: Option<Availability>,
    },
    ServiceCreate { service: ServiceDef },
    ServiceLs,
    ServicePs { name: String },
    ServiceScale { name: String, replicas: u32 },
    ServiceRm { name: String },
    ServiceInspect { name: String },
    /// Every image of every node, with the nodes holding it.
    ImageLs,
    /// Send an image from this node's engine to the other nodes (matching `constraints`).
    ImagePush {
        image: String,
        #[serde(default)]
        constraints: Vec<String>,
    },
    /// Issue a client certificate named `name` for the key of `csr_pem` (the CLI generated
    /// the key; it never leaves the user's machine) valid `days`, and record the client.
    ClientNew { name: String, csr_pem: String, days: u32 },
    /// The clients of the cluster.
    ClientLs,
    /// Revoke a client: its certificate is refused at every handshake from then on.
    ClientRm { name: String },
}

/// One client of the cluster (`shoal client ls`): a JSON contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientRow {
    pub name: String,
    pub id: NodeId,
    /// Serial, hex.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: u64,
    pub created_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one response per connection; boxing buys nothing
pub enum Response {
    Members { members: Vec<MemberView> },
    Stats { stats: GossipStats },
    Status { status: StatusReport },
    Nodes { nodes: Vec<NodeRow> },
    Done { message: String },
    Services { services: Vec<ServiceRow> },
    Tasks { tasks: Vec<TaskRow> },
    Service { service: serde_json::Value },
    Images { listing: crate::images::ops::ImageListing },
    Pushed { image: String, nodes: Vec<crate::images::ops::PushRow> },
    ClientIssued { name: String, id: NodeId, ca_pem: String, cert_pem: String, not_after: u64 },
    Clients { clients: Vec<ClientRow> },
    Error { message: String },
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket, refusing to start if another agent already serves this data dir.
pub async fn bind(data_dir: &Path) -> Result<UnixListener> {
    let busy = format!(
        "another shoal agent is already running with data dir {}; stop it first or use another --data-dir",
        data_dir.display()
    );
    bind_private_socket(&socket_path(data_dir), &busy).await
}

/// Binds a unix socket of this node at `path` (mode 0600): refuses with `busy` if something
/// still answers there, replaces a stale socket file, refuses a path too long for a socket.
pub async fn bind_private_socket(path: &Path, busy: &str) -> Result<UnixListener> {
    if path.as_os_str().len() >= 100 {
        bail!("the data dir path is too long for a unix socket ({}); use a shorter --data-dir", path.display());
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("{busy}");
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Created with the umask, then restricted: nothing is accepted before the chmod.
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    Ok(listener)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, ctl: Control) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "api accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("too many api connections; dropping one");
            continue;
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, ctl).await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(stream: UnixStream, ctl: Control) -> Result<()> {
    handle_stream(stream, ctl).await
}

/// Serves one request on `stream` (the unix socket, or a TLS session of a client
/// certificate on the node's port, ALPN `shoal-api/1`).
pub async fn handle_stream<S>(stream: S, ctl: Control) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(MAX_REQUEST_LEN));
    let mut line = String::new();
    tokio::time::timeout(READ_TIMEOUT, lines.read_line(&mut line)).await.map_err(|_| anyhow!("no request within {READ_TIMEOUT:?}"))??;
    let request = serde_json::from_str::<Request>(&line);
    let limit = if matches!(request, Ok(Request::ImagePush { .. })) { PUSH_TIMEOUT } else { REQUEST_TIMEOUT };
    let response = match tokio::time::timeout(limit, respond(request, &ctl)).await {
        Ok(response) => response,
        Err(_) => Response::Error { message: format!("the request did not finish within {limit:?}") },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(())
}

async fn respond(request: serde_json::Result<Request>, ctl: &Control) -> Response {
    let ctl = ctl.clone();
    let membership = ctl.membership().clone();
    match request {
        Err(e) => Response::Error { message: format!("bad request: {e}") },
        Ok(Request::Members) => match membership.members().await {
            Ok(members) => Response::Members { members },
            Err(e) => Response::Error { message: e.to_string() },
        },
        Ok(Request::Stats) => match membership.stats().await {
            Ok(stats) => Response::Stats { stats },
            Err(e) => Response::Error { message: e.to_string() },
        },
        Ok(Request::Status) => match ctl.status().await {
            Ok(status) => Response::Status { status },
            Err(e) => Response::Error { message: format!("{e:#}") },
        },
        Ok(Request::Nodes) => match ctl.node_rows().await {
            Ok(nodes) => Response::Nodes { nodes },
            Err(e) => Response::Error { message: format!("{e:#}") },
        },
        Ok(Request::NodeRm { node }) => match node_rm(&ctl, &node).await {
            Ok(message) => Response::Done { message },
            Err(e) => Response::Error { message: format!("{e:#}") },
        },
        Ok(Request::NodeUpdate { node, label_add, label_rm, availability }) => {
            into_response(node_update(&ctl, &node, label_add, label_rm, availability).await.map(|message| Response::Done { message }))
        }
        Ok(Request::ServiceCreate { service }) => {
            let name = service.name.clone();
            // A client other than this binary's CLI may send anything: the shared rules
            // refuse it here, before it costs a log entry.
            if let Err(e) = service.validate() {
                return Response::Error { message: e.to_string() };
            }
            into_response(commit(&ctl, Command::CreateService { service, now_ms: now_ms() }).await.map(|_| Response::Done { message: format!("service {name} created") }))
        }
        Ok(Request::ServiceScale { name, replicas }) => into_response(
            commit(&ctl, Command::UpdateService { name: name.clone(), replicas: Some(replicas), now_ms: now_ms() })
                .await
                .map(|_| Response::Done { message: format!("service {name} scaled to {replicas}") }),
        ),
        Ok(Request::ServiceRm { name }) => into_response(
            commit(&ctl, Command::RemoveService { name: name.clone(), now_ms: now_ms() })
                .await
                .map(|_| Response::Done { message: format!("service {name} removed; its containers are being stopped") }),
        ),
        Ok(Request::ServiceLs) => into_response(
            with_health(&ctl).await.map(|(st, down)| Response::Services { services: services::service_rows(&st, &down) }),
        ),
        Ok(Request::ServicePs { name }) => into_response(
            with_health(&ctl).await.and_then(|(st, down)| services::task_rows(&st, &name, &down)).map(|tasks| Response::Tasks { tasks }),
        ),
        Ok(Request::ServiceInspect { name }) => into_response(with_health(&ctl).await.and_then(|(st, down)| {
            let svc = st.services.get(&name).ok_or_else(|| anyhow!("no service named {name}; list the services to see their names"))?;
            let pending: Vec<serde_json::Value> = services::task_rows(&st, &name, &down)?
                .into_iter()
                .filter(|r| r.task.is_none())
                .map(|r| serde_json::json!({"slot": r.slot, "reason": r.error}))
                .collect();
            Ok(Response::Service {
                service: serde_json::json!({
                    "definition": svc.def,
                    "stop_grace_period": shoal_sim::format_duration(
                        svc.def.spec.stop_grace_ms.unwrap_or(shoal_engine::types::STOP_GRACE_MS_DEFAULT)
                    ),
                    "version": svc.version,
                    "created_ms": svc.created_ms,
                    "updated_ms": svc.updated_ms,
                    "pending": pending,
                }),
            })
        })),
        Ok(Request::ImageLs) => into_response(crate::images::ops::list(&ctl).await.map(|listing| Response::Images { listing })),
        Ok(Request::ImagePush { image, constraints }) => into_response(
            crate::images::ops::push(&ctl, &image, &constraints).await.map(|nodes| Response::Pushed { image, nodes }),
        ),
        Ok(Request::ClientNew { name, csr_pem, days }) => into_response(client_new(&ctl, &name, &csr_pem, days).await),
        Ok(Request::ClientLs) => into_response(cluster_state(&ctl).await.map(|st| Response::Clients {
            clients: st
                .clients
                .records
                .iter()
                .map(|(name, c)| ClientRow {
                    name: name.clone(),
                    id: c.id,
                    serial: c.serial.iter().map(|b| format!("{b:02x}")).collect(),
                    not_after: c.not_after,
                    created_ms: c.created_ms,
                })
                .collect(),
        })),
        Ok(Request::ClientRm { name }) => into_response(
            commit(&ctl, Command::RevokeClient { name: name.clone() })
                .await
                .map(|_| Response::Done { message: format!("client {name} revoked: its certificate is refused by every node from now on") }),
        ),
    }
}

/// Longest client certificate lifetime asked for, in days (10 years).
const MAX_CLIENT_DAYS: u32 = 3650;

async fn client_new(ctl: &Control, name: &str, csr_pem: &str, days: u32) -> Result<Response> {
    use rustls::pki_types::pem::PemObject;
    if !(1..=MAX_CLIENT_DAYS).contains(&days) {
        bail!("--days must be 1 to {MAX_CLIENT_DAYS}, not {days}");
    }
    let csr = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| anyhow!("the certificate request is not a PEM CERTIFICATE REQUEST"))?;
    let running = ctl.running().ok_or_else(|| anyhow!("this node is not part of the cluster yet; see `shoal status`"))?;
    let lifetime = std::time::Duration::from_secs(u64::from(days) * 24 * 3600);
    let (cert, info) = running.issue_client(name, csr.as_ref(), lifetime).await?;
    let pem = |der: &[u8]| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    tracing::info!(client = %name, id = %info.id.short(), "issued a client certificate");
    Ok(Response::ClientIssued {
        name: name.to_string(),
        id: info.id,
        ca_pem: pem(running.ca_der.as_ref()),
        cert_pem: pem(cert.as_ref()),
        not_after: crate::pki::unix_secs(info.not_after),
    })
}

fn into_response(result: Result<Response>) -> Response {
    result.unwrap_or_else(|e| Response::Error { message: format!("{e:#}") })
}

async fn commit(ctl: &Control, cmd: Command) -> Result<shoal_consensus::Applied> {
    Ok(ctl.write(cmd).await?)
}

async fn cluster_state(ctl: &Control) -> Result<std::sync::Arc<shoal_consensus::ClusterState>> {
    let running = ctl.running().ok_or_else(|| anyhow!("this node is not part of the cluster yet; see `shoal status`"))?;
    running.state().await
}

/// The replicated state, and the registered nodes gossip sees down here (whose tasks
/// cannot report, so rows show them unknown).
async fn with_health(ctl: &Control) -> Result<(std::sync::Arc<shoal_consensus::ClusterState>, std::collections::BTreeSet<NodeId>)> {
    let state = cluster_state(ctl).await?;
    let members = ctl.membership().members().await.map_err(|e| anyhow!("cannot read this node's gossip view: {e}"))?;
    let down = services::down_nodes(&state, ctl.id(), &members, now_ms());
    Ok((state, down))
}

/// Finds the one node whose id starts with `prefix` (at least 4 hex characters), among the
/// registered nodes and the members seen in gossip.
async fn resolve_node(ctl: &Control, prefix: &str) -> Result<NodeId> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{prefix}` is not a node id: give at least 4 hex characters of an id from `shoal node ls`");
    }
    let rows = ctl.node_rows().await?;
    let matches: Vec<NodeId> = rows.iter().map(|r| r.id).filter(|id| id.to_string().starts_with(&prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no node id starts with `{prefix}`; see `shoal node ls`"),
        many => bail!("`{prefix}` matches {} nodes; give more characters of the id", many.len()),
    }
}

async fn node_rm(ctl: &Control, prefix: &str) -> Result<String> {
    let id = resolve_node(ctl, prefix).await?;
    if id == ctl.id() {
        bail!("refusing to remove the node you are asking ({}); run `shoal node rm` on another node", id.short());
    }
    if let Some(running) = ctl.running() {
        let raft = shoal_consensus::duties::RaftView::from_metrics(&running.metrics());
        let revoked = running.state().await?.revoked.clone();
        if let Some(why) = shoal_consensus::duties::removal_refusal(&raft, &revoked, &id) {
            bail!("refusing: {why}");
        }
    }
    ctl.write(Command::Revoke { node: id }).await?;
    Ok(format!("node {id} revoked: its certificate is refused from now on and it leaves Raft"))
}

async fn node_update(
    ctl: &Control,
    prefix: &str,
    add: BTreeMap<String, String>,
    rm: Vec<String>,
    availability: Option<Availability>,
) -> Result<String> {
    let id = resolve_node(ctl, prefix).await?;
    if let Some(availability) = availability {
        ctl.write(Command::SetAvailability { node: id, availability }).await?;
        if add.is_empty() && rm.is_empty() {
            return Ok(format!("node {id} is now {}", if availability == Availability::Drain { "draining: its tasks move to other nodes" } else { "active" }));
        }
    }
    let running = ctl.running().ok_or_else(|| anyhow!("this node is not part of the cluster yet"))?;
    let state = running.state().await?;
    let mut record = state
        .nodes
        .get(&id)
        .cloned()
        .ok_or_else(|| anyhow!("node {} is not registered in the cluster (yet)", id.short()))?;
    for key in &rm {
        if record.labels.remove(key).is_none() {
            bail!("node {} has no label `{key}`", id.short());
        }
    }
    record.labels.extend(add);
    ctl.write(Command::RegisterNode { id, record }).await?;
    Ok(format!("node {id} updated"))
}

/// Which agent a CLI command asks.
#[derive(Debug, Clone)]
pub enum Target {
    /// The agent of this data dir, on its unix socket.
    Local(PathBuf),
    /// A node's TCP port (`--host tcp://HOST:PORT`), with the client certificate of a cert
    /// dir (`--cert-dir`).
    Remote { host: String, port: u16, cert_dir: PathBuf },
}

impl Target {
    /// The data dir of a local target (for messages that name it).
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            Target::Local(dir) => Some(dir),
            Target::Remote { .. } => None,
        }
    }
}

/// Sends one request to the agent of `target`.
pub async fn call(target: &Target, request: &Request) -> Result<Response> {
    match target {
        Target::Local(data_dir) => call_local(data_dir, request).await,
        Target::Remote { host, port, cert_dir } => {
            let certs = crate::remote::CertDir::load(cert_dir)?;
            let stream = crate::remote::connect_api(host, *port, certs).await?;
            exchange(stream, request).await.with_context(|| format!("the node at {host}:{port} did not answer (a refused, self-made or revoked client certificate ends the TLS session)"))
        }
    }
}

/// Sends one request to the agent serving `data_dir`.
pub async fn call_local(data_dir: &Path, request: &Request) -> Result<Response> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow!(
            "cannot reach the shoal agent at {} ({e}); is `shoal agent --data-dir {}` running?",
            path.display(),
            data_dir.display()
        )
    })?;
    exchange(stream, request).await
}

async fn exchange<S>(stream: S, request: &Request) -> Result<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut req = serde_json::to_vec(request)?;
    req.push(b'\n');
    write.write_all(&req).await?;
    let mut reader = BufReader::new(read.take(MAX_RESPONSE_LEN));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if line.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    let response: Response = serde_json::from_str(&line).context("the agent sent an unreadable answer")?;
    if let Response::Error { message } = &response {
        bail!("the agent refused the request: {message}");
    }
    Ok(response)
}

