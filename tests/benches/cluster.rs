//! Raft cluster figures on real processes (printed, not asserted), nodes started at once
//! with `--bootstrap-expect 3`:
//! (a) cold start of 3 and of 5 agents → every node in the cluster with a certificate
//!     (role leader/manager/worker, 3 voters, the rest learners, one agreed leader);
//! (b) SIGKILL of the leader → the survivors agree on a new leader, and → a write issued
//!     through a survivor at the moment of the kill has committed;
//! (c) the leader of 3 cut off the network (namespace lab only; it keeps running) → the
//!     same two figures;
//! (d) SIGTERM of the leader of 3 (a graceful stop: it hands leadership over) → the same.
//! Uses the namespace lab (mDNS) when it can, loopback with --join seeds otherwise;
//! `SHOAL_BENCH_LOOPBACK=1` forces loopback. Bounded to about 2 minutes.
//! Run: `cargo build --release -p shoal-node && cargo bench -p shoal-tests --bench cluster`
//! (falls back to the debug binary, with a note, when there is no release one).

use shoal_tests::cluster::{agreed_leader, free_agent_ports, in_cluster, leader_of, statuses};
use shoal_tests::{every, summary, BenchMode, run, shoal_bin, token_new, Cluster, Lab, NodeSpec, TokenVia};
use std::process::Command;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// No new round starts after this much time.
const BUDGET: Duration = Duration::from_secs(90);
const MAX_ROUNDS: usize = 3;

fn cluster(mode: BenchMode, nodes: usize, round: usize) -> Cluster {
    let token = token_new();
    let label = format!("rbench{nodes}-{round}");
    let expect = ["--bootstrap-expect".to_string(), "3".into()];
    match mode {
        BenchMode::Netns => {
            let lab = Lab::new(nodes).unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}"));
            let hosts = lab.hosts.clone();
            let mut c = Cluster::in_lab(&label, lab);
            for (i, h) in hosts.iter().enumerate() {
                c.add(NodeSpec {
                    name: format!("n{}", i + 1),
                    token: token.clone(),
                    token_via: TokenVia::Flag,
                    netns: Some(h.ns.clone()),
                    args: [vec!["--mdns-interface".into(), h.ifname.clone()], expect.to_vec()].concat(),
                    expect_addr: format!("{}:7480", h.ip),
                });
            }
            c
        }
        BenchMode::Loopback => {
            let ports = free_agent_ports(nodes);
            let mut c = Cluster::new(&label);
            for (i, p) in ports.iter().enumerate() {
                let seed = if i == 0 { ports[1] } else { ports[0] };
                let args = vec!["--no-mdns".into(), "--bind".into(), format!("127.0.0.1:{p}"), "--join".into(), format!("127.0.0.1:{seed}")];
                c.add(NodeSpec {
                    name: format!("n{}", i + 1),
                    token: token.clone(),
                    token_via: TokenVia::Flag,
                    netns: None,
                    args: [args, expect.to_vec()].concat(),
                    expect_addr: format!("127.0.0.1:{p}"),
                });
            }
            c
        }
    }
}

/// Start of `nodes` agents → all in the cluster with certificates, 3 voters, one leader.
fn cold_start(c: &mut Cluster, nodes: usize) -> Duration {
    let idx: Vec<usize> = (0..nodes).collect();
    let t0 = Instant::now();
    for i in 0..nodes {
        c.node_mut(i).start();
    }
    c.wait_until_every(POLL, FORM_TIMEOUT, "every node is in the cluster with a certificate", || {
        statuses(c, &idx).is_some_and(|all| {
            every(&all, |s| in_cluster(s) && s.cert_expires_unix.is_some() && s.voters.len() == 3 && s.learners.len() == nodes - 3)
                && leader_of(&all).is_some()
        })
    });
    t0.elapsed()
}

/// How the leader is lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// SIGKILL: its connections are reset at once.
    Kill,
    /// SIGTERM: a graceful stop (the leader hands leadership over, then leaves).
    Term,
    /// Cut off the network (namespace lab only): it keeps running and answers nothing, so
    /// a write forwarded to it gets no answer.
    Cut,
}

