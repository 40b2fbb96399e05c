//! Prints scheduler throughput: placements per second at 1,000 nodes × 10,000 tasks, and the
//! cost of a pass over an already converged cluster of that size.

use shoal_cluster::scheduler::*;
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let nodes: Vec<NodeView> = (0..1000u64)
        .map(|i| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(i + 1).to_be_bytes());
            NodeView {
                id: NodeId(b),
                hostname: format!("n{i}"),
                arch: "x86_64".into(),
                labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 4))]),
                health: Health::Alive,
                availability: Availability::Active,
                engine_ok: true,
                cpu_millis: 8000,
                memory_bytes: 16 << 30,
            }
        })
        .collect();
    let services: Vec<ServiceView> = (0..100)
        .map(|s| ServiceView {
            name: format!("svc{s}"),
            mode: Mode::Replicated(100),
            constraints: if s % 2 == 0 { vec![shoal_cluster::constraint::Constraint::parse("node.labels.zone!=z0").expect("valid")] } else { vec![] },
            reserve_cpu_millis: 100,
            reserve_memory_bytes: 64 << 20,
            // A tenth of the services publish a host port: at most one such task per node.
            host_ports: if s % 10 == 0 { vec![HostPort::tcp(8000 + s as u16)] } else { vec![] },
            stays_with_node: false,
            group: None,
        })
        .collect();
    let cfg = SchedulerConfig::default();

    let runs = 5;
    let mut best = f64::MAX;
    let mut tasks = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let decisions = schedule(&cfg, 0, &nodes, &services, &[]);
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        tasks = decisions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decision::Place { service, slot, node } => Some(TaskView { id: i as u64, service: service.clone(), slot: *slot, node: *node }),
                _ => None,
            })
            .collect();
    }
    assert_eq!(tasks.len(), 10_000, "every task placed");
    println!("scheduler: 1000 nodes x 10000 tasks, cold placement: {:.1} ms, {:.0} placements/s (best of {runs})", best * 1e3, 10_000.0 / best);

    let mut best_pass = f64::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        let decisions = schedule(&cfg, 0, &nodes, &services, &tasks);
        best_pass = best_pass.min(start.elapsed().as_secs_f64());
        assert!(decisions.is_empty(), "a converged cluster needs no decisions");
    }
    println!("scheduler: pass over converged 1000 x 10000: {:.1} ms (best of {runs})", best_pass * 1e3);
}
