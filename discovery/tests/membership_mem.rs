//! Membership rules through the in-memory ports: the real core and driver, an in-memory
//! network and LAN, paused tokio time. Reads like the story of a small cluster.

use rand::SeedableRng;
use shoal_discovery::ports::{MemLan, MemNetwork, TokioClock};
use shoal_discovery::{JoinSecret, MemberState, MemberView, Membership, MembershipConfig, MembershipHandle, NodeFacts, PeerHint, ShoalId};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const BASE_MS: u64 = 1_764_000_000_000;

struct Node {
    id: ShoalId,
    crashed: bool,
    handle: MembershipHandle,
    task: tokio::task::JoinHandle<()>,
}

struct Lab {
    net: MemNetwork,
    lan: MemLan,
    secret: JoinSecret,
    nodes: Vec<Node>,
}

fn addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7480", i + 1).parse().expect("addr")
}

fn node_id(i: usize) -> NodeId {
    NodeId([i as u8 + 1; 16])
}

impl Lab {
    fn new() -> Self {
        let secret = JoinSecret::generate(&mut rand::rngs::StdRng::seed_from_u64(42));
        Self { net: MemNetwork::new(), lan: MemLan::new(), secret, nodes: Vec::new() }
    }

    /// Starts node `i` (boot `boot`) with the lab's secret or another one, on the LAN.
    fn start(&mut self, i: usize, boot: u16, secret: &JoinSecret, seeds: &[SocketAddr]) -> Node {
        let id = ShoalId { node: node_id(i), addr: addr(i), bump: ShoalId::first_bump(boot) };
        let facts = NodeFacts {
            node: id.node,
            seq: u64::from(id.bump),
            name: format!("n{i}"),
            gossip_addr: id.addr,
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 2))]),
            version: "test".into(),
            boot,
            left: false,
            in_cluster: false,
            resources: Default::default(),
        };
        let mut core = Membership::new(
            MembershipConfig::lan(8),
            id.clone(),
            facts,
            secret.cluster_id(),
            secret.gossip_key(),
            std::sync::Arc::new(shoal_discovery::KeyedHashSignatures::new(secret.gossip_key(), id.node)),
            rand::rngs::StdRng::seed_from_u64(i as u64 * 1000 + u64::from(boot)),
        );
        for s in seeds {
            core.add_seed(*s);
        }
        let socket = self.net.bind(id.addr);
        self.lan.announce(PeerHint { cluster: secret.cluster_id(), node: id.node, addr: id.addr });
        let (handle, task) = shoal_discovery::spawn(core, socket, TokioClock::new(BASE_MS), self.lan.browse());
        Node { id, crashed: false, handle, task }
    }

    fn start_honest(&mut self, n: usize) {
        let secret = self.secret.clone();
        for i in 0..n {
            let node = self.start(i, 1, &secret, &[]);
            self.nodes.push(node);
        }
    }

    /// Power cut: the task stops and its address goes dark.
    fn crash(&mut self, i: usize) {
        self.nodes[i].task.abort();
        self.nodes[i].crashed = true;
        self.net.unbind(self.nodes[i].id.addr);
        self.lan.withdraw(self.nodes[i].id.node);
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| !self.nodes[*i].crashed).collect()
    }
}

async fn view(node: &Node) -> BTreeMap<NodeId, MemberView> {
    node.handle.members().await.expect("running").into_iter().map(|m| (m.id, m)).collect()
}

