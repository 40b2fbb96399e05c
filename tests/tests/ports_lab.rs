//! Host ports are a resource: `service create --replicas 6 -p 8080:80` on 3 lab machines,
//! each with its own Docker Engine ([`Lab::with_engines`]), runs one task per node (each
//! answering HTTP on its own machine's address, port 8080) and leaves 3 slots pending with a
//! reason naming port 8080 (the create's wait ends once the 3 run, saying so, instead of
//! waiting out its timeout); `scale web=3` then converges with nothing pending.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{cli_ok, docker_unavailable, image_tag, is_running, of_service, service_ps, Docker, DockerCleanup, EngineSet, SERVICE_CLI_TIMEOUT};
use shoal_tests::{require_netns, run, Cluster, Lab};
use std::process::Command;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

/// An HTTP server on port 80 whose page is the container's hostname.
const HTTPD: [&str; 3] = ["/bin/sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"];

fn wait_for<T>(c: &Cluster, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let began = Instant::now();
    let mut last = String::new();
    while began.elapsed() < CONVERGE {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for {what}: {last}\n{}", c.report());
}

#[test]
fn replicas_publishing_one_host_port_get_one_node_each_and_the_rest_pend_naming_the_port() {
    if !require_netns("ports_lab") {
        return;
    }
    if let Some(why) = docker_unavailable().or_else(engines_unavailable) {
        println!("skipped: ports_lab: {why}");
        return;
    }
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("ports");
    let _cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
    lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    let mut engines = EngineSet::of_lab(&lab).unwrap_or_else(|e| panic!("{e}"));
    let addrs: Vec<(String, String)> = lab.hosts.iter().map(|h| (h.ns.clone(), h.ip.to_string())).collect();
    let (c, ids) = shoal_tests::cluster::form_lab_cluster("ports", lab, Duration::from_secs(60));
    engines.assign(&ids);

    // The create waits for what can run, then says what cannot be placed instead of waiting
    // out its timeout.
    let t = Instant::now();
    let out = shoal_tests::services::cli(&c, 0, &["service", "create", "--replicas", "6", "-p", "8080:80", "web", &image], &HTTPD, Duration::from_secs(60));
    assert!(!out.status.success(), "create of 6 replicas on one host port over 3 nodes reports the unplaceable slots: {}", out.stderr);
    assert!(out.stderr.contains("3 slot(s) cannot be placed now") && out.stderr.contains("8080"), "{}", out.stderr);
    println!("create returned in {:.1?}: {}", t.elapsed(), out.stderr.lines().last().unwrap_or(""));
    wait_for(&c, "one running web container on each machine's engine", || {
        let per = engines.by_engine(&ids)?;
        let running: Vec<usize> = per.iter().map(|l| of_service(l, "web").into_iter().filter(|c| is_running(c)).count()).collect();
        if running == [1, 1, 1] { Ok(()) } else { Err(format!("running per engine: {running:?}")) }
    });
    let pending = wait_for(&c, "3 slots pending with a reason naming port 8080", || {
        let rows = service_ps(&c, 1, "web")?;
        let pending: Vec<String> = rows.iter().filter(|r| r.task.is_none()).filter_map(|r| r.error.clone()).collect();
        if pending.len() == 3 && pending.iter().all(|e| e.contains("8080")) { Ok(pending) } else { Err(format!("{rows:?}")) }
    });
    println!("pending: {}", pending[0]);
    // Every node answers on its own address, port 8080, from its own container.
    let mut pages = Vec::new();
    for (ns, ip) in &addrs {
        let page = wait_for(&c, &format!("http://{ip}:8080/ to answer"), || {
            let out = run(Command::new("ip").args(["netns", "exec", ns, "curl", "-s", "-m", "3", &format!("http://{ip}:8080/")]), Duration::from_secs(10))?;
            if out.status.success() && !out.stdout.trim().is_empty() { Ok(out.stdout.trim().to_string()) } else { Err(out.stderr) }
        });
        pages.push(page);
    }
    pages.sort();
    pages.dedup();
    assert_eq!(pages.len(), 3, "three different containers answered on the three machines' port 8080: {pages:?}");

    let t = Instant::now();
    cli_ok(&c, 2, &["service", "scale", "web=3"], &[], Duration::from_secs(60));
    let rows = service_ps(&c, 0, "web").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.iter().filter(|r| r.task.is_none()).count(), 0, "nothing pending after scale web=3: {rows:?}");
    println!("scale web=3 converged in {:.1?}", t.elapsed());
    cli_ok(&c, 0, &["service", "rm", "web"], &[], SERVICE_CLI_TIMEOUT);
}
