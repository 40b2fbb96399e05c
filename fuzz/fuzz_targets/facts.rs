//! A node's facts as gossip carries them: decoded with a bound and validated, and what is
//! accepted encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_discovery::NodeFacts;

fuzz_target!(|data: &[u8]| {
    if let Ok(facts) = NodeFacts::decode(data) {
        let again = facts.encode().expect("accepted facts encode");
        assert_eq!(NodeFacts::decode(&again).expect("and decode again"), facts);
    }
});
