//! Replicated commands and snapshots as a follower decodes them from the leader's entries
//! (and a node from its own disk): bounded decode, then applied to the state machine, which
//! must refuse what is wrong with a response and never panic, deterministically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_consensus::codec::{decode_command, decode_snapshot, encode_command, encode_snapshot};
use shoal_consensus::ClusterState;
use shoal_fuzz::messages;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    if first & 1 == 1 {
        // A snapshot, then commands applied on top of it.
        let mut parts = messages(rest);
        let Some((_, snapshot)) = parts.next() else { return };
        let Ok(mut state) = decode_snapshot(snapshot) else { return };
        let bytes = encode_snapshot(&state).expect("a decoded snapshot encodes");
        assert_eq!(decode_snapshot(&bytes).expect("and decodes again"), state);
        for (_, command) in parts {
            if let Ok(cmd) = decode_command(command) {
                let _ = state.apply(cmd);
            }
        }
        return;
    }
    // A log of commands applied twice from the same start: the same responses and state.
    let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
    for (_, command) in messages(rest) {
        let Ok(cmd) = decode_command(command) else { continue };
        let again = decode_command(&encode_command(&cmd).expect("a decoded command encodes")).expect("decodes again");
        let (ra, rb) = (a.apply(cmd), b.apply(again));
        assert_eq!(format!("{ra:?}"), format!("{rb:?}"), "the same command answered differently");
    }
    assert_eq!(a, b, "replicas diverged on the same log");
});
