//! The Raft network end to end: real TCP on 127.0.0.1 (ephemeral ports), real mutual TLS
//! with certificates from the cluster CA (`pki`), openraft nodes on the in-memory store.
//! Every test is bounded by a timeout.

use super::rpc::{Committed, ForwardRefused, Request, RequestFrame};
use crate::frame::{self, HEADER_BYTES};
use super::{ClientConfig, RaftNetwork, RaftServer, ServerConfig};
use crate::pki::tls::{client_config_builder, server_name};
use crate::pki::{
    node_dns_name, node_id_of_key, MutualTls, NodeCredentials, Revocations,
};
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use shoal_consensus::codec::MAX_RPC_BYTES;
use shoal_consensus::openraft::async_runtime::WatchReceiver;
use shoal_consensus::openraft::error::RPCError;
use shoal_consensus::openraft::network::RPCOption;
use shoal_consensus::openraft::raft::{ClientWriteResponse, VoteRequest};
use shoal_consensus::openraft::{Config, RaftNetworkFactory, RaftNetworkV2, SnapshotPolicy};
use shoal_consensus::runtime::{os_seed, with_seed};
use shoal_consensus::store::mem::MemSnapshots;
use shoal_consensus::types::{ShoalRaft, Vote};
use shoal_consensus::{propose_when_ready, Applied, ClusterState, Command, MemStore, NodeRecord, StateMachineStore};
use shoal_consensus::{RaftNodeId, ShoalNode, TypeConfig};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Raft = ShoalRaft<StateMachineStore<MemSnapshots>>;

/// Every test finishes well within this or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// A cluster's secret and CA, created now so certificates are valid for real TLS.
use crate::pki::testing::Cluster as Ca;

/// A TLS endpoint presenting `cert` and trusting `ca`.
fn endpoint(ca: &CertificateDer<'static>, cert: CertificateDer<'static>, key: &KeyPair) -> (MutualTls, Revocations) {
    let creds = NodeCredentials::new(cert, key).expect("credentials");
    let revoked = Revocations::new();
    let tls = MutualTls::new(ca, creds, revoked.clone()).expect("tls").with_handshake_timeout(Duration::from_secs(3));
    (tls, revoked)
}

fn raft_config() -> Arc<Config> {
    Arc::new(base_config().validate().expect("valid config"))
}

fn base_config() -> Config {
    Config {
        cluster_name: "shoal-raftnet-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    }
}

/// Snapshots every 10 entries and purges the log behind them: a late node can only catch up
/// through a snapshot.
fn compacting_config() -> Arc<Config> {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..base_config()
    };
    Arc::new(config.validate().expect("valid config"))
}

/// One node: its Raft, its server on 127.0.0.1, its client network and revoked set.
struct Node {
    id: RaftNodeId,
    addr: SocketAddr,
    raft: Raft,
    server: RaftServer,
    network: RaftNetwork,
    revoked: Revocations,
}

async fn start_node_with(ca: &Ca, config: Arc<Config>) -> Node {
    let (key, cert) = ca.issue();
    let id = RaftNodeId(node_id_of_key(&key));
    let (tls, revoked) = endpoint(ca.ca_der(), cert, &key);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let network = RaftNetwork::new(id, tls.clone(), ClientConfig::default());
    let (log, sm) = MemStore::new().open();
    let raft = with_seed(os_seed(), Raft::new(id, config, network.clone(), log, sm)).await.expect("raft");
    let config = ServerConfig { revoked: Some(revoked.clone()), ..ServerConfig::default() };
    let server = RaftServer::serve(listener, tls, Arc::new(raft.clone()), config).expect("serve");
    Node { id, addr, raft, server, network, revoked }
}

/// Three nodes, initialised by the first; returns them and the time to a leader whose lease
/// a quorum acknowledged.
async fn start_cluster(ca: &Ca) -> (Vec<Node>, Duration) {
    start_cluster_with(ca, raft_config()).await
}

async fn start_cluster_with(ca: &Ca, config: Arc<Config>) -> (Vec<Node>, Duration) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node_with(ca, config.clone()).await);
    }
    let members: BTreeMap<RaftNodeId, ShoalNode> =
        nodes.iter().enumerate().map(|(i, n)| (n.id, ShoalNode::new(format!("node-{i}"), n.addr))).collect();
    let started = Instant::now();
    nodes[0].raft.initialize(members).await.expect("initialize");
    leader_of(&nodes, None).await;
    (nodes, started.elapsed())
}

