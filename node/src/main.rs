//! `shoal`: drop it on every machine of a small cluster; the machines find each other and
//! form a secure cluster. This file is the CLI edge: parse flags, call into the modules.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use shoal_cluster::scheduler::Availability;
use shoal_node::{agent, api, config, identity, output, simcmd};

mod servicecmd;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A self-forming, self-healing container cluster for home labs and small teams",
    long_about = "shoal is one binary you run on every machine. Machines started with the same join \
token find each other on the LAN (mDNS) or through --join seeds, and keep a gossiped view of \
who is up.\n\nStart: `shoal agent` on the first machine founds a cluster and keeps its token \
(`shoal token show` prints it); start every other machine with `SHOAL_TOKEN=<token> shoal agent`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join tokens: the shared secret of a cluster.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run the node: discover peers, keep membership, serve the local API.
    Agent(AgentArgs),
    /// List the cluster's members as this node sees them.
    Members(ClientArgs),
    /// Show this node's gossip counters (traffic, dropped packets by reason).
    Stats(ClientArgs),
    /// Show the cluster as this node sees it: leader, term, voters and learners with their
    /// health, commit index, this node's role and certificate expiry.
    Status(ClientArgs),
    /// Nodes of the cluster: list, remove (revoke), update labels.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Services: containers the cluster keeps running on its nodes.
    Service {
        #[command(subcommand)]
        command: servicecmd::ServiceCommand,
    },
    /// Images across the cluster: which nodes hold which, and sending one to the others.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Client certificates for remote access (the docker CLI and shoal from a laptop).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Print the shell variables that point the docker CLI and shoal at a node over TCP
    /// with a client certificate: eval "$(shoal env --cert-dir DIR --node HOST)".
    Env {
        /// Cert dir written by `shoal client new` (ca.pem, cert.pem, key.pem).
        #[arg(long, value_name = "DIR")]
        cert_dir: PathBuf,
        /// The node to talk to: HOST or HOST:PORT (default port 7480, the node's port).
        #[arg(long, value_name = "HOST[:PORT]")]
        node: String,
    },
    /// Bring a cluster back after most of its managers are lost for good: makes this
    /// (stopped) node the only voter, from its own Raft log, and revokes the other voters.
    /// Without --yes it only explains what it would do.
    Recover {
        /// Data dir of the surviving manager (its agent must be stopped).
        #[arg(long, env = "SHOAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Do it: the lost managers will not come back (see the explanation without --yes).
        #[arg(long)]
        yes: bool,
    },
    /// Run the deterministic simulator: many nodes, injected faults, invariant checks.
    Sim(simcmd::SimArgs),
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Issue a client certificate from the cluster CA and write ca.pem, cert.pem and key.pem
    /// into DIR (created mode 0700; key.pem 0600). The key is generated here and never sent.
    New {
        /// Client name (lowercase letters, digits, '.', '-', '_'), unique in the cluster.
        name: String,
        /// Where to write the files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Overwrite files already in DIR.
        #[arg(long)]
        force: bool,
        /// Validity in days (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the clients of the cluster (name, id, expiry).
    Ls(ClientArgs),
    /// Revoke a client: every node refuses its certificate from now on.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List the images of every node with the nodes that hold each. A task whose image its
    /// node lacks gets it from a node that has it (else its engine pulls it).
    Ls(ClientArgs),
    /// Send an image from this node's Docker Engine to the other nodes (an image you built
    /// here, without a registry).
    Push {
        /// Image reference (name:tag) or id.
        image: String,
        /// Only to nodes matching this placement constraint (repeatable), e.g.
        /// node.labels.zone==attic, node.arch==aarch64.
        #[arg(long = "constraint", value_name = "EXPR")]
        constraints: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List nodes with their role (leader, manager, worker), state, address and labels.
    Ls(ClientArgs),
    /// Remove a node from the cluster for good: its id is revoked, its certificate refused
    /// by every node from now on, and it leaves Raft. To bring the machine back, wipe its
    /// data dir so it joins as a new node.
    Rm {
        /// Node id, or a unique prefix of at least 4 hex characters (see `shoal node ls`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a node's labels (used by placement constraints `node.labels.KEY==VALUE`).
    Update {
        /// Node id, or a unique prefix of at least 4 hex characters.
        id: String,
        /// Add or change a label (repeatable).
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label (repeatable).
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        /// `drain` moves the node's tasks away and gives it no new ones; `active` undoes it.
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh join token (256 random bits). Keep it secret: it admits machines.
    New,
    /// Print the join token of this node's cluster, pinned to the cluster's CA
    /// (`shoal2-<CA digest>-<secret>`) once the node holds the CA: a node started with a
    /// pinned token refuses any cluster with another CA, and never founds one. The token is
    /// the one this node keeps (it founded its cluster without being given one), or the one
    /// given here.
    Show {
        /// Data dir of the node.
        #[arg(long, env = "SHOAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The token the node was given (when it keeps none), to print it pinned.
        #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the token the node was given.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Join token of the cluster to join (`shoal token show` on one of its nodes, or
    /// `shoal token new`). Without one, a node that has never joined founds a new cluster
    /// and keeps its token in the data dir.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the join token from this file instead.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Where the node keeps its identity and state [default: $XDG_DATA_HOME/shoal, ~/.local/share/shoal, or /var/lib/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name shown to users [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// A label `key=value` for placement constraints (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Address of the node's one port: UDP for gossip, TCP (same number) for Raft, joins and
    /// the other node-to-node services, told apart by TLS ALPN.
    #[arg(long, default_value_t = config::default_bind())]
    bind: SocketAddr,
    /// IP that peers should use to reach this node [default: the bind IP, or the first non-loopback IPv4].
    #[arg(long)]
    advertise: Option<IpAddr>,
    /// A peer's gossip address to join through, where multicast does not reach (repeatable).
    #[arg(long = "join", value_name = "HOST:PORT")]
    join: Vec<String>,
    /// Use mDNS only on this interface (repeatable) [default: all; only loopback when bound to loopback].
    #[arg(long = "mdns-interface", value_name = "IF")]
    mdns_interfaces: Vec<String>,
    /// Do not use mDNS at all (rely on --join).
    #[arg(long)]
    no_mdns: bool,
    /// Expected cluster size; tunes gossip fan-out and suspicion time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    expected_nodes: u32,
    /// Create the cluster once this many nodes with the same token see each other (the one
    /// with the lowest id creates it; the others join). Give every first node the same value.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
    bootstrap_expect: u32,
    /// How many managers (Raft voters) the cluster keeps: 1, 3 or 5. Others are workers.
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    voters: usize,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    raft_heartbeat_ms: u64,
    /// Raft election timeout (the shortest; the longest is twice this), in milliseconds.
    /// Must be several heartbeats; raise both on slow SD-card machines.
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    raft_election_timeout_ms: u64,
    /// Lifetime of node certificates (renewed automatically at two thirds), e.g. 7d, 12h, 30m.
    #[arg(long, default_value = "7d", value_parser = config::parse_duration)]
    cert_lifetime: std::time::Duration,
    /// A manager down this long is replaced by a healthy worker, e.g. 30s, 5m.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    replace_dead_manager_after: std::time::Duration,
    /// Tasks of a node down this long are started on other nodes, e.g. 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = config::parse_duration)]
    reschedule_after: std::time::Duration,
    /// The container engine's unix socket (Docker, or a Docker-compatible one such as rootless
    /// Docker's) [default: $DOCKER_HOST, or /var/run/docker.sock]. Until it answers, this
    /// node takes no tasks; it keeps retrying.
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
    /// Test-only: run with a bug planted on purpose in the controller, to show that tests
    /// catch it (skip-join-check, grant-manager-to-learners). Never for real use.
    #[arg(long, hide = true, value_name = "BUG", env = shoal_control::PlantedBug::ENV, value_parser = parse_planted_bug)]
    planted_bug: Option<shoal_control::PlantedBug>,
}

fn parse_planted_bug(text: &str) -> Result<shoal_control::PlantedBug, String> {
    shoal_control::PlantedBug::parse(text).ok_or_else(|| {
        let names: Vec<&str> = shoal_control::PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("no planted bug is called `{text}` (there are: {})", names.join(", "))
    })
}

fn parse_voters(text: &str) -> Result<usize, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err("managers must be 1, 3 or 5 (an odd number keeps a majority through a split)".into()),
    }
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Data dir of the local agent to ask [default: as for `shoal agent`].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Ask a node over the network instead of the local agent: tcp://HOST[:PORT] (the
    /// node's port, default 7480), with the client certificate of --cert-dir. `eval "$(shoal
    /// env …)"` sets it.
    #[arg(long, env = "SHOAL_HOST", value_name = "tcp://HOST[:PORT]")]
    host: Option<String>,
    /// Cert dir of a client certificate for --host (`shoal client new NAME --out DIR` writes
    /// ca.pem, cert.pem, key.pem).
    #[arg(long, env = "SHOAL_CERT_PATH", value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

impl ClientArgs {
    /// The agent to ask: a node's TCP port with `--host` (a cert dir required), else the
    /// local agent of the data dir.
    fn target(&self) -> Result<api::Target> {
        let Some(host) = self.host.as_deref().filter(|h| !h.is_empty()) else {
            return Ok(api::Target::Local(self.data_dir.clone().unwrap_or_else(identity::default_data_dir)));
        };
        if !host.starts_with("tcp://") {
            anyhow::bail!("--host / SHOAL_HOST must look like tcp://HOST[:PORT], not `{host}`");
        }
        let (host, port) = shoal_node::remote::parse_node_addr(host, config::DEFAULT_GOSSIP_PORT)?;
        let cert_dir = self.cert_dir.clone().ok_or_else(|| {
            anyhow::anyhow!("--host needs the client certificate: give --cert-dir DIR or set SHOAL_CERT_PATH (`shoal client new NAME --out DIR` on a node writes one)")
        })?;
        Ok(api::Target::Remote { host, port, cert_dir })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AvailabilityArg {
    Active,
    Drain,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mdns_sd=warn,openraft=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Token { command: TokenCommand::New } => {
            let secret = shoal_discovery::JoinSecret::generate(&mut rand::rng());
            shoal_node::outln!("{}", secret.to_token());
            eprintln!(
                "Keep this token secret. Start every node with it in the environment or a file \
                 (a --token flag is visible to other users in `ps`):\n  SHOAL_TOKEN=<token> shoal agent\n  shoal agent --token-file /path/to/token"
            );
            Ok(())
        }
        Command::Token { command: TokenCommand::Show { data_dir, token, token_file } } => {
            let data_dir = data_dir.unwrap_or_else(identity::default_data_dir);
            let text = if token.is_some() || token_file.is_some() {
                let given = config::resolve_token(token.as_deref(), token_file.as_deref())?;
                let ca_pin = config::ca_pin_of(&data_dir)?;
                if ca_pin.is_none() {
                    eprintln!("note: {} holds no cluster CA yet, so the token is printed unpinned", data_dir.display());
                }
                shoal_secret::Token { secret: given.secret, ca_pin: ca_pin.or(given.ca_pin) }.to_text()
            } else {
                config::stored_token(&data_dir)?
            };
            shoal_node::outln!("{text}");
            Ok(())
        }
        Command::Agent(args) => {
            init_logs();
            let cfg = agent_config(args)?;
            runtime()?.block_on(agent::run(cfg))
        }
        Command::Members(args) => {
            let response = runtime()?.block_on(api::call(&args.target()?, &api::Request::Members))?;
            if let api::Response::Members { members } = response {
                output::print_members(&members, matches!(args.format, Format::Json))?;
            }
            Ok(())
        }
        Command::Sim(args) => {
            if simcmd::run(args)? {
                Ok(())
            } else {
                Err(anyhow::anyhow!("the simulation broke an invariant (see above for the replay command)"))
            }
        }
        Command::Status(args) => {
            let response = runtime()?.block_on(api::call(&args.target()?, &api::Request::Status))?;
            if let api::Response::Status { status } = response {
                output::print_status(&status, matches!(args.format, Format::Json))?;
            }
            Ok(())
        }
        Command::Node { command } => node_command(command),
        Command::Client { command } => client_command(command),
        Command::Env { cert_dir, node } => {
            let dir = shoal_node::remote::check_cert_dir(&cert_dir)?;
            let (host, port) = shoal_node::remote::parse_node_addr(&node, config::DEFAULT_GOSSIP_PORT)?;
            let invocation = format!("shoal env --cert-dir {} --node {node}", dir.display());
            shoal_node::out!("{}", shoal_node::remote::env_script(&host, port, &dir, &invocation));
            Ok(())
        }
        Command::Recover { data_dir, yes } => {
            if !yes {
                eprintln!("{}", shoal_node::recover::WARNING);
                anyhow::bail!("nothing done: run `shoal recover --yes` to recover");
            }
            let data_dir = data_dir.unwrap_or_else(identity::default_data_dir);
            shoal_node::outln!("{}", shoal_node::recover::run(&data_dir)?);
            Ok(())
        }
        Command::Image { command } => image_command(command),
        Command::Service { command } => servicecmd::run(command),
        Command::Stats(args) => {
            let response = runtime()?.block_on(api::call(&args.target()?, &api::Request::Stats))?;
            if let api::Response::Stats { stats } = response {
                output::print_stats(&stats, matches!(args.format, Format::Json))?;
            }
            Ok(())
        }
    }
}

fn node_command(command: NodeCommand) -> Result<()> {
    let (client, request) = match command {
        NodeCommand::Ls(client) => (client, api::Request::Nodes),
        NodeCommand::Rm { id, client } => (client, api::Request::NodeRm { node: id }),
        NodeCommand::Update { id, label_add, label_rm, availability, client } => {
            if label_add.is_empty() && label_rm.is_empty() && availability.is_none() {
                anyhow::bail!("nothing to update: give --label-add KEY=VALUE, --label-rm KEY or --availability drain|active");
            }
            let label_add = config::parse_labels(&label_add)?;
            let availability = availability.map(|a| match a {
                AvailabilityArg::Active => Availability::Active,
                AvailabilityArg::Drain => Availability::Drain,
            });
            (client, api::Request::NodeUpdate { node: id, label_add, label_rm, availability })
        }
    };
    let json = matches!(client.format, Format::Json);
    match runtime()?.block_on(api::call(&client.target()?, &request))? {
        api::Response::Nodes { nodes } => output::print_nodes(&nodes, json),
        api::Response::Done { message } => {
            if json {
                shoal_node::outln!("{}", serde_json::json!({ "message": message }));
            } else {
                shoal_node::outln!("{message}");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn client_command(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::New { name, out, force, days, client } => {
            if !shoal_node::pki::client::valid_client_name(&name) {
                anyhow::bail!("invalid client name `{name}`: use 1 to 64 lowercase letters, digits, '.', '-' or '_', starting with a letter or digit");
            }
            if !force {
                for file in [shoal_node::remote::CA_FILE, shoal_node::remote::CERT_FILE, shoal_node::remote::KEY_FILE] {
                    if out.join(file).exists() {
                        anyhow::bail!("{} exists; refusing to overwrite it (use --force, or another --out)", out.join(file).display());
                    }
                }
            }
            let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
            let csr = shoal_node::pki::client::client_csr(&key)?;
            let csr_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr));
            let request = api::Request::ClientNew { name: name.clone(), csr_pem, days };
            let api::Response::ClientIssued { id, ca_pem, cert_pem, not_after, .. } = runtime()?.block_on(api::call(&client.target()?, &request))? else {
                anyhow::bail!("the agent gave an unexpected answer");
            };
            shoal_node::remote::write_cert_dir(&out, &ca_pem, &cert_pem, &key.serialize_pem(), force)?;
            if matches!(client.format, Format::Json) {
                shoal_node::outln!("{}", serde_json::json!({ "name": name, "id": id, "not_after": not_after, "dir": out }));
            } else {
                shoal_node::outln!("client {name} ({}) written to {}: ca.pem, cert.pem, key.pem", id.short(), out.display());
                shoal_node::outln!("use it with: eval \"$(shoal env --cert-dir {} --node HOST)\"", out.display());
            }
            Ok(())
        }
        ClientCommand::Ls(client) => {
            let api::Response::Clients { clients } = runtime()?.block_on(api::call(&client.target()?, &api::Request::ClientLs))? else {
                anyhow::bail!("the agent gave an unexpected answer");
            };
            output::print_clients(&clients, matches!(client.format, Format::Json))
        }
        ClientCommand::Rm { name, client } => {
            if let api::Response::Done { message } = runtime()?.block_on(api::call(&client.target()?, &api::Request::ClientRm { name }))? {
                shoal_node::outln!("{message}");
            }
            Ok(())
        }
    }
}

fn image_command(command: ImageCommand) -> Result<()> {
    let (client, request) = match command {
        ImageCommand::Ls(client) => (client, api::Request::ImageLs),
        ImageCommand::Push { image, constraints, client } => {
            for c in &constraints {
                shoal_cluster::constraint::Constraint::parse(c)?;
            }
            (client, api::Request::ImagePush { image, constraints })
        }
    };
    let json = matches!(client.format, Format::Json);
    match runtime()?.block_on(api::call(&client.target()?, &request))? {
        api::Response::Images { listing } => output::print_images(&listing, json),
        api::Response::Pushed { image, nodes } => {
            output::print_pushed(&image, &nodes, json)?;
            let failed = nodes.iter().filter(|n| n.result.starts_with("failed")).count();
            if failed > 0 {
                anyhow::bail!("{image} did not reach {failed} of {} node(s)", nodes.len());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn agent_config(args: AgentArgs) -> Result<agent::AgentConfig> {
    let data_dir = args.data_dir.clone().unwrap_or_else(identity::default_data_dir);
    let (secret, ca_pin, token_origin) = config::agent_secret(args.token.as_deref(), args.token_file.as_deref(), &data_dir)?;
    if let Some(file) = &args.token_file {
        config::warn_if_readable_by_others(file);
    }
    if args.raft_election_timeout_ms < 3 * args.raft_heartbeat_ms {
        anyhow::bail!(
            "--raft-election-timeout-ms ({}) must be at least 3 heartbeats (3 x {} ms), or followers start elections while the leader is fine",
            args.raft_election_timeout_ms,
            args.raft_heartbeat_ms
        );
    }
    if args.cert_lifetime < std::time::Duration::from_secs(60) {
        anyhow::bail!("--cert-lifetime must be at least 60s (renewal happens at two thirds of it)");
    }
    let labels = config::parse_labels(&args.labels)?;
    let name = config::resolve_name(args.name.as_deref())?;
    let seeds = config::resolve_seeds(&args.join)?;
    let advertise = config::resolve_advertise(args.bind, args.advertise, &args.mdns_interfaces)?;
    let mut mdns_interfaces = args.mdns_interfaces;
    if mdns_interfaces.is_empty() && args.bind.ip().is_loopback() {
        // A node bound to loopback must not announce a loopback address on the LAN.
        mdns_interfaces.push("lo".to_string());
    }
    Ok(agent::AgentConfig {
        data_dir,
        secret,
        ca_pin,
        token_origin,
        name,
        labels,
        bind: args.bind,
        advertise,
        seeds,
        mdns: !args.no_mdns,
        mdns_interfaces,
        expected_nodes: args.expected_nodes,
        bootstrap_expect: args.bootstrap_expect as usize,
        target_voters: args.voters,
        timing: shoal_node::control::RaftTiming {
            heartbeat_ms: args.raft_heartbeat_ms,
            election_timeout_min_ms: args.raft_election_timeout_ms,
            election_timeout_max_ms: args.raft_election_timeout_ms * 2,
        },
        cert_lifetime: args.cert_lifetime,
        dead_voter_after: args.replace_dead_manager_after,
        reschedule_after: args.reschedule_after,
        docker_socket: args.docker_socket,
        planted: args.planted_bug,
    })
}
