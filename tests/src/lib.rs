//! Harness for tests and benchmarks across real `shoal` processes.
//!
//! - [`shoal_bin`]: where the `shoal` binary is (built separately with `cargo build -p shoal-node`);
//! - [`TempDir`]: a scratch directory, removed on drop (kept when the test failed);
//! - [`Lab`]: network namespaces joined by a bridge in a dedicated "switch" namespace, so the
//!   machine's own interfaces are never touched; [`Lab::with_engines`] also gives every
//!   machine its own Docker Engine and hostname, and [`Lab::load_images`] fills them
//!   ([`engines`]);
//! - [`Node`] and [`Cluster`]: `shoal agent` processes (inside a namespace or on loopback),
//!   their logs, signals, `shoal members` / `shoal stats`, and [`Cluster::wait_until`];
//! - [`cluster`]: Raft stories (`status`, `node ls`, writes, free port triples);
//! - [`services`]: service stories on Docker Engines, the lab's or the host's (test image,
//!   containers by node label and engine, cleanup guard, `service ls|ps` rows).
//!
//! Every wait is bounded. Every process is killed and every namespace deleted on drop, also
//! when a test panics. Agents are additionally started under `setpriv --pdeathsig KILL` (when
//! available) so they die with the thread that started them even if the test process is
//! killed outright.
//!
//! Signals are sent with `Child::kill` (SIGKILL) and the `kill` command (SIGTERM, SIGINT):
//! the workspace forbids `unsafe`, and every `libc` call is `unsafe`.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod engines;
pub mod insider;
pub mod services;
pub mod story;

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Poll period of [`Cluster::wait_until`].
pub const POLL: Duration = Duration::from_millis(200);
/// Bound on one `shoal members` / `shoal stats` / `ip` invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each node's log shown when a wait times out.
pub const LOG_TAIL_LINES: usize = 30;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------------------ the binary

/// The `shoal` binary: `$SHOAL_BIN`, else `shoal` in the cargo profile directory of the
/// running test or bench (`…/target/debug/deps/x` → `…/target/debug/shoal`), else the
/// other profile's (with a note on stderr). Panics with the build command if none exists.
pub fn shoal_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = find_shoal_bin();
        warn_if_stale(&bin);
        bin
    })
    .clone()
}

/// `cargo test -p shoal-tests` does not rebuild the binary: say so when sources are newer.
fn warn_if_stale(bin: &Path) {
    fn newest(dir: &Path, acc: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                newest(&p, acc);
            } else if p.extension().is_some_and(|x| x == "rs" || x == "toml") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    *acc = Some(acc.map_or(t, |a| a.max(t)));
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut src = None;
    for krate in ["node", "discovery", "wire"] {
        newest(&root.join(krate), &mut src);
    }
    let built = fs::metadata(bin).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(built)) = (src, built) {
        if src > built {
            eprintln!(
                "warning: {} is older than the sources of shoal-node or its crates; run `cargo build -p shoal-node` to test the current code",
                bin.display()
            );
        }
    }
}

fn find_shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHOAL_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if matches!(dir.file_name().and_then(|n| n.to_str()), Some("deps" | "examples")) {
        dir.pop();
    }
    let same = dir.join("shoal");
    if same.is_file() {
        return same;
    }
    if let Some(target) = dir.parent() {
        for profile in ["debug", "release"] {
            let other = target.join(profile).join("shoal");
            if other.is_file() {
                eprintln!("note: {} is not built; using {}", same.display(), other.display());
                return other;
            }
        }
    }
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let build = if profile == "debug" {
        "cargo build -p shoal-node".to_string()
    } else {
        format!("cargo build --profile {} -p shoal-node", if profile == "release" { "release" } else { profile })
    };
    panic!(
        "the shoal binary is missing ({} does not exist): run `{build}` first, or set SHOAL_BIN",
        same.display()
    );
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

// ------------------------------------------------------------------------------ commands

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command with no stdin, capturing its output, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read_all(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = read_all(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output { status, stdout, stderr }),
        None => Err(format!("{shown} did not finish within {timeout:?} (killed); stdout: {stdout:?} stderr: {stderr:?}")),
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(10))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{shown} failed ({}): {}", out.status, out.stderr.trim()))
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    run_ok(Command::new("ip").args(args))
}

