//! Membership over loopback only, with static seeds and no mDNS: every node joins node 1,
//! node 1 joins node 2. Same story as the namespace test; needs no privileges.

use shoal_tests::story::{membership_story, FOREIGN};
use shoal_tests::cluster::free_agent_ports;
use shoal_tests::{every, run, shoal_bin, token_new, Cluster, NodeSpec, TokenVia};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn five_nodes_form_detect_crash_leave_and_rejoin_over_loopback_seeds() {
    let ports = free_agent_ports(6);
    let mut c = Cluster::new("loopback");
    let token = token_new();
    let other = token_new();
    assert_ne!(token, other, "two `shoal token new` printed the same token");
    for (i, port) in ports.iter().enumerate() {
        let foreign = i == FOREIGN;
        let seed = if i == 0 { ports[1] } else { ports[0] };
        let mut args = vec![
            "--no-mdns".to_string(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
            "--join".into(),
            format!("127.0.0.1:{seed}"),
        ];
        if !foreign {
            args.extend(["--label".to_string(), format!("zone=z{}", i + 1), "--label".into(), "test=loopback".into()]);
        }
        // Exercise all three ways of passing the token.
        let token_via = match i {
            1 => TokenVia::Env,
            2 => TokenVia::File,
            _ => TokenVia::Flag,
        };
        c.add(NodeSpec {
            name: if foreign { "x6".into() } else { format!("n{}", i + 1) },
            token: if foreign { other.clone() } else { token.clone() },
            token_via,
            netns: None,
            args,
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    let times = membership_story(&mut c);
    println!("loopback story done: {times:?}");
}

/// Two loopback nodes seeded at each other.
fn pair(label: &str) -> Cluster {
    let ports = free_agent_ports(2);
    let token = token_new();
    let mut c = Cluster::new(label);
    for (i, port) in ports.iter().enumerate() {
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
                format!("127.0.0.1:{}", ports[1 - i]),
            ],
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    c.node_mut(0).start();
    c.node_mut(1).start();
    c.wait_until(Duration::from_secs(30), "both nodes see 2 alive", || {
        every(0..2, |i| c.node(i).members().is_ok_and(|v| v.len() == 2 && v.iter().all(|m| m.state == "alive")))
    });
    c
}

#[test]
fn sigint_leaves_gracefully_like_sigterm() {
    let mut c = pair("sigint");
    let id = c.node(1).self_id().unwrap_or_else(|e| panic!("{e}"));
    let sent = Instant::now();
    c.node(1).signal("INT");
    c.wait_until(Duration::from_secs(3), "n1 shows n2 left after n2's SIGINT", || {
        c.node(0).members().is_ok_and(|v| v.iter().any(|m| m.id == id && m.state == "left"))
    });
    println!("left seen {:.2?} after SIGINT", sent.elapsed());
    let status = c.node_mut(1).wait_exit(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("n2 did not exit within 10 s of SIGINT\n{}", c.report()));
    assert_eq!(status.code(), Some(0), "n2 exited with {status} after SIGINT\n{}", c.report());
}

#[test]
fn cli_fails_clearly_when_no_agent_runs() {
    let mut c = pair("noagent");
    // A data dir that never had an agent, and one whose agent was SIGKILLed (stale socket).
    let never = c.dir().join("never");
    std::fs::create_dir_all(&never).unwrap_or_else(|e| panic!("{e}"));
    c.node_mut(1).kill();
    let killed = c.node(1).data_dir.clone();
    for dir in [&never, &killed] {
        for sub in ["members", "stats"] {
            let out = run(
                Command::new(shoal_bin()).args([sub, "--data-dir"]).arg(dir).args(["--format", "json"]),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(!out.status.success(), "`shoal {sub}` on {} succeeded without an agent: {}", dir.display(), out.stdout);
            assert!(out.stdout.trim().is_empty(), "`shoal {sub}` without an agent printed to stdout: {}", out.stdout);
            assert!(!out.stderr.trim().is_empty(), "`shoal {sub}` without an agent gave no message");
        }
    }
}

#[test]
fn restarted_nodes_find_each_other_from_remembered_peers_without_seeds() {
    let mut c = pair("remember");
    for i in 0..2 {
        let peers = c.node(i).data_dir.join("peers");
        c.wait_until(Duration::from_secs(30), "the agent saved its known peers", || {
            std::fs::read_to_string(&peers).is_ok_and(|t| t.lines().count() == 1)
        });
    }
    let ids: Vec<String> = (0..2).map(|i| c.node(i).self_id().unwrap_or_else(|e| panic!("{e}"))).collect();
    // Power cut on both, then start them again with no --join and no mDNS at all.
    for i in 0..2 {
        c.node_mut(i).kill();
        let args = &mut c.node_mut(i).spec.args;
        if let Some(pos) = args.iter().position(|a| a == "--join") {
            args.drain(pos..pos + 2);
        }
        assert!(!c.node(i).spec.args.iter().any(|a| a == "--join"));
    }
    for i in 0..2 {
        c.node_mut(i).start();
    }
    c.wait_until(Duration::from_secs(30), "both see each other alive again, same ids", || {
        every(0..2, |i| {
            c.node(i).members().is_ok_and(|v| v.len() == 2 && v.iter().all(|m| m.state == "alive" && ids.contains(&m.id)))
        })
    });
}
