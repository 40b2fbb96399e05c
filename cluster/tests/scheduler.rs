//! Scheduler rules as stories: apply each pass's decisions to a small in-memory state and
//! check what users are promised (spread, constraints, reservations, drain, pending reasons,
//! rescheduling after the grace period, never one slot twice, host ports held once per node),
//! up to 1,000 nodes × 10,000 tasks.

use shoal_cluster::constraint::Constraint;
use shoal_cluster::scheduler::*;
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

const GB: u64 = 1 << 30;

fn nid(i: usize) -> NodeId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    NodeId(b)
}

fn node(i: usize) -> NodeView {
    NodeView {
        id: nid(i),
        hostname: format!("pi{i}"),
        arch: if i.is_multiple_of(2) { "aarch64".into() } else { "x86_64".into() },
        labels: BTreeMap::from([("zone".to_string(), if i.is_multiple_of(3) { "attic".into() } else { "cellar".into() })]),
        health: Health::Alive,
        availability: Availability::Active,
        engine_ok: true,
        cpu_millis: 4000,
        memory_bytes: 8 * GB,
    }
}

fn service(name: &str, replicas: u32) -> ServiceView {
    ServiceView { name: name.into(), mode: Mode::Replicated(replicas), constraints: vec![], reserve_cpu_millis: 0, reserve_memory_bytes: 0, host_ports: vec![], stays_with_node: false, group: None }
}

fn publishing(name: &str, replicas: u32, ports: &[HostPort]) -> ServiceView {
    ServiceView { host_ports: ports.to_vec(), ..service(name, replicas) }
}

/// The cluster state the leader would hold, and a way to apply decisions to it.
#[derive(Default)]
struct World {
    nodes: Vec<NodeView>,
    services: Vec<ServiceView>,
    tasks: BTreeMap<TaskId, TaskView>,
    next_id: TaskId,
    pending: Vec<(String, Slot, String)>,
    now_ms: u64,
}

impl World {
    fn with_nodes(n: usize) -> Self {
        Self { nodes: (0..n).map(node).collect(), ..Default::default() }
    }

    /// One pass; returns the decisions after applying them.
    fn pass(&mut self) -> Vec<Decision> {
        let tasks: Vec<TaskView> = self.tasks.values().cloned().collect();
        let decisions = schedule(&SchedulerConfig::default(), self.now_ms, &self.nodes, &self.services, &tasks);
        self.pending.clear();
        for d in &decisions {
            match d {
                Decision::Place { service, slot, node } => {
                    self.next_id += 1;
                    self.tasks.insert(self.next_id, TaskView { id: self.next_id, service: service.clone(), slot: *slot, node: *node });
                }
                Decision::Shutdown { task, .. } => {
                    self.tasks.remove(task);
                }
                Decision::Pending { service, slot, reason } => self.pending.push((service.clone(), *slot, reason.clone())),
            }
        }
        decisions
    }

    /// Passes until nothing changes; asserts it converges and stays converged.
    fn converge(&mut self) {
        for _ in 0..10 {
            let d = self.pass();
            if d.iter().all(|d| matches!(d, Decision::Pending { .. })) {
                let again = self.pass();
                assert!(again.iter().all(|d| matches!(d, Decision::Pending { .. })), "not idempotent: {again:?}");
                self.assert_no_slot_twice();
                self.assert_no_port_twice();
                return;
            }
        }
        panic!("did not converge in 10 passes");
    }

    fn per_node(&self, svc: &str) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for t in self.tasks.values().filter(|t| t.service == svc) {
            *m.entry(t.node).or_insert(0) += 1;
        }
        m
    }

    /// Every node holds each (host port, protocol) at most once, across all services.
    fn assert_no_port_twice(&self) {
        let mut held = BTreeSet::new();
        for t in self.tasks.values() {
            let svc = self.services.iter().find(|s| s.name == t.service).expect("service of a live task");
            for p in &svc.host_ports {
                assert!(held.insert((t.node, *p)), "host port {p} held twice on {}", t.node);
            }
        }
    }

    fn pending_of(&self, svc: &str) -> Vec<&str> {
        self.pending.iter().filter(|p| p.0 == svc).map(|p| p.2.as_str()).collect()
    }

    fn assert_no_slot_twice(&self) {
        let mut seen = BTreeSet::new();
        for t in self.tasks.values() {
            assert!(seen.insert((t.service.clone(), t.slot)), "slot {:?} of {} runs twice", t.slot, t.service);
        }
    }
}

