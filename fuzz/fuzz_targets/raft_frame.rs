//! A Raft connection's frames as the server and the client read them: decoded with the RPC
//! bound, then put through the server's checks (who may send what) for a manager and a
//! worker peer, as `raftnet::server` does before openraft sees a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_control::{check_forward, MembershipView};
use shoal_pki::NodeRole;
use shoal_transport::frame::decode_body;
use shoal_transport::raftnet::authz::{check, claimed_sender, Peer};
use shoal_transport::raftnet::rpc::{Request, RequestFrame, ResponseFrame};
use shoal_wire::NodeId;

fuzz_target!(|data: &[u8]| {
    let voters: std::collections::BTreeSet<NodeId> = [NodeId([1; 16]), NodeId([2; 16])].into();
    let view = MembershipView { voters: voters.clone(), members: voters.clone() };
    if let Ok(RequestFrame { request, .. }) = decode_body::<RequestFrame>(data) {
        let _ = request.kind();
        for peer in [Peer { id: NodeId([1; 16]), role: Some(NodeRole::Manager) }, Peer { id: NodeId([9; 16]), role: Some(NodeRole::Worker) }] {
            let verdict = check(peer, &request, &voters);
            // Whatever speaks as a node other than the peer is refused.
            if claimed_sender(&request).is_some_and(|claimed| claimed != peer.id) {
                assert!(verdict.is_err(), "{request:?} accepted from {peer:?}");
            }
            if let Request::Forward(cmd) = &request {
                let _ = check_forward(peer.id, cmd, &view);
            }
        }
    }
    let _ = decode_body::<ResponseFrame>(data);
});
