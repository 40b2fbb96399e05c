//! Glue between foca and shoal's one codec: foca headers and member updates encoded with
//! `shoal_wire`, and the custom-broadcast handler that carries [`NodeFacts`].

use crate::identity::{FactsDecodeError, NodeFacts, ShoalId, MAX_FACTS_LEN};
use crate::signing::{verify, Context, SharedSignatures, Signatures, Signed, MAX_PUBLIC_KEY_LEN, MAX_SIGNATURE_LEN};
use bytes::{Buf, BufMut};
use foca::{BroadcastHandler, Header, Invalidates, Member};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bound on one encoded header or member update; both are a few dozen bytes.
const MAX_ITEM_LEN: usize = 512;

/// Errors of [`WireCodec`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] shoal_wire::DecodeError),
    #[error(transparent)]
    Encode(#[from] shoal_wire::EncodeError),
    #[error("not enough room in the packet")]
    NoRoom,
}

/// foca's codec, backed by `shoal_wire`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireCodec;

fn put<T: serde::Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
    let bytes = shoal_wire::encode::<_, MAX_ITEM_LEN>(value)?;
    if buf.remaining_mut() < bytes.len() {
        return Err(CodecError::NoRoom); // nothing written: the buffer stays clean
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
    // foca hands us contiguous data, so the first chunk is the whole rest of the packet.
    let (value, used) = shoal_wire::decode_prefix::<T, MAX_ITEM_LEN>(buf.chunk())?;
    buf.advance(used);
    Ok(value)
}

impl foca::Codec<ShoalId> for WireCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<ShoalId>, buf: impl BufMut) -> Result<(), CodecError> {
        put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<ShoalId>, CodecError> {
        take(buf)
    }

    fn encode_member(&mut self, member: &Member<ShoalId>, buf: impl BufMut) -> Result<(), CodecError> {
        put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<ShoalId>, CodecError> {
        take(buf)
    }
}

/// The latest facts known per node. Shared between the broadcast handler (owned by foca) and
/// the membership core that owns foca: both live in the same task, the mutex is never
/// contended, it only exists because foca gives no access to its handler.
pub type FactsTable = Arc<Mutex<BTreeMap<NodeId, NodeFacts>>>;

/// Most nodes whose facts one node keeps (far above the small clusters shoal is for). Facts
/// of a new node id past it are dropped, so a key holder inventing ids cannot grow the table
/// without bound. (Facts are signed by the node they are about, so such ids would have to
/// be hashes of keys the inventor holds: the bound stops a flood of fresh keys.)
pub const MAX_FACTS_NODES: usize = 1024;

/// Stores facts if they are newer than what is known (and, for a node not known yet, if the
/// table has room). Returns whether they were.
pub fn store_if_newer(table: &FactsTable, facts: NodeFacts) -> bool {
    let mut map = table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match map.get(&facts.node) {
        Some(known) if known.seq >= facts.seq => false,
        None if map.len() >= MAX_FACTS_NODES => {
            tracing::debug!(node = %facts.node.short(), "facts table full: facts of a new node dropped");
            false
        }
        _ => {
            map.insert(facts.node, facts);
            true
        }
    }
}

/// Dissemination key of a facts broadcast: a newer `seq` of the same node replaces an older.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactsKey {
    node: NodeId,
    seq: u64,
}

impl Invalidates for FactsKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.seq >= other.seq
    }
}

/// Longest encoded [`Signed`] facts: the facts, a public key, a signature and their lengths.
pub const MAX_SIGNED_FACTS_LEN: usize = MAX_FACTS_LEN + MAX_PUBLIC_KEY_LEN + MAX_SIGNATURE_LEN + 16;

/// Encodes signed facts (a foca broadcast, or the answer to a pull).
pub fn encode_signed_facts(signed: &Signed) -> Result<Vec<u8>, shoal_wire::EncodeError> {
    shoal_wire::encode::<_, MAX_SIGNED_FACTS_LEN>(signed)
}

/// Whether facts are news: newer than those known of their node (or their node is new).
fn is_newer(table: &FactsTable, facts: &NodeFacts) -> bool {
    let map = table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.get(&facts.node).is_none_or(|known| known.seq < facts.seq)
}

