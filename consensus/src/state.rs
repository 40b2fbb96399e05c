//! The replicated cluster state and its commands: pure, deterministic logic with no I/O.
//!
//! [`ClusterState::apply`] is total: every [`Command`] value yields a [`Response`], and a
//! command that is invalid in the current state is rejected *without changing anything*. It
//! reads no clock and draws no randomness, so every replica that applies the same log ends in
//! the same state. Only ordered collections (`BTreeMap`/`BTreeSet`) are used, so iteration
//! order (and therefore snapshots and traces) is deterministic too.
//!
//! Services and tasks (records, limits, validation, and the views the scheduler and the
//! agents read) live in the [`services`] submodule; their types are re-exported here.
//!
//! **Extension point.** Add `Command` variants *at the end of the enum* (the codec encodes
//! the variant index, so existing logs keep decoding) and new fields at the end of
//! [`ClusterState`], and bump [`crate::codec::SNAPSHOT_FORMAT`] when the snapshot layout
//! changes (keeping a decoder for the previous layout in `codec`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use openraft::EntryPayload;
use serde::Deserialize;
use serde::Serialize;
use shoal_wire::NodeId;

use crate::types::Entry;
use crate::types::LogId;
use crate::types::StoredMembership;

pub mod legacy;
pub mod clients;
pub mod containers;
pub mod networks;
#[cfg(test)]
mod containers_tests;
pub mod services;
#[cfg(test)]
mod services_tests;

pub use clients::*;
pub use containers::*;
pub use networks::*;
pub use services::*;

/// Longest node name, in bytes (same rule as membership's node facts).
pub const MAX_NAME_LEN: usize = 64;
/// Most labels per node.
pub const MAX_LABELS: usize = 32;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 128;
/// Longest CA certificate PEM, in bytes.
pub const MAX_CA_CERT_LEN: usize = 16 * 1024;
/// Longest sealed CA key, in bytes.
pub const MAX_SEALED_KEY_LEN: usize = 4 * 1024;
/// Longest certificate serial number, in bytes (RFC 5280 allows at most 20 octets).
pub const MAX_SERIAL_LEN: usize = 20;

/// What the cluster knows about a registered node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Host name (letters, digits, `.`, `-`, `_`; 1 to [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// TCP address for Raft RPC and the API.
    pub addr: SocketAddr,
    /// Labels for placement constraints (`node.labels.KEY`).
    pub labels: BTreeMap<String, String>,
}

/// The cluster CA: its certificate, and its private key sealed with a key derived from the
/// join secret (this crate never sees the secret or the plain key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, sealed (AEAD) by the trust module.
    pub sealed_key: Vec<u8>,
}

impl fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaRecord")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field(
                "sealed_key",
                &format_args!("{} bytes", self.sealed_key.len()),
            )
            .finish()
    }
}

/// The latest certificate issued to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Certificate serial number (big-endian bytes, 1 to [`MAX_SERIAL_LEN`]).
    pub serial: Vec<u8>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: u64,
}

