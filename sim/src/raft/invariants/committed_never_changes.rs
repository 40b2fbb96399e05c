//! **A committed entry is never lost or changed.** An entry a state machine applies is
//! committed, so the first node to apply index `i` fixes what `i` holds; every later apply of
//! `i` on any node (including re-applies after a restart) must be the same entry (log id and
//! payload). A write the client saw acknowledged must be that entry at its index.

use std::collections::BTreeMap;

use shoal_consensus::types::LogId;

use super::Checks;

#[derive(Debug, Default)]
pub(crate) struct CommittedNeverChanges {
    /// Index → (log id, payload) as first applied, and by which node.
    pub entries: BTreeMap<u64, (LogId, String, usize)>,
}

impl CommittedNeverChanges {
    pub(crate) fn applied(&mut self, checks: &mut Checks, now_ms: u64, slot: usize, log_id: LogId, payload: &str) {
        match self.entries.get(&log_id.index) {
            None => {
                checks.check(true);
                self.entries.insert(log_id.index, (log_id, payload.to_string(), slot));
            }
            Some((first_id, first_payload, first_slot)) => {
                if !checks.check(*first_id == log_id && first_payload == payload) {
                    checks.violation(
                        format!("committed-changed {}", log_id.index),
                        now_ms,
                        format!(
                            "a committed entry changed: index {} was applied by n{first_slot} as term {} `{first_payload}`, and by n{slot} as term {} `{payload}`",
                            log_id.index, first_id.leader_id.term, log_id.leader_id.term
                        ),
                    );
                }
            }
        }
    }

    /// The client was told `write` committed at `log_id`.
    pub(crate) fn acked(&mut self, checks: &mut Checks, now_ms: u64, write: u64, log_id: LogId, payload: &str) {
        let ok = self.entries.get(&log_id.index).is_some_and(|(id, p, _)| *id == log_id && p == payload);
        if !checks.check(ok) {
            checks.violation(
                format!("acked-not-committed w{write}"),
                now_ms,
                format!("write w{write} was acknowledged at index {} term {}, but no node applied it there", log_id.index, log_id.leader_id.term),
            );
        }
    }
}