/// A fresh join token from `shoal token new`.
pub fn token_new() -> String {
    let out = run(Command::new(shoal_bin()).args(["token", "new"]), CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("`shoal token new`: {e}"));
    assert!(out.status.success(), "`shoal token new` failed ({}): {}", out.status, out.stderr);
    let token = out.stdout.trim().to_string();
    assert_eq!(out.stdout.trim_end_matches('\n').lines().count(), 1, "`shoal token new` must print one line, printed {:?}", out.stdout);
    let hex = token.strip_prefix("shoal1-").unwrap_or("");
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "`shoal token new` printed {token:?}, expected shoal1-<64 hex>"
    );
    token
}

// ------------------------------------------------------------------------------ temp dirs

/// A scratch directory under the system temp dir (or `/tmp` when that path is long, since
/// unix socket paths are limited to 107 bytes). Removed on drop, except after a panic or
/// with `SHOAL_KEEP_TMP=1`, when its path is printed instead.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 32 {
            base = PathBuf::from("/tmp");
        }
        let path = base.join(format!("shoalt-{label}-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SHOAL_KEEP_TMP").is_some() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------------------------ network namespaces

pub(crate) const NS_PREFIX: &str = "shoalt";

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `None` when network namespaces can be used here (root, and `ip netns add` works);
/// otherwise why not.
pub fn netns_unavailable() -> Option<String> {
    if which("ip").is_none() {
        return Some("the `ip` command (iproute2) is not installed".into());
    }
    if !is_root() {
        return Some("network namespaces need root (run the tests as root)".into());
    }
    let probe = format!("{NS_PREFIX}-{}-{}-probe", std::process::id(), unique());
    let added = ip(&["netns", "add", &probe]);
    let _ = ip(&["netns", "del", &probe]);
    added.err().map(|e| format!("`ip netns add` does not work here: {e}"))
}

/// For tests that need namespaces: `true` if they work; otherwise prints `skipped: …` and
/// returns `false` when `SHOAL_SKIP_NETNS=1`, and panics with the reason when not.
pub fn require_netns(test: &str) -> bool {
    let Some(reason) = netns_unavailable() else { return true };
    if std::env::var("SHOAL_SKIP_NETNS").as_deref() == Ok("1") {
        println!("skipped: {test}: {reason} (SHOAL_SKIP_NETNS=1)");
        false
    } else {
        panic!("{test} needs network namespaces: {reason}. Set SHOAL_SKIP_NETNS=1 to skip it explicitly.");
    }
}

/// Deletes namespaces left by harness runs whose process is gone (e.g. a killed `cargo test`).
/// Labs with engines (`shoalt-eK-…`) are cleaned by slot instead (see [`engines`]).
pub(crate) fn delete_stale_namespaces() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let mut parts = name.split('-');
        if parts.next() != Some(NS_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The agents' default gossip port (`--bind 0.0.0.0:7480`), which lab agents use: every
/// machine has its own addresses. Loopback agents take ports from
/// [`cluster::free_agent_ports`].
pub const AGENT_PORT: u16 = 7480;

/// One host of a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabHost {
    /// Its network namespace.
    pub ns: String,
    /// Its one interface (besides `lo`), attached to the lab's bridge.
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// Its own Docker Engine and hostname, in a lab built with [`Lab::with_engines`].
    pub engine: Option<engines::HostEngine>,
}

impl LabHost {
    /// Where an agent on this host with the default bind listens and what it advertises.
    pub fn agent_addr(&self) -> String {
        format!("{}:{AGENT_PORT}", self.ip)
    }
}

/// N host namespaces on one Ethernet segment: each has `lo` and `eth0` (10.77.X.i/24, i from
/// 1), whose veth peer is a port of bridge `br0` in the lab's own switch namespace. Nothing
/// is created in the root namespace. Dropping the lab kills whatever still runs in its
/// namespaces (only processes this harness started can be there) and deletes them; a lab
/// with engines ([`Lab::with_engines`]) also removes its engines' containers, engines,
/// mounts and folders.
///
/// A [`Cluster`] holds its lab in an `Arc`, so one lab can carry several clusters one
/// after another (agents of two clusters at once would both bind [`AGENT_PORT`]).
pub struct Lab {
    pub switch: String,
    pub hosts: Vec<LabHost>,
    /// X in 10.77.X.0/24.
    pub subnet: u8,
    created: Vec<String>,
    engines: Option<engines::Engines>,
}

impl Lab {
    /// A lab of `hosts` namespaces without engines (agents share the host's engine, if any).
    pub fn new(hosts: usize) -> Result<Self, String> {
        assert!((1..=250).contains(&hosts), "a lab holds 1 to 250 hosts");
        delete_stale_namespaces();
        let n = unique();
        let prefix = format!("{NS_PREFIX}-{}-{n}", std::process::id());
        // Labs are isolated from each other, so subnets could even repeat; keep them distinct
        // anyway so logs of different labs cannot be confused.
        let subnet = ((std::process::id() + n * 7) % 250 + 1) as u8;
        let mut lab = Self::empty(&prefix, subnet);
        lab.build(&prefix, hosts)?; // on error, dropping `lab` removes what was made
        Ok(lab)
    }

    fn empty(prefix: &str, subnet: u8) -> Self {
        Self { switch: format!("{prefix}-sw"), hosts: Vec::new(), subnet, created: Vec::new(), engines: None }
    }

    /// A spec for an agent on host `i` (index from 0): named after the host (`n{i+1}`, the
    /// hostname of a machine with an engine), token by flag, mDNS on the host's interface,
    /// the default bind ([`AGENT_PORT`]), then `extra` arguments. Fields can be changed after.
    pub fn agent_spec(&self, i: usize, token: &str, extra: &[&str]) -> NodeSpec {
        let host = &self.hosts[i];
        let mut args = vec!["--mdns-interface".to_string(), host.ifname.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        NodeSpec {
            name: host.engine.as_ref().map_or_else(|| format!("n{}", i + 1), |e| e.hostname.clone()),
            token: token.to_string(),
            token_via: TokenVia::Flag,
            netns: Some(host.ns.clone()),
            args,
            expect_addr: host.agent_addr(),
        }
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self, prefix: &str, hosts: usize) -> Result<(), String> {
        let sw = self.switch.clone();
        self.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = format!("{prefix}-h{i}");
            self.add_ns(&ns)?;
            let port = format!("p{i}");
            ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let addr = Ipv4Addr::new(10, 77, self.subnet, i as u8);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.hosts.push(LabHost { ns, ifname: "eth0".into(), ip: addr, engine: None });
        }
        Ok(())
    }

    /// Runs a command inside host `i`'s namespace (index from 0), and its UTS namespace on a
    /// machine with an engine.
    pub fn exec(&self, i: usize, argv: &[&str]) -> Result<Output, String> {
        let host = &self.hosts[i];
        match &host.engine {
            Some(e) => run(
                Command::new("nsenter").arg(format!("--net=/run/netns/{}", host.ns)).arg(format!("--uts={}", e.uts.display())).args(argv),
                Duration::from_secs(10),
            ),
            None => run(Command::new("ip").args(["netns", "exec", &host.ns]).args(argv), Duration::from_secs(10)),
        }
    }

    /// Cuts host `i` (index from 0) off the segment: its switch port leaves the bridge, so
    /// its `eth0` stays up (no carrier change for the agent to notice) but every frame in
    /// either direction goes nowhere. Undo with [`Self::heal`].
    pub fn isolate(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("p{}", i + 1), "nomaster"]).map(drop)
    }

    /// Puts host `i`'s switch port back on the bridge (STP is off: it forwards at once).
    pub fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("p{}", i + 1), "master", "br0"]).map(drop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut engines) = self.engines.take() {
            self.drop_engines(&mut engines);
            // `engines` (its slot lock) goes last, once nothing of the lab is left.
        }
        for ns in self.created.iter().rev() {
            if let Ok(pids) = ip(&["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run(Command::new("kill").args(["-s", "KILL", pid]), CLI_TIMEOUT);
                }
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("warning: could not delete namespace {ns}: {e}");
            }
        }
    }
}

