//! **Invariant: a node without the join secret never gets in.** It never appears in an honest
//! node's `members()` nor in an honest node's events, and it learns of nobody: its own
//! `members()` lists only itself and it emits no event. Checked on every event and at every
//! check, whatever the phase.

use super::{Snapshot, Violations};
use crate::node::Slot;
use shoal_discovery::MemberEvent;
use shoal_wire::NodeId;
use std::collections::BTreeMap;

pub(crate) struct NoIntruder {
    slot: Option<usize>,
}

impl NoIntruder {
    pub(crate) fn new(slot: Option<usize>) -> Self {
        Self { slot }
    }

    pub(crate) fn on_event(
        &mut self,
        now_ms: u64,
        slots: &[Slot],
        by_node: &BTreeMap<NodeId, usize>,
        observer: usize,
        ev: &MemberEvent,
        v: &mut Violations,
    ) -> Vec<String> {
        let Some(i) = self.slot else { return Vec::new() };
        let label = |n: &NodeId| by_node.get(n).map(|s| slots[*s].label.clone()).unwrap_or_else(|| n.short());
        if observer == i {
            let key = format!("intruder learned {}", label(&ev.node));
            let msg = format!("intruder: the intruder (other secret) learned of {} as {}", label(&ev.node), ev.state.as_str());
            return v.report(key, now_ms, msg).into_iter().collect();
        }
        if ev.node == slots[i].node {
            let key = format!("intruder seen-by {}", slots[observer].label);
            let msg = format!("intruder: {} saw the intruder (other secret) as {}", slots[observer].label, ev.state.as_str());
            return v.report(key, now_ms, msg).into_iter().collect();
        }
        Vec::new()
    }

    pub(crate) fn check(&mut self, snap: &Snapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        let Some(i) = self.slot else { return 0 };
        let intruder = &snap.slots[i];
        let mut checks = 0;
        for (o, rows) in &snap.members {
            checks += 1;
            if *o == i {
                for (node, row) in rows.iter().filter(|(n, _)| **n != intruder.node) {
                    let key = format!("intruder learned {}", snap.label(node));
                    let msg = format!("intruder: the intruder's members() lists {} as {}", snap.label(node), row.state.as_str());
                    new.extend(v.report(key, snap.now_ms, msg));
                }
            } else if let Some(row) = rows.get(&intruder.node) {
                let key = format!("intruder seen-by {}", snap.slots[*o].label);
                let msg = format!("intruder: {}'s members() lists the intruder as {}", snap.slots[*o].label, row.state.as_str());
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
