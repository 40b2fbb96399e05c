//! Who may forward which write to the leader (pure, unit-tested): the rule the node's Raft
//! server applies to every forwarded write (`shoal_transport::raftnet`) and the simulator's
//! whole mode applies to its forwarded writes, so both refuse the same writes.

use shoal_consensus::Command;
use shoal_wire::NodeId;
use std::collections::BTreeSet;

/// A write a worker may not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {peer} is a worker, and a worker may only write about itself (its task reports, its certificate) and \
     register the nodes it lets join; `{what}` must come from a manager: run the command on a manager \
     (`shoal node ls` shows them) or from your machine with --host and a client certificate"
)]
pub struct WorkerWrite {
    pub peer: NodeId,
    pub what: String,
}

/// The Raft membership as the leader knows it, for [`check_forward`].
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    pub voters: BTreeSet<NodeId>,
    /// Voters and learners.
    pub members: BTreeSet<NodeId>,
}

/// Checks a write `peer` forwarded. A voter (a manager) may forward anything: it forwards
/// what its users ask and its own duties. Any other node (a worker) may write only what a
/// worker does by itself: reports of its own tasks, its own registration and certificate,
/// and the registration and certificate of a node that joined through it (a joiner is not
/// in the Raft membership yet, and is never a voter). Everything users ask (services,
/// containers, networks, clients, `node rm`, `node update`) and every leader duty is
/// refused, so a worker's certificate cannot revoke the voters, create services or report
/// for another node. An empty view (no membership known) lets everything through, as the
/// Raft server's other checks do.
pub fn check_forward(peer: NodeId, cmd: &Command, view: &MembershipView) -> Result<(), WorkerWrite> {
    if view.voters.is_empty() || view.voters.contains(&peer) {
        return Ok(());
    }
    let own = match cmd {
        Command::ReportTasks { node, .. } => *node == peer,
        Command::RegisterNode { id, .. } => *id == peer || !view.members.contains(id),
        Command::RecordIssued { node, .. } => *node == peer || !view.voters.contains(node),
        _ => false,
    };
    if own {
        Ok(())
    } else {
        let full = cmd.to_string();
        let mut what = shoal_consensus::state::clip_text(&full, 80);
        if what.len() < full.len() {
            what.push('…');
        }
        Err(WorkerWrite { peer, what })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use shoal_consensus::{IssuedCert, NodeRecord};

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn voters(ids: &[u8]) -> BTreeSet<NodeId> {
        ids.iter().map(|n| id(*n)).collect()
    }

    fn view() -> MembershipView {
        // 1 and 2 are voters, 3 is a learner (a worker).
        MembershipView { voters: voters(&[1, 2]), members: voters(&[1, 2, 3]) }
    }

    fn record() -> NodeRecord {
        NodeRecord { name: "n".into(), addr: "10.0.0.9:7946".parse().expect("addr"), labels: Default::default() }
    }

    #[test]
    fn a_worker_writes_only_about_itself_and_its_joiners() {
        let cert = IssuedCert { serial: vec![1], not_after: 9 };
        let allowed = [
            Command::ReportTasks { node: id(3), reports: vec![], now_ms: 1 },
            Command::RegisterNode { id: id(3), record: record() },
            Command::RegisterNode { id: id(9), record: record() },
            Command::RecordIssued { node: id(3), cert: cert.clone() },
            Command::RecordIssued { node: id(9), cert: cert.clone() },
        ];
        for cmd in &allowed {
            assert_eq!(check_forward(id(3), cmd, &view()), Ok(()), "{cmd}");
        }
        let refused = [
            Command::ReportTasks { node: id(1), reports: vec![], now_ms: 1 },
            Command::RegisterNode { id: id(1), record: record() },
            Command::RecordIssued { node: id(2), cert },
            Command::Revoke { node: id(1) },
            Command::ForgetTasks { ids: vec![] },
            Command::RemoveService { name: "web".into(), now_ms: 1 },
        ];
        for cmd in &refused {
            let Err(WorkerWrite { peer, what }) = check_forward(id(3), cmd, &view()) else { panic!("{cmd} passed") };
            assert_eq!(peer, id(3));
            assert!(!what.is_empty() && what.chars().count() <= 81, "{what}");
        }
    }

    #[test]
    fn a_manager_forwards_anything_and_no_membership_refuses_nothing() {
        for cmd in [Command::Revoke { node: id(2) }, Command::ReportTasks { node: id(3), reports: vec![], now_ms: 1 }] {
            assert_eq!(check_forward(id(1), &cmd, &view()), Ok(()), "{cmd}");
            assert_eq!(check_forward(id(3), &cmd, &MembershipView::default()).is_ok(), true, "{cmd}");
        }
    }
}