// ------------------------------------------------------------------------------ free ports

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago (bound to port 0 and
/// released), never handed out twice by this process.
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = lock(&GIVEN);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n * 20 {
        if ports.len() == n {
            break;
        }
        let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind a UDP socket: {e}"));
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0 && given.insert(port) {
            ports.push(port);
        }
        held.push(s);
    }
    assert_eq!(ports.len(), n, "could not find {n} free UDP ports");
    ports
}

// ------------------------------------------------------------------------------ CLI output

/// One row of `shoal members --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    pub id: String,
    pub name: Option<String>,
    pub addr: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub incarnation: u32,
    pub version: Option<String>,
    pub since_ms: u64,
    pub is_self: bool,
    /// The address in the node's own signed facts.
    #[serde(default)]
    pub signed_addr: Option<String>,
    /// What the node offers (`engine_ok`, CPUs, memory), as gossip shows it.
    #[serde(default)]
    pub resources: serde_json::Value,
}

impl Member {
    pub fn short(&self) -> String {
        format!(
            "{} {:<6} {:<7} inc={} {} labels={:?} ver={}{}",
            self.id.chars().take(8).collect::<String>(),
            self.name.as_deref().unwrap_or("?"),
            self.state,
            self.incarnation,
            self.addr,
            self.labels,
            self.version.as_deref().unwrap_or("?"),
            if self.is_self { " (self)" } else { "" }
        )
    }
}

