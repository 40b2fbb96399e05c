//! The vocabulary of the engine port: what to run (`ContainerSpec`), who owns a container
//! (`Owner`, carried as labels), and what the engine reports (`ContainerState`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A task's id (`shoal_wire::TaskId`, which the scheduler uses too).
pub use shoal_wire::TaskId;

/// Label holding the task id (decimal).
pub const LABEL_TASK: &str = "shoal.task";
/// Label holding the service name.
pub const LABEL_SERVICE: &str = "shoal.service";
/// Label holding the id of the node whose agent owns the container. Several agents may
/// share one engine (tests, a laptop running three nodes): this label tells them apart.
pub const LABEL_NODE: &str = "shoal.node";

/// Longest image reference accepted (Docker's own limit on a name is 255 per component;
/// this bounds what a spec can make us send).
pub const IMAGE_LEN_MAX: usize = 512;
/// Most command words, environment entries and published ports in one spec.
pub const SPEC_ITEMS_MAX: usize = 256;
/// Longest stop grace period (10 minutes): what a service may ask for between SIGTERM and
/// SIGKILL. Bounds how long one stop can hold its node's agent.
pub const STOP_GRACE_MS_MAX: u64 = 10 * 60 * 1000;
/// The stop grace period of a spec that does not set one (Docker's own default).
pub const STOP_GRACE_MS_DEFAULT: u64 = 10_000;

/// The engine's id of a container (Docker's 64-hex id, or `fake-N`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Docker ids are long; 12 characters is what `docker ps` shows.
        let short: String = self.0.chars().take(12).collect();
        f.write_str(&short)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `host_port` on every host address forwards to `container_port` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// What to run: the part of a service that the engine needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    /// Command and arguments; empty = the image's default command.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Published ports. With none, the container gets no network at all (`none`).
    pub ports: Vec<PortMapping>,
    /// CPU limit in thousandths of a CPU; 0 = no limit.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 = no limit.
    pub memory_bytes: u64,
    /// How long a stop waits after SIGTERM before SIGKILL, in ms (at most
    /// [`STOP_GRACE_MS_MAX`]); `None` = the engine's default. Docker counts whole seconds,
    /// so it is rounded up there (`StopTimeout`, set at create).
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
}

impl ContainerSpec {
    /// The stop grace period in whole seconds, rounded up, as Docker's `StopTimeout` takes it.
    pub fn stop_grace_secs(&self) -> Option<u64> {
        self.stop_grace_ms.map(|ms| ms.min(STOP_GRACE_MS_MAX).div_ceil(1000))
    }
}

/// Who a container belongs to; written as the `shoal.*` labels at creation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub node: String,
    pub service: String,
    pub task: TaskId,
}

impl Owner {
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NODE.to_string(), self.node.clone()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
            (LABEL_TASK.to_string(), self.task.to_string()),
        ])
    }

    /// Reads the owner back from a container's labels; `None` if any label is missing or
    /// the task id is not a number (not a shoal container, or tampered with).
    pub fn from_labels<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> Option<Owner> {
        let node = get(LABEL_NODE)?.to_string();
        let service = get(LABEL_SERVICE)?.to_string();
        let task = get(LABEL_TASK)?.parse().ok()?;
        Some(Owner { node, service, task })
    }

    /// The container name: unique per (node, task) on one engine, so the engine itself
    /// refuses a second container for a task (409 conflict).
    pub fn container_name(&self) -> String {
        let node: String = self.node.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(32).collect();
        format!("shoal-{node}-{}", self.task)
    }
}

/// The label that marks an engine network as shoal's (its value: the network's cluster id).
pub const LABEL_NETWORK: &str = "shoal.network";
/// Longest network name or alias sent to an engine, in bytes.
pub const NETWORK_NAME_LEN_MAX: usize = 128;
/// Most aliases of a container on its network.
pub const NETWORK_ALIASES_MAX: usize = 16;

/// The network a container is attached to: a bridge on this engine, created (labelled
/// [`LABEL_NETWORK`] = `id`) when it is missing, and the container's aliases on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkJoin {
    /// The network's name on the engine (the cluster's name for it).
    pub name: String,
    /// The cluster's id of the network.
    pub id: String,
    pub aliases: Vec<String>,
}

