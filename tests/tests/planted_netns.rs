//! The node side of a bug planted in the shared controller (`shoal_control`): with
//! `--planted-bug grant-manager-to-learners` (test-only, hidden) the member that answers a
//! join grants the manager role to a node that is not a Raft voter, exactly the wrong grant
//! the simulator's whole-mode sweep catches with the same switch
//! (`sim/tests/whole.rs::planted_grant_manager_to_learners_is_caught_by_the_sweep_and_replayed`):
//! both run one controller.
//!
//! Story, on a lab of three namespaces, every node `--voters 1` (so joiners stay workers):
//! n1 with the bug creates the cluster; n2 joins through it and is handed a manager
//! certificate while it is a learner. n1 restarts without the bug; n3 joins and is handed a
//! worker certificate, as it should be.
//!
//! Needs root; fails unless SHOAL_SKIP_NETNS=1 says to skip.

use shoal_tests::cluster::in_cluster;
use shoal_tests::{require_netns, token_new, Cluster, Lab};
use std::time::Duration;

const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const PLANTED: &str = "grant-manager-to-learners";

/// The role in the node's "received a certificate from the cluster" log line: what the
/// member that answered its join granted (a later renewal may change the certificate).
fn granted_role(c: &Cluster, i: usize) -> Option<String> {
    let log = std::fs::read_to_string(&c.node(i).log_path).ok()?;
    let line = log.lines().find(|l| l.contains("received a certificate from the cluster"))?;
    let role = line.split_whitespace().find_map(|w| w.strip_prefix("role="))?;
    Some(role.trim_matches('"').to_string())
}

#[test]
fn a_join_answer_with_the_planted_bug_grants_manager_to_a_learner_as_in_the_simulator() {
    if !require_netns("planted_netns") {
        return;
    }
    let lab = Lab::new(3).unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}"));
    let token = token_new();
    let specs: Vec<_> = (0..3)
        .map(|i| {
            let mut extra = vec!["--voters", "1"];
            if i == 0 {
                extra.extend(["--planted-bug", PLANTED]);
            }
            lab.agent_spec(i, &token, &extra)
        })
        .collect();
    let mut c = Cluster::in_lab("planted", lab);
    for spec in specs {
        c.add(spec);
    }
    c.node_mut(0).start();
    c.wait_until(FORM_TIMEOUT, "n1 creates the cluster", || c.node(0).status().is_ok_and(|s| in_cluster(&s)));
    let log = std::fs::read_to_string(&c.node(0).log_path).unwrap_or_default();
    assert!(log.contains("bug planted on purpose"), "n1 does not say that it runs with a planted bug:\n{}", c.report());

    // n2 joins through n1, the only member: the planted bug answers.
    c.node_mut(1).start();
    c.wait_until(FORM_TIMEOUT, "n2 joins and is a learner", || {
        c.node(1).status().is_ok_and(|s| in_cluster(&s) && s.role == "worker" && s.learners.len() == 1)
    });
    assert_eq!(granted_role(&c, 1).as_deref(), Some("manager"), "n2 (a learner) was not granted the manager role\n{}", c.report());

    // Without the bug, a joiner is a worker.
    c.node_mut(0).kill();
    c.node_mut(0).spec.args.retain(|a| a != "--planted-bug" && a != PLANTED);
    c.node_mut(0).start();
    c.wait_until(FORM_TIMEOUT, "n1 leads again", || c.node(0).status().is_ok_and(|s| s.role == "leader"));
    c.node_mut(2).start();
    c.wait_until(FORM_TIMEOUT, "n3 joins and is a learner", || {
        c.node(2).status().is_ok_and(|s| in_cluster(&s) && s.role == "worker" && s.learners.len() == 2)
    });
    assert_eq!(granted_role(&c, 2).as_deref(), Some("worker"), "n3 was not granted the worker role\n{}", c.report());
}