/// A change to the cluster state, proposed by the leader and applied by every replica.
///
/// New variants go at the end (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a node, or updates the record of a known node (address or labels changed).
    /// Rejected for a revoked id or an invalid record.
    RegisterNode { id: NodeId, record: NodeRecord },
    /// Stores the cluster CA. Rejected if a CA is already set: the CA never changes silently.
    SetCa(CaRecord),
    /// Records a certificate issued to a registered, non-revoked node. Rejected if there is
    /// no CA, or if it expires before the one already recorded (a stale retry).
    RecordIssued { node: NodeId, cert: IssuedCert },
    /// Revokes a node: it is removed from the nodes and issued certificates, its drain mark
    /// is dropped, its live tasks are told to shut down (reason `NodeGone`; their `updated_ms`
    /// is left as it was, the command carries no time), and its id is refused from then on.
    /// Revoking a revoked id again is a no-op.
    Revoke { node: NodeId },
    /// `CreateService` as logs written before the stop grace period hold it (a service
    /// definition without `stop_grace_ms`); applied as `CreateService` with none. Kept at
    /// this index so those entries still decode; new writes use `CreateService`.
    CreateServiceV1 {
        service: legacy::ServiceDefV1,
        now_ms: u64,
    },
    /// Changes a service (for now its replica count). Scaling down shuts the tasks of the
    /// removed slots down at once. An update that changes nothing does not bump the version.
    /// Rejected for an unknown service, scaling a global one, or replicas out of range.
    /// (`replicas: None` changes nothing; new kinds of update will be new variants, since a
    /// field added here would break decoding of the entries already in logs.)
    UpdateService {
        name: String,
        replicas: Option<u32>,
        now_ms: u64,
    },
    /// Removes a service; its live tasks are told to shut down (and kept, so agents remove
    /// their containers, until `ForgetTasks`). Rejected for an unknown service.
    RemoveService { name: String, now_ms: u64 },
    /// One scheduler pass (build it with [`Command::apply_decisions`]). Applied in order:
    /// `Place` allocates the next task id (desired running), skipped if the service or a
    /// registered, active node is missing, the slot is not one of the service, or the slot
    /// already has a live task (so a replayed batch creates nothing twice); `Shutdown` sets a
    /// live task's desired state to shutdown, skipped otherwise; `Pending` records why a slot
    /// of an existing service could not be placed. The batch's pending reasons replace the
    /// recorded ones. Rejected past [`MAX_DECISIONS`] or for a reason longer than
    /// [`MAX_PENDING_REASON_LEN`] or with control characters.
    ApplyDecisions {
        decisions: Vec<Decision>,
        now_ms: u64,
    },
    /// Observed task states from a node's agent (build with [`Command::report_tasks`]). A
    /// report about a task that is unknown or not assigned to `node` is ignored. Rejected for
    /// an unknown or revoked node, past [`MAX_REPORTS`], or for an over-long failure reason or
    /// container id.
    ReportTasks {
        node: NodeId,
        reports: Vec<TaskReport>,
        now_ms: u64,
    },
    /// Removes task records that are told to shut down and either reported shut down or on
    /// a node no longer registered ([`ClusterState::forgettable_tasks`]); other ids are
    /// skipped. Rejected past [`MAX_FORGET`] ids.
    ForgetTasks { ids: Vec<TaskId> },
    /// Marks a node active or drained (the scheduler moves tasks off drained nodes and
    /// places nothing on them). Rejected for an unknown or revoked node.
    SetAvailability {
        node: NodeId,
        availability: Availability,
    },
    /// Creates a service (version 1, created and updated at `now_ms`, no tasks yet: the
    /// scheduler places them). Rejected for an invalid definition, a name in use, or past
    /// [`MAX_SERVICES`].
    CreateService { service: ServiceDef, now_ms: u64 },
    /// Creates a container of the Docker API (see [`containers`]): its record and its
    /// backing service, with 0 replicas. Rejected for an invalid or used id, an invalid
    /// name or one in use by a container or a service, invalid labels, a service that is
    /// not the container's (name, 0 replicas) or invalid, or past [`MAX_CONTAINERS`].
    CreateContainer {
        container: ContainerDef,
        now_ms: u64,
    },
    /// Starts (`run`: its service to 1 replica), restarts (`run` and `restart`: the live
    /// task is shut down and a new one placed) or stops (0 replicas) a container. A start
    /// of a container whose run has ended is a restart. Changes nothing if it is already
    /// so. Rejected for an unknown container.
    SetContainerRun {
        id: String,
        run: bool,
        restart: bool,
        now_ms: u64,
    },
    /// Removes a container and its service (its tasks are told to shut down). Rejected for
    /// an unknown container, or a running one without `force`.
    RemoveContainer {
        id: String,
        force: bool,
        now_ms: u64,
    },
    /// Records a client certificate issued to a user (see [`clients`]). Rejected for an
    /// invalid name, a name in use, an id in use or revoked (by a node or a client), a bad
    /// serial or expiry, or past [`MAX_CLIENTS`].
    AddClient { name: String, client: ClientRecord },
    /// Revokes a client: its record goes, its id is refused at every handshake from then
    /// on. Rejected for an unknown client.
    RevokeClient { name: String },
    /// Creates a network of the Docker API (see [`networks`]). Rejected for an invalid or
    /// used id, an invalid, reserved or used name, a driver other than `bridge`, invalid
    /// labels, or past [`MAX_NETWORKS`].
    CreateNetwork { network: NetworkDef, now_ms: u64 },
    /// Removes a network. Rejected for an unknown network or one containers are attached to.
    RemoveNetwork { id: String },
    /// `CreateContainer` for a container attached to `networks` (each must exist; at most
    /// [`MAX_CONTAINER_NETWORKS`]). `CreateContainer` is this with none.
    CreateNetworkedContainer {
        container: ContainerDef,
        networks: Vec<NetworkAttachment>,
        now_ms: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::RegisterNode { id, record } => {
                write!(
                    f,
                    "register {} as {} at {}",
                    id.short(),
                    record.name,
                    record.addr
                )
            }
            Command::SetCa(ca) => write!(f, "set ca ({} bytes of PEM)", ca.cert_pem.len()),
            Command::RecordIssued { node, cert } => {
                write!(
                    f,
                    "record cert for {} until {}",
                    node.short(),
                    cert.not_after
                )
            }
            Command::Revoke { node } => write!(f, "revoke {}", node.short()),
            Command::CreateService { service, .. } => write!(
                f,
                "create service {} ({}, image {})",
                service.name,
                fmt_mode(&service.mode),
                service.spec.image
            ),
            Command::CreateServiceV1 { service, .. } => write!(
                f,
                "create service {} ({}, image {}; earlier layout)",
                service.name,
                fmt_mode(&service.mode),
                service.spec.image
            ),
            Command::UpdateService { name, replicas, .. } => match replicas {
                Some(n) => write!(f, "scale service {name} to {n}"),
                None => write!(f, "update service {name} (no change)"),
            },
            Command::RemoveService { name, .. } => write!(f, "remove service {name}"),
            Command::ApplyDecisions { decisions, .. } => {
                let (mut place, mut shutdown, mut pending) = (0, 0, 0);
                for d in decisions {
                    match d {
                        Decision::Place { .. } => place += 1,
                        Decision::Shutdown { .. } => shutdown += 1,
                        Decision::Pending { .. } => pending += 1,
                    }
                }
                write!(
                    f,
                    "schedule: {place} place, {shutdown} shutdown, {pending} pending"
                )
            }
            Command::ReportTasks { node, reports, .. } => {
                write!(f, "{} task reports from {}", reports.len(), node.short())
            }
            Command::ForgetTasks { ids } => write!(f, "forget {} tasks", ids.len()),
            Command::SetAvailability { node, availability } => {
                let a = match availability {
                    Availability::Active => "active",
                    Availability::Drain => "drain",
                };
                write!(f, "set {} availability {a}", node.short())
            }
            Command::CreateContainer { container, .. } => write!(
                f,
                "create container {} ({}, image {})",
                container.name,
                &container.id.get(..12).unwrap_or(&container.id),
                container.service.spec.image
            ),
            Command::SetContainerRun {
                id, run, restart, ..
            } => {
                let what = match (run, restart) {
                    (false, _) => "stop",
                    (true, false) => "start",
                    (true, true) => "restart",
                };
                write!(f, "{what} container {}", id.get(..12).unwrap_or(id))
            }
            Command::RemoveContainer { id, force, .. } => write!(
                f,
                "remove container {}{}",
                id.get(..12).unwrap_or(id),
                if *force { " (force)" } else { "" }
            ),
            Command::AddClient { name, client } => {
                write!(f, "add client {name} ({})", client.id.short())
            }
            Command::RevokeClient { name } => write!(f, "revoke client {name}"),
            Command::CreateNetwork { network, .. } => write!(
                f,
                "create network {} ({})",
                network.name,
                network.id.get(..12).unwrap_or(&network.id)
            ),
            Command::RemoveNetwork { id } => {
                write!(f, "remove network {}", id.get(..12).unwrap_or(id))
            }
            Command::CreateNetworkedContainer {
                container,
                networks,
                ..
            } => write!(
                f,
                "create container {} ({}, image {}, {} network(s))",
                container.name,
                &container.id.get(..12).unwrap_or(&container.id),
                container.service.spec.image,
                networks.len()
            ),
        }
    }
}

