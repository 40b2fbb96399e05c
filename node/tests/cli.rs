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
    for cmd in ["token", "agent", "members", "stats"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    let agent = text(&shoal(&["agent", "--help"]).stdout);
    for flag in ["--token", "--token-file", "--data-dir", "--name", "--label", "--bind", "--join", "--mdns-interface", "--no-mdns"] {
        assert!(agent.contains(flag), "agent --help lacks {flag}");
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
fn agent_without_token_says_how_to_make_one() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{}", std::process::id()));
    let out = shoal(&["agent", "--data-dir", dir.to_str().expect("utf8"), "--no-mdns"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("shoal token new"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
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