/// The leader among `nodes` (other than `not`), once its lease is acknowledged.
async fn leader_of(nodes: &[Node], not: Option<RaftNodeId>) -> &Node {
    let any = &nodes[0];
    let metrics = any
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some_and(|l| Some(l) != not), "a leader")
        .await
        .expect("leader elected in time");
    let leader = metrics.current_leader.expect("leader");
    let node = nodes.iter().find(|n| n.id == leader).expect("leader is one of ours");
    node.raft.wait(WAIT).leader_with_quorum_acked(None, "leader lease").await.expect("leader lease in time");
    node
}

/// Writes through `leader`, retrying while its lease is being (re)established.
async fn write(leader: &Raft, cmd: Command) -> ClientWriteResponse<TypeConfig> {
    match propose_when_ready(leader, cmd, 200, Duration::from_millis(20)).await {
        Ok(resp) => resp,
        Err(e) => panic!("client write failed: {e}"),
    }
}

fn register(n: u8) -> Command {
    Command::RegisterNode {
        id: NodeId([n; 16]),
        record: NodeRecord { name: format!("pi-{n}"), addr: ([10, 0, 0, n], 7481).into(), labels: BTreeMap::new() },
    }
}

async fn state_of(raft: &Raft) -> ClusterState {
    raft.with_state_machine(|sm| Box::pin(async move { sm.state().clone() })).await.expect("read state machine")
}

/// Writes `register(n)` through the leader and checks every node in `nodes` applied it.
async fn write_everywhere(nodes: &[Node], leader: &Node, n: u8) {
    let written = write(&leader.raft, register(n)).await;
    assert!(matches!(written.data, Ok(Applied::NodeRegistered { .. })), "{:?}", written.data);
    for node in nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(written.log_id.index), "applied")
            .await
            .expect("entry applied in time");
        assert!(state_of(&node.raft).await.nodes.contains_key(&NodeId([n; 16])), "every replica applied it");
    }
}

async fn shutdown(nodes: Vec<Node>) {
    for node in nodes {
        node.raft.shutdown().await.expect("shutdown");
        drop(node.server);
    }
}

/// A harmless vote request: term 0 is below any real term, so it is refused.
fn stale_vote(from: RaftNodeId) -> VoteRequest<TypeConfig> {
    VoteRequest::new(Vote::new(0, from), None)
}

