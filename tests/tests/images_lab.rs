//! Images reach every node without a registry: 3 agents on 3 lab machines, each with its
//! own Docker Engine ([`Lab::with_engines`]).
//!
//! 1. An image that only machine n1's engine holds runs on all 3 nodes: `service create
//!    --replicas 3` places one task per node, n2 and n3 fetch the image from n1 over the
//!    nodes' mutual TLS, and afterwards `shoal image ls` shows the image on all 3.
//! 2. An image no node has (and no registry can give: there is none here) fails its task
//!    with a reason that says no node holds it and the pull failed.
//! 3. `shoal image push` from n2 puts an image only n2 had on n1 and n3; pushing again says
//!    it is already there.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{
    cli_ok, docker_unavailable, image_tag, is_running, of_service, service_ps, Docker, DockerCleanup, EngineSet, LONG_RUNNING,
    SERVICE_CLI_TIMEOUT,
};
use shoal_tests::{require_netns, run, Cluster, Lab, TempDir};
use std::process::Command;
use std::time::{Duration, Instant};

const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(60);

/// `docker save IMAGE` from the host's engine into `machine`'s engine only.
fn load_into(lab: &Lab, machine: usize, image: &str, dir: &TempDir) {
    let file = dir.path().join(format!("{}.tar", image.replace([':', '/'], "_")));
    run(Command::new("docker").args(["save", "-o"]).arg(&file).arg(image), Duration::from_secs(60)).unwrap_or_else(|e| panic!("docker save: {e}"));
    let engine = lab.engine(machine).unwrap_or_else(|| panic!("machine {machine} has no engine"));
    let out = run(engine.docker_cli().args(["load", "-q", "-i"]).arg(&file), Duration::from_secs(60)).unwrap_or_else(|e| panic!("docker load: {e}"));
    assert!(out.status.success(), "docker load into machine {machine}: {}", out.stderr);
}

/// The image ids `machine`'s engine holds under `tag`, if any.
fn engine_has(lab: &Lab, machine: usize, tag: &str) -> bool {
    let engine = lab.engine(machine).unwrap_or_else(|| panic!("machine {machine} has no engine"));
    run(engine.docker_cli().args(["image", "inspect", "-f", "{{.Id}}", tag]), Duration::from_secs(10)).is_ok_and(|o| o.status.success())
}

