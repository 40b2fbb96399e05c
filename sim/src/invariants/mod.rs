//! The invariant checkers, one file per property. Each is fed the core's events as they
//! happen and a snapshot of every running node's `members()` at every check.
//!
//! - [`convergence`]: after the heal, every alive node sees every other alive node `alive`;
//! - [`intruder`]: a node without the join secret never gets in, nor learns anyone;
//! - [`graceful_leave`]: a node that left is seen `left`, not `down`, by those it told;
//! - [`event_view`]: the events a core emits agree with what its `members()` shows.
//!
//! Services are checked in whole mode (`crate::whole`), on the real state machine.

pub(crate) mod convergence;
pub(crate) mod event_view;
pub(crate) mod graceful_leave;
pub(crate) mod intruder;

use crate::node::Slot;
use shoal_discovery::{MemberEvent, MemberView};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// Violation messages kept in the report; the total count goes on past it.
const MAX_LISTED: usize = 100;

/// Broken invariants, each reported once per key (invariant and the nodes involved).
#[derive(Default)]
pub(crate) struct Violations {
    pub list: Vec<String>,
    keys: BTreeSet<String>,
    /// Distinct violations, listed or not.
    pub distinct: u64,
}

impl Violations {
    /// Records a violation; returns the message if it is new (for the trace).
    pub(crate) fn report(&mut self, key: String, now_ms: u64, message: String) -> Option<String> {
        if !self.keys.insert(key) {
            return None;
        }
        self.distinct += 1;
        let line = format!("t={now_ms}ms {message}");
        if self.list.len() < MAX_LISTED {
            self.list.push(line.clone());
        }
        Some(line)
    }
}

/// What the checkers see at one check.
pub(crate) struct Snapshot<'a> {
    pub now_ms: u64,
    pub slots: &'a [Slot],
    /// Every running node's `members()`, by slot, keyed by node id.
    pub members: BTreeMap<usize, BTreeMap<NodeId, MemberView>>,
    pub by_node: &'a BTreeMap<NodeId, usize>,
}

impl Snapshot<'_> {
    pub(crate) fn label(&self, node: &NodeId) -> String {
        match self.by_node.get(node) {
            Some(i) => self.slots[*i].label.clone(),
            None => node.short(),
        }
    }
}

pub(crate) struct Checkers {
    pub convergence: convergence::Convergence,
    pub intruder: intruder::NoIntruder,
    pub leave: graceful_leave::LeftIsLeft,
    pub events: event_view::EventsMatchMembers,
    /// Individual checks made (one per pair of nodes looked at).
    pub checks: u64,
}

impl Checkers {
    pub(crate) fn new(converge_from_ms: u64, intruder: Option<usize>, leave_settle_ms: u64) -> Self {
        Self {
            convergence: convergence::Convergence::new(converge_from_ms),
            intruder: intruder::NoIntruder::new(intruder),
            leave: graceful_leave::LeftIsLeft::new(leave_settle_ms),
            events: event_view::EventsMatchMembers::default(),
            checks: 0,
        }
    }

    /// A node booted: its view starts empty.
    pub(crate) fn on_boot(&mut self, slot: usize) {
        self.events.on_boot(slot);
    }

    /// A core emitted an event.
    pub(crate) fn on_event(
        &mut self,
        now_ms: u64,
        slots: &[Slot],
        by_node: &BTreeMap<NodeId, usize>,
        observer: usize,
        ev: &MemberEvent,
        v: &mut Violations,
    ) -> Vec<String> {
        self.checks += 2;
        self.events.on_event(observer, ev);
        self.intruder.on_event(now_ms, slots, by_node, observer, ev, v)
    }

    /// Runs every periodic check; returns the new violation messages.
    pub(crate) fn check(&mut self, snap: &Snapshot<'_>, v: &mut Violations) -> Vec<String> {
        let mut new = Vec::new();
        self.checks += self.convergence.check(snap, v, &mut new);
        self.checks += self.intruder.check(snap, v, &mut new);
        self.checks += self.leave.check(snap, v, &mut new);
        self.checks += self.events.check(snap, v, &mut new);
        new
    }
}
