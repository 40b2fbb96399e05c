//! Tables and JSON for the terminal.

use anyhow::Result;
use crate::control::report::{NodeRow, StatusReport};
use shoal_discovery::{GossipStats, MemberView};

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
        println!("{}", serde_json::to_string_pretty(members)?);
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
    print!("{}", table(&["ID", "NAME", "ADDRESS", "STATE", "GEN", "LABELS"], &rows));
    Ok(())
}

pub fn print_stats(stats: &GossipStats, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(stats)?);
        return Ok(());
    }
    let value = serde_json::to_value(stats)?;
    let rows: Vec<Vec<String>> = value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect())
        .unwrap_or_default();
    print!("{}", table(&["COUNTER", "VALUE"], &rows));
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn print_status(s: &StatusReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("Cluster:      {}", s.cluster_id);
    println!("This node:    {} ({}), {}", s.name, s.node.short(), s.role);
    if let Some(detail) = &s.detail {
        println!("              {detail}");
    }
    let leader = match (&s.leader, &s.leader_name) {
        (Some(id), Some(name)) => format!("{name} ({})", id.short()),
        (Some(id), None) => id.short(),
        _ => "none".to_string(),
    };
    println!("Leader:       {leader}");
    println!("Term:         {}", s.term);
    println!("Commit index: {} (applied {})", opt(s.commit_index), opt(s.applied_index.as_ref()));
    if let Some(fp) = &s.ca_fingerprint {
        println!("Cluster CA:   sha256 {}", fp.get(..16).unwrap_or(fp));
    }
    if let Some(exp) = s.cert_expires_unix {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = exp.saturating_sub(now);
        println!(
            "Certificate:  {}, expires in {}d {}h",
            s.cert_role.as_deref().unwrap_or("node"),
            left / 86_400,
            (left % 86_400) / 3600
        );
    }
    if !s.revoked.is_empty() {
        println!("Revoked:      {}", s.revoked.iter().map(|id| id.short()).collect::<Vec<_>>().join(", "));
    }
    if !s.voters.is_empty() || !s.learners.is_empty() {
        println!();
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
        print!("{}", table(&["ID", "NAME", "RAFT", "HEALTH", "ADDRESS"], &rows));
    }
    Ok(())
}

pub fn print_nodes(nodes: &[NodeRow], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(nodes)?);
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
    print!("{}", table(&["ID", "NAME", "ROLE", "STATE", "ADDRESS", "LABELS"], &rows));
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
