//! The README's commands, run as written.
//!
//! - "Three nodes on one machine": its blocks run exactly as they are in README.md (fixed
//!   ports 17401–17403 and data dirs /tmp/shoal-n1..3, as a user would run them), three
//!   times in a row; each time the three agents must form one cluster with a leader and
//!   three managers, and the second block's `node ls` must show it.
//! - "Start a node": the main command, `./target/release/shoal agent` with nothing else, on
//!   a fresh machine (a network namespace of its own, an empty HOME, no token): it must
//!   found a cluster and say how to add machines; then the block of client commands runs
//!   against it. `cargo build --release` is not run (CI tests the debug build of the same
//!   source; the release build alone takes about 8 minutes here) and lines with `<id>`
//!   placeholders are skipped, each with the reason printed.
//!
//! Agents started by a block are in the block's process group, which is killed afterwards.

use shoal_tests::{require_netns, run, shoal_bin, Lab, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The ```sh blocks of the README section whose heading is `## {heading}`.
fn blocks(text: &str, heading: &str) -> Vec<String> {
    let start = text.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("README has no section `## {heading}`"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    let section = &rest[..end];
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => out.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!out.is_empty(), "README section `## {heading}` has no sh block");
    out
}

/// A bash running one README block in a process group of its own, with `shoal` on PATH.
struct Block {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Block {
    /// Starts `script` (prefixed by `prefix`, e.g. `ip netns exec NS`) with `env`.
    fn start(prefix: &[&str], script: &str, env: &[(&str, &str)], logs: &Path) -> Block {
        use std::os::unix::process::CommandExt;
        let bin_dir = shoal_bin().parent().map(Path::to_path_buf).unwrap_or_default();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let n = shoal_tests::unique();
        let (out, err) = (logs.join(format!("block{n}.out")), logs.join(format!("block{n}.err")));
        let argv: Vec<&str> = prefix.iter().copied().chain(["bash", "-eu", "-o", "pipefail", "-c", script]).collect();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env("PATH", path)
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_DATA_DIR")
            .env("RUST_LOG", "info,mdns_sd=warn,openraft=error")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("block stdout"))
            .stderr(std::fs::File::create(&err).expect("block stderr"))
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start bash: {e}"));
        Block { child, out, err }
    }

    /// Waits for bash itself to finish (what it started in the background may go on).
    fn wait(&mut self, limit: Duration) -> (bool, String, String) {
        let started = Instant::now();
        let ok = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.success();
            }
            assert!(started.elapsed() < limit, "the README block did not finish within {limit:?}:\n{}", self.err_text());
            std::thread::sleep(Duration::from_millis(50));
        };
        (ok, std::fs::read_to_string(&self.out).unwrap_or_default(), self.err_text())
    }

    fn err_text(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The whole group: bash and every agent it put in the background.
        let group = format!("-{}", self.child.id());
        for sig in ["-TERM", "-KILL"] {
            let _ = Command::new("kill").args([sig, "--", &group]).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = self.child.wait();
    }
}

fn status_json(data_dir: &str) -> Option<serde_json::Value> {
    let out = run(Command::new(shoal_bin()).args(["status", "--format", "json", "--data-dir", data_dir]), Duration::from_secs(5)).ok()?;
    serde_json::from_str(&out.stdout).ok()
}

