//! Service figures on real agents and Docker Engines (printed, not asserted):
//! `shoal service create --replicas 30` on a 3-node cluster → 30 containers running, seen
//! through the Docker API (labels `shoal.service`/`shoal.node`), and → `service ls` reports
//! 30/30 running; then `service rm` → every container gone (the cleanup between rounds).
//! The create is `--detach`ed so the clock is ours, not the CLI's polling.
//!
//! One cluster serves every round (its start is not measured; see `benches/cluster.rs`).
//! The 3 agents run on the machines of a lab with engines (network namespaces, mDNS, each
//! machine its own Docker Engine, as in `tests/services_docker.rs`; the lab's start and the
//! image load are printed) when possible, otherwise on loopback with --join seeds, sharing
//! the host's engine (`SHOAL_BENCH_LOOPBACK=1` forces it). The image is a `FROM scratch` +
//! static busybox built here on the host's engine; it and every container are removed at
//! the end, also on failure.
//! The scheduler's own placements/s (1,000 nodes × 10,000 tasks) is `cluster/benches/scheduler.rs`.
//! Run: `cargo build --release -p shoal-node && cargo bench -p shoal-tests --bench services`
//! (falls back to the debug binary, with a note, when there is no release one).

use shoal_tests::cluster::{free_agent_ports, in_cluster, leader_of, statuses};
use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{
    cli_ok, docker_unavailable, engines_ok, image_tag, is_running, of_service, per_node, service_ls, Docker, DockerCleanup, EngineSet,
    LONG_RUNNING, SERVICE_CLI_TIMEOUT,
};
use shoal_tests::{every, summary, shoal_bin, token_new, Cluster, Lab, NodeSpec, TokenVia};
use std::time::{Duration, Instant};

const REPLICAS: usize = 30;
const NODES: usize = 3;
const POLL: Duration = Duration::from_millis(50);
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// No new round starts after this much time.
const BUDGET: Duration = Duration::from_secs(100);
const MAX_ROUNDS: usize = 3;

/// The cluster (not started) and its engines: the lab's, with `image` loaded, or the host's.
fn cluster(netns: bool, image: &str) -> (Cluster, EngineSet) {
    let token = token_new();
    let expect = ["--bootstrap-expect".to_string(), "3".into()];
    if netns {
        let lab = Lab::with_engines(NODES).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
        let took = lab.load_images(&[image]).unwrap_or_else(|e| panic!("{e}"));
        println!("lab: {NODES} engines up in {:.2} s, {image} loaded into them in {:.2} s", lab.started_in().as_secs_f64(), took.as_secs_f64());
        let engines = EngineSet::of_lab(&lab).unwrap_or_else(|e| panic!("{e}"));
        let specs: Vec<NodeSpec> = (0..NODES).map(|i| lab.agent_spec(i, &token, &["--bootstrap-expect", "3"])).collect();
        let mut c = Cluster::in_lab("sbench", lab);
        for spec in specs {
            c.add(spec);
        }
        (c, engines)
    } else {
        let ports = free_agent_ports(NODES);
        let mut c = Cluster::new("sbench");
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
        (c, EngineSet::host().unwrap_or_else(|e| panic!("{e}")))
    }
}


