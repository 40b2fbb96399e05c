//! The scheduler: a pure function from the cluster's state (nodes with their health,
//! services, tasks) to decisions the leader commits through Raft.
//!
//! Rules:
//! - spread: a slot goes to the eligible node with the fewest tasks of this service, then
//!   the fewest tasks overall, then the lowest node id (deterministic);
//! - eligible = alive (not suspect, down or left), availability active, engine healthy,
//!   every constraint satisfied, enough unreserved CPU and memory;
//! - host ports are a resource: a node never gets two live tasks publishing the same host
//!   port and protocol (whatever their services); a slot that finds its ports taken on
//!   every eligible node is `Pending` with a reason naming the port;
//! - a slot that cannot be placed is reported `Pending` with the reason, per node class;
//! - tasks on a node that has been down (or left) longer than `down_grace_ms`, or that is
//!   drained, or gone, are shut down and their slot placed anew; a slot is never given a
//!   second live task while its first is live (the old one is shut down in the same batch);
//! - a service marked `stays_with_node` (a Docker API container without restart policy
//!   `always`) keeps its task on a down or departed node for good: it is lost with its node,
//!   not moved (it moves only when the node is removed or drained);
//! - scale-down removes the highest slots; removing a service shuts all its tasks down;
//! - two kept tasks on one node that publish the same host port (a state written before
//!   ports were scheduled) are reduced to one: the later is shut down (`PortConflict`)
//!   and its slot placed anew.

use crate::constraint::{Constraint, NodeFields};
use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use shoal_wire::TaskId;

/// How membership sees a node, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Alive,
    Suspect,
    Down { since_ms: u64 },
    Left { since_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    Active,
    Drain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub hostname: String,
    pub arch: String,
    pub labels: BTreeMap<String, String>,
    pub health: Health,
    pub availability: Availability,
    pub engine_ok: bool,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl NodeFields for NodeView {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
    fn hostname(&self) -> &str {
        &self.hostname
    }
    fn arch(&self) -> &str {
        &self.arch
    }
    fn id_text(&self) -> String {
        self.id.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Replicated(u32),
    Global,
}

/// The transport protocol of a published host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// A host port a service's tasks publish on their node: at most one live task per node may
/// hold each (port, protocol). TCP and UDP of the same number are different resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub port: u16,
    pub protocol: PortProtocol,
}

impl HostPort {
    pub fn tcp(port: u16) -> Self {
        Self { port, protocol: PortProtocol::Tcp }
    }
    pub fn udp(port: u16) -> Self {
        Self { port, protocol: PortProtocol::Udp }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub mode: Mode,
    pub constraints: Vec<Constraint>,
    pub reserve_cpu_millis: u64,
    pub reserve_memory_bytes: u64,
    /// The host ports every task of the service publishes (each at most once).
    pub host_ports: Vec<HostPort>,
    /// Its tasks stay with their node when the node goes down or leaves (a container of the
    /// Docker API without restart policy `always`, as classic swarm kept it): they are not
    /// placed elsewhere after the grace period, only when the node is gone (removed or
    /// revoked) or drained.
    #[serde(default)]
    pub stays_with_node: bool,
    /// Services of one group run on one node (classic swarm's rule for containers that
    /// share a network, so names resolve between them): a task of a group that already
    /// has a task kept or placed somewhere goes to that node, or waits. `None`: spread.
    #[serde(default)]
    pub group: Option<String>,
}

/// The node a task of `svc` must go to: where its group already runs, if it does
/// ([`ServiceView::group`]). `groups` holds the first node of each group seen in a pass.
pub fn group_pin(groups: &BTreeMap<String, NodeId>, svc: &ServiceView) -> Option<NodeId> {
    svc.group.as_ref().and_then(|g| groups.get(g)).copied()
}

fn note_group(groups: &mut BTreeMap<String, NodeId>, svc: &ServiceView, node: NodeId) {
    if let Some(g) = &svc.group {
        groups.entry(g.clone()).or_insert(node);
    }
}

/// Which replica a task is: an index for replicated services, the node for global ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    Index(u32),
    Node(NodeId),
}

/// A task that is still meant to run (desired state running). Tasks already told to shut
/// down are not passed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub service: String,
    pub slot: Slot,
    pub node: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShutdownReason {
    ServiceRemoved,
    ScaledDown,
    NodeDown,
    NodeDrained,
    NodeGone,
    NotEligible,
    Duplicate,
    /// Another kept task on the same node publishes one of its host ports.
    PortConflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Create a task for `slot` of `service` on `node`.
    Place { service: String, slot: Slot, node: NodeId },
    /// `slot` of `service` could not be placed.
    Pending { service: String, slot: Slot, reason: String },
    /// Set the task's desired state to shutdown.
    Shutdown { task: TaskId, reason: ShutdownReason },
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// How long a node may be down before its tasks are placed elsewhere.
    pub down_grace_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { down_grace_ms: 5_000 }
    }
}

