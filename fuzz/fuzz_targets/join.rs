//! The join protocol's messages, both ends. The first byte picks the path:
//! 0 a request as the join port reads it (the HMAC usually stops it); 1 a request re-signed
//! with the cluster's key, so the fuzzer reaches the issuer's CSR checks; 2 a reply as the
//! joiner reads it; 3 a reply whose certificate and CA bytes are HMAC'd with the cluster's
//! key, so the fuzzer reaches the joiner's certificate checks. Nothing may panic, and a
//! grant is only ever given for a well-formed CSR of the requester's own key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::{cluster, joiner, messages, rng};
use shoal_pki::{CertInfo, JoinRequest, JoinResponse, NodeGrant, NodeRole};
use shoal_transport::joinnet::JoinReply;
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::time::Duration;

fn answer(request: &JoinRequest) {
    let ca = cluster();
    let grant = NodeGrant { role: NodeRole::Worker, addresses: vec![], names: vec![] };
    let now = shoal_pki::testing::t0() + Duration::from_secs(60);
    if let Ok(response) = ca.issuer.answer_join(request, &grant, &BTreeSet::new(), now, &mut rng(3)) {
        let info = CertInfo::parse(&response.cert_der).expect("an issued certificate parses");
        assert_eq!(info.node_id, request.node_id, "a certificate for another node than asked");
        assert_eq!(info.role, Some(NodeRole::Worker));
    }
}

fn joiner_reads(response: &JoinResponse) {
    let (key, request) = joiner();
    let _ = response.verify(&cluster().secret, request, key);
}

fuzz_target!(|data: &[u8]| {
    let Some((&path, rest)) = data.split_first() else { return };
    match path % 4 {
        0 => {
            if let Ok(request) = JoinRequest::from_bytes(rest) {
                answer(&request);
            }
        }
        1 => {
            let (node, rest) = rest.split_at(rest.len().min(16));
            let (nonce, csr) = rest.split_at(rest.len().min(32));
            let mut id = [0u8; 16];
            id.iter_mut().zip(node).for_each(|(a, b)| *a = *b);
            let mut n = [0u8; 32];
            n.iter_mut().zip(nonce).for_each(|(a, b)| *a = *b);
            answer(&JoinRequest::signed(&cluster().secret, NodeId(id), csr.to_vec(), n));
        }
        2 => {
            if let Ok(JoinReply::Granted(response)) = JoinReply::from_bytes(rest) {
                joiner_reads(&response);
            }
        }
        _ => {
            let mut parts = messages(rest).map(|(_, bytes)| bytes.to_vec());
            let (cert, ca) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let (_, request) = joiner();
            joiner_reads(&cluster().sign_response(&request.nonce, cert, ca));
        }
    }
});