fn main() {
    let began = Instant::now();
    if let Some(why) = docker_unavailable() {
        println!("services bench skipped: {why}");
        return;
    }
    let forced = std::env::var("SHOAL_BENCH_LOOPBACK").as_deref() == Ok("1");
    let netns = match engines_unavailable() {
        None if forced => {
            println!("note: SHOAL_BENCH_LOOPBACK=1; using loopback");
            false
        }
        None => true,
        Some(why) => {
            println!("note: a lab with engines is not possible here ({why}); using loopback and the host's engine");
            false
        }
    };
    let docker = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("sbench");
    let cleanup = DockerCleanup::new(&image); // dropped after the cluster
    docker.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    println!("services bench: {REPLICAS} replicas on {NODES} nodes, binary {}", shoal_bin().display());
    println!(
        "mode: {} (host Docker API {}); timings from polling every {} ms",
        if netns { "network namespaces, mDNS, a Docker Engine per machine" } else { "loopback, --join seeds, one shared Docker Engine" },
        docker.api_version(),
        POLL.as_millis()
    );

    let (mut c, mut engines) = cluster(netns, &image);
    let all: Vec<usize> = (0..NODES).collect();
    for &i in &all {
        c.node_mut(i).start();
    }
    c.wait_until(FORM_TIMEOUT, "the nodes form one cluster", || {
        statuses(&c, &all).is_some_and(|s| every(&s, in_cluster) && leader_of(&s).is_some())
    });
    let ids: Vec<String> = statuses(&c, &all).unwrap_or_default().into_iter().map(|s| s.node).collect();
    for id in &ids {
        cleanup.register(id);
    }
    if netns {
        engines.assign(&ids);
    }
    c.wait_until(Duration::from_secs(30), "every node sees every engine healthy", || engines_ok(&c, &all, &ids));

    let containers = |service: &str| {
        let all = engines.containers(&ids).unwrap_or_else(|e| panic!("{e}"));
        all.into_iter().filter(|c| c.owner.service == service).collect::<Vec<_>>()
    };
    let (mut to_containers, mut to_reported, mut to_gone) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=MAX_ROUNDS {
        if round > 1 && began.elapsed() > BUDGET {
            break;
        }
        let name = format!("bench{round}");
        let replicas = REPLICAS.to_string();
        let t0 = Instant::now();
        cli_ok(&c, 0, &["service", "create", "--detach", "--replicas", &replicas], &[&[name.as_str(), image.as_str()][..], &LONG_RUNNING].concat(), SERVICE_CLI_TIMEOUT);
        let mut reported = None;
        c.wait_until_every(POLL, RUN_TIMEOUT, &format!("{REPLICAS} containers of {name} run"), || {
            if reported.is_none() && service_ls(&c, 0).is_ok_and(|ls| ls.iter().any(|r| r.name == name && r.running as usize == REPLICAS)) {
                reported = Some(t0.elapsed());
            }
            containers(&name).iter().filter(|c| is_running(c)).count() == REPLICAS
        });
        let running = t0.elapsed();
        let reported = match reported {
            Some(r) => r,
            None => {
                c.wait_until_every(POLL, RUN_TIMEOUT, "service ls reports them running", || {
                    service_ls(&c, 0).is_ok_and(|ls| ls.iter().any(|r| r.name == name && r.running as usize == REPLICAS))
                });
                t0.elapsed()
            }
        };
        let now = containers(&name);
        let spread = per_node(&of_service(&now, &name), &ids);
        let t1 = Instant::now();
        cli_ok(&c, 0, &["service", "rm"], &[&name], SERVICE_CLI_TIMEOUT);
        c.wait_until_every(POLL, RUN_TIMEOUT, &format!("every container of {name} is gone"), || containers(&name).is_empty());
        let gone = t1.elapsed();
        println!(
            "round {round}: create → {REPLICAS} containers running {:.2} s, → service ls {REPLICAS}/{REPLICAS} running {:.2} s (per node {:?}); rm → all gone {:.2} s",
            running.as_secs_f64(),
            reported.as_secs_f64(),
            spread.values().collect::<Vec<_>>(),
            gone.as_secs_f64()
        );
        to_containers.push(running);
        to_reported.push(reported);
        to_gone.push(gone);
    }

    println!();
    println!("== results ({}) ==", if netns { "netns + mDNS, an engine per machine" } else { "loopback + seeds, one engine" });
    summary(&format!("service create --replicas {REPLICAS} → {REPLICAS} containers running (Docker API)"), &to_containers);
    summary(&format!("service create --replicas {REPLICAS} → service ls shows {REPLICAS}/{REPLICAS} running"), &to_reported);
    summary(&format!("service rm → all {REPLICAS} containers removed"), &to_gone);
    println!("total bench time {:.1} s", began.elapsed().as_secs_f64());
    drop(c);
    drop(cleanup);
}
