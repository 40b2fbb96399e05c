//! Writes the seed corpus (`corpus/<target>/seed-*`): real messages of each kind, made by
//! the project's own encoders and a real two-node gossip exchange, so the fuzzers start
//! from valid shapes. Run by hand when a message format changes:
//! `cargo test --manifest-path fuzz/Cargo.toml --lib -- --ignored write_seeds`.

use super::*;
use shoal_consensus::codec::{encode_command, encode_snapshot};
use shoal_consensus::openraft::raft::{AppendEntriesRequest, VoteRequest};
use shoal_consensus::types::Vote;
use shoal_consensus::{ClusterState, Command, NodeRecord, RaftNodeId};
use shoal_discovery::membership::Effect;
use shoal_discovery::seal::{Addressee, Sealer};
use shoal_discovery::signing::Context;
use shoal_discovery::testing::signatures;
use shoal_discovery::{ClusterId, PeerHint};
use shoal_transport::frame::{encode_frame, HEADER_BYTES};
use shoal_transport::joinnet::JoinReply;
use shoal_transport::raftnet::rpc::{Request, RequestFrame};
use std::path::Path;

fn write(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
    }
}

fn body(frame: Vec<u8>) -> Vec<u8> {
    frame[HEADER_BYTES..].to_vec()
}

/// What node 2 says to node 1 (`ME`) while they meet, gossip, and node 2 leaves: each
/// datagram opened with the shared key, as (op, plaintext) for the membership target.
fn gossip_to_me() -> Vec<(u8, Vec<u8>)> {
    let (mut me, mut peer) = (membership(1), membership(2));
    let mut opener = Sealer::new(GOSSIP_KEY);
    let mut said = Vec::new();
    let mut now = NOW_MS;
    let mut to_me = peer.start(now);
    let mut to_peer = me.start(now);
    to_me.extend(peer.handle_discovered(now, PeerHint { cluster: ClusterId([1; 8]), node: ME, addr: addr(1) }));
    for round in 0..12 {
        now += 300;
        let mut next_to_peer = Vec::new();
        for effect in to_me.drain(..) {
            if let Effect::Send { to, packet } = effect {
                if to == addr(1) {
                    if let Ok((plaintext, addressee)) = opener.open(now, &ME.0, &packet) {
                        said.push((u8::from(addressee == Addressee::Anyone), plaintext));
                        next_to_peer.extend(me.handle_datagram(now, addr(2), &packet));
                    }
                }
            }
        }
        for effect in to_peer.drain(..).chain(next_to_peer) {
            if let Effect::Send { to, packet } = effect {
                if to == addr(2) {
                    to_me.extend(peer.handle_datagram(now, addr(1), &packet));
                }
            }
        }
        to_me.extend(peer.handle_timer(now, shoal_discovery::membership::MemberTimer::Tick));
        to_peer.extend(me.handle_timer(now, shoal_discovery::membership::MemberTimer::Tick));
        if round == 9 {
            to_me.extend(peer.leave(now));
        }
    }
    said
}

fn record(n: u8) -> NodeRecord {
    NodeRecord { name: format!("lab{n}"), addr: addr(n), labels: [("disk".into(), "ssd".into())].into() }
}

