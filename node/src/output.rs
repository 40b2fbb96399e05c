//! Tables and JSON for the terminal.

use anyhow::Result;
use crate::control::report::{NodeRow, StatusReport};
use crate::services::{ServiceRow, TaskRow};
use shoal_discovery::{GossipStats, MemberView};

/// Writes to stdout; a closed pipe (`shoal node ls | head`) ends the program quietly
/// instead of panicking like `print!` does.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{ let mut s = format!($($arg)*); s.push('\n'); $crate::output::emit(&s); }};
}

/// `print!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{ $crate::output::emit(&format!($($arg)*)); }};
}

/// Renders rows as left-aligned columns separated by three spaces, like the docker CLI.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn print_members(members: &[MemberView], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(members)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                format!("{}{}", m.id.short(), if m.is_self { " *" } else { "" }),
                m.name.clone().unwrap_or_else(|| "?".into()),
                m.addr.to_string(),
                m.state.as_str().to_string(),
                format!("{}.{}", m.incarnation >> 16, m.incarnation & 0xffff),
                labels.join(","),
            ]
        })
        .collect();
    crate::out!("{}", table(&["ID", "NAME", "ADDRESS", "STATE", "GEN", "LABELS"], &rows));
    Ok(())
}

pub fn print_stats(stats: &GossipStats, json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(stats)?);
        return Ok(());
    }
    let value = serde_json::to_value(stats)?;
    let rows: Vec<Vec<String>> = value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect())
        .unwrap_or_default();
    crate::out!("{}", table(&["COUNTER", "VALUE"], &rows));
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn print_status(s: &StatusReport, json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    crate::outln!("Cluster:      {}", s.cluster_id);
    crate::outln!("This node:    {} ({}), {}", s.name, s.node.short(), s.role);
    if let Some(detail) = &s.detail {
        crate::outln!("              {detail}");
    }
    let leader = match (&s.leader, &s.leader_name) {
        (Some(id), Some(name)) => format!("{name} ({})", id.short()),
        (Some(id), None) => id.short(),
        _ => "none".to_string(),
    };
    crate::outln!("Leader:       {leader}");
    crate::outln!("Term:         {}", s.term);
    crate::outln!("Commit index: {} (applied {})", opt(s.commit_index), opt(s.applied_index.as_ref()));
    if let Some(fp) = &s.ca_fingerprint {
        crate::outln!("Cluster CA:   sha256 {}", fp.get(..16).unwrap_or(fp));
    }
    if let Some(exp) = s.cert_expires_unix {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = exp.saturating_sub(now);
        crate::outln!(
            "Certificate:  {}, expires in {}d {}h",
            s.cert_role.as_deref().unwrap_or("node"),
            left / 86_400,
            (left % 86_400) / 3600
        );
    }
    if !s.revoked.is_empty() {
        crate::outln!("Revoked:      {}", s.revoked.iter().map(|id| id.short()).collect::<Vec<_>>().join(", "));
    }
    if !s.voters.is_empty() || !s.learners.is_empty() {
        crate::outln!("");
        let rows: Vec<Vec<String>> = s
            .voters
            .iter()
            .map(|p| (p, "manager"))
            .chain(s.learners.iter().map(|p| (p, "worker")))
            .map(|(p, kind)| {
                let kind = if Some(p.id) == s.leader { "manager (leader)" } else { kind };
                vec![p.id.short(), p.name.clone(), kind.to_string(), p.health.clone(), p.addr.to_string()]
            })
            .collect();
        crate::out!("{}", table(&["ID", "NAME", "RAFT", "HEALTH", "ADDRESS"], &rows));
    }
    Ok(())
}

pub fn print_nodes(nodes: &[NodeRow], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(nodes)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let state = if n.revoked { format!("{} (revoked)", n.state) } else { n.state.clone() };
            vec![n.id.short(), n.name.clone(), n.role.clone(), state, opt(n.addr), labels.join(",")]
        })
        .collect();
    crate::out!("{}", table(&["ID", "NAME", "ROLE", "STATE", "ADDRESS", "LABELS"], &rows));
    Ok(())
}

pub fn print_clients(clients: &[crate::api::ClientRow], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(clients)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            let expires = if c.not_after <= now { "expired".to_string() } else { format!("in {}d", (c.not_after - now) / 86_400) };
            vec![c.name.clone(), c.id.short(), expires]
        })
        .collect();
    crate::out!("{}", table(&["NAME", "ID", "EXPIRES"], &rows));
    Ok(())
}

pub fn print_services(services: &[ServiceRow], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(services)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let mut notes = Vec::new();
            if s.pending > 0 {
                notes.push(format!("{} pending", s.pending));
            }
            if s.unknown > 0 {
                notes.push(format!("{} unknown: node down", s.unknown));
            }
            let pending = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
            let mode = match &s.container {
                Some(c) => format!("docker container {c}"),
                None => s.mode.as_str().to_string(),
            };
            vec![s.name.clone(), mode, format!("{}/{}{pending}", s.running, s.desired), s.image.clone()]
        })
        .collect();
    crate::out!("{}", table(&["NAME", "MODE", "REPLICAS", "IMAGE"], &rows));
    Ok(())
}

pub fn print_tasks(tasks: &[TaskRow], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(tasks)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let node = t.node_name.clone().or_else(|| t.node.map(|n| n.short())).unwrap_or_else(|| "-".into());
            vec![
                opt(t.task),
                t.slot.clone(),
                node,
                t.desired.as_str().to_string(),
                t.state.clone(),
                opt(t.exit_code),
                t.restarts.to_string(),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    crate::out!("{}", table(&["TASK", "SLOT", "NODE", "DESIRED", "STATE", "EXIT", "RESTARTS", "ERROR"], &rows));
    Ok(())
}

/// `shoal image ls`.
pub fn print_images(listing: &crate::images::ops::ImageListing, json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(listing)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listing
        .images
        .iter()
        .map(|i| {
            let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id).chars().take(12).collect();
            let tags = if i.tags.is_empty() { "<none>".to_string() } else { i.tags.join(",") };
            vec![tags, id, format!("{:.1}MB", i.size_bytes as f64 / 1e6), i.nodes.join(",")]
        })
        .collect();
    crate::out!("{}", table(&["IMAGE", "ID", "SIZE", "NODES"], &rows));
    for u in &listing.unreachable {
        eprintln!("not asked: {u}");
    }
    Ok(())
}

/// `shoal image push`.
pub fn print_pushed(image: &str, nodes: &[crate::images::ops::PushRow], json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::json!({ "image": image, "nodes": nodes }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes.iter().map(|n| vec![n.node.clone(), n.result.clone()]).collect();
    crate::out!("{}", table(&["NODE", "RESULT"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A      BB\nlong   x\ns      yy\n");
    }
}

