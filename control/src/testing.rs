//! Fixtures of the controller's tests: a cluster with a CA, small states and Raft views.

use shoal_consensus::duties::RaftView;
use shoal_consensus::state::MAX_SEALED_KEY_LEN;
use shoal_cluster::scheduler::Mode;
use shoal_consensus::{CaRecord, ClusterState, Command, NodeRecord, ServiceDef, ShoalNode};
use shoal_engine::{ContainerSpec, RestartPolicy};
use shoal_discovery::{JoinSecret, MemberState, MemberView, NodeResources};
use shoal_pki::{CertInfo, ClusterCa, IssuePolicy, Issuer, JoinRequest, NodeRole, SealedCaKey};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

pub const T0_MS: u64 = 1_750_000_000_000;

pub fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

pub fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7946))
}

pub fn record(n: u8) -> NodeRecord {
    NodeRecord { name: format!("n{n}"), addr: addr(n), labels: BTreeMap::new() }
}

/// A service `web` of `replicas` replicas of the simulator's image.
pub fn web(replicas: u32) -> ServiceDef {
    ServiceDef {
        name: "web".into(),
        spec: ContainerSpec { image: "sim/app:1".into(), ..Default::default() },
        mode: Mode::Replicated(replicas),
        constraints: Vec::new(),
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart: RestartPolicy::Always,
    }
}

pub fn id_of(info: &CertInfo) -> NodeId {
    info.node_id
}

/// A member as gossip shows it (node `n`, alive since `T0_MS`, `n == 1` is this node).
pub fn member_as(id: NodeId, n: u8) -> MemberView {
    MemberView {
        id,
        name: Some(format!("n{n}")),
        addr: addr(n),
        state: MemberState::Alive,
        labels: BTreeMap::from([("zone".to_string(), format!("z{n}"))]),
        incarnation: 1,
        version: None,
        since_ms: T0_MS,
        is_self: n == 1,
        in_cluster: true,
        resources: NodeResources { arch: "x86_64".into(), cpu_millis: 2_000, memory_bytes: 1 << 30, engine_ok: true },
        signed_addr: Some(addr(n)),
    }
}

pub fn member(n: u8) -> MemberView {
    member_as(id(n), n)
}

pub fn raft_view(voters: &[NodeId], learners: &[NodeId]) -> RaftView {
    let nodes = voters.iter().chain(learners).map(|n| (*n, ShoalNode::new(n.short(), addr(n.0[0])))).collect();
    RaftView {
        target_voters: voters.iter().copied().collect(),
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
        nodes,
        joint: false,
        last_log: 10,
        matched: voters.iter().chain(learners).map(|n| (*n, 10)).collect(),
    }
}

pub fn raft(voters: &[u8], learners: &[u8]) -> RaftView {
    let v: Vec<NodeId> = voters.iter().map(|n| id(*n)).collect();
    let l: Vec<NodeId> = learners.iter().map(|n| id(*n)).collect();
    raft_view(&v, &l)
}

/// A cluster's secret and CA.
pub struct TestCluster {
    pub secret: JoinSecret,
    cert_pem: String,
    sealed: SealedCaKey,
}

impl TestCluster {
    pub fn new() -> Self {
        let secret = shoal_pki::testing::secret(1);
        let mut rng = shoal_pki::testing::rng(1);
        let ca = ClusterCa::create(secret.cluster_id(), rcgen::KeyPair::generate().expect("key"), shoal_pki::testing::t0(), &mut rng).expect("ca");
        let sealed = ca.seal_key(&secret, &mut rng);
        Self { secret, cert_pem: ca.cert_pem().to_string(), sealed }
    }

    pub fn pending(&self) -> (String, SealedCaKey) {
        (self.cert_pem.clone(), self.sealed.clone())
    }

    /// A state with this CA committed and nodes `registered` registered.
    pub fn state(&self, registered: &[u8]) -> ClusterState {
        let mut s = ClusterState::default();
        let sealed_key = shoal_wire::encode::<_, MAX_SEALED_KEY_LEN>(&self.sealed).expect("encode");
        s.apply(Command::SetCa(CaRecord { cert_pem: self.cert_pem.clone(), sealed_key })).expect("ca");
        for n in registered {
            s.apply(Command::RegisterNode { id: id(*n), record: record(*n) }).expect("register");
        }
        s
    }

    pub fn issuer(&self) -> Issuer {
        crate::issuer_from_state(&ClusterState::default(), Some(&self.pending()), &self.secret, IssuePolicy::default()).expect("issuer")
    }

    /// A certificate this cluster issued at `t0()` to a fresh key, as node 1 grants itself.
    pub fn own_cert(&self, role: NodeRole, name: &str) -> (CertInfo, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut rng = shoal_pki::testing::rng(7);
        let req = JoinRequest::new(&self.secret, &key, &mut rng).expect("request");
        let grant = crate::own_grant(role, addr(1), name);
        let resp = self.issuer().answer_join(&req, &grant, &BTreeSet::new(), shoal_pki::testing::t0(), &mut rng).expect("answer");
        (CertInfo::parse(&resp.cert_der).expect("parse"), key)
    }
}
