//! Certificates renew themselves at two thirds of their lifetime, without a restart, and a
//! cluster whose certificates all expired while it was off comes back by itself. Two agents on loopback
//! (`--no-mdns`, nothing leaves the machine) with 60-second certificates.

mod common;

use common::{free_port, shoal, status, wait_for, Agent};
use std::path::Path;
use std::time::Duration;

fn start(token: &str, dir: &Path, port: u16, join: Option<u16>) -> Agent {
    let join = join.map(|j| format!("127.0.0.1:{j}"));
    let mut args = vec!["--no-mdns", "--voters", "1", "--cert-lifetime", "60s"];
    if let Some(j) = &join {
        args.extend(["--join", j.as_str()]);
    }
    common::start(Some(token), dir, port, &args)
}

#[test]
fn certificates_renew_at_two_thirds_and_a_cluster_comes_back_after_they_all_expired() {
    let root = common::scratch("renewal");
    let token = String::from_utf8(shoal().args(["token", "new"]).output().expect("token").stdout).expect("utf8");
    let token = token.trim().to_string();
    let p1 = free_port();
    let a = start(&token, &root.join("a"), p1, None);
    let p2 = free_port();
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
    // Through the manager: b is a worker, which may not make a user's writes.
    let out = shoal()
        .args(["node", "update", &a_id, "--label-add", "renewed=yes", "--data-dir"])
        .arg(&a.dir)
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
