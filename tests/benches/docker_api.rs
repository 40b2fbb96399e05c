//! The Docker API's cost, printed side by side (not asserted), on a lab of 3 machines with
//! their own Docker Engines:
//! - `docker run -d IMAGE …` latency through shoal (n1's `docker.sock`: the container is
//!   recorded in the replicated state, placed, and started by the chosen node's agent; the
//!   CLI returns once it runs) and straight to one engine (n1's own `dockerd`);
//! - `docker ps` latency with 100 containers, spread over the 3 machines through shoal,
//!   and all on the one engine straight.
//!
//! The `docker` CLI is the client in both columns, so its own start-up is in both.
//! Run: `cargo bench -p shoal-tests --bench docker_api`.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{docker_unavailable, image_tag, Docker, DockerCleanup};
use shoal_tests::{netns_unavailable, run, summary, Lab, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Timed `docker run -d` rounds per column.
const RUNS: usize = 10;
/// Containers `docker ps` lists.
const CONTAINERS: usize = 100;
/// Timed `docker ps` rounds per column.
const PS_ROUNDS: usize = 10;
/// `docker run -d` at once while filling up to [`CONTAINERS`].
const FILL_PARALLEL: usize = 4;
const LONG_RUNNING: &str = "trap 'exit 0' TERM; /bin/sleep 3600 & wait";

/// `docker` against `socket` (a shoal node's `docker.sock` or an engine's own socket).
fn docker(socket: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", config)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_API_VERSION");
    let out = run(&mut cmd, Duration::from_secs(120))?;
    if out.status.success() { Ok(out.stdout) } else { Err(format!("docker {args:?}: {}", out.stderr)) }
}

/// The timed `docker run -d` rounds, then untimed runs (a few at once) up to `CONTAINERS`,
/// then the timed `docker ps` rounds, which must list them all.
fn column(socket: &Path, config: &Path, image: &str, prefix: &str) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let run_one = |i: usize| -> Result<(), String> {
        docker(socket, config, &["run", "-d", "--name", &format!("{prefix}{i}"), image, "/bin/sh", "-c", LONG_RUNNING]).map(drop)
    };
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        run_one(i).unwrap_or_else(|e| panic!("{e}"));
        runs.push(t.elapsed());
    }
    let fill = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(RUNS);
    std::thread::scope(|s| {
        for _ in 0..FILL_PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CONTAINERS {
                    break;
                }
                run_one(i).unwrap_or_else(|e| panic!("{e}"));
            });
        }
    });
    let fill = fill.elapsed();
    let mut ps = Vec::new();
    for _ in 0..PS_ROUNDS {
        let t = Instant::now();
        let out = docker(socket, config, &["ps", "-q"]).unwrap_or_else(|e| panic!("{e}"));
        ps.push(t.elapsed());
        assert_eq!(out.lines().count(), CONTAINERS, "docker ps lists every container");
    }
    (runs, ps, fill)
}

fn main() {
    if let Some(why) = docker_unavailable().or_else(netns_unavailable).or_else(engines_unavailable) {
        println!("docker_api bench skipped: {why}");
        return;
    }
    if run(Command::new("docker").arg("--version"), Duration::from_secs(10)).map(|o| !o.status.success()).unwrap_or(true) {
        println!("docker_api bench skipped: no docker CLI");
        return;
    }
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("dapibench");
    let _cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    let engine_socket = lab.docker_socket(0).map(Path::to_path_buf).expect("n1's engine socket");
    let (c, _) = shoal_tests::cluster::form_lab_cluster("dapibench", lab, Duration::from_secs(60));
    let config = TempDir::new("dapibench-docker-config");
    let shoal_socket = c.node(0).data_dir.join("docker.sock");

    let (shoal_runs, shoal_ps, shoal_fill) = column(&shoal_socket, config.path(), &image, "s");
    // Through shoal the containers are spread: n1's engine holds about a third of them.
    let on_n1 = docker(&engine_socket, config.path(), &["ps", "-q"]).unwrap_or_default().lines().count();
    docker(&shoal_socket, config.path(), &["ps", "-aq"])
        .map(|ids| {
            let ids: Vec<&str> = ids.lines().collect();
            for chunk in ids.chunks(25) {
                let mut args = vec!["rm", "-f"];
                args.extend(chunk);
                docker(&shoal_socket, config.path(), &args).unwrap_or_else(|e| panic!("{e}"));
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (plain_runs, plain_ps, plain_fill) = column(&engine_socket, config.path(), &image, "e");

    println!("Docker API through shoal (3 machines) vs straight to one Docker Engine, both driven by the docker CLI:");
    summary("  docker run -d, through shoal", &shoal_runs);
    summary("  docker run -d, straight to the engine", &plain_runs);
    summary(&format!("  docker ps with {CONTAINERS} containers, through shoal (spread; {on_n1} on n1's engine)"), &shoal_ps);
    summary(&format!("  docker ps with {CONTAINERS} containers, straight to the engine (all on it)"), &plain_ps);
    println!(
        "  filling to {CONTAINERS} ({FILL_PARALLEL} at once): through shoal {:.1} s, straight {:.1} s",
        shoal_fill.as_secs_f64(),
        plain_fill.as_secs_f64()
    );
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!(
        "  ratios shoal / straight (medians): run -d {:.2}, ps {:.2}",
        med(&shoal_runs) / med(&plain_runs),
        med(&shoal_ps) / med(&plain_ps)
    );
}