/// Per-node bookkeeping during one scheduling pass.
#[derive(Default)]
struct Load {
    tasks: u64,
    cpu_millis: u64,
    memory_bytes: u64,
    /// Host ports held by the tasks kept or placed on the node so far in this pass.
    ports: BTreeSet<HostPort>,
}

impl Load {
    /// The first of `svc`'s host ports that a task on this node already holds.
    fn port_taken(&self, svc: &ServiceView) -> Option<HostPort> {
        if self.ports.is_empty() {
            return None;
        }
        svc.host_ports.iter().copied().find(|p| self.ports.contains(p))
    }
}

/// Why a node cannot take a task; counted per class for the pending reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Reject {
    Unhealthy,
    Drained,
    NoEngine,
    Constraint(String),
    Port(HostPort),
    Cpu,
    Memory,
}

impl Reject {
    fn describe(&self) -> String {
        match self {
            Reject::Unhealthy => "not alive".into(),
            Reject::Drained => "drained".into(),
            Reject::NoEngine => "container engine unavailable".into(),
            Reject::Constraint(c) => format!("constraint {c} not met"),
            Reject::Port(p) => format!("host port {p} taken"),
            Reject::Cpu => "insufficient CPU".into(),
            Reject::Memory => "insufficient memory".into(),
        }
    }
}

fn static_reject(node: &NodeView, service: &ServiceView) -> Option<Reject> {
    if node.health != Health::Alive {
        return Some(Reject::Unhealthy);
    }
    if node.availability == Availability::Drain {
        return Some(Reject::Drained);
    }
    if !node.engine_ok {
        return Some(Reject::NoEngine);
    }
    service.constraints.iter().find(|c| !c.matches(node)).map(|c| Reject::Constraint(c.to_string()))
}

/// Whether `node`, carrying `load`, has room for one more task of `svc`: its host ports
/// free, and the CPU and memory the service reserves.
fn fits(load: &Load, node: &NodeView, svc: &ServiceView) -> Result<(), Reject> {
    if let Some(p) = load.port_taken(svc) {
        return Err(Reject::Port(p));
    }
    if svc.reserve_cpu_millis > 0 && load.cpu_millis + svc.reserve_cpu_millis > node.cpu_millis {
        return Err(Reject::Cpu);
    }
    if svc.reserve_memory_bytes > 0 && load.memory_bytes + svc.reserve_memory_bytes > node.memory_bytes {
        return Err(Reject::Memory);
    }
    Ok(())
}

fn gone_for(node: Option<&NodeView>, svc: &ServiceView, now_ms: u64, cfg: &SchedulerConfig) -> Option<ShutdownReason> {
    match node {
        None => Some(ShutdownReason::NodeGone),
        Some(n) => match n.health {
            Health::Down { since_ms } | Health::Left { since_ms }
                if !svc.stays_with_node && now_ms.saturating_sub(since_ms) >= cfg.down_grace_ms =>
            {
                Some(ShutdownReason::NodeDown)
            }
            _ if n.availability == Availability::Drain => Some(ShutdownReason::NodeDrained),
            _ => None,
        },
    }
}

/// A task with its service's index in `services` (`usize::MAX`: the service is gone) and
/// its node's index in `nodes` (`None`: not a known node), looked up once per pass.
#[derive(Clone, Copy)]
struct Placed<'a> {
    service: usize,
    node: Option<usize>,
    task: &'a TaskView,
}

