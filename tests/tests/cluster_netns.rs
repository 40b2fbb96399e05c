//! The Raft cluster over real processes in network namespaces, discovering each other with
//! mDNS only (no --join between members), started at once with `--bootstrap-expect 3`:
//!
//! - 3 nodes (+ an outsider with another token that points --join at node 1): exactly one
//!   cluster, 3 voters, certificates of one CA (signatures checked here with x509-parser);
//!   SIGKILL of the leader → a new leader, writes continue, the old leader comes back as a
//!   follower with the write; a voter cut off the bridge → the majority keeps writing, the
//!   cut-off node cannot, and after healing it has every write, with the same leader and
//!   term as before (Pre-Vote: its timeouts did not raise its term); the outsider never gets a
//!   certificate nor appears in `node ls`.
//! - 5 nodes: 3 managers and 2 workers; a worker is revoked (`node rm`); SIGTERM of every
//!   node and a restart keep the cluster id, the CA, the node set and the revocation, and a
//!   leader is elected again.
//!
//! Needs root; fails unless SHOAL_SKIP_NETNS=1 says to skip.

use shoal_tests::cluster::{agreed_leader, in_cluster, index_of, label, label_ok, leader_of, sees_label, statuses};
use shoal_tests::{every, require_netns, token_new, Cluster, Lab, NodeSpec, Status, TokenVia};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Nodes in lab hosts 0..members with the same token and `--bootstrap-expect 3`; with
/// `outsider`, one more host runs a node with another token that joins through node 1.
fn lab_cluster(label: &str, members: usize, outsider: bool) -> Cluster {
    let lab = Lab::new(members + usize::from(outsider)).unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}"));
    let hosts = lab.hosts.clone();
    let mut c = Cluster::in_lab(label, lab);
    let token = token_new();
    let other = token_new();
    for (i, host) in hosts.iter().enumerate() {
        let foreign = i == members;
        // Default bind 0.0.0.0:7480: Raft on 7481, joins on 7482, on the veth address.
        let mut args = vec!["--mdns-interface".to_string(), host.ifname.clone(), "--bootstrap-expect".into(), "3".into()];
        if foreign {
            args.extend(["--join".to_string(), format!("{}:7480", hosts[0].ip)]);
        }
        c.add(NodeSpec {
            name: if foreign { "x".to_string() } else { format!("n{}", i + 1) },
            token: if foreign { other.clone() } else { token.clone() },
            token_via: TokenVia::Flag,
            netns: Some(host.ns.clone()),
            args,
            expect_addr: format!("{}:7480", host.ip),
        });
    }
    c
}

/// Waits until every node of `idx` is in the cluster with `voters` voters and `learners`
/// learners and all name one leader; returns their statuses and how long it took.
fn wait_formed(c: &Cluster, idx: &[usize], voters: usize, learners: usize) -> (Vec<Status>, Duration) {
    let what = format!("{} nodes form one cluster with {voters} voters, {learners} learners and one leader", idx.len());
    let took = c.wait_until(FORM_TIMEOUT, &what, || {
        statuses(c, idx).is_some_and(|all| {
            every(&all, |s| in_cluster(s) && s.voters.len() == voters && s.learners.len() == learners) && leader_of(&all).is_some()
        })
    });
    (statuses(c, idx).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report())), took)
}

