//! Services end to end: 3 real agents on 3 lab machines, each a network namespace with its
//! own Docker Engine and hostname ([`Lab::with_engines`], mDNS, `--bootstrap-expect 3`, the
//! agent named after the hostname and given `--docker-socket` of its machine's engine).
//! Every listing goes engine by engine, and a container of one node found on another node's
//! engine fails the test. The image is a `FROM scratch` + static busybox built here on the
//! host's engine under a tag unique to the run (no registry) and loaded into the 3 engines
//! (`docker save | docker load`); the lab's engines go with the lab, and the image is removed
//! from the host at the end, also on failure. One cluster carries all the stories, in this
//! order:
//!
//! 1. `service create web --replicas 6` → 6 running containers, 2 on each machine's engine,
//!    one per live task of `service ps`;
//! 2. bad input is refused with a clear message and a non-zero exit, and `service ls` is
//!    unchanged: unknown service (ps, scale, rm), bad constraint, `--replicas 1001`,
//!    `scale web=1001`, duplicate name, `--publish 80`, `scale web=x`; an image that no node
//!    has is accepted but its task fails with a reason naming the image;
//! 3. restart policies: `--restart on-failure:2` with `exit 3` → exit code 3 and exactly 2
//!    restarts, then it stays ended; `--restart always` with an exit 3 after a second →
//!    restarts keep growing, exit code 3 shown;
//! 4. `service scale web=3` → exactly 3 containers remain;
//! 5. SIGKILL of a (non-leader) node with web tasks — its containers keep running on its
//!    machine's engine, like a machine cut off — → after `--reschedule-after` its slots run on
//!    the 2 survivors; it comes back with the same data dir → it removes its stale
//!    containers and every slot has exactly one running container (checked over a few
//!    reconcile ticks after convergence);
//! 6. `node update ID --availability drain` → the drained node's tasks move to the others
//!    and its containers go;
//! 7. `service rm` → every container of the service is gone.
//!
//! `three_agents_share_the_host_engine` keeps the other supported setup: several nodes on
//! one machine and one engine (loopback agents, the host's engine, containers told apart by
//! the `shoal.node` label): 3 replicas run, one per node, and `service rm` removes them.
//!
//! `create_through_a_follower_waits_instead_of_failing` (loopback, no Docker, no
//! privileges) checks that a write through a follower is readable there at once (a forwarded
//! write is applied locally before the CLI gets its answer).
//!
//! Needs root (namespaces; fails unless SHOAL_SKIP_NETNS=1 says to skip), a Docker Engine
//! socket, `dockerd` and `/bin/busybox` from busybox-static (skipped with a printed reason if
//! one is missing; an engine that does not answer is a failure).

use shoal_engine::{ContainerInfo, ContainerState};
use shoal_tests::cluster::{free_agent_ports, in_cluster, leader_of, statuses};
use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{
    cli, cli_ok, docker_unavailable, engines_ok, image_tag, is_running, of_service, per_node, service_ls, service_ps, show, Docker,
    DockerCleanup, EngineSet, ServiceRow, TaskRow, CONVERGE_CLI_TIMEOUT, LONG_RUNNING, SERVICE_CLI_TIMEOUT,
};
use shoal_tests::{every, require_netns, token_new, Cluster, Lab, NodeSpec, TokenVia};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a convergence the test polls for itself.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(45);
/// SIGKILL → gossip says down (~6 s) → `--reschedule-after` (5 s) → placed and started.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// After convergence, how long "one running container per slot" must keep holding (several
/// 1 s reconcile ticks of every node and 500 ms scheduler passes).
const STABLE_FOR: Duration = Duration::from_secs(3);

/// The cluster, its engines (machine `i`'s runs node `i`) and the nodes' ids, with the
/// helpers the stories share.
struct World {
    c: Cluster,
    engines: EngineSet,
    ids: Vec<String>,
    image: String,
}

impl World {
    fn id_index(&self, id: &str) -> usize {
        self.ids.iter().position(|i| i == id).unwrap_or_else(|| panic!("{id} is not one of the nodes {:?}", self.ids))
    }

    fn name_of(&self, id: &str) -> String {
        self.ids.iter().position(|i| i == id).map_or_else(|| format!("{id:.8}"), |i| self.c.node(i).name().to_string())
    }

