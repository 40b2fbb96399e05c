//! The harness's namespace lab itself: hosts reach each other over the bridge, the root
//! namespace is untouched, and everything is gone after drop.

use shoal_tests::{require_netns, run_ok, Lab};
use std::process::Command;

fn root_links() -> String {
    let out = run_ok(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_else(|e| panic!("{e}"));
    // Counters and states of real interfaces may change; names may not.
    out.lines().filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string())).collect::<Vec<_>>().join(",")
}

#[test]
fn lab_hosts_share_a_segment_and_vanish_on_drop() {
    if !require_netns("lab") {
        return;
    }
    let before = root_links();
    let lab = Lab::new(2).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = lab.hosts.iter().map(|h| h.ns.clone()).chain([lab.switch.clone()]).collect();
    assert_eq!(root_links(), before, "the lab changed the root namespace's interfaces");

    // One datagram from host 1 to host 2 resolves host 2's MAC over the bridge.
    let target = lab.hosts[1].ip.to_string();
    let send = format!("echo hi > /dev/udp/{target}/9");
    let out = lab.exec(0, &["bash", "-c", &send]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "send failed: {}", out.stderr);
    let mut resolved = false;
    for _ in 0..50 {
        let neigh = lab.exec(0, &["ip", "neigh", "show", &target]).unwrap_or_else(|e| panic!("{e}"));
        if neigh.stdout.contains("lladdr") {
            resolved = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(resolved, "host 1 could not resolve host 2 over the bridge");
    let lo = lab.exec(0, &["ip", "-o", "link", "show", "lo"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(lo.stdout.contains("UP"), "lo is not up: {}", lo.stdout);

    drop(lab);
    let list = run_ok(Command::new("ip").args(["netns", "list"])).unwrap_or_else(|e| panic!("{e}"));
    for n in names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())), "{n} still exists after drop");
    }
}