/// One cluster: same cluster id, CA and leader everywhere; one leader, `managers` managers
/// and the rest workers; the voter and learner sets agree.
fn assert_one_cluster(c: &Cluster, all: &[Status], managers: usize) {
    let show = || all.iter().map(|s| format!("\n  {}", s.short())).collect::<String>();
    let first = &all[0];
    for s in all {
        assert_eq!(s.cluster_id, first.cluster_id, "cluster ids differ:{}", show());
        assert!(s.ca_fingerprint.is_some(), "{} has no CA:{}", s.name, show());
        assert_eq!(s.ca_fingerprint, first.ca_fingerprint, "CA fingerprints differ (two clusters formed?):{}", show());
        assert_eq!(s.leader, first.leader, "nodes name different leaders:{}", show());
        let ids = |rows: &[shoal_tests::PeerRow]| rows.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>();
        assert_eq!(ids(&s.voters), ids(&first.voters), "voter sets differ:{}", show());
        assert_eq!(ids(&s.learners), ids(&first.learners), "learner sets differ:{}", show());
        assert!(s.cert_expires_unix.is_some(), "{} reports no certificate:{}", s.name, show());
    }
    let count = |role: &str| all.iter().filter(|s| s.role == role).count();
    assert_eq!(count("leader"), 1, "expected exactly one leader:{}", show());
    assert_eq!(count("manager"), managers, "expected {managers} managers:{}", show());
    assert_eq!(count("worker"), all.len() - 1 - managers, "expected the others to be workers:{}", show());
    let leader = first.leader.as_deref().unwrap_or_else(|| panic!("no leader:{}", show()));
    assert!(first.voters.iter().any(|v| v.id == leader), "the leader is not a voter:{}", show());
    let _ = c;
}

/// Every node's `node.crt` is signed by the CA in its `ca.crt` (checked here, independently
/// of shoal), names the node's id in its SAN, and every `ca.crt` is the same certificate,
/// whose SHA-256 is the `ca_fingerprint` the nodes report.
fn assert_certificates(c: &Cluster, idx: &[usize], all: &[Status]) {
    use sha2::Digest;
    use x509_parser::prelude::*;
    let read_pem = |path: &Path| -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap_or_else(|e| panic!("{} is not PEM: {e}", path.display()));
        assert_eq!(pem.label, "CERTIFICATE", "{} holds a {}", path.display(), pem.label);
        pem.contents
    };
    let mut cas = BTreeSet::new();
    for (&i, s) in idx.iter().zip(all) {
        let dir = &c.node(i).data_dir;
        let ca_der = read_pem(&dir.join("ca.crt"));
        let crt_der = read_pem(&dir.join("node.crt"));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap_or_else(|e| panic!("{}/ca.crt: {e}", dir.display()));
        let (_, crt) = X509Certificate::from_der(&crt_der).unwrap_or_else(|e| panic!("{}/node.crt: {e}", dir.display()));
        assert!(ca.is_ca(), "{}/ca.crt is not a CA certificate", dir.display());
        assert_eq!(crt.issuer(), ca.subject(), "{}: node.crt's issuer is not ca.crt's subject", s.name);
        crt.verify_signature(Some(ca.public_key()))
            .unwrap_or_else(|e| panic!("{}: node.crt is not signed by the key of ca.crt: {e}", s.name));
        assert!(crt.validity().is_valid(), "{}: node.crt is not valid now: {:?}", s.name, crt.validity());
        let want = format!("{}.node.shoal", s.node);
        let sans: Vec<String> = crt
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.iter().map(|n| format!("{n}")).collect())
            .unwrap_or_default();
        assert!(sans.iter().any(|n| n.contains(&want)), "{}: node.crt's SANs {sans:?} do not name {want}", s.name);
        let fingerprint: String = sha2::Sha256::digest(&ca_der).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s.ca_fingerprint.as_deref(), Some(fingerprint.as_str()), "{}: status's ca_fingerprint is not ca.crt's", s.name);
        cas.insert(ca_der);
    }
    assert_eq!(cas.len(), 1, "the nodes hold {} different ca.crt files", cas.len());
}

/// The ids in node `i`'s `node ls` that are not revoked. (A revoked node is listed, marked
/// revoked, only while gossip still remembers it: after a full restart it is gone from the
/// list, and only `status`'s `revoked` names it.)
fn node_set(c: &Cluster, i: usize) -> BTreeSet<String> {
    let rows = c.node(i).node_ls().unwrap_or_else(|e| panic!("node ls on {}: {e}", c.node(i).name()));
    rows.into_iter().filter(|r| !r.revoked).map(|r| r.id).collect()
}

