//! docker-compose (Debian's 1.29) and the `docker` CLI's networks and images against a
//! 3-node shoal cluster whose lab machines each have their own Docker Engine
//! ([`Lab::with_engines`]). Every command gets `DOCKER_HOST=unix://<a node's
//! docker.sock>` and its own `DOCKER_CONFIG`.
//!
//! 1. `docker-compose up -d` of a file with two services on the default network: `web`
//!    (busybox httpd, no host port, so it can be scaled) and `db` (a long-running shell
//!    that fetches `http://web/` by name, then serves its own page on the published port
//!    18090). Both containers run, on one node (a network's containers share a node), and
//!    the network exists in the cluster and in that node's engine only; the published port
//!    answers inside that machine's namespace; `db`'s log shows web's page (names resolve
//!    on the network);
//! 2. `ps` lists both; `logs` shows both services' output;
//! 3. `up -d --scale web=3` → 3 web containers, all on the project's node;
//! 4. `down` → no containers, and the network gone from the cluster and the engine;
//! 5. the `docker` CLI: `network create|ls|rm`, `run --network`, `images` (with the nodes
//!    holding each), and bad input each refused clearly with nothing changed: a network
//!    name in use, removing a network in use, an unknown network, a missing image (pull
//!    without a registry).
//!
//! Needs network namespaces, `dockerd`, `docker`, `docker-compose` and `/bin/busybox`;
//! skipped with a printed reason when one is missing.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{docker_unavailable, image_tag, Docker, DockerCleanup};
use shoal_tests::{require_netns, run, Cluster, Lab, Output, TempDir};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CLI_TIMEOUT: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(60);
const PORT: u16 = 18090;

struct World {
    c: Cluster,
    config: TempDir,
    project_dir: TempDir,
}

impl World {
    fn sock(&self, i: usize) -> PathBuf {
        self.c.node(i).data_dir.join("docker.sock")
    }

