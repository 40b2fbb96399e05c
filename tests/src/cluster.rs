//! Helpers for stories about the Raft cluster (`shoal status`, `shoal node ls`, writes):
//! shared by `tests/cluster_*.rs` and `benches/cluster.rs`.

use crate::{free_udp_ports, Cluster, Output, Status};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

/// Bound on one `shoal node update|rm`: a write retries for about 10 s when no leader is
/// reachable before the agent answers with an error.
pub const WRITE_CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Every node in `idx` answers `status`.
pub fn statuses(c: &Cluster, idx: &[usize]) -> Option<Vec<Status>> {
    let all: Vec<Result<Status, String>> = idx.iter().map(|&i| c.node(i).status()).collect();
    all.into_iter().collect::<Result<Vec<_>, _>>().ok()
}

/// Role of a node inside the cluster (not bootstrapping or joining).
pub fn in_cluster(s: &Status) -> bool {
    matches!(s.role.as_str(), "leader" | "manager" | "worker")
}

/// The leader every node in `idx` names, when they all name the same one and that node,
/// if it is among `idx`, says it leads.
pub fn agreed_leader(c: &Cluster, idx: &[usize]) -> Option<String> {
    let all = statuses(c, idx)?;
    leader_of(&all)
}

/// [`agreed_leader`] on statuses already read.
pub fn leader_of(all: &[Status]) -> Option<String> {
    let leader = all.first()?.leader.clone()?;
    let agree = all.iter().all(|s| s.leader.as_deref() == Some(leader.as_str()));
    let leader_ok = all.iter().filter(|s| s.node == leader).all(|s| s.role == "leader");
    let one = all.iter().filter(|s| s.role == "leader").count() <= 1;
    (agree && leader_ok && one).then_some(leader)
}

/// Index (in `c`) of the node whose id is `id`, among `idx`.
pub fn index_of(all: &[Status], idx: &[usize], id: &str) -> Option<usize> {
    all.iter().position(|s| s.node == id).map(|p| idx[p])
}

/// `shoal node update TARGET --label-add KEY=VALUE` through node `via`.
pub fn label(c: &Cluster, via: usize, target: &str, key: &str, value: &str) -> Output {
    c.node(via)
        .shoal(&["node", "update", target, "--label-add", &format!("{key}={value}")], WRITE_CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("`shoal node update` through {}: {e}\n{}", c.node(via).name(), c.report()))
}

/// Like [`label`], and the write must succeed.
pub fn label_ok(c: &Cluster, via: usize, target: &str, key: &str, value: &str) {
    let out = label(c, via, target, key, value);
    assert!(
        out.status.success(),
        "`shoal node update {target} --label-add {key}={value}` through {} failed ({}): {}\n{}",
        c.node(via).name(),
        out.status,
        out.stderr.trim(),
        c.report()
    );
}

/// Node `i`'s `node ls` shows `target` with label `key=value`.
pub fn sees_label(c: &Cluster, i: usize, target: &str, key: &str, value: &str) -> bool {
    c.node(i)
        .node_ls()
        .is_ok_and(|rows| rows.iter().any(|r| r.id == target && r.labels.get(key).map(String::as_str) == Some(value)))
}

/// `n` ports P for loopback agents such that P was free a moment ago both as UDP (gossip)
/// and as TCP (the node's one TCP port, same number), all different.
pub fn free_agent_ports(n: usize) -> Vec<u16> {
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    let mut out = Vec::new();
    for _ in 0..50 {
        if out.len() == n {
            break;
        }
        for p in free_udp_ports(n) {
            if out.len() == n {
                break;
            }
            // Bound and released at once, like free_udp_ports.
            if !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
                taken.insert(p);
                out.push(p);
            }
        }
    }
    assert_eq!(out.len(), n, "could not find {n} free ports (UDP and TCP)");
    out
}

/// Starts an agent on every machine of `lab` (each with its machine's own spec and
/// `--bootstrap-expect 3`, one token) and waits up to `timeout` until they form one
/// cluster: every node in it, 3 voters (or every node, below 3), one agreed leader. Returns
/// the cluster and the node ids in machine order. The shared start of the lab stories.
pub fn form_lab_cluster(label: &str, lab: impl Into<std::sync::Arc<crate::Lab>>, timeout: Duration) -> (Cluster, Vec<String>) {
    let lab = lab.into();
    let token = crate::token_new();
    let n = lab.hosts.len();
    let specs: Vec<_> = (0..n).map(|i| lab.agent_spec(i, &token, &["--bootstrap-expect", "3"])).collect();
    let mut c = Cluster::in_lab(label, lab);
    for s in specs {
        c.add(s);
    }
    let all: Vec<usize> = (0..n).collect();
    for &i in &all {
        c.node_mut(i).start();
    }
    let voters = n.min(3);
    c.wait_until(timeout, &format!("{n} nodes form one cluster"), || {
        statuses(&c, &all).is_some_and(|s| crate::every(&s, |s| in_cluster(s) && s.voters.len() == voters) && leader_of(&s).is_some())
    });
    let ids = statuses(&c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report())).into_iter().map(|s| s.node).collect();
    (c, ids)
}
