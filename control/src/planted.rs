//! Bugs planted on purpose, each behind a switch that is off unless a test sets it: the
//! simulator's whole-mode sweep must catch each one (with a replay command), and where a
//! real-node test sets the same switch it must see the same wrong behaviour, which shows
//! that both run this one controller.
//!
//! The node reads the switch from [`PlantedBug::ENV`] (a test-only variable; the node logs
//! a loud warning when it is set); the simulator from `--planted-raft-bug`.

/// One planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlantedBug {
    /// A member answers join requests without the join check (gossip visibility and the
    /// secret's HMAC), so a stranger gets a certificate.
    SkipJoinCheck,
    /// A join answer grants the manager role to a node that is not a Raft voter.
    GrantManagerToLearners,
    /// The agent drops its reconciler's removals of containers whose task is to shut down
    /// or no longer assigned to this node: a node back from a partition keeps running the
    /// copies of tasks that were moved away while it was cut off.
    KeepStaleContainers,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 3] = [PlantedBug::SkipJoinCheck, PlantedBug::GrantManagerToLearners, PlantedBug::KeepStaleContainers];

    /// The environment variable a node reads its planted bug from (tests only).
    pub const ENV: &'static str = "SHOAL_PLANTED_BUG";

    pub fn name(self) -> &'static str {
        match self {
            Self::SkipJoinCheck => "skip-join-check",
            Self::GrantManagerToLearners => "grant-manager-to-learners",
            Self::KeepStaleContainers => "keep-stale-containers",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::parse(bug.name()), Some(bug));
        }
        assert_eq!(PlantedBug::parse("grant-manager"), None);
    }
}
