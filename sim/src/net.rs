//! The simulated network: decides, for every datagram (and every mDNS announcement), whether
//! it arrives and when. Links are directed `(from, to)` pairs of node slots.
//!
//! A datagram on a cut link is dropped; otherwise it may be lost, and it arrives after the
//! link's own delay, plus jitter, plus a hold-back (reordering), plus any latency spike on
//! either end; it may arrive twice. After [`Network::heal`] only the link delay and a small
//! jitter remain.

use crate::plan::NetPlan;
use crate::rng::mix;
use rand::rngs::StdRng;
use rand::RngExt;
use std::collections::BTreeMap;

/// Why a datagram did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DropReason {
    /// The link is cut by a partition.
    Cut,
    /// Lost on the way.
    Loss,
    /// Nobody listens at the destination (crashed, left, not booted, or no such address).
    NoHost,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cut => "cut",
            Self::Loss => "loss",
            Self::NoHost => "nohost",
        }
    }
}

/// What happens to one datagram: a delay for each copy that arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    Dropped(DropReason),
    /// One delay per arriving copy (two when duplicated); `reordered` if it was held back.
    Arrives { delays_ms: Vec<u64>, reordered: bool },
}

pub(crate) struct Network {
    plan: NetPlan,
    /// Seeds the fixed per-link delays.
    link_seed: u64,
    /// Cut directed links, counted: overlapping partitions may cut the same link.
    cut: BTreeMap<(usize, usize), u32>,
    /// Latency spikes per node: (until_ms, extra_ms).
    spikes: BTreeMap<usize, (u64, u64)>,
    healed: bool,
}

impl Network {
    pub(crate) fn new(plan: NetPlan, link_seed: u64) -> Self {
        Self { plan, link_seed, cut: BTreeMap::new(), spikes: BTreeMap::new(), healed: false }
    }

    /// The fixed one-way delay of a link.
    fn link_delay_ms(&self, from: usize, to: usize) -> u64 {
        let h = mix(self.link_seed ^ mix(((from as u64) << 32) | to as u64));
        self.plan.base_delay_ms + h % (self.plan.link_spread_ms + 1)
    }

    pub(crate) fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.contains_key(&(from, to))
    }

    pub(crate) fn cut_links(&mut self, links: &[(usize, usize)]) {
        for l in links {
            *self.cut.entry(*l).or_insert(0) += 1;
        }
    }

    pub(crate) fn restore_links(&mut self, links: &[(usize, usize)]) {
        for l in links {
            if let Some(n) = self.cut.get_mut(l) {
                *n -= 1;
                if *n == 0 {
                    self.cut.remove(l);
                }
            }
        }
    }

    pub(crate) fn spike(&mut self, node: usize, until_ms: u64, extra_ms: u64) {
        self.spikes.insert(node, (until_ms, extra_ms));
    }

    /// The heal phase: no cuts, no loss, no spikes, no reordering from now on.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
        self.spikes.clear();
        self.healed = true;
        self.plan.loss_ppm = 0;
        self.plan.dup_ppm = 0;
        self.plan.reorder_ppm = 0;
        self.plan.jitter_ms = self.plan.jitter_ms.min(2);
    }

    fn spike_ms(&self, node: usize, now_ms: u64) -> u64 {
        match self.spikes.get(&node) {
            Some((until, extra)) if *until > now_ms => *extra,
            _ => 0,
        }
    }

    fn chance(rng: &mut StdRng, ppm: u32) -> bool {
        ppm > 0 && rng.random_range(0..1_000_000u32) < ppm
    }

    /// The fate of one datagram sent now from `from` to `to`. Draws from `rng` in a fixed
    /// order whatever the outcome, so one datagram's fate never shifts the next one's draws
    /// by a different amount depending on the partition state.
    pub(crate) fn route(&mut self, rng: &mut StdRng, now_ms: u64, from: usize, to: usize) -> Fate {
        let lost = Self::chance(rng, self.plan.loss_ppm);
        let duplicated = Self::chance(rng, self.plan.dup_ppm);
        let reordered = Self::chance(rng, self.plan.reorder_ppm);
        let jitter = rng.random_range(0..=self.plan.jitter_ms);
        let jitter2 = rng.random_range(0..=self.plan.jitter_ms);
        let hold = rng.random_range(0..=self.plan.reorder_hold_ms);
        if self.is_cut(from, to) {
            return Fate::Dropped(DropReason::Cut);
        }
        if lost {
            return Fate::Dropped(DropReason::Loss);
        }
        let base = self.link_delay_ms(from, to) + self.spike_ms(from, now_ms) + self.spike_ms(to, now_ms);
        let first = base + jitter + if reordered { hold } else { 0 };
        let mut delays_ms = vec![first];
        if duplicated {
            delays_ms.push(base + jitter2);
        }
        Fate::Arrives { delays_ms, reordered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn plan() -> NetPlan {
        NetPlan {
            base_delay_ms: 1,
            link_spread_ms: 2,
            jitter_ms: 3,
            loss_ppm: 100_000,
            dup_ppm: 100_000,
            reorder_ppm: 100_000,
            reorder_hold_ms: 50,
            spike_every_ms: 10_000,
            spike_len_ms: 1_000,
            spike_extra_ms: 700,
            lan_delay_ms: 10,
            lan_refresh_ms: 30_000,
        }
    }

    #[test]
    fn cuts_are_directed_counted_and_healed() {
        let mut net = Network::new(plan(), 7);
        let mut rng = StdRng::seed_from_u64(1);
        net.cut_links(&[(0, 1)]);
        net.cut_links(&[(0, 1)]);
        assert_eq!(net.route(&mut rng, 0, 0, 1), Fate::Dropped(DropReason::Cut));
        assert!(!net.is_cut(1, 0));
        net.restore_links(&[(0, 1)]);
        assert!(net.is_cut(0, 1), "a second partition still cuts the link");
        net.heal();
        for _ in 0..1_000 {
            match net.route(&mut rng, 0, 0, 1) {
                Fate::Arrives { delays_ms, reordered } => {
                    assert_eq!(delays_ms.len(), 1);
                    assert!(!reordered);
                    assert!((1..=5).contains(&delays_ms[0]), "{delays_ms:?}");
                }
                other => panic!("healed network dropped a datagram: {other:?}"),
            }
        }
    }

    #[test]
    fn loss_duplication_and_spikes_happen_at_about_their_rates() {
        let mut net = Network::new(plan(), 7);
        let mut rng = StdRng::seed_from_u64(2);
        net.spike(1, 5_000, 700);
        let (mut lost, mut dup, mut slow) = (0, 0, 0);
        for _ in 0..10_000 {
            match net.route(&mut rng, 1_000, 0, 1) {
                Fate::Dropped(DropReason::Loss) => lost += 1,
                Fate::Arrives { delays_ms, .. } => {
                    dup += usize::from(delays_ms.len() == 2);
                    slow += usize::from(delays_ms[0] >= 700);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!((800..1_200).contains(&lost), "lost {lost}");
        assert!((700..1_100).contains(&dup), "dup {dup}");
        assert_eq!(slow, 10_000 - lost);
    }
}