    fn client(&self, program: &str, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.project_dir.path())
            .env("DOCKER_HOST", format!("unix://{}", self.sock(i).display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        run(&mut cmd, CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", self.c.report()))
    }

    fn ok(&self, program: &str, i: usize, args: &[&str]) -> String {
        let t = Instant::now();
        let out = self.client(program, i, args);
        assert!(
            out.status.success(),
            "`{program} {}` through {} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            args.join(" "),
            self.c.node(i).name(),
            out.status,
            out.stdout.trim(),
            out.stderr.trim(),
            self.c.report()
        );
        println!("$ {program} {}   # via {}, {:.1?}\n{}{}", args.join(" "), self.c.node(i).name(), t.elapsed(), out.stdout.trim_end(), out.stderr.trim_end());
        format!("{}{}", out.stdout, out.stderr)
    }

    fn compose(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-p", "proj"];
        all.extend_from_slice(args);
        self.ok("docker-compose", i, &all)
    }

    fn docker(&self, i: usize, args: &[&str]) -> String {
        self.ok("docker", i, args)
    }

    /// `docker ARGS` must fail saying `expect`, with `docker ps -a` and `docker network
    /// ls` unchanged.
    fn refused(&self, i: usize, what: &str, args: &[&str], expect: &str) {
        let before = (self.names(i), self.networks(i));
        let out = self.client("docker", i, args);
        let err = out.stderr.trim();
        assert!(!out.status.success(), "{what}: `docker {}` succeeded: {}{}", args.join(" "), out.stdout, self.c.report());
        assert!(err.contains(expect), "{what}: the error does not say {expect:?}: {err:?}");
        assert_eq!((self.names(i), self.networks(i)), before, "{what} changed the containers or networks");
        println!("$ docker {}   # refused ({what})\n{err}", args.join(" "));
    }

    /// `docker ps -a` names (`NODE/NAME`), sorted.
    fn names(&self, i: usize) -> Vec<String> {
        let out = self.client("docker", i, &["ps", "-a", "--format", "{{.Names}}"]);
        assert!(out.status.success(), "docker ps -a: {}", out.stderr);
        let mut v: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    fn networks(&self, i: usize) -> Vec<String> {
        let out = self.client("docker", i, &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
        assert!(out.status.success(), "docker network ls: {}", out.stderr);
        let mut v: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
        let began = Instant::now();
        let mut last = String::new();
        while began.elapsed() < CONVERGE {
            match f() {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("timed out waiting for {what}: {last}\n{}", self.c.report());
    }
}

/// Shoal's networks on lab machine `i`'s own engine (names).
fn engine_networks(lab: &Lab, i: usize) -> Vec<String> {
    let engine = lab.engine(i).expect("lab engine");
    let out = run(engine.docker_cli().args(["network", "ls", "--filter", "label=shoal.network", "--format", "{{.Name}}"]), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    out.stdout.lines().map(str::to_string).collect()
}

fn compose_file(image: &str) -> String {
    format!(
        r#"version: "3"
services:
  web:
    image: {image}
    command: ["/bin/sh", "-c", "echo web-up; mkdir -p /www && echo hello-from-web > /www/index.html && trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
  db:
    image: {image}
    command: ["/bin/sh", "-c", "echo db-up; until wget -q -O- http://web/; do sleep 1; done; mkdir -p /www && echo hello-from-db > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
    ports:
      - "{PORT}:80"
"#
    )
}

#[test]
fn docker_compose_up_ps_logs_scale_down_and_docker_networks_and_images() {
    if !require_netns("compose") {
        return;
    }
    if let Some(why) = docker_unavailable().or_else(engines_unavailable) {
        println!("skipped: compose: {why}");
        return;
    }
    if which("docker-compose").is_none() {
        println!("skipped: compose: docker-compose is not installed (apt-get install docker-compose)");
        return;
    }
    let began = Instant::now();
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("compose");
    let _cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let lab = std::sync::Arc::new(Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}")));
    lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    let (c, _) = shoal_tests::cluster::form_lab_cluster("compose", lab.clone(), Duration::from_secs(60));
    let w = World { c, config: TempDir::new("compose-config"), project_dir: TempDir::new("compose-project") };
    std::fs::write(w.project_dir.path().join("docker-compose.yml"), compose_file(&image)).expect("write the compose file");
    println!("cluster formed after {:.1?}", began.elapsed());

    // ------------------------------------------------------------------ 1. up -d
    let out = w.compose(0, &["up", "-d"]);
    assert!(out.contains("Creating network \"proj_default\""), "{out}");
    let names = w.wait_for("proj_web_1 and proj_db_1 running", || {
        let out = w.client("docker", 0, &["ps", "--format", "{{.Names}}"]);
        let mut v: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        v.sort();
        if v.len() == 2 && v.iter().any(|n| n.ends_with("/proj_web_1")) && v.iter().any(|n| n.ends_with("/proj_db_1")) { Ok(v) } else { Err(format!("{v:?}")) }
    });
    let nodes: Vec<&str> = names.iter().map(|n| n.split('/').next().unwrap_or("")).collect();
    assert_eq!(nodes[0], nodes[1], "the containers of one network run on one node: {names:?}");
    let home = (0..3).find(|&i| w.c.node(i).name() == nodes[0]).unwrap_or_else(|| panic!("node {} is not in the lab", nodes[0]));
    println!("the project runs on {} (lab machine {home})", nodes[0]);
    let nets = w.networks(1);
    assert_eq!(nets, ["proj_default bridge"], "the network is a cluster object, seen through any node");
    for i in 0..3 {
        let on_engine = engine_networks(&lab, i);
        if i == home {
            assert_eq!(on_engine, ["proj_default"], "created lazily on the project's node");
        } else {
            assert!(on_engine.is_empty(), "machine {i} runs nothing of the project and has no network: {on_engine:?}");
        }
    }
    let (ns, ip) = (lab.hosts[home].ns.clone(), lab.hosts[home].ip.to_string());
    let page = w.wait_for("the published port to answer", || {
        let out = run(Command::new("ip").args(["netns", "exec", &ns, "curl", "-s", "-m", "3", &format!("http://{ip}:{PORT}/")]), Duration::from_secs(10))?;
        if out.status.success() && !out.stdout.trim().is_empty() { Ok(out.stdout.trim().to_string()) } else { Err(format!("{}{}", out.stdout, out.stderr)) }
    });
    assert_eq!(page, "hello-from-db", "port {PORT} on {ip} is db's httpd, which started after fetching web by name");

    // ------------------------------------------------------------------ 2. ps, logs
    let ps = w.compose(home, &["ps"]);
    for name in ["proj_web_1", "proj_db_1"] {
        assert!(ps.lines().any(|l| l.starts_with(name) && l.contains("Up")), "compose ps lists {name} up:\n{ps}");
    }
    assert!(ps.contains(&format!("{PORT}->80/tcp")), "compose ps shows the published port:\n{ps}");
    let logs = w.compose(home, &["logs", "--no-color"]);
    assert!(logs.contains("web_1") && logs.contains("web-up"), "web's output:\n{logs}");
    assert!(logs.contains("db_1") && logs.contains("db-up"), "db's output:\n{logs}");
    assert!(logs.contains("hello-from-web"), "db fetched http://web/ by its service name:\n{logs}");

    // ------------------------------------------------------------------ 3. scale
    w.compose(home, &["up", "-d", "--scale", "web=3"]);
    let names = w.wait_for("3 web containers running", || {
        let out = w.client("docker", 0, &["ps", "--filter", "label=com.docker.compose.service=web", "--format", "{{.Names}}"]);
        let v: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        if v.len() == 3 { Ok(v) } else { Err(format!("{v:?}")) }
    });
    assert!(names.iter().all(|n| n.starts_with(&format!("{}/", nodes[0]))), "scaled web stays with its network's node: {names:?}");
    let ps = w.compose(home, &["ps"]);
    assert_eq!(ps.lines().filter(|l| l.starts_with("proj_web_") && l.contains("Up")).count(), 3, "{ps}");

    // ------------------------------------------------------------------ 4. down
    let out = w.compose(home, &["down"]);
    assert!(out.contains("Removing network proj_default"), "{out}");
    assert!(w.names(0).is_empty(), "down removed every container: {:?}", w.names(0));
    assert!(w.networks(2).is_empty(), "down removed the network from the cluster");
    w.wait_for("the network to leave the project node's engine", || {
        let left = engine_networks(&lab, home);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });

    // ------------------------------------------------------------------ 5. docker networks, images, bad input
    let id = w.docker(0, &["network", "create", "mynet"]);
    assert_eq!(id.trim().len(), 64, "network create prints the id: {id}");
    assert_eq!(w.networks(1), ["mynet bridge"]);
    w.refused(1, "a network name in use", &["network", "create", "mynet"], "network with name mynet already exists");
    w.docker(0, &["run", "-d", "--name", "onnet", "--network", "mynet", &image, "/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]);
    let inspect = w.docker(0, &["inspect", "--format", "{{.HostConfig.NetworkMode}} {{json .NetworkSettings.Networks.mynet.Aliases}}", "onnet"]);
    assert!(inspect.starts_with("mynet ") && inspect.contains("\"onnet\""), "{inspect}");
    w.refused(2, "removing a network in use", &["network", "rm", "mynet"], "has active endpoints (onnet)");
    w.refused(0, "an unknown network", &["run", "-d", "--network", "nosuch", &image, "true"], "network nosuch not found");
    w.refused(0, "removing an unknown network", &["network", "rm", "nosuch"], "network nosuch not found");
    w.refused(0, "a driver shoal has no networks for", &["network", "create", "-d", "overlay", "ov"], "overlay");
    w.docker(0, &["rm", "-f", "onnet"]);
    w.docker(1, &["network", "rm", "mynet"]);
    assert!(w.networks(0).is_empty());

    let images = w.docker(2, &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let (repo, tag) = image.split_once(':').unwrap_or((&image, "latest"));
    assert!(images.lines().any(|l| l.starts_with(&format!("{repo}:{tag} "))), "docker images lists the lab's image:\n{images}");
    let raw = w.client("curl", 2, &["-s", "--unix-socket", &w.sock(2).to_string_lossy(), "http://d/v1.41/images/json"]);
    let list: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap_or_else(|e| panic!("images/json ({e}): {}", raw.stdout));
    let row = list.as_array().and_then(|a| a.iter().find(|r| r["RepoTags"].as_array().is_some_and(|t| t.iter().any(|t| t == &serde_json::json!(image))))).cloned();
    let holders = row.map(|r| r["Nodes"].as_array().map_or(0, Vec::len)).unwrap_or(0);
    assert_eq!(holders, 3, "every lab machine holds the image: {}", raw.stdout);
    w.refused(0, "a missing image without a registry", &["run", "-d", "shoal-no-such-image:1", "true"], "could not pull image shoal-no-such-image:1");
    w.refused(0, "pulling without a registry", &["pull", "shoal-no-such-image:1"], "could not pull");
    let sock = w.sock(1).to_string_lossy().to_string();
    let body = r#"{"Image": "shoal-no-such-image:1"}"#;
    let raw = w.client("curl", 1, &["-s", "--unix-socket", &sock, "-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_code}", "http://d/v1.41/containers/create"]);
    assert!(raw.stdout.trim_end().ends_with("404"), "a missing image is 404 at create: {}", raw.stdout);
    assert!(raw.stdout.contains("No such image: shoal-no-such-image:1") && raw.stdout.contains("n1, n2, n3"), "the 404 names the nodes lacking it: {}", raw.stdout);
    assert!(w.names(0).is_empty(), "the refused creates left nothing behind: {:?}", w.names(0));
    println!("compose story done in {:.1?}", began.elapsed());
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(program)).find(|p| p.is_file())
}
