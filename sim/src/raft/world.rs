//! What the Raft simulation shares between the driver, the network, the disks and the
//! client: which nodes run, the links' state, the checkers, the trace and the counters. One
//! `Mutex` (never contended: everything runs on one thread), never held across an `.await`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use rand::rngs::StdRng;
use rand::RngExt;
use shoal_consensus::openraft::EntryPayload;
use shoal_consensus::types::Entry;
use shoal_consensus::types::LogId;
use shoal_consensus::types::Vote;
use shoal_wire::NodeId;
use tokio::time::Instant;

use super::invariants::committed_never_changes::CommittedNeverChanges;
use super::invariants::one_leader_per_term::OneLeaderPerTerm;
use super::invariants::state_is_prefix::StateIsPrefix;
use super::invariants::Checks;
use super::Raft;
use crate::rng::mix;
use crate::trace::Trace;

/// What happens to one RPC leg (request or response).
pub(crate) enum Fate {
    /// The destination machine is down: the connection is refused.
    Down,
    /// The link is cut: the caller hears nothing until its timeout.
    Cut,
    /// The message is lost: same as a cut, for this message only.
    Lost,
    /// Arrives after `delay_ms`, if the destination is still the same boot by then.
    Deliver { delay_ms: u64, incarnation: u64 },
}

/// RPC counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RpcCounts {
    /// Request and response legs sent.
    pub legs: u64,
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
    /// To a node that was down (or crashed while the message was on its way).
    pub down: u64,
}

/// What became of the client's writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteCounts {
    pub proposed: u64,
    /// Answered by the state machine: committed.
    pub acked: u64,
    /// Refused: not the leader (or the target was down).
    pub refused: u64,
    /// Failed otherwise (the node shut down under the write...).
    pub failed: u64,
    /// No answer in time: may or may not have committed.
    pub unknown: u64,
}

pub(crate) struct World {
    pub trace: Trace,
    pub checks: Checks,
    pub leaders: OneLeaderPerTerm,
    pub committed: CommittedNeverChanges,
    pub prefix: StateIsPrefix,
    /// Running boot of each node (`None`: down).
    pub rafts: Vec<Option<Raft>>,
    /// Disk epoch of each node's running boot (what its store handles carry).
    pub epochs: Vec<u64>,
    /// Bumped on every boot and crash: a message for an older incarnation is dropped.
    pub incarnations: Vec<u64>,
    /// Active cuts, by id: directed links (from, to).
    pub cuts: BTreeMap<u64, BTreeSet<(usize, usize)>>,
    pub loss_rate: f64,
    pub delay_storm_ms: u64,
    pub net_rng: StdRng,
    pub link_seed: u64,
    pub rpcs: RpcCounts,
    pub faults: BTreeMap<String, u64>,
    /// Terms in which a leader was seen (elections won), and leader changes between them.
    pub elections: u64,
    pub leader_changes: u64,
    pub last_leader: Option<usize>,
    /// The node the client believes leads.
    pub believed_leader: usize,
    pub client_stopped: bool,
    pub writes: WriteCounts,
    /// Acknowledged writes: number → the node id it registered.
    pub acked: BTreeMap<u64, NodeId>,
    /// Whole mode: the machines' membership cores, engines and agents.
    pub whole: Option<crate::whole::Whole>,
}

/// Handle on the [`World`], plus the simulated start time (tokio's paused clock).
#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<Mutex<World>>,
    start: Instant,
}

/// The raft node id of slot `slot`: `0xA5` then the slot, big-endian (sorts like the slot).
pub(crate) fn node_id(slot: usize) -> NodeId {
    let mut b = [0u8; 16];
    b[0] = 0xA5;
    b[8..].copy_from_slice(&(slot as u64).to_be_bytes());
    NodeId(b)
}

/// Inverse of [`node_id`] (and of the whole mode's key-derived ids).
pub(crate) fn slot_of(id: &NodeId) -> usize {
    if let Some(slot) = crate::whole::whole_slot(id) {
        return slot;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&id.0[8..]);
    u64::from_be_bytes(s) as usize
}

/// What the checkers compare for an entry: its payload, printed (ordered maps only).
pub(crate) fn payload_text(entry: &Entry) -> String {
    match &entry.payload {
        EntryPayload::Blank => "blank".to_string(),
        EntryPayload::Normal(cmd) => format!("{cmd:?}"),
        EntryPayload::Membership(m) => format!("membership {m:?}"),
    }
}

/// Short form of an entry for the trace.
fn payload_short(entry: &Entry) -> String {
    match &entry.payload {
        EntryPayload::Blank => "blank".to_string(),
        EntryPayload::Normal(shoal_consensus::Command::RegisterNode { record, .. }) => record.name.clone(),
        EntryPayload::Normal(_) => "command".to_string(),
        EntryPayload::Membership(_) => "membership".to_string(),
    }
}