/// A network of shoal's on an engine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EngineNetwork {
    pub name: String,
    /// The cluster's id ([`LABEL_NETWORK`]).
    pub id: String,
}

/// A request to create one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub owner: Owner,
    pub spec: ContainerSpec,
    /// `None`: no network when nothing is published, else the engine's default bridge.
    #[serde(default)]
    pub network: Option<NetworkJoin>,
}

impl CreateRequest {
    /// Checks the limits on a spec before anything is sent to an engine.
    pub fn validate(&self) -> Result<(), crate::EngineError> {
        let bad = |what: String| Err(crate::EngineError::InvalidSpec(what));
        if self.spec.image.is_empty() || self.spec.image.len() > IMAGE_LEN_MAX {
            return bad(format!("image name must be 1..={IMAGE_LEN_MAX} bytes"));
        }
        if self.spec.command.len() > SPEC_ITEMS_MAX || self.spec.env.len() > SPEC_ITEMS_MAX || self.spec.ports.len() > SPEC_ITEMS_MAX {
            return bad(format!("at most {SPEC_ITEMS_MAX} command words, env entries and ports"));
        }
        if let Some(k) = self.spec.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return bad(format!("bad environment variable name {k:?}"));
        }
        if let Some(p) = self.spec.ports.iter().find(|p| p.host_port == 0 || p.container_port == 0) {
            return bad(format!("port 0 in {}:{}", p.host_port, p.container_port));
        }
        if self.spec.stop_grace_ms.is_some_and(|ms| ms > STOP_GRACE_MS_MAX) {
            return bad(format!("the stop grace period must be at most {} s", STOP_GRACE_MS_MAX / 1000));
        }
        if let Some(n) = &self.network {
            let name_ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= NETWORK_NAME_LEN_MAX
                    && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            };
            if !name_ok(&n.name) || !name_ok(&n.id) || matches!(n.name.as_str(), "bridge" | "host" | "none" | "default") {
                return bad(format!("bad network {:?}", n.name));
            }
            if n.aliases.len() > NETWORK_ALIASES_MAX || !n.aliases.iter().all(|a| name_ok(a)) {
                return bad(format!("at most {NETWORK_ALIASES_MAX} network aliases of [a-zA-Z0-9][a-zA-Z0-9_.-]"));
            }
        }
        Ok(())
    }
}

/// What an engine says about one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created and never started (or its start has not been attempted yet).
    Created,
    /// Started, process not up yet (the fake engine's start delay; Docker's `restarting`).
    Starting,
    Running,
    /// The process ended by itself (or was stopped) with this exit code.
    Exited { code: i64 },
    /// The engine could not run it (start error, dead, killed for memory).
    Failed { reason: String },
    /// No such container.
    Missing,
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerState::Created => f.write_str("created"),
            ContainerState::Starting => f.write_str("starting"),
            ContainerState::Running => f.write_str("running"),
            ContainerState::Exited { code } => write!(f, "exited ({code})"),
            ContainerState::Failed { reason } => write!(f, "failed: {reason}"),
            ContainerState::Missing => f.write_str("missing"),
        }
    }
}

/// One container as listed: its id, name, owner (from labels) and state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: ContainerId,
    pub name: String,
    pub owner: Owner,
    pub state: ContainerState,
}

/// Which containers to list. `node` is mandatory: an agent only ever looks at its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    pub node: String,
    pub service: Option<String>,
    pub task: Option<TaskId>,
}

impl LabelFilter {
    pub fn node(node: impl Into<String>) -> Self {
        Self { node: node.into(), service: None, task: None }
    }

    pub fn matches(&self, owner: &Owner) -> bool {
        owner.node == self.node
            && self.service.as_ref().is_none_or(|s| *s == owner.service)
            && self.task.is_none_or(|t| t == owner.task)
    }

    /// The filters as `label=value` strings (Docker's `label` filter; all must match).
    pub fn label_pairs(&self) -> Vec<String> {
        let mut out = vec![format!("{LABEL_NODE}={}", self.node)];
        if let Some(s) = &self.service {
            out.push(format!("{LABEL_SERVICE}={s}"));
        }
        if let Some(t) = self.task {
            out.push(format!("{LABEL_TASK}={t}"));
        }
        out
    }
}