/// Waits (in virtual time) until `check` holds on every listed node; returns the time taken.
async fn wait_all(lab: &Lab, on: &[usize], limit: Duration, what: &str, check: impl Fn(&BTreeMap<NodeId, MemberView>) -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let mut ok = true;
        for &i in on {
            if !check(&view(&lab.nodes[i]).await) {
                ok = false;
                break;
            }
        }
        if ok {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let mut dump = String::new();
            for &i in on {
                dump.push_str(&format!("node {i}: {:?}\n", view(&lab.nodes[i]).await.values().map(|m| (m.id, m.state)).collect::<Vec<_>>()));
            }
            panic!("not within {limit:?}: {what}\n{dump}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of(v: &BTreeMap<NodeId, MemberView>, i: usize) -> Option<MemberState> {
    v.get(&node_id(i)).map(|m| m.state)
}

#[tokio::test(start_paused = true)]
async fn five_nodes_find_each_other_through_the_lan_and_learn_facts() {
    let mut lab = Lab::new();
    lab.start_honest(5);
    let all = lab.alive();
    let took = wait_all(&lab, &all, Duration::from_secs(10), "5 alive everywhere", |v| {
        v.len() == 5 && v.values().all(|m| m.state == MemberState::Alive && m.name.is_some())
    })
    .await;
    assert!(took < Duration::from_secs(10));
    let v = view(&lab.nodes[0]).await;
    assert_eq!(v[&node_id(3)].name.as_deref(), Some("n3"));
    assert_eq!(v[&node_id(3)].labels.get("zone").map(String::as_str), Some("z1"));
    assert!(v[&node_id(0)].is_self);
}

#[tokio::test(start_paused = true)]
async fn crash_is_marked_down_and_restart_rejoins_with_same_id() {
    let mut lab = Lab::new();
    lab.start_honest(5);
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(10), "formed", |v| v.values().filter(|m| m.state == MemberState::Alive).count() == 5).await;

    lab.crash(4);
    let rest = lab.alive();
    let took = wait_all(&lab, &rest, Duration::from_secs(20), "node 4 down", |v| state_of(v, 4) == Some(MemberState::Down)).await;
    assert!(took > Duration::from_millis(500), "a crash cannot be seen instantly ({took:?})");

    let secret = lab.secret.clone();
    lab.nodes[4] = lab.start(4, 2, &secret, &[]);
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(20), "node 4 back", |v| {
        v.get(&node_id(4)).is_some_and(|m| m.state == MemberState::Alive && m.incarnation == ShoalId::first_bump(2))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn graceful_leave_is_seen_as_left_at_once() {
    let mut lab = Lab::new();
    lab.start_honest(4);
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(10), "formed", |v| v.values().filter(|m| m.state == MemberState::Alive).count() == 4).await;
    lab.nodes[2].handle.leave().await.expect("leave");
    let rest = [0, 1, 3];
    let took = wait_all(&lab, &rest, Duration::from_secs(1), "node 2 left", |v| state_of(v, 2) == Some(MemberState::Left)).await;
    assert!(took < Duration::from_millis(200), "left took {took:?}");
    // And it stays left (not flipped to down) after the suspicion time has passed.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for i in rest {
        assert_eq!(state_of(&view(&lab.nodes[i]).await, 2), Some(MemberState::Left));
    }
}

#[tokio::test(start_paused = true)]
async fn node_with_wrong_secret_never_gets_in() {
    let mut lab = Lab::new();
    lab.start_honest(3);
    let intruder_secret = JoinSecret::generate(&mut rand::rngs::StdRng::seed_from_u64(666));
    // On the same LAN, and also pointed straight at node 0.
    let intruder = lab.start(9, 1, &intruder_secret, &[addr(0)]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    for i in 0..3 {
        let v = view(&lab.nodes[i]).await;
        assert_eq!(v.len(), 3, "node {i} sees {v:?}");
        assert!(!v.contains_key(&node_id(9)));
        assert!(v.values().all(|m| m.state == MemberState::Alive));
    }
    let iv = view(&intruder).await;
    assert_eq!(iv.keys().copied().collect::<Vec<_>>(), vec![node_id(9)]);
    let stats = lab.nodes[0].handle.stats().await.expect("stats");
    assert!(stats.dropped_forged > 0, "{stats:?}");
    assert!(stats.foreign_cluster_hints > 0, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn partition_heals_by_itself() {
    let mut lab = Lab::new();
    lab.start_honest(4);
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(10), "formed", |v| v.values().filter(|m| m.state == MemberState::Alive).count() == 4).await;
    for j in 1..4 {
        lab.net.partition(addr(0), addr(j));
    }
    wait_all(&lab, &[1, 2, 3], Duration::from_secs(20), "node 0 down on the majority side", |v| state_of(v, 0) == Some(MemberState::Down)).await;
    lab.net.heal_all();
    wait_all(&lab, &all, Duration::from_secs(30), "everyone alive after heal", |v| {
        v.len() == 4 && v.values().all(|m| m.state == MemberState::Alive)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn static_seeds_work_without_discovery() {
    let mut lab = Lab::new();
    let secret = lab.secret.clone();
    // Fresh LAN per node so nobody sees anyone through discovery.
    for i in 0..3 {
        lab.lan = MemLan::new();
        let n = lab.start(i, 1, &secret, &[addr(0)]);
        lab.nodes.push(n);
    }
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(10), "3 alive via seeds", |v| v.len() == 3 && v.values().all(|m| m.state == MemberState::Alive)).await;
}

#[tokio::test(start_paused = true)]
async fn left_belongs_to_the_generation_that_left() {
    // Node 2 leaves, comes back as a new generation, then crashes: it must be shown down,
    // not left (its old "left" facts do not apply to the new generation).
    let mut lab = Lab::new();
    lab.start_honest(3);
    let all = lab.alive();
    wait_all(&lab, &all, Duration::from_secs(10), "formed", |v| v.values().filter(|m| m.state == MemberState::Alive).count() == 3).await;
    lab.nodes[2].handle.leave().await.expect("leave");
    wait_all(&lab, &[0, 1], Duration::from_secs(2), "node 2 left", |v| state_of(v, 2) == Some(MemberState::Left)).await;
    let secret = lab.secret.clone();
    lab.nodes[2] = lab.start(2, 2, &secret, &[]);
    wait_all(&lab, &[0, 1, 2], Duration::from_secs(20), "node 2 back", |v| {
        v.get(&node_id(2)).is_some_and(|m| m.state == MemberState::Alive && m.incarnation == ShoalId::first_bump(2))
    })
    .await;
    lab.crash(2);
    wait_all(&lab, &[0, 1], Duration::from_secs(20), "node 2 down (not left)", |v| state_of(v, 2) == Some(MemberState::Down)).await;
}
