//! Membership over real UDP and mDNS between 6 network namespaces on one bridge (no --join
//! between members): formation, crash, graceful leave, restart, and an outsider with another
//! secret. Needs root; fails unless SHOAL_SKIP_NETNS=1 says to skip.

use shoal_tests::story::{membership_story, FOREIGN};
use shoal_tests::{require_netns, token_new, Cluster, Lab, NodeSpec, TokenVia};

#[test]
fn five_nodes_form_detect_crash_leave_and_rejoin_over_mdns() {
    if !require_netns("membership_netns") {
        return;
    }
    let lab = Lab::new(6).unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}"));
    let hosts = lab.hosts.clone();
    let mut c = Cluster::in_lab("netns", lab);
    let token = token_new();
    let other = token_new();
    assert_ne!(token, other, "two `shoal token new` printed the same token");
    for (i, host) in hosts.iter().enumerate() {
        let foreign = i == FOREIGN;
        // Default bind (0.0.0.0:7480): each node advertises its veth address.
        let mut args = vec!["--mdns-interface".to_string(), host.ifname.clone()];
        if foreign {
            // Point the outsider at node 1 so that it actively sends to it.
            args.extend(["--join".to_string(), format!("{}:7480", hosts[0].ip)]);
        } else {
            args.extend(["--label".to_string(), format!("zone=z{}", i + 1), "--label".into(), "test=netns".into()]);
        }
        c.add(NodeSpec {
            name: if foreign { "x6".into() } else { format!("n{}", i + 1) },
            token: if foreign { other.clone() } else { token.clone() },
            token_via: TokenVia::Flag,
            netns: Some(host.ns.clone()),
            args,
            expect_addr: format!("{}:7480", host.ip),
        });
    }
    let times = membership_story(&mut c);
    println!("netns story done: {times:?}");
}
