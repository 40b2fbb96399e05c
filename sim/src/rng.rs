//! The only randomness of a run: independent `StdRng` streams, each seeded from the run's
//! seed and the stream's name, so that adding draws to one stream never shifts another.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// Named streams of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// The derived options ([`crate::plan::SimPlan`]).
    Plan,
    /// Node ids and join secrets.
    Identities,
    /// Per-datagram fate: loss, duplication, delay, reordering; mDNS delays.
    Network,
    /// The fault schedule: which node, when, which partition.
    Faults,
    /// One node's own rng for one boot (foca's choices, seal nonces).
    Node { slot: usize, boot: u16 },
    /// The intruder's sniffing and replaying.
    Intruder,
    /// Whole mode: the services a run creates (`whole::workload`).
    Services,
    /// Raft mode: node count when not given.
    RaftPlan,
    /// Raft mode: the fault schedule.
    RaftFaults,
    /// Raft mode: per-RPC fate (loss, jitter, delay storms).
    RaftNetwork,
    /// Raft mode: the client's pacing.
    RaftClient,
    /// Raft mode: one machine's disk (sync latencies).
    RaftDisk { slot: usize },
    /// Raft mode: the seed of one boot of one openraft node (`runtime::with_seed`).
    RaftNode { slot: usize, boot: u16 },
    /// Whole mode: services, removals, the intruder's pacing.
    Whole,
    /// Whole mode: one machine's join nonces and certificate serials.
    WholeMachine { slot: usize },
    /// Whole mode: the insider's choices (who, what, when).
    Insider,
}

/// SplitMix64's finaliser: a bijection that spreads nearby inputs far apart.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stream_id(s: Stream) -> u64 {
    match s {
        Stream::Plan => 1,
        Stream::Identities => 2,
        Stream::Network => 3,
        Stream::Faults => 4,
        Stream::Intruder => 5,
        Stream::Services => 6,
        Stream::RaftPlan => 8,
        Stream::RaftFaults => 9,
        Stream::RaftNetwork => 10,
        Stream::RaftClient => 11,
        Stream::RaftDisk { slot } => (2 << 40) | (slot as u64),
        Stream::RaftNode { slot, boot } => (3 << 40) | ((slot as u64) << 16) | u64::from(boot),
        Stream::Whole => 12,
        Stream::Insider => 13,
        Stream::WholeMachine { slot } => (4 << 40) | (slot as u64),
        Stream::Node { slot, boot } => (1 << 40) | ((slot as u64) << 16) | u64::from(boot),
    }
}

/// The rng of stream `s` in the run of `seed`.
pub(crate) fn stream(seed: u64, s: Stream) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(stream_id(s))))
}

/// A plain `u64` of stream `s` (the seed of an openraft node's `ShoalRuntime`).
pub(crate) fn stream_seed(seed: u64, s: Stream) -> u64 {
    mix(seed ^ mix(stream_id(s)))
}