#[test]
fn three_nodes_form_one_cluster_survive_leader_crash_and_partition_and_shut_out_a_wrong_token() {
    if !require_netns("cluster_netns") {
        return;
    }
    let began = Instant::now();
    let mut c = lab_cluster("raft3", 3, true);
    let members = [0, 1, 2];
    let outsider = 3;
    for i in 0..4 {
        c.node_mut(i).start();
    }

    // --- one cluster forms, with one CA.
    let (all, formed) = wait_formed(&c, &members, 3, 0);
    println!("3 nodes formed one cluster in {formed:.1?}");
    assert_one_cluster(&c, &all, 2);
    assert_certificates(&c, &members, &all);
    let ids: Vec<String> = all.iter().map(|s| s.node.clone()).collect();

    // --- SIGKILL of the leader: the survivors elect another, writes continue.
    let old_id = all[0].leader.clone().unwrap_or_default();
    let old = index_of(&all, &members, &old_id).unwrap_or_else(|| panic!("the leader {old_id} is not one of the nodes\n{}", c.report()));
    let term_before = all[0].term;
    let survivors: Vec<usize> = members.iter().copied().filter(|&i| i != old).collect();
    let killed = Instant::now();
    c.node_mut(old).kill();
    let mut new_id = String::new();
    c.wait_until(ELECTION_TIMEOUT, "the survivors agree on a new leader", || {
        agreed_leader(&c, &survivors).is_some_and(|l| {
            new_id = l.clone();
            l != old_id
        })
    });
    println!("new leader {:.12} elected {:.1?} after SIGKILL of {}", new_id, killed.elapsed(), c.node(old).name());
    let now = statuses(&c, &survivors).unwrap_or_default();
    assert!(now.iter().all(|s| s.term > term_before), "the term did not grow with the new leader: {now:?}");
    // Through the survivor that does not lead, so the write is forwarded.
    let follower = survivors.iter().copied().find(|&i| ids[i] != new_id).unwrap_or(survivors[0]);
    label_ok(&c, follower, &old_id, "failover", "1");
    let after_write = statuses(&c, &survivors)
        .and_then(|all| all.iter().filter_map(|s| s.applied_index).max())
        .unwrap_or_else(|| panic!("no applied index after the write\n{}", c.report()));

    // --- the old leader comes back as a follower and gets the write.
    c.node_mut(old).start();
    c.wait_until(CATCH_UP_TIMEOUT, "the restarted old leader follows the new one and has the write", || {
        c.node(old).status().is_ok_and(|s| {
            s.role == "manager" && s.leader.as_deref() == Some(new_id.as_str()) && s.applied_index.is_some_and(|a| a >= after_write)
        }) && sees_label(&c, old, &old_id, "failover", "1")
    });

    // --- a voter (not the leader) is cut off: the majority writes, the cut-off node cannot.
    let now = statuses(&c, &members).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let leader_id = leader_of(&now).unwrap_or_else(|| panic!("no agreed leader before the partition\n{}", c.report()));
    let leader = index_of(&now, &members, &leader_id).unwrap_or(0);
    let cut = members.iter().copied().find(|&i| i != leader).unwrap_or(0);
    let other = members.iter().copied().find(|&i| i != leader && i != cut).unwrap_or(0);
    c.lab().map(|lab| lab.isolate(cut)).unwrap_or(Ok(())).unwrap_or_else(|e| panic!("cannot isolate {}: {e}", c.node(cut).name()));
    println!("isolated {} (leader is {})", c.node(cut).name(), c.node(leader).name());
    label_ok(&c, leader, &ids[cut], "partition", "majority-via-leader");
    label_ok(&c, other, &ids[other], "partition", "majority-via-follower");
    // Only the exit status is asserted. Today the CLI says "the agent closed the connection
    // without answering": the API's 10 s request timeout fires before the write's own 10 s
    // "no leader could be reached" error can be sent (reported; the message is not checked).
    let t = Instant::now();
    let out = label(&c, cut, &ids[cut], "minority", "1");
    println!("the write on the cut-off node failed after {:.1?}: {}", t.elapsed(), out.stderr.trim());
    assert!(!out.status.success(), "a write on the cut-off node {} succeeded: {}\n{}", c.node(cut).name(), out.stdout, c.report());
    assert!(
        !sees_label(&c, cut, &ids[cut], "partition", "majority-via-leader"),
        "the cut-off node saw a write of the majority while cut off: is the partition real?\n{}",
        c.report()
    );

    // --- healed: every node has the same log position and the majority's writes.
    c.lab().map(|lab| lab.heal(cut)).unwrap_or(Ok(())).unwrap_or_else(|e| panic!("cannot heal {}: {e}", c.node(cut).name()));
    let healed = Instant::now();
    c.wait_until(CATCH_UP_TIMEOUT, "after healing, all report the same last_applied and the cut-off node has the majority's writes", || {
        let Some(all) = statuses(&c, &members) else { return false };
        let same = all[0].last_applied.is_some() && all.iter().all(|s| s.last_applied == all[0].last_applied);
        same && leader_of(&all).is_some()
            && sees_label(&c, cut, &ids[cut], "partition", "majority-via-leader")
            && sees_label(&c, cut, &ids[other], "partition", "majority-via-follower")
    });
    println!("caught up {:.1?} after healing", healed.elapsed());
    // Pre-Vote: the cut-off follower's election timeouts did not raise its term, so its
    // return did not unseat the healthy leader (no failover the cluster did not need).
    let after = statuses(&c, &members).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let terms: Vec<u64> = after.iter().map(|s| s.term).collect();
    println!("term before the partition {}, after healing {terms:?}", now[leader].term);
    assert_eq!(leader_of(&after).as_deref(), Some(leader_id.as_str()), "the returning follower unseated the leader\n{}", c.report());
    assert!(terms.iter().all(|t| *t == now[leader].term), "terms moved from {} to {terms:?}: the cut-off node's elections leaked\n{}", now[leader].term, c.report());
    if sees_label(&c, leader, &ids[cut], "minority", "1") {
        // A write reported as failed may still commit later (its forward was in flight):
        // clients must treat a timeout as "unknown", not "not done".
        println!("note: the write that failed on the cut-off node was applied after healing");
    }

    // --- the outsider with another token: no certificate, not a member anywhere.
    let x = c.node(outsider).status().unwrap_or_else(|e| panic!("the outsider does not answer: {e}\n{}", c.report()));
    assert!(
        matches!(x.role.as_str(), "bootstrapping" | "joining"),
        "the node with the wrong token has role {}: {}\n{}",
        x.role,
        x.short(),
        c.report()
    );
    assert_ne!(x.cluster_id, all[0].cluster_id, "another token gave the same cluster id");
    for f in ["node.crt", "ca.crt"] {
        let p = c.node(outsider).data_dir.join(f);
        assert!(!p.exists(), "the node with the wrong token has {}", p.display());
    }
    for &i in &members {
        let rows = c.node(i).node_ls().unwrap_or_else(|e| panic!("node ls on {}: {e}", c.node(i).name()));
        assert!(!rows.iter().any(|r| r.id == x.node), "{} lists the node with the wrong token: {rows:?}", c.node(i).name());
        let ours: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ours, ids.iter().map(String::as_str).collect(), "{}'s node ls is not the 3 members", c.node(i).name());
    }
    println!("3-node story done in {:.1?}", began.elapsed());
}

