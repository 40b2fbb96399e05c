//! `shoal agent`: wires identity, discovery, membership and the local API together, and
//! leaves the cluster gracefully on SIGTERM/SIGINT.

use crate::{api, dockerapi, identity::NodeIdentity};
use anyhow::{Context, Result};
use rand::SeedableRng;
use shoal_discovery::mdns::{MdnsConfig, MdnsDiscovery};
use shoal_discovery::ports::{NoPeers, SystemClock, UdpDatagrams};
use shoal_discovery::{Membership, MembershipConfig, NodeFacts, ShoalId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `shoal agent` needs, validated.
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub secret: shoal_discovery::JoinSecret,
    /// The CA a `shoal2-` token pins: joins answered with another CA are refused, and this
    /// node never founds a cluster.
    pub ca_pin: Option<shoal_secret::CaPin>,
    pub token_origin: crate::config::TokenOrigin,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub mdns: bool,
    pub mdns_interfaces: Vec<String>,
    pub expected_nodes: u32,
    pub bootstrap_expect: usize,
    pub target_voters: usize,
    pub timing: crate::control::RaftTiming,
    pub cert_lifetime: Duration,
    pub dead_voter_after: Duration,
    pub reschedule_after: Duration,
    pub docker_socket: Option<PathBuf>,
    /// A bug planted on purpose (tests only).
    pub planted: Option<shoal_control::PlantedBug>,
}

/// How long a stopping leader waits for another voter to take over before it stops anyway.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful leave may take before the process exits anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// File in the data dir listing the gossip addresses of every peer known so far; a restarted
/// node greets them, so it finds its cluster even when discovery stays silent.
const PEERS_FILE: &str = "peers";
/// How often the known peers are saved.
const PEERS_SAVE_EVERY: Duration = Duration::from_secs(10);
/// Bound on remembered peers read back (the file is ours, but may be damaged).
const MAX_REMEMBERED_PEERS: usize = 1024;

fn load_peers(path: &std::path::Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut out = Vec::new();
    for line in text.lines().take(MAX_REMEMBERED_PEERS) {
        match line.trim().parse::<SocketAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => tracing::warn!(path = %path.display(), "ignoring a malformed line in the peers file"),
        }
    }
    out
}

async fn save_peers_periodically(handle: shoal_discovery::MembershipHandle, path: PathBuf) {
    let mut saved: Vec<SocketAddr> = Vec::new();
    loop {
        tokio::time::sleep(PEERS_SAVE_EVERY).await;
        let Ok(peers) = handle.known_peers().await else { return };
        if peers != saved && save_peers(&path, &peers) {
            saved = peers;
        }
    }
}

/// How often the port learns the members' addresses (its reserved unauthenticated places
/// are theirs).
const MEMBER_ADDRS_EVERY: Duration = Duration::from_secs(2);

/// Keeps the port's member addresses current, so strangers on many addresses cannot keep
/// members from opening connections (`shoal_transport::admission`).
async fn tell_the_port_who_the_members_are(handle: shoal_discovery::MembershipHandle, port: std::sync::Arc<crate::port::PortServer>) {
    loop {
        let Ok(members) = handle.members().await else { return };
        port.set_members(members.iter().filter(|m| !m.is_self).map(|m| m.addr.ip()));
        tokio::time::sleep(MEMBER_ADDRS_EVERY).await;
    }
}

fn save_peers(path: &std::path::Path, peers: &[SocketAddr]) -> bool {
    let text: String = peers.iter().map(|p| format!("{p}\n")).collect();
    match crate::identity::write_atomic(path, text.as_bytes(), 0o600) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not save known peers");
            false
        }
    }
}

/// This machine's architecture, CPUs and memory, as the scheduler sees them. The engine is
/// reported healthy once the agent has reached it.
fn host_resources() -> shoal_discovery::NodeResources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0);
    shoal_discovery::NodeResources {
        arch: std::env::consts::ARCH.to_string(),
        cpu_millis: cpus * 1000,
        memory_bytes,
        engine_ok: false,
    }
}

