//! Remote access with client certificates, judged by the real `docker` CLI and the `shoal`
//! CLI run from a "laptop": a lab of 3 network namespaces on one bridge, agents on the
//! first two, and the third with no agent at all (outside every node's namespace; the
//! lab creates nothing in the root namespace, so the test process's own namespace stays
//! off the lab's links and every real interface stays untouched).
//!
//! 0. Node certificates carry the node's IP and name (`n1`) as SANs.
//! 1. `shoal client new laptop --out DIR` on node 1 writes ca.pem, cert.pem, key.pem (dir
//!    0700, key 0600), refuses to overwrite them without --force; `shoal client ls` lists it.
//! 2. On the laptop, with only the variables of `eval "$(shoal env --cert-dir DIR --node
//!    IP)"` (a clean environment and an empty HOME): `docker version` (server API 1.41),
//!    `docker ps`, `docker info` (`Nodes: 2`) over TCP with mutual TLS, and `shoal status`,
//!    `shoal node ls` through the shoal API (`--host` from SHOAL_HOST).
//!    The client certificate opens neither Raft nor the image protocol (openssl).
//! 3. Refused at the handshake: no client certificate, a self-made one (own CA, made with
//!    openssl), and, after `shoal client rm laptop` on the manager (the worker refuses it), the revoked one, on
//!    both nodes, and by node 1 after it restarts.
//!
//! Needs network namespaces (root), the `docker` CLI and `openssl`; skipped with a printed
//! reason otherwise. No Docker Engine is needed: the cluster has no containers.

