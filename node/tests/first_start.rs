//! The first five minutes: `shoal agent` with no token on a fresh data dir founds a cluster,
//! keeps its token (mode 0600) and says how to add machines; `shoal token show` prints the
//! token, pinned to the new cluster's CA; a second agent given it joins; a restart needs no token; a foreign token on that
//! data dir is refused; and two tokenless founders on one LAN (mDNS on loopback only) each
//! say that another cluster is there and how to join it.

mod common;

use common::{free_port, role, scratch, shoal, start, status, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn token_show(dir: &std::path::Path) -> Option<String> {
    let out = shoal().args(["token", "show", "--data-dir"]).arg(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_tokenless_agent_founds_a_cluster_that_a_second_agent_joins_with_the_shown_token() {
    let root = scratch("first-start");
    let (pa, pb) = (free_port(), free_port());
    let dir_a = root.join("a");
    let a = start(None, &dir_a, pa, &["--no-mdns"]);
    wait_for("the founder to lead its new cluster", Duration::from_secs(30), &[&a], || role(&a).as_deref() == Some("leader"));
    let token = token_show(&dir_a).expect("`shoal token show` prints the kept token");
    // The cluster exists, so the token comes pinned to its CA: shoal2-<CA digest>-<secret>.
    assert!(token.starts_with("shoal2-") && token.len() == 7 + 32 + 1 + 64, "{token}");
    let secret = &token[7 + 32 + 1..];
    let mode = std::fs::metadata(dir_a.join("token")).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");
    let log = a.log();
    assert!(log.contains("founds a new cluster"), "the founder says what it did:\n{log}");
    assert!(log.contains("shoal token show"), "and how to get the token:\n{log}");
    assert!(!log.contains(secret), "the token is not written to a log that is not a terminal:\n{log}");

    let join = format!("127.0.0.1:{pa}");
    let b = start(Some(&token), &root.join("b"), pb, &["--no-mdns", "--join", &join]);
    wait_for("the second agent to join the founder's cluster", Duration::from_secs(30), &[&a, &b], || {
        let (sa, sb) = (status(&a), status(&b));
        let cluster = |s: &Option<serde_json::Value>| s.as_ref().and_then(|s| s["ca_fingerprint"].as_str().map(String::from));
        cluster(&sa).is_some() && cluster(&sa) == cluster(&sb) && matches!(role(&b).as_deref(), Some("worker" | "manager"))
    });
    assert!(token_show(&root.join("b")).is_none(), "a node given its token keeps none");

    // A restart of the founder needs no token: it reads the kept one.
    drop(a);
    let a = start(None, &dir_a, pa, &["--no-mdns"]);
    wait_for("the founder back as leader, without a token", Duration::from_secs(30), &[&a, &b], || role(&a).as_deref() == Some("leader"));
    drop(a);

    // Another cluster's token on the founder's data dir is refused, with the reason.
    let other = String::from_utf8(shoal().args(["token", "new"]).output().expect("token new").stdout).expect("utf8");
    let out = shoal()
        .args(["agent", "--no-mdns", "--bind", &format!("127.0.0.1:{pa}"), "--data-dir"])
        .arg(&dir_a)
        .env("SHOAL_TOKEN", other.trim())
        .output()
        .expect("agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to the cluster this node founded"), "{err}");
    assert!(!err.contains(&other.trim()[7..]), "the token is not echoed: {err}");
    drop(b);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_data_dir_that_joined_with_a_token_needs_it_again() {
    let root = scratch("joined-dir");
    let dir = root.join("n");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(dir.join("node.crt"), b"placeholder").expect("cert");
    let out = shoal().args(["agent", "--no-mdns", "--bind", "127.0.0.1:0", "--data-dir"]).arg(&dir).output().expect("agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already belongs to a cluster") && err.contains("SHOAL_TOKEN"), "{err}");
    assert!(!dir.join("token").exists(), "no new token is made for a joined data dir");
    let out = shoal().args(["token", "show", "--data-dir"]).arg(&dir).output().expect("token show");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keeps only the token of a cluster it founded"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn two_tokenless_founders_on_one_lan_each_say_another_cluster_is_there() {
    let root = scratch("two-founders");
    let (pa, pb) = (free_port(), free_port());
    // mDNS restricted to loopback (the agent does so by itself when bound to 127.0.0.1).
    let a = start(None, &root.join("a"), pa, &[]);
    let b = start(None, &root.join("b"), pb, &[]);
    wait_for("both founders to lead a cluster of their own", Duration::from_secs(30), &[&a, &b], || {
        role(&a).as_deref() == Some("leader") && role(&b).as_deref() == Some("leader")
    });
    wait_for("each founder to warn about the other cluster", Duration::from_secs(30), &[&a, &b], || {
        [&a, &b].iter().all(|x| x.log().contains("another cluster is on this network"))
    });
    let log = a.log();
    assert!(log.contains(&format!("127.0.0.1:{pb}")), "the warning names where the other cluster is:\n{log}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}
