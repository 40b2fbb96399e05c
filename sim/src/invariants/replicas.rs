//! **Invariant: after the heal, every service runs its replica count.** From
//! `heal start + SERVICES_BOUND_MS` to the end of the run, each replicated service has
//! exactly `replicas` containers in state *running* across the running honest nodes,
//! whenever at least one running honest node satisfies its constraints (the scheduler
//! stacks several replicas on one node, there are no reservations in the simulation).
//! A service with no eligible node is not checked.

use super::{ServicesSnapshot, Violations};
use shoal_cluster::scheduler::Mode;

pub(crate) struct ReplicaCounts {
    from_ms: u64,
}

impl ReplicaCounts {
    pub(crate) fn new(from_ms: u64) -> Self {
        Self { from_ms }
    }

    pub(crate) fn check(&mut self, snap: &ServicesSnapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        if snap.now_ms < self.from_ms {
            return 0;
        }
        let mut checks = 0;
        for svc in snap.defs {
            let Mode::Replicated(want) = svc.mode else { continue };
            let eligible = snap.alive.iter().filter(|(_, n)| svc.constraints.iter().all(|c| c.matches(n))).count();
            if eligible == 0 {
                continue;
            }
            checks += 1;
            let running = snap
                .running
                .iter()
                .filter(|c| c.service == svc.name && snap.alive.iter().any(|(s, _)| *s == c.slot))
                .count();
            if running != want as usize {
                let key = format!("replicas {}", svc.name);
                let msg = format!(
                    "replicas: service {} has {running} running container(s) on running nodes, wants {want} ({eligible} eligible node(s)) though faults healed long enough ago",
                    svc.name
                );
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