/// `shoal stats --format json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub dropped_forged: u64,
    pub dropped_replayed: u64,
    pub dropped_clock_skew: u64,
    pub dropped_malformed: u64,
    pub foca_rejected: u64,
    pub foreign_cluster_hints: u64,
    #[serde(default)]
    pub dropped_bad_signature: u64,
}

/// A log position in [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct LogPos {
    pub term: u64,
    pub index: u64,
}

/// A voter or learner in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PeerRow {
    pub id: String,
    pub name: String,
    pub addr: String,
    pub health: String,
}

/// `shoal status --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub cluster_id: String,
    pub node: String,
    pub name: String,
    /// leader, manager, worker, joining or bootstrapping.
    pub role: String,
    pub detail: Option<String>,
    pub leader: Option<String>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<LogPos>,
    pub voters: Vec<PeerRow>,
    pub learners: Vec<PeerRow>,
    pub ca_fingerprint: Option<String>,
    pub cert_expires_unix: Option<u64>,
    pub cert_role: Option<String>,
    pub nodes_registered: usize,
    pub revoked: Vec<String>,
}

impl Status {
    pub fn short(&self) -> String {
        let names = |rows: &[PeerRow]| rows.iter().map(|r| format!("{}:{}", r.name, r.health)).collect::<Vec<_>>().join(",");
        format!(
            "{} {} cluster={} leader={} term={} applied={:?} voters=[{}] learners=[{}] ca={} revoked={}{}",
            self.name,
            self.role,
            self.cluster_id,
            self.leader_name.as_deref().or(self.leader.as_deref()).unwrap_or("-"),
            self.term,
            self.last_applied.map(|p| (p.term, p.index)),
            names(&self.voters),
            names(&self.learners),
            self.ca_fingerprint.as_deref().map_or("-", |f| &f[..f.len().min(12)]),
            self.revoked.len(),
            self.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        )
    }
}

/// One row of `shoal node ls --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    /// leader, manager, worker or "-".
    pub role: String,
    pub state: String,
    pub addr: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub revoked: bool,
}

// ------------------------------------------------------------------------------ nodes

/// How a node gets its join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVia {
    Flag,
    Env,
    File,
}

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `--name`, also the data dir's and the log's name.
    pub name: String,
    pub token: String,
    pub token_via: TokenVia,
    /// Namespace to run in; `None` runs in the current one (loopback tests).
    pub netns: Option<String>,
    /// Everything after the data dir, name and token (`--bind`, `--join`, `--label`, …).
    pub args: Vec<String>,
    /// The gossip address the node should advertise (`ip:port`), to check views against.
    pub expect_addr: String,
}

