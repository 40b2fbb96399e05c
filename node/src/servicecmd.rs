//! `shoal service …`: the docker-like service commands. `create` and `scale` wait until the
//! service has converged, printing each slot as it changes, unless `--detach`.

use super::{output, runtime, ClientArgs, Format};
use anyhow::{bail, Result};
use clap::Subcommand;
use shoal_node::api::{self, Request, Response};
use shoal_node::services::{self, Convergence, CreateFlags, TaskDesired, TaskRow, TaskStatus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum ServiceCommand {
    /// Create a service and wait until its tasks run (like `docker service create`).
    Create {
        /// Service name: a-z, 0-9, '_', '.', '-'.
        name: String,
        /// Image. A node that lacks it fetches it from a node that has it, else its engine pulls
        /// it; `shoal image push` sends one you built to every node.
        image: String,
        /// Command and arguments (after `--` if they start with a dash).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// Number of tasks [default: 1].
        #[arg(long)]
        replicas: Option<u32>,
        /// One task on every eligible node instead of a number of replicas.
        #[arg(long)]
        global: bool,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Publish a port HOST:CONTAINER[/tcp|udp] on the node running the task (repeatable).
        #[arg(long = "publish", short = 'p', value_name = "HOST:CONTAINER")]
        publish: Vec<String>,
        /// Placement constraint (repeatable): node.labels.KEY==VALUE, node.hostname!=NAME,
        /// node.arch==aarch64, node.id==PREFIX.
        #[arg(long = "constraint", value_name = "EXPR")]
        constraints: Vec<String>,
        /// CPUs reserved per task on its node, e.g. 0.5.
        #[arg(long)]
        reserve_cpu: Option<String>,
        /// Memory reserved per task on its node, e.g. 64M.
        #[arg(long)]
        reserve_memory: Option<String>,
        /// CPU limit per task, e.g. 1.5.
        #[arg(long)]
        limit_cpu: Option<String>,
        /// Memory limit per task, e.g. 256M.
        #[arg(long)]
        limit_memory: Option<String>,
        /// When a container ends: always, on-failure[:N], never.
        #[arg(long, default_value = "always")]
        restart: String,
        /// How long a stopping task gets after SIGTERM before it is killed, e.g. 30s, 1m30s,
        /// 500ms (at most 10m; Docker rounds up to whole seconds) [default: 10s].
        #[arg(long, value_name = "DURATION")]
        stop_grace_period: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List services with their running/desired tasks.
    Ls(ClientArgs),
    /// List the tasks of a service: node, state, exit code, errors, pending reasons.
    Ps {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change the number of replicas: `shoal service scale web=3`.
    Scale {
        /// NAME=REPLICAS
        target: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a service; its containers are stopped and removed on every node.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a service's definition and state as JSON.
    Inspect {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
pub struct WaitArgs {
    /// Return at once instead of waiting for the tasks to run.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Give up waiting after this long (the service stays; see `shoal service ps`).
    #[arg(long, default_value = "120s", value_parser = shoal_node::config::parse_duration)]
    timeout: Duration,
}

fn call(client: &ClientArgs, request: &Request) -> Result<Response> {
    runtime()?.block_on(api::call(&client.target()?, request))
}

fn done(message: &str, json: bool) {
    if json {
        shoal_node::outln!("{}", serde_json::json!({ "message": message }));
    } else {
        shoal_node::outln!("{message}");
    }
}

pub fn run(command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Create {
            name,
            image,
            command,
            replicas,
            global,
            env,
            publish,
            constraints,
            reserve_cpu,
            reserve_memory,
            limit_cpu,
            limit_memory,
            restart,
            stop_grace_period,
            wait,
            client,
        } => {
            let flags = CreateFlags {
                name: name.clone(),
                image,
                command,
                replicas,
                global,
                env,
                publish,
                constraints,
                reserve_cpu,
                reserve_memory,
                limit_cpu,
                limit_memory,
                restart,
                stop_grace_period,
            };
            let service = services::service_def(&flags)?;
            if let Response::Done { message } = call(&client, &Request::ServiceCreate { service })? {
                done(&message, matches!(client.format, Format::Json));
            }
            wait_converged(&client, &name, &wait)
        }
        ServiceCommand::Scale { target, wait, client } => {
            let Some((name, n)) = target.split_once('=') else {
                bail!("use NAME=REPLICAS, e.g. `shoal service scale web=3`");
            };
            let replicas: u32 = n.parse().map_err(|_| anyhow::anyhow!("`{n}` is not a number of replicas"))?;
            if let Response::Done { message } = call(&client, &Request::ServiceScale { name: name.to_string(), replicas })? {
                done(&message, matches!(client.format, Format::Json));
            }
            wait_converged(&client, name, &wait)
        }
        ServiceCommand::Rm { name, client } => {
            if let Response::Done { message } = call(&client, &Request::ServiceRm { name })? {
                done(&message, matches!(client.format, Format::Json));
            }
            Ok(())
        }
        ServiceCommand::Ls(client) => {
            if let Response::Services { services } = call(&client, &Request::ServiceLs)? {
                output::print_services(&services, matches!(client.format, Format::Json))?;
            }
            Ok(())
        }
        ServiceCommand::Ps { name, client } => {
            if let Response::Tasks { tasks } = call(&client, &Request::ServicePs { name })? {
                output::print_tasks(&tasks, matches!(client.format, Format::Json))?;
            }
            Ok(())
        }
        ServiceCommand::Inspect { name, client } => {
            if let Response::Service { service } = call(&client, &Request::ServiceInspect { name })? {
                shoal_node::outln!("{}", serde_json::to_string_pretty(&service)?);
            }
            Ok(())
        }
    }
}

/// How long "every placeable task runs, the rest pend with a reason" must hold before the
/// wait stops waiting for the pending ones (several scheduler passes).
const PENDING_SETTLE: Duration = Duration::from_secs(3);

/// Polls `service ps` until every slot runs, printing each slot when its state changes.
/// Tasks on a node that is down cannot report: the wait ends as soon as every other task
/// has converged, and says how many are on down nodes ([`services::convergence`]).
fn wait_converged(client: &ClientArgs, name: &str, wait: &WaitArgs) -> Result<()> {
    if wait.detach {
        return Ok(());
    }
    let rt = runtime()?;
    let dir = &client.target()?;
    let started = Instant::now();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let quiet = matches!(client.format, Format::Json);
    // Since when every task that could be placed runs and the others pend with a reason.
    let mut stuck_since: Option<Instant> = None;
    loop {
        let rows: Vec<TaskRow> = match rt.block_on(api::call(dir, &Request::ServicePs { name: name.to_string() }))? {
            Response::Tasks { tasks } => tasks,
            _ => Vec::new(),
        };
        for r in rows.iter().filter(|r| r.desired == TaskDesired::Running) {
            let line = match (&r.node_name, &r.error) {
                (_, Some(e)) if r.status == TaskStatus::Pending => format!("pending: {e}"),
                (Some(node), Some(e)) => format!("{} on {node}: {e}", r.state),
                (Some(node), None) => format!("{} on {node}", r.state),
                (None, _) => r.state.clone(),
            };
            if shown.get(&r.slot) != Some(&line) && !quiet {
                eprintln!("{:<24} {line}", r.slot);
            }
            shown.insert(r.slot.clone(), line);
        }
        let services = match rt.block_on(api::call(dir, &Request::ServiceLs))? {
            Response::Services { services } => services,
            _ => Vec::new(),
        };
        let Some(row) = services.iter().find(|s| s.name == name) else {
            if started.elapsed() >= wait.timeout {
                bail!("service {name} is not listed by the cluster");
            }
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        let secs = started.elapsed().as_secs_f64();
        match services::convergence(row.desired, &rows) {
            Convergence::Converged => {
                if !quiet {
                    eprintln!("{name}: {}/{} running, converged in {secs:.1}s", row.running, row.desired);
                }
                return Ok(());
            }
            Convergence::ConvergedExceptDown { live, stopping } => {
                let mut parts = Vec::new();
                if live > 0 {
                    parts.push(format!("{live} task(s) counted for their slots are on down nodes (state unknown; they move to other nodes after the reschedule grace period)"));
                }
                if stopping > 0 {
                    parts.push(format!("{stopping} task(s) told to shut down are on down nodes and cannot confirm it"));
                }
                let message = format!("{name}: {}/{} running, converged in {secs:.1}s except on down nodes: {}", row.running, row.desired, parts.join("; "));
                // Said even with --format json (on stderr, like the progress): it is a warning.
                eprintln!("{message}");
                return Ok(());
            }
            Convergence::Waiting(p) => {
                let only_pending_left = p.pending > 0 && p.stopping == 0 && p.running + p.unknown + p.pending == p.desired;
                stuck_since = if only_pending_left { stuck_since.or(Some(Instant::now())) } else { None };
                if stuck_since.is_some_and(|t| t.elapsed() >= PENDING_SETTLE) {
                    let why = rows.iter().find(|r| r.status == TaskStatus::Pending).and_then(|r| r.error.clone()).unwrap_or_default();
                    bail!(
                        "{name}: {}/{} running; {} slot(s) cannot be placed now: {why}. The service stays as created and its \
                         pending slots are placed when a node can take them (see `shoal service ps {name}`)",
                        p.running,
                        p.desired,
                        p.pending
                    );
                }
                if started.elapsed() >= wait.timeout {
                    let mut detail = format!("{}/{} running", p.running, p.desired);
                    if p.pending > 0 {
                        let why = rows.iter().find(|r| r.status == TaskStatus::Pending).and_then(|r| r.error.clone()).unwrap_or_default();
                        detail.push_str(&format!(", {} pending ({why})", p.pending));
                    }
                    if p.stopping > 0 {
                        detail.push_str(&format!(", {} still stopping", p.stopping));
                    }
                    if p.unknown > 0 {
                        detail.push_str(&format!(", {} on down nodes", p.unknown));
                    }
                    bail!(
                        "{name} has not converged after {:?}: {detail}; see `shoal service ps {name}` (the service stays as created)",
                        wait.timeout
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
