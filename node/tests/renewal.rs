//! Certificates renew themselves at two thirds of their lifetime, without a restart, and a
//! cluster whose certificates all expired while it was off comes back by itself. Two agents on loopback
//! (`--no-mdns`, nothing leaves the machine) with 60-second certificates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shoal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.env_remove("SHOAL_TOKEN");
    c
}

/// A UDP port P on loopback with TCP P+1 and P+2 free too (the agent's Raft and join ports).
fn free_ports() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if port > 65_000 {
            continue;
        }
        let ok = (1..=2).all(|d| std::net::TcpListener::bind(("127.0.0.1", port + d)).is_ok());
        if ok {
            return port;
        }
    }
    panic!("no free port triple on loopback");
}

fn start(token: &str, dir: &Path, port: u16, join: Option<u16>) -> Agent {
    let mut cmd = shoal();
    cmd.args(["agent", "--no-mdns", "--voters", "1", "--cert-lifetime", "60s", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("SHOAL_TOKEN", token)
        .env("RUST_LOG", "info,openraft=error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).expect("log file"));
    if let Some(j) = join {
        cmd.arg("--join").arg(format!("127.0.0.1:{j}"));
    }
    Agent { child: cmd.spawn().expect("spawn agent"), dir: dir.to_path_buf(), port }
}

fn status(a: &Agent) -> Option<serde_json::Value> {
    let out = shoal().args(["status", "--format", "json", "--data-dir"]).arg(&a.dir).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_for(what: &str, limit: Duration, logs: &[&Agent], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let tails: Vec<String> = logs
        .iter()
        .map(|a| std::fs::read_to_string(a.dir.with_extension("log")).unwrap_or_default())
        .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
        .collect();
    panic!("timed out after {limit:?} waiting for {what}\n{}", tails.join("\n-----\n"));
}

#[test]
fn certificates_renew_at_two_thirds_and_a_cluster_comes_back_after_they_all_expired() {
    let root = std::env::temp_dir().join(format!("shoal-renewal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("tmp");
    let token = String::from_utf8(shoal().args(["token", "new"]).output().expect("token").stdout).expect("utf8");
    let token = token.trim().to_string();
    let p1 = free_ports();
    let a = start(&token, &root.join("a"), p1, None);
    let p2 = free_ports();
    let b = start(&token, &root.join("b"), p2, Some(p1));

    let expiry = |x: &Agent| status(x).and_then(|s| s["cert_expires_unix"].as_u64());
    let role = |x: &Agent| status(x).and_then(|s| s["role"].as_str().map(String::from));
    // With --bootstrap-expect 1 (the default) the lower id of the two creates the cluster.
    wait_for("a leader and a worker", Duration::from_secs(30), &[&a, &b], || {
        let mut roles = [role(&a), role(&b)];
        roles.sort();
        roles == [Some("leader".to_string()), Some("worker".to_string())]
    });
    let (a, b) = if role(&a).as_deref() == Some("leader") { (a, b) } else { (b, a) };
    let (ea, eb) = (expiry(&a).expect("a has a cert"), expiry(&b).expect("b has a cert"));
    let file_b = std::fs::read(b.dir.join("node.crt")).expect("b's cert file");

    // Issued with 60 s of life (backdated 15 s): due after 40 s of validity.
    wait_for("both certificates renewed", Duration::from_secs(75), &[&a, &b], || {
        expiry(&a).is_some_and(|e| e > ea) && expiry(&b).is_some_and(|e| e > eb)
    });
    assert_ne!(std::fs::read(b.dir.join("node.crt")).expect("b's cert file"), file_b, "the renewed certificate is saved");

    // A power cut longer than a certificate lives: stop both, wait until even the renewed
    // certificates have expired, start both again. Each renews from its own copy of the CA,
    // a leader is elected over mutual TLS, and writes work.
    let (ea2, eb2) = (expiry(&a).expect("a"), expiry(&b).expect("b"));
    // The leader keeps its address (the Raft membership names it); the other joins through it.
    let (dir_a, port_a, dir_b, port_b) = (a.dir.clone(), a.port, b.dir.clone(), b.port);
    drop((a, b));
    wait_for("every certificate to expire", Duration::from_secs(75), &[], || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        now > ea2.max(eb2) + 1
    });
    let a = start(&token, &dir_a, port_a, None);
    let b = start(&token, &dir_b, port_b, Some(port_a));
    wait_for("fresh certificates and a leader after the long stop", Duration::from_secs(40), &[&a, &b], || {
        let fresh = expiry(&a).is_some_and(|e| e > ea2) && expiry(&b).is_some_and(|e| e > eb2);
        let led = status(&a).is_some_and(|s| s["leader"].is_string()) && status(&b).is_some_and(|s| s["leader"].is_string());
        fresh && led
    });
    let a_id = status(&a).and_then(|s| s["node"].as_str().map(String::from)).expect("a's id");
    let out = shoal()
        .args(["node", "update", &a_id, "--label-add", "renewed=yes", "--data-dir"])
        .arg(&b.dir)
        .output()
        .expect("node update");
    assert!(out.status.success(), "write after renewal failed: {}", String::from_utf8_lossy(&out.stderr));
    let ls = shoal().args(["node", "ls", "--format", "json", "--data-dir"]).arg(&a.dir).output().expect("ls");
    let nodes: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    let labelled = nodes.as_array().expect("array").iter().any(|n| n["labels"]["renewed"] == "yes");
    assert!(labelled, "the write is visible on both: {nodes}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}