/// What became of facts from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactsVerdict {
    /// Stored (they were news and the node's own word).
    Stored(FactsKey),
    /// Not news (or about this node, or the table is full): nothing changed.
    Stale,
    /// Not signed by the node they are about: nothing changed, counted.
    Forged,
}

/// Takes facts a peer sent (a broadcast or the answer to a pull): about another node,
/// newer than what is known, and signed by that node's own key, or nothing is stored. The
/// signature is checked last, so old news costs no verification.
pub fn accept_peer_facts(table: &FactsTable, sigs: &dyn Signatures, own: NodeId, signed: &Signed) -> Result<FactsVerdict, FactsDecodeError> {
    let facts = NodeFacts::decode(&signed.body)?;
    if facts.node == own || !is_newer(table, &facts) {
        // Facts about us from someone else are stale echoes, or a forgery.
        return Ok(FactsVerdict::Stale);
    }
    if !verify(sigs, Context::Facts, facts.node, signed) {
        return Ok(FactsVerdict::Forged);
    }
    let key = FactsKey { node: facts.node, seq: facts.seq };
    Ok(if store_if_newer(table, facts) { FactsVerdict::Stored(key) } else { FactsVerdict::Stale })
}

/// Receives facts broadcasts.
pub struct FactsHandler {
    pub table: FactsTable,
    /// This node: only it may say anything about itself.
    pub own: NodeId,
    pub sigs: SharedSignatures,
    /// Facts refused because the node they are about did not sign them.
    pub forged: Arc<AtomicU64>,
}

impl BroadcastHandler<ShoalId> for FactsHandler {
    type Key = FactsKey;
    type Error = crate::identity::FactsDecodeError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&ShoalId>) -> Result<Option<FactsKey>, Self::Error> {
        let signed: Signed = shoal_wire::decode::<_, MAX_SIGNED_FACTS_LEN>(data)?;
        if sender.is_none() {
            // Our own, queued by `add_broadcast`: signed by us a moment ago.
            let facts = NodeFacts::decode(&signed.body)?;
            let key = FactsKey { node: facts.node, seq: facts.seq };
            return Ok(store_if_newer(&self.table, facts).then_some(key));
        }
        match accept_peer_facts(&self.table, self.sigs.as_ref(), self.own, &signed)? {
            FactsVerdict::Stored(key) => Ok(Some(key)),
            FactsVerdict::Stale => Ok(None),
            FactsVerdict::Forged => {
                // Not passed on; the rest of the packet is still read (it may be honest).
                self.forged.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n: u32, seq: u64) -> NodeFacts {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        NodeFacts {
            node: NodeId(id),
            seq,
            name: format!("n{n}"),
            gossip_addr: "10.0.0.1:7480".parse().expect("addr"),
            labels: Default::default(),
            version: "t".into(),
            boot: 1,
            left: false,
            in_cluster: false,
            resources: Default::default(),
        }
    }

    #[test]
    fn newer_facts_replace_older_and_the_table_holds_a_bounded_number_of_nodes() {
        let table: FactsTable = Arc::new(Mutex::new(BTreeMap::new()));
        assert!(store_if_newer(&table, facts(0, 5)));
        assert!(!store_if_newer(&table, facts(0, 5)), "the same seq is not news");
        assert!(!store_if_newer(&table, facts(0, 4)), "an older seq is not news");
        for n in 1..u32::try_from(MAX_FACTS_NODES).expect("fits") {
            assert!(store_if_newer(&table, facts(n, 1)));
        }
        // Full: a key holder inventing node ids gets nothing more in ...
        assert!(!store_if_newer(&table, facts(u32::MAX, 1)));
        assert_eq!(table.lock().expect("lock").len(), MAX_FACTS_NODES);
        // ... while the nodes already known keep being updated.
        assert!(store_if_newer(&table, facts(0, 6)));
        assert_eq!(table.lock().expect("lock").get(&facts(0, 0).node).map(|f| f.seq), Some(6));
    }
}