/// What an applied entry did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A blank or membership entry: nothing in the cluster state changed.
    Nothing,
    /// A node was registered (`new`) or its record updated.
    NodeRegistered { new: bool },
    /// The CA was stored.
    CaSet,
    /// An issued certificate was recorded.
    IssuedRecorded,
    /// The node is revoked (`already`: it was revoked before, nothing changed).
    Revoked { already: bool },
    /// The service was created.
    ServiceCreated,
    /// The service is at `version` (`changed`: the update changed it).
    ServiceUpdated { version: u64, changed: bool },
    /// The service was removed; `shut_down` of its tasks were told to shut down.
    ServiceRemoved { shut_down: u32 },
    /// A scheduler batch: the ids of the tasks created (in order), how many tasks were told
    /// to shut down, and how many decisions were skipped as stale or invalid.
    DecisionsApplied {
        created: Vec<TaskId>,
        shut_down: u32,
        skipped: u32,
    },
    /// Task reports: `applied` to tasks of the node, `ignored` (unknown or someone else's).
    TasksReported { applied: u32, ignored: u32 },
    /// Task records `removed`, and ids `kept` (not forgettable or unknown).
    TasksForgotten { removed: u32, kept: u32 },
    /// The availability was set (`changed`: it differed).
    AvailabilitySet { changed: bool },
    /// The container was created.
    ContainerCreated,
    /// The container was started, restarted or stopped (`changed`: it was not already so).
    ContainerRun { changed: bool },
    /// The container was removed; `shut_down` of its tasks were told to shut down.
    ContainerRemoved { shut_down: u32 },
    /// A client was recorded.
    ClientAdded,
    /// A client was revoked; its id.
    ClientRevoked { id: NodeId },
    /// The network was created.
    NetworkCreated,
    /// The network was removed.
    NetworkRemoved,
}