/// Loss of the leader → (new leader agreed by the survivors, a write through a survivor
/// committed). The write is issued at the loss and retried until it succeeds.
fn failover(c: &mut Cluster, nodes: usize, loss: Loss) -> (Duration, Duration) {
    let idx: Vec<usize> = (0..nodes).collect();
    let all = statuses(c, &idx).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let old = leader_of(&all).unwrap_or_else(|| panic!("no agreed leader\n{}", c.report()));
    let victim = all.iter().position(|s| s.node == old).unwrap_or(0);
    let survivors: Vec<usize> = idx.iter().copied().filter(|&i| i != victim).collect();
    // Through a surviving manager: a worker may not make a user's writes.
    let via_idx = survivors.iter().copied().find(|&i| all[i].role == "manager").unwrap_or(survivors[0]);
    let via = c.node(via_idx).data_dir.clone();
    let target = all[via_idx].node.clone();
    let t0 = Instant::now();
    match loss {
        Loss::Kill => c.node_mut(victim).kill(),
        Loss::Term => c.node(victim).signal("TERM"),
        Loss::Cut => c.lab().expect("a cut needs the namespace lab").isolate(victim).unwrap_or_else(|e| panic!("cutting the leader off: {e}")),
    }
    let writer = std::thread::spawn(move || {
        let mut n = 0;
        loop {
            n += 1;
            let out = run(
                Command::new(shoal_bin())
                    .args(["node", "update", &target, "--label-add", &format!("bench=w{n}"), "--data-dir"])
                    .arg(&via),
                Duration::from_secs(30),
            );
            if out.as_ref().is_ok_and(|o| o.status.success()) {
                return Some(t0.elapsed());
            }
            if t0.elapsed() > FAILOVER_TIMEOUT {
                return None;
            }
            std::thread::sleep(POLL);
        }
    });
    let elected = c.wait_until_every(POLL, FAILOVER_TIMEOUT, "the survivors agree on a new leader", || {
        agreed_leader(c, &survivors).is_some_and(|l| l != old)
    });
    let written = writer.join().ok().flatten().unwrap_or_else(|| panic!("no write committed within {FAILOVER_TIMEOUT:?} of the kill\n{}", c.report()));
    (elected, written)
}


fn main() {
    let began = Instant::now();
    let mode = BenchMode::choose();
    println!("cluster bench (--bootstrap-expect 3, default Raft timing), binary {}", shoal_bin().display());
    println!("mode: {}", mode.describe());
    println!("timings are from polling `shoal status` every {} ms on every node (resolution ≈ one poll round)", POLL.as_millis());

    let mut cold3 = Vec::new();
    let mut cold5 = Vec::new();
    let mut elected = Vec::new();
    let mut written = Vec::new();
    let mut cut_elected = Vec::new();
    let mut cut_written = Vec::new();
    let mut term_elected = Vec::new();
    let mut term_written = Vec::new();
    for round in 0..MAX_ROUNDS {
        if round > 0 && began.elapsed() > BUDGET {
            break;
        }
        for nodes in [3, 5] {
            let mut c = cluster(mode, nodes, round);
            let f = cold_start(&mut c, nodes);
            let (e, w) = failover(&mut c, nodes, Loss::Kill);
            println!(
                "round {} ({nodes} nodes): cold start {:.2} s; leader SIGKILL → new leader {:.2} s, → write committed {:.2} s",
                round + 1,
                f.as_secs_f64(),
                e.as_secs_f64(),
                w.as_secs_f64()
            );
            if nodes == 3 { &mut cold3 } else { &mut cold5 }.push(f);
            elected.push(e);
            written.push(w);
        }
        {
            let mut c = cluster(mode, 3, round + 20);
            cold_start(&mut c, 3);
            let (e, w) = failover(&mut c, 3, Loss::Term);
            println!("round {} (3 nodes): leader SIGTERM → new leader {:.2} s, → write committed {:.2} s", round + 1, e.as_secs_f64(), w.as_secs_f64());
            term_elected.push(e);
            term_written.push(w);
        }
        if mode == BenchMode::Netns {
            let mut c = cluster(mode, 3, round + 10);
            cold_start(&mut c, 3);
            let (e, w) = failover(&mut c, 3, Loss::Cut);
            println!("round {} (3 nodes): leader cut off → new leader {:.2} s, → write committed {:.2} s", round + 1, e.as_secs_f64(), w.as_secs_f64());
            cut_elected.push(e);
            cut_written.push(w);
        }
    }

    println!();
    println!("== results ({}) ==", if mode == BenchMode::Netns { "netns + mDNS" } else { "loopback + seeds" });
    summary("(a) start of 3 agents → all in the cluster with certificates, one leader", &cold3);
    summary("(a) start of 5 agents → all in the cluster with certificates (3 managers, 2 workers)", &cold5);
    summary("(b) leader SIGKILL → survivors agree on a new leader (3- and 5-node rounds)", &elected);
    summary("(b) leader SIGKILL → a write through a survivor has committed", &written);
    if mode == BenchMode::Netns {
        summary("(c) leader cut off the network → survivors agree on a new leader (3 nodes)", &cut_elected);
        summary("(c) leader cut off the network → a write through a survivor has committed", &cut_written);
    } else {
        println!("(c) leader cut off: skipped (needs the namespace lab)");
    }
    summary("(d) leader SIGTERM → survivors agree on a new leader (3 nodes; goal < 0.3 s)", &term_elected);
    summary("(d) leader SIGTERM → a write through a survivor has committed", &term_written);
    println!("total bench time {:.1} s", began.elapsed().as_secs_f64());
}
