//! The Docker Engine API end to end, judged by the real `docker` CLI: 3 loopback agents
//! (`--no-mdns`, the second and third `--join` the first) sharing the host's Docker Engine
//! (told apart by the `shoal.node` label), each serving `DATA_DIR/docker.sock`. Every
//! `docker` command gets `DOCKER_HOST=unix://<a node's docker.sock>` and its own
//! `DOCKER_CONFIG`, so nothing reaches the host engine through shoal's endpoint by
//! accident; the host engine is only read directly (bollard) to check where containers
//! really run. One cluster carries all the stories, in this order:
//!
//! 1. handshake: `docker version` (server API 1.41), `HEAD /_ping` headers, `docker info`
//!    (`Nodes: 3`, swarm inactive), the socket's mode 0600;
//! 2. `docker run -d --name hello -e constraint:node==n2 IMAGE …` → `docker ps` shows
//!    `n2/hello` (through another node too), the engine runs it labelled with n2's id,
//!    `docker inspect hello` shows `Name: /hello` and `Node.Name: n2`, the hint is not in
//!    its env, `shoal service ls` shows its service with origin `docker`;
//! 3. `docker stop hello` → exited, gone from the engine; `docker start hello` → running on
//!    n2 again; `docker restart hello`; `docker rm hello` without force is refused (still
//!    running); `docker rm -f hello` → gone everywhere;
//! 4. placement hints: a node label (`-e constraint:zone==attic`) and classic swarm's
//!    `com.docker.swarm.constraints` label; `--restart on-failure:2` restarts twice;
//!    `docker wait` on a container that exits 3 prints 3; `docker kill`; `docker ps
//!    --filter` by label, name and status, `-n 1`, docker-py's filter shape and
//!    unversioned paths (curl); a `shoal service` task listed as `NODE/web.1`;
//!    `docker logs` (stdout and stderr apart, `--tail`, `-f` until the container ends) of
//!    a container on the node that serves the request, and the same through another node
//!    (forwarded);
//! 5. bad input, each refused with a clear message and the container list unchanged:
//!    a duplicate name, an unknown container, malformed JSON (curl), an unsupported
//!    endpoint (curl and `docker volume ls`: 501 naming it), an API version above 1.41,
//!    a constraint on a node that does not exist;
//! 6. SIGTERM of an agent removes its `docker.sock`; after a SIGKILL the stale socket file
//!    is replaced when the agent starts again.
//!
//! Needs the `docker` CLI, a Docker Engine socket and `/bin/busybox` (busybox-static);
//! skipped with a printed reason if one is missing (an engine that does not answer fails).

use shoal_tests::cluster::{free_agent_ports, in_cluster, label_ok, leader_of, sees_label, statuses};
use shoal_tests::services::{cli_ok, docker_unavailable, engines_ok, image_tag, Docker, DockerCleanup, SERVICE_CLI_TIMEOUT};
use shoal_tests::{every, run, token_new, Cluster, NodeSpec, Output, TempDir, TokenVia};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on one `docker` command (start and stop wait up to 60 s for the node).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(45);
/// Exits at once on SIGTERM (busybox `sleep` as PID 1 would ignore it).
const LONG_RUNNING: &str = "trap 'exit 0' TERM; /bin/sleep 3600 & wait";

struct World {
    c: Cluster,
    engine: Docker,
    ids: Vec<String>,
    image: String,
    config: TempDir,
}

impl World {
    fn sock(&self, i: usize) -> PathBuf {
        self.c.node(i).data_dir.join("docker.sock")
    }