impl Shared {
    pub(crate) fn new(world: World) -> Self {
        Self { inner: Arc::new(Mutex::new(world)), start: Instant::now() }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulated milliseconds since the start.
    pub(crate) fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.start).as_millis() as u64
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// A trace line now (formatted only when tracing).
    pub(crate) fn trace(&self, who: &str, what: impl FnOnce() -> String) {
        let now = self.now_ms();
        let mut w = self.lock();
        if w.trace.on() {
            let text = what();
            w.trace.line(now, who, format_args!("{text}"));
        }
    }

    /// A store persisted `vote`: a committed one names the leader of its term.
    pub(crate) fn vote_saved(&self, slot: usize, epoch: u64, vote: &Vote) {
        let now = self.now_ms();
        let mut w = self.lock();
        if w.epochs[slot] != epoch || !vote.committed {
            return;
        }
        let term = vote.leader_id.term;
        let leader = slot_of(&vote.leader_id.voted_for.0);
        let World { checks, leaders, .. } = &mut *w;
        if leaders.observe(checks, now, term, leader, &format!("n{slot}'s committed vote")) {
            w.elections += 1;
            if w.last_leader.is_some_and(|l| l != leader) {
                w.leader_changes += 1;
            }
            w.last_leader = Some(leader);
            w.trace.line(now, &format!("n{leader}"), format_args!("LEADER term {term} (vote persisted by n{slot})"));
        }
    }

    /// Node `slot` applied `entry` to its state machine.
    pub(crate) fn applied(&self, slot: usize, epoch: u64, entry: &Entry) {
        let now = self.now_ms();
        let mut w = self.lock();
        if w.epochs[slot] != epoch {
            return;
        }
        let text = payload_text(entry);
        // Whole mode: no certificate is ever recorded for a node without the join secret.
        if let EntryPayload::Normal(shoal_consensus::Command::RecordIssued { node, .. }) = &entry.payload {
            let stranger = w.whole.as_ref().is_some_and(|wh| !wh.honest(node));
            if !w.checks.check(!stranger) {
                let what = format!("a certificate for {}, which does not hold the join secret, was committed at index {}", node.short(), entry.log_id.index);
                w.checks.violation(format!("cert-committed {}", node.short()), now, what);
            }
        }
        let World { checks, committed, prefix, .. } = &mut *w;
        committed.applied(checks, now, slot, entry.log_id, &text);
        prefix.applied(checks, now, slot, entry.log_id.index);
        if w.trace.on() {
            let short = payload_short(entry);
            w.trace.line(now, &format!("n{slot}"), format_args!("apply {} t{} {short}", entry.log_id.index, entry.log_id.leader_id.term));
        }
    }

    pub(crate) fn installed_snapshot(&self, slot: usize, epoch: u64, last: Option<LogId>) {
        let now = self.now_ms();
        let mut w = self.lock();
        if w.epochs[slot] != epoch {
            return;
        }
        let World { checks, prefix, .. } = &mut *w;
        prefix.installed_snapshot(checks, now, slot, last.map(|l| l.index));
        w.trace.line(now, &format!("n{slot}"), format_args!("install snapshot up to {:?}", last.map(|l| l.index)));
    }

    /// The running boot of `slot`, if it is up.
    pub(crate) fn raft(&self, slot: usize) -> Option<Raft> {
        self.lock().rafts[slot].clone()
    }

    /// The fate of one leg from `from` to `to`. Every call makes the same draws.
    pub(crate) fn fate(&self, from: usize, to: usize) -> Fate {
        let mut w = self.lock();
        w.rpcs.legs += 1;
        let lost_draw: f64 = w.net_rng.random();
        let jitter = w.net_rng.random_range(0..=2u64);
        let storm_draw = w.net_rng.random_range(0..=1000u64);
        if w.rafts[to].is_none() {
            w.rpcs.down += 1;
            return Fate::Down;
        }
        if w.cuts.values().any(|c| c.contains(&(from, to))) {
            w.rpcs.cut += 1;
            return Fate::Cut;
        }
        if lost_draw < w.loss_rate {
            w.rpcs.lost += 1;
            return Fate::Lost;
        }
        let base = 1 + mix(w.link_seed ^ ((from as u64) << 20) ^ to as u64) % 4;
        let storm = w.delay_storm_ms * storm_draw / 1000;
        Fate::Deliver { delay_ms: base + jitter + storm, incarnation: w.incarnations[to] }
    }

    /// The peer to hand a message to, if it is still the boot the message was sent to.
    pub(crate) fn arrive(&self, to: usize, incarnation: u64) -> Option<Raft> {
        let mut w = self.lock();
        if w.incarnations[to] == incarnation {
            if let Some(r) = w.rafts[to].clone() {
                w.rpcs.delivered += 1;
                return Some(r);
            }
        }
        w.rpcs.down += 1;
        None
    }

    pub(crate) fn count_fault(&self, name: &str) {
        *self.lock().faults.entry(name.to_string()).or_insert(0) += 1;
    }
}
