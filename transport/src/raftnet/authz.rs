//! Who may send which Raft request, checked on the server before openraft sees it (pure,
//! unit-tested). The TLS handshake proved the peer's node id and its certificate's role. A
//! request that speaks *as* a node — an AppendEntries or a snapshot from a leader, a
//! (pre-)vote request from a candidate, a leadership transfer — must speak as that same
//! node: no certificate holder can make a node believe another node leads or asks for its
//! vote. A (pre-)vote request must also come from a voter of this node's membership config
//! (when it knows one), so a worker's certificate cannot run for leader. A request that
//! leads (entries, a snapshot, a leadership transfer) must come from a manager's
//! certificate or from a node this node knows as a voter: a worker's certificate cannot
//! claim a term and overwrite a follower's log. Forwarded writes carry no such claim; who
//! may forward which write is the controller's rule (`shoal_control::writes`), which the
//! server applies too.
//!
//! Why "a manager's certificate *or* a known voter" for leading, and not "a known voter"
//! alone: a follower's view of the membership can be behind (it learns a change only from
//! the leader's entries), so a follower that missed a worker's promotion would refuse the
//! new leader's entries for good. A promoted node renews its certificate as a manager
//! (`shoal_control::trust::renewal_due`), after which every follower takes its entries;
//! until then the followers that know of the promotion do. Refusing a vote needs no such
//! care: it only costs that candidate a vote.