/// One scheduling pass. Deterministic: same input, same decisions, in the same order.
pub fn schedule(cfg: &SchedulerConfig, now_ms: u64, nodes: &[NodeView], services: &[ServiceView], tasks: &[TaskView]) -> Vec<Decision> {
    let mut out = Vec::new();
    // Nodes and services by index: each task's service and node are looked up once, and the
    // rest of the pass reads arrays. (Ids and names are unique in the state that feeds
    // this; were a service name repeated, its first service would get the tasks.)
    let pos: BTreeMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut service_ix: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        service_ix.entry(s.name.as_str()).or_insert(i);
    }

    // Tasks grouped by service then slot (one sort on integers; each slot's tasks by id);
    // tasks of a service that no longer exists (sorted last) are shut down right away, in
    // id order.
    let mut ordered: Vec<Placed<'_>> = tasks
        .iter()
        .map(|t| Placed {
            service: service_ix.get(t.service.as_str()).copied().unwrap_or(usize::MAX),
            node: pos.get(&t.node).copied(),
            task: t,
        })
        .collect();
    // Unstable is exact here: the id makes every key unique.
    ordered.sort_unstable_by_key(|p| (p.service, p.task.slot, p.task.id));
    let mut orphans: Vec<TaskId> = Vec::new();
    let mut by_service: Vec<Vec<(Slot, &[Placed<'_>])>> = vec![Vec::new(); services.len()];
    for live in ordered.chunk_by(|a, b| a.service == b.service && a.task.slot == b.task.slot) {
        let first = &live[0];
        match by_service.get_mut(first.service) {
            Some(slots) => slots.push((first.task.slot, live)),
            None => orphans.extend(live.iter().map(|p| p.task.id)),
        }
    }
    orphans.sort_unstable();
    out.extend(orphans.into_iter().map(|task| Decision::Shutdown { task, reason: ShutdownReason::ServiceRemoved }));

    // Current load of every node from the tasks that stay (and, per node, the host ports
    // they hold: built once per pass, so a candidate check is a few set lookups). Indexed
    // like `nodes`, so the placement scan reads arrays, not maps.
    let mut load: Vec<Load> = nodes.iter().map(|_| Load::default()).collect();
    // Per service (by its index in `services`): the nodes (indices) of its tasks so far.
    let mut on_nodes: Vec<Vec<usize>> = vec![Vec::new(); services.len()];
    let add_load = |load: &mut Vec<Load>, on_nodes: &mut Vec<Vec<usize>>, si: usize, node: Option<usize>, svc: &ServiceView| {
        if let Some((i, l)) = node.and_then(|i| Some((i, load.get_mut(i)?))) {
            l.tasks += 1;
            on_nodes[si].push(i);
            l.cpu_millis += svc.reserve_cpu_millis;
            l.memory_bytes += svc.reserve_memory_bytes;
            l.ports.extend(svc.host_ports.iter().copied());
        }
    };
    let node_at = |i: Option<usize>| i.and_then(|i| nodes.get(i));

    // First pass: decide which existing tasks stay, so the load is known before placing.
    let mut groups: BTreeMap<String, NodeId> = BTreeMap::new();
    let mut missing: Vec<(usize, &ServiceView, Slot)> = Vec::new();
    for (si, svc) in services.iter().enumerate() {
        let slots = std::mem::take(&mut by_service[si]);
        let wanted: Vec<Slot> = match svc.mode {
            Mode::Replicated(n) => (1..=n).map(Slot::Index).collect(),
            Mode::Global => nodes
                .iter()
                .filter(|n| static_reject(n, svc).is_none())
                .map(|n| Slot::Node(n.id))
                .collect(),
        };
        let wanted_set: BTreeSet<Slot> = match svc.mode {
            Mode::Replicated(_) => BTreeSet::new(),
            Mode::Global => wanted.iter().copied().collect(),
        };
        let is_wanted = |slot: &Slot| match (svc.mode, slot) {
            (Mode::Replicated(n), Slot::Index(k)) => (1..=n).contains(k),
            (Mode::Replicated(_), Slot::Node(_)) => false,
            (Mode::Global, _) => wanted_set.contains(slot),
        };
        for &(slot, live) in &slots {
            if !is_wanted(&slot) {
                let reason = match slot {
                    Slot::Index(_) => ShutdownReason::ScaledDown,
                    Slot::Node(_) => match svc.mode {
                        Mode::Global => ShutdownReason::NotEligible,
                        Mode::Replicated(_) => ShutdownReason::ScaledDown,
                    },
                };
                // A global slot whose node is down within grace keeps its task for now.
                let keep_in_grace = matches!((svc.mode, slot), (Mode::Global, Slot::Node(_)))
                    && live.iter().all(|p| node_at(p.node).is_some_and(|n| matches!(n.health, Health::Suspect | Health::Down { .. } | Health::Left { .. })) && gone_for(node_at(p.node), svc, now_ms, cfg).is_none());
                if keep_in_grace {
                    for p in live {
                        add_load(&mut load, &mut on_nodes, si, p.node, svc);
                        note_group(&mut groups, svc, p.task.node);
                    }
                    continue;
                }
                for p in live {
                    out.push(Decision::Shutdown { task: p.task.id, reason });
                }
            }
        }
        for slot in wanted {
            let live: &[Placed<'_>] = slots.binary_search_by_key(&slot, |(s, _)| *s).map_or(&[], |k| slots[k].1);
            let mut kept = false;
            for p in live {
                let t = p.task;
                if let Some(reason) = gone_for(node_at(p.node), svc, now_ms, cfg) {
                    out.push(Decision::Shutdown { task: t.id, reason });
                } else if kept {
                    out.push(Decision::Shutdown { task: t.id, reason: ShutdownReason::Duplicate });
                } else if p.node.and_then(|i| load[i].port_taken(svc)).is_some() {
                    out.push(Decision::Shutdown { task: t.id, reason: ShutdownReason::PortConflict });
                } else {
                    kept = true;
                    add_load(&mut load, &mut on_nodes, si, p.node, svc);
                    note_group(&mut groups, svc, t.node);
                }
            }
            if !kept {
                missing.push((si, svc, slot));
            }
        }
    }

    // Second pass: place every missing slot. Missing slots come service by service: the
    // static checks and the service's task count per node are computed once per service,
    // and a candidate costs a few array reads. Why nodes were refused is only counted when
    // none fits (a pending slot), by a second look at the same candidates.
    let mut current: Option<(&ServiceView, Vec<Option<Reject>>, Vec<u64>)> = None;
    for (si, svc, slot) in missing {
        if current.as_ref().is_none_or(|(s, ..)| !std::ptr::eq(*s, svc)) {
            let statics = nodes.iter().map(|n| static_reject(n, svc)).collect();
            let mut counts = vec![0u64; nodes.len()];
            on_nodes[si].iter().for_each(|&i| counts[i] += 1);
            current = Some((svc, statics, counts));
        }
        let Some((_, statics, counts)) = current.as_mut() else { continue };
        let pin = group_pin(&groups, svc);
        let only = match slot {
            Slot::Node(target) => Some(target),
            Slot::Index(_) => pin,
        };
        let candidates = match only {
            Some(id) => pos.get(&id).map_or(0..0, |&i| i..i + 1),
            None => 0..nodes.len(),
        };
        let mut best: Option<((u64, u64, NodeId), usize)> = None;
        for i in candidates.clone() {
            if statics[i].is_some() || fits(&load[i], &nodes[i], svc).is_err() {
                continue;
            }
            let key = (counts[i], load[i].tasks, nodes[i].id);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, i));
            }
        }
        let best = best.map(|(_, i)| {
            counts[i] += 1;
            i
        });
        let mut rejects: BTreeMap<Reject, u64> = BTreeMap::new();
        if best.is_none() {
            for i in candidates {
                let reject = match &statics[i] {
                    Some(r) => r.clone(),
                    None => match fits(&load[i], &nodes[i], svc) {
                        Err(r) => r,
                        Ok(()) => continue,
                    },
                };
                *rejects.entry(reject).or_insert(0) += 1;
            }
        }
        match best {
            Some(i) => {
                let node = nodes[i].id;
                add_load(&mut load, &mut on_nodes, si, Some(i), svc);
                note_group(&mut groups, svc, node);
                out.push(Decision::Place { service: svc.name.clone(), slot, node });
            }
            None => {
                let considered = match (slot, pin) {
                    (Slot::Node(_), _) | (Slot::Index(_), Some(_)) => 1,
                    (Slot::Index(_), None) => nodes.len(),
                };
                let detail: Vec<String> = rejects.iter().map(|(r, n)| format!("{n} {}", r.describe())).collect();
                let ports: BTreeSet<HostPort> = rejects.keys().filter_map(|r| if let Reject::Port(p) = r { Some(*p) } else { None }).collect();
                // The ports are the blocker if every node that passes the static checks
                // (health, drain, engine, constraints) has one of them taken.
                let port_bound = !ports.is_empty() && !rejects.keys().any(|r| matches!(r, Reject::Cpu | Reject::Memory));
                let reason = if considered == 0 {
                    "no nodes in the cluster".to_string()
                } else if port_bound {
                    let list: Vec<String> = ports.iter().map(HostPort::to_string).collect();
                    let (what, verb) = if list.len() == 1 { ("host port", "is") } else { ("host ports", "are") };
                    let taken: u64 = rejects.iter().filter(|(r, _)| matches!(r, Reject::Port(_))).map(|(_, n)| n).sum();
                    let others: Vec<&String> = rejects.keys().zip(&detail).filter(|(r, _)| !matches!(r, Reject::Port(_))).map(|(_, d)| d).collect();
                    let rest = others.iter().map(|d| format!("; {d}")).collect::<String>();
                    match slot {
                        Slot::Node(_) => format!("{what} {} {verb} taken on its node", list.join(", ")),
                        Slot::Index(_) => format!("{what} {} {verb} taken on every eligible node ({taken}/{considered}{rest})", list.join(", ")),
                    }
                } else {
                    format!("no suitable node (0/{considered}): {}", detail.join(", "))
                };
                let reason = match (pin, &svc.group) {
                    (Some(node), Some(group)) if matches!(slot, Slot::Index(_)) => {
                        format!("kept on node {} with the other containers of network {group}: {reason}", node.short())
                    }
                    _ => reason,
                };
                out.push(Decision::Pending { service: svc.name.clone(), slot, reason });
            }
        }
    }
    out
}