/// One `shoal agent` process (possibly restarted), with its data dir and log.
pub struct Node {
    pub spec: NodeSpec,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The engine of the lab machine it runs on (set by [`Cluster::add`] when the spec's
    /// namespace is a machine of the cluster's lab with engines).
    machine: Option<engines::HostEngine>,
    child: Option<Child>,
    starts: u32,
    /// What the last `members`/`stats` call saw, for failure reports.
    last_seen: Mutex<String>,
}

impl Node {
    fn new(spec: NodeSpec, dir: &Path, machine: Option<engines::HostEngine>) -> Self {
        Self {
            data_dir: dir.join(&spec.name),
            log_path: dir.join(format!("{}.log", spec.name)),
            spec,
            machine,
            child: None,
            starts: 0,
            last_seen: Mutex::new("(never queried)".into()),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The Docker Engine of the lab machine this node runs on, if it has one of its own.
    pub fn machine(&self) -> Option<&engines::HostEngine> {
        self.machine.as_ref()
    }

    /// Starts the agent (again, with the same data dir and arguments) and waits until the
    /// started pid is the `shoal` process itself (`ip netns exec`, `nsenter` and `setpriv`
    /// exec into it, so signals reach the agent). On a lab machine with an engine it runs in
    /// the machine's UTS namespace too, without `--name` when its name is the hostname (the
    /// agent's default, as on a real machine), and with `--docker-socket` of the machine's
    /// engine unless the spec's arguments give one.
    pub fn start(&mut self) {
        if let Some(status) = self.try_start() {
            panic!("{} exited at once ({status}); log:\n{}", self.name(), self.log_tail(LOG_TAIL_LINES));
        }
    }

    /// [`Self::start`] for a process that may refuse to run: `Some(status)` if it exited
    /// before or right after it became the shoal process.
    pub fn try_start(&mut self) -> Option<ExitStatus> {
        assert!(self.child.is_none(), "{} is already running", self.name());
        let bin = shoal_bin();
        let mut argv: Vec<String> = Vec::new();
        match (&self.machine, &self.spec.netns) {
            (Some(m), Some(ns)) => {
                argv.extend(["nsenter".to_string(), format!("--net=/run/netns/{ns}"), format!("--uts={}", m.uts.display())]);
            }
            (None, Some(ns)) => argv.extend(["ip", "netns", "exec", ns].map(String::from)),
            (_, None) => {}
        }
        if let Some(setpriv) = which("setpriv") {
            argv.extend([setpriv.display().to_string(), "--pdeathsig".into(), "KILL".into(), "--".into()]);
        }
        argv.push(bin.display().to_string());
        argv.extend(["agent".into(), "--data-dir".into(), self.data_dir.display().to_string()]);
        if self.machine.as_ref().is_none_or(|m| m.hostname != self.spec.name) {
            argv.extend(["--name".into(), self.spec.name.clone()]);
        }
        if let Some(m) = &self.machine {
            if !self.spec.args.iter().any(|a| a == "--docker-socket" || a.starts_with("--docker-socket=")) {
                argv.extend(["--docker-socket".into(), m.socket.display().to_string()]);
            }
        }
        let mut env_token = None;
        match self.spec.token_via {
            TokenVia::Flag => argv.extend(["--token".into(), self.spec.token.clone()]),
            TokenVia::Env => env_token = Some(self.spec.token.clone()),
            TokenVia::File => {
                let file = self.log_path.with_extension("token");
                fs::write(&file, format!("{}\n", self.spec.token)).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
                argv.extend(["--token-file".into(), file.display().to_string()]);
            }
        }
        argv.extend(self.spec.args.iter().cloned());

        self.starts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let shown: Vec<String> = argv
            .iter()
            .map(|a| if a == &self.spec.token { "<token>".to_string() } else { a.clone() })
            .collect();
        let _ = writeln!(log, "=== harness: start #{} of {}: {}", self.starts, self.name(), shown.join(" "));
        let err = log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}"));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(log).stderr(err);
        cmd.env_remove("SHOAL_TOKEN");
        if let Some(t) = env_token {
            cmd.env("SHOAL_TOKEN", t);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // The agent's own default, so that log tails show shoal's lines, not openraft's.
            cmd.env("RUST_LOG", "info,mdns_sd=warn,openraft=warn");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", argv.join(" ")));
        let pid = child.id();
        self.child = Some(child);

        // Wait for the exec chain to reach shoal.
        let want = fs::canonicalize(&bin).unwrap_or(bin);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
                let exe = exe.display().to_string();
                if exe.trim_end_matches(" (deleted)") == want.display().to_string() {
                    break;
                }
            }
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} of {} did not become the shoal process within 5 s",
                self.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `Some(status)` once the process has exited (and is reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, …) without waiting.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name()));
        run_ok(Command::new("kill").args(["-s", sig, &pid.to_string()]))
            .unwrap_or_else(|e| panic!("sending SIG{sig} to {}: {e}", self.name()));
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cli(&self, sub: &str) -> Result<String, String> {
        self.cli_json_text(&[sub])
    }

