//! Networks of the Docker API, as cluster objects (`docker network create`, compose's
//! `P_default`).
//!
//! A network is a [`NetworkRecord`] (a stable 64-hex id, a name unique across the
//! cluster, its driver and labels). It is not created on any engine when it is created
//! here: a node creates it in its own engine (a bridge labelled as shoal's) just before it
//! starts a container attached to it, and removes it from its engine once the cluster no
//! longer has it. Containers name their networks in [`NetworkAttachment`]s (network id and
//! aliases); the scheduler keeps the containers of one network on one node (see
//! `shoal_cluster::scheduler::ServiceView::group`), since shoal has no cross-node network
//! yet.
//!
//! Every rule is checked before anything changes: a rejected command changes nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use super::valid_container_id;
use super::Applied;
use super::ClusterState;
use super::ContainerDef;
use super::Rejected;
use super::Response;

/// Most networks in the cluster.
pub const MAX_NETWORKS: usize = 256;
/// Longest network name, in bytes.
pub const MAX_NETWORK_NAME_LEN: usize = 128;
/// Most networks one container is attached to (today: one, its `NetworkMode`).
pub const MAX_CONTAINER_NETWORKS: usize = 1;
/// Most aliases of a container on one network.
pub const MAX_ALIASES: usize = 16;
/// The only driver: a bridge on the node that runs the containers.
pub const BRIDGE_DRIVER: &str = "bridge";
/// Names Docker keeps for its own networks (and `default`, which means the bridge).
pub const RESERVED_NETWORK_NAMES: [&str; 4] = ["bridge", "host", "none", "default"];

/// A network of the Docker API, as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// 64 lowercase hex digits.
    pub id: String,
    pub name: String,
    /// Always [`BRIDGE_DRIVER`] today.
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub attachable: bool,
    pub created_ms: u64,
}

/// What `CreateNetwork` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub attachable: bool,
}

/// A container's place on a network: the network's id and the container's aliases there
/// (names other containers of the network resolve to it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network: String,
    pub aliases: Vec<String>,
}

/// Docker's rule for network names (as for containers, one character allowed), at most
/// [`MAX_NETWORK_NAME_LEN`] bytes.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= MAX_NETWORK_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A network alias: a DNS name, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes.
pub fn valid_alias(alias: &str) -> bool {
    valid_network_name(alias)
}

impl ClusterState {
    /// The network with this id, or else this name.
    pub fn network(&self, key: &str) -> Option<&NetworkRecord> {
        self.networks
            .get(key)
            .or_else(|| self.networks.values().find(|n| n.name == key))
    }

    /// The names of the containers attached to network `id`, sorted.
    pub fn containers_on_network(&self, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .containers
            .values()
            .filter(|c| c.networks.iter().any(|a| a.network == id))
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        names
    }

    pub(super) fn create_network(&mut self, def: NetworkDef, now_ms: u64) -> Response {
        if !valid_container_id(&def.id) {
            return Err(Rejected::BadNetwork("a network id is 64 lowercase hex digits".into()));
        }
        if self.networks.contains_key(&def.id) {
            return Err(Rejected::BadNetwork("the network id is already in use".into()));
        }
        if !valid_network_name(&def.name) {
            return Err(Rejected::BadNetwork(format!(
                "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most {MAX_NETWORK_NAME_LEN} characters",
                super::clip_text(&def.name, MAX_NETWORK_NAME_LEN + 1)
            )));
        }
        if RESERVED_NETWORK_NAMES.contains(&def.name.as_str()) {
            return Err(Rejected::BadNetwork(format!(
                "{} is a pre-defined network and cannot be created",
                def.name
            )));
        }
        if self.network(&def.name).is_some() {
            return Err(Rejected::NetworkNameInUse(def.name));
        }
        if def.driver != BRIDGE_DRIVER {
            return Err(Rejected::BadNetwork(format!(
                "driver {:?} is not supported: shoal's networks are bridges on the node that runs their containers",
                super::clip_text(&def.driver, 64)
            )));
        }
        if !super::containers::valid_labels(&def.labels) {
            return Err(Rejected::BadContainerLabels);
        }
        if self.networks.len() >= MAX_NETWORKS {
            return Err(Rejected::BadNetwork(format!(
                "the cluster already has {MAX_NETWORKS} networks, its limit; remove some first"
            )));
        }
        self.networks.insert(
            def.id.clone(),
            NetworkRecord {
                id: def.id,
                name: def.name,
                driver: def.driver,
                labels: def.labels,
                attachable: def.attachable,
                created_ms: now_ms,
            },
        );
        Ok(Applied::NetworkCreated)
    }

    pub(super) fn remove_network(&mut self, id: String) -> Response {
        let Some(n) = self.networks.get(&id) else {
            return Err(Rejected::UnknownNetwork(id));
        };
        let users = self.containers_on_network(&n.id);
        if !users.is_empty() {
            return Err(Rejected::NetworkInUse {
                network: n.name.clone(),
                containers: users.join(", "),
            });
        }
        self.networks.remove(&id);
        Ok(Applied::NetworkRemoved)
    }

    /// `CreateContainer` with the container's networks: each must exist, aliases valid.
    pub(super) fn create_networked_container(
        &mut self,
        def: ContainerDef,
        networks: Vec<NetworkAttachment>,
        now_ms: u64,
    ) -> Response {
        if networks.len() > MAX_CONTAINER_NETWORKS {
            return Err(Rejected::BadNetwork(format!(
                "a container is attached to at most {MAX_CONTAINER_NETWORKS} network"
            )));
        }
        for a in &networks {
            if !self.networks.contains_key(&a.network) {
                return Err(Rejected::UnknownNetwork(a.network.clone()));
            }
            if a.aliases.len() > MAX_ALIASES || !a.aliases.iter().all(|x| valid_alias(x)) {
                return Err(Rejected::BadNetwork(format!(
                    "at most {MAX_ALIASES} aliases of [a-zA-Z0-9][a-zA-Z0-9_.-], at most {MAX_NETWORK_NAME_LEN} characters each"
                )));
            }
        }
        let id = def.id.clone();
        let applied = self.create_container(def, now_ms)?;
        if let Some(c) = self.containers.get_mut(&id) {
            c.networks = networks;
        }
        Ok(applied)
    }

    /// The network a service's tasks are kept together on: the first network of the
    /// container the service runs, if any.
    pub fn service_group(&self, service: &str) -> Option<String> {
        self.container_of_service(service)
            .and_then(|c| c.networks.first())
            .map(|a| a.network.clone())
    }

    /// The network the container a service runs joins on its node, with its aliases.
    pub fn network_join(&self, service: &str) -> Option<shoal_engine::NetworkJoin> {
        let c = self.container_of_service(service)?;
        let a = c.networks.first()?;
        let n = self.networks.get(&a.network)?;
        Some(shoal_engine::NetworkJoin {
            name: n.name.clone(),
            id: n.id.clone(),
            aliases: a.aliases.clone(),
        })
    }
}
