//! **Invariant: a graceful leave is seen as `left`, not `down`.** When a node leaves, every
//! *witness* must show it `left` (at the generation that left) from `LEAVE_SETTLE_MS` after
//! the leave until the node boots again. A witness is an honest node that, at the moment of
//! the leave, was running, saw the leaver `alive`/`suspect` at its current generation, was
//! itself seen `alive`/`suspect` by the leaver (so the leaver counts it as a member and tells
//! it), and whose link from the leaver was not cut. A witness that crashes stops being one.

use super::{Snapshot, Violations};
use crate::node::Slot;
use shoal_discovery::MemberState;

struct Departure {
    leaver: usize,
    /// The leaver's epoch after it stopped: if it changes, the node booted again.
    epoch: u32,
    bump: u32,
    at_ms: u64,
    /// (slot, epoch) of each witness.
    witnesses: Vec<(usize, u32)>,
}

pub(crate) struct LeftIsLeft {
    settle_ms: u64,
    open: Vec<Departure>,
}

fn active(state: MemberState) -> bool {
    matches!(state, MemberState::Alive | MemberState::Suspect)
}

impl LeftIsLeft {
    pub(crate) fn new(settle_ms: u64) -> Self {
        Self { settle_ms, open: Vec::new() }
    }

    /// The witnesses of `leaver` leaving now; call just before it leaves.
    pub(crate) fn witnesses(slots: &[Slot], leaver: usize, link_up: impl Fn(usize, usize) -> bool) -> Vec<(usize, u32)> {
        let l = &slots[leaver];
        let Some(bump) = l.bump() else { return Vec::new() };
        let l_view = l.members();
        let mut out = Vec::new();
        for (w, ws) in slots.iter().enumerate() {
            if w == leaver || !ws.honest || !ws.running() || !link_up(leaver, w) {
                continue;
            }
            let w_sees_l = ws.members().into_iter().any(|m| m.id == l.node && m.incarnation == bump && active(m.state));
            let l_sees_w = l_view.iter().any(|m| m.id == ws.node && Some(m.incarnation) == ws.bump() && active(m.state));
            if w_sees_l && l_sees_w {
                out.push((w, ws.epoch));
            }
        }
        out
    }

    pub(crate) fn record(&mut self, leaver: usize, epoch: u32, bump: u32, at_ms: u64, witnesses: Vec<(usize, u32)>) {
        self.open.push(Departure { leaver, epoch, bump, at_ms, witnesses });
    }

    pub(crate) fn check(&mut self, snap: &Snapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        self.open.retain(|d| snap.slots[d.leaver].epoch == d.epoch);
        let mut checks = 0;
        for d in &self.open {
            if snap.now_ms < d.at_ms + self.settle_ms {
                continue;
            }
            let leaver = &snap.slots[d.leaver];
            for (w, epoch) in &d.witnesses {
                let ws = &snap.slots[*w];
                if ws.epoch != *epoch {
                    continue;
                }
                let Some(rows) = snap.members.get(w) else { continue };
                checks += 1;
                let seen = match rows.get(&leaver.node) {
                    Some(r) if r.state == MemberState::Left && r.incarnation == d.bump => continue,
                    Some(r) => format!("as {} at generation {:#x}", r.state.as_str(), r.incarnation),
                    None => "not at all".to_string(),
                };
                let key = format!("leave {}@{} {}", leaver.label, d.at_ms, ws.label);
                let msg = format!(
                    "graceful leave: {} left at t={}ms (generation {:#x}) but {}, which was connected to it, sees it {seen}",
                    leaver.label, d.at_ms, d.bump, ws.label
                );
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