/// Why a command was rejected. A rejected command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    #[error("node name must be 1 to {MAX_NAME_LEN} letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("at most {MAX_LABELS} labels, keys of 1 to {MAX_LABEL_KEY_LEN} name characters or '/', printable values of at most {MAX_LABEL_VALUE_LEN} bytes")]
    BadLabels,
    #[error("node {0} is revoked")]
    NodeRevoked(NodeId),
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    #[error("the cluster CA is already set")]
    CaAlreadySet,
    #[error("no cluster CA is set")]
    NoCa,
    #[error("CA certificate must be a PEM certificate of at most {MAX_CA_CERT_LEN} bytes and the sealed key 1 to {MAX_SEALED_KEY_LEN} bytes")]
    BadCa,
    #[error("certificate serial must be 1 to {MAX_SERIAL_LEN} bytes and the expiry non-zero")]
    BadCert,
    #[error("certificate expires at {not_after}, before the recorded one ({recorded})")]
    StaleCert { not_after: u64, recorded: u64 },
    #[error("service name {0:?} is not valid: use 1 to {MAX_SERVICE_NAME_LEN} lowercase letters, digits, '_', '.' or '-', starting with a letter or digit")]
    BadServiceName(String),
    #[error("service {0} already exists; scale it, or remove it first to create it anew")]
    ServiceExists(String),
    #[error("no service named {0}; list the services to see their names")]
    UnknownService(String),
    #[error("the cluster already has {MAX_SERVICES} services, its limit; remove one first")]
    TooManyServices,
    #[error("replicas must be 0 to {MAX_REPLICAS}, not {0}")]
    BadReplicas(u32),
    #[error("service {0} is global (one task per eligible node): it cannot be scaled; use constraints to choose its nodes")]
    ScaleGlobal(String),
    #[error(
        "the image must be a reference of 1 to {} bytes without spaces, e.g. nginx:1.27",
        shoal_engine::types::IMAGE_LEN_MAX
    )]
    BadImage,
    #[error("invalid container spec: {0}")]
    BadSpec(String),
    #[error("port mapping {host}:{container}: ports must be 1 to 65535")]
    BadPort { host: u16, container: u16 },
    #[error("host port {port}/{protocol} is published twice; publish each host port once")]
    DuplicatePort { port: u16, protocol: String },
    #[error("CPU reservations and limits must be at most {MAX_CPU_MILLIS} millis, memory at most {MAX_MEMORY_BYTES} bytes")]
    BadResources,
    #[error("at most {MAX_CONSTRAINTS} constraints per service, not {0}")]
    TooManyConstraints(usize),
    #[error("constraint {0:?} is not valid; use node.labels.KEY==VALUE, node.hostname!=NAME, node.arch==ARCH or node.id==PREFIX")]
    BadConstraint(String),
    #[error("the service definition holds {bytes} bytes of text (image, command, environment, constraints); at most {MAX_SPEC_TEXT_BYTES} are allowed")]
    SpecTooLarge { bytes: usize },
    #[error("a scheduler batch holds at most {MAX_DECISIONS} decisions, not {0}; build it with Command::apply_decisions")]
    TooManyDecisions(usize),
    #[error("pending reasons must be at most {MAX_PENDING_REASON_LEN} bytes without control characters; build the batch with Command::apply_decisions")]
    BadPendingReason,
    #[error("a report batch holds at most {MAX_REPORTS} reports, not {0}; build batches with Command::report_tasks")]
    TooManyReports(usize),
    #[error("report about task {task}: {why}; build batches with Command::report_tasks")]
    BadReport { task: TaskId, why: String },
    #[error("at most {MAX_FORGET} task ids per command, not {0}; split the list")]
    TooManyTaskIds(usize),
    #[error("the stop grace period must be at most {} s, not {} ms", shoal_engine::types::STOP_GRACE_MS_MAX / 1000, .0)]
    BadStopGrace(u64),
    #[error("a container id is {CONTAINER_ID_LEN} lowercase hex digits")]
    BadContainerId,
    #[error("the container id is already in use")]
    ContainerIdInUse,
    #[error("invalid container name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, 2 to {MAX_CONTAINER_NAME_LEN} characters")]
    BadContainerName(String),
    #[error("the container name \"/{0}\" is already in use by another container; remove it or choose another name")]
    ContainerNameInUse(String),
    #[error("the name {0} is already in use by the shoal service {0}; choose another name")]
    NameInUseByService(String),
    #[error("at most {MAX_CONTAINER_LABELS} labels with keys of 1 to {MAX_CONTAINER_LABEL_KEY_LEN} bytes without '=' or control characters, {MAX_CONTAINER_LABEL_BYTES} bytes in all")]
    BadContainerLabels,
    #[error("invalid container: {0}")]
    BadContainerService(String),
    #[error("the cluster already has {MAX_CONTAINERS} containers, its limit; remove some first")]
    TooManyContainers,
    #[error("No such container: {0}")]
    UnknownContainer(String),
    #[error("You cannot remove a running container {0}. Stop the container before attempting removal or force remove")]
    ContainerRunning(String),
    #[error("service {service} runs the container {container} of the Docker API; change it with docker (stop, start, rm)")]
    ServiceOfContainer { service: String, container: String },
    #[error("invalid client name {0:?}: use 1 to {MAX_CLIENT_NAME_LEN} lowercase letters, digits, '.', '-' or '_', starting with a letter or digit")]
    BadClientName(String),
    #[error("a client named {0} exists; choose another name, or revoke it first with `shoal client rm {0}`")]
    ClientExists(String),
    #[error("the client's key is already in use or revoked; generate a new key")]
    ClientIdInUse,
    #[error("no client named {0}; `shoal client ls` lists them")]
    UnknownClient(String),
    #[error("the cluster already has {MAX_CLIENTS} clients (or too many revoked ones), its limit")]
    TooManyClients,
    #[error("invalid network: {0}")]
    BadNetwork(String),
    #[error("network with name {0} already exists")]
    NetworkNameInUse(String),
    #[error("network {0} not found")]
    UnknownNetwork(String),
    #[error("error while removing network: network {network} has active endpoints ({containers}); remove those containers first")]
    NetworkInUse { network: String, containers: String },
}

