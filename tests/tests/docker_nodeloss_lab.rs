//! A machine holding Docker API containers dies (its agent is SIGKILLed), on a lab of 3
//! machines with their own Docker Engines, judged by the real `docker` CLI through a
//! surviving node's `docker.sock`:
//!
//! - `docker ps` shows the dead machine's containers as on a node that is not alive;
//! - a container with `--restart always` comes back on another machine with the same id
//!   (its engine runs it there), printed with how long it took;
//! - a container without a restart policy stays with its machine and is shown as lost with
//!   the reason (classic swarm's rule: it is not started twice);
//! - when the machine returns, the lost container is up again where it was (its engine
//!   kept running it) and its engine stops its copy of the moved one.
//!
//! Needs network namespaces, the `docker` CLI, a Docker Engine socket (to build the test
//! image) and dockerd; skipped with a printed reason when one is missing.

use shoal_tests::cluster::{leader_of, statuses};
use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{docker_unavailable, image_tag, is_running, Docker, DockerCleanup, EngineSet};
use shoal_tests::{require_netns, run, Cluster, Lab, Output, TempDir};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(90);
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Exits at once on SIGTERM (busybox `sleep` as PID 1 would ignore it).
const LONG_RUNNING: &str = "trap 'exit 0' TERM; /bin/sleep 3600 & wait";

fn docker(c: &Cluster, config: &TempDir, via: usize, args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", c.node(via).data_dir.join("docker.sock").display()))
        .env("DOCKER_CONFIG", config.path())
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_API_VERSION");
    run(&mut cmd, DOCKER_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", c.report()))
}

fn docker_ok(c: &Cluster, config: &TempDir, via: usize, args: &[&str]) -> String {
    let out = docker(c, config, via, args);
    assert!(out.status.success(), "docker {args:?} through {} failed: {}{}\n{}", c.node(via).name(), out.stdout, out.stderr, c.report());
    out.stdout
}

/// `docker ps` through node `via`: name (`NODE/NAME`) → status text, by container name.
fn ps(c: &Cluster, config: &TempDir, via: usize) -> BTreeMap<String, (String, String)> {
    docker_ok(c, config, via, &["ps", "--no-trunc", "--format", "{{.ID}}\t{{.Names}}\t{{.Status}}"])
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let (id, names, status) = (f.next()?, f.next()?, f.next()?);
            let (node, name) = names.split_once('/')?;
            Some((name.to_string(), (format!("{node} {id}"), status.to_string())))
        })
        .collect()
}

fn node_of(row: &(String, String)) -> &str {
    row.0.split(' ').next().unwrap_or("")
}

fn id_of(row: &(String, String)) -> &str {
    row.0.split(' ').nth(1).unwrap_or("")
}

fn wait_for<T>(c: &Cluster, timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let began = Instant::now();
    let mut last = String::new();
    while began.elapsed() < timeout {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}: {last}\n{}", c.report());
}

