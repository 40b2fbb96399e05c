//! What a real agent's Raft port (gossip port + 1, mutual TLS) lets in, over loopback with
//! `--no-mdns --join` (no privileges needed): a TLS client of our own (rustls) with no
//! certificate, with a self-signed certificate, or with one from a self-made CA is refused;
//! a node's own certificate is accepted until the node is revoked with `shoal node rm`, then
//! refused. Garbage, a truncated TLS hello, a huge length prefix in plain TCP and, inside an
//! accepted TLS session, oversized, truncated and undecodable frames leave the cluster
//! healthy: same leader and term, writes work, no memory blow-up. A voter that lost its Raft
//! store refuses to start and says how to come back.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use shoal_tests::cluster::{agreed_leader, free_agent_ports, in_cluster, label_ok, leader_of, sees_label, statuses};
use shoal_tests::{every, token_new, Cluster, NodeSpec, TokenVia};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an accepted session must stay open, silent, to count as accepted. A refused
/// client certificate is answered with an alert right after the handshake (TLS 1.3: the
/// server checks it after the client's Finished).
const OPEN_FOR: Duration = Duration::from_millis(1500);

/// The client's certificate and key, or none.
type ClientAuth = Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>;

/// Accepts any server certificate: these probes test the server's checks of the client.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the server did with a TLS client.
#[derive(Debug)]
enum Probe {
    /// Handshake done and the session stayed open and silent for [`OPEN_FOR`].
    Open,
    /// Handshake failed, or an alert / close came right after it.
    Refused(String),
}

/// A TLS 1.3 client session to `addr` for the Raft protocol (server certificate not
/// checked), with the socket.
fn tls_session(addr: SocketAddr, auth: ClientAuth) -> Result<(ClientConnection, TcpStream), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match auth {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).map_err(|e| format!("client cert: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    // The node's port routes by ALPN: offer Raft's, so a refusal is about the certificate.
    config.alpn_protocols = vec![b"shoal-raft/1".to_vec()];
    let name = ServerName::try_from("node.shoal").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| format!("TLS client: {e}"))?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    Ok((conn, sock))
}

/// Connects with `auth` and reports whether the server kept the session.
fn probe(addr: SocketAddr, auth: ClientAuth) -> Probe {
    let (mut conn, mut sock) = tls_session(addr, auth).unwrap_or_else(|e| panic!("{e}"));
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) => return Probe::Refused("closed during the handshake".into()),
            Ok(_) => {}
            Err(e) => return Probe::Refused(format!("handshake: {e}")),
        }
    }
    let _ = sock.set_read_timeout(Some(OPEN_FOR));
    let mut buf = [0u8; 64];
    match rustls::Stream::new(&mut conn, &mut sock).read(&mut buf) {
        Ok(0) => Probe::Refused("closed right after the handshake".into()),
        Ok(n) => panic!("the Raft port sent {n} bytes to a client that sent nothing"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Probe::Open,
        Err(e) => Probe::Refused(e.to_string()),
    }
}

fn assert_refused(what: &str, p: Probe) {
    match p {
        Probe::Refused(why) => println!("{what}: refused ({why})"),
        Probe::Open => panic!("{what}: the Raft port accepted the session"),
    }
}

/// A node's certificate and key from its data dir.
fn node_credentials(dir: &Path) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let cert = CertificateDer::from_pem_file(dir.join("node.crt")).unwrap_or_else(|e| panic!("{}/node.crt: {e}", dir.display()));
    let key = PrivateKeyDer::from_pem_file(dir.join("node.key")).unwrap_or_else(|e| panic!("{}/node.key: {e}", dir.display()));
    (cert, key)
}

/// The SAN a shoal node certificate carries for a key: `<first 16 bytes of SHA-256 of the
/// public key, hex>.node.shoal`.
fn node_name_for(key: &rcgen::KeyPair) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.node.shoal")
}

fn pkcs8(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A self-signed certificate with a well-formed node name.
fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let params = rcgen::CertificateParams::new(vec![node_name_for(&key)]).unwrap_or_else(|e| panic!("{e}"));
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    (cert.der().clone(), pkcs8(&key))
}