#[test]
fn six_replicas_spread_two_per_node_on_three_nodes() {
    let mut w = World::with_nodes(3);
    w.services.push(service("web", 6));
    w.converge();
    assert_eq!(w.per_node("web").values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    // Scale to 3: the highest slots go, one per node remains.
    w.services[0].mode = Mode::Replicated(3);
    w.converge();
    assert_eq!(w.per_node("web").values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    let slots: BTreeSet<Slot> = w.tasks.values().map(|t| t.slot).collect();
    assert_eq!(slots, BTreeSet::from([Slot::Index(1), Slot::Index(2), Slot::Index(3)]));
}

#[test]
fn spread_breaks_ties_by_total_load() {
    let mut w = World::with_nodes(3);
    w.services.push(service("db", 2));
    w.converge();
    w.services.push(service("web", 1));
    w.converge();
    let db_nodes: BTreeSet<NodeId> = w.per_node("db").keys().copied().collect();
    let web_node = *w.per_node("web").keys().next().expect("placed");
    assert!(!db_nodes.contains(&web_node), "web should land on the empty node");
}

#[test]
fn constraints_are_respected_and_unmet_ones_pend_with_reason() {
    let mut w = World::with_nodes(6);
    let mut s = service("attic-only", 4);
    s.constraints = vec![Constraint::parse("node.labels.zone==attic").expect("c")];
    w.services.push(s);
    let mut arm = service("arm", 3);
    arm.constraints = vec![Constraint::parse("node.arch==aarch64").expect("c"), Constraint::parse("node.hostname!=pi0").expect("c")];
    w.services.push(arm);
    let mut none = service("nowhere", 1);
    none.constraints = vec![Constraint::parse("node.labels.zone==garage").expect("c")];
    w.services.push(none);
    w.converge();
    for t in w.tasks.values().filter(|t| t.service == "attic-only") {
        let i = w.nodes.iter().position(|n| n.id == t.node).expect("node");
        assert_eq!(i % 3, 0);
    }
    for t in w.tasks.values().filter(|t| t.service == "arm") {
        let n = w.nodes.iter().find(|n| n.id == t.node).expect("node");
        assert_eq!(n.arch, "aarch64");
        assert_ne!(n.hostname, "pi0");
    }
    assert_eq!(w.per_node("nowhere").len(), 0);
    let (_, _, reason) = w.pending.iter().find(|p| p.0 == "nowhere").expect("pending");
    assert!(reason.contains("constraint node.labels.zone==garage not met"), "{reason}");
    assert!(reason.contains("0/6"), "{reason}");
}

#[test]
fn reservations_limit_what_fits() {
    let mut w = World::with_nodes(2);
    let mut s = service("big", 5);
    s.reserve_memory_bytes = 3 * GB; // two fit on an 8 GB node
    w.services.push(s);
    w.converge();
    assert_eq!(w.tasks.len(), 4);
    assert_eq!(w.pending.len(), 1);
    assert!(w.pending[0].2.contains("2 insufficient memory"), "{}", w.pending[0].2);
    let mut c = service("cpu", 1);
    c.reserve_cpu_millis = 5000;
    w.services.push(c);
    w.converge();
    assert!(w.pending.iter().any(|p| p.0 == "cpu" && p.2.contains("insufficient CPU")));
}

#[test]
fn drained_down_and_engineless_nodes_get_nothing_and_drain_moves_tasks() {
    let mut w = World::with_nodes(4);
    w.nodes[1].health = Health::Down { since_ms: 0 };
    w.nodes[2].engine_ok = false;
    w.services.push(service("web", 4));
    w.converge();
    assert_eq!(w.per_node("web").keys().copied().collect::<Vec<_>>().len(), 2);
    assert!(!w.per_node("web").contains_key(&nid(1)));
    assert!(!w.per_node("web").contains_key(&nid(2)));
    w.nodes[0].availability = Availability::Drain;
    w.converge();
    assert_eq!(w.per_node("web").keys().copied().collect::<Vec<_>>(), vec![nid(3)]);
    assert_eq!(w.tasks.len(), 4);
}

#[test]
fn down_node_keeps_its_tasks_during_grace_then_they_move_once() {
    let mut w = World::with_nodes(3);
    w.services.push(service("web", 6));
    w.converge();
    let before = w.per_node("web");
    w.now_ms = 100_000;
    w.nodes[2].health = Health::Down { since_ms: 99_000 };
    w.converge();
    assert_eq!(w.per_node("web"), before, "moved within the grace period");
    w.now_ms = 99_000 + SchedulerConfig::default().down_grace_ms;
    w.converge();
    assert!(!w.per_node("web").contains_key(&nid(2)));
    assert_eq!(w.tasks.len(), 6);
    assert_eq!(w.per_node("web").values().copied().collect::<Vec<_>>(), vec![3, 3]);
    // The node comes back: nothing moves back and nothing runs twice.
    w.nodes[2].health = Health::Alive;
    w.converge();
    assert_eq!(w.tasks.len(), 6);
}

#[test]
fn a_service_that_stays_with_its_node_is_lost_with_it_not_moved_until_the_node_is_gone_or_drained() {
    let mut w = World::with_nodes(3);
    w.services.push(ServiceView { stays_with_node: true, ..service("plain", 3) });
    w.services.push(service("always", 3));
    w.converge();
    let plain_before = w.per_node("plain");
    let on_2: Vec<TaskId> = w.tasks.values().filter(|t| t.node == nid(2) && t.service == "plain").map(|t| t.id).collect();
    assert_eq!(on_2.len(), 1);
    w.nodes[2].health = Health::Down { since_ms: 0 };
    w.now_ms = 10 * SchedulerConfig::default().down_grace_ms;
    w.converge();
    // The moving service left node 2; the staying one kept its task (same id) there.
    assert!(!w.per_node("always").contains_key(&nid(2)));
    assert_eq!(w.per_node("always").values().sum::<usize>(), 3);
    assert_eq!(w.per_node("plain"), plain_before);
    assert!(on_2.iter().all(|id| w.tasks.contains_key(id)), "the staying task was replaced");
    // Left counts as down; drained and removed nodes give the task up.
    w.nodes[2].health = Health::Left { since_ms: 0 };
    w.converge();
    assert_eq!(w.per_node("plain"), plain_before);
    w.nodes[2].availability = Availability::Drain;
    w.converge();
    assert!(!w.per_node("plain").contains_key(&nid(2)));
    assert_eq!(w.per_node("plain").values().sum::<usize>(), 3);
    w.nodes[2].availability = Availability::Active;
    w.nodes[2].health = Health::Down { since_ms: 0 };
    w.converge();
    let on_1 = w.tasks.values().filter(|t| t.node == nid(1) && t.service == "plain").count();
    w.nodes.remove(1);
    w.converge();
    assert_eq!(w.per_node("plain").values().sum::<usize>(), 3, "a task of a removed node is placed anew");
    assert!(on_1 > 0 && !w.per_node("plain").contains_key(&nid(1)));
}

#[test]
fn removing_a_service_shuts_all_its_tasks_down() {
    let mut w = World::with_nodes(3);
    w.services.push(service("web", 3));
    w.services.push(service("db", 1));
    w.converge();
    w.services.retain(|s| s.name != "web");
    let d = w.pass();
    assert_eq!(d.iter().filter(|d| matches!(d, Decision::Shutdown { reason: ShutdownReason::ServiceRemoved, .. })).count(), 3);
    assert_eq!(w.tasks.len(), 1);
}

#[test]
fn global_service_runs_once_per_eligible_node() {
    let mut w = World::with_nodes(5);
    w.nodes[4].availability = Availability::Drain;
    let mut g = service("agent", 0);
    g.mode = Mode::Global;
    g.constraints = vec![Constraint::parse("node.hostname!=pi0").expect("c")];
    w.services.push(g);
    w.converge();
    assert_eq!(w.per_node("agent").keys().copied().collect::<Vec<_>>(), vec![nid(1), nid(2), nid(3)]);
    w.nodes.push(node(5));
    w.converge();
    assert_eq!(w.per_node("agent").len(), 4);
}

#[test]
fn duplicate_live_tasks_of_one_slot_are_reduced_to_one() {
    let mut w = World::with_nodes(2);
    w.services.push(service("web", 1));
    w.tasks.insert(1, TaskView { id: 1, service: "web".into(), slot: Slot::Index(1), node: nid(0) });
    w.tasks.insert(2, TaskView { id: 2, service: "web".into(), slot: Slot::Index(1), node: nid(1) });
    w.next_id = 2;
    w.converge();
    assert_eq!(w.tasks.keys().copied().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn thousand_nodes_ten_thousand_tasks_spread_evenly_and_reschedule_without_doubles() {
    let mut w = World::with_nodes(1000);
    for s in 0..100 {
        w.services.push(service(&format!("svc{s}"), 100));
    }
    w.converge();
    assert_eq!(w.tasks.len(), 10_000);
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in w.tasks.values() {
        *per_node.entry(t.node).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 1000);
    assert!(per_node.values().all(|&c| c == 10), "uneven: {:?}", per_node.values().collect::<BTreeSet<_>>());
    // Ten nodes die; after the grace period their 100 tasks move, none twice.
    for i in 0..10 {
        w.nodes[i].health = Health::Down { since_ms: 0 };
    }
    w.now_ms = SchedulerConfig::default().down_grace_ms;
    w.converge();
    assert_eq!(w.tasks.len(), 10_000);
    assert!(w.tasks.values().all(|t| w.nodes.iter().position(|n| n.id == t.node).is_some_and(|i| i >= 10)));
}

#[test]
fn six_replicas_on_one_host_port_take_one_node_each_and_the_rest_pend_naming_the_port() {
    let mut w = World::with_nodes(3);
    w.services.push(publishing("web", 6, &[HostPort::tcp(8080)]));
    w.converge();
    // One per node, the other three wait.
    assert_eq!(w.per_node("web").values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    let pending = w.pending_of("web");
    assert_eq!(pending.len(), 3, "{:?}", w.pending);
    for reason in &pending {
        assert_eq!(*reason, "host port 8080/tcp is taken on every eligible node (3/3)");
    }
    // The lowest slots run, the highest wait.
    let running: BTreeSet<Slot> = w.tasks.values().map(|t| t.slot).collect();
    assert_eq!(running, BTreeSet::from([Slot::Index(1), Slot::Index(2), Slot::Index(3)]));

    // Scale to 3: converged, nothing pending, nothing moved.
    let before: BTreeSet<TaskId> = w.tasks.keys().copied().collect();
    w.services[0].mode = Mode::Replicated(3);
    w.converge();
    assert!(w.pending.is_empty(), "{:?}", w.pending);
    assert_eq!(w.tasks.keys().copied().collect::<BTreeSet<_>>(), before);
}

#[test]
fn two_services_on_one_host_port_share_the_nodes_between_them() {
    let mut w = World::with_nodes(3);
    w.services.push(publishing("api", 2, &[HostPort::tcp(8080)]));
    w.services.push(publishing("web", 2, &[HostPort::tcp(8080), HostPort::tcp(8443)]));
    w.converge();
    assert_eq!(w.per_node("api").len(), 2);
    // web gets the one node api left free; its second slot pends naming the port that is
    // taken (8080), not the one that is free (8443).
    assert_eq!(w.per_node("web").len(), 1);
    let api_nodes: BTreeSet<NodeId> = w.per_node("api").keys().copied().collect();
    assert!(!api_nodes.contains(w.per_node("web").keys().next().expect("web placed")));
    assert_eq!(w.pending_of("web"), vec!["host port 8080/tcp is taken on every eligible node (3/3)"]);
    assert!(w.pending_of("api").is_empty());
    // A drained node and an unhealthy one are named as what they are.
    w.nodes.push(node(3));
    w.nodes[3].availability = Availability::Drain;
    w.nodes.push(node(4));
    w.nodes[4].health = Health::Suspect;
    w.converge();
    assert_eq!(w.pending_of("web"), vec!["host port 8080/tcp is taken on every eligible node (3/5; 1 not alive; 1 drained)"]);
}

#[test]
fn tcp_and_udp_of_the_same_number_do_not_conflict() {
    let mut w = World::with_nodes(1);
    w.services.push(publishing("dns-tcp", 1, &[HostPort::tcp(53)]));
    w.services.push(publishing("dns-udp", 1, &[HostPort::udp(53)]));
    w.converge();
    assert!(w.pending.is_empty(), "{:?}", w.pending);
    assert_eq!(w.tasks.len(), 2);
    // A third service on 53/udp has nowhere to go.
    w.services.push(publishing("other-dns", 1, &[HostPort::udp(53)]));
    w.converge();
    assert_eq!(w.pending_of("other-dns"), vec!["host port 53/udp is taken on every eligible node (1/1)"]);
}

#[test]
fn a_global_service_with_a_port_skips_the_nodes_where_it_is_taken() {
    let mut w = World::with_nodes(3);
    w.services.push(publishing("web", 1, &[HostPort::tcp(80)]));
    w.converge();
    let web_node = *w.per_node("web").keys().next().expect("web placed");
    let mut g = publishing("proxy", 0, &[HostPort::tcp(80)]);
    g.mode = Mode::Global;
    w.services.push(g);
    w.converge();
    // Two nodes run the global task; the third (web's) has its slot pending.
    let proxy_nodes: BTreeSet<NodeId> = w.per_node("proxy").keys().copied().collect();
    assert_eq!(proxy_nodes.len(), 2);
    assert!(!proxy_nodes.contains(&web_node));
    assert_eq!(w.pending, vec![("proxy".to_string(), Slot::Node(web_node), "host port 80/tcp is taken on its node".to_string())]);
    // web goes away: the global task takes its node in the same pass that shuts web down.
    w.services.retain(|s| s.name != "web");
    let d = w.pass();
    assert!(d.contains(&Decision::Place { service: "proxy".into(), slot: Slot::Node(web_node), node: web_node }), "{d:?}");
    w.converge();
    assert_eq!(w.per_node("proxy").len(), 3);
    assert!(w.pending.is_empty());
}

#[test]
fn a_task_shut_down_frees_its_port_for_the_re_placement() {
    let mut w = World::with_nodes(2);
    w.services.push(publishing("web", 1, &[HostPort::tcp(8080)]));
    w.services.push(publishing("api", 2, &[HostPort::tcp(8080)]));
    w.converge();
    let web_node = *w.per_node("web").keys().next().expect("web placed");
    assert_eq!(w.pending_of("api").len(), 1);
    // Scaling web to 0 shuts its task down, and the same pass places api's waiting slot on
    // the node web held.
    w.services[0].mode = Mode::Replicated(0);
    let d = w.pass();
    assert!(d.iter().any(|d| matches!(d, Decision::Shutdown { reason: ShutdownReason::ScaledDown, .. })), "{d:?}");
    assert!(d.iter().any(|d| matches!(d, Decision::Place { service, node, .. } if service == "api" && *node == web_node)), "{d:?}");
    w.converge();
    assert_eq!(w.per_node("api").len(), 2);
    assert!(w.pending.is_empty());
    // A node down past the grace period: its task is shut down and the slot placed anew,
    // here on a third node, since the survivor holds the port.
    w.nodes.push(node(2));
    w.now_ms = 100_000;
    let down = w.tasks.values().find(|t| t.service == "api").expect("api task").node;
    let i = w.nodes.iter().position(|n| n.id == down).expect("node");
    w.nodes[i].health = Health::Down { since_ms: 0 };
    w.converge();
    assert_eq!(w.per_node("api").keys().copied().collect::<BTreeSet<_>>().len(), 2);
    assert!(!w.per_node("api").contains_key(&down));
}

#[test]
fn two_kept_tasks_holding_one_port_on_a_node_are_reduced_to_one() {
    // A state written before host ports were scheduled: two tasks of web on one node.
    let mut w = World::with_nodes(2);
    w.services.push(publishing("web", 2, &[HostPort::tcp(8080)]));
    w.tasks.insert(1, TaskView { id: 1, service: "web".into(), slot: Slot::Index(1), node: nid(0) });
    w.tasks.insert(2, TaskView { id: 2, service: "web".into(), slot: Slot::Index(2), node: nid(0) });
    w.next_id = 2;
    let d = w.pass();
    assert!(d.contains(&Decision::Shutdown { task: 2, reason: ShutdownReason::PortConflict }), "{d:?}");
    assert!(d.contains(&Decision::Place { service: "web".into(), slot: Slot::Index(2), node: nid(1) }), "{d:?}");
    w.converge();
    assert_eq!(w.per_node("web").values().copied().collect::<Vec<_>>(), vec![1, 1]);
}

#[test]
fn thousand_nodes_with_ports_place_one_port_holder_per_node_per_port() {
    // 1,000 nodes; 10 services on 5 ports, two services per port. At 150 replicas each (300
    // per port) everything fits; at 600 each, 1,000 of the 1,200 tasks per port run.
    let mut w = World::with_nodes(1000);
    for s in 0..10u16 {
        w.services.push(publishing(&format!("svc{s}"), 150, &[HostPort::tcp(9000 + s / 2)]));
    }
    w.converge();
    assert_eq!(w.tasks.len(), 1500, "300 per port pair fit, none twice");
    assert_eq!(w.pending.len(), 0);
    for s in 0..10u16 {
        w.services[usize::from(s)].mode = Mode::Replicated(600);
    }
    w.converge();
    // Each port: 1,000 holders (one per node), 200 slots pending.
    assert_eq!(w.tasks.len(), 5000);
    assert_eq!(w.pending.len(), 1000);
    assert!(w.pending.iter().all(|p| p.2.contains("is taken on every eligible node (1000/1000)")), "{:?}", w.pending.first());
}

fn grouped(name: &str, replicas: u32, group: &str) -> ServiceView {
    ServiceView { group: Some(group.into()), ..service(name, replicas) }
}

#[test]
fn services_of_one_network_run_on_one_node_and_others_still_spread() {
    let mut w = World::with_nodes(3);
    // Two compose services on one network, created in one pass, and a third with its own.
    w.services.push(grouped("p_db_1", 1, "net-p"));
    w.services.push(grouped("p_web_1", 1, "net-p"));
    w.services.push(grouped("q_web_1", 1, "net-q"));
    w.converge();
    assert_eq!(w.per_node("p_db_1").keys().collect::<Vec<_>>(), w.per_node("p_web_1").keys().collect::<Vec<_>>());
    // Scaling a member of the group keeps every task with the group (no spread).
    w.services[1].mode = Mode::Replicated(3);
    w.converge();
    let db_node = *w.per_node("p_db_1").keys().next().expect("db placed");
    assert_eq!(w.per_node("p_web_1"), BTreeMap::from([(db_node, 3)]));
    // Ungrouped services still spread over every node.
    w.services.push(service("spread", 3));
    w.converge();
    assert_eq!(w.per_node("spread").len(), 3);
}

#[test]
fn a_group_whose_node_is_full_pends_with_the_reason() {
    let mut w = World::with_nodes(2);
    w.services.push(grouped("p_db_1", 1, "net-p"));
    w.converge();
    let db_node = *w.per_node("p_db_1").keys().next().expect("db placed");
    // The same host port twice in one group cannot fit on the group's one node.
    w.services.push(ServiceView { host_ports: vec![HostPort::tcp(80)], ..grouped("p_web", 2, "net-p") });
    w.converge();
    assert_eq!(w.per_node("p_web"), BTreeMap::from([(db_node, 1)]));
    let pending = w.pending_of("p_web");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].contains("network net-p") && pending[0].contains("80/tcp"), "{}", pending[0]);
}

#[test]
fn group_pin_is_the_first_node_seen() {
    let mut groups = BTreeMap::new();
    assert_eq!(group_pin(&groups, &grouped("a", 1, "g")), None);
    groups.insert("g".to_string(), nid(2));
    assert_eq!(group_pin(&groups, &grouped("a", 1, "g")), Some(nid(2)));
    assert_eq!(group_pin(&groups, &service("a", 1)), None);
}