    /// `docker ARGS` against node `i`'s endpoint.
    fn docker(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.sock(i).display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        run(&mut cmd, DOCKER_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", self.c.report()))
    }

    /// Like [`Self::docker`]; must succeed. Prints the command and its output.
    fn docker_ok(&self, i: usize, args: &[&str]) -> String {
        let t = Instant::now();
        let out = self.docker(i, args);
        assert!(
            out.status.success(),
            "`docker {}` through {} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            args.join(" "),
            self.c.node(i).name(),
            out.status,
            out.stdout.trim(),
            out.stderr.trim(),
            self.c.report()
        );
        println!("$ docker {}   # via {}, {:.1?}\n{}", args.join(" "), self.c.node(i).name(), t.elapsed(), out.stdout.trim_end());
        out.stdout
    }

    /// Like [`Self::docker`]; must fail with `expect` in its stderr, and leave `docker ps
    /// -a` as it was.
    fn docker_refused(&self, i: usize, what: &str, args: &[&str], expect: &str) {
        let before = self.ps_all(i);
        let out = self.docker(i, args);
        let err = out.stderr.trim();
        assert!(!out.status.success(), "{what}: `docker {}` succeeded: {}{}", args.join(" "), out.stdout, self.c.report());
        assert!(err.contains(expect), "{what}: the error does not say {expect:?}: {err:?}");
        assert_eq!(self.ps_all(i), before, "{what} changed `docker ps -a`");
        println!("$ docker {}   # refused ({what})\n{err}", args.join(" "));
    }

    /// `docker ps -a` as `NAME STATE` lines, sorted (the status text has times in it).
    fn ps_all(&self, i: usize) -> Vec<String> {
        let out = self.docker(i, &["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
        assert!(out.status.success(), "docker ps -a failed: {}", out.stderr);
        let mut lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// `curl` on node `i`'s socket: (status, body).
    fn curl(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let sock = self.sock(i);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "--max-time", "30", "--unix-socket"]).arg(&sock).args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://shoal{path}"));
        let out = run(&mut cmd, Duration::from_secs(40)).unwrap_or_else(|e| panic!("{e}"));
        let (text, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
        let code: u16 = code.trim().parse().unwrap_or_else(|_| panic!("curl printed no status: {out:?}"));
        let shown = |b: &str| if b.len() > 120 { format!(" -d '{}…' ({} bytes)", &b[..120], b.len()) } else { format!(" -d '{b}'") };
        println!("$ curl --unix-socket … -X {method} {path}{}\n{code} {text}", body.map(shown).unwrap_or_default());
        (code, text.to_string())
    }

    /// Engine containers of service `service` (any state), as (node index, running).
    fn engine_containers(&self, service: &str) -> Vec<(usize, bool)> {
        let all = self.engine.containers(&self.ids).unwrap_or_else(|e| panic!("{e}"));
        all.iter()
            .filter(|c| c.owner.service == service)
            .map(|c| (self.ids.iter().position(|i| *i == c.owner.node).unwrap_or(usize::MAX), c.state == shoal_engine::ContainerState::Running))
            .collect()
    }

    fn poll<T>(&self, timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            match cond() {
                Ok(v) => {
                    println!("{what}: {:.1?}", start.elapsed());
                    return v;
                }
                Err(e) if start.elapsed() >= timeout => {
                    panic!("timed out after {:.1?} waiting until {what}; last seen: {e}\n{}", start.elapsed(), self.c.report())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn loopback_cluster() -> Cluster {
    let ports = free_agent_ports(3);
    let token = token_new();
    let mut c = Cluster::new("dockerapi");
    for (i, port) in ports.iter().enumerate() {
        let mut args = vec!["--no-mdns".to_string(), "--bind".into(), format!("127.0.0.1:{port}")];
        if i > 0 {
            args.extend(["--join".into(), format!("127.0.0.1:{}", ports[0])]);
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
    c
}

#[test]
fn the_docker_cli_drives_the_cluster_as_one_host() {
    if let Some(why) = docker_unavailable() {
        println!("skipped: docker_api: {why}");
        return;
    }
    for tool in ["docker", "curl"] {
        if !which(tool) {
            println!("skipped: docker_api: the {tool} command is missing");
            return;
        }
    }
    let engine = Docker::connect().unwrap_or_else(|e| panic!("{e} (the socket exists: is dockerd running?)"));
    let image = image_tag("dockerapi");
    // Declared before the cluster: dropped after it, once the agents are dead.
    let cleanup = DockerCleanup::new(&image);
    engine.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));

    let mut c = loopback_cluster();
    c.node_mut(0).start();
    c.wait_until(FORM_TIMEOUT, "n1 forms the cluster", || statuses(&c, &[0]).is_some_and(|s| every(&s, in_cluster) && leader_of(&s).is_some()));
    c.node_mut(1).start();
    c.node_mut(2).start();
    let all = [0, 1, 2];
    c.wait_until(FORM_TIMEOUT, "3 nodes in one cluster with one leader", || {
        statuses(&c, &all).is_some_and(|s| every(&s, in_cluster) && leader_of(&s).is_some())
    });
    let ids: Vec<String> = statuses(&c, &all).unwrap_or_default().into_iter().map(|s| s.node).collect();
    for id in &ids {
        cleanup.register(id);
    }
    c.wait_until(Duration::from_secs(30), "every node sees every engine healthy", || engines_ok(&c, &all, &ids));
    let mut w = World { c, engine, ids, image, config: TempDir::new("docker-config") };
    let img = w.image.as_str();

    // ------------------------------------------------------------------ 1. handshake
    let mode = std::fs::metadata(w.sock(0)).expect("docker.sock").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "docker.sock mode");
    let version = w.docker_ok(0, &["version"]);
    let server = version.split("Server:").nth(1).unwrap_or_else(|| panic!("no Server section: {version}"));
    assert!(server.contains("API version:") && server.contains("1.41"), "server API version: {server}");
    assert_eq!(w.docker_ok(0, &["version", "--format", "{{.Server.APIVersion}}"]).trim(), "1.41");
    let head = run(Command::new("curl").args(["-s", "-I", "--unix-socket"]).arg(w.sock(0)).arg("http://shoal/_ping"), Duration::from_secs(10))
        .expect("curl -I");
    let headers = head.stdout.to_lowercase();
    for h in ["api-version: 1.41", "ostype: linux", "docker-experimental: false"] {
        assert!(headers.contains(h), "HEAD /_ping lacks {h}: {}", head.stdout);
    }
    let info = w.docker_ok(1, &["info"]);
    assert!(info.lines().any(|l| l.trim() == "Nodes: 3"), "docker info does not say Nodes: 3:\n{info}");
    assert!(info.contains("Swarm: inactive"), "{info}");
    for n in ["n1", "n2", "n3"] {
        assert!(info.lines().any(|l| l.trim_start().starts_with(&format!("{n}: 127.0.0.1:"))), "docker info lacks node {n}:\n{info}");
    }

    // ------------------------------------------------------------------ 2. run on n2
    let run_args = ["run", "-d", "--name", "hello", "-e", "constraint:node==n2", "-e", "GREETING=hi", "-l", "app=hello", img, "/bin/sh", "-c", LONG_RUNNING];
    let id = w.docker_ok(0, &run_args).trim().to_string();
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "docker run printed {id:?}, not an id");
    let ps = w.docker_ok(0, &["ps"]);
    assert!(ps.lines().any(|l| l.split_whitespace().last() == Some("n2/hello") && l.contains("Up")), "docker ps does not show n2/hello up:\n{ps}");
    let names = w.docker_ok(2, &["ps", "--format", "{{.ID}} {{.Names}} {{.Image}}"]);
    assert_eq!(names.trim(), format!("{} n2/hello {img}", &id[..12]), "docker ps through n3");
    let on = w.engine_containers("hello");
    assert_eq!(on, [(1, true)], "the engine should run hello once, labelled with n2's id ({})", w.ids[1]);
    let inspect = w.docker_ok(2, &["inspect", "hello"]);
    let j: serde_json::Value = serde_json::from_str(&inspect).unwrap_or_else(|e| panic!("docker inspect printed no JSON ({e}): {inspect}"));
    let j = &j[0];
    assert_eq!(j["Id"], id.as_str());
    assert_eq!(j["Name"], "/hello");
    assert_eq!(j["Node"]["Name"], "n2");
    assert_eq!(j["Node"]["ID"], w.ids[1].as_str());
    assert_eq!(j["State"]["Running"], true);
    assert_eq!(j["Config"]["Labels"]["app"], "hello");
    let env: Vec<&str> = j["Config"]["Env"].as_array().expect("Env").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(env, ["GREETING=hi"], "the scheduling hint is stripped from the env");
    let node = w.docker_ok(0, &["inspect", "--format", "{{.Node.Name}} {{.State.Status}}", &id[..10]]);
    assert_eq!(node.trim(), "n2 running", "inspect by id prefix");
    let ls = cli_ok(&w.c, 0, &["service", "ls", "--format", "json"], &[], SERVICE_CLI_TIMEOUT);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&ls.stdout).expect("service ls json");
    assert!(
        rows.iter().any(|r| r["name"] == "hello" && r["origin"] == "docker" && r["container"] == "hello" && r["running"] == 1),
        "shoal service ls does not show hello as a docker container: {rows:?}"
    );

    // ------------------------------------------------------------------ 3. lifecycle
    assert_eq!(w.docker_ok(1, &["stop", "hello"]).trim(), "hello");
    assert!(w.engine_containers("hello").iter().all(|(_, running)| !running), "hello still runs in the engine after docker stop");
    let state = w.docker_ok(0, &["ps", "-a", "--filter", "name=hello", "--format", "{{.Names}} {{.State}} {{.Status}}"]);
    assert!(state.trim().starts_with("n2/hello exited Exited (0)"), "after stop: {state}");
    assert!(!w.docker_ok(0, &["ps", "--format", "{{.Names}}"]).contains("hello"), "a stopped container is listed without -a");
    assert_eq!(w.docker_ok(2, &["start", "hello"]).trim(), "hello");
    assert_eq!(w.engine_containers("hello"), [(1, true)], "after docker start, hello runs on n2 again");
    assert_eq!(w.docker_ok(0, &["start", "hello"]).trim(), "hello", "starting a started container is not an error");
    assert_eq!(w.docker_ok(0, &["restart", "hello"]).trim(), "hello");
    assert_eq!(w.engine_containers("hello"), [(1, true)], "after docker restart");
    assert_eq!(w.docker_ok(0, &["inspect", "--format", "{{.Id}}", "hello"]).trim(), id, "the id survives stop, start and restart");
    w.docker_refused(0, "rm of a running container without -f", &["rm", "hello"], "You cannot remove a running container");
    assert_eq!(w.engine_containers("hello"), [(1, true)], "a refused rm left hello running");
    assert_eq!(w.docker_ok(0, &["rm", "-f", "hello"]).trim(), "hello");
    assert!(!w.ps_all(0).iter().any(|l| l.contains("hello")), "hello is still listed after rm -f");
    w.poll(CONVERGE_TIMEOUT, "the engine has no hello container", || {
        let on = w.engine_containers("hello");
        if on.is_empty() { Ok(()) } else { Err(format!("{on:?}")) }
    });

    // ------------------------------------------------------------------ 4. hints, restarts, wait, kill, filters, services
    label_ok(&w.c, 0, &w.ids[2], "zone", "attic");
    w.c.wait_until(Duration::from_secs(20), "every node sees n3's zone label", || (0..3).all(|i| sees_label(&w.c, i, &w.ids[2], "zone", "attic")));
    w.docker_ok(0, &["run", "-d", "--name", "attic", "-e", "constraint:zone==attic", img, "/bin/sh", "-c", LONG_RUNNING]);
    assert_eq!(w.engine_containers("attic"), [(2, true)], "constraint:zone==attic runs on the labelled node n3");
    w.docker_ok(1, &["run", "-d", "--name", "pinned", "-l", "com.docker.swarm.constraints=[\"node==n1\"]", img, "/bin/sh", "-c", LONG_RUNNING]);
    assert_eq!(w.engine_containers("pinned"), [(0, true)], "the com.docker.swarm.constraints label pins it to n1");
    w.docker_ok(0, &["run", "-d", "--name", "flappy", "--restart", "on-failure:2", img, "/bin/sh", "-c", "exit 1"]);
    let policy = w.docker_ok(0, &["inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}", "flappy"]);
    assert_eq!(policy.trim(), "on-failure:2");
    w.poll(CONVERGE_TIMEOUT, "flappy (on-failure:2, exit 1) was restarted twice and stays exited (1)", || {
        let out = w.docker(0, &["inspect", "--format", "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}", "flappy"]);
        if out.stdout.trim() == "2 exited 1" { Ok(()) } else { Err(out.stdout) }
    });
    w.docker_ok(1, &["run", "-d", "--name", "job", img, "/bin/sh", "-c", "/bin/sleep 1; exit 3"]);
    assert_eq!(w.docker_ok(2, &["wait", "job"]).trim(), "3", "docker wait prints the exit code");
    let job = w.docker_ok(0, &["ps", "-a", "--filter", "status=exited", "--format", "{{.Names}} {{.Status}}"]);
    assert!(job.lines().any(|l| l.contains("/job Exited (3) ") && l.ends_with(" ago")), "docker ps --filter status=exited: {job}");
    w.docker_ok(0, &["run", "-d", "--name", "victim", "-l", "role=victim", img, "/bin/sh", "-c", LONG_RUNNING]);
    let by_label = w.docker_ok(1, &["ps", "--filter", "label=role=victim", "--format", "{{.Names}}"]);
    assert!(by_label.trim().ends_with("/victim") && by_label.lines().count() == 1, "label filter: {by_label}");
    let newest = w.docker_ok(1, &["ps", "-a", "-n", "1", "--format", "{{.Names}}"]);
    assert!(newest.trim().ends_with("/victim") && newest.lines().count() == 1, "docker ps -n 1 shows the newest: {newest}");
    // docker-py's shape of filters, on an unversioned path.
    let (code, body) = w.curl(2, "GET", "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22role%3Dvictim%22%5D%7D", None);
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code} {body}: {e}"));
    assert_eq!(rows.as_array().map(|r| r.len()), Some(1), "the list filter shape: {body}");
    assert!(rows[0]["Names"][0].as_str().is_some_and(|n| n.ends_with("/victim")), "{body}");
    let (code, body) = w.curl(2, "GET", "/version", None);
    assert!(code == 200 && body.contains("\"ApiVersion\":\"1.41\""), "unversioned /version: {code} {body}");
    assert_eq!(w.docker_ok(1, &["kill", "victim"]).trim(), "victim");
    assert!(w.engine_containers("victim").iter().all(|(_, running)| !running), "victim still runs after docker kill");
    w.docker_refused(1, "kill of a container that is not running", &["kill", "victim"], "is not running");
    cli_ok(&w.c, 0, &["service", "create", "--replicas", "2", "--timeout", "60s"], &["web", img, "/bin/sh", "-c", LONG_RUNNING], Duration::from_secs(90));
    let web = w.poll(CONVERGE_TIMEOUT, "docker ps lists both web tasks as NODE/web.N", || {
        let out = w.docker(0, &["ps", "--filter", "label=shoal.service=web", "--format", "{{.Names}}"]);
        let mut names: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        names.sort_by_key(|n| n.split_once('/').map(|(_, slot)| slot.to_string()));
        let slots: Vec<String> = names.iter().filter_map(|n| n.split_once('/').map(|(_, s)| s.to_string())).collect();
        if slots == ["web.1", "web.2"] { Ok(names) } else { Err(out.stdout) }
    });
    println!("service tasks in docker ps: {web:?}");
    w.docker_refused(0, "stop of a service task", &["stop", "web.1"], "is a task of the shoal service web");
    w.docker_ok(0, &["run", "-d", "--name", "talker", "-e", "constraint:node==n1", img, "/bin/sh", "-c", "echo one; echo two >&2; echo three"]);
    assert_eq!(w.docker_ok(0, &["wait", "talker"]).trim(), "0");
    let logs = w.docker(0, &["logs", "talker"]);
    assert!(logs.status.success(), "docker logs talker: {}", logs.stderr);
    assert_eq!((logs.stdout.as_str(), logs.stderr.as_str()), ("one\nthree\n", "two\n"), "docker logs keeps stdout and stderr apart");
    println!("$ docker logs talker   # via n1\n{}(stderr) {}", logs.stdout, logs.stderr);
    w.docker_ok(0, &["run", "-d", "--name", "ticker", "-e", "constraint:node==n1", img, "/bin/sh", "-c", "for i in 1 2 3 4; do echo tick $i; /bin/sleep 1; done"]);
    let t = Instant::now();
    assert_eq!(w.docker_ok(0, &["logs", "-f", "ticker"]), "tick 1\ntick 2\ntick 3\ntick 4\n", "docker logs -f prints the lines in order");
    assert!(t.elapsed() >= Duration::from_secs(1), "docker logs -f returned before the container ended");
    // (ticker writes stdout only: the engine may order lines of stdout and stderr either way.)
    assert_eq!(w.docker_ok(0, &["logs", "--tail", "2", "ticker"]), "tick 3\ntick 4\n");
    let out = w.docker(1, &["logs", "talker"]);
    assert!(out.status.success(), "docker logs talker through n2: {}", out.stderr);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("one\nthree\n", "two\n"), "docker logs through n2 is forwarded to n1");
    println!("$ docker logs talker   # via n2, forwarded to n1\n{}(stderr) {}", out.stdout, out.stderr);

    // ------------------------------------------------------------------ 5. bad input
    w.docker_ok(0, &["create", "--name", "dup", img, "/bin/sh", "-c", LONG_RUNNING]);
    w.docker_refused(1, "duplicate name", &["run", "-d", "--name", "dup", img, "/bin/sh"], "is already in use");
    w.docker_refused(2, "unknown container (stop)", &["stop", "nope"], "No such container: nope");
    w.docker_refused(2, "unknown container (inspect)", &["inspect", "--type", "container", "nope"], "No such container: nope");
    w.docker_refused(0, "a constraint on a missing node", &["run", "-d", "-e", "constraint:node==n9", img], "no node of the cluster is named n9");
    w.docker_refused(0, "a volume", &["run", "-d", "-v", "/tmp:/x", img], "Volumes and mounts");
    let before = w.ps_all(0);
    let (code, body) = w.curl(0, "POST", "/v1.41/containers/create?name=broken", Some("{\"Image\": "));
    assert_eq!(code, 400, "malformed JSON: {body}");
    let msg: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert!(msg["message"].as_str().is_some_and(|m| m.contains("malformed JSON")), "{body}");
    let (code, body) = w.curl(0, "POST", "/v1.41/containers/create", Some("{\"Image\": 5}"));
    assert!(code == 400 && body.contains("invalid type"), "a field of the wrong type: {code} {body}");
    let huge = format!("{{\"Image\": \"{img}\", \"Env\": [\"A={}\"]}}", "a".repeat(70_000));
    let (code, body) = w.curl(0, "POST", "/v1.41/containers/create?name=huge", Some(&huge));
    // Refused by the shared service rules (`ServiceDef::validate`) before anything is written.
    assert!(code == 400 && body.contains("bytes of text") && body.contains("at most"), "a 70 KB environment: {code} {body}");
    let (code, body) = w.curl(1, "POST", "/v1.41/networks/prune", None);
    assert!(code == 501 && body.contains("POST /networks/prune is not supported"), "unsupported endpoint: {code} {body}");
    let (code, body) = w.curl(1, "POST", "/v1.41/containers/dup/attach?stream=1", None);
    assert!(code == 400 && body.contains("attach needs a hijacked connection"), "attach without Upgrade: {code} {body}");
    let (code, body) = w.curl(2, "GET", "/v1.99/version", None);
    assert!(code == 400 && body.contains("client version 1.99 is too new. Maximum supported API version is 1.41"), "{code} {body}");
    let (code, body) = w.curl(2, "GET", "/v1.41/containers/json?filters=%7Bbad", None);
    assert!(code == 400 && body.contains("invalid filters"), "{code} {body}");
    assert_eq!(w.ps_all(0), before, "the refused requests changed `docker ps -a`");
    w.docker_refused(0, "an unsupported command", &["volume", "ls"], "not supported");
    let dup = w.docker_ok(0, &["ps", "-a", "--filter", "name=dup", "--format", "{{.Names}} {{.State}}"]);
    assert_eq!(dup.trim(), "dup created", "dup stays created (never started: no node yet) after the refusals");

    // ------------------------------------------------------------------ 6. shutdown
    let sock = w.sock(2);
    w.c.node(2).signal("TERM");
    let exited = w.c.node_mut(2).wait_exit(Duration::from_secs(20));
    assert!(exited.is_some(), "n3 did not exit after SIGTERM\n{}", w.c.report());
    assert!(!sock.exists(), "n3 left {} behind", sock.display());
    let sock = w.sock(1);
    w.c.node_mut(1).kill();
    assert!(sock.exists(), "a SIGKILLed agent cannot remove its socket");
    w.c.node_mut(1).start();
    w.poll(FORM_TIMEOUT, "restarted n2 answers on its docker.sock again", || {
        let out = w.docker(1, &["version", "--format", "{{.Server.APIVersion}}"]);
        if out.status.success() && out.stdout.trim() == "1.41" { Ok(()) } else { Err(out.stderr) }
    });
    let ps = w.poll(FORM_TIMEOUT, "restarted n2 lists the cluster's containers", || {
        let out = w.docker(1, &["ps", "-a", "--format", "{{.Names}}"]);
        if out.status.success() && out.stdout.contains("/victim") { Ok(out.stdout) } else { Err(out.stderr) }
    });
    println!("docker ps -a through the restarted n2:\n{ps}");
    println!("docker_api: all stories passed");
}