/// The response to every applied entry.
pub type Response = Result<Applied, Rejected>;

/// The replicated state of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Registered nodes.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The cluster CA, once the first leader has created it.
    pub ca: Option<CaRecord>,
    /// The latest certificate issued to each node.
    pub issued: BTreeMap<NodeId, IssuedCert>,
    /// Revoked node ids: never registered or certified again.
    pub revoked: BTreeSet<NodeId>,
    /// The last log entry applied to this state.
    pub last_applied: Option<LogId>,
    /// The last membership config applied to this state.
    pub membership: StoredMembership,
    /// Services by name.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Tasks by id: live ones, and shut-down ones until forgotten.
    pub tasks: BTreeMap<TaskId, TaskRecord>,
    /// The id the next placed task gets (ids start at 1 and are never reused).
    pub next_task_id: u64,
    /// Registered nodes that are not active (only `Drain` is stored; absent means active).
    pub availability: BTreeMap<NodeId, Availability>,
    /// Containers of the Docker API, by id.
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Users' client certificates and the revoked client ids (snapshot format 4).
    pub clients: ClientsState,
    /// Networks of the Docker API, by id (snapshot format 4).
    pub networks: BTreeMap<String, NetworkRecord>,
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.chars().all(name_char)
}

fn valid_labels(labels: &BTreeMap<String, String>) -> bool {
    labels.len() <= MAX_LABELS
        && labels.iter().all(|(k, v)| {
            !k.is_empty()
                && k.len() <= MAX_LABEL_KEY_LEN
                && k.chars().all(|c| name_char(c) || c == '/')
                && v.len() <= MAX_LABEL_VALUE_LEN
                && !v.chars().any(char::is_control)
        })
}

fn valid_ca(ca: &CaRecord) -> bool {
    ca.cert_pem.len() <= MAX_CA_CERT_LEN
        && ca
            .cert_pem
            .trim_start()
            .starts_with("-----BEGIN CERTIFICATE-----")
        && !ca.sealed_key.is_empty()
        && ca.sealed_key.len() <= MAX_SEALED_KEY_LEN
}

