//! A node's facts as gossip carries them: decoded with a bound and validated, and what is
//! accepted encodes back to itself; the same bytes as a facts broadcast (signed facts) go
//! through foca's broadcast handler, which keeps only what their node signed.
#![no_main]

use foca::BroadcastHandler;
use libfuzzer_sys::fuzz_target;
use shoal_discovery::codec::{FactsHandler, FactsTable};
use shoal_discovery::testing::{id, signatures};
use shoal_discovery::NodeFacts;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok(facts) = NodeFacts::decode(data) {
        let again = facts.encode().expect("accepted facts encode");
        assert_eq!(NodeFacts::decode(&again).expect("and decode again"), facts);
    }
    let table = FactsTable::default();
    let forged = Arc::new(AtomicU64::new(0));
    let mut handler = FactsHandler { table: table.clone(), own: id(1).node, sigs: signatures(1), forged: forged.clone() };
    if let Ok(Some(_)) = handler.receive_item(data, Some(&id(3))) {
        // Kept: so it was about another node, which signed it (the fixtures' nodes are 1..).
        let kept = table.lock().expect("lock");
        assert_eq!(kept.len(), 1);
        assert!(kept.keys().all(|n| *n != id(1).node), "nobody speaks for this node");
        assert_eq!(forged.load(Ordering::Relaxed), 0);
    }
});
