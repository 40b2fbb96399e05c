//! **Invariant: after the heal, no task slot runs on two nodes.** From
//! `heal start + SERVICES_BOUND_MS` to the end of the run, no (service, slot) has running
//! containers on two different machines — whether or not the shoal process of the machine
//! runs (a stale container of a node back from a partition counts). Every running
//! container also belongs to a task the simulator created.

use super::{ServicesSnapshot, Violations};
use crate::services::slot_text;
use shoal_cluster::scheduler::Slot;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) struct OneSlotOneNode {
    from_ms: u64,
}

impl OneSlotOneNode {
    pub(crate) fn new(from_ms: u64) -> Self {
        Self { from_ms }
    }

    pub(crate) fn check(&mut self, snap: &ServicesSnapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        if snap.now_ms < self.from_ms {
            return 0;
        }
        let mut where_: BTreeMap<(&str, Slot), BTreeSet<usize>> = BTreeMap::new();
        let mut checks = 0;
        for c in &snap.running {
            checks += 1;
            match c.task_slot {
                Some(slot) => {
                    where_.entry((c.service.as_str(), slot)).or_default().insert(c.slot);
                }
                None => {
                    let key = format!("unknown-task {} {}", c.slot, c.task);
                    let msg = format!("one slot, one node: n{} runs a container of task {} that was never created", c.slot, c.task);
                    new.extend(v.report(key, snap.now_ms, msg));
                }
            }
        }
        for ((service, slot), nodes) in where_ {
            if nodes.len() > 1 {
                let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
                let key = format!("one-slot {service}{}", slot_text(slot));
                let msg = format!(
                    "one slot, one node: {service}{} runs on {} though faults healed long enough ago",
                    slot_text(slot),
                    names.join(" and ")
                );
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
