//! What a whole-mode run creates, drawn from the seed's own stream: 1–3 services (replicas
//! 1..=2×nodes, some with a placement constraint on a machine's slot label), and how long a
//! fake container takes to start.

use crate::rng::{stream, Stream};
use rand::RngExt;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Polls a future that must be ready at once (every `FakeEngine` call is): the simulator
/// has no executor for the engine's futures, and a future that is not ready panics rather
/// than being waited on.
pub(crate) fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a FakeEngine future was not ready on its first poll: the simulator cannot wait on it"),
    }
}

/// One service the operator creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedService {
    pub name: String,
    pub replicas: u32,
    pub constraint: Option<String>,
}

/// The services of a run and the fake engines' start delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicesPlan {
    pub services: Vec<PlannedService>,
    /// Fake engine: time from start to running.
    pub start_delay_ms: u64,
}

impl ServicesPlan {
    pub(crate) fn derive(seed: u64, nodes: usize) -> Self {
        let mut r = stream(seed, Stream::Services);
        let count = r.random_range(1..=3usize);
        let max_replicas = u32::try_from(2 * nodes.max(1)).unwrap_or(u32::MAX);
        let mut services = Vec::new();
        for k in 0..count {
            let replicas = r.random_range(1..=max_replicas);
            let which = r.random_range(0..6u32);
            let slot = r.random_range(0..nodes.max(1));
            let constraint = match which {
                0 | 1 => Some(format!("node.labels.sim.slot!={slot}")),
                2 => Some(format!("node.labels.sim.slot=={slot}")),
                _ => None,
            };
            services.push(PlannedService { name: format!("svc{k}"), replicas, constraint });
        }
        let start_delay_ms = r.random_range(100..=2_000u64);
        Self { services, start_delay_ms }
    }
}

impl std::fmt::Display for ServicesPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .services
            .iter()
            .map(|s| match &s.constraint {
                Some(c) => format!("{} x{} ({c})", s.name, s.replicas),
                None => format!("{} x{}", s.name, s.replicas),
            })
            .collect();
        write!(f, "  services: {}; container start {} ms", list.join(", "), self.start_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_the_seeds_and_within_its_bounds() {
        for seed in 1..50 {
            let a = ServicesPlan::derive(seed, 5);
            assert_eq!(a, ServicesPlan::derive(seed, 5));
            assert!((1..=3).contains(&a.services.len()));
            assert!(a.services.iter().all(|s| (1..=10).contains(&s.replicas)));
            assert!((100..=2_000).contains(&a.start_delay_ms));
        }
    }
}
