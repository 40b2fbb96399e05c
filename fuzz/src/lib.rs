//! Fixtures shared by the fuzz targets: one cluster's keys, a membership core, and the way
//! a target splits its input into several messages. Built once per process (key generation
//! is far slower than one fuzz run).

use shoal_wire::NodeId;
use std::sync::OnceLock;

/// The gossip key the fuzzed node and the harness share, the fuzzed node's rng, its
/// address and its membership core: discovery's own fixtures.
pub use shoal_discovery::testing::{addr, core as membership, rng, Rng, GOSSIP_KEY};
/// The fuzzed node's id.
pub const ME: NodeId = NodeId([1; 16]);
/// The clock the fuzzed node reads at the start of a run (ms).
pub const NOW_MS: u64 = 1_750_000_000_000;

/// One cluster (CA, issuer, join secret) for every run of a process.
pub fn cluster() -> &'static shoal_pki::testing::Cluster {
    static CLUSTER: OnceLock<shoal_pki::testing::Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| shoal_pki::testing::Cluster::new(1))
}

/// A joiner's key and the request it sent, fixed for a process.
pub fn joiner() -> &'static (rcgen::KeyPair, shoal_pki::JoinRequest) {
    static JOINER: OnceLock<(rcgen::KeyPair, shoal_pki::JoinRequest)> = OnceLock::new();
    JOINER.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let request = shoal_pki::JoinRequest::new(&cluster().secret, &key, &mut rng(2)).expect("request");
        (key, request)
    })
}

/// Splits `data` into messages: each is one op byte, a little-endian u16 length and that
/// many bytes (cut short at the end of the input). Lets one input be a conversation.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), &[][..]),
        };
        let (message, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((op, message))
    })
}

/// The inverse of [`messages`], for writing seeds.
pub fn conversation<'a>(messages: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, message) in messages {
        out.push(op);
        let len = u16::try_from(message.len()).expect("a seed message fits a u16 length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(message);
    }
    out
}

#[cfg(test)]
mod seeds;
