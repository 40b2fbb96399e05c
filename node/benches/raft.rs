//! Prints Raft-over-mutual-TLS figures on loopback (3 in-process nodes, real TCP and TLS,
//! certificates from a cluster CA, in-memory stores): time to a leader whose lease a quorum
//! acknowledged, committed writes per second through the leader (sequential, and with 32
//! writers), and failover time after the leader stops. Not wired into `shoal agent` yet, so
//! this measures the building blocks, not a cold start of real processes.

use rand::SeedableRng;
use rcgen::KeyPair;
use shoal_consensus::openraft::Config;
use shoal_consensus::runtime::{os_seed, with_seed};
use shoal_consensus::store::mem::MemSnapshots;
use shoal_consensus::types::ShoalRaft;
use shoal_consensus::{propose_when_ready, Command, MemStore, NodeRecord, RaftNodeId, ShoalNode, StateMachineStore};
use shoal_discovery::JoinSecret;
use shoal_node::pki::{node_id_of_key, ClusterCa, IssuePolicy, Issuer, JoinRequest, MutualTls, NodeCredentials, NodeGrant, NodeRole, Revocations};
use shoal_node::raftnet::{ClientConfig, RaftNetwork, RaftServer, ServerConfig};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type Raft = ShoalRaft<StateMachineStore<MemSnapshots>>;
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct Node {
    id: RaftNodeId,
    raft: Raft,
    server: RaftServer,
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

async fn start_node(secret: &JoinSecret, issuer: &Issuer, config: Arc<Config>) -> (Node, std::net::SocketAddr) {
    let key = KeyPair::generate().expect("key");
    let csr = JoinRequest::new(secret, &key, &mut rng(7)).expect("csr").csr_der;
    let grant = NodeGrant { role: NodeRole::Manager, addresses: vec!["127.0.0.1".parse().expect("ip")], names: Vec::new() };
    let id = node_id_of_key(&key);
    let cert = issuer.issue(&csr, id, &grant, &BTreeSet::new(), SystemTime::now(), &mut rng(8)).expect("issue");
    let creds = NodeCredentials::new(cert, &key).expect("credentials");
    let tls = MutualTls::new(issuer.ca().cert_der(), creds, Revocations::new()).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let id = RaftNodeId(id);
    let network = RaftNetwork::new(id, tls.clone(), ClientConfig::default());
    let (log, sm) = MemStore::new().open();
    let raft = with_seed(os_seed(), Raft::new(id, config, network, log, sm)).await.expect("raft");
    let server = RaftServer::serve(listener, tls, Arc::new(raft.clone()), ServerConfig::default()).expect("serve");
    (Node { id, raft, server }, addr)
}

async fn leader(nodes: &[Node], not: Option<RaftNodeId>) -> usize {
    let probe = nodes.iter().find(|n| Some(n.id) != not).expect("a live node");
    let m = probe.raft.wait(WAIT).metrics(|m| m.current_leader.is_some_and(|l| Some(l) != not), "leader").await.expect("leader");
    let id = m.current_leader.expect("leader");
    let i = nodes.iter().position(|n| n.id == id).expect("ours");
    nodes[i].raft.wait(WAIT).leader_with_quorum_acked(None, "lease").await.expect("lease");
    i
}

fn register(n: u32) -> Command {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    Command::RegisterNode {
        id: NodeId(id),
        record: NodeRecord { name: format!("n{n}"), addr: ([10, 0, 0, 1], 7481).into(), labels: BTreeMap::new() },
    }
}

async fn write(raft: &Raft, cmd: Command) {
    if let Err(e) = propose_when_ready(raft, cmd, 500, Duration::from_millis(10)).await {
        panic!("write failed: {e}");
    }
}

async fn run() {
    let config = Arc::new(
        Config { cluster_name: "shoal-bench".into(), heartbeat_interval: 50, election_timeout_min: 300, election_timeout_max: 600, ..Default::default() }
            .validate()
            .expect("config"),
    );
    let secret = JoinSecret::generate(&mut rng(1));
    let ca = ClusterCa::create(secret.cluster_id(), KeyPair::generate().expect("key"), SystemTime::now(), &mut rng(2)).expect("ca");
    let issuer = Issuer::new(ca, &secret, IssuePolicy::default());
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for i in 0..3 {
        let (node, addr) = start_node(&secret, &issuer, config.clone()).await;
        members.insert(node.id, ShoalNode::new(format!("n{i}"), addr));
        nodes.push(node);
    }
    let started = Instant::now();
    nodes[0].raft.initialize(members).await.expect("initialize");
    let l = leader(&nodes, None).await;
    println!("raft over mTLS (3 nodes, loopback): initialise -> leader with quorum-acked lease: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);

    let n_seq = 2_000u32;
    let t = Instant::now();
    for i in 0..n_seq {
        write(&nodes[l].raft, register(i)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("raft over mTLS: {n_seq} sequential committed writes: {:.0} writes/s", f64::from(n_seq) / secs);

    let writers = 32u32;
    let per = 250u32;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let raft = nodes[l].raft.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                write(&raft, register(100_000 + w * per + i)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("raft over mTLS: {} committed writes from {writers} concurrent writers: {:.0} writes/s", writers * per, f64::from(writers * per) / secs);

    let old = nodes[l].id;
    let t = Instant::now();
    let stopped = nodes.remove(l);
    stopped.raft.shutdown().await.expect("shutdown");
    drop(stopped.server);
    let nl = leader(&nodes, Some(old)).await;
    write(&nodes[nl].raft, register(9_999_999)).await;
    println!("raft over mTLS: leader stopped -> new leader with lease and a committed write: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    for node in nodes {
        let _ = node.raft.shutdown().await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), run()).await.expect("bench finished in time") });
}
