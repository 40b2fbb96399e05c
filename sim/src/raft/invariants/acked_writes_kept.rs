//! **Acknowledged writes stay, everywhere.** At the end of the heal phase, every write the
//! client saw acknowledged as committed is in the replicated state (`ClusterState::nodes`) of
//! every running node, whatever crashed (with or without its unsynced writes) in between.

use std::collections::BTreeMap;

use shoal_consensus::ClusterState;
use shoal_wire::NodeId;

use super::Checks;

/// Checks node `slot`'s final state against the acknowledged writes (`w` → registered id).
pub(crate) fn check(checks: &mut Checks, now_ms: u64, slot: usize, state: &ClusterState, acked: &BTreeMap<u64, NodeId>) {
    let missing: Vec<u64> = acked.iter().filter(|(_, id)| !checks.check(state.nodes.contains_key(id))).map(|(w, _)| *w).collect();
    if let Some(first) = missing.first() {
        checks.violation(
            format!("acked-lost n{slot}"),
            now_ms,
            format!("acknowledged writes lost: n{slot}'s state lacks {} acknowledged write(s), first w{first}", missing.len()),
        );
    }
}
