//! **Invariant: after faults heal, the cluster converges.** From
//! `heal start + CONVERGENCE_BOUND_MS` to the end of the run, every running honest node sees
//! every other running honest node as `alive`, at the generation that node currently runs.
//! So no alive node is seen `suspect`, `down` or `left` by an alive node, and nobody is
//! missing. Nodes that left and stayed away, or crashed, are not required.

use super::{Snapshot, Violations};
use shoal_discovery::MemberState;

pub(crate) struct Convergence {
    from_ms: u64,
}

impl Convergence {
    pub(crate) fn new(from_ms: u64) -> Self {
        Self { from_ms }
    }

    pub(crate) fn check(&mut self, snap: &Snapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        if snap.now_ms < self.from_ms {
            return 0;
        }
        let mut checks = 0;
        for (o, rows) in &snap.members {
            let observer = &snap.slots[*o];
            if !observer.honest {
                continue;
            }
            for (x, subject) in snap.slots.iter().enumerate() {
                if x == *o || !subject.honest || !subject.running() {
                    continue;
                }
                checks += 1;
                let Some(current) = subject.bump() else { continue };
                let seen = match rows.get(&subject.node) {
                    Some(r) if r.state == MemberState::Alive && r.incarnation == current => continue,
                    Some(r) => format!("as {} at generation {:#x}", r.state.as_str(), r.incarnation),
                    None => "not at all".to_string(),
                };
                let key = format!("convergence {} {}", observer.label, subject.label);
                let msg = format!(
                    "convergence: {} sees {} {seen} (it runs generation {current:#x}) though faults healed long enough ago",
                    observer.label, subject.label
                );
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