/// A node-shaped certificate (right SAN, client-auth usage) from a CA made here.
fn from_own_ca() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "shoal cluster CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut params = rcgen::CertificateParams::new(vec![node_name_for(&key)]).unwrap_or_else(|e| panic!("{e}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| panic!("{e}"));
    (cert.der().clone(), pkcs8(&key))
}

/// Sends `bytes` over plain TCP to `addr`, then closes.
fn send_plain(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    // The server may close first (it refuses garbage): a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Both);
}

/// Opens an accepted TLS session with `auth`, sends `bytes` inside it and reports whether
/// the server then closed the session within 5 s (`true`) or kept it open.
fn send_in_session(addr: SocketAddr, auth: ClientAuth, bytes: &[u8], then_close: bool) -> bool {
    let (mut conn, mut sock) = tls_session(addr, auth).unwrap_or_else(|e| panic!("{e}"));
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap_or_else(|e| panic!("handshake with a node's own certificate failed: {e}"));
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let _ = tls.write_all(bytes);
    let _ = tls.flush();
    if then_close {
        conn.send_close_notify();
        let _ = conn.complete_io(&mut sock);
        let _ = sock.shutdown(Shutdown::Both);
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match rustls::Stream::new(&mut conn, &mut sock).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // an answer frame: keep reading until the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Pseudo-random bytes (no rng dependency needed for garbage).
fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Three loopback nodes (`--no-mdns --join`), formed into one cluster with 3 voters.
fn three_voters(label: &str) -> (Cluster, Vec<u16>) {
    three_voters_with(label, |_| {})
}

/// [`three_voters`], with `prepare` run on the cluster before any node starts.
fn three_voters_with(label: &str, prepare: impl FnOnce(&Cluster)) -> (Cluster, Vec<u16>) {
    let ports = free_agent_ports(3);
    let token = token_new();
    let mut c = Cluster::new(label);
    for (i, port) in ports.iter().enumerate() {
        let seed = if i == 0 { ports[1] } else { ports[0] };
        c.add(NodeSpec {
            name: format!("n{}", i + 1),
            token: token.clone(),
            token_via: TokenVia::Flag,
            netns: None,
            args: vec![
                "--no-mdns".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--join".into(),
                format!("127.0.0.1:{seed}"),
                "--bootstrap-expect".into(),
                "3".into(),
            ],
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    prepare(&c);
    for i in 0..3 {
        c.node_mut(i).start();
    }
    c.wait_until(Duration::from_secs(60), "3 loopback nodes form one cluster with 3 voters", || {
        statuses(&c, &[0, 1, 2]).is_some_and(|all| every(&all, |s| in_cluster(s) && s.voters.len() == 3) && leader_of(&all).is_some())
    });
    (c, ports)
}

/// Issue 13's guard: a voter whose `raft.redb` was deleted (its certificate is still
/// there) refuses to start, saying why and how to recover, instead of rejoining the vote
/// with an empty log (before the guard, its RaftCore panicked on the leader's first append
/// and the process went on gossiping); the two other voters keep the cluster writable, and
/// the advice (`node rm`, move the data dir away, start) brings the machine back.
#[test]
fn a_node_whose_raft_store_is_lost_refuses_to_start_and_its_advice_brings_it_back() {
    let (mut c, _) = three_voters("lostlog");
    let id = c.node(1).self_id().unwrap_or_else(|e| panic!("{e}"));
    c.node_mut(1).kill();
    let store = c.node(1).data_dir.join("raft").join("raft.redb");
    std::fs::remove_file(&store).unwrap_or_else(|e| panic!("removing {}: {e}", store.display()));
    let exit = match c.node_mut(1).try_start() {
        Some(status) => status,
        None => c.node_mut(1).wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("n2 started without its Raft log\n{}", c.report())),
    };
    assert!(!exit.success(), "n2 exited with {exit}");
    let log = c.node(1).log_tail(20);
    for says in ["holds nothing: its Raft log is lost", "must not start with an empty log", &format!("shoal node rm {id}")] {
        assert!(log.contains(says), "n2's last words do not say {says:?}:\n{log}");
    }
    println!("n2 without raft.redb: exited ({exit}) saying: {}", log.lines().rev().find(|l| l.contains("Raft log is lost")).unwrap_or("").trim());
    assert!(agreed_leader(&c, &[0, 2]).is_some(), "n1 and n3 lost their leader\n{}", c.report());
    // The advice works: `node rm` the old id, move the data dir away, start again.
    let out = c.node(0).shoal(&["node", "rm", &id], shoal_tests::cluster::WRITE_CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "`shoal node rm {id}` failed ({}): {}\n{}", out.status, out.stderr.trim(), c.report());
    // The quorum guard: with n2 revoked, revoking n3 too would leave one voter of three.
    let n3 = c.node(2).self_id().unwrap_or_else(|e| panic!("{e}"));
    let out = c.node(0).shoal(&["node", "rm", &n3], shoal_tests::cluster::WRITE_CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "`node rm` of a second voter of three went through\n{}", c.report());
    println!("node rm of a second voter of three: {}", out.stderr.trim());
    let dir = c.node(1).data_dir.clone();
    std::fs::rename(&dir, dir.with_extension("lost")).unwrap_or_else(|e| panic!("moving {} away: {e}", dir.display()));
    c.node_mut(1).start();
    c.wait_until(Duration::from_secs(60), "n2 joins again as a new node", || {
        statuses(&c, &[0, 1, 2]).is_some_and(|all| every(&all, in_cluster) && all[1].node != id && leader_of(&all).is_some())
    });
    let new_id = c.node(1).self_id().unwrap_or_else(|e| panic!("{e}"));
    label_ok(&c, 0, &new_id, "after-lost-log", "ok");
}

/// Issue 13's `shoal recover`: three managers, two destroyed for good (killed, data dirs
/// gone), so no leader can be elected and nothing can be written. On the survivor, stopped:
/// `shoal recover` without `--yes` explains and changes nothing; with it, the survivor
/// becomes the only voter and the lost voters are revoked; once started it elects itself,
/// takes writes again and still holds what the cluster agreed before.
#[test]
fn two_of_three_managers_lost_the_survivor_recovers_and_takes_writes_again() {
    let (mut c, _) = three_voters("recover");
    let survivor = c.node(0).self_id().unwrap_or_else(|e| panic!("{e}"));
    label_ok(&c, 0, &survivor, "before", "kept");
    let lost: Vec<String> = [1, 2].iter().map(|&i| c.node(i).self_id().unwrap_or_else(|e| panic!("{e}"))).collect();
    for i in [1, 2] {
        c.node_mut(i).kill();
        let dir = c.node(i).data_dir.clone();
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("destroying {}: {e}", dir.display()));
    }
    // Without a quorum the survivor can write nothing.
    let stuck = c.node(0).shoal(&["node", "update", &survivor, "--label-add", "during=lost"], Duration::from_secs(10));
    assert!(!matches!(&stuck, Ok(out) if out.status.success()), "a write went through without a quorum\n{}", c.report());
    c.node_mut(0).kill();
    let dir = c.node(0).data_dir.clone();
    let recover = |yes: bool| {
        let mut cmd = std::process::Command::new(shoal_tests::shoal_bin());
        cmd.arg("recover").arg("--data-dir").arg(&dir);
        if yes {
            cmd.arg("--yes");
        }
        shoal_tests::run(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("shoal recover: {e}"))
    };
    let asked = recover(false);
    let said = asked.stderr.clone();
    assert!(!asked.status.success() && said.contains("--yes") && said.contains("only voter"), "without --yes: {said}");
    let done = recover(true);
    let report = done.stdout.clone();
    assert!(done.status.success(), "shoal recover --yes failed: {}", done.stderr);
    assert!(report.contains("now the only voter"), "{report}");
    for id in &lost {
        assert!(report.contains(&id[..8]), "the report does not name lost voter {id}: {report}");
    }
    println!("shoal recover: {}", report.lines().next().unwrap_or("").trim());
    let again = recover(true);
    assert!(!again.status.success(), "a second recovery went through");
    assert!(again.stderr.contains("already is the only voter"));
    let started = Instant::now();
    c.node_mut(0).start();
    c.wait_until(Duration::from_secs(60), "the survivor leads alone", || {
        statuses(&c, &[0]).is_some_and(|s| s[0].role == "leader" && s[0].voters.len() == 1 && s[0].voters[0].id == survivor)
    });
    label_ok(&c, 0, &survivor, "after", "recovered");
    println!("recovered survivor: leader and a write {:.1} s after its start", started.elapsed().as_secs_f64());
    let nodes = c.node(0).node_ls().unwrap_or_else(|e| panic!("{e}"));
    let me = nodes.iter().find(|n| n.id == survivor).unwrap_or_else(|| panic!("the survivor is not listed: {nodes:?}"));
    assert_eq!(me.labels.get("before").map(String::as_str), Some("kept"), "what was agreed before is kept: {me:?}");
    assert_eq!(me.labels.get("after").map(String::as_str), Some("recovered"));
    for id in &lost {
        assert!(nodes.iter().all(|n| &n.id != id || n.revoked), "lost voter {id} is not revoked: {nodes:?}");
    }
}

/// Issue 13's pinned tokens: `shoal token show` prints the cluster's token pinned to its CA
/// (`shoal2-<CA digest>-<secret>`); a node started with it joins; a node with the same
/// secret but another CA digest refuses every answer (it holds the secret, but is not that
/// cluster) and never founds a cluster of its own either.
#[test]
fn a_pinned_token_joins_its_cluster_and_a_wrong_pin_refuses_it() {
    let (mut c, ports) = three_voters("pinned");
    let token = c.node(0).shoal(&["token", "show", "--token", &token_of(&c)], Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(token.status.success(), "`shoal token show` failed: {}", token.stderr.trim());
    let pinned = token.stdout.trim().to_string();
    assert!(pinned.starts_with("shoal2-") && pinned.len() == 7 + 32 + 1 + 64, "not a pinned token: {} characters", pinned.len());
    // The same secret, another CA digest: flip the first digit of the pin.
    let flipped = if pinned.as_bytes()[7] == b'0' { '1' } else { '0' };
    let wrong = format!("shoal2-{flipped}{}", &pinned[8..]);
    let extra = free_agent_ports(2);
    for (name, token, port) in [("n4", &pinned, extra[0]), ("n5", &wrong, extra[1])] {
        c.add(NodeSpec {
            name: name.into(),
            token: token.clone(),
            token_via: TokenVia::Flag,
            netns: None,
            args: vec!["--no-mdns".into(), "--bind".into(), format!("127.0.0.1:{port}"), "--join".into(), format!("127.0.0.1:{}", ports[0])],
            expect_addr: format!("127.0.0.1:{port}"),
        });
    }
    c.node_mut(3).start();
    c.node_mut(4).start();
    c.wait_until(Duration::from_secs(60), "n4 (the pinned token) joins", || statuses(&c, &[3]).is_some_and(|s| in_cluster(&s[0])));
    c.wait_until(Duration::from_secs(30), "n5 (a wrong pin) refuses the cluster's answers", || c.node(4).log_tail(50).contains("refusing to join"));
    std::thread::sleep(Duration::from_secs(5));
    let n5 = statuses(&c, &[4]).unwrap_or_else(|| panic!("n5 stopped answering\n{}", c.report()));
    assert!(!in_cluster(&n5[0]), "n5 joined with a wrong pin\n{}", c.report());
    assert!(!c.node(4).data_dir.join("node.crt").exists(), "n5 kept a certificate");
    let line = c.node(4).log_tail(50).lines().rev().find(|l| l.contains("refusing to join")).unwrap_or("").trim().to_string();
    println!("a wrong pin: {line}");
}

/// The token the cluster's nodes were started with.
fn token_of(c: &Cluster) -> String {
    c.node(0).spec.token.clone()
}

/// A small tmpfs mounted on a directory for the life of the value (lazily unmounted).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self(dir.to_path_buf()))
    }

    /// Writes zeros into `dir` until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap_or_else(|e| panic!("{e}"));
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 13's guard: when Raft stops on its own (here a storage error: n2's disk fills up
/// under its Raft log), the agent says why and exits non-zero, so a supervisor restarts it,
/// instead of gossiping on as a member without Raft.
#[test]
fn a_node_whose_raft_stops_on_a_full_disk_exits_non_zero_saying_why() {
    if !shoal_tests::require_netns("a_node_whose_raft_stops_on_a_full_disk_exits_non_zero_saying_why") {
        return; // not root: cannot mount the small disk
    }
    let disk = std::cell::RefCell::new(None);
    let (mut c, _) = three_voters_with("fulldisk", |c| {
        *disk.borrow_mut() = Some(SmallDisk::mount(&c.node(1).data_dir, "16M").unwrap_or_else(|e| panic!("mounting a small disk: {e}")));
    });
    let disk = disk.into_inner().unwrap_or_else(|| panic!("no disk"));
    let id = c.node(1).self_id().unwrap_or_else(|e| panic!("{e}"));
    disk.fill();
    // Writes the cluster commits reach n2's log, which cannot grow.
    let mut exit = None;
    for k in 0..200 {
        if let Some(status) = c.node_mut(1).try_wait() {
            exit = Some(status);
            break;
        }
        let _ = c.node(0).shoal(&["node", "update", &id, "--label-add", &format!("fill={k}{}", "x".repeat(60))], Duration::from_secs(10));
    }
    let exit = exit.or_else(|| c.node_mut(1).wait_exit(Duration::from_secs(30))).unwrap_or_else(|| panic!("n2 kept running on a full disk\n{}", c.report()));
    assert!(!exit.success(), "n2 exited with {exit}");
    let log = c.node(1).log_tail(30);
    assert!(log.contains("Raft stopped on this node") && log.contains("exiting so that a supervisor restarts the agent"), "n2's last words:\n{log}");
    println!("n2 on a full disk: exited ({exit}) saying: {}", log.lines().rev().find(|l| l.contains("Raft stopped on this node")).unwrap_or("").trim());
    assert!(agreed_leader(&c, &[0, 2]).is_some(), "n1 and n3 lost their leader\n{}", c.report());
    drop(disk);
}

#[test]
fn raft_port_refuses_strangers_and_revoked_nodes_and_survives_garbage() {
    let began = Instant::now();
    let (mut c, ports) = three_voters("raftport");
    let all_idx = [0, 1, 2];
    println!("formed in {:.1?}", began.elapsed());
    // One port per node: Raft is the TCP side of the gossip port.
    let raft = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let ids: Vec<String> = statuses(&c, &all_idx).unwrap_or_default().into_iter().map(|s| s.node).collect();

    // --- who gets a session on n1's Raft port.
    let (dir2, dir3) = (c.node(1).data_dir.clone(), c.node(2).data_dir.clone());
    let n2 = || node_credentials(&dir2);
    let n3 = || node_credentials(&dir3);
    match probe(raft(0), Some(n2())) {
        Probe::Open => println!("n2's own certificate: accepted (control)"),
        Probe::Refused(why) => panic!("n1's Raft port refused n2's own certificate: {why}\n{}", c.report()),
    }
    assert_refused("no client certificate", probe(raft(0), None));
    assert_refused("self-signed certificate", probe(raft(0), Some(self_signed())));
    assert_refused("certificate from a self-made CA", probe(raft(0), Some(from_own_ca())));

    // --- garbage on the Raft port, then the cluster must be as it was.
    let before = statuses(&c, &all_idx).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let leader = leader_of(&before).unwrap_or_else(|| panic!("no agreed leader\n{}", c.report()));
    let target = before.iter().position(|s| s.node == leader).unwrap_or(0);
    let pid = c.node(target).pid().unwrap_or(0);
    let rss_before = rss_kib(pid);
    // Plain TCP: random bytes, a huge u32 length prefix, a TLS record header announcing a
    // hello that never comes in full, and silent connections held open meanwhile.
    let idle: Vec<TcpStream> = (0..20).filter_map(|_| TcpStream::connect(raft(target)).ok()).collect();
    send_plain(raft(target), &garbage(64 * 1024, 7));
    send_plain(raft(target), &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
    send_plain(raft(target), &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
    send_plain(raft(target), &[0x16, 0x03, 0x03, 0xff, 0xff]);
    // Inside a session the server accepts (n2's certificate): frames it must refuse.
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("a 4 GiB length prefix", vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], false),
        ("a length prefix just over any sane limit", (u32::MAX / 2).to_be_bytes().to_vec(), false),
        ("an undecodable 64-byte body", [&64u32.to_be_bytes()[..], &garbage(64, 3)].concat(), false),
        ("a truncated frame, then close", [&1000u32.to_be_bytes()[..], &garbage(10, 5)].concat(), true),
    ];
    for (what, bytes, close) in &cases {
        let closed = send_in_session(raft(target), Some(n2()), bytes, *close);
        assert!(closed, "the Raft port kept a session open after {what}");
        println!("in an accepted session, {what}: the server closed the session");
    }
    let rss_after = rss_kib(pid);
    println!("leader RSS {rss_before} KiB before the garbage, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the leader's memory grew from {rss_before} KiB to {rss_after} KiB on garbage frames"
    );
    // Healthy: same leader and term everywhere, a write commits, every agent still runs.
    let after = statuses(&c, &all_idx).unwrap_or_else(|| panic!("a node stopped answering after the garbage\n{}", c.report()));
    assert_eq!(leader_of(&after), Some(leader.clone()), "the leader changed after the garbage: {after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.term, b.term, "{}'s term changed after the garbage", a.name);
    }
    label_ok(&c, 2, &ids[1], "after-garbage", "ok");
    c.wait_until(Duration::from_secs(10), "every node has the write made after the garbage", || {
        every(all_idx, |i| sees_label(&c, i, &ids[1], "after-garbage", "ok"))
    });
    drop(idle);
    for i in 0..3 {
        assert!(c.node_mut(i).is_running(), "{} died", c.node(i).name());
    }

    // --- a revoked node's certificate is refused (n3: stopped, then `node rm` on n1).
    match probe(raft(1), Some(n3())) {
        Probe::Open => {}
        Probe::Refused(why) => panic!("n2's Raft port refused n3's certificate before any revocation: {why}\n{}", c.report()),
    }
    c.node_mut(2).kill();
    let out = c.node(0).shoal(&["node", "rm", &ids[2]], shoal_tests::cluster::WRITE_CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "`shoal node rm` failed ({}): {}\n{}", out.status, out.stderr.trim(), c.report());
    c.wait_until(Duration::from_secs(10), "n1 and n2 list n3 as revoked", || {
        statuses(&c, &[0, 1]).is_some_and(|all| every(&all, |s| s.revoked.contains(&ids[2])))
    });
    // The revoked set reaches TLS within one watch tick (500 ms); poll with a deadline.
    let mut last = Probe::Open;
    c.wait_until(Duration::from_secs(10), "n1's and n2's Raft ports refuse n3's certificate", || {
        last = probe(raft(0), Some(n3()));
        matches!(last, Probe::Refused(_)) && matches!(probe(raft(1), Some(n3())), Probe::Refused(_))
    });
    assert_refused("revoked n3's own certificate", last);
    // Still fine with the 2 remaining voters.
    assert!(agreed_leader(&c, &[0, 1]).is_some(), "no agreed leader after the revocation\n{}", c.report());
    label_ok(&c, 1, &ids[0], "after-revoke", "ok");
    println!("raft port story done in {:.1?}", began.elapsed());
}