    /// Every container of the run's nodes (any state), on every engine.
    fn containers(&self) -> Vec<ContainerInfo> {
        self.engines.containers(&self.ids).unwrap_or_else(|e| panic!("{e}\n{}", self.c.report()))
    }

    fn ls(&self, via: usize) -> Vec<ServiceRow> {
        service_ls(&self.c, via).unwrap_or_else(|e| panic!("{e}\n{}", self.c.report()))
    }

    /// Live rows of `service ps` (desired running; pending slots included). An error is
    /// returned, for polls to retry: a node may not have applied a write made elsewhere.
    fn live(&self, via: usize, name: &str) -> Result<Vec<TaskRow>, String> {
        Ok(service_ps(&self.c, via, name)?.into_iter().filter(TaskRow::is_live).collect())
    }

    /// Index of the node that leads now.
    fn leader(&self) -> usize {
        let all: Vec<usize> = (0..self.ids.len()).collect();
        let st = statuses(&self.c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", self.c.report()));
        let id = leader_of(&st).unwrap_or_else(|| panic!("no agreed leader\n{}", self.c.report()));
        self.id_index(&id)
    }

    /// The service has exactly `n` live tasks, all reported running, on nodes in `allowed`,
    /// and the engine runs exactly one container for each of them, on that task's node, and
    /// no other container of the service exists. `Err` says what is not so yet.
    fn settled(&self, via: usize, name: &str, n: usize, allowed: &[String]) -> Result<Vec<TaskRow>, String> {
        let live = service_ps(&self.c, via, name)?.into_iter().filter(TaskRow::is_live).collect::<Vec<_>>();
        let shown = || live.iter().map(|r| format!("\n    {}", r.short())).collect::<String>();
        if live.len() != n || !live.iter().all(|r| r.state == "running" && r.task.is_some()) {
            return Err(format!("want {n} live tasks, all running; service ps shows:{}", shown()));
        }
        if let Some(r) = live.iter().find(|r| !r.node.as_ref().is_some_and(|x| allowed.contains(x))) {
            return Err(format!("task {} is on a node it should not be on:{}", r.short(), shown()));
        }
        let all = self.engines.containers(&self.ids)?;
        let mine = of_service(&all, name);
        let want: BTreeSet<(String, u64)> = live.iter().map(|r| (r.node.clone().unwrap_or_default(), r.task.unwrap_or(0))).collect();
        let have: BTreeSet<(String, u64)> = mine.iter().filter(|c| is_running(c)).map(|c| (c.owner.node.clone(), c.owner.task)).collect();
        if mine.len() != n || have != want {
            return Err(format!("the engine does not run exactly the live tasks; containers: {}; tasks:{}", show(&mine), shown()));
        }
        Ok(live)
    }

    fn wait_settled(&self, via: usize, name: &str, n: usize, allowed: &[String], timeout: Duration, what: &str) -> Vec<TaskRow> {
        let (rows, took) = poll(&self.c, timeout, what, || self.settled(via, name, n, allowed));
        println!("{what}: {took:.1?}");
        rows
    }

    /// `service create` with `flags` through node `via`, waiting for convergence.
    fn create(&self, via: usize, flags: &[&str], name: &str, cmd: &[&str]) -> Instant {
        let t = Instant::now();
        let head = [&["service", "create", "--timeout", "60s"][..], flags].concat();
        let tail = [&[name, self.image.as_str()][..], cmd].concat();
        cli_ok(&self.c, via, &head, &tail, CONVERGE_CLI_TIMEOUT);
        t
    }
}

/// Polls `cond` every 200 ms until it gives `Ok`; returns that and how long it took. On
/// timeout, panics with `what`, the last `Err` and the cluster's report.
fn poll<T>(c: &Cluster, timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match cond() {
            Ok(v) => return (v, start.elapsed()),
            Err(e) if start.elapsed() >= timeout => {
                panic!("timed out after {:.1?} waiting until {what}; last seen: {e}\n{}", start.elapsed(), c.report())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// [`poll`], then fails if `cond` stops holding within [`STABLE_FOR`].
fn poll_then_hold(c: &Cluster, timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<(), String>) -> Duration {
    let ((), took) = poll(c, timeout, what, &mut cond);
    let until = Instant::now() + STABLE_FOR;
    while Instant::now() < until {
        if let Err(e) = cond() {
            panic!("{what} held, then stopped holding: {e}\n{}", c.report());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    took
}

/// Agents on the lab's machines: named after the hostname, each with its machine's engine.
fn lab_cluster(lab: Lab) -> Cluster {
    let token = token_new();
    let specs: Vec<NodeSpec> =
        (0..lab.hosts.len()).map(|i| lab.agent_spec(i, &token, &["--bootstrap-expect", "3", "--reschedule-after", "5s"])).collect();
    let mut c = Cluster::in_lab("svc", lab);
    for spec in specs {
        c.add(spec);
    }
    c
}

/// `n` loopback agents (`--no-mdns`, `--join` seeds, `--bootstrap-expect n`), all on the
/// host's engine when they run tasks.
fn loopback_cluster(label: &str, n: usize) -> Cluster {
    let ports = free_agent_ports(n);
    let token = token_new();
    let mut c = Cluster::new(label);
    for (i, p) in ports.iter().enumerate() {
        let seed = if i == 0 { ports[1 % n] } else { ports[0] };
        let expect = n.to_string();
        c.add(NodeSpec {
            name: format!("n{}", i + 1),
            token: token.clone(),
            token_via: TokenVia::Flag,
            netns: None,
            args: ["--no-mdns", "--bind", &format!("127.0.0.1:{p}"), "--join", &format!("127.0.0.1:{seed}"), "--bootstrap-expect", &expect]
                .map(String::from)
                .to_vec(),
            expect_addr: format!("127.0.0.1:{p}"),
        });
    }
    c
}

/// Starts every node and waits for one cluster with one leader and every node a voter;
/// returns the node ids (node `i`'s at `i`).
fn form(c: &mut Cluster) -> Vec<String> {
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    for &i in &all {
        c.node_mut(i).start();
    }
    let n = all.len();
    let took = c.wait_until(FORM_TIMEOUT, &format!("{n} nodes form one cluster with one leader"), || {
        statuses(c, &all).is_some_and(|s| every(&s, |s| in_cluster(s) && s.voters.len() == n) && leader_of(&s).is_some())
    });
    println!("cluster of {n} formed in {took:.1?}");
    let st = statuses(c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    st.iter().map(|s| s.node.clone()).collect()
}

/// Runs a command that must fail: non-zero exit, `expect` in its stderr (case-insensitive),
/// and `service ls` exactly as before.
fn refused(w: &World, what: &str, head: &[&str], tail: &[&str], expect: &str, before: &[ServiceRow]) {
    let out = cli(&w.c, 1, head, tail, SERVICE_CLI_TIMEOUT);
    let err = out.stderr.trim();
    assert!(!out.status.success(), "{what}: `shoal {} {}` succeeded: {}{}", head.join(" "), tail.join(" "), out.stdout, w.c.report());
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "{what}: the error does not say {expect:?}: {err:?}"
    );
    assert!(err.lines().count() <= 4, "{what}: the error is not short: {err}");
    let after = w.ls(0);
    assert_eq!(after, before, "{what} changed `service ls`");
    println!("  refused ({what}): {}", err.lines().next().unwrap_or(""));
}

#[test]
fn services_run_spread_scale_restart_fail_over_drain_and_go_on_docker() {
    if !require_netns("services_docker") {
        return;
    }
    if let Some(why) = docker_unavailable() {
        println!("skipped: services_docker: {why}");
        return;
    }
    if let Some(why) = engines_unavailable() {
        println!("skipped: services_docker: {why}");
        return;
    }
    let began = Instant::now();
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e} (the socket exists: is dockerd running?)"));
    let image = image_tag("svc");
    // Declared before the cluster: dropped after it (the image leaves the host's engine).
    let cleanup = DockerCleanup::new(&image);
    let t = Instant::now();
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    println!("built {image} on the host's engine in {:.1?} (Docker API {})", t.elapsed(), host.api_version());

    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
    let took = lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    println!("loaded {image} into the 3 machines' engines in {:.2} s", took.as_secs_f64());
    let mut engines = EngineSet::of_lab(&lab).unwrap_or_else(|e| panic!("{e}"));
    let mut c = lab_cluster(lab);
    let all = [0, 1, 2];
    let ids = form(&mut c);
    engines.assign(&ids);
    let st = statuses(&c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    for (i, s) in st.iter().enumerate() {
        assert_eq!(s.name, format!("n{}", i + 1), "the agent on machine n{} (no --name) is not named after its hostname", i + 1);
    }
    let took = c.wait_until(Duration::from_secs(30), "every node sees every engine healthy", || engines_ok(&c, &all, &ids));
    println!("all engines healthy in gossip after {took:.1?} more");
    let mut w = World { c, engines, ids, image };

    // ------------------------------------------------------------------ 1. six replicas
    // Through a follower: the write is forwarded to the leader and applied here before the
    // CLI's first read (see `create_through_a_follower_waits_instead_of_failing`).
    let leader = w.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let t = w.create(follower, &["--replicas", "6"], "web", &LONG_RUNNING);
    println!("service create web --replicas 6 converged (CLI returned) in {:.1?}", t.elapsed());
    let live = w.wait_settled(0, "web", 6, &w.ids, CONVERGE_TIMEOUT, "6 web containers run, one per task");
    let per_engine = w.engines.by_engine(&w.ids).unwrap_or_else(|e| panic!("{e}"));
    let counts: Vec<usize> = per_engine.iter().map(|list| of_service(list, "web").len()).collect();
    assert_eq!(counts, [2, 2, 2], "6 replicas are not 2 on each machine's engine: {}", show(&of_service(&w.containers(), "web")));
    let containers = w.containers();
    let web = of_service(&containers, "web");
    let spread = per_node(&web, &w.ids);
    assert!(spread.values().all(|&n| n == 2), "6 replicas are not spread 2/2/2: {spread:?}: {}", show(&web));
    let slots: BTreeSet<String> = live.iter().map(|r| r.slot.clone()).collect();
    assert_eq!(slots, (1..=6).map(|i| format!("web.{i}")).collect::<BTreeSet<_>>(), "the slots of web");
    for c in &web {
        assert_eq!(c.name, format!("shoal-{}-{}", c.owner.node, c.owner.task), "container name");
    }
    let other = (leader + 1) % 3;
    let (ls, _) = poll(&w.c, CONVERGE_TIMEOUT, "service ls through another node shows web 6/6", || {
        let ls = service_ls(&w.c, other)?;
        let rows: Vec<_> = ls.iter().map(|r| (r.name.as_str(), r.mode.as_str(), r.desired, r.running, r.pending)).collect();
        if rows == [("web", "replicated", 6, 6, 0)] { Ok(ls.clone()) } else { Err(format!("{ls:?}")) }
    });
    assert_eq!(ls[0].image, w.image);

    // ------------------------------------------------------------------ 2. bad input
    let before = w.ls(0);
    let img = w.image.as_str();
    let create = ["service", "create", "--detach"];
    refused(&w, "ps of an unknown service", &["service", "ps"], &["nope"], "no service named", &before);
    refused(&w, "scale of an unknown service", &["service", "scale"], &["nope=2"], "no service named nope", &before);
    refused(&w, "rm of an unknown service", &["service", "rm"], &["nope"], "no service named nope", &before);
    refused(&w, "bad constraint", &[&create[..], &["--constraint", "node.labels.zone=attic"]].concat(), &["c1", img], "bad --constraint", &before);
    refused(&w, "1001 replicas", &[&create[..], &["--replicas", "1001"]].concat(), &["big", img], "replicas must be 0 to 1000", &before);
    refused(&w, "scale to 1001", &["service", "scale"], &["web=1001"], "replicas must be 0 to 1000", &before);
    refused(&w, "duplicate name", &[&create[..], &["--replicas", "1"]].concat(), &["web", img], "service web already exists", &before);
    refused(&w, "bad port", &[&create[..], &["--publish", "80"]].concat(), &["p1", img], "HOST:CONTAINER", &before);
    refused(&w, "scale to a non-number", &["service", "scale"], &["web=x"], "`x` is not a number", &before);
    refused(&w, "scale without =", &["service", "scale"], &["web"], "NAME=REPLICAS", &before);
    // The web service itself did not move.
    w.settled(0, "web", 6, &w.ids).unwrap_or_else(|e| panic!("web changed after the refused commands: {e}"));

    // An image no node has: accepted (shoal cannot know), the task fails and says why.
    let ghost_image = format!("{}-absent", w.image);
    cli_ok(&w.c, 1, &["service", "create", "--detach", "--restart", "never"], &["ghost", &ghost_image], SERVICE_CLI_TIMEOUT);
    let (why, _) = poll(&w.c, CONVERGE_TIMEOUT, "the ghost task fails with a reason naming the image", || {
        let live = w.live(1, "ghost")?;
        live.iter()
            .find(|r| r.state == "failed" && r.error.as_deref().is_some_and(|e| e.contains(&ghost_image) && e.contains("is not on this node") && e.contains("pulling it failed")))
            .and_then(|r| r.error.clone())
            .ok_or_else(|| format!("{:?}", live.iter().map(TaskRow::short).collect::<Vec<_>>()))
    });
    println!("  missing image: service ps says: {why}");
    assert!(of_service(&w.containers(), "ghost").is_empty(), "a container was created for a missing image");
    cli_ok(&w.c, 1, &["service", "rm"], &["ghost"], SERVICE_CLI_TIMEOUT);

    // ------------------------------------------------------------------ 3. restart policies
    cli_ok(&w.c, 2, &["service", "create", "--detach", "--restart", "on-failure:2"], &["crash", img, "/bin/sh", "-c", "exit 3"], SERVICE_CLI_TIMEOUT);
    cli_ok(&w.c, 2, &["service", "create", "--detach", "--restart", "always"], &["flap", img, "/bin/sh", "-c", "/bin/sleep 1; exit 3"], SERVICE_CLI_TIMEOUT);
    let t = Instant::now();
    let one = |name: &str| -> Result<TaskRow, String> {
        let live = w.live(2, name)?;
        match live.as_slice() {
            [r] => Ok(r.clone()),
            _ => Err(format!("{name} has {} live tasks: {:?}", live.len(), live.iter().map(TaskRow::short).collect::<Vec<_>>())),
        }
    };
    let check = |name: &str, ok: &dyn Fn(&TaskRow) -> bool| one(name).and_then(|r| if ok(&r) { Ok(r) } else { Err(r.short()) });
    let (crash, took) = poll(&w.c, CONVERGE_TIMEOUT, "crash (on-failure:2, exit 3) has exit code 3, 2 restarts and has ended", || {
        check("crash", &|r| r.exit_code == Some(3) && r.restarts == 2 && (r.state == "exited (3)" || r.state == "failed"))
    });
    println!("on-failure:2 used up its restarts after {took:.1?}: {}", crash.short());
    let (flap, _) = poll(&w.c, CONVERGE_TIMEOUT, "flap (always, exit 3 after 1 s) shows exit code 3 and at least 2 restarts", || {
        check("flap", &|r| r.exit_code == Some(3) && r.restarts >= 2)
    });
    println!("always: {} restarts after {:.1?}", flap.restarts, t.elapsed());
    // flap keeps restarting; meanwhile crash makes no third attempt and stays exited (3).
    poll(&w.c, Duration::from_secs(20), "flap restarts again", || check("flap", &|r| r.restarts > flap.restarts));
    let crash_now = one("crash").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (crash_now.restarts, crash_now.exit_code, crash_now.task),
        (2, Some(3), crash.task),
        "crash restarted past on-failure:2: {}",
        crash_now.short()
    );
    let containers = w.containers();
    let crashed = of_service(&containers, "crash");
    assert!(
        crashed.len() == 1 && crashed[0].state == ContainerState::Exited { code: 3 },
        "crash should have one container, exited with 3: {}",
        show(&crashed)
    );
    for name in ["crash", "flap"] {
        cli_ok(&w.c, 0, &["service", "rm"], &[name], SERVICE_CLI_TIMEOUT);
    }
    w.c.wait_until(CONVERGE_TIMEOUT, "the containers of crash, flap and ghost are gone", || {
        let all = w.containers();
        ["crash", "flap", "ghost"].iter().all(|s| of_service(&all, s).is_empty())
    });
    poll(&w.c, CONVERGE_TIMEOUT, "service ls is as before crash, flap and ghost", || {
        let ls = service_ls(&w.c, 0)?;
        if ls == before { Ok(()) } else { Err(format!("{ls:?}")) }
    });

    // ------------------------------------------------------------------ 4. scale down
    let t = Instant::now();
    cli_ok(&w.c, w.leader(), &["service", "scale", "--timeout", "60s"], &["web=3"], CONVERGE_CLI_TIMEOUT);
    let live = w.wait_settled(1, "web", 3, &w.ids, CONVERGE_TIMEOUT, "scale web=3: exactly 3 containers remain");
    println!("scale 6 → 3 done in {:.1?}: {}", t.elapsed(), live.iter().map(|r| format!("{}@{}", r.slot, r.node_name.as_deref().unwrap_or("?"))).collect::<Vec<_>>().join(" "));

    // ------------------------------------------------------------------ 5. node loss, comeback
    let st = statuses(&w.c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", w.c.report()));
    let leader_id = leader_of(&st).unwrap_or_else(|| panic!("no agreed leader\n{}", w.c.report()));
    let by_node = |rows: &[TaskRow]| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in rows {
            *m.entry(r.node.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    };
    let counts = by_node(&live);
    let victim_id = w
        .ids
        .iter()
        .filter(|id| counts.contains_key(*id))
        .max_by_key(|id| (**id != leader_id, counts[*id]))
        .cloned()
        .unwrap_or_else(|| panic!("no node has web tasks"));
    let victim = w.id_index(&victim_id);
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let survivor_ids: Vec<String> = survivors.iter().map(|&i| w.ids[i].clone()).collect();
    let stale: Vec<ContainerInfo> = of_service(&w.containers(), "web").into_iter().filter(|c| c.owner.node == victim_id).cloned().collect();
    w.c.node_mut(victim).kill();
    let killed = Instant::now();
    println!(
        "SIGKILLed {} ({}leader) with {} web task(s); its containers keep running",
        w.c.node(victim).name(),
        if victim_id == leader_id { "" } else { "not the " },
        stale.len()
    );
    poll(&w.c, FAILOVER_TIMEOUT, "web has 3 running tasks, only on the survivors, each with its running container", || {
        w.settled_beside_stale(survivors[0], &survivor_ids, &victim_id)
    });
    println!("its tasks run on the survivors {:.1?} after the kill", killed.elapsed());
    let still: Vec<ContainerInfo> = of_service(&w.containers(), "web").into_iter().filter(|c| c.owner.node == victim_id).cloned().collect();
    assert!(
        still.iter().filter(|c| is_running(c)).count() == stale.len(),
        "the dead agent's containers should still run on its machine's engine (a cut-off machine): {}",
        show(&still.iter().collect::<Vec<_>>())
    );

    w.c.node_mut(victim).start();
    let back = Instant::now();
    let took = poll_then_hold(&w.c, CONVERGE_TIMEOUT, "after the comeback, one running container per slot and no stale container", || {
        one_running_per_slot(&w, 0)
    });
    println!(
        "{} back: stale containers removed, one running container per slot after {took:.1?} (held {STABLE_FOR:?}); {:.1?} since restart",
        w.c.node(victim).name(),
        back.elapsed()
    );
    for s in &stale {
        assert!(!w.containers().iter().any(|c| c.id == s.id), "stale container {} still exists", s.name);
    }

    // ------------------------------------------------------------------ 6. drain
    let live = w.settled(0, "web", 3, &w.ids).unwrap_or_else(|e| panic!("{e}"));
    let counts = by_node(&live);
    let drained_id = w.ids.iter().filter(|id| counts.contains_key(*id)).max_by_key(|id| counts[*id]).cloned().unwrap_or_default();
    let drained = w.id_index(&drained_id);
    let others: Vec<String> = w.ids.iter().filter(|i| **i != drained_id).cloned().collect();
    let via = all.iter().copied().find(|&i| i != drained).unwrap_or(0);
    let t = Instant::now();
    cli_ok(&w.c, via, &["node", "update", &drained_id, "--availability", "drain"], &[], SERVICE_CLI_TIMEOUT);
    w.wait_settled(via, "web", 3, &others, CONVERGE_TIMEOUT, &format!("drain of {}: its {} task(s) run on the others", w.name_of(&drained_id), counts[&drained_id]));
    assert!(
        !w.containers().iter().any(|c| c.owner.node == drained_id),
        "the drained node still has containers"
    );
    println!("drain done in {:.1?}", t.elapsed());
    cli_ok(&w.c, via, &["node", "update", &drained_id, "--availability", "active"], &[], SERVICE_CLI_TIMEOUT);

    // ------------------------------------------------------------------ 7. rm
    let t = Instant::now();
    cli_ok(&w.c, 2, &["service", "rm"], &["web"], SERVICE_CLI_TIMEOUT);
    w.c.wait_until(CONVERGE_TIMEOUT, "every container of web is gone and service ls is empty", || {
        of_service(&w.containers(), "web").is_empty() && service_ls(&w.c, 2).is_ok_and(|ls| ls.is_empty())
    });
    println!("service rm web: all containers gone in {:.1?}", t.elapsed());
    assert!(w.containers().is_empty(), "containers left: {}", show(&w.containers().iter().collect::<Vec<_>>()));
    println!("services story done in {:.1?}", began.elapsed());
    drop(w);
    drop(cleanup);
}

impl World {
    /// After the victim's death: 3 live web tasks, all running, all on the survivors, each
    /// with one running container on its node; the victim's old containers may still run.
    fn settled_beside_stale(&self, via: usize, survivors: &[String], victim: &str) -> Result<(), String> {
        let live: Vec<TaskRow> = service_ps(&self.c, via, "web")?.into_iter().filter(TaskRow::is_live).collect();
        let shown = || live.iter().map(|r| format!("\n    {}", r.short())).collect::<String>();
        if live.len() != 3 || !live.iter().all(|r| r.state == "running" && r.node.as_ref().is_some_and(|n| survivors.contains(n))) {
            return Err(format!("live tasks:{}", shown()));
        }
        let all = self.engines.containers(&self.ids)?;
        let web = of_service(&all, "web");
        let running: BTreeSet<(String, u64)> =
            web.iter().filter(|c| is_running(c) && c.owner.node != victim).map(|c| (c.owner.node.clone(), c.owner.task)).collect();
        let want: BTreeSet<(String, u64)> = live.iter().map(|r| (r.node.clone().unwrap_or_default(), r.task.unwrap_or(0))).collect();
        if running != want {
            return Err(format!("containers: {}; live tasks:{}", show(&web), shown()));
        }
        Ok(())
    }
}

/// Every slot of web has exactly one running container, it belongs to the slot's live task
/// on that task's node, and the returned node has no container of a task not assigned to it.
fn one_running_per_slot(w: &World, via: usize) -> Result<(), String> {
    let ps = service_ps(&w.c, via, "web")?;
    let live: Vec<&TaskRow> = ps.iter().filter(|r| r.is_live()).collect();
    if live.len() != 3 || !live.iter().all(|r| r.state == "running") {
        return Err(format!("live tasks: {}", live.iter().map(|r| r.short()).collect::<Vec<_>>().join("; ")));
    }
    let slot_of: BTreeMap<u64, &str> = ps.iter().filter_map(|r| r.task.map(|t| (t, r.slot.as_str()))).collect();
    let live_tasks: BTreeMap<u64, &str> = live.iter().filter_map(|r| Some((r.task?, r.node.as_deref()?))).collect();
    let all = w.engines.containers(&w.ids)?;
    let web = of_service(&all, "web");
    let mut per_slot: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in web.iter().filter(|c| is_running(c)) {
        let slot = slot_of.get(&c.owner.task).map_or_else(|| format!("(task {} unknown)", c.owner.task), |s| s.to_string());
        per_slot.entry(slot).or_default().push(c);
    }
    for r in &live {
        let n = per_slot.get(&r.slot).map_or(0, Vec::len);
        if n != 1 {
            return Err(format!("slot {} has {n} running containers: {}", r.slot, show(&web)));
        }
    }
    if per_slot.len() != live.len() {
        return Err(format!("running containers outside the live slots: {}", show(&web)));
    }
    for c in &web {
        if live_tasks.get(&c.owner.task) != Some(&c.owner.node.as_str()) {
            return Err(format!("container {} ({}) is not a live task of its node: {}", c.name, c.state, show(&web)));
        }
    }
    Ok(())
}

/// `service create` (waiting for convergence, as by default) through a node that is not the
/// leader must succeed once the service is created: the CLI's first `service ps` reads the
/// follower's state right after the forwarded write (this failed 4 times in 40 before
/// forwarded writes were applied locally before answering). `--replicas 0` so that no
/// container and no Docker is needed: loopback agents, no privileges.
#[test]
fn create_through_a_follower_waits_instead_of_failing() {
    const ATTEMPTS: usize = 40;
    let mut c = loopback_cluster("svcfollow", 3);
    let all = [0, 1, 2];
    form(&mut c);
    let st = statuses(&c, &all).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let leader = leader_of(&st).unwrap_or_default();
    let followers: Vec<usize> = all.iter().copied().filter(|&i| st[i].node != leader).collect();
    let mut failed = Vec::new();
    for n in 1..=ATTEMPTS {
        let via = followers[n % followers.len()];
        let name = format!("s{n}");
        let out = cli(&c, via, &["service", "create", "--replicas", "0", "--timeout", "20s"], &[&name, "shoal-test-none:1"], SERVICE_CLI_TIMEOUT);
        if !out.status.success() {
            failed.push(format!("{name} through {}: {}", c.node(via).name(), out.stderr.trim()));
        }
    }
    let leader_idx = all.iter().copied().find(|&i| st[i].node == leader).unwrap_or(0);
    let names: BTreeSet<String> = service_ls(&c, leader_idx).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|r| r.name).collect();
    assert_eq!(names, (1..=ATTEMPTS).map(|n| format!("s{n}")).collect::<BTreeSet<_>>(), "service ls through the leader");
    assert!(failed.is_empty(), "{} of {ATTEMPTS} creates through a follower failed although the services exist:\n{}", failed.len(), failed.join("\n"));
}

/// Several nodes on one machine share its engine (a supported setup): 3 loopback agents on
/// the host's engine, `--replicas 3` → 3 running containers, one per node, each labelled
/// with its node; `service rm` → none left.
#[test]
fn three_agents_share_the_host_engine() {
    if let Some(why) = docker_unavailable() {
        println!("skipped: three_agents_share_the_host_engine: {why}");
        return;
    }
    let host = EngineSet::host().unwrap_or_else(|e| panic!("{e} (the socket exists: is dockerd running?)"));
    let image = image_tag("svchost");
    // Declared before the cluster: dropped after it, once the agents are dead.
    let cleanup = DockerCleanup::new(&image);
    host.docker(0).build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let mut c = loopback_cluster("svchost", 3);
    let all = [0, 1, 2];
    let ids = form(&mut c);
    for id in &ids {
        cleanup.register(id);
    }
    c.wait_until(Duration::from_secs(30), "every node sees every engine healthy", || engines_ok(&c, &all, &ids));
    let t = Instant::now();
    cli_ok(&c, 0, &["service", "create", "--timeout", "60s", "--replicas", "3"], &[&["one", image.as_str()][..], &LONG_RUNNING].concat(), CONVERGE_CLI_TIMEOUT);
    let (web, _) = poll(&c, CONVERGE_TIMEOUT, "3 containers of `one` run on the host's engine, one per node", || {
        let all = host.containers(&ids)?;
        let mine: Vec<ContainerInfo> = of_service(&all, "one").into_iter().cloned().collect();
        let refs: Vec<&ContainerInfo> = mine.iter().collect();
        let spread = per_node(&refs, &ids);
        if mine.len() == 3 && mine.iter().all(is_running) && spread.values().all(|&n| n == 1) {
            Ok(mine)
        } else {
            Err(format!("per node {spread:?}: {}", show(&refs)))
        }
    });
    println!("3 replicas on one shared engine run in {:.1?}: {}", t.elapsed(), show(&web.iter().collect::<Vec<_>>()));
    let live = service_ps(&c, 1, "one").unwrap_or_else(|e| panic!("{e}"));
    let want: BTreeSet<(String, u64)> = live.iter().filter(|r| r.is_live()).map(|r| (r.node.clone().unwrap_or_default(), r.task.unwrap_or(0))).collect();
    let have: BTreeSet<(String, u64)> = web.iter().map(|c| (c.owner.node.clone(), c.owner.task)).collect();
    assert_eq!(have, want, "the containers are not the live tasks of `service ps`");
    cli_ok(&c, 2, &["service", "rm"], &["one"], SERVICE_CLI_TIMEOUT);
    c.wait_until(CONVERGE_TIMEOUT, "every container of `one` is gone from the host's engine", || {
        host.containers(&ids).is_ok_and(|all| of_service(&all, "one").is_empty())
    });
    drop(c);
    drop(cleanup);
}
