//! Glue between foca and shoal's one codec: foca headers and member updates encoded with
//! `shoal_wire`, and the custom-broadcast handler that carries [`NodeFacts`].

use crate::identity::{NodeFacts, ShoalId};
use bytes::{Buf, BufMut};
use foca::{BroadcastHandler, Header, Invalidates, Member};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
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
/// without bound; it can still fill it (signed facts are what would stop that).
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

/// Receives facts broadcasts.
pub struct FactsHandler {
    pub table: FactsTable,
    /// This node: only it may say anything about itself.
    pub own: NodeId,
}

impl BroadcastHandler<ShoalId> for FactsHandler {
    type Key = FactsKey;
    type Error = crate::identity::FactsDecodeError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&ShoalId>) -> Result<Option<FactsKey>, Self::Error> {
        let facts = NodeFacts::decode(data)?;
        if facts.node == self.own && sender.is_some() {
            // Facts about us from someone else (stale echoes, or a forgery by a key holder).
            return Ok(None);
        }
        let key = FactsKey { node: facts.node, seq: facts.seq };
        Ok(store_if_newer(&self.table, facts).then_some(key))
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
