//! The `shoal` command line as a user meets it: help, token creation, and clear refusals.
//! (Also makes `cargo test --workspace` build the binary the integration tests drive.)

use std::process::{Command, Output};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("SHOAL_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run shoal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = shoal(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["token", "agent", "members", "stats", "status", "node"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    let agent = text(&shoal(&["agent", "--help"]).stdout);
    for flag in ["--token", "--token-file", "--data-dir", "--name", "--label", "--bind", "--join", "--mdns-interface", "--no-mdns",
        "--bootstrap-expect", "--voters", "--raft-heartbeat-ms", "--raft-election-timeout-ms", "--cert-lifetime",
        "--replace-dead-manager-after"] {
        assert!(agent.contains(flag), "agent --help lacks {flag}");
    }
    let node = text(&shoal(&["node", "--help"]).stdout);
    for cmd in ["ls", "rm", "update"] {
        assert!(node.contains(cmd), "node --help lacks {cmd}:\n{node}");
    }
}

#[test]
fn token_new_prints_a_fresh_256_bit_token() {
    let a = text(&shoal(&["token", "new"]).stdout);
    let b = text(&shoal(&["token", "new"]).stdout);
    let a = a.trim();
    assert!(a.starts_with("shoal1-") && a.len() == 7 + 64, "{a}");
    assert!(a[7..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b.trim());
}

#[test]
fn bad_token_and_bad_flags_are_refused_without_echoing_the_token() {
    let out = shoal(&["agent", "--token", "shoal1-topsecretvalue", "--no-mdns"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("64 hex"), "{err}");
    assert!(!err.contains("topsecretvalue"), "{err}");
    let token = text(&shoal(&["token", "new"]).stdout).trim().to_string();
    let out = shoal(&["agent", "--token", &token, "--label", "novalue", "--no-mdns"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("key=value"));
    assert!(!text(&out.stderr).contains(&token));
    let out = shoal(&["agent", "--token", &token, "--bind", "not-an-address"]);
    assert!(!out.status.success());
}

#[test]
fn members_without_an_agent_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-none-{}", std::process::id()));
    let out = shoal(&["members", "--data-dir", dir.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("is `shoal agent --data-dir"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_cluster_flags_are_refused_with_the_reason() {
    let token = text(&shoal(&["token", "new"]).stdout);
    let token = token.trim();
    let cases: [(&[&str], &str); 5] = [
        (&["--voters", "2"], "1, 3 or 5"),
        (&["--bootstrap-expect", "0"], "bootstrap-expect"),
        (&["--cert-lifetime", "7w"], "not a duration"),
        (&["--cert-lifetime", "10s"], "at least 60s"),
        (&["--raft-heartbeat-ms", "500", "--raft-election-timeout-ms", "1000"], "at least 3 heartbeats"),
    ];
    for (flags, expect) in cases {
        let mut args = vec!["agent", "--token", token, "--no-mdns", "--data-dir", "/nonexistent/shoal-cli-test"];
        args.extend_from_slice(flags);
        let out = shoal(&args);
        assert!(!out.status.success(), "{flags:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{flags:?}: {err}");
        assert!(!err.contains(&token[7..]), "the token leaked into an error");
    }
}

#[test]
fn node_commands_without_an_agent_say_how_to_start_one() {
    for args in [&["status"][..], &["node", "ls"], &["node", "rm", "abcd"]] {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--data-dir", "/nonexistent/shoal-cli-test"]);
        let out = shoal(&a);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("shoal agent --data-dir"), "{args:?}: {}", text(&out.stderr));
    }
    let out = shoal(&["node", "update", "abcd", "--data-dir", "/nonexistent/x"]);
    assert!(text(&out.stderr).contains("nothing to update"), "{}", text(&out.stderr));
}
