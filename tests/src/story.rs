//! The membership scenario shared by the namespace and the loopback tests: formation, crash,
//! graceful leave, restart, a node with another secret that must stay outside, and an
//! insider with the token whose forged leave and facts about another node are refused.

use crate::{every, Cluster, Member};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Bounds of the scenario. Generous, but every one is asserted.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Start of the agents to every node seeing all 5 alive.
    pub formation: Duration,
    /// Formation to every node knowing every node's name, labels and version.
    pub facts: Duration,
    /// SIGKILL to every other node showing the victim `down`.
    pub down: Duration,
    /// SIGTERM to every other node showing the leaver `left`: well under failure detection.
    pub left: Duration,
    /// SIGTERM to the process having exited.
    pub exit: Duration,
    /// Restart to the node being `alive` again everywhere.
    pub rejoin: Duration,
    /// Formation to the first node counting the foreign node's packets or hints.
    pub foreign_seen: Duration,
}

pub const TIMEOUTS: Timeouts = Timeouts {
    formation: Duration::from_secs(30),
    facts: Duration::from_secs(10),
    down: Duration::from_secs(20),
    left: Duration::from_secs(3),
    exit: Duration::from_secs(10),
    rejoin: Duration::from_secs(30),
    foreign_seen: Duration::from_secs(10),
};

/// Indexes of the nodes that share the secret; node [`FOREIGN`] has another one.
pub const MEMBERS: [usize; 5] = [0, 1, 2, 3, 4];
pub const FOREIGN: usize = 5;
/// The node that is SIGKILLed and later restarted.
pub const CRASHED: usize = 4;
/// The node that leaves with SIGTERM.
pub const LEAVER: usize = 3;

/// How long each phase took.
#[derive(Debug, Clone)]
pub struct StoryTimes {
    pub formation: Duration,
    pub down: Duration,
    pub left: Duration,
    pub rejoin: Duration,
}

/// `--label k=v` pairs of a node's arguments.
fn expected_labels(args: &[String]) -> BTreeMap<String, String> {
    args.windows(2)
        .filter(|w| w[0] == "--label")
        .filter_map(|w| w[1].split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

fn find<'a>(view: &'a [Member], id: &str) -> Option<&'a Member> {
    view.iter().find(|m| m.id == id)
}

fn state_of<'a>(view: &'a [Member], id: &str) -> Option<&'a str> {
    find(view, id).map(|m| m.state.as_str())
}

/// Node `i`'s view, or `None` if `shoal members` failed. Panics at once if the foreign node
/// shows up in it: that must never happen.
fn view(c: &Cluster, i: usize, foreign: &str) -> Option<Vec<Member>> {
    let v = c.node(i).members().ok()?;
    if let Some(m) = find(&v, foreign) {
        panic!(
            "{} lists the node with the other secret ({}): a node without the join secret got in\n{}",
            c.node(i).name(),
            m.short(),
            c.report()
        );
    }
    Some(v)
}

/// Every node in `observers` sees exactly `ids` (no more, no fewer) and all of them alive.
fn all_see_alive(c: &Cluster, observers: &[usize], ids: &BTreeSet<String>, foreign: &str) -> bool {
    every(observers, |&i| {
        view(c, i, foreign).is_some_and(|v| {
            v.iter().map(|m| m.id.clone()).collect::<BTreeSet<_>>() == *ids && v.iter().all(|m| m.state == "alive")
        })
    })
}

