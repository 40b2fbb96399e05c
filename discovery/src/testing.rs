//! Fixtures for tests, fuzzing and the simulator's own tests: one cluster's keys, a node's
//! identity and facts, a membership core, and the forgeries an insider (a holder of the
//! gossip key who is not the node) would try. Not part of the API.

use crate::identity::{NodeFacts, ShoalId};
use crate::membership::{Envelope, Membership, MembershipConfig};
use crate::seal::Sealer;
use crate::secret::ClusterId;
use crate::signing::{self, Context, KeyedHashSignatures, Signatures, Signed};
use rand::SeedableRng;
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The gossip key of the fixtures' cluster.
pub const GOSSIP_KEY: [u8; 32] = [7; 32];
/// The fixtures' cluster id.
pub const CLUSTER: ClusterId = ClusterId([1; 8]);

pub type Rng = rand::rngs::StdRng;

pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// 10.0.0.n:7480.
pub fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7480))
}

/// Node `n`'s identity: id `[n; 16]`, address [`addr`], first boot.
pub fn id(n: u8) -> ShoalId {
    ShoalId { node: NodeId([n; 16]), addr: addr(n), bump: ShoalId::first_bump(1) }
}

/// Facts of `node` at `addr` with `seq`, named `n<first byte>`.
pub fn facts(node: NodeId, addr: SocketAddr, seq: u64) -> NodeFacts {
    NodeFacts {
        node,
        seq,
        name: format!("n{}", node.0[0]),
        gossip_addr: addr,
        labels: BTreeMap::new(),
        version: "t".into(),
        boot: 1,
        left: false,
        in_cluster: false,
        resources: Default::default(),
    }
}

/// Node `n`'s signatures in the fixtures' cluster (the simulator's scheme).
pub fn signatures(n: u8) -> Arc<KeyedHashSignatures> {
    Arc::new(KeyedHashSignatures::new(GOSSIP_KEY, NodeId([n; 16])))
}

/// A membership core for node `n` (see [`id`]), LAN preset for 4 nodes.
pub fn core(n: u8) -> Membership<Rng> {
    let me = id(n);
    let own = facts(me.node, me.addr, u64::from(me.bump) << 16);
    Membership::new(MembershipConfig::lan(4), me, own, CLUSTER, GOSSIP_KEY, signatures(n), rng(u64::from(n)))
}

/// What an insider tries, each sealed to `to` (the node being lied to) with `gossip_key`,
/// signed by `forger` (the insider's own key; `victim_key` is the victim's public key,
/// which anyone can read off its certificate):
/// 1. the victim's leave at generation `u32::MAX` (would silence it for good);
/// 2. the same with the victim's public key beside the forger's signature;
/// 3. the victim's facts at `seq: u64::MAX` saying its engine is down and it moved to
///    `moved_to` (would freeze its facts and move its Raft address);
/// 4. the same with the victim's public key.
#[allow(clippy::too_many_arguments)] // a fixture: every part of the lie is the caller's to choose
pub fn forgeries(
    gossip_key: [u8; 32],
    now_ms: u64,
    rng: &mut Rng,
    to: NodeId,
    forger: &dyn Signatures,
    victim: &NodeFacts,
    victim_key: &[u8],
    moved_to: SocketAddr,
) -> Vec<Vec<u8>> {
    let leave_id = ShoalId { node: victim.node, addr: moved_to, bump: u32::MAX };
    let mut lie = victim.clone();
    lie.seq = u64::MAX;
    lie.gossip_addr = moved_to;
    lie.resources.engine_ok = false;
    let bodies = [
        (Context::Leave, shoal_wire::encode::<_, { crate::membership::MAX_ID_LEN }>(&leave_id).expect("encode id")),
        (Context::Facts, lie.encode().expect("encode facts")),
    ];
    let sealer = Sealer::new(gossip_key);
    let mut out = Vec::new();
    for (context, body) in bodies {
        let own = signing::sign(forger, context, body);
        let borrowed = Signed { key: victim_key.to_vec(), ..own.clone() };
        for signed in [own, borrowed] {
            let envelope = match context {
                Context::Leave => Envelope::Leave(signed),
                Context::Facts => Envelope::Facts(signed),
            };
            let plaintext = shoal_wire::encode::<_, { crate::seal::MAX_PLAINTEXT_LEN }>(&envelope).expect("encode envelope");
            out.push(sealer.seal(now_ms, rng, &to.0, &plaintext).expect("seal"));
        }
    }
    out
}