#[test]
fn readme_three_nodes_on_one_machine_form_a_cluster_every_time() {
    let blocks = blocks(&readme(), "Three nodes on one machine");
    assert_eq!(blocks.len(), 2, "the section has the start block and the node ls block");
    let logs = TempDir::new("readme-three");
    let dirs = ["/tmp/shoal-n1", "/tmp/shoal-n2", "/tmp/shoal-n3"];
    for round in 1..=3 {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        let began = Instant::now();
        let mut start = Block::start(&[], &blocks[0], &[], logs.path());
        let (ok, out, err) = start.wait(Duration::from_secs(30));
        assert!(ok, "round {round}: the first block failed:\n{out}\n{err}");
        for name in ["n1", "n2", "n3"] {
            assert!(out.contains(name), "round {round}: `shoal members` does not list {name}:\n{out}\n{err}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<_> = dirs.iter().filter_map(|d| status_json(d)).collect();
            let leaders: Vec<_> = all.iter().map(|s| s["leader"].clone()).collect();
            let formed = all.len() == 3
                && leaders.iter().all(|l| l.is_string() && *l == leaders[0])
                && all.iter().all(|s| s["voters"].as_array().is_some_and(|v| v.len() == 3));
            if formed {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no cluster of 3 managers within 60 s: {all:?}\n{}", start.err_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("round {round}: one leader and 3 managers {:.1?} after the block started", began.elapsed());
        let mut ls = Block::start(&[], &blocks[1], &[], logs.path());
        let (ok, out, err) = ls.wait(Duration::from_secs(30));
        assert!(ok, "round {round}: `shoal node ls` failed:\n{out}\n{err}");
        let rows: Vec<&str> = out.lines().filter(|l| ["n1", "n2", "n3"].iter().any(|n| l.contains(n))).collect();
        assert_eq!(rows.len(), 3, "round {round}: node ls shows the 3 nodes:\n{out}");
        assert_eq!(rows.iter().filter(|l| l.contains("leader")).count(), 1, "one leader:\n{out}");
        assert_eq!(rows.iter().filter(|l| l.contains("manager")).count(), 2, "two more managers:\n{out}");
        drop(start);
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn readme_start_a_node_founds_a_cluster_on_a_fresh_machine() {
    if !require_netns("readme_start_a_node_founds_a_cluster_on_a_fresh_machine") {
        return;
    }
    let text = readme();
    let blocks = blocks(&text, "Start a node");
    let lab = Lab::new(1).unwrap_or_else(|e| panic!("lab: {e}"));
    let home = TempDir::new("readme-home");
    let bin = shoal_bin().display().to_string();
    let mut main = String::new();
    for line in blocks[0].lines() {
        if line.trim() == "cargo build --release" {
            println!("skipped `{line}`: CI tests the debug build of the same source (a release build takes ~8 min here)");
        } else {
            main.push_str(&line.replace("./target/release/shoal", &bin));
            main.push('\n');
        }
    }
    assert!(main.contains(" agent"), "the main block starts an agent: {main}");
    let home_s = home.path().display().to_string();
    let env = [("HOME", home_s.as_str()), ("XDG_DATA_HOME", "")];
    let ns = lab.hosts[0].ns.clone();
    let prefix = ["ip", "netns", "exec", ns.as_str()];
    let agent = Block::start(&prefix, &main, &env, home.path());
    let data_dir = home.path().join(".local/share/shoal").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(&data_dir).and_then(|s| s["role"].as_str().map(String::from)).as_deref() != Some("leader") {
        assert!(Instant::now() < deadline, "the README's agent did not found a cluster within 30 s:\n{}", agent.err_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = agent.err_text();
    assert!(err.contains("founds a new cluster") && err.contains("SHOAL_TOKEN="), "the agent says how to add machines:\n{err}");
    // The client commands of the section, as written, on that machine.
    let mut clients = String::new();
    for block in &blocks[1..] {
        for line in block.lines() {
            let cmd = line.split('#').next().unwrap_or("").trim();
            if !cmd.starts_with("shoal ") || cmd.starts_with("shoal service") {
                continue;
            }
            if cmd.starts_with("shoal image push") {
                println!("skipped `{cmd}`: it needs an image built on this machine and a second node (tests/tests/images_lab.rs pushes one)");
                continue;
            }
            if cmd.contains('<') {
                println!("skipped `{cmd}`: it needs a real value for its placeholder");
                continue;
            }
            clients.push_str(cmd);
            clients.push('\n');
        }
    }
    println!("running the README's client commands:\n{clients}");
    let mut c = Block::start(&prefix, &clients, &env, home.path());
    let (ok, out, err) = c.wait(Duration::from_secs(60));
    assert!(ok, "a README client command failed:\n{out}\n{err}");
    assert!(out.contains("leader"), "`shoal status` / `node ls` show this node leading:\n{out}");
    println!(
        "skipped the `shoal service` lines of the section: they use nginx:alpine, which needs a registry \
         (tests/tests/services_docker.rs runs the same commands on a local image)"
    );
}