impl ClusterState {
    /// Applies one command. Deterministic and total: never panics, and a rejected command
    /// leaves the state exactly as it was. Does not touch `last_applied`/`membership`.
    pub fn apply(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::RegisterNode { id, record } => {
                if self.revoked.contains(&id) {
                    return Err(Rejected::NodeRevoked(id));
                }
                if !valid_name(&record.name) {
                    return Err(Rejected::BadName);
                }
                if !valid_labels(&record.labels) {
                    return Err(Rejected::BadLabels);
                }
                let new = self.nodes.insert(id, record).is_none();
                Ok(Applied::NodeRegistered { new })
            }
            Command::SetCa(ca) => {
                if self.ca.is_some() {
                    return Err(Rejected::CaAlreadySet);
                }
                if !valid_ca(&ca) {
                    return Err(Rejected::BadCa);
                }
                self.ca = Some(ca);
                Ok(Applied::CaSet)
            }
            Command::RecordIssued { node, cert } => {
                if self.ca.is_none() {
                    return Err(Rejected::NoCa);
                }
                if self.revoked.contains(&node) {
                    return Err(Rejected::NodeRevoked(node));
                }
                if !self.nodes.contains_key(&node) {
                    return Err(Rejected::UnknownNode(node));
                }
                if cert.serial.is_empty()
                    || cert.serial.len() > MAX_SERIAL_LEN
                    || cert.not_after == 0
                {
                    return Err(Rejected::BadCert);
                }
                if let Some(recorded) = self.issued.get(&node) {
                    if cert.not_after < recorded.not_after {
                        return Err(Rejected::StaleCert {
                            not_after: cert.not_after,
                            recorded: recorded.not_after,
                        });
                    }
                }
                self.issued.insert(node, cert);
                Ok(Applied::IssuedRecorded)
            }
            Command::Revoke { node } => {
                if self.revoked.contains(&node) {
                    return Ok(Applied::Revoked { already: true });
                }
                if !self.nodes.contains_key(&node) {
                    return Err(Rejected::UnknownNode(node));
                }
                self.nodes.remove(&node);
                self.issued.remove(&node);
                self.availability.remove(&node);
                self.shut_down_tasks_of(&node);
                self.revoked.insert(node);
                Ok(Applied::Revoked { already: false })
            }
            Command::CreateService { service, now_ms } => self.create_service(service, now_ms),
            Command::CreateServiceV1 { service, now_ms } => {
                self.create_service(service.into(), now_ms)
            }
            Command::UpdateService {
                name,
                replicas,
                now_ms,
            } => {
                self.refuse_container_service(&name)?;
                self.update_service(name, replicas, now_ms)
            }
            Command::RemoveService { name, now_ms } => {
                self.refuse_container_service(&name)?;
                self.remove_service(name, now_ms)
            }
            Command::ApplyDecisions { decisions, now_ms } => {
                self.apply_decisions_cmd(decisions, now_ms)
            }
            Command::ReportTasks {
                node,
                reports,
                now_ms,
            } => self.report_tasks_cmd(node, reports, now_ms),
            Command::ForgetTasks { ids } => self.forget_tasks(ids),
            Command::SetAvailability { node, availability } => {
                self.set_availability(node, availability)
            }
            Command::CreateContainer { container, now_ms } => {
                self.create_container(container, now_ms)
            }
            Command::SetContainerRun {
                id,
                run,
                restart,
                now_ms,
            } => self.set_container_run(id, run, restart, now_ms),
            Command::RemoveContainer { id, force, now_ms } => {
                self.remove_container(id, force, now_ms)
            }
            Command::AddClient { name, client } => self.add_client(name, client),
            Command::RevokeClient { name } => self.revoke_client(name),
            Command::CreateNetwork { network, now_ms } => self.create_network(network, now_ms),
            Command::RemoveNetwork { id } => self.remove_network(id),
            Command::CreateNetworkedContainer {
                container,
                networks,
                now_ms,
            } => self.create_networked_container(container, networks, now_ms),
        }
    }

    /// The service of a container is changed through the container commands only.
    fn refuse_container_service(&self, service: &str) -> Result<(), Rejected> {
        match self.container_of_service(service) {
            Some(c) => Err(Rejected::ServiceOfContainer {
                service: service.to_string(),
                container: c.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Applies one Raft log entry: records it as last applied, stores a membership change,
    /// and runs a normal entry's command through [`Self::apply`].
    pub fn apply_entry(&mut self, entry: &Entry) -> Response {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => Ok(Applied::Nothing),
            EntryPayload::Normal(cmd) => self.apply(cmd.clone()),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                Ok(Applied::Nothing)
            }
        }
    }

    /// Whether `node` may hold a session: registered and not revoked.
    pub fn is_trusted(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node) && !self.revoked.contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn record(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            addr: "10.0.0.1:7481".parse().expect("addr"),
            labels: BTreeMap::new(),
        }
    }

    fn ca() -> CaRecord {
        CaRecord {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            sealed_key: vec![1, 2, 3],
        }
    }

    fn cert(not_after: u64) -> IssuedCert {
        IssuedCert {
            serial: vec![0x01, 0x02],
            not_after,
        }
    }

    /// Applies `cmd` expecting a rejection, and checks that nothing changed.
    fn rejected(state: &mut ClusterState, cmd: Command) -> Rejected {
        let before = state.clone();
        let err = state.apply(cmd).expect_err("command should be rejected");
        assert_eq!(*state, before, "a rejected command changed the state");
        err
    }

    #[test]
    fn register_then_update() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(Command::RegisterNode {
                id: id(1),
                record: record("pi-1")
            }),
            Ok(Applied::NodeRegistered { new: true })
        );
        let mut moved = record("pi-1");
        moved.addr = "10.0.0.9:7481".parse().expect("addr");
        moved.labels.insert("disk".into(), "ssd".into());
        assert_eq!(
            s.apply(Command::RegisterNode {
                id: id(1),
                record: moved.clone()
            }),
            Ok(Applied::NodeRegistered { new: false })
        );
        assert_eq!(s.nodes.get(&id(1)), Some(&moved));
        assert!(s.is_trusted(&id(1)));
    }

    #[test]
    fn invalid_records_are_rejected_without_change() {
        let mut s = ClusterState::default();
        s.apply(Command::RegisterNode {
            id: id(1),
            record: record("pi-1"),
        })
        .expect("register");
        for name in ["", "has space", "semi;colon", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(
                rejected(
                    &mut s,
                    Command::RegisterNode {
                        id: id(2),
                        record: record(name)
                    }
                ),
                Rejected::BadName
            );
        }
        let mut bad = record("pi-2");
        bad.labels.insert("".into(), "v".into());
        assert_eq!(
            rejected(
                &mut s,
                Command::RegisterNode {
                    id: id(2),
                    record: bad
                }
            ),
            Rejected::BadLabels
        );
        let mut bad = record("pi-2");
        bad.labels.insert("k".into(), "line\nbreak".into());
        assert_eq!(
            rejected(
                &mut s,
                Command::RegisterNode {
                    id: id(2),
                    record: bad
                }
            ),
            Rejected::BadLabels
        );
        let mut bad = record("pi-2");
        for i in 0..=MAX_LABELS {
            bad.labels.insert(format!("k{i}"), "v".into());
        }
        assert_eq!(
            rejected(
                &mut s,
                Command::RegisterNode {
                    id: id(2),
                    record: bad
                }
            ),
            Rejected::BadLabels
        );
        // An invalid update of a known node keeps the old record.
        assert_eq!(
            rejected(
                &mut s,
                Command::RegisterNode {
                    id: id(1),
                    record: record("")
                }
            ),
            Rejected::BadName
        );
    }

    #[test]
    fn ca_is_set_once() {
        let mut s = ClusterState::default();
        assert_eq!(
            rejected(
                &mut s,
                Command::SetCa(CaRecord {
                    cert_pem: "not pem".into(),
                    sealed_key: vec![1]
                })
            ),
            Rejected::BadCa
        );
        assert_eq!(
            rejected(
                &mut s,
                Command::SetCa(CaRecord {
                    sealed_key: vec![],
                    ..ca()
                })
            ),
            Rejected::BadCa
        );
        assert_eq!(s.apply(Command::SetCa(ca())), Ok(Applied::CaSet));
        let mut other = ca();
        other.sealed_key = vec![9; 8];
        assert_eq!(
            rejected(&mut s, Command::SetCa(other)),
            Rejected::CaAlreadySet
        );
        assert_eq!(s.ca, Some(ca()));
    }

    #[test]
    fn issued_certificates_need_ca_registration_and_move_forward() {
        let mut s = ClusterState::default();
        let issue = |n, t| Command::RecordIssued {
            node: id(n),
            cert: cert(t),
        };
        assert_eq!(rejected(&mut s, issue(1, 100)), Rejected::NoCa);
        s.apply(Command::SetCa(ca())).expect("ca");
        assert_eq!(
            rejected(&mut s, issue(1, 100)),
            Rejected::UnknownNode(id(1))
        );
        s.apply(Command::RegisterNode {
            id: id(1),
            record: record("pi-1"),
        })
        .expect("register");
        assert_eq!(
            rejected(
                &mut s,
                Command::RecordIssued {
                    node: id(1),
                    cert: IssuedCert {
                        serial: vec![],
                        not_after: 5
                    }
                }
            ),
            Rejected::BadCert
        );
        assert_eq!(
            rejected(
                &mut s,
                Command::RecordIssued {
                    node: id(1),
                    cert: IssuedCert {
                        serial: vec![1; 21],
                        not_after: 5
                    }
                }
            ),
            Rejected::BadCert
        );
        assert_eq!(rejected(&mut s, issue(1, 0)), Rejected::BadCert);
        assert_eq!(s.apply(issue(1, 100)), Ok(Applied::IssuedRecorded));
        assert_eq!(
            s.apply(issue(1, 200)),
            Ok(Applied::IssuedRecorded),
            "renewal"
        );
        assert_eq!(
            s.apply(issue(1, 200)),
            Ok(Applied::IssuedRecorded),
            "a retry of the same cert"
        );
        assert_eq!(
            rejected(&mut s, issue(1, 150)),
            Rejected::StaleCert {
                not_after: 150,
                recorded: 200
            }
        );
        assert_eq!(s.issued.get(&id(1)), Some(&cert(200)));
    }

    #[test]
    fn revoke_removes_and_bars_the_node() {
        let mut s = ClusterState::default();
        s.apply(Command::SetCa(ca())).expect("ca");
        assert_eq!(
            rejected(&mut s, Command::Revoke { node: id(1) }),
            Rejected::UnknownNode(id(1))
        );
        s.apply(Command::RegisterNode {
            id: id(1),
            record: record("pi-1"),
        })
        .expect("register");
        s.apply(Command::RecordIssued {
            node: id(1),
            cert: cert(100),
        })
        .expect("issue");
        assert_eq!(
            s.apply(Command::Revoke { node: id(1) }),
            Ok(Applied::Revoked { already: false })
        );
        assert!(!s.nodes.contains_key(&id(1)) && !s.issued.contains_key(&id(1)));
        assert!(!s.is_trusted(&id(1)));
        let before = s.clone();
        assert_eq!(
            s.apply(Command::Revoke { node: id(1) }),
            Ok(Applied::Revoked { already: true })
        );
        assert_eq!(s, before);
        assert_eq!(
            rejected(
                &mut s,
                Command::RegisterNode {
                    id: id(1),
                    record: record("pi-1")
                }
            ),
            Rejected::NodeRevoked(id(1))
        );
        assert_eq!(
            rejected(
                &mut s,
                Command::RecordIssued {
                    node: id(1),
                    cert: cert(300)
                }
            ),
            Rejected::NodeRevoked(id(1))
        );
    }

    /// A small deterministic generator (no `rand` needed for a pure test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn random_command(g: &mut Lcg) -> Command {
        let node = id((g.next() % 6) as u8);
        match g.next() % 5 {
            0 => Command::RegisterNode {
                id: node,
                record: record(["pi", "", "bad name", "node-7"][(g.next() % 4) as usize]),
            },
            1 => Command::SetCa(if g.next().is_multiple_of(2) {
                ca()
            } else {
                CaRecord {
                    cert_pem: String::new(),
                    sealed_key: vec![],
                }
            }),
            2 => Command::RecordIssued {
                node,
                cert: IssuedCert {
                    serial: vec![1; (g.next() % 23) as usize],
                    not_after: g.next() % 400,
                },
            },
            _ => Command::Revoke { node },
        }
    }

    #[test]
    fn any_command_sequence_is_total_deterministic_and_keeps_invariants() {
        for seed in 0..50 {
            let mut a = ClusterState::default();
            let mut b = ClusterState::default();
            let mut g = Lcg(seed);
            for _ in 0..300 {
                let cmd = random_command(&mut g);
                let before = a.clone();
                let ra = a.apply(cmd.clone());
                let rb = b.apply(cmd);
                assert_eq!(ra, rb);
                assert_eq!(a, b);
                if ra.is_err() {
                    assert_eq!(a, before);
                }
                assert!(
                    a.issued.keys().all(|n| a.nodes.contains_key(n)),
                    "issued only to registered nodes"
                );
                assert!(
                    a.revoked.iter().all(|n| !a.nodes.contains_key(n)),
                    "revoked nodes are gone"
                );
                assert!(
                    a.issued.is_empty() || a.ca.is_some(),
                    "no certificate without a CA"
                );
            }
        }
    }

    #[test]
    fn entries_record_last_applied_and_membership() {
        use openraft::entry::RaftEntry;
        use openraft::vote::RaftLeaderIdExt;

        use crate::types::Membership;
        use crate::types::RaftNodeId;

        let leader = openraft::impls::leader_id_std::LeaderId::<u64, RaftNodeId>::new_committed(
            3,
            RaftNodeId(id(1)),
        );
        let log_id = |index| LogId::new(leader, index);
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply_entry(&Entry::new_blank(log_id(1))),
            Ok(Applied::Nothing)
        );
        assert_eq!(s.last_applied, Some(log_id(1)));
        let members = Membership::new_with_defaults(vec![[RaftNodeId(id(1))].into()], []);
        s.apply_entry(&Entry::new_membership(log_id(2), members.clone()))
            .expect("membership");
        assert_eq!(s.membership.membership(), &members);
        assert_eq!(s.membership.log_id(), &Some(log_id(2)));
        let cmd = Command::RegisterNode {
            id: id(1),
            record: record("pi-1"),
        };
        assert_eq!(
            s.apply_entry(&Entry::new_normal(log_id(3), cmd)),
            Ok(Applied::NodeRegistered { new: true })
        );
        // A rejected command still advances last_applied: the entry was applied (as a no-op).
        let bad = Command::RegisterNode {
            id: id(2),
            record: record(""),
        };
        assert!(s.apply_entry(&Entry::new_normal(log_id(4), bad)).is_err());
        assert_eq!(s.last_applied, Some(log_id(4)));
    }
}