#[test]
fn five_nodes_get_three_managers_two_workers_and_keep_everything_across_a_full_restart() {
    if !require_netns("cluster_netns") {
        return;
    }
    let began = Instant::now();
    let mut c = lab_cluster("raft5", 5, false);
    let all_idx: Vec<usize> = (0..5).collect();
    for &i in &all_idx {
        c.node_mut(i).start();
    }
    let (all, formed) = wait_formed(&c, &all_idx, 3, 2);
    println!("5 nodes with --bootstrap-expect 3 formed one cluster in {formed:.1?}");
    assert_one_cluster(&c, &all, 2);
    assert_certificates(&c, &all_idx, &all);

    // --- revoke a worker (stopped first, as an operator would after losing the machine).
    let worker = all.iter().position(|s| s.role == "worker").unwrap_or_else(|| panic!("no worker\n{}", c.report()));
    let worker_id = all[worker].node.clone();
    let leader = index_of(&all, &all_idx, &all[0].leader.clone().unwrap_or_default()).unwrap_or(0);
    c.node_mut(worker).kill();
    let rest: Vec<usize> = all_idx.iter().copied().filter(|&i| i != worker).collect();
    let via = rest.iter().copied().find(|&i| i != leader && all[i].role == "manager").unwrap_or(leader);
    // The other worker may not make a manager's writes (issue 13): its `node rm` and
    // `service create` are refused by the leader, saying why and where to run them.
    let other_worker = rest.iter().copied().find(|&i| all[i].role == "worker").unwrap_or_else(|| panic!("no second worker\n{}", c.report()));
    for (what, args) in [
        ("node rm of a manager", vec!["node", "rm", &all[leader].node[..8]]),
        ("service create", vec!["service", "create", "--detach", "refused", "busybox:1"]),
    ] {
        let out = c.node(other_worker).shoal(&args, shoal_tests::cluster::WRITE_CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success(), "a worker's {what} went through: {}\n{}", out.stdout.trim(), c.report());
        assert!(out.stderr.contains("is a worker") && out.stderr.contains("must come from a manager"), "a worker's {what}: {}", out.stderr.trim());
        println!("a worker's {what}: refused: {}", out.stderr.trim().lines().last().unwrap_or(""));
    }
    let out = c.node(via).shoal(&["node", "rm", &worker_id[..8]], shoal_tests::cluster::WRITE_CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "`shoal node rm` failed ({}): {}\n{}", out.status, out.stderr.trim(), c.report());
    c.wait_until(Duration::from_secs(20), "every node lists the worker as revoked and it left Raft", || {
        statuses(&c, &rest).is_some_and(|all| {
            every(&all, |s| s.revoked == [worker_id.clone()] && s.voters.len() == 3 && s.learners.len() == 1 && !s.learners.iter().any(|l| l.id == worker_id))
        }) && every(&rest, |&i| c.node(i).node_ls().is_ok_and(|rows| rows.iter().any(|r| r.id == worker_id && r.revoked)))
    });

    // --- SIGTERM every node, then start them again.
    let before = statuses(&c, &rest).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    let nodes_before = node_set(&c, rest[0]);
    for &i in &rest {
        c.node(i).signal("TERM");
    }
    for &i in &rest {
        let status = c.node_mut(i).wait_exit(Duration::from_secs(15));
        let status = status.unwrap_or_else(|| panic!("{} did not exit within 15 s of SIGTERM\n{}", c.node(i).name(), c.report()));
        assert!(status.success(), "{} exited with {status} after SIGTERM\n{}", c.node(i).name(), c.report());
    }
    let restarted = Instant::now();
    for &i in &rest {
        c.node_mut(i).start();
    }
    c.wait_until(FORM_TIMEOUT, "after the full restart, all 4 agree on a leader", || {
        statuses(&c, &rest).is_some_and(|all| every(&all, in_cluster) && leader_of(&all).is_some())
    });
    println!("leader elected {:.1?} after restarting every node", restarted.elapsed());
    let after = statuses(&c, &rest).unwrap_or_else(|| panic!("a node stopped answering\n{}", c.report()));
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.node, b.node, "a node changed its id across the restart");
        assert_eq!(a.cluster_id, b.cluster_id, "{}: cluster id changed across the restart", a.name);
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint, "{}: CA changed across the restart", a.name);
        assert_eq!(a.revoked, b.revoked, "{}: revoked list changed across the restart", a.name);
        assert_eq!(a.nodes_registered, b.nodes_registered, "{}: registered node count changed across the restart", a.name);
        assert!(a.applied_index >= b.applied_index, "{}: applied index went back: {:?} → {:?}", a.name, b.applied_index, a.applied_index);
    }
    for &i in &rest {
        assert_eq!(node_set(&c, i), nodes_before, "{}'s node set changed across the restart", c.node(i).name());
    }
    // And the restarted cluster takes writes.
    let manager = rest.iter().zip(&after).find(|(_, a)| a.role == "manager" || a.role == "leader").map_or(rest[0], |(i, _)| *i);
    label_ok(&c, manager, &after[0].node, "restarted", "yes");
    println!("5-node story done in {:.1?}", began.elapsed());
}
