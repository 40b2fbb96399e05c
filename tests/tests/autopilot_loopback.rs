//! Autopilot on real agents (loopback, `--no-mdns --join`, no privileges): four nodes with
//! `--bootstrap-expect 3` give three managers and one worker; a manager that dies (SIGKILL)
//! is replaced by the worker once it has been down past `--replace-dead-manager-after`, so
//! the cluster is back to three healthy voters and keeps accepting writes; the dead node is
//! no longer a voter.

use shoal_tests::cluster::{free_agent_ports, in_cluster, label_ok, leader_of, sees_label, statuses};
use shoal_tests::{every, token_new, Cluster, NodeSpec, TokenVia};
use std::time::{Duration, Instant};

#[test]
fn a_dead_manager_is_replaced_by_a_healthy_worker() {
    let began = Instant::now();
    let ports = free_agent_ports(4);
    let token = token_new();
    let mut c = Cluster::new("autopilot");
    for (i, port) in ports.iter().enumerate() {
        let seed = if i == 0 { ports[1] } else { ports[0] };
        c.add(NodeSpec {
            name: format!("n{}", i + 1),
            token: token.clone(),
            token_via: TokenVia::Flag,
            netns: None,
            args: vec![
                "--no-mdns".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--join".into(),
                format!("127.0.0.1:{seed}"),
                "--bootstrap-expect".into(),
                "3".into(),
                "--replace-dead-manager-after".into(),
                "2s".into(),
            ],
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    for i in 0..4 {
        c.node_mut(i).start();
    }
    let all = [0, 1, 2, 3];
    c.wait_until(Duration::from_secs(60), "4 nodes: 3 managers and 1 worker", || {
        statuses(&c, &all).is_some_and(|s| {
            every(&s, |s| in_cluster(s) && s.voters.len() == 3 && s.learners.len() == 1) && leader_of(&s).is_some()
        })
    });
    println!("formed in {:.1?}", began.elapsed());
    let st = statuses(&c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let leader = leader_of(&st).unwrap_or_else(|| panic!("no agreed leader\n{}", c.report()));
    let worker = st.iter().position(|s| s.role == "worker").unwrap_or_else(|| panic!("no worker\n{}", c.report()));
    let victim = st.iter().position(|s| s.role == "manager" && s.node != leader).unwrap_or_else(|| panic!("no follower manager\n{}", c.report()));
    let (worker_id, victim_id) = (st[worker].node.clone(), st[victim].node.clone());

    let killed = Instant::now();
    c.node_mut(victim).kill();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    c.wait_until(Duration::from_secs(45), "the worker replaces the dead manager", || {
        statuses(&c, &rest).is_some_and(|s| {
            every(&s, |s| {
                s.voters.len() == 3
                    && s.voters.iter().any(|v| v.id == worker_id)
                    && !s.voters.iter().any(|v| v.id == victim_id)
                    && s.voters.iter().all(|v| v.health == "alive")
            })
        })
    });
    println!("dead manager replaced {:.1?} after the kill (detection + 2 s grace)", killed.elapsed());
    let st = statuses(&c, &rest).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    assert!(st.iter().any(|s| s.node == worker_id && (s.role == "manager" || s.role == "leader")), "{}", c.report());

    // Writes go on through the promoted node.
    label_ok(&c, worker, &leader, "autopilot", "done");
    c.wait_until(Duration::from_secs(20), "every survivor sees the write", || {
        rest.iter().all(|&i| sees_label(&c, i, &leader, "autopilot", "done"))
    });
}
