//! The Docker API reaches containers on other nodes, judged by the real `docker` CLI: 3
//! agents on 3 lab machines, each with its own Docker Engine ([`Lab::with_engines`]); every
//! `docker` command goes to n1's `DATA_DIR/docker.sock` unless said otherwise, and the
//! containers are pinned to n3 (`-e constraint:node==n3`), so n1 forwards each request
//! over the nodes' mutual TLS (ALPN `shoal-docker/1`):
//!
//! 1. `docker logs` of a container on n3 (stdout and stderr apart, in order), `--tail 1`,
//!    the same through n2, and `docker logs -f` streamed until the container ends;
//! 2. `docker run --rm IMAGE sh -c 'echo hi; exit 3'` without `-d`, on n3 and on n1 itself:
//!    prints `hi`, exits 3, and the container is gone afterwards (AutoRemove); without
//!    `--rm` it stays, exited with 3; `docker attach` of a running container streams its
//!    new output until it ends;
//! 3. `docker exec talker sh -c 'echo hi; echo oops >&2; exit 4'`: prints both, exits 4;
//!    through n2 too; `docker exec -i` passes stdin on (and its end); `docker exec -it`
//!    under a pseudo-terminal gets a TTY and passes the exit code on;
//! 4. after SIGKILL of n3, `docker logs talker` through n1 answers at once (never a hang),
//!    and once gossip sees n3 down it says `talker runs on n3, which is down`.
//!
//! Needs network namespaces, `dockerd`, the `docker` CLI and `/bin/busybox`; skipped with a
//! printed reason otherwise.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{docker_unavailable, image_tag, Docker, DockerCleanup};
use shoal_tests::{require_netns, run, Cluster, Lab, Output, TempDir};
use std::process::Command;
use std::time::{Duration, Instant};

const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one `docker` command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request about a container on a dead node may take to be refused.
const REFUSAL_MAX: Duration = Duration::from_secs(8);

struct World {
    c: Cluster,
    config: TempDir,
}

impl World {
    /// `docker ARGS` against node `i`'s endpoint.
    fn docker(&self, i: usize, args: &[&str]) -> Output {
        self.docker_with_input(i, args, None)
    }

