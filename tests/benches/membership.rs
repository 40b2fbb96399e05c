//! Membership figures on real processes (printed, not asserted):
//! (a) start of 5 agents → all see 5 alive; (b) SIGKILL of one → the 4 others show it down;
//! (c) gossip bytes sent per node per second at 5 nodes, steady state, over a 10 s window.
//! Uses the namespace lab (mDNS) when it can, loopback with --join seeds otherwise.
//! `SHOAL_BENCH_LOOPBACK=1` forces loopback. Bounded to about 90 s.
//! Run: `cargo build --release -p shoal-node && cargo bench -p shoal-tests` (falls back to the
//! debug binary, with a note, when there is no release one).

use shoal_tests::{every, free_udp_ports, shoal_bin, summary, BenchMode, token_new, Cluster, Lab, NodeSpec, Stats, TokenVia};
use std::time::{Duration, Instant};

const NODES: usize = 5;
const POLL: Duration = Duration::from_millis(50);
const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(10);
/// No new round starts after this much time.
const BUDGET: Duration = Duration::from_secs(55);
const MAX_ROUNDS: usize = 3;

fn cluster(mode: BenchMode, round: usize) -> Cluster {
    let token = token_new();
    match mode {
        BenchMode::Netns => {
            let lab = Lab::new(NODES).unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}"));
            let hosts = lab.hosts.clone();
            let mut c = Cluster::in_lab(&format!("bench{round}"), lab);
            for (i, h) in hosts.iter().enumerate() {
                c.add(NodeSpec {
                    name: format!("n{}", i + 1),
                    token: token.clone(),
                    token_via: TokenVia::Flag,
                    netns: Some(h.ns.clone()),
                    args: vec!["--mdns-interface".into(), h.ifname.clone()],
                    expect_addr: format!("{}:7480", h.ip),
                });
            }
            c
        }
        BenchMode::Loopback => {
            let ports = free_udp_ports(NODES);
            let mut c = Cluster::new(&format!("bench{round}"));
            for (i, p) in ports.iter().enumerate() {
                let seed = if i == 0 { ports[1] } else { ports[0] };
                c.add(NodeSpec {
                    name: format!("n{}", i + 1),
                    token: token.clone(),
                    token_via: TokenVia::Flag,
                    netns: None,
                    args: vec![
                        "--no-mdns".into(),
                        "--bind".into(),
                        format!("127.0.0.1:{p}"),
                        "--join".into(),
                        format!("127.0.0.1:{seed}"),
                    ],
                    expect_addr: format!("127.0.0.1:{p}"),
                });
            }
            c
        }
    }
}

/// Every node in `observers` answers and `ok` holds for its view.
fn all_views(c: &Cluster, observers: &[usize], ok: impl Fn(&[shoal_tests::Member]) -> bool) -> bool {
    every(observers, |&i| c.node(i).members().is_ok_and(|v| ok(&v)))
}

fn stats_all(c: &Cluster) -> Vec<Stats> {
    (0..NODES)
        .map(|i| c.node(i).stats().unwrap_or_else(|e| panic!("stats of {}: {e}", c.node(i).name())))
        .collect()
}


fn main() {
    let began = Instant::now();
    let mode = BenchMode::choose();
    println!("membership bench, {NODES} nodes, binary {}", shoal_bin().display());
    println!("mode: {}", mode.describe());
    println!("timings are from polling `shoal members` every {} ms on every node (resolution ≈ one poll round)", POLL.as_millis());

    let all: Vec<usize> = (0..NODES).collect();
    let mut formation = Vec::new();
    let mut down = Vec::new();
    let mut traffic = None;
    for round in 0..MAX_ROUNDS {
        if round > 0 && began.elapsed() > BUDGET {
            break;
        }
        let mut c = cluster(mode, round);
        let t0 = Instant::now();
        for i in 0..NODES {
            c.node_mut(i).start();
        }
        c.wait_until_every(POLL, FORMATION_TIMEOUT, "all see 5 alive", || {
            all_views(&c, &all, |v| v.len() == NODES && v.iter().all(|m| m.state == "alive"))
        });
        let f = t0.elapsed();
        println!("round {}: formation {:.2} s", round + 1, f.as_secs_f64());
        formation.push(f);

        if traffic.is_none() {
            std::thread::sleep(SETTLE);
            let a = stats_all(&c);
            let ta = Instant::now();
            std::thread::sleep(WINDOW);
            let b = stats_all(&c);
            let secs = ta.elapsed().as_secs_f64();
            let per_node: Vec<(f64, f64, f64)> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| {
                    (
                        (b.bytes_out - a.bytes_out) as f64 / secs,
                        (b.packets_out - a.packets_out) as f64 / secs,
                        (b.bytes_in - a.bytes_in) as f64 / secs,
                    )
                })
                .collect();
            let drops: u64 = b
                .iter()
                .map(|s| s.dropped_forged + s.dropped_replayed + s.dropped_clock_skew + s.dropped_malformed + s.foca_rejected)
                .sum();
            traffic = Some((per_node, secs, drops));
        }

        let victim = NODES - 1;
        let victim_id = c.node(victim).self_id().unwrap_or_else(|e| panic!("{e}"));
        let others: Vec<usize> = (0..NODES).filter(|&i| i != victim).collect();
        let t1 = Instant::now();
        c.node_mut(victim).kill();
        c.wait_until_every(POLL, DOWN_TIMEOUT, "the 4 others show the victim down", || {
            all_views(&c, &others, |v| v.iter().any(|m| m.id == victim_id && m.state == "down"))
        });
        let d = t1.elapsed();
        println!("round {}: crash → down everywhere {:.2} s", round + 1, d.as_secs_f64());
        down.push(d);
        drop(c);
    }

    println!();
    println!("== results ({}) ==", if mode == BenchMode::Netns { "netns + mDNS" } else { "loopback + seeds" });
    summary("(a) start of 5 agents → all see 5 alive", &formation);
    summary("(b) SIGKILL of one → 4 others show it down", &down);
    if let Some((per_node, secs, drops)) = traffic {
        let out: Vec<f64> = per_node.iter().map(|p| p.0).collect();
        let mean = out.iter().sum::<f64>() / out.len() as f64;
        let pkts = per_node.iter().map(|p| p.1).sum::<f64>() / per_node.len() as f64;
        let inb = per_node.iter().map(|p| p.2).sum::<f64>() / per_node.len() as f64;
        let each: Vec<String> = out.iter().map(|b| format!("{b:.0}")).collect();
        println!(
            "(c) gossip sent per node at 5 nodes, steady, {secs:.1} s window: mean {mean:.0} B/s ({pkts:.1} packets/s), received {inb:.0} B/s; per node [{}] B/s; dropped datagrams (all nodes, since start): {drops}",
            each.join(", ")
        );
    }
    println!("total bench time {:.1} s", began.elapsed().as_secs_f64());
}