#[test]
fn a_dead_machines_always_container_moves_with_its_id_and_the_others_are_lost_with_a_reason() {
    if !require_netns("docker_nodeloss_lab") {
        return;
    }
    if let Some(why) = docker_unavailable().or_else(engines_unavailable) {
        println!("skipped: docker_nodeloss_lab: {why}");
        return;
    }
    if run(Command::new("docker").arg("--version"), Duration::from_secs(10)).map(|o| !o.status.success()).unwrap_or(true) {
        println!("skipped: docker_nodeloss_lab: no docker CLI");
        return;
    }
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("nodeloss");
    let _cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
    lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    let mut engines = EngineSet::of_lab(&lab).unwrap_or_else(|e| panic!("{e}"));
    let (mut c, ids) = shoal_tests::cluster::form_lab_cluster("nodeloss", lab, Duration::from_secs(60));
    let leader = statuses(&c, &[0, 1, 2]).and_then(|st| leader_of(&st)).unwrap_or_default();
    engines.assign(&ids);
    let config = TempDir::new("nodeloss-docker-config");

    // Six single-replica containers spread one "always" and one plain per machine.
    for name in ["a1", "a2", "a3"] {
        docker_ok(&c, &config, 0, &["run", "-d", "--name", name, "--restart", "always", &image, "/bin/sh", "-c", LONG_RUNNING]);
    }
    for name in ["p1", "p2", "p3"] {
        docker_ok(&c, &config, 0, &["run", "-d", "--name", name, &image, "/bin/sh", "-c", LONG_RUNNING]);
    }
    let before = wait_for(&c, MOVE_TIMEOUT, "6 containers up, one always and one plain per machine", || {
        let rows = ps(&c, &config, 0);
        let nodes = |prefix: char| {
            let mut n: Vec<&str> = rows.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, r)| node_of(r)).collect();
            n.sort();
            n.dedup();
            n.len()
        };
        if rows.len() == 6 && rows.values().all(|r| r.1.starts_with("Up")) && nodes('a') == 3 && nodes('p') == 3 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    // The victim: neither the node the test asks nor the Raft leader.
    let victim = (1..3).find(|&i| ids[i] != leader).unwrap_or(2);
    let victim_name = c.node(victim).name().to_string();
    let (a_name, a_row) = before.iter().find(|(k, r)| k.starts_with('a') && node_of(r) == victim_name).map(|(k, r)| (k.clone(), r.clone())).expect("an always container on the victim");
    let (p_name, p_row) = before.iter().find(|(k, r)| k.starts_with('p') && node_of(r) == victim_name).map(|(k, r)| (k.clone(), r.clone())).expect("a plain container on the victim");
    println!("killing {victim_name}, which runs {a_name} (restart always) and {p_name} (no restart policy)");

    c.node_mut(victim).kill();
    let killed = Instant::now();
    let noticed = wait_for(&c, MOVE_TIMEOUT, "docker ps to show the victim's containers on a node that is not alive", || {
        let rows = ps(&c, &config, 0);
        match rows.get(&p_name) {
            Some(r) if node_of(r) == victim_name && r.1.contains(&format!("node {victim_name} is")) => Ok(r.1.clone()),
            other => Err(format!("{p_name}: {other:?}")),
        }
    });
    println!("after {:.1?}: {p_name} {noticed}", killed.elapsed());

    let moved = wait_for(&c, MOVE_TIMEOUT, "the always container up on another machine with the same id", || {
        let rows = ps(&c, &config, 0);
        match rows.get(&a_name) {
            Some(r) if node_of(r) != victim_name && r.1.starts_with("Up") && !r.1.contains("is down") => Ok(r.clone()),
            other => Err(format!("{a_name}: {other:?}")),
        }
    });
    println!("{a_name} running on {} {:.1?} after the kill", node_of(&moved), killed.elapsed());
    assert_eq!(id_of(&moved), id_of(&a_row), "the moved container keeps its id");
    let inspected = docker_ok(&c, &config, 3 - victim, &["inspect", "-f", "{{.Id}} {{.State.Running}}", &a_name]);
    assert_eq!(inspected.trim(), format!("{} true", id_of(&a_row)), "inspect through another survivor");
    // Its new machine's engine really runs it.
    let new_node = (0..3).find(|&i| c.node(i).name() == node_of(&moved)).expect("the new node");
    let per = engines.by_engine(&ids).unwrap_or_else(|e| panic!("{e}"));
    let running_there = per[new_node].iter().filter(|x| is_running(x)).count();
    assert!(running_there >= 3, "the new machine's engine runs its own 2 and the moved one: {:?}", per[new_node]);

    // The plain one stayed: same node, same id, lost with the reason.
    let rows = ps(&c, &config, 0);
    let p_now = rows.get(&p_name).unwrap_or_else(|| panic!("{p_name} is still listed: {rows:?}"));
    assert_eq!(node_of(p_now), victim_name, "{p_name} stays with its machine");
    assert_eq!(id_of(p_now), id_of(&p_row));
    assert!(p_now.1.contains("is down") && p_now.1.contains("lost with its node"), "the reason is shown: {}", p_now.1);
    println!("{p_name}: {}", p_now.1);
    let all_rows = docker_ok(&c, &config, 0, &["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(all_rows.lines().count(), 6, "nothing was started twice: {all_rows}");

    // The machine returns: the lost container is up where it was, the moved one runs once.
    c.node_mut(victim).start();
    wait_for(&c, MOVE_TIMEOUT, "the returned machine's container up again without the lost note", || {
        let rows = ps(&c, &config, 0);
        match (rows.get(&p_name), rows.get(&a_name)) {
            (Some(p), Some(a)) if node_of(p) == victim_name && p.1.starts_with("Up") && !p.1.contains("node ") && node_of(a) == node_of(&moved) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_for(&c, MOVE_TIMEOUT, "the victim's engine to stop its copy of the moved container", || {
        let per = engines.by_engine(&ids)?;
        let running = per[victim].iter().filter(|x| is_running(x)).count();
        if running == 1 { Ok(()) } else { Err(format!("running on the victim's engine (want only {p_name}): {:?}", per[victim])) }
    });
    docker_ok(&c, &config, 0, &["rm", "-f", "a1", "a2", "a3", "p1", "p2", "p3"]);
}