    /// `shoal <args…> --data-dir D --format json`; its stdout when it succeeds.
    fn cli_json_text(&self, args: &[&str]) -> Result<String, String> {
        let out = self.shoal(&[args, &["--format", "json"]].concat(), CLI_TIMEOUT)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            // The first lines say why; a backtrace (RUST_BACKTRACE) may follow.
            let why: Vec<&str> = out.stderr.trim().lines().take(3).collect();
            Err(format!("`shoal {}` failed ({}): {}", args.join(" "), out.status, why.join(" / ")))
        }
    }

    /// Runs `shoal <args…> --data-dir D` against this node's agent (any exit status), killed
    /// after `timeout`.
    pub fn shoal(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        run(
            Command::new(shoal_bin()).args(args).arg("--data-dir").arg(&self.data_dir).env_remove("SHOAL_TOKEN"),
            timeout,
        )
    }

    fn note(&self, what: String) {
        *lock(&self.last_seen) = what;
    }

    /// Output that does not match the CLI contract will not fix itself: fail at once.
    fn parse<T: serde::de::DeserializeOwned>(&self, sub: &str, out: &str) -> T {
        serde_json::from_str(out).unwrap_or_else(|e| {
            let compact: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
            let shown: String = compact.chars().take(600).collect();
            panic!(
                "`shoal {sub} --format json` of {} does not match the CLI contract ({e}); it printed: {shown}{}",
                self.name(),
                if compact.len() > shown.len() { " …" } else { "" }
            )
        })
    }

    /// `shoal members --format json`. `Err` when the command fails (agent not up yet, or
    /// gone); panics when it succeeds with output that does not match the contract.
    pub fn members(&self) -> Result<Vec<Member>, String> {
        let result = self
            .cli("members")
            .map(|out| self.parse::<Vec<Member>>("members", &out));
        let mut text = format!("members at {}:", now_ms());
        match &result {
            Ok(ms) => ms.iter().for_each(|m| {
                let _ = write!(text, "\n      {}", m.short());
            }),
            Err(e) => text.push_str(&format!(" error: {e}")),
        }
        self.note(text);
        result
    }

    /// `shoal stats --format json`; errors as [`Self::members`].
    pub fn stats(&self) -> Result<Stats, String> {
        let result = self
            .cli("stats")
            .map(|out| self.parse::<Stats>("stats", &out));
        self.note(format!("stats at {}: {result:?}", now_ms()));
        result
    }

    /// `shoal status --format json`; errors as [`Self::members`].
    pub fn status(&self) -> Result<Status, String> {
        let result = self.cli_json_text(&["status"]).map(|out| self.parse::<Status>("status", &out));
        self.note(match &result {
            Ok(s) => format!("status at {}: {}", now_ms(), s.short()),
            Err(e) => format!("status at {}: error: {e}", now_ms()),
        });
        result
    }

    /// `shoal node ls --format json`; errors as [`Self::members`].
    pub fn node_ls(&self) -> Result<Vec<NodeRow>, String> {
        let result = self.cli_json_text(&["node", "ls"]).map(|out| self.parse::<Vec<NodeRow>>("node ls", &out));
        let mut text = format!("node ls at {}:", now_ms());
        match &result {
            Ok(rows) => rows.iter().for_each(|r| {
                let _ = write!(
                    text,
                    "\n      {} {:<6} {:<7} {:<7} labels={:?}{}",
                    &r.id[..r.id.len().min(8)],
                    r.name,
                    r.role,
                    r.state,
                    r.labels,
                    if r.revoked { " REVOKED" } else { "" }
                );
            }),
            Err(e) => text.push_str(&format!(" error: {e}")),
        }
        self.note(text);
        result
    }

    /// The node's own id, from its `members` (its `is_self` row).
    pub fn self_id(&self) -> Result<String, String> {
        let ms = self.members()?;
        let mine: Vec<&Member> = ms.iter().filter(|m| m.is_self).collect();
        match mine.as_slice() {
            [m] => Ok(m.id.clone()),
            _ => Err(format!("{} rows with is_self=true", mine.len())),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn last_seen(&self) -> String {
        lock(&self.last_seen).clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------ clusters

/// `f` holds for every item. Unlike `Iterator::all` it evaluates every item, so that a
/// failure report shows what every node saw, not only the first one that disagreed.
pub fn every<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T) -> bool) -> bool {
    items.into_iter().fold(true, |ok, item| f(item) & ok)
}

/// A set of nodes, their scratch dir and, optionally, the lab they run in. Drop order:
/// processes, then namespaces, then files.
pub struct Cluster {
    pub nodes: Vec<Node>,
    lab: Option<Arc<Lab>>,
    tmp: TempDir,
    /// A failure report was already part of a panic message.
    reported: std::sync::atomic::AtomicBool,
}

impl Cluster {
    pub fn new(label: &str) -> Self {
        Self { nodes: Vec::new(), lab: None, tmp: TempDir::new(label), reported: false.into() }
    }

    /// A cluster whose nodes run in `lab`'s namespaces (a `Lab`, or an `Arc<Lab>` that
    /// another cluster used before).
    pub fn in_lab(label: &str, lab: impl Into<Arc<Lab>>) -> Self {
        Self { nodes: Vec::new(), lab: Some(lab.into()), tmp: TempDir::new(label), reported: false.into() }
    }

    /// The lab, to hand on to another cluster once this one is dropped.
    pub fn lab_arc(&self) -> Option<Arc<Lab>> {
        self.lab.clone()
    }

    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_deref()
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Adds a node (not started); returns its index. A node whose namespace is a machine of
    /// the lab with its own engine is started on that machine (see [`Node::start`]).
    pub fn add(&mut self, spec: NodeSpec) -> usize {
        let machine = self
            .lab
            .as_ref()
            .zip(spec.netns.as_ref())
            .and_then(|(lab, ns)| lab.hosts.iter().find(|h| &h.ns == ns))
            .and_then(|h| h.engine.clone());
        self.nodes.push(Node::new(spec, self.tmp.path(), machine));
        self.nodes.len() - 1
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Polls `cond` every [`POLL`] until it holds; returns how long that took. On timeout,
    /// panics with `what`, every node's last observed state and the tail of every log.
    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
        self.wait_until_every(POLL, timeout, what, cond)
    }

    /// [`Self::wait_until`] with another poll period (benches poll faster).
    pub fn wait_until_every(&self, every: Duration, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                self.reported.store(true, Ordering::SeqCst);
                panic!("timed out after {elapsed:.1?} waiting until {what}\n{}", self.report());
            }
            std::thread::sleep(every.min(timeout - elapsed));
        }
    }

    /// Every node's last observed state and log tail.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let _ = writeln!(s, "--- {} (pid {:?}, data dir {})", n.name(), n.pid(), n.data_dir.display());
            let _ = writeln!(s, "    last seen: {}", n.last_seen());
            if let Some(m) = &n.machine {
                let _ = writeln!(s, "    on machine {} with its own engine at {} (log {})", m.hostname, m.socket.display(), m.log_path().display());
            }
            let _ = writeln!(s, "    log tail ({}):", n.log_path.display());
            for line in n.log_tail(LOG_TAIL_LINES).lines() {
                let _ = writeln!(s, "      {line}");
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() && !self.reported.load(Ordering::SeqCst) {
            eprintln!("cluster state at failure:\n{}", self.report());
        }
    }
}