#[test]
#[ignore = "writes the committed corpus; run by hand"]
fn write_seeds() {
    let gossip = gossip_to_me();
    assert!(gossip.len() >= 4, "the exchange said too little: {}", gossip.len());
    write("sealed_datagram", gossip.iter().map(|(_, p)| p.clone()).chain([Vec::new(), vec![1; 60]]).collect());
    let mut conversations: Vec<Vec<u8>> = gossip.iter().map(|(op, p)| conversation([(*op, p.as_slice())])).collect();
    conversations.push(conversation(gossip.iter().map(|(op, p)| (*op, p.as_slice())).chain([(3, &[10u8][..]), (5, &[][..])])));
    write("membership", conversations);

    let mut facts = shoal_discovery::testing::facts(NodeId([2; 16]), addr(2), 3);
    facts.labels.insert("zone".into(), "attic".into());
    facts.in_cluster = true;
    let facts = facts.encode().expect("facts");
    let by_itself = shoal_discovery::signing::sign(signatures(2).as_ref(), Context::Facts, facts.clone());
    let by_another = shoal_discovery::signing::sign(signatures(3).as_ref(), Context::Facts, facts.clone());
    let signed = |s| shoal_discovery::codec::encode_signed_facts(&s).expect("signed facts");
    write("facts", vec![facts, signed(by_itself), signed(by_another)]);

    let ca = cluster();
    let (key, request) = joiner();
    let grant = shoal_pki::NodeGrant { role: shoal_pki::NodeRole::Worker, addresses: vec![], names: vec![] };
    let now = shoal_pki::testing::t0() + std::time::Duration::from_secs(60);
    let response = ca.issuer.answer_join(request, &grant, &Default::default(), now, &mut rng(3)).expect("answer");
    response.verify(&ca.secret, request, key).expect("the joiner accepts it");
    let signed_fields = [&request.node_id.0[..], &request.nonce[..], &request.csr_der[..]].concat();
    write(
        "join",
        vec![
            [&[0u8][..], &request.to_bytes().expect("request")].concat(),
            [&[1u8][..], &signed_fields].concat(),
            [&[2u8][..], &JoinReply::Granted(response.clone()).to_bytes().expect("reply")].concat(),
            [&[2u8][..], &JoinReply::Refused("the join token is wrong".into()).to_bytes().expect("reply")].concat(),
            [&[3u8][..], &conversation([(0, &response.cert_der[..]), (0, &response.ca_der[..])])].concat(),
        ],
    );
    write("certificate", vec![response.cert_der.clone(), response.ca_der.clone(), ca.issue().1.to_vec()]);

    let leader = RaftNodeId(shoal_wire::NodeId([1; 16]));
    let requests = [
        Request::Vote(VoteRequest::new(Vote::new(2, leader), None)),
        Request::AppendEntries(AppendEntriesRequest { vote: Vote::new_committed(2, leader), prev_log_id: None, entries: vec![], leader_commit: None }),
        Request::Forward(Command::RegisterNode { id: ME, record: record(1) }),
        Request::Forward(Command::Revoke { node: shoal_wire::NodeId([2; 16]) }),
    ];
    write("raft_frame", requests.into_iter().enumerate().map(|(i, request)| body(encode_frame(&RequestFrame { id: i as u64, request }).expect("frame"))).collect());

    let commands = [
        Command::RegisterNode { id: ME, record: record(1) },
        Command::RegisterNode { id: shoal_wire::NodeId([2; 16]), record: record(2) },
        Command::Revoke { node: shoal_wire::NodeId([2; 16]) },
        Command::RemoveService { name: "web".into(), now_ms: 5 },
    ];
    let encoded: Vec<Vec<u8>> = commands.iter().map(|c| encode_command(c).expect("command")).collect();
    let mut state = ClusterState::default();
    for c in commands.iter().take(2) {
        let _ = state.apply(c.clone());
    }
    let snapshot = encode_snapshot(&state).expect("snapshot");
    let mut seeds: Vec<Vec<u8>> = encoded.iter().map(|c| [&[0u8][..], &conversation([(0, c.as_slice())])].concat()).collect();
    seeds.push([&[0u8][..], &conversation(encoded.iter().map(|c| (0, c.as_slice())))].concat());
    seeds.push([&[1u8][..], &conversation([(0, snapshot.as_slice()), (0, encoded[2].as_slice())])].concat());
    write("command", seeds);

    let api = [
        "\x01/v1.41/containers/create?name=web\n{\"Image\":\"busybox\",\"Cmd\":[\"httpd\",\"-f\"],\"Env\":[\"A=1\"],\"HostConfig\":{\"PortBindings\":{\"80/tcp\":[{\"HostPort\":\"8080\"}]},\"RestartPolicy\":{\"Name\":\"always\"}},\"Labels\":{\"a\":\"b\"}}",
        "\x00/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D\n{\"label\":[\"a=b\"]}",
        "\x11/v1.41/networks/create\n{\"Name\":\"back\",\"Driver\":\"bridge\",\"Labels\":{\"x\":\"y\"}}",
        "\x21/v1.41/containers/web/exec\n{\"Cmd\":[\"echo\",\"hi\"],\"AttachStdout\":true,\"Tty\":false}",
        "\x00/v1.41/containers/web/logs?stdout=1&stderr=1&follow=1&tail=10&timestamps=1\nconstraint:node.labels.disk==ssd",
        "\x02/containers/web?force=1&v=1\n",
        "\x00/_ping\n",
    ];
    write("docker_api", api.iter().map(|s| s.as_bytes().to_vec()).collect());
}
