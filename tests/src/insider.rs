//! An insider: a process that holds the join token but is not the node it speaks for. It
//! seals datagrams with the cluster's gossip key (so they open) and signs them with a key of
//! its own (it does not have the victim's), using the forgeries of `shoal_discovery::testing`:
//! the victim's leave at generation `u32::MAX`, its facts at `seq: u64::MAX` saying its
//! engine is down and it moved, each also with the victim's public key borrowed.

use crate::Cluster;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Where the forgeries come from: this process on loopback, or a lab host's namespace.
pub enum From {
    Loopback,
    Netns(String),
}

/// Sends node `to` (an index of `c`) the forgeries about node `victim`, from `from`.
/// Returns how many datagrams were sent.
pub fn send_forgeries(c: &Cluster, to: usize, victim: usize, from: From) -> usize {
    let node_id = |i: usize| {
        let id = c.node(i).self_id().unwrap_or_else(|e| panic!("id of {}: {e}", c.node(i).name()));
        shoal_wire::NodeId::parse(&id).unwrap_or_else(|| panic!("bad node id {id}"))
    };
    let (to_id, victim_id) = (node_id(to), node_id(victim));
    // The victim's public key is no secret (its certificate shows it); its private key stays put.
    let pem = std::fs::read_to_string(c.node(victim).data_dir.join("node.key")).unwrap_or_else(|e| panic!("the victim's key file: {e}"));
    let victim_key = rcgen::KeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("the victim's key: {e}")).public_key_raw().to_vec();
    let sys = ring::rand::SystemRandom::new();
    let own = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &sys).expect("a key");
    let forger = shoal_discovery::P256Signatures::from_pkcs8(own.as_ref()).expect("the forger's key");
    let gossip_key = shoal_discovery::JoinSecret::parse(&c.node(to).spec.token).expect("the members' token").gossip_key();
    let victim_addr: SocketAddr = c.node(victim).spec.expect_addr.parse().expect("victim address");
    let victim_facts = shoal_discovery::testing::facts(victim_id, victim_addr, 0);
    let moved_to = SocketAddr::new(victim_addr.ip(), 9);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let mut rng = shoal_discovery::testing::rng(now_ms);
    let packets = shoal_discovery::testing::forgeries(gossip_key, now_ms, &mut rng, to_id, &forger, &victim_facts, &victim_key, moved_to);
    let target = &c.node(to).spec.expect_addr;
    match from {
        From::Loopback => {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
            for p in &packets {
                socket.send_to(p, target).expect("send");
            }
        }
        From::Netns(ns) => {
            // One `cat` of a file is one write, so one datagram (bash's /dev/udp).
            let (ip, port) = target.rsplit_once(':').expect("ip:port");
            for (i, p) in packets.iter().enumerate() {
                let file = c.dir().join(format!("forgery-{i}"));
                std::fs::write(&file, p).expect("write forgery");
                let out = crate::run(
                    Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{ns}"))
                        .args(["bash", "-c", &format!("cat {} > /dev/udp/{ip}/{port}", file.display())]),
                    Duration::from_secs(10),
                )
                .unwrap_or_else(|e| panic!("sending from {ns}: {e}"));
                assert!(out.status.success(), "sending from {ns}: {}", out.stderr);
            }
        }
    }
    packets.len()
}