/// Runs the scenario on a cluster of six added, not yet started nodes: 0–4 share one secret,
/// 5 has another and is pointed at node 0 (`--join`) so that it actively sends to it.
pub fn membership_story(c: &mut Cluster) -> StoryTimes {
    let t = TIMEOUTS;
    assert_eq!(c.nodes.len(), 6, "the story needs 6 nodes");

    // The outsider starts first, so it is there for the whole story.
    c.node_mut(FOREIGN).start();
    let started = Instant::now();
    for i in MEMBERS {
        c.node_mut(i).start();
    }

    let mut ids = vec![String::new(); 6];
    c.wait_until(t.formation, "every agent answers `shoal members` with exactly one is_self row", || {
        every(0..6, |i| match c.node(i).self_id() {
            Ok(id) => {
                ids[i] = id;
                true
            }
            Err(_) => false,
        })
    });
    for (i, id) in ids.iter().enumerate() {
        assert!(is_hex_id(id), "{}: id {id:?} is not 32 hex digits", c.node(i).name());
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 6, "node ids are not distinct: {ids:?}");
    let foreign = ids[FOREIGN].clone();
    let five: BTreeSet<String> = MEMBERS.iter().map(|&i| ids[i].clone()).collect();

    // Formation: everybody sees everybody (and nobody else) alive.
    c.wait_until(t.formation.saturating_sub(started.elapsed()), "all 5 nodes see the same 5 members alive", || {
        all_see_alive(c, &MEMBERS, &five, &foreign)
    });
    let formation = started.elapsed();
    println!("formation: all 5 see 5 alive {formation:.2?} after start");

    // Identity and facts: addresses from the start, names/labels/version once gossiped.
    let addr_of: BTreeMap<&str, &str> = MEMBERS.iter().map(|&i| (ids[i].as_str(), c.node(i).spec.expect_addr.as_str())).collect();
    c.wait_until(t.facts, "every node knows every member's address, name, labels and version", || {
        every(&MEMBERS, |&i| {
            view(c, i, &foreign).is_some_and(|v| {
                MEMBERS.iter().all(|&j| {
                    let spec = &c.node(j).spec;
                    find(&v, &ids[j]).is_some_and(|m| {
                        m.addr == spec.expect_addr
                            && m.name.as_deref() == Some(spec.name.as_str())
                            && m.labels == expected_labels(&spec.args)
                            && m.version.as_deref().is_some_and(|v| !v.is_empty())
                            && m.is_self == (i == j)
                    })
                })
            })
        })
    });
    for &i in &MEMBERS {
        let v = c.node(i).members().unwrap_or_else(|e| panic!("{}: {e}", c.node(i).name()));
        for m in &v {
            assert_eq!(Some(&m.addr.as_str()), addr_of.get(m.id.as_str()), "{}: wrong address for {}", c.node(i).name(), m.short());
        }
    }

    // The outsider: its packets reach node 0 and are refused; it sees only itself.
    c.wait_until(t.foreign_seen, "node 0 counts forged packets or foreign-cluster hints from the outsider", || {
        c.node(0).stats().is_ok_and(|s| s.dropped_forged > 0 || s.foreign_cluster_hints > 0)
    });
    let s0 = c.node(0).stats().unwrap_or_else(|e| panic!("stats of node 0: {e}"));
    println!(
        "outsider: node 0 dropped_forged={} foreign_cluster_hints={} (packets_in={} bytes_out={})",
        s0.dropped_forged, s0.foreign_cluster_hints, s0.packets_in, s0.bytes_out
    );
    let fv = c.node(FOREIGN).members().unwrap_or_else(|e| panic!("members of the outsider: {e}"));
    assert!(
        fv.len() == 1 && fv[0].is_self && fv[0].id == foreign,
        "the outsider must see only itself, sees: {:#?}",
        fv
    );
    assert!(all_see_alive(c, &MEMBERS, &five, &foreign), "views changed after the outsider's packets\n{}", c.report());

    // An insider (holds the token, is not node 1) forges node 1's leave and facts to node 0,
    // from the outsider's machine in the lab (this process on loopback): node 0 opens them,
    // refuses each for its signature, and nobody's view of node 1 changes.
    let before = c.node(0).members().ok().and_then(|v| find(&v, &ids[1]).cloned()).unwrap_or_else(|| panic!("node 0 lists node 1"));
    let bad_before = c.node(0).stats().unwrap_or_else(|e| panic!("stats of node 0: {e}")).dropped_bad_signature;
    let from = match c.node(FOREIGN).spec.netns.clone() {
        Some(ns) => crate::insider::From::Netns(ns),
        None => crate::insider::From::Loopback,
    };
    let sent = crate::insider::send_forgeries(c, 0, 1, from) as u64;
    c.wait_until(t.facts, "node 0 refuses the insider's forgeries for their signature", || {
        c.node(0).stats().is_ok_and(|s| s.dropped_bad_signature >= bad_before + sent)
    });
    std::thread::sleep(Duration::from_secs(2)); // a few gossip rounds
    assert!(all_see_alive(c, &MEMBERS, &five, &foreign), "a forged leave changed a view\n{}", c.report());
    for &i in &MEMBERS {
        let v = view(c, i, &foreign).unwrap_or_else(|| panic!("members of {}", c.node(i).name()));
        let m = find(&v, &ids[1]).unwrap_or_else(|| panic!("{} lists node 1", c.node(i).name()));
        assert_eq!((m.incarnation, &m.addr, &m.signed_addr), (before.incarnation, &before.addr, &before.signed_addr), "{}: forged gossip moved node 1: {}", c.node(i).name(), m.short());
        assert_eq!(m.signed_addr.as_deref(), Some(c.node(1).spec.expect_addr.as_str()), "{}: node 1's signed address", c.node(i).name());
    }
    println!("insider: node 0 refused {sent} forged leaves and facts about node 1 for their signature");

    // Crash: SIGKILL one node; the others find it down.
    let old_incarnation = c
        .node(CRASHED)
        .members()
        .ok()
        .and_then(|v| find(&v, &ids[CRASHED]).map(|m| m.incarnation))
        .unwrap_or_else(|| panic!("no self row for {}", c.node(CRASHED).name()));
    let killed_at = Instant::now();
    c.node_mut(CRASHED).kill();
    let survivors: Vec<usize> = MEMBERS.iter().copied().filter(|&i| i != CRASHED).collect();
    let crashed_name = c.node(CRASHED).name().to_string();
    c.wait_until(t.down, &format!("the 4 others show {crashed_name} down"), || {
        every(&survivors, |&i| view(c, i, &foreign).is_some_and(|v| state_of(&v, &ids[CRASHED]) == Some("down")))
    });
    let down = killed_at.elapsed();
    println!("crash: {crashed_name} seen down by the 4 others {down:.2?} after SIGKILL");
    let four: BTreeSet<String> = survivors.iter().map(|&i| ids[i].clone()).collect();
    for &i in &survivors {
        let v = view(c, i, &foreign).unwrap_or_else(|| panic!("members of {}", c.node(i).name()));
        for m in v.iter().filter(|m| four.contains(&m.id)) {
            assert_eq!(m.state, "alive", "{} sees a live node as {}\n{}", c.node(i).name(), m.short(), c.report());
        }
    }

    // Graceful leave: SIGTERM; the rest show it left at once, and it exits 0.
    let leaver_name = c.node(LEAVER).name().to_string();
    let remaining: Vec<usize> = survivors.iter().copied().filter(|&i| i != LEAVER).collect();
    let termed_at = Instant::now();
    c.node(LEAVER).signal("TERM");
    c.wait_until(t.left, &format!("the 3 remaining show {leaver_name} left"), || {
        every(&remaining, |&i| {
            view(c, i, &foreign).is_some_and(|v| match state_of(&v, &ids[LEAVER]) {
                Some("left") => true,
                Some("down") => panic!(
                    "{} shows {leaver_name} down instead of left after its SIGTERM\n{}",
                    c.node(i).name(),
                    c.report()
                ),
                _ => false,
            })
        })
    });
    let left = termed_at.elapsed();
    println!("leave: {leaver_name} seen left by the 3 remaining {left:.2?} after SIGTERM");
    let status = c.node_mut(LEAVER).wait_exit(t.exit);
    let status = status.unwrap_or_else(|| panic!("{leaver_name} did not exit within {:?} of SIGTERM\n{}", t.exit, c.report()));
    assert_eq!(status.code(), Some(0), "{leaver_name} exited with {status} after SIGTERM\n{}", c.report());

    // Restart of the crashed node with the same data dir: same id, higher incarnation.
    c.node_mut(CRASHED).start();
    let restarted_at = Instant::now();
    c.wait_until(t.rejoin, &format!("the restarted {crashed_name} answers `shoal members`"), || c.node(CRASHED).self_id().is_ok());
    let new_id = c.node(CRASHED).self_id().unwrap_or_default();
    assert_eq!(new_id, ids[CRASHED], "{crashed_name} came back with another node id (same --data-dir)");
    let live: Vec<usize> = remaining.iter().copied().chain([CRASHED]).collect();
    c.wait_until(
        t.rejoin.saturating_sub(restarted_at.elapsed()),
        &format!("{crashed_name} is alive again (same id, incarnation > {old_incarnation}) and all 4 live nodes see each other alive"),
        || {
            every(&live, |&i| {
                view(c, i, &foreign).is_some_and(|v| {
                    find(&v, &ids[CRASHED]).is_some_and(|m| m.state == "alive" && m.incarnation > old_incarnation)
                        && live.iter().all(|&j| state_of(&v, &ids[j]) == Some("alive"))
                })
            })
        },
    );
    let rejoin = restarted_at.elapsed();
    println!("restart: {crashed_name} alive again everywhere {rejoin:.2?} after restart");

    // The end state: the leaver stays left, the outsider stays outside.
    for &i in &remaining {
        let v = view(c, i, &foreign).unwrap_or_else(|| panic!("members of {}", c.node(i).name()));
        assert_eq!(state_of(&v, &ids[LEAVER]), Some("left"), "{} no longer shows {leaver_name} left\n{}", c.node(i).name(), c.report());
    }
    let fv = c.node(FOREIGN).members().unwrap_or_else(|e| panic!("members of the outsider: {e}"));
    assert!(fv.len() == 1 && fv[0].id == foreign, "the outsider must still see only itself: {fv:#?}");
    let s0 = c.node(0).stats().unwrap_or_else(|e| panic!("stats of node 0: {e}"));
    println!("end: node 0 stats {s0:?}");

    StoryTimes { formation, down, left, rejoin }
}