use shoal_tests::cluster::{in_cluster, statuses};
use shoal_tests::{every, require_netns, run, shoal_bin, token_new, Cluster, Lab, Output, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn which(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

/// Runs `script` with `sh -c` in the laptop's namespace, in a clean environment: only PATH
/// and an empty HOME (so no docker config or context of this machine applies).
fn on_laptop(lab: &Lab, home: &Path, script: &str) -> Output {
    let shoal_dir = shoal_bin().parent().expect("bin dir").display().to_string();
    let path = format!("{shoal_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let ns = &lab.hosts[2].ns;
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, "env", "-i"])
            .arg(format!("PATH={path}"))
            .arg(format!("HOME={}", home.display()))
            .args(["sh", "-c", script]),
        CLI_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\nstdout: {}\nstderr: {}", out.status, out.stdout, out.stderr);
    out.stdout.clone()
}

fn refused(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded but must be refused:\nstdout: {}", out.stdout);
    out.stderr.clone()
}

/// The docker CLI's words for a TLS alert from the node (Go's crypto/tls: `remote error:
/// tls: <alert>`).
fn tls_refusal(stderr: &str, alert: &str) -> bool {
    stderr.contains(&format!("remote error: tls: {alert}"))
}

#[test]
fn docker_and_shoal_from_a_laptop_with_a_client_certificate_and_refused_without_one() {
    if !require_netns("remote_lab") {
        return;
    }
    for bin in ["docker", "openssl"] {
        if !which(bin) {
            println!("skipped: remote_lab: no `{bin}` on PATH");
            return;
        }
    }
    let began = Instant::now();
    let lab = Lab::new(3).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let node_ip: Vec<String> = lab.hosts.iter().map(|h| h.ip.to_string()).collect();
    let token = token_new();
    let specs: Vec<_> = (0..2).map(|i| lab.agent_spec(i, &token, &["--bootstrap-expect", "2"])).collect();
    let mut c = Cluster::in_lab("remote", lab);
    for s in specs {
        c.add(s);
    }
    let both = [0, 1];
    for i in both {
        c.node_mut(i).start();
    }
    c.wait_until(Duration::from_secs(60), "2 nodes form one cluster", || {
        statuses(&c, &both).is_some_and(|s| every(&s, |s| in_cluster(s) && s.nodes_registered == 2))
    });
    println!("cluster formed in {:.1?}", began.elapsed());
    // Two nodes: one manager (whichever founded) and one worker. Users' writes go through
    // the manager; the worker refuses them (issue 13) and serves reads.
    let st = statuses(&c, &both).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let m = st.iter().position(|s| s.role == "leader" || s.role == "manager").unwrap_or_else(|| panic!("no manager\n{}", c.report()));
    let w = 1 - m;
    let lab = c.lab_arc().expect("lab");
    let home = TempDir::new("remote-home");
    let certs = TempDir::new("remote-certs");
    let dir = certs.path().join("laptop");
    let dir_s = dir.display().to_string();

    // Node certificates carry the node's IP and name as SANs (what `docker --tlsverify`
    // checks against DOCKER_HOST).
    let sans = run(
        Command::new("openssl").args(["x509", "-noout", "-ext", "subjectAltName", "-in"]).arg(c.node(0).data_dir.join("node.crt")),
        CLI_TIMEOUT,
    )
    .expect("openssl");
    let sans = ok(&sans, "openssl x509");
    assert!(sans.contains(&format!("IP Address:{}", node_ip[0])) && sans.contains("DNS:n1"), "node 1's SANs: {sans}");

    // 1. A client certificate, asked for on node 1.
    let out = c.node(m).shoal(&["client", "new", "laptop", "--out", &dir_s], CLI_TIMEOUT).expect("run");
    ok(&out, "shoal client new laptop");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join(f).is_file(), "{f} missing in {dir_s}");
    }
    assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.join("key.pem")).expect("key").permissions().mode() & 0o777, 0o600);
    let again = c.node(m).shoal(&["client", "new", "laptop2", "--out", &dir_s], CLI_TIMEOUT).expect("run");
    assert!(refused(&again, "client new into a full dir").contains("refusing to overwrite"), "{}", again.stderr);
    let dup = c.node(m).shoal(&["client", "new", "laptop", "--out", &certs.path().join("dup").display().to_string()], CLI_TIMEOUT).expect("run");
    assert!(refused(&dup, "a second client named laptop").contains("exists"), "{}", dup.stderr);
    let ls = ok(&c.node(w).shoal(&["client", "ls"], CLI_TIMEOUT).expect("run"), "client ls");
    assert!(ls.lines().any(|l| l.starts_with("laptop ")), "client ls:\n{ls}");

    // 2. From the laptop, with only what `shoal env` prints.
    let env = format!("eval \"$(shoal env --cert-dir {dir_s} --node {})\" && ", node_ip[0]);
    let printed = ok(&on_laptop(&lab, home.path(), &format!("shoal env --cert-dir {dir_s} --node {}", node_ip[0])), "shoal env");
    assert!(printed.contains(&format!("export DOCKER_HOST=tcp://{}:7480", node_ip[0])), "{printed}");
    assert!(printed.contains("export DOCKER_TLS_VERIFY=1") && printed.contains("export DOCKER_CERT_PATH="), "{printed}");
    let t = Instant::now();
    let version = ok(&on_laptop(&lab, home.path(), &format!("{env}docker version --format '{{{{.Server.APIVersion}}}}'")), "docker version");
    assert_eq!(version.trim(), "1.41", "docker version over TCP");
    let ps = ok(&on_laptop(&lab, home.path(), &format!("{env}docker ps -a")), "docker ps");
    assert!(ps.starts_with("CONTAINER ID"), "docker ps:\n{ps}");
    let info = ok(&on_laptop(&lab, home.path(), &format!("{env}docker info")), "docker info");
    assert!(info.lines().any(|l| l.trim() == "Nodes: 2"), "docker info does not say Nodes: 2:\n{info}");
    println!("docker version, ps, info over TCP with mutual TLS in {:.1?}", t.elapsed());
    let status = ok(&on_laptop(&lab, home.path(), &format!("{env}shoal status --format json")), "shoal status (remote)");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(status["nodes_registered"], 2, "{status}");
    let nodes = ok(&on_laptop(&lab, home.path(), &format!("{env}shoal node ls")), "shoal node ls (remote)");
    assert!(nodes.lines().count() >= 3, "node ls:\n{nodes}");
    // The client certificate opens no node-to-node session: Raft and the image protocol
    // refuse it (openssl presents it whatever the node asks for).
    for alpn in ["shoal-raft/1", "shoal-image/1"] {
        let out = on_laptop(
            &lab,
            home.path(),
            &format!(
                "sleep 1 | openssl s_client -connect {}:7480 -alpn {alpn} -cert {dir_s}/cert.pem -key {dir_s}/key.pem -CAfile {dir_s}/ca.pem 2>&1",
                node_ip[0]
            ),
        );
        let text = out.stdout.to_ascii_lowercase();
        assert!(text.contains("alert certificate unknown"), "{alpn} with a client certificate:\n{}", out.stdout);
        println!("{alpn} refuses the client certificate: {}", out.stdout.lines().find(|l| l.contains("alert")).unwrap_or("").trim());
    }
    // Through the other node too.
    let env2 = format!("eval \"$(shoal env --cert-dir {dir_s} --node {}:7480)\" && ", node_ip[1]);
    ok(&on_laptop(&lab, home.path(), &format!("{env2}docker ps")), "docker ps via node 2");

    // 3. Refusals. No client certificate: TLS with the cluster CA, but nothing to present.
    let host0 = format!("tcp://{}:7480", node_ip[0]);
    let none = on_laptop(&lab, home.path(), &format!("docker --tlsverify --tlscacert {dir_s}/ca.pem -H {host0} ps"));
    let e = refused(&none, "docker ps without a client certificate");
    assert!(tls_refusal(&e, "certificate required"), "not a TLS refusal: {e}");
    println!("no client certificate: {}", e.trim());
    let plain = on_laptop(&lab, home.path(), &format!("DOCKER_HOST={host0} docker ps"));
    refused(&plain, "docker ps without TLS");
    // A self-made certificate (its own CA), with the cluster's ca.pem to check the node.
    let fake = certs.path().join("fake");
    std::fs::create_dir_all(&fake).expect("mkdir");
    std::fs::copy(dir.join("ca.pem"), fake.join("ca.pem")).expect("copy ca");
    let made = run(
        Command::new("openssl").args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]).args([
            "-keyout",
            &fake.join("key.pem").display().to_string(),
            "-out",
            &fake.join("cert.pem").display().to_string(),
            "-subj",
            "/CN=mallory/OU=client",
            "-days",
            "1",
            "-addext",
            "extendedKeyUsage=clientAuth",
        ]),
        CLI_TIMEOUT,
    )
    .expect("openssl");
    ok(&made, "openssl req");
    let fake_env = format!("eval \"$(shoal env --cert-dir {} --node {})\" && ", fake.display(), node_ip[0]);
    // (Go's client does not even present a certificate whose issuer is not among the CAs
    // the node asks for, so the node sees none; shoal's client presents it and the node
    // refuses it.)
    let e = refused(&on_laptop(&lab, home.path(), &format!("{fake_env}docker ps")), "docker ps with a self-made certificate");
    assert!(tls_refusal(&e, "certificate required") || tls_refusal(&e, "bad certificate"), "not a TLS refusal: {e}");
    println!("self-made certificate: {}", e.trim());
    let e = refused(&on_laptop(&lab, home.path(), &format!("{fake_env}shoal status")), "shoal status with a self-made certificate");
    assert!(e.contains("fatal alert"), "not a TLS refusal: {e}");
    println!("self-made certificate, shoal: {}", e.trim());
    // The worker may not revoke it (a manager's write); the manager revokes it, and both
    // nodes refuse it from then on.
    let e = refused(&c.node(w).shoal(&["client", "rm", "laptop"], CLI_TIMEOUT).expect("run"), "client rm on the worker");
    assert!(e.contains("is a worker") && e.contains("must come from a manager"), "{e}");
    let rm = ok(&c.node(m).shoal(&["client", "rm", "laptop"], CLI_TIMEOUT).expect("run"), "client rm");
    assert!(rm.contains("revoked"), "{rm}");
    let t = Instant::now();
    for (i, ip) in node_ip.iter().take(2).enumerate() {
        let env_i = format!("eval \"$(shoal env --cert-dir {dir_s} --node {ip})\" && ");
        let mut last = String::new();
        let refused_now = loop {
            let out = on_laptop(&lab, home.path(), &format!("{env_i}docker ps"));
            if !out.status.success() {
                break Some(out.stderr);
            }
            last = out.stdout;
            if t.elapsed() > Duration::from_secs(15) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let e = refused_now.unwrap_or_else(|| panic!("node {} still accepts the revoked certificate: {last}\n{}", i + 1, c.report()));
        assert!(tls_refusal(&e, "revoked certificate"), "not a TLS refusal: {e}");
        println!("revoked certificate, node {}: {}", i + 1, e.trim());
        let e = refused(&on_laptop(&lab, home.path(), &format!("{env_i}shoal status")), "shoal status with a revoked certificate");
        assert!(e.contains("fatal alert") && e.contains("Revoked"), "not a TLS refusal: {e}");
    }
    println!("revocation refused on both nodes {:.1?} after `client rm`", t.elapsed());
    // Still refused by a node that restarts (its revoked set is loaded before it serves).
    c.node(0).signal("TERM");
    assert!(c.node_mut(0).wait_exit(Duration::from_secs(20)).is_some(), "node 1 did not stop");
    c.node_mut(0).start();
    c.wait_until(Duration::from_secs(30), "node 1 back in the cluster", || c.node(0).status().is_ok_and(|s| in_cluster(&s)));
    let e = refused(&on_laptop(&lab, home.path(), &format!("{env}docker ps")), "docker ps with a revoked certificate after a restart");
    assert!(tls_refusal(&e, "revoked certificate"), "not a TLS refusal: {e}");
    let ls = ok(&c.node(0).shoal(&["client", "ls"], CLI_TIMEOUT).expect("run"), "client ls");
    assert!(!ls.lines().any(|l| l.starts_with("laptop ")), "a revoked client is still listed:\n{ls}");
    println!("remote_lab done in {:.1?}", began.elapsed());
}
