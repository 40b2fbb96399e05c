//! Helpers shared by the node's process tests: agents on loopback (`--no-mdns` unless a test
//! asks for mDNS on `lo`), their status, and waiting with the agents' log tails on failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running agent; killed when dropped. Its stderr goes to `<dir>.log`.
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

/// `shoal` with no token in its environment.
pub fn shoal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.env_remove("SHOAL_TOKEN");
    c
}

/// A port P on loopback free both as UDP (gossip) and TCP (the agent's one TCP port).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if port > 65_000 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP+TCP port on loopback");
}

/// Starts `shoal agent --bind 127.0.0.1:PORT --data-dir DIR` with `args`, and the token in
/// `SHOAL_TOKEN` if one is given.
pub fn start(token: Option<&str>, dir: &Path, port: u16, args: &[&str]) -> Agent {
    let mut cmd = shoal();
    cmd.arg("agent")
        .args(args)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info,openraft=error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).expect("log file"));
    if let Some(t) = token {
        cmd.env("SHOAL_TOKEN", t);
    }
    Agent { child: cmd.spawn().expect("spawn agent"), dir: dir.to_path_buf(), port }
}

/// `shoal status --format json` of the agent, if it answers.
pub fn status(a: &Agent) -> Option<serde_json::Value> {
    let out = shoal().args(["status", "--format", "json", "--data-dir"]).arg(&a.dir).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The agent's Raft role as `status` reports it.
pub fn role(a: &Agent) -> Option<String> {
    status(a).and_then(|s| s["role"].as_str().map(String::from))
}

/// Polls `f` every 250 ms; on timeout panics with the last 30 log lines of `logs`.
pub fn wait_for(what: &str, limit: Duration, logs: &[&Agent], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let tails: Vec<String> = logs
        .iter()
        .map(|a| a.log())
        .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
        .collect();
    panic!("timed out after {limit:?} waiting for {what}\n{}", tails.join("\n-----\n"));
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("shoal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("tmp");
    root
}