/// Where a benchmark runs its agents: network namespaces with mDNS when available (root and
/// `ip`), else loopback with `--join` seeds. `SHOAL_BENCH_LOOPBACK=1` forces loopback.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BenchMode {
    Netns,
    Loopback,
}

impl BenchMode {
    /// Picks the mode and says why when it falls back to loopback.
    pub fn choose() -> Self {
        let forced = std::env::var("SHOAL_BENCH_LOOPBACK").as_deref() == Ok("1");
        match netns_unavailable() {
            None if forced => {
                println!("note: SHOAL_BENCH_LOOPBACK=1; using loopback");
                BenchMode::Loopback
            }
            None => BenchMode::Netns,
            Some(why) => {
                println!("note: network namespaces unavailable ({why}); using loopback");
                BenchMode::Loopback
            }
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BenchMode::Netns => "network namespaces on one bridge, mDNS discovery, no seeds",
            BenchMode::Loopback => "loopback, --no-mdns, --join seeds",
        }
    }
}

/// Prints min, median and max of benchmark rounds, and every round.
pub fn summary(name: &str, xs: &[Duration]) {
    if xs.is_empty() {
        return;
    }
    let mut v: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    let each: Vec<String> = xs.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
    println!(
        "{name}: min {:.2} s, median {:.2} s, max {:.2} s over {} round(s) [{}]",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1],
        v.len(),
        each.join(", ")
    );
}
