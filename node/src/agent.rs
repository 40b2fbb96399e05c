//! `shoal agent`: wires identity, discovery, membership and the local API together, and
//! leaves the cluster gracefully on SIGTERM/SIGINT.

use crate::{api, identity::NodeIdentity};
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
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub mdns: bool,
    pub mdns_interfaces: Vec<String>,
    pub expected_nodes: u32,
}

/// How long a graceful leave may take before the process exits anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let identity = NodeIdentity::load_or_create(&cfg.data_dir)?;
    let listener = api::bind(&cfg.data_dir).await?;
    let socket = tokio::net::UdpSocket::bind(cfg.bind)
        .await
        .with_context(|| format!("cannot bind the gossip port {}; is another agent using it? pick another with --bind", cfg.bind))?;
    let cluster = cfg.secret.cluster_id();
    let me = ShoalId { node: identity.id, addr: cfg.advertise, bump: ShoalId::first_bump(identity.boot_count) };
    let facts = NodeFacts {
        node: identity.id,
        seq: u64::from(me.bump) << 16,
        name: cfg.name.clone(),
        gossip_addr: cfg.advertise,
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        left: false,
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
    let mut core = Membership::new(
        MembershipConfig::lan(cfg.expected_nodes),
        me,
        facts,
        cluster,
        cfg.secret.gossip_key(),
        rand::rngs::StdRng::from_rng(&mut rand::rng()),
    );
    for seed in &cfg.seeds {
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
    let api_task = tokio::spawn(api::serve(listener, handle.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let outcome = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: leaving the cluster"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: leaving the cluster"); Ok(()) }
        res = &mut task => Err(anyhow::anyhow!("the membership task stopped unexpectedly: {res:?}")),
    };
    if outcome.is_ok() {
        match tokio::time::timeout(LEAVE_TIMEOUT, handle.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not leave gracefully"),
            Err(_) => tracing::warn!("graceful leave timed out"),
        }
    }
    if let Some(m) = mdns {
        m.stop();
    }
    api_task.abort();
    let _ = std::fs::remove_file(api::socket_path(&cfg.data_dir));
    outcome
}
