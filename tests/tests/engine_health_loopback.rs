//! A node whose Docker Engine does not answer says so in its gossiped facts and gets no
//! tasks; it keeps retrying, and once the engine answers it takes tasks again. Two loopback
//! agents (`--no-mdns --join`); the second is pointed with `--docker-socket` at a path where
//! no socket exists yet, then the path is made a link to the real socket.
//!
//! Needs a Docker Engine socket and `/bin/busybox` (busybox-static); skipped with a printed
//! reason otherwise.

use shoal_tests::cluster::{free_agent_ports, in_cluster, leader_of, statuses};
use shoal_tests::services::{
    cli_ok, docker_unavailable, image_tag, service_ps, Docker, DockerCleanup, TaskRow, CONVERGE_CLI_TIMEOUT, LONG_RUNNING,
};
use shoal_tests::{every, token_new, Cluster, NodeSpec, TempDir, TokenVia};
use std::time::Duration;

fn engine_ok(c: &Cluster, via: usize, id: &str) -> Option<bool> {
    let out = c.node(via).shoal(&["members", "--format", "json"], shoal_tests::CLI_TIMEOUT).ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).ok()?;
    rows.iter().find(|r| r["id"].as_str() == Some(id)).and_then(|r| r["resources"]["engine_ok"].as_bool())
}

#[test]
fn a_node_without_a_working_engine_gets_no_tasks_until_its_engine_answers() {
    if let Some(why) = docker_unavailable() {
        println!("skipped: engine_health_loopback: {why}");
        return;
    }
    let real_socket = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        _ => "/var/run/docker.sock".to_string(),
    };
    let docker = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("health");
    let cleanup = DockerCleanup::new(&image);
    docker.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));

    let sockdir = TempDir::new("docker-link");
    let link = sockdir.path().join("docker.sock");
    let ports = free_agent_ports(2);
    let token = token_new();
    let mut c = Cluster::new("enginehealth");
    for (i, port) in ports.iter().enumerate() {
        let mut args = vec!["--no-mdns".to_string(), "--bind".into(), format!("127.0.0.1:{port}")];
        if i == 1 {
            args.extend(["--join".into(), format!("127.0.0.1:{}", ports[0])]);
            args.extend(["--docker-socket".into(), link.display().to_string()]);
        }
        c.add(NodeSpec {
            name: format!("n{}", i + 1),
            token: token.clone(),
            token_via: TokenVia::Flag,
            netns: None,
            args,
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    c.node_mut(0).start();
    c.wait_until(Duration::from_secs(30), "n1 forms the cluster", || {
        statuses(&c, &[0]).is_some_and(|s| every(&s, in_cluster) && leader_of(&s).is_some())
    });
    c.node_mut(1).start();
    let both = [0, 1];
    c.wait_until(Duration::from_secs(30), "n2 joins", || statuses(&c, &both).is_some_and(|s| every(&s, in_cluster)));
    let ids: Vec<String> = statuses(&c, &both).unwrap_or_default().into_iter().map(|s| s.node).collect();
    for id in &ids {
        cleanup.register(id);
    }
    c.wait_until(Duration::from_secs(20), "n1 sees its own engine healthy and n2's not", || {
        engine_ok(&c, 0, &ids[0]) == Some(true) && engine_ok(&c, 0, &ids[1]) == Some(false)
    });

    // Four replicas: all on n1, none on the node whose engine does not answer.
    let mut tail = vec!["app", image.as_str()];
    tail.extend(LONG_RUNNING);
    // Through n1, the manager (n2 is a worker, which may not create services).
    cli_ok(&c, 0, &["service", "create", "--replicas", "4", "--timeout", "60s"], &tail, CONVERGE_CLI_TIMEOUT);
    let live = |c: &Cluster| -> Vec<TaskRow> {
        service_ps(c, 0, "app").unwrap_or_default().into_iter().filter(TaskRow::is_live).collect()
    };
    let rows = live(&c);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.node.as_deref() == Some(ids[0].as_str())), "a task went to the node without an engine: {rows:?}");

    // The engine appears at n2's socket path: n2 reports it healthy and takes new tasks.
    std::os::unix::fs::symlink(&real_socket, &link).unwrap_or_else(|e| panic!("linking the socket: {e}"));
    c.wait_until(Duration::from_secs(20), "n2's engine is seen healthy", || engine_ok(&c, 0, &ids[1]) == Some(true));
    cli_ok(&c, 0, &["service", "scale", "--timeout", "60s"], &["app=8"], CONVERGE_CLI_TIMEOUT);
    let rows = live(&c);
    let on_n2 = rows.iter().filter(|r| r.node.as_deref() == Some(ids[1].as_str()) && r.state == "running").count();
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert_eq!(on_n2, 4, "the new replicas are spread onto the recovered node: {rows:?}");
    cli_ok(&c, 0, &["service", "rm"], &["app"], Duration::from_secs(30));
}
