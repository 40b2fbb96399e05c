//! The membership core fed a conversation: sealed datagrams (to it, to anyone), raw
//! datagrams, timers and discovery hints, in any order. Sealing with the cluster's key lets
//! the fuzzer reach everything behind the authentication: the envelope decoder, foca, the
//! facts, leave and suspicion handling. No input may panic it or grow it without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_discovery::membership::{Effect, MemberTimer};
use shoal_discovery::seal::{Sealer, ANYONE};
use shoal_discovery::{ClusterId, PeerHint};
use shoal_fuzz::{addr, membership, messages, rng, GOSSIP_KEY, ME, NOW_MS};
use shoal_wire::NodeId;
use std::collections::VecDeque;

fuzz_target!(|data: &[u8]| {
    let mut core = membership(ME.0[0]);
    let peer = Sealer::new(GOSSIP_KEY);
    let mut peer_rng = rng(7);
    let mut now = NOW_MS;
    let mut timers = VecDeque::new();
    let mut effects = core.start(now);
    for (op, message) in messages(data) {
        // The high bits pick the sender's address: several peers in one conversation.
        let from = addr(2 + (op >> 4));
        let out = match op & 0x0f {
            0 | 1 => {
                let to = if op & 1 == 0 { ME.0 } else { ANYONE };
                match peer.seal(now, &mut peer_rng, &to, message) {
                    Ok(packet) => core.handle_datagram(now, from, &packet),
                    Err(_) => continue,
                }
            }
            2 => core.handle_datagram(now, from, message),
            3 => {
                // Time passes (up to 25.5 s) and the oldest timer asked for fires.
                now += 100 * u64::from(message.first().copied().unwrap_or(1));
                let timer = timers.pop_front().unwrap_or(MemberTimer::Tick);
                core.handle_timer(now, timer)
            }
            4 => {
                let mut node = [0u8; 16];
                node.iter_mut().zip(message).for_each(|(n, m)| *n = *m);
                core.handle_discovered(now, PeerHint { cluster: ClusterId([1; 8]), node: NodeId(node), addr: from })
            }
            5 => core.leave(now),
            _ => core.handle_timer(now, MemberTimer::Tick),
        };
        effects.extend(out);
        for effect in effects.drain(..) {
            if let Effect::Schedule { timer, .. } = effect {
                if timers.len() < 1_000 {
                    timers.push_back(timer);
                }
            }
        }
    }
    // Reading the view is what the agent does after every step.
    let _ = (core.members(), core.stats());
});