fn wait_for<T>(c: &Cluster, limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let began = Instant::now();
    let mut last = String::new();
    while began.elapsed() < limit {
        match f() {
            Ok(v) => return (v, began.elapsed()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {limit:?} waiting for {what}: {last}\n{}", c.report());
}

#[test]
fn images_reach_every_node_by_fetch_and_push_and_a_missing_one_fails_with_the_reason() {
    if !require_netns("images_lab") {
        return;
    }
    if let Some(why) = docker_unavailable().or_else(engines_unavailable) {
        println!("skipped: images_lab: {why}");
        return;
    }
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("img");
    let pushed = image_tag("push");
    let _cleanup = (DockerCleanup::new(&image), DockerCleanup::new(&pushed));
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    // A second image with another id: the first plus a label.
    let dockerfile = format!("FROM {image}\nLABEL shoal.test=push\n");
    let mut build = Command::new("sh");
    build.args(["-c", &format!("printf '%s' \"$0\" | docker build -q -t {pushed} -")]).arg(&dockerfile);
    let out = run(&mut build, Duration::from_secs(60)).unwrap_or_else(|e| panic!("docker build: {e}"));
    assert!(out.status.success(), "docker build {pushed}: {}", out.stderr);

    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
    let scratch = TempDir::new("images");
    load_into(&lab, 0, &image, &scratch);
    load_into(&lab, 1, &pushed, &scratch);
    assert!(engine_has(&lab, 0, &image) && !engine_has(&lab, 1, &image) && !engine_has(&lab, 2, &image), "only n1 has {image}");
    let mut engines = EngineSet::of_lab(&lab).unwrap_or_else(|e| panic!("{e}"));

    let lab_for_checks = std::sync::Arc::new(lab);
    let (c, ids) = shoal_tests::cluster::form_lab_cluster("images", lab_for_checks.clone(), FORM_TIMEOUT);
    engines.assign(&ids);
    let lab = lab_for_checks;

    // ---- 1. an image on n1 only runs on every node.
    let t = Instant::now();
    cli_ok(&c, 0, &["service", "create", "--replicas", "3", "--detach", "spread", &image], &LONG_RUNNING, SERVICE_CLI_TIMEOUT);
    let (_, took) = wait_for(&c, CONVERGE, "3 spread containers running, one on each machine's engine", || {
        let per = engines.by_engine(&ids)?;
        let running: Vec<usize> = per.iter().map(|l| of_service(l, "spread").into_iter().filter(|c| is_running(c)).count()).collect();
        if running == [1, 1, 1] { Ok(()) } else { Err(format!("running per engine: {running:?}")) }
    });
    println!("an image held by n1 only runs on all 3 nodes {took:.1?} after create ({:.1?} in all)", t.elapsed());
    assert!(engine_has(&lab, 1, &image) && engine_has(&lab, 2, &image), "n2 and n3 now hold {image}");
    let out = cli_ok(&c, 2, &["image", "ls", "--format", "json"], &[], SERVICE_CLI_TIMEOUT);
    let listing: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("image ls json: {e}: {}", out.stdout));
    let row = listing["images"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == image.as_str()))))
        .unwrap_or_else(|| panic!("image ls does not list {image}: {listing}"));
    assert_eq!(row["nodes"], serde_json::json!(["n1", "n2", "n3"]), "image ls shows {image} on every node: {listing}");
    let table = cli_ok(&c, 0, &["image", "ls"], &[], SERVICE_CLI_TIMEOUT).stdout;
    assert!(table.lines().any(|l| l.contains(&image) && l.contains("n1,n2,n3")), "image ls table: {table}");

    // ---- 2. an image nobody has fails with the reason.
    let ghost = format!("{}-ghost:1", image.replace(':', "-"));
    cli_ok(&c, 1, &["service", "create", "--detach", "ghost"], &[&ghost], SERVICE_CLI_TIMEOUT);
    let (reason, _) = wait_for(&c, CONVERGE, "the ghost task to fail with the reason", || {
        let rows = service_ps(&c, 0, "ghost")?;
        let err = rows.iter().find_map(|r| r.error.clone()).unwrap_or_default();
        if err.contains("no other node holds it") && err.contains("pulling it failed") { Ok(err) } else { Err(format!("{rows:?}")) }
    });
    println!("an image no node has: {reason}");
    assert!(reason.contains(&ghost), "the reason names the image: {reason}");

    // ---- 3. image push from n2.
    let out = cli_ok(&c, 1, &["image", "push", &pushed, "--format", "json"], &[], Duration::from_secs(120));
    let pushed_rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("push json: {e}: {}", out.stdout));
    let results: Vec<(String, String)> = pushed_rows["nodes"]
        .as_array()
        .map(|a| a.iter().map(|r| (r["node"].as_str().unwrap_or("").to_string(), r["result"].as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    let mut results = results;
    results.sort();
    assert_eq!(results, [("n1".to_string(), "sent".to_string()), ("n3".to_string(), "sent".to_string())], "{pushed_rows}");
    assert!(engine_has(&lab, 0, &pushed) && engine_has(&lab, 2, &pushed), "n1 and n3 hold {pushed} after the push");
    let again = cli_ok(&c, 1, &["image", "push", &pushed], &[], Duration::from_secs(60)).stdout;
    assert_eq!(again.matches("already there").count(), 2, "a second push sends nothing: {again}");
    let missing = shoal_tests::services::cli(&c, 0, &["image", "push", "no-such-image:1"], &[], SERVICE_CLI_TIMEOUT);
    assert!(!missing.status.success() && missing.stderr.contains("has no image"), "pushing an image this node lacks: {}", missing.stderr);

    for s in ["spread", "ghost"] {
        cli_ok(&c, 0, &["service", "rm", s], &[], SERVICE_CLI_TIMEOUT);
    }
}
