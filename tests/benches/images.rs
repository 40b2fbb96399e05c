//! Image transfer figures (printed, not asserted): a 50 MB image held by machine n1 only,
//! sent to the 2 other machines of a lab with engines (each its own Docker Engine):
//! - `shoal image push IMAGE` on n1 (both targets at once, over the nodes' mutual TLS,
//!   `docker save` streamed into `docker load` and verified by image id);
//! - by hand, the same as a user would without shoal: `docker save IMAGE | docker -H
//!   n2 load` and the same for n3, both at once.
//!
//! Between rounds the image is removed from n2 and n3. The image is a busybox `FROM scratch`
//! plus 50 MB of random bytes, built on the host's engine and removed at the end.
//! Run: `cargo bench -p shoal-tests --bench images`.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{cli_ok, docker_unavailable, image_tag, Docker, DockerCleanup};
use shoal_tests::{netns_unavailable, run, summary, Lab, TempDir};
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const MB: u64 = 50;

fn docker_on(lab: &Lab, i: usize, args: &[&str]) -> Result<String, String> {
    let engine = lab.engine(i).ok_or("no engine")?;
    let out = run(engine.docker_cli().args(args), Duration::from_secs(120))?;
    if out.status.success() { Ok(out.stdout) } else { Err(out.stderr) }
}

fn main() {
    if let Some(why) = docker_unavailable().or_else(netns_unavailable).or_else(engines_unavailable) {
        println!("images bench skipped: {why}");
        return;
    }
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let base = image_tag("ibase");
    let big = image_tag("ibig");
    let _cleanup = (DockerCleanup::new(&base), DockerCleanup::new(&big));
    host.build_busybox(&base).unwrap_or_else(|e| panic!("{e}"));
    let dockerfile = format!("FROM {base}\nRUN [\"/bin/sh\", \"-c\", \"head -c {} /dev/urandom > /payload\"]\n", MB << 20);
    let mut build = Command::new("sh");
    build.args(["-c", &format!("printf '%s' \"$0\" | docker build -q -t {big} -")]).arg(&dockerfile);
    let out = run(&mut build, Duration::from_secs(120)).unwrap_or_else(|e| panic!("docker build: {e}"));
    assert!(out.status.success(), "building the {MB} MB image: {}", out.stderr);

    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let scratch = TempDir::new("ibench");
    let file = scratch.path().join("big.tar");
    run(Command::new("docker").args(["save", "-o"]).arg(&file).arg(&big), Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    docker_on(&lab, 0, &["load", "-q", "-i", &file.display().to_string()]).unwrap_or_else(|e| panic!("load into n1: {e}"));
    let lab = std::sync::Arc::new(lab);
    let (c, _) = shoal_tests::cluster::form_lab_cluster("ibench", lab.clone(), Duration::from_secs(60));
    let n1_socket = lab.docker_socket(0).map(|p| p.display().to_string()).unwrap_or_default();
    let targets: Vec<String> = (1..3).filter_map(|i| lab.docker_socket(i).map(|p| p.display().to_string())).collect();
    let clear = || {
        for i in 1..3 {
            let _ = docker_on(&lab, i, &["rmi", "-f", &big]);
        }
    };
    let (mut shoal, mut by_hand) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        clear();
        let t = Instant::now();
        let out = cli_ok(&c, 0, &["image", "push", &big], &[], Duration::from_secs(300));
        shoal.push(t.elapsed());
        assert_eq!(out.stdout.matches("sent").count(), 2, "push reached both: {}", out.stdout);
        clear();
        let script = targets
            .iter()
            .map(|t| format!("docker -H unix://{n1_socket} save {big} | docker -H unix://{t} load -q >/dev/null &"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\nwait\n";
        let t = Instant::now();
        let out = run(Command::new("sh").args(["-c", &script]), Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
        by_hand.push(t.elapsed());
        assert!(out.status.success(), "docker save | docker load: {}", out.stderr);
        for i in 1..3 {
            assert!(docker_on(&lab, i, &["image", "inspect", &big]).is_ok(), "by hand reached n{}", i + 1);
        }
    }
    println!("a {MB} MB image ({:.1} MB as a docker save archive) from n1 to 2 nodes:", bytes as f64 / 1e6);
    summary("  shoal image push (mutual TLS, both at once)", &shoal);
    summary("  docker save | docker load by hand (both at once)", &by_hand);
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (s, h) = (med(&mut shoal), med(&mut by_hand));
    println!("  ratio shoal / by hand (medians): {:.2}", s / h);
}
