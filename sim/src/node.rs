//! One simulated machine: its permanent identity (node id, address, secret) and, while it
//! runs, the membership core of its current boot.

use crate::rng::{stream, Stream};
use rand::rngs::StdRng;
use shoal_discovery::membership::Effect;
use shoal_discovery::{ClusterId, JoinSecret, MemberView, Membership, MembershipConfig, NodeFacts, PeerHint, ShoalId};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Gossip port every simulated node uses (each has its own address).
pub(crate) const GOSSIP_PORT: u16 = 7946;

pub(crate) type Core = Membership<StdRng>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not booted yet (a late joiner, or the intruder before its time).
    Waiting,
    Running,
    /// Lost power; boots again later.
    Crashed,
    /// Leaving gracefully: still sends and receives until its leave is acknowledged.
    Leaving,
    /// Left gracefully; the process has exited.
    Left,
}

pub(crate) struct Slot {
    /// `n0`, `n1`, ... or `intruder`: used in the trace and in messages.
    pub label: String,
    pub node: NodeId,
    pub addr: SocketAddr,
    pub honest: bool,
    pub secret: JoinSecret,
    /// The cluster id put in this node's mDNS announcement (the intruder may spoof it).
    pub announced_cluster: ClusterId,
    /// `--join` seeds (the intruder gets every honest address: it sniffed them).
    pub seed_addrs: Vec<SocketAddr>,
    /// Peers the last process knew, kept "on disk" across restarts (see `known_peers`).
    pub remembered_peers: Vec<SocketAddr>,
    /// Boots so far; the current boot's generation is `ShoalId::first_bump(boots)`.
    pub boots: u16,
    /// Grows on every boot and every stop; timers and datagrams carry it so that those of a
    /// previous life are dropped.
    pub epoch: u32,
    pub status: Status,
    pub core: Option<Core>,
}

/// The address of slot `i`: `10.0.x.y`, with the intruder at `10.255.0.1`.
pub(crate) fn slot_addr(i: usize, honest: bool) -> SocketAddr {
    let ip = if honest {
        Ipv4Addr::new(10, (i / 250 / 250) as u8, (i / 250 % 250) as u8, (i % 250 + 1) as u8)
    } else {
        Ipv4Addr::new(10, 255, 0, 1)
    };
    SocketAddr::V4(SocketAddrV4::new(ip, GOSSIP_PORT))
}

impl Slot {
    pub(crate) fn new(label: String, node: NodeId, addr: SocketAddr, honest: bool, secret: JoinSecret, announced_cluster: ClusterId) -> Self {
        Self {
            label,
            node,
            addr,
            honest,
            secret,
            announced_cluster,
            seed_addrs: Vec::new(),
            remembered_peers: Vec::new(),
            boots: 0,
            epoch: 0,
            status: Status::Waiting,
            core: None,
        }
    }

    /// A member of the cluster: running and not leaving.
    pub(crate) fn running(&self) -> bool {
        self.status == Status::Running
    }

    /// The process exists (it may be finishing a leave).
    pub(crate) fn process_up(&self) -> bool {
        matches!(self.status, Status::Running | Status::Leaving)
    }

    /// The generation of the current boot, if running.
    pub(crate) fn bump(&self) -> Option<u32> {
        self.core.as_ref().map(|c| c.identity().bump)
    }

    pub(crate) fn hint(&self) -> PeerHint {
        PeerHint { cluster: self.announced_cluster, node: self.node, addr: self.addr }
    }

    pub(crate) fn members(&self) -> Vec<MemberView> {
        self.core.as_ref().map(Core::members).unwrap_or_default()
    }

    /// Boots a new process: a fresh core with the next generation and its own rng.
    pub(crate) fn boot(&mut self, run_seed: u64, slot: usize, expected_nodes: usize, planted_bug: bool, now_ms: u64) -> Vec<Effect> {
        self.boots += 1;
        self.epoch += 1;
        self.status = Status::Running;
        let bump = ShoalId::first_bump(self.boots);
        let identity = ShoalId { node: self.node, addr: self.addr, bump };
        let facts = NodeFacts {
            node: self.node,
            seq: u64::from(bump),
            name: self.label.clone(),
            gossip_addr: self.addr,
            labels: BTreeMap::from([("sim.slot".to_string(), slot.to_string())]),
            version: "sim".to_string(),
            boot: self.boots,
            left: false,
            in_cluster: false,
            resources: Default::default(),
        };
        let mut cfg = MembershipConfig::lan(u32::try_from(expected_nodes).unwrap_or(u32::MAX));
        cfg.planted_bug = planted_bug;
        let rng = stream(run_seed, Stream::Node { slot, boot: self.boots });
        let sigs = std::sync::Arc::new(shoal_discovery::KeyedHashSignatures::new(self.secret.gossip_key(), identity.node));
        let mut core = Membership::new(cfg, identity, facts, self.secret.cluster_id(), self.secret.gossip_key(), sigs, rng);
        for seed in self.seed_addrs.iter().chain(&self.remembered_peers) {
            core.add_seed(*seed);
        }
        let effects = core.start(now_ms);
        self.core = Some(core);
        effects
    }

    /// The process stops (power cut or after a leave): the core and its state are gone.
    pub(crate) fn stop(&mut self, status: Status) {
        // What the agent persists in its data dir (known peers) survives the process.
        if let Some(core) = &self.core {
            self.remembered_peers = core.known_peers();
        }
        self.core = None;
        self.epoch += 1;
        self.status = status;
    }
}