    /// Like [`Self::docker`], with `input` on its stdin (through a shell pipe).
    fn docker_with_input(&self, i: usize, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = match input {
            None => Command::new("docker"),
            Some(text) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "printf '%s' \"$0\" | docker \"$@\"", text]);
                sh
            }
        };
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.c.node(i).data_dir.join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        let t = Instant::now();
        let out = run(&mut cmd, DOCKER_TIMEOUT).unwrap_or_else(|e| panic!("docker {}: {e}\n{}", args.join(" "), self.c.report()));
        println!(
            "$ docker {}   # via {}, {:.1?}, {}\n{}{}",
            args.join(" "),
            self.c.node(i).name(),
            t.elapsed(),
            out.status,
            out.stdout,
            if out.stderr.is_empty() { String::new() } else { format!("(stderr) {}", out.stderr) }
        );
        out
    }

    /// `docker ARGS` under a pseudo-terminal (util-linux `script`), as from a terminal:
    /// what `docker exec -it` needs. Returns the command's own exit code (`script -e`).
    fn docker_tty(&self, i: usize, args: &str) -> Output {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("docker {args}"), "/dev/null"])
            .env("DOCKER_HOST", format!("unix://{}", self.c.node(i).data_dir.join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env("TERM", "xterm")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        let out = run(&mut cmd, DOCKER_TIMEOUT).unwrap_or_else(|e| panic!("script docker {args}: {e}\n{}", self.c.report()));
        println!("$ docker {args}   # under a pty, via {}, {}\n{}", self.c.node(i).name(), out.status, out.stdout);
        out
    }

    fn docker_ok(&self, i: usize, args: &[&str]) -> Output {
        let out = self.docker(i, args);
        assert!(out.status.success(), "`docker {}` failed: {}\n{}", args.join(" "), out.stderr, self.c.report());
        out
    }

    fn names(&self, i: usize) -> Vec<String> {
        let out = self.docker_ok(i, &["ps", "-a", "--format", "{{.Names}}"]);
        out.stdout.lines().map(str::to_string).collect()
    }

    fn wait_for(&self, limit: Duration, what: &str, mut f: impl FnMut() -> Result<(), String>) {
        let began = Instant::now();
        let mut last = String::new();
        while began.elapsed() < limit {
            match f() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("timed out after {limit:?} waiting for {what}: {last}\n{}", self.c.report());
    }
}

#[test]
fn logs_run_rm_and_exec_reach_a_container_on_another_node_and_a_dead_node_is_named() {
    if !require_netns("docker_proxy_lab") {
        return;
    }
    if let Some(why) = docker_unavailable().or_else(engines_unavailable) {
        println!("skipped: docker_proxy_lab: {why}");
        return;
    }
    let began = Instant::now();
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("proxy");
    let _cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("cannot build the lab with engines: {e}"));
    lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    let (c, _) = shoal_tests::cluster::form_lab_cluster("dproxy", lab, FORM_TIMEOUT);
    let mut w = World { c, config: TempDir::new("dproxy-docker-config") };
    println!("cluster formed in {:.1?}", began.elapsed());

    // ---- 1. logs of a container on n3, through n1 and n2.
    // The engine orders stdout and stderr lines written at once as it pleases: the last
    // lines come a moment later.
    let talker = "echo line 1; echo oops >&2; sleep 1; echo line 2; echo line 3; trap 'exit 0' TERM; /bin/sleep 3600 & wait";
    w.docker_ok(0, &["run", "-d", "--name", "talker", "-e", "constraint:node==n3", &image, "sh", "-c", talker]);
    assert!(w.names(0).contains(&"n3/talker".to_string()), "docker ps shows n3/talker");
    w.wait_for(Duration::from_secs(20), "the 3 lines of talker through n1", || {
        let out = w.docker(0, &["logs", "talker"]);
        if out.status.success() && out.stdout == "line 1\nline 2\nline 3\n" && out.stderr == "oops\n" {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    });
    assert_eq!(w.docker_ok(0, &["logs", "--tail", "1", "talker"]).stdout, "line 3\n");
    let via_n2 = w.docker_ok(1, &["logs", "talker"]);
    assert_eq!((via_n2.stdout.as_str(), via_n2.stderr.as_str()), ("line 1\nline 2\nline 3\n", "oops\n"), "the same through n2");

    // `logs -f` streams through n1 as the container writes, and ends with it.
    let ticker = "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done";
    w.docker_ok(0, &["run", "-d", "--name", "ticker", "-e", "constraint:node==n3", &image, "sh", "-c", ticker]);
    let t = Instant::now();
    assert_eq!(w.docker_ok(0, &["logs", "-f", "ticker"]).stdout, "tick 1\ntick 2\ntick 3\ntick 4\n", "docker logs -f through n1");
    assert!(t.elapsed() >= Duration::from_millis(700), "docker logs -f returned before ticker ended ({:?})", t.elapsed());

    // ---- 2. docker run --rm without -d: output streamed, exit code passed on, gone after.
    for (node, name) in [("n3", "once3"), ("n1", "once1")] {
        let t = Instant::now();
        let hint = format!("constraint:node=={node}");
        let out = w.docker(0, &["run", "--rm", "--name", name, "-e", &hint, &image, "sh", "-c", "echo hi; exit 3"]);
        assert_eq!(out.stdout, "hi\n", "docker run --rm on {node} prints hi: {out:?}");
        assert_eq!(out.status.code(), Some(3), "docker run --rm on {node} exits 3: {out:?}");
        assert!(!w.names(0).iter().any(|n| n.ends_with(name)), "{name} is gone after docker run --rm");
        println!("docker run --rm on {node} through n1: {:.1?}", t.elapsed());
    }

    // Without --rm (through n2): the same output and code, and the container stays, exited.
    let out = w.docker(1, &["run", "--name", "kept", "-e", "constraint:node==n3", &image, "sh", "-c", "echo hi; exit 3"]);
    assert_eq!((out.stdout.as_str(), out.status.code()), ("hi\n", Some(3)), "docker run without --rm: {out:?}");
    let state = w.docker_ok(0, &["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.HostConfig.AutoRemove}}", "kept"]);
    assert_eq!(state.stdout.trim(), "exited 3 false", "kept stays, exited with 3");
    // `docker attach` to a container that already runs gets what it writes from then on.
    let late = "echo early; sleep 3; echo late 1; echo late 2";
    w.docker_ok(0, &["run", "-d", "--name", "late", "-e", "constraint:node==n3", &image, "sh", "-c", late]);
    let out = w.docker(0, &["attach", "--no-stdin", "late"]);
    assert_eq!(out.stdout, "late 1\nlate 2\n", "docker attach streams new output until the container ends: {out:?}");

    // ---- 3. docker exec in the container on n3.
    let out = w.docker(0, &["exec", "talker", "sh", "-c", "echo hi; echo oops >&2; exit 4"]);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str(), out.status.code()), ("hi\n", "oops\n", Some(4)), "docker exec: {out:?}");
    let out = w.docker(1, &["exec", "talker", "/bin/busybox", "cat", "/proc/1/cmdline"]);
    assert!(out.status.success() && out.stdout.contains("trap"), "docker exec through n2 sees the container's process 1: {out:?}");

    let out = w.docker_with_input(0, &["exec", "-i", "talker", "sh", "-c", "read x; echo got $x; exit 5"], Some("there\n"));
    assert_eq!((out.stdout.as_str(), out.status.code()), ("got there\n", Some(5)), "docker exec -i passes stdin on: {out:?}");
    // `docker exec -it` from a terminal: the process gets a TTY of its own (raw stream).
    if run(Command::new("script").arg("--version"), Duration::from_secs(5)).is_ok_and(|o| o.status.success()) {
        let out = w.docker_tty(0, "exec -it talker sh -c 'tty; exit 6'");
        assert_eq!(out.status.code(), Some(6), "docker exec -it passes the exit code on: {out:?}");
        assert!(out.stdout.contains("/dev/pts/"), "docker exec -it gives the process a terminal: {out:?}");
    } else {
        println!("skipped docker exec -it: no `script` (util-linux) for a pseudo-terminal");
    }

    // ---- 4. n3 dies: a clear error at once, never a hang.
    w.c.node_mut(2).kill();
    let killed = Instant::now();
    w.wait_for(Duration::from_secs(30), "docker logs talker to say n3 is down", || {
        let t = Instant::now();
        let out = w.docker(0, &["logs", "talker"]);
        let took = t.elapsed();
        assert!(took < REFUSAL_MAX, "docker logs of a container on a dead node took {took:?}: {out:?}");
        assert!(!out.status.success(), "docker logs of a container on a dead node succeeded: {out:?}");
        assert!(out.stderr.contains("talker runs on n3"), "the error says where it runs: {}", out.stderr);
        if out.stderr.contains("talker runs on n3, which is down") { Ok(()) } else { Err(out.stderr) }
    });
    println!("n3 named down {:.1?} after its SIGKILL; the whole story took {:.1?}", killed.elapsed(), began.elapsed());
}