/// Waits (at most 5 s) until `cond` holds; the caller asserts it afterwards.
async fn eventually(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rpc_option() -> RPCOption {
    RPCOption::new(Duration::from_secs(4))
}

/// A client of the cluster's Raft port that is not a member: its own key and `cert`.
fn outsider(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: &KeyPair,
) -> (RaftNetwork, RaftNodeId, Revocations) {
    let id = RaftNodeId(node_id_of_key(key));
    let (tls, revoked) = endpoint(ca, cert, key);
    (RaftNetwork::new(id, tls, ClientConfig::default()), id, revoked)
}

async fn vote_to(network: &RaftNetwork, from: RaftNodeId, target: &Node) -> Result<bool, RPCError<TypeConfig>> {
    let mut client = network.clone().new_client(target.id, &ShoalNode::new("t", target.addr)).await;
    client.vote(stale_vote(from), rpc_option()).await.map(|r| r.is_granted_to(&Vote::new(0, from)))
}

/// A request any cluster certificate may send: a forwarded write the state machine refuses
/// (a node record with an empty name), so nothing changes. `Ok` when `target` answered
/// (committed and refused, or "not the leader"), `Err` when the connection was refused.
async fn probe(network: &RaftNetwork, target: &Node) -> Result<(), String> {
    let record = shoal_consensus::NodeRecord { name: String::new(), addr: target.addr, labels: Default::default() };
    let cmd = shoal_consensus::Command::RegisterNode { id: shoal_wire::NodeId([0xee; 16]), record };
    network.forward(target.id, &ShoalNode::new("t", target.addr), cmd, Duration::from_secs(5)).await.map(drop)
}

#[test]
fn frame_limit_fits_the_length_prefix_and_a_batch_of_commands() {
    assert!(u32::try_from(MAX_RPC_BYTES).is_ok());
    let batch = raft_config().max_payload_entries as usize * shoal_consensus::codec::MAX_COMMAND_BYTES;
    assert!(batch < MAX_RPC_BYTES, "an AppendEntries batch of commands must fit in a frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_and_replicate_over_mutual_tls() {
    bounded(async {
        let ca = Ca::live(1);
        let (nodes, elected_in) = start_cluster(&ca).await;
        let leader = leader_of(&nodes, None).await;
        write_everywhere(&nodes, leader, 2).await;

        // Sequential committed writes through the leader over loopback TLS.
        let writes = 200u8;
        let started = Instant::now();
        let mut last = None;
        for n in 0..writes {
            last = Some(write(&leader.raft, register(n)).await.log_id.index);
        }
        let took = started.elapsed();
        for node in &nodes {
            node.raft.wait(WAIT).applied_index_at_least(last, "applied").await.expect("applied");
        }
        println!(
            "raftnet: 3 nodes over mutual TLS: leader with quorum-acked lease {elected_in:?} after initialize; \
             {writes} sequential committed writes in {took:?} = {:.0} writes/s ({} build)",
            f64::from(writes) / took.as_secs_f64(),
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        for node in &nodes {
            let stats = node.server.stats();
            assert_eq!(stats.handshakes_failed + stats.frames_undecodable + stats.frames_truncated, 0, "{stats:?}");
        }
        // Connections are reused: a handful per node, not one per RPC.
        let opened: u64 = nodes.iter().map(|n| n.network.stats().connections).sum();
        let rpcs: u64 = nodes.iter().map(|n| n.network.stats().rpcs_ok).sum();
        println!("raftnet: {opened} connections carried {rpcs} RPCs");
        assert!(opened <= 12, "{opened} connections for {rpcs} RPCs");
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_without_a_cluster_certificate_are_refused() {
    bounded(async {
        let ca = Ca::live(2);
        let (nodes, _) = start_cluster(&ca).await;
        let target = &nodes[1];
        let before = target.server.stats().handshakes_failed;

        // A self-made certificate, with the right name for its own key: only the issuer is wrong.
        let key = KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![node_dns_name(node_id_of_key(&key))]).expect("params");
        let self_made = params.self_signed(&key).expect("self-signed").der().clone();
        let (mallory, mallory_id, _) = outsider(ca.ca_der(), self_made, &key);
        let refused = vote_to(&mallory, mallory_id, target).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");

        // A certificate of another cluster's CA.
        let other = Ca::live(3);
        let (key, cert) = other.issue();
        let (stranger, stranger_id, _) = outsider(ca.ca_der(), cert, &key);
        let refused = vote_to(&stranger, stranger_id, target).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");

        // No certificate at all: the handshake or the first read fails, no answer comes back.
        let config = client_config_builder(ca.ca_der(), Revocations::new()).expect("builder").with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(target.addr).await.expect("tcp");
        if let Ok(mut stream) = connector.connect(server_name(Some(target.id.node_id())), tcp).await {
            let request = RequestFrame { id: 1, request: Request::Vote(stale_vote(target.id)) };
            let bytes = frame::encode_frame(&request).expect("encode");
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            let mut reply = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
                .await
                .expect("server closes");
            assert!(read.is_err() || reply.is_empty(), "got an answer without a certificate: {reply:?}");
        }

        eventually(|| target.server.stats().handshakes_failed >= before + 3).await;
        assert_eq!(target.server.stats().handshakes_failed, before + 3, "three refused handshakes counted");

        // The client side: a cluster node answering at an address where membership says
        // another node lives is refused (the client names the node id it dials).
        let (key, cert) = ca.issue();
        let (member, member_id, _) = outsider(ca.ca_der(), cert, &key);
        let mut misdirected = member.clone().new_client(nodes[0].id, &ShoalNode::new("moved", nodes[1].addr)).await;
        let refused = misdirected.vote(stale_vote(member_id), rpc_option()).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");
        assert_eq!(member.stats().handshakes_failed, 1);
        probe(&member, &nodes[1]).await.expect("the right name is served");
        let _ = member_id;

        // The cluster did not notice.
        let leader = leader_of(&nodes, None).await;
        write_everywhere(&nodes, leader, 3).await;
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_node_is_refused() {
    bounded(async {
        let ca = Ca::live(4);
        let (nodes, _) = start_cluster(&ca).await;
        let target = &nodes[2];
        let (key, cert) = ca.issue();
        let (dave, dave_id, _) = outsider(ca.ca_der(), cert, &key);
        // With a valid certificate the Raft port answers.
        probe(&dave, target).await.expect("answered before revocation");
        for node in &nodes {
            node.revoked.revoke(dave_id.node_id());
        }
        // Dave's connection opened before the revocation is cut at its next request, and
        // the client's redial is refused at the handshake.
        let refused = probe(&dave, target).await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(target.server.stats().revoked, 1);
        // TLS 1.3: the client may see the alert before the server task counts it.
        eventually(|| target.server.stats().handshakes_failed >= 1).await;
        assert!(target.server.stats().handshakes_failed >= 1);
        // A fresh connection is refused too.
        dave.close_all();
        let refused = probe(&dave, target).await;
        assert!(refused.is_err(), "{refused:?}");
        // Members are unaffected.
        let leader = leader_of(&nodes, None).await;
        write_everywhere(&nodes, leader, 4).await;
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_voter_cannot_run_for_leader_nor_speak_as_another_node() {
    bounded(async {
        let ca = Ca::live(6);
        let (nodes, _) = start_cluster(&ca).await;
        let target = &nodes[1];
        let (key, cert) = ca.issue();
        let (mallory, mallory_id, _) = outsider(ca.ca_der(), cert, &key);
        let before = target.server.stats();
        // A worker's certificate asking for votes as itself: not a voter.
        let refused = vote_to(&mallory, mallory_id, target).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");
        eventually(|| target.server.stats().refused >= before.refused + 1).await;
        // Speaking as a voter (the leader's id) over its own certificate.
        mallory.close_all();
        let refused = vote_to(&mallory, nodes[0].id, target).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");
        eventually(|| target.server.stats().refused >= before.refused + 2).await;
        assert_eq!(target.server.stats().refused, before.refused + 2, "both refusals counted");
        assert_eq!(target.server.stats().handshakes_failed, before.handshakes_failed, "refused by role, not by TLS");
        // It may still forward a write (a user's command through a worker), and the
        // cluster did not notice.
        mallory.close_all();
        probe(&mallory, target).await.expect("a forwarded write is answered");
        let leader = leader_of(&nodes, None).await;
        write_everywhere(&nodes, leader, 6).await;
        shutdown(nodes).await;
    })
    .await;
}

/// Entries claiming `term` from `from`, appending nothing.
fn entries_from(from: RaftNodeId, term: u64) -> shoal_consensus::openraft::raft::AppendEntriesRequest<TypeConfig> {
    shoal_consensus::openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(term, from),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_certificate_cannot_lead_and_a_managers_is_heard() {
    bounded(async {
        let ca = Ca::live(7);
        let (nodes, _) = start_cluster(&ca).await;
        let target = &nodes[2];
        let leader_before = leader_of(&nodes, None).await.id;
        // The target has heard from the leader: its term is the cluster's.
        eventually(|| target.raft.metrics().borrow_watched().current_leader == Some(leader_before)).await;
        let term_before = target.raft.metrics().borrow_watched().current_term;
        assert!(term_before >= 1, "the target knows the leader's term");
        let before = target.server.stats();
        // A worker's certificate, speaking as itself, claims a far higher term as leader.
        let (key, cert) = ca.join(shoal_pki::NodeRole::Worker, std::time::SystemTime::now());
        let (worker, worker_id, _) = outsider(ca.ca_der(), cert, &key);
        let mut client = worker.clone().new_client(target.id, &ShoalNode::new("t", target.addr)).await;
        let refused = client.append_entries(entries_from(worker_id, 1_000), rpc_option()).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");
        eventually(|| target.server.stats().refused > before.refused).await;
        assert_eq!(target.server.stats().refused, before.refused + 1, "the refusal is counted");
        assert_eq!(target.server.stats().handshakes_failed, before.handshakes_failed, "refused by role, not by TLS");
        // The follower never saw the term: openraft was not asked.
        let metrics = target.raft.metrics().borrow_watched().clone();
        assert!(metrics.current_term < 1_000, "term {} taken from a worker", metrics.current_term);
        assert!(metrics.current_term >= term_before);
        assert_ne!(metrics.current_leader, Some(worker_id), "the worker became this follower's leader");
        // A manager's certificate that is not (yet) a voter is heard, as a leader just
        // promoted would be: openraft answers it (and rejects its stale term itself).
        let (key, cert) = ca.issue();
        let (manager, manager_id, _) = outsider(ca.ca_der(), cert, &key);
        let mut client = manager.clone().new_client(target.id, &ShoalNode::new("t", target.addr)).await;
        let answered = client.append_entries(entries_from(manager_id, 0), rpc_option()).await;
        assert!(answered.is_ok(), "a manager's entries reach openraft: {answered:?}");
        assert_eq!(target.server.stats().refused, before.refused + 1, "nothing more refused");
        // The cluster did not notice: writes commit everywhere.
        let leader = leader_of(&nodes, None).await;
        assert_ne!(leader.id, worker_id);
        write_everywhere(&nodes, leader, 7).await;
        shutdown(nodes).await;
    })
    .await;
}

/// Opens an authenticated connection to `target`, writes `bytes` (then closes the sending
/// side if `close`), and checks that the server closes the connection without answering.
async fn send_bad(tls: &MutualTls, target: &Node, bytes: &[u8], close: bool) {
    let tcp = TcpStream::connect(target.addr).await.expect("tcp");
    let (mut stream, server) = tls.connect(tcp, Some(target.id.node_id())).await.expect("authenticated");
    assert_eq!(server, target.id.node_id());
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    if close {
        stream.shutdown().await.expect("close sending side");
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the server closes the connection");
    assert!(read.is_err() || reply.is_empty(), "the server answered a bad frame: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_close_that_connection_and_nothing_else() {
    bounded(async {
        let ca = Ca::live(5);
        let (nodes, _) = start_cluster(&ca).await;
        let leader = leader_of(&nodes, None).await;
        let target = leader;
        let (key, cert) = ca.issue();
        let (tls, _) = endpoint(ca.ca_der(), cert.clone(), &key);
        let (eve, eve_id, _) = outsider(ca.ca_der(), cert, &key);
        // A well-behaved connection, open before and kept across the bad ones.
        probe(&eve, target).await.expect("answered");
        let before = target.server.stats();

        // Garbage: a plausible length, a body that is no request.
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 16]);
        send_bad(&tls, target, &garbage, false).await;
        // Truncated: a frame claiming 100 bytes, 10 sent, then the end of the stream.
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0; 10]);
        send_bad(&tls, target, &truncated, true).await;
        // A header cut short.
        send_bad(&tls, target, &[0, 0], true).await;
        // Oversized: a length prefix far past the limit (never allocated).
        let mut oversized = u32::MAX.to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0xaa; 64]);
        send_bad(&tls, target, &oversized, false).await;
        // A valid frame with trailing bytes inside its length: undecodable too.
        let valid =
            frame::encode_frame(&RequestFrame { id: 9, request: Request::Vote(stale_vote(eve_id)) }).expect("encode");
        let mut padded = u32::try_from(valid.len() - HEADER_BYTES + 3).expect("len").to_be_bytes().to_vec();
        padded.extend_from_slice(&valid[HEADER_BYTES..]);
        padded.extend_from_slice(&[0; 3]);
        send_bad(&tls, target, &padded, false).await;

        let after = target.server.stats();
        println!("raftnet: server counters after bad frames: {after:?}");
        assert_eq!(after.frames_undecodable, before.frames_undecodable + 2);
        assert_eq!(after.frames_truncated, before.frames_truncated + 2);
        assert_eq!(after.frames_too_large, before.frames_too_large + 1);

        // The well-behaved connection still works and was not reopened.
        let eve_before = eve.stats().connections;
        probe(&eve, target).await.expect("still answered");
        assert_eq!(eve.stats().connections, eve_before, "the good connection survived");
        // And the cluster keeps replicating.
        let leader = leader_of(&nodes, None).await;
        write_everywhere(&nodes, leader, 5).await;
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leader_elects_another_and_writes_continue() {
    bounded(async {
        let ca = Ca::live(6);
        let (mut nodes, _) = start_cluster(&ca).await;
        let old = leader_of(&nodes, None).await.id;
        write_everywhere(&nodes, leader_of(&nodes, None).await, 6).await;

        // Kill the leader: its Raft stops, its listener and connections close.
        let index = nodes.iter().position(|n| n.id == old).expect("leader");
        let dead = nodes.remove(index);
        let killed = Instant::now();
        dead.raft.shutdown().await.expect("shutdown");
        drop(dead);

        let leader = leader_of(&nodes, Some(old)).await;
        let failover = killed.elapsed();
        assert_ne!(leader.id, old);
        write_everywhere(&nodes, leader, 7).await;
        println!("raftnet: failover over mutual TLS: new leader with quorum-acked lease {failover:?} after the kill (election timeout 300-600 ms)");
        let failed: u64 = nodes.iter().map(|n| n.network.stats().rpcs_failed).sum();
        assert!(failed > 0, "RPCs to the dead leader failed (and were counted)");
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test]
async fn frame_reader_checks_the_limit_before_reading_and_reports_truncation() {
    bounded(async {
        let timeouts = frame::ReadTimeouts { idle: Some(Duration::from_secs(1)), frame: Duration::from_secs(1) };
        let mut clean: &[u8] = &[];
        assert!(frame::read_frame(&mut clean, 100, timeouts).await.expect("clean end").is_none());
        let mut ok: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert_eq!(frame::read_frame(&mut ok, 100, timeouts).await.expect("frame"), Some(vec![1, 2, 3]));
        let mut big: &[u8] = &[0, 0, 0, 101];
        assert!(matches!(
            frame::read_frame(&mut big, 100, timeouts).await,
            Err(frame::FrameError::TooLarge { len: 101, .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(
            frame::read_frame(&mut short, 100, timeouts).await,
            Err(frame::FrameError::Truncated { got: 1, want: 9 })
        ));
        let mut half_header: &[u8] = &[0, 0];
        assert!(matches!(
            frame::read_frame(&mut half_header, 100, timeouts).await,
            Err(frame::FrameError::Truncated { .. })
        ));
        // A peer that starts a frame and stalls is cut at the frame timeout.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0, 0, 0, 9, 1]).await.expect("write");
        let quick = frame::ReadTimeouts { idle: Some(Duration::from_secs(1)), frame: Duration::from_millis(50) };
        assert!(matches!(frame::read_frame(&mut server, 100, quick).await, Err(frame::FrameError::SlowFrame(_))));
        // And a silent one at the idle timeout.
        let (_client, mut server) = tokio::io::duplex(64);
        let idle = frame::ReadTimeouts { idle: Some(Duration::from_millis(50)), frame: Duration::from_secs(1) };
        assert!(matches!(frame::read_frame(&mut server, 100, idle).await, Err(frame::FrameError::Idle(_))));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_what_openraft_expects() {
    bounded(async {
        let ca = Ca::live(7);
        let (key, cert) = ca.issue();
        let (network, id, _) = outsider(ca.ca_der(), cert.clone(), &key);
        let option = RPCOption::new(Duration::from_millis(400));

        // Nothing listening: unreachable (openraft backs off).
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let mut client = network.clone().new_client(RaftNodeId(NodeId([1; 16])), &ShoalNode::new("gone", addr)).await;
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("nobody there");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

        // Accepts TCP and never answers: a timeout within the RPC's TTL, not a hang.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let mut client = network.clone().new_client(RaftNodeId(NodeId([2; 16])), &ShoalNode::new("mute", addr)).await;
        let started = Instant::now();
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < option.hard_ttl(), "answered within the hard TTL: {:?}", started.elapsed());
        hold.abort();

        // A cluster node that completes the handshake and then never answers (stuck, or gone
        // without a FIN): timeouts; the connection is kept while it may just be slow, and
        // redialled once it has been silent past `silence_timeout`.
        let (mute_key, mute_cert) = ca.issue();
        let mute_id = RaftNodeId(node_id_of_key(&mute_key));
        let (mute_tls, _) = endpoint(ca.ca_der(), mute_cert, &mute_key);
        let mute = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = mute.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = mute.accept().await {
                if let Ok((stream, _)) = mute_tls.accept(tcp).await {
                    held.push(stream);
                }
            }
        });
        let config = ClientConfig { silence_timeout: Duration::from_millis(1000), ..ClientConfig::default() };
        let network = RaftNetwork::new(id, endpoint(ca.ca_der(), cert.clone(), &key).0, config);
        let mut client = network.clone().new_client(mute_id, &ShoalNode::new("mute", addr)).await;
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
        assert_eq!(network.stats().connections, 1, "a merely slow connection is kept");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
        let err = client.vote(stale_vote(id), option.clone()).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
        assert_eq!(network.stats().connections, 2, "a connection silent too long is redialled");
        hold.abort();
    })
    .await;
}

/// A Raft node alone on its port, with `config`.
async fn lone_node(ca: &Ca, config: ServerConfig) -> Node {
    let (key, cert) = ca.issue();
    let (tls, _) = endpoint(ca.ca_der(), cert, &key);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (log, sm) = MemStore::new().open();
    let id = RaftNodeId(node_id_of_key(&key));
    let network = RaftNetwork::new(id, tls.clone(), ClientConfig::default());
    let raft = with_seed(os_seed(), Raft::new(id, raft_config(), network.clone(), log, sm)).await.expect("raft");
    let server = RaftServer::serve(listener, tls, Arc::new(raft.clone()), config).expect("serve");
    Node { id, addr: server.local_addr(), raft, server, network, revoked: Revocations::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_dropped_after_the_handshake() {
    bounded(async {
        let ca = Ca::live(8);
        let target = lone_node(&ca, ServerConfig { max_connections: 1, ..ServerConfig::default() }).await;
        let (key2, cert2) = ca.issue();
        let (first, first_id, _) = outsider(ca.ca_der(), cert2, &key2);
        assert!(!vote_to(&first, first_id, &target).await.expect("first connection served"));
        // The session place is taken: a second member is closed right after its handshake.
        let (key3, cert3) = ca.issue();
        let (second, second_id, _) = outsider(ca.ca_der(), cert3, &key3);
        assert!(vote_to(&second, second_id, &target).await.is_err(), "a second session past the cap");
        eventually(|| target.server.stats().over_capacity >= 1).await;
        // A stranger's silent TCP connection never held a session place: it is closed when
        // it sends nothing within the first-byte timeout.
        let mut tcp = TcpStream::connect(target.addr).await.expect("tcp");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await.expect("closed");
        assert!(sink.is_empty());
        // The first connection is still served.
        assert!(!vote_to(&first, first_id, &target).await.expect("still served"));
        target.raft.shutdown().await.expect("shutdown");
    })
    .await;
}

/// Issue 13's pre-auth exhaustion: 1,000 half-open TCP connections from one address (they
/// connect and send nothing) while a member keeps talking to the node. The flood holds only
/// its address's share of unauthenticated places; the rest are closed at accept, and the
/// member's RPCs (a new TLS connection each, from another address) are served. Prints the
/// figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_from_one_address_do_not_keep_a_member_out() {
    bounded(async {
        let ca = Ca::live(10);
        let target = lone_node(&ca, ServerConfig::default()).await;
        let (key, cert) = ca.issue();
        let (member, member_id, _) = outsider(ca.ca_der(), cert, &key);
        let quiet = Instant::now();
        assert!(!vote_to(&member, member_id, &target).await.expect("served before the flood"));
        let before = quiet.elapsed();
        member.close_all();
        let flood_from: std::net::IpAddr = [127, 0, 0, 3].into();
        let mut flood = Vec::new();
        let started = Instant::now();
        for _ in 0..1_000 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(flood_from, 0)).expect("bind 127.0.0.3");
            match socket.connect(target.addr).await {
                Ok(tcp) => flood.push(tcp),
                Err(e) => panic!("connection {} of the flood: {e}", flood.len() + 1),
            }
        }
        let opened = started.elapsed();
        eventually(|| target.server.port_stats().over_ip_share + target.server.port_stats().connections >= 1_001).await;
        let (held, _) = target.server.unauthenticated();
        let during = Instant::now();
        for _ in 0..5 {
            member.close_all();
            assert!(!vote_to(&member, member_id, &target).await.expect("a member is served during the flood"));
        }
        let per_rpc = during.elapsed() / 5;
        let stats = target.server.port_stats();
        println!(
            "1000 half-open connections from 127.0.0.3 (opened in {opened:?}): {held} held an unauthenticated place, {} closed at accept; \
             a member's new TLS connection + vote: {before:?} before, {per_rpc:?} during the flood",
            stats.over_ip_share
        );
        let limits = crate::admission::Limits::default();
        assert!(held <= limits.per_ip, "the flood held {held} places, more than one address's share ({})", limits.per_ip);
        assert!(stats.over_ip_share >= 1_000 - limits.per_ip as u64, "{stats:?}");
        drop(flood);
        target.raft.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_learner_catches_up_from_a_snapshot_over_tls() {
    bounded(async {
        let ca = Ca::live(9);
        let config = compacting_config();
        let (mut nodes, _) = start_cluster_with(&ca, config.clone()).await;
        let leader = leader_of(&nodes, None).await;
        let mut last = None;
        for n in 0..30 {
            last = Some(write(&leader.raft, register(n)).await.log_id.index);
        }
        leader
            .raft
            .wait(WAIT)
            .metrics(|m| m.snapshot.is_some() && m.purged.is_some(), "snapshot and purge")
            .await
            .expect("leader compacted its log");
        let reference = state_of(&leader.raft).await;

        let learner = start_node_with(&ca, config).await;
        let started = Instant::now();
        leader.raft.add_learner(learner.id, ShoalNode::new("learner", learner.addr), true).await.expect("add learner");
        learner.raft.wait(WAIT).applied_index_at_least(last, "learner applied").await.expect("learner caught up");
        let caught_up = started.elapsed();
        let learned = state_of(&learner.raft).await;
        assert_eq!(learned.nodes, reference.nodes, "the learner holds the whole state");
        assert!(learner.raft.metrics().borrow_watched().snapshot.is_some(), "it came as a snapshot");
        // Snapshots travel on their own connection, next to the replication one.
        let stats = learner.server.stats();
        assert!(stats.connections >= 2, "{stats:?}");
        println!(
            "raftnet: learner caught up from a snapshot over TLS in {caught_up:?} ({} bytes of state)",
            shoal_consensus::codec::encode_snapshot(&reference).map(|b| b.len()).unwrap_or(0)
        );
        nodes.push(learner);
        shutdown(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_writes_to_the_leader_and_a_non_leader_names_it() {
    bounded(async {
        let ca = Ca::live(1);
        let (nodes, _) = start_cluster(&ca).await;
        let leader = leader_of(&nodes, None).await;
        let follower = nodes.iter().find(|n| n.id != leader.id).expect("a follower");
        let other = nodes.iter().find(|n| n.id != leader.id && n.id != follower.id).expect("another follower");
        let leader_node = ShoalNode::new("leader", leader.addr);

        // Forwarded to the leader: committed there, the state machine's answer comes back,
        // and every replica applies it.
        let answer = follower.network.forward(leader.id, &leader_node, register(40), Duration::from_secs(10)).await.expect("network");
        let committed = answer.expect("committed");
        assert_eq!(committed.response, Ok(Applied::NodeRegistered { new: true }));
        // The index is the entry's: the leader's metrics (published asynchronously) reach it.
        leader.raft.wait(WAIT).applied_index_at_least(Some(committed.index), "applied").await.expect("the returned index is applied");
        assert!(committed.index >= 1);
        let again = follower.network.forward(leader.id, &leader_node, register(40), Duration::from_secs(10)).await.expect("network");
        assert_eq!(again.map(|c| c.response), Ok(Ok(Applied::NodeRegistered { new: false })), "the same write is applied as an update");
        for node in &nodes {
            node.raft.wait(WAIT).metrics(|m| m.last_applied.is_some(), "applied").await.expect("applied");
        }
        let leader_index = leader.raft.metrics().borrow_watched().last_applied;
        for node in &nodes {
            node.raft.wait(WAIT).applied_index_at_least(leader_index.map(|l| l.index), "applied").await.expect("applied");
            assert!(state_of(&node.raft).await.nodes.contains_key(&NodeId([40; 16])));
        }

        // A rejected command comes back as the state machine's rejection.
        let bad = Command::RecordIssued { node: NodeId([99; 16]), cert: shoal_consensus::IssuedCert { serial: vec![1], not_after: 1 } };
        let refused = follower.network.forward(leader.id, &leader_node, bad, Duration::from_secs(10)).await.expect("network");
        assert!(matches!(refused, Ok(Committed { response: Err(_), .. })), "{refused:?}");

        // Sent to a follower, the write is refused and the leader named.
        let other_node = ShoalNode::new("other", other.addr);
        let refused = follower.network.forward(other.id, &other_node, register(41), Duration::from_secs(10)).await.expect("network");
        assert_eq!(refused, Err(ForwardRefused::NotLeader { leader: Some(leader.id.0) }));
        shutdown(nodes).await;
    })
    .await;
}

/// Issue 13: a worker's certificate (here a learner of the cluster) forwards writes, and
/// the leader refuses what only a manager may ask — `Revoke` of a voter, `CreateService`,
/// tasks reported for another node — answering why on the same connection; its own reports
/// and a joiner's registration go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_forwarded_writes_are_limited_to_its_own() {
    bounded(async {
        let ca = Ca::live(11);
        let (mut nodes, _) = start_cluster(&ca).await;
        let leader = leader_of(&nodes, None).await;
        let leader_node = ShoalNode::new("leader", leader.addr);
        let voter = nodes.iter().find(|n| n.id != leader.id).expect("a voter").id;
        let worker = start_node_with(&ca, raft_config()).await;
        leader.raft.add_learner(worker.id, ShoalNode::new("worker", worker.addr), true).await.expect("add learner");
        let forward = |cmd: Command| worker.network.forward(leader.id, &leader_node, cmd, Duration::from_secs(10));
        let service = shoal_consensus::ServiceDef {
            name: "web".into(),
            spec: Default::default(),
            mode: shoal_consensus::state::Mode::Replicated(1),
            constraints: vec![],
            reserve_cpu_millis: 0,
            reserve_memory_bytes: 0,
            restart: shoal_consensus::state::RestartPolicy::Always,
        };
        for (what, cmd) in [
            ("revoke a voter", Command::Revoke { node: voter.0 }),
            ("create a service", Command::CreateService { service, now_ms: 1 }),
            ("report for another node", Command::ReportTasks { node: voter.0, reports: vec![], now_ms: 1 }),
        ] {
            let answer = forward(cmd).await.expect("network");
            let Err(ForwardRefused::NotAllowed(why)) = &answer else { panic!("a worker could {what}: {answer:?}") };
            assert!(why.contains("is a worker") && why.contains("must come from a manager"), "{what}: {why}");
        }
        for (what, cmd) in [
            ("report its own tasks", Command::ReportTasks { node: worker.id.0, reports: vec![], now_ms: 1 }),
            ("register a joiner", register(42)),
        ] {
            let answer = forward(cmd).await.expect("network");
            assert!(matches!(answer, Ok(Committed { .. })), "a worker could not {what}: {answer:?}");
        }
        assert!(leader.server.stats().refused >= 3, "{:?}", leader.server.stats());
        assert!(!state_of(&leader.raft).await.revoked.contains(&voter.0), "the voter was revoked");
        nodes.push(worker);
        shutdown(nodes).await;
    })
    .await;
}