use super::rpc::Request;
use shoal_pki::NodeRole;
use shoal_wire::NodeId;
use std::collections::BTreeSet;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a {kind} request speaking as node {claimed} came over the connection of node {peer}")]
    NotSender { kind: &'static str, claimed: NodeId, peer: NodeId },
    #[error("a {kind} request from node {peer}, which is not a voter (only voters run for leader)")]
    NotVoter { kind: &'static str, peer: NodeId },
    #[error("a {kind} request from node {peer}, whose certificate is not a manager's and which is not a voter here (only managers lead)")]
    NotManager { kind: &'static str, peer: NodeId },
}

/// The node a request speaks as, if it speaks as one.
pub fn claimed_sender(request: &Request) -> Option<NodeId> {
    let id = match request {
        Request::AppendEntries(rpc) => &rpc.vote,
        Request::Vote(rpc) | Request::PreVote(rpc) => &rpc.vote,
        Request::FullSnapshot { vote, .. } => vote,
        Request::TransferLeader(rpc) => rpc.from_leader(),
        Request::Forward(_) => return None,
    };
    Some(id.leader_id().voted_for.0)
}

/// The authenticated peer of a connection: its node id and its certificate's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub role: Option<NodeRole>,
}

/// Checks `request` from the authenticated `peer` against this node's current `voters`
/// (empty: this node knows no membership yet).
pub fn check(peer: Peer, request: &Request, voters: &BTreeSet<NodeId>) -> Result<(), Refusal> {
    let Some(claimed) = claimed_sender(request) else { return Ok(()) };
    let (kind, id) = (request.kind(), peer.id);
    if claimed != id {
        return Err(Refusal::NotSender { kind, claimed, peer: id });
    }
    match request {
        Request::Vote(_) | Request::PreVote(_) if !voters.is_empty() && !voters.contains(&id) => {
            Err(Refusal::NotVoter { kind, peer: id })
        }
        Request::AppendEntries(_) | Request::FullSnapshot { .. } | Request::TransferLeader(_)
            if peer.role != Some(NodeRole::Manager) && !voters.contains(&id) =>
        {
            Err(Refusal::NotManager { kind, peer: id })
        }
        _ => Ok(()),
    }
}

/// Which (peer, kind of refusal) pairs were already logged, so a peer retrying a refused
/// request (openraft retries with backoff) is logged once at `warn` and afterwards only
/// counted. Bounded: past [`FirstRefusals::CAP`] pairs, nothing more is remembered and every
/// refusal is treated as already logged (an insider cycling through ids cannot grow it).
#[derive(Debug, Default)]
pub struct FirstRefusals {
    seen: BTreeSet<(NodeId, &'static str)>,
}

impl FirstRefusals {
    pub const CAP: usize = 256;

    /// Whether this is the first refusal of `what` for `peer` (and remembers it).
    pub fn first(&mut self, peer: NodeId, what: &'static str) -> bool {
        if self.seen.len() >= Self::CAP {
            return false;
        }
        self.seen.insert((peer, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_consensus::openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
    use shoal_consensus::types::Vote;
    use shoal_consensus::RaftNodeId;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn vote_of(n: u8) -> Vote {
        Vote::new(3, RaftNodeId(id(n)))
    }

    fn append_from(n: u8) -> Request {
        Request::AppendEntries(AppendEntriesRequest { vote: vote_of(n), prev_log_id: None, entries: vec![], leader_commit: None })
    }

    fn voters(ids: &[u8]) -> BTreeSet<NodeId> {
        ids.iter().map(|n| id(*n)).collect()
    }

    fn manager(n: u8) -> Peer {
        Peer { id: id(n), role: Some(NodeRole::Manager) }
    }

    fn worker(n: u8) -> Peer {
        Peer { id: id(n), role: Some(NodeRole::Worker) }
    }

    #[test]
    fn a_voter_speaking_as_itself_passes() {
        let v = voters(&[1, 2, 3]);
        assert_eq!(check(manager(1), &append_from(1), &v), Ok(()));
        assert_eq!(check(manager(2), &Request::Vote(VoteRequest::new(vote_of(2), None)), &v), Ok(()));
        assert_eq!(check(manager(2), &Request::PreVote(VoteRequest::new(vote_of(2), None)), &v), Ok(()));
        assert_eq!(check(manager(3), &Request::TransferLeader(TransferLeaderRequest::new(vote_of(3), RaftNodeId(id(1)), None)), &v), Ok(()));
    }

    #[test]
    fn speaking_as_another_node_is_refused() {
        let v = voters(&[1, 2, 3]);
        // A worker (or any peer) claiming the leader's id, or a candidate's.
        assert_eq!(check(manager(9), &append_from(1), &v), Err(Refusal::NotSender { kind: "append_entries", claimed: id(1), peer: id(9) }));
        let e = check(manager(2), &Request::Vote(VoteRequest::new(vote_of(1), None)), &v).expect_err("vote as another");
        assert!(matches!(e, Refusal::NotSender { claimed, peer, .. } if claimed == id(1) && peer == id(2)));
        // Even before this node knows any voters.
        assert!(check(manager(9), &append_from(1), &BTreeSet::new()).is_err());
    }

    #[test]
    fn a_non_voter_may_not_run_for_leader() {
        let v = voters(&[1, 2, 3]);
        for request in [Request::Vote(VoteRequest::new(vote_of(9), None)), Request::PreVote(VoteRequest::new(vote_of(9), None))] {
            assert!(matches!(check(manager(9), &request, &v), Err(Refusal::NotVoter { .. })), "{request:?}");
            // A node that knows no membership yet cannot tell.
            assert_eq!(check(manager(9), &request, &BTreeSet::new()), Ok(()));
        }
        // Entries from a manager this node does not know as a voter are taken (its view of
        // the membership may be behind a promotion it can only learn from those entries).
        assert_eq!(check(manager(9), &append_from(9), &v), Ok(()));
        assert_eq!(check(manager(9), &append_from(9), &BTreeSet::new()), Ok(()));
    }

    #[test]
    fn a_workers_certificate_leads_only_where_it_is_known_as_a_voter() {
        let v = voters(&[1, 2, 3]);
        let snapshot = |n: u8| Request::FullSnapshot {
            vote: vote_of(n),
            meta: Default::default(),
            data: Default::default(),
        };
        let transfer = |n: u8| Request::TransferLeader(TransferLeaderRequest::new(vote_of(n), RaftNodeId(id(1)), None));
        for (what, request) in [("entries", append_from(9)), ("a snapshot", snapshot(9)), ("a transfer", transfer(9))] {
            let refused = check(worker(9), &request, &v);
            assert!(matches!(refused, Err(Refusal::NotManager { peer, .. }) if peer == id(9)), "{what}: {refused:?}");
            assert!(check(worker(9), &request, &BTreeSet::new()).is_err(), "{what} before any membership");
            assert!(check(Peer { id: id(9), role: None }, &request, &v).is_err(), "{what} from a certificate with no role");
        }
        // A voter promoted before its certificate was renewed leads where the promotion is known.
        assert_eq!(check(worker(2), &append_from(2), &v), Ok(()));
        assert_eq!(check(worker(2), &snapshot(2), &v), Ok(()));
        // A worker may still answer as itself in ways that lead nowhere: a forwarded write.
        assert_eq!(check(worker(9), &Request::Forward(shoal_consensus::Command::Revoke { node: id(1) }), &v), Ok(()));
    }

    #[test]
    fn each_peer_and_kind_of_refusal_is_logged_once_within_a_bound() {
        let mut logged = FirstRefusals::default();
        assert!(logged.first(id(1), "append_entries"));
        assert!(!logged.first(id(1), "append_entries"), "the retry is only counted");
        assert!(logged.first(id(1), "vote"), "another kind is news");
        assert!(logged.first(id(2), "append_entries"), "another peer is news");
        for n in 0..FirstRefusals::CAP {
            let mut bytes = [9u8; 16];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            logged.first(NodeId(bytes), "vote");
        }
        assert!(!logged.first(id(3), "vote"), "past the bound nothing more is remembered");
        assert!(logged.seen.len() <= FirstRefusals::CAP);
    }

    #[test]
    fn forwarded_writes_make_no_claim() {
        let cmd = shoal_consensus::Command::Revoke { node: id(1) };
        assert_eq!(claimed_sender(&Request::Forward(cmd.clone())), None);
        assert_eq!(check(worker(9), &Request::Forward(cmd), &voters(&[1, 2, 3])), Ok(()));
    }
}
