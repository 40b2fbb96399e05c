//! **Invariant: events and `members()` agree.** The last event a core emitted about a member
//! says what its `members()` shows for that member (state, generation, address), and every
//! member it shows was announced by an event. This is what a subscriber (the scheduler, the
//! API) relies on to follow the cluster without polling.

use super::{Snapshot, Violations};
use shoal_discovery::{MemberEvent, MemberState};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;

type Seen = (MemberState, u32, SocketAddr);

#[derive(Default)]
pub(crate) struct EventsMatchMembers {
    /// Per observing slot, the last event about each member since its boot.
    seen: BTreeMap<usize, BTreeMap<NodeId, Seen>>,
}

impl EventsMatchMembers {
    pub(crate) fn on_boot(&mut self, slot: usize) {
        self.seen.insert(slot, BTreeMap::new());
    }

    pub(crate) fn on_event(&mut self, observer: usize, ev: &MemberEvent) {
        self.seen.entry(observer).or_default().insert(ev.node, (ev.state, ev.incarnation, ev.addr));
    }

    pub(crate) fn check(&mut self, snap: &Snapshot<'_>, v: &mut Violations, new: &mut Vec<String>) -> u64 {
        let mut checks = 0;
        let empty = BTreeMap::new();
        for (o, rows) in &snap.members {
            let observer = &snap.slots[*o];
            let seen = self.seen.get(o).unwrap_or(&empty);
            let shown: BTreeMap<NodeId, Seen> = rows
                .values()
                .filter(|r| !r.is_self)
                .map(|r| (r.id, (r.state, r.incarnation, r.addr)))
                .collect();
            let mut nodes: Vec<&NodeId> = seen.keys().chain(shown.keys()).collect();
            nodes.sort();
            nodes.dedup();
            for node in nodes {
                checks += 1;
                let (a, b) = (seen.get(node), shown.get(node));
                if a == b {
                    continue;
                }
                // Down and left members are purged after the core's retention time, silently.
                if b.is_none() && a.is_some_and(|s| matches!(s.0, MemberState::Down | MemberState::Left)) {
                    continue;
                }
                let fmt = |s: Option<&Seen>| match s {
                    Some((state, inc, addr)) => format!("{} at generation {inc:#x} ({addr})", state.as_str()),
                    None => "nothing".to_string(),
                };
                let key = format!("events {} {}", observer.label, snap.label(node));
                let msg = format!(
                    "events vs members(): {}'s last event about {} said {}, its members() shows {}",
                    observer.label,
                    snap.label(node),
                    fmt(a),
                    fmt(b)
                );
                new.extend(v.report(key, snap.now_ms, msg));
            }
        }
        checks
    }
}