/// Tells the user, on stderr, that this node founded a cluster and how to add machines. The
/// token itself is printed only to a terminal (stderr is often a log file, and no secret
/// goes into logs); otherwise the command reads it with `shoal token show`.
fn announce_founding(cfg: &AgentConfig) {
    let dir = cfg.data_dir.display();
    let token = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        cfg.secret.to_token()
    } else {
        format!("$(shoal token show --data-dir {dir})")
    };
    eprintln!(
        "\nNo join token was given, so this node founds a new cluster.\n\
         Its token is kept in {dir}/{file} (mode 0600); `shoal token show --data-dir {dir}` prints it.\n\
         Start every other machine with the same token:\n\n    SHOAL_TOKEN={token} shoal agent\n",
        file = crate::config::TOKEN_FILE,
    );
}

/// How often the agent looks for nodes of other clusters in its gossip counters.
const FOREIGN_CHECK_EVERY: Duration = Duration::from_secs(5);

/// On a node that founded its cluster without being given a token: says so once per address
/// when mDNS hears a node of another shoal cluster, with how to join that one instead.
async fn warn_about_other_clusters(handle: shoal_discovery::MembershipHandle, data_dir: PathBuf) {
    let mut seen = std::collections::BTreeSet::new();
    let mut last_count = 0;
    loop {
        tokio::time::sleep(FOREIGN_CHECK_EVERY).await;
        let Ok(stats) = handle.stats().await else { return };
        if stats.foreign_cluster_hints == last_count {
            continue;
        }
        last_count = stats.foreign_cluster_hints;
        let Some(addr) = stats.last_foreign_hint else { continue };
        if seen.len() < 64 && seen.insert(addr) {
            tracing::warn!(
                other = %addr,
                "a shoal node of another cluster is on this network. This node founded its own cluster because it was \
                 started without a token. To join that cluster instead: stop this agent, move {} away, and start it with \
                 that cluster's token (SHOAL_TOKEN=<token> shoal agent; `shoal token show` on one of its nodes prints it)",
                data_dir.display()
            );
        }
    }
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let identity = NodeIdentity::load_or_create(&cfg.data_dir)?;
    let listener = api::bind(&cfg.data_dir).await?;
    let docker_listener = dockerapi::bind(&cfg.data_dir).await?;
    let socket = tokio::net::UdpSocket::bind(cfg.bind)
        .await
        .with_context(|| format!("cannot bind the gossip port {}; is another agent using it? pick another with --bind", cfg.bind))?;
    // The one TCP port (Raft, joins, ...) has the gossip port's number; bound now so that a
    // clash shows at start, not when the node first gets its certificate.
    let port = std::sync::Arc::new(
        crate::port::PortServer::bind(cfg.bind, crate::port::PortConfig::default())
            .await
            .with_context(|| format!("cannot open the TCP port of --bind {}", cfg.bind))?,
    );
    identity.count_boot()?;
    let cluster = cfg.secret.cluster_id();
    let me = ShoalId { node: identity.id, addr: cfg.advertise, bump: ShoalId::first_bump(identity.boot_count) };
    let facts = NodeFacts {
        node: identity.id,
        seq: u64::from(me.bump) << 16,
        name: cfg.name.clone(),
        gossip_addr: cfg.advertise,
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        boot: identity.boot_count,
        left: false,
        in_cluster: false,
        resources: host_resources(),
    };
    facts.validate().context("node facts")?;
    tracing::info!(
        node = %identity.id,
        name = %cfg.name,
        cluster = %cluster,
        gossip = %cfg.bind,
        advertise = %cfg.advertise,
        boot = identity.boot_count,
        data_dir = %cfg.data_dir.display(),
        "starting shoal agent"
    );
    let sigs = identity.gossip_signatures()?;
    let mut core = Membership::new(
        MembershipConfig::lan(cfg.expected_nodes),
        me,
        facts,
        cluster,
        cfg.secret.gossip_key(),
        sigs,
        rand::rngs::StdRng::from_rng(&mut rand::rng()),
    );
    let peers_path = cfg.data_dir.join(PEERS_FILE);
    for seed in cfg.seeds.iter().chain(&load_peers(&peers_path)) {
        if *seed != cfg.advertise {
            core.add_seed(*seed);
        }
    }
    let net = UdpDatagrams(socket);
    let (handle, mut task, mdns) = if cfg.mdns {
        let (mdns, peers) = MdnsDiscovery::start(&MdnsConfig {
            interfaces: cfg.mdns_interfaces.clone(),
            node: identity.id,
            cluster,
            advertise: cfg.advertise,
            version: env!("CARGO_PKG_VERSION").to_string(),
        })?;
        let (h, t) = shoal_discovery::spawn(core, net, SystemClock, peers);
        (h, t, Some(mdns))
    } else {
        let (h, t) = shoal_discovery::spawn(core, net, SystemClock, NoPeers);
        (h, t, None)
    };
    let ctl = crate::control::Control::start(
        crate::control::ControlConfig {
            data_dir: cfg.data_dir.clone(),
            secret: cfg.secret.clone(),
            ca_pin: cfg.ca_pin,
            name: cfg.name.clone(),
            labels: cfg.labels.clone(),
            bind: cfg.bind,
            advertise: cfg.advertise,
            bootstrap_expect: cfg.bootstrap_expect,
            target_voters: cfg.target_voters,
            timing: cfg.timing,
            cert_lifetime: cfg.cert_lifetime,
            dead_voter_after: cfg.dead_voter_after,
            reschedule_after: cfg.reschedule_after,
            docker_socket: cfg.docker_socket.clone(),
            planted: cfg.planted,
        },
        identity.id,
        &identity.key_pem,
        handle.clone(),
        port.clone(),
    )
    .await?;
    let api_task = tokio::spawn(api::serve(listener, ctl.clone()));
    let docker_api = dockerapi::DockerApi::new(ctl.clone());
    // Requests other nodes forward about containers on this one (mutual TLS, node
    // certificates only; refused until this node holds its certificate).
    port.route(dockerapi::proxy::DOCKER_ALPN, dockerapi::proxy::PeerService::new(&docker_api));
    let docker_task = tokio::spawn(dockerapi::serve_unix(docker_listener, docker_api));
    let founded_here = cfg.token_origin != crate::config::TokenOrigin::Given;
    if cfg.token_origin == crate::config::TokenOrigin::Created {
        announce_founding(&cfg);
    }
    let foreign_task = founded_here.then(|| tokio::spawn(warn_about_other_clusters(handle.clone(), cfg.data_dir.clone())));
    let peers_task = tokio::spawn(save_peers_periodically(handle.clone(), peers_path));
    let members_task = tokio::spawn(tell_the_port_who_the_members_are(handle.clone(), port.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let outcome = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: leaving the cluster"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: leaving the cluster"); Ok(()) }
        res = &mut task => Err(anyhow::anyhow!("the membership task stopped unexpectedly: {res:?}")),
        why = ctl.fatal() => Err(anyhow::anyhow!("Raft stopped on this node ({why}); exiting so that a supervisor restarts the agent")),
    };
    if outcome.is_ok() {
        // Leadership first, while this node still gossips and answers Raft: the others
        // then need no election timeout to go on.
        ctl.hand_over_leadership(HANDOVER_TIMEOUT).await;
        match tokio::time::timeout(LEAVE_TIMEOUT, handle.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not leave gracefully"),
            Err(_) => tracing::warn!("graceful leave timed out"),
        }
    }
    port.unroute(dockerapi::proxy::DOCKER_ALPN);
    ctl.shutdown().await;
    if let Some(m) = mdns {
        m.stop();
    }
    api_task.abort();
    docker_task.abort();
    peers_task.abort();
    members_task.abort();
    if let Some(t) = foreign_task {
        t.abort();
    }
    // Save the peers once more: the periodic save may be up to PEERS_SAVE_EVERY old.
    if let Ok(peers) = handle.known_peers().await {
        save_peers(&cfg.data_dir.join(PEERS_FILE), &peers);
    }
    let _ = std::fs::remove_file(api::socket_path(&cfg.data_dir));
    let _ = std::fs::remove_file(dockerapi::socket_path(&cfg.data_dir));
    outcome
}
